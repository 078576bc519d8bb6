//! One test per row of the README's bad-input table: each bad input gives a
//! one-line error naming the file (and the tensor where there is one), the
//! documented exit code (1 bad data, 2 bad usage), no panic, nothing at the
//! output path and no temporary file.

mod common;

use std::path::Path;

use common::*;
use qresidual::quant::GgmlType;
use safetensors::Dtype;

/// A base and a good residual in a fresh folder.
fn setup() -> Dir {
    let d = Dir::new();
    write_gguf(&d.p("base.gguf"), "llama", &base_tensors());
    good_residual(&d.p("res.safetensors"));
    d
}

fn apply(d: &Dir, base: &str, res: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let (b, r) = (d.p(base), d.p(res));
    let mut args = vec![
        "apply",
        "-q",
        "--base",
        s(&b),
        "--residual",
        s(&r),
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

#[test]
fn the_good_inputs_work() {
    // The control: everything below fails only because of what it changes.
    let d = setup();
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists());
    no_temp_files(d.tmp.path());
}

#[test]
fn truncated_base() {
    let d = setup();
    let bytes = std::fs::read(d.p("base.gguf")).unwrap();
    std::fs::write(d.p("cut.gguf"), &bytes[..bytes.len() - 100]).unwrap();
    let out = d.p("out.gguf");
    let o = apply(&d, "cut.gguf", "res.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "cut.gguf",
            "blk.0.attn_q.weight",
            "not within the file bounds",
        ],
        &out,
    );
}

#[test]
fn truncated_base_header() {
    let d = setup();
    let bytes = std::fs::read(d.p("base.gguf")).unwrap();
    std::fs::write(d.p("cut.gguf"), &bytes[..60]).unwrap();
    let out = d.p("out.gguf");
    let o = apply(&d, "cut.gguf", "res.safetensors", &out, &[]);
    assert_fails(&o, 1, &["cut.gguf"], &out);
}

#[test]
fn truncated_residual() {
    let d = setup();
    let bytes = std::fs::read(d.p("res.safetensors")).unwrap();
    std::fs::write(d.p("cut.safetensors"), &bytes[..bytes.len() - 10]).unwrap();
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "cut.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "cut.safetensors",
            "blk.0.attn_q.weight",
            "outside the data section",
        ],
        &out,
    );
}

