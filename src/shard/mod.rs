//! A shard: a QUIC listener with its own UDP socket that admits clients holding a valid token
//! and serves them sequenced streams.
//!
//! Per connection: the first bidirectional stream must carry an [`Attach`] as its first frame
//! (normally in 0-RTT data). [`Admission`] decides on it before the shard allocates a session;
//! a refusal closes the connection with its own [`ErrorCode`] and is counted. An admitted session
//! then takes `subscribe`, `bind`, `publish`, chunks and heartbeats on that stream; `publish`
//! requires a prior `bind` (the session secret bound to this connection's TLS exporter).
//!
//! The decisions (admission, cursor positions) live in [`admission`] and [`streams`]; this file
//! is the driver that moves bytes between them and quinn.

pub mod admission;
pub mod agent;
mod conn;
pub mod cpu;
pub mod replica;
pub mod session;
pub mod streams;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::ids::{GroupId, ShardId, StreamName};
use crate::link::channel::Uplink;
use crate::link::ShardLoad;
use crate::metrics_hist::{CodeCounters, Histogram};
use crate::sync::lock;
use crate::tickets::conn::ConnConfigs;
use crate::tickets::SessionStore;
use crate::wire::{ErrorCode, GoAway};
pub use admission::Admission;
use streams::{StreamRegistry, StreamSettings};

pub use crate::unix_us;

/// What a shard counts. Tests read these to prove that refusals allocate nothing.
#[derive(Debug, Default)]
pub struct ShardCounters {
    /// Sessions open now.
    pub sessions: AtomicU64,
    /// Sessions ever admitted (each one an allocation).
    pub allocations: AtomicU64,
    /// Admitted attaches that arrived in 0-RTT data.
    pub zero_rtt_attaches: AtomicU64,
    pub chunks_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub chunks_published: AtomicU64,
    pub gaps_sent: AtomicU64,
    /// Sessions admitted from 0-RTT data whose handshake never completed (a copied first
    /// flight, or a client gone mid-handshake): never committed, never reported.
    pub provisional_expired: AtomicU64,
    /// Nanoseconds of CPU time the shard's tasks used (see [`cpu`]).
    pub cpu_ns: Arc<AtomicU64>,
    /// Sum of the expected bitrates (token `expect_kbps`) of the sessions open now.
    pub committed_kbps: AtomicU64,
    /// Datagrams whose header does not parse (see [`crate::net::Screen`]), dropped by quinn.
    pub malformed: Arc<AtomicU64>,
    /// Connections whose handshake resumed a stored session, so that rustls took their early
    /// data (counted when the first stream arrives, admitted or not).
    pub zero_rtt_accepted: AtomicU64,
    /// Connection accepted → attach admitted.
    pub attach_seconds: Histogram,
    /// Attach admitted → first chunk written to the subscriber.
    pub first_chunk_seconds: Histogram,
    rejections: CodeCounters,
}

impl ShardCounters {
    pub fn reject(&self, code: ErrorCode) {
        self.rejections.count(code);
    }

    /// Connections closed with `code` (before or after admission).
    pub fn rejections(&self, code: ErrorCode) -> u64 {
        self.rejections.of(code)
    }

    pub fn total_rejections(&self) -> u64 {
        self.rejections.total()
    }
}

pub use crate::link::SessionOutcome;

/// Everything a shard needs to start.
pub struct ShardParams {
    pub id: ShardId,
    pub group: GroupId,
    pub bind: SocketAddr,
    /// Where clients reach the shard when that is not the bound address (NAT, a balancer, an
    /// unspecified bind address); registered with the hub.
    pub advertise: Option<SocketAddr>,
    pub socket_buffer: usize,
    /// One server configuration per connection, over the shard's own session store.
    pub configs: ConnConfigs,
    pub endpoint_config: quinn::EndpointConfig,
    pub admission: Admission,
    pub streams: StreamSettings,
    pub heartbeat_interval: Duration,
    pub attach_timeout: Duration,
    pub max_sessions: u64,
    /// The shard's end of its link to the hub: session outcomes and store entries go there.
    pub uplink: Uplink,
    /// Mirroring of live streams within the group (none: a live stream dies with its shard).
    pub replica: Option<replica::ReplicaParams>,
    /// Behind a QUIC-LB balancer: the handle of the endpoint's connection-id generator (the
    /// hub's `lb` command installs the configuration).
    pub lb: Option<crate::lb::LbHandle>,
}

