//! `--imatrix` on `quantize` and `apply`, with the importance matrices of
//! fixtures/imatrix (made by fixtures/make_imatrix.py for the tiny llama
//! fixture, in the GGUF and the legacy format).
//!
//! The codecs are bit-exact with ggml (quant/tests/golden_imatrix.rs) and the
//! whole command with llama_model_quantize (tests/interop/test_imatrix.py);
//! here: the readers agree with each other, every tensor is written with
//! exactly the weights it should get, and bad imatrix files are errors that
//! name the file and the entry.

use std::path::{Path, PathBuf};

use qresidual::format::gguf::GgufFile;
use qresidual::format::imatrix::{Imatrix, Lookup};
use qresidual::quant::{dequantize_row, quantize_row, quantize_row_weighted, GgmlType};

mod common;
use common::{ok, run, s, tiny_base as base};

fn imatrix_gguf() -> PathBuf {
    common::fixture_in("imatrix", "tiny.gguf")
}

fn imatrix_dat() -> PathBuf {
    common::fixture_in("imatrix", "tiny.dat")
}

/// The tensor the fixture leaves out, and the one with count 0 (GGUF).
const SKIPPED: &str = "blk.1.ffn_up.weight";
const ZERO_COUNT: &str = "blk.0.attn_k.weight";

#[test]
fn both_formats_decode_to_the_same_weights() {
    let g = Imatrix::open(&imatrix_gguf()).unwrap();
    let d = Imatrix::open(&imatrix_dat()).unwrap();
    assert!(!g.legacy && d.legacy);
    assert_eq!(g.len(), d.len());
    assert_eq!(g.chunk_count, 4);
    assert_eq!(g.datasets, vec!["make_imatrix.py".to_string()]);
    assert_eq!(d.datasets, g.datasets);
    let model = GgufFile::open(&base()).unwrap();
    let mut compared = 0;
    for t in model.tensors().iter().filter(|t| t.ne.len() >= 2) {
        let (a, b) = (g.get(&t.name), d.get(&t.name));
        if t.name == SKIPPED {
            assert!(a.is_none() && b.is_none());
            assert_eq!(g.lookup(&t.name, &t.ne).unwrap(), Lookup::Missing);
            continue;
        }
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.len(), t.ne[0] as usize, "{}", t.name);
        if t.name == ZERO_COUNT {
            // count 0: llama-quantize uses weight 1 for every column.
            assert!(a.iter().all(|&v| v == 1.0));
            assert!(b.iter().any(|&v| v != 1.0));
        } else {
            assert_eq!(a, b, "{}", t.name);
            assert!(a.iter().all(|&v| v > 0.0 && v.is_finite()));
        }
        assert_eq!(g.lookup(&t.name, &t.ne).unwrap(), Lookup::Weights(a));
        compared += 1;
    }
    assert!(compared >= 15);
}

/// Decoded rows of tensor `i` of `f`.
fn decoded(f: &GgufFile, i: usize) -> Vec<f32> {
    let t = &f.tensors()[i];
    let mut out = vec![0f32; t.n_elements() as usize];
    let rl = t.row_len() as usize;
    let rb = t.ty.row_size(rl).unwrap();
    for (src, dst) in f.tensor_data(i).chunks(rb).zip(out.chunks_mut(rl)) {
        dequantize_row(t.ty, src, dst).unwrap();
    }
    out
}

/// `rows` encoded as `ty`, with `w` when given.
fn encode(ty: GgmlType, rows: &[f32], row_len: usize, w: Option<&[f32]>) -> Vec<u8> {
    let rb = ty.row_size(row_len).unwrap();
    let mut out = vec![0u8; rows.len() / row_len * rb];
    for (src, dst) in rows.chunks(row_len).zip(out.chunks_mut(rb)) {
        match w {
            Some(w) => quantize_row_weighted(ty, src, w, dst).unwrap(),
            None => quantize_row(ty, src, dst).unwrap(),
        }
    }
    out
}

