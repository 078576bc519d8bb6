//! Hugging Face checkpoints quantized with bitsandbytes, or to FP8
//! ([`super::fp8`]): a model folder (`config.json` + one or several
//! safetensors files) read as logical weights, and written back either in
//! the same layout or as plain floats.
//!
//! Containers only: every number is produced by `qresidual_quant::bnb`.
//! How `transformers` lays a weight `W` out (fixtures/tiny_bnb/layout.txt):
//! - 4-bit: `W` U8 `[ceil(n/2), 1]`, `W.absmax`, `W.quant_map`, with double
//!   quantization `W.nested_absmax` and `W.nested_quant_map`, and the JSON
//!   blob `W.quant_state.bitsandbytes__nf4|fp4` (quant_type, blocksize,
//!   dtype, shape, nested_blocksize, nested_dtype, nested_offset);
//! - LLM.int8: `M.weight` I8 `[out, in]`, `M.SCB` F32 `[out]`,
//!   `M.weight_format` U8 scalar (0 = row-major);
//! - everything else (embeddings, norms, `lm_head`) as plain tensors.
//!
//! A weight is requantized from the module's dtype, as bitsandbytes does:
//! `transformers` loads the float16 (or bfloat16) checkpoint and quantizes
//! that tensor, so the f32 sum `dequant(base) + α·Δ` is first rounded to the
//! weight's `dtype` (from its quant state; float16 for LLM.int8, whose
//! `Int8Params` always converts to float16), then quantized. The precision
//! report compares the decoded output with the unrounded f32 sum.
//!
//! Double quantization centres the absmax on `offset = absmax.mean()`. That
//! mean is torch's on one CPU thread by default
//! ([`WriteOptions::torch_threads`]); for weights of
//! more than 32768 blocks (2M elements at blocksize 64) torch's multi-thread
//! sum can differ in the last bit, and CUDA's anyway, so bit-exactness with a
//! given bitsandbytes run holds for `torch.set_num_threads(1)` on CPU. Any
//! offset decodes correctly; it is stored in the quant state.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use safetensors::Dtype;
use serde_json::{json, Value};

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, SafetensorsWriter, StTensor, INDEX_FILE};
use crate::model::fp8::{
    dtype_of, fp8_weight, is_fp8_config, scale_bytes, scale_values, BlockMaxima, Fp8Layout, Fp8Rows,
};
use crate::model::gptq::{gptq_packing, gptq_weight, grid_of, GptqLayout, GptqRows};
use crate::model::mlx::{check_codes_have_scales, mlx_config, mlx_weight, MlxLayout, MlxRows};
use crate::model::naming::RowPermutation;
use crate::model::packed::{is_packed_config, packed_weight, PackedLayout, PackedRows};
use crate::model::rows::{EncodedRows, RowSource};
use crate::quant::bnb::{
    dequantize_4bit, dequantize_int8_rows, dynamic_map, num_blocks, quantize_4bit,
    quantize_int8_rows, search_4bit, torch_mean_f32_threads, Blocks4, BnbError, FourBit,
    NestedAbsmax, BLOCKSIZES_4BIT, NESTED_BLOCKSIZE,
};
use crate::quant::fp8::ScaleRule;
use crate::quant::mlx as mlx_quant;
use crate::quant::mlx::fp::{self as mlx_fp, FpMode};
use crate::quant::mlx::Precision;
use crate::quant::packed as packed_quant;
use crate::quant::stats::ErrorStats;
use crate::quant::{base_groups_nearer, quantize_row, GgmlType, SearchWins};
use crate::{Error, Result};

/// The file holding a model's configuration.
pub const CONFIG_FILE: &str = "config.json";

/// Which quantization a Hugging Face model folder declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `quant_method: bitsandbytes`.
    Bitsandbytes,
    /// `quant_method: fp8`, or compressed-tensors `float-quantized`.
    Fp8,
    /// mlx-lm's `"quantization"` (affine, mxfp4, mxfp8 or nvfp4).
    Mlx,
    /// compressed-tensors `pack-quantized` (1- to 8-bit integer groups).
    Packed,
    /// GPTQ or AWQ in their own layouts (`quant_method: gptq`/`awq`).
    Gptq,
}

impl Method {
    /// What is wrong when a folder declares this method but `weights`
    /// holds no weight stored by it; `None` when some weight is.
    /// (bitsandbytes folders are checked weight by weight as they are read.)
    fn missing_weights(self, weights: &[BnbWeight]) -> Option<&'static str> {
        let (stored, missing): (fn(&Storage) -> bool, _) = match self {
            Method::Bitsandbytes => return None,
            Method::Packed => (
                |s| matches!(s, Storage::Packed(_)),
                "declares pack-quantized weights, but no tensor is a weight_packed",
            ),
            Method::Gptq => (
                |s| matches!(s, Storage::Gptq(_)),
                "declares GPTQ/AWQ quantization, but no tensor is a qweight",
            ),
            Method::Mlx => (
                |s| matches!(s, Storage::Mlx(_)),
                "declares MLX quantization, but no weight has .scales (and, in affine mode, .biases)",
            ),
            Method::Fp8 => (
                |s| matches!(s, Storage::Fp8(_)),
                "declares FP8 quantization, but no F8_E4M3 weight has a weight_scale or weight_scale_inv",
            ),
        };
        (!weights.iter().any(|w| stored(&w.storage))).then_some(missing)
    }

    /// The method of a parsed `config.json`.
    pub fn of(config: &Value) -> Option<Method> {
        if config["quantization_config"]["quant_method"] == "bitsandbytes" {
            Some(Method::Bitsandbytes)
        } else if mlx_config(config).is_some_and(|m| m.is_ok()) {
            Some(Method::Mlx)
        } else if is_packed_config(config) {
            Some(Method::Packed)
        } else if gptq_packing(config).is_some() {
            Some(Method::Gptq)
        } else if is_fp8_config(config) {
            Some(Method::Fp8)
        } else {
            None
        }
    }

    /// The name messages use.
    pub fn name(self) -> &'static str {
        match self {
            Method::Bitsandbytes => "bitsandbytes",
            Method::Fp8 => "FP8",
            Method::Mlx => "MLX",
            Method::Packed => "compressed-tensors pack-quantized",
            Method::Gptq => "GPTQ/AWQ",
        }
    }
}

/// The quantization `path`'s `config.json` declares: `None` when `path` is
/// no folder with a readable config.json holding a `quantization_config`;
/// `Some(Err(what))` when it declares one this module does not read.
pub fn folder_quantization(path: &Path) -> Option<std::result::Result<Method, String>> {
    if !path.is_dir() {
        return None;
    }
    let c = std::fs::read(path.join(CONFIG_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())?;
    if let Some(Err(mode)) = mlx_config(&c) {
        return Some(Err(mode));
    }
    let q = c
        .get("quantization_config")
        .or(c.get("quantization"))
        .filter(|q| q.is_object())?;
    Some(Method::of(&c).ok_or_else(|| {
        let method = q["quant_method"].as_str().unwrap_or("(none)");
        match q["format"].as_str() {
            Some(f) => format!("quant_method {method} with format {f}"),
            None => format!("quant_method {method}"),
        }
    }))
}

/// The quantization `path`'s `config.json` declares, if `path` is a folder
/// with one this module reads. Never fails: unreadable means none.
pub fn folder_method(path: &Path) -> Option<Method> {
    folder_quantization(path).and_then(|m| m.ok())
}

/// Whether `path` is a folder whose `config.json` declares bitsandbytes
/// quantization (`quantization_config.quant_method == "bitsandbytes"`).
/// Never fails: unreadable means no.
pub fn is_bnb_dir(path: &Path) -> bool {
    folder_method(path) == Some(Method::Bitsandbytes)
}

/// How one logical weight is stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Storage {
    /// A plain tensor in its own dtype.
    Plain(Dtype),
    /// NF4 / FP4 blockwise codes.
    FourBit {
        /// NF4 or FP4.
        kind: FourBit,
        /// Elements per absmax block.
        blocksize: usize,
        /// The module's dtype the weight was quantized from (F16, BF16, F32).
        dtype: Dtype,
        /// With double quantization: the offset added back to the absmax.
        nested_offset: Option<f32>,
    },
    /// LLM.int8 row-wise codes.
    Int8,
    /// `float8_e4m3fn` codes with block scales.
    Fp8(Fp8Layout),
    /// MLX affine groups or a float mode.
    Mlx(MlxLayout),
    /// compressed-tensors packed integers with group scales.
    Packed(PackedLayout),
    /// GPTQ/AWQ packed integers with group scales and zero points.
    Gptq(GptqLayout),
}

impl Storage {
    /// A short name for reports: `nf4`, `fp4`, `int8`, or the dtype (`F16`…),
    /// as its output form says.
    pub fn label(&self) -> String {
        // The dtype a requantized FP8 weight starts from is not in its label.
        OutStorage::same_as(self, Dtype::BF16).label()
    }

    /// Whether bitsandbytes quantized this weight.
    pub fn is_quantized(&self) -> bool {
        !matches!(self, Storage::Plain(_))
    }
}

/// One weight as the model sees it: its Hugging Face name and shape, and
/// the stored tensors it is made of.
#[derive(Debug, Clone)]
pub struct BnbWeight {
    /// The Hugging Face name (`model.layers.0.mlp.down_proj.weight`).
    pub name: String,
    /// The logical shape, outermost first (`[out, in]` for a linear layer).
    pub shape: Vec<usize>,
    /// How it is stored.
    pub storage: Storage,
    /// Indices into [`SafetensorsModel::tensors`] of every stored tensor of
    /// this weight, the main one first.
    pub parts: Vec<usize>,
    /// The shard holding the main tensor.
    pub shard: usize,
}

impl BnbWeight {
    /// Number of elements.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }

    /// Elements per row: the innermost dimension (1 for a scalar).
    pub fn row_len(&self) -> usize {
        self.shape.last().copied().unwrap_or(1).max(1)
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.n_elements() / self.row_len()
    }
}

/// A bitsandbytes model folder opened for reading.
pub struct BnbModel {
    dir: PathBuf,
    st: SafetensorsModel,
    config: Value,
    method: Method,
    weights: Vec<BnbWeight>,
    sharded: bool,
}

impl std::fmt::Debug for BnbModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BnbModel")
            .field("dir", &self.dir)
            .field("weights", &self.weights.len())
            .finish()
    }
}

/// The module dtype named in a quant state or config (`float16`…).
pub fn dtype_from_torch(name: &str) -> Option<Dtype> {
    match name.trim_start_matches("torch.") {
        "float16" => Some(Dtype::F16),
        "bfloat16" => Some(Dtype::BF16),
        "float32" => Some(Dtype::F32),
        _ => None,
    }
}

