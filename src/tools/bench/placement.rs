//! `shoal bench placement --trace ramp|diurnal|flash`: a deterministic, trace-driven run on
//! virtual time of the real pool ([`crate::pool::Pool`]), scaler ([`crate::pool::policy`]) and
//! predictor ([`crate::hub::predictor`]) code — no sockets — comparing four policies on the
//! same trace and the same session lengths:
//!
//! - `static`: a fixed pool sized for the trace's mean load;
//! - `reactive`: HPA-like — every `sync_period` (15 s, HPA's default) the pool is resized to the
//!   current sessions at the target utilization if utilization is over the threshold (scale out)
//!   or well under it (scale in);
//! - `buffer`: Agones-style — every step, the shards the current sessions fill plus a fixed
//!   number of spare warm shards. Its size is chosen per trace and start-up, unless given
//!   (`SimOptions::buffer_shards`): the spare whose shard-seconds are closest to predictive's
//!   (either side; the frontier of every spare tried is in the figure). Comparable cost, not a
//!   size picked to lose: a larger buffer would buy its fewer cold admissions with more
//!   shard-seconds, and the goal's cost ratio bounds that;
//! - `predictive`: every step the pool is resized to the sessions the predictor expects from one
//!   shard start-up (the lead time) to `plan_ahead` ahead, never below the current need.
//!
//! All four share the pool's own rules: a client that finds no warm room is placed on a starting
//! shard (one is started for it if none is) and waits for it: a *cold admission*, whose wait is
//! the rest of that shard's start-up; idle shards stop only after the idle period and the
//! minimum lifespan. The first `warmup_steps` (120 s: two mean session lengths, so the sessions
//! open reach their steady state from an empty pool) are simulated but not counted.
//!
//! Figures per policy: `cold_admissions` (of `admissions`), `p999_admission_wait_ms` (the
//! 99.9th percentile over every admission of its wait for a shard, 0 when warm — it separates
//! policies even when under 1 % of admissions are cold, which p99 cannot), `shard_seconds`
//! (the cost: shards alive, starting ones included, integrated over time), and the time to first
//! byte (`p99_ttfb_ms`: the warm TTFB measured on a real embedded cluster plus the wait). Ratios
//! are predictive over reactive and over buffer; the [`Verdict`] checks them against the goals
//! (ramp and flash): cold admissions ≤ 0.2× reactive's and ≤ 0.5× buffer's at ≤ 1.1× their
//! shard-seconds, and the predictor's MAE at the plan horizon ≤ 0.7× last value's, scored on the
//! second half of the trace.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::hub::predictor::{self, traces};
use crate::ids::{GroupId, ShardId};
use crate::pool::policy::{Policy, Scaler, ScalerConfig};
use crate::pool::{Admission, Pool, PoolAction, PoolConfig, Quota};

/// Goal: predictive's cold admissions at most this times reactive's.
pub const GOAL_COLD_VS_REACTIVE: f64 = 0.2;
/// Goal: predictive's cold admissions at most this times buffer's.
pub const GOAL_COLD_VS_BUFFER: f64 = 0.5;
/// Goal: predictive's shard-seconds at most this times reactive's and buffer's.
pub const GOAL_SHARD_SECONDS: f64 = 1.1;
/// Goal: the predictor's MAE at the plan horizon at most this times last value's.
pub const GOAL_MAE_VS_LAST_VALUE: f64 = 0.7;

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

/// Where the shard start-up cost of a run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartupSource {
    /// Measured on this machine ([`measure_startup`]).
    Measured,
    /// Given on the command line (`--startup-ms`, `--startup-sweep`).
    Given,
}

