//! The networked link: the contract's messages over QUIC (`shoal-ctl/1`, mutual TLS), so a
//! shard can run in another process on another host.
//!
//! One connection per shard, opened by the shard; one bidirectional stream, opened by the
//! shard, carries every message both ways as frames of `length:u32be | MessagePack` (at most
//! [`MAX_FRAME`] bytes). Both ends present certificates from the cluster CA. The first frame
//! is the shard's `register`; the hub's first frame is the group's `keys`, which is also the
//! shard's sign that it is registered. A refusal closes the connection with a [`CloseCode`].
//!
//! Each end turns its connection into the in-process channel ends of [`super::channel`], so
//! the hub's [`Links`] and the shard's agent are the same code whether a shard is embedded or
//! remote. The hub's end is [`ControlServer`]; the shard's is [`run_bridge`], which also
//! carries the policy of a shard that lost its hub: reconnect with capped backoff, re-register,
//! and queue session outcomes (bounded, counted) until then.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::channel::{HubEnd, COMMAND_CAPACITY, UPLINK_CAPACITY};
use super::{HubCmd, ShardMsg};
use crate::hub::directory::DirectoryError;
use crate::hub::links::{Links, Refused};

/// ALPN of the control link.
pub const CTL_ALPN: &[u8] = b"shoal-ctl/1";
/// Largest frame either end accepts (a `prepare` with a client's entries is a few KiB).
pub const MAX_FRAME: usize = 1 << 20;
/// Each end sends a QUIC PING this often when it has nothing else to send…
pub const KEEP_ALIVE: Duration = Duration::from_millis(500);
/// …and a connection silent this long is gone (a killed shard, a partitioned hub).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshake, first stream and registration must each come within this.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(5);
/// A write gathers what queued, up to about this many bytes (hub) or messages (shard).
const COALESCE_BYTES: usize = 64 * 1024;
const COALESCE_MESSAGES: usize = 256;
/// Reports (load, session outcomes, entries) one link may send per second, with bursts of
/// twice that; more are dropped and counted (a flooding shard costs its own reports only).
pub const REPORT_BUDGET: f64 = 20_000.0;

/// Why a control connection was closed (its QUIC application error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseCode {
    /// The link ended normally (drained, or the other end went away on purpose).
    Done,
    /// The shard speaks another link version.
    Version,
    /// Another live shard has this id.
    IdTaken,
    /// The first frame was not a registration (or a second one came).
    NotRegistered,
    /// A frame did not decode.
    Malformed,
    /// A frame was over [`MAX_FRAME`].
    TooLarge,
    /// The hub is shutting down (a shard reconnects later).
    HubStopping,
    /// The shard is stopping.
    ShardStopping,
}

impl CloseCode {
    pub const ALL: [CloseCode; 8] = [
        CloseCode::Done,
        CloseCode::Version,
        CloseCode::IdTaken,
        CloseCode::NotRegistered,
        CloseCode::Malformed,
        CloseCode::TooLarge,
        CloseCode::HubStopping,
        CloseCode::ShardStopping,
    ];

    pub fn as_u32(self) -> u32 {
        match self {
            CloseCode::Done => 0x0,
            CloseCode::Version => 0x1,
            CloseCode::IdTaken => 0x2,
            CloseCode::NotRegistered => 0x3,
            CloseCode::Malformed => 0x4,
            CloseCode::TooLarge => 0x5,
            CloseCode::HubStopping => 0x6,
            CloseCode::ShardStopping => 0x7,
        }
    }

