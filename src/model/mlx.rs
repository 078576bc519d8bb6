//! mlx-lm checkpoints quantized by MLX: how a weight and its scales (and,
//! in affine mode, biases) are laid out in the folder, read as rows of f32.
//! The numbers are `qresidual_quant::mlx`'s (affine) and `mlx::fp`'s
//! (`mxfp4`, `mxfp8`, `nvfp4`).
//!
//! Layout (fixtures/tiny_mlx, written by mlx-lm's `quantize_model` and
//! `save_model`): `M.weight` U32 `[out, in·bits/32]`, `M.scales` and
//! `M.biases` `[out, in/group_size]` in the model dtype; `config.json`
//! `"quantization": {"group_size", "bits", "mode": "affine", "<module
//! path>": {"group_size", "bits"} …}` (per-module overrides). The float
//! modes store no biases and uint8 scales (`"mode": "mxfp4"` …, group 32,
//! or 16 for nvfp4); MLX computes them in the model's dtype (config.json
//! `torch_dtype`/`dtype`, bfloat16 when absent: `mx.dequantize`'s default).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, StTensor};
use crate::model::fp8::{dtype_of, precision_of, scale_values};
use crate::model::rows::{finite_rows, RowSource};
use crate::quant::mlx::fp::{self as mlx_fp, FpMode};
use crate::quant::mlx::{self, Precision, BITS, GROUP_SIZES};
use crate::{Error, Result};

/// Whether `config` declares MLX quantization (`"quantization"` with
/// `group_size` and `bits`) in a mode this module reads (affine, mxfp4,
/// mxfp8, nvfp4); `Err` names another mode.
pub fn mlx_config(config: &Value) -> Option<std::result::Result<(), String>> {
    let q = config.get("quantization").filter(|q| q.is_object())?;
    if q.get("group_size").is_none() || q.get("bits").is_none() {
        return None;
    }
    match q["mode"].as_str().unwrap_or("affine") {
        "affine" => Some(Ok(())),
        m if FpMode::from_name(m).is_some() => Some(Ok(())),
        m => Some(Err(format!("MLX quantization mode {m}"))),
    }
}

/// The dtype MLX computes a float mode in: the model's (config.json
/// `torch_dtype` or `dtype`), bfloat16 (`mx.dequantize`'s default) when
/// it names none.
fn model_precision(config: &Value) -> Precision {
    let name = config["torch_dtype"].as_str().or(config["dtype"].as_str());
    match name {
        Some("float32") => Precision::F32,
        Some("float16") => Precision::F16,
        _ => Precision::Bf16,
    }
}

/// How one MLX weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MlxLayout {
    /// Bits per code.
    pub bits: u32,
    /// Weights per scale and bias.
    pub group_size: usize,
    /// The dtype MLX computes in: the scales' and biases' (affine), the
    /// model's (float modes).
    pub precision: Precision,
    /// The float mode (`None`: affine).
    pub fp: Option<FpMode>,
}

impl MlxLayout {
    /// A short name for reports: `mlx4`, `mlx8`…, or the float mode's
    /// (`mxfp4`, `mxfp8`, `nvfp4`).
    pub fn label(&self) -> String {
        match self.fp {
            Some(m) => m.name().to_string(),
            None => format!("mlx{}", self.bits),
        }
    }

    /// The dtype MLX computes in (affine: the scales' and biases').
    pub fn dtype(&self) -> Dtype {
        dtype_of(self.precision)
    }
}

/// The module's `(group_size, bits, mode)`: its override in the config,
/// or the model's. mlx-lm passes an override to `to_quantized` as it is,
/// so what it leaves out takes `to_quantized`'s defaults, not the model's:
/// mode `affine` (the 8-bit affine router of a model quantized to mxfp4
/// says only `{"group_size": 64, "bits": 8}`), and the mode's own group
/// size and bits.
fn params<'c>(config: &'c Value, module: &str) -> Option<(u64, u64, &'c str)> {
    let q = &config["quantization"];
    let o = &q[module];
    let from = if o.is_object() { o } else { q };
    let mode = from["mode"].as_str().unwrap_or("affine");
    let (gs, bits) = match mode {
        "mxfp4" => (32, 4),
        "mxfp8" => (32, 8),
        "nvfp4" => (16, 4),
        _ => (64, 4),
    };
    let pick = |k: &str, default: u64| match &from[k] {
        Value::Null => Some(default),
        v => v.as_u64(),
    };
    Some((pick("group_size", gs)?, pick("bits", bits)?, mode))
}

/// One MLX weight found in a folder.
pub struct MlxParts {
    /// Index of the codes (`M.weight`).
    pub weight: usize,
    /// Index of the biases (`M.biases`; affine mode only).
    pub biases: Option<usize>,
    /// The logical shape `[out, in]` (`[experts, out, in]` when stacked).
    pub shape: Vec<usize>,
    /// Bits, group size, dtype.
    pub layout: MlxLayout,
}