/// How the buffer policy's spare was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BufferSizing {
    /// The spare whose shard-seconds are closest to predictive's on the same run.
    ClosestToPredictiveCost,
    /// `SimOptions::buffer_shards`.
    Given,
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub trace: Trace,
    pub steps: usize,
    pub seed: u64,
    /// From starting a shard to it taking clients.
    pub startup: Duration,
    pub startup_source: StartupSource,
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
    /// Buffer: the spare shards; `None` (the default) matches predictive's cost (module doc).
    pub buffer_shards: Option<u32>,
    /// Steps simulated before the figures start counting.
    pub warmup_steps: usize,
}

impl SimOptions {
    pub fn new(trace: Trace, startup: Duration, warm_ttfb: Duration) -> Self {
        Self {
            trace,
            steps: 1800,
            seed: 7,
            startup,
            startup_source: StartupSource::Measured,
            warm_ttfb,
            mean_session: Duration::from_secs(60),
            shard_sessions: 50,
            target_utilization: 0.7,
            sync_period: Duration::from_secs(15),
            scale_out_threshold: 0.8,
            plan_ahead: Duration::from_secs(10),
            buffer_shards: None,
            warmup_steps: 120,
        }
    }
}

/// What one policy did on the trace (counted steps only).
#[derive(Debug, Clone, Serialize)]
pub struct PolicyFigure {
    pub policy: Policy,
    pub admissions: u64,
    /// Admissions that found no warm room and waited for a starting shard.
    pub cold_admissions: u64,
    pub cold_fraction: f64,
    /// Percentiles over every admission of its wait for a shard (0 when warm).
    pub p99_admission_wait_ms: f64,
    pub p999_admission_wait_ms: f64,
    pub max_admission_wait_ms: f64,
    pub p50_ttfb_ms: f64,
    pub p99_ttfb_ms: f64,
    /// Admissions refused because the pool was at its maximum.
    pub refused: u64,
    pub shard_seconds: f64,
    pub peak_shards: u32,
    pub shards_started: u64,
}

/// The goals, checked (module doc). `applies`: whether this trace has goals (ramp, flash).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Verdict {
    pub applies: bool,
    pub cold_vs_reactive: bool,
    pub cold_vs_buffer: bool,
    pub shard_seconds_vs_reactive: bool,
    pub shard_seconds_vs_buffer: bool,
    pub mae_vs_last_value: bool,
    /// All of the above.
    pub met: bool,
}

/// The whole run of one trace at one start-up. Ratios are predictive over the other policy,
/// `null` where the other's figure is 0.
#[derive(Debug, Clone, Serialize)]
pub struct PlacementFigure {
    pub scenario: &'static str,
    pub trace: Trace,
    pub steps: usize,
    pub warmup_steps: usize,
    pub startup_ms: f64,
    pub startup_source: StartupSource,
    pub warm_ttfb_ms: f64,
    /// The buffer policy's spare shards, and how they were chosen.
    pub buffer_shards: u32,
    pub buffer_sizing: BufferSizing,
    /// Every spare tried when sizing it (empty when given).
    pub buffer_frontier: Vec<BufferPoint>,
    pub static_: PolicyFigure,
    pub reactive: PolicyFigure,
    pub buffer: PolicyFigure,
    pub predictive: PolicyFigure,
    pub cold_ratio_vs_reactive: Option<f64>,
    pub cold_ratio_vs_buffer: Option<f64>,
    pub shard_seconds_ratio_vs_reactive: Option<f64>,
    pub shard_seconds_ratio_vs_buffer: Option<f64>,
    pub p999_wait_ratio_vs_reactive: Option<f64>,
    pub p999_wait_ratio_vs_buffer: Option<f64>,
    /// p99 TTFB, predictive over reactive.
    pub p99_ratio: Option<f64>,
    /// The learned demand model's MAE (arrivals per step) at the planning horizon
    /// (`plan_steps`), scored on the second half of the trace (held out: the model has only
    /// seen what came before each forecast).
    pub mae: f64,
    /// The better of the naive baselines (last value, population mean) on the same data.
    pub naive_mae: f64,
    pub last_value_mae: f64,
    pub mean_mae: f64,
    pub mae_ratio: Option<f64>,
    pub mae_vs_last_value: f64,
    /// The same at the lead horizon (`lead_steps`).
    pub lead_mae: f64,
    pub lead_naive_mae: f64,
    pub lead_last_value_mae: f64,
    /// The noise floor: MAE of an oracle that knows the trace's expected arrivals exactly (the
    /// Poisson counting noise no model can forecast).
    pub oracle_mae: f64,
    pub lead_steps: u32,
    pub plan_steps: u32,
    pub verdict: Verdict,
    /// `verdict.met`.
    pub goal_met: bool,
}

