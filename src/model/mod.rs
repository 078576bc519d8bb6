//! Whole models of any supported format as named tensors of f32 rows, and
//! the pairing of two models' tensors, for the commands that read two models
//! (`extract`, `compare`).

pub mod bnb;
pub mod bnb_target;
pub mod fp8;
pub mod gptq;
pub mod hf_names;
pub mod locate;
pub mod mix;
pub mod mlx;
pub mod naming;
pub mod packed;
pub mod rows;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::format::gguf::is_gguf;
use crate::format::gguf::GgufFile;
use crate::format::pages::ReleasePages;
use crate::format::st::SafetensorsModel;
use crate::model::rows::{EncodedRows, PermutedRows, RowSource};
use crate::quant::{codec, GgmlType};
use crate::{Error, Result};
use bnb::BnbModel;
use naming::RowPermutation;

/// A model read for its weights, whatever its format: the one type every
/// command opens its inputs as ([`Model::open`] detects the format).
pub enum Model {
    /// A GGUF file (or split set), any type the codecs decode.
    Gguf(GgufFile),
    /// A Hugging Face safetensors checkpoint (file, folder or shards) in F16/BF16/F32.
    Safetensors(SafetensorsModel),
    /// A Hugging Face folder quantized by bitsandbytes (NF4/FP4/LLM.int8).
    Bitsandbytes(BnbModel),
    /// A Hugging Face folder of FP8 weights with block, channel or tensor
    /// scales (`quant_method: fp8`, compressed-tensors `float-quantized`),
    /// read and written by the same folder code as bitsandbytes.
    Fp8(BnbModel),
    /// An mlx-lm folder quantized by MLX: affine (1/2/3/4/5/6/8-bit codes, a
    /// scale and a bias per group) or mxfp4/mxfp8/nvfp4 (float codes, a
    /// uint8 scale per group), the same folder code again.
    Mlx(BnbModel),
    /// A compressed-tensors `pack-quantized` folder (1- to 8-bit integer
    /// groups, the layout of llm-compressor's GPTQ outputs), read and kept
    /// on the base's own scales.
    Packed(BnbModel),
    /// A GPTQ or AWQ folder in its own layout (`qweight`, `qzeros`,
    /// `scales`, GPTQ's `g_idx`), read and kept on the base's own grid.
    Gptq(BnbModel),
}

impl ReleasePages for Model {
    fn release(&self, bytes: &[u8]) {
        match self {
            Model::Gguf(g) => g.release(bytes),
            Model::Safetensors(s) => s.release(bytes),
            Model::Bitsandbytes(b)
            | Model::Fp8(b)
            | Model::Mlx(b)
            | Model::Packed(b)
            | Model::Gptq(b) => b.safetensors().release(bytes),
        }
    }
}

/// One tensor of a [`Model`] stored as ggml-layout bytes (GGUF tensors,
/// F16/BF16/F32 safetensors): what a residual is made of.
pub struct ModelTensor<'a> {
    /// Name in the model.
    pub name: &'a str,
    /// Encoding of `data`.
    pub ty: GgmlType,
    /// Row-major shape, outermost first.
    pub shape: Vec<u64>,
    /// The bytes.
    pub data: &'a [u8],
}

/// Row geometry of a row-major shape (outermost first).
pub trait Shaped {
    /// The shape, outermost first.
    fn shape(&self) -> &[u64];

    /// Elements per row (innermost dimension).
    fn row_len(&self) -> usize {
        self.shape().last().copied().unwrap_or(1) as usize
    }

    /// Number of rows.
    fn n_rows(&self) -> usize {
        (self.n_elements() / self.shape().last().copied().unwrap_or(1).max(1)) as usize
    }

    /// Number of elements.
    fn n_elements(&self) -> u64 {
        self.shape().iter().product()
    }
}

impl Shaped for ModelTensor<'_> {
    fn shape(&self) -> &[u64] {
        &self.shape
    }
}

