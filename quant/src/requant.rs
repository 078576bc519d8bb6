//! Candidate search per block: given a quantized base row and the exact
//! target `t = dequant(base) + αΔ`, write for every block whichever of three
//! encodings decodes nearest to `t` (squared error over the block):
//!
//! - **base**: the base's own block bytes (the residual dropped there);
//! - **fresh**: `quantize_row(ty, t)`, bit-exact with llama.cpp;
//! - **re-rounded**: the base block's scales and minimums kept (fp16 `d`,
//!   `m`/`dmin`, the packed sub-block scales of the K-quants), every code
//!   set to the grid value nearest to `t` (legacy types and Q2_K…Q6_K).
//!
//! The error of each candidate is measured on what the crate's own
//! `dequantize` makes of its bytes, so the block that is written decodes to
//! exactly the values its error was computed on. For the re-rounded
//! candidate every element takes the code whose decoded value
//! `k·s + o` (the decoder's own f32 arithmetic) is nearest to its target;
//! it is therefore at least as near as the base block element by element,
//! and a "mixed" candidate that re-rounds only elements further than half a
//! step from `t` cannot beat it (it is the same block up to exact ties).
//!
//! Choice: the smallest error wins; ties go to fresh, then re-rounded, then
//! base — so `search` writes llama.cpp's bytes wherever nothing is gained and
//! differs from `fresh` only in blocks that measurably improve. One
//! exception: a base block that decodes exactly to `t` (zero error) is kept,
//! so blocks the residual does not touch stay byte-identical (and a zero
//! residual returns the base bytes, which requantization alone does not
//! guarantee).

use crate::ggml::registry;
use crate::{codec, quantize_row, GgmlType, QuantError};

/// Blocks won by each candidate, counted by the bytes written: a block is
/// `fresh` when it equals the fresh encoding, else `base` when it equals the
/// base block, else `rerounded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchWins {
    /// Blocks equal to the base's block (and not to the fresh encoding).
    pub base: u64,
    /// Blocks equal to the fresh encoding.
    pub fresh: u64,
    /// Blocks with the base's scales and re-rounded codes.
    pub rerounded: u64,
}

impl SearchWins {
    /// Blocks counted.
    pub fn total(&self) -> u64 {
        self.base + self.fresh + self.rerounded
    }

    /// Add another count (chunks of one tensor, tensors of one model).
    pub fn merge(&mut self, o: &SearchWins) {
        self.base += o.base;
        self.fresh += o.fresh;
        self.rerounded += o.rerounded;
    }
}

/// Whether `ty` has the re-rounded candidate (otherwise only base and fresh
/// compete).
pub fn has_rerounding(ty: GgmlType) -> bool {
    registry::row(ty).reround.is_some()
}

/// Write into `out` (`row_size(target.len())` bytes of `ty`), block by
/// block, the candidate nearest to `target`: see the module documentation.
/// `base_row_bytes` is the base row in the same type. NaN or infinity in
/// `target` is an error; so is a type without an encoder.
pub fn search_row(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
    wins: &mut SearchWins,
) -> Result<(), QuantError> {
    search(ty, base_row_bytes, target, out, None, wins)
}

/// [`search_row`] that also writes what `dequantize_row` makes of `out`
/// into `decoded` (`target.len()` values): the search decodes every
/// candidate anyway, so the caller need not decode the row again.
pub fn search_row_decoded(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
    decoded: &mut [f32],
    wins: &mut SearchWins,
) -> Result<(), QuantError> {
    if decoded.len() != target.len() {
        return Err(QuantError::BadLength {
            ty,
            elements: decoded.len(),
            bytes: out.len(),
        });
    }
    search(ty, base_row_bytes, target, out, Some(decoded), wins)
}

