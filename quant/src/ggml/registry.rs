//! Everything this crate can do with each ggml type, one row per type.
//!
//! A row names the type's kernels: decode, encode, the importance-weighted
//! encode ggml runs with an imatrix, the re-rounding with the base's scales
//! used by the search (`crate::requant`), and for each kernel its variant
//! per instruction set. The block geometry is the one table of `types.rs`
//! (`GgmlType::info`). The public row functions (`crate::quantize_row`,
//! `crate::dequantize_row`, `crate::quantize_row_weighted`,
//! `crate::search_row`, `crate::codec`, `ggml::isa::quantize_fn`, …)
//! dispatch through this table and nowhere else.
//!
//! **Adding a type**: give it its id in `types.rs`; write the reference port
//! in `scalar/` (one function per ggml function it follows, named after
//! it); fill its row in [`ROWS`] below (keep the rows in id order: a test
//! checks). A SIMD variant goes to `x86/` as an `avx2_entry!` and into the
//! `avx2` slot of the row; `tests/simd_kernels.rs` then runs it against the
//! scalar port (add the type to its lists). If the type is a quantization
//! target, the root crate's budget/mix ladders (`src/budget.rs`,
//! `src/mix.rs`) decide where it is offered.
//!
//! Dispatch: [`Variants::best`] asks [`Isa::best`] (one cached CPU probe)
//! once per call; a [`Codec`] holds the chosen function pointers so that a
//! caller can dispatch once per tensor.

use super::cpu::Isa;
use super::scalar::{
    float as fl, iq2xxs, iquants as iq, kquants as kq, kquants_weighted as kw, legacy as lg,
    mxfp4 as mx, reround as rr, scan, ternary as tn,
};
#[cfg(target_arch = "x86_64")]
use super::x86;
use crate::types::{GgmlType, TypeInfo};

/// Encodes a row of finite floats into blocks.
pub type EncodeFn = fn(&[f32], &mut [u8]);

/// Decodes blocks into a row of floats.
pub type DecodeFn = fn(&[u8], &mut [f32]);

/// Encodes a row with one importance weight per element (`src`, `weights`,
/// `dst`).
pub type WeightedEncodeFn = fn(&[f32], &[f32], &mut [u8]);

/// Re-rounds one block: `(base block, target values, output block)`, the
/// output starting as a copy of the base block.
pub(crate) type ReroundFn = fn(&[u8], &[f32], &mut [u8]);

/// Dithered re-rounding of one block: `(base block, target values, one
/// uniform in [0, 1) per element, output block)`, the output starting as a
/// copy of the base block.
pub(crate) type DitherFn = fn(&[u8], &[f32], &[f32], &mut [u8]);

/// Encodes a row and tells whether the input held a NaN or an infinity
/// (the test riding along in the same pass); the bytes are then unusable.
pub(crate) type CheckedEncodeFn = fn(&[f32], &mut [u8]) -> bool;

/// Finds the first `chunk`-element piece of a row that holds a NaN or an
/// infinity.
pub(crate) type ScanFn = fn(&[f32], usize) -> Option<usize>;

/// A row codec: plain function pointers so that dispatch happens once per
/// tensor, not once per row.
#[derive(Clone, Copy)]
pub struct Codec {
    /// Decode `row_size(n)` bytes into `n` floats.
    pub dequantize: DecodeFn,
    /// Encode `n` finite floats into `row_size(n)` bytes, or `None` when the
    /// type cannot be produced without extra information.
    pub quantize: Option<EncodeFn>,
}

/// One kernel in each instruction-set variant this crate has.
#[derive(Clone, Copy)]
pub(crate) struct Variants<F> {
    /// The portable reference port (`scalar/`).
    pub scalar: F,
    /// The AVX2 variant (`x86/`), where there is one; always `None` off
    /// x86-64.
    pub avx2: Option<F>,
}

impl<F: Copy> Variants<F> {
    /// The `isa` variant, if it exists (runnable here or not).
    pub fn get(&self, isa: Isa) -> Option<F> {
        match isa {
            Isa::Scalar => Some(self.scalar),
            Isa::Avx2 => self.avx2,
        }
    }

    /// The fastest variant this CPU runs.
    #[inline]
    pub fn best(&self) -> F {
        self.get(Isa::best()).unwrap_or(self.scalar)
    }
}

