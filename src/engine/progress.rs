//! The progress bars of long commands, drawn on stderr (hidden when asked
//! or when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

fn bar(total: u64, enabled: bool, template: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb
}

/// A bar over bytes written, with rate and ETA.
pub fn bytes(total: u64, enabled: bool) -> ProgressBar {
    bar(
        total,
        enabled,
        "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
    )
}

/// A bar over `n` tensors, labelled `what`.
pub fn tensors(n: usize, enabled: bool, what: &str) -> ProgressBar {
    let pb = bar(
        n as u64,
        enabled,
        "{elapsed_precise} [{bar:30}] {pos}/{len} tensors {msg}",
    );
    pb.set_message(what.to_string());
    pb
}
