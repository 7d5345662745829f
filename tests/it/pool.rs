//! The shard pool driving real embedded shards: clients arrive along a ramp, the predictive
//! pool starts shards as the load grows (the hub places clients on them), and every client's
//! stream stays complete.

use std::time::Duration;

use shoal::pool::policy::Policy;
use shoal::traffic::{self, Shape, TrafficOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_real_shards_with_a_ramp_and_loses_nothing() {
    let o = TrafficOptions {
        shape: Shape::Ramp,
        duration: Duration::from_secs(12),
        peak_rate: 6.0,
        hold: Duration::from_secs(4),
        shard_sessions: 4,
        policy: Policy::Predictive,
    };
    let r = traffic::run(o, |_| {}).await.expect("runs");
    assert!(r.clients >= 30, "{r:?}");
    assert!(r.peak_shards >= 3, "the pool grew: {r:?}");
    assert!(
        r.seconds.iter().any(|s| s.desired > 1 && s.forecast > 0.0),
        "the predictor drove the size: {:?}",
        r.seconds
    );
    assert!(r.chunks > 1000, "{r:?}");
    assert_eq!(
        (
            r.missing,
            r.duplicates,
            r.integrity_failures,
            r.client_errors
        ),
        (0, 0, 0, 0),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_n_shards_keeps_a_primary_and_a_standby_and_closes_the_rest_cleanly() {
    use shoal::ids::StreamName;
    use shoal::wire::Role;
    use std::sync::atomic::Ordering;

    use crate::common::{self, TestCluster};

    let mut cfg = common::config();
    cfg.shards.count = 4;
    cfg.shards.groups = 1;
    cfg.hub.grant_shards = 4;
    cfg.hub.tickets_per_handshake = 6;
    let tc = TestCluster::with(cfg);
    let client = tc.client("racer");
    let reply = client
        .request(&StreamName::new("synth/race").unwrap(), Role::Subscribe)
        .await
        .unwrap();
    assert_eq!(reply.grant.shards.len(), 4);
    let race = client.race(&reply, 4).await.unwrap();
    assert!(race.failed.is_empty(), "{:?}", race.failed);
    assert_eq!(race.probes.len(), 4, "every shard answered the probe");
    assert!(race.probes.iter().all(|p| p.load_permille.is_some()));
    assert_eq!(race.closed, 2);
    let standby = race.standby.as_ref().expect("a warm standby");
    assert_ne!(standby.shard, race.primary.shard);
    assert_eq!(race.probes[0].shard, race.primary.shard, "best first");
    // The two losers left: only primary and standby hold sessions, and the client has no
    // connection attempt left behind (hub + primary + standby).
    let mut open = 0;
    for _ in 0..50 {
        open = tc
            .cluster
            .shards()
            .iter()
            .map(|s| s.counters().sessions.load(Ordering::Relaxed))
            .sum::<u64>();
        if open == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(open, 2);
    // Closed connections linger on the endpoint while they drain (RFC 9000 section 10.2).
    let mut conns = 0;
    for _ in 0..100 {
        conns = client.endpoint().open_connections();
        if conns == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(conns, 3);
    let refused: u64 = tc
        .cluster
        .shards()
        .iter()
        .map(|s| s.counters().total_rejections())
        .sum();
    assert_eq!(refused, 0, "losers closed with NO_ERROR, never refused");
    // Both kept sessions stay alive over several heartbeat intervals.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(race.primary.is_open() && standby.is_open());
    drop(race);
    tc.shutdown().await;
}
