//! The signed 8-bit dynamic map and blockwise 8-bit quantization, used by
//! bitsandbytes for double quantization ("nested" absmax) of 4-bit scales.

use super::common::{check_finite, check_lengths, num_blocks, BnbError};

/// Blocksize of the nested (second-level) quantization of 4-bit absmax.
pub const NESTED_BLOCKSIZE: usize = 256;

/// `create_dynamic_map(signed=True)` of bitsandbytes/functional.py as f32
/// bit patterns: sorted, `map[0] = -0.99297`, `map[127] = 0`, `map[255] = 1`.
/// Taken from torch (its f32 `linspace` is vectorised differently per CPU,
/// so the table is data, not recomputed); checked against bitsandbytes by
/// tests/golden_bnb.rs.
const DYNAMIC_MAP_BITS: [u32; 256] = include!("dynamic_map.in");

/// The signed dynamic map exactly as `create_dynamic_map()` returns it. This
/// is what CUDA quantization stores as `nested_quant_map`.
pub fn dynamic_map() -> [f32; 256] {
    DYNAMIC_MAP_BITS.map(f32::from_bits)
}

/// Bins of the native quantizer's lookup table over [-1, 1].
const LUT_SIZE: usize = 65536;

/// `build_quantize_lut` (csrc/cpu_ops.cpp): bin `i` holds `-1 + 2i / 65535`
/// and maps to the first code whose upper midpoint `0.5 * (c[k] + c[k+1])`
/// is not below it, all in f32.
fn build_quantize_lut(code: &[f32; 256]) -> Vec<u8> {
    let mid: [f32; 255] = std::array::from_fn(|i| 0.5f32 * (code[i] + code[i + 1]));
    let mut lut = Vec::with_capacity(LUT_SIZE);
    let mut k = 0usize;
    for i in 0..LUT_SIZE {
        let val = -1.0f32 + (2.0f32 * i as f32) / (LUT_SIZE - 1) as f32;
        while k < 255 && mid[k] < val {
            k += 1;
        }
        lut.push(k as u8);
    }
    lut
}

