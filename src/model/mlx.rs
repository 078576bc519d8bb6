//! mlx-lm checkpoints quantized in MLX's affine mode: how a weight and its
//! scales and biases are laid out in the folder, read as rows of f32. The
//! numbers are `qresidual_quant::mlx`'s.
//!
//! Layout (fixtures/tiny_mlx, written by mlx-lm's `quantize_model` and
//! `save_model`): `M.weight` U32 `[out, in·bits/32]`, `M.scales` and
//! `M.biases` `[out, in/group_size]` in the model dtype; `config.json`
//! `"quantization": {"group_size", "bits", "mode": "affine", "<module
//! path>": {"group_size", "bits"} …}` (per-module overrides).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, StTensor};
use crate::model::fp8::{dtype_of, precision_of, scale_values};
use crate::model::rows::{finite_rows, RowSource};
use crate::quant::mlx::{self, Precision, BITS, GROUP_SIZES};
use crate::{Error, Result};

/// Whether `config` declares MLX quantization (`"quantization"` with
/// `group_size` and `bits`) in affine mode; `Err` names another mode.
pub fn mlx_config(config: &Value) -> Option<std::result::Result<(), String>> {
    let q = config.get("quantization").filter(|q| q.is_object())?;
    if q.get("group_size").is_none() || q.get("bits").is_none() {
        return None;
    }
    match q["mode"].as_str().unwrap_or("affine") {
        "affine" => Some(Ok(())),
        m => Some(Err(format!("MLX quantization mode {m}"))),
    }
}

/// How one MLX weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlxLayout {
    /// Bits per code.
    pub bits: u32,
    /// Weights per scale and bias.
    pub group_size: usize,
    /// The dtype of the scales and biases (the model's), which MLX computes
    /// in.
    pub precision: Precision,
}

impl MlxLayout {
    /// A short name for reports: `mlx4`, `mlx8`…
    pub fn label(&self) -> String {
        format!("mlx{}", self.bits)
    }

    /// The dtype scales and biases are stored in.
    pub fn dtype(&self) -> Dtype {
        dtype_of(self.precision)
    }
}

/// The module's `(group_size, bits)`: its override in the config, or the
/// defaults.
fn params(config: &Value, module: &str) -> Option<(u64, u64)> {
    let q = &config["quantization"];
    let o = &q[module];
    let pick = |k: &str| o[k].as_u64().or_else(|| q[k].as_u64());
    Some((pick("group_size")?, pick("bits")?))
}

/// One MLX weight found in a folder.
pub struct MlxParts {
    /// Index of the codes (`M.weight`).
    pub weight: usize,
    /// Index of the biases (`M.biases`).
    pub biases: usize,
    /// The logical shape `[out, in]`.
    pub shape: Vec<usize>,
    /// Bits, group size, dtype.
    pub layout: MlxLayout,
}

