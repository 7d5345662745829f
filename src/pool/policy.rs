//! How big a pool should be: the three policies `shoal bench placement` compares, used by the
//! pool driver of a running hub too. Sans-IO: time and observations come in as arguments.
//!
//! - `Static`: a fixed size.
//! - `Reactive` (HPA-like): every `sync_period`, when utilization is over `scale_out_threshold`
//!   or under half the target, resize to the current sessions at `target_utilization`.
//! - `Predictive`: every step, resize to the sessions expected one shard start-up (the lead)
//!   ahead — current sessions, minus those expected to end (Little's law), plus the arrivals
//!   the demand predictor forecasts — never below the current need.

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
    /// A shard's start-up time: how far ahead the predictive policy looks.
    pub startup: Duration,
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

    /// Arrivals expected over the next lead time (predictive policy; 0 otherwise).
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
                let lead = Self::lead_steps(&c);
                let arriving: f64 = (1..=lead).map(|h| self.predictor.forecast(h)).sum();
                self.last_forecast = arriving;
                let lead_s = f64::from(lead) * c.step.as_secs_f64();
                let leaving = sessions * (lead_s / self.mean_session_s).min(1.0);
                let expected = (sessions - leaving + arriving).max(sessions);
                pool.set_desired(pool.shards_for(expected, c.target_utilization));
            }
        }
    }
}
