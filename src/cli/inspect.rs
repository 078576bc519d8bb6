//! `qresidual inspect FILE [--json]`: what a model file holds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::json;

use crate::format::gguf::is_gguf;
use crate::format::gguf::{inspect_gguf, GgufFile};
use crate::format::st::SafetensorsModel;

/// Long help of the command.
pub(super) const INSPECT_HELP: &str = "\
Show what a model file holds, reading headers only (instant on any size).

GGUF: metadata (arrays summarized; --json gives every value with its exact type), a tensor table \
(name, type, shape row-major and in ggml's ne order, bytes, offset), totals per type and bits per \
weight. The first file of a split set opens the whole set.

Safetensors: a .safetensors file, a folder of shards with model.safetensors.index.json, or the \
index itself: __metadata__, every tensor's dtype, shape and shard, totals per dtype.";

/// Show metadata, tensors and per-type totals of a model file.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The model: GGUF file, .safetensors file, or folder of safetensors shards.
    pub file: PathBuf,
    /// Print everything as JSON, with exact value types.
    #[arg(long)]
    pub json: bool,
}

fn dtype_name(d: safetensors::Dtype) -> String {
    format!("{d:?}")
}

/// The `inspect` output for a safetensors model.
pub fn inspect_safetensors(m: &SafetensorsModel, as_json: bool) -> String {
    let mut per_dtype: BTreeMap<String, (usize, u64, u64)> = BTreeMap::new();
    for t in m.tensors() {
        let e = per_dtype.entry(dtype_name(t.dtype)).or_default();
        e.0 += 1;
        e.1 += t.n_elements() as u64;
        e.2 += (t.end - t.start) as u64;
    }
    if as_json {
        let tensors: Vec<_> = m
            .tensors()
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "dtype": dtype_name(t.dtype),
                    "shape": t.shape,
                    "bytes": t.end - t.start,
                    "shard": m.shard_paths()[t.shard].display().to_string(),
                })
            })
            .collect();
        let totals: serde_json::Map<_, _> = per_dtype
            .iter()
            .map(|(k, (n, e, b))| (k.clone(), json!({"tensors": n, "elements": e, "bytes": b})))
            .collect();
        let v = json!({
            "format": "safetensors",
            "path": m.path().display().to_string(),
            "shards": m.shard_paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "metadata": m.metadata(),
            "tensors": tensors,
            "totals": totals,
        });
        return serde_json::to_string_pretty(&v).expect("json") + "\n";
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: safetensors, {} shard(s), {} tensors",
        m.path().display(),
        m.shard_paths().len(),
        m.tensors().len()
    );
    if !m.metadata().is_empty() {
        let _ = writeln!(s, "\nmetadata:");
        for (k, v) in m.metadata() {
            let shown: String = v.chars().take(100).collect();
            let more = if v.chars().count() > 100 { "…" } else { "" };
            let _ = writeln!(s, "  {k} = {shown}{more}");
        }
    }
    let _ = writeln!(
        s,
        "\n{:<60} {:>6} {:>20} {:>12}  shard",
        "tensor", "dtype", "shape", "bytes"
    );
    for t in m.tensors() {
        let shard = m.shard_paths()[t.shard]
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "{:<60} {:>6} {:>20} {:>12}  {shard}",
            t.name,
            dtype_name(t.dtype),
            format!("{:?}", t.shape),
            t.end - t.start
        );
    }
    let _ = writeln!(
        s,
        "\n{:<6} {:>8} {:>15} {:>15}",
        "dtype", "tensors", "elements", "bytes"
    );
    for (k, (n, e, b)) in &per_dtype {
        let _ = writeln!(s, "{k:<6} {n:>8} {e:>15} {b:>15}");
    }
    s
}

/// The `inspect` output for `args`, as text.
pub fn render(args: &InspectArgs) -> crate::Result<String> {
    if crate::model::bnb::is_bnb_dir(&args.file) {
        return super::bnb::inspect(args);
    }
    if is_gguf(&args.file) {
        let file = GgufFile::open(&args.file)?;
        Ok(inspect_gguf(&file, args.json))
    } else {
        let m = SafetensorsModel::open(&args.file)?;
        Ok(inspect_safetensors(&m, args.json))
    }
}

/// Run `inspect`, printing to stdout.
pub fn run(args: &InspectArgs) -> crate::Result<()> {
    let text = render(args)?;
    print!("{text}");
    Ok(())
}
