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
