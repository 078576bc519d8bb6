//! Safetensors containers: a zero-copy reader over one file or an index of
//! shards, and a streaming writer with an atomic rename.
//!
//! The reader hands out bytes and dtypes, never floats: the codecs decide how
//! to read them. Every size in a header is checked against the file before it
//! is used, so a hostile or truncated file yields an error, never a panic or an
//! allocation larger than the file.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use qresidual_quant::GgmlType;
use safetensors::tensor::TensorInfo;
use safetensors::Dtype;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// The name of the index file Hugging Face writes beside sharded checkpoints.
pub const INDEX_FILE: &str = "model.safetensors.index.json";
/// The name of a single-file checkpoint inside a model folder.
pub const SINGLE_FILE: &str = "model.safetensors";

/// The largest header accepted, as in the `safetensors` crate: a bigger one
/// is a corrupt length, not a model.
const MAX_HEADER_SIZE: u64 = 100_000_000;

/// One tensor of a safetensors checkpoint: where its bytes are, not what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StTensor {
    /// The name in the checkpoint (HF names, usually).
    pub name: String,
    /// Element type as stored.
    pub dtype: Dtype,
    /// Shape, outermost dimension first (PyTorch order).
    pub shape: Vec<usize>,
    /// Index into [`SafetensorsModel::shard_paths`].
    pub shard: usize,
    /// First byte in that shard's file.
    pub start: usize,
    /// One past the last byte in that shard's file.
    pub end: usize,
}

impl StTensor {
    /// The ggml type with the same element layout, so the bytes can go to a
    /// codec unchanged; `None` for types ggml has no twin for (U8, BOOL, F8…).
    pub fn ggml_type(&self) -> Option<GgmlType> {
        Some(match self.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            Dtype::F64 => GgmlType::F64,
            Dtype::I8 => GgmlType::I8,
            Dtype::I16 => GgmlType::I16,
            Dtype::I32 => GgmlType::I32,
            Dtype::I64 => GgmlType::I64,
            _ => return None,
        })
    }

    /// Number of elements (the product of the shape; 1 for a scalar).
    pub fn n_elements(&self) -> usize {
        // Shapes are checked for overflow when a file is opened; saturate for
        // hand-built values rather than panic.
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Length in bytes.
    pub fn n_bytes(&self) -> usize {
        self.end.saturating_sub(self.start)
    }
}

/// A safetensors checkpoint opened for zero-copy reading: one file or several
/// shards listed by an index.
pub struct SafetensorsModel {
    path: PathBuf,
    shard_paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: Vec<StTensor>,
    by_name: HashMap<String, usize>,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for SafetensorsModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsModel")
            .field("path", &self.path)
            .field("shards", &self.shard_paths)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// What a path given by the user turned out to be.
enum Layout {
    Single(PathBuf),
    Index(PathBuf),
}

impl SafetensorsModel {
    /// Open a checkpoint: a `.safetensors` file, an index json, or a folder
    /// holding `model.safetensors.index.json` or `model.safetensors` (or
    /// failing those, exactly one `*.safetensors.index.json` or one
    /// `*.safetensors`).
    pub fn open(path: &Path) -> Result<Self> {
        match resolve(path)? {
            Layout::Single(file) => Self::open_single(path, &file),
            Layout::Index(index) => Self::open_index(path, &index),
        }
    }

    fn open_single(user_path: &Path, file: &Path) -> Result<Self> {
        let (map, header) = open_shard(file)?;
        let mut tensors = header.tensors;
        for t in &mut tensors {
            t.shard = 0;
        }
        tensors.sort_by_key(|t| t.start);
        let by_name = index_names(&tensors);
        Ok(SafetensorsModel {
            path: user_path.to_path_buf(),
            shard_paths: vec![file.to_path_buf()],
            maps: vec![map],
            tensors,
            by_name,
            metadata: header.metadata,
        })
    }

