//! Which residual tensor goes with which base tensor, checked before any
//! output is written.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::engine::log::Log;
use crate::format::gguf::GgufFile;
use crate::format::pages::ReleasePages;
use crate::model::naming::{self, RowPermutation};
use crate::model::rows::RowSource;
use crate::model::{list, Shaped};
use crate::quant::{scan_row, GgmlType};
use crate::{Error, Result};

/// A residual is a model of either container: GGUF (any decodable type,
/// tensors named and laid out as in the base) or safetensors (Hugging Face
/// or GGUF names).
pub use crate::model::{Model as Residual, ModelTensor as ResidualTensor};

/// The residual's tensors. Safetensors residuals must be F16, BF16 or F32;
/// another dtype is an error naming the tensor.
pub fn residual_tensors(residual: &Residual) -> Result<Vec<ResidualTensor<'_>>> {
    if let Residual::Safetensors(s) = residual {
        let float = |t: &crate::format::st::StTensor| {
            matches!(
                t.ggml_type(),
                Some(GgmlType::F16 | GgmlType::BF16 | GgmlType::F32)
            )
        };
        if let Some(t) = s.tensors().iter().find(|t| !float(t)) {
            return Err(Error::tensor(
                s.path(),
                &t.name,
                format!(
                    "dtype {:?} cannot be a residual (use F16, BF16 or F32)",
                    t.dtype
                ),
            ));
        }
    }
    residual.tensors()
}

/// One residual tensor matched to one base tensor.
#[derive(Debug, Clone)]
pub struct Pairing {
    /// Index of the base tensor.
    pub base: usize,
    /// Index into the residual's tensor list.
    pub residual: usize,
    /// Row order change from the residual's layout to the base's.
    pub permutation: RowPermutation,
}

/// The result of matching a residual to a base.
#[derive(Debug, Default)]
pub struct Matching {
    /// Matched pairs, in residual order.
    pub pairs: Vec<Pairing>,
    /// Residual tensors without a partner (only with `allow_missing`).
    pub unmatched: Vec<String>,
    /// Things the user should know (tied embeddings…).
    pub notes: Vec<String>,
}

fn meta_u64(base: &GgufFile, key: &str) -> Option<u64> {
    base.get(key).and_then(|v| v.as_u64())
}

/// A residual for the output projection of a base that ties it to the
/// embedding (`names`: the base's output and embedding names): accepted,
/// once, when it equals the embedding's residual (`embed`); refused when it
/// differs, as one tensor cannot take two residuals. Returns the note.
pub fn tied_output(
    residual_path: &Path,
    residual: &[ResidualTensor<'_>],
    output: usize,
    embed: Option<usize>,
    names: (&str, &str),
) -> Result<String> {
    let (o, e) = names;
    let same = embed.is_some_and(|ei| {
        let (l, e) = (&residual[output], &residual[ei]);
        l.ty == e.ty && l.shape == e.shape && l.data == e.data
    });
    if same {
        Ok(format!(
            "the base ties its output ({o}) to {e}; the residual's {} equals its embedding residual and is applied once",
            residual[output].name
        ))
    } else {
        Err(Error::Mismatch(format!(
            "{}: the base ties its output ({o}) to {e}, but the residual's {} differs from its embedding residual; a tied model cannot take two different residuals",
            residual_path.display(),
            residual[output].name
        )))
    }
}

/// Match every residual tensor to exactly one base tensor of the same shape.
pub fn match_residual(
    base: &GgufFile,
    residual_path: &Path,
    residual: &[ResidualTensor<'_>],
    allow_missing: bool,
) -> Result<Matching> {
    let index = BaseIndex::new(base);
    let found = pair_tensors(&index, residual_path, residual)?;
    let mut m = Matching {
        pairs: found.pairs,
        ..Matching::default()
    };
    if let Some(li) = found.tied_lm_head {
        let note = tied_output(
            residual_path,
            residual,
            li,
            found.embed_residual,
            ("output.weight", "token_embd.weight"),
        )?;
        m.notes.push(note);
    }
    refuse_mismatches(&found.problems, residual_path, &index.arch, allow_missing)?;
    m.unmatched = found
        .problems
        .unmapped
        .into_iter()
        .chain(found.problems.no_partner)
        .collect();
    if m.pairs.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: no residual tensor matches a tensor of {}",
            residual_path.display(),
            base.path().display()
        )));
    }
    Ok(m)
}

