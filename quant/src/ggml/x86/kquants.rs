//! AVX2 versions of the K-quant scale searches, vectorised across
//! sub-blocks: lane `k` of every vector belongs to sub-block `k` and runs
//! exactly the scalar port's sequence of f32 operations (same order, no FMA;
//! `min`/`max`/blends reproduce the scalar comparisons, including signed
//! zeros), so every lane's result is bit-identical to the scalar search.
//! Data-dependent branches become per-lane masks.
//!
//! [`Avx2`] hands these kernels to the scalar block walks of
//! `scalar::kquants`; the encoders below are those walks compiled for AVX2.

// Index loops keep lane/element positions explicit, like the scalar ports.
#![allow(clippy::needless_range_loop)]
use std::arch::x86_64::*;

use crate::ggml::scalar::kquants::{self as scalar, Lanes, QK_K};
use crate::ggml::scalar::search::GROUP_MAX_EPS;

/// `nearest_int` on 8 lanes: the same 1.5·2^23 trick.
#[inline(always)]
unsafe fn nint(v: __m256) -> __m256i {
    let t = _mm256_add_ps(v, _mm256_set1_ps(12582912.0));
    _mm256_sub_epi32(
        _mm256_and_si256(_mm256_castps_si256(t), _mm256_set1_epi32(0x007f_ffff)),
        _mm256_set1_epi32(0x0040_0000),
    )
}

#[inline(always)]
unsafe fn clamp_i(v: __m256i, lo: i32, hi: i32) -> __m256i {
    _mm256_min_epi32(
        _mm256_max_epi32(v, _mm256_set1_epi32(lo)),
        _mm256_set1_epi32(hi),
    )
}

