//! `qresidual apply`: base ⊕ α·residual → requantized model + precision report.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

use crate::apply::budget::SizeLimit;
use crate::apply::{self, adapter, ApplyRequest, Budget, MetadataEdits};
use crate::engine::log::Log;
use crate::engine::pipeline::display_paths;
use crate::{report, Error, Result};

/// Long help of the command.
pub(super) const APPLY_HELP: &str = "\
Add a residual to a base model: out = base + α·Δ, tensor by tensor, requantized.

The base is a GGUF file of any type qresidual can decode (Q4_K_M, Q8_0, IQ4_XS, F16, …; a \
split set opens from its first file), or a Hugging Face bitsandbytes folder (NF4/FP4/int8; the \
output is then a folder and --type takes keep, nf4, fp4, int8, f16, bf16 or f32), or an FP8 folder (quant_method fp8 with block scales, or compressed-tensors float-quantized; --type keep recomputes the changed weights' scales as the reference quantizer does, or with --keep-scales keeps the base's scales and re-rounds the codes on them; f16, bf16 or f32 write plain floats), or an mlx-lm folder in MLX's affine mode (--type keep requantizes as mx.quantize does, with each module's bits and group size), or a compressed-tensors pack-quantized folder (GPTQ / W4A16 int4 or int8 groups: their scales came from calibration data qresidual does not have, so --type keep keeps every weight's scales and re-rounds its codes on that grid; the report's retention says how much of the residual survived), or a GPTQ folder (AutoGPTQ / GPTQModel layout: qweight, qzeros, scales, g_idx incl. act-order; 4 or 8 bits) or an AWQ GEMM folder (4 bits): these scales and zero points also came from calibration data, so --type keep keeps every module's scales, zero points and g_idx and re-rounds its codes to the nearest point of that grid (the report's retention says how much of the residual survived); f16, bf16 or f32 write a plain checkpoint. The residual is a .safetensors file, a folder of shards \
with model.safetensors.index.json, or a GGUF file; F16, BF16 or F32; tensor names either as in \
Hugging Face checkpoints (mapped by the base's general.architecture, with llama's q/k rotary \
permutation applied) or as in the base GGUF file (used as they are).

Base and residual may also be references, resolved before anything is read: user/repo:Q4_K_M \
(the GGUF file of that quantization in a Hugging Face repository), user/repo/FILE, user/repo (its \
safetensors checkpoint, only the files it needs), taken from the Hugging Face cache or downloaded \
into it (HF_HUB_CACHE/HF_HOME, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, --revision); \
ollama:NAME[:TAG] (the model blob of a pulled Ollama model, OLLAMA_MODELS); lmstudio:PUBLISHER/REPO/FILE \
or lmstudio:TEXT (LM Studio's models folder, LMSTUDIO_MODELS). A path that exists always wins. \
After writing, apply prints how to run the output in llama.cpp, Ollama (--ollama-modelfile writes \
OUT.Modelfile) and LM Studio.

Before anything is written, every residual tensor must match exactly one base tensor of the same \
shape and hold no NaN or infinity. Base tensors without a residual, or with an all-zero one, are \
copied byte for byte.

How the sum is written (--strategy; measured with llama.cpp on gemma-3-270m, see the README):
  auto (default)  With --type keep: each tensor's type is chosen so that the tensor data stays \
within the base's size (as --max-size +0%) with the least estimated error — sampled rows of every \
tensor are encoded in every candidate type and bytes go where they remove the most relative \
error (a large embedding may drop a step so that every layer tensor rises). Every tensor that \
changes type is the fresh, bit-exact llama.cpp encoding at its new type; a tensor that keeps its \
type keeps the base's scales with dithered codes (--rounding, below). On a Q4_K_M base and a real \
fine-tuning delta this matched the fine-tuned model quantized by llama.cpp itself, in a 5.5 % \
smaller file. With another --type, and on bitsandbytes bases: as fresh.
  fresh           Every tensor in its own type (--type keep) or the one --type gives, \
requantized bit-exactly as llama.cpp's quantizer would from the same f32 sum (what \
--allow-requantize and PEFT's 4-bit merge do).
  search          As fresh, but per block the nearest (L2) of three encodings of the sum: the \