/// The base's tensors by name, with what Hugging Face names and the rotary
/// permutation need to know of its architecture.
struct BaseIndex<'b> {
    base: &'b GgufFile,
    arch: String,
    n_head: usize,
    n_head_kv: usize,
    by_name: HashMap<&'b str, usize>,
}

impl<'b> BaseIndex<'b> {
    fn new(base: &'b GgufFile) -> Self {
        let arch = base.architecture().unwrap_or("").to_string();
        let n_head = meta_u64(base, &format!("{arch}.attention.head_count")).unwrap_or(0) as usize;
        let n_head_kv = meta_u64(base, &format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        let by_name = base
            .tensors()
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        BaseIndex {
            base,
            arch,
            n_head,
            n_head_kv,
            by_name,
        }
    }

    /// The GGUF name a residual tensor stands for (its own when the base has
    /// it, else its Hugging Face mapping) and whether it was mapped.
    fn gguf_name(&self, residual_name: &str) -> Option<(String, bool)> {
        if self.by_name.contains_key(residual_name) {
            Some((residual_name.to_string(), false))
        } else {
            naming::hf_to_gguf(&self.arch, residual_name).map(|n| (n, true))
        }
    }
}

/// Residual tensors the base cannot take, collected so that one error lists
/// them all.
#[derive(Default)]
struct Problems {
    unmapped: Vec<String>,
    no_partner: Vec<String>,
    bad_shape: Vec<String>,
    duplicates: Vec<String>,
}

/// What one pass over the residual's tensors found.
#[derive(Default)]
struct Found {
    pairs: Vec<Pairing>,
    problems: Problems,
    tied_lm_head: Option<usize>,
    embed_residual: Option<usize>,
}

fn pair_tensors(
    index: &BaseIndex,
    residual_path: &Path,
    residual: &[ResidualTensor<'_>],
) -> Result<Found> {
    let mut found = Found::default();
    let problems = &mut found.problems;
    let mut claimed: HashMap<usize, &str> = HashMap::new();
    for (ri, rt) in residual.iter().enumerate() {
        let Some((gguf_name, from_hf)) = index.gguf_name(rt.name) else {
            problems.unmapped.push(rt.name.to_string());
            continue;
        };
        if gguf_name == "token_embd.weight" {
            found.embed_residual = Some(ri);
        }
        let Some(&bi) = index.by_name.get(gguf_name.as_str()) else {
            if gguf_name == "output.weight" && index.by_name.contains_key("token_embd.weight") {
                found.tied_lm_head = Some(ri);
            } else {
                problems
                    .no_partner
                    .push(format!("{} (→ {gguf_name})", rt.name));
            }
            continue;
        };
        let bt = &index.base.tensors()[bi];
        if bt.shape() != rt.shape {
            problems.bad_shape.push(format!(
                "{} {:?} vs base {} {:?}",
                rt.name,
                rt.shape,
                bt.name,
                bt.shape()
            ));
            continue;
        }
        if let Some(prev) = claimed.insert(bi, rt.name) {
            problems
                .duplicates
                .push(format!("{prev} and {} both map to {}", rt.name, bt.name));
            continue;
        }
        let permutation = if from_hf {
            naming::row_permutation(&index.arch, &gguf_name, index.n_head, index.n_head_kv)
        } else {
            RowPermutation::Identity
        };
        if let RowPermutation::LlamaRope { n_head: h } = permutation {
            let rows = bt.shape()[0] as usize;
            if !permutation.fits(rows) {
                return Err(Error::Mismatch(format!(
                    "{}: cannot permute {} for rotary embeddings: {rows} rows do not split into {h} heads (check {}.attention.head_count in the base)",
                    residual_path.display(),
                    rt.name,
                    index.arch
                )));
            }
        }
        found.pairs.push(Pairing {
            base: bi,
            residual: ri,
            permutation,
        });
    }
    Ok(found)
}

/// Shape mismatches and duplicates are always errors; unmapped and
/// partnerless tensors unless `allow_missing`.
fn refuse_mismatches(
    problems: &Problems,
    residual_path: &Path,
    arch: &str,
    allow_missing: bool,
) -> Result<()> {
    let Problems {
        unmapped,
        no_partner,
        bad_shape,
        duplicates,
    } = problems;
    if !bad_shape.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: {} residual tensor(s) differ in shape from the base: {}",
            residual_path.display(),
            bad_shape.len(),
            list(bad_shape)
        )));
    }
    if !duplicates.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: {}",
            residual_path.display(),
            list(duplicates)
        )));
    }
    if !unmapped.is_empty() && !allow_missing {
        let why = if naming::mapped_architectures().any(|a| a == arch) {
            format!("these names are neither base tensor names nor known Hugging Face names for '{arch}'")
        } else if crate::model::hf_names::knows(arch) {
            format!("llama.cpp's converter transforms tensors of '{arch}' beyond renaming them, which qresidual does not restate; name the residual's tensors as in the GGUF file (and in its layout) instead")
        } else {
            format!(
                "the base's architecture '{arch}' has no Hugging Face name table (known: {}); name the residual's tensors as in the GGUF file instead",
                naming::mapped_architectures().collect::<Vec<_>>().join(", ")
            )
        };
        return Err(Error::Mismatch(format!(
            "{}: {} residual tensor(s) could not be mapped: {why}: {} (--allow-missing skips them)",
            residual_path.display(),
            unmapped.len(),
            list(unmapped)
        )));
    }
    if !no_partner.is_empty() && !allow_missing {
        return Err(Error::Mismatch(format!(
            "{}: {} residual tensor(s) have no partner in the base: {} (--allow-missing skips them)",
            residual_path.display(),
            no_partner.len(),
            list(no_partner)
        )));
    }
    Ok(())
}

