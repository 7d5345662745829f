//! What an endpoint lets into its handshakes: QUIC Retry when too many are in flight, and
//! per-source limits, decided on the client's first packet before any TLS work.
//!
//! - **Address validation under load.** With more than `retry_above` handshakes in flight, a
//!   first packet whose address is not yet validated gets a Retry (RFC 9000 §8.1): a source
//!   that cannot receive at its address never costs a handshake.
//! - **Per source address** (IP and port: one client socket): at most `per_socket` handshakes
//!   in flight (a client opens one connection per session, a few at once; a flood from one
//!   socket is refused).
//! - **Per source IP** (an IPv6 source by its /64, what one host is usually given): at most
//!   `per_ip` handshakes in flight, and new connections through a token bucket (`per_ip_rate`
//!   a second, `per_ip_burst` at once).
//!
//! Refused connections get CONNECTION_REFUSED (one small packet, no state). Tracked sources
//! are bounded ([`MAX_SOURCES`]); past that, new sources are only validated and counted.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::sync::lock;

/// Sources tracked at once (each some 64 bytes).
pub const MAX_SOURCES: usize = 65_536;

/// The limits (`[transport]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardSettings {
    /// Handshakes in flight above which unvalidated first packets get a Retry.
    pub retry_above: usize,
    /// Handshakes in flight from one source address (IP and port).
    pub per_socket: usize,
    /// Handshakes in flight from one source IP.
    pub per_ip: usize,
    /// New connections a second from one source IP (a token bucket), and its depth.
    pub per_ip_rate: f64,
    pub per_ip_burst: f64,
}

impl Default for GuardSettings {
    fn default() -> Self {
        Self {
            retry_above: 256,
            per_socket: 64,
            per_ip: 512,
            per_ip_rate: 100.0,
            per_ip_burst: 200.0,
        }
    }
}

impl GuardSettings {
    /// The settings' own rules (`key` names them in errors).
    pub fn check(&self) -> Result<(), &'static str> {
        let ok = |r: f64, lo: f64| r.is_finite() && (lo..=1e7).contains(&r);
        if self.per_socket == 0 || self.per_ip == 0 || self.retry_above == 0 {
            return Err("handshake limits must be at least 1");
        }
        if !ok(self.per_ip_rate, 0.001) || !ok(self.per_ip_burst, 1.0) {
            return Err(
                "per_ip_rate must be in [0.001, 10000000] and per_ip_burst in [1, 10000000]",
            );
        }
        Ok(())
    }
}

/// What happens to a first packet.
#[derive(Debug)]
pub enum Verdict {
    /// Go on with the handshake; the permit counts it until dropped.
    Accept(Permit),
    /// Answer with a Retry (address validation).
    Retry,
    /// Refuse (CONNECTION_REFUSED).
    Refuse,
}

/// What the guard counts.
#[derive(Debug, Default)]
pub struct GuardCounters {
    pub retries: AtomicU64,
    pub refused: AtomicU64,
}

/// One endpoint's guard. Clones share it.
#[derive(Debug, Clone)]
pub struct Guard {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: GuardSettings,
    state: Mutex<State>,
    counters: GuardCounters,
}

#[derive(Debug, Default)]
struct State {
    in_flight: usize,
    ips: HashMap<IpAddr, Source>,
    sockets: HashMap<SocketAddr, usize>,
    /// When the full source map was last pruned (at most once a second).
    pruned: Option<Instant>,
}

/// The key of a source IP: an IPv6 address by its /64.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

#[derive(Debug)]
struct Source {
    in_flight: usize,
    tokens: f64,
    at: Instant,
}

