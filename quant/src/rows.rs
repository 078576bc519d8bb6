//! The row functions: check lengths and values, then run the type's kernel
//! from its registry row (`ggml::registry`).

use crate::error::QuantError;
use crate::ggml::registry::{self, codec};
use crate::types::GgmlType;

fn check_lengths(ty: GgmlType, elements: usize, bytes: usize) -> Result<(), QuantError> {
    match ty.row_size(elements) {
        Some(n) if n == bytes => Ok(()),
        _ => Err(QuantError::BadLength {
            ty,
            elements,
            bytes,
        }),
    }
}

/// Decode one row (any whole number of blocks) of `ty` into `dst`.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(ty, dst.len(), src.len())?;
    let c = codec(ty).ok_or(QuantError::Unsupported {
        ty,
        op: "dequantize",
        why: "no decoder for this type",
    })?;
    (c.dequantize)(src, dst);
    Ok(())
}

/// The index and value of the first NaN or infinity in `row`.
pub fn find_non_finite(row: &[f32]) -> Option<(usize, f32)> {
    // A branch-free test per 64 elements; the exact position is searched
    // only in a chunk that has a hit.
    const CHUNK: usize = 64;
    let first_hit = registry::FIRST_SPECIAL_CHUNK.best()(row, CHUNK)?;
    let chunk = &row[first_hit * CHUNK..row.len().min((first_hit + 1) * CHUNK)];
    let i = chunk.iter().position(|v| !v.is_finite())?;
    Some((first_hit * CHUNK + i, chunk[i]))
}

/// Encode one row of finite floats as `ty`. NaN or infinity is an error,
/// never silently encoded.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(ty, src.len(), dst.len())?;
    let row = registry::row(ty);
    if let Some(checked) = row.encode_checked {
        // The encoding is one cheap pass; testing for NaN/Inf in that same
        // pass saves a second read of the row.
        if !checked.best()(src, dst) {
            return Ok(());
        }
    }
    if let Some((index, value)) = find_non_finite(src) {
        return Err(QuantError::NonFinite { index, value });
    }
    let q = row
        .encode
        .ok_or(QuantError::Unsupported {
            ty,
            op: "quantize",
            why: ty.quantize_unavailable_reason(),
        })?
        .best();
    q(src, dst);
    Ok(())
}

/// Whether ggml's encoder for `ty` uses an importance matrix, i.e.
/// [`quantize_row_weighted`] gives other bytes than [`quantize_row`] for
/// some input. Q8_0, the float types, TQ1_0/TQ2_0 and MXFP4 ignore it.
pub fn uses_importance(ty: GgmlType) -> bool {
    registry::row(ty).weighted.is_some()
}

/// Encode one row as `ty` the way `ggml_quantize_chunk(ty, src, dst, 0, 1,
/// n, importance)` does: `importance` holds one non-negative weight per
/// element (per column of the tensor; llama.cpp's imatrix entry divided by
/// its count). Q4_0…Q5_1, Q2_K…Q6_K, IQ4_NL and IQ4_XS run ggml's
/// `quantize_row_*_impl` ports; types whose ggml encoder ignores the
/// importance (Q8_0, F16, BF16, F32, TQ1_0, TQ2_0, MXFP4) encode exactly as
/// [`quantize_row`]. IQ2_XXS, which ggml only produces with importance
/// weights, runs the port of `quantize_row_iq2_xxs_impl`. NaN/Inf in `src`,
/// and an importance vector of the wrong length or with a NaN, infinite or
/// negative entry, are errors. The other grid types (IQ2_XS, IQ2_S, IQ3_XXS,
/// IQ3_S, IQ1_S, IQ1_M) are not supported yet.
pub fn quantize_row_weighted(
    ty: GgmlType,
    src: &[f32],
    importance: &[f32],
    dst: &mut [u8],
) -> Result<(), QuantError> {
    check_lengths(ty, src.len(), dst.len())?;
    if importance.len() != src.len() {
        return Err(QuantError::BadImportance {
            len: importance.len(),
            expected: src.len(),
            entry: None,
        });
    }
    if let Some(i) = importance
        .iter()
        .position(|w| !(w.is_finite() && *w >= 0.0))
    {
        return Err(QuantError::BadImportance {
            len: importance.len(),
            expected: src.len(),
            entry: Some((i, importance[i])),
        });
    }
    match registry::row(ty).weighted {
        Some(q) => {
            if let Some((index, value)) = find_non_finite(src) {
                return Err(QuantError::NonFinite { index, value });
            }
            q(src, importance, dst);
            Ok(())
        }
        None if ty.requires_imatrix() => Err(QuantError::Unsupported {
            ty,
            op: "quantize",
            why: "importance-weighted encoding of this type is not implemented",
        }),
        None => quantize_row(ty, src, dst),
    }
}

/// What [`scan_row`] found in encoded data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowScan {
    /// Element index of the first NaN or infinity.
    pub first_non_finite: Option<usize>,
    /// Whether every element is ±0.
    pub all_zero: bool,
}

