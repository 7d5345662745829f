//! `shoal bench latency`: open-loop latency under load, shoal against raw quinn at the same
//! offered rates, in the same run.
//!
//! **One operation**, the same work and the same bytes on both sides:
//! - shoal: a fresh client (no tickets) asks the hub for a grant (a full handshake; the reply
//!   carries the stream's first chunk), attaches to the grant's first shard in 0-RTT with the
//!   hub's ticket, and closes.
//! - raw quinn: a fresh endpoint does a full handshake and one request/response of the grant's
//!   sizes, connects again in 0-RTT with the ticket it got, sends a request of the attach's
//!   size, reads the answer and closes. (The baseline server gives every request the same
//!   answer, so its second one is grant-sized: a few hundred bytes more than shoal's
//!   `Attached`, a handicap to the baseline only.)
//!
//! The latency recorded is arrival → first chunk (shoal: the grant reply) or first response
//! (raw quinn), in µs, in an HDR histogram; the second connection is load, not latency.
//! Operations that fail or pass their timeout are counted, not recorded.
//!
//! **Offered load.** Shoal's capacity first: closed-loop operations from [`WORKERS`] workers
//! for a short window (raw quinn's is measured the same way and reported beside it). The
//! offered rates are 25 %, 50 % and 80 % of *shoal's* capacity, the same for both sides:
//! percentiles compare only at equal offered load, and shoal's utilisation is the operating
//! point the goal is about. Raw quinn, cheaper per operation, runs at a lower utilisation of
//! its own at the same rate; that difference is the cost being measured.
//!
//! **Open loop.** Arrivals are a Poisson process ([`Arrivals`]: exponential gaps from a seeded
//! [`SplitMix64`]; both sides get the same arrival times in a round and level). Each arrival
//! starts an operation whether or not earlier ones finished; at most `max_in_flight` run at
//! once, and arrivals beyond that are dropped and counted. Latency runs from the *scheduled*
//! arrival, so a late generator adds to it instead of hiding it (no coordinated omission);
//! its lateness is reported too (`start_lag_p99_ms`).
//!
//! Order of a run: spawn both children → probe the sizes → warm up each side → capacity
//! (shoal, then raw quinn) → `rounds` × levels (25, 50, 80 %) × both sides (even rounds shoal
//! first, as the other scenarios alternate) → stop the children (on every path) → one
//! [`LatencyReport`] of medians over the rounds.
//!
//! Bounds: every window ends at its deadline and after at most `4 × rate × window + 1000`
//! arrivals; every operation within `op_timeout`; every endpoint's drain within a second; the
//! whole run within [`LatencyOptions::time_limit`].

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;

use super::baseline;
use super::child::ChildServer;
use super::load::{self, Target};
use super::{median, BenchError, BenchOptions};
use crate::client::Client;
use crate::clock;
use crate::cluster::config::Config;
use crate::hub::predictor::traces::SplitMix64;
use crate::wire::{encode_control, Attach, Message, Role};

/// The load levels, in per cent of shoal's capacity.
pub const LEVELS: [u32; 3] = [25, 50, 80];
/// The goal: shoal's p99 at most this many times raw quinn's, at 50 % and 80 % load.
pub const GOAL_P99_RATIO: f64 = 1.2;
/// Shoal failures and drops allowed at those levels, as a share of the arrivals: percentiles
/// of the successes alone say little when many failed.
pub const GOAL_LOSS_SHARE: f64 = 0.001;
/// Concurrent closed-loop operations while measuring capacity (as the CPU scenarios use).
pub const WORKERS: usize = 16;
/// The histograms' top, in µs (anything longer saturates there).
const MAX_US: u64 = 60_000_000;

type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

/// How big a latency run is.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Per load level per side. Default 5 s; quick 1 s.
    pub window: Duration,
    /// The closed-loop capacity window per side. Default 2 s; quick 0.5 s.
    pub capacity_window: Duration,
    /// Seed of the arrival times.
    pub seed: u64,
    /// Operations in flight at most, per side; arrivals beyond are dropped and counted.
    pub max_in_flight: usize,
    /// One operation's limit; past it, it counts as a failure.
    pub op_timeout: Duration,
    /// Pause between two windows (the last connections' close settles on the server).
    pub settle: Duration,
}

