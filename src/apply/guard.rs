//! The base fingerprint a residual carries, and the guard that checks a base
//! against it before `apply` writes anything.
//!
//! A residual only makes sense on the checkpoint it was extracted from, but
//! users apply it to that checkpoint *quantized*, so an exact checksum cannot
//! recognise it. Per tensor the fingerprint keeps the shape, mean, RMS, an
//! exact hash of the f16-rounded values (to say "identical" when it is), and
//! a **random-sign sketch**: the elements, in the residual's row order, are
//! cut into `B ≤ 256` contiguous buckets and each bucket stores
//! `s_b = Σ σ_i·w_i` with pseudo-random signs `σ_i = ±1` fixed by the
//! element's position. For a candidate `w' = w + e`,
//! `‖s' − s‖² / ‖s‖² ≈ ‖e‖² / ‖w‖²` (the signs make the cross terms vanish in
//! expectation), so 256 numbers estimate the candidate's relative RMS
//! distance to the fingerprinted base to within about ±1/√(2B) ≈ 5 %.
//!
//! Tolerance rule: a tensor agrees when its sketch distance, its RMS change
//! and its mean shift (in units of the base RMS) are all at most
//! `3·√(e_fp² + e_cand²) + 0.005`, where `e_t` is the relative RMSE type `t`
//! produces on Gaussian data (measured with this crate's codecs: 0 for F32,
//! 3·10⁻⁴ for F16, 0.004 for Q8_0, 0.07 for Q4_K, 0.3 for Q2_K; for types
//! that need an importance matrix, `1.6·2^−bpw`), `fp` the type the base had
//! when the residual was extracted and `cand` the candidate's type. The
//! factor 3 covers heavy-tailed weights (a quantized Laplace tensor with
//! outliers sits at ≤ 0.65 of the tolerance for every type from F16 to Q2_K,
//! see the tests) and the sketch's own ±5 % noise. A different checkpoint of
//! the same shapes sits at distance ≈ √2 and is refused for every type down
//! to Q2_K (tolerance ≈ 0.9); at IQ2/IQ1 the tolerance exceeds √2 and only
//! shapes are effectively checked. A fine-tune of the base (Δ of a few % of
//! the weights' RMS) is refused against F16/BF16/Q8_0 candidates but cannot
//! be told from quantization noise at 4 bits and below.
//!
//! Values are compared in the fingerprint's convention: a Hugging Face-named
//! fingerprint checked against a Gemma GGUF has the converter's `+1` on norm
//! weights undone first ([`crate::model::gguf_value_shift`]).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::apply::matching::{Pairing, Residual, ResidualTensor};
use crate::engine::chunks::map_chunks;
use crate::engine::log::Log;
use crate::format::gguf::GgufFile;
use crate::model::naming::RowPermutation;
use crate::model::rows::{EncodedRows, RowSource};
use crate::model::{decode_finite, Model};
use crate::quant::{dequantize_row, quantize_row, GgmlType};
use crate::{Error, Result};

/// Metadata key of the fingerprint (safetensors `__metadata__` or GGUF string).
pub const FINGERPRINT_KEY: &str = "qresidual.base_fingerprint";
/// Metadata key of the provenance record.
pub const PROVENANCE_KEY: &str = "qresidual.provenance";
/// Version of the fingerprint format.
pub const FINGERPRINT_VERSION: u32 = 1;
const MAX_BUCKETS: usize = 256;
const MIN_BUCKET: usize = 16;
const TOL_FACTOR: f64 = 3.0;
const TOL_FLOOR: f64 = 0.005;
const SIGN_SEED: u64 = 0x9E37_79B9_7F4A_7C15;

