//! Candidate search per block: given a quantized base row and the exact
//! target `t = dequant(base) + αΔ`, write for every block whichever of three
//! encodings decodes nearest to `t` (squared error over the block):
//!
//! - **base**: the base's own block bytes (the residual dropped there);
//! - **fresh**: `quantize_row(ty, t)`, bit-exact with llama.cpp;
//! - **re-rounded**: the base block's scales and minimums kept (fp16 `d`,
//!   `m`/`dmin`, the packed sub-block scales of the K-quants), every code
//!   set to the grid value nearest to `t` (legacy types and Q2_K…Q6_K).
//!
//! The error of each candidate is measured on what the crate's own
//! `dequantize` makes of its bytes, so the block that is written decodes to
//! exactly the values its error was computed on. For the re-rounded
//! candidate every element takes the code whose decoded value
//! `k·s + o` (the decoder's own f32 arithmetic) is nearest to its target;
//! it is therefore at least as near as the base block element by element,
//! and a "mixed" candidate that re-rounds only elements further than half a
//! step from `t` cannot beat it (it is the same block up to exact ties).
//!
//! Choice: the smallest error wins; ties go to fresh, then re-rounded, then
//! base — so `search` writes llama.cpp's bytes wherever nothing is gained and
//! differs from `fresh` only in blocks that measurably improve. One
//! exception: a base block that decodes exactly to `t` (zero error) is kept,
//! so blocks the residual does not touch stay byte-identical (and a zero
//! residual returns the base bytes, which requantization alone does not
//! guarantee).

use crate::ggml::registry;
use crate::{codec, quantize_row, GgmlType, QuantError};

/// Blocks won by each candidate, counted by the bytes written: a block is
/// `fresh` when it equals the fresh encoding, else `base` when it equals the
/// base block, else `rerounded`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SearchWins {
    /// Blocks equal to the base's block (and not to the fresh encoding).
    pub base: u64,
    /// Blocks equal to the fresh encoding.
    pub fresh: u64,
    /// Blocks with the base's scales and re-rounded codes.
    pub rerounded: u64,
}

impl SearchWins {
    /// Blocks counted.
    pub fn total(&self) -> u64 {
        self.base + self.fresh + self.rerounded
    }

    /// Add another count (chunks of one tensor, tensors of one model).
    pub fn merge(&mut self, o: &SearchWins) {
        self.base += o.base;
        self.fresh += o.fresh;
        self.rerounded += o.rerounded;
    }
}

/// Whether `ty` has the re-rounded candidate (otherwise only base and fresh
/// compete).
pub fn has_rerounding(ty: GgmlType) -> bool {
    registry::row(ty).reround.is_some()
}

/// Write into `out` (`row_size(target.len())` bytes of `ty`), block by
/// block, the candidate nearest to `target`: see the module documentation.
/// `base_row_bytes` is the base row in the same type. NaN or infinity in
/// `target` is an error; so is a type without an encoder.
pub fn search_row(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
    wins: &mut SearchWins,
) -> Result<(), QuantError> {
    let bad = || QuantError::BadLength {
        ty,
        elements: target.len(),
        bytes: base_row_bytes.len(),
    };
    if ty.row_size(target.len()) != Some(base_row_bytes.len()) {
        return Err(bad());
    }
    // Checks the output length, finiteness and that `ty` can be encoded;
    // leaves the fresh encoding of every block in `out`.
    quantize_row(ty, target, out)?;
    let decode = codec(ty)
        .ok_or(QuantError::Unsupported {
            ty,
            op: "dequantize",
            why: "no decoder for this type",
        })?
        .dequantize;
    let row = registry::row(ty);
    let reround = row.reround;
    let (bs, ts) = (row.info.block_size, row.info.type_size);
    if bs > MAX_BLOCK || ts > MAX_BYTES {
        return Err(bad());
    }
    let mut values = [0f32; MAX_BLOCK];
    let mut fresh_copy = [0u8; MAX_BYTES];
    let mut cand = [0u8; MAX_BYTES];
    let values = &mut values[..bs];
    for ((t, base), dst) in target
        .chunks_exact(bs)
        .zip(base_row_bytes.chunks_exact(ts))
        .zip(out.chunks_exact_mut(ts))
    {
        let fresh = &mut fresh_copy[..ts];
        fresh.copy_from_slice(dst);
        let e_fresh = block_error(decode, fresh, t, values);
        let e_base = block_error(decode, base, t, values);
        let mut best = e_fresh;
        if let Some(rr) = reround {
            let c = &mut cand[..ts];
            c.copy_from_slice(base);
            rr(base, t, c);
            let e_c = block_error(decode, c, t, values);
            if e_c < best {
                best = e_c;
                dst.copy_from_slice(c);
            }
        }
        if e_base < best || e_base == 0.0 {
            dst.copy_from_slice(base);
        }
        if *dst == *fresh {
            wins.fresh += 1;
        } else if dst == base {
            wins.base += 1;
        } else {
            wins.rerounded += 1;
        }
    }
    Ok(())
}

