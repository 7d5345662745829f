//! `/metrics` of a real cluster after real traffic: every metric the Grafana dashboard
//! (`docs/grafana/shoal.json`) queries is a family of the exposition, histograms have their
//! buckets, sum and count, shards in another process (over the networked control link) have
//! the families embedded ones have, and `promtool check metrics` accepts it all.
//!
//! [`Running`] is the cluster both this test and the real Prometheus of `prometheus.rs` read:
//! one embedded shard and one shard process in group 0, an admin API on loopback, grants,
//! 0-RTT attaches to both shards, first chunks, a refused request, refused attaches and a
//! mirror.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use shoal::admin::{Admin, AdminState};
use shoal::cluster::remote::ShardProcess;
use shoal::ids::{GroupId, ShardId, StreamName};
use shoal::link::net::BridgeOptions;
use shoal::wire::{ErrorCode, Role};

use crate::common::*;

/// A cluster that has served a little of everything, with its admin API.
pub(crate) struct Running {
    pub tc: TestCluster,
    pub remote: ShardProcess,
    pub admin: Admin,
    /// The admin API (`GET /metrics`).
    pub addr: SocketAddr,
    receiver: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn start() -> Running {
        let cfg = crate::remote::config_with_control(crate::remote::any_port(), 1);
        let tc = TestCluster::with(cfg);
        let control = tc.cluster.control().expect("a control listener").addr();
        let remote = crate::remote::start_remote(
            control,
            100,
            crate::remote::shard_config(),
            BridgeOptions::default(),
        )
        .await
        .expect("the shard process starts");
        let remote_id = remote.shard().id();
        let directory = tc.cluster.directory().clone();
        let joined = eventually(Duration::from_secs(10), || {
            directory.lock().unwrap().record(remote_id).is_some()
        })
        .await;
        assert!(joined, "the shard process registered");
        let m = material();
        let state = AdminState::for_cluster(&tc.cluster, m.chain, m.key);
        let (admin, addr) = Admin::start(crate::remote::any_port(), state).unwrap();
        let receiver = crate::admin::receiver();
        let endpoint = receiver.addr();
        let receiver = tokio::spawn(async move {
            let mut r = receiver;
            while r.next().await.is_some() {}
        });
        let running = Running {
            tc,
            remote,
            admin,
            addr,
            receiver,
        };
        running.exercise(endpoint).await;
        running
    }

    /// Grants, attaches with 0-RTT to both shards, first chunks, refusals, a mirror; returns
    /// once the shards' load reports carry it all to the hub's directory.
    async fn exercise(&self, mirror_to: SocketAddr) {
        let client = self.tc.client("metrics");
        let stream = StreamName::new("synth/metrics").unwrap();
        let mut sub = client.subscribe(&stream).await.expect("a grant");
        assert_contiguous(&read_chunks(&mut sub, &stream, 5).await);
        drop(sub);
        // Both shards of the next grant, each attach with 0-RTT.
        let reply = client.request(&stream, Role::Subscribe).await.unwrap();
        assert_eq!(reply.grant.shards.len(), 2, "both shards granted");
        let race = client.race(&reply, 2).await.expect("attaches to both");
        drop(race);
        // A refused request (synthetic streams take no publisher) and refused attaches.
        let refused = StreamName::new("synth/no-publish").unwrap();
        assert!(client.request(&refused, Role::Publish).await.is_err());
        let raw = RawClient::new();
        let (now, secret) = (now_ms(), [4u8; 32]);
        let mut forged = self.tc.mint(GroupId(0), secret, now, now + 60_000);
        let last = forged.len() - 1;
        forged[last] ^= 1;
        let embedded = self.tc.shard(ShardId(0));
        let process = self.remote.shard();
        for (addr, id) in [
            (embedded.advertised(), embedded.id()),
            (process.advertised(), process.id()),
        ] {
            let code = raw.attach(addr, &forged, &secret, id).await;
            assert_eq!(code, Some(ErrorCode::TokenInvalid));
        }
        client.close().await;
        let body = format!(r#"{{"stream":"synth/metrics","endpoints":["{mirror_to}"]}}"#);
        let r = crate::admin::call(self.addr, "POST", "/mirrors", Some(&body)).await;
        assert_eq!(r.status, 201, "{}", r.error_message());
        // Load reports come every 250 ms: wait for both shards' figures (bounded).
        for _ in 0..100 {
            let text = self.metrics().await;
            let both = |name: &str| {
                ["0", "100"].iter().all(|s| {
                    let shard = format!("shard=\"{s}\"");
                    sum(&text, name, &shard) > 0.0
                })
            };
            if both("shoal_shard_attach_seconds_count")
                && both("shoal_shard_zero_rtt_accepted_total")
                && both("shoal_shard_rejections_total")
                && sum(&text, "shoal_shard_first_chunk_seconds_count", "") > 0.0
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the shards' reports never showed the traffic:\n{}",
            self.metrics().await
        );
    }

    pub async fn metrics(&self) -> String {
        let r = crate::admin::call(self.addr, "GET", "/metrics", None).await;
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("the exposition is UTF-8")
    }

    pub async fn stop(self) {
        self.receiver.abort();
        self.admin.stop(Duration::from_secs(1)).await;
        self.tc.cluster.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.remote.wait()).await;
    }
}

