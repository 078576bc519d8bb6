//! Round-trip error bounds of the K-quants, the NaN/Inf contract, and a port
//! of llama.cpp's `tests/test-quantize-fns.cpp` quantization-error check.
//!
//! **Units.** A super-block of 256 has a super-scale `d` (fp16; f32 for
//! Q8_K) and an integer sub-scale `sc_j` per sub-block (16 of 16 elements for
//! Q2_K/Q3_K/Q6_K, 8 of 32 for Q4_K/Q5_K, one for Q8_K). The step of
//! sub-block `j` is `Δ_j = |d·sc_j|`; the block's coarsest step is
//! `Δmax = max_j Δ_j`. Plain rounding would give an error of `Δ_j/2`; ggml's
//! scale search deliberately clips a sub-block's extreme values when that
//! lowers the (weighted) squared error, and the sub-scales themselves are
//! rounded to 4/6/8 bits, which clips further where `|sc_j|` is small. So:
//!
//! * **block bound**: every element satisfies `|x − x̂| ≤ C_blk·Δmax`;
//! * **sub-block bound**: in sub-blocks with `|sc_j| ≥ 8` (sub-scale known to
//!   better than 6%), `|x − x̂| ≤ C_sub·Δ_j`;
//! * **fp16 underflow**: when `d` is below the smallest fp16 normal (2⁻¹⁴,
//!   weights of magnitude ≲ 1e-5) the scales lose their precision; then only
//!   `|x − x̂| ≤ 3·max|x|` per block holds (ggml behaves the same: the
//!   golden `tiny` and `subnormal` cases are bit-exact);
//! * **RMSE / RMS** per row, over the non-zero `varied_rows` cases other than
//!   `tiny` (fp16 underflow, see above);
//! * all-zero rows encode to all-zero bytes and decode to exact zeros.
//!
//! | type | C_blk (Δmax) | C_sub (Δ_j, \|sc_j\| ≥ 8) | RMSE / RMS | measured C_blk / C_sub / RMSE (4 seeds) |
//! |------|--------------|---------------------------|------------|-----------------------------------------|
//! | Q2_K | 1.0          | 1.0                       | 0.45       | 0.693 / 0.785 / 0.391                   |
//! | Q3_K | 1.0          | 1.25                      | 0.22       | 0.830 / 1.028 / 0.199                   |
//! | Q4_K | 0.75         | 1.0                       | 0.11       | 0.562 / 0.902 / 0.096                   |
//! | Q5_K | 0.85         | 1.0                       | 0.055      | 0.698 / 0.901 / 0.049                   |
//! | Q6_K | 0.6          | 1.5                       | 0.032      | 0.498 / 1.242 / 0.028                   |
//! | Q8_K | 0.5001       | 0.5001                    | 0.025      | 0.500 / 0.500 / 0.022                   |
//!
//! Q8_K has no clipping (its max maps to ±127 exactly) and an f32 scale, so
//! its bound is plain rounding. The worst RMSE cases are the Student-t rows.
//! Run with `--nocapture` to print the measured values.
mod common;
use common::{
    array_rmse, generate_data, MAX_QUANTIZATION_TOTAL_ERROR, MAX_QUANTIZATION_TOTAL_ERROR_2BITS,
    MAX_QUANTIZATION_TOTAL_ERROR_3BITS,
};

use common::varied_rows;
use qresidual_quant::{dequantize_row, quantize_row, GgmlType, QuantError};

const COLS: usize = 1024;
const SEEDS: [u64; 4] = [1, 2, 3, 0xdead_beef];

const TYPES: [GgmlType; 6] = [
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::Q8_K,
];

/// The stated bounds: (C_blk, C_sub, RMSE/RMS).
fn bounds(ty: GgmlType) -> (f64, f64, f64) {
    match ty {
        GgmlType::Q2_K => (1.0, 1.0, 0.45),
        GgmlType::Q3_K => (1.0, 1.25, 0.22),
        GgmlType::Q4_K => (0.75, 1.0, 0.11),
        GgmlType::Q5_K => (0.85, 1.0, 0.055),
        GgmlType::Q6_K => (0.6, 1.5, 0.032),
        GgmlType::Q8_K => (0.5001, 0.5001, 0.025),
        _ => unreachable!(),
    }
}

