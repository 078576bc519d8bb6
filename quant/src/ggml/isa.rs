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
        (Isa::Scalar, GgmlType::Q4_0) => super::legacy::quantize_row_q4_0,
        (Isa::Scalar, GgmlType::Q8_0) => super::legacy::quantize_row_q8_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q4_0) => super::rows_avx2::quantize_row_q4_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q8_0) => super::rows_avx2::quantize_row_q8_0,
        (Isa::Scalar, GgmlType::Q4_1) => super::legacy::quantize_row_q4_1,
        (Isa::Scalar, GgmlType::Q5_0) => super::legacy::quantize_row_q5_0,
        (Isa::Scalar, GgmlType::Q5_1) => super::legacy::quantize_row_q5_1,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q4_1) => super::rows_avx2::quantize_row_q4_1,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q5_0) => super::rows_avx2::quantize_row_q5_0,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::Q5_1) => super::rows_avx2::quantize_row_q5_1,
        (Isa::Scalar, GgmlType::F16) => super::float::quantize_row_f16,
        (Isa::Scalar, GgmlType::BF16) => super::float::quantize_row_bf16,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::F16) => super::rows_avx2::quantize_row_f16,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::BF16) => super::rows_avx2::quantize_row_bf16,
        (Isa::Scalar, GgmlType::MXFP4) => super::mxfp4::quantize_mxfp4,
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2, GgmlType::MXFP4) => super::rows_avx2::quantize_row_mxfp4,
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

/// A row decoder: whole blocks of `src` into `dst`.
pub type DequantizeFn = fn(&[u8], &mut [f32]);

/// The `isa` variant of `ty`'s decoder, if that variant exists and this CPU
/// runs it (`Isa::Scalar` answers for the types that have another variant).
/// The returned function checks nothing: `src` must hold whole blocks.
pub fn dequantize_fn(isa: Isa, ty: GgmlType) -> Option<DequantizeFn> {
    if !isa.is_available() {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    {
        use super::{float as fl, kquants as k, legacy as lg, rows_avx2 as v};
        let f: DequantizeFn = match (isa, ty) {
            (Isa::Scalar, GgmlType::F16) => fl::dequantize_row_f16,
            (Isa::Scalar, GgmlType::BF16) => fl::dequantize_row_bf16,
            (Isa::Scalar, GgmlType::Q8_0) => lg::dequantize_row_q8_0,
            (Isa::Scalar, GgmlType::Q4_K) => k::dequantize_row_q4_k,
            (Isa::Scalar, GgmlType::Q5_K) => k::dequantize_row_q5_k,
            (Isa::Scalar, GgmlType::Q6_K) => k::dequantize_row_q6_k,
            (Isa::Scalar, GgmlType::IQ4_NL) => super::iquants::dequantize_iq4_nl,
            (Isa::Scalar, GgmlType::IQ4_XS) => super::iquants::dequantize_iq4_xs,
            (Isa::Avx2, GgmlType::IQ4_NL) => super::iquants::dequantize_iq4_nl_avx2,
            (Isa::Avx2, GgmlType::IQ4_XS) => super::iquants::dequantize_iq4_xs_avx2,
            (Isa::Avx2, GgmlType::F16) => v::dequantize_row_f16,
            (Isa::Avx2, GgmlType::BF16) => v::dequantize_row_bf16,
            (Isa::Avx2, GgmlType::Q8_0) => v::dequantize_row_q8_0,
            (Isa::Avx2, GgmlType::Q4_K) => v::dequantize_row_q4_k,
            (Isa::Avx2, GgmlType::Q5_K) => v::dequantize_row_q5_k,
            (Isa::Avx2, GgmlType::Q6_K) => v::dequantize_row_q6_k,
            _ => return None,
        };
        Some(f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = ty;
        None
    }
}
