//! Shards as processes on other hosts, each host a network namespace (see `src/tools/netlab.rs`):
//!
//! ```text
//!   hub 10.77.x.2 ──┐
//!   shard-a   .3 ───┤ br0 (a namespace of its own)
//!   shard-b   .4 ───┤
//!   clients   .5 ───┘
//! ```
//!
//! Every process is the real `shoal` binary (`shoal up`, `shoal shard`, `shoal loadgen`);
//! the figures come from loadgen's JSON and the hub's `/metrics`. Heartbeats are 150 ms on
//! both sides, so a dead shard is noticed after 600 ms.
//!
//! They need root and `ip netns`. Without them they fail when `CI` is set (CI must run them)
//! and are skipped with a message otherwise. They run one at a time (a lock): they measure
//! resume times, and two at once on a 2-core machine would measure the machine.

use shoal::tools::netlab as lab;

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use lab::{by_shard, last_json, scalar, wait_for, Lab, Proc};
use serde_json::Value;

const HUB_PORT: u16 = 4433;
const CONTROL_PORT: u16 = 4434;
const ADMIN_PORT: u16 = 4480;
/// The hub's admin API listens on its host's address, not loopback: it needs a token.
const ADMIN_TOKEN: &str = "netns-lab-admin-token-0123456789";
const SHARD_PORT: u16 = 4500;
const STREAMS: &str = "synth/netns-a,synth/netns-b";

#[path = "netns/lb.rs"]
mod lb;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The lab for one test, or `None` (after saying why) where this machine cannot host one.
fn lab(subnet: u8) -> Option<Lab> {
    lab_of(subnet, &["hub", "shard-a", "shard-b", "clients"])
}

/// [`lab`] with the hosts `hosts`.
fn lab_of(subnet: u8, hosts: &[&str]) -> Option<Lab> {
    let why = match lab::unavailable() {
        None => match Lab::new(
            subnet,
            hosts,
            std::path::Path::new(env!("CARGO_BIN_EXE_shoal")),
        ) {
            Ok(lab) => return Some(lab),
            Err(e) => format!("cannot build the namespaces: {e}"),
        },
        Some(why) => why,
    };
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and these tests need root with `ip netns`: {why}");
    }
    eprintln!("skipping the network-namespace test: {why}");
    None
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Certificates in `<lab>/data` and a config with short heartbeats; `extra` is appended.
fn write_config(lab: &Lab, extra: &str) -> String {
    let data = lab.dir().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["certs", "--out"])
        .arg(&data)
        .env("RUST_LOG", "off")
        .output()
        .expect("shoal certs");
    assert!(out.status.success(), "shoal certs: {out:?}");
    let token = admin_token_file(lab);
    std::fs::write(&token, ADMIN_TOKEN).expect("admin token");
    let text = format!(
        "data_dir = {data:?}\n\
         [transport]\n\
         heartbeat_interval = \"150ms\"\n\
         idle_timeout = \"3s\"\n\
         [admin]\n\
         listen = \"{}\"\n\
         token_file = {token:?}\n\
         {extra}",
        lab.addr("hub", ADMIN_PORT)
    );
    let path = lab.dir().join("shoal.toml");
    std::fs::write(&path, text).expect("config");
    path.display().to_string()
}

/// The file holding [`ADMIN_TOKEN`] (`--admin-token-file` of the commands that change things).
fn admin_token_file(lab: &Lab) -> std::path::PathBuf {
    lab.dir().join("admin.token")
}

fn metrics(lab: &Lab) -> Result<String, String> {
    lab.http_get("hub", lab.addr("hub", ADMIN_PORT), "/metrics")
}