base's own block, the fresh one, and the base block's scales with every code re-rounded (legacy \
types, Q2_K…Q6_K). Never further from the sum than fresh, block by block; the report says how \
often each won. On NF4/FP4 bitsandbytes bases: the base's block (codes and absmax) or the fresh \
one, never further from the sum than fresh's block as bitsandbytes dequantizes it (float32 and \
the module's float16); with double quantization the nested absmax state stays fresh's. On MLX \
bases (affine and mxfp4/mxfp8/nvfp4): per group the base's codes, scale (and bias) or mx.quantize's \
fresh group, whichever decodes nearer the sum in the model's dtype. On FP8 bases (block, \
channel or tensor scales): per scale block the base's codes and scale or the fresh ones (one more \
pass over the weight to measure both). LLM.int8 and float weights are written fresh; GPTQ/AWQ and \
pack-quantized weights (and FP8 with --keep-scales) keep the base's grid, where rounding each code \
to the nearest is already the nearest block.
  adapter         Leave the base untouched and write α·Δ as a llama.cpp LoRA adapter GGUF \
(-o adapter.gguf, needs --rank R) for `llama-cli -m BASE --lora adapter.gguf`: each 2-D tensor's \
best rank-R approximation (randomized streaming SVD); the report gives the share of ‖αΔ‖² held. \
1-D tensors, and token_embd.weight when tied to the output, cannot be adapter pairs.

Rounding on the base's grid (--rounding, GGUF bases): a residual smaller than half a \
quantization step — as real fine-tuning deltas are — added to a base that already lies on the \
grid rounds straight back to the base: nearest rounding keeps the base's block there and the \
residual is lost (retention near 0), however much it changes the model. dither (the default \
under auto) keeps the base's scales and rounds every code up with probability equal to its \
fractional distance to the next grid value (on IQ4_NL/IQ4_XS's non-uniform grid: between its two \
neighbouring grid values), so the output equals base + α·Δ in expectation \
(retention near 1), at the price of rounding noise of its own (about |Δ|·step per weight). \
Reproducible: the draws depend only on --seed N (default 0), the tensor name, the row and the \
element, never on threads or chunking. --rounding nearest gives auto's former output; --strategy \
search is nearest unless --rounding dither is given (then the tensors it keeps in their type are \
dithered whole, without the per-block choice). Measured on gemma-3-270m fully fine-tuned for 60 \
steps (Q4_K_M base, KL divergence against the fine-tuned model): without Δ 0.290, auto with \
nearest 0.275, auto with dither 0.075, llama.cpp quantizing the fine-tuned model itself 0.076. On a \
synthetic Δ of random directions (2 % of each tensor's RMS) dithering every tensor that keeps its \
type (search --rounding dither) doubled the KL instead (0.080 → 0.159): there the residual moves \
the outputs less than the extra noise does (under auto, which raised those tensors to Q8_0, the \
rounding made no difference: 0.084 either way).

--delta-weight λ prices the lost part of the residual in the planner of auto and the budgets: \
each candidate type costs ‖out − sum‖²/‖sum‖² + λ·‖αΔ‖²·(1 − retention)²/‖sum‖², the second \
term being the error along Δ, which moves every output the same way where incoherent rounding \
noise averages out. The default λ = 300 is fitted to the measured KL divergence of real \
fine-tuning deltas: with it the estimate orders the outputs as their KL does, and on a tiny llama \
the default kept 96 % of the fine-tune's gain on Q4_K_M instead of 88 % (Q4_0: 93 % instead of \
78 %). --delta-weight 0 counts only the plain error (the former planner).

