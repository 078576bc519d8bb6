//! Budgeted per-tensor output types: which ggml type each tensor of
//! `apply`'s output gets so that the whole file fits a byte budget with the
//! least estimated error.
//!
//! The planner knows nothing about the command line. For every tensor it
//! gets the base rows and the (scaled) residual rows as [`RowSource`]s,
//! encodes a fixed, evenly spaced sample of rows of the target
//! `dequant(base) + α·Δ` in every candidate type of the tensor's ladder,
//! and measures the error against the target (and the retention of the
//! residual). A tensor left in its base type without a residual is a byte
//! copy and so costs no error. The choice then minimises
//! `Σ weight(tensor) · ‖out − target‖² / ‖target‖²` under `Σ bytes ≤ budget`
//! greedily on the lower convex hull of each tensor's (bytes, error)
//! points: every tensor starts at its cheapest point and the upgrades that
//! buy the most error reduction per byte are taken first. The result is a
//! plain list of output types; the normal pipeline writes them.

use std::path::Path;

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::engine::pipeline::dither_key;
use crate::model::rows::{add_residual, RowSource};
use crate::quant::stats::ErrorStats;
use crate::quant::{
    codec, dequantize_row, dither_row, has_dither, quantize_row, search_row, GgmlType, SearchWins,
};
use crate::{Error, Result};

/// Rows sampled per tensor at least (all rows when the tensor has fewer).
pub const SAMPLE_ROWS: usize = 64;

/// Tensors with short rows are sampled up to this many elements, so that a
/// small tensor is measured whole and a large one from `SAMPLE_ROWS` rows.
pub const SAMPLE_ELEMENTS: usize = 1 << 17;

/// Candidate types for rows that are whole multiples of 256, cheapest first.
pub const K_LADDER: &[GgmlType] = &[
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_0,
];

/// Candidate types for rows that are multiples of 32 but not of 256.
pub const LEGACY_LADDER: &[GgmlType] = &[
    GgmlType::Q4_0,
    GgmlType::IQ4_NL,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

/// How much one unit of relative error energy of a tensor counts in the
/// objective. Every tensor counts the same for now; this is the knob to
/// tune once llama.cpp measurements say which tensor classes matter most
/// per byte.
pub fn tensor_weight(_name: &str, _n_elements: u64) -> f64 {
    1.0
}

/// How the writer encodes a tensor that keeps the base's block type: the
/// planner measures that type's candidate the same way, so that its
/// estimate is of the bytes that will be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaseEncoding {
    /// llama.cpp's encoding of the sum (`--strategy fresh`, `--imatrix`).
    #[default]
    Fresh,
    /// Per block the nearest of base, fresh and re-rounded blocks (auto,
    /// search).
    Search,
    /// Dithered re-rounding on the base's grid with this seed (types with
    /// re-rounding; the others as [`BaseEncoding::Search`]).
    Dither(u64),
}

/// Default λ of [`Constraints::delta_weight`], calibrated on real
/// fine-tuning deltas (eval/planner_order.py): a least-squares fit of the
/// measured KL divergence of 55 outputs on five bases of a tiny llama on
/// `rel_error` and `lost_delta` gives λ ≈ 300. With it the planner's
/// estimate orders the outputs as their KL does on both real pairs
/// (Kendall τ 0.78–1.0 per base; with λ = 0, which ignores Δ, −0.5–0.04),
/// and the default keeps more of the fine-tune's gain (tiny Q4_K_M 88 →
/// 96 %, Q4_0 78 → 93 %). A larger λ trades plain error
/// for retention even on large synthetic residuals that keep theirs anyway.
pub const DELTA_WEIGHT: f64 = 300.0;

/// Whether `ty` can be written by this crate without extra information.
fn writable(ty: GgmlType) -> bool {
    codec(ty).and_then(|c| c.quantize).is_some()
}

/// The types a tensor of base type `ty` and shape `ne` may be written as:
/// its ladder (only types whose blocks divide the rows), plus the base type
/// itself. Float and 1-D tensors keep their type.
pub fn ladder(ty: GgmlType, ne: &[u64]) -> Vec<GgmlType> {
    let row_len = ne.first().copied().unwrap_or(0);
    let rows: u64 = ne.iter().skip(1).product();
    if !ty.is_quantized() || ne.len() < 2 || rows <= 1 || row_len == 0 {
        return vec![ty];
    }
    let ladder: &[GgmlType] = if row_len.is_multiple_of(256) {
        K_LADDER
    } else if row_len.is_multiple_of(32) {
        LEGACY_LADDER
    } else {
        &[]
    };
    let mut out: Vec<GgmlType> = ladder
        .iter()
        .copied()
        .filter(|t| t.row_size_u64(row_len).is_some() && writable(*t))
        .collect();
    if !out.contains(&ty) {
        out.push(ty);
    }
    out
}

/// One base tensor as the planner sees it.
pub struct TensorInput<'a> {
    /// Tensor name.
    pub name: &'a str,
    /// Base type.
    pub ty: GgmlType,
    /// Shape, ggml order (`ne[0]` is the row length).
    pub ne: &'a [u64],
    /// The base's rows.
    pub base: &'a dyn RowSource,
    /// The residual's rows in the base's order (unscaled), if any.
    pub residual: Option<&'a dyn RowSource>,
}

/// One possible output type of a tensor and what it would cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Output type.
    pub ty: GgmlType,
    /// Bytes of the whole tensor in this type.
    pub bytes: u64,
    /// Estimated `‖out − target‖² / ‖target‖²` (0 for a copy).
    pub rel_error: f64,
    /// Estimated retention of the residual, if the tensor has one.
    pub retention: Option<f64>,
    /// Share of the target's energy that is the residual's lost part:
    /// `‖Δ‖²·(1 − retention)² / ‖target‖²` (0 without a residual), the
    /// squared error along Δ. The objective adds it `Constraints::
    /// delta_weight` times to `rel_error`.
    pub lost_delta: f64,
    /// A lower bound of the retention from the sample's spread
    /// (`retention − RETENTION_Z · standard error`; equal to it when every
    /// row was measured): what `min_retention` is checked against.
    pub retention_low: Option<f64>,
}

impl Candidate {
    /// What the planner minimises for this candidate: the relative error
    /// energy plus `lambda` times the residual's lost part
    /// ([`Candidate::lost_delta`]).
    pub fn cost(&self, lambda: f64) -> f64 {
        self.rel_error + lambda * self.lost_delta
    }
}

/// Standard errors subtracted from a sampled retention before it is
/// compared with `--min-retention`: a tensor measured on a sample must
/// keep R on all its rows.
pub const RETENTION_Z: f64 = 2.0;

