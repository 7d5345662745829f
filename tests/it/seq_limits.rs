//! The end of the sequence space over real QUIC: a peer that sends sequence `u64::MAX` gets
//! `SEQ_EXHAUSTED` (a chunk at `u64::MAX` has no successor, so none may carry it) or is served
//! as documented — never a panic or a silent wrap — and the process goes on serving others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal::ids::{Seq, ShardId, StreamName};
use shoal::mirror::{MirrorConfig, MirrorSender, ReceivedStats, Receiver, ReceiverEvent};
use shoal::shard::Shard;
use shoal::tools::bench::failover::RigCerts;
use shoal::wire::datagram::{encode_probe, Feedback};
use shoal::wire::{
    encode_chunk_header, encode_control, write_control, Bind, Chunk, ErrorCode, Frame, FrameReader,
    Gap, Heartbeat, Message, MirrorHello, MirrorWelcome, Publish, Subscribe,
};

use crate::common::*;

/// One admitted shard session on a raw connection.
pub(super) struct RawSession {
    conn: quinn::Connection,
    send: quinn::SendStream,
    reader: FrameReader<quinn::RecvStream>,
    secret: [u8; 32],
}

impl RawSession {
    /// Attaches to `shard` with a minted token; `then` goes in the same first flight.
    pub(super) async fn open(
        tc: &TestCluster,
        raw: &RawClient,
        shard: &Shard,
        then: &[Message],
    ) -> Self {
        let secret = [9u8; 32];
        let token = tc.mint(shard.group(), secret, now_ms(), now_ms() + 60_000);
        let conn = raw.connect(shard.addr()).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let mut flight =
            encode_control(&attach_msg(&token, &secret, shard.id(), rand16())).to_vec();
        for m in then {
            flight.extend_from_slice(&encode_control(m));
        }
        send.write_all(&flight).await.unwrap();
        let mut reader = FrameReader::new(recv);
        let first = first_frame(&mut reader).await;
        assert!(
            matches!(first, Some(Frame::Control(Message::Attached(_)))),
            "{first:?}"
        );
        RawSession {
            conn,
            send,
            reader,
            secret,
        }
    }

    /// The next frame other than a heartbeat within `limit` (each heartbeat is answered, so
    /// the shard keeps the session); `None` when nothing else came.
    pub(super) async fn next_within(&mut self, limit: Duration) -> Option<Frame> {
        let until = shoal::clock::tokio_now() + limit;
        loop {
            let f = tokio::time::timeout_at(until, self.reader.next())
                .await
                .ok()?;
            match f {
                Ok(Some(Frame::Control(Message::Heartbeat(_)))) => {
                    let hb = Message::Heartbeat(Heartbeat {
                        at_us: shoal::unix_us(),
                    });
                    write_control(&mut self.send, &hb).await.unwrap();
                }
                Ok(f) => return f,
                Err(e) => panic!("bad frame from the shard: {e}"),
            }
        }
    }

    /// Binds the session and publishes to `stream`.
    pub(super) async fn publish(&mut self, stream: &StreamName) {
        let exporter = shoal::security::proof::exporter(&self.conn).expect("handshake done");
        let mac = shoal::security::proof::bind_mac(&self.secret, &exporter).to_vec();
        write_control(&mut self.send, &Message::Bind(Bind { mac }))
            .await
            .unwrap();
        let bound = self.next_within(Duration::from_secs(3)).await;
        assert!(
            matches!(bound, Some(Frame::Control(Message::Bound(_)))),
            "{bound:?}"
        );
        let publish = Message::Publish(Publish {
            stream: stream.clone(),
        });
        write_control(&mut self.send, &publish).await.unwrap();
    }

    pub(super) async fn send_chunk(&mut self, seq: Seq) {
        self.send.write_all(&chunk_frame(seq)).await.unwrap();
    }

    /// The code the shard closed the connection with (within 3 s).
    async fn closed_with(&self) -> Option<ErrorCode> {
        let e = tokio::time::timeout(Duration::from_secs(3), self.conn.closed())
            .await
            .expect("the connection closes");
        ErrorCode::of_close(&e)
    }
}

fn chunk(seq: Seq) -> Chunk {
    Chunk {
        seq,
        timestamp_us: shoal::unix_us(),
        payload: Bytes::from_static(b"end of the line"),
    }
}

