//! The one pipeline behind every command.
//!
//! Each output tensor is either copied as raw bytes or *transcoded*: rows of
//! f32 are decoded from a source, a scaled residual is optionally added, and
//! the sum is encoded into the output type. Tensors are streamed in row
//! chunks; a window of chunks is encoded in parallel and written in order, so
//! memory is bounded by the chunk size and the thread count, never by the
//! tensor or model size, and the bytes do not depend on the thread count.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rayon::prelude::*;

use crate::gguf::{GgufWriter, TensorSpec};
use crate::naming::RowPermutation;
use crate::quant::stats::ErrorStats;
use crate::quant::{dequantize_row, quantize_row, GgmlType, QuantError};
use crate::{Error, Result};

/// Where the f32 rows of one tensor come from. Implementations decode rows
/// on demand so that no tensor is ever held whole in memory.
pub trait RowSource: Sync {
    /// Elements per row.
    fn row_len(&self) -> usize;
    /// Number of rows.
    fn n_rows(&self) -> usize;
    /// Decode rows `start..start + out.len() / row_len()` into `out`.
    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()>;
    /// Rows `start..end` are consumed: their storage may be released.
    fn release_rows(&self, _start: usize, _end: usize) {}
}

/// Rows of a tensor stored in any ggml-layout encoding (a GGUF tensor, or a
/// safetensors F16/BF16/F32 tensor, whose bytes have the same layout).
#[derive(Clone)]
pub struct EncodedRows<'a> {
    /// The file the bytes come from, for error messages.
    pub path: &'a Path,
    /// The tensor's name in that file.
    pub name: &'a str,
    /// All bytes of the tensor.
    pub data: &'a [u8],
    /// Encoding of `data`.
    pub ty: GgmlType,
    /// Elements per row.
    pub row_len: usize,
    /// Number of rows.
    pub n_rows: usize,
    /// Which stored row lands in each output row.
    pub permutation: RowPermutation,
    /// The mapping behind `data`, to hand consumed pages back to the kernel.
    pub pages: Option<&'a dyn ReleasePages>,
}

/// A memory-mapped container that can drop consumed pages from the
/// resident set (see [`crate::pages`]).
pub trait ReleasePages: Sync {
    /// Drop the whole pages inside `bytes` if they belong to this mapping.
    fn release(&self, bytes: &[u8]);
}

impl EncodedRows<'_> {
    fn row_bytes(&self) -> usize {
        self.ty
            .row_size(self.row_len)
            .expect("validated row length")
    }
}

impl RowSource for EncodedRows<'_> {
    fn row_len(&self) -> usize {
        self.row_len
    }

    fn n_rows(&self) -> usize {
        self.n_rows
    }

    /// Hand rows `start..end` back to the kernel once consumed (all rows at
    /// once when the rows are read out of order).
    fn release_rows(&self, start: usize, end: usize) {
        let Some(pages) = self.pages else { return };
        let rb = self.row_bytes();
        if matches!(self.permutation, RowPermutation::Identity) {
            pages.release(&self.data[start * rb..end * rb]);
        } else if end == self.n_rows {
            pages.release(self.data);
        }
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let rb = self.row_bytes();
        let n = out.len() / self.row_len;
        let err = |row: usize, e: QuantError| Error::quant(self.path, self.name, row, e);
        let identity = matches!(self.permutation, RowPermutation::Identity);
        if identity {
            let bytes = &self.data[start * rb..(start + n) * rb];
            dequantize_row(self.ty, bytes, out).map_err(|e| err(start, e))?;
        } else {
            for (i, dst) in out.chunks_exact_mut(self.row_len).enumerate() {
                let src = self.permutation.source_row(self.n_rows, start + i);
                dequantize_row(self.ty, &self.data[src * rb..(src + 1) * rb], dst)
                    .map_err(|e| err(src, e))?;
            }
        }
        // Name the input holding NaN/Inf, not the output that cannot take it.
        if let Some((i, v)) = qresidual_quant::find_non_finite(out) {
            let row = start + i / self.row_len;
            let row = if identity {
                row
            } else {
                self.permutation.source_row(self.n_rows, row)
            };
            return Err(Error::tensor(
                self.path,
                self.name,
                format!(
                    "row {row}, column {}: holds {v}, which cannot be requantized",
                    i % self.row_len
                ),
            ));
        }
        Ok(())
    }
}

