//! Block codecs for quantized LLM weights: the GGUF (ggml) formats, the
//! bitsandbytes formats, block-scaled FP8 and MLX's affine groups and float modes, as row-level `quantize` and `dequantize`.
//!
//! This crate knows nothing about files, names or threads. A *row* is a slice
//! of `f32` whose length is a multiple of the type's block size; its encoded
//! form is `row_size(n)` bytes. Every codec is a port of the reference
//! implementation it names and is tested bit-exact against it.
#![deny(missing_docs)]

//!
//! Where things are: `types` (the one table of type ids and block sizes),
//! `ggml::registry` (one row per type: every kernel and its SIMD variants),
//! `ggml::scalar` (reference ports), `ggml::x86` (AVX2 variants), `rows`
//! (the checked row functions below), `requant` (the per-block search),
//! `bnb` (bitsandbytes), `fp8` (float8_e4m3fn with block scales), `mlx`
//! (MLX affine groups; `mlx::fp` its mxfp4/mxfp8/nvfp4 modes), `packed` (compressed-tensors pack-quantized
//! integers), `float` (the precisions they round to), `stats`
//! (error metrics).
//!
//! Layers, each using only those before it: `types`, `error`, `ggml::cpu`,
//! `ggml::scalar`, `ggml::x86`, `ggml::registry`, `ggml::isa`, `rows`,
//! `requant`; `stats` (uses `ggml::cpu`), `bnb` stand apart; `float`, then
//! `fp8`, `mlx` and `packed`.

mod bitstream;
pub mod bnb;
mod error;
mod float;
pub mod fp8;
pub mod ggml;
pub mod gptq;
pub mod mlx;
pub mod packed;
pub mod requant;
mod rows;
pub mod stats;
mod types;

pub use error::QuantError;
pub use ggml::registry::{codec, Codec, DecodeFn, EncodeFn, WeightedEncodeFn};
pub use requant::{
    base_groups_nearer, dither_row, dither_uniform, has_dither, reround_row, search_row,
    search_row_decoded, SearchWins,
};
pub use rows::{
    dequantize_row, find_non_finite, quantize_row, quantize_row_weighted, scan_row,
    uses_importance, RowScan,
};
pub use types::{GgmlType, TypeInfo, ALL_TYPES};
