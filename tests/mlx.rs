//! mlx-lm folders in MLX's affine mode and its float modes mxfp4, mxfp8 and
//! nvfp4 (fixtures/tiny_mlx/affine and /float, written by mlx-lm,
//! fixtures/make_tiny_mlx.py): reading through `Model`,
//! dequantization against `mx.dequantize`'s stored output, `apply`, and bad
//! inputs. The comparisons with MLX run live in tests/interop/test_mlx.py.

use std::path::PathBuf;

use qresidual::format::st::SafetensorsModel;
use qresidual::model::{Format, Model};
use qresidual::quant::mlx::fp::{self as mlx_fp, FpMode};
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

/// Weights `names` of `folder`, decoded through `Model` and written by
/// `dequantize --type f32`, begin with the bytes of `reference/NAME.f32`
/// (`mx.dequantize`'s output, stored by fixtures/make_tiny_mlx.py).
fn assert_matches_references(folder: &std::path::Path, names: &[&str]) {
    let model = Model::open(folder).unwrap();
    let d = Dir::new();
    let out = d.p("f32");
    ok(&[
        "dequantize",
        "-q",
        s(folder),
        "-o",
        s(&out),
        "--type",
        "f32",
    ]);
    assert_eq!(Format::detect(&out).unwrap(), Format::Safetensors);
    let m = SafetensorsModel::open(&out).unwrap();
    for name in names {
        let want = std::fs::read(folder.join(format!("reference/{name}.f32"))).unwrap();
        let got: Vec<u8> = common::decoded(&model, name)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(&got[..want.len()], &want[..], "{name}");
        assert_eq!(
            &m.data(m.get(name).unwrap())[..want.len()],
            &want[..],
            "{name}"
        );
    }
}

#[test]
fn dequantization_equals_mx_dequantize() {
    // The whole tensor.
    let want = std::fs::metadata(base().join(format!("reference/{K_PROJ}.f32"))).unwrap();
    assert_eq!(want.len(), 128 * 256 * 4);
    assert_matches_references(&base(), &[K_PROJ]);
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

/// `dequantize` of `folder` fails with one line holding `needles`, and
/// writes nothing.
fn assert_dequantize_fails(d: &Dir, folder: &std::path::Path, needles: &[&str]) {
    let out = d.p("out");
    let o = run(&[
        "dequantize",
        "-q",
        s(folder),
        "-o",
        s(&out),
        "--type",
        "f16",
    ]);
    assert_fails(&o, 1, needles, &out);
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
                "bits7",
                &cfg.replacen("\"bits\": 2", "\"bits\": 7", 1),
                |_| {},
            ),
            vec![
                "bits7/model.safetensors",
                "bits 7",
                "1, 2, 3, 4, 5, 6 or 8 bits",
            ],
        ),
        (
            // 2-bit codes declared as 5-bit: too few words.
            edited(
                &d,
                "bits5",
                &cfg.replacen("\"bits\": 2", "\"bits\": 5", 1),
                |_| {},
            ),
            vec![
                "bits5/model.safetensors",
                "5-bit codes",
                "must be U32 [128, 40]",
            ],
        ),
        (
            edited(&d, "mode", &cfg.replace("\"affine\"", "\"fp16\""), |_| {}),
            vec!["mode/config.json", "MLX quantization mode fp16"],
        ),
        (
            // A float mode declared over affine tensors: their biases.
            edited(
                &d,
                "asfloat",
                &cfg.replace("\"affine\"", "\"mxfp4\""),
                |_| {},
            ),
            vec![
                "asfloat/model.safetensors",
                ".biases",
                "mode mxfp4 stores no biases",
            ],
        ),
    ];
    for (folder, needles) in cases {
        assert_dequantize_fails(&d, &folder, &needles);
    }
}

fn float_base() -> PathBuf {
    common::fixture_in("tiny_mlx", "float")
}

const NV_K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";
const MXFP8_DOWN: &str = "model.layers.0.mlp.down_proj.weight";
const MXFP4_Q: &str = "model.layers.0.self_attn.q_proj.weight";

