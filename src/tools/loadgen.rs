//! `shoal loadgen`: many simulated clients against a running deployment.
//!
//! Clients arrive at a fixed rate, each with its own socket and TLS state (a cold client), ask
//! the hub for a stream drawn from a weighted mix, attach to a shard, receive for `hold`, and
//! leave. Grant latency, attach latency and time to first byte go into histograms; errors are
//! counted by kind. Before any load, one probe request checks that the hub answers, so an
//! unreachable or refusing hub is a clear error, not a run full of failures.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use rustls::pki_types::CertificateDer;
use serde::Serialize;

use crate::client::{Client, ClientError, ClientOptions, Delivery, StatsSnapshot};
use crate::ids::{ClientId, StreamName};
use crate::wire::{Hints, Role};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadgenOptions {
    pub hub: SocketAddr,
    pub ca: Vec<CertificateDer<'static>>,
    pub cluster: String,
    /// Clients in all.
    pub clients: usize,
    /// New clients per second.
    pub rate: f64,
    /// How long each client stays subscribed.
    pub hold: Duration,
    /// Streams and their weights.
    pub mix: Vec<(StreamName, u32)>,
    pub hints: Hints,
    /// Time limit of each grant and attach.
    pub request_timeout: Duration,
    /// Each client's heartbeat interval (a shard silent for four of them is dead); `None`:
    /// the client library's default ([`ClientOptions::heartbeat_interval`]).
    pub heartbeat_interval: Option<Duration>,
}

/// Why a load run could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadgenError {
    #[error("invalid options: {0}")]
    Options(String),
    #[error("the hub at {hub} did not grant {stream}: {source}")]
    Probe {
        hub: SocketAddr,
        stream: StreamName,
        source: Box<ClientError>,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Percentiles of one latency, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        }
    }
}

/// The JSON summary of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadgenReport {
    pub hub: String,
    pub clients: usize,
    pub succeeded: u64,
    pub failed: u64,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    pub zero_rtt_attempted: u64,
    pub zero_rtt_accepted: u64,
    pub chunks: u64,
    pub chunks_missing: u64,
    pub chunks_duplicated: u64,
    /// Re-attaches after a shard failure, summed over the clients.
    pub resumes: u64,
    /// The longest time between two consecutive chunks of any one client, after its first
    /// chunk: the longest resume a client saw (0 when no client got two chunks).
    pub max_stall_ms: f64,
    pub grant: Latency,
    pub attach: Latency,
    pub ttfb: Latency,
    pub seconds: f64,
}

/// Where a run stands, for a progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tick {
    pub started: u64,
    pub done: u64,
    pub failed: u64,
    pub chunks: u64,
}

/// The histograms behind a report, for plotting.
#[derive(Debug)]
pub struct Samples {
    pub attach: Histogram<u64>,
    pub ttfb: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new(3).expect("3 significant digits is valid")
}

struct Shared {
    started: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    chunks: AtomicU64,
    results: Mutex<Vec<Result<ClientOutcome, String>>>,
}

/// What one client that held its subscription to the end measured.
struct ClientOutcome {
    stats: StatsSnapshot,
    /// The longest time between two of its consecutive chunks.
    max_stall: Duration,
}

impl LoadgenOptions {
    fn check(&self) -> Result<(), LoadgenError> {
        let bad = |m: &str| Err(LoadgenError::Options(m.to_string()));
        if self.clients == 0 {
            return bad("--clients must be at least 1");
        }
        if !(self.rate > 0.0 && self.rate <= 100_000.0) {
            return bad("--rate must be in (0, 100000] clients per second");
        }
        if self.hold > Duration::from_secs(3600) {
            return bad("--hold must be at most an hour");
        }
        if let Some(hb) = self.heartbeat_interval {
            if hb < Duration::from_millis(10) || hb > Duration::from_secs(60) {
                return bad("the heartbeat interval must be in [10 ms, 60 s]");
            }
        }
        if self.mix.is_empty() || self.mix.iter().all(|(_, w)| *w == 0) {
            return bad("the stream mix needs at least one stream with a weight above 0");
        }
        self.hints
            .validate()
            .map_err(|e| LoadgenError::Options(e.to_string()))
    }

    fn client(&self, id: String) -> Result<Client, LoadgenError> {
        let id = ClientId::new(id).map_err(|e| LoadgenError::Options(e.to_string()))?;
        let mut o = ClientOptions::new(self.cluster.clone(), self.ca.clone(), id);
        o.hints = self.hints.clone();
        o.request_timeout = self.request_timeout;
        if let Some(hb) = self.heartbeat_interval {
            o.heartbeat_interval = hb;
        }
        Ok(Client::new(self.hub, o)?)
    }

    /// The stream of client `i`: the mix walked by weight.
    fn stream(&self, i: usize) -> &StreamName {
        let total: u64 = self.mix.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut k = (i as u64) % total.max(1);
        for (s, w) in &self.mix {
            if k < u64::from(*w) {
                return s;
            }
            k -= u64::from(*w);
        }
        &self.mix[0].0
    }
}

