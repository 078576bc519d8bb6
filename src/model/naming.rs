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
//!   residual for `token_embd` is cut to the base's row count
//!   ([`embedding_rows`]).
//!
//! Other architectures map through gguf-py's own tables ([`hf_names`],
//! generated), with the same filters, when their converter only renames or
//! when [`transforms`] restates what it does: q/k permutation
//! ([`row_permutation`]), expert stacking ([`expert_part`]), the embedding
//! trim ([`embedding_rows`]), GraniteMoE's split ([`split_halves`]),
//! DeepSeek's `kv_b_proj` split ([`kv_b_split`]), gpt-oss's fused experts
//! ([`fused_experts`]), Gemma 4's own names ([`gemma4_router_scale`]),
//! Qwen3-Next's linear attention ([`qkvz_split`], [`squeezed`],
//! [`value_map`]).

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

/// Mixtral's router (Mixtral converts to `llama`).
const MIXTRAL_ROUTER: &[(&str, &str)] = &[("block_sparse_moe.gate", "ffn_gate_inp")];

const LLAMA_HF: &[&[(&str, &str)]] = &[COMMON_HF_BLOCKS, FFN_NORM_AFTER_ATTN];
const LLAMA_MOE_HF: &[&[(&str, &str)]] = &[COMMON_HF_BLOCKS, FFN_NORM_AFTER_ATTN, MIXTRAL_ROUTER];
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
            hf: LLAMA_MOE_HF,
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
        // A fused tensor is no one GGUF tensor ([`fused_experts`]).
        return (mapped_generated(arch_name) && fused_experts(arch_name, hf_name).is_none())
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
    // GptOssModel.filter_tensors (sinks), then its modify_tensors (down_proj_bias).
    if arch_name == "gpt-oss" {
        if name.contains("sinks") {
            name += ".weight";
        }
        name = name.replace("down_proj_bias", "down_proj.bias");
    }
    if arch_name == "gemma4" {
        name = gemma4_weight_suffix(name);
    }
    if transforms(arch_name).is_some_and(|t| t.linear_attention) {
        name = dt_bias_renamed(name);
    }
    if name.ends_with("e_score_correction_bias") {
        name = name.replace("e_score_correction_bias", "e_score_correction.bias");
    }
    Some(name.replace("language_model.", ""))
}

/// `Qwen3NextModel.modify_tensors` renames `….dt_bias` to `….dt_proj.bias`
/// before the lookup.
fn dt_bias_renamed(name: String) -> String {
    match name.strip_suffix(".dt_bias") {
        Some(stem) => format!("{stem}.dt_proj.bias"),
        None => name,
    }
}

/// `Gemma4Model.filter_tensors`: parameters transformers stores without a
/// `.weight` suffix (`layer_scalar`, `per_dim_scale`, the fused experts'
/// `gate_up_proj` / `down_proj`) get one, as the converter's tables expect.
fn gemma4_weight_suffix(mut name: String) -> String {
    const KEEP: &[&str] = &[
        ".weight",
        ".weight_scale",
        ".weight_scale_2",
        ".input_scale",
    ];
    let bare_expert = name.contains(".experts.") && !KEEP.iter().any(|s| name.ends_with(s));
    if name.ends_with("per_dim_scale") || name.ends_with("layer_scalar") || bare_expert {
        name += ".weight";
    }
    name
}

/// `Gemma4Model.modify_tensors`' own names: the router's `scale` becomes
/// `blk.N.ffn_gate_inp.scale` and its `per_expert_scale`
/// `blk.N.ffn_down_exps.scale` (both otherwise copied as they are).
fn gemma4_router_scale(name: &str) -> Option<String> {
    let (bid, rest) = split_block(name, "model.layers.")?;
    let gguf = match rest {
        "router.scale" => "ffn_gate_inp",
        "router.per_expert_scale" => "ffn_down_exps",
        _ => return None,
    };
    Some(format!("blk.{bid}.{gguf}.scale"))
}

/// [`hf_to_gguf`] from gguf-py's tables alone ([`hf_names`]), for any
/// architecture gguf-py knows, whatever else its converter does: the
/// converter's shared filters, then `TensorNameMap.get_name`. For the
/// hand-mapped families this is a cross-check of the hand tables.
pub fn hf_to_gguf_generated(arch_name: &str, hf_name: &str) -> Option<String> {
    let name = filtered_name(arch_name, hf_name)?;
    if arch_name == "gemma4" {
        if let Some(g) = gemma4_router_scale(&name) {
            return Some(g);
        }
    }
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
        return mapped_generated(arch_name) && hf_names::holds(arch_name, stem);
    };
    arch.has_global(stem) || split_block(stem, "blk.").is_some_and(|(_, part)| arch.has_block(part))
}

