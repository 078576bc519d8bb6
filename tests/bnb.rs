//! bitsandbytes model folders (fixtures/tiny_bnb, saved by transformers +
//! bitsandbytes 0.50.2 on CPU by fixtures/make_tiny_bnb.py): reading,
//! `dequantize`, `apply`, `inspect`, and their errors. No Python: expected
//! bytes come from the codecs of `qresidual_quant::bnb`, whose bit-exactness
//! with bitsandbytes tests/golden_bnb.rs checks (and tests/interop/test_bnb.py
//! checks these commands against bitsandbytes itself).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use qresidual::engine::progress::Progress;
use qresidual::format::st::{SafetensorsModel, SafetensorsWriter};
use qresidual::model::bnb::{python_float_repr, quant_state_json, BnbModel, Storage};
use qresidual::quant::bnb::{
    dequantize_4bit, dequantize_int8_rows, quantize_4bit, quantize_int8_rows, FourBit, NestedAbsmax,
};
use safetensors::Dtype;
use serde_json::Value;

mod common;
use common::{run as qresidual, s};

fn fixture(variant: &str) -> PathBuf {
    common::fixture_in("tiny_bnb", variant)
}

fn ok(args: &[&str]) -> String {
    let out = qresidual(args);
    assert!(
        out.status.success(),
        "qresidual {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails with `code` and `needle` in stderr, leaving neither the output nor
/// a temporary folder behind.
fn fails(args: &[&str], code: i32, needle: &str, output: &Path) {
    let out = qresidual(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(
        err.contains(needle),
        "{args:?}: expected '{needle}' in: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let dir = output.parent().unwrap();
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name();
        assert!(
            !n.to_string_lossy().contains("qresidual-tmp"),
            "temporary folder {n:?} left behind"
        );
    }
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn f16s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

fn tensor<'a>(m: &'a SafetensorsModel, name: &str) -> &'a [u8] {
    m.data(m.get(name).unwrap_or_else(|| panic!("{name} missing")))
}

fn reference(name: &str) -> Vec<f32> {
    let p = fixture("reference").join(format!("{name}.f16"));
    f16s(&std::fs::read(p).unwrap())
}

/// The quant state JSON of a stored 4-bit weight.
fn quant_state(m: &SafetensorsModel, w: &str, kind: FourBit) -> Value {
    let name = format!("{w}.quant_state.bitsandbytes__{}", kind.name());
    serde_json::from_slice(tensor(m, &name)).unwrap()
}

/// f32 dequantization of a 4-bit weight straight from its stored parts.
fn dequant_4bit_parts(m: &SafetensorsModel, w: &str, kind: FourBit) -> Vec<f32> {
    common::bnb::stored(m, w, kind).decode(kind)
}

fn dequant_int8_parts(m: &SafetensorsModel, w: &str) -> Vec<f32> {
    let t = m.get(w).unwrap();
    let cols = t.shape[1];
    let cb: Vec<i8> = m.data(t).iter().map(|&b| b as i8).collect();
    let scb = f32s(tensor(
        m,
        &format!("{}.SCB", w.strip_suffix(".weight").unwrap()),
    ));
    let mut out = vec![0f32; cb.len()];
    dequantize_int8_rows(&cb, &scb, cols, &mut out).unwrap();
    out
}

fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| f16::from_f32(v).to_f32()).collect()
}

const K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";
const V_PROJ: &str = "model.layers.0.self_attn.v_proj.weight";

