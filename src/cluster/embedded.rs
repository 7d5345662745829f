//! The embedded launcher: shards inside this process, each on its own socket with its own
//! session store and its own in-process link to the hub. The pool starts and reaps shards
//! through it ([`Launcher`]); the cluster starts its first shards with it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::ClusterError;
use crate::hub::links::Links;
use crate::ids::{GroupId, ShardId};
use crate::pool::launcher::{LaunchError, Launcher};
use crate::security::token::TokenKeys;
use crate::shard::streams::StreamSettings;
use crate::shard::{Admission, Shard, ShardParams};
use crate::sync::lock;
use crate::tickets::conn::ConnConfigs;
use crate::tickets::SessionStore;

/// The embedded launcher: starts shards inside this process, each with its own UDP socket, its
/// own session store and its own in-process link to the hub. Ports come from
/// `shards.base_port` upwards (the lowest free one; see [`EmbeddedLauncher::port_range`]), or
/// are ephemeral when it is 0.
#[derive(Clone)]
pub struct EmbeddedLauncher {
    pub(super) inner: Arc<LauncherInner>,
}

pub(super) struct LauncherInner {
    pub(super) crypto: Arc<rustls::ServerConfig>,
    pub(super) transport: Arc<quinn::TransportConfig>,
    /// Every shard endpoint's handshake limits.
    pub(super) handshakes: crate::guard::GuardSettings,
    pub(super) token_key: Arc<dyn quinn::crypto::HandshakeTokenKey>,
    pub(super) endpoint_config: quinn::EndpointConfig,
    /// Behind a QUIC-LB balancer: every shard's CIDs carry its server id.
    pub(super) lb: Option<crate::lb::LbPlan>,
    pub(super) streams: StreamSettings,
    pub(super) shards: crate::cluster::config::ShardsConfig,
    pub(super) heartbeat: Duration,
    pub(super) store_entries: usize,
    pub(super) store_ttl: Duration,
    pub(super) links: Links,
    /// The certificate shards mirror live streams to each other with (none: not mirrored).
    pub(super) mirror_identity: Option<crate::mirror::MirrorIdentity>,
    /// How many ports from `base_port` the shards may use.
    pub(super) port_span: u32,
    pub(super) running: Mutex<BTreeMap<ShardId, Running>>,
}

pub(super) struct Running {
    shard: Shard,
    port: u16,
}

impl EmbeddedLauncher {
    /// Ports the shards may bind: `base_port .. base_port + span` (none fixed when
    /// `base_port` is 0).
    pub fn port_range(&self) -> std::ops::Range<u32> {
        let first = u32::from(self.inner.shards.base_port);
        first..first + self.inner.port_span
    }

    fn free_port(&self, running: &BTreeMap<ShardId, Running>) -> Result<u16, LaunchError> {
        let base = self.inner.shards.base_port;
        if base == 0 {
            return Ok(0);
        }
        let range = self.port_range();
        range
            .clone()
            .filter_map(|p| u16::try_from(p).ok())
            .find(|p| !running.values().any(|r| r.port == *p))
            .ok_or(LaunchError::NoPort {
                first: base,
                end: range.end,
            })
    }

    /// Binds and starts shard `id` of `group`, links it to the hub (registered when this
    /// returns) and starts its link agent.
    pub fn start(&self, id: ShardId, group: GroupId) -> Result<Shard, LaunchError> {
        let f = &self.inner;
        let mut running = lock(&f.running);
        let port = self.free_port(&running)?;
        let bind = std::net::SocketAddr::new(f.shards.listen_ip, port);
        let store = Arc::new(SessionStore::new(f.store_entries, f.store_ttl));
        let configs = ConnConfigs::new(
            f.crypto.clone(),
            f.transport.clone(),
            f.token_key.clone(),
            store,
        )
        .with_guard(f.handshakes);
        let (hub_end, shard_end) = crate::link::channel::pair();
        let s = &f.shards;
        let (endpoint_config, lb) = match f.lb.as_ref().map(crate::lb::LbPlan::current) {
            Some(c) => {
                let h = crate::lb::LbHandle::new(c.cid_len());
                let sid = crate::lb::server_id_bytes(id.0, c.server_id_len());
                // The hub's `lb` command on the link installs rotations later.
                h.set(c, sid).map_err(|e| LaunchError::Start {
                    shard: id,
                    source: Box::new(ClusterError::Lb(e)),
                })?;
                (crate::lb::with_cids(f.endpoint_config.clone(), &h), Some(h))
            }
            None => (f.endpoint_config.clone(), None),
        };
        let shard = Shard::start(ShardParams {
            id,
            group,
            bind,
            advertise: None,
            socket_buffer: s.socket_buffer_bytes,
            configs,
            endpoint_config,
            // Only its group's keys, from the hub over the link (the first command).
            admission: Admission::new(id, group, Arc::new(TokenKeys::held(group)), s.replay_cache),
            streams: f.streams,
            heartbeat_interval: f.heartbeat,
            attach_timeout: s.attach_timeout,
            max_sessions: u64::from(s.max_sessions),
            uplink: shard_end.up.clone(),
            replica: f.mirror_identity.clone().map(|identity| {
                crate::shard::replica::ReplicaParams {
                    listen: std::net::SocketAddr::new(f.shards.listen_ip, 0),
                    advertise_ip: None,
                    identity,
                }
            }),
            lb,
        })
        .map_err(|source| LaunchError::Start {
            shard: id,
            source: Box::new(ClusterError::Bind {
                what: format!("shard {}", id.0),
                addr: bind,
                source,
            }),
        })?;
        // The registration goes first on the fresh link, so the hub places on the shard as
        // soon as it takes the link.
        shard_end
            .up
            .report(crate::shard::agent::registration(&shard));
        if let Err(e) = f.links.accept(hub_end) {
            // The hub refused it (an id already registered): nothing may run unlisted.
            shard.kill();
            return Err(LaunchError::Start {
                shard: id,
                source: Box::new(e),
            });
        }
        crate::shard::agent::spawn(shard.clone(), shard_end, true);
        let port = shard.addr().port();
        running.insert(
            id,
            Running {
                shard: shard.clone(),
                port,
            },
        );
        Ok(shard)
    }

    /// The embedded shard `id`, while it runs (or until reaped).
    pub fn shard(&self, id: ShardId) -> Option<Shard> {
        lock(&self.inner.running).get(&id).map(|r| r.shard.clone())
    }

    /// Every embedded shard not yet reaped, by id.
    pub fn shards(&self) -> Vec<Shard> {
        lock(&self.inner.running)
            .values()
            .map(|r| r.shard.clone())
            .collect()
    }
}

impl Launcher for EmbeddedLauncher {
    fn launch(&self, id: ShardId, group: GroupId) -> Result<(), LaunchError> {
        self.start(id, group).map(|_| ())
    }

    fn reap(&self, id: ShardId) {
        if let Some(r) = lock(&self.inner.running).remove(&id) {
            if r.shard.is_alive() {
                r.shard.kill();
            }
        }
    }
}
