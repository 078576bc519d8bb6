//! Error bounds of the encoders in this family, on varied data, and the
//! checks of llama.cpp's `tests/test-quantize-fns.cpp` that apply to a
//! quantize → dequantize round trip.
//!
//! Bounds, per block (or sub-block) with scale `s` as decoded from the bytes
//! (floored at the format's smallest step, so that a scale that underflowed
//! to 0 still gives a finite unit):
//!
//! | type   | unit `s`                                  | max-abs error           | measured |
//! |--------|-------------------------------------------|-------------------------|----------|
//! | iq4_nl | fp16 `d` of the 32-block                  | 16 s + 127·2^-25        | 13.29 s  |
//! | iq4_xs | `d·max(|ls−32|, 1)` of the 32-block       | 24 s + 32·127·2^-25     | 19.81 s  |
//! | mxfp4  | `2^(e−128)` (E8M0, halved like ggml)      | 4 s                     | 3.998 s  |
//! | nvfp4  | UE4M3 scale of the 16-block               | 2 s + 6·2^-10           | 1.962 s  |
//! | tq1_0  | fp16 `d` = absmax of the 256-block        | 0.5·(1+2^-10) s + 2^-25 | 0.4999 s |
//! | tq2_0  | same                                      | same                    | 0.4999 s |
//! | q2_0   | fp16 `d` = absmax of the 64-block         | same                    | 0.5 s    |
//! | q1_0   | fp16 `d` = mean abs of the 128-block      | 127·(1+2^-10) s + 2^-17, signs kept | 121.9 s |
//!
//! The slack terms are what rounding a tiny scale to a subnormal (or zero)
//! costs. mxfp4, nvfp4, tq*, q*_0 bounds follow from the code (half the
//! largest codebook gap, plus clipping for the power-of-two and UE4M3
//! scales; q1_0: amax ≤ 128·mean).
//! The iq4 bounds cannot be derived from the code alone (ggml's scale search
//! may clip the largest value beyond half a codebook gap, 12 s); they are the
//! measured maxima over the seeds below with margin, and printed.
//! Relative RMSE bounds (per row, Gaussian-like rows): iq4_* 0.12 (measured
//! 0.104), mxfp4 0.2 (0.145), nvfp4 0.15 (0.108), ternary and q1_0 0.95
//! (0.72–0.84: absmax-scaled ternary codes zero most Gaussian weights; these
//! formats are meant for ternary weights, see `ternary_weights_are_exact`). Out of range: tq*/q2_0 store the absmax as
//! fp16, so a block with |x| > 65504 gets an infinite scale (ggml does the
//! same; asserted below), and nvfp4 saturates its scale at 448, clipping
//! |x| to 12·224.

mod common;
use common::{array_rmse, generate_data};

use qresidual_quant::ggml::common::le_f16;
use qresidual_quant::ggml::mxfp4::{e8m0_to_fp32_half, ue4m3_to_fp32};
use qresidual_quant::{dequantize_row, quantize_row, GgmlType, QuantError};

const FP16_QUANTUM: f32 = 5.960_464_5e-8; // 2^-24

struct Spec {
    ty: GgmlType,
    /// Elements per scale.
    sub: usize,
    /// The scale of sub-block `s` of a block.
    unit: fn(&[u8], usize) -> f32,
    /// Max |x − y| in units …
    max_units: f32,
    /// … plus this absolute slack: what rounding a tiny scale to a
    /// subnormal fp16 (absolute step 2^-24) can cost.
    slack: f32,
    /// Max relative RMSE per row (‖x − y‖ / ‖x‖) on the Gaussian-like rows.
    max_rel_rmse: f64,
    /// Largest |x| the format can scale to.
    range: f32,
    /// test-quantize-fns threshold for `array_rmse` on 0.1 + 2cos(i).
    fns_threshold: f32,
}

fn unit_iq4_nl(b: &[u8], _: usize) -> f32 {
    le_f16(b, 0).abs()
}

fn unit_iq4_xs(b: &[u8], ib: usize) -> f32 {
    let d = le_f16(b, 0);
    let scales_h = u16::from_le_bytes([b[2], b[3]]) as i32;
    let ls = ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xf) | (((scales_h >> (2 * ib)) & 3) << 4);
    (d * (ls - 32).abs().max(1) as f32).abs()
}

fn unit_mxfp4(b: &[u8], _: usize) -> f32 {
    e8m0_to_fp32_half(b[0])
}

fn unit_nvfp4(b: &[u8], s: usize) -> f32 {
    ue4m3_to_fp32(b[s])
}

fn unit_tail_f16(b: &[u8], _: usize) -> f32 {
    le_f16(b, b.len() - 2).abs()
}

fn unit_head_f16(b: &[u8], _: usize) -> f32 {
    le_f16(b, 0).abs()
}

