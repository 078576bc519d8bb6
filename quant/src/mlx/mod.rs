//! MLX affine quantization (`mx.quantize` / `mx.dequantize`, mode
//! `affine`): per group of `group_size` consecutive weights of a row a
//! scale `s` and a bias `b`, `w = s·q + b`, with `bits`-bit codes packed
//! little-endian into a bit stream (uint32 words for 1/2/4/8 bits, 3-byte
//! packs for 3/6 bits, 5-byte packs for 5 bits: the same stream).
//!
//! A port of MLX's CPU kernel (`mlx/backend/cpu/quantized.cpp`, `quantize`):
//! in f32, `scale = max((max − min) / (2^bits − 1), 1e-7)`, signed towards
//! the larger-magnitude edge, snapped so that edge is a code (`scale =
//! edge / rint(edge / scale)`, `bias = edge`; one bit is not snapped:
//! `bias = min`), codes `rint((w − bias) / scale)` clamped, scale and bias
//! stored in the weight's dtype. Decoding is
//! `round(round(s·q) + b)` in the scales' dtype (what `mx.dequantize`
//! computes on CPU: a multiply and an add, each rounded; checked by
//! tests/interop/test_mlx.py). The float modes (`mxfp4`, `mxfp8`,
//! `nvfp4`) are [`fp`].

pub mod fp;

use crate::bitstream::{put_code, BitReader};
pub use crate::float::Precision;
use crate::float::Rounding;

/// Bits per code MLX's affine mode accepts.
pub const BITS: [u32; 7] = [1, 2, 3, 4, 5, 6, 8];
/// Group sizes MLX's affine mode accepts.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// Dequantize one row: `packed` holds `out.len()` codes, `scales` and
/// `biases` one value per group (already in f32, exactly as stored).
pub fn dequantize_row(
    packed: &[u8],
    scales: &[f32],
    biases: &[f32],
    bits: u32,
    group_size: usize,
    precision: Precision,
    out: &mut [f32],
) {
    precision.with_rounding(Dequantize {
        packed,
        scales,
        biases,
        bits,
        group_size,
        out,
    })
}

/// [`dequantize_row`]'s arguments, run with the rounding inlined.
struct Dequantize<'a> {
    packed: &'a [u8],
    scales: &'a [f32],
    biases: &'a [f32],
    bits: u32,
    group_size: usize,
    out: &'a mut [f32],
}

impl Rounding<()> for Dequantize<'_> {
    fn run(self, round: impl Fn(f32) -> f32 + Copy) {
        let mut codes = BitReader::new(self.packed, self.bits);
        for (g, o) in self.out.chunks_mut(self.group_size).enumerate() {
            let (s, b) = (self.scales[g], self.biases[g]);
            for v in o.iter_mut() {
                let q = codes.next_code() as f32;
                *v = round(round(s * q) + b);
            }
        }
    }
}

/// Quantize one row of values (already rounded to `precision`, the dtype
/// MLX quantizes from) in groups of `group_size`: the packed codes, and per
/// group the scale and bias as stored (rounded to `precision`).
pub fn quantize_row(
    x: &[f32],
    bits: u32,
    group_size: usize,
    precision: Precision,
) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    let n_bins = ((1u32 << bits) - 1) as f32;
    let mut packed = vec![0u8; (x.len() * bits as usize).div_ceil(8)];
    let mut scales = Vec::with_capacity(x.len() / group_size);
    let mut biases = Vec::with_capacity(x.len() / group_size);
    for (g, group) in x.chunks(group_size).enumerate() {
        let (w_min, w_max) = group
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
                (lo.min(v), hi.max(v))
            });
        let mut scale = ((w_max - w_min) / n_bins).max(1e-7);
        let mut bias = w_min;
        if bits > 1 {
            // Snapped so that the larger-magnitude edge is a code (one bit
            // keeps the plain min/max grid, as MLX does).
            let mask = w_min.abs() > w_max.abs();
            if !mask {
                scale = -scale;
            }
            let edge = if mask { w_min } else { w_max };
            let q0 = (edge / scale).round_ties_even();
            bias = 0.0;
            if q0 != 0.0 {
                scale = edge / q0;
                bias = edge;
            }
        }
        for (j, &v) in group.iter().enumerate() {
            let q = ((v - bias) / scale).round_ties_even().clamp(0.0, n_bins) as u32;
            put_code(&mut packed, bits, g * group_size + j, q);
        }
        scales.push(precision.round(scale));
        biases.push(precision.round(bias));
    }
    (packed, scales, biases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_the_bit_stream() {
        for bits in BITS {
            let x: Vec<f32> = (0..64).map(|i| (i % (1 << bits)) as f32).collect();
            let (packed, s, b) = quantize_row(&x, bits, 64, Precision::F32);
            assert_eq!(packed.len(), 64 * bits as usize / 8);
            let mut back = vec![0f32; 64];
            dequantize_row(&packed, &s, &b, bits, 64, Precision::F32, &mut back);
            // Within half a step of the grid (exact where the integers are on it).
            let step = 63f32.min(((1 << bits) - 1) as f32) / ((1 << bits) - 1) as f32;
            for (a, c) in x.iter().zip(&back) {
                assert!((a - c).abs() <= step / 2.0 + 1e-4, "{bits}: {a} vs {c}");
            }
        }
    }

    #[test]
    fn one_bit_keeps_the_min_max_grid() {
        // The larger-magnitude edge is the max here: snapping would move
        // the bias there; one bit keeps bias = min, scale = max − min
        // (checked against mx.quantize in tests/interop/test_mlx.py).
        let mut x = vec![0.5f32; 32];
        (x[0], x[1], x[2]) = (-1.0, 2.0, 0.4);
        let (packed, s, b) = quantize_row(&x, 1, 32, Precision::F32);
        assert_eq!((s[0], b[0]), (3.0, -1.0));
        let mut back = vec![0f32; 32];
        dequantize_row(&packed, &s, &b, 1, 32, Precision::F32, &mut back);
        assert_eq!(&back[..3], &[-1.0, 2.0, -1.0]);
        // 0.5 is exactly half-way: ties to the even code (0).
        assert_eq!(back[3], -1.0);
    }

    #[test]
    fn a_zero_group_decodes_to_zero() {
        let (packed, s, b) = quantize_row(&[0.0; 32], 4, 32, Precision::Bf16);
        let mut back = vec![1f32; 32];
        dequantize_row(&packed, &s, &b, 4, 32, Precision::Bf16, &mut back);
        assert!(back.iter().all(|v| *v == 0.0));
    }
}
