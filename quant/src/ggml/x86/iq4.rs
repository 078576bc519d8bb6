//! AVX2 versions of the IQ4_NL / IQ4_XS scale search, vectorised across
//! 32-element blocks: lane `k` is block `k` and runs exactly the scalar
//! sequence of f32 operations of `iq4_block_scale` (no reassociation, no
//! FMA), so the scales are bit-identical. `best_index_int8` becomes a
//! branch-free count of the table entries `≤ x` followed by the same
//! nearer-neighbour comparison.

// Index loops keep lane/element positions explicit, like the scalar ports.
#![allow(clippy::needless_range_loop)]
use std::arch::x86_64::*;

use crate::ggml::scalar::common::{le_f16, le_u16};
use crate::ggml::scalar::iquants::{self as scalar, Iq4Lanes};
use crate::ggml::scalar::search::GROUP_MAX_EPS;
use crate::ggml::scalar::tables::KVALUES_IQ4NL;

/// The two halves of the table as f32 vectors, for `permutevar8x32`.
#[inline(always)]
unsafe fn table() -> (__m256, __m256) {
    let mut t = [0f32; 16];
    for (o, &v) in t.iter_mut().zip(&KVALUES_IQ4NL) {
        *o = v as f32;
    }
    (
        _mm256_loadu_ps(t.as_ptr()),
        _mm256_loadu_ps(t.as_ptr().add(8)),
    )
}

#[inline(always)]
unsafe fn lookup(t: (__m256, __m256), idx: __m256i) -> __m256 {
    let lo = _mm256_permutevar8x32_ps(t.0, idx);
    let hi = _mm256_permutevar8x32_ps(t.1, idx);
    let upper = _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, _mm256_set1_epi32(7)));
    _mm256_blendv_ps(lo, hi, upper)
}

/// `best_index_int8(KVALUES_IQ4NL, x)` per lane: the index and its value.
/// For `v0 < x < v15` the binary search ends with `ml` = the number of
/// entries after the first for which `x < v` is false, `mu = ml + 1`; at
/// either end the same comparison picks the end entry, so no special case
/// is needed. Counting `!(x < v)` rather than `v ≤ x` keeps ggml's result
/// for NaN (15: the search always moves up), which overflowing inputs reach.
#[inline(always)]
unsafe fn best_index(t: (__m256, __m256), tv: &[__m256; 16], x: __m256) -> (__m256i, __m256) {
    let mut ml = _mm256_setzero_si256();
    for v in &tv[1..] {
        // The mask is -1 where !(x < v): subtracting it counts.
        ml = _mm256_sub_epi32(ml, _mm256_castps_si256(_mm256_cmp_ps::<_CMP_NLT_UQ>(x, *v)));
    }
    let mu = _mm256_min_epi32(
        _mm256_add_epi32(ml, _mm256_set1_epi32(1)),
        _mm256_set1_epi32(15),
    );
    let vl = lookup(t, ml);
    let vu = lookup(t, mu);
    let low = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_sub_ps(x, vl), _mm256_sub_ps(vu, x));
    let idx = _mm256_blendv_epi8(mu, ml, _mm256_castps_si256(low));
    (idx, _mm256_blendv_ps(vu, vl, low))
}

/// The 16 table entries, each broadcast.
#[inline(always)]
unsafe fn table_splat() -> [__m256; 16] {
    let mut tv = [_mm256_setzero_ps(); 16];
    for (o, &v) in tv.iter_mut().zip(&KVALUES_IQ4NL) {
        *o = _mm256_set1_ps(v as f32);
    }
    tv
}

