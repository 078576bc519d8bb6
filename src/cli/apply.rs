//! `qresidual apply`: base ⊕ α·residual → requantized model + precision report.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::json;

use crate::apply::budget::{self, SizeLimit};
use crate::apply::matching::{match_residual, residual_tensors, scan_residuals, Residual};
use crate::engine::pipeline;
use crate::engine::tasks::{self, Output};
use crate::model::rows::{EncodedRows, RowSource};
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
copied byte for byte.

How the sum is written (--strategy; measured with llama.cpp on gemma-3-270m, see the README):
  auto (default)  With --type keep: each tensor's type is chosen so that the tensor data stays \
within the base's size (as --max-size +0%) with the least estimated error — sampled rows of every \
tensor are encoded in every candidate type and bytes go where they remove the most relative \
error (a large embedding may drop a step so that every layer tensor rises). Every tensor is the \
fresh, bit-exact llama.cpp encoding at its chosen type. On a Q4_K_M base this halved the KL \
divergence that plain requantization leaves, at equal size. With another --type: as fresh.
  fresh           Every tensor in its own type (--type keep) or the one --type gives, \
requantized bit-exactly as llama.cpp's quantizer would from the same f32 sum (what \
--allow-requantize and PEFT's 4-bit merge do).
  search          As fresh, but per block the nearest (L2) of three encodings of the sum: the \
base's own block, the fresh one, and the base block's scales with every code re-rounded (legacy \
types, Q2_K…Q6_K). Never further from the sum than fresh, block by block; the report says how \
often each won.
  adapter         Leave the base untouched and write α·Δ as a llama.cpp LoRA adapter GGUF \
(-o adapter.gguf, needs --rank R) for `llama-cli -m BASE --lora adapter.gguf`: each 2-D tensor's \
best rank-R approximation (randomized streaming SVD); the report gives the share of ‖αΔ‖² held. \
1-D tensors, and token_embd.weight when tied to the output, cannot be adapter pairs.

Budgets (GGUF bases, --type keep): --max-size SIZE (250M, 2G, or relative to the base's tensor \
data: +10%, +0%, -5%) or --bpw X choose the types as auto does under that budget (candidates \
Q3_K…Q8_0 for rows of 256, Q4_0…Q8_0 and IQ4_NL for rows of 32; float and 1-D tensors keep \
theirs). --min-retention R raises every tensor with a residual to the cheapest larger type that \
keeps retention R. --imatrix FILE (llama-imatrix output, GGUF or legacy .dat) encodes with \
importance weights, bit-exact with llama-quantize --imatrix; it also lets IQ2_XXS bases take a \
residual.

When the residual carries a base fingerprint (residuals made by `qresidual extract` do), every \
matched base tensor is dequantized and compared with it; tensors that differ from the residual's \
base beyond what their quantization explains are named and nothing is written, unless --force. \
--tokenizer-config (and --generation-config) copy the instruct model's chat template and EOS/EOT \
ids into the output; --set edits any other key.

The report compares the written weights with the exact f32 sum dequant(base) + α·Δ: RMSE, max \
abs, relative RMSE, cosine, SNR and retention ⟨out − base, αΔ⟩/‖αΔ‖² (1: the residual survived, \
0: it was rounded away). When most of the residual was rounded away, apply warns and prices the \
option that would keep it.

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
    /// No progress bar and no report table.
    #[arg(long, short)]
    pub quiet: bool,
    /// fresh: requantize the sum (llama.cpp's bytes); search: per block the nearest of base block, fresh encoding and base scales with re-rounded codes; adapter: leave the base, write α·Δ as a LoRA adapter (needs --rank).
    #[arg(long, value_enum, default_value_t = Strategy::Auto)]
    pub strategy: Strategy,
}

