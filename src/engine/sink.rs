//! Where the scheduler's encoded bytes go: one trait over every output
//! container, so [`crate::engine::pipeline::run`] writes GGUF (single or
//! split) and safetensors alike.

use crate::format::gguf::GgufWriter;
use crate::format::st::SafetensorsWriter;
use crate::Result;

/// An output that takes its tensors' bytes in file order: each tensor is
/// begun, its bytes written in any number of pieces, then ended. Closing the
/// file (fsync, rename into place) belongs to the writer itself, once the
/// scheduler is done.
pub trait TensorSink {
    /// The bytes of the tensor `name` follow.
    fn begin_tensor(&mut self, _name: &str) -> Result<()> {
        Ok(())
    }
    /// The next bytes of the current tensor.
    fn write(&mut self, bytes: &[u8]) -> Result<()>;
    /// The current tensor is complete.
    fn end_tensor(&mut self) -> Result<()> {
        Ok(())
    }
}

/// GGUF files, split or not: the writer knows every tensor's size and
/// pads and moves to the next split file itself.
impl TensorSink for GgufWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        GgufWriter::write(self, bytes)
    }
}

/// A safetensors file whose header declared the tensors in this order.
impl TensorSink for SafetensorsWriter {
    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        SafetensorsWriter::write(self, bytes)
    }
}