/// A handshake the guard let in: released when dropped (the handshake ended either way).
#[derive(Debug)]
pub struct Permit {
    guard: Guard,
    from: SocketAddr,
    /// Counted against its source IP (not when the source map was full).
    tracked: bool,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut s = lock(&self.guard.inner.state);
        s.in_flight = s.in_flight.saturating_sub(1);
        if let Some(n) = s.sockets.get_mut(&self.from) {
            *n -= 1;
            if *n == 0 {
                s.sockets.remove(&self.from);
            }
        }
        if self.tracked {
            if let Some(src) = s.ips.get_mut(&source_key(self.from.ip())) {
                src.in_flight = src.in_flight.saturating_sub(1);
            }
        }
    }
}

impl Guard {
    pub fn new(settings: GuardSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::default(),
                counters: GuardCounters::default(),
            }),
        }
    }

    pub fn counters(&self) -> &GuardCounters {
        &self.inner.counters
    }

    /// Handshakes in flight now.
    pub fn in_flight(&self) -> usize {
        lock(&self.inner.state).in_flight
    }

    /// The verdict on a first packet from `from` (`validated`: its address is proven, by a
    /// Retry or a NEW_TOKEN token).
    pub fn admit(&self, from: SocketAddr, validated: bool, now: Instant) -> Verdict {
        let set = &self.inner.settings;
        let c = &self.inner.counters;
        let mut s = lock(&self.inner.state);
        if !validated && s.in_flight >= set.retry_above {
            c.retries.fetch_add(1, Ordering::Relaxed);
            return Verdict::Retry;
        }
        if s.sockets.get(&from).copied().unwrap_or(0) >= set.per_socket {
            c.refused.fetch_add(1, Ordering::Relaxed);
            return Verdict::Refuse;
        }
        let key = source_key(from.ip());
        if s.ips.len() >= MAX_SOURCES
            && !s.ips.contains_key(&key)
            && s.pruned
                .is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1))
        {
            prune(&mut s.ips, set, now);
            s.pruned = Some(now);
        }
        let tracked = s.ips.len() < MAX_SOURCES || s.ips.contains_key(&key);
        if tracked {
            let src = s.ips.entry(key).or_insert(Source {
                in_flight: 0,
                tokens: set.per_ip_burst,
                at: now,
            });
            let elapsed = now.saturating_duration_since(src.at).as_secs_f64();
            src.tokens = (src.tokens + elapsed * set.per_ip_rate).min(set.per_ip_burst);
            src.at = now;
            if src.in_flight >= set.per_ip || src.tokens < 1.0 {
                c.refused.fetch_add(1, Ordering::Relaxed);
                return Verdict::Refuse;
            }
            src.tokens -= 1.0;
            src.in_flight += 1;
        } else if !validated {
            // Too many sources to track: only validated addresses get in.
            c.retries.fetch_add(1, Ordering::Relaxed);
            return Verdict::Retry;
        }
        s.in_flight += 1;
        *s.sockets.entry(from).or_insert(0) += 1;
        Verdict::Accept(Permit {
            guard: self.clone(),
            from,
            tracked,
        })
    }
}

/// Applies `guard` to a first packet: `Some` with the permit when the handshake may go on;
/// `None` when it was answered with a Retry or refused.
pub fn screen(guard: &Guard, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Permit)> {
    let from = incoming.remote_address();
    let validated = incoming.remote_address_validated();
    match guard.admit(from, validated, crate::clock::now()) {
        Verdict::Accept(p) => Some((incoming, p)),
        Verdict::Retry => {
            // Only an unvalidated address gets here, so quinn can retry it.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            None
        }
        Verdict::Refuse => {
            incoming.refuse();
            None
        }
    }
}

