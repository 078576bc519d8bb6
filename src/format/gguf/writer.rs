//! The streaming writer: GGUF v3 laid out as gguf.cpp's `gguf_write_out`
//! does (header, tensor infos, zero padding to the alignment, then each
//! tensor's data followed by zero padding), optionally split as
//! tools/gguf-split does. Memory stays constant: headers are known up front,
//! data is streamed, nothing is ever sought back to.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use qresidual_quant::GgmlType;

use super::split::{
    is_split_key, output_prefix, split_path, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT,
};
use super::value::{encode_kv, encode_str, MetaValue};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, GGUF_VERSION, KEY_ALIGNMENT, MAX_DIMS, MAX_NAME};
use crate::{Error, Result};

/// What to write for one tensor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name, shorter than 64 bytes, unique.
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// Dimensions in ggml order (`ne[0]` innermost); written as given, so
    /// trailing 1s are kept.
    pub ne: Vec<u64>,
}

impl TensorSpec {
    fn size(&self) -> Option<u64> {
        let n = self
            .ne
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= i64::MAX as u64)?;
        self.ty.row_size_u64(n)
    }
}

/// Layout choices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriterOptions {
    /// Data alignment. `None`: `general.alignment` from the metadata, or 32.
    /// A value other than 32 that the metadata does not declare is appended
    /// as `general.alignment` so readers see it.
    pub alignment: Option<u64>,
    /// Maximum bytes of tensor data per file; output is then split as
    /// gguf-split `--split-max-size` does (`PREFIX-00001-of-0000N.gguf`).
    pub split_max_size: Option<u64>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

struct SplitOut {
    final_path: PathBuf,
    tmp_path: PathBuf,
    header: Vec<u8>,
    /// Temp file created (and so to be removed on failure).
    created: bool,
}

/// Streams one model to disk; see the module docs. Dropping it before
/// [`finish`](Self::finish) removes the temporary files.
pub struct GgufWriter {
    alignment: u64,
    names: Vec<String>,
    sizes: Vec<u64>,
    split_of: Vec<usize>,
    splits: Vec<SplitOut>,
    cur_tensor: usize,
    cur_written: u64,
    cur_split: Option<(usize, BufWriter<File>)>,
    /// Bytes written to the current file since its writeback was last
    /// started (see [`GgufWriter::start_writeback`]).
    unsynced: u64,
}

/// Bytes after which the writer asks the kernel to start writing the file
/// out, so the fsync at the end waits for the last stretch only.
const WRITEBACK_EVERY: u64 = 64 << 20;

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("files", &self.splits.len())
            .field("tensors", &self.sizes.len())
            .field("cur_tensor", &self.cur_tensor)
            .finish()
    }
}

fn pad_len(n: u64, alignment: u64) -> u64 {
    n.next_multiple_of(alignment) - n
}

fn tmp_path_for(final_path: &Path) -> PathBuf {
    let name = final_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out.gguf".to_string());
    let counter = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{name}.{}.{counter}.qresidual-tmp", std::process::id());
    final_path.with_file_name(tmp)
}

/// Whether process `pid` still runs (or may: anything but "no such process").
#[cfg(unix)]
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(not(unix))]
fn process_alive(_pid: i32) -> bool {
    true
}

/// Remove the temporary files an earlier, killed run left for this same
/// target (`.{name}.{pid}.{n}.qresidual-tmp` whose pid no longer runs). A
/// live pid's files are left alone: that may be a concurrent run. Only
/// best effort; failures are ignored.
fn remove_stale_temps(final_path: &Path) {
    let Some(name) = final_path.file_name().and_then(|n| n.to_str()) else {
        return;
    };
    let dir = match final_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let prefix = format!(".{name}.");
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let f = e.file_name();
        let Some(rest) = f
            .to_str()
            .and_then(|f| f.strip_prefix(&prefix))
            .and_then(|r| r.strip_suffix(".qresidual-tmp"))
        else {
            continue;
        };
        let mut parts = rest.split('.');
        let (Some(pid), Some(n), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<i32>(), n.parse::<u64>()) else {
            continue;
        };
        if pid <= 0 || pid as u32 == std::process::id() || process_alive(pid) {
            continue;
        }
        let _ = std::fs::remove_file(e.path());
    }
}

