//! `qresidual apply --max-size / --bpw / --min-retention` on the tiny llama
//! fixture (fixtures/tiny: a llama.cpp Q4_K_M file and a residual with the
//! GGUF tensor names).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qresidual::format::gguf::GgufFile;
use qresidual::quant::quantize_row;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use serde_json::Value;

mod common;
use common::{dequant, run as qresidual, s, tiny as fixture, tiny_base as base};

/// The residual under the base's own tensor names (no permutation).
fn residual() -> PathBuf {
    fixture("residual-gguf-names.safetensors")
}

/// Run `apply --strategy fresh` with `extra` flags into `out` (+ report);
/// returns the report and stderr. (The default, auto, would also search the
/// tensors that keep their type; here every tensor must be the fresh
/// encoding at its planned type.)
fn apply(residual: &Path, out: &Path, extra: &[&str]) -> (Value, String) {
    let report = out.with_extension("json");
    let b = base();
    let mut args = vec![
        "apply",
        "--base",
        s(&b),
        "--residual",
        s(residual),
        "-o",
        s(out),
        "--report",
        s(&report),
        "--strategy",
        "fresh",
    ];
    args.extend_from_slice(extra);
    let o = qresidual(&args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{args:?} failed: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let j = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (j, err)
}

/// Fails with exit code `code` and a message containing `needle`, leaving
/// no output and no temporary file.
fn fails(extra: &[&str], code: i32, needle: &str, dir: &Path) {
    let out = dir.join("bad.gguf");
    let (b, r) = (base(), residual());
    let mut args = vec!["apply", "--base", s(&b), "--residual", s(&r), "-o", s(&out)];
    args.extend_from_slice(extra);
    let o = qresidual(&args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{extra:?}: {err}");
    assert!(
        err.contains(needle),
        "{extra:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(!out.exists(), "{extra:?} left {}", out.display());
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name();
        assert!(
            !n.to_string_lossy().contains("qresidual-tmp"),
            "temporary file {n:?} left behind"
        );
    }
}

/// {name: Δ} of a residual file.
fn deltas(path: &Path) -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), Dtype::F16);
            let d = v
                .data()
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect();
            (name, d)
        })
        .collect()
}

/// The residual restricted to the tensors whose name starts with `prefix`.
fn residual_subset(dir: &Path, prefix: &str) -> PathBuf {
    let bytes = std::fs::read(residual()).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let keep: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n.starts_with(prefix))
        .collect();
    assert!(!keep.is_empty() && keep.len() < st.len());
    let path = dir.join("subset.safetensors");
    safetensors::tensor::serialize_to_file(keep, None, &path).unwrap();
    path
}

fn tensor_bytes(f: &GgufFile) -> u64 {
    f.tensors().iter().map(|t| t.size).sum()
}

/// Every output tensor is the fresh encoding, at its chosen type, of the
/// exact sum dequant(base) + Δ (of dequant(base) where there is no
/// residual), or the base's bytes where it kept its type without residual.
fn check_fresh_encoding(out: &Path, residual: &Path) {
    let b = GgufFile::open(&base()).unwrap();
    let o = GgufFile::open(out).unwrap();
    let d = deltas(residual);
    assert_eq!(b.tensors().len(), o.tensors().len());
    for (i, (bt, ot)) in b.tensors().iter().zip(o.tensors()).enumerate() {
        assert_eq!((&bt.name, &bt.ne), (&ot.name, &ot.ne));
        let n = bt.n_elements() as usize;
        let delta = d.get(&bt.name);
        if delta.is_none() && ot.ty == bt.ty {
            assert!(o.tensor_data(i) == b.tensor_data(i), "{} changed", bt.name);
            continue;
        }
        let mut sum = dequant(bt.ty, b.tensor_data(i), n);
        if let Some(delta) = delta {
            sum.iter_mut().zip(delta).for_each(|(s, d)| *s += d);
        }
        let rl = bt.row_len() as usize;
        let rb = ot.ty.row_size(rl).unwrap();
        let mut want = vec![0u8; rb * n / rl];
        for (src, dst) in sum.chunks(rl).zip(want.chunks_mut(rb)) {
            quantize_row(ot.ty, src, dst).unwrap();
        }
        assert!(
            o.tensor_data(i) == want.as_slice(),
            "{} ({} → {}) is not the fresh encoding",
            bt.name,
            bt.ty,
            ot.ty
        );
        // And it decodes to finite values.
        assert!(dequant(ot.ty, o.tensor_data(i), n)
            .iter()
            .all(|v| v.is_finite()));
    }
}

fn predicted(j: &Value) -> f64 {
    j["budget"]["predicted_mean_rel_error"].as_f64().unwrap()
}