/// One weight of a [`Model`] in any encoding: what `extract`, `compare` and
/// the base fingerprint read, through [`Model::weight_rows`].
#[derive(Debug, Clone)]
pub struct Weight<'a> {
    /// Name in the model.
    pub name: &'a str,
    /// Row-major shape, outermost first.
    pub shape: Vec<u64>,
    /// The encoding's name for reports (`q4_K`, `F16`, `nf4`, `int8`…).
    pub type_name: String,
    /// The ggml type whose rounding error is nearest to the encoding's:
    /// the type itself for ggml-layout tensors; Q4_0 for bitsandbytes 4-bit
    /// (4-bit codes, one scale per 64 weights), Q8_0 for LLM.int8, Q4_0 for
    /// FP8 (3 mantissa bits: a relative error up to 1/16, coarser than
    /// Q8_0's grid). Sizes the base guard's tolerance.
    pub error_type: GgmlType,
    index: usize,
}

impl Shaped for Weight<'_> {
    fn shape(&self) -> &[u64] {
        &self.shape
    }
}

/// The one place formats are told apart: what a path holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A GGUF file (by its magic bytes).
    Gguf,
    /// A folder whose config.json declares bitsandbytes quantization.
    Bitsandbytes,
    /// A folder whose config.json declares FP8 quantization (`quant_method:
    /// fp8`, or compressed-tensors with `format: float-quantized`).
    Fp8,
    /// A folder whose config.json declares MLX quantization (affine or a float mode)
    /// (`"quantization": {"group_size", "bits"}`).
    Mlx,
    /// A folder whose config.json declares compressed-tensors
    /// `pack-quantized`.
    Packed,
    /// A folder whose config.json declares `quant_method` `gptq` or `awq`.
    Gptq,
    /// A .safetensors file, an index, or a folder holding either.
    Safetensors,
}

impl Format {
    /// Detect the format of `path`, or say what was looked for.
    pub fn detect(path: &Path) -> Result<Format> {
        if is_gguf(path) {
            return Ok(Format::Gguf);
        }
        match bnb::folder_quantization(path) {
            Some(Ok(bnb::Method::Bitsandbytes)) => return Ok(Format::Bitsandbytes),
            Some(Ok(bnb::Method::Fp8)) => return Ok(Format::Fp8),
            Some(Ok(bnb::Method::Mlx)) => return Ok(Format::Mlx),
            Some(Ok(bnb::Method::Packed)) => return Ok(Format::Packed),
            Some(Ok(bnb::Method::Gptq)) => return Ok(Format::Gptq),
            Some(Err(what)) => {
                return Err(Error::format(
                    path.join(bnb::CONFIG_FILE),
                    format!("quantization_config declares {what}, which qresidual does not read (it reads bitsandbytes, quant_method fp8, compressed-tensors float-quantized and pack-quantized, MLX affine, mxfp4, mxfp8 and nvfp4, GPTQ and AWQ GEMM)"),
                ))
            }
            None => {}
        }
        if SafetensorsModel::is_safetensors(path) {
            return Ok(Format::Safetensors);
        }
        let what = if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        } else if path.is_dir() {
            "a folder without model.safetensors, model.safetensors.index.json or a bitsandbytes/FP8 config.json"
        } else {
            "neither a GGUF file (no GGUF magic) nor a .safetensors file"
        };
        Err(Error::format(
            path,
            format!("not a model qresidual can read: {what} (it reads GGUF files, safetensors files or folders, and bitsandbytes and FP8 folders)"),
        ))
    }
}

/// The name of a tensor that shows a bare safetensors file is a
/// bitsandbytes checkpoint (NF4/FP4/int8 weights stored as U8/I8 with
/// `absmax`/`quant_map`/`SCB` companions), read without its folder's
/// config.json.
pub fn bitsandbytes_marker(model: &SafetensorsModel) -> Option<&str> {
    model.tensors().iter().map(|t| t.name.as_str()).find(|n| {
        n.ends_with(".absmax")
            || n.ends_with(".quant_map")
            || n.ends_with(".SCB")
            || n.contains(".quant_state.bitsandbytes__")
    })
}

