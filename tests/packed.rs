//! compressed-tensors `pack-quantized` folders (fixtures/tiny_packed,
//! written by compressed-tensors, fixtures/make_tiny_packed.py): reading
//! through `Model`, dequantization against compressed-tensors' stored
//! output, `apply --type keep` on the base's scales, and bad inputs. The
//! comparisons with compressed-tensors run live in
//! tests/interop/test_packed.py.

use std::path::PathBuf;

use qresidual::format::st::SafetensorsModel;
use qresidual::model::{Format, Model};
use safetensors::Dtype;

mod common;
use common::{assert_fails, ok, run, s, write_st, Dir};

const K_PROJ: &str = "model.layers.0.self_attn.k_proj.weight";

/// Every fixture and the type its weights are reported as.
const VARIANTS: [(&str, &str); 4] = [
    ("w4g64", "ct-int4"),
    ("w8ch", "ct-int8"),
    ("w4g64_asym", "ct-int4-asym"),
    ("w8ch_asym", "ct-int8-asym"),
];

fn fixture(variant: &str) -> PathBuf {
    common::fixture_in("tiny_packed", variant)
}

fn base() -> PathBuf {
    fixture("w4g64")
}

#[test]
fn dequantization_equals_compressed_tensors() {
    for (v, ty) in VARIANTS {
        assert_eq!(Format::detect(&fixture(v)).unwrap(), Format::Packed);
        let model = Model::open(&fixture(v)).unwrap();
        let weights = model.weights().unwrap();
        assert_eq!(
            weights.iter().filter(|w| w.type_name == ty).count(),
            14,
            "{v}"
        );
        assert!(weights.iter().all(|w| !w.name.contains("weight_")));
        let want = std::fs::read(fixture(v).join(format!("reference/{K_PROJ}.f32"))).unwrap();
        let got: Vec<u8> = common::decoded(&model, K_PROJ)
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(got, want, "{v}");
    }
}

#[test]
fn apply_keep_keeps_scales_and_zero_points_of_every_variant() {
    let d = Dir::new();
    let res = d.p("r.safetensors");
    let k: Vec<f32> = (0..128 * 256)
        .map(|i| 0.01 * ((i % 13) as f32 - 6.0))
        .collect();
    write_st(
        &res,
        &[(K_PROJ, Dtype::F16, vec![128, 256], common::f16_bytes(&k))],
    );
    for (v, _) in VARIANTS {
        let out = d.p(v);
        assert_eq!(
            common::apply_changed(&fixture(v), &res, &out, &[]),
            ["model.layers.0.self_attn.k_proj.weight_packed"],
            "{v}"
        );
    }
}

#[test]
fn apply_keep_keeps_the_scales_and_rerounds_the_codes() {
    let d = Dir::new();
    let res = d.p("r.safetensors");
    let k: Vec<f32> = (0..128 * 256)
        .map(|i| 0.01 * ((i % 13) as f32 - 6.0))
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
        let changed = t.name == "model.layers.0.self_attn.k_proj.weight_packed";
        assert_eq!(same, !changed, "{}", t.name);
    }
    // On the base's grid: every value is bf16(the base's scale × an integer in −8..7).
    let om = Model::open(&out).unwrap();
    let scales = {
        let t = o
            .get("model.layers.0.self_attn.k_proj.weight_scale")
            .unwrap();
        o.data(t)
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect::<Vec<_>>()
    };
    for (i, v) in common::decoded(&om, K_PROJ).iter().enumerate() {
        let s = scales[i / 64];
        let q = (v / s).round();
        assert!((-8.0..=7.0).contains(&q), "{i}: {v} / {s}");
        assert_eq!(half::bf16::from_f32(q * s).to_f32(), *v, "{i}");
    }
}

#[test]
fn bad_inputs_name_file_and_tensor_and_write_nothing() {
    let d = Dir::new();
    let cfg = std::fs::read_to_string(base().join("config.json")).unwrap();
    let asym_cfg = std::fs::read_to_string(fixture("w4g64_asym").join("config.json")).unwrap();
    let m = "model.layers.0.self_attn.k_proj";
    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (
            common::edited_folder(&base(), &d, "noscale", &cfg, |t| {
                t.retain(|x| x.0 != format!("{m}.weight_scale"))
            }),
            vec![
                "noscale/model.safetensors",
                K_PROJ,
                "weight_scale' is missing",
            ],
        ),
        (
            common::edited_folder(&base(), &d, "zp", &cfg, |t| {
                t.push((
                    format!("{m}.weight_zero_point"),
                    Dtype::I32,
                    vec![16, 4],
                    vec![0; 256],
                ))
            }),
            vec![
                "zp/model.safetensors",
                K_PROJ,
                "symmetric true, but",
                "weight_zero_point' is stored",
            ],
        ),
        (
            common::edited_folder(&fixture("w4g64_asym"), &d, "nozp", &asym_cfg, |t| {
                t.retain(|x| x.0 != format!("{m}.weight_zero_point"))
            }),
            vec![
                "nozp/model.safetensors",
                K_PROJ,
                "symmetric false, but",
                "is missing",
            ],
        ),
        (
            common::edited_folder(&fixture("w4g64_asym"), &d, "zpshape", &asym_cfg, |t| {
                let z = t
                    .iter_mut()
                    .find(|x| x.0 == format!("{m}.weight_zero_point"))
                    .unwrap();
                (z.2, z.3) = (vec![4, 16], vec![0; 256]);
            }),
            vec![
                "zpshape/model.safetensors",
                K_PROJ,
                "must be I32 [16, 4], found I32 [4, 16]",
            ],
        ),
        (
            common::edited_folder(
                &base(),
                &d,
                "packing",
                &cfg.replace("\"num_bits\": 4", "\"num_bits\": 8"),
                |_| {},
            ),
            vec!["packing/model.safetensors", "8-bit codes of", "must be I32"],
        ),
        (
            common::edited_folder(
                &base(),
                &d,
                "bits9",
                &cfg.replace("\"num_bits\": 4", "\"num_bits\": 9"),
                |_| {},
            ),
            vec!["bits9/", "num_bits 9", "1 to 8 bits"],
        ),
        (
            common::edited_folder(
                &base(),
                &d,
                "group",
                &cfg.replace("\"group_size\": 64", "\"group_size\": 32"),
                |_| {},
            ),
            vec![
                "group/model.safetensors",
                "weight_scale",
                "one scale per group of 32",
            ],
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
