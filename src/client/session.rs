//! The drivers behind [`Subscription`](super::Subscription): attach to a shard, read frames,
//! fail over and resume.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ring::rand::SecureRandom;

use super::failover::{Failover, Next};
use super::{
    closed_or, connect_shard, kind_of, mark_ttfb, refused_or_lost, Attempt, ClientError, Delivery,
    GrantReply, Inner, ProtocolError, SeqTracker, Stats, Tx,
};
use crate::ids::StreamName;
use crate::security::proof::{attach_proof, NONCE_LEN};
use crate::wire::{
    encode_control, write_control, Attach, Attached, Chunk, ErrorCode, Frame, FrameReader, Grant,
    Heartbeat, Message, Role, ShardAddr, Subscribe,
};

/// An admitted shard connection.
pub(crate) struct Attachment {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub reader: FrameReader<quinn::RecvStream>,
    pub attached: Attached,
}

/// Connects to `shard` and sends the attach (and `then`, e.g. a subscribe) in the first flight,
/// with 0-RTT when a ticket is available; falls back to 1-RTT when the shard refuses 0-RTT.
pub(crate) async fn attach(
    inner: &Inner,
    grant: &Grant,
    shard: &ShardAddr,
    then: Option<&Message>,
    stats: &Stats,
) -> Result<Attachment, ClientError> {
    let addr: SocketAddr = shard
        .addr
        .parse()
        .map_err(|_| ProtocolError::BadShardAddr(shard.addr.clone()))?;
    // Every flight carries a fresh nonce and proof: the one sent after a refused 0-RTT attempt
    // must not look like a replay of the first (whose copy may have reached the shard).
    let flight = || -> Result<Bytes, ClientError> {
        let mut nonce = [0u8; NONCE_LEN];
        ring::rand::SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| ProtocolError::NoRandomness)?;
        let msg = Message::Attach(Attach {
            token: grant.token.clone(),
            nonce: nonce.to_vec(),
            proof: attach_proof(&grant.session_secret, shard.id, &nonce).to_vec(),
        });
        let mut flight = BytesMut::from(&encode_control(&msg)[..]);
        if let Some(m) = then {
            flight.extend_from_slice(&encode_control(m));
        }
        Ok(flight.freeze())
    };
    let timeout = inner.opts.request_timeout;
    let opened = crate::clock::now();
    let work = async {
        let (conn, send, recv) = match connect_shard(inner, addr, stats)? {
            Attempt::ZeroRtt(conn, accepted) => {
                let (mut send, recv) = conn.open_bi().await?;
                // Written into 0-RTT packets; if the shard rejects 0-RTT they are discarded and
                // the stream is gone, so a new flight is sent after the handshake.
                let _ = send.write_all(&flight()?).await;
                if accepted.await {
                    Stats::inc(&stats.zero_rtt_accepted);
                    (conn, send, recv)
                } else {
                    let (mut send, recv) = conn.open_bi().await?;
                    send.write_all(&flight()?)
                        .await
                        .map_err(|e| closed_or(&conn, e.into()))?;
                    (conn, send, recv)
                }
            }
            Attempt::Full(connecting) => {
                let conn = connecting.await.map_err(refused_or_lost)?;
                let (mut send, recv) = conn.open_bi().await?;
                send.write_all(&flight()?)
                    .await
                    .map_err(|e| closed_or(&conn, e.into()))?;
                (conn, send, recv)
            }
        };
        let mut reader = FrameReader::new(recv);
        match reader.next().await {
            Ok(Some(Frame::Control(Message::Attached(attached)))) => {
                Stats::mark_once(&stats.attach_us, opened);
                Ok(Attachment {
                    conn,
                    send,
                    reader,
                    attached,
                })
            }
            Ok(other) => {
                let got = kind_of(&other);
                let e = ProtocolError::Unexpected {
                    expected: "attached",
                    got,
                };
                Err(closed_or(&conn, e.into()))
            }
            Err(e) => {
                // Give the close frame a moment to arrive: it says why.
                let reason = tokio::time::timeout(timeout, conn.closed()).await;
                Err(match reason {
                    Ok(r) => refused_or_lost(r),
                    Err(_) => e.into(),
                })
            }
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Timeout {
            addr,
            after: timeout,
        }),
    }
}

