use super::*;
use crate::wire::MAX_HINT_LEN;

const MIN: u64 = 60_000;
const DAY: u64 = 24 * 60 * MIN;
/// A plausible "now": 2024-01-01 in Unix milliseconds.
const T0: u64 = 1_704_067_200_000;

fn id(s: &str) -> ClientId {
    ClientId::new(s).unwrap()
}

fn stream(s: &str) -> StreamName {
    StreamName::new(s).unwrap()
}

fn hints(region: &str, device: &str, kbps: u32) -> Hints {
    Hints {
        region: Some(region.into()),
        device_class: Some(device.into()),
        bitrate_kbps: Some(kbps),
    }
}

fn cfg() -> ProfilerConfig {
    ProfilerConfig::default()
}

fn assert_finite(f: &RequestFeatures) {
    let all = [
        f.declared_bitrate_kbps,
        f.mean_bitrate_kbps,
        f.mean_duration_s,
        Some(f.sessions),
        Some(f.requests_per_minute),
    ];
    for v in all.into_iter().flatten() {
        assert!(v.is_finite() && v >= 0.0, "{f:?}");
    }
    assert!(f.region_bucket < FEATURE_BUCKETS && f.device_bucket < FEATURE_BUCKETS);
}

#[test]
fn config_defaults_parse_and_validate() {
    let d = ProfilerConfig::default();
    assert_eq!(d.max_clients, 100_000);
    assert_eq!(d.max_history, 64);
    assert_eq!(d.retention, Duration::from_secs(30 * 86_400));
    d.validate().unwrap();
    let c: ProfilerConfig =
        toml::from_str("retention = \"7days\"\nflush_interval = \"5s\"").unwrap();
    assert_eq!(c.retention, Duration::from_secs(7 * 86_400));
    assert_eq!(c.max_history, 64);
    assert!(toml::from_str::<ProfilerConfig>("max_client = 3").is_err());
    let zero = ProfilerConfig {
        max_clients: 0,
        ..cfg()
    };
    assert!(matches!(
        zero.validate(),
        Err(ProfilerError::InvalidConfig(_))
    ));
    let text = toml::to_string(&d).unwrap();
    assert_eq!(toml::from_str::<ProfilerConfig>(&text).unwrap(), d);
}

#[test]
fn records_requests_and_aggregates() {
    let mut p = Profiler::new(cfg());
    let a = id("alice");
    for i in 0..3 {
        let r = p.record_request(&a, &stream("synth/a"), &hints("eu", "tv", 3000), T0 + i);
        assert_eq!(r, Recorded::Counted);
    }
    p.record_request(&a, &stream("synth/b"), &Hints::default(), T0 + 10);
    // 1 s at 250 000 bytes = 2000 kbit/s; 3 s at 1 500 000 bytes = 4000 kbit/s.
    p.record_session(
        &a,
        SessionRecord::new(stream("synth/a"), T0, 1000, 250_000),
        T0 + 20,
    );
    let mut lying = SessionRecord::new(stream("synth/a"), T0, 3000, 1_500_000);
    lying.bitrate_kbps = 999_999_999;
    p.record_session(&a, lying, T0 + 30);

    let prof = p.profile(&a).unwrap();
    assert_eq!(prof.requests, 4);
    assert_eq!((prof.first_seen_ms, prof.last_seen_ms), (T0, T0 + 30));
    assert_eq!(prof.streams[0].stream, stream("synth/a"));
    assert_eq!((prof.streams[0].count, prof.streams[1].count), (3, 1));
    // A request without hints keeps the last ones.
    assert_eq!(prof.hints, hints("eu", "tv", 3000));
    assert_eq!(prof.totals.sessions, 2);
    assert_eq!(prof.totals.total_bytes, 1_750_000);
    assert_eq!(prof.totals.mean_duration_ms, 2000.0);
    assert_eq!(prof.totals.mean_bitrate_kbps, 3000.0);
    assert_eq!(prof.history[1].bitrate_kbps, 4000);

    let f = p.features(&a, &Hints::default(), T0 + 30);
    assert!(f.known_client);
    assert_eq!(f.declared_bitrate_kbps, Some(3000.0));
    assert_eq!(f.mean_bitrate_kbps, Some(3000.0));
    assert_eq!(f.mean_duration_s, Some(2.0));
    assert_eq!(f.sessions, 2.0);
    assert_eq!(f.requests_per_minute, 4.0);
    assert_ne!(f.region_bucket, 0);
    // Buckets are case-insensitive and stable.
    assert_eq!(bucket("EU"), bucket("eu"));
    assert_eq!(p.counters().requests, 4);
    assert_eq!(p.counters().sessions, 2);
}