/// The MLX weight whose scales `t` are (`M.scales`), checked against its
/// codes, biases and the config; `None` when `t` is no MLX scale tensor.
// Long because it is the list of every check a stored MLX weight must pass
// (codes, scales, biases, their dtypes and shapes, the config's mode, bits
// and group size), each with its own message naming the tensor.
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
    let w = &st.tensors()[main];
    let wpath = st.shard_path(w);
    let (gs, bits, mode) = params(config, module).ok_or_else(|| {
        Error::tensor(
            wpath,
            &name,
            "config.json quantization gives no group_size and bits",
        )
    })?;
    let (gs, bits) = (gs as usize, bits as u32);
    let fp = match mode {
        "affine" => None,
        m => Some(FpMode::from_name(m).ok_or_else(|| {
            Error::tensor(
                wpath,
                &name,
                format!(
                    "MLX quantization mode {m} is not read (affine, mxfp4, mxfp8 and nvfp4 are)"
                ),
            )
        })?),
    };
    let biases_name = format!("{module}.biases");
    let biases = index.get(biases_name.as_str()).copied();
    let precision = match fp {
        None => affine_checks(st, t, &name, biases, (gs, bits))?,
        Some(m) => {
            float_checks(st, t, &name, biases, (gs, bits), m, index)?;
            model_precision(config)
        }
    };
    // [out, groups], or [experts, out, groups] for mlx-lm's stacked
    // mixture-of-experts weights (SwitchLinear): rows are rows either way.
    let Some((&groups, lead)) = t
        .shape
        .split_last()
        .filter(|(_, l)| matches!(l.len(), 1 | 2))
    else {
        return Err(Error::tensor(
            path,
            &t.name,
            format!(
                "scales must be [out, in/group_size] or [experts, out, in/group_size], found {:?}",
                t.shape
            ),
        ));
    };
    let cols = groups * gs;
    let packed_cols = cols * bits as usize / 32;
    let want: Vec<usize> = lead.iter().copied().chain([packed_cols]).collect();
    if w.dtype != Dtype::U32 || w.shape != want {
        let logical: Vec<usize> = lead.iter().copied().chain([cols]).collect();
        return Err(Error::tensor(
            wpath,
            &name,
            format!(
                "{bits}-bit codes of {logical:?} (scales {:?}, group_size {gs}) must be U32 {want:?}, found {:?} {:?}",
                t.shape, w.dtype, w.shape
            ),
        ));
    }
    let layout = MlxLayout {
        bits,
        group_size: gs,
        precision,
        fp,
    };
    Ok(Some(MlxParts {
        weight: main,
        biases,
        shape: lead.iter().copied().chain([cols]).collect(),
        layout,
    }))
}

/// Refuses U32 codes (`M.weight`) that have no `M.scales`: packed codes
/// without their scales are no weight MLX wrote.
pub fn check_codes_have_scales(st: &SafetensorsModel, index: &HashMap<&str, usize>) -> Result<()> {
    for t in st.tensors().iter().filter(|t| t.dtype == Dtype::U32) {
        let Some(module) = t.name.strip_suffix(".weight") else {
            continue;
        };
        let scales = format!("{module}.scales");
        if !index.contains_key(scales.as_str()) {
            return Err(Error::tensor(
                st.shard_path(t),
                &t.name,
                format!("U32 codes without '{scales}'"),
            ));
        }
    }
    Ok(())
}

/// Affine mode: biases like the scales, in a float dtype (the precision
/// returned); bits and group size ones MLX takes.
fn affine_checks(
    st: &SafetensorsModel,
    t: &StTensor,
    name: &str,
    biases: Option<usize>,
    (gs, bits): (usize, u32),
) -> Result<Precision> {
    let path = st.shard_path(t);
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let Some(biases) = biases else {
        return Err(Error::tensor(
            path,
            name,
            format!("'{module}.biases' is missing (affine mode stores a bias per group)"),
        ));
    };
    let precision = precision_of(t.dtype).ok_or_else(|| {
        Error::tensor(
            path,
            &t.name,
            format!("scales must be F32, BF16 or F16, found {:?}", t.dtype),
        )
    })?;
    let b = &st.tensors()[biases];
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
    if !GROUP_SIZES.contains(&gs) || !BITS.contains(&bits) {
        return Err(Error::tensor(
            path,
            name,
            format!("group_size {gs}, bits {bits}: MLX's affine mode takes group sizes 32, 64, 128 and 1, 2, 3, 4, 5, 6 or 8 bits"),
        ));
    }
    Ok(precision)
}