/// How one output tensor is produced.
pub enum Action<'a> {
    /// Write these bytes unchanged.
    Copy(&'a [u8]),
    /// Decode `base`, add `scale · residual`, encode into the output type.
    Transcode {
        /// The tensor being changed.
        base: Box<dyn RowSource + 'a>,
        /// The residual, already in the base's row order and shape.
        residual: Option<Box<dyn RowSource + 'a>>,
        /// α in `base + α·residual`.
        scale: f32,
    },
}

/// One tensor of the output.
pub struct Task<'a> {
    /// Name, type and shape written to the output.
    pub spec: TensorSpec,
    /// The input type, for the report.
    pub input_type: GgmlType,
    /// How the bytes are made.
    pub action: Action<'a>,
}

/// What happened to one tensor.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Tensor name.
    pub name: String,
    /// Input type.
    pub type_in: GgmlType,
    /// Output type.
    pub type_out: GgmlType,
    /// Number of weights.
    pub n_elements: u64,
    /// Whether the bytes were copied unchanged.
    pub copied: bool,
    /// Whether a residual was added.
    pub has_residual: bool,
    /// Output against the exact f32 result (absent for copies).
    pub stats: Option<ErrorStats>,
}

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target number of f32 elements per chunk (rounded to whole rows).
    pub chunk_elements: usize,
    /// Chunks encoded in parallel before they are written.
    pub window: usize,
    /// Whether to decode the output again and measure its error.
    pub measure: bool,
    /// Whether to draw a progress bar on stderr.
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_elements: 1 << 18,
            window: 2 * rayon::current_num_threads().max(1),
            measure: true,
            progress: true,
        }
    }
}

/// Path of the output, for messages about encoding failures.
fn output_error(out: &Path, tensor: &str, row: usize, e: QuantError) -> Error {
    Error::tensor(
        out,
        tensor,
        format!("row {row}: the result cannot be encoded: {e}"),
    )
}

struct Chunk {
    bytes: Vec<u8>,
    stats: ErrorStats,
}

fn encode_chunk(
    task: &Task<'_>,
    out_path: &Path,
    first_row: usize,
    n_rows: usize,
    measure: bool,
) -> Result<Chunk> {
    let Action::Transcode {
        base,
        residual,
        scale,
    } = &task.action
    else {
        unreachable!("copies are not chunked")
    };
    let row_len = base.row_len();
    let n = n_rows * row_len;
    let out_ty = task.spec.ty;
    let out_rb = out_ty.row_size(row_len).expect("validated row length");

    let mut base_rows = vec![0f32; n];
    base.decode(first_row, &mut base_rows)?;
    let mut delta = Vec::new();
    let target: Vec<f32> = match residual {
        Some(r) => {
            delta = vec![0f32; n];
            r.decode(first_row, &mut delta)?;
            if *scale != 1.0 {
                delta.iter_mut().for_each(|d| *d *= *scale);
            }
            base_rows.iter().zip(&delta).map(|(b, d)| b + d).collect()
        }
        None => Vec::new(),
    };
    let exact = if residual.is_some() {
        &target
    } else {
        &base_rows
    };

    let mut bytes = vec![0u8; n_rows * out_rb];
    for (i, (src, dst)) in exact
        .chunks_exact(row_len)
        .zip(bytes.chunks_exact_mut(out_rb))
        .enumerate()
    {
        quantize_row(out_ty, src, dst)
            .map_err(|e| output_error(out_path, &task.spec.name, first_row + i, e))?;
    }

    // Decode what was written: a block whose fp16 scale overflowed decodes
    // to infinity or NaN, which must be an error, never a silent model.
    let decoded_buf;
    let decoded: &[f32] = if out_ty == GgmlType::F32 {
        exact
    } else {
        let mut d = vec![0f32; n];
        dequantize_row(out_ty, &bytes, &mut d)
            .map_err(|e| output_error(out_path, &task.spec.name, first_row, e))?;
        if let Some(i) = d.iter().position(|v| !v.is_finite()) {
            return Err(Error::tensor(
                out_path,
                &task.spec.name,
                format!(
                    "row {}: the value {} cannot be stored as {}: its block scale overflows",
                    first_row + i / row_len,
                    exact[i],
                    out_ty
                ),
            ));
        }
        decoded_buf = d;
        &decoded_buf
    };
    let mut stats = ErrorStats::default();
    if measure {
        if residual.is_some() {
            stats.accumulate_residual(&base_rows, &delta, exact, decoded);
        } else {
            stats.accumulate(exact, decoded);
        }
    }
    Ok(Chunk { bytes, stats })
}

