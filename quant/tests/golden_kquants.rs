//! K-quants against ggml's own output (`fixtures/golden`, made by
//! `ggml_quantize_chunk` without an importance matrix and the type's
//! `to_float`): every byte of the encoding and every bit of the decoding.
mod common;

use common::{assert_dequantize_bit_exact, assert_quantize_bit_exact};
use qresidual_quant::GgmlType;

macro_rules! golden {
    ($($q:ident, $d:ident, $ty:ident;)*) => {$(
        #[test]
        fn $q() {
            assert_quantize_bit_exact(GgmlType::$ty);
        }
        #[test]
        fn $d() {
            assert_dequantize_bit_exact(GgmlType::$ty);
        }
    )*};
}

golden! {
    q2_k_quantize_matches_ggml, q2_k_dequantize_matches_ggml, Q2_K;
    q3_k_quantize_matches_ggml, q3_k_dequantize_matches_ggml, Q3_K;
    q4_k_quantize_matches_ggml, q4_k_dequantize_matches_ggml, Q4_K;
    q5_k_quantize_matches_ggml, q5_k_dequantize_matches_ggml, Q5_K;
    q6_k_quantize_matches_ggml, q6_k_dequantize_matches_ggml, Q6_K;
}

/// Q8_K is not in the golden set (`ggml_quantize_chunk` refuses it), so its
/// reference is a per-case FNV-1a 64 digest of what ggml's
/// `quantize_row_q8_K_ref` writes for the golden inputs (into a zeroed
/// buffer: ggml leaves `bsums` of an all-zero block unwritten) and of what
/// `dequantize_row_q8_K` makes of those bytes. Made with ctypes on
/// `libggml-base.so` (llama-cpp-python 0.3.36):
///
/// ```python
/// lib.quantize_row_q8_K_ref(x.ctypes.data, q, n)   # q = create_string_buffer(n // 256 * 292)
/// lib.dequantize_row_q8_K(q, y.ctypes.data, n)     # y = np.zeros(n, np.float32)
/// print(name, fnv1a64(q.raw), fnv1a64(y.tobytes()))
/// ```
const Q8_K_GGML_DIGESTS: &[(&str, u64, u64)] = &[
    ("gaussian", 0xff4322195f18fb80, 0x2187ad9251929120),
    ("student_t", 0xf392770abfe83676, 0xbc661e223755b546),
    ("outlier", 0x1bd2c8d1d2b976fe, 0x4864393729277c89),
    ("zero_blocks", 0x2c73ff820e1da215, 0xb0058948050ee6dc),
    ("constant_blocks", 0xf1c7d9b31ba50dea, 0x1854fd3998a31fe5),
    ("near_f16_max", 0xee0aa4d17f972dae, 0x7e01d9312905546e),
    ("tiny", 0xa83c2dfb87824020, 0x9ccd7904ddd98647),
    ("subnormal", 0x936a1c79a984f965, 0x7f5e496d0e3b6325),
    ("uniform_steps", 0xa435c1e6b560cb45, 0x77c3c7fe42e861c5),
    ("cos", 0x1070cf124da0982c, 0xd279b40b058f2f1e),
];

fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[test]
fn q8_k_quantize_and_dequantize_match_ggml_digests() {
    use qresidual_quant::{dequantize_row, quantize_row};
    let ty = GgmlType::Q8_K;
    let cases = common::cases();
    assert_eq!(cases.len(), Q8_K_GGML_DIGESTS.len());
    for case in cases {
        let &(_, want_q, want_deq) = Q8_K_GGML_DIGESTS
            .iter()
            .find(|d| d.0 == case.name)
            .unwrap_or_else(|| panic!("no Q8_K digest for case {}", case.name));
        let row_bytes = ty.row_size(case.cols).unwrap();
        let mut q = vec![0u8; row_bytes * case.rows];
        for (src, dst) in case.input.chunks(case.cols).zip(q.chunks_mut(row_bytes)) {
            quantize_row(ty, src, dst).unwrap();
        }
        assert_eq!(
            fnv1a64(&q),
            want_q,
            "Q8_K quantize differs from ggml on {}",
            case.name
        );
        let mut y = vec![0f32; case.input.len()];
        for (src, dst) in q.chunks(row_bytes).zip(y.chunks_mut(case.cols)) {
            dequantize_row(ty, src, dst).unwrap();
        }
        let yb: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            fnv1a64(&yb),
            want_deq,
            "Q8_K dequantize differs from ggml on {}",
            case.name
        );
    }
}
