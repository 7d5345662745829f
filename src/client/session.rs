//! The drivers behind [`Subscription`](super::Subscription): attach to a shard, read frames,
//! fail over and resume.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use ring::rand::SecureRandom;
use tokio::sync::mpsc;

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
        // Behind a QUIC-LB balancer: a routing CID of the grant, a different one each time.
        let route = (!shard.route_cids.is_empty()).then(|| {
            let turn = inner.route_turn.fetch_add(1, Ordering::Relaxed);
            shard.route_cids[turn % shard.route_cids.len()].as_ref()
        });
        let (conn, send, recv) = match connect_shard(inner, addr, route, stats)? {
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

/// A second session on the next shard of a grant (see [`super::StandbyMode`]), until a
/// failover takes it. Warm: attached and idle (heartbeats answered); taking it costs one
/// `subscribe`. Hot: attached and subscribed; its chunks reach the subscription through
/// `side` meanwhile (each sequence is kept once), and taking it hands over the session as it
/// is, already streaming.
struct Standby {
    rank: usize,
    hot: bool,
    take: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Option<Taken>>,
}

/// A standby session as a failover takes it, with the chunk it had read but not yet handed
/// on (a hot standby whose side channel was full).
type Taken = (Attachment, Option<Frame>);

impl Standby {
    fn spawn(
        inner: Arc<Inner>,
        grant: Grant,
        rank: usize,
        stats: Arc<Stats>,
        hot: Option<(Message, mpsc::Sender<Frame>)>,
    ) -> Standby {
        let (take, taken) = tokio::sync::oneshot::channel();
        let shard = grant.shards[rank].clone();
        let is_hot = hot.is_some();
        let task = tokio::spawn(async move {
            let (sub, side) = hot.unzip();
            let a = attach(&inner, &grant, &shard, sub.as_ref(), &stats)
                .await
                .ok()?;
            hold(a, inner.opts.heartbeat_interval, taken, side).await
        });
        Standby {
            rank,
            hot: is_hot,
            take: Some(take),
            task,
        }
    }

    /// The session, if it is still up.
    async fn take(mut self) -> Option<Taken> {
        if let Some(t) = self.take.take() {
            let _ = t.send(());
        }
        (&mut self.task).await.ok().flatten()
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        // Taken or not, nothing else runs this session.
        self.task.abort();
    }
}

/// Holds `a` until `taken` fires (it is returned) or the shard goes away (`None`). A hot
/// standby forwards its chunks to `side` (not its gaps: the two copies may differ, and a jump
/// is found from the chunks alone).
async fn hold(
    mut a: Attachment,
    hb: std::time::Duration,
    mut taken: tokio::sync::oneshot::Receiver<()>,
    side: Option<mpsc::Sender<Frame>>,
) -> Option<Taken> {
    let mut heartbeat = tokio::time::interval(hb);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_rx = crate::clock::tokio_now();
    loop {
        tokio::select! {
            biased;
            _ = &mut taken => return Some((a, None)),
            _ = tokio::time::sleep_until(last_rx + hb * 4) => return None,
            // Cancel-safe: a partial frame stays buffered for the subscription that takes it.
            frame = a.reader.next() => {
                last_rx = crate::clock::tokio_now();
                match (frame, &side) {
                    (Ok(Some(Frame::Control(Message::Heartbeat(_) | Message::Gap(_)))), _) => {}
                    (Ok(Some(f @ Frame::Chunk(_))), Some(side)) => {
                        // A full side channel slows this session down, never the subscription;
                        // a failover that takes it meanwhile gets the chunk with it.
                        tokio::select! {
                            biased;
                            _ = &mut taken => return Some((a, Some(f))),
                            sent = side.send(f.clone()) => if sent.is_err() {
                                return None;
                            },
                        }
                    }
                    // A go-away, the end, or anything a standby should not get.
                    _ => return None,
                }
            }
            _ = heartbeat.tick() => {
                let m = Message::Heartbeat(Heartbeat { at_us: crate::unix_us() });
                if write_control(&mut a.send, &m).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// How one attached session ended.
enum End {
    /// The application dropped the subscription.
    ReceiverGone,
    /// The publisher finished: the subscription is complete.
    Finished(Option<crate::ids::Seq>),
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
    let mut standby: Option<Standby> = None;
    // Chunks of a hot standby session, while it is the standby.
    let (side_tx, mut side_rx) = mpsc::channel::<Frame>(256);
    // The hot standby's newest sequence (its own duplicates are counted).
    let mut side_high = seq.last();
    let mode = inner.opts.standby;
    loop {
        let rank = failover.rank() % grant.shards.len();
        let shard = grant.shards[rank].clone();
        // The standby session, when it is on the shard to use now and still up.
        let mut ready = match standby.take() {
            Some(s) if s.rank == rank => {
                let hot = s.hot;
                s.take().await.map(|(a, pending)| (a, hot, pending))
            }
            _ => None,
        };
        // What the old standby forwarded before it was taken comes first, then the chunk it
        // held when it was taken.
        let pending = ready.as_mut().and_then(|r| r.2.take());
        while let Ok(f) = side_rx.try_recv() {
            if side_frame(&tx, &stats, &mut seq, f, started, &mut side_high)
                .await
                .is_err()
            {
                return;
            }
        }
        if let Some(f) = pending {
            if side_frame(&tx, &stats, &mut seq, f, started, &mut side_high)
                .await
                .is_err()
            {
                return;
            }
        }
        let ready = ready.map(|(a, hot, _)| (a, hot));
        // The session streams on from its own position: a taken hot standby from the side's.
        let own = match &ready {
            Some((_, true)) => side_high,
            _ => seq.last(),
        };
        if mode != super::StandbyMode::Off && grant.shards.len() > 1 {
            let next = (rank + 1) % grant.shards.len();
            side_high = seq.last();
            let hot = (mode == super::StandbyMode::Hot).then(|| {
                let sub = Message::Subscribe(Subscribe {
                    stream: stream.clone(),
                    from_seq: seq.next(),
                    stream_end: true,
                });
                (sub, side_tx.clone())
            });
            standby = Some(Standby::spawn(
                inner.clone(),
                grant.clone(),
                next,
                stats.clone(),
                hot,
            ));
        }
        let before = stats.chunks.load(Ordering::Relaxed);
        let err = match stream_from(
            &inner,
            &grant,
            &shard,
            &stream,
            (&tx, &stats, &mut seq, started),
            (ready, own),
            (&mut side_rx, &mut side_high),
        )
        .await
        {
            End::ReceiverGone => return,
            End::Finished(last) => {
                stats.mark_ended(last);
                return;
            }
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
                    // A warm session belongs to the old grant's order.
                    standby = None;
                    failover.regranted();
                }
                // Sent away by the shards, refused by the hub: the cluster is going down;
                // say so now rather than retrying into silence.
                Err(e) if failover.on_regrant_failed() => {
                    let last = e.to_string();
                    let _ = tx
                        .send(Err(ClientError::ClusterDraining {
                            hub: inner.hub,
                            last,
                        }))
                        .await;
                    return;
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
    let mut own = seq.last();
    deliver_from(tx, stats, seq, chunk, started, &mut own).await
}

/// A chunk or gap from a hot standby, whose own newest sequence is `own`.
async fn side_frame(
    tx: &Tx,
    stats: &Stats,
    seq: &mut SeqTracker,
    frame: Frame,
    started: Instant,
    own: &mut Option<crate::ids::Seq>,
) -> Result<(), ()> {
    match frame {
        Frame::Chunk(c) => deliver_from(tx, stats, seq, c, started, own).await,
        Frame::Control(Message::Gap(g)) => gap(tx, stats, seq, g.from, g.to).await,
        _ => Ok(()),
    }
}

async fn gap(
    tx: &Tx,
    stats: &Stats,
    seq: &mut SeqTracker,
    from: crate::ids::Seq,
    to: crate::ids::Seq,
) -> Result<(), ()> {
    if let Some(n) = seq.gap(from, to) {
        stats.missing.fetch_add(n, Ordering::Relaxed);
        tx.send(Ok(Delivery::Gap { from, to }))
            .await
            .map_err(|_| ())?;
    }
    Ok(())
}

/// Delivers `chunk` from a session whose newest sequence so far is `own`. A sequence at or
/// below `own` is a duplicate (that session sent it twice, or a resume replayed it); one above
/// it that another session delivered already (a hot standby's copy) is dropped silently.
async fn deliver_from(
    tx: &Tx,
    stats: &Stats,
    seq: &mut SeqTracker,
    chunk: Chunk,
    started: Instant,
    own: &mut Option<crate::ids::Seq>,
) -> Result<(), ()> {
    if own.is_some_and(|h| chunk.seq <= h) {
        Stats::inc(&stats.duplicates);
        return Ok(());
    }
    *own = Some(chunk.seq);
    let Some(skipped) = seq.accept(chunk.seq) else {
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

/// Where a subscription delivers: the application's channel, its counters, its position.
type Sink<'a> = (&'a Tx, &'a Stats, &'a mut SeqTracker, Instant);

async fn stream_from(
    inner: &Inner,
    grant: &Grant,
    shard: &ShardAddr,
    stream: &StreamName,
    (tx, stats, seq, started): Sink<'_>,
    (ready, mut own): (Option<(Attachment, bool)>, Option<crate::ids::Seq>),
    (side, side_high): (&mut mpsc::Receiver<Frame>, &mut Option<crate::ids::Seq>),
) -> End {
    let sub = Message::Subscribe(Subscribe {
        stream: stream.clone(),
        from_seq: seq.next(),
        stream_end: true,
    });
    let mut a = match ready {
        // A hot standby streams already.
        Some((a, true)) => a,
        // A warm one is attached: the subscribe alone, one round trip.
        Some((mut a, false)) => match write_control(&mut a.send, &sub).await {
            Ok(()) => a,
            Err(e) => return End::Failed(closed_or(&a.conn, e.into())),
        },
        None => match attach(inner, grant, shard, Some(&sub), stats).await {
            Ok(a) => a,
            Err(e) => return End::Failed(e),
        },
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
                    Ok(None) => break End::Failed(super::ended_or(&a.conn, ProtocolError::StreamEnded.into()).await),
                    Err(e) => break End::Failed(closed_or(&a.conn, e.into())),
                };
                match frame {
                    Frame::Chunk(c) => {
                        if deliver_from(tx, stats, seq, c, started, &mut own).await.is_err() {
                            break End::ReceiverGone;
                        }
                    }
                    Frame::Control(Message::Gap(g)) => {
                        if gap(tx, stats, seq, g.from, g.to).await.is_err() {
                            break End::ReceiverGone;
                        }
                    }
                    Frame::Control(Message::GoAway(g)) => {
                        let code = ErrorCode::from_u32(g.code).unwrap_or(ErrorCode::GoingAway);
                        break End::Failed(ClientError::Refused { code, reason: "go-away".into() });
                    }
                    Frame::Control(Message::Heartbeat(_)) => {}
                    Frame::Control(Message::StreamEnd(e)) => break End::Finished(e.last_seq),
                    Frame::Control(other) => {
                        break End::Failed(ProtocolError::Unexpected { expected: "a chunk", got: other.kind() }.into());
                    }
                }
            }
            Some(f) = side.recv() => {
                if side_frame(tx, stats, seq, f, started, side_high).await.is_err() {
                    break End::ReceiverGone;
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
