//! The re-rounded candidate of the search (`crate::requant`): a base
//! block's scales and minimums kept (fp16 `d`, `m`/`dmin`, the packed
//! sub-block scales of the K-quants), every code moved to the grid value
//! nearest to its target. One function per type, each following the layout
//! its ggml decoder (`dequantize_row_*`) reads: `(base block, target
//! values, output block)`, the output starting as a copy of the base.
//!
//! The same layouts serve the *dithered* re-rounding (`dither_*`): every
//! code rounds up with probability equal to its target's fractional
//! distance between the two neighbouring grid values, drawn from the
//! uniforms the caller gives (one per element, in `[0, 1)`), so that the
//! decoded value is the target in expectation (`E[k·s + o] = t` inside the
//! grid's range; clamped at its ends). Which rule a kernel applies is a
//! [`Round`] type parameter; the nearest rule compiles to the same code as
//! before.

use super::common::{le_f16, le_u16, nearest_int};
use super::search::get_scale_min_k4;
use super::tables::KVALUES_IQ4NL;

/// Whether the grid `k·s + o` has distinct finite values. A degenerate
/// grid (`s = 0`: every code decodes to `o`) or one that is not finite
/// keeps the base's codes.
#[inline(always)]
fn grid_ok(s: f32, o: f32) -> bool {
    s != 0.0 && s.is_finite() && o.is_finite()
}

/// The code `k` in `lo..=hi` whose decoded value `k·s + o` (f32, as the
/// decoders compute it: `k as f32 * s + o`, `o = 0` or `−m`) is nearest to
/// `t`, for a grid that passed [`grid_ok`]; branch-free so that block loops
/// vectorise.
///
/// `nearest_int` of the clamped ratio is the nearest code up to the f32
/// rounding of `(t − o)/s`; its two neighbours are checked on the decoded
/// values, so the result is exact, ties keeping the rounded one.
#[inline(always)]
fn nearest_code_unchecked(t: f32, s: f32, o: f32, lo: i32, hi: i32) -> i32 {
    let x = ((t - o) / s).clamp(lo as f32, hi as f32);
    let k0 = nearest_int(x);
    let err = |k: i32| (t - (k as f32 * s + o)).abs();
    let (km, kp) = ((k0 - 1).max(lo), (k0 + 1).min(hi));
    let (e0, em, ep) = (err(k0), err(km), err(kp));
    // Strictly nearer only, lower neighbour first: ties keep `k0`.
    let (k, e) = if em < e0 { (km, em) } else { (k0, e0) };
    if ep < e {
        kp
    } else {
        k
    }
}

/// How a target becomes a code on the grid `k·s + o`, `k` in `lo..=hi`, for
/// element `e` of the block; the grid has passed [`grid_ok`].
pub(crate) trait Round {
    fn code(&self, e: usize, t: f32, s: f32, o: f32, lo: i32, hi: i32) -> i32;
}

/// The nearest code ([`nearest_code_unchecked`]).
pub(crate) struct Nearest;

impl Round for Nearest {
    #[inline(always)]
    fn code(&self, _e: usize, t: f32, s: f32, o: f32, lo: i32, hi: i32) -> i32 {
        nearest_code_unchecked(t, s, o, lo, hi)
    }
}

/// Dithered rounding with one uniform in `[0, 1)` per element of the block:
/// `k = ⌊(t − o)/s + u⌋`, clamped to `lo..=hi`. For `x = (t − o)/s` inside
/// the range, `k` is `⌊x⌋ + 1` with probability `x − ⌊x⌋` and `⌊x⌋`
/// otherwise, so `E[k] = x`; a target that decodes exactly from some code
/// keeps that code. The non-uniform grids (IQ4_NL, IQ4_XS) use the same
/// rule on the position of the target between its two neighbouring grid
/// values ([`Dither::table_code`]).
pub(crate) struct Dither<'a>(pub &'a [f32]);

