//! Refusals and races decided in 0-RTT data, through real 0-RTT: each attach here rides in
//! early data that the shard accepted (checked on the client), never only after the handshake.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal::ids::{GroupId, StreamName};
use shoal::wire::{encode_control, ErrorCode, Frame, Message, Role};

use crate::common::*;

#[tokio::test]
async fn refusals_of_an_attach_in_zero_rtt_reach_the_client_with_their_code() {
    let tc = TestCluster::start();
    let client = EarlyClient::new(&tc, "early-refusals").await;
    let (id, addr) = client.shard(0);
    let (other, _) = client.shard(1);
    let group = client.grant.group;
    let now = now_ms();
    let secret = [6u8; 32];
    let good = tc.mint(group, secret, now, now + 60_000);
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let expired = tc.mint(group, secret, now - 2_000, now - 1_000);
    let wrong_group = tc.mint(GroupId(group.0 + 1), secret, now, now + 60_000);
    let replayed = encode_control(&attach_msg(&good, &secret, id, rand16()));
    let before = tc.allocations();
    let cases: Vec<(&str, bytes::Bytes, ErrorCode)> = vec![
        (
            "random bytes",
            encode_control(&attach_msg(&rand16().repeat(4), &secret, id, rand16())),
            ErrorCode::TokenMalformed,
        ),
        (
            "flipped byte",
            encode_control(&attach_msg(&flipped, &secret, id, rand16())),
            ErrorCode::TokenInvalid,
        ),
        (
            "expired",
            encode_control(&attach_msg(&expired, &secret, id, rand16())),
            ErrorCode::TokenExpired,
        ),
        (
            "wrong group",
            encode_control(&attach_msg(&wrong_group, &secret, id, rand16())),
            ErrorCode::TokenWrongGroup,
        ),
        (
            "proof for another shard",
            encode_control(&attach_msg(&good, &secret, other, rand16())),
            ErrorCode::ProofInvalid,
        ),
        (
            "wrong secret",
            encode_control(&attach_msg(&good, &[9; 32], id, rand16())),
            ErrorCode::ProofInvalid,
        ),
    ];
    for (what, flight, want) in cases {
        let e = client.early(addr, &flight).await;
        assert!(e.accepted, "{what}: the attach rode in accepted 0-RTT");
        assert!(e.frame.is_none(), "{what}: {:?}", e.frame);
        assert_eq!(e.code, Some(want), "{what}");
    }
    assert_eq!(tc.allocations(), before, "no refusal allocated a session");
    // A replay: admitted once, refused with its code the second time, both in 0-RTT.
    let first = client.early(addr, &replayed).await;
    assert!(first.accepted);
    assert!(matches!(first.frame, Some(Frame::Control(Message::Attached(ref a))) if a.zero_rtt));
    first.conn.close(0u32.into(), b"");
    let again = client.early(addr, &replayed).await;
    assert!(again.accepted, "the replay rode in accepted 0-RTT");
    assert_eq!(again.code, Some(ErrorCode::AttachReplayed));
    tc.shutdown().await;
}

#[tokio::test]
async fn attached_says_zero_rtt_whenever_the_attach_rode_in_early_data() {
    let tc = TestCluster::start();
    let client = EarlyClient::new(&tc, "early-flag").await;
    let (id, addr) = client.shard(0);
    let group = client.grant.group;
    // Half the rounds send 3 KB of early data (the attach, then heartbeats), so the flight
    // spans several datagrams and the handshake can complete while the shard still reads it.
    let mut flagged = 0;
    let rounds = 12;
    for i in 0..rounds {
        let secret = [i as u8 + 1; 32];
        let token = tc.mint(group, secret, now_ms(), now_ms() + 60_000);
        let mut flight = Vec::new();
        if i % 2 == 1 {
            flight.extend(encode_control(&attach_msg(&token, &secret, id, rand16())));
            let hb = encode_control(&Message::Heartbeat(shoal::wire::Heartbeat { at_us: 1 }));
            while flight.len() < 3_000 {
                flight.extend_from_slice(&hb);
            }
        } else {
            flight.extend(encode_control(&attach_msg(&token, &secret, id, rand16())));
        }
        let e = client.early(addr, &flight).await;
        assert!(e.accepted, "round {i}: early data accepted");
        match e.frame {
            Some(Frame::Control(Message::Attached(a))) => flagged += u32::from(a.zero_rtt),
            other => panic!("round {i}: expected attached, got {other:?}"),
        }
        // Room for the shard's new tickets to arrive (the next round resumes one of them).
        tokio::time::sleep(Duration::from_millis(100)).await;
        e.conn.close(0u32.into(), b"");
    }
    assert_eq!(
        flagged, rounds,
        "every attach in accepted early data says so"
    );
    let s = tc.shard(id);
    assert!(s.counters().zero_rtt_attaches.load(Ordering::Relaxed) >= u64::from(rounds));
    tc.shutdown().await;
}

