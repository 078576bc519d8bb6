//! FP8 model folders (fixtures/tiny_fp8, written by transformers'
//! Fp8Quantize and by compressed-tensors, fixtures/make_tiny_fp8.py):
//! reading through `Model`, dequantization against the references' own
//! output, `apply --type keep|bf16`, and bad inputs. The comparisons with
//! the reference quantizers run live in tests/interop/test_fp8.py.

use std::path::{Path, PathBuf};

use qresidual::format::st::SafetensorsModel;
use qresidual::model::naming::RowPermutation;
use qresidual::model::{Format, Model};
use safetensors::Dtype;

mod common;
use common::{assert_fails, ok, run, s, write_st, Dir};

const VARIANTS: [&str; 4] = ["block", "channel", "tensor", "ctblock"];
const K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";

fn fixture(variant: &str) -> PathBuf {
    common::fixture_in("tiny_fp8", variant)
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn every_variant_opens_as_fp8() {
    for v in VARIANTS {
        assert_eq!(Format::detect(&fixture(v)).unwrap(), Format::Fp8);
        let model = Model::open(&fixture(v)).unwrap();
        let weights = model.weights().unwrap();
        let fp8: Vec<_> = weights
            .iter()
            .filter(|w| w.type_name.starts_with("fp8"))
            .collect();
        assert_eq!(fp8.len(), 14, "{v}");
        // The scales are parts of their weights, not weights of their own.
        assert!(weights.iter().all(|w| !w.name.contains("_scale")), "{v}");
    }
}

#[test]
fn dequantization_equals_the_reference() {
    for v in VARIANTS {
        let model = Model::open(&fixture(v)).unwrap();
        let want = std::fs::read(fixture(v).join(format!("reference/{K_PROJ}.f32"))).unwrap();
        assert_eq!(
            bits(&common::decoded(&model, K_PROJ)),
            bits(&f32s(&want)),
            "{v}"
        );
        // Rows decoded in any chunk equal the whole.
        let weights = model.weights().unwrap();
        let w = weights.iter().find(|w| w.name == K_PROJ).unwrap();
        let rows = model.weight_rows(w, RowPermutation::Identity).unwrap();
        let mut part = vec![0f32; 3 * rows.row_len()];
        rows.decode(61, &mut part).unwrap();
        assert_eq!(bits(&part), bits(&f32s(&want)[61 * 256..64 * 256]), "{v}");
    }
}

#[test]
fn dequantize_writes_the_reference_values() {
    let d = Dir::new();
    for v in VARIANTS {
        let out = d.p(v);
        ok(&[
            "dequantize",
            "-q",
            s(&fixture(v)),
            "-o",
            s(&out),
            "--type",
            "f32",
        ]);
        let m = SafetensorsModel::open(&out).unwrap();
        let want = std::fs::read(fixture(v).join(format!("reference/{K_PROJ}.f32"))).unwrap();
        assert_eq!(m.data(m.get(K_PROJ).unwrap()), &want[..], "{v}");
        assert!(m.tensors().iter().all(|t| !t.name.contains("_scale")));
        assert_eq!(Format::detect(&out).unwrap(), Format::Safetensors);
    }
}

#[test]
fn inspect_shows_the_scale_layout() {
    for (v, layout) in [
        ("block", "128x128"),
        ("channel", "channel"),
        ("tensor", "tensor"),
        ("ctblock", "fp8-block"),
    ] {
        let o = run(&["inspect", s(&fixture(v))]);
        assert!(o.status.success());
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("Hugging Face FP8 model"), "{text}");
        let line = text.lines().find(|l| l.starts_with(K_PROJ)).unwrap();
        assert!(line.contains(layout), "{line}");
    }
}

/// A residual: `amplitude` times a ramp on k_proj, and the final norm.
fn write_residual(path: &Path, amplitude: f32) -> Vec<f32> {
    let k: Vec<f32> = (0..128 * 256)
        .map(|i| amplitude * (((i * 7919) % 997) as f32 / 498.0 - 1.0))
        .collect();
    write_st(
        path,
        &[
            (K_PROJ, Dtype::F16, vec![128, 256], common::f16_bytes(&k)),
            (
                "model.norm.weight",
                Dtype::F16,
                vec![256],
                common::f16_bytes(&[0.01; 256]),
            ),
        ],
    );
    k.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect()
}

