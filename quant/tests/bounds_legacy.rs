//! Round-trip error bounds of F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0,
//! checked on `common::varied_rows` for several seeds, plus a faithful port of
//! llama.cpp's `tests/test-quantize-fns.cpp` total-error check.
//!
//! # Per-element bound of the block formats
//!
//! With `d` the f32 block scale ggml computes, `d̂ = fp16(d)` the stored one,
//! `m̂ = fp16(min)` the stored minimum (Q4_1/Q5_1 only, else `m = m̂ = 0`) and
//! `Q` the largest |quant| the decoder multiplies by:
//!
//! ```text
//! |x − x̂| ≤ c·|d| + Q·|d − d̂| + |min − m̂| + 1e-5·(|x| + Q·|d|)
//! ```
//!
//! | type | d              | Q   | c (rounding)                           | c (clamped)                        |
//! |------|----------------|-----|----------------------------------------|------------------------------------|
//! | Q4_0 | max / −8       | 8   | ½: `trunc(x/d + 8.5)` is round-half-up | 1: x/d ∈ [7.5, 8] clamps to q = 7  |
//! | Q5_0 | max / −16      | 16  | ½: `trunc(x/d + 16.5)`                 | 1: x/d ∈ [15.5, 16] clamps to 15   |
//! | Q4_1 | (max−min) / 15 | 15  | ½: `trunc((x−min)/d + 0.5)`            | — (MIN(15, ·) only absorbs ulps)   |
//! | Q5_1 | (max−min) / 31 | 31  | ½: same, no clamp needed               | —                                  |
//! | Q8_0 | amax / 127     | 127 | ½: `roundf(x/d)`                       | —                                  |
//!
//! `max` is the signed value of largest magnitude, so the clamped elements of
//! Q4_0/Q5_0 are those of opposite sign to it and nearly as large. The
//! `Q·|d − d̂|` term is the fp16 rounding of the scale: ≤ 2⁻¹¹·|d| when `d` is
//! a normal fp16, but up to 2⁻²⁵ absolute when it is subnormal (|d| < 2⁻¹⁴),
//! which is why tiny data loses relative precision. `1e-5` absorbs the f32
//! rounding of `1/d`, `x·id` and `q·d̂ + m̂`.
//!
//! Preconditions (ggml's formats, not ours): `d` and `min` must round to a
//! finite fp16 (|d|, |min| < 65520), else the block decodes to ±Inf/NaN —
//! checked below on the rows where it happens (Q4_1/Q5_1 with a block
//! minimum below −65520 in the `huge` rows); and `1/d` must be finite
//! (|d| ≳ 3e-39), else ggml stores quant 0 everywhere (covered bit-exactly by
//! the golden `subnormal` case, not by this bound).
//!
//! # Float types
//!
//! F32 is exact. F16: |x − x̂| ≤ max(2⁻¹¹·|x|, 2⁻²⁵) for |x| < 65520, ±Inf
//! beyond. BF16: |x − x̂| ≤ max(2⁻⁸·|x|, 2⁻¹³³).
//!
//! # Relative RMSE (‖x − x̂‖ / ‖x‖ per row), bounds the data obeys
//!
//! Empirical bounds with margin over what 6 seeds × 2048 columns measured
//! (worst family in brackets; `tiny` is σ = 1e-6, where every block scale is
//! an fp16 subnormal or underflows to zero):
//!
//! | type | bound, all but `tiny` | measured           | bound, `tiny` | measured |
//! |------|-----------------------|--------------------|---------------|----------|
//! | F32  | 0                     | 0                  | 0             | 0        |
//! | F16  | 3.0e-4                | 2.2e-4 (gaussian)  | 0.025         | 0.018    |
//! | BF16 | 2.5e-3                | 1.7e-3 (student-t) | 2.5e-3        | 1.7e-3   |
//! | Q4_0 | 0.16                  | 0.142 (student-t)  | 0.4           | 0.110    |
//! | Q4_1 | 0.12                  | 0.103 (student-t)  | 0.4           | 0.178    |
//! | Q5_0 | 0.08                  | 0.070 (student-t)  | 0.4           | 0.135    |
//! | Q5_1 | 0.06                  | 0.049 (student-t)  | 0.4           | 0.285    |
//! | Q8_0 | 0.011                 | 0.0091 (student-t) | 1.05          | 1.0      |
//!
//! Q8_0 on `tiny` is 1.0 because `amax/127` is below 2⁻²⁵ and its fp16 is 0:
//! the whole row decodes to zero. It cannot exceed ≈1: a scale that rounds
//! up instead lands on 2⁻²⁴ ≤ 2·d, so |x̂| ≤ 2·|x|. Rows holding an fp16
//! overflow (F16 elements ≥ 65520, Q4_1/Q5_1 blocks with min < −65520, both
//! in `huge`) are left out of the RMSE and checked to decode non-finite.
//!
//! Zero rows round-trip to zeros exactly (Q4_0/Q5_0 give −0.0, as ggml does).