    fn open_index(user_path: &Path, index_path: &Path) -> Result<Self> {
        let text = std::fs::read(index_path).map_err(|e| Error::io(index_path, e))?;
        let index = parse_index(index_path, &text)?;
        if index.shard_names.is_empty() {
            return Err(Error::format(index_path, "the index lists no tensors"));
        }
        let OpenShards {
            shard_paths,
            maps,
            mut tensors,
            mut metadata,
        } = open_shards(index_path, &index)?;
        let by_name = index_names(&tensors);
        check_all_stored(index_path, &index, &by_name)?;
        for (k, v) in index.metadata {
            let v = match v {
                Value::String(s) => s,
                other => other.to_string(),
            };
            metadata.entry(k).or_insert(v);
        }
        tensors.sort_by_key(|t| (t.shard, t.start));
        let by_name = index_names(&tensors);
        Ok(SafetensorsModel {
            path: user_path.to_path_buf(),
            shard_paths,
            maps,
            tensors,
            by_name,
            metadata,
        })
    }

    /// The path the model was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every tensor, sorted by shard then offset (the order that reads the
    /// files front to back).
    pub fn tensors(&self) -> &[StTensor] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&StTensor> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The tensor's bytes, straight from the mapped file. `t` must come from
    /// this model; a foreign one whose range does not fit yields an empty slice.
    pub fn data(&self, t: &StTensor) -> &[u8] {
        self.maps
            .get(t.shard)
            .and_then(|m| m.get(t.start..t.end))
            .unwrap_or(&[])
    }

    /// `__metadata__` of every shard merged (first shard wins), then the
    /// index's `metadata` for keys not yet present (non-string values as JSON).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// The files holding the tensors, indexed by [`StTensor::shard`].
    pub fn shard_paths(&self) -> &[PathBuf] {
        &self.shard_paths
    }

    /// The file holding `t`, for error messages.
    pub fn shard_path(&self, t: &StTensor) -> &Path {
        self.shard_paths
            .get(t.shard)
            .map(PathBuf::as_path)
            .unwrap_or(&self.path)
    }

    /// A cheap guess whether `path` is a safetensors checkpoint: a file named
    /// `*.safetensors` or `*.safetensors.index.json`, a file whose first bytes
    /// look like a safetensors header, or a folder holding an index or
    /// `model.safetensors`. Never fails: unreadable means no.
    pub fn is_safetensors(path: &Path) -> bool {
        if path.is_dir() {
            return path.join(INDEX_FILE).is_file() || path.join(SINGLE_FILE).is_file();
        }
        if !path.is_file() {
            return false;
        }
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        if name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json") {
            return true;
        }
        sniff_header(path)
    }
}

fn index_names(tensors: &[StTensor]) -> HashMap<String, usize> {
    tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.clone(), i))
        .collect()
}

fn resolve(path: &Path) -> Result<Layout> {
    if path.is_file() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        return Ok(if name.ends_with(".json") {
            Layout::Index(path.to_path_buf())
        } else {
            Layout::Single(path.to_path_buf())
        });
    }
    if !path.is_dir() {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        ));
    }
    if path.join(INDEX_FILE).is_file() {
        return Ok(Layout::Index(path.join(INDEX_FILE)));
    }
    if path.join(SINGLE_FILE).is_file() {
        return Ok(Layout::Single(path.join(SINGLE_FILE)));
    }
    let mut indexes = Vec::new();
    let mut singles = Vec::new();
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        if !p.is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().to_lowercase();
        if name.ends_with(".safetensors.index.json") {
            indexes.push(p);
        } else if name.ends_with(".safetensors") {
            singles.push(p);
        }
    }
    match (indexes.len(), singles.len()) {
        (1, _) => Ok(Layout::Index(indexes.remove(0))),
        (0, 1) => Ok(Layout::Single(singles.remove(0))),
        (0, 0) => Err(Error::format(
            path,
            format!("folder holds neither {INDEX_FILE} nor any .safetensors file"),
        )),
        _ => Err(Error::format(
            path,
            format!(
                "folder holds {} index files and {} .safetensors files but no {INDEX_FILE}: name the file to use",
                indexes.len(),
                singles.len()
            ),
        )),
    }
}