impl Model {
    /// Open a GGUF file, a safetensors checkpoint or a bitsandbytes folder.
    pub fn open(path: &Path) -> Result<Self> {
        match Format::detect(path)? {
            Format::Gguf => Ok(Model::Gguf(GgufFile::open(path)?)),
            Format::Bitsandbytes => Ok(Model::Bitsandbytes(BnbModel::open(path)?)),
            Format::Fp8 => Ok(Model::Fp8(BnbModel::open(path)?)),
            Format::Mlx => Ok(Model::Mlx(BnbModel::open(path)?)),
            Format::Packed => Ok(Model::Packed(BnbModel::open(path)?)),
            Format::Gptq => Ok(Model::Gptq(BnbModel::open(path)?)),
            Format::Safetensors => {
                let st = SafetensorsModel::open(path)?;
                if let Some(marker) = bitsandbytes_marker(&st) {
                    return Err(Error::Usage(format!(
                        "{}: bitsandbytes tensors ({marker}) without their folder's config.json; open the model folder instead",
                        path.display()
                    )));
                }
                Ok(Model::Safetensors(st))
            }
        }
    }

    /// The format of the model.
    pub fn format(&self) -> Format {
        match self {
            Model::Gguf(_) => Format::Gguf,
            Model::Safetensors(_) => Format::Safetensors,
            Model::Bitsandbytes(_) => Format::Bitsandbytes,
            Model::Fp8(_) => Format::Fp8,
            Model::Mlx(_) => Format::Mlx,
            Model::Packed(_) => Format::Packed,
            Model::Gptq(_) => Format::Gptq,
        }
    }

    /// The path given by the user.
    pub fn path(&self) -> &Path {
        match self {
            Model::Gguf(g) => g.path(),
            Model::Safetensors(s) => s.path(),
            Model::Bitsandbytes(b)
            | Model::Fp8(b)
            | Model::Mlx(b)
            | Model::Packed(b)
            | Model::Gptq(b) => b.path(),
        }
    }

    /// Every file behind the model.
    pub fn paths(&self) -> Vec<PathBuf> {
        match self {
            Model::Gguf(g) => g.paths(),
            Model::Safetensors(s) => s.shard_paths().to_vec(),
            Model::Bitsandbytes(b)
            | Model::Fp8(b)
            | Model::Mlx(b)
            | Model::Packed(b)
            | Model::Gptq(b) => b.paths(),
        }
    }

    /// The Hugging Face quantized folder (bitsandbytes or FP8), if this is one.
    pub fn quantized_folder(&self) -> Option<&BnbModel> {
        match self {
            Model::Bitsandbytes(b)
            | Model::Fp8(b)
            | Model::Mlx(b)
            | Model::Packed(b)
            | Model::Gptq(b) => Some(b),
            _ => None,
        }
    }

