//! AVX2 (and F16C) row kernels for the element-wise codecs: decoding of the
//! common block types, the f16/bf16 conversions, and the Q4_0, Q4_1, Q5_0,
//! Q5_1 and Q8_0 encoders (C's float→int cast and `roundf` reproduced).
//! Each output element
//! gets exactly the scalar port's operations (`d1 * q - m1`, `(d·sc) * q`,
//! IEEE round-to-nearest-even conversions), so vectorising along the row
//! changes no bit. Each public function checks for the CPU features and
//! otherwise runs the scalar port (`avx2_entry!`).

// Index loops keep element positions explicit, like the scalar ports.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use crate::ggml::scalar::search::get_scale_min_k4;
use crate::ggml::scalar::{float, kquants, legacy, mxfp4, scan};

/// `GGML_FP16_TO_FP32` of the little-endian half at `b[i..]` by the F16C
/// instruction (exact, like the portable conversion).
#[target_feature(enable = "f16c")]
#[inline]
unsafe fn le_f16c(b: &[u8], i: usize) -> f32 {
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h as i32)))
}

/// The little-endian half at `b[i..]` as f32 in all eight lanes. Built by
/// broadcasting the half first: converting one lane and then broadcasting
/// lets the compiler merge the load into the previous block's register,
/// which chains every block to the one before it.
#[target_feature(enable = "avx2,f16c")]
#[inline]
unsafe fn f16_splat(b: &[u8], i: usize) -> __m256 {
    let h = u16::from_le_bytes([b[i], b[i + 1]]);
    _mm256_cvtph_ps(_mm_set1_epi16(h as i16))
}

/// `GGML_FP32_TO_FP16` (round to nearest even) by the F16C instruction,
/// stored little-endian at `b[i..]`.
#[target_feature(enable = "f16c")]
#[inline]
unsafe fn put_f16c(b: &mut [u8], i: usize, x: f32) {
    let h = _mm_extract_epi16::<0>(_mm_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm_set_ss(x))) as u16;
    b[i..i + 2].copy_from_slice(&h.to_le_bytes());
}

#[inline(always)]
unsafe fn bytes8_epi32(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

avx2_entry!(
    "Index of the first `chunk`-element piece of `row` holding a NaN or an \
     infinity, AVX2 variant (`chunk` a multiple of 32).",
    first_special_chunk,
    special_chunk,
    scan::first_special_chunk,
    fn(row: &[f32], chunk: usize) -> Option<usize>
);

#[target_feature(enable = "avx2")]
unsafe fn special_chunk(row: &[f32], chunk: usize) -> Option<usize> {
    debug_assert!(chunk.is_multiple_of(32) && chunk > 0);
    let exp = _mm256_set1_epi32(0x7f80_0000);
    let p = row.as_ptr() as *const __m256i;
    let whole = row.len() / chunk;
    for c in 0..whole {
        let mut hit = _mm256_setzero_si256();
        for k in 0..chunk / 8 {
            let u = _mm256_loadu_si256(p.add(c * chunk / 8 + k));
            hit = _mm256_or_si256(hit, _mm256_cmpeq_epi32(_mm256_and_si256(u, exp), exp));
        }
        if _mm256_testz_si256(hit, hit) == 0 {
            return Some(c);
        }
    }
    scan::first_special_chunk(&row[whole * chunk..], chunk).map(|c| whole + c)
}

avx2_entry!(
    "`ggml_fp16_to_fp32_row`, AVX2/F16C variant.",
    dequantize_row_f16,
    deq_f16,
    float::dequantize_row_f16,
    fn(src: &[u8], dst: &mut [f32])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_f16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        i += 8;
    }
    float::dequantize_row_f16(&src[2 * i..2 * n], &mut dst[i..n]);
}