impl Dither<'_> {
    /// The rule itself: `y` is the target's position in code units (an
    /// integer on a code, `k + f` at fraction `f` of the way from code `k`
    /// to `k + 1`); `on_grid(k)` tells whether code `k` decodes exactly to
    /// the target. Returns `⌊y + u⌋` clamped to `lo..=hi`: code `⌊y⌋ + 1`
    /// with probability `f`.
    #[inline(always)]
    fn step(&self, e: usize, y: f32, lo: i32, hi: i32, on_grid: impl Fn(i32) -> bool) -> i32 {
        let y = y.clamp(lo as f32 - 1.0, hi as f32 + 1.0);
        // A target on the grid keeps its code (the f32 quotient may miss
        // the integer by an ulp, which a uniform near 0 or 1 would turn
        // into a step).
        let k0 = (y.round() as i32).clamp(lo, hi);
        if on_grid(k0) {
            return k0;
        }
        ((y + self.0[e]).floor() as i32).clamp(lo, hi)
    }

    /// The code `k` of element `e` on the non-uniform grid `s·v[k]` (`v`
    /// ascending, as ggml's `kvalues_iq4nl`; the decoders compute
    /// `s * v[k] as f32`), for a grid that passed [`grid_ok`]. With
    /// `x = t/s` between neighbours `v[i] ≤ x ≤ v[i+1]`, the code is `i + 1`
    /// with probability `(x − v[i])/(v[i+1] − v[i])` and `i` otherwise, so
    /// `E[s·v[k]] = t`; beyond the ends, the end code. A negative `s`
    /// mirrors the grid, which changes none of this (`x` is in `v`'s units).
    #[inline(always)]
    pub(crate) fn table_code(&self, e: usize, t: f32, s: f32, v: &[i8; 16]) -> usize {
        let x = t / s;
        // The segment `v[i] ≤ x < v[i+1]`, `i` in 0..=14 (ends extended).
        let i = v[1..15].iter().filter(|&&g| g as f32 <= x).count();
        let (a, b) = (v[i] as f32, v[i + 1] as f32);
        let y = i as f32 + (x - a) / (b - a);
        self.step(e, y, 0, 15, |k| s * v[k as usize] as f32 == t) as usize
    }
}

impl Round for Dither<'_> {
    #[inline(always)]
    fn code(&self, e: usize, t: f32, s: f32, o: f32, lo: i32, hi: i32) -> i32 {
        self.step(e, (t - o) / s, lo, hi, |k| k as f32 * s + o == t)
    }
}

/// Store a 4-bit code in the low (`high = false`) or high nibble.
#[inline(always)]
fn set_nibble(byte: &mut u8, high: bool, q: u8) {
    *byte = if high {
        (*byte & 0x0F) | (q << 4)
    } else {
        (*byte & 0xF0) | (q & 0x0F)
    };
}

/// Store a 2-bit code at bit `shift`.
#[inline(always)]
fn set_bits2(byte: &mut u8, shift: u32, q: u8) {
    *byte = (*byte & !(3 << shift)) | ((q & 3) << shift);
}

/// Store one bit.
#[inline(always)]
fn set_bit(byte: &mut u8, bit: u32, on: bool) {
    *byte = (*byte & !(1 << bit)) | (u8::from(on) << bit);
}

/// Legacy 32-element blocks (`dequantize_row_q4_0/_q4_1/_q5_0/_q5_1`):
/// element `e` is code `k = q − off` on the grid `k·d + m`; its low nibble
/// sits in `qs[e % 16]` (high nibble for `e ≥ 16`), a fifth bit in bit `e`
/// of `qh` when `qh_at` is given.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn reround_legacy<R: Round>(
    r: &R,
    b: &[u8],
    t: &[f32],
    o: &mut [u8],
    m_at: Option<usize>,
    qh_at: Option<usize>,
    qs_at: usize,
    lo: i32,
    hi: i32,
) {
    let d = le_f16(b, 0);
    let m = m_at.map_or(0.0, |i| le_f16(b, i));
    if !grid_ok(d, m) {
        return;
    }
    let t: &[f32; 32] = t.try_into().expect("32-element block");
    let mut q = [0u8; 32];
    for (e, (qi, &x)) in q.iter_mut().zip(t).enumerate() {
        *qi = (r.code(e, x, d, m, lo, hi) - lo) as u8;
    }
    let qs: &mut [u8; 16] = (&mut o[qs_at..qs_at + 16]).try_into().expect("16 bytes");
    for j in 0..16 {
        qs[j] = (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4);
    }
    if let Some(h) = qh_at {
        let mut qh = 0u32;
        for (e, &qi) in q.iter().enumerate() {
            qh |= (((qi >> 4) & 1) as u32) << e;
        }
        o[h..h + 4].copy_from_slice(&qh.to_le_bytes());
    }
}

