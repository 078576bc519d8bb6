//! gguf-py's tables as data (src/model/hf_names.tsv, from
//! fixtures/gen_hf_names.py) against the hand tables of the seven
//! hand-mapped families (fixtures/naming/*.json, gguf-py's own answers), and
//! a few families only the data knows.

use std::collections::BTreeMap;
use std::path::Path;

use qresidual::model::hf_names::{self, Converter};
use qresidual::model::naming::{
    embedding_rows, expert_part, fused_experts, hf_to_gguf, hf_to_gguf_generated, is_gguf_name,
    kv_b_split, mapped_architectures, row_permutation, supported_architectures, transforms,
    RowPermutation,
};
use serde::Deserialize;

#[derive(Deserialize)]
struct Entry {
    gguf: Option<String>,
}

#[derive(Deserialize)]
struct Table {
    checkpoint: BTreeMap<String, Entry>,
    full_map: BTreeMap<String, String>,
}

fn table(arch: &str) -> Table {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/naming")
        .join(format!("{arch}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `get_name(key, try_suffixes=(".weight", ".bias"))` over a dumped map.
fn get_name(map: &BTreeMap<String, String>, key: &str) -> Option<String> {
    if let Some(g) = map.get(key) {
        return Some(g.clone());
    }
    [".weight", ".bias"].iter().find_map(|s| {
        let stem = key.strip_suffix(s)?;
        map.get(stem).map(|g| format!("{g}{s}"))
    })
}

#[test]
fn the_data_is_gguf_py_for_the_seven_hand_mapped_families() {
    for &arch in supported_architectures() {
        let t = table(arch);
        let mut n = 0;
        for key in t.full_map.keys() {
            for suffix in ["", ".weight", ".bias"] {
                let k = format!("{key}{suffix}");
                assert_eq!(
                    hf_names::lookup(arch, &k),
                    get_name(&t.full_map, &k),
                    "{arch}: {k}"
                );
                n += 1;
            }
        }
        assert!(n > 1500, "{arch}: {n}");
    }
}

#[test]
fn the_data_agrees_with_the_hand_tables_on_every_name() {
    // Where the two differ, only because the hand table knows fewer
    // spellings (it maps transformers' names, gguf-py every family's):
    // never two different GGUF names, never a name only the hand table maps
    // except through llama's own `text_model.` filter.
    for &arch in supported_architectures() {
        let t = table(arch);
        let mut names: Vec<String> = t.checkpoint.keys().cloned().collect();
        for key in t.full_map.keys() {
            names.extend(["", ".weight", ".bias"].map(|s| format!("{key}{s}")));
        }
        let mut only_generated = 0;
        for hf in &names {
            let hand = hf_to_gguf(arch, hf);
            let generated = hf_to_gguf_generated(arch, hf);
            match (&hand, &generated) {
                (Some(h), Some(g)) => assert_eq!(h, g, "{arch}: {hf}"),
                (Some(_), None) => assert!(
                    arch == "llama" && hf.contains("text_model."),
                    "{arch}: {hf}: hand {hand:?}, data None"
                ),
                (None, Some(_)) => only_generated += 1,
                (None, None) => {}
            }
        }
        // The checkpoint names, the converter's answers, come out the same
        // but for Gemma 1/2's dropped lm_head (not in their MODEL_TENSORS,
        // so None either way) and llama's `text_model.`.
        for (hf, e) in &t.checkpoint {
            if arch == "llama" && hf.contains("text_model.") {
                continue;
            }
            assert_eq!(hf_to_gguf_generated(arch, hf), e.gguf, "{arch}: {hf}");
        }
        println!(
            "{arch}: {} names, {only_generated} mapped by the data only",
            names.len()
        );
        assert!(only_generated > 0, "{arch}");
    }
}

#[test]
fn rename_only_families_map_without_a_hand_table() {
    let cases = [
        (
            "olmo2",
            "model.layers.3.self_attn.q_norm.weight",
            "blk.3.attn_q_norm.weight",
        ),
        (
            "olmo2",
            "model.layers.0.post_feedforward_layernorm.weight",
            "blk.0.post_ffw_norm.weight",
        ),
        ("olmo2", "lm_head.weight", "output.weight"),
        (
            "starcoder2",
            "model.layers.7.mlp.c_fc.bias",
            "blk.7.ffn_up.bias",
        ),
        (
            "qwen",
            "transformer.h.1.attn.c_attn.weight",
            "blk.1.attn_qkv.weight",
        ),
        (
            "phi2",
            "model.layers.2.mlp.fc2.weight",
            "blk.2.ffn_down.weight",
        ),
        (
            "olmo2",
            "model.language_model.layers.1.mlp.up_proj.weight",
            "blk.1.ffn_up.weight",
        ),
    ];
    for (arch, hf, gguf) in cases {
        assert_eq!(hf_names::converter(arch), Some(Converter::Rename), "{arch}");
        assert_eq!(hf_to_gguf(arch, hf).as_deref(), Some(gguf), "{arch}: {hf}");
        assert_eq!(
            hf_to_gguf(arch, gguf).as_deref(),
            Some(gguf),
            "{arch}: {gguf}"
        );
        assert!(
            is_gguf_name(arch, gguf) && !is_gguf_name(arch, hf),
            "{arch}: {hf}"
        );
        assert_eq!(row_permutation(arch, gguf, 32, 8), RowPermutation::Identity);
    }
    assert_eq!(
        hf_to_gguf("olmo2", "model.layers.0.self_attn.rotary_emb.inv_freq"),
        None
    );
    assert_eq!(
        hf_to_gguf("olmo2", "vision_tower.blocks.0.attn.qkv.weight"),
        None
    );
    assert!(mapped_architectures().any(|a| a == "olmo2"));
    assert!(mapped_architectures().any(|a| a == "llama"));
}

#[test]
fn families_whose_transforms_are_restated_are_mapped() {
    // Granite and SmolLM3 convert through LlamaModel.modify_tensors, which
    // permutes q/k rows as for llama.
    for arch in ["granite", "smollm3"] {
        assert_eq!(hf_names::converter(arch), Some(Converter::Llama), "{arch}");
        assert_eq!(
            hf_to_gguf(arch, "model.layers.0.self_attn.q_proj.weight").as_deref(),
            Some("blk.0.attn_q.weight")
        );
        assert!(is_gguf_name(arch, "blk.0.attn_q.weight"));
        assert!(mapped_architectures().any(|a| a == arch));
        assert_eq!(
            row_permutation(arch, "blk.0.attn_k.weight", 32, 8),
            RowPermutation::LlamaRope { n_head: 8 }
        );
        assert_eq!(transforms(arch).map(|t| t.permute_qk), Some(true));
    }
    // Qwen2-MoE: gguf-py maps the stacked spelling the converter writes
    // after stacking; the per-expert tensors a checkpoint holds are in no
    // table, and expert_part places them in the stack.
    assert_eq!(hf_names::converter("qwen2moe"), Some(Converter::Custom));
    assert_eq!(
        hf_names::lookup("qwen2moe", "model.layers.0.mlp.experts.0.gate_proj.weight"),
        None
    );
    assert_eq!(
        expert_part("qwen2moe", "model.layers.1.mlp.experts.3.gate_proj.weight"),
        Some(("blk.1.ffn_gate_exps.weight".to_string(), 3))
    );
    assert_eq!(
        expert_part("qwen3moe", "model.layers.0.mlp.experts.10.down_proj.weight"),
        Some(("blk.0.ffn_down_exps.weight".to_string(), 10))
    );
    assert_eq!(
        expert_part("qwen3moe", "model.layers.0.mlp.experts.01.down_proj.weight"),
        None
    );
    assert_eq!(
        hf_to_gguf(
            "qwen2moe",
            "model.layers.0.mlp.shared_expert.up_proj.weight"
        )
        .as_deref(),
        Some("blk.0.ffn_up_shexp.weight")
    );
    // Mixtral converts to `llama`: w1/w3/w2 are gate/up/down.
    for (w, g) in [("w1", "gate"), ("w3", "up"), ("w2", "down")] {
        assert_eq!(
            expert_part(
                "llama",
                &format!("model.layers.2.block_sparse_moe.experts.7.{w}.weight")
            ),
            Some((format!("blk.2.ffn_{g}_exps.weight"), 7))
        );
    }
    assert_eq!(
        hf_to_gguf("llama", "model.layers.2.block_sparse_moe.gate.weight").as_deref(),
        Some("blk.2.ffn_gate_inp.weight")
    );
    // Gemma 3 trims the embedding; nothing else is trimmed.
    assert_eq!(
        embedding_rows("gemma3", "token_embd.weight", 272, 259),
        Some(259)
    );
    assert_eq!(embedding_rows("gemma3", "output.weight", 272, 259), None);
    assert_eq!(
        embedding_rows("gemma2", "token_embd.weight", 272, 259),
        None
    );
    assert_eq!(
        embedding_rows("gemma3", "token_embd.weight", 250, 259),
        None
    );
    // DeepSeek's kv_b_proj splits into k_b and v_b.
    assert_eq!(
        kv_b_split("deepseek2", "model.layers.3.self_attn.kv_b_proj.weight"),
        Some([
            "blk.3.attn_k_b.weight".to_string(),
            "blk.3.attn_v_b.weight".to_string()
        ])
    );
    assert_eq!(
        kv_b_split("qwen2moe", "model.layers.3.self_attn.kv_b_proj.weight"),
        None
    );
    // gpt-oss's fused experts: gate/up from interleaved columns, transposed.
    let fused = fused_experts("gpt-oss", "model.layers.1.mlp.experts.gate_up_proj").unwrap();
    assert!(fused.transposed);
    let cut: Vec<_> = fused
        .parts
        .iter()
        .map(|p| (p.gguf.as_str(), p.offset, p.step))
        .collect();
    assert_eq!(
        cut,
        [
            ("blk.1.ffn_gate_exps.weight", 0, 2),
            ("blk.1.ffn_up_exps.weight", 1, 2)
        ]
    );
    assert_eq!(
        hf_to_gguf("gpt-oss", "model.layers.1.mlp.experts.gate_up_proj"),
        None
    );
    assert_eq!(
        hf_to_gguf("gpt-oss", "model.layers.1.self_attn.sinks").as_deref(),
        Some("blk.1.attn_sinks.weight")
    );
    assert_eq!(
        hf_to_gguf("gpt-oss", "model.layers.1.mlp.experts.down_proj_bias").as_deref(),
        Some("blk.1.ffn_down_exps.bias")
    );
    // A converter qresidual does not restate (GraniteMoeHybrid's Mamba-2
    // layers): named, not mapped.
    assert_eq!(
        hf_names::converter("granitehybrid"),
        Some(Converter::Custom)
    );
    assert_eq!(transforms("granitehybrid"), None);
    assert_eq!(
        hf_to_gguf("granitehybrid", "model.layers.0.self_attn.o_proj.weight"),
        None
    );
    assert!(!mapped_architectures().any(|a| a == "granitehybrid"));
    // The README's count: 7 hand-mapped, 18 more rename-only, 17 whose
    // transforms are restated.
    let mapped: Vec<_> = mapped_architectures().collect();
    assert_eq!(mapped.len(), 42, "{mapped:?}");
    // Mistral checkpoints convert to `llama`; there is no `mistral` arch.
    assert!(!hf_names::knows("mistral"));
    assert_eq!(hf_to_gguf("mistral", "model.embed_tokens.weight"), None);
}

#[test]
fn gemma4_names_are_the_converters() {
    let g = |hf| hf_to_gguf("gemma4", hf);
    // Gemma4Model.filter_tensors adds `.weight` to bare parameters…
    assert_eq!(
        g("model.layers.3.layer_scalar").as_deref(),
        Some("blk.3.layer_output_scale.weight")
    );
    assert_eq!(
        g("model.layers.0.experts.gate_up_proj").as_deref(),
        Some("blk.0.ffn_gate_up_exps.weight")
    );
    assert_eq!(
        g("model.layers.0.experts.down_proj").as_deref(),
        Some("blk.0.ffn_down_exps.weight")
    );
    // …and its modify_tensors names the router's scales itself.
    assert_eq!(
        g("model.layers.1.router.scale").as_deref(),
        Some("blk.1.ffn_gate_inp.scale")
    );
    assert_eq!(
        g("model.layers.1.router.per_expert_scale").as_deref(),
        Some("blk.1.ffn_down_exps.scale")
    );
    assert_eq!(
        g("model.embed_tokens_per_layer.weight").as_deref(),
        Some("per_layer_token_embd.weight")
    );
    assert_eq!(
        g("model.layers.0.per_layer_input_gate.weight").as_deref(),
        Some("blk.0.inp_gate.weight")
    );
    // Gemma3Model.modify_tensors trims token_embd only.
    assert_eq!(
        embedding_rows("gemma4", "token_embd.weight", 272, 259),
        Some(259)
    );
    assert_eq!(
        embedding_rows("gemma4", "per_layer_token_embd.weight", 272, 259),
        None
    );
    assert!(mapped_architectures().any(|a| a == "gemma4"));
}

#[test]
fn qwen3next_linear_attention_is_restated() {
    use qresidual::model::naming::{qkvz_split, squeezed, value_map, ValueMap};
    let q = |hf| hf_to_gguf("qwen3next", hf);
    assert_eq!(
        q("model.layers.0.linear_attn.dt_bias").as_deref(),
        Some("blk.0.ssm_dt.bias")
    );
    assert_eq!(
        q("model.layers.0.linear_attn.A_log").as_deref(),
        Some("blk.0.ssm_a")
    );
    assert_eq!(
        q("model.layers.0.linear_attn.norm.weight").as_deref(),
        Some("blk.0.ssm_norm.weight")
    );
    assert_eq!(
        q("model.layers.0.mlp.shared_expert_gate.weight").as_deref(),
        Some("blk.0.ffn_gate_inp_shexp.weight")
    );
    assert_eq!(
        qkvz_split(
            "qwen3next",
            "model.layers.2.linear_attn.in_proj_qkvz.weight"
        ),
        Some([
            "blk.2.attn_qkv.weight".to_string(),
            "blk.2.attn_gate.weight".to_string()
        ])
    );
    assert_eq!(
        qkvz_split("qwen3next", "model.layers.2.self_attn.q_proj.weight"),
        None
    );
    assert_eq!(
        qkvz_split("qwen2moe", "model.layers.2.linear_attn.in_proj_qkvz.weight"),
        None
    );
    assert!(squeezed("qwen3next", "blk.0.ssm_conv1d.weight"));
    assert!(!squeezed("qwen3next", "blk.0.ssm_out.weight"));
    assert_eq!(
        value_map("qwen3next", "blk.0.ssm_a"),
        Some(ValueMap::NegExp)
    );
    assert_eq!(value_map("qwen3next", "blk.0.ssm_dt.bias"), None);
    assert_eq!(value_map("qwen2moe", "blk.0.ssm_a"), None);
    assert_eq!(
        expert_part("qwen3next", "model.layers.1.mlp.experts.3.up_proj.weight"),
        Some(("blk.1.ffn_up_exps.weight".to_string(), 3))
    );
    assert!(mapped_architectures().any(|a| a == "qwen3next"));
}

#[test]
fn qwen35_value_heads_are_tiled() {
    use qresidual::model::naming::{v_head_order, Axis, LinearDims};
    // 2 key heads, 3 value heads each, key heads of 4, value heads of 2.
    let dims = LinearDims {
        k_heads: 2,
        v_heads: 6,
        k_dim: 4,
        v_dim: 2,
    };
    let order = |hf: &str, gguf: &str| v_head_order("qwen35", (hf, gguf), dims);
    let (axis, qkv) = order(
        "model.layers.0.linear_attn.in_proj_qkv.weight",
        "blk.0.attn_qkv.weight",
    )
    .unwrap();
    assert_eq!(axis, Axis::Rows);
    // q and k (16 rows) stay; then value head (k, j) of 2 rows moves from
    // (k·3 + j)·2 to (j·2 + k)·2: `_reorder_v_heads`.
    let rows: Vec<usize> = (0..28).map(|r| qkv.source_row(28, r)).collect();
    let v: Vec<usize> = (0..3)
        .flat_map(|j| (0..2).flat_map(move |k| (0..2).map(move |i| 16 + (k * 3 + j) * 2 + i)))
        .collect();
    assert_eq!(rows, [(0..16).collect::<Vec<_>>(), v].concat());
    assert!(qkv.fits(28) && !qkv.fits(27));
    let (axis, a) = order("model.layers.0.linear_attn.A_log", "blk.0.ssm_a").unwrap();
    assert_eq!(axis, Axis::Columns);
    let cols: Vec<usize> = (0..6).map(|c| a.source_row(6, c)).collect();
    assert_eq!(cols, [0, 3, 1, 4, 2, 5]);
    assert_eq!(
        order(
            "model.layers.0.linear_attn.out_proj.weight",
            "blk.0.ssm_out.weight"
        )
        .map(|o| o.0),
        Some(Axis::Columns)
    );
    // Full attention and Qwen3-Next keep their order; equal head counts too.
    assert_eq!(
        order(
            "model.layers.1.self_attn.q_proj.weight",
            "blk.1.attn_q.weight"
        ),
        None
    );
    assert_eq!(
        v_head_order(
            "qwen3next",
            (
                "model.layers.0.linear_attn.in_proj_z.weight",
                "blk.0.attn_gate.weight"
            ),
            dims
        ),
        None
    );
    let same = LinearDims { v_heads: 2, ..dims };
    assert_eq!(
        v_head_order(
            "qwen35",
            (
                "model.layers.0.linear_attn.in_proj_z.weight",
                "blk.0.attn_gate.weight"
            ),
            same
        ),
        None
    );
}