avx2_entry!(
    "`ggml_fp32_to_fp16_row`, AVX2/F16C variant (`vcvtps2ph`, round to nearest even).",
    quantize_row_f16,
    q_f16,
    float::quantize_row_f16,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_f16(src: &[f32], dst: &mut [u8]) {
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(src.as_ptr().add(i));
        let h = _mm256_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(v);
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    float::quantize_row_f16(&src[i..n], &mut dst[2 * i..2 * n]);
}

avx2_entry!(
    "`ggml_bf16_to_fp32_row`, AVX2 variant.",
    dequantize_row_bf16,
    deq_bf16,
    float::dequantize_row_bf16,
    fn(src: &[u8], dst: &mut [f32])
);

#[target_feature(enable = "avx2")]
unsafe fn deq_bf16(src: &[u8], dst: &mut [f32]) {
    let n = dst.len().min(src.len() / 2);
    let mut i = 0;
    while i + 8 <= n {
        let h = _mm_loadu_si128(src.as_ptr().add(2 * i) as *const __m128i);
        let w = _mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
        i += 8;
    }
    float::dequantize_row_bf16(&src[2 * i..2 * n], &mut dst[i..n]);
}

avx2_entry!(
    "`ggml_fp32_to_bf16_row_ref`, AVX2 variant (same integer rounding, NaN kept quiet).",
    quantize_row_bf16,
    q_bf16_unchecked,
    float::quantize_row_bf16,
    fn(src: &[f32], dst: &mut [u8])
);

avx2_entry!(
    "Encodes like [`quantize_row_bf16`] and tells whether `src` held a NaN or \
     an infinity (the test rides along in the same pass over the row).",
    quantize_row_bf16_checked,
    q_bf16,
    float::quantize_row_bf16_checked,
    fn(src: &[f32], dst: &mut [u8]) -> bool
);

#[target_feature(enable = "avx2")]
unsafe fn q_bf16_unchecked(src: &[f32], dst: &mut [u8]) {
    q_bf16(src, dst);
}

#[target_feature(enable = "avx2")]
unsafe fn q_bf16(src: &[f32], dst: &mut [u8]) -> bool {
    let n = src.len().min(dst.len() / 2);
    let mut i = 0;
    let one = _mm256_set1_epi32(1);
    let mut special = _mm256_setzero_si256();
    while i + 8 <= n {
        let u = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
        let a = _mm256_and_si256(u, _mm256_set1_epi32(0x7fff_ffff));
        let nan = _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f80_0000));
        special = _mm256_or_si256(
            special,
            _mm256_cmpgt_epi32(a, _mm256_set1_epi32(0x7f7f_ffff)),
        );
        let quiet = _mm256_or_si256(_mm256_srli_epi32::<16>(u), _mm256_set1_epi32(64));
        let bias = _mm256_add_epi32(
            _mm256_set1_epi32(0x7fff),
            _mm256_and_si256(_mm256_srli_epi32::<16>(u), one),
        );
        let rounded = _mm256_srli_epi32::<16>(_mm256_add_epi32(u, bias));
        let r = _mm256_blendv_epi8(rounded, quiet, nan);
        // Pack the low halves of the 8 lanes into 8 u16.
        let lo = _mm256_castsi256_si128(r);
        let hi = _mm256_extracti128_si256::<1>(r);
        let packed = _mm_packus_epi32(lo, hi);
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, packed);
        i += 8;
    }
    float::quantize_row_bf16(&src[i..n], &mut dst[2 * i..2 * n]);
    _mm256_testz_si256(special, special) == 0 || src[i..n].iter().any(|v| !v.is_finite())
}

avx2_entry!(
    "`dequantize_row_q8_0`, AVX2 variant.",
    dequantize_row_q8_0,
    deq_q8_0,
    legacy::dequantize_row_q8_0,
    fn(src: &[u8], dst: &mut [f32])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_q8_0(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(34).zip(dst.chunks_exact_mut(32)) {
        let d = f16_splat(b, 0);
        for k in 0..4 {
            let q =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(b.as_ptr().add(2 + 8 * k) as *const __m128i));
            _mm256_storeu_ps(
                y.as_mut_ptr().add(8 * k),
                _mm256_mul_ps(d, _mm256_cvtepi32_ps(q)),
            );
        }
    }
}

avx2_entry!(
    "`dequantize_row_q4_K`, AVX2 variant.",
    dequantize_row_q4_k,
    deq_q4_k,
    kquants::dequantize_row_q4_k,
    fn(src: &[u8], dst: &mut [f32])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_q4_k(src: &[u8], dst: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0xF);
    for (b, y) in src.chunks_exact(144).zip(dst.chunks_exact_mut(256)) {
        let d = le_f16c(b, 0);
        let min = le_f16c(b, 2);
        let sc = &b[4..16];
        for n in 0..4 {
            let (s1, m1) = get_scale_min_k4(2 * n, sc);
            let (s2, m2) = get_scale_min_k4(2 * n + 1, sc);
            let q = _mm256_loadu_si256(b.as_ptr().add(16 + 32 * n) as *const __m256i);
            let lo = _mm256_and_si256(q, m4);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
            let y = y.as_mut_ptr().add(64 * n);
            affine_32_bytes(lo, d * s1 as f32, min * m1 as f32, y);
            affine_32_bytes(hi, d * s2 as f32, min * m2 as f32, y.add(32));
        }
    }
}

