//! The scale searches the encoders share (K-quants, the importance-weighted
//! legacy types, IQ4, IQ2_XXS), ported from the helper section of
//! `ggml-quants.c` ("2-6 bit quantization in super-blocks"): `first_absmax`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`, `make_qkx3_quants`,
//! `make_qp_quants`, `get_scale_min_k4` and their batched forms.
//!
//! Every float expression keeps ggml's operand order (C evaluates `a*b*c` as
//! `(a*b)*c`, and `w*l` with an `int l` converts `l` first); the reference
//! library is built without FMA contraction, and Rust never contracts.

// Index loops mirror the C source line by line, which keeps the port
// easy to check against it.
#![allow(clippy::needless_range_loop)]

use super::common::nearest_int;

/// The scan that opens many ggml encoders: `if (ax > amax) { amax = ax;
/// max = x[i]; }` over the block. Returns `(max, amax)`: the first element
/// of largest magnitude and that magnitude, `(0, 0)` for a block of zeros.
#[inline(always)]
pub(crate) fn first_absmax(x: &[f32]) -> (f32, f32) {
    let mut max = 0f32;
    let mut amax = 0f32;
    for &v in x {
        let ax = v.abs();
        if ax > amax {
            amax = ax;
            max = v;
        }
    }
    (max, amax)
}

/// `GROUP_MAX_EPS`: below this max-abs a group counts as all zero.
pub(crate) const GROUP_MAX_EPS: f32 = 1e-15;