Budgets (GGUF bases, --type keep): --max-size SIZE (250M, 2G, or relative to the base's tensor \
data: +10%, +0%, -5%) or --bpw X choose the types as auto does under that budget (candidates \
Q3_K…Q8_0 for rows of 256, Q4_0…Q8_0 and IQ4_NL for rows of 32; float and 1-D tensors keep \
theirs). --min-retention R raises every tensor with a residual to the cheapest larger type that \
keeps retention R. --imatrix FILE (llama-imatrix output, GGUF or legacy .dat) encodes with \
importance weights, bit-exact with llama-quantize --imatrix; it also lets IQ2_XXS bases take a \
residual. Under auto the tensors that keep their type are still re-rounded on the base's scales \
(dithered), where importance does not enter; the tensors moved to another type are encoded with it.

When the residual carries a base fingerprint (residuals made by `qresidual extract` do), every \
matched base tensor is dequantized and compared with it; tensors that differ from the residual's \
base beyond what their quantization explains are named and nothing is written, unless --force. \
--tokenizer-config (and --generation-config) copy the instruct model's chat template and EOS/EOT \
ids into the output; --set edits any other key.

The report compares the written weights with the exact f32 sum dequant(base) + α·Δ: RMSE, max \
abs, relative RMSE, cosine, SNR and retention ⟨out − base, αΔ⟩/‖αΔ‖² (1: the residual survived, \
0: it was rounded away). When most of the residual was rounded away, apply warns and prices the \
option that would keep it. --report R.json writes the report as JSON, --report R.html as one \
self-contained HTML page (heat maps per layer × tensor class, per-type aggregates, worst tensors, \
budget plan).

Example:
  qresidual apply --base Llama-3.1-8B-Q4_K_M.gguf --residual instruct-residual/ \\
      -o Llama-3.1-8B-Instruct-Q4_K_M.gguf --report report.json";

/// Add a residual to a base model.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Base model: GGUF file or bitsandbytes folder, or a reference (user/repo:QUANT, user/repo/FILE.gguf, ollama:NAME[:TAG], lmstudio:…).
    #[arg(long, value_name = "BASE.gguf")]
    pub base: PathBuf,
    /// Residual: .safetensors file, folder of shards, GGUF, or a Hub reference (user/repo).
    #[arg(long, value_name = "RESIDUAL")]
    pub residual: PathBuf,
    /// Output GGUF file.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// Output types: keep (each tensor's own), f32, f16, bf16, a ggml type (q4_k, q8_0, …) or a llama.cpp mix (q4_k_m, q5_k_s, …).
    #[arg(long = "type", default_value = "keep", value_name = "TYPE")]
    pub ty: String,
    /// α in out = base + α·Δ.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub scale: f32,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the full precision report here: JSON, or a self-contained HTML page when the name ends in .html.
    #[arg(long, value_name = "REPORT.json|.html")]
    pub report: Option<PathBuf>,
    /// Set general.name of the output.
    #[arg(long)]
    pub name: Option<String>,
    /// Instruct model's tokenizer_config.json: sets tokenizer.chat_template and the EOS/EOT ids.
    #[arg(long, value_name = "tokenizer_config.json")]
    pub tokenizer_config: Option<PathBuf>,
    /// Instruct model's generation_config.json: its eos_token_id (the last one of a list) when tokenizer_config.json has none.
    #[arg(long, value_name = "generation_config.json")]
    pub generation_config: Option<PathBuf>,
    /// Set a metadata key of the output: KEY=TYPE:VALUE, as in `metadata`.
    #[arg(long = "set", value_name = "KEY=TYPE:VALUE")]
    pub set: Vec<String>,
    /// Apply even when the base disagrees with the residual's base fingerprint.
    #[arg(long)]
    pub force: bool,
    /// Skip residual tensors that have no partner in the base instead of failing.
    #[arg(long)]
    pub allow_missing: bool,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat): the
    /// requantized tensors are encoded with importance weights, bit-exact
    /// with llama-quantize --imatrix.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Split the output into files of at most this size (e.g. 2G), named like gguf-split's.
    #[arg(long, value_parser = super::parse_size, value_name = "SIZE")]
    pub split_max_size: Option<u64>,
    /// Rank of the LoRA adapter (--strategy adapter).
    #[arg(long, value_name = "R")]
    pub rank: Option<usize>,
    /// Byte budget for the tensor data: a size (250M, 2G) or relative to the base's (+10%, +0%, -5%); picks each tensor's type.
    #[arg(long, value_parser = parse_max_size, allow_hyphen_values = true, value_name = "SIZE|±N%", conflicts_with = "bpw")]
    pub max_size: Option<SizeLimit>,
    /// Budget as average bits per weight over all tensors; picks each tensor's type.
    #[arg(long, value_parser = parse_bpw, value_name = "BITS", allow_negative_numbers = true)]
    pub bpw: Option<f64>,
    /// Every tensor with a residual keeps at least this retention (0–1) when some type can.
    #[arg(long, value_parser = parse_retention, value_name = "R", allow_negative_numbers = true)]
    pub min_retention: Option<f64>,
    /// λ of the type planner (auto and budgets): how many times the lost part of the residual, ‖Δ‖²·(1 − retention)², counts against incoherent error energy.
    #[arg(long, value_parser = parse_delta_weight, value_name = "λ", allow_negative_numbers = true)]
    pub delta_weight: Option<f64>,
    /// No progress bar and no report table.
    #[arg(long, short)]
    pub quiet: bool,
    /// fresh: requantize the sum (llama.cpp's or bitsandbytes' bytes); search: per block the nearest of base block, fresh encoding and (GGUF) base scales with re-rounded codes; adapter: leave the base, write α·Δ as a LoRA adapter (needs --rank).
    #[arg(long, value_enum, default_value_t = Strategy::Auto)]
    pub strategy: Strategy,
    /// FP8 bases with --type keep: keep every weight's scales and re-round its codes on them to the nearest e4m3 value (default: scales recomputed from the sum as the reference quantizer does).
    #[arg(long)]
    pub keep_scales: bool,
    /// Rounding where a tensor keeps the base's block type: dither (default under auto: each code rounds up with probability equal to its fractional distance, so the output equals the sum in expectation; reproducible with --seed) or nearest (default under search).
    #[arg(long, value_enum)]
    pub rounding: Option<Rounding>,
    /// Seed of --rounding dither (the same seed writes the same bytes, whatever the thread count).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    /// Also write an Ollama Modelfile beside the output (OUT.Modelfile, FROM the output) for `ollama create NAME -f OUT.Modelfile`.
    #[arg(long)]
    pub ollama_modelfile: bool,
    #[command(flatten)]
    pub refs: super::ModelRefArgs,
}

