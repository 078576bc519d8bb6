//! The legacy 32-element block formats Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0:
//! ports of `quantize_row_q*_ref` and `dequantize_row_q*` from
//! `ggml/src/ggml-quants.c` (block layouts from `ggml-common.h`).
//!
//! These are what `ggml_quantize_chunk` runs when no importance matrix is
//! given. The quantizers round in three different ways — truncation after
//! `+8.5f` / `+16.5f` (Q4_0, Q5_0), truncation after `+0.5f` (Q4_1, Q5_1) and
//! `roundf` (Q8_0) — and every float operation below is in ggml's order.
//! With an importance matrix ggml runs `quantize_row_q*_impl` instead (the
//! `*_weighted` functions here); Q8_0 ignores the importance matrix.

use super::common::{le_f16, put_f16};
use super::search::{make_qkx2_quants_batched, make_qx_quants_weighted};

const QK: usize = 32;

/// A C cast of a float to a small integer type, as x86-64 performs it:
/// `cvttss2si` truncates toward zero and yields `0x8000_0000` for NaN and
/// out-of-range values, of which the narrow type keeps the low byte.
///
/// This matters only when a block's scale is so small that `1.0f/d`
/// overflows to infinity (all |x| below about 2.4e-38): ggml then stores
/// quant 0 for every element, and a saturating Rust `as` would not.
#[inline(always)]
fn c_cast_low_byte(v: f32) -> u8 {
    // 2^31: the first value cvttss2si cannot represent.
    const LIMIT: f32 = 2_147_483_648.0;
    // A select rather than a branch, so that loops over it vectorise
    // (false for NaN).
    let c = if (-LIMIT..LIMIT).contains(&v) { v } else { 0.0 };
    // SAFETY: `c` is finite and within the i32 range.
    unsafe { c.to_int_unchecked::<i32>() as u8 }
}

/// A 32-element block as an array: fixed bounds for the loops below.
#[inline(always)]
fn block(x: &[f32]) -> &[f32; QK] {
    x.try_into().expect("chunks_exact yields whole blocks")
}

/// The first element of `x` equal to `v`, one of them: only for a zero can
/// that differ from `v` (its sign), and the scalar scans keep the first.
#[inline(always)]
fn first_equal(x: &[f32; QK], v: f32) -> f32 {
    if v == 0.0 {
        x.iter().copied().find(|&e| e == v).unwrap_or(v)
    } else {
        v
    }
}

/// The value of largest magnitude in a block, first occurrence winning, as
/// the `amax < fabsf(v)` scan of `quantize_row_q4_0_ref` / `_q5_0_ref`.
///
/// The largest magnitude is found in eight independent lanes (a maximum is
/// the same in any order; NaN never wins `amax < |v|`), then the first
/// element of that magnitude; a block of zeros keeps the initial `0.0`.
#[inline(always)]
fn signed_absmax(x: &[f32; QK]) -> f32 {
    let mut lanes = [0.0f32; 8];
    for c in x.chunks_exact(8) {
        for (a, &v) in lanes.iter_mut().zip(c) {
            *a = if *a < v.abs() { v.abs() } else { *a };
        }
    }
    let amax = lanes.iter().fold(0.0f32, |a, &v| if a < v { v } else { a });
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// The `min`/`max` scan of `quantize_row_q4_1_ref` / `_q5_1_ref`.
///
/// Eight independent lanes, then the lanes: the extremes are the same in
/// any order (NaN never passes `v < min`), up to the sign of a zero, which
/// [`first_equal`] settles as the sequential scan does.
#[inline(always)]
fn min_max(x: &[f32; QK]) -> (f32, f32) {
    let mut lo = [f32::MAX; 8];
    let mut hi = [-f32::MAX; 8];
    for c in x.chunks_exact(8) {
        for l in 0..8 {
            lo[l] = if c[l] < lo[l] { c[l] } else { lo[l] };
            hi[l] = if c[l] > hi[l] { c[l] } else { hi[l] };
        }
    }
    let min = lo.iter().fold(f32::MAX, |a, &v| if v < a { v } else { a });
    let max = hi.iter().fold(-f32::MAX, |a, &v| if v > a { v } else { a });
    (first_equal(x, min), first_equal(x, max))
}

#[inline(always)]
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0f32 / d
    } else {
        0.0
    }
}

