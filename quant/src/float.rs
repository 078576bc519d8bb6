//! The float precisions reference kernels round their arithmetic to.

use half::f16;

/// The float type a tensor's arithmetic is rounded to (torch's or MLX's dtype).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// float32: no extra rounding.
    F32,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
}

impl Precision {
    /// Run `f` with this precision's rounding as a function the compiler
    /// can inline into a per-element loop.
    #[inline]
    pub fn with_rounding<R>(self, f: impl Rounding<R>) -> R {
        match self {
            Precision::F32 => f.run(|x| x),
            Precision::Bf16 => f.run(round_bf16),
            Precision::F16 => f.run(|x| f16::from_f32(x).to_f32()),
        }
    }

    /// `x` rounded to this precision (round to nearest even, as torch and MLX cast).
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => round_bf16(x),
            Precision::F16 => f16::from_f32(x).to_f32(),
        }
    }

    /// `torch.finfo(dtype).eps`: what compressed-tensors puts in place of a
    /// zero scale.
    pub fn eps(self) -> f32 {
        match self {
            Precision::F32 => f32::EPSILON,
            Precision::Bf16 => 0.0078125,
            Precision::F16 => 0.000_976_562_5,
        }
    }
}

/// A computation generic over a rounding function (see
/// [`Precision::with_rounding`]).
pub trait Rounding<R> {
    /// Run with `round`.
    fn run(self, round: impl Fn(f32) -> f32 + Copy) -> R;
}

/// `x` rounded to bfloat16 and back (nearest even), as `half::bf16::from_f32`
/// but without its branches for the finite values the kernels round.
#[inline]
pub(crate) fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    if x.is_nan() {
        return x;
    }
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
    f32::from_bits(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding_equals_half() {
        // A stride over every finite magnitude, and every tie (low half 0x8000).
        let ties = (0..0x7f80u32).map(|k| k << 16 | 0x8000);
        for x in (1..0x7f80_0000u32).step_by(997).chain(ties) {
            for v in [f32::from_bits(x), -f32::from_bits(x)] {
                let want = half::bf16::from_f32(v).to_f32();
                assert_eq!(round_bf16(v).to_bits(), want.to_bits(), "{v}");
            }
        }
    }
}