/// A seeded exponential duration (the generator's uniform draws).
fn exp_duration(rng: &mut traces::SplitMix64, mean: Duration) -> Duration {
    let u = rng.uniform().clamp(1e-12, 1.0 - 1e-12);
    mean.mul_f64(-u.ln()).min(mean * 20)
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One simulated step is one second.
const STEP: Duration = Duration::from_secs(1);

fn pool_config(o: &SimOptions) -> PoolConfig {
    PoolConfig {
        startup: o.startup,
        min_lifespan: Duration::from_secs(60),
        idle_stop_after: Duration::from_secs(30),
        scale_in_step: Duration::from_secs(5),
        drain_grace: Duration::from_secs(2),
        min_shards: 1,
        max_shards: MAX_SHARDS,
        quota: Quota {
            sessions: o.shard_sessions,
            ..Quota::default()
        },
    }
}

const MAX_SHARDS: u32 = 256;

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

/// What the simulation has scheduled: shards becoming ready, sessions ending.
#[derive(Default)]
struct Events {
    ready: BinaryHeap<Reverse<(Instant, u32)>>,
    departures: BinaryHeap<Reverse<(Instant, u32)>>,
}

impl Events {
    /// Applies everything due by `to`: first the shards that became ready, then the sessions
    /// that ended (a session begins only once its shard is ready, so it never ends before).
    fn advance(&mut self, pool: &mut Pool, to: Instant) {
        while let Some(&Reverse((t, id))) = self.ready.peek() {
            if t > to {
                break;
            }
            self.ready.pop();
            let _ = pool.handle_started(ShardId(id), t);
        }
        while let Some(&Reverse((t, id))) = self.departures.peek() {
            if t > to {
                break;
            }
            self.departures.pop();
            pool.handle_departure(ShardId(id), t);
        }
    }

    /// Carries out the pool's actions: a start becomes ready one start-up later.
    fn take_actions(&mut self, pool: &mut Pool, now: Instant, startup: Duration) {
        while let Some(a) = pool.poll_action() {
            if let PoolAction::Start { shard } = a {
                self.ready.push(Reverse((now + startup, shard.0)));
            }
        }
    }
}

/// Runs one policy over the arrivals (`Buffer` keeps `o.buffer_shards`, 0 if unset).
///
/// Per step: apply what became due, the policy looks at the step that just ended, the pool
/// applies its rules, then the step's arrivals are admitted spread over it, each after the
/// events due before it. Only steps from `o.warmup_steps` on are counted.
pub fn simulate(o: &SimOptions, policy: Policy, arrivals: &[f64]) -> PolicyFigure {
    // An origin on the monotonic clock, read once: the simulation only adds virtual time to
    // it, so no figure depends on it.
    let t0 = crate::clock::now();
    let mut pool = Pool::new(GroupId(0), pool_config(o), 0, t0);
    let mean_s = o.mean_session.as_secs_f64();
    let size = match policy {
        Policy::Buffer => o.buffer_shards.unwrap_or(0),
        _ => {
            let mean_arrivals = arrivals.iter().sum::<f64>() / arrivals.len().max(1) as f64;
            pool.shards_for(mean_arrivals * mean_s, o.target_utilization)
        }
    };
    let mut scaler = Scaler::new(scaler_config(o, policy, size));
    let mut rng = traces::SplitMix64::new(o.seed ^ 0x5eed);
    let mut events = Events::default();
    let mut waits_ms: Vec<f64> = Vec::new();
    let (mut cold, mut refused, mut shard_seconds, mut peak) = (0u64, 0u64, 0.0f64, 0u32);
    let started_before = |pool: &Pool| pool.counters().started;
    let mut started_at_warmup = 0;
    let (mut carry, mut last_arrivals) = (0.0f64, 0.0f64);
    for (k, &a) in arrivals.iter().enumerate() {
        let now = t0 + STEP * k as u32;
        let counted = k >= o.warmup_steps;
        if k == o.warmup_steps && k > 0 {
            started_at_warmup = started_before(&pool);
        }
        events.advance(&mut pool, now);
        let sessions = pool.total_sessions() as f64;
        scaler.step(&mut pool, last_arrivals, sessions, now);
        pool.handle_timeout(now);
        events.take_actions(&mut pool, now, o.startup);
        carry += a.max(0.0);
        let n = carry.floor() as u32;
        carry -= f64::from(n);
        for i in 0..n {
            let at = now + STEP.mul_f64(f64::from(i) / f64::from(n));
            events.advance(&mut pool, at);
            let admitted = pool.admit(at);
            events.take_actions(&mut pool, at, o.startup);
            let (id, wait) = match admitted {
                Admission::Warm(id) => (id, Duration::ZERO),
                Admission::Cold { shard, ready_at } => {
                    (shard, ready_at.saturating_duration_since(at))
                }
                Admission::Full => {
                    refused += u64::from(counted);
                    continue;
                }
            };
            if counted {
                cold += u64::from(matches!(admitted, Admission::Cold { .. }));
                waits_ms.push(wait.as_secs_f64() * 1e3);
            }
            let end = at + wait + exp_duration(&mut rng, o.mean_session);
            events.departures.push(Reverse((end, id.0)));
        }
        last_arrivals = a;
        if counted {
            let live = pool.live_shards();
            peak = peak.max(live);
            shard_seconds += f64::from(live) * STEP.as_secs_f64();
        }
    }
    waits_ms.sort_by(|a, b| a.total_cmp(b));
    let ttfb = |p: f64| o.warm_ttfb.as_secs_f64() * 1e3 + percentile(&waits_ms, p);
    let admissions = waits_ms.len() as u64;
    PolicyFigure {
        policy,
        admissions,
        cold_admissions: cold,
        cold_fraction: cold as f64 / admissions.max(1) as f64,
        p99_admission_wait_ms: percentile(&waits_ms, 0.99),
        p999_admission_wait_ms: percentile(&waits_ms, 0.999),
        max_admission_wait_ms: waits_ms.last().copied().unwrap_or(0.0),
        p50_ttfb_ms: ttfb(0.5),
        p99_ttfb_ms: ttfb(0.99),
        refused,
        shard_seconds,
        peak_shards: peak,
        shards_started: started_before(&pool) - started_at_warmup,
    }
}

/// One point of the buffer policy's cost/cold frontier.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BufferPoint {
    pub spare: u32,
    pub cold_admissions: u64,
    pub shard_seconds: f64,
}

