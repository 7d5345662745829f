//! Copies of a client's session entries to the shards it was sent to, and the forgets of the
//! entries that fell out of its newest (see [`crate::tickets::book`]).
//!
//! A forget is not urgent (it only frees memory), so it does not cost a link message of its
//! own: a shard's forgets wait, and go out with the next copy to that shard, when
//! [`FORGET_BATCH`] of them wait, or at the hub's once-a-second flush. A returning client's
//! hub handshake pushes 4 entries out of its book; sent at once, that was one more message on
//! each of its shards' links per grant. [`ForgetQueue`] decides (sans-IO); [`Links`] sends.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{lock, HubCmd, Links, ShardId};
use crate::link::StoreEntry;
use crate::tickets::book::Forward;

/// A shard's waiting forgets go out at once when this many wait.
pub(super) const FORGET_BATCH: usize = 64;

/// Per shard: the entries to copy and the keys to forget, in one `store_entries`.
pub(super) type Outgoing = BTreeMap<ShardId, (Vec<StoreEntry>, Vec<Bytes>)>;

/// The forgets waiting for each shard, and what goes out when (see the module doc).
#[derive(Debug, Default)]
pub(super) struct ForgetQueue {
    waiting: HashMap<ShardId, Vec<Bytes>>,
}

impl ForgetQueue {
    /// Takes a [`Forward`]: returns the keys the hub's own store forgets now (it holds every
    /// entry) and the messages to send now — each copy with its shard's waiting forgets, and
    /// the forgets of a shard that has [`FORGET_BATCH`] waiting.
    pub(super) fn route(&mut self, f: Forward) -> (Vec<Bytes>, Outgoing) {
        let mut hub = Vec::with_capacity(f.forget.len());
        for (key, at) in f.forget {
            for shard in at.into_iter().flatten() {
                self.waiting.entry(shard).or_default().push(key.clone());
            }
            hub.push(key);
        }
        let mut out = Outgoing::new();
        if !f.entries.is_empty() {
            for shard in f.to {
                let forget = self.waiting.remove(&shard).unwrap_or_default();
                out.insert(shard, (f.entries.clone(), forget));
            }
        }
        self.waiting.retain(|shard, keys| {
            if keys.len() < FORGET_BATCH {
                return true;
            }
            out.entry(*shard).or_default().1.append(keys);
            false
        });
        (hub, out)
    }

    /// Every shard's waiting forgets, to send now.
    pub(super) fn flush(&mut self) -> Outgoing {
        std::mem::take(&mut self.waiting)
            .into_iter()
            .map(|(shard, keys)| (shard, (Vec::new(), keys)))
            .collect()
    }
}

impl Links {
    /// Best-effort copies (never waits: called from inside TLS handshakes and link readers),
    /// with the shard's waiting forgets ([`ForgetQueue::route`]). A `store_entries` that is
    /// dropped leaves its forgets to the entries' TTL or the store's bound.
    pub(super) fn forward(&self, f: Forward) {
        let (hub, out) = lock(&self.inner.forgets).route(f);
        for key in hub {
            self.inner.store.forget(&key);
        }
        self.send_entries(out);
    }

    /// Sends every shard the forgets waiting for it.
    pub(super) fn flush_forgets(&self) {
        let out = lock(&self.inner.forgets).flush();
        self.send_entries(out);
    }

    fn send_entries(&self, out: Outgoing) {
        if out.is_empty() {
            return;
        }
        let senders = lock(&self.inner.senders);
        let c = &self.inner.hub.link;
        for (shard, (entries, forget)) in out {
            let Some(tx) = senders.get(&shard) else {
                continue;
            };
            let cmd = HubCmd::StoreEntries { entries, forget };
            let counter = match tx.try_send(cmd) {
                Ok(()) => &c.entries_forwarded,
                Err(_) => &c.forwards_dropped,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: u8) -> Bytes {
        vec![k; 4].into()
    }

    fn entry(k: u8) -> StoreEntry {
        StoreEntry {
            key: key(k),
            value: vec![k].into(),
        }
    }

    #[test]
    fn forgets_wait_for_a_copy_a_full_batch_or_the_flush() {
        let mut q = ForgetQueue::default();
        let (s1, s2) = (ShardId(1), ShardId(2));
        // Held at the hub and both shards: the hub forgets now, the shards wait.
        let f = Forward {
            forget: vec![(key(1), vec![None, Some(s1), Some(s2)])],
            ..Forward::default()
        };
        let (hub, out) = q.route(f);
        assert_eq!(hub, vec![key(1)]);
        assert!(out.is_empty(), "no message of their own: {out:?}");
        // A copy to shard 2 takes shard 2's forgets along; shard 1's still wait.
        let f = Forward {
            to: vec![s2],
            entries: vec![entry(9)],
            forget: Vec::new(),
        };
        let (_, out) = q.route(f);
        assert_eq!(out.len(), 1);
        assert_eq!(out[&s2], (vec![entry(9)], vec![key(1)]));
        // A full batch goes out at once.
        for k in 2..=FORGET_BATCH as u8 {
            let f = Forward {
                forget: vec![(key(k), vec![Some(s1)])],
                ..Forward::default()
            };
            let (_, out) = q.route(f);
            if usize::from(k) < FORGET_BATCH {
                assert!(out.is_empty(), "batch not full at {k}");
            } else {
                assert_eq!(out[&s1].1.len(), FORGET_BATCH);
            }
        }
        // The flush sends whatever waits, then nothing is left.
        q.route(Forward {
            forget: vec![(key(200), vec![Some(s2)])],
            ..Forward::default()
        });
        let out = q.flush();
        assert_eq!(out[&s2], (Vec::new(), vec![key(200)]));
        assert!(q.flush().is_empty());
    }
}
