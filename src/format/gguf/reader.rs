//! The zero-copy reader: parses and validates the header of each file as
//! gguf.cpp (`gguf_init_from_reader`) and llama.cpp's model loader do, then
//! hands out tensor data as slices of the memory map.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use qresidual_quant::GgmlType;

use super::split::{self, KEY_SPLIT_COUNT, KEY_SPLIT_NO, KEY_SPLIT_TENSORS_COUNT};
use super::value::{Cursor, MetaValue, ValueType};
use super::{DEFAULT_ALIGNMENT, GGUF_MAGIC, KEY_ALIGNMENT, MAX_DIMS, MAX_NAME};
use crate::{Error, Result};

/// One tensor's header entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Tensor name, unique in the model.
    pub name: String,
    /// Storage type.
    pub ty: GgmlType,
    /// Dimensions in ggml order, `ne[0]` innermost, exactly as many as the
    /// file lists.
    pub ne: Vec<u64>,
    /// Offset within its file's data section.
    pub offset: u64,
    /// Bytes of data (without padding).
    pub size: u64,
    /// Index of the split file holding the data (0 for single files).
    pub file: usize,
}

impl TensorInfo {
    /// Number of elements.
    pub fn n_elements(&self) -> u64 {
        self.ne.iter().product()
    }

    /// Elements per row, `ne[0]` (1 for a 0-dimensional tensor).
    pub fn row_len(&self) -> u64 {
        self.ne.first().copied().unwrap_or(1)
    }

    /// Number of rows: the product of `ne[1..]`.
    pub fn n_rows(&self) -> u64 {
        self.ne.iter().skip(1).product()
    }

    /// Row-major shape (numpy/PyTorch order): `ne` reversed.
    pub fn shape(&self) -> Vec<u64> {
        self.ne.iter().rev().copied().collect()
    }
}

/// The parsed header of one GGUF file.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) alignment: u64,
    pub(crate) metadata: Vec<(String, MetaValue)>,
    pub(crate) tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub(crate) data_offset: u64,
}

/// The fewest bytes one tensor info can take: name length, n_dims, type, offset.
const MIN_TENSOR_INFO: u64 = 8 + 4 + 4 + 8;
/// The fewest bytes one key-value pair can take: key length, one key byte,
/// type, one value byte.
const MIN_KV: u64 = 8 + 1 + 4 + 1;