/// Holds an attached session open and idle: answers the shard's liveness rule with heartbeats
/// and reads (and drops) what the shard sends, until the connection ends.
pub(crate) async fn keep_idle(mut a: Attachment, hb: std::time::Duration) {
    let mut heartbeat = tokio::time::interval(hb);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = a.reader.next() => match frame {
                Ok(Some(Frame::Control(Message::GoAway(_)))) | Ok(None) | Err(_) => break,
                Ok(Some(_)) => {}
            },
            _ = heartbeat.tick() => {
                let m = Message::Heartbeat(Heartbeat { at_us: crate::unix_us() });
                if write_control(&mut a.send, &m).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = a.send.finish();
}

/// How one attached session ended.
enum End {
    /// The application dropped the subscription.
    ReceiverGone,
    /// Try elsewhere.
    Failed(ClientError),
}

pub(crate) async fn run_subscription(
    inner: Arc<Inner>,
    stream: StreamName,
    reply: GrantReply,
    tx: Tx,
    stats: Arc<Stats>,
    started: Instant,
) {
    let mut seq = SeqTracker::default();
    for c in reply.first_chunks {
        if deliver(&tx, &stats, &mut seq, c, started).await.is_err() {
            return;
        }
    }
    let mut grant = reply.grant;
    let mut failover = Failover::new(inner.opts.max_failovers);
    loop {
        let shard = grant.shards[failover.rank() % grant.shards.len()].clone();
        let before = stats.chunks.load(Ordering::Relaxed);
        let err = match stream_from(
            &inner, &grant, &shard, &stream, &tx, &stats, &mut seq, started,
        )
        .await
        {
            End::ReceiverGone => return,
            End::Failed(e) => e,
        };
        let progressed = stats.chunks.load(Ordering::Relaxed) > before;
        tracing::debug!(shard = shard.id.0, error = %err, "shard session ended");
        let (backoff, regrant) = match failover.on_failure(&err, grant.shards.len(), progressed) {
            Next::GiveUp => {
                let _ = tx.send(Err(err)).await;
                return;
            }
            Next::Exhausted { attempts } => {
                let last = err.to_string();
                let _ = tx
                    .send(Err(ClientError::Exhausted { attempts, last }))
                    .await;
                return;
            }
            Next::Retry {
                backoff, regrant, ..
            } => (backoff, regrant),
        };
        tokio::time::sleep(backoff).await;
        if regrant {
            match inner.request(&stream, Role::Subscribe).await {
                Ok(r) => {
                    Stats::inc(&stats.grants);
                    grant = r.grant;
                    failover.regranted();
                }
                Err(e) => tracing::debug!(error = %e, "re-grant failed"),
            }
        }
        Stats::inc(&stats.resumes);
    }
}

async fn deliver(
    tx: &Tx,
    stats: &Stats,
    seq: &mut SeqTracker,
    chunk: Chunk,
    started: Instant,
) -> Result<(), ()> {
    let Some(skipped) = seq.accept(chunk.seq) else {
        Stats::inc(&stats.duplicates);
        return Ok(());
    };
    if let Some(n) = skipped.start.distance(skipped.end).filter(|&n| n > 0) {
        stats.missing.fetch_add(n, Ordering::Relaxed);
        let gap = Delivery::Gap {
            from: skipped.start,
            to: skipped.end,
        };
        tx.send(Ok(gap)).await.map_err(|_| ())?;
    }
    Stats::inc(&stats.chunks);
    mark_ttfb(stats, started);
    tx.send(Ok(Delivery::Chunk(chunk))).await.map_err(|_| ())
}

#[allow(clippy::too_many_arguments)]
async fn stream_from(
    inner: &Inner,
    grant: &Grant,
    shard: &ShardAddr,
    stream: &StreamName,
    tx: &Tx,
    stats: &Stats,
    seq: &mut SeqTracker,
    started: Instant,
) -> End {
    let sub = Message::Subscribe(Subscribe {
        stream: stream.clone(),
        from_seq: seq.next(),
    });
    let mut a = match attach(inner, grant, shard, Some(&sub), stats).await {
        Ok(a) => a,
        Err(e) => return End::Failed(e),
    };
    let hb = inner.opts.heartbeat_interval;
    let mut heartbeat = tokio::time::interval(hb);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The shard sends something at least every heartbeat interval; four silent intervals mean
    // it is gone. (`FrameReader::next` is cancel-safe: partial frames stay buffered.)
    let mut last_rx = crate::clock::tokio_now();
    let end = loop {
        tokio::select! {
            _ = tokio::time::sleep_until(last_rx + hb * 4) => {
                let code = ErrorCode::HeartbeatTimeout;
                break End::Failed(ClientError::Refused { code, reason: "shard went silent".into() });
            }
            frame = a.reader.next() => {
                last_rx = crate::clock::tokio_now();
                let frame = match frame {
                    Ok(Some(f)) => f,
                    Ok(None) => break End::Failed(closed_or(&a.conn, ProtocolError::StreamEnded.into())),
                    Err(e) => break End::Failed(closed_or(&a.conn, e.into())),
                };
                match frame {
                    Frame::Chunk(c) => {
                        if deliver(tx, stats, seq, c, started).await.is_err() {
                            break End::ReceiverGone;
                        }
                    }
                    Frame::Control(Message::Gap(g)) => {
                        if let Some(n) = seq.gap(g.from, g.to) {
                            stats.missing.fetch_add(n, Ordering::Relaxed);
                            if tx.send(Ok(Delivery::Gap { from: g.from, to: g.to })).await.is_err() {
                                break End::ReceiverGone;
                            }
                        }
                    }
                    Frame::Control(Message::GoAway(g)) => {
                        let code = ErrorCode::from_u32(g.code).unwrap_or(ErrorCode::GoingAway);
                        break End::Failed(ClientError::Refused { code, reason: "go-away".into() });
                    }
                    Frame::Control(Message::Heartbeat(_)) => {}
                    Frame::Control(other) => {
                        break End::Failed(ProtocolError::Unexpected { expected: "a chunk", got: other.kind() }.into());
                    }
                }
            }
            _ = heartbeat.tick() => {
                let m = Message::Heartbeat(Heartbeat { at_us: crate::unix_us() });
                if let Err(e) = write_control(&mut a.send, &m).await {
                    break End::Failed(closed_or(&a.conn, e.into()));
                }
            }
        }
    };
    let _ = a.send.finish();
    a.conn.close(ErrorCode::NoError.varint(), b"");
    end
}