// Longer than most functions here: the per-block loop keeps the three
// candidates' buffers on the stack (no allocation per row), and the choice
// and the win count belong with them.
fn search(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
    mut decoded: Option<&mut [f32]>,
    wins: &mut SearchWins,
) -> Result<(), QuantError> {
    let bad = || QuantError::BadLength {
        ty,
        elements: target.len(),
        bytes: base_row_bytes.len(),
    };
    if ty.row_size(target.len()) != Some(base_row_bytes.len()) {
        return Err(bad());
    }
    // Checks the output length, finiteness and that `ty` can be encoded;
    // leaves the fresh encoding of every block in `out`.
    quantize_row(ty, target, out)?;
    let decode = codec(ty)
        .ok_or(QuantError::Unsupported {
            ty,
            op: "dequantize",
            why: "no decoder for this type",
        })?
        .dequantize;
    let row = registry::row(ty);
    let reround = row.reround;
    let (bs, ts) = (row.info.block_size, row.info.type_size);
    if bs > MAX_BLOCK || ts > MAX_BYTES {
        return Err(bad());
    }
    let mut fresh_copy = [0u8; MAX_BYTES];
    let mut cand = [0u8; MAX_BYTES];
    let mut v_fresh = [0f32; MAX_BLOCK];
    let mut v_base = [0f32; MAX_BLOCK];
    let mut v_cand = [0f32; MAX_BLOCK];
    for (blk, ((t, base), dst)) in target
        .chunks_exact(bs)
        .zip(base_row_bytes.chunks_exact(ts))
        .zip(out.chunks_exact_mut(ts))
        .enumerate()
    {
        let fresh = &mut fresh_copy[..ts];
        fresh.copy_from_slice(dst);
        decode(fresh, &mut v_fresh[..bs]);
        decode(base, &mut v_base[..bs]);
        let mut best;
        let e_base;
        if let Some(rr) = reround {
            let c = &mut cand[..ts];
            c.copy_from_slice(base);
            rr(base, t, c);
            decode(c, &mut v_cand[..bs]);
            let [e_fresh, e_b, e_c] =
                block_errors(t, [&v_fresh[..bs], &v_base[..bs], &v_cand[..bs]]);
            best = e_fresh;
            e_base = e_b;
            if e_c < best {
                best = e_c;
                dst.copy_from_slice(c);
            }
        } else {
            let [e_fresh, e_b] = block_errors(t, [&v_fresh[..bs], &v_base[..bs]]);
            best = e_fresh;
            e_base = e_b;
        }
        if e_base < best || e_base == 0.0 {
            dst.copy_from_slice(base);
        }
        // Equal bytes decode to equal values.
        let values = if *dst == *fresh {
            wins.fresh += 1;
            &v_fresh
        } else if dst == base {
            wins.base += 1;
            &v_base
        } else {
            wins.rerounded += 1;
            &v_cand
        };
        if let Some(d) = decoded.as_deref_mut() {
            d[blk * bs..(blk + 1) * bs].copy_from_slice(&values[..bs]);
        }
    }
    Ok(())
}

/// A base row, a target and an output of one type and length, the target
/// finite: what [`reround_row`] and [`dither_row`] need.
fn check_whole_row(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &[u8],
) -> Result<(), QuantError> {
    let n = ty.row_size(target.len());
    if n != Some(base_row_bytes.len()) || n != Some(out.len()) {
        return Err(QuantError::BadLength {
            ty,
            elements: target.len(),
            bytes: out.len(),
        });
    }
    if let Some((index, value)) = crate::find_non_finite(target) {
        return Err(QuantError::NonFinite { index, value });
    }
    Ok(())
}

/// The re-rounded candidate alone for a whole row: the base row's bytes
/// with every code moved to the grid value nearest to `target`. For
/// inspection and tests; [`search_row`] uses it per block.
pub fn reround_row(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
) -> Result<(), QuantError> {
    check_whole_row(ty, base_row_bytes, target, out)?;
    let row = registry::row(ty);
    let rr = row.reround.ok_or(QuantError::Unsupported {
        ty,
        op: "re-round",
        why: "only Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K…Q6_K keep scales with re-rounded codes",
    })?;
    let (bs, ts) = (row.info.block_size, row.info.type_size);
    out.copy_from_slice(base_row_bytes);
    for ((t, base), dst) in target
        .chunks_exact(bs)
        .zip(base_row_bytes.chunks_exact(ts))
        .zip(out.chunks_exact_mut(ts))
    {
        rr(base, t, dst);
    }
    Ok(())
}

/// Whether `ty` has the dithered re-rounding ([`dither_row`]): the types
/// with the re-rounded candidate, and IQ4_NL and IQ4_XS (dithered on their
/// non-uniform grid; the search offers them no nearest re-rounding).
pub fn has_dither(ty: GgmlType) -> bool {
    registry::row(ty).dither.is_some()
}

