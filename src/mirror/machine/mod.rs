//! The failover machine of one mirrored stream: ranked endpoints, their states, the replay
//! buffer, per-endpoint cursors and pacers. Sans-IO: no sockets, no clock; every input carries
//! `now` and every output is polled.
//!
//! Inputs: [`Mirror::push`] (the provider's chunks), `handle_connected` / `handle_closed` /
//! `handle_connect_failed` (the connection tasks), `handle_feedback` and `handle_path_stats`
//! (what the receiver and QUIC report), `add_endpoint` / `remove_endpoint` (the API), and
//! `handle_timeout` when [`Mirror::poll_timeout`] is due. Outputs: [`Mirror::poll_transmit`] per
//! endpoint (what its connection writes next) and [`Mirror::poll_event`] (switches, degradations,
//! connections to drop).
//!
//! Failover mode has one *active* endpoint; the others are connected, probed standbys. When the
//! active degrades (silence over `max(floor, 2·SRTT + 4·RTTVar)`, loss or bandwidth over a
//! window — [`super::health`]) the best-ranked healthy standby becomes active *at once*, from the
//! sequence after the highest one any receiver acknowledged (make-before-break: it is already
//! connected). A planned switch (revert to a recovered higher rank, removing the active) first
//! lets the old active acknowledge what it was sent, then hands over at exactly that point, so
//! nothing is sent twice. Broadcast mode makes every healthy endpoint active, each with its own
//! cursor. Whatever an endpoint can no longer get from the bounded buffer is sent to it as an
//! explicit `gap`, and counted.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::health::{Degradation, Health, HealthSnapshot};
use super::{EndpointId, MirrorConfig, MirrorError, Mode, Overflow};
use crate::ids::Seq;
use crate::wire::Chunk;

#[cfg(test)]
mod tests;

/// The state of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointState {
    /// No connection yet (or it was lost); the driver is connecting.
    Connecting,
    /// Connected, healthy, probed; not sent the stream (failover mode).
    Standby,
    /// Sent the stream.
    Active,
    /// Planned switch away from it: sent nothing new until it acknowledged what it has.
    Draining,
    /// Connected but failing the health rule; probed until it recovers.
    Degraded,
}

/// Why the active endpoint changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchCause {
    /// The first endpoint became active.
    Initial,
    /// The active endpoint degraded or its connection closed.
    Failure,
    /// A higher-ranked endpoint recovered (revert policy).
    Revert,
    /// The active endpoint was removed.
    Removed,
}

/// What the machine reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Connected {
        ep: EndpointId,
    },
    Disconnected {
        ep: EndpointId,
    },
    Degraded {
        ep: EndpointId,
        reason: Degradation,
        /// Silence when declared, and the bound it crossed.
        silence: Duration,
        bound: Duration,
        srtt: Option<Duration>,
        rttvar: Duration,
        at: Instant,
    },
    Recovered {
        ep: EndpointId,
    },
    /// `to` is active from `from_seq` on.
    Switched {
        from: Option<EndpointId>,
        to: EndpointId,
        cause: SwitchCause,
        from_seq: Option<Seq>,
        at: Instant,
    },
    /// The new active endpoint acknowledged the first chunk it was sent after the switch.
    SwitchConfirmed {
        ep: EndpointId,
        seq: Seq,
        at: Instant,
    },
    /// No endpoint can take the stream; chunks wait in the buffer.
    NoEndpoint,
    /// The driver must close this endpoint's connection (with `EndpointRemoved` when `removed`,
    /// and then forget it; otherwise it reconnects).
    DropConnection {
        ep: EndpointId,
        removed: bool,
    },
    /// Chunks `from..to` will not reach `ep`: the buffer no longer holds them or the overflow
    /// policy dropped them. The receiver is told with a `gap` message.
    Gap {
        ep: EndpointId,
        from: Seq,
        to: Seq,
    },
}

/// What an endpoint's connection writes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Transmit {
    Chunk(Chunk),
    Gap {
        from: Seq,
        to: Seq,
    },
    /// Nothing now; ask again at this time (or earlier when woken).
    Wait(Instant),
}

/// A refused push.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// Overflow policy `block`: the active endpoint is too far behind; retry after it moved.
    #[error("the mirror's buffer is full (overflow policy block)")]
    Full,
    #[error("chunk {seq} is not after the newest pushed ({head})")]
    NotIncreasing { seq: Seq, head: Seq },
}

struct Entry {
    seq: Seq,
    /// Exclusive; `seq + 1` for a chunk, more for a gap from the provider.
    end: Seq,
    chunk: Option<Chunk>,
    key: Option<u64>,
}

impl Entry {
    fn bytes(&self) -> u64 {
        self.chunk.as_ref().map_or(0, |c| c.payload.len() as u64)
    }
}

/// Token bucket whose rate follows the endpoint's measured delivery.
#[derive(Debug, Clone)]
struct Pacer {
    rate_bps: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    fn new(rate_bps: f64, now: Instant) -> Self {
        let mut p = Pacer {
            rate_bps,
            tokens: 0.0,
            last: now,
        };
        p.tokens = p.burst();
        p
    }

