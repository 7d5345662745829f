//! Placement: which shard group serves a request, and in which order its shards are tried.
//!
//! Sans-IO. The hub driver passes a snapshot of the shards ([`ShardView`]) and the request; the
//! [`Placer`] returns a [`Decision`]. The request carries what the hub predicted for the client:
//! its [`Priority`] and the bitrate it is expected to pull (`expect_kbps`, from its profile or
//! its hint). A shard's headroom for a request is its admission limit for that priority
//! ([`crate::shard::admit_limit`]: the top tenth of a quota is kept for high-priority clients)
//! minus its open sessions. The default [`HeadroomPlacer`]:
//! - synthetic streams (`synth/…`) go to the group with the most headroom. Within it:
//!   - a *predicted-heavy* client (`expect_kbps >= heavy_kbps`) goes where the bandwidth
//!     headroom is: shards ranked by the expected bitrate already committed to them (the sum of
//!     their sessions' `expect_kbps`), least first;
//!   - any other client gets the *power of two choices*: two distinct shards drawn by a hash of
//!     the client id and a per-placer counter, the less loaded (sessions, then committed
//!     bitrate) first, then the rest least loaded first. Simultaneous arrivals that see the same
//!     snapshot so spread over the group instead of herding onto its least loaded shard;
//! - live streams must meet their publisher: group and shard order come from rendezvous hashing
//!   of the stream name over live shards with headroom ([`rendezvous_order`]), so publisher and
//!   subscribers rank the same shard first and fail over to the same next one. The first
//!   `1 + live_standbys` shards of that order hold the stream (the primary mirrors it to the
//!   others, see [`crate::shard::replica`]), so a subscriber's grant starts at one of them
//!   chosen by a hash of its client id (the rest follow in order): subscribers spread over the
//!   copies, and the publisher alone goes to the primary.
//!
//! Another policy plugs in by implementing [`Placer`].

use std::net::SocketAddr;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::ids::{ClientId, GroupId, ShardId, StreamName};
use crate::security::token::Priority;
use crate::shard::admit_limit;
use crate::wire::{ErrorCode, Hints, Role};

/// What placement knows about one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardView {
    pub id: ShardId,
    pub group: GroupId,
    pub addr: SocketAddr,
    pub alive: bool,
    pub sessions: u64,
    pub capacity: u64,
    /// Sum of the expected bitrates of the open sessions.
    pub committed_kbps: u64,
}

impl ShardView {
    /// Sessions this shard still admits for a client of `priority`.
    pub fn headroom(&self, priority: Priority) -> u64 {
        if self.alive {
            admit_limit(self.capacity, priority).saturating_sub(self.sessions)
        } else {
            0
        }
    }
}

/// The request as placement sees it.
#[derive(Debug, Clone, Copy)]
pub struct PlacementRequest<'a> {
    pub client: &'a ClientId,
    pub stream: &'a StreamName,
    pub role: Role,
    pub hints: &'a Hints,
    /// The hub's priority for the client.
    pub priority: Priority,
    /// The bitrate the client is expected to pull; 0 unknown.
    pub expect_kbps: u32,
}

/// The chosen group and its shards, best first (at most the requested number).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub group: GroupId,
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlacementError {
    #[error("no shard group has capacity")]
    NoCapacity,
}

impl PlacementError {
    pub fn code(self) -> ErrorCode {
        match self {
            PlacementError::NoCapacity => ErrorCode::NoCapacity,
        }
    }
}

/// A placement policy.
pub trait Placer: Send {
    fn place(
        &mut self,
        req: &PlacementRequest<'_>,
        shards: &[ShardView],
        want: usize,
        now: Instant,
    ) -> Result<Decision, PlacementError>;
}

fn score(parts: &[&[u8]]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u32).to_be_bytes());
        h.update(p);
    }
    u64::from_be_bytes(h.finalize()[..8].try_into().expect("32-byte digest"))
}

/// A live stream's rendezvous score on one shard (higher ranks first).
fn live_score(stream: &StreamName, shard: ShardId) -> u64 {
    score(&[stream.as_str().as_bytes(), &shard.0.to_be_bytes()])
}

/// Shards in a live stream's rendezvous order, best first: the order grants rank them in, and
/// the order a primary picks its standbys in.
pub fn rendezvous_order(
    stream: &StreamName,
    shards: impl IntoIterator<Item = ShardId>,
) -> Vec<ShardId> {
    let mut v: Vec<ShardId> = shards.into_iter().collect();
    v.sort_by_key(|&id| (std::cmp::Reverse(live_score(stream, id)), id));
    v.dedup();
    v
}

