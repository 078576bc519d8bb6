//! K-quant super-block codecs: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and Q8_K, ported
//! from `ggml-quants.c`.
//!
//! Quantization follows `ggml_quantize_chunk` without an importance matrix:
//! `quantize_q{2..6}_K` then call `quantize_row_q{2..6}_K_ref` on the whole
//! chunk, and blocks are independent, so a row-at-a-time port of the `_ref`
//! functions is bit-exact. Each 256-element super-block is encoded from
//! fixed-size stack buffers; nothing is allocated per row. With an
//! importance matrix ggml runs the `_impl` functions instead:
//! [`super::kquants_weighted`]. The encoders are block walks generic over
//! [`Lanes`], the steps a SIMD variant (`x86::kquants`) may batch.

// Index loops mirror the C source line by line, which keeps the port
// easy to check against it.
#![allow(clippy::needless_range_loop)]

use super::common::{f16_to_f32, f32_to_f16, le_f16, nearest_int};
use super::search::{
    first_absmax, get_scale_min_k4, make_q3_quants, make_qkx2_quants_batched, make_qx_quants_rmse1,
    GROUP_MAX_EPS,
};

/// Elements per super-block (`QK_K`).
pub(crate) const QK_K: usize = 256;

pub(super) const Q2_K_BYTES: usize = 84;
pub(super) const Q3_K_BYTES: usize = 110;
pub(super) const Q4_K_BYTES: usize = 144;
pub(super) const Q5_K_BYTES: usize = 176;
pub(super) const Q6_K_BYTES: usize = 210;
const Q8_K_BYTES: usize = 292;

/// Sub-block `j` of `N` elements as a fixed-size array, so the search
/// loops compile without bounds checks.
#[inline(always)]
pub(super) fn sub<const N: usize>(x: &[f32], j: usize) -> &[f32; N] {
    x[N * j..N * j + N].try_into().unwrap()
}

/// Mutable sub-block `j` of `N` entries.
#[inline(always)]
pub(super) fn sub_mut<const N: usize, T>(l: &mut [T], j: usize) -> &mut [T; N] {
    (&mut l[N * j..N * j + N]).try_into().unwrap()
}

#[inline(always)]
fn f16_bytes(x: f32) -> [u8; 2] {
    f32_to_f16(x).to_le_bytes()
}

// ───────────────────────────── Q2_K ─────────────────────────────
// Layout: scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.

/// `quantize_row_q2_K_ref`.
pub fn quantize_row_q2_k(src: &[f32], dst: &mut [u8]) {
    q2_k_rows::<Portable>(src, dst)
}

/// The body of `quantize_row_q2_K_ref`, with the searches of `L`.
#[inline(always)]
pub(crate) fn q2_k_rows<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let mut weights = [0f32; QK_K];
    let mut mins = [0f32; QK_K / 16];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q2_K_BYTES)) {
        for (w, v) in weights.iter_mut().zip(x) {
            *w = v.abs();
        }
        // make_qkx2_quants(16, 3, …, -0.5f, 0.1f, 15, true): 16 candidates.
        if !L::search_qkx2::<16, 16>(x, &weights, 3, -0.5, true, &mut l, &mut scales, &mut mins) {
            for j in 0..QK_K / 16 {
                let (s, m) = make_qkx2_quants_batched::<16, 16>(
                    3,
                    sub::<16>(x, j),
                    sub::<16>(&weights, j),
                    sub_mut::<16, _>(&mut l, j),
                    -0.5,
                    0.1,
                    true,
                );
                scales[j] = s;
                mins[j] = m;
            }
        }
        let mut max_scale = 0f32;
        let mut max_min = 0f32;
        for j in 0..QK_K / 16 {
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }

        let mut sc = [0u8; QK_K / 16];
        let d_bits = if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for j in 0..QK_K / 16 {
                sc[j] = nearest_int(iscale * scales[j]) as u8;
            }
            f32_to_f16(max_scale / Q4SCALE)
        } else {
            f32_to_f16(0.0)
        };
        let dmin_bits = if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for j in 0..QK_K / 16 {
                let lm = nearest_int(iscale * mins[j]);
                sc[j] |= lm.wrapping_shl(4) as u8;
            }
            f32_to_f16(max_min / Q4SCALE)
        } else {
            f32_to_f16(0.0)
        };
        let dall = f16_to_f32(d_bits);
        let dmin = f16_to_f32(dmin_bits);
        for j in 0..QK_K / 16 {
            let d = dall * (sc[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = dmin * (sc[j] >> 4) as f32;
            L::requant_affine::<16>(sub::<16>(x, j), dm, d, 3, sub_mut::<16, _>(&mut l, j));
        }

        y[..16].copy_from_slice(&sc);
        pack_2bit(&l, &mut y[16..80]);
        y[80..82].copy_from_slice(&d_bits.to_le_bytes());
        y[82..84].copy_from_slice(&dmin_bits.to_le_bytes());
    }
}

