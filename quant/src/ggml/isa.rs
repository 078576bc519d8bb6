//! Instruction-set variants of the hot encoders, chosen at run time.
//!
//! Every encoder has a portable scalar path (the reference ports). On
//! x86-64 with AVX2 some have a second variant that runs the scale searches
//! of eight sub-blocks side by side, one sub-block per vector lane: each lane
//! performs exactly the scalar sequence of f32 operations (no reassociation,
//! no FMA), so the bytes are identical. [`quantize_fn`] exposes each variant
//! so the test suite can run every one of them against the same checks.

use crate::GgmlType;

/// An instruction-set variant of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference every other variant must equal.
    Scalar,
    /// x86-64 AVX2 (256-bit integer and float vectors).
    Avx2,
}

impl Isa {
    /// Every variant, runnable here or not.
    pub const ALL: [Isa; 2] = [Isa::Scalar, Isa::Avx2];

    /// Whether this CPU can run the variant.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => avx2(),
        }
    }

    /// The fastest variant this CPU runs.
    pub fn best() -> Isa {
        if avx2() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }

    /// Lower-case name (`scalar`, `avx2`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}

/// Whether AVX2 is usable (the standard library caches the CPUID probe).
#[inline(always)]
pub(crate) fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A row encoder: whole blocks of `src` into `dst`.
pub type QuantizeFn = fn(&[f32], &mut [u8]);

/// The `isa` variant of `ty`'s encoder, if that variant exists and this CPU
/// runs it. `Isa::Scalar` gives the reference port of every type that has
/// one here. Unlike [`crate::quantize_row`] the returned function checks
/// nothing: `src` must hold whole blocks, `dst` room for them, all finite.
pub fn quantize_fn(isa: Isa, ty: GgmlType) -> Option<QuantizeFn> {
    use super::{iquants as iq, kquants as k};
    if !isa.is_available() {
        return None;
    }
    let f: QuantizeFn = match (isa, ty) {
        (Isa::Scalar, GgmlType::Q2_K) => k::quantize_row_q2_k_scalar,
        (Isa::Scalar, GgmlType::Q3_K) => k::quantize_row_q3_k_scalar,
        (Isa::Scalar, GgmlType::Q4_K) => k::quantize_row_q4_k_scalar,
        (Isa::Scalar, GgmlType::Q5_K) => k::quantize_row_q5_k_scalar,
        (Isa::Scalar, GgmlType::Q6_K) => k::quantize_row_q6_k_scalar,
        (Isa::Scalar, GgmlType::IQ4_NL) => iq::quantize_iq4_nl_scalar,
        (Isa::Scalar, GgmlType::IQ4_XS) => iq::quantize_iq4_xs_scalar,
        (Isa::Avx2, GgmlType::Q2_K) => k::quantize_row_q2_k_avx2,
        (Isa::Avx2, GgmlType::Q3_K) => k::quantize_row_q3_k_avx2,
        (Isa::Avx2, GgmlType::Q4_K) => k::quantize_row_q4_k_avx2,
        (Isa::Avx2, GgmlType::Q5_K) => k::quantize_row_q5_k_avx2,
        (Isa::Avx2, GgmlType::Q6_K) => k::quantize_row_q6_k_avx2,
        (Isa::Avx2, GgmlType::IQ4_NL) => iq::quantize_iq4_nl_avx2,
        (Isa::Avx2, GgmlType::IQ4_XS) => iq::quantize_iq4_xs_avx2,
        _ => return None,
    };
    Some(f)
}
