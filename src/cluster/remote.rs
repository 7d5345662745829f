//! A shard as a process of its own (`shoal shard`), on this host or another: it serves
//! clients on its own socket and joins the hub over the networked control link
//! ([`crate::link::net`]).
//!
//! What it holds: its certificate and key (from the cluster CA; the cluster certificate by
//! default), the CA, and — once registered — its group's token keys as the hub sends them.
//! Never the cluster secret: its QUIC stateless-reset and address-validation keys are its own,
//! random per process.
//!
//! A shard that lost its hub keeps serving its sessions and admitting valid tokens until its
//! keys lapse (two epochs after their own), reconnects with capped backoff and re-registers,
//! and delivers the session outcomes it kept meanwhile (bounded, counted). See PROTOCOL.md §10.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::config::Config;
use super::{endpoint_crypto, stream_settings, ClusterError};
use crate::ids::{GroupId, ShardId};
use crate::link::net::{run_bridge, BridgeCounters, BridgeError, BridgeOptions, Dialer, CTL_ALPN};
use crate::link::HubCmd;
use crate::security::tls::{mtls_client_crypto, read_certs, read_key, transport_config, TlsError};
use crate::security::token::TokenKeys;
use crate::shard::{Admission, Shard, ShardParams};
use crate::tickets::conn::ConnConfigs;
use crate::tickets::SessionStore;

/// What `shoal shard` is told.
#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// The hub's control listener.
    pub hub: SocketAddr,
    pub listen: SocketAddr,
    pub advertise: Option<SocketAddr>,
    pub group: GroupId,
    /// The shard's id; a random one above the pool's ranges when unset.
    pub id: Option<ShardId>,
    /// Shard, stream, transport and TLS settings (the hub's own configuration format).
    pub config: Config,
    pub bridge: BridgeOptions,
}

/// First id of the range a shard without `--id` picks from (above every pool range).
pub const SELF_ASSIGNED_IDS: u32 = 0x8000_0000;

/// Drains a shard process: go-away to every session, the grace period to move, then
/// `drained` to the hub and the end.
pub struct DrainHandle(mpsc::Sender<HubCmd>);

impl DrainHandle {
    pub async fn drain(&self, grace: Duration) {
        let cmd = HubCmd::Drain {
            grace_ms: grace.as_millis() as u64,
        };
        let _ = self.0.send(cmd).await;
    }
}

/// A running shard process.
pub struct ShardProcess {
    shard: Shard,
    bridge: tokio::task::JoinHandle<Result<(), BridgeError>>,
    commands: mpsc::Sender<HubCmd>,
    counters: Arc<BridgeCounters>,
}

impl ShardProcess {
    /// Binds the shard and starts its link to the hub (registration happens in the
    /// background; [`ShardProcess::wait`] reports a link that cannot be made).
    pub async fn start(o: ShardOptions) -> Result<ShardProcess, ClusterError> {
        let cfg = &o.config;
        if o.advertise.is_none() && o.listen.ip().is_unspecified() {
            return Err(ClusterError::Invalid(format!(
                "--listen {} is not an address clients can reach: give --advertise",
                o.listen
            )));
        }
        let chain = read_certs(&cfg.cert_path())?;
        let key = read_key(&cfg.key_path())?;
        let ca = read_certs(&cfg.ca_path())?;
        let id = match o.id {
            Some(id) => id,
            None => ShardId(SELF_ASSIGNED_IDS | u32::from_be_bytes(random()?)),
        };
        let st = &cfg.streams;
        let s = &cfg.shards;
        // Keys of its own: nothing here derives from the cluster secret.
        let token_secret: [u8; 32] = random()?;
        let token_key: Arc<dyn quinn::crypto::HandshakeTokenKey> = Arc::new(
            ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, &token_secret),
        );
        let configs = ConnConfigs::new(
            endpoint_crypto(
                &crate::security::certslot::CertSlot::new(chain.clone(), &key)?,
                s.tickets_per_handshake,
                st.session_ttl,
            )?,
            transport_config(cfg.transport.idle_timeout),
            token_key,
            Arc::new(SessionStore::new(st.session_store_entries, st.session_ttl)),
        )
        .with_guard(cfg.transport.handshakes);
        let (local, shard_end) = crate::link::channel::pair();
        let lb = cfg
            .lb
            .enabled
            .then(|| crate::lb::LbHandle::new(cfg.lb.cid_len()));
        let shard = Shard::start(ShardParams {
            id,
            group: o.group,
            bind: o.listen,
            advertise: o.advertise,
            socket_buffer: s.socket_buffer_bytes,
            configs,
            endpoint_config: match &lb {
                // Unroutable CIDs of the configured length until the hub's `lb` command.
                Some(h) => crate::lb::with_cids(quinn::EndpointConfig::default(), h),
                None => quinn::EndpointConfig::default(),
            },
            admission: Admission::new(
                id,
                o.group,
                Arc::new(TokenKeys::held(o.group)),
                s.replay_cache,
            ),
            streams: stream_settings(cfg),
            heartbeat_interval: cfg.transport.heartbeat_interval,
            attach_timeout: s.attach_timeout,
            max_sessions: u64::from(s.max_sessions),
            uplink: shard_end.up.clone(),
            replica: (st.live_standbys > 0).then(|| crate::shard::replica::ReplicaParams {
                identity: crate::mirror::MirrorIdentity {
                    server_name: cfg.cluster.clone(),
                    ca: ca.clone(),
                    chain: chain.clone(),
                    key: Arc::new(key.clone_key()),
                    bind_ip: o.listen.ip(),
                },
                listen: SocketAddr::new(o.listen.ip(), 0),
                advertise_ip: o.advertise.map(|a| a.ip()),
            }),
            lb: lb.clone(),
        })
        .map_err(|source| ClusterError::Bind {
            what: format!("shard {}", id.0),
            addr: o.listen,
            source,
        })?;
        let client = mtls_client_crypto(&ca, chain, key, CTL_ALPN)?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(client)
            .map_err(|e| TlsError::Quic(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(crate::link::net::transport());
        let local_bind: SocketAddr = if o.hub.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let endpoint =
            quinn::Endpoint::client(local_bind).map_err(|source| ClusterError::Bind {
                what: "control link".into(),
                addr: local_bind,
                source,
            })?;
        let dialer = Dialer {
            endpoint,
            hub: o.hub,
            server_name: cfg.cluster.clone(),
            config,
        };
        let commands = local.commands.clone();
        crate::shard::agent::spawn(shard.clone(), shard_end, false);
        let counters = Arc::new(BridgeCounters::default());
        let bridge = tokio::spawn(run_bridge(dialer, local, o.bridge, counters.clone()));
        info!(shard = id.0, group = o.group.0, addr = %shard.advertised(), hub = %o.hub, "shard process up; registering with the hub");
        Ok(ShardProcess {
            shard,
            bridge,
            commands,
            counters,
        })
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn counters(&self) -> &Arc<BridgeCounters> {
        &self.counters
    }

    /// What drains the shard on its own initiative (a signal), usable while
    /// [`ShardProcess::wait`] runs.
    pub fn drain_handle(&self) -> DrainHandle {
        DrainHandle(self.commands.clone())
    }

    /// Runs until the shard stopped (drained or told to stop) or its link failed for good.
    pub async fn wait(self) -> Result<(), BridgeError> {
        let r = match self.bridge.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        };
        if r.is_err() {
            self.shard.kill();
        }
        r
    }
}

fn random<const N: usize>() -> Result<[u8; N], ClusterError> {
    let mut b = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| ClusterError::Secret(crate::security::keys::SecretError::Rng))?;
    Ok(b)
}
