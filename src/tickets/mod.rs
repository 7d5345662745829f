//! Session stores: what makes 0-RTT work across the hub and its shards.
//!
//! rustls 0.23 allows early data only with *stateful* resumption: the server keeps the session
//! state under the ticket id in a [`StoresServerSessions`]. A client that got tickets from the
//! hub presents one to a shard; the shard finds it only if its own store holds that entry.
//! Every endpoint (hub, each shard) has its own [`SessionStore`]; nothing shares one. Entries
//! travel instead: [`conn`] records which entries one connection's handshake produced, and
//! [`book`] keeps them per client on the hub, which copies them over the link to the shards a
//! grant names before the grant leaves. rustls takes TLS 1.3 sessions with `take`, so a ticket
//! works once per endpoint: a first flight replayed to the same shard finds its ticket gone and
//! its 0-RTT data is discarded (a copy sent to another endpoint fails the shard-bound proof).
//!
//! [`StoreCore`] is the sans-IO part: O(1) `put`/`take`, its own TTL (rustls hard-codes 24 h for
//! stateful tickets), a hard bound on entries with oldest-first eviction. [`SessionStore`] wraps it
//! in a mutex, reads the clock, and counts what happened.

pub mod book;
pub mod conn;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rustls::server::StoresServerSessions;

struct Entry {
    value: Vec<u8>,
    expires_at: Instant,
    generation: u64,
}

/// O(1) bounded map with expiry, oldest-first eviction and single-use `take`.
pub struct StoreCore {
    map: HashMap<Box<[u8]>, Entry>,
    /// Insertion order; entries whose generation no longer matches the map are stale.
    order: VecDeque<(u64, Box<[u8]>)>,
    next_generation: u64,
    capacity: usize,
    ttl: Duration,
}

/// What `put` had to drop to stay within bounds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Evicted {
    pub expired: usize,
    pub over_capacity: usize,
}

impl StoreCore {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>, now: Instant) -> Evicted {
        let generation = self.next_generation;
        self.next_generation += 1;
        let key = key.into_boxed_slice();
        self.order.push_back((generation, key.clone()));
        self.map.insert(
            key,
            Entry {
                value,
                expires_at: now + self.ttl,
                generation,
            },
        );
        let evicted = self.evict(now);
        // Taken entries leave stale slots behind; compact when they dominate, which keeps
        // `order` within a constant factor of `map` and the cost amortised O(1).
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(g, k)| map.get(k).is_some_and(|e| e.generation == *g));
        }
        evicted
    }

    fn evict(&mut self, now: Instant) -> Evicted {
        let mut ev = Evicted::default();
        while let Some((generation, key)) = self.order.front() {
            let live = match self.map.get(key) {
                Some(e) if e.generation == *generation => Some(e.expires_at <= now),
                _ => None,
            };
            match live {
                None => {}
                Some(true) => ev.expired += 1,
                Some(false) if self.map.len() > self.capacity => ev.over_capacity += 1,
                Some(false) => break,
            }
            let (generation, key) = self.order.pop_front().expect("front exists");
            if self
                .map
                .get(&key)
                .is_some_and(|e| e.generation == generation)
            {
                self.map.remove(&key);
            }
        }
        ev
    }

    pub fn get(&self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.map
            .get(key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.value.clone())
    }

    /// Removes and returns the entry: a second `take` of the same key finds nothing.
    pub fn take(&mut self, key: &[u8], now: Instant) -> Option<Vec<u8>> {
        self.map
            .remove(key)
            .filter(|e| e.expires_at > now)
            .map(|e| e.value)
    }
}

/// Counters of a [`SessionStore`].
#[derive(Debug, Default)]
pub struct StoreStats {
    pub puts: AtomicU64,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evicted: AtomicU64,
}

/// The shared, thread-safe session store handed to rustls by the hub and every shard.
pub struct SessionStore {
    core: Mutex<StoreCore>,
    pub stats: StoreStats,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("len", &self.len())
            .finish()
    }
}

