//! `qresidual inspect FILE [--json]`: what a model file holds.

use std::path::PathBuf;

use crate::gguf::{inspect_gguf, GgufFile};

/// Show metadata, tensors and per-type totals of a model file.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The model file (GGUF; the first file of a split set opens them all).
    pub file: PathBuf,
    /// Print everything as JSON, with exact value types.
    #[arg(long)]
    pub json: bool,
}

/// The `inspect` output for `args`, as text.
pub fn render(args: &InspectArgs) -> crate::Result<String> {
    // A second format (safetensors) plugs in here, chosen by the file's magic.
    let file = GgufFile::open(&args.file)?;
    Ok(inspect_gguf(&file, args.json))
}

/// Run `inspect`, printing to stdout.
pub fn run(args: &InspectArgs) -> crate::Result<()> {
    let text = render(args)?;
    print!("{text}");
    Ok(())
}
