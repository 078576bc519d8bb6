//! GPTQ and AWQ folders in their own layouts (fixtures/tiny_gptq, written
//! by fixtures/make_tiny_gptq.py): reading through `Model`, dequantization
//! against the stored output of the script's torch references (AutoGPTQ's
//! QuantLinear `dequantize_weight`, AutoAWQ's `dequantize_gemm`),
//! `apply --type keep` on the base's grid, `--type f16`, and bad inputs.
//! The live comparisons run in tests/interop/test_gptq.py.

use std::path::PathBuf;

use qresidual::format::st::SafetensorsModel;
use qresidual::model::{Format, Model};
use safetensors::Dtype;

mod common;
use common::{assert_fails, ok, run, s, write_st, Dir};

/// Stored tensors as `common::edited_folder` edits them.
type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

const K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";
const M: &str = "model.layers.0.self_attn.k_proj";
const VARIANTS: [(&str, &str); 4] = [
    ("gptq_w4g64_asym", "gptq-int4"),
    ("gptq_w4g64_act", "gptq-int4"),
    ("gptq_w8_v2", "gptq-int8"),
    ("awq_w4g64", "awq-int4"),
];

fn base(v: &str) -> PathBuf {
    common::fixture_in("tiny_gptq", v)
}

#[test]
fn dequantization_equals_the_torch_references() {
    for (v, label) in VARIANTS {
        assert_eq!(Format::detect(&base(v)).unwrap(), Format::Gptq, "{v}");
        let model = Model::open(&base(v)).unwrap();
        let weights = model.weights().unwrap();
        assert_eq!(
            weights.iter().filter(|w| w.type_name == label).count(),
            14,
            "{v}"
        );
        assert!(weights.iter().all(|w| !w.name.contains("qweight")), "{v}");
        let want = std::fs::read(base(v).join(format!("reference/{K_PROJ}.f32"))).unwrap();
        let got: Vec<u8> = common::decoded(&model, K_PROJ)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(got, want, "{v}");
    }
}

fn residual(d: &Dir) -> (PathBuf, Vec<f32>) {
    let res = d.p("r.safetensors");
    let k: Vec<f32> = (0..128 * 256)
        .map(|i| 0.01 * ((i % 13) as f32 - 6.0))
        .collect();
    write_st(
        &res,
        &[(K_PROJ, Dtype::F16, vec![128, 256], common::f16_bytes(&k))],
    );
    let k = k.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
    (res, k)
}

fn sq_err(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum()
}

#[test]
fn apply_keep_keeps_scales_zeros_and_g_idx_and_rerounds_the_codes() {
    for (v, _) in VARIANTS {
        let d = Dir::new();
        let (res, k) = residual(&d);
        let out = d.p("out");
        ok(&[
            "apply",
            "-q",
            "--base",
            s(&base(v)),
            "--residual",
            s(&res),
            "-o",
            s(&out),
        ]);
        let (b, o) = (
            SafetensorsModel::open(&base(v)).unwrap(),
            SafetensorsModel::open(&out).unwrap(),
        );
        for t in b.tensors() {
            let same = b.data(t) == o.data(o.get(&t.name).unwrap());
            let changed = t.name == format!("{M}.qweight");
            assert_eq!(same, !changed, "{v} {}", t.name);
            assert_eq!(o.get(&t.name).unwrap().shape, t.shape, "{v} {}", t.name);
        }
        let before = common::decoded(&Model::open(&base(v)).unwrap(), K_PROJ);
        let after = common::decoded(&Model::open(&out).unwrap(), K_PROJ);
        let sum: Vec<f32> = before.iter().zip(&k).map(|(a, b)| a + b).collect();
        // Nearer the sum than the base: the residual partly survives.
        assert!(sq_err(&after, &sum) < 0.5 * sq_err(&before, &sum), "{v}");
        // A zero residual gives back the base's bytes.
        let zero = d.p("z.safetensors");
        write_st(
            &zero,
            &[(K_PROJ, Dtype::F16, vec![128, 256], vec![0; 128 * 256 * 2])],
        );
        let out0 = d.p("out0");
        ok(&[
            "apply",
            "-q",
            "--base",
            s(&base(v)),
            "--residual",
            s(&zero),
            "-o",
            s(&out0),
        ]);
        let o0 = SafetensorsModel::open(&out0).unwrap();
        let q = format!("{M}.qweight");
        assert_eq!(
            o0.data(o0.get(&q).unwrap()),
            b.data(b.get(&q).unwrap()),
            "{v}"
        );
    }
}

