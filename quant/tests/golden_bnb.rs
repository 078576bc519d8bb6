//! Bit-exact comparison with bitsandbytes on CPU: vectors written by
//! `fixtures/gen_golden_bnb.py` from bitsandbytes itself (see its manifest
//! for the torch / bitsandbytes versions and CPU capability).

use std::path::PathBuf;

use qresidual_quant::bnb::{
    dequantize_4bit, dequantize_int8_rows, dynamic_map, quantize_4bit, quantize_int8_rows,
    torch_mean_f32, torch_mean_f32_threads, FourBit, NestedAbsmax,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden_bnb")
}

fn bytes(name: &str) -> Vec<u8> {
    let p = dir().join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn floats(name: &str) -> Vec<f32> {
    bytes(name)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

struct Case {
    name: String,
    rows: usize,
    cols: usize,
    has_int8: bool,
}

struct FourBitCfg {
    case: String,
    kind: FourBit,
    blocksize: usize,
    /// `torch`, `native_avx512` or `native_scalar` (see the generator).
    dequant_path: String,
}

struct Manifest {
    cases: Vec<Case>,
    fourbit: Vec<FourBitCfg>,
    means: Vec<usize>,
    /// (n, threads, f32 bits of torch.mean of `synthetic(n)`).
    means_threaded: Vec<(usize, usize, u32)>,
}

fn manifest() -> Manifest {
    let text = String::from_utf8(bytes("manifest.txt")).unwrap();
    let mut m = Manifest {
        cases: vec![],
        fourbit: vec![],
        means: vec![],
        means_threaded: vec![],
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["case", name, rows, cols, int8] => m.cases.push(Case {
                name: name.to_string(),
                rows: rows.parse().unwrap(),
                cols: cols.parse().unwrap(),
                has_int8: *int8 == "1",
            }),
            ["fourbit", case, qt, bs, path] => m.fourbit.push(FourBitCfg {
                case: case.to_string(),
                kind: FourBit::from_name(qt).unwrap(),
                blocksize: bs.parse().unwrap(),
                dequant_path: path.to_string(),
            }),
            ["mean", n] => m.means.push(n.parse().unwrap()),
            ["mean_threaded", n, t, bits] => m.means_threaded.push((
                n.parse().unwrap(),
                t.parse().unwrap(),
                u32::from_str_radix(bits, 16).unwrap(),
            )),
            _ => panic!("bad manifest line {line:?}"),
        }
    }
    assert!(
        m.cases.len() >= 12 && m.fourbit.len() >= 60,
        "manifest too small"
    );
    m
}

fn first_diff<T: PartialEq + std::fmt::Debug>(what: &str, got: &[T], want: &[T]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        let n = got.iter().zip(want).filter(|(a, b)| a != b).count();
        panic!(
            "{what}: {n} mismatches, first at {i}: got {:?} want {:?}",
            got[i], want[i]
        );
    }
}

/// bitsandbytes' native scalar dequantizer reads FP4 nibble 8 as -0.0 where
/// its other two paths (and we) give +0.0; nothing else may differ.
fn fold_fp4_negative_zero(cfg: &FourBitCfg, packed: &[u8], v: &mut [f32]) {
    if cfg.kind == FourBit::Fp4 && cfg.dequant_path == "native_scalar" {
        for (i, x) in v.iter_mut().enumerate() {
            let b = packed[i / 2];
            let nib = if i % 2 == 0 { b >> 4 } else { b & 0xF };
            if nib == 8 && x.to_bits() == 0x8000_0000 {
                *x = 0.0;
            }
        }
    }
}

#[test]
fn dynamic_map_equals_create_dynamic_map() {
    first_diff(
        "dynamic map",
        &bits(&dynamic_map()),
        &bits(&floats("dynamic_map.f32")),
    );
}