/// A float mode: no biases, no global scale (not read), U8 scales, the
/// mode's one group size and width.
fn float_checks(
    st: &SafetensorsModel,
    t: &StTensor,
    name: &str,
    biases: Option<usize>,
    (gs, bits): (usize, u32),
    mode: FpMode,
    index: &HashMap<&str, usize>,
) -> Result<()> {
    let path = st.shard_path(t);
    let module = name.strip_suffix(".weight").unwrap_or(name);
    let m = mode.name();
    if let Some(b) = biases {
        let b = &st.tensors()[b];
        return Err(Error::tensor(
            st.shard_path(b),
            &b.name,
            format!(
                "mode {m} stores no biases (config.json says {m}; biases belong to affine mode)"
            ),
        ));
    }
    let global = format!("{module}.global_scale");
    if let Some(&g) = index.get(global.as_str()) {
        return Err(Error::tensor(
            st.shard_path(&st.tensors()[g]),
            &global,
            format!("{m} with a global scale is not read"),
        ));
    }
    if t.dtype != Dtype::U8 {
        return Err(Error::tensor(
            path,
            &t.name,
            format!("{m} scales must be U8, found {:?}", t.dtype),
        ));
    }
    if (gs, bits) != (mode.group_size(), mode.bits()) {
        return Err(Error::tensor(
            path,
            name,
            format!(
                "group_size {gs}, bits {bits}: MLX's {m} takes group_size {} and {} bits",
                mode.group_size(),
                mode.bits()
            ),
        ));
    }
    Ok(())
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
    /// The biases' bytes (affine mode).
    pub biases: Option<&'a StTensor>,
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

    /// The packed codes of rows `start..start + n`.
    pub fn codes(&self, start: usize, n: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.packed[start * rb..(start + n) * rb]
    }

    /// The scale bytes of rows `start..start + n`, as stored (a float
    /// mode's one byte per group).
    pub fn scale_bytes(&self, start: usize, n: usize) -> &[u8] {
        let g = self.groups() * self.scales.dtype.bitsize() / 8;
        &self.pages.data(self.scales)[start * g..(start + n) * g]
    }

    /// The affine scales and biases of rows `start..start + n`, one per
    /// group, exactly as stored.
    pub fn affine_params(&self, start: usize, n: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let biases = self
            .biases
            .ok_or_else(|| Error::tensor(self.path, self.name, "affine mode needs its biases"))?;
        let g = self.groups() * biases.dtype.bitsize() / 8;
        let bias_bytes = &self.pages.data(biases)[start * g..(start + n) * g];
        Ok((
            scale_values(self.scales, self.scale_bytes(start, n)),
            scale_values(biases, bias_bytes),
        ))
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
        let g = self.groups();
        let rows = self
            .codes(start, n)
            .chunks_exact(self.row_bytes())
            .zip(out.chunks_exact_mut(self.row_len));
        let precision = self.layout.precision;
        match self.layout.fp {
            Some(mode) => {
                let scales = self.scale_bytes(start, n);
                for ((p, dst), s) in rows.zip(scales.chunks_exact(g)) {
                    mlx_fp::dequantize_row(p, s, mode, precision, dst);
                }
            }
            None => {
                let (scales, biases) = self.affine_params(start, n)?;
                let groups = scales.chunks_exact(g).zip(biases.chunks_exact(g));
                let (bits, gs) = (self.layout.bits, self.layout.group_size);
                for ((p, dst), (s, b)) in rows.zip(groups) {
                    mlx::dequantize_row(p, s, b, bits, gs, precision, dst);
                }
            }
        }
        finite_rows((self.path, self.name), start, self.row_len, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        let rb = self.row_bytes();
        self.pages.release(&self.packed[start * rb..end * rb]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_is_taken_whole_as_mlx_lm_does() {
        let config = serde_json::json!({"quantization": {
            "group_size": 32, "bits": 4, "mode": "mxfp4",
            "model.layers.0.mlp.gate": {"group_size": 64, "bits": 8},
            "model.layers.0.self_attn.k_proj": {"mode": "nvfp4"},
        }});
        // The model's setting; an override naming no mode is affine; one
        // naming only the mode takes that mode's group size and bits.
        assert_eq!(params(&config, "lm_head"), Some((32, 4, "mxfp4")));
        assert_eq!(
            params(&config, "model.layers.0.mlp.gate"),
            Some((64, 8, "affine"))
        );
        assert_eq!(
            params(&config, "model.layers.0.self_attn.k_proj"),
            Some((16, 4, "nvfp4"))
        );
        let plain = serde_json::json!({"quantization": {"group_size": 64, "bits": 4}});
        assert_eq!(params(&plain, "x"), Some((64, 4, "affine")));
    }
}