/// Runs the load; `tick` is called about every 200 ms and once at the end.
pub async fn run(
    opts: LoadgenOptions,
    mut tick: impl FnMut(Tick),
) -> Result<(LoadgenReport, Samples), LoadgenError> {
    opts.check()?;
    let probe = opts.client("loadgen-probe".into())?;
    let stream = opts.stream(0).clone();
    let answer = probe.request(&stream, Role::Subscribe).await;
    probe.close().await;
    answer.map_err(|source| LoadgenError::Probe {
        hub: opts.hub,
        stream,
        source: Box::new(source),
    })?;

    let shared = Arc::new(Shared {
        started: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        chunks: AtomicU64::new(0),
        results: Mutex::new(Vec::with_capacity(opts.clients)),
    });
    let opts = Arc::new(opts);
    let t0 = crate::clock::now();
    let arrivals = {
        let (opts, shared) = (opts.clone(), shared.clone());
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(opts.clients);
            let period = Duration::from_secs_f64(1.0 / opts.rate);
            let start = crate::clock::tokio_now();
            for i in 0..opts.clients {
                tokio::time::sleep_until(start + period.mul_f64(i as f64)).await;
                shared.started.fetch_add(1, Ordering::Relaxed);
                let (opts, shared) = (opts.clone(), shared.clone());
                tasks.push(tokio::spawn(async move {
                    let r = one_client(&opts, i, &shared).await;
                    let c = if r.is_ok() {
                        &shared.done
                    } else {
                        &shared.failed
                    };
                    c.fetch_add(1, Ordering::Relaxed);
                    shared
                        .results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(r);
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    };
    let snapshot = |s: &Shared| Tick {
        started: s.started.load(Ordering::Relaxed),
        done: s.done.load(Ordering::Relaxed),
        failed: s.failed.load(Ordering::Relaxed),
        chunks: s.chunks.load(Ordering::Relaxed),
    };
    tokio::pin!(arrivals);
    loop {
        tokio::select! {
            _ = &mut arrivals => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => tick(snapshot(&shared)),
        }
    }
    tick(snapshot(&shared));
    let results = std::mem::take(&mut *shared.results.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(summarize(&opts, results, crate::clock::since(t0)))
}

/// One simulated client: its stats and longest stall, or what failed (a failed client's
/// partial stats are not mixed into the report).
async fn one_client(
    opts: &LoadgenOptions,
    i: usize,
    shared: &Shared,
) -> Result<ClientOutcome, String> {
    let client = opts
        .client(format!("loadgen-{i}"))
        .map_err(|e| e.to_string())?;
    let result = async {
        let mut sub = client
            .subscribe(opts.stream(i))
            .await
            .map_err(|e| e.to_string())?;
        let until = crate::clock::tokio_now() + opts.hold;
        let (mut last_chunk, mut max_stall) = (None, Duration::ZERO);
        loop {
            match tokio::time::timeout_at(until, sub.next()).await {
                Err(_) => break,
                Ok(None) => return Err("subscription ended".to_string()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(Delivery::Chunk(_)))) => {
                    shared.chunks.fetch_add(1, Ordering::Relaxed);
                    let now = crate::clock::now();
                    if let Some(last) = last_chunk {
                        max_stall = max_stall.max(now.saturating_duration_since(last));
                    }
                    last_chunk = Some(now);
                }
                Ok(Some(Ok(Delivery::Gap { .. }))) => {}
            }
        }
        Ok(ClientOutcome {
            stats: sub.stats(),
            max_stall,
        })
    }
    .await;
    client.close().await;
    result
}

/// The kind of an error message: its text up to the first colon.
fn kind(message: &str) -> String {
    message
        .split(':')
        .next()
        .unwrap_or(message)
        .trim()
        .to_string()
}

fn summarize(
    opts: &LoadgenOptions,
    results: Vec<Result<ClientOutcome, String>>,
    elapsed: Duration,
) -> (LoadgenReport, Samples) {
    let (mut grant, mut attach, mut ttfb) = (histogram(), histogram(), histogram());
    let mut r = LoadgenReport {
        hub: opts.hub.to_string(),
        clients: opts.clients,
        seconds: elapsed.as_secs_f64(),
        ..Default::default()
    };
    for res in results {
        match res {
            Ok(ClientOutcome {
                stats: s,
                max_stall,
            }) => {
                r.succeeded += 1;
                r.resumes += s.resumes;
                r.max_stall_ms = r.max_stall_ms.max(max_stall.as_secs_f64() * 1e3);
                r.zero_rtt_attempted += s.zero_rtt_attempted;
                r.zero_rtt_accepted += s.zero_rtt_accepted;
                r.chunks += s.chunks;
                r.chunks_missing += s.missing;
                r.chunks_duplicated += s.duplicates;
                for (h, v) in [
                    (&mut grant, s.grant_us),
                    (&mut attach, s.attach_us),
                    (&mut ttfb, s.ttfb_us),
                ] {
                    if v > 0 {
                        let _ = h.record(v);
                    }
                }
            }
            Err(e) => {
                r.failed += 1;
                *r.errors.entry(kind(&e)).or_default() += 1;
            }
        }
    }
    r.grant = Latency::of(&grant);
    r.attach = Latency::of(&attach);
    r.ttfb = Latency::of(&ttfb);
    (r, Samples { attach, ttfb })
}

/// Parses a stream mix: `NAME[:WEIGHT],…` (weight 1 when left out).
pub fn parse_mix(text: &str) -> Result<Vec<(StreamName, u32)>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let part = part.trim();
            let (name, weight) = match part.rsplit_once(':') {
                Some((n, w)) => (
                    n,
                    w.parse::<u32>()
                        .map_err(|_| format!("bad weight in {part:?} (want NAME:WEIGHT)"))?,
                ),
                None => (part, 1),
            };
            let name = StreamName::new(name.to_string()).map_err(|e| format!("{part:?}: {e}"))?;
            Ok((name, weight))
        })
        .collect()
}

impl LoadgenReport {
    /// A readable summary.
    pub fn table(&self) -> String {
        let ms = |us: u64| us as f64 / 1000.0;
        let lat = |l: &Latency| {
            format!(
                "p50 {:.2} / p90 {:.2} / p99 {:.2} / max {:.2} ms  (n={})",
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.max_us),
                l.count
            )
        };
        let mut out = format!(
            "  clients           {} ({} ok, {} failed) in {:.1} s\n",
            self.clients, self.succeeded, self.failed, self.seconds
        );
        out += &format!(
            "  0-RTT             {} / {} attaches\n",
            self.zero_rtt_accepted, self.zero_rtt_attempted
        );
        out += &format!(
            "  chunks            {} ({} missing, {} duplicated)\n",
            self.chunks, self.chunks_missing, self.chunks_duplicated
        );
        out += &format!(
            "  resumes           {} (longest stall between two chunks {:.1} ms)\n",
            self.resumes, self.max_stall_ms
        );
        out += &format!("  grant latency     {}\n", lat(&self.grant));
        out += &format!("  attach latency    {}\n", lat(&self.attach));
        out += &format!("  time to 1st byte  {}\n", lat(&self.ttfb));
        for (k, v) in &self.errors {
            out += &format!("  error             {v} × {k}\n");
        }
        out
    }
}

