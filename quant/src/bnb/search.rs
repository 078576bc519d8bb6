//! Candidate search per NF4/FP4 block: given the fresh encoding of the exact
//! target `t = dequant(base) + αΔ` and the base's own block, keep for every
//! block whichever of the two decodes nearer to `t` (squared error over the
//! block), as `requant` does for GGUF blocks.
//!
//! A 4-bit block is its codes and its absmax. Both candidates come with the
//! absmax *as it decodes in the output*: with double quantization the
//! caller re-encodes the base's absmax under the output's nested state
//! ([`super::NestedAbsmax::codes_for`]), so the values compared here are
//! exactly what `dequantize_4bit` will return.
//!
//! A model loads the weights in its module dtype (float16, bfloat16): the
//! f32 product rounded once. The base block wins only when it is strictly
//! nearer in f32 *and* no further after that rounding, so the output is
//! never further from `t` than the fresh one, block by block, in either
//! domain. Ties go to fresh, so search writes bitsandbytes' bytes wherever
//! nothing is gained; one exception: a base block that decodes exactly to
//! `t` (zero error, which no rounding can undercut) is kept.

use super::common::{check_lengths, num_blocks, BnbError};
use super::fourbit::{nibble, FourBit};

/// A run of 4-bit blocks: packed codes (two per byte, the even element in
/// the high nibble) and every block's absmax as it decodes.
#[derive(Debug, Clone, Copy)]
pub struct Blocks4<'a> {
    /// `n.div_ceil(2)` bytes.
    pub packed: &'a [u8],
    /// One absmax per block.
    pub absmax: &'a [f32],
}

fn set_nibble(packed: &mut [u8], i: usize, q: u8) {
    let b = &mut packed[i / 2];
    *b = if i.is_multiple_of(2) {
        (*b & 0x0F) | (q << 4)
    } else {
        (*b & 0xF0) | q
    };
}

