//! One test suite, run against every instruction-set variant of the
//! encoders (`qresidual_quant::ggml::isa`), as sonos/tract does for its
//! `linalg` kernels: each variant must reproduce ggml's golden bytes
//! (`fixtures/golden`) and, on random data of many shapes, the scalar
//! reference byte for byte.
mod common;

use common::{cases, golden_bytes, golden_floats, Rng};
use qresidual_quant::ggml::isa::{dequantize_fn, quantize_fn, Isa};
use qresidual_quant::GgmlType;

/// The types with more than one variant.
const TYPES: &[GgmlType] = &[
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::BF16,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::MXFP4,
];

/// The types whose decoder has more than one variant.
const DECODE_TYPES: &[GgmlType] = &[
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

fn decode(isa: Isa, ty: GgmlType, q: &[u8]) -> Vec<u32> {
    let f = dequantize_fn(isa, ty).unwrap_or_else(|| panic!("{} has no {ty} decoder", isa.name()));
    let mut out = vec![0f32; q.len() / ty.type_size() * ty.block_size()];
    f(q, &mut out);
    out.iter().map(|v| v.to_bits()).collect()
}

/// ggml's golden bytes decode to ggml's golden floats, bit for bit.
fn check_decode_golden(isa: Isa) {
    for &ty in DECODE_TYPES {
        for case in cases() {
            let got = decode(isa, ty, &golden_bytes(&case.name, ty));
            let want: Vec<u32> = golden_floats(&case.name, ty)
                .iter()
                .map(|v| v.to_bits())
                .collect();
            assert!(
                got == want,
                "{} {ty} decode differs from ggml on '{}'",
                isa.name(),
                case.name
            );
        }
    }
}

/// Random bytes (every bit pattern of scales and quants, NaN and Inf
/// scales included) decode exactly as the scalar reference decodes them.
fn check_decode_random(isa: Isa) {
    let mut r = Rng::new(7);
    for &ty in DECODE_TYPES {
        for blocks in [1usize, 3, 64] {
            // Float rows of 8k+3 elements also exercise the scalar tail.
            let extra = if ty.block_size() == 1 { 3 } else { 0 };
            let n = (blocks * 256 / ty.block_size() + extra) * ty.type_size();
            let q: Vec<u8> = (0..n).map(|_| r.next_u64() as u8).collect();
            let got = decode(isa, ty, &q);
            let want = decode(Isa::Scalar, ty, &q);
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{} {ty} decode differs at element {i}: {:#x} vs {:#x}",
                    isa.name(),
                    got[i],
                    want[i]
                );
            }
        }
    }
}

fn encode(isa: Isa, ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let f = quantize_fn(isa, ty).unwrap_or_else(|| panic!("{} has no {ty} encoder", isa.name()));
    let mut out = vec![0u8; x.len() / ty.block_size() * ty.type_size()];
    f(x, &mut out);
    out
}

/// `fixtures/golden_iq` edge-case inputs (huge, tiny, powers of two, …)
/// that ggml encoded without an importance matrix.
fn golden_iq_edges() -> Vec<(String, GgmlType, Vec<f32>, Vec<u8>)> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden_iq");
    let manifest = std::fs::read_to_string(dir.join("manifest.txt")).expect("golden_iq manifest");
    let mut out = Vec::new();
    for line in manifest.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 5 || f[4] != "quantize" {
            continue;
        }
        let Some(&ty) = TYPES.iter().find(|t| t.name() == f[1]) else {
            continue;
        };
        let x: Vec<f32> = std::fs::read(dir.join(format!("{}.f32", f[0])))
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let q = std::fs::read(dir.join(format!("{}.{}.q", f[0], f[1]))).unwrap();
        out.push((f[0].to_string(), ty, x, q));
    }
    assert!(out.len() >= 4, "too few golden_iq edge vectors");
    out
}

fn check_golden(isa: Isa) {
    for (case, ty, x, want) in golden_iq_edges() {
        assert_eq!(
            encode(isa, ty, &x),
            want,
            "{} {ty} on golden_iq '{case}'",
            isa.name()
        );
    }
    for &ty in TYPES {
        for case in cases() {
            let got = encode(isa, ty, &case.input);
            let want = golden_bytes(&case.name, ty);
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                panic!(
                    "{} {ty} differs from ggml on '{}' at byte {i} (block {})",
                    isa.name(),
                    case.name,
                    i / ty.type_size()
                );
            }
            assert_eq!(got.len(), want.len());
        }
    }
}

/// Rows of 1024 values (12 kinds, row % 12, kind 9 mixing them per 16) drawn from shapes that stress the searches:
/// Gaussian at several scales, heavy tails, one large outlier, a coarse grid
/// (rounding ties), integers, sparse, one-signed, constant and zero runs, and
/// sub-blocks mixing all of them.
fn random_rows(seed: u64, rows: usize) -> Vec<f32> {
    const ROW: usize = 1024;
    let mut r = Rng::new(seed);
    let mut out = Vec::with_capacity(rows * ROW);
    for row in 0..rows {
        for i in 0..ROW {
            let kind = if row % 10 == 9 {
                (i / 16) % 9
            } else {
                row % 10
            };
            let u = r.uniform() * 2.0 - 1.0;
            let v = match kind {
                0 => r.normal() * 0.02,
                1 => r.normal() * 1e3,
                2 => r.student_t(3.0) * 0.05,
                3 => {
                    if i % 97 == 0 {
                        40.0
                    } else {
                        r.normal() * 0.01
                    }
                }
                4 => (u * 16.0).round() / 8.0,
                5 => (u * 4.0).round(),
                6 => {
                    if r.uniform() < 0.1 {
                        u
                    } else {
                        0.0
                    }
                }
                7 => u.abs() * 1e-3,
                8 => {
                    if (i / 32) % 2 == 0 {
                        0.25
                    } else {
                        0.0
                    }
                }
                9 => r.normal() * 1e-6,
                // Squares overflow to inf: the searches meet inf and NaN.
                10 => r.normal() * 1e30,
                _ => r.normal() * 1e-41,
            };
            out.push(v as f32);
        }
    }
    out
}