/// Re-rounded candidate for Q4_0: codes `−8..=7` on `k·d`.
pub fn reround_q4_0(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(&Nearest, b, t, o, None, None, 2, -8, 7);
}

/// Dithered candidate for Q4_0 (`u`: one uniform per element).
pub fn dither_q4_0(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    reround_legacy(&Dither(u), b, t, o, None, None, 2, -8, 7);
}

/// Re-rounded candidate for Q4_1: codes `0..=15` on `k·d + m`.
pub fn reround_q4_1(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(&Nearest, b, t, o, Some(2), None, 4, 0, 15);
}

/// Dithered candidate for Q4_1 (`u`: one uniform per element).
pub fn dither_q4_1(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    reround_legacy(&Dither(u), b, t, o, Some(2), None, 4, 0, 15);
}

/// Re-rounded candidate for Q5_0: codes `−16..=15` on `k·d`.
pub fn reround_q5_0(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(&Nearest, b, t, o, None, Some(2), 6, -16, 15);
}

/// Dithered candidate for Q5_0 (`u`: one uniform per element).
pub fn dither_q5_0(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    reround_legacy(&Dither(u), b, t, o, None, Some(2), 6, -16, 15);
}

/// Re-rounded candidate for Q5_1: codes `0..=31` on `k·d + m`.
pub fn reround_q5_1(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_legacy(&Nearest, b, t, o, Some(2), Some(4), 8, 0, 31);
}

/// Dithered candidate for Q5_1 (`u`: one uniform per element).
pub fn dither_q5_1(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    reround_legacy(&Dither(u), b, t, o, Some(2), Some(4), 8, 0, 31);
}

/// Re-rounded candidate for Q8_0 (`dequantize_row_q8_0`): any `i8` code
/// on `k·d`.
pub fn reround_q8_0(b: &[u8], t: &[f32], o: &mut [u8]) {
    q8_0(&Nearest, b, t, o);
}

/// Dithered candidate for Q8_0.
pub fn dither_q8_0(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    q8_0(&Dither(u), b, t, o);
}

#[inline(always)]
fn q8_0<R: Round>(r: &R, b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 0);
    if !grid_ok(d, 0.0) {
        return;
    }
    for (e, (q, &x)) in o[2..34].iter_mut().zip(t).enumerate() {
        *q = r.code(e, x, d, 0.0, -128, 127) as i8 as u8;
    }
}

/// Re-rounded candidate for Q2_K (`dequantize_row_q2_K`): sub-block
/// `s = e / 16` on `k·(d·sc) − dmin·m`, `k` in `0..=3`, 2-bit code in bit
/// plane `(s % 8) / 2` of `qs[32·(s / 8) + 16·(s % 2) + e % 16]`.
pub fn reround_q2_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    q2_k(&Nearest, b, t, o);
}

/// Dithered candidate for Q2_K.
pub fn dither_q2_k(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    q2_k(&Dither(u), b, t, o);
}

#[inline(always)]
fn q2_k<R: Round>(r: &R, b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 80);
    let min = le_f16(b, 82);
    for (e, &x) in t.iter().enumerate().take(256) {
        let s = e / 16;
        let sc = b[s];
        let dl = d * (sc & 0xF) as f32;
        let ml = min * (sc >> 4) as f32;
        if grid_ok(dl, -ml) {
            let k = r.code(e, x, dl, -ml, 0, 3);
            let shift = 2 * ((s % 8) / 2) as u32;
            set_bits2(
                &mut o[16 + 32 * (s / 8) + 16 * (s % 2) + e % 16],
                shift,
                k as u8,
            );
        }
    }
}

/// Q3_K's 6-bit scale of sub-block `j`, minus 32, as `dequantize_row_q3_K`
/// unpacks it.
#[inline(always)]
fn q3_k_scale(s: &[u8], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    let hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// Re-rounded candidate for Q3_K (`dequantize_row_q3_K`): `k·(d·scale)`,
/// `k` in `−4..=3`, stored as `k + 4`: low two bits like Q2_K (at offset
/// 32), the third in bit `e / 32` of `hmask[e % 32]`.
pub fn reround_q3_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    q3_k(&Nearest, b, t, o);
}

