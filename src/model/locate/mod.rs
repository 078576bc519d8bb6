//! Where a model named on the command line is: a path, or a reference to a
//! model another program keeps — the Hugging Face Hub (`user/repo`,
//! `user/repo:Q4_K_M`, `user/repo/path/file.gguf`, cached or downloaded into
//! the Hub's cache), Ollama (`ollama:NAME[:TAG]`) or LM Studio
//! (`lmstudio:PUBLISHER/REPO/FILE`, or a search of its models folder).
//!
//! One resolver for every command: a model argument goes through
//! [`resolve`] and the commands see a local path. A path that exists always
//! wins over a reference.

mod hub;
mod lmstudio;
mod ollama;

use std::path::{Path, PathBuf};

use crate::{Error, Result};

pub use hub::{hub_cache_dir, HubReference};
pub use lmstudio::lmstudio_models_dir;
pub use ollama::ollama_models_dir;

/// How references are resolved.
#[derive(Debug, Clone, Default)]
pub struct LocateOptions {
    /// Hub revision (branch, tag or commit) for references that give none; `main` by default.
    pub revision: Option<String>,
    /// Show a progress bar while downloading.
    pub progress: bool,
}

/// What a model argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A file or folder on disk.
    Path(PathBuf),
    /// A Hugging Face Hub repository or file in it.
    Hub(HubReference),
    /// An Ollama model: `NAME[:TAG]`.
    Ollama(String),
    /// An LM Studio model: `PUBLISHER/REPO/FILE` or a search term.
    LmStudio(String),
}

impl Reference {
    /// Read a model argument. An existing path is a path whatever its form;
    /// `ollama:` and `lmstudio:` name those programs' models; `user/repo…`
    /// (optionally `hf:`-prefixed) a Hub repository; anything else a path.
    pub fn parse(arg: &str) -> Reference {
        if Path::new(arg).exists() {
            return Reference::Path(arg.into());
        }
        if let Some(name) = arg.strip_prefix("ollama:") {
            return Reference::Ollama(name.to_string());
        }
        if let Some(name) = arg.strip_prefix("lmstudio:") {
            return Reference::LmStudio(name.to_string());
        }
        let hub = arg.strip_prefix("hf:").unwrap_or(arg);
        match HubReference::parse(hub) {
            Some(h) => Reference::Hub(h),
            None => Reference::Path(arg.into()),
        }
    }
}

/// The local path of a model argument: the path itself, the Hub cache's
/// snapshot (downloading what is missing), Ollama's blob or LM Studio's file.
pub fn resolve(arg: &Path, opts: &LocateOptions) -> Result<PathBuf> {
    let Some(text) = arg.to_str() else {
        return Ok(arg.to_path_buf());
    };
    match Reference::parse(text) {
        Reference::Path(p) => Ok(p),
        Reference::Hub(h) => hub::resolve(&h, opts).map_err(|e| not_a_path(text, e)),
        Reference::Ollama(name) => ollama::resolve(&name),
        Reference::LmStudio(name) => lmstudio::resolve(&name),
    }
}

/// A Hub failure for an argument that is not a file either: say both.
fn not_a_path(arg: &str, e: Error) -> Error {
    let note =
        format!("(no file or folder '{arg}' exists, so it was read as a Hugging Face reference)");
    match e {
        Error::Usage(m) => Error::Usage(format!("{m} {note}")),
        Error::Mismatch(m) => Error::Mismatch(format!("{m} {note}")),
        Error::Format { path, msg } => Error::Format {
            path,
            msg: format!("{msg} {note}"),
        },
        other => other,
    }
}

/// The user's home folder.
fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_read_as_the_right_reference() {
        assert_eq!(
            Reference::parse("ollama:llama3.2:1b"),
            Reference::Ollama("llama3.2:1b".into())
        );
        assert_eq!(
            Reference::parse("lmstudio:a/b/c.gguf"),
            Reference::LmStudio("a/b/c.gguf".into())
        );
        assert!(matches!(Reference::parse("user/repo"), Reference::Hub(_)));
        assert!(matches!(
            Reference::parse("hf:user/repo:Q4_K_M"),
            Reference::Hub(_)
        ));
        assert!(matches!(
            Reference::parse("./user/repo"),
            Reference::Path(_)
        ));
        assert!(matches!(
            Reference::parse("/abs/model.gguf"),
            Reference::Path(_)
        ));
        assert!(matches!(Reference::parse("model.gguf"), Reference::Path(_)));
    }
}
