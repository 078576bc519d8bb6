//! The claimed-chunk scheduler every command runs on.
//!
//! Work is a sequence of chunks numbered in output order. Worker threads
//! claim the next number as soon as they are free (dynamic scheduling: a
//! slow chunk does not leave the others idle at a barrier), but never more
//! than `ahead` chunks past the consumer, which bounds memory. The consumer
//! runs on the calling thread and receives the results strictly in order,
//! so it may write them, merge them or use rayon itself. A failed chunk
//! stops new chunks after it; the chunks before it still complete, so the
//! error reported is always the first one in output order, whatever the
//! thread count.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Condvar, Mutex};

use crate::{Error, Result};

/// The state shared by the workers and the consumer. `limit` is the first
/// chunk not to start: it drops to a failed chunk's number + 1, or to zero
/// when the consumer stops.
struct Schedule {
    next: AtomicUsize,
    limit: AtomicUsize,
    consumed: Mutex<usize>,
    moved: Condvar,
    ahead: usize,
}

impl Schedule {
    fn new(n: usize, ahead: usize) -> Self {
        Schedule {
            next: 0.into(),
            limit: n.into(),
            consumed: Mutex::new(0),
            moved: Condvar::new(),
            ahead: ahead.max(1),
        }
    }

    /// The next chunk this worker may run, waiting while it is too far
    /// ahead of the consumer; `None` when there is nothing left to start.
    fn claim(&self) -> Option<usize> {
        let k = self.next.fetch_add(1, SeqCst);
        let mut c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if k >= self.limit.load(SeqCst) {
                return None;
            }
            if k < *c + self.ahead {
                return Some(k);
            }
            c = self.moved.wait(c).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Start nothing at or after chunk `k`.
    fn cut(&self, k: usize) {
        self.limit.fetch_min(k, SeqCst);
        let _c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        self.moved.notify_all();
    }

    /// The consumer has taken `k` chunks.
    fn advance(&self, k: usize) {
        let mut c = self.consumed.lock().unwrap_or_else(|p| p.into_inner());
        *c = k;
        self.moved.notify_all();
    }
}

/// Run `work(k)` for every chunk `k` in `0..n` on as many worker threads as
/// the current rayon pool has, at most `ahead` chunks ahead of `consume`,
/// which gets every result in order of `k` on the calling thread. The first
/// error in order of `k` (from `work` or `consume`) ends the run.
pub fn in_order<T: Send>(
    n: usize,
    ahead: usize,
    work: impl Fn(usize) -> Result<T> + Sync,
    mut consume: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    if n == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads().clamp(1, n);
    let sched = Schedule::new(n, ahead);
    let (tx, rx) = mpsc::channel::<(usize, Result<T>)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (tx, sched, work) = (tx.clone(), &sched, &work);
            scope.spawn(move || {
                // A panicking chunk stops every worker (the consumer then
                // sees the channel close, and the panic resumes at the join).
                let _stop = StopOnDrop(sched);
                while let Some(k) = sched.claim() {
                    let res = work(k);
                    if res.is_err() {
                        sched.cut(k + 1);
                    }
                    if tx.send((k, res)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let _stop = StopOnDrop(&sched);
        let result = consume_in_order(n, rx, &sched, &mut consume);
        // Whatever happened (an error, or a panic through `_stop`), no
        // worker starts another chunk or waits for one to be consumed.
        sched.cut(0);
        result
    })
}

/// Stops the schedule when a panic unwinds a worker or the consumer, so
/// that nobody waits for the other at the join.
struct StopOnDrop<'a>(&'a Schedule);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.cut(0);
        }
    }
}

fn consume_in_order<T>(
    n: usize,
    rx: mpsc::Receiver<(usize, Result<T>)>,
    sched: &Schedule,
    consume: &mut impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    // Results that arrived before their turn.
    let mut early: BTreeMap<usize, Result<T>> = BTreeMap::new();
    for k in 0..n {
        let res =
            loop {
                if let Some(r) = early.remove(&k) {
                    break r;
                }
                match rx.recv() {
                    Ok((j, r)) => {
                        early.insert(j, r);
                    }
                    // Every worker has stopped without chunk `k`: they only do
                    // so after a failed chunk (or a panic, resumed at the join).
                    Err(_) => {
                        return Err(early.into_values().find_map(|r| r.err()).unwrap_or_else(
                            || Error::tensor(Path::new(""), "", "the workers stopped unexpectedly"),
                        ))
                    }
                }
            };
        consume(k, res?)?;
        sched.advance(k + 1);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(f)
    }

    #[test]
    fn results_arrive_in_order_within_the_lead() {
        for (threads, ahead) in [(1, 1), (2, 1), (3, 2), (4, 8)] {
            let consumed = AtomicUsize::new(0);
            let max_lead = AtomicUsize::new(0);
            let mut got = Vec::new();
            on_threads(threads, || {
                in_order(
                    50,
                    ahead,
                    |k| {
                        let lead = k - consumed.load(SeqCst);
                        max_lead.fetch_max(lead, SeqCst);
                        Ok(k * k)
                    },
                    |k, v| {
                        got.push((k, v));
                        consumed.store(k + 1, SeqCst);
                        Ok(())
                    },
                )
            })
            .unwrap();
            assert_eq!(got, (0..50).map(|k| (k, k * k)).collect::<Vec<_>>());
            assert!(max_lead.load(SeqCst) < ahead, "{threads}/{ahead}");
        }
    }

    #[test]
    fn the_first_error_in_order_wins_and_the_consumer_may_use_rayon() {
        use rayon::prelude::*;
        for threads in [1, 2, 4] {
            let mut sum = 0u64;
            let e = on_threads(threads, || {
                in_order(
                    40,
                    3,
                    |k| match k {
                        31 | 17 => Err(Error::Usage(format!("chunk {k}"))),
                        _ => Ok(k as u64),
                    },
                    |_, v| {
                        sum += (0..100u64).into_par_iter().map(|i| i * v).sum::<u64>();
                        Ok(())
                    },
                )
            })
            .unwrap_err();
            assert!(e.to_string().contains("chunk 17"), "{threads}: {e}");
            assert_eq!(sum, 4950 * (0..17u64).sum::<u64>());
        }
    }

    #[test]
    fn a_panic_in_a_worker_or_the_consumer_is_resumed_not_a_hang() {
        for (bad_work, bad_consumer) in [(Some(7), None), (None, Some(7)), (Some(0), None)] {
            let r = std::panic::catch_unwind(|| {
                on_threads(2, || {
                    in_order(
                        100,
                        2,
                        |k| {
                            assert_ne!(Some(k), bad_work, "boom");
                            Ok(k)
                        },
                        |k, _| {
                            assert_ne!(Some(k), bad_consumer, "boom");
                            Ok(())
                        },
                    )
                })
            });
            assert!(r.is_err(), "{bad_work:?} {bad_consumer:?}");
        }
    }

    #[test]
    fn a_failing_consumer_stops_the_workers() {
        let started = AtomicUsize::new(0);
        let e = on_threads(2, || {
            in_order(
                1000,
                2,
                |_| {
                    started.fetch_add(1, SeqCst);
                    Ok(())
                },
                |k, ()| match k {
                    5 => Err(Error::Usage("stop".into())),
                    _ => Ok(()),
                },
            )
        })
        .unwrap_err();
        assert!(e.to_string().contains("stop"));
        assert!(started.load(SeqCst) < 10);
    }
}