/// The shards of an index, opened, with their tensors and their merged
/// metadata (the first shard's value wins).
struct OpenShards {
    shard_paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    tensors: Vec<StTensor>,
    metadata: BTreeMap<String, String>,
}

/// Open every shard `index` lists, refusing a missing shard and a tensor
/// stored in a shard the index does not assign it to.
fn open_shards(index_path: &Path, index: &ParsedIndex) -> Result<OpenShards> {
    let folder = index_path.parent().unwrap_or(Path::new("."));
    let shard_names = &index.shard_names;
    let mut shard_paths = Vec::with_capacity(shard_names.len());
    let mut maps = Vec::with_capacity(shard_names.len());
    let mut tensors = Vec::with_capacity(index.wanted.len());
    let mut metadata = BTreeMap::new();
    for (shard, name) in shard_names.iter().enumerate() {
        let shard_path = folder.join(name);
        if !shard_path.is_file() {
            return Err(Error::format(
                index_path,
                format!("shard '{name}' listed in the index does not exist"),
            ));
        }
        let (map, header) = open_shard(&shard_path)?;
        for mut t in header.tensors {
            match index.wanted.get(&t.name) {
                Some(&s) if s == shard => {
                    t.shard = shard;
                    tensors.push(t);
                }
                Some(&s) => {
                    return Err(Error::tensor(
                        &shard_path,
                        &t.name,
                        format!(
                            "also stored here, but {} assigns it to shard '{}'",
                            index_path.display(),
                            shard_names[s]
                        ),
                    ))
                }
                None => {
                    return Err(Error::tensor(
                        &shard_path,
                        &t.name,
                        format!("not listed in {}", index_path.display()),
                    ))
                }
            }
        }
        for (k, v) in header.metadata {
            metadata.entry(k).or_insert(v);
        }
        shard_paths.push(shard_path);
        maps.push(map);
    }
    Ok(OpenShards {
        shard_paths,
        maps,
        tensors,
        metadata,
    })
}

/// Refuses an index naming a tensor its shard does not hold (`by_name`:
/// what the shards hold).
fn check_all_stored(
    index_path: &Path,
    index: &ParsedIndex,
    by_name: &HashMap<String, usize>,
) -> Result<()> {
    // Deterministic order for the error: the first missing name sorted.
    let mut missing: Vec<&String> = index
        .wanted
        .keys()
        .filter(|n| !by_name.contains_key(*n))
        .collect();
    missing.sort();
    if let Some(name) = missing.first() {
        let shard = &index.shard_names[index.wanted[*name]];
        return Err(Error::tensor(
            index_path,
            name.as_str(),
            format!("listed in the index for shard '{shard}' but not stored there"),
        ));
    }
    Ok(())
}

fn sniff_header(path: &Path) -> bool {
    let Ok(mut f) = File::open(path) else {
        return false;
    };
    let Ok(len) = f.metadata().map(|m| m.len()) else {
        return false;
    };
    let mut head = [0u8; 9];
    if f.read_exact(&mut head).is_err() {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().unwrap_or([0xff; 8]));
    (2..=MAX_HEADER_SIZE).contains(&n) && n <= len - 8 && head[8] == b'{'
}

struct ShardHeader {
    tensors: Vec<StTensor>,
    metadata: BTreeMap<String, String>,
}

