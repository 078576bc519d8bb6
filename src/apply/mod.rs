//! `apply`: out = base + α·residual, as a library call.
//!
//! [`apply`] takes an [`ApplyRequest`] (plain Rust values, no command-line
//! types) and returns an [`ApplyResult`] with every tensor's statistics.
//! It matches the residual's tensors to the base's ([`matching`]), checks
//! the base against the residual's fingerprint ([`guard`]), chooses how
//! the sum is written ([`Strategy`]; [`budget`] for auto and size limits,
//! [`adapter`] for LoRA output) and runs the one engine
//! ([`crate::engine::pipeline`]).
//!
//! ```no_run
//! use qresidual::apply::{apply, ApplyRequest, Strategy};
//! use qresidual::engine::log::Log;
//!
//! let mut req = ApplyRequest::new("base-Q4_K_M.gguf", "residual/", "instruct-Q4_K_M.gguf");
//! req.strategy = Strategy::Fresh;
//! let result = apply(&req, &Log::silent())?;
//! for t in result.tensors.iter().filter(|t| t.has_residual) {
//!     println!("{}: retention {:?}", t.name, t.stats.and_then(|s| s.retention()));
//! }
//! # Ok::<(), qresidual::Error>(())
//! ```

pub mod adapter;
pub mod bnb;
pub mod budget;
pub mod guard;
pub mod instruct;
pub mod matching;

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::engine::log::Log;
use crate::engine::pipeline;
use crate::engine::tasks::{self, Output};
use crate::format::gguf::GgufFile;
use crate::model::mix::Target;
use crate::model::rows::{EncodedRows, RowSource};
use crate::model::Model;
use crate::report::{self, Row};
use crate::{Error, Result};
use budget::SizeLimit;
use matching::{match_residual, residual_tensors, scan_residuals, Residual};

/// How the sum is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// With `target` keep: the tensor types that fit the base's size with
    /// the least estimated error (as a `+0%` size limit), each encoded by
    /// search; otherwise as [`Strategy::Fresh`].
    #[default]
    Auto,
    /// Requantize dequant(base) + α·Δ as llama.cpp would (bit-exact).
    Fresh,
    /// Per block, the candidate nearest to the sum (base block, fresh
    /// encoding, base scales with re-rounded codes; on NF4/FP4
    /// bitsandbytes bases the first two).
    Search,
    /// Leave the base untouched; write α·Δ as a rank-`rank` LoRA adapter.
    Adapter {
        /// Rank of every adapter pair.
        rank: usize,
    },
}

impl Strategy {
    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Fresh => "fresh",
            Strategy::Search => "search",
            Strategy::Adapter { .. } => "adapter",
        }
    }
}

/// How codes are rounded where a tensor keeps the base's block type and
/// scales (auto and search, GGUF bases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rounding {
    /// The nearest grid value, per block the nearest candidate (search):
    /// a residual below half a step rounds back to the base there.
    Nearest,
    /// Dithered: every code rounds up with probability equal to its
    /// fractional distance between the two neighbouring grid values, so the
    /// output equals the sum in expectation; reproducible from the request's
    /// seed (uniforms drawn per seed, tensor name, row and element).
    Dither,
}

impl Rounding {
    /// The name used on the command line and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Rounding::Nearest => "nearest",
            Rounding::Dither => "dither",
        }
    }
}

/// The seed of dithered rounding when `req` dithers: as asked, else by
/// default under auto on a GGUF base without importance weights (where
/// tensors that keep their type are re-rounded on the base's grid).
fn dither_seed(req: &ApplyRequest) -> Option<u64> {
    let dither = match req.rounding {
        Some(r) => r == Rounding::Dither,
        None => req.strategy == Strategy::Auto && req.imatrix.is_none(),
    };
    dither.then_some(req.seed)
}

/// Size budgets that choose every tensor's type (GGUF bases, target keep).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Budget {
    /// Byte budget for the tensor data.
    pub max_size: Option<SizeLimit>,
    /// Budget as average bits per weight.
    pub bpw: Option<f64>,
    /// Every tensor with a residual keeps at least this retention when some type can.
    pub min_retention: Option<f64>,
    /// λ of the planner's objective (default [`budget::DITHER_DELTA_WEIGHT`]
    /// when dithering, else [`budget::DELTA_WEIGHT`]): how
    /// many times the lost part of the residual counts against incoherent
    /// error energy. Not a budget: it only weighs the plans that auto and
    /// the budgets choose between.
    pub delta_weight: Option<f64>,
}

