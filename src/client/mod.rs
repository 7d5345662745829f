//! The client library: request a grant from the hub, attach to a shard with 0-RTT, receive a
//! stream in order with automatic resume, publish.
//!
//! A [`Client`] owns one QUIC endpoint and one `Arc<rustls::ClientConfig>` for all its
//! connections: rustls only uses a ticket for 0-RTT with the configuration that received it,
//! so a client that rebuilt its configuration would silently lose 0-RTT.
//!
//! [`Client::subscribe`] returns a [`Subscription`] whose driver task keeps the stream going: if
//! the shard connection dies (closed, go-away, silent for four heartbeat intervals) it attaches
//! to the next shard of the grant and resumes from the sequence after the last one delivered —
//! duplicates are dropped and counted, gaps are delivered as [`Delivery::Gap`] and counted. When
//! every shard of the grant failed, it asks the hub for a new grant.

mod failover;
mod publish;
mod seq;
mod session;

pub(crate) use seq::SeqTracker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use crate::ids::{ClientId, Seq, StreamName};
use crate::wire::{
    write_control, Chunk, ErrorCode, Frame, FrameReader, Grant, Hints, Message, Role,
    StreamRequest, WireError,
};

pub use publish::Publisher;

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::security::tls::TlsError),
    #[error("cannot open a UDP socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("refused: {code}: {reason}")]
    Refused { code: ErrorCode, reason: String },
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("cannot write to the peer: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("no answer from {addr} within {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("gave up after {attempts} attach attempts; last error: {last}")]
    Exhausted { attempts: u32, last: String },
    /// The shards sent go-away and the hub gave no new grant: the cluster is shutting down
    /// (or draining every shard of the group at once).
    #[error("the cluster is shutting down: the shards sent go-away and the hub {hub} gave no new grant ({last})")]
    ClusterDraining { hub: SocketAddr, last: String },
    #[error("the publisher stopped")]
    PublisherStopped,
    /// The publisher sent a chunk at [`Seq::LAST`]; no chunk may follow it.
    #[error("the publisher used the last sequence number")]
    SeqExhausted,
}

impl ClientError {
    /// The shoal code the peer refused or closed with, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// What a peer sent that the protocol does not allow.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("expected {expected}, got {got}")]
    Unexpected {
        expected: &'static str,
        got: &'static str,
    },
    #[error("the grant has no shards or a session secret of the wrong size")]
    BadGrant,
    #[error("the grant has no shard {0}")]
    NoSuchShard(usize),
    #[error("bad shard address {0:?}")]
    BadShardAddr(String),
    #[error("the shard ended the stream")]
    StreamEnded,
    #[error("no TLS exporter on the connection")]
    NoExporter,
    #[error("the system has no randomness")]
    NoRandomness,
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Protocol(ProtocolError::Wire(e))
    }
}

/// What a frame is, for an [`ProtocolError::Unexpected`].
pub(crate) fn kind_of(frame: &Option<Frame>) -> &'static str {
    frame.as_ref().map_or("end of stream", Frame::kind)
}

/// How a client connects and behaves.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// TLS server name of hub and shards (the cluster name).
    pub cluster: String,
    /// Certificates the client trusts.
    pub ca: Vec<CertificateDer<'static>>,
    pub client_id: ClientId,
    pub hints: Hints,
    /// Local address of the client's socket.
    pub bind: SocketAddr,
    pub idle_timeout: Duration,
    /// Heartbeat interval; a shard silent for four intervals is considered dead.
    pub heartbeat_interval: Duration,
    /// Time limit for a grant request and for an attach answer.
    pub request_timeout: Duration,
    /// Attach attempts after failures before a subscription gives up (reset by progress).
    pub max_failovers: u32,
    /// Chunks buffered between the driver and the application.
    pub channel_capacity: usize,
    /// Whether subscriptions keep a second session on the next shard of their grant
    /// (make-before-break); see [`StandbyMode`].
    pub standby: StandbyMode,
}

