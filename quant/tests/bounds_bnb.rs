//! Error bounds of the bitsandbytes codecs on varied data.
//!
//! Stated bounds (x an element, a its block's absmax, c the code table):
//! - NF4 / FP4: the chosen code is the nearest table value to `x / a` (up to
//!   f32 rounding of the scaling), hence `|x - deq| <= g/2 * a` with `g` the
//!   widest gap of the table: NF4 `g/2 = 0.1519` (between -1 and -0.696),
//!   FP4 `g/2 = 0.1667` (between 2/3 and 1). Constant and zero blocks are exact.
//! - Double quant: the absmax comes back within `0.0071 * a2` (`a2` the
//!   nested block's max |absmax - offset|): half the widest step of the
//!   dynamic map (its top decade has 64 steps: 0.9/64/2 = 0.00703) plus the
//!   65536-bin lookup's slack (1.5e-5).
//!   Elements then stay within `g/2 * a + |a - a'|`.
//! - LLM.int8: `|x - deq| <= SCB / 254` (round to nearest) plus f32 rounding.
//!
//! Relative RMSE (error RMS / data RMS), bs 64, measured (printed with
//! `--nocapture`) and checked with some room: Gaussian NF4 0.092, FP4 0.122;
//! Student-t(3) NF4 0.126, FP4 0.194; LLM.int8 Gaussian rows 0.0079.

mod common;

use common::varied_rows;
use qresidual_quant::bnb::{
    dequantize_4bit, dequantize_int8_rows, quantize_4bit, quantize_int8_rows, FourBit,
    NestedAbsmax, NESTED_BLOCKSIZE,
};
use qresidual_quant::stats::ErrorStats;

fn half_max_gap(kind: FourBit) -> f64 {
    let mut c: Vec<f64> = kind.code().iter().map(|&v| v as f64).collect();
    c.sort_by(|a, b| a.partial_cmp(b).unwrap());
    c.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max) / 2.0
}

fn roundtrip_4bit(kind: FourBit, x: &[f32], bs: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let (packed, absmax) = quantize_4bit(kind, x, bs).unwrap();
    let mut out = vec![0.0; x.len()];
    dequantize_4bit(kind, &packed, &absmax, bs, x.len(), &mut out).unwrap();
    (packed, absmax, out)
}

fn nibble(packed: &[u8], i: usize) -> usize {
    let b = packed[i / 2];
    (if i.is_multiple_of(2) { b >> 4 } else { b & 0xF }) as usize
}

/// Data: every varied row, at a length with a partial last block.
fn data() -> Vec<(String, Vec<f32>)> {
    let mut v = varied_rows(1000, 7);
    v.extend(varied_rows(4096, 11));
    v
}

#[test]
fn fourbit_nearest_code_and_block_bound() {
    for kind in [FourBit::Nf4, FourBit::Fp4] {
        let code = kind.code();
        let bound = half_max_gap(kind);
        for bs in [32, 64, 128, 4096] {
            for (name, x) in data() {
                let (packed, absmax, out) = roundtrip_4bit(kind, &x, bs);
                for (i, (&xi, &oi)) in x.iter().zip(&out).enumerate() {
                    let a = absmax[i / bs] as f64;
                    let err = (xi as f64 - oi as f64).abs();
                    assert!(
                        err <= bound * a * (1.0 + 1e-6),
                        "{kind:?} bs{bs} {name}[{i}]: err {err} > {bound} * {a}"
                    );
                    if a > 0.0 {
                        let s = xi as f64 / a;
                        let chosen = (s - code[nibble(&packed, i)] as f64).abs();
                        let best = code
                            .iter()
                            .map(|&c| (s - c as f64).abs())
                            .fold(1.0, f64::min);
                        assert!(
                            chosen <= best + 1e-6,
                            "{kind:?} bs{bs} {name}[{i}]: code not nearest ({chosen} vs {best})"
                        );
                    }
                }
                if name.starts_with("constant") || name == "zero" {
                    assert_eq!(out, x, "{kind:?} bs{bs} {name}: not exact");
                }
            }
        }
    }
}