#[test]
fn float_modes_open_with_per_module_modes() {
    assert_eq!(Format::detect(&float_base()).unwrap(), Format::Mlx);
    let model = Model::open(&float_base()).unwrap();
    let weights = model.weights().unwrap();
    let label = |n: &str| {
        let w = weights.iter().find(|w| w.name == n).unwrap();
        (w.type_name.clone(), w.shape.clone())
    };
    assert_eq!(label(NV_K_PROJ), ("nvfp4".into(), vec![128, 256]));
    assert_eq!(label(MXFP8_DOWN), ("mxfp8".into(), vec![256, 384]));
    assert_eq!(label(MXFP4_Q), ("mxfp4".into(), vec![256, 256]));
    assert_eq!(label("model.layers.1.mlp.up_proj.weight").0, "mlx4");
    assert_eq!(label("model.embed_tokens.weight").0, "mxfp4");
}

#[test]
fn float_dequantization_equals_mx_dequantize() {
    // The first 16 rows of each, as mx.dequantize (bfloat16) gives them.
    assert_matches_references(&float_base(), &[NV_K_PROJ, MXFP8_DOWN, MXFP4_Q]);
}

#[test]
fn float_apply_keep_requantizes_as_the_codec() {
    let d = Dir::new();
    let res = d.p("r.safetensors");
    let k: Vec<f32> = (0..128 * 256)
        .map(|i| 0.004 * ((i % 13) as f32 - 6.0))
        .collect();
    let down: Vec<f32> = (0..256 * 384)
        .map(|i| 0.002 * ((i % 7) as f32 - 3.0))
        .collect();
    write_st(
        &res,
        &[
            (NV_K_PROJ, Dtype::F16, vec![128, 256], common::f16_bytes(&k)),
            (
                MXFP8_DOWN,
                Dtype::F16,
                vec![256, 384],
                common::f16_bytes(&down),
            ),
        ],
    );
    let out = d.p("out");
    ok(&[
        "apply",
        "-q",
        "--base",
        s(&float_base()),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--type",
        "keep",
    ]);
    let (b, o) = (
        SafetensorsModel::open(&float_base()).unwrap(),
        SafetensorsModel::open(&out).unwrap(),
    );
    assert_eq!(b.tensors().len(), o.tensors().len());
    for t in b.tensors() {
        let ot = o.get(&t.name).unwrap();
        assert_eq!((ot.dtype, &ot.shape), (t.dtype, &t.shape), "{}", t.name);
        let changed = t.name.starts_with("model.layers.0.self_attn.k_proj.")
            || t.name.starts_with("model.layers.0.mlp.down_proj.");
        assert_eq!(b.data(t) == o.data(ot), !changed, "{}", t.name);
    }
    // The codec's requantization of the sum rounded to bf16 (the model's
    // dtype), row by row; tests/interop/test_mlx.py checks it against
    // mx.quantize.
    let (bm, om) = (
        Model::open(&float_base()).unwrap(),
        Model::open(&out).unwrap(),
    );
    for (name, delta, mode, cols) in [
        (NV_K_PROJ, &k, FpMode::Nvfp4, 256),
        (MXFP8_DOWN, &down, FpMode::Mxfp8, 384),
    ] {
        let exact: Vec<f32> = common::decoded(&bm, name)
            .iter()
            .zip(delta.iter())
            .map(|(x, y)| half::bf16::from_f32(x + half::f16::from_f32(*y).to_f32()).to_f32())
            .collect();
        let got = common::decoded(&om, name);
        for (e, g) in exact.chunks(cols).zip(got.chunks(cols)) {
            let (p, sc) = mlx_fp::quantize_row(e, mode, Precision::Bf16).unwrap();
            let mut want = vec![0f32; cols];
            mlx_fp::dequantize_row(&p, &sc, mode, Precision::Bf16, &mut want);
            assert_eq!(g, &want[..], "{name}");
        }
    }
    let cfg = |p: &PathBuf| std::fs::read(p.join("config.json")).unwrap();
    assert_eq!(cfg(&out), cfg(&float_base()));
}