    pub fn from_u64(v: u64) -> Option<CloseCode> {
        Self::ALL.into_iter().find(|c| u64::from(c.as_u32()) == v)
    }

    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Done => "done",
            CloseCode::Version => "link version not supported",
            CloseCode::IdTaken => "shard id already registered",
            CloseCode::NotRegistered => "register first, once",
            CloseCode::Malformed => "malformed frame",
            CloseCode::TooLarge => "frame too large",
            CloseCode::HubStopping => "hub stopping",
            CloseCode::ShardStopping => "shard stopping",
        }
    }

    /// Whether a shard refused with this code may try again later (the cause can go away).
    pub fn retryable(self) -> bool {
        matches!(
            self,
            CloseCode::Done | CloseCode::IdTaken | CloseCode::HubStopping
        )
    }

    fn close(self, conn: &quinn::Connection) {
        conn.close(self.as_u32().into(), self.reason().as_bytes());
    }
}

impl From<Refused> for CloseCode {
    fn from(r: Refused) -> Self {
        match r {
            Refused::NotRegistered => CloseCode::NotRegistered,
            Refused::Directory(DirectoryError::Version { .. }) => CloseCode::Version,
            Refused::Directory(_) => CloseCode::IdTaken,
        }
    }
}

/// Transport settings of the control link: keep-alives so that silence means death.
pub fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(IDLE_TIMEOUT).expect("5 s is a valid idle timeout"),
    ));
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Arc::new(t)
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("stream: {0}")]
    Stream(String),
}

impl FrameError {
    fn code(&self) -> Option<CloseCode> {
        match self {
            FrameError::TooLarge(_) => Some(CloseCode::TooLarge),
            FrameError::Malformed(_) => Some(CloseCode::Malformed),
            FrameError::Stream(_) => None,
        }
    }
}

/// Encodes one frame.
pub fn frame<T: Serialize>(msg: &T) -> Vec<u8> {
    let body = super::encode(msg);
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

async fn write_frame<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), FrameError> {
    send.write_all(&frame(msg))
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))
}

/// Reads one frame; `None` when the peer finished the stream cleanly between frames.
async fn read_frame<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Option<T>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(FrameError::Stream(e.to_string())),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf.resize(len, 0);
    recv.read_exact(buf)
        .await
        .map_err(|e| FrameError::Stream(e.to_string()))?;
    super::decode(buf)
        .map(Some)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// Logs a cause at `warn` the first time, at `debug` after (a flood of one fault is one line).
#[derive(Default)]
struct OnceLog(Mutex<std::collections::HashSet<String>>);

impl OnceLog {
    fn first(&self, cause: &str) -> bool {
        crate::sync::lock(&self.0).insert(cause.to_string())
    }
}

/// What the control listener counts (besides the links' own counters).
#[derive(Debug, Default)]
pub struct ControlCounters {
    /// Handshakes that failed (a certificate from another CA, a wrong ALPN, a timeout).
    pub handshakes_failed: AtomicU64,
    /// Links closed for a malformed or oversized frame, or a second registration.
    pub malformed: AtomicU64,
    /// Reports dropped because a link sent more than [`REPORT_BUDGET`].
    pub flood_dropped: AtomicU64,
}

/// The hub's control listener: takes shards' connections and hands each, as a link, to
/// [`Links`].
pub struct ControlServer {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<ControlCounters>,
}