mod common;
use common::{array_rmse, generate_data, MAX_QUANTIZATION_TOTAL_ERROR};

use std::collections::BTreeMap;

use common::varied_rows;
use qresidual_quant::{dequantize_row, quantize_row, GgmlType, QuantError};

const COLS: usize = 2048;
const SEEDS: std::ops::Range<u64> = 1..7;

/// Bound parameters of one block format, from the table above.
struct Block {
    ty: GgmlType,
    /// Largest |quant| the decoder multiplies `d̂` by.
    q_max: f32,
    /// Bound in units of |d| for elements that are not clamped.
    c_round: f32,
    /// Bound in units of |d| for elements clamped at the top of the range
    /// (`x/d ≥ clamp_from`).
    c_clamp: f32,
    clamp_from: f32,
    /// Q4_1/Q5_1: the block stores `m̂ = fp16(min)` after `d̂`.
    has_min: bool,
    /// The scale ggml computes from the block.
    scale: fn(&[f32]) -> f32,
    /// Relative RMSE bound, all families except `tiny`.
    rel_rmse: f64,
    /// Relative RMSE bound on the `tiny` family.
    rel_rmse_tiny: f64,
}

fn signed_absmax(x: &[f32]) -> f32 {
    let mut best = 0.0f32;
    for &v in x {
        if best.abs() < v.abs() {
            best = v;
        }
    }
    best
}

fn min_max(x: &[f32]) -> (f32, f32) {
    let min = x.iter().copied().fold(f32::MAX, f32::min);
    let max = x.iter().copied().fold(-f32::MAX, f32::max);
    (min, max)
}

const BLOCKS: &[Block] = &[
    Block {
        ty: GgmlType::Q4_0,
        q_max: 8.0,
        c_round: 0.5,
        c_clamp: 1.0,
        clamp_from: 7.5,
        has_min: false,
        scale: |x| signed_absmax(x) / -8.0,
        rel_rmse: 0.16,
        rel_rmse_tiny: 0.4,
    },
    Block {
        ty: GgmlType::Q4_1,
        q_max: 15.0,
        c_round: 0.5,
        c_clamp: 0.5,
        clamp_from: f32::INFINITY,
        has_min: true,
        scale: |x| {
            let (min, max) = min_max(x);
            (max - min) / 15.0
        },
        rel_rmse: 0.12,
        rel_rmse_tiny: 0.4,
    },
    Block {
        ty: GgmlType::Q5_0,
        q_max: 16.0,
        c_round: 0.5,
        c_clamp: 1.0,
        clamp_from: 15.5,
        has_min: false,
        scale: |x| signed_absmax(x) / -16.0,
        rel_rmse: 0.08,
        rel_rmse_tiny: 0.4,
    },
    Block {
        ty: GgmlType::Q5_1,
        q_max: 31.0,
        c_round: 0.5,
        c_clamp: 0.5,
        clamp_from: f32::INFINITY,
        has_min: true,
        scale: |x| {
            let (min, max) = min_max(x);
            (max - min) / 31.0
        },
        rel_rmse: 0.06,
        rel_rmse_tiny: 0.4,
    },
    Block {
        ty: GgmlType::Q8_0,
        q_max: 127.0,
        c_round: 0.5,
        c_clamp: 0.5,
        clamp_from: f32::INFINITY,
        has_min: false,
        scale: |x| x.iter().fold(0.0f32, |a, v| a.max(v.abs())) / 127.0,
        rel_rmse: 0.011,
        rel_rmse_tiny: 1.05,
    },
];

