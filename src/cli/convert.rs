//! `qresidual dequantize` and `qresidual quantize`: the pipeline without a residual.

use std::path::PathBuf;

use clap::Args;

use crate::engine::pipeline::{self, Action};
use crate::engine::tasks::{self, Output};
use crate::format::gguf::GgufFile;
use crate::format::imatrix::Imatrix;
use crate::quant::GgmlType;
use crate::{report, Error, Result};

/// Long help of the command.
pub(super) const DEQUANTIZE_HELP: &str = "\
Expand every quantized tensor of a GGUF model to f32 (default), f16 or bf16, bit-exact with \
llama.cpp's own dequantization. Metadata is kept; general.file_type is updated. F32 tensors \
(norms) stay F32 when the target is f16 or bf16, as llama.cpp's converter keeps them; integer \
tensors are copied.

Example:
  qresidual dequantize model-Q4_K_M.gguf -o model-F32.gguf";

/// Expand a quantized model.
#[derive(Args, Debug)]
pub struct DequantizeArgs {
    /// Input GGUF.
    #[arg(value_name = "IN.gguf")]
    pub input: PathBuf,
    /// Output GGUF.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// f32, f16 or bf16.
    #[arg(long = "type", default_value = "f32", value_name = "TYPE")]
    pub ty: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Split the output into files of at most this size (e.g. 2G).
    #[arg(long, value_parser = super::parse_size, value_name = "SIZE")]
    pub split_max_size: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Long help of the command.
pub(super) const QUANTIZE_HELP: &str = "\
Quantize a GGUF model. TYPE is a ggml type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k … q6_k, iq4_nl, \
iq4_xs, tq1_0, tq2_0, mxfp4, f16, bf16, f32), applied to every tensor llama.cpp would quantize, \
as `llama-quantize --pure` does; or a llama.cpp mix (q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, \
q5_k_s, q5_k_m, q6_k, q8_0, …) with llama.cpp's per-tensor choices. A name that is both (q4_0, q6_k, q8_0, iq4_xs, …) means \
the plain type; write mix:q4_0 for the mix. The bytes equal llama.cpp's \
and do not depend on --threads. A quantized input is dequantized first: requantizing loses \
quality, and a warning says so. --imatrix FILE (llama-imatrix output, GGUF or legacy .dat) \
encodes with importance weights, bytes equal to llama-quantize --imatrix; tensors without an \
entry are quantized unweighted, with a note.

Example:
  qresidual quantize model-F32.gguf -o model-Q4_K_M.gguf --type q4_k_m";

/// Quantize a model.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Input GGUF.
    #[arg(value_name = "IN.gguf")]
    pub input: PathBuf,
    /// Output GGUF.
    #[arg(short, long, value_name = "OUT.gguf")]
    pub output: PathBuf,
    /// A ggml type or a llama.cpp mix.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: String,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the precision report (each tensor against its input) as JSON here.
    #[arg(long, value_name = "REPORT.json")]
    pub report: Option<PathBuf>,
    /// Importance matrix from llama-imatrix (GGUF or legacy .dat): weighted
    /// encoding, bit-exact with llama-quantize --imatrix.
    #[arg(long, value_name = "FILE")]
    pub imatrix: Option<PathBuf>,
    /// Split the output into files of at most this size (e.g. 2G).
    #[arg(long, value_parser = super::parse_size, value_name = "SIZE")]
    pub split_max_size: Option<u64>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

fn dequantized_type(input: GgmlType, target: GgmlType) -> GgmlType {
    if input.is_integer() || (input == GgmlType::F32 && target != GgmlType::F32) {
        input
    } else {
        target
    }
}

/// Run `dequantize`.
pub fn run_dequantize(a: &DequantizeArgs) -> Result<()> {
    if crate::model::bnb::is_bnb_dir(&a.input) {
        return super::bnb::dequantize(a);
    }
    super::set_threads(a.threads)?;
    let target = match GgmlType::from_name(&a.ty) {
        Some(t @ (GgmlType::F32 | GgmlType::F16 | GgmlType::BF16)) => t,
        _ => {
            return Err(Error::Usage(format!(
                "--type {}: dequantize writes f32, f16 or bf16",
                a.ty
            )))
        }
    };
    let model = GgufFile::open(&a.input)?;
    tasks::require_tensors(&model)?;
    crate::format::output::check_output(&a.output, &model.paths())?;
    if a.split_max_size.is_some() {
        crate::format::output::check_split_output(&a.output, &model.paths())?;
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
            progress: !a.quiet,
            measure: false,
            ..Default::default()
        },
    };
    let (_, paths) = tasks::write(&tasks, &metadata, &out)?;
    if !a.quiet {
        eprintln!("wrote {}", pipeline::display_paths(&paths));
    }
    Ok(())
}

/// Run `quantize`.
pub fn run_quantize(a: &QuantizeArgs) -> Result<()> {
    super::set_threads(a.threads)?;
    let target = tasks::parse_target(&a.ty)?;
    let model = GgufFile::open(&a.input)?;
    tasks::require_tensors(&model)?;
    crate::format::output::check_output(&a.output, &model.paths())?;
    if a.split_max_size.is_some() {
        crate::format::output::check_split_output(&a.output, &model.paths())?;
    }
    if let Some(r) = &a.report {
        crate::format::output::check_report(r, &a.output, &model.paths())?;
    }
    if a.imatrix.is_some() {
        tasks::check_imatrix_target(&target)?;
    }
    let imatrix = a.imatrix.as_deref().map(Imatrix::open).transpose()?;
    let types = tasks::output_types(&model, &target)?;
    let tasks = match &imatrix {
        Some(m) => {
            let (tasks, used) = tasks::tasks_with_imatrix(&model, &types, Vec::new(), 1.0, m)?;
            if !a.quiet {
                for n in used.notes(m.path()) {
                    eprintln!("{n}");
                }
            }
            tasks
        }
        None => tasks::tasks(&model, &types, Vec::new(), 1.0)?,
    };
    let requantized = tasks
        .iter()
        .filter(|t| t.input_type.is_quantized() && matches!(t.action, Action::Transcode { .. }))
        .count();
    if requantized > 0 && !a.quiet {
        eprintln!(
            "warning: {requantized} tensor(s) are already quantized and will be dequantized and quantized again, which loses quality; quantize from F32/F16/BF16 when you can"
        );
    }
    let mut metadata = tasks::output_metadata(&model, tasks::file_type(&model, &target), None);
    if let (Some(m), Some(p)) = (&imatrix, &a.imatrix) {
        tasks::add_imatrix_metadata(&mut metadata, m, p);
    }
    let out = Output {
        path: &a.output,
        split_max_size: a.split_max_size,
        options: pipeline::Options {
            progress: !a.quiet,
            measure: a.report.is_some(),
            ..Default::default()
        },
    };
    let (outcomes, paths) = tasks::write(&tasks, &metadata, &out)?;
    if let Some(path) = &a.report {
        let mut inputs = serde_json::json!({"input": a.input.display().to_string(), "type": a.ty});
        if let Some(m) = &a.imatrix {
            inputs["imatrix"] = serde_json::json!(m.display().to_string());
        }
        report::write_json(path, "quantize", inputs, &report::rows(&outcomes))?;
    }
    if !a.quiet {
        eprintln!("wrote {}", pipeline::display_paths(&paths));
    }
    Ok(())
}
