//! Single-threaded codec throughput, one JSON line per type:
//! `{"type": "q4_K", "quantize_eps": …, "dequantize_eps": …}`.
//! `benches/bench_codecs.py` runs this beside ggml (through ctypes) on the
//! same data and prints the ratios.
//!
//! Usage: cargo bench -p qresidual-quant --bench codecs -- [TYPE…]

use std::time::Duration;

use qresidual_quant::ggml::isa::{quantize_fn, Isa};
use qresidual_quant::{codec, dequantize_row, quantize_row, GgmlType, ALL_TYPES};

mod common;
use common::cpu_seconds;

const ROW: usize = 4096;
const ROWS: usize = 256;
/// Rows decoded again and again for the in-cache rate (a 256 KiB output).
const PASS_ROWS: usize = 16;

fn data() -> Vec<f32> {
    // The same generator as benches/bench_codecs.py: a fixed LCG mapped to
    // roughly Gaussian values (sum of 4 uniforms), scaled like LLM weights.
    let mut s: u64 = 0x2545_F491_4F6C_DD1D;
    (0..ROW * ROWS)
        .map(|_| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * 0.03
        })
        .collect()
}

/// Elements per second of `f` over `n` elements, best of several runs of at least 0.3 s.
fn rate(n: usize, mut f: impl FnMut()) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..3 {
        let start = cpu_seconds();
        let mut reps = 0u32;
        while cpu_seconds() - start < Duration::from_millis(300).as_secs_f64() {
            f();
            reps += 1;
        }
        best = best.min((cpu_seconds() - start) / reps as f64);
    }
    n as f64 / best
}

fn main() {
    let Some(wanted) = common::wanted_types() else {
        return;
    };
    let x = data();
    for &ty in ALL_TYPES {
        if !wanted.is_empty() && !wanted.iter().any(|w| w.eq_ignore_ascii_case(ty.name())) {
            continue;
        }
        let Some(c) = codec(ty) else { continue };
        if ty == GgmlType::Q8_K || ty.row_size(ROW).is_none() {
            continue;
        }
        let rb = ty.row_size(ROW).unwrap();
        let mut q = vec![0u8; rb * ROWS];
        let quantize_eps = c.quantize.map(|_| {
            rate(x.len(), || {
                for (src, dst) in x.chunks(ROW).zip(q.chunks_mut(rb)) {
                    quantize_row(ty, src, dst).unwrap();
                }
            })
        });
        if quantize_eps.is_none() {
            // Decode-only types: bytes from `bench_codecs.py` (random blocks,
            // the same file ggml decodes), when it provides them.
            let Some(b) = std::env::var_os("QRESIDUAL_BENCH_BYTES").and_then(|d| {
                std::fs::read(std::path::Path::new(&d).join(format!("{}.q", ty.name()))).ok()
            }) else {
                continue;
            };
            if b.len() != q.len() {
                continue;
            }
            q.copy_from_slice(&b);
        }
        // Each instruction-set variant of the encoder, where there are several.
        let mut variants = String::new();
        for isa in Isa::ALL {
            let Some(f) = quantize_fn(isa, ty) else {
                continue;
            };
            let eps = rate(x.len(), || {
                for (src, dst) in x.chunks(ROW).zip(q.chunks_mut(rb)) {
                    f(src, dst);
                }
            });
            variants.push_str(&format!(", \"quantize_eps_{}\": {eps:.0}", isa.name()));
        }
        let mut y = vec![0f32; x.len()];
        let dequantize_eps = rate(x.len(), || {
            for (src, dst) in q.chunks(rb).zip(y.chunks_mut(ROW)) {
                dequantize_row(ty, src, dst).unwrap();
            }
        });
        // The same on the first rows only, whose output stays in cache: the
        // decoder's own speed (the pipeline decodes one row at a time).
        let pass = PASS_ROWS * ROW;
        let dequantize_eps_pass = rate(pass, || {
            for (src, dst) in q[..PASS_ROWS * rb]
                .chunks(rb)
                .zip(y[..pass].chunks_mut(ROW))
            {
                dequantize_row(ty, src, dst).unwrap();
            }
        });
        println!(
            "{{\"type\": \"{}\", \"quantize_eps\": {}, \"dequantize_eps\": {:.0}, \"dequantize_eps_pass\": {:.0}{variants}}}",
            ty.name(),
            quantize_eps.map_or("null".to_string(), |e| format!("{e:.0}")),
            dequantize_eps,
            dequantize_eps_pass
        );
    }
}
