//! The profile of one client and the checks on what goes into it.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{ProfilerConfig, FEATURE_BUCKETS, MAX_BITRATE_KBPS, MINUTE_MS};
use crate::ids::{ClientId, StreamName};
use crate::wire::{Hints, MAX_HINT_LEN};

/// How often one client requested one stream (an upper bound, see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCount {
    pub stream: StreamName,
    pub count: u64,
}

/// One ended session of a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub stream: StreamName,
    pub started_ms: u64,
    pub duration_ms: u64,
    /// Bytes delivered to the client.
    pub bytes: u64,
    /// Delivered bitrate, `bytes * 8 / duration_ms`; [`Profiler::record_session`] recomputes
    /// it so that it always agrees with the other fields (0 for a zero duration).
    pub bitrate_kbps: u64,
}

impl SessionRecord {
    pub fn new(stream: StreamName, started_ms: u64, duration_ms: u64, bytes: u64) -> Self {
        Self {
            stream,
            started_ms,
            duration_ms,
            bytes,
            bitrate_kbps: bitrate_kbps(bytes, duration_ms),
        }
    }
}

/// bits per millisecond = kbit/s.
pub(super) fn bitrate_kbps(bytes: u64, duration_ms: u64) -> u64 {
    if duration_ms == 0 {
        return 0;
    }
    let kbps = u128::from(bytes) * 8 / u128::from(duration_ms);
    u64::try_from(kbps).unwrap_or(u64::MAX)
}

/// Running aggregates over every session a client ever had (not only the kept ring).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionTotals {
    pub sessions: u64,
    pub total_bytes: u64,
    pub total_duration_ms: u64,
    pub mean_duration_ms: f64,
    pub mean_bitrate_kbps: f64,
}

impl SessionTotals {
    /// Incremental means (`mean += (x - mean) / n`): no sum that can overflow, always finite
    /// for finite inputs.
    pub(super) fn add(&mut self, r: &SessionRecord) {
        self.sessions = self.sessions.saturating_add(1);
        self.total_bytes = self.total_bytes.saturating_add(r.bytes);
        self.total_duration_ms = self.total_duration_ms.saturating_add(r.duration_ms);
        let n = self.sessions as f64;
        self.mean_duration_ms += (r.duration_ms as f64 - self.mean_duration_ms) / n;
        self.mean_bitrate_kbps += (r.bitrate_kbps as f64 - self.mean_bitrate_kbps) / n;
    }

    pub(super) fn is_sane(&self) -> bool {
        [self.mean_duration_ms, self.mean_bitrate_kbps]
            .iter()
            .all(|m| m.is_finite() && *m >= 0.0)
    }
}

/// Requests of the current and previous fixed one-minute window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(super) struct RateWindow {
    pub(super) start_ms: u64,
    pub(super) count: u32,
    pub(super) prev: u32,
}

impl RateWindow {
    pub(super) fn roll(&mut self, now_ms: u64) {
        // A clock that went back stays in the current window.
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if elapsed < MINUTE_MS {
            return;
        }
        self.prev = if elapsed < 2 * MINUTE_MS {
            self.count
        } else {
            0
        };
        self.count = 0;
        self.start_ms = now_ms - elapsed % MINUTE_MS;
    }

    /// Counts one request; true when it is over `max` in this window.
    pub(super) fn hit(&mut self, now_ms: u64, max: u32) -> bool {
        self.roll(now_ms);
        self.count = self.count.saturating_add(1);
        self.count > max
    }

    /// Requests in the last minute, all of them (limited ones included), interpolating the
    /// previous window.
    pub(super) fn per_minute(&self, now_ms: u64) -> f64 {
        let mut w = *self;
        w.roll(now_ms);
        let into = now_ms.saturating_sub(w.start_ms).min(MINUTE_MS) as f64 / MINUTE_MS as f64;
        f64::from(w.prev) * (1.0 - into) + f64::from(w.count)
    }
}

