//! The decoders a peer or a user reaches, each as one function of arbitrary bytes: what the
//! cargo-fuzz targets in `fuzz/` run, and what `tests/it/fuzz_corpus.rs` replays from the
//! committed corpora on stable. Each must return for any input — a panic is the bug — and
//! where a decoder accepts its input, what it decoded must encode and decode back to itself.
//!
//! | target | decoder |
//! |---|---|
//! | `frames` | client-protocol frames: the 6-byte header, control messages (strict MessagePack), chunk frames |
//! | `control` | one control message body |
//! | `token` | token opening: the public header, and (sealed with a test key) the claims behind the tag |
//! | `mirror_datagram` | mirror probe and feedback datagrams |
//! | `link` | the control link's length-prefixed `ShardMsg` / `HubCmd` messages |
//! | `lb_cid` | QUIC-LB CIDs under each profile, and the shard socket's header screen |
//! | `config` | the TOML configuration and its validation |

use std::sync::OnceLock;

use crate::wire::{Frame, FrameReader, Message};

/// A target: arbitrary bytes in, a panic the only failure.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay.
pub const TARGETS: [(&str, Target); 7] = [
    ("frames", frames),
    ("control", control),
    ("token", token),
    ("mirror_datagram", mirror_datagram),
    ("link", link),
    ("lb_cid", lb_cid),
    ("config", config),
];

/// Polls a future that never waits on anything outside it (a reader over a slice) to its end.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

/// Frames from a byte stream, as a shard or a hub reads a peer's stream.
pub fn frames(data: &[u8]) {
    let mut reader = FrameReader::new(data);
    // Each frame takes at least its 6-byte header: a bounded loop.
    for _ in 0..=data.len() / 6 {
        match ready(reader.next()) {
            Ok(Some(Frame::Control(m))) => round_trip(&m),
            Ok(Some(Frame::Chunk(c))) => {
                let mut bytes = crate::wire::encode_chunk_header(&c).to_vec();
                bytes.extend_from_slice(&c.payload);
                match ready(FrameReader::new(&bytes[..]).next()) {
                    Ok(Some(Frame::Chunk(again))) => assert_eq!(again, c),
                    other => panic!("a decoded chunk did not decode again: {other:?}"),
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// A decoded message encodes to a body that decodes to the same message (the body alone: a
/// re-encoding may spell absent fields out and pass the frame's size limit).
fn round_trip(m: &Message) {
    let bytes = crate::wire::encode_control(m);
    let again = crate::wire::strict::from_slice::<Message>(&bytes[6..]);
    assert_eq!(
        again.as_ref().ok(),
        Some(m),
        "{} did not decode again",
        m.kind()
    );
}

/// One control message body (no frame header).
pub fn control(data: &[u8]) {
    if let Ok(m) = crate::wire::strict::from_slice::<Message>(data) {
        round_trip(&m);
    }
}

fn token_keys() -> &'static crate::security::token::TokenKeys {
    static KEYS: OnceLock<crate::security::token::TokenKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let secret = crate::security::keys::ClusterSecret::from_bytes([7; 32]);
        crate::security::token::TokenKeys::new(
            crate::security::keys::KeySchedule::new(&secret),
            3600,
        )
    })
}

/// A token as a client presents it: first as given (almost always refused by its tag), then
/// with the bytes after the first as claims sealed under the right key, so the parsing behind
/// the tag sees arbitrary plaintext too.
pub fn token(data: &[u8]) {
    let keys = token_keys();
    let now_ms = 1_000_000;
    let _ = keys.open(data, now_ms);
    let epoch = keys.epoch_at(now_ms);
    let group = u32::from(data.first().copied().unwrap_or(0) % 4);
    let plain = data.get(1..).unwrap_or_default();
    if let Ok(sealed) = keys.seal_raw(epoch, group, plain) {
        if let Ok(claims) = keys.open(&sealed, now_ms) {
            let again = keys
                .seal(&claims, now_ms)
                .expect("the hub seals what it opened");
            assert_eq!(keys.open(&again, now_ms).ok(), Some(claims));
        }
    }
}

/// Mirror datagrams, at a receiver (probes) and at a sender (feedback).
pub fn mirror_datagram(data: &[u8]) {
    use crate::wire::datagram::{decode_probe, encode_probe, Feedback};
    if let Some(id) = decode_probe(data) {
        assert_eq!(decode_probe(&encode_probe(id)), Some(id));
    }
    if let Some(fb) = Feedback::decode(data) {
        assert_eq!(Feedback::decode(&fb.encode()), Some(fb));
    }
}

/// The control link: a 4-byte length and a MessagePack message, either way.
pub fn link(data: &[u8]) {
    use crate::link::{HubCmd, ShardMsg};
    let body = match data {
        [a, b, c, d, rest @ ..] => {
            let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            rest.get(..len).unwrap_or(rest)
        }
        _ => data,
    };
    if let Ok(m) = crate::link::decode::<ShardMsg>(body) {
        assert_eq!(
            crate::link::decode::<ShardMsg>(&crate::link::encode(&m)).ok(),
            Some(m)
        );
    }
    if let Ok(c) = crate::link::decode::<HubCmd>(body) {
        assert_eq!(
            crate::link::decode::<HubCmd>(&crate::link::encode(&c)).ok(),
            Some(c)
        );
    }
}

fn lb_configs() -> &'static [std::sync::Arc<crate::lb::LbConfig>; 4] {
    static CONFIGS: OnceLock<[std::sync::Arc<crate::lb::LbConfig>; 4]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let c = |id, sid, nonce, key| {
            std::sync::Arc::new(crate::lb::LbConfig::new(id, sid, nonce, key).expect("valid"))
        };
        [
            c(0, 4, 8, None),           // plaintext
            c(1, 8, 7, None),           // nlb
            c(2, 4, 12, Some([9; 16])), // single-pass AES (16 octets)
            c(3, 4, 8, Some([5; 16])),  // four-pass
        ]
    })
}

