//! A whole GGUF model through the pipeline: which tensors are copied, which
//! are re-encoded (with or without a residual), and the output file.

use std::path::{Path, PathBuf};

use crate::engine::pipeline::{self, Action, Outcome, Task};
use crate::format::gguf::{GgufFile, GgufWriter, MetaValue, TensorInfo, TensorSpec, WriterOptions};
use crate::model::mix::{self, plan_types, ModelFacts, Target, TensorDesc};
use crate::model::naming::RowPermutation;
use crate::model::rows::{EncodedRows, RowSource};
use crate::quant::{codec, GgmlType};
use crate::{Error, Result};

/// The rows of base tensor `index`, in its own encoding.
pub fn base_rows(base: &GgufFile, index: usize) -> EncodedRows<'_> {
    let t = &base.tensors()[index];
    EncodedRows {
        path: base.path(),
        name: &t.name,
        data: base.tensor_data(index),
        ty: t.ty,
        row_len: t.row_len() as usize,
        n_rows: t.n_rows() as usize,
        permutation: RowPermutation::Identity,
        pages: Some(base),
    }
}

/// One task per base tensor: copied when neither type nor values change,
/// re-encoded otherwise. Tensors that cannot be produced are listed in one
/// error with the nearest type that can.
pub fn tasks<'a>(
    base: &'a GgufFile,
    out_types: &[GgmlType],
    residuals: Vec<Option<Box<dyn RowSource + 'a>>>,
    scale: f32,
) -> Result<Vec<Task<'a>>> {
    build_tasks(base, out_types, residuals, scale, None)
}

/// [`tasks`] with importance weights from `imatrix` attached (see
/// [`attach_importance`]); types that need an importance matrix (IQ2_XXS)
/// become writable for the tensors the matrix has an entry for.
pub fn tasks_with_imatrix<'a>(
    base: &'a GgufFile,
    out_types: &[GgmlType],
    residuals: Vec<Option<Box<dyn RowSource + 'a>>>,
    scale: f32,
    imatrix: &'a crate::format::imatrix::Imatrix,
) -> Result<(Vec<Task<'a>>, ImportanceUse)> {
    let mut tasks = build_tasks(base, out_types, residuals, scale, Some(imatrix))?;
    let used = attach_importance(&mut tasks, imatrix)?;
    Ok((tasks, used))
}

fn build_tasks<'a>(
    base: &'a GgufFile,
    out_types: &[GgmlType],
    mut residuals: Vec<Option<Box<dyn RowSource + 'a>>>,
    scale: f32,
    imatrix: Option<&crate::format::imatrix::Imatrix>,
) -> Result<Vec<Task<'a>>> {
    // The tensors are read front to back: let the kernel read ahead.
    base.advise_sequential();
    let mut impossible = Vec::new();
    let mut tasks = Vec::with_capacity(base.tensors().len());
    residuals.resize_with(base.tensors().len(), || None);
    for (i, (t, residual)) in base.tensors().iter().zip(residuals).enumerate() {
        let out_ty = out_types[i];
        let spec = TensorSpec {
            name: t.name.clone(),
            ty: out_ty,
            ne: t.ne.clone(),
        };
        if residual.is_none() && out_ty == t.ty {
            tasks.push(Task {
                spec,
                input_type: t.ty,
                action: Action::Copy(base.tensor_data(i)),
            });
            continue;
        }
        if let Some(why) = why_not_transcodable(t, out_ty, imatrix) {
            impossible.push(why);
        }
        tasks.push(Task {
            spec,
            input_type: t.ty,
            action: Action::Transcode {
                base: Box::new(base_rows(base, i)),
                residual,
                scale,
                importance: None,
            },
        });
    }
    if !impossible.is_empty() {
        let n = impossible.len();
        impossible.truncate(8);
        return Err(Error::Usage(format!(
            "{}: {n} tensor(s) cannot be written as asked: {}{}",
            base.path().display(),
            impossible.join("; "),
            if n > 8 { "; …" } else { "" }
        )));
    }
    Ok(tasks)
}

/// Why tensor `t` cannot be re-encoded as `out_ty`, with a hint, if so.
fn why_not_transcodable(
    t: &TensorInfo,
    out_ty: GgmlType,
    imatrix: Option<&crate::format::imatrix::Imatrix>,
) -> Option<String> {
    let readable = codec(t.ty).is_some();
    let has_weights = imatrix.is_some_and(|m| {
        matches!(
            m.lookup(&t.name, &t.ne),
            Ok(crate::format::imatrix::Lookup::Weights(_))
        )
    });
    let writable = codec(out_ty).and_then(|c| c.quantize).is_some()
        || (crate::quant::uses_importance(out_ty) && has_weights);
    if !readable {
        Some(format!("{} ({} cannot be decoded)", t.name, t.ty))
    } else if !writable {
        let hint = unwritable_hint(out_ty, imatrix.is_some());
        Some(format!("{}: {hint}", t.name))
    } else if out_ty.row_size(t.row_len() as usize).is_none() {
        Some(format!(
            "{}: rows of {} elements are not whole {} blocks of {}",
            t.name,
            t.row_len(),
            out_ty,
            out_ty.block_size()
        ))
    } else {
        None
    }
}

