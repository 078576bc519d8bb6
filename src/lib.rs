//! qresidual: add full-rank weight residuals to quantized LLM checkpoints
//! and measure the precision lost.
//!
//! Containers (`gguf`, `st`) know nothing about math; codecs live in the
//! `qresidual-quant` crate and know nothing about files; one pipeline
//! (`pipeline`) serves every command (`cli`).
#![deny(missing_docs)]

pub mod error;
pub mod gguf;
pub mod naming;
pub mod st;

pub use error::{Error, Result};
pub use qresidual_quant as quant;
