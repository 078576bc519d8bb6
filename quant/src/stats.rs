//! Error metrics between a reference and its encoded-then-decoded form.
//!
//! Sums run in f64 over chunks that are merged in a fixed order, so the
//! numbers do not depend on how many threads computed them.

/// Running sums from which every metric of the precision report follows.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ErrorStats {
    /// Number of elements seen.
    pub n: u64,
    sum_err2: f64,
    max_abs: f64,
    sum_ref2: f64,
    sum_out2: f64,
    sum_ref_out: f64,
    sum_delta2: f64,
    sum_moved_delta: f64,
}

const LANES: usize = 8;

/// Per-lane partial sums of [`ErrorStats::accumulate_lanes`].
#[derive(Default)]
struct Lanes {
    err2: [f64; LANES],
    max_abs: [f64; LANES],
    ref2: [f64; LANES],
    out2: [f64; LANES],
    refout: [f64; LANES],
    d2: [f64; LANES],
    moved: [f64; LANES],
}

impl Lanes {
    #[inline(always)]
    fn add<const RES: bool>(&mut self, l: usize, r: f32, o: f32, b: f32, d: f32) {
        let (r, o) = (r as f64, o as f64);
        let e = o - r;
        self.err2[l] += e * e;
        self.max_abs[l] = self.max_abs[l].max(e.abs());
        self.ref2[l] += r * r;
        self.out2[l] += o * o;
        self.refout[l] += r * o;
        if RES {
            let d = d as f64;
            self.d2[l] += d * d;
            self.moved[l] += (o - b as f64) * d;
        }
    }
}

