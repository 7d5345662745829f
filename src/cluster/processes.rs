//! The process launcher: every shard a `shoal shard` child process, linked to the hub over the
//! control listener like a shard on another host.
//!
//! A launch spawns the child with its id, group, port and the cluster's configuration (written
//! once to `<data_dir>/shard-process.toml`, TLS paths absolute), and watches it: its start-up
//! (spawn → registered in the directory) is measured, and an exit is logged with its status.
//! A child is never restarted here — the pool decides (it sees the shard leave the directory).
//! [`Launcher::reap`] kills a child that still runs and waits for it.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tracing::{info, warn};

use super::config::Config;
use crate::hub::directory::Directory;
use crate::ids::{GroupId, ShardId};
use crate::pool::launcher::{LaunchError, Launcher};
use crate::sync::lock;

/// A child that has not registered this long after its spawn is killed (its start failed).
pub const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

/// Spawns shards as child processes (cheap to clone).
#[derive(Clone)]
pub struct ProcessLauncher {
    inner: Arc<Inner>,
}

struct Inner {
    program: PathBuf,
    config: PathBuf,
    control: SocketAddr,
    listen_ip: IpAddr,
    base_port: u16,
    port_span: u32,
    directory: Arc<Mutex<Directory>>,
    running: Mutex<BTreeMap<ShardId, Child>>,
    startups: Mutex<Vec<Duration>>,
}

struct Child {
    port: u16,
    kill: Option<oneshot::Sender<()>>,
}

impl ProcessLauncher {
    /// A launcher whose children register at `control` (or `shards.hub_link`), configured from `cfg` (written to
    /// the data directory for them). `port_span`: how many ports from `shards.base_port` the
    /// children may use (ephemeral ports when `base_port` is 0).
    pub fn new(
        cfg: &Config,
        control: SocketAddr,
        directory: Arc<Mutex<Directory>>,
        port_span: u32,
    ) -> std::io::Result<ProcessLauncher> {
        let program = match &cfg.shards.program {
            Some(p) => p.clone(),
            None => std::env::current_exe()?,
        };
        let config = child_config(cfg)?;
        let control = cfg.shards.hub_link.unwrap_or(control);
        Ok(ProcessLauncher {
            inner: Arc::new(Inner {
                program,
                config,
                control,
                listen_ip: cfg.shards.listen_ip,
                base_port: cfg.shards.base_port,
                port_span,
                directory,
                running: Mutex::default(),
                startups: Mutex::default(),
            }),
        })
    }

    /// Start-ups measured so far (spawn → registered), in launch order.
    pub fn startups(&self) -> Vec<Duration> {
        lock(&self.inner.startups).clone()
    }

    /// The median measured start-up, if any shard registered yet.
    pub fn median_startup(&self) -> Option<Duration> {
        let mut s = self.startups();
        s.sort();
        s.get(s.len() / 2).copied()
    }

    /// Children running now, by shard id.
    pub fn running(&self) -> Vec<ShardId> {
        lock(&self.inner.running).keys().copied().collect()
    }

    fn free_port(&self, running: &BTreeMap<ShardId, Child>) -> Result<u16, LaunchError> {
        let f = &self.inner;
        if f.base_port == 0 {
            return Ok(0);
        }
        let first = u32::from(f.base_port);
        (first..first + f.port_span)
            .filter_map(|p| u16::try_from(p).ok())
            .find(|p| !running.values().any(|c| c.port == *p))
            .ok_or(LaunchError::NoPort {
                first: f.base_port,
                end: first + f.port_span,
            })
    }