/// Choose every block of `target` between the fresh encoding (`packed`
/// with `fresh_absmax`) and `base`, as the module documentation says.
/// `packed` is overwritten with the base's codes in the blocks it wins.
/// Returns, per block, whether the base won (a base block equal to the
/// fresh one counts as fresh), and what the chosen blocks decode to (f32,
/// before the module rounding `round`).
pub fn search_4bit(
    kind: FourBit,
    blocksize: usize,
    target: &[f32],
    round: impl Fn(f32) -> f32,
    packed: &mut [u8],
    fresh_absmax: &[f32],
    base: Blocks4<'_>,
) -> Result<(Vec<bool>, Vec<f32>), BnbError> {
    if blocksize == 0 {
        return Err(BnbError::BadBlocksize(0));
    }
    let n = target.len();
    let nb = num_blocks(n, blocksize);
    check_lengths(&[
        ("packed", n.div_ceil(2), packed.len()),
        ("base packed", n.div_ceil(2), base.packed.len()),
        ("absmax", nb, fresh_absmax.len()),
        ("base absmax", nb, base.absmax.len()),
    ])?;
    let table = kind.code();
    let mut took = Vec::with_capacity(nb);
    let mut decoded = vec![0f32; n];
    for (b, t) in target.chunks(blocksize).enumerate() {
        let e0 = b * blocksize;
        let (a_fresh, a_base) = (fresh_absmax[b], base.absmax[b]);
        let same = a_fresh.to_bits() == a_base.to_bits()
            && (e0..e0 + t.len()).all(|i| nibble(packed, i) == nibble(base.packed, i));
        // [f32, rounded] squared errors of fresh and base.
        let mut e = [[0f64; 2]; 2];
        for (k, &x) in t.iter().enumerate() {
            let x64 = x as f64;
            let vf = table[nibble(packed, e0 + k) as usize] * a_fresh;
            let vb = table[nibble(base.packed, e0 + k) as usize] * a_base;
            for (e, v) in e.iter_mut().zip([vf, vb]) {
                let d = x64 - v as f64;
                let r = x64 - round(v) as f64;
                e[0] += d * d;
                e[1] += r * r;
            }
        }
        let [fresh, based] = e.map(|e| e.map(|v| if v.is_finite() { v } else { f64::INFINITY }));
        let base_wins = !same && (based[0] == 0.0 || (based[0] < fresh[0] && based[1] <= fresh[1]));
        took.push(base_wins);
        let a = if base_wins {
            for i in e0..e0 + t.len() {
                set_nibble(packed, i, nibble(base.packed, i));
            }
            a_base
        } else {
            a_fresh
        };
        for (k, d) in decoded[e0..e0 + t.len()].iter_mut().enumerate() {
            *d = table[nibble(packed, e0 + k) as usize] * a;
        }
    }
    Ok((took, decoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bnb::{dequantize_4bit, quantize_4bit};

    fn f16(v: f32) -> f32 {
        half::f16::from_f32(v).to_f32()
    }

    /// Blocks of random-ish values with a residual that moves some blocks
    /// a little and some a lot: the search is never further than fresh per
    /// block in both domains, keeps untouched blocks, and decodes as
    /// `dequantize_4bit` does.
    #[test]
    fn never_further_than_fresh() {
        for kind in [FourBit::Nf4, FourBit::Fp4] {
            let bs = 32;
            let n = bs * 40 + 7;
            let base_vals: Vec<f32> = (0..n)
                .map(|i| f16(((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 0.05))
                .collect();
            let (bp, ba) = quantize_4bit(kind, &base_vals, bs).unwrap();
            let mut base_dec = vec![0f32; n];
            dequantize_4bit(kind, &bp, &ba, bs, n, &mut base_dec).unwrap();
            let exact: Vec<f32> = base_dec
                .iter()
                .enumerate()
                .map(|(i, &b)| {
                    let blk = i / bs;
                    let amp = [0.0, 1e-5, 1e-3, 2e-2][blk % 4];
                    b + amp * (((i * 31) % 17) as f32 - 8.0)
                })
                .collect();
            let target: Vec<f32> = exact.iter().map(|&v| f16(v)).collect();
            let (fp, fa) = quantize_4bit(kind, &target, bs).unwrap();
            let mut packed = fp.clone();
            let base = Blocks4 {
                packed: &bp,
                absmax: &ba,
            };
            let (took, dec) = search_4bit(kind, bs, &exact, f16, &mut packed, &fa, base).unwrap();
            let absmax: Vec<f32> = (0..took.len())
                .map(|b| if took[b] { ba[b] } else { fa[b] })
                .collect();
            let mut check = vec![0f32; n];
            dequantize_4bit(kind, &packed, &absmax, bs, n, &mut check).unwrap();
            assert_eq!(check, dec);
            let mut fresh_dec = vec![0f32; n];
            dequantize_4bit(kind, &fp, &fa, bs, n, &mut fresh_dec).unwrap();
            let err = |v: &[f32], r: bool, b: usize| -> f64 {
                let s = b * bs..((b + 1) * bs).min(n);
                exact[s.clone()]
                    .iter()
                    .zip(&v[s])
                    .map(|(&x, &y)| {
                        let y = if r { f16(y) } else { y };
                        (x as f64 - y as f64).powi(2)
                    })
                    .sum()
            };
            for b in 0..took.len() {
                for r in [false, true] {
                    assert!(
                        err(&dec, r, b) <= err(&fresh_dec, r, b),
                        "{kind:?} block {b}"
                    );
                }
                if b % 4 == 0 {
                    // Untouched: the base block is exact and kept (or equal to fresh).
                    let s = b * bs..((b + 1) * bs).min(n);
                    assert_eq!(&dec[s.clone()], &base_dec[s]);
                }
            }
            assert!(
                took.iter().any(|&t| t),
                "{kind:?}: some block keeps the base"
            );
            assert!(took.iter().any(|&t| !t), "{kind:?}: some block is fresh");
        }
    }

    #[test]
    fn bad_lengths_are_errors() {
        let mut packed = [0u8; 2];
        let base = Blocks4 {
            packed: &[0u8; 2],
            absmax: &[1.0],
        };
        let r = search_4bit(FourBit::Nf4, 32, &[0.0; 4], |v| v, &mut packed, &[], base);
        assert!(matches!(r, Err(BnbError::BadLength { what: "absmax", .. })));
    }
}
