//! A real Prometheus scrapes a real cluster's admin API (`scrape_interval: 1s`): the series
//! an operator graphs are there with the values the traffic made, and every query of the
//! Grafana dashboard is PromQL that Prometheus accepts.
//!
//! Needs the `prometheus` binary (Debian: `apt-get install prometheus`). Without it the test
//! is skipped with a note, except where the `CI` variable is set: there it fails.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal::admin::client::request;

use crate::metrics_families::{dashboard_exprs, tool_missing, Running};

/// The Prometheus child: killed and reaped when dropped, however the test ends.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` every second, with its
    /// configuration, data and log under `dir`.
    fn start(dir: &Path, target: SocketAddr) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let yml = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(&config, yml).unwrap();
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let log = dir.join("prometheus.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("prometheus starts");
        Prometheus { child, addr, log }
    }

    /// `GET /api/v1/query`: the JSON answer (status 200 or 400 both carry one), or none while
    /// Prometheus does not answer.
    async fn query(&self, promql: &str) -> Option<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = request(self.addr, "GET", &path, None, Duration::from_secs(5))
            .await
            .ok()?;
        r.json()
    }

    /// The values of an instant query's result (panics on an error answer).
    async fn values(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let j = self.query(promql).await.expect("Prometheus answers");
        assert_eq!(j["status"], "success", "{promql}: {j}");
        j["data"]["result"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let v = r["value"][1].as_str().and_then(|v| v.parse().ok());
                (r["metric"].clone(), v.unwrap_or(f64::NAN))
            })
            .collect()
    }

    /// The single value of a query that yields one series.
    async fn value(&self, promql: &str) -> f64 {
        let v = self.values(promql).await;
        assert_eq!(v.len(), 1, "{promql}: {v:?}");
        v[0].1
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_families_an_operator_graphs() {
    if tool_missing("prometheus") {
        return;
    }
    let running = Running::start().await;
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(dir.path(), running.addr);
    // Up and scraped once (bounded: 30 s, every 250 ms).
    let mut scraped = false;
    for _ in 0..120 {
        if let Some(j) = prom.query("shoal_build_info").await {
            if j["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                scraped = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        scraped,
        "Prometheus never scraped the admin API in 30 s; its log:\n{}",
        prom.log_tail()
    );
    let info = prom.values("shoal_build_info").await;
    assert_eq!(info[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info[0].0["revision"], shoal::GIT_REVISION);
    assert_eq!(info[0].1, 1.0);
    // The grants, their latency, 0-RTT at both shards (embedded and process), memory.
    assert!(prom.value("sum(shoal_hub_grant_seconds_count)").await >= 2.0);
    let p99 = "histogram_quantile(0.99, sum by (le) (shoal_hub_grant_seconds_bucket))";
    let p99 = prom.value(p99).await;
    assert!(p99.is_finite() && p99 > 0.0, "grant p99 {p99}");
    let accepted = prom.values("shoal_shard_zero_rtt_accepted_total").await;
    assert_eq!(accepted.len(), 2, "one series per shard: {accepted:?}");
    assert!(accepted.iter().all(|(_, v)| *v >= 1.0), "{accepted:?}");
    let attempted = prom
        .value("sum(shoal_shard_zero_rtt_attempted_total)")
        .await;
    assert!(attempted >= accepted.iter().map(|(_, v)| v).sum::<f64>());
    let attaches = prom.values("shoal_shard_attach_seconds_count").await;
    assert_eq!(attaches.len(), 2, "{attaches:?}");
    assert!(
        prom.value("sum(shoal_shard_first_chunk_seconds_count)")
            .await
            >= 1.0
    );
    let refused = "sum(shoal_shard_rejections_total{code=\"token_invalid\"})";
    assert!(prom.value(refused).await >= 2.0);
    #[cfg(target_os = "linux")]
    assert!(prom.value("process_resident_memory_bytes").await > 0.0);
    // Every query of the dashboard parses and runs (Grafana's variables filled in).
    for expr in dashboard_exprs() {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        let j = prom.query(&q).await.expect("Prometheus answers");
        assert_eq!(j["status"], "success", "dashboard query {q}: {j}");
    }
    drop(prom);
    running.stop().await;
}
