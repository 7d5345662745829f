//! `shoal bench lb`: clients through a stateless nftables balancer (QUIC-LB server ids) against
//! clients straight to the shards, in the same run.
//!
//! Network namespaces (root): `balancer` owns the virtual address; `hub`, `shard-a`, `shard-b`
//! run two clusters side by side — A behind the balancer (`lb.profile = "plaintext"`, grants
//! naming the virtual address), B direct (no QUIC-LB, grants naming each shard) — and
//! `shoal loadgen` runs three ways per round, all at once: through the
//! balancer (A), direct to B with the balancer's host as a plain router on the way (the same
//! hops, none of the balancer's rules), and direct to B straight over the bridge. Figures per
//! round: `misrouted` (packets at A's shards carrying another server's CID), 0-RTT acceptance
//! through the balancer, `ttfb_ratio` (median time to first byte via the balancer ÷ direct
//! through the same router: what the balancer's rules and routable CIDs cost),
//! `ttfb_ratio_extra_hop` (via the balancer ÷ direct with no router: that plus the forwarding
//! hop itself, a software bridge crossing here), and `migrations_kept` (a subscriber through
//! the balancer that moves to a new local port mid-stream keeps its session: no resume,
//! nothing missing).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::BenchError;
use crate::tools::netlab::{self, Lab};

/// `clients` reaches the direct cluster straight over the bridge, `clients-routed` through
/// the balancer's host as a plain router (both ways).
const HOSTS: [&str; 6] = [
    "balancer",
    "hub",
    "shard-a",
    "shard-b",
    "clients",
    "clients-routed",
];
/// The lab's subnet (10.77.<n>.0/24), apart from the tests' ones.
const SUBNET: u8 = 41;
const VIP_PORT: u16 = 443;
const STREAMS: &str = "synth/lb-a,synth/lb-b";

/// What one run measures.
#[derive(Debug, Clone)]
pub struct LbBenchOptions {
    pub rounds: usize,
    pub clients: u32,
    /// The `shoal` binary the namespaces run.
    pub program: PathBuf,
}

/// One round.
#[derive(Debug, Clone, Serialize)]
pub struct LbRound {
    pub misrouted: f64,
    pub zero_rtt_acceptance: f64,
    pub ttfb_via_us: f64,
    /// Direct, through the balancer's host as a plain router.
    pub ttfb_direct_us: f64,
    /// Direct, straight over the bridge.
    pub ttfb_straight_us: f64,
    pub ttfb_ratio: f64,
    pub ttfb_ratio_extra_hop: f64,
    pub migration_kept: bool,
}

/// Medians over the rounds (sums for counts), and the goal.
#[derive(Debug, Clone, Serialize)]
pub struct LbReport {
    pub scenario: &'static str,
    pub rounds: usize,
    pub clients: u32,
    pub misrouted: f64,
    pub zero_rtt_acceptance: f64,
    pub ttfb_ratio: f64,
    pub ttfb_ratio_extra_hop: f64,
    pub migrations_kept: usize,
    pub migrations_tried: usize,
    pub goal: &'static str,
    pub goal_met: bool,
    pub per_round: Vec<LbRound>,
}

fn err(e: impl std::fmt::Display) -> BenchError {
    BenchError::Load(e.to_string())
}

/// One cluster's processes: hub in `hub`, shards 1 and 2 in the shard hosts.
struct Cluster {
    hub: SocketAddr,
    admin: SocketAddr,
    config: String,
}

fn start_cluster(lab: &mut Lab, name: &str, base: u16, extra: &str) -> Result<Cluster, BenchError> {
    let data = lab.dir().join(format!("{name}-data"));
    let program = lab_program(lab);
    let out = std::process::Command::new(&program)
        .args(["certs", "--out"])
        .arg(&data)
        .env("RUST_LOG", "off")
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(err(format!("shoal certs: {out:?}")));
    }
    let hub = lab.addr("hub", base);
    let admin = lab.addr("hub", base + 47);
    // The admin API listens on the lab's address, not loopback: it needs a token.
    let token = data.join("admin.token");
    std::fs::write(&token, "bench-lb-admin-token-not-secret\n").map_err(err)?;
    let text = format!(
        "data_dir = {data:?}\n[transport]\nheartbeat_interval = \"150ms\"\n[admin]\nlisten = \"{admin}\"\ntoken_file = {token:?}\n{extra}"
    );
    let config = lab.dir().join(format!("{name}.toml"));
    std::fs::write(&config, text).map_err(err)?;
    let config = config.display().to_string();
    let control = lab.addr("hub", base + 1).to_string();
    let hub_args = [
        "up",
        "--config",
        &config,
        "--listen",
        &hub.to_string(),
        "--control",
        &control,
        "--shards",
        "0",
    ];
    lab.spawn("hub", &format!("{name}-hub"), &strings(&hub_args));
    for (host, id) in [("shard-a", 1), ("shard-b", 2)] {
        let listen = lab.addr(host, base + 67).to_string();
        let a = [
            "shard",
            "--hub",
            &control,
            "--listen",
            &listen,
            "--group",
            "0",
            "--id",
            &id.to_string(),
            "--config",
            &config,
        ];
        lab.spawn(host, &format!("{name}-{host}"), &strings(&a));
    }
    // Both shards registered: the hub's metrics list them alive.
    let ready = netlab::wait_for(Duration::from_secs(30), Duration::from_millis(100), || {
        let m = lab.http_get("hub", admin, "/metrics").ok()?;
        let alive = netlab::by_shard(&m, "shoal_shard_alive");
        (alive.get(&1) == Some(&1.0) && alive.get(&2) == Some(&1.0)).then_some(())
    });
    ready.ok_or_else(|| err(format!("cluster {name}: the shards never registered")))?;
    Ok(Cluster { hub, admin, config })
}