/// Every tensor of `out` is `target(i)` encoded as its type, with the
/// imatrix weights where the type uses them and the entry exists. Returns
/// how many tensors were checked weighted.
fn check_weighted(
    out: &Path,
    input: &Path,
    m: &Imatrix,
    target: &dyn Fn(usize) -> Vec<f32>,
) -> usize {
    let o = GgufFile::open(out).unwrap();
    let b = GgufFile::open(input).unwrap();
    let mut weighted = 0;
    for (i, t) in o.tensors().iter().enumerate() {
        assert_eq!(t.name, b.tensors()[i].name);
        if !t.ty.is_quantized() {
            continue;
        }
        let w = match m.lookup(&t.name, &t.ne).unwrap() {
            Lookup::Weights(w) if qresidual::quant::uses_importance(t.ty) => Some(w),
            _ => None,
        };
        let want = encode(t.ty, &target(i), t.row_len() as usize, w);
        assert!(
            o.tensor_data(i) == want.as_slice(),
            "{}: bytes differ from {} encoding",
            t.name,
            if w.is_some() {
                "weighted"
            } else {
                "unweighted"
            }
        );
        weighted += usize::from(w.is_some());
    }
    weighted
}

/// An F32 model off any quantization grid: the tiny base plus its residual.
fn f32_model(path: &Path) {
    let res = common::tiny("residual-gguf-names.safetensors");
    ok(&[
        "apply",
        "--base",
        s(&base()),
        "--residual",
        s(&res),
        "--type",
        "f32",
        "-o",
        s(path),
        "-q",
    ]);
}

#[test]
fn quantize_with_imatrix_encodes_every_tensor_with_its_weights() {
    let dir = tempfile::tempdir().unwrap();
    let (f32_in, plain, wg, wd) = (
        dir.path().join("f32.gguf"),
        dir.path().join("plain.gguf"),
        dir.path().join("g.gguf"),
        dir.path().join("d.gguf"),
    );
    // From float, as llama-quantize is used, and off the Q4_K grid: the
    // base plus its residual (a dequantized Q4_K_M requantizes to the same
    // bytes with or without importance).
    f32_model(&f32_in);
    ok(&[
        "quantize",
        s(&f32_in),
        "-o",
        s(&plain),
        "--type",
        "q4_k_m",
        "-q",
    ]);
    let err = ok(&[
        "quantize",
        s(&f32_in),
        "-o",
        s(&wg),
        "--type",
        "q4_k_m",
        "--imatrix",
        s(&imatrix_gguf()),
    ]);
    assert!(
        err.contains("no imatrix data") && err.contains(SKIPPED),
        "note about the missing entry expected: {err}"
    );
    ok(&[
        "quantize",
        s(&f32_in),
        "-o",
        s(&wd),
        "--type",
        "q4_k_m",
        "--imatrix",
        s(&imatrix_dat()),
        "-q",
    ]);
    // The keys llama-quantize --imatrix writes.
    let og = GgufFile::open(&wg).unwrap();
    let key = |k: &str| og.get(k).cloned();
    use qresidual::format::gguf::MetaValue;
    assert_eq!(
        key("quantize.imatrix.file"),
        Some(MetaValue::String(s(&imatrix_gguf()).to_string()))
    );
    assert_eq!(
        key("quantize.imatrix.dataset"),
        Some(MetaValue::String("make_imatrix.py".into()))
    );
    assert_eq!(
        key("quantize.imatrix.entries_count"),
        Some(MetaValue::U32(16))
    );
    assert_eq!(
        key("quantize.imatrix.chunks_count"),
        Some(MetaValue::U32(4))
    );
    assert!(GgufFile::open(&plain)
        .unwrap()
        .get("quantize.imatrix.file")
        .is_none());
    let b = GgufFile::open(&f32_in).unwrap();
    let target = |i: usize| decoded(&b, i);
    let g = Imatrix::open(&imatrix_gguf()).unwrap();
    let d = Imatrix::open(&imatrix_dat()).unwrap();
    let n = check_weighted(&wg, &f32_in, &g, &target);
    assert!(n >= 14, "only {n} tensors weighted");
    assert_eq!(check_weighted(&wd, &f32_in, &d, &target), n);

    // The importance changes the bytes; the two formats differ only where
    // the GGUF count is 0; the unweighted tensor is as without --imatrix.
    let (p, og, od) = (
        GgufFile::open(&plain).unwrap(),
        GgufFile::open(&wg).unwrap(),
        GgufFile::open(&wd).unwrap(),
    );
    let mut changed = 0;
    for (i, t) in p.tensors().iter().enumerate() {
        let same_pg = p.tensor_data(i) == og.tensor_data(i);
        if t.name == SKIPPED || !t.ty.is_quantized() {
            assert!(same_pg, "{}", t.name);
        } else if !same_pg {
            changed += 1;
        }
        assert_eq!(
            og.tensor_data(i) == od.tensor_data(i),
            t.name != ZERO_COUNT,
            "{}",
            t.name
        );
    }
    assert!(changed >= 14, "only {changed} tensors changed");
}

