//! `shoal demo --traffic ramp|flash`: the embedded cluster with its shard pool driven by the
//! predictive policy, real clients arriving along a traffic shape, and a line per second
//! showing arrivals, sessions, the pool's size and what the predictor expects — so one sees the
//! pool grow ahead of the load. Each client subscribes to a synthetic stream for `hold` and
//! verifies every chunk.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::client::{Client, ClientOptions, Delivery};
use crate::cluster::config::{Config, PoolSettings};
use crate::cluster::{Cluster, ClusterError, Material};
use crate::ids::{ClientId, GroupId, StreamName};
use crate::pool::driver::PoolDriver;
use crate::pool::policy::Policy;

/// The traffic shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    /// Arrivals climb from 1/s to `peak_rate` over the first 70 % of the run, then hold.
    Ramp,
    /// 1/s, then a crowd at 40 % of the run that reaches `peak_rate` in a few seconds.
    Flash,
}

impl Shape {
    /// Arrivals per second at fraction `f` (0..1) of the run.
    fn rate(self, f: f64, peak: f64) -> f64 {
        match self {
            Shape::Ramp => 1.0 + (peak - 1.0) * (f / 0.7).min(1.0),
            Shape::Flash => {
                if f < 0.4 {
                    1.0
                } else {
                    1.0 + (peak - 1.0) * ((f - 0.4) / 0.1).min(1.0)
                }
            }
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct TrafficOptions {
    pub shape: Shape,
    pub duration: Duration,
    pub peak_rate: f64,
    pub hold: Duration,
    /// Sessions one shard takes (small, so that the pool has to grow).
    pub shard_sessions: u32,
    pub policy: Policy,
}

impl Default for TrafficOptions {
    fn default() -> Self {
        Self {
            shape: Shape::Ramp,
            duration: Duration::from_secs(40),
            peak_rate: 8.0,
            hold: Duration::from_secs(12),
            shard_sessions: 16,
            policy: Policy::Predictive,
        }
    }
}

/// One second of the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Second {
    pub t: u32,
    pub arrivals: u64,
    pub sessions: u64,
    pub shards: u32,
    pub desired: u32,
    pub forecast: f64,
    pub cpu: f64,
    /// Bytes the group's streams hold.
    pub buffer_bytes: u64,
}

/// The run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    pub shape: Shape,
    pub policy: Policy,
    pub clients: u64,
    pub chunks: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub integrity_failures: u64,
    pub client_errors: u64,
    /// The first client error, if any.
    pub first_error: Option<String>,
    pub peak_sessions: u64,
    pub peak_shards: u32,
    /// First second the pool had its peak size, and first second sessions reached 90 % of
    /// their peak.
    pub pool_peak_at_s: u32,
    pub load_peak_at_s: u32,
    /// Ended sessions the shards reported to the hub's profiler, and how many of them the
    /// request models learned from.
    pub sessions_reported: u64,
    pub sessions_learned: u64,
    pub seconds: Vec<Second>,
}

#[derive(Default)]
struct Totals {
    chunks: AtomicU64,
    missing: AtomicU64,
    duplicates: AtomicU64,
    integrity: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

fn first_error(t: &Totals) -> Option<String> {
    t.first_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

impl Totals {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_error.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert(e);
    }
}

async fn one_client(client: Client, stream: StreamName, hold: Duration, totals: Arc<Totals>) {
    let seed = crate::synthetic::stream_seed(&stream);
    let mut sub = match client.subscribe(&stream).await {
        Ok(s) => s,
        Err(e) => {
            totals.error(format!("subscribe: {e}"));
            return;
        }
    };
    let until = crate::clock::tokio_now() + hold;
    loop {
        match tokio::time::timeout_at(until, sub.next()).await {
            Ok(Some(Ok(Delivery::Chunk(c)))) => {
                if !crate::synthetic::verify(seed, c.seq, &c.payload) {
                    totals.integrity.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(Some(Ok(Delivery::Gap { .. }))) => {}
            Ok(Some(Err(e))) => {
                totals.error(format!("stream: {e}"));
                break;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let s = sub.stats();
    totals.chunks.fetch_add(s.chunks, Ordering::Relaxed);
    totals.missing.fetch_add(s.missing, Ordering::Relaxed);
    totals.duplicates.fetch_add(s.duplicates, Ordering::Relaxed);
    drop(sub);
    client.close().await;
}

/// Runs the traffic demo; `progress` gets a line per second.
pub async fn run(
    o: TrafficOptions,
    mut progress: impl FnMut(&str),
) -> Result<TrafficReport, ClusterError> {
    let mut cfg = Config::default();
    cfg.hub.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    cfg.shards.count = 1;
    cfg.shards.groups = 1;
    cfg.shards.max_sessions = o.shard_sessions;
    cfg.streams.synthetic_rate_hz = 20;
    cfg.shutdown.grace = Duration::from_millis(500);
    // The driver looks once a second; shards stop young and soon after going idle, so the
    // run shows the pool shrink too.
    let step = Duration::from_secs(1);
    cfg.pool = PoolSettings {
        enabled: true,
        policy: o.policy,
        step,
        min_shards: 1,
        max_shards: 32,
        min_lifespan: Duration::from_secs(20),
        idle_stop_after: Duration::from_secs(10),
        ..PoolSettings::default()
    };
    let material = Material::generate(&cfg.cluster)?;
    let ca = material.ca.clone();
    let cluster = Cluster::start(&cfg, material)?;
    // Retired shards drain for 2 s (the cluster's own shutdown is quicker); the demo knows how
    // long its clients stay.
    let (pool, mut scaler) = cfg
        .pool
        .pool_and_scaler(&cfg.shards, Duration::from_secs(2));
    scaler.initial_mean_session = o.hold;
    let driver = PoolDriver::start(&cluster, pool, scaler, cfg.shards.groups);
    let totals = Arc::new(Totals::default());
    let stream = StreamName::new("synth/traffic").expect("valid name");
    let started = crate::clock::now();
    let mut clients = 0u64;
    let mut seconds = Vec::new();
    let mut carry = 0.0;
    let mut tasks = Vec::new();
    let total_s = o.duration.as_secs().max(1) as u32;
    for t in 0..total_s {
        let f = f64::from(t) / f64::from(total_s);
        carry += o.shape.rate(f, o.peak_rate);
        let n = carry.floor() as u32;
        carry -= f64::from(n);
        for i in 0..n {
            let id = ClientId::new(format!("traffic-{clients}")).expect("valid id");
            clients += 1;
            let mut opts = ClientOptions::new(cfg.cluster.clone(), ca.clone(), id);
            opts.bind = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            if let Ok(client) = Client::new(cluster.hub.addr(), opts) {
                tasks.push(tokio::spawn(one_client(
                    client,
                    stream.clone(),
                    o.hold,
                    totals.clone(),
                )));
            }
            let gap = step.mul_f64(1.0 / f64::from(n.max(1)));
            if i + 1 < n {
                tokio::time::sleep(gap).await;
            }
        }
        let next = started + step * (t + 1);
        tokio::time::sleep_until(next.into()).await;
        let st = driver.status().into_iter().find(|g| g.group == GroupId(0));
        if let Some(g) = st {
            let s = Second {
                t: t + 1,
                arrivals: g.arrivals,
                sessions: g.sessions,
                shards: g.shards,
                desired: g.desired,
                forecast: g.forecast,
                cpu: g.cpu,
                buffer_bytes: g.buffer_bytes,
            };
            progress(&format!(
                "t={:>3}s arrivals {:>3} sessions {:>4} shards {:>2} (desired {:>2}) forecast {:>5.1} cpu {:.2} buffers {:>5} KiB",
                s.t, s.arrivals, s.sessions, s.shards, s.desired, s.forecast, s.cpu, s.buffer_bytes / 1024
            ));
            seconds.push(s);
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    driver.stop().await;
    cluster.shutdown().await;
    let sessions_learned = cluster.hub.sessions_learned();
    let peak_sessions = seconds.iter().map(|s| s.sessions).max().unwrap_or(0);
    let peak_shards = seconds.iter().map(|s| s.shards).max().unwrap_or(0);
    let pool_peak_at_s = seconds
        .iter()
        .find(|s| s.shards == peak_shards)
        .map_or(0, |s| s.t);
    let load_peak_at_s = seconds
        .iter()
        .find(|s| s.sessions as f64 >= 0.9 * peak_sessions as f64)
        .map_or(0, |s| s.t);
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(TrafficReport {
        shape: o.shape,
        policy: o.policy,
        clients,
        chunks: l(&totals.chunks),
        missing: l(&totals.missing),
        duplicates: l(&totals.duplicates),
        integrity_failures: l(&totals.integrity),
        client_errors: l(&totals.errors),
        first_error: first_error(&totals),
        peak_sessions,
        peak_shards,
        pool_peak_at_s,
        load_peak_at_s,
        sessions_reported: l(&cluster.hub.counters().sessions_reported),
        sessions_learned,
        seconds,
    })
}