/// k_proj of fixture `v` and of `out`, and the exact sum of the first and
/// `delta`: (base, out, exact).
fn k_proj_of(v: &str, out: &Path, delta: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let base = common::decoded(&Model::open(&fixture(v)).unwrap(), K_PROJ);
    let got = common::decoded(&Model::open(out).unwrap(), K_PROJ);
    let exact = base.iter().zip(delta).map(|(x, y)| x + y).collect();
    (base, got, exact)
}

#[test]
fn apply_keep_requantizes_only_what_changed() {
    let d = Dir::new();
    let res = d.p("res.safetensors");
    let delta = write_residual(&res, 0.004);
    for v in VARIANTS {
        let out = d.p(v);
        // The weight and its recomputed scale, and the norm.
        let scale = if v == "block" { "_scale_inv" } else { "_scale" };
        assert_eq!(
            common::apply_changed(&fixture(v), &res, &out, &[]),
            [
                K_PROJ.to_string(),
                format!("{K_PROJ}{scale}"),
                "model.norm.weight".into()
            ],
            "{v}"
        );
        // The requantized weight is within FP8's rounding of the sum.
        let (_, got, exact) = k_proj_of(v, &out, &delta);
        let amax = exact.iter().fold(0f32, |m, x| m.max(x.abs()));
        for (e, g) in exact.iter().zip(got) {
            assert!(
                (e - g).abs() <= e.abs() / 15.0 + amax / 448.0 / 64.0 + 1e-3 * amax / 64.0,
                "{v}: {e} vs {g}"
            );
        }
        let cfg = |p: &Path| std::fs::read(p.join("config.json")).unwrap();
        assert_eq!(cfg(&out), cfg(&fixture(v)));
    }
}

#[test]
fn keep_scales_keeps_the_base_scales_and_re_rounds_the_codes() {
    let d = Dir::new();
    let res = d.p("res.safetensors");
    let delta = write_residual(&res, 0.004);
    for v in VARIANTS {
        let out = d.p(v);
        // Only k_proj's codes (and the norm) change; every scale is the base's.
        assert_eq!(
            common::apply_changed(&fixture(v), &res, &out, &["--keep-scales"]),
            [K_PROJ, "model.norm.weight"],
            "{v}"
        );
        // Each value is the e4m3 value on its scale nearest to the sum
        // rounded to bf16: never further from it than the base's code.
        let (before, got, exact) = k_proj_of(v, &out, &delta);
        let (mut moved, mut nearer) = (0, 0);
        for ((e, g), b0) in exact.iter().zip(got).zip(&before) {
            let t = half::bf16::from_f32(*e).to_f32();
            // compressed-tensors divides in bf16 and its values are bf16:
            // each rounding moves the midpoint between two codes by up to
            // 2^-9 of the value.
            let slack = t.abs() / 64.0;
            assert!(
                (t - g).abs() <= (t - b0).abs() + slack,
                "{v}: {t} vs {g} (base {b0})"
            );
            moved += usize::from(g != *b0);
            nearer += usize::from((e - g).abs() < (e - b0).abs());
        }
        assert!(moved > 0 && nearer > 0, "{v}: nothing re-rounded");
    }
    // Other targets and bases refuse it: an FP8 base written as floats has
    // no scales; a pack-quantized base keeps its scales by itself, a GGUF
    // base re-rounds on its own with --strategy search.
    let out = d.p("refused");
    let packed = common::fixture_in("tiny_packed", "w4g64");
    for (base, ty) in [
        (fixture("channel"), "bf16"),
        (packed, "keep"),
        (common::tiny_base(), "keep"),
    ] {
        let o = run(&[
            "apply",
            "-q",
            "--base",
            s(&base),
            "--residual",
            s(&res),
            "-o",
            s(&out),
            "--type",
            ty,
            "--keep-scales",
        ]);
        let needles = ["--keep-scales applies to FP8 bases"];
        assert_fails(&o, 2, &needles, &out);
    }
}