#[test]
fn history_and_streams_are_bounded() {
    let mut p = Profiler::new(ProfilerConfig {
        max_history: 4,
        max_streams: 3,
        ..cfg()
    });
    let a = id("a");
    for i in 0..10u64 {
        p.record_session(&a, SessionRecord::new(stream("s"), T0 + i, 1000, i), T0 + i);
    }
    let prof = p.profile(&a).unwrap();
    assert_eq!(prof.history.len(), 4);
    assert_eq!(prof.history.front().unwrap().bytes, 6);
    assert_eq!(prof.totals.sessions, 10, "aggregates cover every session");

    for (s, n) in [("s1", 5), ("s2", 3), ("s3", 2), ("s4", 1), ("s5", 1)] {
        for _ in 0..n {
            p.record_request(&a, &stream(s), &Hints::default(), T0 + 20);
        }
    }
    let streams = &p.profile(&a).unwrap().streams;
    assert_eq!(streams.len(), 3);
    assert_eq!(streams[0].stream, stream("s1"));
    assert!(streams.windows(2).all(|w| w[0].count >= w[1].count));
}

#[test]
fn max_clients_evicts_least_recently_seen() {
    let mut p = Profiler::new(ProfilerConfig {
        max_clients: 3,
        ..cfg()
    });
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        p.record_request(&id(c), &stream("s"), &Hints::default(), T0 + i as u64);
    }
    p.record_request(&id("a"), &stream("s"), &Hints::default(), T0 + 10);
    p.record_request(&id("d"), &stream("s"), &Hints::default(), T0 + 11);
    assert_eq!(p.len(), 3);
    assert!(p.profile(&id("b")).is_none());
    assert!(p.profile(&id("a")).is_some());
    assert_eq!(p.counters().evictions, 1);
    // Many distinct ids never grow the map past the bound.
    for i in 0..100 {
        p.record_request(
            &id(&format!("x{i}")),
            &stream("s"),
            &Hints::default(),
            T0 + 20,
        );
    }
    assert_eq!(p.len(), 3);
    assert_eq!(p.counters().evictions, 101);
}

#[test]
fn retention_purges_stale_profiles() {
    let mut p = Profiler::new(ProfilerConfig {
        retention: Duration::from_secs(3600),
        ..cfg()
    });
    p.record_request(&id("old"), &stream("s"), &Hints::default(), T0);
    p.record_request(&id("new"), &stream("s"), &Hints::default(), T0 + 30 * MIN);
    assert_eq!(
        p.purge_expired(T0 + 60 * MIN),
        0,
        "exactly at retention is kept"
    );
    assert_eq!(p.purge_expired(T0 + 61 * MIN), 1);
    assert!(p.profile(&id("old")).is_none());
    assert!(p.profile(&id("new")).is_some());
    assert_eq!(p.flush(T0 + 200 * MIN).unwrap().purged, 1);
    assert!(p.is_empty());
    assert_eq!(p.counters().purged, 2);
}

