//! qresidual: add full-rank weight residuals to quantized LLM checkpoints
//! and measure the precision lost.
//!
//! Containers (`gguf`, `st`) know nothing about math; codecs live in the
//! `qresidual-quant` crate and know nothing about files; one pipeline
//! (`pipeline`) serves every command (`cli`).
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
