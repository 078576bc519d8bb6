//! The signed 8-bit dynamic map and blockwise 8-bit quantization, used by
//! bitsandbytes for double quantization ("nested" absmax) of 4-bit scales.

use super::{check_finite, num_blocks, BnbError};

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

/// The map after bitsandbytes' native CPU `quantize_cpu` has run: it sets
/// `code[0] = -1.0` in place (so the binary search covers [-1, 1]), and the
/// quant state copies the map afterwards, so CPU-quantized checkpoints store
/// this variant.
pub fn dynamic_map_cpu_quantize() -> [f32; 256] {
    let mut m = dynamic_map();
    m[0] = -1.0;
    m
}

/// Blockwise 8-bit quantization against a sorted 256-entry map.
///
/// Port of the native CPU `quantize_cpu` / `quantize_block`
/// (csrc/cpu_ops.cpp, csrc/common.cpp), which bitsandbytes uses for float32
/// input on CPU:
/// - `absmax = fmax` over `|x|` of the block (every block, also a partial one);
/// - `normed = x / absmax` (a division, not a reciprocal);
/// - the largest index `i` with `code[i] <= normed` (the BinSearch result,
///   with `code[0]` forced to -1.0), then `i + 1` only if
///   `|normed - code[i+1]| < |normed - code[i]|` in f32 (ties keep the lower).
///
/// A block whose absmax is 0 makes bitsandbytes divide 0 by 0 and index its
/// search table with a NaN (undefined behaviour in C); here every element
/// of such a block gets the index of the map's 0.0, which dequantizes to 0
/// like any index would.
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
    let mut code = *code;
    code[0] = -1.0;
    let zero_index = code.iter().position(|&c| c == 0.0).unwrap_or(127) as u8;
    let mut out = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(num_blocks(x.len(), blocksize));
    for blk in x.chunks(blocksize) {
        let am = blk.iter().fold(-f32::MAX, |m, v| m.max(v.abs()));
        absmax.push(am);
        for &v in blk {
            if am == 0.0 {
                out.push(zero_index);
                continue;
            }
            let normed = v / am;
            // Largest i with code[i] <= normed; normed >= -1 = code[0].
            let mut idx = code.partition_point(|&c| c <= normed).saturating_sub(1);
            if idx < 255 {
                let dist_left = (normed - code[idx]).abs();
                let dist_right = (normed - code[idx + 1]).abs();
                if dist_right < dist_left {
                    idx += 1;
                }
            }
            out.push(idx as u8);
        }
    }
    Ok((out, absmax))
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
    if absmax.len() != num_blocks(q.len(), blocksize) {
        return Err(BnbError::BadLength {
            what: "absmax",
            expected: num_blocks(q.len(), blocksize),
            got: absmax.len(),
        });
    }
    if out.len() != q.len() {
        return Err(BnbError::BadLength {
            what: "out",
            expected: q.len(),
            got: out.len(),
        });
    }
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
    /// (see [`torch_mean_f32`]), then `quantize_blockwise(absmax - offset,
    /// blocksize=256)` with the dynamic map.
    pub fn quantize(absmax: &[f32]) -> Result<NestedAbsmax, BnbError> {
        check_finite(absmax)?;
        Self::quantize_with_offset(absmax, torch_mean_f32(absmax))
    }

    /// Nests with a given offset (e.g. one read back from a checkpoint).
    pub fn quantize_with_offset(absmax: &[f32], offset: f32) -> Result<NestedAbsmax, BnbError> {
        let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
        let code = dynamic_map_cpu_quantize();
        let (codes, absmax2) = quantize_blockwise(&centred, &code, NESTED_BLOCKSIZE)?;
        Ok(NestedAbsmax {
            codes,
            absmax2,
            offset,
            code,
        })
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
/// `vectorized_inner_sum` → `row_sum` → `multi_row_sum`) for 16-lane
/// (AVX-512) vectors. Torch splits tensors above 32768 elements across
/// threads, so there the last bits depend on the thread count.
pub fn torch_mean_f32(x: &[f32]) -> f32 {
    torch_sum_f32(x, 16) / x.len() as f32
}

fn torch_sum_f32(x: &[f32], lanes: usize) -> f32 {
    let n = x.len();
    if n < lanes {
        return x.iter().fold(0.0f32, |a, &v| a + v);
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
    let mut i = 0;
    while i + level_step <= size {
        for _ in 0..level_step {
            for k in 0..NROWS {
                add(&mut acc[0][k], load(i, k));
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..NROWS {
                let prev = std::mem::replace(&mut acc[j - 1][k], vec![0.0; lanes]);
                add(&mut acc[j][k], &prev);
            }
            let mask = level_mask << (j * level_power);
            if i & mask != 0 {
                break;
            }
        }
    }
    while i < size {
        for k in 0..NROWS {
            add(&mut acc[0][k], load(i, k));
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..NROWS {
            let v = acc[j][k].clone();
            add(&mut acc[0][k], &v);
        }
    }
    acc.swap_remove(0)
}