#[test]
fn fourbit_quantize_and_dequantize_bit_exact() {
    let m = manifest();
    for cfg in &m.fourbit {
        let stem = format!("{}.{}.bs{}", cfg.case, cfg.kind.name(), cfg.blocksize);
        let x = floats(&format!("{}.f32", cfg.case));
        let (packed, absmax) = quantize_4bit(cfg.kind, &x, cfg.blocksize).unwrap();
        first_diff(
            &format!("{stem} packed"),
            &packed,
            &bytes(&format!("{stem}.packed")),
        );
        first_diff(
            &format!("{stem} absmax"),
            &bits(&absmax),
            &bits(&floats(&format!("{stem}.absmax"))),
        );
        let mut out = vec![0.0; x.len()];
        dequantize_4bit(cfg.kind, &packed, &absmax, cfg.blocksize, x.len(), &mut out).unwrap();
        let mut want = floats(&format!("{stem}.deq"));
        fold_fp4_negative_zero(cfg, &packed, &mut want);
        first_diff(&format!("{stem} deq"), &bits(&out), &bits(&want));
    }
}

#[test]
fn double_quant_bit_exact() {
    let m = manifest();
    for cfg in &m.fourbit {
        let stem = format!("{}.{}.bs{}.dq", cfg.case, cfg.kind.name(), cfg.blocksize);
        let x = floats(&format!("{}.f32", cfg.case));
        let (packed, absmax) = quantize_4bit(cfg.kind, &x, cfg.blocksize).unwrap();
        let want_offset = floats(&format!("{stem}.offset"))[0];
        let nested = NestedAbsmax::quantize_with_offset(&absmax, want_offset).unwrap();
        first_diff(
            &format!("{stem} codes"),
            &nested.codes,
            &bytes(&format!("{stem}.codes")),
        );
        first_diff(
            &format!("{stem} absmax2"),
            &bits(&nested.absmax2),
            &bits(&floats(&format!("{stem}.absmax2"))),
        );
        first_diff(
            &format!("{stem} stored map"),
            &bits(&nested.code),
            &bits(&floats(&format!("{stem}.map"))),
        );
        let scales = nested.dequantize().unwrap();
        let mut out = vec![0.0; x.len()];
        dequantize_4bit(cfg.kind, &packed, &scales, cfg.blocksize, x.len(), &mut out).unwrap();
        let mut want = floats(&format!("{stem}.deq"));
        fold_fp4_negative_zero(cfg, &packed, &mut want);
        first_diff(&format!("{stem} deq"), &bits(&out), &bits(&want));
    }
}

#[test]
fn nested_offset_is_torch_mean() {
    let m = manifest();
    for cfg in &m.fourbit {
        let stem = format!("{}.{}.bs{}", cfg.case, cfg.kind.name(), cfg.blocksize);
        let absmax = floats(&format!("{stem}.absmax"));
        let want = floats(&format!("{stem}.dq.offset"))[0];
        let got = NestedAbsmax::quantize(&absmax).unwrap().offset;
        assert_eq!(got.to_bits(), want.to_bits(), "{stem}: {got} vs {want}");
    }
    for n in m.means {
        let x = floats(&format!("mean.{n}.in"));
        let want = floats(&format!("mean.{n}.out"))[0];
        let got = torch_mean_f32(&x);
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "mean of {n}: {got} vs {want}"
        );
    }
}

