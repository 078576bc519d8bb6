//! Every command on every input format it can make sense of, through the
//! library API and the command line: `extract`, `compare` and `inspect` on
//! bitsandbytes folders give what they give on the folder's dequantized
//! F32 copy (whose floats are the folder's decoded values, bit for bit),
//! and one clear message for anything that is not a model.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{fixture_in, ok, run, s, Dir};
use qresidual::engine::log::Log;
use qresidual::engine::progress::Progress;
use qresidual::model::Model;
use qresidual::ops::convert::{dequantize, DequantizeRequest};
use qresidual::ops::{compare, extract};

fn bnb(variant: &str) -> std::path::PathBuf {
    fixture_in("tiny_bnb", variant)
}

/// The folder's dequantized F32 copy, through the library.
fn f32_copy(dir: &Dir, variant: &str) -> std::path::PathBuf {
    let out = dir.p(&format!("{variant}-f32"));
    let req = DequantizeRequest {
        input: bnb(variant),
        output: out.clone(),
        target: "f32".into(),
        split_max_size: None,
    };
    let done = dequantize(&req, &Log::silent()).unwrap();
    assert_eq!(done.outputs, vec![out.clone()]);
    out
}

/// name → (type_a, type_b, stats) of a comparison, stats as exact bits.
fn comparison(a: &Path, b: &Path) -> BTreeMap<String, (String, String, [u64; 5])> {
    let (ma, mb) = (Model::open(a).unwrap(), Model::open(b).unwrap());
    let c = compare::compare(&ma, &mb).unwrap();
    c.tensors
        .iter()
        .map(|t| {
            let st = &t.stats;
            let bits = [
                st.rmse().to_bits(),
                st.max_abs().to_bits(),
                st.cosine().to_bits(),
                st.relative_rmse().to_bits(),
                st.n,
            ];
            (t.name.clone(), (t.type_a.clone(), t.type_b.clone(), bits))
        })
        .collect()
}

#[test]
fn compare_on_bitsandbytes_folders_equals_compare_on_their_f32_copies() {
    let dir = Dir::new();
    for (a, b) in [("nf4", "int8"), ("fp4", "nf4"), ("int8", "fp4")] {
        let direct = comparison(&bnb(a), &bnb(b));
        let copies = comparison(&f32_copy(&dir, a), &f32_copy(&dir, b));
        assert_eq!(direct.len(), 20, "{a} vs {b}: every weight compared");
        assert_eq!(
            direct.keys().collect::<Vec<_>>(),
            copies.keys().collect::<Vec<_>>()
        );
        for (name, (ta, tb, stats)) in &direct {
            assert_eq!(&copies[name].2, stats, "{a} vs {b}: {name}");
            // The folder names its own storage; the copy is F32.
            if name.ends_with("proj.weight") {
                assert_eq!((ta.as_str(), tb.as_str()), (a, b), "{name}");
                assert_eq!(copies[name].0, "f32");
            }
        }
        let differs = direct.values().filter(|v| v.2[0] != 0).count();
        assert!(differs >= 14, "{a} vs {b}: the quantized weights differ");
        std::fs::remove_dir_all(dir.p(&format!("{a}-f32"))).unwrap();
        std::fs::remove_dir_all(dir.p(&format!("{b}-f32"))).unwrap();
    }
}

/// The tensors of a safetensors file as name → (dtype, shape, bytes).
fn tensors(path: &Path) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, v)| {
            let key = (
                format!("{:?}", v.dtype()),
                v.shape().to_vec(),
                v.data().to_vec(),
            );
            (n, key)
        })
        .collect()
}

