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

/// `ggml_compute_fp16_to_fp32` from `ggml-impl.h`, transcribed literally.
fn ggml_compute_fp16_to_fp32(h: u16) -> f32 {
    let w = (h as u32) << 16;
    let sign = w & 0x8000_0000;
    let two_w = w.wrapping_add(w);
    let exp_offset = 0xE0u32 << 23;
    let exp_scale = f32::from_bits(0x0780_0000); // 0x1.0p-112f
    let normalized_value = f32::from_bits((two_w >> 4) + exp_offset) * exp_scale;
    let magic_mask = 126u32 << 23;
    let magic_bias = 0.5f32;
    let denormalized_value = f32::from_bits((two_w >> 17) | magic_mask) - magic_bias;
    let denormalized_cutoff = 1u32 << 27;
    let result = sign
        | if two_w < denormalized_cutoff {
            denormalized_value.to_bits()
        } else {
            normalized_value.to_bits()
        };
    f32::from_bits(result)
}

/// `ggml_compute_fp32_to_fp16` from `ggml-impl.h`, transcribed literally.
#[allow(clippy::assign_op_pattern)] // keeps ggml's operand order
fn ggml_compute_fp32_to_fp16(f: f32) -> u16 {
    let scale_to_inf = f32::from_bits(0x7780_0000); // 0x1.0p+112f
    let scale_to_zero = f32::from_bits(0x0880_0000); // 0x1.0p-110f
    let mut base = (f.abs() * scale_to_inf) * scale_to_zero;
    let w = f.to_bits();
    let shl1_w = w.wrapping_add(w);
    let sign = w & 0x8000_0000;
    let mut bias = shl1_w & 0xFF00_0000;
    if bias < 0x7100_0000 {
        bias = 0x7100_0000;
    }
    base = f32::from_bits((bias >> 1) + 0x0780_0000) + base;
    let bits = base.to_bits();
    let exp_bits = (bits >> 13) & 0x0000_7C00;
    let mantissa_bits = bits & 0x0000_0FFF;
    let nonsign = exp_bits + mantissa_bits;
    ((sign >> 16)
        | if shl1_w > 0xFF00_0000 {
            0x7E00
        } else {
            nonsign
        }) as u16
}

fn f16_bits_of(ty: GgmlType, x: f32) -> u16 {
    let mut b = [0u8; 2];
    qresidual_quant::quantize_row(ty, &[x], &mut b).unwrap();
    u16::from_le_bytes(b)
}

/// Every fp16 bit pattern decodes as ggml's scalar conversion does,
/// NaN payloads included.
#[test]
fn f16_decode_matches_ggml_for_all_65536_patterns() {
    for h in 0..=u16::MAX {
        let mut y = [0f32];
        qresidual_quant::dequantize_row(GgmlType::F16, &h.to_le_bytes(), &mut y).unwrap();
        assert_eq!(
            y[0].to_bits(),
            ggml_compute_fp16_to_fp32(h).to_bits(),
            "{h:#06x}"
        );
    }
}

/// f32 patterns that stress fp16 rounding: a strided sweep of all 2^32 bit
/// patterns plus, for every exponent that can land in fp16 (normal,
/// subnormal, overflow), mantissas at and around every rounding tie.
fn f16_stress_inputs() -> impl Iterator<Item = f32> {
    let sweep = (0..=u32::MAX).step_by(4093);
    let ties = (0u32..2).flat_map(|sign| {
        (0x60u32..0x90).flat_map(move |exp| {
            (0u32..64).flat_map(move |hi| {
                [
                    0u32, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x7FF, 0x800, 0x801, 0x3FFF,
                ]
                .into_iter()
                .map(move |lo| (sign << 31) | (exp << 23) | ((hi * 0x1_0001) & 0x7F_E000) | lo)
            })
        })
    });
    sweep
        .chain(ties)
        .map(f32::from_bits)
        .filter(|x| x.is_finite())
}

/// F16 encoding equals ggml's `ggml_compute_fp32_to_fp16` on the stress set.
#[test]
fn f16_encode_matches_ggml_on_stress_set() {
    let mut n = 0usize;
    for x in f16_stress_inputs() {
        assert_eq!(
            f16_bits_of(GgmlType::F16, x),
            ggml_compute_fp32_to_fp16(x),
            "{x:e} ({:#010x})",
            x.to_bits()
        );
        n += 1;
    }
    assert!(n > 1_000_000);
}

/// The same over every finite f32 (about 4·10^9 values; about a minute
/// optimised, so not in the default run: `--ignored`).
#[test]
#[ignore]
fn f16_encode_matches_ggml_for_every_finite_f32() {
    for u in 0..=u32::MAX {
        let x = f32::from_bits(u);
        if x.is_finite() {
            let mut b = [0u8; 2];
            qresidual_quant::ggml::float::quantize_row_f16(&[x], &mut b);
            assert_eq!(
                u16::from_le_bytes(b),
                ggml_compute_fp32_to_fp16(x),
                "{u:#010x}"
            );
        }
    }
}