#[inline(always)]
unsafe fn abs(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

/// `select(m, a, b)`: `a` where the mask is set, else `b`.
#[inline(always)]
unsafe fn sel(m: __m256, a: __m256, b: __m256) -> __m256 {
    _mm256_blendv_ps(b, a, m)
}

/// Eight `N`-element sub-blocks (sub-block `k` at `x[k·N..]`) as `N`
/// vectors whose lane `k` is sub-block `k`.
#[inline(always)]
unsafe fn transpose<const N: usize>(x: &[f32]) -> [__m256; N] {
    let mut t = [[0f32; 8]; N];
    for k in 0..8 {
        let xs = &x[k * N..k * N + N];
        for i in 0..N {
            t[i][k] = xs[i];
        }
    }
    let mut v = [_mm256_setzero_ps(); N];
    for i in 0..N {
        v[i] = _mm256_loadu_ps(t[i].as_ptr());
    }
    v
}

/// Lane values back to sub-block order: `out[k·N + i] = v[i][k]`.
#[inline(always)]
unsafe fn untranspose_i32<const N: usize>(v: &[__m256i; N], add: i32, out: &mut [u8]) {
    let mut t = [[0i32; 8]; N];
    for i in 0..N {
        _mm256_storeu_si256(t[i].as_mut_ptr() as *mut __m256i, v[i]);
    }
    for k in 0..8 {
        let o = &mut out[k * N..k * N + N];
        for i in 0..N {
            o[i] = (t[i][k] + add) as u8;
        }
    }
}

/// `make_qkx2_quants` on eight `N`-element sub-blocks at once (see
/// `search::make_qkx2_quants`, the scalar reference): `x` and `w` hold the
/// sub-blocks one after the other, `out` receives their `L`, `scales` and
/// `mins` their `(scale, -min)` results.
// Long because each lane runs ggml-quants.c `make_qkx2_quants` (and its
// scalar port) step for step (bit-exactness); kept in one piece so it can
// be compared with the reference line by line.
#[target_feature(enable = "avx2")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn qkx2_x8<const N: usize>(
    nmax: i32,
    x: &[f32],
    w: &[f32],
    out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
    scales: &mut [f32],
    mins: &mut [f32],
) {
    let xv = transpose::<N>(x);
    let wv = transpose::<N>(w);
    let zero = _mm256_setzero_ps();
    let mut min = xv[0];
    let mut max = xv[0];
    let mut sum_w = wv[0];
    let mut sum_x = _mm256_mul_ps(wv[0], xv[0]);
    for i in 1..N {
        // `if x < min { min = x }` is minps(x, min); likewise for max.
        min = _mm256_min_ps(xv[i], min);
        max = _mm256_max_ps(xv[i], max);
        sum_w = _mm256_add_ps(sum_w, wv[i]);
        sum_x = _mm256_add_ps(sum_x, _mm256_mul_ps(wv[i], xv[i]));
    }
    min = sel(_mm256_cmp_ps::<_CMP_GT_OQ>(min, zero), zero, min);
    // Lanes with max == min return early in the scalar code: keep them out
    // of every update and patch their result at the end.
    let live = _mm256_cmp_ps::<_CMP_NEQ_UQ>(max, min);
    let flat_min = min;

    let fnmax = _mm256_set1_ps(nmax as f32);
    let iscale = _mm256_div_ps(fnmax, _mm256_sub_ps(max, min));
    let mut scale = _mm256_div_ps(_mm256_set1_ps(1.0), iscale);
    let mut best_error = zero;
    let mut l = [_mm256_setzero_si256(); N];
    for i in 0..N {
        l[i] = clamp_i(
            nint(_mm256_mul_ps(iscale, _mm256_sub_ps(xv[i], min))),
            0,
            nmax,
        );
        let lf = _mm256_cvtepi32_ps(l[i]);
        let mut diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(scale, lf), min), xv[i]);
        diff = if use_mad {
            abs(diff)
        } else {
            _mm256_mul_ps(diff, diff)
        };
        best_error = _mm256_add_ps(best_error, _mm256_mul_ps(wv[i], diff));
    }
    if nstep >= 1 {
        let mut laux = [_mm256_setzero_ps(); N];
        for is in 0..=nstep {
            let num = _mm256_set1_ps(rmin + rdelta * is as f32 + nmax as f32);
            let isc = _mm256_div_ps(num, _mm256_sub_ps(max, min));
            let mut sum_l = zero;
            let mut sum_l2 = zero;
            let mut sum_xl = zero;
            for i in 0..N {
                let li = clamp_i(nint(_mm256_mul_ps(isc, _mm256_sub_ps(xv[i], min))), 0, nmax);
                let lf = _mm256_cvtepi32_ps(li);
                laux[i] = lf;
                let wl = _mm256_mul_ps(wv[i], lf);
                sum_l = _mm256_add_ps(sum_l, wl);
                sum_l2 = _mm256_add_ps(sum_l2, _mm256_mul_ps(wl, lf));
                sum_xl = _mm256_add_ps(sum_xl, _mm256_mul_ps(wl, xv[i]));
            }
            let d = _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_l2), _mm256_mul_ps(sum_l, sum_l));
            let fit = _mm256_cmp_ps::<_CMP_GT_OQ>(d, zero);
            let mut ts = _mm256_div_ps(
                _mm256_sub_ps(_mm256_mul_ps(sum_w, sum_xl), _mm256_mul_ps(sum_x, sum_l)),
                d,
            );
            let mut tm = _mm256_div_ps(
                _mm256_sub_ps(_mm256_mul_ps(sum_l2, sum_x), _mm256_mul_ps(sum_l, sum_xl)),
                d,
            );
            let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(tm, zero);
            tm = sel(pos, zero, tm);
            ts = sel(pos, _mm256_div_ps(sum_xl, sum_l2), ts);
            let mut cur = zero;
            for i in 0..N {
                let mut diff = _mm256_sub_ps(_mm256_add_ps(_mm256_mul_ps(ts, laux[i]), tm), xv[i]);
                diff = if use_mad {
                    abs(diff)
                } else {
                    _mm256_mul_ps(diff, diff)
                };
                cur = _mm256_add_ps(cur, _mm256_mul_ps(wv[i], diff));
            }
            let take = _mm256_and_ps(
                _mm256_and_ps(fit, live),
                _mm256_cmp_ps::<_CMP_LT_OQ>(cur, best_error),
            );
            if _mm256_movemask_ps(take) != 0 {
                let ti = _mm256_castps_si256(take);
                for i in 0..N {
                    l[i] = _mm256_blendv_epi8(l[i], _mm256_cvtps_epi32(laux[i]), ti);
                }
                best_error = sel(take, cur, best_error);
                scale = sel(take, ts, scale);
                min = sel(take, tm, min);
            }
        }
    }
    // Flat lanes: L = 0, scale 0, min as clamped.
    let dead = _mm256_castps_si256(live);
    for li in l.iter_mut() {
        *li = _mm256_and_si256(*li, dead);
    }
    scale = sel(live, scale, zero);
    min = sel(live, min, flat_min);
    let neg_min = _mm256_xor_ps(min, _mm256_set1_ps(-0.0));
    untranspose_i32::<N>(&l, 0, out);
    _mm256_storeu_ps(scales.as_mut_ptr(), scale);
    _mm256_storeu_ps(mins.as_mut_ptr(), neg_min);
}

