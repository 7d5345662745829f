//! `shoal demo`: the embedded cluster and N subscribing clients in one process, with one shard
//! killed halfway, reported as a table or one JSON object.
//!
//! Every chunk is checked: sequence (gaps, duplicates) by the client library, payload integrity
//! here against the synthetic generator.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::client::{Client, ClientOptions, Delivery, StatsSnapshot};
use crate::cluster::config::Config;
use crate::cluster::{Cluster, ClusterError, Material};
use crate::ids::{ClientId, StreamName};
use crate::synthetic::{stream_seed, verify};

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub clients: usize,
    pub duration: Duration,
    /// Distinct synthetic streams the clients spread over.
    pub streams: usize,
    /// Kill the busiest shard halfway (a shard process with SIGKILL).
    pub kill: bool,
    /// Every shard a `shoal shard` child process (`config.shards.program`, default this
    /// program) instead of inside this process.
    pub shard_processes: bool,
    pub config: Config,
}

impl Default for DemoOptions {
    fn default() -> Self {
        let mut config = Config::default();
        config.hub.listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        Self {
            clients: 50,
            duration: Duration::from_secs(5),
            streams: 8,
            kill: true,
            shard_processes: false,
            config,
        }
    }
}

/// The figures of a demo run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DemoReport {
    pub clients: usize,
    pub seconds: f64,
    pub shards: usize,
    pub killed_shard: Option<u32>,
    pub grants: u64,
    pub attaches: u64,
    pub zero_rtt_attempted: u64,
    pub zero_rtt_accepted: u64,
    pub full_handshakes: u64,
    pub chunks_received: u64,
    pub chunks_missing: u64,
    pub chunks_duplicated: u64,
    pub integrity_failures: u64,
    pub resumes: u64,
    pub client_errors: u64,
    pub ttfb_p50_us: u64,
    pub ttfb_p99_us: u64,
    pub ttfb_max_us: u64,
    pub shard_rejections: u64,
    /// Session tickets clients offered that a shard's store did not hold (each a resumption
    /// without 0-RTT): the session entries that did not travel in time.
    pub ticket_misses: u64,
    /// Granted shards that did not confirm their preparation within the hub's wait.
    pub prepares_missed: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("client setup: {0}")]
    Client(#[from] crate::client::ClientError),
}

struct ClientResult {
    stats: StatsSnapshot,
    integrity_failures: u64,
    error: Option<String>,
}

async fn one_client(
    client: Client,
    stream: StreamName,
    deadline: tokio::time::Instant,
) -> ClientResult {
    let seed = stream_seed(&stream);
    let mut integrity_failures = 0;
    let mut sub = match client.subscribe(&stream).await {
        Ok(s) => s,
        Err(e) => {
            return ClientResult {
                stats: StatsSnapshot::default(),
                integrity_failures,
                error: Some(e.to_string()),
            }
        }
    };
    let mut error = None;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Err(_) => break,
            Ok(None) => break,
            Ok(Some(Ok(Delivery::Chunk(c)))) => {
                if !verify(seed, c.seq, &c.payload) {
                    integrity_failures += 1;
                }
            }
            Ok(Some(Ok(Delivery::Gap { .. }))) => {}
            Ok(Some(Err(e))) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let stats = sub.stats();
    drop(sub);
    client.close().await;
    ClientResult {
        stats,
        integrity_failures,
        error,
    }
}

