//! The tokio driver of a mirror: moves bytes between the [`Mirror`] machine and quinn.
//!
//! One task per endpoint owns that endpoint's own `quinn::Endpoint` (so [`MirrorSender::rebind`]
//! migrates one connection alone) and its connection: it connects (with back-off while the
//! receiver is unreachable or refuses), sends `mirror_hello`, reads `mirror_welcome`, then runs
//! three loops side by side — data (`poll_transmit` → chunk and gap frames on the stream),
//! probes (`poll_probe` → datagrams), and feedback (datagrams → `handle_feedback`, QUIC path
//! counters → `handle_path_stats`). One supervisor task runs `handle_timeout` at
//! `poll_timeout`, drains events (logs them, closes connections it is told to, republishes them
//! to [`MirrorSender::events`]) and wakes the endpoint tasks. The machine sits behind one mutex
//! that no task holds across an await.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::{broadcast, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, info, info_span, warn, Instrument};

use super::machine::{Event, Mirror, MirrorSnapshot, PushError, Transmit};
use super::{EndpointId, MirrorConfig, MirrorError};
use crate::ids::{Seq, StreamName};
use crate::wire::datagram::{encode_probe, Feedback};
use crate::wire::{
    write_chunk, write_control, Chunk, ErrorCode, Frame, FrameReader, Gap, Message, MirrorHello,
};

/// How a mirror sender connects.
#[derive(Clone)]
pub struct SenderOptions {
    pub stream: StreamName,
    pub config: MirrorConfig,
    /// TLS name the receivers' certificate must carry (the cluster name).
    pub server_name: String,
    /// CA the receivers' certificates chain to.
    pub ca: Vec<CertificateDer<'static>>,
    /// The sender's client certificate chain and key (issued by the cluster CA).
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// Local IP of every endpoint's socket.
    pub bind_ip: IpAddr,
    pub connect_timeout: Duration,
    /// QUIC idle timeout (a backstop; failures are found by the health rule).
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for SenderOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderOptions")
            .field("stream", &self.stream)
            .field("config", &self.config)
            .field("server_name", &self.server_name)
            .field("bind_ip", &self.bind_ip)
            .finish_non_exhaustive()
    }
}