/// What the crate can do with one type.
pub(crate) struct Row {
    /// The type.
    pub ty: GgmlType,
    /// Name and block geometry, from `types.rs`.
    pub info: TypeInfo,
    /// `dequantize_row_*` / `to_float`.
    pub decode: Option<Variants<DecodeFn>>,
    /// What `ggml_quantize_chunk` runs without an importance matrix.
    pub encode: Option<Variants<EncodeFn>>,
    /// The encoder with the finiteness test in the same pass, where that is
    /// cheaper than a separate scan (the check `quantize_row` needs anyway).
    pub encode_checked: Option<Variants<CheckedEncodeFn>>,
    /// What `ggml_quantize_chunk` runs with an importance matrix
    /// (`quantize_row_*_impl`), for types whose encoder uses it.
    pub weighted: Option<WeightedEncodeFn>,
    /// The search's re-rounded candidate: base scales kept, codes moved.
    pub reround: Option<ReroundFn>,
    /// The same grid with dithered (unbiased) rounding; IQ4_NL and IQ4_XS
    /// have this one without the nearest `reround`.
    pub dither: Option<DitherFn>,
}

/// The AVX2 variant at `$f` on x86-64, `None` elsewhere (where `x86` does
/// not exist and the path is never resolved).
#[cfg(target_arch = "x86_64")]
macro_rules! avx2 {
    ($f:path) => {
        Some($f)
    };
}
#[cfg(not(target_arch = "x86_64"))]
macro_rules! avx2 {
    ($f:path) => {
        None
    };
}

/// A row with nothing but the type: decode-only and unsupported types
/// start here.
const fn bare(ty: GgmlType) -> Row {
    Row {
        ty,
        info: ty.info(),
        decode: None,
        encode: None,
        encode_checked: None,
        weighted: None,
        reround: None,
        dither: None,
    }
}

const fn dec(scalar: DecodeFn, avx2: Option<DecodeFn>) -> Option<Variants<DecodeFn>> {
    Some(Variants { scalar, avx2 })
}

const fn enc(scalar: EncodeFn, avx2: Option<EncodeFn>) -> Option<Variants<EncodeFn>> {
    Some(Variants { scalar, avx2 })
}

/// A type with a decoder and a plain encoder, no SIMD variant.
const fn plain(ty: GgmlType, decode: DecodeFn, encode: EncodeFn) -> Row {
    Row {
        decode: dec(decode, None),
        encode: enc(encode, None),
        ..bare(ty)
    }
}

/// A type ggml only decodes without an importance matrix.
const fn decode_only(ty: GgmlType, decode: DecodeFn) -> Row {
    Row {
        decode: dec(decode, None),
        ..bare(ty)
    }
}

use GgmlType as G;

