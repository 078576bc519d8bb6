//! GPTQ and AWQ checkpoints in their own layouts (AutoGPTQ / GPTQModel,
//! AutoAWQ GEMM): which folders declare them, how one quantized linear
//! module is stored, read as rows of f32 of the Hugging Face weight
//! `[out, in]`. The numbers are `qresidual_quant::gptq`'s.
//!
//! Layout (fixtures/tiny_gptq): for a module `M`, `M.qweight` I32,
//! `M.qzeros` I32, `M.scales` F16 (BF16/F32 read too) and, for GPTQ,
//! `M.g_idx` I32 `[in]` (absent: `i / group_size`); the logical weight is
//! named `M.weight`. `config.json`'s `quantization_config` gives
//! `quant_method` (`gptq`, `awq`), `bits`, `group_size` (−1: one group),
//! GPTQ's `checkpoint_format` (`gptq`, the v1 format storing `z − 1`, or
//! `gptq_v2`) and AWQ's `version` (`gemm`) and `zero_point`.

use std::collections::HashMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::Value;

use crate::format::pages::ReleasePages;
use crate::format::st::{SafetensorsModel, StTensor};
use crate::model::fp8::{module_part, precision_of, scale_values};
use crate::model::rows::{finite_rows, RowSource};
use crate::quant::gptq::{per_word, unpack_zeros, Grid, Packing};
use crate::quant::packed::Precision;
use crate::{Error, Result};

/// Bits per code this reader takes.
pub const BITS: [u32; 2] = [4, 8];

/// Whether `config` declares GPTQ (`Some(Packing::Gptq)`) or AWQ.
pub fn gptq_packing(config: &Value) -> Option<Packing> {
    match config["quantization_config"]["quant_method"].as_str() {
        Some("gptq") => Some(Packing::Gptq),
        Some("awq") => Some(Packing::Awq),
        _ => None,
    }
}

/// How one module is quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptqLayout {
    /// GPTQ or AWQ.
    pub packing: Packing,
    /// Bits per code.
    pub bits: u32,
    /// Inputs per group.
    pub group_size: usize,
    /// The scales' dtype.
    pub precision: Precision,
    /// GPTQ's v1 format: zero points stored minus one.
    pub v1: bool,
}

impl GptqLayout {
    /// A short name for reports: `gptq-int4`, `awq-int4`.
    pub fn label(&self) -> String {
        let p = match self.packing {
            Packing::Gptq => "gptq",
            Packing::Awq => "awq",
        };
        format!("{p}-int{}", self.bits)
    }
}

/// One GPTQ/AWQ module found in a folder.
pub struct GptqParts {
    /// The logical name (`M.weight`).
    pub name: String,
    /// Indices of `M.qweight`, `M.qzeros`, `M.scales` and (GPTQ, if
    /// stored) `M.g_idx`.
    pub parts: Vec<usize>,
    /// `[out, in]`.
    pub shape: Vec<usize>,
    /// The layout.
    pub layout: GptqLayout,
}

/// The quantization parameters of `config` (bits, group size, v1), checked.
fn config_args(
    packing: Packing,
    config: &Value,
    bad: &dyn Fn(String) -> Error,
) -> Result<(u32, i64, bool)> {
    let q = &config["quantization_config"];
    let bits = q["bits"].as_u64().or(q["w_bit"].as_u64()).unwrap_or(0) as u32;
    let group = q["group_size"]
        .as_i64()
        .or(q["q_group_size"].as_i64())
        .unwrap_or(0);
    let ok_bits: &[u32] = match packing {
        Packing::Gptq => &BITS,
        Packing::Awq => &[4],
    };
    if !ok_bits.contains(&bits) {
        return Err(bad(format!(
            "config.json quantization_config bits {bits} is not read (GPTQ: 4 or 8, AWQ: 4)"
        )));
    }
    if group == 0 || group < -1 {
        return Err(bad(format!("config.json group_size {group} is not valid")));
    }
    let v1 = match packing {
        Packing::Gptq => match q["checkpoint_format"].as_str().unwrap_or("gptq") {
            "gptq" => true,
            "gptq_v2" => false,
            f => return Err(bad(format!("GPTQ checkpoint_format {f:?} is not read"))),
        },
        Packing::Awq => {
            let version = q["version"].as_str().unwrap_or("gemm").to_lowercase();
            if version != "gemm" || q["zero_point"] == false {
                return Err(bad(format!(
                    "AWQ version {version:?}, zero_point {}: only GEMM with zero points is read",
                    q["zero_point"]
                )));
            }
            false
        }
    };
    Ok((bits, group, v1))
}

fn i32_values(bytes: &[u8]) -> impl Iterator<Item = i32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
}