/// Everything the hub remembers about one client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientProfile {
    pub client_id: ClientId,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Requests counted (those over the per-client rate cap are not).
    pub requests: u64,
    /// Requests over the per-client rate cap: seen, not counted.
    #[serde(default)]
    pub rate_limited: u64,
    /// The most requested streams, most requested first, at most `max_streams`.
    #[serde(default)]
    pub streams: Vec<StreamCount>,
    /// The last valid value of each hint; a request without a hint keeps the previous value.
    #[serde(default)]
    pub hints: Hints,
    /// The newest sessions, oldest first, at most `max_history`.
    #[serde(default)]
    pub history: VecDeque<SessionRecord>,
    #[serde(default)]
    pub totals: SessionTotals,
    #[serde(default)]
    pub(super) rate: RateWindow,
}

impl ClientProfile {
    pub(super) fn new(client_id: ClientId, now_ms: u64) -> Self {
        Self {
            client_id,
            first_seen_ms: now_ms,
            last_seen_ms: now_ms,
            requests: 0,
            rate_limited: 0,
            streams: Vec::new(),
            hints: Hints::default(),
            history: VecDeque::new(),
            totals: SessionTotals::default(),
            rate: RateWindow {
                start_ms: now_ms,
                ..RateWindow::default()
            },
        }
    }

    /// Space-Saving over at most `max` counters, kept sorted by count, descending.
    pub(super) fn count_stream(&mut self, stream: &StreamName, max: usize) {
        let i = match self.streams.iter().position(|s| &s.stream == stream) {
            Some(i) => {
                self.streams[i].count = self.streams[i].count.saturating_add(1);
                i
            }
            None if self.streams.len() < max.max(1) => {
                self.streams.push(StreamCount {
                    stream: stream.clone(),
                    count: 1,
                });
                self.streams.len() - 1
            }
            None => {
                let i = self.streams.len() - 1;
                let last = &mut self.streams[i];
                last.stream = stream.clone();
                last.count = last.count.saturating_add(1);
                i
            }
        };
        let mut i = i;
        while i > 0 && self.streams[i - 1].count < self.streams[i].count {
            self.streams.swap(i - 1, i);
            i -= 1;
        }
    }

    /// Enforces the bounds and invariants on a profile read from disk (the config may have
    /// shrunk, the bytes may lie). Returns true when something was changed.
    pub(super) fn repair(&mut self, cfg: &ProfilerConfig) -> bool {
        let before = self.clone();
        self.first_seen_ms = self.first_seen_ms.min(self.last_seen_ms);
        while self.history.len() > cfg.max_history {
            self.history.pop_front();
        }
        for r in &mut self.history {
            r.bitrate_kbps = bitrate_kbps(r.bytes, r.duration_ms);
        }
        self.streams.sort_by_key(|s| std::cmp::Reverse(s.count));
        self.streams.truncate(cfg.max_streams.max(1));
        let (hints, _) = sanitize_hints(&self.hints);
        self.hints = hints;
        if !self.totals.is_sane() {
            self.totals = SessionTotals::default();
            for r in &self.history {
                self.totals.add(r);
            }
        }
        *self != before
    }
}

/// The valid fields of `hints`, and how many fields were invalid.
pub(super) fn sanitize_hints(hints: &Hints) -> (Hints, u64) {
    let present = [
        hints.region.is_some(),
        hints.device_class.is_some(),
        hints.bitrate_kbps.is_some(),
    ];
    let clean = Hints {
        region: valid_hint(&hints.region).map(str::to_owned),
        device_class: valid_hint(&hints.device_class).map(str::to_owned),
        bitrate_kbps: valid_bitrate(hints.bitrate_kbps),
    };
    let kept = [
        clean.region.is_some(),
        clean.device_class.is_some(),
        clean.bitrate_kbps.is_some(),
    ];
    let rejected = present.iter().zip(kept).filter(|(p, k)| **p && !k).count();
    (clean, rejected as u64)
}

pub(super) fn valid_hint(s: &Option<String>) -> Option<&str> {
    s.as_deref()
        .filter(|s| !s.is_empty() && s.len() <= MAX_HINT_LEN && !s.chars().any(char::is_control))
}

pub(super) fn valid_bitrate(b: Option<u32>) -> Option<u32> {
    b.filter(|b| (1..=MAX_BITRATE_KBPS).contains(b))
}

/// A stable bucket in `1..FEATURE_BUCKETS`: FNV-1a of the ASCII-lowercased hint, so buckets
/// are the same across restarts, builds and machines.
pub(super) fn bucket(s: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    1 + (h % u64::from(FEATURE_BUCKETS - 1)) as u8
}