#[test]
fn opens_every_variant_as_logical_weights() {
    for (variant, label) in [("nf4", "nf4"), ("fp4", "fp4"), ("int8", "int8")] {
        let m = BnbModel::open(&fixture(variant)).unwrap();
        assert_eq!(m.weights().len(), 20, "{variant}");
        let quantized: Vec<_> = m
            .weights()
            .iter()
            .filter(|w| w.storage.is_quantized())
            .collect();
        assert_eq!(quantized.len(), 14, "{variant}");
        for w in &quantized {
            assert_eq!(w.storage.label(), label);
            assert!(w.name.ends_with("_proj.weight"), "{}", w.name);
        }
        let k = m.weight(K_PROJ).unwrap();
        assert_eq!(k.shape, vec![128, 256]);
        let embed = m.weight("model.embed_tokens.weight").unwrap();
        assert_eq!(embed.storage, Storage::Plain(Dtype::F16));
    }
    let m = BnbModel::open(&fixture("nf4")).unwrap();
    match &m.weight(K_PROJ).unwrap().storage {
        Storage::FourBit {
            kind,
            blocksize,
            dtype,
            nested_offset,
        } => {
            assert_eq!(*kind, FourBit::Nf4);
            assert_eq!(*blocksize, 64);
            assert_eq!(*dtype, Dtype::F16);
            assert_eq!(*nested_offset, Some(0.051552534103393555f64 as f32));
        }
        s => panic!("{s:?}"),
    }
}

/// The quant state blobs transformers wrote, rebuilt byte for byte.
#[test]
fn quant_state_json_matches_transformers_bytes() {
    for variant in ["nf4", "fp4"] {
        let m = BnbModel::open(&fixture(variant)).unwrap();
        let st = m.safetensors();
        let mut n = 0;
        for w in m.weights() {
            if let Storage::FourBit {
                kind,
                blocksize,
                dtype,
                nested_offset,
            } = &w.storage
            {
                let got = quant_state_json(*kind, *blocksize, *dtype, &w.shape, *nested_offset);
                let name = format!("{}.quant_state.bitsandbytes__{}", w.name, kind.name());
                assert_eq!(got.as_bytes(), tensor(st, &name), "{name}");
                n += 1;
            }
        }
        assert_eq!(n, 14);
    }
    assert_eq!(python_float_repr(1e-5), "1e-05");
}

/// Rows decoded in any range equal the whole-tensor decode (4-bit blocks do
/// not follow rows; double-quant groups of 256 blocks neither).
#[test]
fn row_ranges_decode_like_the_whole_tensor() {
    for variant in ["nf4", "fp4", "int8"] {
        let m = BnbModel::open(&fixture(variant)).unwrap();
        for (i, w) in m.weights().iter().enumerate() {
            if !w.storage.is_quantized() {
                continue;
            }
            let rows = m.rows(i).unwrap();
            let (rl, nr) = (rows.row_len(), rows.n_rows());
            assert_eq!((nr, rl), (w.shape[0], w.shape[1]));
            let mut all = vec![0f32; rl * nr];
            rows.decode(0, &mut all).unwrap();
            let whole = match variant {
                "int8" => dequant_int8_parts(m.safetensors(), &w.name),
                v => dequant_4bit_parts(m.safetensors(), &w.name, FourBit::from_name(v).unwrap()),
            };
            assert!(
                all.iter()
                    .zip(&whole)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{variant} {}",
                w.name
            );
            // Row 63 → 64 crosses a group of 256 nested absmax blocks.
            for (start, n) in [(1, 1), (3, 5), (nr - 7, 7), (63, 2), (60, nr - 60)] {
                let mut part = vec![0f32; rl * n];
                rows.decode(start, &mut part).unwrap();
                assert_eq!(
                    part,
                    all[start * rl..(start + n) * rl],
                    "{} {start}",
                    w.name
                );
            }
        }
    }
}

