//! Which residual tensor goes with which base tensor, checked before any
//! output is written.

use std::collections::HashMap;
use std::path::Path;

use rayon::prelude::*;

use crate::engine::log::Log;
use crate::format::gguf::GgufFile;
use crate::format::pages::ReleasePages;
use crate::model::naming::{self, Axis, LinearDims, RowPermutation, ValueMap};
use crate::model::rows::{
    ColumnSlice, MappedRows, PermutedColumns, RowSource, StackedRows, TransposedRows,
};
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

/// Residual tensors matched to one base tensor: one, or the per-expert
/// tensors the converter stacked into it.
#[derive(Debug, Clone)]
pub struct Pairing {
    /// Index of the base tensor.
    pub base: usize,
    /// Index into the residual's tensor list (the first part).
    pub residual: usize,
    /// Every residual tensor whose rows, one after another, are the base
    /// tensor's rows: `[residual]`, or the experts of a stacked tensor.
    pub parts: Vec<usize>,
    /// Row order change from the residual's layout to the base's.
    pub permutation: RowPermutation,
    /// The base tensor's row count where it is smaller than the residual's:
    /// the first rows (Gemma 3's trimmed embedding), or the rows
    /// [`RowPermutation::Slice`] picks (a split tensor).
    pub rows: Option<usize>,
    /// The base tensor is the residual's rows in blocks of `.0`, the first
    /// `.1` of each transposed (DeepSeek's `attn_k_b`).
    pub transpose: Option<(usize, usize)>,
    /// The residual's columns `(offset, step)` the base tensor takes, before
    /// any transposition (gpt-oss's interleaved gate/up).
    pub columns: Option<(usize, usize)>,
    /// The base tensor is these slices of the residual's rows (each
    /// [`RowPermutation::Slice`] and its row count), one after another
    /// (Qwen3-Next's `attn_qkv`: every head's q, then k, then v).
    pub pieces: Option<Vec<(RowPermutation, usize)>>,
    /// The converter's non-linear function on the tensor: the residual is
    /// added before it ([`naming::value_map`]).
    pub map: Option<ValueMap>,
    /// The residual's columns reordered (Qwen3.5's value heads,
    /// [`naming::v_head_order`]).
    pub column_order: Option<RowPermutation>,
}

impl Pairing {
    /// One residual tensor for one base tensor, all rows.
    pub fn one(base: usize, residual: usize, permutation: RowPermutation) -> Self {
        Pairing {
            base,
            residual,
            parts: vec![residual],
            permutation,
            rows: None,
            transpose: None,
            columns: None,
            pieces: None,
            map: None,
            column_order: None,
        }
    }

    /// Whether the base tensor is one residual tensor as it is (possibly
    /// reordered), not assembled from several or trimmed.
    pub fn is_whole(&self) -> bool {
        self.parts.len() == 1
            && self.rows.is_none()
            && self.transpose.is_none()
            && self.columns.is_none()
            && self.pieces.is_none()
            && self.map.is_none()
            && self.column_order.is_none()
    }
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
        notes: found.notes,
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
    linear: LinearDims,
    by_name: HashMap<&'b str, usize>,
}

