//! The streams a shard serves: one producer per stream, any number of cursors.
//!
//! A stream keeps the sequence of its newest chunk and a broadcast channel. A [`Cursor`] reads
//! the channel and, whenever it sees a sequence jump (it started behind the live edge, it lagged,
//! or it resumed from an older sequence), fills the hole from the stream's backlog: synthetic
//! streams regenerate any chunk inside the replay window, live streams copy from a bounded
//! buffer. What cannot be filled is returned as an explicit [`Item::Gap`] — never skipped
//! silently. A slow cursor lags; it never stalls the producer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::ids::{Seq, StreamName};
use crate::synthetic::{stream_seed, SyntheticSpec};
use crate::wire::{Chunk, ErrorCode};

/// Settings of a shard's streams.
#[derive(Debug, Clone, Copy)]
pub struct StreamSettings {
    pub synthetic: SyntheticSpec,
    pub buffer_chunks: usize,
    pub replay_window: u64,
}

enum Kind {
    Synthetic { seed: u64 },
    Live { buffer: VecDeque<Chunk> },
}

struct Inner {
    kind: Kind,
    /// Newest chunk produced; `None` for a live stream nothing was published to yet.
    last: Option<Seq>,
    /// First chunk ever produced (live streams), for cursors that joined before it.
    first: Option<Seq>,
    /// Payload bytes a live stream's buffer holds.
    held_bytes: u64,
    /// A live stream's publisher finished after `last` (until a publisher sends again).
    ended: bool,
}

/// One stream on one shard.
pub struct StreamState {
    name: StreamName,
    settings: StreamSettings,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Chunk>,
    /// Kept (and produced) until this time even without subscribers: set by warming.
    keep_until_us: AtomicU64,
    /// Publisher sessions bound to it now.
    publishers: std::sync::atomic::AtomicUsize,
    /// Bumped when the stream ends, waking cursors that wait for chunks.
    ended_tx: tokio::sync::watch::Sender<u64>,
}

/// A publisher session's hold on its stream: counted while it lives (the flag: still
/// counted).
pub struct Publishing(Arc<StreamState>, bool);

impl Publishing {
    pub fn new(stream: Arc<StreamState>) -> Self {
        stream.publishers.fetch_add(1, Ordering::Relaxed);
        Publishing(stream, true)
    }
}

impl std::ops::Deref for Publishing {
    type Target = Arc<StreamState>;
    fn deref(&self) -> &Arc<StreamState> {
        &self.0
    }
}

impl Publishing {
    /// The publisher ended its stream cleanly: if it was the stream's last publisher here, the
    /// stream ends ([`StreamState::end`]). One step, so two publishers finishing at once end it.
    pub fn finish(mut self) {
        self.1 = false;
        if self.0.publishers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.end();
        }
    }
}