/// Sums over sampled rows of a ratio estimate `Σm / Σd` (retention: m =
/// ⟨out − base, Δ⟩, d = ‖Δ‖² per row), for its standard error.
#[derive(Debug, Clone, Copy, Default)]
struct RatioSpread {
    m: f64,
    d: f64,
    mm: f64,
    dd: f64,
    md: f64,
}

impl RatioSpread {
    fn add(&mut self, m: f64, d: f64) {
        self.m += m;
        self.d += d;
        self.mm += m * m;
        self.dd += d * d;
        self.md += m * d;
    }

    /// Standard error of `r = Σm/Σd` from `n` of `total` rows (ratio
    /// estimator with finite population correction: 0 when all rows were
    /// measured).
    fn std_error(&self, r: f64, n: usize, total: usize) -> f64 {
        if n < 2 || n >= total || self.d <= 0.0 {
            return 0.0;
        }
        let nf = n as f64;
        let s2 = ((self.mm - 2.0 * r * self.md + r * r * self.dd) / (nf - 1.0)).max(0.0);
        let mean_d = self.d / nf;
        ((1.0 - nf / total as f64) * s2 / nf).sqrt() / mean_d
    }
}

/// Every candidate of one tensor.
#[derive(Debug, Clone)]
pub struct TensorCandidates {
    /// Tensor name.
    pub name: String,
    /// Base type.
    pub base_ty: GgmlType,
    /// Number of weights.
    pub n_elements: u64,
    /// Whether a residual is added.
    pub has_residual: bool,
    /// Weight in the objective ([`tensor_weight`]).
    pub weight: f64,
    /// Candidates, cheapest first.
    pub candidates: Vec<Candidate>,
}

impl TensorCandidates {
    /// The candidate `--type keep` would write.
    pub fn keep(&self) -> Option<&Candidate> {
        self.candidates.iter().find(|c| c.ty == self.base_ty)
    }

    /// Bytes of the base tensor.
    pub fn base_bytes(&self) -> u64 {
        self.base_ty.row_size_u64(self.n_elements).unwrap_or(0)
    }
}

/// Evenly spaced sample rows of a tensor (all rows when few).
fn sample_rows(n_rows: usize, row_len: usize) -> Vec<usize> {
    let s = n_rows.min(SAMPLE_ROWS.max(SAMPLE_ELEMENTS / row_len.max(1)));
    (0..s)
        .map(|i| ((2 * i as u128 + 1) * n_rows as u128 / (2 * s as u128)) as usize)
        .collect()
}

/// Per-candidate statistics of one sampled row; `None` marks a candidate
/// whose decoded output is not finite (its block scale overflows).
fn measure_row(
    origin: &Path,
    t: &TensorInput<'_>,
    types: &[GgmlType],
    scale: f32,
    enc: BaseEncoding,
    row: usize,
) -> Result<Vec<Option<ErrorStats>>> {
    let row_len = t.base.row_len();
    let mut base = vec![0f32; row_len];
    t.base.decode(row, &mut base)?;
    // Hand the pages back at once: a fault maps the whole (possibly large)
    // page-cache folio around the row, and the sampled rows of a model
    // would otherwise stay mapped until the pipeline reaches them. The
    // tensor's whole range is released (cheap where nothing is mapped, and
    // the only form sources with permuted rows support).
    t.base.release_rows(0, t.base.n_rows());
    let (delta, target) = match t.residual {
        Some(r) => {
            let mut d = vec![0f32; row_len];
            r.decode(row, &mut d)?;
            r.release_rows(0, r.n_rows());
            if scale != 1.0 {
                d.iter_mut().for_each(|x| *x *= scale);
            }
            let mut target = vec![0f32; row_len];
            add_residual(r.value_map(), &base, &d, &mut target);
            (d, target)
        }
        None => (Vec::new(), base.clone()),
    };
    let mut decoded = vec![0f32; row_len];
    let mut bytes = Vec::new();
    types
        .iter()
        .map(|&ty| {
            let mut s = ErrorStats::default();
            if t.residual.is_none() && ty == t.ty {
                // A copy: exactly the base.
                return Ok(Some(s));
            }
            let rb = ty.row_size(row_len).unwrap_or(0);
            bytes.resize(rb, 0);
            // The base's own type: exactly the row the writer will write
            // (searched, or dithered with the same key).
            let base_row = match t.base.encoded() {
                Some((bty, all)) if bty == ty && ty == t.ty && ty.block_size() > 1 => {
                    all.get(row * rb..(row + 1) * rb)
                }
                _ => None,
            };
            match (enc, base_row) {
                (BaseEncoding::Dither(seed), Some(b)) if has_dither(ty) => dither_row(
                    ty,
                    b,
                    &target,
                    &mut bytes,
                    dither_key(seed, t.name, row as u64),
                ),
                (BaseEncoding::Search | BaseEncoding::Dither(_), Some(b)) => {
                    search_row(ty, b, &target, &mut bytes, &mut SearchWins::default())
                }
                _ => quantize_row(ty, &target, &mut bytes),
            }
            .map_err(|e| {
                Error::tensor(
                    origin,
                    t.name,
                    format!("row {row}: base + residual cannot be encoded: {e}"),
                )
            })?;
            dequantize_row(ty, &bytes, &mut decoded)
                .map_err(|e| Error::tensor(origin, t.name, format!("row {row}: {e}")))?;
            if decoded.iter().any(|v| !v.is_finite()) {
                return Ok(None);
            }
            match t.residual {
                Some(_) => s.accumulate_residual(&base, &delta, &target, &decoded),
                None => s.accumulate(&target, &decoded),
            }
            Ok(Some(s))
        })
        .collect()
}

