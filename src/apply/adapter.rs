//! `apply --strategy adapter`: the residual as a llama.cpp LoRA adapter.
//!
//! The quantized base stays untouched; each 2-D residual tensor αΔ
//! (n_out rows × n_in columns, in the base's row order) is replaced by its
//! best rank-r approximation B·A, found by a randomized, streaming SVD
//! (Halko, Martinsson & Tropp 2011, algorithms 4.4 and 5.1): Y = ΔΩ with a
//! Gaussian Ω of k = r + oversampling columns, q power iterations with
//! re-orthonormalisation, Q = orth(Y), Bᵀ = ΔᵀQ, and the small SVD of B
//! from the eigen-decomposition of B·Bᵀ (k × k, cyclic Jacobi). Every step
//! is a pass over Δ's rows, decoded chunk by chunk; nothing larger than
//! O((n_out + n_in)·k) is held. Sums run in a fixed order, so the adapter
//! does not depend on the thread count.
//!
//! The file is what llama.cpp's `llama_adapter_lora_init_impl` reads:
//! `general.type = "adapter"`, `adapter.type = "lora"`,
//! `adapter.lora.alpha = r` (llama.cpp scales by alpha / r, so the product
//! is applied as is), the base's `general.architecture`, and F32 tensors
//! `<name>.lora_a` (ne = [n_in, r]) and `<name>.lora_b` (ne = [r, n_out]),
//! which `build_lora_mm` applies as `b · (a · x)`. For `token_embd.weight`
//! llama.cpp's `build_inp_embd` takes rows of `lora_a` by token and
//! multiplies by `lora_b` untransposed, so there `lora_a` has
//! ne = [r, n_vocab] and `lora_b` ne = [r, n_embd].

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use crate::engine::chunks::{for_each_chunk, Pages};
use crate::format::gguf::{GgufFile, GgufWriter, MetaValue, TensorSpec, WriterOptions};
use crate::model::rows::RowSource;
use crate::quant::GgmlType;
use crate::{Error, Result};

/// Parameters of the randomized SVD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Rank r of every adapter pair.
    pub rank: usize,
    /// Extra sample columns beyond the rank (k = r + oversampling).
    pub oversampling: usize,
    /// Power iterations Y ← Δ(ΔᵀY); each costs two passes over Δ.
    pub power_iterations: usize,
    /// Seed of the Gaussian test matrices (mixed with the tensor's name).
    pub seed: u64,
}

impl Options {
    /// Defaults for `rank`: 8 extra samples, 2 power iterations.
    pub fn new(rank: usize) -> Options {
        Options {
            rank,
            oversampling: 8,
            power_iterations: 2,
            seed: 0x7172_6573_6964_7561,
        }
    }
}

/// A rank-r factorisation B·A ≈ scale·Δ of one tensor.
#[derive(Debug, Clone)]
pub struct LowRank {
    /// Rows of Δ (output features).
    pub n_out: usize,
    /// Columns of Δ (input features).
    pub n_in: usize,
    /// r: columns of `b`, rows of `a`.
    pub rank: usize,
    /// B = scale · Q·U_r·diag(σ), n_out × r, row-major.
    pub b: Vec<f32>,
    /// A = V_rᵀ, r × n_in, row-major.
    pub a: Vec<f32>,
    /// The r largest singular values found, of Δ (not scaled), descending.
    pub sigma: Vec<f64>,
    /// ‖Δ‖²_F (not scaled).
    pub norm_sq: f64,
}

impl LowRank {
    /// Σσ²: the part of ‖Δ‖² that B·A holds (B·A is an orthogonal
    /// projection of Δ, so the error is exactly ‖Δ‖² − Σσ²).
    pub fn captured_sq(&self) -> f64 {
        self.sigma.iter().map(|s| s * s).sum()
    }

    /// Σσ² / ‖Δ‖² (1 for an all-zero Δ).
    pub fn share(&self) -> f64 {
        if self.norm_sq > 0.0 {
            (self.captured_sq() / self.norm_sq).min(1.0)
        } else {
            1.0
        }
    }
}

