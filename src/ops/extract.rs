//! Δθ = θ_instruct − θ_base: the residual of two checkpoints, written as
//! safetensors (F16/BF16/F32) or, compressed, as a GGUF file of any ggml
//! type, with the base's fingerprint ([`crate::apply::guard`]) and provenance.
//!
//! Rows of both models are decoded to f32 in chunks (any GGUF type or
//! safetensors float dtype), subtracted, and streamed to the output; the
//! GGUF and safetensors forms both go through the shared
//! [`crate::engine::pipeline`], into their writers' [`crate::engine::sink::TensorSink`].

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::Dtype;
use serde_json::json;

use crate::apply::guard::{self, FINGERPRINT_KEY, PROVENANCE_KEY};
use crate::engine::pipeline::{self, Action, Outcome, Task};
use crate::format::gguf::{GgufWriter, MetaValue, TensorSpec, WriterOptions};
use crate::format::st::SafetensorsWriter;
use crate::model::rows::RowSource;
use crate::model::Shaped;
use crate::model::{self, decode_finite, list, Model, TensorPair};
use crate::quant::{codec, GgmlType};
use crate::{Error, Result};

/// What `--dtype` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidualFormat {
    /// Safetensors in F16, BF16 or F32.
    Safetensors(Dtype),
    /// A GGUF file with tensors of this type (where rows allow it).
    Gguf(GgmlType),
}

impl ResidualFormat {
    /// Parse `f16`, `bf16`, `f32` (safetensors) or an encodable ggml type (GGUF).
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f16" => return Ok(ResidualFormat::Safetensors(Dtype::F16)),
            "bf16" => return Ok(ResidualFormat::Safetensors(Dtype::BF16)),
            "f32" => return Ok(ResidualFormat::Safetensors(Dtype::F32)),
            _ => {}
        }
        match GgmlType::from_name(s) {
            Some(t) if codec(t).and_then(|c| c.quantize).is_some() && !t.is_integer() => {
                Ok(ResidualFormat::Gguf(t))
            }
            Some(t) => Err(Error::Usage(format!(
                "--dtype {s}: {t} cannot be written without an importance matrix; try q8_0, q6_k or q4_k"
            ))),
            None => Err(Error::Usage(format!(
                "--dtype {s}: expected f16, bf16, f32 or a ggml type such as q8_0"
            ))),
        }
    }

    /// A name for messages and provenance.
    pub fn name(&self) -> String {
        match self {
            ResidualFormat::Safetensors(d) => format!("{d:?}"),
            ResidualFormat::Gguf(t) => t.name().to_string(),
        }
    }
}

/// The difference of two tensors' rows, both already in the output's layout.
struct DeltaRows<'a> {
    instruct: Box<dyn RowSource + 'a>,
    base: Box<dyn RowSource + 'a>,
    /// (file, tensor) of each side, for messages.
    origin_instruct: (&'a Path, &'a str),
    origin_base: (&'a Path, &'a str),
    shift_instruct: f32,
    shift_base: f32,
}

impl RowSource for DeltaRows<'_> {
    fn row_len(&self) -> usize {
        self.instruct.row_len()
    }

    fn n_rows(&self) -> usize {
        self.instruct.n_rows()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len() / self.row_len().max(1);
        let i = decode_finite(
            self.instruct.as_ref(),
            self.origin_instruct,
            self.shift_instruct,
            start,
            n,
        )?;
        let b = decode_finite(
            self.base.as_ref(),
            self.origin_base,
            self.shift_base,
            start,
            n,
        )?;
        for ((o, x), y) in out.iter_mut().zip(&i).zip(&b) {
            *o = x - y;
        }
        Ok(())
    }

    fn release_rows(&self, start: usize, end: usize) {
        self.instruct.release_rows(start, end);
        self.base.release_rows(start, end);
    }
}

/// Zeros: the "base" of a residual written through the pipeline, so that the
/// pipeline's retention is ⟨written Δ, Δ⟩ / ‖Δ‖².
struct ZeroRows {
    row_len: usize,
    n_rows: usize,
}

impl RowSource for ZeroRows {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n_rows
    }

    fn decode(&self, _start: usize, out: &mut [f32]) -> Result<()> {
        out.fill(0.0);
        Ok(())
    }
}

/// What an extraction produced.
#[derive(Debug, Default)]
pub struct Extracted {
    /// Tensors written.
    pub tensors: usize,
    /// Weights written.
    pub n_elements: u64,
    /// Tensors whose Δ is exactly zero (identical in both models).
    pub zero_tensors: Vec<String>,
    /// Values beyond the output float type's range, saturated (name, count, largest |Δ|).
    pub overflows: Vec<(String, u64, f32)>,
    /// Per tensor outcome of the GGUF form (error and retention of the stored Δ).
    pub outcomes: Vec<Outcome>,
    /// Whether names are GGUF names (else the instruct model's own).
    pub gguf_names: bool,
    /// Files written.
    pub paths: Vec<std::path::PathBuf>,
}