/// Architectures outside the hand table that [`hf_to_gguf`] maps from
/// gguf-py's tables ([`hf_names`]): those whose converter only renames, or
/// whose transforms [`transforms`] restates.
fn mapped_generated(arch_name: &str) -> bool {
    arch(arch_name).is_none() && transforms(arch_name).is_some()
}

/// Every architecture [`hf_to_gguf`] maps: [`supported_architectures`] (hand
/// tables) and then, from gguf-py's tables, those whose converter only
/// renames or transforms as [`transforms`] says.
pub fn mapped_architectures() -> impl Iterator<Item = &'static str> {
    let generated = hf_names::architectures().filter(|a| mapped_generated(a));
    supported_architectures().iter().copied().chain(generated)
}

/// What llama.cpp's converter does to an architecture's tensors beyond
/// renaming them, each rule one small function here, selected per
/// architecture by [`transforms`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Transforms {
    /// q/k rows permuted for rotary embeddings ([`row_permutation`]).
    pub permute_qk: bool,
    /// `token_embd` cut to the tokenizer's vocabulary: a residual's longer
    /// `embed_tokens` gives its first rows only ([`embedding_rows`]).
    pub trim_embedding: bool,
    /// Per-expert tensors stacked into one 3-D tensor ([`expert_part`]).
    pub experts: Option<ExpertStack>,
    /// GraniteMoE's fused expert `input_linear` (`[E, 2F, D]`) split into
    /// gate (first `F` rows of each expert) and up ([`split_halves`]).
    pub split_input_linear: bool,
    /// DeepSeek's `kv_b_proj` split per head into `attn_k_b` (transposed)
    /// and `attn_v_b` ([`kv_b_split`]).
    pub split_kv_b: bool,
    /// gpt-oss's fused expert tensors: `down_proj` transposed per expert,
    /// `gate_up_proj` transposed and split by interleaved columns, its bias
    /// split the same way ([`fused_experts`]).
    pub fused_experts: bool,
    /// Qwen3-Next's linear attention: `in_proj_qkvz`, grouped per key head,
    /// regrouped into `attn_qkv` and `attn_gate` ([`qkvz_split`]);
    /// `conv1d` squeezed ([`squeezed`]); `A_log` stored as `−exp(A_log)`
    /// ([`value_map`]); `dt_bias` renamed `dt_proj.bias`.
    pub linear_attention: bool,
    /// Qwen3.5's linear attention also stores value heads tiled (`[r, K]`)
    /// instead of grouped by key head (`[K, r]`) ([`v_head_order`]).
    pub v_heads_tiled: bool,
}

/// How a converter spells the per-expert tensors it stacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpertStack {
    /// `LlamaModel.modify_tensors` (Mixtral):
    /// `model.layers.N.block_sparse_moe.experts.E.w{1,2,3}.weight` stacked
    /// as `layers.N.feed_forward.experts.w{1,2,3}.weight`.
    Mixtral,
    /// `Qwen2MoeModel.modify_tensors` (and Qwen3-MoE, its subclass; OLMoE's
    /// copy of it):
    /// `model.layers.N.mlp.experts.E.{gate,up,down}_proj.weight` stacked as
    /// `model.layers.N.mlp.experts.{gate,up,down}_proj.weight`.
    Qwen2Moe,
}