/// A subscription's second session, on the next shard of its grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StandbyMode {
    /// None: a failover attaches anew (a handshake, 0-RTT when a ticket is held).
    #[default]
    Off,
    /// Attached but not subscribed (heartbeats only): a failover is one `subscribe` on the
    /// open connection. Costs one idle session per subscription.
    Warm,
    /// Attached *and* subscribed: both sessions deliver, the client keeps each sequence once,
    /// so a live stream goes on as soon as any copy has new chunks, without waiting for the
    /// client to notice its shard died. Costs the stream's bandwidth twice.
    Hot,
}

impl ClientOptions {
    pub fn new(
        cluster: impl Into<String>,
        ca: Vec<CertificateDer<'static>>,
        client_id: ClientId,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            ca,
            client_id,
            hints: Hints::default(),
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            idle_timeout: Duration::from_secs(30),
            heartbeat_interval: Duration::from_millis(500),
            request_timeout: Duration::from_secs(5),
            max_failovers: 8,
            channel_capacity: 1024,
            standby: StandbyMode::Off,
        }
    }
}

/// A grant and the chunks that came with it.
#[derive(Debug, Clone)]
pub struct GrantReply {
    pub grant: Grant,
    pub first_chunks: Vec<Chunk>,
}

/// Counters of one subscription or publisher. Read them with [`Stats::snapshot`].
#[derive(Debug, Default)]
pub struct Stats {
    pub grants: AtomicU64,
    pub attaches: AtomicU64,
    pub zero_rtt_attempted: AtomicU64,
    pub zero_rtt_accepted: AtomicU64,
    /// Attaches made with a full handshake because no ticket was available.
    pub full_handshakes: AtomicU64,
    /// Re-attaches after a failure (each one resumes from the last sequence).
    pub resumes: AtomicU64,
    pub chunks: AtomicU64,
    /// Chunks that never arrived (reported gaps and unexpected jumps).
    pub missing: AtomicU64,
    /// Chunks that arrived twice and were dropped.
    pub duplicates: AtomicU64,
    /// Microseconds from `subscribe` to the first chunk; 0 until then.
    pub ttfb_us: AtomicU64,
    /// Microseconds the first grant request took (0 for a grant obtained elsewhere).
    pub grant_us: AtomicU64,
    /// Microseconds from opening the first admitted shard connection to `attached`.
    pub attach_us: AtomicU64,
    /// 0 until the publisher finished the stream; then 1 + its last sequence + 1 (1: it
    /// published nothing).
    ended: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub grants: u64,
    pub attaches: u64,
    pub zero_rtt_attempted: u64,
    pub zero_rtt_accepted: u64,
    pub full_handshakes: u64,
    pub resumes: u64,
    pub chunks: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub ttfb_us: u64,
    pub grant_us: u64,
    pub attach_us: u64,
    /// The publisher finished the stream (a `stream_end`): the subscription is complete.
    pub ended: bool,
    /// The last sequence it published, when it ended.
    pub ended_after_seq: Option<u64>,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            grants: l(&self.grants),
            attaches: l(&self.attaches),
            zero_rtt_attempted: l(&self.zero_rtt_attempted),
            zero_rtt_accepted: l(&self.zero_rtt_accepted),
            full_handshakes: l(&self.full_handshakes),
            resumes: l(&self.resumes),
            chunks: l(&self.chunks),
            missing: l(&self.missing),
            duplicates: l(&self.duplicates),
            ttfb_us: l(&self.ttfb_us),
            grant_us: l(&self.grant_us),
            attach_us: l(&self.attach_us),
            ended: l(&self.ended) > 0,
            ended_after_seq: l(&self.ended).checked_sub(2),
        }
    }

    /// The publisher finished after `last`.
    pub(crate) fn mark_ended(&self, last: Option<Seq>) {
        let v = last.map_or(1, |s| s.get().saturating_add(2));
        self.ended.store(v, Ordering::Relaxed);
    }

    pub(crate) fn inc(a: &AtomicU64) {
        a.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets `a` to the microseconds elapsed since `since`, unless it is set already.
    pub(crate) fn mark_once(a: &AtomicU64, since: Instant) {
        let us = crate::clock::since(since).as_micros().max(1) as u64;
        let _ = a.compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What a subscription delivers, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Chunk(Chunk),
    /// Chunks `from..to` were not delivered and never will be.
    Gap {
        from: Seq,
        to: Seq,
    },
}

/// A client of a shoal cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) endpoint: quinn::Endpoint,
    /// Shard connections; the hub's has no path-MTU discovery (`tls::hub_transport_config`).
    pub(crate) quic: quinn::ClientConfig,
    hub_quic: quinn::ClientConfig,
    /// Routing CIDs used so far, per shard of the newest grants (each used once, in turn).
    pub(crate) route_turn: std::sync::atomic::AtomicUsize,
    pub(crate) hub: SocketAddr,
    pub(crate) opts: ClientOptions,
    hub_conn: tokio::sync::Mutex<Option<HubConn>>,
}