impl Budget {
    /// Whether any budget is set.
    pub fn is_set(&self) -> bool {
        self.max_size.is_some() || self.bpw.is_some() || self.min_retention.is_some()
    }
}

/// Metadata written into a GGUF output besides the base's.
#[derive(Debug, Clone, Default)]
pub struct MetadataEdits {
    /// `general.name`.
    pub name: Option<String>,
    /// The instruct model's tokenizer_config.json (chat template, EOS/EOT ids).
    pub tokenizer_config: Option<PathBuf>,
    /// The instruct model's generation_config.json (EOS id fallback).
    pub generation_config: Option<PathBuf>,
    /// `KEY=TYPE:VALUE` edits, as the `metadata` command takes them.
    pub set: Vec<String>,
}

/// Everything `apply` needs to know.
#[derive(Debug, Clone)]
pub struct ApplyRequest {
    /// Base model: GGUF file (or first split) or bitsandbytes folder.
    pub base: PathBuf,
    /// Residual: safetensors file or folder of shards, or GGUF.
    pub residual: PathBuf,
    /// Output file (GGUF) or folder (bitsandbytes).
    pub output: PathBuf,
    /// Output types: `keep`, a type, or a llama.cpp mix (GGUF); `keep`,
    /// `nf4`, `fp4`, `int8`, `f16`, `bf16`, `f32` (bitsandbytes).
    pub target: String,
    /// α in out = base + α·Δ.
    pub scale: f32,
    /// How the sum is written.
    pub strategy: Strategy,
    /// How codes on the base's grid are rounded (auto and search); `None`:
    /// dithered under auto, nearest otherwise.
    pub rounding: Option<Rounding>,
    /// Seed of dithered rounding.
    pub seed: u64,
    /// Size budgets (choose the types).
    pub budget: Budget,
    /// llama-imatrix output: encode with importance weights.
    pub imatrix: Option<PathBuf>,
    /// Split the GGUF output into files of at most this many bytes.
    pub split_max_size: Option<u64>,
    /// Metadata edits of the GGUF output.
    pub metadata: MetadataEdits,
    /// Apply even when the base disagrees with the residual's fingerprint.
    pub force: bool,
    /// Skip residual tensors without a partner in the base.
    pub allow_missing: bool,
    /// Write the JSON report here.
    pub report: Option<PathBuf>,
    /// FP8 bases written `keep`: keep every weight's scales and re-round
    /// its codes on them (otherwise scales are recomputed from the sum).
    pub keep_scales: bool,
}

impl ApplyRequest {
    /// A request with the defaults of the command line: target keep,
    /// α = 1, strategy auto, no budget.
    pub fn new(
        base: impl Into<PathBuf>,
        residual: impl Into<PathBuf>,
        output: impl Into<PathBuf>,
    ) -> Self {
        ApplyRequest {
            base: base.into(),
            residual: residual.into(),
            output: output.into(),
            target: "keep".into(),
            scale: 1.0,
            strategy: Strategy::Auto,
            rounding: None,
            seed: 0,
            budget: Budget::default(),
            imatrix: None,
            split_max_size: None,
            metadata: MetadataEdits::default(),
            force: false,
            allow_missing: false,
            report: None,
            keep_scales: false,
        }
    }
}

/// What `apply` wrote and measured.
#[derive(Debug)]
pub struct ApplyResult {
    /// Files (or the folder) written.
    pub outputs: Vec<PathBuf>,
    /// Every output tensor with its statistics against the exact sum
    /// (empty for an adapter).
    pub tensors: Vec<Row>,
    /// Per tensor share of ‖αΔ‖² an adapter holds (`Strategy::Adapter`).
    pub adapter: Option<Vec<adapter::Outcome>>,
    /// The type plan, when a budget (or auto) chose the types.
    pub plan: Option<budget::Plan>,
    /// Whether blocks were encoded by search (the report has win counts).
    pub searched: bool,
    /// When most of the residual was rounded away: what happened and what
    /// would keep it.
    pub retention_warning: Option<String>,
    /// The JSON report (also written to the request's `report` path).
    pub report: Value,
}