#[test]
fn flooding_client_is_rate_limited() {
    let mut p = Profiler::new(ProfilerConfig {
        max_requests_per_minute: 10,
        ..cfg()
    });
    let f = id("flood");
    let mut limited = 0;
    for i in 0..1000u64 {
        let s = stream(&format!("s{i}"));
        if p.record_request(&f, &s, &hints("eu", "pc", 100), T0 + i) == Recorded::RateLimited {
            limited += 1;
        }
    }
    assert_eq!(limited, 990);
    let prof = p.profile(&f).unwrap();
    assert_eq!((prof.requests, prof.rate_limited), (10, 990));
    assert!(prof.streams.len() <= 16);
    assert_eq!(p.counters().rate_limited, 990);
    assert_eq!(p.counters().requests, 1000);
    let feat = p.features(&f, &Hints::default(), T0 + 1000);
    assert_eq!(feat.requests_per_minute, 1000.0);
    assert_finite(&feat);
    // Another client is unaffected, and the flooder counts again next minute.
    assert_eq!(
        p.record_request(&id("calm"), &stream("s"), &Hints::default(), T0 + 1000),
        Recorded::Counted
    );
    assert_eq!(
        p.record_request(&f, &stream("s"), &Hints::default(), T0 + MIN + 1),
        Recorded::Counted
    );
    let rpm = p
        .features(&f, &Hints::default(), T0 + MIN + 30_000)
        .requests_per_minute;
    assert!(rpm > 400.0 && rpm < 600.0, "{rpm}");
    assert_eq!(
        p.features(&f, &Hints::default(), T0 + 10 * MIN)
            .requests_per_minute,
        0.0
    );
}

#[test]
fn out_of_range_hints_are_ignored_and_counted() {
    let mut p = Profiler::new(cfg());
    let a = id("a");
    p.record_request(&a, &stream("s"), &hints("eu", "tv", 3000), T0);
    let bad = Hints {
        region: Some("r".repeat(MAX_HINT_LEN + 1)),
        device_class: Some("tv\n".into()),
        bitrate_kbps: Some(0),
    };
    assert_eq!(
        p.record_request(&a, &stream("s"), &bad, T0 + 1),
        Recorded::Counted
    );
    let huge = Hints {
        region: Some(String::new()),
        bitrate_kbps: Some(MAX_BITRATE_KBPS + 1),
        ..Hints::default()
    };
    p.record_request(&a, &stream("s"), &huge, T0 + 2);
    assert_eq!(p.counters().rejected_hints, 5);
    assert_eq!(p.profile(&a).unwrap().hints, hints("eu", "tv", 3000));
    let f = p.features(&a, &bad, T0 + 3);
    assert_eq!(
        f.declared_bitrate_kbps,
        Some(3000.0),
        "falls back to the profile"
    );
    assert_eq!(f.region_bucket, bucket("eu"));
}

#[test]
fn hint_features_read_the_valid_hints_and_nothing_else() {
    let f = Profiler::hint_features(&hints("eu", "tv", 2_500));
    assert_eq!(f.declared_bitrate_kbps, Some(2_500.0));
    assert_eq!(
        (f.region_bucket, f.device_bucket),
        (bucket("eu"), bucket("tv"))
    );
    assert!(!f.known_client && f.mean_bitrate_kbps.is_none() && f.sessions == 0.0);
    let bad = Hints {
        region: Some("x".repeat(MAX_HINT_LEN + 1)),
        device_class: Some(String::new()),
        bitrate_kbps: Some(0),
    };
    assert_eq!(Profiler::hint_features(&bad), RequestFeatures::default());
}

#[test]
fn features_are_always_finite() {
    let mut p = Profiler::new(cfg());
    let unknown = p.features(&id("nobody"), &Hints::default(), T0);
    assert_eq!(unknown, RequestFeatures::default());
    assert_finite(&unknown);

    let a = id("a");
    p.record_session(&a, SessionRecord::new(stream("s"), T0, 0, u64::MAX), T0);
    p.record_session(
        &a,
        SessionRecord::new(stream("s"), u64::MAX, u64::MAX, u64::MAX),
        T0,
    );
    p.record_session(&a, SessionRecord::new(stream("s"), T0, 1, u64::MAX), T0);
    assert_eq!(p.counters().clamped_sessions, 1);
    let prof = p.profile(&a).unwrap();
    assert_eq!(prof.totals.total_bytes, u64::MAX);
    assert!(prof.totals.is_sane());
    let f = p.features(&a, &Hints::default(), 0);
    assert_finite(&f);
    assert_eq!(f.sessions, 3.0);
    // A clock that goes back does not break the rate window or the index.
    p.record_request(&a, &stream("s"), &Hints::default(), 5);
    assert_finite(&p.features(&a, &Hints::default(), 0));
    assert_eq!(p.profile(&a).unwrap().last_seen_ms, T0);
}