/// Estimate every candidate of every tensor from sampled rows, in
/// parallel; the numbers do not depend on the thread count. `origin`
/// names the base in error messages.
pub fn estimate(
    origin: &Path,
    inputs: &[TensorInput<'_>],
    scale: f32,
    enc: BaseEncoding,
) -> Result<Vec<TensorCandidates>> {
    let types: Vec<Vec<GgmlType>> = inputs.iter().map(candidate_types).collect();
    // Which tensors need measuring, and their sampled rows.
    let jobs: Vec<(usize, usize)> = inputs
        .iter()
        .enumerate()
        .filter(|(i, t)| codec(t.ty).is_some() && (t.residual.is_some() || types[*i] != [t.ty]))
        .flat_map(|(i, t)| {
            sample_rows(t.base.n_rows(), t.base.row_len())
                .into_iter()
                .map(move |r| (i, r))
        })
        .collect();
    let measured: Vec<Vec<Option<ErrorStats>>> = jobs
        .par_iter()
        .map(|&(i, r)| measure_row(origin, &inputs[i], &types[i], scale, enc, r))
        .collect::<Result<_>>()?;
    let sampled = sum_samples(&types, &jobs, measured);
    Ok(inputs
        .iter()
        .zip(types)
        .zip(sampled)
        .map(|((t, types), sampled)| tensor_candidates(t, &types, sampled))
        .collect())
}

/// The types tensor `t` may be written as.
fn candidate_types(t: &TensorInput<'_>) -> Vec<GgmlType> {
    let mut l = ladder(t.ty, t.ne);
    let readable = codec(t.ty).is_some();
    // With a residual the base type must be written afresh; an
    // unreadable base can only be kept (the pipeline names it).
    if !readable {
        l = vec![t.ty];
    } else if t.residual.is_some() && !writable(t.ty) && l.len() > 1 {
        l.retain(|&c| c != t.ty);
    }
    l
}

/// One tensor's sampled rows summed: per candidate type, the statistics
/// (`None` once a row could not be encoded) and the retention's spread;
/// and how many rows were sampled.
struct SampleSums {
    stats: Vec<Option<ErrorStats>>,
    spread: Vec<RatioSpread>,
    n_sampled: usize,
}

fn sum_samples(
    types: &[Vec<GgmlType>],
    jobs: &[(usize, usize)],
    measured: Vec<Vec<Option<ErrorStats>>>,
) -> Vec<SampleSums> {
    let mut sums: Vec<SampleSums> = types
        .iter()
        .map(|l| SampleSums {
            stats: vec![Some(ErrorStats::default()); l.len()],
            spread: vec![RatioSpread::default(); l.len()],
            n_sampled: 0,
        })
        .collect();
    for (&(i, _), row) in jobs.iter().zip(measured) {
        let sum = &mut sums[i];
        sum.n_sampled += 1;
        for ((acc, sp), s) in sum.stats.iter_mut().zip(&mut sum.spread).zip(row) {
            if let Some(s) = &s {
                let d = s.delta_norm() * s.delta_norm();
                sp.add(s.retention().map_or(0.0, |r| r * d), d);
            }
            *acc = match (acc.take(), s) {
                (Some(mut a), Some(s)) => {
                    a.merge(&s);
                    Some(a)
                }
                _ => None,
            };
        }
    }
    sums
}

/// The candidates of tensor `t` from its sampled sums, cheapest first.
fn tensor_candidates(
    t: &TensorInput<'_>,
    types: &[GgmlType],
    sampled: SampleSums,
) -> TensorCandidates {
    let n_elements: u64 = t.ne.iter().product();
    let n_rows = t.base.n_rows();
    let n_sampled = sampled.n_sampled;
    let mut candidates: Vec<Candidate> = types
        .iter()
        .zip(sampled.stats.into_iter().zip(sampled.spread))
        .filter_map(|(&ty, (s, sp))| {
            let s = s?;
            let rel = s.relative_rmse();
            let retention = if t.residual.is_some() {
                s.retention()
            } else {
                None
            };
            let ref2 = s.reference_rms() * s.reference_rms() * s.n as f64;
            let lost_delta = match retention {
                Some(r) if ref2 > 0.0 => {
                    s.delta_norm() * s.delta_norm() * (1.0 - r) * (1.0 - r) / ref2
                }
                _ => 0.0,
            };
            Some(Candidate {
                ty,
                bytes: ty.row_size_u64(n_elements)?,
                rel_error: rel * rel,
                lost_delta,
                retention,
                retention_low: retention
                    .map(|r| r - RETENTION_Z * sp.std_error(r, n_sampled, n_rows)),
            })
        })
        .filter(|c| c.rel_error.is_finite() && c.lost_delta.is_finite())
        .collect();
    candidates.sort_by(|a, b| {
        a.bytes
            .cmp(&b.bytes)
            .then(a.rel_error.total_cmp(&b.rel_error))
    });
    TensorCandidates {
        name: t.name.to_string(),
        base_ty: t.ty,
        n_elements,
        has_residual: t.residual.is_some(),
        weight: tensor_weight(t.name, n_elements),
        candidates,
    }
}

/// What the choice must respect.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Constraints {
    /// Total tensor bytes allowed. `None` with a minimum retention: only
    /// raise what the retention needs; `None` alone: no limit (every tensor
    /// at its least-error type).
    pub max_bytes: Option<u64>,
    /// Lowest retention for tensors with a residual.
    pub min_retention: Option<f64>,
    /// λ: how many times the residual's lost part counts against the
    /// relative error energy ([`Candidate::cost`]); 0 is plain L2.
    pub delta_weight: f64,
}

/// A plan: the candidates of every tensor and the one chosen.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Every tensor's candidates.
    pub tensors: Vec<TensorCandidates>,
    /// Index into each tensor's candidates.
    pub chosen: Vec<usize>,
    /// Tensors that could not reach the minimum retention.
    pub warnings: Vec<String>,
    /// The constraints the plan was made for.
    pub constraints: Constraints,
}

/// The lower convex hull of `points` (indices into `cands`, sorted by
/// bytes), in the objective `weight · rel_error`: the points an optimal
/// greedy can stop at, with error reductions per byte decreasing.
fn hull(cands: &[Candidate], weight: f64, lambda: f64, points: &[usize]) -> Vec<usize> {
    let cost = |i: usize| weight * cands[i].cost(lambda);
    let bytes = |i: usize| cands[i].bytes as f64;
    // Pareto front: strictly more bytes must buy strictly less error.
    let mut front: Vec<usize> = Vec::new();
    for &p in points {
        match front.last() {
            Some(&l) if cands[l].bytes == cands[p].bytes => {
                if cost(p) < cost(l) {
                    front.pop();
                    front.push(p);
                }
            }
            Some(&l) if cost(p) >= cost(l) => {}
            _ => front.push(p),
        }
    }
    let mut h: Vec<usize> = Vec::new();
    for p in front {
        while h.len() >= 2 {
            let (a, b) = (h[h.len() - 2], h[h.len() - 1]);
            // b lies on or above the segment a–p: drop it.
            let lhs = (cost(a) - cost(b)) * (bytes(p) - bytes(b));
            let rhs = (cost(b) - cost(p)) * (bytes(b) - bytes(a));
            if lhs <= rhs {
                h.pop();
            } else {
                break;
            }
        }
        h.push(p);
    }
    h
}

fn fmt_bytes(b: u64) -> String {
    format!("{:.2} MiB ({b} bytes)", b as f64 / (1u64 << 20) as f64)
}

/// No choice of types meets a budget: why, for the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Infeasible(pub String);