#[test]
fn apply_bf16_writes_a_plain_checkpoint() {
    let d = Dir::new();
    let res = d.p("res.safetensors");
    write_residual(&res, 0.004);
    let out = d.p("out");
    ok(&[
        "apply",
        "-q",
        "--base",
        s(&fixture("channel")),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--type",
        "bf16",
    ]);
    let m = SafetensorsModel::open(&out).unwrap();
    assert!(
        m.tensors().iter().all(|t| t.dtype == Dtype::BF16),
        "{:?}",
        m.tensors()
    );
    assert!(m.tensors().iter().all(|t| !t.name.contains("_scale")));
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert!(cfg.get("quantization_config").is_none());
    assert_eq!(cfg["dtype"], "bfloat16");
}

/// The block fixture with `edit` applied to its tensors, in `d`.
fn edited(d: &Dir, name: &str, edit: impl Fn(&mut common::StTensors)) -> PathBuf {
    let cfg = std::fs::read_to_string(fixture("block").join("config.json")).unwrap();
    common::edited_folder(&fixture("block"), d, name, &cfg, edit)
}

#[test]
fn bad_inputs_name_file_and_tensor_and_write_nothing() {
    let d = Dir::new();
    let res = d.p("res.safetensors");
    write_residual(&res, 0.004);
    let scale = "model.layers.0.self_attn.k_proj.weight_scale_inv";
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            edited(&d, "missing", |t| t.retain(|x| x.0 != scale)),
            vec!["missing/model.safetensors", K_PROJ, "without its scale"],
        ),
        (
            edited(&d, "shape", |t| {
                let x = t.iter_mut().find(|x| x.0 == scale).unwrap();
                x.2 = vec![2, 1];
            }),
            vec!["shape/model.safetensors", scale, "does not match"],
        ),
        (
            edited(&d, "dtype", |t| {
                let x = t.iter_mut().find(|x| x.0 == scale).unwrap();
                x.1 = Dtype::I32;
            }),
            vec!["dtype/model.safetensors", scale, "F32, BF16 or F16"],
        ),
        (
            edited(&d, "threed", |t| {
                let x = t.iter_mut().find(|x| x.0 == K_PROJ).unwrap();
                x.2 = vec![2, 64, 256];
            }),
            vec!["threed/model.safetensors", K_PROJ, "2-D"],
        ),
    ];
    for (base, needles) in cases {
        let out = d.p("out");
        let o = run(&[
            "apply",
            "-q",
            "--base",
            s(&base),
            "--residual",
            s(&res),
            "-o",
            s(&out),
        ]);
        assert_fails(&o, 1, &needles, &out);
        let o = run(&["dequantize", "-q", s(&base), "-o", s(&out), "--type", "f16"]);
        assert_fails(&o, 1, &needles, &out);
    }

    // A quantization qresidual does not read is named, not taken for plain floats.
    let packed = edited(&d, "packed", |_| {});
    let cfg = std::fs::read_to_string(fixture("channel").join("config.json")).unwrap();
    std::fs::write(
        packed.join("config.json"),
        cfg.replace("float-quantized", "nvfp4-pack-quantized"),
    )
    .unwrap();
    let out = d.p("out");
    let o = run(&[
        "dequantize",
        "-q",
        s(&packed),
        "-o",
        s(&out),
        "--type",
        "f16",
    ]);
    assert_fails(
        &o,
        1,
        &[
            "packed/config.json",
            "compressed-tensors with format nvfp4-pack-quantized",
        ],
        &out,
    );

    // Conversions that are not natural for an FP8 base are refused.
    let o = run(&[
        "apply",
        "-q",
        "--base",
        s(&fixture("block")),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--type",
        "nf4",
    ]);
    assert_fails(
        &o,
        2,
        &["--type nf4", "FP8 model folder", "keep, f16, bf16 or f32"],
        &out,
    );
}