/// The buffer of comparable cost: the spare whose shard-seconds are closest to `target`
/// (predictive's), the one with fewer cold admissions on a tie; with every spare tried (the
/// frontier). Spares are tried from 0 up until one costs more than `target` and admits nobody
/// cold (a larger one only costs more). Cost is not monotonic in the spare: a too-small buffer
/// starts shards for cold clients, and they stay.
fn comparable_buffer(
    o: &SimOptions,
    arrivals: &[f64],
    target: f64,
) -> (u32, PolicyFigure, Vec<BufferPoint>) {
    let mut frontier = Vec::new();
    let mut best: Option<(u32, PolicyFigure)> = None;
    for spare in 0..=MAX_SHARDS {
        let mut b = o.clone();
        b.buffer_shards = Some(spare);
        let f = simulate(&b, Policy::Buffer, arrivals);
        frontier.push(BufferPoint {
            spare,
            cold_admissions: f.cold_admissions,
            shard_seconds: f.shard_seconds,
        });
        let done = f.cold_admissions == 0 && f.shard_seconds > target;
        let key = |x: &PolicyFigure| ((x.shard_seconds - target).abs(), x.cold_admissions);
        if best.as_ref().is_none_or(|(_, x)| key(&f) < key(x)) {
            best = Some((spare, f));
        }
        if done {
            break;
        }
    }
    let (spare, figure) = best.expect("at least one spare was tried");
    (spare, figure, frontier)
}