#[test]
fn same_size_budget_is_never_larger_than_the_base_and_is_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    // λ = 0: the plan minimises the plain error energy, which the report
    // predicts (the default λ also prices the lost part of Δ).
    let (j, err) = apply(
        &residual(),
        &out,
        &["--max-size", "+0%", "--delta-weight", "0"],
    );
    assert!(err.contains("budget plan:"), "{err}");
    let (b, o) = (
        GgufFile::open(&base()).unwrap(),
        GgufFile::open(&out).unwrap(),
    );
    assert!(tensor_bytes(&o) <= tensor_bytes(&b));
    assert_eq!(
        j["budget"]["predicted_bytes"].as_u64().unwrap(),
        tensor_bytes(&o)
    );
    // The planner moved something and predicts less error than keep.
    assert!(o
        .tensors()
        .iter()
        .zip(b.tensors())
        .any(|(x, y)| x.ty != y.ty));
    let keep = j["budget"]["keep_mean_rel_error"].as_f64().unwrap();
    assert!(predicted(&j) < keep, "{} vs keep {keep}", predicted(&j));
    // Every type written is in the report's plan, and matches the output.
    for (t, p) in o
        .tensors()
        .iter()
        .zip(j["budget"]["tensors"].as_array().unwrap())
    {
        assert_eq!(p["name"], t.name.as_str());
        assert_eq!(p["type_out"], t.ty.name());
    }
    check_fresh_encoding(&out, &residual());
}

#[test]
fn absolute_and_bpw_budgets_are_met() {
    let dir = tempfile::tempdir().unwrap();
    let b = GgufFile::open(&base()).unwrap();
    let n: u64 = b.tensors().iter().map(|t| t.n_elements()).sum();
    let base_bytes = tensor_bytes(&b);
    for (k, flags) in [
        vec!["--max-size".to_string(), format!("{}", base_bytes * 9 / 10)],
        vec!["--max-size".into(), "-5%".into()],
        vec!["--max-size".into(), "1M".into()],
        vec!["--bpw".into(), "5.5".into()],
        vec!["--bpw".into(), "4.2".into()],
    ]
    .iter()
    .enumerate()
    {
        let out = dir.path().join(format!("{k}.gguf"));
        let args: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
        let (j, _) = apply(&residual(), &out, &args);
        let o = GgufFile::open(&out).unwrap();
        let budget = j["budget"]["max_bytes"].as_u64().unwrap();
        let want = match args[0] {
            "--bpw" => (args[1].parse::<f64>().unwrap() * n as f64 / 8.0) as u64,
            _ if args[1].ends_with('%') => (base_bytes as f64 * 0.95) as u64,
            _ if args[1] == "1M" => 1 << 20,
            _ => base_bytes * 9 / 10,
        };
        assert_eq!(budget, want, "{args:?}");
        assert!(
            tensor_bytes(&o) <= budget,
            "{args:?}: {} > {budget}",
            tensor_bytes(&o)
        );
    }
}