/// Parse and validate a whole GGUF file held in `data`. `path` only names the
/// file in errors. The checks run in gguf.cpp's order, so a file with several
/// faults is reported by the same first fault.
pub(crate) fn parse_header(path: &Path, data: &[u8]) -> Result<Header> {
    let mut c = Cursor::new(data);
    read_magic(&mut c, path, data.len())?;
    let version = read_version(&mut c, path)?;
    let (n_tensors, n_kv) = read_counts(&mut c, path)?;
    let metadata = read_metadata(&mut c, path, n_kv)?;
    let alignment = alignment_of(&metadata, path)?;
    let tensors = read_tensor_infos(&mut c, path, n_tensors)?;
    let data_offset = data_section_offset(c.pos() as u64, n_tensors, alignment, path, data.len())?;
    check_tensor_offsets(&tensors, alignment, data_offset, path, data.len() as u64)?;
    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

fn read_magic(c: &mut Cursor, path: &Path, file_len: usize) -> Result<()> {
    let magic = c.bytes(4, "magic").map_err(|_| {
        Error::format(
            path,
            format!("not a GGUF file: {file_len} bytes, too short for the magic"),
        )
    })?;
    if magic != GGUF_MAGIC {
        let shown: String = magic
            .iter()
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
            .collect();
        return Err(Error::format(
            path,
            format!("not a GGUF file: bad magic '{shown}' ({magic:02x?}), expected 'GGUF'"),
        ));
    }
    Ok(())
}

fn read_version(c: &mut Cursor, path: &Path) -> Result<u32> {
    let fmt = |msg: String| Error::format(path, msg);
    let version = c.u32("version").map_err(fmt)?;
    if version & 0xFFFF == 0 && version != 0 {
        return Err(fmt(format!(
            "GGUF version reads as {version:#010x}: the file is big-endian (version {} byte-swapped); only little-endian GGUF is supported",
            version.swap_bytes()
        )));
    }
    match version {
        2 | 3 => Ok(version),
        1 => Err(fmt(
            "GGUF version 1 is no longer supported (only versions 2 and 3)".to_string(),
        )),
        v => Err(fmt(format!(
            "unsupported GGUF version {v} (only versions 2 and 3 are supported)"
        ))),
    }
}

/// The tensor and key-value counts, rejected before any allocation when the
/// bytes left cannot hold that many entries.
fn read_counts(c: &mut Cursor, path: &Path) -> Result<(u64, u64)> {
    let fmt = |msg: String| Error::format(path, msg);
    let n_tensors = c.u64("tensor count").map_err(fmt)?;
    let n_kv = c.u64("metadata count").map_err(fmt)?;
    if n_tensors > i64::MAX as u64 {
        return Err(fmt(format!(
            "number of tensors is {} but must be in [0, {}]",
            n_tensors as i64,
            i64::MAX
        )));
    }
    if n_kv > i64::MAX as u64 {
        return Err(fmt(format!(
            "number of key-value pairs is {} but must be in [0, {}]",
            n_kv as i64,
            i64::MAX
        )));
    }
    let left = c.remaining();
    if n_kv.saturating_mul(MIN_KV) > left {
        return Err(fmt(format!(
            "header declares {n_kv} key-value pairs but only {left} bytes follow (each needs at least {MIN_KV})"
        )));
    }
    if n_tensors.saturating_mul(MIN_TENSOR_INFO) > left {
        return Err(fmt(format!(
            "header declares {n_tensors} tensors but only {left} bytes follow (each tensor info needs at least {MIN_TENSOR_INFO})"
        )));
    }
    Ok((n_tensors, n_kv))
}

fn read_metadata(c: &mut Cursor, path: &Path, n_kv: u64) -> Result<Vec<(String, MetaValue)>> {
    let fmt = |msg: String| Error::format(path, msg);
    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv as usize);
    let mut seen_keys: HashSet<String> = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = c
            .string(&format!("key of key-value pair {i}"))
            .map_err(fmt)?;
        if key.is_empty() {
            return Err(fmt(format!("key of key-value pair {i} is empty")));
        }
        if !seen_keys.insert(key.clone()) {
            return Err(fmt(format!("duplicate key '{key}' for key-value pair {i}")));
        }
        let what = format!("value of key '{key}'");
        let id = c.u32(&what).map_err(fmt)?;
        let ty = ValueType::from_id(id)
            .ok_or_else(|| fmt(format!("key '{key}' has invalid GGUF value type {id}")))?;
        let value = c.value(ty, &what, 0).map_err(fmt)?;
        metadata.push((key, value));
    }
    Ok(metadata)
}

fn alignment_of(metadata: &[(String, MetaValue)], path: &Path) -> Result<u64> {
    match metadata.iter().find(|(k, _)| k == KEY_ALIGNMENT) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some((_, MetaValue::U32(a))) => {
            if *a == 0 || !a.is_power_of_two() {
                return Err(Error::format(
                    path,
                    format!("{KEY_ALIGNMENT} is {a}: alignment must be a nonzero power of 2"),
                ));
            }
            Ok(u64::from(*a))
        }
        Some((_, v)) => Err(Error::format(
            path,
            format!(
                "key '{KEY_ALIGNMENT}' must be of type u32 but is {}",
                v.value_type()
            ),
        )),
    }
}

