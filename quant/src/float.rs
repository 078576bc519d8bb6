//! The float precisions reference kernels round their arithmetic to.

use half::{bf16, f16};

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
    /// `x` rounded to this precision (round to nearest even, as torch and MLX cast).
    #[inline]
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => bf16::from_f32(x).to_f32(),
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