/// Shards the hub places on (`shoal_shard_alive` = 1), waiting until `ready` holds for them.
fn wait_alive(lab: &Lab, within: Duration, ready: impl Fn(&[u32]) -> bool) -> Vec<u32> {
    let mut last = Vec::new();
    wait_for(within, Duration::from_millis(100), || {
        let m = metrics(lab).ok()?;
        last = by_shard(&m, "shoal_shard_alive")
            .into_iter()
            .filter(|(_, v)| *v == 1.0)
            .map(|(id, _)| id)
            .collect();
        ready(&last).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("the hub's live shards stayed at {last:?}"))
}

/// `shoal up` in `hub` with no shard of its own; waits until its admin API answers.
fn start_hub(lab: &mut Lab, name: &str, config: &str) -> Proc {
    let a = args(&[
        "up",
        "--config",
        config,
        "--listen",
        &lab.addr("hub", HUB_PORT).to_string(),
        "--control",
        &lab.addr("hub", CONTROL_PORT).to_string(),
        "--shards",
        "0",
    ]);
    let hub = lab.spawn("hub", name, &a);
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        lab.http_get("hub", lab.addr("hub", ADMIN_PORT), "/health")
            .ok()
    })
    .expect("the hub's admin API never answered");
    hub
}

/// `shoal shard` with a fixed id in group 0.
fn start_shard(lab: &mut Lab, host: &str, id: u32, config: &str) -> Proc {
    start_shard_with(lab, host, id, config, &[])
}

/// [`start_shard`] with more arguments.
fn start_shard_with(lab: &mut Lab, host: &str, id: u32, config: &str, extra: &[&str]) -> Proc {
    let mut a = args(&[
        "shard",
        "--hub",
        &lab.addr("hub", CONTROL_PORT).to_string(),
        "--listen",
        &lab.addr(host, SHARD_PORT).to_string(),
        "--group",
        "0",
        "--id",
        &id.to_string(),
        "--config",
        config,
    ]);
    a.extend(args(extra));
    lab.spawn(host, host, &a)
}

/// Hub, shard 1 in `shard-a`, shard 2 in `shard-b`, both registered.
fn start_cluster(lab: &mut Lab) -> (Proc, String, [(u32, Proc); 2]) {
    let config = write_config(lab, "");
    let hub = start_hub(lab, "hub", &config);
    let a = start_shard(lab, "shard-a", 1, &config);
    let b = start_shard(lab, "shard-b", 2, &config);
    wait_alive(lab, Duration::from_secs(20), |ids| {
        ids.contains(&1) && ids.contains(&2)
    });
    (hub, config, [(1, a), (2, b)])
}

/// `shoal loadgen` in `clients` against the hub, 150 ms heartbeats.
fn loadgen(lab: &mut Lab, name: &str, clients: u32, rate: u32, hold_s: u32) -> Proc {
    loadgen_on(lab, name, clients, rate, hold_s, STREAMS)
}

/// [`loadgen`] on the streams `streams` (comma-separated).
fn loadgen_on(
    lab: &mut Lab,
    name: &str,
    clients: u32,
    rate: u32,
    hold_s: u32,
    streams: &str,
) -> Proc {
    let ca = lab.dir().join("data/ca.pem").display().to_string();
    let a = args(&[
        "loadgen",
        "--hub",
        &lab.addr("hub", HUB_PORT).to_string(),
        "--ca",
        &ca,
        "--clients",
        &clients.to_string(),
        "--rate",
        &rate.to_string(),
        "--hold",
        &hold_s.to_string(),
        "--streams",
        streams,
        "--heartbeat-ms",
        "150",
        "--json",
    ]);
    lab.spawn("clients", name, &a)
}

/// Waits for a loadgen run and returns its JSON report.
fn report(lab: &mut Lab, run: Proc, within: Duration) -> Value {
    let status = lab.wait(run, within);
    let out = lab.stdout(run);
    let json = last_json(&out);
    eprintln!(
        "loadgen: {status:?} {}",
        json.as_ref().map_or(out, |j| j.to_string())
    );
    assert!(status.is_some(), "loadgen still runs after {within:?}");
    json.expect("loadgen printed no JSON report")
}

fn n(report: &Value, field: &str) -> f64 {
    report[field]
        .as_f64()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
}

