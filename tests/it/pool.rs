//! The shard pool driving real embedded shards: clients arrive along a ramp, the predictive
//! pool starts shards as the load grows (the hub places clients on them), and every client's
//! stream stays complete.

use std::time::Duration;

use shoal::pool::policy::Policy;
use shoal::tools::traffic::{self, Shape, TrafficOptions};

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

/// A run of `n` UDP ports on loopback that are free now (each bound and released), below the
/// ephemeral range so that other tests' sockets do not take them meanwhile.
fn free_port_run(n: u16) -> u16 {
    let start = 20_000 + (std::process::id() % 400) as u16 * 16;
    for base in (start..30_000).step_by(usize::from(n)) {
        if (base..base + n).all(|p| std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no run of {n} free UDP ports from {start}");
}

fn directory_ids(tc: &crate::common::TestCluster) -> std::collections::BTreeSet<u32> {
    tc.cluster
        .directory()
        .lock()
        .unwrap()
        .records()
        .map(|r| r.id.0)
        .collect()
}

/// The `shard` labels of the `shoal_shard_sessions` samples of one `/metrics` exposition.
async fn metrics_shards(admin: std::net::SocketAddr) -> std::collections::BTreeSet<u32> {
    let r = crate::admin::call(admin, "GET", "/metrics", None).await;
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("shoal_shard_sessions{"))
        .map(|rest| {
            let v = rest
                .split_once("shard=\"")
                .and_then(|(_, v)| v.split_once('"'))
                .map(|(v, _)| v)
                .unwrap_or_else(|| panic!("a sample without a shard label: {rest}"));
            v.parse().unwrap_or_else(|_| panic!("shard label {v:?}"))
        })
        .collect()
}

/// Checks that `/metrics` lists exactly the directory's shards, at a moment the directory holds
/// still (read before and after the exposition), and returns them.
async fn metrics_match_directory(
    tc: &crate::common::TestCluster,
    admin: std::net::SocketAddr,
) -> std::collections::BTreeSet<u32> {
    let mut seen = Vec::new();
    for _ in 0..50 {
        let before = directory_ids(tc);
        let listed = metrics_shards(admin).await;
        if directory_ids(tc) == before {
            assert_eq!(listed, before, "/metrics lists the directory's shards");
            return before;
        }
        seen.push((before, listed));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the directory never held still: {seen:?}");
}

/// Waits (bounded: 10 s) until the directory's shards satisfy `done`.
async fn wait_directory(
    tc: &crate::common::TestCluster,
    what: &str,
    done: impl Fn(&std::collections::BTreeSet<u32>) -> bool,
) -> std::collections::BTreeSet<u32> {
    let mut ids = directory_ids(tc);
    for _ in 0..500 {
        if done(&ids) {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        ids = directory_ids(tc);
    }
    panic!("{what}: the directory holds {ids:?}");
}

/// The mirror's source shard (`GET /mirrors/{stream}`), once it is one of the directory's
/// shards other than `not` (bounded: 10 s).
async fn mirror_source(
    tc: &crate::common::TestCluster,
    admin: std::net::SocketAddr,
    not: Option<u32>,
) -> u32 {
    let mut view = serde_json::Value::Null;
    for _ in 0..200 {
        let r = crate::admin::call(admin, "GET", "/mirrors/synth/pool", None).await;
        assert_eq!(r.status, 200, "{}", r.error_message());
        view = r.json().unwrap();
        let source = view["source_shard"].as_u64().map(|s| s as u32);
        if let Some(s) = source.filter(|s| Some(*s) != not && directory_ids(tc).contains(s)) {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the mirror reads from no shard of the directory (not {not:?}): {view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_mirrors_follow_the_shards_the_pool_starts_drains_and_loses() {
    use std::net::SocketAddr;

    use shoal::admin::{Admin, AdminState};
    use shoal::cluster::config::PoolSettings;
    use shoal::pool::driver::PoolDriver;

    use crate::common::{self, TestCluster};

    // One shard per group; the pool keeps two per group. Shard ports come from a free run.
    let (groups, max_shards) = (2u32, 3u32);
    let span = (groups * max_shards) as u16;
    let base = free_port_run(span);
    let mut cfg = common::config();
    cfg.shards.count = groups;
    cfg.shards.groups = groups;
    cfg.shards.base_port = base;
    cfg.pool = PoolSettings {
        enabled: true,
        policy: Policy::Static,
        step: Duration::from_millis(100),
        min_shards: 2,
        max_shards,
        min_lifespan: Duration::from_millis(200),
        idle_stop_after: Duration::from_millis(200),
        ..PoolSettings::default()
    };
    let tc = TestCluster::with(cfg);
    let m = common::material();
    let state = AdminState::for_cluster(&tc.cluster, m.chain, m.key);
    let (admin, addr) = Admin::start(SocketAddr::from(([127, 0, 0, 1], 0)), state).unwrap();
    let initial = directory_ids(&tc);
    assert_eq!(initial.len(), groups as usize);
    let (pool, scaler) = tc
        .cfg
        .pool
        .pool_and_scaler(&tc.cfg.shards, tc.cfg.shutdown.grace);
    let driver = PoolDriver::start(&tc.cluster, pool, scaler, groups);

    // The pool starts one shard per group; /metrics lists exactly the directory.
    let ids = wait_directory(&tc, "the pool starts a shard per group", |ids| {
        ids.len() == 2 * groups as usize
    })
    .await;
    let started: Vec<u32> = ids.difference(&initial).copied().collect();
    assert_eq!(started.len(), groups as usize, "{ids:?}");
    for g in 0..groups {
        let in_group = tc.shards_of(shoal::ids::GroupId(g)).len();
        assert_eq!(in_group, 2, "group {g} has its two shards");
    }
    let listed = metrics_match_directory(&tc, addr).await;
    assert!(started.iter().all(|s| listed.contains(s)), "{listed:?}");
    // Every shard, the pool's included, binds inside base_port.. (the pool's span).
    for s in tc.cluster.shards() {
        let port = s.addr().port();
        assert!(
            (base..base + span).contains(&port),
            "shard {:?} on port {port}, outside {base}..{}",
            s.id(),
            base + span
        );
    }

    // A mirror made through the admin API reads from a shard of the directory.
    let receiver = crate::admin::receiver();
    let body = format!(
        r#"{{"stream":"synth/pool","endpoints":["{}"]}}"#,
        receiver.addr()
    );
    let drain_receiver = tokio::spawn(async move {
        let mut r = receiver;
        // Bounded: the test stops it; at most 100k events.
        for _ in 0..100_000 {
            match tokio::time::timeout(Duration::from_secs(30), r.next()).await {
                Ok(Some(_)) => {}
                _ => break,
            }
        }
    });
    let r = crate::admin::call(addr, "POST", "/mirrors", Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let source = mirror_source(&tc, addr, None).await;

    // Its source dies: the directory drops it, so does /metrics, and the mirror moves to a
    // shard the directory lists.
    tc.kill(&tc.shard(shoal::ids::ShardId(source))).await;
    let listed = metrics_match_directory(&tc, addr).await;
    assert!(!listed.contains(&source), "{listed:?}");
    assert_eq!(listed.len(), 2 * groups as usize - 1);
    let moved = mirror_source(&tc, addr, Some(source)).await;
    assert_ne!(moved, source);
    // The pool noticed: the lost shard left it, and it starts a replacement (min 2 a group).
    let replaced = wait_directory(&tc, "the pool replaces the lost shard", |ids| {
        ids.len() == 2 * groups as usize && !ids.contains(&source)
    })
    .await;
    assert!(!replaced.contains(&source));

    // The pool may now keep one shard per group (a driver restarted with the lower minimum
    // adopts the running shards): it drains shards of groups above one; a drained shard leaves
    // the directory and /metrics, and is reaped.
    driver.stop().await;
    let before = directory_ids(&tc);
    let lower = PoolSettings {
        min_shards: 1,
        ..tc.cfg.pool.clone()
    };
    let (pool, scaler) = lower.pool_and_scaler(&tc.cfg.shards, tc.cfg.shutdown.grace);
    let driver = PoolDriver::start(&tc.cluster, pool, scaler, groups);
    let after = wait_directory(&tc, "the pool drains a shard", |ids| {
        ids.len() < before.len() && ids.is_subset(&before)
    })
    .await;
    let drained: Vec<u32> = before.difference(&after).copied().collect();
    assert!(!drained.is_empty(), "{before:?} -> {after:?}");
    let listed = metrics_match_directory(&tc, addr).await;
    assert!(!listed.contains(&drained[0]), "{listed:?}");
    let mut reaped = false;
    for _ in 0..250 {
        reaped = tc.cluster.shard(shoal::ids::ShardId(drained[0])).is_none();
        if reaped {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reaped, "the drained shard {} was reaped", drained[0]);
    let source = mirror_source(&tc, addr, None).await;
    assert!(after.contains(&source));

    driver.stop().await;
    admin.stop(Duration::from_secs(1)).await;
    drain_receiver.abort();
    tc.shutdown().await;
}

#[tokio::test]
async fn a_shard_started_with_an_id_already_registered_is_refused_and_stopped() {
    let tc = crate::common::TestCluster::start();
    let first = tc.shard(shoal::ids::ShardId(0));
    let err = tc
        .cluster
        .launcher
        .start(shoal::ids::ShardId(0), first.group())
        .expect_err("the id is taken");
    assert!(err.to_string().contains("already registered"), "{err}");
    let addr = tc
        .cluster
        .directory()
        .lock()
        .unwrap()
        .record(shoal::ids::ShardId(0))
        .map(|r| r.addr);
    assert_eq!(addr, Some(first.addr()), "the first one stays");
    assert!(first.is_alive());
    assert_eq!(
        tc.cluster
            .hub
            .counters()
            .link
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    tc.shutdown().await;
}
