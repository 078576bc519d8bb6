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

use crate::ggml::common::{le_f16, nearest_int};
use crate::ggml::kquants::get_scale_min_k4;
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
    reround_fn(ty).is_some()
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
    let reround = reround_fn(ty);
    let (bs, ts) = (ty.block_size(), ty.type_size());
    if bs > MAX_BLOCK || ts > MAX_BYTES {
        return Err(bad());
    }
    let mut values = [0f32; MAX_BLOCK];
    let mut fresh_copy = [0u8; MAX_BYTES];
    let mut cand = [0u8; MAX_BYTES];
    let values = &mut values[..bs];
    for ((t, base), dst) in target
        .chunks_exact(bs)
        .zip(base_row_bytes.chunks_exact(ts))
        .zip(out.chunks_exact_mut(ts))
    {
        let fresh = &mut fresh_copy[..ts];
        fresh.copy_from_slice(dst);
        let e_fresh = block_error(decode, fresh, t, values);
        let e_base = block_error(decode, base, t, values);
        let mut best = e_fresh;
        if let Some(rr) = reround {
            let c = &mut cand[..ts];
            c.copy_from_slice(base);
            rr(base, t, c);
            let e_c = block_error(decode, c, t, values);
            if e_c < best {
                best = e_c;
                dst.copy_from_slice(c);
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
    let rr = reround_fn(ty).ok_or(QuantError::Unsupported {
        ty,
        op: "re-round",
        why: "only Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K…Q6_K keep scales with re-rounded codes",
    })?;
    let (bs, ts) = (ty.block_size(), ty.type_size());
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

/// Largest block of any type (QK_K) and largest block size in bytes (Q8_K).
const MAX_BLOCK: usize = 256;
const MAX_BYTES: usize = 292;

/// Σ (t − decode(bytes))² in f64; +∞ when the block does not decode to
/// finite values, so such a block never wins against a finite one.
fn block_error(decode: crate::DecodeFn, bytes: &[u8], t: &[f32], values: &mut [f32]) -> f64 {
    decode(bytes, values);
    let mut e = 0f64;
    for (&x, &v) in t.iter().zip(values.iter()) {
        let d = x as f64 - v as f64;
        e += d * d;
    }
    if e.is_finite() {
        e
    } else {
        f64::INFINITY
    }
}

type RerounFn = fn(&[u8], &[f32], &mut [u8]);

fn reround_fn(ty: GgmlType) -> Option<RerounFn> {
    Some(match ty {
        GgmlType::Q4_0 => reround_q4_0,
        GgmlType::Q4_1 => reround_q4_1,
        GgmlType::Q5_0 => reround_q5_0,
        GgmlType::Q5_1 => reround_q5_1,
        GgmlType::Q8_0 => reround_q8_0,
        GgmlType::Q2_K => reround_q2_k,
        GgmlType::Q3_K => reround_q3_k,
        GgmlType::Q4_K => reround_q4_k,
        GgmlType::Q5_K => reround_q5_k,
        GgmlType::Q6_K => reround_q6_k,
        _ => return None,
    })
}

/// The code `k` in `lo..=hi` whose decoded value `k·s + o` (f32, as the
/// decoders compute it: `k as f32 * s + o`, `o = 0` or `−m`) is nearest to
/// `t`; `None` when the grid is degenerate (`s = 0`: every code decodes to
/// `o`) or not finite, in which case the base's code is kept.
///
/// `nearest_int` of the clamped ratio is the nearest code up to the f32
/// rounding of `(t − o)/s`; its two neighbours are checked on the decoded
/// values, so the result is exact, ties keeping the rounded one.
#[inline(always)]
fn nearest_code(t: f32, s: f32, o: f32, lo: i32, hi: i32) -> Option<i32> {
    grid_ok(s, o).then(|| nearest_code_unchecked(t, s, o, lo, hi))
}

/// Whether the grid `k·s + o` has distinct finite values.
#[inline(always)]
fn grid_ok(s: f32, o: f32) -> bool {
    s != 0.0 && s.is_finite() && o.is_finite()
}

/// [`nearest_code`] for a grid that passed [`grid_ok`], branch-free so
/// that block loops vectorise.
#[inline(always)]
fn nearest_code_unchecked(t: f32, s: f32, o: f32, lo: i32, hi: i32) -> i32 {
    let x = ((t - o) / s).clamp(lo as f32, hi as f32);
    let k0 = nearest_int(x);
    let err = |k: i32| (t - (k as f32 * s + o)).abs();
    let (km, kp) = ((k0 - 1).max(lo), (k0 + 1).min(hi));
    let (e0, em, ep) = (err(k0), err(km), err(kp));
    // Strictly nearer only, lower neighbour first: ties keep `k0`.
    let (k, e) = if em < e0 { (km, em) } else { (k0, e0) };
    if ep < e {
        kp
    } else {
        k
    }
}

/// Store a 4-bit code in the low (`high = false`) or high nibble.
#[inline(always)]
fn set_nibble(byte: &mut u8, high: bool, q: u8) {
    *byte = if high {
        (*byte & 0x0F) | (q << 4)
    } else {
        (*byte & 0xF0) | (q & 0x0F)
    };
}

/// Store a 2-bit code at bit `shift`.
#[inline(always)]
fn set_bits2(byte: &mut u8, shift: u32, q: u8) {
    *byte = (*byte & !(3 << shift)) | ((q & 3) << shift);
}

/// Store one bit.
#[inline(always)]
fn set_bit(byte: &mut u8, bit: u32, on: bool) {
    *byte = (*byte & !(1 << bit)) | (u8::from(on) << bit);
}

/// Legacy 32-element blocks (`dequantize_row_q4_0/_q4_1/_q5_0/_q5_1`):
/// element `e` is code `k = q − off` on the grid `k·d + m`; its low nibble
/// sits in `qs[e % 16]` (high nibble for `e ≥ 16`), a fifth bit in bit `e`
/// of `qh` when `qh_at` is given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reround_legacy(
    b: &[u8],
    t: &[f32],
    o: &mut [u8],
    m_at: Option<usize>,
    qh_at: Option<usize>,
    qs_at: usize,
    lo: i32,
    hi: i32,
) {
    let d = le_f16(b, 0);
    let m = m_at.map_or(0.0, |i| le_f16(b, i));
    if !grid_ok(d, m) {
        return;
    }
    let t: &[f32; 32] = t.try_into().expect("32-element block");
    let mut q = [0u8; 32];
    for (qi, &x) in q.iter_mut().zip(t) {
        *qi = (nearest_code_unchecked(x, d, m, lo, hi) - lo) as u8;
    }
    let qs: &mut [u8; 16] = (&mut o[qs_at..qs_at + 16]).try_into().expect("16 bytes");
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
    }
    if let Some(h) = qh_at {
        let mut qh = 0u32;
        for (e, &qi) in q.iter().enumerate() {
            qh |= (((qi >> 4) & 1) as u32) << e;
        }
        o[h..h + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Re-rounded candidate for Q4_0: codes `−8..=7` on `k·d`.
fn reround_q4_0(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(b, t, o, None, None, 2, -8, 7);
}

/// Re-rounded candidate for Q4_1: codes `0..=15` on `k·d + m`.
fn reround_q4_1(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(b, t, o, Some(2), None, 4, 0, 15);
}

/// Re-rounded candidate for Q5_0: codes `−16..=15` on `k·d`.
fn reround_q5_0(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(b, t, o, None, Some(2), 6, -16, 15);
}

/// Re-rounded candidate for Q5_1: codes `0..=31` on `k·d + m`.
fn reround_q5_1(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(b, t, o, Some(2), Some(4), 8, 0, 31);
}

/// Re-rounded candidate for Q8_0 (`dequantize_row_q8_0`): any `i8` code
/// on `k·d`.
fn reround_q8_0(b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 0);
    if !grid_ok(d, 0.0) {
        return;
    }
    for (q, &x) in o[2..34].iter_mut().zip(t) {
        *q = nearest_code_unchecked(x, d, 0.0, -128, 127) as i8 as u8;
    }
}

/// Re-rounded candidate for Q2_K (`dequantize_row_q2_K`): sub-block
/// `s = e / 16` on `k·(d·sc) − dmin·m`, `k` in `0..=3`, 2-bit code in bit
/// plane `(s % 8) / 2` of `qs[32·(s / 8) + 16·(s % 2) + e % 16]`.
fn reround_q2_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 80);
    let min = le_f16(b, 82);
    for (e, &x) in t.iter().enumerate().take(256) {
        let s = e / 16;
        let sc = b[s];
        let dl = d * (sc & 0xF) as f32;
        let ml = min * (sc >> 4) as f32;
        if let Some(k) = nearest_code(x, dl, -ml, 0, 3) {
            let shift = 2 * ((s % 8) / 2) as u32;
            set_bits2(
                &mut o[16 + 32 * (s / 8) + 16 * (s % 2) + e % 16],
                shift,
                k as u8,
            );
        }
    }
}

/// Q3_K's 6-bit scale of sub-block `j`, minus 32, as `dequantize_row_q3_K`
/// unpacks it.
#[inline(always)]
fn q3_k_scale(s: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// Re-rounded candidate for Q3_K (`dequantize_row_q3_K`): `k·(d·scale)`,
/// `k` in `−4..=3`, stored as `k + 4`: low two bits like Q2_K (at offset
/// 32), the third in bit `e / 32` of `hmask[e % 32]`.
fn reround_q3_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    let d_all = le_f16(b, 108);
    for (e, &x) in t.iter().enumerate().take(256) {
        let s = e / 16;
        let dl = d_all * q3_k_scale(&b[96..108], s) as f32;
        if let Some(k) = nearest_code(x, dl, 0.0, -4, 3) {
            let u = (k + 4) as u8;
            let shift = 2 * ((s % 8) / 2) as u32;
            set_bits2(&mut o[32 + 32 * (s / 8) + 16 * (s % 2) + e % 16], shift, u);
            set_bit(&mut o[e % 32], (e / 32) as u32, u & 4 != 0);
        }
    }
}

/// Re-rounded candidate for Q4_K and Q5_K (`dequantize_row_q4_K/_q5_K`):
/// sub-block `j = e / 32` on `k·(d·sc_j) − dmin·m_j`, codes `0..=nmax`; the
/// low nibble in `qs[32·(j / 2) + e % 32]` (high nibble for odd `j`) at
/// `qs_at`, for Q5_K the fifth bit in bit `j` of `qh[e % 32]`.
#[inline(always)]
fn reround_qkx_k(b: &[u8], t: &[f32], o: &mut [u8], qh_at: Option<usize>, qs_at: usize, nmax: i32) {
    let d = le_f16(b, 0);
    let dmin = le_f16(b, 2);
    for (j, xs) in t.chunks_exact(32).enumerate().take(8) {
        let (sc, m) = get_scale_min_k4(j, &b[4..16]);
        let d1 = d * sc as f32;
        let m1 = dmin * m as f32;
        if !grid_ok(d1, -m1) {
            continue;
        }
        let mut codes = [0u8; 32];
        for (c, &x) in codes.iter_mut().zip(xs) {
            *c = nearest_code_unchecked(x, d1, -m1, 0, nmax) as u8;
        }
        for (i, &q) in codes.iter().enumerate() {
            set_nibble(&mut o[qs_at + 32 * (j / 2) + i], j % 2 == 1, q);
            if let Some(h) = qh_at {
                set_bit(&mut o[h + i], j as u32, q & 0x10 != 0);
            }
        }
    }
}

/// Re-rounded candidate for Q4_K.
fn reround_q4_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_qkx_k(b, t, o, None, 16, 15);
}