/// The torch name of a float dtype, as configs and quant states spell it.
pub fn torch_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// The ggml type with the same layout as a float dtype (F16, BF16, F32).
pub fn float_ggml(d: Dtype) -> Option<GgmlType> {
    match d {
        Dtype::F16 => Some(GgmlType::F16),
        Dtype::BF16 => Some(GgmlType::BF16),
        Dtype::F32 => Some(GgmlType::F32),
        _ => None,
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl BnbModel {
    /// Open a model folder: `config.json` and its safetensors (single file
    /// or sharded with an index). Every quantized weight is checked for the
    /// parts, sizes and quant state bitsandbytes writes.
    pub fn open(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let config: Value = serde_json::from_slice(&text)
            .map_err(|e| Error::format(&config_path, format!("not JSON: {e}")))?;
        if !config.is_object() {
            return Err(Error::format(&config_path, "not a JSON object"));
        }
        let method = Method::of(&config).ok_or_else(|| {
            Error::format(
                &config_path,
                format!(
                    "quantization_config {} is neither bitsandbytes, FP8 (quant_method fp8, or compressed-tensors float-quantized) nor MLX",
                    config["quantization_config"]
                ),
            )
        })?;
        let st = SafetensorsModel::open(dir)?;
        let sharded = st.shard_paths().len() > 1 || dir.join(INDEX_FILE).is_file();
        let weights = collect_weights(&st, &config)?;
        if let Some(missing) = method.missing_weights(&weights) {
            return Err(Error::format(&config_path, missing));
        }
        Ok(BnbModel {
            dir: dir.to_path_buf(),
            st,
            config,
            method,
            weights,
            sharded,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The quantization the folder declares.
    pub fn method(&self) -> Method {
        self.method
    }

    /// `config.json` as read.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The stored tensors.
    pub fn safetensors(&self) -> &SafetensorsModel {
        &self.st
    }

    /// Every logical weight, in file order.
    pub fn weights(&self) -> &[BnbWeight] {
        &self.weights
    }

    /// The weight called `name`.
    pub fn weight(&self, name: &str) -> Option<&BnbWeight> {
        self.weights.iter().find(|w| w.name == name)
    }

    /// Every file the model is read from (config and shards).
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut p = vec![self.dir.join(CONFIG_FILE)];
        p.extend(self.st.shard_paths().iter().cloned());
        p
    }

    fn part(&self, w: &BnbWeight, k: usize) -> &StTensor {
        &self.st.tensors()[w.parts[k]]
    }

    fn part_named(&self, w: &BnbWeight, suffix: &str) -> Option<&StTensor> {
        w.parts
            .iter()
            .map(|&i| &self.st.tensors()[i])
            .find(|t| t.name.ends_with(suffix))
    }

    /// The f32 rows of weight `index` (HF `[out, in]` layout), decoded on
    /// demand; `None` for a tensor that holds no floats (integer buffers).
    pub fn rows(&self, index: usize) -> Option<Box<dyn RowSource + '_>> {
        let w = &self.weights[index];
        let main = self.part(w, 0);
        let path = self.st.shard_path(main);
        match &w.storage {
            Storage::Plain(d) => Some(Box::new(EncodedRows {
                path,
                name: &w.name,
                data: self.st.data(main),
                ty: float_ggml(*d)?,
                row_len: w.row_len(),
                n_rows: w.n_rows(),
                permutation: RowPermutation::Identity,
                pages: Some(&self.st),
            })),
            Storage::FourBit { .. } => Some(Box::new(self.four_bit_rows(index)?)),
            Storage::Int8 => Some(Box::new(Int8Rows {
                path,
                name: &w.name,
                cb: self.st.data(main),
                scb: self.st.data(self.part_named(w, ".SCB")?),
                row_len: w.row_len(),
                n_rows: w.n_rows(),
                pages: &self.st,
            })),
            Storage::Fp8(layout) => {
                let scale = self.part(w, 1);
                Some(Box::new(Fp8Rows {
                    path,
                    name: &w.name,
                    codes: self.st.data(main),
                    scales: scale_values(scale, self.st.data(scale)),
                    layout: *layout,
                    row_len: w.row_len(),
                    n_rows: w.n_rows(),
                    pages: &self.st,
                }))
            }
            Storage::Packed(layout) => Some(Box::new(PackedRows {
                path,
                name: &w.name,
                packed: self.st.data(main),
                scales: PackedRows::scales_of(&self.st, self.part(w, 1)),
                zeros: PackedRows::zeros_of(&self.st, &w.parts, layout, &w.shape),
                layout: *layout,
                row_len: w.row_len(),
                n_rows: w.n_rows(),
                pages: &self.st,
            })),
            Storage::Gptq(layout) => Some(Box::new(GptqRows {
                path,
                name: &w.name,
                qweight: self.st.data(main),
                grid: grid_of(&self.st, &w.parts, *layout, &w.shape),
                pages: &self.st,
            })),
            Storage::Mlx(_) => Some(Box::new(self.mlx_rows(index)?)),
        }
    }

    /// The rows of MLX weight `index` with access to its groups; `None`
    /// for any other storage.
    fn mlx_rows(&self, index: usize) -> Option<MlxRows<'_>> {
        let w = &self.weights[index];
        let Storage::Mlx(layout) = w.storage else {
            return None;
        };
        let main = self.part(w, 0);
        Some(MlxRows {
            path: self.st.shard_path(main),
            name: &w.name,
            packed: self.st.data(main),
            scales: self.part(w, 1),
            biases: (w.parts.len() > 2).then(|| self.part(w, 2)),
            layout,
            row_len: w.row_len(),
            n_rows: w.n_rows(),
            pages: &self.st,
        })
    }

    /// The rows of 4-bit weight `index` with access to its blocks; `None`
    /// for any other storage.
    fn four_bit_rows(&self, index: usize) -> Option<FourBitRows<'_>> {
        let w = &self.weights[index];
        let Storage::FourBit {
            kind,
            blocksize,
            nested_offset,
            ..
        } = &w.storage
        else {
            return None;
        };
        let main = self.part(w, 0);
        let absmax_t = self.part_named(w, ".absmax")?;
        let absmax = match nested_offset {
            None => Absmax::Plain(self.st.data(absmax_t)),
            Some(offset) => Absmax::Nested {
                codes: self.st.data(absmax_t),
                absmax2: f32s(self.st.data(self.part_named(w, ".nested_absmax")?)),
                code: Box::new(nested_code(
                    self.st.data(self.part_named(w, ".nested_quant_map")?),
                )),
                offset: *offset,
            },
        };
        Some(FourBitRows {
            path: self.st.shard_path(main),
            name: &w.name,
            packed: self.st.data(main),
            absmax,
            kind: *kind,
            blocksize: *blocksize,
            n: w.n_elements(),
            row_len: w.row_len(),
            pages: &self.st,
        })
    }

    /// Bytes stored for weight `index`, all parts together.
    pub fn stored_bytes(&self, index: usize) -> u64 {
        self.weights[index]
            .parts
            .iter()
            .map(|&i| self.st.tensors()[i].n_bytes() as u64)
            .sum()
    }
}

fn nested_code(bytes: &[u8]) -> [f32; 256] {
    let v = f32s(bytes);
    std::array::from_fn(|i| v.get(i).copied().unwrap_or(0.0))
}

/// Group the stored tensors into logical weights, validating each
/// quantized one.
// Long because it is one pass per format (bitsandbytes 4-bit, LLM.int8,
// packed, MLX, FP8), each claiming the stored tensors of its weights, then
// the plain tensors no pass claimed: the passes read best side by side.
fn collect_weights(st: &SafetensorsModel, config: &Value) -> Result<Vec<BnbWeight>> {
    let index: HashMap<&str, usize> = st
        .tensors()
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut weights: Vec<BnbWeight> = Vec::new();
    for t in st.tensors() {
        weights.extend(four_bit_weight(st, &index, t)?);
    }
    for t in st.tensors() {
        weights.extend(int8_weight(st, &index, t)?);
    }
    for t in st.tensors() {
        if let Some(p) = packed_weight(st, &index, t, config)? {
            weights.push(BnbWeight {
                name: p.name,
                shape: p.shape,
                storage: Storage::Packed(p.layout),
                shard: t.shard,
                parts: p.parts,
            });
        }
    }
    for t in st.tensors() {
        if let Some(p) = gptq_weight(st, &index, t, config)? {
            weights.push(BnbWeight {
                name: p.name,
                shape: p.shape,
                storage: Storage::Gptq(p.layout),
                shard: t.shard,
                parts: p.parts,
            });
        }
    }
    // GPTQ/AWQ name their scales `M.scales` as MLX does: the GPTQ pass
    // above claimed them.
    let mlx_names = gptq_packing(config).is_none();
    if mlx_names && mlx_config(config).is_some() {
        check_codes_have_scales(st, &index)?;
    }
    for (i, t) in st.tensors().iter().enumerate().filter(|_| mlx_names) {
        if let Some(m) = mlx_weight(st, &index, t, config)? {
            let w = &st.tensors()[m.weight];
            weights.push(BnbWeight {
                name: w.name.clone(),
                shape: m.shape,
                storage: Storage::Mlx(m.layout),
                parts: [m.weight, i].into_iter().chain(m.biases).collect(),
                shard: w.shard,
            });
        }
    }
    for (i, t) in st.tensors().iter().enumerate() {
        if let Some((main, layout)) = fp8_weight(st, &index, t, config)? {
            let w = &st.tensors()[main];
            weights.push(BnbWeight {
                name: w.name.clone(),
                shape: w.shape.clone(),
                storage: Storage::Fp8(layout),
                parts: vec![main, i],
                shard: w.shard,
            });
        }
    }
    let used: HashSet<usize> = weights
        .iter()
        .flat_map(|w| w.parts.iter().copied())
        .collect();
    for (i, t) in st.tensors().iter().enumerate() {
        if used.contains(&i) {
            continue;
        }
        if t.dtype == Dtype::F8_E4M3 {
            return Err(Error::tensor(
                st.shard_path(t),
                &t.name,
                format!(
                    "an F8_E4M3 weight without its scale ('{0}_scale_inv' or '{0}_scale' is missing)",
                    t.name
                ),
            ));
        }
        weights.push(BnbWeight {
            name: t.name.clone(),
            shape: t.shape.clone(),
            storage: Storage::Plain(t.dtype),
            parts: vec![i],
            shard: t.shard,
        });
    }
    weights.sort_by_key(|w| {
        let t = &st.tensors()[w.parts[0]];
        (t.shard, t.start)
    });
    Ok(weights)
}

/// The stored parts of one quantized weight, found by suffix and checked.
struct WeightParts<'a> {
    st: &'a SafetensorsModel,
    index: &'a HashMap<&'a str, usize>,
    /// The weight's name, the prefix of every part.
    weight: &'a str,
    /// The shard errors about the weight as a whole name.
    path: &'a Path,
}

impl WeightParts<'_> {
    fn bad(&self, msg: String) -> Error {
        Error::tensor(self.path, self.weight, msg)
    }

    fn get(&self, suffix: &str) -> Result<usize> {
        let w = self.weight;
        self.index
            .get(format!("{w}{suffix}").as_str())
            .copied()
            .ok_or_else(|| self.bad(format!("the part '{w}{suffix}' is missing")))
    }

    fn expect(&self, i: usize, dtype: Dtype, len: usize) -> Result<()> {
        let p = &self.st.tensors()[i];
        if p.dtype != dtype || p.n_elements() != len {
            return Err(Error::tensor(
                self.st.shard_path(p),
                &p.name,
                format!(
                    "expected {dtype:?} with {len} elements, found {:?} {:?}",
                    p.dtype, p.shape
                ),
            ));
        }
        Ok(())
    }
}

/// The 4-bit weight whose quant state `t` is, checked; `None` when `t` is
/// no quant state.
fn four_bit_weight(
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    t: &StTensor,
) -> Result<Option<BnbWeight>> {
    let Some((w, q)) = t.name.rsplit_once(".quant_state.bitsandbytes__") else {
        return Ok(None);
    };
    let parts_of = WeightParts {
        st,
        index,
        weight: w,
        path: st.shard_path(t),
    };
    let QuantStateInfo {
        kind,
        blocksize,
        dtype,
        shape,
        n,
        nested_offset: parsed_offset,
    } = parse_quant_state(q, st.data(t)).map_err(|m| parts_of.bad(m))?;
    let main = parts_of.get("")?;
    if st.tensors()[main].dtype != Dtype::U8 {
        return Err(parts_of.bad(format!(
            "packed weight is {:?}; only bnb_4bit_quant_storage uint8 is supported",
            st.tensors()[main].dtype
        )));
    }
    parts_of.expect(main, Dtype::U8, n.div_ceil(2))?;
    let quant_map = parts_of.get(".quant_map")?;
    parts_of.expect(quant_map, Dtype::F32, 16)?;
    if f32s(st.data(&st.tensors()[quant_map]))
        .iter()
        .zip(kind.code())
        .any(|(a, b)| a.to_bits() != b.to_bits())
    {
        return Err(parts_of.bad(format!(
            "quant_map differs from bitsandbytes' {} table",
            kind.name()
        )));
    }
    let absmax = parts_of.get(".absmax")?;
    let nb = num_blocks(n, blocksize);
    let mut parts = vec![main, absmax, quant_map];
    let nested_offset = if let Some(offset) = parsed_offset {
        parts_of.expect(absmax, Dtype::U8, nb)?;
        let na = parts_of.get(".nested_absmax")?;
        parts_of.expect(na, Dtype::F32, num_blocks(nb, NESTED_BLOCKSIZE))?;
        let nq = parts_of.get(".nested_quant_map")?;
        parts_of.expect(nq, Dtype::F32, 256)?;
        parts.extend([na, nq]);
        Some(offset)
    } else {
        parts_of.expect(absmax, Dtype::F32, nb)?;
        None
    };
    parts.push(index[t.name.as_str()]);
    Ok(Some(BnbWeight {
        name: w.to_string(),
        shape,
        storage: Storage::FourBit {
            kind,
            blocksize,
            dtype,
            nested_offset,
        },
        shard: st.tensors()[main].shard,
        parts,
    }))
}

