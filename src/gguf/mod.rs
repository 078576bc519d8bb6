//! GGUF containers: a zero-copy reader and a streaming writer.
