//! `metadata`: copy a model with edited metadata. Tensor data is streamed
//! from the map; with no edit the output is byte-identical (for GGUF v3
//! inputs laid out as gguf.cpp writes them).

use std::path::{Path, PathBuf};

use super::split::{is_split_key, output_prefix, split_path};
use super::{GgufFile, GgufWriter, MetaValue, TensorSpec, WriterOptions};
use crate::{Error, Result};

/// One metadata change.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaEdit {
    /// Set a key: replaced in place if present, appended otherwise.
    Set(String, MetaValue),
    /// Remove a key, which must exist.
    Remove(String),
}

/// Build edits from command-line forms: `KEY=TYPE:VALUE` (`--set`),
/// `KEY=PATH` (`--set-file`, the file's text as a string) and `KEY`
/// (`--remove`). Removals come first, then sets, then file sets.
pub fn parse_edits(
    set: &[String],
    set_file: &[String],
    remove: &[String],
) -> Result<Vec<MetaEdit>> {
    let mut edits: Vec<MetaEdit> = remove.iter().map(|k| MetaEdit::Remove(k.clone())).collect();
    for s in set {
        let (k, spec) = s.split_once('=').ok_or_else(|| {
            Error::Usage(format!(
                "--set '{s}': expected KEY=TYPE:VALUE, e.g. general.name=str:My model"
            ))
        })?;
        let v =
            MetaValue::parse_typed(spec).map_err(|e| Error::Usage(format!("--set '{s}': {e}")))?;
        edits.push(MetaEdit::Set(k.to_string(), v));
    }
    for s in set_file {
        let (k, p) = s
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--set-file '{s}': expected KEY=PATH")))?;
        let text = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        let text = String::from_utf8(text)
            .map_err(|_| Error::format(p, "--set-file: file is not valid UTF-8 text"))?;
        edits.push(MetaEdit::Set(k.to_string(), MetaValue::String(text)));
    }
    Ok(edits)
}

/// Apply `edits` in order to `metadata`.
pub fn apply_edits(metadata: &mut Vec<(String, MetaValue)>, edits: &[MetaEdit]) -> Result<()> {
    for e in edits {
        let key = match e {
            MetaEdit::Set(k, _) | MetaEdit::Remove(k) => k,
        };
        if key.is_empty() {
            return Err(Error::Usage("metadata key is empty".into()));
        }
        if is_split_key(key) {
            return Err(Error::Usage(format!(
                "'{key}' is managed by the split writer and cannot be edited"
            )));
        }
        let pos = metadata.iter().position(|(k, _)| k == key);
        match (e, pos) {
            (MetaEdit::Set(_, v), Some(i)) => metadata[i].1 = v.clone(),
            (MetaEdit::Set(k, v), None) => metadata.push((k.clone(), v.clone())),
            (MetaEdit::Remove(_), Some(i)) => {
                metadata.remove(i);
            }
            (MetaEdit::Remove(k), None) => {
                return Err(Error::Usage(format!(
                    "--remove '{k}': no such metadata key"
                )))
            }
        }
    }
    Ok(())
}

fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            if x.dev() == y.dev() && x.ino() == y.ino() {
                return true;
            }
        }
    }
    let canon = |p: &Path| -> Option<PathBuf> {
        if let Ok(c) = p.canonicalize() {
            return Some(c);
        }
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Some(parent.canonicalize().ok()?.join(p.file_name()?))
    };
    match (canon(a), canon(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Copy `input` (a single file or a whole split set) to `output` with
/// `edits` applied to the metadata, keeping the split layout. Refuses to
/// write over any input file. Returns the written paths.
pub fn edit_metadata(input: &Path, output: &Path, edits: &[MetaEdit]) -> Result<Vec<PathBuf>> {
    let f = GgufFile::open(input)?;
    let inputs = f.paths();
    let n_split = inputs.len();
    let outputs: Vec<PathBuf> = if n_split > 1 {
        let prefix = output_prefix(output);
        (0..n_split as u32)
            .map(|k| split_path(&prefix, k, n_split as u32))
            .collect()
    } else {
        vec![output.to_path_buf()]
    };
    for o in &outputs {
        if let Some(i) = inputs.iter().find(|i| same_file(i, o)) {
            return Err(Error::Usage(format!(
                "output {} is the input {}: write to another file",
                o.display(),
                i.display()
            )));
        }
    }
    let mut metadata = f.metadata().to_vec();
    apply_edits(&mut metadata, edits)?;
    let specs: Vec<TensorSpec> = f
        .tensors()
        .iter()
        .map(|t| TensorSpec {
            name: t.name.clone(),
            ty: t.ty,
            ne: t.ne.clone(),
        })
        .collect();
    let layout: Vec<usize> = f.tensors().iter().map(|t| t.file).collect();
    let mut w = GgufWriter::create_with_layout(
        output,
        &metadata,
        &specs,
        &layout,
        &WriterOptions::default(),
    )?;
    f.advise_sequential();
    for i in 0..specs.len() {
        w.write(f.tensor_data(i))?;
    }
    w.finish()
}
