//! llama.cpp importance matrices (`llama-imatrix` output), read and turned
//! into per-column weights exactly as `llama-quantize` does
//! (`tools/quantize/quantize.cpp` `load_imatrix`, `common/imatrix-loader.cpp`).
//!
//! Two formats:
//! * **GGUF** (current): per weight tensor `W`, an F32 tensor `W.in_sum2`
//!   (`ne = [ne0, n_mat]`: sums of squared activations per column, per
//!   expert for 3-D tensors) and `W.counts` (`[1, n_mat]`, tokens seen per
//!   expert). The weight is `in_sum2 / count` per expert slice (1 where the
//!   count is 0), the count rounded with `lround` first. The keys
//!   `imatrix.datasets`, `imatrix.chunk_count` and `imatrix.chunk_size` must
//!   be present (llama-quantize refuses the file otherwise).
//! * **legacy `.dat`**: `i32 n_entries`, then per entry `i32 len, name,
//!   i32 ncall, i32 nval, f32 values[nval]` (values hold `(sum/count)·ncall`),
//!   then optionally `i32 chunk_count, i32 len, dataset`. The weight is
//!   `value / ncall` (the value itself when `ncall ≤ 0`).
//!
//! A tensor is looked up by its GGUF name. For a 3-D (expert) tensor the
//! entry holds `ne0 · ne2` weights, one `ne0` slice per expert, and rows of
//! expert `e` use slice `e`, as `llama_tensor_quantize_impl` does.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::format::gguf::{is_gguf, GgufFile, MetaValue};
use crate::quant::GgmlType;
use crate::{Error, Result};

/// The GGUF metadata keys llama-quantize requires.
const KEY_DATASETS: &str = "imatrix.datasets";
const KEY_CHUNK_COUNT: &str = "imatrix.chunk_count";
const KEY_CHUNK_SIZE: &str = "imatrix.chunk_size";

/// An importance matrix: per tensor name, the per-column weights.
#[derive(Debug, Clone)]
pub struct Imatrix {
    path: PathBuf,
    entries: HashMap<String, Vec<f32>>,
    /// The datasets it was computed on, as the file lists them.
    pub datasets: Vec<String>,
    /// Number of chunks it was computed on (0 when the file does not say).
    pub chunk_count: u32,
    /// Whether the file was in the legacy `.dat` format.
    pub legacy: bool,
}

/// What [`Imatrix::lookup`] found for one tensor of the model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lookup<'a> {
    /// Weights for the tensor: `ne0` values, or `ne0 · ne2` for a 3-D tensor
    /// (one slice per expert, in row order).
    Weights(&'a [f32]),
    /// The file has no entry for the tensor: quantize it unweighted.
    Missing,
    /// The entry does not fit `token_embd.weight` (or
    /// `per_layer_token_embd.weight`), which llama-quantize tolerates,
    /// quantizing it unweighted: (entry length, expected).
    IgnoredTokenEmbd(usize, usize),
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn le_i32(c: &[u8]) -> i32 {
    i32::from_le_bytes([c[0], c[1], c[2], c[3]])
}

/// llama-quantize refuses a GGUF imatrix without these keys; so do we.
fn check_required_keys(f: &GgufFile, path: &Path) -> Result<()> {
    let missing: Vec<&str> = [KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE]
        .into_iter()
        .filter(|k| f.get(k).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "missing imatrix metadata ({}): not an imatrix file from llama-imatrix",
                missing.join(", ")
            ),
        ));
    }
    Ok(())
}

/// Per weight tensor name, the indices of its `.in_sum2` and `.counts`
/// tensors (either may be missing).
type SumCountPairs = HashMap<String, (Option<usize>, Option<usize>)>;

fn sum_count_pairs(f: &GgufFile, path: &Path) -> Result<SumCountPairs> {
    let mut pairs: SumCountPairs = HashMap::new();
    for (i, t) in f.tensors().iter().enumerate() {
        if let Some(n) = t.name.strip_suffix(".in_sum2") {
            pairs.entry(n.to_string()).or_default().0 = Some(i);
        } else if let Some(n) = t.name.strip_suffix(".counts") {
            pairs.entry(n.to_string()).or_default().1 = Some(i);
        }
    }
    if pairs.is_empty() {
        return Err(Error::format(
            path,
            "no '<tensor>.in_sum2' / '<tensor>.counts' pairs: not an imatrix file",
        ));
    }
    Ok(pairs)
}

