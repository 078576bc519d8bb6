//! `inspect`: what a model holds, from its headers only (instant on any
//! size), as text or JSON, for every format [`Format::detect`] knows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::format::gguf::{inspect_gguf, GgufFile};
use crate::format::st::SafetensorsModel;
use crate::model::bnb::{torch_name, BnbModel, Method, Storage};
use crate::model::fp8::dtype_of;
use crate::model::fp8::WHOLE;
use crate::model::Format;
use crate::Result;

/// What `path` holds, as text (or pretty JSON when `as_json`).
pub fn inspect(path: &Path, as_json: bool) -> Result<String> {
    Ok(match Format::detect(path)? {
        Format::Gguf => inspect_gguf(&GgufFile::open(path)?, as_json),
        Format::Bitsandbytes | Format::Fp8 | Format::Mlx | Format::Packed | Format::Gptq => {
            inspect_bnb(&BnbModel::open(path)?, as_json)
        }
        Format::Safetensors => inspect_safetensors(&SafetensorsModel::open(path)?, as_json),
    })
}

fn dtype_name(d: safetensors::Dtype) -> String {
    format!("{d:?}")
}

/// Per dtype: (tensors, elements, bytes).
type DtypeTotals = BTreeMap<String, (usize, u64, u64)>;

/// The `inspect` output for a safetensors model.
pub fn inspect_safetensors(m: &SafetensorsModel, as_json: bool) -> String {
    let mut per_dtype = DtypeTotals::new();
    for t in m.tensors() {
        let e = per_dtype.entry(dtype_name(t.dtype)).or_default();
        e.0 += 1;
        e.1 += t.n_elements() as u64;
        e.2 += (t.end - t.start) as u64;
    }
    if as_json {
        safetensors_json(m, &per_dtype)
    } else {
        safetensors_text(m, &per_dtype)
    }
}

fn safetensors_json(m: &SafetensorsModel, per_dtype: &DtypeTotals) -> String {
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
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

fn safetensors_text(m: &SafetensorsModel, per_dtype: &DtypeTotals) -> String {
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
    for (k, (n, e, b)) in per_dtype {
        let _ = writeln!(s, "{k:<6} {n:>8} {e:>15} {b:>15}");
    }
    s
}

fn weight_json(model: &BnbModel, i: usize) -> Value {
    let w = &model.weights()[i];
    let mut v = json!({
        "name": w.name,
        "shape": w.shape,
        "storage": w.storage.label(),
        "quantized": w.storage.is_quantized(),
        "bytes": model.stored_bytes(i),
    });
    if let Storage::FourBit {
        blocksize,
        dtype,
        nested_offset,
        ..
    } = &w.storage
    {
        v["blocksize"] = json!(blocksize);
        v["dtype"] = json!(torch_name(*dtype));
        v["double_quant"] = json!(nested_offset.is_some());
        if let Some(o) = nested_offset {
            v["nested_offset"] = json!(o);
        }
    }
    if let Storage::Mlx(layout) = &w.storage {
        v["bits"] = json!(layout.bits);
        v["group_size"] = json!(layout.group_size);
        v["dtype"] = json!(torch_name(layout.dtype()));
    }
    if let Storage::Fp8(layout) = &w.storage {
        v["scale_block"] = json!(block_name(layout.block));
        v["scale_dtype"] = json!(torch_name(layout.scale_dtype()));
    }
    v
}

/// An FP8 scale block as `128x128`, `channel` or `tensor`.
fn block_name(block: (usize, usize)) -> String {
    match block {
        (1, WHOLE) => "channel".into(),
        (WHOLE, WHOLE) => "tensor".into(),
        (r, c) => format!("{r}x{c}"),
    }
}

/// `inspect` of a bitsandbytes or FP8 folder: the logical weights, then the
/// stored tensors as for any safetensors model.
// Long because the text and the JSON forms list the same fields side by
// side, so that one cannot gain a field the other lacks.
pub fn inspect_bnb(model: &BnbModel, as_json: bool) -> String {
    let st = inspect_safetensors(model.safetensors(), as_json);
    if as_json {
        let weights: Vec<Value> = (0..model.weights().len())
            .map(|i| weight_json(model, i))
            .collect();
        let st: Value = serde_json::from_str(&st).expect("inspect writes JSON");
        let v = json!({
            "format": match model.method() {
                Method::Bitsandbytes => "bitsandbytes",
                Method::Fp8 => "fp8",
                Method::Mlx => "mlx",
                Method::Packed => "pack-quantized",
                Method::Gptq => "gptq",
            },
            "path": model.path().display().to_string(),
            "quantization_config": model.config()["quantization_config"],
            "weights": weights,
            "safetensors": st,
        });
        return serde_json::to_string_pretty(&v).expect("json") + "\n";
    }
    let mut s = String::new();
    let n_q = model
        .weights()
        .iter()
        .filter(|w| w.storage.is_quantized())
        .count();
    let _ = writeln!(
        s,
        "{}: Hugging Face {} model, {} weights ({} quantized)",
        model.path().display(),
        model.method().name(),
        model.weights().len(),
        n_q
    );
    let _ = writeln!(
        s,
        "quantization_config: {}",
        model.config()["quantization_config"]
    );
    let _ = writeln!(
        s,
        "\n{:<52} {:>7} {:>14} {:>9} {:>8} {:>11} {:>12}",
        "weight", "storage", "shape", "blocksize", "dtype", "double quant", "bytes"
    );
    for (i, w) in model.weights().iter().enumerate() {
        let (bs, dt, dq) = match &w.storage {
            Storage::FourBit {
                blocksize,
                dtype,
                nested_offset,
                ..
            } => (
                blocksize.to_string(),
                torch_name(*dtype).to_string(),
                if nested_offset.is_some() { "yes" } else { "no" }.to_string(),
            ),
            Storage::Int8 => ("row".into(), "float16".into(), "-".into()),
            Storage::Packed(layout) => (
                layout.group_size.to_string(),
                torch_name(layout.dtype()).to_string(),
                "-".into(),
            ),
            Storage::Gptq(layout) => (
                layout.group_size.to_string(),
                torch_name(dtype_of(layout.precision)).to_string(),
                "-".into(),
            ),
            Storage::Mlx(layout) => (
                layout.group_size.to_string(),
                torch_name(layout.dtype()).to_string(),
                "-".into(),
            ),
            Storage::Fp8(layout) => (
                block_name(layout.block),
                torch_name(layout.scale_dtype()).to_string(),
                "-".into(),
            ),
            Storage::Plain(_) => ("-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            s,
            "{:<52} {:>7} {:>14} {:>9} {:>8} {:>11} {:>12}",
            w.name,
            w.storage.label(),
            format!("{:?}", w.shape),
            bs,
            dt,
            dq,
            model.stored_bytes(i)
        );
    }
    let _ = writeln!(s, "\nstored tensors:");
    s.push_str(&st);
    s
}
