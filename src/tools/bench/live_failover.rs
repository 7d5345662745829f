//! `shoal bench live-failover`: a live stream's primary shard killed with SIGKILL under a
//! publisher and its subscribers; what the subscribers saw.
//!
//! Per round: a cluster whose shards are `shoal shard` processes on loopback (one group,
//! `streams.live_standbys` copies), `subscribers` clients subscribed before the first chunk, a
//! publisher at `rate_hz` for `duration`, and at a random moment in its middle third the
//! stream's primary (as the shards report it) killed with SIGKILL. Measured over all
//! subscribers: chunks lost and duplicated, the longest time any of them went without a new
//! chunk, and from the kill: when the publisher noticed (`detection_ms`) and when the first
//! chunk published after the kill reached a subscriber (`promotion_ms`). The standbys' lag is
//! sampled from the shards' replica reports. Figures are medians over the rounds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use super::BenchError;
use crate::client::{Client, ClientOptions, Delivery, StandbyMode};
use crate::cluster::config::{Config, LauncherKind};
use crate::cluster::{Cluster, Material};
use crate::ids::{ClientId, StreamName};
use crate::link::ReplicaRole;
use crate::sync::lock;

/// What one run measures.
#[derive(Debug, Clone)]
pub struct LiveFailoverOptions {
    pub rounds: usize,
    pub subscribers: usize,
    pub rate_hz: u32,
    pub duration: Duration,
    pub shards: u32,
    pub heartbeat: Duration,
    pub seed: u64,
    /// The subscribers' standby sessions ([`ClientOptions::standby`]).
    pub standby: StandbyMode,
}