    fn burst(&self) -> f64 {
        (self.rate_bps * 0.02).max(64.0 * 1024.0)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate_bps).min(self.burst());
        self.last = now;
    }

    /// Takes `bytes` if available; otherwise when they will be.
    fn take(&mut self, bytes: u64, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        if self.tokens >= 0.0 {
            // Allow one chunk to overdraw so that chunks larger than the burst still go out.
            self.tokens -= bytes as f64;
            Ok(())
        } else {
            let wait = (-self.tokens / self.rate_bps.max(1.0)).min(1.0);
            Err(now + Duration::from_secs_f64(wait))
        }
    }
}

struct Ep {
    id: EndpointId,
    addr: SocketAddr,
    state: EndpointState,
    since: Instant,
    health: Health,
    /// Next sequence to send; `None`: from the oldest buffered chunk.
    next_seq: Option<Seq>,
    /// Highest sequence the receiver has (delivered or reported missing).
    acked: Option<Seq>,
    /// Gap to send before anything else (overflow drops).
    gap_from: Option<Seq>,
    /// Highest sequence ever sent to it.
    high_sent: Option<Seq>,
    healthy_since: Option<Instant>,
    probe_due: Instant,
    probes: VecDeque<(u64, Instant)>,
    pacer: Pacer,
    remove_after_drain: bool,
    /// Lost its connection while degraded: a new connection starts degraded too, and the
    /// recovery rule (hysteresis) decides when it is used again.
    was_degraded: bool,
    last_error: Option<String>,
    counters: EpCounters,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct EpCounters {
    pub chunks_sent: u64,
    pub bytes_sent: u64,
    pub replayed: u64,
    pub dropped: u64,
    pub conflated: u64,
    pub gap_chunks: u64,
    pub connects: u64,
    pub degradations: u64,
    pub activations: u64,
}

/// Counters of the whole mirror.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MirrorCounters {
    pub pushed: u64,
    pub switches: u64,
    pub replayed: u64,
    pub dropped: u64,
    pub conflated: u64,
    pub gap_chunks: u64,
    pub blocked: u64,
}

/// An endpoint as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EndpointSnapshot {
    pub id: EndpointId,
    pub addr: SocketAddr,
    pub rank: usize,
    pub state: EndpointState,
    pub state_for_ms: f64,
    pub health: HealthSnapshot,
    pub rate_bps: f64,
    pub acked_seq: Option<Seq>,
    pub next_seq: Option<Seq>,
    /// Chunks waiting to be sent to it.
    pub pending: u64,
    pub last_error: Option<String>,
    #[serde(flatten)]
    pub counters: EpCounters,
}

/// The mirror as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct MirrorSnapshot {
    pub mode: Mode,
    pub overflow: Overflow,
    pub head_seq: Option<Seq>,
    pub committed_seq: Option<Seq>,
    pub buffered: usize,
    pub active: Vec<EndpointId>,
    #[serde(flatten)]
    pub counters: MirrorCounters,
    pub endpoints: Vec<EndpointSnapshot>,
}

/// A switch waiting for the old active endpoint to acknowledge what it was sent.
struct PlannedSwitch {
    from: EndpointId,
    to: EndpointId,
    cause: SwitchCause,
    /// The old endpoint gets this long to acknowledge; then the switch happens anyway, from
    /// the last acknowledged sequence (nothing lost, the unacknowledged tail sent again).
    deadline: Instant,
}

/// The failover machine of one stream.
pub struct Mirror {
    cfg: MirrorConfig,
    eps: Vec<Ep>,
    next_id: u32,
    buf: VecDeque<Entry>,
    latest_by_key: HashMap<u64, Seq>,
    /// Highest sequence acknowledged by any receiver.
    committed: Option<Seq>,
    /// Highest sequence sent to any endpoint.
    high_sent_any: Option<Seq>,
    planned: Option<PlannedSwitch>,
    /// The newly active endpoint and the first sequence it was sent, until it acknowledges it.
    confirming: Option<(EndpointId, Option<Seq>)>,
    next_probe: u64,
    rate_window_start: Instant,
    acked_in_rate_window: HashMap<EndpointId, u64>,
    no_endpoint_reported: bool,
    events: VecDeque<Event>,
    counters: MirrorCounters,
}

const MAX_OUTSTANDING_PROBES: usize = 32;
const RATE_INTERVAL: Duration = Duration::from_millis(100);

impl Mirror {
    /// A mirror over `endpoints`, best first. Every endpoint starts `Connecting`.
    pub fn new(
        cfg: MirrorConfig,
        endpoints: &[SocketAddr],
        now: Instant,
    ) -> Result<Self, MirrorError> {
        cfg.validate()?;
        if endpoints.is_empty() {
            return Err(MirrorError::NoEndpoints);
        }
        let mut m = Mirror {
            cfg,
            eps: Vec::new(),
            next_id: 0,
            buf: VecDeque::new(),
            latest_by_key: HashMap::new(),
            committed: None,
            high_sent_any: None,
            planned: None,
            confirming: None,
            next_probe: 1,
            rate_window_start: now,
            acked_in_rate_window: HashMap::new(),
            no_endpoint_reported: false,
            events: VecDeque::new(),
            counters: MirrorCounters::default(),
        };
        for a in endpoints {
            m.add_endpoint(*a, None, now)?;
        }
        Ok(m)
    }