/// The GPTQ/AWQ module whose codes `t` are (`M.qweight`), checked against
/// its zero points, scales, group indices and the config; `None` when `t`
/// is no `qweight` or the folder declares no GPTQ/AWQ.
// Long because it is the list of every check a stored module must pass
// (codes, zeros, scales, g_idx, the config's bits and groups), each with
// its own message naming the tensor.
pub fn gptq_weight(
    st: &SafetensorsModel,
    index: &HashMap<&str, usize>,
    t: &StTensor,
    config: &Value,
) -> Result<Option<GptqParts>> {
    let Some(module) = t.name.strip_suffix(".qweight") else {
        return Ok(None);
    };
    let Some(packing) = gptq_packing(config) else {
        return Ok(None);
    };
    let path = st.shard_path(t);
    let name = format!("{module}.weight");
    let bad = |m: String| Error::tensor(path, &name, m);
    let part = |suffix: &str| module_part(index, module, suffix, bad);
    let (bits, group, v1) = config_args(packing, config, &bad)?;
    let (zeros_i, scales_i) = (part("qzeros")?, part("scales")?);
    let (z, s) = (&st.tensors()[zeros_i], &st.tensors()[scales_i]);
    let pf = per_word(bits);
    if t.dtype != Dtype::I32 || t.shape.len() != 2 {
        return Err(bad(format!(
            "{}: packed codes must be I32 2-D, found {:?} {:?}",
            t.name, t.dtype, t.shape
        )));
    }
    let (inp, out) = match packing {
        Packing::Gptq => (t.shape[0] * pf, t.shape[1]),
        Packing::Awq => (t.shape[0], t.shape[1] * pf),
    };
    let group_size = if group == -1 { inp } else { group as usize };
    let groups = inp.div_ceil(group_size.max(1));
    if packing == Packing::Awq && inp % group_size != 0 {
        return Err(bad(format!(
            "{} {:?}: {inp} inputs are not whole groups of {group_size}",
            t.name, t.shape
        )));
    }
    let precision = precision_of(s.dtype).ok_or_else(|| {
        bad(format!(
            "{}: scales must be F16, BF16 or F32, found {:?}",
            s.name, s.dtype
        ))
    })?;
    if s.shape != [groups, out] {
        return Err(bad(format!(
            "{} {:?} does not give one scale per group of {group_size} and output of [{out}, {inp}] (expected [{groups}, {out}])",
            s.name, s.shape
        )));
    }
    if z.dtype != Dtype::I32 || out % pf != 0 || z.shape != [groups, out / pf] {
        return Err(bad(format!(
            "{}: {bits}-bit zero points of [{groups}, {out}] must be I32 [{groups}, {}], found {:?} {:?}",
            z.name,
            out / pf,
            z.dtype,
            z.shape
        )));
    }
    let mut parts = vec![index[t.name.as_str()], zeros_i, scales_i];
    if packing == Packing::Gptq {
        if let Some(&g) = index.get(format!("{module}.g_idx").as_str()) {
            let gt = &st.tensors()[g];
            if gt.dtype != Dtype::I32 || gt.shape != [inp] {
                return Err(bad(format!(
                    "{}: expected I32 [{inp}], found {:?} {:?}",
                    gt.name, gt.dtype, gt.shape
                )));
            }
            if let Some((i, v)) = i32_values(st.data(gt))
                .enumerate()
                .find(|&(_, v)| v < 0 || v as usize >= groups)
            {
                return Err(bad(format!(
                    "{}[{i}] = {v} is out of range (groups 0..{groups})",
                    gt.name
                )));
            }
            parts.push(g);
        }
    }
    Ok(Some(GptqParts {
        name,
        parts,
        shape: vec![out, inp],
        layout: GptqLayout {
            packing,
            bits,
            group_size,
            precision,
            v1,
        },
    }))
}

/// The grid of a module: its scales, zero points and group indices
/// (`parts` as [`GptqParts::parts`]).
pub fn grid_of(
    st: &SafetensorsModel,
    parts: &[usize],
    layout: GptqLayout,
    shape: &[usize],
) -> Grid {
    let t = |k: usize| &st.tensors()[parts[k]];
    let (out, inp) = (shape[0], shape[1]);
    let scales = scale_values(t(2), st.data(t(2)));
    let groups = scales.len() / out.max(1);
    let zeros = unpack_zeros(
        layout.packing,
        layout.bits,
        st.data(t(1)),
        groups,
        out,
        layout.v1,
    );
    let g_idx = match parts.get(3) {
        Some(_) => i32_values(st.data(t(3))).map(|v| v as u32).collect(),
        None => (0..inp).map(|i| (i / layout.group_size) as u32).collect(),
    };
    Grid {
        bits: layout.bits,
        out,
        inp,
        scales,
        zeros,
        g_idx,
        precision: layout.precision,
        packing: layout.packing,
    }
}

/// Rows of a GPTQ/AWQ weight.
pub struct GptqRows<'a> {
    /// The shard, for errors.
    pub path: &'a Path,
    /// The weight's name.
    pub name: &'a str,
    /// `M.qweight`'s bytes.
    pub qweight: &'a [u8],
    /// Scales, zero points, groups.
    pub grid: Grid,
    /// The mapping.
    pub pages: &'a SafetensorsModel,
}

impl RowSource for GptqRows<'_> {
    fn row_len(&self) -> usize {
        self.grid.inp
    }

    fn n_rows(&self) -> usize {
        self.grid.out
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.grid.dequantize_rows(self.qweight, start, out);
        finite_rows((self.path, self.name), start, self.grid.inp, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        // The codes of a row are spread over the whole tensor (one column
        // of qweight): only the last rows release it.
        if end >= self.grid.out && start < end {
            self.pages.release(self.qweight);
        }
    }
}