#[test]
fn float_bad_inputs_name_file_and_tensor_and_write_nothing() {
    let d = Dir::new();
    let cfg = std::fs::read_to_string(float_base().join("config.json")).unwrap();
    let edited = |name: &str, config: &str, edit: &dyn Fn(&mut common::StTensors)| {
        common::edited_folder(&float_base(), &d, name, config, edit)
    };
    let scales = "model.layers.0.self_attn.k_proj.scales";
    // config.json with one key of `"quantization"` (or of its k_proj
    // override) set.
    let set = |module: Option<&str>, key: &str, v: serde_json::Value| {
        let mut c: serde_json::Value = serde_json::from_str(&cfg).unwrap();
        let q = &mut c["quantization"];
        let q = match module {
            Some(m) => &mut q[m],
            None => q,
        };
        assert!(q.get(key).is_some(), "{key}");
        q[key] = v;
        c.to_string()
    };
    let k = Some("model.layers.0.self_attn.k_proj");
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            // Without its scales the U32 codes are no weight MLX wrote.
            edited("noscales", &cfg, &|t| t.retain(|x| x.0 != scales)),
            vec!["noscales/model.safetensors", NV_K_PROJ, "U32 codes without"],
        ),
        (
            // mxfp8's packing where the config says nvfp4 (4 bits).
            edited("packing", &set(k, "bits", 8.into()), &|_| {}),
            vec![
                "packing/model.safetensors",
                NV_K_PROJ,
                "nvfp4 takes group_size 16 and 4 bits",
            ],
        ),
        (
            edited("shape", &cfg, &|t| {
                let x = t.iter_mut().find(|x| x.0 == scales).unwrap();
                x.2 = vec![64, 32];
            }),
            vec!["shape/model.safetensors", NV_K_PROJ, "must be U32 [64, 64]"],
        ),
        (
            edited("dtype", &cfg, &|t| {
                let x = t.iter_mut().find(|x| x.0 == scales).unwrap();
                x.1 = Dtype::I8;
            }),
            vec![
                "dtype/model.safetensors",
                scales,
                "nvfp4 scales must be U8, found I8",
            ],
        ),
        (
            edited("biases", &cfg, &|t| {
                let x = t.iter().find(|x| x.0 == scales).unwrap().clone();
                t.push((
                    "model.layers.0.self_attn.k_proj.biases".into(),
                    x.1,
                    x.2,
                    x.3,
                ));
            }),
            vec![
                "biases/model.safetensors",
                "k_proj.biases",
                "nvfp4 stores no biases",
            ],
        ),
        (
            edited("global", &cfg, &|t| {
                let g = (
                    "model.layers.0.self_attn.k_proj.global_scale".into(),
                    Dtype::F32,
                    vec![1],
                    vec![0, 0, 128, 63],
                );
                t.push(g);
            }),
            vec![
                "global/model.safetensors",
                "k_proj.global_scale",
                "nvfp4 with a global scale is not read",
            ],
        ),
        (
            edited("mode", &set(k, "mode", "mxint4".into()), &|_| {}),
            vec![
                "mode/model.safetensors",
                NV_K_PROJ,
                "MLX quantization mode mxint4 is not read",
            ],
        ),
        (
            edited("topmode", &set(None, "mode", "fp6".into()), &|_| {}),
            vec!["topmode/config.json", "MLX quantization mode fp6"],
        ),
    ];
    for (folder, needles) in cases {
        assert_dequantize_fails(&d, &folder, &needles);
    }
}

#[test]
fn float_non_finite_scale_names_file_and_tensor() {
    // E8M0 byte 255 decodes to inf in MLX: the base is refused, nothing written.
    let d = Dir::new();
    let cfg = std::fs::read_to_string(float_base().join("config.json")).unwrap();
    let q_scales = "model.layers.0.self_attn.q_proj.scales";
    let folder = common::edited_folder(&float_base(), &d, "inf", &cfg, |t| {
        let x = t.iter_mut().find(|x| x.0 == q_scales).unwrap();
        x.3[5] = 255;
    });
    assert_dequantize_fails(&d, &folder, &["inf/model.safetensors", MXFP4_Q]);
}

/// A seeded Gaussian residual of standard deviation `sigma`.
fn gaussian(n: usize, sigma: f32, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            let (u, v) = (uniform(), uniform());
            sigma * ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()) as f32
        })
        .collect()
}