/// A chunk frame, whatever its sequence (the encoder does not refuse `u64::MAX`).
fn chunk_frame(seq: Seq) -> Vec<u8> {
    let c = chunk(seq);
    let mut v = encode_chunk_header(&c).to_vec();
    v.extend_from_slice(&c.payload);
    v
}

fn seq_of(f: &Option<Frame>) -> Option<Seq> {
    match f {
        Some(Frame::Chunk(c)) => Some(c.seq),
        _ => None,
    }
}

/// The shard still admits a fresh attach.
async fn still_serves(tc: &TestCluster, raw: &RawClient, shard: ShardId) {
    let s = tc.shard(shard);
    let token = tc.mint(s.group(), [3; 32], now_ms(), now_ms() + 60_000);
    assert_eq!(raw.attach(s.addr(), &token, &[3; 32], shard).await, None);
}

#[tokio::test]
async fn a_publisher_chunk_at_u64_max_is_refused_and_the_shard_goes_on() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shards = tc.cluster.shards();
    let shard = &shards[0];
    let stream = StreamName::new("live/seq-end").unwrap();
    let subscribe = |from_seq| {
        Message::Subscribe(Subscribe {
            stream: stream.clone(),
            from_seq,
            stream_end: false,
        })
    };
    let mut sub = RawSession::open(&tc, &raw, shard, &[subscribe(None)]).await;
    let mut publisher = RawSession::open(&tc, &raw, shard, &[]).await;
    publisher.publish(&stream).await;
    let before = Seq::LAST.prev().unwrap();
    publisher.send_chunk(before).await;
    publisher.send_chunk(Seq::LAST).await;
    publisher.send_chunk(Seq::MAX).await;
    assert_eq!(publisher.closed_with().await, Some(ErrorCode::SeqExhausted));
    assert_eq!(shard.counters().rejections(ErrorCode::SeqExhausted), 1);
    // The subscriber got the last two chunks of the space and stays served: heartbeats only.
    let wait = Duration::from_secs(3);
    assert_eq!(seq_of(&sub.next_within(wait).await), Some(before));
    assert_eq!(seq_of(&sub.next_within(wait).await), Some(Seq::LAST));
    let after = sub.next_within(Duration::from_millis(700)).await;
    assert!(after.is_none(), "nothing follows the last chunk: {after:?}");
    assert!(sub.conn.close_reason().is_none());
    // The stream kept both: a new subscriber from before them replays them.
    let mut late = RawSession::open(&tc, &raw, shard, &[subscribe(Some(before))]).await;
    assert_eq!(seq_of(&late.next_within(wait).await), Some(before));
    assert_eq!(seq_of(&late.next_within(wait).await), Some(Seq::LAST));
    // A second publisher's replay of the last chunk is dropped; `u64::MAX` is refused again.
    let mut again = RawSession::open(&tc, &raw, shard, &[]).await;
    again.publish(&stream).await;
    again.send_chunk(Seq::LAST).await;
    again.send_chunk(Seq::MAX).await;
    assert_eq!(again.closed_with().await, Some(ErrorCode::SeqExhausted));
    let after = sub.next_within(Duration::from_millis(300)).await;
    assert!(after.is_none(), "{after:?}");
    still_serves(&tc, &raw, shard.id()).await;
    tc.shutdown().await;
}

#[tokio::test]
async fn a_first_frame_chunk_at_u64_max_gets_the_same_code_from_hub_and_shard() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shards = tc.cluster.shards();
    let bytes = chunk_frame(Seq::MAX);
    let (_, code, _) = raw.exchange(shards[0].addr(), &bytes).await;
    assert_eq!(code, Some(ErrorCode::SeqExhausted), "shard");
    let (_, code, _) = raw.exchange(tc.hub(), &bytes).await;
    assert_eq!(code, Some(ErrorCode::SeqExhausted), "hub");
    still_serves(&tc, &raw, shards[0].id()).await;
    tc.shutdown().await;
}

