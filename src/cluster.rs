//! The embedded cluster: a hub and its shards in one process, built from a [`Config`].
//!
//! Start-up order: config (already checked) → key material → TLS and QUIC configs → bind every
//! shard → bind the hub. Shutdown: the hub stops granting, shards send go-away and drain within
//! the grace period, then everything closes.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::info;

use crate::config::Config;
use crate::hub::placement::{HeadroomPlacer, Placer};
use crate::hub::profiler::Profiler;
use crate::hub::{Hub, HubParams};
use crate::ids::{GroupId, ShardId};
use crate::keys::{ClusterSecret, KeySchedule, SecretError, SECRET_ENV};
use crate::shard::streams::StreamSettings;
use crate::shard::{Admission, SessionReports, Shard, ShardParams, ShardSet};
use crate::tickets::SessionStore;
use crate::tls::{read_certs, read_key, server_crypto, transport_config, TlsError};
use crate::token::TokenKeys;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Certs(#[from] crate::certs::CertError),
    #[error("client profiles: {0}")]
    Profiles(#[from] crate::hub::profiler::ProfilerError),
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
        Self::from_certs(ClusterSecret::random()?, &crate::certs::generate(cluster)?)
    }

    /// Material from a secret and freshly made certificates.
    pub fn from_certs(
        secret: ClusterSecret,
        c: &crate::certs::ClusterCerts,
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

    /// Reads the configured material. What is not configured comes from the data directory,
    /// where dev material is created if missing; the returned notes say what was created.
    pub fn load_or_create(cfg: &Config) -> Result<(Self, Vec<String>), ClusterError> {
        let mut notes = Vec::new();
        let secret = if let Some(path) = &cfg.keys.secret_file {
            ClusterSecret::load(path)?
        } else if let Ok(hex) = std::env::var(SECRET_ENV) {
            ClusterSecret::from_hex(&hex, SECRET_ENV)?
        } else {
            let path = cfg.secret_path();
            if !path.exists() {
                ClusterSecret::random()?.save(&path)?;
                notes.push(format!(
                    "created a dev cluster secret at {} (set keys.secret_file or {SECRET_ENV} in production)",
                    path.display()
                ));
            }
            ClusterSecret::load(&path)?
        };
        let cert = cfg.cert_path();
        if cfg.tls.cert.is_none() && !cert.exists() {
            let certs = crate::certs::generate(&cfg.cluster)?;
            crate::certs::write(&cfg.data_dir, &certs)?;
            notes.push(format!(
                "created dev certificates for {} in {} (clients trust {})",
                cfg.cluster,
                cfg.data_dir.display(),
                cfg.ca_path().display()
            ));
        }
        let m = Self {
            secret,
            chain: read_certs(&cert)?,
            key: read_key(&cfg.key_path())?,
            ca: read_certs(&cfg.ca_path())?,
        };
        Ok((m, notes))
    }
}

/// Starts shards with the cluster's keys, certificates and settings; the pool driver uses it
/// to add shards while the cluster runs.
#[derive(Clone)]
pub struct ShardFactory {
    inner: Arc<FactoryInner>,
}

struct FactoryInner {
    server_config: quinn::ServerConfig,
    endpoint_config: quinn::EndpointConfig,
    tokens: Arc<TokenKeys>,
    streams: StreamSettings,
    shards: crate::config::ShardsConfig,
    heartbeat: Duration,
    /// Connected to the hub's profiler once the hub runs.
    reports: SessionReports,
}

impl ShardFactory {
    /// Binds and starts shard `id` of `group` on `port` (0: any free port).
    pub fn start(&self, id: ShardId, group: GroupId, port: u16) -> Result<Shard, ClusterError> {
        let f = &self.inner;
        let s = &f.shards;
        let bind = std::net::SocketAddr::new(s.listen_ip, port);
        Shard::start(ShardParams {
            id,
            group,
            bind,
            socket_buffer: s.socket_buffer_bytes,
            server_config: f.server_config.clone(),
            endpoint_config: f.endpoint_config.clone(),
            admission: Admission::new(id, group, f.tokens.clone(), s.replay_cache),
            streams: f.streams,
            heartbeat_interval: f.heartbeat,
            attach_timeout: s.attach_timeout,
            max_sessions: u64::from(s.max_sessions),
            reports: f.reports.clone(),
        })
        .map_err(|source| ClusterError::Bind {
            what: format!("shard {}", id.0),
            addr: bind,
            source,
        })
    }
}

/// A running hub with its embedded shards.
pub struct Cluster {
    pub hub: Hub,
    /// Starts more shards like the ones the cluster began with.
    pub factory: ShardFactory,
    pub shards: Vec<Shard>,
    pub store: Arc<SessionStore>,
    pub ca: Vec<CertificateDer<'static>>,
    pub cluster: String,
    grace: Duration,
}

impl Cluster {
    /// Binds and starts everything. Must run inside a tokio runtime.
    pub fn start(cfg: &Config, m: Material) -> Result<Cluster, ClusterError> {
        Self::start_with(cfg, m, Box::new(HeadroomPlacer::default()))
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
        let store = Arc::new(SessionStore::new(
            cfg.streams.session_store_entries,
            cfg.streams.session_ttl,
        ));
        let transport = transport_config(cfg.transport.idle_timeout);
        let reset_key = Arc::new(schedule.stateless_reset_key());
        let token_key = Arc::new(schedule.new_token_key());
        let server = |tickets: usize| -> Result<quinn::ServerConfig, ClusterError> {
            let crypto = server_crypto(m.chain.clone(), m.key.clone_key(), store.clone(), tickets)?;
            let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
                .map_err(|e| TlsError::Quic(e.to_string()))?;
            let mut sc = quinn::ServerConfig::new(Arc::new(quic), token_key.clone());
            sc.transport_config(transport.clone());
            Ok(sc)
        };
        let endpoint_config = quinn::EndpointConfig::new(reset_key);
        let streams = StreamSettings {
            synthetic: cfg.synthetic(),
            buffer_chunks: cfg.streams.buffer_chunks,
            replay_window: cfg.streams.replay_window_chunks,
        };
        let s = &cfg.shards;
        let factory = ShardFactory {
            inner: Arc::new(FactoryInner {
                server_config: server(s.tickets_per_handshake)?,
                endpoint_config: endpoint_config.clone(),
                tokens: tokens.clone(),
                streams,
                shards: s.clone(),
                heartbeat: cfg.transport.heartbeat_interval,
                reports: SessionReports::default(),
            }),
        };
        let mut shards = Vec::with_capacity(s.count as usize);
        for i in 0..s.count {
            let port = if s.base_port == 0 {
                0
            } else {
                s.base_port.saturating_add(i as u16)
            };
            shards.push(factory.start(ShardId(i), GroupId(i % s.groups), port)?);
        }
        let limits = cfg.profiles.limits.clone();
        let profiler = match &cfg.profiles.path {
            Some(path) => {
                let p = Profiler::open_or_fresh(limits, path, crate::unix_us() / 1000)?;
                info!(path = %path.display(), clients = p.len(), "client profiles loaded");
                p
            }
            None => Profiler::new(limits),
        };
        let hub = Hub::start(HubParams {
            bind: cfg.hub.listen,
            socket_buffer: s.socket_buffer_bytes,
            server_config: server(cfg.hub.tickets_per_handshake)?,
            endpoint_config,
            tokens,
            shards: ShardSet::new(shards.clone()),
            placer,
            grant_shards: cfg.hub.grant_shards,
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
        factory.inner.reports.connect(hub.session_sink());
        Ok(Cluster {
            hub,
            factory,
            shards,
            store,
            ca: m.ca,
            cluster: cfg.cluster.clone(),
            grace: cfg.shutdown.grace,
        })
    }

    pub fn shard(&self, id: ShardId) -> Option<&Shard> {
        self.shards.iter().find(|s| s.id() == id)
    }

    /// Every shard the hub places on now (the pool may have added or removed some).
    pub fn live_shards(&self) -> Vec<Shard> {
        self.hub.shard_set().snapshot()
    }

    /// Graceful shutdown: stop granting, go-away and drain every shard within the grace period,
    /// then write the client profiles (with the sessions the drain ended) one last time.
    pub async fn shutdown(&self) {
        info!(grace = ?self.grace, "shutting down");
        self.hub.stop_granting().await;
        let grace = self.grace;
        let mut all = self.live_shards();
        for s in &self.shards {
            if !all.iter().any(|x| x.id() == s.id()) {
                all.push(s.clone());
            }
        }
        let drains: Vec<_> = all
            .into_iter()
            .map(|s| tokio::spawn(async move { s.drain(grace).await }))
            .collect();
        for d in drains {
            let _ = d.await;
        }
        self.hub.close().await;
        info!("shutdown complete");
    }
}