    pub fn config(&self) -> &MirrorConfig {
        &self.cfg
    }

    /// Adds an endpoint at `rank` (0 is best; the end when `None`). Returns its id; the driver
    /// connects it.
    pub fn add_endpoint(
        &mut self,
        addr: SocketAddr,
        rank: Option<usize>,
        now: Instant,
    ) -> Result<EndpointId, MirrorError> {
        if self.eps.iter().any(|e| e.addr == addr) {
            return Err(MirrorError::DuplicateEndpoint(addr));
        }
        if self.eps.len() >= super::MAX_ENDPOINTS {
            return Err(MirrorError::TooManyEndpoints(super::MAX_ENDPOINTS));
        }
        let id = EndpointId(self.next_id);
        self.next_id += 1;
        let ep = Ep {
            id,
            addr,
            state: EndpointState::Connecting,
            since: now,
            health: Health::new(self.cfg.health, now),
            next_seq: None,
            acked: None,
            gap_from: None,
            high_sent: None,
            healthy_since: None,
            probe_due: now,
            probes: VecDeque::new(),
            pacer: Pacer::new(self.cfg.max_rate_bps as f64, now),
            remove_after_drain: false,
            was_degraded: false,
            last_error: None,
            counters: EpCounters::default(),
        };
        let at = rank.unwrap_or(self.eps.len()).min(self.eps.len());
        self.eps.insert(at, ep);
        Ok(id)
    }

    /// Removes an endpoint. The last one cannot be removed (stop the mirror instead); the active
    /// one only when another is ready to take over, which then happens without loss first.
    pub fn remove_endpoint(&mut self, id: EndpointId, now: Instant) -> Result<(), MirrorError> {
        let i = self.index(id).ok_or(MirrorError::UnknownEndpoint(id))?;
        if self.eps.iter().filter(|e| !e.remove_after_drain).count() <= 1 {
            return Err(MirrorError::LastEndpoint);
        }
        if self.eps[i].remove_after_drain {
            return Err(MirrorError::UnknownEndpoint(id));
        }
        let sending = matches!(
            self.eps[i].state,
            EndpointState::Active | EndpointState::Draining
        );
        if sending && self.cfg.mode == Mode::Failover {
            let to = self
                .best_standby(Some(id))
                .ok_or(MirrorError::NoStandby(id))?;
            self.eps[i].remove_after_drain = true;
            if self.eps[i].state == EndpointState::Active {
                self.plan_switch(id, to, SwitchCause::Removed, now);
            }
            return Ok(());
        }
        if sending
            && !self
                .eps
                .iter()
                .any(|e| e.id != id && e.state == EndpointState::Active)
        {
            return Err(MirrorError::NoStandby(id));
        }
        self.forget(i);
        Ok(())
    }

    fn forget(&mut self, i: usize) {
        let ep = self.eps.remove(i);
        self.acked_in_rate_window.remove(&ep.id);
        if self.confirming.is_some_and(|(c, _)| c == ep.id) {
            self.confirming = None;
        }
        self.events.push_back(Event::DropConnection {
            ep: ep.id,
            removed: true,
        });
    }

    /// Endpoint ids, best rank first.
    pub fn endpoints(&self) -> Vec<(EndpointId, SocketAddr)> {
        self.eps.iter().map(|e| (e.id, e.addr)).collect()
    }

    pub fn state(&self, id: EndpointId) -> Option<EndpointState> {
        self.index(id).map(|i| self.eps[i].state)
    }

    /// The newest pushed sequence.
    pub fn head(&self) -> Option<Seq> {
        self.buf.back().map(|e| e.end - 1)
    }

    fn base(&self) -> Option<Seq> {
        self.buf.front().map(|e| e.seq)
    }

    pub fn committed(&self) -> Option<Seq> {
        self.committed
    }

    /// Whether every pushed chunk is acknowledged: by some receiver in failover mode, by every
    /// receiver that is connected or ever acknowledged anything in broadcast mode.
    pub fn settled(&self) -> bool {
        let Some(head) = self.head() else {
            return true;
        };
        match self.cfg.mode {
            Mode::Failover => self.committed >= Some(head),
            // Receivers that are reconnecting count too once they had acknowledged anything.
            Mode::Broadcast => self
                .eps
                .iter()
                .filter(|e| e.state != EndpointState::Connecting || e.acked.is_some())
                .all(|e| e.acked >= Some(head)),
        }
    }

    fn index(&self, id: EndpointId) -> Option<usize> {
        self.eps.iter().position(|e| e.id == id)
    }