/// `quantize_row_q4_0_ref`: 18-byte blocks `{ d: f16, qs: [u8; 16] }`,
/// element `j` in the low nibble of `qs[j]`, element `j + 16` in the high one.
pub fn quantize_row_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(18)) {
        let x = block(x);
        let max = signed_absmax(x);
        let d = max / -8.0f32;
        let id = inverse(d);
        put_f16(y, 0, d);
        for j in 0..QK / 2 {
            let x0 = x[j] * id;
            let x1 = x[QK / 2 + j] * id;
            let xi0 = (c_cast_low_byte(x0 + 8.5f32) as i8).min(15) as u8;
            let xi1 = (c_cast_low_byte(x1 + 8.5f32) as i8).min(15) as u8;
            y[2 + j] = xi0 | (xi1 << 4);
        }
    }
}

/// `dequantize_row_q4_0`.
pub fn dequantize_row_q4_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK)) {
        let d = le_f16(b, 0);
        for j in 0..QK / 2 {
            let x0 = (b[2 + j] & 0x0f) as i32 - 8;
            let x1 = (b[2 + j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

/// `quantize_row_q4_1_ref`: 20-byte blocks `{ d: f16, m: f16, qs: [u8; 16] }`.
pub fn quantize_row_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(20)) {
        let x = block(x);
        let (min, max) = min_max(x);
        let d = (max - min) / 15.0f32;
        let id = inverse(d);
        put_f16(y, 0, d);
        put_f16(y, 2, min);
        let mut q = [0u8; QK];
        for (qi, &xi) in q.iter_mut().zip(x) {
            *qi = (c_cast_low_byte((xi - min) * id + 0.5f32) as i8).min(15) as u8;
        }
        let qs: &mut [u8; QK / 2] = (&mut y[4..]).try_into().expect("20-byte block");
        for j in 0..QK / 2 {
            qs[j] = q[j] | (q[QK / 2 + j] << 4);
        }
    }
}

/// `dequantize_row_q4_1`: `q*d + m`, multiply and add rounded separately.
pub fn dequantize_row_q4_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(20).zip(dst.chunks_exact_mut(QK)) {
        let d = le_f16(b, 0);
        let m = le_f16(b, 2);
        for j in 0..QK / 2 {
            let x0 = (b[4 + j] & 0x0f) as i32;
            let x1 = (b[4 + j] >> 4) as i32;
            y[j] = x0 as f32 * d + m;
            y[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// Pack 32 five-bit quants the way `quantize_row_q5_0_ref` / `_q5_1_ref` do:
/// low nibbles as in Q4, the fifth bit of element `i` in bit `i` of `qh`.
#[inline(always)]
fn pack_q5(q: &[u8; QK], qh_out: &mut [u8], qs_out: &mut [u8]) {
    let qs_out: &mut [u8; QK / 2] = qs_out.try_into().expect("16 quant bytes");
    let mut qh = 0u32;
    for j in 0..QK / 2 {
        qs_out[j] = (q[j] & 0x0f) | ((q[QK / 2 + j] & 0x0f) << 4);
    }
    for (j, &qi) in q.iter().enumerate() {
        qh |= (((qi & 0x10) >> 4) as u32) << j;
    }
    qh_out.copy_from_slice(&qh.to_le_bytes());
}

/// The 32 five-bit quants of a Q5 block (`qh` then `qs`), as
/// `dequantize_row_q5_0` / `_q5_1` assemble them.
#[inline(always)]
fn unpack_q5(qh: &[u8], qs: &[u8]) -> [u8; QK] {
    let qh = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let mut q = [0u8; QK];
    for j in 0..QK / 2 {
        let xh_0 = (((qh >> j) << 4) & 0x10) as u8;
        let xh_1 = ((qh >> (j + 12)) & 0x10) as u8;
        q[j] = (qs[j] & 0x0f) | xh_0;
        q[j + QK / 2] = (qs[j] >> 4) | xh_1;
    }
    q
}

/// `quantize_row_q5_0_ref`: 22-byte blocks `{ d: f16, qh: [u8; 4], qs: [u8; 16] }`.
pub fn quantize_row_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(22)) {
        let x = block(x);
        let max = signed_absmax(x);
        let d = max / -16.0f32;
        let id = inverse(d);
        put_f16(y, 0, d);
        let mut q = [0u8; QK];
        for (qi, &xi) in q.iter_mut().zip(x) {
            *qi = (c_cast_low_byte(xi * id + 16.5f32) as i8).min(31) as u8;
        }
        let (qh, qs) = y[2..].split_at_mut(4);
        pack_q5(&q, qh, qs);
    }
}

/// `dequantize_row_q5_0`.
pub fn dequantize_row_q5_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(22).zip(dst.chunks_exact_mut(QK)) {
        let d = le_f16(b, 0);
        let q = unpack_q5(&b[2..6], &b[6..22]);
        for (yi, &qi) in y.iter_mut().zip(&q) {
            *yi = (qi as i32 - 16) as f32 * d;
        }
    }
}

/// `quantize_row_q5_1_ref`: 24-byte blocks
/// `{ d: f16, m: f16, qh: [u8; 4], qs: [u8; 16] }`. Unlike Q4_1 there is no
/// clamp: the quant is the truncated `(x - min)*id + 0.5f` cast to `uint8_t`,
/// of which only the low five bits are stored.
pub fn quantize_row_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(24)) {
        let x = block(x);
        let (min, max) = min_max(x);
        let d = (max - min) / 31.0f32;
        let id = inverse(d);
        put_f16(y, 0, d);
        put_f16(y, 2, min);
        let mut q = [0u8; QK];
        for (qi, &xi) in q.iter_mut().zip(x) {
            *qi = c_cast_low_byte((xi - min) * id + 0.5f32);
        }
        let (qh, qs) = y[4..].split_at_mut(4);
        pack_q5(&q, qh, qs);
    }
}