/// A QUIC-LB CID as a shard meets it (a first packet's, a short header's) under each
/// profile, and a datagram through the shard socket's header screen.
pub fn lb_cid(data: &[u8]) {
    let screen = crate::net::Screen {
        cid_len: 13,
        malformed: Default::default(),
    };
    let _ = screen.malformed(data);
    let _ = crate::lb::LbConfig::config_id_of(data);
    let sid = crate::lb::server_id_bytes(42, 4);
    for config in lb_configs() {
        if let Ok(got) = config.decode_server_id(data) {
            assert_eq!(got.len(), config.server_id_len());
        }
        let handle = crate::lb::LbHandle::new(config.cid_len());
        let server_id = crate::lb::server_id_bytes(42, config.server_id_len());
        if handle.set(config.clone(), server_id).is_ok() {
            let _ = handle.routes_here(data);
            // What this endpoint issues is its own.
            assert!(handle.routes_here(&handle.cid()));
        }
        if config.server_id_len() == sid.len() {
            let nonce = &data[..data.len().min(config.nonce_len())];
            if nonce.len() == config.nonce_len() {
                let cid = config.encode(&sid, nonce).expect("lengths match");
                assert_eq!(config.decode_server_id(&cid).ok(), Some(sid.clone()));
            }
        }
    }
}

/// A configuration file, parsed and validated as `shoal up` does.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = crate::cluster::config::Config::parse(text, "fuzz.toml") {
        let _ = c.validate();
    }
}

/// Inputs each target starts from: valid encodings of what the tests exchange.
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use crate::wire::*;
    let stream = crate::ids::StreamName::new("synth/fuzz").expect("a stream name");
    let messages = [
        Message::Subscribe(Subscribe {
            stream: stream.clone(),
            from_seq: None,
            stream_end: false,
        }),
        Message::Heartbeat(Heartbeat { at_us: 7 }),
        Message::Gap(Gap {
            from: crate::ids::Seq::new(3),
            to: crate::ids::Seq::new(9),
        }),
    ];
    let mut out = Vec::new();
    for m in &messages {
        let frame = encode_control(m).to_vec();
        out.push(("frames", frame.clone()));
        out.push(("control", frame[6..].to_vec()));
    }
    let chunk = Chunk {
        seq: crate::ids::Seq::new(1),
        timestamp_us: 5,
        payload: bytes::Bytes::from_static(b"seed"),
    };
    let mut frame = encode_chunk_header(&chunk).to_vec();
    frame.extend_from_slice(&chunk.payload);
    out.push(("frames", frame));
    let keys = token_keys();
    let claims = crate::security::token::Claims {
        id: crate::ids::TokenId([1; 16]),
        group: crate::ids::GroupId(0),
        issued_at_ms: 1_000_000,
        expires_at_ms: 2_000_000,
        secret: [2; 32],
        priority: crate::security::token::Priority::Normal,
        expect_kbps: 100,
        client: crate::ids::ClientId::new("fuzz").expect("a client id"),
    };
    out.push(("token", keys.seal(&claims, 1_000_000).expect("sealed")));
    // Group 0, then the claims' layout in the clear (what `token` seals behind the tag).
    let mut plain = vec![0u8];
    plain.extend_from_slice(&claims.plaintext());
    out.push(("token", plain));
    out.push(("mirror_datagram", datagram::encode_probe(9).to_vec()));
    let fb = datagram::Feedback {
        echo: Some(9),
        acked: Some(crate::ids::Seq::new(4)),
    };
    out.push(("mirror_datagram", fb.encode().to_vec()));
    for m in [
        crate::link::ShardMsg::Drained,
        crate::link::ShardMsg::Prepared { batch: 3 },
    ] {
        out.push(("link", crate::link::net::frame(&m)));
    }
    out.push((
        "link",
        crate::link::net::frame(&crate::link::HubCmd::Drain { grace_ms: 10 }),
    ));
    for c in lb_configs() {
        out.push((
            "lb_cid",
            c.encode(
                &crate::lb::server_id_bytes(42, c.server_id_len()),
                &vec![3; c.nonce_len()],
            )
            .expect("a CID"),
        ));
    }
    let toml = toml::to_string(&crate::cluster::config::Config::default()).expect("the defaults");
    out.push(("config", toml.into_bytes()));
    out.push((
        "config",
        b"[lb]\nenabled = true\nprofile = \"plaintext\"\nshards_via = \"10.0.0.100:443\"\n\
          [pool]\nenabled = true\nstep = \"250ms\"\nmax_shards = 4\n\
          [transport]\nheartbeat_interval = \"150ms\"\nidle_timeout = \"3s\"\n"
            .to_vec(),
    ));
    out
}