/// `iq4_block_scale(xb, ntry, _)` for eight consecutive 32-element blocks
/// of `x`, into `scales`.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn block_scale_x8(x: &[f32], ntry: i32, scales: &mut [f32]) {
    const N: usize = 32;
    let t = table();
    let tv = table_splat();
    let mut tr = [[0f32; 8]; N];
    for k in 0..8 {
        for i in 0..N {
            tr[i][k] = x[k * N + i];
        }
    }
    let zero = _mm256_setzero_ps();
    let mut xv = [zero; N];
    let mut wv = [zero; N];
    let mut amax = zero;
    let mut max = zero;
    for i in 0..N {
        xv[i] = _mm256_loadu_ps(tr[i].as_ptr());
        wv[i] = _mm256_mul_ps(xv[i], xv[i]);
    }
    for i in 0..N {
        let ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0), xv[i]);
        let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
        amax = _mm256_blendv_ps(amax, ax, gt);
        max = _mm256_blendv_ps(max, xv[i], gt);
    }
    let live = _mm256_cmp_ps::<_CMP_NLT_UQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));
    let v0 = _mm256_set1_ps(KVALUES_IQ4NL[0] as f32);
    let mut d = if ntry > 0 {
        _mm256_div_ps(_mm256_xor_ps(max, _mm256_set1_ps(-0.0)), v0)
    } else {
        _mm256_div_ps(max, v0)
    };
    let mut id = _mm256_div_ps(_mm256_set1_ps(1.0), d);
    let mut sumqx = zero;
    let mut sumq2 = zero;
    for i in 0..N {
        let (_, q) = best_index(t, &tv, _mm256_mul_ps(id, xv[i]));
        let wq = _mm256_mul_ps(wv[i], q);
        sumqx = _mm256_add_ps(sumqx, _mm256_mul_ps(wq, xv[i]));
        sumq2 = _mm256_add_ps(sumq2, _mm256_mul_ps(wq, q));
    }
    let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2, zero);
    d = _mm256_blendv_ps(zero, _mm256_div_ps(sumqx, sumq2), pos);
    let mut best = _mm256_mul_ps(d, sumqx);
    for itry in -ntry..=ntry {
        id = _mm256_div_ps(_mm256_set1_ps((itry + KVALUES_IQ4NL[0] as i32) as f32), max);
        sumqx = zero;
        sumq2 = zero;
        for i in 0..N {
            let (_, q) = best_index(t, &tv, _mm256_mul_ps(id, xv[i]));
            let wq = _mm256_mul_ps(wv[i], q);
            sumqx = _mm256_add_ps(sumqx, _mm256_mul_ps(wq, xv[i]));
            sumq2 = _mm256_add_ps(sumq2, _mm256_mul_ps(wq, q));
        }
        let take = _mm256_and_ps(
            _mm256_cmp_ps::<_CMP_GT_OQ>(sumq2, zero),
            _mm256_cmp_ps::<_CMP_GT_OQ>(_mm256_mul_ps(sumqx, sumqx), _mm256_mul_ps(best, sumq2)),
        );
        let nd = _mm256_div_ps(sumqx, sumq2);
        d = _mm256_blendv_ps(d, nd, take);
        best = _mm256_blendv_ps(best, _mm256_mul_ps(nd, sumqx), take);
    }
    _mm256_storeu_ps(scales.as_mut_ptr(), _mm256_and_ps(d, live));
}

/// `l[j] = best_index_int8(KVALUES_IQ4NL, id * x[j])` over `x` (a multiple
/// of 8 long), element-wise.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn indices(x: &[f32], id: f32, l: &mut [u8]) {
    let t = table();
    let tv = table_splat();
    let idv = _mm256_set1_ps(id);
    let mut o = [0i32; 8];
    for (xs, ls) in x.chunks_exact(8).zip(l.chunks_exact_mut(8)) {
        let (idx, _) = best_index(t, &tv, _mm256_mul_ps(idv, _mm256_loadu_ps(xs.as_ptr())));
        _mm256_storeu_si256(o.as_mut_ptr() as *mut __m256i, idx);
        for k in 0..8 {
            ls[k] = o[k] as u8;
        }
    }
}