/// A JSON object read as a list of pairs, refusing duplicate keys (which
/// `serde_json` would otherwise resolve silently by keeping the last).
struct UniquePairs<V>(Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniquePairs<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V_<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = UniquePairs<V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    if !seen.insert(k.clone()) {
                        return Err(serde::de::Error::custom(format!("key '{k}' appears twice")));
                    }
                    out.push((k, v));
                }
                Ok(UniquePairs(out))
            }
        }
        d.deserialize_map(V_(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct IndexJson {
    #[serde(default)]
    metadata: BTreeMap<String, Value>,
    weight_map: UniquePairs<String>,
}

struct ParsedIndex {
    /// Shards in order of first mention, so shard numbers are deterministic.
    shard_names: Vec<String>,
    /// Tensor name → index into `shard_names`.
    wanted: HashMap<String, usize>,
    metadata: BTreeMap<String, Value>,
}

/// Parse and check `model.safetensors.index.json` (`text`, read from
/// `index_path`): every shard must be a plain file name inside the folder.
fn parse_index(index_path: &Path, text: &[u8]) -> Result<ParsedIndex> {
    let index: IndexJson = serde_json::from_slice(text)
        .map_err(|e| Error::format(index_path, format!("not a safetensors index: {e}")))?;
    let mut shard_names: Vec<String> = Vec::new();
    let mut shard_of: HashMap<String, usize> = HashMap::new();
    let mut wanted: HashMap<String, usize> = HashMap::new();
    for (tensor, file) in index.weight_map.0 {
        let inside = Path::new(&file)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
        if file.is_empty() || !inside {
            return Err(Error::format(
                index_path,
                format!("tensor '{tensor}' points to shard '{file}', which is not a file name inside the folder"),
            ));
        }
        let shard = *shard_of.entry(file.clone()).or_insert_with(|| {
            shard_names.push(file.clone());
            shard_names.len() - 1
        });
        wanted.insert(tensor, shard);
    }
    Ok(ParsedIndex {
        shard_names,
        wanted,
        metadata: index.metadata,
    })
}

/// Parse and validate a safetensors header held in memory (the whole file:
/// length, JSON, data) as [`SafetensorsModel::open`] does; every returned
/// tensor's `start..end` lies within `bytes`. Lets fuzzers and tests reach
/// the parser without a file.
pub fn parse_header_bytes(bytes: &[u8]) -> Result<Vec<StTensor>> {
    parse_header(Path::new("<memory>"), bytes).map(|h| h.tensors)
}

/// Parse and check a `model.safetensors.index.json` held in memory; returns
/// the shard file names in order of first mention. For fuzzers and tests.
pub fn parse_index_bytes(text: &[u8]) -> Result<Vec<String>> {
    parse_index(Path::new("<memory>"), text).map(|i| i.shard_names)
}

fn open_shard(path: &Path) -> Result<(Mmap, ShardHeader)> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if file_len < 8 {
        return Err(Error::format(
            path,
            format!("{file_len} bytes is too short for a safetensors file (needs an 8-byte header length)"),
        ));
    }
    // SAFETY: the map is read-only; a file changed by another process while
    // mapped is outside what any reader can defend against (as with the
    // `safetensors` crate and llama.cpp).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    let header = parse_header(path, &map)?;
    Ok((map, header))
}

/// Parse and validate the header of one safetensors file held in `bytes`.
///
/// Each entry is read into the `safetensors` crate's own `TensorInfo` and
/// sized by its `Dtype` bit widths, but the table is not handed to
/// `SafeTensors::read_metadata`: that parser refuses gaps between tensors and
/// bytes after the last one, which are harmless for reading and which this
/// reader accepts (tests/st.rs opens such a file); it keeps the last of two
/// entries with one name, silently dropping the other's bytes, where this
/// reader refuses the file; and its errors do not name the offending tensor,
/// where ours do. Everything the crate accepts, this reader accepts with the
/// same table (checked on every input by `fuzz_entry::st_header`).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<ShardHeader> {
    let len = bytes.len() as u64;
    let mut n8 = [0u8; 8];
    n8.copy_from_slice(
        bytes
            .get(..8)
            .ok_or_else(|| Error::format(path, "file too short"))?,
    );
    let n = u64::from_le_bytes(n8);
    if n > MAX_HEADER_SIZE || n > len - 8 {
        return Err(Error::format(
            path,
            format!(
                "header length {n} does not fit a file of {len} bytes: not safetensors or truncated"
            ),
        ));
    }
    let data_start = 8 + n as usize;
    let header_bytes = &bytes[8..data_start];
    let data_len = bytes.len() - data_start;
    let pairs: UniquePairs<Value> = serde_json::from_slice(header_bytes)
        .map_err(|e| Error::format(path, format!("header is not a JSON object: {e}")))?;

    let mut metadata = BTreeMap::new();
    let mut tensors = Vec::with_capacity(pairs.0.len());
    for (name, value) in pairs.0 {
        if name == "__metadata__" {
            metadata = serde_json::from_value(value).map_err(|e| {
                Error::format(
                    path,
                    format!("__metadata__ must map strings to strings: {e}"),
                )
            })?;
            continue;
        }
        tensors.push(tensor_entry(path, name, value, data_start, data_len)?);
    }
    check_no_overlap(path, &tensors)?;
    Ok(ShardHeader { tensors, metadata })
}

