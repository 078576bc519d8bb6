//! `qresidual inspect FILE [--json]`: what a model file holds.

use std::path::PathBuf;

/// Long help of the command.
pub(super) const INSPECT_HELP: &str = "\
Show what a model file holds, reading headers only (instant on any size).

GGUF: metadata (arrays summarized; --json gives every value with its exact type), a tensor table \
(name, type, shape row-major and in ggml's ne order, bytes, offset), totals per type and bits per \
weight. The first file of a split set opens the whole set.

Safetensors: a .safetensors file, a folder of shards with model.safetensors.index.json, or the \
index itself: __metadata__, every tensor's dtype, shape and shard, totals per dtype.

Bitsandbytes folder (config.json with quant_method bitsandbytes): every logical weight with its \
storage (nf4, fp4, int8 or a float dtype), blocksize, dtype and double quantization, then the \
stored tensors as for safetensors. FP8 folder (quant_method fp8, compressed-tensors float-quantized): likewise, with each FP8 weight's scale block (128x128, channel, tensor) and scale dtype. MLX folder (config.json quantization, affine mode): each weight's bits (mlx2 … mlx8), group size and scale dtype.";

/// Show metadata, tensors and per-type totals of a model file.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The model: GGUF file, .safetensors file, folder of safetensors shards, bitsandbytes, FP8, MLX, pack-quantized, GPTQ or AWQ folder, or a reference (user/repo[:QUANT], user/repo/FILE, ollama:NAME[:TAG], lmstudio:…).
    pub file: PathBuf,
    /// Print everything as JSON, with exact value types.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub refs: super::ModelRefArgs,
}

/// Run `inspect`: its text (or JSON) is the command's stdout.
pub fn run(args: &InspectArgs) -> crate::Result<super::Done> {
    let file = args.refs.locate(&args.file, false)?;
    Ok(super::Done {
        stdout: crate::ops::inspect::inspect(&file, args.json)?,
        outputs: Vec::new(),
    })
}
