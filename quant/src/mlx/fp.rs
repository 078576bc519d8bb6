//! MLX's microscaled float modes (`mx.quantize(w, mode=…)`, no biases):
//! `mxfp4` (E2M1 codes, one E8M0 power-of-two scale per 32 weights),
//! `mxfp8` (E4M3 codes, E8M0 scale per 32) and `nvfp4` (E2M1 codes, one
//! E4M3 scale per 16). Codes are packed little-endian into uint32 words
//! (element 0 in the lowest nibble or byte), scales are uint8.
//!
//! What mlx 0.32.4 computes on CPU, in the weight's dtype (`Precision`):
//! `s = amax / max` (max 6 for E2M1, 448 for E4M3), rounded; `nvfp4` stores
//! `s` as E4M3 (nearest even, saturating) and divides by its value (a group
//! whose scale is 0 gets code 0); the `mx` modes store `e = ⌈log2 s⌉` (log2
//! in f32, 0 for s = 0) as `e + 127` and divide by `2^e`; each quotient is
//! rounded to the dtype, then E4M3 (`mxfp8`) or the E2M1 entry nearest in
//! f32, the first in MLX's table order on a tie (`+0, 0.5 … 6, −0, −0.5 …
//! −6`: ties go to the smaller magnitude, a negative that rounds to zero is
//! +0). Decoding is `round(code · scale)` with the scale `2^(e−127)` (the
//! E8M0 byte) or the E4M3 value, both rounded to the dtype. Checked bit for
//! bit against `mx.quantize`/`mx.dequantize` by tests/interop/test_mlx.py.
//!
//! The E4M3 conversions are [`crate::fp8`]'s (mlx 0.32.4's `to_fp8` and
//! `from_fp8` agree with torch's on every finite value), the E2M1 values
//! ggml's `kvalues_mxfp4` halved.

use crate::bitstream::{put_code, BitReader};
use crate::float::{Precision, Rounding};
use crate::fp8::{e4m3_to_f32, f32_to_e4m3};
use crate::ggml::scalar::tables::KVALUES_MXFP4;
use crate::QuantError;

/// One of MLX's float quantization modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpMode {
    /// E2M1 codes, E8M0 scale per 32.
    Mxfp4,
    /// E4M3 codes, E8M0 scale per 32.
    Mxfp8,
    /// E2M1 codes, E4M3 scale per 16.
    Nvfp4,
}

impl FpMode {
    /// The mode named as in MLX (`"mxfp4"`, `"mxfp8"`, `"nvfp4"`).
    pub fn from_name(name: &str) -> Option<FpMode> {
        match name {
            "mxfp4" => Some(FpMode::Mxfp4),
            "mxfp8" => Some(FpMode::Mxfp8),
            "nvfp4" => Some(FpMode::Nvfp4),
            _ => None,
        }
    }

    /// MLX's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            FpMode::Mxfp4 => "mxfp4",
            FpMode::Mxfp8 => "mxfp8",
            FpMode::Nvfp4 => "nvfp4",
        }
    }

    /// Weights per scale (the only group size MLX accepts for the mode).
    pub fn group_size(self) -> usize {
        match self {
            FpMode::Nvfp4 => 16,
            FpMode::Mxfp4 | FpMode::Mxfp8 => 32,
        }
    }

    /// Bits per code (the only width MLX accepts for the mode).
    pub fn bits(self) -> u32 {
        match self {
            FpMode::Mxfp8 => 8,
            FpMode::Mxfp4 | FpMode::Nvfp4 => 4,
        }
    }

    fn code_max(self) -> f32 {
        match self {
            FpMode::Mxfp8 => 448.0,
            FpMode::Mxfp4 | FpMode::Nvfp4 => 6.0,
        }
    }

    /// The value of a stored scale byte, before rounding to the dtype.
    #[inline]
    fn scale_value(self, b: u8) -> f32 {
        match self {
            FpMode::Nvfp4 => e4m3_to_f32(b),
            // 2^(b−127): b = 0 is the f32 subnormal 2^-127, b = 255 is +inf.
            FpMode::Mxfp4 | FpMode::Mxfp8 if b == 0 => f32::from_bits(0x0040_0000),
            FpMode::Mxfp4 | FpMode::Mxfp8 => f32::from_bits((b as u32) << 23),
        }
    }

    /// The value of code `q` (exact in every dtype).
    #[inline]
    fn code_value(self, q: u32) -> f32 {
        match self {
            FpMode::Mxfp8 => e4m3_to_f32(q as u8),
            FpMode::Mxfp4 | FpMode::Nvfp4 => E2M1[q as usize],
        }
    }
}

