//! The prior of the learned demand model: a bank of local-linear-trend Kalman filters.
//!
//! Each filter tracks a level and a damped trend, `l' = l + t`, `t' = φ t`, observed as
//! `y = l + v` with counting noise, `Var v = κ · max(l, 1)`: κ = 1 for Poisson arrivals; the
//! bank learns κ online from its innovations, so overdispersed traffic or values in other units
//! (load, scaled counts) are smoothed as much as their noise calls for. The trend filters
//! differ only in how fast they believe the level and trend drift (process noise relative to the
//! level², from 10⁻⁶ — nearly a constant — to 10⁻²: a flash crowd); three local-level filters
//! (no trend) settle on a new level after a surge without carrying its slope on. Each filter's one-step
//! predictive log-likelihood is tracked with exponential forgetting, and the bank forecasts with
//! the filters weighted by it (Bayesian model averaging over the noise level): on flat traffic the
//! slow filters smooth the counting noise away, on a surge the fast ones take over within a few
//! steps. Nothing here can go non-finite on finite input: a non-finite state resets the filter.

/// Each filter: process noise (per step, relative to the level²) and trend damping per step.
/// Damping 0 makes a local-level filter (no trend): after a surge it settles on the new level
/// without carrying the surge's slope on.
const SPECS: [(f64, f64); 8] = [
    (1e-6, PHI),
    (1e-5, PHI),
    (1e-4, PHI),
    (1e-3, PHI),
    (1e-2, PHI),
    (1e-5, 0.0),
    (1e-4, 0.0),
    (1e-3, 0.0),
];
pub(super) const FILTERS: usize = SPECS.len();
/// Trend damping per step of the trend filters.
const PHI: f64 = 0.98;
/// Trend process noise relative to the level's.
const TREND_Q: f64 = 0.1;
/// Forgetting of the log-likelihood scores (they remember about 20 steps).
const SCORE_DECAY: f64 = 0.95;
/// Forgetting of the dispersion estimate (about 200 steps).
const DISPERSION_DECAY: f64 = 0.995;
/// Bounds of the dispersion κ.
const DISPERSION: (f64, f64) = (1e-4, 1e4);

#[derive(Debug, Clone, Copy, Default)]
struct Filter {
    level: f64,
    trend: f64,
    /// Covariance of (level, trend).
    p: [[f64; 2]; 2],
    score: f64,
}

impl Filter {
    fn start(y: f64, phi: f64) -> Filter {
        let v = y.max(1.0);
        let tv = if phi > 0.0 { v } else { 0.0 };
        Filter {
            level: y,
            trend: 0.0,
            p: [[v, 0.0], [0.0, tv]],
            score: 0.0,
        }
    }

    /// One observation; returns the innovation and its predicted variance without the noise.
    fn step(&mut self, y: f64, (q, phi): (f64, f64), dispersion: f64) -> (f64, f64, f64) {
        let scale = self.level.max(1.0);
        let q2 = if phi > 0.0 { q * TREND_Q } else { 0.0 };
        let (q1, q2) = (q * scale * scale, q2 * scale * scale);
        let p = self.p;
        // Predict: F = [[1, 1], [0, φ]], P = F P Fᵀ + Q.
        let level = self.level + self.trend;
        let trend = phi * self.trend;
        let a = p[0][0] + p[0][1] + p[1][0] + p[1][1] + q1;
        let b = phi * (p[0][1] + p[1][1]);
        let d = phi * phi * p[1][1] + q2;
        // Update with the count: Var v = κ max(level, 1).
        let s = a + dispersion * level.max(1.0);
        let innovation = y - level;
        self.score = SCORE_DECAY * self.score - 0.5 * (innovation * innovation / s + s.ln());
        let (k0, k1) = (a / s, b / s);
        self.level = level + k0 * innovation;
        self.trend = trend + k1 * innovation;
        self.p = [[(1.0 - k0) * a, (1.0 - k0) * b], [b - k1 * a, d - k1 * b]];
        let ok = self.level.is_finite()
            && self.trend.is_finite()
            && self.score.is_finite()
            && self.p.iter().flatten().all(|v| v.is_finite());
        if !ok {
            *self = Filter::start(y, phi);
        }
        (innovation, a, level.max(1.0))
    }
}

/// The bank's state after an observation: enough to forecast any horizon later.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BankState {
    /// `(level, trend)` per filter.
    states: [(f64, f64); FILTERS],
    /// Normalized weights (sum 1).
    weights: [f64; FILTERS],
}

