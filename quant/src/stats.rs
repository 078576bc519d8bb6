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

    /// One pass with `LANES` independent partial sums (so the compiler can
    /// vectorise), folded in a fixed order: the result depends only on the
    /// data and the chunking, never on threads.
    fn accumulate_lanes(
        &mut self,
        reference: &[f32],
        output: &[f32],
        residual: Option<(&[f32], &[f32])>,
    ) {
        const LANES: usize = 8;
        let mut err2 = [0f64; LANES];
        let mut ref2 = [0f64; LANES];
        let mut out2 = [0f64; LANES];
        let mut refout = [0f64; LANES];
        let mut d2 = [0f64; LANES];
        let mut moved = [0f64; LANES];
        let mut max_abs = [0f64; LANES];
        let n = reference.len();
        let mut lane = |l: usize, i: usize| {
            let (r, o) = (reference[i] as f64, output[i] as f64);
            let e = o - r;
            err2[l] += e * e;
            max_abs[l] = max_abs[l].max(e.abs());
            ref2[l] += r * r;
            out2[l] += o * o;
            refout[l] += r * o;
            if let Some((base, delta)) = residual {
                let d = delta[i] as f64;
                d2[l] += d * d;
                moved[l] += (o - base[i] as f64) * d;
            }
        };
        for i in 0..n {
            lane(i % LANES, i);
        }
        for l in 0..LANES {
            self.sum_err2 += err2[l];
            self.max_abs = self.max_abs.max(max_abs[l]);
            self.sum_ref2 += ref2[l];
            self.sum_out2 += out2[l];
            self.sum_ref_out += refout[l];
            self.sum_delta2 += d2[l];
            self.sum_moved_delta += moved[l];
        }
        self.n += n as u64;
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
}