#[test]
fn residual_shape_differs() {
    let d = setup();
    write_st(
        &d.p("bad.safetensors"),
        &[(
            "blk.0.ffn_down.weight",
            Dtype::F16,
            vec![2, 64],
            f16_bytes(&ramp(128, 0.001)),
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "bad.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "bad.safetensors",
            "blk.0.ffn_down.weight",
            "differ in shape",
        ],
        &out,
    );
}

#[test]
fn residual_names_differ() {
    let d = setup();
    write_st(
        &d.p("bad.safetensors"),
        &[(
            "blk.0.no_such.weight",
            Dtype::F16,
            vec![4, 32],
            f16_bytes(&ramp(128, 0.001)),
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "bad.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "bad.safetensors",
            "blk.0.no_such.weight",
            "could not be mapped",
        ],
        &out,
    );
}

#[test]
fn residual_dtype_cannot_hold_weights() {
    let d = setup();
    write_st(
        &d.p("bad.safetensors"),
        &[(
            "blk.0.ffn_down.weight",
            Dtype::I32,
            vec![4, 32],
            vec![0u8; 512],
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "bad.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &["bad.safetensors", "blk.0.ffn_down.weight", "dtype I32"],
        &out,
    );
}

#[test]
fn residual_for_another_architecture() {
    // Hugging Face names on a base whose architecture has no name table.
    let d = Dir::new();
    write_gguf(&d.p("base.gguf"), "mamba9", &base_tensors());
    write_st(
        &d.p("res.safetensors"),
        &[(
            "model.layers.0.mlp.down_proj.weight",
            Dtype::F16,
            vec![4, 32],
            f16_bytes(&ramp(128, 0.001)),
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "res.safetensors",
            "model.layers.0.mlp.down_proj.weight",
            "architecture 'mamba9'",
        ],
        &out,
    );
}

#[test]
fn nan_in_residual() {
    let d = setup();
    let mut v = ramp(128, 0.001);
    v[37] = f32::NAN;
    write_st(
        &d.p("bad.safetensors"),
        &[(
            "blk.0.ffn_down.weight",
            Dtype::F16,
            vec![4, 32],
            f16_bytes(&v),
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "bad.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "bad.safetensors",
            "blk.0.ffn_down.weight",
            "NaN or infinity (row 1, column 5)",
        ],
        &out,
    );
}

#[test]
fn inf_in_residual() {
    let d = setup();
    let mut v = ramp(128, 0.001);
    v[0] = f32::INFINITY;
    write_st(
        &d.p("bad.safetensors"),
        &[(
            "blk.0.attn_q.weight",
            Dtype::F32,
            vec![4, 32],
            f32_bytes(&v),
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "bad.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "bad.safetensors",
            "blk.0.attn_q.weight",
            "NaN or infinity (row 0, column 0)",
        ],
        &out,
    );
}

#[test]
fn nan_in_base() {
    let d = Dir::new();
    let mut t = base_tensors();
    let mut v = ramp(128, 0.02);
    v[70] = f32::NAN;
    t[0].data = f32_bytes(&v);
    write_gguf(&d.p("base.gguf"), "llama", &t);
    good_residual(&d.p("res.safetensors"));
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "base.gguf",
            "blk.0.ffn_down.weight",
            "row 2, column 6: holds NaN",
        ],
        &out,
    );
}

#[test]
fn inf_in_base_block_scale() {
    // A Q8_0 block whose f16 scale is +Inf.
    let d = Dir::new();
    let mut t = base_tensors();
    t[1].data[34] = 0x00;
    t[1].data[35] = 0x7c;
    write_gguf(&d.p("base.gguf"), "llama", &t);
    good_residual(&d.p("res.safetensors"));
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &[
            "base.gguf",
            "blk.0.attn_q.weight",
            "row 1, column 0: holds inf",
        ],
        &out,
    );
}

#[test]
fn unknown_tensor_type() {
    let d = setup();
    let mut bytes = std::fs::read(d.p("base.gguf")).unwrap();
    // The type id follows the name and the two u64 dims of the Q8_0 tensor.
    let name = b"blk.0.attn_q.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4 + 16;
    assert_eq!(bytes[at..at + 4], GgmlType::Q8_0.id().to_le_bytes());
    bytes[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
    std::fs::write(d.p("odd.gguf"), &bytes).unwrap();
    let out = d.p("out.gguf");
    let o = apply(&d, "odd.gguf", "res.safetensors", &out, &[]);
    assert_fails(
        &o,
        1,
        &["odd.gguf", "blk.0.attn_q.weight", "unknown ggml type id 99"],
        &out,
    );
}

#[test]
fn iq_type_cannot_be_requantized() {
    let d = Dir::new();
    let mut t = base_tensors();
    // One IQ2_XXS block per row: scale 1.0 (f16), all grid indices 0.
    let mut block = vec![0u8; GgmlType::IQ2_XXS.type_size()];
    block[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
    t.push(T {
        name: "blk.0.ffn_up.weight",
        ty: GgmlType::IQ2_XXS,
        ne: vec![256, 2],
        data: [block.clone(), block].concat(),
    });
    write_gguf(&d.p("base.gguf"), "llama", &t);
    write_st(
        &d.p("res.safetensors"),
        &[(
            "blk.0.ffn_up.weight",
            Dtype::F16,
            vec![2, 256],
            f16_bytes(&ramp(512, 0.001)),
        )],
    );
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert_fails(
        &o,
        2,
        &[
            "base.gguf",
            "blk.0.ffn_up.weight",
            "importance matrix",
            "--type q2_k",
        ],
        &out,
    );
}

#[test]
fn output_equal_to_input() {
    let d = setup();
    let before = std::fs::read(d.p("base.gguf")).unwrap();
    let target = d.tmp.path().join(".").join("base.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &target, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("would overwrite the input"), "{err}");
    assert!(err.contains("base.gguf"), "{err}");
    assert_eq!(std::fs::read(d.p("base.gguf")).unwrap(), before);
    no_temp_files(d.tmp.path());
}

#[test]
fn output_equal_to_residual() {
    let d = setup();
    let before = std::fs::read(d.p("res.safetensors")).unwrap();
    let target = d.p("res.safetensors");
    let o = apply(&d, "base.gguf", "res.safetensors", &target, &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("would overwrite the input"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
    no_temp_files(d.tmp.path());
}

#[test]
fn output_folder_missing() {
    let d = setup();
    let out = d.p("nowhere/out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert_fails(&o, 2, &["nowhere", "does not exist"], &out);
}

/// A folder nobody may create files in. As root (these tests usually run
/// as root in CI containers) permission bits do not bind, so the folder is
/// made immutable with `chattr +i`; failing that, /sys, where even root
/// cannot create files.
struct ReadOnlyDir {
    path: std::path::PathBuf,
    immutable: bool,
    _tmp: Option<tempfile::TempDir>,
}

impl ReadOnlyDir {
    fn new() -> ReadOnlyDir {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_path_buf();
        if unsafe { libc::geteuid() } != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o555)).unwrap();
            return ReadOnlyDir {
                path,
                immutable: false,
                _tmp: Some(tmp),
            };
        }
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            ReadOnlyDir {
                path,
                immutable: true,
                _tmp: Some(tmp),
            }
        } else {
            ReadOnlyDir {
                path: "/sys".into(),
                immutable: false,
                _tmp: None,
            }
        }
    }
}

impl Drop for ReadOnlyDir {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.path)
                .status();
        } else if self._tmp.is_some() {
            let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o755));
        }
    }
}

#[test]
fn output_folder_not_writable() {
    let d = setup();
    let ro = ReadOnlyDir::new();
    let out = ro.path.join("out.gguf");
    // The check itself: a file cannot be created there, even by us.
    assert!(std::fs::File::create(&out).is_err());
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    let s = out.parent().unwrap().display().to_string();
    assert_fails(&o, 1, &[&s, "out.gguf"], &out);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ermission denied") || err.contains("not permitted"),
        "{err}"
    );
}