    /// Adds the provider's next chunk. `key` names the value it carries, for conflation.
    pub fn push(&mut self, chunk: Chunk, key: Option<u64>, _now: Instant) -> Result<(), PushError> {
        if let Some(head) = self.head() {
            if chunk.seq <= head {
                return Err(PushError::NotIncreasing {
                    seq: chunk.seq,
                    head,
                });
            }
        }
        if self.cfg.overflow == Overflow::Block && !self.can_push() {
            self.counters.blocked += 1;
            return Err(PushError::Full);
        }
        if let Some(head) = self.head() {
            if chunk.seq > head + 1 {
                self.buf.push_back(Entry {
                    seq: head + 1,
                    end: chunk.seq,
                    chunk: None,
                    key: None,
                });
            }
        }
        let seq = chunk.seq;
        if let Some(k) = key {
            self.latest_by_key.insert(k, seq);
        }
        self.buf.push_back(Entry {
            seq,
            end: seq + 1,
            chunk: Some(chunk),
            key,
        });
        self.counters.pushed += 1;
        self.apply_overflow();
        self.evict();
        Ok(())
    }

    /// The provider lost `from..to` itself (for example a shard's gap); receivers are told.
    pub fn push_gap(&mut self, from: Seq, to: Seq) {
        // Contiguous with what is buffered: the gap covers everything after the head.
        let from = self.head().map_or(from, |h| h + 1);
        if to > from {
            self.buf.push_back(Entry {
                seq: from,
                end: to,
                chunk: None,
                key: None,
            });
            self.evict();
        }
    }

    /// Whether a push would be accepted under overflow policy `block`.
    pub fn can_push(&self) -> bool {
        let head_next = self.head().map_or(0, |h| h + 1);
        let max = self.cfg.max_pending as u64;
        for e in &self.eps {
            if matches!(e.state, EndpointState::Active | EndpointState::Draining) {
                let next = e.next_seq.or(self.base()).unwrap_or(head_next);
                if head_next.saturating_sub(next) >= max {
                    return false;
                }
            }
        }
        // A push adds up to two entries (a hole and the chunk); evicting for them must not
        // lose anything not yet acknowledged (by anyone in failover mode, by every connected
        // receiver in broadcast mode).
        let evict = (self.buf.len() + 2).saturating_sub(self.cfg.buffer_chunks);
        if evict > 0 {
            let Some(last_evicted) = self.buf.get(evict - 1).map(|e| e.end - 1) else {
                return true;
            };
            let acked = match self.cfg.mode {
                Mode::Failover => self.committed,
                Mode::Broadcast => self
                    .eps
                    .iter()
                    .filter(|e| e.state != EndpointState::Connecting)
                    .map(|e| e.acked)
                    .min()
                    .flatten(),
            };
            if acked.is_none_or(|a| a < last_evicted) {
                return false;
            }
        }
        true
    }

    fn apply_overflow(&mut self) {
        let Some(head) = self.head() else { return };
        let base = self.base().unwrap_or(head);
        let max = self.cfg.max_pending as u64;
        if self.cfg.overflow == Overflow::Block {
            return;
        }
        for e in &mut self.eps {
            if e.state != EndpointState::Active {
                continue;
            }
            let next = e.next_seq.unwrap_or(base);
            let pending = (head + 1).saturating_sub(next);
            if pending > max {
                let new_next = head + 1 - max;
                e.gap_from.get_or_insert(next);
                e.next_seq = Some(new_next);
                let n = new_next - next;
                e.counters.dropped += n;
                self.counters.dropped += n;
            }
        }
    }

    fn evict(&mut self) {
        while self.buf.len() > self.cfg.buffer_chunks {
            let Some(old) = self.buf.pop_front() else {
                break;
            };
            if let Some(k) = old.key {
                if self.latest_by_key.get(&k) == Some(&old.seq) {
                    self.latest_by_key.remove(&k);
                }
            }
        }
    }

    fn entry_at(&self, seq: Seq) -> Option<&Entry> {
        let i = self.buf.partition_point(|e| e.end <= seq);
        self.buf.get(i).filter(|e| e.seq <= seq)
    }

    /// Payload bytes of the chunks in `from..to`.
    fn bytes_between(&self, from: Seq, to: Seq) -> u64 {
        let i = self.buf.partition_point(|e| e.end <= from);
        self.buf
            .range(i..)
            .take_while(|e| e.seq < to)
            .map(Entry::bytes)
            .sum()
    }

    /// The probe (heartbeat) `id`'s connection sends now, or when the next one is due. Every
    /// connected endpoint is probed, standbys and degraded ones too.
    pub fn poll_probe(&mut self, id: EndpointId, now: Instant) -> Result<u64, Instant> {
        let probe_interval = self.cfg.probe_interval;
        let Some(i) = self.index(id) else {
            return Err(now + Duration::from_secs(3600));
        };
        let ep = &mut self.eps[i];
        if ep.state == EndpointState::Connecting {
            return Err(now + probe_interval);
        }
        if now < ep.probe_due {
            return Err(ep.probe_due);
        }
        let probe = self.next_probe;
        self.next_probe += 1;
        ep.probe_due = now + probe_interval;
        if ep.probes.len() >= MAX_OUTSTANDING_PROBES {
            ep.probes.pop_front();
        }
        ep.probes.push_back((probe, now));
        Ok(probe)
    }

