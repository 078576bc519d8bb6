//! Where outputs may go: never onto an input (through any path that
//! resolves to it, split parts included), never onto a folder, and only
//! into a folder that exists. Checked before anything is read at length.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The canonical form of a path that may not exist yet.
fn canonical_target(out: &Path) -> Result<PathBuf> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir = parent.canonicalize().map_err(|_| {
        Error::Usage(format!(
            "{}: the output folder {} does not exist",
            out.display(),
            parent.display()
        ))
    })?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file name", out.display())))?;
    Ok(dir.join(name))
}

/// Refuse an output that would overwrite one of the inputs.
pub fn check_output(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    check_target("output", out, inputs)
}

fn check_target(what: &str, out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let target = canonical_target(out)?;
    if target.is_dir() {
        return Err(Error::Usage(format!(
            "{}: is a folder; give a file name for the output",
            out.display()
        )));
    }
    for input in inputs {
        if input.canonicalize().ok().as_deref() == Some(target.as_path()) {
            return Err(Error::Usage(format!(
                "{}: the {what} would overwrite the input {}",
                out.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Refuse split outputs (`PREFIX-0000k-of-0000N.gguf`, named after `out`)
/// that could land on a split input: N is only known while writing.
pub fn check_split_output(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    use crate::format::gguf::split::{output_prefix, parse_split_path};
    let prefix = output_prefix(&canonical_target(out)?);
    for input in inputs {
        let Ok(input) = input.canonicalize() else {
            continue;
        };
        if parse_split_path(&input).is_some_and(|(p, _, _)| p == prefix) {
            return Err(Error::Usage(format!(
                "{}: the split outputs {}-NNNNN-of-NNNNN.gguf could overwrite the input {}",
                out.display(),
                prefix.display(),
                input.display()
            )));
        }
    }
    Ok(())
}

/// Write a small file (a report, a Modelfile) whole: into a temporary file
/// beside `path`, renamed over it once complete.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.qresidual-tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Refuse a report path that is an input or the output.
pub fn check_report(report: &Path, out: &Path, inputs: &[PathBuf]) -> Result<()> {
    check_target("report", report, inputs)?;
    if canonical_target(report)? == canonical_target(out)? {
        return Err(Error::Usage(format!(
            "{}: the report would overwrite the output",
            report.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_equal_to_input_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.gguf");
        std::fs::write(&input, b"x").unwrap();
        let again = dir.path().join(".").join("in.gguf");
        assert!(matches!(
            check_output(&again, std::slice::from_ref(&input)),
            Err(Error::Usage(_))
        ));
        assert!(check_output(&dir.path().join("out.gguf"), &[input]).is_ok());
        assert!(check_output(&dir.path().join("missing/out.gguf"), &[]).is_err());
    }
}
