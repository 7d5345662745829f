//! Load prediction: what a request will cost and what a shard group will be asked for next.
//!
//! Two things are predicted, each behind a trait so a placement policy can swap models:
//! - [`DemandPredictor`]: one group's demand per step (arrivals, or load units) `h` steps ahead,
//!   for horizons of seconds to minutes. The caller bins its metrics into fixed steps and calls
//!   [`DemandPredictor::observe`] once per step that ended (with the step's value), then
//!   [`DemandPredictor::forecast`] as often as it likes. No clock: a step is whatever the caller
//!   bins by, so the models are deterministic and sans-IO.
//! - [`RequestLoadPredictor`]: one request's load, bitrate × duration in kilobits, from what the
//!   request and the client's profile say ([`RequestFeatures`]). [`RequestLoadPredictor::learn`]
//!   feeds back the load the session really had when it ends.
//!
//! # Models
//! Naive baselines: [`LastValue`] and [`PopulationMean`] for demand, [`MeanLoad`] for requests.
//! The learned models are recursive least squares with forgetting (`rls.rs`), trained online:
//! - [`OnlineRegression`] (demand) learns one *direct* model per configured horizon `h`. Its
//!   prior is a bank of Kalman filters (`kalman.rs`: damped local linear trends and local
//!   levels, weighted by their recent likelihood); the RLS learns a correction to it,
//!   `y[t+h] − prior_h[t] ≈ θ_hᵀ x[t]`, over `x = [1, y[t], y[t-1], each filter's forecast for
//!   h steps, a slow EWMA level]`, each taken minus the prior and divided by the prior's level so
//!   one model fits any traffic scale. The sample for horizon `h` is learned when its target
//!   arrives `h` steps later. The correction is weighed against the prior by their recent
//!   squared errors and kept inside the range of the filters the bank currently believes (5 %
//!   of its weight or more): the correction's own track record arrives `h` steps late, and
//!   the range of *all* filters would let a correction learned on a surge ride the stale trend
//!   filters on after the surge ends. Other horizons interpolate between the two nearest
//!   trained ones. Known weakness: right after a surge ends, the trend filters still overshoot
//!   for a few steps, so callers should keep it behind [`Guarded`] and cap what they provision
//!   on it.
//! - [`OnlineLoadRegression`] (requests) regresses `ln(1 + load)` on log-features (declared and
//!   historical bitrate, historical duration, sessions seen, with presence flags) and one-hot
//!   device and region buckets; `exp` of a log-space fit estimates the conditional median, which
//!   is what minimises absolute error.
//!
//! # Accuracy
//! [`demand_mae`] replays a series: each value is first forecast from what was observed `h`
//! steps before it, then observed; the mean absolute error is taken after a warm-up. The tests
//! warm up on the first half of the [`traces`] (ramp, diurnal, flash crowd) and score the second
//! half, held out, at `h = 10` against both baselines; the request model is scored on held-out
//! requests of [`traces::requests`].
//!
//! # Safety
//! A model must never make placement worse than not predicting. Every forecast is clamped to
//! `[0, 10 × the largest value seen]`, and a non-finite one falls back to the last value.
//! Non-finite or negative inputs are ignored (demand: replaced by the last good value so steps
//! stay aligned) and counted. RLS starts from a ridge prior, caps its covariance and resets
//! (counted, logged) if its state goes non-finite. [`Guarded`] wraps any [`DemandPredictor`]
//! — including ones written elsewhere — and turns a NaN, infinite or negative forecast into the
//! non-predictive fallback (the last value), counting and logging each; nothing here panics on
//! data.

mod kalman;
mod rls;
pub mod traces;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing::warn;

use kalman::{BankState, KalmanBank};
use rls::Rls;

/// Forecasts one group's demand per step (e.g. arrivals per second) from its history.
pub trait DemandPredictor: Send {
    /// The value observed in the step that just ended (arrivals, or load units).
    fn observe(&mut self, value: f64);
    /// Forecast for the step `steps_ahead` (>= 1) steps after the last observed one. Always
    /// finite and >= 0 (implementations sanitize; see [`Guarded`]).
    fn forecast(&self, steps_ahead: u32) -> f64;
    fn name(&self) -> &'static str;
}

fn usable(v: f64) -> bool {
    v.is_finite() && v >= 0.0
}

/// Naive baseline: tomorrow looks like today (the last observation).
#[derive(Debug, Clone, Default)]
pub struct LastValue {
    last: f64,
}

impl LastValue {
    pub fn new() -> LastValue {
        LastValue::default()
    }
}

