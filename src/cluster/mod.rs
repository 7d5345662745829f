//! The embedded cluster: a hub and its shards in one process, built from a [`Config`].
//!
//! Start-up order: config (already checked) → key material → TLS and QUIC configs → bind every
//! shard → bind the hub. Shutdown: the hub stops granting, shards send go-away and drain within
//! the grace period, then everything closes.

pub mod config;
mod embedded;
pub mod processes;
pub mod remote;

pub use embedded::EmbeddedLauncher;
use embedded::LauncherInner;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::info;

use crate::cluster::config::{Config, LauncherKind};
use crate::hub::directory::Directory;
use crate::hub::placement::{HeadroomPlacer, Placer};
use crate::hub::profiler::Profiler;
use crate::hub::{Hub, HubParams};
use crate::ids::{GroupId, ShardId};
use crate::link::net::{ControlServer, CTL_ALPN};
use crate::pool::launcher::{LaunchError, Launcher};
use crate::security::certslot::{check_covers, CertSlot};
use crate::security::keys::{ClusterSecret, KeySchedule, SecretError, SECRET_ENV};
use crate::security::tls::{
    hub_transport_config, mtls_server_crypto_in, read_certs, read_key, server_crypto_in,
    transport_config, TlsError,
};
use crate::security::token::TokenKeys;
use crate::shard::streams::StreamSettings;
use crate::shard::Shard;
use crate::sync::lock;
use crate::tickets::conn::ConnConfigs;
use crate::tickets::SessionStore;
pub use processes::ProcessLauncher;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Certs(#[from] crate::security::certs::CertError),
    #[error("client profiles: {0}")]
    Profiles(#[from] crate::hub::profiler::ProfilerError),
    #[error(transparent)]
    Launch(LaunchError),
    #[error("{0}")]
    Invalid(String),
    #[error("QUIC-LB: {0}")]
    Lb(#[from] crate::lb::LbError),
    /// A file a config key names (or defaults to) cannot be used.
    #[error("{key}: {source}")]
    File {
        key: String,
        #[source]
        source: TlsError,
    },
    #[error("cannot bind {what} on {addr}: {source}")]
    Bind {
        what: String,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// The secret and certificates a cluster runs with.
pub struct Material {
    pub secret: ClusterSecret,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// What clients must trust.
    pub ca: Vec<CertificateDer<'static>>,
}

/// The certificates in PEM text (unparseable blocks are skipped).
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

impl Material {
    /// Fresh in-memory material: a random secret and a new CA and cluster certificate.
    pub fn generate(cluster: &str) -> Result<Self, ClusterError> {
        Self::from_certs(
            ClusterSecret::random()?,
            &crate::security::certs::generate(cluster)?,
        )
    }

    /// Material from a secret and freshly made certificates.
    pub fn from_certs(
        secret: ClusterSecret,
        c: &crate::security::certs::ClusterCerts,
    ) -> Result<Self, ClusterError> {
        let key = rustls_pemfile::private_key(&mut c.key_pem.as_bytes())
            .ok()
            .flatten()
            .expect("rcgen writes a valid PEM key");
        Ok(Self {
            secret,
            chain: pem_certs(&c.chain_pem),
            key,
            ca: pem_certs(&c.ca_pem),
        })
    }

    /// Fresh material written to `dir` (certificates a shard process can read), with `cfg`
    /// pointed at it (`data_dir`); a random secret, kept in memory only.
    pub fn generate_in(cfg: &mut Config, dir: &std::path::Path) -> Result<Self, ClusterError> {
        let certs = crate::security::certs::generate(&cfg.cluster)?;
        crate::security::certs::write(dir, &certs)?;
        cfg.data_dir = dir.to_path_buf();
        Self::from_certs(ClusterSecret::random()?, &certs)
    }

    /// Reads the configured material. What is not configured comes from the data directory,
    /// where dev material is created if missing. Everything configured is read first, so a
    /// bad path fails before anything is written; [`DevFiles`] says what was created (to
    /// log, and to remove when the start-up fails after all).
    pub fn load_or_create(cfg: &Config) -> Result<(Self, DevFiles), ClusterError> {
        let file = |key: &str, configured: bool, path: &std::path::Path| {
            let key = if configured {
                key.to_string()
            } else {
                format!("{key} (unset, so {})", path.display())
            };
            move |source| ClusterError::File { key, source }
        };
        let mut dev = DevFiles::default();
        // Configured files first: nothing is created when one of them is wrong.
        let read_configured = |key: &str, path: &Option<std::path::PathBuf>| match path {
            Some(p) => read_certs(p).map(Some).map_err(file(key, true, p)),
            None => Ok(None),
        };
        let configured_certs = read_configured("tls.cert", &cfg.tls.cert)?;
        let configured_ca = read_configured("tls.ca", &cfg.tls.ca)?;
        let configured_key = match &cfg.tls.key {
            Some(p) => Some(read_key(p).map_err(file("tls.key", true, p))?),
            None => None,
        };
        let secret = if let Some(path) = &cfg.keys.secret_file {
            ClusterSecret::load(path)?
        } else if let Ok(hex) = std::env::var(SECRET_ENV) {
            ClusterSecret::from_hex(&hex, SECRET_ENV)?
        } else {
            let path = cfg.secret_path();
            if !path.exists() {
                ClusterSecret::random()?.save(&path)?;
                dev.created.push(path.clone());
                dev.notes.push(format!(
                    "created a dev cluster secret at {} (set keys.secret_file or {SECRET_ENV} in production)",
                    path.display()
                ));
            }
            ClusterSecret::load(&path)?
        };
        let cert = cfg.cert_path();
        if configured_certs.is_none() && !cert.exists() {
            let made = crate::security::certs::generate(&cfg.cluster)
                .and_then(|certs| crate::security::certs::write(&cfg.data_dir, &certs));
            match made {
                Ok(paths) => dev.created.extend(paths),
                Err(e) => {
                    dev.remove();
                    return Err(e.into());
                }
            }
            dev.notes.push(format!(
                "created dev certificates for {} in {} (clients trust {})",
                cfg.cluster,
                cfg.data_dir.display(),
                cfg.ca_path().display()
            ));
        }
        let (key, ca) = (cfg.key_path(), cfg.ca_path());
        let defaulted = || -> Result<Self, ClusterError> {
            Ok(Self {
                secret,
                chain: match configured_certs {
                    Some(c) => c,
                    None => read_certs(&cert).map_err(file("tls.cert", false, &cert))?,
                },
                key: match configured_key {
                    Some(k) => k,
                    None => read_key(&key).map_err(file("tls.key", false, &key))?,
                },
                ca: match configured_ca {
                    Some(c) => c,
                    None => read_certs(&ca).map_err(file("tls.ca", false, &ca))?,
                },
            })
        };
        match defaulted() {
            Ok(m) => Ok((m, dev)),
            Err(e) => {
                dev.remove();
                Err(e)
            }
        }
    }

    /// Whether clients trusting this CA accept the certificate for `cluster` (the start-up
    /// refuses a certificate every client would reject).
    pub fn check_covers(&self, cluster: &str) -> Result<(), TlsError> {
        check_covers(&self.chain, &self.ca, cluster)
    }
}

/// What [`Material::load_or_create`] created in the data directory.
#[derive(Debug, Default)]
pub struct DevFiles {
    /// What to tell the operator.
    pub notes: Vec<String>,
    /// The files written.
    pub created: Vec<std::path::PathBuf>,
}

impl DevFiles {
    /// Removes what was created (a start-up that failed leaves nothing behind).
    pub fn remove(&self) {
        for p in &self.created {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A running hub with its embedded shards.
pub struct Cluster {
    pub hub: Hub,
    /// Starts (and reaps) the embedded shards; the pool uses it to add more.
    pub launcher: EmbeddedLauncher,
    /// Starts shard processes instead, with `shards.launcher = "processes"`.
    processes: Option<ProcessLauncher>,
    /// Where shards in other processes register.
    control: Option<ControlServer>,
    pub ca: Vec<CertificateDer<'static>>,
    pub cluster: String,
    grace: Duration,
    /// The certificate every server configuration of the cluster presents.
    certs: Arc<CertSlot>,
}

impl Cluster {
    /// Binds and starts everything. Must run inside a tokio runtime.
    pub fn start(cfg: &Config, m: Material) -> Result<Cluster, ClusterError> {
        let placer = HeadroomPlacer::with_live_standbys(cfg.streams.live_standbys as usize);
        Self::start_with(cfg, m, Box::new(placer))
    }

    pub fn start_with(
        cfg: &Config,
        m: Material,
        placer: Box<dyn Placer>,
    ) -> Result<Cluster, ClusterError> {
        let schedule = KeySchedule::new(&m.secret);
        let tokens = Arc::new(TokenKeys::new(
            schedule.clone(),
            cfg.keys.epoch_interval.as_secs(),
        ));
        let st = &cfg.streams;
        let transport = transport_config(cfg.transport.idle_timeout);
        let reset_key = Arc::new(schedule.stateless_reset_key());
        let token_key: Arc<dyn quinn::crypto::HandshakeTokenKey> =
            Arc::new(schedule.new_token_key());
        let certs = CertSlot::new(m.chain.clone(), &m.key)?;
        let crypto = |tickets: usize| endpoint_crypto(&certs, tickets, st.session_ttl);
        let endpoint_config = quinn::EndpointConfig::new(reset_key);
        // Behind a QUIC-LB balancer every endpoint issues CIDs that carry its server id.
        let lb = if cfg.lb.enabled {
            Some(cfg.lb.plan(Some(&schedule))?)
        } else {
            None
        };
        let hub_endpoint = match &lb {
            Some(plan) => {
                let c = plan.current();
                let h = crate::lb::LbHandle::new(c.cid_len());
                let sid = crate::lb::server_id_bytes(crate::lb::HUB_SERVER_ID, c.server_id_len());
                plan.attach(h.clone(), sid)?;
                crate::lb::with_cids(endpoint_config.clone(), &h)
            }
            None => endpoint_config.clone(),
        };
        let streams = stream_settings(cfg);
        let s = &cfg.shards;
        let limits = cfg.profiles.limits.clone();
        let profiler = match &cfg.profiles.path {
            Some(path) => {
                let p = Profiler::open_or_fresh(limits, path, crate::unix_us() / 1000)?;
                info!(path = %path.display(), clients = p.len(), "client profiles loaded");
                p
            }
            None => Profiler::new(limits),
        };
        let hub_store = Arc::new(SessionStore::new(st.session_store_entries, st.session_ttl));
        let hub = Hub::start(HubParams {
            bind: cfg.hub.listen,
            socket_buffer: s.socket_buffer_bytes,
            configs: ConnConfigs::new(
                crypto(cfg.hub.tickets_per_handshake)?,
                hub_transport_config(cfg.transport.idle_timeout),
                token_key.clone(),
                hub_store,
            )
            .with_guard(cfg.transport.handshakes),
            endpoint_config: hub_endpoint,
            tokens,
            shard_silence: SHARD_SILENCE,
            book_clients: crate::tickets::book::MAX_CLIENTS,
            placer,
            grant_shards: cfg.hub.grant_shards,
            live_standbys: cfg.streams.live_standbys,
            lb: lb.clone().map(|c| (c, cfg.lb.shards_via)),
            token_ttl: cfg.hub.token_ttl,
            synthetic: cfg.synthetic(),
            request_timeout: s.attach_timeout,
            profiler: Arc::new(std::sync::Mutex::new(profiler)),
        })
        .map_err(|source| ClusterError::Bind {
            what: "hub".into(),
            addr: cfg.hub.listen,
            source,
        })?;
        let port_span = if cfg.pool.enabled {
            s.count.max(s.groups.saturating_mul(cfg.pool.max_shards))
        } else {
            s.count
        };
        let launcher = EmbeddedLauncher {
            inner: Arc::new(LauncherInner {
                crypto: crypto(s.tickets_per_handshake)?,
                transport,
                handshakes: cfg.transport.handshakes,
                token_key,
                endpoint_config,
                lb: lb.clone(),
                streams,
                shards: s.clone(),
                heartbeat: cfg.transport.heartbeat_interval,
                store_entries: st.session_store_entries,
                store_ttl: st.session_ttl,
                links: hub.links().clone(),
                mirror_identity: (st.live_standbys > 0).then(|| crate::mirror::MirrorIdentity {
                    server_name: cfg.cluster.clone(),
                    ca: m.ca.clone(),
                    chain: m.chain.clone(),
                    key: Arc::new(m.key.clone_key()),
                    bind_ip: s.listen_ip,
                }),
                port_span,
                running: Mutex::default(),
            }),
        };
        let control = match (cfg.hub.control_listen, s.launcher) {
            (Some(bind), _) => Some(bind),
            (None, LauncherKind::Processes) => Some(std::net::SocketAddr::new(
                std::net::Ipv4Addr::LOCALHOST.into(),
                0,
            )),
            (None, LauncherKind::Embedded) => None,
        };
        let control = match control {
            Some(bind) => {
                let crypto = mtls_server_crypto_in(certs.clone(), &m.ca, CTL_ALPN)?;
                let server = ControlServer::server_config(crypto)?;
                Some(
                    ControlServer::start(bind, server, hub.links().clone()).map_err(|source| {
                        ClusterError::Bind {
                            what: "control listener".into(),
                            addr: bind,
                            source,
                        }
                    })?,
                )
            }
            None => None,
        };
        let processes = match (&control, s.launcher) {
            (Some(c), LauncherKind::Processes) => Some(
                ProcessLauncher::new(cfg, c.addr(), hub.directory().clone(), port_span).map_err(
                    |e| {
                        ClusterError::Launch(LaunchError::Start {
                            shard: ShardId(0),
                            source: format!("cannot prepare shard processes: {e}").into(),
                        })
                    },
                )?,
            ),
            _ => None,
        };
        for i in 0..s.count {
            let (id, group) = (ShardId(i), GroupId(i % s.groups));
            match &processes {
                Some(p) => p.launch(id, group),
                None => launcher.start(id, group).map(|_| ()),
            }
            .map_err(ClusterError::Launch)?;
        }
        Ok(Cluster {
            hub,
            launcher,
            processes,
            control,
            ca: m.ca,
            cluster: cfg.cluster.clone(),
            grace: cfg.shutdown.grace,
            certs,
        })
    }

    /// Presents `chain`/`key` from the next handshake on, on the hub, every embedded shard and
    /// the control listener (connections already up keep theirs). Refused, changing nothing,
    /// when the key does not match or clients trusting the cluster CA would not accept the
    /// chain for the cluster name. Returns whether the certificate changed.
    pub fn reload_certs(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Result<bool, ClusterError> {
        check_covers(&chain, &self.ca, &self.cluster).map_err(|e| {
            ClusterError::Invalid(format!(
                "the new certificate would not verify for {:?} against the cluster CA: {e}",
                self.cluster
            ))
        })?;
        Ok(self.certs.replace(chain, key)?)
    }

    /// Waits until the first shards registered: at once for embedded ones; for shard processes
    /// until each registered (bounded by `within`), or the error naming those that did not.
    pub async fn wait_ready(&self, within: Duration) -> Result<(), ClusterError> {
        let Some(p) = &self.processes else {
            return Ok(());
        };
        let missing = p.wait_registered(within).await;
        if missing.is_empty() {
            return Ok(());
        }
        Err(ClusterError::Invalid(format!(
            "shard processes {missing:?} did not register within {within:?} (their log is on stderr)"
        )))
    }

    /// What the pool starts and reaps shards with: the process launcher when shards run as
    /// processes, the embedded one otherwise.
    pub fn pool_launcher(&self) -> Arc<dyn Launcher> {
        match &self.processes {
            Some(p) => Arc::new(p.clone()),
            None => Arc::new(self.launcher.clone()),
        }
    }

    /// The shard processes' launcher, when shards run as processes.
    pub fn processes(&self) -> Option<&ProcessLauncher> {
        self.processes.as_ref()
    }

    /// The control listener, when one runs.
    pub fn control(&self) -> Option<&ControlServer> {
        self.control.as_ref()
    }

    /// The embedded shard `id` (tests and tools reach into it; the hub never does).
    pub fn shard(&self, id: ShardId) -> Option<Shard> {
        self.launcher.shard(id)
    }

    /// Every embedded shard not yet reaped, by id.
    pub fn shards(&self) -> Vec<Shard> {
        self.launcher.shards()
    }

    /// The hub's directory of shards.
    pub fn directory(&self) -> &Arc<Mutex<Directory>> {
        self.hub.directory()
    }

    /// Graceful shutdown: stop granting, tell every shard in the directory to drain (go-away,
    /// then the grace period), wait for them to report drained, then write the client profiles
    /// (with the sessions the drain ended) one last time.
    pub async fn shutdown(&self) {
        info!(grace_ms = self.grace.as_millis() as u64, "shutting down");
        self.hub.stop_granting().await;
        let ids: Vec<ShardId> = lock(self.directory()).records().map(|r| r.id).collect();
        // Out of placement at once, drained concurrently (each bounded by the grace period).
        let links = self.hub.links();
        let drains: Vec<_> = ids
            .iter()
            .filter_map(|&id| links.drain(id, self.grace))
            .map(tokio::spawn)
            .collect();
        for d in drains {
            let _ = d.await;
        }
        for s in self.launcher.shards() {
            self.launcher.reap(s.id());
        }
        if let Some(p) = &self.processes {
            p.reap_all(Duration::from_secs(2)).await;
        }
        if let Some(c) = &self.control {
            c.close();
        }
        self.hub.close().await;
        info!("shutdown complete");
    }
}

/// The TLS configuration of a `shoal/1` endpoint (hub or shard). Its session store is
/// replaced per endpoint and per connection (see [`ConnConfigs`]).
pub(crate) fn endpoint_crypto(
    slot: &Arc<CertSlot>,
    tickets: usize,
    ttl: Duration,
) -> Result<Arc<rustls::ServerConfig>, ClusterError> {
    let placeholder = Arc::new(SessionStore::new(1, ttl));
    Ok(server_crypto_in(slot.clone(), placeholder, tickets)?)
}

/// What a shard's streams run with.
pub(crate) fn stream_settings(cfg: &Config) -> StreamSettings {
    StreamSettings {
        synthetic: cfg.synthetic(),
        buffer_chunks: cfg.streams.buffer_chunks,
        replay_window: cfg.streams.replay_window_chunks,
    }
}

/// A shard silent this long leaves placement (it reports at least every
/// [`crate::shard::agent::REPORT_INTERVAL`]).
pub const SHARD_SILENCE: Duration = Duration::from_secs(2);
