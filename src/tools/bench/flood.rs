//! `shoal bench flood`: an attacker in a separate process (`shoal bench-attack SPEC`, from
//! 127.0.0.2) against a hub with shard processes, while legitimate clients (from 127.0.0.1)
//! get grants, attach in 0-RTT and read their first chunks.
//!
//! The attack, every part at once: full handshakes without tickets, as many as its tasks can
//! drive, to the hub and every shard; connections that never open a stream; streams that send
//! two bytes and stall; garbage datagrams to every port. Per round: the legitimate load alone,
//! then the same load under attack; time to first byte p99 of both (the ratio), failures,
//! and the RSS of the hub and of the shard processes at the end of the attack ÷ before it.
//!
//! The attacker runs at the lowest CPU priority: it stands for other machines, and on this
//! 2-core one what is measured must be the server's defence, not the attacker's CPU share.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::child::{rss_bytes, ChildServer};
use super::{median, BenchError, BenchOptions};
use crate::cluster::pem_certs;

/// Where the attack goes, and for how long.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AttackSpec {
    pub targets: Vec<SocketAddr>,
    pub ca_pem: String,
    pub cluster: String,
    pub bind_ip: IpAddr,
    pub seconds: f64,
    /// Concurrent handshake loops.
    pub handshake_tasks: usize,
    /// Connections held open without a stream, and streams stalled after two bytes.
    pub idle: usize,
    pub stalled: usize,
    /// Garbage datagrams a second, over all targets.
    pub garbage_per_s: u32,
}

/// What the attacker did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AttackReport {
    pub seconds: f64,
    pub handshakes_attempted: u64,
    pub handshakes_completed: u64,
    /// Refused or timed out by the server.
    pub handshakes_refused: u64,
    pub idle_opened: u64,
    pub stalled_opened: u64,
    pub garbage_sent: u64,
}

#[derive(Default)]
struct Counts {
    attempted: AtomicU64,
    completed: AtomicU64,
    refused: AtomicU64,
    idle: AtomicU64,
    stalled: AtomicU64,
    garbage: AtomicU64,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Load(e.to_string())
}

/// A client endpoint with fresh TLS sessions only (no tickets: every handshake is full).
fn attack_endpoint(spec: &AttackSpec) -> Result<quinn::Endpoint, BenchError> {
    let roots = pem_certs(&spec.ca_pem);
    let mut crypto = (*crate::security::tls::client_crypto(&roots).map_err(err)?).clone();
    crypto.resumption = rustls::client::Resumption::disabled();
    crypto.enable_early_data = false;
    let cfg = crate::security::tls::client_config(Arc::new(crypto), Duration::from_secs(30))
        .map_err(err)?;
    let mut ep = quinn::Endpoint::client(SocketAddr::new(spec.bind_ip, 0)).map_err(err)?;
    ep.set_default_client_config(cfg);
    Ok(ep)
}

/// The attacker process: runs `spec`, prints its [`AttackReport`] as one JSON line.
pub async fn attack_child(spec_json: &str) -> Result<(), BenchError> {
    let spec: AttackSpec = serde_json::from_str(spec_json).map_err(err)?;
    let report = attack(&spec).await?;
    println!("{}", serde_json::to_string(&report).map_err(err)?);
    Ok(())
}

