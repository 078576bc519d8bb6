//! FP8 checkpoints: how a `float8_e4m3fn` weight and its scale tensor are
//! laid out in a Hugging Face folder, read as rows of f32, and the scales a
//! requantized weight is given. The numbers are `qresidual_quant::fp8`'s.
//!
//! Two layouts (fixtures/tiny_fp8, written by the reference quantizers):
//! - `quantization_config.quant_method == "fp8"` (DeepSeek-V3, Qwen3-FP8):
//!   `W` F8_E4M3 `[out, in]` and `W_scale_inv` (`M.weight_scale_inv`), F32
//!   `[ceil(out/bm), ceil(in/bn)]` for `weight_block_size = [bm, bn]`
//!   (absent: one block for the whole tensor);
//! - compressed-tensors `format: float-quantized`: `W` F8_E4M3 and
//!   `M.weight_scale` in the model dtype, `[out, 1]` (strategy channel),
//!   `[1]` (tensor) or `[ceil(out/bm), ceil(in/bn)]` (block, with the
//!   group's `block_structure`).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, StTensor};
use crate::model::rows::{finite_rows, RowSource};
use crate::quant::fp8::{self, Precision, ScaleRule};
use crate::{Error, Result};

/// `quant_method` values whose folders hold FP8 weights, and what the
/// compressed-tensors `format` must be.
pub fn is_fp8_config(config: &Value) -> bool {
    let q = &config["quantization_config"];
    match q["quant_method"].as_str() {
        Some("fp8") => true,
        Some("compressed-tensors") => q["format"] == "float-quantized",
        _ => false,
    }
}

/// The scale layout of one FP8 weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fp8Layout {
    /// How scales are computed and applied.
    pub rule: ScaleRule,
    /// Rows and columns of one scale block; [`WHOLE`] spans the tensor
    /// (`(1, WHOLE)`: per channel, `(WHOLE, WHOLE)`: per tensor).
    pub block: (usize, usize),
}

/// A block dimension that spans the whole tensor.
pub const WHOLE: usize = usize::MAX;

impl Fp8Layout {
    /// Column blocks per row of a weight with `cols` columns.
    pub fn col_blocks(&self, cols: usize) -> usize {
        cols.div_ceil(self.block.1)
    }

    /// Scale blocks of a `[rows, cols]` weight.
    pub fn n_blocks(&self, rows: usize, cols: usize) -> usize {
        rows.div_ceil(self.block.0) * self.col_blocks(cols)
    }

    /// The dtype scales are stored in.
    pub fn scale_dtype(&self) -> Dtype {
        match self.rule {
            ScaleRule::Inverse => Dtype::F32,
            ScaleRule::Divide(p) => dtype_of(p),
        }
    }

    /// The indices in the scale grid of row `r`'s scales, in a weight of
    /// `cols` columns.
    pub fn row_scales(&self, r: usize, cols: usize) -> std::ops::Range<usize> {
        let cb = self.col_blocks(cols);
        let b = r / self.block.0 * cb;
        b..b + cb
    }

    /// Codes of rows `r0..` (`x`, whole rows of `cols`) re-rounded on the
    /// stored `scales` of the whole weight (the base's).
    pub fn requantize_rows(&self, scales: &[f32], cols: usize, r0: usize, x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len()];
        for (i, (row, o)) in x
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .enumerate()
        {
            let s = &scales[self.row_scales(r0 + i, cols)];
            fp8::requantize_row_on_scales(self.rule, row, s, self.block.1, o);
        }
        out
    }

    /// Values of `codes` (rows `r0..`, whole rows of `cols`) under the
    /// stored `scales` of the whole weight.
    pub fn dequantize_rows(
        &self,
        scales: &[f32],
        cols: usize,
        r0: usize,
        codes: &[u8],
    ) -> Vec<f32> {
        let mut out = vec![0f32; codes.len()];
        for (i, (c, o)) in codes
            .chunks_exact(cols)
            .zip(out.chunks_exact_mut(cols))
            .enumerate()
        {
            let s = &scales[self.row_scales(r0 + i, cols)];
            fp8::dequantize_row(self.rule, c, s, self.block.1, o);
        }
        out
    }

    /// A short name for reports: `fp8` (inverse scales, `quant_method
    /// fp8`) or `fp8-channel`/`fp8-tensor`/`fp8-block` (compressed-tensors).
    pub fn label(&self) -> String {
        match self.rule {
            ScaleRule::Inverse => "fp8".into(),
            ScaleRule::Divide(_) => {
                let kind = match self.block {
                    (1, WHOLE) => "channel",
                    (WHOLE, WHOLE) => "tensor",
                    _ => "block",
                };
                format!("fp8-{kind}")
            }
        }
    }
}

