//! The hub's book of session entries per client.
//!
//! A client presents, at whichever endpoint it connects to next, the newest ticket it holds —
//! from the hub or from a shard. So the hub keeps, per client, the newest entries any endpoint
//! produced for it ([`Book::add`]), and where the client was last sent (its grant's shards).
//! At a grant, [`Book::grant`] returns, per granted shard, the entries to copy there; an entry
//! that arrives later is copied to them at once (the returned forward list). Each entry goes
//! to each endpoint at most once: a ticket a shard already took (resumed) must not be put
//! back into its store by a later grant, or it would resume twice there.
//!
//! Sans-IO, time passed in. Bounds: `per_client` entries per client (the newest; a client keeps
//! at most 8 tickets per server name), `max_clients` clients (least recently touched evicted
//! first, amortised O(1)), every entry expires with the store's TTL.
//!
//! An entry that falls out of its client's newest `per_client` can never be presented again
//! (the client dropped that ticket when it took a newer one), so [`Book::add`] also returns it
//! with the endpoints that hold it, for them to forget: without that, every store would keep
//! every ticket it ever issued or received until its TTL (24 h) or its capacity, one per
//! handshake and per copy, though only a client's newest 8 are of use.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::ids::{ClientId, ShardId};
use crate::link::StoreEntry;

/// One entry, when it expires, and the endpoints that have it (`None`: the hub).
struct Held {
    entry: StoreEntry,
    expires: Instant,
    at: Vec<Option<ShardId>>,
}

struct Client {
    entries: VecDeque<Held>,
    targets: Vec<ShardId>,
    generation: u64,
}

/// See the module doc.
pub struct Book {
    clients: HashMap<ClientId, Client>,
    /// Touch order; slots whose generation no longer matches are stale.
    order: VecDeque<(u64, ClientId)>,
    next_generation: u64,
    max_clients: usize,
    per_client: usize,
    ttl: Duration,
}

/// Entries to copy to shards now, and entries to forget.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Forward {
    pub to: Vec<ShardId>,
    pub entries: Vec<StoreEntry>,
    /// Keys that fell out of their client's newest entries, each with the endpoints it was
    /// put at (`None`: the hub).
    pub forget: Vec<(bytes::Bytes, Vec<Option<ShardId>>)>,
}

/// Clients the hub remembers entries for, by default.
pub const MAX_CLIENTS: usize = 65_536;
/// Entries kept per client (a client holds at most 8 tickets per server name).
pub const PER_CLIENT: usize = 8;