/// `make_qx_quants` with `rmse_type == 1` and no weights on `8·G`
/// `N`-element sub-blocks at once (scalar reference:
/// `search::make_qx_quants`); `out` gets `L + nmax`, `scales` the scales.
/// Each candidate's sums are serial chains per lane, so `G` groups of eight
/// lanes are interleaved to hide the add latency.
// Long because each lane runs ggml-quants.c `make_qx_quants` (and its
// scalar port) step for step (bit-exactness); kept in one piece so it can
// be compared with the reference line by line.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn qx_rmse1_x8<const N: usize, const G: usize>(
    nmax: i32,
    x: &[f32],
    out: &mut [u8],
    scales: &mut [f32],
) {
    let zero = _mm256_setzero_ps();
    let mut xv = [[zero; N]; G];
    let mut wv = [[zero; N]; G];
    let mut wx = [[zero; N]; G];
    let mut max = [zero; G];
    let mut live = [zero; G];
    for g in 0..G {
        xv[g] = transpose::<N>(&x[8 * N * g..8 * N * (g + 1)]);
        let mut amax = zero;
        for i in 0..N {
            let ax = abs(xv[g][i]);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
            amax = sel(gt, ax, amax);
            max[g] = sel(gt, xv[g][i], max[g]);
            wv[g][i] = _mm256_mul_ps(xv[g][i], xv[g][i]);
            wx[g][i] = _mm256_mul_ps(wv[g][i], xv[g][i]);
        }
        live[g] = _mm256_cmp_ps::<_CMP_NLT_UQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));
    }
    let mut l = [[_mm256_setzero_si256(); N]; G];
    let mut scale = [zero; G];
    let mut best = [zero; G];
    for g in 0..G {
        let iscale = _mm256_div_ps(_mm256_set1_ps((-nmax) as f32), max[g]);
        let mut sumlx = zero;
        let mut suml2 = zero;
        for i in 0..N {
            l[g][i] = clamp_i(nint(_mm256_mul_ps(iscale, xv[g][i])), -nmax, nmax - 1);
            let lf = _mm256_cvtepi32_ps(l[g][i]);
            sumlx = _mm256_add_ps(sumlx, _mm256_mul_ps(wx[g][i], lf));
            suml2 = _mm256_add_ps(suml2, _mm256_mul_ps(_mm256_mul_ps(wv[g][i], lf), lf));
        }
        scale[g] = sel(
            _mm256_cmp_ps::<_CMP_NEQ_UQ>(suml2, zero),
            _mm256_div_ps(sumlx, suml2),
            zero,
        );
        best[g] = _mm256_mul_ps(scale[g], sumlx);
    }
    let mut lc = [[_mm256_setzero_si256(); N]; G];
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        let num = _mm256_set1_ps(-(nmax as f32 + 0.1f32 * is as f32));
        let mut isc = [zero; G];
        for g in 0..G {
            isc[g] = _mm256_div_ps(num, max[g]);
        }
        let mut slx = [zero; G];
        let mut sl2 = [zero; G];
        for i in 0..N {
            for g in 0..G {
                lc[g][i] = clamp_i(nint(_mm256_mul_ps(isc[g], xv[g][i])), -nmax, nmax - 1);
                let lf = _mm256_cvtepi32_ps(lc[g][i]);
                slx[g] = _mm256_add_ps(slx[g], _mm256_mul_ps(wx[g][i], lf));
                sl2[g] = _mm256_add_ps(sl2[g], _mm256_mul_ps(_mm256_mul_ps(wv[g][i], lf), lf));
            }
        }
        for g in 0..G {
            let take = _mm256_and_ps(
                _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(sl2[g], zero), live[g]),
                _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(slx[g], slx[g]),
                    _mm256_mul_ps(best[g], sl2[g]),
                ),
            );
            if _mm256_movemask_ps(take) != 0 {
                let ti = _mm256_castps_si256(take);
                for i in 0..N {
                    l[g][i] = _mm256_blendv_epi8(l[g][i], lc[g][i], ti);
                }
                let s = _mm256_div_ps(slx[g], sl2[g]);
                scale[g] = sel(take, s, scale[g]);
                best[g] = sel(take, _mm256_mul_ps(s, slx[g]), best[g]);
            }
        }
    }
    for g in 0..G {
        // Lanes below GROUP_MAX_EPS: all L zero (stored as 0, not nmax).
        let keep = _mm256_castps_si256(live[g]);
        let off = _mm256_and_si256(_mm256_set1_epi32(nmax), keep);
        for li in l[g].iter_mut() {
            *li = _mm256_and_si256(_mm256_add_epi32(*li, off), keep);
        }
        untranspose_i32::<N>(&l[g], 0, &mut out[8 * N * g..8 * N * (g + 1)]);
        _mm256_storeu_ps(scales.as_mut_ptr().add(8 * g), sel(live[g], scale[g], zero));
    }
}