impl GgufWriter {
    /// Start writing `tensors` with `metadata` to `path` (or to split files
    /// named after it when `opts.split_max_size` is set). Everything about
    /// the layout is validated here; data follows with [`write`](Self::write).
    pub fn create(
        path: &Path,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
        opts: &WriterOptions,
    ) -> Result<GgufWriter> {
        let alignment = resolve_alignment(path, metadata, opts)?;
        let sizes = tensor_sizes(path, tensors, alignment)?;
        match opts.split_max_size {
            None => Self::create_inner(path, metadata, tensors, &sizes, None, alignment),
            Some(max) => {
                // gguf-split's size strategy: start a new file when the padded
                // tensor data would exceed the limit. Unlike gguf-split we never
                // leave a file without tensors: a tensor larger than the limit
                // gets a file of its own instead of an error.
                let mut split_of = Vec::with_capacity(tensors.len());
                let (mut split, mut cur, mut in_split) = (0usize, 0u64, 0usize);
                for &s in &sizes {
                    let n = s.saturating_add(pad_len(s, alignment));
                    let next = cur.saturating_add(n);
                    if next > max && in_split > 0 {
                        split += 1;
                        cur = n;
                        in_split = 0;
                    } else {
                        cur = next;
                    }
                    in_split += 1;
                    split_of.push(split);
                }
                Self::create_inner(path, metadata, tensors, &sizes, Some(split_of), alignment)
            }
        }
    }

    /// Like [`create`](Self::create) with an explicit split layout:
    /// `split_of[i]` is the file of tensor `i` (non-decreasing from 0, no
    /// gaps). With more than one file the names are `PREFIX-0000k-of-0000N.gguf`;
    /// this reproduces an existing split model file for file.
    /// `opts.split_max_size` is ignored.
    pub fn create_with_layout(
        path: &Path,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
        split_of: &[usize],
        opts: &WriterOptions,
    ) -> Result<GgufWriter> {
        let alignment = resolve_alignment(path, metadata, opts)?;
        let sizes = tensor_sizes(path, tensors, alignment)?;
        if split_of.len() != tensors.len() {
            return Err(Error::Usage(format!(
                "split layout lists {} tensors but {} are declared",
                split_of.len(),
                tensors.len()
            )));
        }
        let mut prev = 0usize;
        for (i, &s) in split_of.iter().enumerate() {
            if (i == 0 && s != 0) || s < prev || s > prev + 1 {
                return Err(Error::Usage(format!(
                    "split layout must count up from 0 without gaps; tensor {i} is in split {s} after split {prev}"
                )));
            }
            prev = s;
        }
        let layout = if prev > 0 {
            Some(split_of.to_vec())
        } else {
            None
        };
        Self::create_inner(path, metadata, tensors, &sizes, layout, alignment)
    }

    fn create_inner(
        path: &Path,
        metadata: &[(String, MetaValue)],
        tensors: &[TensorSpec],
        sizes: &[u64],
        layout: Option<Vec<usize>>,
        alignment: u64,
    ) -> Result<GgufWriter> {
        validate_metadata(path, metadata)?;
        check_unique_names(path, tensors)?;
        let is_split = layout.is_some();
        let (split_of, n_split) = split_assignment(layout, tensors.len())?;
        let file_metadata =
            FileMetadata::new(metadata, alignment, is_split, n_split, tensors.len());
        let prefix = output_prefix(path);
        let splits = (0..n_split)
            .map(|k| {
                let final_path = if is_split {
                    split_path(&prefix, k as u32, n_split as u32)
                } else {
                    path.to_path_buf()
                };
                let members: Vec<usize> =
                    (0..tensors.len()).filter(|&i| split_of[i] == k).collect();
                let kvs = file_metadata.of_file(k);
                SplitOut {
                    tmp_path: tmp_path_for(&final_path),
                    final_path,
                    header: encode_header(&kvs, tensors, sizes, &members, alignment),
                    created: false,
                }
            })
            .collect();

        let mut w = GgufWriter {
            alignment,
            names: tensors.iter().map(|t| t.name.clone()).collect(),
            sizes: sizes.to_vec(),
            split_of,
            splits,
            cur_tensor: 0,
            cur_written: 0,
            cur_split: None,
            unsynced: 0,
        };
        for s in &w.splits {
            remove_stale_temps(&s.final_path);
        }
        w.begin_split(0)?;
        w.settle()?;
        Ok(w)
    }

