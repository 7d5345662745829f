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
pub mod cpu;
pub mod streams;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::ids::{GroupId, ShardId, StreamName};
use crate::link::channel::Uplink;
use crate::link::{ClientEntries, ShardLoad, ShardMsg};
use crate::tickets::conn::ConnConfigs;
use crate::tickets::SessionStore;
use crate::wire::{
    write_chunk, write_control, Attach, Attached, Bound, ErrorCode, Frame, FrameReader, GoAway,
    Heartbeat, Message, WireError,
};
pub use admission::Admission;
use streams::{Item, StreamRegistry, StreamSettings};

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
    /// Nanoseconds of CPU time the shard's tasks used (see [`cpu`]).
    pub cpu_ns: Arc<AtomicU64>,
    /// Sum of the expected bitrates (token `expect_kbps`) of the sessions open now.
    pub committed_kbps: AtomicU64,
    rejections: [AtomicU64; ErrorCode::ALL.len()],
}

impl ShardCounters {
    pub fn reject(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.rejections[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Connections closed with `code` (before or after admission).
    pub fn rejections(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.rejections[i].load(Ordering::Relaxed))
    }

    pub fn total_rejections(&self) -> u64 {
        self.rejections
            .iter()
            .map(|r| r.load(Ordering::Relaxed))
            .sum()
    }
}

pub use crate::link::SessionOutcome;

/// Everything a shard needs to start.
pub struct ShardParams {
    pub id: ShardId,
    pub group: GroupId,
    pub bind: SocketAddr,
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
}

struct ShardState {
    id: ShardId,
    group: GroupId,
    admission: Mutex<Admission>,
    registry: StreamRegistry,
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
        let default = p
            .configs
            .endpoint_default()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let (endpoint, addr) =
            crate::net::server_endpoint(p.bind, p.socket_buffer, p.endpoint_config, default)?;
        let state = Arc::new(ShardState {
            id: p.id,
            group: p.group,
            admission: Mutex::new(p.admission),
            registry: StreamRegistry::new(p.streams),
            counters: Arc::new(ShardCounters::default()),
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
        info!(shard = p.id.0, group = p.group.0, %addr, "shard listening");
        Ok(Shard {
            state,
            endpoint,
            addr,
            tasks: Arc::new(Mutex::new(vec![accept, ticker])),
        })
    }

    pub fn id(&self) -> ShardId {
        self.state.id
    }
    pub fn group(&self) -> GroupId {
        self.state.group
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
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
        }
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
        tick.tick().await;
        state.registry.tick(unix_us());
    }
}

async fn accept_loop(state: Arc<ShardState>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        let span = info_span!("conn", remote = %incoming.remote_address());
        let cpu = state.counters.cpu_ns.clone();
        tokio::spawn(cpu::Metered::new(
            async move {
                if let Err(e) = serve(state, incoming).await {
                    debug!(error = %e, "connection ended");
                }
            }
            .instrument(span),
            cpu,
        ));
    }
}

fn refuse(state: &ShardState, conn: &quinn::Connection, code: ErrorCode) {
    state.counters.reject(code);
    debug!(%code, "refused");
    conn.close(code.varint(), code.reason().as_bytes());
}

/// Decrements the open-session gauge when a session ends, however it ends.
struct SessionGuard(Arc<ShardState>, u64);
impl Drop for SessionGuard {
    fn drop(&mut self) {
        let c = &self.0.counters;
        c.sessions.fetch_sub(1, Ordering::Relaxed);
        c.committed_kbps.fetch_sub(self.1, Ordering::Relaxed);
        self.0.load_changed.notify_one();
    }
}

/// Sessions a shard of `capacity` admits for a client of `priority`: the top tenth of the
/// quota (rounded down, so none on shards under 10 sessions) is kept for high-priority clients,
/// and low-priority ones stop a tenth earlier still. A shard near its quota so admits the
/// clients the hub prioritized first; the hub's placement uses the same limits.
pub fn admit_limit(capacity: u64, priority: crate::token::Priority) -> u64 {
    use crate::token::Priority;
    let reserve = capacity / 10;
    match priority {
        Priority::High => capacity,
        Priority::Normal => capacity - reserve,
        Priority::Low => capacity - 2 * reserve,
    }
}