/// `q = clamp(nearest_int((x + dm) / d), 0, nmax)` over `x` (a multiple of
/// 8 long): the requantization with the rounded scales, element-wise so
/// vectorising along the block changes nothing.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn requant_affine(x: &[f32], dm: f32, d: f32, nmax: i32, out: &mut [u8]) {
    let dmv = _mm256_set1_ps(dm);
    let dv = _mm256_set1_ps(d);
    let mut t = [0i32; 8];
    for (xs, os) in x.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        let v = _mm256_loadu_ps(xs.as_ptr());
        let q = clamp_i(nint(_mm256_div_ps(_mm256_add_ps(v, dmv), dv)), 0, nmax);
        _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, q);
        for k in 0..8 {
            os[k] = t[k] as u8;
        }
    }
}

/// `q = clamp(nearest_int(x / d), lo, hi) + off` over `x` (a multiple of 8
/// long), element-wise.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn requant_sym(x: &[f32], d: f32, lo: i32, hi: i32, off: i32, out: &mut [u8]) {
    let dv = _mm256_set1_ps(d);
    let offv = _mm256_set1_epi32(off);
    let mut t = [0i32; 8];
    for (xs, os) in x.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
        let v = _mm256_loadu_ps(xs.as_ptr());
        let q = _mm256_add_epi32(clamp_i(nint(_mm256_div_ps(v, dv)), lo, hi), offv);
        _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, q);
        for k in 0..8 {
            os[k] = t[k] as u8;
        }
    }
}

