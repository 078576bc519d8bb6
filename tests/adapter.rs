//! `apply --strategy adapter`: the randomized SVD against a dense reference,
//! the LoRA file layout llama.cpp checks, and the command's errors.

use std::path::{Path, PathBuf};

use qresidual::apply::adapter::{low_rank, Options};
use qresidual::format::gguf::{GgufFile, GgufWriter, MetaValue, TensorSpec, WriterOptions};
use qresidual::model::rows::RowSource;
use qresidual::quant::GgmlType;

mod common;
use common::{ok, run as qresidual, s, tiny as fixture};

/// A dense row-major matrix as a row source.
struct Dense {
    n_rows: usize,
    n_cols: usize,
    data: Vec<f32>,
}

impl RowSource for Dense {
    fn row_len(&self) -> usize {
        self.n_cols
    }
    fn n_rows(&self) -> usize {
        self.n_rows
    }
    fn decode(&self, start: usize, out: &mut [f32]) -> qresidual::Result<()> {
        out.copy_from_slice(&self.data[start * self.n_cols..start * self.n_cols + out.len()]);
        Ok(())
    }
}

/// xorshift64* + Box–Muller, independent of the library's generator.
struct Rng(u64);
impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        (-2.0 * self.uniform().ln()).sqrt() * (std::f64::consts::TAU * self.uniform()).cos()
    }
    fn matrix(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.normal()).collect()
    }
}

/// m × n product of m × p and p × n (row-major, f64).
fn matmul(a: &[f64], b: &[f64], m: usize, p: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0f64; m * n];
    for i in 0..m {
        for l in 0..p {
            let ail = a[i * p + l];
            for j in 0..n {
                c[i * n + j] += ail * b[l * n + j];
            }
        }
    }
    c
}

