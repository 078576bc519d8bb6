//! Per-tensor type choice of llama.cpp's quantizer (`src/llama-quant.cpp`):
//! given a target (`q4_k_m`, a plain type, or `keep`), the model's hparams and
//! its tensor list, the type llama.cpp's `llama_model_quantize` gives each
//! tensor, and the `general.file_type` it writes.
//!
//! Pure: no I/O. The caller passes metadata lookups and tensor descriptions.
//!
//! Only the ftypes that need no importance matrix are modelled ([`Mix`]);
//! the branches of `llama_tensor_get_type_impl` that only the IQ1/IQ2/IQ3,
//! Q2_K_S, TQ and Q2_0 ftypes reach are left out, as is everything only an
//! imatrix, `--tensor-type`, `--output-tensor-type` or
//! `--token-embedding-type` switches on (all at llama.cpp's defaults here).

// `u64::is_multiple_of` needs Rust 1.87; the workspace declares 1.80.
#![allow(clippy::manual_is_multiple_of)]

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use crate::quant::GgmlType;
use crate::{Error, Result};

/// What to quantize a model to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every tensor keeps its input type.
    Keep,
    /// One type for every tensor llama.cpp would quantize, as
    /// `llama-quantize --pure`; shapes that do not fit still fall back.
    Type(GgmlType),
    /// One of llama.cpp's mixes (`llama-quantize … Q4_K_M`).
    Mix(Mix),
}

