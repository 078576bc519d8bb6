//! The rows of one tensor (or of several read together, row for row) as a
//! parallel map over row chunks on the [`schedule`](super::schedule): what
//! `compare`, the base guard, `extract` and the adapter read through.

use crate::model::rows::RowSource;
use crate::Result;

/// Elements per chunk when a caller has no reason to choose.
pub const CHUNK_ELEMENTS: usize = 1 << 18;

/// Row chunks `(first_row, n_rows)` of about `chunk_elements` elements.
pub fn chunks(n_rows: usize, row_len: usize, chunk_elements: usize) -> Vec<(usize, usize)> {
    let per = (chunk_elements / row_len.max(1)).max(1);
    (0..n_rows)
        .step_by(per)
        .map(|r| (r, per.min(n_rows - r)))
        .collect()
}

/// What happens to the sources' storage once a chunk is consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pages {
    /// Handed back (the rows are read once).
    Release,
    /// Kept (the rows are read again, as the adapter's passes do).
    Keep,
}

/// Run `work(first_row, n_rows)` over row chunks of `sources` (same row
/// count, read together) on the claimed-chunk scheduler, and hand each
/// result to `consume` in row order on the calling thread. The sources'
/// storage is read ahead of the workers and, with [`Pages::Release`],
/// released as chunks are consumed; the first error in row order is
/// returned, whatever the thread count.
pub fn for_each_chunk<T: Send>(
    sources: &[&dyn RowSource],
    chunk_elements: usize,
    pages: Pages,
    work: impl Fn(usize, usize) -> Result<T> + Sync,
    mut consume: impl FnMut(usize, usize, T) -> Result<()>,
) -> Result<()> {
    let Some(first) = sources.first() else {
        return Ok(());
    };
    let all = chunks(first.n_rows(), first.row_len(), chunk_elements);
    let ahead = 2 * rayon::current_num_threads().max(1);
    let prefetch = |k: usize| {
        if let Some(&(r, n)) = all.get(k) {
            sources.iter().for_each(|s| s.prefetch_rows(r, r + n));
        }
    };
    (0..2 * ahead).for_each(prefetch);
    super::schedule::in_order(
        all.len(),
        ahead,
        |k| work(all[k].0, all[k].1),
        |k, t| {
            let (r, n) = all[k];
            consume(r, n, t)?;
            if pages == Pages::Release {
                sources.iter().for_each(|s| s.release_rows(r, r + n));
            }
            prefetch(k + 2 * ahead);
            Ok(())
        },
    )
}

/// [`for_each_chunk`] collecting the results in row order (pages released).
pub fn map_chunks<T: Send>(
    sources: &[&dyn RowSource],
    work: impl Fn(usize, usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let mut out = Vec::new();
    for_each_chunk(sources, CHUNK_ELEMENTS, Pages::Release, work, |_, _, t| {
        out.push(t);
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once() {
        let c = chunks(10, 3, 7);
        assert_eq!(c, vec![(0, 2), (2, 2), (4, 2), (6, 2), (8, 2)]);
        assert_eq!(chunks(0, 4, 16), vec![]);
        assert_eq!(chunks(3, 1 << 20, 16), vec![(0, 1), (1, 1), (2, 1)]);
    }

    /// Rows `i` holding `i`, recording what was released.
    struct Counting {
        n_rows: usize,
        released: std::sync::Mutex<Vec<(usize, usize)>>,
    }

    impl RowSource for Counting {
        fn row_len(&self) -> usize {
            4
        }
        fn n_rows(&self) -> usize {
            self.n_rows
        }
        fn decode(&self, start: usize, out: &mut [f32]) -> Result<()> {
            for (i, row) in out.chunks_exact_mut(4).enumerate() {
                row.fill((start + i) as f32);
            }
            Ok(())
        }
        fn release_rows(&self, start: usize, end: usize) {
            self.released.lock().unwrap().push((start, end));
        }
    }

    #[test]
    fn results_come_in_row_order_and_pages_are_released_as_consumed() {
        let src = Counting {
            n_rows: 1000,
            released: Default::default(),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut seen = Vec::new();
        pool.install(|| {
            for_each_chunk(
                &[&src],
                40,
                Pages::Release,
                |r, n| {
                    let mut v = vec![0f32; n * 4];
                    src.decode(r, &mut v)?;
                    Ok(v)
                },
                |r, n, v| {
                    assert_eq!(v.len(), n * 4);
                    assert_eq!(v[0], r as f32);
                    // Rows before this chunk are released, none after.
                    assert_eq!(src.released.lock().unwrap().last().map_or(0, |l| l.1), r);
                    seen.push((r, n));
                    Ok(())
                },
            )
        })
        .unwrap();
        assert_eq!(seen, chunks(1000, 4, 40));
        let released: Vec<(usize, usize)> = seen.iter().map(|&(r, n)| (r, r + n)).collect();
        assert_eq!(*src.released.lock().unwrap(), released);
    }
}
