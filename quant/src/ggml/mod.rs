//! Ports of ggml's block codecs (`ggml/src/ggml-quants.c`, `ggml.c`).
//!
//! One file per format family; `common` holds the helpers they share
//! (rounding rules, fp16/bf16 conversion).

pub mod common;
pub mod float;
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