/// The LLM.int8 weight whose row scales `t` are, checked; `None` when `t`
/// is no `.SCB`.
fn int8_weight(
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    t: &StTensor,
) -> Result<Option<BnbWeight>> {
    let Some(module) = t.name.strip_suffix(".SCB") else {
        return Ok(None);
    };
    let path = st.shard_path(t);
    let name = format!("{module}.weight");
    let Some(&main) = index.get(name.as_str()) else {
        return Err(Error::tensor(path, &t.name, format!("'{name}' is missing")));
    };
    let cb = &st.tensors()[main];
    if cb.dtype != Dtype::I8 || cb.shape.len() != 2 {
        return Err(Error::tensor(
            path,
            &name,
            format!(
                "an LLM.int8 weight must be I8 [out, in], found {:?} {:?}",
                cb.dtype, cb.shape
            ),
        ));
    }
    if t.dtype != Dtype::F32 || t.n_elements() != cb.shape[0] {
        return Err(Error::tensor(
            path,
            &t.name,
            format!(
                "expected F32 [{}], found {:?} {:?}",
                cb.shape[0], t.dtype, t.shape
            ),
        ));
    }
    let mut parts = vec![main, index[t.name.as_str()]];
    if let Some(&f) = index.get(format!("{name}_format").as_str()) {
        let ft = &st.tensors()[f];
        if st.data(ft).iter().any(|&b| b != 0) {
            return Err(Error::tensor(
                st.shard_path(ft),
                &ft.name,
                "only weight_format 0 (row-major) is supported",
            ));
        }
        parts.push(f);
    }
    Ok(Some(BnbWeight {
        name,
        shape: cb.shape.clone(),
        storage: Storage::Int8,
        shard: cb.shard,
        parts,
    }))
}

enum Absmax<'a> {
    Plain(&'a [u8]),
    Nested {
        codes: &'a [u8],
        absmax2: Vec<f32>,
        code: Box<[f32; 256]>,
        offset: f32,
    },
}

/// Rows of a 4-bit weight. Blocks run over the flattened tensor, so a row
/// range is decoded through the blocks covering it.
struct FourBitRows<'a> {
    path: &'a Path,
    name: &'a str,
    packed: &'a [u8],
    absmax: Absmax<'a>,
    kind: FourBit,
    blocksize: usize,
    n: usize,
    row_len: usize,
    pages: &'a SafetensorsModel,
}

fn bnb_err(path: &Path, name: &str, e: BnbError) -> Error {
    Error::tensor(path, name, e.to_string())
}

impl FourBitRows<'_> {
    /// The absmax of blocks `b0..b1`.
    fn absmax(&self, b0: usize, b1: usize) -> Result<Vec<f32>> {
        match &self.absmax {
            Absmax::Plain(bytes) => Ok(f32s(&bytes[b0 * 4..b1 * 4])),
            Absmax::Nested {
                codes,
                absmax2,
                code,
                offset,
            } => {
                let g0 = b0 / NESTED_BLOCKSIZE * NESTED_BLOCKSIZE;
                let a0 = g0 / NESTED_BLOCKSIZE;
                let nested = NestedAbsmax {
                    codes: codes[g0..b1].to_vec(),
                    absmax2: absmax2[a0..a0 + num_blocks(b1 - g0, NESTED_BLOCKSIZE)].to_vec(),
                    offset: *offset,
                    code: **code,
                };
                let mut all = nested
                    .dequantize()
                    .map_err(|e| bnb_err(self.path, self.name, e))?;
                all.drain(..b0 - g0);
                Ok(all)
            }
        }
    }
}

impl FourBitRows<'_> {
    /// The packed codes and decoded absmax of the whole blocks covering
    /// elements `e0..e0 + len` (`e0` at a block start).
    fn blocks(&self, e0: usize, len: usize) -> Result<(&[u8], Vec<f32>)> {
        let bs = self.blocksize;
        let absmax = self.absmax(e0 / bs, (e0 + len).div_ceil(bs))?;
        Ok((&self.packed[e0 / 2..(e0 + len).div_ceil(2)], absmax))
    }
}

impl RowSource for FourBitRows<'_> {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n / self.row_len
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let bs = self.blocksize;
        let e0 = start * self.row_len;
        let e1 = e0 + out.len();
        let (b0, b1) = (e0 / bs, e1.div_ceil(bs));
        let first = b0 * bs;
        let m = (b1 * bs).min(self.n) - first;
        let absmax = self.absmax(b0, b1)?;
        let mut tmp = vec![0f32; m];
        dequantize_4bit(
            self.kind,
            &self.packed[first / 2..first / 2 + m.div_ceil(2)],
            &absmax,
            bs,
            m,
            &mut tmp,
        )
        .map_err(|e| bnb_err(self.path, self.name, e))?;
        out.copy_from_slice(&tmp[e0 - first..e1 - first]);
        Ok(())
    }

    fn release_rows(&self, start: usize, end: usize) {
        let (a, b) = (start * self.row_len / 2, end * self.row_len / 2);
        self.pages
            .release(&self.packed[a.min(self.packed.len())..b.min(self.packed.len())]);
    }
}

/// Rows of an LLM.int8 weight.
struct Int8Rows<'a> {
    path: &'a Path,
    name: &'a str,
    cb: &'a [u8],
    scb: &'a [u8],
    row_len: usize,
    n_rows: usize,
    pages: &'a SafetensorsModel,
}

impl RowSource for Int8Rows<'_> {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n_rows
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let rows = out.len() / self.row_len;
        let cb: &[i8] = bytemuck::cast_slice(&self.cb[start * self.row_len..][..out.len()]);
        let scb = f32s(&self.scb[start * 4..(start + rows) * 4]);
        dequantize_int8_rows(cb, &scb, self.row_len, out)
            .map_err(|e| bnb_err(self.path, self.name, e))
    }

    fn release_rows(&self, start: usize, end: usize) {
        self.pages
            .release(&self.cb[start * self.row_len..end * self.row_len]);
    }
}

/// How one weight is written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OutStorage {
    /// Plain tensor of this dtype (F16, BF16, F32; any other dtype is copied).
    Plain(Dtype),
    /// NF4 / FP4 quantized from `dtype`, with or without double quantization.
    FourBit {
        /// NF4 or FP4.
        kind: FourBit,
        /// Elements per absmax block.
        blocksize: usize,
        /// The module dtype the sum is rounded to before quantizing.
        dtype: Dtype,
        /// Double quantization of the absmax.
        double_quant: bool,
    },
    /// LLM.int8, quantized from float16.
    Int8,
    /// MLX groups (affine or a float mode) recomputed as `mx.quantize` does, from the sum
    /// rounded to the scales' dtype.
    Mlx(MlxLayout),
    /// Packed integers re-rounded on the base's own group scales (which
    /// are kept), from the sum rounded to the scales' dtype.
    Packed(PackedLayout),
    /// GPTQ/AWQ codes re-rounded on the base's own scales and zero points
    /// (kept, with g_idx), from the sum rounded to the scales' dtype.
    Gptq(GptqLayout),
    /// FP8 with scales recomputed in `layout`, quantized from the sum
    /// rounded to `dtype`.
    Fp8 {
        /// Scale rule and blocks.
        layout: Fp8Layout,
        /// The module dtype the sum is rounded to before quantizing.
        dtype: Dtype,
    },
}

impl OutStorage {
    /// A short name for reports: `nf4`, `fp4`, `int8`, or the dtype (`F16`…).
    pub fn label(&self) -> String {
        match self {
            OutStorage::Plain(d) => format!("{d:?}"),
            OutStorage::FourBit { kind, .. } => kind.name().to_string(),
            OutStorage::Int8 => "int8".into(),
            OutStorage::Fp8 { layout, .. } => layout.label(),
            OutStorage::Mlx(layout) => layout.label(),
            OutStorage::Packed(layout) => layout.label(),
            OutStorage::Gptq(layout) => layout.label(),
        }
    }

    /// The same storage as `s`, as an output (quant parameters kept; an
    /// FP8 weight requantized from `dtype`, the model's).
    pub fn same_as(s: &Storage, dtype: Dtype) -> OutStorage {
        match *s {
            Storage::Plain(d) => OutStorage::Plain(d),
            Storage::FourBit {
                kind,
                blocksize,
                dtype,
                nested_offset,
            } => OutStorage::FourBit {
                kind,
                blocksize,
                dtype,
                double_quant: nested_offset.is_some(),
            },
            Storage::Int8 => OutStorage::Int8,
            Storage::Mlx(layout) => OutStorage::Mlx(layout),
            Storage::Packed(layout) => OutStorage::Packed(layout),
            Storage::Gptq(layout) => OutStorage::Gptq(layout),
            Storage::Fp8(layout) => OutStorage::Fp8 {
                layout,
                // compressed-tensors computes in the scale's dtype.
                dtype: match layout.rule {
                    ScaleRule::Inverse => dtype,
                    ScaleRule::Divide(_) => layout.scale_dtype(),
                },
            },
        }
    }
}

/// One weight of the output.
pub struct WeightJob<'a> {
    /// Index into [`BnbModel::weights`].
    pub weight: usize,
    /// How it is written.
    pub out: OutStorage,
    /// The residual, in the weight's shape.
    pub residual: Option<Box<dyn RowSource + 'a>>,
    /// α in `base + α·residual`.
    pub scale: f32,
}

/// What happened to one weight.
#[derive(Debug, Clone)]
pub struct WeightOutcome {
    /// The Hugging Face name.
    pub name: String,
    /// Storage in the input (`nf4`, `int8`, `F16`…).
    pub type_in: String,
    /// Storage in the output.
    pub type_out: String,
    /// Number of weights.
    pub n_elements: u64,
    /// Bytes stored in the input, all parts together.
    pub bytes_in: u64,
    /// Bytes stored in the output.
    pub bytes_out: u64,
    /// Whether all parts were copied byte for byte.
    pub copied: bool,
    /// Whether a residual was added.
    pub has_residual: bool,
    /// Output against the exact f32 `dequant(base) + α·Δ`.
    pub stats: Option<ErrorStats>,
    /// Blocks won by the base's block and the fresh one, when the weight
    /// was searched ([`WriteOptions::search`]).
    pub search: Option<SearchWins>,
}

/// Knobs of a write.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Target number of f32 elements per chunk.
    pub chunk_elements: usize,
    /// How many chunks may be computed ahead of the writer.
    pub window: usize,
    /// Whether to measure the output against the exact sum.
    pub measure: bool,
    /// torch's thread count whose `absmax.mean()` the nested offset
    /// reproduces (it differs in the last bit above 32768 blocks).
    pub torch_threads: usize,
    /// `--strategy search`: a 4-bit weight written in its base's kind and
    /// blocksize takes, block by block, the base's own block where it
    /// decodes nearer to the sum than the fresh one (see
    /// [`crate::quant::bnb::search_4bit`]; with double quantization the
    /// nested state stays the fresh one's, so that every block left fresh
    /// decodes exactly as in the fresh output).
    pub search: bool,
    /// FP8 weights kept FP8 keep their base's scales, their codes
    /// re-rounded on them ([`Fp8Layout::requantize_rows`]), instead of
    /// scales recomputed from the sum as the reference quantizer does.
    pub keep_fp8_scales: bool,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            chunk_elements: 1 << 18,
            window: 2 * rayon::current_num_threads().max(1),
            measure: true,
            torch_threads: 1,
            search: false,
            keep_fp8_scales: false,
        }
    }
}

