//! gguf-py's tables as data (src/model/hf_names.tsv, from
//! fixtures/gen_hf_names.py) against the hand tables of the seven
//! hand-mapped families (fixtures/naming/*.json, gguf-py's own answers), and
//! a few families only the data knows.

use std::collections::BTreeMap;
use std::path::Path;

use qresidual::model::hf_names::{self, Converter};
use qresidual::model::naming::{
    hf_to_gguf, hf_to_gguf_generated, is_gguf_name, mapped_architectures, row_permutation,
    supported_architectures, RowPermutation,
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
fn families_the_converter_transforms_are_named_but_not_mapped() {
    // Granite and SmolLM3 convert through LlamaModel.modify_tensors, which
    // permutes q/k rows: gguf-py names them, but a residual in HF layout
    // would need the permutation, which row_permutation gives llama only.
    for arch in ["granite", "smollm3"] {
        assert_eq!(hf_names::converter(arch), Some(Converter::Llama), "{arch}");
        assert_eq!(
            hf_names::lookup(arch, "model.layers.0.self_attn.q_proj.weight").as_deref(),
            Some("blk.0.attn_q.weight")
        );
        assert_eq!(
            hf_to_gguf(arch, "model.layers.0.self_attn.q_proj.weight"),
            None
        );
        assert!(!is_gguf_name(arch, "blk.0.attn_q.weight"));
        assert!(!mapped_architectures().any(|a| a == arch));
    }
    // Qwen2-MoE: gguf-py maps the stacked spelling the converter writes
    // after stacking; the per-expert tensors a checkpoint holds are in no
    // table, and the family is not mapped at all.
    assert_eq!(hf_names::converter("qwen2moe"), Some(Converter::Custom));
    assert_eq!(
        hf_names::lookup("qwen2moe", "model.layers.0.mlp.experts.gate_proj.weight").as_deref(),
        Some("blk.0.ffn_gate_exps.weight")
    );
    assert_eq!(
        hf_names::lookup("qwen2moe", "model.layers.0.mlp.experts.0.gate_proj.weight"),
        None
    );
    assert_eq!(
        hf_names::lookup(
            "qwen2moe",
            "model.layers.0.mlp.shared_expert.up_proj.weight"
        )
        .as_deref(),
        Some("blk.0.ffn_up_shexp.weight")
    );
    assert_eq!(
        hf_to_gguf(
            "qwen2moe",
            "model.layers.0.mlp.shared_expert.up_proj.weight"
        ),
        None
    );
    // Mistral checkpoints convert to `llama`; there is no `mistral` arch.
    assert!(!hf_names::knows("mistral"));
    assert_eq!(hf_to_gguf("mistral", "model.embed_tokens.weight"), None);
}
