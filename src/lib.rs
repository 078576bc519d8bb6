//! qresidual: add full-rank weight residuals to quantized LLM checkpoints
//! and measure the precision lost.
//!
//! The library behind the `qresidual` command. Each command is one call
//! with a request of plain values that returns data:
//!
//! | command | call |
//! |---|---|
//! | `apply` | [`apply::apply`] with an [`apply::ApplyRequest`] → [`apply::ApplyResult`] |
//! | `extract` | [`ops::extract::extract`] on two [`model::Model`]s |
//! | `compare` | [`ops::compare::compare`] on two [`model::Model`]s |
//! | `dequantize`, `quantize` | [`ops::convert::dequantize`], [`ops::convert::quantize`] |
//! | `inspect` | [`ops::inspect::inspect`] |
//!
//! Layers, each using only those before it (ARCHITECTURE.md; checked by
//! `tests/check_layers.py`): the codecs (`qresidual-quant`, re-exported as
//! [`quant`]) → [`format`](mod@format) (containers) → [`model`] (one `Model` over every
//! format) → [`engine`] (the one chunk scheduler) → [`report`] → [`apply`]
//! and [`ops`] → [`cli`].
//!
//! ```
//! use qresidual::apply::{apply, ApplyRequest, Strategy};
//! use qresidual::engine::log::Log;
//!
//! let out = std::env::temp_dir().join(format!("qresidual-doc-{}.gguf", std::process::id()));
//! let mut req = ApplyRequest::new(
//!     "fixtures/tiny/base-q4_k_m.gguf",
//!     "fixtures/tiny/residual-f16.safetensors",
//!     &out,
//! );
//! req.strategy = Strategy::Fresh;
//! let result = apply(&req, &Log::silent())?;
//! assert_eq!(result.outputs, vec![out.clone()]);
//! // Every tensor that took a residual says how much of it survived requantization.
//! let with_residual: Vec<_> = result.tensors.iter().filter(|t| t.has_residual).collect();
//! assert!(!with_residual.is_empty());
//! for t in with_residual {
//!     let retention = t.stats.unwrap().retention().unwrap();
//!     assert!(retention > 0.0 && retention <= 1.5, "{}: {retention}", t.name);
//! }
//! std::fs::remove_file(&out).unwrap();
//! # Ok::<(), qresidual::Error>(())
//! ```
#![deny(missing_docs)]

pub mod apply;
pub mod cli;
pub mod engine;
pub mod error;
pub mod format;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod model;
pub mod ops;
pub mod report;

pub use error::{Error, Result};
pub use qresidual_quant as quant;