/// The fingerprint of one base tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TensorPrint {
    /// Row-major shape, in the residual's layout.
    pub shape: Vec<u64>,
    /// The base tensor's type when the residual was made (e.g. "F16", "Q4_K").
    pub base_type: String,
    /// Mean of the values.
    pub mean: f64,
    /// Root mean square of the values.
    pub rms: f64,
    /// Hash of the f16-rounded values in row order (hex).
    pub f16_hash: String,
    /// The random-sign bucket sums, f32 little endian, hex.
    pub sketch: String,
}

/// The fingerprint of a whole base, keyed by residual tensor name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fingerprint {
    /// Format version ([`FINGERPRINT_VERSION`]).
    pub version: u32,
    /// Per tensor.
    pub tensors: BTreeMap<String, TensorPrint>,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Number of sketch buckets for a tensor of `n` elements.
fn n_buckets(n: u64) -> usize {
    ((n / MIN_BUCKET as u64) as usize).clamp(1, MAX_BUCKETS)
}

/// Running sums of one tensor's fingerprint over some of its rows.
#[derive(Debug, Clone)]
struct Partial {
    n: u64,
    sum: f64,
    sum2: f64,
    hash: u64,
    sketch: Vec<f64>,
}

impl Partial {
    fn new(buckets: usize) -> Self {
        Partial {
            n: 0,
            sum: 0.0,
            sum2: 0.0,
            hash: 0,
            sketch: vec![0.0; buckets],
        }
    }

    /// Add row `fp_row` (in the fingerprint's row order) of a tensor with
    /// `n_elements` elements.
    fn add_row(&mut self, fp_row: usize, row: &[f32], n_elements: u64) {
        let buckets = self.sketch.len() as u64;
        let bucket_size = n_elements.div_ceil(buckets).max(1);
        let first = fp_row as u64 * row.len() as u64;
        let mut h: u64 = 0xCBF2_9CE4_8422_2325;
        for (c, &v) in row.iter().enumerate() {
            let l = first + c as u64;
            let x = v as f64;
            self.sum += x;
            self.sum2 += x * x;
            let sign = if splitmix64(l ^ SIGN_SEED) & 1 == 0 {
                1.0
            } else {
                -1.0
            };
            self.sketch[(l / bucket_size) as usize] += sign * x;
            for b in half::f16::from_f32(v).to_bits().to_le_bytes() {
                h ^= b as u64;
                h = h.wrapping_mul(0x0000_0100_0000_01B3);
            }
        }
        // Order-free combination, so chunks may be hashed in any order.
        self.hash = self
            .hash
            .wrapping_add(splitmix64(h ^ splitmix64(fp_row as u64)));
        self.n += row.len() as u64;
    }

    fn merge(&mut self, o: &Partial) {
        self.n += o.n;
        self.sum += o.sum;
        self.sum2 += o.sum2;
        self.hash = self.hash.wrapping_add(o.hash);
        for (a, b) in self.sketch.iter_mut().zip(&o.sketch) {
            *a += b;
        }
    }

    fn finish(&self, shape: Vec<u64>, base_type: GgmlType) -> TensorPrint {
        let n = self.n.max(1) as f64;
        let mut sketch = String::with_capacity(self.sketch.len() * 8);
        for &s in &self.sketch {
            for b in (s as f32).to_le_bytes() {
                sketch.push_str(&format!("{b:02x}"));
            }
        }
        TensorPrint {
            shape,
            base_type: base_type.name().to_string(),
            mean: self.sum / n,
            rms: (self.sum2 / n).sqrt(),
            f16_hash: format!("{:016x}", self.hash),
            sketch,
        }
    }
}

/// Fingerprint one tensor whose rows, in the fingerprint's order, come from
/// `rows` with row `g` of `rows` being fingerprint row `fp_row(g)`.
fn print_rows(
    rows: &dyn RowSource,
    origin: (&Path, &str),
    shift: f32,
    fp_row: impl Fn(usize) -> usize + Sync,
    shape: &[u64],
) -> Result<Partial> {
    let n_elements: u64 = shape.iter().product();
    let buckets = n_buckets(n_elements);
    let row_len = rows.row_len();
    let parts = map_chunks(&[rows], |first, n| {
        let v = decode_finite(rows, origin, shift, first, n)?;
        let mut p = Partial::new(buckets);
        for (i, row) in v.chunks_exact(row_len.max(1)).enumerate() {
            p.add_row(fp_row(first + i), row, n_elements);
        }
        Ok(p)
    })?;
    let mut total = Partial::new(buckets);
    for p in &parts {
        total.merge(p);
    }
    Ok(total)
}