#[test]
fn apply_f16_writes_a_plain_checkpoint() {
    let d = Dir::new();
    let (res, k) = residual(&d);
    let v = "gptq_w4g64_act";
    let out = d.p("out");
    ok(&[
        "apply",
        "-q",
        "--base",
        s(&base(v)),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--type",
        "f16",
    ]);
    assert_eq!(Format::detect(&out).unwrap(), Format::Safetensors);
    let o = SafetensorsModel::open(&out).unwrap();
    assert!(o.tensors().iter().all(|t| !t.name.ends_with("qweight")));
    let got = common::decoded(&Model::open(&out).unwrap(), K_PROJ);
    let before = common::decoded(&Model::open(&base(v)).unwrap(), K_PROJ);
    let want: Vec<f32> = before
        .iter()
        .zip(&k)
        .map(|(a, b)| half::f16::from_f32(a + b).to_f32())
        .collect();
    assert_eq!(got, want);
}

#[test]
fn bad_inputs_name_file_and_tensor_and_write_nothing() {
    let d = Dir::new();
    let v = "gptq_w4g64_asym";
    let cfg = std::fs::read_to_string(base(v).join("config.json")).unwrap();
    let awq_cfg = std::fs::read_to_string(base("awq_w4g64").join("config.json")).unwrap();
    let edit = |name: &str, cfg: &str, f: &dyn Fn(&mut Tensors)| {
        common::edited_folder(&base(v), &d, name, cfg, |t| f(t))
    };
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            edit("noscale", &cfg, &|t| {
                t.retain(|x| x.0 != format!("{M}.scales"))
            }),
            vec!["noscale/model.safetensors", K_PROJ, "scales' is missing"],
        ),
        (
            edit("nozeros", &cfg, &|t| {
                t.retain(|x| x.0 != format!("{M}.qzeros"))
            }),
            vec!["nozeros/model.safetensors", K_PROJ, "qzeros' is missing"],
        ),
        (
            edit("gidx", &cfg, &|t| {
                let g = t.iter_mut().find(|x| x.0 == format!("{M}.g_idx")).unwrap();
                g.3[4 * 7..4 * 8].copy_from_slice(&9i32.to_le_bytes());
            }),
            vec![
                "gidx/model.safetensors",
                K_PROJ,
                "g_idx[7] = 9 is out of range",
            ],
        ),
        (
            edit("bits", &cfg.replace("\"bits\": 4", "\"bits\": 3"), &|_| {}),
            vec!["bits/model.safetensors", "bits 3 is not read"],
        ),
        (
            edit(
                "packing",
                &cfg.replace("\"bits\": 4", "\"bits\": 8"),
                &|_| {},
            ),
            vec![
                "packing/model.safetensors",
                "scales",
                "one scale per group of 64",
            ],
        ),
        (
            edit("zeros", &cfg, &|t| {
                let z = t.iter_mut().find(|x| x.0 == format!("{M}.qzeros")).unwrap();
                z.2 = vec![4, 8];
                z.3.truncate(4 * 32);
            }),
            vec!["zeros/model.safetensors", "qzeros", "must be I32 [4, 16]"],
        ),
        (
            common::edited_folder(
                &base("awq_w4g64"),
                &d,
                "gemv",
                &awq_cfg.replace("\"gemm\"", "\"gemv\""),
                |_| {},
            ),
            vec!["gemv/model.safetensors", "down_proj.weight", "only GEMM"],
        ),
    ];
    for (folder, needles) in cases {
        let out = d.p("out");
        let o = run(&[
            "dequantize",
            "-q",
            s(&folder),
            "-o",
            s(&out),
            "--type",
            "f16",
        ]);
        assert_fails(&o, 1, &needles, &out);
    }
}

/// `--strategy search` on the base's own grid: the output is `keep`'s, byte
/// for byte (the nearest code per weight is already the nearest block), and
/// the report names the reason instead of counting wins.
#[test]
fn search_on_the_kept_grid_is_keep_and_says_why() {
    // GPTQ and AWQ, and compressed-tensors pack-quantized (int8 there is not
    // LLM.int8).
    let packed = ["w8ch", "w4g64_asym"].map(|v| common::fixture_in("tiny_packed", v));
    let folders = VARIANTS.iter().map(|(v, _)| base(v)).chain(packed);
    for folder in folders {
        let v = folder.display().to_string();
        let d = Dir::new();
        let (res, _) = residual(&d);
        let (keep, search, report) = (d.p("keep"), d.p("search"), d.p("r.json"));
        let apply = |out: &PathBuf, extra: &[&str]| {
            let mut args = vec!["apply", "-q", "--base", s(&folder)];
            args.extend_from_slice(&["--residual", s(&res), "-o", s(out)]);
            args.extend_from_slice(extra);
            ok(&args);
        };
        apply(&keep, &[]);
        apply(&search, &["--strategy", "search", "--report", s(&report)]);
        let read = |p: &PathBuf| std::fs::read(p.join("model.safetensors")).unwrap();
        assert!(read(&keep) == read(&search), "{v}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let fallback = r["summary"]["search"]["fresh_fallback"].as_array().unwrap();
        let k = fallback.iter().find(|f| f["name"] == K_PROJ).unwrap();
        assert!(
            k["reason"].as_str().unwrap().contains("already nearest"),
            "{v}: {k}"
        );
    }
}