/// One row per [`GgmlType`], in id order (the order of `ALL_TYPES`).
pub(crate) const ROWS: &[Row] = &[
    plain(G::F32, fl::dequantize_row_f32, fl::quantize_row_f32),
    Row {
        decode: dec(fl::dequantize_row_f16, avx2!(x86::rows::dequantize_row_f16)),
        encode: enc(fl::quantize_row_f16, avx2!(x86::rows::quantize_row_f16)),
        ..bare(G::F16)
    },
    Row {
        decode: dec(lg::dequantize_row_q4_0, None),
        encode: enc(lg::quantize_row_q4_0, avx2!(x86::rows::quantize_row_q4_0)),
        weighted: Some(lg::quantize_row_q4_0_weighted),
        reround: Some(rr::reround_q4_0),
        dither: Some(rr::dither_q4_0),
        ..bare(G::Q4_0)
    },
    Row {
        decode: dec(lg::dequantize_row_q4_1, None),
        encode: enc(lg::quantize_row_q4_1, avx2!(x86::rows::quantize_row_q4_1)),
        weighted: Some(lg::quantize_row_q4_1_weighted),
        reround: Some(rr::reround_q4_1),
        dither: Some(rr::dither_q4_1),
        ..bare(G::Q4_1)
    },
    Row {
        decode: dec(lg::dequantize_row_q5_0, None),
        encode: enc(lg::quantize_row_q5_0, avx2!(x86::rows::quantize_row_q5_0)),
        weighted: Some(lg::quantize_row_q5_0_weighted),
        reround: Some(rr::reround_q5_0),
        dither: Some(rr::dither_q5_0),
        ..bare(G::Q5_0)
    },
    Row {
        decode: dec(lg::dequantize_row_q5_1, None),
        encode: enc(lg::quantize_row_q5_1, avx2!(x86::rows::quantize_row_q5_1)),
        weighted: Some(lg::quantize_row_q5_1_weighted),
        reround: Some(rr::reround_q5_1),
        dither: Some(rr::dither_q5_1),
        ..bare(G::Q5_1)
    },
    // ggml's Q8_0 encoder ignores the importance matrix.
    Row {
        decode: dec(
            lg::dequantize_row_q8_0,
            avx2!(x86::rows::dequantize_row_q8_0),
        ),
        encode: enc(lg::quantize_row_q8_0, avx2!(x86::rows::quantize_row_q8_0)),
        reround: Some(rr::reround_q8_0),
        dither: Some(rr::dither_q8_0),
        ..bare(G::Q8_0)
    },
    bare(G::Q8_1),
    Row {
        decode: dec(kq::dequantize_row_q2_k, None),
        encode: enc(
            kq::quantize_row_q2_k,
            avx2!(x86::kquants::quantize_row_q2_k),
        ),
        weighted: Some(kw::quantize_row_q2_k_weighted),
        reround: Some(rr::reround_q2_k),
        dither: Some(rr::dither_q2_k),
        ..bare(G::Q2_K)
    },
    Row {
        decode: dec(kq::dequantize_row_q3_k, None),
        encode: enc(
            kq::quantize_row_q3_k,
            avx2!(x86::kquants::quantize_row_q3_k),
        ),
        weighted: Some(kw::quantize_row_q3_k_weighted),
        reround: Some(rr::reround_q3_k),
        dither: Some(rr::dither_q3_k),
        ..bare(G::Q3_K)
    },
    Row {
        decode: dec(
            kq::dequantize_row_q4_k,
            avx2!(x86::rows::dequantize_row_q4_k),
        ),
        encode: enc(
            kq::quantize_row_q4_k,
            avx2!(x86::kquants::quantize_row_q4_k),
        ),
        weighted: Some(kw::quantize_row_q4_k_weighted),
        reround: Some(rr::reround_q4_k),
        dither: Some(rr::dither_q4_k),
        ..bare(G::Q4_K)
    },
    Row {
        decode: dec(
            kq::dequantize_row_q5_k,
            avx2!(x86::rows::dequantize_row_q5_k),
        ),
        encode: enc(
            kq::quantize_row_q5_k,
            avx2!(x86::kquants::quantize_row_q5_k),
        ),
        weighted: Some(kw::quantize_row_q5_k_weighted),
        reround: Some(rr::reround_q5_k),
        dither: Some(rr::dither_q5_k),
        ..bare(G::Q5_K)
    },
    Row {
        decode: dec(
            kq::dequantize_row_q6_k,
            avx2!(x86::rows::dequantize_row_q6_k),
        ),
        encode: enc(
            kq::quantize_row_q6_k,
            avx2!(x86::kquants::quantize_row_q6_k),
        ),
        weighted: Some(kw::quantize_row_q6_k_weighted),
        reround: Some(rr::reround_q6_k),
        dither: Some(rr::dither_q6_k),
        ..bare(G::Q6_K)
    },
    plain(G::Q8_K, kq::dequantize_row_q8_k, kq::quantize_row_q8_k),
    // ggml produces IQ2_XXS only with an importance matrix.
    Row {
        decode: dec(iq::dequantize_iq2_xxs, None),
        weighted: Some(iq2xxs::quantize_iq2_xxs_weighted),
        ..bare(G::IQ2_XXS)
    },
    decode_only(G::IQ2_XS, iq::dequantize_iq2_xs),
    decode_only(G::IQ3_XXS, iq::dequantize_iq3_xxs),
    decode_only(G::IQ1_S, iq::dequantize_iq1_s),
    Row {
        decode: dec(iq::dequantize_iq4_nl, avx2!(x86::iq4::dequantize_iq4_nl)),
        encode: enc(iq::quantize_iq4_nl, avx2!(x86::iq4::quantize_iq4_nl)),
        weighted: Some(iq::quantize_iq4_nl_weighted),
        dither: Some(rr::dither_iq4_nl),
        ..bare(G::IQ4_NL)
    },
    decode_only(G::IQ3_S, iq::dequantize_iq3_s),
    decode_only(G::IQ2_S, iq::dequantize_iq2_s),
    Row {
        decode: dec(iq::dequantize_iq4_xs, avx2!(x86::iq4::dequantize_iq4_xs)),
        encode: enc(iq::quantize_iq4_xs, avx2!(x86::iq4::quantize_iq4_xs)),
        weighted: Some(iq::quantize_iq4_xs_weighted),
        dither: Some(rr::dither_iq4_xs),
        ..bare(G::IQ4_XS)
    },
    bare(G::I8),
    bare(G::I16),
    bare(G::I32),
    bare(G::I64),
    bare(G::F64),
    decode_only(G::IQ1_M, iq::dequantize_iq1_m),
    Row {
        decode: dec(
            fl::dequantize_row_bf16,
            avx2!(x86::rows::dequantize_row_bf16),
        ),
        encode: enc(fl::quantize_row_bf16, avx2!(x86::rows::quantize_row_bf16)),
        encode_checked: Some(Variants {
            scalar: fl::quantize_row_bf16_checked,
            avx2: avx2!(x86::rows::quantize_row_bf16_checked),
        }),
        ..bare(G::BF16)
    },
    plain(G::TQ1_0, tn::dequantize_tq1_0, tn::quantize_tq1_0),
    plain(G::TQ2_0, tn::dequantize_tq2_0, tn::quantize_tq2_0),
    Row {
        decode: dec(mx::dequantize_mxfp4, None),
        encode: enc(mx::quantize_mxfp4, avx2!(x86::rows::quantize_row_mxfp4)),
        ..bare(G::MXFP4)
    },
    plain(G::NVFP4, mx::dequantize_nvfp4, mx::quantize_nvfp4),
    plain(G::Q1_0, tn::dequantize_q1_0, tn::quantize_q1_0),
    plain(G::Q2_0, tn::dequantize_q2_0, tn::quantize_q2_0),
];

