//! What llama.cpp's converter does beyond renaming, on small models written
//! here (`tests/interop/test_families.py` holds the same rules to the
//! converter itself): per-expert tensors stacked, GraniteMoE's fused
//! `input_linear` split, DeepSeek's `kv_b_proj` split (one part transposed),
//! Gemma 3's embedding trimmed to the vocabulary, gpt-oss's fused experts
//! (transposed, gate and up interleaved by column), Qwen3-Next's linear
//! attention (`in_proj_qkvz` regrouped, `conv1d` squeezed, `A_log` through
//! `−exp`).

mod common;

use common::*;
use qresidual::format::gguf::{GgufFile, MetaValue};
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
    apply_f32_with(d, (arch, Vec::new()), base, residual)
}

/// [`apply_f32`] to a base with more metadata.
fn apply_f32_with(
    d: &Dir,
    (arch, meta): (&str, Vec<(String, MetaValue)>),
    base: &[T],
    residual: &[(&str, Vec<usize>, Vec<f32>)],
) -> Applied {
    write_gguf_with(&d.p("base.gguf"), arch, meta, base);
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

#[test]
fn qwen3next_linear_attention_is_regrouped_squeezed_and_mapped() {
    // in_proj_qkvz: 2 key heads of [q 2 | k 2 | v 3 | z 3] rows × 2 columns.
    // attn_qkv is every head's q, then k, then v; attn_gate every head's z.
    let d = Dir::new();
    let (heads, q, v, cols) = (2, 2, 3, 2);
    let group = 2 * q + 2 * v;
    let qkvz = ramp(heads * group * cols, 0.01);
    let (qkv_base, gate_base) = (
        ramp(heads * (2 * q + v) * cols, 0.5),
        ramp(heads * v * cols, -0.5),
    );
    let conv = ramp(6, 0.03);
    let conv_base = ramp(6, 1.0);
    let a_log = [0.25f32, -1.5];
    let a_base: Vec<f32> = a_log.iter().map(|a| -a.exp()).collect();
    let a_delta = [0.01f32, -0.02];
    let dt = [0.125f32, 0.5];
    let dt_base = [1.0f32, 2.0];
    let meta = vec![("qwen3next.ssm.group_count".to_string(), MetaValue::U32(2))];
    let out = apply_f32_with(
        &d,
        ("qwen3next", meta),
        &[
            f32_tensor("blk.0.attn_qkv.weight", vec![2, 14], &qkv_base),
            f32_tensor("blk.0.attn_gate.weight", vec![2, 6], &gate_base),
            f32_tensor("blk.0.ssm_conv1d.weight", vec![2, 3], &conv_base),
            f32_tensor("blk.0.ssm_a", vec![2], &a_base),
            f32_tensor("blk.0.ssm_dt.bias", vec![2], &dt_base),
        ],
        &[
            (
                "model.layers.0.linear_attn.in_proj_qkvz.weight",
                vec![heads * group, cols],
                qkvz.clone(),
            ),
            (
                "model.layers.0.linear_attn.conv1d.weight",
                vec![3, 1, 2],
                conv.clone(),
            ),
            (
                "model.layers.0.linear_attn.A_log",
                vec![2],
                a_delta.to_vec(),
            ),
            ("model.layers.0.linear_attn.dt_bias", vec![2], dt.to_vec()),
        ],
    );
    assert!(
        out.o.status.success(),
        "{}",
        String::from_utf8_lossy(&out.o.stderr)
    );
    let rows = |offset: usize, len: usize| -> Vec<f32> {
        (0..heads)
            .flat_map(|h| (0..len).map(move |i| h * group + offset + i))
            .flat_map(|row| qkvz[row * cols..(row + 1) * cols].to_vec())
            .collect()
    };
    let qkv = [rows(0, q), rows(q, q), rows(2 * q, v)].concat();
    assert_eq!(
        values(&out.out, "blk.0.attn_qkv.weight"),
        sum(&qkv_base, &qkv)
    );
    assert_eq!(
        values(&out.out, "blk.0.attn_gate.weight"),
        sum(&gate_base, &rows(2 * q + v, v))
    );
    assert_eq!(
        values(&out.out, "blk.0.ssm_conv1d.weight"),
        sum(&conv_base, &conv)
    );
    assert_eq!(values(&out.out, "blk.0.ssm_dt.bias"), sum(&dt_base, &dt));
    // ssm_a = −exp(A_log): the residual is added to A_log, not to ssm_a.
    let got = values(&out.out, "blk.0.ssm_a");
    for i in 0..2 {
        let want = -(a_log[i] + a_delta[i]).exp();
        assert!(
            (got[i] - want).abs() <= 4.0 * f32::EPSILON * want.abs(),
            "{got:?}"
        );
        assert!(
            (got[i] - (a_base[i] + a_delta[i])).abs() > 1e-4,
            "added after −exp"
        );
    }

    // A key-head count that does not divide the rows: refused, naming both.
    let d = Dir::new();
    let meta = vec![("qwen3next.ssm.group_count".to_string(), MetaValue::U32(4))];
    let out = apply_f32_with(
        &d,
        ("qwen3next", meta),
        &[
            f32_tensor("blk.0.attn_qkv.weight", vec![2, 14], &qkv_base),
            f32_tensor("blk.0.attn_gate.weight", vec![2, 6], &gate_base),
        ],
        &[(
            "model.layers.0.linear_attn.in_proj_qkvz.weight",
            vec![heads * group, cols],
            qkvz,
        )],
    );
    let needles = ["in_proj_qkvz", "blk.0.attn_qkv.weight", "4 key heads"];
    assert_fails(&out.o, 1, &needles, &out.out);

    // A positive ssm_a is no −exp(·): an error naming the tensor.
    let d = Dir::new();
    let out = apply_f32(
        &d,
        "qwen3next",
        &[f32_tensor("blk.0.ssm_a", vec![2], &[0.5, -1.0])],
        &[(
            "model.layers.0.linear_attn.A_log",
            vec![2],
            a_delta.to_vec(),
        )],
    );
    let err = String::from_utf8_lossy(&out.o.stderr);
    assert_eq!(out.o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("blk.0.ssm_a") && err.contains("0.5") && err.contains("−exp"),
        "{err}"
    );
    assert!(!err.contains("panicked") && !out.out.exists(), "{err}");
}

#[test]
fn qwen35_value_heads_are_reordered_along_rows_and_columns() {
    // 1 key head would move nothing: 2 key heads of 2 value heads each,
    // value heads of 1 row (in_proj_a) and of 1 column (out_proj has
    // value heads of 2 columns: v_dim = inner_size / v_heads = 8 / 4).
    let d = Dir::new();
    let meta = vec![
        ("qwen35.ssm.group_count".to_string(), MetaValue::U32(2)),
        ("qwen35.ssm.time_step_rank".to_string(), MetaValue::U32(4)),
        ("qwen35.ssm.state_size".to_string(), MetaValue::U32(2)),
        ("qwen35.ssm.inner_size".to_string(), MetaValue::U32(8)),
    ];
    let a = ramp(4 * 3, 0.01);
    let out_proj = ramp(2 * 8, 0.1);
    let (a_base, out_base) = (ramp(12, 1.0), ramp(16, -1.0));
    let out = apply_f32_with(
        &d,
        ("qwen35", meta),
        &[
            f32_tensor("blk.0.ssm_alpha.weight", vec![3, 4], &a_base),
            f32_tensor("blk.0.ssm_out.weight", vec![8, 2], &out_base),
        ],
        &[
            (
                "model.layers.0.linear_attn.in_proj_a.weight",
                vec![4, 3],
                a.clone(),
            ),
            (
                "model.layers.0.linear_attn.out_proj.weight",
                vec![2, 8],
                out_proj.clone(),
            ),
        ],
    );
    assert!(
        out.o.status.success(),
        "{}",
        String::from_utf8_lossy(&out.o.stderr)
    );
    // Grouped (key head k, value head j) → tiled (j, k): rows 0, 2, 1, 3.
    let a_rows: Vec<f32> = [0, 2, 1, 3]
        .iter()
        .flat_map(|&r| a[r * 3..(r + 1) * 3].to_vec())
        .collect();
    assert_eq!(
        values(&out.out, "blk.0.ssm_alpha.weight"),
        sum(&a_base, &a_rows)
    );
    // Columns in heads of 2: heads 0, 2, 1, 3.
    let cols = [0, 1, 4, 5, 2, 3, 6, 7];
    let out_cols: Vec<f32> = (0..2)
        .flat_map(|r| cols.iter().map(move |&c| (r, c)))
        .map(|(r, c)| out_proj[r * 8 + c])
        .collect();
    assert_eq!(
        values(&out.out, "blk.0.ssm_out.weight"),
        sum(&out_base, &out_cols)
    );
}