/// Sessions per shard once the hub's directory counts `clients` of them in all.
fn wait_sessions(lab: &Lab, clients: f64) -> std::collections::BTreeMap<u32, f64> {
    let mut last = Default::default();
    wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        last = by_shard(&metrics(lab).ok()?, "shoal_shard_sessions");
        (last.values().sum::<f64>() >= clients).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("the subscribers never all attached: sessions {last:?}"))
}

/// The shard serving more subscribers (shard-a on a tie) and how many it serves.
fn busier(sessions: &std::collections::BTreeMap<u32, f64>) -> (usize, f64) {
    let of = |id| sessions.get(&id).copied().unwrap_or(0.0);
    if of(2) > of(1) {
        (1, of(2))
    } else {
        (0, of(1))
    }
}

#[test]
fn sigkill_shard_process_with_100_subscribers() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = lab(1) else { return };
    let (_hub, _config, shards) = start_cluster(&mut lab);
    let run = loadgen(&mut lab, "loadgen", 100, 50, 8);
    let sessions = wait_sessions(&lab, 100.0);
    // Every subscriber receives; let them run a moment, then kill the busier shard.
    std::thread::sleep(Duration::from_millis(500));
    let (victim, served) = busier(&sessions);
    eprintln!("sessions {sessions:?}: SIGKILL shard {}", shards[victim].0);
    lab.kill(shards[victim].1);
    let r = report(&mut lab, run, Duration::from_secs(60));
    assert_eq!((n(&r, "succeeded"), n(&r, "failed")), (100.0, 0.0), "{r}");
    assert_eq!(n(&r, "chunks_missing"), 0.0, "{r}");
    assert_eq!(n(&r, "chunks_duplicated"), 0.0, "{r}");
    // Every subscriber of the dead shard resumed on the other one…
    assert!(n(&r, "resumes") >= served.max(1.0), "{r}");
    // …within a second: the longest silence any subscriber saw between two chunks.
    assert!(n(&r, "max_stall_ms") <= 1000.0, "{r}");
}

#[test]
fn a_live_stream_survives_its_primary_shard_process_across_hosts() {
    const STREAM: &str = "live/netns";
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = lab(4) else { return };
    let (_hub, _config, shards) = start_cluster(&mut lab);
    let ca = lab.dir().join("data/ca.pem").display().to_string();
    let hub = lab.addr("hub", HUB_PORT).to_string();
    let publish = args(&[
        "publish", "--hub", &hub, "--ca", &ca, "--rate", "100", "--count", "1300", STREAM,
    ]);
    let publisher = lab.spawn("clients", "publisher", &publish);
    // The primary (the shard the publisher attached to), from the hub's `GET /streams/live`.
    let live = |lab: &Lab| {
        live_stream(lab, STREAM).filter(|s| {
            !s["primary"].is_null() && s["copies"].as_array().is_some_and(|c| !c.is_empty())
        })
    };
    let first = wait_for(Duration::from_secs(20), Duration::from_millis(100), || {
        live(&lab)
    })
    .expect("the hub never listed the live stream with a primary and a copy");
    let primary = first["primary"].as_u64().unwrap() as u32;
    let run = loadgen_on(&mut lab, "loadgen", 20, 20, 6, STREAM);
    wait_sessions(&lab, 21.0);
    std::thread::sleep(Duration::from_millis(500));
    let victim = shards.iter().position(|(id, _)| *id == primary).unwrap();
    eprintln!("live stream {first}: SIGKILL its primary, shard {primary}");
    lab.kill(shards[victim].1);
    let r = report(&mut lab, run, Duration::from_secs(60));
    assert_eq!((n(&r, "succeeded"), n(&r, "failed")), (20.0, 0.0), "{r}");
    assert_eq!(n(&r, "chunks_missing"), 0.0, "{r}");
    assert_eq!(n(&r, "chunks_duplicated"), 0.0, "{r}");
    assert!(n(&r, "resumes") >= 1.0, "{r}");
    // The copy on the other host took the publisher: it is the primary now.
    let after = wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        let s = live_stream(&lab, STREAM)?;
        (s["primary"].as_u64() != Some(u64::from(primary)) && s["promotions"].as_u64() >= Some(1))
            .then_some(s)
    })
    .expect("no promoted primary listed after the kill");
    eprintln!("after the kill: {after}");
    lab.kill(publisher);
}

