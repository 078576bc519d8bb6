//! What llama.cpp's converter does beyond renaming, on small models written
//! here (`tests/interop/test_families.py` holds the same rules to the
//! converter itself): per-expert tensors stacked, GraniteMoE's fused
//! `input_linear` split, DeepSeek's `kv_b_proj` split (one part transposed),
//! Gemma 3's embedding trimmed to the vocabulary, gpt-oss's fused experts
//! (transposed, gate and up interleaved by column).

mod common;

use common::*;
use qresidual::format::gguf::GgufFile;
use qresidual::quant::GgmlType;
use safetensors::Dtype;

fn f32_tensor(name: &'static str, ne: Vec<u64>, v: &[f32]) -> T {
    T {
        name,
        ty: GgmlType::F32,
        ne,
        data: f32_bytes(v),
    }
}

fn apply_f32(
    d: &Dir,
    arch: &str,
    base: &[T],
    residual: &[(&str, Vec<usize>, Vec<f32>)],
) -> Applied {
    write_gguf(&d.p("base.gguf"), arch, base);
    let res: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = residual
        .iter()
        .map(|(n, s, v)| (*n, Dtype::F32, s.clone(), f32_bytes(v)))
        .collect();
    write_st(&d.p("res.safetensors"), &res);
    let out = d.p("out.gguf");
    let (b, r) = (d.p("base.gguf"), d.p("res.safetensors"));
    let o = run(&[
        "apply",
        "--base",
        s(&b),
        "--residual",
        s(&r),
        "--type",
        "f32",
        "-o",
        s(&out),
    ]);
    Applied { out, o }
}

struct Applied {
    out: std::path::PathBuf,
    o: std::process::Output,
}

