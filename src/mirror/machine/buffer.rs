//! The bounded replay buffer: what the provider pushes (chunks and its own gaps), the overflow
//! policy applied to active endpoints that fall more than `max_pending` behind (drop to a gap,
//! or refuse the push under `block`), eviction beyond `buffer_chunks`, and the conflation index
//! (the newest sequence per key). Lookups by sequence serve [`Mirror::poll_transmit`] and the
//! byte counts behind health and rate adaptation.

use std::time::Instant;

use super::{EndpointState, Mirror, PushError};
use crate::ids::Seq;
use crate::mirror::{Mode, Overflow};
use crate::wire::Chunk;

/// A buffered chunk, or a gap the provider reported.
pub(super) struct Entry {
    pub(super) seq: Seq,
    /// Exclusive; `seq + 1` for a chunk, more for a gap from the provider.
    pub(super) end: Seq,
    pub(super) chunk: Option<Chunk>,
    pub(super) key: Option<u64>,
}

impl Entry {
    fn bytes(&self) -> u64 {
        self.chunk.as_ref().map_or(0, |c| c.payload.len() as u64)
    }
}

impl Mirror {
    /// Adds the provider's next chunk. `key` names the value it carries, for conflation. A
    /// chunk at [`Seq::MAX`] is refused: no chunk may carry it (receivers refuse it).
    pub fn push(&mut self, chunk: Chunk, key: Option<u64>, _now: Instant) -> Result<(), PushError> {
        let Some(end) = chunk.seq.next() else {
            return Err(PushError::SeqExhausted);
        };
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
        if let Some(after_head) = self.head_next() {
            if chunk.seq > after_head {
                self.buf.push_back(Entry {
                    seq: after_head,
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
            end,
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
        let from = self.head_next().unwrap_or(from);
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
        let head_next = self.head_next().unwrap_or(Seq::ZERO);
        let max = self.cfg.max_pending as u64;
        for e in &self.eps {
            if matches!(e.state, EndpointState::Active | EndpointState::Draining) {
                let next = e.next_seq.or(self.base()).unwrap_or(head_next);
                if next.distance(head_next).unwrap_or(0) >= max {
                    return false;
                }
            }
        }
        // A push adds up to two entries (a hole and the chunk); evicting for them must not
        // lose anything not yet acknowledged (by anyone in failover mode, by every connected
        // receiver in broadcast mode).
        let evict = (self.buf.len() + 2).saturating_sub(self.cfg.buffer_chunks);
        if evict > 0 {
            let Some(last_evicted) = self.buf.get(evict - 1).and_then(|e| e.end.prev()) else {
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
        let (Some(base), Some(head_next)) = (self.base(), self.head_next()) else {
            return;
        };
        let max = self.cfg.max_pending as u64;
        if self.cfg.overflow == Overflow::Block {
            return;
        }
        for e in &mut self.eps {
            if e.state != EndpointState::Active {
                continue;
            }
            let next = e.next_seq.unwrap_or(base);
            let pending = next.distance(head_next).unwrap_or(0);
            if pending > max {
                // `head_next - max` is above `next`, as `pending > max`.
                let Some(new_next) = head_next.checked_sub(max) else {
                    continue;
                };
                e.gap_from.get_or_insert(next);
                e.next_seq = Some(new_next);
                let n = next.distance(new_next).unwrap_or(0);
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

    pub(super) fn entry_at(&self, seq: Seq) -> Option<&Entry> {
        let i = self.buf.partition_point(|e| e.end <= seq);
        self.buf.get(i).filter(|e| e.seq <= seq)
    }

    /// Payload bytes of the chunks in `from..to`.
    pub(super) fn bytes_between(&self, from: Seq, to: Seq) -> u64 {
        let i = self.buf.partition_point(|e| e.end <= from);
        self.buf
            .range(i..)
            .take_while(|e| e.seq < to)
            .map(Entry::bytes)
            .sum()
    }
}
