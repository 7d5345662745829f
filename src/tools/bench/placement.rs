//! `shoal bench placement --trace ramp|diurnal|flash`: a deterministic, trace-driven run on
//! virtual time of the real pool ([`crate::pool::Pool`]) and predictor
//! ([`crate::hub::predictor`]) code — no sockets — comparing three policies on the same trace:
//!
//! - `static`: a fixed pool sized for the trace's mean load;
//! - `reactive`: HPA-like — every `sync_period` (15 s, HPA's default) the pool is resized to the
//!   current sessions at the target utilization if utilization is over the threshold (scale out)
//!   or well under it (scale in);
//! - `predictive`: every step the pool is resized to the sessions the predictor expects one
//!   shard start-up (the lead time) ahead, never below the current need.
//!
//! All three share the pool's own rules: a client that finds no warm room starts a shard on
//! demand and waits for it (a *cold admission*), idle shards stop only after the idle period
//! and the minimum lifespan. Time to first byte of an admission is the warm TTFB measured on a
//! real embedded cluster plus, when cold, the wait for the shard, whose start-up cost is also
//! measured (a real shard child process, spawned until it serves).
//!
//! Figures per policy: `p99_ttfb_ms`, `cold_admissions`, `shard_seconds`; for the predictor its
//! MAE at the lead horizon on the second half of the trace next to the naive baselines'.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hub::predictor::{self, traces};
use crate::ids::{GroupId, ShardId};
use crate::pool::policy::{Policy, Scaler, ScalerConfig};
use crate::pool::{Admission, Pool, PoolAction, PoolConfig, Quota};

/// Which trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Trace {
    Ramp,
    Diurnal,
    Flash,
}

impl Trace {
    pub fn name(self) -> &'static str {
        match self {
            Trace::Ramp => "ramp",
            Trace::Diurnal => "diurnal",
            Trace::Flash => "flash",
        }
    }

    /// Arrivals per second, deterministic for a seed.
    pub fn arrivals(self, steps: usize, seed: u64) -> Vec<f64> {
        self.series(steps, seed).counts
    }

    /// Arrivals per second and their expected value, deterministic for a seed.
    pub fn series(self, steps: usize, seed: u64) -> traces::Series {
        let raw = match self {
            Trace::Ramp => traces::ramp_series(steps, seed),
            Trace::Diurnal => traces::diurnal_series(steps, seed),
            Trace::Flash => traces::flash_series(steps, seed),
        };
        // The generators count arrivals per step in the hundreds to thousands; a step here is
        // one second of a single group's traffic.
        let scale = |v: Vec<f64>| v.into_iter().map(|a| a / ARRIVAL_SCALE).collect();
        traces::Series {
            rate: scale(raw.rate),
            counts: scale(raw.counts),
        }
    }
}

const ARRIVAL_SCALE: f64 = 100.0;

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub trace: Trace,
    pub steps: usize,
    pub seed: u64,
    /// Measured: from starting a shard to it taking clients.
    pub startup: Duration,
    /// Measured: first byte to a client admitted on a warm shard.
    pub warm_ttfb: Duration,
    pub mean_session: Duration,
    pub shard_sessions: u64,
    pub target_utilization: f64,
    /// Reactive: how often it looks, and the utilization over which it scales out.
    pub sync_period: Duration,
    pub scale_out_threshold: f64,
    /// Predictive: how far ahead it keeps capacity for.
    pub plan_ahead: Duration,
}

impl SimOptions {
    pub fn new(trace: Trace, startup: Duration, warm_ttfb: Duration) -> Self {
        Self {
            trace,
            steps: 1800,
            seed: 7,
            startup,
            warm_ttfb,
            mean_session: Duration::from_secs(60),
            shard_sessions: 50,
            target_utilization: 0.7,
            sync_period: Duration::from_secs(15),
            scale_out_threshold: 0.8,
            plan_ahead: Duration::from_secs(10),
        }
    }
}

