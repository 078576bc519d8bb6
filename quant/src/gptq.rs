//! GPTQ and AWQ integer weights: `bits`-bit codes packed eight (4-bit) or
//! four (8-bit) to an int32 word, an unsigned zero point and a scale per
//! group and output column, `w = s · (q − z)` in the scales' dtype.
//!
//! - GPTQ (AutoGPTQ / GPTQModel `QuantLinear`): `qweight` `[in/pf, out]`
//!   packed along the input dimension (input `i` in bits
//!   `bits·(i mod pf)` of word row `i / pf`), `qzeros` `[groups, out/pf]`
//!   packed along the output dimension the same way, `scales`
//!   `[groups, out]`, `g_idx` `[in]` the group of each input (act-order
//!   permutes it). The v1 checkpoint format stores `z − 1`: the reader adds
//!   one back and masks, as AutoGPTQ's `zeros = zeros + 1;
//!   zeros = bitwise_and(zeros, 2^bits − 1)`.
//! - AWQ (AutoAWQ GEMM): `qweight` `[in, out/8]` and `qzeros`
//!   `[groups, out/8]` packed along the output dimension in the order
//!   `[0, 2, 4, 6, 1, 3, 5, 7]` (output `8k + j` in nibble `REVERSE[j]`,
//!   AutoAWQ's `reverse_awq_order`), `scales` `[in/group_size, out]`.
//!
//! There is no re-quantizer (both need calibration data): a new value is
//! re-rounded on the base's own grid, `clamp(round(x / s) + z, 0, 2^bits − 1)`.

use crate::float::Precision;

/// How the codes are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// GPTQ: codes packed along the input rows.
    Gptq,
    /// AWQ GEMM: codes packed along the output columns, interleaved.
    Awq,
}

/// The nibble that holds output `8k + j` of an AWQ word (AutoAWQ's
/// `AWQ_REVERSE_ORDER`, the inverse of the packing order `[0,2,4,6,1,3,5,7]`).
pub const AWQ_REVERSE_ORDER: [u32; 8] = [0, 4, 1, 5, 2, 6, 3, 7];

/// The grid of one weight `[out, in]`: per group and output column a scale
/// and an (unpacked, v1-corrected) zero point, and each input's group.
pub struct Grid {
    /// Bits per code.
    pub bits: u32,
    /// Output features (rows of the weight).
    pub out: usize,
    /// Input features (columns of the weight).
    pub inp: usize,
    /// `[groups, out]` scales.
    pub scales: Vec<f32>,
    /// `[groups, out]` zero points.
    pub zeros: Vec<u8>,
    /// The group of each input.
    pub g_idx: Vec<u32>,
    /// The scales' dtype, the arithmetic's.
    pub precision: Precision,
    /// The packing.
    pub packing: Packing,
}

/// Codes per int32 word.
pub fn per_word(bits: u32) -> usize {
    (32 / bits) as usize
}

/// The word and bit shift of the code for output `o`, input `i`.
#[inline]
fn locate(packing: Packing, bits: u32, out: usize, o: usize, i: usize) -> (usize, u32) {
    let pf = per_word(bits);
    match packing {
        Packing::Gptq => ((i / pf) * out + o, bits * (i % pf) as u32),
        Packing::Awq => (i * (out / pf) + o / pf, bits * AWQ_REVERSE_ORDER[o % pf]),
    }
}

#[inline]
fn word(bytes: &[u8], w: usize) -> u32 {
    u32::from_le_bytes(bytes[4 * w..4 * w + 4].try_into().expect("4 bytes"))
}

/// Unpack `qzeros` (`[groups, out/pf]` words) into `[groups, out]` zero
/// points; `plus_one` for GPTQ's v1 format.
pub fn unpack_zeros(
    packing: Packing,
    bits: u32,
    qzeros: &[u8],
    groups: usize,
    out: usize,
    plus_one: bool,
) -> Vec<u8> {
    let mask = (1u32 << bits) - 1;
    let pf = per_word(bits);
    let mut z = Vec::with_capacity(groups * out);
    for g in 0..groups {
        for o in 0..out {
            let shift = match packing {
                Packing::Gptq => bits * (o % pf) as u32,
                Packing::Awq => bits * AWQ_REVERSE_ORDER[o % pf],
            };
            let q = (word(qzeros, g * (out / pf) + o / pf) >> shift) & mask;
            z.push(((q + plus_one as u32) & mask) as u8);
        }
    }
    z
}

impl Grid {
    /// The value of code `q` at output `o`, input `i`: `round_p(s · (q − z))`.
    #[inline]
    fn value(&self, o: usize, i: usize, q: u32) -> f32 {
        let k = self.g_idx[i] as usize * self.out + o;
        let d = q as i32 - self.zeros[k] as i32;
        self.precision.round(self.scales[k] * d as f32)
    }