/// `dequantize --type f16`: plain tensors come out exactly as stored (they
/// are the original float16 weights); quantized ones are f16 of the f32
/// decode, which equals the decode of the reference weights requantized by
/// the codec (the fixture holds exactly those codes) and stays within the
/// codec's error of the reference.
#[test]
fn dequantize_fixtures() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["nf4", "fp4", "int8"] {
        let out = dir.path().join(format!("{variant}-f16"));
        ok(&[
            "dequantize",
            s(&fixture(variant)),
            "-o",
            s(&out),
            "--type",
            "f16",
            "-q",
        ]);
        let got = SafetensorsModel::open(&out).unwrap();
        let src = SafetensorsModel::open(&fixture(variant)).unwrap();
        let m = BnbModel::open(&fixture(variant)).unwrap();
        assert_eq!(got.tensors().len(), 20);
        for t in got.tensors() {
            assert_eq!(t.dtype, Dtype::F16, "{}", t.name);
            assert_eq!(t.shape, m.weight(&t.name).unwrap().shape);
        }
        for w in m.weights().iter().filter(|w| !w.storage.is_quantized()) {
            assert_eq!(tensor(&got, &w.name), tensor(&src, &w.name), "{}", w.name);
        }
        for name in [K_PROJ, V_PROJ] {
            let r = reference(name);
            let cols = 256;
            let decoded = match variant {
                "int8" => {
                    let (cb, scb) = quantize_int8_rows(&r, cols).unwrap();
                    let cb_u8: Vec<u8> = cb.iter().map(|&c| c as u8).collect();
                    assert_eq!(cb_u8, tensor(&src, name), "{name}");
                    let mut d = vec![0f32; r.len()];
                    dequantize_int8_rows(&cb, &scb, cols, &mut d).unwrap();
                    d
                }
                v => {
                    let kind = FourBit::from_name(v).unwrap();
                    let (packed, absmax) = quantize_4bit(kind, &r, 64).unwrap();
                    assert_eq!(packed, tensor(&src, name), "{name}");
                    let absmax = if v == "nf4" {
                        NestedAbsmax::quantize(&absmax)
                            .unwrap()
                            .dequantize()
                            .unwrap()
                    } else {
                        absmax
                    };
                    let mut d = vec![0f32; r.len()];
                    dequantize_4bit(kind, &packed, &absmax, 64, r.len(), &mut d).unwrap();
                    d
                }
            };
            let out_vals = f16s(tensor(&got, name));
            assert_eq!(out_vals, round_f16(&decoded), "{variant} {name}");
            // Within half a code step of the block/row scale (+ f16 rounding).
            let max_ref = r.iter().fold(0f32, |a, v| a.max(v.abs()));
            // Plus half an f16 step at the largest magnitude.
            let bound =
                if variant == "int8" { 0.5 / 127.0 } else { 0.2 } * max_ref + max_ref / 2048.0;
            let worst = out_vals
                .iter()
                .zip(&r)
                .fold(0f32, |a, (o, x)| a.max((o - x).abs()));
            assert!(
                worst > 0.0 && worst <= bound,
                "{variant} {name}: {worst} > {bound}"
            );
        }
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert!(cfg.get("quantization_config").is_none());
        assert_eq!(cfg["dtype"], "float16");
        assert_eq!(
            std::fs::read(out.join("generation_config.json")).unwrap(),
            std::fs::read(fixture(variant).join("generation_config.json")).unwrap()
        );
    }
}

/// A deterministic float16 residual for every quantized weight and the final
/// norm, in HF names, written with the crate's writer.
fn write_residual(m: &BnbModel, path: &Path, amplitude: f32) -> BTreeMap<String, Vec<f32>> {
    let mut next = common::uniform(0x9e3779b97f4a7c15);
    let mut res = BTreeMap::new();
    for w in m.weights() {
        if w.storage.is_quantized() || w.name == "model.norm.weight" {
            let v: Vec<f32> = (0..w.n_elements())
                .map(|_| f16::from_f32(next() * amplitude).to_f32())
                .collect();
            res.insert(w.name.clone(), v);
        }
    }
    let specs: Vec<(String, Dtype, Vec<usize>)> = res
        .keys()
        .map(|k| (k.clone(), Dtype::F16, m.weight(k).unwrap().shape.clone()))
        .collect();
    let mut wr = SafetensorsWriter::create(path, &specs, BTreeMap::new()).unwrap();
    for v in res.values() {
        let b: Vec<u8> = v
            .iter()
            .flat_map(|x| f16::from_f32(*x).to_le_bytes())
            .collect();
        wr.write(&b).unwrap();
    }
    wr.finish().unwrap();
    res
}