#[test]
fn disk_fills_up_mid_write() {
    // ulimit -f 2 (1 KiB blocks): the output may grow to 2 KiB; the base
    // here needs 5+ KiB.
    let d = Dir::new();
    let mut t = base_tensors();
    t.push(T {
        name: "blk.0.ffn_gate.weight",
        ty: GgmlType::F32,
        ne: vec![32, 40],
        data: f32_bytes(&ramp(1280, 0.01)),
    });
    write_gguf(&d.p("base.gguf"), "llama", &t);
    good_residual(&d.p("res.safetensors"));
    let out = d.p("out.gguf");
    let cmd = format!(
        "ulimit -f 2; exec '{}' apply -q --base '{}' --residual '{}' -o '{}' --threads 1",
        bin(),
        s(&d.p("base.gguf")),
        s(&d.p("res.safetensors")),
        s(&out)
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .output()
        .unwrap();
    assert_fails(&o, 1, &["out.gguf", "File too large"], &out);
}

#[test]
fn base_with_zero_tensors() {
    let d = Dir::new();
    write_gguf(&d.p("base.gguf"), "llama", &[]);
    good_residual(&d.p("res.safetensors"));
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "res.safetensors", &out, &[]);
    assert_fails(&o, 1, &["base.gguf", "no tensors"], &out);
}

#[test]
fn residual_with_zero_tensors() {
    let d = setup();
    write_st(&d.p("empty.safetensors"), &[]);
    let out = d.p("out.gguf");
    let o = apply(&d, "base.gguf", "empty.safetensors", &out, &[]);
    assert_fails(&o, 1, &["empty.safetensors", "no tensors"], &out);
}

/// Position of the first dimension of tensor `name` in a GGUF file's bytes.
fn dims_at(bytes: &[u8], name: &[u8]) -> usize {
    bytes.windows(name.len()).position(|w| w == name).unwrap() + name.len() + 4
}

