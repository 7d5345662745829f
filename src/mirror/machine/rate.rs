//! Rate adaptation: each endpoint's token-bucket pacer and the rule that moves its rate. Every
//! rate interval ([`RATE_INTERVAL`], run from [`Mirror::handle_timeout`]) the rate backs off to
//! 0.9x the measured delivery while data queues beyond one round trip in flight, and otherwise
//! probes upwards by 25 %, within `min_rate_bps..=max_rate_bps`. [`Mirror::poll_transmit`]
//! takes from the bucket before each chunk.

use std::time::{Duration, Instant};

use super::Mirror;

pub(super) const RATE_INTERVAL: Duration = Duration::from_millis(100);

/// Token bucket whose rate follows the endpoint's measured delivery.
#[derive(Debug, Clone)]
pub(super) struct Pacer {
    pub(super) rate_bps: f64,
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

impl Pacer {
    pub(super) fn new(rate_bps: f64, now: Instant) -> Self {
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
    pub(super) fn take(&mut self, bytes: u64, now: Instant) -> Result<(), Instant> {
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

impl Mirror {
    /// Follows the measured delivery: back off to 0.9× what was delivered while data queues
    /// beyond one round trip in flight; otherwise probe upwards by 25 % per interval.
    pub(super) fn adapt_rate(&mut self, i: usize, now: Instant) {
        let span = now
            .saturating_duration_since(self.rate_window_start)
            .as_secs_f64()
            .max(1e-3);
        let (id, acked, next) = (self.eps[i].id, self.eps[i].acked, self.eps[i].next_seq);
        let delivered = self.acked_in_rate_window.get(&id).copied().unwrap_or(0) as f64 / span;
        let inflight = match (acked, next) {
            (Some(a), Some(n)) if n > a.saturating_next() => {
                self.bytes_between(a.saturating_next(), n) as f64
            }
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
}