/// `y[j] = d * kvalues[q[j] & 0xf]`, `y[j + 16] = d * kvalues[q[j] >> 4]`
/// for one 16-byte group (32 outputs): the products ggml computes.
#[inline(always)]
unsafe fn decode_group(t: (__m256, __m256), q: *const u8, d: f32, y: *mut f32) {
    let dv = _mm256_set1_ps(d);
    let m4 = _mm256_set1_epi32(0xF);
    for h in 0..2 {
        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(8 * h) as *const __m128i));
        let lo = lookup(t, _mm256_and_si256(v, m4));
        let hi = lookup(t, _mm256_srli_epi32::<4>(v));
        _mm256_storeu_ps(y.add(8 * h), _mm256_mul_ps(dv, lo));
        _mm256_storeu_ps(y.add(16 + 8 * h), _mm256_mul_ps(dv, hi));
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_iq4_nl(src: &[u8], dst: &mut [f32]) {
    let t = table();
    for (b, y) in src.chunks_exact(18).zip(dst.chunks_exact_mut(32)) {
        decode_group(t, b.as_ptr().add(2), le_f16(b, 0), y.as_mut_ptr());
    }
}

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_iq4_xs(src: &[u8], dst: &mut [f32]) {
    let t = table();
    for (b, y) in src.chunks_exact(136).zip(dst.chunks_exact_mut(256)) {
        let d = le_f16(b, 0);
        let scales_h = le_u16(b, 2) as i32;
        for ib in 0..8 {
            let ls = ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xf)
                | (((scales_h >> (2 * ib)) & 3) << 4);
            let dl = d * (ls - 32) as f32;
            decode_group(
                t,
                b.as_ptr().add(8 + 16 * ib),
                dl,
                y.as_mut_ptr().add(32 * ib),
            );
        }
    }
}

avx2_entry!(
    "`dequantize_row_iq4_nl`, AVX2/F16C variant.",
    dequantize_iq4_nl,
    deq_iq4_nl,
    scalar::dequantize_iq4_nl,
    fn(src: &[u8], dst: &mut [f32])
);

avx2_entry!(
    "`dequantize_row_iq4_xs`, AVX2/F16C variant.",
    dequantize_iq4_xs,
    deq_iq4_xs,
    scalar::dequantize_iq4_xs,
    fn(src: &[u8], dst: &mut [f32])
);

/// The IQ4 walks' steps on AVX2 lanes.
///
/// Only instantiated inside the `#[target_feature(enable = "avx2")]` row
/// functions below, which run after the CPU check of their entry points.
pub(crate) struct Avx2;

impl Iq4Lanes for Avx2 {
    #[inline(always)]
    fn block_scales_x8(x: &[f32], scales: &mut [f32]) {
        // SAFETY: `Avx2` is only used inside functions compiled for AVX2
        // and called after detecting it.
        unsafe { block_scale_x8(x, 7, scales) };
    }

    #[inline(always)]
    fn block_indices(x: &[f32], id: f32, l: &mut [u8]) {
        // SAFETY: as in `block_scales_x8`.
        unsafe { indices(x, id, l) };
    }
}

#[target_feature(enable = "avx2")]
unsafe fn iq4_nl_rows(src: &[f32], dst: &mut [u8]) {
    scalar::iq4_nl_rows::<Avx2>(src, dst)
}

#[target_feature(enable = "avx2")]
unsafe fn iq4_xs_rows(src: &[f32], dst: &mut [u8]) {
    scalar::iq4_xs_rows::<Avx2>(src, dst)
}

avx2_entry!(
    "`quantize_iq4_nl` (no importance matrix), AVX2 variant.",
    quantize_iq4_nl,
    iq4_nl_rows,
    scalar::quantize_iq4_nl,
    fn(src: &[f32], dst: &mut [u8])
);

avx2_entry!(
    "`quantize_iq4_xs` (no importance matrix), AVX2 variant.",
    quantize_iq4_xs,
    iq4_xs_rows,
    scalar::quantize_iq4_xs,
    fn(src: &[f32], dst: &mut [u8])
);