fn check_against_scalar(isa: Isa) {
    for seed in 0..4u64 {
        let x = random_rows(seed, 48);
        for &ty in TYPES {
            let want = encode(Isa::Scalar, ty, &x);
            let got = encode(isa, ty, &x);
            if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
                let blk = i / ty.type_size();
                let xb = &x[blk * ty.block_size()..(blk + 1) * ty.block_size()];
                panic!(
                    "{} {ty} differs from scalar (seed {seed}) at byte {i}, block {blk}: {xb:?}",
                    isa.name()
                );
            }
        }
    }
}

/// Rows whose block count is not a multiple of what a variant encodes at
/// once: IQ4_NL blocks go eight to a vector (the tail through the one-block
/// path), Q3_K super-blocks up to four at a time.
fn check_ragged(isa: Isa) {
    let x = random_rows(99, 3);
    for n in [32usize, 96, 224, 288, 1000 / 32 * 32] {
        let want = encode(Isa::Scalar, GgmlType::IQ4_NL, &x[..n]);
        assert_eq!(
            encode(isa, GgmlType::IQ4_NL, &x[..n]),
            want,
            "{} n={n}",
            isa.name()
        );
    }
    for blocks in 1..=9usize {
        let n = blocks * 256;
        for &ty in TYPES.iter().filter(|t| t.block_size() == 256) {
            let want = encode(Isa::Scalar, ty, &x[..n]);
            assert_eq!(encode(isa, ty, &x[..n]), want, "{} {ty} n={n}", isa.name());
        }
    }
}

/// Blocks where the order of the scalar scans shows: zeros of both signs
/// (the first one met is the block's min/max and its sign is stored), ties
/// of magnitude, tiny values whose `1.0f/d` overflows (C casts the NaN/inf
/// to quant 0), and spans that round at the clamp.
fn edge_blocks() -> Vec<f32> {
    let mut rows: Vec<[f32; 32]> = Vec::new();
    for (a, b) in [(0.0f32, -0.0f32), (-0.0, 0.0)] {
        rows.push(std::array::from_fn(|i| if i % 2 == 0 { a } else { b }));
        rows.push(std::array::from_fn(|i| if i == 0 { a } else { b }));
        // Positive (negative) elements with signed zeros as the min (max).
        rows.push(std::array::from_fn(|i| match i % 3 {
            0 => a,
            1 => b,
            _ => i as f32,
        }));
        rows.push(std::array::from_fn(|i| match i % 3 {
            0 => a,
            1 => b,
            _ => -(i as f32),
        }));
    }
    rows.push(std::array::from_fn(|i| if i % 2 == 0 { 3.0 } else { -3.0 }));
    rows.push(std::array::from_fn(|i| if i % 2 == 0 { -3.0 } else { 3.0 }));
    for tiny in [1e-45f32, 3e-45, 2e-44, 1e-40, 2e-38] {
        rows.push(std::array::from_fn(|i| tiny * (i % 5) as f32));
        rows.push(std::array::from_fn(|i| -tiny * (i % 7) as f32));
    }
    rows.push(std::array::from_fn(|i| i as f32 * 0.5 - 8.0));
    rows.push(std::array::from_fn(|i| 1e30 * (i as f32 - 15.5)));
    rows.push([7.25; 32]);
    rows.push([-7.25; 32]);
    rows.concat()
}

fn check_edges(isa: Isa) {
    let x = edge_blocks();
    for &ty in TYPES.iter().filter(|t| t.block_size() == 32) {
        let want = encode(Isa::Scalar, ty, &x);
        let got = encode(isa, ty, &x);
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            let blk = i / ty.type_size();
            panic!(
                "{} {ty} differs from scalar at byte {i}, block {blk}: {:?}",
                isa.name(),
                &x[blk * 32..blk * 32 + 32]
            );
        }
    }
}

macro_rules! variant_suite {
    ($name:ident, $isa:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn is_available_here() {
                assert!($isa.is_available(), "{} is not available", $isa.name());
            }

            #[test]
            fn quantize_matches_ggml_golden() {
                check_golden($isa);
            }

            #[test]
            fn quantize_matches_scalar_on_random_data() {
                check_against_scalar($isa);
            }

            #[test]
            fn dequantize_matches_ggml_golden() {
                check_decode_golden($isa);
            }

            #[test]
            fn dequantize_matches_scalar_on_random_bytes() {
                check_decode_random($isa);
            }

            #[test]
            fn edge_blocks_match_scalar() {
                check_edges($isa);
            }

            #[test]
            fn ragged_block_counts_match_scalar() {
                check_ragged($isa);
            }
        }
    };
}

variant_suite!(scalar, Isa::Scalar);
// Every x86-64 machine this project targets has AVX2; the suite fails
// (rather than skips) if it does not.
#[cfg(target_arch = "x86_64")]
variant_suite!(avx2, Isa::Avx2);

#[test]
fn types_without_variants_are_refused() {
    // IQ2_XXS has no encoder variant, Q2_K no decoder variant: asking for
    // one must say so.
    assert!(quantize_fn(Isa::Avx2, GgmlType::IQ2_XXS).is_none());
    assert!(quantize_fn(Isa::Scalar, GgmlType::IQ2_XXS).is_none());
    assert!(dequantize_fn(Isa::Avx2, GgmlType::Q2_K).is_none());
}
