//! Bad input from peers, on real QUIC over loopback: every case closes with its own code, the
//! shard allocates nothing for it, and the process keeps serving.

use std::time::Duration;

use shoal::ids::{GroupId, ShardId, StreamName};
use shoal::wire::{
    encode_control, Bind, ErrorCode, Frame, Heartbeat, Message, Publish, Subscribe, KIND_CONTROL,
    MAX_CONTROL_BODY, VERSION,
};

use crate::common::*;

/// A grant from the hub for a synthetic stream: (token, secret, group, shard ids in rank order).
async fn grant(tc: &TestCluster) -> (Vec<u8>, Vec<u8>, GroupId, Vec<ShardId>) {
    let c = tc.client("grantee");
    let r = c
        .request(
            &StreamName::new("synth/bad").unwrap(),
            shoal::wire::Role::Subscribe,
        )
        .await
        .unwrap();
    let ids = r.grant.shards.iter().map(|s| s.id).collect();
    (r.grant.token, r.grant.session_secret, r.grant.group, ids)
}

/// After bad input the shard still admits a good attach.
async fn still_serves(tc: &TestCluster, raw: &RawClient, shard: ShardId) {
    let s = tc.shard(shard);
    let token = tc.mint(s.group(), [3; 32], now_ms(), now_ms() + 60_000);
    assert_eq!(raw.attach(s.addr(), &token, &[3; 32], shard).await, None);
}

#[tokio::test]
async fn forged_tokens_are_refused_without_allocation() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shard = &tc.cluster.shards()[0];
    let before = tc.allocations();
    // Random bytes.
    let code = raw
        .attach(shard.addr(), &rand16().repeat(4), &[0; 32], shard.id())
        .await;
    assert_eq!(code, Some(ErrorCode::TokenMalformed));
    // Well-formed header (current epoch, the shard's group), forged ciphertext.
    let mut forged = vec![shoal::security::token::TOKEN_VERSION];
    forged.extend(tc.tokens().epoch_at(now_ms()).to_be_bytes());
    forged.extend(shard.group().0.to_be_bytes());
    forged.extend(rand16().repeat(7));
    let code = raw
        .attach(shard.addr(), &forged, &[0; 32], shard.id())
        .await;
    assert_eq!(code, Some(ErrorCode::TokenInvalid));
    // Sealed with another cluster's secret.
    let other = shoal::security::token::TokenKeys::new(
        shoal::security::keys::KeySchedule::new(&shoal::security::keys::ClusterSecret::from_bytes(
            [1; 32],
        )),
        3600,
    );
    let claims = shoal::security::token::Claims {
        id: shoal::ids::TokenId(rand16()),
        group: shard.group(),
        client: shoal::ids::ClientId::new("x").unwrap(),
        secret: [2; 32],
        issued_at_ms: now_ms(),
        expires_at_ms: now_ms() + 60_000,
        priority: shoal::security::token::Priority::Normal,
        expect_kbps: 0,
    };
    let token = other.seal(&claims, now_ms()).unwrap();
    let code = raw.attach(shard.addr(), &token, &[2; 32], shard.id()).await;
    assert_eq!(code, Some(ErrorCode::TokenInvalid));
    assert_eq!(tc.allocations(), before);
    assert_eq!(shard.counters().rejections(ErrorCode::TokenInvalid), 2);
    still_serves(&tc, &raw, shard.id()).await;
    tc.shutdown().await;
}

#[tokio::test]
async fn a_token_with_any_byte_flipped_is_refused() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let (token, secret, _group, shards) = grant(&tc).await;
    let shard = tc.shard(shards[0]);
    let before = tc.allocations();
    for i in 0..token.len() {
        let mut bad = token.clone();
        bad[i] ^= 0x01;
        let code = raw.attach(shard.addr(), &bad, &secret, shard.id()).await;
        assert!(
            matches!(
                code,
                Some(
                    ErrorCode::TokenMalformed
                        | ErrorCode::TokenInvalid
                        | ErrorCode::TokenUnknownEpoch
                        | ErrorCode::TokenWrongGroup
                )
            ),
            "byte {i}: {code:?}"
        );
    }
    assert_eq!(tc.allocations(), before, "no flipped token was admitted");
    // The untouched token still works.
    assert_eq!(
        raw.attach(shard.addr(), &token, &secret, shard.id()).await,
        None
    );
    tc.shutdown().await;
}