fn read_tensor_infos(c: &mut Cursor, path: &Path, n_tensors: u64) -> Result<Vec<TensorInfo>> {
    let fmt = |msg: String| Error::format(path, msg);
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut seen_names: HashSet<String> = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&format!("name of tensor {i}")).map_err(fmt)?;
        if name.len() >= MAX_NAME {
            return Err(fmt(format!(
                "tensor {i} name is too long: {} bytes >= {MAX_NAME} (GGML_MAX_NAME)",
                name.len()
            )));
        }
        if !seen_names.insert(name.clone()) {
            return Err(fmt(format!(
                "duplicate tensor name '{name}' for tensor {i}"
            )));
        }
        let layout = read_tensor_layout(c).map_err(|msg| Error::tensor(path, name.clone(), msg))?;
        tensors.push(TensorInfo {
            name,
            ty: layout.ty,
            ne: layout.ne,
            offset: layout.offset,
            size: layout.size,
            file: 0,
        });
    }
    Ok(tensors)
}

/// What a tensor info holds after its name.
struct TensorLayout {
    ne: Vec<u64>,
    ty: GgmlType,
    size: u64,
    offset: u64,
}

/// Reads the dimensions, type and offset of one tensor info; errors are
/// about that tensor, so the caller names it.
fn read_tensor_layout(c: &mut Cursor) -> std::result::Result<TensorLayout, String> {
    let n_dims = c.u32("number of dimensions")?;
    if n_dims as usize > MAX_DIMS {
        return Err(format!(
            "invalid number of dimensions: {n_dims} > {MAX_DIMS}"
        ));
    }
    let mut ne = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        let v = c.u64("dimension")?;
        if v > i64::MAX as u64 {
            return Err(format!(
                "dimension {j} has invalid number of elements: {} < 0",
                v as i64
            ));
        }
        ne.push(v);
    }
    let mut n_elements: u64 = 1;
    for &d in &ne {
        n_elements = n_elements
            .checked_mul(d)
            .filter(|&n| n <= i64::MAX as u64)
            .ok_or_else(|| format!("shape {ne:?} overflows: the number of elements is >= 2^63"))?;
    }
    let type_id = c.u32("type")?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| format!("unknown ggml type id {type_id}"))?;
    let row = ne.first().copied().unwrap_or(1);
    if row % ty.block_size() as u64 != 0 {
        return Err(format!(
            "type {} has {row} elements per row, not a multiple of block size {}",
            ty.name(),
            ty.block_size()
        ));
    }
    let size = ty
        .row_size_u64(n_elements)
        .filter(|&s| s <= i64::MAX as u64)
        .ok_or_else(|| format!("size in bytes of shape {ne:?} overflows"))?;
    let offset = c.u64("offset")?;
    Ok(TensorLayout {
        ne,
        ty,
        size,
        offset,
    })
}

/// The data section starts aligned when there are tensors (gguf.cpp), right
/// after the header otherwise.
fn data_section_offset(
    header_end: u64,
    n_tensors: u64,
    alignment: u64,
    path: &Path,
    file_len: usize,
) -> Result<u64> {
    if n_tensors == 0 {
        return Ok(header_end);
    }
    let data_offset = header_end.div_ceil(alignment) * alignment;
    if data_offset > file_len as u64 {
        return Err(Error::format(
            path,
            format!(
                "file truncated: data section would start at {data_offset} but the file has {file_len} bytes"
            ),
        ));
    }
    Ok(data_offset)
}

/// Offsets must be aligned, the running sum of padded sizes in tensor-info
/// order, and every tensor's bytes must lie within the file.
fn check_tensor_offsets(
    tensors: &[TensorInfo],
    alignment: u64,
    data_offset: u64,
    path: &Path,
    file_len: u64,
) -> Result<()> {
    let mut expected: u64 = 0;
    for t in tensors {
        let terr = |msg: String| Error::tensor(path, t.name.clone(), msg);
        if t.offset % alignment != 0 {
            return Err(terr(format!(
                "offset {} is not a multiple of the alignment {alignment}",
                t.offset
            )));
        }
        if t.offset != expected {
            return Err(terr(format!(
                "has offset {}, expected {expected} (offsets must be the running sum of padded sizes, no gaps or overlaps)",
                t.offset
            )));
        }
        let padded = t
            .size
            .checked_next_multiple_of(alignment)
            .and_then(|p| expected.checked_add(p))
            .ok_or_else(|| terr(format!("size {} overflows after padding", t.size)))?;
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.size));
        match end {
            Some(end) if end <= file_len => {}
            _ => {
                return Err(terr(format!(
                    "data is not within the file bounds: {} bytes at offset {} of the data section (file offset {data_offset}) but the file has {file_len} bytes",
                    t.size, t.offset
                )))
            }
        }
        expected = padded;
    }
    Ok(())
}

