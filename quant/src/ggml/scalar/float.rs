//! The plain float types F32, F16 and BF16, as `ggml_quantize_chunk` writes
//! them and `type_traits[..].to_float` reads them (`ggml/src/ggml.c`).
//!
//! Encoding is element-wise: F16 follows `ggml_fp32_to_fp16_row` (IEEE round
//! to nearest even, overflow to ±Inf), BF16 follows
//! `ggml_fp32_to_bf16_row_ref` (round to nearest even, *no* flush of
//! subnormals — the AVX512-BF16 `ggml_fp32_to_bf16_row` would flush them, but
//! `ggml_quantize_chunk` calls the `_ref` variant). Decoding is exact.

use super::common::{bf16_to_f32, f16_to_f32, f32_to_bf16, f32_to_f16};

/// F32 has no `to_float` in ggml: the bytes are the little-endian floats.
pub fn dequantize_row_f32(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
}

/// The `GGML_TYPE_F32` case of `ggml_quantize_chunk`: a `memcpy`.
pub fn quantize_row_f32(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.iter().zip(dst.chunks_exact_mut(4)) {
        b.copy_from_slice(&x.to_le_bytes());
    }
}

/// `ggml_fp16_to_fp32_row`.
pub fn dequantize_row_f16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// `ggml_fp32_to_fp16_row` (scalar `GGML_FP32_TO_FP16`).
pub fn quantize_row_f16(src: &[f32], dst: &mut [u8]) {
    for (&x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_f16(x).to_le_bytes());
    }
}

/// `ggml_bf16_to_fp32_row`.
pub fn dequantize_row_bf16(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// `ggml_fp32_to_bf16_row_ref` (`ggml_compute_fp32_to_bf16` per element).
pub fn quantize_row_bf16(src: &[f32], dst: &mut [u8]) {
    for (&x, b) in src.iter().zip(dst.chunks_exact_mut(2)) {
        b.copy_from_slice(&f32_to_bf16(x).to_le_bytes());
    }
}

/// [`quantize_row_bf16`] that first tells whether `src` holds a NaN or an
/// infinity (then `true`, and nothing is written): the scalar variant of
/// the AVX2 encoder that tests in the same pass.
pub fn quantize_row_bf16_checked(src: &[f32], dst: &mut [u8]) -> bool {
    if super::scan::first_special_chunk(src, 64).is_some() {
        return true;
    }
    quantize_row_bf16(src, dst);
    false
}
