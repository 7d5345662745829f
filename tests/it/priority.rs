//! Prioritized admission near a shard's quota, and hints of the wrong type, over real QUIC.

use std::sync::atomic::Ordering;
use std::time::Duration;

use shoal::security::token::Priority;
use shoal::wire::{encode_control, ErrorCode, Frame, FrameReader, Message};

use crate::common::*;

/// A session held open: its connection and control stream (dropping the send half would end
/// the session).
type Held = (
    quinn::Connection,
    quinn::SendStream,
    FrameReader<quinn::RecvStream>,
);

/// Attaches with a minted token of `priority`; returns the open session if admitted, else the
/// close code.
async fn attach(tc: &TestCluster, raw: &RawClient, priority: Priority) -> Result<Held, ErrorCode> {
    let shard = &tc.cluster.shards()[0];
    let secret: [u8; 32] = rand16().repeat(2).try_into().unwrap();
    let token = tc.mint_with(shard.group(), secret, now_ms(), now_ms() + 60_000, priority);
    let msg = attach_msg(&token, &secret, shard.id(), rand16());
    let conn = raw.connect(shard.addr()).await;
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&encode_control(&msg)).await.unwrap();
    let mut reader = FrameReader::new(recv);
    let frame = first_frame(&mut reader).await;
    if let Some(Frame::Control(Message::Attached(_))) = frame {
        return Ok((conn, send, reader));
    }
    let closed = tokio::time::timeout(Duration::from_secs(3), conn.closed()).await;
    Err(closed
        .ok()
        .and_then(|e| ErrorCode::of_close(&e))
        .expect("a refused attach closes with a shoal code"))
}

#[tokio::test]
async fn a_shard_near_its_quota_admits_prioritized_clients_first() {
    let mut cfg = config();
    cfg.shards.count = 1;
    cfg.shards.groups = 1;
    cfg.shards.max_sessions = 10;
    let tc = TestCluster::with(cfg);
    let raw = RawClient::new();
    // Low-priority clients stop at 8 sessions, normal ones at 9, high ones use all 10.
    let mut held = Vec::new();
    for i in 0..8 {
        held.push(attach(&tc, &raw, Priority::Low).await.unwrap_or_else(|e| {
            panic!("low {i} refused below its limit: {e:?}");
        }));
    }
    assert_eq!(
        attach(&tc, &raw, Priority::Low).await.err(),
        Some(ErrorCode::OverQuota)
    );
    held.push(
        attach(&tc, &raw, Priority::Normal)
            .await
            .expect("normal at 8"),
    );
    assert_eq!(
        attach(&tc, &raw, Priority::Normal).await.err(),
        Some(ErrorCode::OverQuota)
    );
    held.push(attach(&tc, &raw, Priority::High).await.expect("high at 9"));
    assert_eq!(
        attach(&tc, &raw, Priority::High).await.err(),
        Some(ErrorCode::OverQuota)
    );
    assert_eq!(
        tc.cluster.shards()[0]
            .counters()
            .sessions
            .load(Ordering::Relaxed),
        10
    );
    // A session that leaves frees its slot (and its committed bitrate).
    held.pop().unwrap().0.close(0u32.into(), b"");
    let freed = async {
        while tc.cluster.shards()[0]
            .counters()
            .sessions
            .load(Ordering::Relaxed)
            != 9
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), freed)
        .await
        .expect("the session ends");
    held.push(attach(&tc, &raw, Priority::High).await.expect("high again"));
    for (c, _, _) in held {
        c.close(0u32.into(), b"");
    }
    tc.shutdown().await;
}

#[tokio::test]
async fn hints_of_the_wrong_type_or_range_are_refused_and_the_hub_keeps_serving() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let request = |hints: serde_json::Value| {
        let msg = serde_json::json!({
            "stream_request": {
                "client_id": "typed-wrong",
                "stream": "synth/a",
                "role": "subscribe",
                "hints": hints,
            }
        });
        let body = rmp_serde::to_vec_named(&msg).unwrap();
        let mut out = ((body.len() + 2) as u32).to_be_bytes().to_vec();
        out.extend([shoal::wire::VERSION, shoal::wire::KIND_CONTROL]);
        out.extend(body);
        out
    };
    let wrong_type = [
        serde_json::json!({ "bitrate_kbps": "fast" }),
        serde_json::json!({ "bitrate_kbps": 1.5 }),
        serde_json::json!({ "region": 42 }),
        serde_json::json!({ "device_class": ["tv"] }),
        serde_json::json!("not a map"),
    ];
    for hints in wrong_type {
        let (frame, code, _) = raw.exchange(tc.hub(), &request(hints.clone())).await;
        assert!(frame.is_none(), "{hints}: {frame:?}");
        assert_eq!(code, Some(ErrorCode::MalformedFrame), "{hints}");
    }
    let out_of_range = [
        serde_json::json!({ "bitrate_kbps": 0 }),
        serde_json::json!({ "bitrate_kbps": -5 }),
        serde_json::json!({ "bitrate_kbps": 20_000_000 }),
        serde_json::json!({ "region": "r".repeat(65) }),
    ];
    for hints in out_of_range {
        let (frame, _, _) = raw.exchange(tc.hub(), &request(hints.clone())).await;
        match frame {
            Some(Frame::Control(Message::Reject(r))) => {
                assert_eq!(r.code, ErrorCode::BadRequest.as_u32(), "{hints}")
            }
            other => panic!("{hints}: {other:?}"),
        }
    }
    // A well-formed request still gets its grant.
    let client = tc.client("typed-right");
    let mut sub = client
        .subscribe(&shoal::ids::StreamName::new("synth/a").unwrap())
        .await
        .expect("the hub still serves");
    let first = tokio::time::timeout(Duration::from_secs(5), sub.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "{first:?}");
    tc.shutdown().await;
}
