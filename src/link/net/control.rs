//! The hub's end of the control link: the listener, one task per shard connection, the
//! report budget.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::{debug, info, warn, Instrument};

use super::{
    frame, read_frame, transport, CloseCode, FrameError, OnceLog, COALESCE_BYTES, REPORT_BUDGET,
    SETUP_TIMEOUT,
};
use crate::hub::links::Links;
use crate::link::channel::{HubEnd, COMMAND_CAPACITY, UPLINK_CAPACITY};
use crate::link::{HubCmd, ShardMsg};

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
    // A failure before registration: its cause, and whether it was the shard's frame (counted
    // as malformed) rather than the handshake.
    let setup = async {
        let conn = incoming
            .await
            .map_err(|e| (format!("handshake: {e}"), false))?;
        let (send, mut recv) = conn
            .accept_bi()
            .await
            .map_err(|e| (format!("no link stream: {e}"), false))?;
        let mut buf = Vec::new();
        let first: Option<ShardMsg> = match read_frame(&mut recv, &mut buf).await {
            Ok(m) => m,
            Err(e) => {
                let code = e.code();
                if let Some(code) = code {
                    code.close(&conn);
                }
                return Err((format!("first frame: {e}"), code.is_some()));
            }
        };
        Ok::<_, (String, bool)>((conn, send, recv, first, buf))
    };
    let (conn, send, recv, first, buf) = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(x)) => x,
        Ok(Err((cause, malformed))) => {
            let counter = if malformed {
                &counters.malformed
            } else {
                &counters.handshakes_failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(cause);
        }
        Err(_) => {
            counters.handshakes_failed.fetch_add(1, Ordering::Relaxed);
            return Err("setup timed out".into());
        }
    };
    let Some(first) = first else {
        counters.malformed.fetch_add(1, Ordering::Relaxed);
        CloseCode::NotRegistered.close(&conn);
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
    let outcome = read_reports(&conn, recv, buf, msg_tx, counters, (&links, shard)).await;
    // The reader is done: the writer ends when the links drop their sender, or now.
    writer.abort();
    match outcome {
        Ok(()) => {
            CloseCode::Done.close(&conn);
            Ok(())
        }
        // A bad frame closed the connection with its code already.
        Err(e) if e.code().is_some() => Err(format!("shard {}: {e}", shard.0)),
        Err(_) => Ok(()),
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
    (links, shard): (&Links, crate::ids::ShardId),
) -> Result<(), FrameError> {
    let mut bucket = Bucket::new(REPORT_BUDGET);
    let mut flooding = false;
    // A bad frame closes the connection with its code here, before the links let go of the
    // link (whose writer would close it as done).
    let bad = |code: CloseCode, e: FrameError| {
        counters.malformed.fetch_add(1, Ordering::Relaxed);
        code.close(conn);
        e
    };
    loop {
        // What the shard sent before it closed (its last load, `drained`) is read first.
        let msg = tokio::select! {
            biased;
            m = read_frame::<ShardMsg>(&mut recv, &mut buf) => match m {
                Ok(m) => m,
                Err(e) => return Err(match e.code() {
                    Some(code) => bad(code, e),
                    None => e,
                }),
            },
            _ = conn.closed() => None,
        };
        let Some(msg) = msg else { return Ok(()) };
        match &msg {
            ShardMsg::Register(_) => {
                let e = FrameError::Malformed("registered twice".into());
                return Err(bad(CloseCode::NotRegistered, e));
            }
            // Each load report refreshes the link's round trip (grants use it, see
            // `Links::prepare`).
            ShardMsg::Load(_) if bucket.peek() => links.note_link_rtt(shard, conn.rtt()),
            _ => {}
        }
        match &msg {
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

    /// Whether a token is left (without taking one).
    fn peek(&self) -> bool {
        self.tokens >= 1.0
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

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
}
