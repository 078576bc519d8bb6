//! The malformed-file corpus (fixtures/gen_malformed.py): every file must be
//! refused with an error naming the problem, never a panic; plus truncation
//! and byte-flip sweeps over valid files.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qresidual::format::gguf::{
    GgufFile, GgufWriter, MetaArray, MetaValue, TensorSpec, ValueType, WriterOptions,
};
use qresidual::quant::GgmlType;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/malformed")
}

fn table() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(corpus_dir().join("expected.tsv")).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (f, p) = l.split_once('\t').unwrap();
            (f.to_string(), p.to_string())
        })
        .collect()
}

#[test]
fn every_malformed_file_fails_with_its_phrase() {
    let table = table();
    let mut listed: Vec<&str> = table.iter().map(|(f, _)| f.as_str()).collect();
    listed.sort();
    let mut on_disk: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gguf"))
        .collect();
    on_disk.sort();
    assert_eq!(listed, on_disk, "expected.tsv and the corpus disagree");
    assert!(table.len() >= 50);

    let mut failures = Vec::new();
    for (file, phrase) in &table {
        let path = corpus_dir().join(file);
        match (GgufFile::open(&path), phrase.as_str()) {
            (Ok(_), "OK") => {}
            (Ok(_), _) => failures.push(format!("{file}: opened, expected error with '{phrase}'")),
            (Err(e), "OK") => failures.push(format!("{file}: expected to open, got {e}")),
            (Err(e), _) => {
                let msg = e.to_string();
                if !msg.contains(phrase.as_str()) {
                    failures.push(format!("{file}: '{msg}' lacks '{phrase}'"));
                }
                if !msg.contains(file.as_str()) {
                    failures.push(format!("{file}: '{msg}' does not name the file"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn huge_declared_tensor_in_tiny_file_fails_fast() {
    let path = corpus_dir().join("tensor_100gb_in_1kb.gguf");
    assert!(std::fs::metadata(&path).unwrap().len() <= 1024);
    let t0 = Instant::now();
    let err = GgufFile::open(&path).unwrap_err();
    let took = t0.elapsed();
    eprintln!("100 GiB tensor in a 1 KB file refused in {took:?}: {err}");
    assert!(took < Duration::from_millis(100), "took {took:?}");
    for f in [
        "tensors_2e40.gguf",
        "kv_2e40.gguf",
        "array_len_beyond_file.gguf",
    ] {
        let t0 = Instant::now();
        assert!(GgufFile::open(&corpus_dir().join(f)).is_err());
        assert!(
            t0.elapsed() < Duration::from_millis(100),
            "{f} took {:?}",
            t0.elapsed()
        );
    }
}

/// A valid file using more of the format than the corpus base.
fn rich_file(dir: &Path) -> PathBuf {
    let path = dir.join("rich.gguf");
    let s = |x: &str| MetaValue::String(x.into());
    let meta = vec![
        ("general.architecture".to_string(), s("llama")),
        ("general.alignment".to_string(), MetaValue::U32(64)),
        (
            "a".to_string(),
            MetaValue::Array(MetaArray {
                elem_type: ValueType::Array,
                items: vec![MetaValue::Array(MetaArray {
                    elem_type: ValueType::String,
                    items: vec![s("x"), s("yz")],
                })],
            }),
        ),
        ("f".to_string(), MetaValue::F64(0.25)),
    ];
    let specs = vec![
        TensorSpec {
            name: "q".into(),
            ty: GgmlType::Q4_K,
            ne: vec![256, 2],
        },
        TensorSpec {
            name: "b".into(),
            ty: GgmlType::BF16,
            ne: vec![3],
        },
    ];
    let mut w = GgufWriter::create(&path, &meta, &specs, &WriterOptions::default()).unwrap();
    w.write(&vec![7u8; 288 + 6]).unwrap();
    w.finish().unwrap();
    path
}

#[test]
fn truncation_and_byte_flip_sweeps_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sources = [corpus_dir().join("valid_base.gguf"), rich_file(dir.path())];
    let probe = dir.path().join("probe.gguf");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut opened = 0;
    let mut refused = 0;
    for src in &sources {
        let good = std::fs::read(src).unwrap();
        assert!(GgufFile::open(src).is_ok());
        // every prefix; the header part must always be refused
        for len in 0..good.len() {
            std::fs::write(&probe, &good[..len]).unwrap();
            match GgufFile::open(&probe) {
                Ok(_) => opened += 1,
                Err(_) => refused += 1,
            }
        }
        // random single-byte and 8-byte corruptions in the header
        let header_len = good.len().min(600);
        for _ in 0..500 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bad = good.clone();
            let at = (seed as usize) % header_len;
            if seed & 1 == 0 {
                bad[at] ^= (seed >> 8) as u8 | 1;
            } else {
                for (i, b) in (seed >> 3).to_le_bytes().iter().enumerate() {
                    if at + i < bad.len() {
                        bad[at + i] = *b;
                    }
                }
            }
            std::fs::write(&probe, &bad).unwrap();
            match GgufFile::open(&probe) {
                Ok(f) => {
                    opened += 1;
                    // whatever opened must be internally consistent
                    for i in 0..f.tensors().len() {
                        assert_eq!(f.tensor_data(i).len() as u64, f.tensors()[i].size);
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(!e.to_string().is_empty());
                }
            }
        }
    }
    eprintln!("sweeps: {opened} opened, {refused} refused");
    assert!(refused > 500);
}

#[test]
fn valid_corpus_files_rewrite_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for (file, phrase) in table() {
        if phrase != "OK" {
            continue;
        }
        let src = corpus_dir().join(&file);
        let out = dir.path().join(&file);
        qresidual::format::gguf::edit_metadata(&src, &out, &[]).unwrap();
        let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&out).unwrap());
        if file == "valid_v2.gguf" {
            // the writer produces v3; nothing else changes
            assert_eq!(&a[4..8], &2u32.to_le_bytes());
            assert_eq!(&b[4..8], &3u32.to_le_bytes());
            assert_eq!((&a[..4], &a[8..]), (&b[..4], &b[8..]), "{file}");
        } else {
            assert!(a == b, "{file} differs after rewrite");
        }
        n += 1;
    }
    assert!(n >= 6);
}
