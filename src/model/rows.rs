//! Rows of f32 decoded on demand from a tensor's stored bytes: the
//! interface every model hands the engine ([`RowSource`]), and its form for
//! ggml-layout bytes ([`EncodedRows`]: GGUF tensors and F16/BF16/F32
//! safetensors, read in place from the memory map).

use std::path::Path;

use super::naming::{RowPermutation, ValueMap};
use crate::format::pages::{will_need, ReleasePages};
use crate::quant::{dequantize_row, GgmlType, QuantError};
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
    /// Rows `start..end` will be decoded soon: their storage may be read
    /// ahead.
    fn prefetch_rows(&self, _start: usize, _end: usize) {}
    /// The stored encoding and all bytes of the rows, in output row order,
    /// when they are held that way: what `--strategy search` compares
    /// against.
    fn encoded(&self) -> Option<(GgmlType, &[u8])> {
        None
    }
    /// For a residual: the converter stores this tensor as `f(w)` of the
    /// checkpoint's `w`, with `f` not linear, so the residual (a difference
    /// of checkpoints) is added before `f`: the output is
    /// `f(f⁻¹(base) + Δ)` ([`ValueMap::add`]). `None`: `base + Δ`.
    fn value_map(&self) -> Option<ValueMap> {
        None
    }
}

/// `target[i] = base[i] + delta[i]`, or through `map` where the residual
/// has one ([`ValueMap::add`]): the one place a residual meets its base.
pub fn add_residual(map: Option<ValueMap>, base: &[f32], delta: &[f32], target: &mut [f32]) {
    let pairs = target.iter_mut().zip(base.iter().zip(delta));
    match map {
        None => pairs.for_each(|(t, (b, d))| *t = b + d),
        Some(m) => pairs.for_each(|(t, (b, d))| *t = m.add(*b, *d)),
    }
}

/// Another source's rows, tagged with the [`ValueMap`] the residual they
/// hold goes through.
pub struct MappedRows<'a> {
    /// The residual's rows.
    pub rows: Box<dyn RowSource + 'a>,
    /// The converter's function on the tensor.
    pub map: ValueMap,
}

impl RowSource for MappedRows<'_> {
    fn row_len(&self) -> usize {
        self.rows.row_len()
    }

    fn n_rows(&self) -> usize {
        self.rows.n_rows()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.rows.decode(start, out)
    }

    fn release_rows(&self, start: usize, end: usize) {
        self.rows.release_rows(start, end);
    }

    fn prefetch_rows(&self, start: usize, end: usize) {
        self.rows.prefetch_rows(start, end);
    }

    fn value_map(&self) -> Option<ValueMap> {
        Some(self.map)
    }
}

/// Decoded rows `start..` in `out` (`row_len` each) hold only finite
/// values, or an error naming the tensor, row and column of the first that
/// does not (a quantized input whose scales overflow).
pub fn finite_rows(origin: (&Path, &str), start: usize, row_len: usize, out: &[f32]) -> Result<()> {
    match qresidual_quant::find_non_finite(out) {
        None => Ok(()),
        Some((i, v)) => Err(Error::tensor(
            origin.0,
            origin.1,
            format!(
                "row {}, column {}: holds {v}",
                start + i / row_len,
                i % row_len
            ),
        )),
    }
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

    /// `MADV_WILLNEED` on the rows' bytes of a mapped file (identity order
    /// only), so the kernel reads the next window while this one encodes.
    fn prefetch_rows(&self, start: usize, end: usize) {
        if self.pages.is_none() || !matches!(self.permutation, RowPermutation::Identity) {
            return;
        }
        let rb = self.row_bytes();
        let Some(bytes) = self.data.get(start * rb..end * rb) else {
            return;
        };
        will_need(bytes);
    }

    fn encoded(&self) -> Option<(GgmlType, &[u8])> {
        matches!(self.permutation, RowPermutation::Identity).then_some((self.ty, self.data))
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

/// Rows of another source in a different order (a bitsandbytes weight put
/// into a GGUF model's q/k row order): decoded one row at a time.
pub struct PermutedRows<'a> {
    /// The rows in their stored order.
    pub rows: Box<dyn RowSource + 'a>,
    /// Which stored row lands in each output row.
    pub permutation: RowPermutation,
}

impl RowSource for PermutedRows<'_> {
    fn row_len(&self) -> usize {
        self.rows.row_len()
    }

    fn n_rows(&self) -> usize {
        self.rows.n_rows()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let (n_rows, row_len) = (self.n_rows(), self.row_len());
        for (i, dst) in out.chunks_exact_mut(row_len).enumerate() {
            let src = self.permutation.source_row(n_rows, start + i);
            self.rows.decode(src, dst)?;
        }
        Ok(())
    }

    fn release_rows(&self, _start: usize, end: usize) {
        if end == self.n_rows() {
            self.rows.release_rows(0, end);
        }
    }
}