#[tokio::test]
async fn expired_unknown_epoch_and_wrong_group_have_their_codes() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let g0 = tc.shards_of(GroupId(0))[0].clone();
    let now = now_ms();
    let before = tc.allocations();
    let expired = tc.mint(GroupId(0), [4; 32], now - 2_000, now - 1_000);
    assert_eq!(
        raw.attach(g0.addr(), &expired, &[4; 32], g0.id()).await,
        Some(ErrorCode::TokenExpired)
    );
    let epoch_ms = tc.cfg.keys.epoch_interval.as_millis() as u64;
    let ancient = tc.mint(GroupId(0), [4; 32], now - 3 * epoch_ms, now + 60_000);
    assert_eq!(
        raw.attach(g0.addr(), &ancient, &[4; 32], g0.id()).await,
        Some(ErrorCode::TokenUnknownEpoch)
    );
    let other_group = tc.mint(GroupId(1), [4; 32], now, now + 60_000);
    assert_eq!(
        raw.attach(g0.addr(), &other_group, &[4; 32], g0.id()).await,
        Some(ErrorCode::TokenWrongGroup)
    );
    assert_eq!(tc.allocations(), before);
    still_serves(&tc, &raw, g0.id()).await;
    tc.shutdown().await;
}

#[tokio::test]
async fn proof_for_another_shard_is_refused() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let (token, secret, group, _) = grant(&tc).await;
    let shards = tc.shards_of(group);
    let (a, b) = (shards[0].clone(), shards[1].clone());
    let before = tc.allocations();
    assert_eq!(
        raw.attach(a.addr(), &token, &secret, b.id()).await,
        Some(ErrorCode::ProofInvalid)
    );
    // Right shard, wrong secret.
    assert_eq!(
        raw.attach(a.addr(), &token, &[9; 32], a.id()).await,
        Some(ErrorCode::ProofInvalid)
    );
    assert_eq!(tc.allocations(), before);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_captured_attach_replayed_to_the_same_or_another_shard_is_refused() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let (token, secret, group, _) = grant(&tc).await;
    let shards = tc.shards_of(group);
    let (a, b) = (shards[0].clone(), shards[1].clone());
    let captured = encode_control(&attach_msg(&token, &secret, a.id(), rand16()));
    let (frame, _, conn) = raw.exchange(a.addr(), &captured).await;
    assert!(matches!(frame, Some(Frame::Control(Message::Attached(_)))));
    conn.close(0u32.into(), b"");
    let before = tc.allocations();
    let (_, code, _) = raw.exchange(a.addr(), &captured).await;
    assert_eq!(code, Some(ErrorCode::AttachReplayed));
    let (_, code, _) = raw.exchange(b.addr(), &captured).await;
    assert_eq!(code, Some(ErrorCode::ProofInvalid));
    assert_eq!(tc.allocations(), before);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_replayed_zero_rtt_first_flight_is_not_admitted() {
    // Packet level: record the client's first datagrams (Initial + 0-RTT with the attach) and
    // send them again from another socket, to the same shard and to another shard of the group.
    // The session ticket in them was taken by the first use (single-use, cluster-wide store), so
    // the 0-RTT data is discarded and nothing is admitted.
    let tc = TestCluster::start();
    let client = tc.client("replayed");
    let stream = StreamName::new("synth/replay").unwrap();
    let reply = client
        .request(&stream, shoal::wire::Role::Subscribe)
        .await
        .unwrap();
    let primary = tc.shard(reply.grant.shards[0].id);
    let relay = Relay::start(primary.addr()).await;
    // Attach through the relay with the client's ticket (0-RTT).
    let crypto_endpoint = client.endpoint();
    let conn_cfg = {
        // Connect through the client's own endpoint, so its ticket cache is used.
        crypto_endpoint
            .connect(relay.addr, shoal::DEFAULT_CLUSTER)
            .unwrap()
    };
    let (conn, accepted) = conn_cfg
        .into_0rtt()
        .expect("the hub gave the client tickets");
    let nonce = rand16();
    let id = reply.grant.shards[0].id;
    let mut flight = encode_control(&attach_msg(
        &reply.grant.token,
        &reply.grant.session_secret,
        id,
        nonce,
    ))
    .to_vec();
    flight.extend_from_slice(&encode_control(&Message::Subscribe(Subscribe {
        stream: stream.clone(),
        from_seq: None,
        stream_end: false,
    })));
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&flight).await.unwrap();
    assert!(accepted.await, "0-RTT accepted on first use");
    let mut reader = shoal::wire::FrameReader::new(recv);
    let first = tokio::time::timeout(Duration::from_secs(3), reader.next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(first, Some(Frame::Control(Message::Attached(a))) if a.zero_rtt));
    let admitted = tc.allocations();
    let zero_rtt_before: u64 = tc
        .cluster
        .shards()
        .iter()
        .map(|s| {
            s.counters()
                .zero_rtt_attaches
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let datagrams = relay.recorded.lock().unwrap().clone();
    assert!(!datagrams.is_empty());
    let other = tc
        .shards_of(primary.group())
        .into_iter()
        .find(|s| s.id() != primary.id())
        .unwrap();
    let attacker = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for target in [primary.addr(), other.addr()] {
        // Only the client's first flight (before the server answered): the first 2 datagrams.
        for d in datagrams.iter().take(2) {
            attacker.send_to(d, target).await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let zero_rtt_after: u64 = tc
        .cluster
        .shards()
        .iter()
        .map(|s| {
            s.counters()
                .zero_rtt_attaches
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    assert_eq!(
        tc.allocations(),
        admitted,
        "replayed flight admitted nothing"
    );
    assert_eq!(zero_rtt_after, zero_rtt_before);
    conn.close(0u32.into(), b"");
    tc.shutdown().await;
}

#[tokio::test]
async fn garbage_oversize_and_unknown_version_frames_close_with_their_codes() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shard = &tc.cluster.shards()[1];
    let before = tc.allocations();
    let garbage = [0u8, 0, 0, 5, VERSION, KIND_CONTROL, 0xc1, 0xc1, 0xc1];
    let mut oversize = ((MAX_CONTROL_BODY + 10) as u32).to_be_bytes().to_vec();
    oversize.extend([VERSION, KIND_CONTROL]);
    let mut wrong_version = encode_control(&Message::Heartbeat(Heartbeat { at_us: 1 })).to_vec();
    wrong_version[4] = 99;
    let not_attach = encode_control(&Message::Heartbeat(Heartbeat { at_us: 1 })).to_vec();
    let cases: [(&[u8], ErrorCode); 4] = [
        (&garbage, ErrorCode::MalformedFrame),
        (&oversize, ErrorCode::FrameTooLarge),
        (&wrong_version, ErrorCode::UnsupportedVersion),
        (&not_attach, ErrorCode::ProtocolViolation),
    ];
    for (bytes, want) in cases {
        let (_, code, _) = raw.exchange(shard.addr(), bytes).await;
        assert_eq!(code, Some(want), "shard");
        let (_, code, _) = raw.exchange(tc.hub(), bytes).await;
        assert_eq!(code, Some(want), "hub");
    }
    assert_eq!(tc.allocations(), before);
    still_serves(&tc, &raw, shard.id()).await;
    tc.shutdown().await;
}

#[tokio::test]
async fn publish_before_bind_and_a_bad_bind_are_refused() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shard = &tc.cluster.shards()[0];
    let secret = [6u8; 32];
    let token = tc.mint(shard.group(), secret, now_ms(), now_ms() + 60_000);
    let mut flight = encode_control(&attach_msg(&token, &secret, shard.id(), rand16())).to_vec();
    flight.extend_from_slice(&encode_control(&Message::Publish(Publish {
        stream: StreamName::new("live/x").unwrap(),
    })));
    let (frame, _, conn) = raw.exchange(shard.addr(), &flight).await;
    assert!(matches!(frame, Some(Frame::Control(Message::Attached(_)))));
    let code = tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .unwrap();
    assert_eq!(ErrorCode::of_close(&code), Some(ErrorCode::NotBound));
    // A bind MAC made with the wrong secret.
    let token = tc.mint(shard.group(), secret, now_ms(), now_ms() + 60_000);
    let mut flight = encode_control(&attach_msg(&token, &secret, shard.id(), rand16())).to_vec();
    flight.extend_from_slice(&encode_control(&Message::Bind(Bind { mac: vec![0; 32] })));
    let (_, _, conn) = raw.exchange(shard.addr(), &flight).await;
    let code = tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .unwrap();
    assert_eq!(ErrorCode::of_close(&code), Some(ErrorCode::BindInvalid));
    assert_eq!(shard.counters().rejections(ErrorCode::NotBound), 1);
    still_serves(&tc, &raw, shard.id()).await;
    tc.shutdown().await;
}