    /// Whether events wait to be polled.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// What endpoint `id`'s connection writes next (chunks and gaps; probes are separate).
    pub fn poll_transmit(&mut self, id: EndpointId, now: Instant) -> Transmit {
        let Some(i) = self.index(id) else {
            return Transmit::Wait(now + Duration::from_secs(3600));
        };
        let probe_interval = self.cfg.probe_interval;
        let ep = &mut self.eps[i];
        // With nothing to send, ask again after a probe interval (or when woken).
        let probe_due = now + probe_interval;
        if ep.state != EndpointState::Active {
            return Transmit::Wait(probe_due);
        }
        if let Some(from) = ep.gap_from.take() {
            let to = ep.next_seq.unwrap_or(from);
            if to > from {
                self.events.push_back(Event::Gap { ep: id, from, to });
                return Transmit::Gap { from, to };
            }
        }
        let (Some(base), Some(head)) = (self.base(), self.head()) else {
            return Transmit::Wait(probe_due);
        };
        let mut next = self.eps[i].next_seq.unwrap_or(base);
        if next > head {
            return Transmit::Wait(probe_due);
        }
        if next < base {
            let n = base - next;
            let ep = &mut self.eps[i];
            ep.next_seq = Some(base);
            ep.counters.gap_chunks += n;
            self.counters.gap_chunks += n;
            self.events.push_back(Event::Gap {
                ep: id,
                from: next,
                to: base,
            });
            return Transmit::Gap {
                from: next,
                to: base,
            };
        }
        // Conflation: skip values superseded by a newer chunk with the same key.
        if self.cfg.overflow == Overflow::Conflate {
            let start = next;
            while next <= head {
                let Some(e) = self.entry_at(next) else { break };
                let superseded = e
                    .key
                    .and_then(|k| self.latest_by_key.get(&k))
                    .is_some_and(|&latest| latest > e.seq);
                if !superseded {
                    break;
                }
                next = e.end;
            }
            if next > start {
                let n = next - start;
                let ep = &mut self.eps[i];
                ep.next_seq = Some(next);
                ep.counters.conflated += n;
                self.counters.conflated += n;
                return Transmit::Gap {
                    from: start,
                    to: next,
                };
            }
        }
        let Some(entry) = self.entry_at(next) else {
            return Transmit::Wait(probe_due);
        };
        let Some(chunk) = entry.chunk.clone() else {
            let (from, to) = (next, entry.end);
            self.eps[i].next_seq = Some(to);
            return Transmit::Gap { from, to };
        };
        let ep = &mut self.eps[i];
        if let Err(until) = ep.pacer.take(chunk.payload.len() as u64, now) {
            ep.health.mark_backlogged();
            return Transmit::Wait(until.min(probe_due));
        }
        let replay = ep.high_sent.is_some_and(|h| next <= h)
            || (self.cfg.mode == Mode::Failover && self.high_sent_any.is_some_and(|h| next <= h));
        self.high_sent_any = Some(self.high_sent_any.map_or(next, |h| h.max(next)));
        if replay {
            ep.counters.replayed += 1;
            self.counters.replayed += 1;
        }
        ep.next_seq = Some(next + 1);
        ep.high_sent = Some(ep.high_sent.map_or(next, |h| h.max(next)));
        ep.counters.chunks_sent += 1;
        ep.counters.bytes_sent += chunk.payload.len() as u64;
        if self.confirming.is_some_and(|(c, s)| c == id && s.is_none()) {
            self.confirming = Some((id, Some(next)));
        }
        Transmit::Chunk(chunk)
    }

    /// The connection to `id` is up; the receiver already has everything up to `last_seq`.
    pub fn handle_connected(&mut self, id: EndpointId, last_seq: Option<Seq>, now: Instant) {
        let Some(i) = self.index(id) else { return };
        let ep = &mut self.eps[i];
        ep.health.reset_path(now);
        ep.probes.clear();
        ep.probe_due = now;
        ep.last_error = None;
        ep.counters.connects += 1;
        if let Some(l) = last_seq {
            ep.acked = Some(ep.acked.map_or(l, |a| a.max(l)));
        }
        let state = if std::mem::take(&mut ep.was_degraded) {
            ep.healthy_since = None;
            EndpointState::Degraded
        } else {
            ep.healthy_since = Some(now);
            EndpointState::Standby
        };
        self.set_state(i, state, now);
        self.events.push_back(Event::Connected { ep: id });
        if let Some(a) = self.eps[i].acked {
            self.commit(a);
        }
        self.reselect(now);
    }

    /// A connection attempt failed (unreachable, refused by the receiver).
    pub fn handle_connect_failed(&mut self, id: EndpointId, error: String, _now: Instant) {
        if let Some(i) = self.index(id) {
            self.eps[i].last_error = Some(error);
        }
    }

    /// The connection to `id` closed; the driver reconnects.
    pub fn handle_closed(&mut self, id: EndpointId, reason: String, now: Instant) {
        let Some(i) = self.index(id) else { return };
        if self.eps[i].state == EndpointState::Connecting {
            return;
        }
        self.eps[i].last_error = Some(reason);
        let was = self.eps[i].state;
        self.eps[i].was_degraded = was == EndpointState::Degraded;
        self.set_state(i, EndpointState::Connecting, now);
        self.events.push_back(Event::Disconnected { ep: id });
        self.lost_sender(id, was, now);
    }