/// Blockwise 8-bit quantization against a sorted 256-entry map.
///
/// Port of the native CPU `quantize_cpu` of bitsandbytes 0.50
/// (`quantize_cpu_impl` / `avx2_quantize_8bit_block`, csrc/cpu_ops.cpp),
/// which bitsandbytes uses for float32 input on CPU. It is *not* an exact
/// nearest-code search: the normalized value is binned into a 65536-entry
/// table built like `build_quantize_lut`, so a value within about 1.5e-5 of a
/// midpoint can take the farther code. Per block:
/// - `absmax = max |x|` (every block, also a trailing partial one);
/// - absmax 0: all codes 0;
/// - otherwise `v = clamp(x * (1 / absmax), -1, 1)`, bin
///   `trunc(((v + 1) * 0.5) * 65535 + 0.5)`, code `lut[bin]`.
///
/// `code` must be sorted ascending (any bitsandbytes map is).
pub fn quantize_blockwise(
    x: &[f32],
    code: &[f32; 256],
    blocksize: usize,
) -> Result<(Vec<u8>, Vec<f32>), BnbError> {
    if blocksize == 0 {
        return Err(BnbError::BadBlocksize(0));
    }
    check_finite(x)?;
    let lut = build_quantize_lut(code);
    let mut out = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(num_blocks(x.len(), blocksize));
    for blk in x.chunks(blocksize) {
        let am = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        if am == 0.0 {
            out.extend(std::iter::repeat_n(0u8, blk.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        out.extend(blk.iter().map(|&v| bin(&lut, v, inv)));
    }
    Ok((out, absmax))
}

/// The code `quantize_cpu` gives `v` in a block whose absmax has the
/// reciprocal `inv`: `v * inv` clamped to [-1, 1], binned into `lut`.
fn bin(lut: &[u8], v: f32, inv: f32) -> u8 {
    let s = (v * inv).clamp(-1.0, 1.0);
    let t = ((s + 1.0f32) * 0.5f32) * (LUT_SIZE - 1) as f32 + 0.5f32;
    lut[t as usize]
}

/// `code[q] * absmax[i / blocksize]` in f32: the native
/// `dequantizeBlockwise8bitCpu` (csrc/cpu_ops.cpp).
pub fn dequantize_blockwise(
    q: &[u8],
    absmax: &[f32],
    code: &[f32; 256],
    blocksize: usize,
    out: &mut [f32],
) -> Result<(), BnbError> {
    if blocksize == 0 {
        return Err(BnbError::BadBlocksize(0));
    }
    check_lengths(&[
        ("absmax", num_blocks(q.len(), blocksize), absmax.len()),
        ("out", q.len(), out.len()),
    ])?;
    for (i, (o, &c)) in out.iter_mut().zip(q).enumerate() {
        *o = code[c as usize] * absmax[i / blocksize];
    }
    Ok(())
}

/// Double-quantized 4-bit absmax: the `compress_statistics=True` state of
/// `functional.quantize_4bit` (checkpoint names: `absmax` = `codes`,
/// `nested_absmax` = `absmax2`, `nested_quant_map` = `code`, `offset`).
#[derive(Debug, Clone, PartialEq)]
pub struct NestedAbsmax {
    /// One 8-bit code per 4-bit block.
    pub codes: Vec<u8>,
    /// One f32 scale per 256 codes.
    pub absmax2: Vec<f32>,
    /// The mean of the original absmax, subtracted before quantization.
    pub offset: f32,
    /// The map the codes index into.
    pub code: [f32; 256],
}

impl NestedAbsmax {
    /// Nests `absmax` as bitsandbytes does on CPU: `offset = absmax.mean()`
    /// (as [`torch_mean_f32`], i.e. one torch thread; for more than 32768
    /// blocks pass [`torch_mean_f32_threads`] to
    /// [`NestedAbsmax::quantize_with_offset`] to match a given thread count),
    /// then `quantize_blockwise(absmax - offset, blocksize=256)` with the
    /// dynamic map, which is also the stored `code`.
    pub fn quantize(absmax: &[f32]) -> Result<NestedAbsmax, BnbError> {
        check_finite(absmax)?;
        Self::quantize_with_offset(absmax, torch_mean_f32(absmax))
    }

    /// Nests with a given offset (e.g. one read back from a checkpoint).
    pub fn quantize_with_offset(absmax: &[f32], offset: f32) -> Result<NestedAbsmax, BnbError> {
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let code = dynamic_map();
        let (codes, absmax2) = quantize_blockwise(&centred, &code, NESTED_BLOCKSIZE)?;
        Ok(NestedAbsmax {
            codes,
            absmax2,
            offset,
            code,
        })
    }

    /// Codes for other absmax values of the same blocks under this state's
    /// `offset` and group scales `absmax2`: what `quantize_cpu` gives
    /// `absmax[i] - offset` in group `i / 256` with the group's absmax fixed
    /// (a value beyond the group's range takes the end code; a group of
    /// scale 0 gives codes 0, as a zero block does). Decoded with this
    /// state, a code of the state's own absmax is the state's own code, and
    /// the codes of the other blocks do not change: `--strategy search`
    /// swaps single blocks this way without moving any other block's value.
    pub fn codes_for(&self, absmax: &[f32]) -> Result<Vec<u8>, BnbError> {
        check_lengths(&[
            ("absmax", self.codes.len(), absmax.len()),
            (
                "absmax2",
                num_blocks(absmax.len(), NESTED_BLOCKSIZE),
                self.absmax2.len(),
            ),
        ])?;
        check_finite(absmax)?;
        let lut = build_quantize_lut(&self.code);
        let mut out = Vec::with_capacity(absmax.len());
        for (grp, &am) in absmax.chunks(NESTED_BLOCKSIZE).zip(&self.absmax2) {
            if am == 0.0 {
                out.extend(std::iter::repeat_n(0u8, grp.len()));
                continue;
            }
            let inv = 1.0f32 / am;
            out.extend(grp.iter().map(|&a| bin(&lut, a - self.offset, inv)));
        }
        Ok(out)
    }

    /// The 4-bit absmax back: `code[c] * absmax2[i / 256] + offset` in f32
    /// (`dequantize_blockwise` then `absmax += offset` in `dequantize_4bit`).
    pub fn dequantize(&self) -> Result<Vec<f32>, BnbError> {
        let mut out = vec![0.0f32; self.codes.len()];
        dequantize_blockwise(
            &self.codes,
            &self.absmax2,
            &self.code,
            NESTED_BLOCKSIZE,
            &mut out,
        )?;
        for v in &mut out {
            *v += self.offset;
        }
        Ok(out)
    }
}

/// `torch.mean` of a contiguous f32 tensor on CPU, as one thread computes it:
/// `sum / n` with the sum of ATen's `cascade_sum` (SumKernel.cpp,
/// `vectorized_inner_sum` → `row_sum` → `multi_row_sum`) over 8-lane
/// vectors (what torch 2.15 runs on AVX2 and AVX-512 machines alike).
/// Above 32768 elements torch splits the sum across threads, so its last
/// bits depend on the thread count: see [`torch_mean_f32_threads`]. An empty
/// slice gives NaN, as in torch.
pub fn torch_mean_f32(x: &[f32]) -> f32 {
    torch_mean_f32_threads(x, 1)
}

/// `torch.mean` as computed with `torch.get_num_threads() == threads`:
/// ATen's `two_pass_reduction` gives each of `min(threads, ceil(n / 32768))`
/// OpenMP threads a chunk of `ceil(n / that)` elements, sums each chunk as
/// above into a buffer of `threads` slots (unused ones 0) and sums the
/// buffer the same way.
pub fn torch_mean_f32_threads(x: &[f32], threads: usize) -> f32 {
    const GRAIN: usize = 32768;
    let n = x.len();
    if threads <= 1 || n <= GRAIN {
        return torch_sum_f32(x, 8) / n as f32;
    }
    let used = threads.min(n.div_ceil(GRAIN));
    let chunk = n.div_ceil(used);
    let mut buffer = vec![0.0f32; threads];
    for (slot, part) in buffer.iter_mut().zip(x.chunks(chunk)) {
        *slot = torch_sum_f32(part, 8);
    }
    torch_sum_f32(&buffer, 8) / n as f32
}

fn torch_sum_f32(x: &[f32], lanes: usize) -> f32 {
    let n = x.len();
    if n < lanes {
        // ATen's `scalar_inner_sum`: the same `row_sum`, over single floats.
        return if lanes == 1 { 0.0 } else { torch_sum_f32(x, 1) };
    }
    let vec_size = n / lanes;
    let vec_at = |i: usize| &x[i * lanes..(i + 1) * lanes];
    // row_sum over vectors with ilp_factor 4.
    const ILP: usize = 4;
    let size_ilp = vec_size / ILP;
    let mut partial = multi_row_sum(|i, k| vec_at(i * ILP + k), size_ilp, lanes);
    for i in size_ilp * ILP..vec_size {
        add(&mut partial[0], vec_at(i));
    }
    for k in 1..ILP {
        let p = partial[k].clone();
        add(&mut partial[0], &p);
    }
    let mut acc = 0.0f32;
    for &v in &x[vec_size * lanes..] {
        acc += v;
    }
    for &p in &partial[0] {
        acc += p;
    }
    acc
}

fn add(acc: &mut [f32], v: &[f32]) {
    for (a, &b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

fn multi_row_sum<'a>(
    load: impl Fn(usize, usize) -> &'a [f32],
    size: usize,
    lanes: usize,
) -> Vec<Vec<f32>> {
    const LEVELS: usize = 4;
    const NROWS: usize = 4;
    let ceil_log2 = if size <= 1 {
        0
    } else {
        (usize::BITS - (size - 1).leading_zeros()) as usize
    };
    let level_power = std::cmp::max(4, ceil_log2 / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let mut acc = vec![vec![vec![0.0f32; lanes]; NROWS]; LEVELS];
    let load_row = |acc: &mut [Vec<f32>], i: usize| {
        for (k, a) in acc.iter_mut().enumerate() {
            add(a, load(i, k));
        }
    };
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            load_row(&mut acc[0], i);
            i += 1;
        }
        for j in 1..LEVELS {
            let (lower, upper) = acc.split_at_mut(j);
            for (hi, lo) in upper[0].iter_mut().zip(lower[j - 1].iter_mut()) {
                add(hi, lo);
                lo.fill(0.0);
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        load_row(&mut acc[0], i);
        i += 1;
    }
    let (first, rest) = acc.split_at_mut(1);
    for level in rest.iter() {
        for (a, v) in first[0].iter_mut().zip(level) {
            add(a, v);
        }
    }
    acc.swap_remove(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_for_own_absmax_are_the_states_codes() {
        let absmax: Vec<f32> = (0..600)
            .map(|i| 0.01 + (i * 37 % 101) as f32 * 1e-4)
            .collect();
        let nested = NestedAbsmax::quantize(&absmax).unwrap();
        assert_eq!(nested.codes_for(&absmax).unwrap(), nested.codes);
        // Beyond a group's range: the end codes; a decoded value stays in range.
        let mut other = absmax.clone();
        other[3] = 10.0;
        other[300] = -10.0;
        let codes = nested.codes_for(&other).unwrap();
        assert_eq!((codes[3], codes[300]), (255, 0));
        assert!(nested.codes_for(&absmax[1..]).is_err());
        assert!(nested.codes_for(&[f32::NAN; 600]).is_err());
    }
}