/// What one policy did on the trace.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigure {
    pub policy: Policy,
    pub p50_ttfb_ms: f64,
    pub p99_ttfb_ms: f64,
    pub cold_admissions: u64,
    pub admissions: u64,
    /// Admissions refused because the pool was at its maximum.
    pub refused: u64,
    pub shard_seconds: f64,
    pub peak_shards: u32,
    pub shards_started: u64,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementFigure {
    pub scenario: &'static str,
    pub trace: Trace,
    pub steps: usize,
    pub startup_ms: f64,
    pub warm_ttfb_ms: f64,
    pub static_: PolicyFigure,
    pub reactive: PolicyFigure,
    pub predictive: PolicyFigure,
    /// The learned demand model's MAE (arrivals per step) at the planning horizon
    /// (`plan_steps`), scored on the second half of the trace (held out: the model has only
    /// seen what came before each forecast).
    pub mae: f64,
    /// The better of the naive baselines (last value, population mean) on the same data.
    pub naive_mae: f64,
    pub last_value_mae: f64,
    pub mean_mae: f64,
    /// The same at the lead horizon (`lead_steps`).
    pub lead_mae: f64,
    pub lead_naive_mae: f64,
    /// The noise floor: MAE of an oracle that knows the trace's expected arrivals exactly (the
    /// Poisson counting noise no model can forecast).
    pub oracle_mae: f64,
    pub lead_steps: u32,
    pub plan_steps: u32,
    pub p99_ratio: f64,
    pub shard_seconds_ratio: f64,
    pub mae_ratio: f64,
    pub goal_met: bool,
}