/// The fingerprint of a base tensor read through `rows` (already in the
/// residual's row order), `shift` added to its values; `ty` is the type
/// whose rounding error sizes the tolerance later.
pub fn fingerprint_tensor(
    rows: &dyn RowSource,
    origin: (&Path, &str),
    ty: GgmlType,
    shift: f32,
    shape: &[u64],
) -> Result<TensorPrint> {
    Ok(print_rows(rows, origin, shift, |g| g, shape)?.finish(shape.to_vec(), ty))
}

fn decode_sketch(hex: &str) -> Option<Vec<f64>> {
    if !hex.len().is_multiple_of(8) || !hex.is_ascii() {
        return None;
    }
    (0..hex.len() / 8)
        .map(|i| {
            let mut b = [0u8; 4];
            for (k, byte) in b.iter_mut().enumerate() {
                let s = &hex[i * 8 + 2 * k..i * 8 + 2 * k + 2];
                *byte = u8::from_str_radix(s, 16).ok()?;
            }
            Some(f32::from_le_bytes(b) as f64)
        })
        .collect()
}

/// Relative RMSE that type `ty` produces on Gaussian rows, measured once with
/// the codecs. Types that cannot be encoded here (IQ1/IQ2/IQ3 need an
/// importance matrix) get `1.6 · 2^−bpw`: the Gaussian rate–distortion bound
/// `2^−R` times the factor by which Q4_K exceeds it.
pub fn type_error(ty: GgmlType) -> f64 {
    static CACHE: Mutex<Option<HashMap<GgmlType, f64>>> = Mutex::new(None);
    if let Some(e) = CACHE
        .lock()
        .ok()
        .and_then(|c| c.as_ref().and_then(|m| m.get(&ty).copied()))
    {
        return e;
    }
    let e = measure_type_error(ty).unwrap_or_else(|| 1.6 * (-ty.bits_per_weight()).exp2());
    if let Ok(mut c) = CACHE.lock() {
        c.get_or_insert_with(HashMap::new).insert(ty, e);
    }
    e
}