/// `dequantize_row_q5_1`: `q*d + m`, multiply and add rounded separately.
pub fn dequantize_row_q5_1(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(24).zip(dst.chunks_exact_mut(QK)) {
        let d = le_f16(b, 0);
        let m = le_f16(b, 2);
        let q = unpack_q5(&b[4..8], &b[8..24]);
        for (yi, &qi) in y.iter_mut().zip(&q) {
            *yi = qi as f32 * d + m;
        }
    }
}

/// `quantize_row_q8_0_ref`: 34-byte blocks `{ d: f16, qs: [i8; 32] }`,
/// `roundf` (half away from zero) of `x*id`.
pub fn quantize_row_q8_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK).zip(dst.chunks_exact_mut(34)) {
        let mut amax = 0.0f32;
        for &v in x {
            // MAX(amax, fabsf(v)) = amax > |v| ? amax : |v|
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        let d = amax / 127.0f32;
        let id = inverse(d);
        put_f16(y, 0, d);
        for (q, &xi) in y[2..].iter_mut().zip(x) {
            *q = c_cast_low_byte((xi * id).round());
        }
    }
}

/// `Σ x[j]² / n` over the whole row: the σ² of `quantize_row_q{4,5}_{0,1}_impl`
/// (per row, not per block), summed left to right.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// `weight[j] = qw[j] * sqrtf(sigma2 + xb[j]*xb[j])` for one block.
#[inline(always)]
fn block_weights(qw: &[f32], xb: &[f32; QK], sigma2: f32) -> [f32; QK] {
    let mut w = [0f32; QK];
    for j in 0..QK {
        w[j] = qw[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
    w
}

/// Every block of `src` with its importance weights `qw·√(σ² + x²)` (σ²
/// over the whole row, as the `_impl` encoders compute it) and its
/// `block_bytes` of `dst`.
fn for_weighted_blocks(
    src: &[f32],
    qw: &[f32],
    dst: &mut [u8],
    block_bytes: usize,
    mut f: impl FnMut(&[f32; QK], &[f32; QK], &mut [u8]),
) {
    let sigma2 = row_sigma2(src);
    for ((x, q), y) in src
        .chunks_exact(QK)
        .zip(qw.chunks_exact(QK))
        .zip(dst.chunks_exact_mut(block_bytes))
    {
        let x = block(x);
        f(x, &block_weights(q, x, sigma2), y);
    }
}

/// `quantize_row_q4_0_impl` with importance weights `qw` (one per column):
/// per block `make_qx_quants(32, 8, xb, L, 1, qw·√(σ² + x²))`, the scale
/// stored as is (no requantization).
pub fn quantize_row_q4_0_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0i8; QK];
    for_weighted_blocks(src, qw, dst, 18, |x, w, y| {
        let d = make_qx_quants_weighted::<QK>(8, x, w, &mut l);
        put_f16(y, 0, d);
        for j in 0..QK / 2 {
            y[2 + j] = (l[j] as u8) | ((l[j + QK / 2] as u8) << 4);
        }
    });
}

