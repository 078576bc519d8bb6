//! `qresidual extract`: Δθ = θ_instruct − θ_base as a residual file.

use std::path::PathBuf;

use clap::Args;

use crate::engine::log::Log;
use crate::engine::pipeline;
use crate::model::Model;
use crate::ops::extract::{self, ResidualFormat};
use crate::{report, Result};

/// Make a residual from an instruct model and its base.
#[derive(Args, Debug)]
#[command(long_about = "\
Make a residual: Δθ = θ_instruct − θ_base, tensor by tensor, computed in f32.

Both models may be Hugging Face safetensors checkpoints (a file, a folder, or shards with \
model.safetensors.index.json; F16, BF16 or F32) or GGUF files of any type qresidual decodes \
(quantized tensors are dequantized first). Tensor names are kept when both models have the same \
format (Hugging Face names for checkpoints, GGUF names for GGUF files); when one is GGUF the \
other's names are mapped to GGUF names and llama's q/k rows put in GGUF order. Tensors found in \
only one model, or with different shapes, are listed and nothing is written.

--dtype f16 (default), bf16 or f32 writes safetensors; an f16 value beyond ±65504 is saturated \
and reported (use bf16 or f32 then). --dtype with a ggml type (q8_0, q6_k, q4_k, …) writes a \
compressed GGUF residual instead (1-D tensors and rows that are not whole blocks stay F16) and \
reports how much of Δ the type keeps. `apply` reads both forms.

The residual records how it was made and a fingerprint of the base (per tensor: shape, mean, \
RMS and a random-sign sketch that survives quantization), which `apply` checks.

Example:
  qresidual extract --instruct Llama-3.1-8B-Instruct/ --base Llama-3.1-8B/ -o residual.safetensors")]
pub struct ExtractArgs {
    /// The fine-tuned model (GGUF, safetensors file or folder, bitsandbytes folder, or a reference: user/repo, ollama:NAME, lmstudio:…).
    #[arg(long, value_name = "INSTRUCT")]
    pub instruct: PathBuf,
    /// The model it was fine-tuned from (any of the same formats).
    #[arg(long, value_name = "BASE")]
    pub base: PathBuf,
    /// Output: .safetensors, or .gguf with a ggml --dtype.
    #[arg(short, long, value_name = "RESIDUAL")]
    pub output: PathBuf,
    /// f16, bf16, f32 (safetensors) or a ggml type such as q8_0 (GGUF).
    #[arg(long, default_value = "f16", value_name = "DTYPE")]
    pub dtype: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar and no summary.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub refs: super::ModelRefArgs,
}

/// Run `extract`.
pub fn run(a: &ExtractArgs, console: &Log) -> Result<super::Done> {
    super::set_threads(a.threads)?;
    let format = ResidualFormat::parse(&a.dtype)?;
    let ext = a
        .output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let wrong = match format {
        ResidualFormat::Gguf(_) => ext.as_deref() == Some("safetensors"),
        ResidualFormat::Safetensors(_) => ext.as_deref() == Some("gguf"),
    };
    if wrong {
        return Err(crate::Error::Usage(format!(
            "{}: --dtype {} writes {}; give the output that extension",
            a.output.display(),
            a.dtype,
            match format {
                ResidualFormat::Gguf(_) => "a GGUF file (.gguf)",
                ResidualFormat::Safetensors(_) => "safetensors (.safetensors)",
            }
        )));
    }
    let instruct = Model::open(&a.refs.locate(&a.instruct, a.quiet)?)?;
    let base = Model::open(&a.refs.locate(&a.base, a.quiet)?)?;
    let mut inputs = instruct.paths();
    inputs.extend(base.paths());
    crate::format::output::check_output(&a.output, &inputs)?;

    let done = extract::extract(
        &instruct,
        &base,
        &a.output,
        format,
        super::unless_quiet(console, a.quiet).progress(),
    )?;
    for (name, n, largest) in &done.overflows {
        console.warn(&format!(
            "{name}: {n} value(s) of Δ exceed the {} range (largest |Δ| = {largest}) and were saturated; use --dtype bf16 or f32",
            format.name()
        ));
    }
    let log = super::unless_quiet(console, a.quiet);
    if !done.zero_tensors.is_empty() {
        log.note(&format!(
            "{} tensor(s) are identical in both models (Δ = 0): {}",
            done.zero_tensors.len(),
            crate::model::list(&done.zero_tensors)
        ));
    }
    if !done.outcomes.is_empty() {
        log.info(&report::to_text(&report::rows(&done.outcomes), 10));
    }
    let size: u64 = done
        .paths
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    log.info(&format!(
        "{} tensors, {} weights, {} names, {:.2} MiB ({:.3} bits per weight)\n",
        done.tensors,
        done.n_elements,
        if done.gguf_names { "GGUF" } else { "original" },
        size as f64 / (1u64 << 20) as f64,
        size as f64 * 8.0 / done.n_elements.max(1) as f64
    ));
    log.info(&format!("wrote {}\n", pipeline::display_paths(&done.paths)));
    Ok(super::Done {
        stdout: String::new(),
        outputs: done.paths,
    })
}
