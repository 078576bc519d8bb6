//! LLM.int8 row-wise weights: one int8 per element, one f32 scale per row.

use super::common::{check_finite, BnbError};

/// `7.874015718698502e-3` (1/127) as the f32 torch multiplies by.
pub const INT8_DEQUANT_FACTOR: f32 = 7.874015718698502e-3f64 as f32;

fn check_shape(len: usize, cols: usize) -> Result<usize, BnbError> {
    if cols == 0 || !len.is_multiple_of(cols) {
        return Err(BnbError::BadLength {
            what: "row-major matrix",
            expected: len.next_multiple_of(cols.max(1)),
            got: len,
        });
    }
    Ok(len / cols)
}

/// Quantizes a row-major `[rows, cols]` matrix: `SCB = max |row|` and
/// `CB = round(x * (127 / SCB))` to int8, rounding half to even.
///
/// Port of the default `bitsandbytes::int8_vectorwise_quant` kernel
/// (backends/default/ops.py, threshold 0), which `Int8Params` runs on the
/// weight converted to float16 — pass f16-representable values to match it.
/// `127.0 / row_stats` is torch's `__rtruediv__`: `reciprocal(row_stats) * 127`,
/// two f32 roundings. An all-zero row has SCB 0 and codes 0 (torch computes
/// `0 * inf = NaN` there and casts it to int8 as 0 on x86). A row whose max
/// is below ~2.9e-39 (reciprocal overflows) gets ±127 here where torch's
/// float → int8 cast of ±inf is undefined; float16 inputs never get there.
pub fn quantize_int8_rows(x: &[f32], cols: usize) -> Result<(Vec<i8>, Vec<f32>), BnbError> {
    let rows = check_shape(x.len(), cols)?;
    check_finite(x)?;
    let mut cb = Vec::with_capacity(x.len());
    let mut scb = Vec::with_capacity(rows);
    for row in x.chunks(cols) {
        let s = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        scb.push(s);
        let factor = (1.0f32 / s) * 127.0f32;
        for &v in row {
            let q = (v * factor).round_ties_even();
            cb.push(if q.is_nan() { 0 } else { q as i8 });
        }
    }
    Ok((cb, scb))
}

/// `CB * SCB * (1/127)` left to right in f32: the default
/// `bitsandbytes::int8_vectorwise_dequant` kernel (`_ops.py`).
pub fn dequantize_int8_rows(
    cb: &[i8],
    scb: &[f32],
    cols: usize,
    out: &mut [f32],
) -> Result<(), BnbError> {
    let rows = check_shape(cb.len(), cols)?;
    if scb.len() != rows {
        return Err(BnbError::BadLength {
            what: "SCB",
            expected: rows,
            got: scb.len(),
        });
    }
    if out.len() != cb.len() {
        return Err(BnbError::BadLength {
            what: "out",
            expected: cb.len(),
            got: out.len(),
        });
    }
    for (i, (o, &c)) in out.iter_mut().zip(cb).enumerate() {
        *o = c as f32 * scb[i / cols] * INT8_DEQUANT_FACTOR;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_shapes_are_errors() {
        assert!(quantize_int8_rows(&[1.0; 6], 0).is_err());
        assert!(quantize_int8_rows(&[1.0; 6], 4).is_err());
        assert!(matches!(
            quantize_int8_rows(&[1.0, f32::INFINITY], 2),
            Err(BnbError::NonFinite { index: 1, .. })
        ));
        let mut out = [0.0; 4];
        assert!(dequantize_int8_rows(&[1; 4], &[1.0], 2, &mut out).is_err());
        assert!(dequantize_int8_rows(&[1; 4], &[1.0, 1.0], 2, &mut out[..3]).is_err());
    }

    #[test]
    fn ties_round_to_even() {
        // 127 * x / 127 with x = 0.5 / 127 * k lands on k / 2: halves go to even.
        let scb = 127.0f32;
        let x = [scb, 0.5, 1.5, 2.5, -0.5, -2.5];
        let (cb, _) = quantize_int8_rows(&x, x.len()).unwrap();
        assert_eq!(cb, vec![127, 0, 2, 2, 0, -2]);
    }
}