/// A seeded exponential duration (the generator's uniform draws).
fn exp_duration(rng: &mut traces::SplitMix64, mean: Duration) -> Duration {
    let u = rng.uniform().clamp(1e-12, 1.0 - 1e-12);
    mean.mul_f64(-u.ln()).min(mean * 20)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One simulated step is one second.
const STEP: Duration = Duration::from_secs(1);

fn scaler_config(o: &SimOptions, policy: Policy, static_size: u32) -> ScalerConfig {
    ScalerConfig {
        policy,
        static_size,
        target_utilization: o.target_utilization,
        sync_period: o.sync_period,
        scale_out_threshold: o.scale_out_threshold,
        step: STEP,
        startup: o.startup,
        plan_ahead: o.plan_ahead,
        initial_mean_session: o.mean_session,
    }
}

/// Runs one policy over the arrivals.
pub fn simulate(o: &SimOptions, policy: Policy, arrivals: &[f64]) -> PolicyFigure {
    let t0 = crate::clock::now();
    let step = STEP;
    let cfg = PoolConfig {
        startup: o.startup,
        min_lifespan: Duration::from_secs(60),
        idle_stop_after: Duration::from_secs(30),
        scale_in_step: Duration::from_secs(5),
        drain_grace: Duration::from_secs(2),
        min_shards: 1,
        max_shards: 256,
        quota: Quota {
            sessions: o.shard_sessions,
            ..Quota::default()
        },
    };
    let mut pool = Pool::new(GroupId(0), cfg, 0, t0);
    let mean_s = o.mean_session.as_secs_f64();
    let static_size = {
        let mean_arrivals = arrivals.iter().sum::<f64>() / arrivals.len().max(1) as f64;
        pool.shards_for(mean_arrivals * mean_s, o.target_utilization)
    };
    let mut scaler = Scaler::new(scaler_config(o, policy, static_size));
    let mut last_arrivals = 0.0;
    let mut rng = traces::SplitMix64::new(o.seed ^ 0x5eed);
    let mut starting: Vec<(Instant, ShardId)> = Vec::new();
    let mut departures: BinaryHeap<Reverse<(Instant, u32)>> = BinaryHeap::new();
    let mut ttfb_ms: Vec<f64> = Vec::new();
    let (mut refused, mut shard_seconds, mut peak) = (0u64, 0.0f64, 0u32);
    let mut carry = 0.0f64;
    for (k, &a) in arrivals.iter().enumerate() {
        let now = t0 + step * k as u32;
        // Shards whose start-up finished; sessions that ended.
        starting.retain(|&(ready, id)| {
            if ready <= now {
                let _ = pool.handle_started(id, ready);
                false
            } else {
                true
            }
        });
        while departures.peek().is_some_and(|Reverse((t, _))| *t <= now) {
            if let Some(Reverse((t, id))) = departures.pop() {
                pool.handle_departure(ShardId(id), t);
            }
        }
        // The policy sees the step that just ended.
        let sessions = pool.total_sessions() as f64;
        scaler.step(&mut pool, last_arrivals, sessions, now);
        pool.handle_timeout(now);
        // This second's arrivals, spread over it.
        carry += a.max(0.0);
        let n = carry.floor() as u32;
        carry -= f64::from(n);
        for i in 0..n {
            let at = now + step.mul_f64(f64::from(i) / f64::from(n.max(1)));
            let wait = match pool.admit(at) {
                Admission::Warm(id) => Some((id, Duration::ZERO)),
                Admission::Cold { shard, ready_at } => {
                    Some((shard, ready_at.saturating_duration_since(at)))
                }
                Admission::Full => None,
            };
            match wait {
                Some((id, wait)) => {
                    ttfb_ms.push((o.warm_ttfb + wait).as_secs_f64() * 1e3);
                    let end = at + exp_duration(&mut rng, o.mean_session);
                    departures.push(Reverse((end, id.0)));
                }
                None => refused += 1,
            }
            // Shards started for cold clients.
            drain_starts(&mut pool, &mut starting, at, o.startup);
        }
        drain_starts(&mut pool, &mut starting, now, o.startup);
        last_arrivals = a;
        let live = pool.live_shards();
        peak = peak.max(live);
        shard_seconds += f64::from(live) * step.as_secs_f64();
    }
    ttfb_ms.sort_by(|a, b| a.total_cmp(b));
    let c = pool.counters();
    PolicyFigure {
        policy,
        p50_ttfb_ms: percentile(&ttfb_ms, 0.5),
        p99_ttfb_ms: percentile(&ttfb_ms, 0.99),
        cold_admissions: c.cold_admissions,
        admissions: ttfb_ms.len() as u64,
        refused,
        shard_seconds,
        peak_shards: peak,
        shards_started: c.started,
    }
}

fn drain_starts(
    pool: &mut Pool,
    starting: &mut Vec<(Instant, ShardId)>,
    now: Instant,
    startup: Duration,
) {
    while let Some(a) = pool.poll_action() {
        if let PoolAction::Start { shard } = a {
            starting.push((now + startup, shard));
        }
    }
}

/// Runs the three policies on one trace and the predictor's accuracy check.
pub fn run(o: &SimOptions) -> PlacementFigure {
    let series = o.trace.series(o.steps, o.seed);
    let arrivals = series.counts;
    let static_ = simulate(o, Policy::Static, &arrivals);
    let reactive = simulate(o, Policy::Reactive, &arrivals);
    let predictive = simulate(o, Policy::Predictive, &arrivals);
    // The horizons the predictive policy forecasts at.
    let cfg = scaler_config(o, Policy::Predictive, 1);
    let (lead, plan) = (Scaler::lead_steps(&cfg), Scaler::plan_steps(&cfg));
    let warmup = arrivals.len() / 2;
    let maes = |h: u32| {
        let mut learned = predictor::OnlineRegression::new(h);
        let mae = predictor::demand_mae(&mut learned, &arrivals, h, warmup);
        let last = predictor::demand_mae(&mut predictor::LastValue::new(), &arrivals, h, warmup);
        let mean =
            predictor::demand_mae(&mut predictor::PopulationMean::new(), &arrivals, h, warmup);
        (mae, last, mean)
    };
    let (mae, last_value_mae, mean_mae) = maes(plan);
    let naive_mae = last_value_mae.min(mean_mae);
    let (lead_mae, lead_last, lead_mean) = maes(lead);
    let held_out = arrivals.len() - warmup;
    let oracle_mae = series.rate[warmup..]
        .iter()
        .zip(&arrivals[warmup..])
        .map(|(r, y)| (r - y).abs())
        .sum::<f64>()
        / held_out.max(1) as f64;
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::INFINITY };
    let p99_ratio = ratio(predictive.p99_ttfb_ms, reactive.p99_ttfb_ms);
    let shard_seconds_ratio = ratio(predictive.shard_seconds, reactive.shard_seconds);
    let mae_ratio = ratio(mae, naive_mae);
    PlacementFigure {
        scenario: "placement",
        trace: o.trace,
        steps: o.steps,
        startup_ms: o.startup.as_secs_f64() * 1e3,
        warm_ttfb_ms: o.warm_ttfb.as_secs_f64() * 1e3,
        goal_met: p99_ratio <= 0.5 && shard_seconds_ratio <= 1.2 && mae_ratio <= 0.7,
        static_,
        reactive,
        predictive,
        mae,
        naive_mae,
        last_value_mae,
        mean_mae,
        lead_mae,
        lead_naive_mae: lead_last.min(lead_mean),
        oracle_mae,
        lead_steps: lead,
        plan_steps: plan,
        p99_ratio,
        shard_seconds_ratio,
        mae_ratio,
    }
}