/// The hub's `GET /streams/live` entry of `stream`.
fn live_stream(lab: &Lab, stream: &str) -> Option<Value> {
    let body = lab
        .http_get("hub", lab.addr("hub", ADMIN_PORT), "/streams/live")
        .ok()?;
    let all: Value = serde_json::from_str(&body).ok()?;
    all.as_array()?
        .iter()
        .find(|s| s["stream"] == stream)
        .cloned()
}

#[test]
fn hub_down_ten_seconds() {
    const OUTAGE: Duration = Duration::from_secs(10);
    const SHARD_KILL_AFTER: Duration = Duration::from_secs(2);
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = lab(2) else { return };
    let (hub, config, shards) = start_cluster(&mut lab);
    let run = loadgen(&mut lab, "loadgen", 100, 50, 20);
    let sessions = wait_sessions(&lab, 100.0);
    let (victim, served) = busier(&sessions);
    let (survivor, _) = shards[1 - victim];
    eprintln!("sessions {sessions:?}: SIGKILL the hub");
    lab.kill(hub);
    let down = shoal::clock::now();
    // With the hub gone, a shard dies: its subscribers must re-attach to the other shard
    // of their grant with the tokens they hold.
    std::thread::sleep(SHARD_KILL_AFTER);
    eprintln!("SIGKILL shard {} while the hub is down", shards[victim].0);
    lab.kill(shards[victim].1);
    std::thread::sleep(OUTAGE.saturating_sub(shoal::clock::since(down)));
    assert!(
        lab.running(run),
        "the subscribers gave up while the hub was down"
    );
    let _hub = start_hub(&mut lab, "hub-again", &config);
    // The surviving shard re-registers (its backoff is capped at 5 s).
    let alive = wait_alive(&lab, Duration::from_secs(20), |ids| ids.contains(&survivor));
    assert!(!alive.contains(&shards[victim].0), "{alive:?}");
    // New clients get grants and chunks from the restarted hub.
    let fresh = loadgen(&mut lab, "loadgen-after", 10, 20, 2);
    let f = report(&mut lab, fresh, Duration::from_secs(30));
    assert_eq!((n(&f, "succeeded"), n(&f, "failed")), (10.0, 0.0), "{f}");
    assert!(n(&f, "chunks") > 0.0, "{f}");
    assert_eq!(
        n(&f, "chunks_missing") + n(&f, "chunks_duplicated"),
        0.0,
        "{f}"
    );
    // The first subscribers kept receiving through the outage and the resumes inside it.
    let r = report(&mut lab, run, Duration::from_secs(60));
    assert_eq!((n(&r, "succeeded"), n(&r, "failed")), (100.0, 0.0), "{r}");
    assert_eq!(n(&r, "chunks_missing"), 0.0, "{r}");
    assert_eq!(n(&r, "chunks_duplicated"), 0.0, "{r}");
    assert!(n(&r, "resumes") >= served.max(1.0), "{r}");
    // No subscriber went silent until the hub came back: every resume happened while it
    // was down.
    let rest_of_outage = (OUTAGE - SHARD_KILL_AFTER).as_secs_f64() * 1e3;
    assert!(n(&r, "max_stall_ms") < rest_of_outage, "{r}");
}

