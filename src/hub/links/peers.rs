//! The group's peers (`peers` on the link): which shards take standby copies of live streams,
//! announced to every shard of a group whenever its membership changes.

use std::sync::atomic::Ordering;

use tracing::{debug, warn};

use super::{lock, HubCmd, Links, ShardId, PEERS_SEND_WAIT};

impl Links {
    /// The group's membership changed: its shards get the new peer list (in order, the latest
    /// state, from [`Links::spawn_peer_announcer`]).
    pub(super) fn peers_changed(&self, group: crate::ids::GroupId) {
        lock(&self.inner.peers_dirty).insert(group);
        self.inner.peers_changed.notify_one();
    }

    /// Sends `peers` to the shards of each group whose membership changed, one group at a
    /// time, the list read when it is sent (so a burst of changes sends the last one).
    pub fn spawn_peer_announcer(&self) -> tokio::task::JoinHandle<()> {
        let links = self.clone();
        tokio::spawn(async move {
            loop {
                links.inner.peers_changed.notified().await;
                loop {
                    let Some(group) = lock(&links.inner.peers_dirty).pop_first() else {
                        break;
                    };
                    let (peers, members) = {
                        let d = lock(&links.inner.directory);
                        let members: Vec<ShardId> = d
                            .records()
                            .filter(|r| r.group == group)
                            .map(|r| r.id)
                            .collect();
                        (d.peers(group), members)
                    };
                    let cmd = crate::link::GroupPeers {
                        group,
                        standbys: links.inner.live_standbys.load(Ordering::Relaxed),
                        shards: peers,
                    };
                    debug!(group = group.0, peers = cmd.shards.len(), "peers announced");
                    for id in members {
                        // A shard whose link just closed misses it, as it should; one whose
                        // link is full (silent, hung) does not hold up the others.
                        let send = links.command(id, HubCmd::Peers(cmd.clone()));
                        if tokio::time::timeout(PEERS_SEND_WAIT, send).await.is_err() {
                            warn!(shard = id.0, "no room for the group's peers on its link");
                        }
                    }
                }
            }
        })
    }
}