/// The weights of entry `name`: its sums (tensor `si`) over its lround-ed
/// count (tensor `ci`) per expert slice, 1 where the count is 0.
fn gguf_entry_weights(
    f: &GgufFile,
    path: &Path,
    name: &str,
    si: usize,
    ci: usize,
) -> Result<Vec<f32>> {
    let (st, ct) = (&f.tensors()[si], &f.tensors()[ci]);
    if st.ty != GgmlType::F32 || ct.ty != GgmlType::F32 {
        return Err(Error::format(
            path,
            format!("imatrix entry '{name}': sums and counts must be F32"),
        ));
    }
    let sums = f32s(f.tensor_data(si));
    let counts = f32s(f.tensor_data(ci));
    if counts.is_empty() || sums.is_empty() || !sums.len().is_multiple_of(counts.len()) {
        return Err(Error::format(
            path,
            format!(
                "imatrix entry '{name}': {} sums do not split into {} per-expert counts",
                sums.len(),
                counts.len()
            ),
        ));
    }
    let ne0 = sums.len() / counts.len();
    let mut e = vec![0f32; sums.len()];
    for (j, &c) in counts.iter().enumerate() {
        if !c.is_finite() {
            return Err(Error::format(
                path,
                format!("imatrix entry '{name}': count {c} is not finite"),
            ));
        }
        // std::lround, then back to float.
        let count = c.round() as i64 as f32;
        for i in 0..ne0 {
            e[j * ne0 + i] = if count > 0.0 {
                sums[j * ne0 + i] / count
            } else {
                1.0
            };
        }
    }
    Ok(e)
}

/// A position in a legacy `.dat` file, past the entry count.
struct LegacyReader<'a> {
    path: &'a Path,
    b: &'a [u8],
    p: usize,
}

impl LegacyReader<'_> {
    fn i32(&mut self, what: &str, entry: i32) -> Result<i32> {
        let v = self.b.get(self.p..self.p + 4).map(le_i32).ok_or_else(|| {
            Error::format(
                self.path,
                format!("legacy imatrix entry {entry}: truncated, no {what}"),
            )
        })?;
        self.p += 4;
        Ok(v)
    }

    /// Entry `k` (1-based): its name and weights (`value / ncall`, the value
    /// itself when `ncall ≤ 0`).
    fn entry(&mut self, k: i32) -> Result<(String, Vec<f32>)> {
        let (path, b) = (self.path, self.b);
        let len = self.i32("name length", k)?;
        let name_bytes = usize::try_from(len)
            .ok()
            .and_then(|l| b.get(self.p..self.p + l))
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("legacy imatrix entry {k}: failed reading name (length {len})"),
                )
            })?;
        self.p += name_bytes.len();
        // std::string{ data() } stops at the first NUL.
        let end = name_bytes
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(name_bytes.len());
        let name = String::from_utf8_lossy(&name_bytes[..end]).into_owned();
        let ncall = self.i32("call count", k)?;
        let nval = self.i32("value count", k)?;
        if nval < 1 {
            return Err(Error::format(
                path,
                format!("legacy imatrix entry {k} ('{name}'): {nval} values"),
            ));
        }
        let n = nval as usize;
        let vals = b.get(self.p..self.p + 4 * n).ok_or_else(|| {
            Error::format(
                path,
                format!("legacy imatrix entry {k} ('{name}'): truncated, {n} values announced"),
            )
        })?;
        self.p += 4 * n;
        let sums = f32s(vals);
        let e: Vec<f32> = if ncall > 0 {
            let nc = ncall as f32;
            sums.iter().map(|s| s / nc).collect()
        } else {
            sums
        };
        Ok((name, e))
    }

    /// The optional trailer: chunk count and dataset name.
    fn trailer(&mut self) -> (u32, Vec<String>) {
        let b = self.b;
        let mut chunk_count = 0u32;
        let mut datasets = Vec::new();
        if let Some(c) = b.get(self.p..self.p + 4) {
            chunk_count = le_i32(c).max(0) as u32;
            self.p += 4;
            if let Some(c) = b.get(self.p..self.p + 4) {
                let len = le_i32(c);
                self.p += 4;
                if len > 0 {
                    if let Some(d) = b.get(self.p..self.p + len as usize) {
                        let end = d.iter().position(|&c| c == 0).unwrap_or(d.len());
                        datasets.push(String::from_utf8_lossy(&d[..end]).into_owned());
                    }
                }
            }
        }
        (chunk_count, datasets)
    }
}