/// One GGUF file parsed from memory by [`parse_bytes`].
#[derive(Debug)]
pub struct ParsedGguf {
    /// Metadata in file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// Tensor infos; each one's bytes lie within the parsed buffer.
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
}

/// Parse and validate one GGUF file held in memory exactly as
/// [`GgufFile::open`] validates each file (split keys are not followed).
/// Lets fuzzers and tests reach the parser without a file.
pub fn parse_bytes(data: &[u8]) -> Result<ParsedGguf> {
    let h = parse_header(Path::new("<memory>"), data)?;
    Ok(ParsedGguf {
        metadata: h.metadata,
        tensors: h.tensors,
        data_offset: h.data_offset,
    })
}

struct Part {
    path: PathBuf,
    map: Mmap,
    data_offset: u64,
}

/// A GGUF model, possibly split over several files, mapped read-only.
/// Tensor data is never copied.
pub struct GgufFile {
    parts: Vec<Part>,
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("paths", &self.paths())
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

fn map_file(path: &Path) -> Result<Mmap> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only; like every mmap-based model loader we
    // rely on nobody truncating the file while it is open.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

/// `split.count` of a file's metadata; 1 when absent.
fn split_count(metadata: &[(String, MetaValue)], path: &Path) -> Result<u64> {
    match metadata.iter().find(|(k, _)| k == KEY_SPLIT_COUNT) {
        None => Ok(1),
        Some((_, v)) => v
            .as_u64()
            .filter(|&n| n <= u64::from(u16::MAX))
            .ok_or_else(|| {
                Error::format(path, format!("{KEY_SPLIT_COUNT} is not a u16 count: {v:?}"))
            }),
    }
}

/// Split `idx` (0-based) must say it is that split, and of as many as the
/// first one says.
fn check_split_keys(
    metadata: &[(String, MetaValue)],
    path: &Path,
    idx: u32,
    n_split: u64,
) -> Result<()> {
    let no = metadata.iter().find(|(k, _)| k == KEY_SPLIT_NO);
    match no.and_then(|(_, v)| v.as_u64()) {
        Some(n) if n == u64::from(idx) => {}
        Some(n) => {
            return Err(Error::format(
                path,
                format!("invalid split file: {KEY_SPLIT_NO} is {n}, expected {idx}"),
            ))
        }
        None => {
            return Err(Error::format(
                path,
                format!("missing key {KEY_SPLIT_NO} in GGUF split"),
            ))
        }
    }
    if let Some((_, v)) = metadata.iter().find(|(k, _)| k == KEY_SPLIT_COUNT) {
        if v.as_u64() != Some(n_split) {
            return Err(Error::format(
                path,
                format!("{KEY_SPLIT_COUNT} is {v:?} but the first split says {n_split}"),
            ));
        }
    }
    Ok(())
}

impl GgufFile {
    /// Open a GGUF file. When its metadata says it is the first of a split
    /// set (`split.count` > 1, file named `PREFIX-00001-of-0000N.gguf`), all
    /// splits are opened and seen as one model, as llama.cpp loads them.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let map = map_file(path)?;
        let header = parse_header(path, &map)?;
        let n_split = split_count(&header.metadata, path)?;
        let mut file = GgufFile {
            version: header.version,
            alignment: header.alignment,
            index: HashMap::with_capacity(header.tensors.len()),
            tensors: Vec::with_capacity(header.tensors.len()),
            metadata: header.metadata,
            parts: Vec::new(),
        };
        file.add_part(path.to_path_buf(), map, header.tensors, header.data_offset)?;
        if n_split <= 1 {
            return Ok(file);
        }
        let prefix = file.first_split_prefix(path, n_split)?;
        for idx in 1..n_split as u32 {
            let p = split::split_path(&prefix, idx, n_split as u32);
            let map = map_file(&p)?;
            let h = parse_header(&p, &map)?;
            check_split_keys(&h.metadata, &p, idx, n_split)?;
            file.add_part(p, map, h.tensors, h.data_offset)?;
        }
        file.check_split_tensor_count(path, n_split)?;
        Ok(file)
    }

