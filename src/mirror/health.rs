//! Per-endpoint health: round-trip time and its variance, loss rate, delivered bandwidth, last
//! time the endpoint was heard, and the degradation verdict. Sans-IO: every input carries `now`.
//!
//! Call order: `on_rtt_sample` / `on_heard` / `on_acked_bytes` as feedback arrives,
//! `on_path_stats` with the QUIC connection's cumulative counters, `roll_window` once per window
//! (the failover machine does this from its timeout), and `verdict` whenever a decision is due.
//!
//! The silence rule is SRT's (`max(floor, 2·SRTT + 4·RTTVar)`); SRTT and RTTVar follow RFC 6298
//! section 2 (α = 1/8, β = 1/4) over samples from the mirror's own probes.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Thresholds of the degradation rule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Lowest silence bound, whatever the RTT (SRT uses 60 ms).
    #[serde(with = "humantime_ser")]
    pub silence_floor: Duration,
    /// Loss rate (lost / sent QUIC packets over one window) above which a path is degraded.
    pub max_loss: f64,
    /// Delivered bandwidth under which a path with a backlog is degraded (bytes/s; 0: off).
    pub min_bandwidth_bps: u64,
    /// Length of the loss and bandwidth windows.
    #[serde(with = "humantime_ser")]
    pub window: Duration,
    /// Hysteresis: a degraded endpoint must be healthy this long before it is used again.
    #[serde(with = "humantime_ser")]
    pub recover_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            silence_floor: Duration::from_millis(60),
            max_loss: 0.3,
            min_bandwidth_bps: 0,
            window: Duration::from_secs(1),
            recover_after: Duration::from_millis(500),
        }
    }
}

/// Durations as `"60ms"`-style strings without depending on the server-only humantime crate.
pub(crate) mod humantime_ser {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    /// `"250ms"`, `"2s"`, `"1.5s"`, `"1m"`, `"1h"`, `"1m30s"`: numbers each with a unit
    /// (`us`, `ms`, `s`, `m`, `h`), as the config file's durations are written; under a day.
    pub fn parse(text: &str) -> Result<Duration, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err("empty duration: write e.g. 250ms, 5s or 1m".into());
        }
        let mut rest = t;
        let mut total = 0.0;
        while !rest.is_empty() {
            let split = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("duration {text:?} needs a unit: us, ms, s, m or h"))?;
            let (num, after) = rest.split_at(split);
            let unit_len = after
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(after.len());
            let (unit, next) = after.split_at(unit_len);
            let scale = match unit.trim() {
                "us" | "µs" => 1e-6,
                "ms" => 1e-3,
                "s" | "sec" => 1.0,
                "m" | "min" => 60.0,
                "h" => 3600.0,
                u => {
                    return Err(format!(
                        "duration {text:?}: unknown unit {u:?} (us, ms, s, m or h)"
                    ))
                }
            };
            let v: f64 = num
                .trim()
                .parse()
                .map_err(|_| format!("duration {text:?} is not a number"))?;
            total += v * scale;
            rest = next;
        }
        if !(total.is_finite() && total < 86_400.0) {
            return Err(format!("duration {text:?} is out of range (under a day)"));
        }
        Ok(Duration::from_secs_f64(total))
    }
}

/// Why an endpoint was declared degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Degradation {
    /// Nothing heard for longer than the silence bound.
    Silence,
    /// Loss over the last window above `max_loss`.
    Loss,
    /// Delivered bandwidth under `min_bandwidth_bps` while data was waiting.
    Bandwidth,
}

impl std::fmt::Display for Degradation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Degradation::Silence => "silence",
            Degradation::Loss => "loss",
            Degradation::Bandwidth => "bandwidth",
        })
    }
}

/// The health of one endpoint.
#[derive(Debug, Clone)]
pub struct Health {
    cfg: HealthConfig,
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Option<Duration>,
    last_heard: Instant,
    window_start: Instant,
    /// Cumulative QUIC counters at the start of the window, and the latest seen.
    sent_at_start: u64,
    lost_at_start: u64,
    sent_now: u64,
    lost_now: u64,
    acked_bytes_window: u64,
    backlogged_window: bool,
    /// Results of the last complete window.
    loss: f64,
    bandwidth_bps: f64,
    loss_tripped: bool,
    bandwidth_tripped: bool,
}

