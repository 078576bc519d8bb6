//! Hugging Face → GGUF tensor names, and the row order llama.cpp's converter
//! gives q/k projections, per architecture.
//!
//! Everything here restates llama.cpp's `convert_hf_to_gguf.py` (the
//! `conversion/` package) and gguf-py's `tensor_mapping.py` / `constants.py`
//! for the families listed in [`supported_architectures`];
//! `fixtures/gen_naming_table.py` dumps gguf-py's own answers and
//! `tests/naming.rs` holds this module to them.
//!
//! Values the converter changes on the way, which a residual does not need:
//! - Gemma, Gemma 2 and Gemma 3 store `norm.weight + 1` (their RMSNorm scales
//!   by `1 + w`). A residual is a difference of two checkpoints, and
//!   `(w₁ + 1) − (w₀ + 1) = w₁ − w₀`, so it is added to the GGUF value as is.
//! - Gemma 3 drops `embed_tokens` rows past the tokenizer's vocabulary; a
//!   residual for `token_embd` must be cut to the base's row count by the
//!   caller, which sees both shapes.
//!
//! Other architectures whose converter only renames tensors map through
//! gguf-py's own tables ([`hf_names`], generated), with the same filters.

use super::hf_names::{self, Converter};

/// The architectures [`hf_to_gguf`] knows, by their GGUF `general.architecture`
/// name. Llama 2 / 3.x and Mistral all convert to `llama`.
pub fn supported_architectures() -> &'static [&'static str] {
    &[
        "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
    ]
}

/// What one architecture holds, after gguf-py's `MODEL_TENSORS[arch]`.
struct ArchSpec {
    /// Global GGUF tensors (no block index).
    globals: &'static [&'static str],
    /// Per-block GGUF tensors, without the `blk.N.` prefix.
    blocks: &'static [&'static str],
    /// The converter skips `lm_head.weight` (Gemma 1/2 tie it to the embedding).
    drops_lm_head: bool,
}

/// HF names every family here shares (transformers' Llama layout, and the
/// fused spellings gguf-py maps for all of them).
const COMMON_HF_BLOCKS: &[(&str, &str)] = &[
    ("input_layernorm", "attn_norm"),
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.qkv_proj", "attn_qkv"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
    // Phi-3's fused [gate; up], stored whole as ffn_up.
    ("mlp.gate_up_proj", "ffn_up"),
];

/// The post-attention norm feeds the FFN in Llama-like blocks…
const FFN_NORM_AFTER_ATTN: &[(&str, &str)] = &[("post_attention_layernorm", "ffn_norm")];
/// …but Gemma 2/3 have a norm after attention and a separate one before the FFN.
const GEMMA2_NORMS: &[(&str, &str)] = &[
    ("post_attention_layernorm", "post_attention_norm"),
    ("pre_feedforward_layernorm", "ffn_norm"),
    ("post_feedforward_layernorm", "post_ffw_norm"),
];
const QK_NORMS: &[(&str, &str)] = &[
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
];

const LLAMA_HF: &[&[(&str, &str)]] = &[COMMON_HF_BLOCKS, FFN_NORM_AFTER_ATTN];
const QWEN3_HF: &[&[(&str, &str)]] = &[COMMON_HF_BLOCKS, FFN_NORM_AFTER_ATTN, QK_NORMS];
const GEMMA2_HF: &[&[(&str, &str)]] = &[COMMON_HF_BLOCKS, GEMMA2_NORMS];
const GEMMA3_HF: &[&[(&str, &str)]] = &[COMMON_HF_BLOCKS, GEMMA2_NORMS, QK_NORMS];

struct Arch {
    spec: ArchSpec,
    /// HF per-block names (after `model.layers.N.`) → GGUF per-block names.
    hf: &'static [&'static [(&'static str, &'static str)]],
}

