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
pub mod ternary;

use crate::{Codec, GgmlType};

/// The codec for `ty`, looked up in each format family.
pub(crate) fn codec(ty: GgmlType) -> Option<Codec> {
    float::codec(ty)
        .or_else(|| legacy::codec(ty))
        .or_else(|| kquants::codec(ty))
        .or_else(|| iquants::codec(ty))
        .or_else(|| mxfp4::codec(ty))
        .or_else(|| ternary::codec(ty))
}
