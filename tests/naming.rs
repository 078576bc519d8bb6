//! HF → GGUF names against gguf-py's own tables (fixtures/naming/*.json, from
//! fixtures/gen_naming_table.py), and the q/k row permutation against a
//! literal port of numpy's reshape / swapaxes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qresidual::format::st::SafetensorsModel;
use qresidual::model::naming::{
    hf_to_gguf, is_gguf_name, row_permutation, supported_architectures, RowPermutation,
};
use serde::Deserialize;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[derive(Deserialize)]
struct Entry {
    gguf: Option<String>,
    permuted: bool,
}

#[derive(Deserialize)]
struct Table {
    arch: String,
    checkpoint: BTreeMap<String, Entry>,
    full_map: BTreeMap<String, String>,
}

fn table(arch: &str) -> Table {
    let p = fixtures().join("naming").join(format!("{arch}.json"));
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn every_supported_architecture_has_a_table_and_vice_versa() {
    let mut files: Vec<String> = std::fs::read_dir(fixtures().join("naming"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_suffix(".json").map(str::to_string))
        .collect();
    files.sort();
    let mut archs: Vec<String> = supported_architectures()
        .iter()
        .map(|s| s.to_string())
        .collect();
    archs.sort();
    assert_eq!(files, archs);
}

#[test]
fn checkpoint_names_match_the_converter() {
    for &arch in supported_architectures() {
        let t = table(arch);
        assert_eq!(t.arch, arch);
        assert!(t.checkpoint.len() > 50, "{arch}: table too small");
        let mut mapped = 0;
        for (hf, e) in &t.checkpoint {
            let got = hf_to_gguf(arch, hf);
            assert_eq!(got, e.gguf, "{arch}: {hf:?}");
            if let Some(g) = &got {
                mapped += 1;
                // Only llama's HF q/k are permuted, and exactly those named
                // so; a name already in GGUF form is in GGUF layout.
                let perm = row_permutation(arch, g, 32, 8);
                let needs = g != hf && perm != RowPermutation::Identity;
                assert_eq!(needs, e.permuted, "{arch}: {hf} → {g}");
                // The GGUF name maps to itself and is recognised as GGUF.
                assert_eq!(
                    hf_to_gguf(arch, g).as_deref(),
                    Some(g.as_str()),
                    "{arch}: {g}"
                );
                assert!(is_gguf_name(arch, g), "{arch}: {g}");
                if g != hf {
                    assert!(!is_gguf_name(arch, hf), "{arch}: {hf}");
                }
            }
        }
        assert!(mapped > 40, "{arch}: only {mapped} mapped");
    }
}

#[test]
fn never_contradicts_gguf_py_on_any_spelling() {
    // gguf-py's map holds spellings of many other model families; we need
    // not know them, but whatever we map must map where gguf-py maps it.
    for &arch in supported_architectures() {
        let t = table(arch);
        let mut agreed = 0;
        for (key, gguf) in &t.full_map {
            for suffix in ["", ".weight", ".bias"] {
                let hf = format!("{key}{suffix}");
                if let Some(got) = hf_to_gguf(arch, &hf) {
                    // Names the converter drops before the lookup are not
                    // gguf-py's concern; everything else must agree.
                    assert_eq!(got, format!("{gguf}{suffix}"), "{arch}: {hf}");
                    agreed += 1;
                }
            }
        }
        // Every GGUF name and every transformers name of 2 blocks is in there.
        assert!(agreed >= 3 * 20, "{arch}: only {agreed} agreed");
    }
}

#[test]
fn block_indices_are_not_limited_and_must_be_canonical() {
    assert_eq!(
        hf_to_gguf("llama", "model.layers.3.self_attn.q_proj.weight").as_deref(),
        Some("blk.3.attn_q.weight")
    );
    assert_eq!(
        hf_to_gguf("qwen2", "model.layers.79.self_attn.k_proj.bias").as_deref(),
        Some("blk.79.attn_k.bias")
    );
    for bad in [
        "model.layers.03.mlp.up_proj.weight",
        "model.layers.+3.mlp.up_proj.weight",
        "model.layers.x.mlp.up_proj.weight",
        "model.layers.99999999999999999999999.mlp.up_proj.weight",
        "model.layers.3",
        "blk.3",
        "blk..attn_q.weight",
    ] {
        assert_eq!(hf_to_gguf("llama", bad), None, "{bad}");
    }
    assert_eq!(hf_to_gguf("mamba", "model.embed_tokens.weight"), None);
    assert!(!is_gguf_name("mamba", "token_embd.weight"));
    assert_eq!(
        row_permutation("qwen2", "blk.0.attn_q.weight", 4, 2),
        RowPermutation::Identity
    );
}

#[test]
fn llama_permutes_q_with_n_head_and_k_with_n_head_kv() {
    let p = |n| row_permutation("llama", n, 32, 8);
    assert_eq!(
        p("blk.0.attn_q.weight"),
        RowPermutation::LlamaRope { n_head: 32 }
    );
    assert_eq!(
        p("blk.17.attn_q.bias"),
        RowPermutation::LlamaRope { n_head: 32 }
    );
    assert_eq!(
        p("blk.0.attn_k.weight"),
        RowPermutation::LlamaRope { n_head: 8 }
    );
    assert_eq!(
        p("blk.0.attn_k.bias"),
        RowPermutation::LlamaRope { n_head: 8 }
    );
    for n in [
        "blk.0.attn_v.weight",
        "blk.0.attn_qkv.weight",
        "blk.0.attn_output.weight",
        "blk.0.attn_q_norm.weight",
        "token_embd.weight",
        "blk.0.attn_q",
    ] {
        assert_eq!(p(n), RowPermutation::Identity, "{n}");
    }
    for arch in ["qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3"] {
        assert_eq!(
            row_permutation(arch, "blk.0.attn_q.weight", 32, 8),
            RowPermutation::Identity,
            "{arch}"
        );
    }
}

/// numpy's `a.reshape(shape)` then `.swapaxes(ax0, ax1)` then `.reshape(-1)`
/// on a C-contiguous array, by strides, as numpy does it.
fn numpy_reshape_swap_flatten(a: &[usize], shape: &[usize], ax0: usize, ax1: usize) -> Vec<usize> {
    let mut strides = vec![1usize; shape.len()];
    for d in (0..shape.len() - 1).rev() {
        strides[d] = strides[d + 1] * shape[d + 1];
    }
    let mut shape = shape.to_vec();
    shape.swap(ax0, ax1);
    strides.swap(ax0, ax1);
    let total: usize = shape.iter().product();
    assert_eq!(total, a.len());
    let mut out = Vec::with_capacity(total);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..total {
        let off: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out.push(a[off]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            if idx[d] < shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    out
}

#[test]
fn source_row_matches_numpy_and_is_a_bijection() {
    let mut checked = 0;
    for n_head in [1, 2, 3, 4, 8, 32] {
        for head_dim in [2, 4, 6, 64, 128] {
            let rows = n_head * head_dim;
            for cols in [1, 3] {
                // Each element holds its (row, col) as row * cols + col.
                let w: Vec<usize> = (0..rows * cols).collect();
                let permuted =
                    numpy_reshape_swap_flatten(&w, &[n_head, 2, rows / n_head / 2, cols], 1, 2);
                let perm = RowPermutation::LlamaRope { n_head };
                assert!(perm.fits(rows));
                let mut seen = vec![false; rows];
                for dst in 0..rows {
                    let src = perm.source_row(rows, dst);
                    assert!(src < rows);
                    assert!(
                        !seen[src],
                        "n_head {n_head} head_dim {head_dim}: row {src} twice"
                    );
                    seen[src] = true;
                    for c in 0..cols {
                        assert_eq!(permuted[dst * cols + c], src * cols + c);
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 6 * 5 * 2);
    // The permutation is not the identity as soon as a head has 4 rows.
    let p = RowPermutation::LlamaRope { n_head: 2 };
    let order: Vec<usize> = (0..8).map(|r| p.source_row(8, r)).collect();
    assert_eq!(order, [0, 2, 1, 3, 4, 6, 5, 7]);
}

#[test]
fn shapes_the_reshape_rejects_are_reported_not_panicked() {
    let p = RowPermutation::LlamaRope { n_head: 4 };
    assert!(!p.fits(12));
    assert!(!RowPermutation::LlamaRope { n_head: 0 }.fits(8));
    assert_eq!(p.source_row(12, 5), 5);
    assert_eq!(p.source_row(16, 99), 99);
    assert_eq!(RowPermutation::LlamaRope { n_head: 0 }.source_row(8, 3), 3);
    assert!(RowPermutation::Identity.fits(7));
    assert_eq!(RowPermutation::Identity.source_row(7, 6), 6);
}

#[derive(Deserialize)]
struct Expected {
    n_head: usize,
    n_head_kv: usize,
    tensors: BTreeMap<String, ExpectedTensor>,
}

#[derive(Deserialize)]
struct ExpectedTensor {
    gguf: String,
    permuted: bool,
}

#[test]
fn tiny_fixture_names_and_layouts_agree() {
    let tiny = fixtures().join("tiny");
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("expected.json")).unwrap())
            .unwrap();
    let hf = SafetensorsModel::open(&tiny.join("residual-f16.safetensors")).unwrap();
    let sharded = SafetensorsModel::open(&tiny.join("residual-sharded")).unwrap();
    let gg = SafetensorsModel::open(&tiny.join("residual-gguf-names.safetensors")).unwrap();
    assert_eq!(hf.tensors().len(), expected.tensors.len());
    assert_eq!(sharded.shard_paths().len(), 2);
    assert_eq!(sharded.tensors().len(), hf.tensors().len());
    assert_eq!(gg.tensors().len(), hf.tensors().len());
    let mut n_permuted = 0;
    for t in hf.tensors() {
        let e = &expected.tensors[&t.name];
        let name = hf_to_gguf("llama", &t.name).unwrap();
        assert_eq!(name, e.gguf, "{}", t.name);
        let perm = row_permutation("llama", &name, expected.n_head, expected.n_head_kv);
        assert_eq!(perm != RowPermutation::Identity, e.permuted, "{}", t.name);
        // Same bytes in the sharded copy.
        let s = sharded.get(&t.name).unwrap();
        assert_eq!((s.dtype, &s.shape), (t.dtype, &t.shape));
        assert_eq!(sharded.data(s), hf.data(t), "{}", t.name);
        // The GGUF-named copy holds the rows in GGUF (permuted) order.
        let g = gg.get(&name).unwrap();
        assert!(is_gguf_name("llama", &g.name));
        assert_eq!(
            hf_to_gguf("llama", &g.name).as_deref(),
            Some(g.name.as_str())
        );
        assert_eq!((g.dtype, &g.shape), (t.dtype, &t.shape));
        let rows = t.shape[0];
        assert!(perm.fits(rows));
        let row_bytes = t.n_bytes() / rows;
        let (src, dst) = (hf.data(t), gg.data(g));
        for r in 0..rows {
            let s = perm.source_row(rows, r);
            assert_eq!(
                &dst[r * row_bytes..(r + 1) * row_bytes],
                &src[s * row_bytes..(s + 1) * row_bytes],
                "{} row {r}",
                t.name
            );
        }
        if e.permuted {
            n_permuted += 1;
            assert_ne!(src, dst, "{}: permutation changed nothing", t.name);
        }
    }
    assert_eq!(n_permuted, 4, "q and k of 2 layers");
}