/// Python's `repr(float)`: what `json.dumps` writes for a float, so that
/// quant states match the bytes transformers writes.
pub fn python_float_repr(x: f64) -> String {
    if !x.is_finite() {
        return if x.is_nan() {
            "NaN".into()
        } else if x > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    let sci = format!("{x:e}");
    let (mant, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mant) = mant.strip_prefix('-').map_or(("", mant), |m| ("-", m));
    let digits: String = mant.chars().filter(|c| *c != '.').collect();
    if !(-4..16).contains(&exp) {
        let mut s = format!("{sign}{}", &digits[..1]);
        if digits.len() > 1 {
            let _ = write!(s, ".{}", &digits[1..]);
        }
        let _ = write!(s, "e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
        return s;
    }
    let point = exp + 1;
    if point <= 0 {
        format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!(
            "{sign}{digits}{}.0",
            "0".repeat(point as usize - digits.len())
        )
    } else {
        let (a, b) = digits.split_at(point as usize);
        format!("{sign}{a}.{b}")
    }
}

/// The `quant_state.bitsandbytes__*` blob as transformers writes it
/// (`json.dumps` of `QuantState.as_dict(packed=True)`'s non-tensor items).
pub fn quant_state_json(
    kind: FourBit,
    blocksize: usize,
    dtype: Dtype,
    shape: &[usize],
    nested_offset: Option<f32>,
) -> String {
    let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {blocksize}, \"dtype\": \"{}\", \"shape\": [{}]",
        kind.name(),
        torch_name(dtype),
        shape.join(", ")
    );
    if let Some(off) = nested_offset {
        let _ = write!(
            s,
            ", \"nested_blocksize\": {NESTED_BLOCKSIZE}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            python_float_repr(off as f64)
        );
    }
    s.push('}');
    s
}

/// One value rounded to `dtype` (round to nearest even, as torch's casts).
fn rounding(dtype: Dtype) -> fn(f32) -> f32 {
    match dtype {
        Dtype::F16 => |v| f16::from_f32(v).to_f32(),
        Dtype::BF16 => |v| bf16::from_f32(v).to_f32(),
        _ => |v| v,
    }
}

/// `x` rounded to `dtype`.
fn round_to(dtype: Dtype, x: &mut [f32]) {
    let round = rounding(dtype);
    x.iter_mut().for_each(|v| *v = round(*v));
}

/// Rows per chunk: close to `target` elements and a multiple of `align`
/// elements (so that chunks never split a block).
fn rows_per_chunk(row_len: usize, align: usize, target: usize) -> usize {
    let g = gcd(row_len, align);
    let step = align / g;
    let rows = (target / row_len.max(1)).max(1);
    rows.div_ceil(step) * step
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a.max(1)
    } else {
        gcd(b, a % b)
    }
}

/// The rows `r0..r0+n` of base, residual and their exact sum. Without a
/// residual the sum is the base, held once (`base` stays empty).
struct Sum {
    base: Vec<f32>,
    delta: Option<Vec<f32>>,
    exact: Vec<f32>,
}

/// Rows `r0..r0 + n` of a weight's inputs are done with: hand their pages
/// back so a large model is not held resident.
fn release_inputs(
    base: &dyn RowSource,
    residual: Option<&(dyn RowSource + '_)>,
    r0: usize,
    n: usize,
) {
    base.release_rows(r0, r0 + n);
    if let Some(r) = residual {
        r.release_rows(r0, r0 + n);
    }
}

fn sum_rows(
    base: &dyn RowSource,
    residual: Option<&(dyn RowSource + '_)>,
    scale: f32,
    r0: usize,
    n: usize,
) -> Result<Sum> {
    let len = n * base.row_len();
    let mut b = vec![0f32; len];
    base.decode(r0, &mut b)?;
    match residual {
        None => Ok(Sum {
            exact: b,
            base: Vec::new(),
            delta: None,
        }),
        Some(r) => {
            let mut d = vec![0f32; len];
            r.decode(r0, &mut d)?;
            if scale != 1.0 {
                d.iter_mut().for_each(|v| *v *= scale);
            }
            let exact = b.iter().zip(&d).map(|(x, y)| x + y).collect();
            Ok(Sum {
                base: b,
                delta: Some(d),
                exact,
            })
        }
    }
}

impl Sum {
    fn stats(&self, decoded: &[f32], measure: bool) -> ErrorStats {
        let mut s = ErrorStats::default();
        if measure {
            match &self.delta {
                Some(d) => s.accumulate_residual(&self.base, d, &self.exact, decoded),
                None => s.accumulate(&self.exact, decoded),
            }
        }
        s
    }

    /// The exact sum rounded to the module dtype, refusing values it cannot hold.
    fn target(
        &self,
        dtype: Dtype,
        out: &Path,
        name: &str,
        r0: usize,
        row_len: usize,
    ) -> Result<Vec<f32>> {
        let mut t = self.exact.clone();
        round_to(dtype, &mut t);
        check_target(&t, &self.exact, dtype, (out, name), r0, row_len)?;
        Ok(t)
    }

    /// [`Sum::target`], when nothing measures the sum afterwards: an F32
    /// target is the sum itself, not a copy (a fresh buffer costs a page
    /// fault per 4 KiB; on `dequantize --type f32` they were most of its
    /// time).
    fn into_target(
        self,
        dtype: Dtype,
        out: &Path,
        name: &str,
        r0: usize,
        row_len: usize,
    ) -> Result<Vec<f32>> {
        if dtype == Dtype::F32 {
            check_target(&self.exact, &self.exact, dtype, (out, name), r0, row_len)?;
            return Ok(self.exact);
        }
        self.target(dtype, out, name, r0, row_len)
    }
}

/// `t` (the sum `exact` rounded to `dtype`) holds no infinity or NaN; else
/// the error names the first row and the value that overflowed.
fn check_target(
    t: &[f32],
    exact: &[f32],
    dtype: Dtype,
    (out, name): (&Path, &str),
    r0: usize,
    row_len: usize,
) -> Result<()> {
    match t.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::tensor(
            out,
            name,
            format!(
                "row {}: the value {} overflows {}",
                r0 + i / row_len,
                exact[i],
                torch_name(dtype)
            ),
        )),
    }
}

/// How a write runs a weight's row chunks: `work(k)` for every chunk
/// `k < n`, each result handed to `consume` in order of `k`; and where its
/// progress goes: the engine's claimed-chunk scheduler
/// (`engine::bnb::write_model`), so that this container module holds no
/// scheduler of its own.
pub trait ChunkRunner {
    /// Run the chunks; the first error in order of `k` ends the run.
    fn run<T: Send>(
        &self,
        n: usize,
        work: impl Fn(usize) -> Result<T> + Sync,
        consume: impl FnMut(usize, T) -> Result<()>,
    ) -> Result<()>;
    /// `bytes` more bytes of output will be written.
    fn expect(&self, _bytes: u64) {}
    /// The weight `name` is being written.
    fn weight(&self, _name: &str) {}
    /// `bytes` bytes were written.
    fn wrote(&self, _bytes: u64) {}
}

/// Run `f` over the chunks `(first_row, rows)` of `n_rows` on `runner`,
/// handing results to `sink` in order.
fn for_chunks<T: Send>(
    runner: &impl ChunkRunner,
    n_rows: usize,
    rows_per_chunk: usize,
    f: impl Fn(usize, usize) -> Result<T> + Sync,
    mut sink: impl FnMut(usize, usize, T) -> Result<()>,
) -> Result<()> {
    let chunks: Vec<(usize, usize)> = (0..n_rows)
        .step_by(rows_per_chunk.max(1))
        .map(|r| (r, rows_per_chunk.min(n_rows - r)))
        .collect();
    runner.run(
        chunks.len(),
        |k| f(chunks[k].0, chunks[k].1),
        |k, t| sink(chunks[k].0, chunks[k].1, t),
    )
}

/// The tensors written for one weight: (name, dtype, shape).
// Long because it is one match over every output storage, each arm the
// stored tensors of that format in the order the writer writes them.
fn out_tensors(
    model: &BnbModel,
    w: &BnbWeight,
    out: &OutStorage,
    copy: bool,
    nested_offset: Option<f32>,
) -> Vec<(String, Dtype, Vec<usize>)> {
    if copy {
        return w
            .parts
            .iter()
            .map(|&i| {
                let t = &model.st.tensors()[i];
                (t.name.clone(), t.dtype, t.shape.clone())
            })
            .collect();
    }
    let n = w.n_elements();
    match *out {
        OutStorage::Plain(d) => vec![(w.name.clone(), d, w.shape.clone())],
        OutStorage::FourBit {
            kind,
            blocksize,
            dtype,
            double_quant,
        } => {
            let nb = num_blocks(n, blocksize);
            let mut v = vec![(w.name.clone(), Dtype::U8, vec![n.div_ceil(2), 1])];
            if double_quant {
                v.push((format!("{}.absmax", w.name), Dtype::U8, vec![nb]));
            } else {
                v.push((format!("{}.absmax", w.name), Dtype::F32, vec![nb]));
            }
            v.push((format!("{}.quant_map", w.name), Dtype::F32, vec![16]));
            if double_quant {
                v.push((
                    format!("{}.nested_absmax", w.name),
                    Dtype::F32,
                    vec![num_blocks(nb, NESTED_BLOCKSIZE)],
                ));
                v.push((
                    format!("{}.nested_quant_map", w.name),
                    Dtype::F32,
                    vec![256],
                ));
            }
            let js = quant_state_json(kind, blocksize, dtype, &w.shape, nested_offset);
            v.push((
                format!("{}.quant_state.bitsandbytes__{}", w.name, kind.name()),
                Dtype::U8,
                vec![js.len()],
            ));
            v
        }
        OutStorage::Int8 => {
            let module = w.name.strip_suffix(".weight").unwrap_or(&w.name);
            vec![
                (w.name.clone(), Dtype::I8, w.shape.clone()),
                (format!("{module}.SCB"), Dtype::F32, vec![w.shape[0]]),
                (format!("{module}.weight_format"), Dtype::U8, vec![]),
            ]
        }
        OutStorage::Fp8 { layout, .. } => {
            // Only FP8 weights are written as FP8: the scale keeps its name
            // and shape.
            let scale = &model.st.tensors()[w.parts[1]];
            vec![
                (w.name.clone(), Dtype::F8_E4M3, w.shape.clone()),
                (
                    scale.name.clone(),
                    layout.scale_dtype(),
                    scale.shape.clone(),
                ),
            ]
        }
        // Only MLX weights are written as MLX: every part keeps its name,
        // dtype and shape.
        OutStorage::Mlx(_) | OutStorage::Packed(_) | OutStorage::Gptq(_) => w
            .parts
            .iter()
            .map(|&i| {
                let t = &model.st.tensors()[i];
                (t.name.clone(), t.dtype, t.shape.clone())
            })
            .collect(),
    }
}

/// Whether a job is a byte copy: same storage, no residual.
fn is_copy(w: &BnbWeight, job: &WeightJob<'_>) -> bool {
    job.residual.is_none()
        && match (&w.storage, &job.out) {
            (Storage::Fp8(a), OutStorage::Fp8 { layout, .. }) => a == layout,
            (s, out) => OutStorage::same_as(s, Dtype::BF16) == *out,
        }
}

/// Check that every job can be written; errors list the weights.
fn validate(model: &BnbModel, jobs: &[WeightJob<'_>]) -> Result<()> {
    let mut bad = Vec::new();
    for j in jobs {
        let w = &model.weights[j.weight];
        if is_copy(w, j) {
            continue;
        }
        if model.rows(j.weight).is_none() {
            bad.push(format!("{} ({:?} holds no floats)", w.name, w.storage));
            continue;
        }
        match j.out {
            OutStorage::Plain(d) if float_ggml(d).is_none() => {
                bad.push(format!("{}: cannot be written as {d:?}", w.name))
            }
            OutStorage::Int8 if w.shape.len() != 2 || !w.name.ends_with(".weight") => {
                bad.push(format!("{}: LLM.int8 needs a 2-D '.weight' tensor", w.name))
            }
            OutStorage::FourBit { blocksize, .. } if !BLOCKSIZES_4BIT.contains(&blocksize) => {
                bad.push(format!("{}: blocksize {blocksize}", w.name))
            }
            OutStorage::Fp8 { .. } if !matches!(w.storage, Storage::Fp8(_)) => {
                bad.push(format!("{}: only FP8 weights are written as FP8", w.name))
            }
            OutStorage::Mlx(_) if !matches!(w.storage, Storage::Mlx(_)) => {
                bad.push(format!("{}: only MLX weights are written as MLX", w.name))
            }
            OutStorage::Packed(_) if !matches!(w.storage, Storage::Packed(_)) => bad.push(format!(
                "{}: only packed weights are written packed",
                w.name
            )),
            OutStorage::Gptq(_) if !matches!(w.storage, Storage::Gptq(_)) => bad.push(format!(
                "{}: only GPTQ/AWQ weights are written as GPTQ/AWQ",
                w.name
            )),
            _ => {}
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{}: {} weight(s) cannot be written as asked: {}",
            model.dir.display(),
            bad.len(),
            bad.join("; ")
        )))
    }
}