impl SessionStore {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            core: Mutex::new(StoreCore::new(capacity, ttl)),
            stats: StoreStats::default(),
        }
    }

    fn core(&self) -> std::sync::MutexGuard<'_, StoreCore> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that matters
        // for a cache: keep serving.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn len(&self) -> usize {
        self.core().len()
    }

    /// Drops the entry under `key`, if held: a ticket its client can no longer present (see
    /// [`book`]). Counted as evicted.
    pub fn forget(&self, key: &[u8]) -> bool {
        let gone = self.core().map.remove(key).is_some();
        if gone {
            self.stats.evicted.fetch_add(1, Ordering::Relaxed);
        }
        gone
    }

    /// Drops every entry (a restarted endpoint starts empty; tests use it to force 1-RTT).
    pub fn clear(&self) {
        let mut c = self.core();
        let (capacity, ttl) = (c.capacity, c.ttl);
        *c = StoreCore::new(capacity, ttl);
    }

    /// How long an entry lives.
    pub fn ttl(&self) -> Duration {
        self.core().ttl
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn count(&self, found: bool) {
        let c = if found {
            &self.stats.hits
        } else {
            &self.stats.misses
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

impl SessionStore {
    /// Puts an entry that another endpoint's handshake produced (it arrived over the link).
    pub fn put_entry(&self, entry: crate::link::StoreEntry) {
        StoresServerSessions::put(self, entry.key.to_vec(), entry.value.to_vec());
    }
}

impl StoresServerSessions for SessionStore {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        let now = crate::clock::now();
        let ev = self.core().put(key, value, now);
        self.stats.puts.fetch_add(1, Ordering::Relaxed);
        self.stats
            .evicted
            .fetch_add((ev.expired + ev.over_capacity) as u64, Ordering::Relaxed);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.core().get(key, crate::clock::now());
        self.count(v.is_some());
        v
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        let v = self.core().take(key, crate::clock::now());
        self.count(v.is_some());
        v
    }

    fn can_cache(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_is_single_use() {
        let now = crate::clock::now();
        let mut s = StoreCore::new(10, Duration::from_secs(60));
        s.put(b"k".to_vec(), b"v".to_vec(), now);
        assert_eq!(s.get(b"k", now), Some(b"v".to_vec()));
        assert_eq!(s.take(b"k", now), Some(b"v".to_vec()));
        assert_eq!(s.take(b"k", now), None);
    }

    #[test]
    fn entries_expire_on_their_own_ttl() {
        let now = crate::clock::now();
        let mut s = StoreCore::new(10, Duration::from_secs(5));
        s.put(b"a".to_vec(), b"1".to_vec(), now);
        assert!(s.get(b"a", now + Duration::from_secs(4)).is_some());
        assert!(s.get(b"a", now + Duration::from_secs(5)).is_none());
        // Expired entries are swept by later puts.
        let ev = s.put(b"b".to_vec(), b"2".to_vec(), now + Duration::from_secs(6));
        assert_eq!(ev.expired, 1);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn bounded_with_oldest_first_eviction() {
        let now = crate::clock::now();
        let mut s = StoreCore::new(3, Duration::from_secs(60));
        for i in 0..5u8 {
            s.put(vec![i], vec![i], now);
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(&[0], now).is_none() && s.get(&[1], now).is_none());
        assert!(s.get(&[4], now).is_some());
    }

    #[test]
    fn stale_order_slots_stay_bounded() {
        let now = crate::clock::now();
        let mut s = StoreCore::new(1000, Duration::from_secs(60));
        for i in 0..100_000u32 {
            s.put(i.to_be_bytes().to_vec(), vec![], now);
            assert!(s.take(&i.to_be_bytes(), now).is_some());
        }
        assert!(s.is_empty());
        assert!(s.order.len() <= 64 + 1);
        // Re-putting a key replaces it; the older slot is stale and ignored by eviction.
        s.put(b"x".to_vec(), b"1".to_vec(), now);
        s.put(b"x".to_vec(), b"2".to_vec(), now);
        assert_eq!(s.take(b"x", now), Some(b"2".to_vec()));
    }
}