/// Rows of several sources one after another (an expert-stacked GGUF
/// tensor's rows, read from its per-expert Hugging Face tensors in expert
/// order). Every part has the same row length.
pub struct StackedRows<'a> {
    /// The sources, in stacking order.
    pub parts: Vec<Box<dyn RowSource + 'a>>,
}

impl StackedRows<'_> {
    /// Each part overlapping rows `start..end`, with the part's own row range.
    fn spans(&self, start: usize, end: usize) -> Vec<(usize, usize, usize)> {
        let mut out = Vec::new();
        let mut first = 0;
        for (i, p) in self.parts.iter().enumerate() {
            let last = first + p.n_rows();
            let (a, b) = (start.max(first), end.min(last));
            if a < b {
                out.push((i, a - first, b - first));
            }
            first = last;
        }
        out
    }
}

impl RowSource for StackedRows<'_> {
    fn row_len(&self) -> usize {
        self.parts.first().map_or(0, |p| p.row_len())
    }

    fn n_rows(&self) -> usize {
        self.parts.iter().map(|p| p.n_rows()).sum()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let row_len = self.row_len();
        let end = start + out.len() / row_len.max(1);
        let mut at = 0;
        for (i, a, b) in self.spans(start, end) {
            let n = (b - a) * row_len;
            self.parts[i].decode(a, &mut out[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    fn release_rows(&self, start: usize, end: usize) {
        for (i, a, b) in self.spans(start, end) {
            self.parts[i].release_rows(a, b);
        }
    }

    fn prefetch_rows(&self, start: usize, end: usize) {
        for (i, a, b) in self.spans(start, end) {
            self.parts[i].prefetch_rows(a, b);
        }
    }
}

/// Blocks of another source's rows, each transposed (DeepSeek's `attn_k_b`:
/// of every `group` stored rows of length `R`, the first `len` rows, as `R`
/// rows of length `len`). Decodes one block (`len × R` values) at a time.
pub struct TransposedRows<'a> {
    /// The stored rows.
    pub rows: Box<dyn RowSource + 'a>,
    /// Stored rows per block (per head).
    pub group: usize,
    /// Rows of each block that are transposed (the rest are left out).
    pub len: usize,
}

impl RowSource for TransposedRows<'_> {
    fn row_len(&self) -> usize {
        self.len
    }

    fn n_rows(&self) -> usize {
        self.rows.n_rows() / self.group.max(1) * self.rows.row_len()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let (r, len) = (self.rows.row_len(), self.len);
        let mut block = vec![0f32; len * r];
        let mut loaded = None;
        for (i, dst) in out.chunks_exact_mut(len).enumerate() {
            let (head, col) = ((start + i) / r, (start + i) % r);
            if loaded != Some(head) {
                self.rows.decode(head * self.group, &mut block)?;
                loaded = Some(head);
            }
            for (j, v) in dst.iter_mut().enumerate() {
                *v = block[j * r + col];
            }
        }
        Ok(())
    }

    fn release_rows(&self, _start: usize, end: usize) {
        if end == self.n_rows() {
            self.rows.release_rows(0, self.rows.n_rows());
        }
    }
}

/// Another source's rows with their columns reordered: output column `c`
/// is stored column `order.source_row(row_len, c)` (Qwen3.5's value heads
/// along `out_proj`'s columns and 1-D `A_log`/`dt_bias`).
pub struct PermutedColumns<'a> {
    /// The stored rows.
    pub rows: Box<dyn RowSource + 'a>,
    /// The column order, as a permutation of a row's elements.
    pub order: RowPermutation,
}

