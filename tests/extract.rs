//! `extract`, the base guard in `apply`, and `compare`, on the tiny
//! base/instruct pair of fixtures/pair (made by fixtures/make_tiny_pair.py:
//! HF checkpoints in F16 and BF16, the base and another base quantized to
//! Q4_K_M by llama.cpp, and numpy's checksums of the expected residual).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use qresidual::apply::guard::{FINGERPRINT_KEY, PROVENANCE_KEY};
use qresidual::format::gguf::GgufFile;
use qresidual::format::st::SafetensorsModel;
use qresidual::quant::{dequantize_row, GgmlType};
use safetensors::Dtype;
use serde_json::Value;

mod common;
use common::{run as qresidual, s};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pair")
        .join(name)
}

/// Runs and succeeds; returns stderr.
fn ok(args: &[&str]) -> String {
    let out = qresidual(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "qresidual {args:?} failed: {err}");
    err
}

/// Fails with `code`, mentioning every needle, writing nothing at `output`.
fn fails(args: &[&str], code: i32, needles: &[&str], output: &Path) -> String {
    let out = qresidual(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected '{n}' in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!output.exists(), "{} was left behind", output.display());
    err
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    format!("{h:016x}")
}

/// f32 values of a safetensors tensor, decoded with the `half` crate.
fn st_values(model: &SafetensorsModel, name: &str) -> Vec<f32> {
    let t = model.get(name).unwrap_or_else(|| panic!("{name} missing"));
    let d = model.data(t);
    match t.dtype {
        Dtype::F16 => d
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    }
}

fn gguf_values(g: &GgufFile, name: &str) -> Vec<f32> {
    let i = g
        .tensor_index(name)
        .unwrap_or_else(|| panic!("{name} missing"));
    let t = &g.tensors()[i];
    let mut v = vec![0f32; t.n_elements() as usize];
    dequantize_row(t.ty, g.tensor_data(i), &mut v).unwrap();
    v
}

fn extract_to(dir: &Path, file: &str, dtype: &str) -> (PathBuf, String) {
    let out = dir.join(file);
    let err = ok(&[
        "extract",
        "--instruct",
        s(&fixture("hf-instruct")),
        "--base",
        s(&fixture("hf-base")),
        "-o",
        s(&out),
        "--dtype",
        dtype,
    ]);
    (out, err)
}

#[test]
fn f32_residual_is_instruct_minus_base_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (out, _) = extract_to(dir.path(), "res32.safetensors", "f32");
    let res = SafetensorsModel::open(&out).unwrap();
    let inst = SafetensorsModel::open(&fixture("hf-instruct")).unwrap();
    let base = SafetensorsModel::open(&fixture("hf-base")).unwrap();
    let exp = expected();
    let tensors = exp["tensors"].as_object().unwrap();
    assert_eq!(res.tensors().len(), tensors.len());
    for (name, e) in tensors {
        let t = res
            .get(name)
            .unwrap_or_else(|| panic!("{name}: HF name kept"));
        assert_eq!(t.dtype, Dtype::F32);
        let shape: Vec<usize> = serde_json::from_value(e["shape"].clone()).unwrap();
        assert_eq!(t.shape, shape, "{name}");
        // numpy's f32(instruct) - f32(base), byte for byte.
        assert_eq!(
            fnv1a64(res.data(t)),
            e["delta_f32_fnv1a64"].as_str().unwrap(),
            "{name}"
        );
        // And element by element against the inputs decoded by `half`.
        let (i, b, d) = (
            st_values(&inst, name),
            st_values(&base, name),
            st_values(&res, name),
        );
        for k in 0..d.len() {
            assert_eq!(d[k].to_bits(), (i[k] - b[k]).to_bits(), "{name}[{k}]");
        }
    }
}

