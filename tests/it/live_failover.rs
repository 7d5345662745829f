//! Live streams survive the loss of a shard: the primary mirrors them to a standby in its
//! group (real QUIC: publisher, subscribers and the mirror between shards), and publisher and
//! subscribers resume there without a lost or duplicated chunk.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use shoal::client::{Delivery, Subscription};
use shoal::ids::{GroupId, ShardId, StreamName};
use shoal::link::ReplicaRole;
use shoal::shard::Shard;

use super::common::TestCluster;

fn live_config(shards: u32) -> shoal::cluster::config::Config {
    let mut cfg = super::common::config();
    cfg.shards.count = shards;
    cfg.shards.groups = 1;
    cfg.streams.live_standbys = 1;
    cfg
}

/// The shard the publisher is attached to (it counts chunks taken from publishers).
fn primary(tc: &TestCluster) -> Option<Shard> {
    tc.cluster
        .shards()
        .into_iter()
        .filter(|s| s.is_alive())
        .find(|s| s.counters().chunks_published.load(Ordering::Relaxed) > 0)
}

/// Waits (bounded) until some shard other than the primary holds a standby copy of `stream`.
async fn standby(tc: &TestCluster, stream: &StreamName, not: ShardId) -> Shard {
    for _ in 0..400 {
        let copy = tc.cluster.shards().into_iter().find(|s| {
            s.id() != not
                && s.is_alive()
                && s.replica_reports()
                    .iter()
                    .any(|r| &r.stream == stream && r.role == ReplicaRole::Standby)
        });
        if let Some(s) = copy {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no standby copy of {stream} appeared");
}

/// Waits (bounded) until `shard`'s copy of `stream` holds `last`: the mirror carried
/// everything the publisher sent (the publisher's own replay would hide a copy that did not).
async fn copy_holds(shard: &Shard, stream: &StreamName, last: u64) {
    for _ in 0..500 {
        let held = shard
            .replica_reports()
            .iter()
            .find(|r| &r.stream == stream)
            .and_then(|r| r.last_seq);
        if held == Some(last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{:?}'s copy of {stream} never reached {last}", shard.id());
}

/// Reads `sub` until it delivered `last`; returns the sequences (bounded in time).
async fn read_until(sub: &mut Subscription, last: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    let deadline = shoal::clock::tokio_now() + Duration::from_secs(20);
    while seqs.last().is_none_or(|&s| s < last) {
        let d = tokio::time::timeout_at(deadline, sub.next())
            .await
            .expect("the subscription went on within 20 s")
            .expect("the subscription did not end")
            .expect("the subscription did not fail");
        match d {
            Delivery::Chunk(c) => seqs.push(c.seq.get()),
            Delivery::Gap { from, to } => panic!("gap {from:?}..{to:?} after {seqs:?}"),
        }
    }
    seqs
}

fn assert_contiguous(seqs: &[u64]) {
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "not contiguous at {w:?}");
    }
}

/// Publishes `n` chunks at about `per_s`; returns their sequences.
async fn publish_some(p: &mut shoal::client::Publisher, n: usize, per_s: u64) -> Vec<u64> {
    let mut sent = Vec::with_capacity(n);
    let gap = Duration::from_micros(1_000_000 / per_s);
    for i in 0..n {
        let payload = Bytes::from(vec![(i % 251) as u8; 64]);
        sent.push(p.send(payload).await.expect("publish").get());
        tokio::time::sleep(gap).await;
    }
    sent
}

/// Subscribes `n` clients (spread over the stream's copies by their ids) before anything is
/// published, so that each must see every chunk.
async fn subscribers(tc: &TestCluster, stream: &StreamName, n: usize) -> Vec<Subscription> {
    subscribers_with(tc, stream, n, shoal::client::StandbyMode::Off).await
}

/// [`subscribers`], each holding a standby session as `standby` says.
async fn subscribers_with(
    tc: &TestCluster,
    stream: &StreamName,
    n: usize,
    standby: shoal::client::StandbyMode,
) -> Vec<Subscription> {
    let mut subs = Vec::new();
    for i in 0..n {
        let id = shoal::ids::ClientId::new(format!("live-sub-{i}")).unwrap();
        let mut o =
            shoal::client::ClientOptions::new(tc.cfg.cluster.clone(), super::common::ca(), id);
        o.heartbeat_interval = tc.cfg.transport.heartbeat_interval;
        o.request_timeout = Duration::from_secs(3);
        o.standby = standby;
        let c = shoal::client::Client::new(tc.hub(), o).expect("client binds");
        subs.push(c.subscribe(stream).await.expect("subscribe"));
    }
    subs
}

/// Every subscriber got every sent chunk once, in order.
async fn check_all(subs: &mut [Subscription], sent: &[u64]) {
    let last = *sent.last().unwrap();
    for (i, sub) in subs.iter_mut().enumerate() {
        let got = read_until(sub, last).await;
        assert_contiguous(&got);
        assert_eq!(got.first(), sent.first(), "subscriber {i} missed the start");
        let s = sub.stats();
        assert_eq!((s.missing, s.duplicates), (0, 0), "subscriber {i}: {s:?}");
    }
}

#[tokio::test]
async fn the_primary_killed_its_standby_takes_over_without_loss_or_duplicate() {
    let tc = TestCluster::with(live_config(3));
    let stream = StreamName::new("live/primary-kill").unwrap();
    let mut subs = subscribers(&tc, &stream, 6).await;
    let pc = tc.client("live-publisher");
    let mut publisher = pc.publish(&stream).await.unwrap();
    let mut sent = publish_some(&mut publisher, 60, 200).await;
    let p = primary(&tc).expect("a shard took the publisher");
    let s = standby(&tc, &stream, p.id()).await;
    copy_holds(&s, &stream, *sent.last().unwrap()).await;
    tc.kill(&p).await;
    sent.extend(publish_some(&mut publisher, 120, 200).await);
    check_all(&mut subs, &sent).await;
    let ps = publisher.stats();
    assert!(ps.resumes >= 1, "the publisher moved: {ps:?}");
    // The standby took the publisher: promoted, and it counts it.
    assert!(s.load().promotions >= 1, "{:?}", s.load());
    assert!(s.counters().chunks_published.load(Ordering::Relaxed) > 0);
    publisher.finish().await.unwrap();
    drop(subs);
    tc.shutdown().await;
}

#[tokio::test]
async fn with_standby_sessions_subscribers_resume_on_the_open_session() {
    use shoal::client::StandbyMode;
    for (i, mode) in [StandbyMode::Warm, StandbyMode::Hot]
        .into_iter()
        .enumerate()
    {
        let tc = TestCluster::with(live_config(3));
        let stream = StreamName::new(format!("live/standby-{i}")).unwrap();
        let mut subs = subscribers_with(&tc, &stream, 6, mode).await;
        let pc = tc.client(&format!("live-publisher-standby-{i}"));
        let mut publisher = pc.publish(&stream).await.unwrap();
        let mut sent = publish_some(&mut publisher, 60, 200).await;
        let p = primary(&tc).expect("a shard took the publisher");
        standby(&tc, &stream, p.id()).await;
        let attaches: Vec<u64> = subs.iter().map(|s| s.stats().attaches).collect();
        tc.kill(&p).await;
        sent.extend(publish_some(&mut publisher, 120, 200).await);
        // Every chunk once, in order, and no duplicate counted: a hot standby's copies of
        // what the first session delivered are expected, not duplicates.
        check_all(&mut subs, &sent).await;
        for (j, s) in subs.iter().enumerate() {
            let st = s.stats();
            // Each subscription held two sessions; those that moved took the standby and then
            // opened another: at most one new attach each.
            assert!(
                attaches[j] >= 2,
                "{mode:?} subscriber {j} held a standby: {st:?}"
            );
            assert!(
                st.attaches <= attaches[j] + 1,
                "{mode:?} subscriber {j}: {st:?}"
            );
        }
        publisher.finish().await.unwrap();
        drop(subs);
        tc.shutdown().await;
    }
}

#[tokio::test]
async fn the_standby_killed_its_subscribers_move_to_the_primary_without_loss() {
    let tc = TestCluster::with(live_config(3));
    let stream = StreamName::new("live/standby-kill").unwrap();
    let mut subs = subscribers(&tc, &stream, 6).await;
    let pc = tc.client("live-publisher-2");
    let mut publisher = pc.publish(&stream).await.unwrap();
    let mut sent = publish_some(&mut publisher, 60, 200).await;
    let p = primary(&tc).expect("a shard took the publisher");
    let s = standby(&tc, &stream, p.id()).await;
    assert!(
        s.counters().sessions.load(Ordering::Relaxed) > 0,
        "some subscribers were placed on the standby copy"
    );
    tc.kill(&s).await;
    sent.extend(publish_some(&mut publisher, 120, 200).await);
    check_all(&mut subs, &sent).await;
    assert_eq!(publisher.stats().resumes, 0, "the publisher never moved");
    // The primary mirrors to the next shard in order now.
    standby(&tc, &stream, p.id()).await;
    publisher.finish().await.unwrap();
    drop(subs);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_shard_joining_mid_stream_becomes_the_standby_and_then_takes_over() {
    let tc = TestCluster::with(live_config(1));
    let stream = StreamName::new("live/join").unwrap();
    let mut subs = subscribers(&tc, &stream, 4).await;
    let pc = tc.client("live-publisher-3");
    let mut publisher = pc.publish(&stream).await.unwrap();
    let mut sent = publish_some(&mut publisher, 40, 200).await;
    let p = primary(&tc).expect("a shard took the publisher");
    // Alone in its group: nothing to mirror to yet.
    assert!(p.replica_reports().iter().all(|r| r.standbys.is_empty()));
    let joined = tc
        .cluster
        .launcher
        .start(ShardId(77), GroupId(0))
        .expect("a shard joins");
    sent.extend(publish_some(&mut publisher, 40, 200).await);
    let s = standby(&tc, &stream, p.id()).await;
    assert_eq!(s.id(), joined.id());
    sent.extend(publish_some(&mut publisher, 20, 200).await);
    // The copy started from the oldest chunk the primary held, not from when it joined.
    copy_holds(&s, &stream, *sent.last().unwrap()).await;
    tc.kill(&p).await;
    sent.extend(publish_some(&mut publisher, 80, 200).await);
    check_all(&mut subs, &sent).await;
    assert!(joined.load().promotions >= 1, "{:?}", joined.load());
    publisher.finish().await.unwrap();
    drop(subs);
    tc.shutdown().await;
}

#[tokio::test]
async fn primary_and_standby_both_dying_end_the_subscriptions_with_a_clear_error() {
    let tc = TestCluster::with(live_config(3));
    let stream = StreamName::new("live/both-die").unwrap();
    let mut subs = subscribers(&tc, &stream, 3).await;
    let pc = tc.client("live-publisher-both");
    let mut publisher = pc.publish(&stream).await.unwrap();
    let sent = publish_some(&mut publisher, 40, 200).await;
    let p = primary(&tc).expect("a shard took the publisher");
    let s = standby(&tc, &stream, p.id()).await;
    check_all(&mut subs, &sent).await;
    // The publisher is gone too, without a clean end (which would end the stream with
    // `stream_end`): nothing can bring the stream back.
    drop(publisher);
    tc.kill(&p).await;
    tc.kill(&s).await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let end = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match sub.next().await {
                    Some(Ok(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .expect("the subscription ended within 30 s, not a hang");
        match end {
            Some(Err(e)) => assert_eq!(
                e.code(),
                Some(shoal::wire::ErrorCode::UnknownStream),
                "subscriber {i}: {e}"
            ),
            other => panic!("subscriber {i}: {other:?}"),
        }
    }
    drop(subs);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_publisher_racing_its_own_failover_is_resolved_by_sequence() {
    use shoal::ids::Seq;
    let tc = TestCluster::with(live_config(3));
    let stream = StreamName::new("live/race").unwrap();
    let mut subs = subscribers(&tc, &stream, 6).await;
    // The stream's first two shards: where a publisher goes, and where it fails over to.
    let order = shoal::hub::placement::rendezvous_order(
        &stream,
        tc.cluster.shards().iter().map(|s| s.id()),
    );
    let (a, b) = (tc.shard(order[0]), tc.shard(order[1]));
    let raw = super::common::RawClient::new();
    let mut on_a = super::seq_limits::RawSession::open(&tc, &raw, &a, &[]).await;
    let mut on_b = super::seq_limits::RawSession::open(&tc, &raw, &b, &[]).await;
    on_a.publish(&stream).await;
    on_b.publish(&stream).await;
    // Both connections carry every sequence, the second one behind and in bursts: each shard
    // takes each sequence once, from whichever copy brings it first.
    let sent: Vec<u64> = (1..=200u64).map(|i| 5_000 + i).collect();
    for (i, &s) in sent.iter().enumerate() {
        on_a.send_chunk(Seq::new(s)).await;
        if i % 10 == 9 {
            for &r in &sent[i.saturating_sub(12)..=i] {
                on_b.send_chunk(Seq::new(r)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    check_all(&mut subs, &sent).await;
    drop(subs);
    tc.shutdown().await;
}