avx2_entry!(
    "`dequantize_row_q5_K`, AVX2 variant.",
    dequantize_row_q5_k,
    deq_q5_k,
    kquants::dequantize_row_q5_k,
    fn(src: &[u8], dst: &mut [f32])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_q5_k(src: &[u8], dst: &mut [f32]) {
    let m4 = _mm256_set1_epi8(0xF);
    let sixteen = _mm256_set1_epi8(16);
    for (b, y) in src.chunks_exact(176).zip(dst.chunks_exact_mut(256)) {
        let d = le_f16c(b, 0);
        let min = le_f16c(b, 2);
        let sc = &b[4..16];
        let qh = _mm256_loadu_si256(b.as_ptr().add(16) as *const __m256i);
        for n in 0..4 {
            let (s1, m1) = get_scale_min_k4(2 * n, sc);
            let (s2, m2) = get_scale_min_k4(2 * n + 1, sc);
            // The 32 codes of each half as bytes: low/high nibble of `ql`
            // plus 16 where bit 2n / 2n+1 of `qh` is set.
            let ql = _mm256_loadu_si256(b.as_ptr().add(48 + 32 * n) as *const __m256i);
            let u1 = _mm256_set1_epi8(1 << (2 * n));
            let u2 = _mm256_set1_epi8((2u8 << (2 * n)) as i8);
            let h1 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, u1), u1), sixteen);
            let h2 = _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, u2), u2), sixteen);
            let lo = _mm256_or_si256(_mm256_and_si256(ql, m4), h1);
            let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql), m4), h2);
            let y = y.as_mut_ptr().add(64 * n);
            affine_32_bytes(lo, d * s1 as f32, min * m1 as f32, y);
            affine_32_bytes(hi, d * s2 as f32, min * m2 as f32, y.add(32));
        }
    }
}

/// `y[i] = dl * q[i] - ml` for the 32 unsigned bytes of `q`, in order.
#[inline(always)]
unsafe fn affine_32_bytes(q: __m256i, dl: f32, ml: f32, y: *mut f32) {
    let (dv, mv) = (_mm256_set1_ps(dl), _mm256_set1_ps(ml));
    let lo = _mm256_castsi256_si128(q);
    let hi = _mm256_extracti128_si256::<1>(q);
    for (k, part) in [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)]
        .into_iter()
        .enumerate()
    {
        let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(part));
        _mm256_storeu_ps(y.add(8 * k), _mm256_sub_ps(_mm256_mul_ps(dv, v), mv));
    }
}

avx2_entry!(
    "`dequantize_row_q6_K`, AVX2 variant.",
    dequantize_row_q6_k,
    deq_q6_k,
    kquants::dequantize_row_q6_k,
    fn(src: &[u8], dst: &mut [f32])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn deq_q6_k(src: &[u8], dst: &mut [f32]) {
    let m4 = _mm256_set1_epi32(0xF);
    let m3 = _mm256_set1_epi32(3);
    let off = _mm256_set1_epi32(32);
    for (b, y) in src.chunks_exact(210).zip(dst.chunks_exact_mut(256)) {
        let d = le_f16c(b, 208);
        for n in 0..2 {
            let ql = b.as_ptr().add(64 * n);
            let qh = b.as_ptr().add(128 + 32 * n);
            let sc = &b[192 + 8 * n..192 + 8 * n + 8];
            let y = y.as_mut_ptr().add(128 * n);
            for k in (0..32).step_by(8) {
                let is = k / 16;
                // ggml: d * sc[is] * q, evaluated left to right.
                let s = |j: usize| _mm256_set1_ps(d * sc[is + j] as i8 as f32);
                let a = bytes8_epi32(ql.add(k));
                let b2 = bytes8_epi32(ql.add(k + 32));
                let h = bytes8_epi32(qh.add(k));
                let q1 = _mm256_sub_epi32(
                    _mm256_or_si256(
                        _mm256_and_si256(a, m4),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(h, m3)),
                    ),
                    off,
                );
                let q2 = _mm256_sub_epi32(
                    _mm256_or_si256(
                        _mm256_and_si256(b2, m4),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<2>(h), m3)),
                    ),
                    off,
                );
                let q3 = _mm256_sub_epi32(
                    _mm256_or_si256(
                        _mm256_srli_epi32::<4>(a),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<4>(h), m3)),
                    ),
                    off,
                );
                let q4 = _mm256_sub_epi32(
                    _mm256_or_si256(
                        _mm256_srli_epi32::<4>(b2),
                        _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(h), m3)),
                    ),
                    off,
                );
                _mm256_storeu_ps(y.add(k), _mm256_mul_ps(s(0), _mm256_cvtepi32_ps(q1)));
                _mm256_storeu_ps(y.add(k + 32), _mm256_mul_ps(s(2), _mm256_cvtepi32_ps(q2)));
                _mm256_storeu_ps(y.add(k + 64), _mm256_mul_ps(s(4), _mm256_cvtepi32_ps(q3)));
                _mm256_storeu_ps(y.add(k + 96), _mm256_mul_ps(s(6), _mm256_cvtepi32_ps(q4)));
            }
        }
    }
}

