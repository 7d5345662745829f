//! The live streams the shards report (`GET /streams/live`): each stream's primary, its
//! standbys with their lag, the shards holding copies and the promotions, joined by name from
//! the shards' last replica reports in the hub's directory.

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;

use super::Shared;
use crate::ids::StreamName;
use crate::sync::lock;

/// One live stream as `GET /streams/live` shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct LiveStream {
    pub stream: StreamName,
    /// The shard its publisher is attached to (none while it has no primary).
    pub primary: Option<crate::ids::ShardId>,
    /// The primary's standbys, each with its lag.
    pub standbys: Vec<crate::link::StandbyLag>,
    /// Every shard holding a standby copy, with the newest sequence it holds.
    pub copies: Vec<(crate::ids::ShardId, Option<u64>)>,
    /// Promotions of a standby copy to primary, over all shards.
    pub promotions: u64,
}

/// The live streams the shards report, by name.
pub fn live_streams_of(records: &[crate::hub::directory::ShardRecord]) -> Vec<LiveStream> {
    let mut by: std::collections::BTreeMap<StreamName, LiveStream> = Default::default();
    for rec in records {
        for r in &rec.replicas {
            let e = by.entry(r.stream.clone()).or_insert_with(|| LiveStream {
                stream: r.stream.clone(),
                primary: None,
                standbys: Vec::new(),
                copies: Vec::new(),
                promotions: 0,
            });
            e.promotions += r.promotions;
            match r.role {
                crate::link::ReplicaRole::Primary => {
                    e.primary = Some(rec.id);
                    e.standbys = r.standbys.clone();
                }
                crate::link::ReplicaRole::Standby => e.copies.push((rec.id, r.last_seq)),
            }
        }
    }
    by.into_values().collect()
}

/// `GET /streams/live`.
pub(super) async fn live_streams(State(s): Shared) -> impl IntoResponse {
    let records: Vec<_> = lock(&s.shards.directory).records().cloned().collect();
    Json(live_streams_of(&records))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use super::*;
    use crate::hub::directory::Directory;
    use crate::ids::{GroupId, ShardId};
    use crate::link::{Register, ReplicaReport, ReplicaRole, StandbyLag, LINK_VERSION};

    #[test]
    fn live_streams_join_the_primary_and_its_copies_by_name() {
        let now = crate::clock::now();
        let mut d = Directory::new(Duration::from_secs(2));
        for id in [1, 2] {
            let reg = Register {
                version: LINK_VERSION,
                shard: ShardId(id),
                group: GroupId(0),
                addr: SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16)),
                capacity: 10,
                mirror: None,
            };
            d.handle_register(&reg, now).unwrap();
        }
        let stream = StreamName::new("live/a").unwrap();
        let lag = StandbyLag {
            shard: ShardId(2),
            acked_seq: Some(9),
            lag_seqs: 1,
            lag_ms: 3,
            connected: true,
        };
        let report = |role, standbys: Vec<StandbyLag>, promotions| ReplicaReport {
            stream: stream.clone(),
            role,
            last_seq: Some(9),
            standbys,
            promotions,
        };
        d.handle_replicas(
            ShardId(1),
            vec![report(ReplicaRole::Primary, vec![lag.clone()], 1)],
            now,
        );
        d.handle_replicas(
            ShardId(2),
            vec![report(ReplicaRole::Standby, vec![], 0)],
            now,
        );
        let records: Vec<_> = d.records().cloned().collect();
        let live = live_streams_of(&records);
        assert_eq!(
            live,
            vec![LiveStream {
                stream,
                primary: Some(ShardId(1)),
                standbys: vec![lag],
                copies: vec![(ShardId(2), Some(9))],
                promotions: 1,
            }]
        );
    }
}
