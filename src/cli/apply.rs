//! `qresidual apply`: base ⊕ α·residual → requantized model + precision report.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use crate::pipeline::{self, EncodedRows, RowSource};
use crate::plan::{match_residual, residual_tensors, scan_residuals, Residual};
use crate::transform::{self, Output};
use crate::{report, Error, Result};

/// Long help of the command.
pub(super) const APPLY_HELP: &str = "\
Add a residual to a base model: out = base + α·Δ, tensor by tensor, requantized.

The base is a GGUF file of any type qresidual can decode (Q4_K_M, Q8_0, IQ4_XS, F16, …; a \
split set opens from its first file), or a Hugging Face bitsandbytes folder (NF4/FP4/int8; the \
output is then a folder and --type takes keep, nf4, fp4, int8, f16, bf16 or f32). The residual is a .safetensors file, a folder of shards \
with model.safetensors.index.json, or a GGUF file; F16, BF16 or F32; tensor names either as in \
Hugging Face checkpoints (mapped by the base's general.architecture, with llama's q/k rotary \
permutation applied) or as in the base GGUF file (used as they are).

Before anything is written, every residual tensor must match exactly one base tensor of the same \
shape and hold no NaN or infinity. Base tensors without a residual, or with an all-zero one, are \
copied byte for byte. With --type keep every tensor keeps its type, so a Q4_K_M mix stays that \
mix; requantization is bit-exact with llama.cpp's quantizer on the same f32 sum.

When the residual carries a base fingerprint (residuals made by `qresidual extract` do), every \
matched base tensor is dequantized and compared with it; tensors that differ from the residual's \
base beyond what their quantization explains are named and nothing is written, unless --force. \
--imatrix FILE (a llama-imatrix importance matrix, GGUF or legacy .dat) encodes the requantized \
tensors with importance weights, bit-exact with llama-quantize --imatrix; tensors without an \
entry are encoded unweighted, with a note. \
--tokenizer-config (and --generation-config) copy the instruct model's chat template and EOS/EOT \
ids into the output; --set edits any other key.

The report compares the written weights with the exact f32 sum dequant(base) + α·Δ: RMSE, max \
abs, relative RMSE, cosine, SNR and retention ⟨out − base, αΔ⟩/‖αΔ‖² (1: the residual survived, \
0: it was rounded away).

Example:
  qresidual apply --base Llama-3.1-8B-Q4_K_M.gguf --residual instruct-residual/ \\
      -o Llama-3.1-8B-Instruct-Q4_K_M.gguf --report report.json";

