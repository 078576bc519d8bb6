//! The one pipeline behind every command.
//!
//! Each output tensor is either copied as raw bytes or *transcoded*: rows of
//! f32 are decoded from a source, a scaled residual is optionally added, and
//! the sum is encoded into the output type. All tensors are cut into row
//! chunks that form one ordered stream on the claimed-chunk
//! [`schedule`](crate::engine::schedule): each worker claims the next
//! chunk as soon as it is free (chunks of all tensors alike, so small or
//! slow tensors leave no core idle) and runs it in passes of a few rows
//! that stay in cache; the writer puts the encoded chunks back in order
//! into a [`TensorSink`], and workers are never more than a window of
//! chunks ahead of it. Input pages are requested ahead (`MADV_WILLNEED`)
//! and consumed ones handed back; the output's writeback starts as it is
//! written. Each worker reuses its f32 buffers and output buffers are
//! recycled, so nothing is allocated per row. Memory is bounded by the
//! chunk size, window and thread count, never by the tensor or model size,
//! and the bytes do not depend on the thread count (chunk boundaries depend
//! only on the row length).

use std::path::{Path, PathBuf};

use crate::engine::sink::TensorSink;
use crate::format::gguf::TensorSpec;
use crate::model::naming::ValueMap;
use crate::model::rows::{add_residual, RowSource};
use crate::quant::stats::ErrorStats;
use crate::quant::{
    dequantize_row, dither_row, has_dither, quantize_row, quantize_row_weighted,
    search_row_decoded, GgmlType, QuantError, SearchWins,
};
use crate::{Error, Result};

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
        /// Importance weights (llama.cpp imatrix) for the output encoder:
        /// one per column, or one `row_len` slice per expert (3-D tensors,
        /// rows of expert `e` use slice `e`). `None`: unweighted.
        importance: Option<&'a [f32]>,
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
    /// Blocks won by each candidate when the tensor was searched
    /// (`Options::search` and the output type equal to the base's).
    pub search: Option<SearchWins>,
    /// Values stored as the float output type's largest finite value
    /// (`Options::saturate`).
    pub saturated: Saturated,
}

/// Values beyond a float output type's range, stored as its largest finite
/// value of the same sign.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Saturated {
    /// How many.
    pub count: u64,
    /// The largest magnitude among them.
    pub largest: f32,
}

impl Saturated {
    fn merge(&mut self, other: &Saturated) {
        self.count += other.count;
        self.largest = self.largest.max(other.largest);
    }
}

/// Knobs of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Target number of f32 elements per chunk (rounded to whole rows).
    pub chunk_elements: usize,
    /// How many chunks the workers may run ahead of the writer (bounds
    /// memory; enough slack that one slow chunk does not idle the others).
    pub window: usize,
    /// Whether to decode the output again and measure its error.
    pub measure: bool,
    /// Where progress goes.
    pub progress: crate::engine::progress::Progress,
    /// `--strategy search`: per block, write the nearest of the base's own
    /// block, the fresh encoding and the base's scales with re-rounded codes
    /// (tensors whose output type is the base's own block type; others are
    /// encoded fresh).
    pub search: bool,
    /// Dithered rounding with this seed: rows with a residual written in
    /// the base's own block type (Q4_0…Q8_0, Q2_K…Q6_K, IQ4_NL, IQ4_XS)
    /// keep the base's scales and round every code up with probability
    /// equal to its fractional distance between its two grid neighbours
    /// ([`qresidual_quant::dither_row`]), so that the output equals the
    /// sum in expectation; the uniforms depend only on (seed, tensor name,
    /// row, element) ([`dither_key`]). Other tensors are written as without
    /// it.
    pub dither: Option<u64>,
    /// F16/BF16 outputs: store values beyond the type's range as its
    /// largest finite value and count them ([`Outcome::saturated`]) instead
    /// of failing.
    pub saturate: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_elements: 1 << 18,
            window: 4 * rayon::current_num_threads().max(1),
            measure: true,
            progress: crate::engine::progress::Progress::stderr(true),
            search: false,
            dither: None,
            saturate: false,
        }
    }
}

/// Whether rows of type `ty` that keep the base's type go through the
/// base's blocks: searched, or dithered where `ty` has a dithered
/// re-rounding (with importance weights and no search, the other types are
/// encoded with the weights).
fn searches(opts: &Options, ty: GgmlType) -> bool {
    opts.search || (opts.dither.is_some() && has_dither(ty))
}

