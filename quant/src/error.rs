//! The one error type of the row functions.

use std::fmt;

use crate::types::GgmlType;

/// What can go wrong when encoding or decoding a row.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantError {
    /// The input row holds NaN or ±Inf at this element index.
    NonFinite {
        /// Index of the first non-finite element within the row.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// This type cannot be decoded or encoded by this crate.
    Unsupported {
        /// The type asked for.
        ty: GgmlType,
        /// `"dequantize"` or `"quantize"`.
        op: &'static str,
        /// Why, in words a user can act on.
        why: &'static str,
    },
    /// An importance vector that does not match its row: wrong length, or an
    /// entry that is NaN, infinite or negative.
    BadImportance {
        /// Number of importance values supplied.
        len: usize,
        /// Number of elements in the row.
        expected: usize,
        /// The first bad entry (index, value), if the length is right.
        entry: Option<(usize, f32)>,
    },
    /// A value the format cannot hold, though finite (MLX's E8M0 exponent
    /// below 2^-127).
    OutOfRange {
        /// Index of the element within the row.
        index: usize,
        /// The value.
        value: f32,
        /// What the format cannot represent.
        why: &'static str,
    },
    /// The row length is not a multiple of the block size, or the byte and
    /// element slices disagree.
    BadLength {
        /// The type.
        ty: GgmlType,
        /// Number of elements in the row.
        elements: usize,
        /// Number of bytes supplied.
        bytes: usize,
    },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::NonFinite { index, value } => {
                write!(f, "non-finite value {value} at element {index}")
            }
            QuantError::Unsupported { ty, op, why } => {
                write!(f, "cannot {op} {}: {why}", ty.name())
            }
            QuantError::BadImportance {
                len,
                expected,
                entry,
            } => match entry {
                Some((i, v)) => write!(
                    f,
                    "importance value {v} at column {i} (must be finite and >= 0)"
                ),
                None => write!(
                    f,
                    "{len} importance values for a row of {expected} elements"
                ),
            },
            QuantError::OutOfRange { index, value, why } => {
                write!(f, "value {value} at element {index}: {why}")
            }
            QuantError::BadLength {
                ty,
                elements,
                bytes,
            } => write!(
                f,
                "{} row of {elements} elements does not fit {bytes} bytes (block size {}, {} bytes per block)",
                ty.name(),
                ty.block_size(),
                ty.type_size()
            ),
        }
    }
}

impl std::error::Error for QuantError {}
