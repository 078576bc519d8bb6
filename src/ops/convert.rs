//! `dequantize` and `quantize`: the engine without a residual, for every
//! format that has a dequantized or quantized form (GGUF files, and
//! bitsandbytes folders for `dequantize`).

use std::path::PathBuf;

use serde_json::json;

use crate::engine::bnb::write_model;
use crate::engine::log::Log;
use crate::engine::pipeline::{self, Action};
use crate::engine::tasks::{self, Output};
use crate::format::gguf::GgufFile;
use crate::format::imatrix::Imatrix;
use crate::format::output::{check_output, check_report, check_split_output};
use crate::model::bnb::{check_output_dir, BnbModel, WeightJob, WriteOptions};
use crate::model::bnb_target::{config_for, out_storage, parse_target};
use crate::model::Model;
use crate::quant::GgmlType;
use crate::report::{self, Row};
use crate::{Error, Result};

/// A `dequantize` run.
#[derive(Debug, Clone)]
pub struct DequantizeRequest {
    /// GGUF file or bitsandbytes folder.
    pub input: PathBuf,
    /// Output file (GGUF) or folder (bitsandbytes).
    pub output: PathBuf,
    /// `f32`, `f16` or `bf16`.
    pub target: String,
    /// Split the GGUF output into files of at most this many bytes.
    pub split_max_size: Option<u64>,
}

/// A `quantize` run.
#[derive(Debug, Clone)]
pub struct QuantizeRequest {
    /// GGUF file.
    pub input: PathBuf,
    /// Output GGUF file.
    pub output: PathBuf,
    /// A ggml type or a llama.cpp mix.
    pub target: String,
    /// Write the precision report (each tensor against its input) here.
    pub report: Option<PathBuf>,
    /// llama-imatrix output: weighted encoding.
    pub imatrix: Option<PathBuf>,
    /// Split the output into files of at most this many bytes.
    pub split_max_size: Option<u64>,
}

/// What a conversion wrote.
#[derive(Debug)]
pub struct Converted {
    /// Files (or the folder) written.
    pub outputs: Vec<PathBuf>,
    /// Per tensor statistics (measured by `quantize` when a report is asked).
    pub tensors: Vec<Row>,
}

fn dequantized_type(input: GgmlType, target: GgmlType) -> GgmlType {
    if input.is_integer() || (input == GgmlType::F32 && target != GgmlType::F32) {
        input
    } else {
        target
    }
}

/// Expand every quantized tensor of a GGUF file or bitsandbytes folder.
pub fn dequantize(a: &DequantizeRequest, log: &Log) -> Result<Converted> {
    let model = match Model::open(&a.input)? {
        Model::Gguf(g) => g,
        Model::Bitsandbytes(b) | Model::Fp8(b) | Model::Mlx(b) | Model::Packed(b) | Model::Gptq(b) => return dequantize_bnb(a, &b, log),
        Model::Safetensors(_) => {
            return Err(Error::Usage(format!(
                "{}: a safetensors checkpoint is already dequantized (dequantize reads GGUF files, bitsandbytes and FP8 folders)",
                a.input.display()
            )))
        }
    };
    let target = match GgmlType::from_name(&a.target) {
        Some(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) => t,
        _ => {
            return Err(Error::Usage(format!(
                "--type {}: dequantize writes f32, f16 or bf16",
                a.target
            )))
        }
    };
    tasks::require_tensors(&model)?;
    check_output(&a.output, &model.paths())?;
    if a.split_max_size.is_some() {
        check_split_output(&a.output, &model.paths())?;
    }
    let types: Vec<GgmlType> = model
        .tensors()
        .iter()
        .map(|t| dequantized_type(t.ty, target))
        .collect();
    let tasks = tasks::tasks(&model, &types, Vec::new(), 1.0)?;
    let file_type = match target {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        _ => 32,
    };
    let metadata = tasks::output_metadata(&model, Some(file_type), None);
    let out = Output {
        path: &a.output,
        split_max_size: a.split_max_size,
        options: pipeline::Options {
            progress: log.progress().clone(),
            measure: false,
            ..Default::default()
        },
    };
    let (_, outputs) = tasks::write(&tasks, &metadata, &out)?;
    Ok(Converted {
        outputs,
        tensors: Vec::new(),
    })
}

