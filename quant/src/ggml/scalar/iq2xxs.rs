//! IQ2_XXS encoding with an importance matrix: a port of
//! `quantize_row_iq2_xxs_impl` and the grid tables `iq2xs_init_impl` builds
//! for it (`ggml-quants.c`). ggml has no IQ2_XXS encoder without an
//! importance matrix.

// Index loops mirror the C source line by line.
#![allow(clippy::needless_range_loop)]

use std::sync::OnceLock;

use super::common::{f32_to_f16, nearest_int};
use super::search::make_qp_quants;
use super::tables::IQ2XXS_GRID;

const QK_K: usize = 256;
/// `kmap_size` of `iq2xs_init_impl`: indices of 8 two-bit coordinates up
/// to 0xAAAB.
const KMAP_SIZE: usize = 43692;
/// `nwant` for IQ2_XXS: neighbours at the two smallest distances.
const NWANT: usize = 2;
const GROUP_MAX_EPS: f32 = 1e-15;

/// `iq2_data[IQ2_XXS]`: the grid as 8 coordinates `2l + 1`, the map from an
/// 8×2-bit index to its grid point (or `-(offset + 1)` into `neighbours`),
/// and the neighbour lists (`n`, then `n` grid indices).
struct Tables {
    grid: Vec<[i8; 8]>,
    map: Vec<i32>,
    neighbours: Vec<u16>,
}

/// The 2-bit coordinates of grid point `k`, from the decoding grid (whose
/// bytes 0x08, 0x19, 0x2b are the levels 0, 1, 2): `kgrid_2bit_256[k]`.
fn kgrid(k: usize) -> u16 {
    let g = IQ2XXS_GRID[k].to_le_bytes();
    let mut v = 0u16;
    for (i, &b) in g.iter().enumerate() {
        let l = match b {
            0x08 => 0,
            0x19 => 1,
            0x2b => 2,
            _ => 3,
        };
        v |= l << (2 * i);
    }
    v
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        let grid_size = IQ2XXS_GRID.len();
        let mut grid = vec![[0i8; 8]; grid_size];
        let mut map = vec![-1i32; KMAP_SIZE];
        for k in 0..grid_size {
            let kg = kgrid(k);
            for i in 0..8 {
                grid[k][i] = (2 * ((kg >> (2 * i)) & 3) + 1) as i8;
            }
            map[kg as usize] = k as i32;
        }
        let mut neighbours = Vec::new();
        let mut dist2 = vec![(0i32, 0i32); grid_size];
        for i in 0..KMAP_SIZE {
            if map[i] >= 0 {
                continue;
            }
            let mut pos = [0i32; 8];
            for k in 0..8 {
                pos[k] = 2 * ((i as i32 >> (2 * k)) & 3) + 1;
            }
            for (j, d) in dist2.iter_mut().enumerate() {
                let mut d2 = 0;
                for k in 0..8 {
                    let diff = grid[j][k] as i32 - pos[k];
                    d2 += diff * diff;
                }
                *d = (d2, j as i32);
            }
            // qsort with iq2_compare_func: by distance, then index.
            dist2.sort_unstable();
            map[i] = -(neighbours.len() as i32 + 1);
            let start = neighbours.len();
            neighbours.push(0);
            let (mut d2, mut nhave, mut n) = (dist2[0].0, 1, 0u16);
            for &(d, j) in &dist2 {
                if d > d2 {
                    if nhave == NWANT {
                        break;
                    }
                    d2 = d;
                    nhave += 1;
                }
                neighbours.push(j as u16);
                n += 1;
            }
            neighbours[start] = n;
        }
        Tables {
            grid,
            map,
            neighbours,
        }
    })
}

/// `iq2_find_best_neighbour`: the neighbour of least weighted distance to
/// `scale·q`, first one winning ties; writes its levels to `l`.
fn find_best_neighbour(
    t: &Tables,
    list: usize,
    xval: &[f32],
    weight: &[f32],
    scale: f32,
    l: &mut [i8],
) -> usize {
    let n = t.neighbours[list] as usize;
    let mut best_d2 = f32::MAX;
    let mut grid_index = t.neighbours[list + 1] as usize;
    for j in 1..=n {
        let g = t.neighbours[list + j] as usize;
        let pg = &t.grid[g];
        let mut d2 = 0f32;
        for i in 0..8 {
            let q = pg[i] as f32;
            let diff = scale * q - xval[i];
            d2 += weight[i] * diff * diff;
        }
        if d2 < best_d2 {
            best_d2 = d2;
            grid_index = g;
        }
    }
    let pg = &t.grid[grid_index];
    for i in 0..8 {
        l[i] = (pg[i] - 1) / 2;
    }
    grid_index
}