#[test]
fn apply_with_imatrix_encodes_base_plus_residual_weighted() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let res = common::tiny("residual-gguf-names.safetensors");
    ok(&[
        "apply",
        "--base",
        s(&base()),
        "--residual",
        s(&res),
        "-o",
        s(&out),
        "--strategy",
        "fresh",
        "--imatrix",
        s(&imatrix_gguf()),
        "-q",
    ]);
    let bytes = std::fs::read(&res).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let b = GgufFile::open(&base()).unwrap();
    let target = |i: usize| {
        let mut x = decoded(&b, i);
        if let Ok(v) = st.tensor(&b.tensors()[i].name) {
            assert_eq!(v.dtype(), safetensors::Dtype::F16);
            for (xi, c) in x.iter_mut().zip(v.data().chunks_exact(2)) {
                *xi += half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
        }
        x
    };
    let m = Imatrix::open(&imatrix_gguf()).unwrap();
    assert!(check_weighted(&out, &base(), &m, &target) >= 14);
}

/// Under auto, `--imatrix` leaves the tensors that keep their type to
/// dithered re-rounding on the base's scales (where importance does not
/// enter: the same bytes as without it) and encodes the moved ones with
/// their weights.
#[test]
fn auto_with_imatrix_dithers_kept_tensors_and_weights_moved_ones() {
    let dir = tempfile::tempdir().unwrap();
    let res = common::tiny("residual-gguf-names.safetensors");
    let base_path = base();
    let (with, without) = (
        dir.path().join("with.gguf"),
        dir.path().join("without.gguf"),
    );
    let run = |out: &Path, extra: &[&str]| {
        let mut v = vec![
            "apply",
            "--base",
            s(&base_path),
            "--residual",
            s(&res),
            "-o",
            s(out),
            "-q",
        ];
        v.extend_from_slice(extra);
        ok(&v);
    };
    run(&with, &["--imatrix", s(&imatrix_gguf())]);
    run(&without, &[]);
    let (w, wo, b) = (
        GgufFile::open(&with).unwrap(),
        GgufFile::open(&without).unwrap(),
        GgufFile::open(&base()).unwrap(),
    );
    let m = Imatrix::open(&imatrix_gguf()).unwrap();
    let st_bytes = std::fs::read(&res).unwrap();
    let st = safetensors::SafeTensors::deserialize(&st_bytes).unwrap();
    let (mut kept, mut moved) = (0, 0);
    for (i, t) in w.tensors().iter().enumerate() {
        assert_eq!(
            t.ty,
            wo.tensors()[i].ty,
            "{}: the plan ignores importance",
            t.name
        );
        let has_residual = st.tensor(&t.name).is_ok();
        if !t.ty.is_quantized() || !has_residual {
            continue;
        }
        if t.ty == b.tensors()[i].ty {
            assert!(qresidual::quant::has_dither(t.ty), "{}", t.name);
            assert_eq!(
                w.tensor_data(i),
                wo.tensor_data(i),
                "{}: dithered alike",
                t.name
            );
            assert_ne!(
                w.tensor_data(i),
                b.tensor_data(i),
                "{}: the residual changed nothing",
                t.name
            );
            kept += 1;
        } else {
            let mut x = decoded(&b, i);
            let v = st.tensor(&t.name).unwrap();
            for (xi, c) in x.iter_mut().zip(v.data().chunks_exact(2)) {
                *xi += half::f16::from_le_bytes([c[0], c[1]]).to_f32();
            }
            let wts = match m.lookup(&t.name, &t.ne).unwrap() {
                Lookup::Weights(wts) if qresidual::quant::uses_importance(t.ty) => Some(wts),
                _ => None,
            };
            assert_eq!(
                w.tensor_data(i),
                &encode(t.ty, &x, t.row_len() as usize, wts)[..],
                "{}",
                t.name
            );
            if wts.is_some() {
                assert_ne!(
                    w.tensor_data(i),
                    wo.tensor_data(i),
                    "{}: weights changed nothing",
                    t.name
                );
            }
            moved += 1;
        }
    }
    assert!(kept > 0 && moved > 0, "kept {kept}, moved {moved}");
}