// Long because it is a data table (Hugging Face names per architecture),
// not logic; it is to be replaced by generated data.
fn arch(name: &str) -> Option<Arch> {
    let spec = |globals, blocks, drops_lm_head| ArchSpec {
        globals,
        blocks,
        drops_lm_head,
    };
    Some(match name {
        "llama" => Arch {
            spec: spec(
                &["token_embd", "output_norm", "output", "rope_freqs"],
                &[
                    "attn_norm",
                    "attn_qkv",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "attn_rot_embd",
                    "ffn_gate_inp",
                    "ffn_norm",
                    "ffn_gate",
                    "ffn_down",
                    "ffn_up",
                    "ffn_gate_exps",
                    "ffn_down_exps",
                    "ffn_up_exps",
                ],
                false,
            ),
            hf: LLAMA_HF,
        },
        "qwen2" => Arch {
            spec: spec(
                &["token_embd", "output_norm", "output", "rope_freqs"],
                &[
                    "attn_norm",
                    "attn_qkv",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_norm",
                    "ffn_gate",
                    "ffn_down",
                    "ffn_up",
                ],
                false,
            ),
            hf: LLAMA_HF,
        },
        "qwen3" => Arch {
            spec: spec(
                &["token_embd", "output_norm", "output", "rope_freqs"],
                &[
                    "attn_norm",
                    "attn_qkv",
                    "attn_q",
                    "attn_q_norm",
                    "attn_k",
                    "attn_k_norm",
                    "attn_v",
                    "attn_output",
                    "ffn_norm",
                    "ffn_gate",
                    "ffn_down",
                    "ffn_up",
                ],
                false,
            ),
            hf: QWEN3_HF,
        },
        "gemma" => Arch {
            spec: spec(
                &["token_embd", "output_norm"],
                &[
                    "attn_norm",
                    "attn_qkv",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_gate",
                    "ffn_down",
                    "ffn_up",
                    "ffn_norm",
                ],
                true,
            ),
            hf: LLAMA_HF,
        },
        "gemma2" => Arch {
            spec: spec(
                &["token_embd", "output_norm"],
                &[
                    "attn_qkv",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_gate",
                    "ffn_down",
                    "ffn_up",
                    "attn_norm",
                    "post_attention_norm",
                    "ffn_norm",
                    "post_ffw_norm",
                ],
                true,
            ),
            hf: GEMMA2_HF,
        },
        "gemma3" => Arch {
            spec: spec(
                &["token_embd", "output", "output_norm"],
                &[
                    "attn_qkv",
                    "attn_q",
                    "attn_q_norm",
                    "attn_k",
                    "attn_k_norm",
                    "attn_v",
                    "attn_output",
                    "ffn_gate",
                    "ffn_down",
                    "ffn_up",
                    "attn_norm",
                    "post_attention_norm",
                    "ffn_norm",
                    "post_ffw_norm",
                ],
                false,
            ),
            hf: GEMMA3_HF,
        },
        "phi3" => Arch {
            spec: spec(
                &[
                    "token_embd",
                    "output_norm",
                    "output",
                    "rope_factors_long",
                    "rope_factors_short",
                ],
                &[
                    "attn_norm",
                    "attn_qkv",
                    "attn_q",
                    "attn_k",
                    "attn_v",
                    "attn_output",
                    "ffn_norm",
                    "ffn_down",
                    "ffn_up",
                ],
                false,
            ),
            hf: LLAMA_HF,
        },
        _ => return None,
    })
}

impl Arch {
    fn has_global(&self, g: &str) -> bool {
        self.spec.globals.contains(&g)
    }

    fn has_block(&self, b: &str) -> bool {
        self.spec.blocks.contains(&b)
    }

    fn hf_block(&self, part: &str) -> Option<&'static str> {
        self.hf
            .iter()
            .flat_map(|t| t.iter())
            .find(|(hf, _)| *hf == part)
            .map(|(_, g)| *g)
            .filter(|g| self.has_block(g))
    }

    /// gguf-py's `TensorNameMap` lookup of one key (no suffix handling).
    fn lookup(&self, key: &str) -> Option<String> {
        // GGUF names map to themselves, as in gguf-py.
        if self.has_global(key) {
            return Some(key.to_string());
        }
        if let Some((bid, part)) = split_block(key, "blk.") {
            return self.has_block(part).then(|| format!("blk.{bid}.{part}"));
        }
        let global = match key {
            "model.embed_tokens" => Some("token_embd"),
            "model.norm" => Some("output_norm"),
            "lm_head" => Some("output"),
            _ => None,
        };
        if let Some(g) = global {
            return self.has_global(g).then(|| g.to_string());
        }
        let (bid, part) = split_block(key, "model.layers.")?;
        let g = self.hf_block(part)?;
        Some(format!("blk.{bid}.{g}"))
    }
}