/// Runs the attack of `spec` for its duration.
pub async fn attack(spec: &AttackSpec) -> Result<AttackReport, BenchError> {
    let counts = Arc::new(Counts::default());
    let until = crate::clock::tokio_now() + Duration::from_secs_f64(spec.seconds);
    let ep = attack_endpoint(spec)?;
    let mut tasks = Vec::new();
    let target = |i: usize| spec.targets[i % spec.targets.len()];
    for i in 0..spec.handshake_tasks {
        let (ep, c, to, name) = (ep.clone(), counts.clone(), target(i), spec.cluster.clone());
        tasks.push(tokio::spawn(async move {
            while crate::clock::tokio_now() < until {
                c.attempted.fetch_add(1, Ordering::Relaxed);
                let Ok(connecting) = ep.connect(to, &name) else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                match tokio::time::timeout(Duration::from_secs(2), connecting).await {
                    Ok(Ok(conn)) => {
                        c.completed.fetch_add(1, Ordering::Relaxed);
                        conn.close(0u32.into(), b"");
                    }
                    _ => {
                        c.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // Connections that do nothing, and streams that stall: reopened when the server closes.
    for i in 0..spec.idle + spec.stalled {
        let stall = i >= spec.idle;
        let (ep, c, to, name) = (ep.clone(), counts.clone(), target(i), spec.cluster.clone());
        tasks.push(tokio::spawn(async move {
            while crate::clock::tokio_now() < until {
                let Ok(connecting) = ep.connect(to, &name) else {
                    return;
                };
                let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(2), connecting).await
                else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                if stall {
                    c.stalled.fetch_add(1, Ordering::Relaxed);
                    if let Ok((mut send, _recv)) = conn.open_bi().await {
                        let _ = send.write_all(&[0, 0]).await;
                        let _ = tokio::time::timeout_at(until, conn.closed()).await;
                    }
                } else {
                    c.idle.fetch_add(1, Ordering::Relaxed);
                    let _ = tokio::time::timeout_at(until, conn.closed()).await;
                }
            }
        }));
    }
    {
        let (c, targets, rate) = (counts.clone(), spec.targets.clone(), spec.garbage_per_s);
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(spec.bind_ip, 0))
            .await
            .map_err(err)?;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let per_tick = (rate / 100).max(1);
            let mut junk = [0u8; 1200];
            let mut n: u64 = 0;
            while crate::clock::tokio_now() < until {
                tick.tick().await;
                for _ in 0..per_tick {
                    n += 1;
                    // Cheap, varied bytes: a long or short header with nonsense after it.
                    for (j, b) in junk.iter_mut().enumerate() {
                        *b = (n as usize).wrapping_mul(31).wrapping_add(j * 7) as u8;
                    }
                    let to = targets[n as usize % targets.len()];
                    if sock.send_to(&junk, to).await.is_ok() {
                        c.garbage.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    ep.close(0u32.into(), b"");
    let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
    Ok(AttackReport {
        seconds: spec.seconds,
        handshakes_attempted: l(&counts.attempted),
        handshakes_completed: l(&counts.completed),
        handshakes_refused: l(&counts.refused),
        idle_opened: l(&counts.idle),
        stalled_opened: l(&counts.stalled),
        garbage_sent: l(&counts.garbage),
    })
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FloodRound {
    pub attack: AttackReport,
    pub attack_handshakes_per_s: f64,
    pub legit_ttfb_p99_us_without: f64,
    pub legit_ttfb_p99_us_during: f64,
    pub legit_ttfb_p99_ratio: f64,
    pub legit_failures: u64,
    pub hub_rss_ratio: f64,
    pub shard_rss_ratio: f64,
    pub hub_rss_mib: [f64; 2],
    pub shard_rss_mib: [f64; 2],
}

/// Resident memory before the attack and at its end (medians over the rounds), and end ÷ start.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub start: f64,
    pub end: f64,
    pub ratio: f64,
}

/// Medians over the rounds (sums for failures), and the goal.
#[derive(Debug, Clone, Serialize)]
pub struct FloodReport {
    pub scenario: &'static str,
    pub rounds: usize,
    pub attack_handshakes_per_s: f64,
    pub legit_ttfb_p99_ratio: f64,
    pub legit_failures: u64,
    /// The hub process's RSS, MiB (the ratio: end ÷ start).
    pub hub_rss_mib: Rss,
    /// The shard processes' RSS together, MiB.
    pub shard_rss_mib: Rss,
    pub goal: &'static str,
    pub goal_met: bool,
    pub per_round: Vec<FloodRound>,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// RSS of the shard processes (the child's children), summed.
fn shards_rss(child: &ChildServer) -> u64 {
    super::child::children(child.pid())
        .into_iter()
        .filter_map(|p| rss_bytes(p).ok())
        .sum()
}

/// The legitimate load: `clients` over a second and a half, each holding half a second.
async fn legit(child: &ChildServer, clients: usize) -> Result<(f64, u64), BenchError> {
    use crate::tools::loadgen::{self, LoadgenOptions};
    let opts = LoadgenOptions {
        hub: child.addr(0),
        ca: child.ca(),
        cluster: child.ready.cluster.clone(),
        clients,
        rate: clients as f64 / 1.5,
        hold: Duration::from_millis(500),
        mix: loadgen::parse_mix("synth/flood-a,synth/flood-b").map_err(err)?,
        hints: Default::default(),
        request_timeout: Duration::from_secs(5),
        heartbeat_interval: None,
    };
    let (r, _) = loadgen::run(opts, |_| {}).await.map_err(err)?;
    Ok((r.ttfb.p99_us as f64, r.failed))
}

/// One round against `child`: the load alone, then under attack.
async fn one_round(
    child: &ChildServer,
    exe: &std::path::Path,
    clients: usize,
    seconds: f64,
    tasks: usize,
) -> Result<FloodRound, BenchError> {
    // Warm-up, then the load alone.
    legit(child, clients / 2).await?;
    let (without, failed_alone) = legit(child, clients).await?;
    let (hub0, shard0) = (child.rss()?, shards_rss(child));
    let attack_spec = AttackSpec {
        targets: child.ready.addrs.clone(),
        ca_pem: child.ready.ca_pem.clone(),
        cluster: child.ready.cluster.clone(),
        bind_ip: IpAddr::from([127, 0, 0, 2]),
        seconds,
        handshake_tasks: tasks,
        idle: tasks * 2,
        stalled: tasks,
        garbage_per_s: 5_000,
    };
    let attacker = tokio::process::Command::new("nice")
        .args(["-n", "19"])
        .arg(exe)
        .arg("bench-attack")
        .arg(serde_json::to_string(&attack_spec).map_err(err)?)
        .env("RUST_LOG", "off")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| err(format!("the attacker: {e}")))?;
    // Let the attack reach its pace, then the same load under it.
    tokio::time::sleep(Duration::from_secs_f64(seconds / 4.0)).await;
    let (during, failed_during) = legit(child, clients).await?;
    let (hub1, shard1) = (child.rss()?, shards_rss(child));
    let out = tokio::time::timeout(
        Duration::from_secs_f64(seconds + 30.0),
        attacker.wait_with_output(),
    )
    .await
    .map_err(|_| err("the attacker did not finish"))?
    .map_err(err)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let attack: AttackReport = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| err(format!("the attacker printed no report: {text}")))?;
    Ok(FloodRound {
        attack_handshakes_per_s: attack.handshakes_attempted as f64 / attack.seconds,
        attack,
        legit_ttfb_p99_us_without: without,
        legit_ttfb_p99_us_during: during,
        legit_ttfb_p99_ratio: during / without.max(1.0),
        legit_failures: failed_alone + failed_during,
        hub_rss_ratio: hub1 as f64 / hub0.max(1) as f64,
        shard_rss_ratio: shard1 as f64 / shard0.max(1) as f64,
        hub_rss_mib: [mib(hub0), mib(hub1)],
        shard_rss_mib: [mib(shard0), mib(shard1)],
    })
}

/// Runs the rounds; `progress` gets a line per phase.
pub async fn run(
    opts: &BenchOptions,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<FloodReport, BenchError> {
    let (clients, seconds, tasks) = if opts.quick {
        (8, 3.0, 4)
    } else {
        (60, 8.0, 48)
    };
    let mut rounds = Vec::new();
    for r in 0..opts.rounds.max(1) {
        let (mut spec, _link) = super::scenarios::default_shoal(&BenchOptions {
            remote_link_delay: Some(Duration::ZERO),
            ..opts.clone()
        })
        .await?;
        // What a user gets: the default handshake limits.
        if let super::ServerSpec::Shoal {
            production_limits, ..
        } = &mut spec
        {
            *production_limits = true;
        }
        let child = ChildServer::spawn(&opts.exe, &spec).await?;
        let round = one_round(&child, &opts.exe, clients, seconds, tasks).await;
        // Stopped on every path: its shard processes go with it.
        child.stop().await;
        let round = round?;
        progress(&format!(
            "bench flood round {}/{}: attack {:.0} handshakes/s ({} completed, {} refused), legit ttfb p99 {:.0} µs alone / {:.0} µs under attack = {:.2}, failures {}, RSS hub {:.1}→{:.1} MiB, shards {:.1}→{:.1} MiB",
            r + 1,
            opts.rounds.max(1),
            round.attack_handshakes_per_s,
            round.attack.handshakes_completed,
            round.attack.handshakes_refused,
            round.legit_ttfb_p99_us_without,
            round.legit_ttfb_p99_us_during,
            round.legit_ttfb_p99_ratio,
            round.legit_failures,
            round.hub_rss_mib[0],
            round.hub_rss_mib[1],
            round.shard_rss_mib[0],
            round.shard_rss_mib[1],
        ));
        rounds.push(round);
    }
    let med = |f: fn(&FloodRound) -> f64| median(rounds.iter().map(f));
    let failures = rounds.iter().map(|r| r.legit_failures).sum();
    let ratio = med(|r| r.legit_ttfb_p99_ratio);
    let (hub, shard) = (med(|r| r.hub_rss_ratio), med(|r| r.shard_rss_ratio));
    Ok(FloodReport {
        scenario: "flood",
        rounds: rounds.len(),
        attack_handshakes_per_s: med(|r| r.attack_handshakes_per_s),
        legit_ttfb_p99_ratio: ratio,
        legit_failures: failures,
        hub_rss_mib: Rss {
            start: med(|r| r.hub_rss_mib[0]),
            end: med(|r| r.hub_rss_mib[1]),
            ratio: hub,
        },
        shard_rss_mib: Rss {
            start: med(|r| r.shard_rss_mib[0]),
            end: med(|r| r.shard_rss_mib[1]),
            ratio: shard,
        },
        goal: "legit_failures 0, legit_ttfb_p99_ratio <= 2, hub and shard RSS end/start <= 1.5",
        goal_met: failures == 0 && ratio <= 2.0 && hub <= 1.5 && shard <= 1.5,
        per_round: rounds,
    })
}
