//! The error type and the helpers the bitsandbytes codecs share.

use std::fmt;

/// What can go wrong in a bitsandbytes codec. Bad input never panics.
#[derive(Debug, Clone, PartialEq)]
pub enum BnbError {
    /// The input holds NaN or ±Inf at this (flat) element index.
    NonFinite {
        /// Index of the first non-finite element.
        index: usize,
        /// The offending value.
        value: f32,
    },
    /// A blocksize bitsandbytes does not accept for this codec.
    BadBlocksize(usize),
    /// Slice lengths disagree with the element count.
    BadLength {
        /// Which argument.
        what: &'static str,
        /// Length required.
        expected: usize,
        /// Length supplied.
        got: usize,
    },
}

impl fmt::Display for BnbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BnbError::NonFinite { index, value } => {
                write!(f, "non-finite value {value} at element {index}")
            }
            BnbError::BadBlocksize(b) => write!(f, "unsupported bitsandbytes blocksize {b}"),
            BnbError::BadLength {
                what,
                expected,
                got,
            } => write!(f, "{what}: expected length {expected}, got {got}"),
        }
    }
}

impl std::error::Error for BnbError {}

/// First non-finite element, as the error every quantizer returns.
pub(crate) fn check_finite(x: &[f32]) -> Result<(), BnbError> {
    match x.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(BnbError::NonFinite {
            index,
            value: x[index],
        }),
        None => Ok(()),
    }
}

/// The first `(what, expected, got)` whose lengths differ, as the error.
pub(crate) fn check_lengths(want: &[(&'static str, usize, usize)]) -> Result<(), BnbError> {
    match want.iter().find(|(_, expected, got)| expected != got) {
        Some(&(what, expected, got)) => Err(BnbError::BadLength {
            what,
            expected,
            got,
        }),
        None => Ok(()),
    }
}

/// Number of blocks covering `n` elements (the last one may be partial).
pub fn num_blocks(n: usize, blocksize: usize) -> usize {
    n.div_ceil(blocksize)
}