/// Pair the two models, refusing tensors found in only one of them or with
/// different shapes.
pub fn pair_checked(
    instruct: &Model,
    it: &[model::Weight<'_>],
    base: &Model,
    bt: &[model::Weight<'_>],
) -> Result<model::Pairing> {
    let p = model::pair_models(instruct, it, base, bt);
    let mut problems = Vec::new();
    if !p.only_a.is_empty() {
        problems.push(format!(
            "{} tensor(s) only in the instruct model {}: {}",
            p.only_a.len(),
            instruct.path().display(),
            list(&p.only_a)
        ));
    }
    if !p.only_b.is_empty() {
        problems.push(format!(
            "{} tensor(s) only in the base model {}: {}",
            p.only_b.len(),
            base.path().display(),
            list(&p.only_b)
        ));
    }
    if !p.shape_differs.is_empty() {
        problems.push(format!(
            "{} tensor(s) differ in shape (instruct vs base): {}",
            p.shape_differs.len(),
            list(&p.shape_differs)
        ));
    }
    if !problems.is_empty() {
        return Err(Error::Mismatch(format!(
            "the models do not hold the same tensors; {}",
            problems.join("; ")
        )));
    }
    if p.pairs.is_empty() {
        return Err(Error::Mismatch(format!(
            "{} and {} have no tensor in common",
            instruct.path().display(),
            base.path().display()
        )));
    }
    Ok(p)
}

/// The GGUF type a residual tensor of `shape` gets when `want` is asked:
/// `want` for matrices whose rows are whole blocks, F16 otherwise (norms,
/// odd rows), as llama.cpp also keeps 1-D tensors unquantized.
pub fn gguf_tensor_type(want: GgmlType, shape: &[u64]) -> GgmlType {
    let row_len = shape.last().copied().unwrap_or(1) as usize;
    if shape.len() >= 2 && want.row_size(row_len).is_some() {
        want
    } else {
        GgmlType::F16
    }
}

/// Extract `instruct − base` into `out`.
pub fn extract(
    instruct: &Model,
    base: &Model,
    out: &Path,
    format: ResidualFormat,
    progress: &crate::engine::progress::Progress,
) -> Result<Extracted> {
    let it = instruct.weights()?;
    let bt = base.weights()?;
    let pairing = pair_checked(instruct, &it, base, &bt)?;
    let stamps = stamps(instruct, base, &pairing, format, progress)?;
    let deltas = delta_rows(instruct, &it, base, &bt, &pairing)?;
    let mut result = Extracted {
        tensors: deltas.len(),
        n_elements: pairing.pairs.iter().map(|p| it[p.a].n_elements()).sum(),
        gguf_names: pairing.gguf_names,
        ..Default::default()
    };
    match format {
        ResidualFormat::Safetensors(dtype) => {
            write_safetensors(deltas, &it, dtype, stamps, out, progress, &mut result)?
        }
        ResidualFormat::Gguf(want) => {
            let models = [instruct, base];
            write_gguf(
                deltas,
                &it,
                want,
                &models,
                stamps,
                out,
                progress,
                &mut result,
            )?
        }
    }
    Ok(result)
}

/// What the residual carries about where it came from: the base's
/// fingerprint and the provenance, both as JSON text.
struct Stamps {
    fingerprint: String,
    provenance: String,
}

fn stamps(
    instruct: &Model,
    base: &Model,
    pairing: &model::Pairing,
    format: ResidualFormat,
    progress: &crate::engine::progress::Progress,
) -> Result<Stamps> {
    let entries: Vec<_> = pairing
        .pairs
        .iter()
        .map(|p| (p.name.clone(), p.b, p.perm_b, p.shift_b))
        .collect();
    let fingerprint = guard::fingerprint_model(base, &entries, progress)?;
    let provenance = json!({
        "tool": "qresidual",
        "version": env!("CARGO_PKG_VERSION"),
        "command": "extract",
        "instruct": instruct.path().display().to_string(),
        "base": base.path().display().to_string(),
        "dtype": format.name(),
        "names": if pairing.gguf_names { "gguf" } else { "model" },
        "delta": "instruct - base, in f32",
    });
    Ok(Stamps {
        fingerprint: serde_json::to_string(&fingerprint).expect("fingerprint serializes"),
        provenance: provenance.to_string(),
    })
}

/// Every pair with the rows of its Δ.
type Deltas<'a> = Vec<(&'a TensorPair, DeltaRows<'a>)>;

fn delta_rows<'a>(
    instruct: &'a Model,
    it: &'a [model::Weight<'a>],
    base: &'a Model,
    bt: &'a [model::Weight<'a>],
    pairing: &'a model::Pairing,
) -> Result<Deltas<'a>> {
    pairing
        .pairs
        .iter()
        .map(|p| {
            Ok((
                p,
                DeltaRows {
                    instruct: instruct.weight_rows(&it[p.a], p.perm_a)?,
                    base: base.weight_rows(&bt[p.b], p.perm_b)?,
                    origin_instruct: (instruct.path(), it[p.a].name),
                    origin_base: (base.path(), bt[p.b].name),
                    shift_instruct: p.shift_a,
                    shift_base: p.shift_b,
                },
            ))
        })
        .collect()
}