/// Dithered candidate for Q3_K.
pub fn dither_q3_k(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    q3_k(&Dither(u), b, t, o);
}

#[inline(always)]
fn q3_k<R: Round>(r: &R, b: &[u8], t: &[f32], o: &mut [u8]) {
    let d_all = le_f16(b, 108);
    for (e, &x) in t.iter().enumerate().take(256) {
        let s = e / 16;
        let dl = d_all * q3_k_scale(&b[96..108], s) as f32;
        if grid_ok(dl, 0.0) {
            let k = r.code(e, x, dl, 0.0, -4, 3);
            let u = (k + 4) as u8;
            let shift = 2 * ((s % 8) / 2) as u32;
            set_bits2(&mut o[32 + 32 * (s / 8) + 16 * (s % 2) + e % 16], shift, u);
            set_bit(&mut o[e % 32], (e / 32) as u32, u & 4 != 0);
        }
    }
}

/// Re-rounded candidate for Q4_K and Q5_K (`dequantize_row_q4_K/_q5_K`):
/// sub-block `j = e / 32` on `k·(d·sc_j) − dmin·m_j`, codes `0..=nmax`; the
/// low nibble in `qs[32·(j / 2) + e % 32]` (high nibble for odd `j`) at
/// `qs_at`, for Q5_K the fifth bit in bit `j` of `qh[e % 32]`. Every code
/// is computed first and the bytes are written whole, as the encoder packs
/// them; a block with a degenerate sub-block grid (whose codes stay the
/// base's) takes [`reround_qkx_k_by_element`].
#[inline(always)]
fn reround_qkx_k<R: Round>(
    r: &R,
    b: &[u8],
    t: &[f32],
    o: &mut [u8],
    qh_at: Option<usize>,
    qs_at: usize,
    nmax: i32,
) {
    let d = le_f16(b, 0);
    let dmin = le_f16(b, 2);
    let mut codes = [0u8; 256];
    for (j, (xs, cs)) in t
        .chunks_exact(32)
        .zip(codes.chunks_exact_mut(32))
        .enumerate()
        .take(8)
    {
        let (sc, m) = get_scale_min_k4(j, &b[4..16]);
        let d1 = d * sc as f32;
        let m1 = dmin * m as f32;
        if !grid_ok(d1, -m1) {
            return reround_qkx_k_by_element(r, b, t, o, qh_at, qs_at, nmax);
        }
        for (i, (c, &x)) in cs.iter_mut().zip(xs).enumerate() {
            *c = r.code(32 * j + i, x, d1, -m1, 0, nmax) as u8;
        }
    }
    for (pair, qs) in codes
        .chunks_exact(64)
        .zip(o[qs_at..qs_at + 128].chunks_exact_mut(32))
    {
        for (i, q) in qs.iter_mut().enumerate() {
            *q = (pair[i] & 0x0F) | (pair[32 + i] << 4);
        }
    }
    if let Some(h) = qh_at {
        for (i, qh) in o[h..h + 32].iter_mut().enumerate() {
            let mut bits = 0u8;
            for j in 0..8 {
                bits |= ((codes[32 * j + i] >> 4) & 1) << j;
            }
            *qh = bits;
        }
    }
}

/// [`reround_qkx_k`] one element at a time, leaving the codes of a
/// sub-block with a degenerate grid as the base's.
#[cold]
fn reround_qkx_k_by_element<R: Round>(
    r: &R,
    b: &[u8],
    t: &[f32],
    o: &mut [u8],
    qh_at: Option<usize>,
    qs_at: usize,
    nmax: i32,
) {
    let d = le_f16(b, 0);
    let dmin = le_f16(b, 2);
    for (j, xs) in t.chunks_exact(32).enumerate().take(8) {
        let (sc, m) = get_scale_min_k4(j, &b[4..16]);
        let d1 = d * sc as f32;
        let m1 = dmin * m as f32;
        if !grid_ok(d1, -m1) {
            continue;
        }
        let mut codes = [0u8; 32];
        for (i, (c, &x)) in codes.iter_mut().zip(xs).enumerate() {
            *c = r.code(32 * j + i, x, d1, -m1, 0, nmax) as u8;
        }
        for (i, &q) in codes.iter().enumerate() {
            set_nibble(&mut o[qs_at + 32 * (j / 2) + i], j % 2 == 1, q);
            if let Some(h) = qh_at {
                set_bit(&mut o[h + i], j as u32, q & 0x10 != 0);
            }
        }
    }
}