/// The client's connection to the hub; `early` while requests on it may ride in 0-RTT.
#[derive(Clone)]
struct HubConn {
    conn: quinn::Connection,
    early: bool,
}

impl Client {
    /// A client of the hub at `hub`. Binds its UDP socket now.
    pub fn new(hub: SocketAddr, opts: ClientOptions) -> Result<Client, ClientError> {
        let crypto = crate::security::tls::client_crypto(&opts.ca)?;
        let hub_quic = crate::security::tls::hub_client_config(crypto.clone(), opts.idle_timeout)?;
        let quic = crate::security::tls::client_config(crypto, opts.idle_timeout)?;
        let bind = match (hub, opts.bind) {
            (SocketAddr::V6(_), SocketAddr::V4(b)) if b.ip().is_unspecified() => {
                SocketAddr::from(([0u16; 8], b.port()))
            }
            (_, b) => b,
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(quic.clone());
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                quic,
                hub_quic,
                route_turn: std::sync::atomic::AtomicUsize::new(0),
                hub,
                opts,
                hub_conn: tokio::sync::Mutex::new(None),
            }),
        })
    }

    /// The client's QUIC endpoint (for example to `rebind` it).
    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.inner.endpoint
    }

    /// Asks the hub for a grant.
    pub async fn request(
        &self,
        stream: &StreamName,
        role: Role,
    ) -> Result<GrantReply, ClientError> {
        self.inner.request(stream, role).await
    }

    /// Subscribes to `stream`: grant, 0-RTT attach, then chunks in order until dropped.
    pub async fn subscribe(&self, stream: &StreamName) -> Result<Subscription, ClientError> {
        let started = crate::clock::now();
        let reply = self.inner.request(stream, Role::Subscribe).await?;
        let sub = self.subscribe_from(stream, reply, started);
        Stats::mark_once(&sub.stats.grant_us, started);
        Ok(sub)
    }

    /// Subscribes with a grant obtained earlier (for example by a backend that asked the hub
    /// on the client's behalf). The client still needs tickets from the hub for 0-RTT.
    pub fn subscribe_with_grant(&self, stream: &StreamName, reply: GrantReply) -> Subscription {
        self.subscribe_from(stream, reply, crate::clock::now())
    }

    fn subscribe_from(
        &self,
        stream: &StreamName,
        reply: GrantReply,
        started: Instant,
    ) -> Subscription {
        let stats = Arc::new(Stats::default());
        Stats::inc(&stats.grants);
        let (tx, rx) = mpsc::channel(self.inner.opts.channel_capacity.max(1));
        let task = tokio::spawn(session::run_subscription(
            self.inner.clone(),
            stream.clone(),
            reply,
            tx,
            stats.clone(),
            started,
        ));
        Subscription {
            rx,
            stats,
            task: Some(task),
        }
    }

    /// Opens a publisher for the live stream `stream`.
    pub async fn publish(&self, stream: &StreamName) -> Result<Publisher, ClientError> {
        Publisher::open(self.inner.clone(), stream.clone()).await
    }

    /// Attaches to shard `rank` of a grant and keeps the session idle (answering heartbeats)
    /// until the returned [`ShardSession`] is closed or dropped. For tools that measure or
    /// hold attaches; applications subscribe or publish instead.
    pub async fn attach(
        &self,
        reply: &GrantReply,
        rank: usize,
    ) -> Result<ShardSession, ClientError> {
        let grant = &reply.grant;
        let shard = grant
            .shards
            .get(rank)
            .ok_or(ProtocolError::NoSuchShard(rank))?;
        let stats = Stats::default();
        let started = crate::clock::now();
        let a = session::attach(&self.inner, grant, shard, None, &stats).await?;
        let latency = crate::clock::since(started);
        let conn = a.conn.clone();
        let load_permille = a.attached.load_permille;
        let task = tokio::spawn(session::keep_idle(a, self.inner.opts.heartbeat_interval));
        Ok(ShardSession {
            conn,
            shard: shard.id,
            zero_rtt: stats.zero_rtt_accepted.load(Ordering::Relaxed) > 0,
            latency,
            load_permille,
            task,
        })
    }

    /// Races attaches to the first `n` shards of a grant at once (each with its own
    /// shard-bound proof), waits for every one to answer or fail — no connection attempt is
    /// dropped half-way — keeps the best as primary and the next as a warm standby (both
    /// heartbeating), and closes the others cleanly. "Best" weighs the attach round trip by
    /// the load the shard reported: `latency × (1 + load)`.
    pub async fn race(&self, reply: &GrantReply, n: usize) -> Result<Race, ClientError> {
        let n = n.clamp(1, reply.grant.shards.len().max(1));
        let mut set = tokio::task::JoinSet::new();
        for rank in 0..n {
            let (client, reply) = (self.clone(), reply.clone());
            set.spawn(async move { (rank, client.attach(&reply, rank).await) });
        }
        let mut won = Vec::new();
        let mut failed = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok((_, Ok(s))) => won.push(s),
                Ok((rank, Err(e))) => failed.push((rank, e.to_string())),
                Err(e) => failed.push((usize::MAX, e.to_string())),
            }
        }
        let score = |s: &ShardSession| {
            let load = f64::from(s.load_permille.unwrap_or(0)) / 1000.0;
            s.latency.as_secs_f64() * (1.0 + load)
        };
        won.sort_by(|a, b| score(a).total_cmp(&score(b)));
        let probes = won
            .iter()
            .map(|s| RaceProbe {
                shard: s.shard,
                latency: s.latency,
                load_permille: s.load_permille,
            })
            .collect();
        let mut it = won.into_iter();
        let primary = it.next().ok_or_else(|| ClientError::Exhausted {
            attempts: n as u32,
            last: failed.last().map_or_else(String::new, |f| f.1.clone()),
        })?;
        let standby = it.next();
        // The rest: closed now, cleanly (each finished its handshake).
        let closed = it.map(ShardSession::close).count();
        Ok(Race {
            primary,
            standby,
            probes,
            closed,
            failed,
        })
    }

    /// Closes the connection to the hub, keeping the endpoint and its TLS tickets: the next
    /// request reconnects, with 0-RTT when the client holds a ticket (a *returning* client).
    pub async fn disconnect(&self) {
        if let Some(c) = self.inner.hub_conn.lock().await.take() {
            c.conn.close(ErrorCode::NoError.varint(), b"");
        }
    }

    /// Closes every connection of this client.
    pub async fn close(&self) {
        self.inner
            .endpoint
            .close(ErrorCode::NoError.varint(), b"client closed");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

impl Inner {
    /// The open hub connection, or a new one. A new connection with a ticket is returned at
    /// once, before its handshake completes, so the request rides in 0-RTT.
    async fn hub_connection(&self) -> Result<HubConn, ClientError> {
        let mut slot = self.hub_conn.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.conn.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        let connecting = self
            .endpoint
            .connect_with(self.hub_quic.clone(), self.hub, &self.opts.cluster)
            .map_err(|source| ClientError::Connect {
                addr: self.hub,
                source,
            })?;
        let hc = match connecting.into_0rtt() {
            Ok((conn, _accepted)) => HubConn { conn, early: true },
            Err(connecting) => {
                let conn = tokio::time::timeout(self.opts.request_timeout, connecting)
                    .await
                    .map_err(|_| ClientError::Timeout {
                        addr: self.hub,
                        after: self.opts.request_timeout,
                    })?
                    .map_err(refused_or_lost)?;
                HubConn { conn, early: false }
            }
        };
        *slot = Some(hc.clone());
        Ok(hc)
    }

    pub(crate) async fn request(
        &self,
        stream: &StreamName,
        role: Role,
    ) -> Result<GrantReply, ClientError> {
        let timeout = self.opts.request_timeout;
        let work = async {
            // A hub whose handshake guard refuses the connection (CONNECTION_REFUSED, its
            // per-address limits) is asked again after a short backoff, a few times, within
            // the request timeout.
            let mut backoff = Duration::from_millis(50);
            for _ in 0..HUB_REFUSED_RETRIES {
                match self.request_once(stream, role).await {
                    Err(ClientError::Connection(e)) if guard_refused(&e) => {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                    r => return r,
                }
            }
            self.request_once(stream, role).await
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.hub,
                after: timeout,
            })?
    }

    async fn request_once(
        &self,
        stream: &StreamName,
        role: Role,
    ) -> Result<GrantReply, ClientError> {
        let hc = self.hub_connection().await?;
        match self.request_on(&hc.conn, stream, role).await {
            // A request sent in 0-RTT is lost when the hub refuses early data (its stream
            // fails); send it again, now over the completed handshake.
            Err(ClientError::Protocol(_) | ClientError::Write(_))
                if hc.early && hc.conn.close_reason().is_none() =>
            {
                self.request_on(&hc.conn, stream, role).await
            }
            r => r,
        }
    }

    async fn request_on(
        &self,
        conn: &quinn::Connection,
        stream: &StreamName,
        role: Role,
    ) -> Result<GrantReply, ClientError> {
        let (mut send, recv) = conn.open_bi().await.map_err(refused_or_lost)?;
        let req = Message::StreamRequest(StreamRequest {
            client_id: self.opts.client_id.clone(),
            stream: stream.clone(),
            role,
            hints: self.opts.hints.clone(),
        });
        write_control(&mut send, &req)
            .await
            .map_err(|e| closed_or(conn, e.into()))?;
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let grant = match reader.next().await {
            Ok(Some(Frame::Control(Message::Grant(g)))) => g,
            Ok(Some(Frame::Control(Message::Reject(r)))) => {
                return Err(ClientError::Refused {
                    code: ErrorCode::from_u32(r.code).unwrap_or(ErrorCode::Internal),
                    reason: r.reason,
                })
            }
            Ok(other) => {
                let got = kind_of(&other);
                return Err(ProtocolError::Unexpected {
                    expected: "a grant",
                    got,
                }
                .into());
            }
            Err(e) => return Err(closed_or(conn, e.into())),
        };
        if grant.shards.is_empty()
            || grant.session_secret.len() != crate::security::proof::SECRET_LEN
        {
            return Err(ProtocolError::BadGrant.into());
        }
        let mut first_chunks = Vec::new();
        while let Ok(Some(Frame::Chunk(c))) = reader.next().await {
            first_chunks.push(c);
        }
        Ok(GrantReply {
            grant,
            first_chunks,
        })
    }
}

/// The connection's close reason if it has one (more telling than a stream error).
pub(crate) fn closed_or(conn: &quinn::Connection, e: ClientError) -> ClientError {
    match conn.close_reason() {
        Some(reason) => refused_or_lost(reason),
        None => e,
    }
}

/// [`closed_or`] after the stream ended: the shard finishes its stream and then closes with its
/// code, so the close is given a moment (250 ms) to arrive and say why.
pub(crate) async fn ended_or(conn: &quinn::Connection, e: ClientError) -> ClientError {
    let _ = tokio::time::timeout(Duration::from_millis(250), conn.closed()).await;
    closed_or(conn, e)
}

/// Times a request is sent again after the hub's guard refused its connection.
const HUB_REFUSED_RETRIES: usize = 4;

/// Whether a connection was refused by the peer's handshake guard (PROTOCOL §1).
fn guard_refused(e: &quinn::ConnectionError) -> bool {
    matches!(e, quinn::ConnectionError::ConnectionClosed(c)
        if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED)
}

pub(crate) fn refused_or_lost(err: quinn::ConnectionError) -> ClientError {
    match ErrorCode::of_close(&err) {
        Some(code) if code != ErrorCode::NoError => ClientError::Refused {
            code,
            reason: code.reason().to_string(),
        },
        _ => ClientError::Connection(err),
    }
}

/// A stream being received. Dropping it ends the subscription and closes its connection.
pub struct Subscription {
    rx: mpsc::Receiver<Result<Delivery, ClientError>>,
    stats: Arc<Stats>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Subscription {
    /// The next chunk or gap; `None` after the subscription ended with an error already
    /// returned.
    pub async fn next(&mut self) -> Option<Result<Delivery, ClientError>> {
        self.rx.recv().await
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// An attached, idle shard session from [`Client::attach`]. Dropping it closes the connection.
pub struct ShardSession {
    conn: quinn::Connection,
    /// The shard that admitted the session.
    pub shard: crate::ids::ShardId,
    /// Whether the attach rode in accepted 0-RTT.
    pub zero_rtt: bool,
    /// From opening the connection to the shard's `attached`.
    pub latency: Duration,
    /// The shard's load when it admitted (sessions per 1000 of its quota), if it said.
    pub load_permille: Option<u32>,
    task: tokio::task::JoinHandle<()>,
}

/// What [`Client::race`] kept.
pub struct Race {
    pub primary: ShardSession,
    pub standby: Option<ShardSession>,
    /// Every shard that answered, best first.
    pub probes: Vec<RaceProbe>,
    /// Sessions that answered and were closed (not primary, not standby).
    pub closed: usize,
    /// Ranks that failed, and why.
    pub failed: Vec<(usize, String)>,
}

/// One shard's answer in a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaceProbe {
    pub shard: crate::ids::ShardId,
    pub latency: Duration,
    pub load_permille: Option<u32>,
}

impl ShardSession {
    /// Whether the shard still holds the session.
    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none() && !self.task.is_finished()
    }

    /// Ends the session (the shard sees a clean close).
    pub fn close(self) {}
}

impl Drop for ShardSession {
    fn drop(&mut self) {
        self.task.abort();
        self.conn.close(ErrorCode::NoError.varint(), b"");
    }
}

/// Shared helper: the ticket-aware connect used for shard attaches. Returns the connection,
/// the 0-RTT acceptance future when 0-RTT was attempted, and the time the attempt started.
/// Connects to a shard at `addr`. Behind a QUIC-LB balancer, `route_cid` is the destination
/// CID of the first packets (from the grant), so they reach the shard the hub chose.
pub(crate) fn connect_shard(
    inner: &Inner,
    addr: SocketAddr,
    route_cid: Option<&[u8]>,
    stats: &Stats,
) -> Result<Attempt, ClientError> {
    let config = match route_cid {
        Some(cid) => {
            let mut c = inner.quic.clone();
            let cid = quinn::ConnectionId::new(cid);
            c.initial_dst_cid_provider(std::sync::Arc::new(move || cid));
            c
        }
        None => inner.quic.clone(),
    };
    let connecting = inner
        .endpoint
        .connect_with(config, addr, &inner.opts.cluster)
        .map_err(|source| ClientError::Connect { addr, source })?;
    Stats::inc(&stats.attaches);
    Ok(match connecting.into_0rtt() {
        Ok((conn, accepted)) => {
            Stats::inc(&stats.zero_rtt_attempted);
            Attempt::ZeroRtt(conn, accepted)
        }
        Err(connecting) => {
            Stats::inc(&stats.full_handshakes);
            Attempt::Full(connecting)
        }
    })
}

pub(crate) enum Attempt {
    ZeroRtt(quinn::Connection, quinn::ZeroRttAccepted),
    Full(quinn::Connecting),
}

pub(crate) type Tx = mpsc::Sender<Result<Delivery, ClientError>>;

/// Sets ttfb once.
pub(crate) fn mark_ttfb(stats: &Stats, started: Instant) {
    let us = crate::clock::since(started).as_micros().max(1) as u64;
    let _ = stats
        .ttfb_us
        .compare_exchange(0, us, Ordering::Relaxed, Ordering::Relaxed);
}