impl DemandPredictor for LastValue {
    fn observe(&mut self, value: f64) {
        if usable(value) {
            self.last = value;
        }
    }

    fn forecast(&self, _steps_ahead: u32) -> f64 {
        self.last
    }

    fn name(&self) -> &'static str {
        "last-value"
    }
}

/// Naive baseline: the mean of everything observed.
#[derive(Debug, Clone, Default)]
pub struct PopulationMean {
    mean: f64,
    n: u64,
}

impl PopulationMean {
    pub fn new() -> PopulationMean {
        PopulationMean::default()
    }
}

impl DemandPredictor for PopulationMean {
    fn observe(&mut self, value: f64) {
        if usable(value) {
            self.n += 1;
            self.mean += (value - self.mean) / self.n as f64;
        }
    }

    fn forecast(&self, _steps_ahead: u32) -> f64 {
        self.mean
    }

    fn name(&self) -> &'static str {
        "population-mean"
    }
}

/// Settings of [`OnlineRegression`]. The defaults suit steps of about a second.
#[derive(Debug, Clone, PartialEq)]
pub struct RegressionConfig {
    /// Horizons (in steps) with their own model; others interpolate. Default 1, 2, 5, 10, 20,
    /// 30, 60.
    pub horizons: Vec<u32>,
    /// RLS forgetting factor λ: the models remember about `1 / (1 − λ)` steps. Default 0.99.
    pub forgetting: f64,
    /// RLS prior covariance δ (larger learns faster at first). Default 10.
    pub delta: f64,
}

impl Default for RegressionConfig {
    fn default() -> Self {
        RegressionConfig {
            horizons: vec![1, 2, 5, 10, 20, 30, 60],
            forgetting: 0.99,
            delta: 10.0,
        }
    }
}

/// EWMA factor of the slow level.
const SLOW_ALPHA: f64 = 0.03;
/// `1`, `y[t]`, `y[t-1]`, one forecast per Kalman filter, the slow level.
const DIM: usize = 3 + kalman::FILTERS + 1;
/// Forecasts never exceed this multiple of the largest value seen.
const CLAMP_FACTOR: f64 = 10.0;
/// Forgetting of the squared errors that weigh the correction against the prior (about 20
/// steps).
const ERR_DECAY: f64 = 0.95;

/// Filters with less of the bank's weight than this do not widen the correction's trust region.
const TRUST_WEIGHT: f64 = 0.05;

/// What the features of one step are computed from.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    y: f64,
    prev: f64,
    bank: BankState,
    slow: f64,
}

impl Snapshot {
    /// Features and targets are relative to the bank's level.
    fn scale(&self) -> f64 {
        self.bank.level().max(1.0)
    }

    /// The prior forecast `h` steps ahead: the Kalman bank's.
    fn prior(&self, h: u32) -> f64 {
        self.bank.forecast(h)
    }

    /// Features for correcting the prior `h` steps ahead: each signal minus the prior, divided
    /// by the scale (differences keep the features far from collinear).
    fn features(&self, h: u32) -> [f64; DIM] {
        let (s, p) = (self.scale(), self.prior(h));
        let mut x = [0.0; DIM];
        x[0] = 1.0;
        x[1] = (self.y - p) / s;
        x[2] = (self.prev - p) / s;
        for (i, f) in self.bank.each(h).into_iter().enumerate() {
            x[3 + i] = (f - p) / s;
        }
        x[DIM - 1] = (self.slow - p) / s;
        x
    }
}

/// Per horizon: how well the prior alone and the corrected forecast did lately (EWMA of squared
/// scaled errors), to weigh the correction.
#[derive(Debug, Clone, Copy)]
struct Track {
    prior: f64,
    corrected: f64,
}

impl Default for Track {
    fn default() -> Self {
        // Until errors are seen, trust the prior fully.
        Track {
            prior: 1e-6,
            corrected: 1.0,
        }
    }
}

