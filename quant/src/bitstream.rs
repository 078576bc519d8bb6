//! Little-endian bit streams of `bits`-bit codes (2 to 8 bits), the packing
//! MLX (`mx.quantize`) and compressed-tensors (`pack_to_int32`) share: code
//! `i` occupies bits `i·bits .. (i+1)·bits` of the byte string.

/// Reads codes one after the other.
pub(crate) struct BitReader<'a> {
    bytes: &'a [u8],
    bits: u32,
    acc: u64,
    have: u32,
    next: usize,
}

impl<'a> BitReader<'a> {
    /// Codes of `bits` bits from the start of `bytes`.
    #[inline]
    pub(crate) fn new(bytes: &'a [u8], bits: u32) -> Self {
        BitReader {
            bytes,
            bits,
            acc: 0,
            have: 0,
            next: 0,
        }
    }

    /// The next code.
    #[inline]
    pub(crate) fn next_code(&mut self) -> u32 {
        if self.have < self.bits {
            self.acc |= (self.bytes[self.next] as u64) << self.have;
            self.next += 1;
            self.have += 8;
        }
        let q = (self.acc & ((1u64 << self.bits) - 1)) as u32;
        self.acc >>= self.bits;
        self.have -= self.bits;
        q
    }
}

/// Store code `q` (< 2^bits) as code `i` of `bytes` (zeroed beforehand).
#[inline]
pub(crate) fn put_code(bytes: &mut [u8], bits: u32, i: usize, q: u32) {
    let bit = i * bits as usize;
    let (byte, shift) = (bit / 8, bit % 8);
    let word = q << shift;
    bytes[byte] |= word as u8;
    if shift + bits as usize > 8 {
        bytes[byte + 1] |= (word >> 8) as u8;
    }
}
