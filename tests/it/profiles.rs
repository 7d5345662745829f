//! Client profiles on the hub: every request is recorded, and a hub restart loses nothing —
//! including when the database file was corrupted in between (it is moved aside, not lost).

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal::client::{ClientOptions, Delivery};
use shoal::ids::{ClientId, StreamName};
use shoal::wire::{Hints, Role};

use crate::common::{self, TestCluster};

fn requests_of(tc: &TestCluster, id: &str) -> u64 {
    let p = tc.cluster.hub.profiler().lock().unwrap();
    p.profile(&ClientId::new(id).unwrap())
        .map_or(0, |p| p.requests)
}

/// The profiler thread applies requests shortly after the grant: wait for it (bounded).
async fn wait_requests(tc: &TestCluster, id: &str, want: u64) -> u64 {
    let mut n = 0;
    for _ in 0..200 {
        n = requests_of(tc, id);
        if n == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_survive_a_hub_restart_and_a_corrupt_database_is_moved_aside() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profiles.redb");
    let mut cfg = common::config();
    cfg.profiles.path = Some(path.clone());
    let stream = StreamName::new("synth/profiled").unwrap();

    let tc = TestCluster::with(cfg.clone());
    let client = tc.client("profiled-1");
    for _ in 0..3 {
        client.request(&stream, Role::Subscribe).await.unwrap();
    }
    assert_eq!(wait_requests(&tc, "profiled-1", 3).await, 3);
    tc.shutdown().await;

    // A new hub on the same database sees the same profile and keeps counting.
    let tc = TestCluster::with(cfg.clone());
    assert_eq!(requests_of(&tc, "profiled-1"), 3, "restored from disk");
    tc.client("profiled-1")
        .request(&stream, Role::Subscribe)
        .await
        .unwrap();
    assert_eq!(wait_requests(&tc, "profiled-1", 4).await, 4);
    tc.shutdown().await;

    // Garbage in the database file: the hub starts with fresh profiles and the old file is
    // kept beside it.
    std::fs::write(&path, b"definitely not a redb database").unwrap();
    let tc = TestCluster::with(cfg);
    assert_eq!(requests_of(&tc, "profiled-1"), 0);
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "the corrupt file is moved aside, not deleted"
    );
    assert_eq!(
        std::fs::read(kept[0].path()).unwrap(),
        b"definitely not a redb database"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    tc.shutdown().await;
}

fn sessions_of(tc: &TestCluster, id: &str) -> Vec<shoal::hub::profiler::SessionRecord> {
    let p = tc.cluster.hub.profiler().lock().unwrap();
    p.profile(&ClientId::new(id).unwrap())
        .map(|p| p.history.iter().cloned().collect())
        .unwrap_or_default()
}

/// A client that declares `kbps` in its hints.
fn hinted(tc: &TestCluster, id: &str, kbps: u32) -> shoal::client::Client {
    let mut o = ClientOptions::new(
        tc.cfg.cluster.clone(),
        common::ca(),
        ClientId::new(id).unwrap(),
    );
    o.heartbeat_interval = tc.cfg.transport.heartbeat_interval;
    o.request_timeout = Duration::from_secs(3);
    o.hints = Hints {
        bitrate_kbps: Some(kbps),
        ..Hints::default()
    };
    shoal::client::Client::new(tc.hub(), o).unwrap()
}

/// Subscribes for at least `hold` (bounded by twice that); returns the payload bytes received.
async fn watch(client: shoal::client::Client, stream: StreamName, hold: Duration) -> u64 {
    let mut sub = client.subscribe(&stream).await.unwrap();
    let started = shoal::clock::now();
    let mut bytes = 0;
    while shoal::clock::since(started) < hold {
        match tokio::time::timeout(hold * 2, sub.next()).await {
            Ok(Some(Ok(Delivery::Chunk(c)))) => bytes += c.payload.len() as u64,
            Ok(Some(Ok(Delivery::Gap { .. }))) => {}
            other => panic!(
                "subscription ended early: {:?}",
                other.map(|o| o.map(|r| r.err()))
            ),
        }
    }
    drop(sub);
    client.close().await;
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sessions_reach_the_profile_teach_the_request_model_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = common::config();
    cfg.profiles.path = Some(dir.path().join("profiles.redb"));
    let tc = TestCluster::with(cfg.clone());
    let stream = StreamName::new("synth/watched").unwrap();

    // Viewers that declare 5 Mbit/s and pull the synthetic stream (about 0.8 Mbit/s), each for
    // a bit over a second: sessions long enough to teach the bitrate model.
    const VIEWERS: usize = 28;
    let hold = Duration::from_millis(1_300);
    let watches: Vec<_> = (0..VIEWERS)
        .map(|i| {
            let c = hinted(&tc, &format!("viewer-{i}"), 5_000);
            tokio::spawn(watch(c, stream.clone(), hold))
        })
        .collect();
    let mut received = Vec::new();
    for w in watches {
        received.push(w.await.unwrap());
    }
    // A publisher: the bytes it had accepted are exact.
    let live = StreamName::new("live/profiled").unwrap();
    let pc = tc.client("publisher-1");
    let mut publisher = pc.publish(&live).await.unwrap();
    for _ in 0..10 {
        publisher.send(common::payload(1_000)).await.unwrap();
    }
    publisher.finish().await.unwrap();
    pc.close().await;

    let hub = &tc.cluster.hub;
    for _ in 0..500 {
        if hub.sessions_learned() >= VIEWERS as u64 && !sessions_of(&tc, "publisher-1").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        hub.sessions_learned(),
        VIEWERS as u64,
        "only subscriptions teach the model"
    );
    let reported = hub.counters().sessions_reported.load(Ordering::Relaxed);
    assert_eq!(reported, VIEWERS as u64 + 1);
    // Each was learned against the features its grant was decided on.
    let forgotten = hub.counters().grants_forgotten.load(Ordering::Relaxed);
    assert_eq!(forgotten, 0);
    for (i, got) in received.iter().enumerate() {
        let s = sessions_of(&tc, &format!("viewer-{i}"));
        assert_eq!(s.len(), 1, "viewer-{i}: {s:?}");
        assert_eq!(s[0].stream, stream);
        // The shard counts what it wrote (the client may not have read the last of it); the
        // client's first chunk came with the grant, from the hub.
        let chunk = u64::from(tc.cfg.streams.synthetic_chunk_bytes);
        assert!(
            s[0].bytes + chunk >= *got && *got > chunk,
            "viewer-{i}: {s:?}, received {got}"
        );
        // The shard's clock starts at admission, a little after the client's; a second is
        // what the bitrate model needs.
        assert!(s[0].duration_ms >= 1_000, "{s:?}");
        assert!(s[0].bitrate_kbps > 0, "{s:?}");
    }
    let p = sessions_of(&tc, "publisher-1");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!((p[0].stream.clone(), p[0].bytes), (live, 10_000));

    // A newcomer declaring 5 Mbit/s now gets what such clients really pulled in its token,
    // not its declaration (the first try must do: with the profiler busy, the model is asked
    // on the hints alone, which say the same here).
    let keys = tc.tokens();
    let before = hub.counters().model_expectations.load(Ordering::Relaxed);
    let c = hinted(&tc, "newcomer", 5_000);
    let reply = c.request(&stream, Role::Subscribe).await.unwrap();
    c.close().await;
    let after = hub.counters().model_expectations.load(Ordering::Relaxed);
    assert_eq!(
        after,
        before + 1,
        "the trained model sets the expected bitrate"
    );
    let expect = keys
        .open(&reply.grant.token, common::now_ms())
        .unwrap()
        .expect_kbps;
    let mean_kbps = {
        let all: Vec<_> = (0..VIEWERS)
            .flat_map(|i| sessions_of(&tc, &format!("viewer-{i}")))
            .collect();
        all.iter().map(|s| s.bitrate_kbps).sum::<u64>() / all.len() as u64
    };
    assert!(
        expect < 2_500 && u64::from(expect).abs_diff(mean_kbps) * 4 < mean_kbps,
        "expected {expect} kbit/s; the viewers pulled {mean_kbps} on average"
    );
    tc.shutdown().await;

    // The sessions are in the database: a restarted hub has them.
    let tc = TestCluster::with(cfg);
    assert_eq!(sessions_of(&tc, "viewer-0").len(), 1);
    assert_eq!(sessions_of(&tc, "publisher-1")[0].bytes, 10_000);
    tc.shutdown().await;
}
