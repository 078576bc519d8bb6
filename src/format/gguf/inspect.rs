//! `inspect` for GGUF: a human summary and a complete, exactly typed JSON
//! dump. Another format plugs in beside [`inspect_gguf`] with its own
//! function; the CLI picks one by the file's magic.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use super::{GgufFile, MetaValue};

/// Items of an array shown in the text summary.
const TEXT_ARRAY_ITEMS: usize = 3;
/// Characters of a string shown in the text summary.
const TEXT_STRING_CHARS: usize = 80;

fn float_json(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else if v.is_nan() {
        json!("nan")
    } else if v > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// A value as JSON: numbers exact (u64/i64 as integers, f32 widened exactly
/// to f64; non-finite floats as the strings `nan`, `inf`, `-inf`), arrays as
/// lists; an array inside an array becomes `{"elem_type", "value"}` so nested
/// element types are not lost.
pub fn value_json(v: &MetaValue) -> Value {
    match v {
        MetaValue::U8(x) => json!(x),
        MetaValue::I8(x) => json!(x),
        MetaValue::U16(x) => json!(x),
        MetaValue::I16(x) => json!(x),
        MetaValue::U32(x) => json!(x),
        MetaValue::I32(x) => json!(x),
        MetaValue::U64(x) => json!(x),
        MetaValue::I64(x) => json!(x),
        MetaValue::F32(x) => float_json(f64::from(*x)),
        MetaValue::F64(x) => float_json(*x),
        MetaValue::Bool(x) => json!(x),
        MetaValue::String(s) => json!(s),
        MetaValue::Array(a) => Value::Array(
            a.items
                .iter()
                .map(|item| match item {
                    MetaValue::Array(inner) => json!({
                        "elem_type": inner.elem_type.name(),
                        "value": value_json(item),
                    }),
                    other => value_json(other),
                })
                .collect(),
        ),
    }
}

#[derive(Default)]
struct Total {
    tensors: u64,
    elements: u64,
    bytes: u64,
}

fn bits_per_weight(t: &Total) -> f64 {
    if t.elements == 0 {
        0.0
    } else {
        t.bytes as f64 * 8.0 / t.elements as f64
    }
}

fn totals(f: &GgufFile) -> (BTreeMap<&'static str, Total>, Total) {
    let mut by_type: BTreeMap<&'static str, Total> = BTreeMap::new();
    let mut all = Total::default();
    for t in f.tensors() {
        let e = by_type.entry(t.ty.name()).or_default();
        for tot in [e, &mut all] {
            tot.tensors += 1;
            tot.elements += t.n_elements();
            tot.bytes += t.size;
        }
    }
    (by_type, all)
}

/// Everything in the file as JSON: metadata in file order with exact types,
/// every tensor, totals per type.
pub fn inspect_json(f: &GgufFile) -> Value {
    let metadata: Vec<Value> = f
        .metadata()
        .iter()
        .map(|(k, v)| {
            let mut o = json!({"key": k, "type": v.value_type().name(), "value": value_json(v)});
            if let MetaValue::Array(a) = v {
                o["elem_type"] = json!(a.elem_type.name());
                o["len"] = json!(a.items.len());
            }
            o
        })
        .collect();
    let tensors: Vec<Value> = f
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ty.name(),
                "type_id": t.ty.id(),
                "shape": t.shape(),
                "ne": t.ne,
                "n_elements": t.n_elements(),
                "offset": t.offset,
                "size": t.size,
                "file": t.file,
                "file_offset": f.data_offset(t.file) + t.offset,
            })
        })
        .collect();
    let (by_type, all) = totals(f);
    let by_type: Vec<Value> = by_type
        .iter()
        .map(|(name, t)| {
            json!({"type": name, "tensors": t.tensors, "elements": t.elements,
                   "bytes": t.bytes, "bits_per_weight": bits_per_weight(t)})
        })
        .collect();
    json!({
        "format": "gguf",
        "files": f.paths().iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "version": f.version(),
        "alignment": f.alignment(),
        "metadata": metadata,
        "tensors": tensors,
        "totals": {
            "by_type": by_type,
            "tensors": all.tensors,
            "elements": all.elements,
            "bytes": all.bytes,
            "bits_per_weight": bits_per_weight(&all),
        },
    })
}