/// `--strategy search` on `folder`: every group of every changed weight is
/// either the fresh requantization's group or the base's own, the base's
/// only where it decodes strictly nearer the sum (in the model's bf16), the
/// report counts the groups, and the whole tensor is never further from the
/// sum than the fresh output.
fn assert_search_groups(folder: &std::path::Path, weights: &[(&str, usize, usize, Mode)]) {
    let d = Dir::new();
    let res = d.p("r.safetensors");
    let deltas: Vec<Vec<f32>> = weights
        .iter()
        .enumerate()
        .map(|(i, &(_, r, c, _))| gaussian(r * c, 0.004, i as u64 + 7))
        .collect();
    let entries: Vec<_> = weights
        .iter()
        .zip(&deltas)
        .map(|(&(n, r, c, _), dl)| (n, Dtype::F16, vec![r, c], common::f16_bytes(dl)))
        .collect();
    write_st(&res, &entries);
    let (out, report) = (d.p("out"), d.p("report.json"));
    ok(&[
        "apply",
        "-q",
        "--base",
        s(folder),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--strategy",
        "search",
        "--report",
        s(&report),
    ]);
    let rep: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let (bm, om) = (Model::open(folder).unwrap(), Model::open(&out).unwrap());
    let mut base_wins = 0;
    for (&(name, _, cols, mode), delta) in weights.iter().zip(&deltas) {
        let target: Vec<f32> = common::decoded(&bm, name)
            .iter()
            .zip(delta)
            .map(|(x, y)| half::bf16::from_f32(x + half::f16::from_f32(*y).to_f32()).to_f32())
            .collect();
        let (base, got) = (common::decoded(&bm, name), common::decoded(&om, name));
        let gs = mode.group_size();
        let (mut groups, mut took, mut err_got, mut err_fresh) = (0u64, 0u64, 0f64, 0f64);
        for ((t, g), b) in target
            .chunks(cols)
            .zip(got.chunks(cols))
            .zip(base.chunks(cols))
        {
            let fresh = mode.requantize(t);
            for k in (0..cols).step_by(gs) {
                let r = k..k + gs;
                let err = |v: &[f32]| -> f64 {
                    v.iter()
                        .zip(&t[r.clone()])
                        .map(|(a, b)| ((a - b) as f64).powi(2))
                        .sum()
                };
                let (eg, ef, eb) = (
                    err(&g[r.clone()]),
                    err(&fresh[r.clone()]),
                    err(&b[r.clone()]),
                );
                groups += 1;
                if g[r.clone()] != fresh[r.clone()] {
                    assert_eq!(
                        &g[r.clone()],
                        &b[r.clone()],
                        "{name}: group at {k} is neither candidate"
                    );
                    assert!(eb < ef, "{name}: base group at {k} kept though not nearer");
                    took += 1;
                } else {
                    assert!(
                        ef <= eb || g[r.clone()] == b[r.clone()],
                        "{name}: nearer base group at {k} not kept"
                    );
                }
                err_got += eg;
                err_fresh += ef;
            }
        }
        assert!(err_got <= err_fresh, "{name}: {err_got} > {err_fresh}");
        let row = rep["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap();
        assert_eq!(row["search"]["blocks"], groups, "{name}");
        // A group equal in value to the fresh one counts as fresh here but
        // may be the base's bytes in the report; never the other way.
        assert!(row["search"]["base"].as_u64().unwrap() >= took, "{name}");
        base_wins += took;
    }
    assert!(base_wins > 0, "no base group won: the test shows nothing");
}

/// An MLX mode, for the test's own fresh requantization.
#[derive(Clone, Copy)]
enum Mode {
    Affine { bits: u32, group_size: usize },
    Float(FpMode),
}

impl Mode {
    fn group_size(self) -> usize {
        match self {
            Mode::Affine { group_size, .. } => group_size,
            Mode::Float(m) => m.group_size(),
        }
    }

    /// What the codec makes of `row` (already bf16), decoded.
    fn requantize(self, row: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; row.len()];
        match self {
            Mode::Affine { bits, group_size } => {
                let (p, sc, bi) = mlx::quantize_row(row, bits, group_size, Precision::Bf16);
                mlx::dequantize_row(&p, &sc, &bi, bits, group_size, Precision::Bf16, &mut out);
            }
            Mode::Float(m) => {
                let (p, sc) = mlx_fp::quantize_row(row, m, Precision::Bf16).unwrap();
                mlx_fp::dequantize_row(&p, &sc, m, Precision::Bf16, &mut out);
            }
        }
        out
    }
}

#[test]
fn search_keeps_base_groups_only_where_nearer_affine() {
    assert_search_groups(
        &base(),
        &[(
            K_PROJ,
            128,
            256,
            Mode::Affine {
                bits: 2,
                group_size: 32,
            },
        )],
    );
}

#[test]
fn search_keeps_base_groups_only_where_nearer_float_modes() {
    assert_search_groups(
        &float_base(),
        &[
            (NV_K_PROJ, 128, 256, Mode::Float(FpMode::Nvfp4)),
            (MXFP8_DOWN, 256, 384, Mode::Float(FpMode::Mxfp8)),
            (MXFP4_Q, 256, 256, Mode::Float(FpMode::Mxfp4)),
        ],
    );
}

