//! Copies of a client's session entries to the shards it was sent to, and the forgets of the
//! entries that fell out of its newest (see [`crate::tickets::book`]).
//!
//! A forget is not urgent (it only frees memory), so it does not cost a link message of its
//! own: a shard's forgets wait, and go out with the next copy to that shard, when
//! [`FORGET_BATCH`] of them wait, or at the hub's once-a-second flush. A returning client's
//! hub handshake pushes 4 entries out of its book; sent at once, that was one more message on
//! each of its shards' links per grant.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::{lock, HubCmd, Links, ShardId};
use crate::link::StoreEntry;
use crate::tickets::book::Forward;

/// A shard's waiting forgets go out at once when this many wait.
pub(super) const FORGET_BATCH: usize = 64;

/// Per shard: the entries to copy and the keys to forget, in one `store_entries`.
type Outgoing = BTreeMap<ShardId, (Vec<StoreEntry>, Vec<Bytes>)>;

impl Links {
    /// Best-effort copies (never waits: called from inside TLS handshakes and link readers),
    /// with the shard's waiting forgets. What fell out of the client's newest entries leaves
    /// the hub's store (which holds every entry) at once and waits for the shards that hold
    /// it. A `store_entries` that is dropped leaves its forgets to the entries' TTL or the
    /// store's bound.
    pub(super) fn forward(&self, f: Forward) {
        let mut out = Outgoing::new();
        {
            let mut waiting = lock(&self.inner.forgets);
            for (key, at) in f.forget {
                self.inner.store.forget(&key);
                for shard in at.into_iter().flatten() {
                    waiting.entry(shard).or_default().push(key.clone());
                }
            }
            if !f.entries.is_empty() {
                for shard in f.to {
                    let forget = waiting.remove(&shard).unwrap_or_default();
                    out.insert(shard, (f.entries.clone(), forget));
                }
            }
            waiting.retain(|shard, keys| {
                if keys.len() < FORGET_BATCH {
                    return true;
                }
                out.entry(*shard).or_default().1.append(keys);
                false
            });
        }
        self.send_entries(out);
    }

    /// Sends every shard the forgets waiting for it.
    pub(super) fn flush_forgets(&self) {
        let waiting = std::mem::take(&mut *lock(&self.inner.forgets));
        let out = waiting
            .into_iter()
            .map(|(shard, keys)| (shard, (Vec::new(), keys)))
            .collect();
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
