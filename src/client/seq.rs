//! The client's position in a stream: what was delivered, what is a duplicate, what a gap
//! skips.

use std::ops::Range;

use crate::ids::Seq;

/// Remembers the last sequence delivered, and counts gaps and duplicates. Its arithmetic is
/// checked: a peer's sequence near `u64::MAX` never wraps it (frame readers refuse a chunk at
/// [`Seq::MAX`]; a gap may end there).
#[derive(Debug, Default)]
pub(crate) struct SeqTracker {
    last: Option<Seq>,
}

impl SeqTracker {
    /// The newest sequence delivered.
    pub fn last(&self) -> Option<Seq> {
        self.last
    }

    /// Classifies an arriving chunk: `None` for a duplicate (drop it), else the sequences
    /// skipped before it, `from..seq` (empty when it follows the last one).
    pub fn accept(&mut self, seq: Seq) -> Option<Range<Seq>> {
        match self.last {
            Some(l) if seq <= l => None,
            Some(l) => {
                self.last = Some(seq);
                // `l < seq`, so `l + 1` exists.
                Some(l.saturating_next()..seq)
            }
            None => {
                self.last = Some(seq);
                Some(seq..seq)
            }
        }
    }

    /// A `gap{from, to}` from the shard: `Some(count)` when it is news (it is not empty and
    /// starts at or after the next expected sequence), which moves the position to `to - 1`.
    pub fn gap(&mut self, from: Seq, to: Seq) -> Option<u64> {
        let count = from.distance(to).filter(|&n| n > 0)?;
        if self.next().is_some_and(|n| from < n) {
            return None;
        }
        // `to > from`, so `to - 1` exists.
        self.last = to.prev();
        Some(count)
    }

    /// Where to resume: after the last delivered. [`Seq::MAX`] once the last possible chunk
    /// was delivered (a start nothing reaches: the stream cannot go on).
    pub fn next(&self) -> Option<Seq> {
        self.last.map(Seq::saturating_next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Seq {
        Seq::new(n)
    }

    #[test]
    fn seq_tracker_counts_gaps_and_drops_duplicates() {
        let mut t = SeqTracker::default();
        assert_eq!(t.accept(s(10)), Some(s(10)..s(10)));
        assert_eq!(t.accept(s(11)), Some(s(11)..s(11)));
        assert_eq!(t.accept(s(11)), None);
        assert_eq!(t.accept(s(5)), None);
        assert_eq!(t.accept(s(14)), Some(s(12)..s(14)));
        assert_eq!(t.next(), Some(s(15)));
        // Gaps: empty, old and overlapping ones are not news.
        assert_eq!(t.gap(s(20), s(20)), None);
        assert_eq!(t.gap(s(21), s(20)), None);
        assert_eq!(t.gap(s(14), s(30)), None);
        assert_eq!(t.gap(s(15), s(30)), Some(15));
        assert_eq!(t.next(), Some(s(30)));
        assert_eq!(t.accept(s(29)), None);
    }

    #[test]
    fn seq_tracker_at_the_end_of_the_sequence_space() {
        let mut t = SeqTracker::default();
        assert_eq!(t.accept(Seq::LAST), Some(Seq::LAST..Seq::LAST));
        assert_eq!(t.next(), Some(Seq::MAX));
        assert_eq!(t.accept(Seq::LAST), None);
        // Even a chunk at MAX (frame readers refuse it) neither wraps nor panics.
        assert_eq!(t.accept(Seq::MAX), Some(Seq::MAX..Seq::MAX));
        assert_eq!(t.next(), Some(Seq::MAX));
        assert_eq!(t.accept(Seq::MAX), None);
        // A gap to MAX from the start, and one at MAX itself.
        let mut g = SeqTracker::default();
        assert_eq!(g.gap(Seq::ZERO, Seq::MAX), Some(u64::MAX));
        assert_eq!(g.next(), Some(Seq::MAX));
        assert_eq!(g.gap(Seq::MAX, Seq::MAX), None);
        assert_eq!(g.gap(Seq::LAST, Seq::MAX), None, "already covered");
        let mut h = SeqTracker::default();
        h.accept(s(7));
        assert_eq!(h.gap(s(8), Seq::MAX), Some(u64::MAX - 8));
        assert_eq!(h.accept(Seq::LAST), None);
    }
}