/// The key of row `row` of tensor `name` for dithered rounding with `seed`
/// (FNV-1a of the name, mixed with the seed and the row): the same row
/// draws the same uniforms whatever the chunking or thread count.
pub fn dither_key(seed: u64, name: &str, row: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = seed ^ h.rotate_left(17) ^ row.wrapping_mul(0xd6e8_feb8_6659_fd93);
    z = (z ^ (z >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    z ^ (z >> 32)
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
    wins: Option<SearchWins>,
    saturated: Saturated,
}

/// The f32 buffers one worker reuses from chunk to chunk: nothing is
/// allocated per row, and per chunk only when a chunk is larger than any
/// before it on that thread.
#[derive(Default)]
struct Scratch {
    base: Vec<f32>,
    delta: Vec<f32>,
    target: Vec<f32>,
    decoded: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Output byte buffers handed back by the writer for the workers to reuse.
#[derive(Default)]
struct BytePool(std::sync::Mutex<Vec<Vec<u8>>>);

impl BytePool {
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        v.clear();
        v.resize(len, 0);
        v
    }

    fn give(&self, v: Vec<u8>) {
        if let Ok(mut p) = self.0.lock() {
            if p.len() < 64 {
                p.push(v);
            }
        }
    }
}

/// `v` resized to `n` without caring about its old contents.
fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

fn encode_chunk(
    task: &Task<'_>,
    out_path: &Path,
    first_row: usize,
    n_rows: usize,
    opts: &Options,
    pool: &BytePool,
) -> Result<Chunk> {
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        encode_chunk_with(&mut s, task, out_path, first_row, n_rows, opts, pool)
    })
}

/// The base's bytes to search against: only when searching, the base is
/// stored in the output type itself (a block type with blocks to choose
/// between) and in output row order.
fn search_source(base: &dyn RowSource, out_ty: GgmlType, search: bool) -> Option<&[u8]> {
    if !search || out_ty.block_size() == 1 {
        return None;
    }
    base.encoded()
        .filter(|(ty, _)| *ty == out_ty)
        .map(|(_, bytes)| bytes)
}

/// Elements handled per pass inside a chunk: every stage (decode, add,
/// encode, decode again, measure) runs over these rows before the next
/// ones are read, so its four f32 buffers (16 KiB each) stay in the core's
/// L1/L2 caches instead of streaming each stage through memory.
const PASS_ELEMENTS: usize = 1 << 12;

fn encode_chunk_with(
    s: &mut Scratch,
    task: &Task<'_>,
    out_path: &Path,
    first_row: usize,
    n_rows: usize,
    opts: &Options,
    pool: &BytePool,
) -> Result<Chunk> {
    let Action::Transcode { base, .. } = &task.action else {
        unreachable!("copies are not chunked")
    };
    let row_len = base.row_len();
    let out_rb = task
        .spec
        .ty
        .row_size(row_len)
        .expect("validated row length");
    let per_pass = (PASS_ELEMENTS / row_len.max(1)).max(1);
    let mut chunk = Chunk {
        bytes: pool.take(n_rows * out_rb),
        stats: ErrorStats::default(),
        wins: search_source(base.as_ref(), task.spec.ty, searches(opts, task.spec.ty))
            .map(|_| SearchWins::default()),
        saturated: Saturated::default(),
    };
    let mut r = 0;
    while r < n_rows {
        let n = per_pass.min(n_rows - r);
        encode_rows(
            s,
            task,
            out_path,
            first_row + r,
            n,
            opts,
            r * out_rb,
            &mut chunk,
        )?;
        r += n;
    }
    Ok(chunk)
}

