//! NF4 and FP4: 4-bit blockwise codes with one float32 absmax per block.

use super::common::{check_finite, check_lengths, num_blocks, BnbError};

/// The two 4-bit data types of bitsandbytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FourBit {
    /// NormalFloat4: quantiles of N(0, 1), sorted, code 7 is exact zero.
    Nf4,
    /// FP4 (1 sign, 2 exponent, 1 mantissa bit), in bit-pattern order.
    Fp4,
}

/// Blocksizes bitsandbytes accepts for `quantize_4bit` (default 64).
pub const BLOCKSIZES_4BIT: [usize; 8] = [32, 64, 128, 256, 512, 1024, 2048, 4096];

/// NF4 values as written in `get_4bit_type("nf4")`; Python floats (f64)
/// rounded once to f32, exactly as `torch.tensor(data)` does.
const NF4_F64: [f64; 16] = [
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
];

/// FP4 values before normalisation in `get_4bit_type("fp4")` (divided by 12
/// in f32). Its "-0" is the Python integer 0, so nibble 8 is +0.0.
const FP4_RAW: [f32; 16] = [
    0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0, 0.0, -0.0625, -8.0, -12.0, -4.0, -6.0, -2.0, -3.0,
];

impl FourBit {
    /// The `quant_type` string of bitsandbytes (`"nf4"` / `"fp4"`).
    pub fn name(self) -> &'static str {
        match self {
            FourBit::Nf4 => "nf4",
            FourBit::Fp4 => "fp4",
        }
    }

    /// Parses a `quant_type` string.
    pub fn from_name(s: &str) -> Option<FourBit> {
        match s {
            "nf4" => Some(FourBit::Nf4),
            "fp4" => Some(FourBit::Fp4),
            _ => None,
        }
    }

    /// The 16-entry code table of `functional.get_4bit_type`, indexed by nibble
    /// (this is also the `quant_map` a checkpoint stores).
    pub fn code(self) -> [f32; 16] {
        match self {
            FourBit::Nf4 => NF4_F64.map(|v| v as f32),
            // data.div_(data.abs().max()): the max is 12.
            FourBit::Fp4 => FP4_RAW.map(|v| v / 12.0f32),
        }
    }

    /// Decision boundaries and sorted-position → nibble map of
    /// `_get_4bit_quantize_bounds` (backends/default/ops.py): the table sorted
    /// by a stable argsort (FP4 +0 at nibble 0 sorts before -0 at nibble 8),
    /// midpoints `(a + b) / 2` in f32.
    fn bounds(self) -> ([f32; 15], [u8; 16]) {
        let code = self.code();
        let mut order: [u8; 16] = std::array::from_fn(|i| i as u8);
        order.sort_by(|&a, &b| {
            code[a as usize]
                .partial_cmp(&code[b as usize])
                .expect("finite table")
        });
        let bounds = std::array::from_fn(|i| {
            (code[order[i] as usize] + code[order[i + 1] as usize]) / 2.0f32
        });
        (bounds, order)
    }
}

/// `torch.clamp(min=1e-38)` with the bound rounded to f32 (a subnormal).
fn tiny() -> f32 {
    1e-38f64 as f32
}

fn check_blocksize(blocksize: usize) -> Result<(), BnbError> {
    if BLOCKSIZES_4BIT.contains(&blocksize) {
        Ok(())
    } else {
        Err(BnbError::BadBlocksize(blocksize))
    }
}