#[tokio::test]
async fn a_subscribe_from_u64_max_waits_at_the_end_without_a_panic() {
    let tc = TestCluster::start();
    let raw = RawClient::new();
    let shards = tc.cluster.shards();
    let shard = &shards[0];
    let live = StreamName::new("live/from-max").unwrap();
    let mut publisher = RawSession::open(&tc, &raw, shard, &[]).await;
    publisher.publish(&live).await;
    publisher.send_chunk(Seq::new(5)).await;
    for name in ["synth/from-max", "live/from-max"] {
        let sub = Message::Subscribe(Subscribe {
            stream: StreamName::new(name).unwrap(),
            from_seq: Some(Seq::MAX),
            stream_end: false,
        });
        let mut s = RawSession::open(&tc, &raw, shard, &[sub]).await;
        // Documented: a start after the newest chunk waits for it, and no chunk is ever at
        // `u64::MAX`: heartbeats only, no chunk, no gap, no close.
        publisher.send_chunk(Seq::new(6)).await;
        publisher.send_chunk(Seq::LAST).await;
        let got = s.next_within(Duration::from_millis(700)).await;
        assert!(got.is_none(), "{name}: {got:?}");
        assert!(s.conn.close_reason().is_none(), "{name}");
    }
    assert_eq!(shard.counters().total_rejections(), 0);
    still_serves(&tc, &raw, shard.id()).await;
    tc.shutdown().await;
}

/// A bare mirror sender: `shoal-mirror/1` with the rig's client certificate.
async fn raw_mirror(certs: &RigCerts, to: std::net::SocketAddr) -> quinn::Connection {
    let crypto = shoal::security::tls::mirror_client_crypto(
        &certs.ca,
        certs.chain.clone(),
        certs.key.clone_key(),
    )
    .unwrap();
    let config = shoal::security::tls::client_config(crypto, Duration::from_secs(10)).unwrap();
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).unwrap();
    endpoint
        .connect_with(config, to, &certs.cluster)
        .unwrap()
        .await
        .expect("mirror handshake")
}

/// Sends the hello on a new stream and returns the welcome's `last_seq`.
async fn hello(
    conn: &quinn::Connection,
    stream: &StreamName,
) -> (
    quinn::SendStream,
    FrameReader<quinn::RecvStream>,
    Option<Seq>,
) {
    let (mut send, recv) = conn.open_bi().await.unwrap();
    let h = Message::MirrorHello(MirrorHello {
        stream: stream.clone(),
    });
    write_control(&mut send, &h).await.unwrap();
    let mut reader = FrameReader::new(recv);
    match first_frame(&mut reader).await {
        Some(Frame::Control(Message::MirrorWelcome(w))) => (send, reader, w.last_seq),
        other => panic!("expected a welcome, got {other:?}"),
    }
}

async fn next_event(r: &mut Receiver) -> ReceiverEvent {
    tokio::time::timeout(Duration::from_secs(3), r.next())
        .await
        .expect("an event in time")
        .expect("the receiver is open")
}

