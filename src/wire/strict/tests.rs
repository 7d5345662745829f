use super::*;
use crate::ids::{ClientId, GroupId, Seq, ShardId, StreamName};
use crate::wire::{
    Attach, Attached, Bind, Bound, Gap, GoAway, Grant, Heartbeat, Hints, Message, MirrorHello,
    MirrorWelcome, Publish, Reject, Role, ShardAddr, StreamRequest, Subscribe,
};

/// A MessagePack value, written by hand so that tests choose the encoding.
#[derive(Clone)]
enum V {
    Nil,
    Bool(bool),
    /// Any integer, shortest form.
    Int(i128),
    F64(f64),
    Str(&'static str),
    Bin(Vec<u8>),
    Arr(Vec<V>),
    Map(Vec<(V, V)>),
    /// Bytes as they are.
    Raw(Vec<u8>),
}

fn enc(v: &V, out: &mut Vec<u8>) {
    match v {
        V::Nil => out.push(0xc0),
        V::Bool(b) => out.push(0xc2 | u8::from(*b)),
        V::Int(i) => {
            let i = *i;
            if (0..=0x7f).contains(&i) || (-32..0).contains(&i) {
                out.push(i as i8 as u8);
            } else if (0..=0xffff_ffff).contains(&i) {
                out.push(0xce);
                out.extend((i as u32).to_be_bytes());
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
        V::Raw(b) => out.extend(b),
    }
}

fn bytes(v: &V) -> Vec<u8> {
    let mut out = Vec::new();
    enc(v, &mut out);
    out
}

/// `{name: body}`: a message.
fn msg(name: &'static str, body: V) -> Vec<u8> {
    bytes(&V::Map(vec![(V::Str(name), body)]))
}

fn fields(f: &[(&'static str, V)]) -> V {
    V::Map(f.iter().map(|(k, v)| (V::Str(k), v.clone())).collect())
}

fn decode(b: &[u8]) -> Result<Message, DecodeError> {
    from_slice(b)
}

/// A stream request with `hints` as given (`None`: left out).
fn request(role: V, hints: Option<V>) -> Vec<u8> {
    let mut f = vec![
        ("client_id", V::Str("c1")),
        ("stream", V::Str("synth/a")),
        ("role", role),
    ];
    f.extend(hints.map(|h| ("hints", h)));
    msg("stream_request", fields(&f))
}

fn hints_of(b: &[u8]) -> Result<Hints, DecodeError> {
    match decode(b)? {
        Message::StreamRequest(r) => Ok(r.hints),
        other => panic!("decoded {other:?}"),
    }
}

fn is_type_error(r: Result<Message, DecodeError>, want_found: &str) -> bool {
    matches!(r, Err(DecodeError::Type { found, .. }) if found == want_found)
}

#[test]
fn every_message_round_trips_through_the_strict_decoder() {
    let name = || StreamName::new("live/x").unwrap();
    let all = [
        Message::StreamRequest(StreamRequest {
            client_id: ClientId::new("c").unwrap(),
            stream: name(),
            role: Role::Publish,
            hints: Hints {
                region: Some("eu".into()),
                device_class: None,
                bitrate_kbps: Some(3000),
            },
        }),
        Message::Grant(Grant {
            group: GroupId(1),
            shards: vec![ShardAddr {
                id: ShardId(2),
                addr: "127.0.0.1:9".into(),
                route_cids: vec![serde_bytes::ByteBuf::from(vec![0x0c; 13])],
            }],
            token: vec![1; 120],
            session_secret: vec![2; 32],
            expires_at_ms: u64::MAX,
        }),
        Message::Reject(Reject {
            code: 0x15,
            reason: "no".into(),
        }),
        Message::Attach(Attach {
            token: vec![3; 108],
            nonce: vec![4; 16],
            proof: vec![5; 32],
        }),
        Message::Attached(Attached {
            shard: ShardId(7),
            zero_rtt: true,
            load_permille: Some(12),
        }),
        Message::Bind(Bind { mac: vec![6; 32] }),
        Message::Bound(Bound {}),
        Message::Subscribe(Subscribe {
            stream: name(),
            from_seq: None,
            stream_end: true,
        }),
        Message::Publish(Publish { stream: name() }),
        Message::Heartbeat(Heartbeat { at_us: 1 << 40 }),
        Message::GoAway(GoAway {
            code: 0x40,
            grace_ms: 2000,
        }),
        Message::Gap(Gap {
            from: Seq::new(1),
            to: Seq::new(9),
        }),
        Message::MirrorHello(MirrorHello { stream: name() }),
        Message::MirrorWelcome(MirrorWelcome {
            last_seq: Some(Seq::ZERO),
        }),
        Message::StreamEnd(crate::wire::StreamEnd {
            last_seq: Some(Seq::new(7)),
        }),
        Message::StreamEnd(crate::wire::StreamEnd { last_seq: None }),
    ];
    for m in all {
        let b = rmp_serde::to_vec_named(&m).unwrap();
        assert_eq!(decode(&b), Ok(m));
    }
}

#[test]
fn integers_in_any_form_that_fits() {
    let hb = |v: V| msg("heartbeat", fields(&[("at_us", v)]));
    // fixint, uint8, uint16, uint32, uint64, int8 and int64 holding a positive value.
    for raw in [
        vec![0x07],
        vec![0xcc, 0x07],
        vec![0xcd, 0, 0x07],
        vec![0xce, 0, 0, 0, 0x07],
        vec![0xcf, 0, 0, 0, 0, 0, 0, 0, 0x07],
        vec![0xd0, 0x07],
        vec![0xd3, 0, 0, 0, 0, 0, 0, 0, 0x07],
    ] {
        assert_eq!(
            decode(&hb(V::Raw(raw))),
            Ok(Message::Heartbeat(Heartbeat { at_us: 7 }))
        );
    }
    assert!(matches!(
        decode(&hb(V::Int(-1))),
        Err(DecodeError::Refused(_))
    ));
    assert!(is_type_error(decode(&hb(V::F64(7.0))), "float"));
    assert!(is_type_error(decode(&hb(V::Str("7"))), "str"));
    assert!(is_type_error(decode(&hb(V::Bool(true))), "bool"));
    // A u32 field refuses what does not fit.
    let gone = |c: V| msg("go_away", fields(&[("code", c), ("grace_ms", V::Int(1))]));
    assert!(decode(&gone(V::Int(0xffff_ffff))).is_ok());
    assert!(matches!(
        decode(&gone(V::Int(1 << 32))),
        Err(DecodeError::Refused(_))
    ));
}

#[test]
fn structs_are_maps_with_field_names_never_positional_arrays() {
    let positional = msg("heartbeat", V::Arr(vec![V::Int(9)]));
    assert!(is_type_error(decode(&positional), "array"));
    // rmp-serde's compact form of a whole message.
    let compact = rmp_serde::to_vec(&Message::Heartbeat(Heartbeat { at_us: 9 })).unwrap();
    assert!(decode(&compact).is_err());
    let request = msg(
        "stream_request",
        V::Arr(vec![V::Str("c1"), V::Str("synth/a"), V::Str("subscribe")]),
    );
    assert!(is_type_error(decode(&request), "array"));
    // Field names are str, not integers.
    let by_index = msg("heartbeat", V::Map(vec![(V::Int(0), V::Int(9))]));
    assert!(is_type_error(decode(&by_index), "integer"));
    // A repeated field.
    let twice = msg(
        "heartbeat",
        fields(&[("at_us", V::Int(1)), ("at_us", V::Int(2))]),
    );
    assert!(matches!(decode(&twice), Err(DecodeError::Refused(_))));
    // A missing required field.
    assert!(matches!(
        decode(&msg("heartbeat", fields(&[]))),
        Err(DecodeError::Refused(_))
    ));
    // `bound` is an empty map, not nil or an empty array.
    assert!(decode(&msg("bound", fields(&[]))).is_ok());
    assert!(decode(&msg("bound", V::Nil)).is_err());
    assert!(decode(&msg("bound", V::Arr(vec![]))).is_err());
}

#[test]
fn messages_are_maps_of_one_entry_keyed_by_name() {
    let body = fields(&[("at_us", V::Int(9))]);
    // By variant index instead of name.
    let by_index = bytes(&V::Map(vec![(V::Int(9), body.clone())]));
    assert!(is_type_error(decode(&by_index), "integer"));
    // Two entries, none, a plain name, an array pair.
    let two = bytes(&V::Map(vec![
        (V::Str("heartbeat"), body.clone()),
        (V::Str("heartbeat"), body.clone()),
    ]));
    assert_eq!(decode(&two), Err(DecodeError::EnumLen(2)));
    assert_eq!(
        decode(&bytes(&V::Map(vec![]))),
        Err(DecodeError::EnumLen(0))
    );
    assert!(is_type_error(decode(&bytes(&V::Str("heartbeat"))), "str"));
    let pair = bytes(&V::Arr(vec![V::Str("heartbeat"), body]));
    assert!(is_type_error(decode(&pair), "array"));
    assert!(matches!(
        decode(&msg("heartbeats", fields(&[]))),
        Err(DecodeError::Refused(_))
    ));
}

#[test]
fn strings_are_str_and_bytes_are_bin() {
    let sub = |stream: V| {
        msg(
            "subscribe",
            fields(&[("stream", stream), ("from_seq", V::Nil)]),
        )
    };
    assert!(decode(&sub(V::Str("synth/a"))).is_ok());
    assert!(is_type_error(
        decode(&sub(V::Bin(b"synth/a".to_vec()))),
        "bin"
    ));
    assert!(matches!(
        decode(&sub(V::Raw(vec![0xa2, 0xff, 0xfe]))),
        Err(DecodeError::Utf8)
    ));
    // A str that fails the name check.
    assert!(matches!(
        decode(&sub(V::Str("bad name"))),
        Err(DecodeError::Refused(_))
    ));
    let attach = |token: V| {
        msg(
            "attach",
            fields(&[
                ("token", token),
                ("nonce", V::Bin(vec![1; 16])),
                ("proof", V::Bin(vec![2; 32])),
            ]),
        )
    };
    assert!(decode(&attach(V::Bin(vec![7; 108]))).is_ok());
    let ints = V::Arr((0..108).map(|_| V::Int(7)).collect());
    assert!(is_type_error(decode(&attach(ints)), "array"));
    assert!(is_type_error(decode(&attach(V::Str("token"))), "str"));
    let mac = |m: V| msg("bind", fields(&[("mac", m)]));
    assert!(is_type_error(decode(&mac(V::Str("0123"))), "str"));
    let grant_secret = |s: V| {
        msg(
            "grant",
            fields(&[
                ("group", V::Int(0)),
                ("shards", V::Arr(vec![])),
                ("token", V::Bin(vec![1; 108])),
                ("session_secret", s),
                ("expires_at_ms", V::Int(1)),
            ]),
        )
    };
    assert!(decode(&grant_secret(V::Bin(vec![0; 32]))).is_ok());
    let ints = V::Arr((0..32).map(|_| V::Int(0)).collect());
    assert!(is_type_error(decode(&grant_secret(ints)), "array"));
}

#[test]
fn role_is_its_documented_str_only() {
    for (role, want) in [("subscribe", Role::Subscribe), ("publish", Role::Publish)] {
        match decode(&request(V::Str(role), None)) {
            Ok(Message::StreamRequest(r)) => assert_eq!(r.role, want),
            other => panic!("{role}: {other:?}"),
        }
    }
    assert!(is_type_error(decode(&request(V::Int(0), None)), "integer"));
    assert!(is_type_error(decode(&request(V::Int(1), None)), "integer"));
    assert!(is_type_error(
        decode(&request(V::Bin(b"subscribe".to_vec()), None)),
        "bin"
    ));
    let as_map = V::Map(vec![(V::Str("subscribe"), V::Nil)]);
    assert!(is_type_error(decode(&request(as_map, None)), "map"));
    assert!(matches!(
        decode(&request(V::Str("Subscribe"), None)),
        Err(DecodeError::Refused(_))
    ));
}

#[test]
fn hints_nil_or_absent_are_no_hints() {
    let sub = || V::Str("subscribe");
    assert_eq!(hints_of(&request(sub(), None)), Ok(Hints::default()));
    assert_eq!(
        hints_of(&request(sub(), Some(V::Nil))),
        Ok(Hints::default())
    );
    let all_nil = fields(&[
        ("region", V::Nil),
        ("device_class", V::Nil),
        ("bitrate_kbps", V::Nil),
    ]);
    assert_eq!(
        hints_of(&request(sub(), Some(all_nil))),
        Ok(Hints::default())
    );
    assert!(hints_of(&request(sub(), Some(fields(&[])))).is_ok());
}

#[test]
fn a_bitrate_of_any_integer_decodes_and_validate_refuses_what_is_out_of_range() {
    let with = |b: V| {
        let h = fields(&[("bitrate_kbps", b)]);
        hints_of(&request(V::Str("subscribe"), Some(h)))
    };
    let cases: [(i128, Option<u32>, bool); 9] = [
        (1, Some(1), true),
        (3000, Some(3000), true),
        (10_000_000, Some(10_000_000), true),
        (0, Some(0), false),
        (10_000_001, Some(10_000_001), false),
        (u32::MAX as i128 + 1, Some(u32::MAX), false),
        (1 << 40, Some(u32::MAX), false),
        (-1, Some(0), false),
        (i64::MIN as i128, Some(0), false),
    ];
    for (wire, decoded, valid) in cases {
        let h = with(V::Int(wire)).unwrap_or_else(|e| panic!("{wire}: {e}"));
        assert_eq!(h.bitrate_kbps, decoded, "{wire}");
        assert_eq!(h.validate().is_ok(), valid, "{wire}");
    }
    let h = with(V::Raw(vec![
        0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ]))
    .unwrap();
    assert!(h.validate().is_err());
}

#[test]
fn wrongly_typed_hints_are_malformed() {
    let with = |h: V| hints_of(&request(V::Str("subscribe"), Some(h)));
    let cases = [
        (V::Arr(vec![V::Str("eu")]), "array"),
        (V::Str("eu"), "str"),
        (V::Int(0), "integer"),
        (fields(&[("region", V::Int(1))]), "integer"),
        (fields(&[("region", V::Bin(b"eu".to_vec()))]), "bin"),
        (fields(&[("device_class", V::Bool(true))]), "bool"),
        (fields(&[("bitrate_kbps", V::F64(3000.0))]), "float"),
        (fields(&[("bitrate_kbps", V::Str("3000"))]), "str"),
    ];
    for (h, found) in cases {
        assert!(
            matches!(with(h), Err(DecodeError::Type { found: f, .. }) if f == found),
            "{found}"
        );
    }
    // A string of the right type but too long decodes; `validate` refuses it.
    let long: &'static str = "x".repeat(65).leak();
    let h = with(fields(&[("region", V::Str(long))])).unwrap();
    assert!(h.validate().is_err());
}

#[test]
fn unknown_fields_are_skipped_whatever_they_hold() {
    // One of every kind, and a deep nest that recursion would not survive.
    let mut deep = vec![0x91; 100_000];
    deep.push(0xc0);
    let unknown = [
        V::Nil,
        V::Bool(false),
        V::Int(-5),
        V::Int(1 << 50),
        V::F64(1.5),
        V::Raw(vec![0xca, 0, 0, 0, 0]),
        V::Str("s"),
        V::Bin(vec![1, 2]),
        V::Raw(vec![0xd4, 1, 2]),
        V::Raw(vec![0xc7, 2, 1, 9, 9]),
        V::Map(vec![(V::Int(1), V::Arr(vec![V::Nil]))]),
        V::Raw(deep),
    ];
    for u in unknown {
        let b = msg("heartbeat", fields(&[("later", u), ("at_us", V::Int(4))]));
        assert_eq!(decode(&b), Ok(Message::Heartbeat(Heartbeat { at_us: 4 })));
    }
    let reserved = msg("heartbeat", fields(&[("later", V::Raw(vec![0xc1]))]));
    assert!(is_type_error(decode(&reserved), "the never-used byte 0xc1"));
}

#[test]
fn truncations_fail_and_trailing_bytes_are_ignored() {
    let good = rmp_serde::to_vec_named(&Message::Grant(Grant {
        group: GroupId(1),
        shards: vec![ShardAddr {
            id: ShardId(2),
            addr: "127.0.0.1:9".into(),
            route_cids: Vec::new(),
        }],
        token: vec![1; 120],
        session_secret: vec![2; 32],
        expires_at_ms: 5,
    }))
    .unwrap();
    for cut in 0..good.len() {
        assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
    }
    let mut longer = good.clone();
    longer.extend([0xc1, 0xff]);
    assert_eq!(decode(&longer), decode(&good));
    // A forged element count ends at the end of the body, without a large allocation.
    let forged = msg(
        "grant",
        fields(&[("shards", V::Raw(vec![0xdd, 0xff, 0xff, 0xff, 0xff]))]),
    );
    assert_eq!(decode(&forged), Err(DecodeError::Eof));
}

#[test]
fn the_profile_store_still_reads_hints_with_rmp_serde() {
    // Profiles are stored with rmp-serde (hub::profiler::store); the clamping field works
    // with its deserializer too.
    let h = Hints {
        region: Some("eu".into()),
        device_class: None,
        bitrate_kbps: Some(4000),
    };
    let named = rmp_serde::to_vec_named(&h).unwrap();
    assert_eq!(rmp_serde::from_slice::<Hints>(&named).unwrap(), h);
    let empty = rmp_serde::to_vec_named(&Hints::default()).unwrap();
    assert_eq!(
        rmp_serde::from_slice::<Hints>(&empty).unwrap(),
        Hints::default()
    );
}
