//! Every instruction-set variant of every kernel, looked up by name: the
//! simd test suite and the benchmarks run each variant against the same
//! checks. The variants themselves are listed in the registry rows.

pub use super::cpu::Isa;
pub use super::registry::{dequantize_fn, quantize_fn, DequantizeFn, QuantizeFn};