async fn serve(
    state: Arc<ShardState>,
    incoming: quinn::Incoming,
) -> Result<(), quinn::ConnectionError> {
    let (config, conn_store) = match state.configs.for_connection() {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "no server configuration for a connection");
            incoming.refuse();
            return Ok(());
        }
    };
    let connecting = incoming.accept_with(config)?;
    // A server can always answer in 0.5-RTT; `handshake` resolves when the handshake completes.
    let (conn, handshake) = match connecting.into_0rtt() {
        Ok((conn, accepted)) => (conn, Some(accepted)),
        Err(connecting) => (connecting.await?, None),
    };
    let first = tokio::time::timeout(state.attach_timeout, async {
        let (send, recv) = conn.accept_bi().await?;
        let zero_rtt = recv.is_0rtt();
        let mut reader = FrameReader::new(recv);
        let frame = reader.next().await;
        Ok::<_, quinn::ConnectionError>((send, reader, zero_rtt, frame))
    })
    .await;
    let (send, reader, zero_rtt, frame) = match first {
        Err(_) => {
            refuse(&state, &conn, ErrorCode::Timeout);
            return Ok(());
        }
        Ok(r) => r?,
    };
    let attach: Attach = match frame {
        Ok(Some(Frame::Control(Message::Attach(a)))) => a,
        Ok(_) => {
            refuse(&state, &conn, ErrorCode::ProtocolViolation);
            return Ok(());
        }
        Err(e) => {
            refuse(&state, &conn, e.code());
            return Ok(());
        }
    };
    let now_ms = unix_us() / 1000;
    let checked = state
        .admission
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check(&attach, now_ms);
    let claims = match checked {
        Ok(c) => c,
        Err(code) => {
            refuse(&state, &conn, code);
            return Ok(());
        }
    };
    if !state.alive.load(Ordering::Relaxed) {
        // Draining or stopped: the client moves on to the next shard of its grant.
        refuse(&state, &conn, ErrorCode::GoingAway);
        return Ok(());
    }
    let c = &state.counters;
    let limit = admit_limit(state.max_sessions, claims.priority);
    if c.sessions.fetch_add(1, Ordering::Relaxed) >= limit {
        c.sessions.fetch_sub(1, Ordering::Relaxed);
        refuse(&state, &conn, ErrorCode::OverQuota);
        return Ok(());
    }
    let kbps = u64::from(claims.expect_kbps);
    c.committed_kbps.fetch_add(kbps, Ordering::Relaxed);
    let _guard = SessionGuard(state.clone(), kbps);
    state.load_changed.notify_one();
    // The tickets this handshake issues belong to the client: the hub copies them where the
    // client goes next.
    let (up, client) = (state.uplink.clone(), claims.client.clone());
    conn_store.bind(Arc::new(move |entries| {
        up.report(ShardMsg::Entries(ClientEntries {
            client: client.clone(),
            entries,
        }));
    }));
    c.allocations.fetch_add(1, Ordering::Relaxed);
    if zero_rtt {
        c.zero_rtt_attaches.fetch_add(1, Ordering::Relaxed);
    }
    debug!(token = ?claims.id, client = %claims.client, zero_rtt, "admitted");
    let started = Instant::now();
    let mut session = Session {
        state: state.clone(),
        conn: conn.clone(),
        send,
        secret: claims.secret,
        handshake,
        bound: false,
        publishing: None,
        last_sent: Instant::now(),
        subscribed: None,
        published: None,
    };
    let code = session.run(reader, zero_rtt).await;
    if code != ErrorCode::NoError {
        state.counters.reject(code);
    }
    conn.close(code.varint(), code.reason().as_bytes());
    // One report per role the session took (a session may both publish and subscribe).
    let duration_ms = started.elapsed().as_millis() as u64;
    for (role, named) in [
        (crate::wire::Role::Subscribe, session.subscribed),
        (crate::wire::Role::Publish, session.published),
    ] {
        if let Some((stream, bytes)) = named {
            state.uplink.report(ShardMsg::SessionEnded(SessionOutcome {
                client: claims.client.clone(),
                grant: claims.id,
                stream,
                role,
                started_ms: now_ms,
                duration_ms,
                bytes,
            }));
        }
    }
    Ok(())
}

