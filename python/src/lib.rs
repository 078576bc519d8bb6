//! `qresidual._native`: the library behind the `qresidual` command, called
//! in-process from Python. One entry runs a command line through the same
//! parser and code as the command (`qresidual/__init__.py` builds the
//! command line from keyword arguments), with the GIL released while it
//! works; messages and progress come back through Python callables.

use std::sync::{Arc, Mutex};

use pyo3::prelude::*;

use qresidual::engine::log::{Level, Log};

/// The first exception a callback raised (later ones are dropped: the
/// work is not interrupted by a callback, and the first is re-raised after).
type Raised = Arc<Mutex<Option<PyErr>>>;

/// Call back into Python (taking the GIL for the call), keeping the first
/// exception.
fn call(raised: &Raised, f: impl FnOnce(Python<'_>) -> PyResult<Py<PyAny>>) {
    Python::attach(|py| {
        if let Err(e) = f(py) {
            raised
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert(e);
        }
    });
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Info => "info",
        Level::Note => "note",
        Level::Warning => "warning",
    }
}

/// Run `argv` (`argv[0]` is the program's name) with messages sent to
/// `on_message(level, text)` and progress to `on_progress(step, done,
/// total)`. Returns `(exit_code, error_message, stdout, outputs)`.
#[pyfunction]
#[pyo3(signature = (argv, on_message=None, on_progress=None))]
fn run(
    py: Python<'_>,
    argv: Vec<String>,
    on_message: Option<Py<PyAny>>,
    on_progress: Option<Py<PyAny>>,
) -> PyResult<(i32, Option<String>, String, Vec<String>)> {
    let raised: Raised = Arc::default();
    let mut log = match on_message {
        Some(cb) => {
            let raised = raised.clone();
            Log::to(move |level, text| call(&raised, |py| cb.call1(py, (level_name(level), text))))
        }
        None => Log::silent(),
    };
    if let Some(cb) = on_progress {
        let raised = raised.clone();
        log = log.with_progress_observer(Arc::new(move |step: &str, done: u64, total: u64| {
            call(&raised, |py| cb.call1(py, (step, done, total)))
        }));
    }
    let result = py.detach(|| qresidual::cli::run_from(argv, &log));
    drop(log);
    if let Some(e) = raised.lock().unwrap_or_else(|e| e.into_inner()).take() {
        return Err(e);
    }
    Ok(match result {
        Ok(done) => (
            0,
            None,
            done.stdout,
            done.outputs
                .iter()
                .map(|p| p.display().to_string())
                .collect(),
        ),
        Err(e) => (
            e.exit_code(),
            Some(e.to_string()),
            String::new(),
            Vec::new(),
        ),
    })
}

/// The `qresidual` command itself: parse `argv`, run, print as the command
/// does, return the exit code.
#[pyfunction]
fn main(py: Python<'_>, argv: Vec<String>) -> i32 {
    py.detach(|| qresidual::cli::main_from(argv))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    m.add_function(wrap_pyfunction!(main, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