/// The transforms of `arch`'s converter, or `None` when it does something
/// qresidual does not restate (a residual in HF layout is refused then).
///
/// From the pinned `conversion/*.py`: `LlamaModel` and the subclasses that
/// keep its `modify_tensors` and `undo_permute = True` permute q/k and stack
/// Mixtral-style experts; `Qwen2MoeModel`/`Qwen3MoeModel`/`OlmoeModel` stack
/// experts without permuting; `DeepseekV2Model` splits `kv_b_proj`;
/// `GptOssModel` cuts its fused experts ([`fused_experts`]); `Gemma3Model` trims the embedding (its `norm + 1` needs
/// nothing: a difference is unaffected), and so does `Gemma4Model`, its
/// subclass (no norm offset; its own names: [`gemma4_router_scale`]); Qwen 2/3, Gemma 1/2 and Phi-3 only
/// rename and shift norms; converters that only rename, by the generated
/// table's `converter` column.
pub fn transforms(arch_name: &str) -> Option<Transforms> {
    let llama = Transforms {
        permute_qk: true,
        experts: Some(ExpertStack::Mixtral),
        ..Transforms::default()
    };
    Some(match arch_name {
        "llama" | "arcee" | "granite" | "smollm3" | "nanbeige" | "llama-embed" => llama,
        "granitemoe" => Transforms {
            split_input_linear: true,
            ..llama
        },
        "deepseek2" => Transforms {
            experts: Some(ExpertStack::Qwen2Moe),
            split_kv_b: true,
            ..Transforms::default()
        },
        "qwen2moe" | "qwen3moe" | "olmoe" | "ernie4_5-moe" | "glm4moe" => Transforms {
            experts: Some(ExpertStack::Qwen2Moe),
            ..Transforms::default()
        },
        "gpt-oss" => Transforms {
            fused_experts: true,
            ..Transforms::default()
        },
        "qwen3next" => Transforms {
            experts: Some(ExpertStack::Qwen2Moe),
            linear_attention: true,
            ..Transforms::default()
        },
        "qwen35" | "qwen35moe" => Transforms {
            experts: Some(ExpertStack::Qwen2Moe),
            linear_attention: true,
            v_heads_tiled: true,
            ..Transforms::default()
        },
        "gemma3" | "gemma4" => Transforms {
            trim_embedding: true,
            ..Transforms::default()
        },
        "qwen2" | "qwen3" | "gemma" | "gemma2" | "phi3" => Transforms::default(),
        a if hf_names::converter(a) == Some(Converter::Rename) => Transforms::default(),
        _ => return None,
    })
}

/// How many of a residual's `residual_rows` rows of HF tensor `hf_name` go
/// into GGUF tensor `gguf_name` of `base_rows` rows: all of them, or, where
/// the converter trims the embedding to the vocabulary (Gemma 3), the first
/// `base_rows` of a longer `token_embd`. `None` when the shapes do not fit.
pub fn embedding_rows(
    arch_name: &str,
    gguf_name: &str,
    residual_rows: u64,
    base_rows: u64,
) -> Option<u64> {
    if residual_rows == base_rows {
        return Some(base_rows);
    }
    let trims = transforms(arch_name).is_some_and(|t| t.trim_embedding);
    (trims && gguf_name == "token_embd.weight" && residual_rows > base_rows).then_some(base_rows)
}

/// For an HF tensor `arch`'s converter splits in two along its rows (in
/// each expert): the GGUF tensors the halves become, first half first
/// (`GraniteMoeModel.modify_tensors`: `block_sparse_moe.input_linear` →
/// `ffn_gate_exps`, `ffn_up_exps`).
pub fn split_halves(arch_name: &str, hf_name: &str) -> Option<[String; 2]> {
    transforms(arch_name)?.split_input_linear.then_some(())?;
    let into = ["ffn_gate_exps", "ffn_up_exps"];
    split_names(
        arch_name,
        hf_name,
        "block_sparse_moe.input_linear.weight",
        into,
    )
}

/// For Qwen3-Next's `linear_attn.in_proj_qkvz` (per key head `k`: rows
/// `[q | k | v | z]`): the GGUF tensors `[attn_qkv, attn_gate]` the
/// converter regroups it into (`Qwen3NextModel.modify_tensors`: `attn_qkv`
/// is every head's q, then every head's k, then every head's v;
/// `attn_gate` every head's z).
pub fn qkvz_split(arch_name: &str, hf_name: &str) -> Option<[String; 2]> {
    transforms(arch_name)?.linear_attention.then_some(())?;
    let into = ["attn_qkv", "attn_gate"];
    split_names(arch_name, hf_name, "linear_attn.in_proj_qkvz.weight", into)
}

/// Whether the converter squeezes GGUF tensor `gguf_name` of `arch` (drops
/// its unit dimensions: Qwen3-Next's `conv1d` `[C, 1, K]` → `ssm_conv1d`
/// `[C, K]`), so that a residual of the unsqueezed shape fits it.
pub fn squeezed(arch_name: &str, gguf_name: &str) -> bool {
    let linear = transforms(arch_name).is_some_and(|t| t.linear_attention);
    let stem = gguf_name.strip_suffix(".weight").unwrap_or(gguf_name);
    linear && split_block(stem, "blk.").is_some_and(|(_, part)| part == "ssm_conv1d")
}

