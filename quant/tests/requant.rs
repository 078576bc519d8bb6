//! Error bounds of the candidate search (`search_row`), one suite shared by
//! every type that has an encoder.
//!
//! Setting, as in `apply --strategy search`: a true base `b` (the varied
//! rows: Gaussian, heavy tails, outlier, all-zero, constant, huge and tiny
//! magnitudes), blurred so that it lies on no grid, is quantized by the
//! type's own encoder into the user's base; `b̂` is its decoded value and the
//! target is `t = b̂ + Δ` with Δ Gaussian at 0, 1, 5 and 20 % of the row's
//! RMS. Checked per block, on what `dequantize_row` makes of the bytes:
//!
//! - squared error of the written block ≤ that of the fresh encoding
//!   `quantize_row(t)` — so every RMSE bound stated for the fresh codec in
//!   `bounds_*.rs` holds for search too — and ≤ that of the base block.
//!   Per element this gives only |t − x̂| ≤ ‖fresh block error‖₂ ≤
//!   √(block size) × the fresh max-abs bound: a base block kept whole
//!   carries Δ itself in every element, which the fresh bound does not see;
//! - Δ = 0 returns the base bytes exactly;
//! - the win counts add up to the number of blocks;
//! - the re-rounded candidate alone is element by element at least as near
//!   to `t` as the base block (which is why a "mixed" candidate, re-rounding
//!   only elements more than half a step away, is not offered: it cannot
//!   beat it);
//! - NaN or infinity in the target is an error naming the element.

mod common;

use common::{varied_rows, Rng};
use qresidual_quant::requant::has_rerounding;
use qresidual_quant::{
    codec, dequantize_row, quantize_row, reround_row, search_row, GgmlType, QuantError, SearchWins,
    ALL_TYPES,
};

const COLS: usize = 2048;
const LEVELS: [f64; 4] = [0.0, 0.01, 0.05, 0.20];

/// Σ (t − x̂)² per block, +∞ for a block that does not decode finite.
fn block_errors(ty: GgmlType, bytes: &[u8], t: &[f32]) -> Vec<f64> {
    let mut v = vec![0f32; t.len()];
    dequantize_row(ty, bytes, &mut v).unwrap();
    t.chunks(ty.block_size())
        .zip(v.chunks(ty.block_size()))
        .map(|(t, v)| {
            let e: f64 = t
                .iter()
                .zip(v)
                .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                .sum();
            if e.is_finite() {
                e
            } else {
                f64::INFINITY
            }
        })
        .collect()
}

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

/// The suite for one type; returns the wins over every case with Δ ≠ 0.
fn check_type(ty: GgmlType) -> SearchWins {
    let rb = ty.row_size(COLS).unwrap();
    let n_blocks = (COLS / ty.block_size()) as u64;
    let mut all = SearchWins::default();
    for seed in 1..4u64 {
        for (name, b) in varied_rows(COLS, seed) {
            let mut base = vec![0u8; rb];
            quantize_row(ty, &blur(&b), &mut base).unwrap();
            let mut bhat = vec![0f32; COLS];
            dequantize_row(ty, &base, &mut bhat).unwrap();
            if bhat.iter().any(|v| !v.is_finite()) {
                // A block scale overflowed fp16 (huge rows in Q4_1/Q5_1):
                // such a base cannot be a target's starting point.
                continue;
            }
            let e_base_zero = block_errors(ty, &base, &bhat);
            for level in LEVELS {
                let mut rng = Rng::new(seed * 1000 + (level * 100.0) as u64);
                let sigma = level * rms(&bhat);
                let t: Vec<f32> = bhat
                    .iter()
                    .map(|&v| (v as f64 + sigma * rng.normal()) as f32)
                    .collect();
                let mut out = vec![0u8; rb];
                let mut wins = SearchWins::default();
                search_row(ty, &base, &t, &mut out, &mut wins)
                    .unwrap_or_else(|e| panic!("{ty} {name} Δ {level}: {e}"));
                assert_eq!(wins.total(), n_blocks, "{ty} {name} Δ {level}");
                if level == 0.0 {
                    assert!(
                        out == base,
                        "{ty} {name} seed {seed}: Δ = 0 must return the base bytes"
                    );
                    assert!(e_base_zero.iter().all(|&e| e == 0.0));
                    continue;
                }
                all.merge(&wins);
                let mut fresh = vec![0u8; rb];
                quantize_row(ty, &t, &mut fresh).unwrap();
                let e_out = block_errors(ty, &out, &t);
                let e_fresh = block_errors(ty, &fresh, &t);
                let e_base = block_errors(ty, &base, &t);
                for (i, ((o, f), bb)) in e_out.iter().zip(&e_fresh).zip(&e_base).enumerate() {
                    assert!(
                        o <= f && o <= bb,
                        "{ty} {name} seed {seed} Δ {level} block {i}: search {o:e}, fresh {f:e}, base {bb:e}"
                    );
                }
                if has_rerounding(ty) {
                    let mut c = vec![0u8; rb];
                    reround_row(ty, &base, &t, &mut c).unwrap();
                    let mut cv = vec![0f32; COLS];
                    dequantize_row(ty, &c, &mut cv).unwrap();
                    for i in 0..COLS {
                        let ec = (t[i] - cv[i]).abs();
                        let eb = (t[i] - bhat[i]).abs();
                        assert!(
                            ec <= eb,
                            "{ty} {name} Δ {level} element {i}: re-rounded {ec:e} > base {eb:e}"
                        );
                    }
                }
            }
        }
    }
    check_errors(ty);
    all
}