/// The grid point of the 8 levels `l` (each 0..=2), searching the
/// neighbours when they are not on the grid.
#[inline(always)]
fn grid_point(t: &Tables, u: usize, xval: &[f32], w: &[f32], scale: f32, l: &mut [i8]) -> usize {
    let m = t.map[u];
    if m >= 0 {
        m as usize
    } else {
        find_best_neighbour(t, (-m - 1) as usize, xval, w, scale, l)
    }
}

/// `quantize_iq2_xxs` with an importance matrix (`quantize_row_iq2_xxs_impl`):
/// per 32-block, sign flips to make the count of negatives even, a scale
/// from `make_qp_quants` refined over 13 trial scales with the nearest grid
/// points (neighbour search off the grid), 4-bit block scales under an
/// fp16 super-block scale. Where ggml would abort ("point not on grid",
/// unreachable for finite input) the nearest neighbour is used.
// Long because it follows ggml-quants.c `quantize_row_iq2_xxs_impl`
// statement for statement (bit-exactness); kept in one piece so it can be
// compared with the reference line by line.
pub fn quantize_iq2_xxs_weighted(src: &[f32], qw: &[f32], dst: &mut [u8]) {
    const KMAX_Q: i32 = 3;
    let t = tables();
    let mut scales = [0f32; QK_K / 32];
    let mut weight = [0f32; 32];
    let mut xval = [0f32; 32];
    let mut l = [0i8; 32];
    let mut laux = [0i8; 32];
    let mut waux = [0f32; 32];
    let mut block_signs = [0u8; 4];
    let mut q2 = [0u32; 2 * (QK_K / 32)];
    for ((xbl, qbl), y) in src
        .chunks_exact(QK_K)
        .zip(qw.chunks_exact(QK_K))
        .zip(dst.chunks_exact_mut(66))
    {
        y[0..2].copy_from_slice(&f32_to_f16(0.0).to_le_bytes());
        q2.fill(0);
        let mut max_scale = 0f32;
        let mut sumx2 = 0f32;
        for &v in xbl {
            sumx2 += v * v;
        }
        let sigma2 = sumx2 / QK_K as f32;
        for ib in 0..QK_K / 32 {
            let xb = &xbl[32 * ib..32 * ib + 32];
            let q = &qbl[32 * ib..32 * ib + 32];
            for i in 0..32 {
                weight[i] = q[i] * (sigma2 + xb[i] * xb[i]).sqrt();
            }
            for i in 0..32 {
                waux[i] = weight[i].sqrt();
            }
            for k in 0..4 {
                let mut nflip = 0;
                let mut s = 0u8;
                for i in 0..8 {
                    if xb[8 * k + i] >= 0.0 {
                        xval[8 * k + i] = xb[8 * k + i];
                    } else {
                        xval[8 * k + i] = -xb[8 * k + i];
                        nflip += 1;
                        s |= 1 << i;
                    }
                }
                if nflip % 2 != 0 {
                    let mut imin = 0;
                    let mut min = weight[8 * k] * xb[8 * k] * xb[8 * k];
                    for i in 1..8 {
                        let ax = weight[8 * k + i] * xb[8 * k + i] * xb[8 * k + i];
                        if ax < min {
                            min = ax;
                            imin = i;
                        }
                    }
                    xval[8 * k + imin] = -xval[8 * k + imin];
                    s ^= 1 << imin;
                }
                block_signs[k] = s & 127;
            }
            let mut max = xval[0];
            for i in 1..32 {
                max = if max > xval[i] { max } else { xval[i] };
            }
            if max < GROUP_MAX_EPS {
                scales[ib] = 0.0;
                l.fill(0);
                continue;
            }
            let mut lq = [0u8; 32];
            let mut scale = make_qp_quants::<32>(KMAX_Q + 1, &xval, &mut lq, &weight);
            for i in 0..32 {
                l[i] = lq[i] as i8;
            }
            let eff_max = scale * KMAX_Q as f32;
            if eff_max <= 0.0 {
                scales[ib] = 0.0;
                l.fill(0);
                continue;
            }
            let mut best = 0f32;
            for is in -6i32..=6 {
                let id = ((2 * KMAX_Q - 1) as f32 + is as f32 * 0.1f32) / eff_max;
                let this_scale = 1.0 / id;
                for k in 0..4 {
                    for i in 0..8 {
                        let li = nearest_int(0.5f32 * (id * xval[8 * k + i] - 1.0));
                        laux[8 * k + i] = li.clamp(0, KMAX_Q - 1) as i8;
                    }
                    let mut u = 0usize;
                    for i in 0..8 {
                        u |= (laux[8 * k + i] as usize) << (2 * i);
                    }
                    grid_point(
                        t,
                        u,
                        &xval[8 * k..8 * k + 8],
                        &waux[8 * k..8 * k + 8],
                        this_scale,
                        &mut laux[8 * k..8 * k + 8],
                    );
                }
                let (sumqx, sumq2) = fit(&weight, &xval, &laux);
                if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                    scale = sumqx / sumq2;
                    best = scale * sumqx;
                    l = laux;
                }
            }
            if scale > 0.0 {
                let id = 1.0 / scale;
                for k in 0..4 {
                    let mut u = 0usize;
                    for i in 0..8 {
                        let li = nearest_int(0.5f32 * (id * xval[8 * k + i] - 1.0));
                        u |= (li.clamp(0, KMAX_Q - 1) as usize) << (2 * i);
                    }
                    let g = grid_point(
                        t,
                        u,
                        &xval[8 * k..8 * k + 8],
                        &waux[8 * k..8 * k + 8],
                        scale,
                        &mut l[8 * k..8 * k + 8],
                    );
                    let pg = &t.grid[g];
                    for i in 0..8 {
                        l[8 * k + i] = (pg[i] - 1) / 2;
                    }
                }
                let (sumqx, sumq2) = fit(&weight, &xval, &l);
                if sumq2 > 0.0 {
                    scale = sumqx / sumq2;
                }
            }
            if scale < 0.0 {
                scale = -scale;
                for bs in block_signs.iter_mut() {
                    *bs = !*bs & 127;
                }
            }
            for k in 0..4 {
                let mut u = 0usize;
                for i in 0..8 {
                    u |= ((l[8 * k + i] as u8 as usize) & 3) << (2 * i);
                }
                let grid_index = match t.map[u] {
                    m if m >= 0 => m as usize,
                    // ggml aborts here; not reachable for finite input.
                    m => t.neighbours[(-m - 1) as usize + 1] as usize,
                };
                q2[2 * ib] |= (grid_index as u32) << (8 * k);
                q2[2 * ib + 1] |= (block_signs[k] as u32) << (7 * k);
            }
            scales[ib] = scale;
            max_scale = if max_scale > scale { max_scale } else { scale };
        }
        if max_scale == 0.0 {
            y[2..66].fill(0);
            continue;
        }
        let d = max_scale / 31.0;
        y[0..2].copy_from_slice(&f32_to_f16(d).to_le_bytes());
        let id = 1.0 / d;
        for ib in 0..QK_K / 32 {
            let li = nearest_int(0.5f32 * (id * scales[ib] - 1.0)).clamp(0, 15);
            q2[2 * ib + 1] |= (li as u32) << 28;
        }
        for (b, v) in y[2..66].chunks_exact_mut(4).zip(&q2) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// `Σ w·x·q` and `Σ w·q²` over a 32-value group with grid values
/// `q = 2·l + 1`: the weighted least-squares sums ggml's search accepts a
/// scale by.
#[inline(always)]
fn fit(weight: &[f32; 32], xval: &[f32; 32], l: &[i8; 32]) -> (f32, f32) {
    let (mut sumqx, mut sumq2) = (0f32, 0f32);
    for i in 0..32 {
        let w = weight[i];
        let q = (2 * l[i] as i32 + 1) as f32;
        sumqx += w * xval[i] * q;
        sumq2 += w * q * q;
    }
    (sumqx, sumq2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_match_ggml_sizes() {
        let t = tables();
        assert_eq!(t.grid.len(), 256);
        // Every index is on the grid or has at least one neighbour.
        for (i, &m) in t.map.iter().enumerate() {
            if m < 0 {
                let off = (-m - 1) as usize;
                assert!(t.neighbours[off] > 0, "index {i}");
            }
        }
        assert_eq!(kgrid(0), 0);
        assert_eq!(kgrid(1), 2);
    }
}
