//! The strict control-message decoding of PROTOCOL.md section 2.3, end to end against a real
//! hub and shard: hand-written MessagePack, each case with its documented outcome.

use std::net::SocketAddr;

use shoal::wire::{ErrorCode, Frame, FrameReader, Message, KIND_CONTROL, VERSION};

use crate::common::*;

/// A MessagePack value, encoded by hand so that each test picks exactly what goes on the wire.
#[derive(Clone)]
enum V {
    Nil,
    Int(i128),
    F64(f64),
    Str(&'static str),
    Bin(Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
}

fn enc(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Nil => out.push(0xc0),
        V::Int(i) => {
            let i = *i;
            if (0..=0x7f).contains(&i) || (-32..0).contains(&i) {
                out.push(i as i8 as u8);
            } else if i >= 0 {
                out.push(0xcf);
                out.extend((i as u64).to_be_bytes());
            } else {
                out.push(0xd3);
                out.extend((i as i64).to_be_bytes());
            }
        }
        V::F64(f) => {
            out.push(0xcb);
            out.extend(f.to_bits().to_be_bytes());
        }
        V::Str(s) => {
            out.push(0xd9);
            out.push(s.len() as u8);
            out.extend(s.as_bytes());
        }
        V::Bin(b) => {
            out.push(0xc4);
            out.push(b.len() as u8);
            out.extend(b);
        }
        V::Arr(items) => {
            out.push(0xdc);
            out.extend((items.len() as u16).to_be_bytes());
            items.iter().for_each(|i| enc(i, out));
        }
        V::Map(entries) => {
            out.push(0xde);
            out.extend((entries.len() as u16).to_be_bytes());
            for (k, v) in entries {
                enc(k, out);
                enc(v, out);
            }
        }
    }
}

fn fields(f: &[(&'static str, V)]) -> V {
    V::Map(f.iter().map(|(k, v)| (V::Str(k), v.clone())).collect())
}

/// One control frame holding `{name: body}`.
fn frame(name: V, body: V) -> Vec<u8> {
    let mut msg = Vec::new();
    enc(&V::Map(vec![(name, body)]), &mut msg);
    let mut out = ((msg.len() + 2) as u32).to_be_bytes().to_vec();
    out.extend([VERSION, KIND_CONTROL]);
    out.extend(msg);
    out
}

/// A `stream_request` for a synthetic stream with these fields replaced or added.
fn request(changes: &[(&'static str, V)]) -> Vec<u8> {
    let mut f = vec![
        ("client_id", V::Str("strict")),
        ("stream", V::Str("synth/strict")),
        ("role", V::Str("subscribe")),
    ];
    for (k, v) in changes {
        match f.iter_mut().find(|(name, _)| name == k) {
            Some(slot) => slot.1 = v.clone(),
            None => f.push((k, v.clone())),
        }
    }
    frame(V::Str("stream_request"), fields(&f))
}

fn hints(h: &[(&'static str, V)]) -> (&'static str, V) {
    ("hints", fields(h))
}

/// Sends `bytes` on a fresh stream of `conn` and returns the first frame back.
async fn ask(conn: &quinn::Connection, bytes: &[u8]) -> Option<Frame> {
    let (mut send, recv) = conn
        .open_bi()
        .await
        .expect("a stream on the hub connection");
    send.write_all(bytes).await.expect("request written");
    let _ = send.finish();
    first_frame(&mut FrameReader::new(recv)).await
}

/// The reject code of `bytes` sent to the hub; panics on anything but a reject.
async fn reject_code(raw: &RawClient, hub: SocketAddr, bytes: &[u8]) -> Option<ErrorCode> {
    match raw.exchange(hub, bytes).await {
        (Some(Frame::Control(Message::Reject(r))), _, _) => ErrorCode::from_u32(r.code),
        (other, code, _) => panic!("expected a reject, got {other:?} / close {code:?}"),
    }
}

#[tokio::test]
async fn nil_hints_are_no_hints() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let all_nil = hints(&[
        ("region", V::Nil),
        ("device_class", V::Nil),
        ("bitrate_kbps", V::Nil),
    ]);
    for req in [
        request(&[("hints", V::Nil)]),
        request(&[all_nil]),
        request(&[]),
    ] {
        let (frame, code, _) = raw.exchange(tc.hub(), &req).await;
        assert!(
            matches!(frame, Some(Frame::Control(Message::Grant(_)))),
            "{frame:?} / close {code:?}"
        );
    }
    tc.shutdown().await;
}

#[tokio::test]
async fn out_of_range_bitrates_are_rejected_with_bad_request() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    for kbps in [
        1i128 << 40,
        -1,
        0,
        10_000_001,
        i64::MIN as i128,
        u64::MAX as i128,
    ] {
        let req = request(&[hints(&[("bitrate_kbps", V::Int(kbps))])]);
        assert_eq!(
            reject_code(&raw, tc.hub(), &req).await,
            Some(ErrorCode::BadRequest),
            "bitrate_kbps {kbps}"
        );
    }
    // A reject leaves the connection usable: the next request on it is granted.
    let bad = request(&[hints(&[("bitrate_kbps", V::Int(-1))])]);
    let (frame, _, conn) = raw.exchange(tc.hub(), &bad).await;
    assert!(matches!(frame, Some(Frame::Control(Message::Reject(_)))));
    let good = request(&[hints(&[("bitrate_kbps", V::Int(10_000_000))])]);
    let answer = ask(&conn, &good).await;
    assert!(
        matches!(answer, Some(Frame::Control(Message::Grant(_)))),
        "{answer:?}"
    );
    conn.close(0u32.into(), b"");
    tc.shutdown().await;
}

#[tokio::test]
async fn arrays_for_maps_bins_for_strs_and_integer_roles_are_malformed_frames() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let positional = frame(
        V::Str("stream_request"),
        V::Arr(vec![
            V::Str("strict"),
            V::Str("synth/strict"),
            V::Str("subscribe"),
        ]),
    );
    let by_index = frame(
        V::Int(0),
        fields(&[
            ("client_id", V::Str("strict")),
            ("stream", V::Str("synth/strict")),
            ("role", V::Str("subscribe")),
        ]),
    );
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("request as a positional array", positional),
        ("message name as a variant index", by_index),
        (
            "hints as an array",
            request(&[("hints", V::Arr(vec![V::Nil]))]),
        ),
        (
            "client_id as bin",
            request(&[("client_id", V::Bin(b"strict".to_vec()))]),
        ),
        (
            "stream as bin",
            request(&[("stream", V::Bin(b"synth/strict".to_vec()))]),
        ),
        ("role 0", request(&[("role", V::Int(0))])),
        ("role 1", request(&[("role", V::Int(1))])),
        (
            "role as a map",
            request(&[("role", fields(&[("subscribe", V::Nil)]))]),
        ),
        (
            "region as an integer",
            request(&[hints(&[("region", V::Int(7))])]),
        ),
        (
            "region as bin",
            request(&[hints(&[("region", V::Bin(b"eu".to_vec()))])]),
        ),
        (
            "bitrate as a float",
            request(&[hints(&[("bitrate_kbps", V::F64(3000.0))])]),
        ),
        (
            "bitrate as a str",
            request(&[hints(&[("bitrate_kbps", V::Str("3000"))])]),
        ),
    ];
    for (what, bytes) in cases {
        let (frame, code, _) = raw.exchange(tc.hub(), &bytes).await;
        assert_eq!(
            (frame.map(|f| f.kind()), code),
            (None, Some(ErrorCode::MalformedFrame)),
            "{what}"
        );
    }
    // The same connection-level refusal did not stop the hub.
    let (frame, _, _) = raw.exchange(tc.hub(), &request(&[])).await;
    assert!(matches!(frame, Some(Frame::Control(Message::Grant(_)))));
    tc.shutdown().await;
}

#[tokio::test]
async fn a_token_as_an_integer_array_is_a_malformed_frame() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shard = tc.cluster.shards()[0].clone();
    let secret = [8u8; 32];
    let token = tc.mint(shard.group(), secret, now_ms(), now_ms() + 60_000);
    // The nonce travels as `nonce` (normally bin); the proof covers its bytes.
    let attach = |token: V, nonce: V, nonce_bytes: &[u8]| {
        let proof = shoal::security::proof::attach_proof(&secret, shard.id(), nonce_bytes);
        frame(
            V::Str("attach"),
            fields(&[
                ("token", token),
                ("nonce", nonce),
                ("proof", V::Bin(proof.to_vec())),
            ]),
        )
    };
    let bin_nonce = || {
        let n = rand16();
        (V::Bin(n.to_vec()), n)
    };
    let as_ints = V::Arr(token.iter().map(|b| V::Int(i128::from(*b))).collect());
    let before = tc.allocations();
    for target in [shard.addr(), tc.hub()] {
        let (nonce, n) = bin_nonce();
        let (frame, code, _) = raw
            .exchange(target, &attach(as_ints.clone(), nonce, &n))
            .await;
        assert_eq!(
            (frame.map(|f| f.kind()), code),
            (None, Some(ErrorCode::MalformedFrame)),
            "token as integers to {target}"
        );
    }
    // A nonce as a str (of 16 ASCII bytes) is refused the same way.
    let text = "0123456789abcdef";
    let as_str = attach(V::Bin(token.clone()), V::Str(text), text.as_bytes());
    let (_, code, _) = raw.exchange(shard.addr(), &as_str).await;
    assert_eq!(code, Some(ErrorCode::MalformedFrame), "nonce as a str");
    assert_eq!(tc.allocations(), before, "nothing admitted");
    assert_eq!(shard.counters().rejections(ErrorCode::MalformedFrame), 2);
    // The same token as bin is admitted: the encoder above is right.
    let (nonce, n) = bin_nonce();
    let (frame, _, conn) = raw
        .exchange(shard.addr(), &attach(V::Bin(token), nonce, &n))
        .await;
    assert!(
        matches!(frame, Some(Frame::Control(Message::Attached(_)))),
        "{frame:?}"
    );
    conn.close(0u32.into(), b"");
    tc.shutdown().await;
}

#[tokio::test]
async fn hub_requests_in_zero_rtt_get_their_documented_answers() {
    let tc = TestCluster::start();
    let client = EarlyClient::new(&tc, "strict").await;
    // `hints: nil` is no hints: a grant.
    let e = client.early(tc.hub(), &request(&[("hints", V::Nil)])).await;
    assert!(e.accepted, "the request rode in accepted 0-RTT");
    assert!(
        matches!(e.frame, Some(Frame::Control(Message::Grant(_)))),
        "{:?}",
        e.frame
    );
    // A bitrate beyond u32: BAD_REQUEST, as a reject on the stream.
    let huge = request(&[hints(&[("bitrate_kbps", V::Int(1 << 40))])]);
    let e = client.early(tc.hub(), &huge).await;
    assert!(e.accepted);
    match e.frame {
        Some(Frame::Control(Message::Reject(r))) => {
            assert_eq!(r.code, ErrorCode::BadRequest.as_u32())
        }
        other => panic!("expected a reject, got {other:?}"),
    }
    // A positional array for the map closes the connection, and the close keeps its code
    // although it was decided on 0-RTT data.
    let positional = frame(
        V::Str("stream_request"),
        V::Arr(vec![
            V::Str("strict"),
            V::Str("synth/strict"),
            V::Str("subscribe"),
        ]),
    );
    let e = client.early(tc.hub(), &positional).await;
    assert!(e.accepted);
    assert_eq!(e.code, Some(ErrorCode::MalformedFrame));
    tc.shutdown().await;
}