#[test]
fn fourbit_relative_rmse_on_gaussian_and_heavy_tails() {
    // (kind, gaussian bound, student-t bound) at bs 64.
    for (kind, g_bound, t_bound) in [(FourBit::Nf4, 0.10, 0.16), (FourBit::Fp4, 0.13, 0.22)] {
        for (name, bound) in [("gaussian", g_bound), ("student_t3", t_bound)] {
            let mut st = ErrorStats::default();
            for seed in 0..8 {
                let x = varied_rows(4096, 100 + seed)
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .unwrap()
                    .1;
                let (_, _, out) = roundtrip_4bit(kind, &x, 64);
                st.accumulate(&x, &out);
            }
            println!(
                "{kind:?} {name} bs64 relative RMSE {:.4}",
                st.relative_rmse()
            );
            assert!(
                st.relative_rmse() < bound,
                "{kind:?} {name}: {}",
                st.relative_rmse()
            );
            assert!(
                st.relative_rmse() > 0.01,
                "{kind:?} {name}: suspiciously exact"
            );
        }
    }
}

#[test]
fn double_quant_absmax_bound() {
    for kind in [FourBit::Nf4, FourBit::Fp4] {
        let bound = half_max_gap(kind);
        // Enough blocks for two nested blocks (> 256 absmax at bs 32).
        let x: Vec<f32> = (0..12)
            .flat_map(|s| varied_rows(1000, 40 + s))
            .flat_map(|(_, r)| r)
            .collect();
        let bs = 32;
        let (packed, absmax) = quantize_4bit(kind, &x, bs).unwrap();
        assert!(absmax.len() > NESTED_BLOCKSIZE);
        let nested = NestedAbsmax::quantize(&absmax).unwrap();
        let back = nested.dequantize().unwrap();
        for (j, (&a, &b)) in absmax.iter().zip(&back).enumerate() {
            let a2 = nested.absmax2[j / NESTED_BLOCKSIZE] as f64;
            let err = (a as f64 - b as f64).abs();
            assert!(
                err <= 0.0071 * a2 + 1e-6 * a as f64,
                "{kind:?} absmax[{j}]: {err} vs a2 {a2}"
            );
        }
        let mut out = vec![0.0; x.len()];
        dequantize_4bit(kind, &packed, &back, bs, x.len(), &mut out).unwrap();
        for (i, (&xi, &oi)) in x.iter().zip(&out).enumerate() {
            let (a, b) = (absmax[i / bs] as f64, back[i / bs] as f64);
            let err = (xi as f64 - oi as f64).abs();
            assert!(
                err <= (bound * a + (a - b).abs()) * (1.0 + 1e-6) + 1e-30,
                "{kind:?} dq [{i}]: {err}"
            );
        }
    }
}

#[test]
fn int8_row_bound_and_rmse() {
    let cols = 1000;
    let rows = varied_rows(cols, 5);
    let x: Vec<f32> = rows.iter().flat_map(|(_, r)| r.clone()).collect();
    let (cb, scb) = quantize_int8_rows(&x, cols).unwrap();
    let mut out = vec![0.0; x.len()];
    dequantize_int8_rows(&cb, &scb, cols, &mut out).unwrap();
    for (i, (&xi, &oi)) in x.iter().zip(&out).enumerate() {
        let s = scb[i / cols] as f64;
        let err = (xi as f64 - oi as f64).abs();
        assert!(
            err <= s / 254.0 * (1.0 + 1e-5),
            "int8 [{i}] ({}): {err} vs SCB {s}",
            rows[i / cols].0
        );
    }
    let mut st = ErrorStats::default();
    let g = &rows.iter().find(|(n, _)| n == "gaussian").unwrap().1;
    let (cb, scb) = quantize_int8_rows(g, cols).unwrap();
    let mut o = vec![0.0; cols];
    dequantize_int8_rows(&cb, &scb, cols, &mut o).unwrap();
    st.accumulate(g, &o);
    println!("int8 gaussian relative RMSE {:.5}", st.relative_rmse());
    assert!(st.relative_rmse() < 0.012 && st.relative_rmse() > 0.001);
}
