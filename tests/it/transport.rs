//! The transport settings of PROTOCOL.md section 1 that a peer can observe.

use std::time::Duration;

use shoal::ids::GroupId;

use crate::common::*;

/// The hub never probes the path MTU (its connections carry only control messages); shards
/// do. A probe is a PING padded to the size tried, and no shoal endpoint sends a PING
/// otherwise (QUIC keep-alive is off), so the PINGs a client receives are the probes.
#[tokio::test]
async fn the_hub_never_probes_the_path_mtu_and_a_shard_does() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let hub = raw.connect(tc.hub()).await;
    let shard_addr = tc.shards_of(GroupId(0))[0].addr();
    let shard = raw.connect(shard_addr).await;
    // quinn probes as soon as the handshake is confirmed; the hub's connection is older.
    let probed = eventually(Duration::from_secs(5), || shard.stats().frame_rx.ping > 0).await;
    assert!(probed, "the shard probed: {:?}", shard.stats().frame_rx);
    // The client's own probes to the hub are answered (acknowledged) as usual.
    let answered = eventually(Duration::from_secs(5), || {
        hub.stats().path.current_mtu > 1200
    })
    .await;
    assert!(
        answered,
        "the hub acknowledged the client's probes: {:?}",
        hub.stats().path
    );
    assert_eq!(
        hub.stats().frame_rx.ping,
        0,
        "the hub sent probes: {:?}",
        hub.stats().frame_rx
    );
    tc.shutdown().await;
}