impl std::fmt::Display for Infeasible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Infeasible> for Error {
    /// An explicit budget that cannot be met is a usage error.
    fn from(e: Infeasible) -> Error {
        Error::Usage(e.0)
    }
}

/// Choose one candidate per tensor under `c`, or say why no choice meets it.
pub fn choose(
    tensors: Vec<TensorCandidates>,
    c: Constraints,
) -> std::result::Result<Plan, Infeasible> {
    let mut warnings = Vec::new();
    let mut hulls: Vec<Vec<usize>> = Vec::with_capacity(tensors.len());
    let mut floor_free = 0u64; // smallest size without --min-retention
    for t in &tensors {
        let all: Vec<usize> = (0..t.candidates.len()).collect();
        if t.candidates.is_empty() {
            return Err(Infeasible(format!(
                "tensor '{}' ({}) has no type it can be written as",
                t.name, t.base_ty
            )));
        }
        floor_free += hull(&t.candidates, t.weight, c.delta_weight, &all)
            .first()
            .map_or(0, |&i| t.candidates[i].bytes);
        let allowed = match (c.min_retention, t.has_residual) {
            (Some(r), true) => retention_allowed(t, r, &all, &mut warnings),
            _ => all,
        };
        hulls.push(hull(&t.candidates, t.weight, c.delta_weight, &allowed));
    }
    let chosen = if c.max_bytes.is_none() && c.min_retention.is_some() {
        retention_only(&tensors, &hulls)
    } else {
        check_budget(&tensors, &hulls, c, floor_free)?;
        best_under_budget(&tensors, &hulls, c)
    };
    Ok(Plan {
        tensors,
        chosen,
        warnings,
        constraints: c,
    })
}

/// The candidates of `t` that keep retention `r`; when none does, its
/// most precise one, with a warning.
fn retention_allowed(
    t: &TensorCandidates,
    r: f64,
    all: &[usize],
    warnings: &mut Vec<String>,
) -> Vec<usize> {
    // Retention only raises: a type smaller than the base's moves
    // the weights by its own rounding noise, whose projection on Δ
    // says nothing about keeping Δ.
    // A raise is a type that costs at least the base's and is no
    // further from the sum than the base's own type: a different
    // grid of the same size (Q4_0 → IQ4_NL) adds a whole rounding
    // of its own, which the retention estimate does not see.
    let keep = t.keep();
    let floor = keep.map_or(0, |k| k.bytes);
    let ceiling = keep.map_or(f64::INFINITY, |k| k.rel_error);
    let raised: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| {
            let c = &t.candidates[i];
            keep == Some(c) || (c.bytes >= floor && c.rel_error <= ceiling)
        })
        .collect();
    let meets: Vec<usize> = raised
        .iter()
        .copied()
        .filter(|&i| t.candidates[i].retention_low.is_some_and(|x| x >= r))
        .collect();
    if !meets.is_empty() {
        return meets;
    }
    let best = raised
        .iter()
        .filter_map(|&i| t.candidates[i].retention)
        .fold(f64::NEG_INFINITY, f64::max);
    let top = *all.last().expect("non-empty");
    warnings.push(format!(
        "tensor '{}': no type keeps retention {r} (best {best:.4}); written as {}",
        t.name, t.candidates[top].ty
    ));
    vec![top]
}

/// Retention alone only raises: tensors without a residual keep
/// their type, the others take the cheapest type that keeps R.
fn retention_only(tensors: &[TensorCandidates], hulls: &[Vec<usize>]) -> Vec<usize> {
    tensors
        .iter()
        .zip(hulls)
        .map(|(t, h)| match (t.has_residual, t.keep()) {
            (false, Some(k)) => t.candidates.iter().position(|x| x == k).expect("found"),
            _ => h[0],
        })
        .collect()
}

/// Refuses a budget below the cheapest point of every hull, saying whether
/// `--min-retention` is what raised it above `floor_free`.
fn check_budget(
    tensors: &[TensorCandidates],
    hulls: &[Vec<usize>],
    c: Constraints,
    floor_free: u64,
) -> std::result::Result<(), Infeasible> {
    let start: u64 = tensors
        .iter()
        .zip(hulls)
        .map(|(t, h)| t.candidates[h[0]].bytes)
        .sum();
    if let Some(max) = c.max_bytes {
        if start > max {
            let why = if c.min_retention.is_some() && start > floor_free {
                format!(
                    "; --min-retention alone needs {}, without it {} would do",
                    fmt_bytes(start),
                    fmt_bytes(floor_free)
                )
            } else {
                String::new()
            };
            return Err(Infeasible(format!(
                "the budget of {} is too small: the smallest output these types allow holds {} of tensor data{why}",
                fmt_bytes(max),
                fmt_bytes(start)
            )));
        }
    }
    Ok(())
}

/// Every hull step as (error reduction per byte, tensor, hull index),
/// best first.
fn hull_steps(
    tensors: &[TensorCandidates],
    hulls: &[Vec<usize>],
    lambda: f64,
) -> Vec<(f64, usize, usize)> {
    let mut steps: Vec<(f64, usize, usize)> = Vec::new();
    for (ti, (t, h)) in tensors.iter().zip(hulls).enumerate() {
        for k in 1..h.len() {
            let (a, b) = (&t.candidates[h[k - 1]], &t.candidates[h[k]]);
            let gain = t.weight * (a.cost(lambda) - b.cost(lambda));
            let slope = gain / (b.bytes - a.bytes) as f64;
            steps.push((slope, ti, k));
        }
    }
    steps.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    steps
}

/// The least-error choice the greedy runs (and `--type keep`) find within
/// the budget, which [`check_budget`] has found feasible.
fn best_under_budget(
    tensors: &[TensorCandidates],
    hulls: &[Vec<usize>],
    c: Constraints,
) -> Vec<usize> {
    let steps = hull_steps(tensors, hulls, c.delta_weight);
    let cost = |chosen: &[usize]| -> f64 {
        tensors
            .iter()
            .zip(chosen)
            .map(|(t, &i)| t.weight * t.candidates[i].cost(c.delta_weight))
            .sum()
    };
    // Plain greedy, then greedy with each tensor started at each of its
    // hull points: one large tensor whose next step no longer fits (an
    // embedding) can otherwise leave the budget badly spent. Each run is
    // monotone in the budget, so their minimum is too.
    let mut best: Option<(f64, Vec<usize>)> = None;
    let mut consider = |chosen: Vec<usize>| {
        let e = cost(&chosen);
        if best.as_ref().is_none_or(|(b, _)| e < *b) {
            best = Some((e, chosen));
        }
    };
    let mut starts: Vec<Option<(usize, usize)>> = vec![None];
    if c.max_bytes.is_some() {
        for (ti, h) in hulls.iter().enumerate() {
            starts.extend((1..h.len()).map(|k| Some((ti, k))));
        }
    }
    for fixed in starts {
        if let Some(at) = greedy(tensors, hulls, &steps, c.max_bytes, fixed) {
            consider(at.iter().zip(hulls).map(|(&k, h)| h[k]).collect());
        }
    }
    // `--type keep` itself, when it fits and no retention is asked.
    if c.min_retention.is_none() {
        if let Some(keep) = keep_choice(tensors) {
            let bytes: u64 = tensors
                .iter()
                .zip(&keep)
                .map(|(t, &i)| t.candidates[i].bytes)
                .sum();
            if c.max_bytes.is_none_or(|m| bytes <= m) {
                consider(keep);
            }
        }
    }
    let (_, chosen) = best.expect("the plain greedy run fits");
    chosen
}