/// `make_qkx3_quants(32, nmax, …, -0.9f, 0.05f, 36, false)` of the
/// `q4_1`/`q5_1` `_impl` encoders into `l`; the scale and `-min` stored at
/// the head of `y`.
fn affine_weighted_block(nmax: i32, x: &[f32; QK], w: &[f32; QK], l: &mut [u8; QK], y: &mut [u8]) {
    let (d, min) = make_qkx2_quants_batched::<QK, 37>(nmax, x, w, l, -0.9, 0.05, false);
    put_f16(y, 0, d);
    put_f16(y, 2, -min);
}

/// `quantize_row_q4_1_impl` with importance weights `qw`: per block
/// `make_qkx3_quants(32, 15, …, -0.9f, 0.05f, 36, false)`.
pub fn quantize_row_q4_1_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK];
    for_weighted_blocks(src, qw, dst, 20, |x, w, y| {
        affine_weighted_block(15, x, w, &mut l, y);
        for j in 0..QK / 2 {
            y[4 + j] = l[j] | (l[j + QK / 2] << 4);
        }
    });
}

/// `quantize_row_q5_0_impl` with importance weights `qw`: per block
/// `make_qx_quants(32, 16, xb, L, 1, qw·√(σ² + x²))`.
pub fn quantize_row_q5_0_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0i8; QK];
    for_weighted_blocks(src, qw, dst, 22, |x, w, y| {
        let d = make_qx_quants_weighted::<QK>(16, x, w, &mut l);
        put_f16(y, 0, d);
        let lq = l.map(|v| v as u8);
        let (qh, qs) = y[2..].split_at_mut(4);
        pack_q5(&lq, qh, qs);
    });
}

/// `quantize_row_q5_1_impl` with importance weights `qw`: per block
/// `make_qkx3_quants(32, 31, …, -0.9f, 0.05f, 36, false)`.
pub fn quantize_row_q5_1_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK];
    for_weighted_blocks(src, qw, dst, 24, |x, w, y| {
        affine_weighted_block(31, x, w, &mut l, y);
        let (qh, qs) = y[4..].split_at_mut(4);
        pack_q5(&l, qh, qs);
    });
}

/// `dequantize_row_q8_0`.
pub fn dequantize_row_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(QK)) {
        let d = le_f16(b, 0);
        for (yi, &q) in y.iter_mut().zip(&b[2..]) {
            *yi = (q as i8) as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_cast_keeps_low_byte_and_zeroes_invalid() {
        assert_eq!(c_cast_low_byte(16.5), 16);
        assert_eq!(c_cast_low_byte(0.99), 0);
        assert_eq!(c_cast_low_byte(-0.99), 0);
        assert_eq!(c_cast_low_byte(-1.5), 0xff);
        assert_eq!(c_cast_low_byte(257.0), 1);
        assert_eq!(c_cast_low_byte(f32::INFINITY), 0);
        assert_eq!(c_cast_low_byte(f32::NEG_INFINITY), 0);
        assert_eq!(c_cast_low_byte(f32::NAN), 0);
        assert_eq!(c_cast_low_byte(3.0e9), 0);
    }

    #[test]
    fn q5_packing_round_trips_every_bit() {
        let mut q = [0u8; QK];
        for (i, v) in q.iter_mut().enumerate() {
            *v = ((i * 7 + 3) % 32) as u8;
        }
        let (mut qh, mut qs) = ([0u8; 4], [0u8; 16]);
        pack_q5(&q, &mut qh, &mut qs);
        assert_eq!(unpack_q5(&qh, &qs), q);
    }
}