/// What a weight's first pass finds, before its header can be written or
/// its codes computed.
#[derive(Default)]
struct Prepass {
    /// The double-quantized absmax offset.
    nested_offset: Option<f32>,
    /// The block maxima of an FP8 weight's rounded sum.
    fp8: Option<BlockMaxima>,
    /// Under `--strategy search`, per FP8 scale block: whether the base's
    /// block is kept.
    fp8_choice: Option<Vec<bool>>,
}

/// A pass over `job`'s sum before it is written: rows in chunks of whole
/// `align`-element blocks, each chunk's sum (and, for `measure`, the sum
/// rounded to `dtype`) handed to `measure(r0, n, sum, rounded)` on the
/// workers, its results to `keep` in row order; the inputs' pages are
/// handed back as the chunks are done (every weight of a shard runs its
/// passes before any is written, so nothing is held resident).
#[allow(clippy::too_many_arguments)]
fn sum_pass<T: Send>(
    model: &BnbModel,
    job: &WeightJob<'_>,
    (dtype, align): (Dtype, usize),
    out_path: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
    measure: impl Fn(usize, usize, &Sum, Vec<f32>) -> Result<T> + Sync,
    mut keep: impl FnMut(usize, T),
) -> Result<()> {
    let w = &model.weights[job.weight];
    let base = model.rows(job.weight).expect("validated");
    let row_len = w.row_len();
    for_chunks(
        runner,
        w.n_rows(),
        rows_per_chunk(row_len, align, opts.chunk_elements),
        |r0, n| {
            let s = sum_rows(base.as_ref(), job.residual.as_deref(), job.scale, r0, n)?;
            let t = s.target(dtype, out_path, &w.name, r0, row_len)?;
            measure(r0, n, &s, t)
        },
        |r0, n, x| {
            keep(r0, x);
            release_inputs(base.as_ref(), job.residual.as_deref(), r0, n);
            Ok(())
        },
    )
}

/// Pass 1 of an FP8 weight: the maxima of its blocks over the sum rounded
/// to the module dtype, from which its scales are made.
fn fp8_maxima_of(
    model: &BnbModel,
    job: &WeightJob<'_>,
    out_path: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
) -> Result<BlockMaxima> {
    let OutStorage::Fp8 { layout, dtype } = job.out else {
        unreachable!("only FP8 outputs take block maxima")
    };
    let w = &model.weights[job.weight];
    let mut maxima = BlockMaxima::new(layout, w.n_rows(), w.row_len());
    let target = |_: usize, _: usize, _: &Sum, t: Vec<f32>| Ok(t);
    let keep = |r0: usize, t: Vec<f32>| maxima.fold(r0, &t);
    sum_pass(model, job, (dtype, 1), out_path, opts, runner, target, keep)?;
    Ok(maxima)
}

/// Pass 2 of an FP8 weight under `--strategy search`, when the output
/// keeps the base's layout: per scale block, whether the base's block
/// (codes and scale, as stored) decodes strictly nearer the sum rounded to
/// the module dtype than the fresh block on the scales of `maxima` (squared
/// error over the block; ties go to fresh). `None` when not searched.
fn fp8_choice_of(
    model: &BnbModel,
    job: &WeightJob<'_>,
    maxima: &BlockMaxima,
    out_path: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
) -> Result<Option<Vec<bool>>> {
    let OutStorage::Fp8 { layout, dtype } = job.out else {
        unreachable!("only FP8 outputs are searched by block scales")
    };
    let w = &model.weights[job.weight];
    if !opts.search || w.storage != Storage::Fp8(layout) {
        return Ok(None);
    }
    let (row_len, scales) = (w.row_len(), maxima.scales());
    let bn = layout.block.1;
    // Per block: squared errors of [fresh, base].
    let mut err = vec![[0f64; 2]; layout.n_blocks(w.n_rows(), row_len)];
    let measure = |r0: usize, n: usize, s: &Sum, t: Vec<f32>| {
        let fresh = maxima.dequantize(&scales, r0, &maxima.quantize(&scales, r0, &t));
        let b = if s.base.is_empty() { &s.exact } else { &s.base };
        let first = layout.row_scales(r0, row_len).start;
        let mut e = vec![[0f64; 2]; layout.row_scales(r0 + n - 1, row_len).end - first];
        let rows = t.chunks_exact(row_len).zip(fresh.chunks_exact(row_len));
        for (i, ((tr, fr), br)) in rows.zip(b.chunks_exact(row_len)).enumerate() {
            let k0 = layout.row_scales(r0 + i, row_len).start - first;
            for (c, ((&x, &f), &v)) in tr.iter().zip(fr).zip(br).enumerate() {
                let e = &mut e[k0 + c / bn];
                let x = x as f64;
                e[0] += (x - f as f64).powi(2);
                e[1] += (x - v as f64).powi(2);
            }
        }
        Ok((first, e))
    };
    let keep = |_: usize, (first, e): (usize, Vec<[f64; 2]>)| {
        for (acc, e) in err[first..].iter_mut().zip(e) {
            acc[0] += e[0];
            acc[1] += e[1];
        }
    };
    sum_pass(
        model,
        job,
        (dtype, 1),
        out_path,
        opts,
        runner,
        measure,
        keep,
    )?;
    let finite = |v: f64| if v.is_finite() { v } else { f64::INFINITY };
    Ok(Some(
        err.iter().map(|[f, b]| finite(*b) < finite(*f)).collect(),
    ))
}

/// Pass 1 of a double-quantized weight: the offset (`absmax.mean()`) of the
/// absmax bitsandbytes would compute for the rounded sum.
fn nested_offset_of(
    model: &BnbModel,
    job: &WeightJob<'_>,
    out_path: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
) -> Result<f32> {
    let OutStorage::FourBit {
        kind,
        blocksize,
        dtype,
        ..
    } = job.out
    else {
        unreachable!("only 4-bit outputs are nested")
    };
    let w = &model.weights[job.weight];
    let mut absmax = Vec::with_capacity(num_blocks(w.n_elements(), blocksize));
    let measure = |_: usize, _: usize, _: &Sum, t: Vec<f32>| {
        let (_, a) =
            quantize_4bit(kind, &t, blocksize).map_err(|e| bnb_err(out_path, &w.name, e))?;
        Ok(a)
    };
    let keep = |_: usize, a: Vec<f32>| absmax.extend(a);
    sum_pass(
        model,
        job,
        (dtype, blocksize),
        out_path,
        opts,
        runner,
        measure,
        keep,
    )?;
    Ok(torch_mean_f32_threads(&absmax, opts.torch_threads))
}

/// Write one weight's tensors (in [`out_tensors`] order) into `writer`.
fn write_weight(
    model: &BnbModel,
    job: &WeightJob<'_>,
    pre: &Prepass,
    writer: &mut SafetensorsWriter,
    out_path: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
) -> Result<Written> {
    let w = &model.weights[job.weight];
    runner.weight(&w.name);
    let mut write = |bytes: &[u8]| -> Result<()> {
        writer.write(bytes)?;
        runner.wrote(bytes.len() as u64);
        Ok(())
    };
    if is_copy(w, job) {
        for &i in &w.parts {
            write(model.st.data(&model.st.tensors()[i]))?;
        }
        return Ok(Written::default());
    }
    let base = model.rows(job.weight).expect("validated");
    let re = Reencode {
        w,
        base: base.as_ref(),
        search_base: search_candidates(model, job, opts),
        search_mlx: mlx_candidates(model, job, opts),
        residual: job.residual.as_deref(),
        scale: job.scale,
        out_path,
        opts,
        runner,
    };
    let mut stats = ErrorStats::default();
    let mut search = None;
    match job.out {
        OutStorage::Plain(d) => re.plain(d, &mut write, &mut stats)?,
        OutStorage::FourBit {
            kind,
            blocksize,
            dtype,
            ..
        } => {
            search = re.four_bit(
                kind,
                blocksize,
                dtype,
                pre.nested_offset,
                &mut write,
                &mut stats,
            )?
        }
        OutStorage::Int8 => re.int8(&mut write, &mut stats)?,
        OutStorage::Fp8 { layout, dtype } if opts.keep_fp8_scales => {
            let scale = model.part(w, 1);
            let scales = scale_values(scale, model.st.data(scale));
            re.fp8_on_scales(layout, &scales, dtype, &mut write, &mut stats)?;
            // The base's scales, as they were.
            write(model.st.data(scale))?;
        }
        OutStorage::Fp8 { layout, dtype } => {
            let maxima = pre.fp8.as_ref().expect("FP8 outputs have a first pass");
            let searched = pre.fp8_choice.as_deref().map(|choice| {
                let scale = model.part(w, 1);
                Fp8Candidates {
                    choice,
                    scales: scale_values(scale, model.st.data(scale)),
                    codes: model.st.data(model.part(w, 0)),
                }
            });
            search = re.fp8(maxima, searched, layout, dtype, &mut write, &mut stats)?
        }
        OutStorage::Mlx(layout) => search = re.mlx(layout, &mut write, &mut stats)?,
        OutStorage::Packed(layout) => {
            let scales = PackedRows::scales_of(&model.st, model.part(w, 1));
            let zeros = PackedRows::zeros_of(&model.st, &w.parts, &layout, &w.shape);
            re.packed(layout, &scales, &zeros, &mut write, &mut stats)?;
            // The base's scales, shape and zero points, as they were.
            for k in 1..w.parts.len() {
                write(model.st.data(model.part(w, k)))?;
            }
        }
        OutStorage::Gptq(layout) => {
            let grid = grid_of(&model.st, &w.parts, layout, &w.shape);
            re.gptq(&grid, &mut write, &mut stats)?;
            // The base's zero points, scales and g_idx, as they were.
            for k in 1..w.parts.len() {
                write(model.st.data(model.part(w, k)))?;
            }
        }
    }
    Ok(Written {
        stats: opts.measure.then_some(stats),
        search,
    })
}

/// What [`write_weight`] measured: the statistics (when measuring) and the
/// search wins (when searched).
#[derive(Default)]
struct Written {
    stats: Option<ErrorStats>,
    search: Option<SearchWins>,
}

/// The base's blocks as search candidates for `job`: when searching, and
/// the output keeps the base's 4-bit kind and blocksize (a block of another
/// kind or size is no candidate).
fn search_candidates<'a>(
    model: &'a BnbModel,
    job: &WeightJob<'_>,
    opts: &WriteOptions,
) -> Option<FourBitRows<'a>> {
    let w = &model.weights[job.weight];
    match (&w.storage, job.out) {
        (
            Storage::FourBit {
                kind, blocksize, ..
            },
            OutStorage::FourBit {
                kind: k,
                blocksize: b,
                ..
            },
        ) if opts.search && *kind == k && *blocksize == b => model.four_bit_rows(job.weight),
        _ => None,
    }
}

/// The base's MLX groups as search candidates for `job`: when searching,
/// and the output keeps the base's layout.
fn mlx_candidates<'a>(
    model: &'a BnbModel,
    job: &WeightJob<'_>,
    opts: &WriteOptions,
) -> Option<MlxRows<'a>> {
    match (&model.weights[job.weight].storage, job.out) {
        (Storage::Mlx(a), OutStorage::Mlx(b)) if opts.search && *a == b => {
            model.mlx_rows(job.weight)
        }
        _ => None,
    }
}