#[test]
fn extract_from_bitsandbytes_folders_equals_extract_from_their_f32_copies() {
    let dir = Dir::new();
    let (i32c, b32c) = (f32_copy(&dir, "int8"), f32_copy(&dir, "nf4"));
    for dtype in ["f16", "f32"] {
        let direct = dir.p(&format!("direct-{dtype}.safetensors"));
        let copies = dir.p(&format!("copies-{dtype}.safetensors"));
        let (i, b) = (
            Model::open(&bnb("int8")).unwrap(),
            Model::open(&bnb("nf4")).unwrap(),
        );
        let format = extract::ResidualFormat::parse(dtype).unwrap();
        let done = extract::extract(&i, &b, &direct, format, &Progress::off()).unwrap();
        assert_eq!(done.tensors, 20);
        ok(&[
            "extract",
            "--instruct",
            s(&i32c),
            "--base",
            s(&b32c),
            "-o",
            s(&copies),
            "--dtype",
            dtype,
            "-q",
        ]);
        let (d, c) = (tensors(&direct), tensors(&copies));
        assert_eq!(
            d, c,
            "--dtype {dtype}: Δ from the folders = Δ from their F32 copies"
        );
        let nonzero = d.values().filter(|t| t.2.iter().any(|&x| x != 0)).count();
        assert!(
            nonzero >= 14,
            "the quantized weights differ between NF4 and int8"
        );
    }
}

#[test]
fn a_residual_extracted_from_bitsandbytes_folders_applies_to_one_of_them() {
    let dir = Dir::new();
    let res = dir.p("res.safetensors");
    ok(&[
        "extract",
        "--instruct",
        s(&bnb("int8")),
        "--base",
        s(&bnb("nf4")),
        "-o",
        s(&res),
        "-q",
    ]);
    let out = dir.p("out");
    let report = dir.p("r.json");
    ok(&[
        "apply",
        "--base",
        s(&bnb("nf4")),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--report",
        s(&report),
        "-q",
    ]);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    // The residual's fingerprint was made from the same folder; the 14
    // quantized weights differ between the folders and take their Δ, the
    // float tensors (embedding, norms, lm_head) are equal and are copied.
    assert_eq!(r["summary"]["with_residual"], 14, "{}", r["summary"]);
    assert_eq!(r["summary"]["copied"], 6, "{}", r["summary"]);
}

#[test]
fn inspect_reads_every_format() {
    for (path, needle) in [
        (bnb("nf4"), "bitsandbytes"),
        (fixture_in("tiny", "base-q4_k_m.gguf"), "q4_K"),
        (
            fixture_in("tiny", "residual-sharded"),
            "safetensors, 2 shard(s)",
        ),
    ] {
        let text = qresidual::ops::inspect::inspect(&path, false).unwrap();
        assert!(text.contains(needle), "{}: {text}", path.display());
        let json = qresidual::ops::inspect::inspect(&path, true).unwrap();
        serde_json::from_str::<serde_json::Value>(&json).unwrap();
    }
}

#[test]
fn what_is_not_a_model_gets_one_message_naming_what_was_looked_for() {
    let dir = Dir::new();
    std::fs::write(dir.p("notes.txt"), b"hello").unwrap();
    std::fs::create_dir(dir.p("empty")).unwrap();
    for (input, needle) in [
        (dir.p("notes.txt"), "neither a GGUF file (no GGUF magic) nor a .safetensors file"),
        (dir.p("empty"), "a folder without model.safetensors, model.safetensors.index.json or a bitsandbytes/FP8 config.json"),
    ] {
        for cmd in [
            vec!["inspect", s(&input)],
            vec!["dequantize", s(&input), "-o", s(&dir.p("o.gguf"))],
            vec!["compare", s(&input), s(&fixture_in("tiny", "base-q4_k_m.gguf"))],
        ] {
            let out = run(&cmd);
            common::assert_fails(&out, 1, &[s(&input), needle], &dir.p("o.gguf"));
        }
    }
    // A safetensors checkpoint has nothing to dequantize: said, not "No such device".
    let out = run(&[
        "dequantize",
        s(&fixture_in("tiny", "residual-sharded")),
        "-o",
        s(&dir.p("o.gguf")),
    ]);
    common::assert_fails(&out, 2, &["already dequantized"], &dir.p("o.gguf"));
}