/// `apply --type keep` on each variant: every weight equals the codec's
/// quantization of f16(dequant(base) + Δ), every other tensor is copied or
/// f16(base + Δ), the config is copied, the output opens again.
#[test]
fn apply_keep_requantizes_each_variant() {
    let dir = tempfile::tempdir().unwrap();
    for variant in ["nf4", "fp4", "int8"] {
        let base = BnbModel::open(&fixture(variant)).unwrap();
        let rpath = dir.path().join(format!("{variant}-residual.safetensors"));
        let res = write_residual(&base, &rpath, 0.006);
        let out = dir.path().join(format!("{variant}-out"));
        let report = dir.path().join(format!("{variant}-report.json"));
        ok(&[
            "apply",
            "--base",
            s(&fixture(variant)),
            "--residual",
            s(&rpath),
            "-o",
            s(&out),
            "--report",
            s(&report),
            "-q",
        ]);
        let src = base.safetensors();
        let got = SafetensorsModel::open(&out).unwrap();
        let names = |m: &SafetensorsModel| {
            let mut v: Vec<String> = m.tensors().iter().map(|t| t.name.clone()).collect();
            v.sort();
            v
        };
        assert_eq!(names(&got), names(src), "{variant}");
        for w in base.weights() {
            let residual = res.get(&w.name).filter(|_| w.storage.is_quantized());
            let Some(d) = residual else {
                if res.contains_key(&w.name) {
                    continue; // the norm, checked below
                }
                for &p in &w.parts {
                    let t = &src.tensors()[p];
                    assert_eq!(tensor(&got, &t.name), src.data(t), "{}", t.name);
                }
                continue;
            };
            match variant {
                "int8" => {
                    let b = dequant_int8_parts(src, &w.name);
                    let target: Vec<f32> =
                        round_f16(&b.iter().zip(d).map(|(x, y)| x + y).collect::<Vec<_>>());
                    let (cb, scb) = quantize_int8_rows(&target, w.shape[1]).unwrap();
                    let cb_u8: Vec<u8> = cb.iter().map(|&c| c as u8).collect();
                    assert_eq!(tensor(&got, &w.name), cb_u8, "{}", w.name);
                    let m = w.name.strip_suffix(".weight").unwrap();
                    assert_eq!(f32s(tensor(&got, &format!("{m}.SCB"))), scb);
                    assert_eq!(tensor(&got, &format!("{m}.weight_format")), [0u8]);
                }
                "nf4" | "fp4" => {
                    let kind = FourBit::from_name(variant).unwrap();
                    let b = dequant_4bit_parts(src, &w.name, kind);
                    let target: Vec<f32> =
                        round_f16(&b.iter().zip(d).map(|(x, y)| x + y).collect::<Vec<_>>());
                    let (packed, absmax) = quantize_4bit(kind, &target, 64).unwrap();
                    assert_eq!(tensor(&got, &w.name), packed, "{}", w.name);
                    let qs = quant_state(&got, &w.name, kind);
                    if variant == "nf4" {
                        let nested = NestedAbsmax::quantize(&absmax).unwrap();
                        assert_eq!(tensor(&got, &format!("{}.absmax", w.name)), nested.codes);
                        assert_eq!(
                            f32s(tensor(&got, &format!("{}.nested_absmax", w.name))),
                            nested.absmax2
                        );
                        assert_eq!(qs["nested_offset"].as_f64().unwrap() as f32, nested.offset);
                        assert_eq!(
                            tensor(&got, &format!("{}.nested_quant_map", w.name)),
                            tensor(src, &format!("{}.nested_quant_map", w.name))
                        );
                    } else {
                        assert_eq!(f32s(tensor(&got, &format!("{}.absmax", w.name))), absmax);
                    }
                    assert_eq!(
                        tensor(&got, &format!("{}.quant_map", w.name)),
                        tensor(src, &format!("{}.quant_map", w.name))
                    );
                    assert_eq!(qs["shape"], serde_json::json!(w.shape));
                    assert_eq!(qs["dtype"], "float16");
                }
                _ => unreachable!(),
            }
        }
        let norm = f16s(tensor(src, "model.norm.weight"));
        let want = round_f16(
            &norm
                .iter()
                .zip(&res["model.norm.weight"])
                .map(|(x, y)| x + y)
                .collect::<Vec<_>>(),
        );
        assert_eq!(f16s(tensor(&got, "model.norm.weight")), want);
        assert_eq!(
            std::fs::read(out.join("config.json")).unwrap(),
            std::fs::read(fixture(variant).join("config.json")).unwrap()
        );
        assert!(out.join("generation_config.json").is_file());
        BnbModel::open(&out).unwrap();

        let r: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        assert_eq!(r["summary"]["with_residual"], 15);
        let by = &r["summary"]["by_output_type"][variant];
        assert_eq!(by["tensors"], 14);
        let retention = by["error"]["retention"].as_f64().unwrap();
        assert!(retention > 0.0 && retention < 1.5, "{variant}: {retention}");
    }
}