/// `a / b`, or `None` when `b` is 0.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// Runs the four policies on one trace and the predictor's accuracy check.
pub fn run(o: &SimOptions) -> PlacementFigure {
    let series = o.trace.series(o.steps, o.seed);
    let arrivals = series.counts;
    let static_ = simulate(o, Policy::Static, &arrivals);
    let reactive = simulate(o, Policy::Reactive, &arrivals);
    let predictive = simulate(o, Policy::Predictive, &arrivals);
    let (buffer_shards, buffer, buffer_frontier) = match o.buffer_shards {
        Some(n) => (n, simulate(o, Policy::Buffer, &arrivals), Vec::new()),
        None => comparable_buffer(o, &arrivals, predictive.shard_seconds),
    };
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
    let (lead_mae, lead_last_value_mae, lead_mean) = maes(lead);
    let held_out = arrivals.len() - warmup;
    let oracle_mae = series.rate[warmup..]
        .iter()
        .zip(&arrivals[warmup..])
        .map(|(r, y)| (r - y).abs())
        .sum::<f64>()
        / held_out.max(1) as f64;
    let (p, r, b) = (&predictive, &reactive, &buffer);
    let cold = |x: &PolicyFigure| x.cold_admissions as f64;
    let mae_vs_last_value = ratio(mae, last_value_mae).unwrap_or(f64::INFINITY);
    let mut verdict = Verdict {
        applies: matches!(o.trace, Trace::Ramp | Trace::Flash),
        cold_vs_reactive: cold(p) <= GOAL_COLD_VS_REACTIVE * cold(r),
        cold_vs_buffer: cold(p) <= GOAL_COLD_VS_BUFFER * cold(b),
        shard_seconds_vs_reactive: p.shard_seconds <= GOAL_SHARD_SECONDS * r.shard_seconds,
        shard_seconds_vs_buffer: p.shard_seconds <= GOAL_SHARD_SECONDS * b.shard_seconds,
        mae_vs_last_value: mae_vs_last_value <= GOAL_MAE_VS_LAST_VALUE,
        met: false,
    };
    verdict.met = verdict.cold_vs_reactive
        && verdict.cold_vs_buffer
        && verdict.shard_seconds_vs_reactive
        && verdict.shard_seconds_vs_buffer
        && verdict.mae_vs_last_value;
    PlacementFigure {
        scenario: "placement",
        trace: o.trace,
        steps: o.steps,
        warmup_steps: o.warmup_steps,
        startup_ms: o.startup.as_secs_f64() * 1e3,
        startup_source: o.startup_source,
        warm_ttfb_ms: o.warm_ttfb.as_secs_f64() * 1e3,
        buffer_shards,
        buffer_sizing: if o.buffer_shards.is_some() {
            BufferSizing::Given
        } else {
            BufferSizing::ClosestToPredictiveCost
        },
        buffer_frontier,
        cold_ratio_vs_reactive: ratio(cold(p), cold(r)),
        cold_ratio_vs_buffer: ratio(cold(p), cold(b)),
        shard_seconds_ratio_vs_reactive: ratio(p.shard_seconds, r.shard_seconds),
        shard_seconds_ratio_vs_buffer: ratio(p.shard_seconds, b.shard_seconds),
        p999_wait_ratio_vs_reactive: ratio(p.p999_admission_wait_ms, r.p999_admission_wait_ms),
        p999_wait_ratio_vs_buffer: ratio(p.p999_admission_wait_ms, b.p999_admission_wait_ms),
        p99_ratio: ratio(p.p99_ttfb_ms, r.p99_ttfb_ms),
        mae_ratio: ratio(mae, naive_mae),
        mae_vs_last_value,
        goal_met: verdict.met,
        verdict,
        static_,
        reactive,
        buffer,
        predictive,
        mae,
        naive_mae,
        last_value_mae,
        mean_mae,
        lead_mae,
        lead_naive_mae: lead_last_value_mae.min(lead_mean),
        lead_last_value_mae,
        oracle_mae,
        lead_steps: lead,
        plan_steps: plan,
    }
}

