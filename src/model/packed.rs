//! compressed-tensors `pack-quantized` checkpoints (the W4A16 / W8A16
//! layout llm-compressor writes for GPTQ and round-to-nearest): how a
//! packed integer weight and its scales are laid out, read as rows of f32.
//! The numbers are `qresidual_quant::packed`'s.
//!
//! Layout (fixtures/tiny_packed, written by compressed-tensors):
//! `M.weight_packed` I32 `[out, ceil(in·bits/32)]`, `M.weight_scale` in the
//! model dtype `[out, in/group_size]` (`[out, 1]` per channel),
//! `M.weight_shape` I64 `[2]` = `[out, in]`; asymmetric weights also
//! `M.weight_zero_point` I32 `[ceil(out·bits/32), in/group_size]` (packed
//! along the rows).

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, StTensor};
use crate::model::fp8::{dtype_of, module_part, precision_of, scale_values};
use crate::model::rows::{finite_rows, RowSource};
use crate::quant::packed::{self, Precision, RowGrid, BITS};
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
    /// Whether a zero point per group is stored (asymmetric).
    pub zero_points: bool,
}

impl PackedLayout {
    /// A short name for reports: `ct-int4`, `ct-int8`, `ct-int4-asym`
    /// (compressed-tensors; `int8` alone is LLM.int8).
    pub fn label(&self) -> String {
        let asym = if self.zero_points { "-asym" } else { "" };
        format!("ct-int{}{asym}", self.bits)
    }

    /// Row `r`'s grid out of every scale and zero point of the weight
    /// (`zeros` empty when symmetric), for rows of `cols`.
    pub fn row_grid<'a>(
        &self,
        scales: &'a [f32],
        zeros: &'a [i32],
        r: usize,
        cols: usize,
    ) -> RowGrid<'a> {
        let g = cols / self.group_size;
        RowGrid {
            scales: &scales[r * g..(r + 1) * g],
            zeros: zeros.get(r * g..(r + 1) * g).unwrap_or(&[]),
            bits: self.bits,
            group_size: self.group_size,
            precision: self.precision,
        }
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
    /// Indices of `M.weight_packed`, `M.weight_scale`, `M.weight_shape`
    /// (and `M.weight_zero_point` when asymmetric).
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
    if !BITS.contains(&bits) {
        return Err(bad(format!(
            "num_bits {bits}: compressed-tensors packs 1 to 8 bits"
        )));
    }
    let symmetric = args["symmetric"] != false;
    let zero_point = index
        .get(format!("{module}.weight_zero_point").as_str())
        .copied();
    if symmetric == zero_point.is_some() {
        return Err(bad(format!(
            "config.json says symmetric {symmetric}, but '{module}.weight_zero_point' is {}",
            if symmetric { "stored" } else { "missing" }
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
    let mut parts = vec![index[t.name.as_str()], scale, shape_i];
    if let Some(z) = zero_point {
        let zt = &st.tensors()[z];
        let want = [(rows * bits as usize).div_ceil(32), cols / group_size];
        if zt.dtype != Dtype::I32 || zt.shape != want {
            return Err(bad(format!(
                "{}: zero points of [{rows}, {}] groups packed along the rows must be I32 {want:?}, found {:?} {:?}",
                zt.name, want[1], zt.dtype, zt.shape
            )));
        }
        parts.push(z);
    }
    Ok(Some(PackedParts {
        name,
        parts,
        shape,
        layout: PackedLayout {
            bits,
            group_size,
            precision,
            zero_points: zero_point.is_some(),
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
    /// Every zero point, row-major (empty when symmetric).
    pub zeros: Vec<i32>,
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

    /// Every zero point of a weight of `parts` (its [`PackedParts::parts`])
    /// and `[rows, cols]`, row-major; empty when symmetric.
    pub fn zeros_of(
        st: &SafetensorsModel,
        parts: &[usize],
        layout: &PackedLayout,
        shape: &[usize],
    ) -> Vec<i32> {
        match parts.get(3) {
            Some(&z) => {
                let groups = shape[1] / layout.group_size;
                packed::unpack_zero_points(st.data(&st.tensors()[z]), shape[0], groups, layout.bits)
            }
            None => Vec::new(),
        }
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
        for (i, dst) in out.chunks_exact_mut(self.row_len).enumerate() {
            let r = start + i;
            let grid = self
                .layout
                .row_grid(&self.scales, &self.zeros, r, self.row_len);
            packed::dequantize_row(&self.packed[r * rb..(r + 1) * rb], grid, dst);
        }
        finite_rows((self.path, self.name), start, self.row_len, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        let rb = packed::row_bytes(self.row_len, self.layout.bits);
        self.pages.release(&self.packed[start * rb..end * rb]);
    }
}
