//! The K-quant encoders with an importance matrix: ports of
//! `quantize_row_q{2..6}_K_impl` from `ggml-quants.c`, which
//! `ggml_quantize_chunk` runs row by row when `imatrix != NULL`.
//!
//! `qw` holds one importance per column of the row (`quant_weights` in
//! ggml); super-block `i` uses `qw[256·i..256·(i+1)]`. Float expressions keep
//! ggml's operand order; the requantization with fp16-rounded scales reuses
//! the scalar helpers of the unweighted encoders, which perform the same
//! operations.

// Index loops mirror the C source line by line.
#![allow(clippy::needless_range_loop)]

use super::common::{f16_to_f32, f32_to_f16};
use super::kquants::{
    finish_k4_block, finish_q6_k_block, pack_2bit, pack_q3_k_codes, pack_q4_k_codes,
    pack_q5_k_codes, q3_k_scale, sub, sub_mut, Lanes, Portable, Q2_K_BYTES, Q3_K_BYTES, Q4_K_BYTES,
    Q5_K_BYTES, Q6_K_BYTES, QK_K,
};
use super::search::{make_qkx2_quants_batched, make_qp_quants, make_qx_quants_weighted};

/// `Σ x[j]²` over a super-block, left to right.
#[inline(always)]
fn sum_sq(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s
}

/// `weight[l] = qw[l] * sqrtf(sigma2 + x[l]*x[l])` for one sub-block; returns
/// their sum (`sw[j]`), accumulated from 0 left to right.
#[inline(always)]
fn sub_weights<const N: usize>(qw: &[f32; N], x: &[f32; N], sigma2: f32, w: &mut [f32; N]) -> f32 {
    let mut sumw = 0f32;
    for l in 0..N {
        w[l] = qw[l] * (sigma2 + x[l] * x[l]).sqrt();
    }
    for l in 0..N {
        sumw += w[l];
    }
    sumw
}

/// `quantize_row_q2_K_impl`: per 16-element sub-block `make_qkx3_quants`
/// (nmax 3, weights `qw·√(σ² + x²)`, σ² = Σx²/256), then 4-bit scales and
/// mins by `make_qp_quants` weighted by the sub-block weight sums.
pub fn quantize_row_q2_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    let mut sw = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let mut ls = [0u8; QK_K / 16];
    let mut lm = [0u8; QK_K / 16];
    for ((x, q), y) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(Q2_K_BYTES))
    {
        let sigma2 = sum_sq(x) / QK_K as f32;
        for j in 0..QK_K / 16 {
            let xs = sub::<16>(x, j);
            sw[j] = sub_weights(sub::<16>(q, j), xs, sigma2, &mut weight);
            // make_qkx3_quants(16, 3, …, -0.9f, 0.05f, 36, false)
            let (s, m) = make_qkx2_quants_batched::<16, 37>(
                3,
                xs,
                &weight,
                sub_mut::<16, _>(&mut l, j),
                -0.9,
                0.05,
                false,
            );
            scales[j] = s;
            mins[j] = m;
        }
        let dm = make_qp_quants::<16>(15, &scales, &mut ls, &sw);
        let mm = make_qp_quants::<16>(15, &mins, &mut lm, &sw);
        let d_bits = f32_to_f16(dm);
        let dmin_bits = f32_to_f16(mm);
        let dm = f16_to_f32(d_bits);
        let mm = f16_to_f32(dmin_bits);
        let mut sc = [0u8; QK_K / 16];
        for j in 0..QK_K / 16 {
            sc[j] = ls[j] | (lm[j] << 4);
        }
        for j in 0..QK_K / 16 {
            let d = dm * (sc[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let m = mm * (sc[j] >> 4) as f32;
            Portable::requant_affine::<16>(sub::<16>(x, j), m, d, 3, sub_mut::<16, _>(&mut l, j));
        }
        y[..16].copy_from_slice(&sc);
        pack_2bit(&l, &mut y[16..80]);
        y[80..82].copy_from_slice(&d_bits.to_le_bytes());
        y[82..84].copy_from_slice(&dmin_bits.to_le_bytes());
    }
}

/// `quantize_row_q3_K_impl`: per 16-element sub-block `make_qx_quants`
/// (nmax 4, weights `qw·√(σ² + x²)`, σ² = 2Σx²/256), then the 6-bit scales
/// by `make_qx_quants(16, 32, …)` weighted by the sub-block weight sums.
pub fn quantize_row_q3_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let mut sw = [0f32; QK_K / 16];
    let mut weight = [0f32; 16];
    let mut li = [0i8; 16];
    let mut ls = [0i8; QK_K / 16];
    for ((x, q), y) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(Q3_K_BYTES))
    {
        let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
        for j in 0..QK_K / 16 {
            let xs = sub::<16>(x, j);
            sw[j] = sub_weights(sub::<16>(q, j), xs, sigma2, &mut weight);
            scales[j] = make_qx_quants_weighted::<16>(4, xs, &weight, &mut li);
            for (o, &v) in sub_mut::<16, _>(&mut l, j).iter_mut().zip(&li) {
                *o = v as u8;
            }
        }
        let d_block = make_qx_quants_weighted::<16>(32, &scales, &sw, &mut ls);
        let mut sc = [0u8; 12];
        for j in 0..QK_K / 16 {
            let lv = ls[j] as u8;
            if j < 8 {
                sc[j] = lv & 0xF;
            } else {
                sc[j - 8] |= (lv & 0xF) << 4;
            }
            sc[j % 4 + 8] |= (lv >> 4) << (2 * (j / 4));
        }
        let d_bits = f32_to_f16(d_block);
        let dall = f16_to_f32(d_bits);
        for j in 0..QK_K / 16 {
            let d = dall * q3_k_scale(&sc, j) as f32;
            if d == 0.0 {
                continue;
            }
            Portable::requant_sym::<16>(sub::<16>(x, j), d, -4, 3, 4, sub_mut::<16, _>(&mut l, j));
        }
        pack_q3_k_codes(&mut l, &mut y[..96]);
        y[96..108].copy_from_slice(&sc);
        y[108..110].copy_from_slice(&d_bits.to_le_bytes());
    }
}

