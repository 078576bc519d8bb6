//! The "i-quants" of `ggml-quants.c`: grid codebooks (IQ1_S … IQ3_S) and the
//! non-linear 4-bit formats (IQ4_NL, IQ4_XS).
//!
//! The grid types are decode-only here: ggml itself refuses to produce them
//! without an importance matrix. IQ4_NL and IQ4_XS encode like
//! `ggml_quantize_chunk` with no importance matrix (`quantize_iq4_nl`,
//! `quantize_iq4_xs`, `ntry = 7`), not like `quantize_row_iq4_nl_ref`.

use super::common::{f16_to_f32, le_f16, le_u16, nearest_int, put_f16};
use super::search::{first_absmax, GROUP_MAX_EPS};
use super::tables::*;

const QK_K: usize = 256;
const QK4_NL: usize = 32;
/// `IQ1S_DELTA` / `IQ1M_DELTA` in `ggml-common.h`.
const IQ1S_DELTA: f32 = 0.125;

#[inline(always)]
fn le_u32(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// `signs & kmask_iq2xs[j] ? -1.f : 1.f`
#[inline(always)]
fn sign(signs: u8, j: usize) -> f32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -1.0
    } else {
        1.0
    }
}

/// `dequantize_row_iq2_xxs`
pub fn dequantize_iq2_xxs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(66).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let qs = &b[2..];
        for ib32 in 0..QK_K / 32 {
            let aux8 = &qs[8 * ib32..8 * ib32 + 4];
            let aux1 = le_u32(qs, 8 * ib32 + 4);
            let db = d * (0.5f32 + (aux1 >> 28) as f32) * 0.25f32;
            for l in 0..4 {
                let grid = IQ2XXS_GRID[aux8[l] as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[((aux1 >> (7 * l)) & 127) as usize];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..8 {
                    y[j] = db * grid[j] as f32 * sign(signs, j);
                }
            }
        }
    }
}

/// `dequantize_row_iq2_xs`
pub fn dequantize_iq2_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(74).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let qs = &b[2..66];
        let scales = &b[66..74];
        for ib32 in 0..QK_K / 32 {
            let db = [
                d * (0.5f32 + (scales[ib32] & 0xf) as f32) * 0.25f32,
                d * (0.5f32 + (scales[ib32] >> 4) as f32) * 0.25f32,
            ];
            for l in 0..4 {
                let q = le_u16(qs, 2 * (4 * ib32 + l));
                let grid = IQ2XS_GRID[(q & 511) as usize].to_le_bytes();
                let signs = KSIGNS_IQ2XS[(q >> 9) as usize];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..8 {
                    y[j] = db[l / 2] * grid[j] as f32 * sign(signs, j);
                }
            }
        }
    }
}

/// `dequantize_row_iq2_s`
pub fn dequantize_iq2_s(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(82).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let qs = &b[2..34];
        let signs = &b[34..66];
        let qh = &b[66..74];
        let scales = &b[74..82];
        for ib32 in 0..QK_K / 32 {
            let db = [
                d * (0.5f32 + (scales[ib32] & 0xf) as f32) * 0.25f32,
                d * (0.5f32 + (scales[ib32] >> 4) as f32) * 0.25f32,
            ];
            for l in 0..4 {
                let dl = db[l / 2];
                let idx =
                    qs[4 * ib32 + l] as usize | (((qh[ib32] as usize) << (8 - 2 * l)) & 0x300);
                let grid = IQ2S_GRID[idx].to_le_bytes();
                let s = signs[4 * ib32 + l];
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..8 {
                    y[j] = dl * grid[j] as f32 * sign(s, j);
                }
            }
        }
    }
}