#[test]
fn f16_residual_is_the_delta_rounded_like_numpy_and_carries_provenance() {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = extract_to(dir.path(), "res16.safetensors", "f16");
    assert!(!err.contains("warning"), "{err}");
    let res = SafetensorsModel::open(&out).unwrap();
    let exp = expected();
    for (name, e) in exp["tensors"].as_object().unwrap() {
        let t = res.get(name).unwrap();
        assert_eq!(t.dtype, Dtype::F16);
        assert_eq!(
            fnv1a64(res.data(t)),
            e["delta_f16_fnv1a64"].as_str().unwrap(),
            "{name}"
        );
    }
    let md = res.metadata();
    let prov: Value = serde_json::from_str(&md[PROVENANCE_KEY]).unwrap();
    assert_eq!(prov["command"], "extract");
    assert_eq!(prov["dtype"], "F16");
    assert!(prov["base"].as_str().unwrap().ends_with("hf-base"));
    let fp: Value = serde_json::from_str(&md[FINGERPRINT_KEY]).unwrap();
    let q = &fp["tensors"]["model.layers.0.self_attn.q_proj.weight"];
    assert_eq!(q["shape"], serde_json::json!([256, 256]));
    assert_eq!(q["base_type"], "f16");
    // 256 buckets of 8 hex digits.
    assert_eq!(q["sketch"].as_str().unwrap().len(), 256 * 8);
    let rms = q["rms"].as_f64().unwrap();
    assert!((rms - 1.0 / 16.0).abs() < 0.005, "{rms}");
}

#[test]
fn guard_passes_the_right_base_at_q4_k_m_and_refuses_another_naming_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let (res, _) = extract_to(dir.path(), "res.safetensors", "f16");
    let out = dir.path().join("out.gguf");
    let err = ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&res),
        "-o",
        s(&out),
    ]);
    assert!(
        err.contains("21 tensor(s) match the residual's base fingerprint"),
        "{err}"
    );

    let wrong_out = dir.path().join("wrong.gguf");
    let wrong_base = fixture("wrong-base-q4_k_m.gguf");
    let args = [
        "apply",
        "--base",
        s(&wrong_base),
        "--residual",
        s(&res),
        "-o",
        s(&wrong_out),
    ];
    fails(
        &args,
        1,
        &[
            "21 of 21 tensor(s)",
            "disagree with the residual's base fingerprint",
            "blk.0.attn_q.weight",
            "--force",
        ],
        &wrong_out,
    );
    let mut forced = args.to_vec();
    forced.push("--force");
    let err = ok(&forced);
    assert!(err.contains("applying anyway (--force)"), "{err}");
    assert!(wrong_out.exists());
}

/// Write `tensors` (name, shape, f32 values) as an F32 safetensors file.
fn write_f32(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let specs: Vec<(String, Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(n, s, _)| (n.clone(), Dtype::F32, s.clone()))
        .collect();
    let mut w =
        qresidual::format::st::SafetensorsWriter::create(path, &specs, Default::default()).unwrap();
    for (_, _, v) in tensors {
        let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        w.write(&b).unwrap();
    }
    w.finish().unwrap();
}

fn noise(n: usize, seed: u64, rms: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * rms * 12f32.sqrt()
        })
        .collect()
}

#[test]
fn guard_names_exactly_the_tensors_that_changed() {
    // A base that differs from the right one in two tensors only: a matrix
    // moved by half its RMS and a norm moved by 0.1 (10 %).
    let dir = tempfile::tempdir().unwrap();
    let (res, _) = extract_to(dir.path(), "res.safetensors", "f16");
    let bump = dir.path().join("bump.safetensors");
    write_f32(
        &bump,
        &[
            (
                "blk.1.ffn_up.weight".into(),
                vec![256, 256],
                noise(65536, 1, 0.03),
            ),
            (
                "blk.0.attn_norm.weight".into(),
                vec![256],
                noise(256, 2, 0.1),
            ),
        ],
    );
    let moved = dir.path().join("moved.gguf");
    ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&bump),
        "-o",
        s(&moved),
        "-q",
    ]);
    let out = dir.path().join("out.gguf");
    let err = fails(
        &[
            "apply",
            "--base",
            s(&moved),
            "--residual",
            s(&res),
            "-o",
            s(&out),
        ],
        1,
        &[
            "2 of 21 tensor(s)",
            "blk.1.ffn_up.weight",
            "blk.0.attn_norm.weight",
        ],
        &out,
    );
    assert!(!err.contains("blk.0.ffn_up.weight"), "{err}");
}

#[test]
fn residual_without_fingerprint_says_only_names_and_shapes_were_checked() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain.safetensors");
    let base = SafetensorsModel::open(&fixture("hf-base")).unwrap();
    let t = &base.tensors()[0];
    let n = t.n_elements();
    write_f32(&plain, &[(t.name.clone(), t.shape.clone(), vec![0.001; n])]);
    let err = ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&plain),
        "-o",
        s(&dir.path().join("o.gguf")),
    ]);
    assert!(
        err.contains("carries no base fingerprint; only tensor names and shapes could be checked"),
        "{err}"
    );
}