#[test]
fn pool_launches_shard_processes_under_a_ramp() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = lab(3) else { return };
    let hub_ip = lab.ip("hub");
    let extra = format!(
        "[hub]\n\
         listen = \"{}\"\n\
         control_listen = \"{}\"\n\
         [shards]\n\
         count = 1\n\
         groups = 1\n\
         listen_ip = \"{hub_ip}\"\n\
         max_sessions = 10\n\
         launcher = \"processes\"\n\
         program = {:?}\n\
         [shutdown]\n\
         grace = \"500ms\"\n\
         [pool]\n\
         enabled = true\n\
         step = \"250ms\"\n\
         min_shards = 1\n\
         max_shards = 10\n\
         min_lifespan = \"2s\"\n\
         idle_stop_after = \"2s\"\n",
        SocketAddr::from((hub_ip, HUB_PORT)),
        SocketAddr::from((hub_ip, CONTROL_PORT)),
        env!("CARGO_BIN_EXE_shoal"),
    );
    let config = write_config(&lab, &extra);
    let hub = lab.spawn("hub", "hub", &args(&["up", "--config", &config]));
    wait_alive(&lab, Duration::from_secs(30), |ids| !ids.is_empty());
    let initial = lab.children(hub);
    assert_eq!(initial.len(), 1, "shards.count = 1: {initial:?}");

    // 60 clients over 6 s, 4 s each: up to 40 at once on shards of 10.
    let run = loadgen(&mut lab, "loadgen", 60, 10, 4);
    let (mut started, mut peak_alive) = (std::collections::BTreeSet::new(), 0);
    let polled = wait_for(Duration::from_secs(60), Duration::from_millis(200), || {
        started.extend(lab.children(hub));
        if let Ok(m) = metrics(&lab) {
            let alive = by_shard(&m, "shoal_shard_alive");
            peak_alive = peak_alive.max(alive.values().filter(|v| **v == 1.0).count());
        }
        (!lab.running(run)).then_some(())
    });
    assert!(polled.is_some(), "loadgen still runs after a minute");
    let r = report(&mut lab, run, Duration::from_secs(5));
    eprintln!(
        "shard processes seen: {} ({started:?}), most live at once: {peak_alive}",
        started.len()
    );
    assert_eq!((n(&r, "succeeded"), n(&r, "failed")), (60.0, 0.0), "{r}");
    assert_eq!(n(&r, "chunks_missing"), 0.0, "{r}");
    assert_eq!(n(&r, "chunks_duplicated"), 0.0, "{r}");
    assert!(
        started.len() > initial.len() && peak_alive > initial.len(),
        "the pool started no shard process: {started:?}, {peak_alive} live at most"
    );

    // The clients left: after idle_stop_after and min_lifespan the pool drains the extra
    // shards, and their processes exit.
    let left = wait_for(Duration::from_secs(60), Duration::from_millis(250), || {
        let now = lab.children(hub);
        (now.len() <= 1).then_some(now)
    })
    .unwrap_or_else(|| panic!("shard processes still run: {:?}", lab.children(hub)));
    let exited: Vec<_> = started.iter().filter(|p| !left.contains(p)).collect();
    for pid in &exited {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "shard process {pid} still exists after the pool retired it"
        );
    }
    let m = metrics(&lab).expect("metrics");
    let drained = scalar(&m, "shoal_hub_shards_drained_total").unwrap_or(0.0);
    eprintln!("drained {drained}, left {left:?}");
    assert!(drained >= exited.len() as f64, "drained {drained}: {m}");
}

#[test]
fn bench_lb_runs_its_lab_and_reports_every_figure() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(why) = lab::unavailable() {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and this test needs root with `ip netns`: {why}");
        }
        eprintln!("skipping the network-namespace test: {why}");
        return;
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["bench", "lb", "--quick", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("shoal bench lb");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r = last_json(&stdout).expect("a JSON report");
    assert_eq!(r["scenario"], "lb", "{r}");
    assert_eq!(r["misrouted"].as_f64(), Some(0.0), "{r}");
    assert!(
        r["zero_rtt_acceptance"].as_f64().is_some_and(|z| z > 0.0),
        "{r}"
    );
    for figure in ["ttfb_ratio", "ttfb_ratio_extra_hop"] {
        assert!(r[figure].as_f64().is_some_and(|t| t > 0.0), "{figure}: {r}");
    }
    assert_eq!(r["migrations_kept"].as_u64(), Some(1), "{r}");
}
