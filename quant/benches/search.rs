//! Single-threaded cost of the candidate search (`search_row`, what
//! `apply`'s default strategy runs where a tensor keeps its type) against
//! the fresh encoding it starts from, one line per type:
//! `q4_K: quantize 1.23 s, search 2.34 s (1.90x)` over the same rows.
//! Base: the data encoded; target: its decoded values plus a residual at
//! 5 % of the data's spread. Best of `REPEAT` alternating runs, in CPU
//! time of the thread (the machine may be shared).
//!
//! Usage: cargo bench -p qresidual-quant --bench search -- [TYPE…]

use qresidual_quant::{dequantize_row, quantize_row, search_row, GgmlType, SearchWins};

mod common;
use common::cpu_seconds;

const ROW: usize = 4096;
const ROWS: usize = 1024;
const REPEAT: usize = 5;

/// Roughly Gaussian values (sum of 4 uniforms from a fixed LCG) times `scale`.
fn gaussian(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let mut acc = 0.0f32;
            for _ in 0..4 {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                acc += (s >> 40) as f32 / (1u64 << 24) as f32;
            }
            (acc - 2.0) * scale
        })
        .collect()
}

fn main() {
    let Some(wanted) = common::wanted_types() else {
        return;
    };
    let types = [
        GgmlType::Q4_0,
        GgmlType::Q8_0,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_XS,
    ];
    let x = gaussian(0x2545_F491_4F6C_DD1D, ROW * ROWS, 0.03);
    let delta = gaussian(0x9E37_79B9_7F4A_7C15, ROW * ROWS, 0.0015);
    for ty in types {
        if !wanted.is_empty() && !wanted.iter().any(|w| w.eq_ignore_ascii_case(ty.name())) {
            continue;
        }
        let rb = ty.row_size(ROW).expect("whole blocks");
        let mut base = vec![0u8; rb * ROWS];
        for (src, dst) in x.chunks_exact(ROW).zip(base.chunks_exact_mut(rb)) {
            quantize_row(ty, src, dst).expect("encodable");
        }
        let mut target = vec![0f32; ROW * ROWS];
        for (src, dst) in base.chunks_exact(rb).zip(target.chunks_exact_mut(ROW)) {
            dequantize_row(ty, src, dst).expect("decodable");
        }
        target.iter_mut().zip(&delta).for_each(|(t, d)| *t += d);
        let mut out = vec![0u8; rb * ROWS];
        let (mut fresh, mut search) = (f64::INFINITY, f64::INFINITY);
        let mut wins = SearchWins::default();
        for _ in 0..REPEAT {
            let t0 = cpu_seconds();
            for (src, dst) in target.chunks_exact(ROW).zip(out.chunks_exact_mut(rb)) {
                quantize_row(ty, src, dst).expect("encodable");
            }
            let t1 = cpu_seconds();
            wins = SearchWins::default();
            for ((src, b), dst) in target
                .chunks_exact(ROW)
                .zip(base.chunks_exact(rb))
                .zip(out.chunks_exact_mut(rb))
            {
                search_row(ty, b, src, dst, &mut wins).expect("encodable");
            }
            let t2 = cpu_seconds();
            fresh = fresh.min(t1 - t0);
            search = search.min(t2 - t1);
        }
        println!(
            "{}: quantize {:.3} s, search {:.3} s ({:.2}x); wins base {} fresh {} re-rounded {}",
            ty.name(),
            fresh,
            search,
            search / fresh,
            wins.base,
            wins.fresh,
            wins.rerounded
        );
    }
}
