//! gguf-py's Hugging Face → GGUF tensor names for every architecture it
//! knows, read from `hf_names.tsv` (written by `fixtures/gen_hf_names.py`
//! from the gguf-py vendored in llama-cpp-python 0.3.36).
//!
//! [`lookup`] answers as `TensorNameMap(arch, n_blocks).get_name(key,
//! try_suffixes=(".weight", ".bias"))` does, for any block count: `{bid}`
//! matches a block index as Python's `str.format` writes it. Where gguf-py's
//! tables spell one key for two tensors, the later insertion wins, as in its
//! dict. No mapped name of this gguf-py holds `{xid}` (the five tensors that
//! do are in no `TensorNameMap` table); loading refuses a table that has one.
//!
//! The names alone: whether the converter also transforms a tensor is
//! [`converter`]'s coarse answer, read off llama.cpp's `conversion/` classes.

use std::collections::HashMap;
use std::sync::OnceLock;

const DATA: &str = include_str!("hf_names.tsv");

/// What llama.cpp's converter does to an architecture's tensors besides
/// renaming them (the `converter` column of `hf_names.tsv`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// No registered text-model class overrides `modify_tensors`: every
    /// tensor is renamed by `TensorNameMap` and stored as it is.
    Rename,
    /// `LlamaModel.modify_tensors` (q/k row permutation, per-expert stacking).
    Llama,
    /// Some registered class overrides `modify_tensors`.
    Custom,
    /// No text-model class is registered for the architecture.
    None,
}

/// One key of an architecture's map: literal, or `prefix{bid}suffix`.
struct Key {
    prefix: &'static str,
    /// `Some` when the key holds `{bid}`.
    suffix: Option<&'static str>,
    /// The GGUF name, with `{bid}` when the key has one.
    gguf: &'static str,
    /// Insertion order within the key's phase (globals, then blocks).
    order: usize,
    block: bool,
}

struct Arch {
    name: &'static str,
    converter: Converter,
    /// `MODEL_TENSORS[arch]` as GGUF names (`{bid}` patterns for blocks).
    tensors: Vec<&'static str>,
    literal: HashMap<&'static str, Key>,
    patterns: Vec<Key>,
}

fn archs() -> &'static [Arch] {
    static ARCHS: OnceLock<Vec<Arch>> = OnceLock::new();
    ARCHS.get_or_init(|| parse(DATA))
}

fn parse(data: &'static str) -> Vec<Arch> {
    type Table = Vec<(&'static str, Vec<&'static str>)>;
    let mut names: HashMap<&str, &str> = HashMap::new();
    let (mut globals, mut blocks): (Table, Table) = (Vec::new(), Vec::new());
    let mut overrides: HashMap<&str, Table> = HashMap::new();
    let mut out = Vec::new();
    for line in data.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&'static str> = line.split('\t').collect();
        match f[0] {
            "G" | "B" | "N" => {
                names.insert(f[1], f[2]);
                let table = (f[1], f[3..].to_vec());
                match f[0] {
                    "G" => globals.push(table),
                    "B" => blocks.push(table),
                    _ => {}
                }
            }
            "O" => {
                names.insert(f[2], f[3]);
                overrides
                    .entry(f[1])
                    .or_default()
                    .push((f[2], f[4..].to_vec()));
            }
            "A" => out.push(arch(
                f[1], f[2], f[3], &names, &globals, &blocks, &overrides,
            )),
            other => panic!("hf_names.tsv: unknown line kind {other:?}"),
        }
    }
    out
}

/// `TensorNameMap.__init__` for one architecture, with `{bid}` left open.
fn arch(
    name: &'static str,
    converter: &str,
    held: &'static str,
    names: &HashMap<&str, &'static str>,
    globals: &[(&'static str, Vec<&'static str>)],
    blocks: &[(&'static str, Vec<&'static str>)],
    overrides: &HashMap<&str, Vec<(&'static str, Vec<&'static str>)>>,
) -> Arch {
    let held: Vec<&str> = held.split(' ').filter(|t| !t.is_empty()).collect();
    // block_mappings_cfg.update(arch_block_mappings_cfg[arch]).
    let mut block_cfg: Vec<(&str, &[&str])> =
        blocks.iter().map(|(t, k)| (*t, k.as_slice())).collect();
    for (t, keys) in overrides.get(name).into_iter().flatten() {
        match block_cfg.iter_mut().find(|(b, _)| b == t) {
            Some(entry) => entry.1 = keys,
            None => block_cfg.push((t, keys)),
        }
    }
    let mut a = Arch {
        name,
        converter: match converter {
            "rename" => Converter::Rename,
            "llama" => Converter::Llama,
            "custom" => Converter::Custom,
            _ => Converter::None,
        },
        tensors: held.iter().map(|t| names[t]).collect(),
        literal: HashMap::new(),
        patterns: Vec::new(),
    };
    let phases = [
        (
            false,
            globals.iter().map(|(t, k)| (*t, k.as_slice())).collect(),
        ),
        (true, block_cfg),
    ];
    let mut order = 0;
    for (block, cfg) in phases {
        for (t, keys) in cfg {
            if !held.contains(&t) {
                continue;
            }
            let gguf = names[t];
            for key in std::iter::once(gguf).chain(keys.iter().copied()) {
                order += 1;
                a.insert(key, gguf, order, block);
            }
        }
    }
    a
}

