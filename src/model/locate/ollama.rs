//! Ollama models: `ollama:NAME[:TAG]` is the model layer of the manifest
//! Ollama keeps at `manifests/HOST/NAMESPACE/NAME/TAG` under its models
//! folder, a GGUF file stored as `blobs/sha256-DIGEST`.

use std::path::PathBuf;

use crate::{Error, Result};

/// The media type of the weights layer of an Ollama manifest.
const MODEL_LAYER: &str = "application/vnd.ollama.image.model";

/// Ollama's models folder: `OLLAMA_MODELS`, else `~/.ollama/models`, else the
/// Linux service's `/usr/share/ollama/.ollama/models` when that one exists.
pub fn ollama_models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("OLLAMA_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let user = super::home()
        .unwrap_or_default()
        .join(".ollama")
        .join("models");
    let service = PathBuf::from("/usr/share/ollama/.ollama/models");
    if !user.exists() && service.exists() {
        service
    } else {
        user
    }
}

/// The manifest path of a model name: `llama3.2` →
/// `registry.ollama.ai/library/llama3.2/latest`, `user/m:q4` →
/// `registry.ollama.ai/user/m/q4`, `hf.co/user/repo:Q4_K_M` as written.
fn manifest_path(name: &str) -> Option<PathBuf> {
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, t),
        _ => (name, "latest"),
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts
        .iter()
        .chain([&tag])
        .any(|p| p.is_empty() || *p == "." || *p == "..")
    {
        return None;
    }
    let full: Vec<&str> = match parts.as_slice() {
        [model] => vec!["registry.ollama.ai", "library", model],
        [ns, model] => vec!["registry.ollama.ai", ns, model],
        [host, rest @ ..] => std::iter::once(*host).chain(rest.iter().copied()).collect(),
        [] => return None,
    };
    let mut p: PathBuf = full.iter().collect();
    p.push(tag);
    Some(p)
}

/// The GGUF blob of a local Ollama model.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let models = ollama_models_dir();
    let rel = manifest_path(name).ok_or_else(|| {
        Error::Usage(format!(
            "ollama:{name}: not a model name such as llama3.2 or llama3.2:1b"
        ))
    })?;
    let manifest = models.join("manifests").join(&rel);
    let text = std::fs::read_to_string(&manifest).map_err(|_| {
        Error::Usage(format!(
            "ollama:{name}: no manifest {} (is the model pulled? `ollama list` shows what is; OLLAMA_MODELS sets the folder)",
            manifest.display()
        ))
    })?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::format(&manifest, format!("not a JSON manifest: {e}")))?;
    let layer = v["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["mediaType"] == MODEL_LAYER)
        .ok_or_else(|| Error::format(&manifest, format!("no layer of media type {MODEL_LAYER}")))?;
    let digest = layer["digest"]
        .as_str()
        .and_then(|d| d.strip_prefix("sha256:"))
        .filter(|d| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            Error::format(
                &manifest,
                "the model layer's digest is not sha256:<64 hex digits>",
            )
        })?;
    let blob = models.join("blobs").join(format!("sha256-{digest}"));
    let size = std::fs::metadata(&blob)
        .map_err(|e| {
            Error::format(
                &manifest,
                format!("the model layer's blob {}: {e}", blob.display()),
            )
        })?
        .len();
    if let Some(expected) = layer["size"].as_u64() {
        if expected != size {
            return Err(Error::format(
                &blob,
                format!(
                    "{size} bytes where the manifest {} says {expected} (an unfinished pull?)",
                    manifest.display()
                ),
            ));
        }
    }
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_manifest_paths() {
        let p = |s: &str| manifest_path(s).map(|p| p.to_string_lossy().into_owned());
        assert_eq!(
            p("llama3.2").unwrap(),
            "registry.ollama.ai/library/llama3.2/latest"
        );
        assert_eq!(
            p("llama3.2:1b").unwrap(),
            "registry.ollama.ai/library/llama3.2/1b"
        );
        assert_eq!(p("me/m:q4").unwrap(), "registry.ollama.ai/me/m/q4");
        assert_eq!(p("hf.co/u/r:Q4_K_M").unwrap(), "hf.co/u/r/Q4_K_M");
        assert_eq!(p("../x"), None);
        assert_eq!(p(""), None);
    }
}