/// Re-rounded candidate for Q4_K.
pub fn reround_q4_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_qkx_k(&Nearest, b, t, o, None, 16, 15);
}

/// Dithered candidate for Q4_K.
pub fn dither_q4_k(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    reround_qkx_k(&Dither(u), b, t, o, None, 16, 15);
}

/// Re-rounded candidate for Q5_K.
pub fn reround_q5_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    reround_qkx_k(&Nearest, b, t, o, Some(16), 48, 31);
}

/// Dithered candidate for Q5_K.
pub fn dither_q5_k(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    reround_qkx_k(&Dither(u), b, t, o, Some(16), 48, 31);
}

/// Re-rounded candidate for Q6_K (`dequantize_row_q6_K`): `k·(d·sc)` with
/// the signed 8-bit scale of sub-block `e / 16`, `k` in `−32..=31` stored as
/// `k + 32`. In half `n = e / 128`, quarter `m`, index `i`: the low nibble
/// in `ql[64n + i + 32·(m % 2)]` (high nibble for `m ≥ 2`), the top two
/// bits at bit `2m` of `qh[32n + i]`. Every code is computed first and the
/// bytes are written whole, as `quantize_row_q6_K` packs them; a block with
/// a degenerate sub-block grid (whose codes stay the base's) takes
/// [`reround_q6_k_by_element`].
pub fn reround_q6_k(b: &[u8], t: &[f32], o: &mut [u8]) {
    q6_k(&Nearest, b, t, o);
}

/// Dithered candidate for Q6_K.
pub fn dither_q6_k(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    q6_k(&Dither(u), b, t, o);
}

