//! Behind real UDP balancers, each host a network namespace: a `balancer` namespace owns the
//! virtual address in front of the hub and two shard processes, and every client reaches the
//! cluster through that address only.
//!
//! - **nftables** (`shoal lb nftables`): stateless, by the server id in QUIC-LB CIDs.
//! - **nginx** (`shoal lb nginx`): the 5-tuple alternative, one UDP listener per backend.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::lab::{by_shard, wait_for, Lab};
use super::{
    args, lab_of, metrics, n, report, start_hub, start_shard, start_shard_with, wait_alive,
    wait_sessions, write_config, HUB_PORT, ONE_AT_A_TIME, SHARD_PORT, STREAMS,
};

const HOSTS: [&str; 5] = ["balancer", "hub", "shard-a", "shard-b", "clients"];

/// `shoal loadgen` in `clients` against `hub` (the virtual address): 30 clients over a
/// second, each holding its stream 4 s.
fn loadgen_args(lab: &Lab, hub: SocketAddr) -> Vec<String> {
    let ca = lab.dir().join("data/ca.pem").display().to_string();
    args(&[
        "loadgen",
        "--hub",
        &hub.to_string(),
        "--ca",
        &ca,
        "--clients",
        "30",
        "--rate",
        "30",
        "--hold",
        "4",
        "--streams",
        STREAMS,
        "--heartbeat-ms",
        "150",
        "--json",
    ])
}

/// The 30 clients of [`loadgen_args`] all served, nothing missing or twice.
fn all_served(r: &serde_json::Value) {
    assert_eq!((n(r, "succeeded"), n(r, "failed")), (30.0, 0.0), "{r}");
    assert_eq!(n(r, "chunks_missing"), 0.0, "{r}");
    assert_eq!(n(r, "chunks_duplicated"), 0.0, "{r}");
}

