//! The prior of the learned demand model: a bank of local-linear-trend Kalman filters.
//!
//! Each filter tracks a level and a damped trend, `l' = l + t`, `t' = φ t`, observed as
//! `y = l + v` with counting noise, `Var v = κ · max(l, 1)`: κ = 1 for Poisson arrivals; the
//! bank learns κ online from the data's second differences (no filter's assumptions enter it),
//! so overdispersed traffic or values in other units (load, scaled counts) are smoothed as much
//! as their noise calls for. The trend filters
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

    /// One observation, with counting noise `dispersion` per unit of level.
    fn step(&mut self, y: f64, (q, phi): (f64, f64), dispersion: f64) {
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

    /// The lowest and highest forecast `h` steps ahead among the filters the bank currently
    /// believes: those holding at least `min_weight` of its weight (the heaviest always counts).
    pub(super) fn believed_range(&self, h: u32, min_weight: f64) -> (f64, f64) {
        let heaviest = self.weights.iter().copied().fold(0.0, f64::max);
        self.each(h)
            .into_iter()
            .zip(self.weights)
            .filter(|&(_, w)| w >= min_weight.min(heaviest))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (f, _)| {
                (lo.min(f), hi.max(f))
            })
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
    /// Observations fed so far.
    observed: u64,
    /// The noise estimator's state: the last two observations, and the smoothed
    /// `|Δ²y| / √level` (κ follows from it, see [`KalmanBank::dispersion`]) with the number of
    /// samples it has seen.
    previous: [f64; 2],
    abs_d2: f64,
    d2_samples: u64,
}

/// The `|Δ²y| / √level` that goes with a noise κ: `√(12 κ / π)`.
fn abs_d2_of(k: f64) -> f64 {
    (12.0 * k / std::f64::consts::PI).sqrt()
}

impl KalmanBank {
    /// Feeds one finite, non-negative observation.
    pub(super) fn observe(&mut self, y: f64) {
        self.observed += 1;
        if self.observed == 1 {
            self.filters = SPECS.map(|(_, phi)| Filter::start(y, phi));
            // Poisson until the data says otherwise.
            self.abs_d2 = abs_d2_of(1.0);
            self.previous = [y, y];
            return;
        }
        let dispersion = self.dispersion();
        for (f, spec) in self.filters.iter_mut().zip(SPECS) {
            f.step(y, spec, dispersion);
        }
        self.learn_dispersion(y);
    }

    /// κ, the noise variance per unit of level.
    fn dispersion(&self) -> f64 {
        self.abs_d2 * self.abs_d2 * std::f64::consts::PI / 12.0
    }

    /// Learns κ from second differences, which no filter's assumptions enter: for counts
    /// around a locally linear level, `Δ²y = y − 2y₋₁ + y₋₂` has variance `6 κ level`, so
    /// `E|Δ²y| / √level = √(12 κ / π)` (half-normal). Estimating it from a filter's own
    /// innovations instead lets that filter's process noise masquerade as counting noise: a
    /// fast filter over-explains the noise, κ shrinks, and the bank ends up chasing every count.
    /// Samples are clipped at 4× the running value so a surge's kink cannot inflate it; the
    /// running value stays within what the bounds of κ allow, so neither a quiet start nor an
    /// absurd value can pin it; three zeros in a row (an idle group) say nothing about the noise
    /// per unit of level and are skipped.
    fn learn_dispersion(&mut self, y: f64) {
        let [y1, y2] = self.previous;
        self.previous = [y, y1];
        if self.observed < 3 || y == 0.0 && y1 == 0.0 && y2 == 0.0 {
            return;
        }
        let level = ((y + y1 + y2) / 3.0).max(1.0);
        let mut sample = (y - 2.0 * y1 + y2).abs() / level.sqrt();
        if !sample.is_finite() {
            return;
        }
        if self.d2_samples >= 10 {
            sample = sample.min(4.0 * self.abs_d2);
        }
        self.d2_samples += 1;
        // A plain mean until the window is full, then exponential forgetting.
        let w = (1.0 / self.d2_samples as f64).max(1.0 - DISPERSION_DECAY);
        // The bounds of κ bound it.
        self.abs_d2 = (self.abs_d2 + w * (sample - self.abs_d2))
            .clamp(abs_d2_of(DISPERSION.0), abs_d2_of(DISPERSION.1));
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
        assert!(
            (0.004..0.025).contains(&b.dispersion()),
            "{}",
            b.dispersion()
        );
    }

    #[test]
    fn the_dispersion_survives_a_flash_crowd() {
        // Poisson counts around 300, a crowd ten times that, then flat again: κ must stay near
        // 1 throughout. (Learned from the best filter's innovations it used to collapse to
        // about 0.01 after the crowd, and the bank then followed every count.)
        let mut rng = super::super::traces::SplitMix64::new(5);
        let mut b = KalmanBank::default();
        let mut seen = Vec::new();
        for t in 0..1500 {
            let u = (f64::from(t) - 500.0) / 30.0;
            let rate = if u > 0.0 {
                300.0 * (1.0 + 9.0 * u * u * (2.0 * (1.0 - u)).exp())
            } else {
                300.0
            };
            b.observe(rng.poisson(rate));
            if t % 100 == 99 {
                seen.push(b.dispersion());
            }
        }
        assert!(seen[3..].iter().all(|k| (0.5..2.0).contains(k)), "{seen:?}");
        // And the bank smooths the flat tail instead of chasing it: its weight is on filters
        // whose forecasts agree.
        let s = b.state();
        let (lo, hi) = s.believed_range(10, 0.05);
        assert!(hi - lo < 30.0, "{lo}..{hi}: {s:?}");
    }

    #[test]
    fn the_dispersion_is_learned_after_an_idle_start_and_after_garbage() {
        let mut rng = super::super::traces::SplitMix64::new(9);
        // An idle group, a constant start, absurd values: each then Poisson traffic.
        let starts: [(&[f64], usize); 3] = [
            (&[0.0; 30], 500),
            (&[7.0; 30], 1500),
            (&[0.0, 1e300, 0.0, 1e300, 5.0], 1500),
        ];
        for (start, steps) in starts {
            let mut b = KalmanBank::default();
            start.iter().for_each(|&y| b.observe(y));
            for _ in 0..steps {
                b.observe(rng.poisson(300.0));
            }
            assert!(
                (0.5..2.0).contains(&b.dispersion()),
                "{start:?}: {}",
                b.dispersion()
            );
        }
    }

    #[test]
    fn the_believed_range_leaves_out_filters_without_weight() {
        let s = BankState {
            states: [(10.0, 0.0); FILTERS],
            weights: [0.0; FILTERS],
        };
        let mut s = s;
        s.states[0] = (5.0, 0.0);
        s.states[1] = (20.0, 1.0);
        s.states[2] = (100.0, 0.0);
        s.weights[0] = 0.5;
        s.weights[1] = 0.49;
        s.weights[2] = 0.01;
        // Filter 1 is a trend (damped) filter: 20 + φ(1 − φ³)/(1 − φ) at h = 3.
        let (lo, hi) = s.believed_range(3, 0.05);
        assert_eq!(lo, 5.0);
        assert!((22.0..23.0).contains(&hi), "{hi}");
        // Everything counts at weight 0; the heaviest alone when no filter reaches the bar.
        assert_eq!(s.believed_range(3, 0.0), (5.0, 100.0));
        assert_eq!(s.believed_range(3, 0.9), (5.0, 5.0));
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