/// How `apply` turns base + α·Δ into its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// With --type keep: the tensor types that fit the base's size with the least estimated error
    /// (as --max-size +0%), each encoded fresh; otherwise as fresh.
    Auto,
    /// Requantize dequant(base) + α·Δ as llama.cpp would (bit-exact), every tensor in the type --type gives.
    Fresh,
    /// Per block, the candidate nearest to the sum (GGUF and NF4/FP4 bases).
    Search,
    /// Leave the base untouched; write α·Δ as a rank-R LoRA adapter GGUF.
    Adapter,
}

/// How codes on the base's grid are rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Rounding {
    /// The nearest grid value.
    Nearest,
    /// Up with probability equal to the fractional distance (unbiased), seeded.
    Dither,
}

/// Run `apply`.
pub fn run(a: &ApplyArgs, console: &Log) -> Result<super::Done> {
    super::set_threads(a.threads)?;
    let strategy = match (a.strategy, a.rank) {
        (Strategy::Adapter, Some(rank)) => apply::Strategy::Adapter { rank },
        (Strategy::Adapter, None) => {
            return Err(Error::Usage("--strategy adapter needs --rank R".into()))
        }
        (_, Some(_)) => return Err(Error::Usage("--rank needs --strategy adapter".into())),
        (Strategy::Auto, None) => apply::Strategy::Auto,
        (Strategy::Fresh, None) => apply::Strategy::Fresh,
        (Strategy::Search, None) => apply::Strategy::Search,
    };
    if a.ollama_modelfile
        && (a.split_max_size.is_some() || matches!(strategy, apply::Strategy::Adapter { .. }))
    {
        return Err(Error::Usage(
            "--ollama-modelfile needs one merged GGUF file: Ollama loads neither split files nor (reliably) adapters".into(),
        ));
    }
    let req = ApplyRequest {
        base: a.refs.locate(&a.base, a.quiet)?,
        residual: a.refs.locate(&a.residual, a.quiet)?,
        output: a.output.clone(),
        target: a.ty.clone(),
        scale: a.scale,
        strategy,
        rounding: a.rounding.map(|r| match r {
            Rounding::Nearest => apply::Rounding::Nearest,
            Rounding::Dither => apply::Rounding::Dither,
        }),
        seed: a.seed,
        budget: Budget {
            max_size: a.max_size,
            bpw: a.bpw,
            min_retention: a.min_retention,
            delta_weight: a.delta_weight,
        },
        imatrix: a.imatrix.clone(),
        split_max_size: a.split_max_size,
        metadata: MetadataEdits {
            name: a.name.clone(),
            tokenizer_config: a.tokenizer_config.clone(),
            generation_config: a.generation_config.clone(),
            set: a.set.clone(),
        },
        force: a.force,
        allow_missing: a.allow_missing,
        report: a.report.clone(),
        keep_scales: a.keep_scales,
    };
    let modelfile = a.ollama_modelfile.then(|| modelfile_path(&a.output));
    if let Some(m) = &modelfile {
        if req.base.is_dir() {
            return Err(Error::Usage(format!(
                "{}: --ollama-modelfile needs a GGUF output; a bitsandbytes base writes a folder",
                req.base.display()
            )));
        }
        let inputs = [req.base.clone(), req.residual.clone(), a.output.clone()];
        crate::format::output::check_output(m, &inputs)?;
    }
    let log = super::unless_quiet(console, a.quiet);
    let result = apply::apply(&req, &log)?;
    if let Some(m) = &modelfile {
        crate::format::output::write_atomic(m, modelfile_text(&a.output).as_bytes())?;
    }
    match &result.adapter {
        Some(outcomes) => log.info(&adapter::to_text(outcomes, 10)),
        None => log.info(&report::to_text(&result.tensors, 10)),
    }
    if result.searched {
        log.info(&report::search_text(&result.tensors));
    }
    if let Some(warning) = &result.retention_warning {
        log.warn(warning);
    }
    log.info(&format!("wrote {}\n", display_paths(&result.outputs)));
    log.info(&how_to_run(
        &req,
        &result.outputs,
        result.adapter.is_some(),
        modelfile.as_deref(),
    ));
    Ok(super::Done {
        stdout: String::new(),
        outputs: result.outputs,
    })
}

