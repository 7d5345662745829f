//! The hub: answers stream requests with grants.
//!
//! Per request (one bidirectional stream of a hub connection; a client may send many): read one
//! [`StreamRequest`] → check it → [`Placer::place`] over a snapshot of the shards → warm the
//! chosen shards → seal a token binding a fresh session secret to the group → write the
//! [`Grant`] followed by the stream's newest chunk (synthetic streams), so the client's first
//! byte arrives with the grant → finish the stream. A refused request gets a [`Reject`] with its
//! code; a connection that sends garbage is closed with the frame error's code.

mod counters;
pub mod directory;
pub mod grant;
pub mod links;
pub mod placement;
pub mod predictor;
pub mod profiler;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::{debug, info, info_span, Instrument};

use crate::clock::unix_us;
use crate::ids::ShardId;
use crate::security::token::TokenKeys;
use crate::sync::lock;
use crate::synthetic::SyntheticSpec;
use crate::tickets::conn::{ConnConfigs, ConnStore};
use crate::wire::{
    write_chunk, write_control, ErrorCode, Frame, FrameReader, Grant, Message, Reject,
    StreamRequest,
};
pub use counters::HubCounters;
use directory::Directory;
use links::Links;
use placement::{PlacementRequest, Placer};

/// Everything a hub needs to start.
pub struct HubParams {
    pub bind: SocketAddr,
    pub socket_buffer: usize,
    /// One server configuration per connection, over the hub's own session store.
    pub configs: ConnConfigs,
    pub endpoint_config: quinn::EndpointConfig,
    pub tokens: Arc<TokenKeys>,
    /// A shard silent for longer than this is taken out of placement.
    pub shard_silence: Duration,
    /// Clients whose session entries the hub keeps (see [`crate::tickets::book`]).
    pub book_clients: usize,
    pub placer: Box<dyn Placer>,
    pub grant_shards: usize,
    /// Standby copies each live stream keeps on the next shards of its group.
    pub live_standbys: u32,
    /// Behind a QUIC-LB balancer: the configuration (grants carry routing CIDs for each shard)
    /// and the balancer's address grants name for the shards.
    pub lb: Option<(crate::lb::LbPlan, Option<SocketAddr>)>,
    pub token_ttl: Duration,
    pub synthetic: SyntheticSpec,
    pub request_timeout: Duration,
    /// Client profiles: every request is recorded; flushed to disk every `flush_interval`.
    pub profiler: Arc<Mutex<profiler::Profiler>>,
}

struct HubState {
    tokens: Arc<TokenKeys>,
    configs: ConnConfigs,
    links: Links,
    /// Grants per group since the pool driver last looked (the predictor's arrivals).
    arrivals: ArrivalsHandle,
    placer: Mutex<Box<dyn Placer>>,
    grant_shards: usize,
    /// The balancer's address grants name for the shards (QUIC-LB on); the configuration
    /// itself is the links' plan (it rotates).
    shards_via: Option<SocketAddr>,
    token_ttl: Duration,
    synthetic: SyntheticSpec,
    request_timeout: Duration,
    counters: Arc<HubCounters>,
    profiler: Arc<Mutex<profiler::Profiler>>,
    profile_tx: std::sync::mpsc::SyncSender<ProfileMsg>,
    /// Learned from ended sessions by the profiler thread; read by `assess`.
    models: Arc<Mutex<predictor::RequestModels>>,
}

/// Grants per group since the last [`ArrivalsHandle::take`].
#[derive(Clone, Default)]
pub struct ArrivalsHandle(Arc<ArrivalsInner>);

#[derive(Default)]
struct ArrivalsInner {
    counts: Mutex<std::collections::HashMap<crate::ids::GroupId, u64>>,
    /// A request found no shard with room: the pool driver starts capacity at once.
    demand: tokio::sync::Notify,
    /// The groups that lacked room since the driver last looked.
    lacking: Mutex<std::collections::BTreeSet<crate::ids::GroupId>>,
    /// Whether a pool driver listens (otherwise the hub refuses at once).
    driven: AtomicBool,
}