/// Add a residual to a base model.
#[derive(Args, Debug)]
pub struct ApplyArgs {
    /// Base model (GGUF).
    #[arg(long, value_name = "BASE.gguf")]
    pub base: PathBuf,
    /// Residual: .safetensors file, folder of shards, or GGUF.
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
    /// Write the full precision report as JSON here.
    #[arg(long, value_name = "REPORT.json")]
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
    /// No progress bar and no report table.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Run `apply`.
pub fn run(a: &ApplyArgs) -> Result<()> {
    if crate::bnb_model::is_bnb_dir(&a.base) {
        if a.imatrix.is_some() {
            return Err(Error::Usage(
                "--imatrix applies to GGUF bases; bitsandbytes formats take no importance matrix"
                    .into(),
            ));
        }
        return super::bnb::apply(a);
    }
    super::set_threads(a.threads)?;
    if !a.scale.is_finite() {
        return Err(Error::Usage(format!(
            "--scale {} is not a finite number",
            a.scale
        )));
    }
    let target = transform::parse_target(&a.ty)?;
    let base = crate::gguf::GgufFile::open(&a.base)?;
    let residual = Residual::open(&a.residual)?;
    let mut inputs = base.paths();
    inputs.extend(residual.paths());
    super::check_output(&a.output, &inputs)?;
    if a.split_max_size.is_some() {
        super::check_split_output(&a.output, &inputs)?;
    }
    if let Some(r) = &a.report {
        super::check_report(r, &a.output, &inputs)?;
    }

    let rtensors = residual_tensors(&residual)?;
    super::require_tensors(&base)?;
    if rtensors.is_empty() {
        return Err(Error::format(
            residual.path(),
            "the residual holds no tensors",
        ));
    }
    let matching = match_residual(&base, residual.path(), &rtensors, a.allow_missing)?;
    crate::guard::guard_apply(
        &base,
        &residual,
        &rtensors,
        &matching.pairs,
        a.force,
        a.quiet,
    )?;
    let all_zero = scan_residuals(residual.path(), &rtensors, &matching.pairs, &residual)?;
    if !a.quiet {
        for note in &matching.notes {
            eprintln!("note: {note}");
        }
        if !matching.unmatched.is_empty() {
            eprintln!(
                "warning: {} residual tensor(s) skipped (--allow-missing): {}",
                matching.unmatched.len(),
                matching.unmatched.join(", ")
            );
        }
    }

    let mut residual_rows: Vec<Option<Box<dyn RowSource + '_>>> =
        (0..base.tensors().len()).map(|_| None).collect();
    let mut zero = 0;
    for (p, &is_zero) in matching.pairs.iter().zip(&all_zero) {
        if is_zero || a.scale == 0.0 {
            zero += 1;
            continue;
        }
        let rt = &rtensors[p.residual];
        residual_rows[p.base] = Some(Box::new(EncodedRows {
            path: residual.path(),
            name: rt.name,
            data: rt.data,
            ty: rt.ty,
            row_len: rt.row_len(),
            n_rows: rt.n_rows(),
            permutation: p.permutation,
            pages: Some(&residual),
        }));
    }
    if zero > 0 && !a.quiet {
        eprintln!(
            "note: {zero} residual tensor(s) are all zero; their base tensors are copied unchanged"
        );
    }

    if a.imatrix.is_some() {
        transform::check_imatrix_target(&target)?;
    }
    let imatrix = a
        .imatrix
        .as_deref()
        .map(crate::imatrix::Imatrix::open)
        .transpose()?;
    let out_types = transform::output_types(&base, &target)?;
    let tasks = match &imatrix {
        Some(m) => {
            let (tasks, used) =
                transform::tasks_with_imatrix(&base, &out_types, residual_rows, a.scale, m)?;
            if !a.quiet {
                for n in used.notes(m.path()) {
                    eprintln!("{n}");
                }
            }
            tasks
        }
        None => transform::tasks(&base, &out_types, residual_rows, a.scale)?,
    };
    let mut metadata = transform::output_metadata(
        &base,
        transform::file_type(&base, &target),
        a.name.as_deref(),
    );
    if let (Some(m), Some(p)) = (&imatrix, &a.imatrix) {
        transform::add_imatrix_metadata(&mut metadata, m, p);
    }
    crate::instruct::apply(
        &mut metadata,
        &base,
        a.tokenizer_config.as_deref(),
        a.generation_config.as_deref(),
        &a.set,
        a.quiet,
    )?;
    let out = Output {
        path: &a.output,
        split_max_size: a.split_max_size,
        options: pipeline::Options {
            progress: !a.quiet,
            ..Default::default()
        },
    };
    let (outcomes, paths) = transform::write(&tasks, &metadata, &out)?;
    let outcomes = report::rows(&outcomes);

    if let Some(path) = &a.report {
        let inputs = json!({
            "base": a.base.display().to_string(),
            "residual": a.residual.display().to_string(),
            "scale": a.scale,
            "type": a.ty,
        });
        report::write_json(path, "apply", inputs, &outcomes)?;
    }
    if !a.quiet {
        eprint!("{}", report::to_text(&outcomes, 10));
        if let Some(warning) = report::retention_warning(&outcomes) {
            eprintln!("warning: {warning}");
        }
        eprintln!("wrote {}", pipeline::display_paths(&paths));
    }
    Ok(())
}