/// Sits between a client and a shard and *pre-plays* the client's first flight: each of the
/// client's first `copies` datagrams is sent to the shard from another socket first (as an
/// on-path attacker would), then forwarded. The attacker's answers are dropped (it cannot
/// read them anyway); the real path is relayed both ways.
struct PrePlay {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl PrePlay {
    async fn start(server: std::net::SocketAddr, copies: usize) -> Self {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        attacker.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut copied = 0;
            let (mut a, mut b, mut c) = (vec![0u8; 65536], vec![0u8; 65536], vec![0u8; 65536]);
            // Bounded: at most 20k datagrams, and the test drops the relay when done.
            for _ in 0..20_000 {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        client = Some(from);
                        if copied < copies {
                            // The copy goes first; the original follows a moment later.
                            copied += 1;
                            let _ = attacker.send(&a[..n]).await;
                            let (back, d) = (back.clone(), a[..n].to_vec());
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(30)).await;
                                let _ = back.send(&d).await;
                            });
                            continue;
                        }
                        let _ = back.send(&a[..n]).await;
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { return };
                        if let Some(to) = client {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    }
                    r = attacker.recv(&mut c) => {
                        if r.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Self { addr, task }
    }
}

impl Drop for PrePlay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_played_first_flight_does_not_deny_the_real_client() {
    let tc = TestCluster::start();
    let stream = StreamName::new("synth/preplay").unwrap();
    let client = tc.client("preplayed");
    let mut reply = client.request(&stream, Role::Subscribe).await.unwrap();
    let first = reply.grant.shards[0].clone();
    let shard = tc.shard(first.id);
    let relay = PrePlay::start(first.addr.parse().unwrap(), 4).await;
    reply.grant.shards[0].addr = relay.addr.to_string();
    let mut sub = client.subscribe_with_grant(&stream, reply);
    let seqs = read_chunks(&mut sub, &stream, 20).await;
    assert_contiguous(&seqs);
    let s = sub.stats();
    assert_eq!((s.missing, s.duplicates), (0, 0), "{s:?}");
    let c = shard.counters();
    assert_eq!(
        c.rejections(ErrorCode::AttachReplayed),
        0,
        "the real client's own attach is never taken for a replay"
    );
    // The copy was admitted provisionally, never completed its handshake, and was dropped
    // without an outcome.
    let mut expired = 0;
    for _ in 0..100 {
        expired = c.provisional_expired.load(Ordering::Relaxed);
        if expired >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(expired, 1, "the pre-played session expired");
    drop(sub);
    drop(relay);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_hub_connection_that_opens_no_stream_is_closed_with_timeout() {
    let mut cfg = config();
    cfg.shards.attach_timeout = Duration::from_millis(300);
    let tc = TestCluster::with(cfg);
    let raw = RawClient::new();
    let conn = raw.connect(tc.hub()).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the hub closes an idle connection");
    assert_eq!(ErrorCode::of_close(&closed), Some(ErrorCode::Timeout));
    assert_eq!(
        tc.cluster
            .hub
            .counters()
            .idle_closed
            .load(Ordering::Relaxed),
        1
    );
    tc.shutdown().await;
}