/// Changing the storage: nf4 → int8 and nf4 → f16 / bf16, fp4 → nf4.
#[test]
fn apply_changes_type_and_config() {
    let dir = tempfile::tempdir().unwrap();
    let base = BnbModel::open(&fixture("nf4")).unwrap();
    let rpath = dir.path().join("r.safetensors");
    let res = write_residual(&base, &rpath, 0.006);

    let out = dir.path().join("int8");
    ok(&[
        "apply",
        "--base",
        s(&fixture("nf4")),
        "--residual",
        s(&rpath),
        "-o",
        s(&out),
        "--type",
        "int8",
        "-q",
    ]);
    let m = BnbModel::open(&out).unwrap();
    assert_eq!(
        m.weights()
            .iter()
            .filter(|w| w.storage == Storage::Int8)
            .count(),
        14
    );
    let cfg = &m.config()["quantization_config"];
    assert_eq!(cfg["load_in_8bit"], true);
    assert_eq!(cfg["load_in_4bit"], false);
    let b = dequant_4bit_parts(base.safetensors(), K_PROJ, FourBit::Nf4);
    let target = round_f16(
        &b.iter()
            .zip(&res[K_PROJ])
            .map(|(x, y)| x + y)
            .collect::<Vec<_>>(),
    );
    let (cb, _) = quantize_int8_rows(&target, 256).unwrap();
    let cb_u8: Vec<u8> = cb.iter().map(|&c| c as u8).collect();
    assert_eq!(tensor(m.safetensors(), K_PROJ), cb_u8);

    for (ty, dtype, name) in [
        ("f16", Dtype::F16, "float16"),
        ("bf16", Dtype::BF16, "bfloat16"),
    ] {
        let out = dir.path().join(ty);
        ok(&[
            "apply",
            "--base",
            s(&fixture("nf4")),
            "--residual",
            s(&rpath),
            "-o",
            s(&out),
            "--type",
            ty,
            "-q",
        ]);
        let st = SafetensorsModel::open(&out).unwrap();
        assert_eq!(st.tensors().len(), 20);
        assert!(st.tensors().iter().all(|t| t.dtype == dtype));
        let cfg: Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        assert!(cfg.get("quantization_config").is_none());
        assert_eq!(cfg["dtype"], name);
        assert!(!qresidual::model::bnb::is_bnb_dir(&out));
        if dtype == Dtype::F16 {
            assert_eq!(f16s(tensor(&st, K_PROJ)), target);
        }
    }

    let fp4 = BnbModel::open(&fixture("fp4")).unwrap();
    let rpath4 = dir.path().join("r4.safetensors");
    write_residual(&fp4, &rpath4, 0.0);
    let out = dir.path().join("fp4-to-nf4");
    ok(&[
        "apply",
        "--base",
        s(&fixture("fp4")),
        "--residual",
        s(&rpath4),
        "-o",
        s(&out),
        "--type",
        "nf4",
        "-q",
    ]);
    let m = BnbModel::open(&out).unwrap();
    assert_eq!(
        m.config()["quantization_config"]["bnb_4bit_quant_type"],
        "nf4"
    );
    let b = dequant_4bit_parts(fp4.safetensors(), V_PROJ, FourBit::Fp4);
    let (packed, _) = quantize_4bit(FourBit::Nf4, &round_f16(&b), 64).unwrap();
    assert_eq!(tensor(m.safetensors(), V_PROJ), packed);
}

