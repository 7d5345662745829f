//! `shoal up`: config, then bind, then spawn, then wait, then drain.
//!
//! The config (file, then CLI overrides) is validated and every certificate read before a socket
//! is bound; then the cluster, the admin API and the shard pool start. `up` then waits under a
//! [`Supervisor`]: a shutdown signal (Ctrl-C, SIGTERM) ends it normally; any supervised task that
//! ends first (an error, a panic, or an unexpected `Ok`) ends it with that task's error. Either
//! way the pool stops, the admin API stops within its grace period and the cluster drains.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use tokio::task::{Id, JoinSet};

use shoal::admin::{Admin, AdminState};
use shoal::cluster::config::Config;
use shoal::cluster::{Cluster, Material};

mod reload;

use crate::signals::{Ask, Signals};

#[derive(Args)]
pub struct UpArgs {
    /// TOML config file; every field has a default.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Override hub.listen.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Override shards.count.
    #[arg(long, value_parser = crate::args::count32(0, 100_000))]
    shards: Option<u32>,
    /// Override shards.groups.
    #[arg(long, value_parser = crate::args::count32(1, 100_000))]
    groups: Option<u32>,
    /// Override hub.control_listen: where shards in other processes register
    /// (`shoal shard --hub ADDR`).
    #[arg(long)]
    control: Option<SocketAddr>,
    /// Run every shard (the first ones and the pool's) as a `shoal shard` child process
    /// (shards.launcher = "processes").
    #[arg(long)]
    shard_processes: bool,
    /// Override data_dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Override admin.listen (TCP address of the admin HTTP API, or `off`).
    #[arg(long, value_name = "ADDR|off")]
    admin: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

/// The configuration `up` runs with: the file (or the defaults), then the command-line
/// overrides, validated.
fn effective_config(a: &UpArgs) -> Result<Config> {
    let mut cfg = Config::from_env_and_file(a.config.as_deref())?;
    if let Some(l) = a.listen {
        cfg.hub.listen = l;
    }
    if let Some(n) = a.shards {
        cfg.shards.count = n;
    }
    if let Some(g) = a.groups {
        cfg.shards.groups = g;
    }
    if let Some(c) = a.control {
        cfg.hub.control_listen = Some(c);
    }
    if a.shard_processes {
        cfg.shards.launcher = shoal::cluster::config::LauncherKind::Processes;
    }
    if let Some(d) = &a.data_dir {
        cfg.data_dir = d.clone();
    }
    if let Some(admin) = &a.admin {
        cfg.admin.listen = shoal::cluster::config::parse_admin_listen(admin)
            .map_err(|e| crate::args::InputError(format!("--admin: {e}")))?;
    }
    cfg.validate()
        .context("the config with the command-line overrides")?;
    Ok(cfg)
}

pub async fn run(a: UpArgs) -> Result<()> {
    // From here on SIGHUP reloads instead of killing the process.
    let mut signals = Signals::new().context("watching signals")?;
    let mut cfg = effective_config(&a)?;
    if a.print_config {
        print!(
            "{}",
            shoal::cluster::config::example::render_effective(&cfg)
        );
        return Ok(());
    }
    apply_log_filter(&cfg)?;
    if cfg.profiles.path.is_none() {
        cfg.profiles.path = Some(cfg.data_dir.join("profiles.redb"));
    }
    if let Some(dir) = cfg.profiles.path.as_ref().and_then(|p| p.parent()) {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating {} for the profile database", dir.display()))?;
        }
    }
    let (material, dev) = Material::load_or_create(&cfg)?;
    let started = start(&cfg, material, &mut signals).await;
    let (cluster, admin) = match started {
        Ok(s) => s,
        Err(e) => {
            // A failed start leaves no dev material behind.
            dev.remove();
            return Err(e);
        }
    };
    for n in &dev.notes {
        tracing::info!("{n}");
    }
    let hint = client_hint(&cfg, cluster.hub.addr());
    tracing::info!(
        hub = %cluster.hub.addr(),
        control = cluster.control().map(|c| display(c.addr())),
        ca = %cfg.ca_path().display(),
        admin = admin.as_ref().map(|a| display(a.addr())),
        metrics = admin.as_ref().and_then(Admin::metrics_addr).map(display),
        "ready: try `{hint}`"
    );
    let pool = cfg.pool.enabled.then(|| start_pool(&cfg, &cluster));
    let pool_max_at_start = cfg.pool.max_shards;
    crate::notify::ready();
    // What runs beside the signal wait; the first one to end is a failure and ends `up` (the
    // drain below still runs).
    let mut tasks = Supervisor::default();
    let hub_stopped = cluster.hub.stopped_accepting();
    tasks.spawn("the hub", async move {
        hub_stopped.await;
        Err(anyhow!("its endpoint closed"))
    });
    if let Some(admin) = &admin {
        let ended = admin.ended();
        tasks.spawn("the admin API", async move {
            let why = ended.await;
            Err(anyhow!("it stopped serving: {why}"))
        });
    }
    let outcome = loop {
        match tasks.wait(signals.next()).await {
            Ok(Ask::Reload) => {
                let r = Running {
                    cluster: &cluster,
                    pool: pool.as_ref(),
                    admin: admin.as_ref(),
                    pool_max_at_start,
                };
                reload::reload(&a, &mut cfg, &r);
            }
            Ok(Ask::Stop) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    crate::notify::stopping();
    if let Err(e) = &outcome {
        tracing::error!(
            error = format!("{e:#}"),
            "a supervised task failed; shutting down"
        );
    }
    tasks.abort_all();
    // The drain is bounded; a second Ctrl-C does not wait for it.
    signals.force_on_second("drain");
    // Probes and metrics stay up during the drain, showing it.
    if let Some(admin) = &admin {
        admin.set_draining();
    }
    if let Some(p) = pool {
        p.stop().await;
    }
    cluster.shutdown().await;
    if let Some(admin) = admin {
        admin.stop(shoal::admin::STOP_GRACE).await;
    }
    outcome
}

/// What a reload can reach.
pub struct Running<'a> {
    pub cluster: &'a Cluster,
    pub pool: Option<&'a shoal::pool::driver::PoolDriver>,
    pub admin: Option<&'a Admin>,
    /// `pool.max_shards` at start: the shard ports are reserved for it.
    pub pool_max_at_start: u32,
}

/// `log.filter` takes effect unless `RUST_LOG` is set (which wins).
pub fn apply_log_filter(cfg: &Config) -> Result<Option<String>> {
    let from_env = std::env::var("RUST_LOG").is_ok_and(|v| !v.trim().is_empty());
    if from_env {
        return Ok(None);
    }
    let f = cfg
        .log
        .filter
        .as_deref()
        .unwrap_or(crate::logs::DEFAULT_FILTER);
    Ok(crate::logs::set_filter(f, "log.filter")?)
}

/// Binds and starts the cluster and the admin API; on an error, nothing keeps running.
async fn start(
    cfg: &Config,
    material: Material,
    signals: &mut Signals,
) -> Result<(Cluster, Option<Admin>)> {
    // Every client would fail its handshake with a certificate that does not cover the
    // cluster name: refuse to start with one.
    material.check_covers(&cfg.cluster).map_err(|e| {
        crate::args::InputError(format!(
            "the certificate {} (tls.cert) is not valid for the cluster name {:?} (cluster) against the CA {} (tls.ca): {e}; issue one with `shoal certs --cluster {}`",
            cfg.cert_path().display(),
            cfg.cluster,
            cfg.ca_path().display(),
            cfg.cluster
        ))
    })?;
    // The admin token and the mirrors' client certificate are read before any socket is bound.
    let auth = cfg
        .admin
        .token_file
        .as_ref()
        .map(shoal::admin::auth::AdminAuth::load)
        .transpose()
        .map_err(|e| crate::args::InputError(e.to_string()))?;
    let mirror_identity = match cfg.admin.listen {
        Some(_) => {
            let (cert, key) = (cfg.mirror_cert_path(), cfg.mirror_key_path());
            let chain = shoal::security::tls::read_certs(&cert)
                .with_context(|| format!("reading admin.mirror_cert {}", cert.display()))?;
            let key = shoal::security::tls::read_key(&key)
                .with_context(|| format!("reading admin.mirror_key {}", key.display()))?;
            Some((chain, key))
        }
        None => None,
    };
    let cluster = Cluster::start(cfg, material)?;
    // Shard processes may take a while to register; a stop signal meanwhile is obeyed.
    let ready = tokio::select! {
        r = cluster.wait_ready(shoal::cluster::processes::REGISTER_TIMEOUT) => r.map_err(anyhow::Error::from),
        () = signals.stop("up (starting)") => Err(anyhow!("stopped by a signal during the start-up")),
    };
    if let Err(e) = ready {
        cluster.shutdown().await;
        return Err(e);
    }
    if let Some(p) = cluster.processes() {
        tracing::info!(
            startup_ms = p.median_startup().map(|d| d.as_secs_f64() * 1e3),
            "shard processes registered (median start-up: spawn to registered)"
        );
    }
    let admin = match (cfg.admin.listen, mirror_identity) {
        (Some(addr), Some((chain, key))) => {
            let state = AdminState::for_cluster(&cluster, chain, key)
                .with_auth(auth)
                .with_metrics_listen(cfg.admin.metrics_listen);
            match Admin::start(addr, state) {
                Ok((admin, _)) => Some(admin),
                Err(e) => {
                    cluster.shutdown().await;
                    return Err(e).with_context(|| format!("binding the admin API on {addr}"));
                }
            }
        }
        _ => None,
    };
    Ok((cluster, admin))
}

/// The command a client runs against this cluster, with `--ca` and `--cluster` when they are
/// not the client's defaults.
fn client_hint(cfg: &Config, hub: SocketAddr) -> String {
    let mut hint = format!("shoal subscribe --hub {hub}");
    let ca = cfg.ca_path();
    if ca != std::path::Path::new(".shoal/ca.pem") {
        hint.push_str(&format!(" --ca {}", ca.display()));
    }
    if cfg.cluster != shoal::DEFAULT_CLUSTER {
        hint.push_str(&format!(" --cluster {}", cfg.cluster));
    }
    hint.push_str(" synth/hello");
    hint
}

fn start_pool(cfg: &Config, cluster: &Cluster) -> shoal::pool::driver::PoolDriver {
    let (mut pool, mut scaler) = cfg.pool.pool_and_scaler(&cfg.shards, cfg.shutdown.grace);
    // Shard processes: the measured start-up is the predictive policy's lead time.
    if let Some(startup) = cluster.processes().and_then(|p| p.median_startup()) {
        pool.startup = startup;
        scaler.startup = startup;
    }
    shoal::pool::driver::PoolDriver::start(cluster, pool, scaler, cfg.shards.groups)
}

/// Named tasks that must run as long as the service does; each returns `Result`.
#[derive(Default)]
struct Supervisor {
    tasks: JoinSet<Result<()>>,
    names: HashMap<Id, &'static str>,
}

impl Supervisor {
    /// Runs `task` under supervision; `name` says what failed in the error that ends `up`.
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        let id = self.tasks.spawn(task).id();
        self.names.insert(id, name);
    }

