//! How big a pool should be: the policies `shoal bench placement` compares, used by the pool
//! driver of a running hub too. Sans-IO: time and observations come in as arguments.
//!
//! - `Static`: a fixed size.
//! - `Reactive` (HPA-like): every `sync_period`, when utilization is over `scale_out_threshold`
//!   or under half the target, resize to the current sessions at `target_utilization`.
//! - `Buffer` (the Agones fleet autoscaler's buffer policy): every step, the shards the current
//!   sessions fill (packed, `ceil(sessions / quota)`, as Agones counts allocated game servers)
//!   plus a fixed `static_size` spare shards. Agones keeps those spares as idle game servers;
//!   this pool spreads clients over its warm shards, so the spare is the same room spread over
//!   them. (Agones syncs every 30 s by default; looking every step is the stronger baseline.)
//! - `Predictive`: every step, the sessions expected one shard start-up (the lead) ahead —
//!   current sessions, minus those expected to end (exponential sessions with the mean from
//!   Little's law), plus the arrivals the demand predictor forecasts — plus a margin of
//!   [`PREDICTIVE_Z`] standard deviations of that forecast's error, packed into shards at their
//!   full session quota. The standard deviation is the larger of the counting noise (Poisson
//!   arrivals over the lead, binomial departures) and the error its own forecasts have had once
//!   they came due (EWMA of the squared error, about 20 steps). The margin never exceeds the
//!   headroom `target_utilization` would give (at small loads it is the bound), and the size
//!   never falls below the current need. Scale-out looks from the lead to one step past it (the
//!   next decision's shards are ready a step later); what the forecast needs up to `plan_ahead`
//!   is *kept* (not started): the size only falls to what that longer horizon still needs, so
//!   the pool scales in conservatively.
//!
//! Why a measured margin instead of `target_utilization`'s fixed headroom: the pool stops a
//! shard only once it is idle, and clients spread over every warm shard, so under load a shard
//! is almost never idle and a pool's cost is about its high-water mark. A fixed 30 % headroom
//! is paid for from the peak on; the forecast's error at the lead is a few percent of it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Pool;
use crate::hub::predictor::{DemandPredictor, Guarded, OnlineRegression};

/// Which policy sizes the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    Static,
    Reactive,
    /// Agones-style static warm buffer.
    Buffer,
    Predictive,
}

impl Policy {
    pub fn name(self) -> &'static str {
        match self {
            Policy::Static => "static",
            Policy::Reactive => "reactive",
            Policy::Buffer => "buffer",
            Policy::Predictive => "predictive",
        }
    }
}

/// Settings of a [`Scaler`].
#[derive(Debug, Clone, Copy)]
pub struct ScalerConfig {
    pub policy: Policy,
    /// `Static`: the size. `Buffer`: the spare shards kept above the packed need (Agones'
    /// `bufferSize`).
    pub static_size: u32,
    pub target_utilization: f64,
    pub sync_period: Duration,
    pub scale_out_threshold: f64,
    /// Length of one observation step (arrivals are counted per step).
    pub step: Duration,
    /// A shard's start-up time: the least the predictive policy looks ahead.
    pub startup: Duration,
    /// How far ahead the predictive policy keeps capacity for (at least the start-up).
    pub plan_ahead: Duration,
    /// Mean session length before Little's law has measured one.
    pub initial_mean_session: Duration,
}

/// Decides the desired size of one pool, step by step.
pub struct Scaler {
    cfg: ScalerConfig,
    predictor: Guarded<OnlineRegression>,
    next_sync: Option<Instant>,
    /// Mean session duration in seconds from Little's law (sessions / arrival rate), smoothed.
    mean_session_s: f64,
    last_forecast: f64,
    /// Predictive: steps seen, and its session forecasts at the lead by the step they are for.
    steps: u64,
    due: VecDeque<(u64, f64)>,
    /// Predictive: EWMA of the squared error of those forecasts once one has come due.
    err_sq: Option<f64>,
}

/// Predictive: standard deviations of the session forecast's error kept as headroom. On the
/// bench's traces the counting noise is the larger deviation nearly always, so this multiple
/// also has to carry the forecaster's lag at a surge's onset: 3 leaves a few cold admissions at
/// a flash crowd's onset with 5 s start-ups (7 of 8 seeds), 4 none, for about 1 % more
/// shard-seconds (`shoal bench placement --seed N --startup-ms 5000`).
pub const PREDICTIVE_Z: f64 = 4.0;
/// Predictive: forgetting of the squared forecast errors (about 20 steps).
const ERR_KEEP: f64 = 0.95;

impl Scaler {
    pub fn new(cfg: ScalerConfig) -> Self {
        Self {
            predictor: Guarded::new(OnlineRegression::new(Self::lead_steps(&cfg))),
            cfg,
            next_sync: None,
            mean_session_s: cfg.initial_mean_session.as_secs_f64().clamp(1.0, 3600.0),
            last_forecast: 0.0,
            steps: 0,
            due: VecDeque::new(),
            err_sq: None,
        }
    }