/// A subscriber through `hub` that moves to a new local port after `after_s` seconds, for
/// `count` chunks; its exit status and the last lines of its log.
fn rebinding_subscriber(
    lab: &mut Lab,
    hub: SocketAddr,
    count: u32,
    after_s: &str,
) -> (bool, String) {
    let ca = lab.dir().join("data/ca.pem").display().to_string();
    let sub = args(&[
        "subscribe",
        "--hub",
        &hub.to_string(),
        "--ca",
        &ca,
        "--count",
        &count.to_string(),
        "--seconds",
        "20",
        "--rebind-after",
        after_s,
        "--quiet",
        "synth/netns-rebind",
    ]);
    let moving = lab.spawn("clients", "rebinding", &sub);
    let status = lab.wait(moving, Duration::from_secs(30));
    let log = std::fs::read_to_string(lab.dir().join("rebinding.log")).unwrap_or_default();
    eprintln!(
        "rebinding subscriber: {status:?} {}",
        log.lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
    (status.is_some_and(|s| s.success()), log)
}

/// The stateless balancer of `shoal lb nftables` in `balancer`, in front of hub and shards:
/// loads the ruleset (again, when called again) and returns the virtual address.
fn nftables_balancer(lab: &Lab, config: &str, vip: Ipv4Addr) -> SocketAddr {
    nftables_balancer_for(lab, config, vip, &[1, 2])
}

/// [`nftables_balancer`] routing to the shards `shards` only (1 in shard-a, 2 in shard-b).
fn nftables_balancer_for(lab: &Lab, config: &str, vip: Ipv4Addr, shards: &[u32]) -> SocketAddr {
    let vip_addr = SocketAddr::from((vip, 443));
    let listed: Vec<String> = shards
        .iter()
        .map(|&id| {
            let host = if id == 1 { "shard-a" } else { "shard-b" };
            format!("--shard={id}={}", lab.addr(host, SHARD_PORT))
        })
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(["lb", "nftables", "--config", config, "--vip"])
        .arg(vip_addr.to_string())
        .arg("--hub")
        .arg(lab.addr("hub", HUB_PORT).to_string())
        .args(&listed)
        .env("RUST_LOG", "off")
        .output()
        .expect("shoal lb nftables");
    assert!(out.status.success(), "shoal lb nftables: {out:?}");
    let file = lab.dir().join("lb.nft");
    std::fs::write(&file, &out.stdout).expect("ruleset file");
    lab.exec("balancer", &["nft", "-f", &file.display().to_string()])
        .expect("the ruleset loads");
    vip_addr
}

#[test]
fn through_nftables_grants_and_zero_rtt_attaches_land_on_the_chosen_shard() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut lab) = lab_of(5, &HOSTS) else {
        return;
    };
    let vip = Ipv4Addr::new(10, 77, 5, 100);
    lab.route_through("balancer", vip, &["hub", "shard-a", "shard-b"], "clients")
        .expect("balancer routes");
    let extra = format!(
        "[lb]\n\
         enabled = true\n\
         profile = \"plaintext\"\n\
         shards_via = \"{vip}:443\"\n"
    );
    let config = write_config(&lab, &extra);
    let _hub = start_hub(&mut lab, "hub", &config);
    let _a = start_shard(&mut lab, "shard-a", 1, &config);
    let _b = start_shard(&mut lab, "shard-b", 2, &config);
    wait_alive(&lab, Duration::from_secs(20), |ids| {
        ids.contains(&1) && ids.contains(&2)
    });
    let vip_addr = nftables_balancer(&lab, &config, vip);
    // Every client reaches the hub and its shard through the virtual address only.
    let a = loadgen_args(&lab, vip_addr);
    let run = lab.spawn("clients", "loadgen", &a);
    // Reloaded mid-stream: stateless rules, so every connection goes on.
    std::thread::sleep(Duration::from_millis(2500));
    nftables_balancer(&lab, &config, vip);
    let status = lab.wait(run, Duration::from_secs(60));
    eprintln!(
        "balancer: {}",
        lab.exec("balancer", &["nft", "list", "ruleset"])
            .unwrap_or_default()
    );
    assert!(status.is_some(), "loadgen still runs");
    let r = report(&mut lab, run, Duration::from_secs(1));
    all_served(&r);
    let zero = n(&r, "zero_rtt_accepted") / n(&r, "zero_rtt_attempted").max(1.0);
    assert!(zero >= 0.99, "0-RTT through the balancer: {zero} ({r})");
    let m = metrics(&lab).expect("metrics");
    let misrouted = by_shard(&m, "shoal_shard_misrouted_total");
    let allocations = by_shard(&m, "shoal_shard_allocations_total");
    eprintln!("misrouted {misrouted:?}, allocations {allocations:?}");
    assert_eq!(misrouted.len(), 2, "{m}");
    assert!(misrouted.values().all(|v| *v == 0.0), "{misrouted:?}");
    // Both shards were chosen for some clients, and took them.
    assert!(allocations.values().all(|v| *v >= 1.0), "{allocations:?}");

    // The QUIC-LB configuration rotated (`shoal lb rotate`): the ruleset reads server ids
    // whatever the config id, so it needs no reload; what follows runs on config 1.
    let program = env!("CARGO_BIN_EXE_shoal");
    let admin = lab.addr("hub", super::ADMIN_PORT).to_string();
    let token = super::admin_token_file(&lab).display().to_string();
    let rotate = [
        program,
        "lb",
        "rotate",
        "--admin",
        &admin,
        "--admin-token-file",
        &token,
    ];
    let rotated = lab.exec("hub", &rotate).expect("shoal lb rotate");
    assert!(rotated.contains("config id 0 -> 1"), "{rotated}");

    // A client that moves to a new local port mid-stream keeps its session: the balancer
    // routes by CID, not by address.
    let (ok, log) = rebinding_subscriber(&mut lab, vip_addr, 200, "1");
    assert!(ok, "{log}");
    assert!(log.contains("rebound the client's socket"), "{log}");
    assert!(
        log.contains("200 chunks, 0 missing, 0 duplicated, 0 integrity failures, 0 resumes"),
        "{log}"
    );

    // A shard taken out of the ruleset: its clients fail over to the other one, no loss.
    let run = lab.spawn("clients", "loadgen-removal", &a);
    wait_sessions(&lab, 30.0);
    nftables_balancer_for(&lab, &config, vip, &[1]);
    let status = lab.wait(run, Duration::from_secs(60));
    assert!(status.is_some(), "loadgen still runs");
    let r = report(&mut lab, run, Duration::from_secs(1));
    all_served(&r);
    assert!(n(&r, "resumes") >= 1.0, "the clients of shard 2 moved: {r}");
    let m = metrics(&lab).expect("metrics");
    let misrouted = by_shard(&m, "shoal_shard_misrouted_total");
    assert!(misrouted.values().all(|v| *v == 0.0), "{misrouted:?}");
}