/// NVFP4 stores amax/6 as UE4M3 with subnormal step 2^-9 (decoded 2^-10):
/// a sub-block with amax < 6·2^-10 decodes to zeros, and in the subnormal
/// range clipping at 12·s can cost up to 6·2^-10.
const NVFP4_SLACK: f32 = 6.0 / 1024.0;

const HALF: f32 = 0.5 * (1.0 + 1.0 / 1024.0);

fn specs() -> Vec<Spec> {
    vec![
        Spec {
            ty: GgmlType::IQ4_NL,
            sub: 32,
            unit: unit_iq4_nl,
            max_units: 16.0,
            slack: 127.0 * FP16_QUANTUM / 2.0,
            max_rel_rmse: 0.12,
            range: f32::MAX,
            fns_threshold: 0.002,
        },
        Spec {
            ty: GgmlType::IQ4_XS,
            sub: 32,
            unit: unit_iq4_xs,
            max_units: 24.0,
            slack: 32.0 * 127.0 * FP16_QUANTUM / 2.0,
            max_rel_rmse: 0.12,
            range: f32::MAX,
            fns_threshold: 0.002,
        },
        Spec {
            ty: GgmlType::MXFP4,
            sub: 32,
            unit: unit_mxfp4,
            max_units: 4.0,
            slack: 0.0,
            max_rel_rmse: 0.2,
            range: f32::MAX,
            fns_threshold: 0.002,
        },
        Spec {
            ty: GgmlType::NVFP4,
            sub: 16,
            unit: unit_nvfp4,
            max_units: 2.0,
            slack: NVFP4_SLACK,
            max_rel_rmse: 0.15,
            range: 6.0 * 448.0,
            fns_threshold: 0.003,
        },
        Spec {
            ty: GgmlType::TQ1_0,
            sub: 256,
            unit: unit_tail_f16,
            max_units: HALF,
            slack: FP16_QUANTUM / 2.0,
            max_rel_rmse: 0.95,
            range: 65504.0,
            fns_threshold: 0.01,
        },
        Spec {
            ty: GgmlType::TQ2_0,
            sub: 256,
            unit: unit_tail_f16,
            max_units: HALF,
            slack: FP16_QUANTUM / 2.0,
            max_rel_rmse: 0.95,
            range: 65504.0,
            fns_threshold: 0.01,
        },
        Spec {
            ty: GgmlType::Q2_0,
            sub: 64,
            unit: unit_head_f16,
            max_units: HALF,
            slack: FP16_QUANTUM / 2.0,
            max_rel_rmse: 0.95,
            range: 65504.0,
            fns_threshold: 0.01,
        },
        Spec {
            ty: GgmlType::Q1_0,
            sub: 128,
            unit: unit_head_f16,
            max_units: 127.0 * (1.0 + 1.0 / 1024.0),
            slack: 128.0 * FP16_QUANTUM,
            max_rel_rmse: 0.95,
            range: f32::MAX,
            fns_threshold: 0.025,
        },
    ]
}

fn round_trip(ty: GgmlType, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut q = vec![0u8; ty.row_size(x.len()).unwrap()];
    quantize_row(ty, x, &mut q).unwrap();
    let mut y = vec![0f32; x.len()];
    dequantize_row(ty, &q, &mut y).unwrap();
    (q, y)
}

fn rel_rmse(x: &[f32], y: &[f32]) -> f64 {
    let (mut e, mut n) = (0f64, 0f64);
    for (&a, &b) in x.iter().zip(y) {
        e += (a as f64 - b as f64).powi(2);
        n += (a as f64).powi(2);
    }
    if n == 0.0 {
        e.sqrt()
    } else {
        (e / n).sqrt()
    }
}

const SEEDS: [u64; 4] = [1, 2, 3, 0xC0FFEE];
/// Rows whose relative RMSE is a meaningful quality number (not constant
/// or single-outlier rows, where it says more about the data than the codec).
const RMSE_ROWS: [&str; 4] = ["gaussian", "student_t3", "half_zero_blocks", "cos"];

