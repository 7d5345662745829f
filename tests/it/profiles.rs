//! Client profiles on the hub: every request is recorded, and a hub restart loses nothing —
//! including when the database file was corrupted in between (it is moved aside, not lost).

use std::time::Duration;

use shoal::ids::{ClientId, StreamName};
use shoal::wire::Role;

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