#[inline(always)]
fn q6_k<R: Round>(r: &R, b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 208);
    let mut codes = [0u8; 256];
    for (j, (xs, cs)) in t
        .chunks_exact(16)
        .zip(codes.chunks_exact_mut(16))
        .enumerate()
        .take(16)
    {
        let s = d * b[192 + j] as i8 as f32;
        if !grid_ok(s, 0.0) {
            return reround_q6_k_by_element(r, b, t, o);
        }
        for (i, (c, &x)) in cs.iter_mut().zip(xs).enumerate() {
            *c = (r.code(16 * j + i, x, s, 0.0, -32, 31) + 32) as u8;
        }
    }
    let (ql, qh) = o[..192].split_at_mut(128);
    for (l, (ql, qh)) in codes
        .chunks_exact(128)
        .zip(ql.chunks_exact_mut(64).zip(qh.chunks_exact_mut(32)))
    {
        for i in 0..32 {
            let (q1, q2, q3, q4) = (l[i], l[i + 32], l[i + 64], l[i + 96]);
            ql[i] = (q1 & 0x0F) | (q3 << 4);
            ql[i + 32] = (q2 & 0x0F) | (q4 << 4);
            qh[i] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
}

/// [`reround_q6_k`] one element at a time, leaving the codes of a
/// sub-block with a degenerate grid as the base's.
#[cold]
fn reround_q6_k_by_element<R: Round>(r: &R, b: &[u8], t: &[f32], o: &mut [u8]) {
    let d = le_f16(b, 208);
    for (j, xs) in t.chunks_exact(16).enumerate().take(16) {
        let s = d * b[192 + j] as i8 as f32;
        if !grid_ok(s, 0.0) {
            continue;
        }
        let mut codes = [0u8; 16];
        for (i, (c, &x)) in codes.iter_mut().zip(xs).enumerate() {
            *c = (r.code(16 * j + i, x, s, 0.0, -32, 31) + 32) as u8;
        }
        for (r, &q) in codes.iter().enumerate() {
            let e = 16 * j + r;
            let (n, m, i) = (e / 128, (e % 128) / 32, e % 32);
            set_nibble(&mut o[64 * n + i + 32 * (m % 2)], m >= 2, q);
            set_bits2(&mut o[128 + 32 * n + i], 2 * m as u32, q >> 4);
        }
    }
}

/// Dithered codes of one 32-element block on `s·kvalues_iq4nl[k]`, packed
/// as `dequantize_row_iq4_nl/_iq4_xs` read them: element `j < 16` in the
/// low nibble of `qs[j]`, element `j + 16` in its high nibble. A degenerate
/// grid (zero or non-finite scale) leaves the base's codes.
#[inline(always)]
fn iq4_block(r: &Dither<'_>, first: usize, t: &[f32], s: f32, qs: &mut [u8]) {
    if !grid_ok(s, 0.0) {
        return;
    }
    let mut c = [0u8; 32];
    for (i, (c, &x)) in c.iter_mut().zip(&t[..32]).enumerate() {
        *c = r.table_code(first + i, x, s, &KVALUES_IQ4NL) as u8;
    }
    for (j, q) in qs[..16].iter_mut().enumerate() {
        *q = c[j] | (c[j + 16] << 4);
    }
}

/// Dithered candidate for IQ4_NL (`dequantize_row_iq4_nl`): fp16 `d` at 0,
/// the 32 codes from byte 2, on `d·kvalues_iq4nl[k]`.
pub fn dither_iq4_nl(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    iq4_block(&Dither(u), 0, t, le_f16(b, 0), &mut o[2..18]);
}

/// Dithered candidate for IQ4_XS (`dequantize_row_iq4_xs`): fp16 `d` at 0,
/// sub-block `ib`'s 6-bit scale `ls` (low four bits in `scales_l` at 4, top
/// two in the u16 `scales_h` at 2), its codes at `8 + 16·ib` on
/// `d·(ls − 32)·kvalues_iq4nl[k]`.
pub fn dither_iq4_xs(b: &[u8], t: &[f32], u: &[f32], o: &mut [u8]) {
    let r = Dither(u);
    let d = le_f16(b, 0);
    let scales_h = le_u16(b, 2) as i32;
    for ib in 0..8 {
        let ls =
            ((b[4 + ib / 2] as i32 >> (4 * (ib % 2))) & 0xf) | (((scales_h >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &mut o[8 + 16 * ib..8 + 16 * ib + 16];
        iq4_block(&r, 32 * ib, &t[32 * ib..], dl, qs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64*).
    fn next(s: &mut u64) -> u64 {
        *s ^= *s >> 12;
        *s ^= *s << 25;
        *s ^= *s >> 27;
        s.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The whole-byte packing writes exactly what the element-by-element
    /// writer does, on random blocks (degenerate and non-finite scales
    /// included) and targets of every magnitude.
    #[test]
    fn packed_rerounding_matches_element_by_element() {
        type Pair = (
            fn(&[u8], &[f32], &mut [u8]),
            fn(&[u8], &[f32], &mut [u8]),
            usize,
        );
        let kernels: [(&str, Pair); 3] = [
            (
                "q4_K",
                (
                    reround_q4_k,
                    |b, t, o| reround_qkx_k_by_element(&Nearest, b, t, o, None, 16, 15),
                    144,
                ),
            ),
            (
                "q5_K",
                (
                    reround_q5_k,
                    |b, t, o| reround_qkx_k_by_element(&Nearest, b, t, o, Some(16), 48, 31),
                    176,
                ),
            ),
            (
                "q6_K",
                (
                    reround_q6_k,
                    |b, t, o| reround_q6_k_by_element(&Nearest, b, t, o),
                    210,
                ),
            ),
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for (name, (fast, slow, ts)) in kernels {
            for case in 0..2000 {
                let mut b: Vec<u8> = (0..ts).map(|_| next(&mut s) as u8).collect();
                if case % 2 == 0 {
                    // Small, finite fp16 scales (exponent below 0x78): the common case.
                    for i in [0, 1, 2, 3, ts - 1] {
                        b[i] &= 0x3b;
                    }
                }
                let mag = [1e-4f32, 0.05, 1.0, 1e4][case % 4];
                let t: Vec<f32> = (0..256)
                    .map(|_| ((next(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * mag)
                    .collect();
                let (mut want, mut got) = (b.clone(), b.clone());
                slow(&b, &t, &mut want);
                fast(&b, &t, &mut got);
                assert_eq!(got, want, "{name} case {case}");
            }
        }
    }
}