    /// The GGUF file, if this is one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        match self {
            Model::Gguf(g) => Some(g),
            _ => None,
        }
    }

    /// All tensors as ggml-layout bytes (what a residual must be); one whose
    /// encoding cannot be decoded is an error naming it.
    pub fn tensors(&self) -> Result<Vec<ModelTensor<'_>>> {
        let readable = |path: &Path, name: &str, ty: Option<GgmlType>, what: String| {
            ty.filter(|&t| codec(t).is_some() && !t.is_integer())
                .ok_or_else(|| Error::tensor(path, name, format!("{what} cannot be decoded")))
        };
        match self {
            Model::Gguf(g) => g
                .tensors()
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Ok(ModelTensor {
                        name: &t.name,
                        ty: readable(g.path(), &t.name, Some(t.ty), format!("type {}", t.ty))?,
                        shape: t.shape(),
                        data: g.tensor_data(i),
                    })
                })
                .collect(),
            Model::Safetensors(s) => s
                .tensors()
                .iter()
                .map(|t| {
                    Ok(ModelTensor {
                        name: &t.name,
                        ty: readable(
                            s.path(),
                            &t.name,
                            t.ggml_type(),
                            format!("dtype {:?}", t.dtype),
                        )?,
                        shape: t.shape.iter().map(|&d| d as u64).collect(),
                        data: s.data(t),
                    })
                })
                .collect(),
            Model::Bitsandbytes(b) | Model::Fp8(b) | Model::Mlx(b) | Model::Packed(b) | Model::Gptq(b) => Err(Error::Usage(format!(
                "{}: a {} folder cannot be a residual (residuals are F16/BF16/F32 safetensors or GGUF)",
                b.path().display(),
                b.method().name()
            ))),
        }
    }

    /// The rows of `t`, reordered by `permutation`.
    pub fn rows<'a>(&'a self, t: &ModelTensor<'a>, permutation: RowPermutation) -> EncodedRows<'a> {
        EncodedRows {
            path: self.path(),
            name: t.name,
            data: t.data,
            ty: t.ty,
            row_len: t.row_len(),
            n_rows: t.n_rows(),
            permutation,
            pages: Some(self),
        }
    }

    /// Every weight that holds numbers, in any encoding; one that cannot be
    /// decoded is an error naming it.
    pub fn weights(&self) -> Result<Vec<Weight<'_>>> {
        let Some(b) = self.quantized_folder() else {
            return Ok(self
                .tensors()?
                .into_iter()
                .enumerate()
                .map(|(index, t)| Weight {
                    name: t.name,
                    shape: t.shape,
                    type_name: t.ty.name().to_string(),
                    error_type: t.ty,
                    index,
                })
                .collect());
        };
        let mut out = Vec::new();
        for (index, w) in b.weights().iter().enumerate() {
            let error_type = match &w.storage {
                bnb::Storage::Plain(d) => match bnb::float_ggml(*d) {
                    Some(t) => t,
                    // Integer buffers hold no weights.
                    None => continue,
                },
                bnb::Storage::FourBit { .. } => GgmlType::Q4_0,
                bnb::Storage::Int8 => GgmlType::Q8_0,
                bnb::Storage::Fp8(_) => GgmlType::Q4_0,
                // A scale and a bias per group: the grid of Q4_1/Q5_1, Q8_0 at 8 bits.
                bnb::Storage::Mlx(l) if l.bits >= 8 => GgmlType::Q8_0,
                bnb::Storage::Mlx(l) if l.bits >= 5 => GgmlType::Q5_1,
                bnb::Storage::Mlx(_) => GgmlType::Q4_1,
                bnb::Storage::Packed(l) if l.bits >= 8 => GgmlType::Q8_0,
                bnb::Storage::Packed(_) => GgmlType::Q4_0,
                // A scale and a zero point per group: the grid of Q4_1, Q8_0 at 8 bits.
                bnb::Storage::Gptq(l) if l.bits >= 8 => GgmlType::Q8_0,
                bnb::Storage::Gptq(_) => GgmlType::Q4_1,
            };
            out.push(Weight {
                name: &w.name,
                shape: w.shape.iter().map(|&d| d as u64).collect(),
                type_name: w.storage.label(),
                error_type,
                index,
            });
        }
        Ok(out)
    }

    /// The f32 rows of weight `w`, reordered by `permutation`.
    pub fn weight_rows<'a>(
        &'a self,
        w: &Weight<'a>,
        permutation: RowPermutation,
    ) -> Result<Box<dyn RowSource + 'a>> {
        if let Some(b) = self.quantized_folder() {
            let rows = b.rows(w.index).ok_or_else(|| {
                Error::tensor(b.path(), w.name, "holds no weights that can be decoded")
            })?;
            return Ok(match permutation {
                RowPermutation::Identity => rows,
                p => Box::new(PermutedRows {
                    rows,
                    permutation: p,
                }),
            });
        }
        let t = ModelTensor {
            name: w.name,
            ty: w.error_type,
            shape: w.shape.clone(),
            data: match self {
                Model::Gguf(g) => g.tensor_data(w.index),
                Model::Safetensors(s) => s.data(&s.tensors()[w.index]),
                Model::Bitsandbytes(_)
                | Model::Fp8(_)
                | Model::Mlx(_)
                | Model::Packed(_)
                | Model::Gptq(_) => {
                    unreachable!("handled above")
                }
            },
        };
        Ok(Box::new(self.rows(&t, permutation)))
    }
}

