//! `qresidual apply --strategy search` on the tiny llama fixture
//! (fixtures/tiny: a Q4_K_M base with Q4_K and Q6_K tensors, F32 norms).
//!
//! The residual with GGUF tensor names (no rotary permutation) lets the test
//! rebuild the exact target `t = dequant(base) + Δ` itself and check the
//! written blocks independently of the tool's own report.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use qresidual::format::gguf::GgufFile;
use qresidual::quant::GgmlType;
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;

mod common;
use common::{dequant as decode, tiny as fixture, tiny_base as base};

/// Run `apply` with `extra` arguments into `dir/name.gguf` (+ `.json`
/// report); returns the output path and the report.
fn apply(dir: &Path, name: &str, residual: &str, extra: &[&str]) -> (PathBuf, Value) {
    let out = dir.join(format!("{name}.gguf"));
    let report = dir.join(format!("{name}.json"));
    let mut args: Vec<String> = vec![
        "apply".into(),
        "--base".into(),
        base().display().to_string(),
        "--residual".into(),
        fixture(residual).display().to_string(),
        "-o".into(),
        out.display().to_string(),
        "--report".into(),
        report.display().to_string(),
        "-q".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let r = Command::new(env!("CARGO_BIN_EXE_qresidual"))
        .args(&args)
        .output()
        .expect("run qresidual");
    assert!(
        r.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let j = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (out, j)
}

fn by_name(report: &Value) -> HashMap<String, Value> {
    report["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

/// {tensor: Δ} from the residual with GGUF names, in the base's row order.
fn deltas() -> HashMap<String, Vec<f32>> {
    let bytes = std::fs::read(fixture("residual-gguf-names.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), Dtype::F16);
            let n = view.data().len() / 2;
            (name, decode(GgmlType::F16, view.data(), n))
        })
        .collect()
}

fn sq_err(t: &[f32], x: &[f32]) -> f64 {
    t.iter()
        .zip(x)
        .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
        .sum()
}

#[test]
fn search_is_never_further_than_fresh_and_counts_every_block() {
    let dir = tempfile::tempdir().unwrap();
    let res = "residual-gguf-names.safetensors";
    let (fresh_path, fresh_rep) = apply(dir.path(), "fresh", res, &["--strategy", "fresh"]);
    let (search_path, search_rep) = apply(dir.path(), "search", res, &["--strategy", "search"]);
    let (base, fresh, search) = (
        GgufFile::open(&base()).unwrap(),
        GgufFile::open(&fresh_path).unwrap(),
        GgufFile::open(&search_path).unwrap(),
    );
    let deltas = deltas();
    let (fr, sr) = (by_name(&fresh_rep), by_name(&search_rep));
    let mut searched = 0;
    let mut totals = [0u64; 3];
    for (i, t) in base.tensors().iter().enumerate() {
        let name = &t.name;
        let (f, s) = (&fr[name], &sr[name]);
        let Some(delta) = deltas.get(name) else {
            assert_eq!(s["copied"], true, "{name}");
            continue;
        };
        // The reports: search's RMSE against the exact sum ≤ fresh's.
        let (rf, rs) = (
            f["error"]["rmse"].as_f64().unwrap(),
            s["error"]["rmse"].as_f64().unwrap(),
        );
        assert!(rs <= rf, "{name}: search RMSE {rs:e} > fresh {rf:e}");
        if t.ty.block_size() == 1 {
            assert!(
                s.get("search").is_none(),
                "{name}: float tensors are not searched"
            );
            continue;
        }
        searched += 1;
        // Rebuild t and classify every written block ourselves.
        let n = t.n_elements() as usize;
        let bhat = decode(t.ty, base.tensor_data(i), n);
        let target: Vec<f32> = bhat.iter().zip(delta).map(|(b, d)| b + d).collect();
        let (bs, ts) = (t.ty.block_size(), t.ty.type_size());
        let j = fresh.tensor_index(name).unwrap();
        let k = search.tensor_index(name).unwrap();
        let (fb, sb, bb) = (
            fresh.tensor_data(j),
            search.tensor_data(k),
            base.tensor_data(i),
        );
        let mut counts = [0u64; 3]; // base, fresh, re-rounded
        for (blk, tt) in target.chunks_exact(bs).enumerate() {
            let r = blk * ts..(blk + 1) * ts;
            let (s_b, f_b, b_b) = (&sb[r.clone()], &fb[r.clone()], &bb[r]);
            let es = sq_err(tt, &decode(t.ty, s_b, bs));
            let ef = sq_err(tt, &decode(t.ty, f_b, bs));
            let eb = sq_err(tt, &decode(t.ty, b_b, bs));
            assert!(
                es <= ef && es <= eb,
                "{name} block {blk}: search {es:e}, fresh {ef:e}, base {eb:e}"
            );
            counts[if s_b == f_b {
                1
            } else if s_b == b_b {
                0
            } else {
                2
            }] += 1;
        }
        let w = &s["search"];
        let got = [
            w["base"].as_u64().unwrap(),
            w["fresh"].as_u64().unwrap(),
            w["rerounded"].as_u64().unwrap(),
        ];
        assert_eq!(got, counts, "{name}: reported wins differ from the bytes");
        assert_eq!(w["blocks"].as_u64().unwrap(), (n / bs) as u64, "{name}");
        for (a, c) in totals.iter_mut().zip(counts) {
            *a += c;
        }
    }
    assert!(searched >= 10, "only {searched} tensors searched");
    // The search moved something: otherwise the fixture tests nothing.
    assert!(totals[0] + totals[2] > 0, "{totals:?}");
    let total = &search_rep["summary"]["search"]["total"];
    assert_eq!(total["base"].as_u64().unwrap(), totals[0]);
    assert_eq!(total["fresh"].as_u64().unwrap(), totals[1]);
    assert_eq!(total["rerounded"].as_u64().unwrap(), totals[2]);
    assert_eq!(search_rep["inputs"]["strategy"], "search");
    assert_eq!(fresh_rep["inputs"]["strategy"], "fresh");
    assert!(fresh_rep["summary"].get("search").is_none());
}

/// The HF-named residual (rotary permutation applied to q/k) through search:
/// RMSE per tensor ≤ fresh's, and the run does not depend on the threads.
#[test]
fn search_with_hf_names_beats_fresh_and_ignores_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let res = "residual-f16.safetensors";
    let (_, fresh_rep) = apply(dir.path(), "fresh", res, &["--strategy", "fresh"]);
    let (p1, r1) = apply(
        dir.path(),
        "s1",
        res,
        &["--strategy", "search", "--threads", "1"],
    );
    let (p2, r2) = apply(
        dir.path(),
        "s2",
        res,
        &["--strategy", "search", "--threads", "2"],
    );
    assert!(
        std::fs::read(&p1).unwrap() == std::fs::read(&p2).unwrap(),
        "output differs between 1 and 2 threads"
    );
    assert_eq!(r1["tensors"], r2["tensors"]);
    assert_eq!(r1["summary"], r2["summary"]);
    let fr = by_name(&fresh_rep);
    let mut strictly_better = 0;
    for t in r1["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        if let Some(e) = t.get("error") {
            let rs = e["rmse"].as_f64().unwrap();
            let rf = fr[name]["error"]["rmse"].as_f64().unwrap();
            assert!(rs <= rf, "{name}: search {rs:e} > fresh {rf:e}");
            strictly_better += usize::from(rs < rf);
        }
    }
    assert!(strictly_better > 0);
}

/// --scale 0: every tensor is the base's, byte for byte.
#[test]
fn scale_zero_returns_the_base_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (p, _) = apply(
        dir.path(),
        "zero",
        "residual-f16.safetensors",
        &["--strategy", "search", "--scale", "0"],
    );
    let (b, o) = (GgmlFileCmp::open(&base()), GgmlFileCmp::open(&p));
    assert_eq!(b.0.len(), o.0.len());
    for (x, y) in b.0.iter().zip(&o.0) {
        assert!(x == y, "a tensor changed with --scale 0");
    }
}

/// Another output type than the base's: nothing can be searched, every
/// re-encoded tensor is listed as encoded fresh, and the bytes are fresh's.
#[test]
fn other_output_type_falls_back_to_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let res = "residual-f16.safetensors";
    let (pf, _) = apply(dir.path(), "fresh", res, &["--type", "q8_0"]);
    let (ps, rs) = apply(
        dir.path(),
        "search",
        res,
        &["--type", "q8_0", "--strategy", "search"],
    );
    assert!(std::fs::read(&pf).unwrap() == std::fs::read(&ps).unwrap());
    let s = &rs["summary"]["search"];
    assert_eq!(s["total"]["blocks"], 0);
    let fallback = s["fresh_fallback"].as_array().unwrap();
    assert!(fallback.iter().any(|f| f["reason"]
        .as_str()
        .unwrap()
        .contains("output type differs")));
    assert!(rs["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t.get("search").is_none()));
}

/// Names and bytes of every tensor of a GGUF file.
struct GgmlFileCmp(Vec<(String, Vec<u8>)>);

impl GgmlFileCmp {
    fn open(p: &Path) -> Self {
        let f = GgufFile::open(p).unwrap();
        GgmlFileCmp(
            f.tensors()
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), f.tensor_data(i).to_vec()))
                .collect(),
        )
    }
}