impl LatencyOptions {
    pub fn new(quick: bool) -> Self {
        Self {
            window: Duration::from_millis(if quick { 1000 } else { 5000 }),
            capacity_window: Duration::from_millis(if quick { 500 } else { 2000 }),
            seed: 7,
            max_in_flight: 4000,
            op_timeout: Duration::from_secs(10),
            settle: Duration::from_millis(if quick { 100 } else { 300 }),
        }
    }

    /// The whole run's limit for `rounds` rounds: start-up and capacity, then each window
    /// with its drain and settling.
    pub fn time_limit(&self, rounds: usize) -> Duration {
        let per_window = self.window + self.op_timeout + self.settle + Duration::from_secs(5);
        let windows = (rounds.max(1) * LEVELS.len() * 2) as u32;
        Duration::from_secs(120) + self.capacity_window * 2 + per_window * windows
    }
}

/// Poisson arrivals at `rate` a second: offsets from the window's start, exponential gaps,
/// the same sequence for the same seed. Ends at `window` or after `max` arrivals.
#[derive(Debug, Clone)]
pub struct Arrivals {
    rng: SplitMix64,
    mean_gap_s: f64,
    at_s: f64,
    window_s: f64,
    left: u64,
}

impl Arrivals {
    pub fn new(rate: f64, window: Duration, seed: u64) -> Arrivals {
        // NaN and nonsense within bounds.
        let rate = if rate > 1e-3 { rate.min(1e6) } else { 1e-3 };
        let window_s = window.as_secs_f64();
        Arrivals {
            rng: SplitMix64::new(seed),
            mean_gap_s: 1.0 / rate,
            at_s: 0.0,
            window_s,
            left: (4.0 * rate * window_s) as u64 + 1000,
        }
    }
}

impl Iterator for Arrivals {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        // 1 − u is in (0, 1]: its logarithm is finite.
        let u = 1.0 - self.rng.uniform();
        self.at_s += -u.ln() * self.mean_gap_s;
        (self.at_s < self.window_s).then(|| Duration::from_secs_f64(self.at_s))
    }
}

/// The seed of round `round`, level `level`: both sides use it, so both get the same arrivals.
fn seed_of(seed: u64, round: usize, level: usize) -> u64 {
    let mut m = SplitMix64::new(seed ^ (((round as u64) << 8) | level as u64));
    m.next_u64()
}

/// Request and answer sizes of one operation, from a real grant.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    /// The grant request (the client's `StreamRequest`).
    pub request_bytes: usize,
    /// The grant reply with its first chunks.
    pub response_bytes: usize,
    /// The attach flight (token, nonce, proof).
    pub attach_bytes: usize,
}

/// One side's operation and where it goes.
#[derive(Clone)]
enum Side {
    Shoal(Target),
    Quinn(Target, Sizes),
}

/// What a finished operation leaves: when its first chunk or response came, whether its second
/// connection rode in accepted 0-RTT, and its endpoint (closed, to be drained).
struct Done {
    first: Instant,
    zero_rtt: bool,
    endpoint: quinn::Endpoint,
}

fn load_err(what: &str, e: impl std::fmt::Display) -> BenchError {
    BenchError::Load(format!("{what}: {e}"))
}

impl Side {
    /// One operation, bounded by `limit` (past it, its endpoint is dropped, closing it).
    async fn op(&self, id: usize, limit: Duration) -> Result<Done, BenchError> {
        let work = async {
            match self {
                Side::Shoal(t) => {
                    let client = t.shoal_client(id)?;
                    closing(client.endpoint().clone(), shoal_op(&client, id)).await
                }
                Side::Quinn(t, s) => {
                    let endpoint = t.quinn_endpoint()?;
                    closing(endpoint.clone(), quinn_op(t, &endpoint, *s)).await
                }
            }
        };
        tokio::time::timeout(limit, work)
            .await
            .map_err(|_| BenchError::Load(format!("operation timed out after {limit:?}")))?
    }
}

/// Closes `endpoint` after `work`, whatever its outcome.
async fn closing(
    endpoint: quinn::Endpoint,
    work: impl std::future::Future<Output = Result<(Instant, bool), BenchError>>,
) -> Result<Done, BenchError> {
    let r = work.await;
    endpoint.close(0u32.into(), b"");
    let (first, zero_rtt) = r?;
    Ok(Done {
        first,
        zero_rtt,
        endpoint,
    })
}

