//! FP8 (`float8_e4m3fn`) weights with one scale per block of a 2-D grid,
//! the two ways Hugging Face checkpoints hold them:
//! - [`ScaleRule::Inverse`]: DeepSeek-V3 / Qwen3-FP8 (`quant_method: fp8`),
//!   `weight_scale_inv` per `weight_block_size` block, F32. Dequantized as
//!   transformers' `Fp8Dequantize._dequantize_one` (`q.float() * s.float()`)
//!   and quantized as its `Fp8Quantize._quantize_one` (`scale = 448 / amax`
//!   in f32, which torch evaluates as `amax.reciprocal() * 448`, codes
//!   `clamp(x * scale)`, stored `1 / scale`; an all-zero block keeps
//!   scale 1).
//! - [`ScaleRule::Divide`]: compressed-tensors `float-quantized`
//!   (`weight_scale` per tensor, channel or block, in the model dtype).
//!   Scales as `calculate_qparams` (`amax / 448` in the scale dtype, 0
//!   replaced by that dtype's eps), codes as `_quantize` (`clamp(x / scale)`
//!   in the scale dtype, then `.to(float8_e4m3fn)`), values as `_dequantize`
//!   (`q.to(scale.dtype) * scale`, rounded to the scale dtype).
//!
//! Every float op is one IEEE f32 op followed, for bf16/f16 tensors, by the
//! rounding torch's CPU kernels apply; the e4m3 conversion is c10's
//! `fp8e4m3fn_from_fp32_value`.

pub use crate::float::Precision;
use crate::float::Rounding;

/// The largest finite `float8_e4m3fn` value (`torch.finfo(...).max`).
pub const E4M3_MAX: f32 = 448.0;

const fn decode_e4m3(b: u8) -> f32 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let exp = ((b >> 3) & 0x0f) as i32;
    let mant = (b & 0x07) as f32;
    if exp == 0x0f && b & 0x07 == 0x07 {
        return f32::NAN;
    }
    let (m, e) = if exp == 0 {
        (mant / 8.0, -6)
    } else {
        (1.0 + mant / 8.0, exp - 7)
    };
    let mut p = 1.0f32;
    let mut i = 0;
    while i < e.unsigned_abs() {
        p *= 2.0;
        i += 1;
    }
    if e < 0 {
        sign * m / p
    } else {
        sign * m * p
    }
}

const E4M3_TABLE: [f32; 256] = {
    let mut t = [0f32; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decode_e4m3(i as u8);
        i += 1;
    }
    t
};

/// The value of one `float8_e4m3fn` byte (exact; 0x7f/0xff are NaN).
#[inline]
pub fn e4m3_to_f32(b: u8) -> f32 {
    E4M3_TABLE[b as usize]
}

/// `x` as `float8_e4m3fn`, rounded to nearest even as c10's
/// `fp8e4m3fn_from_fp32_value` does, and saturating as torch's CPU cast
/// (`Tensor.to(torch.float8_e4m3fn)`, torch 2.15) does: magnitudes of 480
/// and more, infinities included, become ±448; NaN stays NaN.
#[inline]
pub fn f32_to_e4m3(x: f32) -> u8 {
    const DENORM_MASK: u32 = 141 << 23;
    let mut bits = x.to_bits();
    let sign = bits & 0x8000_0000;
    bits ^= sign;
    let result = if x.is_nan() {
        0x7f
    } else if bits > E4M3_MAX.to_bits() {
        0x7e
    } else if bits < (121 << 23) {
        let b = (f32::from_bits(bits) + f32::from_bits(DENORM_MASK)).to_bits();
        b.wrapping_sub(DENORM_MASK) as u8
    } else {
        let mant_odd = (bits >> 20) & 1;
        bits = bits.wrapping_add((((7i32 - 127) as u32) << 23).wrapping_add(0x7ffff));
        bits = bits.wrapping_add(mant_odd);
        (bits >> 20) as u8
    };
    result | (sign >> 24) as u8
}