/// Per block: the fp16 (Q8_K: f32) super-scale `d` and, per element, the
/// integer sub-scale of its sub-block, decoded independently of the codec.
fn scales(ty: GgmlType, b: &[u8]) -> (f32, [i32; 256]) {
    let f16 = |i: usize| half::f16::from_le_bytes([b[i], b[i + 1]]).to_f32();
    let mut sc = [0i32; 256];
    let d = match ty {
        GgmlType::Q2_K => {
            for (e, s) in sc.iter_mut().enumerate() {
                *s = (b[e / 16] & 0xF) as i32;
            }
            f16(80)
        }
        GgmlType::Q3_K => {
            let s = &b[96..108];
            for (e, v) in sc.iter_mut().enumerate() {
                let j = e / 16;
                let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
                let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
                *v = (lo | (hi << 4)) as i32 - 32;
            }
            f16(108)
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let q = &b[4..16];
            for (e, v) in sc.iter_mut().enumerate() {
                let j = e / 32;
                *v = if j < 4 {
                    (q[j] & 63) as i32
                } else {
                    ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)) as i32
                };
            }
            f16(0)
        }
        GgmlType::Q6_K => {
            for (e, v) in sc.iter_mut().enumerate() {
                *v = b[192 + e / 16] as i8 as i32;
            }
            f16(208)
        }
        GgmlType::Q8_K => {
            sc = [1; 256];
            f32::from_le_bytes([b[0], b[1], b[2], b[3]])
        }
        _ => unreachable!(),
    };
    (d, sc)
}

fn roundtrip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut y).unwrap();
    (q, y)
}

/// Worst values seen on `varied_rows` over all seeds.
#[derive(Default, Debug)]
struct Measured {
    c_blk: f64,
    c_sub: f64,
    underflow: f64,
    rel_rmse: f64,
}