impl<'b> BaseIndex<'b> {
    fn new(base: &'b GgufFile) -> Self {
        let arch = base.architecture().unwrap_or("").to_string();
        let n_head = meta_u64(base, &format!("{arch}.attention.head_count")).unwrap_or(0) as usize;
        let n_head_kv = meta_u64(base, &format!("{arch}.attention.head_count_kv"))
            .map(|v| v as usize)
            .unwrap_or(n_head);
        let ssm = |k: &str| meta_u64(base, &format!("{arch}.ssm.{k}")).unwrap_or(0) as usize;
        let v_heads = ssm("time_step_rank");
        let linear = LinearDims {
            k_heads: ssm("group_count"),
            v_heads,
            k_dim: ssm("state_size"),
            v_dim: ssm("inner_size").checked_div(v_heads).unwrap_or(0),
        };
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
            linear,
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
    incomplete: Vec<String>,
}

/// What one pass over the residual's tensors found.
#[derive(Default)]
struct Found {
    pairs: Vec<Pairing>,
    problems: Problems,
    tied_lm_head: Option<usize>,
    embed_residual: Option<usize>,
    /// Stacked base tensors and the residual tensor of each expert.
    stacks: HashMap<usize, Vec<Option<usize>>>,
    notes: Vec<String>,
}

/// Every residual tensor's place in the base: one base tensor (renamed,
/// maybe permuted or trimmed), part of one (a split), or one expert of a
/// stack; what cannot be placed is collected for one message.
// Long because every residual tensor goes through the same checks in one
// order (split, rename, tie, shape, trim, duplicate, permutation) and the
// order is the rule; the cases with work of their own are functions.
fn pair_tensors(
    index: &BaseIndex,
    residual_path: &Path,
    residual: &[ResidualTensor<'_>],
) -> Result<Found> {
    let mut found = Found::default();
    let mut claimed: HashMap<usize, &str> = HashMap::new();
    for (ri, rt) in residual.iter().enumerate() {
        if !index.by_name.contains_key(rt.name) {
            if let Some(halves) = naming::split_halves(&index.arch, rt.name) {
                split_pairs(index, (ri, rt), &halves, &mut claimed, &mut found);
                continue;
            }
            if let Some(kv) = naming::kv_b_split(&index.arch, rt.name) {
                kv_b_pairs(index, (ri, rt), &kv, &mut claimed, &mut found);
                continue;
            }
            if let Some(qkvz) = naming::qkvz_split(&index.arch, rt.name) {
                qkvz_pairs(index, (ri, rt), &qkvz, &mut claimed, &mut found);
                continue;
            }
            if let Some(fused) = naming::fused_experts(&index.arch, rt.name) {
                fused_pairs(index, (ri, rt), &fused, &mut claimed, &mut found);
                continue;
            }
        }
        let Some((gguf_name, from_hf)) = index.gguf_name(rt.name) else {
            if let Some((stacked, expert)) = naming::expert_part(&index.arch, rt.name) {
                stack_expert(index, (ri, rt), (&stacked, expert), &mut found);
            } else {
                found.problems.unmapped.push(rt.name.to_string());
            }
            continue;
        };
        let problems = &mut found.problems;
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
        let trimmed = from_hf
            .then(|| trimmed_rows(index, &gguf_name, rt))
            .flatten();
        let squeezed = from_hf && squeezed_fits(index, &gguf_name, &rt.shape);
        if bt.shape() != rt.shape && trimmed.is_none() && !squeezed {
            problems.bad_shape.push(format!(
                "{} {:?} vs base {} {:?}",
                rt.name,
                rt.shape,
                bt.name,
                bt.shape()
            ));
            continue;
        }
        if let Some(n) = trimmed {
            found.notes.push(format!(
                "{}: llama.cpp's converter keeps the first {n} of {} rows of {} ('{}' trims the embedding to the tokenizer's vocabulary); the residual's rows past {n} are left out",
                residual_path.display(),
                rt.shape[0],
                rt.name,
                index.arch
            ));
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
        let mut pair = Pairing::one(bi, ri, permutation);
        if from_hf && !v_heads_tiled(index, (rt.name, &gguf_name), &rt.shape, &mut pair) {
            found.problems.bad_shape.push(format!(
                "{} {:?}: fewer value heads than the base's {}.ssm.* sizes ({:?})",
                rt.name, rt.shape, index.arch, index.linear
            ));
            continue;
        }
        pair.rows = trimmed.map(|n| n as usize);
        pair.map = from_hf
            .then(|| naming::value_map(&index.arch, &gguf_name))
            .flatten();
        found.pairs.push(pair);
    }
    finish_stacks(index, residual, &mut found);
    Ok(found)
}

/// The base's row count when the residual's HF tensor is longer only
/// because the converter trims it ([`naming::embedding_rows`]).
fn trimmed_rows(index: &BaseIndex, gguf_name: &str, rt: &ResidualTensor<'_>) -> Option<u64> {
    let bt = &index.base.tensors()[*index.by_name.get(gguf_name)?];
    let (bs, rs) = (bt.shape(), &rt.shape);
    if bs == *rs || bs.len() != 2 || rs.len() != 2 || bs[1] != rs[1] {
        return None;
    }
    naming::embedding_rows(&index.arch, gguf_name, rs[0], bs[0])
}

/// Qwen3.5's value heads, reordered by the converter along the rows or the
/// columns of `pair` ([`naming::v_head_order`]); false when the residual
/// (`shape`) has fewer rows or columns than the base's `ssm.*` sizes say.
fn v_heads_tiled(
    index: &BaseIndex,
    names: (&str, &str),
    shape: &[u64],
    pair: &mut Pairing,
) -> bool {
    let cols = shape.last().copied().unwrap_or(0) as usize;
    let rows = shape.iter().rev().skip(1).product::<u64>() as usize;
    match naming::v_head_order(&index.arch, names, index.linear) {
        Some((Axis::Rows, order)) => {
            pair.permutation = order;
            order.fits(rows)
        }
        Some((Axis::Columns, order)) => {
            pair.column_order = Some(order);
            order.fits(cols)
        }
        None => true,
    }
}

/// Whether a residual of `shape` fits base tensor `gguf_name` once its unit
/// dimensions are dropped, as the converter squeezes it
/// ([`naming::squeezed`]).
fn squeezed_fits(index: &BaseIndex, gguf_name: &str, shape: &[u64]) -> bool {
    let Some(&bi) = index.by_name.get(gguf_name) else {
        return false;
    };
    let kept: Vec<u64> = shape.iter().copied().filter(|&d| d != 1).collect();
    naming::squeezed(&index.arch, gguf_name) && index.base.tensors()[bi].shape() == kept
}

/// The base tensor `gguf_name` that residual tensor `rname` goes to
/// (`what`: which part of it, for the message), claimed for it; `None` when
/// the base has no such tensor or another residual tensor claimed it (the
/// problem recorded).
fn claim_partner<'r>(
    index: &BaseIndex,
    (rname, what): (&'r str, &str),
    gguf_name: &str,
    claimed: &mut HashMap<usize, &'r str>,
    found: &mut Found,
) -> Option<usize> {
    let Some(&bi) = index.by_name.get(gguf_name) else {
        found
            .problems
            .no_partner
            .push(format!("{rname} ({what}→ {gguf_name})"));
        return None;
    };
    if let Some(prev) = claimed.insert(bi, rname) {
        found
            .problems
            .duplicates
            .push(format!("{prev} and {rname} both map to {gguf_name}"));
        return None;
    }
    Some(bi)
}

/// Residual tensor `ri`, which the converter splits in two along the rows of
/// each expert (`[E, 2F, D]` → two `[E, F, D]`), paired with both halves.
fn split_pairs<'r>(
    index: &BaseIndex,
    (ri, rt): (usize, &ResidualTensor<'r>),
    halves: &[String; 2],
    claimed: &mut HashMap<usize, &'r str>,
    found: &mut Found,
) {
    for (half, gguf_name) in halves.iter().enumerate() {
        let what = format!("half {half} ");
        let Some(bi) = claim_partner(index, (rt.name, &what), gguf_name, claimed, found) else {
            continue;
        };
        let bs = index.base.tensors()[bi].shape();
        let rs = &rt.shape;
        let fits = bs.len() == 3 && rs.len() == 3 && bs[0] == rs[0] && rs[1] == 2 * bs[1];
        if !fits || bs[2] != rs[2] {
            found.problems.bad_shape.push(format!(
                "{} {rs:?} vs half {half} of it, base {gguf_name} {bs:?}",
                rt.name
            ));
            continue;
        }
        let len = bs[1] as usize;
        let slice = RowPermutation::Slice {
            group: 2 * len,
            offset: half * len,
            len,
        };
        let mut pair = Pairing::one(bi, ri, slice);
        pair.rows = Some((bs[0] * bs[1]) as usize);
        found.pairs.push(pair);
    }
}

/// Qwen3-Next's `in_proj_qkvz` residual (`[K × (2q + 2v), D]`, K key
/// heads of `[q | k | v | z]` rows) paired with `attn_qkv` (`[K × (2q + v),
/// D]`: every head's q rows, then k, then v) and `attn_gate` (`[K × v, D]`:
/// every head's z rows). K is the base's `ssm.group_count`.
fn qkvz_pairs<'r>(
    index: &BaseIndex,
    (ri, rt): (usize, &ResidualTensor<'r>),
    [qkv, gate]: &[String; 2],
    claimed: &mut HashMap<usize, &'r str>,
    found: &mut Found,
) {
    let heads = meta_u64(index.base, &format!("{}.ssm.group_count", index.arch)).unwrap_or(0);
    let mut bis = [0; 2];
    for (slot, name) in bis.iter_mut().zip([qkv, gate]) {
        match claim_partner(index, (rt.name, ""), name, claimed, found) {
            Some(bi) => *slot = bi,
            None => return,
        }
    }
    let (qs, gs) = (
        index.base.tensors()[bis[0]].shape(),
        index.base.tensors()[bis[1]].shape(),
    );
    let rs = &rt.shape;
    let cols = |s: &[u64]| (s.len() == 2).then(|| s[1]);
    let v = gs[0].checked_div(heads).unwrap_or(0);
    let q2 = qs[0].checked_div(heads).map_or(0, |g| g.saturating_sub(v));
    let fits = heads > 0
        && cols(rs) == cols(&qs)
        && cols(rs) == cols(&gs)
        && cols(rs).is_some()
        && gs[0] == heads * v
        && qs[0] == heads * (q2 + v)
        && q2 % 2 == 0
        && rs[0] == heads * (q2 + 2 * v);
    if !fits {
        found.problems.bad_shape.push(format!(
            "{} {rs:?} vs base {qkv} {qs:?} and {gate} {gs:?} ({} key heads)",
            rt.name, heads
        ));
        return;
    }
    let (h, q, v) = (heads as usize, q2 as usize / 2, v as usize);
    let group = 2 * q + 2 * v;
    let slice = |offset, len| (RowPermutation::Slice { group, offset, len }, h * len);
    let mut qkv_pair = Pairing::one(bis[0], ri, RowPermutation::Identity);
    qkv_pair.pieces = Some(vec![slice(0, q), slice(q, q), slice(2 * q, v)]);
    let (gate_perm, gate_rows) = slice(2 * q + v, v);
    let mut gate_pair = Pairing::one(bis[1], ri, gate_perm);
    gate_pair.rows = Some(gate_rows);
    found.pairs.extend([qkv_pair, gate_pair]);
}

/// DeepSeek's `kv_b_proj` residual (`[H × (nope + v), R]`) paired with
/// `attn_k_b` (`[H, R, nope]`: the first `nope` rows of each head,
/// transposed) and `attn_v_b` (`[H, v, R]`: the other rows).
fn kv_b_pairs<'r>(
    index: &BaseIndex,
    (ri, rt): (usize, &ResidualTensor<'r>),
    [k_b, v_b]: &[String; 2],
    claimed: &mut HashMap<usize, &'r str>,
    found: &mut Found,
) {
    let shape = |n: &str| {
        let bi = *index.by_name.get(n)?;
        Some((bi, index.base.tensors()[bi].shape()))
    };
    let (Some((ki, ks)), Some((vi, vs))) = (shape(k_b), shape(v_b)) else {
        found
            .problems
            .no_partner
            .push(format!("{} (→ {k_b}, {v_b})", rt.name));
        return;
    };
    let rs = &rt.shape;
    let fits = ks.len() == 3 && vs.len() == 3 && rs.len() == 2 && ks[0] == vs[0];
    if !fits || ks[1] != rs[1] || vs[2] != rs[1] || ks[0] * (ks[2] + vs[1]) != rs[0] {
        found.problems.bad_shape.push(format!(
            "{} {rs:?} vs base {k_b} {ks:?} and {v_b} {vs:?}",
            rt.name
        ));
        return;
    }
    let (nope, v) = (ks[2] as usize, vs[1] as usize);
    for bi in [ki, vi] {
        if let Some(prev) = claimed.insert(bi, rt.name) {
            found.problems.duplicates.push(format!(
                "{prev} and {} both map to {}",
                rt.name,
                index.base.tensors()[bi].name
            ));
            return;
        }
    }
    let mut k = Pairing::one(ki, ri, RowPermutation::Identity);
    k.transpose = Some((nope + v, nope));
    let slice = RowPermutation::Slice {
        group: nope + v,
        offset: nope,
        len: v,
    };
    let mut vp = Pairing::one(vi, ri, slice);
    vp.rows = Some(vs[0] as usize * v);
    found.pairs.extend([k, vp]);
}

/// A gpt-oss fused expert residual (`[E, A, B]` weights, `[E, B]` biases)
/// paired with each GGUF tensor cut from it: `[E, B / step, A]` (the
/// columns picked, each expert transposed) or `[E, B / step]`.
fn fused_pairs<'r>(
    index: &BaseIndex,
    (ri, rt): (usize, &ResidualTensor<'r>),
    fused: &naming::FusedExperts,
    claimed: &mut HashMap<usize, &'r str>,
    found: &mut Found,
) {
    let rs = &rt.shape;
    for part in &fused.parts {
        let gguf_name = &part.gguf;
        let Some(bi) = claim_partner(index, (rt.name, ""), gguf_name, claimed, found) else {
            continue;
        };
        let bs = index.base.tensors()[bi].shape();
        let cols = rs.last().map_or(0, |&b| {
            (b.saturating_sub(part.offset as u64)).div_ceil(part.step as u64)
        });
        let want: Vec<u64> = match (fused.transposed, &rs[..]) {
            (true, &[e, a, _]) => vec![e, cols, a],
            (false, &[e, _]) => vec![e, cols],
            _ => Vec::new(),
        };
        if bs != want {
            found
                .problems
                .bad_shape
                .push(format!("{} {rs:?} vs base {gguf_name} {bs:?}", rt.name));
            continue;
        }
        let mut pair = Pairing::one(bi, ri, RowPermutation::Identity);
        pair.columns = (part.step != 1 || part.offset != 0).then_some((part.offset, part.step));
        if fused.transposed {
            let a = rs[1] as usize;
            pair.transpose = Some((a, a));
        }
        found.pairs.push(pair);
    }
}

/// Record residual tensor `ri` as expert `expert` of the base's stacked
/// tensor `stacked` (shape `[experts, rows, cols]`, each expert `[rows, cols]`).
fn stack_expert(
    index: &BaseIndex,
    (ri, rt): (usize, &ResidualTensor<'_>),
    (stacked, expert): (&str, usize),
    found: &mut Found,
) {
    let problems = &mut found.problems;
    let Some(&bi) = index.by_name.get(stacked) else {
        problems
            .no_partner
            .push(format!("{} (→ expert {expert} of {stacked})", rt.name));
        return;
    };
    let bs = index.base.tensors()[bi].shape();
    if bs.len() != 3 || bs[1..] != rt.shape[..] || expert as u64 >= bs[0] {
        problems.bad_shape.push(format!(
            "{} {:?} vs expert {expert} of base {stacked} {bs:?}",
            rt.name, rt.shape
        ));
        return;
    }
    let slots = found
        .stacks
        .entry(bi)
        .or_insert_with(|| vec![None; bs[0] as usize]);
    if let Some(prev) = slots[expert].replace(ri) {
        problems.duplicates.push(format!(
            "residual tensors {prev} and {ri} are both expert {expert} of {stacked}"
        ));
    }
}

/// One pairing per stacked base tensor whose every expert has a residual;
/// the others are incomplete (a stack cannot take a residual for some
/// experts only).
fn finish_stacks(index: &BaseIndex, residual: &[ResidualTensor<'_>], found: &mut Found) {
    let mut stacks: Vec<_> = std::mem::take(&mut found.stacks).into_iter().collect();
    stacks.sort_by_key(|(bi, _)| *bi);
    for (bi, slots) in stacks {
        let parts: Vec<usize> = slots.iter().flatten().copied().collect();
        if parts.len() < slots.len() {
            let missing: Vec<String> = (0..slots.len())
                .filter(|e| slots[*e].is_none())
                .map(|e| e.to_string())
                .collect();
            found.problems.incomplete.push(format!(
                "{} (experts {} have no residual; given: {})",
                index.base.tensors()[bi].name,
                missing.join(", "),
                residual[parts[0]].name
            ));
            continue;
        }
        found.pairs.push(Pairing {
            parts,
            ..Pairing::one(bi, slots[0].expect("complete"), RowPermutation::Identity)
        });
    }
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
        incomplete,
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
    if !incomplete.is_empty() {
        return Err(Error::Mismatch(format!(
            "{}: {} stacked expert tensor(s) of the base would take a residual for some experts only: {}",
            residual_path.display(),
            incomplete.len(),
            list(incomplete)
        )));
    }
    if !unmapped.is_empty() && !allow_missing {
        let why = if naming::mapped_architectures().any(|a| a == arch) {
            format!("these names are neither base tensor names nor known Hugging Face names for '{arch}'")
        } else if crate::model::hf_names::knows(arch) {
            format!("llama.cpp's converter transforms tensors of '{arch}' beyond renaming them in ways qresidual does not restate; convert both checkpoints with llama.cpp and take the residual between the GGUF files (`qresidual extract --base base.gguf --instruct instruct.gguf`), which gives GGUF names and layout")
        } else {
            format!(
                "the base's architecture '{arch}' has no Hugging Face name table (known: {}); take the residual between GGUF files (`qresidual extract --base base.gguf --instruct instruct.gguf`), which gives GGUF names",
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
/// row and column) and report which pairings are all zero.
pub fn scan_residuals(
    residual_path: &Path,
    residual: &[ResidualTensor<'_>],
    pairs: &[Pairing],
    pages: &dyn ReleasePages,
) -> Result<Vec<bool>> {
    pairs
        .iter()
        .map(|p| {
            let mut zero = true;
            for &part in &p.parts {
                zero &= scan_tensor(residual_path, &residual[part], pages)?;
            }
            Ok(zero)
        })
        .collect()
}

/// One residual tensor: NaN/Inf is an error; whether it is all zero.
fn scan_tensor(
    residual_path: &Path,
    t: &ResidualTensor<'_>,
    pages: &dyn ReleasePages,
) -> Result<bool> {
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
}

/// The rows a pairing gives its base tensor ([`layout_rows`]), tagged with
/// the converter's non-linear function where it has one.
fn pair_rows<'a>(
    residual: &'a Residual,
    rtensors: &[ResidualTensor<'a>],
    p: &Pairing,
) -> Box<dyn RowSource + 'a> {
    let rows = layout_rows(residual, rtensors, p);
    match p.map {
        Some(map) => Box::new(MappedRows { rows, map }),
        None => rows,
    }
}

/// The residual's rows in the base tensor's layout: one residual tensor's
/// (in the base's row order, trimmed where the converter trims), slices of
/// one after another, or the experts' one after another.
fn layout_rows<'a>(
    residual: &'a Residual,
    rtensors: &[ResidualTensor<'a>],
    p: &Pairing,
) -> Box<dyn RowSource + 'a> {
    if let Some(pieces) = &p.pieces {
        let parts = pieces.iter().map(|&(perm, n)| {
            let mut r = residual.rows(&rtensors[p.residual], perm);
            r.n_rows = n;
            Box::new(r) as Box<dyn RowSource + 'a>
        });
        return Box::new(StackedRows {
            parts: parts.collect(),
        });
    }
    let one = |i: usize| {
        let mut r = residual.rows(&rtensors[i], p.permutation);
        if let Some(n) = p.rows.filter(|&n| n < r.n_rows) {
            // Trimmed: the first rows only; split: rows picked by the permutation.
            if p.permutation == RowPermutation::Identity {
                let rb = r.data.len() / r.n_rows.max(1);
                r.data = &r.data[..n * rb];
            }
            r.n_rows = n;
        }
        r
    };
    let picked = |i: usize| -> Box<dyn RowSource + 'a> {
        match (p.columns, p.column_order) {
            (Some((offset, step)), _) => Box::new(ColumnSlice {
                rows: Box::new(one(i)),
                offset,
                step,
            }),
            (None, Some(order)) => Box::new(PermutedColumns {
                rows: Box::new(one(i)),
                order,
            }),
            (None, None) => Box::new(one(i)),
        }
    };
    if let Some((group, len)) = p.transpose {
        return Box::new(TransposedRows {
            rows: picked(p.residual),
            group,
            len,
        });
    }
    if let [only] = p.parts[..] {
        return picked(only);
    }
    Box::new(StackedRows {
        parts: p
            .parts
            .iter()
            .map(|&i| Box::new(one(i)) as Box<dyn RowSource + 'a>)
            .collect(),
    })
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
            rows[p.base] = Some(pair_rows(residual, rtensors, p));
        }
        if zero > 0 {
            log.note(&format!(
                "{zero} residual tensor(s) are all zero; their base tensors are copied unchanged"
            ));
        }
        rows
    }
}