impl ArrivalsHandle {
    fn count(&self, group: crate::ids::GroupId) {
        *lock(&self.0.counts).entry(group).or_default() += 1;
    }

    /// The pool driver calls this once: from then on a request that finds no room waits
    /// (briefly) for the capacity it asks for instead of being refused.
    pub fn attach_driver(&self) {
        self.0.driven.store(true, Ordering::Relaxed);
    }

    /// The pool driver stopped: from now on a request that finds no room is refused at once.
    pub fn detach_driver(&self) {
        self.0.driven.store(false, Ordering::Relaxed);
    }

    fn driven(&self) -> bool {
        self.0.driven.load(Ordering::Relaxed)
    }

    fn ask_for_capacity(&self, group: crate::ids::GroupId) {
        lock(&self.0.lacking).insert(group);
        self.0.demand.notify_one();
    }

    /// Resolves when a request asked for capacity, with the groups that lacked room.
    pub async fn demanded(&self) -> Vec<crate::ids::GroupId> {
        self.0.demand.notified().await;
        std::mem::take(&mut *lock(&self.0.lacking))
            .into_iter()
            .collect()
    }

    /// The counts so far, and start again from zero.
    pub fn take(&self) -> std::collections::HashMap<crate::ids::GroupId, u64> {
        std::mem::take(&mut *lock(&self.0.counts))
    }
}

/// A running hub. Dropping it stops it (its endpoint closes, its timers end).
pub struct Hub {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    state: Arc<HubState>,
    task: tokio::task::JoinHandle<()>,
    silence: tokio::task::JoinHandle<()>,
    rotation: tokio::task::JoinHandle<()>,
    peers: tokio::task::JoinHandle<()>,
    /// True once the accept loop ended (the endpoint closed).
    accepting: tokio::sync::watch::Receiver<bool>,
}

impl Hub {
    pub fn start(p: HubParams) -> std::io::Result<Hub> {
        let (endpoint, addr) = p
            .configs
            .bind(p.bind, p.socket_buffer, p.endpoint_config, None)?;
        let (profile_tx, profile_rx) = std::sync::mpsc::sync_channel(PROFILE_QUEUE);
        let counters = Arc::new(HubCounters::default());
        let directory = Arc::new(Mutex::new(Directory::new(p.shard_silence)));
        let book = crate::tickets::book::Book::new(
            p.book_clients,
            crate::tickets::book::PER_CLIENT,
            p.configs.store().ttl(),
        );
        let links = Links::new(
            directory,
            book,
            p.configs.store().clone(),
            session_sink(profile_tx.clone(), counters.clone()),
            counters.clone(),
            p.tokens.clone(),
        );
        let silence = links.spawn_silence_timer();
        let rotation = links.spawn_key_rotation();
        links.set_live_standbys(p.live_standbys);
        links.set_lb(p.lb.as_ref().map(|(plan, _)| plan.clone()));
        let peers = links.spawn_peer_announcer();
        let state = Arc::new(HubState {
            tokens: p.tokens,
            configs: p.configs,
            links,
            arrivals: ArrivalsHandle::default(),
            placer: Mutex::new(p.placer),
            grant_shards: p.grant_shards,
            shards_via: p.lb.and_then(|(_, via)| via),
            token_ttl: p.token_ttl,
            synthetic: p.synthetic,
            request_timeout: p.request_timeout,
            counters,
            profiler: p.profiler,
            profile_tx,
            models: Arc::default(),
        });
        let (ended_tx, accepting) = tokio::sync::watch::channel(false);
        let (state_for_loop, endpoint_for_loop) = (state.clone(), endpoint.clone());
        let task = tokio::spawn(
            async move {
                accept_loop(state_for_loop, endpoint_for_loop).await;
                ended_tx.send_replace(true);
            }
            .instrument(info_span!("hub", %addr)),
        );
        let side = ProfilerSide {
            profiler: state.profiler.clone(),
            models: state.models.clone(),
            counters: state.counters.clone(),
        };
        std::thread::Builder::new()
            .name("shoal-profiler".into())
            .spawn(move || profiler_thread(side, profile_rx))?;
        info!(%addr, "hub listening");
        Ok(Hub {
            endpoint,
            addr,
            state,
            task,
            silence,
            rotation,
            peers,
            accepting,
        })
    }