/// The non-linear function the converter applies to GGUF tensor
/// `gguf_name` of `arch`, if any: Qwen3-Next stores `A_log` as
/// `ssm_a = −exp(A_log)` ([`ValueMap::NegExp`]). A residual of the HF
/// tensor is added before it ([`ValueMap::add`]).
pub fn value_map(arch_name: &str, gguf_name: &str) -> Option<ValueMap> {
    transforms(arch_name)?.linear_attention.then_some(())?;
    let (_, part) = split_block(gguf_name, "blk.")?;
    (part == "ssm_a").then_some(ValueMap::NegExp)
}

/// The sizes of a Gated DeltaNet linear attention, from the base's
/// `{arch}.ssm.*` metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearDims {
    /// Key heads (`ssm.group_count`).
    pub k_heads: usize,
    /// Value heads (`ssm.time_step_rank`), a multiple of `k_heads`.
    pub v_heads: usize,
    /// Size of a key head (`ssm.state_size`).
    pub k_dim: usize,
    /// Size of a value head (`ssm.inner_size / v_heads`).
    pub v_dim: usize,
}

/// Which axis of a tensor [`v_head_order`] reorders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Its rows.
    Rows,
    /// The columns of each row (1-D tensors are one row).
    Columns,
}

/// For a tensor of Qwen3.5's linear attention (`linear_attn.*` in
/// `hf_name`, GGUF `gguf_name`): the axis and order in which the converter
/// stores its value heads (`_LinearAttentionVReorderBase.modify_tensors`:
/// grouped by key head, `[K, r, d]`, become tiled, `[r, K, d]`), as a
/// [`RowPermutation::Tiled`] over that axis. `in_proj_qkv` and `conv1d`
/// reorder only the value rows after q and k; `in_proj_z` every row (d =
/// value head size); `in_proj_a`/`in_proj_b` rows and `A_log`/`dt_bias`
/// elements with d = 1; `out_proj` its columns. `None` when the key and
/// value head counts are equal (nothing moves) or the tensor holds none.
pub fn v_head_order(
    arch_name: &str,
    (hf_name, gguf_name): (&str, &str),
    dims: LinearDims,
) -> Option<(Axis, RowPermutation)> {
    transforms(arch_name)?.v_heads_tiled.then_some(())?;
    let LinearDims {
        k_heads,
        v_heads,
        k_dim,
        v_dim,
    } = dims;
    if !hf_name.contains("linear_attn.") || k_heads == 0 || v_heads <= k_heads {
        return None;
    }
    let stem = gguf_name
        .strip_suffix(".weight")
        .or_else(|| gguf_name.strip_suffix(".bias"))
        .unwrap_or(gguf_name);
    let (_, part) = split_block(stem, "blk.")?;
    let qk = 2 * k_heads * k_dim;
    let (axis, offset, len) = match part {
        "attn_qkv" | "ssm_conv1d" => (Axis::Rows, qk, v_dim),
        "attn_gate" => (Axis::Rows, 0, v_dim),
        "ssm_alpha" | "ssm_beta" => (Axis::Rows, 0, 1),
        "ssm_a" | "ssm_dt" => (Axis::Columns, 0, 1),
        "ssm_out" => (Axis::Columns, 0, v_dim),
        _ => return None,
    };
    let tiled = RowPermutation::Tiled {
        offset,
        groups: k_heads,
        per: v_heads / k_heads,
        len,
    };
    Some((axis, tiled))
}

/// For DeepSeek's `kv_b_proj` (`[H × (nope + v), R]`): the GGUF tensors
/// `[attn_k_b, attn_v_b]` the converter splits it into per head
/// (`DeepseekV2Model.modify_tensors`: the first `nope` rows of each head,
/// transposed to `[H, R, nope]`, and the other `v` rows, `[H, v, R]`).
pub fn kv_b_split(arch_name: &str, hf_name: &str) -> Option<[String; 2]> {
    transforms(arch_name)?.split_kv_b.then_some(())?;
    let into = ["attn_k_b", "attn_v_b"];
    split_names(arch_name, hf_name, "self_attn.kv_b_proj.weight", into)
}

