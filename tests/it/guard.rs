//! The handshake guard at a real endpoint: a Retry when the backlog is over its threshold (the
//! client follows it and is served), CONNECTION_REFUSED past a per-socket limit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal::ids::StreamName;
use shoal::wire::Role;

use super::common::{RawClient, TestCluster};

#[tokio::test]
async fn past_the_backlog_a_client_gets_a_retry_and_is_served_after_it() {
    let mut cfg = super::common::config();
    cfg.transport.handshakes.retry_above = 1;
    let tc = TestCluster::with(cfg);
    let hub = tc.cluster.hub.addr();
    // A connection that asks nothing holds the one handshake slot (until its request timeout).
    let raw = RawClient::new();
    let idle = raw.connect(hub).await;
    let client = tc.client("guard-retry");
    let stream = StreamName::new("synth/guard-retry").unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(&stream, Role::Subscribe),
    )
    .await
    .expect("served within 10 s")
    .expect("granted after the Retry");
    assert!(!reply.grant.shards.is_empty());
    let retries = tc
        .cluster
        .hub
        .guard()
        .counters()
        .retries
        .load(Ordering::Relaxed);
    assert!(retries >= 1, "the hub sent no Retry");
    idle.close(0u32.into(), b"");
    client.close().await;
    tc.shutdown().await;
}

#[tokio::test]
async fn a_socket_past_its_handshakes_in_flight_is_refused() {
    let mut cfg = super::common::config();
    cfg.transport.handshakes.per_socket = 1;
    let tc = TestCluster::with(cfg);
    let hub = tc.cluster.hub.addr();
    let raw = RawClient::new();
    let first = raw.connect(hub).await;
    // The same socket again while the first has asked nothing.
    let second = raw
        .endpoint
        .connect_with(raw.config.clone(), hub, shoal::DEFAULT_CLUSTER)
        .unwrap()
        .await;
    match second {
        Err(quinn::ConnectionError::ConnectionClosed(c)) => {
            assert_eq!(
                c.error_code,
                quinn_proto::TransportErrorCode::CONNECTION_REFUSED
            );
        }
        other => panic!("expected CONNECTION_REFUSED, got {other:?}"),
    }
    assert_eq!(
        tc.cluster
            .hub
            .guard()
            .counters()
            .refused
            .load(Ordering::Relaxed),
        1
    );
    // Once the first asked (or went), the socket gets in again.
    first.close(0u32.into(), b"");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let third = raw.connect(hub).await;
    third.close(0u32.into(), b"");
    tc.shutdown().await;
}

#[tokio::test]
async fn a_client_refused_by_the_hubs_rate_limit_asks_again_after_a_backoff() {
    let mut cfg = super::common::config();
    // One new connection at once from an IP, the next one 200 ms later.
    cfg.transport.handshakes.per_ip_burst = 1.0;
    cfg.transport.handshakes.per_ip_rate = 5.0;
    let tc = TestCluster::with(cfg);
    let raw = RawClient::new();
    let first = raw.connect(tc.cluster.hub.addr()).await;
    let client = tc.client("guard-backoff");
    let stream = StreamName::new("synth/guard-backoff").unwrap();
    let reply = client.request(&stream, Role::Subscribe).await;
    assert!(
        reply.is_ok(),
        "granted after the hub refused once: {reply:?}"
    );
    let refused = tc
        .cluster
        .hub
        .guard()
        .counters()
        .refused
        .load(Ordering::Relaxed);
    assert!(refused >= 1, "the hub refused nothing");
    first.close(0u32.into(), b"");
    client.close().await;
    tc.shutdown().await;
}