/// `prefix` + a block index as `str.format` writes it + `.` + the rest.
fn split_block<'a>(key: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (num, part) = rest.split_once('.')?;
    let canonical = !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit())
        && (num == "0" || !num.starts_with('0'));
    if !canonical {
        return None;
    }
    Some((num.parse().ok()?, part))
}

/// Tensors of multimodal wrappers, which a text model's converter drops
/// (`TextModel.filter_tensors` in llama.cpp's `conversion/base.py`, verbatim).
fn is_multimodal(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "mlp",
        "vit.",
        "vpm.",
        "siglip2.",
        "conformer.",
        "merger.",
        "resampler.",
        "sound_encoder.",
        "sound_projection.",
        "speech_embeddings.",
    ];
    const PARTS: &[&str] = &[
        "visual.",
        "vision.",
        "audio.",
        "talker.",
        "vision_",
        "audio_",
        "token2wav.",
        "code2wav.",
        "projector.",
        "pre_mm_projector_norm",
        "image_newline",
        "view_seperator",
        "patch_embed",
        "patch_embedding",
        "patch_merger.",
        "patch_merge_mlp.",
        "model.connector.",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p)) || PARTS.iter().any(|p| name.contains(p))
}

/// The GGUF name llama.cpp's converter gives the HF tensor `hf_name` of an
/// `arch` checkpoint, or `None` when it drops the tensor, cannot map it, or
/// `arch` is not supported. A name already in GGUF form maps to itself (so
/// `Some(n) == hf_name` means the tensor is already in GGUF layout).
pub fn hf_to_gguf(arch_name: &str, hf_name: &str) -> Option<String> {
    let Some(arch) = arch(arch_name) else {
        return renames_only(arch_name)
            .then(|| hf_to_gguf_generated(arch_name, hf_name))
            .flatten();
    };
    let name = filtered_name(arch_name, hf_name)?;
    if arch.spec.drops_lm_head && name == "lm_head.weight" {
        return None;
    }
    // TensorNameMap.get_name(key, try_suffixes=(".weight", ".bias")).
    if let Some(g) = arch.lookup(&name) {
        return Some(g);
    }
    for suffix in [".weight", ".bias"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            if let Some(g) = arch.lookup(stem) {
                return Some(g + suffix);
            }
        }
    }
    None
}

/// The name the converter's shared filters hand to `TensorNameMap`, or `None`
/// when they drop the tensor.
fn filtered_name(arch_name: &str, hf_name: &str) -> Option<String> {
    if is_multimodal(hf_name) {
        return None;
    }
    // `prepare_tensors` skips these buffers.
    if hf_name.ends_with(".attention.masked_bias")
        || hf_name.ends_with(".attention.bias")
        || hf_name.ends_with(".rotary_emb.inv_freq")
    {
        return None;
    }
    let mut name = hf_name.to_string();
    // LlamaModel.filter_tensors (SmolVLM), then ModelBase.filter_tensors
    // (router bias spelling; VLM wrappers). The hand tables map no router
    // bias either way.
    if arch_name == "llama" {
        name = name.replace("text_model.", "");
    }
    if name.ends_with("e_score_correction_bias") {
        name = name.replace("e_score_correction_bias", "e_score_correction.bias");
    }
    Some(name.replace("language_model.", ""))
}

/// [`hf_to_gguf`] from gguf-py's tables alone ([`hf_names`]), for any
/// architecture gguf-py knows, whatever else its converter does: the
/// converter's shared filters, then `TensorNameMap.get_name`. For the
/// hand-mapped families this is a cross-check of the hand tables.
pub fn hf_to_gguf_generated(arch_name: &str, hf_name: &str) -> Option<String> {
    let name = filtered_name(arch_name, hf_name)?;
    hf_names::lookup(arch_name, &name)
}

