//! Ternary and sign formats of `ggml-quants.c`: TQ1_0 and TQ2_0 (BitNet
//! b1.58 / TriLM weights in {-1, 0, 1}·d), and the newer Q1_0 ({-1, 1}·d)
//! and Q2_0 ({-1, 0, 1, 2}·d).

use super::common::{f32_to_f16, le_f16, put_f16};

const QK_K: usize = 256;
const QK1_0: usize = 128;
const QK2_0: usize = 64;
/// Layout of `block_tq1_0`: 48 bytes of five trits, 4 of four trits, fp16 d.
const TQ1_QS: usize = 48;
const TQ1_QH: usize = 4;

/// `lroundf(v) + 1` stored in an `int`: a trit in 0..=2 (round half away
/// from zero) for |v| ≤ 1.
///
/// A block whose absmax is below 2^-128 has `id = 1/d = inf`, so `v` is
/// ±inf or NaN (0·inf). glibc's `lroundf` then returns `(long)v`, which
/// x86-64 makes `LONG_MIN`; truncated to `int` after `+ 1` that is 1.
/// We reproduce that instead of Rust's saturating cast.
#[inline(always)]
fn trit(v: f32) -> i32 {
    let l = if v.is_nan() || v.abs() >= 9.223_372e18 {
        i64::MIN
    } else {
        v.round() as i64
    };
    l.wrapping_add(1) as i32
}

/// `amax` and `id = d ? 1/d : 0` of a ternary block, d being the unrounded max.
#[inline(always)]
fn absmax_scale(x: &[f32]) -> (f32, f32) {
    let mut amax = 0f32;
    for &v in x {
        // MAX(amax, fabsf(v)) is `a > b ? a : b`.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let id = if amax != 0.0 { 1.0f32 / amax } else { 0.0 };
    (amax, id)
}

/// Five (or four, pre-shifted) trits as a byte: the base-3 number scaled
/// by 256/243 with ceiling division, so that decoding by multiplication
/// and `>> 8` recovers each trit.
#[inline(always)]
fn pack_trits(q: u8) -> u8 {
    (q as u16 * 256).div_ceil(243) as u8
}

/// `quantize_row_tq1_0_ref`
pub fn quantize_tq1_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(54)) {
        let (d, id) = absmax_scale(x);
        let mut off = 0;
        // 5 elements per byte, along 32 bytes
        for j in (0..TQ1_QS - TQ1_QS % 32).step_by(32) {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..5 {
                    q = q
                        .wrapping_mul(3)
                        .wrapping_add(trit(x[off + m + n * 32] * id) as u8);
                }
                b[j + m] = pack_trits(q);
            }
            off += 5 * 32;
        }
        // along 16 bytes
        for j in (TQ1_QS - TQ1_QS % 32..TQ1_QS).step_by(16) {
            for m in 0..16 {
                let mut q = 0u8;
                for n in 0..5 {
                    q = q
                        .wrapping_mul(3)
                        .wrapping_add(trit(x[off + m + n * 16] * id) as u8);
                }
                b[j + m] = pack_trits(q);
            }
            off += 5 * 16;
        }
        // 4 elements per byte, the first shifted to the top trit
        for j in 0..TQ1_QH {
            let mut q = 0u8;
            for m in 0..4 {
                q = q
                    .wrapping_mul(3)
                    .wrapping_add(trit(x[off + j + m * TQ1_QH] * id) as u8);
            }
            b[TQ1_QS + j] = pack_trits(q.wrapping_mul(3));
        }
        put_f16(b, TQ1_QS + TQ1_QH, d);
    }
}

/// One trit back from a packed byte: `((uint8_t)(q·3^n) · 3) >> 8`, minus 1.
#[inline(always)]
fn unpack_trit(q: u8, pow3: u8) -> f32 {
    let q = q.wrapping_mul(pow3);
    let xi = ((q as u16 * 3) >> 8) as i16;
    (xi - 1) as f32
}

/// `dequantize_row_tq1_0`
pub fn dequantize_tq1_0(src: &[u8], dst: &mut [f32]) {
    const POW3: [u8; 6] = [1, 3, 9, 27, 81, 243];
    for (b, y) in src.chunks_exact(54).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, TQ1_QS + TQ1_QH);
        let mut k = 0;
        for j in (0..TQ1_QS - TQ1_QS % 32).step_by(32) {
            for p in &POW3[..5] {
                for m in 0..32 {
                    y[k] = unpack_trit(b[j + m], *p) * d;
                    k += 1;
                }
            }
        }
        for j in (TQ1_QS - TQ1_QS % 32..TQ1_QS).step_by(16) {
            for p in &POW3[..5] {
                for m in 0..16 {
                    y[k] = unpack_trit(b[j + m], *p) * d;
                    k += 1;
                }
            }
        }
        for p in &POW3[..4] {
            for j in 0..TQ1_QH {
                y[k] = unpack_trit(b[TQ1_QS + j], *p) * d;
                k += 1;
            }
        }
    }
}