fn call(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn legacy(entries: &[(&str, i32, Vec<f32>)]) -> Vec<u8> {
    let mut b = (entries.len() as i32).to_le_bytes().to_vec();
    for (name, ncall, v) in entries {
        b.extend((name.len() as i32).to_le_bytes());
        b.extend(name.as_bytes());
        b.extend(ncall.to_le_bytes());
        b.extend((v.len() as i32).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
    }
    b
}

/// Exit code 1, one `error:` line naming every needle, no output file.
fn fails(args: &[&str], code: i32, needles: &[&str], output: &Path) {
    let out = run(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "expected '{n}' in: {err}");
    }
    assert!(!output.exists());
}

#[test]
fn bad_imatrix_files_are_errors_naming_file_and_entry() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.gguf");
    let f32_in = dir.path().join("f32.gguf");
    f32_model(&f32_in);
    let q = |im: &Path, ty: &str| {
        vec![
            "quantize".to_string(),
            s(&f32_in).to_string(),
            "-o".into(),
            s(&out).to_string(),
            "--type".into(),
            ty.to_string(),
            "--imatrix".into(),
            s(im).to_string(),
        ]
    };

    // Wrong length for a tensor of the model.
    let p = dir.path().join("short.dat");
    std::fs::write(&p, legacy(&[("blk.0.attn_q.weight", 1, vec![1.0; 100])])).unwrap();
    fails(
        &call(&q(&p, "q4_k_m")),
        1,
        &["short.dat", "blk.0.attn_q.weight", "100", "256"],
        &out,
    );
    // token_embd of the wrong size is tolerated, as in llama-quantize.
    let p = dir.path().join("embd.dat");
    std::fs::write(&p, legacy(&[("token_embd.weight", 1, vec![1.0; 100])])).unwrap();
    let err = ok(&call(&q(&p, "q4_k_m")));
    assert!(
        err.contains("token_embd.weight") && err.contains("without"),
        "{err}"
    );
    std::fs::remove_file(&out).unwrap();
    // Negative and non-finite weights.
    for (bad, tag) in [(-1.0f32, "neg"), (f32::NAN, "nan"), (f32::INFINITY, "inf")] {
        let p = dir.path().join(format!("{tag}.dat"));
        let mut v = vec![1.0f32; 256];
        v[3] = bad;
        std::fs::write(&p, legacy(&[("blk.0.attn_q.weight", 1, v)])).unwrap();
        fails(
            &call(&q(&p, "q4_k_m")),
            1,
            &[&format!("{tag}.dat"), "blk.0.attn_q.weight", "column 3"],
            &out,
        );
    }
    // Truncated legacy file.
    let p = dir.path().join("trunc.dat");
    let mut b = legacy(&[("a.weight", 1, vec![1.0; 8]), ("b.weight", 1, vec![1.0; 8])]);
    b.truncate(b.len() - 5);
    std::fs::write(&p, b).unwrap();
    fails(&call(&q(&p, "q4_k_m")), 1, &["trunc.dat", "entry 2"], &out);
    // A GGUF model is not an imatrix (no in_sum2/counts, no metadata).
    fails(
        &call(&q(&base(), "q4_k_m")),
        1,
        &["base-q4_k_m.gguf", "imatrix"],
        &out,
    );
    // Mixes whose types depend on the imatrix in llama.cpp are refused.
    fails(
        &call(&q(&imatrix_gguf(), "mix:q4_0")),
        2,
        &["--imatrix", "q4_0"],
        &out,
    );
    // IQ2 and friends still cannot be written.
    fails(&call(&q(&imatrix_gguf(), "iq2_xxs")), 2, &["iq2_xxs"], &out);
}

