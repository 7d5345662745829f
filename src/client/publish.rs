//! Publishing to a live stream.
//!
//! The publisher numbers its chunks itself, starting from the Unix time in microseconds when it
//! was opened (so a restarted publisher continues above its predecessor). It keeps the last
//! chunks it sent; when its shard connection fails it attaches to the next shard of the grant
//! (or of a new grant, as the shared [`Failover`] rules say — an expired token included),
//! binds, and sends them again — the shard drops sequences it already has.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::failover::{Failover, Next};
use super::session::{attach, Attachment};
use super::{closed_or, kind_of, ClientError, Inner, ProtocolError, Stats, StatsSnapshot};
use crate::ids::{Seq, StreamName};
use crate::security::proof::{bind_mac, exporter};
use crate::wire::{
    write_chunk, write_control, Bind, Chunk, ErrorCode, Frame, Grant, Heartbeat, Message, Publish,
    Role,
};

/// Chunks kept for replay after a failover.
const REPLAY: usize = 1024;

/// A publisher of one live stream. Dropping it ends the publication.
pub struct Publisher {
    tx: mpsc::Sender<Chunk>,
    /// The sequence of the next chunk; [`Seq::MAX`] once [`Seq::LAST`] was sent.
    next_seq: Seq,
    stats: Arc<Stats>,
    done: Option<oneshot::Receiver<Result<(), ClientError>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    pub(crate) async fn open(inner: Arc<Inner>, stream: StreamName) -> Result<Self, ClientError> {
        let stats = Arc::new(Stats::default());
        let reply = inner.request(&stream, Role::Publish).await?;
        Stats::inc(&stats.grants);
        // Attach and bind before returning, so that errors surface here.
        let a = bind_publish(&inner, &reply.grant, 0, &stream, &stats).await?;
        let (tx, rx) = mpsc::channel(inner.opts.channel_capacity.max(1));
        let (done_tx, done) = oneshot::channel();
        let st = stats.clone();
        let task = tokio::spawn(async move {
            let ended = drive(&inner, reply.grant, &stream, a, rx, &st).await;
            let _ = done_tx.send(ended);
        });
        Ok(Publisher {
            tx,
            next_seq: Seq::new(crate::unix_us()),
            stats,
            done: Some(done),
            task,
        })
    }

    /// Queues `payload` as the next chunk; returns its sequence number. After [`Seq::LAST`]
    /// every send fails with [`ClientError::SeqExhausted`] (no chunk may carry [`Seq::MAX`]).
    pub async fn send(&mut self, payload: Bytes) -> Result<Seq, ClientError> {
        let seq = claim(&mut self.next_seq)?;
        let chunk = Chunk {
            seq,
            timestamp_us: crate::unix_us(),
            payload,
        };
        if self.tx.send(chunk).await.is_err() {
            return Err(self.failure().await);
        }
        Stats::inc(&self.stats.chunks);
        Ok(seq)
    }

    async fn failure(&mut self) -> ClientError {
        match self.done.take() {
            Some(rx) => match rx.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) | Err(_) => ClientError::PublisherStopped,
            },
            None => ClientError::PublisherStopped,
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Sends what is queued, then ends the publication cleanly.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        let (tx, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.tx, tx));
        match self.done.take() {
            Some(rx) => rx.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

/// Takes the sequence for the next chunk and moves `next` past it.
fn claim(next: &mut Seq) -> Result<Seq, ClientError> {
    let seq = *next;
    if !seq.is_chunk_seq() {
        return Err(ClientError::SeqExhausted);
    }
    // Exact: `seq` is not `Seq::MAX`.
    *next = seq.saturating_next();
    Ok(seq)
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.done.is_some() {
            self.task.abort();
        }
    }
}

async fn bind_publish(
    inner: &Inner,
    grant: &Grant,
    rank: usize,
    stream: &StreamName,
    stats: &Stats,
) -> Result<Attachment, ClientError> {
    let shard = &grant.shards[rank % grant.shards.len()];
    let mut a = attach(inner, grant, shard, None, stats).await?;
    let exp = exporter(&a.conn).ok_or(ProtocolError::NoExporter)?;
    let bind = Message::Bind(Bind {
        mac: bind_mac(&grant.session_secret, &exp).to_vec(),
    });
    let wr = |e: quinn::WriteError| closed_or(&a.conn, e.into());
    write_control(&mut a.send, &bind).await.map_err(wr)?;
    loop {
        match a.reader.next().await {
            Ok(Some(Frame::Control(Message::Bound(_)))) => break,
            Ok(Some(Frame::Control(Message::Heartbeat(_)))) => continue,
            Ok(other) => {
                let got = kind_of(&other);
                let e = ProtocolError::Unexpected {
                    expected: "bound",
                    got,
                };
                return Err(closed_or(&a.conn, e.into()));
            }
            Err(e) => return Err(closed_or(&a.conn, e.into())),
        }
    }
    let publish = Message::Publish(Publish {
        stream: stream.clone(),
    });
    let wr = |e: quinn::WriteError| closed_or(&a.conn, e.into());
    write_control(&mut a.send, &publish).await.map_err(wr)?;
    Ok(a)
}