#[test]
fn int8_rows_bit_exact() {
    let m = manifest();
    for case in m.cases.iter().filter(|c| c.has_int8) {
        for (tag, input) in [
            ("int8", format!("{}.f32", case.name)),
            ("int8h", format!("{}.int8h.in", case.name)),
        ] {
            let stem = format!("{}.{tag}", case.name);
            let x = floats(&input);
            assert_eq!(x.len(), case.rows * case.cols);
            if x.iter().any(|v| !v.is_finite()) {
                // The float16 cast overflowed (huge_tiny): we refuse, bitsandbytes emits garbage.
                assert!(quantize_int8_rows(&x, case.cols).is_err(), "{stem}");
                continue;
            }
            let (cb, scb) = quantize_int8_rows(&x, case.cols).unwrap();
            let want_cb: Vec<i8> = bytes(&format!("{stem}.cb"))
                .iter()
                .map(|&b| b as i8)
                .collect();
            first_diff(&format!("{stem} CB"), &cb, &want_cb);
            first_diff(
                &format!("{stem} SCB"),
                &bits(&scb),
                &bits(&floats(&format!("{stem}.scb"))),
            );
            let mut out = vec![0.0; x.len()];
            dequantize_int8_rows(&cb, &scb, case.cols, &mut out).unwrap();
            first_diff(
                &format!("{stem} deq"),
                &bits(&out),
                &bits(&floats(&format!("{stem}.deq"))),
            );
        }
    }
}

#[test]
fn torch_mean_of_short_vectors() {
    // torch.mean([a, b, ..]) for fewer than 8 elements sums in 4 interleaved
    // partials; spot-check the order with values where it matters.
    let x = [1.0e8f32, 1.0, -1.0e8, 1.0, 3.0, 0.5, 0.25];
    // partials: p0 = ((1e8 + 3) + 0.5) + 0.25, p1 = 1, p2 = -1e8, p3 = 1;
    // sum = ((p0 + p1) + p2) + p3 = 1 (torch 2.15 prints mean 1/7; a
    // left-to-right sum would give 4.75 / 7).
    let p0 = ((1.0e8f32 + 3.0) + 0.5) + 0.25;
    let want = (((p0 + 1.0) + -1.0e8) + 1.0) / 7.0;
    assert_eq!(torch_mean_f32(&x).to_bits(), want.to_bits());
}

/// One tensor of a safetensors file: (dtype, bytes). A minimal reader (the
/// header is JSON with one flat object per tensor) so this crate's tests need
/// no JSON or safetensors dependency.
fn safetensor(path: &std::path::Path, name: &str) -> (String, Vec<u8>) {
    let file = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let hlen = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&file[8..8 + hlen]).unwrap();
    let key = format!("\"{name}\":");
    let entry = header
        .split(&key)
        .nth(1)
        .unwrap_or_else(|| panic!("{name} not in {}", path.display()));
    let entry = &entry[..entry.find('}').unwrap()];
    let field = |f: &str| -> &str {
        let rest = entry.split(&format!("\"{f}\":")).nth(1).unwrap();
        rest.trim_start()
    };
    let dtype = field("dtype").trim_start_matches('"');
    let dtype = dtype[..dtype.find('"').unwrap()].to_string();
    let offs = field("data_offsets");
    let offs: Vec<usize> = offs[1..offs.find(']').unwrap()]
        .split(',')
        .map(|v| v.trim().parse().unwrap())
        .collect();
    let base = 8 + hlen;
    (dtype, file[base + offs[0]..base + offs[1]].to_vec())
}