impl RowSource for PermutedColumns<'_> {
    fn row_len(&self) -> usize {
        self.rows.row_len()
    }

    fn n_rows(&self) -> usize {
        self.rows.n_rows()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let len = self.row_len();
        let mut stored = vec![0f32; len];
        for (i, dst) in out.chunks_exact_mut(len.max(1)).enumerate() {
            self.rows.decode(start + i, &mut stored)?;
            for (c, v) in dst.iter_mut().enumerate() {
                *v = stored[self.order.source_row(len, c)];
            }
        }
        Ok(())
    }

    fn release_rows(&self, start: usize, end: usize) {
        self.rows.release_rows(start, end);
    }

    fn prefetch_rows(&self, start: usize, end: usize) {
        self.rows.prefetch_rows(start, end);
    }
}

/// Every `step`th column of another source's rows, from column `offset`
/// (gpt-oss's interleaved `gate_up_proj`: gate in the even columns, up in
/// the odd ones). Decodes one stored row at a time.
pub struct ColumnSlice<'a> {
    /// The stored rows.
    pub rows: Box<dyn RowSource + 'a>,
    /// First column taken.
    pub offset: usize,
    /// Distance between the columns taken.
    pub step: usize,
}

impl RowSource for ColumnSlice<'_> {
    fn row_len(&self) -> usize {
        let (len, step) = (self.rows.row_len(), self.step.max(1));
        len.saturating_sub(self.offset).div_ceil(step)
    }

    fn n_rows(&self) -> usize {
        self.rows.n_rows()
    }

    fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let mut stored = vec![0f32; self.rows.row_len()];
        let step = self.step.max(1);
        for (i, dst) in out.chunks_exact_mut(self.row_len().max(1)).enumerate() {
            self.rows.decode(start + i, &mut stored)?;
            let picked = stored.iter().skip(self.offset).step_by(step);
            for (v, s) in dst.iter_mut().zip(picked) {
                *v = *s;
            }
        }
        Ok(())
    }

    fn release_rows(&self, start: usize, end: usize) {
        self.rows.release_rows(start, end);
    }

    fn prefetch_rows(&self, start: usize, end: usize) {
        self.rows.prefetch_rows(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Units in the last place of `want` between `got` and `want`.
    fn ulps(got: f32, want: f32) -> f64 {
        let spacing = f32::from_bits(want.abs().to_bits() + 1) - want.abs();
        (got as f64 - want as f64).abs() / spacing as f64
    }

    #[test]
    fn neg_exp_adds_before_the_function() {
        // ssm_a = −exp(A_log). The converter computes −exp(A_log + Δ) in
        // f32 from the instruct checkpoint; `add` sees only the base's
        // rounded −exp(A_log). Over A_log in [−4, 4] and Δ up to ±0.3 the
        // two stay within ValueMap's stated 2 + |A_log + Δ| / 2 ulps.
        let mut worst: f64 = 0.0;
        for i in 0..=800 {
            let a_log = -4.0 + i as f32 * 0.01;
            for delta in [0.0f32, 1e-3, -7e-3, 0.05, -0.3, 0.3] {
                let base = -a_log.exp();
                let got = ValueMap::NegExp.add(base, delta);
                let want = -(a_log + delta).exp();
                let d = ulps(got, want);
                let bound = 2.0 + (a_log + delta).abs() as f64 / 2.0;
                assert!(d <= bound, "{a_log} {delta}: {got} vs {want}: {d} ulps");
                worst = worst.max(d);
            }
        }
        assert!(worst > 0.0, "the bound is not vacuous");
        // Not a value −exp can give: NaN, refused by the writer.
        assert!(ValueMap::NegExp.add(0.5, 0.1).is_nan());
    }

    #[test]
    fn add_residual_maps_only_where_asked() {
        let (base, delta) = ([1.0f32, -1.0], [0.5f32, 0.25]);
        let mut t = [0f32; 2];
        add_residual(None, &base, &delta, &mut t);
        assert_eq!(t, [1.5, -0.75]);
        add_residual(Some(ValueMap::NegExp), &base[1..], &delta[1..], &mut t[..1]);
        assert_eq!(t[0], -(0.25f64.exp() as f32));
    }
}
