//! The safetensors reader and writer, checked against the `safetensors` crate
//! and against malformed files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qresidual::format::st::{byte_len, SafetensorsModel, SafetensorsWriter, StTensor};
use qresidual::quant::GgmlType;
use qresidual::Error;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// Deterministic bytes (an LCG), so failures reproduce.
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 33) as u8
        })
        .collect()
}

type Spec = (String, Dtype, Vec<usize>);

fn specs() -> Vec<Spec> {
    vec![
        ("model.embed_tokens.weight".into(), Dtype::F16, vec![7, 5]),
        ("model.norm.weight".into(), Dtype::F32, vec![5]),
        ("scalar".into(), Dtype::BF16, vec![]),
        ("empty".into(), Dtype::F32, vec![0, 3]),
        ("ids".into(), Dtype::I64, vec![3]),
        ("flags".into(), Dtype::U8, vec![2, 2]),
    ]
}

fn n_bytes(s: &Spec) -> usize {
    s.2.iter().product::<usize>() * s.1.bitsize() / 8
}

/// Write `specs` with the crate under test, one chunk size for the whole stream.
fn write_with_ours(path: &Path, specs: &[Spec], data: &[Vec<u8>], chunk: usize) {
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let mut w = SafetensorsWriter::create(path, specs, meta).unwrap();
    let all: Vec<u8> = data.concat();
    for c in all.chunks(chunk.max(1)) {
        w.write(c).unwrap();
    }
    assert_eq!(w.remaining(), 0);
    w.finish().unwrap();
}

fn data_for(specs: &[Spec]) -> Vec<Vec<u8>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| bytes(i as u64 + 1, n_bytes(s)))
        .collect()
}

/// Write with the reference crate.
fn write_with_reference(
    path: &Path,
    specs: &[Spec],
    data: &[Vec<u8>],
    meta: Option<&[(&str, &str)]>,
) {
    let views: Vec<(String, TensorView)> = specs
        .iter()
        .zip(data)
        .map(|(s, d)| (s.0.clone(), TensorView::new(s.1, s.2.clone(), d).unwrap()))
        .collect();
    let meta = meta.map(|m| {
        m.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::HashMap<_, _>>()
    });
    safetensors::serialize_to_file(views, meta, path).unwrap();
}

#[test]
fn writer_output_reads_back_with_the_reference_crate() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let data = data_for(&specs);
    for chunk in [1, 3, 64, 1 << 20] {
        let path = dir.path().join(format!("out-{chunk}.safetensors"));
        write_with_ours(&path, &specs, &data, chunk);
        let buf = std::fs::read(&path).unwrap();
        let st = SafeTensors::deserialize(&buf).unwrap();
        assert_eq!(st.len(), specs.len());
        for (s, d) in specs.iter().zip(&data) {
            let v = st.tensor(&s.0).unwrap();
            assert_eq!(v.dtype(), s.1, "{}", s.0);
            assert_eq!(v.shape(), &s.2[..], "{}", s.0);
            assert_eq!(v.data(), &d[..], "{}", s.0);
        }
        let (n, meta) = SafeTensors::read_metadata(&buf).unwrap();
        assert_eq!((8 + n) % 8, 0, "data section is 8-byte aligned");
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        // No temporary file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }
}

#[test]
fn reader_agrees_with_the_reference_crate() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let data = data_for(&specs);
    let path = dir.path().join("ref.safetensors");
    write_with_reference(&path, &specs, &data, Some(&[("format", "pt"), ("k", "v")]));
    let m = SafetensorsModel::open(&path).unwrap();
    assert_eq!(m.path(), path.as_path());
    assert_eq!(m.shard_paths(), std::slice::from_ref(&path));
    assert_eq!(m.tensors().len(), specs.len());
    assert_eq!(m.metadata().get("k").map(String::as_str), Some("v"));
    // Sorted by offset, and offsets increase.
    for w in m.tensors().windows(2) {
        assert!(w[0].start <= w[1].start);
    }
    let buf = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&buf).unwrap();
    for (s, d) in specs.iter().zip(&data) {
        let t = m.get(&s.0).unwrap();
        assert_eq!(t.dtype, s.1);
        assert_eq!(t.shape, s.2);
        assert_eq!(t.n_elements(), s.2.iter().product::<usize>());
        assert_eq!(t.n_bytes(), d.len());
        assert_eq!(m.data(t), &d[..]);
        assert_eq!(m.data(t), st.tensor(&s.0).unwrap().data());
        assert_eq!(m.shard_path(t), path.as_path());
    }
    assert!(m.get("missing").is_none());
}