async fn shoal_op(client: &Client, id: usize) -> Result<(Instant, bool), BenchError> {
    let reply = client
        .request(&load::stream(id), Role::Subscribe)
        .await
        .map_err(|e| load_err("grant", e))?;
    if reply.first_chunks.is_empty() {
        return Err(BenchError::Load("a grant without a first chunk".into()));
    }
    let first = clock::now();
    let session = client
        .attach(&reply, 0)
        .await
        .map_err(|e| load_err("attach", e))?;
    Ok((first, session.zero_rtt))
}

async fn quinn_op(
    t: &Target,
    ep: &quinn::Endpoint,
    s: Sizes,
) -> Result<(Instant, bool), BenchError> {
    // No ticket yet: a full handshake, as a fresh shoal client's to the hub.
    let (hub, _) = t.quinn_connect(ep).await?;
    baseline::request(&hub, s.request_bytes).await?;
    let first = clock::now();
    // Kept open meanwhile, as the shoal client keeps its hub connection.
    let (shard, early) = t.quinn_connect(ep).await?;
    baseline::request(&shard, s.attach_bytes).await?;
    Ok((first, early.accepted().await))
}

/// Waits (at most a second) for a closed endpoint's connections to finish closing.
async fn drain(endpoint: quinn::Endpoint) {
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("1 µs to 60 s at 3 digits is valid")
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        f64::NAN
    } else {
        h.value_at_quantile(q) as f64 / 1e3
    }
}

/// Closed-loop operations a second: [`WORKERS`] workers, each starting operations until the
/// window ends. Fails when more than 1 % failed.
async fn capacity(side: &Side, window: Duration, limit: Duration) -> Result<f64, BenchError> {
    let start = clock::tokio_now();
    let deadline = start + window;
    let mut workers = JoinSet::new();
    for w in 0..WORKERS {
        let side = side.clone();
        workers.spawn(async move {
            let (mut ok, mut failed, mut first_err) = (0u64, 0u64, None);
            let mut drains = JoinSet::new();
            let mut last = start;
            let mut id = 1_000_000 + w;
            // Bounded: by the deadline, each operation by `limit`.
            while clock::tokio_now() < deadline {
                match side.op(id, limit).await {
                    Ok(d) => {
                        ok += 1;
                        last = clock::tokio_now();
                        drains.spawn(drain(d.endpoint));
                    }
                    Err(e) => {
                        failed += 1;
                        first_err.get_or_insert(e);
                    }
                }
                id += WORKERS;
                while drains.try_join_next().is_some() {}
            }
            while drains.join_next().await.is_some() {}
            (ok, failed, first_err, last)
        });
    }
    let (mut ok, mut failed, mut first_err, mut last) = (0, 0, None, start);
    while let Some(r) = workers.join_next().await {
        let (o, f, e, l) = r.map_err(|e| load_err("capacity worker", e))?;
        ok += o;
        failed += f;
        first_err = first_err.or(e);
        last = last.max(l);
    }
    if ok == 0 || failed * 100 > ok + failed {
        let e = first_err.map_or_else(|| "nothing ran".to_string(), |e| e.to_string());
        return Err(BenchError::Load(format!(
            "capacity: {failed} of {} operations failed; first: {e}",
            ok + failed
        )));
    }
    let elapsed = (last - start).as_secs_f64().max(1e-3);
    Ok(ok as f64 / elapsed)
}

/// One side at one offered rate, one window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SideLevel {
    pub offered_ops_per_s: f64,
    /// Arrivals that started an operation.
    pub arrivals: u64,
    /// Operations recorded in the histogram.
    pub recorded: u64,
    pub failures: u64,
    /// Arrivals not started: `max_in_flight` operations were running.
    pub drops: u64,
    /// Second connections (shard attach, baseline reconnect) in accepted 0-RTT.
    pub zero_rtt: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// How late the generator started operations (p99, ms); part of the latencies.
    pub start_lag_p99_ms: f64,
    /// The first failure, if any.
    pub first_error: Option<String>,
}

/// What the spawned operations of a window tell the generator.
#[derive(Default)]
struct Tally {
    hist: Option<Histogram<u64>>,
    failures: u64,
    zero_rtt: u64,
    first_error: Option<String>,
}