fn lab_program(lab: &Lab) -> PathBuf {
    lab.program().to_path_buf()
}

fn strings(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Loads the balancer's ruleset for cluster `c` (shards at `shard_port`).
fn balance(lab: &Lab, c: &Cluster, vip: Ipv4Addr, shard_port: u16) -> Result<(), BenchError> {
    let out = std::process::Command::new(lab_program(lab))
        .args(["lb", "nftables", "--config", &c.config])
        .arg(format!("--vip={}", SocketAddr::from((vip, VIP_PORT))))
        .arg(format!("--hub={}", c.hub))
        .arg(format!("--shard=1={}", lab.addr("shard-a", shard_port)))
        .arg(format!("--shard=2={}", lab.addr("shard-b", shard_port)))
        .env("RUST_LOG", "off")
        .output()
        .map_err(err)?;
    if !out.status.success() {
        return Err(err(format!("shoal lb nftables: {out:?}")));
    }
    let file = lab.dir().join("lb.nft");
    std::fs::write(&file, &out.stdout).map_err(err)?;
    lab.exec("balancer", &["nft", "-f", &file.display().to_string()])
        .map_err(err)
        .map(drop)
}

/// `shoal loadgen` from `clients` against `hub`; its JSON report.
/// `shoal loadgen` arms started together from their client hosts, each
/// `(host, name, hub, ca)`; their JSON reports in the same order.
fn loadgens(
    lab: &mut Lab,
    arms: &[(&str, String, SocketAddr, &Path)],
    clients: u32,
) -> Result<Vec<serde_json::Value>, BenchError> {
    let procs: Vec<_> = arms
        .iter()
        .map(|(host, name, hub, ca)| {
            let a = [
                "loadgen",
                "--hub",
                &hub.to_string(),
                "--ca",
                &ca.display().to_string(),
                "--clients",
                &clients.to_string(),
                "--rate",
                &(clients * 2).to_string(),
                "--hold",
                "2",
                "--streams",
                STREAMS,
                "--heartbeat-ms",
                "150",
                "--json",
            ];
            lab.spawn(host, name, &strings(&a))
        })
        .collect();
    let mut reports = Vec::new();
    for (p, (_, name, _, _)) in procs.into_iter().zip(arms) {
        let status = lab.wait(p, Duration::from_secs(90));
        let out = lab.stdout(p);
        match (status, netlab::last_json(&out)) {
            (Some(s), Some(j)) if s.success() => reports.push(j),
            (s, _) => return Err(err(format!("{name}: loadgen ended {s:?}: {out}"))),
        }
    }
    Ok(reports)
}

fn field(j: &serde_json::Value, path: &[&str]) -> f64 {
    path.iter()
        .fold(j, |v, k| &v[*k])
        .as_f64()
        .unwrap_or(f64::NAN)
}

/// Runs the rounds; `progress` gets a line per phase.
pub fn run(opts: &LbBenchOptions, progress: &mut dyn FnMut(&str)) -> Result<LbReport, BenchError> {
    if let Some(why) = netlab::unavailable() {
        return Err(err(format!("bench lb needs network namespaces: {why}")));
    }
    let mut lab = Lab::new(SUBNET, &HOSTS, &opts.program).map_err(err)?;
    let vip = Ipv4Addr::new(10, 77, SUBNET, 100);
    let backends = ["hub", "shard-a", "shard-b"];
    lab.route_through("balancer", vip, &backends, "clients")
        .map_err(err)?;
    lab.route_via("clients-routed", &backends, "balancer", true)
        .map_err(err)?;
    for host in backends {
        lab.route_via(host, &["clients-routed"], "balancer", true)
            .map_err(err)?;
    }
    let via = start_cluster(
        &mut lab,
        "via",
        4433,
        &format!(
            "[lb]\nenabled = true\nprofile = \"plaintext\"\nshards_via = \"{vip}:{VIP_PORT}\"\n"
        ),
    )?;
    let direct = start_cluster(&mut lab, "direct", 5433, "")?;
    balance(&lab, &via, vip, 4433 + 67)?;
    progress("bench lb: balancer, two clusters (via the balancer, direct) up");
    let vip_addr = SocketAddr::from((vip, VIP_PORT));
    let ca_via = lab.dir().join("via-data/ca.pem");
    let ca_direct = lab.dir().join("direct-data/ca.pem");
    let misrouted_now = |lab: &Lab| -> f64 {
        lab.http_get("hub", via.admin, "/metrics")
            .map(|m| {
                netlab::by_shard(&m, "shoal_shard_misrouted_total")
                    .values()
                    .sum()
            })
            .unwrap_or(f64::NAN)
    };
    let mut rounds = Vec::new();
    for r in 0..opts.rounds {
        let before = misrouted_now(&lab);
        // The three arms at once, so the machine's noise falls on all of them alike, started
        // in an order that rotates per round (none always gets the head start).
        let arms = [
            ("clients", format!("via-{r}"), vip_addr, ca_via.as_path()),
            (
                "clients-routed",
                format!("direct-{r}"),
                direct.hub,
                ca_direct.as_path(),
            ),
            (
                "clients",
                format!("straight-{r}"),
                direct.hub,
                ca_direct.as_path(),
            ),
        ];
        let order: Vec<usize> = (0..3).map(|i| (i + r) % 3).collect();
        let started: Vec<_> = order.iter().map(|&i| arms[i].clone()).collect();
        let mut reports = vec![serde_json::Value::Null; 3];
        for (j, &i) in loadgens(&mut lab, &started, opts.clients)?
            .into_iter()
            .zip(&order)
        {
            reports[i] = j;
        }
        let [through, routed, straight] = <[serde_json::Value; 3]>::try_from(reports)
            .unwrap_or_else(|_| unreachable!("three arms"));
        for (name, j) in [
            ("via", &through),
            ("direct", &routed),
            ("straight", &straight),
        ] {
            if field(j, &["failed"]) != 0.0 || field(j, &["chunks_missing"]) != 0.0 {
                return Err(err(format!(
                    "round {r}: the {name} clients failed or lost chunks: {j}"
                )));
            }
        }
        // A subscriber through the balancer that moves to a new local port mid-stream.
        let sub = [
            "subscribe",
            "--hub",
            &vip_addr.to_string(),
            "--ca",
            &ca_via.display().to_string(),
            "--count",
            "150",
            "--seconds",
            "20",
            "--rebind-after",
            "0.5",
            "--quiet",
            "synth/lb-moving",
        ];
        let name = format!("moving-{r}");
        let p = lab.spawn("clients", &name, &strings(&sub));
        let status = lab.wait(p, Duration::from_secs(30));
        let log =
            std::fs::read_to_string(lab.dir().join(format!("{name}.log"))).unwrap_or_default();
        let kept = status.is_some_and(|s| s.success())
            && log.contains("rebound the client's socket")
            && log.contains("150 chunks, 0 missing, 0 duplicated, 0 integrity failures, 0 resumes");
        let misrouted = misrouted_now(&lab) - before;
        let ttfb = |j: &serde_json::Value| field(j, &["ttfb", "p50_us"]);
        let (tv, td, ts) = (ttfb(&through), ttfb(&routed), ttfb(&straight));
        let round = LbRound {
            misrouted,
            zero_rtt_acceptance: field(&through, &["zero_rtt_accepted"])
                / field(&through, &["zero_rtt_attempted"]).max(1.0),
            ttfb_via_us: tv,
            ttfb_direct_us: td,
            ttfb_straight_us: ts,
            ttfb_ratio: tv / td,
            ttfb_ratio_extra_hop: tv / ts,
            migration_kept: kept,
        };
        progress(&format!(
            "bench lb round {}/{}: misrouted {}, 0-RTT {:.3}, ttfb {:.0} µs via / {:.0} µs direct through the router = {:.3} ({:.0} µs straight: {:.3}), migration kept {}",
            r + 1,
            opts.rounds,
            round.misrouted,
            round.zero_rtt_acceptance,
            tv,
            td,
            round.ttfb_ratio,
            ts,
            round.ttfb_ratio_extra_hop,
            kept
        ));
        rounds.push(round);
    }
    let med = |f: fn(&LbRound) -> f64| super::median(rounds.iter().map(f));
    let misrouted = rounds.iter().map(|r| r.misrouted).sum::<f64>();
    let zero = med(|r| r.zero_rtt_acceptance);
    let ratio = med(|r| r.ttfb_ratio);
    let extra_hop = med(|r| r.ttfb_ratio_extra_hop);
    let kept = rounds.iter().filter(|r| r.migration_kept).count();
    Ok(LbReport {
        scenario: "lb",
        rounds: rounds.len(),
        clients: opts.clients,
        misrouted,
        zero_rtt_acceptance: zero,
        ttfb_ratio: ratio,
        ttfb_ratio_extra_hop: extra_hop,
        migrations_kept: kept,
        migrations_tried: rounds.len(),
        goal: "misrouted 0, zero_rtt_acceptance >= 0.99, ttfb_ratio <= 1.05",
        goal_met: misrouted == 0.0 && zero >= 0.99 && ratio <= 1.05,
        per_round: rounds,
    })
}