/// The steps of the block walks below that a SIMD variant may run eight
/// sub-blocks at a time. The provided methods are the scalar reference: the
/// searches answer `false` ("not done here", and the walk runs the port of
/// the ggml search per sub-block), the requantizations loop. A variant
/// (`x86::kquants::Avx2`) overrides them with lane kernels that perform, per
/// lane, exactly the scalar sequence of f32 operations.
pub(crate) trait Lanes {
    /// `make_qkx2_quants` (`nstep + 1 = S`) on every `N`-element sub-block
    /// of the super-block `x`, if this variant batches it.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn search_qkx2<const N: usize, const S: usize>(
        x: &[f32],
        weights: &[f32],
        nmax: i32,
        rmin: f32,
        use_mad: bool,
        l: &mut [u8; QK_K],
        scales: &mut [f32],
        mins: &mut [f32],
    ) -> bool {
        let _ = (x, weights, nmax, rmin, use_mad, l, scales, mins);
        false
    }

    /// `make_qx_quants(16, 32, …, 1, NULL)` on the sixteen sub-blocks of
    /// `x` (`l` = L + 32), if this variant batches it.
    #[inline(always)]
    fn search_qx_rmse1(x: &[f32], l: &mut [u8; QK_K], scales: &mut [f32]) -> bool {
        let _ = (x, l, scales);
        false
    }

    /// `make_q3_quants(16, 4, …, true)` on the sixteen sub-blocks of `x`
    /// (`l` = L + 4), if this variant batches it.
    #[inline(always)]
    fn search_q3(x: &[f32], l: &mut [u8; QK_K], scales: &mut [f32]) -> bool {
        let _ = (x, l, scales);
        false
    }

    /// `l[i] = clamp(nearest_int(x[i] / d), lo, hi) + off`.
    #[inline(always)]
    fn requant_sym<const N: usize>(
        x: &[f32; N],
        d: f32,
        lo: i32,
        hi: i32,
        off: i32,
        l: &mut [u8; N],
    ) {
        for ii in 0..N {
            let q = nearest_int(x[ii] / d).clamp(lo, hi);
            l[ii] = (q + off) as u8;
        }
    }

    /// `l[i] = clamp(nearest_int((x[i] + dm) / d), 0, nmax)`.
    #[inline(always)]
    fn requant_affine<const N: usize>(x: &[f32; N], dm: f32, d: f32, nmax: i32, l: &mut [u8; N]) {
        for ii in 0..N {
            let q = nearest_int((x[ii] + dm) / d);
            l[ii] = q.clamp(0, nmax) as u8;
        }
    }
}

/// The scalar reference steps.
pub(crate) struct Portable;

impl Lanes for Portable {}