impl Tally {
    fn add(&mut self, r: Result<Result<(Duration, bool), BenchError>, tokio::task::JoinError>) {
        match r {
            Ok(Ok((latency, zero))) => {
                self.hist
                    .get_or_insert_with(histogram)
                    .saturating_record(us(latency));
                self.zero_rtt += u64::from(zero);
            }
            Ok(Err(e)) => self.fail(&e),
            Err(e) => self.fail(&e),
        }
    }

    fn fail(&mut self, e: &dyn std::fmt::Display) {
        self.failures += 1;
        self.first_error.get_or_insert_with(|| e.to_string());
    }
}

/// Open-loop arrivals at `rate` for one window; every started operation is waited for.
async fn open_loop(side: &Side, rate: f64, o: &LatencyOptions, seed: u64) -> SideLevel {
    let start = clock::tokio_now();
    let mut set: JoinSet<Result<(Duration, bool), BenchError>> = JoinSet::new();
    let mut tally = Tally::default();
    let mut lag = histogram();
    let (mut arrivals, mut drops) = (0u64, 0u64);
    for (i, offset) in Arrivals::new(rate, o.window, seed).enumerate() {
        let at = start + offset;
        tokio::time::sleep_until(at).await;
        while let Some(r) = set.try_join_next() {
            tally.add(r);
        }
        if set.len() >= o.max_in_flight {
            drops += 1;
            continue;
        }
        arrivals += 1;
        lag.saturating_record(us(clock::tokio_now().saturating_duration_since(at)));
        let (side, limit, scheduled) = (side.clone(), o.op_timeout, at.into_std());
        set.spawn(async move {
            let d = side.op(i, limit).await?;
            let latency = d.first.saturating_duration_since(scheduled);
            drain(d.endpoint).await;
            Ok((latency, d.zero_rtt))
        });
    }
    // Bounded: every operation ends within its limit, its drain within a second.
    let rest = tokio::time::timeout(o.op_timeout + Duration::from_secs(3), async {
        while let Some(r) = set.join_next().await {
            tally.add(r);
        }
    })
    .await;
    if rest.is_err() {
        for _ in 0..set.len() {
            tally.fail(&"still running after its limit");
        }
        set.abort_all();
    }
    let hist = tally.hist.take().unwrap_or_else(histogram);
    SideLevel {
        offered_ops_per_s: rate,
        arrivals,
        recorded: hist.len(),
        failures: tally.failures,
        drops,
        zero_rtt: tally.zero_rtt,
        p50_ms: ms(&hist, 0.5),
        p99_ms: ms(&hist, 0.99),
        p999_ms: ms(&hist, 0.999),
        max_ms: ms(&hist, 1.0),
        start_lag_p99_ms: ms(&lag, 0.99),
        first_error: tally.first_error,
    }
}

/// [`open_loop`], then the pause that lets its last closes settle.
async fn settled(side: &Side, rate: f64, o: &LatencyOptions, seed: u64) -> SideLevel {
    let s = open_loop(side, rate, o, seed).await;
    tokio::time::sleep(o.settle).await;
    s
}

/// Both sides at one level: in one round, or medians over the rounds (sums for the counts).
#[derive(Debug, Clone, Serialize)]
pub struct Level {
    pub load_percent: u32,
    pub shoal: SideLevel,
    pub quinn: SideLevel,
    /// shoal p99 ÷ raw quinn p99 (over the rounds: the median of the rounds' ratios).
    pub p99_ratio: f64,
}

impl SideLevel {
    /// Medians of the rounds' percentiles, sums of their counts.
    fn over(sides: &[&SideLevel]) -> SideLevel {
        let med = |f: fn(&SideLevel) -> f64| median(sides.iter().map(|s| f(s)));
        let sum = |f: fn(&SideLevel) -> u64| sides.iter().map(|s| f(s)).sum();
        SideLevel {
            offered_ops_per_s: med(|s| s.offered_ops_per_s),
            arrivals: sum(|s| s.arrivals),
            recorded: sum(|s| s.recorded),
            failures: sum(|s| s.failures),
            drops: sum(|s| s.drops),
            zero_rtt: sum(|s| s.zero_rtt),
            p50_ms: med(|s| s.p50_ms),
            p99_ms: med(|s| s.p99_ms),
            p999_ms: med(|s| s.p999_ms),
            max_ms: med(|s| s.max_ms),
            start_lag_p99_ms: med(|s| s.start_lag_p99_ms),
            first_error: sides.iter().find_map(|s| s.first_error.clone()),
        }
    }
}