#[test]
fn inspect_shows_quantization() {
    let text = ok(&["inspect", s(&fixture("nf4"))]);
    assert!(text.contains("bitsandbytes"), "{text}");
    let line = text.lines().find(|l| l.starts_with(K_PROJ)).unwrap();
    for word in ["nf4", "[128, 256]", "64", "float16", "yes"] {
        assert!(line.contains(word), "{line}");
    }
    let j: Value = serde_json::from_str(&ok(&["inspect", s(&fixture("int8")), "--json"])).unwrap();
    assert_eq!(j["format"], "bitsandbytes");
    let w = j["weights"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == K_PROJ)
        .unwrap();
    assert_eq!(w["storage"], "int8");
    assert_eq!(j["safetensors"]["tensors"].as_array().unwrap().len(), 48);
}

fn write_one(path: &Path, name: &str, shape: Vec<usize>, values: &[f32]) {
    let mut w =
        SafetensorsWriter::create(path, &[(name.into(), Dtype::F16, shape)], BTreeMap::new())
            .unwrap();
    let b: Vec<u8> = values
        .iter()
        .flat_map(|x| f16::from_f32(*x).to_le_bytes())
        .collect();
    w.write(&b).unwrap();
    w.finish().unwrap();
}

#[test]
fn errors_name_the_problem_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let base = fixture("nf4");
    let out = dir.path().join("out");

    let wrong_shape = dir.path().join("shape.safetensors");
    write_one(
        &wrong_shape,
        K_PROJ,
        vec![256, 128],
        &vec![0.001; 256 * 128],
    );
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&wrong_shape),
            "-o",
            s(&out),
        ],
        1,
        K_PROJ,
        &out,
    );

    let unknown = dir.path().join("unknown.safetensors");
    write_one(
        &unknown,
        "model.layers.9.mlp.up_proj.weight",
        vec![4, 4],
        &[0.0; 16],
    );
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&unknown),
            "-o",
            s(&out),
        ],
        1,
        "model.layers.9.mlp.up_proj.weight",
        &out,
    );

    let mut v = vec![0.001f32; 128 * 256];
    v[300] = f32::NAN;
    let nan = dir.path().join("nan.safetensors");
    write_one(&nan, K_PROJ, vec![128, 256], &v);
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&nan),
            "-o",
            s(&out),
        ],
        1,
        "NaN",
        &out,
    );
    let err = String::from_utf8_lossy(
        &qresidual(&[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&nan),
            "-o",
            s(&out),
        ])
        .stderr,
    )
    .into_owned();
    assert!(err.contains(K_PROJ) && err.contains("row 1"), "{err}");

    // A residual that overflows float16 once added.
    let big = dir.path().join("big.safetensors");
    write_one(&big, K_PROJ, vec![128, 256], &vec![65504.0; 128 * 256]);
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&big),
            "-o",
            s(&out),
            "--scale",
            "2",
        ],
        1,
        "overflows float16",
        &out,
    );
    assert!(!out.exists());

    let good = dir.path().join("good.safetensors");
    write_one(&good, K_PROJ, vec![128, 256], &vec![0.001; 128 * 256]);
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&good),
            "-o",
            s(&base),
        ],
        2,
        "overwrite the input",
        &base,
    );
    let inside = base.join("sub");
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&good),
            "-o",
            s(&inside),
            "--type",
            "q4_k",
        ],
        2,
        "--type q4_k",
        &inside,
    );
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("x"), b"keep me").unwrap();
    fails(
        &[
            "apply",
            "--base",
            s(&base),
            "--residual",
            s(&good),
            "-o",
            s(&out),
        ],
        2,
        "not empty",
        &out,
    );
    assert_eq!(std::fs::read(out.join("x")).unwrap(), b"keep me");
    fails(
        &[
            "dequantize",
            s(&base),
            "-o",
            s(&dir.path().join("d")),
            "--type",
            "q8_0",
        ],
        2,
        "f16, bf16 or f32",
        &dir.path().join("d"),
    );

    // An empty folder at the target is filled.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&[
        "apply",
        "--base",
        s(&base),
        "--residual",
        s(&good),
        "-o",
        s(&empty),
        "-q",
    ]);
    BnbModel::open(&empty).unwrap();
}