#[test]
fn reader_round_trips_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let data = data_for(&specs);
    let path = dir.path().join("rt.safetensors");
    write_with_ours(&path, &specs, &data, 5);
    let m = SafetensorsModel::open(&path).unwrap();
    // Bytes follow the order given to the writer.
    let order: Vec<&str> = m.tensors().iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<&str> = specs.iter().map(|s| s.0.as_str()).collect();
    // Zero-size tensors share an offset with their neighbour; compare the rest.
    fn nonempty<'a>(v: &[&'a str]) -> Vec<&'a str> {
        v.iter().filter(|n| **n != "empty").copied().collect()
    }
    assert_eq!(nonempty(&order), nonempty(&expected));
    for (s, d) in specs.iter().zip(&data) {
        assert_eq!(m.data(m.get(&s.0).unwrap()), &d[..]);
    }
    assert_eq!(m.metadata().get("format").map(String::as_str), Some("pt"));
}

#[test]
fn ggml_types_keep_the_layout() {
    let t = |dtype| StTensor {
        name: "x".into(),
        dtype,
        shape: vec![2, 3],
        shard: 0,
        start: 0,
        end: 0,
    };
    let cases = [
        (Dtype::F32, Some(GgmlType::F32)),
        (Dtype::F16, Some(GgmlType::F16)),
        (Dtype::BF16, Some(GgmlType::BF16)),
        (Dtype::F64, Some(GgmlType::F64)),
        (Dtype::I8, Some(GgmlType::I8)),
        (Dtype::I16, Some(GgmlType::I16)),
        (Dtype::I32, Some(GgmlType::I32)),
        (Dtype::I64, Some(GgmlType::I64)),
        (Dtype::U8, None),
        (Dtype::BOOL, None),
        (Dtype::U16, None),
        (Dtype::U32, None),
        (Dtype::U64, None),
        (Dtype::F8_E4M3, None),
    ];
    for (d, g) in cases {
        assert_eq!(t(d).ggml_type(), g, "{d:?}");
        if let Some(g) = g {
            assert_eq!(g.type_size() * 8, d.bitsize(), "{d:?}");
            assert_eq!(g.block_size(), 1, "{d:?}");
        }
    }
    assert_eq!(t(Dtype::F32).n_elements(), 6);
    let huge = StTensor {
        shape: vec![usize::MAX, 2],
        ..t(Dtype::F32)
    };
    assert_eq!(huge.n_elements(), usize::MAX);
}

/// Write a two-shard checkpoint with an index; returns the folder.
fn write_sharded(dir: &Path, weight_map: &str) -> (Vec<Spec>, Vec<Vec<u8>>) {
    let specs = specs();
    let data = data_for(&specs);
    write_with_reference(
        &dir.join("model-00001-of-00002.safetensors"),
        &specs[..3],
        &data[..3],
        Some(&[("format", "pt"), ("shard", "1")]),
    );
    write_with_reference(
        &dir.join("model-00002-of-00002.safetensors"),
        &specs[3..],
        &data[3..],
        Some(&[("format", "pt"), ("shard", "2")]),
    );
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        format!(r#"{{"metadata": {{"total_size": 1234}}, "weight_map": {weight_map}}}"#),
    )
    .unwrap();
    (specs, data)
}

fn good_weight_map() -> String {
    let a = "model-00001-of-00002.safetensors";
    let b = "model-00002-of-00002.safetensors";
    format!(
        r#"{{"model.embed_tokens.weight": "{a}", "model.norm.weight": "{a}", "scalar": "{a}",
            "empty": "{b}", "ids": "{b}", "flags": "{b}"}}"#
    )
}

#[test]
fn sharded_checkpoints_open_by_folder_and_by_index() {
    let dir = tempfile::tempdir().unwrap();
    let (specs, data) = write_sharded(dir.path(), &good_weight_map());
    for p in [
        dir.path().to_path_buf(),
        dir.path().join("model.safetensors.index.json"),
    ] {
        let m = SafetensorsModel::open(&p).unwrap();
        assert_eq!(m.path(), p.as_path());
        assert_eq!(m.shard_paths().len(), 2);
        assert!(m.shard_paths()[0].ends_with("model-00001-of-00002.safetensors"));
        assert!(m.shard_paths()[1].ends_with("model-00002-of-00002.safetensors"));
        assert_eq!(m.tensors().len(), specs.len());
        for w in m.tensors().windows(2) {
            assert!((w[0].shard, w[0].start) <= (w[1].shard, w[1].start));
        }
        for (i, (s, d)) in specs.iter().zip(&data).enumerate() {
            let t = m.get(&s.0).unwrap();
            assert_eq!(t.shard, usize::from(i >= 3), "{}", s.0);
            assert_eq!(m.data(t), &d[..], "{}", s.0);
        }
        // First shard wins; the index fills in the rest.
        assert_eq!(m.metadata().get("shard").map(String::as_str), Some("1"));
        assert_eq!(
            m.metadata().get("total_size").map(String::as_str),
            Some("1234")
        );
        assert!(SafetensorsModel::is_safetensors(&p));
    }
}