/// The group that lacked room for a request placement refused, so the pool grows only that
/// one: a live stream's own group (the rendezvous choice among all groups, with or without
/// headroom), or for a synthetic stream the group with the fewest live shards.
pub fn lacking_group(stream: &StreamName, shards: &[ShardView]) -> Option<GroupId> {
    let mut groups: Vec<GroupId> = shards.iter().map(|s| s.group).collect();
    groups.sort();
    groups.dedup();
    if stream.is_synthetic() {
        let live = |g: GroupId| shards.iter().filter(|s| s.group == g && s.alive).count();
        groups.into_iter().min_by_key(|&g| (live(g), g))
    } else {
        let name = stream.as_str().as_bytes();
        groups
            .into_iter()
            .max_by_key(|g| score(&[name, &g.0.to_be_bytes()]))
    }
}

/// The default placement (see the module docs).
#[derive(Debug, Clone)]
pub struct HeadroomPlacer {
    /// Clients expected to pull at least this many kbit/s are placed by bandwidth headroom.
    pub heavy_kbps: u32,
    /// Standby copies of each live stream (`streams.live_standbys`): subscribers of a live
    /// stream spread over its first `1 + live_standbys` shards.
    pub live_standbys: usize,
    /// Draws of the power-of-two choices (mixed into the hash so that one client's repeated
    /// requests spread too).
    draws: u64,
}

/// Default [`HeadroomPlacer::heavy_kbps`]: 4 Mbit/s (an HD video stream).
pub const HEAVY_KBPS: u32 = 4_000;

impl Default for HeadroomPlacer {
    fn default() -> Self {
        HeadroomPlacer {
            heavy_kbps: HEAVY_KBPS,
            live_standbys: 0,
            draws: 0,
        }
    }
}

impl HeadroomPlacer {
    /// The default placer for a cluster keeping `n` standby copies of each live stream.
    pub fn with_live_standbys(n: usize) -> Self {
        HeadroomPlacer {
            live_standbys: n,
            ..HeadroomPlacer::default()
        }
    }
}