fn db_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("profiles.redb")
}

#[test]
fn profiles_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut a = Profiler::open_or_fresh(cfg(), &path, T0).unwrap();
    assert!(path.exists(), "a missing database is created");
    for (i, c) in ["a", "b", "c"].iter().enumerate() {
        let c = id(c);
        a.record_request(
            &c,
            &stream("synth/x"),
            &hints("eu", "tv", 2500),
            T0 + i as u64,
        );
        a.record_session(
            &c,
            SessionRecord::new(stream("synth/x"), T0, 7_000, 9_000_000),
            T0 + 9,
        );
    }
    let stats = a.flush(T0 + 10).unwrap();
    assert_eq!((stats.saved, stats.deleted), (3, 0));
    assert_eq!(
        a.flush(T0 + 11).unwrap(),
        FlushStats::default(),
        "nothing dirty"
    );
    // Changes after a flush are written by the next one.
    a.record_request(&id("a"), &stream("synth/y"), &Hints::default(), T0 + 12);
    a.flush(T0 + 13).unwrap();
    let before: HashMap<ClientId, ClientProfile> = a
        .profiles()
        .map(|p| (p.client_id.clone(), p.clone()))
        .collect();
    let features_before = a.features(&id("a"), &Hints::default(), T0 + 20);
    drop(a);

    let b = Profiler::open_or_fresh(cfg(), &path, T0 + 20).unwrap();
    assert_eq!(b.counters().loaded, 3);
    assert_eq!(b.counters().corrupt_records, 0);
    let after: HashMap<ClientId, ClientProfile> = b
        .profiles()
        .map(|p| (p.client_id.clone(), p.clone()))
        .collect();
    assert_eq!(before, after);
    assert_eq!(
        b.features(&id("a"), &Hints::default(), T0 + 20),
        features_before
    );
}

#[test]
fn evicted_and_purged_profiles_leave_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let small = ProfilerConfig {
        max_clients: 2,
        retention: Duration::from_secs(86_400),
        ..cfg()
    };
    let mut a = Profiler::open_or_fresh(cfg(), &path, T0).unwrap();
    for (i, c) in ["a", "b", "c", "d"].iter().enumerate() {
        a.record_request(&id(c), &stream("s"), &Hints::default(), T0 + i as u64 * DAY);
    }
    a.flush(T0 + 3 * DAY).unwrap();
    drop(a);

    // A smaller bound at load keeps the newest; the rest are deleted at the first flush.
    let mut b = Profiler::open_or_fresh(small.clone(), &path, T0 + 3 * DAY).unwrap();
    assert_eq!(b.len(), 2);
    assert!(b.profile(&id("c")).is_some() && b.profile(&id("d")).is_some());
    // c was last seen 2 days before, past the 1 day retention.
    let stats = b.flush(T0 + 4 * DAY).unwrap();
    assert_eq!((stats.purged, stats.deleted), (1, 3));
    drop(b);
    let c = Profiler::open_or_fresh(small, &path, T0 + 4 * DAY).unwrap();
    assert_eq!(c.counters().loaded, 1);
    assert!(c.profile(&id("d")).is_some());
}

