//! What every quantized Hugging Face folder kind shares through `Model`:
//! `compare` against its own dequantization finds them identical, and
//! `extract` from that pair gives an all-zero residual with every weight;
//! a GPTQ config over a folder without `qweight`, and a quantization
//! qresidual does not read, are refused by name.

use serde_json::Value;

mod common;
use common::{assert_fails, fixture_in, ok, run, s, Dir};

const FOLDERS: [(&str, &str); 13] = [
    ("tiny_fp8", "block"),
    ("tiny_fp8", "channel"),
    ("tiny_fp8", "tensor"),
    ("tiny_fp8", "ctblock"),
    ("tiny_mlx", "affine"),
    ("tiny_packed", "w4g64"),
    ("tiny_packed", "w8ch"),
    ("tiny_packed", "w4g64_asym"),
    ("tiny_packed", "w8ch_asym"),
    ("tiny_gptq", "gptq_w4g64_asym"),
    ("tiny_gptq", "gptq_w4g64_act"),
    ("tiny_gptq", "gptq_w8_v2"),
    ("tiny_gptq", "awq_w4g64"),
];

#[test]
fn compare_and_extract_read_every_kind() {
    let d = Dir::new();
    for (i, (dir, name)) in FOLDERS.iter().enumerate() {
        let base = fixture_in(dir, name);
        let f32 = d.p(&format!("f32-{i}"));
        ok(&["dequantize", "-q", s(&base), "-o", s(&f32), "--type", "f32"]);
        let json = d.p(&format!("c-{i}.json"));
        ok(&["compare", "-q", s(&base), s(&f32), "--json", s(&json)]);
        let c: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(c["summary"]["tensors"], 20, "{name}");
        assert_eq!(c["summary"]["identical"], 20, "{name}: {}", c["summary"]);
        let res = d.p(&format!("r-{i}.safetensors"));
        ok(&[
            "extract",
            "-q",
            "--instruct",
            s(&f32),
            "--base",
            s(&base),
            "-o",
            s(&res),
            "--dtype",
            "f32",
        ]);
        let r = qresidual::format::st::SafetensorsModel::open(&res).unwrap();
        assert_eq!(r.tensors().len(), 20, "{name}");
        for t in r.tensors() {
            assert!(r.data(t).iter().all(|b| *b == 0), "{name}: {}", t.name);
        }
    }
}

#[test]
fn gptq_without_qweight_and_unread_methods_fail_by_name() {
    let d = Dir::new();
    let base = fixture_in("tiny_gptq", "gptq_w4g64_asym");
    let no_qweight = |t: &mut Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)>| {
        t.retain(|x| !x.0.ends_with(".qweight"))
    };
    let gptq = r#"{"model_type": "llama", "quantization_config": {"quant_method": "gptq", "bits": 4, "group_size": 64}}"#;
    let hqq =
        r#"{"model_type": "llama", "quantization_config": {"quant_method": "hqq", "bits": 4}}"#;
    for (name, cfg, needle) in [
        (
            "gptq",
            gptq,
            "declares GPTQ/AWQ quantization, but no tensor is a qweight",
        ),
        (
            "hqq",
            hqq,
            "quant_method hqq, which qresidual does not read",
        ),
    ] {
        let folder = common::edited_folder(&base, &d, name, cfg, no_qweight);
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
        let config = format!("{name}/config.json");
        assert_fails(&o, 1, &[config.as_str(), needle], &out);
    }
}