impl Arch {
    fn insert(&mut self, key: &'static str, gguf: &'static str, order: usize, block: bool) {
        assert!(
            !key.contains("{xid}") && !gguf.contains("{xid}"),
            "hf_names.tsv: {{xid}} in {key:?} → {gguf:?}"
        );
        match key.split_once("{bid}") {
            Some((prefix, suffix)) => {
                assert!(!suffix.contains('{'), "hf_names.tsv: {key:?}");
                self.patterns.push(Key {
                    prefix,
                    suffix: Some(suffix),
                    gguf,
                    order,
                    block,
                })
            }
            None => {
                assert!(!gguf.contains("{bid}"), "hf_names.tsv: {key:?} → {gguf:?}");
                let k = Key {
                    prefix: key,
                    suffix: None,
                    gguf,
                    order,
                    block,
                };
                self.literal.insert(key, k);
            }
        }
    }

    /// `self.mapping.get(key)`: the last insertion of `key`. Python inserts
    /// globals, then every block entry once per block index, so a literal
    /// block key lands after any `{bid}` key of an earlier block; it is taken
    /// to land after a `{bid}` key of the last block too (a clash that needs
    /// the block count: gguf-py has one, in `clip`).
    fn get(&self, key: &str) -> Option<String> {
        let rank = |k: &Key, bid: usize| {
            (
                k.block,
                if k.suffix.is_some() { bid } else { usize::MAX },
                k.order,
            )
        };
        let mut best = self
            .literal
            .get(key)
            .map(|k| (rank(k, 0), k.gguf.to_string()));
        for k in &self.patterns {
            let Some(bid) = match_bid(key, k) else {
                continue;
            };
            let r = rank(k, bid);
            if best.as_ref().is_none_or(|(b, _)| r > *b) {
                best = Some((r, k.gguf.replace("{bid}", &bid.to_string())));
            }
        }
        best.map(|(_, g)| g)
    }
}

/// The block index `key` fills into `prefix{bid}suffix`, if it does, written
/// as `str.format` writes a non-negative int.
fn match_bid(key: &str, k: &Key) -> Option<usize> {
    canonical_index(key.strip_prefix(k.prefix)?.strip_suffix(k.suffix?))
}

fn canonical_index(num: Option<&str>) -> Option<usize> {
    let num = num?;
    let canonical = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit())
        && (num == "0" || !num.starts_with('0'));
    canonical.then(|| num.parse().ok()).flatten()
}

fn find(arch: &str) -> Option<&'static Arch> {
    archs().iter().find(|a| a.name == arch)
}

/// Every architecture of gguf-py's `MODEL_ARCH_NAMES`, by its GGUF name.
pub fn architectures() -> impl Iterator<Item = &'static str> {
    archs().iter().map(|a| a.name)
}

/// Whether gguf-py knows `arch`.
pub fn knows(arch: &str) -> bool {
    find(arch).is_some()
}

/// What llama.cpp's converter does to `arch`'s tensors besides renaming them.
pub fn converter(arch: &str) -> Option<Converter> {
    find(arch).map(|a| a.converter)
}

/// `MODEL_TENSORS[arch]` as GGUF names, `{bid}` standing for a block index.
pub fn tensors(arch: &str) -> impl Iterator<Item = &'static str> {
    find(arch)
        .into_iter()
        .flat_map(|a| a.tensors.iter().copied())
}

/// Whether `gguf_stem` (no `.weight`/`.bias`) names a tensor of
/// `MODEL_TENSORS[arch]`, block tensors with any block index.
pub fn holds(arch: &str, gguf_stem: &str) -> bool {
    tensors(arch).any(|t| match t.split_once("{bid}") {
        None => t == gguf_stem,
        Some((prefix, suffix)) => canonical_index(
            gguf_stem
                .strip_prefix(prefix)
                .and_then(|s| s.strip_suffix(suffix)),
        )
        .is_some(),
    })
}

/// `TensorNameMap(arch, n).get_name(key, try_suffixes=(".weight", ".bias"))`
/// for a model with more than the block index in `key` blocks: the GGUF name
/// of `key`, or `None`.
///
/// Per-expert HF tensors (`….experts.0.gate_proj.weight`) are in no gguf-py
/// table, so they map to `None`: the converter stacks them into one
/// `…_exps` tensor, which is not a rename.
pub fn lookup(arch: &str, key: &str) -> Option<String> {
    let a = find(arch)?;
    if let Some(g) = a.get(key) {
        return Some(g);
    }
    [".weight", ".bias"].iter().find_map(|suffix| {
        let stem = key.strip_suffix(suffix)?;
        a.get(stem).map(|g| g + suffix)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_loads_and_holds_every_gguf_py_architecture() {
        assert_eq!(architectures().count(), 153);
        assert!(knows("olmo2") && !knows("mistral"));
        assert_eq!(converter("phi3"), Some(Converter::Rename));
        assert_eq!(converter("granite"), Some(Converter::Llama));
        assert!(tensors("qwen3").any(|t| t == "blk.{bid}.attn_q_norm"));
    }

    #[test]
    fn block_indices_match_as_python_writes_them() {
        let q = |k| lookup("olmo2", k);
        assert_eq!(
            q("model.layers.12.self_attn.q_proj.weight").as_deref(),
            Some("blk.12.attn_q.weight")
        );
        assert_eq!(q("model.layers.012.self_attn.q_proj.weight"), None);
        assert_eq!(q("model.layers..self_attn.q_proj.weight"), None);
        assert_eq!(q("model.layers.1x.self_attn.q_proj.weight"), None);
        assert_eq!(q("blk.4.attn_q.bias").as_deref(), Some("blk.4.attn_q.bias"));
    }
}