/// E2M1 in MLX's order (the sign bit 8, −0 included).
const E2M1: [f32; 16] = {
    let mut t = [0f32; 16];
    let mut i = 0;
    while i < 16 {
        let m = KVALUES_MXFP4[i & 7] as f32 * 0.5;
        t[i] = if i >= 8 { -m } else { m };
        i += 1;
    }
    t
};

/// Dequantize one row: `packed` holds `out.len()` codes, `scales` one byte
/// per group, as stored.
pub fn dequantize_row(
    packed: &[u8],
    scales: &[u8],
    mode: FpMode,
    precision: Precision,
    out: &mut [f32],
) {
    precision.with_rounding(Dequantize {
        packed,
        scales,
        mode,
        out,
    })
}

/// [`dequantize_row`]'s arguments, run with the rounding inlined.
struct Dequantize<'a> {
    packed: &'a [u8],
    scales: &'a [u8],
    mode: FpMode,
    out: &'a mut [f32],
}

impl Rounding<()> for Dequantize<'_> {
    fn run(self, round: impl Fn(f32) -> f32 + Copy) {
        let mode = self.mode;
        let mut codes = BitReader::new(self.packed, mode.bits());
        for (o, &b) in self.out.chunks_mut(mode.group_size()).zip(self.scales) {
            let s = round(mode.scale_value(b));
            for v in o.iter_mut() {
                *v = round(mode.code_value(codes.next_code()) * s);
            }
        }
    }
}

/// The E2M1 code nearest `x` as MLX picks it (`argmin |x − table|` in f32,
/// the first of equals).
#[inline]
fn nearest_e2m1(x: f32) -> u32 {
    let mut best = (x - E2M1[0]).abs();
    let mut code = 0;
    for (i, &v) in E2M1.iter().enumerate().skip(1) {
        let d = (x - v).abs();
        if d < best {
            best = d;
            code = i as u32;
        }
    }
    code
}

/// Quantize one row of values (already rounded to `precision`, the dtype
/// MLX quantizes from) as `mode`: the packed codes and one scale byte per
/// group. NaN or ±Inf, and a non-zero group too small for an E8M0 scale
/// (MLX's own exponent wraps there), are errors.
pub fn quantize_row(
    x: &[f32],
    mode: FpMode,
    precision: Precision,
) -> Result<(Vec<u8>, Vec<u8>), QuantError> {
    let (gs, bits) = (mode.group_size(), mode.bits());
    let mut packed = vec![0u8; (x.len() * bits as usize).div_ceil(8)];
    let mut scales = Vec::with_capacity(x.len() / gs);
    for (g, group) in x.chunks(gs).enumerate() {
        let mut amax = 0f32;
        for (j, &v) in group.iter().enumerate() {
            if !v.is_finite() {
                let index = g * gs + j;
                return Err(QuantError::NonFinite { index, value: v });
            }
            amax = amax.max(v.abs());
        }
        let s = precision.round(amax / mode.code_max());
        let (byte, divisor) = match mode {
            FpMode::Nvfp4 => {
                let b = f32_to_e4m3(s);
                (b, e4m3_to_f32(b))
            }
            FpMode::Mxfp4 | FpMode::Mxfp8 => {
                let e = if s == 0.0 { 0 } else { s.log2().ceil() as i32 };
                if e < -127 {
                    return Err(QuantError::OutOfRange {
                        index: g * gs,
                        value: amax,
                        why: "a group this small needs an E8M0 scale below 2^-127 (mx.quantize wraps its exponent there)",
                    });
                }
                ((e + 127) as u8, precision.round(exp2(e)))
            }
        };
        scales.push(byte);
        for (j, &v) in group.iter().enumerate() {
            let w = if divisor == 0.0 {
                0.0
            } else {
                precision.round(v / divisor)
            };
            let q = match mode {
                FpMode::Mxfp8 => f32_to_e4m3(w) as u32,
                FpMode::Mxfp4 | FpMode::Nvfp4 => nearest_e2m1(w),
            };
            put_code(&mut packed, bits, g * gs + j, q);
        }
    }
    Ok((packed, scales))
}

