//! `qresidual dequantize` and `qresidual quantize`: the pipeline without a residual.

use std::path::PathBuf;

use clap::Args;

use crate::engine::log::Log;
use crate::engine::pipeline::display_paths;
use crate::ops::convert::{self, DequantizeRequest, QuantizeRequest};
use crate::Result;

/// Long help of the command.
pub(super) const DEQUANTIZE_HELP: &str = "\
Expand every quantized tensor of a GGUF model to f32 (default), f16 or bf16, bit-exact with \
llama.cpp's own dequantization. Metadata is kept; general.file_type is updated. F32 tensors \
(norms) stay F32 when the target is f16 or bf16, as llama.cpp's converter keeps them; integer \
tensors are copied.

A Hugging Face bitsandbytes folder (NF4/FP4/LLM.int8) is written as a folder of plain f32, f16 \
or bf16 safetensors with its config.json (quantization_config removed), bit-exact with \
bitsandbytes' own dequantization. An FP8 folder (quant_method fp8, or compressed-tensors float-quantized) likewise, bit-exact with transformers' / compressed-tensors' dequantization, an mlx-lm folder in MLX's affine mode, bit-exact with mx.dequantize, a compressed-tensors pack-quantized folder, bit-exact with its decompression, and a GPTQ or AWQ (GEMM) folder, bit-exact with AutoGPTQ's / AutoAWQ's torch dequantization.

Examples:
  qresidual dequantize model-Q4_K_M.gguf -o model-F32.gguf
  qresidual dequantize Llama-3.1-8B-bnb-4bit/ -o Llama-3.1-8B-F16/ --type f16";

/// Expand a quantized model.
#[derive(Args, Debug)]
pub struct DequantizeArgs {
    /// Input: GGUF file, bitsandbytes, FP8, MLX, pack-quantized, GPTQ or AWQ folder.
    #[arg(value_name = "IN")]
    pub input: PathBuf,
    /// Output: GGUF file, or a folder for a bitsandbytes, FP8, MLX or pack-quantized input.
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// f32, f16 or bf16.
    #[arg(long = "type", default_value = "f32", value_name = "TYPE")]
    pub ty: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Split the output into files of at most this size (e.g. 2G).
    #[arg(long, value_parser = super::parse_size, value_name = "SIZE")]
    pub split_max_size: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub refs: super::ModelRefArgs,
}

/// Long help of the command.
pub(super) const QUANTIZE_HELP: &str = "\
Quantize a GGUF model. TYPE is a ggml type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k … q6_k, iq4_nl, \
iq4_xs, tq1_0, tq2_0, mxfp4, f16, bf16, f32), applied to every tensor llama.cpp would quantize, \
as `llama-quantize --pure` does; or a llama.cpp mix (q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, \
q5_k_s, q5_k_m, q6_k, q8_0, …) with llama.cpp's per-tensor choices. A name that is both (q4_0, q6_k, q8_0, iq4_xs, …) means \
the plain type; write mix:q4_0 for the mix. The bytes equal llama.cpp's \
and do not depend on --threads. A quantized input is dequantized first: requantizing loses \
quality, and a warning says so. --imatrix FILE (llama-imatrix output, GGUF or legacy .dat) \
encodes with importance weights, bytes equal to llama-quantize --imatrix; tensors without an \
entry are quantized unweighted, with a note.

Example:
  qresidual quantize model-F32.gguf -o model-Q4_K_M.gguf --type q4_k_m";

/// Quantize a model.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF.
    #[arg(value_name = "IN.gguf")]
    pub input: PathBuf,
    /// Output GGUF.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// A ggml type or a llama.cpp mix.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the precision report (each tensor against its input) as JSON here.
    #[arg(long, value_name = "REPORT.json")]
    pub report: Option<PathBuf>,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat): weighted
    /// encoding, bit-exact with llama-quantize --imatrix.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Split the output into files of at most this size (e.g. 2G).
    #[arg(long, value_parser = super::parse_size, value_name = "SIZE")]
    pub split_max_size: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub refs: super::ModelRefArgs,
}

/// Run `dequantize`.
pub fn run_dequantize(a: &DequantizeArgs, console: &Log) -> Result<super::Done> {
    super::set_threads(a.threads)?;
    let req = DequantizeRequest {
        input: a.refs.locate(&a.input, a.quiet)?,
        output: a.output.clone(),
        target: a.ty.clone(),
        split_max_size: a.split_max_size,
    };
    let log = super::unless_quiet(console, a.quiet);
    let done = convert::dequantize(&req, &log)?;
    log.info(&format!("wrote {}\n", display_paths(&done.outputs)));
    Ok(super::Done {
        stdout: String::new(),
        outputs: done.outputs,
    })
}

/// Run `quantize`.
pub fn run_quantize(a: &QuantizeArgs, console: &Log) -> Result<super::Done> {
    super::set_threads(a.threads)?;
    let req = QuantizeRequest {
        input: a.refs.locate(&a.input, a.quiet)?,
        output: a.output.clone(),
        target: a.ty.clone(),
        report: a.report.clone(),
        imatrix: a.imatrix.clone(),
        split_max_size: a.split_max_size,
    };
    let log = super::unless_quiet(console, a.quiet);
    let done = convert::quantize(&req, &log)?;
    log.info(&format!("wrote {}\n", display_paths(&done.outputs)));
    Ok(super::Done {
        stdout: String::new(),
        outputs: done.outputs,
    })
}