fn values(path: &std::path::Path, name: &str) -> Vec<f32> {
    let f = GgufFile::open(path).unwrap();
    let i = f.tensor_index(name).unwrap();
    f.tensor_data(i)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn sum(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

#[test]
fn experts_are_stacked_in_expert_order() {
    // blk.0.ffn_gate_exps: 3 experts of [2 rows × 4]; the residual holds
    // each expert's gate_proj, listed out of order.
    let d = Dir::new();
    let base = ramp(24, 0.1);
    let parts: Vec<Vec<f32>> = (0..3).map(|e| ramp(8, 0.01 * (e + 1) as f32)).collect();
    let names = [
        "model.layers.0.mlp.experts.0.gate_proj.weight",
        "model.layers.0.mlp.experts.1.gate_proj.weight",
        "model.layers.0.mlp.experts.2.gate_proj.weight",
    ];
    let residual: Vec<_> = [2, 0, 1]
        .iter()
        .map(|&e| (names[e], vec![2, 4], parts[e].clone()))
        .collect();
    let r = apply_f32(
        &d,
        "qwen3moe",
        &[f32_tensor(
            "blk.0.ffn_gate_exps.weight",
            vec![4, 2, 3],
            &base,
        )],
        &residual,
    );
    assert!(
        r.o.status.success(),
        "{}",
        String::from_utf8_lossy(&r.o.stderr)
    );
    let stacked: Vec<f32> = parts.concat();
    assert_eq!(
        values(&r.out, "blk.0.ffn_gate_exps.weight"),
        sum(&base, &stacked)
    );

    // One expert short: refused before writing, naming the missing one.
    let d = Dir::new();
    let r = apply_f32(
        &d,
        "qwen3moe",
        &[f32_tensor(
            "blk.0.ffn_gate_exps.weight",
            vec![4, 2, 3],
            &base,
        )],
        &residual[..2],
    );
    assert_fails(
        &r.o,
        1,
        &["blk.0.ffn_gate_exps.weight", "experts 1 have no residual"],
        &r.out,
    );
}

#[test]
fn mixtral_experts_stack_into_llama() {
    let d = Dir::new();
    let base = ramp(16, 0.1);
    let parts: Vec<Vec<f32>> = (0..2).map(|e| ramp(8, 0.02 * (e + 1) as f32)).collect();
    let r = apply_f32(
        &d,
        "llama",
        &[f32_tensor("blk.1.ffn_up_exps.weight", vec![4, 2, 2], &base)],
        &[
            (
                "model.layers.1.block_sparse_moe.experts.0.w3.weight",
                vec![2, 4],
                parts[0].clone(),
            ),
            (
                "model.layers.1.block_sparse_moe.experts.1.w3.weight",
                vec![2, 4],
                parts[1].clone(),
            ),
        ],
    );
    assert!(
        r.o.status.success(),
        "{}",
        String::from_utf8_lossy(&r.o.stderr)
    );
    assert_eq!(
        values(&r.out, "blk.1.ffn_up_exps.weight"),
        sum(&base, &parts.concat())
    );
}

#[test]
fn granitemoe_input_linear_splits_into_gate_and_up() {
    // input_linear [2 experts, 2 × 2 rows, 4]: per expert, rows 0..2 are
    // the gate, rows 2..4 the up projection.
    let d = Dir::new();
    let (gate, up) = (ramp(16, 0.1), ramp(16, -0.05));
    let fused = ramp(32, 0.01);
    let r = apply_f32(
        &d,
        "granitemoe",
        &[
            f32_tensor("blk.0.ffn_gate_exps.weight", vec![4, 2, 2], &gate),
            f32_tensor("blk.0.ffn_up_exps.weight", vec![4, 2, 2], &up),
        ],
        &[(
            "model.layers.0.block_sparse_moe.input_linear.weight",
            vec![2, 4, 4],
            fused.clone(),
        )],
    );
    assert!(
        r.o.status.success(),
        "{}",
        String::from_utf8_lossy(&r.o.stderr)
    );
    let half = |h: usize| -> Vec<f32> {
        (0..2)
            .flat_map(|e| fused[e * 16 + h * 8..e * 16 + h * 8 + 8].to_vec())
            .collect()
    };
    assert_eq!(
        values(&r.out, "blk.0.ffn_gate_exps.weight"),
        sum(&gate, &half(0))
    );
    assert_eq!(
        values(&r.out, "blk.0.ffn_up_exps.weight"),
        sum(&up, &half(1))
    );
}

#[test]
fn gemma3_embedding_rows_past_the_vocabulary_are_left_out() {
    let d = Dir::new();
    let base = ramp(12, 0.1); // 3 rows × 4
    let res = ramp(20, 0.01); // 5 rows × 4
    let embd = || f32_tensor("token_embd.weight", vec![4, 3], &base);
    let residual = [("model.embed_tokens.weight", vec![5, 4], res.clone())];
    let r = apply_f32(&d, "gemma3", &[embd()], &residual);
    assert!(
        r.o.status.success(),
        "{}",
        String::from_utf8_lossy(&r.o.stderr)
    );
    assert!(String::from_utf8_lossy(&r.o.stderr).contains("keeps the first 3 of 5 rows"));
    assert_eq!(values(&r.out, "token_embd.weight"), sum(&base, &res[..12]));

    // Only Gemma 3's converter trims: Gemma 2 refuses the longer residual.
    let d = Dir::new();
    let r = apply_f32(&d, "gemma2", &[embd()], &residual);
    assert_fails(
        &r.o,
        1,
        &["differ in shape", "model.embed_tokens.weight"],
        &r.out,
    );
}

#[test]
fn deepseek_kv_b_splits_into_transposed_k_b_and_v_b() {
    // kv_b_proj [2 heads × (2 nope + 3 v), R = 4]: per head, rows 0..2
    // transposed are attn_k_b [2, 4, 2], rows 2..5 are attn_v_b [2, 3, 4].
    let d = Dir::new();
    let (h, nope, v, r) = (2, 2, 3, 4);
    let kv = ramp(h * (nope + v) * r, 0.01);
    let (kb, vb) = (ramp(h * r * nope, 0.1), ramp(h * v * r, -0.1));
    let out = apply_f32(
        &d,
        "deepseek2",
        &[
            f32_tensor("blk.0.attn_k_b.weight", vec![2, 4, 2], &kb),
            f32_tensor("blk.0.attn_v_b.weight", vec![4, 3, 2], &vb),
        ],
        &[(
            "model.layers.0.self_attn.kv_b_proj.weight",
            vec![10, 4],
            kv.clone(),
        )],
    );
    assert!(
        out.o.status.success(),
        "{}",
        String::from_utf8_lossy(&out.o.stderr)
    );
    let at = |head: usize, row: usize, col: usize| kv[(head * (nope + v) + row) * r + col];
    let k_t: Vec<f32> = (0..h)
        .flat_map(|hd| (0..r).flat_map(move |c| (0..nope).map(move |j| (hd, j, c))))
        .map(|(hd, j, c)| at(hd, j, c))
        .collect();
    let v_rows: Vec<f32> = (0..h)
        .flat_map(|hd| (0..v).flat_map(move |i| (0..r).map(move |c| (hd, nope + i, c))))
        .map(|(hd, i, c)| at(hd, i, c))
        .collect();
    assert_eq!(values(&out.out, "blk.0.attn_k_b.weight"), sum(&kb, &k_t));
    assert_eq!(values(&out.out, "blk.0.attn_v_b.weight"), sum(&vb, &v_rows));
}

#[test]
fn gpt_oss_fused_experts_are_transposed_and_deinterleaved() {
    // 2 experts, hidden D = 3, expert FFN F = 2. gate_up_proj [E, D, 2F]:
    // transposed per expert, rows ::2 are the gate, 1::2 the up projection;
    // its bias [E, 2F] split the same way; down_proj [E, F, D] transposed.
    let d = Dir::new();
    let (e, dm, f) = (2, 3, 2);
    let gu = ramp(e * dm * 2 * f, 0.01);
    let gu_bias = ramp(e * 2 * f, 0.02);
    let down = ramp(e * f * dm, -0.01);
    let (down_bias, sinks) = (ramp(e * dm, 0.03), ramp(2, 0.5));
    let base = |n: usize, step: f32| ramp(n, step);
    let out = apply_f32(
        &d,
        "gpt-oss",
        &[
            f32_tensor("blk.0.ffn_gate_exps.weight", vec![3, 2, 2], &base(12, 0.1)),
            f32_tensor("blk.0.ffn_up_exps.weight", vec![3, 2, 2], &base(12, 0.2)),
            f32_tensor("blk.0.ffn_gate_exps.bias", vec![2, 2], &base(4, 0.3)),
            f32_tensor("blk.0.ffn_up_exps.bias", vec![2, 2], &base(4, 0.4)),
            f32_tensor("blk.0.ffn_down_exps.weight", vec![2, 3, 2], &base(12, 0.5)),
            f32_tensor("blk.0.ffn_down_exps.bias", vec![3, 2], &base(6, 0.6)),
            f32_tensor("blk.0.attn_sinks.weight", vec![2], &base(2, 0.7)),
        ],
        &[
            (
                "model.layers.0.mlp.experts.gate_up_proj",
                vec![e, dm, 2 * f],
                gu.clone(),
            ),
            (
                "model.layers.0.mlp.experts.gate_up_proj_bias",
                vec![e, 2 * f],
                gu_bias.clone(),
            ),
            (
                "model.layers.0.mlp.experts.down_proj",
                vec![e, f, dm],
                down.clone(),
            ),
            (
                "model.layers.0.mlp.experts.down_proj_bias",
                vec![e, dm],
                down_bias.clone(),
            ),
            ("model.layers.0.self_attn.sinks", vec![2], sinks.clone()),
        ],
    );
    assert!(
        out.o.status.success(),
        "{}",
        String::from_utf8_lossy(&out.o.stderr)
    );
    // gate/up [E, F, D]: element (x, i, j) is gate_up[x, j, 2i + half].
    let half = |h: usize| -> Vec<f32> {
        (0..e)
            .flat_map(|x| (0..f).flat_map(move |i| (0..dm).map(move |j| (x, i, j))))
            .map(|(x, i, j)| gu[(x * dm + j) * 2 * f + 2 * i + h])
            .collect()
    };
    let bias_half = |h: usize| -> Vec<f32> {
        (0..e * f)
            .map(|k| gu_bias[(k / f) * 2 * f + 2 * (k % f) + h])
            .collect()
    };
    // down [E, D, F]: element (x, j, i) is down_proj[x, i, j].
    let down_t: Vec<f32> = (0..e)
        .flat_map(|x| (0..dm).flat_map(move |j| (0..f).map(move |i| (x, j, i))))
        .map(|(x, j, i)| down[(x * f + i) * dm + j])
        .collect();
    let got = |n: &str| values(&out.out, n);
    assert_eq!(
        got("blk.0.ffn_gate_exps.weight"),
        sum(&base(12, 0.1), &half(0))
    );
    assert_eq!(
        got("blk.0.ffn_up_exps.weight"),
        sum(&base(12, 0.2), &half(1))
    );
    assert_eq!(
        got("blk.0.ffn_gate_exps.bias"),
        sum(&base(4, 0.3), &bias_half(0))
    );
    assert_eq!(
        got("blk.0.ffn_up_exps.bias"),
        sum(&base(4, 0.4), &bias_half(1))
    );
    assert_eq!(
        got("blk.0.ffn_down_exps.weight"),
        sum(&base(12, 0.5), &down_t)
    );
    assert_eq!(
        got("blk.0.ffn_down_exps.bias"),
        sum(&base(6, 0.6), &down_bias)
    );
    assert_eq!(got("blk.0.attn_sinks.weight"), sum(&base(2, 0.7), &sinks));

    // A gate_up_proj whose columns do not give the base's shape is refused.
    let d = Dir::new();
    let r = apply_f32(
        &d,
        "gpt-oss",
        &[f32_tensor(
            "blk.0.ffn_gate_exps.weight",
            vec![3, 2, 2],
            &base(12, 0.1),
        )],
        &[(
            "model.layers.0.mlp.experts.gate_up_proj",
            vec![e, dm, 6],
            ramp(36, 0.01),
        )],
    );
    assert_fails(
        &r.o,
        1,
        &["model.layers.0.mlp.experts.gate_up_proj"],
        &r.out,
    );
}
