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
//!
//! The code follows those seams: `types` holds the vocabulary (states, events,
//! transmits, counters, snapshots); `endpoint` the endpoints and the connection tasks' inputs;
//! `buffer` the replay buffer and overflow policy; `transmit` what each connection writes
//! next; `failover` the health timers and the switching decisions; `rate` the pacers and their
//! adaptation. This file holds the machine's state and its read-only views.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use super::{EndpointId, MirrorConfig, MirrorError, Mode};
use crate::ids::Seq;

mod buffer;
mod endpoint;
mod failover;
mod rate;
mod transmit;
mod types;

#[cfg(test)]
mod tests;

use buffer::Entry;
use endpoint::Ep;
use failover::PlannedSwitch;
pub use types::{
    EndpointSnapshot, EndpointState, EpCounters, Event, FailoverTimings, MirrorCounters,
    MirrorSnapshot, PushError, SwitchCause, Transmit,
};

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
    timings: FailoverTimings,
    /// When the active endpoint last failed, until the next one confirmed the switch.
    failed_at: Option<Instant>,
}

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
            timings: FailoverTimings::default(),
            failed_at: None,
        };
        for a in endpoints {
            m.add_endpoint(*a, None, now)?;
        }
        Ok(m)
    }

    pub fn config(&self) -> &MirrorConfig {
        &self.cfg
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
        // An entry ends above its start, so `end - 1` exists.
        self.buf.back().and_then(|e| e.end.prev())
    }

    /// The position after the newest pushed sequence (the end of the buffer).
    fn head_next(&self) -> Option<Seq> {
        self.buf.back().map(|e| e.end)
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

    /// Whether events wait to be polled.
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn counters(&self) -> MirrorCounters {
        self.counters
    }

    pub fn snapshot(&self, now: Instant) -> MirrorSnapshot {
        let head_next = self.head_next().unwrap_or(Seq::ZERO);
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
                    let next = e.next_seq.or(base).unwrap_or(head_next);
                    next.distance(head_next).unwrap_or(0)
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
            failover: self.timings.clone(),
        }
    }
}