/// Runs the demo; `progress` gets one line per phase.
pub async fn run(
    opts: DemoOptions,
    mut progress: impl FnMut(&str),
) -> Result<DemoReport, DemoError> {
    let mut cfg = opts.config.clone();
    // Shard processes read their certificates from files: fresh ones in a directory of this
    // run, removed afterwards.
    let scratch = if opts.shard_processes {
        let dir = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
        cfg.shards.launcher = crate::cluster::config::LauncherKind::Processes;
        Some(Scratch(dir))
    } else {
        None
    };
    let material = match &scratch {
        Some(s) => Material::generate_in(&mut cfg, &s.0)?,
        None => Material::generate(&cfg.cluster)?,
    };
    let cfg = &cfg;
    let cluster = Cluster::start(cfg, material)?;
    if let Err(e) = cluster
        .wait_ready(crate::cluster::processes::REGISTER_TIMEOUT)
        .await
    {
        cluster.shutdown().await;
        return Err(e.into());
    }
    let hub = cluster.hub.addr();
    let shard_count = live_shards(&cluster);
    match cluster.processes() {
        Some(p) => progress(&format!(
            "cluster up: hub {hub}, {shard_count} shard processes in {} groups (start-up {:.1} ms, spawn to registered)",
            cfg.shards.groups,
            p.median_startup().unwrap_or_default().as_secs_f64() * 1e3
        )),
        None => progress(&format!(
            "cluster up: hub {hub}, {shard_count} shards in {} groups",
            cfg.shards.groups
        )),
    }
    let started = crate::clock::now();
    let deadline = crate::clock::tokio_now() + opts.duration;
    let mut tasks = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        let id = ClientId::new(format!("demo-{i}")).expect("valid client id");
        let mut o = ClientOptions::new(cfg.cluster.clone(), cluster.ca.clone(), id);
        o.heartbeat_interval = cfg.transport.heartbeat_interval;
        let client = Client::new(hub, o)?;
        let stream = StreamName::new(format!("synth/demo-{}", i % opts.streams.max(1)))
            .expect("valid stream name");
        tasks.push(tokio::spawn(one_client(client, stream, deadline)));
    }
    progress(&format!("{} clients subscribing", opts.clients));
    let mut killed = None;
    if opts.kill && cluster.processes().is_some() {
        tokio::time::sleep(opts.duration / 2).await;
        // The busiest shard by its own reports, killed with SIGKILL.
        let victim = crate::sync::lock(cluster.directory())
            .records()
            .max_by_key(|r| r.load.sessions)
            .map(|r| (r.id, r.load.sessions));
        if let (Some((id, sessions)), Some(p)) = (victim, cluster.processes()) {
            progress(&format!(
                "SIGKILL to shard process {id} ({sessions} sessions)"
            ));
            crate::pool::launcher::Launcher::reap(p, id);
            killed = Some(id.0);
        }
    } else if opts.kill {
        tokio::time::sleep(opts.duration / 2).await;
        if let Some(victim) = cluster
            .shards()
            .iter()
            .max_by_key(|s| s.counters().sessions.load(Ordering::Relaxed))
        {
            progress(&format!(
                "killing {} ({} sessions)",
                victim.id(),
                victim.counters().sessions.load(Ordering::Relaxed)
            ));
            victim.kill();
            killed = Some(victim.id().0);
        }
    }
    let mut report = DemoReport {
        clients: opts.clients,
        shards: shard_count,
        killed_shard: killed,
        ..Default::default()
    };
    let mut ttfb = hdrhistogram::Histogram::<u64>::new(3).expect("3 significant digits is valid");
    for t in tasks {
        let r = match t.await {
            Ok(r) => r,
            Err(_) => {
                report.client_errors += 1;
                continue;
            }
        };
        let s = r.stats;
        report.grants += s.grants;
        report.attaches += s.attaches;
        report.zero_rtt_attempted += s.zero_rtt_attempted;
        report.zero_rtt_accepted += s.zero_rtt_accepted;
        report.full_handshakes += s.full_handshakes;
        report.chunks_received += s.chunks;
        report.chunks_missing += s.missing;
        report.chunks_duplicated += s.duplicates;
        report.resumes += s.resumes;
        report.integrity_failures += r.integrity_failures;
        if let Some(e) = r.error {
            tracing::warn!(error = %e, "client failed");
            report.client_errors += 1;
        }
        if s.ttfb_us > 0 {
            let _ = ttfb.record(s.ttfb_us);
        }
    }
    report.seconds = crate::clock::since(started).as_secs_f64();
    report.ttfb_p50_us = ttfb.value_at_quantile(0.50);
    report.ttfb_p99_us = ttfb.value_at_quantile(0.99);
    report.ttfb_max_us = ttfb.max();
    report.shard_rejections = shard_total(&cluster, |l| l.rejections);
    report.ticket_misses = shard_total(&cluster, |l| l.ticket_misses);
    report.prepares_missed = cluster
        .hub
        .links()
        .counters()
        .entries_missed
        .load(Ordering::Relaxed);
    progress("shutting down");
    cluster.shutdown().await;
    drop(scratch);
    Ok(report)
}

/// A figure summed over the shards' loads: as shard processes last reported them, or read
/// from the embedded shards themselves (those killed included).
fn shard_total(cluster: &Cluster, figure: impl Fn(&crate::link::ShardLoad) -> u64) -> u64 {
    if cluster.processes().is_some() {
        crate::sync::lock(cluster.directory())
            .records()
            .map(|r| figure(&r.load))
            .sum()
    } else {
        cluster.shards().iter().map(|s| figure(&s.load())).sum()
    }
}

/// Shards in the directory now.
fn live_shards(cluster: &Cluster) -> usize {
    crate::sync::lock(cluster.directory()).records().count()
}

/// A directory removed when the run ends.
pub struct Scratch(pub std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl DemoReport {
    /// A readable table.
    pub fn table(&self) -> String {
        let pct = |a: u64, b: u64| {
            if b == 0 {
                "-".to_string()
            } else {
                format!("{:.1} %", 100.0 * a as f64 / b as f64)
            }
        };
        let rows = [
            ("clients", self.clients.to_string()),
            ("shards", self.shards.to_string()),
            (
                "killed shard",
                self.killed_shard
                    .map_or("none".into(), |s| format!("shard-{s}")),
            ),
            ("grants", self.grants.to_string()),
            ("attaches", self.attaches.to_string()),
            (
                "0-RTT accepted / attempted",
                format!(
                    "{} / {} ({})",
                    self.zero_rtt_accepted,
                    self.zero_rtt_attempted,
                    pct(self.zero_rtt_accepted, self.zero_rtt_attempted)
                ),
            ),
            (
                "full handshakes (no ticket)",
                self.full_handshakes.to_string(),
            ),
            ("resumes after failure", self.resumes.to_string()),
            ("chunks received", self.chunks_received.to_string()),
            ("chunks missing", self.chunks_missing.to_string()),
            ("chunks duplicated", self.chunks_duplicated.to_string()),
            ("integrity failures", self.integrity_failures.to_string()),
            ("client errors", self.client_errors.to_string()),
            (
                "time to first byte p50 / p99",
                format!(
                    "{:.2} ms / {:.2} ms",
                    self.ttfb_p50_us as f64 / 1000.0,
                    self.ttfb_p99_us as f64 / 1000.0
                ),
            ),
            ("run time", format!("{:.1} s", self.seconds)),
        ];
        let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("  {k:<w$}  {v}\n"))
            .collect()
    }
}