/// Singular values of an m × n matrix (m ≥ n) by one-sided Jacobi, descending.
fn singular_values(a: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut u = a.to_vec();
    for _ in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0.0, 0.0, 0.0);
                for i in 0..m {
                    let (x, y) = (u[i * n + p], u[i * n + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let t = if zeta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for i in 0..m {
                    let (x, y) = (u[i * n + p], u[i * n + q]);
                    u[i * n + p] = c * x - s * y;
                    u[i * n + q] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let mut s: Vec<f64> = (0..n)
        .map(|j| (0..m).map(|i| u[i * n + j].powi(2)).sum::<f64>().sqrt())
        .collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s
}

fn dense(data: &[f64], n_rows: usize, n_cols: usize) -> Dense {
    Dense {
        n_rows,
        n_cols,
        data: data.iter().map(|&v| v as f32).collect(),
    }
}

/// ‖B·A − target‖_F² for the f32 factors, in f64.
fn residual_sq(b: &[f32], a: &[f32], target: &[f32], n_out: usize, n_in: usize, r: usize) -> f64 {
    let b: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    let a: Vec<f64> = a.iter().map(|&v| v as f64).collect();
    let ba = matmul(&b, &a, n_out, r, n_in);
    ba.iter()
        .zip(target)
        .map(|(x, &y)| (x - y as f64).powi(2))
        .sum()
}

fn norm_sq(v: &[f32]) -> f64 {
    v.iter().map(|&x| (x as f64).powi(2)).sum()
}

#[test]
fn an_exactly_low_rank_residual_is_recovered() {
    for &(n_out, n_in, r) in &[(96, 64, 5), (40, 130, 8), (64, 64, 1)] {
        let mut rng = Rng(7 + r as u64);
        let d = matmul(
            &rng.matrix(n_out * r),
            &rng.matrix(r * n_in),
            n_out,
            r,
            n_in,
        );
        let src = dense(&d, n_out, n_in);
        let lr = low_rank(&src, 1.0, &Options::new(r), "blk.0.attn_q.weight").unwrap();
        assert_eq!((lr.b.len(), lr.a.len()), (n_out * r, r * n_in));
        let rel =
            (residual_sq(&lr.b, &lr.a, &src.data, n_out, n_in, r) / norm_sq(&src.data)).sqrt();
        assert!(rel < 1e-4, "{n_out}×{n_in} rank {r}: ‖BA − Δ‖/‖Δ‖ = {rel}");
        assert!((lr.share() - 1.0).abs() < 1e-6, "share {}", lr.share());
        // A's rows are orthonormal (A = V_rᵀ).
        for s in 0..r {
            for t in 0..r {
                let d: f64 = (0..n_in)
                    .map(|c| lr.a[s * n_in + c] as f64 * lr.a[t * n_in + c] as f64)
                    .sum();
                assert!((d - if s == t { 1.0 } else { 0.0 }).abs() < 1e-5);
            }
        }
    }
}

#[test]
fn a_rank_deficient_request_keeps_the_true_components_and_zeroes_the_rest() {
    // Δ has rank 3; asking for 6 must not invent directions out of rounding noise.
    let (n_out, n_in) = (50, 40);
    let mut rng = Rng(11);
    let d = matmul(
        &rng.matrix(n_out * 3),
        &rng.matrix(3 * n_in),
        n_out,
        3,
        n_in,
    );
    let src = dense(&d, n_out, n_in);
    let lr = low_rank(&src, 1.0, &Options::new(6), "x").unwrap();
    assert!(lr.sigma[..3].iter().all(|&s| s > 1.0));
    assert!(lr.sigma[3..].iter().all(|&s| s < 1e-4 * lr.sigma[0]));
    let rel = (residual_sq(&lr.b, &lr.a, &src.data, n_out, n_in, 6) / norm_sq(&src.data)).sqrt();
    assert!(rel < 1e-4, "{rel}");
}

#[test]
fn a_full_rank_residual_gets_the_optimal_share() {
    // Full rank with a decaying spectrum (as fine-tuning deltas have):
    // Δ = G₁ · diag(0.85^i) · G₂ plus a little isotropic noise.
    let (n_out, n_in, inner) = (120, 80, 80);
    let mut rng = Rng(3);
    let mut g1 = rng.matrix(n_out * inner);
    for i in 0..n_out {
        for j in 0..inner {
            g1[i * inner + j] *= 0.85f64.powi(j as i32);
        }
    }
    let mut d = matmul(&g1, &rng.matrix(inner * n_in), n_out, inner, n_in);
    for v in d.iter_mut() {
        *v += 0.05 * rng.normal();
    }
    let src = dense(&d, n_out, n_in);
    let d32: Vec<f64> = src.data.iter().map(|&v| v as f64).collect();
    let sv = singular_values(&d32, n_out, n_in);
    let total: f64 = sv.iter().map(|s| s * s).sum();
    assert!(
        (total / norm_sq(&src.data) - 1.0).abs() < 1e-9,
        "reference SVD"
    );
    assert!(sv[n_in - 1] > 0.0, "full rank");
    for r in [1, 4, 16] {
        let lr = low_rank(&src, 1.0, &Options::new(r), "blk.3.ffn_up.weight").unwrap();
        let optimal: f64 = sv[..r].iter().map(|s| s * s).sum::<f64>() / total;
        assert!(
            (lr.share() - optimal).abs() < 1e-3,
            "rank {r}: share {} vs optimal {optimal}",
            lr.share()
        );
        // The share is honest: ‖Δ − BA‖² = ‖Δ‖²(1 − share).
        let err = residual_sq(&lr.b, &lr.a, &src.data, n_out, n_in, r) / norm_sq(&src.data);
        assert!(
            (err - (1.0 - lr.share())).abs() < 1e-5,
            "{err} vs {}",
            1.0 - lr.share()
        );
        for (t, (&got, &want)) in lr.sigma.iter().zip(&sv).enumerate() {
            assert!((got - want).abs() < 2e-3 * sv[0], "σ{t}: {got} vs {want}");
        }
    }
}

#[test]
fn a_flat_spectrum_comes_close_to_optimal() {
    // Pure Gaussian noise: the hardest case for a randomized SVD (no gap).
    let (n_out, n_in, r) = (100, 60, 8);
    let mut rng = Rng(5);
    let d = rng.matrix(n_out * n_in);
    let src = dense(&d, n_out, n_in);
    let d32: Vec<f64> = src.data.iter().map(|&v| v as f64).collect();
    let sv = singular_values(&d32, n_out, n_in);
    let total: f64 = sv.iter().map(|s| s * s).sum();
    let optimal: f64 = sv[..r].iter().map(|s| s * s).sum::<f64>() / total;
    let lr = low_rank(&src, 1.0, &Options::new(r), "x").unwrap();
    assert!(lr.share() <= optimal + 1e-9);
    assert!(lr.share() > 0.97 * optimal, "{} vs {optimal}", lr.share());
}

#[test]
fn scale_multiplies_the_product() {
    let (n_out, n_in, r) = (30, 20, 2);
    let mut rng = Rng(9);
    let d = matmul(
        &rng.matrix(n_out * r),
        &rng.matrix(r * n_in),
        n_out,
        r,
        n_in,
    );
    let src = dense(&d, n_out, n_in);
    let lr = low_rank(&src, -0.5, &Options::new(r), "x").unwrap();
    let target: Vec<f32> = src.data.iter().map(|&v| -0.5 * v).collect();
    let rel = (residual_sq(&lr.b, &lr.a, &target, n_out, n_in, r) / norm_sq(&target)).sqrt();
    assert!(rel < 1e-4, "{rel}");
    // The share and norm are of Δ itself.
    assert!((lr.norm_sq / norm_sq(&src.data) - 1.0).abs() < 1e-9);
}

#[test]
fn bad_ranks_are_errors() {
    let src = dense(&vec![1.0; 12 * 5], 12, 5);
    for r in [0, 6] {
        let e = low_rank(&src, 1.0, &Options::new(r), "t").unwrap_err();
        assert!(e.to_string().contains("rank"), "{e}");
    }
}

// ---- the command ----

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn meta_str<'a>(f: &'a GgufFile, key: &str) -> &'a str {
    f.get(key).and_then(|v| v.as_str()).unwrap_or_default()
}

#[test]
fn the_adapter_has_llama_cpps_layout_and_holds_the_reported_share() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("base-q4_k_m.gguf");
    let before = std::fs::read(&base).unwrap();
    let out = dir.path().join("adapter.gguf");
    let report = dir.path().join("report.json");
    let r = 8usize;
    let err = ok(&[
        "apply",
        "--base",
        s(&base),
        "--residual",
        s(&fixture("residual-f16.safetensors")),
        "--strategy",
        "adapter",
        "--rank",
        "8",
        "-o",
        s(&out),
        "--report",
        s(&report),
    ]);
    assert!(err.contains("adapter holds"), "{err}");
    assert_eq!(
        std::fs::read(&base).unwrap(),
        before,
        "the base was modified"
    );

    let base = GgufFile::open(&base).unwrap();
    let ad = GgufFile::open(&out).unwrap();
    assert_eq!(meta_str(&ad, "general.type"), "adapter");
    assert_eq!(meta_str(&ad, "adapter.type"), "lora");
    assert_eq!(meta_str(&ad, "general.architecture"), "llama");
    assert_eq!(
        ad.get("adapter.lora.alpha"),
        Some(&MetaValue::F32(r as f32)),
        "alpha = rank: llama.cpp's alpha / rank factor is 1"
    );

    // The residual in the base's layout (q/k rows permuted), for B·A.
    let gg = std::fs::read(fixture("residual-gguf-names.safetensors")).unwrap();
    let gg = safetensors::SafeTensors::deserialize(&gg).unwrap();
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let mut pairs = 0;
    for t in base.tensors() {
        let a = ad.tensor_index(&format!("{}.lora_a", t.name));
        let b = ad.tensor_index(&format!("{}.lora_b", t.name));
        if t.ne.len() < 2 {
            assert!(a.is_none() && b.is_none(), "{}", t.name);
            continue;
        }
        let (a, b) = (a.unwrap(), b.unwrap());
        pairs += 1;
        let (ta, tb) = (&ad.tensors()[a], &ad.tensors()[b]);
        assert_eq!((ta.ty, tb.ty), (GgmlType::F32, GgmlType::F32));
        let (n_in, n_out) = (t.ne[0] as usize, t.ne[1] as usize);
        // B (n_out × r) and A (r × n_in) as stored.
        let (bm, am) = if t.name == "token_embd.weight" {
            // build_inp_embd: get_rows(lora_a, token) then lora_b untransposed.
            assert_eq!(ta.ne, vec![r as u64, n_out as u64]);
            assert_eq!(tb.ne, vec![r as u64, n_in as u64]);
            let bt = f32s(ad.tensor_data(b));
            let mut am = vec![0f32; r * n_in];
            for c in 0..n_in {
                for k in 0..r {
                    am[k * n_in + c] = bt[c * r + k];
                }
            }
            (f32s(ad.tensor_data(a)), am)
        } else {
            // build_lora_mm: lora_a ne = [n_in, r], lora_b ne = [r, n_out].
            assert_eq!(ta.ne, vec![n_in as u64, r as u64]);
            assert_eq!(tb.ne, vec![r as u64, n_out as u64]);
            (f32s(ad.tensor_data(b)), f32s(ad.tensor_data(a)))
        };
        let view = gg.tensor(&t.name).unwrap();
        let delta: Vec<f32> = view
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let entry = rep["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == t.name.as_str())
            .unwrap();
        let share = entry["share"].as_f64().unwrap();
        assert!(share > 0.5 && share < 1.0, "{}: {share}", t.name);
        // ‖Δ − BA‖² = ‖Δ‖²(1 − share): the product is the permuted residual's
        // projection, in the base's row order.
        let err = residual_sq(&bm, &am, &delta, n_out, n_in, r) / norm_sq(&delta);
        assert!(
            (err - (1.0 - share)).abs() < 1e-4,
            "{}: error {err}, reported share {share}",
            t.name
        );
    }
    assert_eq!(pairs, 16);
    assert_eq!(ad.tensors().len(), 2 * pairs);
    let skipped: Vec<&str> = rep["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| !e["skipped"].is_null())
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(skipped.len(), 5, "the five norms: {skipped:?}");
    let sum = &rep["summary"];
    let share = sum["captured_sq"].as_f64().unwrap() / sum["norm_sq"].as_f64().unwrap();
    assert!((sum["share"].as_f64().unwrap() - share).abs() < 1e-12);
}

#[test]
fn hf_and_gguf_named_residuals_give_the_same_adapter_at_any_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("base-q4_k_m.gguf");
    let run = |res: &str, threads: &str, out: &Path| {
        ok(&[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&fixture(res)),
            "--strategy",
            "adapter",
            "--rank",
            "4",
            "--threads",
            threads,
            "-o",
            s(out),
            "--quiet",
        ]);
        std::fs::read(out).unwrap()
    };
    let hf = run("residual-f16.safetensors", "2", &dir.path().join("hf.gguf"));
    let gg = run(
        "residual-gguf-names.safetensors",
        "1",
        &dir.path().join("gg.gguf"),
    );
    assert!(
        hf == gg,
        "the q/k permutation or the thread count changed the adapter"
    );
}

