//! Small models written in the test, and the checks every failing run shares.
#![allow(dead_code)]

pub mod bnb;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qresidual::format::gguf::{GgufWriter, MetaValue, TensorSpec, WriterOptions};
use qresidual::format::st::SafetensorsWriter;
use qresidual::quant::{dequantize_row, quantize_row, GgmlType};
use safetensors::Dtype;

/// One tensor to write: GGUF name, type, ggml dims, raw bytes.
pub struct T {
    pub name: &'static str,
    pub ty: GgmlType,
    pub ne: Vec<u64>,
    pub data: Vec<u8>,
}

pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect()
}

/// Deterministic values in [-1, 1) from a xorshift generator seeded with `seed`.
pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

pub fn ramp(n: usize, k: f32) -> Vec<f32> {
    (0..n).map(|i| ((i * 7 % 23) as f32 - 11.0) * k).collect()
}

/// An F32 tensor `blk.0.ffn_down.weight` [4 rows × 32] and a Q8_0 tensor
/// `blk.0.attn_q.weight` [4 × 32].
pub fn base_tensors() -> Vec<T> {
    let q = ramp(128, 0.01);
    let mut q8 = vec![0u8; GgmlType::Q8_0.row_size(128).unwrap()];
    quantize_row(GgmlType::Q8_0, &q, &mut q8).unwrap();
    vec![
        T {
            name: "blk.0.ffn_down.weight",
            ty: GgmlType::F32,
            ne: vec![32, 4],
            data: f32_bytes(&ramp(128, 0.02)),
        },
        T {
            name: "blk.0.attn_q.weight",
            ty: GgmlType::Q8_0,
            ne: vec![32, 4],
            data: q8,
        },
    ]
}

pub fn write_gguf(path: &Path, arch: &str, tensors: &[T]) {
    write_gguf_with(path, arch, Vec::new(), tensors)
}

/// [`write_gguf`] with more metadata.
pub fn write_gguf_with(path: &Path, arch: &str, extra: Vec<(String, MetaValue)>, tensors: &[T]) {
    let mut md = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String(arch.to_string()),
        ),
        (format!("{arch}.attention.head_count"), MetaValue::U32(1)),
    ];
    md.extend(extra);
    let specs: Vec<TensorSpec> = tensors
        .iter()
        .map(|t| TensorSpec {
            name: t.name.to_string(),
            ty: t.ty,
            ne: t.ne.clone(),
        })
        .collect();
    let mut w = GgufWriter::create(path, &md, &specs, &WriterOptions::default()).unwrap();
    for t in tensors {
        w.write(&t.data).unwrap();
    }
    w.finish().unwrap();
}

/// A safetensors residual: (name, dtype, row-major shape, bytes).
pub fn write_st(path: &Path, tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) {
    let layout: Vec<(String, Dtype, Vec<usize>)> = tensors
        .iter()
        .map(|(n, d, s, _)| (n.to_string(), *d, s.clone()))
        .collect();
    let mut w = SafetensorsWriter::create(path, &layout, BTreeMap::new()).unwrap();
    for (_, _, _, b) in tensors {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

/// The residual matching [`base_tensors`]: F16, GGUF names.
pub fn good_residual(path: &Path) {
    write_st(
        path,
        &[
            (
                "blk.0.ffn_down.weight",
                Dtype::F16,
                vec![4, 32],
                f16_bytes(&ramp(128, 0.001)),
            ),
            (
                "blk.0.attn_q.weight",
                Dtype::F16,
                vec![4, 32],
                f16_bytes(&ramp(128, 0.002)),
            ),
        ],
    );
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qresidual")
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run qresidual")
}

/// Run qresidual, which must succeed; returns its stderr (the report).
pub fn ok(args: &[&str]) -> String {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "qresidual {args:?} failed: {err}");
    err
}

/// No file named like one of ours is left in `dir` apart from `keep`.
pub fn no_temp_files(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !n.contains("qresidual-tmp") && !n.ends_with(".tmp"),
            "temporary file {n} left behind in {}",
            dir.display()
        );
    }
}