impl Track {
    /// Weight of the correction: inverse-MSE combination of the two forecasts.
    fn weight(&self) -> f64 {
        let w = self.prior / (self.prior + self.corrected);
        if w.is_finite() {
            w.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// The learned demand model: a direct multi-horizon RLS over smoother forecasts (see the module
/// docs).
#[derive(Debug, Clone)]
pub struct OnlineRegression {
    config: RegressionConfig,
    /// Sorted, deduplicated, >= 1; `models[i]` predicts `horizons[i]` steps ahead.
    horizons: Vec<u32>,
    models: Vec<Rls>,
    tracks: Vec<Track>,
    bank: KalmanBank,
    now: Snapshot,
    /// Snapshots of the last `max horizon` steps, newest last.
    pending: VecDeque<Snapshot>,
    observed: u64,
    max_seen: f64,
    bad_inputs: u64,
}

impl Default for OnlineRegression {
    fn default() -> Self {
        OnlineRegression::with_config(RegressionConfig::default())
    }
}

impl OnlineRegression {
    /// The default model with a dedicated model for `horizon` steps as well (the horizon the
    /// caller mostly asks for, e.g. a shard's start-up time in steps).
    pub fn new(horizon: u32) -> OnlineRegression {
        let mut config = RegressionConfig::default();
        config.horizons.push(horizon);
        OnlineRegression::with_config(config)
    }

    /// Out-of-range settings fall back to the defaults.
    pub fn with_config(config: RegressionConfig) -> OnlineRegression {
        let defaults = RegressionConfig::default();
        let mut horizons: Vec<u32> = config.horizons.iter().map(|&h| h.max(1)).collect();
        horizons.sort_unstable();
        horizons.dedup();
        if horizons.is_empty() {
            horizons = defaults.horizons.clone();
        }
        let forgetting = if config.forgetting > 0.5 && config.forgetting <= 1.0 {
            config.forgetting
        } else {
            defaults.forgetting
        };
        let delta = if config.delta.is_finite() && config.delta > 0.0 {
            config.delta
        } else {
            defaults.delta
        };
        let models: Vec<Rls> = horizons
            .iter()
            .map(|_| Rls::new(vec![0.0; DIM], forgetting, delta))
            .collect();
        OnlineRegression {
            config: RegressionConfig {
                horizons: horizons.clone(),
                forgetting,
                delta,
            },
            horizons,
            tracks: vec![Track::default(); models.len()],
            models,
            bank: KalmanBank::default(),
            now: Snapshot::default(),
            pending: VecDeque::new(),
            observed: 0,
            max_seen: 0.0,
            bad_inputs: 0,
        }
    }

    /// The settings in use (after sanitizing).
    pub fn config(&self) -> &RegressionConfig {
        &self.config
    }

    /// Observations that were NaN, infinite or negative (replaced by the last good value).
    pub fn bad_inputs(&self) -> u64 {
        self.bad_inputs
    }

    /// Times a model's state went non-finite and was reset.
    pub fn resets(&self) -> u64 {
        self.models.iter().map(Rls::resets).sum()
    }

    /// The trained model's forecast for exactly `horizons[i]`, unclamped.
    fn model_forecast(&self, i: usize) -> f64 {
        let (h, model) = (self.horizons[i], &self.models[i]);
        let prior = self.now.prior(h);
        if model.updates() < DIM as u64 {
            // Too few samples for this horizon yet: the prior alone.
            return prior;
        }
        let w = self.tracks[i].weight();
        let corrected = prior + w * model.predict(&self.now.features(h)) * self.now.scale();
        // Trust region: never outside what the filters the bank believes forecast themselves,
        // or the prior (filters under the bar may pull it outside). The range of all filters
        // is too wide: right after a surge the correction learned there would ride the stale
        // trend filters on.
        let (lo, hi) = self.now.bank.believed_range(h, TRUST_WEIGHT);
        let (lo, hi) = (lo.min(prior), hi.max(prior));
        if corrected.is_finite() && lo <= hi {
            corrected.clamp(lo, hi)
        } else {
            prior
        }
    }

    fn advance(&mut self, y: f64) {
        let first = self.observed == 0;
        self.bank.observe(y);
        let s = &mut self.now;
        s.prev = if first { y } else { s.y };
        s.y = y;
        s.bank = self.bank.state();
        s.slow = if first {
            y
        } else {
            s.slow + SLOW_ALPHA * (y - s.slow)
        };
        self.observed += 1;
        self.max_seen = self.max_seen.max(y);
    }
}

impl DemandPredictor for OnlineRegression {
    fn observe(&mut self, value: f64) {
        let y = if usable(value) {
            value
        } else {
            self.bad_inputs += 1;
            if self.bad_inputs.is_power_of_two() {
                warn!(
                    bad_inputs = self.bad_inputs,
                    "predictor: ignored a NaN/negative observation"
                );
            }
            self.now.y
        };
        // Teach each horizon with the features it had `h` steps ago.
        let len = self.pending.len();
        for ((&h, model), track) in self
            .horizons
            .iter()
            .zip(&mut self.models)
            .zip(&mut self.tracks)
        {
            if let Some(snap) = len.checked_sub(h as usize).map(|i| &self.pending[i]) {
                let target = (y - snap.prior(h)) / snap.scale();
                let x = snap.features(h);
                if model.updates() >= DIM as u64 {
                    let miss = target - model.predict(&x);
                    if target.is_finite() && miss.is_finite() {
                        track.prior = ERR_DECAY * track.prior + (1.0 - ERR_DECAY) * target * target;
                        track.corrected =
                            ERR_DECAY * track.corrected + (1.0 - ERR_DECAY) * miss * miss;
                    }
                }
                model.update(&x, target);
            }
        }
        self.advance(y);
        self.pending.push_back(self.now);
        let keep = *self.horizons.last().expect("at least one horizon") as usize;
        while self.pending.len() > keep {
            self.pending.pop_front();
        }
    }

    fn forecast(&self, steps_ahead: u32) -> f64 {
        if self.observed == 0 {
            return 0.0;
        }
        let h = steps_ahead.max(1);
        let raw = match self.horizons.binary_search(&h) {
            Ok(i) => self.model_forecast(i),
            Err(0) => self.model_forecast(0),
            Err(i) if i == self.horizons.len() => self.model_forecast(i - 1),
            Err(i) => {
                let (lo, hi) = (self.horizons[i - 1], self.horizons[i]);
                let w = f64::from(h - lo) / f64::from(hi - lo);
                (1.0 - w) * self.model_forecast(i - 1) + w * self.model_forecast(i)
            }
        };
        if raw.is_finite() {
            raw.clamp(0.0, CLAMP_FACTOR * self.max_seen)
        } else {
            self.now.y
        }
    }

    fn name(&self) -> &'static str {
        "online-rls"
    }
}

/// Wraps any [`DemandPredictor`] so that its output is always usable: a NaN, infinite or
/// negative forecast becomes the non-predictive fallback (the last observed value), counted in
/// [`Guarded::fallbacks`] and logged. Bad observations are replaced by the last good value
/// before they reach the inner model, counted in [`Guarded::bad_inputs`].
#[derive(Debug)]
pub struct Guarded<P> {
    inner: P,
    last: f64,
    fallbacks: AtomicU64,
    bad_inputs: u64,
}

impl<P: DemandPredictor> Guarded<P> {
    pub fn new(inner: P) -> Guarded<P> {
        Guarded {
            inner,
            last: 0.0,
            fallbacks: AtomicU64::new(0),
            bad_inputs: 0,
        }
    }

    /// Forecasts replaced by the fallback.
    pub fn fallbacks(&self) -> u64 {
        self.fallbacks.load(Ordering::Relaxed)
    }

    /// Observations that were NaN, infinite or negative.
    pub fn bad_inputs(&self) -> u64 {
        self.bad_inputs
    }

    pub fn inner(&self) -> &P {
        &self.inner
    }

    pub fn into_inner(self) -> P {
        self.inner
    }
}

impl<P: DemandPredictor> DemandPredictor for Guarded<P> {
    fn observe(&mut self, value: f64) {
        if usable(value) {
            self.last = value;
        } else {
            self.bad_inputs += 1;
        }
        self.inner.observe(self.last);
    }

    fn forecast(&self, steps_ahead: u32) -> f64 {
        let v = self.inner.forecast(steps_ahead);
        if usable(v) {
            return v;
        }
        let n = self.fallbacks.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!(
                model = self.inner.name(),
                value = v,
                fallbacks = n,
                "predictor: unusable forecast; using the last value"
            );
        }
        self.last
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }
}

/// Mean absolute error of `p` over `series` when forecasting `steps_ahead` steps ahead: every
/// value is first forecast (from what was observed before it), then observed. The first `warmup`
/// values are only observed. Returns 0 when nothing is scored; non-finite series values are
/// observed but not scored.
pub fn demand_mae(
    p: &mut dyn DemandPredictor,
    series: &[f64],
    steps_ahead: u32,
    warmup: usize,
) -> f64 {
    let h = steps_ahead.max(1) as usize;
    // `due[t]`: the forecast of `series[t]`, made after observing `series[t - h]` (or, for the
    // first `h` values, before observing anything).
    let mut due: Vec<f64> = (0..series.len().min(h))
        .map(|j| p.forecast(j as u32 + 1))
        .collect();
    due.resize(series.len(), 0.0);
    let (mut sum, mut n) = (0.0, 0u64);
    for (t, &y) in series.iter().enumerate() {
        if t >= warmup && y.is_finite() {
            sum += (due[t] - y).abs();
            n += 1;
        }
        p.observe(y);
        if t + h < series.len() {
            due[t + h] = p.forecast(h as u32);
        }
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

pub use load::{
    MeanLoad, OnlineLoadRegression, RequestFeatures, RequestLoadPredictor, RequestModels,
    GRANT_MEMORY,
};

mod load;