/// `--strategy search` on every variant: each scale block of k_proj is the
/// fresh output's block or the base's (codes and scale, as stored), the
/// base's exactly where it decodes nearer the sum in bf16 (the module
/// dtype); the report counts the blocks.
#[test]
fn search_keeps_a_base_block_only_where_nearer() {
    let d = Dir::new();
    let res = d.p("res.safetensors");
    // Rows from 1e-6 to 4e-3 (log-spaced), the first 128 columns 100×
    // smaller: some per-channel blocks are nearer left as they are.
    let delta: Vec<f32> = (0..128 * 256)
        .map(|i| {
            let (r, c) = (i / 256, i % 256);
            let amp = (1e-6f64.ln() + (4e-3f64 / 1e-6).ln() * r as f64 / 127.0).exp();
            let x = amp * (((i * 7919) % 997) as f64 / 498.0 - 1.0);
            (if c < 128 { x / 100.0 } else { x }) as f32
        })
        .collect();
    write_st(
        &res,
        &[(
            K_PROJ,
            Dtype::F16,
            vec![128, 256],
            common::f16_bytes(&delta),
        )],
    );
    let delta: Vec<f32> = delta
        .iter()
        .map(|x| half::f16::from_f32(*x).to_f32())
        .collect();
    let mut base_wins = 0;
    for v in VARIANTS {
        let base = fixture(v);
        let (fresh, search, report) = (
            d.p(&format!("{v}-fresh")),
            d.p(&format!("{v}-search")),
            d.p(&format!("{v}.json")),
        );
        for (out, extra) in [
            (&fresh, &[][..]),
            (
                &search,
                &["--strategy", "search", "--report", s(&report)][..],
            ),
        ] {
            let mut args = vec![
                "apply",
                "-q",
                "--base",
                s(&base),
                "--residual",
                s(&res),
                "-o",
                s(out),
            ];
            args.extend_from_slice(extra);
            ok(&args);
        }
        let scale_name = format!(
            "{K_PROJ}{}",
            if v == "block" { "_scale_inv" } else { "_scale" }
        );
        let open = |p: &Path| SafetensorsModel::open(p).unwrap();
        let (b, f, g) = (open(&fixture(v)), open(&fresh), open(&search));
        let part = |m: &SafetensorsModel, n: &str| m.data(m.get(n).unwrap()).to_vec();
        let codes = [&b, &f, &g].map(|m| part(m, K_PROJ));
        let scales = [&b, &f, &g].map(|m| part(m, &scale_name));
        let grid = b.get(&scale_name).unwrap().shape.clone();
        let (sb, cb) = match grid.len() {
            2 => (grid[0], grid[1]),
            _ => (grid.iter().product(), 1),
        };
        let (rows_per, cols_per) = (128usize.div_ceil(sb), 256usize.div_ceil(cb));
        let esize = scales[0].len() / (sb * cb);
        let decoded = [&fixture(v), &fresh, &search]
            .map(|p| common::decoded(&Model::open(p).unwrap(), K_PROJ));
        let target: Vec<f32> = decoded[0]
            .iter()
            .zip(&delta)
            .map(|(x, y)| half::bf16::from_f32(x + y).to_f32())
            .collect();
        let mut took = 0u64;
        for k in 0..sb * cb {
            let (r0, c0) = (k / cb * rows_per, k % cb * cols_per);
            let idx: Vec<usize> = (r0..(r0 + rows_per).min(128))
                .flat_map(|r| (c0..(c0 + cols_per).min(256)).map(move |c| r * 256 + c))
                .collect();
            let same = |a: usize, b: usize| {
                idx.iter().all(|&i| codes[a][i] == codes[b][i])
                    && scales[a][k * esize..(k + 1) * esize]
                        == scales[b][k * esize..(k + 1) * esize]
            };
            let err = |m: usize| -> f64 {
                idx.iter()
                    .map(|&i| (target[i] as f64 - decoded[m][i] as f64).powi(2))
                    .sum()
            };
            let (eb, ef) = (err(0), err(1));
            if same(2, 1) {
                assert!(
                    same(2, 0) || eb >= ef * (1.0 - 1e-9),
                    "{v}: block {k} nearer in the base, not kept"
                );
            } else {
                assert!(same(2, 0), "{v}: block {k} is neither candidate");
                assert!(
                    eb < ef * (1.0 + 1e-9),
                    "{v}: block {k} kept from the base though not nearer"
                );
                took += 1;
            }
        }
        let rep: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let row = rep["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == K_PROJ)
            .unwrap();
        assert_eq!(row["search"]["blocks"], (sb * cb) as u64, "{v}");
        assert_eq!(row["search"]["base"], took, "{v}");
        base_wins += took;
    }
    assert!(base_wins > 0, "no base block kept: the test shows nothing");
}