impl Default for LiveFailoverOptions {
    fn default() -> Self {
        Self {
            rounds: 5,
            subscribers: 50,
            rate_hz: 500,
            duration: Duration::from_secs(3),
            shards: 3,
            heartbeat: Duration::from_millis(100),
            seed: 7,
            standby: StandbyMode::Hot,
        }
    }
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct LiveRound {
    pub published: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub max_gap_ms: f64,
    pub detection_ms: f64,
    pub promotion_ms: f64,
    pub replication_lag_p99_ms: f64,
    /// Median publisher → subscriber delivery before the kill (about one round trip).
    pub rtt_ms: f64,
    pub killed_at_ms: f64,
}

/// The medians over the rounds, and the goal.
#[derive(Debug, Clone, Serialize)]
pub struct LiveFailoverReport {
    pub scenario: &'static str,
    pub rounds: usize,
    pub subscribers: usize,
    pub rate_hz: u32,
    /// `off`, `warm` or `hot`.
    pub standby: String,
    pub lost: u64,
    pub duplicated: u64,
    pub max_gap_ms: f64,
    pub detection_ms: f64,
    pub promotion_ms: f64,
    pub replication_lag_p99_ms: f64,
    pub rtt_ms: f64,
    /// Four silent heartbeat intervals: when a client declares its shard dead.
    pub detection_bound_ms: f64,
    pub goal: String,
    pub goal_met: bool,
    pub per_round: Vec<LiveRound>,
}

/// Runs the rounds; `progress` gets one line per round.
pub async fn run(
    opts: &LiveFailoverOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<LiveFailoverReport, BenchError> {
    if opts.shards < 2 || opts.subscribers == 0 || opts.rate_hz == 0 || opts.rounds == 0 {
        return Err(BenchError::Load(
            "live-failover needs at least 2 shards, 1 subscriber, a rate and a round".into(),
        ));
    }
    let mut rounds = Vec::with_capacity(opts.rounds);
    for r in 0..opts.rounds {
        let round = one_round(opts, r).await?;
        progress(&format!(
            "live-failover round {}/{}: lost {}, duplicated {}, max gap {:.0} ms, detection {:.0} ms, promotion {:.0} ms, lag p99 {:.1} ms",
            r + 1,
            opts.rounds,
            round.lost,
            round.duplicated,
            round.max_gap_ms,
            round.detection_ms,
            round.promotion_ms,
            round.replication_lag_p99_ms
        ));
        rounds.push(round);
    }
    let med = |f: fn(&LiveRound) -> f64| super::median(rounds.iter().map(f));
    let bound = opts.heartbeat.as_secs_f64() * 4e3;
    let max_gap = med(|r| r.max_gap_ms);
    let rtt = med(|r| r.rtt_ms);
    let lost = rounds.iter().map(|r| r.lost).sum();
    let duplicated = rounds.iter().map(|r| r.duplicated).sum();
    Ok(LiveFailoverReport {
        scenario: "live-failover",
        rounds: rounds.len(),
        subscribers: opts.subscribers,
        rate_hz: opts.rate_hz,
        standby: format!("{:?}", opts.standby).to_lowercase(),
        lost,
        duplicated,
        max_gap_ms: max_gap,
        detection_ms: med(|r| r.detection_ms),
        promotion_ms: med(|r| r.promotion_ms),
        replication_lag_p99_ms: med(|r| r.replication_lag_p99_ms),
        rtt_ms: rtt,
        detection_bound_ms: bound,
        goal: format!("lost 0, duplicated 0, max_gap_ms <= {bound:.0} + 2 x rtt"),
        goal_met: lost == 0 && duplicated == 0 && max_gap <= bound + 2.0 * rtt,
        per_round: rounds,
    })
}

/// Arrivals at one subscriber: (sequence, when).
type Arrivals = Arc<Mutex<Vec<(u64, Instant)>>>;

async fn one_round(opts: &LiveFailoverOptions, round: usize) -> Result<LiveRound, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Load(e.to_string());
    let mut cfg = Config::default();
    cfg.hub.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.admin.listen = None;
    cfg.pool.enabled = false;
    cfg.shards.count = opts.shards;
    cfg.shards.groups = 1;
    cfg.shards.launcher = LauncherKind::Processes;
    cfg.shards.program = Some(std::env::current_exe().map_err(|e| err(&e))?);
    cfg.streams.live_standbys = 1;
    cfg.transport.heartbeat_interval = opts.heartbeat;
    let dir = std::env::temp_dir().join(format!(
        "shoal-live-failover-{}-{round}",
        std::process::id()
    ));
    let _scratch = crate::tools::demo::Scratch(dir.clone());
    let material = Material::generate_in(&mut cfg, &dir).map_err(|e| err(&e))?;
    cfg.validate().map_err(|e| err(&e))?;
    let cluster = Cluster::start(&cfg, material).map_err(|e| err(&e))?;
    let outcome = async {
        cluster
            .wait_ready(crate::cluster::processes::REGISTER_TIMEOUT)
            .await
            .map_err(|e| err(&e))?;
        measure(opts, round, &cfg, &cluster).await
    }
    .await;
    cluster.shutdown().await;
    outcome
}

async fn measure(
    opts: &LiveFailoverOptions,
    round: usize,
    cfg: &Config,
    cluster: &Cluster,
) -> Result<LiveRound, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Load(e.to_string());
    let hub = cluster.hub.addr();
    let client = |name: String, standby: StandbyMode| -> Result<Client, BenchError> {
        let id = ClientId::new(name).map_err(|e| err(&e))?;
        let mut o = ClientOptions::new(cfg.cluster.clone(), cluster.ca.clone(), id);
        o.heartbeat_interval = cfg.transport.heartbeat_interval;
        o.standby = standby;
        Client::new(hub, o).map_err(|e| err(&e))
    };
    let stream = StreamName::new(format!("live/bench-failover-{round}")).map_err(|e| err(&e))?;
    let total = (u64::from(opts.rate_hz) * opts.duration.as_millis() as u64 / 1000).max(10);
    // Subscribers first, so that each must see every chunk.
    let (done_tx, done_rx) = tokio::sync::watch::channel(None::<u64>);
    let mut readers = Vec::with_capacity(opts.subscribers);
    for i in 0..opts.subscribers {
        let c = client(format!("bench-live-sub-{round}-{i}"), opts.standby)?;
        let mut sub = c.subscribe(&stream).await.map_err(|e| err(&e))?;
        let arrivals: Arrivals = Arc::default();
        let a = arrivals.clone();
        let mut done = done_rx.clone();
        readers.push((
            arrivals,
            tokio::spawn(async move {
                let _client = c;
                // Bounded: the publisher's last sequence, or 15 s after it finished.
                let mut until: Option<tokio::time::Instant> = None;
                loop {
                    let last = *done.borrow();
                    if let (Some(last), Some(&(s, _))) = (last, lock(&a).last()) {
                        if s >= last {
                            break;
                        }
                    }
                    if last.is_some() && until.is_none() {
                        until = Some(crate::clock::tokio_now() + Duration::from_secs(15));
                    }
                    let wait = until.unwrap_or(crate::clock::tokio_now() + Duration::from_secs(60));
                    tokio::select! {
                        d = sub.next() => match d {
                            Some(Ok(Delivery::Chunk(c))) => lock(&a).push((c.seq.get(), crate::clock::now())),
                            Some(Ok(Delivery::Gap { .. })) => {}
                            _ => break,
                        },
                        _ = done.changed() => {}
                        _ = tokio::time::sleep_until(wait) => break,
                    }
                }
                sub.stats()
            }),
        ));
    }
    let pc = client(format!("bench-live-pub-{round}"), StandbyMode::Off)?;
    let mut publisher = pc.publish(&stream).await.map_err(|e| err(&e))?;
    let sent: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::default();
    // Kill at a random moment in the middle third of the run.
    let third = opts.duration.as_secs_f64() / 3.0;
    let draw = splitmix(opts.seed ^ (round as u64).wrapping_mul(0x9e37_79b9));
    let kill_after = Duration::from_secs_f64(third + third * (draw % 1000) as f64 / 1000.0);
    let started = crate::clock::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(opts.rate_hz));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut killed: Option<Instant> = None;
    let mut kill_seen: Option<tokio::task::JoinHandle<Instant>> = None;
    let mut detected: Option<Instant> = None;
    let mut lag_samples: Vec<f64> = Vec::new();
    let mut last_sample = started;
    for i in 0..total {
        tick.tick().await;
        let now = crate::clock::now();
        if killed.is_none() && now.saturating_duration_since(started) >= kill_after {
            let primary = lock(cluster.directory())
                .records()
                .find(|r| {
                    r.replicas
                        .iter()
                        .any(|x| x.stream == stream && x.role == ReplicaRole::Primary)
                })
                .map(|r| r.id);
            if let (Some(id), Some(p)) = (primary, cluster.processes()) {
                crate::pool::launcher::Launcher::reap(p, id);
                // The kill counts from when the child is seen gone (its exit reaped), not from
                // the request: the signal is sent by the launcher's watch task.
                let p = p.clone();
                kill_seen = Some(tokio::spawn(async move {
                    for _ in 0..2000 {
                        if !p.running().contains(&id) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    crate::clock::now()
                }));
                killed = Some(crate::clock::now());
            }
        }
        if killed.is_some() && detected.is_none() && publisher.stats().resumes > 0 {
            detected = Some(now);
        }
        if now.saturating_duration_since(last_sample) >= Duration::from_millis(50) {
            last_sample = now;
            for r in lock(cluster.directory()).records() {
                for x in r.replicas.iter().filter(|x| x.stream == stream) {
                    // A standby that is gone (killed, not yet out of the group) is not lagging:
                    // it is not being sent to.
                    lag_samples.extend(
                        x.standbys
                            .iter()
                            .filter(|l| l.connected)
                            .map(|l| l.lag_ms as f64),
                    );
                }
            }
        }
        let payload = Bytes::from(vec![(i % 251) as u8; 256]);
        let seq = publisher.send(payload).await.map_err(|e| err(&e))?;
        lock(&sent).push((seq.get(), crate::clock::now()));
    }
    // The publisher's failover may still be under way: wait (bounded) for its notice.
    for _ in 0..400 {
        if detected.is_some() || killed.is_none() {
            break;
        }
        if publisher.stats().resumes > 0 {
            detected = Some(crate::clock::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last_seq = lock(&sent).last().map(|s| s.0).unwrap_or(0);
    done_tx.send_replace(Some(last_seq));
    let mut all = Vec::with_capacity(readers.len());
    for (arrivals, task) in readers {
        let _ = task.await;
        all.push(std::mem::take(&mut *lock(&arrivals)));
    }
    let _ = publisher.finish().await;
    let killed = match kill_seen {
        Some(t) => t.await.ok().or(killed),
        None => killed,
    };
    let killed = killed.ok_or_else(|| BenchError::Load("no primary was found to kill".into()))?;
    let sent = std::mem::take(&mut *lock(&sent));
    Ok(figures(&sent, &all, killed, detected, started, lag_samples))
}

/// One SplitMix64 step: the kill moment of a round, reproducible from the seed.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The round's figures from what was sent and what each subscriber received.
fn figures(
    sent: &[(u64, Instant)],
    subs: &[Vec<(u64, Instant)>],
    killed: Instant,
    detected: Option<Instant>,
    started: Instant,
    mut lag: Vec<f64>,
) -> LiveRound {
    let sent_at: std::collections::HashMap<u64, Instant> = sent.iter().copied().collect();
    let (mut lost, mut duplicated, mut max_gap) = (0u64, 0u64, 0f64);
    let mut first_after_kill: Option<Instant> = None;
    let mut latencies = Vec::new();
    for arrivals in subs {
        let mut seen = std::collections::HashSet::with_capacity(arrivals.len());
        for &(seq, at) in arrivals {
            if !seen.insert(seq) {
                duplicated += 1;
                continue;
            }
            if let Some(&s) = sent_at.get(&seq) {
                if s > killed {
                    first_after_kill = Some(first_after_kill.map_or(at, |f| f.min(at)));
                } else {
                    latencies.push(ms(at.saturating_duration_since(s)));
                }
            }
        }
        lost += sent.iter().filter(|(s, _)| !seen.contains(s)).count() as u64;
        for w in arrivals.windows(2) {
            max_gap = max_gap.max(ms(w[1].1.saturating_duration_since(w[0].1)));
        }
    }
    lag.sort_by(f64::total_cmp);
    let p99 = lag
        .get(((lag.len() as f64 * 0.99).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0.0);
    LiveRound {
        published: sent.len() as u64,
        lost,
        duplicated,
        max_gap_ms: max_gap,
        detection_ms: detected.map_or(f64::NAN, |d| ms(d.saturating_duration_since(killed))),
        promotion_ms: first_after_kill
            .map_or(f64::NAN, |f| ms(f.saturating_duration_since(killed))),
        replication_lag_p99_ms: p99,
        rtt_ms: super::median(latencies),
        killed_at_ms: ms(killed.saturating_duration_since(started)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_count_losses_duplicates_and_the_longest_silence() {
        let t0 = crate::clock::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let sent: Vec<(u64, Instant)> = (1..=5).map(|s| (s, at(s * 10))).collect();
        let killed = at(25);
        // One subscriber got everything (3 arriving twice), one missed 4.
        let a = vec![
            (1, at(11)),
            (2, at(21)),
            (3, at(300)),
            (3, at(301)),
            (4, at(302)),
            (5, at(303)),
        ];
        let b = vec![(1, at(12)), (2, at(22)), (3, at(310)), (5, at(311))];
        let f = figures(
            &sent,
            &[a, b],
            killed,
            Some(at(225)),
            t0,
            vec![1.0, 2.0, 9.0],
        );
        assert_eq!((f.lost, f.duplicated), (1, 1));
        assert_eq!(f.max_gap_ms, 288.0);
        assert_eq!(f.promotion_ms, 275.0);
        assert_eq!(f.detection_ms, 200.0);
        assert_eq!(f.replication_lag_p99_ms, 9.0);
        assert_eq!(f.rtt_ms, 1.5);
    }
}