#[test]
fn broken_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let src = SafetensorsModel::open(&fixture("nf4")).unwrap();
    // Drop one part of a weight: the reader names it.
    let folder = dir.path().join("broken");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(
        fixture("nf4").join("config.json"),
        folder.join("config.json"),
    )
    .unwrap();
    let missing = format!("{K_PROJ}.nested_absmax");
    let keep: Vec<_> = src.tensors().iter().filter(|t| t.name != missing).collect();
    let specs: Vec<_> = keep
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
        .collect();
    let mut w =
        SafetensorsWriter::create(&folder.join("model.safetensors"), &specs, BTreeMap::new())
            .unwrap();
    for t in &keep {
        w.write(src.data(t)).unwrap();
    }
    w.finish().unwrap();
    let e = BnbModel::open(&folder).unwrap_err().to_string();
    assert!(e.contains(&missing), "{e}");
    let out = dir.path().join("o");
    fails(
        &["dequantize", s(&folder), "-o", s(&out)],
        1,
        &missing,
        &out,
    );
}

/// A sharded copy of the NF4 fixture (the parts of one weight split across
/// both shards) gives the same tensors as the single file, in shards of the
/// same names with an index.
#[test]
fn sharded_folders_keep_their_shards() {
    let dir = tempfile::tempdir().unwrap();
    let src = SafetensorsModel::open(&fixture("nf4")).unwrap();
    let folder = dir.path().join("sharded");
    std::fs::create_dir(&folder).unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(fixture("nf4").join(f), folder.join(f)).unwrap();
    }
    let names = [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ];
    // Layer 0 in shard 1, the rest in shard 2, but k_proj's absmax in shard 2.
    let shard_of = |n: &str| {
        usize::from(!(n.starts_with("model.layers.0.") && n != format!("{K_PROJ}.absmax")))
    };
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in names.iter().enumerate() {
        let ts: Vec<_> = src
            .tensors()
            .iter()
            .filter(|t| shard_of(&t.name) == i)
            .collect();
        let specs: Vec<_> = ts
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        let mut w =
            SafetensorsWriter::create(&folder.join(shard), &specs, BTreeMap::new()).unwrap();
        for t in &ts {
            w.write(src.data(t)).unwrap();
            weight_map.insert(t.name.clone(), Value::from(*shard));
        }
        w.finish().unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        folder.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();

    let base = BnbModel::open(&folder).unwrap();
    let rpath = dir.path().join("r.safetensors");
    write_residual(&base, &rpath, 0.006);
    for (input, out) in [(fixture("nf4"), "single"), (folder.clone(), "sharded-out")] {
        ok(&[
            "apply",
            "--base",
            s(&input),
            "--residual",
            s(&rpath),
            "-o",
            s(&dir.path().join(out)),
            "-q",
        ]);
    }
    let single = SafetensorsModel::open(&dir.path().join("single")).unwrap();
    let out = dir.path().join("sharded-out");
    let sharded = SafetensorsModel::open(&out).unwrap();
    assert_eq!(sharded.shard_paths().len(), 2);
    for n in names {
        assert!(out.join(n).is_file(), "{n}");
    }
    assert_eq!(single.tensors().len(), sharded.tensors().len());
    for t in single.tensors() {
        assert_eq!(single.data(t), tensor(&sharded, &t.name), "{}", t.name);
    }
    // The parts of a rewritten weight follow its main tensor.
    let idx: Value =
        serde_json::from_slice(&std::fs::read(out.join("model.safetensors.index.json")).unwrap())
            .unwrap();
    assert_eq!(idx["weight_map"][format!("{K_PROJ}.absmax")], names[0]);
    assert_eq!(idx["weight_map"]["model.norm.weight"], names[1]);
}