/// The row scan for NaN/Inf (not a codec, but dispatched the same way).
pub(crate) const FIRST_SPECIAL_CHUNK: Variants<ScanFn> = Variants {
    scalar: scan::first_special_chunk,
    avx2: avx2!(x86::rows::first_special_chunk),
};

/// The row of `ty`.
#[inline]
pub(crate) fn row(ty: GgmlType) -> &'static Row {
    // ROWS follows ALL_TYPES, which is sorted by id.
    match ROWS.binary_search_by_key(&ty.id(), |r| r.ty.id()) {
        Ok(i) => &ROWS[i],
        Err(_) => unreachable!("every GgmlType has a registry row"),
    }
}

/// The codec of a type, if this crate has one, with the fastest variants
/// this CPU runs.
pub fn codec(ty: GgmlType) -> Option<Codec> {
    let r = row(ty);
    Some(Codec {
        dequantize: r.decode?.best(),
        quantize: r.encode.map(|e| e.best()),
    })
}

/// A row encoder: whole blocks of `src` into `dst`.
pub type QuantizeFn = EncodeFn;

/// A row decoder: whole blocks of `src` into `dst`.
pub type DequantizeFn = DecodeFn;

/// The `isa` variant of `ty`'s encoder, if that variant exists and this CPU
/// runs it. `Isa::Scalar` gives the reference port of every type that has a
/// plain encoder. Unlike [`crate::quantize_row`] the returned function
/// checks nothing: `src` must hold whole blocks, `dst` room for them, all
/// finite.
pub fn quantize_fn(isa: Isa, ty: GgmlType) -> Option<QuantizeFn> {
    isa.is_available().then_some(())?;
    row(ty).encode?.get(isa)
}

/// The `isa` variant of `ty`'s decoder, if that variant exists and this CPU
/// runs it (`Isa::Scalar`: every type with a decoder). The returned
/// function checks nothing: `src` must hold whole blocks.
pub fn dequantize_fn(isa: Isa, ty: GgmlType) -> Option<DequantizeFn> {
    isa.is_available().then_some(())?;
    row(ty).decode?.get(isa)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ALL_TYPES;

    #[test]
    fn one_row_per_type_in_id_order() {
        let tys: Vec<GgmlType> = ROWS.iter().map(|r| r.ty).collect();
        assert_eq!(tys, ALL_TYPES);
        for r in ROWS {
            assert_eq!(r.info, r.ty.info());
            assert_eq!(row(r.ty).ty, r.ty);
        }
    }

    #[test]
    fn every_extra_kernel_sits_beside_a_decoder() {
        for r in ROWS {
            let has_decode = r.decode.is_some();
            for (what, present) in [
                ("encode", r.encode.is_some()),
                ("weighted", r.weighted.is_some()),
                ("reround", r.reround.is_some()),
                ("dither", r.dither.is_some()),
                ("encode_checked", r.encode_checked.is_some()),
            ] {
                assert!(!present || has_decode, "{}: {what} without decode", r.ty);
            }
            assert!(r.encode_checked.is_none() || r.encode.is_some(), "{}", r.ty);
            // Every re-rounded grid has its dithered twin; IQ4_NL and IQ4_XS
            // have the dithered one alone (the search offers them no nearest
            // re-rounding).
            assert!(r.reround.is_none() || r.dither.is_some(), "{}", r.ty);
            let dither_alone = r.dither.is_some() && r.reround.is_none();
            assert_eq!(
                dither_alone,
                matches!(r.ty, GgmlType::IQ4_NL | GgmlType::IQ4_XS),
                "{}",
                r.ty
            );
        }
    }
}