/// `make_q3_quants(N, nmax, x, L, true)` on `8·G` `N`-element sub-blocks
/// at once (scalar reference: `search::make_q3_quants`): the first fit,
/// then up to five rounds of coordinate descent, each lane stopping after
/// its own first round without a change, as the scalar loop does. The
/// descent is a serial chain per sub-block (each step divides by the sums
/// the previous one left), so `G` independent groups of eight lanes are
/// interleaved to hide its latency. `out` gets `L + nmax`, `scales` the
/// scales.
// Long because each lane runs ggml-quants.c `make_q3_quants` (and its
// scalar port) step for step (bit-exactness); kept in one piece so it can
// be compared with the reference line by line.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn q3_x8<const N: usize, const G: usize>(
    nmax: i32,
    x: &[f32],
    out: &mut [u8],
    scales: &mut [f32],
) {
    let zero = _mm256_setzero_ps();
    let mut xv = [[zero; N]; G];
    for g in 0..G {
        xv[g] = transpose::<N>(&x[8 * N * g..8 * N * (g + 1)]);
    }
    let mut wv = [[zero; N]; G];
    let mut wx = [[zero; N]; G];
    let mut live = [zero; G];
    let mut max = [zero; G];
    for g in 0..G {
        let mut amax = zero;
        for i in 0..N {
            let ax = abs(xv[g][i]);
            let gt = _mm256_cmp_ps::<_CMP_GT_OQ>(ax, amax);
            amax = sel(gt, ax, amax);
            max[g] = sel(gt, xv[g][i], max[g]);
            wv[g][i] = _mm256_mul_ps(xv[g][i], xv[g][i]);
            wx[g][i] = _mm256_mul_ps(wv[g][i], xv[g][i]);
        }
        live[g] = _mm256_cmp_ps::<_CMP_NLT_UQ>(amax, _mm256_set1_ps(GROUP_MAX_EPS));
    }
    let mut l = [[zero; N]; G];
    let mut sumlx = [zero; G];
    let mut suml2 = [zero; G];
    for g in 0..G {
        let iscale = _mm256_div_ps(_mm256_set1_ps((-nmax) as f32), max[g]);
        for i in 0..N {
            let li = clamp_i(nint(_mm256_mul_ps(iscale, xv[g][i])), -nmax, nmax - 1);
            l[g][i] = _mm256_cvtepi32_ps(li);
            sumlx[g] = _mm256_add_ps(sumlx[g], _mm256_mul_ps(wx[g][i], l[g][i]));
            suml2[g] = _mm256_add_ps(
                suml2[g],
                _mm256_mul_ps(_mm256_mul_ps(wv[g][i], l[g][i]), l[g][i]),
            );
        }
    }
    let mut active = live;
    for _itry in 0..5 {
        let mut changed = [zero; G];
        for i in 0..N {
            for g in 0..G {
                let li = l[g][i];
                let mut slx = _mm256_sub_ps(sumlx[g], _mm256_mul_ps(wx[g][i], li));
                let pos = _mm256_cmp_ps::<_CMP_GT_OQ>(slx, zero);
                let mut sl2 =
                    _mm256_sub_ps(suml2[g], _mm256_mul_ps(_mm256_mul_ps(wv[g][i], li), li));
                let q = _mm256_div_ps(_mm256_mul_ps(xv[g][i], sl2), slx);
                let nl = _mm256_cvtepi32_ps(clamp_i(nint(q), -nmax, nmax - 1));
                let differs = _mm256_cmp_ps::<_CMP_NEQ_UQ>(nl, li);
                slx = _mm256_add_ps(slx, _mm256_mul_ps(wx[g][i], nl));
                sl2 = _mm256_add_ps(sl2, _mm256_mul_ps(_mm256_mul_ps(wv[g][i], nl), nl));
                let better = _mm256_cmp_ps::<_CMP_GT_OQ>(
                    _mm256_mul_ps(_mm256_mul_ps(slx, slx), suml2[g]),
                    _mm256_mul_ps(_mm256_mul_ps(sumlx[g], sumlx[g]), sl2),
                );
                let take = _mm256_and_ps(
                    _mm256_and_ps(_mm256_and_ps(active[g], pos), differs),
                    _mm256_and_ps(_mm256_cmp_ps::<_CMP_GT_OQ>(sl2, zero), better),
                );
                l[g][i] = sel(take, nl, li);
                sumlx[g] = sel(take, slx, sumlx[g]);
                suml2[g] = sel(take, sl2, suml2[g]);
                changed[g] = _mm256_or_ps(changed[g], take);
            }
        }
        let mut any = 0;
        for g in 0..G {
            active[g] = _mm256_and_ps(active[g], changed[g]);
            any |= _mm256_movemask_ps(active[g]);
        }
        if any == 0 {
            break;
        }
    }
    for g in 0..G {
        let keep = _mm256_castps_si256(live[g]);
        let off = _mm256_and_si256(_mm256_set1_epi32(nmax), keep);
        let mut li = [_mm256_setzero_si256(); N];
        for i in 0..N {
            li[i] = _mm256_and_si256(_mm256_add_epi32(_mm256_cvtps_epi32(l[g][i]), off), keep);
        }
        untranspose_i32::<N>(&li, 0, &mut out[8 * N * g..8 * N * (g + 1)]);
        let scale = sel(
            _mm256_cmp_ps::<_CMP_GT_OQ>(suml2[g], zero),
            _mm256_div_ps(sumlx[g], suml2[g]),
            zero,
        );
        _mm256_storeu_ps(scales.as_mut_ptr().add(8 * g), sel(live[g], scale, zero));
    }
}