/// The low bytes of 8 `cvttps2dq` results: a C cast of a float to a small
/// integer type on x86-64 (0x8000_0000, low byte 0, for NaN and values out
/// of the i32 range), like `legacy::c_cast_low_byte`.
#[inline(always)]
unsafe fn low_bytes(v: __m256) -> [i32; 8] {
    let mut t = [0i32; 8];
    _mm256_storeu_si256(t.as_mut_ptr() as *mut __m256i, _mm256_cvttps_epi32(v));
    t
}

/// `max |x|` of a 32-element block; the maximum is exact in any order.
#[inline(always)]
unsafe fn block_absmax(x: &[f32]) -> f32 {
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for k in 0..4 {
        m = _mm256_max_ps(
            m,
            _mm256_andnot_ps(sign, _mm256_loadu_ps(x.as_ptr().add(8 * k))),
        );
    }
    // Halve three times; with no NaN (rows are checked) and only
    // non-negative values, `max_ps` picks what the scalar fold picks.
    let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    let h = _mm_max_ss(h, _mm_movehdup_ps(h));
    _mm_cvtss_f32(h)
}

/// The first element of largest magnitude, as the `amax < fabsf(v)` scan of
/// `quantize_row_q4_0_ref` / `_q5_0_ref` finds it; that scan keeps its
/// initial `max = 0.0f` (not a `-0.0` element) when every element is zero.
#[inline(always)]
unsafe fn first_absmax(x: &[f32]) -> f32 {
    let amax = block_absmax(x);
    if amax == 0.0 {
        return 0.0;
    }
    // Bit `i` set where `|x[i]| == amax`; the lowest one is the first.
    let sign = _mm256_set1_ps(-0.0);
    let a = _mm256_set1_ps(amax);
    let mut mask = 0u32;
    for k in 0..4 {
        let v = _mm256_andnot_ps(sign, _mm256_loadu_ps(x.as_ptr().add(8 * k)));
        mask |= (_mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(v, a)) as u32) << (8 * k);
    }
    x.get(mask.trailing_zeros() as usize)
        .copied()
        .unwrap_or(0.0)
}

avx2_entry!(
    "`quantize_row_q8_0_ref`, AVX2 variant: `roundf` as truncation plus a \
     half-away-from-zero step, exact for every float.",
    quantize_row_q8_0,
    q_q8_0,
    legacy::quantize_row_q8_0,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_q8_0(src: &[f32], dst: &mut [u8]) {
    let sign = _mm256_set1_ps(-0.0);
    let half = _mm256_set1_ps(0.5);
    let one = _mm256_set1_ps(1.0);
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
        let amax = block_absmax(x);
        let d = amax / 127.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        put_f16c(y, 0, d);
        let idv = _mm256_set1_ps(id);
        for k in 0..4 {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), idv);
            let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
            // |v - trunc(v)| is exact; a half or more rounds away from zero.
            let frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
            let up = _mm256_cmp_ps::<_CMP_GE_OQ>(frac, half);
            let step = _mm256_or_ps(_mm256_and_ps(v, sign), one);
            let r = _mm256_add_ps(t, _mm256_and_ps(up, step));
            let q = low_bytes(r);
            for j in 0..8 {
                y[2 + 8 * k + j] = q[j] as u8;
            }
        }
    }
}