/// The nginx of Debian's packages (`nginx-light` and `libnginx-mod-stream`), or `None` after
/// saying why not (CI installs them: there the test fails instead).
fn nginx() -> Option<(&'static Path, &'static Path)> {
    let (bin, module) = (
        Path::new("/usr/sbin/nginx"),
        Path::new("/usr/lib/nginx/modules/ngx_stream_module.so"),
    );
    if bin.exists() && module.exists() {
        return Some((bin, module));
    }
    let why = format!("needs {} and {}", bin.display(), module.display());
    if std::env::var_os("CI").is_some() {
        panic!(
            "CI is set and the nginx test {why} (apt-get install nginx-light libnginx-mod-stream)"
        );
    }
    eprintln!("skipping the nginx test: it {why}");
    None
}

/// nginx's listeners in front of the hub and the shards `shards` (1 in shard-a on port 4501
/// of the virtual address, 2 in shard-b on 4502), written where `nginx.conf` includes them.
fn nginx_listeners(lab: &Lab, vip: Ipv4Addr, shards: &[u32]) {
    let mut a = vec![
        "lb".to_string(),
        "nginx".into(),
        format!("--listen={vip}:443={}", lab.addr("hub", HUB_PORT)),
    ];
    for &id in shards {
        let host = if id == 1 { "shard-a" } else { "shard-b" };
        a.push(format!(
            "--listen={vip}:{}={}",
            4500 + id,
            lab.addr(host, SHARD_PORT)
        ));
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(&a)
        .env("RUST_LOG", "off")
        .output()
        .expect("shoal lb nginx");
    assert!(out.status.success(), "shoal lb nginx: {out:?}");
    std::fs::write(lab.dir().join("shoal-stream.conf"), &out.stdout).expect("nginx config");
}

/// Waits until nginx in `balancer` listens on every port in `ports`.
fn nginx_listening(lab: &Lab, ports: &[u16]) {
    let mut last = String::new();
    wait_for(Duration::from_secs(10), Duration::from_millis(100), || {
        last = lab.exec("balancer", &["ss", "-Hulpn"]).ok()?;
        ports
            .iter()
            .all(|p| last.contains(&format!(":{p} ")))
            .then_some(())
    })
    .unwrap_or_else(|| panic!("nginx never listened on {ports:?}: {last}"));
}

#[test]
fn through_nginx_the_same_flows_work_and_a_rebinding_client_is_a_migration() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((nginx_bin, stream_module)) = nginx() else {
        return;
    };
    let Some(mut lab) = lab_of(6, &HOSTS) else {
        return;
    };
    let vip = Ipv4Addr::new(10, 77, 6, 100);
    lab.exec(
        "balancer",
        &["ip", "addr", "add", &format!("{vip}/32"), "dev", "eth0"],
    )
    .expect("the virtual address");
    // nginx cannot read CIDs: the default (encrypted) QUIC-LB profile, and each shard
    // advertises its own port on the balancer.
    let config = write_config(&lab, "[lb]\nenabled = true\n");
    let _hub = start_hub(&mut lab, "hub", &config);
    for (host, id) in [("shard-a", 1), ("shard-b", 2)] {
        let advertise = SocketAddr::from((vip, 4500 + id as u16)).to_string();
        start_shard_with(&mut lab, host, id, &config, &["--advertise", &advertise]);
    }
    wait_alive(&lab, Duration::from_secs(20), |ids| {
        ids.contains(&1) && ids.contains(&2)
    });
    nginx_listeners(&lab, vip, &[1, 2]);
    let conf = lab.dir().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "load_module {};\n\
             worker_processes 2;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/nginx.err info;\n\
             events {{ worker_connections 1024; }}\n\
             include {dir}/shoal-stream.conf;\n",
            stream_module.display(),
            dir = lab.dir().display()
        ),
    )
    .expect("nginx.conf");
    let conf = conf.display().to_string();
    let prefix = lab.dir().display().to_string();
    let nginx_args = |extra: &[&str]| {
        let mut a = args(&["-p", &prefix, "-c", &conf]);
        a.extend(args(extra));
        a
    };
    let _nginx = lab.spawn_program(
        "balancer",
        "nginx",
        nginx_bin,
        &nginx_args(&["-g", "daemon off;"]),
    );
    nginx_listening(&lab, &[443, 4501, 4502]);
    let vip_addr = SocketAddr::from((vip, 443));

    // Grants and 0-RTT attaches through nginx, and nginx reloaded mid-stream: the old workers
    // drop their sessions, the new ones open new upstream sockets, and the shards see each
    // connection migrate (it survives).
    let a = loadgen_args(&lab, vip_addr);
    let run = lab.spawn("clients", "loadgen", &a);
    std::thread::sleep(Duration::from_millis(2500));
    let bin = nginx_bin.display().to_string();
    let mut reload = vec![bin.as_str()];
    let r_args = nginx_args(&["-s", "reload"]);
    reload.extend(r_args.iter().map(String::as_str));
    lab.exec("balancer", &reload).expect("nginx reloads");
    assert!(
        lab.wait(run, Duration::from_secs(60)).is_some(),
        "loadgen still runs"
    );
    let r = report(&mut lab, run, Duration::from_secs(1));
    all_served(&r);
    let zero = n(&r, "zero_rtt_accepted") / n(&r, "zero_rtt_attempted").max(1.0);
    assert!(zero >= 0.99, "0-RTT through nginx: {zero} ({r})");
    let m = metrics(&lab).expect("metrics");
    let allocations = by_shard(&m, "shoal_shard_allocations_total");
    assert!(
        allocations.len() == 2 && allocations.values().all(|v| *v >= 1.0),
        "both shards took clients: {allocations:?}"
    );

    // A client that moves to a new local port: nginx sees a new client address and opens a
    // new upstream socket, so its shard sees the connection migrate (QUIC path validation).
    let (ok, log) = rebinding_subscriber(&mut lab, vip_addr, 200, "1");
    assert!(ok, "{log}");
    assert!(log.contains("rebound the client's socket"), "{log}");
    assert!(
        log.contains("200 chunks, 0 missing, 0 duplicated, 0 integrity failures, 0 resumes"),
        "{log}"
    );
    // What it cost: nginx keyed a second session on the new port (the first one lingers
    // until `proxy_timeout`), and the shard only ever saw nginx's address, not the client's.
    let port = log
        .lines()
        .find_map(|l| l.strip_prefix("rebound the client's socket to 0.0.0.0:"))
        .unwrap_or_else(|| panic!("no new port in {log}"));
    let sessions = std::fs::read_to_string(lab.dir().join("nginx.err")).unwrap_or_default();
    let new_session = format!(
        "udp client {}:{port} connected to {vip}:450",
        lab.ip("clients")
    );
    assert!(
        sessions.contains(&new_session),
        "nginx opened no session for the new port ({new_session}): {sessions}"
    );

    // Shard 2's listener taken out of nginx: its clients fail over to shard 1, no loss.
    let run = lab.spawn("clients", "loadgen-removal", &a);
    wait_sessions(&lab, 30.0);
    nginx_listeners(&lab, vip, &[1]);
    lab.exec("balancer", &reload).expect("nginx reloads");
    assert!(
        lab.wait(run, Duration::from_secs(60)).is_some(),
        "loadgen still runs"
    );
    let r = report(&mut lab, run, Duration::from_secs(1));
    all_served(&r);
    assert!(n(&r, "resumes") >= 1.0, "the clients of shard 2 moved: {r}");
}
