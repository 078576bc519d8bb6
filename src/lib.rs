//! qresidual: add full-rank weight residuals to quantized LLM checkpoints
//! and measure the precision lost.
//!
//! Containers (`gguf`, `st`) know nothing about math; codecs live in the
//! `qresidual-quant` crate and know nothing about files; one pipeline
//! (`pipeline`) serves every command (`cli`).
#![deny(missing_docs)]

pub mod adapter;
pub mod bnb_model;
pub mod budget;
pub mod cli;
pub mod compare;
pub mod error;
pub mod extract;
#[doc(hidden)]
pub mod fuzz_entry;
pub mod gguf;
pub mod guard;
pub mod imatrix;
pub mod instruct;
pub mod mix;
pub mod naming;
pub mod pages;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod report;
pub mod source;
pub mod st;
pub mod transform;

pub use error::{Error, Result};
pub use qresidual_quant as quant;