/// splitmix64: a tiny, fixed, well-mixed generator; the adapter must not
/// depend on a crate's RNG changing between versions.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 1.0) / (1u64 << 53) as f64
    }

    /// Box–Muller: fills `out` with standard normal samples.
    fn fill_gaussian(&mut self, out: &mut [f64]) {
        for pair in out.chunks_mut(2) {
            let r = (-2.0 * self.uniform().ln()).sqrt();
            let t = std::f64::consts::TAU * self.uniform();
            pair[0] = r * t.cos();
            if pair.len() > 1 {
                pair[1] = r * t.sin();
            }
        }
    }
}

/// FNV-1a of a name, to give each tensor its own test matrix.
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// About this many f32 per decoded chunk of rows.
const CHUNK_ELEMS: usize = 1 << 20;

/// Call `f(start_row, rows)` on consecutive chunks of decoded rows, in
/// row order (decoded in parallel on the engine's scheduler; `f` may use
/// rayon). The adapter reads each residual several times: its pages stay.
fn for_chunks(src: &dyn RowSource, mut f: impl FnMut(usize, &[f32]) -> Result<()>) -> Result<()> {
    for_each_chunk(
        &[src],
        CHUNK_ELEMS,
        Pages::Keep,
        |start, rows| {
            let mut buf = vec![0f32; rows * src.row_len()];
            src.decode(start, &mut buf)?;
            Ok(buf)
        },
        |start, _, rows| f(start, &rows),
    )
}

/// y += d·M (M row-major, d.len() rows of y.len() columns); returns ‖d‖².
fn row_times_scalar(d: &[f32], m: &[f64], y: &mut [f64]) -> f64 {
    let k = y.len();
    let mut s = 0f64;
    for (c, &v) in d.iter().enumerate() {
        let v = v as f64;
        s += v * v;
        if v != 0.0 {
            for (yj, &mj) in y.iter_mut().zip(&m[c * k..(c + 1) * k]) {
                *yj += v * mj;
            }
        }
    }
    s
}

/// z[c, :] += d[c]·q for every c (z row-major, q.len() columns).
fn outer_add_scalar(d: &[f32], q: &[f64], z: &mut [f64]) {
    for (zc, &v) in z.chunks_exact_mut(q.len()).zip(d) {
        if v != 0.0 {
            let v = v as f64;
            for (zj, &qj) in zc.iter_mut().zip(q) {
                *zj += v * qj;
            }
        }
    }
}

/// The same loops compiled for AVX2 (4 f64 lanes instead of SSE2's 2). No
/// FMA: every element is summed in the same order with the same roundings,
/// so the result equals the scalar build's bit for bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn row_times(d: &[f32], m: &[f64], y: &mut [f64]) -> f64 {
        super::row_times_scalar(d, m, y)
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn outer_add(d: &[f32], q: &[f64], z: &mut [f64]) {
        super::outer_add_scalar(d, q, z)
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

fn row_times(d: &[f32], m: &[f64], y: &mut [f64]) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present (checked at run time).
        return unsafe { avx2::row_times(d, m, y) };
    }
    row_times_scalar(d, m, y)
}

fn outer_add(d: &[f32], q: &[f64], z: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present (checked at run time).
        return unsafe { avx2::outer_add(d, q, z) };
    }
    outer_add_scalar(d, q, z)
}

/// One pass: Δ·M (n_out × k) for M (n_in × k), both row-major; also ‖Δ‖².
fn mul_right(src: &dyn RowSource, m: &[f64], k: usize) -> Result<(Vec<f64>, f64)> {
    let (n_out, n_in) = (src.n_rows(), src.row_len());
    let mut y = vec![0f64; n_out * k];
    let mut row_sq = vec![0f64; n_out];
    for_chunks(src, |start, rows| {
        let rows_n = rows.len() / n_in;
        y[start * k..(start + rows_n) * k]
            .par_chunks_mut(k)
            .zip(row_sq[start..start + rows_n].par_iter_mut())
            .zip(rows.par_chunks(n_in))
            .for_each(|((yr, sq), d)| *sq = row_times(d, m, yr));
        Ok(())
    })?;
    Ok((y, row_sq.iter().sum()))
}