    /// Final paths the writer will produce, in split order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.splits.iter().map(|s| s.final_path.clone()).collect()
    }

    fn begin_split(&mut self, k: usize) -> Result<()> {
        self.close_split()?;
        let s = &mut self.splits[k];
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&s.tmp_path)
            // Named after the target: the temporary name means nothing to users.
            .map_err(|e| Error::io(&s.final_path, e))?;
        s.created = true;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        out.write_all(&s.header)
            .map_err(|e| Error::io(&s.final_path, e))?;
        s.header = Vec::new();
        self.cur_split = Some((k, out));
        Ok(())
    }

    fn close_split(&mut self) -> Result<()> {
        if let Some((k, out)) = self.cur_split.take() {
            let path = &self.splits[k].final_path;
            let file = out
                .into_inner()
                .map_err(|e| Error::io(path, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(path, e))?;
        }
        Ok(())
    }

    /// Move past zero-byte tensors and into the file of the next tensor.
    fn settle(&mut self) -> Result<()> {
        while self.cur_tensor < self.sizes.len() {
            let k = self.split_of[self.cur_tensor];
            if self.cur_split.as_ref().map(|(c, _)| *c) != Some(k) {
                self.begin_split(k)?;
            }
            if self.sizes[self.cur_tensor] != 0 {
                break;
            }
            self.cur_tensor += 1;
        }
        Ok(())
    }

    /// Append data of the current tensor. Chunks may split or span tensors
    /// arbitrarily; padding is added when a tensor is complete.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let Some((k, out)) = self.cur_split.as_mut() else {
                return Err(Error::Usage(
                    "GgufWriter: write after a failed write".into(),
                ));
            };
            let path = &self.splits[*k].final_path;
            if self.cur_tensor >= self.sizes.len() {
                return Err(Error::Usage(format!(
                    "{}: {} bytes more than the {} declared tensors hold",
                    self.splits[0].final_path.display(),
                    bytes.len(),
                    self.sizes.len()
                )));
            }
            let need = self.sizes[self.cur_tensor] - self.cur_written;
            let take = need.min(bytes.len() as u64) as usize;
            out.write_all(&bytes[..take]).map_err(|e| {
                Error::tensor(
                    path,
                    &self.names[self.cur_tensor],
                    format!("cannot write: {e}"),
                )
            })?;
            self.cur_written += take as u64;
            self.unsynced += take as u64;
            bytes = &bytes[take..];
            if self.cur_written == self.sizes[self.cur_tensor] {
                let pad = pad_len(self.cur_written, self.alignment) as usize;
                out.write_all(&vec![0u8; pad])
                    .map_err(|e| Error::io(path, e))?;
                self.cur_tensor += 1;
                self.cur_written = 0;
                self.settle()?;
            }
        }
        if self.unsynced >= WRITEBACK_EVERY {
            self.start_writeback()?;
        }
        Ok(())
    }

    /// Hand what was written so far to the kernel and start its writeback
    /// without waiting for it (Linux `sync_file_range`): the data goes to
    /// disk while the encoders run, instead of all at the final fsync.
    fn start_writeback(&mut self) -> Result<()> {
        self.unsynced = 0;
        let Some((k, out)) = self.cur_split.as_mut() else {
            return Ok(());
        };
        out.flush()
            .map_err(|e| Error::io(&self.splits[*k].final_path, e))?;
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: the descriptor is open for the whole call; offset 0
            // and length 0 mean the whole file; failure is harmless (the
            // final fsync still writes everything).
            unsafe {
                libc::sync_file_range(out.get_ref().as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    /// Check every tensor is complete, flush and fsync, and rename the
    /// temporary files into place. Returns the final paths.
    pub fn finish(mut self) -> Result<Vec<PathBuf>> {
        self.settle()?;
        if self.cur_tensor < self.sizes.len() {
            return Err(Error::tensor(
                &self.splits[self.split_of[self.cur_tensor]].final_path,
                &self.names[self.cur_tensor],
                format!(
                    "incomplete: {} of {} bytes written ({} of {} tensors complete)",
                    self.cur_written,
                    self.sizes[self.cur_tensor],
                    self.cur_tensor,
                    self.sizes.len()
                ),
            ));
        }
        self.close_split()?;
        let mut done = Vec::with_capacity(self.splits.len());
        for s in &mut self.splits {
            std::fs::rename(&s.tmp_path, &s.final_path).map_err(|e| Error::io(&s.final_path, e))?;
            s.created = false;
            done.push(s.final_path.clone());
        }
        #[cfg(unix)]
        if let Some(dir) = done.first().and_then(|p| p.parent()) {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(done)
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        self.cur_split = None;
        for s in &self.splits {
            if s.created {
                let _ = std::fs::remove_file(&s.tmp_path);
            }
        }
    }
}

fn resolve_alignment(
    path: &Path,
    metadata: &[(String, MetaValue)],
    opts: &WriterOptions,
) -> Result<u64> {
    let declared = match metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
        None => None,
        Some((_, MetaValue::U32(a))) => Some(u64::from(*a)),
        Some((_, v)) => {
            return Err(Error::format(
                path,
                format!(
                    "metadata key '{KEY_ALIGNMENT}' must be of type u32 but is {}",
                    v.value_type()
                ),
            ))
        }
    };
    let a = match (opts.alignment, declared) {
        (Some(a), Some(d)) if a != d => {
            return Err(Error::Mismatch(format!(
                "{}: alignment {a} requested but metadata declares {KEY_ALIGNMENT} = {d}",
                path.display()
            )))
        }
        (Some(a), _) => a,
        (None, Some(d)) => d,
        (None, None) => DEFAULT_ALIGNMENT,
    };
    if a == 0 || !a.is_power_of_two() || a > u64::from(u32::MAX) {
        return Err(Error::format(
            path,
            format!("alignment {a} must be a nonzero power of 2 that fits in u32"),
        ));
    }
    Ok(a)
}

fn tensor_sizes(path: &Path, tensors: &[TensorSpec], alignment: u64) -> Result<Vec<u64>> {
    let sizes: Vec<u64> = tensors
        .iter()
        .map(|t| {
            let terr = |msg: String| Error::tensor(path, &t.name, msg);
            if t.name.len() >= MAX_NAME {
                return Err(terr(format!(
                    "name is too long: {} bytes >= {MAX_NAME} (GGML_MAX_NAME)",
                    t.name.len()
                )));
            }
            if t.ne.len() > MAX_DIMS {
                return Err(terr(format!(
                    "{} dimensions, at most {MAX_DIMS} are allowed",
                    t.ne.len()
                )));
            }
            let row = t.ne.first().copied().unwrap_or(1);
            if row % t.ty.block_size() as u64 != 0 {
                return Err(terr(format!(
                    "type {} has {row} elements per row, not a multiple of block size {}",
                    t.ty.name(),
                    t.ty.block_size()
                )));
            }
            t.size()
                .ok_or_else(|| terr(format!("size in bytes of shape {:?} overflows", t.ne)))
        })
        .collect::<Result<_>>()?;
    let total = sizes.iter().try_fold(0u64, |acc, &s| {
        s.checked_next_multiple_of(alignment)
            .and_then(|p| acc.checked_add(p))
    });
    if total.is_none() {
        return Err(Error::format(path, "total tensor data size overflows u64"));
    }
    Ok(sizes)
}

fn validate_metadata(path: &Path, metadata: &[(String, MetaValue)]) -> Result<()> {
    let mut seen = HashSet::with_capacity(metadata.len());
    for (k, v) in metadata {
        if k.is_empty() {
            return Err(Error::format(path, "metadata key is empty"));
        }
        if !seen.insert(k.as_str()) {
            return Err(Error::format(path, format!("duplicate metadata key '{k}'")));
        }
        v.check_consistent(0)
            .map_err(|e| Error::format(path, format!("metadata key '{k}': {e}")))?;
        if k == KEY_ALIGNMENT {
            if let MetaValue::U32(a) = v {
                if *a == 0 || !a.is_power_of_two() {
                    return Err(Error::format(
                        path,
                        format!("{KEY_ALIGNMENT} is {a}: alignment must be a nonzero power of 2"),
                    ));
                }
            }
        }
    }
    Ok(())
}

fn check_unique_names(path: &Path, tensors: &[TensorSpec]) -> Result<()> {
    let mut seen = HashSet::with_capacity(tensors.len());
    for t in tensors {
        if !seen.insert(t.name.as_str()) {
            return Err(Error::tensor(path, &t.name, "duplicate tensor name"));
        }
    }
    Ok(())
}

/// The file of each tensor and the number of files; one file without a layout.
fn split_assignment(layout: Option<Vec<usize>>, n_tensors: usize) -> Result<(Vec<usize>, usize)> {
    let is_split = layout.is_some();
    let (split_of, n_split) = match layout {
        Some(l) => {
            let n = l.last().map_or(1, |&s| s + 1);
            (l, n)
        }
        None => (vec![0; n_tensors], 1),
    };
    if n_split > u16::MAX as usize {
        return Err(Error::Usage(format!(
            "{n_split} split files needed, at most {} are possible; raise the split size",
            u16::MAX
        )));
    }
    if is_split && n_tensors > i32::MAX as usize {
        return Err(Error::Usage(
            "too many tensors for split.tensors.count".into(),
        ));
    }
    Ok((split_of, n_split))
}

/// The key-value pairs of every output file: the caller's in the first, with
/// the split keys (which the writer manages) fresh. Split keys the caller
/// passes keep their positions and order, so a split set copies byte for byte
/// whichever tool wrote it; otherwise they go last in the order gguf-split
/// leaves them (split.no, split.tensors.count, split.count).
struct FileMetadata<'a> {
    metadata: &'a [(String, MetaValue)],
    split_order: Vec<&'a str>,
    keep_split_positions: bool,
    extra_alignment: Option<(String, MetaValue)>,
    alignment: u64,
    is_split: bool,
    n_split: usize,
    n_tensors: usize,
}

impl<'a> FileMetadata<'a> {
    fn new(
        metadata: &'a [(String, MetaValue)],
        alignment: u64,
        is_split: bool,
        n_split: usize,
        n_tensors: usize,
    ) -> Self {
        let split_order: Vec<&str> = metadata
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| is_split_key(k))
            .collect();
        let keep_split_positions = split_order.len() == 3;
        let split_order = if keep_split_positions {
            split_order
        } else {
            vec![KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT, KEY_SPLIT_COUNT]
        };
        let declares_alignment = metadata.iter().any(|(k, _)| k == KEY_ALIGNMENT);
        let extra_alignment = (!declares_alignment && alignment != DEFAULT_ALIGNMENT)
            .then(|| (KEY_ALIGNMENT.to_string(), MetaValue::U32(alignment as u32)));
        FileMetadata {
            metadata,
            split_order,
            keep_split_positions,
            extra_alignment,
            alignment,
            is_split,
            n_split,
            n_tensors,
        }
    }

    fn split_value(&self, key: &str, k: usize) -> MetaValue {
        match key {
            KEY_SPLIT_NO => MetaValue::U16(k as u16),
            KEY_SPLIT_COUNT => MetaValue::U16(self.n_split as u16),
            _ => MetaValue::I32(self.n_tensors as i32),
        }
    }

    /// The key-value pairs of file `k`.
    fn of_file(&self, k: usize) -> Vec<(String, MetaValue)> {
        let mut kvs: Vec<(String, MetaValue)> = Vec::new();
        if k == 0 {
            for (key, v) in self.metadata {
                if !is_split_key(key) {
                    kvs.push((key.clone(), v.clone()));
                } else if self.is_split && self.keep_split_positions {
                    kvs.push((key.clone(), self.split_value(key, k)));
                }
            }
            kvs.extend(self.extra_alignment.clone());
        } else if self.alignment != DEFAULT_ALIGNMENT {
            // gguf-split writes only split keys after the first file, which
            // silently assumes alignment 32; declare any other alignment.
            kvs.push((
                KEY_ALIGNMENT.to_string(),
                MetaValue::U32(self.alignment as u32),
            ));
        }
        if self.is_split && (k > 0 || !self.keep_split_positions) {
            for key in &self.split_order {
                kvs.push((key.to_string(), self.split_value(key, k)));
            }
        }
        kvs
    }
}

fn encode_header(
    kvs: &[(String, MetaValue)],
    tensors: &[TensorSpec],
    sizes: &[u64],
    members: &[usize],
    alignment: u64,
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(GGUF_MAGIC);
    out.extend_from_slice(&GGUF_VERSION.to_le_bytes());
    out.extend_from_slice(&(members.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        encode_kv(k, v, &mut out);
    }
    let mut offset = 0u64;
    for &i in members {
        let t = &tensors[i];
        encode_str(&t.name, &mut out);
        out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for &d in &t.ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.id().to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += sizes[i] + pad_len(sizes[i], alignment);
    }
    let pad = pad_len(out.len() as u64, alignment) as usize;
    out.resize(out.len() + pad, 0);
    out
}
