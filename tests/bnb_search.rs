//! `apply --strategy search` on bitsandbytes NF4/FP4 bases (fixtures/tiny_bnb
//! and the same weights re-encoded with and without double quantization):
//! per block, the search output decodes no further from the exact sum than
//! the fresh output, in f32 and after rounding to the module's float16; the
//! report counts the blocks that kept the base. No Python: outputs are
//! decoded from their stored parts with `qresidual_quant::bnb`, whose
//! decoding tests/interop/test_bnb.py checks against bitsandbytes itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::f16;
use qresidual::engine::bnb::write_model;
use qresidual::engine::progress::Progress;
use qresidual::format::st::SafetensorsModel;
use qresidual::model::bnb::{
    output_config, BnbModel, OutStorage, Storage, WeightJob, WeightOutcome, WriteOptions,
};
use qresidual::model::naming::RowPermutation;
use qresidual::model::rows::{EncodedRows, RowSource};
use qresidual::quant::bnb::{num_blocks, FourBit};
use qresidual::quant::GgmlType;
use safetensors::Dtype;
use serde_json::Value;

mod common;
use common::bnb::stored;
use common::{ok, s};

fn fixture(variant: &str) -> PathBuf {
    common::fixture_in("tiny_bnb", variant)
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16r(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

/// Re-encode every 4-bit weight of `from` as `kind` with or without double
/// quantization (no residual): another base to search from.
fn reencode(from: &Path, kind: FourBit, double_quant: bool, out: &Path) {
    let base = BnbModel::open(from).unwrap();
    let target = OutStorage::FourBit {
        kind,
        blocksize: 64,
        dtype: Dtype::F16,
        double_quant,
    };
    let out_of = |s: &Storage| match s {
        Storage::FourBit { .. } => target,
        s => OutStorage::same_as(s, Dtype::F16),
    };
    let cfg = output_config(base.config(), Some(&target), None);
    write(
        &base,
        out_of,
        &BTreeMap::new(),
        out,
        &cfg,
        WriteOptions::default(),
    );
}

/// A float16-representable residual for every 4-bit weight: rows `r` with
/// `r % 4 == 0` untouched, the others at three amplitudes (below, near and
/// above the NF4/FP4 step of these weights).
fn residuals(m: &BnbModel) -> BTreeMap<String, Vec<f32>> {
    let mut next = common::uniform(0x2545f4914f6cdd1d);
    let mut res = BTreeMap::new();
    for w in m.weights() {
        if matches!(w.storage, Storage::FourBit { .. }) {
            let v: Vec<f32> = (0..w.n_elements())
                .map(|i| {
                    let amp = [0.0, 3e-4, 3e-3, 1e-2][(i / w.row_len()) % 4];
                    f16r(next() * amp)
                })
                .collect();
            res.insert(w.name.clone(), v);
        }
    }
    res
}

/// Write `base` + residual (`res`, by weight name) with each weight's
/// storage `out_of` its base storage.
fn write(
    base: &BnbModel,
    out_of: impl Fn(&Storage) -> OutStorage,
    res: &BTreeMap<String, Vec<f32>>,
    out: &Path,
    config: &Value,
    opts: WriteOptions,
) -> Vec<WeightOutcome> {
    let bytes: BTreeMap<&str, Vec<u8>> = res
        .iter()
        .map(|(k, v)| (k.as_str(), f32_bytes(v)))
        .collect();
    let jobs: Vec<WeightJob<'_>> = base
        .weights()
        .iter()
        .enumerate()
        .map(|(i, w)| WeightJob {
            weight: i,
            out: out_of(&w.storage),
            residual: bytes.get(w.name.as_str()).map(|data| {
                Box::new(EncodedRows {
                    path: out,
                    name: &w.name,
                    data,
                    ty: GgmlType::F32,
                    row_len: w.row_len(),
                    n_rows: w.n_rows(),
                    permutation: RowPermutation::Identity,
                    pages: None,
                }) as Box<dyn RowSource + '_>
            }),
            scale: 1.0,
        })
        .collect();
    write_model(base, &jobs, config, out, &opts, &Progress::off()).unwrap()
}

/// `base` + residual with every weight kept, fresh or searched, in chunks
/// of about `chunk` elements.
fn keep(
    base: &BnbModel,
    res: &BTreeMap<String, Vec<f32>>,
    out: &Path,
    search: bool,
    chunk: usize,
) -> Vec<WeightOutcome> {
    let opts = WriteOptions {
        chunk_elements: chunk,
        search,
        ..Default::default()
    };
    let same = |s: &Storage| OutStorage::same_as(s, Dtype::F16);
    write(base, same, res, out, base.config(), opts)
}

fn sq_err(exact: &[f32], v: &[f32], round: bool) -> f64 {
    exact
        .iter()
        .zip(v)
        .map(|(&x, &y)| {
            let y = if round { f16r(y) } else { y };
            (x as f64 - y as f64).powi(2)
        })
        .sum()
}

/// The guarantee, block by block, for NF4 and FP4 with and without double
/// quantization; the wins are the blocks stored differently from fresh;
/// the nested state is fresh's; chunking does not change the bytes.
#[test]
fn search_is_never_further_from_the_sum_than_fresh_per_block() {
    let dir = tempfile::tempdir().unwrap();
    let nf4_plain = dir.path().join("nf4-plain");
    let fp4_nested = dir.path().join("fp4-nested");
    reencode(&fixture("nf4"), FourBit::Nf4, false, &nf4_plain);
    reencode(&fixture("fp4"), FourBit::Fp4, true, &fp4_nested);
    let bases = [
        (fixture("nf4"), FourBit::Nf4, true),
        (fixture("fp4"), FourBit::Fp4, false),
        (nf4_plain, FourBit::Nf4, false),
        (fp4_nested, FourBit::Fp4, true),
    ];
    for (path, kind, nested) in bases {
        let label = format!("{} nested={nested}", kind.name());
        let base = BnbModel::open(&path).unwrap();
        let res = residuals(&base);
        let tag = format!("{}-{nested}", kind.name());
        let fresh_dir = dir.path().join(format!("{tag}-fresh"));
        let search_dir = dir.path().join(format!("{tag}-search"));
        let small_dir = dir.path().join(format!("{tag}-search-small"));
        let fresh_out = keep(&base, &res, &fresh_dir, false, 1 << 18);
        let outcomes = keep(&base, &res, &search_dir, true, 1 << 18);
        // Chunks of one row (4-bit blocks) or 64 rows (nested groups).
        keep(&base, &res, &small_dir, true, 300);
        assert!(
            std::fs::read(search_dir.join("model.safetensors")).unwrap()
                == std::fs::read(small_dir.join("model.safetensors")).unwrap(),
            "{label}: the search output depends on chunking"
        );
        assert!(fresh_out.iter().all(|o| o.search.is_none()));
        let (fresh, got) = (
            SafetensorsModel::open(&fresh_dir).unwrap(),
            SafetensorsModel::open(&search_dir).unwrap(),
        );
        let (mut kept, mut blocks) = (0u64, 0u64);
        for (w, o) in base.weights().iter().zip(&outcomes) {
            let Some(d) = res.get(&w.name) else {
                assert!(o.search.is_none() && o.copied, "{}", w.name);
                continue;
            };
            let wins = o.search.expect("a 4-bit weight is searched");
            let b = stored(base.safetensors(), &w.name, kind).decode(kind);
            let exact: Vec<f32> = b.iter().zip(d).map(|(x, y)| x + y).collect();
            let f = stored(&fresh, &w.name, kind);
            let g = stored(&got, &w.name, kind);
            assert_eq!(f.nested, g.nested, "{label} {}: nested state", w.name);
            let (fv, gv) = (f.decode(kind), g.decode(kind));
            let bs = f.blocksize;
            let mut differs = 0u64;
            for blk in 0..num_blocks(f.n, bs) {
                let e = blk * bs..((blk + 1) * bs).min(f.n);
                for round in [false, true] {
                    let (ef, eg) = (
                        sq_err(&exact[e.clone()], &fv[e.clone()], round),
                        sq_err(&exact[e.clone()], &gv[e.clone()], round),
                    );
                    assert!(
                        eg <= ef,
                        "{label} {} block {blk} (f16 {round}): search {eg} > fresh {ef}",
                        w.name
                    );
                }
                if !g.same_block(&f, blk) {
                    differs += 1;
                }
                // A block the residual does not touch stays the base's
                // value (with double quantization only as nearly as the
                // fresh nested state holds its absmax).
                if !nested && (blk * bs / w.row_len()).is_multiple_of(4) {
                    assert_eq!(gv[e.clone()], b[e], "{label} {} block {blk}", w.name);
                }
            }
            assert_eq!(wins.base, differs, "{label} {}", w.name);
            assert_eq!(wins.total(), num_blocks(f.n, bs) as u64);
            assert_eq!(wins.rerounded, 0);
            let (sf, sg) = (fresh_out_stats(&fresh_out, &w.name), o.stats.unwrap());
            assert!(sg.rmse() <= sf.rmse(), "{label} {}", w.name);
            kept += wins.base;
            blocks += wins.total();
        }
        // The residual's amplitudes make both candidates win somewhere.
        assert!(kept > 0 && kept < blocks, "{label}: {kept} of {blocks}");
        BnbModel::open(&search_dir).unwrap();
    }
}

fn fresh_out_stats(outcomes: &[WeightOutcome], name: &str) -> qresidual::quant::stats::ErrorStats {
    outcomes
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| o.stats)
        .unwrap()
}

/// On the command line: the report counts the wins like GGUF's (summary
/// and per tensor), the text says how often the base was kept, and a
/// weight written in another 4-bit kind falls back to fresh, byte for byte.
#[test]
fn cli_reports_search_wins_and_falls_back_across_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let base = BnbModel::open(&fixture("nf4")).unwrap();
    let res = residuals(&base);
    let rpath = dir.path().join("residual.safetensors");
    let specs: Vec<(String, Dtype, Vec<usize>)> = res
        .keys()
        .map(|k| (k.clone(), Dtype::F16, base.weight(k).unwrap().shape.clone()))
        .collect();
    let mut wr =
        qresidual::format::st::SafetensorsWriter::create(&rpath, &specs, BTreeMap::new()).unwrap();
    for v in res.values() {
        wr.write(&common::f16_bytes(v)).unwrap();
    }
    wr.finish().unwrap();
    let nf4 = fixture("nf4");
    let run = |name: &str, extra: &[&str]| -> (PathBuf, String, Value) {
        let out = dir.path().join(name);
        let report = dir.path().join(format!("{name}.json"));
        let mut args = vec![
            "apply",
            "--base",
            s(&nf4),
            "--residual",
            s(&rpath),
            "-o",
            s(&out),
            "--report",
            s(&report),
        ];
        args.extend(extra);
        let text = ok(&args);
        let json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        (out, text, json)
    };
    let (_, text, r) = run("search", &["--strategy", "search"]);
    assert!(text.contains("search: base block kept in"), "{text}");
    assert_eq!(r["inputs"]["strategy"], "search");
    let total = &r["summary"]["search"]["total"];
    let per_tensor: u64 = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["search"]["base"].as_u64())
        .sum();
    assert!(total["base"].as_u64().unwrap() > 0);
    assert_eq!(total["base"].as_u64().unwrap(), per_tensor);
    assert_eq!(
        r["summary"]["search"]["by_output_type"]["nf4"]["tensors"],
        14
    );

    let (fresh, _, r_fresh) = run("to-fp4", &["--type", "fp4"]);
    let (searched, _, r) = run("to-fp4-search", &["--type", "fp4", "--strategy", "search"]);
    assert!(r_fresh["inputs"].get("strategy").is_none());
    assert!(
        std::fs::read(fresh.join("model.safetensors")).unwrap()
            == std::fs::read(searched.join("model.safetensors")).unwrap()
    );
    let fallback = r["summary"]["search"]["fresh_fallback"].as_array().unwrap();
    assert_eq!(fallback.len(), 14);
    assert!(fallback[0]["reason"]
        .as_str()
        .unwrap()
        .contains("output type differs"));
}
