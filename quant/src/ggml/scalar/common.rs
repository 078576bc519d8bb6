//! Helpers shared by the ggml ports: the rounding rules, half-precision
//! conversions and little-endian field access exactly as ggml performs them.
//! (The scale searches the encoders share are in `search`.)

/// `nearest_int` from `ggml-quants.c`: round half to even through the
/// 1.5·2^23 trick. Valid for |fval| ≤ 4194303, which ggml asserts.
#[inline(always)]
pub fn nearest_int(fval: f32) -> i32 {
    let val = fval + 12582912.0f32;
    let i = val.to_bits() as i32;
    (i & 0x007f_ffff) - 0x0040_0000
}

/// `GGML_FP32_TO_FP16`: IEEE binary16, round to nearest even.
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// `GGML_FP16_TO_FP32`: exact widening.
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

/// `ggml_compute_fp32_to_bf16`: round to nearest even, NaN kept quiet.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if (u & 0x7fff_ffff) > 0x7f80_0000 {
        return ((u >> 16) | 64) as u16;
    }
    ((u + (0x7fff + ((u >> 16) & 1))) >> 16) as u16
}

/// `ggml_compute_bf16_to_fp32`: exact widening.
#[inline(always)]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Read a little-endian u16 at `i`.
#[inline(always)]
pub fn le_u16(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}

/// Read a little-endian fp16 at `i` as f32.
#[inline(always)]
pub fn le_f16(b: &[u8], i: usize) -> f32 {
    f16_to_f32(le_u16(b, i))
}

/// Write `x` as a little-endian fp16 at `i`.
#[inline(always)]
pub fn put_f16(b: &mut [u8], i: usize, x: f32) {
    b[i..i + 2].copy_from_slice(&f32_to_f16(x).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        assert_eq!(nearest_int(0.5), 0);
        assert_eq!(nearest_int(1.5), 2);
        assert_eq!(nearest_int(2.5), 2);
        assert_eq!(nearest_int(-0.5), 0);
        assert_eq!(nearest_int(-1.5), -2);
        assert_eq!(nearest_int(-7.49), -7);
        assert_eq!(nearest_int(31.0), 31);
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::NAN) & 0x7fc0, 0x7fc0);
    }
}
