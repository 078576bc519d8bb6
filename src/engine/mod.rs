//! The one engine every command reads and writes through: row chunks
//! claimed by worker threads and consumed in order ([`schedule`]); decoded,
//! summed, encoded and written ([`pipeline`]) into a [`sink::TensorSink`]
//! per output format; the output tasks a model's tensors become
//! ([`tasks`]); bitsandbytes folders on the same scheduler ([`bnb`]); rows
//! read as a parallel map ([`chunks`]); progress bars.

pub mod bnb;
pub mod chunks;
pub mod log;
pub mod pipeline;
pub mod progress;
pub mod schedule;
pub mod sink;
pub mod tasks;