impl ControlServer {
    /// The listener's QUIC configuration over `crypto` (a server configuration that requires
    /// client certificates from the cluster CA, ALPN [`CTL_ALPN`]).
    pub fn server_config(
        crypto: Arc<rustls::ServerConfig>,
    ) -> Result<quinn::ServerConfig, crate::security::tls::TlsError> {
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| crate::security::tls::TlsError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport());
        Ok(server)
    }

    /// Listens on `bind` and hands every shard that registers to `links`.
    pub fn start(
        bind: SocketAddr,
        server: quinn::ServerConfig,
        links: Links,
    ) -> std::io::Result<ControlServer> {
        let (endpoint, addr) =
            crate::net::server_endpoint(bind, 1 << 20, quinn::EndpointConfig::default(), server)?;
        let counters = Arc::new(ControlCounters::default());
        let task = tokio::spawn(
            accept_loop(endpoint.clone(), links, counters.clone())
                .instrument(tracing::info_span!("control", %addr)),
        );
        info!(%addr, "control listener up (shoal-ctl/1, mutual TLS)");
        Ok(ControlServer {
            endpoint,
            addr,
            task,
            counters,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn counters(&self) -> &Arc<ControlCounters> {
        &self.counters
    }

    /// Closes every control connection with [`CloseCode::HubStopping`].
    pub fn close(&self) {
        self.task.abort();
        CloseCode::HubStopping.close_endpoint(&self.endpoint);
    }
}

impl CloseCode {
    fn close_endpoint(self, endpoint: &quinn::Endpoint) {
        endpoint.close(self.as_u32().into(), self.reason().as_bytes());
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.close();
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, links: Links, counters: Arc<ControlCounters>) {
    let log = Arc::new(OnceLog::default());
    while let Some(incoming) = endpoint.accept().await {
        let (links, counters, log) = (links.clone(), counters.clone(), log.clone());
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                if let Err(cause) = serve(incoming, links, &counters).await {
                    if log.first(&cause) {
                        warn!(%remote, %cause, "control connection refused (further ones of this cause are logged at debug)");
                    } else {
                        debug!(%remote, %cause, "control connection refused");
                    }
                }
            }
            .instrument(tracing::info_span!("ctl", %remote)),
        );
    }
}

/// One shard's connection, until it ends. An `Err` is the cause of a refusal.
async fn serve(
    incoming: quinn::Incoming,
    links: Links,
    counters: &ControlCounters,
) -> Result<(), String> {
    let setup = async {
        let conn = incoming.await.map_err(|e| format!("handshake: {e}"))?;
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| format!("no link stream: {e}"))?;
        let mut buf = Vec::new();
        let first: Option<ShardMsg> = match read_frame(&mut recv, &mut buf).await {
            Ok(m) => m,
            Err(e) => {
                if let Some(code) = e.code() {
                    code.close(&conn);
                }
                return Err(format!("first frame: {e}"));
            }
        };
        Ok::<_, String>((conn, send, recv, first, buf))
    };
    let (conn, send, recv, first, buf) = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err(cause)) => {
            counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return Err(cause);
        }
        Err(_) => {
            counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return Err("setup timed out".into());
        }
    };
    let Some(first) = first else {
        return Err("stream ended before registering".into());
    };
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_CAPACITY);
    let (msg_tx, msg_rx) = mpsc::channel(UPLINK_CAPACITY);
    msg_tx
        .try_send(first)
        .expect("a fresh channel has room for one message");
    let end = HubEnd {
        commands: cmd_tx,
        messages: msg_rx,
    };
    let shard = match links.accept(end) {
        Ok(Some(id)) => id,
        Ok(None) => unreachable!("the registration was queued before the link was handed over"),
        Err(r) => {
            CloseCode::from(r).close(&conn);
            return Err(format!("registration refused: {r}"));
        }
    };
    debug!(shard = shard.0, "control link up");
    let writer = tokio::spawn(write_commands(conn.clone(), send, cmd_rx));
    let outcome = read_reports(&conn, recv, buf, msg_tx, counters).await;
    // The reader is done: the writer ends when the links drop their sender, or now.
    writer.abort();
    match outcome {
        Ok(()) => {
            CloseCode::Done.close(&conn);
            Ok(())
        }
        Err(e) => {
            if let Some(code) = e.code() {
                counters.malformed.fetch_add(1, Ordering::Relaxed);
                code.close(&conn);
                return Err(format!("shard {}: {e}", shard.0));
            }
            Ok(())
        }
    }
}

async fn write_commands(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut commands: mpsc::Receiver<HubCmd>,
) {
    loop {
        tokio::select! {
            cmd = commands.recv() => match cmd {
                Some(cmd) => {
                    // What queued meanwhile goes in the same write (fewer packets under load,
                    // no wait when idle).
                    let mut out = frame(&cmd);
                    while out.len() < COALESCE_BYTES {
                        match commands.try_recv() {
                            Ok(more) => out.extend_from_slice(&frame(&more)),
                            Err(_) => break,
                        }
                    }
                    if send.write_all(&out).await.is_err() {
                        break;
                    }
                }
                // The hub let go of the link (drained, lost, refused later).
                None => {
                    let _ = send.finish();
                    CloseCode::Done.close(&conn);
                    break;
                }
            },
            _ = conn.closed() => break,
        }
    }
    // Dropping the receiver tells the links the link is closing.
}