/// The block walks' steps on AVX2 lanes: eight sub-blocks at a time.
///
/// Only instantiated inside the `#[target_feature(enable = "avx2")]` row
/// functions below, which run after the CPU check of their entry points.
pub(crate) struct Avx2;

impl Lanes for Avx2 {
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
        for g in 0..QK_K / (8 * N) {
            let r = 8 * N * g..8 * N * (g + 1);
            // SAFETY: `Avx2` is only used inside functions compiled for AVX2
            // and called after detecting it.
            unsafe {
                qkx2_x8::<N>(
                    nmax,
                    &x[r.clone()],
                    &weights[r.clone()],
                    &mut l[r],
                    rmin,
                    0.1,
                    S as i32 - 1,
                    use_mad,
                    &mut scales[8 * g..8 * g + 8],
                    &mut mins[8 * g..8 * g + 8],
                )
            };
        }
        true
    }

    #[inline(always)]
    fn search_qx_rmse1(x: &[f32], l: &mut [u8; QK_K], scales: &mut [f32]) -> bool {
        // SAFETY: as in `search_qkx2`.
        unsafe { qx_rmse1_x8::<16, 2>(32, x, l, scales) };
        true
    }

    #[inline(always)]
    fn search_q3(x: &[f32], l: &mut [u8; QK_K], scales: &mut [f32]) -> bool {
        // SAFETY: as in `search_qkx2`.
        unsafe { q3_x8::<16, 2>(4, x, l, scales) };
        true
    }

    #[inline(always)]
    fn requant_sym<const N: usize>(
        x: &[f32; N],
        d: f32,
        lo: i32,
        hi: i32,
        off: i32,
        l: &mut [u8; N],
    ) {
        // SAFETY: as in `search_qkx2`.
        unsafe { requant_sym(x, d, lo, hi, off, l) };
    }

    #[inline(always)]
    fn requant_affine<const N: usize>(x: &[f32; N], dm: f32, d: f32, nmax: i32, l: &mut [u8; N]) {
        // SAFETY: as in `search_qkx2`.
        unsafe { requant_affine(x, dm, d, nmax, l) };
    }
}

/// Declares the AVX2 encoder `$name` of a K-quant: the scalar walk
/// `scalar::$walk` with the [`Avx2`] steps, compiled for AVX2 in `$imp`.
macro_rules! kquant_encoder {
    ($doc:literal, $name:ident, $imp:ident, $walk:ident, $fallback:ident) => {
        #[target_feature(enable = "avx2")]
        unsafe fn $imp(src: &[f32], dst: &mut [u8]) {
            scalar::$walk::<Avx2>(src, dst)
        }

        avx2_entry!(
            $doc,
            $name,
            $imp,
            scalar::$fallback,
            fn(src: &[f32], dst: &mut [u8])
        );
    };
}

kquant_encoder!(
    "`quantize_row_q2_K_ref`, AVX2 variant.",
    quantize_row_q2_k,
    q2_k_rows,
    q2_k_rows,
    quantize_row_q2_k
);
kquant_encoder!(
    "`quantize_row_q3_K_ref`, AVX2 variant.",
    quantize_row_q3_k,
    q3_k_rows,
    q3_k_rows,
    quantize_row_q3_k
);
kquant_encoder!(
    "`quantize_row_q4_K_ref`, AVX2 variant.",
    quantize_row_q4_k,
    q4_k_rows,
    q4_k_rows,
    quantize_row_q4_k
);
kquant_encoder!(
    "`quantize_row_q5_K_ref`, AVX2 variant.",
    quantize_row_q5_k,
    q5_k_rows,
    q5_k_rows,
    quantize_row_q5_k
);
kquant_encoder!(
    "`quantize_row_q6_K_ref`, AVX2 variant.",
    quantize_row_q6_k,
    q6_k_rows,
    q6_k_rows,
    quantize_row_q6_k
);