/// Scan the matched residual tensors for NaN/Inf (an error naming tensor,
/// row and column) and report which ones are all zero.
pub fn scan_residuals(
    residual_path: &Path,
    residual: &[ResidualTensor<'_>],
    pairs: &[Pairing],
    pages: &dyn ReleasePages,
) -> Result<Vec<bool>> {
    pairs
        .iter()
        .map(|p| {
            let t = &residual[p.residual];
            let row_len = t.row_len();
            let rb = t.ty.row_size(row_len).ok_or_else(|| {
                Error::tensor(
                    residual_path,
                    t.name,
                    "row length is not a whole number of blocks",
                )
            })?;
            let rows_per_chunk = ((1usize << 20) / row_len.max(1)).max(1);
            let chunk_bytes = rb * rows_per_chunk;
            let results: Vec<Result<bool>> = t
                .data
                .par_chunks(chunk_bytes.max(1))
                .enumerate()
                .map(|(ci, bytes)| {
                    let n = bytes.len() / rb * row_len;
                    let s = scan_row(t.ty, bytes, n)
                        .map_err(|e| Error::tensor(residual_path, t.name, e.to_string()))?;
                    pages.release(bytes);
                    if let Some(i) = s.first_non_finite {
                        let row = ci * rows_per_chunk + i / row_len;
                        return Err(Error::tensor(
                            residual_path,
                            t.name,
                            format!("holds NaN or infinity (row {row}, column {})", i % row_len),
                        ));
                    }
                    Ok(s.all_zero)
                })
                .collect();
            let mut all_zero = true;
            for r in results {
                all_zero &= r?;
            }
            Ok(all_zero)
        })
        .collect()
}

impl Matching {
    /// One residual row source per base tensor (`n_base` of them): the
    /// matched residual's rows, or `None` where there is none, it is all
    /// zero (`all_zero`, from [`scan_residuals`]) or α is 0. Tells `log`
    /// the notes, the skipped tensors and how many were all zero.
    pub fn residual_rows<'a>(
        &self,
        residual: &'a Residual,
        rtensors: &[ResidualTensor<'a>],
        all_zero: &[bool],
        (n_base, scale): (usize, f32),
        log: &Log,
    ) -> Vec<Option<Box<dyn RowSource + 'a>>> {
        for note in &self.notes {
            log.note(note);
        }
        if !self.unmatched.is_empty() {
            log.warn(&format!(
                "{} residual tensor(s) skipped (--allow-missing): {}",
                self.unmatched.len(),
                self.unmatched.join(", ")
            ));
        }
        let mut rows: Vec<Option<Box<dyn RowSource + 'a>>> = (0..n_base).map(|_| None).collect();
        let mut zero = 0;
        for (p, &is_zero) in self.pairs.iter().zip(all_zero) {
            if is_zero || scale == 0.0 {
                zero += 1;
                continue;
            }
            rows[p.base] = Some(Box::new(
                residual.rows(&rtensors[p.residual], p.permutation),
            ));
        }
        if zero > 0 {
            log.note(&format!(
                "{zero} residual tensor(s) are all zero; their base tensors are copied unchanged"
            ));
        }
        rows
    }
}