impl SenderOptions {
    pub fn new(
        stream: StreamName,
        server_name: impl Into<String>,
        ca: Vec<CertificateDer<'static>>,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        Self {
            stream,
            config: MirrorConfig::default(),
            server_name: server_name.into(),
            ca,
            cert_chain,
            key: Arc::new(key),
            bind_ip: IpAddr::from([0, 0, 0, 0]),
            connect_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Why starting a sender or pushing to it failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SenderError {
    #[error(transparent)]
    Mirror(#[from] MirrorError),
    #[error("TLS setup: {0}")]
    Tls(#[from] crate::security::tls::TlsError),
    #[error(transparent)]
    Push(#[from] PushError),
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}

/// Why one attempt to connect to an endpoint failed. The endpoint's task logs it, hands its
/// text to the machine (the endpoint's `last_error`) and tries again after a back-off.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The local endpoint would not start a connection (bad address, endpoint closed).
    #[error("cannot connect: {0}")]
    Start(#[source] quinn::ConnectError),
    /// The receiver closed the connection with one of the protocol's codes (see
    /// [`ConnectError::code`]).
    #[error("closed by the receiver: {0}")]
    Refused(ErrorCode),
    /// The receiver closed the connection with an application code that is not one of ours.
    #[error("closed by the receiver: closed by peer: {0}")]
    Closed(quinn::ApplicationClose),
    /// The receiver's QUIC stack aborted the connection.
    #[error("refused by the receiver: {0}")]
    Aborted(quinn::ConnectionClose),
    /// The handshake failed on a TLS or transport error (a certificate the receiver or this
    /// side does not trust, say). Always `ConnectionError::TransportError` (quinn does not
    /// export the inner type).
    #[error("refused (TLS): {0}")]
    Handshake(#[source] quinn::ConnectionError),
    /// Nothing answered the handshake.
    #[error("unreachable: the handshake timed out")]
    HandshakeTimedOut,
    /// Any other end of the connection before the welcome.
    #[error(transparent)]
    Connection(quinn::ConnectionError),
    #[error("opening the stream: {0}")]
    OpenStream(#[source] quinn::ConnectionError),
    #[error("sending hello: {0}")]
    Hello(#[source] quinn::WriteError),
    /// The receiver answered the hello with something else than `mirror_welcome` (`kind` is
    /// the frame's kind; `None` when the stream ended).
    #[error("unexpected answer {kind:?}")]
    UnexpectedAnswer { kind: Option<&'static str> },
    #[error("reading the welcome: {0}")]
    Welcome(#[source] crate::wire::WireError),
    /// The welcome's `last_seq` is [`Seq::MAX`], which no chunk carries; the connection is
    /// closed with `SEQ_EXHAUSTED`.
    #[error("the welcome claims sequence {}, which no chunk carries", Seq::MAX)]
    WelcomeSeqExhausted,
    /// The whole attempt (handshake, hello, welcome) took longer than `connect_timeout`.
    #[error("unreachable: no answer within {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// Classifies how a connection ended before (or while) the mirror was welcomed.
    fn closed(e: quinn::ConnectionError) -> Self {
        if let Some(code) = ErrorCode::of_close(&e) {
            return Self::Refused(code);
        }
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => Self::Closed(c),
            quinn::ConnectionError::ConnectionClosed(c) => Self::Aborted(c),
            e @ quinn::ConnectionError::TransportError(_) => Self::Handshake(e),
            quinn::ConnectionError::TimedOut => Self::HandshakeTimedOut,
            other => Self::Connection(other),
        }
    }

    /// The code the receiver closed the connection with, when it is one of ours.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Refused(code) => Some(*code),
            _ => None,
        }
    }
}

struct EpCtl {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    wake: Notify,
    /// Set with `drop_conn`: the connection must close; `removed` says it must not come back.
    drop_conn: Notify,
    removed: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    machine: Mutex<Mirror>,
    opts: SenderOptions,
    quic: quinn::ClientConfig,
    eps: Mutex<HashMap<EndpointId, Arc<EpCtl>>>,
    wake_supervisor: Notify,
    space: Notify,
    events: broadcast::Sender<Event>,
    stopped: AtomicBool,
    /// The stream's publisher finished after this sequence: told to every receiver once it
    /// has nothing else to send.
    end: tokio::sync::watch::Sender<Option<Option<Seq>>>,
}

impl Shared {
    fn machine(&self) -> MutexGuard<'_, Mirror> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn eps(&self) -> MutexGuard<'_, HashMap<EndpointId, Arc<EpCtl>>> {
        self.eps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wake_all(&self) {
        for ep in self.eps().values() {
            ep.wake.notify_one();
        }
        self.space.notify_waiters();
    }

    /// After a machine input: events go to the supervisor, which wakes everyone.
    fn after_input(&self, m: &Mirror) {
        if m.has_events() {
            self.wake_supervisor.notify_one();
        }
    }
}

/// A running mirror of one stream. Dropping it stops the mirror (see [`MirrorSender::stop`] for
/// a graceful end).
pub struct MirrorSender {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

impl MirrorSender {
    /// Starts mirroring `opts.stream` to `endpoints`, best first. Must run in a tokio runtime.
    pub fn start(opts: SenderOptions, endpoints: &[SocketAddr]) -> Result<Self, SenderError> {
        let machine = Mirror::new(opts.config, endpoints, crate::clock::now())?;
        let crypto = crate::security::tls::mirror_client_crypto(
            &opts.ca,
            opts.cert_chain.clone(),
            opts.key.clone_key(),
        )?;
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
            .map_err(|e| crate::security::tls::TlsError::Quic(e.to_string()))?;
        let mut quic = quinn::ClientConfig::new(Arc::new(quic));
        quic.transport_config(crate::security::tls::transport_config(opts.idle_timeout));
        let shared = Arc::new(Shared {
            machine: Mutex::new(machine),
            opts,
            quic,
            eps: Mutex::new(HashMap::new()),
            wake_supervisor: Notify::new(),
            space: Notify::new(),
            events: broadcast::channel(1024).0,
            stopped: AtomicBool::new(false),
            end: tokio::sync::watch::channel(None).0,
        });
        let list = shared.machine().endpoints();
        for (id, addr) in list {
            spawn_endpoint(&shared, id, addr)?;
        }
        let span = info_span!("mirror", stream = %shared.opts.stream);
        let supervisor = tokio::spawn(supervise(shared.clone()).instrument(span));
        info!(stream = %shared.opts.stream, endpoints = endpoints.len(), mode = %shared.opts.config.mode, "mirror started");
        Ok(MirrorSender { shared, supervisor })
    }

    pub fn stream(&self) -> &StreamName {
        &self.shared.opts.stream
    }

    /// Pushes the provider's next chunk. Under overflow policy `block` it waits while the
    /// active endpoint is too far behind.
    pub async fn push(&self, chunk: Chunk) -> Result<(), SenderError> {
        self.push_keyed(None, chunk).await
    }

    /// Pushes a chunk carrying the value of `key` (for overflow policy `conflate`).
    pub async fn push_keyed(&self, key: Option<u64>, chunk: Chunk) -> Result<(), SenderError> {
        loop {
            if self.shared.stopped.load(Ordering::Relaxed) {
                return Err(MirrorError::Stopped.into());
            }
            let space = self.shared.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            let r = {
                let mut m = self.shared.machine();
                let r = m.push(chunk.clone(), key, crate::clock::now());
                self.shared.after_input(&m);
                r
            };
            match r {
                Ok(()) => {
                    for ep in self.shared.eps().values() {
                        ep.wake.notify_one();
                    }
                    return Ok(());
                }
                Err(PushError::Full) => {
                    // Re-checked at least every 50 ms in case a wake-up was missed.
                    let _ = tokio::time::timeout(Duration::from_millis(50), space).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The stream's publisher finished after `last`: every receiver is sent a `stream_end`
    /// once it has been sent everything before (receivers that connect later too).
    pub fn push_end(&self, last: Option<Seq>) {
        self.shared.end.send_replace(Some(last));
        self.shared.wake_all();
    }

    /// The provider itself lost `from..to`; receivers get a `gap`.
    pub fn push_gap(&self, from: Seq, to: Seq) {
        self.shared.machine().push_gap(from, to);
        self.shared.wake_all();
    }

    /// Adds an endpoint while the stream runs, at `rank` (0 is best; last when `None`).
    pub fn add_endpoint(
        &self,
        addr: SocketAddr,
        rank: Option<usize>,
    ) -> Result<EndpointId, SenderError> {
        let id = self
            .shared
            .machine()
            .add_endpoint(addr, rank, crate::clock::now())?;
        if let Err(e) = spawn_endpoint(&self.shared, id, addr) {
            let _ = self
                .shared
                .machine()
                .remove_endpoint(id, crate::clock::now());
            return Err(e.into());
        }
        info!(%addr, %id, "endpoint added");
        Ok(id)
    }

    /// Removes an endpoint while the stream runs (see [`Mirror::remove_endpoint`] for the rules).
    pub fn remove_endpoint(&self, id: EndpointId) -> Result<(), SenderError> {
        {
            let mut m = self.shared.machine();
            m.remove_endpoint(id, crate::clock::now())?;
            self.shared.after_input(&m);
        }
        self.shared.wake_all();
        info!(%id, "endpoint removal requested");
        Ok(())
    }

    /// The id of the endpoint at `addr`.
    pub fn endpoint_id(&self, addr: SocketAddr) -> Option<EndpointId> {
        self.shared
            .machine()
            .endpoints()
            .into_iter()
            .find(|(_, a)| *a == addr)
            .map(|(id, _)| id)
    }

    pub fn snapshot(&self) -> MirrorSnapshot {
        self.shared.machine().snapshot(crate::clock::now())
    }

    /// Every event of the machine (switches, degradations, gaps), as it happens.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The local address of the socket that carries endpoint `id`'s connection.
    pub fn local_addr(&self, id: EndpointId) -> Option<SocketAddr> {
        let ep = self.shared.eps().get(&id).cloned()?;
        ep.endpoint.local_addr().ok()
    }

    /// Moves endpoint `id`'s connection to a new local socket (QUIC connection migration); the
    /// receiver validates the new path and the stream goes on.
    pub fn rebind(&self, id: EndpointId, socket: std::net::UdpSocket) -> Result<(), SenderError> {
        let ep = self
            .shared
            .eps()
            .get(&id)
            .cloned()
            .ok_or(MirrorError::UnknownEndpoint(id))?;
        ep.endpoint.rebind(socket)?;
        info!(%id, local = ep.endpoint.local_addr().ok().map(display), "rebound to a new socket");
        Ok(())
    }

    /// Whether every pushed chunk has been acknowledged (see [`Mirror::settled`]).
    pub fn settled(&self) -> bool {
        self.shared.machine().settled()
    }

    /// Ends the mirror gracefully: waits up to `grace` for every pushed chunk to be
    /// acknowledged, then closes every connection with `GOING_AWAY`.
    pub async fn stop(self, grace: Duration) {
        let until = crate::clock::now() + grace;
        while crate::clock::now() < until && !self.shared.machine().settled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.shutdown(ErrorCode::GoingAway);
    }

    fn shutdown(&self, code: ErrorCode) {
        if self.shared.stopped.swap(true, Ordering::Relaxed) {
            return;
        }
        self.supervisor.abort();
        for ep in self.shared.eps().drain().map(|(_, e)| e) {
            ep.removed.store(true, Ordering::Relaxed);
            if let Some(t) = ep.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
                t.abort();
            }
            ep.endpoint.close(code.varint(), code.reason().as_bytes());
        }
        self.shared.space.notify_waiters();
        info!(stream = %self.shared.opts.stream, "mirror stopped");
    }
}

impl Drop for MirrorSender {
    fn drop(&mut self) {
        self.shutdown(ErrorCode::GoingAway);
    }
}

fn spawn_endpoint(shared: &Arc<Shared>, id: EndpointId, addr: SocketAddr) -> std::io::Result<()> {
    let local = SocketAddr::new(shared.opts.bind_ip, 0);
    let mut endpoint = quinn::Endpoint::client(local)?;
    endpoint.set_default_client_config(shared.quic.clone());
    let ctl = Arc::new(EpCtl {
        addr,
        endpoint,
        wake: Notify::new(),
        drop_conn: Notify::new(),
        removed: AtomicBool::new(false),
        task: Mutex::new(None),
    });
    let span = info_span!("endpoint", %id, %addr);
    let task = tokio::spawn(endpoint_task(shared.clone(), id, ctl.clone()).instrument(span));
    *ctl.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    shared.eps().insert(id, ctl);
    Ok(())
}

/// tokio's timer rounds up to whole milliseconds and a busy machine adds more; a silence
/// deadline is therefore slept to within this margin and the rest is waited by yielding.
const PRECISE_TAIL: Duration = Duration::from_millis(3);

async fn supervise(shared: Arc<Shared>) {
    loop {
        let (deadline, silence) = {
            let m = shared.machine();
            (m.poll_timeout(), m.silence_deadline())
        };
        let precise = silence.filter(|s| *s <= deadline);
        let sleep_to = precise.map_or(deadline, |s| s.checked_sub(PRECISE_TAIL).unwrap_or(s));
        let woken = tokio::select! {
            _ = tokio::time::sleep_until(sleep_to.into()) => false,
            _ = shared.wake_supervisor.notified() => true,
        };
        if let (Some(s), false) = (precise, woken) {
            // Only reached when an endpoint is really about to cross its bound: at most the
            // tail is spent yielding, once per detection.
            while crate::clock::now() < s {
                tokio::task::yield_now().await;
            }
        }
        let events: Vec<Event> = {
            let mut m = shared.machine();
            m.handle_timeout(crate::clock::now());
            std::iter::from_fn(|| m.poll_event()).collect()
        };
        for ev in events {
            log_event(&ev);
            if let Event::DropConnection { ep, removed } = ev {
                let ctl = if removed {
                    shared.eps().remove(&ep)
                } else {
                    shared.eps().get(&ep).cloned()
                };
                if let Some(ctl) = ctl {
                    ctl.removed.fetch_or(removed, Ordering::Relaxed);
                    ctl.drop_conn.notify_one();
                }
            }
            let _ = shared.events.send(ev);
        }
        shared.wake_all();
    }
}

fn log_event(ev: &Event) {
    match ev {
        Event::Degraded {
            ep,
            reason,
            silence,
            bound,
            ..
        } => warn!(
            %ep,
            %reason,
            silence_ms = silence.as_millis() as u64,
            bound_ms = bound.as_millis() as u64,
            "endpoint degraded"
        ),
        Event::Switched {
            from,
            to,
            cause,
            from_seq,
            ..
        } => info!(
            from = from.map(display),
            %to,
            %cause,
            from_seq = from_seq.map(|s| s.get()),
            "active endpoint switched"
        ),
        Event::NoEndpoint => warn!("no endpoint can take the stream; buffering"),
        Event::Gap { ep, from, to } => warn!(%ep, %from, %to, "gap reported to a receiver"),
        other => debug!(?other, "mirror event"),
    }
}

/// Connects endpoint `id` again and again until it is removed or the mirror stops.
async fn endpoint_task(shared: Arc<Shared>, id: EndpointId, ctl: Arc<EpCtl>) {
    let mut backoff = Duration::from_millis(50);
    while !ctl.removed.load(Ordering::Relaxed) && !shared.stopped.load(Ordering::Relaxed) {
        match connect(&shared, &ctl).await {
            Ok((conn, send, last_seq)) => {
                backoff = Duration::from_millis(50);
                {
                    let mut m = shared.machine();
                    m.handle_connected(id, last_seq, crate::clock::now());
                    shared.after_input(&m);
                }
                shared.wake_all();
                debug!(?last_seq, "connected");
                // A drop request that raced with the end of the previous connection is stale.
                let _ = tokio::time::timeout(Duration::ZERO, ctl.drop_conn.notified()).await;
                let (code, reason) = if ctl.removed.load(Ordering::Relaxed) {
                    (ErrorCode::EndpointRemoved, "removed".to_string())
                } else {
                    run_connection(&shared, id, &ctl, &conn, send).await
                };
                conn.close(code.varint(), code.reason().as_bytes());
                {
                    let mut m = shared.machine();
                    m.handle_closed(id, reason, crate::clock::now());
                    shared.after_input(&m);
                }
                shared.wake_all();
            }
            Err(e) => {
                debug!(error = %e, "connect failed");
                shared
                    .machine()
                    .handle_connect_failed(id, e.to_string(), crate::clock::now());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = ctl.drop_conn.notified() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn connect(
    shared: &Shared,
    ctl: &EpCtl,
) -> Result<(quinn::Connection, quinn::SendStream, Option<Seq>), ConnectError> {
    let opts = &shared.opts;
    let attempt = async {
        let conn = ctl
            .endpoint
            .connect(ctl.addr, &opts.server_name)
            .map_err(ConnectError::Start)?
            .await
            .map_err(ConnectError::closed)?;
        let (mut send, recv) = conn.open_bi().await.map_err(ConnectError::OpenStream)?;
        let hello = Message::MirrorHello(MirrorHello {
            stream: opts.stream.clone(),
        });
        write_control(&mut send, &hello)
            .await
            .map_err(ConnectError::Hello)?;
        let mut reader = FrameReader::new(recv);
        // When the receiver closed the connection, its reason explains the answer best.
        match reader.next().await {
            Ok(Some(Frame::Control(Message::MirrorWelcome(w)))) => match w.last_seq {
                Some(l) if !l.is_chunk_seq() => {
                    let code = ErrorCode::SeqExhausted;
                    conn.close(code.varint(), code.reason().as_bytes());
                    Err(ConnectError::WelcomeSeqExhausted)
                }
                last_seq => Ok((conn, send, last_seq)),
            },
            Ok(other) => Err(conn.close_reason().map_or_else(
                || ConnectError::UnexpectedAnswer {
                    kind: other.map(|f| f.kind()),
                },
                ConnectError::closed,
            )),
            Err(e) => Err(conn
                .close_reason()
                .map_or_else(|| ConnectError::Welcome(e), ConnectError::closed)),
        }
    };
    match tokio::time::timeout(opts.connect_timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(opts.connect_timeout)),
    }
}

/// Runs one connection until it fails or is dropped; returns the code to close with and why.
async fn run_connection(
    shared: &Shared,
    id: EndpointId,
    ctl: &EpCtl,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
) -> (ErrorCode, String) {
    let data = async {
        // The end this connection was told (one known before it connected is told too).
        let mut end = shared.end.subscribe();
        let mut told = None;
        loop {
            let want = *end.borrow_and_update();
            let t = shared.machine().poll_transmit(id, crate::clock::now());
            let r = match t {
                Transmit::Chunk(c) => write_chunk(&mut send, &c).await,
                Transmit::Gap { from, to } => {
                    write_control(&mut send, &Message::Gap(Gap { from, to })).await
                }
                // Nothing else to send: the end, if there is one.
                Transmit::Wait(_) if want.is_some() && want != told => {
                    told = want;
                    let last = want.unwrap_or(None);
                    let m = Message::StreamEnd(crate::wire::StreamEnd { last_seq: last });
                    write_control(&mut send, &m).await
                }
                Transmit::Wait(until) => {
                    tokio::select! {
                        _ = ctl.wake.notified() => {}
                        _ = tokio::time::sleep_until(until.into()) => {}
                        _ = end.changed() => {}
                    }
                    Ok(())
                }
            };
            if let Err(e) = r {
                return format!("write failed: {e}");
            }
        }
    };
    let probes = async {
        loop {
            let p = shared.machine().poll_probe(id, crate::clock::now());
            match p {
                Ok(probe) => {
                    if let Err(e) = conn.send_datagram(encode_probe(probe)) {
                        return format!("cannot send probes: {e}");
                    }
                }
                Err(until) => tokio::time::sleep_until(until.into()).await,
            }
        }
    };
    let feedback = async {
        let mut stats = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                d = conn.read_datagram() => {
                    let d = match d {
                        Ok(d) => d,
                        Err(e) => return format!("connection lost: {e}"),
                    };
                    // Anything else from the receiver is ignored.
                    if let Some(fb) = Feedback::decode(&d) {
                        let mut m = shared.machine();
                        m.handle_feedback(id, fb.echo, fb.acked, crate::clock::now());
                        shared.after_input(&m);
                        drop(m);
                        shared.space.notify_waiters();
                    }
                }
                _ = stats.tick() => {
                    let s = conn.stats().path;
                    shared.machine().handle_path_stats(id, s.sent_packets, s.lost_packets);
                }
            }
        }
    };
    tokio::select! {
        r = data => (ErrorCode::NoError, r),
        r = probes => (ErrorCode::NoError, r),
        r = feedback => (ErrorCode::NoError, r),
        _ = ctl.drop_conn.notified() => {
            if ctl.removed.load(Ordering::Relaxed) {
                (ErrorCode::EndpointRemoved, "removed".into())
            } else {
                (ErrorCode::HeartbeatTimeout, "degraded too long; reconnecting".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app_close(code: u32) -> quinn::ConnectionError {
        quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(code),
            reason: bytes::Bytes::from_static(b"bye"),
        })
    }

    #[test]
    fn connect_errors_keep_the_receivers_code_and_read_as_before() {
        let ours = ConnectError::closed(app_close(ErrorCode::EndpointRemoved as u32));
        assert_eq!(ours.code(), Some(ErrorCode::EndpointRemoved));
        assert_eq!(
            ours.to_string(),
            format!("closed by the receiver: {}", ErrorCode::EndpointRemoved)
        );
        let theirs = ConnectError::closed(app_close(0x3fff_0000));
        assert!(matches!(theirs, ConnectError::Closed(_)), "{theirs:?}");
        assert_eq!(theirs.code(), None);
        assert!(
            theirs
                .to_string()
                .starts_with("closed by the receiver: closed by peer: "),
            "{theirs}"
        );
        let silent = ConnectError::closed(quinn::ConnectionError::TimedOut);
        assert_eq!(silent.to_string(), "unreachable: the handshake timed out");
        assert_eq!(
            ConnectError::Timeout(Duration::from_secs(2)).to_string(),
            "unreachable: no answer within 2s"
        );
        assert_eq!(
            ConnectError::UnexpectedAnswer { kind: None }.to_string(),
            "unexpected answer None"
        );
    }
}