impl Level {
    fn over(rounds: &[Level]) -> Level {
        let shoal: Vec<&SideLevel> = rounds.iter().map(|r| &r.shoal).collect();
        let quinn: Vec<&SideLevel> = rounds.iter().map(|r| &r.quinn).collect();
        Level {
            load_percent: rounds.first().map_or(0, |r| r.load_percent),
            shoal: SideLevel::over(&shoal),
            quinn: SideLevel::over(&quinn),
            p99_ratio: median(rounds.iter().map(|r| r.p99_ratio)),
        }
    }

    /// The goal at this level: the p99 ratio, and shoal's losses.
    fn goal_met(&self) -> bool {
        let lost = (self.shoal.failures + self.shoal.drops) as f64;
        let offered = (self.shoal.arrivals + self.shoal.drops).max(1) as f64;
        self.p99_ratio <= GOAL_P99_RATIO && lost <= GOAL_LOSS_SHARE * offered
    }
}

/// The run's figures: medians over the rounds, per level, and each round's.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub scenario: &'static str,
    pub rounds: usize,
    pub window_s: f64,
    /// Shoal's closed-loop capacity: the offered rates are shares of it, for both sides.
    pub capacity_ops_per_s: f64,
    /// Raw quinn's, measured the same way (not used for the offered rates).
    pub quinn_capacity_ops_per_s: f64,
    pub capacity_window_s: f64,
    pub max_in_flight: usize,
    pub sizes: Sizes,
    pub shoal_failures: u64,
    pub quinn_failures: u64,
    pub shoal_drops: u64,
    pub quinn_drops: u64,
    pub goal: String,
    pub goal_met: bool,
    pub levels: Vec<Level>,
    /// Flat per-level fields for scripts: `p99_ratio_at_50`, `shoal_p99_ms_at_50`,
    /// `quinn_p999_ms_at_80`, `offered_ops_per_s_at_25`, …
    #[serde(flatten)]
    pub at: serde_json::Map<String, serde_json::Value>,
    pub per_round: Vec<Vec<Level>>,
}

impl LatencyReport {
    fn new(
        capacity: (f64, f64),
        o: &LatencyOptions,
        sizes: Sizes,
        per_round: Vec<Vec<Level>>,
    ) -> LatencyReport {
        let at_level = |k: usize| per_round.iter().map(move |r: &Vec<Level>| r[k].clone());
        let levels: Vec<Level> = (0..LEVELS.len())
            .map(|k| Level::over(&at_level(k).collect::<Vec<_>>()))
            .collect();
        let mut at = serde_json::Map::new();
        let mut put = |k: String, v: f64| {
            let v = serde_json::Number::from_f64(v)
                .map_or(serde_json::Value::Null, serde_json::Value::Number);
            at.insert(k, v);
        };
        for l in &levels {
            let (p, offered) = (l.load_percent, l.shoal.offered_ops_per_s);
            put(format!("offered_ops_per_s_at_{p}"), offered);
            put(format!("p99_ratio_at_{p}"), l.p99_ratio);
            for (side, s) in [("shoal", &l.shoal), ("quinn", &l.quinn)] {
                put(format!("{side}_p50_ms_at_{p}"), s.p50_ms);
                put(format!("{side}_p99_ms_at_{p}"), s.p99_ms);
                put(format!("{side}_p999_ms_at_{p}"), s.p999_ms);
                put(format!("{side}_ops_at_{p}"), s.recorded as f64);
                put(format!("{side}_failures_at_{p}"), s.failures as f64);
                put(format!("{side}_drops_at_{p}"), s.drops as f64);
            }
        }
        let total = |f: fn(&Level) -> u64| levels.iter().map(f).sum();
        let goal_met = levels
            .iter()
            .filter(|l| l.load_percent >= 50)
            .all(Level::goal_met);
        LatencyReport {
            scenario: "latency",
            rounds: per_round.len(),
            window_s: o.window.as_secs_f64(),
            capacity_ops_per_s: capacity.0,
            quinn_capacity_ops_per_s: capacity.1,
            capacity_window_s: o.capacity_window.as_secs_f64(),
            max_in_flight: o.max_in_flight,
            sizes,
            shoal_failures: total(|l| l.shoal.failures),
            quinn_failures: total(|l| l.quinn.failures),
            shoal_drops: total(|l| l.shoal.drops),
            quinn_drops: total(|l| l.quinn.drops),
            goal: format!(
                "p99_ratio_at_50 and p99_ratio_at_80 <= {GOAL_P99_RATIO}, shoal failures + drops there <= {} % of arrivals",
                GOAL_LOSS_SHARE * 100.0
            ),
            goal_met,
            levels,
            at,
            per_round,
        }
    }
}