/// `dequantize_row_q2_K`. ggml walks the block as 2 halves × 4 bit-planes
/// × 2 runs of 16; sub-block `s` (0..16) of the output is run `s % 2` of
/// bit-plane `(s % 8) / 2` of half `s / 8`, with scale byte `s`.
pub fn dequantize_row_q2_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q2_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 80);
        let min = le_f16(b, 82);
        for (s, ys) in y.chunks_exact_mut(16).enumerate() {
            let sc = b[s];
            let shift = 2 * ((s % 8) / 2) as u32;
            let q = &b[16 + 32 * (s / 8) + 16 * (s % 2)..][..16];
            let dl = d * (sc & 0xF) as f32;
            let ml = min * (sc >> 4) as f32;
            for (o, &qb) in ys.iter_mut().zip(q) {
                *o = dl * ((qb >> shift) & 3) as f32 - ml;
            }
        }
    }
}

// ───────────────────────────── Q3_K ─────────────────────────────
// Layout: hmask[32], qs[64], scales[12] (6-bit, offset 32), d.

/// The 6-bit scale of sub-block `j` (0..16) from Q3_K's 12 packed bytes,
/// minus 32; the same unpacking `quantize_row_q3_K_ref` uses.
#[inline(always)]
pub(super) fn q3_k_scale(s: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// `quantize_row_q3_K_ref`.
pub fn quantize_row_q3_k(src: &[f32], dst: &mut [u8]) {
    q3_k_rows::<Portable>(src, dst)
}

#[inline(always)]
pub(crate) fn q3_k_rows<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q3_K_BYTES)) {
        if !L::search_q3(x, &mut l, &mut scales) {
            let mut li = [0i8; 16];
            for j in 0..QK_K / 16 {
                scales[j] = make_q3_quants(4, sub::<16>(x, j), &mut li, true);
                for (o, &v) in sub_mut::<16, _>(&mut l, j).iter_mut().zip(&li) {
                    *o = v as u8;
                }
            }
        }
        let mut max_scale = 0f32;
        let mut amax = 0f32;
        for j in 0..QK_K / 16 {
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        let mut sc = [0u8; 12];
        let d_bits = if max_scale != 0.0 {
            let iscale = -32.0f32 / max_scale;
            for j in 0..QK_K / 16 {
                let lv = nearest_int(iscale * scales[j]) as i8;
                let lv = (lv.clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    sc[j] = lv & 0xF;
                } else {
                    sc[j - 8] |= (lv & 0xF) << 4;
                }
                sc[j % 4 + 8] |= (lv >> 4) << (2 * (j / 4));
            }
            f32_to_f16(1.0 / iscale)
        } else {
            f32_to_f16(0.0)
        };

        let dall = f16_to_f32(d_bits);
        for j in 0..QK_K / 16 {
            let d = dall * q3_k_scale(&sc, j) as f32;
            if d == 0.0 {
                continue;
            }
            L::requant_sym::<16>(sub::<16>(x, j), d, -4, 3, 4, sub_mut::<16, _>(&mut l, j));
        }

        pack_q3_k_codes(&mut l, &mut y[..96]);
        y[96..108].copy_from_slice(&sc);
        y[108..110].copy_from_slice(&d_bits.to_le_bytes());
    }
}

/// `dequantize_row_q3_K`, walked per 16-element sub-block `s` like
/// [`dequantize_row_q2_k`]; the high bit of element `e` is bit `e / 32` of
/// `hmask[e % 32]`.
pub fn dequantize_row_q3_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q3_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d_all = le_f16(b, 108);
        let sc = &b[96..108];
        for (s, ys) in y.chunks_exact_mut(16).enumerate() {
            let dl = d_all * q3_k_scale(sc, s) as f32;
            let shift = 2 * ((s % 8) / 2) as u32;
            let m = 1u8 << (s / 2);
            let q = &b[32 + 32 * (s / 8) + 16 * (s % 2)..][..16];
            let hm = &b[16 * (s % 2)..][..16];
            for ((o, &qb), &h) in ys.iter_mut().zip(q).zip(hm) {
                let v = ((qb >> shift) & 3) as i32 - if h & m != 0 { 0 } else { 4 };
                *o = dl * v as f32;
            }
        }
    }
}

