//! The portable reference ports of ggml's codecs (`ggml/src/ggml-quants.c`,
//! `ggml.c`), one file per format family; each function names the ggml
//! function it follows. Nothing here knows about other instruction sets:
//! the SIMD variants in `super::x86` build on these modules.
//!
//! Order of use (each module uses only those before it): `common`,
//! `tables`, `search`, `scan`, then the families `float`, `legacy`,
//! `kquants`, `iquants`, `mxfp4`, `ternary`, `reround`, then
//! `kquants_weighted` and `iq2xxs`.

pub mod common;
pub mod float;
pub mod iq2xxs;
pub mod iquants;
pub mod kquants;
pub mod kquants_weighted;
pub mod legacy;
pub mod mxfp4;
pub mod reround;
pub mod scan;
pub(crate) mod search;
#[rustfmt::skip]
pub(crate) mod tables;
pub mod ternary;
