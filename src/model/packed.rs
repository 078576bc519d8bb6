//! compressed-tensors `pack-quantized` checkpoints (the W4A16 / W8A16
//! layout llm-compressor writes for GPTQ and round-to-nearest): how a
//! packed integer weight and its scales are laid out, read as rows of f32.
//! The numbers are `qresidual_quant::packed`'s.
//!
//! Layout (fixtures/tiny_packed, written by compressed-tensors):
//! `M.weight_packed` I32 `[out, ceil(in·bits/32)]`, `M.weight_scale` in the
//! model dtype `[out, in/group_size]` (`[out, 1]` per channel),
//! `M.weight_shape` I64 `[2]` = `[out, in]`; symmetric only (an asymmetric
//! `M.weight_zero_point` is refused, naming the tensor).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, StTensor};
use crate::model::fp8::{dtype_of, module_part, precision_of, scale_values};
use crate::model::rows::{finite_rows, RowSource};
use crate::quant::packed::{self, Precision, BITS};
use crate::{Error, Result};

/// Whether `config` declares compressed-tensors `pack-quantized`.
pub fn is_packed_config(config: &Value) -> bool {
    let q = &config["quantization_config"];
    q["quant_method"] == "compressed-tensors" && q["format"] == "pack-quantized"
}

/// How one packed weight is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedLayout {
    /// Bits per code.
    pub bits: u32,
    /// Weights per scale.
    pub group_size: usize,
    /// The scales' dtype, which compressed-tensors computes in.
    pub precision: Precision,
}

impl PackedLayout {
    /// A short name for reports: `int4`, `int8`.
    pub fn label(&self) -> String {
        format!("int{}", self.bits)
    }

    /// The dtype the scales are stored in.
    pub fn dtype(&self) -> Dtype {
        dtype_of(self.precision)
    }
}

/// One packed weight found in a folder.
pub struct PackedParts {
    /// The logical name (`M.weight`).
    pub name: String,
    /// Indices of `M.weight_packed`, `M.weight_scale`, `M.weight_shape`.
    pub parts: Vec<usize>,
    /// `[out, in]`.
    pub shape: Vec<usize>,
    /// Bits, group size, dtype.
    pub layout: PackedLayout,
}

/// The packed weight whose codes `t` are (`M.weight_packed`), checked
/// against its scales, shape and the config; `None` when `t` is no packed
/// weight.
// Long because it is the list of every check a stored packed weight must
// pass (codes, scales, shape, zero point, the config's bits and groups),
// each with its own message naming the tensor.
pub fn packed_weight(
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    t: &StTensor,
    config: &Value,
) -> Result<Option<PackedParts>> {
    let Some(module) = t.name.strip_suffix(".weight_packed") else {
        return Ok(None);
    };
    let path = st.shard_path(t);
    let name = format!("{module}.weight");
    let bad = |m: String| Error::tensor(path, &name, m);
    let part = |suffix: &str| module_part(index, module, suffix, bad);
    if index.contains_key(format!("{module}.weight_zero_point").as_str()) {
        return Err(bad(
            "asymmetric pack-quantized weights (weight_zero_point) are not supported".into(),
        ));
    }
    let (scale, shape_i) = (part("weight_scale")?, part("weight_shape")?);
    let (s, sh) = (&st.tensors()[scale], &st.tensors()[shape_i]);
    let shape: Vec<usize> = match (sh.dtype, st.data(sh)) {
        (Dtype::I64, b) if b.len() == 16 => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")).max(0) as usize)
            .collect(),
        _ => return Err(bad(format!("{}: expected I64 [2]", sh.name))),
    };
    let (rows, cols) = (shape[0], shape[1]);
    let args = config["quantization_config"]["config_groups"]
        .as_object()
        .and_then(|g| {
            g.values()
                .map(|v| &v["weights"])
                .find(|w| w["type"] == "int")
        })
        .ok_or_else(|| bad("config.json has no int weight group".into()))?;
    let bits = args["num_bits"].as_u64().unwrap_or(0) as u32;
    if !BITS.contains(&bits) || args["symmetric"] == false {
        return Err(bad(format!(
            "num_bits {bits}, symmetric {}: only symmetric 4- and 8-bit packing is read",
            args["symmetric"]
        )));
    }
    let precision = precision_of(s.dtype).ok_or_else(|| {
        bad(format!(
            "{}: scales must be F32, BF16 or F16, found {:?}",
            s.name, s.dtype
        ))
    })?;
    let group_size = match args["strategy"].as_str() {
        Some("channel") => cols,
        Some("group") => args["group_size"].as_u64().unwrap_or(0) as usize,
        other => {
            return Err(bad(format!(
                "strategy {other:?} is not read (group or channel)"
            )))
        }
    };
    if group_size == 0 || cols % group_size != 0 || s.shape != [rows, cols / group_size] {
        return Err(bad(format!(
            "{} {:?} does not give one scale per group of {group_size} of [{rows}, {cols}]",
            s.name, s.shape
        )));
    }
    let words = packed::row_bytes(cols, bits) / 4;
    if t.dtype != Dtype::I32 || t.shape != [rows, words] {
        return Err(bad(format!(
            "{}: {bits}-bit codes of [{rows}, {cols}] must be I32 [{rows}, {words}], found {:?} {:?}",
            t.name, t.dtype, t.shape
        )));
    }
    Ok(Some(PackedParts {
        name,
        parts: vec![index[t.name.as_str()], scale, shape_i],
        shape,
        layout: PackedLayout {
            bits,
            group_size,
            precision,
        },
    }))
}

/// Rows of a packed weight.
pub struct PackedRows<'a> {
    /// The shard, for errors.
    pub path: &'a Path,
    /// The weight's name.
    pub name: &'a str,
    /// The packed codes.
    pub packed: &'a [u8],
    /// Every scale (small: one per group).
    pub scales: Vec<f32>,
    /// The layout.
    pub layout: PackedLayout,
    /// Columns.
    pub row_len: usize,
    /// Rows.
    pub n_rows: usize,
    /// The mapping.
    pub pages: &'a SafetensorsModel,
}

impl PackedRows<'_> {
    /// Every scale of the scale tensor `t`, as f32.
    pub fn scales_of(st: &SafetensorsModel, t: &StTensor) -> Vec<f32> {
        scale_values(t, st.data(t))
    }
}

impl RowSource for PackedRows<'_> {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n_rows
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let rb = packed::row_bytes(self.row_len, self.layout.bits);
        let g = self.row_len / self.layout.group_size;
        for (i, dst) in out.chunks_exact_mut(self.row_len).enumerate() {
            let r = start + i;
            packed::dequantize_row(
                &self.packed[r * rb..(r + 1) * rb],
                &self.scales[r * g..(r + 1) * g],
                self.layout.bits,
                self.layout.group_size,
                self.layout.precision,
                dst,
            );
        }
        finite_rows((self.path, self.name), start, self.row_len, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        let rb = packed::row_bytes(self.row_len, self.layout.bits);
        self.pages.release(&self.packed[start * rb..end * rb]);
    }
}