// ─────────────────────────── Q4_K / Q5_K ───────────────────────────
// Layout: d, dmin, scales[12] (6-bit scales and mins), [qh[32],] qs[128].

/// The part `quantize_row_q4_K_ref` and `quantize_row_q5_K_ref` share: per
/// 32-element sub-block `make_qkx2_quants` with weights `av_x + |x|`, the
/// 6-bit scale/min packing and the requantization with the fp16-rounded
/// scales. `S` is the search's `nstep + 1`. Fills `head` (d, dmin, scales:
/// 16 bytes) and `l` (0..=nmax).
#[inline(always)]
fn quantize_block_qkx_k<const S: usize, L: Lanes>(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    head: &mut [u8],
    l: &mut [u8; QK_K],
) {
    let mut weights = [0f32; QK_K];
    let mut mins = [0f32; QK_K / 32];
    let mut scales = [0f32; QK_K / 32];
    for j in 0..QK_K / 32 {
        let xs = sub::<32>(x, j);
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in sub_mut::<32, _>(&mut weights, j).iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
    }
    if !L::search_qkx2::<32, S>(x, &weights, nmax, rmin, false, l, &mut scales, &mut mins) {
        for j in 0..QK_K / 32 {
            let (s, m) = make_qkx2_quants_batched::<32, S>(
                nmax,
                sub::<32>(x, j),
                sub::<32>(&weights, j),
                sub_mut::<32, _>(l, j),
                rmin,
                0.1,
                false,
            );
            scales[j] = s;
            mins[j] = m;
        }
    }
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..QK_K / 32 {
        if scales[j] > max_scale {
            max_scale = scales[j];
        }
        if mins[j] > max_min {
            max_min = mins[j];
        }
    }

    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls = [0u8; QK_K / 32];
    let mut lm = [0u8; QK_K / 32];
    for j in 0..QK_K / 32 {
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    finish_k4_block::<L>(x, &ls, &lm, max_scale / 63.0, max_min / 63.0, nmax, head, l);
}

/// The end of a Q4_K / Q5_K block (plain and importance-weighted) once its
/// 6-bit scales `ls`, mins `lm` and the super-block scales `d`, `dmin` are
/// chosen: the scales packed, every sub-block's codes re-rounded with its
/// final scale and min, and the 16-byte head written.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn finish_k4_block<L: Lanes>(
    x: &[f32],
    ls: &[u8; QK_K / 32],
    lm: &[u8; QK_K / 32],
    d: f32,
    dmin: f32,
    nmax: i32,
    head: &mut [u8],
    l: &mut [u8; QK_K],
) {
    let sc = pack_k4_scales(ls, lm);
    let d_bits = f32_to_f16(d);
    let dmin_bits = f32_to_f16(dmin);
    let dall = f16_to_f32(d_bits);
    let dmin = f16_to_f32(dmin_bits);
    for j in 0..QK_K / 32 {
        let (s, m) = get_scale_min_k4(j, &sc);
        let d = dall * s as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin * m as f32;
        L::requant_affine::<32>(sub::<32>(x, j), dm, d, nmax, sub_mut::<32, _>(l, j));
    }
    head[0..2].copy_from_slice(&d_bits.to_le_bytes());
    head[2..4].copy_from_slice(&dmin_bits.to_le_bytes());
    head[4..16].copy_from_slice(&sc);
}

/// `quantize_row_q4_K_ref`.
pub fn quantize_row_q4_k(src: &[f32], dst: &mut [u8]) {
    q4_k_rows::<Portable>(src, dst)
}

#[inline(always)]
pub(crate) fn q4_k_rows<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q4_K_BYTES)) {
        let (head, qs) = y.split_at_mut(16);
        // make_qkx2_quants(32, 15, …, -1.f, 0.1f, 20, false): 21 candidates.
        quantize_block_qkx_k::<21, L>(x, 15, -1.0, head, &mut l);
        pack_q4_k_codes(&l, qs);
    }
}