/// What llama.cpp's converter adds to the values of HF tensor `hf_name` of
/// an `arch` model: Gemma, Gemma 2 and Gemma 3 store RMSNorm weights as
/// `w + 1` (`conversion/gemma.py`); everything else is stored as is.
pub fn gguf_value_shift(arch: &str, hf_name: &str) -> f32 {
    if matches!(arch, "gemma" | "gemma2" | "gemma3") && hf_name.ends_with("norm.weight") {
        1.0
    } else {
        0.0
    }
}

/// Two tensors that hold the same weights in two models.
#[derive(Debug, Clone)]
pub struct TensorPair {
    /// The name used for the pair (the GGUF name when either side is GGUF).
    pub name: String,
    /// Index into the first model's tensors.
    pub a: usize,
    /// Index into the second model's tensors.
    pub b: usize,
    /// Row order of the first model's tensor into the pair's layout.
    pub perm_a: RowPermutation,
    /// Row order of the second model's tensor into the pair's layout.
    pub perm_b: RowPermutation,
    /// Added to the first model's values to put them in the pair's convention.
    pub shift_a: f32,
    /// Added to the second model's values.
    pub shift_b: f32,
}

/// How the tensors of two models correspond.
#[derive(Debug, Default)]
pub struct Pairing {
    /// Tensors found in both with the same shape, in the first model's order.
    pub pairs: Vec<TensorPair>,
    /// Names only the first model has (or that could not be mapped).
    pub only_a: Vec<String>,
    /// Names only the second model has.
    pub only_b: Vec<String>,
    /// Tensors in both whose shapes differ, described.
    pub shape_differs: Vec<String>,
    /// Whether the pair names are GGUF names (either model is GGUF).
    pub gguf_names: bool,
}

fn meta_u64(g: &GgufFile, key: &str) -> Option<u64> {
    g.get(key).and_then(|v| v.as_u64())
}

/// Where a safetensors tensor name lands in a GGUF model: the GGUF name and
/// the converter's row order.
struct GgufView<'g> {
    gguf: &'g GgufFile,
    arch: String,
    n_head: usize,
    n_head_kv: usize,
}