/// A tiny tied-embedding model (no output.weight) and a residual for it.
fn tied_case(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("tied.gguf");
    let specs = vec![
        TensorSpec {
            name: "token_embd.weight".into(),
            ty: GgmlType::F32,
            ne: vec![16, 40],
        },
        TensorSpec {
            name: "blk.0.attn_q.weight".into(),
            ty: GgmlType::F32,
            ne: vec![16, 16],
        },
    ];
    let meta = vec![(
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    )];
    let mut w = GgufWriter::create(&base, &meta, &specs, &WriterOptions::default()).unwrap();
    w.write(&vec![0u8; 4 * 16 * 40]).unwrap();
    w.write(&vec![0u8; 4 * 16 * 16]).unwrap();
    w.finish().unwrap();
    let mut rng = Rng(1);
    let emb: Vec<f32> = (0..16 * 40).map(|_| rng.normal() as f32).collect();
    let q: Vec<f32> = (0..16 * 16).map(|_| rng.normal() as f32).collect();
    let residual = dir.join("tied-res.safetensors");
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (eb, qb) = (bytes(&emb), bytes(&q));
    let views = vec![
        (
            "token_embd.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![40, 16], &eb)
                .unwrap(),
        ),
        (
            "blk.0.attn_q.weight",
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![16, 16], &qb)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &residual).unwrap();
    (base, residual)
}