/// One pass: Δᵀ·Q (n_in × k) for Q (n_out × k), both row-major. Workers own
/// column blocks of the result, so the sums run in row order.
fn mul_left_t(src: &dyn RowSource, q: &[f64], k: usize) -> Result<Vec<f64>> {
    let n_in = src.row_len();
    let mut z = vec![0f64; n_in * k];
    let block = n_in
        .div_ceil(rayon::current_num_threads().max(1) * 4)
        .max(1);
    for_chunks(src, |start, rows| {
        let rows_n = rows.len() / n_in;
        z.par_chunks_mut(block * k)
            .enumerate()
            .for_each(|(bi, zb)| {
                let c0 = bi * block;
                for i in 0..rows_n {
                    let qi = &q[(start + i) * k..(start + i + 1) * k];
                    let d = &rows[i * n_in + c0..i * n_in + c0 + zb.len() / k];
                    outer_add(d, qi, zb);
                }
            });
        Ok(())
    })?;
    Ok(z)
}

/// Orthonormalise the k columns of the row-major n × k matrix `y` in place
/// (modified Gram–Schmidt, twice). Columns that are (numerically) in the
/// span of the earlier ones become zero: they carry no direction.
pub fn orthonormalize(y: &mut [f64], n: usize, k: usize) {
    // Column-major copy: contiguous columns.
    let mut cols = vec![0f64; n * k];
    for i in 0..n {
        for j in 0..k {
            cols[j * n + i] = y[i * k + j];
        }
    }
    for j in 0..k {
        let (done, rest) = cols.split_at_mut(j * n);
        let cj = &mut rest[..n];
        let norm0 = cj.iter().map(|v| v * v).sum::<f64>().sqrt();
        for _ in 0..2 {
            for l in 0..j {
                let cl = &done[l * n..(l + 1) * n];
                let p: f64 = cl.iter().zip(cj.iter()).map(|(a, b)| a * b).sum();
                if p != 0.0 {
                    for (b, a) in cj.iter_mut().zip(cl) {
                        *b -= p * a;
                    }
                }
            }
        }
        let norm = cj.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 1e-10 * norm0 && norm > 0.0 {
            cj.iter_mut().for_each(|v| *v /= norm);
        } else {
            cj.iter_mut().for_each(|v| *v = 0.0);
        }
    }
    for i in 0..n {
        for j in 0..k {
            y[i * k + j] = cols[j * n + i];
        }
    }
}

