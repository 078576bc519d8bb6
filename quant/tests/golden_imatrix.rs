//! The importance-weighted encoders (`quantize_row_weighted`) against ggml's
//! own output (`fixtures/golden_imatrix`, made by `ggml_quantize_chunk` with
//! an imatrix, see `fixtures/gen_golden_imatrix.py`), their input contract,
//! their error bounds, and whether the weighting pays off.
//!
//! **Bounds.** With importance `w` (one per column) a row's weighted relative
//! error is `E_w = √(Σ w·(x − x̂)² / Σ w·x²)`. The encoders minimise a
//! weighted squared error per block, so a column of weight 0 may be clipped
//! freely; the per-element bound is therefore stated against the block's
//! magnitude: `|x − x̂| ≤ C_blk · max_block |x|` (block = the type's block,
//! 32 or 256 elements). Both are checked on `varied_rows` (Gaussian,
//! Student-t, outlier, zero blocks, constants, huge, cosine; `tiny`
//! excluded as in the unweighted bounds: fp16 underflow of the scales) ×
//! four importance vectors (ones, uniform, 30 % zeros, log-normal σ = 2.5),
//! four seeds.
//!
//! | type   | E_w bound | C_blk bound | measured max E_w / C_blk |
//! |--------|-----------|-------------|--------------------------|
//! | Q4_0   | 0.16      | 0.30        | see `--nocapture`        |
//!
//! (The table is filled in from the measurements of `weighted_error_bounds`;
//! see BOUNDS below, which the test enforces.)
mod common;

use common::{varied_rows, Rng};
use qresidual_quant::{
    dequantize_row, quantize_row, quantize_row_weighted, uses_importance, GgmlType, QuantError,
};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden_imatrix")
}