/// The bytes do not depend on chunking or threads: chunks of a few rows
/// (4-bit blocks and double-quant groups still whole), claimed by 1 or 3
/// workers within a lead of 1 or 3 chunks, write the same file as one chunk
/// per weight. fp4 → nf4 with double quant, blocksize 32, → int8,
/// → fp4 (bf16, blocksize 64) and → f16, so every weight is re-encoded.
#[test]
fn output_does_not_depend_on_chunking() {
    use qresidual::engine::bnb::write_model;
    use qresidual::model::bnb::{OutStorage, WeightJob, WriteOptions};
    let dir = tempfile::tempdir().unwrap();
    let base = BnbModel::open(&fixture("fp4")).unwrap();
    let targets = [
        OutStorage::FourBit {
            kind: FourBit::Nf4,
            blocksize: 32,
            dtype: Dtype::F16,
            double_quant: true,
        },
        OutStorage::Int8,
        OutStorage::FourBit {
            kind: FourBit::Fp4,
            blocksize: 64,
            dtype: Dtype::BF16,
            double_quant: false,
        },
        OutStorage::Plain(Dtype::F16),
    ];
    for (ti, target) in targets.iter().enumerate() {
        let jobs = || -> Vec<WeightJob<'_>> {
            base.weights()
                .iter()
                .enumerate()
                .map(|(i, w)| WeightJob {
                    weight: i,
                    out: if w.storage.is_quantized() {
                        *target
                    } else {
                        OutStorage::same_as(&w.storage, Dtype::F16)
                    },
                    residual: None,
                    scale: 1.0,
                })
                .collect()
        };
        let cfg = qresidual::model::bnb::output_config(base.config(), Some(target), None);
        let mut outputs = Vec::new();
        for (chunk, window, threads) in [(1usize << 22, 1usize, 1), (300, 1, 3), (1000, 3, 3)] {
            let out = dir.path().join(format!("{ti}-{chunk}-{window}"));
            let opts = WriteOptions {
                chunk_elements: chunk,
                window,
                measure: true,
                torch_threads: 1,
                ..Default::default()
            };
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let outcomes = pool
                .install(|| write_model(&base, &jobs(), &cfg, &out, &opts, &Progress::off()))
                .unwrap();
            assert_eq!(outcomes.iter().filter(|o| !o.copied).count(), 14);
            outputs.push(std::fs::read(out.join("model.safetensors")).unwrap());
        }
        for (i, o) in outputs.iter().enumerate().skip(1) {
            assert!(*o == outputs[0], "{target:?}: output {i} differs");
        }
        // And the one-chunk output is the codec applied to the whole tensor.
        let m = BnbModel::open(&dir.path().join(format!("{ti}-{}-1", 1usize << 22))).unwrap();
        let b = dequant_4bit_parts(base.safetensors(), K_PROJ, FourBit::Fp4);
        if ti == 0 {
            let (packed, absmax) = quantize_4bit(FourBit::Nf4, &round_f16(&b), 32).unwrap();
            let nested = NestedAbsmax::quantize(&absmax).unwrap();
            assert_eq!(tensor(m.safetensors(), K_PROJ), packed);
            assert_eq!(
                tensor(m.safetensors(), &format!("{K_PROJ}.absmax")),
                nested.codes
            );
            assert_eq!(
                m.config()["quantization_config"]["bnb_4bit_use_double_quant"],
                true
            );
        } else if ti == 1 {
            let (cb, _) = quantize_int8_rows(&round_f16(&b), 256).unwrap();
            let cb_u8: Vec<u8> = cb.iter().map(|&c| c as u8).collect();
            assert_eq!(tensor(m.safetensors(), K_PROJ), cb_u8);
        }
    }
}
