//! How big a pool should be: the three policies `shoal bench placement` compares, used by the
//! pool driver of a running hub too. Sans-IO: time and observations come in as arguments.
//!
//! - `Static`: a fixed size.
//! - `Reactive` (HPA-like): every `sync_period`, when utilization is over `scale_out_threshold`
//!   or under half the target, resize to the current sessions at `target_utilization`.
//! - `Predictive`: every step, resize to the most sessions expected at any point from one shard
//!   start-up (the lead) to `plan_ahead` ahead — current sessions, minus those expected to end
//!   (exponential sessions with the mean from Little's law), plus the arrivals the demand
//!   predictor forecasts — never below the current need. Looking past the lead is what makes it
//!   scale in conservatively: capacity the forecast needs within `plan_ahead` is kept.

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
    Predictive,
}

/// Settings of a [`Scaler`].
#[derive(Debug, Clone, Copy)]
pub struct ScalerConfig {
    pub policy: Policy,
    /// `Static`: the size.
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
}

impl Scaler {
    pub fn new(cfg: ScalerConfig) -> Self {
        Self {
            predictor: Guarded::new(OnlineRegression::new(Self::lead_steps(&cfg))),
            cfg,
            next_sync: None,
            mean_session_s: cfg.initial_mean_session.as_secs_f64().clamp(1.0, 3600.0),
            last_forecast: 0.0,
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
            Policy::Predictive => {
                self.predictor.observe(arrivals);
                let (lead, plan) = (Self::lead_steps(&c), Self::plan_steps(&c));
                // Sessions present h steps ahead: today's survivors plus the forecast arrivals
                // that are still there (exponential session lengths).
                let keep = (-c.step.as_secs_f64() / self.mean_session_s).exp();
                let (mut present, mut peak) = (sessions, sessions);
                for h in 1..=plan {
                    present = present * keep + self.predictor.forecast(h);
                    if h == lead {
                        self.last_forecast = present;
                    }
                    if h >= lead {
                        peak = peak.max(present);
                    }
                }
                pool.set_desired(pool.shards_for(peak, c.target_utilization));
            }
        }
    }
}
