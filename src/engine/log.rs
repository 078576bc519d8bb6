//! What a long operation tells its user along the way: notes, warnings and
//! status lines, and whether to draw progress bars. The library never
//! prints on its own: the command line passes [`Log::stderr`], a library
//! caller [`Log::silent`] (the default) or [`Log::to`] with its own sink.

use std::fmt;
use std::sync::Arc;

use super::progress::{Observer, Progress};

/// How much a message matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A status line (a summary, a timing).
    Info,
    /// Something the user may want to know (`note: …`).
    Note,
    /// Something that may be a mistake (`warning: …`).
    Warning,
}

type Sink = Arc<dyn Fn(Level, &str) + Send + Sync>;

/// Where messages go, and whether progress bars are drawn.
#[derive(Clone, Default)]
pub struct Log {
    sink: Option<Sink>,
    progress: Progress,
}

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("sink", &self.sink.is_some())
            .field("progress", &self.progress.enabled())
            .finish()
    }
}

impl Log {
    /// Nothing printed, no progress bars.
    pub fn silent() -> Self {
        Log::default()
    }

    /// Messages on stderr (`note: `, `warning: ` prefixed) and progress
    /// bars, or nothing at all when `quiet`.
    pub fn stderr(quiet: bool) -> Self {
        if quiet {
            return Log::silent();
        }
        Log::to(|level, text| match level {
            Level::Info => eprint!("{text}"),
            Level::Note => eprintln!("note: {text}"),
            Level::Warning => eprintln!("warning: {text}"),
        })
        .with_progress(true)
    }

    /// Messages to `sink`; no progress bars unless [`Log::with_progress`].
    pub fn to(sink: impl Fn(Level, &str) + Send + Sync + 'static) -> Self {
        Log {
            sink: Some(Arc::new(sink)),
            progress: Progress::off(),
        }
    }

    /// The same log, drawing progress bars on stderr or not.
    pub fn with_progress(mut self, draw: bool) -> Self {
        self.progress = self.progress.with_draw(draw);
        self
    }

    /// The same log, also telling `observer` how far each long step has come
    /// (`what`, `done`, `total`).
    pub fn with_progress_observer(mut self, observer: Observer) -> Self {
        self.progress = self.progress.with_observer(observer);
        self
    }

    /// Where progress goes.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Whether anything is listening (work done only to be told can be skipped).
    pub fn enabled(&self) -> bool {
        self.sink.is_some()
    }

    /// A status line, printed as given (end it with a newline).
    pub fn info(&self, text: &str) {
        self.emit(Level::Info, text);
    }

    /// A note.
    pub fn note(&self, text: &str) {
        self.emit(Level::Note, text);
    }

    /// A warning.
    pub fn warn(&self, text: &str) {
        self.emit(Level::Warning, text);
    }

    fn emit(&self, level: Level, text: &str) {
        if let Some(s) = &self.sink {
            s(level, text);
        }
    }
}