fn read_f32(name: &str) -> Vec<f32> {
    let p = dir().join(name);
    let b = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// (name, rows, cols) of every case in the manifest, and the number of
/// importance vectors.
fn manifest() -> (Vec<(String, usize, usize)>, usize) {
    let m = std::fs::read_to_string(dir().join("manifest.json")).expect("golden_imatrix manifest");
    let cases_part = m.split("\"importance\"").next().unwrap();
    let mut cases = Vec::new();
    for chunk in cases_part.split("\"name\": \"").skip(1) {
        let name = chunk.split('"').next().unwrap().to_string();
        let field = |key: &str| -> usize {
            let rest = chunk.split(&format!("\"{key}\": ")).nth(1).unwrap();
            rest.split(|c: char| !c.is_ascii_digit())
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        cases.push((name, field("rows"), field("cols")));
    }
    let imp = m.split("\"importance\": [").nth(1).unwrap();
    let n_imp = imp.split(']').next().unwrap().matches('"').count() / 2;
    (cases, n_imp)
}

const GOLDEN_TYPES: [GgmlType; 14] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::F16,
    GgmlType::BF16,
];

fn assert_golden(ty: GgmlType) {
    let (cases, n_imp) = manifest();
    assert!(cases.len() >= 10 && n_imp >= 5, "manifest too small");
    for (name, rows, cols) in cases {
        let x = read_f32(&format!("{name}.f32"));
        let imp = read_f32(&format!("{name}.imp"));
        assert_eq!(x.len(), rows * cols);
        assert_eq!(imp.len(), n_imp * cols);
        let want = std::fs::read(dir().join(format!("{name}.{}.q", ty.name()))).unwrap();
        let rb = ty.row_size(cols).unwrap();
        assert_eq!(want.len(), n_imp * rows * rb, "{name} {ty}");
        for (k, w) in imp.chunks_exact(cols).enumerate() {
            for (r, src) in x.chunks_exact(cols).enumerate() {
                let mut got = vec![0u8; rb];
                quantize_row_weighted(ty, src, w, &mut got)
                    .unwrap_or_else(|e| panic!("{name} row {r}: {e}"));
                let off = (k * rows + r) * rb;
                let exp = &want[off..off + rb];
                if got != exp {
                    let i = got.iter().zip(exp).position(|(a, b)| a != b).unwrap();
                    panic!(
                        "{ty} weighted quantize differs from ggml on case '{name}', importance #{k}, row {r}, byte {i} (block {}): ours {:#04x}, ggml {:#04x}",
                        i / ty.type_size(),
                        got[i],
                        exp[i]
                    );
                }
            }
        }
    }
}

macro_rules! golden {
    ($($f:ident, $ty:ident;)*) => {$(
        #[test]
        fn $f() {
            assert_golden(GgmlType::$ty);
        }
    )*};
}

golden! {
    q4_0_weighted_matches_ggml, Q4_0;
    q4_1_weighted_matches_ggml, Q4_1;
    q5_0_weighted_matches_ggml, Q5_0;
    q5_1_weighted_matches_ggml, Q5_1;
    q8_0_weighted_matches_ggml, Q8_0;
    q2_k_weighted_matches_ggml, Q2_K;
    q3_k_weighted_matches_ggml, Q3_K;
    q4_k_weighted_matches_ggml, Q4_K;
    q5_k_weighted_matches_ggml, Q5_K;
    q6_k_weighted_matches_ggml, Q6_K;
    iq4_nl_weighted_matches_ggml, IQ4_NL;
    iq4_xs_weighted_matches_ggml, IQ4_XS;
    f16_weighted_matches_ggml, F16;
    bf16_weighted_matches_ggml, BF16;
}

#[test]
fn golden_covers_every_weighted_type() {
    for &ty in qresidual_quant::ALL_TYPES.iter() {
        if uses_importance(ty) {
            assert!(GOLDEN_TYPES.contains(&ty), "{ty} has no golden vectors");
        }
    }
}

/// The types whose encoder ignores the importance encode as `quantize_row`;
/// the others do not (on Gaussian data with uneven importance).
#[test]
fn importance_used_exactly_where_ggml_uses_it() {
    let x: Vec<f32> = {
        let mut r = Rng::new(5);
        (0..512).map(|_| r.normal() as f32).collect()
    };
    let w: Vec<f32> = {
        let mut r = Rng::new(6);
        (0..512).map(|_| (2.5 * r.normal()).exp() as f32).collect()
    };
    for ty in GOLDEN_TYPES {
        let n = ty.row_size(512).unwrap();
        let (mut a, mut b) = (vec![0u8; n], vec![0u8; n]);
        quantize_row(ty, &x, &mut a).unwrap();
        quantize_row_weighted(ty, &x, &w, &mut b).unwrap();
        assert_eq!(a == b, !uses_importance(ty), "{ty}");
    }
}

#[test]
fn bad_input_is_an_error() {
    let x = vec![0.5f32; 256];
    let w = vec![1.0f32; 256];
    let mut out = vec![0u8; GgmlType::Q4_K.row_size(256).unwrap()];
    for ty in [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q4_0] {
        let mut out = vec![0u8; ty.row_size(256).unwrap()];
        assert!(matches!(
            quantize_row_weighted(ty, &x, &w[..255], &mut out),
            Err(QuantError::BadImportance {
                len: 255,
                expected: 256,
                entry: None
            })
        ));
        for bad in [f32::NAN, f32::INFINITY, -1.0] {
            let mut w2 = w.clone();
            w2[9] = bad;
            match quantize_row_weighted(ty, &x, &w2, &mut out) {
                Err(QuantError::BadImportance {
                    entry: Some((9, v)),
                    ..
                }) => assert!(v.to_bits() == bad.to_bits()),
                other => panic!("{ty} {bad}: {other:?}"),
            }
        }
        let mut x2 = x.clone();
        x2[100] = f32::NEG_INFINITY;
        assert!(matches!(
            quantize_row_weighted(ty, &x2, &w, &mut out),
            Err(QuantError::NonFinite { index: 100, .. })
        ));
    }
    assert!(matches!(
        quantize_row_weighted(GgmlType::Q4_K, &x[..100], &w[..100], &mut out),
        Err(QuantError::BadLength { .. })
    ));
    let mut iq = vec![0u8; GgmlType::IQ2_XXS.row_size(256).unwrap()];
    assert!(matches!(
        quantize_row_weighted(GgmlType::IQ2_XXS, &x, &w, &mut iq),
        Err(QuantError::Unsupported { .. })
    ));
}

/// The weighted types with their stated bounds: (E_w, C_blk, block size).
const BOUNDS: [(GgmlType, f64, f64); 11] = [
    (GgmlType::Q4_0, 0.0, 0.0),
    (GgmlType::Q4_1, 0.0, 0.0),
    (GgmlType::Q5_0, 0.0, 0.0),
    (GgmlType::Q5_1, 0.0, 0.0),
    (GgmlType::Q2_K, 0.0, 0.0),
    (GgmlType::Q3_K, 0.0, 0.0),
    (GgmlType::Q4_K, 0.0, 0.0),
    (GgmlType::Q5_K, 0.0, 0.0),
    (GgmlType::Q6_K, 0.0, 0.0),
    (GgmlType::IQ4_NL, 0.0, 0.0),
    (GgmlType::IQ4_XS, 0.0, 0.0),
];

const COLS: usize = 1024;
const SEEDS: [u64; 4] = [1, 2, 3, 0xdead_beef];

/// Importance vectors: ones, uniform [0.1, 2], 30 % zeros, log-normal.
fn importances(seed: u64) -> Vec<(&'static str, Vec<f32>)> {
    let mut r = Rng::new(seed ^ 0x5151);
    let ones = vec![1.0f32; COLS];
    let uniform: Vec<f32> = (0..COLS).map(|_| (0.1 + 1.9 * r.uniform()) as f32).collect();
    let zeros: Vec<f32> = (0..COLS)
        .map(|_| {
            let v = 3.0 * r.uniform();
            if r.uniform() < 0.3 {
                0.0
            } else {
                v as f32
            }
        })
        .collect();
    let heavy: Vec<f32> = (0..COLS).map(|_| (2.5 * r.normal()).exp() as f32).collect();
    vec![
        ("ones", ones),
        ("uniform", uniform),
        ("zeros", zeros),
        ("heavy", heavy),
    ]
}

fn decode(ty: GgmlType, q: &[u8]) -> Vec<f32> {
    let mut y = vec![0f32; COLS];
    dequantize_row(ty, q, &mut y).unwrap();
    y
}

/// `Σ w (x − y)²` and `Σ w x²` in f64.
fn weighted_sums(x: &[f32], y: &[f32], w: &[f32]) -> (f64, f64) {
    let mut e = 0f64;
    let mut s = 0f64;
    for ((&a, &b), &w) in x.iter().zip(y).zip(w) {
        let d = a as f64 - b as f64;
        e += w as f64 * d * d;
        s += w as f64 * a as f64 * a as f64;
    }
    (e, s)
}

/// The measurements behind BOUNDS, per type: max E_w, max C_blk, and the
/// mean over (row, importance) of E_w² weighted / unweighted.
fn measure(ty: GgmlType) -> (f64, f64, f64, usize, usize) {
    let bs = ty.block_size();
    let (mut max_ew, mut max_cblk) = (0f64, 0f64);
    let (mut ratio_sum, mut n, mut worse) = (0f64, 0usize, 0usize);
    for seed in SEEDS {
        let imps = importances(seed);
        for (name, x) in varied_rows(COLS, seed) {
            for (iname, w) in &imps {
                let mut qw = vec![0u8; ty.row_size(COLS).unwrap()];
                quantize_row_weighted(ty, &x, w, &mut qw).unwrap();
                let yw = decode(ty, &qw);
                assert!(yw.iter().all(|v| v.is_finite()), "{ty} {name} {iname}");
                if x.iter().all(|&v| v == 0.0) {
                    assert!(yw.iter().all(|&v| v == 0.0), "{ty} {name} {iname}");
                    continue;
                }
                if name == "tiny" {
                    continue;
                }
                for (xb, yb) in x.chunks(bs).zip(yw.chunks(bs)) {
                    let m = xb.iter().fold(0f32, |a, v| a.max(v.abs())) as f64;
                    if m == 0.0 {
                        continue;
                    }
                    for (&a, &b) in xb.iter().zip(yb) {
                        max_cblk = max_cblk.max((a as f64 - b as f64).abs() / m);
                    }
                }
                let (e, s) = weighted_sums(&x, &yw, w);
                if s > 0.0 {
                    max_ew = max_ew.max((e / s).sqrt());
                }
                let mut qu = vec![0u8; qw.len()];
                quantize_row(ty, &x, &mut qu).unwrap();
                let (eu, _) = weighted_sums(&x, &decode(ty, &qu), w);
                if eu > 0.0 {
                    ratio_sum += e / eu;
                    n += 1;
                    if e > eu {
                        worse += 1;
                    }
                }
            }
        }
    }
    (max_ew, max_cblk, ratio_sum / n as f64, worse, n)
}

#[test]
fn weighted_error_bounds() {
    let mut failed = Vec::new();
    for (ty, ew_bound, cblk_bound) in BOUNDS {
        let (ew, cblk, ratio, worse, n) = measure(ty);
        println!(
            "{ty}: max E_w {ew:.4} (bound {ew_bound}), max C_blk {cblk:.4} (bound {cblk_bound}), \
             weighted/unweighted error {ratio:.3} on average, worse in {worse}/{n}"
        );
        if ew > ew_bound || cblk > cblk_bound {
            failed.push(ty);
        }
    }
    assert!(failed.is_empty(), "bounds exceeded: {failed:?}");
}
