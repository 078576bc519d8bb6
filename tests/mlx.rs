//! mlx-lm folders in MLX's affine mode (fixtures/tiny_mlx, written by
//! mlx-lm, fixtures/make_tiny_mlx.py): reading through `Model`,
//! dequantization against `mx.dequantize`'s stored output, `apply`, and bad
//! inputs. The comparisons with MLX run live in tests/interop/test_mlx.py.

use std::path::PathBuf;

use qresidual::format::st::SafetensorsModel;
use qresidual::model::{Format, Model};
use qresidual::quant::mlx::{self, Precision};
use safetensors::Dtype;

mod common;
use common::{assert_fails, ok, run, s, write_st, Dir};

const K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";

fn base() -> PathBuf {
    common::fixture_in("tiny_mlx", "affine")
}

#[test]
fn opens_with_per_module_bits() {
    assert_eq!(Format::detect(&base()).unwrap(), Format::Mlx);
    let model = Model::open(&base()).unwrap();
    let weights = model.weights().unwrap();
    let label = |n: &str| {
        weights
            .iter()
            .find(|w| w.name == n)
            .map(|w| (w.type_name.clone(), w.shape.clone()))
            .unwrap()
    };
    assert_eq!(label(K_PROJ), ("mlx2".into(), vec![128, 256]));
    assert_eq!(label("model.layers.0.mlp.down_proj.weight").0, "mlx8");
    assert_eq!(label("model.layers.1.mlp.gate_proj.weight").0, "mlx6");
    assert_eq!(label("model.layers.1.mlp.up_proj.weight").0, "mlx3");
    assert_eq!(
        label("model.embed_tokens.weight"),
        ("mlx4".into(), vec![256, 256])
    );
    assert!(weights
        .iter()
        .all(|w| !w.name.ends_with(".scales") && !w.name.ends_with(".biases")));
}

#[test]
fn dequantization_equals_mx_dequantize() {
    let model = Model::open(&base()).unwrap();
    let want = std::fs::read(base().join(format!("reference/{K_PROJ}.f32"))).unwrap();
    let got: Vec<u8> = common::decoded(&model, K_PROJ)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(got, want);
    let d = Dir::new();
    let out = d.p("f32");
    ok(&[
        "dequantize",
        "-q",
        s(&base()),
        "-o",
        s(&out),
        "--type",
        "f32",
    ]);
    let m = SafetensorsModel::open(&out).unwrap();
    assert_eq!(m.data(m.get(K_PROJ).unwrap()), &want[..]);
    assert_eq!(Format::detect(&out).unwrap(), Format::Safetensors);
}

#[test]
fn apply_keep_rewrites_only_what_changed() {
    let d = Dir::new();
    let res = d.p("r.safetensors");
    let k: Vec<f32> = (0..128 * 256)
        .map(|i| 0.003 * ((i % 17) as f32 - 8.0))
        .collect();
    write_st(
        &res,
        &[(K_PROJ, Dtype::F16, vec![128, 256], common::f16_bytes(&k))],
    );
    let out = d.p("out");
    ok(&[
        "apply",
        "-q",
        "--base",
        s(&base()),
        "--residual",
        s(&res),
        "-o",
        s(&out),
    ]);
    let (b, o) = (
        SafetensorsModel::open(&base()).unwrap(),
        SafetensorsModel::open(&out).unwrap(),
    );
    for t in b.tensors() {
        let same = b.data(t) == o.data(o.get(&t.name).unwrap());
        assert_eq!(
            same,
            !t.name.starts_with("model.layers.0.self_attn.k_proj."),
            "{}",
            t.name
        );
    }
    // The codec's requantization of the sum rounded to bf16, row by row
    // (tests/interop/test_mlx.py checks the codec against mx.quantize).
    let (bm, om) = (Model::open(&base()).unwrap(), Model::open(&out).unwrap());
    let exact: Vec<f32> = common::decoded(&bm, K_PROJ)
        .iter()
        .zip(&k)
        .map(|(x, y)| half::bf16::from_f32(x + half::f16::from_f32(*y).to_f32()).to_f32())
        .collect();
    let got = common::decoded(&om, K_PROJ);
    for (e, g) in exact.chunks(256).zip(got.chunks(256)) {
        let (p, sc, bi) = mlx::quantize_row(e, 2, 32, Precision::Bf16);
        let mut want = vec![0f32; 256];
        mlx::dequantize_row(&p, &sc, &bi, 2, 32, Precision::Bf16, &mut want);
        assert_eq!(g, &want[..]);
    }
    assert!(out.join("model.safetensors.index.json").is_file());
}

/// The fixture with its tensors edited, and its config.json as `config`.
fn edited(d: &Dir, name: &str, config: &str, edit: impl Fn(&mut common::StTensors)) -> PathBuf {
    common::edited_folder(&base(), d, name, config, edit)
}

#[test]
fn bad_inputs_name_file_and_tensor_and_write_nothing() {
    let d = Dir::new();
    let cfg = std::fs::read_to_string(base().join("config.json")).unwrap();
    let biases = "model.layers.0.self_attn.k_proj.biases";
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            edited(&d, "nobias", &cfg, |t| t.retain(|x| x.0 != biases)),
            vec!["nobias/model.safetensors", K_PROJ, "biases' is missing"],
        ),
        (
            // 4-bit packing where the config says 2 bits.
            edited(
                &d,
                "packing",
                &cfg.replacen("\"bits\": 2", "\"bits\": 4", 1),
                |_| {},
            ),
            vec!["packing/model.safetensors", "must be U32 [128, 32]"],
        ),
        (
            edited(&d, "shape", &cfg, |t| {
                let x = t.iter_mut().find(|x| x.0 == biases).unwrap();
                x.2 = vec![64, 16];
            }),
            vec!["shape/model.safetensors", biases, "like its scales"],
        ),
        (
            edited(
                &d,
                "bits5",
                &cfg.replacen("\"bits\": 2", "\"bits\": 5", 1),
                |_| {},
            ),
            vec!["bits5/model.safetensors", "bits 5"],
        ),
        (
            edited(&d, "mode", &cfg.replace("\"affine\"", "\"mxfp4\""), |_| {}),
            vec!["mode/config.json", "MLX quantization mode mxfp4"],
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
