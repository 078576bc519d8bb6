//! Golden vectors from ggml (`fixtures/gen_golden.py`) and the checks every
//! codec runs against them.
#![allow(dead_code)]

use std::path::PathBuf;

use qresidual_quant::{dequantize_row, quantize_row, GgmlType};

/// One input case of the golden set.
pub struct Case {
    /// Case name, e.g. `gaussian`.
    pub name: String,
    /// Rows of the input.
    pub rows: usize,
    /// Elements per row.
    pub cols: usize,
    /// Input, row-major.
    pub input: Vec<f32>,
}

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/golden")
}

fn read_f32(path: &PathBuf) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// All cases listed in `manifest.json`.
pub fn cases() -> Vec<Case> {
    let dir = golden_dir();
    let manifest = std::fs::read_to_string(dir.join("manifest.json")).expect("golden manifest");
    // The manifest is tiny and flat; a hand parse keeps the crate free of serde.
    let mut out = Vec::new();
    for chunk in manifest.split("\"name\": \"").skip(1) {
        let name = chunk.split('"').next().unwrap().to_string();
        let field = |key: &str| -> Option<usize> {
            let rest = chunk.split(&format!("\"{key}\": ")).nth(1)?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        };
        if let (Some(rows), Some(cols)) = (field("rows"), field("cols")) {
            let input = read_f32(&dir.join(format!("{name}.f32")));
            assert_eq!(input.len(), rows * cols, "{name}");
            out.push(Case {
                name,
                rows,
                cols,
                input,
            });
        }
    }
    assert!(out.len() >= 10, "golden manifest lists too few cases");
    out
}

/// ggml's quantized bytes for a case.
pub fn golden_bytes(case: &str, ty: GgmlType) -> Vec<u8> {
    let p = golden_dir().join(format!("{case}.{}.q", ty.name()));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// ggml's dequantized floats for a case.
pub fn golden_floats(case: &str, ty: GgmlType) -> Vec<f32> {
    read_f32(&golden_dir().join(format!("{case}.{}.deq", ty.name())))
}

/// Our quantize of every case equals ggml's bytes.
pub fn assert_quantize_bit_exact(ty: GgmlType) {
    for case in cases() {
        let want = golden_bytes(&case.name, ty);
        let row_bytes = ty.row_size(case.cols).unwrap();
        let mut got = vec![0u8; row_bytes * case.rows];
        for (r, (src, dst)) in case
            .input
            .chunks(case.cols)
            .zip(got.chunks_mut(row_bytes))
            .enumerate()
        {
            quantize_row(ty, src, dst).unwrap_or_else(|e| panic!("{} row {r}: {e}", case.name));
        }
        if got != want {
            let i = got.iter().zip(&want).position(|(a, b)| a != b).unwrap();
            panic!(
                "{ty} quantize differs from ggml on case '{}' at byte {i} (block {}, row {}): ours {:#04x}, ggml {:#04x}",
                case.name,
                (i % row_bytes) / ty.type_size(),
                i / row_bytes,
                got[i],
                want[i]
            );
        }
    }
}

/// Our dequantize of ggml's bytes equals ggml's floats, bit for bit.
pub fn assert_dequantize_bit_exact(ty: GgmlType) {
    for case in cases() {
        let bytes = golden_bytes(&case.name, ty);
        let want = golden_floats(&case.name, ty);
        let row_bytes = ty.row_size(case.cols).unwrap();
        let mut got = vec![0f32; case.rows * case.cols];
        for (src, dst) in bytes.chunks(row_bytes).zip(got.chunks_mut(case.cols)) {
            dequantize_row(ty, src, dst).unwrap();
        }
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                a.to_bits(),
                b.to_bits(),
                "{ty} dequantize differs from ggml on case '{}' at element {i}: ours {a:e}, ggml {b:e}",
                case.name
            );
        }
    }
}

/// Deterministic pseudo-random data (xorshift64*), no external crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    /// Student-t with `nu` degrees of freedom: heavy tails.
    pub fn student_t(&mut self, nu: f64) -> f64 {
        let z = self.normal();
        let chi2: f64 = (0..nu as usize).map(|_| self.normal().powi(2)).sum();
        z / (chi2 / nu).sqrt()
    }
}

/// The varied data every round-trip bound is checked on: Gaussian, heavy
/// tails, one huge outlier, all-zero blocks, constant blocks, huge and tiny
/// magnitudes. Each entry is (name, row) with `cols` elements.
pub fn varied_rows(cols: usize, seed: u64) -> Vec<(String, Vec<f32>)> {
    let mut rng = Rng::new(seed);
    let mut rows = Vec::new();
    let mut gen = |name: &str, f: &mut dyn FnMut(usize, &mut Rng) -> f64| {
        let row: Vec<f32> = (0..cols).map(|i| f(i, &mut rng) as f32).collect();
        rows.push((name.to_string(), row));
    };
    gen("gaussian", &mut |_, r| r.normal() * 0.02);
    gen("student_t3", &mut |_, r| r.student_t(3.0) * 0.02);
    gen("outlier", &mut |i, r| {
        if i == 17 {
            50.0
        } else {
            r.normal() * 0.02
        }
    });
    gen("zero", &mut |_, _| 0.0);
    gen("half_zero_blocks", &mut |i, r| {
        if (i / 32) % 2 == 0 {
            0.0
        } else {
            r.normal()
        }
    });
    gen("constant", &mut |_, _| 0.3125);
    gen("constant_negative", &mut |_, _| -7.0);
    gen("huge", &mut |_, r| r.normal() * 2.0e4);
    gen("tiny", &mut |_, r| r.normal() * 1.0e-6);
    gen("cos", &mut |i, _| 0.1 + 2.0 * (i as f64).cos());
    rows
}

// ─── port of llama.cpp tests/test-quantize-fns.cpp (total quantization error) ───

/// `MAX_QUANTIZATION_TOTAL_ERROR` of test-quantize-fns.cpp.
pub const MAX_QUANTIZATION_TOTAL_ERROR: f32 = 0.002;
/// `MAX_QUANTIZATION_TOTAL_ERROR_2BITS`.
pub const MAX_QUANTIZATION_TOTAL_ERROR_2BITS: f32 = 0.0075;
/// `MAX_QUANTIZATION_TOTAL_ERROR_3BITS`.
pub const MAX_QUANTIZATION_TOTAL_ERROR_3BITS: f32 = 0.0040;

/// `generate_data`: `dst[i] = 0.1 + amplitude*cosf(i + offset)`, the cosine
/// in float, the sum in double (`0.1` is a double literal), stored as float.
pub fn generate_data(offset: f32, n: usize, amplitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1f64 + (amplitude * (i as f32 + offset).cos()) as f64) as f32)
        .collect()
}

/// `array_rmse`: despite the name, `sqrtf(Σ diff²) / n`, the difference in
/// float, summed in double, the root taken in float.
pub fn array_rmse(a1: &[f32], a2: &[f32]) -> f32 {
    let mut sum = 0f64;
    for (&a, &b) in a1.iter().zip(a2) {
        let diff = (a - b) as f64;
        sum += diff * diff;
    }
    (sum as f32).sqrt() / a1.len() as f32
}