/// The llama.cpp ftypes (`LLAMA_FTYPE_MOSTLY_*`) that need no importance matrix.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mix {
    /// `LLAMA_FTYPE_MOSTLY_Q2_K` (10).
    Q2_K,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_S` (11).
    Q3_K_S,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_M` (12).
    Q3_K_M,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_L` (13).
    Q3_K_L,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_S` (14).
    Q4_K_S,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_M` (15).
    Q4_K_M,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_S` (16).
    Q5_K_S,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_M` (17).
    Q5_K_M,
    /// `LLAMA_FTYPE_MOSTLY_Q6_K` (18).
    Q6_K,
    /// `LLAMA_FTYPE_MOSTLY_Q8_0` (7).
    Q8_0,
    /// `LLAMA_FTYPE_MOSTLY_Q4_0` (2).
    Q4_0,
    /// `LLAMA_FTYPE_MOSTLY_Q4_1` (3).
    Q4_1,
    /// `LLAMA_FTYPE_MOSTLY_Q5_0` (8).
    Q5_0,
    /// `LLAMA_FTYPE_MOSTLY_Q5_1` (9).
    Q5_1,
    /// `LLAMA_FTYPE_MOSTLY_IQ4_NL` (25).
    IQ4_NL,
    /// `LLAMA_FTYPE_MOSTLY_IQ4_XS` (30).
    IQ4_XS,
    /// `LLAMA_FTYPE_MOSTLY_MXFP4_MOE` (38).
    MXFP4_MOE,
    /// `LLAMA_FTYPE_MOSTLY_F16` (1).
    F16,
    /// `LLAMA_FTYPE_MOSTLY_BF16` (32).
    BF16,
}

impl Mix {
    /// Every mix.
    pub const ALL: &'static [Mix] = &[
        Mix::Q2_K,
        Mix::Q3_K_S,
        Mix::Q3_K_M,
        Mix::Q3_K_L,
        Mix::Q4_K_S,
        Mix::Q4_K_M,
        Mix::Q5_K_S,
        Mix::Q5_K_M,
        Mix::Q6_K,
        Mix::Q8_0,
        Mix::Q4_0,
        Mix::Q4_1,
        Mix::Q5_0,
        Mix::Q5_1,
        Mix::IQ4_NL,
        Mix::IQ4_XS,
        Mix::MXFP4_MOE,
        Mix::F16,
        Mix::BF16,
    ];

    /// Lower-case name, e.g. `q4_k_m` (llama-quantize spells it `Q4_K_M`).
    pub fn name(self) -> &'static str {
        match self {
            Mix::Q2_K => "q2_k",
            Mix::Q3_K_S => "q3_k_s",
            Mix::Q3_K_M => "q3_k_m",
            Mix::Q3_K_L => "q3_k_l",
            Mix::Q4_K_S => "q4_k_s",
            Mix::Q4_K_M => "q4_k_m",
            Mix::Q5_K_S => "q5_k_s",
            Mix::Q5_K_M => "q5_k_m",
            Mix::Q6_K => "q6_k",
            Mix::Q8_0 => "q8_0",
            Mix::Q4_0 => "q4_0",
            Mix::Q4_1 => "q4_1",
            Mix::Q5_0 => "q5_0",
            Mix::Q5_1 => "q5_1",
            Mix::IQ4_NL => "iq4_nl",
            Mix::IQ4_XS => "iq4_xs",
            Mix::MXFP4_MOE => "mxfp4_moe",
            Mix::F16 => "f16",
            Mix::BF16 => "bf16",
        }
    }

    /// Parse a mix name, case-insensitively (`q4_k_m`, `Q4_K_M`).
    pub fn parse(name: &str) -> Option<Mix> {
        Mix::ALL
            .iter()
            .copied()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// The `LLAMA_FTYPE_*` value, written as `general.file_type`.
    pub fn ftype(self) -> u32 {
        match self {
            Mix::F16 => 1,
            Mix::Q4_0 => 2,
            Mix::Q4_1 => 3,
            Mix::Q8_0 => 7,
            Mix::Q5_0 => 8,
            Mix::Q5_1 => 9,
            Mix::Q2_K => 10,
            Mix::Q3_K_S => 11,
            Mix::Q3_K_M => 12,
            Mix::Q3_K_L => 13,
            Mix::Q4_K_S => 14,
            Mix::Q4_K_M => 15,
            Mix::Q5_K_S => 16,
            Mix::Q5_K_M => 17,
            Mix::Q6_K => 18,
            Mix::IQ4_NL => 25,
            Mix::IQ4_XS => 30,
            Mix::BF16 => 32,
            Mix::MXFP4_MOE => 38,
        }
    }

    /// The type most tensors get: `llama_ftype_get_default_type`.
    pub fn default_type(self) -> GgmlType {
        match self {
            Mix::Q2_K => GgmlType::Q2_K,
            Mix::Q3_K_S | Mix::Q3_K_M | Mix::Q3_K_L => GgmlType::Q3_K,
            Mix::Q4_K_S | Mix::Q4_K_M => GgmlType::Q4_K,
            Mix::Q5_K_S | Mix::Q5_K_M => GgmlType::Q5_K,
            Mix::Q6_K => GgmlType::Q6_K,
            Mix::Q8_0 => GgmlType::Q8_0,
            Mix::Q4_0 => GgmlType::Q4_0,
            Mix::Q4_1 => GgmlType::Q4_1,
            Mix::Q5_0 => GgmlType::Q5_0,
            Mix::Q5_1 => GgmlType::Q5_1,
            Mix::IQ4_NL => GgmlType::IQ4_NL,
            Mix::IQ4_XS => GgmlType::IQ4_XS,
            Mix::MXFP4_MOE => GgmlType::MXFP4,
            Mix::F16 => GgmlType::F16,
            Mix::BF16 => GgmlType::BF16,
        }
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The ftype `llama-quantize --pure NAME` is run with to get `ty` everywhere
/// (its `Q3_K`/`Q4_K`/`Q5_K` aliases stand for the `_M` mixes); `None` for
/// types no imatrix-free ftype has as default type.
fn pure_ftype(ty: GgmlType) -> Option<u32> {
    Some(match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 12,
        GgmlType::Q4_K => 15,
        GgmlType::Q5_K => 17,
        GgmlType::Q6_K => 18,
        GgmlType::IQ4_NL => 25,
        GgmlType::IQ3_S => 26,
        GgmlType::IQ4_XS => 30,
        GgmlType::BF16 => 32,
        GgmlType::TQ1_0 => 36,
        GgmlType::TQ2_0 => 37,
        GgmlType::MXFP4 => 38,
        GgmlType::Q2_0 => 41,
        _ => return None,
    })
}

impl Target {
    /// Parse `keep`, a ggml type name (`q4_K`, `f16`: `--pure`), or a mix
    /// name (`q4_k_m`). A name that is both a type and a mix (`q4_0`, `q6_k`,
    /// `iq4_xs`, `q2_k`…) is the type; `mix:NAME` forces the mix.
    pub fn parse(s: &str) -> Result<Target> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("keep") {
            return Ok(Target::Keep);
        }
        if let Some(rest) = s.strip_prefix("mix:") {
            return Mix::parse(rest).map(Target::Mix).ok_or_else(|| {
                Error::Usage(format!("unknown mix `{rest}`; known: {}", mix_names()))
            });
        }
        if let Some(ty) = GgmlType::from_name(s) {
            if pure_ftype(ty).is_some() {
                return Ok(Target::Type(ty));
            }
            return Err(Error::Usage(format!(
                "llama.cpp cannot quantize to `{s}` without an importance matrix"
            )));
        }
        Mix::parse(s).map(Target::Mix).ok_or_else(|| {
            Error::Usage(format!(
                "unknown target `{s}`: use `keep`, a type (q4_K, q8_0, f16…) or a mix ({})",
                mix_names()
            ))
        })
    }
}

fn mix_names() -> String {
    Mix::ALL
        .iter()
        .map(|m| m.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Target {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Target::parse(s)
    }
}

/// The hparams llama-quant's choices depend on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelFacts {
    /// `general.architecture`.
    pub arch: String,
    /// `{arch}.block_count`, all layers including next-token-prediction ones
    /// (`hparams.n_layer_all`): the `n_ffn_down` of the layer counters.
    pub n_layer: usize,
    /// `{arch}.nextn_predict_layers`.
    pub n_layer_nextn: usize,
    /// `{arch}.attention.head_count` (of layer 0 when per layer).
    pub n_head: usize,
    /// `{arch}.attention.head_count_kv` (layer 0), `n_head` when absent.
    pub n_head_kv: usize,
    /// `{arch}.expert_count`, 0 for dense models.
    pub n_expert: usize,
}

impl ModelFacts {
    /// Read the facts from metadata: `get(key)` returns an integer value, or
    /// element 0 of an integer array (per-layer head counts).
    pub fn from_metadata(get: impl Fn(&str) -> Option<u64>, arch: &str) -> Self {
        let key = |k: &str| get(&format!("{arch}.{k}")).map(|v| v as usize);
        let n_head = key("attention.head_count").unwrap_or(0);
        ModelFacts {
            arch: arch.to_string(),
            n_layer: key("block_count").unwrap_or(0),
            n_layer_nextn: key("nextn_predict_layers").unwrap_or(0),
            n_head,
            n_head_kv: key("attention.head_count_kv").unwrap_or(n_head),
            n_expert: key("expert_count").unwrap_or(0),
        }
    }

    /// `hparams.n_gqa()`: heads per KV head, 0 without KV heads.
    pub fn n_gqa(&self) -> usize {
        self.n_head.checked_div(self.n_head_kv).unwrap_or(0)
    }

    /// Whether llama.cpp's loader sets `LLM_TYPE_70B` (each arch's
    /// `load_arch_hparams`; only that type matters to the quantizer).
    pub fn is_70b(&self) -> bool {
        let n_layer = self.n_layer.saturating_sub(self.n_layer_nextn);
        match self.arch.as_str() {
            "llama" | "llama-embed" => {
                self.n_expert != 8 && n_layer == 80 && self.n_head != self.n_head_kv
            }
            "qwen2" | "deci" | "olmo" => n_layer == 80,
            "jais2" => n_layer == 68,
            _ => false,
        }
    }
}

/// One tensor as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct TensorDesc<'a> {
    /// GGUF name, e.g. `blk.0.attn_v.weight`.
    pub name: &'a str,
    /// Input type.
    pub ty: GgmlType,
    /// GGUF dims, innermost (row length) first.
    pub ne: &'a [u64],
}

impl TensorDesc<'_> {
    fn ne(&self, i: usize) -> u64 {
        self.ne.get(i).copied().unwrap_or(1)
    }

    /// `ggml_n_dims`: trailing dims of size 1 do not count.
    fn n_dims(&self) -> usize {
        (1..4).rev().find(|&i| self.ne(i) > 1).map_or(1, |i| i + 1)
    }
}

/// The `general.file_type` llama.cpp writes for `target`; `None` for
/// [`Target::Keep`] (the input's value stands) and for types llama.cpp has no
/// imatrix-free ftype for.
pub fn file_type(target: &Target) -> Option<u32> {
    match target {
        Target::Keep => None,
        Target::Type(ty) => pure_ftype(*ty),
        Target::Mix(mix) => Some(mix.ftype()),
    }
}

/// `sscanf(name, "blk.%d.", &il)`: the layer number, when the name has one.
fn scan_layer(name: &str) -> Option<i64> {
    let rest = name.strip_prefix("blk.")?;
    let rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
    let (neg, digits) = match rest.as_bytes().first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let n = digits.bytes().take_while(u8::is_ascii_digit).count();
    if n == 0 {
        return None;
    }
    let v = digits[..n].bytes().fold(0i64, |v, d| {
        v.saturating_mul(10).saturating_add((d - b'0') as i64)
    });
    let v = if neg { -v } else { v };
    Some(v.clamp(i32::MIN as i64, i32::MAX as i64))
}

/// `llama_model_loader::weight_name_comparer`: by layer number (none = -1),
/// then by name.
fn llama_cmp(a: &str, b: &str) -> Ordering {
    let la = scan_layer(a).unwrap_or(-1);
    let lb = scan_layer(b).unwrap_or(-1);
    la.cmp(&lb).then_with(|| a.as_bytes().cmp(b.as_bytes()))
}

/// Indices of `tensors` in the order llama.cpp's quantizer visits them and
/// writes them to its output (its `weights_map` order).
pub fn llama_order(tensors: &[TensorDesc]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..tensors.len()).collect();
    idx.sort_by(|&a, &b| llama_cmp(tensors[a].name, tensors[b].name));
    idx
}

/// `tensor_get_category`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    AttentionQ,
    AttentionV,
    AttentionK,
    AttentionQkv,
    AttentionKvB,
    AttentionOutput,
    FfnUp,
    FfnGate,
    FfnDown,
    Output,
    Other,
}

impl Category {
    fn of(name: &str) -> Category {
        if name == "output.weight" {
            Category::Output
        } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
            Category::TokenEmbd
        } else if name.contains("attn_qkv.weight") {
            Category::AttentionQkv
        } else if name.contains("attn_kv_b.weight") {
            Category::AttentionKvB
        } else if name.contains("attn_v.weight") {
            Category::AttentionV
        } else if name.contains("attn_k.weight") {
            Category::AttentionK
        } else if name.contains("attn_q.weight") {
            Category::AttentionQ
        } else if name.contains("attn_output.weight") {
            Category::AttentionOutput
        } else if name.contains("ffn_up") {
            Category::FfnUp
        } else if name.contains("ffn_gate") {
            Category::FfnGate
        } else if name.contains("ffn_down") {
            Category::FfnDown
        } else {
            Category::Other
        }
    }

    /// `category_is_attn_v`.
    fn is_attn_v(self) -> bool {
        matches!(
            self,
            Category::AttentionV | Category::AttentionQkv | Category::AttentionKvB
        )
    }
}

/// `tensor_allows_quantization` with default params (`quantize_output_tensor`
/// on, `only_copy` off).
fn allows_quantization(arch: &str, t: &TensorDesc) -> bool {
    if t.n_dims() < 2 {
        return false;
    }
    let name = t.name;
    let has = |s: &str| name.contains(s);
    // `name.rfind("weight") == name.size() - 6`: also true for a 5-byte name,
    // where both sides are npos (size_t wraps around).
    let mut q = name.ends_with("weight") || name.len() == 5;
    q &= !has("_norm.weight");
    q &= !has("ffn_gate_inp.weight");
    q &= !has("ffn_gate_tid2eid.weight");
    q &= !has("altup");
    q &= !has("laurel");
    q &= !has("per_layer_model_proj");
    q &= name != "position_embd.weight";
    q &= name != "token_types.weight";
    q &= !has("ssm_conv1d");
    q &= !has("shortconv.conv.weight");
    q &= !has("indexer.k_proj.weight");
    q &= !has("indexer.q_proj.weight");
    if arch == "glm5-next" {
        for s in [
            "hc_",
            "indexer.attn_q_b",
            "indexer.attn_k",
            "indexer.proj",
            "indexer_compressor_gate",
            "indexer_compressor_ape",
            "ssm_f_a.weight",
            "ssm_f_b.weight",
            "ssm_g_a.weight",
            "ssm_g_b.weight",
            "ssm_beta.weight",
            "attn_kv_a_mqa.weight",
            "attn_k_b.weight",
            "attn_v_b.weight",
        ] {
            q &= !has(s);
        }
    }
    for s in [
        "time_mix_first.weight",
        "time_mix_w0.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_v0.weight",
        "time_mix_v1.weight",
        "time_mix_v2.weight",
        "time_mix_a0.weight",
        "time_mix_a1.weight",
        "time_mix_a2.weight",
        "time_mix_g1.weight",
        "time_mix_g2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "time_mix_lerp_fused.weight",
        "attn_rel_b.weight",
        ".position_embd",
        "sam.pos_embd",
        "sam.neck.",
        "sam.net_",
        ".rel_pos",
        ".patch_embd",
        ".patch_merger",
        "a.rvq.codebook",
        "mm.a.code_embd",
    ] {
        q &= !has(s);
    }
    q
}

/// `tensor_type_fallback`: a type whose block fits the row length.
fn fallback(t: &TensorDesc, target: GgmlType) -> Result<GgmlType> {
    let ncols = t.ne(0);
    let qk = target.block_size() as u64;
    if ncols % qk == 0 {
        return Ok(target);
    }
    use GgmlType as G;
    let ret = match target {
        G::IQ1_S
        | G::IQ1_M
        | G::IQ2_XXS
        | G::IQ2_XS
        | G::IQ2_S
        | G::IQ3_XXS
        | G::IQ3_S
        | G::IQ4_XS => G::IQ4_NL,
        G::Q2_0 | G::Q2_K | G::Q3_K | G::TQ1_0 | G::TQ2_0 => G::Q4_0,
        G::Q4_K => G::Q5_0,
        G::Q5_K => G::Q5_1,
        G::Q6_K => G::Q8_0,
        _ if qk <= 32 => target,
        _ => {
            return Err(Error::Mismatch(format!(
                "tensor {}: row length {ncols} is not a multiple of {qk} and llama.cpp \
                 defines no fallback for {}",
                t.name,
                target.name()
            )))
        }
    };
    Ok(if ncols % ret.block_size() as u64 != 0 {
        G::F16
    } else {
        ret
    })
}

/// `quantize_state_impl`: the counters llama-quant threads through the
/// tensors, in its visiting order.
struct State<'f> {
    facts: &'f ModelFacts,
    mix: Mix,
    has_tied_embeddings: bool,
    n_attention_wv: i64,
    i_attention_wv: i64,
    i_ffn_down: i64,
    i_ffn_gate: i64,
    i_ffn_up: i64,
}

/// `use_more_bits` (C integer division and remainder).
fn use_more_bits(i_layer: i64, n_layers: i64) -> bool {
    i_layer < n_layers / 8 || i_layer >= 7 * n_layers / 8 || (i_layer - n_layers / 8) % 3 == 2
}

impl State<'_> {
    fn n_layer(&self) -> i64 {
        self.facts.n_layer as i64
    }

    /// `layer_info`: the counter for dense models, the name's layer for MoE
    /// ones (experts need not be consecutive).
    fn layer_info(&self, counter: i64, name: &str) -> Result<(i64, i64)> {
        let n_layer = self.n_layer();
        if self.facts.n_expert.max(1) > 1 {
            let il = scan_layer(name).ok_or_else(|| {
                Error::Mismatch(format!("failed to determine layer for tensor {name}"))
            })?;
            if il < 0 || il >= n_layer {
                return Err(Error::Mismatch(format!(
                    "bad layer {il} for tensor {name}: must be in [0, {n_layer})"
                )));
            }
            return Ok((il, n_layer));
        }
        Ok((counter, n_layer))
    }

    /// `llama_tensor_get_type_impl`, for the imatrix-free ftypes.
    // Long because it mirrors llama.cpp's `llama_tensor_get_type_impl`
    // (src/llama-quant.cpp) branch for branch, so that mixes match
    // llama-quantize; kept in one piece so it can be compared with the
    // reference line by line.
    fn mix_type(
        &mut self,
        mut new_type: GgmlType,
        t: &TensorDesc,
        cat: Category,
    ) -> Result<GgmlType> {
        use GgmlType as G;
        let ftype = self.mix;
        let arch = self.facts.arch.as_str();
        let falcon = arch == "falcon";
        let n_expert = self.facts.n_expert;
        let n_gqa = self.facts.n_gqa();
        let name = t.name;

        if arch == "glm5-next"
            && (name.contains("attn_q_a")
                || name.contains("attn_q_b")
                || name.contains("nextn.eh_proj"))
            && !matches!(new_type, G::F32 | G::BF16 | G::F16)
        {
            return Ok(G::Q8_0);
        }

        if cat == Category::Output || (self.has_tied_embeddings && cat == Category::TokenEmbd) {
            let nx = t.ne(0);
            let qk_k = new_type.block_size() as u64;
            if ftype == Mix::MXFP4_MOE || falcon || nx % qk_k != 0 {
                new_type = G::Q8_0;
            } else if new_type != G::Q8_0 {
                new_type = G::Q6_K;
            }
        } else if ftype == Mix::MXFP4_MOE {
            let expert_role =
                matches!(cat, Category::FfnUp | Category::FfnGate | Category::FfnDown);
            new_type = if t.ne(2) > 1 && (arch != "bailingmoe3" || expert_role) {
                G::MXFP4
            } else {
                G::Q8_0
            };
        } else if cat == Category::TokenEmbd {
            // only the IQ1/IQ2/IQ3_XXS, TQ and Q2_0 ftypes change it
        } else if cat.is_attn_v() {
            // (ATTENTION_QKV lands here too, so llama-quant's own QKV branch
            // below it is never reached.)
            let i = self.i_attention_wv;
            match ftype {
                Mix::Q2_K => new_type = if n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
                Mix::Q3_K_M => new_type = if i < 2 { G::Q5_K } else { G::Q4_K },
                Mix::Q3_K_L => new_type = G::Q5_K,
                Mix::IQ4_NL | Mix::IQ4_XS if n_gqa >= 4 => new_type = G::Q5_K,
                Mix::Q4_K_M | Mix::Q5_K_M if use_more_bits(i, self.n_attention_wv) => {
                    new_type = G::Q6_K
                }
                Mix::Q4_K_S if i < 4 => new_type = G::Q5_K,
                _ => {}
            }
            if self.facts.is_70b() && matches!(new_type, G::Q3_K | G::Q4_K) {
                new_type = G::Q5_K;
            }
            if n_expert == 8 {
                new_type = G::Q8_0;
            }
            self.i_attention_wv += 1;
        } else if cat == Category::AttentionK {
            if n_expert == 8 {
                new_type = G::Q8_0;
            }
        } else if cat == Category::AttentionQ {
            // only IQ3_XS / IQ3_XXS change it
        } else if cat == Category::FfnDown {
            let (il, nl) = self.layer_info(self.i_ffn_down, name)?;
            let more = use_more_bits(il, nl);
            match ftype {
                Mix::Q2_K => new_type = G::Q3_K,
                Mix::Q3_K_M => {
                    new_type = if il < nl / 16 {
                        G::Q5_K
                    } else if !falcon || more {
                        G::Q4_K
                    } else {
                        G::Q3_K
                    }
                }
                Mix::Q3_K_L => new_type = if falcon { G::Q4_K } else { G::Q5_K },
                Mix::Q4_K_M => {
                    if falcon {
                        new_type = if il < nl / 16 {
                            G::Q6_K
                        } else if more {
                            G::Q5_K
                        } else {
                            G::Q4_K
                        };
                    } else if more {
                        new_type = G::Q6_K;
                    }
                }
                // `!qs.has_imatrix` holds: no imatrix here
                Mix::IQ4_NL | Mix::IQ4_XS if il < nl / 8 => new_type = G::Q5_K,
                Mix::Q5_K_M if more => new_type = G::Q6_K,
                Mix::Q4_K_S if !falcon && il < nl / 8 => new_type = G::Q5_K,
                // Q4_0 / Q5_0 -> Q4_1 / Q5_1 needs an imatrix
                _ => {}
            }
            self.i_ffn_down += 1;
        } else if cat == Category::AttentionOutput {
            if !falcon {
                if n_expert == 8 {
                    if matches!(
                        ftype,
                        Mix::Q2_K
                            | Mix::Q3_K_S
                            | Mix::Q3_K_M
                            | Mix::IQ4_NL
                            | Mix::Q4_K_S
                            | Mix::Q4_K_M
                            | Mix::IQ4_XS
                    ) {
                        new_type = G::Q5_K;
                    }
                } else {
                    match ftype {
                        Mix::Q2_K => new_type = G::Q3_K,
                        Mix::Q3_K_M => new_type = G::Q4_K,
                        Mix::Q3_K_L => new_type = G::Q5_K,
                        _ => {}
                    }
                }
            } else if ftype == Mix::Q3_K_L {
                new_type = G::Q4_K;
            }
        } else if cat == Category::FfnGate {
            // only IQ3_XS changes it, but the layer check can still fail
            self.layer_info(self.i_ffn_gate, name)?;
            self.i_ffn_gate += 1;
        } else if cat == Category::FfnUp {
            self.layer_info(self.i_ffn_up, name)?;
            self.i_ffn_up += 1;
        }
        Ok(new_type)
    }
}

/// The output type of every tensor, in the order given: what llama.cpp's
/// `llama_model_quantize` writes for `target` (default params, no imatrix).
/// Tensors llama.cpp does not quantize (1-D, norms, …) keep their type.
///
/// The counters that spread bits over layers follow llama.cpp's visiting
/// order ([`llama_order`]), whatever order `tensors` come in.
/// Fails where llama.cpp fails: an MoE tensor without a valid `blk.N.`
/// layer, or a row length no fallback type fits.
pub fn plan_types(
    target: &Target,
    facts: &ModelFacts,
    tensors: &[TensorDesc],
) -> Result<Vec<GgmlType>> {
    let mut out: Vec<GgmlType> = tensors.iter().map(|t| t.ty).collect();
    let (default_type, mix) = match *target {
        Target::Keep => return Ok(out),
        Target::Type(ty) => (ty, None),
        Target::Mix(m) => (m.default_type(), Some(m)),
    };
    let cats: Vec<Category> = tensors.iter().map(|t| Category::of(t.name)).collect();
    let mut st = State {
        facts,
        mix: mix.unwrap_or(Mix::Q8_0),
        has_tied_embeddings: !cats.contains(&Category::Output),
        n_attention_wv: cats.iter().filter(|c| c.is_attn_v()).count() as i64,
        i_attention_wv: 0,
        i_ffn_down: 0,
        i_ffn_gate: 0,
        i_ffn_up: 0,
    };
    for i in llama_order(tensors) {
        let t = &tensors[i];
        if !allows_quantization(&facts.arch, t) {
            continue;
        }
        out[i] = if default_type.is_quantized() {
            let ty = match mix {
                Some(_) => st.mix_type(default_type, t, cats[i])?,
                None => default_type, // --pure
            };
            fallback(t, ty)?
        } else {
            default_type
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_more_bits_matches_the_c_pattern_for_32_layers() {
        let picked: Vec<i64> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(
            picked,
            vec![0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
        );
    }

    #[test]
    fn scan_layer_follows_sscanf() {
        assert_eq!(scan_layer("blk.12.attn_v.weight"), Some(12));
        assert_eq!(scan_layer("blk.3"), Some(3));
        assert_eq!(scan_layer("blk.-1.x"), Some(-1));
        assert_eq!(scan_layer("blk.x.attn"), None);
        assert_eq!(scan_layer("output.weight"), None);
    }

    #[test]
    fn llama_order_sorts_layers_numerically_after_globals() {
        let ne = [256u64, 256];
        let names = [
            "blk.10.a.weight",
            "blk.2.b.weight",
            "output.weight",
            "blk.2.a.weight",
        ];
        let ts: Vec<TensorDesc> = names
            .iter()
            .map(|n| TensorDesc {
                name: n,
                ty: GgmlType::F32,
                ne: &ne,
            })
            .collect();
        let order: Vec<&str> = llama_order(&ts).into_iter().map(|i| names[i]).collect();
        assert_eq!(
            order,
            [
                "output.weight",
                "blk.2.a.weight",
                "blk.2.b.weight",
                "blk.10.a.weight"
            ]
        );
    }

    #[test]
    fn target_parse() {
        assert_eq!(Target::parse("keep").unwrap(), Target::Keep);
        assert_eq!(Target::parse("q4_k_m").unwrap(), Target::Mix(Mix::Q4_K_M));
        assert_eq!(Target::parse("Q4_K_M").unwrap(), Target::Mix(Mix::Q4_K_M));
        assert_eq!(Target::parse("q4_k").unwrap(), Target::Type(GgmlType::Q4_K));
        assert_eq!(Target::parse("q4_0").unwrap(), Target::Type(GgmlType::Q4_0));
        assert_eq!(Target::parse("mix:q4_0").unwrap(), Target::Mix(Mix::Q4_0));
        assert_eq!(
            Target::parse("mxfp4_moe").unwrap(),
            Target::Mix(Mix::MXFP4_MOE)
        );
        assert!(Target::parse("iq2_xxs").is_err());
        assert!(Target::parse("q4_k_x").is_err());
        assert!(Target::parse("mix:q4_k").is_err());
    }

    #[test]
    fn file_types() {
        assert_eq!(file_type(&Target::Keep), None);
        assert_eq!(file_type(&Target::Mix(Mix::Q4_K_M)), Some(15));
        assert_eq!(file_type(&Target::Type(GgmlType::Q4_K)), Some(15));
        assert_eq!(file_type(&Target::Type(GgmlType::F32)), Some(0));
    }

    #[test]
    fn moe_tensor_without_layer_is_an_error_not_a_panic() {
        let facts = ModelFacts {
            arch: "llama".into(),
            n_layer: 2,
            n_layer_nextn: 0,
            n_head: 4,
            n_head_kv: 4,
            n_expert: 4,
        };
        let ne = [256u64, 256, 4];
        let ts = [TensorDesc {
            name: "ffn_down_exps.weight",
            ty: GgmlType::F32,
            ne: &ne,
        }];
        assert!(plan_types(&Target::Mix(Mix::Q4_K_M), &facts, &ts).is_err());
        let ts = [TensorDesc {
            name: "blk.5.ffn_down_exps.weight",
            ty: GgmlType::F32,
            ne: &ne,
        }];
        assert!(plan_types(&Target::Mix(Mix::Q4_K_M), &facts, &ts).is_err());
    }

    #[test]
    fn is_70b() {
        let mut f = ModelFacts {
            arch: "llama".into(),
            n_layer: 80,
            n_layer_nextn: 0,
            n_head: 64,
            n_head_kv: 8,
            n_expert: 0,
        };
        assert!(f.is_70b());
        f.n_head_kv = 64;
        assert!(!f.is_70b()); // 65B
        f.arch = "qwen2".into();
        assert!(f.is_70b());
    }
}