async fn read_reports(
    conn: &quinn::Connection,
    mut recv: quinn::RecvStream,
    mut buf: Vec<u8>,
    to_links: mpsc::Sender<ShardMsg>,
    counters: &ControlCounters,
) -> Result<(), FrameError> {
    let mut bucket = Bucket::new(REPORT_BUDGET);
    let mut flooding = false;
    loop {
        let msg = tokio::select! {
            m = read_frame::<ShardMsg>(&mut recv, &mut buf) => m?,
            _ = conn.closed() => None,
        };
        let Some(msg) = msg else { return Ok(()) };
        match &msg {
            ShardMsg::Register(_) => {
                return Err(FrameError::Malformed("registered twice".into()));
            }
            ShardMsg::Load(_) | ShardMsg::SessionEnded(_) | ShardMsg::Entries(_)
                if !bucket.take(crate::clock::tokio_now()) =>
            {
                counters.flood_dropped.fetch_add(1, Ordering::Relaxed);
                if !flooding {
                    flooding = true;
                    warn!(
                        budget = REPORT_BUDGET,
                        "a shard sends more reports than its budget; dropping the excess"
                    );
                }
                continue;
            }
            _ => {}
        }
        if to_links.send(msg).await.is_err() {
            // The links let go of this link (drained, or refused a message).
            return Ok(());
        }
    }
}

/// A token bucket of `rate` per second, `2 × rate` deep.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Bucket {
    fn new(rate: f64) -> Self {
        Self {
            rate,
            tokens: 2.0 * rate,
            at: crate::clock::tokio_now(),
        }
    }

    fn take(&mut self, now: tokio::time::Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * self.rate).min(2.0 * self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// How a shard reaches its hub.
pub struct Dialer {
    pub endpoint: quinn::Endpoint,
    pub hub: SocketAddr,
    /// The hub's TLS name (the cluster name).
    pub server_name: String,
    /// Client configuration with the shard's certificate, ALPN [`CTL_ALPN`].
    pub config: quinn::ClientConfig,
}

/// The policy of a shard towards its hub.
#[derive(Debug, Clone, Copy)]
pub struct BridgeOptions {
    /// A shard that never registered gives up after this (the hub is unreachable or
    /// misconfigured); once registered, it retries for as long as it runs.
    pub first_contact: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Session outcomes and entry reports kept while the hub is away; more are dropped and
    /// counted.
    pub outbox: usize,
}

impl Default for BridgeOptions {
    fn default() -> Self {
        Self {
            first_contact: Duration::from_secs(30),
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            outbox: 4096,
        }
    }
}

/// What the shard's side of the link counts.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    /// Connections that registered.
    pub registrations: AtomicU64,
    /// Connection attempts that failed or were refused.
    pub failed_attempts: AtomicU64,
    /// Reports kept while the hub was away and delivered after.
    pub delivered_late: AtomicU64,
    /// Reports dropped because the outbox was full.
    pub outbox_dropped: AtomicU64,
}

/// A shard cannot (any more) be part of the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    #[error("the shard's agent ended before registering")]
    NoRegistration,
    #[error("the hub at {hub} refused this shard: {reason} (code {code:#x})")]
    Refused {
        hub: SocketAddr,
        code: u32,
        reason: &'static str,
    },
    #[error(
        "TLS with the hub at {hub} failed: {cause} (are both certificates from the cluster CA?)"
    )]
    Tls { hub: SocketAddr, cause: String },
    #[error("could not reach the hub at {hub} within {waited:?}: {cause}")]
    Unreachable {
        hub: SocketAddr,
        waited: Duration,
        cause: String,
    },
}

