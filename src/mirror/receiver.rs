//! A mirror receiver: a QUIC listener (ALPN `shoal-mirror/1`) that accepts mirrored streams
//! from senders holding a client certificate of the cluster CA, delivers each stream's chunks to
//! the application in sequence order — de-duplicated, gaps reported — and acknowledges them.
//!
//! Per connection: the first bidirectional stream starts with `mirror_hello{stream}`; the
//! receiver answers `mirror_welcome{last_seq}` (what its application already took of that stream, from
//! any earlier connection), then reads chunk and `gap` frames. Probes arrive as datagrams and
//! are echoed at once with the cumulative acknowledgement; acknowledgements also go out within
//! `ack_interval` of a delivery. A stream's position is shared by all connections carrying it,
//! so a sender that fails over back to this receiver, or reconnects, never gets a chunk
//! delivered twice.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, Instrument};

use crate::client::ClientError;
use crate::ids::{Seq, StreamName};
use crate::wire::datagram::{decode_probe, Feedback};
use crate::wire::{
    write_control, Chunk, ErrorCode, Frame, FrameReader, Message, MirrorWelcome, WireError,
};

/// How a receiver listens.
#[derive(Clone)]
pub struct ReceiverOptions {
    pub listen: SocketAddr,
    /// The receiver's certificate chain and key (senders check it against the cluster CA).
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    /// CA that senders' client certificates must chain to.
    pub client_ca: Vec<CertificateDer<'static>>,
    /// Check synthetic (`synth/…`) payloads against their generator.
    pub verify: bool,
    /// Accept only this stream (others are closed with `UNKNOWN_STREAM`).
    pub only_stream: Option<StreamName>,
    /// Longest delay of an acknowledgement after a delivery.
    pub ack_interval: Duration,
    /// Feedback goes out at least this often even with nothing new, so that the sender can
    /// tell a quiet stream from a dead path (must stay well under the sender's silence floor).
    pub feedback_interval: Duration,
    /// Events buffered towards the application; a full buffer slows the sender down.
    pub channel_capacity: usize,
    pub idle_timeout: Duration,
}

impl ReceiverOptions {
    pub fn new(
        listen: SocketAddr,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        client_ca: Vec<CertificateDer<'static>>,
    ) -> Self {
        Self {
            listen,
            cert_chain,
            key: Arc::new(key),
            client_ca,
            verify: false,
            only_stream: None,
            ack_interval: Duration::from_millis(2),
            feedback_interval: Duration::from_millis(10),
            channel_capacity: 4096,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// What a receiver hands to the application, per stream in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// A sender connected for `stream`.
    Connected {
        stream: StreamName,
        remote: SocketAddr,
    },
    Chunk {
        stream: StreamName,
        chunk: Chunk,
    },
    /// Chunks `from..to` of `stream` will not arrive (the sender said so, or skipped them).
    Gap {
        stream: StreamName,
        from: Seq,
        to: Seq,
    },
    Disconnected {
        stream: StreamName,
        remote: SocketAddr,
        reason: String,
    },
    /// The stream's publisher finished after `last` (`stream_end` from the sender).
    End {
        stream: StreamName,
        last: Option<Seq>,
    },
}

/// Counters of one stream at a receiver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReceivedStats {
    pub delivered: u64,
    /// Chunks that arrived again and were dropped.
    pub duplicates: u64,
    /// Chunks reported missing (gap messages and unannounced jumps).
    pub missing: u64,
    /// Synthetic payloads that failed verification (with `verify`).
    pub verify_failures: u64,
    pub last_seq: Option<Seq>,
    /// Newest sequence the application has taken (it asked for the event after it): what the
    /// receiver acknowledges, so a crash never loses an acknowledged chunk.
    pub acked_seq: Option<Seq>,
    pub connections: u64,
    /// Times a sender's address changed under a live connection (QUIC migration).
    pub migrations: u64,
}

#[derive(Default)]
struct Streams {
    map: Mutex<HashMap<StreamName, ReceivedStats>>,
    /// The application took events: acknowledgements can advance.
    taken: tokio::sync::Notify,
}

impl Streams {
    fn with<R>(&self, s: &StreamName, f: impl FnOnce(&mut ReceivedStats) -> R) -> R {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(s.clone()).or_default())
    }
}