avx2_entry!(
    "`quantize_row_q4_0_ref`, AVX2 variant.",
    quantize_row_q4_0,
    q_q4_0,
    legacy::quantize_row_q4_0,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_q4_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
        // The first element of largest magnitude, as the `amax < |v|` scan
        // (which keeps `max = 0.0` when every element is a zero).
        let max = first_absmax(x);
        let d = max / -8.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        put_f16c(y, 0, d);
        let (idv, off) = (_mm256_set1_ps(id), _mm256_set1_ps(8.5));
        let mut q = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), idv);
            q[k] = cast_low_byte(_mm256_add_ps(v, off), Some(15));
        }
        _mm_storeu_si128(
            y.as_mut_ptr().add(2) as *mut __m128i,
            nibbles(pack_bytes(q)),
        );
    }
}

/// The first element of `x` equal to `v` (which is one of them): with
/// `-0.0 == 0.0` the vector min/max may return either zero, the scalar scan
/// the first one it met.
#[inline(always)]
fn first_equal(x: &[f32], v: f32) -> f32 {
    if v == 0.0 {
        x.iter().copied().find(|&e| e == v).unwrap_or(v)
    } else {
        v
    }
}

/// `(min, max)` of a 32-element block as the scalar `v < min` / `v > max`
/// scans give them (first occurrence wins, which matters only for zeros).
#[inline(always)]
unsafe fn block_min_max(x: &[f32]) -> (f32, f32) {
    let p = x.as_ptr();
    let (a, b) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
    let (c, e) = (_mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24)));
    let lo = _mm256_min_ps(_mm256_min_ps(a, b), _mm256_min_ps(c, e));
    let hi = _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, e));
    let lo = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps::<1>(lo));
    let hi = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps::<1>(hi));
    let lo = _mm_min_ps(lo, _mm_movehl_ps(lo, lo));
    let hi = _mm_max_ps(hi, _mm_movehl_ps(hi, hi));
    let lo = _mm_min_ss(lo, _mm_shuffle_ps::<1>(lo, lo));
    let hi = _mm_max_ss(hi, _mm_shuffle_ps::<1>(hi, hi));
    (
        first_equal(x, _mm_cvtss_f32(lo)),
        first_equal(x, _mm_cvtss_f32(hi)),
    )
}

/// `(int8_t)` of the `cvttps2dq` result's low byte (a C cast to a small
/// integer type), clamped above by `MIN(max, ·)` when `max` is given, as
/// the unsigned byte stored.
#[inline(always)]
unsafe fn cast_low_byte(v: __m256, max: Option<i32>) -> __m256i {
    let i = _mm256_cvttps_epi32(v);
    let i = match max {
        Some(m) => {
            let s = _mm256_srai_epi32::<24>(_mm256_slli_epi32::<24>(i));
            _mm256_min_epi32(s, _mm256_set1_epi32(m))
        }
        None => i,
    };
    _mm256_and_si256(i, _mm256_set1_epi32(0xff))
}

