//! The one error type of the crate. Every message names the file and, where
//! there is one, the tensor.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use qresidual_quant::QuantError;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong.
#[derive(Debug)]
pub enum Error {
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A file is not what it claims to be (malformed header, bad sizes…).
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, in words a user can act on.
        msg: String,
    },
    /// One tensor cannot be used (unknown type, shape mismatch, NaN…).
    Tensor {
        /// The file holding the tensor.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        msg: String,
    },
    /// Inputs that are each valid but do not belong together.
    Mismatch(String),
    /// The command line asks for something impossible.
    Usage(String),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// A malformed-file error on `path`.
    pub fn format(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.as_ref().to_path_buf(),
            msg: msg.into(),
        }
    }

    /// An error about one tensor of `path`.
    pub fn tensor(
        path: impl AsRef<Path>,
        tensor: impl Into<String>,
        msg: impl Into<String>,
    ) -> Self {
        Error::Tensor {
            path: path.as_ref().to_path_buf(),
            tensor: tensor.into(),
            msg: msg.into(),
        }
    }

    /// A codec error on row `row` of `tensor` in `path`.
    pub fn quant(path: impl AsRef<Path>, tensor: &str, row: usize, e: QuantError) -> Self {
        Error::tensor(path, tensor, format!("row {row}: {e}"))
    }

    /// The process exit code for this error: 2 for usage, 1 for data.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Format { path, msg } => write!(f, "{}: {msg}", path.display()),
            Error::Tensor { path, tensor, msg } => {
                write!(f, "{}: tensor '{tensor}': {msg}", path.display())
            }
            Error::Mismatch(msg) | Error::Usage(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