fn f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

fn le_f16(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

fn round_trip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut y).unwrap();
    (q, y)
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let (mut e2, mut x2) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        e2 += (a as f64 - b as f64).powi(2);
        x2 += (a as f64).powi(2);
    }
    if x2 == 0.0 {
        if e2 == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (e2 / x2).sqrt()
    }
}

/// What one type did over all rows and seeds.
#[derive(Default)]
struct Measured {
    max_rel_rmse: f64,
    max_rel_rmse_tiny: f64,
    /// max |x − x̂| / |d| over blocks whose `d` is a normal fp16.
    max_err_over_d: f64,
    /// The same over elements that are not clamped.
    max_err_over_d_rounded: f64,
    /// Blocks skipped because `d` or `min` overflowed fp16.
    overflow_blocks: usize,
    /// Max relative RMSE per data family over the seeds (rows with an fp16
    /// overflow left out).
    per_family: BTreeMap<String, f64>,
}

fn check_block_type(b: &Block) -> Measured {
    let ty = b.ty;
    let bytes = ty.type_size();
    let mut m = Measured::default();
    for seed in SEEDS {
        for (name, x) in varied_rows(COLS, seed) {
            let (q, y) = round_trip(ty, &x);
            let mut row_has_overflow = false;
            for (blk, ((xb, yb), qb)) in x
                .chunks(32)
                .zip(y.chunks(32))
                .zip(q.chunks(bytes))
                .enumerate()
            {
                let d = (b.scale)(xb);
                let d_hat = le_f16(qb, 0);
                assert_eq!(
                    d_hat.to_bits(),
                    f16(d).to_bits(),
                    "{ty} {name} block {blk}: stored scale"
                );
                let (min, m_hat) = if b.has_min {
                    let min = min_max(xb).0;
                    let m_hat = le_f16(qb, 2);
                    assert_eq!(
                        m_hat.to_bits(),
                        f16(min).to_bits(),
                        "{ty} {name} block {blk}: stored min"
                    );
                    (min, m_hat)
                } else {
                    (0.0, 0.0)
                };
                if !d_hat.is_finite() || !m_hat.is_finite() {
                    // ggml's format cannot hold this block: it must decode
                    // non-finite, never as silently wrong finite numbers.
                    assert!(
                        yb.iter().any(|v| !v.is_finite()),
                        "{ty} {name} seed {seed} block {blk}: fp16 overflow should decode non-finite"
                    );
                    m.overflow_blocks += 1;
                    row_has_overflow = true;
                    continue;
                }
                let ad = d.abs();
                let slack = b.q_max * (d - d_hat).abs() + (min - m_hat).abs();
                for (j, (&xi, &yi)) in xb.iter().zip(yb).enumerate() {
                    let err = (xi - yi).abs();
                    let clamped = ad > 0.0 && (xi - min) / d >= b.clamp_from - 1e-4;
                    let c = if clamped { b.c_clamp } else { b.c_round };
                    let bound = c * ad + slack + 1e-5 * (xi.abs() + b.q_max * ad);
                    assert!(
                        err <= bound,
                        "{ty} {name} seed {seed} block {blk} elem {j}: |{xi:e} - {yi:e}| = {err:e} > {bound:e} (d = {d:e}, d̂ = {d_hat:e})"
                    );
                    if ad >= 6.103_515_6e-5 {
                        m.max_err_over_d = m.max_err_over_d.max((err / ad) as f64);
                        if !clamped {
                            m.max_err_over_d_rounded =
                                m.max_err_over_d_rounded.max((err / ad) as f64);
                        }
                    }
                }
            }
            if name == "zero" {
                assert!(
                    y.iter().all(|&v| v == 0.0),
                    "{ty}: zero row must decode to zeros"
                );
            }
            if !row_has_overflow {
                let r = rel_rmse(&x, &y);
                let e = m.per_family.entry(name).or_insert(0.0);
                *e = e.max(r);
            }
        }
    }
    for (name, &r) in &m.per_family {
        if name == "tiny" {
            assert!(
                r <= b.rel_rmse_tiny,
                "{ty} tiny: rel RMSE {r} > {}",
                b.rel_rmse_tiny
            );
            m.max_rel_rmse_tiny = m.max_rel_rmse_tiny.max(r);
        } else {
            assert!(
                r <= b.rel_rmse,
                "{ty} {name}: rel RMSE {r} > {}",
                b.rel_rmse
            );
            m.max_rel_rmse = m.max_rel_rmse.max(r);
        }
    }
    m
}