/// Rows `first_row..first_row + n_rows` of the task into `chunk.bytes` at
/// byte `offset`, their statistics and search wins into `chunk`.
///
/// Long on purpose: this is the hot path, and its stages (decode, encode,
/// measure, check) share the split borrows of one `Scratch`; helpers would
/// have to thread those borrows through and could cost the row loop its
/// inlining. Change it only with `cargo bench` numbers before and after.
#[allow(clippy::too_many_arguments)]
fn encode_rows(
    s: &mut Scratch,
    task: &Task<'_>,
    out_path: &Path,
    first_row: usize,
    n_rows: usize,
    opts: &Options,
    offset: usize,
    chunk: &mut Chunk,
) -> Result<()> {
    let measure = opts.measure;
    let Action::Transcode {
        base,
        residual,
        scale,
        importance,
    } = &task.action
    else {
        unreachable!("copies are not chunked")
    };
    let row_len = base.row_len();
    let n = n_rows * row_len;
    let out_ty = task.spec.ty;
    let out_rb = out_ty.row_size(row_len).expect("validated row length");
    let Scratch {
        base: base_buf,
        delta: delta_buf,
        target: target_buf,
        decoded: decoded_buf,
    } = s;

    let base_rows = sized(base_buf, n);
    base.decode(first_row, base_rows)?;
    let base_rows = &*base_rows;
    let (delta, exact): (&[f32], &[f32]) = match residual {
        Some(r) => {
            let delta = sized(delta_buf, n);
            r.decode(first_row, delta)?;
            if *scale != 1.0 {
                delta.iter_mut().for_each(|d| *d *= *scale);
            }
            let target = sized(target_buf, n);
            add_residual(r.value_map(), base_rows, delta, target);
            if let Some(map) = r.value_map() {
                let at = (first_row, row_len);
                outside_map(map, base_rows, target, (out_path, &task.spec.name), at)?;
            }
            (&*delta, &*target)
        }
        None => (&[], base_rows),
    };

    let bytes = &mut chunk.bytes[offset..offset + n_rows * out_rb];
    let searched = search_source(base.as_ref(), out_ty, searches(opts, out_ty));
    // Dithered rows are written whole (no per-block choice) and decoded below.
    let dither = opts
        .dither
        .filter(|_| searched.is_some() && residual.is_some() && has_dither(out_ty));
    let mut wins = SearchWins::default();
    // The search decodes what it writes as it goes.
    let decoded_buf = sized(decoded_buf, n);
    for (i, ((src, dst), dec)) in exact
        .chunks_exact(row_len)
        .zip(bytes.chunks_exact_mut(out_rb))
        .zip(decoded_buf.chunks_exact_mut(row_len))
        .enumerate()
    {
        // `apply` refuses --strategy search together with --imatrix.
        match (searched, importance, dither) {
            (Some(b), _, Some(seed)) => {
                let row = &b[(first_row + i) * out_rb..][..out_rb];
                let key = dither_key(seed, &task.spec.name, (first_row + i) as u64);
                wins.rerounded += (row_len / out_ty.block_size()) as u64;
                dither_row(out_ty, row, src, dst, key)
            }
            (Some(b), _, None) => {
                let row = &b[(first_row + i) * out_rb..][..out_rb];
                search_row_decoded(out_ty, row, src, dst, dec, &mut wins)
            }
            (None, Some(w), _) => {
                // One slice per expert: rows are expert-major.
                let per_expert = base.n_rows() / (w.len() / row_len).max(1);
                let e = (first_row + i) / per_expert.max(1);
                let w = w.get(e * row_len..(e + 1) * row_len).unwrap_or(&[]);
                quantize_row_weighted(out_ty, src, w, dst)
            }
            (None, None, _) => quantize_row(out_ty, src, dst),
        }
        .map_err(|e| output_error(out_path, &task.spec.name, first_row + i, e))?;
    }
    if let Some(w) = chunk.wins.as_mut() {
        w.merge(&wins);
    }
    if opts.saturate {
        saturate(out_ty, exact, bytes, &mut chunk.saturated);
    }

    let decoded: &[f32] = if out_ty == GgmlType::F32 {
        exact
    } else {
        if searched.is_none() || dither.is_some() {
            dequantize_row(out_ty, bytes, decoded_buf)
                .map_err(|e| output_error(out_path, &task.spec.name, first_row, e))?;
        }
        decoded_buf
    };
    let mut stats = ErrorStats::default();
    if measure {
        if residual.is_some() {
            stats.accumulate_residual(base_rows, delta, exact, decoded);
        } else {
            stats.accumulate(exact, decoded);
        }
        chunk.stats.merge(&stats);
    }
    // Decode what was written: a block whose fp16 scale overflowed decodes
    // to infinity or NaN, which must be an error, never a silent model.
    // The statistics' sum of squares already tells whether there is one.
    let suspect = if measure {
        !stats.output_is_finite()
    } else {
        out_ty != GgmlType::F32
    };
    if let Some((i, _)) = suspect
        .then(|| qresidual_quant::find_non_finite(decoded))
        .flatten()
    {
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
    Ok(())
}

/// A residual added through `map` ([`RowSource::value_map`]) to a base
/// value `map` cannot have produced (a positive `ssm_a` for `−exp`) gives
/// NaN: an error naming the tensor, row and value.
fn outside_map(
    map: ValueMap,
    base: &[f32],
    target: &[f32],
    (path, name): (&Path, &str),
    (first_row, row_len): (usize, usize),
) -> Result<()> {
    let Some(i) = target.iter().position(|t| !t.is_finite()) else {
        return Ok(());
    };
    Err(Error::tensor(
        path,
        name,
        format!(
            "row {}, column {}: the base value {} is not one llama.cpp's converter writes (it stores {} of the checkpoint's value), so the residual cannot be added before that function",
            first_row + i / row_len.max(1),
            i % row_len.max(1),
            base[i],
            map.describe()
        ),
    ))
}

/// Replace the infinities that F16/BF16 `bytes` got for the finite values
/// `exact` by the type's largest finite value of the same sign, counting
/// them.
fn saturate(ty: GgmlType, exact: &[f32], bytes: &mut [u8], seen: &mut Saturated) {
    let (inf, max) = match ty {
        GgmlType::F16 => (0x7c00u16, half::f16::MAX.to_bits()),
        GgmlType::BF16 => (0x7f80u16, half::bf16::MAX.to_bits()),
        _ => return,
    };
    for (b, &v) in bytes.chunks_exact_mut(2).zip(exact) {
        let h = u16::from_le_bytes([b[0], b[1]]);
        if h & 0x7fff == inf && v.is_finite() {
            seen.count += 1;
            seen.largest = seen.largest.max(v.abs());
            b.copy_from_slice(&(max | (h & 0x8000)).to_le_bytes());
        }
    }
}

/// One unit of output, in file order: a whole copied tensor or one chunk
/// of rows of a transcoded one.
#[derive(Clone, Copy)]
enum Item {
    Copy {
        task: usize,
    },
    Rows {
        task: usize,
        first: usize,
        n: usize,
        last: bool,
    },
}

impl Item {
    fn task(&self) -> usize {
        match *self {
            Item::Copy { task } | Item::Rows { task, .. } => task,
        }
    }
}

/// Every tensor's chunks in output order. Chunk boundaries depend only on
/// the row length and `chunk_elements`, never on the thread count, so the
/// output bytes and the merged statistics do not either.
fn plan_items(tasks: &[Task<'_>], chunk_elements: usize) -> Vec<Item> {
    let mut items = Vec::new();
    for (t, task) in tasks.iter().enumerate() {
        match &task.action {
            Action::Copy(_) => items.push(Item::Copy { task: t }),
            Action::Transcode { base, .. } => {
                let (row_len, n_rows) = (base.row_len(), base.n_rows());
                let per = (chunk_elements / row_len.max(1)).max(1);
                let mut r = 0;
                while r < n_rows {
                    let n = per.min(n_rows - r);
                    items.push(Item::Rows {
                        task: t,
                        first: r,
                        n,
                        last: r + n == n_rows,
                    });
                    r += n;
                }
                if n_rows == 0 {
                    items.push(Item::Rows {
                        task: t,
                        first: 0,
                        n: 0,
                        last: true,
                    });
                }
            }
        }
    }
    items
}

/// Run every task in order into `sink`, returning one outcome per task.
/// `out_path` names the output in error messages.
///
/// The tensors' row chunks go through the claimed-chunk
/// [`schedule`](crate::engine::schedule): workers decode, add and encode
/// them at most `opts.window` chunks ahead of the writer, which puts them
/// back in output order (with the copied tensors between them); input
/// pages are requested ahead of the workers (`MADV_WILLNEED`) and consumed
/// ones handed back.
pub fn run(
    tasks: &[Task<'_>],
    sink: &mut dyn TensorSink,
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
    let pb = opts.progress.bytes(total);
    let items = plan_items(tasks, opts.chunk_elements);
    // The row chunks, the units of work, by their position in `items`.
    let work: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, it)| matches!(it, Item::Rows { .. }))
        .map(|(i, _)| i)
        .collect();
    let ahead = opts.window.max(1);
    let pool = BytePool::default();
    // Keep the kernel reading one window ahead of what workers may claim.
    for k in 0..2 * ahead {
        prefetch(tasks, &items, &work, k);
    }
    let mut out = InOrder {
        tasks,
        items: &items,
        sink,
        pb: &pb,
        measure: opts.measure,
        next: 0,
        stats: ErrorStats::default(),
        searched: None,
        saturated: Saturated::default(),
        outcomes: Vec::with_capacity(tasks.len()),
    };
    crate::engine::schedule::in_order(
        work.len(),
        ahead,
        |k| {
            let Item::Rows { task, first, n, .. } = items[work[k]] else {
                unreachable!("work holds row chunks only")
            };
            encode_chunk(&tasks[task], out_path, first, n, opts, &pool)
        },
        |k, chunk| {
            out.rows(work[k], &chunk)?;
            pool.give(chunk.bytes);
            prefetch(tasks, &items, &work, k + 2 * ahead);
            Ok(())
        },
    )?;
    out.copies_until(items.len())?;
    pb.finish_and_clear();
    Ok(out.outcomes)
}

/// Ask the kernel for the input pages of row chunk `k` (if there is one).
fn prefetch(tasks: &[Task<'_>], items: &[Item], work: &[usize], k: usize) {
    let Some(&i) = work.get(k) else { return };
    if let (Item::Rows { first, n, .. }, Action::Transcode { base, residual, .. }) =
        (items[i], &tasks[items[i].task()].action)
    {
        base.prefetch_rows(first, first + n);
        if let Some(r) = residual {
            r.prefetch_rows(first, first + n);
        }
    }
}

/// The writer side of [`run`]: writes the copied tensors and the encoded
/// chunks in output order, merges statistics per tensor and hands consumed
/// input pages back.
struct InOrder<'a, 't> {
    tasks: &'a [Task<'t>],
    items: &'a [Item],
    sink: &'a mut dyn TensorSink,
    pb: &'a crate::engine::progress::Bar,
    measure: bool,
    /// The first item not written yet.
    next: usize,
    /// The current tensor's statistics and search wins so far.
    stats: ErrorStats,
    searched: Option<SearchWins>,
    saturated: Saturated,
    outcomes: Vec<Outcome>,
}

impl InOrder<'_, '_> {
    /// Write the copied tensors before item `end`.
    fn copies_until(&mut self, end: usize) -> Result<()> {
        while self.next < end {
            let (Item::Copy { task }, Action::Copy(bytes)) = (
                self.items[self.next],
                &self.tasks[self.items[self.next].task()].action,
            ) else {
                unreachable!("row chunks come through the scheduler")
            };
            let task = &self.tasks[task];
            self.pb.set_message(&task.spec.name);
            self.sink.begin_tensor(&task.spec.name)?;
            self.sink.write(bytes)?;
            self.sink.end_tensor()?;
            self.pb.inc(bytes.len() as u64);
            self.outcomes.push(Outcome {
                name: task.spec.name.clone(),
                type_in: task.input_type,
                type_out: task.spec.ty,
                n_elements: task.spec.ne.iter().product(),
                copied: true,
                has_residual: false,
                stats: None,
                search: None,
                saturated: Saturated::default(),
            });
            self.next += 1;
        }
        Ok(())
    }

    /// Write item `i`, a chunk of rows, after the copies before it.
    fn rows(&mut self, i: usize, chunk: &Chunk) -> Result<()> {
        self.copies_until(i)?;
        let (Item::Rows { first, n, last, .. }, task) =
            (self.items[i], &self.tasks[self.items[i].task()])
        else {
            unreachable!("work holds row chunks only")
        };
        let Action::Transcode { base, residual, .. } = &task.action else {
            unreachable!("items follow their task's action")
        };
        if first == 0 {
            self.pb.set_message(&task.spec.name);
            self.sink.begin_tensor(&task.spec.name)?;
            self.stats = ErrorStats::default();
            self.searched = None;
            self.saturated = Saturated::default();
        }
        self.sink.write(&chunk.bytes)?;
        self.pb.inc(chunk.bytes.len() as u64);
        self.stats.merge(&chunk.stats);
        self.saturated.merge(&chunk.saturated);
        if let Some(w) = &chunk.wins {
            self.searched
                .get_or_insert_with(SearchWins::default)
                .merge(w);
        }
        base.release_rows(first, first + n);
        if let Some(r) = residual {
            r.release_rows(first, first + n);
        }
        if last {
            self.sink.end_tensor()?;
            self.outcomes.push(Outcome {
                name: task.spec.name.clone(),
                type_in: task.input_type,
                type_out: task.spec.ty,
                n_elements: task.spec.ne.iter().product(),
                copied: false,
                has_residual: residual.is_some(),
                stats: self.measure.then(|| std::mem::take(&mut self.stats)),
                search: self.searched.take(),
                saturated: std::mem::take(&mut self.saturated),
            });
        }
        self.next = i + 1;
        Ok(())
    }
}

/// A path for messages when a command writes several files.
pub fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::gguf::{GgufWriter, WriterOptions};
    use crate::model::naming::RowPermutation;
    use crate::model::rows::EncodedRows;

    /// Rows held in memory.
    struct VecRows {
        data: Vec<f32>,
        row_len: usize,
    }

    impl RowSource for VecRows {
        fn row_len(&self) -> usize {
            self.row_len
        }
        fn n_rows(&self) -> usize {
            self.data.len() / self.row_len
        }
        fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
            out.copy_from_slice(&self.data[start * self.row_len..][..out.len()]);
            Ok(())
        }
    }

    fn values(seed: u32, n: usize) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32 - 0.5) * 0.1
            })
            .collect()
    }

    fn tasks(copy: &[u8]) -> Vec<Task<'_>> {
        let rows = |seed, row_len, n_rows| -> Box<dyn RowSource> {
            Box::new(VecRows {
                data: values(seed, row_len * n_rows),
                row_len,
            })
        };
        let spec = |name: &str, ty, ne: Vec<u64>| TensorSpec {
            name: name.into(),
            ty,
            ne,
        };
        vec![
            Task {
                spec: spec("a", GgmlType::Q4_K, vec![512, 37]),
                input_type: GgmlType::F32,
                action: Action::Transcode {
                    base: rows(1, 512, 37),
                    residual: Some(rows(2, 512, 37)),
                    scale: 0.5,
                    importance: None,
                },
            },
            Task {
                spec: spec("copied", GgmlType::F32, vec![8]),
                input_type: GgmlType::F32,
                action: Action::Copy(copy),
            },
            Task {
                spec: spec("norm", GgmlType::F32, vec![256]),
                input_type: GgmlType::F32,
                action: Action::Transcode {
                    base: rows(3, 256, 1),
                    residual: None,
                    scale: 1.0,
                    importance: None,
                },
            },
            Task {
                spec: spec("b", GgmlType::F16, vec![64, 300]),
                input_type: GgmlType::F32,
                action: Action::Transcode {
                    base: rows(4, 64, 300),
                    residual: Some(rows(5, 64, 300)),
                    scale: 1.0,
                    importance: None,
                },
            },
        ]
    }

    /// Output bytes and outcomes with `threads` workers and `window` chunks
    /// per window.
    fn run_with(threads: usize, window: usize) -> (Vec<u8>, String) {
        let copy: Vec<u8> = (0..32u8).collect();
        let tasks = tasks(&copy);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let specs: Vec<TensorSpec> = tasks.iter().map(|t| t.spec.clone()).collect();
        let opts = Options {
            chunk_elements: 2048,
            window,
            measure: true,
            progress: crate::engine::progress::Progress::off(),
            search: false,
            dither: None,
            saturate: false,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let outcomes = pool.install(|| {
            let mut w = GgufWriter::create(&path, &[], &specs, &WriterOptions::default()).unwrap();
            let o = run(&tasks, &mut w, &path, &opts).unwrap();
            w.finish().unwrap();
            o
        });
        (std::fs::read(&path).unwrap(), format!("{outcomes:?}"))
    }

    #[test]
    fn output_does_not_depend_on_threads_or_window() {
        let (bytes, outcomes) = run_with(1, 1);
        assert!(outcomes.contains("copied: true"));
        for (threads, window) in [(1, 4), (2, 1), (3, 3), (4, 16)] {
            let (b, o) = run_with(threads, window);
            assert!(
                b == bytes,
                "bytes differ with {threads} threads, window {window}"
            );
            assert_eq!(
                o, outcomes,
                "outcomes differ with {threads} threads, window {window}"
            );
        }
    }

    /// A Q4_0 base searched against base + residual: the wins cover every
    /// block, the bytes do not depend on threads or window, and a zero
    /// residual leaves the base bytes.
    #[test]
    fn search_counts_every_block_and_keeps_an_untouched_base() {
        let (row_len, n_rows) = (256, 40);
        let mut base_bytes = vec![0u8; GgmlType::Q4_0.row_size(row_len * n_rows).unwrap()];
        quantize_row(
            GgmlType::Q4_0,
            &values(9, row_len * n_rows),
            &mut base_bytes,
        )
        .unwrap();
        let run_search = |residual: Vec<f32>, threads: usize, window: usize| {
            let base = EncodedRows {
                path: Path::new("base.gguf"),
                name: "w",
                data: &base_bytes,
                ty: GgmlType::Q4_0,
                row_len,
                n_rows,
                permutation: RowPermutation::Identity,
                pages: None,
            };
            let action = Action::Transcode {
                base: Box::new(base),
                residual: Some(Box::new(VecRows {
                    data: residual,
                    row_len,
                })),
                scale: 1.0,
                importance: None,
            };
            let opts = Options {
                chunk_elements: 2048,
                window,
                measure: true,
                progress: crate::engine::progress::Progress::off(),
                search: true,
                dither: None,
                saturate: false,
            };
            let shape = (GgmlType::Q4_0, row_len, n_rows);
            let (o, data) = run_one(GgmlType::Q4_0, shape, action, &opts, threads);
            (data.unwrap(), o.unwrap()[0].search.unwrap())
        };
        let small: Vec<f32> = values(10, row_len * n_rows)
            .iter()
            .map(|v| v * 0.05)
            .collect();
        let (bytes, wins) = run_search(small.clone(), 1, 1);
        assert_eq!(wins.total(), (row_len * n_rows / 32) as u64);
        assert!(bytes != base_bytes);
        for (threads, window) in [(2, 1), (3, 4)] {
            assert_eq!(
                run_search(small.clone(), threads, window),
                (bytes.clone(), wins)
            );
        }
        let (bytes, wins) = run_search(vec![0.0; row_len * n_rows], 2, 2);
        assert!(bytes == base_bytes, "a zero residual changed the base");
        assert_eq!(wins.total(), (row_len * n_rows / 32) as u64);
    }

    /// Dithered rounding on a Q5_0 base with a residual far below half a
    /// step: the bytes depend on the seed only, not on threads, window or
    /// chunk size; the residual survives (retention near 1, where the
    /// nearest search keeps little of it); a zero residual leaves the base.
    #[test]
    fn dithered_rows_depend_on_the_seed_alone_and_keep_the_residual() {
        let (row_len, n_rows) = (640, 48);
        let ty = GgmlType::Q5_0;
        let mut base_bytes = vec![0u8; ty.row_size(row_len * n_rows).unwrap()];
        quantize_row(ty, &values(21, row_len * n_rows), &mut base_bytes).unwrap();
        let run_dither = |residual: Vec<f32>, dither: Option<u64>, chunk: usize, threads: usize| {
            let base = EncodedRows {
                path: Path::new("base.gguf"),
                name: "w",
                data: &base_bytes,
                ty,
                row_len,
                n_rows,
                permutation: RowPermutation::Identity,
                pages: None,
            };
            let action = Action::Transcode {
                base: Box::new(base),
                residual: Some(Box::new(VecRows {
                    data: residual,
                    row_len,
                })),
                scale: 1.0,
                importance: None,
            };
            let opts = Options {
                chunk_elements: chunk,
                window: 2,
                measure: true,
                progress: crate::engine::progress::Progress::off(),
                search: true,
                dither,
                saturate: false,
            };
            let (o, data) = run_one(ty, (ty, row_len, n_rows), action, &opts, threads);
            let o = o.unwrap();
            (
                data.unwrap(),
                o[0].stats.unwrap().retention().unwrap_or(0.0),
            )
        };
        // Values are ±0.05, a Q5_0 step about 0.05/16: Δ at 0.4 % of the RMS.
        let small: Vec<f32> = values(22, row_len * n_rows)
            .iter()
            .map(|v| v * 0.004)
            .collect();
        let (bytes, kept) = run_dither(small.clone(), Some(7), 2048, 1);
        for (chunk, threads) in [(640, 2), (5000, 3), (1 << 20, 2)] {
            assert!(
                run_dither(small.clone(), Some(7), chunk, threads).0 == bytes,
                "chunk {chunk}, {threads} threads"
            );
        }
        assert!(run_dither(small.clone(), Some(8), 2048, 1).0 != bytes);
        let (_, nearest) = run_dither(small.clone(), None, 2048, 1);
        assert!(kept > 0.8 && kept < 1.2, "dithered retention {kept}");
        assert!(nearest < 0.3, "nearest retention {nearest}");
        let (zero, _) = run_dither(vec![0.0; row_len * n_rows], Some(7), 2048, 2);
        assert!(zero == base_bytes, "a zero residual changed the base");
    }

    #[test]
    fn chunks_cover_every_row_once_in_order() {
        let copy = [0u8; 32];
        let t = tasks(&copy);
        let items = plan_items(&t, 2048);
        let mut next = vec![0usize; t.len()];
        for it in &items {
            if let Item::Rows {
                task,
                first,
                n,
                last,
            } = *it
            {
                assert_eq!(first, next[task]);
                next[task] += n;
                let Action::Transcode { base, .. } = &t[task].action else {
                    panic!()
                };
                assert_eq!(last, next[task] == base.n_rows());
            }
        }
        assert_eq!(next, vec![37, 0, 1, 300]);
    }

    /// One tensor `w` of `shape = (type, row_len, n_rows)` from `action`
    /// (input type `input_type`) through [`run`] with `threads` workers:
    /// the result and, when it succeeded, the tensor's bytes as written. A
    /// failed run must leave nothing in its directory.
    fn run_one(
        input_type: GgmlType,
        shape: (GgmlType, usize, usize),
        action: Action<'_>,
        opts: &Options,
        threads: usize,
    ) -> (Result<Vec<Outcome>>, Option<Vec<u8>>) {
        let (ty, row_len, n_rows) = shape;
        let spec = TensorSpec {
            name: "w".into(),
            ty,
            ne: vec![row_len as u64, n_rows as u64],
        };
        let tasks = vec![Task {
            spec: spec.clone(),
            input_type,
            action,
        }];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.gguf");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let res = pool.install(|| {
            let mut w = GgufWriter::create(&path, &[], &[spec], &WriterOptions::default()).unwrap();
            let o = run(&tasks, &mut w, &path, opts)?;
            w.finish()?;
            Ok(o)
        });
        if res.is_err() {
            let left = std::fs::read_dir(dir.path()).unwrap().count();
            assert_eq!(left, 0, "a failed run left files behind");
            return (res, None);
        }
        let f = crate::format::gguf::GgufFile::open(&path).unwrap();
        let data = f.tensor_data(0).to_vec();
        (res, Some(data))
    }

    /// `Options::saturate`: F16/BF16 values beyond the range are stored as
    /// the largest finite value of their sign and counted; without it they
    /// are an error.
    #[test]
    fn saturation_keeps_the_sign_and_counts_what_overflowed() {
        let data = vec![1.0, 70000.0, -1e6, 0.5, 3.4e38, -2.0, 0.0, 1e-3];
        for (ty, max) in [
            (GgmlType::F16, half::f16::MAX.to_f32()),
            (GgmlType::BF16, half::bf16::MAX.to_f32()),
        ] {
            let action = || Action::Transcode {
                base: Box::new(VecRows {
                    data: data.clone(),
                    row_len: 4,
                }),
                residual: None,
                scale: 1.0,
                importance: None,
            };
            let mut opts = Options {
                chunk_elements: 4,
                window: 2,
                measure: true,
                progress: crate::engine::progress::Progress::off(),
                search: false,
                dither: None,
                saturate: true,
            };
            let (o, bytes) = run_one(GgmlType::F32, (ty, 4, 2), action(), &opts, 2);
            let mut back = vec![0f32; 8];
            dequantize_row(ty, &bytes.unwrap(), &mut back).unwrap();
            let o = &o.unwrap()[0];
            if ty == GgmlType::F16 {
                assert_eq!(back[..4], [1.0, max, -max, 0.5]);
                assert_eq!(back[4], max);
                assert_eq!(o.saturated.count, 3);
            } else {
                // 70000 and -1e6 fit bf16; 3.4e38 rounds past its largest value.
                assert_eq!(back[4], max);
                assert_eq!(o.saturated.count, 1);
            }
            assert_eq!(o.saturated.largest, 3.4e38);
            opts.saturate = false;
            let (o, _) = run_one(GgmlType::F32, (ty, 4, 2), action(), &opts, 2);
            assert!(o.is_err(), "{ty}: an overflow without saturation must fail");
        }
    }

    /// Rows that fail to decode at chosen rows, and record how far ahead of
    /// the writer (which hands rows back in order) any decode started.
    struct Watched {
        data: Vec<f32>,
        row_len: usize,
        bad_rows: Vec<usize>,
        released: std::sync::atomic::AtomicUsize,
        max_lead: std::sync::atomic::AtomicUsize,
    }

    impl RowSource for &Watched {
        fn row_len(&self) -> usize {
            self.row_len
        }
        fn n_rows(&self) -> usize {
            self.data.len() / self.row_len
        }
        fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
            use std::sync::atomic::Ordering::SeqCst;
            let lead = start.saturating_sub(self.released.load(SeqCst));
            self.max_lead.fetch_max(lead, SeqCst);
            let end = start + out.len() / self.row_len;
            if let Some(r) = self.bad_rows.iter().find(|&&r| (start..end).contains(&r)) {
                return Err(Error::tensor(
                    Path::new("in.gguf"),
                    "w",
                    format!("bad row {r}"),
                ));
            }
            out.copy_from_slice(&self.data[start * self.row_len..][..out.len()]);
            Ok(())
        }
        fn release_rows(&self, _start: usize, end: usize) {
            self.released
                .fetch_max(end, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// One Q8_0 tensor of `n_rows` rows of 256 from `data`, chunks of 8
    /// rows; the error message or the rows' greatest lead over the writer.
    fn run_watched(
        data: Vec<f32>,
        bad_rows: Vec<usize>,
        threads: usize,
        window: usize,
        measure: bool,
    ) -> std::result::Result<usize, String> {
        let row_len = 256;
        let n_rows = data.len() / row_len;
        let src = Watched {
            data,
            row_len,
            bad_rows,
            released: 0.into(),
            max_lead: 0.into(),
        };
        let action = Action::Transcode {
            base: Box::new(&src),
            residual: None,
            scale: 1.0,
            importance: None,
        };
        let opts = Options {
            chunk_elements: 8 * row_len,
            window,
            measure,
            progress: crate::engine::progress::Progress::off(),
            search: false,
            dither: None,
            saturate: false,
        };
        let (res, _) = run_one(
            GgmlType::F32,
            (GgmlType::Q8_0, row_len, n_rows),
            action,
            &opts,
            threads,
        );
        res.map(|_| src.max_lead.load(std::sync::atomic::Ordering::SeqCst))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn workers_stay_within_the_window_of_the_writer() {
        for (threads, window) in [(1, 1), (2, 1), (2, 3), (4, 2)] {
            let lead = run_watched(values(3, 256 * 200), vec![], threads, window, true).unwrap();
            // A chunk is 8 rows: chunk k may start once k - window chunks
            // are written, i.e. at most `window` chunks (less one row) ahead.
            assert!(
                lead < 8 * window,
                "{threads} threads, window {window}: a decode started {lead} rows ahead"
            );
        }
    }

    #[test]
    fn the_first_failure_in_output_order_is_reported_whatever_the_threads() {
        for (threads, window) in [(1, 1), (2, 1), (2, 4), (3, 8)] {
            let e = run_watched(values(4, 256 * 120), vec![100, 45], threads, window, true)
                .unwrap_err();
            assert!(e.contains("bad row 45"), "{threads}/{window}: {e}");
        }
    }

    #[test]
    fn an_overflowing_block_scale_is_an_error_with_or_without_measuring() {
        // Q8_0 stores the block scale amax/127 as f16: 1e37/127 overflows.
        let mut data = values(5, 256 * 40);
        data[256 * 33 + 7] = 1e37;
        for measure in [true, false] {
            for threads in [1, 2] {
                let e = run_watched(data.clone(), vec![], threads, 2, measure).unwrap_err();
                assert!(
                    e.contains("row 33") && e.contains("block scale overflows"),
                    "measure {measure}, {threads} threads: {e}"
                );
            }
        }
    }
}
