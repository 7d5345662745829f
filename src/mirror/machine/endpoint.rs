//! The endpoints and the connection tasks' inputs: adding and removing endpoints (a removal of
//! the sending endpoint waits for a planned, lossless switch), connection up / failed / closed,
//! the receiver's feedback (probe echoes for RTT, cumulative acknowledgements that advance the
//! commit point and confirm or complete switches) and QUIC path counters. What a lost or
//! recovered endpoint means for the stream is decided in [`super::failover`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use super::rate::Pacer;
use super::{EndpointState, EpCounters, Event, Mirror, SwitchCause};
use crate::ids::Seq;
use crate::mirror::health::Health;
use crate::mirror::{EndpointId, MirrorError, Mode};

/// One endpoint's state, cursors, health, probes and pacer.
pub(super) struct Ep {
    pub(super) id: EndpointId,
    pub(super) addr: SocketAddr,
    pub(super) state: EndpointState,
    pub(super) since: Instant,
    pub(super) health: Health,
    /// Next sequence to send; `None`: from the oldest buffered chunk.
    pub(super) next_seq: Option<Seq>,
    /// Highest sequence the receiver has (delivered or reported missing).
    pub(super) acked: Option<Seq>,
    /// Gap to send before anything else (overflow drops).
    pub(super) gap_from: Option<Seq>,
    /// Highest sequence ever sent to it.
    pub(super) high_sent: Option<Seq>,
    pub(super) healthy_since: Option<Instant>,
    pub(super) probe_due: Instant,
    pub(super) probes: VecDeque<(u64, Instant)>,
    pub(super) pacer: Pacer,
    pub(super) remove_after_drain: bool,
    /// Lost its connection while degraded: a new connection starts degraded too, and the
    /// recovery rule (hysteresis) decides when it is used again.
    pub(super) was_degraded: bool,
    pub(super) last_error: Option<String>,
    pub(super) counters: EpCounters,
}

impl Mirror {
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
        if self.eps.len() >= crate::mirror::MAX_ENDPOINTS {
            return Err(MirrorError::TooManyEndpoints(crate::mirror::MAX_ENDPOINTS));
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

    pub(super) fn forget(&mut self, i: usize) {
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
        // The position after the acknowledged chunk; `Seq::MAX` for a (bogus) acknowledgement
        // of `Seq::MAX`, which leaves nothing to send.
        let after = a.saturating_next();
        if ep.next_seq.is_some_and(|n| n <= a) {
            ep.next_seq = Some(after);
        }
        let from = old.map_or_else(|| self.base().unwrap_or(a), Seq::saturating_next);
        let bytes = self.bytes_between(from, after);
        let ep = &mut self.eps[i];
        ep.health.on_acked_bytes(bytes);
        *self.acked_in_rate_window.entry(id).or_default() += bytes;
        self.commit(a);
        if let Some((c, Some(first))) = self.confirming {
            if c == id && a >= first {
                self.confirming = None;
                if let Some(failed) = self.failed_at.take() {
                    let took = now.saturating_duration_since(failed);
                    self.timings.switch.observe(took);
                }
                self.events.push_back(Event::SwitchConfirmed {
                    ep: id,
                    seq: first,
                    at: now,
                });
            }
        }
        let drained = self.planned.as_ref().is_some_and(|p| p.from == id)
            && self.eps[i].next_seq.is_none_or(|n| after >= n);
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

    pub(super) fn set_state(&mut self, i: usize, state: EndpointState, now: Instant) {
        let ep = &mut self.eps[i];
        if ep.state != state {
            ep.state = state;
            ep.since = now;
        }
    }
}
