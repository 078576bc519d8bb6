//! How long work shows how far it has come: bars drawn on stderr (hidden
//! when stderr is not a terminal), a caller's callback, both, or nothing.
//!
//! [`Progress`] is the choice, carried by [`crate::engine::log::Log`];
//! [`Bar`] is one long step (bytes written, tensors checked) under it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A caller's progress callback: `(step, done, total)`: the step's name
/// ("writing" counts bytes; the others count tensors), called from the
/// thread that does the step.
pub type Observer = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Where progress goes: stderr bars, a callback, both or neither.
#[derive(Clone, Default)]
pub struct Progress {
    draw: bool,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("draw", &self.draw)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Progress {
    /// No progress shown.
    pub fn off() -> Self {
        Progress::default()
    }

    /// Bars on stderr, or nothing when `draw` is false.
    pub fn stderr(draw: bool) -> Self {
        Progress {
            draw,
            observer: None,
        }
    }

    /// The same, with stderr bars or without.
    pub fn with_draw(mut self, draw: bool) -> Self {
        self.draw = draw;
        self
    }

    /// The same, also telling `observer`.
    pub fn with_observer(mut self, observer: Observer) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Whether anything shows progress.
    pub fn enabled(&self) -> bool {
        self.draw || self.observer.is_some()
    }

    /// A bar over bytes written, with rate and ETA.
    pub fn bytes(&self, total: u64) -> Bar {
        self.bar(
            total,
            "writing",
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
    }

    /// A bar over `n` tensors, labelled `what`.
    pub fn tensors(&self, n: usize, what: &str) -> Bar {
        let bar = self.bar(
            n as u64,
            what,
            "{elapsed_precise} [{bar:30}] {pos}/{len} tensors {msg}",
        );
        bar.pb.set_message(what.to_string());
        bar
    }

    fn bar(&self, total: u64, what: &str, template: &str) -> Bar {
        let pb = if self.draw {
            let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            pb.set_style(
                ProgressStyle::with_template(template)
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        Bar {
            pb,
            observer: self.observer.clone(),
            what: what.to_string(),
            done: AtomicU64::new(0),
            total: AtomicU64::new(total),
            told: AtomicU64::new(u64::MAX),
        }
    }
}

/// One step's progress.
pub struct Bar {
    pb: ProgressBar,
    observer: Option<Observer>,
    what: String,
    done: AtomicU64,
    total: AtomicU64,
    /// The thousandth of the total last told to the observer.
    told: AtomicU64,
}

impl Bar {
    /// `n` more units done.
    pub fn inc(&self, n: u64) {
        self.pb.inc(n);
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        self.tell(done, false);
    }

    /// `n` more units to do.
    pub fn inc_length(&self, n: u64) {
        self.pb.inc_length(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// What is being worked on now (a tensor name), shown on the bar.
    pub fn set_message(&self, msg: &str) {
        self.pb.set_message(msg.to_string());
    }

    /// The step is over: the bar disappears, the observer hears the end.
    pub fn finish_and_clear(&self) {
        self.pb.finish_and_clear();
        self.tell(self.done.load(Ordering::Relaxed), true);
    }

    /// Tell the observer at most once per thousandth of the total (and at
    /// the end), so a callback into another runtime costs nothing measurable.
    fn tell(&self, done: u64, last: bool) {
        let Some(observer) = &self.observer else {
            return;
        };
        let total = self.total.load(Ordering::Relaxed);
        let step = done.saturating_mul(1000).checked_div(total).unwrap_or(0);
        if !last && self.told.swap(step, Ordering::Relaxed) == step {
            return;
        }
        observer(&self.what, done, total.max(done));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observer_hears_progress_and_the_end() {
        let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = heard.clone();
        let p = Progress::off().with_observer(Arc::new(move |what: &str, done, total| {
            sink.lock().unwrap().push((what.to_string(), done, total));
        }));
        assert!(p.enabled());
        let bar = p.bytes(0);
        bar.inc_length(4000);
        bar.set_message("blk.0.attn_q.weight");
        for _ in 0..4000 {
            bar.inc(1);
        }
        bar.finish_and_clear();
        let heard = heard.lock().unwrap();
        // One call per thousandth, plus the end.
        assert_eq!(heard.len(), 1002, "{:?}", &heard[..3]);
        assert_eq!(heard.last().unwrap(), &("writing".to_string(), 4000, 4000));
        assert!(heard.windows(2).all(|w| w[0].1 <= w[1].1));
    }

    #[test]
    fn off_tells_nobody() {
        assert!(!Progress::off().enabled());
        assert!(!Progress::stderr(false).enabled());
        let bar = Progress::off().tensors(3, "checking");
        bar.inc(3);
        bar.finish_and_clear();
    }
}
