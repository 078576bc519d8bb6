//! Containers: bytes, dtypes and layouts of the files models come in, and
//! nothing about the numbers they hold (the codecs are in
//! `qresidual_quant`). GGUF (reader, writer, splits, metadata edits),
//! safetensors (single file or shards), llama.cpp importance matrices, and
//! the page hints that keep memory-mapped reads bounded.

pub mod gguf;
pub mod imatrix;
pub mod output;
pub mod pages;
pub mod st;