#[test]
fn a_tied_token_embd_is_skipped_and_counted_as_not_captured() {
    let dir = tempfile::tempdir().unwrap();
    let (base, residual) = tied_case(dir.path());
    let out = dir.path().join("a.gguf");
    let report = dir.path().join("r.json");
    let err = ok(&[
        "apply",
        "--base",
        s(&base),
        "--residual",
        s(&residual),
        "--strategy",
        "adapter",
        "--rank",
        "16",
        "-o",
        s(&out),
        "--report",
        s(&report),
    ]);
    assert!(err.contains("not captured: token_embd.weight"), "{err}");
    let ad = GgufFile::open(&out).unwrap();
    let names: Vec<&str> = ad.tensors().iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"]
    );
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let t = rep["tensors"].as_array().unwrap();
    let emb = t.iter().find(|e| e["name"] == "token_embd.weight").unwrap();
    let q = t
        .iter()
        .find(|e| e["name"] == "blk.0.attn_q.weight")
        .unwrap();
    assert_eq!(emb["captured_sq"].as_f64(), Some(0.0));
    // Full rank 16 of a 16 × 16 matrix: all of it.
    assert!((q["share"].as_f64().unwrap() - 1.0).abs() < 1e-6);
    let (n_e, n_q) = (
        emb["norm_sq"].as_f64().unwrap(),
        q["norm_sq"].as_f64().unwrap(),
    );
    let share = rep["summary"]["share"].as_f64().unwrap();
    assert!((share - n_q / (n_e + n_q)).abs() < 1e-6, "{share}");
}

#[test]
fn usage_errors_name_the_problem_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("base-q4_k_m.gguf");
    let res = fixture("residual-f16.safetensors");
    let out = dir.path().join("a.gguf");
    let cases: &[(&[&str], &str)] = &[
        (&["--strategy", "adapter", "--rank", "0"], "at least 1"),
        // attn_k is 256 × 128: rank 129 does not fit.
        (&["--strategy", "adapter", "--rank", "129"], "exceeds min"),
        (&["--strategy", "adapter"], "needs --rank"),
        (&["--rank", "4"], "needs --strategy adapter"),
        (
            &["--strategy", "adapter", "--rank", "4", "--scale", "0"],
            "nothing to write",
        ),
        (
            &["--strategy", "adapter", "--rank", "4", "--type", "q8_0"],
            "--type",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec![
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&res),
            "-o",
            s(&out),
        ];
        args.extend_from_slice(extra);
        let o = qresidual(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "{extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists());
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let n = e.unwrap().file_name();
            assert!(!n.to_string_lossy().contains("qresidual-tmp"), "{n:?}");
        }
    }
}