#[test]
fn declared_100_gb_tensor_in_a_small_file_fails_fast() {
    let d = setup();
    let mut bytes = std::fs::read(d.p("base.gguf")).unwrap();
    let at = dims_at(&bytes, b"blk.0.ffn_down.weight") + 8;
    // 32 f32 per row × 800 M rows = 100 GiB.
    bytes[at..at + 8].copy_from_slice(&(800u64 << 20).to_le_bytes());
    std::fs::write(d.p("huge.gguf"), &bytes).unwrap();
    let out = d.p("out.gguf");
    let t = std::time::Instant::now();
    let o = apply(&d, "huge.gguf", "res.safetensors", &out, &[]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_fails(
        &o,
        1,
        &["huge.gguf", "blk.0.ffn_down.weight", "107374182400 bytes"],
        &out,
    );
}

#[test]
fn declared_100_gb_residual_in_a_small_file_fails_fast() {
    let d = setup();
    let header = br#"{"blk.0.ffn_down.weight":{"dtype":"F16","shape":[4,13421772800],"data_offsets":[0,107374182400]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0u8; 1000]);
    std::fs::write(d.p("huge.safetensors"), &bytes).unwrap();
    let out = d.p("out.gguf");
    let t = std::time::Instant::now();
    let o = apply(&d, "base.gguf", "huge.safetensors", &out, &[]);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert_fails(
        &o,
        1,
        &[
            "huge.safetensors",
            "blk.0.ffn_down.weight",
            "outside the data section",
        ],
        &out,
    );
}

#[test]
fn dequantize_a_model_with_zero_tensors() {
    let d = Dir::new();
    write_gguf(&d.p("empty.gguf"), "llama", &[]);
    let out = d.p("out.gguf");
    let o = run(&["dequantize", "-q", s(&d.p("empty.gguf")), "-o", s(&out)]);
    assert_fails(&o, 1, &["empty.gguf", "no tensors"], &out);
}

#[test]
fn report_path_equal_to_an_input() {
    let d = setup();
    let before = std::fs::read(d.p("base.gguf")).unwrap();
    let out = d.p("out.gguf");
    let base = d.p("base.gguf");
    let o = apply(
        &d,
        "base.gguf",
        "res.safetensors",
        &out,
        &["--report", s(&base)],
    );
    assert_fails(
        &o,
        2,
        &["base.gguf", "the report would overwrite the input"],
        &out,
    );
    assert_eq!(std::fs::read(&base).unwrap(), before);
}

#[test]
fn report_path_equal_to_the_output() {
    let d = setup();
    let out = d.p("out.gguf");
    let o = apply(
        &d,
        "base.gguf",
        "res.safetensors",
        &out,
        &["--report", s(&out)],
    );
    assert_fails(&o, 2, &["out.gguf", "would overwrite the output"], &out);
}

#[test]
fn split_outputs_that_would_overwrite_split_inputs() {
    use qresidual::format::gguf::{GgufWriter, MetaValue, TensorSpec, WriterOptions};
    let d = Dir::new();
    let t = base_tensors();
    let specs: Vec<TensorSpec> = t
        .iter()
        .map(|t| TensorSpec {
            name: t.name.into(),
            ty: t.ty,
            ne: t.ne.clone(),
        })
        .collect();
    let md = vec![(
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    )];
    let opts = WriterOptions {
        split_max_size: Some(1),
        ..Default::default()
    };
    let mut w = GgufWriter::create(&d.p("m.gguf"), &md, &specs, &opts).unwrap();
    for t in &t {
        w.write(&t.data).unwrap();
    }
    let parts = w.finish().unwrap();
    assert_eq!(parts.len(), 2);
    let before: Vec<Vec<u8>> = parts.iter().map(|p| std::fs::read(p).unwrap()).collect();
    good_residual(&d.p("res.safetensors"));
    let out = d.p("m.gguf");
    let o = apply(
        &d,
        "m-00001-of-00002.gguf",
        "res.safetensors",
        &out,
        &["--split-max-size", "1"],
    );
    assert_fails(
        &o,
        2,
        &["m.gguf", "could overwrite the input", "m-0000"],
        &out,
    );
    for (p, b) in parts.iter().zip(&before) {
        assert_eq!(&std::fs::read(p).unwrap(), b, "{} changed", p.display());
    }
}
