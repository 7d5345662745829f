//! Micro-benchmarks of the hot pure functions: token seal/open, frame encode/decode, session
//! store put/take (at 1k and 100k entries). `cargo bench --bench micro`; under `cargo test`
//! each runs once as a smoke test.

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use shoal::ids::{ClientId, GroupId, Seq, ShardId, TokenId};
use shoal::security::keys::{ClusterSecret, KeySchedule};
use shoal::security::token::{Claims, TokenKeys};
use shoal::tickets::StoreCore;
use shoal::wire::{
    encode_chunk_header, encode_control, Chunk, Frame, FrameReader, Grant, Message, ShardAddr,
};

fn claims(now_ms: u64) -> Claims {
    Claims {
        id: TokenId([7; 16]),
        group: GroupId(1),
        client: ClientId::new("bench-client-0001").expect("valid"),
        secret: [9; 32],
        issued_at_ms: now_ms,
        expires_at_ms: now_ms + 600_000,
        priority: shoal::security::token::Priority::Normal,
        expect_kbps: 0,
    }
}

fn tokens(c: &mut Criterion) {
    let keys = TokenKeys::new(KeySchedule::new(&ClusterSecret::from_bytes([3; 32])), 3600);
    let now_ms = shoal::unix_us() / 1000;
    let cl = claims(now_ms);
    let sealed = keys.seal(&cl, now_ms).expect("seal");
    c.bench_function("token_seal", |b| {
        b.iter(|| keys.seal(black_box(&cl), now_ms).expect("seal"))
    });
    c.bench_function("token_open", |b| {
        b.iter(|| keys.open(black_box(&sealed), now_ms).expect("open"))
    });
}

/// Reads one frame from an in-memory buffer (which never waits, so one poll finishes it).
fn read_one(buf: &[u8]) -> Frame {
    let mut reader = FrameReader::new(buf);
    let mut fut = std::pin::pin!(reader.next());
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(Some(f))) => f,
        other => panic!(
            "an in-memory frame decodes at once, got {:?}",
            other.is_ready()
        ),
    }
}

fn frames(c: &mut Criterion) {
    let grant = Message::Grant(Grant {
        group: GroupId(1),
        shards: (0..2)
            .map(|i| ShardAddr {
                id: ShardId(i),
                addr: format!("127.0.0.1:{}", 4500 + i),
                route_cids: Vec::new(),
            })
            .collect(),
        token: vec![0xab; 96],
        session_secret: vec![0xcd; 32],
        expires_at_ms: 1_900_000_000_000,
    });
    let encoded = encode_control(&grant);
    c.bench_function("frame_encode_grant", |b| {
        b.iter(|| encode_control(black_box(&grant)))
    });
    c.bench_function("frame_decode_grant", |b| {
        b.iter(|| read_one(black_box(&encoded)))
    });
    let chunk = Chunk {
        seq: Seq::new(123_456),
        timestamp_us: 1_900_000_000_000_000,
        payload: Bytes::from(vec![0x11; 1024]),
    };
    let mut wire = encode_chunk_header(&chunk).to_vec();
    wire.extend_from_slice(&chunk.payload);
    c.bench_function("frame_encode_chunk_header", |b| {
        b.iter(|| encode_chunk_header(black_box(&chunk)))
    });
    c.bench_function("frame_decode_chunk_1k", |b| {
        b.iter(|| read_one(black_box(&wire)))
    });
}

fn store(c: &mut Criterion) {
    for size in [1_000usize, 100_000] {
        let now = shoal::clock::now();
        let mut s = StoreCore::new(size * 2, Duration::from_secs(3600));
        for i in 0..size as u64 {
            let mut k = vec![0u8; 32];
            k[..8].copy_from_slice(&i.to_le_bytes());
            s.put(k, vec![0xa5; 160], now);
        }
        let mut n = size as u64;
        c.bench_function(&format!("store_put_take_at_{}k", size / 1000), |b| {
            b.iter_batched(
                || {
                    n += 1;
                    let mut k = vec![0u8; 32];
                    k[..8].copy_from_slice(&n.to_le_bytes());
                    k
                },
                |k| {
                    s.put(k.clone(), vec![0xa5; 160], now);
                    black_box(s.take(&k, now))
                },
                BatchSize::SmallInput,
            )
        });
    }
}

criterion_group!(micro, tokens, frames, store);
criterion_main!(micro);