/// What to do about a type that cannot be written, given whether an
/// importance matrix was given.
fn unwritable_hint(out_ty: GgmlType, has_imatrix: bool) -> String {
    if out_ty.requires_imatrix() && crate::quant::uses_importance(out_ty) {
        if has_imatrix {
            format!(
                "{out_ty} needs importance weights and the imatrix has no entry for this tensor"
            )
        } else {
            format!(
                "{} needs an importance matrix (--imatrix FILE); or try --type {} or iq4_xs",
                out_ty,
                out_ty.nearest_writable().name().to_lowercase()
            )
        }
    } else if out_ty.requires_imatrix() {
        format!(
            "{} needs an importance matrix; try --type {} or iq4_xs",
            out_ty,
            out_ty.nearest_writable().name().to_lowercase()
        )
    } else {
        format!("{out_ty} cannot be written")
    }
}

/// What [`attach_importance`] did.
#[derive(Debug, Default, Clone)]
pub struct ImportanceUse {
    /// Tensors encoded with importance weights.
    pub weighted: usize,
    /// Re-encoded tensors whose type uses an imatrix but that have no entry
    /// in it (encoded unweighted, as llama-quantize does).
    pub missing: Vec<String>,
    /// Tensors whose entry does not fit and that llama-quantize encodes
    /// unweighted anyway (`token_embd.weight`): (name, entry length, needed).
    pub ignored: Vec<(String, usize, usize)>,
}

impl ImportanceUse {
    /// One line per kind of note, for stderr.
    pub fn notes(&self, imatrix: &Path) -> Vec<String> {
        let mut out = vec![format!(
            "imatrix {}: {} tensor(s) encoded with importance weights",
            imatrix.display(),
            self.weighted
        )];
        if !self.missing.is_empty() {
            let n = self.missing.len();
            let shown: Vec<&str> = self.missing.iter().take(6).map(String::as_str).collect();
            out.push(format!(
                "note: {n} tensor(s) have no imatrix data and are quantized without, as llama-quantize does: {}{}",
                shown.join(", "),
                if n > 6 { ", …" } else { "" }
            ));
        }
        for (name, got, want) in &self.ignored {
            out.push(format!(
                "note: imatrix entry for {name} has {got} values, the tensor needs {want}; quantized without, as llama-quantize does"
            ));
        }
        out
    }
}

/// Give every re-encoded tensor whose output type uses an importance matrix
/// its weights from `imatrix` (by GGUF tensor name). Missing entries leave a
/// tensor unweighted; an entry of the wrong length is an error naming the
/// tensor (except `token_embd.weight`, as in llama-quantize).
pub fn attach_importance<'a>(
    tasks: &mut [Task<'a>],
    imatrix: &'a crate::format::imatrix::Imatrix,
) -> Result<ImportanceUse> {
    use crate::format::imatrix::Lookup;
    let mut used = ImportanceUse::default();
    for t in tasks.iter_mut() {
        let ty = t.spec.ty;
        let Action::Transcode { importance, .. } = &mut t.action else {
            continue;
        };
        if !crate::quant::uses_importance(ty) && !ty.requires_imatrix() {
            continue;
        }
        match imatrix.lookup(&t.spec.name, &t.spec.ne)? {
            Lookup::Weights(w) => {
                *importance = Some(w);
                used.weighted += 1;
            }
            Lookup::Missing => used.missing.push(t.spec.name.clone()),
            Lookup::IgnoredTokenEmbd(got, want) => {
                used.ignored.push((t.spec.name.clone(), got, want))
            }
        }
    }
    Ok(used)
}

/// The keys `llama-quantize --imatrix FILE` adds to its output
/// (`tools/quantize/quantize.cpp`, as KV overrides: strings cut to 127
/// bytes, counts as u32): the file as given, the first dataset, the number
/// of entries and of chunks (when known).
pub fn add_imatrix_metadata(
    md: &mut Vec<(String, MetaValue)>,
    imatrix: &crate::format::imatrix::Imatrix,
    file_arg: &Path,
) {
    let cut = |s: &str| {
        let b = s.as_bytes();
        String::from_utf8_lossy(&b[..b.len().min(127)]).into_owned()
    };
    let mut set = |key: &str, v: MetaValue| match md.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => md.push((key.to_string(), v)),
    };
    set(
        "quantize.imatrix.file",
        MetaValue::String(cut(&file_arg.to_string_lossy())),
    );
    if let Some(d) = imatrix.datasets.first() {
        set("quantize.imatrix.dataset", MetaValue::String(cut(d)));
    }
    set(
        "quantize.imatrix.entries_count",
        MetaValue::U32(imatrix.len() as u32),
    );
    if imatrix.chunk_count > 0 {
        set(
            "quantize.imatrix.chunks_count",
            MetaValue::U32(imatrix.chunk_count),
        );
    }
}

