//! The one engine every command writes through: row chunks claimed by
//! worker threads, decoded, summed, encoded and written in order
//! ([`pipeline`]) into a [`sink::TensorSink`] per output format; the output
//! tasks a model's tensors become ([`tasks`]); progress bars.

pub mod log;
pub mod pipeline;
pub mod progress;
pub mod sink;
pub mod tasks;
