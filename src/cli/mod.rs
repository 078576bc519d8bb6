//! The command line: one function per subcommand, all over one pipeline.

mod apply;
mod compare;
mod convert;
mod extract;
mod inspect;
mod metadata;
mod report;

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::engine::log::Log;
use crate::{Error, Result};

const ABOUT: &str =
    "Add full-rank weight residuals to quantized LLMs and measure what precision was lost";

const LONG_ABOUT: &str = "\
qresidual adds an instruction residual (Δθ = θ_instruct − θ_base, safetensors with Hugging Face \
tensor names) to a base model whose weights are already quantized (GGUF Q4_K_M, Q8_0, …), and \
writes a model llama.cpp runs, in the same quantization, with a precision report.

Typical use:
  qresidual inspect Llama-3.1-8B-Q4_K_M.gguf
  qresidual extract --instruct Llama-3.1-8B-Instruct/ --base Llama-3.1-8B/ -o residual.safetensors
  qresidual apply --base Llama-3.1-8B-Q4_K_M.gguf --residual residual/ -o Llama-3.1-8B-Instruct-Q4_K_M.gguf --report report.json
  qresidual compare Llama-3.1-8B-Instruct/ Llama-3.1-8B-Instruct-Q4_K_M.gguf
  qresidual dequantize model-Q4_K_M.gguf -o model-F32.gguf
  qresidual quantize model-F32.gguf -o model-Q4_K_M.gguf --type q4_k_m

Inputs are never modified; every output is written to a temporary file beside the target and \
renamed into place only when complete. Exit codes: 0 success, 1 bad data, 2 bad usage.";

#[derive(Parser, Debug)]
#[command(name = "qresidual", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant (apply's many
// options) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Add a residual to a (quantized) base model and requantize.
    #[command(long_about = apply::APPLY_HELP)]
    Apply(apply::ApplyArgs),
    /// Make a residual: instruct − base, with a fingerprint of the base.
    Extract(extract::ExtractArgs),
    /// Compare two models tensor by tensor.
    Compare(compare::CompareArgs),
    /// Expand every quantized tensor to f32, f16 or bf16.
    #[command(long_about = convert::DEQUANTIZE_HELP)]
    Dequantize(convert::DequantizeArgs),
    /// Quantize a model to a ggml type or a llama.cpp mix such as q4_k_m.
    #[command(long_about = convert::QUANTIZE_HELP)]
    Quantize(convert::QuantizeArgs),
    /// Show the metadata and tensors of a GGUF or safetensors model.
    #[command(long_about = inspect::INSPECT_HELP)]
    Inspect(inspect::InspectArgs),
    /// Copy a GGUF file with metadata keys set or removed.
    Metadata(metadata::MetadataArgs),
    /// Render a JSON report as a self-contained HTML page.
    Report(report::ReportArgs),
}

/// Parse the command line, run, and return the process exit code.
pub fn main() -> i32 {
    // A file size limit (`ulimit -f`) must surface as EFBIG from write(2) and
    // so as an error that removes the temporary file, not as SIGXFSZ, which
    // would kill the process and leave it behind.
    #[cfg(unix)]
    // SAFETY: setting a signal to SIG_IGN before any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    main_from(std::env::args_os())
}

/// [`main`] for a given command line (`args[0]` is the program's name):
/// the command's output printed, errors on stderr, the exit code returned.
pub fn main_from<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match dispatch(&cli.command, &Log::stderr(false)) {
        Ok(done) => {
            print!("{}", done.stdout);
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Where a model named on the command line comes from: Hub references'
/// revision (shared by every command that reads models).
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct ModelRefArgs {
    /// Revision (branch, tag or commit) of Hugging Face references (user/repo…); default main.
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
}

impl ModelRefArgs {
    /// The local path of a model argument: a path, or a Hub, Ollama or LM
    /// Studio reference (model::locate).
    pub(crate) fn locate(&self, arg: &std::path::Path, quiet: bool) -> Result<std::path::PathBuf> {
        let opts = crate::model::locate::LocateOptions {
            revision: self.revision.clone(),
            progress: !quiet,
        };
        crate::model::locate::resolve(arg, &opts)
    }
}

/// What a command line produced, for a caller that runs it in its own
/// process (the Python package).
#[derive(Debug, Clone, Default)]
pub struct Done {
    /// What the command prints on stdout (`inspect`, `compare --json -`).
    pub stdout: String,
    /// The files written, in order (every part of a split output).
    pub outputs: Vec<PathBuf>,
}

/// Run a command line (`args[0]` is the program's name) with `console` as
/// the place its messages, tables and progress go (`--quiet` silences it).
/// `--help` and `--version` put their text in [`Done::stdout`]; a command
/// line that does not parse is an [`Error::Usage`] carrying clap's message.
pub fn run_from<I, T>(args: I, console: &Log) -> Result<Done>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    match Cli::try_parse_from(args) {
        Ok(cli) => dispatch(&cli.command, console),
        Err(e) if e.use_stderr() => Err(Error::Usage(e.render().to_string())),
        Err(e) => Ok(Done {
            stdout: e.render().to_string(),
            outputs: Vec::new(),
        }),
    }
}

fn dispatch(command: &Command, console: &Log) -> Result<Done> {
    match command {
        Command::Apply(a) => apply::run(a, console),
        Command::Extract(a) => extract::run(a, console),
        Command::Compare(a) => compare::run(a, console),
        Command::Dequantize(a) => convert::run_dequantize(a, console),
        Command::Quantize(a) => convert::run_quantize(a, console),
        Command::Inspect(a) => inspect::run(a),
        Command::Metadata(a) => metadata::run(a),
        Command::Report(a) => report::run(a),
    }
}

/// The console, or nothing at all under `--quiet`.
pub(crate) fn unless_quiet(console: &Log, quiet: bool) -> Log {
    if quiet {
        Log::silent()
    } else {
        console.clone()
    }
}

/// Use `threads` worker threads (all cores when `None`).
pub(crate) fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(Error::Usage("--threads must be at least 1".into()));
        }
        // A second call in the same process (tests) keeps the first pool.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    Ok(())
}

/// Parse sizes such as `2G`, `500M`, `1048576`.
pub(crate) fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        Some('T' | 't') => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size such as 500M or 2G"))?;
    n.checked_mul(mult)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{s}' is not a usable size"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("lots").is_err());
    }
}