/// Run `apply`: validate the request, read the inputs, write the output
/// atomically and measure it.
pub fn apply(req: &ApplyRequest, log: &Log) -> Result<ApplyResult> {
    check_request(req)?;
    match Model::open(&req.base)? {
        Model::Gguf(_) if req.keep_scales => Err(Error::Usage(format!(
            "{}: --keep-scales applies to FP8 bases written with --type keep; a GGUF base re-rounds on its scales with --strategy search",
            req.base.display()
        ))),
        Model::Gguf(base) => apply_gguf(req, &base, log),
        Model::Bitsandbytes(base) | Model::Fp8(base) | Model::Mlx(base) | Model::Packed(base) | Model::Gptq(base) => bnb::apply(req, &base, log),
        Model::Safetensors(_) => Err(Error::Usage(format!(
            "{}: a plain safetensors checkpoint is not a quantized base; add the residual to its GGUF or bitsandbytes form",
            req.base.display()
        ))),
    }
}

/// Options that only one strategy (or one base format) takes.
fn check_request(req: &ApplyRequest) -> Result<()> {
    let usage = |m: &str| Err(Error::Usage(m.into()));
    if !req.scale.is_finite() {
        return Err(Error::Usage(format!(
            "--scale {} is not a finite number",
            req.scale
        )));
    }
    match req.strategy {
        Strategy::Adapter { rank } => {
            if req.budget.is_set() {
                return usage("--max-size, --bpw and --min-retention choose output types: they do not apply to --strategy adapter");
            }
            if rank == 0 {
                return usage("--rank must be at least 1");
            }
            if req.target != "keep" {
                return usage(
                    "--type does not apply to --strategy adapter: the base is left as it is",
                );
            }
            if req.imatrix.is_some() {
                return usage("--imatrix does not apply to --strategy adapter: nothing is quantized");
            }
            if req.split_max_size.is_some() {
                return usage("--split-max-size does not apply to --strategy adapter");
            }
            let m = &req.metadata;
            if m.tokenizer_config.is_some() || m.generation_config.is_some() || !m.set.is_empty()
            {
                return usage("--tokenizer-config, --generation-config and --set do not apply to --strategy adapter");
            }
            Ok(())
        }
        _ if req.rounding == Some(Rounding::Dither) && req.strategy == Strategy::Fresh => usage(
            "--rounding dither re-rounds codes on the base's grid: it takes --strategy auto or search, not fresh (llama.cpp's own encoding)",
        ),
        _ if req.rounding == Some(Rounding::Dither) && req.imatrix.is_some() => usage(
            "--rounding dither keeps the base's scales: it does not take --imatrix",
        ),
        Strategy::Search if req.imatrix.is_some() => usage(
            "--strategy search measures plain distances: it does not take --imatrix (use --strategy fresh)",
        ),
        _ => Ok(()),
    }
}

/// The residual matched to a GGUF base and checked: one residual row
/// source per base tensor (`None`: no residual, or an all-zero one).
fn match_gguf<'a>(
    req: &ApplyRequest,
    base: &'a GgufFile,
    residual: &'a Residual,
    log: &Log,
) -> Result<Vec<Option<Box<dyn RowSource + 'a>>>> {
    let rtensors = residual_tensors(residual)?;
    tasks::require_tensors(base)?;
    if rtensors.is_empty() {
        return Err(Error::format(
            residual.path(),
            "the residual holds no tensors",
        ));
    }
    let matching = match_residual(base, residual.path(), &rtensors, req.allow_missing)?;
    guard::guard_apply(base, residual, &rtensors, &matching.pairs, req.force, log)?;
    let all_zero = scan_residuals(residual.path(), &rtensors, &matching.pairs, residual)?;
    Ok(matching.residual_rows(
        residual,
        &rtensors,
        &all_zero,
        (base.tensors().len(), req.scale),
        log,
    ))
}