/// How one connection ended.
enum Ended {
    /// The shard's agent ended: the shard stopped.
    AgentGone,
    /// Worth another try later.
    Retry(String),
    Fatal(BridgeError),
}

/// The shard's end of the networked link: relays between the shard's agent (`local`, the
/// hub end of an in-process [`super::channel::pair`]) and the hub, for as long as the agent
/// runs. The agent's first message must be its registration; it is sent again on every
/// reconnection. While the hub is away, load reports collapse to the newest one, and session
/// outcomes and entries wait in a bounded outbox; commands from a previous connection that
/// were never answered are not repeated (a new hub does not know them).
pub async fn run_bridge(
    dialer: Dialer,
    mut local: HubEnd,
    opts: BridgeOptions,
    counters: Arc<BridgeCounters>,
) -> Result<(), BridgeError> {
    let Some(reg @ ShardMsg::Register(_)) = local.messages.recv().await else {
        return Err(BridgeError::NoRegistration);
    };
    let mut held = Held {
        last_load: None,
        outbox: VecDeque::new(),
        cap: opts.outbox,
        counters: counters.clone(),
    };
    let started = crate::clock::tokio_now();
    let mut registered_once = false;
    let mut backoff = opts.backoff_min;
    let mut last_cause = String::new();
    loop {
        let (ended, registered) = connect_and_relay(&dialer, &reg, &mut local, &mut held).await;
        if registered {
            registered_once = true;
            backoff = opts.backoff_min;
        }
        let cause = match ended {
            Ended::AgentGone => return Ok(()),
            Ended::Fatal(e) => return Err(e),
            Ended::Retry(cause) => cause,
        };
        counters.failed_attempts.fetch_add(1, Ordering::Relaxed);
        if cause != last_cause {
            warn!(hub = %dialer.hub, %cause, retry_in = ?backoff, "no link to the hub; retrying with backoff (sessions keep being served)");
            last_cause = cause.clone();
        } else {
            debug!(%cause, "hub still away");
        }
        if !registered_once && crate::clock::tokio_now() - started >= opts.first_contact {
            return Err(BridgeError::Unreachable {
                hub: dialer.hub,
                waited: opts.first_contact,
                cause,
            });
        }
        // Wait, still taking what the agent sends.
        let until = crate::clock::tokio_now() + jitter(backoff);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => break,
                m = local.messages.recv() => match m {
                    Some(m) => held.keep(m),
                    None => return Ok(()),
                },
                () = local.commands.closed() => return Ok(()),
            }
        }
        backoff = (backoff * 2).min(opts.backoff_max);
    }
}

/// What waits for the hub while it is away.
struct Held {
    last_load: Option<ShardMsg>,
    outbox: VecDeque<ShardMsg>,
    cap: usize,
    counters: Arc<BridgeCounters>,
}