/// An FP8 weight's search candidates: the base's codes and stored scales,
/// and per scale block whether its block is kept.
struct Fp8Candidates<'a> {
    choice: &'a [bool],
    scales: Vec<f32>,
    codes: &'a [u8],
}

/// One weight re-encoded chunk by chunk: base (+ scale · residual) into
/// each output storage, the output bytes handed to `write` in order.
struct Reencode<'a, R> {
    w: &'a BnbWeight,
    base: &'a dyn RowSource,
    /// The base's 4-bit blocks, when they are search candidates.
    search_base: Option<FourBitRows<'a>>,
    /// The base's MLX groups, when they are search candidates.
    search_mlx: Option<MlxRows<'a>>,
    residual: Option<&'a dyn RowSource>,
    scale: f32,
    out_path: &'a Path,
    opts: &'a WriteOptions,
    runner: &'a R,
}

impl<R: ChunkRunner> Reencode<'_, R> {
    /// Rows `r0..r0 + n` are written: hand their input pages back so a
    /// large model is not held resident.
    fn release(&self, r0: usize, n: usize) {
        release_inputs(self.base, self.residual, r0, n);
    }

    /// Row chunk by row chunk: the sum rounded to `dtype`, encoded by
    /// `encode(r0, rounded)` into (bytes, what they decode to — `None` when
    /// exactly the rounded values — and `extra`); the bytes are written in
    /// order, the statistics merged and every `extra` handed to `keep`.
    /// When nothing is measured, `encode` may take the rounded values (the
    /// bytes of an F32 output, written without a copy).
    fn encode_chunks<B: AsRef<[u8]> + Send, X: Send>(
        &self,
        dtype: Dtype,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
        encode: impl Fn(usize, &mut Vec<f32>) -> Result<(B, Option<Vec<f32>>, X)> + Sync,
        mut keep: impl FnMut(X),
    ) -> Result<()> {
        let (base, residual, scale) = (self.base, self.residual, self.scale);
        let (out_path, name, measure) = (self.out_path, &self.w.name, self.opts.measure);
        let row_len = self.w.row_len();
        let rpc = rows_per_chunk(row_len, 1, self.opts.chunk_elements);
        for_chunks(
            self.runner,
            self.w.n_rows(),
            rpc,
            |r0, n| {
                let s = sum_rows(base, residual, scale, r0, n)?;
                if !measure {
                    let mut t = s.into_target(dtype, out_path, name, r0, row_len)?;
                    let (bytes, _, extra) = encode(r0, &mut t)?;
                    return Ok((bytes, ErrorStats::default(), extra));
                }
                let mut t = s.target(dtype, out_path, name, r0, row_len)?;
                let (bytes, decoded, extra) = encode(r0, &mut t)?;
                let st = s.stats(decoded.as_deref().unwrap_or(&t), measure);
                Ok((bytes, st, extra))
            },
            |r0, n, (bytes, st, extra)| {
                write(bytes.as_ref())?;
                stats.merge(&st);
                keep(extra);
                self.release(r0, n);
                Ok(())
            },
        )
    }

    /// As the float dtype `d`.
    fn plain(
        &self,
        d: Dtype,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<()> {
        let (out_path, name, measure) = (self.out_path, &self.w.name, self.opts.measure);
        let ty = float_ggml(d).expect("validated");
        let encode = |r0: usize, t: &mut Vec<f32>| {
            if d == Dtype::F32 && !measure {
                return Ok((PlainBytes::F32(std::mem::take(t)), None, ()));
            }
            let mut bytes = vec![0u8; t.len() * d.bitsize() / 8];
            quantize_row(ty, t, &mut bytes).map_err(|e| Error::quant(out_path, name, r0, e))?;
            // The rounded values are exactly what the bytes hold.
            Ok((PlainBytes::Bytes(bytes), None, ()))
        };
        self.encode_chunks(d, write, stats, encode, |()| {})
    }

    /// As NF4/FP4 with blocks of `blocksize` (absmax double-quantized when
    /// `nested_offset` is given), then the quant state's tensors. With
    /// `self.search_base`, blocks are chosen between the base's and the
    /// fresh ones; the wins are returned.
    fn four_bit(
        &self,
        kind: FourBit,
        blocksize: usize,
        dtype: Dtype,
        nested_offset: Option<f32>,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<Option<SearchWins>> {
        let (base, residual, scale) = (self.base, self.residual, self.scale);
        let (out_path, name, measure) = (self.out_path, &self.w.name, self.opts.measure);
        let row_len = self.w.row_len();
        let align = match nested_offset {
            Some(_) => blocksize * NESTED_BLOCKSIZE,
            None => blocksize,
        };
        let rpc = rows_per_chunk(row_len, align, self.opts.chunk_elements);
        let mut absmax_out: Vec<u8> = Vec::new();
        let mut absmax2: Vec<f32> = Vec::new();
        let searched = self.search_base.as_ref();
        let mut wins = searched.map(|_| SearchWins::default());
        let err = |e: BnbError| bnb_err(out_path, name, e);
        for_chunks(
            self.runner,
            self.w.n_rows(),
            rpc,
            |r0, n| {
                let s = sum_rows(base, residual, scale, r0, n)?;
                let t = s.target(dtype, out_path, name, r0, row_len)?;
                let mut chunk = Chunk4::fresh(kind, blocksize, &t, nested_offset).map_err(err)?;
                let (mut decoded, mut won) = (Vec::new(), None);
                if let Some(b) = searched {
                    let (w, d) = keep_base_blocks(b, r0 * row_len, &s.exact, dtype, &mut chunk)?;
                    (won, decoded) = (Some(w), d);
                } else if measure {
                    decoded = chunk.decode(kind, blocksize, t.len()).map_err(err)?;
                }
                let (packed, stored, nested2) = chunk.into_parts();
                Ok((packed, stored, nested2, s.stats(&decoded, measure), won))
            },
            |r0, n, (packed, stored, nested2, st, won)| {
                write(&packed)?;
                absmax_out.extend(stored);
                absmax2.extend(nested2);
                stats.merge(&st);
                if let (Some(w), Some(won)) = (wins.as_mut(), won) {
                    w.merge(&won);
                }
                self.release(r0, n);
                Ok(())
            },
        )?;
        write(&absmax_out)?;
        write(&f32_bytes(&kind.code()))?;
        if nested_offset.is_some() {
            write(&f32_bytes(&absmax2))?;
            write(&f32_bytes(&dynamic_map()))?;
        }
        let js = quant_state_json(kind, blocksize, dtype, &self.w.shape, nested_offset);
        write(js.as_bytes())?;
        Ok(wins)
    }

    /// As LLM.int8 (row-wise absmax), then the row scales and the format.
    fn int8(
        &self,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<()> {
        let (base, residual, scale) = (self.base, self.residual, self.scale);
        let (out_path, name, measure) = (self.out_path, &self.w.name, self.opts.measure);
        let row_len = self.w.row_len();
        let rpc = rows_per_chunk(row_len, 1, self.opts.chunk_elements);
        let mut scb_all: Vec<f32> = Vec::with_capacity(self.w.n_rows());
        for_chunks(
            self.runner,
            self.w.n_rows(),
            rpc,
            |r0, n| {
                let s = sum_rows(base, residual, scale, r0, n)?;
                let t = s.target(Dtype::F16, out_path, name, r0, row_len)?;
                let (cb, scb) =
                    quantize_int8_rows(&t, row_len).map_err(|e| bnb_err(out_path, name, e))?;
                let mut decoded = Vec::new();
                if measure {
                    decoded = vec![0f32; t.len()];
                    dequantize_int8_rows(&cb, &scb, row_len, &mut decoded)
                        .map_err(|e| bnb_err(out_path, name, e))?;
                }
                let bytes: Vec<u8> = bytemuck::cast_slice(&cb).to_vec();
                Ok((bytes, scb, s.stats(&decoded, measure)))
            },
            |r0, n, (bytes, scb, st)| {
                write(&bytes)?;
                scb_all.extend(scb);
                stats.merge(&st);
                self.release(r0, n);
                Ok(())
            },
        )?;
        write(&f32_bytes(&scb_all))?;
        write(&[0u8])
    }

    /// As FP8 codes under the scales `maxima` gives, from the sum rounded
    /// to `dtype`; then the scales, stored as `scale_dtype`.
    /// With `searched`, the blocks its choice keeps are the base's codes
    /// and scales; the wins are returned.
    fn fp8(
        &self,
        maxima: &BlockMaxima,
        searched: Option<Fp8Candidates<'_>>,
        layout: Fp8Layout,
        dtype: Dtype,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<Option<SearchWins>> {
        let (measure, cols) = (self.opts.measure, self.w.row_len());
        let fresh = maxima.scales();
        let mut scales = fresh.clone();
        if let Some(c) = &searched {
            for ((s, &b), &took) in scales.iter_mut().zip(&c.scales).zip(c.choice) {
                if took {
                    *s = b;
                }
            }
        }
        let encode = |r0: usize, t: &mut Vec<f32>| {
            let mut codes = maxima.quantize(&fresh, r0, t);
            if let Some(c) = &searched {
                for (i, row) in codes.chunks_exact_mut(cols).enumerate() {
                    let (k0, r) = (layout.row_scales(r0 + i, cols).start, r0 + i);
                    let base = &c.codes[r * cols..(r + 1) * cols];
                    for (j, (o, &b)) in row.iter_mut().zip(base).enumerate() {
                        if c.choice[k0 + j / layout.block.1] {
                            *o = b;
                        }
                    }
                }
            }
            let decoded = measure.then(|| maxima.dequantize(&scales, r0, &codes));
            Ok((codes, Some(decoded.unwrap_or_default()), ()))
        };
        self.encode_chunks(dtype, write, stats, encode, |()| {})?;
        write(&scale_bytes(layout.scale_dtype(), &scales))?;
        Ok(searched.map(|c| {
            let base = c.choice.iter().filter(|&&b| b).count() as u64;
            SearchWins {
                base,
                fresh: c.choice.len() as u64 - base,
                rerounded: 0,
            }
        }))
    }

    /// As FP8 codes re-rounded on `scales` (the base's), from the sum
    /// rounded to `dtype`.
    fn fp8_on_scales(
        &self,
        layout: Fp8Layout,
        scales: &[f32],
        dtype: Dtype,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<()> {
        let (measure, cols) = (self.opts.measure, self.w.row_len());
        let encode = |r0: usize, t: &mut Vec<f32>| {
            let codes = layout.requantize_rows(scales, cols, r0, t);
            let decoded = measure.then(|| layout.dequantize_rows(scales, cols, r0, &codes));
            Ok((codes, Some(decoded.unwrap_or_default()), ()))
        };
        self.encode_chunks(dtype, write, stats, encode, |()| {})
    }

    /// As GPTQ/AWQ codes on the base's grid, from the sum rounded to the
    /// scales' dtype. A row's codes are a column of `qweight`, so the
    /// tensor's words are gathered (a quarter or an eighth of the f32
    /// weight's bytes) and written once every chunk is in.
    fn gptq(
        &self,
        grid: &qresidual_quant::gptq::Grid,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<()> {
        let measure = self.opts.measure;
        let words = grid.out * grid.inp / qresidual_quant::gptq::per_word(grid.bits);
        let mut qweight = vec![0u32; words];
        let dtype = dtype_of(grid.precision);
        let encode = |r0: usize, t: &mut Vec<f32>| {
            let codes = grid.codes_for_rows(t, r0);
            let decoded = measure.then(|| {
                let mut d = vec![0f32; t.len()];
                grid.decode_codes(&codes, r0, &mut d);
                d
            });
            Ok((Vec::new(), decoded, (r0, codes)))
        };
        let keep = |(r0, codes): (usize, Vec<u8>)| grid.place_codes(&codes, r0, &mut qweight);
        self.encode_chunks(dtype, write, stats, encode, keep)?;
        write(
            &qweight
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>(),
        )
    }

    /// As packed integers on the grid of `scales` and `zeros` (the base's;
    /// `zeros` empty when symmetric), from the sum rounded to the scales'
    /// dtype.
    fn packed(
        &self,
        layout: PackedLayout,
        scales: &[f32],
        zeros: &[i32],
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<()> {
        let (measure, row_len) = (self.opts.measure, self.w.row_len());
        let encode = |r0: usize, t: &mut Vec<f32>| {
            let (mut packed, mut decoded) = (Vec::new(), Vec::new());
            for (i, row) in t.chunks_exact(row_len).enumerate() {
                let grid = layout.row_grid(scales, zeros, r0 + i, row_len);
                let p = packed_quant::quantize_row_on_grid(row, grid);
                if measure {
                    let mut d = vec![0f32; row_len];
                    packed_quant::dequantize_row(&p, grid, &mut d);
                    decoded.extend(d);
                }
                packed.extend(p);
            }
            Ok((packed, Some(decoded), ()))
        };
        self.encode_chunks(layout.dtype(), write, stats, encode, |()| {})
    }

    /// As MLX affine groups of `layout`, from the sum rounded to the
    /// scales' dtype; then the scales and the biases.
    fn mlx(
        &self,
        layout: MlxLayout,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<Option<SearchWins>> {
        if let Some(mode) = layout.fp {
            return self.mlx_fp(mode, layout.precision, write, stats);
        }
        let searched = self.search_mlx.as_ref();
        let (decode, row_len) = (self.opts.measure || searched.is_some(), self.w.row_len());
        let (bits, gs, prec) = (layout.bits, layout.group_size, layout.precision);
        let encode = |r0: usize, t: &mut Vec<f32>| {
            let mut packed = Vec::with_capacity(t.len() * bits as usize / 8);
            let (mut scales, mut biases, mut decoded) = (Vec::new(), Vec::new(), Vec::new());
            let mut wins = SearchWins::default();
            for (i, row) in t.chunks_exact(row_len).enumerate() {
                let (mut p, mut sc, mut bi) = mlx_quant::quantize_row(row, bits, gs, prec);
                if decode {
                    let mut d = vec![0f32; row_len];
                    mlx_quant::dequantize_row(&p, &sc, &bi, bits, gs, prec, &mut d);
                    if let Some(b) = searched {
                        let bp = b.codes(r0 + i, 1);
                        let (bs, bb) = b.affine_params(r0 + i, 1)?;
                        let mut bd = vec![0f32; row_len];
                        mlx_quant::dequantize_row(bp, &bs, &bb, bits, gs, prec, &mut bd);
                        let take = |g: usize| (sc[g], bi[g]) = (bs[g], bb[g]);
                        wins.merge(&keep_nearer_groups(
                            row,
                            (&mut p, bp),
                            (&mut d, &bd),
                            gs,
                            take,
                        ));
                    }
                    decoded.extend(d);
                }
                packed.extend(p);
                scales.extend(sc);
                biases.extend(bi);
            }
            Ok((packed, Some(decoded), (scales, biases, wins)))
        };
        let (mut all_scales, mut all_biases) = (Vec::new(), Vec::new());
        let mut all_wins = searched.map(|_| SearchWins::default());
        let keep = |(sc, bi, w): (Vec<f32>, Vec<f32>, SearchWins)| {
            all_scales.extend(sc);
            all_biases.extend(bi);
            if let Some(a) = all_wins.as_mut() {
                a.merge(&w);
            }
        };
        self.encode_chunks(layout.dtype(), write, stats, encode, keep)?;
        write(&scale_bytes(layout.dtype(), &all_scales))?;
        write(&scale_bytes(layout.dtype(), &all_biases))?;
        Ok(all_wins)
    }

    /// In MLX's float `mode` as `mx.quantize` does, from the sum rounded to
    /// `prec` (the model's dtype); then the scale bytes. Searched like the
    /// affine groups when the base's groups are candidates.
    fn mlx_fp(
        &self,
        mode: FpMode,
        prec: Precision,
        write: &mut impl FnMut(&[u8]) -> Result<()>,
        stats: &mut ErrorStats,
    ) -> Result<Option<SearchWins>> {
        let searched = self.search_mlx.as_ref();
        let (decode, row_len) = (self.opts.measure || searched.is_some(), self.w.row_len());
        let (out_path, name) = (self.out_path, &self.w.name);
        let gs = mode.group_size();
        let encode = |r0: usize, t: &mut Vec<f32>| {
            let mut packed = Vec::with_capacity(t.len() * mode.bits() as usize / 8);
            let (mut scales, mut decoded) = (Vec::new(), Vec::new());
            let mut wins = SearchWins::default();
            for (i, row) in t.chunks_exact(row_len).enumerate() {
                let (mut p, mut sc) = mlx_fp::quantize_row(row, mode, prec)
                    .map_err(|e| Error::quant(out_path, name, r0 + i, e))?;
                if decode {
                    let mut d = vec![0f32; row_len];
                    mlx_fp::dequantize_row(&p, &sc, mode, prec, &mut d);
                    if let Some(b) = searched {
                        let (bp, bs) = (b.codes(r0 + i, 1), b.scale_bytes(r0 + i, 1));
                        let mut bd = vec![0f32; row_len];
                        mlx_fp::dequantize_row(bp, bs, mode, prec, &mut bd);
                        let take = |g: usize| sc[g] = bs[g];
                        wins.merge(&keep_nearer_groups(
                            row,
                            (&mut p, bp),
                            (&mut d, &bd),
                            gs,
                            take,
                        ));
                    }
                    decoded.extend(d);
                }
                packed.extend(p);
                scales.extend(sc);
            }
            Ok((packed, Some(decoded), (scales, wins)))
        };
        let mut all_scales = Vec::new();
        let mut all_wins = searched.map(|_| SearchWins::default());
        let keep = |(sc, w): (Vec<u8>, SearchWins)| {
            all_scales.extend(sc);
            if let Some(a) = all_wins.as_mut() {
                a.merge(&w);
            }
        };
        self.encode_chunks(dtype_of(prec), write, stats, encode, keep)?;
        write(&all_scales)?;
        Ok(all_wins)
    }
}

/// One row's groups of `gs` searched: where the base's group decodes
/// strictly nearer `target`, its codes and decoded values replace the fresh
/// ones and `take_scale(g)` takes its scale (and bias). The wins.
fn keep_nearer_groups(
    target: &[f32],
    (codes, base_codes): (&mut [u8], &[u8]),
    (decoded, base_decoded): (&mut [f32], &[f32]),
    gs: usize,
    mut take_scale: impl FnMut(usize),
) -> SearchWins {
    let took = base_groups_nearer(target, decoded, base_decoded, gs);
    let group_bytes = codes.len() / took.len();
    let mut wins = SearchWins::default();
    for (g, _) in took.iter().enumerate().filter(|(_, &t)| t) {
        let (c, e) = (g * group_bytes, g * gs);
        codes[c..c + group_bytes].copy_from_slice(&base_codes[c..c + group_bytes]);
        decoded[e..e + gs].copy_from_slice(&base_decoded[e..e + gs]);
        take_scale(g);
        wins.base += 1;
    }
    wins.fresh = took.len() as u64 - wins.base;
    wins
}

/// A chunk of a plain float output: encoded bytes, or F32 values written
/// as they are (little-endian, as safetensors stores them).
enum PlainBytes {
    Bytes(Vec<u8>),
    F32(Vec<f32>),
}

impl AsRef<[u8]> for PlainBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            PlainBytes::Bytes(b) => b,
            PlainBytes::F32(v) => bytemuck::cast_slice(v),
        }
    }
}

/// One chunk of a 4-bit weight as it will be written: packed codes, every
/// block's absmax as it decodes, and with double quantization the nested
/// state that stores it.
struct Chunk4 {
    packed: Vec<u8>,
    absmax: Vec<f32>,
    nested: Option<NestedAbsmax>,
}

impl Chunk4 {
    /// bitsandbytes' encoding of `t` (whole blocks, and whole nested
    /// groups when `nested_offset` is given).
    fn fresh(
        kind: FourBit,
        blocksize: usize,
        t: &[f32],
        nested_offset: Option<f32>,
    ) -> std::result::Result<Chunk4, BnbError> {
        let (packed, raw) = quantize_4bit(kind, t, blocksize)?;
        let nested = nested_offset
            .map(|off| NestedAbsmax::quantize_with_offset(&raw, off))
            .transpose()?;
        let absmax = match &nested {
            None => raw,
            Some(nested) => nested.dequantize()?,
        };
        Ok(Chunk4 {
            packed,
            absmax,
            nested,
        })
    }

    /// What the chunk's `n` elements decode to.
    fn decode(
        &self,
        kind: FourBit,
        blocksize: usize,
        n: usize,
    ) -> std::result::Result<Vec<f32>, BnbError> {
        let mut out = vec![0f32; n];
        dequantize_4bit(kind, &self.packed, &self.absmax, blocksize, n, &mut out)?;
        Ok(out)
    }

    /// The stored parts: packed codes, the absmax as stored (f32 bytes or
    /// nested codes) and the nested group scales (empty without nesting).
    fn into_parts(self) -> (Vec<u8>, Vec<u8>, Vec<f32>) {
        match self.nested {
            None => (self.packed, f32_bytes(&self.absmax), Vec::new()),
            Some(nested) => (self.packed, nested.codes, nested.absmax2),
        }
    }
}

/// `--strategy search` on one chunk (elements `e0..` of the weight, whole
/// blocks and nested groups): every block of `chunk` (the fresh encoding)
/// is replaced by the base's own block where that decodes nearer to `exact`
/// ([`search_4bit`], in f32 and after rounding to the module `dtype`).
///
/// With double quantization the offset and each group's `absmax2` stay the
/// fresh ones; a base block's absmax is stored as the code bitsandbytes'
/// quantizer gives it under them ([`NestedAbsmax::codes_for`]) and is
/// judged by what that code decodes to. Blocks left fresh keep their code,
/// so they decode exactly as in the fresh output, and a block that takes
/// the base's is, as decoded, strictly nearer: the output is never further
/// from the sum than the fresh output, block by block. (Letting the chosen
/// absmax set the nested state, as bitsandbytes would for them, could move
/// every block of a group and break that guarantee.)
///
/// Returns the wins and the chunk's decoded values.
fn keep_base_blocks(
    base: &FourBitRows<'_>,
    e0: usize,
    exact: &[f32],
    dtype: Dtype,
    chunk: &mut Chunk4,
) -> Result<(SearchWins, Vec<f32>)> {
    let err = |e: BnbError| bnb_err(base.path, base.name, e);
    let (packed, absmax) = base.blocks(e0, exact.len())?;
    let (codes, absmax) = match &chunk.nested {
        None => (Vec::new(), absmax),
        Some(nested) => {
            let codes = nested.codes_for(&absmax).map_err(err)?;
            let held = NestedAbsmax {
                codes: codes.clone(),
                ..nested.clone()
            };
            (codes, held.dequantize().map_err(err)?)
        }
    };
    let (took, decoded) = search_4bit(
        base.kind,
        base.blocksize,
        exact,
        rounding(dtype),
        &mut chunk.packed,
        &chunk.absmax,
        Blocks4 {
            packed,
            absmax: &absmax,
        },
    )
    .map_err(err)?;
    let mut wins = SearchWins::default();
    for (b, &took) in took.iter().enumerate() {
        if !took {
            wins.fresh += 1;
            continue;
        }
        wins.base += 1;
        chunk.absmax[b] = absmax[b];
        if let Some(nested) = chunk.nested.as_mut() {
            nested.codes[b] = codes[b];
        }
    }
    Ok((wins, decoded))
}

/// A folder being written: removed on drop unless [`TempDir::commit`]ted.
struct TempDir {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

impl TempDir {
    fn create(target: &Path) -> Result<Self> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::Usage(format!("{}: not a folder name", target.display())))?
            .to_string_lossy()
            .into_owned();
        let tmp = parent.join(format!(".{name}.qresidual-tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(TempDir {
            tmp,
            target: target.to_path_buf(),
            done: false,
        })
    }

    fn commit(mut self) -> Result<()> {
        // An empty folder at the target is replaced; anything else was
        // refused before writing started.
        if self.target.is_dir() {
            std::fs::remove_dir(&self.target).map_err(|e| Error::io(&self.target, e))?;
        }
        std::fs::rename(&self.tmp, &self.target).map_err(|e| Error::io(&self.target, e))?;
        self.done = true;
        Ok(())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Refuse an output folder that exists with content, or that is (or
/// contains, or lies inside) one of the inputs.
pub fn check_output_dir(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = parent.canonicalize().map_err(|_| {
        Error::Usage(format!(
            "{}: the parent folder {} does not exist",
            out.display(),
            parent.display()
        ))
    })?;
    let name = out
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a folder name", out.display())))?;
    let target = parent.join(name);
    for input in inputs {
        let Ok(input) = input.canonicalize() else {
            continue;
        };
        if input == target || input.starts_with(&target) {
            return Err(Error::Usage(format!(
                "{}: the output would overwrite the input {}",
                out.display(),
                input.display()
            )));
        }
    }
    if target.is_file() {
        return Err(Error::Usage(format!(
            "{}: is a file; the output is a model folder",
            out.display()
        )));
    }
    if target.is_dir() {
        let empty = std::fs::read_dir(&target)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(Error::Usage(format!(
                "{}: the folder exists and is not empty; choose a new folder",
                out.display()
            )));
        }
    }
    Ok(())
}

/// `quantization_config` for an output whose quantized weights are `out`
/// (`None`: plain floats of `dtype`, config without quantization).
pub fn output_config(base: &Value, out: Option<&OutStorage>, plain: Option<Dtype>) -> Value {
    let mut c = base.clone();
    let obj = c.as_object_mut().expect("checked on open");
    if let Some(d) = plain {
        obj.remove("quantization_config");
        // mlx-lm's own key.
        obj.remove("quantization");
        obj.insert("dtype".into(), json!(torch_name(d)));
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), json!(torch_name(d)));
        }
        return c;
    }
    let Some(out) = out else { return c };
    let qc = obj
        .entry("quantization_config")
        .or_insert_with(|| json!({"quant_method": "bitsandbytes"}));
    if !qc.is_object() {
        *qc = json!({"quant_method": "bitsandbytes"});
    }
    let q = qc.as_object_mut().expect("object");
    let four = matches!(out, OutStorage::FourBit { .. });
    for (k, v) in [
        ("load_in_4bit", four),
        ("_load_in_4bit", four),
        ("load_in_8bit", !four),
        ("_load_in_8bit", !four),
    ] {
        q.insert(k.into(), json!(v));
    }
    q.insert("quant_method".into(), json!("bitsandbytes"));
    if let OutStorage::FourBit {
        kind,
        double_quant,
        dtype,
        ..
    } = out
    {
        q.insert("bnb_4bit_quant_type".into(), json!(kind.name()));
        q.insert("bnb_4bit_use_double_quant".into(), json!(double_quant));
        q.insert("bnb_4bit_quant_storage".into(), json!("uint8"));
        q.entry("bnb_4bit_compute_dtype")
            .or_insert_with(|| json!(torch_name(*dtype)));
    }
    c
}

/// Write the model, its weights' row chunks run by `runner` (the engine's
/// scheduler, `engine::bnb::write_model`): one output shard per input shard
/// (same file names, an index when the input had one), `config`, and every
/// other regular file of the input folder copied. The folder appears at
/// `out_dir` only when complete.
pub fn write_model_with(
    model: &BnbModel,
    jobs: &[WeightJob<'_>],
    config: &Value,
    out_dir: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
) -> Result<Vec<WeightOutcome>> {
    validate(model, jobs)?;
    let tmp = TempDir::create(out_dir)?;
    let shard_names: Vec<String> = model
        .st
        .shard_paths()
        .iter()
        .map(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model.safetensors".into())
        })
        .collect();
    let mut outcomes: Vec<Option<WeightOutcome>> = jobs.iter().map(|_| None).collect();
    let mut weight_map: BTreeMap<String, String> = BTreeMap::new();
    let mut total_size = 0u64;
    for (shard, shard_name) in shard_names.iter().enumerate() {
        let mine: Vec<usize> = (0..jobs.len())
            .filter(|&j| model.weights[jobs[j].weight].shard == shard)
            .collect();
        // Pass 1: the nested offsets, which the header (quant state) needs,
        // and the FP8 block maxima.
        let offsets = prepasses(model, jobs, &mine, out_dir, opts, runner)?;
        let mut specs = Vec::new();
        let mut per_job = Vec::with_capacity(mine.len());
        for (&j, off) in mine.iter().zip(&offsets) {
            let job = &jobs[j];
            let w = &model.weights[job.weight];
            let t = out_tensors(model, w, &job.out, is_copy(w, job), off.nested_offset);
            let bytes: u64 = t
                .iter()
                .map(|(_, d, s)| (d.bitsize() / 8 * s.iter().product::<usize>()) as u64)
                .sum();
            for (name, _, _) in &t {
                weight_map.insert(name.clone(), shard_name.clone());
            }
            total_size += bytes;
            per_job.push(bytes);
            specs.extend(t);
        }
        let path = tmp.tmp.join(shard_name);
        let mut writer = SafetensorsWriter::create(&path, &specs, model.st.metadata().clone())?;
        runner.expect(writer.remaining());
        for ((&j, off), bytes_out) in mine.iter().zip(&offsets).zip(per_job) {
            let job = &jobs[j];
            let written = write_weight(model, job, off, &mut writer, out_dir, opts, runner)?;
            outcomes[j] = Some(weight_outcome(model, job, bytes_out, written));
        }
        writer.finish()?;
    }
    if model.sharded {
        let index = json!({"metadata": {"total_size": total_size}, "weight_map": weight_map});
        let p = tmp.tmp.join(INDEX_FILE);
        let text = serde_json::to_string_pretty(&index).expect("json") + "\n";
        std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
    }
    write_config(model, config, &tmp.tmp)?;
    copy_other_files(model, &tmp.tmp)?;
    tmp.commit()?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every job written"))
        .collect())
}

/// The first pass of every job in `mine` that needs one: the nested
/// (double-quant) absmax offset, the FP8 block maxima.
fn prepasses(
    model: &BnbModel,
    jobs: &[WeightJob<'_>],
    mine: &[usize],
    out_dir: &Path,
    opts: &WriteOptions,
    runner: &impl ChunkRunner,
) -> Result<Vec<Prepass>> {
    let mut passes = Vec::with_capacity(mine.len());
    for &j in mine {
        let job = &jobs[j];
        let w = &model.weights[job.weight];
        let mut pre = Prepass::default();
        if !is_copy(w, job) {
            match job.out {
                OutStorage::FourBit {
                    double_quant: true, ..
                } => pre.nested_offset = Some(nested_offset_of(model, job, out_dir, opts, runner)?),
                OutStorage::Fp8 { .. } if !opts.keep_fp8_scales => {
                    let maxima = fp8_maxima_of(model, job, out_dir, opts, runner)?;
                    pre.fp8_choice = fp8_choice_of(model, job, &maxima, out_dir, opts, runner)?;
                    pre.fp8 = Some(maxima);
                }
                _ => {}
            }
        }
        passes.push(pre);
    }
    Ok(passes)
}

/// What writing `job` did (`written`: from [`write_weight`]).
fn weight_outcome(
    model: &BnbModel,
    job: &WeightJob<'_>,
    bytes_out: u64,
    written: Written,
) -> WeightOutcome {
    let w = &model.weights[job.weight];
    WeightOutcome {
        name: w.name.clone(),
        type_in: w.storage.label(),
        type_out: if is_copy(w, job) {
            w.storage.label()
        } else {
            job.out.label()
        },
        n_elements: w.n_elements() as u64,
        bytes_in: model.stored_bytes(job.weight),
        bytes_out,
        copied: is_copy(w, job),
        has_residual: job.residual.is_some(),
        stats: if is_copy(w, job) { None } else { written.stats },
        search: written.search,
    }
}

/// `config` into `dir`: the input's own bytes when unchanged, so that an
/// untouched config stays byte-identical.
fn write_config(model: &BnbModel, config: &Value, dir: &Path) -> Result<()> {
    let cfg_path = dir.join(CONFIG_FILE);
    let text = if config == &model.config {
        std::fs::read(model.dir.join(CONFIG_FILE)).map_err(|e| Error::io(&model.dir, e))?
    } else {
        (serde_json::to_string_pretty(config).expect("json") + "\n").into_bytes()
    };
    std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))
}