/// `dequantize_row_q4_K`.
pub fn dequantize_row_q4_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q4_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let min = le_f16(b, 2);
        let sc = &b[4..16];
        for (n, (q, y)) in b[16..]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (s1, m1) = get_scale_min_k4(2 * n, sc);
            let d1 = d * s1 as f32;
            let m1 = min * m1 as f32;
            let (s2, m2) = get_scale_min_k4(2 * n + 1, sc);
            let d2 = d * s2 as f32;
            let m2 = min * m2 as f32;
            for k in 0..32 {
                y[k] = d1 * (q[k] & 0xF) as f32 - m1;
            }
            for k in 0..32 {
                y[32 + k] = d2 * (q[k] >> 4) as f32 - m2;
            }
        }
    }
}

/// `quantize_row_q5_K_ref`.
pub fn quantize_row_q5_k(src: &[f32], dst: &mut [u8]) {
    q5_k_rows::<Portable>(src, dst)
}

#[inline(always)]
pub(crate) fn q5_k_rows<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q5_K_BYTES)) {
        let (head, rest) = y.split_at_mut(16);
        // make_qkx2_quants(32, 31, …, -0.5f, 0.1f, 15, false): 16 candidates.
        quantize_block_qkx_k::<16, L>(x, 31, -0.5, head, &mut l);
        pack_q5_k_codes(&l, rest);
    }
}

/// `dequantize_row_q5_K`.
pub fn dequantize_row_q5_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q5_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 0);
        let min = le_f16(b, 2);
        let sc = &b[4..16];
        let qh = &b[16..48];
        let mut u1 = 1u8;
        let mut u2 = 2u8;
        for (n, (ql, y)) in b[48..]
            .chunks_exact(32)
            .zip(y.chunks_exact_mut(64))
            .enumerate()
        {
            let (s1, m1) = get_scale_min_k4(2 * n, sc);
            let d1 = d * s1 as f32;
            let m1 = min * m1 as f32;
            let (s2, m2) = get_scale_min_k4(2 * n + 1, sc);
            let d2 = d * s2 as f32;
            let m2 = min * m2 as f32;
            for k in 0..32 {
                let v = (ql[k] & 0xF) as i32 + if qh[k] & u1 != 0 { 16 } else { 0 };
                y[k] = d1 * v as f32 - m1;
            }
            for k in 0..32 {
                let v = (ql[k] >> 4) as i32 + if qh[k] & u2 != 0 { 16 } else { 0 };
                y[32 + k] = d2 * v as f32 - m2;
            }
            u1 = u1.wrapping_shl(2);
            u2 = u2.wrapping_shl(2);
        }
    }
}

/// The 2-bit planes of Q2_K / Q3_K: `qs[j/4 + l]` packs `L[j+l]`, `L[j+l+32]`,
/// `L[j+l+64]`, `L[j+l+96]` for `j = 0, 128`.
#[inline(always)]
pub(super) fn pack_2bit(l: &[u8; QK_K], qs: &mut [u8]) {
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] =
                l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
}

/// Q3_K's codes (L in 0..=7): the high bits into `hmask` (`y[..32]`), the
/// low two into the 2-bit planes (`y[32..96]`). ggml: `if (L[j] > 3) {
/// hmask[m] |= hm; L[j] -= 4; }` walking m over 0..32 and hm over the bits;
/// the condition is bit 2 and the subtraction clears it: branch-free, same
/// bytes.
#[inline(always)]
pub(super) fn pack_q3_k_codes(l: &mut [u8; QK_K], y: &mut [u8]) {
    let (hmask, rest) = y.split_at_mut(32);
    hmask.fill(0);
    for (bit, lg) in l.chunks_exact_mut(QK_K / 8).enumerate() {
        for (h, lj) in hmask.iter_mut().zip(lg) {
            *h |= (*lj >> 2) << bit;
            *lj &= 3;
        }
    }
    pack_2bit(l, &mut rest[..64]);
}

