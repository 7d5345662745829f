//! The core path end to end: grant → 0-RTT attach → sequenced stream → resume; publish; key
//! rotation across an epoch boundary.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal::client::ClientError;
use shoal::ids::{GroupId, StreamName};
use shoal::wire::{ErrorCode, Hints, Role};

use crate::common::*;

#[tokio::test]
async fn subscribe_with_zero_rtt_gets_ordered_verified_chunks() {
    let tc = TestCluster::start();
    let client = tc.client("c1");
    let stream = StreamName::new("synth/core").unwrap();
    let mut sub = client.subscribe(&stream).await.unwrap();
    let seqs = read_chunks(&mut sub, &stream, 30).await;
    assert_contiguous(&seqs);
    let s = sub.stats();
    assert_eq!(s.grants, 1);
    assert_eq!(s.zero_rtt_attempted, 1, "{s:?}");
    assert_eq!(s.zero_rtt_accepted, 1, "{s:?}");
    assert_eq!((s.missing, s.duplicates), (0, 0));
    assert!(s.ttfb_us > 0);
    // The shard saw the attach in 0-RTT data, and the hub's first chunk rode with the grant.
    let zero_rtt: u64 = tc
        .cluster
        .shards()
        .iter()
        .map(|s| s.counters().zero_rtt_attaches.load(Ordering::Relaxed))
        .sum();
    assert_eq!(zero_rtt, 1);
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn resumes_on_another_shard_without_gap_or_duplicate() {
    let tc = TestCluster::start();
    let client = tc.client("c2");
    let stream = StreamName::new("synth/resume").unwrap();
    let mut sub = client.subscribe(&stream).await.unwrap();
    let mut seqs = read_chunks(&mut sub, &stream, 10).await;
    let serving = tc
        .cluster
        .shards()
        .into_iter()
        .find(|s| s.counters().sessions.load(Ordering::Relaxed) > 0)
        .expect("one shard serves the subscription");
    serving.kill();
    seqs.extend(read_chunks(&mut sub, &stream, 40).await);
    assert_contiguous(&seqs);
    let s = sub.stats();
    assert!(s.resumes >= 1, "{s:?}");
    assert_eq!((s.missing, s.duplicates), (0, 0), "{s:?}");
    // The second attach also used 0-RTT (a ticket from the hub or the first shard).
    assert_eq!(s.zero_rtt_accepted, s.zero_rtt_attempted, "{s:?}");
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn graceful_drain_moves_the_subscriber() {
    let tc = TestCluster::start();
    let client = tc.client("c3");
    let stream = StreamName::new("synth/drain").unwrap();
    let mut sub = client.subscribe(&stream).await.unwrap();
    let mut seqs = read_chunks(&mut sub, &stream, 5).await;
    let serving = tc
        .cluster
        .shards()
        .into_iter()
        .find(|s| s.counters().sessions.load(Ordering::Relaxed) > 0)
        .unwrap()
        .clone();
    let drain = tokio::spawn(async move { serving.drain(Duration::from_millis(500)).await });
    seqs.extend(read_chunks(&mut sub, &stream, 30).await);
    drain.await.unwrap();
    assert_contiguous(&seqs);
    assert!(sub.stats().resumes >= 1);
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn published_chunks_reach_subscribers_in_order() {
    let tc = TestCluster::start();
    let stream = StreamName::new("live/prices").unwrap();
    let sub_client = tc.client("sub");
    let mut sub = sub_client.subscribe(&stream).await.unwrap();
    let pub_client = tc.client("pub");
    let mut publisher = pub_client.publish(&stream).await.unwrap();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(publisher.send(payload(64 + i)).await.unwrap().get());
    }
    let got = read_chunks(&mut sub, &stream, 20).await;
    assert_eq!(got, sent);
    publisher.finish().await.unwrap();
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_publisher_whose_token_expired_gets_a_new_grant_when_it_fails_over() {
    let mut cfg = config();
    cfg.hub.token_ttl = Duration::from_millis(800);
    let tc = TestCluster::with(cfg);
    let stream = StreamName::new("live/expiring").unwrap();
    let client = tc.client("expiring-publisher");
    let mut publisher = client.publish(&stream).await.unwrap();
    for i in 0..10 {
        publisher.send(payload(32 + i)).await.unwrap();
    }
    // Past the token's expiry, its shard dies: the next shard refuses the old token with
    // TOKEN_EXPIRED, and the publisher asks the hub again instead of giving up.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut serving = None;
    for _ in 0..100 {
        serving = tc
            .cluster
            .shards()
            .into_iter()
            .find(|s| s.counters().chunks_published.load(Ordering::Relaxed) >= 10);
        if serving.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let serving = serving.expect("a shard took the publisher's chunks");
    tc.kill(&serving).await;
    for i in 0..10 {
        publisher.send(payload(64 + i)).await.unwrap();
    }
    let mut regranted = false;
    for _ in 0..250 {
        let s = publisher.stats();
        if s.grants >= 2 && s.resumes >= 1 {
            regranted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = publisher.stats();
    assert!(regranted, "{s:?}");
    publisher.finish().await.unwrap();
    let mut published = 0;
    for _ in 0..100 {
        published = tc
            .cluster
            .shards()
            .iter()
            .filter(|x| x.id() != serving.id())
            .map(|x| x.counters().chunks_published.load(Ordering::Relaxed))
            .sum::<u64>();
        if published >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        published >= 10,
        "the new shard took the chunks: {published}"
    );
    tc.shutdown().await;
}

#[tokio::test]
async fn hub_refuses_bad_hints_with_its_code() {
    let tc = TestCluster::start();
    let mut o = shoal::client::ClientOptions::new(
        tc.cfg.cluster.clone(),
        ca(),
        shoal::ids::ClientId::new("hinted").unwrap(),
    );
    o.hints = Hints {
        bitrate_kbps: Some(0),
        ..Hints::default()
    };
    let client = shoal::client::Client::new(tc.hub(), o).unwrap();
    let err = client
        .request(&StreamName::new("synth/x").unwrap(), Role::Subscribe)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Refused {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{err}"
    );
    // The same connection still serves good requests.
    let ok = tc.client("plain");
    assert!(ok
        .request(&StreamName::new("synth/x").unwrap(), Role::Subscribe)
        .await
        .is_ok());
    tc.shutdown().await;
}

#[tokio::test]
async fn tokens_survive_one_key_rotation_and_not_two() {
    let mut cfg = config();
    cfg.keys.epoch_interval = Duration::from_secs(1);
    cfg.hub.token_ttl = Duration::from_secs(1);
    let tc = TestCluster::with(cfg);
    let raw = RawClient::new();
    let shard = tc.shards_of(GroupId(0))[0].clone();
    let keys = tc.tokens();
    // Seal just after an epoch boundary, valid for long enough to outlive two epochs.
    let now = now_ms();
    let sealed = now - now % 1000 + 50;
    let epoch = keys.epoch_at(sealed);
    let token = tc.mint(GroupId(0), [1; 32], sealed, sealed + 10_000);
    assert_eq!(
        raw.attach(shard.addr(), &token, &[1; 32], shard.id()).await,
        None
    );
    // Wait into the next epoch: the previous epoch's key still opens it.
    let wait_until = (u64::from(epoch) + 1) * 1000 + 100;
    tokio::time::sleep(Duration::from_millis(wait_until.saturating_sub(now_ms()))).await;
    assert_eq!(keys.epoch_at(now_ms()), epoch + 1);
    assert_eq!(
        raw.attach(shard.addr(), &token, &[1; 32], shard.id()).await,
        None
    );
    // Two epochs later the key is gone.
    let wait_until = (u64::from(epoch) + 2) * 1000 + 100;
    tokio::time::sleep(Duration::from_millis(wait_until.saturating_sub(now_ms()))).await;
    assert_eq!(
        raw.attach(shard.addr(), &token, &[1; 32], shard.id()).await,
        Some(ErrorCode::TokenUnknownEpoch)
    );
    tc.shutdown().await;
}

#[tokio::test]
async fn falls_back_to_one_rtt_when_the_shard_refuses_zero_rtt_and_counts_it() {
    // The grant copies the client's session entries to its shards; the shards then lose them
    // (as a restarted shard would), so the client's 0-RTT attempt is refused and must fall
    // back to 1-RTT.
    let tc = TestCluster::with(config());
    let stream = StreamName::new("synth/fallback").unwrap();
    let first = tc.client("first");
    let reply = first.request(&stream, Role::Subscribe).await.unwrap();
    for a in &reply.grant.shards {
        let s = tc.shard(a.id);
        assert!(!s.store().is_empty(), "the grant copied the entries");
        s.store().clear();
    }
    let mut sub = first.subscribe_with_grant(&stream, reply);
    let seqs = read_chunks(&mut sub, &stream, 10).await;
    assert_contiguous(&seqs);
    let s = sub.stats();
    assert_eq!(s.zero_rtt_attempted, 1, "{s:?}");
    assert_eq!(
        s.zero_rtt_accepted, 0,
        "the shard could not find the ticket: {s:?}"
    );
    let misses: u64 = tc
        .cluster
        .shards()
        .iter()
        .map(|s| s.store().stats.misses.load(Ordering::Relaxed))
        .sum();
    assert!(misses >= 1);
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_silent_shard_is_detected_by_heartbeats_and_the_stream_resumes() {
    // The primary is reached through a relay that then drops everything: no close, no ICMP,
    // just silence. The client must notice within four heartbeat intervals (not the 30 s QUIC
    // idle timeout) and resume on the next shard.
    let tc = TestCluster::start();
    let client = tc.client("silent");
    let stream = StreamName::new("synth/silent").unwrap();
    let mut reply = client.request(&stream, Role::Subscribe).await.unwrap();
    let primary = reply.grant.shards[0].addr.parse().unwrap();
    let relay = Relay::start(primary).await;
    reply.grant.shards[0].addr = relay.addr.to_string();
    let mut sub = client.subscribe_with_grant(&stream, reply);
    let mut seqs = read_chunks(&mut sub, &stream, 10).await;
    relay.blackhole();
    // read_chunks allows 10 s per chunk, well under the idle timeout.
    seqs.extend(read_chunks(&mut sub, &stream, 30).await);
    assert_contiguous(&seqs);
    let s = sub.stats();
    assert!(s.resumes >= 1, "{s:?}");
    assert_eq!((s.missing, s.duplicates), (0, 0), "{s:?}");
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn endpoints_keep_only_a_clients_newest_tickets() {
    // Twenty attaches to the grant's first shard each issue a ticket there, which is copied to
    // the grant's other shard and to the hub. A client keeps its newest 8 tickets and presents
    // only those, so the older ones are forgotten everywhere instead of piling up for 24 h.
    let tc = TestCluster::start();
    let client = tc.client("returning");
    let stream = StreamName::new("synth/tickets").unwrap();
    let reply = client.request(&stream, Role::Subscribe).await.unwrap();
    assert!(reply.grant.shards.len() >= 2, "{:?}", reply.grant.shards);
    let (first, other) = (reply.grant.shards[0].id, reply.grant.shards[1].id);
    let (mut zero_rtt, mut open) = (0, Vec::new());
    for _ in 0..20 {
        let s = client.attach(&reply, 0).await.unwrap();
        zero_rtt += usize::from(s.zero_rtt);
        // `attached` comes in 0.5-RTT, the session's ticket after the handshake: held open
        // a moment, the session hands the client its ticket for the next attach.
        tokio::time::sleep(Duration::from_millis(50)).await;
        open.push(s);
    }
    assert!(zero_rtt >= 15, "0-RTT on {zero_rtt} of 20 attaches");
    // The copies and the forgets travel as reports: wait for them (bounded).
    let held = |tc: &TestCluster| {
        (
            tc.shard(first).store().len(),
            tc.shard(other).store().len(),
            tc.cluster.hub.store().len(),
        )
    };
    // Forgets ride with the next copy to a shard or go out within a second.
    let bounded = |h: (usize, usize, usize)| h.1 >= 8 && h.0 <= 8 && h.1 <= 8 && h.2 <= 8;
    let deadline = shoal::clock::now() + Duration::from_secs(10);
    while !bounded(held(&tc)) && shoal::clock::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (at_first, at_other, at_hub) = held(&tc);
    assert!(at_other >= 8, "the copies arrived: {at_other}");
    assert!(
        at_first <= 8 && at_other <= 8 && at_hub <= 8,
        "first shard {at_first}, other shard {at_other}, hub {at_hub}"
    );
    let evicted: u64 = [first, other]
        .iter()
        .map(|id| tc.shard(*id).store().stats.evicted.load(Ordering::Relaxed))
        .sum();
    assert!(evicted >= 12, "forgotten at the shards: {evicted}");
    // The newest still work: one more attach with 0-RTT.
    assert!(client.attach(&reply, 1).await.unwrap().zero_rtt);
    drop(open);
    tc.shutdown().await;
}