fn measure_type_error(ty: GgmlType) -> Option<f64> {
    if ty == GgmlType::F32 {
        return Some(0.0);
    }
    const N: usize = 4096;
    let row_len = 256;
    let mut state = 0x1234_5678_u64;
    let mut uniform = || {
        state = splitmix64(state);
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    // Box–Muller: a deterministic Gaussian sample.
    let x: Vec<f32> = (0..N / 2)
        .flat_map(|_| {
            let (u, v) = (uniform(), uniform());
            let r = (-2.0 * u.ln()).sqrt();
            let t = std::f64::consts::TAU * v;
            [(r * t.cos()) as f32, (r * t.sin()) as f32]
        })
        .collect();
    let rb = ty.row_size(row_len)?;
    let mut bytes = vec![0u8; rb];
    let mut back = vec![0f32; row_len];
    let (mut err2, mut ref2) = (0f64, 0f64);
    for row in x.chunks_exact(row_len) {
        quantize_row(ty, row, &mut bytes).ok()?;
        dequantize_row(ty, &bytes, &mut back).ok()?;
        for (&a, &b) in row.iter().zip(&back) {
            err2 += (a as f64 - b as f64).powi(2);
            ref2 += (a as f64).powi(2);
        }
    }
    Some((err2 / ref2).sqrt())
}

/// How far a candidate tensor is from its fingerprint.
#[derive(Debug, Clone)]
pub struct TensorVerdict {
    /// Residual tensor name.
    pub name: String,
    /// The candidate's tensor name.
    pub base_name: String,
    /// The candidate's type.
    pub base_type: GgmlType,
    /// ‖s' − s‖ / ‖s‖: estimated relative RMS distance.
    pub distance: f64,
    /// |rms' / rms − 1|.
    pub rms_change: f64,
    /// |mean' − mean| / rms.
    pub mean_shift: f64,
    /// The tolerance applied.
    pub tolerance: f64,
    /// Whether the f16-rounded values are identical.
    pub identical: bool,
}

impl TensorVerdict {
    /// The largest of the three measures as a fraction of the tolerance
    /// (above 1: refused).
    pub fn margin(&self) -> f64 {
        self.distance.max(self.rms_change).max(self.mean_shift) / self.tolerance
    }

    /// Whether the candidate agrees within the tolerance.
    pub fn agrees(&self) -> bool {
        self.distance <= self.tolerance
            && self.rms_change <= self.tolerance
            && self.mean_shift <= self.tolerance
    }
}

/// Compare the fingerprint `fp` of one tensor with a candidate read through
/// `rows` (plus `shift`), whose row `g` is fingerprint row `fp_row(g)`.
pub fn compare_tensor(
    name: &str,
    fp: &TensorPrint,
    rows: &EncodedRows<'_>,
    shift: f32,
    fp_row: impl Fn(usize) -> usize + Sync,
) -> Result<TensorVerdict> {
    let bad = |msg: &str| Error::Mismatch(format!("fingerprint of {name}: {msg}"));
    let sketch = decode_sketch(&fp.sketch).ok_or_else(|| bad("sketch is not hex f32"))?;
    if sketch.len() != n_buckets(fp.shape.iter().product()) {
        return Err(bad("sketch length does not fit the shape"));
    }
    let p = print_rows(rows, (rows.path, rows.name), shift, fp_row, &fp.shape)?;
    let cand = p.finish(fp.shape.clone(), rows.ty);
    let (mut d2, mut s2) = (0f64, 0f64);
    for (a, b) in p.sketch.iter().zip(&sketch) {
        d2 += (a - b) * (a - b);
        s2 += b * b;
    }
    let ratio = |num: f64, den: f64| {
        if den > 0.0 {
            num / den
        } else if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    };
    let fp_type = GgmlType::from_name(&fp.base_type).unwrap_or(GgmlType::F32);
    let (e1, e2) = (type_error(fp_type), type_error(rows.ty));
    Ok(TensorVerdict {
        name: name.to_string(),
        base_name: rows.name.to_string(),
        base_type: rows.ty,
        distance: ratio(d2.sqrt(), s2.sqrt()),
        rms_change: ratio((cand.rms - fp.rms).abs(), fp.rms),
        mean_shift: ratio((cand.mean - fp.mean).abs(), fp.rms),
        tolerance: TOL_FACTOR * (e1 * e1 + e2 * e2).sqrt() + TOL_FLOOR,
        identical: cand.f16_hash == fp.f16_hash,
    })
}

/// Read the fingerprint a residual carries, if any.
pub fn residual_fingerprint(residual: &Residual) -> Result<Option<Fingerprint>> {
    let text = match residual {
        Residual::Safetensors(s) => s.metadata().get(FINGERPRINT_KEY).cloned(),
        Residual::Gguf(g) => g
            .get(FINGERPRINT_KEY)
            .and_then(|v| v.as_str())
            .map(str::to_string),
        Residual::Bitsandbytes(_)
        | Residual::Fp8(_)
        | Residual::Mlx(_)
        | Residual::Packed(_)
        | Residual::Gptq(_) => None,
    };
    let Some(text) = text else { return Ok(None) };
    let fp: Fingerprint = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            residual.path(),
            format!("{FINGERPRINT_KEY} is not a valid fingerprint: {e}"),
        )
    })?;
    if fp.version != FINGERPRINT_VERSION {
        return Err(Error::format(
            residual.path(),
            format!(
                "fingerprint version {} is not supported (expected {FINGERPRINT_VERSION})",
                fp.version
            ),
        ));
    }
    Ok(Some(fp))
}

