//! What each endpoint's connection writes next. [`Mirror::poll_transmit`] decides, in order:
//! nothing unless the endpoint is active; a pending overflow gap; a gap for what the buffer no
//! longer holds; under `conflate`, a gap over values superseded by a newer chunk with the same
//! key; the provider's own gap; otherwise the next chunk if the pacer allows, counted as a
//! replay when it was sent before. [`Mirror::poll_probe`] schedules every connected endpoint's
//! heartbeat, whose echo [`Mirror::handle_feedback`] turns into an RTT sample.

use std::time::{Duration, Instant};

use super::{EndpointState, Event, Mirror, Transmit};
use crate::mirror::{EndpointId, Mode, Overflow};

const MAX_OUTSTANDING_PROBES: usize = 32;

impl Mirror {
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
            let n = next.distance(base).unwrap_or(0);
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
                let n = start.distance(next).unwrap_or(0);
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
        // A chunk's entry ends right after it (`next` is its sequence).
        let end = entry.end;
        let Some(chunk) = entry.chunk.clone() else {
            let (from, to) = (next, end);
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
        ep.next_seq = Some(end);
        ep.high_sent = Some(ep.high_sent.map_or(next, |h| h.max(next)));
        ep.counters.chunks_sent += 1;
        ep.counters.bytes_sent += chunk.payload.len() as u64;
        if self.confirming.is_some_and(|(c, s)| c == id && s.is_none()) {
            self.confirming = Some((id, Some(next)));
        }
        Transmit::Chunk(chunk)
    }
}