#[test]
fn round_trip_error_within_stated_bounds() {
    let cols = 1024;
    for spec in specs() {
        let ty = spec.ty;
        let bs = ty.block_size();
        let (mut worst_units, mut worst_rmse, mut out_of_range) = (0f32, 0f64, 0usize);
        for seed in SEEDS {
            for (name, x) in common::varied_rows(cols, seed) {
                let (q, y) = round_trip(ty, &x);
                for (bi, (xb, (yb, qb))) in x
                    .chunks(bs)
                    .zip(y.chunks(bs).zip(q.chunks(ty.type_size())))
                    .enumerate()
                {
                    for (s, (xs, ys)) in xb.chunks(spec.sub).zip(yb.chunks(spec.sub)).enumerate() {
                        let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
                        if amax > spec.range {
                            out_of_range += 1;
                            if spec.range == 65504.0 {
                                assert!(
                                    ys.iter().any(|v| !v.is_finite()),
                                    "{ty} {name}: fp16 absmax scale should overflow"
                                );
                            } else {
                                assert!(ys.iter().all(|v| v.abs() <= 12.0 * 224.0));
                            }
                            continue;
                        }
                        let unit = (spec.unit)(qb, s);
                        for (j, (&a, &b)) in xs.iter().zip(ys).enumerate() {
                            let err = (a - b).abs();
                            let units = (err - spec.slack).max(0.0) / unit;
                            if err > spec.slack {
                                worst_units = worst_units.max(units);
                            }
                            assert!(
                                err <= spec.max_units * unit + spec.slack,
                                "{ty} seed {seed} row {name} block {bi} sub {s} elem {j}: x {a:e} y {b:e} error {err:e} > {} units of {unit:e} + {:e}",
                                spec.max_units, spec.slack
                            );
                            if ty == GgmlType::Q1_0 {
                                assert_eq!(b >= 0.0, a >= 0.0, "q1_0 keeps signs");
                            }
                        }
                    }
                }
                if RMSE_ROWS.contains(&name.as_str()) {
                    let r = rel_rmse(&x, &y);
                    worst_rmse = worst_rmse.max(r);
                    assert!(
                        r <= spec.max_rel_rmse,
                        "{ty} seed {seed} row {name}: relative RMSE {r:.4} > {}",
                        spec.max_rel_rmse
                    );
                }
            }
        }
        println!(
            "{ty:7} max-abs {worst_units:8.4} units (bound {:8.4}), relative RMSE {worst_rmse:.4} (bound {}), {out_of_range} sub-blocks out of range",
            spec.max_units, spec.max_rel_rmse
        );
    }
}

#[test]
fn ternary_weights_are_exact() {
    // What TQ1_0/TQ2_0/Q2_0 are for: weights in {-a, 0, a}; Q1_0: {-a, a}.
    let mut rng = common::Rng::new(9);
    for a in [1.0f32, 0.013671875, 1536.0] {
        let ternary: Vec<f32> = (0..1024)
            .map(|i| if i % 97 == 0 { 1.0 } else { (rng.next_u64() % 3) as f32 - 1.0 } * a)
            .collect();
        for ty in [GgmlType::TQ1_0, GgmlType::TQ2_0, GgmlType::Q2_0] {
            let (_, y) = round_trip(ty, &ternary);
            assert_eq!(y, ternary, "{ty} a={a}");
        }
        let binary: Vec<f32> = ternary
            .iter()
            .map(|&v| if v < 0.0 { -a } else { a })
            .collect();
        let (_, y) = round_trip(GgmlType::Q1_0, &binary);
        assert_eq!(y, binary, "q1_0 a={a}");
    }
}

#[test]
fn zero_rows_round_trip_exactly() {
    for spec in specs() {
        let x = vec![0f32; 512];
        let (_, y) = round_trip(spec.ty, &x);
        assert!(y.iter().all(|&v| v == 0.0), "{}", spec.ty);
        let mut x = vec![0f32; 512];
        x[300] = -0.0;
        let (_, y) = round_trip(spec.ty, &x);
        assert!(y.iter().all(|&v| v == 0.0), "{}", spec.ty);
    }
}

#[test]
fn non_finite_input_is_rejected() {
    for spec in specs() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let mut x = vec![0.25f32; 512];
            x[77] = bad;
            let mut q = vec![0u8; spec.ty.row_size(512).unwrap()];
            match quantize_row(spec.ty, &x, &mut q) {
                Err(QuantError::NonFinite { index: 77, .. }) => {}
                other => panic!("{} with {bad}: {other:?}", spec.ty),
            }
        }
    }
}

#[test]
fn test_quantize_fns_total_error() {
    let test_size = 32 * 128;
    let data = generate_data(0.0, test_size, 2.0);
    let data2 = generate_data(1.0, test_size, 2.0);
    for spec in specs() {
        let (_, y) = round_trip(spec.ty, &data);
        let err = array_rmse(&data, &y);
        // The dot-product check, with the second operand kept in f32 (ggml
        // quantizes it to the vec_dot type, which only adds error).
        let dot =
            |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(&p, &q)| (p * q) as f64).sum::<f64>();
        let dot_err = ((dot(&y, &data2) - dot(&data, &data2)).abs() / test_size as f64) as f32;
        let dot_threshold = match spec.ty {
            GgmlType::Q1_0 => 0.40,
            GgmlType::TQ1_0 | GgmlType::TQ2_0 | GgmlType::Q2_0 => 0.15,
            GgmlType::NVFP4 => 0.03,
            _ => 0.02,
        };
        println!(
            "{:7} test-quantize-fns: absolute quantization error {err:.6} (threshold {}), dot product error {dot_err:.6} (threshold {dot_threshold})",
            spec.ty, spec.fns_threshold
        );
        assert!(err < spec.fns_threshold, "{}: {err}", spec.ty);
        assert!(dot_err < dot_threshold, "{}: dot {dot_err}", spec.ty);
    }
}