    /// The lead time in whole steps: a shard started now takes clients this many steps later.
    pub fn lead_steps(cfg: &ScalerConfig) -> u32 {
        let steps = cfg.startup.as_secs_f64() / cfg.step.as_secs_f64().max(1e-3);
        (steps.ceil() as u32).max(1)
    }

    /// The planning horizon in whole steps (at least [`Scaler::lead_steps`]).
    pub fn plan_steps(cfg: &ScalerConfig) -> u32 {
        let steps = cfg.plan_ahead.as_secs_f64() / cfg.step.as_secs_f64().max(1e-3);
        (steps.ceil().min(3600.0) as u32).max(Self::lead_steps(cfg))
    }

    /// Sessions expected one lead time ahead (predictive policy; 0 otherwise).
    pub fn forecast(&self) -> f64 {
        self.last_forecast
    }

    pub fn mean_session_s(&self) -> f64 {
        self.mean_session_s
    }

    /// One step: `arrivals` in the step that just ended, `sessions` open now. Sets the pool's
    /// desired size when the policy decides to.
    pub fn step(&mut self, pool: &mut Pool, arrivals: f64, sessions: f64, now: Instant) {
        let rate = arrivals.max(0.0) / self.cfg.step.as_secs_f64().max(1e-3);
        if rate > 0.0 && sessions > 0.0 {
            let w = (sessions / rate).clamp(1.0, 3600.0);
            self.mean_session_s = 0.95 * self.mean_session_s + 0.05 * w;
        }
        let c = self.cfg;
        match c.policy {
            Policy::Static => pool.set_desired(c.static_size),
            Policy::Buffer => {
                let need = (sessions.max(0.0) / pool.shard_sessions().max(1) as f64).ceil();
                let need = need.min(f64::from(u32::MAX)) as u32;
                pool.set_desired(need.saturating_add(c.static_size));
            }
            Policy::Reactive => {
                if self.next_sync.is_none_or(|t| now >= t) {
                    self.next_sync = Some(now + c.sync_period);
                    let capacity = pool.warm_shards().max(1) as f64 * pool.shard_sessions() as f64;
                    let util = sessions / capacity;
                    if util > c.scale_out_threshold || util < c.target_utilization * 0.5 {
                        pool.set_desired(pool.shards_for(sessions, c.target_utilization));
                    }
                }
            }
            Policy::Predictive => self.predictive(pool, arrivals, sessions),
        }
    }

    /// The predictive policy's step (module doc).
    fn predictive(&mut self, pool: &mut Pool, arrivals: f64, sessions: f64) {
        let c = self.cfg;
        self.steps += 1;
        // Score the forecasts made for this step.
        while let Some(&(t, f)) = self.due.front() {
            if t > self.steps {
                break;
            }
            self.due.pop_front();
            if t == self.steps {
                let e2 = (sessions - f).powi(2);
                let smoothed = self
                    .err_sq
                    .map_or(e2, |v| ERR_KEEP * v + (1.0 - ERR_KEEP) * e2);
                self.err_sq = smoothed.is_finite().then_some(smoothed);
            }
        }
        self.predictor.observe(arrivals);
        let (lead, plan) = (Self::lead_steps(&c), Self::plan_steps(&c));
        // Sessions present h steps ahead: today's survivors plus the forecast arrivals that are
        // still there (exponential session lengths).
        let keep = (-c.step.as_secs_f64() / self.mean_session_s).exp();
        let out_until = lead + 1;
        let (mut present, mut arriving) = (sessions, 0.0);
        let (mut out_peak, mut kept_peak) = (sessions, sessions);
        for h in 1..=plan.max(out_until) {
            let a = self.predictor.forecast(h);
            present = present * keep + a;
            if h <= lead {
                arriving += a;
            }
            if h == lead {
                self.last_forecast = present;
                self.due.push_back((self.steps + u64::from(lead), present));
            }
            if h >= lead && h <= out_until {
                out_peak = out_peak.max(present);
            }
            if h >= lead && h <= plan {
                kept_peak = kept_peak.max(present);
            }
        }
        // The forecast's uncertainty at the lead: counting noise (Poisson arrivals, binomial
        // departures) or, when larger, the error the forecasts have had.
        let survive = keep.powi(i32::try_from(lead).unwrap_or(i32::MAX));
        let noise = arriving + sessions * survive * (1.0 - survive);
        let var = self.err_sq.map_or(noise, |e| e.max(noise));
        let margin = PREDICTIVE_Z * var.sqrt();
        let util = c.target_utilization.clamp(0.05, 1.0);
        let with_margin = |peak: f64| (peak + margin).min(peak / util);
        let out = pool.shards_for(with_margin(out_peak), 1.0);
        let kept = pool.shards_for(with_margin(kept_peak), 1.0);
        pool.set_desired(out.max(kept.min(pool.desired())));
    }
}