impl<'g> GgufView<'g> {
    fn new(gguf: &'g GgufFile) -> Self {
        let arch = gguf.architecture().unwrap_or("").to_string();
        let n_head = meta_u64(gguf, &format!("{arch}.attention.head_count")).unwrap_or(0) as usize;
        let n_head_kv = meta_u64(gguf, &format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        GgufView {
            gguf,
            arch,
            n_head,
            n_head_kv,
        }
    }

    fn map(&self, name: &str) -> Option<(String, RowPermutation, f32)> {
        if self.gguf.tensor_index(name).is_some() {
            return Some((name.to_string(), RowPermutation::Identity, 0.0));
        }
        let g = naming::hf_to_gguf(&self.arch, name)?;
        let p = naming::row_permutation(&self.arch, &g, self.n_head, self.n_head_kv);
        Some((g, p, gguf_value_shift(&self.arch, name)))
    }
}

/// Pair the tensors of `a` and `b`: by name when both have the same format,
/// through [`naming`] (with llama's q/k row order) when one is GGUF and the
/// other a Hugging Face checkpoint.
pub fn pair_models(a: &Model, at: &[Weight<'_>], b: &Model, bt: &[Weight<'_>]) -> Pairing {
    // (pair name, permutation into the pair's layout) per tensor of each side.
    let keyed = |model: &Model, other: &Model, ts: &[Weight<'_>]| {
        let view = match (model, other) {
            (
                Model::Safetensors(_)
                | Model::Bitsandbytes(_)
                | Model::Fp8(_)
                | Model::Mlx(_)
                | Model::Packed(_)
                | Model::Gptq(_),
                Model::Gguf(g),
            ) => Some(GgufView::new(g)),
            _ => None,
        };
        ts.iter()
            .map(|t| match &view {
                Some(v) => v.map(t.name),
                None => Some((t.name.to_string(), RowPermutation::Identity, 0.0)),
            })
            .collect::<Vec<_>>()
    };
    let ka = keyed(a, b, at);
    let kb = keyed(b, a, bt);
    let mut m = Pairing {
        gguf_names: a.gguf().is_some() || b.gguf().is_some(),
        ..Default::default()
    };
    let by_name: HashMap<&str, usize> = kb
        .iter()
        .enumerate()
        .filter_map(|(i, k)| k.as_ref().map(|(n, _, _)| (n.as_str(), i)))
        .collect();
    let mut used = vec![false; bt.len()];
    for (i, k) in ka.iter().enumerate() {
        let Some((name, perm_a, shift_a)) = k else {
            m.only_a.push(format!("{} (no name mapping)", at[i].name));
            continue;
        };
        let Some(&j) = by_name.get(name.as_str()) else {
            m.only_a.push(at[i].name.to_string());
            continue;
        };
        used[j] = true;
        if at[i].shape != bt[j].shape {
            m.shape_differs
                .push(format!("{name}: {:?} vs {:?}", at[i].shape, bt[j].shape));
            continue;
        }
        let (_, perm_b, shift_b) = *kb[j].as_ref().expect("indexed");
        if !perm_a.fits(at[i].n_rows()) || !perm_b.fits(bt[j].n_rows()) {
            m.shape_differs.push(format!(
                "{name}: {} rows do not split into the model's attention heads",
                at[i].n_rows()
            ));
            continue;
        }
        m.pairs.push(TensorPair {
            name: name.clone(),
            a: i,
            b: j,
            perm_a: *perm_a,
            perm_b,
            shift_a: *shift_a,
            shift_b,
        });
    }
    for (j, u) in used.iter().enumerate() {
        if !u {
            m.only_b.push(bt[j].name.to_string());
        }
    }
    m
}

/// A list for messages: the first dozen names and how many more.
pub fn list(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" … and {} more", names.len() - SHOWN));
    }
    s
}

/// Decode rows `first..first + n` of `rows` into a new buffer, add `shift`
/// (see [`gguf_value_shift`]), and refuse NaN and infinity (naming the row
/// and column).
pub fn decode_finite(
    rows: &dyn RowSource,
    origin: (&Path, &str),
    shift: f32,
    first: usize,
    n: usize,
) -> Result<Vec<f32>> {
    let row_len = rows.row_len();
    let mut out = vec![0f32; n * row_len];
    rows.decode(first, &mut out)?;
    if shift != 0.0 {
        out.iter_mut().for_each(|v| *v += shift);
    }
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(Error::tensor(
            origin.0,
            origin.1,
            format!(
                "holds {} (row {}, column {})",
                out[i],
                first + i / row_len.max(1),
                i % row_len.max(1)
            ),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_gemma_norms_are_shifted() {
        assert_eq!(
            gguf_value_shift("gemma3", "model.layers.0.input_layernorm.weight"),
            1.0
        );
        assert_eq!(gguf_value_shift("gemma2", "model.norm.weight"), 1.0);
        assert_eq!(
            gguf_value_shift("gemma", "model.layers.0.mlp.up_proj.weight"),
            0.0
        );
        assert_eq!(gguf_value_shift("llama", "model.norm.weight"), 0.0);
    }
}