/// The factor [`ScaleRule::Inverse`] multiplies a block by: `448 / amax`
/// as torch evaluates a Python scalar over a tensor (`__rtruediv__`:
/// `amax.reciprocal() * 448`), 1 for an all-zero block.
#[inline]
fn inverse_forward(amax: f32) -> f32 {
    if amax > 0.0 {
        (1.0 / amax) * E4M3_MAX
    } else {
        1.0
    }
}

/// How a block's scale is made, stored and applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleRule {
    /// Stored `weight_scale_inv` (f32): value = code · inv (transformers'
    /// finegrained FP8).
    Inverse,
    /// Stored `weight_scale` in `Precision`: value = round(code · scale),
    /// code = e4m3(round(x / scale)) (compressed-tensors).
    Divide(Precision),
}

impl ScaleRule {
    /// The stored scale for a block whose largest magnitude is `amax`.
    pub fn scale_for(self, amax: f32) -> f32 {
        match self {
            ScaleRule::Inverse => 1.0 / inverse_forward(amax),
            ScaleRule::Divide(p) => {
                let s = p.round(amax / E4M3_MAX);
                if s == 0.0 {
                    p.eps()
                } else {
                    s
                }
            }
        }
    }

    /// The code of `x` in a block whose largest magnitude is `amax` and
    /// whose stored scale is `scale` (from [`ScaleRule::scale_for`]).
    #[inline]
    fn encode(self, x: f32, amax: f32, scale: f32) -> u8 {
        let scaled = match self {
            ScaleRule::Inverse => x * inverse_forward(amax),
            ScaleRule::Divide(p) => p.round(x / scale),
        };
        f32_to_e4m3(scaled.clamp(-E4M3_MAX, E4M3_MAX))
    }
}

/// Fold the magnitudes of row `x` into the running maxima `amax` of its
/// column blocks of `block_cols` (`amax.len() == ceil(x.len() / block_cols)`).
pub fn fold_amax(x: &[f32], block_cols: usize, amax: &mut [f32]) {
    for (chunk, a) in x.chunks(block_cols.max(1)).zip(amax.iter_mut()) {
        *a = chunk.iter().fold(*a, |m, v| m.max(v.abs()));
    }
}

/// Dequantize one row of codes; `scales` holds the row's scale per column
/// block of `block_cols`.
pub fn dequantize_row(
    rule: ScaleRule,
    codes: &[u8],
    scales: &[f32],
    block_cols: usize,
    out: &mut [f32],
) {
    let job = Dequantize {
        codes,
        scales,
        block_cols: block_cols.max(1),
        out,
    };
    match rule {
        ScaleRule::Inverse => job.run(|x| x),
        ScaleRule::Divide(p) => p.with_rounding(job),
    }
}

/// [`dequantize_row`]'s arguments, run with the rounding inlined.
struct Dequantize<'a> {
    codes: &'a [u8],
    scales: &'a [f32],
    block_cols: usize,
    out: &'a mut [f32],
}

impl Rounding<()> for Dequantize<'_> {
    fn run(self, round: impl Fn(f32) -> f32 + Copy) {
        let bc = self.block_cols;
        for ((c, o), s) in self
            .codes
            .chunks(bc)
            .zip(self.out.chunks_mut(bc))
            .zip(self.scales)
        {
            for (q, v) in c.iter().zip(o.iter_mut()) {
                *v = round(e4m3_to_f32(*q) * s);
            }
        }
    }
}

/// Quantize one row; `amax` and `scales` hold the row's block maxima (from
/// [`fold_amax`] over the whole block) and stored scales
/// ([`ScaleRule::scale_for`]) per column block of `block_cols`.
pub fn quantize_row(
    rule: ScaleRule,
    x: &[f32],
    amax: &[f32],
    scales: &[f32],
    block_cols: usize,
    out: &mut [u8],
) {
    for (((xs, o), a), s) in x
        .chunks(block_cols.max(1))
        .zip(out.chunks_mut(block_cols.max(1)))
        .zip(amax)
        .zip(scales)
    {
        for (v, q) in xs.iter().zip(o.iter_mut()) {
            *q = rule.encode(*v, *a, *s);
        }
    }
}