/// Drops the sources with nothing in flight whose bucket has refilled.
fn prune(ips: &mut HashMap<IpAddr, Source>, set: &GuardSettings, now: Instant) {
    let refill =
        Duration::try_from_secs_f64(set.per_ip_burst / set.per_ip_rate).unwrap_or(Duration::MAX);
    ips.retain(|_, s| s.in_flight > 0 || now.saturating_duration_since(s.at) < refill);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, ip], port))
    }

    #[test]
    fn one_socket_gets_a_few_handshakes_at_once_and_the_rest_are_refused() {
        let g = Guard::new(GuardSettings::default());
        let t = crate::clock::now();
        let held: Vec<_> = (0..64)
            .map(|_| match g.admit(addr(2, 9), false, t) {
                Verdict::Accept(p) => p,
                v => panic!("{v:?}"),
            })
            .collect();
        assert!(matches!(g.admit(addr(2, 9), false, t), Verdict::Refuse));
        // Another socket of the same IP still gets in; the permits release on drop.
        assert!(matches!(g.admit(addr(2, 10), false, t), Verdict::Accept(_)));
        drop(held);
        assert_eq!(g.in_flight(), 0);
        assert!(matches!(g.admit(addr(2, 9), false, t), Verdict::Accept(_)));
        assert_eq!(g.counters().refused.load(Ordering::Relaxed), 1);
        assert_eq!(GuardSettings::default().per_socket, 64);
    }

    #[test]
    fn an_ip_past_its_rate_is_refused_until_its_bucket_refills() {
        let set = GuardSettings {
            per_ip_rate: 10.0,
            per_ip_burst: 3.0,
            ..GuardSettings::default()
        };
        let g = Guard::new(set);
        let t = crate::clock::now();
        for port in 0..3 {
            assert!(matches!(
                g.admit(addr(3, port), false, t),
                Verdict::Accept(_)
            ));
        }
        assert!(matches!(g.admit(addr(3, 7), false, t), Verdict::Refuse));
        // Other IPs are not affected; a tenth of a second later this one has a token again.
        assert!(matches!(g.admit(addr(4, 7), false, t), Verdict::Accept(_)));
        let later = t + Duration::from_millis(100);
        assert!(matches!(
            g.admit(addr(3, 7), false, later),
            Verdict::Accept(_)
        ));
    }

    #[test]
    fn an_ipv6_host_is_its_64_and_a_mapped_ipv4_address_its_ipv4() {
        let set = GuardSettings {
            per_ip_burst: 1.0,
            ..GuardSettings::default()
        };
        let g = Guard::new(set);
        let t = crate::clock::now();
        let v6 = |last: u16| SocketAddr::from(([0x2001, 0xdb8, 1, 2, 0, 0, 0, last], 443));
        assert!(matches!(g.admit(v6(1), false, t), Verdict::Accept(_)));
        assert!(
            matches!(g.admit(v6(2), false, t), Verdict::Refuse),
            "same /64"
        );
        let other = SocketAddr::from(([0x2001, 0xdb8, 1, 3, 0, 0, 0, 1], 443));
        assert!(matches!(g.admit(other, false, t), Verdict::Accept(_)));
        let v4: SocketAddr = "10.0.0.9:1".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:2".parse().unwrap();
        assert!(matches!(g.admit(v4, false, t), Verdict::Accept(_)));
        assert!(matches!(g.admit(mapped, false, t), Verdict::Refuse));
    }

    #[test]
    fn past_the_backlog_threshold_unvalidated_packets_get_a_retry() {
        let set = GuardSettings {
            retry_above: 2,
            ..GuardSettings::default()
        };
        let g = Guard::new(set);
        let t = crate::clock::now();
        let _a = g.admit(addr(5, 1), false, t);
        let _b = g.admit(addr(5, 2), false, t);
        assert!(matches!(g.admit(addr(6, 1), false, t), Verdict::Retry));
        // A validated address (it answered the Retry) goes on.
        assert!(matches!(g.admit(addr(6, 1), true, t), Verdict::Accept(_)));
        assert_eq!(g.counters().retries.load(Ordering::Relaxed), 1);
        assert!(GuardSettings::default().check().is_ok());
        let nan = GuardSettings {
            per_ip_rate: f64::NAN,
            ..GuardSettings::default()
        };
        assert!(nan.check().is_err());
    }
}