/// Measures a shard's start-up cost: a shard server spawned as a child process (key material,
/// TLS configuration, sockets bound) until it reports ready. Median of `rounds`.
pub async fn measure_startup(
    exe: &std::path::Path,
    rounds: usize,
) -> Result<Duration, super::BenchError> {
    let spec = super::ServerSpec::Shoal {
        prefill_tickets: 0,
        store_entries: 1024,
        rate_hz: 100,
        chunk_bytes: 1024,
    };
    let mut samples = Vec::new();
    for _ in 0..rounds.max(1) {
        let started = crate::clock::now();
        let child = super::ChildServer::spawn(exe, &spec).await?;
        samples.push(crate::clock::since(started));
        child.stop().await;
    }
    samples.sort();
    Ok(samples[samples.len() / 2])
}

/// Measures the first byte to a client placed on a warm shard: a real embedded cluster on
/// loopback, fresh clients subscribing. Median of `clients`.
pub async fn measure_warm_ttfb(clients: usize) -> Result<Duration, super::BenchError> {
    use crate::client::{Client, ClientOptions};
    use crate::ids::{ClientId, StreamName};
    let load = |e: &dyn std::fmt::Display| super::BenchError::Load(e.to_string());
    let mut cfg = crate::cluster::config::Config::default();
    cfg.hub.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let material = crate::cluster::Material::generate(&cfg.cluster).map_err(|e| load(&e))?;
    let ca = material.ca.clone();
    let cluster = crate::cluster::Cluster::start(&cfg, material).map_err(|e| load(&e))?;
    let stream = StreamName::new("synth/placement").map_err(|e| load(&e))?;
    let mut samples = Vec::new();
    for i in 0..clients.max(1) {
        let id = ClientId::new(format!("placement-{i}")).map_err(|e| load(&e))?;
        let client = Client::new(
            cluster.hub.addr(),
            ClientOptions::new(cfg.cluster.clone(), ca.clone(), id),
        )
        .map_err(|e| load(&e))?;
        let mut sub = client.subscribe(&stream).await.map_err(|e| load(&e))?;
        let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
        if !matches!(first, Ok(Some(Ok(_)))) {
            return Err(load(&"no first chunk within 5 s"));
        }
        samples.push(Duration::from_micros(sub.stats().ttfb_us));
    }
    cluster.shutdown().await;
    samples.sort();
    Ok(samples[samples.len() / 2])
}