/// Re-rounded candidate for Q5_K.
fn reround_q5_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_qkx_k(b, t, o, Some(16), 48, 31);
}

/// Re-rounded candidate for Q6_K (`dequantize_row_q6_K`): `k·(d·sc)` with
/// the signed 8-bit scale of sub-block `e / 16`, `k` in `−32..=31` stored as
/// `k + 32`. In half `n = e / 128`, quarter `m`, index `i`: the low nibble
/// in `ql[64n + i + 32·(m % 2)]` (high nibble for `m ≥ 2`), the top two
/// bits at bit `2m` of `qh[32n + i]`.
fn reround_q6_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 208);
    for (j, xs) in t.chunks_exact(16).enumerate().take(16) {
        let s = d * b[192 + j] as i8 as f32;
        if !grid_ok(s, 0.0) {
            continue;
        }
        let mut codes = [0u8; 16];
        for (c, &x) in codes.iter_mut().zip(xs) {
            *c = (nearest_code_unchecked(x, s, 0.0, -32, 31) + 32) as u8;
        }
        for (r, &q) in codes.iter().enumerate() {
            let e = 16 * j + r;
            let (n, m, i) = (e / 128, (e % 128) / 32, e % 32);
            set_nibble(&mut o[64 * n + i + 32 * (m % 2)], m >= 2, q);
            set_bits2(&mut o[128 + 32 * n + i], 2 * m as u32, q >> 4);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize_row;

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
            let rr = reround_fn(ty).unwrap();
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
