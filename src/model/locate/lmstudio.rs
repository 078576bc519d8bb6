//! LM Studio models: `lmstudio:PUBLISHER/REPO/FILE` under LM Studio's models
//! folder (`PUBLISHER/REPO/FILE.gguf`, the layout LM Studio downloads into),
//! or `lmstudio:TEXT`, the one GGUF file whose path there contains TEXT.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// LM Studio's models folder: `LMSTUDIO_MODELS` (this tool's override), else
/// the `downloadsFolder` of LM Studio's settings, else `models` in its home
/// (`~/.lmstudio`, or where `~/.lmstudio-home-pointer` says), else the folder
/// of releases before 0.3, `~/.cache/lm-studio/models`.
pub fn lmstudio_models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("LMSTUDIO_MODELS").filter(|v| !v.is_empty()) {
        return PathBuf::from(p);
    }
    let home = super::home().unwrap_or_default();
    let lms_home = std::fs::read_to_string(home.join(".lmstudio-home-pointer"))
        .ok()
        .map(|p| PathBuf::from(p.trim()))
        .filter(|p| p.is_dir())
        .unwrap_or_else(|| home.join(".lmstudio"));
    let configured = std::fs::read_to_string(lms_home.join("settings.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v["downloadsFolder"].as_str().map(PathBuf::from))
        .filter(|p| p.is_dir());
    let legacy = home.join(".cache").join("lm-studio").join("models");
    match configured {
        Some(p) => p,
        None if !lms_home.join("models").exists() && legacy.exists() => legacy,
        None => lms_home.join("models"),
    }
}

/// Every GGUF file below `dir`, relative to it.
fn ggufs(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for p in entries.flatten().map(|e| e.path()) {
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "gguf") {
                let rel = p.strip_prefix(dir).expect("below the folder");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The file of an LM Studio model reference.
pub fn resolve(name: &str) -> Result<PathBuf> {
    let models = lmstudio_models_dir();
    if name.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(Error::Usage(format!(
            "lmstudio:{name}: not a model such as PUBLISHER/REPO/FILE.gguf"
        )));
    }
    let direct = models.join(name);
    if direct.is_file() {
        return Ok(direct);
    }
    let all = ggufs(&models);
    let needle = name.to_ascii_lowercase();
    let hits: Vec<&String> = all
        .iter()
        .filter(|f| {
            f.to_ascii_lowercase().contains(&needle) && !f.to_ascii_lowercase().contains("mmproj")
        })
        .collect();
    match hits.as_slice() {
        [one] => Ok(models.join(one)),
        [] => Err(Error::Usage(format!(
            "lmstudio:{name}: no GGUF file in LM Studio's models folder {} matches (LMSTUDIO_MODELS sets the folder; {} GGUF files there)",
            models.display(),
            all.len()
        ))),
        many => Err(Error::Usage(format!(
            "lmstudio:{name}: {} files in {} match ({}): name one as lmstudio:PUBLISHER/REPO/FILE",
            many.len(),
            models.display(),
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}
