//! Measured servers run as child processes (`shoal bench-serve SPEC`), so that their CPU time
//! and resident memory are read from `/proc` apart from the load generator's.
//!
//! Contract with the child: it gets its [`ServerSpec`] as one JSON argument, binds, prints one
//! line `READY <json Ready>` on stdout, and serves until its stdin closes. The parent holds the
//! stdin pipe, so a parent that dies takes its children with it; dropping a [`ChildServer`]
//! also kills the child.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

use super::baseline;
use super::BenchError;
use crate::cluster::config::Config;
use crate::cluster::{pem_certs, Cluster, Material};
use crate::security::keys::ClusterSecret;
use crate::tickets::SessionStore;

/// What a child serves.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServerSpec {
    /// The embedded cluster (hub and shards) with default settings except these.
    Shoal {
        /// Dummy tickets put in the session store before serving.
        prefill_tickets: usize,
        store_entries: usize,
        rate_hz: u32,
        chunk_bytes: u32,
        /// Shards as `shoal shard` processes (children of this child) whose control link
        /// goes through a relay the parent runs; embedded shards when absent.
        #[serde(default)]
        remote: Option<RemoteShards>,
        /// The default handshake limits ([`crate::guard`]); without, limits no single-IP
        /// load generator reaches (the other scenarios measure throughput, not defences).
        #[serde(default)]
        production_limits: bool,
        /// `transport.heartbeat_interval` in ms (default: the config's): the memory scenario
        /// holds tens of thousands of idle sessions, whose heartbeats a 2-core load generator
        /// must keep up with.
        #[serde(default)]
        heartbeat_ms: Option<u64>,
    },
    /// The raw-quinn baseline server (see [`baseline`]).
    Quinn(baseline::BaselineSpec),
}

/// Where a child's control listener binds and where its shard processes dial it (the
/// parent's delay relay: its CPU is not the measured server's).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct RemoteShards {
    pub control: SocketAddr,
    pub hub_link: SocketAddr,
}

/// What a ready child tells its parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    /// The hub then the shards (shoal), or the one server (quinn).
    pub addrs: Vec<SocketAddr>,
    pub ca_pem: String,
    pub cluster: String,
}

/// A running child server.
pub struct ChildServer {
    child: tokio::process::Child,
    pid: u32,
    pub ready: Ready,
}