/// Copy the folder's regular files that are not weights, index or config
/// (tokenizer, generation config, …).
fn copy_other_files(model: &BnbModel, to: &Path) -> Result<()> {
    let shards: HashSet<PathBuf> = model
        .st
        .shard_paths()
        .iter()
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    let entries = std::fs::read_dir(&model.dir).map_err(|e| Error::io(&model.dir, e))?;
    for e in entries {
        let e = e.map_err(|e| Error::io(&model.dir, e))?;
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = !p.is_file()
            || name == CONFIG_FILE
            || name.ends_with(".safetensors")
            || name.ends_with(".safetensors.index.json")
            || p.canonicalize().is_ok_and(|c| shards.contains(&c));
        if skip {
            continue;
        }
        let dst = to.join(&name);
        std::fs::copy(&p, &dst).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_repr_follows_python() {
        for (x, s) in [
            (0.05211806297302246, "0.05211806297302246"),
            (1e-05, "1e-05"),
            (1.5e-07, "1.5e-07"),
            (0.0001, "0.0001"),
            (2.0, "2.0"),
            (-3.25, "-3.25"),
            (1e16, "1e+16"),
            (123456.0, "123456.0"),
            (0.0, "0.0"),
        ] {
            assert_eq!(python_float_repr(x), s, "{x}");
        }
    }

    #[test]
    fn chunks_never_split_blocks() {
        for (row_len, align) in [(256, 64), (384, 16384), (11008, 16384), (7, 64), (1, 32)] {
            let r = rows_per_chunk(row_len, align, 1000);
            assert_eq!(r * row_len % align, 0, "{row_len} {align}");
        }
    }
}

/// What a `W.quant_state.bitsandbytes__{nf4,fp4}` blob declares.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantStateInfo {
    /// NF4 or FP4.
    pub kind: FourBit,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// The module's dtype (what dequantization returns).
    pub dtype: Dtype,
    /// The weight's shape.
    pub shape: Vec<usize>,
    /// Number of elements (checked product of `shape`).
    pub n: usize,
    /// With double quantization: the absmax offset.
    pub nested_offset: Option<f32>,
}

