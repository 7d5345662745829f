//! Recursive least squares with a forgetting factor: the learner behind both models.
//!
//! Standard exponentially weighted RLS (Haykin, *Adaptive Filter Theory*, ch. 10): for each
//! sample `(x, y)`, `k = P x / (λ + xᵀ P x)`, `θ += k (y − θᵀ x)`, `P = (P − k xᵀ P) / λ`.
//! Robustness: `P` starts at `δ I` (a ridge prior around the initial `θ`), its trace is capped at
//! 10⁶ × the initial trace so directions the data stop exciting cannot wind up without bound,
//! errors beyond three running mean absolute errors are clipped (one surprise cannot throw the
//! coefficients), and any non-finite state
//! resets the learner to its prior (counted in [`Rls::resets`]).

/// One linear model `y ≈ θᵀ x` learned online.
#[derive(Debug, Clone)]
pub(super) struct Rls {
    theta: Vec<f64>,
    /// `d × d`, row-major, kept symmetric.
    p: Vec<f64>,
    prior: Vec<f64>,
    lambda: f64,
    delta: f64,
    updates: u64,
    resets: u64,
    /// Scratch for `P x`.
    px: Vec<f64>,
    /// Running mean absolute prediction error; errors are clipped to `CLIP ×` this.
    err_scale: f64,
}

/// Errors beyond this many mean absolute errors are clipped (Huber-style robust RLS).
const CLIP: f64 = 3.0;

impl Rls {
    /// A learner starting at `prior` (its length is the feature dimension).
    pub(super) fn new(prior: Vec<f64>, lambda: f64, delta: f64) -> Rls {
        let d = prior.len();
        let mut r = Rls {
            theta: prior.clone(),
            p: vec![0.0; d * d],
            prior,
            lambda,
            delta,
            updates: 0,
            resets: 0,
            px: vec![0.0; d],
            err_scale: 0.0,
        };
        r.restart();
        r
    }

    fn restart(&mut self) {
        let d = self.prior.len();
        self.theta.copy_from_slice(&self.prior);
        self.p.iter_mut().for_each(|v| *v = 0.0);
        for i in 0..d {
            self.p[i * d + i] = self.delta;
        }
        self.updates = 0;
        self.err_scale = 0.0;
    }

    pub(super) fn predict(&self, x: &[f64]) -> f64 {
        self.theta.iter().zip(x).map(|(t, x)| t * x).sum()
    }

    /// Samples learned since the last reset.
    pub(super) fn updates(&self) -> u64 {
        self.updates
    }

    /// Times the state went non-finite and was reset to the prior.
    pub(super) fn resets(&self) -> u64 {
        self.resets
    }

    /// Learns one sample. Non-finite input is skipped; a non-finite result resets the learner.
    pub(super) fn update(&mut self, x: &[f64], y: f64) {
        let d = self.theta.len();
        debug_assert_eq!(x.len(), d);
        if !y.is_finite() || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        for i in 0..d {
            self.px[i] = (0..d).map(|j| self.p[i * d + j] * x[j]).sum();
        }
        let denom = self.lambda + x.iter().zip(&self.px).map(|(a, b)| a * b).sum::<f64>();
        if !denom.is_finite() || denom <= 0.0 {
            return self.reset();
        }
        let raw = y - self.predict(x);
        let err = if self.updates < 2 * d as u64 || self.err_scale == 0.0 {
            raw
        } else {
            raw.clamp(-CLIP * self.err_scale, CLIP * self.err_scale)
        };
        self.err_scale += 0.05 * (raw.abs().min(10.0 * self.err_scale.max(1e-9)) - self.err_scale);
        for i in 0..d {
            self.theta[i] += self.px[i] / denom * err;
        }
        let mut trace = 0.0;
        for i in 0..d {
            for j in i..d {
                let v = (self.p[i * d + j] - self.px[i] * self.px[j] / denom) / self.lambda;
                self.p[i * d + j] = v;
                self.p[j * d + i] = v;
            }
            trace += self.p[i * d + i];
        }
        let cap = self.delta * d as f64 * 1e6;
        if trace > cap {
            let s = cap / trace;
            self.p.iter_mut().for_each(|v| *v *= s);
        }
        if !trace.is_finite() || self.theta.iter().any(|t| !t.is_finite()) {
            return self.reset();
        }
        self.updates += 1;
    }

    fn reset(&mut self) {
        self.resets += 1;
        tracing::warn!(
            resets = self.resets,
            "predictor: RLS state went non-finite; reset"
        );
        self.restart();
    }
}