/// Eigen-decomposition of the symmetric k × k row-major matrix `a` by the
/// cyclic Jacobi method: eigenvalues in descending order, and the matching
/// eigenvectors as the columns of a row-major k × k matrix.
pub fn symmetric_eigen(a: &[f64], k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut m = a.to_vec();
    let mut v = vec![0f64; k * k];
    for i in 0..k {
        v[i * k + i] = 1.0;
    }
    let total: f64 = m.iter().map(|x| x * x).sum();
    for _sweep in 0..100 {
        let off: f64 = (0..k)
            .flat_map(|i| (0..k).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| m[i * k + j] * m[i * k + j])
            .sum();
        if off <= 1e-30 * total || off == 0.0 {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = m[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * k + p], m[q * k + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // m ← Jᵀ m J with J the rotation in the (p, q) plane.
                for r in 0..k {
                    let (mrp, mrq) = (m[r * k + p], m[r * k + q]);
                    m[r * k + p] = c * mrp - s * mrq;
                    m[r * k + q] = s * mrp + c * mrq;
                }
                for r in 0..k {
                    let (mpr, mqr) = (m[p * k + r], m[q * k + r]);
                    m[p * k + r] = c * mpr - s * mqr;
                    m[q * k + r] = s * mpr + c * mqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..k).collect();
    order.sort_by(|&i, &j| m[j * k + j].total_cmp(&m[i * k + i]));
    let values = order.iter().map(|&i| m[i * k + i]).collect();
    let mut vectors = vec![0f64; k * k];
    for (new, &old) in order.iter().enumerate() {
        for r in 0..k {
            vectors[r * k + new] = v[r * k + old];
        }
    }
    (values, vectors)
}

/// The rank-`opts.rank` factorisation of `scale`·Δ, Δ read from `src`
/// (n_rows × row_len). `name` seeds the test matrix.
pub fn low_rank(src: &dyn RowSource, scale: f32, opts: &Options, name: &str) -> Result<LowRank> {
    let (n_out, n_in) = (src.n_rows(), src.row_len());
    let r = opts.rank;
    if r == 0 || r > n_in.min(n_out) {
        return Err(Error::Usage(format!(
            "{name}: rank {r} must be between 1 and min(n_in, n_out) = {}",
            n_in.min(n_out)
        )));
    }
    let k = (r + opts.oversampling).min(n_in.min(n_out));

    let (q, norm_sq) = range_basis(src, opts, name, k)?;
    // Bᵀ = ΔᵀQ, n_in × k.
    let bt = mul_left_t(src, &q, k)?;
    src.release_rows(0, n_out);

    let (lambda, u) = symmetric_eigen(&gram(&bt, k), k);
    let sigma = significant_sigma(&lambda[..r], lambda[0]);
    let a = right_factor(&bt, &u, &sigma, k, n_in);
    let b = left_factor(&q, &u, &sigma, k, scale as f64);
    Ok(LowRank {
        n_out,
        n_in,
        rank: r,
        b,
        a,
        sigma,
        norm_sq,
    })
}

/// Q (n_out × k, orthonormal columns) spanning Δ's leading range, by a
/// seeded Gaussian test matrix and `opts.power_iterations`; and ‖Δ‖².
fn range_basis(
    src: &dyn RowSource,
    opts: &Options,
    name: &str,
    k: usize,
) -> Result<(Vec<f64>, f64)> {
    let (n_out, n_in) = (src.n_rows(), src.row_len());
    let mut omega = vec![0f64; n_in * k];
    SplitMix(opts.seed ^ name_hash(name)).fill_gaussian(&mut omega);
    let (mut q, norm_sq) = mul_right(src, &omega, k)?;
    drop(omega);
    orthonormalize(&mut q, n_out, k);
    for _ in 0..opts.power_iterations {
        let mut z = mul_left_t(src, &q, k)?;
        orthonormalize(&mut z, n_in, k);
        q = mul_right(src, &z, k)?.0;
        orthonormalize(&mut q, n_out, k);
    }
    Ok((q, norm_sq))
}

/// B·Bᵀ = (Bᵀ)ᵀBᵀ, k × k, from Bᵀ (rows of k).
fn gram(bt: &[f64], k: usize) -> Vec<f64> {
    let mut gram = vec![0f64; k * k];
    for row in bt.chunks_exact(k) {
        for i in 0..k {
            let ri = row[i];
            if ri != 0.0 {
                for j in 0..k {
                    gram[i * k + j] += ri * row[j];
                }
            }
        }
    }
    gram
}

/// σ = √λ of the kept eigenvalues `lambda`, the largest being `largest`.
fn significant_sigma(lambda: &[f64], largest: f64) -> Vec<f64> {
    let smax = largest.max(0.0).sqrt();
    // Components far below the largest (or zero) are numerically noise in
    // the Gram matrix: they are dropped (zero rows of A, zero columns of B).
    lambda
        .iter()
        .map(|&l| {
            let s = l.max(0.0).sqrt();
            if s > 1e-7 * smax {
                s
            } else {
                0.0
            }
        })
        .collect()
}

/// A = V_rᵀ with V_r = Bᵀ U_r / σ, r × n_in.
fn right_factor(bt: &[f64], u: &[f64], sigma: &[f64], k: usize, n_in: usize) -> Vec<f32> {
    let r = sigma.len();
    let mut a = vec![0f32; r * n_in];
    for (c, row) in bt.chunks_exact(k).enumerate() {
        for t in 0..r {
            if sigma[t] > 0.0 {
                let dot: f64 = (0..k).map(|j| row[j] * u[j * k + t]).sum();
                a[t * n_in + c] = (dot / sigma[t]) as f32;
            }
        }
    }
    a
}

/// B = scale · Q U_r diag(σ), n_out × r.
fn left_factor(q: &[f64], u: &[f64], sigma: &[f64], k: usize, scale: f64) -> Vec<f32> {
    let r = sigma.len();
    let mut b = vec![0f32; q.len() / k * r];
    b.par_chunks_mut(r)
        .zip(q.par_chunks(k))
        .for_each(|(br, qr)| {
            for t in 0..r {
                if sigma[t] > 0.0 {
                    let dot: f64 = (0..k).map(|j| qr[j] * u[j * k + t]).sum();
                    br[t] = (scale * dot * sigma[t]) as f32;
                }
            }
        });
    b
}

/// ‖Δ‖² of a source, in one pass.
pub fn norm_sq(src: &dyn RowSource) -> Result<f64> {
    let mut total = 0f64;
    for_chunks(src, |_, rows| {
        total += rows
            .par_chunks(src.row_len().max(1))
            .map(|r| r.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
            .collect::<Vec<_>>()
            .iter()
            .sum::<f64>();
        Ok(())
    })?;
    src.release_rows(0, src.n_rows());
    Ok(total)
}

/// What happened to one residual tensor.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Base tensor name.
    pub name: String,
    /// Base tensor dimensions (ggml order).
    pub ne: Vec<u64>,
    /// ‖αΔ‖².
    pub norm_sq: f64,
    /// The part of ‖αΔ‖² the adapter holds (0 when skipped).
    pub captured_sq: f64,
    /// Why the tensor got no adapter pair, if it did not.
    pub skipped: Option<String>,
}

impl Outcome {
    /// captured / total (1 for a zero residual).
    pub fn share(&self) -> f64 {
        if self.norm_sq > 0.0 {
            self.captured_sq / self.norm_sq
        } else {
            1.0
        }
    }
}

/// How llama.cpp would use an adapter pair for base tensor `index`, or why
/// it cannot.
enum Layout {
    /// `build_lora_mm`: a ne = [n_in, r], b ne = [r, n_out].
    Matmul,
    /// `build_inp_embd`: a ne = [r, n_vocab], b ne = [r, n_embd].
    Embedding,
}

fn layout(base: &GgufFile, index: usize) -> std::result::Result<Layout, String> {
    let t = &base.tensors()[index];
    let two_d = t.ne.len() >= 2 && t.ne[0] > 1 && t.ne[1] > 1 && t.ne[2..].iter().all(|&d| d == 1);
    if !two_d {
        return Err(format!(
            "not a 2-D matrix (ne = {:?}); llama.cpp adapters hold matrices only",
            t.ne
        ));
    }
    if t.name == "per_layer_token_embd.weight" {
        // src/models/gemma4.cpp: loaded lazily and read by row, no adapter.
        return Err(
            "llama.cpp reads per-layer token embeddings (Gemma 3n/4) lazily, row by row, \
             with no adapter; it cannot load a pair for them"
                .into(),
        );
    }
    if t.name == "token_embd.weight" {
        if base.tensor_index("output.weight").is_none() {
            return Err(
                "token_embd.weight is tied to the output (no output.weight): llama.cpp \
                 would apply its adapter pair to the output projection too, with the wrong shape"
                    .into(),
            );
        }
        return Ok(Layout::Embedding);
    }
    Ok(Layout::Matmul)
}

/// The adapter's metadata.
fn metadata(base: &GgufFile, rank: usize, name: Option<&str>) -> Vec<(String, MetaValue)> {
    let s = |v: &str| MetaValue::String(v.to_string());
    let arch = base.architecture().unwrap_or("").to_string();
    let base_name = base
        .get("general.name")
        .and_then(|v| v.as_str())
        .unwrap_or("model")
        .to_string();
    vec![
        ("general.architecture".into(), s(&arch)),
        ("general.type".into(), s("adapter")),
        (
            "general.name".into(),
            s(name.unwrap_or(&format!("{base_name} residual adapter"))),
        ),
        ("adapter.type".into(), s("lora")),
        ("adapter.lora.alpha".into(), MetaValue::F32(rank as f32)),
    ]
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    bytemuck::cast_slice(v)
}

/// Write the adapter of `scale`·residual for `base` to `path` (atomic).
/// `residuals[i]` is the residual of base tensor `i` in its row order
/// (None: no residual or an all-zero one). Returns one outcome per
/// residual tensor, in base order.
pub fn write(
    base: &GgufFile,
    residuals: &[Option<Box<dyn RowSource + '_>>],
    scale: f32,
    opts: &Options,
    path: &Path,
    name: Option<&str>,
    progress: &crate::engine::progress::Progress,
) -> Result<(Vec<Outcome>, Vec<PathBuf>)> {
    let r = opts.rank;
    if r == 0 {
        return Err(Error::Usage("--rank must be at least 1".into()));
    }
    // Decide every tensor's fate before anything is written.
    let plan = plan_layouts(base, residuals, r)?;
    let specs = pair_specs(base, &plan, r)?;
    let mut writer = GgufWriter::create(
        path,
        &metadata(base, r, name),
        &specs,
        &WriterOptions::default(),
    )?;
    let bar = progress.tensors(plan.len(), "adapter");
    let mut outcomes = Vec::with_capacity(plan.len());
    let s2 = (scale as f64) * (scale as f64);
    for (i, lay) in &plan {
        let t = &base.tensors()[*i];
        let src = residuals[*i]
            .as_deref()
            .expect("planned tensors have residuals");
        bar.set_message(&t.name);
        match lay {
            Err(why) => {
                outcomes.push(Outcome {
                    name: t.name.clone(),
                    ne: t.ne.clone(),
                    norm_sq: s2 * norm_sq(src)?,
                    captured_sq: 0.0,
                    skipped: Some(why.clone()),
                });
            }
            Ok(lay) => {
                let lr = low_rank(src, scale, opts, &t.name)?;
                write_pair(&mut writer, lay, &lr)?;
                outcomes.push(Outcome {
                    name: t.name.clone(),
                    ne: t.ne.clone(),
                    norm_sq: s2 * lr.norm_sq,
                    captured_sq: s2 * lr.captured_sq().min(lr.norm_sq),
                    skipped: None,
                });
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let paths = writer.finish()?;
    Ok((outcomes, paths))
}

/// Every base tensor with a residual and its layout (or why it has none),
/// in base order; refuses a rank some residual is too small for.
type LayoutPlan = Vec<(usize, std::result::Result<Layout, String>)>;

fn plan_layouts(
    base: &GgufFile,
    residuals: &[Option<Box<dyn RowSource + '_>>],
    r: usize,
) -> Result<LayoutPlan> {
    let mut plan = Vec::new();
    let mut too_small = Vec::new();
    for (i, res) in residuals.iter().enumerate() {
        let Some(res) = res else { continue };
        let t = &base.tensors()[i];
        let lay = layout(base, i);
        if lay.is_ok() && res.row_len().min(res.n_rows()) < r {
            too_small.push(format!("{} ({} × {})", t.name, res.n_rows(), res.row_len()));
        }
        plan.push((i, lay));
    }
    if !too_small.is_empty() {
        return Err(Error::Usage(format!(
            "--rank {r} exceeds min(n_out, n_in) of {}",
            too_small.join(", ")
        )));
    }
    Ok(plan)
}

/// The `lora_a`/`lora_b` tensors of every planned pair, or why there is
/// nothing to write.
fn pair_specs(base: &GgufFile, plan: &LayoutPlan, r: usize) -> Result<Vec<TensorSpec>> {
    let mut specs = Vec::new();
    for (i, lay) in plan {
        let t = &base.tensors()[*i];
        let (a_ne, b_ne) = match lay {
            Ok(Layout::Matmul) => (vec![t.ne[0], r as u64], vec![r as u64, t.ne[1]]),
            Ok(Layout::Embedding) => (vec![r as u64, t.ne[1]], vec![r as u64, t.ne[0]]),
            Err(_) => continue,
        };
        for (suffix, ne) in [("lora_a", a_ne), ("lora_b", b_ne)] {
            let tensor_name = format!("{}.{suffix}", t.name);
            if tensor_name.len() >= crate::format::gguf::MAX_NAME {
                return Err(Error::tensor(
                    base.path(),
                    &t.name,
                    format!("the adapter tensor name {tensor_name} is too long for GGUF"),
                ));
            }
            specs.push(TensorSpec {
                name: tensor_name,
                ty: GgmlType::F32,
                ne,
            });
        }
    }
    if specs.is_empty() {
        return Err(Error::Usage(if plan.is_empty() {
            "nothing to write: every residual tensor is all zero, or --scale is 0".into()
        } else {
            format!(
                "no residual tensor can become a LoRA pair: {}",
                plan.iter()
                    .filter_map(|(i, l)| l
                        .as_ref()
                        .err()
                        .map(|e| format!("{}: {e}", base.tensors()[*i].name)))
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }));
    }
    Ok(specs)
}

/// `lr` as the pair llama.cpp reads for `lay`.
fn write_pair(writer: &mut GgufWriter, lay: &Layout, lr: &LowRank) -> Result<()> {
    let r = lr.rank;
    match lay {
        Layout::Matmul => {
            writer.write(f32_bytes(&lr.a))?;
            writer.write(f32_bytes(&lr.b))?;
        }
        Layout::Embedding => {
            // lora_a: rows by token = B (n_vocab × r);
            // lora_b: n_embd rows of r = Aᵀ.
            writer.write(f32_bytes(&lr.b))?;
            let mut at = vec![0f32; lr.n_in * r];
            for t in 0..r {
                for c in 0..lr.n_in {
                    at[c * r + t] = lr.a[t * lr.n_in + c];
                }
            }
            writer.write(f32_bytes(&at))?;
        }
    }
    Ok(())
}

/// Totals: (‖αΔ‖², captured).
pub fn totals(outcomes: &[Outcome]) -> (f64, f64) {
    outcomes
        .iter()
        .fold((0.0, 0.0), |(n, c), o| (n + o.norm_sq, c + o.captured_sq))
}

/// The JSON report.
pub fn to_json(inputs: Value, opts: &Options, outcomes: &[Outcome]) -> Value {
    let (total, captured) = totals(outcomes);
    let tensors: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            json!({
                "name": o.name,
                "ne": o.ne,
                "norm_sq": o.norm_sq,
                "captured_sq": o.captured_sq,
                "share": o.share(),
                "skipped": o.skipped,
            })
        })
        .collect();
    json!({
        "command": "apply",
        "strategy": "adapter",
        "inputs": inputs,
        "rank": opts.rank,
        "oversampling": opts.oversampling,
        "power_iterations": opts.power_iterations,
        "summary": {
            "tensors": outcomes.len(),
            "adapter_pairs": outcomes.iter().filter(|o| o.skipped.is_none()).count(),
            "norm_sq": total,
            "captured_sq": captured,
            "share": if total > 0.0 { captured / total } else { 1.0 },
        },
        "tensors": tensors,
    })
}

/// The stderr table: the `worst` tensors by share, skipped ones, total.
pub fn to_text(outcomes: &[Outcome], worst: usize) -> String {
    let (total, captured) = totals(outcomes);
    let mut s = String::new();
    let mut kept: Vec<&Outcome> = outcomes.iter().filter(|o| o.skipped.is_none()).collect();
    kept.sort_by(|a, b| a.share().total_cmp(&b.share()));
    s.push_str(&format!(
        "{:<40} {:>14} {:>10}\n",
        "tensor (lowest share first)", "‖αΔ‖²", "captured"
    ));
    for o in kept.iter().take(worst) {
        s.push_str(&format!(
            "{:<40} {:>14.6e} {:>9.2}%\n",
            o.name,
            o.norm_sq,
            100.0 * o.share()
        ));
    }
    for o in outcomes.iter().filter(|o| o.skipped.is_some()) {
        let share = if total > 0.0 { o.norm_sq / total } else { 0.0 };
        s.push_str(&format!(
            "not captured: {} ({:.2}% of ‖αΔ‖²): {}\n",
            o.name,
            100.0 * share,
            o.skipped.as_deref().unwrap_or("")
        ));
    }
    s.push_str(&format!(
        "adapter holds {:.2}% of ‖αΔ‖² ({} pairs, {} tensors)\n",
        if total > 0.0 {
            100.0 * captured / total
        } else {
            100.0
        },
        kept.len(),
        outcomes.len()
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian(n: usize, seed: u64) -> Vec<f64> {
        let mut v = vec![0f64; n];
        SplitMix(seed).fill_gaussian(&mut v);
        v
    }

    #[test]
    fn orthonormalize_gives_orthonormal_columns_spanning_the_input() {
        let (n, k) = (50, 7);
        let y0 = gaussian(n * k, 1);
        let mut y = y0.clone();
        orthonormalize(&mut y, n, k);
        for i in 0..k {
            for j in 0..k {
                let d: f64 = (0..n).map(|r| y[r * k + i] * y[r * k + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((d - want).abs() < 1e-12, "QᵀQ[{i},{j}] = {d}");
            }
        }
        // Each input column lies in the span: y0 = Q (Qᵀ y0).
        for j in 0..k {
            let c: Vec<f64> = (0..k)
                .map(|l| (0..n).map(|r| y[r * k + l] * y0[r * k + j]).sum())
                .collect();
            for r in 0..n {
                let p: f64 = (0..k).map(|l| y[r * k + l] * c[l]).sum();
                assert!((p - y0[r * k + j]).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn orthonormalize_zeroes_dependent_columns() {
        let (n, k) = (20, 3);
        let mut y = gaussian(n * k, 2);
        for r in 0..n {
            y[r * k + 2] = 2.0 * y[r * k] - 0.5 * y[r * k + 1];
        }
        orthonormalize(&mut y, n, k);
        assert!((0..n).all(|r| y[r * k + 2] == 0.0));
        let n0: f64 = (0..n).map(|r| y[r * k] * y[r * k]).sum();
        assert!((n0 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn jacobi_eigen_reconstructs_and_sorts() {
        let k = 9;
        let g = gaussian(k * k, 3);
        // A = GᵀG: symmetric positive semi-definite.
        let mut a = vec![0f64; k * k];
        for i in 0..k {
            for j in 0..k {
                a[i * k + j] = (0..k).map(|r| g[r * k + i] * g[r * k + j]).sum();
            }
        }
        let (vals, vecs) = symmetric_eigen(&a, k);
        assert!(vals.windows(2).all(|w| w[0] >= w[1]));
        // A v_t = λ_t v_t and VᵀV = I.
        for t in 0..k {
            for i in 0..k {
                let av: f64 = (0..k).map(|j| a[i * k + j] * vecs[j * k + t]).sum();
                assert!((av - vals[t] * vecs[i * k + t]).abs() < 1e-9 * vals[0]);
            }
            for s in 0..k {
                let d: f64 = (0..k).map(|i| vecs[i * k + t] * vecs[i * k + s]).sum();
                assert!((d - if s == t { 1.0 } else { 0.0 }).abs() < 1e-12);
            }
        }
        let trace: f64 = (0..k).map(|i| a[i * k + i]).sum();
        assert!((vals.iter().sum::<f64>() - trace).abs() < 1e-9 * trace);
    }

    #[test]
    fn jacobi_eigen_of_a_known_matrix() {
        // [[2, 1], [1, 2]]: eigenvalues 3 and 1.
        let (vals, vecs) = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((vals[0] - 3.0).abs() < 1e-14 && (vals[1] - 1.0).abs() < 1e-14);
        assert!((vecs[0].abs() - 0.5f64.sqrt()).abs() < 1e-14);
        assert!((vecs[0] - vecs[2]).abs() < 1e-14);
    }

    #[test]
    fn gaussian_samples_have_unit_variance() {
        let v = gaussian(100_000, 4);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / v.len() as f64;
        assert!(
            mean.abs() < 0.02 && (var - 1.0).abs() < 0.02,
            "{mean} {var}"
        );
    }
}
