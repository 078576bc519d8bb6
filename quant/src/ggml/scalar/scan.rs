//! Row scans that are not codecs: where the first NaN or infinity is.

/// Index of the first `chunk`-element piece of `row` holding a NaN or an
/// infinity (all exponent bits set), portable variant: a branch-free test
/// per piece.
pub fn first_special_chunk(row: &[f32], chunk: usize) -> Option<usize> {
    row.chunks(chunk).position(|c| {
        c.iter().fold(0u32, |acc, v| {
            acc | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        }) != 0
    })
}
