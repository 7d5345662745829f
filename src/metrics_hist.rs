//! Lock-free instruments for `/metrics`: latency histograms with fixed buckets, and counters
//! per wire error code.
//!
//! What it decides: which bucket an observation falls in ([`BOUNDS_US`], in microseconds;
//! an observation equal to a bound is in that bucket, as Prometheus' `le` says). Nothing
//! else: no clock (callers pass a [`Duration`] they measured), no rendering (that is
//! `crate::admin::metrics`).
//!
//! Call order: a driver [`Histogram::observe`]s from any task (two relaxed atomic adds, never
//! a lock); whoever reports takes a [`HistogramSnapshot`] (per-bucket counts, not cumulative,
//! and the sum in nanoseconds). A snapshot is also a plain value a sans-IO core can observe
//! into (the mirror machine does), and it travels as is in a shard's `load` report
//! (`{counts: [u64; 15], sum_ns: u64}`; an empty `counts` means no observation). The bounds
//! are part of the hub↔shard contract (`crate::link::LINK_VERSION`): a snapshot whose
//! `counts` has another length is not rendered.
//!
//! Bounds: every bucket's count is read without a lock, so a snapshot taken while a task
//! observes may show the bucket and not yet the sum (off by one observation, never torn).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::wire::ErrorCode;

/// Upper bounds of the buckets in microseconds, 500 µs to 10 s; the last bucket (`+Inf`) is
/// implied.
pub const BOUNDS_US: [u64; 14] = [
    500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

/// Buckets of a histogram: one per bound and `+Inf`.
pub const BUCKETS: usize = BOUNDS_US.len() + 1;

/// The bucket of an observation.
fn bucket(d: Duration) -> usize {
    let us = d.as_micros();
    BOUNDS_US
        .iter()
        .position(|b| us <= u128::from(*b))
        .unwrap_or(BOUNDS_US.len())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A latency histogram shared between tasks.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.counts[bucket(d)].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(nanos(d), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }
}

/// A histogram's counts at one moment (or the histogram itself, in a sans-IO core).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative), [`BUCKETS`] of them; empty: none yet.
    #[serde(default)]
    pub counts: Vec<u64>,
    /// Sum of the observations, in nanoseconds.
    #[serde(default)]
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    pub fn observe(&mut self, d: Duration) {
        if self.counts.len() != BUCKETS {
            self.counts = vec![0; BUCKETS];
        }
        let b = &mut self.counts[bucket(d)];
        *b = b.saturating_add(1);
        self.sum_ns = self.sum_ns.saturating_add(nanos(d));
    }

    /// Cumulative counts per bound, `+Inf` last (its count is the total); `None` when the
    /// snapshot has another number of buckets than [`BUCKETS`] (a peer with other bounds).
    pub fn cumulative(&self) -> Option<[u64; BUCKETS]> {
        let mut out = [0u64; BUCKETS];
        match self.counts.len() {
            0 => return Some(out),
            BUCKETS => {}
            _ => return None,
        }
        let mut total = 0u64;
        for (o, c) in out.iter_mut().zip(&self.counts) {
            total = total.saturating_add(*c);
            *o = total;
        }
        Some(out)
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().fold(0, |a, c| a.saturating_add(*c))
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns as f64 / 1e9
    }
}

/// The bounds in seconds, as `le` label values (`0.0005` … `10`), `+Inf` last.
pub fn le_labels() -> [String; BUCKETS] {
    std::array::from_fn(|i| match BOUNDS_US.get(i) {
        Some(us) => format!("{}", *us as f64 / 1e6),
        None => "+Inf".to_string(),
    })
}

/// Counters per wire error code (every code of [`ErrorCode::ALL`]).
#[derive(Debug, Default)]
pub struct CodeCounters([AtomicU64; ErrorCode::ALL.len()]);

impl CodeCounters {
    pub fn count(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.0[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn of(&self, code: ErrorCode) -> u64 {
        ErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .map_or(0, |i| self.0[i].load(Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The codes counted at least once, in numeric order.
    pub fn snapshot(&self) -> Vec<CodeCount> {
        ErrorCode::ALL
            .iter()
            .zip(&self.0)
            .map(|(c, n)| CodeCount {
                code: c.as_u32(),
                count: n.load(Ordering::Relaxed),
            })
            .filter(|c| c.count > 0)
            .collect()
    }
}

/// How often one error code was sent (a shard's `load` report carries a list of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeCount {
    /// The code's value ([`ErrorCode::as_u32`]); a peer may send one this side does not know.
    pub code: u32,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_bucket_their_bound_includes() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_micros(501));
        h.observe(Duration::from_secs(11));
        let s = h.snapshot();
        assert_eq!((s.counts[0], s.counts[1], s.counts[BUCKETS - 1]), (1, 1, 1));
        assert_eq!(s.count(), 3);
        let c = s.cumulative().unwrap();
        assert_eq!((c[0], c[1], c[BUCKETS - 2], c[BUCKETS - 1]), (1, 2, 2, 3));
        assert!((s.sum_seconds() - 11.001001).abs() < 1e-9);
        let mut plain = HistogramSnapshot::default();
        for d in [500, 501, 11_000_000] {
            plain.observe(Duration::from_micros(d));
        }
        assert_eq!(plain, s);
    }

    #[test]
    fn an_empty_snapshot_is_all_zeros_and_another_length_is_refused() {
        let empty = HistogramSnapshot::default();
        assert_eq!(empty.cumulative(), Some([0; BUCKETS]));
        let other = HistogramSnapshot {
            counts: vec![1; 3],
            sum_ns: 1,
        };
        assert_eq!(other.cumulative(), None);
        let le = le_labels();
        assert_eq!((le[0].as_str(), le[10].as_str()), ("0.0005", "1"));
        assert_eq!((le[13].as_str(), le[14].as_str()), ("10", "+Inf"));
    }

    #[test]
    fn codes_are_counted_each_on_its_own() {
        let c = CodeCounters::default();
        c.count(ErrorCode::TokenInvalid);
        c.count(ErrorCode::TokenInvalid);
        c.count(ErrorCode::OverQuota);
        assert_eq!(c.of(ErrorCode::TokenInvalid), 2);
        assert_eq!(c.total(), 3);
        let s = c.snapshot();
        assert_eq!(
            s,
            vec![
                CodeCount {
                    code: 0x21,
                    count: 2
                },
                CodeCount {
                    code: 0x31,
                    count: 1
                }
            ]
        );
    }
}