/// The run failed with exit code `code` and exactly one line on stderr,
/// `error: …`, containing every needle; no panic; nothing at `output`; no
/// temporary file beside it.
pub fn assert_fails(out: &Output, code: i32, needles: &[&str], output: &Path) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    // Shown with --nocapture: the README's table quotes these lines.
    eprintln!("[exit {code}] {}", lines[0]);
    for n in needles {
        assert!(lines[0].contains(n), "expected '{n}' in: {err}");
    }
    assert!(!output.exists(), "{} was written", output.display());
    if let Some(dir) = output.parent().filter(|d| d.is_dir()) {
        no_temp_files(dir);
    }
}

pub struct Dir {
    pub tmp: tempfile::TempDir,
}

impl Dir {
    pub fn new() -> Dir {
        Dir {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    pub fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A shipped fixture: `fixtures/<dir>/<name>`.
pub fn fixture_in(dir: &str, name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir)
        .join(name)
}

/// A file of the shipped tiny llama (`fixtures/tiny`).
pub fn tiny(name: &str) -> PathBuf {
    fixture_in("tiny", name)
}

/// The tiny llama's Q4_K_M base.
pub fn tiny_base() -> PathBuf {
    tiny("base-q4_k_m.gguf")
}

/// `n` floats decoded from `bytes` of type `ty`.
pub fn dequant(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    dequantize_row(ty, bytes, &mut v).unwrap();
    v
}

/// Every tensor of a model folder's safetensors: (name, dtype, shape, bytes).
pub type StTensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

/// A copy of the model folder `src` as `dir/name`: its tensors changed by
/// `edit`, written as one model.safetensors, and `config` as config.json.
pub fn edited_folder(
    src: &Path,
    dir: &Dir,
    name: &str,
    config: &str,
    edit: impl Fn(&mut StTensors),
) -> PathBuf {
    let m = qresidual::format::st::SafetensorsModel::open(src).unwrap();
    let mut t: StTensors = m
        .tensors()
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), m.data(t).to_vec()))
        .collect();
    edit(&mut t);
    let out = dir.p(name);
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("config.json"), config).unwrap();
    let refs: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = t
        .iter()
        .map(|(n, d, s, b)| (n.as_str(), *d, s.clone(), b.clone()))
        .collect();
    write_st(&out.join("model.safetensors"), &refs);
    out
}

/// Every row of weight `name` of `model`, decoded.
pub fn decoded(model: &qresidual::model::Model, name: &str) -> Vec<f32> {
    let weights = model.weights().unwrap();
    let w = weights.iter().find(|w| w.name == name).unwrap();
    let rows = model
        .weight_rows(w, qresidual::model::naming::RowPermutation::Identity)
        .unwrap();
    let mut out = vec![0f32; rows.n_rows() * rows.row_len()];
    rows.decode(0, &mut out).unwrap();
    out
}

/// `apply -q --base BASE --residual RES -o OUT EXTRA…` on a model folder:
/// the output holds the base's tensors (names, dtypes, shapes); returns
/// the names of those whose bytes changed, sorted.
pub fn apply_changed(base: &Path, res: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "apply",
        "-q",
        "--base",
        s(base),
        "--residual",
        s(res),
        "-o",
        s(out),
    ];
    args.extend(extra);
    ok(&args);
    let (b, o) = (
        qresidual::format::st::SafetensorsModel::open(base).unwrap(),
        qresidual::format::st::SafetensorsModel::open(out).unwrap(),
    );
    let layout = |m: &qresidual::format::st::SafetensorsModel| {
        let mut l: Vec<_> = m
            .tensors()
            .iter()
            .map(|t| (t.name.clone(), t.dtype, t.shape.clone()))
            .collect();
        l.sort_by(|a, b| a.0.cmp(&b.0));
        l
    };
    assert_eq!(layout(&o), layout(&b), "{}", out.display());
    let mut changed: Vec<String> = b
        .tensors()
        .iter()
        .filter(|t| b.data(t) != o.data(o.get(&t.name).unwrap()))
        .map(|t| t.name.clone())
        .collect();
    changed.sort();
    changed
}