    /// Waits for `signal` (then `Ok` with its output) or for the first supervised task to end
    /// (then `Err` with its name and error): a task that ends while the service runs has
    /// failed, even with `Ok`.
    async fn wait<T>(&mut self, signal: impl Future<Output = T>) -> Result<T> {
        tokio::select! {
            v = signal => Ok(v),
            Some(done) = self.tasks.join_next_with_id() => Err(match done {
                Ok((id, Ok(()))) => anyhow!("{} stopped unexpectedly", self.name(id)),
                Ok((id, Err(e))) => e.context(format!("{} failed", self.name(id))),
                Err(e) => anyhow!("{} panicked or was cancelled: {e}", self.name(e.id())),
            }),
        }
    }

    fn name(&self, id: Id) -> &'static str {
        self.names.get(&id).copied().unwrap_or("a supervised task")
    }

    /// Stops the tasks still running (before the drain).
    fn abort_all(&mut self) {
        self.tasks.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_signal_ends_the_wait_normally() {
        let mut s = Supervisor::default();
        s.spawn("idle", std::future::pending());
        let signal = tokio::time::sleep(Duration::from_secs(1));
        assert!(s.wait(signal).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_task_ends_the_wait_with_its_name_and_error() {
        let mut s = Supervisor::default();
        s.spawn("idle", std::future::pending());
        s.spawn("admin API", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err(anyhow!("address in use"))
        });
        let e = s.wait(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!(format!("{e:#}"), "admin API failed: address in use");
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_that_returns_or_panics_is_a_failure_too() {
        let mut s = Supervisor::default();
        s.spawn("pool driver", async { Ok(()) });
        let e = s.wait(std::future::pending::<()>()).await.unwrap_err();
        assert_eq!(e.to_string(), "pool driver stopped unexpectedly");

        let mut s = Supervisor::default();
        s.spawn("hub", async { panic!("boom") });
        let e = s.wait(std::future::pending::<()>()).await.unwrap_err();
        assert!(e.to_string().starts_with("hub panicked"), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn with_nothing_to_supervise_only_the_signal_ends_the_wait() {
        let mut s = Supervisor::default();
        let signal = tokio::time::sleep(Duration::from_secs(3600));
        assert!(s.wait(signal).await.is_ok());
    }
}