#[test]
fn q8_0_residual_is_gguf_keeps_the_delta_and_guards_the_base() {
    let dir = tempfile::tempdir().unwrap();
    let (res, err) = extract_to(dir.path(), "res.gguf", "q8_0");
    assert!(err.contains("retention"), "{err}");
    let g = GgufFile::open(&res).unwrap();
    assert!(g.get(FINGERPRINT_KEY).and_then(|v| v.as_str()).is_some());
    assert!(g.get(PROVENANCE_KEY).and_then(|v| v.as_str()).is_some());
    let f32_dir = tempfile::tempdir().unwrap();
    let (exact, _) = extract_to(f32_dir.path(), "exact.safetensors", "f32");
    let exact = SafetensorsModel::open(&exact).unwrap();
    for t in g.tensors() {
        let want = if t.ne.len() >= 2 {
            GgmlType::Q8_0
        } else {
            GgmlType::F16
        };
        assert_eq!(t.ty, want, "{}", t.name);
        // HF names, HF shapes (ne reversed).
        let e = exact.get(&t.name).unwrap();
        let ne: Vec<u64> = e.shape.iter().rev().map(|&d| d as u64).collect();
        assert_eq!(t.ne, ne);
        let (d, q) = (st_values(&exact, &t.name), gguf_values(&g, &t.name));
        let dot: f64 = d.iter().zip(&q).map(|(a, b)| *a as f64 * *b as f64).sum();
        let n2: f64 = d.iter().map(|a| (*a as f64).powi(2)).sum();
        assert!(
            (dot / n2 - 1.0).abs() < 0.002,
            "{}: retention {}",
            t.name,
            dot / n2
        );
    }
    let size = std::fs::metadata(&res).unwrap().len();
    assert!(size < 1_000_000, "{size}");

    let out = dir.path().join("out.gguf");
    let err = ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&res),
        "-o",
        s(&out),
    ]);
    assert!(
        err.contains("match the residual's base fingerprint"),
        "{err}"
    );
    let wrong = dir.path().join("wrong.gguf");
    fails(
        &[
            "apply",
            "--base",
            s(&fixture("wrong-base-q4_k_m.gguf")),
            "--residual",
            s(&res),
            "-o",
            s(&wrong),
        ],
        1,
        &["disagree with the residual's base fingerprint"],
        &wrong,
    );
}

#[test]
fn gguf_inputs_give_gguf_names_and_dequantized_differences() {
    let dir = tempfile::tempdir().unwrap();
    let (res, _) = extract_to(dir.path(), "res.safetensors", "f32");
    // An "instruct" GGUF: the base at Q4_K_M plus the residual, kept in F32.
    let inst = dir.path().join("inst.gguf");
    ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&res),
        "-o",
        s(&inst),
        "--type",
        "f32",
        "-q",
    ]);
    let out = dir.path().join("back.safetensors");
    ok(&[
        "extract",
        "--instruct",
        s(&inst),
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "-o",
        s(&out),
        "--dtype",
        "f32",
        "-q",
    ]);
    let back = SafetensorsModel::open(&out).unwrap();
    let gi = GgufFile::open(&inst).unwrap();
    let gb = GgufFile::open(&fixture("base-q4_k_m.gguf")).unwrap();
    assert_eq!(back.tensors().len(), gb.tensors().len());
    for t in gb.tensors() {
        let d = st_values(&back, &t.name);
        let (i, b) = (gguf_values(&gi, &t.name), gguf_values(&gb, &t.name));
        for k in 0..d.len() {
            assert_eq!(d[k].to_bits(), (i[k] - b[k]).to_bits(), "{}[{k}]", t.name);
        }
    }
    // The fingerprint of a Q4_K_M base records its types and still matches it.
    let fp: Value = serde_json::from_str(&back.metadata()[FINGERPRINT_KEY]).unwrap();
    assert_eq!(fp["tensors"]["blk.0.attn_q.weight"]["base_type"], "q4_K");
}

