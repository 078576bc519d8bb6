//! Hugging Face Hub references: found in the local Hub cache (the layout
//! `huggingface_hub` writes: `models--user--repo/{blobs,snapshots,refs}`),
//! downloaded into it when missing with `hf-hub` (resumable, progress bar,
//! `HF_ENDPOINT`, `HF_TOKEN`), never asked for under `HF_HUB_OFFLINE`.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use super::LocateOptions;
use crate::{Error, Result};

/// A repository on the Hub and what in it is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubReference {
    /// `user/repo`.
    pub repo: String,
    /// The file, the quantization or the whole model.
    pub target: HubTarget,
}

/// What of a repository a reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HubTarget {
    /// `user/repo`: its one GGUF file, or its safetensors checkpoint (folder).
    Model,
    /// `user/repo:Q4_K_M`: the GGUF file of that quantization (llama.cpp's `-hf`).
    Quant(String),
    /// `user/repo/path/file`: that file.
    File(String),
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(['.', '-'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

impl HubReference {
    /// `user/repo`, `user/repo:QUANT` or `user/repo/path/file`; `None` for
    /// anything that reads as a path (absolute, `./…`, `~/…`, or whose
    /// first folder exists here).
    pub fn parse(s: &str) -> Option<HubReference> {
        if s.starts_with(['/', '.', '~']) || s.contains('\\') || s.contains("://") {
            return None;
        }
        let (main, tag) = match s.split_once(':') {
            Some((m, t)) => (m, Some(t)),
            None => (s, None),
        };
        let parts: Vec<&str> = main.split('/').collect();
        if parts.len() < 2
            || !is_name(parts[0])
            || !is_name(parts[1])
            || Path::new(parts[0]).exists()
        {
            return None;
        }
        let repo = format!("{}/{}", parts[0], parts[1]);
        let target = match (tag, parts.len()) {
            (None, 2) => HubTarget::Model,
            (Some(t), 2) if is_name(t) => HubTarget::Quant(t.to_string()),
            (None, _)
                if parts[2..]
                    .iter()
                    .all(|p| !p.is_empty() && *p != "." && *p != "..") =>
            {
                HubTarget::File(parts[2..].join("/"))
            }
            _ => return None,
        };
        Some(HubReference { repo, target })
    }
}

/// The Hub cache folder as `huggingface_hub` finds it: `HF_HUB_CACHE`, else
/// `HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = var("HF_HUB_CACHE") {
        return p;
    }
    if let Some(p) = var("HF_HOME") {
        return p.join("hub");
    }
    let cache = var("XDG_CACHE_HOME")
        .or_else(|| super::home().map(|h| h.join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("huggingface").join("hub")
}

/// The token: `HF_TOKEN`, else the file `huggingface-cli login` writes.
fn token() -> Option<String> {
    if let Some(t) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
    {
        return Some(t.trim().to_string());
    }
    let path = std::env::var_os("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(
            || match std::env::var_os("HF_HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h).join("token"),
                None => hub_cache_dir()
                    .parent()
                    .map(|p| p.join("token"))
                    .unwrap_or_default(),
            },
        );
    std::fs::read_to_string(path)
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .unwrap_or_else(|| "https://huggingface.co".into())
}

/// Where the repository's files are: the cache's snapshot of the revision
/// when it holds them, else the Hub.
trait Files {
    /// Every file of the revision (relative paths).
    fn list(&self) -> Result<Vec<String>>;
    /// The local path of one file.
    fn get(&self, file: &str) -> Result<PathBuf>;
}

/// The snapshot of a revision in the cache.
struct Cached {
    snapshot: PathBuf,
}

impl Cached {
    /// The cached snapshot of `revision` (a commit, or a ref the cache knows).
    fn open(cache: &Path, repo: &str, revision: &str) -> Option<Cached> {
        let dir = cache.join(format!("models--{}", repo.replace('/', "--")));
        let commit = if revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()) {
            revision.to_string()
        } else {
            std::fs::read_to_string(dir.join("refs").join(revision))
                .ok()?
                .trim()
                .to_string()
        };
        let snapshot = dir.join("snapshots").join(commit);
        snapshot.is_dir().then_some(Cached { snapshot })
    }
}

impl Files for Cached {
    fn list(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut stack = vec![self.snapshot.clone()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
            for e in entries {
                let p = e.map_err(|e| Error::io(&dir, e))?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.exists() {
                    let rel = p.strip_prefix(&self.snapshot).expect("below the snapshot");
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        let p = self.snapshot.join(file);
        if p.exists() {
            Ok(p)
        } else {
            Err(Error::Usage(format!(
                "{file} is not in the cached snapshot {}",
                self.snapshot.display()
            )))
        }
    }
}

/// The Hub, through `hf-hub`, downloading into the cache.
struct Remote {
    api: ApiRepo,
    repo: String,
    revision: String,
    endpoint: String,
    authenticated: bool,
}

impl Remote {
    fn new(cache: &Path, repo: &str, revision: &str, progress: bool) -> Result<Remote> {
        let token = token();
        let endpoint = endpoint();
        let api = ApiBuilder::from_cache(Cache::new(cache.to_path_buf()))
            .with_endpoint(endpoint.clone())
            .with_token(token.clone())
            .with_progress(progress)
            .with_retries(3)
            .build()
            .map_err(|e| Error::Usage(format!("{repo}: cannot reach the Hugging Face Hub: {e}")))?;
        Ok(Remote {
            api: api.repo(Repo::with_revision(
                repo.into(),
                RepoType::Model,
                revision.into(),
            )),
            repo: repo.into(),
            revision: revision.into(),
            endpoint,
            authenticated: token.is_some(),
        })
    }

    /// An `hf-hub` error in words naming the repository and the file
    /// (`downloading`: a file's download, which resumes, not a question).
    fn error(&self, what: &str, downloading: bool, e: ApiError) -> Error {
        let at = format!(
            "{} (revision {}) on {}",
            self.repo, self.revision, self.endpoint
        );
        let status = match &e {
            ApiError::RequestError(r) => match r.as_ref() {
                ureq::Error::StatusCode(code) => Some(*code),
                _ => None,
            },
            ApiError::TooManyRetries(inner) => match inner.as_ref() {
                ApiError::RequestError(r) => match r.as_ref() {
                    ureq::Error::StatusCode(code) => Some(*code),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        };
        let msg = match status {
            Some(404) => format!("{what}: not found in {at} (HTTP 404): check the repository name, the file and the revision"),
            Some(401) | Some(403) if self.authenticated => format!(
                "{what}: access to {at} was refused (HTTP {}): the token in HF_TOKEN (or the saved login) has no access; a gated repository must be accepted on its page first",
                status.unwrap_or(0)
            ),
            Some(code @ (401 | 403)) => format!(
                "{what}: {at} needs authentication (HTTP {code}): the repository is private or gated (or does not exist: the Hub answers 401 for unknown repositories too); set HF_TOKEN to a token with access (or run `hf auth login`), and accept a gated repository on its page first"
            ),
            Some(code) => format!("{what}: {at} answered HTTP {code}"),
            None if downloading => format!("{what}: download from {at} failed: {e} (a partial download is kept in the cache and resumed next time)"),
            None => format!("{what}: asking {at} failed: {e}"),
        };
        Error::Usage(msg)
    }
}

impl Files for Remote {
    fn list(&self) -> Result<Vec<String>> {
        let info = self
            .api
            .info()
            .map_err(|e| self.error("the file list", false, e))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    fn get(&self, file: &str) -> Result<PathBuf> {
        let path = self.api.get(file).map_err(|e| self.error(file, true, e))?;
        // hf-hub leaves the download's lock file beside the finished blob;
        // huggingface_hub keeps no such file there.
        if let Ok(blob) = path.canonicalize() {
            let _ = std::fs::remove_file(blob.with_extension("lock"));
        }
        Ok(path)
    }
}

/// The parts of a split GGUF file named by its first part, or just `file`.
fn with_split_parts(file: &str) -> Vec<String> {
    // PREFIX-00001-of-0000N.gguf (llama_split_path)
    let Some(stem) = file.strip_suffix(".gguf") else {
        return vec![file.into()];
    };
    let Some((head, count)) = stem.rsplit_once("-of-") else {
        return vec![file.into()];
    };
    let Some(prefix) = head.strip_suffix("-00001") else {
        return vec![file.into()];
    };
    match count.parse::<u32>() {
        Ok(n) if n > 1 && count.len() == 5 => (1..=n)
            .map(|i| format!("{prefix}-{i:05}-of-{count}.gguf"))
            .collect(),
        _ => vec![file.into()],
    }
}

/// Whether a GGUF file name carries the quantization `tag` as a whole word
/// (`Q4_K` does not match `Q4_K_M`).
fn names_quant(file: &str, tag: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_uppercase();
    let tag = tag.to_ascii_uppercase();
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    name.match_indices(&tag).any(|(i, _)| {
        !word(name[..i].chars().next_back()) && !word(name[i + tag.len()..].chars().next())
    })
}

/// The model GGUF files of a listing (projectors and later split parts left out).
fn model_ggufs(files: &[String]) -> Vec<&String> {
    files
        .iter()
        .filter(|f| {
            f.ends_with(".gguf")
                && !f
                    .rsplit('/')
                    .next()
                    .unwrap_or(f)
                    .to_ascii_lowercase()
                    .contains("mmproj")
        })
        .filter(|f| {
            let parts = with_split_parts(f);
            parts.len() > 1 || !f.contains("-of-")
        })
        .collect()
}

/// What to fetch for a reference and which of it to open: (files, the path
/// to open relative to the snapshot, empty for the snapshot folder).
// Long because it is one match over the reference forms (a file, a
// quantization, a whole repository, sharded or not), each with its own
// message when nothing fits.
fn choose(
    h: &HubReference,
    files: &[String],
    index: &dyn Fn(&str) -> Result<Vec<String>>,
) -> Result<(Vec<String>, String)> {
    let listing = || {
        let g: Vec<&str> = model_ggufs(files).into_iter().map(|s| s.as_str()).collect();
        if g.is_empty() {
            "it holds no GGUF file".to_string()
        } else {
            format!("its GGUF files: {}", g.join(", "))
        }
    };
    match &h.target {
        HubTarget::File(f) => Ok((with_split_parts(f), f.clone())),
        HubTarget::Quant(tag) => {
            let hits: Vec<&String> = model_ggufs(files)
                .into_iter()
                .filter(|f| names_quant(f, tag))
                .collect();
            match hits.as_slice() {
                [one] => Ok((with_split_parts(one), (*one).clone())),
                [] => Err(Error::Usage(format!(
                    "{}: no GGUF file of quantization {tag}; {}",
                    h.repo,
                    listing()
                ))),
                many => Err(Error::Usage(format!(
                    "{}: several GGUF files of quantization {tag} ({}): name one as {}/FILE",
                    h.repo,
                    many.iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    h.repo
                ))),
            }
        }
        HubTarget::Model => {
            let has = |f: &str| files.iter().any(|x| x == f);
            let config: Vec<String> = ["config.json"]
                .iter()
                .filter(|f| has(f))
                .map(|f| f.to_string())
                .collect();
            if has("model.safetensors.index.json") {
                let mut need = config;
                need.push("model.safetensors.index.json".into());
                need.extend(index("model.safetensors.index.json")?);
                return Ok((need, String::new()));
            }
            let st: Vec<&String> = files
                .iter()
                .filter(|f| f.ends_with(".safetensors") && !f.contains('/'))
                .collect();
            if let [one] = st.as_slice() {
                let open = if config.is_empty() {
                    (*one).clone()
                } else {
                    String::new()
                };
                let mut need = config;
                need.push((*one).clone());
                return Ok((need, open));
            }
            let ggufs = model_ggufs(files);
            match (st.len(), ggufs.as_slice()) {
                (0, [one]) => Ok((with_split_parts(one), (*one).clone())),
                (0, []) => Err(Error::Usage(format!("{}: holds neither safetensors nor GGUF files", h.repo))),
                (0, _) if ggufs.iter().any(|f| names_quant(f, "Q4_K_M")) => choose(
                    &HubReference { repo: h.repo.clone(), target: HubTarget::Quant("Q4_K_M".into()) },
                    files,
                    index,
                ),
                (0, _) => Err(Error::Usage(format!("{}: several GGUF files; name one as {}:QUANT; {}", h.repo, h.repo, listing()))),
                _ => Err(Error::Usage(format!(
                    "{}: several safetensors files and no model.safetensors.index.json; name one as {}/FILE",
                    h.repo, h.repo
                ))),
            }
        }
    }
}

/// The shard files an index names, in order, each once.
fn index_shards(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
    let map = v["weight_map"]
        .as_object()
        .ok_or_else(|| Error::format(path, "no weight_map"))?;
    let mut shards: Vec<String> = Vec::new();
    for f in map.values() {
        let f = f
            .as_str()
            .ok_or_else(|| Error::format(path, "a weight_map value is not a file name"))?;
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    Ok(shards)
}

/// Fetch what a reference needs through `files` and give the path to open.
fn fetch(h: &HubReference, files: &dyn Files) -> Result<PathBuf> {
    let listed = match &h.target {
        HubTarget::File(_) => Vec::new(),
        _ => files.list()?,
    };
    let (need, open) = choose(h, &listed, &|index| index_shards(&files.get(index)?))?;
    let mut first = None;
    for f in &need {
        let p = files.get(f)?;
        first.get_or_insert(p);
    }
    let first = first.expect("at least one file");
    if open.is_empty() {
        // The snapshot folder: the first file's folder, `need` being top-level.
        Ok(first.parent().expect("in a snapshot").to_path_buf())
    } else {
        files.get(&open)
    }
}

/// The local path of a Hub reference: the cached snapshot when it holds
/// everything the reference needs, else downloaded (unless offline).
pub fn resolve(h: &HubReference, opts: &LocateOptions) -> Result<PathBuf> {
    let cache = hub_cache_dir();
    let revision = opts.revision.as_deref().unwrap_or("main");
    if let Some(cached) = Cached::open(&cache, &h.repo, revision) {
        if let Ok(p) = fetch(h, &cached) {
            return Ok(p);
        }
    }
    if offline() {
        return Err(Error::Usage(format!(
            "{}: not in the Hugging Face cache {} (revision {revision}) and HF_HUB_OFFLINE is set, so nothing is downloaded",
            describe(h),
            cache.display()
        )));
    }
    fetch(h, &Remote::new(&cache, &h.repo, revision, opts.progress)?)
}

/// The reference as the user wrote it.
fn describe(h: &HubReference) -> String {
    match &h.target {
        HubTarget::Model => h.repo.clone(),
        HubTarget::Quant(t) => format!("{}:{t}", h.repo),
        HubTarget::File(f) => format!("{}/{f}", h.repo),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<HubTarget> {
        HubReference::parse(s).map(|h| h.target)
    }

    #[test]
    fn references_parse() {
        assert_eq!(parse("user/repo"), Some(HubTarget::Model));
        assert_eq!(
            parse("user/repo:Q4_K_M"),
            Some(HubTarget::Quant("Q4_K_M".into()))
        );
        assert_eq!(
            parse("user/repo/sub/f.gguf"),
            Some(HubTarget::File("sub/f.gguf".into()))
        );
        for path in [
            "/a/b",
            "./a/b",
            "~/a/b",
            "a",
            "a/b/../c",
            "a/b/c:Q4",
            "https://x/y",
            "a/b:",
            "-a/b",
        ] {
            assert_eq!(parse(path), None, "{path}");
        }
    }

    #[test]
    fn quantizations_match_whole_words() {
        assert!(names_quant("Llama-3.2-1B-Instruct-Q4_K_M.gguf", "q4_k_m"));
        assert!(names_quant("model.Q8_0.gguf", "Q8_0"));
        assert!(!names_quant("Llama-Q4_K_M.gguf", "Q4_K"));
        assert!(!names_quant("Llama-IQ4_XS.gguf", "Q4_XS"));
    }

    #[test]
    fn split_files_bring_their_parts() {
        assert_eq!(
            with_split_parts("m-00001-of-00003.gguf"),
            [
                "m-00001-of-00003.gguf",
                "m-00002-of-00003.gguf",
                "m-00003-of-00003.gguf"
            ]
        );
        assert_eq!(with_split_parts("m.gguf"), ["m.gguf"]);
        let files: Vec<String> = [
            "a-Q8_0-00001-of-00002.gguf",
            "a-Q8_0-00002-of-00002.gguf",
            "mmproj-f16.gguf",
            "a-Q4_K_M.gguf",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(model_ggufs(&files), [&files[0], &files[3]]);
    }

    #[test]
    fn sharded_checkpoints_need_only_their_shards() {
        let files: Vec<String> = [
            "config.json",
            "model.safetensors.index.json",
            "a.safetensors",
            "b.safetensors",
            "pytorch_model.bin",
            "original/consolidated.pth",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let h = HubReference::parse("u/r").unwrap();
        let (need, open) = choose(&h, &files, &|_| {
            Ok(vec!["a.safetensors".into(), "b.safetensors".into()])
        })
        .unwrap();
        assert_eq!(
            need,
            [
                "config.json",
                "model.safetensors.index.json",
                "a.safetensors",
                "b.safetensors"
            ]
        );
        assert_eq!(open, "");
    }
}