/// `blk.N.{into}.weight` for both names of `into` when `hf_name` is block
/// N's `part`.
fn split_names(arch_name: &str, hf_name: &str, part: &str, into: [&str; 2]) -> Option<[String; 2]> {
    let name = filtered_name(arch_name, hf_name)?;
    let (bid, rest) = split_block(&name, "model.layers.")?;
    (rest == part).then(|| into.map(|g| format!("blk.{bid}.{g}.weight")))
}

/// One GGUF tensor cut from a fused HF expert tensor ([`fused_experts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedPart {
    /// The GGUF tensor.
    pub gguf: String,
    /// First column of the HF tensor (in each expert) it takes…
    pub offset: usize,
    /// …and every `step`th one after it.
    pub step: usize,
}

/// What the converter makes of a fused HF expert tensor ([`fused_experts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FusedExperts {
    /// The GGUF tensors, each from some of the HF tensor's columns.
    pub parts: Vec<FusedPart>,
    /// Each expert's `[rows, columns]` matrix is transposed after the
    /// columns are picked (weights; biases are not).
    pub transposed: bool,
}

/// For gpt-oss's fused expert tensors, what the converter cuts them into
/// (`GptOssModel.modify_tensors`, for checkpoints not in MXFP4):
/// `mlp.experts.down_proj` `[E, F, D]` → `ffn_down_exps.weight` `[E, D, F]`
/// (transposed); `mlp.experts.gate_up_proj` `[E, D, 2F]`, transposed to
/// `[E, 2F, D]`, → rows `::2` `ffn_gate_exps.weight`, rows `1::2`
/// `ffn_up_exps.weight`; `gate_up_proj_bias` `[E, 2F]` → columns `::2` and
/// `1::2` as the two biases. Names from gguf-py's table, as
/// `map_tensor_name` gives them.
pub fn fused_experts(arch_name: &str, hf_name: &str) -> Option<FusedExperts> {
    transforms(arch_name)?.fused_experts.then_some(())?;
    let name = filtered_name(arch_name, hf_name)?;
    let (bid, rest) = split_block(&name, "model.layers.")?;
    let part = |w: &str, suffix: &str, offset, step| {
        let hf = format!("model.layers.{bid}.mlp.experts.{w}.{suffix}");
        let gguf = hf_to_gguf_generated(arch_name, &hf)?;
        Some(FusedPart { gguf, offset, step })
    };
    let halves = |suffix| {
        Some(vec![
            part("gate_proj", suffix, 0, 2)?,
            part("up_proj", suffix, 1, 2)?,
        ])
    };
    let (parts, transposed) = match rest {
        "mlp.experts.down_proj" => (vec![part("down_proj", "weight", 0, 1)?], true),
        "mlp.experts.gate_up_proj" => (halves("weight")?, true),
        "mlp.experts.gate_up_proj_bias" => (halves("bias")?, false),
        _ => return None,
    };
    Some(FusedExperts { parts, transposed })
}

/// For a per-expert HF tensor `arch`'s converter stacks: the GGUF name of
/// the stacked tensor and the expert's index in it.
pub fn expert_part(arch_name: &str, hf_name: &str) -> Option<(String, usize)> {
    let rule = transforms(arch_name)?.experts?;
    let name = filtered_name(arch_name, hf_name)?;
    let (stacked, expert) = rule.stacked_name(&name)?;
    Some((hf_to_gguf_generated(arch_name, &stacked)?, expert))
}

impl ExpertStack {
    /// The name the converter gives the stack expert `E`'s tensor `name`
    /// joins, and `E`.
    fn stacked_name(self, name: &str) -> Option<(String, usize)> {
        let (bid, rest) = split_block(name, "model.layers.")?;
        let (inner, parts): (&str, &[&str]) = match self {
            ExpertStack::Mixtral => ("block_sparse_moe.experts.", &["w1", "w2", "w3"]),
            ExpertStack::Qwen2Moe => ("mlp.experts.", &["gate_proj", "up_proj", "down_proj"]),
        };
        let (expert, w) = split_block(rest, inner)?;
        let w = w.strip_suffix(".weight").filter(|w| parts.contains(w))?;
        let stacked = match self {
            ExpertStack::Mixtral => format!("layers.{bid}.feed_forward.experts.{w}.weight"),
            ExpertStack::Qwen2Moe => format!("model.layers.{bid}.mlp.experts.{w}.weight"),
        };
        Some((stacked, expert))
    }
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
    /// Part of a tensor split along its rows in groups ([`split_halves`],
    /// [`kv_b_split`]): the stored rows are groups of `group`, and this tensor
    /// takes rows `offset .. offset + len` of each.
    Slice {
        /// Stored rows per group (per expert, per head).
        group: usize,
        /// First row taken in each group.
        offset: usize,
        /// Rows taken from each group.
        len: usize,
    },
    /// Qwen3.5's value heads ([`v_head_order`]): after the first `offset`
    /// rows (kept), `groups × per` blocks of `len` rows stored group-major
    /// (`[groups, per, len]`) land block-major (`[per, groups, len]`); rows
    /// past them are kept.
    Tiled {
        /// Rows before the reordered ones.
        offset: usize,
        /// Key heads.
        groups: usize,
        /// Value heads per key head.
        per: usize,
        /// Rows per value head.
        len: usize,
    },
}