/// How `apply` turns base + α·Δ into its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Strategy {
    /// With --type keep: the tensor types that fit the base's size with the least estimated error
    /// (as --max-size +0%), each encoded fresh; otherwise as fresh.
    Auto,
    /// Requantize dequant(base) + α·Δ as llama.cpp would (bit-exact), every tensor in the type --type gives.
    Fresh,
    /// Per block, the candidate nearest to the sum.
    Search,
    /// Leave the base untouched; write α·Δ as a rank-R LoRA adapter GGUF.
    Adapter,
}

/// Run `apply`.
pub fn run(a: &ApplyArgs) -> Result<()> {
    let budgeted = a.max_size.is_some() || a.bpw.is_some() || a.min_retention.is_some();
    if budgeted && crate::model::bnb::is_bnb_dir(&a.base) {
        return Err(Error::Usage(
            "--max-size, --bpw and --min-retention choose GGUF types: they do not apply to bitsandbytes bases".into(),
        ));
    }
    check_strategy(a, budgeted)?;
    if crate::model::bnb::is_bnb_dir(&a.base) {
        if a.imatrix.is_some() {
            return Err(Error::Usage(
                "--imatrix applies to GGUF bases; bitsandbytes formats take no importance matrix"
                    .into(),
            ));
        }
        if a.strategy == Strategy::Adapter {
            return Err(Error::Usage(
                "--strategy adapter needs a GGUF base (llama.cpp adapters)".into(),
            ));
        }
        if a.strategy == Strategy::Search {
            return Err(Error::Usage(
                "--strategy search needs a GGUF base (bitsandbytes bases are requantized fresh)"
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
    let target = tasks::parse_target(&a.ty)?;
    let keep = matches!(target, crate::model::mix::Target::Keep);
    if budgeted && !keep {
        return Err(Error::Usage(format!(
            "--type {} cannot be combined with --max-size, --bpw or --min-retention, which choose the types themselves",
            a.ty
        )));
    }
    let base = crate::format::gguf::GgufFile::open(&a.base)?;
    let residual = Residual::open(&a.residual)?;
    let mut inputs = base.paths();
    inputs.extend(residual.paths());
    crate::format::output::check_output(&a.output, &inputs)?;
    if a.split_max_size.is_some() {
        crate::format::output::check_split_output(&a.output, &inputs)?;
    }
    if let Some(r) = &a.report {
        crate::format::output::check_report(r, &a.output, &inputs)?;
    }

    let rtensors = residual_tensors(&residual)?;
    tasks::require_tensors(&base)?;
    if rtensors.is_empty() {
        return Err(Error::format(
            residual.path(),
            "the residual holds no tensors",
        ));
    }
    let matching = match_residual(&base, residual.path(), &rtensors, a.allow_missing)?;
    crate::apply::guard::guard_apply(
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

    if let (Strategy::Adapter, Some(rank)) = (a.strategy, a.rank) {
        return write_adapter(a, &base, &residual_rows, rank);
    }

    if a.imatrix.is_some() {
        tasks::check_imatrix_target(&target)?;
    }
    let imatrix = a
        .imatrix
        .as_deref()
        .map(crate::format::imatrix::Imatrix::open)
        .transpose()?;
    // auto: the base's own size, spent where it removes the most error.
    let auto = a.strategy == Strategy::Auto && keep && !budgeted;
    let plan = if budgeted || auto {
        let default_limit = auto.then_some(SizeLimit::Relative(0.0));
        match plan_budget(a, &base, &residual_rows, default_limit) {
            Ok(p) => Some(p),
            // No type choice fits the base's size (e.g. 2-bit IQ bases):
            // auto falls back to every tensor's own type.
            Err(Error::Usage(why)) if auto => {
                if !a.quiet {
                    eprintln!("note: --strategy auto keeps every tensor's type: {why}");
                }
                None
            }
            Err(e) => return Err(e),
        }
    } else {
        None
    };
    let out_types = match &plan {
        Some(p) => p.types(),
        None => tasks::output_types(&base, &target)?,
    };
    let tasks = match &imatrix {
        Some(m) => {
            let (tasks, used) =
                tasks::tasks_with_imatrix(&base, &out_types, residual_rows, a.scale, m)?;
            if !a.quiet {
                for n in used.notes(m.path()) {
                    eprintln!("{n}");
                }
            }
            tasks
        }
        None => tasks::tasks(&base, &out_types, residual_rows, a.scale)?,
    };
    let mut metadata =
        tasks::output_metadata(&base, tasks::file_type(&base, &target), a.name.as_deref());
    if let (Some(m), Some(p)) = (&imatrix, &a.imatrix) {
        tasks::add_imatrix_metadata(&mut metadata, m, p);
    }
    crate::apply::instruct::apply(
        &mut metadata,
        &base,
        a.tokenizer_config.as_deref(),
        a.generation_config.as_deref(),
        &a.set,
        a.quiet,
    )?;
    // auto encodes by search (never further from the sum than fresh, block
    // by block; measured a little better) unless importance weights rule.
    let search = match a.strategy {
        Strategy::Search => true,
        Strategy::Auto => a.imatrix.is_none(),
        _ => false,
    };
    let out = Output {
        path: &a.output,
        split_max_size: a.split_max_size,
        options: pipeline::Options {
            progress: !a.quiet,
            search,
            ..Default::default()
        },
    };
    let (outcomes, paths) = tasks::write(&tasks, &metadata, &out)?;
    let outcomes = report::rows(&outcomes);

    if let Some(path) = &a.report {
        let inputs = json!({
            "base": a.base.display().to_string(),
            "residual": a.residual.display().to_string(),
            "scale": a.scale,
            "type": a.ty,
            "strategy": match a.strategy {
                Strategy::Auto => "auto",
                Strategy::Fresh => "fresh",
                Strategy::Search => "search",
                Strategy::Adapter => "adapter",
            },
        });
        match &plan {
            Some(p) => {
                let mut j = report::to_json("apply", inputs, &outcomes);
                j["budget"] = p.to_json();
                report::write_value(path, &j)?;
            }
            None => report::write_json(path, "apply", inputs, &outcomes)?,
        }
    }
    if !a.quiet {
        eprint!("{}", report::to_text(&outcomes, 10));
        if search {
            eprint!("{}", report::search_text(&outcomes));
        }
        let remedy = plan.as_ref().map(remedy);
        if let Some(warning) = report::retention_warning(&outcomes, remedy.as_deref()) {
            eprintln!("warning: {warning}");
        }
        eprintln!("wrote {}", pipeline::display_paths(&paths));
    }
    Ok(())
}

/// What keeps a residual that requantization rounded away, priced from
/// the plan's own estimates.
fn remedy(plan: &budget::Plan) -> String {
    let base = plan.base_bytes();
    let wider = budget::choose(
        plan.tensors.clone(),
        budget::Constraints {
            max_bytes: Some(base + base / 10),
            min_retention: None,
        },
    );
    let more = match wider {
        Ok(p) if p.mean_error() < plan.mean_error() => format!(
            "--max-size +10% lowers the estimated mean relative error from {:.3e} to {:.3e}; ",
            plan.mean_error(),
            p.mean_error()
        ),
        _ => String::new(),
    };
    format!(
        "Keep it with {more}--strategy adapter --rank 16 leaves the base untouched and adds Δ at run \
         time as a LoRA adapter (on gemma-3-270m's pure Q4_0 this beat every requantized output; see the README)"
    )
}

/// Options that only one strategy takes.
fn check_strategy(a: &ApplyArgs, budgeted: bool) -> Result<()> {
    let usage = |m: &str| Err(Error::Usage(m.into()));
    match a.strategy {
        Strategy::Adapter => match a.rank {
            None => usage("--strategy adapter needs --rank R"),
            Some(_) if budgeted => usage(
                "--max-size, --bpw and --min-retention choose output types: they do not apply to --strategy adapter",
            ),
            Some(0) => usage("--rank must be at least 1"),
            Some(_) if a.ty != "keep" => {
                usage("--type does not apply to --strategy adapter: the base is left as it is")
            }
            Some(_) if a.imatrix.is_some() => {
                usage("--imatrix does not apply to --strategy adapter: nothing is quantized")
            }
            Some(_) if a.split_max_size.is_some() => {
                usage("--split-max-size does not apply to --strategy adapter")
            }
            Some(_)
                if a.tokenizer_config.is_some()
                    || a.generation_config.is_some()
                    || !a.set.is_empty() =>
            {
                usage("--tokenizer-config, --generation-config and --set do not apply to --strategy adapter")
            }
            Some(_) => Ok(()),
        },
        Strategy::Search if a.imatrix.is_some() => usage(
            "--strategy search measures plain distances: it does not take --imatrix (use --strategy fresh)",
        ),
        _ if a.rank.is_some() => usage("--rank needs --strategy adapter"),
        _ => Ok(()),
    }
}

/// `--strategy adapter`: α·Δ as a LoRA adapter GGUF; the base is only read.
fn write_adapter(
    a: &ApplyArgs,
    base: &crate::format::gguf::GgufFile,
    residual_rows: &[Option<Box<dyn RowSource + '_>>],
    rank: usize,
) -> Result<()> {
    let opts = crate::apply::adapter::Options::new(rank);
    let (outcomes, paths) = crate::apply::adapter::write(
        base,
        residual_rows,
        a.scale,
        &opts,
        &a.output,
        a.name.as_deref(),
        !a.quiet,
    )?;
    if let Some(path) = &a.report {
        let inputs = json!({
            "base": a.base.display().to_string(),
            "residual": a.residual.display().to_string(),
            "scale": a.scale,
        });
        report::write_value(
            path,
            &crate::apply::adapter::to_json(inputs, &opts, &outcomes),
        )?;
    }
    if !a.quiet {
        eprint!("{}", crate::apply::adapter::to_text(&outcomes, 10));
        eprintln!("wrote {}", pipeline::display_paths(&paths));
    }
    Ok(())
}

/// Choose every tensor's type under the budget flags.
fn plan_budget(
    a: &ApplyArgs,
    base: &crate::format::gguf::GgufFile,
    residual_rows: &[Option<Box<dyn RowSource + '_>>],
    default_limit: Option<SizeLimit>,
) -> Result<budget::Plan> {
    let started = std::time::Instant::now();
    let base_rows: Vec<EncodedRows<'_>> = (0..base.tensors().len())
        .map(|i| tasks::base_rows(base, i))
        .collect();
    let inputs: Vec<budget::TensorInput<'_>> = base
        .tensors()
        .iter()
        .zip(&base_rows)
        .enumerate()
        .map(|(i, (t, rows))| budget::TensorInput {
            name: &t.name,
            ty: t.ty,
            ne: &t.ne,
            base: rows,
            residual: residual_rows.get(i).and_then(|r| r.as_deref()),
        })
        .collect();
    let base_bytes: u64 = base.tensors().iter().map(|t| t.size).sum();
    let n_elements: u64 = base
        .tensors()
        .iter()
        .map(|t| t.ne.iter().product::<u64>())
        .sum();
    let limit = a
        .max_size
        .or(a.bpw.map(SizeLimit::BitsPerWeight))
        .or(default_limit);
    let max_bytes = limit.map(|l| l.bytes(base_bytes, n_elements)).transpose()?;
    let plan = budget::plan(
        base.path(),
        &inputs,
        a.scale,
        budget::Constraints {
            max_bytes,
            min_retention: a.min_retention,
        },
    )?;
    if !a.quiet {
        for w in &plan.warnings {
            eprintln!("warning: {w}");
        }
        eprint!("{}", plan.summary());
        eprintln!("  planned in {:.2} s", started.elapsed().as_secs_f64());
    }
    Ok(plan)
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
fn parse_retention(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("'{s}' is not a retention between 0 and 1")),
    }
}