/// Quantizes a flattened tensor to packed 4-bit codes and one absmax per block.
///
/// Port of the pure-torch `bitsandbytes::quantize_4bit` kernel
/// (backends/default/ops.py, used on CPU by bitsandbytes ≥ 0.47):
/// - full blocks scale by `x * (1 / max(absmax, 1e-38))`, the trailing
///   partial block by `x / max(absmax, 1e-38)`, both clamped to [-1, 1];
/// - the stored absmax of a full block is the raw max |x| (0 for a zero
///   block), of the partial block the clamped one (1e-38 when all zero);
/// - `torch.bucketize` against the midpoints: a value equal to a midpoint
///   takes the lower code;
/// - element `2j` goes to the high nibble of byte `j`; an odd count is padded
///   with a scaled 0.0.
///
/// Returns `(packed, absmax)` with `n.div_ceil(2)` bytes and
/// `n.div_ceil(blocksize)` scales.
pub fn quantize_4bit(
    kind: FourBit,
    x: &[f32],
    blocksize: usize,
) -> Result<(Vec<u8>, Vec<f32>), BnbError> {
    check_blocksize(blocksize)?;
    check_finite(x)?;
    let (bounds, order) = kind.bounds();
    let bucket = |s: f32| -> u8 {
        let i = bounds.iter().take_while(|&&b| b < s).count();
        order[i]
    };
    let n = x.len();
    let mut packed = vec![0u8; n.div_ceil(2)];
    let mut absmax = Vec::with_capacity(num_blocks(n, blocksize));
    for (b, blk) in x.chunks(blocksize).enumerate() {
        let am = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let full = blk.len() == blocksize;
        let clamped = am.max(tiny());
        let recip = 1.0f32 / clamped;
        absmax.push(if full { am } else { clamped });
        for (k, &v) in blk.iter().enumerate() {
            let s = if full { v * recip } else { v / clamped };
            let q = bucket(s.clamp(-1.0, 1.0));
            let i = b * blocksize + k;
            packed[i / 2] |= if i.is_multiple_of(2) { q << 4 } else { q };
        }
    }
    if !n.is_multiple_of(2) {
        packed[n / 2] |= bucket(0.0);
    }
    Ok((packed, absmax))
}

/// Dequantizes `n` elements: `code[nibble] * absmax[i / blocksize]` in f32.
///
/// bitsandbytes 0.50 on CPU has three paths for float32 output that compute
/// this same product: the torch `_dequantize_4bit_compute` (odd last
/// dimension, or blocksize ≥ 2048 on AVX-512), the native AVX-512 kernel
/// (last dimension a multiple of 16) and the native scalar kernel (the rest).
/// The last one reads FP4 nibble 8 from a table holding -0.0, so it returns
/// -0.0 where this function (and the other two) return +0.0.
pub fn dequantize_4bit(
    kind: FourBit,
    packed: &[u8],
    absmax: &[f32],
    blocksize: usize,
    n: usize,
    out: &mut [f32],
) -> Result<(), BnbError> {
    check_blocksize(blocksize)?;
    check_lengths(&[
        ("packed", n.div_ceil(2), packed.len()),
        ("absmax", num_blocks(n, blocksize), absmax.len()),
        ("out", n, out.len()),
    ])?;
    let table = kind.code();
    for (i, o) in out.iter_mut().enumerate() {
        *o = table[nibble(packed, i) as usize] * absmax[i / blocksize];
    }
    Ok(())
}

/// The code of element `i`: element `2j` is the high nibble of byte `j`.
#[inline]
pub(super) fn nibble(packed: &[u8], i: usize) -> u8 {
    let b = packed[i / 2];
    if i.is_multiple_of(2) {
        b >> 4
    } else {
        b & 0xF
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_bounds_are_sorted_midpoints() {
        let (b, order) = FourBit::Nf4.bounds();
        assert_eq!(order, std::array::from_fn(|i| i as u8));
        assert!(b.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn fp4_order_maps_sorted_to_nibbles() {
        let (_, order) = FourBit::Fp4.bounds();
        let code = FourBit::Fp4.code();
        assert_eq!(code[order[0] as usize], -1.0);
        assert_eq!(code[order[15] as usize], 1.0);
        assert_eq!((order[7], order[8]), (0, 8));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            quantize_4bit(FourBit::Nf4, &[1.0; 8], 48),
            Err(BnbError::BadBlocksize(48))
        );
        assert!(matches!(
            quantize_4bit(FourBit::Fp4, &[1.0, f32::NAN], 64),
            Err(BnbError::NonFinite { index: 1, .. })
        ));
        let mut out = [0.0; 3];
        assert!(dequantize_4bit(FourBit::Nf4, &[0u8; 1], &[1.0], 64, 3, &mut out).is_err());
    }
}