fn le_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The reference float16 weight of a tiny-model tensor, as f32.
fn tiny_reference(name: &str) -> Vec<f32> {
    let p = dir().join(format!("../tiny_bnb/reference/{name}.f16"));
    std::fs::read(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

const TINY_TENSORS: [&str; 2] = [
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
];

/// transformers + bitsandbytes quantized the tiny llama on CPU; quantizing its
/// float16 weights here reproduces the saved checkpoint tensors byte for byte.
#[test]
fn tiny_checkpoint_nf4_double_quant_reproduced() {
    let st = dir().join("../tiny_bnb/nf4/model.safetensors");
    for name in TINY_TENSORS {
        let x = tiny_reference(name);
        let (packed, absmax) = quantize_4bit(FourBit::Nf4, &x, 64).unwrap();
        assert_eq!(safetensor(&st, name), ("U8".into(), packed), "{name}");
        let nested = NestedAbsmax::quantize(&absmax).unwrap();
        let (_, codes) = safetensor(&st, &format!("{name}.absmax"));
        first_diff(&format!("{name} absmax codes"), &nested.codes, &codes);
        let (_, a2) = safetensor(&st, &format!("{name}.nested_absmax"));
        first_diff(
            &format!("{name} nested_absmax"),
            &bits(&nested.absmax2),
            &bits(&le_f32(&a2)),
        );
        let (_, map) = safetensor(&st, &format!("{name}.nested_quant_map"));
        first_diff(
            &format!("{name} nested_quant_map"),
            &bits(&nested.code),
            &bits(&le_f32(&map)),
        );
        let (_, qmap) = safetensor(&st, &format!("{name}.quant_map"));
        first_diff(
            &format!("{name} quant_map"),
            &bits(&FourBit::Nf4.code()),
            &bits(&le_f32(&qmap)),
        );
        let (_, blob) = safetensor(&st, &format!("{name}.quant_state.bitsandbytes__nf4"));
        let json = String::from_utf8(blob).unwrap();
        let off: f64 = json
            .split("\"nested_offset\": ")
            .nth(1)
            .unwrap()
            .split([',', '}'])
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(
            nested.offset.to_bits(),
            (off as f32).to_bits(),
            "{name} offset"
        );
    }
}

#[test]
fn tiny_checkpoint_fp4_reproduced() {
    let st = dir().join("../tiny_bnb/fp4/model.safetensors");
    for name in TINY_TENSORS {
        let x = tiny_reference(name);
        let (packed, absmax) = quantize_4bit(FourBit::Fp4, &x, 64).unwrap();
        assert_eq!(safetensor(&st, name), ("U8".into(), packed), "{name}");
        let (dtype, a) = safetensor(&st, &format!("{name}.absmax"));
        assert_eq!(dtype, "F32");
        first_diff(
            &format!("{name} absmax"),
            &bits(&absmax),
            &bits(&le_f32(&a)),
        );
        let (_, qmap) = safetensor(&st, &format!("{name}.quant_map"));
        first_diff(
            &format!("{name} quant_map"),
            &bits(&FourBit::Fp4.code()),
            &bits(&le_f32(&qmap)),
        );
    }
}

#[test]
fn tiny_checkpoint_int8_reproduced() {
    let st = dir().join("../tiny_bnb/int8/model.safetensors");
    for name in TINY_TENSORS {
        let x = tiny_reference(name);
        let (cb, scb) = quantize_int8_rows(&x, 256).unwrap();
        let (dtype, w) = safetensor(&st, name);
        assert_eq!(dtype, "I8");
        let w: Vec<i8> = w.iter().map(|&b| b as i8).collect();
        first_diff(&format!("{name} CB"), &cb, &w);
        let module = name.trim_end_matches(".weight");
        let (_, s) = safetensor(&st, &format!("{module}.SCB"));
        first_diff(&format!("{name} SCB"), &bits(&scb), &bits(&le_f32(&s)));
    }
}

/// `synthetic` of fixtures/gen_golden_bnb.py: integer hash → f64 → f32.
fn synthetic(n: usize) -> Vec<f32> {
    (0..n as u64)
        .map(|i| {
            let h = i.wrapping_mul(2654435761) % (1u64 << 32);
            (h as f64 / 2f64.powi(32) * 0.05 + 0.001) as f32
        })
        .collect()
}

#[test]
fn torch_mean_with_threads() {
    let m = manifest();
    assert!(m.means_threaded.len() >= 16);
    let mut thread_dependent = 0;
    for &(n, threads, want) in &m.means_threaded {
        let x = synthetic(n);
        let got = torch_mean_f32_threads(&x, threads);
        assert_eq!(got.to_bits(), want, "mean of {n} with {threads} threads");
        thread_dependent += usize::from(torch_mean_f32(&x).to_bits() != want);
    }
    // The split matters (otherwise this test would not test it).
    assert!(thread_dependent > 0);
}