/// 2^e for −127 ≤ e ≤ 127, exactly (2^-127 is subnormal).
fn exp2(e: i32) -> f32 {
    if e == -127 {
        f32::from_bits(0x0040_0000)
    } else {
        f32::from_bits(((e + 127) as u32) << 23)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MODES: [FpMode; 3] = [FpMode::Mxfp4, FpMode::Mxfp8, FpMode::Nvfp4];
    const PRECISIONS: [Precision; 3] = [Precision::F32, Precision::Bf16, Precision::F16];

    /// A deterministic xorshift stream, standard normal by Box–Muller.
    struct Gauss(u64);

    impl Gauss {
        fn uniform(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32
        }

        fn next(&mut self) -> f32 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        }
    }

    fn round_trip(x: &[f32], mode: FpMode, p: Precision) -> Vec<f32> {
        let x: Vec<f32> = x.iter().map(|&v| p.round(v)).collect();
        let (packed, scales) = quantize_row(&x, mode, p).unwrap();
        assert_eq!(packed.len(), x.len() * mode.bits() as usize / 8);
        assert_eq!(scales.len(), x.len() / mode.group_size());
        let mut back = vec![0f32; x.len()];
        dequantize_row(&packed, &scales, mode, p, &mut back);
        back
    }

    /// The worst error a group may have, relative to its amax: half the
    /// widest gap of the code grid near the top, times the scale's
    /// overshoot (E8M0 rounds the scale up to a power of two, at most ×2;
    /// E4M3 rounds it to nearest, at most 1/16 off), plus the dtype's
    /// rounding of the product.
    fn bound(mode: FpMode, p: Precision) -> f32 {
        let grid = match mode {
            FpMode::Mxfp4 => 1.0 / 6.0 * 2.0,
            FpMode::Nvfp4 => 1.0 / 6.0 * (1.0 + 1.0 / 16.0),
            FpMode::Mxfp8 => 1.0 / 16.0,
        };
        grid + p.eps()
    }

    fn check_bound(x: &[f32], mode: FpMode, p: Precision, what: &str) {
        let back = round_trip(x, mode, p);
        for (g, (a, b)) in x
            .chunks(mode.group_size())
            .zip(back.chunks(mode.group_size()))
            .enumerate()
        {
            let amax = a.iter().fold(0f32, |m, v| m.max(p.round(*v).abs()));
            let err = a
                .iter()
                .zip(b)
                .fold(0f32, |m, (u, v)| m.max((p.round(*u) - v).abs()));
            assert!(
                err <= bound(mode, p) * amax,
                "{what} {mode:?} {p:?} group {g}: error {err} > {} · amax {amax}",
                bound(mode, p)
            );
        }
    }

    #[test]
    fn errors_stay_within_the_grid_on_varied_data() {
        let mut r = Gauss(0x9e37_79b9_7f4a_7c15);
        let n = 64 * 32;
        // σ = 1 keeps nvfp4's E4M3 scales normal (amax/6 ≥ 2^-6); below,
        // its subnormal scales are coarser than the bound states.
        let gauss: Vec<f32> = (0..n).map(|_| r.next()).collect();
        // Student-t-like tails: a normal over the root of a uniform.
        let heavy: Vec<f32> = (0..n).map(|_| r.next() / r.uniform().sqrt()).collect();
        let mut zero_blocks = gauss.clone();
        zero_blocks[32..96].fill(0.0);
        let constant = vec![0.37f32; n];
        let huge: Vec<f32> = gauss.iter().map(|v| v * 1e30).collect();
        let tiny: Vec<f32> = gauss.iter().map(|v| v * 1e-30).collect();
        for mode in MODES {
            for p in PRECISIONS {
                check_bound(&gauss, mode, p, "gaussian");
                check_bound(&heavy, mode, p, "heavy-tailed");
                check_bound(&zero_blocks, mode, p, "zero blocks");
                check_bound(&constant, mode, p, "constant");
            }
            // Magnitudes only bf16 and f32 hold, inside E8M0 and (for
            // nvfp4, whose E4M3 scale spans 2^-9·6 … 448·6) inside range.
            for p in [Precision::F32, Precision::Bf16] {
                if mode != FpMode::Nvfp4 {
                    check_bound(&huge, mode, p, "huge");
                    check_bound(&tiny, mode, p, "tiny");
                }
            }
        }
    }

    #[test]
    fn zero_groups_decode_to_zero_with_neutral_scales() {
        for mode in MODES {
            let x = vec![0f32; 64];
            let (packed, scales) = quantize_row(&x, mode, Precision::Bf16).unwrap();
            assert!(packed.iter().all(|&b| b == 0));
            let neutral = if mode == FpMode::Nvfp4 { 0 } else { 127 };
            assert!(scales.iter().all(|&s| s == neutral), "{mode:?} {scales:?}");
            assert!(round_trip(&x, mode, Precision::Bf16)
                .iter()
                .all(|&v| v == 0.0));
        }
    }

    #[test]
    fn grid_values_round_trip_exactly_and_ties_go_to_the_smaller_magnitude() {
        // amax 6 makes every scale 1: the E2M1 grid itself, then midpoints.
        let grid = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        let mut x: Vec<f32> = grid.iter().chain(grid.iter()).copied().collect();
        x[8..].iter_mut().for_each(|v| *v = -*v);
        x.extend([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]);
        x.extend([-0.25, -0.75, -1.25, -1.75, -2.5, -3.5, -5.0, -6.0]);
        for mode in [FpMode::Mxfp4, FpMode::Nvfp4] {
            let back = round_trip(&x, mode, Precision::F32);
            assert_eq!(&back[..16], &x[..16], "{mode:?}");
            let down = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
            for (i, d) in down.iter().enumerate() {
                assert_eq!(back[16 + i], *d, "{mode:?} {}", x[16 + i]);
                assert_eq!(back[24 + i], -d, "{mode:?} {}", x[24 + i]);
            }
            // −0.25 rounds to +0: code 0, not the −0 code.
            let (packed, _) = quantize_row(&x, mode, Precision::F32).unwrap();
            assert_eq!(packed[12] & 0x0f, 0, "{mode:?}");
        }
    }

    #[test]
    fn e8m0_bytes_decode_to_powers_of_two() {
        let mut out = [0f32; 32];
        for (b, want) in [(127u8, 1.0f32), (0, 2f32.powi(-127)), (254, 2f32.powi(127))] {
            dequantize_row(&[0x22; 16], &[b], FpMode::Mxfp4, Precision::F32, &mut out);
            assert!(out.iter().all(|&v| v == want), "{b}: {}", out[0]);
        }
        // MLX decodes 255 as 2^128 = inf; the caller's finiteness check names it.
        dequantize_row(&[0x22; 16], &[255], FpMode::Mxfp4, Precision::F32, &mut out);
        assert!(out.iter().all(|v| v.is_infinite()));
    }

    #[test]
    fn non_finite_and_unrepresentable_inputs_are_errors() {
        for mode in MODES {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut x = vec![0.5f32; 64];
                x[40] = bad;
                match quantize_row(&x, mode, Precision::Bf16) {
                    Err(QuantError::NonFinite { index: 40, .. }) => {}
                    other => panic!("{mode:?} {bad}: {other:?}"),
                }
            }
        }
        for mode in [FpMode::Mxfp4, FpMode::Mxfp8] {
            let mut x = vec![0f32; 32];
            x[3] = 1e-40;
            let err = quantize_row(&x, mode, Precision::F32).unwrap_err();
            assert!(
                matches!(err, QuantError::OutOfRange { index: 0, .. }),
                "{err:?}"
            );
            assert!(err.to_string().contains("2^-127"), "{err}");
        }
    }

    #[test]
    fn codes_pack_low_nibble_first() {
        let mut x = vec![0f32; 32];
        x[0] = 6.0;
        x[1] = 1.0;
        let (packed, scales) = quantize_row(&x, FpMode::Mxfp4, Precision::F32).unwrap();
        assert_eq!(scales, [127]);
        assert_eq!(packed[0], 0x27);
        let (packed, scales) = quantize_row(&x, FpMode::Mxfp8, Precision::F32).unwrap();
        // amax 6 → scale 2^⌈log2(6/448)⌉ = 2^-6: codes 384 and 64 in E4M3.
        assert_eq!(scales, [121]);
        assert_eq!(&packed[..2], &[f32_to_e4m3(384.0), f32_to_e4m3(64.0)]);
    }
}