/// Writes an SVG chart: the cumulative distributions of time to first byte and attach latency.
pub fn plot(samples: &Samples, path: &Path) -> Result<(), String> {
    use plotters::prelude::*;
    let curve = |h: &Histogram<u64>| -> Vec<(f64, f64)> {
        if h.is_empty() {
            return Vec::new();
        }
        h.iter_quantiles(2)
            .map(|v| {
                (
                    v.value_iterated_to() as f64 / 1000.0,
                    v.quantile_iterated_to() * 100.0,
                )
            })
            .collect()
    };
    let series = [
        ("time to first byte", curve(&samples.ttfb), RED),
        ("attach latency", curve(&samples.attach), BLUE),
    ];
    let max_ms = series
        .iter()
        .flat_map(|(_, c, _)| c.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
    let e = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let mut chart = ChartBuilder::on(&root)
        .caption("shoal loadgen: latency distributions", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0f64..max_ms, 0f64..100f64)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("milliseconds")
        .y_desc("percent of clients at or below")
        .draw()
        .map_err(|x| e(&x))?;
    for (name, points, color) in series {
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_weights_and_rejects_bad_ones() {
        let m = parse_mix("synth/a:3, synth/b").unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].0.as_str(), m[0].1), ("synth/a", 3));
        assert_eq!(m[1].1, 1);
        assert!(parse_mix("synth/a:x").is_err());
        assert!(parse_mix("bad name with spaces").is_err());
    }

    #[test]
    fn clients_walk_the_mix_by_weight() {
        let opts = LoadgenOptions {
            hub: "127.0.0.1:1".parse().unwrap(),
            ca: vec![],
            cluster: "x".into(),
            clients: 1,
            rate: 1.0,
            hold: Duration::ZERO,
            mix: parse_mix("synth/a:2,synth/b:1").unwrap(),
            hints: Hints::default(),
            request_timeout: Duration::from_secs(1),
            heartbeat_interval: None,
        };
        let names: Vec<&str> = (0..6).map(|i| opts.stream(i).as_str()).collect();
        assert_eq!(
            names,
            ["synth/a", "synth/a", "synth/b", "synth/a", "synth/a", "synth/b"]
        );
        assert!(opts.check().is_ok());
        let too_fast = LoadgenOptions {
            heartbeat_interval: Some(Duration::from_millis(1)),
            ..opts.clone()
        };
        assert!(too_fast.check().is_err());
        let bad = LoadgenOptions { rate: 0.0, ..opts };
        assert!(bad.check().is_err());
    }
}