/// The safetensors form: Δ saturated to `dtype`, overflows and all-zero
/// tensors noted in `result`.
fn write_safetensors(
    deltas: Deltas<'_>,
    it: &[model::Weight<'_>],
    dtype: Dtype,
    stamps: Stamps,
    out: &Path,
    progress: &crate::engine::progress::Progress,
    result: &mut Extracted,
) -> Result<()> {
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert(FINGERPRINT_KEY.to_string(), stamps.fingerprint);
    metadata.insert(PROVENANCE_KEY.to_string(), stamps.provenance);
    let specs: Vec<(String, Dtype, Vec<usize>)> = deltas
        .iter()
        .map(|(p, _)| {
            (
                p.name.clone(),
                dtype,
                it[p.a].shape.iter().map(|&d| d as usize).collect(),
            )
        })
        .collect();
    let ty = match dtype {
        Dtype::F16 => GgmlType::F16,
        Dtype::BF16 => GgmlType::BF16,
        _ => GgmlType::F32,
    };
    let tasks: Vec<Task<'_>> = deltas
        .into_iter()
        .map(|(p, rows)| Task {
            spec: TensorSpec {
                name: p.name.clone(),
                ty,
                ne: it[p.a].shape.iter().rev().copied().collect(),
            },
            input_type: GgmlType::F32,
            action: Action::Transcode {
                base: Box::new(rows),
                residual: None,
                scale: 1.0,
                importance: None,
            },
        })
        .collect();
    let mut writer = SafetensorsWriter::create(out, &specs, metadata)?;
    let opts = pipeline::Options {
        progress: progress.clone(),
        saturate: true,
        ..Default::default()
    };
    let outcomes = pipeline::run(&tasks, &mut writer, out, &opts)?;
    writer.finish()?;
    for o in &outcomes {
        if o.saturated.count > 0 {
            result
                .overflows
                .push((o.name.clone(), o.saturated.count, o.saturated.largest));
        }
        if o.stats.is_some_and(|s| s.reference_rms() == 0.0) {
            result.zero_tensors.push(o.name.clone());
        }
    }
    result.paths = vec![out.to_path_buf()];
    Ok(())
}

/// The GGUF form: Δ encoded as `want` where rows allow it, written as the
/// residual over zeros so that the outcomes measure what the encoding kept.
/// `models` (instruct, base) lend the architecture.
#[allow(clippy::too_many_arguments)]
fn write_gguf(
    deltas: Deltas<'_>,
    it: &[model::Weight<'_>],
    want: GgmlType,
    models: &[&Model; 2],
    stamps: Stamps,
    out: &Path,
    progress: &crate::engine::progress::Progress,
    result: &mut Extracted,
) -> Result<()> {
    let mut metadata = Vec::new();
    if let Some(arch) = models
        .iter()
        .find_map(|m| m.gguf().and_then(|g| g.architecture()))
    {
        metadata.push((
            "general.architecture".to_string(),
            MetaValue::String(arch.to_string()),
        ));
    }
    metadata.push((
        "general.name".to_string(),
        MetaValue::String("residual".to_string()),
    ));
    metadata.push((
        FINGERPRINT_KEY.to_string(),
        MetaValue::String(stamps.fingerprint),
    ));
    metadata.push((
        PROVENANCE_KEY.to_string(),
        MetaValue::String(stamps.provenance),
    ));
    let tasks: Vec<Task<'_>> = deltas
        .into_iter()
        .map(|(p, rows)| {
            let shape = &it[p.a].shape;
            Task {
                spec: TensorSpec {
                    name: p.name.clone(),
                    ty: gguf_tensor_type(want, shape),
                    ne: shape.iter().rev().copied().collect(),
                },
                input_type: GgmlType::F32,
                action: Action::Transcode {
                    base: Box::new(ZeroRows {
                        row_len: rows.row_len(),
                        n_rows: rows.n_rows(),
                    }),
                    residual: Some(Box::new(rows)),
                    scale: 1.0,
                    importance: None,
                },
            }
        })
        .collect();
    let specs: Vec<TensorSpec> = tasks.iter().map(|t| t.spec.clone()).collect();
    let mut writer = GgufWriter::create(out, &metadata, &specs, &WriterOptions::default())?;
    let opts = pipeline::Options {
        progress: progress.clone(),
        ..Default::default()
    };
    let outcomes = pipeline::run(&tasks, &mut writer, out, &opts)?;
    result.paths = writer.finish()?;
    result.zero_tensors = outcomes
        .iter()
        .filter(|o| o.stats.is_some_and(|s| s.delta_norm() == 0.0))
        .map(|o| o.name.clone())
        .collect();
    result.outcomes = outcomes;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_names_parse() {
        assert_eq!(
            ResidualFormat::parse("f16").unwrap(),
            ResidualFormat::Safetensors(Dtype::F16)
        );
        assert_eq!(
            ResidualFormat::parse("q8_0").unwrap(),
            ResidualFormat::Gguf(GgmlType::Q8_0)
        );
        assert!(ResidualFormat::parse("iq2_xxs").is_err());
        assert!(ResidualFormat::parse("nonsense").is_err());
    }
}