/// Reads a [`Receiver`]'s per-stream counters.
#[derive(Clone)]
pub struct StatsHandle(Arc<Streams>);

impl StatsHandle {
    pub fn get(&self) -> BTreeMap<StreamName, ReceivedStats> {
        let map = self.0.map.lock().unwrap_or_else(|p| p.into_inner());
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// A running receiver. Dropping it closes the listener.
pub struct Receiver {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    rx: mpsc::Receiver<ReceiverEvent>,
    /// The last event handed out; acknowledged when the application asks for the next one.
    untaken: Option<(StreamName, Seq)>,
    streams: Arc<Streams>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Binds the listener. Must run in a tokio runtime.
    pub fn bind(opts: ReceiverOptions) -> Result<Receiver, ClientError> {
        let crypto = crate::security::tls::mirror_server_crypto(
            opts.cert_chain.clone(),
            opts.key.clone_key(),
            &opts.client_ca,
        )?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
            .map_err(|e| crate::security::tls::TlsError::Quic(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(crate::security::tls::transport_config(opts.idle_timeout));
        let endpoint = quinn::Endpoint::server(server, opts.listen)?;
        let addr = endpoint.local_addr()?;
        let (tx, rx) = mpsc::channel(opts.channel_capacity.max(1));
        let streams = Arc::new(Streams::default());
        let task = tokio::spawn(
            accept_loop(endpoint.clone(), Arc::new(opts), tx, streams.clone())
                .instrument(info_span!("receiver", %addr)),
        );
        info!(%addr, "mirror receiver listening");
        Ok(Receiver {
            endpoint,
            addr,
            rx,
            untaken: None,
            streams,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The next event; `None` once the receiver is closed. Asking for it acknowledges the
    /// previous one to the sender: an application that crashes while handling a chunk gets it
    /// again from the next receiver.
    pub async fn next(&mut self) -> Option<ReceiverEvent> {
        if let Some((stream, seq)) = self.untaken.take() {
            self.streams.with(&stream, |s| {
                s.acked_seq = Some(s.acked_seq.map_or(seq, |a| a.max(seq)));
            });
            self.streams.taken.notify_waiters();
        }
        let ev = self.rx.recv().await?;
        self.untaken = match &ev {
            ReceiverEvent::Chunk { stream, chunk } => Some((stream.clone(), chunk.seq)),
            // A gap is never empty (`to > from`), so `to - 1` exists.
            ReceiverEvent::Gap { stream, to, .. } => to.prev().map(|p| (stream.clone(), p)),
            _ => None,
        };
        Some(ev)
    }

    /// Per-stream counters.
    pub fn stats(&self) -> BTreeMap<StreamName, ReceivedStats> {
        self.stats_handle().get()
    }

    /// A handle that reads the counters while something else owns the receiver.
    pub fn stats_handle(&self) -> StatsHandle {
        StatsHandle(self.streams.clone())
    }

    /// Closes every connection and the listener.
    pub fn close(&self) {
        let code = ErrorCode::GoingAway;
        self.endpoint.close(code.varint(), code.reason().as_bytes());
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
        self.close();
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    opts: Arc<ReceiverOptions>,
    tx: mpsc::Sender<ReceiverEvent>,
    streams: Arc<Streams>,
) {
    while let Some(incoming) = endpoint.accept().await {
        let (opts, tx, streams) = (opts.clone(), tx.clone(), streams.clone());
        let span = info_span!("sender", remote = %incoming.remote_address());
        tokio::spawn(
            async move {
                match incoming.await {
                    Ok(conn) => serve(conn, &opts, &tx, &streams).await,
                    // A sender without a valid client certificate ends here.
                    Err(e) => debug!(error = %e, "handshake failed"),
                }
            }
            .instrument(span),
        );
    }
}

fn close(conn: &quinn::Connection, code: ErrorCode) {
    conn.close(code.varint(), code.reason().as_bytes());
}

async fn serve(
    conn: quinn::Connection,
    opts: &ReceiverOptions,
    tx: &mpsc::Sender<ReceiverEvent>,
    streams: &Streams,
) {
    let first = tokio::time::timeout(Duration::from_secs(5), async {
        let (send, recv) = conn.accept_bi().await?;
        let mut reader = FrameReader::new(recv);
        let frame = reader.next().await;
        Ok::<_, quinn::ConnectionError>((send, reader, frame))
    })
    .await;
    let (mut send, reader, frame) = match first {
        Err(_) => return close(&conn, ErrorCode::Timeout),
        Ok(Err(e)) => return debug!(error = %e, "closed before hello"),
        Ok(Ok(r)) => r,
    };
    let stream = match frame {
        Ok(Some(Frame::Control(Message::MirrorHello(h)))) => h.stream,
        Ok(_) => return close(&conn, ErrorCode::ProtocolViolation),
        Err(e) => return close(&conn, e.code()),
    };
    if opts.only_stream.as_ref().is_some_and(|s| *s != stream) {
        return close(&conn, ErrorCode::UnknownStream);
    }
    // What the application took: chunks only queued towards it are sent again (and dropped
    // as duplicates here) rather than counted as delivered.
    let last_seq = streams.with(&stream, |s| {
        s.connections += 1;
        s.acked_seq
    });
    let welcome = Message::MirrorWelcome(MirrorWelcome { last_seq });
    if write_control(&mut send, &welcome).await.is_err() {
        return;
    }
    let remote = conn.remote_address();
    info!(%stream, %remote, last_seq = last_seq.map(|s| s.get()), "sender connected");
    let _ = tx
        .send(ReceiverEvent::Connected {
            stream: stream.clone(),
            remote,
        })
        .await;
    let mut s = StreamSession {
        conn: &conn,
        stream: &stream,
        streams,
        tx,
        verify: opts.verify && stream.is_synthetic(),
        seed: crate::synthetic::stream_seed(&stream),
        remote,
    };
    let (code, reason) = s
        .run(reader, opts.ack_interval, opts.feedback_interval)
        .await;
    close(&conn, code);
    info!(%stream, %reason, "sender gone");
    let _ = tx
        .send(ReceiverEvent::Disconnected {
            stream,
            remote,
            reason,
        })
        .await;
}

struct StreamSession<'a> {
    conn: &'a quinn::Connection,
    stream: &'a StreamName,
    streams: &'a Streams,
    tx: &'a mpsc::Sender<ReceiverEvent>,
    verify: bool,
    seed: u64,
    remote: SocketAddr,
}

impl StreamSession<'_> {
    fn feedback(&self, echo: Option<u64>) {
        let acked = self.streams.with(self.stream, |s| s.acked_seq);
        // A full datagram buffer only delays the next feedback; nothing to do about it.
        let _ = self.conn.send_datagram(Feedback { echo, acked }.encode());
    }

    fn note_migration(&mut self) {
        let now = self.conn.remote_address();
        if now != self.remote {
            info!(from = %self.remote, to = %now, "sender migrated");
            self.remote = now;
            self.streams.with(self.stream, |s| s.migrations += 1);
        }
    }

    async fn run(
        &mut self,
        mut reader: FrameReader<quinn::RecvStream>,
        ack_interval: Duration,
        feedback_interval: Duration,
    ) -> (ErrorCode, String) {
        let mut dirty = false;
        let mut flush = tokio::time::interval(ack_interval);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heartbeat = tokio::time::interval(feedback_interval.max(Duration::from_millis(1)));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Events waiting for room towards the application. While any wait, no frame is read
        // (QUIC flow control slows the sender down) but probes and feedback keep flowing, so a
        // slow application never looks like a dead path.
        let mut pending: VecDeque<ReceiverEvent> = VecDeque::new();
        loop {
            tokio::select! {
                biased;
                d = self.conn.read_datagram() => match d {
                    Ok(d) => {
                        if let Some(id) = decode_probe(&d) {
                            self.note_migration();
                            self.feedback(Some(id));
                            dirty = false;
                        }
                    }
                    Err(e) => return (ErrorCode::NoError, format!("connection closed: {e}")),
                },
                _ = self.streams.taken.notified() => dirty = true,
                _ = heartbeat.tick() => {
                    self.feedback(None);
                    dirty = false;
                }
                _ = flush.tick(), if dirty => {
                    self.feedback(None);
                    dirty = false;
                }
                permit = self.tx.reserve(), if !pending.is_empty() => {
                    let Ok(permit) = permit else {
                        return (ErrorCode::GoingAway, "the receiver was closed".into());
                    };
                    if let Some(ev) = pending.pop_front() {
                        permit.send(ev);
                    }
                }
                frame = reader.next(), if pending.is_empty() => {
                    let frame = match frame {
                        Ok(Some(f)) => f,
                        Ok(None) => return (ErrorCode::NoError, "sender finished".into()),
                        Err(WireError::Io(e)) => return (ErrorCode::NoError, format!("stream ended: {e}")),
                        Err(e) => return (e.code(), e.to_string()),
                    };
                    match frame {
                        Frame::Chunk(c) => self.chunk(c, &mut pending),
                        Frame::Control(Message::Gap(g)) => self.gap(g.from, g.to, &mut pending),
                        Frame::Control(Message::Heartbeat(_)) => {}
                        Frame::Control(Message::StreamEnd(e)) => pending.push_back(ReceiverEvent::End {
                            stream: self.stream.clone(),
                            last: e.last_seq,
                        }),
                        Frame::Control(other) => {
                            return (ErrorCode::ProtocolViolation, format!("unexpected {}", other.kind()));
                        }
                    }
                    dirty = true;
                }
            }
        }
    }

    fn chunk(&mut self, c: Chunk, out: &mut VecDeque<ReceiverEvent>) {
        enum Verdict {
            Duplicate,
            Deliver { jump_from: Option<Seq> },
        }
        let v = self.streams.with(self.stream, |s| match s.last_seq {
            Some(l) if c.seq <= l => {
                s.duplicates += 1;
                Verdict::Duplicate
            }
            last => {
                // `l < c.seq` here, so `l + 1` exists.
                let jump_from = last.and_then(Seq::next).filter(|&n| c.seq > n);
                if let Some(from) = jump_from {
                    s.missing = s.missing.saturating_add(from.distance(c.seq).unwrap_or(0));
                }
                s.last_seq = Some(c.seq);
                s.delivered += 1;
                Verdict::Deliver { jump_from }
            }
        });
        let Verdict::Deliver { jump_from } = v else {
            return;
        };
        if let Some(from) = jump_from {
            out.push_back(ReceiverEvent::Gap {
                stream: self.stream.clone(),
                from,
                to: c.seq,
            });
        }
        if self.verify && !crate::synthetic::verify(self.seed, c.seq, &c.payload) {
            self.streams.with(self.stream, |s| s.verify_failures += 1);
        }
        out.push_back(ReceiverEvent::Chunk {
            stream: self.stream.clone(),
            chunk: c,
        });
    }

    /// `from..to` will not come: the stream's position moves to `to - 1`. Everything between
    /// the position and `from` is missing too and reported in the same gap. A gap may end at
    /// `Seq::MAX` (the stream then cannot go on); an empty or old one changes nothing.
    fn gap(&mut self, from: Seq, to: Seq, out: &mut VecDeque<ReceiverEvent>) {
        let fresh = self.streams.with(self.stream, |s| {
            let start = match s.last_seq {
                Some(l) => l.next()?,
                None => from,
            };
            let count = start.distance(to).filter(|&n| n > 0)?;
            s.missing = s.missing.saturating_add(count);
            s.last_seq = to.prev();
            Some(start)
        });
        if let Some(start) = fresh {
            out.push_back(ReceiverEvent::Gap {
                stream: self.stream.clone(),
                from: start,
                to,
            });
        }
    }
}