macro_rules! block_bound_tests {
    ($($name:ident: $i:expr;)*) => {$(
        #[test]
        fn $name() {
            let b = &BLOCKS[$i];
            let m = check_block_type(b);
            println!(
                "{:5} rel RMSE max {:.5} (bound {}), tiny {:.4} (bound {}), max |x-x̂|/|d| {:.4} (not clamped {:.4}), fp16-overflow blocks {}",
                b.ty.name(), m.max_rel_rmse, b.rel_rmse, m.max_rel_rmse_tiny, b.rel_rmse_tiny,
                m.max_err_over_d, m.max_err_over_d_rounded, m.overflow_blocks
            );
            println!("      per family: {:?}", m.per_family);
        }
    )*};
}

block_bound_tests! {
    bounds_q4_0: 0;
    bounds_q4_1: 1;
    bounds_q5_0: 2;
    bounds_q5_1: 3;
    bounds_q8_0: 4;
}

/// F32/F16/BF16: (type, relative half-ulp, absolute floor, overflow limit,
/// rel RMSE bound except `tiny`, rel RMSE bound on `tiny`).
const FLOATS: &[(GgmlType, f32, f32, f32, f64, f64)] = &[
    (GgmlType::F32, 0.0, 0.0, f32::INFINITY, 0.0, 0.0),
    (
        GgmlType::F16,
        1.0 / 2048.0,
        2.980_232_2e-8,
        65520.0,
        3.0e-4,
        0.025,
    ),
    (
        GgmlType::BF16,
        1.0 / 256.0,
        0.0,
        f32::INFINITY,
        2.5e-3,
        2.5e-3,
    ),
];

#[test]
fn bounds_float_types() {
    for &(ty, rel, floor, limit, rmse_bound, rmse_tiny_bound) in FLOATS {
        let mut per_family: BTreeMap<String, f64> = BTreeMap::new();
        let mut overflowed = 0usize;
        for seed in SEEDS {
            for (name, x) in varied_rows(COLS, seed) {
                let (_, y) = round_trip(ty, &x);
                let mut finite = true;
                for (j, (&xi, &yi)) in x.iter().zip(&y).enumerate() {
                    if xi.abs() >= limit {
                        assert!(
                            yi.is_infinite() && yi.signum() == xi.signum(),
                            "{ty} {name}[{j}]"
                        );
                        overflowed += 1;
                        finite = false;
                        continue;
                    }
                    let bound = (rel * xi.abs()).max(floor);
                    let err = (xi - yi).abs();
                    assert!(
                        err <= bound,
                        "{ty} {name} seed {seed}[{j}]: |{xi:e} - {yi:e}| > {bound:e}"
                    );
                }
                if finite {
                    let r = rel_rmse(&x, &y);
                    let e = per_family.entry(name).or_insert(0.0);
                    *e = e.max(r);
                }
            }
        }
        println!(
            "{:5} overflowed elements {overflowed}, rel RMSE per family {per_family:?}",
            ty.name()
        );
        for (name, &r) in &per_family {
            let bound = if name == "tiny" {
                rmse_tiny_bound
            } else {
                rmse_bound
            };
            assert!(r <= bound, "{ty} {name}: rel RMSE {r} > {bound}");
        }
    }
}

const ALL: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
];