impl BankState {
    /// `φ + φ² + … + φ^h`.
    fn damped(phi: f64, h: u32) -> f64 {
        if phi <= 0.0 {
            return 0.0;
        }
        if phi >= 1.0 {
            return f64::from(h.min(10_000));
        }
        phi * (1.0 - phi.powi(h.min(10_000) as i32)) / (1.0 - phi)
    }

    /// The weighted forecast `h` steps ahead (not clamped).
    pub(super) fn forecast(&self, h: u32) -> f64 {
        self.each(h)
            .iter()
            .zip(&self.weights)
            .map(|(f, w)| w * f)
            .sum()
    }

    /// Each filter's forecast `h` steps ahead.
    pub(super) fn each(&self, h: u32) -> [f64; FILTERS] {
        let mut out = [0.0; FILTERS];
        for ((o, (l, t)), (_, phi)) in out.iter_mut().zip(self.states).zip(SPECS) {
            *o = l + Self::damped(phi, h) * t;
        }
        out
    }

    /// The weighted level (the scale of the traffic).
    pub(super) fn level(&self) -> f64 {
        self.states
            .iter()
            .zip(&self.weights)
            .map(|(&(l, _), w)| w * l)
            .sum()
    }
}

/// The filters and their scores.
#[derive(Debug, Clone, Default)]
pub(super) struct KalmanBank {
    filters: [Filter; FILTERS],
    started: bool,
    /// κ, the noise variance per unit of level (0 until started).
    dispersion: f64,
}

impl KalmanBank {
    /// Feeds one finite, non-negative observation.
    pub(super) fn observe(&mut self, y: f64) {
        if !self.started {
            self.filters = SPECS.map(|(_, phi)| Filter::start(y, phi));
            self.started = true;
            self.dispersion = 1.0;
            return;
        }
        let best = (0..FILTERS)
            .max_by(|&a, &b| self.filters[a].score.total_cmp(&self.filters[b].score))
            .unwrap_or(0);
        let mut sample = None;
        for (i, (f, spec)) in self.filters.iter_mut().zip(SPECS).enumerate() {
            let (e, a, level) = f.step(y, spec, self.dispersion);
            if i == best {
                sample = Some((e * e - a) / level);
            }
        }
        if let Some(k) = sample.filter(|k| k.is_finite()) {
            let d = DISPERSION_DECAY * self.dispersion + (1.0 - DISPERSION_DECAY) * k;
            self.dispersion = d.clamp(DISPERSION.0, DISPERSION.1);
        }
    }

    pub(super) fn state(&self) -> BankState {
        let best = self
            .filters
            .iter()
            .map(|f| f.score)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut weights = self.filters.map(|f| (f.score - best).exp());
        let sum: f64 = weights.iter().sum();
        if sum.is_finite() && sum > 0.0 {
            weights.iter_mut().for_each(|w| *w /= sum);
        } else {
            weights = [1.0 / FILTERS as f64; FILTERS];
        }
        BankState {
            states: self.filters.map(|f| (f.level, f.trend)),
            weights,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_a_step_and_smooths_noise() {
        let mut b = KalmanBank::default();
        for i in 0..200 {
            b.observe(if i % 2 == 0 { 95.0 } else { 105.0 });
        }
        let flat = b.state().forecast(5);
        assert!((flat - 100.0).abs() < 3.0, "{flat}");
        for _ in 0..15 {
            b.observe(1000.0);
        }
        let after = b.state().forecast(1);
        assert!((after - 1000.0).abs() < 100.0, "{after}");
    }

    #[test]
    fn learns_the_dispersion_of_scaled_counts() {
        let mut rng = super::super::traces::SplitMix64::new(3);
        let mut b = KalmanBank::default();
        for _ in 0..3000 {
            b.observe(rng.poisson(400.0) / 100.0);
        }
        // Counts of mean 400 divided by 100: variance 0.04 at level 4, κ = 0.01.
        assert!((0.004..0.025).contains(&b.dispersion), "{}", b.dispersion);
    }

    #[test]
    fn survives_extremes() {
        let mut b = KalmanBank::default();
        for y in [0.0, 1e300, 0.0, 1e-300, 5.0, 1e300] {
            b.observe(y);
            let s = b.state();
            assert!(s.forecast(10).is_finite(), "{s:?}");
            assert!((s.weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        }
    }
}
