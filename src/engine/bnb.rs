//! bitsandbytes folders (NF4/FP4 with or without double quantization,
//! LLM.int8, plain floats) written on the engine's claimed-chunk
//! [`schedule`](super::schedule), with the same progress bar as GGUF
//! outputs. The layout and the per-chunk encoding are
//! [`crate::model::bnb`]'s; a double-quantized weight takes two passes (its
//! absmax mean first), and the absmax stays buffered until the weight's
//! codes are written, so memory is the chunks in flight plus O(absmax).

use std::path::Path;

use serde_json::Value;

use crate::model::bnb::{
    write_model_with, BnbModel, ChunkRunner, WeightJob, WeightOutcome, WriteOptions,
};
use crate::Result;

/// Write the model as [`crate::model::bnb::write_model_with`] describes (one
/// output shard per input shard, index, config, other files), its weights'
/// row chunks claimed by the engine's workers at most `opts.window` chunks
/// ahead of the writer.
pub fn write_model(
    model: &BnbModel,
    jobs: &[WeightJob<'_>],
    config: &Value,
    out_dir: &Path,
    opts: &WriteOptions,
    progress: &crate::engine::progress::Progress,
) -> Result<Vec<WeightOutcome>> {
    let runner = Scheduled {
        ahead: opts.window,
        pb: progress.bytes(0),
    };
    let outcomes = write_model_with(model, jobs, config, out_dir, opts, &runner)?;
    runner.pb.finish_and_clear();
    Ok(outcomes)
}

struct Scheduled {
    ahead: usize,
    pb: crate::engine::progress::Bar,
}

impl ChunkRunner for Scheduled {
    fn run<T: Send>(
        &self,
        n: usize,
        work: impl Fn(usize) -> Result<T> + Sync,
        consume: impl FnMut(usize, T) -> Result<()>,
    ) -> Result<()> {
        super::schedule::in_order(n, self.ahead, work, consume)
    }

    fn expect(&self, bytes: u64) {
        self.pb.inc_length(bytes);
    }

    fn weight(&self, name: &str) {
        self.pb.set_message(name);
    }

    fn wrote(&self, bytes: u64) {
        self.pb.inc(bytes);
    }
}