struct ShardState {
    id: ShardId,
    group: GroupId,
    admission: Mutex<Admission>,
    registry: Arc<StreamRegistry>,
    replication: Option<Arc<replica::Replication>>,
    lb: Option<crate::lb::LbHandle>,
    counters: Arc<ShardCounters>,
    heartbeat: Duration,
    attach_timeout: Duration,
    max_sessions: u64,
    go_away: watch::Sender<Option<GoAway>>,
    alive: AtomicBool,
    /// True once the shard stopped (drained or killed).
    stopped: watch::Sender<bool>,
    configs: ConnConfigs,
    uplink: Uplink,
    /// Notified when the session count moves (the agent reports load at once).
    load_changed: Notify,
}

/// A running shard. Cheap to clone.
#[derive(Clone)]
pub struct Shard {
    state: Arc<ShardState>,
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    advertised: SocketAddr,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("id", &self.state.id)
            .field("group", &self.state.group)
            .field("addr", &self.addr)
            .finish()
    }
}

impl Shard {
    /// Binds the shard's socket and starts serving.
    pub fn start(p: ShardParams) -> std::io::Result<Shard> {
        let counters = Arc::new(ShardCounters::default());
        let screen = crate::net::Screen {
            // quinn's own generator issues 8-octet CIDs.
            cid_len: p.lb.as_ref().map_or(8, crate::lb::LbHandle::cid_len),
            malformed: counters.malformed.clone(),
        };
        let (endpoint, addr) =
            p.configs
                .bind(p.bind, p.socket_buffer, p.endpoint_config, Some(screen))?;
        let registry = Arc::new(StreamRegistry::new(p.streams));
        let (replication, mut tasks) = match p.replica {
            Some(r) => {
                let (repl, tasks) = replica::Replication::start(p.id, r, registry.clone())
                    .map_err(|e| std::io::Error::other(format!("mirror receiver: {e}")))?;
                (Some(repl), tasks)
            }
            None => (None, Vec::new()),
        };
        let state = Arc::new(ShardState {
            id: p.id,
            group: p.group,
            admission: Mutex::new(p.admission),
            registry,
            replication,
            lb: p.lb,
            counters,
            heartbeat: p.heartbeat_interval,
            attach_timeout: p.attach_timeout,
            max_sessions: p.max_sessions,
            go_away: watch::channel(None).0,
            alive: AtomicBool::new(true),
            stopped: watch::channel(false).0,
            configs: p.configs,
            uplink: p.uplink,
            load_changed: Notify::new(),
        });
        let span = info_span!("shard", id = p.id.0, group = p.group.0, %addr);
        let cpu = state.counters.cpu_ns.clone();
        let accept = tokio::spawn(cpu::Metered::new(
            accept_loop(state.clone(), endpoint.clone()).instrument(span.clone()),
            cpu.clone(),
        ));
        let period = Duration::from_micros(p.streams.synthetic.period_us());
        let ticker = tokio::spawn(cpu::Metered::new(
            tick_loop(state.clone(), period).instrument(span),
            cpu,
        ));
        let mirror = state.replication.as_ref().map(|r| r.receiver_addr());
        info!(shard = p.id.0, group = p.group.0, %addr, mirror = mirror.map(display), "shard listening");
        tasks.extend([accept, ticker]);
        Ok(Shard {
            state,
            endpoint,
            addr,
            advertised: p.advertise.unwrap_or(addr),
            tasks: Arc::new(Mutex::new(tasks)),
        })
    }