impl Imatrix {
    /// Read an importance matrix in either format (GGUF if the file starts
    /// with the GGUF magic, legacy `.dat` otherwise). Non-finite or negative
    /// weights are an error naming the entry.
    pub fn open(path: &Path) -> Result<Imatrix> {
        let m = if is_gguf(path) {
            Self::open_gguf(path)?
        } else {
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            Self::parse_legacy(path, &bytes)?
        };
        for (name, w) in &m.entries {
            if let Some(i) = w.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(Error::format(
                    path,
                    format!(
                        "imatrix entry '{name}': weight {} at column {i} is not finite and >= 0",
                        w[i]
                    ),
                ));
            }
        }
        Ok(m)
    }

    fn open_gguf(path: &Path) -> Result<Imatrix> {
        let f = GgufFile::open(path)?;
        if f.tensors().is_empty() {
            return Err(Error::format(path, "imatrix file holds no tensors"));
        }
        check_required_keys(&f, path)?;
        let datasets = match f.get(KEY_DATASETS) {
            Some(MetaValue::Array(a)) => a
                .items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect(),
            _ => Vec::new(),
        };
        let chunk_count = f
            .get(KEY_CHUNK_COUNT)
            .and_then(MetaValue::as_u64)
            .unwrap_or(0) as u32;
        let pairs = sum_count_pairs(&f, path)?;
        let mut entries = HashMap::with_capacity(pairs.len());
        for (name, pair) in pairs {
            let (Some(si), Some(ci)) = pair else {
                return Err(Error::format(
                    path,
                    format!("imatrix entry '{name}': mismatched sums and counts (one of .in_sum2 / .counts is missing)"),
                ));
            };
            let e = gguf_entry_weights(&f, path, &name, si, ci)?;
            entries.insert(name, e);
        }
        Ok(Imatrix {
            path: path.to_path_buf(),
            entries,
            datasets,
            chunk_count,
            legacy: false,
        })
    }

    /// Parse the legacy `.dat` format (`common_imatrix_load_legacy`).
    pub fn parse_legacy(path: &Path, b: &[u8]) -> Result<Imatrix> {
        let n_entries = b.get(0..4).map(le_i32).unwrap_or(0);
        if n_entries < 1 {
            return Err(Error::format(
                path,
                "no data in file (neither a GGUF imatrix nor a legacy .dat with entries)",
            ));
        }
        let mut r = LegacyReader { path, b, p: 4 };
        let mut entries = HashMap::new();
        for k in 1..=n_entries {
            let (name, e) = r.entry(k)?;
            entries.insert(name, e);
        }
        let (chunk_count, datasets) = r.trailer();
        Ok(Imatrix {
            path: path.to_path_buf(),
            entries,
            datasets,
            chunk_count,
            legacy: true,
        })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the matrix has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The weights of entry `name`, as stored (all experts).
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries.get(name).map(Vec::as_slice)
    }

    /// The weights for tensor `name` of shape `ne` (ggml order), as
    /// llama-quantize uses them: the entry must hold `ne[0] · ne[2]` values;
    /// a missing entry means "unweighted"; a wrong length is an error naming
    /// the tensor, except for `token_embd.weight`, which llama-quantize
    /// quantizes unweighted.
    pub fn lookup(&self, name: &str, ne: &[u64]) -> Result<Lookup<'_>> {
        let Some(w) = self.entries.get(name) else {
            return Ok(Lookup::Missing);
        };
        let ne0 = ne.first().copied().unwrap_or(1);
        let ne2 = ne.get(2).copied().unwrap_or(1);
        if ne.iter().skip(3).any(|&d| d != 1) {
            return Err(Error::tensor(
                &self.path,
                name,
                "importance weights for a 4-D tensor are not supported",
            ));
        }
        let want = (ne0 * ne2) as usize;
        if w.len() == want {
            return Ok(Lookup::Weights(w));
        }
        // tensor_name_match_token_embd in llama-quant.cpp
        if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            return Ok(Lookup::IgnoredTokenEmbd(w.len(), want));
        }
        Err(Error::tensor(
            &self.path,
            name,
            format!(
                "imatrix entry has {} weights, the tensor needs {want} (ne0 {ne0}{}): \
                 the imatrix was computed for another model",
                w.len(),
                if ne2 > 1 {
                    format!(" × {ne2} experts")
                } else {
                    String::new()
                }
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn legacy_bytes(entries: &[(&str, i32, &[f32])], trailer: Option<(i32, &str)>) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((entries.len() as i32).to_le_bytes());
        for (name, ncall, vals) in entries {
            b.extend((name.len() as i32).to_le_bytes());
            b.extend(name.as_bytes());
            b.extend(ncall.to_le_bytes());
            b.extend((vals.len() as i32).to_le_bytes());
            for v in *vals {
                b.extend(v.to_le_bytes());
            }
        }
        if let Some((n, ds)) = trailer {
            b.extend(n.to_le_bytes());
            b.extend((ds.len() as i32).to_le_bytes());
            b.extend(ds.as_bytes());
        }
        b
    }

    #[test]
    fn legacy_divides_by_ncall() {
        let b = legacy_bytes(
            &[("a.weight", 4, &[2.0, 6.0, 1.0]), ("b.weight", 0, &[3.0])],
            Some((10, "wiki.txt")),
        );
        let m = Imatrix::parse_legacy(Path::new("x.dat"), &b).unwrap();
        assert!(m.legacy);
        assert_eq!(m.get("a.weight").unwrap(), &[0.5, 1.5, 0.25]);
        assert_eq!(m.get("b.weight").unwrap(), &[3.0]);
        assert_eq!(m.chunk_count, 10);
        assert_eq!(m.datasets, vec!["wiki.txt".to_string()]);
        assert_eq!(
            m.lookup("a.weight", &[3, 7]).unwrap(),
            Lookup::Weights(&[0.5, 1.5, 0.25])
        );
        assert_eq!(m.lookup("zzz", &[3, 7]).unwrap(), Lookup::Missing);
        let e = m.lookup("a.weight", &[4, 7]).unwrap_err().to_string();
        assert!(e.contains("a.weight") && e.contains("x.dat"), "{e}");
    }

    #[test]
    fn legacy_truncation_names_the_entry() {
        let mut b = legacy_bytes(&[("a.weight", 1, &[2.0, 6.0]), ("b.w", 1, &[1.0])], None);
        b.truncate(b.len() - 2);
        let e = Imatrix::parse_legacy(Path::new("x.dat"), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("entry 2") && e.contains("x.dat"), "{e}");
        let e = Imatrix::parse_legacy(Path::new("x.dat"), &0i32.to_le_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("no data"), "{e}");
    }

    #[test]
    fn expert_tensors_take_one_slice_per_expert() {
        let b = legacy_bytes(&[("blk.0.ffn_up_exps.weight", 1, &[1.0; 8])], None);
        let m = Imatrix::parse_legacy(Path::new("x.dat"), &b).unwrap();
        assert!(matches!(
            m.lookup("blk.0.ffn_up_exps.weight", &[2, 5, 4]).unwrap(),
            Lookup::Weights(w) if w.len() == 8
        ));
        assert!(m.lookup("blk.0.ffn_up_exps.weight", &[8, 5, 1]).is_ok());
        assert!(m.lookup("blk.0.ffn_up_exps.weight", &[4, 5, 4]).is_err());
        let b = legacy_bytes(&[("token_embd.weight", 1, &[1.0; 3])], None);
        let m = Imatrix::parse_legacy(Path::new("x.dat"), &b).unwrap();
        assert_eq!(
            m.lookup("token_embd.weight", &[4, 10]).unwrap(),
            Lookup::IgnoredTokenEmbd(3, 4)
        );
    }
}
