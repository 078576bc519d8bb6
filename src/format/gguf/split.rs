//! Split file names and keys, as llama.cpp's `llama_split_path` /
//! `llama_split_prefix` and tools/gguf-split define them.

use std::path::{Path, PathBuf};

/// `split.no`: u16, 0-based index of this file.
pub const KEY_SPLIT_NO: &str = "split.no";
/// `split.count`: u16, number of files.
pub const KEY_SPLIT_COUNT: &str = "split.count";
/// `split.tensors.count`: i32, tensors in the whole model.
pub const KEY_SPLIT_TENSORS_COUNT: &str = "split.tensors.count";

/// Whether `key` is one of the split keys the writer manages itself.
pub fn is_split_key(key: &str) -> bool {
    matches!(
        key,
        KEY_SPLIT_NO | KEY_SPLIT_COUNT | KEY_SPLIT_TENSORS_COUNT
    )
}

/// `PREFIX-00001-of-00003.gguf` for `no` = 0, `count` = 3 (`llama_split_path`).
pub fn split_path(prefix: &Path, no: u32, count: u32) -> PathBuf {
    let mut s = prefix.as_os_str().to_os_string();
    s.push(format!("-{:05}-of-{:05}.gguf", no + 1, count));
    PathBuf::from(s)
}

/// The prefix of `path` if it is split `no` (0-based) of `count`
/// (`llama_split_prefix`).
pub fn split_prefix(path: &Path, no: u32, count: u32) -> Option<PathBuf> {
    let s = path.to_str()?;
    let postfix = format!("-{:05}-of-{:05}.gguf", no + 1, count);
    if s.len() <= postfix.len() || !s.ends_with(&postfix) {
        return None;
    }
    Some(PathBuf::from(&s[..s.len() - postfix.len()]))
}

/// Parse `PREFIX-NNNNN-of-MMMMM.gguf` into (prefix, 0-based no, count).
pub fn parse_split_path(path: &Path) -> Option<(PathBuf, u32, u32)> {
    let s = path.to_str()?;
    let stem = s.strip_suffix(".gguf")?;
    // "-NNNNN-of-MMMMM" is 15 bytes
    if stem.len() <= 15 || !stem.is_char_boundary(stem.len() - 15) {
        return None;
    }
    let (prefix, tail) = stem.split_at(stem.len() - 15);
    let b = tail.as_bytes();
    if b[0] != b'-' || &tail[6..10] != "-of-" {
        return None;
    }
    let no: u32 = tail[1..6].parse().ok()?;
    let count: u32 = tail[10..15].parse().ok()?;
    if no == 0 || no > count {
        return None;
    }
    Some((PathBuf::from(prefix), no - 1, count))
}

/// The prefix for writing splits to `path`: `out.gguf` → `out`,
/// `out-00001-of-00004.gguf` → `out`, anything else unchanged.
pub fn output_prefix(path: &Path) -> PathBuf {
    if let Some((prefix, _, _)) = parse_split_path(path) {
        return prefix;
    }
    match path.to_str().and_then(|s| s.strip_suffix(".gguf")) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let p = split_path(Path::new("/m/model"), 1, 3);
        assert_eq!(p, Path::new("/m/model-00002-of-00003.gguf"));
        assert_eq!(split_prefix(&p, 1, 3).unwrap(), Path::new("/m/model"));
        assert_eq!(split_prefix(&p, 0, 3), None);
        assert_eq!(
            parse_split_path(&p).unwrap(),
            (PathBuf::from("/m/model"), 1, 3)
        );
        assert_eq!(parse_split_path(Path::new("x-00000-of-00003.gguf")), None);
        assert_eq!(parse_split_path(Path::new("model.gguf")), None);
        assert_eq!(output_prefix(Path::new("a/out.gguf")), Path::new("a/out"));
        assert_eq!(output_prefix(&p), Path::new("/m/model"));
    }
}