/// `OUT.Modelfile` beside `OUT.gguf`.
fn modelfile_path(output: &Path) -> PathBuf {
    output.with_extension("Modelfile")
}

/// An Ollama Modelfile that builds a model from the output (the chat
/// template is the one carried in the GGUF's metadata).
fn modelfile_text(output: &Path) -> String {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    format!("FROM ./{name}\n")
}

/// How to run what apply wrote in llama.cpp, Ollama and LM Studio.
fn how_to_run(
    req: &ApplyRequest,
    outputs: &[PathBuf],
    adapter: bool,
    modelfile: Option<&Path>,
) -> String {
    let Some(first) = outputs.first().filter(|p| p.is_file()) else {
        return String::new();
    };
    let shown = |p: &Path| p.display().to_string();
    if adapter {
        return format!(
            "run it: llama-cli -m {} --lora {}\n",
            shown(&req.base),
            shown(first)
        );
    }
    let mut s = format!("run it:\n  llama.cpp  llama-cli -m {}\n", shown(first));
    let stem = first
        .file_stem()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match modelfile {
        Some(m) => s += &format!("  Ollama     ollama create {} -f {}\n", stem.to_ascii_lowercase(), shown(m)),
        None => s += "  Ollama     apply again with --ollama-modelfile, then ollama create NAME -f OUT.Modelfile\n",
    }
    if outputs.len() == 1 {
        let dir = crate::model::locate::lmstudio_models_dir()
            .join("local")
            .join(&stem);
        s += &format!(
            "  LM Studio  mkdir -p {d} && cp {} {d}/\n",
            shown(first),
            d = dir.display()
        );
    }
    s
}

/// `--max-size`: an absolute size, or `+N%` / `-N%` of the base's tensor data.
fn parse_max_size(s: &str) -> std::result::Result<SizeLimit, String> {
    let t = s.trim();
    if let Some(p) = t.strip_suffix('%') {
        let v: f64 = p
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a change such as +10% or -5%"))?;
        if !v.is_finite() || v <= -100.0 {
            return Err(format!("'{s}' leaves no room for tensor data"));
        }
        return Ok(SizeLimit::Relative(v));
    }
    if t.starts_with('-') {
        return Err(format!("'{s}': a size cannot be negative"));
    }
    super::parse_size(t).map(SizeLimit::Bytes)
}

/// `--bpw`: a positive number of bits per weight.
fn parse_bpw(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 32.0 => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of bits per weight in (0, 32]"
        )),
    }
}

/// `--min-retention`: a share between 0 and 1.
fn parse_delta_weight(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!("'{s}' is not a weight of 0 or more")),
    }
}

fn parse_retention(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a retention between 0 and 1")),
    }
}