#[tokio::test]
async fn a_mirror_receiver_refuses_a_chunk_at_u64_max_and_resumes_at_the_end() {
    let certs = RigCerts::generate().unwrap();
    let mut receiver = Receiver::bind(certs.receiver_options(([127, 0, 0, 1], 0).into())).unwrap();
    let stream = StreamName::new("live/mirror-end").unwrap();
    let conn = raw_mirror(&certs, receiver.addr()).await;
    let (mut send, _reader, last_seq) = hello(&conn, &stream).await;
    assert_eq!(last_seq, None);
    let before = Seq::LAST.prev().unwrap();
    send.write_all(&chunk_frame(before)).await.unwrap();
    let gap = Message::Gap(Gap {
        from: Seq::LAST,
        to: Seq::MAX,
    });
    write_control(&mut send, &gap).await.unwrap();
    send.write_all(&chunk_frame(Seq::MAX)).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .expect("the receiver closes");
    assert_eq!(ErrorCode::of_close(&e), Some(ErrorCode::SeqExhausted));
    // The application got the chunk and the gap to the end, then the disconnection.
    assert!(matches!(
        next_event(&mut receiver).await,
        ReceiverEvent::Connected { .. }
    ));
    match next_event(&mut receiver).await {
        ReceiverEvent::Chunk { chunk, .. } => assert_eq!(chunk.seq, before),
        other => panic!("{other:?}"),
    }
    match next_event(&mut receiver).await {
        ReceiverEvent::Gap { from, to, .. } => assert_eq!((from, to), (Seq::LAST, Seq::MAX)),
        other => panic!("{other:?}"),
    }
    match next_event(&mut receiver).await {
        ReceiverEvent::Disconnected { reason, .. } => {
            assert!(reason.contains("no successor"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let stats: ReceivedStats = receiver.stats()[&stream];
    assert_eq!(
        (
            stats.delivered,
            stats.missing,
            stats.last_seq,
            stats.acked_seq
        ),
        (1, 1, Some(Seq::LAST), Some(Seq::LAST))
    );
    // The receiver goes on: a new connection is welcomed at the end, a replay of the last
    // chunk is a duplicate, and the feedback acknowledges `u64::MAX - 1`.
    let conn = raw_mirror(&certs, receiver.addr()).await;
    let (mut send, _reader, last_seq) = hello(&conn, &stream).await;
    assert_eq!(last_seq, Some(Seq::LAST));
    send.write_all(&chunk_frame(Seq::LAST)).await.unwrap();
    assert!(matches!(
        next_event(&mut receiver).await,
        ReceiverEvent::Connected { .. }
    ));
    conn.send_datagram(encode_probe(77)).unwrap();
    let fb = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let d = conn.read_datagram().await.unwrap();
            if let Some(fb) = Feedback::decode(&d).filter(|f| f.echo == Some(77)) {
                return fb;
            }
        }
    })
    .await
    .expect("feedback answers the probe");
    assert_eq!(fb.acked, Some(Seq::LAST));
    let until = shoal::clock::now() + Duration::from_secs(3);
    while receiver.stats()[&stream].duplicates == 0 && shoal::clock::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(receiver.stats()[&stream].duplicates, 1);
    assert!(conn.close_reason().is_none());
}

#[tokio::test]
async fn a_mirror_sender_refuses_a_welcome_at_u64_max() {
    let certs = RigCerts::generate().unwrap();
    // A bare receiver that claims to have everything up to `u64::MAX`.
    let crypto = shoal::security::tls::mirror_server_crypto(
        certs.chain.clone(),
        certs.key.clone_key(),
        &certs.ca,
    )
    .unwrap();
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(crypto).unwrap();
    let server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let endpoint = quinn::Endpoint::server(server, ([127, 0, 0, 1], 0).into()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let stream = StreamName::new("live/welcome-max").unwrap();
    let sender = MirrorSender::start(
        certs.sender_options(stream.clone(), MirrorConfig::default()),
        &[addr],
    )
    .unwrap();
    let conn = tokio::time::timeout(Duration::from_secs(5), async {
        endpoint.accept().await.unwrap().await.unwrap()
    })
    .await
    .expect("the sender connects");
    let (mut send, recv) = conn.accept_bi().await.unwrap();
    let mut reader = FrameReader::new(recv);
    assert!(matches!(
        first_frame(&mut reader).await,
        Some(Frame::Control(Message::MirrorHello(_)))
    ));
    let welcome = Message::MirrorWelcome(MirrorWelcome {
        last_seq: Some(Seq::MAX),
    });
    write_control(&mut send, &welcome).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .expect("the sender closes");
    assert_eq!(ErrorCode::of_close(&e), Some(ErrorCode::SeqExhausted));
    let until = shoal::clock::now() + Duration::from_secs(3);
    let error = loop {
        let snap = sender.snapshot();
        if let Some(e) = snap.endpoints[0].last_error.clone() {
            break e;
        }
        assert!(shoal::clock::now() < until, "no error recorded: {snap:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(error.contains("no chunk carries"), "{error}");
    // The machine took nothing from it: nothing committed, pushing still works.
    let snap = sender.snapshot();
    assert_eq!(snap.committed_seq, None);
    assert!(snap.endpoints[0].acked_seq.is_none());
    sender.push(chunk(Seq::new(1))).await.unwrap();
    let refused = sender.push(chunk(Seq::MAX)).await;
    assert!(
        matches!(
            refused,
            Err(shoal::mirror::SenderError::Push(
                shoal::mirror::PushError::SeqExhausted
            ))
        ),
        "{refused:?}"
    );
}