/// `dequantize_row_iq3_xxs`
pub fn dequantize_iq3_xxs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(98).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let qs = &b[2..66];
        let scales_and_signs = &b[66..98];
        for ib32 in 0..QK_K / 32 {
            let aux32 = le_u32(scales_and_signs, 4 * ib32);
            let db = d * (0.5f32 + (aux32 >> 28) as f32) * 0.5f32;
            let q = &qs[8 * ib32..8 * ib32 + 8];
            for l in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux32 >> (7 * l)) & 127) as usize];
                let grid1 = IQ3XXS_GRID[q[2 * l] as usize].to_le_bytes();
                let grid2 = IQ3XXS_GRID[q[2 * l + 1] as usize].to_le_bytes();
                let y = &mut y[32 * ib32 + 8 * l..32 * ib32 + 8 * l + 8];
                for j in 0..4 {
                    y[j] = db * grid1[j] as f32 * sign(signs, j);
                    y[j + 4] = db * grid2[j] as f32 * sign(signs, j + 4);
                }
            }
        }
    }
}

/// `dequantize_row_iq3_s`
pub fn dequantize_iq3_s(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(110).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let qs = &b[2..66];
        let qh = &b[66..74];
        let signs = &b[74..106];
        let scales = &b[106..110];
        // Each 32-element group g uses qs[8g..], signs[4g..], qh[g] and the
        // nibble g%2 of scales[g/2].
        for g in 0..QK_K / 32 {
            let sc = scales[g / 2];
            let nib = if g % 2 == 0 { sc & 0xf } else { sc >> 4 };
            let db = d * (1 + 2 * nib as i32) as f32;
            let q = &qs[8 * g..8 * g + 8];
            let h = qh[g] as usize;
            for l in 0..4 {
                let i1 = q[2 * l] as usize | ((h << (8 - 2 * l)) & 256);
                let i2 = q[2 * l + 1] as usize | ((h << (7 - 2 * l)) & 256);
                let grid1 = IQ3S_GRID[i1].to_le_bytes();
                let grid2 = IQ3S_GRID[i2].to_le_bytes();
                let s = signs[4 * g + l];
                let y = &mut y[32 * g + 8 * l..32 * g + 8 * l + 8];
                for j in 0..4 {
                    y[j] = db * grid1[j] as f32 * sign(s, j);
                    y[j + 4] = db * grid2[j] as f32 * sign(s, j + 4);
                }
            }
        }
    }
}

/// `dequantize_row_iq1_s`
pub fn dequantize_iq1_s(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(50).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let qs = &b[2..34];
        for ib in 0..QK_K / 32 {
            let qh = le_u16(b, 34 + 2 * ib) as usize;
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for l in 0..4 {
                let idx = qs[4 * ib + l] as usize | (((qh >> (3 * l)) & 7) << 8);
                let grid = IQ1S_GRID[idx].to_le_bytes();
                let y = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..8 {
                    y[j] = dl * (grid[j] as i8 as f32 + delta);
                }
            }
        }
    }
}

/// `dequantize_row_iq1_m`
pub fn dequantize_iq1_m(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(56).zip(dst.chunks_exact_mut(QK_K)) {
        let qs = &b[0..32];
        let qh = &b[32..48];
        let sc = [le_u16(b, 48), le_u16(b, 50), le_u16(b, 52), le_u16(b, 54)];
        // The super-block scale is an fp16 spread over the top nibbles of
        // the four scale words (`iq1m_scale_t`).
        let scale =
            (sc[0] >> 12) | ((sc[1] >> 8) & 0x00f0) | ((sc[2] >> 4) & 0x0f00) | (sc[3] & 0xf000);
        let d = f16_to_f32(scale);
        for ib in 0..QK_K / 32 {
            let s = sc[ib / 2] as i32;
            let dl1 = d * (2 * ((s >> (6 * (ib % 2))) & 0x7) + 1) as f32;
            let dl2 = d * (2 * ((s >> (6 * (ib % 2) + 3)) & 0x7) + 1) as f32;
            let q = &qs[4 * ib..4 * ib + 4];
            let h = [qh[2 * ib] as usize, qh[2 * ib + 1] as usize];
            let idx = [
                q[0] as usize | ((h[0] << 8) & 0x700),
                q[1] as usize | ((h[0] << 4) & 0x700),
                q[2] as usize | ((h[1] << 8) & 0x700),
                q[3] as usize | ((h[1] << 4) & 0x700),
            ];
            let delta = |bit: bool| if bit { -IQ1S_DELTA } else { IQ1S_DELTA };
            let deltas = [
                delta(h[0] & 0x08 != 0),
                delta(h[0] & 0x80 != 0),
                delta(h[1] & 0x08 != 0),
                delta(h[1] & 0x80 != 0),
            ];
            for l in 0..4 {
                let dl = if l < 2 { dl1 } else { dl2 };
                let grid = IQ1S_GRID[idx[l]].to_le_bytes();
                let y = &mut y[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                for j in 0..8 {
                    y[j] = dl * (grid[j] as i8 as f32 + deltas[l]);
                }
            }
        }
    }
}

/// `dequantize_row_iq4_nl`
pub fn dequantize_iq4_nl(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(QK4_NL)) {
        let d = le_f16(b, 0);
        let qs = &b[2..18];
        for j in 0..QK4_NL / 2 {
            y[j] = d * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
            y[j + QK4_NL / 2] = d * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
        }
    }
}