/// `quantize_row_tq2_0_ref`
pub fn quantize_tq2_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(66)) {
        let (d, id) = absmax_scale(x);
        for (j, xg) in (0..64).step_by(32).zip(x.chunks_exact(128)) {
            for m in 0..32 {
                let mut q = 0u8;
                for n in 0..4 {
                    q = q.wrapping_add(((trit(xg[m + n * 32] * id) & 3) as u8) << (2 * n));
                }
                b[j + m] = q;
            }
        }
        put_f16(b, 64, d);
    }
}

/// `dequantize_row_tq2_0`
pub fn dequantize_tq2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(66).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 64);
        let mut k = 0;
        for j in (0..64).step_by(32) {
            for l in 0..4 {
                for m in 0..32 {
                    let q = ((b[j + m] >> (l * 2)) & 3) as i8;
                    y[k] = (q - 1) as f32 * d;
                    k += 1;
                }
            }
        }
    }
}

/// `quantize_row_q1_0_ref`: the mean absolute value as scale, one sign
/// bit per weight (set for x ≥ 0).
pub fn quantize_q1_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK1_0).zip(dst.chunks_exact_mut(18)) {
        let mut sum_abs = 0f32;
        for &v in x {
            sum_abs += v.abs();
        }
        let d = sum_abs / QK1_0 as f32;
        b[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        b[2..].fill(0);
        for (j, &v) in x.iter().enumerate() {
            if v >= 0.0 {
                b[2 + j / 8] |= 1 << (j % 8);
            }
        }
    }
}

/// `dequantize_row_q1_0`
pub fn dequantize_q1_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK1_0)) {
        let d = le_f16(b, 0);
        for (j, v) in y.iter_mut().enumerate() {
            *v = if (b[2 + j / 8] >> (j % 8)) & 1 != 0 {
                d
            } else {
                -d
            };
        }
    }
}

/// `quantize_row_q2_0_ref`: scale = absmax, codes `roundf(x/d) + 1`
/// clamped to 0..=3.
pub fn quantize_q2_0(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK2_0).zip(dst.chunks_exact_mut(18)) {
        let mut amax = 0f32;
        for &v in x {
            let a = v.abs();
            if a > amax {
                amax = a;
            }
        }
        let d = amax;
        let id = if d > 0.0 { 1.0f32 / d } else { 0.0 };
        put_f16(b, 0, d);
        b[2..].fill(0);
        for (j, &w) in x.iter().enumerate() {
            let q = c_f32_to_i32((w * id).round()).wrapping_add(1).clamp(0, 3);
            b[2 + j / 4] |= (q as u8) << ((j % 4) * 2);
        }
    }
}

/// C's `(int)v` as x86-64 performs it (`cvttss2si`): out-of-range and NaN
/// give `INT_MIN` where Rust's `as` would saturate. Reached when a block's
/// absmax is below 2^-128 and `1/d` overflows to infinity.
#[inline(always)]
fn c_f32_to_i32(v: f32) -> i32 {
    if v.is_nan() || !(-2_147_483_648.0..2_147_483_648.0).contains(&v) {
        i32::MIN
    } else {
        v as i32
    }
}

/// `dequantize_row_q2_0`
pub fn dequantize_q2_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK2_0)) {
        let d = le_f16(b, 0);
        for (j, v) in y.iter_mut().enumerate() {
            let q = (b[2 + j / 4] >> ((j % 4) * 2)) & 0x03;
            *v = (q as i32 - 1) as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_trits_decode_to_the_encoded_trits() {
        // Every 5-trit value survives pack_trits / unpack_trit.
        for v in 0u8..243 {
            let packed = pack_trits(v);
            let mut want = [0u8; 5];
            let mut r = v;
            for t in want.iter_mut().rev() {
                *t = r % 3;
                r /= 3;
            }
            for (n, p) in [1u8, 3, 9, 27, 81].iter().enumerate() {
                assert_eq!(unpack_trit(packed, *p), want[n] as f32 - 1.0, "v={v} n={n}");
            }
        }
    }
}