fn progress_bar(total: u64, enabled: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// Run every task in order into `writer`, returning one outcome per task.
/// `out_path` names the output in error messages.
pub fn run(
    tasks: &[Task<'_>],
    writer: &mut GgufWriter,
    out_path: &Path,
    opts: &Options,
) -> Result<Vec<Outcome>> {
    let total: u64 = tasks
        .iter()
        .map(|t| {
            t.spec
                .ty
                .row_size_u64(t.spec.ne.iter().product())
                .unwrap_or(0)
        })
        .sum();
    let pb = progress_bar(total, opts.progress);
    let mut outcomes = Vec::with_capacity(tasks.len());
    for (i, task) in tasks.iter().enumerate() {
        pb.set_message(format!("[{}/{}] {}", i + 1, tasks.len(), task.spec.name));
        let n_elements: u64 = task.spec.ne.iter().product();
        let outcome = match &task.action {
            Action::Copy(bytes) => {
                writer.write(bytes)?;
                pb.inc(bytes.len() as u64);
                Outcome {
                    name: task.spec.name.clone(),
                    type_in: task.input_type,
                    type_out: task.spec.ty,
                    n_elements,
                    copied: true,
                    has_residual: false,
                    stats: None,
                }
            }
            Action::Transcode { base, residual, .. } => {
                let (row_len, n_rows) = (base.row_len(), base.n_rows());
                let rows_per_chunk = (opts.chunk_elements / row_len.max(1)).max(1);
                let chunks: Vec<(usize, usize)> = (0..n_rows)
                    .step_by(rows_per_chunk)
                    .map(|r| (r, rows_per_chunk.min(n_rows - r)))
                    .collect();
                let mut stats = ErrorStats::default();
                for window in chunks.chunks(opts.window.max(1)) {
                    let encoded: Vec<Result<Chunk>> = window
                        .par_iter()
                        .map(|&(r, n)| encode_chunk(task, out_path, r, n, opts.measure))
                        .collect();
                    for chunk in encoded {
                        let chunk = chunk?;
                        writer.write(&chunk.bytes)?;
                        pb.inc(chunk.bytes.len() as u64);
                        stats.merge(&chunk.stats);
                    }
                    let (first, _) = window[0];
                    let (last, n) = window[window.len() - 1];
                    base.release_rows(first, last + n);
                    if let Some(r) = residual {
                        r.release_rows(first, last + n);
                    }
                }
                Outcome {
                    name: task.spec.name.clone(),
                    type_in: task.input_type,
                    type_out: task.spec.ty,
                    n_elements,
                    copied: false,
                    has_residual: residual.is_some(),
                    stats: opts.measure.then_some(stats),
                }
            }
        };
        outcomes.push(outcome);
    }
    pb.finish_and_clear();
    Ok(outcomes)
}

/// A path for messages when a command writes several files.
pub fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