#[test]
fn more_budget_never_predicts_more_error_and_unlimited_reaches_the_top() {
    let dir = tempfile::tempdir().unwrap();
    let mut last = f64::INFINITY;
    let mut plans = Vec::new();
    for (k, m) in ["-8%", "+0%", "+3%", "+10%", "+30%", "+1000%"]
        .iter()
        .enumerate()
    {
        let out = dir.path().join(format!("{k}.gguf"));
        let (j, _) = apply(&residual(), &out, &["--max-size", m, "-q"]);
        let e = predicted(&j);
        assert!(e <= last, "{m}: {e} > {last}");
        last = e;
        plans.push(j);
    }
    assert!(predicted(&plans[0]) > predicted(&plans[5]));
    // Unlimited: every tensor at its least-error candidate, which for
    // tensors with a residual and a ladder is Q8_0.
    let top = &plans[5]["budget"]["tensors"];
    let mut moved = 0;
    for t in top.as_array().unwrap() {
        let c = t["candidates"].as_array().unwrap();
        let best = c
            .iter()
            .min_by(|a, b| {
                a["rel_error"]
                    .as_f64()
                    .unwrap()
                    .total_cmp(&b["rel_error"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(t["type_out"], best["type"], "{}", t["name"]);
        if c.len() > 1 {
            assert_eq!(t["type_out"], "q8_0", "{}", t["name"]);
            moved += 1;
        }
    }
    assert_eq!(moved, 16);
}

#[test]
fn min_retention_is_reached_or_named() {
    let dir = tempfile::tempdir().unwrap();
    for r in ["0.9", "0.999"] {
        let out = dir.path().join(format!("{r}.gguf"));
        let (j, err) = apply(&residual(), &out, &["--min-retention", r]);
        let r: f64 = r.parse().unwrap();
        let warnings: Vec<&str> = j["budget"]["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w.as_str().unwrap())
            .collect();
        for w in &warnings {
            assert!(err.contains(w), "warning not shown: {w}");
        }
        for t in j["tensors"].as_array().unwrap() {
            let Some(ret) = t["error"]["retention"].as_f64() else {
                continue;
            };
            let name = t["name"].as_str().unwrap();
            let warned = warnings.iter().any(|w| w.contains(&format!("'{name}'")));
            assert!(ret >= r || warned, "{name}: retention {ret} < {r}");
        }
        if r == 0.9 {
            assert!(warnings.is_empty(), "{warnings:?}");
        }
        // Retention alone only raises, to the cheapest type that keeps R.
        for t in j["budget"]["tensors"].as_array().unwrap() {
            let c = t["candidates"].as_array().unwrap();
            let keep = c.iter().find(|c| c["type"] == t["type_in"]).unwrap();
            let floor = keep["bytes"].as_u64().unwrap();
            let out = c.iter().find(|c| c["type"] == t["type_out"]).unwrap();
            assert!(out["bytes"].as_u64().unwrap() >= floor, "{}", t["name"]);
            let cheapest = c
                .iter()
                .filter(|c| c["bytes"].as_u64().unwrap() >= floor)
                .filter(|c| c["retention_low"].as_f64().is_some_and(|x| x >= r))
                .map(|c| c["bytes"].as_u64().unwrap())
                .min();
            if let Some(b) = cheapest {
                assert_eq!(out["bytes"].as_u64(), Some(b), "{}", t["name"]);
            }
        }
    }
    // Retention 0.9 at the base's size conflicts with the Q4_K tensors
    // under nearest rounding (retention ~0.4; dithered, auto's default,
    // keeps ~0.97): the error says what each needs.
    fails(
        &[
            "--min-retention",
            "0.9",
            "--max-size",
            "+0%",
            "--rounding",
            "nearest",
        ],
        2,
        "--min-retention alone needs",
        dir.path(),
    );
}

#[test]
fn tensors_without_residual_move_only_when_it_pays() {
    let dir = tempfile::tempdir().unwrap();
    let subset = residual_subset(dir.path(), "blk.0.");
    let out = dir.path().join("out.gguf");
    let (j, _) = apply(&subset, &out, &["--max-size", "+0%"]);
    let (mut moved, mut stayed) = (0, 0);
    for t in j["budget"]["tensors"].as_array().unwrap() {
        if t["residual"] == false && t["candidates"].as_array().unwrap().len() > 1 {
            if t["type_out"] == t["type_in"] {
                stayed += 1;
            } else {
                moved += 1;
            }
            // Staying put is a copy: zero error.
            let keep = t["candidates"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == t["type_in"])
                .unwrap();
            assert_eq!(keep["rel_error"].as_f64(), Some(0.0), "{}", t["name"]);
        }
    }
    // Both paths are exercised: copies and re-encoded tensors without Δ.
    assert!(moved > 0 && stayed > 0, "moved {moved}, stayed {stayed}");
    check_fresh_encoding(&out, &subset);
}

#[test]
fn bad_budgets_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fails(&["--max-size", "-5M"], 2, "cannot be negative", d);
    fails(&["--max-size", "-100%"], 2, "no room", d);
    fails(&["--max-size", "lots"], 2, "not a size", d);
    fails(&["--max-size", "+x%"], 2, "not a change", d);
    fails(&["--bpw", "0"], 2, "bits per weight", d);
    fails(&["--bpw", "-3"], 2, "bits per weight", d);
    fails(&["--bpw", "nan"], 2, "bits per weight", d);
    fails(&["--min-retention", "1.5"], 2, "between 0 and 1", d);
    fails(&["--min-retention", "-0.1"], 2, "between 0 and 1", d);
    fails(&["--max-size", "100K"], 2, "too small", d);
    fails(&["--bpw", "1"], 2, "too small", d);
    fails(
        &["--max-size", "1M", "--bpw", "5"],
        2,
        "cannot be used with",
        d,
    );
    fails(&["--max-size", "1M", "--type", "q8_0"], 2, "--type q8_0", d);
    fails(&["--delta-weight", "-1"], 2, "weight of 0 or more", d);
    fails(
        &["--rounding", "dither", "--strategy", "fresh"],
        2,
        "not fresh",
        d,
    );
    // bitsandbytes bases are refused before anything is read.
    let bnb = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny_bnb/nf4");
    let out = d.join("bnb-out");
    let o = qresidual(&[
        "apply",
        "--base",
        s(&bnb),
        "--residual",
        s(&residual()),
        "-o",
        s(&out),
        "--bpw",
        "4",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("bitsandbytes"), "{err}");
    assert!(!out.exists());
}