/// Measures a shard's start-up cost as the process launcher sees it: a `shoal shard` child
/// process spawned until it registered with a hub over the control link (key material, TLS,
/// sockets, the link's handshake). Median of `rounds`.
pub async fn measure_startup(
    exe: &std::path::Path,
    rounds: usize,
) -> Result<Duration, super::BenchError> {
    use crate::pool::launcher::Launcher;
    let child = |e: &dyn std::fmt::Display| super::BenchError::Child(e.to_string());
    let dir = std::env::temp_dir().join(format!("shoal-startup-{}", std::process::id()));
    let _scratch = crate::tools::demo::Scratch(dir.clone());
    let mut cfg = crate::cluster::config::Config::default();
    cfg.hub.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.hub.control_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    cfg.shards.count = 0;
    cfg.shards.launcher = crate::cluster::config::LauncherKind::Processes;
    cfg.shards.program = Some(exe.to_path_buf());
    cfg.admin.listen = None;
    let material = crate::cluster::Material::generate_in(&mut cfg, &dir).map_err(|e| child(&e))?;
    let cluster = crate::cluster::Cluster::start(&cfg, material).map_err(|e| child(&e))?;
    let launcher = cluster
        .processes()
        .expect("the processes launcher was configured")
        .clone();
    for i in 0..rounds.max(1) {
        let id = crate::ids::ShardId(i as u32);
        launcher.launch(id, GroupId(0)).map_err(|e| child(&e))?;
        let missing = launcher.wait_registered(Duration::from_secs(30)).await;
        // The launcher's watch records the start-up when it sees the registration too.
        for _ in 0..1000 {
            if launcher.startups().len() > i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        launcher.reap(id);
        if !missing.is_empty() {
            cluster.shutdown().await;
            return Err(super::BenchError::Child(
                "a shard process did not register within 30 s".into(),
            ));
        }
        launcher.reap_all(Duration::from_secs(5)).await;
    }
    let median = launcher.median_startup();
    cluster.shutdown().await;
    median.ok_or_else(|| super::BenchError::Child("no start-up measured".into()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_deterministic_and_the_buffer_is_sized_against_predictive_cost() {
        let mut o = SimOptions::new(
            Trace::Flash,
            Duration::from_secs(5),
            Duration::from_millis(2),
        );
        o.steps = 400;
        o.warmup_steps = 60;
        let (a, b) = (run(&o), run(&o));
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        for p in [&a.static_, &a.reactive, &a.buffer, &a.predictive] {
            assert!(p.cold_admissions <= p.admissions, "{p:?}");
            assert!(p.max_admission_wait_ms <= 5000.0, "{p:?}");
        }
        // The chosen spare is the tried one closest in cost to predictive's.
        let target = a.predictive.shard_seconds;
        let gap = |s: f64| (s - target).abs();
        let chosen = a.buffer_frontier[a.buffer_shards as usize];
        assert_eq!(chosen.shard_seconds, a.buffer.shard_seconds);
        assert!(a
            .buffer_frontier
            .iter()
            .all(|p| gap(p.shard_seconds) >= gap(chosen.shard_seconds)));
    }
}