    pub fn id(&self) -> ShardId {
        self.state.id
    }
    pub fn group(&self) -> GroupId {
        self.state.group
    }
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// Where clients reach the shard (the bound address unless told otherwise).
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }
    pub fn counters(&self) -> &Arc<ShardCounters> {
        &self.state.counters
    }
    pub fn is_alive(&self) -> bool {
        self.state.alive.load(Ordering::Relaxed)
    }
    /// Most sessions this shard admits.
    pub fn capacity(&self) -> u64 {
        self.state.max_sessions
    }
    pub fn streams(&self) -> usize {
        self.state.registry.len()
    }

    /// The shard's mirror receiver for standby copies of live streams.
    pub fn mirror_addr(&self) -> Option<SocketAddr> {
        self.state.replication.as_ref().map(|r| r.receiver_addr())
    }

    /// The hub's QUIC-LB configuration for this shard (its `lb` command): new connection IDs
    /// carry the server id from now on.
    pub fn install_lb(&self, params: &crate::lb::LbParams) -> Result<(), crate::lb::LbError> {
        let Some(h) = &self.state.lb else {
            return Err(crate::lb::LbError::NotEnabled);
        };
        let config = Arc::new(params.config()?);
        h.set(config, params.server_id.to_vec())
    }

    /// A connection ID as this shard issues them now (routable once QUIC-LB is configured;
    /// none without QUIC-LB).
    pub fn sample_cid(&self) -> Option<Vec<u8>> {
        self.state.lb.as_ref().map(crate::lb::LbHandle::cid)
    }

    /// The hub's list of the group's peers (its `peers` command).
    pub fn set_peers(&self, peers: crate::link::GroupPeers) {
        if let Some(r) = &self.state.replication {
            r.set_peers(peers);
        }
    }

    /// The live streams this shard holds and their replication (the `replicas` report).
    pub fn replica_reports(&self) -> Vec<crate::link::ReplicaReport> {
        self.state
            .replication
            .as_ref()
            .map(|r| r.reports())
            .unwrap_or_default()
    }

    /// A cursor on `stream` of this shard, from `from` (or from the newest chunk), as a
    /// subscriber gets it; the admin API's mirrors read their source this way. Creates the
    /// stream if needed; it lives as long as a cursor holds it.
    pub fn subscribe(&self, stream: &StreamName, from: Option<crate::ids::Seq>) -> streams::Cursor {
        self.state.registry.subscribe(stream, from, unix_us())
    }

    /// The shard's load now, as its agent reports it to the hub.
    pub fn load(&self) -> ShardLoad {
        let c = &self.state.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ticket_misses = l(&self.store().stats.misses);
        let zero_rtt_accepted = l(&c.zero_rtt_accepted);
        ShardLoad {
            sessions: l(&c.sessions),
            streams: self.state.registry.len() as u64,
            committed_kbps: l(&c.committed_kbps),
            buffer_bytes: self.state.registry.buffered_bytes(),
            bytes_sent: l(&c.bytes_sent),
            chunks_sent: l(&c.chunks_sent),
            cpu_ns: l(&c.cpu_ns),
            allocations: l(&c.allocations),
            zero_rtt_attaches: l(&c.zero_rtt_attaches),
            rejections: c.total_rejections(),
            reports_dropped: self.state.uplink.dropped(),
            ticket_misses,
            promotions: self
                .state
                .replication
                .as_ref()
                .map_or(0, |r| r.promotions()),
            misrouted: self
                .state
                .lb
                .as_ref()
                .map_or(0, crate::lb::LbHandle::foreign),
            malformed: l(&c.malformed),
            // A ticket the store did not hold is early data rustls refused (the shard's
            // tickets all allow early data, and the client offers it with every one).
            zero_rtt_attempted: zero_rtt_accepted.saturating_add(ticket_misses),
            zero_rtt_accepted,
            rejected: c.rejections.snapshot(),
            attach_seconds: c.attach_seconds.snapshot(),
            first_chunk_seconds: c.first_chunk_seconds.snapshot(),
        }
    }

    /// Replaces the token keys this shard opens tokens with (the hub's `keys` command).
    pub fn install_keys(
        &self,
        keys: &crate::link::GroupKeys,
    ) -> Result<(), crate::security::token::TokenError> {
        let tokens = lock(&self.state.admission).tokens().clone();
        tokens.install(keys)
    }

    /// The shard's own session store.
    pub fn store(&self) -> &Arc<SessionStore> {
        self.state.configs.store()
    }

    /// Resolves when the session count moved since the last call.
    pub async fn load_changed(&self) {
        self.state.load_changed.notified().await;
    }

    /// Becomes true when the shard stops.
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.state.stopped.subscribe()
    }

    /// Starts producing `stream` ahead of the first attach (the hub calls this when it grants).
    pub fn warm(&self, stream: &StreamName) {
        self.state.registry.warm(stream, unix_us(), 10_000_000);
    }

    /// Graceful stop: go-away to every session, `grace` to move, then close.
    pub async fn drain(&self, grace: Duration) {
        self.state.alive.store(false, Ordering::Relaxed);
        let _ = self.state.go_away.send(Some(GoAway {
            code: ErrorCode::GoingAway.as_u32(),
            grace_ms: grace.as_millis() as u64,
        }));
        let idle = self.endpoint.wait_idle();
        tokio::pin!(idle);
        // Clients leave on the go-away; wait for that, at most `grace`.
        let idle_now = self.state.counters.sessions.load(Ordering::Relaxed) == 0
            || tokio::time::timeout(grace, &mut idle).await.is_ok();
        self.stop(ErrorCode::GoingAway);
        if !idle_now {
            // Give the close frames a moment to go out.
            let _ = tokio::time::timeout(Duration::from_secs(1), idle).await;
        }
        // Every session task reports its outcome before it lets go of its slot: wait (bounded)
        // for them, so the reports go out before the agent says `drained`.
        for _ in 0..100 {
            if self.state.counters.sessions.load(Ordering::Relaxed) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Abrupt stop, as a crash would look to clients that are told: every connection closed
    /// with `ShardStopped`, no go-away, no grace.
    pub fn kill(&self) {
        warn!(shard = self.state.id.0, "shard killed");
        self.state.alive.store(false, Ordering::Relaxed);
        self.stop(ErrorCode::ShardStopped);
    }

    fn stop(&self, code: ErrorCode) {
        self.endpoint.close(code.varint(), code.reason().as_bytes());
        if let Some(r) = &self.state.replication {
            r.stop();
        }
        self.state.stopped.send_replace(true);
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

async fn tick_loop(state: Arc<ShardState>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        if state.registry.is_empty() {
            state.registry.wait_for_stream().await;
            // Chunks are produced by wall clock, so nothing is owed for the idle time.
            tick.reset_immediately();
        }
        tick.tick().await;
        state.registry.tick(unix_us());
    }
}

async fn accept_loop(state: Arc<ShardState>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some((incoming, permit)) = crate::guard::screen(state.configs.guard(), incoming) else {
            continue;
        };
        // Behind a QUIC-LB balancer a first packet carries a routing CID of this shard; one
        // of another shard's was misrouted (counted; served all the same).
        if let Some(lb) = &state.lb {
            if !lb.routes_here(&incoming.orig_dst_cid()) {
                lb.note_foreign();
            }
        }
        let state = state.clone();
        let span = info_span!("conn", remote = %incoming.remote_address());
        // Boxed: the task keeps what it captures for as long as the connection lives.
        let incoming = Box::new(incoming);
        let cpu = state.counters.cpu_ns.clone();
        tokio::spawn(cpu::Metered::new(
            async move {
                if let Err(e) = conn::serve(state, incoming, permit).await {
                    debug!(error = %e, "connection ended");
                }
            }
            .instrument(span),
            cpu,
        ));
    }
}

/// Sessions a shard of `capacity` admits for a client of `priority`: the top tenth of the
/// quota (rounded down, so none on shards under 10 sessions) is kept for high-priority clients,
/// and low-priority ones stop a tenth earlier still. A shard near its quota so admits the
/// clients the hub prioritized first; the hub's placement uses the same limits.
pub fn admit_limit(capacity: u64, priority: crate::security::token::Priority) -> u64 {
    use crate::security::token::Priority;
    let reserve = capacity / 10;
    match priority {
        Priority::High => capacity,
        Priority::Normal => capacity - reserve,
        Priority::Low => capacity - 2 * reserve,
    }
}
