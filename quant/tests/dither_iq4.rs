//! Dithered re-rounding on IQ4_NL's and IQ4_XS's non-uniform grid
//! (`dither_row`), checked on what `dequantize_row` (bit-exact with ggml's
//! `dequantize_row_iq4_nl/_iq4_xs`, `golden_iq.rs`) makes of the bytes.
//!
//! Setting, as in `apply` on an IQ4 base: the varied rows, blurred off every
//! grid, quantized by the type's own encoder into the base; `b̂` is its
//! decoded value and the target `t = b̂ + Δ` with Δ Gaussian at 0.5, 5 and
//! 20 % of the row's RMS. Each element's grid is read off the decoder: the
//! base block with every code set to `k` decodes to `s·kvalues_iq4nl[k]` at
//! every element of a sub-block of scale `s`. Checked:
//!
//! - **on the grid's neighbours**: every element decodes to one of the two
//!   grid values around its target (`g⁻ ≤ t ≤ g⁺`), to the end value beyond
//!   the grid's range, and to the base's value on a degenerate grid (zero
//!   scale: every code decodes alike);
//! - **error per block**: max-abs ≤ the widest gap of the block's grid
//!   (24·|s|: kvalues 89 → 113) for elements inside the range; the mean
//!   squared error over the row within 5 standard errors of its exact
//!   expectation Σ (t − g⁻)(g⁺ − t) / n (so RMSE ≤ 12·|s|);
//! - **unbiased**: the mean over 1000 keys within 5 standard errors of `t`
//!   for every element inside the range (one draw's variance is
//!   (t − g⁻)(g⁺ − t), its standard error that over √1000);
//! - **deterministic**: a key writes the same bytes every time; another
//!   key other bytes; Δ = 0 returns the base's bytes;
//! - NaN or infinity in the target is an error naming the element.

mod common;

use common::{varied_rows, Rng};
use qresidual_quant::{dequantize_row, dither_row, quantize_row, GgmlType, QuantError};

const COLS: usize = 2048;
const LEVELS: [f64; 3] = [0.005, 0.05, 0.20];

fn blur(x: &[f32]) -> Vec<f32> {
    (0..x.len())
        .map(|i| {
            let l = x[i.saturating_sub(1)];
            let r = x[(i + 1).min(x.len() - 1)];
            0.5 * x[i] + 0.25 * (l + r)
        })
        .collect()
}

fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Where the 4-bit codes of a block start (IQ4_NL: after fp16 `d`; IQ4_XS:
/// after `d`, `scales_h`, `scales_l`), as ggml's block structs lay them out.
fn codes_at(ty: GgmlType) -> usize {
    match ty {
        GgmlType::IQ4_NL => 2,
        GgmlType::IQ4_XS => 8,
        _ => unreachable!(),
    }
}

/// `grid[e][k]`: what element `e` decodes to with code `k`, read off the
/// decoder (the base's blocks with every code byte set to `k | k << 4`).
fn grids(ty: GgmlType, base: &[u8]) -> Vec<[f32; 16]> {
    let (ts, at) = (ty.type_size(), codes_at(ty));
    let mut grid = vec![[0f32; 16]; COLS];
    let mut v = vec![0f32; COLS];
    for k in 0..16u8 {
        let mut b = base.to_vec();
        for blk in b.chunks_exact_mut(ts) {
            blk[at..].iter_mut().for_each(|q| *q = k | (k << 4));
        }
        dequantize_row(ty, &b, &mut v).unwrap();
        for (g, &x) in grid.iter_mut().zip(&v) {
            g[k as usize] = x;
        }
    }
    grid
}

/// The grid values around `t`: `(g⁻, g⁺)` with `g⁻ ≤ t ≤ g⁺`, either side
/// `None` beyond the grid's range.
fn neighbours(g: &[f32; 16], t: f32) -> (Option<f32>, Option<f32>) {
    let below = g.iter().copied().filter(|&v| v <= t).reduce(f32::max);
    let above = g.iter().copied().filter(|&v| v >= t).reduce(f32::min);
    (below, above)
}

/// The element's grid spans distinct values (a scale neither zero nor
/// subnormal enough to collapse codes).
fn live(g: &[f32; 16]) -> bool {
    g.iter().any(|&v| v != g[0])
}

fn check_type(ty: GgmlType) {
    let rb = ty.row_size(COLS).unwrap();
    let mut checked_rows = 0;
    for seed in 1..3u64 {
        for (name, b) in varied_rows(COLS, seed) {
            let mut base = vec![0u8; rb];
            quantize_row(ty, &blur(&b), &mut base).unwrap();
            let mut bhat = vec![0f32; COLS];
            dequantize_row(ty, &base, &mut bhat).unwrap();
            if bhat.iter().any(|v| !v.is_finite()) {
                // A block scale overflowed fp16 (the huge rows): such a base
                // cannot be a target's starting point.
                continue;
            }
            let grid = grids(ty, &base);
            // Δ = 0: the base's bytes.
            let mut out = vec![0u8; rb];
            dither_row(ty, &base, &bhat, &mut out, seed).unwrap();
            assert!(out == base, "{ty} {name}: Δ = 0 changed the base");
            for level in LEVELS {
                let mut rng = Rng::new(seed * 1000 + (level * 1000.0) as u64);
                let sigma = level * rms(&bhat);
                let t: Vec<f32> = bhat
                    .iter()
                    .map(|&v| (v as f64 + sigma * rng.normal()) as f32)
                    .collect();
                let what = format!("{ty} {name} seed {seed} Δ {level}");
                check_draw(ty, &base, &bhat, &grid, &t, &what);
                if level == 0.05 {
                    check_unbiased(ty, &base, &grid, &t, &what);
                }
            }
            checked_rows += 1;
        }
    }
    assert!(checked_rows >= 14, "{ty}: only {checked_rows} rows checked");
}

/// One draw: neighbours, per-block max-abs, row mean squared error against
/// its expectation; determinism.
fn check_draw(ty: GgmlType, base: &[u8], bhat: &[f32], grid: &[[f32; 16]], t: &[f32], what: &str) {
    let rb = base.len();
    let bs = ty.block_size().min(32);
    let (mut a, mut again, mut other) = (vec![0u8; rb], vec![0u8; rb], vec![0u8; rb]);
    dither_row(ty, base, t, &mut a, 0xfeed).unwrap();
    dither_row(ty, base, t, &mut again, 0xfeed).unwrap();
    dither_row(ty, base, t, &mut other, 0xbeef).unwrap();
    assert!(a == again, "{what}: the same key wrote other bytes");
    let mut o = vec![0f32; COLS];
    dequantize_row(ty, &a, &mut o).unwrap();
    let (mut sq, mut expect, mut var, mut inside) = (0f64, 0f64, 0f64, 0usize);
    // Elements that round either way with probability above 5 %.
    let mut uncertain = 0;
    for (blk, ((g, t), (o, b))) in grid
        .chunks(bs)
        .zip(t.chunks(bs))
        .zip(o.chunks(bs).zip(bhat.chunks(bs)))
        .enumerate()
    {
        // One scale per 32-element (sub-)block: its widest gap.
        let s = (g[0][15] - g[0][0]).abs() / 240.0;
        let mut max_abs = 0f32;
        for e in 0..bs {
            let (g, t, o) = (&g[e], t[e], o[e]);
            let at = format!("{what} element {}: target {t:e}, out {o:e}", blk * bs + e);
            if !live(g) {
                assert_eq!(o, b[e], "{at}: a degenerate grid moved the code");
                continue;
            }
            assert!(g.contains(&o), "{at}: off the grid {g:?}");
            match neighbours(g, t) {
                (Some(lo), Some(hi)) => {
                    assert!(
                        o == lo || o == hi,
                        "{at}: not a neighbour of {lo:e}..{hi:e}"
                    );
                    max_abs = max_abs.max((t - o).abs());
                    let (da, db) = ((t - lo) as f64, (hi - t) as f64);
                    sq += ((t - o) as f64).powi(2);
                    expect += da * db;
                    var += (da * db.powi(4) + db * da.powi(4)) / (da + db).max(f64::MIN_POSITIVE)
                        - (da * db).powi(2);
                    inside += 1;
                    uncertain += usize::from(da.min(db) > 0.05 * (da + db));
                }
                (None, Some(end)) | (Some(end), None) => {
                    assert_eq!(o, end, "{at}: beyond the range, not its end");
                }
                (None, None) => unreachable!(),
            }
        }
        assert!(
            max_abs <= 24.0 * s * (1.0 + 1e-6),
            "{what} block {blk}: max-abs {max_abs:e} > 24·|s| = {:e}",
            24.0 * s
        );
    }
    if inside > 0 {
        let bound = 5.0 * var.max(0.0).sqrt() + 1e-9 * expect;
        assert!(
            (sq - expect).abs() <= bound,
            "{what}: squared error {sq:e}, expected {expect:e} ± {bound:e}"
        );
    }
    // Each such element agrees between two keys with probability below
    // 0.905: 200 of them all agree with probability below 1e-8.
    if uncertain >= 200 {
        assert!(a != other, "{what}: another key, the same bytes");
    }
}

/// The mean over many keys meets the target.
fn check_unbiased(ty: GgmlType, base: &[u8], grid: &[[f32; 16]], t: &[f32], what: &str) {
    let draws = 1000u64;
    let mut sum = vec![0f64; COLS];
    let mut out = vec![0u8; base.len()];
    let mut v = vec![0f32; COLS];
    for key in 0..draws {
        dither_row(
            ty,
            base,
            t,
            &mut out,
            key.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        )
        .unwrap();
        dequantize_row(ty, &out, &mut v).unwrap();
        sum.iter_mut().zip(&v).for_each(|(s, &x)| *s += x as f64);
    }
    for (e, (g, &t)) in grid.iter().zip(t).enumerate() {
        if !live(g) {
            continue;
        }
        if let (Some(lo), Some(hi)) = neighbours(g, t) {
            let mean = sum[e] / draws as f64;
            let sd = (((t - lo) as f64) * ((hi - t) as f64)).sqrt();
            // The draw's resolution (24-bit uniforms, f32 positions) adds a
            // bias far below a millionth of the gap.
            let bound = 5.0 * sd / (draws as f64).sqrt() + 1e-6 * (hi - lo) as f64;
            assert!(
                (mean - t as f64).abs() <= bound,
                "{what} element {e}: mean {mean:e}, target {t:e}, bound {bound:e}"
            );
        }
    }
}

/// NaN and infinity are errors naming the element; wrong lengths errors.
fn check_errors(ty: GgmlType) {
    let rb = ty.row_size(COLS).unwrap();
    let mut base = vec![0u8; rb];
    let x: Vec<f32> = (0..COLS).map(|i| (i as f32 * 0.37).sin()).collect();
    quantize_row(ty, &x, &mut base).unwrap();
    let mut out = vec![0u8; rb];
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut t = x.clone();
        t[77] = bad;
        match dither_row(ty, &base, &t, &mut out, 1) {
            Err(QuantError::NonFinite { index: 77, .. }) => {}
            other => panic!("{ty}: {bad} gave {other:?}"),
        }
    }
    assert!(matches!(
        dither_row(ty, &base[1..], &x, &mut out, 1),
        Err(QuantError::BadLength { .. })
    ));
    assert!(matches!(
        dither_row(ty, &base, &x, &mut out[1..], 1),
        Err(QuantError::BadLength { .. })
    ));
}

#[test]
fn iq4_nl() {
    check_type(GgmlType::IQ4_NL);
    check_errors(GgmlType::IQ4_NL);
}

#[test]
fn iq4_xs() {
    check_type(GgmlType::IQ4_XS);
    check_errors(GgmlType::IQ4_XS);
}