#[test]
fn expert_tensors_use_one_importance_slice_per_expert() {
    use qresidual::format::gguf::{GgufWriter, MetaValue, TensorSpec, WriterOptions};
    let dir = tempfile::tempdir().unwrap();
    let (fin, out, im) = (
        dir.path().join("moe.gguf"),
        dir.path().join("out.gguf"),
        dir.path().join("moe.dat"),
    );
    // 3 experts × 4 rows × 256 columns, off any grid.
    let (ne0, ne1, ne2) = (256usize, 4usize, 3usize);
    let x: Vec<f32> = (0..ne0 * ne1 * ne2)
        .map(|i| ((i as f32 * 0.7311).sin() * 0.05) + ((i % 17) as f32 * 1e-3))
        .collect();
    let md = vec![(
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    )];
    let name = "blk.0.ffn_up_exps.weight";
    let spec = TensorSpec {
        name: name.into(),
        ty: GgmlType::F32,
        ne: vec![ne0 as u64, ne1 as u64, ne2 as u64],
    };
    let mut w = GgufWriter::create(&fin, &md, &[spec], &WriterOptions::default()).unwrap();
    w.write(&x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    w.finish().unwrap();
    // Very different importance per expert.
    let imp: Vec<f32> = (0..ne0 * ne2)
        .map(|i| {
            let (e, c) = (i / ne0, i % ne0);
            if (c + 7 * e) % (e + 2) == 0 {
                50.0
            } else {
                0.01
            }
        })
        .collect();
    std::fs::write(&im, legacy(&[(name, 1, imp.clone())])).unwrap();
    ok(&[
        "quantize",
        s(&fin),
        "-o",
        s(&out),
        "--type",
        "q4_k",
        "--imatrix",
        s(&im),
        "-q",
    ]);
    let o = GgufFile::open(&out).unwrap();
    let t = &o.tensors()[0];
    assert_eq!(t.ty, GgmlType::Q4_K);
    let rb = GgmlType::Q4_K.row_size(ne0).unwrap();
    let got = o.tensor_data(0);
    for r in 0..ne1 * ne2 {
        let e = r / ne1;
        let row = &x[r * ne0..(r + 1) * ne0];
        let mut want = vec![0u8; rb];
        quantize_row_weighted(GgmlType::Q4_K, row, &imp[e * ne0..(e + 1) * ne0], &mut want)
            .unwrap();
        assert_eq!(
            &got[r * rb..(r + 1) * rb],
            &want[..],
            "row {r} (expert {e})"
        );
        // Another expert's slice gives other bytes: the slice matters.
        let other = (e + 1) % ne2;
        let mut alt = vec![0u8; rb];
        quantize_row_weighted(
            GgmlType::Q4_K,
            row,
            &imp[other * ne0..(other + 1) * ne0],
            &mut alt,
        )
        .unwrap();
        assert_ne!(alt, want, "row {r}: slices {e} and {other} encode alike");
    }
}

/// An IQ2_XXS base (which only exists with an importance matrix) takes a
/// residual with `--imatrix`: the tensor is re-encoded with its weights;
/// without an imatrix, or without an entry for it, nothing is written.
#[test]
fn iq2_xxs_base_is_requantized_with_imatrix() {
    use qresidual::format::gguf::{GgufWriter, MetaValue, TensorSpec, WriterOptions};
    use qresidual::format::st::SafetensorsWriter;
    let dir = tempfile::tempdir().unwrap();
    let (fin, res, out, im, other) = (
        dir.path().join("iq2.gguf"),
        dir.path().join("res.safetensors"),
        dir.path().join("out.gguf"),
        dir.path().join("im.dat"),
        dir.path().join("other.dat"),
    );
    let (cols, rows) = (512usize, 6usize);
    let name = "blk.0.ffn_down.weight";
    let x: Vec<f32> = (0..cols * rows)
        .map(|i| (i as f32 * 0.377).sin() * 0.04)
        .collect();
    let w: Vec<f32> = (0..cols).map(|c| 0.1 + (c % 13) as f32).collect();
    let ty = GgmlType::IQ2_XXS;
    let rb = ty.row_size(cols).unwrap();
    let mut base_bytes = vec![0u8; rb * rows];
    for (src, dst) in x.chunks(cols).zip(base_bytes.chunks_mut(rb)) {
        quantize_row_weighted(ty, src, &w, dst).unwrap();
    }
    let md = vec![(
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    )];
    let spec = TensorSpec {
        name: name.into(),
        ty,
        ne: vec![cols as u64, rows as u64],
    };
    let mut g = GgufWriter::create(&fin, &md, &[spec], &WriterOptions::default()).unwrap();
    g.write(&base_bytes).unwrap();
    g.finish().unwrap();
    let delta: Vec<f32> = (0..cols * rows)
        .map(|i| (i as f32 * 1.913).cos() * 0.01)
        .collect();
    let layout = vec![(name.to_string(), safetensors::Dtype::F32, vec![rows, cols])];
    let mut sw =
        SafetensorsWriter::create(&res, &layout, std::collections::BTreeMap::new()).unwrap();
    sw.write(
        &delta
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    sw.finish().unwrap();
    std::fs::write(&im, legacy(&[(name, 1, w.clone())])).unwrap();
    std::fs::write(&other, legacy(&[("blk.0.ffn_up.weight", 1, w.clone())])).unwrap();

    let apply = |imx: Option<&Path>| {
        let mut v = vec![
            "apply".to_string(),
            "--base".into(),
            s(&fin).into(),
            "--residual".into(),
            s(&res).into(),
            "-o".into(),
            s(&out).into(),
            "-q".into(),
        ];
        if let Some(p) = imx {
            v.push("--imatrix".into());
            v.push(s(p).into());
        }
        v
    };
    fails(&call(&apply(None)), 2, &[name, "--imatrix"], &out);
    fails(&call(&apply(Some(&other))), 2, &[name, "no entry"], &out);
    ok(&call(&apply(Some(&im))));

    let o = GgufFile::open(&out).unwrap();
    assert_eq!(o.tensors()[0].ty, ty);
    let mut decoded = vec![0f32; cols * rows];
    for (src, dst) in base_bytes.chunks(rb).zip(decoded.chunks_mut(cols)) {
        dequantize_row(ty, src, dst).unwrap();
    }
    let mut want = vec![0u8; rb * rows];
    for (r, dst) in want.chunks_mut(rb).enumerate() {
        let t: Vec<f32> = (0..cols)
            .map(|c| decoded[r * cols + c] + delta[r * cols + c])
            .collect();
        quantize_row_weighted(ty, &t, &w, dst).unwrap();
    }
    assert_eq!(o.tensor_data(0), &want[..]);
    assert_ne!(&want[..], &base_bytes[..], "the residual changed nothing");
}