impl Held {
    fn keep(&mut self, m: ShardMsg) {
        match m {
            ShardMsg::Load(_) => self.last_load = Some(m),
            // An answer for a hub that is gone.
            ShardMsg::Prepared { .. } | ShardMsg::Register(_) => {}
            m => {
                if self.outbox.len() < self.cap {
                    self.outbox.push_back(m);
                } else {
                    self.counters.outbox_dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 1];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    // 80 % .. 120 %
    d.mul_f64(0.8 + 0.4 * f64::from(b[0]) / 255.0)
}

/// One connection: dial, register, deliver what waited, relay until it ends. Also says
/// whether the hub registered the shard on it (its first command arrived).
async fn connect_and_relay(
    dialer: &Dialer,
    reg: &ShardMsg,
    local: &mut HubEnd,
    held: &mut Held,
) -> (Ended, bool) {
    let dial = async {
        let connecting = dialer
            .endpoint
            .connect_with(dialer.config.clone(), dialer.hub, &dialer.server_name)
            .map_err(|e| Ended::Retry(format!("connect: {e}")))?;
        let conn = connecting.await.map_err(|e| classify(dialer.hub, &e))?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| classify(dialer.hub, &e))?;
        write_frame(&mut send, reg)
            .await
            .map_err(|e| Ended::Retry(e.to_string()))?;
        Ok::<_, Ended>((conn, send, recv))
    };
    // Keep taking the agent's messages while dialing.
    let dial = tokio::time::timeout(SETUP_TIMEOUT, dial);
    tokio::pin!(dial);
    let (conn, mut send, recv) = loop {
        tokio::select! {
            r = &mut dial => match r {
                Ok(Ok(x)) => break x,
                Ok(Err(ended)) => return (ended, false),
                Err(_) => return (Ended::Retry("no answer from the hub".into()), false),
            },
            m = local.messages.recv() => match m {
                Some(m) => held.keep(m),
                None => return (Ended::AgentGone, false),
            },
            () = local.commands.closed() => return (Ended::AgentGone, false),
        }
    };
    let registered = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut down = tokio::spawn(relay_commands(
        conn.clone(),
        recv,
        local.commands.clone(),
        registered.clone(),
    ));
    // What waited goes first: the newest load, then the outbox in order.
    let waited: Vec<ShardMsg> = held
        .last_load
        .take()
        .into_iter()
        .chain(held.outbox.drain(..))
        .collect();
    let late = waited.len() as u64;
    for m in &waited {
        if let Err(e) = write_frame(&mut send, m).await {
            down.abort();
            return (ended_by(&conn, dialer.hub, e.to_string()), false);
        }
    }
    if late > 0 {
        held.counters
            .delivered_late
            .fetch_add(late, Ordering::Relaxed);
    }
    let ended = loop {
        tokio::select! {
            m = local.messages.recv() => match m {
                Some(m) => {
                    // What queued meanwhile goes in the same write (fewer packets under load).
                    let mut batch = vec![m];
                    while batch.len() < COALESCE_MESSAGES
                        && !matches!(batch.last(), Some(ShardMsg::Drained))
                    {
                        match local.messages.try_recv() {
                            Ok(more) => batch.push(more),
                            Err(_) => break,
                        }
                    }
                    let drained = matches!(batch.last(), Some(ShardMsg::Drained));
                    let out: Vec<u8> = batch.iter().flat_map(frame).collect();
                    if let Err(e) = send.write_all(&out).await {
                        for m in batch {
                            held.keep(m);
                        }
                        break ended_by(&conn, dialer.hub, e.to_string());
                    }
                    if drained {
                        // The shard is done: the hub closes the link once it read this.
                        let _ = send.finish();
                        let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
                        break Ended::AgentGone;
                    }
                }
                None => {
                    let _ = send.finish();
                    let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                    CloseCode::ShardStopping.close(&conn);
                    break Ended::AgentGone;
                }
            },
            () = local.commands.closed() => {
                // The agent ended (the shard stopped): what it sent last goes out first.
                while let Ok(m) = local.messages.try_recv() {
                    if write_frame(&mut send, &m).await.is_err() {
                        break;
                    }
                }
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_millis(200), send.stopped()).await;
                CloseCode::ShardStopping.close(&conn);
                break Ended::AgentGone;
            }
            r = &mut down => {
                let cause = match r {
                    Ok(cause) => cause,
                    Err(_) => "link reader failed".into(),
                };
                break ended_by(&conn, dialer.hub, cause);
            }
        }
    };
    down.abort();
    let registered = registered.load(Ordering::Relaxed);
    if registered {
        held.counters.registrations.fetch_add(1, Ordering::Relaxed);
    }
    (ended, registered)
}

/// Hub → agent until the connection ends; returns why it ended.
async fn relay_commands(
    conn: quinn::Connection,
    mut recv: quinn::RecvStream,
    to_agent: mpsc::Sender<HubCmd>,
    registered: Arc<std::sync::atomic::AtomicBool>,
) -> String {
    let mut buf = Vec::new();
    loop {
        match read_frame::<HubCmd>(&mut recv, &mut buf).await {
            Ok(Some(cmd)) => {
                if !registered.swap(true, Ordering::Relaxed) {
                    info!("registered with the hub");
                }
                if to_agent.send(cmd).await.is_err() {
                    return "the shard stopped".into();
                }
            }
            Ok(None) => return "the hub ended the link".into(),
            Err(e) => {
                if let Some(code) = e.code() {
                    code.close(&conn);
                }
                return e.to_string();
            }
        }
    }
}

fn ended_by(conn: &quinn::Connection, hub: SocketAddr, fallback: String) -> Ended {
    match conn.close_reason() {
        Some(e) => classify(hub, &e),
        None => Ended::Retry(fallback),
    }
}

/// What a connection error means for a shard: a refusal that will not change, a TLS failure,
/// or something to try again.
fn classify(hub: SocketAddr, e: &quinn::ConnectionError) -> Ended {
    use quinn::ConnectionError as E;
    match e {
        E::ApplicationClosed(close) => match CloseCode::from_u64(close.error_code.into_inner()) {
            Some(code) if !code.retryable() => Ended::Fatal(BridgeError::Refused {
                hub,
                code: code.as_u32(),
                reason: code.reason(),
            }),
            Some(code) => Ended::Retry(format!("the hub closed the link: {}", code.reason())),
            None => Ended::Retry(format!("the hub closed the link: {close}")),
        },
        E::ConnectionClosed(close) if is_crypto(u64::from(close.error_code)) => {
            Ended::Fatal(BridgeError::Tls {
                hub,
                cause: close.to_string(),
            })
        }
        E::TransportError(t) if is_crypto(u64::from(t.code)) => Ended::Fatal(BridgeError::Tls {
            hub,
            cause: t.to_string(),
        }),
        other => Ended::Retry(other.to_string()),
    }
}

/// QUIC carries TLS alerts as transport errors 0x100..=0x1ff.
fn is_crypto(code: u64) -> bool {
    (0x100..=0x1ff).contains(&code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_round_trip_and_say_whether_to_retry() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_u64(u64::from(c.as_u32())), Some(c));
        }
        assert_eq!(CloseCode::from_u64(0x99), None);
        assert!(!CloseCode::Version.retryable());
        assert!(
            CloseCode::IdTaken.retryable(),
            "the old link may still be timing out"
        );
        assert!(CloseCode::HubStopping.retryable());
    }

    #[test]
    fn a_frame_is_its_length_then_the_message() {
        let f = frame(&ShardMsg::Drained);
        let len = u32::from_be_bytes(f[..4].try_into().unwrap()) as usize;
        assert_eq!(len, f.len() - 4);
        assert_eq!(
            super::super::decode::<ShardMsg>(&f[4..]).unwrap(),
            ShardMsg::Drained
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_report_budget_refills_with_time() {
        let mut b = Bucket::new(10.0);
        let t0 = crate::clock::tokio_now();
        assert_eq!(
            (0..25).filter(|_| b.take(t0)).count(),
            20,
            "a burst of twice the rate"
        );
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one more a tenth of a second later"
        );
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn an_outbox_keeps_the_newest_load_and_counts_what_it_drops() {
        let counters = Arc::new(BridgeCounters::default());
        let mut held = Held {
            last_load: None,
            outbox: VecDeque::new(),
            cap: 2,
            counters: counters.clone(),
        };
        let load = |sessions| {
            ShardMsg::Load(crate::link::ShardLoad {
                sessions,
                ..Default::default()
            })
        };
        held.keep(load(1));
        held.keep(load(2));
        held.keep(ShardMsg::Prepared { batch: 1 });
        for _ in 0..3 {
            held.keep(ShardMsg::Drained);
        }
        assert_eq!(held.last_load, Some(load(2)));
        assert_eq!(held.outbox.len(), 2);
        assert_eq!(counters.outbox_dropped.load(Ordering::Relaxed), 1);
    }
}