/// 32 bytes from four vectors of eight values in `0..=255`, in order.
#[inline(always)]
unsafe fn pack_bytes(q: [__m256i; 4]) -> __m256i {
    let ab = _mm256_packus_epi32(q[0], q[1]);
    let cd = _mm256_packus_epi32(q[2], q[3]);
    let b = _mm256_packus_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `q[j] | q[j + 16] << 4` for the 32 quant bytes `q`, as a `uint8_t`.
#[inline(always)]
unsafe fn nibbles(q: __m256i) -> __m128i {
    let lo = _mm256_castsi256_si128(q);
    let hi = _mm256_extracti128_si256::<1>(q);
    _mm_or_si128(
        lo,
        _mm_and_si128(_mm_slli_epi16::<4>(hi), _mm_set1_epi8(0xf0u8 as i8)),
    )
}

/// `pack_q5`: `qh` (bit 4 of quant `i` in bit `i`) and `qs` (low nibbles).
#[inline(always)]
unsafe fn pack_q5(q: __m256i, out: *mut u8) {
    let qh = _mm256_movemask_epi8(_mm256_slli_epi16::<3>(q)) as u32;
    let qs = nibbles(_mm256_and_si256(q, _mm256_set1_epi8(0x0f)));
    std::ptr::copy_nonoverlapping(qh.to_le_bytes().as_ptr(), out, 4);
    _mm_storeu_si128(out.add(4) as *mut __m128i, qs);
}

avx2_entry!(
    "`quantize_row_mxfp4_ref`, AVX2 variant: the shared exponent per block as \
     the scalar port computes it, the nearest of the sixteen E2M1 values for \
     eight elements at a time (first index on ties, as the scalar scan).",
    quantize_row_mxfp4,
    q_mxfp4,
    mxfp4::quantize_mxfp4,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_mxfp4(src: &[f32], dst: &mut [u8]) {
    use crate::ggml::scalar::tables::KVALUES_MXFP4;
    use mxfp4::{e8m0_to_fp32_half, mxfp4_exponent};
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(17)) {
        // `amax < fabsf(v)` over the block: the maximum, whatever the order.
        let e = mxfp4_exponent(block_absmax(x));
        let d = e8m0_to_fp32_half(e);
        y[0] = e;
        // `kvalues[i] * e` is the same product for every element.
        let kd: [__m256; 16] = std::array::from_fn(|i| _mm256_set1_ps(KVALUES_MXFP4[i] as f32 * d));
        let mut q = [_mm256_setzero_si256(); 4];
        for (k, qk) in q.iter_mut().enumerate() {
            let v = _mm256_loadu_ps(x.as_ptr().add(8 * k));
            let mut best_err = abs_ps(_mm256_sub_ps(kd[0], v));
            let mut best = _mm256_setzero_si256();
            for (i, kdi) in kd.iter().enumerate().skip(1) {
                let err = abs_ps(_mm256_sub_ps(*kdi, v));
                let lt = _mm256_cmp_ps::<_CMP_LT_OQ>(err, best_err);
                best_err = _mm256_blendv_ps(best_err, err, lt);
                best =
                    _mm256_blendv_epi8(best, _mm256_set1_epi32(i as i32), _mm256_castps_si256(lt));
            }
            *qk = best;
        }
        _mm_storeu_si128(
            y.as_mut_ptr().add(1) as *mut __m128i,
            nibbles(pack_bytes(q)),
        );
    }
}

#[inline(always)]
unsafe fn abs_ps(v: __m256) -> __m256 {
    _mm256_andnot_ps(_mm256_set1_ps(-0.0), v)
}

avx2_entry!(
    "`quantize_row_q4_1_ref`, AVX2 variant.",
    quantize_row_q4_1,
    q_q4_1,
    legacy::quantize_row_q4_1,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_q4_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(20)) {
        let (min, max) = block_min_max(x);
        let d = (max - min) / 15.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        put_f16c(y, 0, d);
        put_f16c(y, 2, min);
        let (minv, idv, half) = (_mm256_set1_ps(min), _mm256_set1_ps(id), _mm256_set1_ps(0.5));
        let mut q = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), minv);
            q[k] = cast_low_byte(_mm256_add_ps(_mm256_mul_ps(v, idv), half), Some(15));
        }
        _mm_storeu_si128(
            y.as_mut_ptr().add(4) as *mut __m128i,
            nibbles(pack_bytes(q)),
        );
    }
}

avx2_entry!(
    "`quantize_row_q5_0_ref`, AVX2 variant.",
    quantize_row_q5_0,
    q_q5_0,
    legacy::quantize_row_q5_0,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_q5_0(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(22)) {
        let max = first_absmax(x);
        let d = max / -16.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        put_f16c(y, 0, d);
        let (idv, off) = (_mm256_set1_ps(id), _mm256_set1_ps(16.5));
        let mut q = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = _mm256_mul_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), idv);
            q[k] = cast_low_byte(_mm256_add_ps(v, off), Some(31));
        }
        pack_q5(pack_bytes(q), y.as_mut_ptr().add(2));
    }
}

avx2_entry!(
    "`quantize_row_q5_1_ref`, AVX2 variant (no clamp, as ggml).",
    quantize_row_q5_1,
    q_q5_1,
    legacy::quantize_row_q5_1,
    fn(src: &[f32], dst: &mut [u8])
);

#[target_feature(enable = "avx2,f16c")]
unsafe fn q_q5_1(src: &[f32], dst: &mut [u8]) {
    for (x, y) in src.chunks_exact(32).zip(dst.chunks_exact_mut(24)) {
        let (min, max) = block_min_max(x);
        let d = (max - min) / 31.0f32;
        let id = if d != 0.0 { 1.0f32 / d } else { 0.0 };
        put_f16c(y, 0, d);
        put_f16c(y, 2, min);
        let (minv, idv, half) = (_mm256_set1_ps(min), _mm256_set1_ps(id), _mm256_set1_ps(0.5));
        let mut q = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = _mm256_sub_ps(_mm256_loadu_ps(x.as_ptr().add(8 * k)), minv);
            q[k] = cast_low_byte(_mm256_add_ps(_mm256_mul_ps(v, idv), half), None);
        }
        pack_q5(pack_bytes(q), y.as_mut_ptr().add(4));
    }
}