/// The header entry `name: value`, its bytes checked to lie in the data
/// section (`data_len` bytes from `data_start`) and to fit its dtype and shape.
fn tensor_entry(
    path: &Path,
    name: String,
    value: Value,
    data_start: usize,
    data_len: usize,
) -> Result<StTensor> {
    let info: TensorInfo = serde_json::from_value(value)
        .map_err(|e| Error::tensor(path, &name, format!("bad header entry: {e}")))?;
    let (begin, end) = info.data_offsets;
    if begin > end || end > data_len {
        return Err(Error::tensor(
            path,
            &name,
            format!(
                "data offsets [{begin}, {end}) lie outside the data section of {data_len} bytes"
            ),
        ));
    }
    let n_bytes = byte_len(info.dtype, &info.shape).map_err(|e| Error::tensor(path, &name, e))?;
    if n_bytes != end - begin {
        return Err(Error::tensor(
            path,
            &name,
            format!(
                "{:?} {:?} needs {n_bytes} bytes but its offsets span {}",
                info.dtype,
                info.shape,
                end - begin
            ),
        ));
    }
    Ok(StTensor {
        name,
        dtype: info.dtype,
        shape: info.shape,
        shard: 0,
        start: data_start + begin,
        end: data_start + end,
    })
}

/// Overlapping tensors would alias bytes; gaps are harmless for reading.
fn check_no_overlap(path: &Path, tensors: &[StTensor]) -> Result<()> {
    let mut order: Vec<&StTensor> = tensors.iter().collect();
    order.sort_by_key(|t| (t.start, t.end));
    for w in order.windows(2) {
        if w[1].start < w[0].end {
            return Err(Error::tensor(
                path,
                &w[1].name,
                format!("its bytes overlap those of '{}'", w[0].name),
            ));
        }
    }
    Ok(())
}

/// Bytes held by a tensor of `dtype` and `shape`, by the `safetensors`
/// crate's rule: elements × bits per element, in whole bytes (F4 and F6 pack
/// several elements into a byte, so an odd count of them is refused).
pub fn byte_len(dtype: Dtype, shape: &[usize]) -> std::result::Result<usize, String> {
    let bits = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|n| n.checked_mul(dtype.bitsize()))
        .ok_or_else(|| format!("shape {shape:?} overflows"))?;
    if bits % 8 != 0 {
        return Err(format!(
            "{dtype:?} {shape:?} is {bits} bits, not a whole number of bytes"
        ));
    }
    Ok(bits / 8)
}

/// Streams a safetensors file to disk: header first (all shapes known up
/// front), then the tensors' bytes in the order given, then an atomic rename.
/// Dropped before [`finish`](Self::finish), it removes its temporary file.
pub struct SafetensorsWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
    /// (name, bytes) per tensor, to name the tensor being written in errors.
    layout: Vec<(String, usize)>,
    total: u64,
    written: u64,
    done: bool,
}

impl fmt::Debug for SafetensorsWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SafetensorsWriter")
            .field("path", &self.path)
            .field("written", &self.written)
            .field("total", &self.total)
            .finish()
    }
}