/// The plan that chooses the output types when a size budget (or auto)
/// does; `None` when the target gives them, or when auto finds no plan that
/// fits and every tensor keeps its own type.
fn choose_types(
    req: &ApplyRequest,
    base: &GgufFile,
    residual_rows: &[Option<Box<dyn RowSource + '_>>],
    keep: bool,
    log: &Log,
) -> Result<Option<budget::Plan>> {
    let auto = req.strategy == Strategy::Auto && keep && !req.budget.is_set();
    if !(auto || req.budget.is_set()) {
        return Ok(None);
    }
    let default_limit = auto.then_some(SizeLimit::Relative(0.0));
    match plan_budget(req, base, residual_rows, default_limit, log)? {
        Ok(plan) => Ok(Some(plan)),
        // No type choice fits the base's size (e.g. 2-bit IQ bases): auto
        // falls back to every tensor's own type.
        Err(budget::Infeasible(why)) if auto => {
            log.note(&format!("--strategy auto keeps every tensor's type: {why}"));
            Ok(None)
        }
        Err(infeasible) => Err(infeasible.into()),
    }
}

fn apply_gguf(req: &ApplyRequest, base: &GgufFile, log: &Log) -> Result<ApplyResult> {
    let target = tasks::parse_target(&req.target)?;
    let keep = matches!(target, Target::Keep);
    if req.budget.is_set() && !keep {
        return Err(Error::Usage(format!(
            "--type {} cannot be combined with --max-size, --bpw or --min-retention, which choose the types themselves",
            req.target
        )));
    }
    let residual = Residual::open(&req.residual)?;
    let mut inputs = base.paths();
    inputs.extend(residual.paths());
    check_outputs(req, &inputs)?;

    let residual_rows = match_gguf(req, base, &residual, log)?;
    if let Strategy::Adapter { rank } = req.strategy {
        return write_adapter(req, base, &residual_rows, rank, log);
    }
    if req.imatrix.is_some() {
        tasks::check_imatrix_target(&target)?;
    }
    let imatrix = req
        .imatrix
        .as_deref()
        .map(crate::format::imatrix::Imatrix::open)
        .transpose()?;
    let plan = choose_types(req, base, &residual_rows, keep, log)?;
    let out_types = match &plan {
        Some(p) => p.types(),
        None => tasks::output_types(base, &target)?,
    };
    let tasks = match &imatrix {
        Some(m) => {
            let (tasks, used) =
                tasks::tasks_with_imatrix(base, &out_types, residual_rows, req.scale, m)?;
            for n in used.notes(m.path()) {
                log.info(&format!("{n}\n"));
            }
            tasks
        }
        None => tasks::tasks(base, &out_types, residual_rows, req.scale)?,
    };
    let mut metadata = tasks::output_metadata(
        base,
        tasks::file_type(base, &target),
        req.metadata.name.as_deref(),
    );
    if let (Some(m), Some(p)) = (&imatrix, &req.imatrix) {
        tasks::add_imatrix_metadata(&mut metadata, m, p);
    }
    let m = &req.metadata;
    let (tokenizer, generation) = (
        m.tokenizer_config.as_deref(),
        m.generation_config.as_deref(),
    );
    instruct::apply(&mut metadata, base, tokenizer, generation, &m.set, log)?;
    write_sum(req, &tasks, &metadata, plan, log)
}

/// Write the requantized sum and measure it: the GGUF output, its report.
fn write_sum(
    req: &ApplyRequest,
    tasks: &[pipeline::Task<'_>],
    metadata: &[(String, crate::format::gguf::MetaValue)],
    plan: Option<budget::Plan>,
    log: &Log,
) -> Result<ApplyResult> {
    let search = searches(req);
    let out = Output {
        path: &req.output,
        split_max_size: req.split_max_size,
        options: pipeline::Options {
            progress: log.progress().clone(),
            search,
            dither: dither_seed(req),
            ..Default::default()
        },
    };
    let (outcomes, paths) = tasks::write(tasks, metadata, &out)?;
    let rows = report::rows(&outcomes);
    let mut inputs = report_inputs(req);
    inputs["type"] = json!(req.target);
    inputs["strategy"] = json!(req.strategy.name());
    if let Some(seed) = dither_seed(req) {
        inputs["rounding"] = json!(Rounding::Dither.name());
        inputs["seed"] = json!(seed);
    }
    let mut json = report::to_json("apply", inputs, &rows);
    if let Some(p) = &plan {
        json["budget"] = p.to_json();
    }
    if let Some(path) = &req.report {
        report::write_report(path, &json)?;
    }
    let remedy = plan.as_ref().map(remedy);
    Ok(ApplyResult {
        outputs: paths,
        retention_warning: report::retention_warning(&rows, remedy.as_deref()),
        tensors: rows,
        adapter: None,
        plan,
        searched: search,
        report: json,
    })
}

/// Whether tensors that keep the base's block type are encoded by search:
/// auto does (never further from the sum than fresh, block by block;
/// measured a little better) unless importance weights rule.
fn searches(req: &ApplyRequest) -> bool {
    match req.strategy {
        Strategy::Search => true,
        Strategy::Auto => req.imatrix.is_none(),
        _ => false,
    }
}

/// The report's `inputs`: what every apply report names (output-specific
/// keys are added by the caller).
fn report_inputs(req: &ApplyRequest) -> Value {
    json!({
        "base": req.base.display().to_string(),
        "residual": req.residual.display().to_string(),
        "scale": req.scale,
    })
}

/// Refuse outputs (and the report) that would overwrite an input.
fn check_outputs(req: &ApplyRequest, inputs: &[PathBuf]) -> Result<()> {
    use crate::format::output::{check_output, check_report, check_split_output};
    check_output(&req.output, inputs)?;
    if req.split_max_size.is_some() {
        check_split_output(&req.output, inputs)?;
    }
    if let Some(r) = &req.report {
        check_report(r, &req.output, inputs)?;
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
            delta_weight: plan.constraints.delta_weight,
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

/// `Strategy::Adapter`: α·Δ as a LoRA adapter GGUF; the base is only read.
fn write_adapter(
    req: &ApplyRequest,
    base: &GgufFile,
    residual_rows: &[Option<Box<dyn RowSource + '_>>],
    rank: usize,
    log: &Log,
) -> Result<ApplyResult> {
    let opts = adapter::Options::new(rank);
    let (outcomes, paths) = adapter::write(
        base,
        residual_rows,
        req.scale,
        &opts,
        &req.output,
        req.metadata.name.as_deref(),
        log.progress(),
    )?;
    let json = adapter::to_json(report_inputs(req), &opts, &outcomes);
    if let Some(path) = &req.report {
        report::write_report(path, &json)?;
    }
    Ok(ApplyResult {
        outputs: paths,
        tensors: Vec::new(),
        adapter: Some(outcomes),
        plan: None,
        searched: false,
        retention_warning: None,
        report: json,
    })
}

/// Choose every tensor's type under the budget (or `default_limit`):
/// `Ok(Err(Infeasible))` when no choice of types meets it.
fn plan_budget(
    req: &ApplyRequest,
    base: &GgufFile,
    residual_rows: &[Option<Box<dyn RowSource + '_>>],
    default_limit: Option<SizeLimit>,
    log: &Log,
) -> Result<std::result::Result<budget::Plan, budget::Infeasible>> {
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
    let limit = req
        .budget
        .max_size
        .or(req.budget.bpw.map(SizeLimit::BitsPerWeight))
        .or(default_limit);
    let max_bytes = limit.map(|l| l.bytes(base_bytes, n_elements)).transpose()?;
    // Measure the base's own type as the writer will encode it.
    let enc = match (dither_seed(req), searches(req)) {
        (Some(seed), _) => budget::BaseEncoding::Dither(seed),
        (None, true) => budget::BaseEncoding::Search,
        (None, false) => budget::BaseEncoding::Fresh,
    };
    let estimates = budget::estimate(base.path(), &inputs, req.scale, enc)?;
    let plan = budget::choose(
        estimates,
        budget::Constraints {
            max_bytes,
            min_retention: req.budget.min_retention,
            delta_weight: req.budget.delta_weight.unwrap_or(match enc {
                budget::BaseEncoding::Dither(_) => budget::DITHER_DELTA_WEIGHT,
                _ => budget::DELTA_WEIGHT,
            }),
        },
    );
    if let Ok(plan) = &plan {
        for w in &plan.warnings {
            log.warn(w);
        }
        log.info(&plan.summary());
        log.info(&format!(
            "  planned in {:.2} s\n",
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(plan)
}
