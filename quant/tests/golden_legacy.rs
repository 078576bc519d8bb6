//! Bit-exact agreement with ggml (`fixtures/golden`, written by
//! `fixtures/gen_golden.py` through `ggml_quantize_chunk` and
//! `type_traits[..].to_float`) for F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1 and
//! Q8_0, one test per type and direction.

mod common;

use common::{assert_dequantize_bit_exact, assert_quantize_bit_exact};
use qresidual_quant::GgmlType;

macro_rules! golden {
    ($($ty:ident: $q:ident, $dq:ident;)*) => {$(
        #[test]
        fn $q() {
            assert_quantize_bit_exact(GgmlType::$ty);
        }

        #[test]
        fn $dq() {
            assert_dequantize_bit_exact(GgmlType::$ty);
        }
    )*};
}

golden! {
    F32: quantize_f32, dequantize_f32;
    F16: quantize_f16, dequantize_f16;
    BF16: quantize_bf16, dequantize_bf16;
    Q4_0: quantize_q4_0, dequantize_q4_0;
    Q4_1: quantize_q4_1, dequantize_q4_1;
    Q5_0: quantize_q5_0, dequantize_q5_0;
    Q5_1: quantize_q5_1, dequantize_q5_1;
    Q8_0: quantize_q8_0, dequantize_q8_0;
}