/// The MLX weight whose scales `t` are (`M.scales`), checked against its
/// codes, biases and the config; `None` when `t` is no MLX scale tensor.
// Long because it is the list of every check a stored MLX weight must pass
// (codes, scales, biases, their dtypes and shapes, the config's bits and
// group size), each with its own message naming the tensor.
pub fn mlx_weight(
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    t: &StTensor,
    config: &Value,
) -> Result<Option<MlxParts>> {
    let Some(module) = t.name.strip_suffix(".scales") else {
        return Ok(None);
    };
    let path = st.shard_path(t);
    let name = format!("{module}.weight");
    let Some(&main) = index.get(name.as_str()) else {
        return Err(Error::tensor(path, &t.name, format!("'{name}' is missing")));
    };
    let biases_name = format!("{module}.biases");
    let Some(&biases) = index.get(biases_name.as_str()) else {
        return Err(Error::tensor(
            path,
            &name,
            format!("'{biases_name}' is missing (affine mode stores a bias per group)"),
        ));
    };
    let w = &st.tensors()[main];
    let b = &st.tensors()[biases];
    let wpath = st.shard_path(w);
    let precision = precision_of(t.dtype).ok_or_else(|| {
        Error::tensor(
            path,
            &t.name,
            format!("scales must be F32, BF16 or F16, found {:?}", t.dtype),
        )
    })?;
    if b.dtype != t.dtype || b.shape != t.shape {
        return Err(Error::tensor(
            st.shard_path(b),
            &b.name,
            format!(
                "expected {:?} {:?} like its scales, found {:?} {:?}",
                t.dtype, t.shape, b.dtype, b.shape
            ),
        ));
    }
    let (gs, bits) = params(config, module).ok_or_else(|| {
        Error::tensor(
            wpath,
            &name,
            "config.json quantization gives no group_size and bits",
        )
    })?;
    let (gs, bits) = (gs as usize, bits as u32);
    if !GROUP_SIZES.contains(&gs) || !BITS.contains(&bits) {
        return Err(Error::tensor(
            wpath,
            &name,
            format!("group_size {gs}, bits {bits}: MLX's affine mode takes group sizes 32, 64, 128 and 2, 3, 4, 6 or 8 bits"),
        ));
    }
    let (out, groups) = match t.shape.as_slice() {
        [o, g] => (*o, *g),
        s => {
            return Err(Error::tensor(
                path,
                &t.name,
                format!("scales must be 2-D [out, in/group_size], found {s:?}"),
            ))
        }
    };
    let cols = groups * gs;
    let packed_cols = cols * bits as usize / 32;
    if w.dtype != Dtype::U32 || w.shape != [out, packed_cols] {
        return Err(Error::tensor(
            wpath,
            &name,
            format!(
                "{bits}-bit codes of [{out}, {cols}] (scales {:?}, group_size {gs}) must be U32 [{out}, {packed_cols}], found {:?} {:?}",
                t.shape, w.dtype, w.shape
            ),
        ));
    }
    let layout = MlxLayout {
        bits,
        group_size: gs,
        precision,
    };
    Ok(Some(MlxParts {
        weight: main,
        biases,
        shape: vec![out, cols],
        layout,
    }))
}

/// Rows of an MLX weight.
pub struct MlxRows<'a> {
    /// The shard, for errors.
    pub path: &'a Path,
    /// The weight's name.
    pub name: &'a str,
    /// The packed codes.
    pub packed: &'a [u8],
    /// The scales' bytes.
    pub scales: &'a StTensor,
    /// The biases' bytes.
    pub biases: &'a StTensor,
    /// The layout.
    pub layout: MlxLayout,
    /// Columns.
    pub row_len: usize,
    /// Rows.
    pub n_rows: usize,
    /// The mapping.
    pub pages: &'a SafetensorsModel,
}

impl MlxRows<'_> {
    fn groups(&self) -> usize {
        self.row_len / self.layout.group_size
    }

    fn row_bytes(&self) -> usize {
        self.row_len * self.layout.bits as usize / 8
    }
}

impl RowSource for MlxRows<'_> {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n_rows
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len() / self.row_len;
        let (g, rb) = (self.groups(), self.row_bytes());
        let esize = self.scales.dtype.bitsize() / 8;
        let range = |t: &StTensor| {
            let d = self.pages.data(t);
            scale_values(t, &d[start * g * esize..(start + n) * g * esize])
        };
        let (scales, biases) = (range(self.scales), range(self.biases));
        for (i, dst) in out.chunks_exact_mut(self.row_len).enumerate() {
            let r = start + i;
            mlx::dequantize_row(
                &self.packed[r * rb..(r + 1) * rb],
                &scales[i * g..(i + 1) * g],
                &biases[i * g..(i + 1) * g],
                self.layout.bits,
                self.layout.group_size,
                self.layout.precision,
                dst,
            );
        }
        finite_rows((self.path, self.name), start, self.row_len, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        let rb = self.row_bytes();
        self.pages.release(&self.packed[start * rb..end * rb]);
    }
}
