//! `qresidual metadata IN.gguf -o OUT.gguf [--set k=type:v]… [--set-file k=PATH]… [--remove k]…`:
//! copy a model with edited metadata; with no edit the copy is byte-identical.

use std::path::PathBuf;

use crate::format::gguf::{edit_metadata, parse_edits};

/// Copy a GGUF model with metadata edits.
#[derive(clap::Args, Debug)]
pub struct MetadataArgs {
    /// Input model (the first file of a split set copies the whole set).
    pub input: PathBuf,
    /// Output path; must differ from the input. Written atomically.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Set KEY to a typed value: `KEY=TYPE:VALUE`, TYPE one of
    /// u8 i8 u16 i16 u32 i32 u64 i64 f32 f64 bool str.
    #[arg(long = "set", value_name = "KEY=TYPE:VALUE")]
    pub set: Vec<String>,
    /// Set KEY to the text of a file (a string), e.g. a chat template.
    #[arg(long = "set-file", value_name = "KEY=PATH")]
    pub set_file: Vec<String>,
    /// Remove KEY (it must exist). Removals apply before sets.
    #[arg(long = "remove", value_name = "KEY")]
    pub remove: Vec<String>,
}

/// Run `metadata`: the written paths, one a line, are the command's stdout.
pub fn run(args: &MetadataArgs) -> crate::Result<super::Done> {
    let edits = parse_edits(&args.set, &args.set_file, &args.remove)?;
    let outputs = edit_metadata(&args.input, &args.output, &edits)?;
    let stdout = outputs
        .iter()
        .map(|p| format!("{}\n", p.display()))
        .collect();
    Ok(super::Done { stdout, outputs })
}