/// `dequantize_row_iq4_xs`
pub fn dequantize_iq4_xs(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(136).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let scales_h = le_u16(b, 2) as i32;
        let scales_l = &b[4..8];
        let qs = &b[8..136];
        for ib in 0..QK_K / 32 {
            let ls = ((scales_l[ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                | (((scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            let q = &qs[16 * ib..16 * ib + 16];
            let y = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                y[j] = dl * KVALUES_IQ4NL[(q[j] & 0xf) as usize] as f32;
                y[j + 16] = dl * KVALUES_IQ4NL[(q[j] >> 4) as usize] as f32;
            }
        }
    }
}

/// `best_index_int8`: index of the nearest entry of the sorted `values`,
/// ties to the upper one.
#[inline(always)]
fn best_index_int8(values: &[i8; 16], x: f32) -> u8 {
    let n = values.len();
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[n - 1] as f32 {
        return (n - 1) as u8;
    }
    let (mut ml, mut mu) = (0usize, n - 1);
    while mu - ml > 1 {
        let mav = (ml + mu) / 2;
        if x < values[mav] as f32 {
            mu = mav;
        } else {
            ml = mav;
        }
    }
    if x - (values[mu - 1] as f32) < values[mu] as f32 - x {
        (mu - 1) as u8
    } else {
        mu as u8
    }
}

/// The per-32-block part of `quantize_row_iq4_nl_impl` with no importance
/// matrix: the best float scale of `xb` (0 for a block below
/// `GROUP_MAX_EPS`), trying `2·ntry + 1` starting scales around `max/values[0]`.
fn iq4_block_scale(xb: &[f32], ntry: i32, lb: &mut [u8]) -> f32 {
    let mut weight = [0f32; 32];
    for (w, &x) in weight.iter_mut().zip(xb) {
        *w = x * x;
    }
    iq4_block_scale_weighted(xb, &weight, ntry, lb)
}

/// The per-32-block scale search of `quantize_row_iq4_nl_impl` with the
/// element weights given (`x²` without an importance matrix,
/// `qw·√(σ² + x²)` with one).
fn iq4_block_scale_weighted(xb: &[f32], weight: &[f32; 32], ntry: i32, lb: &mut [u8]) -> f32 {
    let values = &KVALUES_IQ4NL;
    let (max, amax) = first_absmax(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = values[0] as f32;
    let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
    let mut id = 1.0f32 / d;
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for j in 0..xb.len() {
        let al = id * xb[j];
        let l = best_index_int8(values, al);
        lb[j] = l;
        let q = values[l as usize] as f32;
        let w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -ntry..=ntry {
        id = (itry + values[0] as i32) as f32 / max;
        sumqx = 0.0;
        sumq2 = 0.0;
        for j in 0..xb.len() {
            let al = id * xb[j];
            let l = best_index_int8(values, al);
            let q = values[l as usize] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Pack 32-element groups of indices as ggml does: low nibbles hold the
/// first 16, high nibbles the last 16.
fn pack_nibbles(l: &[u8], q4: &mut [u8]) {
    for (lg, qg) in l.chunks_exact(32).zip(q4.chunks_exact_mut(16)) {
        for j in 0..16 {
            qg[j] = lg[j] | (lg[16 + j] << 4);
        }
    }
}

/// The steps of the IQ4 block walks that a SIMD variant may run on whole
/// vectors. The provided methods are the scalar reference;
/// `x86::iq4::Avx2` overrides them with lane kernels performing, per lane,
/// exactly the scalar sequence of f32 operations.
pub(crate) trait Iq4Lanes {
    /// `iq4_block_scale(·, 7, ·)` for the eight 32-blocks of `x` (256 values).
    #[inline(always)]
    fn block_scales_x8(x: &[f32], scales: &mut [f32]) {
        let mut lb = [0u8; 32];
        for (xb, s) in x.chunks_exact(32).zip(scales) {
            *s = iq4_block_scale(xb, 7, &mut lb);
        }
    }

    /// `l[j] = best_index_int8(KVALUES_IQ4NL, id * x[j])` for one 32-block.
    #[inline(always)]
    fn block_indices(x: &[f32], id: f32, l: &mut [u8]) {
        for (o, &v) in l.iter_mut().zip(x) {
            *o = best_index_int8(&KVALUES_IQ4NL, id * v);
        }
    }
}

/// The scalar reference steps.
pub(crate) struct Portable;

impl Iq4Lanes for Portable {}

#[doc = "`quantize_iq4_nl` (no importance matrix): `quantize_row_iq4_nl_impl` \
     with super-block = block = 32 and `ntry = 7`"]
pub fn quantize_iq4_nl(src: &[f32], dst: &mut [u8]) {
    iq4_nl_rows::<Portable>(src, dst)
}

#[inline(always)]
pub(crate) fn iq4_nl_rows<L: Iq4Lanes>(src: &[f32], dst: &mut [u8]) {
    let mut scales = [0f32; 8];
    let n = src.len() / QK4_NL;
    let mut b0 = 0;
    while b0 < n {
        let nb = (n - b0).min(8);
        let xs = &src[QK4_NL * b0..QK4_NL * (b0 + nb)];
        if nb == 8 {
            L::block_scales_x8(xs, &mut scales);
        } else {
            let mut lb = [0u8; QK4_NL];
            for (xb, s) in xs.chunks_exact(QK4_NL).zip(scales.iter_mut()) {
                *s = iq4_block_scale(xb, 7, &mut lb);
            }
        }
        for (k, x) in xs.chunks_exact(QK4_NL).enumerate() {
            let b = &mut dst[18 * (b0 + k)..18 * (b0 + k + 1)];
            let scale = scales[k];
            put_f16(b, 0, scale);
            let id = if scale != 0.0 { 1.0f32 / scale } else { 0.0 };
            let mut l = [0u8; QK4_NL];
            L::block_indices(x, id, &mut l);
            pack_nibbles(&l, &mut b[2..18]);
        }
        b0 += nb;
    }
}

#[doc = "`quantize_iq4_xs` (no importance matrix): eight 32-blocks with float \
     scales, requantized against the unrounded super-block scale \
     `-max_scale/32`, 6-bit block scales"]
pub fn quantize_iq4_xs(src: &[f32], dst: &mut [u8]) {
    iq4_xs_rows::<Portable>(src, dst)
}

#[inline(always)]
pub(crate) fn iq4_xs_rows<L: Iq4Lanes>(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(136)) {
        let mut scales = [0f32; QK_K / 32];
        L::block_scales_x8(x, &mut scales);
        iq4_xs_pack::<L>(x, &scales, b);
    }
}

/// The part of `quantize_row_iq4_nl_impl` (super-block 256) after the block
/// scales: the super-block scale `-max_scale/32`, the 6-bit block scales and
/// the indices against the rounded block scales.
#[inline(always)]
fn iq4_xs_pack<L: Iq4Lanes>(x: &[f32], scales: &[f32; QK_K / 32], b: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let (mut max_scale, mut amax_scale) = (0f32, 0f32);
    for &d in scales {
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    put_f16(b, 0, d);
    let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
    let mut scales_h = 0u16;
    let mut scales_l = [0u8; 4];
    for ib in 0..QK_K / 32 {
        let mut ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0f32 / dl } else { 0.0 };
        L::block_indices(
            &x[32 * ib..32 * ib + 32],
            idl,
            &mut l[32 * ib..32 * ib + 32],
        );
        ls += 32;
        let (l_l, l_h) = ((ls & 0xf) as u8, (ls >> 4) as u16);
        if ib % 2 == 0 {
            scales_l[ib / 2] = l_l;
        } else {
            scales_l[ib / 2] |= l_l << 4;
        }
        scales_h |= l_h << (2 * (ib % 8));
    }
    b[2..4].copy_from_slice(&scales_h.to_le_bytes());
    b[4..8].copy_from_slice(&scales_l);
    pack_nibbles(&l, &mut b[8..136]);
}

/// `sigma2 = Σ x² · (2/n)` and the weights `qw·√(σ² + x²)` of
/// `quantize_row_iq4_nl_impl` for the 32-block `ib` of a super-block `x`.
#[inline(always)]
fn iq4_weights(x: &[f32], qw: &[f32], ib: usize) -> [f32; 32] {
    let mut sigma2 = 0f32;
    for &v in x {
        sigma2 += v * v;
    }
    sigma2 *= 2.0f32 / x.len() as f32;
    let xb = &x[32 * ib..32 * ib + 32];
    let q = &qw[32 * ib..32 * ib + 32];
    let mut w = [0f32; 32];
    for j in 0..32 {
        w[j] = q[j] * (sigma2 + xb[j] * xb[j]).sqrt();
    }
    w
}

/// `quantize_iq4_nl` with an importance matrix: `quantize_row_iq4_nl_impl`
/// with super-block = block = 32, `ntry = 7` and weights `qw·√(σ² + x²)`,
/// σ² = 2Σx²/32 over the block.
pub fn quantize_iq4_nl_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut lb = [0u8; QK4_NL];
    for ((x, q), b) in src
        .chunks_exact(QK4_NL)
        .zip(qw.chunks_exact(QK4_NL))
        .zip(dst.chunks_exact_mut(18))
    {
        let w = iq4_weights(x, q, 0);
        let scale = iq4_block_scale_weighted(x, &w, 7, &mut lb);
        put_f16(b, 0, scale);
        let id = if scale != 0.0 { 1.0f32 / scale } else { 0.0 };
        let mut l = [0u8; QK4_NL];
        Portable::block_indices(x, id, &mut l);
        pack_nibbles(&l, &mut b[2..18]);
    }
}

/// `quantize_iq4_xs` with an importance matrix: `quantize_row_iq4_nl_impl`
/// with super-block 256, block 32, `ntry = 7` and weights `qw·√(σ² + x²)`,
/// σ² = 2Σx²/256 over the super-block.
pub fn quantize_iq4_xs_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    let mut lb = [0u8; 32];
    for ((x, q), b) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(136))
    {
        let mut scales = [0f32; QK_K / 32];
        for (ib, s) in scales.iter_mut().enumerate() {
            let w = iq4_weights(x, q, ib);
            *s = iq4_block_scale_weighted(&x[32 * ib..32 * ib + 32], &w, 7, &mut lb);
        }
        iq4_xs_pack::<Portable>(x, &scales, b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_breaks_ties_upward_and_clamps() {
        let v = &KVALUES_IQ4NL;
        assert_eq!(best_index_int8(v, -1000.0), 0);
        assert_eq!(best_index_int8(v, 1000.0), 15);
        assert_eq!(best_index_int8(v, 0.0), 8); // nearer to 1 than to -10
        assert_eq!(best_index_int8(v, -4.5), 8); // tie between -10 and 1 goes up
        assert_eq!(best_index_int8(v, -4.6), 7);
    }
}