/// True when `name` is already a GGUF tensor name of `arch` (with or without
/// `.weight`/`.bias`), i.e. the tensor needs no renaming and no permutation.
pub fn is_gguf_name(arch_name: &str, name: &str) -> bool {
    let stem = name
        .strip_suffix(".weight")
        .or_else(|| name.strip_suffix(".bias"))
        .unwrap_or(name);
    let Some(arch) = arch(arch_name) else {
        return renames_only(arch_name) && hf_names::holds(arch_name, stem);
    };
    arch.has_global(stem) || split_block(stem, "blk.").is_some_and(|(_, part)| arch.has_block(part))
}

/// Architectures outside the hand table that [`hf_to_gguf`] maps from
/// gguf-py's tables ([`hf_names`]): those whose converter only renames, so
/// that a residual in HF layout needs no transform.
fn renames_only(arch_name: &str) -> bool {
    arch(arch_name).is_none() && hf_names::converter(arch_name) == Some(Converter::Rename)
}

/// Every architecture [`hf_to_gguf`] maps: [`supported_architectures`] (hand
/// tables) and then, from gguf-py's tables, those whose converter only renames.
pub fn mapped_architectures() -> impl Iterator<Item = &'static str> {
    let generated = hf_names::architectures().filter(|a| renames_only(a));
    supported_architectures().iter().copied().chain(generated)
}

/// How the rows of a GGUF tensor relate to the rows of its HF original.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowPermutation {
    /// Same order.
    Identity,
    /// `LlamaModel.permute`: within each of `n_head` heads, HF's
    /// `[first half | second half]` rotary layout becomes interleaved pairs.
    LlamaRope {
        /// Heads the rows are split into (`n_head` for q, `n_head_kv` for k).
        n_head: usize,
    },
}

/// The row permutation llama.cpp's converter applied to GGUF tensor
/// `gguf_name` of an `arch` model: `attn_q` (weight or bias) with `n_head`,
/// `attn_k` with `n_head_kv`, for `llama` only (`LlamaModel.undo_permute`;
/// Qwen, Gemma and Phi-3 converters keep HF order).
pub fn row_permutation(
    arch: &str,
    gguf_name: &str,
    n_head: usize,
    n_head_kv: usize,
) -> RowPermutation {
    if arch != "llama" {
        return RowPermutation::Identity;
    }
    let stem = gguf_name
        .strip_suffix(".weight")
        .or_else(|| gguf_name.strip_suffix(".bias"));
    match stem.and_then(|s| split_block(s, "blk.")) {
        Some((_, "attn_q")) => RowPermutation::LlamaRope { n_head },
        // `permute(w, n_head, n_head_kv)` uses n_head_kv whenever it differs.
        Some((_, "attn_k")) => RowPermutation::LlamaRope { n_head: n_head_kv },
        _ => RowPermutation::Identity,
    }
}

impl RowPermutation {
    /// The HF row that lands in GGUF row `dst_row` of a tensor with `rows`
    /// rows.
    ///
    /// `w.reshape(n_head, 2, rows / n_head / 2, cols).swapaxes(1, 2).reshape(rows, cols)`:
    /// GGUF row `(h, i, j)` (head, pair index, half) reads HF row `(h, j, i)`.
    /// Shapes the reshape rejects (`rows` not a multiple of `2 * n_head`, or
    /// `n_head == 0`) and `dst_row >= rows` map to themselves; callers check
    /// shapes with [`RowPermutation::fits`] first.
    pub fn source_row(&self, rows: usize, dst_row: usize) -> usize {
        match *self {
            RowPermutation::Identity => dst_row,
            RowPermutation::LlamaRope { n_head } => {
                if !self.fits(rows) || dst_row >= rows {
                    return dst_row;
                }
                let half = rows / n_head / 2;
                let head = dst_row / (2 * half);
                let within = dst_row % (2 * half);
                let (i, j) = (within / 2, within % 2);
                head * 2 * half + j * half + i
            }
        }
    }

    /// Whether a tensor with `rows` rows can be permuted (the reshape works).
    pub fn fits(&self, rows: usize) -> bool {
        match *self {
            RowPermutation::Identity => true,
            RowPermutation::LlamaRope { n_head } => {
                n_head
                    .checked_mul(2)
                    .and_then(|pair| rows.checked_rem(pair))
                    == Some(0)
            }
        }
    }
}