#[test]
fn models_with_different_tensors_are_listed_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("res.safetensors");
    // The other tiny fixture has a wider FFN and a larger vocabulary.
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny/base-q4_k_m.gguf");
    fails(
        &[
            "extract",
            "--instruct",
            s(&fixture("base-q4_k_m.gguf")),
            "--base",
            s(&other),
            "-o",
            s(&out),
        ],
        1,
        &[
            "differ in shape",
            "blk.0.ffn_up.weight: [256, 256] vs [512, 256]",
            "token_embd.weight",
        ],
        &out,
    );
    // An output name that contradicts --dtype is a usage error.
    let named = dir.path().join("res.gguf");
    fails(
        &[
            "extract",
            "--instruct",
            s(&fixture("hf-instruct")),
            "--base",
            s(&fixture("hf-base")),
            "-o",
            s(&named),
        ],
        2,
        &["--dtype f16 writes safetensors"],
        &named,
    );
    // A checkpoint holding two of the base's tensors.
    let base = SafetensorsModel::open(&fixture("hf-base")).unwrap();
    let part = dir.path().join("part.safetensors");
    let two: Vec<(String, Vec<usize>, Vec<f32>)> = base.tensors()[..2]
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone(), st_values(&base, &t.name)))
        .collect();
    write_f32(&part, &two);
    fails(
        &[
            "extract",
            "--instruct",
            s(&part),
            "--base",
            s(&fixture("hf-base")),
            "-o",
            s(&out),
        ],
        1,
        &[
            "19 tensor(s) only in the base model",
            "model.layers.0.mlp.up_proj.weight",
        ],
        &out,
    );
}

fn json_file(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn by_name(list: &Value) -> HashMap<String, Value> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect()
}

#[test]
fn compare_agrees_with_the_apply_report() {
    let dir = tempfile::tempdir().unwrap();
    let (res, _) = extract_to(dir.path(), "res.safetensors", "f32");
    let base = fixture("base-q4_k_m.gguf");
    let out = dir.path().join("out.gguf");
    let report = dir.path().join("report.json");
    ok(&[
        "apply",
        "--base",
        s(&base),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--report",
        s(&report),
        "-q",
    ]);
    // The exact f32 sum the report measures against.
    let exact = dir.path().join("exact.gguf");
    ok(&[
        "apply",
        "--base",
        s(&base),
        "--residual",
        s(&res),
        "-o",
        s(&exact),
        "--type",
        "f32",
        "-q",
    ]);
    let j1 = dir.path().join("c1.json");
    ok(&["compare", s(&exact), s(&out), "--json", s(&j1), "-q"]);
    let rep = by_name(&json_file(&report)["tensors"]);
    let cmp = json_file(&j1);
    assert_eq!(cmp["summary"]["tensors"], 21);
    let c1 = by_name(&cmp["tensors"]);
    for (name, r) in &rep {
        let e = &r["error"];
        let c = &c1[name];
        let close = |a: &Value, b: &Value| {
            let (a, b) = (a.as_f64().unwrap(), b.as_f64().unwrap());
            (a - b).abs() <= 1e-9 * a.abs().max(b.abs()) + 1e-15
        };
        assert!(close(&e["rmse"], &c["rmse"]), "{name}: {e} vs {c}");
        assert!(close(&e["max_abs"], &c["max_abs"]), "{name}");
        assert!(close(&e["relative_rmse"], &c["relative_rmse"]), "{name}");
        assert!(close(&e["cosine"], &c["cosine"]), "{name}");
    }

    // Against the ground-truth instruct checkpoint (HF names and layout,
    // paired through the name table): the triangle inequality with the
    // report's error and the base's own quantization error.
    let j2 = dir.path().join("c2.json");
    ok(&[
        "compare",
        s(&fixture("hf-instruct")),
        s(&out),
        "--json",
        s(&j2),
        "-q",
    ]);
    let j3 = dir.path().join("c3.json");
    ok(&[
        "compare",
        s(&fixture("hf-base")),
        s(&base),
        "--json",
        s(&j3),
        "-q",
    ]);
    let (c2, c3) = (
        by_name(&json_file(&j2)["tensors"]),
        by_name(&json_file(&j3)["tensors"]),
    );
    assert_eq!(c2.len(), 21);
    for (name, r) in &rep {
        let apply_rmse = r["error"]["rmse"].as_f64().unwrap();
        let truth = c2[name]["rmse"].as_f64().unwrap();
        let base_q = c3[name]["rmse"].as_f64().unwrap();
        assert!(
            truth <= apply_rmse + base_q + 1e-6 && truth + 1e-6 >= (apply_rmse - base_q).abs(),
            "{name}: |out − instruct| {truth} vs report {apply_rmse} and base error {base_q}"
        );
        if r["type_out"] != "f32" {
            assert!(truth > 0.0, "{name}");
        }
    }
}

const TEMPLATE: &str = "{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] }}<|eot_id|>{% endfor %}";