/// Runs until the application finishes (`Ok`) or failover gives up.
async fn drive(
    inner: &Inner,
    mut grant: Grant,
    stream: &StreamName,
    mut a: Attachment,
    mut rx: mpsc::Receiver<Chunk>,
    stats: &Stats,
) -> Result<(), ClientError> {
    let mut sent: VecDeque<Chunk> = VecDeque::with_capacity(REPLAY);
    let mut failover = Failover::new(inner.opts.max_failovers);
    let hb = inner.opts.heartbeat_interval;
    loop {
        let mut heartbeat = tokio::time::interval(hb);
        let mut last_rx = crate::clock::tokio_now();
        let mut progressed = false;
        let failure = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(last_rx + hb * 4) => {
                    break ClientError::Refused { code: ErrorCode::HeartbeatTimeout, reason: "shard went silent".into() };
                }
                chunk = rx.recv() => {
                    let Some(chunk) = chunk else {
                        let _ = a.send.finish();
                        let _ = tokio::time::timeout(hb, a.send.stopped()).await;
                        a.conn.close(ErrorCode::NoError.varint(), b"");
                        return Ok(());
                    };
                    if sent.len() == REPLAY {
                        sent.pop_front();
                    }
                    sent.push_back(chunk.clone());
                    if let Err(e) = write_chunk(&mut a.send, &chunk).await {
                        break closed_or(&a.conn, e.into());
                    }
                    progressed = true;
                }
                frame = a.reader.next() => match frame {
                    Ok(Some(Frame::Control(Message::Heartbeat(_)))) => last_rx = crate::clock::tokio_now(),
                    Ok(Some(Frame::Control(Message::GoAway(_)))) => {
                        break ClientError::Refused { code: ErrorCode::GoingAway, reason: "go-away".into() };
                    }
                    Ok(other) => {
                        let got = kind_of(&other);
                        break closed_or(&a.conn, ProtocolError::Unexpected { expected: "a heartbeat", got }.into());
                    }
                    Err(e) => break closed_or(&a.conn, e.into()),
                },
                _ = heartbeat.tick() => {
                    let m = Message::Heartbeat(Heartbeat { at_us: crate::unix_us() });
                    if let Err(e) = write_control(&mut a.send, &m).await {
                        break closed_or(&a.conn, e.into());
                    }
                }
            }
        };
        tracing::debug!(error = %failure, "publisher connection failed; failing over");
        a.conn.close(ErrorCode::NoError.varint(), b"");
        // Re-attach (to the next shard, or through a new grant) and replay what the new shard
        // may lack.
        let mut err = failure;
        a = loop {
            let (rank, backoff, regrant) =
                match failover.on_failure(&err, grant.shards.len(), progressed) {
                    Next::GiveUp => return Err(err),
                    Next::Exhausted { attempts } => {
                        let last = err.to_string();
                        return Err(ClientError::Exhausted { attempts, last });
                    }
                    Next::Retry {
                        rank,
                        backoff,
                        regrant,
                    } => (rank, backoff, regrant),
                };
            progressed = false;
            tokio::time::sleep(backoff).await;
            let mut rank = rank;
            if regrant {
                match inner.request(stream, Role::Publish).await {
                    Ok(r) => {
                        Stats::inc(&stats.grants);
                        grant = r.grant;
                        failover.regranted();
                        rank = failover.rank();
                    }
                    Err(e) if failover.on_regrant_failed() => {
                        let last = e.to_string();
                        return Err(ClientError::ClusterDraining {
                            hub: inner.hub,
                            last,
                        });
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "publisher re-grant failed");
                        err = e;
                        continue;
                    }
                }
            }
            Stats::inc(&stats.resumes);
            match bind_publish(inner, &grant, rank, stream, stats).await {
                Ok(next) => break next,
                Err(e) => {
                    tracing::debug!(error = %e, "publisher re-attach failed");
                    err = e;
                }
            }
        };
        for c in &sent {
            if write_chunk(&mut a.send, c).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_end_at_the_last_one() {
        let mut next = Seq::new(7);
        assert_eq!(claim(&mut next).unwrap(), Seq::new(7));
        assert_eq!(next, Seq::new(8));
        let mut next = Seq::LAST;
        assert_eq!(claim(&mut next).unwrap(), Seq::LAST);
        assert_eq!(next, Seq::MAX);
        for _ in 0..2 {
            assert!(matches!(claim(&mut next), Err(ClientError::SeqExhausted)));
            assert_eq!(next, Seq::MAX);
        }
    }
}