impl SafetensorsWriter {
    /// Start writing `path` (through a temporary file in the same folder)
    /// with these tensors, in this order, and this `__metadata__`.
    pub fn create(
        path: &Path,
        tensors: &[(String, Dtype, Vec<usize>)],
        metadata: BTreeMap<String, String>,
    ) -> Result<Self> {
        let mut header = serde_json::Map::new();
        if !metadata.is_empty() {
            header.insert(
                "__metadata__".into(),
                serde_json::to_value(&metadata)
                    .map_err(|e| Error::format(path, format!("metadata: {e}")))?,
            );
        }
        let mut layout = Vec::with_capacity(tensors.len());
        let mut offset = 0usize;
        for (name, dtype, shape) in tensors {
            if name == "__metadata__" || header.contains_key(name) {
                return Err(Error::tensor(path, name, "name given twice or reserved"));
            }
            let n_bytes = byte_len(*dtype, shape).map_err(|e| Error::tensor(path, name, e))?;
            let end = offset
                .checked_add(n_bytes)
                .ok_or_else(|| Error::tensor(path, name, "file size overflows"))?;
            header.insert(
                name.clone(),
                serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [offset, end] }),
            );
            layout.push((name.clone(), n_bytes));
            offset = end;
        }
        // serde_json::Map keeps keys sorted; offsets make the order irrelevant
        // to readers, and the bytes follow `tensors`' order.
        let mut json = serde_json::to_vec(&Value::Object(header))
            .map_err(|e| Error::format(path, format!("header: {e}")))?;
        // Pad with spaces so the data section starts 8-byte aligned, as the
        // `safetensors` crate does.
        while json.len() % 8 != 0 {
            json.push(b' ');
        }

        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = path
            .file_name()
            .ok_or_else(|| Error::format(path, "output path names no file"))?
            .to_string_lossy()
            .into_owned();
        // Unique per process and per writer, so two writers never share one.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = folder.join(format!(".{file_name}.{}-{n}.tmp", std::process::id()));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut writer = SafetensorsWriter {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
            layout,
            total: offset as u64,
            written: 0,
            done: false,
        };
        if let Some(out) = writer.out.as_mut() {
            out.write_all(&(json.len() as u64).to_le_bytes())
                .and_then(|_| out.write_all(&json))
                .map_err(|e| Error::io(&writer.tmp, e))?;
        }
        Ok(writer)
    }

    /// Append tensor bytes; chunks may split or span tensors freely.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let remaining = self.total - self.written;
        if bytes.len() as u64 > remaining {
            return Err(Error::format(
                &self.path,
                format!(
                    "{} bytes written past the end of the last tensor (declared {} bytes in all)",
                    bytes.len() as u64 - remaining,
                    self.total
                ),
            ));
        }
        let out = self
            .out
            .as_mut()
            .ok_or_else(|| Error::format(&self.path, "write after finish"))?;
        out.write_all(bytes).map_err(|e| Error::io(&self.tmp, e))?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Bytes still expected before [`finish`](Self::finish).
    pub fn remaining(&self) -> u64 {
        self.total - self.written
    }

    /// Check every declared byte was written, flush, and move the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.total {
            // Name the first tensor not completely written.
            let mut acc = 0u64;
            let name = self
                .layout
                .iter()
                .find(|(_, b)| {
                    acc += *b as u64;
                    acc > self.written
                })
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            return Err(Error::tensor(
                &self.path,
                name,
                format!(
                    "only {} of {} data bytes were written",
                    self.written, self.total
                ),
            ));
        }
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::format(&self.path, "finish called twice"))?;
        let file = out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for SafetensorsWriter {
    fn drop(&mut self) {
        if !self.done {
            drop(self.out.take());
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

impl crate::format::pages::ReleasePages for SafetensorsModel {
    fn release(&self, bytes: &[u8]) {
        crate::format::pages::release_within(self.maps.iter().map(|m| &m[..]), bytes);
    }
}