fn open_err(p: &Path) -> Error {
    match SafetensorsModel::open(p) {
        Ok(m) => panic!("{} opened: {m:?}", p.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_indexes_are_refused_naming_file_and_tensor() {
    let a = "model-00001-of-00002.safetensors";
    let b = "model-00002-of-00002.safetensors";
    let all_a = r#""model.embed_tokens.weight": "A", "model.norm.weight": "A", "scalar": "A""#
        .replace('A', a);
    let cases: Vec<(String, &str)> = vec![
        // A shard that does not exist.
        (
            format!(r#"{{{all_a}, "empty": "{b}", "ids": "{b}", "flags": "nope.safetensors"}}"#),
            "nope.safetensors",
        ),
        // A tensor listed but not stored in its shard.
        (
            format!(r#"{{{all_a}, "empty": "{b}", "ids": "{b}", "flags": "{b}", "ghost": "{b}"}}"#),
            "ghost",
        ),
        // A tensor stored but not listed.
        (
            format!(r#"{{{all_a}, "empty": "{b}", "ids": "{b}"}}"#),
            "flags",
        ),
        // A tensor assigned to the wrong shard.
        (
            format!(r#"{{{all_a}, "empty": "{b}", "ids": "{a}", "flags": "{b}"}}"#),
            "ids",
        ),
        // A tensor listed twice.
        (
            format!(r#"{{{all_a}, "empty": "{b}", "ids": "{b}", "flags": "{b}", "ids": "{b}"}}"#),
            "ids",
        ),
        // A shard outside the folder.
        (
            format!(r#"{{{all_a}, "empty": "{b}", "ids": "{b}", "flags": "../{b}"}}"#),
            "flags",
        ),
        ("{}".to_string(), "no tensors"),
        ("[]".to_string(), "index"),
        ("not json".to_string(), "index"),
    ];
    for (map, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        write_sharded(dir.path(), &map);
        if map == "not json" {
            std::fs::write(dir.path().join("model.safetensors.index.json"), "not json").unwrap();
        }
        let e = open_err(dir.path()).to_string();
        assert!(e.contains(needle), "{map}: {e}");
        assert!(e.contains(&dir.path().display().to_string()), "{map}: {e}");
    }
}

/// A file with a hand-written header and `data_len` bytes of data.
fn raw_file(dir: &Path, name: &str, header: &str, data_len: usize) -> PathBuf {
    let mut buf = (header.len() as u64).to_le_bytes().to_vec();
    buf.extend_from_slice(header.as_bytes());
    buf.resize(buf.len() + data_len, 0u8);
    let p = dir.join(name);
    std::fs::write(&p, buf).unwrap();
    p
}

#[test]
fn bad_headers_are_refused_naming_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}"#,
            4,
            "w",
        ),
        (
            r#"{"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}"#,
            8,
            "w",
        ),
        (
            r#"{"w": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}"#,
            8,
            "w",
        ),
        (
            r#"{"w": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 8]}}"#,
            8,
            "overflows",
        ),
        (
            r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F16", "shape": [2], "data_offsets": [4, 8]}}"#,
            8,
            "overlap",
        ),
        (
            r#"{"w": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}"#,
            8,
            "w",
        ),
        (
            r#"{"w": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}"#,
            8,
            "w",
        ),
        (r#"{"w": {"dtype": "F32", "shape": [2]}}"#, 8, "w"),
        (r#"{"__metadata__": {"a": 1}}"#, 0, "__metadata__"),
        (
            r#"{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}"#,
            8,
            "twice",
        ),
        (r#"[1, 2]"#, 0, "JSON object"),
        ("{not json", 0, "JSON"),
    ];
    for (i, (header, data_len, needle)) in cases.into_iter().enumerate() {
        let p = raw_file(dir.path(), &format!("bad{i}.safetensors"), header, data_len);
        let e = open_err(&p).to_string();
        assert!(e.contains(needle), "{header}: {e}");
        assert!(e.contains(&p.display().to_string()), "{header}: {e}");
    }
    // A header length larger than the file.
    let p = dir.path().join("long.safetensors");
    let mut buf = 1_000u64.to_le_bytes().to_vec();
    buf.extend_from_slice(b"{}");
    std::fs::write(&p, &buf).unwrap();
    assert!(open_err(&p).to_string().contains("header length 1000"));
    // Shorter than the length field.
    std::fs::write(&p, [1u8, 2, 3]).unwrap();
    assert!(open_err(&p).to_string().contains("too short"));
    // Gaps between tensors and trailing bytes are tolerated.
    let p = raw_file(
        dir.path(),
        "gap.safetensors",
        r#"{"a": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}}"#,
        10,
    );
    let m = SafetensorsModel::open(&p).unwrap();
    assert_eq!(m.data(m.get("a").unwrap()).len(), 2);
}

#[test]
fn every_truncation_and_many_corruptions_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let data = data_for(&specs);
    let good = dir.path().join("good.safetensors");
    write_with_reference(&good, &specs, &data, None);
    let buf = std::fs::read(&good).unwrap();
    let p = dir.path().join("cut.safetensors");
    for len in 0..buf.len() {
        std::fs::write(&p, &buf[..len]).unwrap();
        // The last tensors may be zero-sized, so a cut inside the data section
        // fails; any cut does, since the crate pads nothing after the data.
        assert!(
            SafetensorsModel::open(&p).is_err(),
            "truncated to {len} opened"
        );
    }
    // Random single-byte corruptions: may open or not, must never panic, and
    // whatever opens must hand out in-bounds slices of the right size; and
    // whatever the `safetensors` crate accepts must open with the same table.
    for i in 0..400u64 {
        let mut b = buf.clone();
        let r = bytes(1000 + i, 2);
        let pos = (r[0] as usize * 256 + r[1] as usize) % b.len();
        b[pos] ^= bytes(i, 1)[0] | 1;
        std::fs::write(&p, &b).unwrap();
        qresidual::fuzz_entry::st_header(&b);
        if let Ok(m) = SafetensorsModel::open(&p) {
            for t in m.tensors() {
                assert_eq!(Ok(m.data(t).len()), byte_len(t.dtype, &t.shape));
            }
        }
    }
}

#[test]
fn folders_resolve_to_their_checkpoint() {
    let specs = specs();
    let data = data_for(&specs);
    // model.safetensors in a folder.
    let dir = tempfile::tempdir().unwrap();
    write_with_reference(&dir.path().join("model.safetensors"), &specs, &data, None);
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert!(m.shard_paths()[0].ends_with("model.safetensors"));
    assert!(SafetensorsModel::is_safetensors(dir.path()));
    // One differently named file.
    let dir = tempfile::tempdir().unwrap();
    write_with_reference(&dir.path().join("adapter.safetensors"), &specs, &data, None);
    let m = SafetensorsModel::open(dir.path()).unwrap();
    assert!(m.shard_paths()[0].ends_with("adapter.safetensors"));
    // Two files and no index: ambiguous.
    write_with_reference(&dir.path().join("other.safetensors"), &specs, &data, None);
    assert!(open_err(dir.path()).to_string().contains("name the file"));
    // Nothing at all.
    let dir = tempfile::tempdir().unwrap();
    assert!(open_err(dir.path()).to_string().contains("neither"));
    assert!(!SafetensorsModel::is_safetensors(dir.path()));
    assert!(open_err(&dir.path().join("missing"))
        .to_string()
        .contains("missing"));
}

#[test]
fn sniffing_tells_safetensors_from_gguf() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let data = data_for(&specs);
    let plain = dir.path().join("weights.bin");
    write_with_reference(&plain, &specs, &data, None);
    assert!(
        SafetensorsModel::is_safetensors(&plain),
        "sniffed by header"
    );
    let gguf = dir.path().join("model.gguf");
    let mut g = b"GGUF".to_vec();
    g.extend_from_slice(&3u32.to_le_bytes());
    g.extend_from_slice(&[0u8; 64]);
    std::fs::write(&gguf, g).unwrap();
    assert!(!SafetensorsModel::is_safetensors(&gguf));
    let tiny = dir.path().join("tiny.bin");
    std::fs::write(&tiny, [2u8, 0, 0]).unwrap();
    assert!(!SafetensorsModel::is_safetensors(&tiny));
    assert!(!SafetensorsModel::is_safetensors(
        &dir.path().join("absent.safetensors")
    ));
    // The name is enough: sniffing stays cheap.
    let named = dir.path().join("x.safetensors");
    std::fs::write(&named, b"garbage").unwrap();
    assert!(SafetensorsModel::is_safetensors(&named));
}

#[test]
fn writer_refuses_wrong_byte_counts_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let specs = specs();
    let total: usize = specs.iter().map(n_bytes).sum();
    let path = dir.path().join("w.safetensors");
    let tmp_count = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .count()
    };

    // Too few bytes: finish fails naming the first incomplete tensor.
    let mut w = SafetensorsWriter::create(&path, &specs, BTreeMap::new()).unwrap();
    assert_eq!(tmp_count(), 1);
    w.write(&[0u8; 70]).unwrap(); // the first tensor is 7*5*2 bytes
    let e = w.finish().unwrap_err().to_string();
    assert!(
        e.contains("model.norm.weight") && e.contains("w.safetensors"),
        "{e}"
    );
    assert!(!path.exists());
    assert_eq!(tmp_count(), 0);

    // Too many bytes.
    let mut w = SafetensorsWriter::create(&path, &specs, BTreeMap::new()).unwrap();
    assert!(w.write(&vec![0u8; total + 1]).is_err());
    drop(w);
    assert!(!path.exists());
    assert_eq!(tmp_count(), 0);

    // Dropped midway: no output, no temporary.
    let mut w = SafetensorsWriter::create(&path, &specs, BTreeMap::new()).unwrap();
    w.write(&[1, 2, 3]).unwrap();
    drop(w);
    assert!(!path.exists());
    assert_eq!(tmp_count(), 0);

    // Duplicate names.
    let mut dup = specs.clone();
    dup.push(dup[0].clone());
    let e = SafetensorsWriter::create(&path, &dup, BTreeMap::new()).unwrap_err();
    assert!(e.to_string().contains("model.embed_tokens.weight"));
    assert_eq!(tmp_count(), 0);

    // An existing file is replaced only when finished.
    std::fs::write(&path, b"old").unwrap();
    let mut w = SafetensorsWriter::create(&path, &specs, BTreeMap::new()).unwrap();
    w.write(&vec![7u8; total]).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    w.finish().unwrap();
    let m = SafetensorsModel::open(&path).unwrap();
    assert!(m.data(m.get("ids").unwrap()).iter().all(|&b| b == 7));

    // An empty checkpoint is valid.
    let empty = dir.path().join("empty.safetensors");
    SafetensorsWriter::create(&empty, &[], BTreeMap::new())
        .unwrap()
        .finish()
        .unwrap();
    let buf = std::fs::read(&empty).unwrap();
    assert_eq!(SafeTensors::deserialize(&buf).unwrap().len(), 0);
    assert_eq!(SafetensorsModel::open(&empty).unwrap().tensors().len(), 0);
}

#[test]
fn tiny_fixture_residuals_read_alike_in_every_layout() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tiny");
    let single = SafetensorsModel::open(&tiny.join("residual-f16.safetensors")).unwrap();
    let by_folder = SafetensorsModel::open(&tiny.join("residual-sharded")).unwrap();
    let by_index =
        SafetensorsModel::open(&tiny.join("residual-sharded/model.safetensors.index.json"))
            .unwrap();
    let buf = std::fs::read(tiny.join("residual-f16.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&buf).unwrap();
    assert_eq!(single.tensors().len(), reference.len());
    let total: usize = single.tensors().iter().map(StTensor::n_bytes).sum();
    for m in [&by_folder, &by_index] {
        assert_eq!(m.shard_paths().len(), 2);
        assert_eq!(m.metadata().get("total_size"), Some(&total.to_string()));
        assert_eq!(m.metadata().get("format").map(String::as_str), Some("pt"));
        assert_eq!(m.tensors().len(), single.tensors().len());
        for w in m.tensors().windows(2) {
            assert!((w[0].shard, w[0].start) < (w[1].shard, w[1].start));
        }
    }
    for t in single.tensors() {
        assert_eq!(t.ggml_type(), Some(GgmlType::F16), "{}", t.name);
        let r = reference.tensor(&t.name).unwrap();
        assert_eq!(single.data(t), r.data(), "{}", t.name);
        for m in [&by_folder, &by_index] {
            let s = m.get(&t.name).unwrap();
            assert_eq!(m.data(s), r.data(), "{}", t.name);
        }
    }
}