    /// The active (or draining) endpoint `id` stopped being usable.
    fn lost_sender(&mut self, id: EndpointId, was: EndpointState, now: Instant) {
        match was {
            EndpointState::Active if self.cfg.mode == Mode::Failover => {
                // A planned switch away from it loses its reason to wait.
                if let Some(p) = self.planned.take() {
                    self.finish_switch(p, now);
                } else {
                    self.fail_over(id, now);
                }
            }
            EndpointState::Draining => {
                if let Some(p) = self.planned.take() {
                    self.finish_switch(p, now);
                }
            }
            _ => self.reselect(now),
        }
        self.maybe_forget_removed(id);
    }

    fn maybe_forget_removed(&mut self, id: EndpointId) {
        if let Some(i) = self.index(id) {
            let ep = &self.eps[i];
            if ep.remove_after_drain
                && !matches!(ep.state, EndpointState::Active | EndpointState::Draining)
            {
                self.forget(i);
            }
        }
    }

    fn fail_over(&mut self, from: EndpointId, now: Instant) {
        match self.best_standby(Some(from)) {
            Some(to) => self.activate(to, Some(from), SwitchCause::Failure, now),
            None => self.report_no_endpoint(),
        }
    }

    fn report_no_endpoint(&mut self) {
        if !self.no_endpoint_reported {
            self.no_endpoint_reported = true;
            self.events.push_back(Event::NoEndpoint);
        }
    }

    /// Feedback from the receiver: the echo of a probe, and its cumulative acknowledgement.
    pub fn handle_feedback(
        &mut self,
        id: EndpointId,
        echo: Option<u64>,
        acked: Option<Seq>,
        now: Instant,
    ) {
        let Some(i) = self.index(id) else { return };
        let ep = &mut self.eps[i];
        ep.health.on_heard(now);
        if let Some(echo) = echo {
            if let Some(pos) = ep.probes.iter().position(|(p, _)| *p == echo) {
                let sent = ep.probes[pos].1;
                ep.probes.drain(..=pos);
                ep.health.on_rtt_sample(now.saturating_duration_since(sent));
            }
        }
        let Some(a) = acked else { return };
        let old = ep.acked;
        if old.is_some_and(|o| a <= o) {
            return;
        }
        ep.acked = Some(a);
        if ep.next_seq.is_some_and(|n| n <= a) {
            ep.next_seq = Some(a + 1);
        }
        let from = old.map_or_else(|| self.base().unwrap_or(a), |o| o + 1);
        let bytes = self.bytes_between(from, a + 1);
        let ep = &mut self.eps[i];
        ep.health.on_acked_bytes(bytes);
        *self.acked_in_rate_window.entry(id).or_default() += bytes;
        self.commit(a);
        if let Some((c, Some(first))) = self.confirming {
            if c == id && a >= first {
                self.confirming = None;
                self.events.push_back(Event::SwitchConfirmed {
                    ep: id,
                    seq: first,
                    at: now,
                });
            }
        }
        let drained = self.planned.as_ref().is_some_and(|p| p.from == id)
            && self.eps[i].next_seq.is_none_or(|n| a + 1 >= n);
        if drained {
            if let Some(p) = self.planned.take() {
                self.finish_switch(p, now);
            }
        }
    }

    fn commit(&mut self, a: Seq) {
        self.committed = Some(self.committed.map_or(a, |c| c.max(a)));
    }

    /// Cumulative QUIC path counters of `id`'s connection.
    pub fn handle_path_stats(&mut self, id: EndpointId, sent: u64, lost: u64) {
        if let Some(i) = self.index(id) {
            self.eps[i].health.on_path_stats(sent, lost);
        }
    }