/// NaN / infinity in the target and wrong lengths are errors, not panics.
fn check_errors(ty: GgmlType) {
    let rb = ty.row_size(COLS).unwrap();
    let base = vec![0u8; rb];
    let mut out = vec![0u8; rb];
    let mut wins = SearchWins::default();
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut t = vec![0.01f32; COLS];
        t[77] = bad;
        match search_row(ty, &base, &t, &mut out, &mut wins) {
            Err(QuantError::NonFinite { index: 77, .. }) => {}
            other => panic!("{ty}: {bad} gave {other:?}"),
        }
    }
    let t = vec![0.01f32; COLS];
    assert!(matches!(
        search_row(ty, &base[1..], &t, &mut out, &mut wins),
        Err(QuantError::BadLength { .. })
    ));
    assert!(matches!(
        search_row(ty, &base, &t, &mut out[1..], &mut wins),
        Err(QuantError::BadLength { .. })
    ));
    assert_eq!(wins, SearchWins::default(), "{ty}: failed calls counted");
}

macro_rules! suite {
    ($($name:ident => $ty:ident),* $(,)?) => {$(
        #[test]
        fn $name() {
            let w = check_type(GgmlType::$ty);
            // The residual must be able to move some block away from the
            // fresh encoding (otherwise the search would be pointless here).
            assert!(w.base + w.rerounded > 0, "{}: {w:?}", GgmlType::$ty);
            eprintln!("{}: {w:?}", GgmlType::$ty);
        }
    )*};
}

suite! {
    q4_0 => Q4_0,
    q4_1 => Q4_1,
    q5_0 => Q5_0,
    q5_1 => Q5_1,
    q8_0 => Q8_0,
    q2_k => Q2_K,
    q3_k => Q3_K,
    q4_k => Q4_K,
    q5_k => Q5_K,
    q6_k => Q6_K,
}

/// Every other block type with an encoder: base and fresh compete.
#[test]
fn base_or_fresh_types() {
    let types: Vec<GgmlType> = ALL_TYPES
        .iter()
        .copied()
        .filter(|&t| {
            t.block_size() > 1
                && !has_rerounding(t)
                && codec(t).and_then(|c| c.quantize).is_some()
                && t.row_size(COLS).is_some()
        })
        .collect();
    assert!(types.contains(&GgmlType::IQ4_NL), "{types:?}");
    for ty in types {
        let w = check_type(ty);
        assert_eq!(w.rerounded, 0, "{ty}");
        eprintln!("{ty}: {w:?}");
    }
}

/// The re-rounded candidate is refused for a type without one.
#[test]
fn reround_row_refuses_other_types() {
    let ty = GgmlType::IQ4_NL;
    let rb = ty.row_size(64).unwrap();
    let mut out = vec![0u8; rb];
    assert!(matches!(
        reround_row(ty, &vec![0u8; rb], &[0.0; 64], &mut out),
        Err(QuantError::Unsupported { .. })
    ));
}
