//! compressed-tensors `pack-quantized` integer weights (per group or
//! channel, symmetric or with a zero point per group): `bits`-bit signed
//! codes stored as `code + 2^(bits−1)` in a dense little-endian bit stream
//! of int32 words per row (`pack_to_int32`), a scale per group in the model
//! dtype, and for asymmetric weights a signed zero point per group, packed
//! the same way along the rows (`pack_to_int32(zp, bits, packed_dim=0)`).
//!
//! Decoding follows compressed-tensors' `unpack_from_int32` and `_dequantize`
//! (`(q − zp).to(scale.dtype) * scale`, rounded to the scale dtype; `q − zp`
//! is an exact integer there). There is no re-quantizer for the scales (GPTQ
//! and AWQ need calibration data): a new value is re-rounded on the base's
//! own grid as `_quantize` does with the base's scales and zero points
//! (`round(clamp(x / scale + zp))`, each step in the scale dtype).

use crate::bitstream::{put_code, BitReader};
pub use crate::float::Precision;
use crate::float::Rounding;

/// Bits per code this reader takes: all that `pack_to_int32` packs.
pub const BITS: [u32; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// Bytes of one packed row of `cols` codes (whole int32 words).
pub fn row_bytes(cols: usize, bits: u32) -> usize {
    (cols * bits as usize).div_ceil(32) * 4
}

/// One row's grid: a scale per group of `group_size` and, for asymmetric
/// weights, a zero point per group (empty: symmetric).
#[derive(Debug, Clone, Copy)]
pub struct RowGrid<'a> {
    /// One scale per group.
    pub scales: &'a [f32],
    /// One signed zero point per group, or none.
    pub zeros: &'a [i32],
    /// Bits per code.
    pub bits: u32,
    /// Weights per group.
    pub group_size: usize,
    /// The scales' dtype, which compressed-tensors computes in.
    pub precision: Precision,
}

impl RowGrid<'_> {
    fn zero(&self, g: usize) -> i32 {
        self.zeros.get(g).copied().unwrap_or(0)
    }
}

/// Dequantize one row: `packed` holds the row's words.
pub fn dequantize_row(packed: &[u8], grid: RowGrid<'_>, out: &mut [f32]) {
    grid.precision
        .with_rounding(Dequantize { packed, grid, out })
}

struct Dequantize<'a> {
    packed: &'a [u8],
    grid: RowGrid<'a>,
    out: &'a mut [f32],
}

impl Rounding<()> for Dequantize<'_> {
    fn run(self, round: impl Fn(f32) -> f32 + Copy) {
        let RowGrid {
            bits, group_size, ..
        } = self.grid;
        let offset = 1i32 << (bits - 1);
        if bits == 4 && group_size.is_multiple_of(2) {
            // Two codes per byte, low nibble first: the common W4A16 case,
            // without the general reader's bookkeeping.
            let bytes = self.packed.chunks(group_size / 2);
            for (g, ((o, p), &s)) in self
                .out
                .chunks_mut(group_size)
                .zip(bytes)
                .zip(self.grid.scales)
                .enumerate()
            {
                let base = offset + self.grid.zero(g);
                for (pair, &b) in o.chunks_exact_mut(2).zip(p) {
                    pair[0] = round(((b & 0x0f) as i32 - base) as f32 * s);
                    pair[1] = round(((b >> 4) as i32 - base) as f32 * s);
                }
            }
            return;
        }
        let mut codes = BitReader::new(self.packed, bits);
        for (g, o) in self.out.chunks_mut(group_size).enumerate() {
            let (s, base) = (self.grid.scales[g], offset + self.grid.zero(g));
            for v in o.iter_mut() {
                let q = codes.next_code() as i32 - base;
                *v = round(q as f32 * s);
            }
        }
    }
}