/// Re-round one row on stored scales (one per column block of
/// `block_cols`): `e4m3(clamp(x / scale))`, the division in f32 for
/// [`ScaleRule::Inverse`] (`x.float() / scale_inv`) and in the scale's
/// precision for [`ScaleRule::Divide`] (compressed-tensors' `quantize` with
/// the given scale). A value beyond the block's range saturates at ±448.
pub fn requantize_row_on_scales(
    rule: ScaleRule,
    x: &[f32],
    scales: &[f32],
    block_cols: usize,
    out: &mut [u8],
) {
    let bc = block_cols.max(1);
    for ((xs, o), &s) in x.chunks(bc).zip(out.chunks_mut(bc)).zip(scales) {
        for (v, q) in xs.iter().zip(o.iter_mut()) {
            let scaled = match rule {
                ScaleRule::Inverse => v / s,
                ScaleRule::Divide(p) => p.round(v / s),
            };
            *q = f32_to_e4m3(scaled.clamp(-E4M3_MAX, E4M3_MAX));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_finite_code_round_trips() {
        for b in 0..=255u8 {
            let v = e4m3_to_f32(b);
            if v.is_nan() {
                assert!(b & 0x7f == 0x7f);
                continue;
            }
            let back = f32_to_e4m3(v);
            // +0 and -0 keep their sign bit.
            assert_eq!(back, b, "code {b:#x} = {v}");
        }
        assert_eq!(e4m3_to_f32(0x7e), 448.0);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
    }

    #[test]
    fn rounding_is_to_nearest_even_and_overflow_saturates() {
        // Halfway between 1.0 (0x38) and 1.125 (0x39): even mantissa wins.
        assert_eq!(f32_to_e4m3(1.0625), 0x38);
        // Halfway between 1.125 and 1.25: rounds up to the even 1.25.
        assert_eq!(f32_to_e4m3(1.1875), 0x3a);
        assert_eq!(f32_to_e4m3(470.0), 0x7e);
        assert_eq!(f32_to_e4m3(480.0), 0x7e);
        assert_eq!(f32_to_e4m3(f32::NEG_INFINITY), 0xfe);
        assert_eq!(f32_to_e4m3(f32::NAN) & 0x7f, 0x7f);
    }

    #[test]
    fn the_block_maximum_takes_the_largest_code() {
        let rule = ScaleRule::Inverse;
        let x = [0.5f32, -3.0, 1.25, 0.0];
        let mut amax = [0f32];
        fold_amax(&x, 4, &mut amax);
        let s = [rule.scale_for(amax[0])];
        let mut q = [0u8; 4];
        quantize_row(rule, &x, &amax, &s, 4, &mut q);
        let mut back = [0f32; 4];
        dequantize_row(rule, &q, &s, 4, &mut back);
        // The block maximum takes the largest code; 1/(448/3) is not 3/448
        // exactly, so it decodes within an ulp of itself.
        assert_eq!(q[1], 0xfe);
        assert!((back[1] + 3.0).abs() <= 3.0 * f32::EPSILON);
        assert_eq!(rule.scale_for(0.0), 1.0);
        assert_eq!(ScaleRule::Divide(Precision::Bf16).scale_for(0.0), 0.0078125);
    }

    #[test]
    fn re_rounding_on_the_same_scale_keeps_the_codes() {
        // Every finite code decodes to a value that re-rounds to itself on
        // its own scale (division by a power of two is exact); values off
        // the grid go to the nearest code and saturate at the range.
        let s = [0.25f32];
        let codes: Vec<u8> = (0..=255u8).filter(|b| b & 0x7f != 0x7f).collect();
        for rule in [ScaleRule::Inverse, ScaleRule::Divide(Precision::Bf16)] {
            let mut x = vec![0f32; codes.len()];
            dequantize_row(rule, &codes, &s, codes.len(), &mut x);
            let mut back = vec![0u8; codes.len()];
            requantize_row_on_scales(rule, &x, &s, codes.len(), &mut back);
            assert_eq!(back, codes);
            let mut q = [0u8; 3];
            requantize_row_on_scales(rule, &[1000.0, -1000.0, 0.25 * 1.0625], &s, 3, &mut q);
            assert_eq!(q, [0x7e, 0xfe, 0x38]);
        }
    }
}