/// Look for NaN/Inf and all-zero content in `n` encoded elements of `ty`
/// without keeping a decoded copy: float types are checked on their bits,
/// block types are decoded one block at a time.
pub fn scan_row(ty: GgmlType, src: &[u8], n: usize) -> Result<RowScan, QuantError> {
    check_lengths(ty, n, src.len())?;
    let mut scan = RowScan {
        first_non_finite: None,
        all_zero: true,
    };
    let mut note = |i: usize, finite: bool, zero: bool| {
        if !finite && scan.first_non_finite.is_none() {
            scan.first_non_finite = Some(i);
        }
        scan.all_zero &= zero;
    };
    match ty {
        GgmlType::F32 => {
            for (i, c) in src.chunks_exact(4).enumerate() {
                let u = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                note(i, u & 0x7f80_0000 != 0x7f80_0000, u & 0x7fff_ffff == 0);
            }
        }
        GgmlType::F16 => {
            // Branch-free per 64 elements; element by element only where a
            // chunk holds a value worth locating.
            for (c, chunk) in src.chunks(128).enumerate() {
                let (mut special, mut nonzero) = (0u16, 0u16);
                for h in chunk.chunks_exact(2) {
                    let h = u16::from_le_bytes([h[0], h[1]]);
                    special |= u16::from(h & 0x7c00 == 0x7c00);
                    nonzero |= h & 0x7fff;
                }
                if special != 0 {
                    for (i, h) in chunk.chunks_exact(2).enumerate() {
                        let h = u16::from_le_bytes([h[0], h[1]]);
                        note(c * 64 + i, h & 0x7c00 != 0x7c00, h & 0x7fff == 0);
                    }
                } else if nonzero != 0 {
                    note(c * 64, true, false);
                }
            }
        }
        GgmlType::BF16 => {
            for (i, c) in src.chunks_exact(2).enumerate() {
                let h = u16::from_le_bytes([c[0], c[1]]);
                note(i, h & 0x7f80 != 0x7f80, h & 0x7fff == 0);
            }
        }
        _ => {
            let c = codec(ty).ok_or(QuantError::Unsupported {
                ty,
                op: "dequantize",
                why: "no decoder for this type",
            })?;
            let bs = ty.block_size();
            let mut block = vec![0f32; bs];
            for (b, bytes) in src.chunks_exact(ty.type_size()).enumerate() {
                (c.dequantize)(bytes, &mut block);
                for (j, v) in block.iter().enumerate() {
                    note(b * bs + j, v.is_finite(), *v == 0.0);
                }
            }
        }
    }
    Ok(scan)
}

#[cfg(test)]
mod scan_tests {
    use super::*;
    use crate::ggml::cpu::Isa;
    use crate::ggml::scalar::scan;

    #[test]
    fn find_non_finite_locates_every_special_value_in_every_variant() {
        // Lengths around the 32- and 64-element steps, every position, every
        // special value; ordinary extremes must never be flagged.
        for len in [1usize, 31, 32, 33, 63, 64, 65, 127, 128, 200, 4096] {
            let mut row: Vec<f32> = (0..len)
                .map(|i| match i % 5 {
                    0 => f32::MAX,
                    1 => -f32::MAX,
                    2 => f32::from_bits(1),
                    3 => -0.0,
                    _ => i as f32,
                })
                .collect();
            assert_eq!(find_non_finite(&row), None, "len {len}");
            assert_eq!(scan::first_special_chunk(&row, 64), None);
            let step = if len > 300 { 37 } else { 1 };
            for pos in (0..len).step_by(step) {
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN] {
                    let keep = row[pos];
                    row[pos] = bad;
                    let (i, v) = find_non_finite(&row).expect("found");
                    assert_eq!((i, v.to_bits()), (pos, bad.to_bits()), "len {len}");
                    assert_eq!(scan::first_special_chunk(&row, 64), Some(pos / 64));
                    if let Some(f) = registry::FIRST_SPECIAL_CHUNK.get(Isa::Avx2) {
                        if Isa::Avx2.is_available() {
                            assert_eq!(f(&row, 64), Some(pos / 64), "avx2, len {len}, pos {pos}");
                        }
                    }
                    // A second special value further on changes nothing.
                    if pos + 1 < len {
                        let k = row[len - 1];
                        row[len - 1] = f32::NAN;
                        assert_eq!(find_non_finite(&row).map(|r| r.0), Some(pos));
                        row[len - 1] = k;
                    }
                    row[pos] = keep;
                }
            }
        }
    }

    #[test]
    fn scan_finds_non_finite_and_zero_on_bits() {
        let f16 = |x: f32| half::f16::from_f32(x).to_bits().to_le_bytes();
        let row: Vec<u8> = [0.0f32, -0.0, 0.0, 0.0]
            .iter()
            .flat_map(|&x| f16(x))
            .collect();
        let s = scan_row(GgmlType::F16, &row, 4).unwrap();
        assert_eq!((s.first_non_finite, s.all_zero), (None, true));
        let row: Vec<u8> = [0.0f32, 1.0, f32::INFINITY, f32::NAN]
            .iter()
            .flat_map(|&x| f16(x))
            .collect();
        let s = scan_row(GgmlType::F16, &row, 4).unwrap();
        assert_eq!((s.first_non_finite, s.all_zero), (Some(2), false));
        let row: Vec<u8> = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        assert_eq!(
            scan_row(GgmlType::F32, &row, 2).unwrap().first_non_finite,
            Some(1)
        );
        let bf = [0x00u8, 0x00, 0x80, 0x7f];
        assert_eq!(
            scan_row(GgmlType::BF16, &bf, 2).unwrap().first_non_finite,
            Some(1)
        );
    }
}