/// An MLX folder with one stacked expert weight `[experts, rows, cols]`
/// (mlx-lm's SwitchLinear), 4 bits in groups of 32, f32 scales: its
/// stacked weight's name and decoded values.
fn moe_folder(d: &Dir, experts: usize, rows: usize, cols: usize) -> (PathBuf, Vec<f32>) {
    const UP: &str = "model.layers.0.mlp.switch_mlp.up_proj";
    let folder = d.p("moe");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(
        folder.join("config.json"),
        r#"{"model_type": "qwen3_moe", "torch_dtype": "float32", "quantization": {"group_size": 32, "bits": 4}}"#,
    )
    .unwrap();
    let w = gaussian(experts * rows * cols, 0.02, 3);
    let (mut packed, mut scales, mut biases, mut decoded) = (vec![], vec![], vec![], vec![]);
    for row in w.chunks(cols) {
        let (p, sc, bi) = mlx::quantize_row(row, 4, 32, Precision::F32);
        let mut dst = vec![0f32; cols];
        mlx::dequantize_row(&p, &sc, &bi, 4, 32, Precision::F32, &mut dst);
        packed.extend(p);
        scales.extend(sc);
        biases.extend(bi);
        decoded.extend(dst);
    }
    let groups = vec![experts, rows, cols / 32];
    write_st(
        &folder.join("model.safetensors"),
        &[
            (
                &format!("{UP}.weight"),
                Dtype::U32,
                vec![experts, rows, cols / 8],
                packed,
            ),
            (
                &format!("{UP}.scales"),
                Dtype::F32,
                groups.clone(),
                common::f32_bytes(&scales),
            ),
            (
                &format!("{UP}.biases"),
                Dtype::F32,
                groups,
                common::f32_bytes(&biases),
            ),
        ],
    );
    (folder, decoded)
}

#[test]
fn stacked_experts_take_their_per_expert_residuals_in_order() {
    let d = Dir::new();
    let (experts, rows, cols) = (3, 8, 64);
    let (folder, base) = moe_folder(&d, experts, rows, cols);
    let name = |e: usize| format!("model.layers.0.mlp.experts.{e}.up_proj.weight");
    // Expert e's residual is e + 1 times one pattern: the order shows.
    let pattern: Vec<f32> = (0..rows * cols)
        .map(|i| 0.01 * ((i % 7) as f32 - 3.0))
        .collect();
    let delta = |e: usize| -> Vec<f32> { pattern.iter().map(|x| x * (e + 1) as f32).collect() };
    let write = |path: &std::path::Path, which: &[usize]| {
        let names: Vec<String> = which.iter().map(|&e| name(e)).collect();
        let entries: Vec<_> = which
            .iter()
            .zip(&names)
            .map(|(&e, n)| {
                (
                    n.as_str(),
                    Dtype::F32,
                    vec![rows, cols],
                    common::f32_bytes(&delta(e)),
                )
            })
            .collect();
        write_st(path, &entries);
    };
    let (res, out) = (d.p("r.safetensors"), d.p("out"));
    write(&res, &[2, 0, 1]);
    ok(&[
        "apply",
        "-q",
        "--base",
        s(&folder),
        "--residual",
        s(&res),
        "-o",
        s(&out),
    ]);
    let got = common::decoded(
        &Model::open(&out).unwrap(),
        "model.layers.0.mlp.switch_mlp.up_proj.weight",
    );
    for e in 0..experts {
        let dl = delta(e);
        for r in 0..rows {
            let at = (e * rows + r) * cols;
            let sum: Vec<f32> = (0..cols).map(|c| base[at + c] + dl[r * cols + c]).collect();
            let (p, sc, bi) = mlx::quantize_row(&sum, 4, 32, Precision::F32);
            let mut want = vec![0f32; cols];
            mlx::dequantize_row(&p, &sc, &bi, 4, 32, Precision::F32, &mut want);
            assert_eq!(&got[at..at + cols], &want[..], "expert {e} row {r}");
        }
    }
    // An expert missing, and one of the wrong shape: refused, nothing written.
    let out2 = d.p("out2");
    let refused = |needles: &[&str]| {
        let args = [
            "apply",
            "-q",
            "--base",
            s(&folder),
            "--residual",
            s(&res),
            "-o",
            s(&out2),
        ];
        assert_fails(&run(&args), 1, needles, &out2);
    };
    write(&res, &[0, 2]);
    refused(&["switch_mlp.up_proj.weight", "experts 1 have no residual"]);
    let zeros = vec![0; rows * cols * 4];
    write_st(&res, &[(&name(5), Dtype::F32, vec![rows, cols], zeros)]);
    refused(&["experts.5.up_proj.weight", "vs expert 5 of base"]);
}
