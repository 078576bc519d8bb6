//! `qresidual compare`: two models, tensor by tensor.

use std::path::PathBuf;

use clap::Args;

use crate::engine::log::Log;
use crate::model::Model;
use crate::ops::compare;
use crate::Result;

/// Compare two models.
#[derive(Args, Debug)]
#[command(long_about = "\
Compare two models tensor by tensor, B against A as the reference: RMSE, max abs, relative RMSE, \
cosine and SNR per tensor and over all weights, and the worst tensors.

Either model may be GGUF (any type qresidual decodes) or a Hugging Face safetensors checkpoint \
(F16, BF16, F32). Names are paired as apply pairs them: directly when both have the same format, \
through the Hugging Face → GGUF name table (with llama's q/k row order) when one is GGUF. Tensors \
in only one model, or with different shapes, are listed and skipped.

Example:
  qresidual compare Llama-3.1-8B-Instruct/ Llama-3.1-8B-Instruct-Q4_K_M.gguf --json cmp.json --html cmp.html")]
pub struct CompareArgs {
    /// The reference model (GGUF, safetensors file or folder, bitsandbytes folder, or a reference: user/repo[:QUANT], ollama:NAME, lmstudio:…).
    #[arg(value_name = "A")]
    pub a: PathBuf,
    /// The model measured against A.
    #[arg(value_name = "B")]
    pub b: PathBuf,
    /// Write the full comparison as JSON here ('-' for stdout).
    #[arg(long, value_name = "OUT.json")]
    pub json: Option<PathBuf>,
    /// Write the comparison as a self-contained HTML page here (heat map per layer).
    #[arg(long, value_name = "OUT.html")]
    pub html: Option<PathBuf>,
    /// How many of the worst tensors to list.
    #[arg(long, default_value_t = 10)]
    pub worst: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No text summary.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub refs: super::ModelRefArgs,
}

/// Run `compare`.
pub fn run(a: &CompareArgs, console: &Log) -> Result<super::Done> {
    super::set_threads(a.threads)?;
    let ma = Model::open(&a.refs.locate(&a.a, a.quiet)?)?;
    let mb = Model::open(&a.refs.locate(&a.b, a.quiet)?)?;
    let c = compare::compare(&ma, &mb)?;
    let j = compare::to_json(&a.a.display().to_string(), &a.b.display().to_string(), &c);
    if let Some(path) = &a.html {
        crate::format::output::check_output(path, &[a.a.clone(), a.b.clone()])?;
        crate::report::write_report(path, &j)?;
    }
    let mut stdout = String::new();
    if let Some(path) = &a.json {
        let text = serde_json::to_string_pretty(&j).expect("comparison serializes") + "\n";
        if path.as_os_str() == "-" {
            stdout = text;
        } else {
            std::fs::write(path, text).map_err(|e| crate::Error::io(path, e))?;
        }
    }
    super::unless_quiet(console, a.quiet).info(&compare::to_text(&c, a.worst));
    Ok(super::Done {
        stdout,
        outputs: Vec::new(),
    })
}