    /// When [`Mirror::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.rate_window_start + RATE_INTERVAL;
        if let Some(p) = &self.planned {
            t = t.min(p.deadline);
        }
        for e in &self.eps {
            match e.state {
                EndpointState::Active | EndpointState::Standby | EndpointState::Draining => {
                    t = t.min(e.health.silence_deadline() + Duration::from_micros(1));
                }
                EndpointState::Degraded => match e.healthy_since {
                    Some(h) => t = t.min(h + self.cfg.health.recover_after),
                    None => t = t.min(e.since + self.cfg.reconnect_after),
                },
                EndpointState::Connecting => {}
            }
        }
        t
    }

    /// The earliest silence deadline of an endpoint that can be declared degraded: the one
    /// timeout whose precision the detection time depends on.
    pub fn silence_deadline(&self) -> Option<Instant> {
        self.eps
            .iter()
            .filter(|e| {
                matches!(
                    e.state,
                    EndpointState::Active | EndpointState::Standby | EndpointState::Draining
                )
            })
            .map(|e| e.health.silence_deadline() + Duration::from_micros(1))
            .min()
    }

    /// Runs the health rules, windows, pacing and revert policy.
    pub fn handle_timeout(&mut self, now: Instant) {
        let rate_due = now >= self.rate_window_start + RATE_INTERVAL;
        // By id: a degradation may end a planned removal and so remove an endpoint.
        let ids: Vec<EndpointId> = self.eps.iter().map(|e| e.id).collect();
        for id in ids {
            let Some(i) = self.index(id) else { continue };
            self.eps[i].health.roll_window(now);
            if rate_due {
                self.adapt_rate(i, now);
            }
            let ep = &self.eps[i];
            let verdict = ep.health.verdict(now);
            match (ep.state, verdict) {
                (
                    EndpointState::Active | EndpointState::Standby | EndpointState::Draining,
                    Some(reason),
                ) => self.degrade(i, reason, now),
                (EndpointState::Degraded, None) => {
                    let since = *self.eps[i].healthy_since.get_or_insert(now);
                    if now >= since + self.cfg.health.recover_after {
                        self.set_state(i, EndpointState::Standby, now);
                        self.events.push_back(Event::Recovered { ep: id });
                        self.reselect(now);
                    }
                }
                (EndpointState::Degraded, Some(_)) => {
                    self.eps[i].healthy_since = None;
                    if now >= self.eps[i].since + self.cfg.reconnect_after {
                        self.eps[i].was_degraded = true;
                        self.set_state(i, EndpointState::Connecting, now);
                        self.events.push_back(Event::DropConnection {
                            ep: id,
                            removed: false,
                        });
                    }
                }
                _ => {}
            }
        }
        if rate_due {
            self.rate_window_start = now;
            self.acked_in_rate_window.clear();
        }
        if self.planned.as_ref().is_some_and(|p| now >= p.deadline) {
            if let Some(p) = self.planned.take() {
                self.finish_switch(p, now);
            }
        }
        self.maybe_revert(now);
    }

    fn degrade(&mut self, i: usize, reason: Degradation, now: Instant) {
        let ep = &mut self.eps[i];
        let (id, was) = (ep.id, ep.state);
        ep.counters.degradations += 1;
        ep.healthy_since = None;
        let ev = Event::Degraded {
            ep: id,
            reason,
            silence: now.saturating_duration_since(ep.health.last_heard()),
            bound: ep.health.silence_bound(),
            srtt: ep.health.srtt(),
            rttvar: ep.health.rttvar(),
            at: now,
        };
        self.set_state(i, EndpointState::Degraded, now);
        self.events.push_back(ev);
        self.lost_sender(id, was, now);
    }

    /// Follows the measured delivery: back off to 0.9× what was delivered while data queues
    /// beyond one round trip in flight; otherwise probe upwards by 25 % per interval.
    fn adapt_rate(&mut self, i: usize, now: Instant) {
        let span = now
            .saturating_duration_since(self.rate_window_start)
            .as_secs_f64()
            .max(1e-3);
        let (id, acked, next) = (self.eps[i].id, self.eps[i].acked, self.eps[i].next_seq);
        let delivered = self.acked_in_rate_window.get(&id).copied().unwrap_or(0) as f64 / span;
        let inflight = match (acked, next) {
            (Some(a), Some(n)) if n > a + 1 => self.bytes_between(a + 1, n) as f64,
            _ => 0.0,
        };
        let (min, max) = (self.cfg.min_rate_bps as f64, self.cfg.max_rate_bps as f64);
        let ep = &mut self.eps[i];
        let rtt = ep
            .health
            .srtt()
            .unwrap_or(Duration::from_millis(100))
            .as_secs_f64();
        let queued = inflight > delivered.max(1.0) * (rtt + 0.05) && inflight > 64.0 * 1024.0;
        ep.pacer.rate_bps = if queued {
            (delivered * 0.9).clamp(min, max)
        } else {
            (ep.pacer.rate_bps * 1.25).clamp(min, max)
        };
    }

    fn maybe_revert(&mut self, now: Instant) {
        let Some(hold) = self.cfg.revert_after else {
            return;
        };
        if self.cfg.mode != Mode::Failover || self.planned.is_some() {
            return;
        }
        let Some(active) = self
            .eps
            .iter()
            .position(|e| e.state == EndpointState::Active)
        else {
            return;
        };
        let better = self.eps[..active].iter().find(|e| {
            e.state == EndpointState::Standby
                && !e.remove_after_drain
                && e.healthy_since.is_some_and(|h| now >= h + hold)
        });
        if let Some(to) = better.map(|e| e.id) {
            let from = self.eps[active].id;
            self.plan_switch(from, to, SwitchCause::Revert, now);
        }
    }

    fn plan_switch(&mut self, from: EndpointId, to: EndpointId, cause: SwitchCause, now: Instant) {
        let Some(i) = self.index(from) else { return };
        self.set_state(i, EndpointState::Draining, now);
        let wait = (self.eps[i].health.silence_bound() * 2).max(Duration::from_millis(100));
        let p = PlannedSwitch {
            from,
            to,
            cause,
            deadline: now + wait,
        };
        let ep = &self.eps[i];
        let drained = match (ep.acked, ep.next_seq) {
            (_, None) => true,
            (Some(a), Some(n)) => a + 1 >= n,
            (None, Some(_)) => false,
        };
        if drained {
            self.finish_switch(p, now);
        } else {
            self.planned = Some(p);
        }
    }

    fn finish_switch(&mut self, p: PlannedSwitch, now: Instant) {
        if let Some(i) = self.index(p.from) {
            if self.eps[i].state == EndpointState::Draining {
                self.set_state(i, EndpointState::Standby, now);
            }
        }
        let target_ok = self
            .index(p.to)
            .is_some_and(|i| self.eps[i].state == EndpointState::Standby);
        if target_ok {
            self.activate(p.to, Some(p.from), p.cause, now);
        } else {
            // The target went away meanwhile: the best standby (perhaps the old one) takes it.
            match self.best_standby(None) {
                Some(to) => self.activate(to, Some(p.from), SwitchCause::Failure, now),
                None => self.report_no_endpoint(),
            }
        }
        self.maybe_forget_removed(p.from);
    }

    /// The best-ranked connected, healthy standby other than `except`.
    fn best_standby(&self, except: Option<EndpointId>) -> Option<EndpointId> {
        self.eps
            .iter()
            .find(|e| {
                e.state == EndpointState::Standby && Some(e.id) != except && !e.remove_after_drain
            })
            .map(|e| e.id)
    }

    /// Makes sure someone sends the stream.
    fn reselect(&mut self, now: Instant) {
        match self.cfg.mode {
            Mode::Failover => {
                let busy = self.planned.is_some()
                    || self.eps.iter().any(|e| e.state == EndpointState::Active);
                if !busy {
                    match self.best_standby(None) {
                        Some(to) => self.activate(to, None, SwitchCause::Initial, now),
                        None => self.report_no_endpoint(),
                    }
                }
            }
            Mode::Broadcast => {
                let ids: Vec<_> = self
                    .eps
                    .iter()
                    .filter(|e| e.state == EndpointState::Standby && !e.remove_after_drain)
                    .map(|e| e.id)
                    .collect();
                for id in ids {
                    self.activate(id, None, SwitchCause::Initial, now);
                }
                if !self.eps.iter().any(|e| e.state == EndpointState::Active) {
                    self.report_no_endpoint();
                }
            }
        }
    }

    fn activate(
        &mut self,
        to: EndpointId,
        from: Option<EndpointId>,
        cause: SwitchCause,
        now: Instant,
    ) {
        let Some(i) = self.index(to) else { return };
        let head_next = self.head().map(|h| h + 1);
        let start = match self.cfg.mode {
            // Everything after what any receiver acknowledged; from the oldest buffered chunk
            // when nobody acknowledged anything yet.
            Mode::Failover => self.committed.map(|c| c + 1),
            Mode::Broadcast => {
                let ep = &self.eps[i];
                match (ep.acked, ep.high_sent) {
                    (Some(a), _) => Some(a + 1),
                    (None, Some(_)) => ep.next_seq,
                    // A new endpoint joins at the live edge; before anyone was sent anything,
                    // at the oldest buffered chunk.
                    (None, None) if self.high_sent_any.is_none() => None,
                    (None, None) => head_next,
                }
            }
        };
        let ep = &mut self.eps[i];
        let start = match (start, ep.acked) {
            (Some(s), Some(a)) => Some(s.max(a + 1)),
            (s, Some(a)) => s.or(Some(a + 1)),
            (s, None) => s,
        };
        ep.next_seq = start;
        ep.gap_from = None;
        ep.counters.activations += 1;
        self.set_state(i, EndpointState::Active, now);
        self.no_endpoint_reported = false;
        if self.cfg.mode == Mode::Failover {
            if cause != SwitchCause::Initial || from.is_some() {
                self.counters.switches += 1;
            }
            self.confirming = Some((to, None));
        }
        self.events.push_back(Event::Switched {
            from,
            to,
            cause,
            from_seq: start,
            at: now,
        });
    }

    fn set_state(&mut self, i: usize, state: EndpointState, now: Instant) {
        let ep = &mut self.eps[i];
        if ep.state != state {
            ep.state = state;
            ep.since = now;
        }
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn counters(&self) -> MirrorCounters {
        self.counters
    }

    pub fn snapshot(&self, now: Instant) -> MirrorSnapshot {
        let head_next = self.head().map_or(0, |h| h + 1);
        let base = self.base();
        let endpoints = self
            .eps
            .iter()
            .enumerate()
            .map(|(rank, e)| EndpointSnapshot {
                id: e.id,
                addr: e.addr,
                rank,
                state: e.state,
                state_for_ms: now.saturating_duration_since(e.since).as_secs_f64() * 1e3,
                health: e.health.snapshot(now),
                rate_bps: e.pacer.rate_bps,
                acked_seq: e.acked,
                next_seq: e.next_seq,
                pending: if e.state == EndpointState::Active {
                    head_next.saturating_sub(e.next_seq.or(base).unwrap_or(head_next))
                } else {
                    0
                },
                last_error: e.last_error.clone(),
                counters: e.counters,
            })
            .collect();
        MirrorSnapshot {
            mode: self.cfg.mode,
            overflow: self.cfg.overflow,
            head_seq: self.head(),
            committed_seq: self.committed,
            buffered: self.buf.len(),
            active: self
                .eps
                .iter()
                .filter(|e| e.state == EndpointState::Active)
                .map(|e| e.id)
                .collect(),
            counters: self.counters,
            endpoints,
        }
    }
}