/// Parse and check a quant-state blob; `suffix` is the `nf4`/`fp4` of its
/// tensor name. Errors are messages for the weight's name.
pub fn parse_quant_state(suffix: &str, blob: &[u8]) -> std::result::Result<QuantStateInfo, String> {
    let qs: Value =
        serde_json::from_slice(blob).map_err(|e| format!("quant state is not JSON: {e}"))?;
    let kind = FourBit::from_name(suffix)
        .filter(|k| qs["quant_type"] == k.name())
        .ok_or_else(|| {
            format!(
                "quant state '{suffix}' with quant_type {} is not nf4 or fp4",
                qs["quant_type"]
            )
        })?;
    let blocksize = qs["blocksize"].as_u64().unwrap_or(0) as usize;
    if !BLOCKSIZES_4BIT.contains(&blocksize) {
        return Err(format!(
            "blocksize {} is not one bitsandbytes writes",
            qs["blocksize"]
        ));
    }
    let dtype = qs["dtype"]
        .as_str()
        .and_then(dtype_from_torch)
        .ok_or_else(|| format!("unsupported dtype {} in quant state", qs["dtype"]))?;
    let shape: Vec<usize> = qs["shape"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect()
        })
        .ok_or_else(|| format!("quant state shape {} is not a list", qs["shape"]))?;
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| "shape overflows".to_string())?;
    let nested_offset = if qs.get("nested_offset").is_some() {
        if qs["nested_blocksize"].as_u64() != Some(NESTED_BLOCKSIZE as u64) {
            return Err(format!(
                "nested_blocksize {} is not {NESTED_BLOCKSIZE}",
                qs["nested_blocksize"]
            ));
        }
        let offset = qs["nested_offset"]
            .as_f64()
            .map(|v| v as f32)
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("nested_offset {} is not finite", qs["nested_offset"]))?;
        Some(offset)
    } else {
        None
    };
    Ok(QuantStateInfo {
        kind,
        blocksize,
        dtype,
        shape,
        n,
        nested_offset,
    })
}