/// Q4_K/Q5_K's twelve bytes of 6-bit scales `ls` and mins `lm` (each ≤ 63).
#[inline(always)]
pub(super) fn pack_k4_scales(ls: &[u8; QK_K / 32], lm: &[u8; QK_K / 32]) -> [u8; 12] {
    let mut sc = [0u8; 12];
    for j in 0..QK_K / 32 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            sc[j] = ls;
            sc[j + 4] = lm;
        } else {
            sc[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            sc[j - 4] |= (ls >> 4) << 6;
            sc[j] |= (lm >> 4) << 6;
        }
    }
    sc
}

/// Q4_K's 4-bit codes: byte k of each 32-byte group holds L[64n+k] and
/// L[64n+k+32].
#[inline(always)]
pub(super) fn pack_q4_k_codes(l: &[u8; QK_K], qs: &mut [u8]) {
    for (n, q) in qs.chunks_exact_mut(32).enumerate() {
        let j = 64 * n;
        for k in 0..32 {
            q[k] = l[j + k] | (l[j + k + 32] << 4);
        }
    }
}

/// Q5_K's codes (L in 0..=31): the fifth bits into `qh` (`rest[..32]`), the
/// low four as Q4_K's (`rest[32..]`).
#[inline(always)]
pub(super) fn pack_q5_k_codes(l: &[u8; QK_K], rest: &mut [u8]) {
    let (qh, ql) = rest.split_at_mut(32);
    qh.fill(0);
    let mut m1 = 1u8;
    let mut m2 = 2u8;
    for (n, ql) in ql.chunks_exact_mut(32).enumerate() {
        let base = 64 * n;
        for j in 0..32 {
            let mut l1 = l[base + j];
            if l1 > 15 {
                l1 -= 16;
                qh[j] |= m1;
            }
            let mut l2 = l[base + j + 32];
            if l2 > 15 {
                l2 -= 16;
                qh[j] |= m2;
            }
            ql[j] = l1 | (l2 << 4);
        }
        m1 = m1.wrapping_shl(2);
        m2 = m2.wrapping_shl(2);
    }
}

// ───────────────────────────── Q6_K ─────────────────────────────
// Layout: ql[128], qh[64], scales[16] (i8), d.

/// `quantize_row_q6_K_ref`.
pub fn quantize_row_q6_k(src: &[f32], dst: &mut [u8]) {
    q6_k_rows::<Portable>(src, dst)
}

#[inline(always)]
pub(crate) fn q6_k_rows<L: Lanes>(src: &[f32], dst: &mut [u8]) {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q6_K_BYTES)) {
        if !L::search_qx_rmse1(x, &mut l, &mut scales) {
            let mut li = [0i8; 16];
            for ib in 0..QK_K / 16 {
                scales[ib] = make_qx_quants_rmse1(32, sub::<16>(x, ib), &mut li);
                for (o, &v) in sub_mut::<16, _>(&mut l, ib).iter_mut().zip(&li) {
                    *o = v as u8;
                }
            }
        }
        finish_q6_k_block::<L>(x, &scales, &mut l, y);
    }
}