    /// Resolves when the hub stopped accepting connections (its endpoint closed); a supervisor
    /// treats that as a failure while the service runs.
    pub fn stopped_accepting(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.accepting.clone();
        async move {
            let _ = rx.wait_for(|ended| *ended).await;
        }
    }

    /// The hub's grant counts per group (the pool driver's arrivals).
    pub fn arrivals_handle(&self) -> ArrivalsHandle {
        self.state.arrivals.clone()
    }

    /// The hub endpoint's handshake guard (its counters: Retries sent, connections refused).
    pub fn guard(&self) -> &crate::guard::Guard {
        self.state.configs.guard()
    }

    /// The hub's links to its shards (shards join by handing the hub their link).
    pub fn links(&self) -> &Links {
        &self.state.links
    }

    /// The shard directory: the hub's only view of its shards.
    pub fn directory(&self) -> &Arc<Mutex<Directory>> {
        self.state.links.directory()
    }

    /// The keys the hub seals tokens with (the admin API's readiness checks they are loaded).
    pub fn tokens(&self) -> &Arc<TokenKeys> {
        &self.state.tokens
    }

    /// The hub's own session store.
    pub fn store(&self) -> &Arc<crate::tickets::SessionStore> {
        self.state.configs.store()
    }

    /// The client profiles.
    pub fn profiler(&self) -> &Arc<Mutex<profiler::Profiler>> {
        &self.state.profiler
    }