impl Book {
    pub fn new(max_clients: usize, per_client: usize, ttl: Duration) -> Self {
        Self {
            clients: HashMap::new(),
            order: VecDeque::new(),
            next_generation: 0,
            max_clients: max_clients.max(1),
            per_client: per_client.max(1),
            ttl,
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Records entries produced for `client` (at shard `from`, or at the hub when `None`);
    /// returns where to copy them now (the client's current grant shards except `from`) and
    /// the client's entries they pushed out of its newest `per_client`, to forget where held.
    pub fn add(
        &mut self,
        client: &ClientId,
        entries: Vec<StoreEntry>,
        from: Option<ShardId>,
        now: Instant,
    ) -> Forward {
        let (ttl, per) = (self.ttl, self.per_client);
        let c = self.touch(client);
        let to: Vec<ShardId> = c
            .targets
            .iter()
            .copied()
            .filter(|t| Some(*t) != from)
            .collect();
        let mut at = vec![from];
        at.extend(to.iter().copied().map(Some));
        for e in &entries {
            c.entries.retain(|h| h.entry.key != e.key);
            c.entries.push_back(Held {
                entry: e.clone(),
                expires: now.checked_add(ttl).unwrap_or(now),
                at: at.clone(),
            });
        }
        let mut forget = Vec::new();
        while c.entries.len() > per {
            if let Some(old) = c.entries.pop_front() {
                forget.push((old.entry.key, old.at));
            }
        }
        Forward {
            to,
            entries,
            forget,
        }
    }

    /// The client is granted `shards`: they become its targets; returns, per shard, the live
    /// entries it does not have yet, to copy there before the grant leaves.
    pub fn grant(
        &mut self,
        client: &ClientId,
        shards: &[ShardId],
        now: Instant,
    ) -> Vec<(ShardId, Vec<StoreEntry>)> {
        let c = self.touch(client);
        c.targets = shards.to_vec();
        c.entries.retain(|h| h.expires > now);
        let mut plan = Vec::with_capacity(shards.len());
        for &shard in shards {
            let mut copy = Vec::new();
            for h in c
                .entries
                .iter_mut()
                .filter(|h| !h.at.contains(&Some(shard)))
            {
                h.at.push(Some(shard));
                copy.push(h.entry.clone());
            }
            plan.push((shard, copy));
        }
        plan
    }

    fn touch(&mut self, client: &ClientId) -> &mut Client {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.order.push_back((generation, client.clone()));
        let c = self
            .clients
            .entry(client.clone())
            .or_insert_with(|| Client {
                entries: VecDeque::new(),
                targets: Vec::new(),
                generation,
            });
        c.generation = generation;
        self.evict();
        self.clients
            .get_mut(client)
            .expect("the client was just touched and is the newest")
    }

    fn evict(&mut self) {
        while self.clients.len() > self.max_clients {
            let Some((generation, id)) = self.order.pop_front() else {
                break;
            };
            if self
                .clients
                .get(&id)
                .is_some_and(|c| c.generation == generation)
            {
                self.clients.remove(&id);
            }
        }
        if self.order.len() > 2 * self.clients.len() + 64 {
            let clients = &self.clients;
            self.order
                .retain(|(g, id)| clients.get(id).is_some_and(|c| c.generation == *g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(k: u8) -> StoreEntry {
        StoreEntry {
            key: vec![k].into(),
            value: vec![k; 4].into(),
        }
    }

    fn c(n: &str) -> ClientId {
        ClientId::new(n).unwrap()
    }

    fn only(plan: Vec<(ShardId, Vec<StoreEntry>)>, shard: u32) -> Vec<StoreEntry> {
        plan.into_iter()
            .find(|(s, _)| *s == ShardId(shard))
            .map(|(_, e)| e)
            .unwrap_or_default()
    }

    #[test]
    fn a_grant_gets_the_clients_entries_and_later_ones_follow() {
        let t = crate::clock::now();
        let mut b = Book::new(10, 8, Duration::from_secs(60));
        assert!(b.add(&c("a"), vec![e(1), e(2)], None, t).to.is_empty());
        let plan = b.grant(&c("a"), &[ShardId(1), ShardId(2)], t);
        assert_eq!(only(plan, 2), vec![e(1), e(2)]);
        // An entry shard 1 produced goes to shard 2 only.
        let f = b.add(&c("a"), vec![e(3)], Some(ShardId(1)), t);
        assert_eq!(f.to, vec![ShardId(2)]);
        assert_eq!(f.entries, vec![e(3)]);
        assert!(only(b.grant(&c("b"), &[ShardId(1)], t), 1).is_empty());
    }

    #[test]
    fn an_entry_reaches_each_shard_once() {
        let t = crate::clock::now();
        let mut b = Book::new(10, 8, Duration::from_secs(60));
        b.add(&c("a"), vec![e(1)], None, t);
        assert_eq!(only(b.grant(&c("a"), &[ShardId(1)], t), 1), vec![e(1)]);
        // Shard 1 may have resumed it since: a later grant must not put it back there.
        let again = b.grant(&c("a"), &[ShardId(1), ShardId(2)], t);
        assert_eq!(only(again, 1), vec![]);
        // A shard's own entry is never copied back to it.
        b.add(&c("a"), vec![e(2)], Some(ShardId(3)), t);
        assert_eq!(only(b.grant(&c("a"), &[ShardId(3)], t), 3), vec![e(1)]);
    }

    #[test]
    fn an_entry_pushed_out_of_its_clients_newest_is_forgotten_where_it_was_put() {
        let t = crate::clock::now();
        let mut b = Book::new(10, 2, Duration::from_secs(60));
        b.add(&c("a"), vec![e(1)], None, t);
        b.grant(&c("a"), &[ShardId(1), ShardId(2)], t);
        // Shard 1's entry goes to shard 2; nothing fell out yet.
        let f = b.add(&c("a"), vec![e(2)], Some(ShardId(1)), t);
        assert!(f.forget.is_empty());
        // A third: the hub's first entry (at the hub, copied to both shards by the grant) goes.
        let f = b.add(&c("a"), vec![e(3)], Some(ShardId(2)), t);
        assert_eq!(
            f.forget,
            vec![(e(1).key, vec![None, Some(ShardId(1)), Some(ShardId(2))])]
        );
        let f = b.add(&c("a"), vec![e(4)], None, t);
        assert_eq!(
            f.forget,
            vec![(e(2).key, vec![Some(ShardId(1)), Some(ShardId(2))])]
        );
        // Another client's entries are its own.
        assert!(b.add(&c("b"), vec![e(5)], None, t).forget.is_empty());
    }

    #[test]
    fn bounded_per_client_and_in_clients_and_in_time() {
        let t = crate::clock::now();
        let mut b = Book::new(2, 3, Duration::from_secs(5));
        b.add(&c("a"), (0..5).map(e).collect(), None, t);
        assert_eq!(
            only(b.grant(&c("a"), &[ShardId(1)], t), 1),
            vec![e(2), e(3), e(4)]
        );
        let later = t + Duration::from_secs(5);
        assert!(only(b.grant(&c("a"), &[ShardId(2)], later), 2).is_empty());
        b.add(&c("b"), vec![e(9)], None, t);
        b.add(&c("x"), vec![e(8)], None, t);
        assert_eq!(b.len(), 2, "the least recently touched client went");
        assert!(only(b.grant(&c("a"), &[ShardId(3)], t), 3).is_empty());
        for i in 0..10_000u32 {
            b.add(&c(&format!("k{i}")), vec![], None, t);
        }
        assert!(b.order.len() <= 2 * b.len() + 65);
    }
}
