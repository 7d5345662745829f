//! Placement: which shard group serves a request, and in which order its shards are tried.
//!
//! Sans-IO. The hub driver passes a snapshot of the shards ([`ShardView`]) and the request; the
//! [`Placer`] returns a [`Decision`]. The default [`HeadroomPlacer`]:
//! - synthetic streams (`synth/…`) go to the group with the most headroom (free session slots
//!   over its live shards); its shards are ranked least-loaded first, ties broken by a hash of
//!   the client id so that simultaneous arrivals spread;
//! - live streams must meet their publisher: group and shard order come from rendezvous hashing
//!   of the stream name over live shards with headroom, so publisher and subscribers rank the
//!   same shard first and fail over to the same next one.
//!
//! A load predictor plugs in by implementing [`Placer`].

use std::net::SocketAddr;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::ids::{ClientId, GroupId, ShardId, StreamName};
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
}

impl ShardView {
    fn headroom(&self) -> u64 {
        if self.alive {
            self.capacity.saturating_sub(self.sessions)
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

/// The default placement: most headroom for synthetic streams, rendezvous for live ones.
#[derive(Debug, Default, Clone)]
pub struct HeadroomPlacer;

impl Placer for HeadroomPlacer {
    fn place(
        &mut self,
        req: &PlacementRequest<'_>,
        shards: &[ShardView],
        want: usize,
        _now: Instant,
    ) -> Result<Decision, PlacementError> {
        let mut groups: Vec<GroupId> = shards.iter().map(|s| s.group).collect();
        groups.sort();
        groups.dedup();
        let headroom = |g: GroupId| -> u64 {
            shards
                .iter()
                .filter(|s| s.group == g)
                .map(ShardView::headroom)
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
            .filter(|s| s.group == group && s.headroom() > 0)
            .collect();
        if req.stream.is_synthetic() {
            let client = req.client.as_str().as_bytes();
            ranked.sort_by_key(|s| (s.sessions, score(&[client, &s.id.0.to_be_bytes()])));
        } else {
            ranked.sort_by_key(|s| std::cmp::Reverse(score(&[stream, &s.id.0.to_be_bytes()])));
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
        }
    }

    fn place(stream: &str, client: &str, shards: &[ShardView]) -> Result<Decision, PlacementError> {
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
        };
        HeadroomPlacer.place(&req, shards, 2, Instant::now())
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
        let shards = [view(0, 0, 10, true), view(1, 0, 0, false)];
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
}