/// The precision torch and MLX compute in for scales of dtype `d` (F32,
/// BF16 or F16).
pub fn precision_of(d: Dtype) -> Option<Precision> {
    match d {
        Dtype::F32 => Some(Precision::F32),
        Dtype::BF16 => Some(Precision::Bf16),
        Dtype::F16 => Some(Precision::F16),
        _ => None,
    }
}

/// The dtype of a precision.
pub fn dtype_of(p: Precision) -> Dtype {
    match p {
        Precision::F32 => Dtype::F32,
        Precision::Bf16 => Dtype::BF16,
        Precision::F16 => Dtype::F16,
    }
}

/// `[bm, bn]` from a JSON pair.
fn block_of(v: &Value) -> Option<(usize, usize)> {
    let a = v.as_array()?;
    match a.as_slice() {
        [m, n] => Some((m.as_u64()? as usize, n.as_u64()? as usize)).filter(|b| b.0 > 0 && b.1 > 0),
        _ => None,
    }
}

/// The FP8 weight whose scale `t` is (`M.weight_scale_inv` or
/// `M.weight_scale`), checked against its weight and the config: `(weight
/// index, layout)`; `None` when `t` is no FP8 scale.
pub fn fp8_weight(
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    t: &StTensor,
    config: &Value,
) -> Result<Option<(usize, Fp8Layout)>> {
    let (name, inverse) = if let Some(w) = t.name.strip_suffix("_scale_inv") {
        (w, true)
    } else if let Some(w) = t.name.strip_suffix("_scale") {
        (w, false)
    } else {
        return Ok(None);
    };
    let Some(&main) = index.get(name) else {
        return Ok(None);
    };
    let w = &st.tensors()[main];
    if w.dtype != Dtype::F8_E4M3 {
        return Ok(None);
    }
    let path = st.shard_path(t);
    let bad = |m: String| Error::tensor(path, &t.name, m);
    if w.shape.len() != 2 {
        return Err(Error::tensor(
            st.shard_path(w),
            name,
            format!("an FP8 weight must be 2-D [out, in], found {:?}", w.shape),
        ));
    }
    let (rows, cols) = (w.shape[0], w.shape[1]);
    let q = &config["quantization_config"];
    let prec = precision_of(t.dtype).ok_or_else(|| {
        bad(format!(
            "a scale must be F32, BF16 or F16, found {:?}",
            t.dtype
        ))
    })?;
    let (rule, block) = if inverse {
        let block = match &q["weight_block_size"] {
            Value::Null => (WHOLE, WHOLE),
            v => block_of(v).ok_or_else(|| {
                bad(format!(
                    "config.json weight_block_size {v} is not [rows, columns]"
                ))
            })?,
        };
        (ScaleRule::Inverse, block)
    } else {
        let block = match t.n_elements() {
            1 => (WHOLE, WHOLE),
            n if n == rows && t.shape.last() == Some(&1) => (1, WHOLE),
            _ => q["config_groups"]
                .as_object()
                .and_then(|g| g.values().find_map(|s| block_of(&s["weights"]["block_structure"])))
                .ok_or_else(|| {
                    bad(format!(
                        "shape {:?} is neither per tensor [1] nor per channel [{rows}, 1], and config.json gives no block_structure",
                        t.shape
                    ))
                })?,
        };
        (ScaleRule::Divide(prec), block)
    };
    let layout = Fp8Layout { rule, block };
    let want = layout.n_blocks(rows, cols);
    let grid_ok = match t.shape.as_slice() {
        [] | [1] => want == 1,
        [r, c] => *r == rows.div_ceil(block.0) && *c == layout.col_blocks(cols),
        [r] => want == *r,
        _ => false,
    };
    if !grid_ok {
        return Err(bad(format!(
            "shape {:?} does not match {name} {:?} ({} scales expected)",
            t.shape, w.shape, want
        )));
    }
    Ok(Some((main, layout)))
}