#[test]
fn tokenizer_config_sets_chat_template_eos_and_eot() {
    let dir = tempfile::tempdir().unwrap();
    let (res, _) = extract_to(dir.path(), "res.safetensors", "f16");
    let tc = dir.path().join("tokenizer_config.json");
    // "<0x0A>" is token 13 of the fixture's vocabulary (3 specials, then bytes).
    let config = serde_json::json!({
        "chat_template": TEMPLATE,
        "eos_token": {"content": "<0x0A>", "special": true},
        "bos_token": "<s>",
        "add_bos_token": true,
    });
    std::fs::write(&tc, config.to_string()).unwrap();
    let out = dir.path().join("chat.gguf");
    ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--tokenizer-config",
        s(&tc),
        "--set",
        "general.name=str:Tiny Chat",
        "-q",
    ]);
    let g = GgufFile::open(&out).unwrap();
    let get = |k: &str| g.get(k).unwrap_or_else(|| panic!("{k} missing"));
    assert_eq!(get("tokenizer.chat_template").as_str(), Some(TEMPLATE));
    assert_eq!(get("tokenizer.ggml.eos_token_id").as_u64(), Some(13));
    assert_eq!(get("tokenizer.ggml.eot_token_id").as_u64(), Some(13));
    assert_eq!(get("tokenizer.ggml.bos_token_id").as_u64(), Some(1));
    assert_eq!(get("general.name").as_str(), Some("Tiny Chat"));
    let shown = qresidual(&["inspect", s(&out)]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("tokenizer.chat_template"), "{text}");
    assert!(text.contains("tokenizer.ggml.eot_token_id"), "{text}");

    // generation_config alone: the last id of the list (Llama 3.1's eot).
    let gc = dir.path().join("generation_config.json");
    std::fs::write(&gc, r#"{"eos_token_id": [2, 20]}"#).unwrap();
    let out2 = dir.path().join("gen.gguf");
    ok(&[
        "apply",
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "--residual",
        s(&res),
        "-o",
        s(&out2),
        "--generation-config",
        s(&gc),
        "-q",
    ]);
    let g2 = GgufFile::open(&out2).unwrap();
    assert_eq!(
        g2.get("tokenizer.ggml.eos_token_id").unwrap().as_u64(),
        Some(20)
    );
    assert!(g2.get("tokenizer.chat_template").is_none());

    // A token the base does not know is refused before anything is written.
    std::fs::write(&tc, r#"{"eos_token": "<|eot_id|>"}"#).unwrap();
    let out3 = dir.path().join("bad.gguf");
    fails(
        &[
            "apply",
            "--base",
            s(&fixture("base-q4_k_m.gguf")),
            "--residual",
            s(&res),
            "-o",
            s(&out3),
            "--tokenizer-config",
            s(&tc),
        ],
        1,
        &["eos_token '<|eot_id|>' is not in the vocabulary"],
        &out3,
    );
}

#[test]
fn hf_instruct_against_gguf_base_gives_gguf_names_in_gguf_row_order() {
    use qresidual::model::naming::{row_permutation, RowPermutation};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("mixed.safetensors");
    ok(&[
        "extract",
        "--instruct",
        s(&fixture("hf-instruct")),
        "--base",
        s(&fixture("base-q4_k_m.gguf")),
        "-o",
        s(&out),
        "--dtype",
        "f32",
        "-q",
    ]);
    let res = SafetensorsModel::open(&out).unwrap();
    let inst = SafetensorsModel::open(&fixture("hf-instruct")).unwrap();
    let gb = GgufFile::open(&fixture("base-q4_k_m.gguf")).unwrap();
    let exp = expected();
    let mut permuted = 0;
    for (hf, e) in exp["tensors"].as_object().unwrap() {
        let gname = e["gguf"].as_str().unwrap();
        let d = st_values(&res, gname);
        let (i, b) = (st_values(&inst, hf), gguf_values(&gb, gname));
        let shape = &inst.get(hf).unwrap().shape;
        let (rows, cols) = match shape.as_slice() {
            [n] => (1, *n),
            [r, c] => (*r, *c),
            other => panic!("{hf}: unexpected shape {other:?}"),
        };
        let perm = row_permutation("llama", gname, 4, 2);
        if perm != RowPermutation::Identity {
            permuted += 1;
        }
        for g in 0..rows {
            let src = perm.source_row(rows, g);
            for c in 0..cols {
                let want = i[src * cols + c] - b[g * cols + c];
                assert_eq!(
                    d[g * cols + c].to_bits(),
                    want.to_bits(),
                    "{gname}[{g}, {c}]"
                );
            }
        }
    }
    assert_eq!(permuted, 4, "q and k of both layers");
}