/// The uniform in `[0, 1)` that [`dither_row`] draws for element `i` of a
/// row with key `key` (24 bits of a SplitMix64 hash of both): a function
/// of the key and the position alone, so the bytes depend on neither the
/// thread count nor how rows are cut into chunks.
pub fn dither_uniform(key: u64, i: u64) -> f32 {
    let mut z = key.wrapping_add(i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 40) as f32 * (1.0 / (1u64 << 24) as f32)
}

/// Dithered re-rounding of a whole row: the base row's scales and
/// minimums kept, and every code `k` of element `e` set to
/// `⌊(t − o)/s + u⌋` (clamped to the type's codes) on its block's grid
/// `k·s + o`, `u = dither_uniform(key, e)`. A code rounds up with
/// probability equal to its target's fractional distance between the two
/// neighbouring grid values, so the decoded row equals `target` in
/// expectation wherever the target lies within the grid's range: a
/// residual below half a step survives on average instead of rounding
/// back to the base. IQ4_NL and IQ4_XS follow the same rule on their
/// non-uniform grid `s·kvalues_iq4nl[k]`: with `v_i ≤ t/s ≤ v_{i+1}`, code
/// `i + 1` with probability `(t/s − v_i)/(v_{i+1} − v_i)`. Sub-blocks whose
/// grid is degenerate (zero or non-finite scale) keep the base's codes, as
/// in [`reround_row`].
pub fn dither_row(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
    key: u64,
) -> Result<(), QuantError> {
    check_whole_row(ty, base_row_bytes, target, out)?;
    let row = registry::row(ty);
    let dither = row.dither.ok_or(QuantError::Unsupported {
        ty,
        op: "dithered re-rounding",
        why: "only Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K…Q6_K, IQ4_NL and IQ4_XS keep scales with re-rounded codes",
    })?;
    let (bs, ts) = (row.info.block_size, row.info.type_size);
    if bs > MAX_BLOCK {
        return Err(QuantError::BadLength {
            ty,
            elements: target.len(),
            bytes: out.len(),
        });
    }
    out.copy_from_slice(base_row_bytes);
    let mut u = [0f32; MAX_BLOCK];
    for (blk, ((t, base), dst)) in target
        .chunks_exact(bs)
        .zip(base_row_bytes.chunks_exact(ts))
        .zip(out.chunks_exact_mut(ts))
        .enumerate()
    {
        for (j, u) in u[..bs].iter_mut().enumerate() {
            *u = dither_uniform(key, (blk * bs + j) as u64);
        }
        dither(base, t, &u[..bs], dst);
    }
    Ok(())
}

/// Largest block of any type (QK_K) and largest block size in bytes (Q8_K).
const MAX_BLOCK: usize = 256;
const MAX_BYTES: usize = 292;

/// Σ (t − v)² in f64 of each candidate's decoded block `v`, every sum
/// left to right; +∞ for a block that does not decode to finite values, so
/// such a block never wins against a finite one. The candidates share one
/// pass: their sums are independent chains of additions that the core
/// overlaps, where one pass per candidate would wait on each addition in
/// turn (the sums, and so the choice, are the same).
#[inline(always)]
fn block_errors<const N: usize>(t: &[f32], v: [&[f32]; N]) -> [f64; N] {
    let v = v.map(|v| &v[..t.len()]);
    let mut e = [0f64; N];
    for (i, &x) in t.iter().enumerate() {
        let x = x as f64;
        for (e, v) in e.iter_mut().zip(&v) {
            let d = x - v[i] as f64;
            *e += d * d;
        }
    }
    e.map(|e| if e.is_finite() { e } else { f64::INFINITY })
}