/// `make_qx_quants`: symmetric quantization of `x` to `L ∈ [0, 2·nmax)`
/// (stored with the `+nmax` offset) with a 19-step search of the inverse
/// scale around `-nmax/max`; returns the scale. Weights are `qw`, or chosen by
/// `rmse_type` (1: x², 2: 1, 3: |x|, other: √|x|); a negative `rmse_type`
/// returns after the first least-squares fit, 0 skips the fit.
// Long because it follows ggml-quants.c `make_qx_quants` statement for
// statement (bit-exactness); kept in one piece so it can be compared with
// the reference line by line.
// The scalar port stays as the reference the batched versions are tested
// against.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn make_qx_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    out: &mut [i8; N],
    rmse_type: i32,
    qw: Option<&[f32; N]>,
) -> f32 {
    let n = N;
    let (max, amax) = first_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let mut iscale = (-nmax) as f32 / max;
    if rmse_type == 0 {
        for i in 0..n {
            let l = nearest_int(iscale * x[i]);
            out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
        }
        return 1.0 / iscale;
    }
    let mut rmse_type = rmse_type;
    let mut return_early = false;
    if rmse_type < 0 {
        rmse_type = -rmse_type;
        return_early = true;
    }
    // The weights are a pure function of x, computed once instead of in
    // every pass as ggml does; the values are identical.
    let mut wts = [0f32; N];
    for i in 0..n {
        wts[i] = match qw {
            Some(q) => q[i],
            None => match rmse_type {
                1 => x[i] * x[i],
                2 => 1.0,
                3 => x[i].abs(),
                _ => x[i].abs().sqrt(),
            },
        };
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        out[i] = (l + nmax) as i8;
        let w = wts[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 {
            0.5 * (scale + 1.0 / iscale)
        } else {
            1.0 / iscale
        };
    }
    let mut best = scale * sumlx;
    for is in -9i32..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            let w = wts[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                let l = nearest_int(iscale * x[i]);
                out[i] = (nmax + l.clamp(-nmax, nmax - 1)) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants`: symmetric quantization to `[-nmax, nmax)` (stored with
/// the `+nmax` offset); with `do_rmse`, up to five rounds of coordinate
/// descent on the x²-weighted error. Returns the scale.
pub(crate) fn make_q3_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    out: &mut [i8; N],
    do_rmse: bool,
) -> f32 {
    let n = N;
    let (max, amax) = first_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    if do_rmse {
        let mut sumlx = 0f32;
        let mut suml2 = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            out[i] = l as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * l as f32;
            suml2 += w * l as f32 * l as f32;
        }
        for _itry in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = out[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != out[i] as i32 {
                        slx += w * x[i] * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            out[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for v in out.iter_mut() {
            *v += nmax as i8;
        }
        return if suml2 > 0.0 { sumlx / suml2 } else { 0.0 };
    }
    for i in 0..n {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        out[i] = (l + nmax) as i8;
    }
    1.0 / iscale
}

/// `make_qkx2_quants`: asymmetric quantization `x ≈ scale·L − the_min`,
/// `L ∈ [0, nmax]`, searching `nstep + 1` inverse scales
/// `(rmin + rdelta·is + nmax)/(max − min)` with a weighted least-squares fit
/// of scale and min at each. Returns `(scale, the_min)`; `laux` is scratch.
// Long because it follows ggml-quants.c `make_qkx2_quants` statement for
// statement (bit-exactness); kept in one piece so it can be compared with
// the reference line by line.
#[allow(clippy::too_many_arguments)]
// The scalar ports stay as the reference the batched versions are tested
// against (and for callers that need other `rmse_type`s or weights).
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn make_qkx2_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    out: &mut [u8; N],
    laux: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = N;
    let mut min = x[0];
    let mut max = x[0];
    let sum_w0 = weights[0];
    let mut sum_w = sum_w0;
    let mut sum_x = sum_w0 * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min));
        out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let mut sum_l = 0f32;
        let mut sum_l2 = 0f32;
        let mut sum_xl = 0f32;
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let w = weights[i];
            let lf = l as f32;
            sum_l += w * lf;
            sum_l2 += w * lf * lf;
            sum_xl += w * lf * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for i in 0..n {
                let mut diff = this_scale * laux[i] as f32 + this_min - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                cur_error += weights[i] * diff;
            }
            if cur_error < best_error {
                *out = *laux;
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qkx3_quants` with importance weights (every `_impl` caller passes
/// them): asymmetric quantization `x ≈ scale·L − the_min`, `L ∈ [0, nmax]`,
/// searching `nstep + 1` inverse scales `(rmin + rdelta·is + nmax)/(max − min)`
/// with a weighted least-squares fit of scale and min at each. Returns
/// `(scale, the_min)`.
///
/// ggml's function differs from `make_qkx2_quants` only in zeroing a group
/// when `max <= min` rather than `max == min`, which for finite input is the
/// same test: it is `make_qkx2_quants` step for step. The encoders run
/// [`make_qkx2_quants_batched`] with `S = nstep + 1`, tested against this.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn make_qkx3_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let mut laux = [0u8; N];
    make_qkx2_quants(
        nmax, x, weights, out, &mut laux, rmin, rdelta, nstep, use_mad,
    )
}

/// `make_qp_quants`: quantization of the non-negative `x` (sub-block scales
/// or mins) to `L ∈ [0, nmax]` with one scale, weights `quant_weights`: eight
/// trial scales around `nmax/max`, then up to five rounds of coordinate
/// descent. `L` is `uint8_t` in ggml, so a negative level wraps as it does
/// there. Returns the scale.
// Long because it follows ggml-quants.c `make_qp_quants` statement for
// statement (bit-exactness); kept in one piece so it can be compared with
// the reference line by line.
pub(crate) fn make_qp_quants<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    out: &mut [u8; N],
    quant_weights: &[f32; N],
) -> f32 {
    let mut max = 0f32;
    for &v in x {
        // MAX(max, x[i])
        max = if max > v { max } else { v };
    }
    if max < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for i in 0..N {
        out[i] = nearest_int(iscale * x[i]) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for i in 0..N {
        let diff = x[i] - scale * out[i] as f32;
        let w = quant_weights[i];
        best_mse += w * diff * diff;
    }
    for is in -4i32..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1f32 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for i in 0..N {
            let l = nearest_int(iscale_is * x[i]).min(nmax);
            let diff = x[i] - scale_is * l as f32;
            let w = quant_weights[i];
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).min(nmax);
        out[i] = l as u8;
        let w = quant_weights[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _itry in 0..5 {
        let mut n_changed = 0;
        for i in 0..N {
            let w = quant_weights[i];
            let li = out[i] as f32;
            let mut slx = sumlx - w * x[i] * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                if new_l != out[i] as i32 {
                    slx += w * x[i] * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        out[i] = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` from the
/// 12 packed scale bytes of Q4_K / Q5_K.
#[inline(always)]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// `make_qkx2_quants`, bit-identical (tested), with its `nstep + 1 = S`
/// candidate scales evaluated up to `W` at a time. In ggml a candidate that
/// wins replaces `min`, and later candidates quantize `x − min` with the new
/// one, so candidates are not independent. Here a window of `W` candidates
/// is evaluated speculatively with the current `min` (each sum still left to
/// right, so each candidate is exact), then scanned in ggml's order; when a
/// winner changes `min` the rest of the window is discarded and the next
/// window starts after the winner. The `W` independent sums hide the float
/// add latency that bounds the scalar loop.
// Long because, windowing aside, it runs ggml-quants.c `make_qkx2_quants`
// step for step (bit-exactness); kept in one piece so it can be compared
// with the reference line by line.
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants_batched<const N: usize, const S: usize>(
    nmax: i32,
    x: &[f32; N],
    weights: &[f32; N],
    out: &mut [u8; N],
    rmin: f32,
    rdelta: f32,
    use_mad: bool,
) -> (f32, f32) {
    const W: usize = 4;
    let mut min = x[0];
    let mut max = x[0];
    let sum_w0 = weights[0];
    let mut sum_w = sum_w0;
    let mut sum_x = sum_w0 * x[0];
    for i in 1..N {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        out.fill(0);
        return (0.0, -min);
    }
    let iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * (x[i] - min));
        out[i] = l.clamp(0, nmax) as u8;
        let mut diff = scale * out[i] as f32 + min - x[i];
        diff = if use_mad { diff.abs() } else { diff * diff };
        best_error += weights[i] * diff;
    }

    let mut laux = [[0u8; W]; N];
    let mut p = 0;
    while p < S {
        let mut isc = [0f32; W];
        for (k, v) in isc.iter_mut().enumerate() {
            *v = (rmin + rdelta * (p + k) as f32 + nmax as f32) / (max - min);
        }
        let mut sum_l = [0f32; W];
        let mut sum_l2 = [0f32; W];
        let mut sum_xl = [0f32; W];
        for i in 0..N {
            let xm = x[i] - min;
            let w = weights[i];
            for k in 0..W {
                let l = nearest_int(isc[k] * xm).clamp(0, nmax);
                laux[i][k] = l as u8;
                let lf = l as f32;
                sum_l[k] += w * lf;
                sum_l2[k] += w * lf * lf;
                sum_xl[k] += w * lf * x[i];
            }
        }
        let mut fit = [false; W];
        let mut ts = [0f32; W];
        let mut tm = [0f32; W];
        for k in 0..W {
            let d = sum_w * sum_l2[k] - sum_l[k] * sum_l[k];
            if d > 0.0 {
                fit[k] = true;
                ts[k] = (sum_w * sum_xl[k] - sum_x * sum_l[k]) / d;
                tm[k] = (sum_l2[k] * sum_x - sum_l[k] * sum_xl[k]) / d;
                if tm[k] > 0.0 {
                    tm[k] = 0.0;
                    ts[k] = sum_xl[k] / sum_l2[k];
                }
            }
        }
        let mut err = [0f32; W];
        for i in 0..N {
            let w = weights[i];
            for k in 0..W {
                let mut diff = ts[k] * laux[i][k] as f32 + tm[k] - x[i];
                diff = if use_mad { diff.abs() } else { diff * diff };
                err[k] += w * diff;
            }
        }
        let end = W.min(S - p);
        let mut next = p + end;
        for k in 0..end {
            if fit[k] && err[k] < best_error {
                for i in 0..N {
                    out[i] = laux[i][k];
                }
                best_error = err[k];
                scale = ts[k];
                let moved = tm[k].to_bits() != min.to_bits();
                min = tm[k];
                if moved {
                    next = p + k + 1;
                    break;
                }
            }
        }
        p = next;
    }
    (scale, -min)
}

/// `make_qx_quants` for `rmse_type == 1` without importance weights (the
/// only form the K-quant `_ref` encoders use): [`make_qx_quants_weighted`]
/// with the weights `x²`.
pub(crate) fn make_qx_quants_rmse1<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    out: &mut [i8; N],
) -> f32 {
    let mut w = [0f32; N];
    for i in 0..N {
        w[i] = x[i] * x[i];
    }
    make_qx_quants_weighted(nmax, x, &w, out)
}

/// `make_qx_quants(N, nmax, x, L, 1, w)` with the 18 candidate scales of
/// the search evaluated side by side. Per candidate the sums run left to
/// right and candidates are accepted in ggml's order (`is = -9..=9`; they
/// do not depend on each other), so the result is bit-identical to the
/// scalar port (tested).
pub(crate) fn make_qx_quants_weighted<const N: usize>(
    nmax: i32,
    x: &[f32; N],
    w: &[f32; N],
    out: &mut [i8; N],
) -> f32 {
    const C: usize = 18;
    let (max, amax) = first_absmax(x);
    if amax < GROUP_MAX_EPS {
        out.fill(0);
        return 0.0;
    }
    let iscale = (-nmax) as f32 / max;
    let mut sumlx = 0f32;
    let mut suml2 = 0f32;
    for i in 0..N {
        let l = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
        out[i] = (l + nmax) as i8;
        sumlx += w[i] * x[i] * l as f32;
        suml2 += w[i] * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;

    let mut isc = [0f32; C];
    for (k, v) in isc.iter_mut().enumerate() {
        let is = if k < 9 { k as i32 - 9 } else { k as i32 - 8 };
        *v = -(nmax as f32 + 0.1f32 * is as f32) / max;
    }
    let mut ls = [[0i8; C]; N];
    let mut slx = [0f32; C];
    let mut sl2 = [0f32; C];
    for i in 0..N {
        let wx = w[i] * x[i];
        for k in 0..C {
            let l = nearest_int(isc[k] * x[i]).clamp(-nmax, nmax - 1);
            ls[i][k] = l as i8;
            let lf = l as f32;
            slx[k] += wx * lf;
            sl2[k] += w[i] * lf * lf;
        }
    }
    let mut winner = None;
    for k in 0..C {
        if sl2[k] > 0.0 && slx[k] * slx[k] > best * sl2[k] {
            scale = slx[k] / sl2[k];
            best = scale * slx[k];
            winner = Some(k);
        }
    }
    if let Some(k) = winner {
        for i in 0..N {
            out[i] = (ls[i][k] as i32 + nmax) as i8;
        }
    }
    scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sub-blocks of many shapes: Gaussian-ish, heavy-tailed, on a coarse
    /// grid (rounding ties), integers, sparse, one-signed, constant, zero.
    fn blocks<const N: usize>(count: usize) -> Vec<[f32; N]> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..count)
            .map(|c| {
                let mut b = [0f32; N];
                for v in b.iter_mut() {
                    let u = next() * 2.0 - 1.0;
                    *v = match c % 8 {
                        0 => (u * 0.05) as f32,
                        1 => (u.powi(7) * 3.0) as f32,
                        2 => ((u * 16.0).round() / 8.0) as f32,
                        3 => (u * 4.0).round() as f32,
                        4 => {
                            if next() < 0.2 {
                                u as f32
                            } else {
                                0.0
                            }
                        }
                        5 => (u.abs() * 1e4) as f32,
                        6 => -(u.abs() * 1e-3) as f32,
                        _ => {
                            if c % 16 == 7 {
                                0.375
                            } else {
                                0.0
                            }
                        }
                    };
                }
                b
            })
            .collect()
    }

    fn check_qkx2<const N: usize, const S: usize>(
        nmax: i32,
        rmin: f32,
        use_mad: bool,
        mad_weights: bool,
    ) {
        for x in blocks::<N>(4000) {
            let mut w = [0f32; N];
            if mad_weights {
                for i in 0..N {
                    w[i] = x[i].abs();
                }
            } else {
                let mut sum_x2 = 0f32;
                for v in x {
                    sum_x2 += v * v;
                }
                let av_x = (sum_x2 / N as f32).sqrt();
                for i in 0..N {
                    w[i] = av_x + x[i].abs();
                }
            }
            let (mut a, mut b) = ([0u8; N], [0u8; N]);
            let mut laux = [0u8; N];
            let r1 = make_qkx2_quants(
                nmax,
                &x,
                &w,
                &mut a,
                &mut laux,
                rmin,
                0.1,
                S as i32 - 1,
                use_mad,
            );
            let r2 = make_qkx2_quants_batched::<N, S>(nmax, &x, &w, &mut b, rmin, 0.1, use_mad);
            assert_eq!(
                (r1.0.to_bits(), r1.1.to_bits()),
                (r2.0.to_bits(), r2.1.to_bits()),
                "{x:?}"
            );
            assert_eq!(a, b, "{x:?}");
        }
    }

    #[test]
    fn batched_qkx2_equals_scalar_port() {
        check_qkx2::<16, 16>(3, -0.5, true, true); // Q2_K
        check_qkx2::<32, 21>(15, -1.0, false, false); // Q4_K
        check_qkx2::<32, 16>(31, -0.5, false, false); // Q5_K
    }

    #[test]
    fn batched_qx_rmse1_equals_scalar_port() {
        for x in blocks::<16>(8000) {
            let (mut a, mut b) = ([0i8; 16], [0i8; 16]);
            let r1 = make_qx_quants(32, &x, &mut a, 1, None);
            let r2 = make_qx_quants_rmse1(32, &x, &mut b);
            assert_eq!(r1.to_bits(), r2.to_bits(), "{x:?}");
            assert_eq!(a, b, "{x:?}");
        }
    }

    fn check_qkx3<const N: usize>(nmax: i32) {
        let mut s = 11u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for (k, x) in blocks::<N>(3000).into_iter().enumerate() {
            let mut w = [0f32; N];
            for v in w.iter_mut() {
                *v = match k % 3 {
                    0 => ((next() - 0.5) * 6.0).exp() as f32,
                    1 => {
                        if next() < 0.3 {
                            0.0
                        } else {
                            next() as f32
                        }
                    }
                    _ => 1.0,
                };
            }
            let (mut a, mut b) = ([0u8; N], [0u8; N]);
            let r1 = make_qkx3_quants(nmax, &x, &w, &mut a, -0.9, 0.05, 36, false);
            let r2 = make_qkx2_quants_batched::<N, 37>(nmax, &x, &w, &mut b, -0.9, 0.05, false);
            assert_eq!(
                (r1.0.to_bits(), r1.1.to_bits()),
                (r2.0.to_bits(), r2.1.to_bits()),
                "{x:?} {w:?}"
            );
            assert_eq!(a, b, "{x:?} {w:?}");
        }
    }

    #[test]
    fn batched_qkx2_equals_qkx3_with_weights() {
        check_qkx3::<16>(3); // Q2_K
        check_qkx3::<32>(15); // Q4_K, Q4_1
        check_qkx3::<32>(31); // Q5_K, Q5_1
    }

    #[test]
    fn batched_qx_weighted_equals_scalar_port() {
        let mut s = 7u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        for (k, x) in blocks::<32>(4000).into_iter().enumerate() {
            let mut w = [0f32; 32];
            for v in w.iter_mut() {
                *v = match k % 3 {
                    0 => ((next() - 0.5) * 6.0).exp() as f32,
                    1 => {
                        if next() < 0.3 {
                            0.0
                        } else {
                            next() as f32
                        }
                    }
                    _ => 1.0,
                };
            }
            for nmax in [4, 8, 16, 32] {
                let (mut a, mut b) = ([0i8; 32], [0i8; 32]);
                let r1 = make_qx_quants(nmax, &x, &mut a, 1, Some(&w));
                let r2 = make_qx_quants_weighted(nmax, &x, &w, &mut b);
                assert_eq!(r1.to_bits(), r2.to_bits(), "{x:?} {w:?}");
                assert_eq!(a, b, "{x:?} {w:?}");
            }
        }
    }

    #[test]
    fn scale_min_k4_unpacks_the_q4_k_packing() {
        // Pack like quantize_row_q4_K_ref, unpack with get_scale_min_k4.
        for seed in 0..64u32 {
            let ls: Vec<u8> = (0..8).map(|j| ((seed * 7 + j * 13) % 64) as u8).collect();
            let lm: Vec<u8> = (0..8)
                .map(|j| ((seed * 11 + j * 5 + 3) % 64) as u8)
                .collect();
            let mut q = [0u8; 12];
            for j in 0..8 {
                if j < 4 {
                    q[j] = ls[j];
                    q[j + 4] = lm[j];
                } else {
                    q[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                    q[j - 4] |= (ls[j] >> 4) << 6;
                    q[j] |= (lm[j] >> 4) << 6;
                }
            }
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &q), (ls[j], lm[j]));
            }
        }
    }
}