impl Drop for Publishing {
    fn drop(&mut self) {
        if self.1 {
            self.0.publishers.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Result of asking the backlog for one sequence.
enum Backlog {
    Chunk(Chunk),
    /// Not available; the stream goes on at `until`.
    Missing {
        until: Seq,
    },
}

impl StreamState {
    fn new(name: StreamName, settings: StreamSettings, now_us: u64) -> Self {
        let (kind, last) = if name.is_synthetic() {
            let seed = stream_seed(&name);
            // The chunk before the live edge counts as produced, so a first subscriber gets it at
            // once instead of waiting a period.
            let live = settings.synthetic.live_seq(now_us);
            (Kind::Synthetic { seed }, Some(live.saturating_sub(1)))
        } else {
            (
                Kind::Live {
                    buffer: VecDeque::with_capacity(settings.buffer_chunks.min(1024)),
                },
                None,
            )
        };
        let (tx, _) = broadcast::channel(settings.buffer_chunks.max(16));
        Self {
            name,
            settings,
            inner: Mutex::new(Inner {
                kind,
                last,
                first: None,
                held_bytes: 0,
                ended: false,
            }),
            tx,
            keep_until_us: AtomicU64::new(0),
            publishers: std::sync::atomic::AtomicUsize::new(0),
            ended_tx: tokio::sync::watch::channel(0).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn name(&self) -> &StreamName {
        &self.name
    }

    pub fn last_seq(&self) -> Option<Seq> {
        self.lock().last
    }

    /// Publisher sessions bound to the stream now.
    pub fn publishers(&self) -> usize {
        self.publishers.load(Ordering::Relaxed)
    }

    /// The oldest chunk a live stream's buffer holds (`None` for synthetic streams and for a
    /// live stream with nothing published yet).
    pub fn oldest_seq(&self) -> Option<Seq> {
        match &self.lock().kind {
            Kind::Live { buffer } => buffer.front().map(|c| c.seq),
            Kind::Synthetic { .. } => None,
        }
    }

    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Payload bytes the stream's buffer holds now: a live stream's replay buffer. A lower
    /// bound of its memory: the channel shares the buffer's chunks (reference-counted) and
    /// drops each once every cursor read it, so only chunks a lagging cursor still holds past
    /// the buffer are missing. A synthetic stream buffers nothing (cursors regenerate what
    /// they missed) and counts 0.
    pub fn held_bytes(&self) -> u64 {
        self.lock().held_bytes
    }

    /// Synthetic streams: produce every chunk due by `now_us` (at most a few per call; cursors
    /// regenerate anything older). Returns the number produced.
    fn produce_due(&self, now_us: u64) -> usize {
        let spec = self.settings.synthetic;
        let live = spec.live_seq(now_us);
        let mut inner = self.lock();
        let seed = match inner.kind {
            Kind::Synthetic { seed } => seed,
            Kind::Live { .. } => return 0,
        };
        let after_last = match inner.last {
            Some(l) => match l.next() {
                Some(n) => n,
                // Not reached: `live_seq` stays at or below `Seq::LAST`.
                None => return 0,
            },
            None => live,
        };
        let from = after_last.max(live.saturating_sub(7));
        let Some(behind) = from.distance(live) else {
            return 0;
        };
        inner.last = Some(live);
        drop(inner);
        for seq in (from.get()..=live.get()).map(Seq::new) {
            // No receivers is fine: the chunk is simply not wanted right now.
            let _ = self.tx.send(spec.chunk_seeded(seed, seq));
        }
        // At most 8: `from` is at least `live - 7`.
        behind as usize + 1
    }

    /// Live streams: accept a published chunk. Returns false (and drops it) if its sequence is
    /// not above the newest one, as happens when a publisher resumes and replays. A chunk at
    /// [`Seq::MAX`] is refused (frame readers refuse it already): it would leave no position
    /// after the stream's newest chunk.
    pub fn publish(&self, chunk: Chunk) -> Result<bool, PublishError> {
        if !chunk.seq.is_chunk_seq() {
            return Err(PublishError::SeqExhausted);
        }
        let mut inner = self.lock();
        if inner.last.is_some_and(|l| chunk.seq <= l) {
            return Ok(false);
        }
        let Inner {
            kind, held_bytes, ..
        } = &mut *inner;
        match kind {
            Kind::Synthetic { .. } => return Err(PublishError::Synthetic),
            Kind::Live { buffer } => {
                if buffer.len() >= self.settings.buffer_chunks {
                    if let Some(old) = buffer.pop_front() {
                        *held_bytes -= old.payload.len() as u64;
                    }
                }
                *held_bytes += chunk.payload.len() as u64;
                buffer.push_back(chunk.clone());
            }
        }
        inner.last = Some(chunk.seq);
        inner.first.get_or_insert(chunk.seq);
        // A publisher again: the stream goes on.
        inner.ended = false;
        // Send under the lock so cursors see chunks in buffer order.
        let _ = self.tx.send(chunk);
        Ok(true)
    }

    /// A live stream's publisher finished: cursors that delivered everything up to the newest
    /// chunk yield [`Item::End`]. A later published chunk makes the stream go on.
    pub fn end(&self) {
        let last = self.lock().last;
        self.end_after(last);
    }

    /// [`StreamState::end`] for a copy: the publisher finished after `last`. A copy that holds
    /// more (a publisher went on) ignores it; one that holds less ends now (the rest was lost).
    pub fn end_after(&self, last: Option<Seq>) {
        let mut inner = self.lock();
        if !matches!(inner.kind, Kind::Live { .. }) || inner.ended {
            return;
        }
        if inner.last == last {
            inner.ended = true;
            self.ended_tx.send_modify(|n| *n += 1);
            return;
        }
        match (inner.last, last) {
            // It holds chunks of a publisher that went on.
            (Some(held), Some(at)) if held > at => {}
            (Some(_), None) => {}
            // The sender tells the end after everything it sent, and the copy applies chunks
            // in order: what it lacks was lost (reported as a gap), and will not come.
            _ => {
                inner.ended = true;
                self.ended_tx.send_modify(|n| *n += 1);
            }
        }
    }

    /// `Some(last)` when the stream ended after `last` (`None`: nothing was published).
    fn ended_after(&self) -> Option<Option<Seq>> {
        let inner = self.lock();
        inner.ended.then_some(inner.last)
    }

    fn backlog(&self, seq: Seq) -> Backlog {
        let inner = self.lock();
        let last = inner.last.unwrap_or(Seq::ZERO);
        // The position after the newest chunk (exact: no chunk carries `Seq::MAX`).
        let after_last = last.saturating_next();
        match &inner.kind {
            Kind::Synthetic { seed } => {
                let oldest = last.saturating_sub(self.settings.replay_window);
                if seq < oldest {
                    return Backlog::Missing { until: oldest };
                }
                Backlog::Chunk(self.settings.synthetic.chunk_seeded(*seed, seq))
            }
            Kind::Live { buffer } => {
                let Some(front) = buffer.front() else {
                    return Backlog::Missing { until: after_last };
                };
                if seq < front.seq {
                    return Backlog::Missing { until: front.seq };
                }
                // Sequences in the buffer increase but may skip; find the first at or after.
                let idx = buffer.partition_point(|c| c.seq < seq);
                match buffer.get(idx) {
                    Some(c) if c.seq == seq => Backlog::Chunk(c.clone()),
                    Some(c) => Backlog::Missing { until: c.seq },
                    None => Backlog::Missing { until: after_last },
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    #[error("synthetic streams cannot be published to")]
    Synthetic,
    #[error("a chunk at sequence {}, which has no successor", Seq::MAX)]
    SeqExhausted,
}

impl PublishError {
    /// The code the shard closes the publisher's connection with.
    pub fn code(self) -> ErrorCode {
        match self {
            PublishError::Synthetic => ErrorCode::UnknownStream,
            PublishError::SeqExhausted => ErrorCode::SeqExhausted,
        }
    }
}

/// What a cursor yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Chunk(Chunk),
    /// Chunks `from..to` are not available.
    Gap {
        from: Seq,
        to: Seq,
    },
    /// The publisher finished after `last` (every chunk up to it was yielded).
    End {
        last: Option<Seq>,
    },
}

/// A subscriber's position in a stream.
pub struct Cursor {
    state: Arc<StreamState>,
    rx: broadcast::Receiver<Chunk>,
    /// Next sequence to deliver; `None` until the first chunk of a stream that had none.
    next: Option<Seq>,
    /// Deliver `next..catch_up_end` from the backlog before anything else.
    catch_up_end: Seq,
    /// A chunk from the channel held back while the hole before it is filled.
    held: Option<Chunk>,
    ended: tokio::sync::watch::Receiver<u64>,
    /// [`Item::End`] was yielded and no chunk came since: it is yielded once.
    told_end: bool,
}

impl Cursor {
    fn new(state: Arc<StreamState>, from: Option<Seq>) -> Self {
        // Subscribe first, then read the newest sequence: everything after it comes through
        // the channel.
        let rx = state.tx.subscribe();
        let ended = state.ended_tx.subscribe();
        let last = state.last_seq();
        let next = from.or(last);
        let catch_up_end = last.map_or(Seq::ZERO, Seq::saturating_next);
        Self {
            state,
            rx,
            next,
            catch_up_end,
            held: None,
            ended,
            told_end: false,
        }
    }

    /// The next chunk or gap, in sequence order; `None` when the stream is gone.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(n) = self.next {
                if n < self.catch_up_end {
                    // `n` is below an end, so `n + 1` exists.
                    let after = n.saturating_next();
                    return Some(match self.state.backlog(n) {
                        Backlog::Chunk(c) => {
                            self.next = Some(after);
                            Item::Chunk(c)
                        }
                        Backlog::Missing { until } => {
                            let until = until.min(self.catch_up_end).max(after);
                            self.next = Some(until);
                            Item::Gap { from: n, to: until }
                        }
                    });
                }
            }
            if self.held.is_none() && !self.told_end {
                // Everything up to the end was yielded: the end.
                if let Some(last) = self.state.ended_after() {
                    let done = match (self.next, last) {
                        (Some(n), Some(l)) => n > l,
                        (_, None) => true,
                        (None, Some(_)) => false,
                    };
                    if done {
                        self.told_end = true;
                        return Some(Item::End { last });
                    }
                }
            }
            let c = match self.held.take() {
                Some(c) => c,
                None => match tokio::select! {
                    // A chunk that is there is taken without registering for the end.
                    biased;
                    r = self.rx.recv() => Some(r),
                    // The end: looked at again above.
                    _ = self.ended.changed() => None,
                } {
                    None => continue,
                    Some(Ok(c)) => c,
                    Some(Err(broadcast::error::RecvError::Lagged(_))) => {
                        let inner = self.state.lock();
                        // A cursor that joined before the first chunk wants it from there.
                        self.next = self.next.or(inner.first);
                        self.catch_up_end = inner.last.map_or(Seq::ZERO, Seq::saturating_next);
                        continue;
                    }
                    Some(Err(broadcast::error::RecvError::Closed)) => return None,
                },
            };
            match self.next {
                Some(n) if c.seq < n => continue,
                Some(n) if c.seq > n => {
                    self.catch_up_end = c.seq;
                    self.held = Some(c);
                }
                _ => {
                    self.told_end = false;
                    // Exact: a stream never holds a chunk at `Seq::MAX` (see `publish`).
                    self.next = Some(c.seq.saturating_next());
                    return Some(Item::Chunk(c));
                }
            }
        }
    }
}

/// All streams of a shard.
pub struct StreamRegistry {
    settings: StreamSettings,
    streams: Mutex<HashMap<StreamName, Arc<StreamState>>>,
    /// Signalled when a stream is created: the ticker sleeps while there is none.
    created: tokio::sync::Notify,
}

impl StreamRegistry {
    pub fn new(settings: StreamSettings) -> Self {
        Self {
            settings,
            streams: Mutex::new(HashMap::new()),
            created: tokio::sync::Notify::new(),
        }
    }

    /// Returns once the registry holds a stream (at once if it does). An idle shard's ticker
    /// waits here instead of waking every synthetic period.
    pub async fn wait_for_stream(&self) {
        loop {
            let created = self.created.notified();
            tokio::pin!(created);
            // Registered before the check, so a stream created in between is not missed.
            created.as_mut().enable();
            if !self.map().is_empty() {
                return;
            }
            created.await;
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<StreamName, Arc<StreamState>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get_or_create(
        &self,
        map: &mut HashMap<StreamName, Arc<StreamState>>,
        name: &StreamName,
        now_us: u64,
    ) -> Arc<StreamState> {
        map.entry(name.clone())
            .or_insert_with(|| {
                self.created.notify_waiters();
                Arc::new(StreamState::new(name.clone(), self.settings, now_us))
            })
            .clone()
    }

    /// The stream, created if needed (warming it).
    pub fn stream(&self, name: &StreamName, now_us: u64) -> Arc<StreamState> {
        self.get_or_create(&mut self.map(), name, now_us)
    }

    /// A cursor at `from` (or at the newest chunk).
    pub fn subscribe(&self, name: &StreamName, from: Option<Seq>, now_us: u64) -> Cursor {
        // Under the registry lock, so the sweeper cannot drop the stream in between.
        let mut map = self.map();
        let state = self.get_or_create(&mut map, name, now_us);
        let cursor = Cursor::new(state, from);
        drop(map);
        cursor
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// The stream, if the shard holds it now (not created).
    pub fn get(&self, name: &StreamName) -> Option<Arc<StreamState>> {
        self.map().get(name).cloned()
    }

    /// Payload bytes all streams hold now (the shard's buffer memory in its load report).
    pub fn buffered_bytes(&self) -> u64 {
        let streams: Vec<_> = self.map().values().cloned().collect();
        streams.iter().map(|s| s.held_bytes()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates the stream if needed and keeps it producing for `for_us` even without
    /// subscribers, so that the first attach finds it hot.
    pub fn warm(&self, name: &StreamName, now_us: u64, for_us: u64) {
        self.stream(name, now_us)
            .keep_until_us
            .fetch_max(now_us + for_us, Ordering::Relaxed);
    }

    /// Produces the due chunks of every synthetic stream and drops the streams that nobody
    /// holds (no cursor, no publisher) and that are not kept warm. Call once per synthetic
    /// period.
    pub fn tick(&self, now_us: u64) -> usize {
        let streams: Vec<_> = {
            let mut map = self.map();
            map.retain(|_, s| {
                Arc::strong_count(s) > 1 || s.keep_until_us.load(Ordering::Relaxed) > now_us
            });
            map.values().cloned().collect()
        };
        streams.iter().map(|s| s.produce_due(now_us)).sum()
    }
}

#[cfg(test)]
mod tests;