/// Every tensor at its base type, if each can be written so.
fn keep_choice(tensors: &[TensorCandidates]) -> Option<Vec<usize>> {
    tensors
        .iter()
        .map(|t| t.candidates.iter().position(|x| x.ty == t.base_ty))
        .collect()
}

/// One greedy run over the hull steps (sorted, best first): every tensor
/// starts at its cheapest hull point (`fixed`: one tensor at another), and
/// each step is taken when its predecessor was and it fits. Returns the
/// hull index of every tensor, or `None` when the start does not fit.
fn greedy(
    tensors: &[TensorCandidates],
    hulls: &[Vec<usize>],
    steps: &[(f64, usize, usize)],
    max_bytes: Option<u64>,
    fixed: Option<(usize, usize)>,
) -> Option<Vec<usize>> {
    let mut at: Vec<usize> = vec![0; tensors.len()];
    if let Some((ti, k)) = fixed {
        at[ti] = k;
    }
    let bytes = |ti: usize, k: usize| tensors[ti].candidates[hulls[ti][k]].bytes;
    let mut used: u64 = at.iter().enumerate().map(|(ti, &k)| bytes(ti, k)).sum();
    if max_bytes.is_some_and(|m| used > m) {
        return None;
    }
    for &(_, ti, k) in steps {
        if at[ti] + 1 != k {
            continue;
        }
        let extra = bytes(ti, k) - bytes(ti, k - 1);
        if max_bytes.is_some_and(|m| used + extra > m) {
            continue;
        }
        used += extra;
        at[ti] = k;
    }
    Some(at)
}

