//! The FP4 (E2M1) microscaling formats of `ggml-quants.c`: MXFP4 (32 values,
//! one E8M0 power-of-two scale) and NVFP4 (64 values, four UE4M3 scales).

use super::tables::KVALUES_MXFP4;

const QK_MXFP4: usize = 32;
const QK_NVFP4: usize = 64;
const QK_NVFP4_SUB: usize = 16;

/// `ggml_e8m0_to_fp32_half`: 2^(e-128), with the two subnormal patterns
/// for e < 2 (the E2M1 table holds doubled values, hence the half).
#[inline(always)]
pub fn e8m0_to_fp32_half(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        ((e - 1) as u32) << 23
    };
    f32::from_bits(bits)
}

/// 2^k for k in the normal range, exactly.
#[inline(always)]
fn exp2i(k: i32) -> f32 {
    f32::from_bits(((k + 127) as u32) << 23)
}

/// `ggml_ue4m3_to_fp32`: unsigned E4M3 (bias 7), halved for the doubled
/// E2M1 table; 0 and 0x7F decode to 0.
#[inline(always)]
pub fn ue4m3_to_fp32(x: u8) -> f32 {
    if x == 0 || x == 0x7F {
        return 0.0;
    }
    let exp = ((x >> 3) & 0xF) as i32;
    let man = (x & 0x7) as i32;
    let raw = if exp == 0 {
        man as f32 * exp2i(-9)
    } else {
        (1.0f32 + man as f32 / 8.0f32) * exp2i(exp - 7)
    };
    raw * 0.5f32
}

/// `ggml_fp32_to_ue4m3`: round half up on the mantissa, saturate at 0x7E.
#[inline(always)]
pub fn fp32_to_ue4m3(x: f32) -> u8 {
    // Written as a negated comparison so that NaN maps to 0 like ggml.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    if !(x > 0.0) {
        return 0;
    }
    let x = if x > 448.0 { 448.0f32 } else { x };
    let bits = x.to_bits();
    let fp32_exp = ((bits >> 23) & 0xFF) as i32 - 127;
    let fp32_man = ((bits >> 20) & 0x7) as i32;
    let mut ue4m3_exp = fp32_exp + 7;
    if ue4m3_exp <= 0 {
        let man = ((x * 512.0f32 + 0.5f32) as i32).min(7);
        if man < 1 {
            return 0;
        }
        return man as u8;
    }
    if ue4m3_exp >= 15 {
        return 0x7E;
    }
    let round_bit = ((bits >> 19) & 1) as i32;
    let mut ue4m3_man = fp32_man + round_bit;
    if ue4m3_man > 7 {
        ue4m3_man = 0;
        ue4m3_exp += 1;
        if ue4m3_exp >= 15 {
            return 0x7E;
        }
    }
    ((ue4m3_exp << 3) | ue4m3_man) as u8
}

/// `best_index_mxfp4`: the first index of least `|kvalues[i]·e − x|`.
#[inline(always)]
fn best_index_mxfp4(x: f32, e: f32) -> u8 {
    let mut best_index = 0u8;
    let mut best_err = (KVALUES_MXFP4[0] as f32 * e - x).abs();
    for (i, &k) in KVALUES_MXFP4.iter().enumerate().skip(1) {
        let err = (k as f32 * e - x).abs();
        if err < best_err {
            best_index = i as u8;
            best_err = err;
        }
    }
    best_index
}

/// The shared exponent of `quantize_row_mxfp4_ref`:
/// `(uint8_t)(floorf(log2f(amax)) - 2 + 127)`, 0 for an all-zero block.
///
/// Below 2^-125 the float is negative and C's conversion to `uint8_t` is
/// undefined; x86-64 compilers convert through a 32-bit integer and keep
/// the low byte, which is what ggml's shipped build writes (checked by the
/// `subnormal` golden case), so we do the same.
#[inline(always)]
pub fn mxfp4_exponent(amax: f32) -> u8 {
    if amax > 0.0 {
        ((amax.log2().floor() - 2.0f32 + 127.0f32) as i32) as u8
    } else {
        0
    }
}