    /// Rows `start..start + n` of the weight from `qweight`, into `out`
    /// (`n · inp` values).
    pub fn dequantize_rows(&self, qweight: &[u8], start: usize, out: &mut [f32]) {
        let mask = (1u32 << self.bits) - 1;
        for (r, row) in out.chunks_exact_mut(self.inp).enumerate() {
            let o = start + r;
            for (i, v) in row.iter_mut().enumerate() {
                let (w, shift) = locate(self.packing, self.bits, self.out, o, i);
                *v = self.value(o, i, (word(qweight, w) >> shift) & mask);
            }
        }
    }

    /// Rows `start..start + n` from their codes (`n · inp`, as
    /// [`Grid::codes_for_rows`] gives), into `out`.
    pub fn decode_codes(&self, codes: &[u8], start: usize, out: &mut [f32]) {
        for (r, (row, q)) in out
            .chunks_exact_mut(self.inp)
            .zip(codes.chunks_exact(self.inp))
            .enumerate()
        {
            for (i, (v, &q)) in row.iter_mut().zip(q).enumerate() {
                *v = self.value(start + r, i, q as u32);
            }
        }
    }

    /// Codes of rows `start..start + n` (`x`, `n · inp` values in the
    /// scales' dtype) re-rounded on the grid:
    /// `clamp(round(x / s) + z, 0, 2^bits − 1)` (`z` where `s` is zero).
    pub fn codes_for_rows(&self, x: &[f32], start: usize) -> Vec<u8> {
        let max = ((1u32 << self.bits) - 1) as f32;
        let mut codes = Vec::with_capacity(x.len());
        for (r, row) in x.chunks_exact(self.inp).enumerate() {
            let o = start + r;
            for (i, &v) in row.iter().enumerate() {
                let k = self.g_idx[i] as usize * self.out + o;
                let (s, z) = (self.scales[k], self.zeros[k] as f32);
                let q = if s == 0.0 {
                    z
                } else {
                    ((v / s).round_ties_even() + z).clamp(0.0, max)
                };
                codes.push(q as u8);
            }
        }
        codes
    }

    /// Store the codes of rows `start..` into `qweight` (the whole
    /// tensor's words, those codes' bits still zero).
    pub fn place_codes(&self, codes: &[u8], start: usize, qweight: &mut [u32]) {
        for (r, row) in codes.chunks_exact(self.inp).enumerate() {
            for (i, &q) in row.iter().enumerate() {
                let (w, shift) = locate(self.packing, self.bits, self.out, start + r, i);
                qweight[w] |= (q as u32) << shift;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(packing: Packing, bits: u32) -> Grid {
        let (out, inp) = (8, 16);
        Grid {
            bits,
            out,
            inp,
            scales: (0..2 * out).map(|k| 0.25 + k as f32 / 16.0).collect(),
            zeros: (0..2 * out).map(|k| (k % 7) as u8 + 1).collect(),
            g_idx: (0..inp as u32).map(|i| (i * 7 + 3) % 2).collect(),
            precision: Precision::F16,
            packing,
        }
    }

    #[test]
    fn codes_on_the_grid_round_trip() {
        for (packing, bits) in [(Packing::Gptq, 4), (Packing::Gptq, 8), (Packing::Awq, 4)] {
            let g = grid(packing, bits);
            let words = g.out * g.inp / per_word(bits);
            let qweight: Vec<u32> = (0..words as u32)
                .map(|w| w.wrapping_mul(2_654_435_761))
                .collect();
            let bytes: Vec<u8> = qweight.iter().flat_map(|w| w.to_le_bytes()).collect();
            let mut x = vec![0f32; g.out * g.inp];
            g.dequantize_rows(&bytes, 0, &mut x);
            let mut again = vec![0u32; words];
            let (a, b) = (
                g.codes_for_rows(&x[..4 * g.inp], 0),
                g.codes_for_rows(&x[4 * g.inp..], 4),
            );
            g.place_codes(&b, 4, &mut again);
            g.place_codes(&a, 0, &mut again);
            assert_eq!(again, qweight, "{packing:?} {bits}");
            let mut d = vec![0f32; 4 * g.inp];
            g.decode_codes(&b, 4, &mut d);
            assert_eq!(d, x[4 * g.inp..]);
        }
    }

    #[test]
    fn awq_order_puts_output_two_in_nibble_one() {
        let mut g = grid(Packing::Awq, 4);
        g.zeros.fill(0);
        g.scales.fill(1.0);
        let bytes = 0x0000_0050u32.to_le_bytes().repeat(16);
        let mut row = vec![0f32; 16];
        g.dequantize_rows(&bytes, 2, &mut row);
        assert_eq!(row, vec![5.0; 16]);
    }

    #[test]
    fn v1_zeros_add_one_and_mask() {
        let z = unpack_zeros(Packing::Gptq, 4, &0xf7u32.to_le_bytes(), 1, 8, true);
        assert_eq!(z, [8, 0, 1, 1, 1, 1, 1, 1]);
    }
}
