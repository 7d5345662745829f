//! The shard's end of the control link: dial, register, relay, and the policy of a shard that
//! lost its hub (reconnect with capped backoff, an outbox of reports).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{frame, read_frame, write_frame, CloseCode, COALESCE_MESSAGES, SETUP_TIMEOUT};
use crate::link::channel::HubEnd;
use crate::link::{HubCmd, ShardMsg};

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
            warn!(hub = %dialer.hub, %cause, retry_in_ms = backoff.as_millis() as u64, "no link to the hub; retrying with backoff (sessions keep being served)");
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
            // The agent's messages first: its last ones (`drained`) go out before its end is
            // noticed.
            biased;
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