impl ChildServer {
    /// Starts `exe bench-serve SPEC` and waits (at most 30 s) for its ready line.
    pub async fn spawn(exe: &Path, spec: &ServerSpec) -> Result<ChildServer, BenchError> {
        let json = serde_json::to_string(spec).expect("specs serialize");
        let mut child = tokio::process::Command::new(exe)
            .arg("bench-serve")
            .arg(&json)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BenchError::Child(format!("cannot start {}: {e}", exe.display())))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| BenchError::Child("server child not ready within 30 s".into()))?
            .map_err(|e| BenchError::Child(format!("reading the child's output: {e}")))?
            .ok_or_else(|| BenchError::Child("server child exited before it was ready".into()))?;
        let ready: Ready = line
            .strip_prefix("READY ")
            .and_then(|j| serde_json::from_str(j).ok())
            .ok_or_else(|| BenchError::Child(format!("unexpected child output {line:?}")))?;
        Ok(ChildServer { child, pid, ready })
    }

    pub fn addr(&self, i: usize) -> SocketAddr {
        self.ready.addrs[i]
    }

    pub fn ca(&self) -> Vec<CertificateDer<'static>> {
        pem_certs(&self.ready.ca_pem)
    }

    /// CPU time the child and its own children (shard processes) have used so far (all
    /// their threads, user and system).
    pub fn cpu(&self) -> Result<Duration, BenchError> {
        tree_cpu_time(self.pid)
    }

    /// CPU time of the child process alone (without its shard processes).
    pub fn own_cpu(&self) -> Result<Duration, BenchError> {
        cpu_time(self.pid)
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Resident set size of the child, in bytes.
    pub fn rss(&self) -> Result<u64, BenchError> {
        rss_bytes(self.pid)
    }

    /// Asks the child to stop (closes its stdin) and waits a moment; kills it otherwise.
    pub async fn stop(mut self) {
        drop(self.child.stdin.take());
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

fn proc_err(what: &str, e: std::io::Error) -> BenchError {
    BenchError::Child(format!(
        "cannot read {what} (the benchmarks need Linux /proc): {e}"
    ))
}

/// Sum of the on-CPU time of every thread of `pid` (`/proc/PID/task/*/schedstat`, in ns).
pub fn cpu_time(pid: u32) -> Result<Duration, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for entry in std::fs::read_dir(&dir).map_err(|e| proc_err(&dir, e))? {
        let Ok(entry) = entry else { continue };
        // A thread that exits between listing and reading is skipped.
        if let Ok(s) = std::fs::read_to_string(entry.path().join("schedstat")) {
            ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(Duration::from_nanos(ns))
}

/// [`cpu_time`] of `pid` and of its descendants.
pub fn tree_cpu_time(pid: u32) -> Result<Duration, BenchError> {
    let mut total = cpu_time(pid)?;
    let mut stack = children(pid);
    // Bounded: a process tree of a bench child is a handful of processes.
    let mut seen = 0;
    while let Some(p) = stack.pop() {
        seen += 1;
        if seen > 10_000 {
            break;
        }
        // A child that exits between listing and reading counts nothing.
        total += cpu_time(p).unwrap_or_default();
        stack.extend(children(p));
    }
    Ok(total)
}

/// The children of `pid` (`/proc/PID/task/*/children`).
pub(super) fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Resident set size of `pid` in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let s = std::fs::read_to_string(&path).map_err(|e| proc_err(&path, e))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| BenchError::Child(format!("no VmRSS in {path}")))
}

/// The child side: serve `spec` until stdin closes. Runs inside a tokio runtime.
pub async fn serve(spec_json: &str) -> Result<(), BenchError> {
    let spec: ServerSpec = serde_json::from_str(spec_json)
        .map_err(|e| BenchError::Child(format!("bad server spec: {e}")))?;
    let cluster_name = crate::DEFAULT_CLUSTER;
    let certs = crate::security::certs::generate(cluster_name)
        .map_err(|e| BenchError::Child(e.to_string()))?;
    let material = Material::from_certs(
        ClusterSecret::random().map_err(|e| BenchError::Child(e.to_string()))?,
        &certs,
    )
    .map_err(|e| BenchError::Child(e.to_string()))?;
    // Keep whatever serves alive until stdin closes.
    let (addrs, _keep): (Vec<SocketAddr>, Box<dyn std::any::Any + Send>) = match spec {
        ServerSpec::Shoal {
            prefill_tickets,
            store_entries,
            rate_hz,
            chunk_bytes,
            remote: remote_shards,
            production_limits,
            heartbeat_ms,
        } => {
            let child = |e: &dyn std::fmt::Display| BenchError::Child(e.to_string());
            let mut cfg = Config::default();
            cfg.hub.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            cfg.streams.synthetic_rate_hz = rate_hz;
            cfg.streams.synthetic_chunk_bytes = chunk_bytes;
            cfg.streams.session_store_entries = store_entries;
            if let Some(ms) = heartbeat_ms {
                cfg.transport.heartbeat_interval = Duration::from_millis(ms);
            }
            if !production_limits {
                // Quotas are not what the scenarios measure (20,000 idle sessions may land on
                // the two shards of one group).
                cfg.shards.max_sessions = cfg.shards.max_sessions.max(1_000_000);
                cfg.transport.handshakes = crate::guard::GuardSettings {
                    retry_above: 1 << 20,
                    per_socket: 1 << 20,
                    per_ip: 1 << 20,
                    per_ip_rate: 1e7,
                    per_ip_burst: 1e7,
                };
            }
            let mut remote = None;
            if let Some(r) = remote_shards {
                // Shard processes read the certificates from files, and dial the hub's
                // control listener through the parent's delay relay.
                let dir = std::env::temp_dir().join(format!("shoal-bench-{}", std::process::id()));
                crate::security::certs::write(&dir, &certs).map_err(|e| child(&e))?;
                cfg.data_dir = dir.clone();
                cfg.hub.control_listen = Some(r.control);
                cfg.shards.hub_link = Some(r.hub_link);
                cfg.shards.launcher = crate::cluster::config::LauncherKind::Processes;
                cfg.shards.program = Some(std::env::current_exe().map_err(|e| child(&e))?);
                remote = Some(crate::tools::demo::Scratch(dir));
            }
            cfg.validate().map_err(|e| child(&e))?;
            let cluster = Cluster::start(&cfg, material).map_err(|e| child(&e))?;
            cluster
                .wait_ready(Duration::from_secs(30))
                .await
                .map_err(|e| child(&e))?;
            if remote.is_some() {
                // The hub judges each link's round trip after a few load reports (1 s); the
                // measured rounds are a service in its steady state.
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            // Every endpoint has its own store: each holds the prefilled entries (embedded
            // shards only; the tickets scenario runs them).
            prefill(cluster.hub.store(), prefill_tickets)?;
            for s in cluster.shards() {
                prefill(s.store(), prefill_tickets)?;
            }
            let mut addrs = vec![cluster.hub.addr()];
            addrs.extend(
                crate::sync::lock(cluster.directory())
                    .records()
                    .map(|r| r.addr),
            );
            (addrs, Box::new((cluster, remote)))
        }
        ServerSpec::Quinn(b) => {
            let server = baseline::Server::start(&b, material)?;
            (vec![server.addr()], Box::new(server))
        }
    };
    let ready = Ready {
        addrs,
        ca_pem: certs.ca_pem.clone(),
        cluster: cluster_name.to_string(),
    };
    println!(
        "READY {}",
        serde_json::to_string(&ready).expect("ready serializes")
    );
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
    Ok(())
}

/// A loopback UDP address free a moment ago (bound, then released).
pub fn reserve_udp_port() -> std::io::Result<SocketAddr> {
    std::net::UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?.local_addr()
}

/// Puts `n` ticket-sized dummy entries in the store (32-byte ids, 160-byte values, as rustls'
/// stateful tickets are).
fn prefill(store: &Arc<SessionStore>, n: usize) -> Result<(), BenchError> {
    use ring::rand::SecureRandom;
    use rustls::server::StoresServerSessions;
    let rng = ring::rand::SystemRandom::new();
    for _ in 0..n {
        let mut key = vec![0u8; 32];
        rng.fill(&mut key)
            .map_err(|_| BenchError::Child("no randomness".into()))?;
        store.put(key, vec![0xa5; 160]);
    }
    Ok(())
}