#[test]
fn a_corrupt_database_is_moved_aside_and_a_fresh_one_works() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &garbage).unwrap();

    let mut p = Profiler::open_or_fresh(cfg(), &path, T0).unwrap();
    assert_eq!(p.counters().corrupt_databases, 1);
    let aside = dir.path().join(format!("profiles.redb.corrupt-{T0}"));
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        garbage,
        "the bad file is kept, not deleted"
    );

    p.record_request(&id("a"), &stream("s"), &Hints::default(), T0);
    p.flush(T0).unwrap();
    drop(p);
    let p = Profiler::open_or_fresh(cfg(), &path, T0 + 1).unwrap();
    assert_eq!(p.counters().corrupt_databases, 0);
    assert_eq!(p.len(), 1);
    drop(p);

    // A second corruption in the same millisecond does not overwrite the first one aside.
    std::fs::write(&path, b"not a database").unwrap();
    let p = Profiler::open_or_fresh(cfg(), &path, T0).unwrap();
    assert_eq!(p.counters().corrupt_databases, 1);
    assert!(dir
        .path()
        .join(format!("profiles.redb.corrupt-{T0}-1"))
        .exists());
    assert_eq!(std::fs::read(&aside).unwrap(), garbage);
}

#[test]
fn a_locked_database_is_an_error_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let _first = ProfileStore::open(&path).unwrap();
    let e = Profiler::open_or_fresh(cfg(), &path, T0).unwrap_err();
    assert!(!e.is_corrupt(), "{e}");
    assert!(path.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "nothing moved aside"
    );
}

#[test]
fn a_corrupt_record_is_skipped_counted_and_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut a = Profiler::open_or_fresh(cfg(), &path, T0).unwrap();
    a.record_request(&id("good1"), &stream("s"), &Hints::default(), T0);
    a.record_request(&id("good2"), &stream("s"), &Hints::default(), T0);
    a.flush(T0).unwrap();
    drop(a);
    {
        let mut wrong_version = store::encode(&ClientProfile::new(id("v9"), T0)).unwrap();
        wrong_version[0] = 9;
        let other_key = store::encode(&ClientProfile::new(id("someone"), T0)).unwrap();
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(store::PROFILES).unwrap();
            t.insert(
                b"bad".as_slice(),
                [FORMAT_VERSION, 0xc1, 0xff, 0x00].as_slice(),
            )
            .unwrap();
            t.insert(b"v9".as_slice(), wrong_version.as_slice())
                .unwrap();
            t.insert(b"mismatch".as_slice(), other_key.as_slice())
                .unwrap();
            t.insert([0xffu8, 0xfe].as_slice(), b"".as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }

    let b = Profiler::open_or_fresh(cfg(), &path, T0 + 1).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b.counters().corrupt_records, 4);
    assert_eq!(b.counters().corrupt_databases, 0);
    assert_eq!(b.store().unwrap().quarantined().unwrap(), 4);
    drop(b);
    // Quarantined records are not skipped again, and are still there.
    let c = Profiler::open_or_fresh(cfg(), &path, T0 + 2).unwrap();
    assert_eq!(c.counters().corrupt_records, 0);
    assert_eq!(c.len(), 2);
    assert_eq!(c.store().unwrap().quarantined().unwrap(), 4);
}

#[test]
fn loaded_profiles_are_repaired_to_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    let path = db_path(&dir);
    let mut a = Profiler::open_or_fresh(cfg(), &path, T0).unwrap();
    let c = id("c");
    for i in 0..10 {
        a.record_session(&c, SessionRecord::new(stream("s"), T0, 1000, 1000), T0 + i);
    }
    a.flush(T0 + 10).unwrap();
    drop(a);
    {
        // A stored profile whose aggregates went non-finite.
        let store = ProfileStore::open(&path).unwrap();
        let mut p = store.load_all().unwrap().pop().unwrap();
        p.totals.mean_bitrate_kbps = f64::NAN;
        p.hints.bitrate_kbps = Some(0);
        store.save(&[&p]).unwrap();
    }
    let small = ProfilerConfig {
        max_history: 3,
        ..cfg()
    };
    let b = Profiler::open_or_fresh(small, &path, T0 + 20).unwrap();
    let p = b.profile(&c).unwrap();
    assert_eq!(p.history.len(), 3);
    assert!(p.totals.is_sane());
    assert_eq!(p.hints.bitrate_kbps, None);
    assert_eq!(b.counters().repaired, 1);
    assert_finite(&b.features(&c, &Hints::default(), T0 + 20));
}
