//! GGUF containers: a zero-copy reader and a streaming writer.
//!
//! Containers know nothing about math: tensor types matter here only for
//! their sizes ([`qresidual_quant::GgmlType`]).

mod edit;
mod inspect;
mod reader;
pub mod split;
mod value;
mod writer;

pub use edit::{apply_edits, edit_metadata, parse_edits, MetaEdit};
pub use inspect::{inspect_gguf, inspect_json, value_json};
pub use reader::{parse_bytes, GgufFile, ParsedGguf, TensorInfo};
pub use value::{MetaArray, MetaValue, ValueType, MAX_ARRAY_NESTING};
pub use writer::{GgufWriter, TensorSpec, WriterOptions};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
/// The version the writer produces.
pub const GGUF_VERSION: u32 = 3;
/// Alignment when `general.alignment` is absent (`GGUF_DEFAULT_ALIGNMENT`).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key holding the alignment (u32).
pub const KEY_ALIGNMENT: &str = "general.alignment";
/// Tensor names must be shorter than this (`GGML_MAX_NAME`).
pub const MAX_NAME: usize = 64;
/// At most this many dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: usize = 4;

/// Whether `path` is a file starting with the GGUF magic.
pub fn is_gguf(path: &std::path::Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.is_file()
        && std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut magic))
            .map(|_| &magic == b"GGUF")
            .unwrap_or(false)
}