/// Whole groups of `LANES` elements with the lane index fixed per position
/// (so the compiler keeps each sum in a vector register), then the tail.
#[inline(always)]
fn lanes_body<const RES: bool>(out: &mut Lanes, r: &[f32], o: &[f32], b: &[f32], d: &[f32]) {
    // Sums in a local, written back once: through `out` the compiler would
    // store every sum to memory on every step.
    let mut local = std::mem::take(out);
    let acc = &mut local;
    let n = r.len().min(o.len());
    let n = if RES { n.min(b.len()).min(d.len()) } else { n };
    let whole = n / LANES * LANES;
    let mut i = 0;
    while i < whole {
        let rc: &[f32; LANES] = r[i..i + LANES].try_into().expect("lanes");
        let oc: &[f32; LANES] = o[i..i + LANES].try_into().expect("lanes");
        if RES {
            let bc: &[f32; LANES] = b[i..i + LANES].try_into().expect("lanes");
            let dc: &[f32; LANES] = d[i..i + LANES].try_into().expect("lanes");
            for l in 0..LANES {
                acc.add::<true>(l, rc[l], oc[l], bc[l], dc[l]);
            }
        } else {
            for l in 0..LANES {
                acc.add::<false>(l, rc[l], oc[l], 0.0, 0.0);
            }
        }
        i += LANES;
    }
    for k in whole..n {
        let (bk, dk) = if RES { (b[k], d[k]) } else { (0.0, 0.0) };
        acc.add::<RES>(k - whole, r[k], o[k], bk, dk);
    }
    *out = local;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn lanes_avx2<const RES: bool>(acc: &mut Lanes, r: &[f32], o: &[f32], b: &[f32], d: &[f32]) {
    lanes_body::<RES>(acc, r, o, b, d)
}

fn lanes_dispatch<const RES: bool>(acc: &mut Lanes, r: &[f32], o: &[f32], b: &[f32], d: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::ggml::cpu::Isa::Avx2.is_available() {
        // SAFETY: AVX2 was detected.
        unsafe { lanes_avx2::<RES>(acc, r, o, b, d) };
        return;
    }
    lanes_body::<RES>(acc, r, o, b, d)
}

impl ErrorStats {
    /// Add elements where `output` approximates `reference`.
    pub fn accumulate(&mut self, reference: &[f32], output: &[f32]) {
        assert_eq!(reference.len(), output.len());
        self.accumulate_lanes(reference, output, None);
    }

    /// Add elements of a residual application: `reference = base + delta`
    /// (delta already scaled), `output` what was written. Also tracks how
    /// much of `delta` survived in `output - base`.
    pub fn accumulate_residual(
        &mut self,
        base: &[f32],
        delta: &[f32],
        reference: &[f32],
        output: &[f32],
    ) {
        assert_eq!(base.len(), delta.len());
        assert_eq!(reference.len(), output.len());
        assert_eq!(base.len(), output.len());
        self.accumulate_lanes(reference, output, Some((base, delta)));
    }

    /// One pass with `LANES` independent partial sums (element `i` feeds
    /// lane `i % LANES`), folded in a fixed order: the result depends only
    /// on the data and the chunking, never on threads or on the instruction
    /// set (the AVX2 variant runs the same f64 operations per lane).
    fn accumulate_lanes(
        &mut self,
        reference: &[f32],
        output: &[f32],
        residual: Option<(&[f32], &[f32])>,
    ) {
        let mut acc = Lanes::default();
        match residual {
            Some((base, delta)) => lanes_dispatch::<true>(&mut acc, reference, output, base, delta),
            None => lanes_dispatch::<false>(&mut acc, reference, output, &[], &[]),
        }
        for l in 0..LANES {
            self.sum_err2 += acc.err2[l];
            self.max_abs = self.max_abs.max(acc.max_abs[l]);
            self.sum_ref2 += acc.ref2[l];
            self.sum_out2 += acc.out2[l];
            self.sum_ref_out += acc.refout[l];
            self.sum_delta2 += acc.d2[l];
            self.sum_moved_delta += acc.moved[l];
        }
        self.n += reference.len() as u64;
    }

    /// Whether every output element seen was finite: a NaN or an infinity
    /// makes the sum of squares non-finite, and finite f32 squares summed
    /// in f64 cannot overflow.
    pub fn output_is_finite(&self) -> bool {
        self.sum_out2.is_finite()
    }

    /// Fold another chunk's sums into these.
    pub fn merge(&mut self, other: &ErrorStats) {
        self.n += other.n;
        self.sum_err2 += other.sum_err2;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.sum_ref2 += other.sum_ref2;
        self.sum_out2 += other.sum_out2;
        self.sum_ref_out += other.sum_ref_out;
        self.sum_delta2 += other.sum_delta2;
        self.sum_moved_delta += other.sum_moved_delta;
    }

    /// Root mean square error.
    pub fn rmse(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.sum_err2 / self.n as f64).sqrt()
        }
    }

    /// Largest absolute error.
    pub fn max_abs(&self) -> f64 {
        self.max_abs
    }

    /// Root mean square of the reference.
    pub fn reference_rms(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            (self.sum_ref2 / self.n as f64).sqrt()
        }
    }

    /// RMSE divided by the reference's RMS (0 when both are 0).
    pub fn relative_rmse(&self) -> f64 {
        let rms = self.reference_rms();
        if rms == 0.0 {
            if self.sum_err2 == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            self.rmse() / rms
        }
    }

    /// Cosine similarity of output and reference (1 when both are zero).
    pub fn cosine(&self) -> f64 {
        let d = (self.sum_ref2 * self.sum_out2).sqrt();
        if d == 0.0 {
            if self.sum_ref2 == self.sum_out2 {
                1.0
            } else {
                0.0
            }
        } else {
            self.sum_ref_out / d
        }
    }

    /// Signal-to-noise ratio in dB; infinite for an exact output.
    pub fn snr_db(&self) -> f64 {
        if self.sum_err2 == 0.0 {
            f64::INFINITY
        } else {
            10.0 * (self.sum_ref2 / self.sum_err2).log10()
        }
    }

    /// Euclidean norm of the (scaled) residual.
    pub fn delta_norm(&self) -> f64 {
        self.sum_delta2.sqrt()
    }

    /// `⟨out − base, Δ⟩ / ‖Δ‖²`: 1 when the residual fully survived,
    /// 0 when it was rounded away; `None` for a zero residual.
    pub fn retention(&self) -> Option<f64> {
        if self.sum_delta2 == 0.0 {
            None
        } else {
            Some(self.sum_moved_delta / self.sum_delta2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn exact_output_has_zero_error_and_full_retention() {
        let base = [1.0f32, -2.0, 0.5, 4.0];
        let delta = [0.1f32, 0.0, -0.2, 0.3];
        let sum: Vec<f32> = base.iter().zip(&delta).map(|(b, d)| b + d).collect();
        let mut s = ErrorStats::default();
        s.accumulate_residual(&base, &delta, &sum, &sum);
        assert_eq!(s.rmse(), 0.0);
        assert_eq!(s.snr_db(), f64::INFINITY);
        assert_relative_eq!(s.cosine(), 1.0, epsilon = 1e-12);
        assert_relative_eq!(s.retention().unwrap(), 1.0, epsilon = 1e-6);
    }

    #[test]
    fn rounded_away_residual_has_zero_retention() {
        let base = [1.0f32, 2.0];
        let delta = [0.01f32, -0.01];
        let sum = [1.01f32, 1.99];
        let mut s = ErrorStats::default();
        s.accumulate_residual(&base, &delta, &sum, &base);
        assert_eq!(s.retention(), Some(0.0));
        assert_relative_eq!(s.rmse(), 0.01, epsilon = 1e-6);
        assert_relative_eq!(s.max_abs(), 0.01, epsilon = 1e-6);
    }

    #[test]
    fn merge_equals_one_pass() {
        let r: Vec<f32> = (0..100).map(|i| (i as f32).sin()).collect();
        let o: Vec<f32> = r.iter().map(|x| x * 0.9 + 0.01).collect();
        let mut whole = ErrorStats::default();
        whole.accumulate(&r, &o);
        let mut a = ErrorStats::default();
        a.accumulate(&r[..40], &o[..40]);
        let mut b = ErrorStats::default();
        b.accumulate(&r[40..], &o[40..]);
        a.merge(&b);
        assert_relative_eq!(a.rmse(), whole.rmse(), max_relative = 1e-12);
        assert_relative_eq!(a.cosine(), whole.cosine(), max_relative = 1e-12);
        assert_eq!(a.max_abs(), whole.max_abs());
    }

    /// Element `i` into lane `i % 8`, one element at a time: the order the
    /// fast paths must reproduce bit for bit.
    fn naive(r: &[f32], o: &[f32], b: &[f32], d: &[f32]) -> [[u64; LANES]; 7] {
        let mut acc = Lanes::default();
        for i in 0..r.len() {
            if b.is_empty() {
                acc.add::<false>(i % LANES, r[i], o[i], 0.0, 0.0);
            } else {
                acc.add::<true>(i % LANES, r[i], o[i], b[i], d[i]);
            }
        }
        bits(&acc)
    }

    fn bits(a: &Lanes) -> [[u64; LANES]; 7] {
        let f = |v: &[f64; LANES]| v.map(f64::to_bits);
        [
            f(&a.err2),
            f(&a.max_abs),
            f(&a.ref2),
            f(&a.out2),
            f(&a.refout),
            f(&a.d2),
            f(&a.moved),
        ]
    }

    #[test]
    fn lane_sums_are_the_same_bits_in_every_variant() {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
        };
        for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 1000, 4096 + 5] {
            let r: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let o: Vec<f32> = r.iter().map(|x| x + rnd() * 1e-3).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let d: Vec<f32> = (0..n).map(|_| rnd() * 0.01).collect();
            for res in [false, true] {
                let (bb, dd) = if res {
                    (&b[..], &d[..])
                } else {
                    (&[][..], &[][..])
                };
                let want = naive(&r, &o, bb, dd);
                let mut portable = Lanes::default();
                let mut best = Lanes::default();
                if res {
                    lanes_body::<true>(&mut portable, &r, &o, bb, dd);
                    lanes_dispatch::<true>(&mut best, &r, &o, bb, dd);
                } else {
                    lanes_body::<false>(&mut portable, &r, &o, bb, dd);
                    lanes_dispatch::<false>(&mut best, &r, &o, bb, dd);
                }
                assert_eq!(bits(&portable), want, "portable n={n} res={res}");
                assert_eq!(bits(&best), want, "dispatched n={n} res={res}");
            }
        }
    }
}
