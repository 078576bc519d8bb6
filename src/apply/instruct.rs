//! Instruct metadata for a GGUF made from a base: the chat template and the
//! end-of-sequence / end-of-turn ids taken from the instruct model's
//! `tokenizer_config.json` (and `generation_config.json`), as gguf-py's
//! `SpecialVocab` reads them, so the model stops where the instruct model stops.
//!
//! Token ids are looked up by text in the base's own `tokenizer.ggml.tokens`
//! (the instruct model shares the base's vocabulary), so no `tokenizer.json`
//! is needed.

use std::path::Path;

use serde_json::Value;

use crate::engine::log::Log;
use crate::format::gguf::{apply_edits, parse_edits, GgufFile, MetaEdit, MetaValue};
use crate::{Error, Result};

/// `tokenizer.chat_template`.
pub const KEY_CHAT_TEMPLATE: &str = "tokenizer.chat_template";
/// `tokenizer.ggml.eos_token_id`.
pub const KEY_EOS: &str = "tokenizer.ggml.eos_token_id";
/// `tokenizer.ggml.eot_token_id`.
pub const KEY_EOT: &str = "tokenizer.ggml.eot_token_id";
/// `tokenizer.ggml.bos_token_id`.
pub const KEY_BOS: &str = "tokenizer.ggml.bos_token_id";

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("not JSON: {e}")))
}