/// The row permutation llama.cpp's converter applied to GGUF tensor
/// `gguf_name` of an `arch` model: `attn_q` (weight or bias) with `n_head`,
/// `attn_k` with `n_head_kv`, for the architectures whose [`transforms`]
/// permute q/k (`LlamaModel.undo_permute`; Qwen, Gemma and Phi-3 converters
/// keep HF order).
pub fn row_permutation(
    arch: &str,
    gguf_name: &str,
    n_head: usize,
    n_head_kv: usize,
) -> RowPermutation {
    if !transforms(arch).is_some_and(|t| t.permute_qk) {
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
    ///
    /// [`RowPermutation::Slice`]: GGUF row `(g, i)` (group, row in the slice)
    /// reads stored row `g * group + offset + i`; `rows` is not needed.
    pub fn source_row(&self, rows: usize, dst_row: usize) -> usize {
        match *self {
            RowPermutation::Identity => dst_row,
            RowPermutation::Slice { group, offset, len } => {
                let len = len.max(1);
                (dst_row / len) * group + offset + dst_row % len
            }
            RowPermutation::Tiled {
                offset,
                groups,
                per,
                len,
            } => {
                let (groups, len) = (groups.max(1), len.max(1));
                let x = dst_row.wrapping_sub(offset);
                if dst_row < offset || x >= groups * per * len {
                    return dst_row;
                }
                let (j, k, i) = (x / (groups * len), (x / len) % groups, x % len);
                offset + (k * per + j) * len + i
            }
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
            RowPermutation::Identity | RowPermutation::Slice { .. } => true,
            RowPermutation::Tiled {
                offset,
                groups,
                per,
                len,
            } => offset + groups * per * len <= rows,
            RowPermutation::LlamaRope { n_head } => {
                n_head
                    .checked_mul(2)
                    .and_then(|pair| rows.checked_rem(pair))
                    == Some(0)
            }
        }
    }
}

/// An elementwise function llama.cpp's converter applies to a tensor's
/// values on the way to GGUF, which a difference does not pass through
/// (see `RowSource::value_map` in `rows`); selected per architecture by
/// [`value_map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueMap {
    /// `f(x) = −exp(x)` (Qwen3-Next's `A_log`, stored as `ssm_a`);
    /// `f⁻¹(y) = ln(−y)`.
    NegExp,
}

impl ValueMap {
    /// The function, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            ValueMap::NegExp => "−exp(·), always negative",
        }
    }

    /// `f(f⁻¹(base) + delta)`, in f64 and rounded once to f32: the
    /// checkpoint's value recovered from the stored one, the difference
    /// added where the converter adds it, and `f` applied again. A base
    /// value outside `f`'s range (`y ≥ 0` for `NegExp`) gives NaN, which
    /// the writer refuses naming the tensor.
    ///
    /// Not bit for bit the converter's `f(w + Δ)`: the base holds `f(w)`
    /// rounded, and the converter rounds `w + Δ` to f32 before `f` (half a
    /// unit of `A_log + Δ`, which `exp` turns into up to `|A_log + Δ| / 2`
    /// units of the result). For `NegExp` the two differ by at most
    /// `2 + |A_log + Δ| / 2` units in the last place of the converter's
    /// value while `|A_log| ≤ 4` (Qwen3-Next's `A_log` is the log of a decay
    /// rate in (0, 16], at most 2.8); measured against torch: ≤ 2 below 1,
    /// ≤ 3 up to 4, ≤ 9 up to 12.
    pub fn add(self, base: f32, delta: f32) -> f32 {
        match self {
            ValueMap::NegExp => {
                let w = (-(base as f64)).ln();
                -((w + delta as f64).exp()) as f32
            }
        }
    }
}