/// The sizes of a real grant to a fresh client (as the `grant` scenario measures them) and of
/// an attach with its token.
async fn probe_sizes(t: &Target) -> Result<Sizes, BenchError> {
    let (request_bytes, response_bytes, token_len) = super::scenarios::grant_sizes(t).await?;
    let attach_bytes = encode_control(&Message::Attach(Attach {
        token: vec![0; token_len],
        nonce: vec![0; crate::security::proof::NONCE_LEN],
        proof: vec![0; 32],
    }))
    .len();
    Ok(Sizes {
        request_bytes,
        response_bytes,
        attach_bytes,
    })
}

/// Runs the scenario; `progress` gets a line per phase, level and round. Bounded by
/// [`LatencyOptions::time_limit`]; the children are stopped on every path.
pub async fn run(
    opts: &BenchOptions,
    o: &LatencyOptions,
    progress: Progress<'_>,
) -> Result<LatencyReport, BenchError> {
    let (spec, _link) = super::scenarios::default_shoal(opts).await?;
    let shoal = ChildServer::spawn(&opts.exe, &spec).await?;
    let after = o.time_limit(opts.rounds);
    let r = tokio::time::timeout(after, with_shoal(&shoal, opts, o, progress)).await;
    // Stopped on every path: the shard processes, if any, go with the shoal child.
    shoal.stop().await;
    r.map_err(|_| BenchError::Timeout {
        scenario: "latency",
        after,
    })?
}

/// Probes the sizes, spawns the baseline child of those sizes, measures, stops the baseline.
async fn with_shoal(
    shoal: &ChildServer,
    opts: &BenchOptions,
    o: &LatencyOptions,
    progress: Progress<'_>,
) -> Result<LatencyReport, BenchError> {
    let ts = Target::of(shoal, 0);
    let sizes = probe_sizes(&ts).await?;
    let spec = super::scenarios::quinn_spec(
        Config::default().hub.tickets_per_handshake,
        sizes.response_bytes,
    );
    let quinn = ChildServer::spawn(&opts.exe, &spec).await?;
    let sides = (Side::Shoal(ts), Side::Quinn(Target::of(&quinn, 0), sizes));
    // On a timeout this future is dropped, and the child with it (killed on drop).
    let r = measure(&sides, opts.rounds, o, sizes, progress).await;
    quinn.stop().await;
    r
}