    /// Sessions the request models learned from.
    pub fn sessions_learned(&self) -> u64 {
        lock(&self.state.models).learned()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> &HubCounters {
        &self.state.counters
    }

    /// The counters, to read after the hub is gone (the admin API's metrics hold this).
    pub fn shared_counters(&self) -> Arc<HubCounters> {
        self.state.counters.clone()
    }

    /// Stops accepting and closes every hub connection with `GoingAway`; session reports are
    /// still recorded until [`Hub::close`].
    pub async fn stop_granting(&self) {
        self.task.abort();
        self.silence.abort();
        self.rotation.abort();
        self.peers.abort();
        let code = ErrorCode::GoingAway;
        self.endpoint.close(code.varint(), code.reason().as_bytes());
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// [`Hub::stop_granting`], then writes the profiles one last time and ends the profiler.
    pub async fn close(&self) {
        self.stop_granting().await;
        let (ack_tx, ack_rx) = std::sync::mpsc::sync_channel(1);
        if self
            .state
            .profile_tx
            .send(ProfileMsg::Close(ack_tx))
            .is_ok()
        {
            let waited = tokio::task::spawn_blocking(move || {
                ack_rx.recv_timeout(Duration::from_secs(10)).is_ok()
            })
            .await;
            if !matches!(waited, Ok(true)) {
                tracing::warn!("the last profile flush did not finish in 10 s");
            }
        }
    }
}

/// How long a request waits for capacity the pool is starting (tries × wait).
const CAPACITY_TRIES: u32 = 40;
const CAPACITY_WAIT: Duration = Duration::from_millis(25);

/// Where shards' ended sessions go: each is recorded in its client's profile and teaches the
/// request models (subscriptions only). Never blocks; a report the profiler cannot take is
/// dropped and counted in `sessions_dropped`.
fn session_sink(
    tx: std::sync::mpsc::SyncSender<ProfileMsg>,
    counters: Arc<HubCounters>,
) -> links::SessionSink {
    Arc::new(move |outcome| {
        let c = match tx.try_send(ProfileMsg::Session(outcome)) {
            Ok(()) => &counters.sessions_reported,
            Err(_) => &counters.sessions_dropped,
        };
        c.fetch_add(1, Ordering::Relaxed);
    })
}

/// How long a grant waits for room on its shards' links, and the hub for their confirmations
/// (a later one counts as missed).
const PREPARE_WAIT: Duration = Duration::from_millis(250);

/// What the hub hands the profiler thread.
enum ProfileMsg {
    Request {
        client: crate::ids::ClientId,
        stream: crate::ids::StreamName,
        hints: crate::wire::Hints,
        now_ms: u64,
    },
    Session(crate::shard::SessionOutcome),
    /// Flush, answer, and end the thread (shutdown: the database is released).
    Close(std::sync::mpsc::SyncSender<()>),
}

/// Requests waiting for the profiler thread; beyond this they are dropped and counted.
const PROFILE_QUEUE: usize = 8192;

/// What the profiler thread works on (not the hub state: its channel must close when the hub
/// goes).
struct ProfilerSide {
    profiler: Arc<Mutex<profiler::Profiler>>,
    models: Arc<Mutex<predictor::RequestModels>>,
    counters: Arc<HubCounters>,
}

/// The profiler's own thread: applies requests and writes dirty profiles every
/// `flush_interval` (redb is synchronous). The hub only ever `try_send`s to it, so a slow
/// disk never stalls a request.
fn profiler_thread(side: ProfilerSide, rx: std::sync::mpsc::Receiver<ProfileMsg>) {
    let profiler = &side.profiler;
    let every = lock(profiler)
        .config()
        .flush_interval
        .max(Duration::from_secs(1));
    let mut next_flush = crate::clock::now() + every;
    loop {
        let wait = next_flush.saturating_duration_since(crate::clock::now());
        match rx.recv_timeout(wait) {
            Ok(ProfileMsg::Close(ack)) => {
                // What is already queued is recorded before the last flush.
                while let Ok(msg) = rx.try_recv() {
                    apply(&side, msg);
                }
                // Hub tasks that are still winding down may hold the profiler; the database
                // must not wait for them (unless the flush failed: then it keeps what is
                // unwritten for a later try).
                if flush(profiler) {
                    drop(lock(profiler).release_store());
                }
                let _ = ack.send(());
                return;
            }
            Ok(msg) => apply(&side, msg),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                flush(profiler);
                next_flush = crate::clock::now() + every;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                flush(profiler);
                return;
            }
        }
    }
}

/// Records a request or an ended session (a `Close` here is already being handled).
fn apply(side: &ProfilerSide, msg: ProfileMsg) {
    match msg {
        ProfileMsg::Request {
            client,
            stream,
            hints,
            now_ms,
        } => {
            let _ = lock(&side.profiler).record_request(&client, &stream, &hints, now_ms);
        }
        ProfileMsg::Session(o) => record_outcome(side, o),
        ProfileMsg::Close(_) => {}
    }
}

/// Records an ended session in its client's profile; a subscription also teaches the request
/// models what the features its grant was decided on turned into (if that grant is no longer
/// remembered: the profile as it was before this session, counted).
fn record_outcome(side: &ProfilerSide, o: crate::shard::SessionOutcome) {
    let now_ms = unix_us() / 1000;
    let mut p = lock(&side.profiler);
    let before = p.features(&o.client, &crate::wire::Hints::default(), now_ms);
    let record = profiler::SessionRecord::new(o.stream, o.started_ms, o.duration_ms, o.bytes);
    p.record_session(&o.client, record, now_ms);
    drop(p);
    if o.role == crate::wire::Role::Subscribe {
        let fallback = grant::model_features(&before);
        if !lock(&side.models).learn_grant(o.grant.0, &fallback, o.duration_ms, o.bytes) {
            side.counters
                .grants_forgotten
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Writes the changed profiles; whether that worked.
fn flush(profiler: &Mutex<profiler::Profiler>) -> bool {
    match lock(profiler).flush(unix_us() / 1000) {
        Ok(stats) => {
            debug!(?stats, "profiles flushed");
            true
        }
        // Nothing is lost: dirty profiles stay dirty for the next flush.
        Err(e) => {
            tracing::warn!(error = %e, "flushing profiles failed; will retry");
            false
        }
    }
}

async fn accept_loop(state: Arc<HubState>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let Some((incoming, permit)) = crate::guard::screen(state.configs.guard(), incoming) else {
            continue;
        };
        let state = state.clone();
        let span = info_span!("conn", remote = %incoming.remote_address());
        tokio::spawn(
            async move {
                // Each connection stores through its own record, so the hub knows which
                // session entries this client's handshake produced.
                let (config, store) = match state.configs.for_connection() {
                    Ok(c) => c,
                    Err(e) => {
                        incoming.refuse();
                        return tracing::warn!(error = %e, "no server configuration");
                    }
                };
                // Answer in 0.5-RTT: a returning client's request rides in 0-RTT and gets its
                // grant one round trip after its first packet.
                let (conn, handshake) = match crate::net::accept_early_with(incoming, config).await
                {
                    Ok(c) => c,
                    Err(e) => return debug!(error = %e, "handshake failed"),
                };
                // Whether the handshake completed: a close decided on 0-RTT data waits for it,
                // or it would lose its code (RFC 9000 section 10.2.3).
                let (complete_tx, complete) = tokio::sync::watch::channel(handshake.is_none());
                if let Some(done) = handshake {
                    // A client answered in 0.5-RTT gets its new tickets when the handshake
                    // completes: they follow it to its shards then.
                    let store = store.clone();
                    tokio::spawn(async move {
                        done.await;
                        store.flush();
                        complete_tx.send_replace(true);
                    });
                }
                state.counters.connections.fetch_add(1, Ordering::Relaxed);
                // A connection that opens no stream within the request timeout is closed with
                // `TIMEOUT` (later, an idle client connection is kept for its next request
                // until the transport idle timeout).
                let first = tokio::time::timeout(state.request_timeout, conn.accept_bi()).await;
                // The guard counts a connection until it asked something (see `guard`).
                drop(permit);
                let first = match first {
                    Err(_) => {
                        state.counters.idle_closed.fetch_add(1, Ordering::Relaxed);
                        let code = ErrorCode::Timeout;
                        state.counters.rejections.count(code);
                        return conn.close(code.varint(), code.reason().as_bytes());
                    }
                    Ok(Err(_)) => return,
                    Ok(Ok(s)) => s,
                };
                let mut next = Some(first);
                loop {
                    let (send, recv) = match next.take() {
                        Some(s) => s,
                        None => match conn.accept_bi().await {
                            Ok(s) => s,
                            Err(_) => break,
                        },
                    };
                    let (state, conn, store) = (state.clone(), conn.clone(), store.clone());
                    let mut complete = complete.clone();
                    tokio::spawn(async move {
                        let rtt = conn.rtt();
                        if let Err(code) = handle_request(&state, &store, rtt, send, recv).await {
                            state.counters.rejections.count(code);
                            let wait = state.request_timeout;
                            let _ = tokio::time::timeout(wait, complete.wait_for(|c| *c)).await;
                            conn.close(code.varint(), code.reason().as_bytes());
                        }
                    });
                }
            }
            .instrument(span),
        );
    }
}

/// Serves one request stream. `Err` means the connection must close with that code.
async fn handle_request(
    state: &HubState,
    store: &ConnStore,
    client_rtt: Duration,
    mut send: quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<(), ErrorCode> {
    if recv.is_0rtt() {
        state
            .counters
            .zero_rtt_requests
            .fetch_add(1, Ordering::Relaxed);
    }
    let mut reader = FrameReader::new(recv);
    let req = match tokio::time::timeout(state.request_timeout, reader.next()).await {
        Err(_) => return Err(ErrorCode::Timeout),
        Ok(Err(e)) => return Err(e.code()),
        Ok(Ok(Some(Frame::Control(Message::StreamRequest(r))))) => r,
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(_))) => return Err(ErrorCode::ProtocolViolation),
    };
    // The grant latency runs from here (the request read) to the grant written.
    let received = crate::clock::now();
    // The connection's session entries are this client's, from now on as they come.
    let (links, client) = (state.links.clone(), req.client_id.clone());
    store.bind(Arc::new(move |entries| links.hub_entries(&client, entries)));
    store.flush();
    // What the profiles say of the client, before this request is recorded.
    let assessed = assess(state, &req);
    let msg = ProfileMsg::Request {
        client: req.client_id.clone(),
        stream: req.stream.clone(),
        hints: req.hints.clone(),
        now_ms: unix_us() / 1000,
    };
    if state.profile_tx.try_send(msg).is_err() {
        state
            .counters
            .profiles_dropped
            .fetch_add(1, Ordering::Relaxed);
    }
    let mut placed = grant(state, &req, assessed);
    // With a pool driver, no room means "start a shard": wait for it (bounded) rather than
    // refuse. Shards start in milliseconds; the driver acts at once on the demand.
    let mut tries = 0;
    while matches!(&placed, Err((ErrorCode::NoCapacity, _)))
        && state.arrivals.driven()
        && tries < CAPACITY_TRIES
    {
        let views = lock(state.links.directory()).views();
        if let Some(g) = placement::lacking_group(&req.stream, &views) {
            state.arrivals.ask_for_capacity(g);
        }
        tokio::time::sleep(CAPACITY_WAIT).await;
        placed = grant(state, &req, assessed);
        tries += 1;
    }
    let reply = match placed {
        Ok((mut g, shards)) => {
            // A shard that went away since placement is not named (its client would wait for
            // an answer that never comes).
            let gone = prepare_shards(state, &req, &shards, client_rtt).await;
            g.shards.retain(|s| !gone.contains(&s.id));
            if g.shards.is_empty() {
                let reason = "the granted shards went away".to_string();
                return refuse(state, send, ErrorCode::NoCapacity, reason).await;
            }
            g
        }
        Err((code, reason)) => return refuse(state, send, code, reason).await,
    };
    state.counters.grants.fetch_add(1, Ordering::Relaxed);
    if write_control(&mut send, &Message::Grant(reply))
        .await
        .is_err()
    {
        return Ok(());
    }
    let c = &state.counters;
    c.grant_seconds.observe(crate::clock::since(received));
    if req.stream.is_synthetic() {
        // The first byte rides with the grant: the newest chunk of the stream.
        let spec = state.synthetic;
        let chunk = spec.chunk(&req.stream, spec.live_seq(unix_us()));
        let _ = write_chunk(&mut send, &chunk).await;
    }
    let _ = send.finish();
    Ok(())
}

/// Reads the client's profile without waiting (when the profiler is busy flushing, the request
/// is judged on its hints alone, the request models included) and lets [`grant::assess`]
/// decide.
fn assess(state: &HubState, req: &StreamRequest) -> grant::Assessed {
    let now_ms = crate::clock::unix_ms();
    let read = state.profiler.try_lock().ok().map(|p| {
        let cap = f64::from(p.config().max_requests_per_minute);
        (p.features(&req.client_id, &req.hints, now_ms), cap)
    });
    let profile = read.as_ref().map(|(f, cap)| grant::Profile {
        features: f,
        max_requests_per_minute: *cap,
    });
    let hints = || profiler::Profiler::hint_features(&req.hints);
    let learned = |m: &predictor::RequestFeatures| lock(&state.models).bitrate_kbps(m);
    let (assessed, from_model) = grant::assess(req, profile, hints, learned);
    if from_model {
        let c = &state.counters.model_expectations;
        c.fetch_add(1, Ordering::Relaxed);
    }
    assessed
}

/// Answers a request with a `reject` and finishes the stream (the connection stays).
async fn refuse(
    state: &HubState,
    mut send: quinn::SendStream,
    code: ErrorCode,
    reason: String,
) -> Result<(), ErrorCode> {
    state.counters.rejects.fetch_add(1, Ordering::Relaxed);
    state.counters.rejections.count(code);
    debug!(%code, %reason, "request refused");
    let reject = Message::Reject(Reject {
        code: code.as_u32(),
        reason,
    });
    let _ = write_control(&mut send, &reject).await;
    let _ = send.finish();
    Ok(())
}

/// Before a grant leaves, its shards are told to warm the stream and hold the client's session
/// entries (on each link ahead of anything later), so its 0-RTT attach finds its ticket and its
/// stream; the grant waits for their confirmations only where the entries could lose the race
/// to the client (see [`Links::should_wait`]). Returns the shards that could not be reached at
/// all (gone since placement).
async fn prepare_shards(
    state: &HubState,
    req: &StreamRequest,
    shards: &[ShardId],
    client_rtt: Duration,
) -> Vec<ShardId> {
    let plan = state.links.grant_entries(&req.client_id, shards);
    let confirm = state.links.should_wait(shards, client_rtt);
    state
        .links
        .prepare(plan, &req.stream, PREPARE_WAIT, confirm)
        .await
}

/// Decides a grant ([`grant`]'s steps around placement): the grant and the shards it names.
fn grant(
    state: &HubState,
    req: &StreamRequest,
    assessed: grant::Assessed,
) -> Result<(Grant, Vec<ShardId>), grant::Refusal> {
    grant::check(req)?;
    let views = lock(state.links.directory()).views();
    let preq = PlacementRequest {
        client: &req.client_id,
        stream: &req.stream,
        role: req.role,
        hints: &req.hints,
        priority: assessed.priority,
        expect_kbps: assessed.expect_kbps,
    };
    let decision = lock(&state.placer)
        .place(&preq, &views, state.grant_shards, crate::clock::now())
        .map_err(|e| (e.code(), e.to_string()))?;
    state.arrivals.count(decision.group);
    let internal = |_| (ErrorCode::Internal, "no randomness".to_string());
    let random = (
        state.tokens.random_bytes().map_err(internal)?,
        state.tokens.random_bytes().map_err(internal)?,
    );
    let now_ms = crate::clock::unix_ms();
    let ttl_ms = u64::try_from(state.token_ttl.as_millis()).unwrap_or(u64::MAX);
    let claims = grant::claims(req, &decision, &assessed, random, now_ms, ttl_ms);
    let token = state.tokens.seal(&claims, now_ms).map_err(internal)?;
    if let Some(f) = assessed.features {
        lock(&state.models).remember(claims.id.0, f);
    }
    debug!(token = ?claims.id, group = decision.group.0, client = %req.client_id, "granted");
    let ids = decision.shards.iter().map(|s| s.id).collect();
    let lb = state.links.lb_config();
    let via = lb.as_ref().and(state.shards_via);
    let route = |id: ShardId| match &lb {
        Some(config) => route_cids(config, id),
        None => Vec::new(),
    };
    Ok((grant::reply(&decision, &claims, token, via, route), ids))
}

/// Connection IDs a grant carries per shard behind a QUIC-LB balancer: a client uses one per
/// connection, so a few cover its attach, a standby session and a resume or two; a re-grant
/// brings more.
pub const ROUTE_CIDS: usize = 4;

/// [`ROUTE_CIDS`] fresh CIDs that route to shard `id`.
fn route_cids(config: &crate::lb::LbConfig, id: ShardId) -> Vec<Vec<u8>> {
    use ring::rand::SecureRandom;
    let sid = crate::lb::server_id_bytes(id.0, config.server_id_len());
    let rng = ring::rand::SystemRandom::new();
    (0..ROUTE_CIDS)
        .filter_map(|_| {
            let mut nonce = vec![0u8; config.nonce_len()];
            rng.fill(&mut nonce).ok()?;
            config.encode(&sid, &nonce).ok()
        })
        .collect()
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
        self.silence.abort();
        self.rotation.abort();
        self.peers.abort();
        let code = ErrorCode::GoingAway;
        self.endpoint.close(code.varint(), code.reason().as_bytes());
    }
}