    /// The shared file-name prefix of the splits, once the first file's
    /// metadata and name agree that it is split 1 of `n_split`.
    fn first_split_prefix(&self, path: &Path, n_split: u64) -> Result<PathBuf> {
        let split_no = self.get(KEY_SPLIT_NO).and_then(MetaValue::as_u64);
        if split_no != Some(0) {
            return Err(Error::format(
                path,
                format!(
                    "this is split {} of {n_split}, not the first: open the file named *-00001-of-{n_split:05}.gguf",
                    split_no.map_or("?".to_string(), |n| (n + 1).to_string())
                ),
            ));
        }
        split::split_prefix(path, 0, n_split as u32).ok_or_else(|| {
            Error::format(
                path,
                format!(
                    "metadata says split 1 of {n_split} but the file name does not end in -00001-of-{n_split:05}.gguf"
                ),
            )
        })
    }

    fn check_split_tensor_count(&self, path: &Path, n_split: u64) -> Result<()> {
        if let Some(v) = self.get(KEY_SPLIT_TENSORS_COUNT) {
            if v.as_u64() != Some(self.tensors.len() as u64) {
                return Err(Error::format(
                    path,
                    format!(
                        "corrupted split model: {KEY_SPLIT_TENSORS_COUNT} is {v:?} but the {n_split} splits hold {} tensors",
                        self.tensors.len()
                    ),
                ));
            }
        }
        Ok(())
    }
    fn add_part(
        &mut self,
        path: PathBuf,
        map: Mmap,
        tensors: Vec<TensorInfo>,
        data_offset: u64,
    ) -> Result<()> {
        let idx = self.parts.len();
        for mut t in tensors {
            if self.index.contains_key(&t.name) {
                return Err(Error::tensor(
                    &path,
                    t.name,
                    "invalid model: tensor is duplicated across splits",
                ));
            }
            t.file = idx;
            self.index.insert(t.name.clone(), self.tensors.len());
            self.tensors.push(t);
        }
        self.parts.push(Part {
            path,
            map,
            data_offset,
        });
        Ok(())
    }

    /// The path that was opened (the first split).
    pub fn path(&self) -> &Path {
        &self.parts[0].path
    }

    /// Every file of the model, split order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.parts.iter().map(|p| p.path.clone()).collect()
    }

    /// GGUF version of the first file (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Data alignment of the first file.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Metadata of the first file, in file order, with exact types.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture`.
    pub fn architecture(&self) -> Option<&str> {
        self.get("general.architecture").and_then(MetaValue::as_str)
    }

    /// Every tensor, in file order across splits.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// Position of the tensor called `name` in [`tensors`](Self::tensors).
    pub fn tensor_index(&self, name: &str) -> Option<usize> {
        self.index.get(name).copied()
    }

    /// The bytes of tensor `index`, straight from the map. Panics if `index`
    /// is out of range, like slice indexing.
    pub fn tensor_data(&self, index: usize) -> &[u8] {
        let t = &self.tensors[index];
        let part = &self.parts[t.file];
        // Bounds were validated against the file length in parse_header.
        let start = (part.data_offset + t.offset) as usize;
        &part.map[start..start + t.size as usize]
    }

    /// Absolute file offset of the data section of split `file`.
    pub fn data_offset(&self, file: usize) -> u64 {
        self.parts[file].data_offset
    }

    /// Hint the kernel that tensor data will be read front to back.
    pub fn advise_sequential(&self) {
        #[cfg(unix)]
        for p in &self.parts {
            let _ = p.map.advise(memmap2::Advice::Sequential);
        }
    }
}

impl crate::format::pages::ReleasePages for GgufFile {
    fn release(&self, bytes: &[u8]) {
        crate::format::pages::release_within(self.parts.iter().map(|p| &p.map[..]), bytes);
    }
}