/// What `quantize_row_q4_K_impl` and `quantize_row_q5_K_impl` share: per
/// 32-element sub-block `make_qkx3_quants` (weights `qw·√(σ² + x²)`,
/// σ² = 2Σx²/256), 6-bit scales and mins by `make_qp_quants(8, 63, …)`, and
/// the requantization with the fp16-rounded scales. `clamp63` is Q5_K's
/// `MIN(63, ·)` on the levels (Q4_K has none). Fills `head` (d, dmin,
/// scales: 16 bytes) and `l`.
fn quantize_block_qkx3_k(
    x: &[f32],
    q: &[f32],
    nmax: i32,
    clamp63: bool,
    head: &mut [u8],
    l: &mut [u8; QK_K],
) {
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    let mut sw = [0f32; QK_K / 32];
    let mut weights = [0f32; 32];
    let mut ls = [0u8; QK_K / 32];
    let mut lm = [0u8; QK_K / 32];
    let sigma2 = 2.0 * sum_sq(x) / QK_K as f32;
    for j in 0..QK_K / 32 {
        let xs = sub::<32>(x, j);
        sw[j] = sub_weights(sub::<32>(q, j), xs, sigma2, &mut weights);
        // make_qkx3_quants(32, nmax, …, -0.9f, 0.05f, 36, false)
        let (s, m) = make_qkx2_quants_batched::<32, 37>(
            nmax,
            xs,
            &weights,
            sub_mut::<32, _>(l, j),
            -0.9,
            0.05,
            false,
        );
        scales[j] = s;
        mins[j] = m;
    }
    let d_block = make_qp_quants::<8>(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants::<8>(63, &mins, &mut lm, &sw);
    if clamp63 {
        ls.iter_mut()
            .chain(lm.iter_mut())
            .for_each(|v| *v = (*v).min(63));
    }
    finish_k4_block::<Portable>(x, &ls, &lm, d_block, m_block, nmax, head, l);
}

/// `quantize_row_q4_K_impl` (nmax 15).
pub fn quantize_row_q4_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for ((x, q), y) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(Q4_K_BYTES))
    {
        let (head, qs) = y.split_at_mut(16);
        quantize_block_qkx3_k(x, q, 15, false, head, &mut l);
        pack_q4_k_codes(&l, qs);
    }
}

/// `quantize_row_q5_K_impl` (nmax 31, levels clamped to 63).
pub fn quantize_row_q5_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for ((x, q), y) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(Q5_K_BYTES))
    {
        let (head, rest) = y.split_at_mut(16);
        quantize_block_qkx3_k(x, q, 31, true, head, &mut l);
        pack_q5_k_codes(&l, rest);
    }
}

/// `quantize_row_q6_K_impl`: per 16-element sub-block
/// `make_qx_quants(16, 32, x, L, 1, qw)` with the raw importances as weights
/// (ggml's σ²-scaled weights are commented out there), then as
/// `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut li = [0i8; 16];
    let mut scales = [0f32; QK_K / 16];
    for ((x, q), y) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(Q6_K_BYTES))
    {
        for ib in 0..QK_K / 16 {
            scales[ib] = make_qx_quants_weighted::<16>(32, sub::<16>(x, ib), sub(q, ib), &mut li);
            for (o, &v) in sub_mut::<16, _>(&mut l, ib).iter_mut().zip(&li) {
                *o = v as u8;
            }
        }
        finish_q6_k_block::<Portable>(x, &scales, &mut l, y);
    }
}