/// Round-trips every varied row of every seed, asserting the stated bounds
/// element by element, and returns the worst values seen.
fn check(ty: GgmlType) -> Measured {
    let (c_blk, c_sub, rmse_bound) = bounds(ty);
    // Below the smallest normal of the scale's format the scale is coarse.
    let normal = if ty == GgmlType::Q8_K {
        f32::MIN_POSITIVE
    } else {
        6.103_515_6e-5
    };
    let mut m = Measured::default();
    for seed in SEEDS {
        for (name, x) in varied_rows(COLS, seed) {
            let (q, y) = roundtrip(ty, &x);
            for (blk, ((xb, yb), b)) in x
                .chunks(256)
                .zip(y.chunks(256))
                .zip(q.chunks(ty.type_size()))
                .enumerate()
            {
                let at = |i: usize| {
                    format!(
                        "{ty} {name} seed {seed} block {blk} element {i}: x {} x̂ {}",
                        xb[i], yb[i]
                    )
                };
                let (d, sc) = scales(ty, b);
                let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                let dmax = sc
                    .iter()
                    .map(|&s| (d as f64 * s as f64).abs())
                    .fold(0.0, f64::max);
                let underflow = d.abs() < normal || dmax == 0.0;
                for i in 0..256 {
                    let e = (xb[i] as f64 - yb[i] as f64).abs();
                    if amax == 0.0 {
                        assert_eq!(e, 0.0, "{}", at(i));
                    } else if underflow {
                        m.underflow = m.underflow.max(e / amax);
                        assert!(e <= 3.0 * amax, "{}: underflow bound", at(i));
                    } else {
                        m.c_blk = m.c_blk.max(e / dmax);
                        assert!(e <= c_blk * dmax, "{}: {} Δmax > {c_blk}", at(i), e / dmax);
                        if sc[i].abs() >= 8 || ty == GgmlType::Q8_K {
                            let step = (d as f64 * sc[i] as f64).abs();
                            m.c_sub = m.c_sub.max(e / step);
                            assert!(e <= c_sub * step, "{}: {} Δ_j > {c_sub}", at(i), e / step);
                        }
                    }
                }
            }
            let rms = (x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt();
            if rms > 0.0 && name != "tiny" {
                let err = (x
                    .iter()
                    .zip(&y)
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum::<f64>()
                    / x.len() as f64)
                    .sqrt();
                m.rel_rmse = m.rel_rmse.max(err / rms);
                assert!(
                    err / rms <= rmse_bound,
                    "{ty} {name} seed {seed}: RMSE/RMS {} > {rmse_bound}",
                    err / rms
                );
            }
        }
    }
    println!(
        "{ty}: C_blk {:.3} (bound {c_blk}), C_sub {:.3} (bound {c_sub}), RMSE/RMS {:.4} (bound {rmse_bound}), underflow blocks |x−x̂|/max|x| {:.3} (bound 3)",
        m.c_blk, m.c_sub, m.rel_rmse, m.underflow
    );
    m
}

macro_rules! bound_tests {
    ($($name:ident, $ty:ident;)*) => {$(
        #[test]
        fn $name() {
            let m = check(GgmlType::$ty);
            // The data must actually exercise the bounds being claimed.
            assert!(m.c_blk > 0.0 && m.c_sub > 0.0 && m.rel_rmse > 0.0, "{m:?}");
        }
    )*};
}

bound_tests! {
    q2_k_round_trip_within_bounds, Q2_K;
    q3_k_round_trip_within_bounds, Q3_K;
    q4_k_round_trip_within_bounds, Q4_K;
    q5_k_round_trip_within_bounds, Q5_K;
    q6_k_round_trip_within_bounds, Q6_K;
    q8_k_round_trip_within_bounds, Q8_K;
}

#[test]
fn zero_rows_encode_to_zero_bytes_and_decode_exactly() {
    for ty in TYPES {
        let x = vec![0f32; 512];
        let mut q = vec![0xA5u8; ty.row_size(512).unwrap()];
        quantize_row(ty, &x, &mut q).unwrap();
        assert!(
            q.iter().all(|&b| b == 0),
            "{ty}: zero row gave non-zero bytes"
        );
        let mut y = vec![1f32; 512];
        dequantize_row(ty, &q, &mut y).unwrap();
        assert!(
            y.iter().all(|&v| v == 0.0),
            "{ty}: zero row decoded to non-zero"
        );
    }
}

#[test]
fn non_finite_input_is_an_error_not_an_encoding() {
    for ty in TYPES {
        for (index, value) in [
            (5usize, f32::NAN),
            (300, f32::INFINITY),
            (511, f32::NEG_INFINITY),
        ] {
            let mut x: Vec<f32> = (0..512).map(|i| (i as f32 * 0.37).sin()).collect();
            x[index] = value;
            let mut q = vec![0u8; ty.row_size(512).unwrap()];
            match quantize_row(ty, &x, &mut q) {
                Err(QuantError::NonFinite { index: i, value: v }) => {
                    assert_eq!(i, index, "{ty}");
                    assert_eq!(v.to_bits(), value.to_bits(), "{ty}");
                }
                other => panic!("{ty}: {value} at {index} gave {other:?}"),
            }
        }
    }
}

// ─── port of llama.cpp tests/test-quantize-fns.cpp (quantization error) ───

#[test]
fn test_quantize_fns_total_quantization_error() {
    let test_size = 32 * 128;
    let test_data = generate_data(0.0, test_size, 2.0);
    let mut failed = Vec::new();
    for ty in TYPES {
        let (_, out) = roundtrip(ty, &test_data);
        let total_error = array_rmse(&test_data, &out);
        let max_error = match ty {
            GgmlType::Q2_K => MAX_QUANTIZATION_TOTAL_ERROR_2BITS,
            GgmlType::Q3_K => MAX_QUANTIZATION_TOTAL_ERROR_3BITS,
            _ => MAX_QUANTIZATION_TOTAL_ERROR,
        };
        let ok = total_error < max_error;
        println!(
            "{:>5} absolute quantization error:    {} ({total_error:.6}, limit {max_error})",
            ty.name(),
            if ok { "ok" } else { "FAILED" }
        );
        if !ok {
            failed.push(ty);
        }
    }
    assert!(failed.is_empty(), "failed: {failed:?}");
}

/// Finite but extreme inputs (beyond fp16 range, f32::MAX, subnormals,
/// mixed signs) must encode and decode without panicking (integer overflow
/// is checked in test builds); ggml itself produces garbage scales there.
#[test]
fn extreme_finite_inputs_do_not_panic() {
    let patterns: [&dyn Fn(usize) -> f32; 5] = [
        &|_| f32::MAX,
        &|i| if i % 2 == 0 { f32::MAX } else { -f32::MAX },
        &|i| (i as f32 - 256.0) * 1e35,
        &|i| f32::from_bits(1 + i as u32), // subnormals
        &|i| if i == 3 { 1e30 } else { 1e-30 },
    ];
    for ty in TYPES {
        for p in patterns {
            let x: Vec<f32> = (0..512).map(p).collect();
            let (_, y) = roundtrip(ty, &x);
            assert_eq!(y.len(), 512);
        }
    }
}