/// Per group of `group` values, whether the `base` candidate decodes
/// strictly nearer `target` than the `fresh` one (squared error over the
/// group, in f64; a group that does not decode to finite values never
/// wins). Ties go to fresh, so a search built on it writes the fresh bytes
/// wherever nothing is gained. The three slices have one length.
pub fn base_groups_nearer(target: &[f32], fresh: &[f32], base: &[f32], group: usize) -> Vec<bool> {
    assert!(group > 0 && fresh.len() == target.len() && base.len() == target.len());
    target
        .chunks(group)
        .zip(fresh.chunks(group).zip(base.chunks(group)))
        .map(|(t, (f, b))| {
            let [ef, eb] = block_errors(t, [f, b]);
            eb < ef
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize_row;

    #[test]
    fn base_groups_win_only_when_strictly_nearer() {
        let t = [1.0, 1.0, 2.0, 2.0, 3.0, 3.0];
        let fresh = [1.0, 1.5, 2.0, 2.0, 3.0, 3.25];
        let base = [1.0, 1.0, 2.5, 2.0, 3.25, 3.0];
        // Group 0: base exact; group 1: fresh exact; group 2: a tie.
        assert_eq!(
            base_groups_nearer(&t, &fresh, &base, 2),
            [true, false, false]
        );
        // A base group that decodes to NaN never wins.
        let nan = [f32::NAN, 1.0, 2.5, 2.0, 3.25, 3.0];
        assert_eq!(
            base_groups_nearer(&t, &fresh, &nan, 2),
            [false, false, false]
        );
    }

    /// The search as first written (one decode and one error pass per
    /// candidate and block): the faster [`search_row`] must choose exactly
    /// as it did.
    fn search_row_reference(
        ty: GgmlType,
        base_row_bytes: &[u8],
        target: &[f32],
        out: &mut [u8],
        wins: &mut SearchWins,
    ) {
        fn block_error(decode: registry::DecodeFn, b: &[u8], t: &[f32], v: &mut [f32]) -> f64 {
            decode(b, v);
            let mut e = 0f64;
            for (&x, &v) in t.iter().zip(v.iter()) {
                let d = x as f64 - v as f64;
                e += d * d;
            }
            if e.is_finite() {
                e
            } else {
                f64::INFINITY
            }
        }
        quantize_row(ty, target, out).unwrap();
        let decode = codec(ty).unwrap().dequantize;
        let row = registry::row(ty);
        let (bs, ts) = (row.info.block_size, row.info.type_size);
        let mut values = vec![0f32; bs];
        for ((t, base), dst) in target
            .chunks_exact(bs)
            .zip(base_row_bytes.chunks_exact(ts))
            .zip(out.chunks_exact_mut(ts))
        {
            let fresh = dst.to_vec();
            let e_fresh = block_error(decode, &fresh, t, &mut values);
            let e_base = block_error(decode, base, t, &mut values);
            let mut best = e_fresh;
            if let Some(rr) = row.reround {
                let mut c = base.to_vec();
                rr(base, t, &mut c);
                let e_c = block_error(decode, &c, t, &mut values);
                if e_c < best {
                    best = e_c;
                    dst.copy_from_slice(&c);
                }
            }
            if e_base < best || e_base == 0.0 {
                dst.copy_from_slice(base);
            }
            if *dst == *fresh {
                wins.fresh += 1;
            } else if dst == base {
                wins.base += 1;
            } else {
                wins.rerounded += 1;
            }
        }
    }

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        /// Roughly Gaussian (sum of four uniforms), unit variance.
        fn normal(&mut self) -> f32 {
            let u: f64 = (0..4)
                .map(|_| (self.next() >> 11) as f64 / (1u64 << 53) as f64)
                .sum();
            ((u - 2.0) * 3f64.sqrt()) as f32
        }
    }

    /// The search chooses block by block exactly as the reference does, on
    /// encoded bases with residuals of several sizes and on random bytes as
    /// bases (non-finite and degenerate scales), for every encodable type.
    #[test]
    fn search_matches_the_reference_choice() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let n: usize = 1024;
        for &ty in crate::ALL_TYPES {
            let Some(c) = codec(ty) else { continue };
            if c.quantize.is_none() || ty.block_size() == 1 || !n.is_multiple_of(ty.block_size()) {
                continue;
            }
            let rb = ty.row_size(n).unwrap();
            for case in 0..12 {
                let scale = [0.02f32, 1.0, 1e-3, 300.0][case % 4];
                let x: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
                let mut base = vec![0u8; rb];
                if case < 8 {
                    quantize_row(ty, &x, &mut base).unwrap();
                } else {
                    base.iter_mut().for_each(|b| *b = rng.next() as u8);
                }
                let mut bhat = vec![0f32; n];
                dequantize_row(ty, &base, &mut bhat).unwrap();
                let level = [0.0f32, 0.01, 0.1, 0.5][(case / 2) % 4];
                let t: Vec<f32> = x
                    .iter()
                    .zip(&bhat)
                    .map(|(&x, &b)| {
                        let b = if b.is_finite() { b } else { x };
                        let v = b + level * scale * rng.normal();
                        if case % 3 == 2 {
                            // Values on the base's grid: exact ties.
                            if rng.next().is_multiple_of(2) {
                                b
                            } else {
                                v
                            }
                        } else {
                            v
                        }
                    })
                    .collect();
                let (mut want, mut got) = (vec![0u8; rb], vec![0u8; rb]);
                let (mut w1, mut w2) = (SearchWins::default(), SearchWins::default());
                search_row_reference(ty, &base, &t, &mut want, &mut w1);
                let mut decoded = vec![0f32; n];
                search_row_decoded(ty, &base, &t, &mut got, &mut decoded, &mut w2).unwrap();
                assert_eq!(got, want, "{ty} case {case}");
                let mut again = vec![0f32; n];
                dequantize_row(ty, &got, &mut again).unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&decoded), bits(&again), "{ty} case {case}: decoded");
                assert_eq!(w2, w1, "{ty} case {case}");
            }
        }
    }

    /// The types with dithered re-rounding, and a base row of each over `n`
    /// elements (its decoded values, the row's bytes).
    fn dither_bases(n: usize) -> Vec<(GgmlType, Vec<u8>, Vec<f32>)> {
        let mut rng = Rng(0x51f1_5eed);
        crate::ALL_TYPES
            .iter()
            .copied()
            .filter(|&ty| has_dither(ty) && n.is_multiple_of(ty.block_size()))
            .map(|ty| {
                let x: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let mut base = vec![0u8; ty.row_size(n).unwrap()];
                quantize_row(ty, &x, &mut base).unwrap();
                let mut bhat = vec![0f32; n];
                dequantize_row(ty, &base, &mut bhat).unwrap();
                (ty, base, bhat)
            })
            .collect()
    }

    /// Dithered rounding is unbiased: a target a fraction of a step from
    /// the base's grid (where nearest rounding returns the base) is met on
    /// average over many keys: every element inside its grid's range
    /// within 5 standard errors of the mean of N draws (one draw has
    /// variance at most s²/4 for a step `s`); the nearest rounding is
    /// outside that bound on most elements.
    #[test]
    fn dithered_rounding_is_unbiased() {
        let n = 256;
        let draws = 4000;
        for (ty, base, bhat) in dither_bases(n) {
            let mut rng = Rng(7);
            // Targets: base + a fraction f of a small offset; the offset is
            // 0.1 × the row's RMS, below half a step for ≤ 5-bit types.
            let rms = (bhat.iter().map(|v| v * v).sum::<f32>() / n as f32).sqrt();
            let t: Vec<f32> = bhat
                .iter()
                .map(|&b| b + 0.1 * rms * (rng.normal() * 0.3 + 0.5))
                .collect();
            let mut sum = vec![0f64; n];
            let mut out = vec![0u8; base.len()];
            let mut v = vec![0f32; n];
            for key in 0..draws {
                dither_row(ty, &base, &t, &mut out, key * 0x9e37_79b9 + 11).unwrap();
                dequantize_row(ty, &out, &mut v).unwrap();
                for i in 0..n {
                    sum[i] += v[i] as f64;
                }
            }
            // Nearest rounding: the re-rounded candidate, or for the IQ4
            // types (which have none) the base itself, which is what nearest
            // rounding of a target this near the base returns.
            let vn = if has_rerounding(ty) {
                let mut nearest = vec![0u8; base.len()];
                reround_row(ty, &base, &t, &mut nearest).unwrap();
                let mut vn = vec![0f32; n];
                dequantize_row(ty, &nearest, &mut vn).unwrap();
                vn
            } else {
                bhat.clone()
            };
            // The grid's range per element (the codes nearest to ±∞, which
            // every draw clamps to): a target beyond it is clamped, the one
            // place rounding is biased.
            let ends = |far: f32| {
                let (mut b, mut v) = (vec![0u8; base.len()], vec![0f32; n]);
                dither_row(ty, &base, &vec![far; n], &mut b, 1).unwrap();
                dequantize_row(ty, &b, &mut v).unwrap();
                v
            };
            let (a, b) = (ends(1e9), ends(-1e9));
            let (hi, lo): (Vec<f32>, Vec<f32>) = a
                .iter()
                .zip(&b)
                .map(|(&a, &b)| (a.max(b), a.min(b)))
                .unzip();
            // The widest gap between neighbouring codes, as a fraction of
            // the range: uniform grids 1/steps; kvalues_iq4nl spans 240 with
            // its widest gap 24 (89 → 113).
            let widest = match ty {
                GgmlType::Q2_K => 1.0 / 3.0,
                GgmlType::Q3_K => 1.0 / 7.0,
                GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K => 1.0 / 15.0,
                GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 1.0 / 31.0,
                GgmlType::Q6_K => 1.0 / 63.0,
                GgmlType::Q8_0 => 1.0 / 255.0,
                GgmlType::IQ4_NL | GgmlType::IQ4_XS => 24.0 / 240.0,
                _ => panic!("{ty}: grid unknown to the test"),
            };
            let mut nearest_outside = 0;
            let mut inside = 0;
            for i in 0..n {
                if !(lo[i] < t[i] && t[i] < hi[i]) {
                    continue;
                }
                inside += 1;
                let mean = sum[i] / draws as f64;
                // One draw is one of two neighbouring grid values, a step
                // `s` apart: variance at most s²/4. Bound: 5 standard errors
                // of the mean of the draws, plus the f32 rounding.
                let step = (hi[i] - lo[i]) as f64 * widest;
                let bound = 5.0 * step / 2.0 / (draws as f64).sqrt() + 1e-6 * rms as f64;
                assert!(
                    (mean - t[i] as f64).abs() <= bound,
                    "{ty} element {i}: mean {mean} vs target {} (bound {bound}, grid {}..{})",
                    t[i],
                    lo[i],
                    hi[i]
                );
                if (vn[i] as f64 - t[i] as f64).abs() > bound {
                    nearest_outside += 1;
                }
            }
            // Nearest rounding is biased on most elements (Q8_0's step is
            // small enough that it lands within the bound more often).
            assert!(
                inside > n * 3 / 4,
                "{ty}: only {inside} of {n} targets inside the grid"
            );
            assert!(
                nearest_outside > inside / 4,
                "{ty}: nearest within the bound on {} of {inside}",
                inside - nearest_outside
            );
        }
    }

    /// The same key writes the same bytes; another key other bytes; a row
    /// cut into pieces (as chunks cut a tensor) draws the same uniforms as
    /// the whole row only through the key, which the caller derives from
    /// the row index: equal keys give equal rows whatever else happens.
    /// Codes stay in range (the decoded values lie within the block's grid
    /// range) and a target equal to the base returns the base's bytes.
    #[test]
    fn dithered_rounding_is_deterministic_and_in_range() {
        let n = 512;
        for (ty, base, bhat) in dither_bases(n) {
            let mut rng = Rng(3);
            let t: Vec<f32> = bhat.iter().map(|&b| b + 0.05 * rng.normal()).collect();
            let (mut a, mut b, mut c) = (
                vec![0u8; base.len()],
                vec![0u8; base.len()],
                vec![0u8; base.len()],
            );
            dither_row(ty, &base, &t, &mut a, 42).unwrap();
            dither_row(ty, &base, &t, &mut b, 42).unwrap();
            dither_row(ty, &base, &t, &mut c, 43).unwrap();
            assert_eq!(a, b, "{ty}");
            assert_ne!(a, c, "{ty}: another key, same bytes");
            // Far outside the grid: clamped to the extreme codes, which are
            // what nearest rounding writes too.
            let far: Vec<f32> = bhat
                .iter()
                .enumerate()
                .map(|(i, _)| if i % 2 == 0 { 1e6 } else { -1e6 })
                .collect();
            let mut d = vec![0u8; base.len()];
            let mut r = vec![0u8; base.len()];
            dither_row(ty, &base, &far, &mut d, 5).unwrap();
            if has_rerounding(ty) {
                reround_row(ty, &base, &far, &mut r).unwrap();
            } else {
                // No draw matters at the ends: another key, the same bytes.
                dither_row(ty, &base, &far, &mut r, 6).unwrap();
            }
            assert_eq!(d, r, "{ty}: clamping");
            // On the grid: the base itself.
            let mut e = vec![0u8; base.len()];
            dither_row(ty, &base, &bhat, &mut e, 9).unwrap();
            let mut ve = vec![0f32; n];
            dequantize_row(ty, &e, &mut ve).unwrap();
            assert_eq!(ve, bhat, "{ty}: a target on the grid moved");
        }
    }

    /// A degenerate grid (zero scale) keeps the base's codes, as the
    /// nearest re-rounding does; a type without re-rounding, a wrong length
    /// and a non-finite target are errors.
    #[test]
    fn dithered_rounding_falls_back_like_rerounding() {
        let n = 256;
        for (ty, base, _) in dither_bases(n) {
            // Zero every fp16 scale field: the kernels' d (and dmin).
            let mut zeroed = base.clone();
            let ts = ty.type_size();
            let d_at: &[usize] = match ty {
                GgmlType::Q2_K => &[80, 82],
                GgmlType::Q3_K => &[108],
                GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
                GgmlType::Q6_K => &[208],
                _ => &[0],
            };
            for blk in zeroed.chunks_exact_mut(ts) {
                for &o in d_at {
                    blk[o] = 0;
                    blk[o + 1] = 0;
                }
            }
            let t: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let (mut d, mut r) = (vec![0u8; base.len()], vec![0u8; base.len()]);
            dither_row(ty, &zeroed, &t, &mut d, 1).unwrap();
            assert_eq!(d, zeroed, "{ty}: a degenerate grid moved codes");
            if has_rerounding(ty) {
                reround_row(ty, &zeroed, &t, &mut r).unwrap();
                assert_eq!(d, r, "{ty}");
            }
            let mut inf = t.clone();
            inf[n - 1] = f32::NEG_INFINITY;
            assert!(matches!(
                dither_row(ty, &base, &inf, &mut d, 1),
                Err(QuantError::NonFinite { index, .. }) if index == n - 1
            ));
            let mut bad = t.clone();
            bad[3] = f32::NAN;
            assert!(dither_row(ty, &zeroed, &bad, &mut d, 1).is_err());
            assert!(dither_row(ty, &zeroed, &t[..n - ty.block_size()], &mut d, 1).is_err());
        }
        let n = 256;
        let x = vec![0.5f32; n];
        let mut b = vec![0u8; GgmlType::TQ2_0.row_size(n).unwrap()];
        quantize_row(GgmlType::TQ2_0, &x, &mut b).unwrap();
        let mut o = b.clone();
        assert!(matches!(
            dither_row(GgmlType::TQ2_0, &b, &x, &mut o, 0),
            Err(QuantError::Unsupported { .. })
        ));
    }

    /// The re-rounded candidate with the base's own decoded values as target
    /// reproduces the base block's decoded values (every type's layout is
    /// written where its decoder reads it).
    #[test]
    fn rerounding_the_base_values_reproduces_them() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let n = 512;
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i as f32 * 0.3).sin())
                .collect();
            let rb = ty.row_size(n).unwrap();
            let mut base = vec![0u8; rb];
            quantize_row(ty, &x, &mut base).unwrap();
            let mut bhat = vec![0f32; n];
            dequantize_row(ty, &base, &mut bhat).unwrap();
            // Move every code away with a shifted target, then back: the
            // candidate must write each code where the decoder reads it.
            let rr = registry::row(ty).reround.unwrap();
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (blk, t) in base.chunks_exact(ts).zip(bhat.chunks_exact(bs)) {
                let shifted: Vec<f32> = t
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + if i % 3 == 0 { 0.5 } else { -0.45 })
                    .collect();
                let mut moved = blk.to_vec();
                rr(blk, &shifted, &mut moved);
                assert_ne!(moved, blk, "{ty}: the shifted target changed nothing");
                let mut c = moved.clone();
                rr(&moved, t, &mut c);
                let mut v = vec![0f32; bs];
                dequantize_row(ty, &c, &mut v).unwrap();
                assert_eq!(v, t, "{ty}");
            }
        }
    }
}