/// What the guard found.
#[derive(Debug, Default)]
pub struct GuardReport {
    /// Per checked tensor.
    pub verdicts: Vec<TensorVerdict>,
    /// Matched residual tensors the fingerprint does not cover.
    pub not_covered: Vec<String>,
}

/// Check `base` against the fingerprint of `residual` for every matched pair.
/// `Ok(None)` when the residual carries no fingerprint.
pub fn check(
    base: &GgufFile,
    residual: &Residual,
    rtensors: &[ResidualTensor<'_>],
    pairs: &[Pairing],
    progress: &crate::engine::progress::Progress,
) -> Result<Option<GuardReport>> {
    let Some(fp) = residual_fingerprint(residual)? else {
        return Ok(None);
    };
    let mut report = GuardReport::default();
    let arch = base.architecture().unwrap_or("");
    let pb = progress.tensors(pairs.len(), "checking the base");
    for p in pairs {
        pb.inc(1);
        let rname = rtensors[p.residual].name;
        // A base tensor assembled from several residual tensors, split or
        // trimmed has no one fingerprinted tensor to compare with.
        if !p.is_whole() {
            let what = match p.parts.len() {
                1 => format!("part of {rname}"),
                n => format!("{n} tensors from {rname}"),
            };
            let name = &base.tensors()[p.base].name;
            report.not_covered.push(format!("{name} ({what})"));
            continue;
        }
        let Some(tp) = fp.tensors.get(rname) else {
            report.not_covered.push(rname.to_string());
            continue;
        };
        let rows = crate::engine::tasks::base_rows(base, p.base);
        let n_rows = rows.n_rows();
        let perm: RowPermutation = p.permutation;
        // A fingerprint in HF convention against GGUF values: undo the
        // converter's shift (Gemma norms are stored as w + 1).
        let shift = if rname != rows.name {
            -crate::model::gguf_value_shift(arch, rname)
        } else {
            0.0
        };
        let v = compare_tensor(rname, tp, &rows, shift, |g| perm.source_row(n_rows, g))?;
        report.verdicts.push(v);
    }
    pb.finish_and_clear();
    Ok(Some(report))
}

/// The guard as `apply` runs it: refuse a base that disagrees with the
/// residual's fingerprint unless `force`, and say what could be checked.
pub fn guard_apply(
    base: &GgufFile,
    residual: &Residual,
    rtensors: &[ResidualTensor<'_>],
    pairs: &[Pairing],
    force: bool,
    log: &Log,
) -> Result<()> {
    let Some(report) = check(base, residual, rtensors, pairs, log.progress())? else {
        log.note(&format!(
            "{} carries no base fingerprint; only tensor names and shapes could be checked against {}",
            residual.path().display(),
            base.path().display()
        ));
        return Ok(());
    };
    let bad: Vec<&TensorVerdict> = report.verdicts.iter().filter(|v| !v.agrees()).collect();
    if !report.not_covered.is_empty() {
        log.note(&format!(
            "the fingerprint does not cover {} matched tensor(s): {}",
            report.not_covered.len(),
            crate::model::list(&report.not_covered)
        ));
    }
    if bad.is_empty() {
        if log.enabled() {
            let identical = report.verdicts.iter().filter(|v| v.identical).count();
            let closest = report.verdicts.iter().max_by(|a, b| {
                a.margin()
                    .partial_cmp(&b.margin())
                    .unwrap_or(std::cmp::Ordering::Equal)
            });
            let closest = closest
                .map(|v| {
                    format!(
                        "; closest to refusal: {} ({}) at distance {:.4}, {:.2} of its tolerance {:.3}",
                        v.base_name,
                        v.base_type,
                        v.distance,
                        v.margin(),
                        v.tolerance
                    )
                })
                .unwrap_or_default();
            log.info(&format!(
                "base check: {} tensor(s) match the residual's base fingerprint ({identical} identical at f16){closest}\n",
                report.verdicts.len()
            ));
        }
        return Ok(());
    }
    let described: Vec<String> = bad
        .iter()
        .map(|v| {
            format!(
                "{} ({}: distance {:.3}, RMS change {:.3}, mean shift {:.3}; tolerance {:.3})",
                v.base_name, v.base_type, v.distance, v.rms_change, v.mean_shift, v.tolerance
            )
        })
        .collect();
    let msg = format!(
        "{}: {} of {} tensor(s) of {} disagree with the residual's base fingerprint beyond what quantization explains: {}",
        residual.path().display(),
        bad.len(),
        report.verdicts.len(),
        base.path().display(),
        crate::model::list(&described)
    );
    if force {
        log.warn(&format!("{msg}; applying anyway (--force)"));
        Ok(())
    } else {
        Err(Error::Mismatch(format!(
            "{msg}. The residual was extracted from a different base checkpoint; --force applies it anyway"
        )))
    }
}

/// The fingerprint of `model`'s tensors as used in a residual: `(name in the
/// residual, tensor index, row permutation into the residual's layout, value
/// shift into the residual's convention)`.
pub fn fingerprint_model(
    model: &Model,
    entries: &[(String, usize, RowPermutation, f32)],
    progress: &crate::engine::progress::Progress,
) -> Result<Fingerprint> {
    let tensors = model.weights()?;
    let mut out = BTreeMap::new();
    let pb = progress.tensors(entries.len(), "fingerprinting the base");
    for (name, i, perm, shift) in entries {
        pb.inc(1);
        let t = &tensors[*i];
        let rows = model.weight_rows(t, *perm)?;
        let origin = (model.path(), t.name);
        let print = fingerprint_tensor(rows.as_ref(), origin, t.error_type, *shift, &t.shape)?;
        out.insert(name.clone(), print);
    }
    pb.finish_and_clear();
    Ok(Fingerprint {
        version: FINGERPRINT_VERSION,
        tensors: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_errors_are_ordered_by_precision() {
        let f16 = type_error(GgmlType::F16);
        let q8 = type_error(GgmlType::Q8_0);
        let q4 = type_error(GgmlType::Q4_K);
        assert_eq!(type_error(GgmlType::F32), 0.0);
        assert!(f16 > 0.0 && f16 < 1e-3, "{f16}");
        assert!(q8 > f16 && q8 < 0.01, "{q8}");
        assert!(q4 > q8 && q4 < 0.15, "{q4}");
    }

    #[test]
    fn sketch_distance_estimates_relative_error() {
        // w and w + e with ‖e‖/‖w‖ = 0.1 exactly in expectation.
        let n = 256 * 64;
        let mut s = 7u64;
        let mut g = || {
            s = splitmix64(s);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let w: Vec<f32> = (0..n).map(|_| g()).collect();
        let e: Vec<f32> = (0..n).map(|_| g() * 0.1).collect();
        let shape = [64u64, 256];
        let mut a = Partial::new(n_buckets(n as u64));
        let mut b = a.clone();
        for r in 0..64 {
            a.add_row(r, &w[r * 256..(r + 1) * 256], n as u64);
            let moved: Vec<f32> = (r * 256..(r + 1) * 256).map(|i| w[i] + e[i]).collect();
            b.add_row(r, &moved, n as u64);
        }
        let (mut d2, mut s2) = (0.0, 0.0);
        for (x, y) in a.sketch.iter().zip(&b.sketch) {
            d2 += (x - y) * (x - y);
            s2 += x * x;
        }
        let d = (d2 / s2).sqrt();
        assert!((d - 0.1).abs() < 0.015, "{d}");
        let fa = a.finish(shape.to_vec(), GgmlType::F32);
        assert_eq!(decode_sketch(&fa.sketch).unwrap().len(), 256);
        assert_ne!(
            fa.f16_hash,
            b.finish(shape.to_vec(), GgmlType::F32).f16_hash
        );
    }

    /// Heavy-tailed rows (Laplace with a few large outliers, as in real
    /// weights) quantized to each type stay inside the tolerance; an
    /// independent draw of the same distribution stays outside it.
    #[test]
    fn tolerance_separates_quantization_from_another_checkpoint() {
        let (rows, cols) = (64usize, 512usize);
        let n = rows * cols;
        let draw = |seed: u64| -> Vec<f32> {
            let mut s = seed;
            (0..n)
                .map(|i| {
                    s = splitmix64(s);
                    let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                    let lap = if u < 0.5 {
                        (2.0 * u).ln()
                    } else {
                        -(2.0 * (1.0 - u)).ln()
                    };
                    let outlier = if i % 997 == 0 { 8.0 } else { 1.0 };
                    (0.02 * lap * outlier) as f32
                })
                .collect()
        };
        let w = draw(1);
        let other = draw(2);
        let print = |v: &[f32]| {
            let mut p = Partial::new(n_buckets(n as u64));
            for (r, row) in v.chunks_exact(cols).enumerate() {
                p.add_row(r, row, n as u64);
            }
            p
        };
        let distance = |a: &Partial, b: &Partial| {
            let (mut d2, mut s2) = (0.0, 0.0);
            for (x, y) in a.sketch.iter().zip(&b.sketch) {
                d2 += (x - y) * (x - y);
                s2 += x * x;
            }
            (d2 / s2).sqrt()
        };
        let reference = print(&w);
        for ty in [
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q6_K,
            GgmlType::Q5_K,
            GgmlType::Q4_K,
            GgmlType::Q4_0,
            GgmlType::IQ4_XS,
            GgmlType::Q3_K,
            GgmlType::Q2_K,
        ] {
            let rb = ty.row_size(cols).unwrap();
            let mut q = vec![0f32; n];
            let mut bytes = vec![0u8; rb];
            for (src, dst) in w.chunks_exact(cols).zip(q.chunks_exact_mut(cols)) {
                quantize_row(ty, src, &mut bytes).unwrap();
                dequantize_row(ty, &bytes, dst).unwrap();
            }
            let tol = TOL_FACTOR
                * (type_error(GgmlType::F32).powi(2) + type_error(ty).powi(2)).sqrt()
                + TOL_FLOOR;
            let same = distance(&reference, &print(&q));
            let different = distance(&reference, &print(&other));
            eprintln!(
                "{ty}: quantized {same:.4}, other checkpoint {different:.4}, tolerance {tol:.4}"
            );
            assert!(same <= 0.65 * tol, "{ty}: {same} > 0.65 · {tol}");
            assert!(different > tol, "{ty}: {different} <= {tol}");
        }
    }

    #[test]
    fn chunked_sums_equal_one_pass_in_any_row_order() {
        let rows: Vec<Vec<f32>> = (0..8)
            .map(|r| (0..32).map(|c| (r * 32 + c) as f32 * 0.01).collect())
            .collect();
        let mut one = Partial::new(16);
        for (r, row) in rows.iter().enumerate() {
            one.add_row(r, row, 256);
        }
        let mut x = Partial::new(16);
        let mut y = Partial::new(16);
        for r in (0..8).rev() {
            if r % 2 == 0 {
                x.add_row(r, &rows[r], 256);
            } else {
                y.add_row(r, &rows[r], 256);
            }
        }
        x.merge(&y);
        assert_eq!(one.hash, x.hash);
        assert!((one.sum2 - x.sum2).abs() < 1e-9);
    }
}