/// One sample line: metric name, label text (`{…}` without braces), value.
pub(crate) fn samples(text: &str) -> impl Iterator<Item = (&str, &str, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            Some((name, labels, value.parse().ok()?))
        })
}

/// The sum of the samples of `name` whose labels contain `filter`.
pub(crate) fn sum(text: &str, name: &str, filter: &str) -> f64 {
    samples(text)
        .filter(|(n, l, _)| *n == name && l.contains(filter))
        .map(|(_, _, v)| v)
        .sum()
}

/// Family name → type, from the `# TYPE` lines.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, k)| (n.to_string(), k.to_string()))
        .collect()
}

/// The dashboard's panel queries, every one.
pub(crate) fn dashboard_exprs() -> Vec<String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/shoal.json");
    let text = std::fs::read_to_string(path).expect("the dashboard is committed");
    let d: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push(
                t["expr"]
                    .as_str()
                    .expect("each target has an expr")
                    .to_string(),
            );
        }
    }
    out
}

/// The metric names an expression uses (identifiers that start `shoal_` or `process_`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("shoal_") || w.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// Whether the exposition answers `name`: a family of that name, or a histogram's series.
fn exposed(families: &BTreeMap<String, String>, name: &str) -> bool {
    if families.contains_key(name) {
        return true;
    }
    ["_bucket", "_sum", "_count"].iter().any(|suffix| {
        name.strip_suffix(suffix)
            .is_some_and(|base| families.get(base).is_some_and(|k| k == "histogram"))
    })
}

/// Where a tool the tests need is missing: under CI that is a failure, elsewhere a skip.
pub(crate) fn tool_missing(tool: &str) -> bool {
    let found = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "`{tool}` is not installed, and CI is set: install it (apt-get install prometheus)"
    );
    eprintln!("skipped: `{tool}` is not installed (CI would fail here)");
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_metric_is_exposed_after_real_traffic() {
    let running = Running::start().await;
    let text = running.metrics().await;
    let fams = families(&text);
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "the dashboard has its panels");
    let used: BTreeSet<String> = exprs.iter().flat_map(|e| metric_names(e)).collect();
    for name in &used {
        assert!(exposed(&fams, name), "the dashboard uses {name}:\n{text}");
    }
    // Histograms: cumulative buckets up to +Inf, a sum and a count, for every series.
    for name in [
        "shoal_hub_grant_seconds",
        "shoal_shard_attach_seconds",
        "shoal_shard_first_chunk_seconds",
        "shoal_mirror_failover_detection_seconds",
        "shoal_mirror_failover_switch_seconds",
    ] {
        assert_eq!(
            fams.get(name).map(String::as_str),
            Some("histogram"),
            "{name}"
        );
        let inf = samples(&text)
            .filter(|(n, l, _)| *n == format!("{name}_bucket") && l.contains("le=\"+Inf\""))
            .count();
        let sums = samples(&text).filter(|(n, ..)| *n == format!("{name}_sum"));
        let counts = samples(&text).filter(|(n, ..)| *n == format!("{name}_count"));
        assert!(inf > 0, "{name} has buckets");
        assert_eq!((sums.count(), counts.count()), (inf, inf), "{name}");
    }
    assert!(sum(&text, "shoal_hub_grant_seconds_count", "") >= 2.0);
    // The shard process has every family the embedded shard has.
    let of = |shard: &str| -> BTreeSet<&str> {
        let tag = format!("shard=\"{shard}\"");
        samples(&text)
            .filter(|(_, l, _)| l.contains(&tag))
            .map(|(n, ..)| n)
            .collect()
    };
    assert_eq!(of("0"), of("100"), "embedded and process shards alike");
    let zero_rtt = |name| sum(&text, name, "");
    assert!(
        zero_rtt("shoal_shard_zero_rtt_attempted_total")
            >= zero_rtt("shoal_shard_zero_rtt_accepted_total")
    );
    assert!(text.contains("code=\"token_invalid\""), "{text}");
    assert!(sum(&text, "shoal_hub_rejections_total", "code=\"bad_request\"") >= 1.0);
    assert!(text.contains(&format!("revision=\"{}\"", shoal::GIT_REVISION)));
    #[cfg(target_os = "linux")]
    assert!(sum(&text, "process_resident_memory_bytes", "") > 0.0);
    if !tool_missing("promtool") {
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool starts");
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(text.as_bytes()).unwrap();
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    running.stop().await;
}
