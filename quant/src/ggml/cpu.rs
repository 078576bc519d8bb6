//! The instruction-set variants and the one CPU check that selects them.
//!
//! Every kernel has a portable scalar variant (the reference ports in
//! `scalar`); on x86-64 some also have an AVX2 variant (`x86`), bit-exact
//! with it. The registry row of a type lists both; [`Isa::best`] picks one.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set variant of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Portable Rust, the reference every other variant must equal.
    Scalar,
    /// x86-64 AVX2 with F16C (256-bit integer and float vectors, hardware
    /// half-precision conversion).
    Avx2,
}

/// The probe's answer: 0 = not probed yet, 1 = scalar only, 2 = AVX2.
static BEST: AtomicU8 = AtomicU8::new(0);

impl Isa {
    /// Every variant, runnable here or not.
    pub const ALL: [Isa; 2] = [Isa::Scalar, Isa::Avx2];

    /// Whether this CPU can run the variant.
    #[inline(always)]
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => Isa::best() == Isa::Avx2,
        }
    }

    /// The fastest variant this CPU runs (probed once, then cached).
    #[inline(always)]
    pub fn best() -> Isa {
        match BEST.load(Ordering::Relaxed) {
            1 => Isa::Scalar,
            2 => Isa::Avx2,
            _ => probe(),
        }
    }

    /// Lower-case name (`scalar`, `avx2`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
        }
    }
}

#[cold]
fn probe() -> Isa {
    #[cfg(target_arch = "x86_64")]
    let avx2 =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    let avx2 = false;
    let best = if avx2 { Isa::Avx2 } else { Isa::Scalar };
    BEST.store(if avx2 { 2 } else { 1 }, Ordering::Relaxed);
    best
}