/// The second half of `quantize_row_q6_K_ref` (and of its `_impl`): the
/// sub-block scales quantized to i8 against the largest, every sub-block's
/// codes re-rounded with its final scale, and the block packed.
#[inline(always)]
pub(super) fn finish_q6_k_block<L: Lanes>(
    x: &[f32],
    scales: &[f32; QK_K / 16],
    l: &mut [u8; QK_K],
    y: &mut [u8],
) {
    let mut max_scale = 0f32;
    let mut max_abs_scale = 0f32;
    for ib in 0..QK_K / 16 {
        let scale = scales[ib];
        let abs_scale = scale.abs();
        if abs_scale > max_abs_scale {
            max_abs_scale = abs_scale;
            max_scale = scale;
        }
    }

    if max_abs_scale < GROUP_MAX_EPS {
        y.fill(0);
        y[208..210].copy_from_slice(&f16_bytes(0.0));
        return;
    }

    let iscale = -128.0f32 / max_scale;
    let d_bits = f32_to_f16(1.0 / iscale);
    let mut sc = [0i8; QK_K / 16];
    for ib in 0..QK_K / 16 {
        sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
    }

    let dall = f16_to_f32(d_bits);
    for j in 0..QK_K / 16 {
        let d = dall * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        L::requant_sym::<16>(sub::<16>(x, j), d, -32, 31, 32, sub_mut::<16, _>(l, j));
    }

    let (ql, rest) = y.split_at_mut(128);
    let (qh, tail) = rest.split_at_mut(64);
    for n in 0..2 {
        let j = 128 * n;
        let ql = &mut ql[64 * n..64 * n + 64];
        let qh = &mut qh[32 * n..32 * n + 32];
        for k in 0..32 {
            let u = |i: usize| l[i];
            ql[k] = (u(j + k) & 0xF) | ((u(j + k + 64) & 0xF) << 4);
            ql[k + 32] = (u(j + k + 32) & 0xF) | ((u(j + k + 96) & 0xF) << 4);
            qh[k] = (u(j + k) >> 4)
                | ((u(j + k + 32) >> 4) << 2)
                | ((u(j + k + 64) >> 4) << 4)
                | ((u(j + k + 96) >> 4) << 6);
        }
    }
    for (t, s) in tail[..16].iter_mut().zip(sc) {
        *t = s as u8;
    }
    tail[16..18].copy_from_slice(&d_bits.to_le_bytes());
}

/// `dequantize_row_q6_K`.
pub fn dequantize_row_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q6_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = le_f16(b, 208);
        for n in 0..2 {
            let ql = &b[64 * n..64 * n + 64];
            let qh = &b[128 + 32 * n..128 + 32 * n + 32];
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut y[128 * n..128 * n + 128];
            for k in 0..32 {
                let is = k / 16;
                let q1 = ((ql[k] & 0xF) | ((qh[k] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[k + 32] & 0xF) | (((qh[k] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[k] >> 4) | (((qh[k] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[k + 32] >> 4) | (((qh[k] >> 6) & 3) << 4)) as i32 - 32;
                y[k] = d * sc[is] as i8 as f32 * q1 as f32;
                y[k + 32] = d * sc[is + 2] as i8 as f32 * q2 as f32;
                y[k + 64] = d * sc[is + 4] as i8 as f32 * q3 as f32;
                y[k + 96] = d * sc[is + 6] as i8 as f32 * q4 as f32;
            }
        }
    }
}

// ───────────────────────────── Q8_K ─────────────────────────────
// Layout: d (f32), qs[256] (i8), bsums[16] (i16).

/// `quantize_row_q8_K_ref`. For an all-zero block ggml leaves `bsums`
/// unwritten; here they are zero, which is also their true value.
pub fn quantize_row_q8_k(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(QK_K).zip(dst.chunks_exact_mut(Q8_K_BYTES)) {
        let (max, amax) = first_absmax(x);
        if amax == 0.0 {
            y.fill(0);
            continue;
        }
        let iscale = -127.0f32 / max;
        let (head, rest) = y.split_at_mut(4);
        let (qs, bsums) = rest.split_at_mut(QK_K);
        for (q, &v) in qs.iter_mut().zip(x) {
            *q = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for (j, bs) in bsums.chunks_exact_mut(2).enumerate() {
            let sum: i32 = qs[16 * j..16 * j + 16]
                .iter()
                .map(|&q| q as i8 as i32)
                .sum();
            bs.copy_from_slice(&(sum as i16).to_le_bytes());
        }
        head.copy_from_slice(&(1.0f32 / iscale).to_le_bytes());
    }
}

/// `dequantize_row_q8_K`.
pub fn dequantize_row_q8_k(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(Q8_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        for (o, &q) in y.iter_mut().zip(&b[4..4 + QK_K]) {
            *o = d * q as i8 as f32;
        }
    }
}