/// llama.cpp's mixes whose per-tensor types change when an imatrix is given
/// (`qs.has_imatrix` in `llama_tensor_get_type_impl`); `plan_types` follows
/// the imatrix-free rules, so these are refused with `--imatrix`.
pub fn check_imatrix_target(target: &Target) -> Result<()> {
    use crate::model::mix::Mix;
    if let Target::Mix(m @ (Mix::Q4_0 | Mix::Q5_0 | Mix::IQ4_NL | Mix::IQ4_XS)) = target {
        return Err(Error::Usage(format!(
            "--imatrix with the {m} mix: llama.cpp picks other types for some tensors when it has an              imatrix, which qresidual does not follow yet; use the plain type (--type {}) or another mix",
            m.name().trim_start_matches("mix:")
        )));
    }
    Ok(())
}

/// The base's metadata for the output: split keys dropped (the writer adds
/// its own), `general.file_type` and `general.name` replaced when given.
pub fn output_metadata(
    base: &GgufFile,
    file_type: Option<u32>,
    name: Option<&str>,
) -> Vec<(String, MetaValue)> {
    let mut md: Vec<(String, MetaValue)> = base
        .metadata()
        .iter()
        .filter(|(k, _)| !k.starts_with("split."))
        .cloned()
        .collect();
    let mut set = |key: &str, v: MetaValue| match md.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = v,
        None => md.push((key.to_string(), v)),
    };
    if let Some(ft) = file_type {
        set("general.file_type", MetaValue::U32(ft));
    }
    if let Some(n) = name {
        set("general.name", MetaValue::String(n.to_string()));
    }
    md
}

/// Where and how to write.
pub struct Output<'a> {
    /// Target path (first split when splitting).
    pub path: &'a Path,
    /// Bytes per split file, if splitting.
    pub split_max_size: Option<u64>,
    /// Pipeline options.
    pub options: pipeline::Options,
}

/// Write `tasks` with `metadata` atomically; returns outcomes and the paths written.
pub fn write(
    tasks: &[Task<'_>],
    metadata: &[(String, MetaValue)],
    out: &Output<'_>,
) -> Result<(Vec<Outcome>, Vec<PathBuf>)> {
    let specs: Vec<TensorSpec> = tasks.iter().map(|t| t.spec.clone()).collect();
    let opts = WriterOptions {
        split_max_size: out.split_max_size,
        ..Default::default()
    };
    let mut writer = GgufWriter::create(out.path, metadata, &specs, &opts)?;
    let outcomes = pipeline::run(tasks, &mut writer, out.path, &out.options)?;
    let paths = writer.finish()?;
    Ok((outcomes, paths))
}

/// Parse `--type`: `keep`, a ggml type name, or a llama.cpp mix.
pub fn parse_target(s: &str) -> Result<Target> {
    Target::parse(s)
}

/// A numeric metadata value; per-layer arrays give their first element.
fn meta_number(model: &GgufFile, key: &str) -> Option<u64> {
    match model.get(key)? {
        MetaValue::Array(a) => a.items.first().and_then(|v| v.as_u64()),
        v => v.as_u64(),
    }
}

/// The output type of every tensor of `model`, in file order, as llama.cpp's
/// quantizer would choose them for `target`.
pub fn output_types(model: &GgufFile, target: &Target) -> Result<Vec<GgmlType>> {
    let arch = model.architecture().unwrap_or("");
    let facts = ModelFacts::from_metadata(|k| meta_number(model, k), arch);
    let descs: Vec<TensorDesc<'_>> = model
        .tensors()
        .iter()
        .map(|t| TensorDesc {
            name: &t.name,
            ty: t.ty,
            ne: &t.ne,
        })
        .collect();
    plan_types(target, &facts, &descs)
}

/// The `general.file_type` to write, `None` to keep the input's.
pub fn file_type(_model: &GgufFile, target: &Target) -> Option<u32> {
    mix::file_type(target)
}

/// Refuse a model without tensors: there is nothing to convert, and an
/// empty output would look like a success.
pub fn require_tensors(model: &GgufFile) -> Result<()> {
    if model.tensors().is_empty() {
        return Err(Error::format(model.path(), "the model holds no tensors"));
    }
    Ok(())
}
