//! The failover decisions: which endpoint sends the stream, and from which sequence.
//!
//! [`Mirror::handle_timeout`] (due at [`Mirror::poll_timeout`]) runs the health rules: a
//! sending or standby endpoint that fails them is degraded, a degraded one that stays healthy
//! for `recover_after` becomes a standby again, one that stays degraded for `reconnect_after` is
//! dropped for a reconnect. Losing the active endpoint (degraded or closed) fails over at once to
//! the best-ranked healthy standby, from the sequence after the committed one. A planned switch
//! (revert to a recovered higher rank after `revert_after`, or removing the active) drains the
//! old active first and hands over at exactly what it acknowledged, or at a deadline. Broadcast
//! mode activates every healthy standby with its own cursor.

use std::time::{Duration, Instant};

use super::rate::RATE_INTERVAL;
use super::{EndpointState, Event, Mirror, SwitchCause};
use crate::ids::Seq;
use crate::mirror::health::Degradation;
use crate::mirror::{EndpointId, Mode};

/// A switch waiting for the old active endpoint to acknowledge what it was sent.
pub(super) struct PlannedSwitch {
    pub(super) from: EndpointId,
    pub(super) to: EndpointId,
    pub(super) cause: SwitchCause,
    /// The old endpoint gets this long to acknowledge; then the switch happens anyway, from
    /// the last acknowledged sequence (nothing lost, the unacknowledged tail sent again).
    pub(super) deadline: Instant,
}

impl Mirror {
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

    /// The active (or draining) endpoint `id` stopped being usable.
    pub(super) fn lost_sender(&mut self, id: EndpointId, was: EndpointState, now: Instant) {
        match was {
            EndpointState::Active if self.cfg.mode == Mode::Failover => {
                self.note_failure(id, now);
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

    /// The active endpoint `id` failed now: how long it had been silent is the detection
    /// time; the switch is timed from now until the next active confirms (from the first
    /// failure, when another comes before that).
    fn note_failure(&mut self, id: EndpointId, now: Instant) {
        if let Some(i) = self.index(id) {
            let silent = now.saturating_duration_since(self.eps[i].health.last_heard());
            self.timings.detection.observe(silent);
        }
        self.failed_at.get_or_insert(now);
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

    pub(super) fn plan_switch(
        &mut self,
        from: EndpointId,
        to: EndpointId,
        cause: SwitchCause,
        now: Instant,
    ) {
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
            (Some(a), Some(n)) => a.saturating_next() >= n,
            (None, Some(_)) => false,
        };
        if drained {
            self.finish_switch(p, now);
        } else {
            self.planned = Some(p);
        }
    }

    pub(super) fn finish_switch(&mut self, p: PlannedSwitch, now: Instant) {
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
    pub(super) fn best_standby(&self, except: Option<EndpointId>) -> Option<EndpointId> {
        self.eps
            .iter()
            .find(|e| {
                e.state == EndpointState::Standby && Some(e.id) != except && !e.remove_after_drain
            })
            .map(|e| e.id)
    }

    /// Makes sure someone sends the stream.
    pub(super) fn reselect(&mut self, now: Instant) {
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
        let head_next = self.head_next();
        let start = match self.cfg.mode {
            // Everything after what any receiver acknowledged; from the oldest buffered chunk
            // when nobody acknowledged anything yet.
            Mode::Failover => self.committed.map(Seq::saturating_next),
            Mode::Broadcast => {
                let ep = &self.eps[i];
                match (ep.acked, ep.high_sent) {
                    (Some(a), _) => Some(a.saturating_next()),
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
            (Some(s), Some(a)) => Some(s.max(a.saturating_next())),
            (s, Some(a)) => s.or(Some(a.saturating_next())),
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
}