/// The re-rounded candidate alone for a whole row: the base row's bytes
/// with every code moved to the grid value nearest to `target`. For
/// inspection and tests; [`search_row`] uses it per block.
pub fn reround_row(
    ty: GgmlType,
    base_row_bytes: &[u8],
    target: &[f32],
    out: &mut [u8],
) -> Result<(), QuantError> {
    let n = ty.row_size(target.len());
    if n != Some(base_row_bytes.len()) || n != Some(out.len()) {
        return Err(QuantError::BadLength {
            ty,
            elements: target.len(),
            bytes: out.len(),
        });
    }
    if let Some((index, value)) = crate::find_non_finite(target) {
        return Err(QuantError::NonFinite { index, value });
    }
    let row = registry::row(ty);
    let rr = row.reround.ok_or(QuantError::Unsupported {
        ty,
        op: "re-round",
        why: "only Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K…Q6_K keep scales with re-rounded codes",
    })?;
    let (bs, ts) = (row.info.block_size, row.info.type_size);
    out.copy_from_slice(base_row_bytes);
    for ((t, base), dst) in target
        .chunks_exact(bs)
        .zip(base_row_bytes.chunks_exact(ts))
        .zip(out.chunks_exact_mut(ts))
    {
        rr(base, t, dst);
    }
    Ok(())
}

/// Largest block of any type (QK_K) and largest block size in bytes (Q8_K).
const MAX_BLOCK: usize = 256;
const MAX_BYTES: usize = 292;

/// Σ (t − decode(bytes))² in f64; +∞ when the block does not decode to
/// finite values, so such a block never wins against a finite one.
fn block_error(decode: registry::DecodeFn, bytes: &[u8], t: &[f32], values: &mut [f32]) -> f64 {
    decode(bytes, values);
    let mut e = 0f64;
    for (&x, &v) in t.iter().zip(values.iter()) {
        let d = x as f64 - v as f64;
        e += d * d;
    }
    if e.is_finite() {
        e
    } else {
        f64::INFINITY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize_row;

    /// The re-rounded candidate with the base's own decoded values as target
    /// reproduces the base block's decoded values (every type's layout is
    /// written where its decoder reads it).
    #[test]
    fn rerounding_the_base_values_reproduces_them() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            let n = 512;
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013 + (i as f32 * 0.3).sin())
                .collect();
            let rb = ty.row_size(n).unwrap();
            let mut base = vec![0u8; rb];
            quantize_row(ty, &x, &mut base).unwrap();
            let mut bhat = vec![0f32; n];
            dequantize_row(ty, &base, &mut bhat).unwrap();
            // Move every code away with a shifted target, then back: the
            // candidate must write each code where the decoder reads it.
            let rr = registry::row(ty).reround.unwrap();
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (blk, t) in base.chunks_exact(ts).zip(bhat.chunks_exact(bs)) {
                let shifted: Vec<f32> = t
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v + if i % 3 == 0 { 0.5 } else { -0.45 })
                    .collect();
                let mut moved = blk.to_vec();
                rr(blk, &shifted, &mut moved);
                assert_ne!(moved, blk, "{ty}: the shifted target changed nothing");
                let mut c = moved.clone();
                rr(&moved, t, &mut c);
                let mut v = vec![0f32; bs];
                dequantize_row(ty, &c, &mut v).unwrap();
                assert_eq!(v, t, "{ty}");
            }
        }
    }
}