/// A point-in-time view of [`Health`] for the API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HealthSnapshot {
    pub srtt_ms: f64,
    pub rttvar_ms: f64,
    pub min_rtt_ms: f64,
    pub loss: f64,
    pub bandwidth_bps: f64,
    pub silence_ms: f64,
    pub silence_bound_ms: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Health {
    pub fn new(cfg: HealthConfig, now: Instant) -> Self {
        Self {
            cfg,
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: None,
            last_heard: now,
            window_start: now,
            sent_at_start: 0,
            lost_at_start: 0,
            sent_now: 0,
            lost_now: 0,
            acked_bytes_window: 0,
            backlogged_window: false,
            loss: 0.0,
            bandwidth_bps: 0.0,
            loss_tripped: false,
            bandwidth_tripped: false,
        }
    }

    /// Forgets the path (a new connection): RTT estimates stay, counters restart at `now`.
    pub fn reset_path(&mut self, now: Instant) {
        let (srtt, rttvar, min_rtt) = (self.srtt, self.rttvar, self.min_rtt);
        *self = Self::new(self.cfg, now);
        (self.srtt, self.rttvar, self.min_rtt) = (srtt, rttvar, min_rtt);
    }

    /// Anything arrived from the endpoint.
    pub fn on_heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    /// One round-trip sample (RFC 6298 section 2). A zero sample (loopback) is raised to 1 µs.
    pub fn on_rtt_sample(&mut self, sample: Duration) {
        let r = sample.max(Duration::from_micros(1));
        self.min_rtt = Some(self.min_rtt.map_or(r, |m| m.min(r)));
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(r);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + r) / 8);
            }
        }
    }

    /// Bytes newly acknowledged by the receiver.
    pub fn on_acked_bytes(&mut self, bytes: u64) {
        self.acked_bytes_window = self.acked_bytes_window.saturating_add(bytes);
    }

    /// Cumulative QUIC path counters of the current connection.
    pub fn on_path_stats(&mut self, sent_packets: u64, lost_packets: u64) {
        self.sent_now = sent_packets;
        self.lost_now = lost_packets;
    }

    /// Data was waiting for this endpoint during the window (bandwidth-limited, not app-limited).
    pub fn mark_backlogged(&mut self) {
        self.backlogged_window = true;
    }

    /// Closes the window if it is over; returns true when it did.
    pub fn roll_window(&mut self, now: Instant) -> bool {
        let span = now.saturating_duration_since(self.window_start);
        if span < self.cfg.window {
            return false;
        }
        let sent = self.sent_now.saturating_sub(self.sent_at_start);
        let lost = self.lost_now.saturating_sub(self.lost_at_start);
        self.loss = if sent == 0 {
            0.0
        } else {
            (lost as f64 / sent as f64).min(1.0)
        };
        self.bandwidth_bps = self.acked_bytes_window as f64 / span.as_secs_f64();
        // Only packets enough to mean something count (a handful of probes does not).
        self.loss_tripped = sent >= 20 && self.loss > self.cfg.max_loss;
        self.bandwidth_tripped = self.cfg.min_bandwidth_bps > 0
            && self.backlogged_window
            && self.bandwidth_bps < self.cfg.min_bandwidth_bps as f64;
        self.window_start = now;
        self.sent_at_start = self.sent_now;
        self.lost_at_start = self.lost_now;
        self.acked_bytes_window = 0;
        self.backlogged_window = false;
        true
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    pub fn rttvar(&self) -> Duration {
        self.rttvar
    }

    /// Delivered bandwidth over the last complete window, bytes/s.
    pub fn bandwidth_bps(&self) -> f64 {
        self.bandwidth_bps
    }

    /// `max(floor, 2·SRTT + 4·RTTVar)`; the floor alone before the first sample.
    pub fn silence_bound(&self) -> Duration {
        let rule = self
            .srtt
            .map_or(Duration::ZERO, |s| s * 2 + self.rttvar * 4);
        rule.max(self.cfg.silence_floor)
    }

    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// When the silence rule fires if nothing more is heard.
    pub fn silence_deadline(&self) -> Instant {
        self.last_heard + self.silence_bound()
    }

    /// The verdict at `now`: `None` when healthy.
    pub fn verdict(&self, now: Instant) -> Option<Degradation> {
        if now > self.silence_deadline() {
            Some(Degradation::Silence)
        } else if self.loss_tripped {
            Some(Degradation::Loss)
        } else if self.bandwidth_tripped {
            Some(Degradation::Bandwidth)
        } else {
            None
        }
    }

    pub fn snapshot(&self, now: Instant) -> HealthSnapshot {
        HealthSnapshot {
            srtt_ms: self.srtt.map_or(0.0, ms),
            rttvar_ms: ms(self.rttvar),
            min_rtt_ms: self.min_rtt.map_or(0.0, ms),
            loss: self.loss,
            bandwidth_bps: self.bandwidth_bps,
            silence_ms: ms(now.saturating_duration_since(self.last_heard)),
            silence_bound_ms: ms(self.silence_bound()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_follows_rfc6298_and_sets_the_silence_bound() {
        let t0 = crate::clock::now();
        let mut h = Health::new(HealthConfig::default(), t0);
        assert_eq!(h.silence_bound(), Duration::from_millis(60));
        h.on_rtt_sample(Duration::from_millis(100));
        assert_eq!(h.srtt(), Some(Duration::from_millis(100)));
        assert_eq!(h.rttvar(), Duration::from_millis(50));
        // 2·100 + 4·50 = 400 ms.
        assert_eq!(h.silence_bound(), Duration::from_millis(400));
        h.on_rtt_sample(Duration::from_millis(20));
        // rttvar = 3/4·50 + 1/4·80 = 57.5; srtt = 7/8·100 + 1/8·20 = 90.
        assert_eq!(h.srtt(), Some(Duration::from_millis(90)));
        assert_eq!(h.rttvar(), Duration::from_micros(57_500));
    }

    #[test]
    fn silence_degrades_only_after_the_bound() {
        let t0 = crate::clock::now();
        let mut h = Health::new(HealthConfig::default(), t0);
        for _ in 0..20 {
            h.on_rtt_sample(Duration::from_millis(10));
        }
        let bound = h.silence_bound();
        assert!(bound >= Duration::from_millis(60));
        h.on_heard(t0);
        assert_eq!(h.verdict(t0 + bound), None);
        assert_eq!(
            h.verdict(t0 + bound + Duration::from_micros(1)),
            Some(Degradation::Silence)
        );
        h.on_heard(t0 + bound);
        assert_eq!(h.verdict(t0 + bound + Duration::from_millis(1)), None);
    }

    #[test]
    fn loss_and_bandwidth_windows() {
        let t0 = crate::clock::now();
        let cfg = HealthConfig {
            min_bandwidth_bps: 1000,
            ..HealthConfig::default()
        };
        let mut h = Health::new(cfg, t0);
        h.on_path_stats(100, 50);
        assert!(
            !h.roll_window(t0 + Duration::from_millis(10)),
            "window not over"
        );
        let t1 = t0 + cfg.window;
        h.on_heard(t1);
        assert!(h.roll_window(t1));
        assert_eq!(h.verdict(t1), Some(Degradation::Loss));
        // Next window: few packets, no loss; backlogged but slow.
        h.on_path_stats(110, 50);
        h.mark_backlogged();
        h.on_acked_bytes(10);
        let t2 = t1 + cfg.window;
        h.on_heard(t2);
        assert!(h.roll_window(t2));
        assert_eq!(h.verdict(t2), Some(Degradation::Bandwidth));
        // Fast enough.
        h.on_acked_bytes(5000);
        let t3 = t2 + cfg.window;
        h.on_heard(t3);
        h.roll_window(t3);
        assert_eq!(h.verdict(t3), None);
        assert!((h.bandwidth_bps() - 5000.0).abs() < 1.0);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(
            humantime_ser::parse("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(
            humantime_ser::parse("1.5s"),
            Ok(Duration::from_millis(1500))
        );
        assert!(humantime_ser::parse("5").is_err());
        assert_eq!(humantime_ser::parse("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(humantime_ser::parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(humantime_ser::parse("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(
            humantime_ser::parse("500us"),
            Ok(Duration::from_micros(500))
        );
        assert!(humantime_ser::parse("1d").is_err());
        assert!(humantime_ser::parse("25h").is_err());
        assert!(humantime_ser::parse("").is_err());
        assert!(humantime_ser::parse("-1s").is_err());
        assert!(humantime_ser::parse("abc ms").is_err());
    }
}