struct Session {
    state: Arc<ShardState>,
    conn: quinn::Connection,
    send: quinn::SendStream,
    secret: [u8; 32],
    handshake: Option<quinn::ZeroRttAccepted>,
    bound: bool,
    publishing: Option<Arc<streams::StreamState>>,
    last_sent: Instant,
    /// The stream the session subscribed to and the payload bytes delivered on it, for its
    /// outcome report.
    subscribed: Option<(StreamName, u64)>,
    /// The stream the session published to and the payload bytes accepted on it.
    published: Option<(StreamName, u64)>,
}

impl Session {
    /// Serves the session until it ends; returns the code to close with. When the session
    /// ends in an error, what was already written (the `attached`, say) gets a moment to
    /// reach the client before the connection closes.
    async fn run(&mut self, reader: FrameReader<quinn::RecvStream>, zero_rtt: bool) -> ErrorCode {
        let code = self.serve_frames(reader, zero_rtt).await;
        if code != ErrorCode::NoError && self.send.finish().is_ok() {
            let _ = tokio::time::timeout(Duration::from_millis(100), self.send.stopped()).await;
        }
        code
    }

    async fn serve_frames(
        &mut self,
        mut reader: FrameReader<quinn::RecvStream>,
        zero_rtt: bool,
    ) -> ErrorCode {
        // Subscribed before `attached` goes out: a drain that starts meanwhile is seen.
        let mut go_away = self.state.go_away.subscribe();
        let attached = Message::Attached(Attached {
            shard: self.state.id,
            zero_rtt,
            load_permille: Some(self.load_permille()),
        });
        if self.control(&attached).await.is_err() {
            return ErrorCode::NoError;
        }
        if go_away.borrow().is_some() {
            go_away.mark_changed();
        }
        // One task per session, reading and writing in one loop (`FrameReader::next` is
        // cancel-safe). `biased`: a go-away goes out first; frames already received are read
        // before the liveness check
        // runs, so a session that was busy writing does not mistake queued heartbeats for
        // silence; the check and heartbeats come before chunks, so a busy stream cannot starve
        // them.
        let mut cursor: Option<streams::Cursor> = None;
        let hb = self.state.heartbeat;
        let mut heartbeat = tokio::time::interval(hb);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_rx = Instant::now();
        loop {
            tokio::select! {
                biased;
                Ok(()) = go_away.changed() => {
                    let msg = go_away.borrow_and_update().clone();
                    if let Some(g) = msg {
                        if self.control(&Message::GoAway(g)).await.is_err() {
                            return ErrorCode::NoError;
                        }
                    }
                }
                frame = reader.next() => {
                    last_rx = Instant::now();
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        // The client finished its side: the session is over.
                        Ok(None) | Err(WireError::Io(_)) => return ErrorCode::NoError,
                        Err(e) => return e.code(),
                    };
                    if let Err(code) = self.handle(frame, &mut cursor).await {
                        return code;
                    }
                }
                _ = heartbeat.tick() => {
                    if last_rx.elapsed() > hb * 4 {
                        return ErrorCode::HeartbeatTimeout;
                    }
                    if self.last_sent.elapsed() >= hb {
                        let m = Message::Heartbeat(Heartbeat { at_us: unix_us() });
                        if self.control(&m).await.is_err() {
                            return ErrorCode::NoError;
                        }
                    }
                }
                item = next_item(&mut cursor) => {
                    let Some(item) = item else { return ErrorCode::UnknownStream };
                    if self.deliver(item).await.is_err() {
                        return ErrorCode::NoError;
                    }
                }
            }
        }
    }

    fn load_permille(&self) -> u32 {
        let sessions = self.state.counters.sessions.load(Ordering::Relaxed);
        let max = self.state.max_sessions.max(1);
        (sessions.saturating_mul(1000) / max).min(1000) as u32
    }

    async fn control(&mut self, msg: &Message) -> Result<(), quinn::WriteError> {
        self.last_sent = Instant::now();
        write_control(&mut self.send, msg).await
    }

    async fn deliver(&mut self, item: Item) -> Result<(), quinn::WriteError> {
        self.last_sent = Instant::now();
        let c = &self.state.counters;
        match item {
            Item::Chunk(chunk) => {
                write_chunk(&mut self.send, &chunk).await?;
                if let Some((_, bytes)) = &mut self.subscribed {
                    *bytes += chunk.payload.len() as u64;
                }
                c.chunks_sent.fetch_add(1, Ordering::Relaxed);
                c.bytes_sent
                    .fetch_add(chunk.payload.len() as u64, Ordering::Relaxed);
            }
            Item::Gap { from, to } => {
                c.gaps_sent.fetch_add(1, Ordering::Relaxed);
                write_control(&mut self.send, &Message::Gap(crate::wire::Gap { from, to })).await?;
            }
        }
        Ok(())
    }

    async fn handle(
        &mut self,
        frame: Frame,
        cursor: &mut Option<streams::Cursor>,
    ) -> Result<(), ErrorCode> {
        match frame {
            Frame::Control(Message::Subscribe(s)) => {
                if cursor.is_some() {
                    return Err(ErrorCode::ProtocolViolation);
                }
                *cursor = Some(
                    self.state
                        .registry
                        .subscribe(&s.stream, s.from_seq, unix_us()),
                );
                self.subscribed = Some((s.stream, 0));
            }
            Frame::Control(Message::Bind(b)) => {
                if self.bound {
                    return Err(ErrorCode::ProtocolViolation);
                }
                // The exporter exists once the handshake is complete.
                if let Some(h) = self.handshake.take() {
                    h.await;
                }
                let ok = crate::proof::exporter(&self.conn)
                    .is_some_and(|e| crate::proof::verify_bind_mac(&self.secret, &e, &b.mac));
                if !ok {
                    return Err(ErrorCode::BindInvalid);
                }
                self.bound = true;
                self.control(&Message::Bound(Bound {}))
                    .await
                    .map_err(|_| ErrorCode::NoError)?;
            }
            Frame::Control(Message::Publish(p)) => {
                if !self.bound {
                    return Err(ErrorCode::NotBound);
                }
                if p.stream.is_synthetic() || self.publishing.is_some() {
                    return Err(ErrorCode::UnknownStream);
                }
                self.publishing = Some(self.state.registry.stream(&p.stream, unix_us()));
                self.published = Some((p.stream, 0));
            }
            Frame::Chunk(chunk) => {
                let len = chunk.payload.len() as u64;
                let Some(stream) = &self.publishing else {
                    return Err(if self.bound {
                        ErrorCode::ProtocolViolation
                    } else {
                        ErrorCode::NotBound
                    });
                };
                if stream
                    .publish(chunk)
                    .map_err(|_| ErrorCode::UnknownStream)?
                {
                    if let Some((_, bytes)) = &mut self.published {
                        *bytes += len;
                    }
                    self.state
                        .counters
                        .chunks_published
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
            Frame::Control(Message::Heartbeat(_)) => {}
            Frame::Control(other) => {
                warn!(kind = other.kind(), "unexpected message");
                return Err(ErrorCode::ProtocolViolation);
            }
        }
        Ok(())
    }
}

async fn next_item(cursor: &mut Option<streams::Cursor>) -> Option<Item> {
    match cursor {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}