/// A special token's text: `"<|eot_id|>"` or `{"content": "<|eot_id|>", …}`.
fn token_text(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// Id of `text` in the base's vocabulary.
fn token_id(base: &GgufFile, text: &str) -> Option<u32> {
    let tokens = base.get("tokenizer.ggml.tokens")?.as_array()?;
    tokens
        .items
        .iter()
        .position(|t| t.as_str() == Some(text))
        .map(|i| i as u32)
}

fn n_vocab(base: &GgufFile) -> Option<u64> {
    base.get("tokenizer.ggml.tokens")
        .and_then(|v| v.as_array())
        .map(|a| a.items.len() as u64)
}

/// The metadata edits `--tokenizer-config` and `--generation-config` ask for,
/// with notes for the user.
pub fn edits(
    base: &GgufFile,
    tokenizer_config: Option<&Path>,
    generation_config: Option<&Path>,
) -> Result<(Vec<MetaEdit>, Vec<String>)> {
    let mut edits = Vec::new();
    let mut notes = Vec::new();
    let mut eos: Option<u32> = None;
    if let Some(path) = tokenizer_config {
        eos = tokenizer_config_edits(base, path, &mut edits, &mut notes)?;
    }
    if let Some(path) = generation_config {
        eos = generation_config_edits(base, path, eos, &mut edits, &mut notes)?;
    }
    if let Some(e) = eos {
        // The instruct model's end of sequence is its end of turn.
        edits.push(MetaEdit::Set(KEY_EOT.into(), MetaValue::U32(e)));
    }
    Ok((edits, notes))
}

/// Chat template, special token ids and add-token flags from
/// `tokenizer_config.json`; returns the eos id it sets, if any.
fn tokenizer_config_edits(
    base: &GgufFile,
    path: &Path,
    edits: &mut Vec<MetaEdit>,
    notes: &mut Vec<String>,
) -> Result<Option<u32>> {
    let tc = read_json(path)?;
    match tc.get("chat_template") {
        Some(Value::String(t)) => {
            edits.push(MetaEdit::Set(
                KEY_CHAT_TEMPLATE.into(),
                MetaValue::String(t.clone()),
            ));
        }
        Some(Value::Array(list)) => edits.extend(named_chat_templates(list)),
        Some(_) => {
            return Err(Error::format(
                path,
                "chat_template is neither a string nor a list of {name, template}",
            ))
        }
        None => notes.push(format!("{} has no chat_template", path.display())),
    }
    let mut eos = None;
    for (field, key) in [("eos_token", KEY_EOS), ("bos_token", KEY_BOS)] {
        let Some(text) = tc.get(field).and_then(token_text) else {
            continue;
        };
        let id = token_id(base, text).ok_or_else(|| {
            Error::Mismatch(format!(
                "{}: {field} '{text}' is not in the vocabulary of {}",
                path.display(),
                base.path().display()
            ))
        })?;
        edits.push(MetaEdit::Set(key.into(), MetaValue::U32(id)));
        if field == "eos_token" {
            eos = Some(id);
        }
    }
    for typ in ["bos", "eos"] {
        if let Some(b) = tc.get(format!("add_{typ}_token")).and_then(Value::as_bool) {
            edits.push(MetaEdit::Set(
                format!("tokenizer.ggml.add_{typ}_token"),
                MetaValue::Bool(b),
            ));
        }
    }
    Ok(eos)
}

/// A `chat_template` given as a list of `{name, template}`, written as
/// GGUFWriter.add_chat_template does: "default" is the template, the others
/// are tokenizer.chat_template.<name>, listed in tokenizer.chat_templates.
fn named_chat_templates(list: &[Value]) -> Vec<MetaEdit> {
    let mut edits = Vec::new();
    let mut names = Vec::new();
    for choice in list {
        let name: String = choice
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let Some(t) = choice.get("template").and_then(Value::as_str) else {
            continue;
        };
        if name == "default" {
            edits.push(MetaEdit::Set(
                KEY_CHAT_TEMPLATE.into(),
                MetaValue::String(t.to_string()),
            ));
        } else if !name.is_empty() {
            edits.push(MetaEdit::Set(
                format!("{KEY_CHAT_TEMPLATE}.{name}"),
                MetaValue::String(t.to_string()),
            ));
            names.push(MetaValue::String(name));
        }
    }
    if !names.is_empty() {
        edits.push(MetaEdit::Set(
            "tokenizer.chat_templates".into(),
            MetaValue::Array(crate::format::gguf::MetaArray {
                elem_type: crate::format::gguf::ValueType::String,
                items: names,
            }),
        ));
    }
    edits
}

/// The eos id from `generation_config.json`, used only when
/// `tokenizer_config.json` named none; returns the eos id now in force.
fn generation_config_edits(
    base: &GgufFile,
    path: &Path,
    eos: Option<u32>,
    edits: &mut Vec<MetaEdit>,
    notes: &mut Vec<String>,
) -> Result<Option<u32>> {
    let gc = read_json(path)?;
    let ids: Vec<u64> = match gc.get("eos_token_id") {
        Some(Value::Number(n)) => n.as_u64().into_iter().collect(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
        _ => Vec::new(),
    };
    match (eos, ids.last()) {
        (Some(e), _) if ids.is_empty() || ids.contains(&(e as u64)) => {}
        (Some(e), _) => notes.push(format!(
            "{}: eos_token_id {ids:?} does not include the tokenizer_config's eos {e}; keeping {e}",
            path.display()
        )),
        (None, Some(&last)) => {
            // Llama 3.1 lists [end_of_text, eom, eot]: the last is the end of turn.
            let id = u32::try_from(last)
                .ok()
                .filter(|&i| n_vocab(base).is_none_or(|n| (i as u64) < n))
                .ok_or_else(|| {
                    Error::Mismatch(format!(
                        "{}: eos_token_id {last} is outside the vocabulary of {}",
                        path.display(),
                        base.path().display()
                    ))
                })?;
            edits.push(MetaEdit::Set(KEY_EOS.into(), MetaValue::U32(id)));
            return Ok(Some(id));
        }
        (None, None) => notes.push(format!("{} has no eos_token_id", path.display())),
    }
    Ok(eos)
}

/// Apply the instruct metadata and then the `--set KEY=TYPE:VALUE` edits to
/// `metadata`, telling `log` what was taken from where.
pub fn apply(
    metadata: &mut Vec<(String, MetaValue)>,
    base: &GgufFile,
    tokenizer_config: Option<&Path>,
    generation_config: Option<&Path>,
    set: &[String],
    log: &Log,
) -> Result<()> {
    let (mut all, notes) = edits(base, tokenizer_config, generation_config)?;
    all.extend(parse_edits(set, &[], &[])?);
    for n in notes {
        log.note(&n);
    }
    apply_edits(metadata, &all)
}