/// Estimate and choose in one call.
pub fn plan(
    origin: &Path,
    inputs: &[TensorInput<'_>],
    scale: f32,
    enc: BaseEncoding,
    c: Constraints,
) -> Result<Plan> {
    Ok(choose(estimate(origin, inputs, scale, enc)?, c)?)
}

impl Plan {
    /// The chosen output type of every tensor, in input order.
    pub fn types(&self) -> Vec<GgmlType> {
        self.tensors
            .iter()
            .zip(&self.chosen)
            .map(|(t, &i)| t.candidates[i].ty)
            .collect()
    }

    /// Predicted total tensor bytes.
    pub fn bytes(&self) -> u64 {
        self.tensors
            .iter()
            .zip(&self.chosen)
            .map(|(t, &i)| t.candidates[i].bytes)
            .sum()
    }

    /// Total tensor bytes of the base.
    pub fn base_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.base_bytes()).sum()
    }

    /// The objective: `Σ weight · cost` of the chosen candidates
    /// ([`Candidate::cost`] with the plan's λ).
    pub fn objective(&self) -> f64 {
        let lambda = self.constraints.delta_weight;
        self.tensors
            .iter()
            .zip(&self.chosen)
            .map(|(t, &i)| t.weight * t.candidates[i].cost(lambda))
            .sum()
    }

    /// Tensors the planner could move (more than one candidate).
    fn movable(&self) -> impl Iterator<Item = (usize, &TensorCandidates)> {
        self.tensors
            .iter()
            .enumerate()
            .filter(|(_, t)| t.candidates.len() > 1)
    }

    /// Weighted mean relative error energy over the movable tensors.
    pub fn mean_error(&self) -> f64 {
        let (mut s, mut w) = (0.0, 0.0);
        for (i, t) in self.movable() {
            s += t.weight * t.candidates[self.chosen[i]].rel_error;
            w += t.weight;
        }
        if w == 0.0 {
            0.0
        } else {
            s / w
        }
    }

    /// The same mean for `--type keep` (`None` when a base type cannot be
    /// written).
    pub fn keep_mean_error(&self) -> Option<f64> {
        let (mut s, mut w) = (0.0, 0.0);
        for (_, t) in self.movable() {
            s += t.weight * t.keep()?.rel_error;
            w += t.weight;
        }
        Some(if w == 0.0 { 0.0 } else { s / w })
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let mut counts: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
        for (t, &i) in self.tensors.iter().zip(&self.chosen) {
            let ty = t.candidates[i].ty;
            let e = counts.entry(ty.name()).or_default();
            e.0 += 1;
            if ty != t.base_ty {
                e.1 += 1;
            }
        }
        let types: Vec<String> = counts
            .iter()
            .map(|(ty, (n, changed))| format!("{ty} {n} ({changed} changed)"))
            .collect();
        let (bytes, base) = (self.bytes(), self.base_bytes());
        let mut s = format!(
            "budget plan: {} tensors: {}\n  tensor data {} vs base {} ({:+.2} %)",
            self.tensors.len(),
            types.join(", "),
            fmt_bytes(bytes),
            fmt_bytes(base),
            100.0 * (bytes as f64 - base as f64) / base.max(1) as f64
        );
        if let Some(m) = self.constraints.max_bytes {
            s += &format!(", budget {}", fmt_bytes(m));
        }
        s += &format!(
            "\n  predicted mean relative error energy ‖out − target‖²/‖target‖² over {} movable tensors: {:.4e}",
            self.movable().count(),
            self.mean_error()
        );
        if let Some(k) = self.keep_mean_error() {
            s += &format!(" (--type keep: {k:.4e})");
        }
        s += "\n";
        s
    }

    /// The plan for the JSON report.
    pub fn to_json(&self) -> Value {
        let tensors: Vec<Value> = self
            .tensors
            .iter()
            .zip(&self.chosen)
            .map(|(t, &i)| {
                json!({
                    "name": t.name,
                    "type_in": t.base_ty.name(),
                    "type_out": t.candidates[i].ty.name(),
                    "residual": t.has_residual,
                    "weight": t.weight,
                    "candidates": t.candidates.iter().map(|c| json!({
                        "type": c.ty.name(),
                        "bytes": c.bytes,
                        "rel_error": c.rel_error,
                        "lost_delta": c.lost_delta,
                        "retention": c.retention,
                "retention_low": c.retention_low,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "max_bytes": self.constraints.max_bytes,
            "min_retention": self.constraints.min_retention,
            "delta_weight": self.constraints.delta_weight,
            "base_bytes": self.base_bytes(),
            "predicted_bytes": self.bytes(),
            "predicted_mean_rel_error": self.mean_error(),
            "keep_mean_rel_error": self.keep_mean_error(),
            "sample_rows": SAMPLE_ROWS,
            "sample_elements": SAMPLE_ELEMENTS,
            "warnings": self.warnings,
            "tensors": tensors,
        })
    }
}

/// A budget as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SizeLimit {
    /// Total tensor bytes.
    Bytes(u64),
    /// Percent change of the base's total tensor bytes (`+10`, `-5`).
    Relative(f64),
    /// Average bits per weight over all tensors.
    BitsPerWeight(f64),
}

impl SizeLimit {
    /// The byte budget for a base of `base_bytes` tensor bytes holding
    /// `n_elements` weights.
    pub fn bytes(&self, base_bytes: u64, n_elements: u64) -> Result<u64> {
        let b = match *self {
            SizeLimit::Bytes(b) => b as f64,
            SizeLimit::Relative(p) => base_bytes as f64 * (1.0 + p / 100.0),
            SizeLimit::BitsPerWeight(x) => x * n_elements as f64 / 8.0,
        };
        if !b.is_finite() || b < 1.0 {
            return Err(Error::Usage(format!(
                "the budget {self:?} leaves no room for tensor data"
            )));
        }
        Ok(b.floor() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(ty: GgmlType, bytes: u64, rel_error: f64, retention: Option<f64>) -> Candidate {
        Candidate {
            ty,
            bytes,
            rel_error,
            lost_delta: 0.0,
            retention,
            retention_low: retention,
        }
    }

    fn tensor(name: &str, base: GgmlType, c: Vec<Candidate>) -> TensorCandidates {
        TensorCandidates {
            name: name.into(),
            base_ty: base,
            n_elements: 1024,
            has_residual: true,
            weight: 1.0,
            candidates: c,
        }
    }

    /// A 4-type ladder whose error falls by ~4× per step, like real ones.
    fn ladder4(name: &str, size: u64, e0: f64) -> TensorCandidates {
        use GgmlType::*;
        tensor(
            name,
            Q4_K,
            vec![
                cand(Q4_K, size * 9 / 2, e0, Some(0.6)),
                cand(Q5_K, size * 11 / 2, e0 / 4.0, Some(0.8)),
                cand(Q6_K, size * 13 / 2, e0 / 16.0, Some(0.93)),
                cand(Q8_0, size * 17 / 2, e0 / 256.0, Some(0.995)),
            ],
        )
    }

    fn synthetic() -> Vec<TensorCandidates> {
        vec![
            ladder4("a", 100, 0.01),
            ladder4("b", 1000, 0.008),
            ladder4("c", 10, 0.02),
            ladder4("d", 400, 0.004),
        ]
    }

    #[test]
    fn ladders_follow_row_lengths() {
        use GgmlType::*;
        assert_eq!(
            ladder(Q4_K, &[4096, 10]),
            vec![Q3_K, Q4_K, Q5_K, Q6_K, Q8_0]
        );
        assert_eq!(
            ladder(Q8_0, &[640, 10]),
            vec![Q4_0, IQ4_NL, Q4_1, Q5_0, Q5_1, Q8_0]
        );
        assert_eq!(ladder(F32, &[4096, 10]), vec![F32]);
        assert_eq!(ladder(F16, &[4096, 10]), vec![F16]);
        assert_eq!(ladder(Q4_K, &[4096]), vec![Q4_K]);
        assert_eq!(ladder(Q4_K, &[4096, 1]), vec![Q4_K]);
        // The base type is always a candidate.
        assert!(ladder(Q2_K, &[256, 4]).contains(&Q2_K));
        assert!(ladder(IQ4_XS, &[256, 4]).contains(&IQ4_XS));
    }

    #[test]
    fn hull_drops_dominated_and_concave_points() {
        use GgmlType::*;
        let c = vec![
            cand(Q4_0, 100, 1.0, None),
            cand(Q4_1, 110, 1.1, None), // dominated
            cand(Q5_0, 120, 0.9, None), // above the a–c segment
            cand(Q8_0, 200, 0.0, None),
        ];
        assert_eq!(hull(&c, 1.0, 0.0, &[0, 1, 2, 3]), vec![0, 3]);
        let c = vec![
            cand(Q4_0, 100, 1.0, None),
            cand(Q5_0, 120, 0.4, None),
            cand(Q8_0, 200, 0.0, None),
        ];
        assert_eq!(hull(&c, 1.0, 0.0, &[0, 1, 2]), vec![0, 1, 2]);
    }

    #[test]
    fn budget_is_met_and_more_budget_never_costs_error() {
        let base: u64 = synthetic().iter().map(|t| t.candidates[0].bytes).sum();
        let top: u64 = synthetic()
            .iter()
            .map(|t| t.candidates.last().unwrap().bytes)
            .sum();
        let mut last = f64::INFINITY;
        let mut b = base;
        while b <= top + 50 {
            let p = choose(
                synthetic(),
                Constraints {
                    max_bytes: Some(b),
                    min_retention: None,
                    delta_weight: 0.0,
                },
            )
            .unwrap();
            assert!(p.bytes() <= b, "{} > {b}", p.bytes());
            let o = p.objective();
            assert!(o <= last, "budget {b}: {o} > {last}");
            last = o;
            b += 7;
        }
        // The last budgets allow everything: every tensor at the top.
        let p = choose(synthetic(), Constraints::default()).unwrap();
        assert!(p.types().iter().all(|&t| t == GgmlType::Q8_0));
        assert_eq!(p.objective(), last);
    }

    #[test]
    fn greedy_prefers_the_best_error_reduction_per_byte() {
        // Room for exactly one upgrade of "c" (10 bytes) or nothing else:
        // c's Q4_K→Q5_K buys 0.015 for 10 bytes, far more per byte than
        // any other step.
        let base: u64 = synthetic().iter().map(|t| t.candidates[0].bytes).sum();
        let p = choose(
            synthetic(),
            Constraints {
                max_bytes: Some(base + 10),
                min_retention: None,
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert_eq!(p.chosen, vec![0, 0, 1, 0]);
    }

    #[test]
    fn a_large_step_is_not_blocked_by_a_slightly_better_small_one() {
        use GgmlType::*;
        // a: +10 bytes buys 10 (1 per byte); b: +100 bytes buys 99 (0.99
        // per byte). With 100 bytes to spend plain greedy takes a and then
        // cannot afford b; starting b upgraded is worth ten times more.
        let a = tensor(
            "a",
            Q4_K,
            vec![cand(Q4_K, 100, 10.0, None), cand(Q5_K, 110, 0.0, None)],
        );
        let b = tensor(
            "b",
            Q4_K,
            vec![cand(Q4_K, 1000, 99.0, None), cand(Q5_K, 1100, 0.0, None)],
        );
        let p = choose(
            vec![a, b],
            Constraints {
                max_bytes: Some(1200),
                min_retention: None,
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert_eq!(p.types(), vec![Q4_K, Q5_K]);
        assert_eq!(p.objective(), 10.0);
    }

    #[test]
    fn never_worse_than_keep_when_keep_fits() {
        use GgmlType::*;
        // An embedding kept at Q8_0 by the base, whose only cheaper
        // candidate is far worse; the budget is the base's size.
        let mut e = tensor(
            "token_embd",
            Q8_0,
            vec![cand(Q5_1, 600, 0.002, None), cand(Q8_0, 850, 0.0, None)],
        );
        e.weight = 2.0;
        e.has_residual = false;
        let s = |n: &str| {
            tensor(
                n,
                Q4_K,
                vec![cand(Q4_K, 45, 0.002, None), cand(Q8_0, 85, 3e-5, None)],
            )
        };
        let ts = vec![e, s("a"), s("b")];
        let keep: f64 = 2.0 * 0.002;
        let p = choose(
            ts,
            Constraints {
                max_bytes: Some(940),
                min_retention: None,
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert!(p.objective() <= keep, "{} > {keep}", p.objective());
        assert_eq!(p.types()[0], Q8_0);
    }

    #[test]
    fn too_small_a_budget_names_the_smallest_size() {
        let base: u64 = synthetic().iter().map(|t| t.candidates[0].bytes).sum();
        let e = choose(
            synthetic(),
            Constraints {
                max_bytes: Some(base - 1),
                min_retention: None,
                delta_weight: 0.0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains(&format!("({base} bytes)")), "{e}");
    }

    #[test]
    fn min_retention_raises_first_and_warns_when_unreachable() {
        let mut ts = synthetic();
        // "d" never reaches 0.999.
        ts[3].candidates.last_mut().unwrap().retention = Some(0.99);
        ts[3].candidates.last_mut().unwrap().retention_low = Some(0.99);
        ts[3].candidates[2].retention = Some(0.995);
        ts[3].candidates[2].retention_low = Some(0.995);
        let p = choose(
            ts.clone(),
            Constraints {
                max_bytes: None,
                min_retention: Some(0.9),
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert!(p.warnings.is_empty());
        assert_eq!(p.chosen, vec![2, 2, 2, 2]);
        // Without a budget each tensor only rises to the cheapest type that
        // meets it; with exactly that budget, the same.
        let need: u64 = ts.iter().map(|t| t.candidates[2].bytes).sum();
        let p = choose(
            ts.clone(),
            Constraints {
                max_bytes: Some(need),
                min_retention: Some(0.9),
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert_eq!(p.chosen, vec![2, 2, 2, 2]);
        let e = choose(
            ts.clone(),
            Constraints {
                max_bytes: Some(need - 1),
                min_retention: Some(0.9),
                delta_weight: 0.0,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("--min-retention"), "{e}");
        let p = choose(
            ts,
            Constraints {
                max_bytes: None,
                min_retention: Some(0.999),
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert_eq!(p.warnings.len(), 4, "{:?}", p.warnings);
        assert!(p.warnings[3].contains("'d'") && p.warnings[3].contains("0.9950"));
        assert!(p.types().iter().all(|&t| t == GgmlType::Q8_0));
    }

    #[test]
    fn min_retention_never_lowers_the_type() {
        use GgmlType::*;
        // Q3_K "retains" 0.99 of Δ only because its rounding noise is
        // uncorrelated with Δ; the base type Q4_K rounds Δ away (0.4).
        let t = tensor(
            "t",
            Q4_K,
            vec![
                cand(Q3_K, 34, 0.05, Some(0.99)),
                cand(Q4_K, 45, 0.002, Some(0.4)),
                cand(Q5_K, 55, 0.001, Some(0.97)),
                cand(Q8_0, 85, 3e-5, Some(1.0)),
            ],
        );
        let c = Constraints {
            max_bytes: Some(55),
            min_retention: Some(0.9),
            delta_weight: 0.0,
        };
        assert_eq!(choose(vec![t.clone()], c).unwrap().types(), vec![Q5_K]);
        let c = Constraints {
            max_bytes: Some(54),
            ..c
        };
        assert!(choose(vec![t], c).is_err());
    }

    /// A candidate whose retention `r` leaves `rd·(1 − r)²` of the target's
    /// energy lost, `rd` being the residual's share of it.
    fn kept(ty: GgmlType, bytes: u64, rel_error: f64, r: f64, rd: f64) -> Candidate {
        Candidate {
            lost_delta: rd * (1.0 - r) * (1.0 - r),
            ..cand(ty, bytes, rel_error, Some(r))
        }
    }

    /// A residual far below half a step (rd = 1.6e-5 of the target's
    /// energy): the base type rounds it away at an L2 error of just rd,
    /// while a larger type keeps it at a larger L2 error (its own rounding
    /// of the on-grid base). Plain L2 keeps the base type and leaves the
    /// budget unspent; with λ the lost residual is priced and the budget is
    /// spent on the types that keep it.
    #[test]
    fn pricing_the_lost_residual_prefers_keeping_it_and_spends_the_budget() {
        use GgmlType::*;
        let rd = 1.6e-5;
        let ts: Vec<TensorCandidates> = (0..3)
            .map(|i| {
                tensor(
                    &format!("t{i}"),
                    Q5_0,
                    vec![
                        kept(Q4_0, 90, 4e-3, 0.9, rd),
                        kept(Q5_0, 110, rd, 0.0, rd),
                        kept(Q5_1, 120, 2e-4, 0.95, rd),
                        kept(Q8_0, 170, 3e-5, 1.0, rd),
                    ],
                )
            })
            .collect();
        let budget = 3 * 120 + 50;
        let c = |lambda| Constraints {
            max_bytes: Some(budget),
            min_retention: None,
            delta_weight: lambda,
        };
        let l2 = choose(ts.clone(), c(0.0)).unwrap();
        assert_eq!(l2.types(), vec![Q5_0; 3]);
        assert_eq!(l2.bytes(), 330, "plain L2 leaves the budget unspent");
        let priced = choose(ts.clone(), c(100.0)).unwrap();
        assert_eq!(priced.types(), vec![Q8_0, Q5_1, Q5_1]);
        assert_eq!(priced.bytes(), budget);
        // Without a budget every tensor takes its best-kept type.
        let all = choose(
            ts,
            Constraints {
                max_bytes: None,
                ..c(100.0)
            },
        )
        .unwrap();
        assert_eq!(all.types(), vec![Q8_0; 3]);
    }

    /// The tiny llama's Q4_K_M base with its real 60-step delta (the
    /// planner's own estimates for blk.0.attn_k): the dithered Q4_K keeps
    /// the residual (0.94), a fresh Q5_K rounds it back onto the base
    /// (0.38: Q4_K's grid lies nearly on Q5_K's) at a smaller plain error,
    /// a fresh Q6_K keeps it (0.89). Plain L2 spends a small budget on the
    /// Q5_K raises; at the default λ, Q5_K leaves the hull: the
    /// tensors stay dithered Q4_K, or rise to Q6_K when the budget allows.
    #[test]
    fn the_default_lambda_drops_raises_that_round_the_residual_away() {
        use GgmlType::*;
        let rd = 1.63e-5 / (0.622f64 * 0.622);
        let t = |name: &str| {
            tensor(
                name,
                Q4_K,
                vec![
                    kept(Q4_K, 18432, 1.41e-3, 0.937, rd),
                    kept(Q5_K, 22528, 5.5e-4, 0.378, rd),
                    kept(Q6_K, 26880, 2.9e-4, 0.889, rd),
                ],
            )
        };
        let c = |max, lambda| Constraints {
            max_bytes: Some(max),
            min_retention: None,
            delta_weight: lambda,
        };
        let small = 2 * 18432 + 2 * 4096 + 100;
        let l2 = choose(vec![t("k0"), t("k1")], c(small, 0.0)).unwrap();
        assert_eq!(l2.types(), vec![Q5_K, Q5_K]);
        let priced = choose(vec![t("k0"), t("k1")], c(small, DELTA_WEIGHT)).unwrap();
        assert_eq!(priced.types(), vec![Q4_K, Q4_K]);
        let roomy = choose(vec![t("k0"), t("k1")], c(2 * 26880, DELTA_WEIGHT)).unwrap();
        assert_eq!(roomy.types(), vec![Q6_K, Q6_K]);
    }

    #[test]
    fn sampled_retention_must_clear_r_with_its_error_margin() {
        use GgmlType::*;
        let mut t = tensor(
            "t",
            Q4_K,
            vec![
                cand(Q4_K, 45, 0.002, Some(0.4)),
                cand(Q5_K, 55, 0.001, Some(0.95)),
                cand(Q8_0, 85, 3e-5, Some(1.0)),
            ],
        );
        t.candidates[1].retention_low = Some(0.85);
        let c = Constraints {
            max_bytes: None,
            min_retention: Some(0.9),
            delta_weight: 0.0,
        };
        assert_eq!(choose(vec![t], c).unwrap().types(), vec![Q8_0]);
        // The spread: zero when every row is measured, positive otherwise,
        // shrinking with the sample.
        let mut sp = RatioSpread::default();
        for (m, d) in [(0.9, 1.0), (1.1, 1.0), (0.7, 1.0), (1.3, 1.0)] {
            sp.add(m, d);
        }
        assert_eq!(sp.std_error(1.0, 4, 4), 0.0);
        let few = sp.std_error(1.0, 4, 1000);
        // s² = (0.01 + 0.01 + 0.09 + 0.09) / 3; se = sqrt(s²/4 · (1 − 4/1000)).
        let want = ((0.2f64 / 3.0) / 4.0 * (1.0 - 0.004)).sqrt();
        assert!((few - want).abs() < 1e-12, "{few} vs {want}");
    }

    #[test]
    fn copies_cost_nothing() {
        use GgmlType::*;
        // A tensor without residual at its base type (error 0) is never
        // moved by an unlimited budget: there is nothing to gain.
        let mut t = tensor(
            "n",
            Q6_K,
            vec![
                cand(Q4_K, 45, 0.01, None),
                cand(Q6_K, 65, 0.0, None),
                cand(Q8_0, 85, 1e-5, None),
            ],
        );
        t.has_residual = false;
        let p = choose(vec![t], Constraints::default()).unwrap();
        assert_eq!(p.types(), vec![Q6_K]);
    }

    #[test]
    fn size_limits_convert_to_bytes() {
        assert_eq!(SizeLimit::Relative(10.0).bytes(1000, 0).unwrap(), 1100);
        assert_eq!(SizeLimit::Relative(-5.0).bytes(1000, 0).unwrap(), 950);
        assert_eq!(SizeLimit::Relative(0.0).bytes(1000, 0).unwrap(), 1000);
        assert_eq!(SizeLimit::BitsPerWeight(4.5).bytes(0, 256).unwrap(), 144);
        assert_eq!(SizeLimit::Bytes(7).bytes(0, 0).unwrap(), 7);
        assert!(SizeLimit::Relative(-100.0).bytes(1000, 0).is_err());
    }

    #[test]
    fn sample_rows_are_even_and_all_when_few() {
        assert_eq!(sample_rows(10, 4096), (0..10).collect::<Vec<_>>());
        let s = sample_rows(1 << 20, 4096);
        assert_eq!(s.len(), SAMPLE_ROWS);
        assert!(s.windows(2).all(|w| w[1] - w[0] == (1 << 20) / SAMPLE_ROWS));
        assert_eq!(sample_rows(512, 256).len(), 512);
    }

    #[test]
    fn retention_is_not_bought_with_a_same_size_grid_that_adds_error() {
        use GgmlType::*;
        // Q4_0 base; IQ4_NL costs the same and "keeps" Δ (its new rounding
        // projects onto it) but lands further from the sum; Q5_0 is a real raise.
        let t = tensor(
            "x",
            Q4_0,
            vec![
                cand(Q4_0, 450, 0.010, Some(0.2)),
                cand(IQ4_NL, 450, 0.030, Some(1.02)),
                cand(Q5_0, 550, 0.004, Some(0.7)),
            ],
        );
        let p = choose(
            vec![t],
            Constraints {
                max_bytes: None,
                min_retention: Some(0.5),
                delta_weight: 0.0,
            },
        )
        .unwrap();
        assert_eq!(p.types(), vec![Q5_0]);
    }
}
