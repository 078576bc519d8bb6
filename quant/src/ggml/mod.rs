//! Ports of ggml's block codecs (`ggml/src/ggml-quants.c`, `ggml.c`).
//!
//! One file per format family; `common` holds the helpers they share
//! (rounding rules, fp16/bf16 conversion).

pub mod common;
pub mod float;
pub mod iq2xxs;
pub mod iquants;
pub mod isa;
pub mod kquants;
pub mod legacy;
pub mod mxfp4;
#[cfg(target_arch = "x86_64")]
pub mod rows_avx2;
pub mod ternary;

use crate::{Codec, GgmlType};

/// The codec for `ty`, looked up in each format family, with the fastest
/// decoder variant this CPU runs (the encoders dispatch themselves).
pub(crate) fn codec(ty: GgmlType) -> Option<Codec> {
    let mut c = float::codec(ty)
        .or_else(|| legacy::codec(ty))
        .or_else(|| kquants::codec(ty))
        .or_else(|| iquants::codec(ty))
        .or_else(|| mxfp4::codec(ty))
        .or_else(|| ternary::codec(ty))?;
    if let Some(d) = isa::dequantize_fn(isa::Isa::best(), ty) {
        c.dequantize = d;
    }
    if let (Some(_), Some(q)) = (c.quantize, isa::quantize_fn(isa::Isa::best(), ty)) {
        c.quantize = Some(q);
    }
    Some(c)
}

/// The importance-weighted encoder ggml runs for `ty` when
/// `ggml_quantize_chunk` gets an importance matrix (`quantize_row_*_impl`
/// with `quant_weights != NULL`); `None` for types whose encoder ignores it
/// or that this crate cannot encode with one.
pub(crate) fn weighted(ty: GgmlType) -> Option<crate::WeightedEncodeFn> {
    use GgmlType as G;
    Some(match ty {
        G::Q4_0 => legacy::quantize_row_q4_0_weighted,
        G::Q4_1 => legacy::quantize_row_q4_1_weighted,
        G::Q5_0 => legacy::quantize_row_q5_0_weighted,
        G::Q5_1 => legacy::quantize_row_q5_1_weighted,
        G::Q2_K => kquants::weighted::quantize_row_q2_k_weighted,
        G::Q3_K => kquants::weighted::quantize_row_q3_k_weighted,
        G::Q4_K => kquants::weighted::quantize_row_q4_k_weighted,
        G::Q5_K => kquants::weighted::quantize_row_q5_k_weighted,
        G::Q6_K => kquants::weighted::quantize_row_q6_k_weighted,
        G::IQ4_NL => iquants::quantize_iq4_nl_weighted,
        G::IQ4_XS => iquants::quantize_iq4_xs_weighted,
        G::IQ2_XXS => iq2xxs::quantize_iq2_xxs_weighted,
        _ => return None,
    })
}