/// Codes of one row re-rounded on `grid`: `round(clamp(round_p(round_p(x /
/// s) + zp), −2^(bits−1), 2^(bits−1) − 1))` (no zero point: `round_p(x /
/// s)`), packed.
pub fn quantize_row_on_grid(x: &[f32], grid: RowGrid<'_>) -> Vec<u8> {
    let (bits, p) = (grid.bits, grid.precision);
    let mut packed = vec![0u8; row_bytes(x.len(), bits)];
    let (lo, hi) = (
        -((1i32 << (bits - 1)) as f32),
        ((1i32 << (bits - 1)) - 1) as f32,
    );
    let offset = 1i32 << (bits - 1);
    for (i, v) in x.iter().enumerate() {
        let g = i / grid.group_size;
        let mut scaled = p.round(v / grid.scales[g]);
        if let Some(&z) = grid.zeros.get(g) {
            scaled = p.round(scaled + z as f32);
        }
        let q = scaled.clamp(lo, hi).round_ties_even() as i32 + offset;
        put_code(&mut packed, bits, i, q as u32);
    }
    packed
}

/// The signed zero points of a `[rows, groups]` weight from their packed
/// words (`pack_to_int32(zp, bits, packed_dim=0)`: I32 `[ceil(rows · bits /
/// 32), groups]`, each column a bit stream over the rows), row-major.
pub fn unpack_zero_points(words: &[u8], rows: usize, groups: usize, bits: u32) -> Vec<i32> {
    let offset = 1i32 << (bits - 1);
    let n_words = (rows * bits as usize).div_ceil(32);
    let mut out = vec![0i32; rows * groups];
    let mut column = vec![0u8; n_words * 4];
    for g in 0..groups {
        for (w, c) in column.chunks_exact_mut(4).enumerate() {
            let at = (w * groups + g) * 4;
            c.copy_from_slice(&words[at..at + 4]);
        }
        let mut codes = BitReader::new(&column, bits);
        for r in 0..rows {
            out[r * groups + g] = codes.next_code() as i32 - offset;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid<'a>(scales: &'a [f32], zeros: &'a [i32], bits: u32, p: Precision) -> RowGrid<'a> {
        RowGrid {
            scales,
            zeros,
            bits,
            group_size: 32,
            precision: p,
        }
    }

    #[test]
    fn codes_on_the_grid_round_trip() {
        let scales = [0.5f32, 0.25];
        for bits in BITS {
            // Every code −2^(bits−1)..2^(bits−1) − 1 decodes to (q − zp) · s,
            // with zero points inside the code range or none.
            let half = 1i32 << (bits - 1);
            let zp = [3.min(half - 1), (-2).max(-half)];
            for zeros in [&[][..], &zp[..]] {
                let x: Vec<f32> = (0..64)
                    .map(|i| {
                        let g = i / 32;
                        let z = zeros.get(g).copied().unwrap_or(0);
                        ((i as i32 % (2 * half)) - half - z) as f32 * scales[g]
                    })
                    .collect();
                let g = grid(&scales, zeros, bits, Precision::Bf16);
                let p = quantize_row_on_grid(&x, g);
                assert_eq!(p.len(), row_bytes(64, bits));
                let mut back = vec![0f32; 64];
                dequantize_row(&p, g, &mut back);
                assert_eq!(back, x, "{bits} bits, zeros {zeros:?}");
            }
        }
    }

    #[test]
    fn values_off_the_grid_clamp() {
        for (zeros, want) in [(&[][..], [7.0, -8.0]), (&[2][..], [5.0, -10.0])] {
            let g = grid(&[1.0], zeros, 4, Precision::F32);
            let p = quantize_row_on_grid(&[100.0, -100.0], g);
            let mut back = [0f32; 2];
            dequantize_row(&p, g, &mut back);
            assert_eq!(back, want);
        }
    }

    #[test]
    fn zero_points_unpack_along_the_rows() {
        // Rows 0..8 of two groups, 4 bits: column g holds zp[r][g] + 8 in
        // nibble r of its word.
        let (rows, groups) = (8, 2);
        let zp: Vec<i32> = (0..rows * groups).map(|i| (i as i32 % 16) - 8).collect();
        let mut words = [0u32; 2];
        for r in 0..rows {
            for g in 0..groups {
                words[g] |= ((zp[r * groups + g] + 8) as u32) << (4 * r);
            }
        }
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(unpack_zero_points(&bytes, rows, groups, 4), zp);
    }
}