/// `quantize_row_mxfp4_ref`
pub fn quantize_mxfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_MXFP4).zip(dst.chunks_exact_mut(17)) {
        let mut amax = 0f32;
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
            }
        }
        let e = mxfp4_exponent(amax);
        let d = e8m0_to_fp32_half(e);
        b[0] = e;
        for j in 0..QK_MXFP4 / 2 {
            let x0 = best_index_mxfp4(x[j], d);
            let x1 = best_index_mxfp4(x[QK_MXFP4 / 2 + j], d);
            b[1 + j] = x0 | (x1 << 4);
        }
    }
}

/// `dequantize_row_mxfp4`
pub fn dequantize_mxfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(17).zip(dst.chunks_exact_mut(QK_MXFP4)) {
        let d = e8m0_to_fp32_half(b[0]);
        for j in 0..QK_MXFP4 / 2 {
            let q = b[1 + j];
            y[j] = KVALUES_MXFP4[(q & 0x0F) as usize] as f32 * d;
            y[j + QK_MXFP4 / 2] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
        }
    }
}

/// `quantize_row_nvfp4_ref`
pub fn quantize_nvfp4(src: &[f32], dst: &mut [u8]) {
    for (x, b) in src.chunks_exact(QK_NVFP4).zip(dst.chunks_exact_mut(36)) {
        for s in 0..QK_NVFP4 / QK_NVFP4_SUB {
            let xb = &x[s * QK_NVFP4_SUB..(s + 1) * QK_NVFP4_SUB];
            let mut amax = 0f32;
            for &v in xb {
                if amax < v.abs() {
                    amax = v.abs();
                }
            }
            let ue = fp32_to_ue4m3(amax / 6.0f32);
            b[s] = ue;
            let d = ue4m3_to_fp32(ue);
            for j in 0..QK_NVFP4_SUB / 2 {
                let x0 = best_index_mxfp4(xb[j], d);
                let x1 = best_index_mxfp4(xb[QK_NVFP4_SUB / 2 + j], d);
                b[4 + s * (QK_NVFP4_SUB / 2) + j] = x0 | (x1 << 4);
            }
        }
    }
}

/// `dequantize_row_nvfp4`
pub fn dequantize_nvfp4(src: &[u8], dst: &mut [f32]) {
    for (b, y) in src.chunks_exact(36).zip(dst.chunks_exact_mut(QK_NVFP4)) {
        for s in 0..QK_NVFP4 / QK_NVFP4_SUB {
            let d = ue4m3_to_fp32(b[s]);
            let yb = &mut y[s * QK_NVFP4_SUB..(s + 1) * QK_NVFP4_SUB];
            for j in 0..QK_NVFP4_SUB / 2 {
                let q = b[4 + s * (QK_NVFP4_SUB / 2) + j];
                yb[j] = KVALUES_MXFP4[(q & 0x0F) as usize] as f32 * d;
                yb[j + QK_NVFP4_SUB / 2] = KVALUES_MXFP4[(q >> 4) as usize] as f32 * d;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e8m0_half_is_two_to_the_e_minus_128() {
        for e in 0..=254u8 {
            assert_eq!(
                e8m0_to_fp32_half(e) as f64,
                2f64.powi(e as i32 - 128),
                "e={e}"
            );
        }
    }

    #[test]
    fn ue4m3_round_trips_every_finite_code() {
        // Exponent 15 is reserved for the saturated 448 (0x7E).
        for c in 1..0x78u8 {
            let v = ue4m3_to_fp32(c) * 2.0;
            assert_eq!(fp32_to_ue4m3(v), c, "code {c:#x} value {v}");
        }
        assert_eq!(fp32_to_ue4m3(448.0), 0x7E);
        assert_eq!(fp32_to_ue4m3(f32::NAN), 0);
        assert_eq!(fp32_to_ue4m3(1e9), 0x7E);
    }
}