/// The index of the stored tensor `{module}.{suffix}` (a part of a
/// quantized weight), or the error `bad` makes of its absence.
pub fn module_part(
    index: &HashMap<&str, usize>,
    module: &str,
    suffix: &str,
    bad: impl Fn(String) -> Error,
) -> Result<usize> {
    index
        .get(format!("{module}.{suffix}").as_str())
        .copied()
        .ok_or_else(|| bad(format!("'{module}.{suffix}' is missing")))
}

/// f32 values of a float scale tensor.
pub fn scale_values(t: &StTensor, bytes: &[u8]) -> Vec<f32> {
    match t.dtype {
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    }
}

/// Scales as stored in `dtype` (F32, BF16 or F16).
pub fn scale_bytes(dtype: Dtype, scales: &[f32]) -> Vec<u8> {
    match dtype {
        Dtype::BF16 => scales
            .iter()
            .flat_map(|s| half::bf16::from_f32(*s).to_le_bytes())
            .collect(),
        Dtype::F16 => scales
            .iter()
            .flat_map(|s| half::f16::from_f32(*s).to_le_bytes())
            .collect(),
        _ => scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
    }
}

/// Rows of an FP8 weight.
pub struct Fp8Rows<'a> {
    /// The shard, for errors.
    pub path: &'a Path,
    /// The weight's name.
    pub name: &'a str,
    /// The codes, one byte per weight.
    pub codes: &'a [u8],
    /// Every scale of the weight, row-major over the block grid.
    pub scales: Vec<f32>,
    /// The layout.
    pub layout: Fp8Layout,
    /// Columns.
    pub row_len: usize,
    /// Rows.
    pub n_rows: usize,
    /// The mapping, to hand consumed pages back.
    pub pages: &'a SafetensorsModel,
}

impl RowSource for Fp8Rows<'_> {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n_rows
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        for (i, dst) in out.chunks_exact_mut(self.row_len).enumerate() {
            let r = start + i;
            let scales = &self.scales[self.layout.row_scales(r, self.row_len)];
            let codes = &self.codes[r * self.row_len..][..self.row_len];
            fp8::dequantize_row(self.layout.rule, codes, scales, self.layout.block.1, dst);
        }
        finite_rows((self.path, self.name), start, self.row_len, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        self.pages
            .release(&self.codes[start * self.row_len..end * self.row_len]);
    }
}

/// The block maxima of a whole weight, gathered chunk by chunk: what its
/// requantized scales are made from.
#[derive(Debug, Clone)]
pub struct BlockMaxima {
    layout: Fp8Layout,
    cols: usize,
    amax: Vec<f32>,
}

impl BlockMaxima {
    /// All zero, for a `[rows, cols]` weight.
    pub fn new(layout: Fp8Layout, rows: usize, cols: usize) -> Self {
        BlockMaxima {
            layout,
            cols,
            amax: vec![0.0; layout.n_blocks(rows, cols)],
        }
    }

    fn row_blocks(&self, r: usize) -> std::ops::Range<usize> {
        self.layout.row_scales(r, self.cols)
    }

    /// Fold rows `r0..` (`x`, whole rows) in.
    pub fn fold(&mut self, r0: usize, x: &[f32]) {
        for (i, row) in x.chunks_exact(self.cols).enumerate() {
            let range = self.row_blocks(r0 + i);
            fp8::fold_amax(row, self.layout.block.1, &mut self.amax[range]);
        }
    }

    /// The stored scale of every block.
    pub fn scales(&self) -> Vec<f32> {
        self.amax
            .iter()
            .map(|&a| self.layout.rule.scale_for(a))
            .collect()
    }

    /// Codes of rows `r0..` (`x`, whole rows) under `scales` (from
    /// [`BlockMaxima::scales`]).
    pub fn quantize(&self, scales: &[f32], r0: usize, x: &[f32]) -> Vec<u8> {
        let mut out = vec![0u8; x.len()];
        let bn = self.layout.block.1;
        for (i, (row, o)) in x
            .chunks_exact(self.cols)
            .zip(out.chunks_exact_mut(self.cols))
            .enumerate()
        {
            let range = self.row_blocks(r0 + i);
            fp8::quantize_row(
                self.layout.rule,
                row,
                &self.amax[range.clone()],
                &scales[range],
                bn,
                o,
            );
        }
        out
    }

    /// Decoded values of `codes` (rows `r0..`) under `scales`.
    pub fn dequantize(&self, scales: &[f32], r0: usize, codes: &[u8]) -> Vec<f32> {
        self.layout.dequantize_rows(scales, self.cols, r0, codes)
    }
}