async fn measure(
    (shoal, quinn): &(Side, Side),
    rounds: usize,
    o: &LatencyOptions,
    sizes: Sizes,
    p: Progress<'_>,
) -> Result<LatencyReport, BenchError> {
    for side in [shoal, quinn] {
        for i in 0..4 {
            let d = side.op(2_000_000 + i, o.op_timeout).await?;
            drain(d.endpoint).await;
        }
    }
    let cap = capacity(shoal, o.capacity_window, o.op_timeout).await?;
    tokio::time::sleep(o.settle).await;
    let cap_q = capacity(quinn, o.capacity_window, o.op_timeout).await?;
    p(&format!(
        "latency: capacity (closed loop, {WORKERS} workers, {:.1} s): shoal {cap:.0} ops/s, raw quinn {cap_q:.0} ops/s; offered {} % of shoal's to both",
        o.capacity_window.as_secs_f64(),
        LEVELS.map(|l| l.to_string()).join("/")
    ));
    let rounds = rounds.max(1);
    let mut per_round = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let mut levels = Vec::with_capacity(LEVELS.len());
        for (k, &pct) in LEVELS.iter().enumerate() {
            let rate = cap * f64::from(pct) / 100.0;
            let seed = seed_of(o.seed, r, k);
            let (s, q) = super::scenarios::in_round_order(
                r,
                settled(shoal, rate, o, seed),
                settled(quinn, rate, o, seed),
            )
            .await;
            let ratio = s.p99_ms / q.p99_ms;
            p(&format!(
                "latency round {}/{rounds} at {pct} % ({rate:.0} ops/s offered): shoal p50/p99/p999 {:.2}/{:.2}/{:.2} ms ({} ops, {} failed, {} dropped), raw quinn {:.2}/{:.2}/{:.2} ms ({} ops, {} failed, {} dropped), p99 ratio {ratio:.3}",
                r + 1,
                s.p50_ms, s.p99_ms, s.p999_ms, s.recorded, s.failures, s.drops,
                q.p50_ms, q.p99_ms, q.p999_ms, q.recorded, q.failures, q.drops,
            ));
            levels.push(Level {
                load_percent: pct,
                shoal: s,
                quinn: q,
                p99_ratio: ratio,
            });
        }
        per_round.push(levels);
    }
    Ok(LatencyReport::new((cap, cap_q), o, sizes, per_round))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_poisson_seeded_and_bounded() {
        let a: Vec<Duration> = Arrivals::new(1000.0, Duration::from_secs(10), 3).collect();
        let b: Vec<Duration> = Arrivals::new(1000.0, Duration::from_secs(10), 3).collect();
        assert_eq!(a, b, "the same seed, the same arrivals");
        assert_ne!(
            a,
            Arrivals::new(1000.0, Duration::from_secs(10), 4).collect::<Vec<_>>()
        );
        // About 10 000 arrivals (± 4 σ), in order, inside the window.
        assert!((9_600..=10_400).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        assert!(a.last().is_some_and(|l| *l < Duration::from_secs(10)));
        // Exponential gaps: their standard deviation is their mean.
        let gaps: Vec<f64> = a.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
        assert!((var.sqrt() / mean - 1.0).abs() < 0.05, "{mean} {var}");
        // A nonsense rate still ends.
        assert!(Arrivals::new(f64::NAN, Duration::from_secs(1), 1).count() <= 1000);
    }

    fn side(p99_ms: f64, failures: u64) -> SideLevel {
        let (arrivals, recorded) = (1000, 1000 - failures);
        SideLevel {
            arrivals,
            recorded,
            failures,
            p99_ms,
            ..SideLevel::default()
        }
    }

    #[test]
    fn the_goal_takes_median_ratios_at_50_and_80_and_counts_losses() {
        let round = |ratios: [f64; 3], failures: u64| {
            LEVELS
                .iter()
                .zip(ratios)
                .map(|(&pct, r)| Level {
                    load_percent: pct,
                    shoal: side(10.0 * r, failures),
                    quinn: side(10.0, 0),
                    p99_ratio: r,
                })
                .collect::<Vec<_>>()
        };
        let o = LatencyOptions::new(true);
        let sizes = Sizes {
            request_bytes: 1,
            response_bytes: 1,
            attach_bytes: 1,
        };
        // 25 % is not held to the goal; the medians at 50 and 80 % are.
        let runs = vec![
            round([3.0, 1.1, 1.5], 0),
            round([3.0, 1.1, 1.1], 0),
            round([3.0, 1.3, 1.0], 0),
        ];
        let r = LatencyReport::new((100.0, 150.0), &o, sizes, runs);
        assert!(r.goal_met, "{:?}", r.levels);
        let at = |k: &str| r.at[k].as_f64().unwrap_or(f64::NAN);
        assert!((at("p99_ratio_at_80") - 1.1).abs() < 1e-9);
        assert!((at("shoal_p99_ms_at_50") - 11.0).abs() < 1e-9);
        assert!((at("quinn_p99_ms_at_50") - 10.0).abs() < 1e-9);
        let runs = vec![round([1.0, 1.3, 1.3], 0)];
        assert!(!LatencyReport::new((100.0, 150.0), &o, sizes, runs).goal_met);
        // Two failures in a thousand at 50 %: more than the 0.1 % allowed.
        let runs = vec![round([1.0, 1.0, 1.0], 2)];
        let r = LatencyReport::new((100.0, 150.0), &o, sizes, runs);
        assert!(!r.goal_met && r.shoal_failures == 6);
    }

    #[test]
    fn both_sides_of_a_round_and_level_share_a_seed_and_levels_differ() {
        assert_eq!(seed_of(7, 1, 2), seed_of(7, 1, 2));
        assert_ne!(seed_of(7, 1, 2), seed_of(7, 2, 1));
        assert_ne!(seed_of(7, 0, 0), seed_of(7, 0, 1));
    }
}