    /// Waits (bounded) until every child launched so far registered; the ids that did not.
    pub async fn wait_registered(&self, within: Duration) -> Vec<ShardId> {
        let deadline = crate::clock::tokio_now() + within;
        loop {
            let missing: Vec<ShardId> = {
                let d = lock(&self.inner.directory);
                self.running()
                    .into_iter()
                    .filter(|id| d.record(*id).is_none())
                    .collect()
            };
            if missing.is_empty() || crate::clock::tokio_now() >= deadline {
                return missing;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Writes the configuration children read: the cluster's, with absolute paths.
fn child_config(cfg: &Config) -> std::io::Result<PathBuf> {
    let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
    let mut c = cfg.clone();
    c.data_dir = abs(cfg.data_dir.clone());
    c.tls.cert = Some(abs(cfg.cert_path()));
    c.tls.key = Some(abs(cfg.key_path()));
    c.tls.ca = Some(abs(cfg.ca_path()));
    std::fs::create_dir_all(&c.data_dir)?;
    let path = c.data_dir.join("shard-process.toml");
    let text = toml::to_string(&c).map_err(std::io::Error::other)?;
    std::fs::write(&path, text)?;
    Ok(path)
}

impl Launcher for ProcessLauncher {
    fn launch(&self, id: ShardId, group: GroupId) -> Result<(), LaunchError> {
        let f = &self.inner;
        let mut running = lock(&f.running);
        if running.contains_key(&id) {
            return Err(LaunchError::Start {
                shard: id,
                source: "a child with this id runs already".into(),
            });
        }
        let port = self.free_port(&running)?;
        let listen = SocketAddr::new(f.listen_ip, port);
        let mut cmd = tokio::process::Command::new(&f.program);
        cmd.arg("shard")
            .arg("--hub")
            .arg(f.control.to_string())
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--group")
            .arg(group.0.to_string())
            .arg("--id")
            .arg(id.0.to_string())
            .arg("--config")
            .arg(&f.config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let spawned = crate::clock::now();
        let mut child = cmd.spawn().map_err(|e| LaunchError::Start {
            shard: id,
            source: format!("cannot run {} shard: {e}", f.program.display()).into(),
        })?;
        let pid = child.id();
        let (kill_tx, kill_rx) = oneshot::channel();
        running.insert(
            id,
            Child {
                port,
                kill: Some(kill_tx),
            },
        );
        drop(running);
        info!(shard = id.0, group = group.0, pid = pid.unwrap_or(0), %listen, "shard process spawned");
        let launcher = self.clone();
        tokio::spawn(async move {
            let registered = launcher.clone().watch_registration(id, spawned);
            tokio::pin!(registered);
            let mut kill_rx = kill_rx;
            let mut watching = true;
            let status = loop {
                tokio::select! {
                    status = child.wait() => break status,
                    _ = &mut kill_rx => {
                        let _ = child.start_kill();
                        break child.wait().await;
                    }
                    ok = &mut registered, if watching => {
                        if !ok {
                            warn!(shard = id.0, "shard process did not register in time; killed");
                            let _ = child.start_kill();
                            break child.wait().await;
                        }
                        // Registered: from now on only its exit or a reap ends the watch.
                        watching = false;
                    }
                }
            };
            match status {
                Ok(s) if s.success() => info!(shard = id.0, "shard process exited"),
                Ok(s) => warn!(shard = id.0, status = %s, "shard process ended"),
                Err(e) => warn!(shard = id.0, error = %e, "shard process: wait failed"),
            }
            lock(&launcher.inner.running).remove(&id);
        });
        Ok(())
    }

    fn reap(&self, id: ShardId) {
        // The watch task kills it and removes the entry once the child is gone.
        let kill = lock(&self.inner.running)
            .get_mut(&id)
            .and_then(|c| c.kill.take());
        if let Some(k) = kill {
            let _ = k.send(());
        }
    }
}

impl ProcessLauncher {
    /// Until `id` appears in the directory (true, and its start-up is recorded) or the
    /// registration timeout passed (false).
    async fn watch_registration(self, id: ShardId, spawned: std::time::Instant) -> bool {
        let deadline = crate::clock::tokio_now() + REGISTER_TIMEOUT;
        while crate::clock::tokio_now() < deadline {
            if lock(&self.inner.directory).record(id).is_some() {
                let took = crate::clock::since(spawned);
                lock(&self.inner.startups).push(took);
                info!(
                    shard = id.0,
                    startup_ms = took.as_secs_f64() * 1e3,
                    "shard process registered"
                );
                return true;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        false
    }

    /// Kills every child and waits (bounded) until they are gone.
    pub async fn reap_all(&self, within: Duration) {
        for id in self.running() {
            self.reap(id);
        }
        let deadline = crate::clock::tokio_now() + within;
        while !lock(&self.inner.running).is_empty() && crate::clock::tokio_now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
