//! compressed-tensors `pack-quantized` integer weights (symmetric, per
//! group or channel): `bits`-bit signed codes stored as `code + 2^(bits−1)`
//! in a dense little-endian bit stream of int32 words per row
//! (`pack_to_int32`), a scale per group in the model dtype.
//!
//! Decoding follows compressed-tensors' `unpack_from_int32` and `_dequantize`
//! (`q.to(scale.dtype) * scale`, rounded to the scale dtype). There is no
//! re-quantizer for the scales (GPTQ and AWQ need calibration data): a new
//! value is re-rounded on the base's own grid as `_quantize` does with the
//! base's scales (`round(clamp(x / scale))`, in the scale dtype).

use crate::bitstream::{put_code, BitReader};
pub use crate::float::Precision;
use crate::float::Rounding;

/// Bits per code this reader takes.
pub const BITS: [u32; 2] = [4, 8];

/// Bytes of one packed row of `cols` codes (whole int32 words).
pub fn row_bytes(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(32) * 4
}

/// Dequantize one row: `packed` holds the row's words, `scales` one value
/// per group of `group_size`.
pub fn dequantize_row(
    packed: &[u8],
    scales: &[f32],
    bits: u32,
    group_size: usize,
    precision: Precision,
    out: &mut [f32],
) {
    precision.with_rounding(Dequantize {
        packed,
        scales,
        bits,
        group_size,
        out,
    })
}

struct Dequantize<'a> {
    packed: &'a [u8],
    scales: &'a [f32],
    bits: u32,
    group_size: usize,
    out: &'a mut [f32],
}

impl Rounding<()> for Dequantize<'_> {
    fn run(self, round: impl Fn(f32) -> f32 + Copy) {
        let offset = 1i32 << (self.bits - 1);
        if self.bits == 4 && self.group_size.is_multiple_of(2) {
            // Two codes per byte, low nibble first: the common W4A16 case,
            // without the general reader's bookkeeping.
            let bytes = self.packed.chunks(self.group_size / 2);
            for ((o, p), &s) in self
                .out
                .chunks_mut(self.group_size)
                .zip(bytes)
                .zip(self.scales)
            {
                for (pair, &b) in o.chunks_exact_mut(2).zip(p) {
                    pair[0] = round(((b & 0x0f) as i32 - offset) as f32 * s);
                    pair[1] = round(((b >> 4) as i32 - offset) as f32 * s);
                }
            }
            return;
        }
        let mut codes = BitReader::new(self.packed, self.bits);
        for (g, o) in self.out.chunks_mut(self.group_size).enumerate() {
            let s = self.scales[g];
            for v in o.iter_mut() {
                let q = codes.next_code() as i32 - offset;
                *v = round(q as f32 * s);
            }
        }
    }
}

/// Codes of one row re-rounded on the grid of `scales` (one per group):
/// `round(clamp(round_p(x / s), −2^(bits−1), 2^(bits−1) − 1))`, packed.
pub fn quantize_row_on_grid(
    x: &[f32],
    scales: &[f32],
    bits: u32,
    group_size: usize,
    precision: Precision,
) -> Vec<u8> {
    let mut packed = vec![0u8; row_bytes(x.len(), bits)];
    let (lo, hi) = (
        -((1i32 << (bits - 1)) as f32),
        ((1i32 << (bits - 1)) - 1) as f32,
    );
    let offset = 1i32 << (bits - 1);
    for (i, v) in x.iter().enumerate() {
        let s = scales[i / group_size];
        let q = precision.round(v / s).clamp(lo, hi).round_ties_even() as i32 + offset;
        put_code(&mut packed, bits, i, q as u32);
    }
    packed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_on_the_grid_round_trip() {
        let scales = [0.5f32, 0.25];
        let x: Vec<f32> = (0..64)
            .map(|i| ((i % 16) as f32 - 8.0) * scales[i / 32])
            .collect();
        for bits in BITS {
            let p = quantize_row_on_grid(&x, &scales, bits, 32, Precision::Bf16);
            assert_eq!(p.len(), row_bytes(64, bits));
            let mut back = vec![0f32; 64];
            dequantize_row(&p, &scales, bits, 32, Precision::Bf16, &mut back);
            assert_eq!(back, x);
        }
    }

    #[test]
    fn values_off_the_grid_clamp() {
        let p = quantize_row_on_grid(&[100.0, -100.0], &[1.0], 4, 32, Precision::F32);
        let mut back = [0f32; 2];
        dequantize_row(&p, &[1.0], 4, 32, Precision::F32, &mut back);
        assert_eq!(back, [7.0, -8.0]);
    }
}