/// Quantize a GGUF model to a ggml type or a llama.cpp mix.
pub fn quantize(a: &QuantizeRequest, log: &Log) -> Result<Converted> {
    let target = tasks::parse_target(&a.target)?;
    let model = GgufFile::open(&a.input)?;
    tasks::require_tensors(&model)?;
    check_output(&a.output, &model.paths())?;
    if a.split_max_size.is_some() {
        check_split_output(&a.output, &model.paths())?;
    }
    if let Some(r) = &a.report {
        check_report(r, &a.output, &model.paths())?;
    }
    if a.imatrix.is_some() {
        tasks::check_imatrix_target(&target)?;
    }
    let imatrix = a.imatrix.as_deref().map(Imatrix::open).transpose()?;
    let types = tasks::output_types(&model, &target)?;
    let tasks = match &imatrix {
        Some(m) => {
            let (tasks, used) = tasks::tasks_with_imatrix(&model, &types, Vec::new(), 1.0, m)?;
            for n in used.notes(m.path()) {
                log.info(&format!("{n}\n"));
            }
            tasks
        }
        None => tasks::tasks(&model, &types, Vec::new(), 1.0)?,
    };
    let requantized = tasks
        .iter()
        .filter(|t| t.input_type.is_quantized() && matches!(t.action, Action::Transcode { .. }))
        .count();
    if requantized > 0 {
        log.warn(&format!(
            "{requantized} tensor(s) are already quantized and will be dequantized and quantized again, which loses quality; quantize from F32/F16/BF16 when you can"
        ));
    }
    let mut metadata = tasks::output_metadata(&model, tasks::file_type(&model, &target), None);
    if let (Some(m), Some(p)) = (&imatrix, &a.imatrix) {
        tasks::add_imatrix_metadata(&mut metadata, m, p);
    }
    let out = Output {
        path: &a.output,
        split_max_size: a.split_max_size,
        options: pipeline::Options {
            progress: log.progress().clone(),
            measure: a.report.is_some(),
            ..Default::default()
        },
    };
    let (outcomes, outputs) = tasks::write(&tasks, &metadata, &out)?;
    let rows = report::rows(&outcomes);
    if let Some(path) = &a.report {
        let mut inputs = json!({"input": a.input.display().to_string(), "type": a.target});
        if let Some(m) = &a.imatrix {
            inputs["imatrix"] = json!(m.display().to_string());
        }
        report::write_report(path, &report::to_json("quantize", inputs, &rows))?;
    }
    Ok(Converted {
        outputs,
        tensors: rows,
    })
}

/// `dequantize` of a bitsandbytes folder into plain F16/BF16/F32 safetensors.
fn dequantize_bnb(a: &DequantizeRequest, model: &BnbModel, log: &Log) -> Result<Converted> {
    if a.split_max_size.is_some() {
        return Err(Error::Usage(
            "--split-max-size applies to GGUF outputs; a bitsandbytes folder keeps its shards"
                .into(),
        ));
    }
    let target = parse_target(&a.target, model.method(), false)?;
    let mut inputs = model.paths();
    inputs.push(model.path().to_path_buf());
    check_output_dir(&a.output, &inputs)?;
    let jobs: Vec<WeightJob<'_>> = model
        .weights()
        .iter()
        .enumerate()
        .map(|(i, w)| WeightJob {
            weight: i,
            out: out_storage(model, &w.storage, target),
            residual: None,
            scale: 1.0,
        })
        .collect();
    let config = config_for(model, &jobs, target);
    let opts = WriteOptions {
        measure: false,
        ..Default::default()
    };
    write_model(model, &jobs, &config, &a.output, &opts, log.progress())?;
    Ok(Converted {
        outputs: vec![a.output.clone()],
        tensors: Vec::new(),
    })
}
