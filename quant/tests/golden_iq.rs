//! Bit-exact checks of the i-quant, FP4 and ternary codecs against ggml.
//!
//! Two sources: `fixtures/golden` (gen_golden.py, no importance matrix:
//! iq4_nl, iq4_xs, tq1_0, tq2_0, mxfp4) through the shared harness, and
//! `fixtures/golden_iq` (gen_golden_iq.py: grid types quantized by ggml with
//! an importance matrix, random-byte blocks, nvfp4/q1_0/q2_0, edge cases).

mod common;

use std::path::PathBuf;

use qresidual_quant::{dequantize_row, quantize_row, GgmlType, QuantError};

struct Vector {
    case: String,
    rows: usize,
    cols: usize,
    kind: String,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden_iq")
}

fn read(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn floats(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The manifest lines for `ty`.
fn vectors(ty: GgmlType) -> Vec<Vector> {
    let text = String::from_utf8(read("manifest.txt")).unwrap();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 5 && f[1] == ty.name()).then(|| Vector {
                case: f[0].to_string(),
                rows: f[2].parse().unwrap(),
                cols: f[3].parse().unwrap(),
                kind: f[4].to_string(),
            })
        })
        .collect()
}

/// Our decode of every golden_iq block of `ty` equals ggml's to_float.
/// Returns the number of vectors checked (asserted non-zero).
fn check_dequantize(ty: GgmlType) -> usize {
    let vs = vectors(ty);
    assert!(!vs.is_empty(), "no golden_iq vectors for {ty}");
    for v in &vs {
        let q = read(&format!("{}.{}.q", v.case, ty.name()));
        let want = floats(&read(&format!("{}.{}.deq", v.case, ty.name())));
        let row_bytes = ty.row_size(v.cols).unwrap();
        assert_eq!(q.len(), row_bytes * v.rows, "{} {ty}", v.case);
        let mut got = vec![0f32; v.rows * v.cols];
        for (src, dst) in q.chunks(row_bytes).zip(got.chunks_mut(v.cols)) {
            dequantize_row(ty, src, dst).unwrap();
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{ty} dequantize differs from ggml on {} ({}) at element {i} (block {}): ours {a:e}, ggml {b:e}",
                v.case,
                v.kind,
                (i % v.cols) / ty.block_size()
            );
        }
    }
    vs.len()
}

/// Our encode of every no-imatrix golden_iq input equals ggml's bytes.
fn check_quantize(ty: GgmlType) -> usize {
    let vs: Vec<Vector> = vectors(ty)
        .into_iter()
        .filter(|v| v.kind == "quantize")
        .collect();
    assert!(!vs.is_empty(), "no golden_iq quantize vectors for {ty}");
    for v in &vs {
        let x = floats(&read(&format!("{}.f32", v.case)));
        let want = read(&format!("{}.{}.q", v.case, ty.name()));
        let row_bytes = ty.row_size(v.cols).unwrap();
        let mut got = vec![0u8; row_bytes * v.rows];
        for (src, dst) in x.chunks(v.cols).zip(got.chunks_mut(row_bytes)) {
            quantize_row(ty, src, dst).unwrap();
        }
        if got != want {
            let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "{ty} quantize differs from ggml on {} at byte {i} (row {}, block {}): ours {:#04x}, ggml {:#04x}",
                v.case,
                i / row_bytes,
                (i % row_bytes) / ty.type_size(),
                got[i],
                want[i]
            );
        }
    }
    vs.len()
}

macro_rules! dequantize_tests {
    ($($name:ident => $ty:ident,)*) => {$(
        #[test]
        fn $name() {
            check_dequantize(GgmlType::$ty);
        }
    )*};
}

dequantize_tests! {
    dequantize_iq1_s_matches_ggml => IQ1_S,
    dequantize_iq1_m_matches_ggml => IQ1_M,
    dequantize_iq2_xxs_matches_ggml => IQ2_XXS,
    dequantize_iq2_xs_matches_ggml => IQ2_XS,
    dequantize_iq2_s_matches_ggml => IQ2_S,
    dequantize_iq3_xxs_matches_ggml => IQ3_XXS,
    dequantize_iq3_s_matches_ggml => IQ3_S,
    dequantize_iq4_nl_edges_and_random_match_ggml => IQ4_NL,
    dequantize_iq4_xs_edges_and_random_match_ggml => IQ4_XS,
    dequantize_mxfp4_edges_and_random_match_ggml => MXFP4,
    dequantize_tq1_0_edges_and_random_match_ggml => TQ1_0,
    dequantize_tq2_0_edges_and_random_match_ggml => TQ2_0,
    dequantize_nvfp4_matches_ggml => NVFP4,
    dequantize_q1_0_matches_ggml => Q1_0,
    dequantize_q2_0_matches_ggml => Q2_0,
}

macro_rules! quantize_tests {
    ($($name:ident => $ty:ident,)*) => {$(
        #[test]
        fn $name() {
            check_quantize(GgmlType::$ty);
        }
    )*};
}

quantize_tests! {
    quantize_iq4_nl_edges_match_ggml => IQ4_NL,
    quantize_iq4_xs_edges_match_ggml => IQ4_XS,
    quantize_mxfp4_edges_match_ggml => MXFP4,
    quantize_tq1_0_edges_match_ggml => TQ1_0,
    quantize_tq2_0_edges_match_ggml => TQ2_0,
    quantize_nvfp4_matches_ggml => NVFP4,
    quantize_q1_0_matches_ggml => Q1_0,
    quantize_q2_0_matches_ggml => Q2_0,
}

macro_rules! shared_golden_tests {
    ($($q:ident, $d:ident => $ty:ident,)*) => {$(
        #[test]
        fn $q() {
            common::assert_quantize_bit_exact(GgmlType::$ty);
        }
        #[test]
        fn $d() {
            common::assert_dequantize_bit_exact(GgmlType::$ty);
        }
    )*};
}

shared_golden_tests! {
    quantize_iq4_nl_matches_ggml, dequantize_iq4_nl_matches_ggml => IQ4_NL,
    quantize_iq4_xs_matches_ggml, dequantize_iq4_xs_matches_ggml => IQ4_XS,
    quantize_mxfp4_matches_ggml, dequantize_mxfp4_matches_ggml => MXFP4,
    quantize_tq1_0_matches_ggml, dequantize_tq1_0_matches_ggml => TQ1_0,
    quantize_tq2_0_matches_ggml, dequantize_tq2_0_matches_ggml => TQ2_0,
}

#[test]
fn grid_types_decode_but_refuse_to_encode_without_imatrix() {
    for ty in [
        GgmlType::IQ1_S,
        GgmlType::IQ1_M,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ2_S,
        GgmlType::IQ3_XXS,
        GgmlType::IQ3_S,
    ] {
        let x = vec![0.5f32; 256];
        let mut q = vec![0u8; ty.type_size()];
        match quantize_row(ty, &x, &mut q) {
            Err(QuantError::Unsupported { op: "quantize", .. }) => {}
            other => panic!("{ty}: expected Unsupported quantize, got {other:?}"),
        }
        let mut y = vec![0f32; 256];
        dequantize_row(ty, &q, &mut y).unwrap();
    }
}
