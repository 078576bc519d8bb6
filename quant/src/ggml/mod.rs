//! Ports of ggml's block codecs (`ggml/src/ggml-quants.c`, `ggml.c`).
//!
//! - [`registry`]: one row per type — start there to see what a type can do
//!   and where each of its kernels lives;
//! - [`scalar`]: the portable reference ports, one file per format family;
//! - `x86`: the AVX2/F16C variants, bit-exact with the scalar ports;
//! - [`cpu`]: the instruction-set variants and the one cached CPU check;
//! - [`isa`]: every variant of every kernel by name, for the tests and
//!   benchmarks that compare them.
//!
//! Layers (each uses only those above it): `cpu`, `scalar`, `x86`,
//! `registry`, `isa`.

pub mod cpu;
pub mod isa;
pub(crate) mod registry;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

// The scalar modules the root crate and the tests reach by their older paths.
pub use scalar::{common, float, mxfp4};