fn short_string(s: &str) -> String {
    let n = s.chars().count();
    if n <= TEXT_STRING_CHARS {
        format!("{s:?}")
    } else {
        let head: String = s.chars().take(TEXT_STRING_CHARS).collect();
        format!("{head:?}… ({} bytes)", s.len())
    }
}

fn type_text(v: &MetaValue) -> String {
    match v {
        MetaValue::Array(a) => format!("arr[{}; {}]", a.elem_type.name(), a.items.len()),
        other => other.value_type().name().to_string(),
    }
}

fn value_text(v: &MetaValue) -> String {
    match v {
        MetaValue::String(s) => short_string(s),
        MetaValue::Array(a) => {
            let shown: Vec<String> = a
                .items
                .iter()
                .take(TEXT_ARRAY_ITEMS)
                .map(value_text)
                .collect();
            let more = a.items.len().saturating_sub(TEXT_ARRAY_ITEMS);
            let tail = if more > 0 {
                format!(", … +{more}")
            } else {
                String::new()
            };
            format!("[{}{tail}]", shown.join(", "))
        }
        MetaValue::F32(x) => format!("{x:?}"),
        MetaValue::F64(x) => format!("{x:?}"),
        MetaValue::Bool(x) => x.to_string(),
        other => other
            .as_i64()
            .map(|i| i.to_string())
            .or_else(|| other.as_u64().map(|u| u.to_string()))
            .unwrap_or_default(),
    }
}

fn dims(v: &[u64]) -> String {
    let parts: Vec<String> = v.iter().map(u64::to_string).collect();
    format!("[{}]", parts.join(", "))
}

/// `inspect` output for a GGUF model: JSON (pretty, complete) when `json`,
/// otherwise a summary for people.
pub fn inspect_gguf(f: &GgufFile, json: bool) -> String {
    if json {
        let mut s = serde_json::to_string_pretty(&inspect_json(f)).unwrap_or_default();
        s.push('\n');
        return s;
    }
    let mut out = String::new();
    let paths = f.paths();
    let _ = writeln!(
        out,
        "GGUF v{}, alignment {}, {} metadata keys, {} tensors, {} file(s)",
        f.version(),
        f.alignment(),
        f.metadata().len(),
        f.tensors().len(),
        paths.len()
    );
    for p in &paths {
        let _ = writeln!(out, "  {}", p.display());
    }
    let _ = writeln!(out, "\nMetadata:");
    let kw = f.metadata().iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let tw = f
        .metadata()
        .iter()
        .map(|(_, v)| type_text(v).len())
        .max()
        .unwrap_or(0);
    for (k, v) in f.metadata() {
        let _ = writeln!(out, "  {k:kw$}  {:tw$}  {}", type_text(v), value_text(v));
    }
    let _ = writeln!(out, "\nTensors:");
    let nw = f
        .tensors()
        .iter()
        .map(|t| t.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let _ = writeln!(
        out,
        "  {:>5}  {:nw$}  {:7}  {:22}  {:22}  {:>12}  {:>12}  file",
        "#", "name", "type", "shape (row-major)", "ne (ggml)", "bytes", "offset"
    );
    for (i, t) in f.tensors().iter().enumerate() {
        let _ = writeln!(
            out,
            "  {i:>5}  {:nw$}  {:7}  {:22}  {:22}  {:>12}  {:>12}  {}",
            t.name,
            t.ty.name(),
            dims(&t.shape()),
            dims(&t.ne),
            t.size,
            t.offset,
            t.file
        );
    }
    let (by_type, all) = totals(f);
    let _ = writeln!(out, "\nTotals:");
    let _ = writeln!(
        out,
        "  {:7}  {:>7}  {:>14}  {:>14}  {:>8}",
        "type", "tensors", "elements", "bytes", "bpw"
    );
    for (name, t) in by_type.iter().map(|(n, t)| (*n, t)).chain([("all", &all)]) {
        let _ = writeln!(
            out,
            "  {name:7}  {:>7}  {:>14}  {:>14}  {:>8.4}",
            t.tensors,
            t.elements,
            t.bytes,
            bits_per_weight(t)
        );
    }
    out
}