impl Placer for HeadroomPlacer {
    fn place(
        &mut self,
        req: &PlacementRequest<'_>,
        shards: &[ShardView],
        want: usize,
        _now: Instant,
    ) -> Result<Decision, PlacementError> {
        let prio = req.priority;
        let mut groups: Vec<GroupId> = shards.iter().map(|s| s.group).collect();
        groups.sort();
        groups.dedup();
        let headroom = |g: GroupId| -> u64 {
            shards
                .iter()
                .filter(|s| s.group == g)
                .map(|s| s.headroom(prio))
                .sum()
        };
        let stream = req.stream.as_str().as_bytes();
        let candidates = groups.into_iter().filter(|&g| headroom(g) > 0);
        let group = if req.stream.is_synthetic() {
            candidates.max_by_key(|&g| (headroom(g), std::cmp::Reverse(g)))
        } else {
            candidates.max_by_key(|g| score(&[stream, &g.0.to_be_bytes()]))
        }
        .ok_or(PlacementError::NoCapacity)?;
        let mut ranked: Vec<&ShardView> = shards
            .iter()
            .filter(|s| s.group == group && s.headroom(prio) > 0)
            .collect();
        if !req.stream.is_synthetic() {
            ranked.sort_by_key(|s| (std::cmp::Reverse(live_score(req.stream, s.id)), s.id));
            let copies = (1 + self.live_standbys).min(ranked.len());
            if req.role == Role::Subscribe && copies > 1 {
                let first = score(&[req.client.as_str().as_bytes(), stream]) % copies as u64;
                ranked[..copies].rotate_left(first as usize);
            }
        } else if req.expect_kbps >= self.heavy_kbps {
            ranked.sort_by_key(|s| (s.committed_kbps, s.sessions, s.id));
        } else {
            // Ties are broken by a per-draw hash, so equally loaded shards are equally likely.
            self.draws = self.draws.wrapping_add(1);
            let (client, draw) = (req.client.as_str().as_bytes(), self.draws.to_be_bytes());
            ranked.sort_by_cached_key(|s| {
                let tie = score(&[client, &draw, &s.id.0.to_be_bytes()]);
                (s.sessions, s.committed_kbps, tie)
            });
            if ranked.len() > 2 {
                let h = score(&[client, &draw]);
                let n = ranked.len() as u64;
                let a = (h % n) as usize;
                let b = ((a as u64 + 1 + (h >> 32) % (n - 1)) % n) as usize;
                // `ranked` is sorted least loaded first: the lower index is the better one.
                let chosen = ranked.remove(a.min(b));
                ranked.insert(0, chosen);
            }
        }
        ranked.truncate(want.max(1));
        Ok(Decision {
            group,
            shards: ranked.into_iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u32, group: u32, sessions: u64, alive: bool) -> ShardView {
        ShardView {
            id: ShardId(id),
            group: GroupId(group),
            addr: ([127, 0, 0, 1], 1000 + id as u16).into(),
            alive,
            sessions,
            capacity: 10,
            committed_kbps: 0,
        }
    }

    fn place_with(
        placer: &mut HeadroomPlacer,
        stream: &str,
        client: &str,
        priority: Priority,
        expect_kbps: u32,
        shards: &[ShardView],
    ) -> Result<Decision, PlacementError> {
        let (c, s, h) = (
            ClientId::new(client).unwrap(),
            StreamName::new(stream).unwrap(),
            Hints::default(),
        );
        let req = PlacementRequest {
            client: &c,
            stream: &s,
            role: Role::Subscribe,
            hints: &h,
            priority,
            expect_kbps,
        };
        placer.place(&req, shards, 2, crate::clock::now())
    }

    fn place(stream: &str, client: &str, shards: &[ShardView]) -> Result<Decision, PlacementError> {
        let mut p = HeadroomPlacer::default();
        place_with(&mut p, stream, client, Priority::Normal, 0, shards)
    }

    #[test]
    fn simultaneous_arrivals_spread_by_power_of_two_choices() {
        // Eight equally loaded shards, 400 arrivals that all see the same snapshot.
        let shards: Vec<ShardView> = (0..8).map(|i| view(i, 0, 4, true)).collect();
        let mut p = HeadroomPlacer::default();
        // How often each shard comes first over 400 arrivals.
        let mut firsts_over = |shards: &[ShardView]| {
            let mut firsts = [0u32; 8];
            for i in 0..400 {
                let c = format!("c{i}");
                let d = place_with(&mut p, "synth/a", &c, Priority::Normal, 0, shards).unwrap();
                firsts[d.shards[0].id.0 as usize] += 1;
                assert_eq!(d.shards.len(), 2);
                assert_ne!(d.shards[0].id, d.shards[1].id);
            }
            firsts
        };
        let firsts = firsts_over(&shards);
        // Least-loaded-first alone would put all 400 on one shard.
        assert!(firsts.iter().all(|&n| n > 0), "{firsts:?}");
        assert!(firsts.iter().all(|&n| n < 400 / 4), "{firsts:?}");
        // With unequal load the most loaded shard never wins a pair, the least loaded most often.
        let mut shards = shards;
        for (i, s) in shards.iter_mut().enumerate() {
            s.sessions = i as u64;
        }
        let firsts = firsts_over(&shards);
        // Expected shares (rank i of 8 wins with probability (7 - i) / 28): 100, 86, … 14, 0.
        assert_eq!(firsts[7], 0, "{firsts:?}");
        assert_eq!(firsts.iter().max(), Some(&firsts[0]), "{firsts:?}");
        assert!(firsts[..4].iter().sum::<u32>() > 3 * firsts[4..].iter().sum::<u32>());
    }

    #[test]
    fn predicted_heavy_clients_go_where_the_bandwidth_is() {
        let mut shards: Vec<ShardView> = (0..4).map(|i| view(i, 0, 2, true)).collect();
        shards[0].committed_kbps = 20_000;
        shards[1].committed_kbps = 12_000;
        shards[2].committed_kbps = 1_000;
        shards[2].sessions = 6;
        shards[3].committed_kbps = 9_000;
        let mut p = HeadroomPlacer::default();
        for i in 0..20 {
            let d = place_with(
                &mut p,
                "synth/a",
                &format!("h{i}"),
                Priority::Normal,
                8_000,
                &shards,
            )
            .unwrap();
            assert_eq!(
                d.shards.iter().map(|s| s.id.0).collect::<Vec<_>>(),
                [2, 3],
                "heavy: least committed bitrate first, despite more sessions"
            );
        }
        // A light client is placed by sessions: shard 2 (6 sessions) never comes first.
        for i in 0..50 {
            let d = place_with(
                &mut p,
                "synth/a",
                &format!("l{i}"),
                Priority::Normal,
                500,
                &shards,
            )
            .unwrap();
            assert_ne!(d.shards[0].id.0, 2);
        }
    }

    #[test]
    fn the_reserve_near_quota_is_kept_for_prioritized_clients() {
        // Capacity 10: normal clients are admitted to 9, high to 10, low to 8.
        let shards = [view(0, 0, 9, true)];
        let mut p = HeadroomPlacer::default();
        let mut try_with = |prio, shards: &[ShardView]| {
            place_with(&mut p, "synth/a", "c", prio, 0, shards).map(|d| d.shards[0].id)
        };
        assert_eq!(
            try_with(Priority::Normal, &shards),
            Err(PlacementError::NoCapacity)
        );
        assert_eq!(try_with(Priority::High, &shards), Ok(ShardId(0)));
        let shards = [view(0, 0, 8, true)];
        assert_eq!(
            try_with(Priority::Low, &shards),
            Err(PlacementError::NoCapacity)
        );
        assert_eq!(try_with(Priority::Normal, &shards), Ok(ShardId(0)));
        let full = [view(0, 0, 10, true)];
        assert_eq!(
            try_with(Priority::High, &full),
            Err(PlacementError::NoCapacity)
        );
    }

    #[test]
    fn synthetic_goes_to_most_headroom_least_loaded_first() {
        let shards = [
            view(0, 0, 5, true),
            view(1, 1, 1, true),
            view(2, 0, 5, true),
            view(3, 1, 3, true),
        ];
        let d = place("synth/a", "c1", &shards).unwrap();
        assert_eq!(d.group, GroupId(1));
        assert_eq!(
            d.shards.iter().map(|s| s.id).collect::<Vec<_>>(),
            [ShardId(1), ShardId(3)]
        );
    }

    #[test]
    fn dead_and_full_shards_are_skipped() {
        let shards = [view(0, 0, 9, true), view(1, 0, 0, false)];
        assert_eq!(
            place("synth/a", "c", &shards),
            Err(PlacementError::NoCapacity)
        );
        let shards = [
            view(0, 0, 10, true),
            view(1, 0, 0, true),
            view(2, 1, 0, false),
        ];
        let d = place("live/x", "c", &shards).unwrap();
        assert_eq!(d.shards.len(), 1);
        assert_eq!(d.shards[0].id, ShardId(1));
    }

    #[test]
    fn only_the_group_that_lacked_room_is_named() {
        let full = [
            view(0, 0, 10, true),
            view(1, 1, 10, true),
            view(2, 1, 10, true),
        ];
        let synth = StreamName::new("synth/a").unwrap();
        assert_eq!(lacking_group(&synth, &full), Some(GroupId(0)));
        let live = StreamName::new("live/x").unwrap();
        let g = lacking_group(&live, &full).unwrap();
        // The live stream's group is the one placement picks when it has room.
        let mut p = HeadroomPlacer::default();
        let roomy = [
            view(0, 0, 0, true),
            view(1, 1, 0, true),
            view(2, 1, 0, true),
        ];
        let d = place_with(&mut p, "live/x", "c", Priority::Normal, 0, &roomy).unwrap();
        assert_eq!(d.group, g);
        assert_eq!(lacking_group(&live, &[]), None);
    }

    #[test]
    fn live_streams_rank_the_same_for_every_client() {
        let shards = [
            view(0, 0, 0, true),
            view(1, 1, 9, true),
            view(2, 0, 4, true),
            view(3, 1, 0, true),
        ];
        let a = place("live/game", "publisher", &shards).unwrap();
        for i in 0..20 {
            assert_eq!(place("live/game", &format!("sub{i}"), &shards).unwrap(), a);
        }
    }

    #[test]
    fn live_subscribers_spread_over_the_copies_and_the_publisher_gets_the_primary() {
        let shards: Vec<ShardView> = (0..4).map(|i| view(i, 0, 0, true)).collect();
        let stream = StreamName::new("live/spread").unwrap();
        let order = rendezvous_order(&stream, shards.iter().map(|s| s.id));
        let mut p = HeadroomPlacer::with_live_standbys(1);
        let (h, publisher) = (Hints::default(), ClientId::new("pub").unwrap());
        let req = PlacementRequest {
            client: &publisher,
            stream: &stream,
            role: Role::Publish,
            hints: &h,
            priority: Priority::Normal,
            expect_kbps: 0,
        };
        let d = p.place(&req, &shards, 4, crate::clock::now()).unwrap();
        let ids: Vec<ShardId> = d.shards.iter().map(|s| s.id).collect();
        assert_eq!(ids, order, "the publisher's grant is the rendezvous order");
        let mut first = std::collections::BTreeMap::new();
        for i in 0..200 {
            let d = place_with(
                &mut p,
                "live/spread",
                &format!("s{i}"),
                Priority::Normal,
                0,
                &shards,
            )
            .unwrap();
            let ids: Vec<ShardId> = d.shards.iter().map(|s| s.id).collect();
            // Each grant names both copies, and only them (two shards asked for).
            let mut sorted = ids.clone();
            sorted.sort();
            let mut copies = order[..2].to_vec();
            copies.sort();
            assert_eq!(sorted, copies);
            *first.entry(ids[0]).or_insert(0) += 1;
        }
        assert_eq!(first.len(), 2, "{first:?}");
        assert!(first.values().all(|&n| n > 60), "spread: {first:?}");
    }
}
