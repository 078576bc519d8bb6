//! Entry points shared by the fuzz targets (`fuzz/`, cargo-fuzz) and the
//! corpus replay test (`tests/fuzz_corpus.rs`), so CI replays exactly what
//! was fuzzed. Each takes arbitrary bytes and must return without panicking,
//! hanging or allocating more than the input justifies; a violated invariant
//! panics, which is what the fuzzer reports.

use crate::quant::bnb::{self, FourBit, NestedAbsmax};
use crate::quant::{dequantize_row, quantize_row, scan_row, GgmlType, ALL_TYPES};

/// Most elements decoded per call, so one input stays fast.
const MAX_ELEMENTS: usize = 1 << 14;

/// The GGUF reader on a whole file image: header, metadata, tensor infos;
/// then every tensor's bytes are sliced (bounds must hold), metadata is
/// rendered as `inspect` does and the first row of small tensors decoded.
pub fn gguf(data: &[u8]) {
    let Ok(crate::format::gguf::ParsedGguf {
        metadata,
        tensors,
        data_offset,
    }) = crate::format::gguf::parse_bytes(data)
    else {
        return;
    };
    for (_, v) in &metadata {
        let _ = crate::format::gguf::value_json(v);
    }
    for t in &tensors {
        let start = (data_offset + t.offset) as usize;
        let bytes = &data[start..start + t.size as usize];
        let row = t.row_len() as usize;
        if row > 0 && row <= MAX_ELEMENTS {
            let rs = t.ty.row_size(row).expect("validated row");
            if let Some(src) = bytes.get(..rs) {
                let mut out = vec![0f32; row];
                let _ = dequantize_row(t.ty, src, &mut out);
                let _ = scan_row(t.ty, src, row);
            }
        }
    }
}

/// The safetensors header parser on a whole file image, against the
/// `safetensors` crate's: whatever the crate accepts, ours accepts with the
/// same tensors, except a header naming one tensor twice, which we refuse.
pub fn st_header(data: &[u8]) {
    let ours = crate::format::st::parse_header_bytes(data);
    if let Ok((n, reference)) = safetensors::SafeTensors::read_metadata(data) {
        match &ours {
            Ok(tensors) => {
                let infos = reference.tensors();
                assert_eq!(tensors.len(), infos.len());
                for t in tensors {
                    let r = infos.get(&t.name).expect("same names");
                    let start = 8 + n + r.data_offsets.0;
                    assert_eq!((t.dtype, &t.shape[..]), (r.dtype, &r.shape[..]));
                    assert_eq!((t.start, t.end), (start, 8 + n + r.data_offsets.1));
                }
            }
            Err(e) => assert!(e.to_string().contains("appears twice"), "{e}"),
        }
    }
    let Ok(tensors) = ours else {
        return;
    };
    for t in &tensors {
        let bytes = &data[t.start..t.end];
        assert_eq!(bytes.len(), t.n_bytes(), "{}", t.name);
        let _ = t.ggml_type();
    }
}

/// The `model.safetensors.index.json` parser.
pub fn st_index(data: &[u8]) {
    if let Ok(shards) = crate::format::st::parse_index_bytes(data) {
        for s in shards {
            // Subfolders are fine; leaving the folder is not.
            let p = std::path::Path::new(&s);
            assert!(!s.is_empty() && p.is_relative(), "{s}");
            assert!(
                p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
                "{s}"
            );
        }
    }
}

/// Every ggml decoder on arbitrary bytes: byte 0 picks the type, the rest
/// are blocks. Also scans the row, decodes with a wrong length (must be an
/// error, not a panic) and re-encodes finite rows.
pub fn dequantize(data: &[u8]) {
    let Some((&sel, src)) = data.split_first() else {
        return;
    };
    let ty: GgmlType = ALL_TYPES[sel as usize % ALL_TYPES.len()];
    let n = (src.len() / ty.type_size() * ty.block_size())
        .min(MAX_ELEMENTS / ty.block_size() * ty.block_size());
    let rs = ty.row_size(n).expect("whole blocks");
    let src = &src[..rs];
    let mut out = vec![0f32; n];
    if dequantize_row(ty, src, &mut out).is_err() {
        return;
    }
    let scan = scan_row(ty, src, n).expect("lengths already checked");
    let first_bad = out.iter().position(|v| !v.is_finite());
    assert_eq!(
        scan.first_non_finite.is_some(),
        first_bad.is_some(),
        "{}",
        ty.name()
    );
    let mut short = vec![0f32; n + 1];
    assert!(dequantize_row(ty, src, &mut short).is_err());
    if first_bad.is_none() && n > 0 && sel & 0x80 != 0 && n <= 1024 {
        let mut enc = vec![0u8; rs];
        let _ = quantize_row(ty, &out, &mut enc);
    }
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The bitsandbytes decoders (NF4, FP4, blockwise 8-bit, nested absmax,
/// LLM.int8) with lengths and block sizes taken from the input, consistent
/// or not.
pub fn bnb_dequantize(data: &[u8]) {
    if data.len() < 4 {
        return;
    }
    let (sel, bs, n_hint, rest) = (data[0], data[1], data[2], &data[3..]);
    // Split the rest into codes and f32 scales at a point the input picks.
    let cut = (n_hint as usize * rest.len() / 256).min(rest.len());
    let (codes, scales) = rest.split_at(cut);
    let scales = f32s(scales);
    let blocksize = match bs % 4 {
        0 => bnb::BLOCKSIZES_4BIT[(bs as usize / 4) % 8],
        1 => bs as usize,
        2 => 0,
        _ => 1 << (bs % 24),
    };
    match sel % 5 {
        0 | 1 => {
            let kind = if sel % 5 == 0 {
                FourBit::Nf4
            } else {
                FourBit::Fp4
            };
            let n = (codes.len() * 2).saturating_sub(usize::from(sel & 0x80 != 0));
            let mut out = vec![0f32; n];
            let _ = bnb::dequantize_4bit(kind, codes, &scales, blocksize, n, &mut out);
        }
        2 => {
            let mut out = vec![0f32; codes.len()];
            let code = bnb::dynamic_map();
            let _ = bnb::dequantize_blockwise(codes, &scales, &code, blocksize, &mut out);
        }
        3 => {
            let nested = NestedAbsmax {
                codes: codes.to_vec(),
                absmax2: scales,
                offset: f32::from(n_hint) / 7.0,
                code: bnb::dynamic_map(),
            };
            let _ = nested.dequantize();
        }
        _ => {
            let cb: Vec<i8> = codes.iter().map(|&b| b as i8).collect();
            let mut out = vec![0f32; cb.len()];
            let _ = bnb::dequantize_int8_rows(&cb, &scales, blocksize, &mut out);
        }
    }
}

/// The bitsandbytes `quant_state` JSON parser. The first byte picks the
/// tensor-name suffix (`nf4`/`fp4`/other), the rest is the blob; a parsed
/// state must describe a consistent, non-overflowing weight.
pub fn bnb_quant_state(data: &[u8]) {
    let Some((&sel, blob)) = data.split_first() else {
        return;
    };
    let suffix = ["nf4", "fp4", "int8"][sel as usize % 3];
    if let Ok(q) = crate::model::bnb::parse_quant_state(suffix, blob) {
        let n = q.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        assert_eq!(n, Some(q.n));
        assert!(q.blocksize > 0);
        assert!(q.nested_offset.is_none_or(f32::is_finite));
    }
}