#[test]
fn non_finite_input_is_rejected() {
    for &ty in ALL {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.5f32; 64];
            x[37] = bad;
            let mut q = vec![0xAAu8; ty.row_size(64).unwrap()];
            match quantize_row(ty, &x, &mut q) {
                Err(QuantError::NonFinite { index: 37, value }) => {
                    assert_eq!(value.to_bits(), bad.to_bits(), "{ty}");
                }
                other => panic!("{ty} with {bad}: expected NonFinite at 37, got {other:?}"),
            }
        }
    }
}

#[test]
fn zero_rows_round_trip_to_zero() {
    for &ty in ALL {
        let x = vec![0f32; 256];
        let (_, y) = round_trip(ty, &x);
        assert!(y.iter().all(|&v| v == 0.0), "{ty}");
    }
}

// ---- port of llama.cpp tests/test-quantize-fns.cpp (total error part) ----

/// `total_quantization_error` on `test_data = generate_data(0.0, 32*128)`,
/// for every type this file covers. (The file's reference-vs-SIMD and
/// vec_dot checks have no counterpart here: there is one implementation and
/// no dot product.)
#[test]
fn test_quantize_fns_total_error() {
    let test_size = 32 * 128;
    let test_data = generate_data(0.0, test_size, 2.0);
    for &ty in ALL {
        let (_, out) = round_trip(ty, &test_data);
        let total_error = array_rmse(&test_data, &out);
        println!(
            "{:5} absolute quantization error: {total_error:.6}",
            ty.name()
        );
        assert!(
            total_error < MAX_QUANTIZATION_TOTAL_ERROR,
            "{ty}: total quantization error {total_error} >= {MAX_QUANTIZATION_TOTAL_ERROR}"
        );
    }
}

/// The three rounding rules on hand-made blocks whose scale is exactly 1, so
/// `x·id` is `x`: ties are where the rules differ from round-half-even.
/// (The expected values are what libggml-base gives for the same blocks.)
#[test]
fn rounding_rules_follow_ggml() {
    let decode = |ty: GgmlType, x: &[f32]| round_trip(ty, x).1;

    // Q4_0: max = −8 → d = 1; quant = MIN(15, trunc(x + 8.5)) − 8, i.e. ties
    // round up (toward +∞), and x = 8 clamps to 7.
    let mut x = vec![0f32; 32];
    x[0] = -8.0;
    x[1..8].copy_from_slice(&[0.5, -0.5, 1.5, 2.5, -1.5, 8.0, 7.49]);
    let y = decode(GgmlType::Q4_0, &x);
    assert_eq!(&y[1..8], &[1.0, 0.0, 2.0, 3.0, -1.0, 7.0, 7.0]);

    // Q5_0: max = −16 → d = 1; same rule with +16.5 and MIN(31, ·).
    let mut x = vec![0f32; 32];
    x[0] = -16.0;
    x[1..6].copy_from_slice(&[0.5, -2.5, 15.5, 16.0, -15.5]);
    let y = decode(GgmlType::Q5_0, &x);
    assert_eq!(&y[1..6], &[1.0, -2.0, 15.0, 15.0, -15.0]);

    // Q4_1: min = 0, max = 15 → d = 1, m = 0; trunc(x + 0.5): ties up.
    let mut x = vec![0f32; 32];
    x[0] = 15.0;
    x[1..4].copy_from_slice(&[0.5, 2.5, 14.5]);
    let y = decode(GgmlType::Q4_1, &x);
    assert_eq!(&y[1..4], &[1.0, 3.0, 15.0]);

    // Q5_1: min = 0, max = 31 → d = 1; ties up, no clamp needed at 31.
    let mut x = vec![0f32; 32];
    x[0] = 31.0;
    x[1..4].copy_from_slice(&[0.5, 2.5, 30.5]);
    let y = decode(GgmlType::Q5_1, &x);
    assert_eq!(&y[1..4], &[1.0, 3.0, 31.0]);

    // Q8_0: amax = 127 → d = 1; roundf: ties away from zero.
    let mut x = vec![0f32; 32];
    x[0] = 127.0;
    x[1..5].copy_from_slice(&[0.5, -0.5, 2.5, -2.5]);
    let y = decode(GgmlType::Q8_0, &x);
    assert_eq!(&y[1..5], &[1.0, -1.0, 3.0, -3.0]);
}
