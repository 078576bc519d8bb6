//! `qresidual dequantize` on a GGUF holding one tensor of every readable type,
//! quantized by ggml (fixtures/make_all_types.py), against ggml's own
//! `to_float` of the same bytes.

use std::path::Path;
use std::process::Command;

use qresidual::format::gguf::GgufFile;
use qresidual::quant::GgmlType;

#[test]
fn every_readable_type_dequantizes_bit_exactly_through_the_command() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/all_types");
    let input = dir.join("all-types.gguf");
    let expected: Vec<u32> = std::fs::read(dir.join("all-types.expected.f32"))
        .unwrap()
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f32.gguf");
    let run = Command::new(env!("CARGO_BIN_EXE_qresidual"))
        .args([
            "dequantize",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-q",
        ])
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );

    let src = GgufFile::open(&input).unwrap();
    let got = GgufFile::open(&out).unwrap();
    assert_eq!(src.tensors().len(), 28);
    let mut at = 0;
    for (i, t) in got.tensors().iter().enumerate() {
        assert_eq!(t.ty, GgmlType::F32, "{}", t.name);
        assert_eq!(t.name, src.tensors()[i].name);
        let n = t.n_elements() as usize;
        let bits: Vec<u32> = got
            .tensor_data(i)
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(j) = (0..n).find(|&j| bits[j] != expected[at + j]) {
            panic!(
                "{} ({}): element {j} is {:e}, ggml gives {:e}",
                t.name,
                src.tensors()[i].ty,
                f32::from_bits(bits[j]),
                f32::from_bits(expected[at + j])
            );
        }
        at += n;
    }
    assert_eq!(at, expected.len());
    let ft = got.get("general.file_type").and_then(|v| v.as_u64());
    assert_eq!(ft, Some(0), "general.file_type should say ALL_F32");
}
