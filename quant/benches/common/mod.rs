//! What every codec benchmark shares: the thread's CPU clock and the
//! command line.

/// CPU time of the calling thread: the machine may be shared, and other
/// processes' load must not count against the code measured (the ggml side
/// of `benches/bench_codecs.py` measures the same way).
#[cfg(target_os = "linux")]
pub fn cpu_seconds() -> f64 {
    #[repr(C)]
    struct Timespec {
        sec: i64,
        nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clock: i32, tp: *mut Timespec) -> i32;
    }
    const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
    let mut t = Timespec { sec: 0, nsec: 0 };
    // SAFETY: `t` is a valid timespec; the clock id exists on Linux.
    unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.sec as f64 + t.nsec as f64 * 1e-9
}

/// Wall time where no thread CPU clock is at hand.
#[cfg(not(target_os = "linux"))]
pub fn cpu_seconds() -> f64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static T0: OnceLock<Instant> = OnceLock::new();
    T0.get_or_init(Instant::now).elapsed().as_secs_f64()
}

/// The type names asked for on the command line (empty: all), or `None`
/// when not run by `cargo bench`. `cargo bench` passes `--bench`; `cargo
/// test --workspace --all-targets` also runs these `harness = false`
/// targets, without it, and then they return at once so the CI log gets no
/// timings (the codecs are tested in `tests/`).
pub fn wanted_types() -> Option<Vec<String>> {
    if !std::env::args().any(|a| a == "--bench") {
        return None;
    }
    Some(
        std::env::args()
            .skip(1)
            .filter(|a| !a.starts_with('-'))
            .collect(),
    )
}
