use std::collections::BTreeSet;
use std::time::Duration;

use super::*;
use crate::hub::directory::Directory;
use crate::ids::{GroupId, ShardId};
use crate::link::{Register, ShardLoad, ShardMsg, LINK_VERSION};
use crate::metrics_hist::{Histogram, BUCKETS};

#[test]
fn label_values_are_escaped() {
    assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
    assert_eq!(escape_label("x\ny"), "x\\ny");
}

#[test]
fn families_have_help_type_and_samples() {
    let mut x = Exposition::default();
    x.family(
        "m_total",
        "counter",
        "Help.",
        vec![(vec![("k", "v\"".to_string())], 3.0)],
    );
    x.family("empty", "gauge", "Skipped.", Vec::new());
    x.family("g", "gauge", "G.", vec![(Labels::new(), f64::NAN)]);
    let text = x.finish();
    assert_eq!(
        text,
        "# HELP m_total Help.\n# TYPE m_total counter\nm_total{k=\"v\\\"\"} 3\n# HELP g G.\n# TYPE g gauge\ng NaN\n"
    );
}

#[test]
fn histograms_are_cumulative_with_sum_and_count() {
    let h = Histogram::default();
    h.observe(Duration::from_micros(300));
    h.observe(Duration::from_millis(2));
    let s = h.snapshot();
    let foreign = HistogramSnapshot {
        counts: vec![1; BUCKETS + 1],
        sum_ns: 1,
    };
    let mut x = Exposition::default();
    x.histogram(
        "t_seconds",
        "T.",
        [
            (vec![("shard", "1".to_string())], &s),
            (vec![("shard", "2".to_string())], &foreign),
        ],
    );
    let text = x.finish();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "# TYPE t_seconds histogram");
    assert_eq!(lines[2], "t_seconds_bucket{shard=\"1\",le=\"0.0005\"} 1");
    assert_eq!(lines[3], "t_seconds_bucket{shard=\"1\",le=\"0.001\"} 1");
    assert_eq!(lines[4], "t_seconds_bucket{shard=\"1\",le=\"0.0025\"} 2");
    assert_eq!(lines[16], "t_seconds_bucket{shard=\"1\",le=\"+Inf\"} 2");
    assert_eq!(lines[17], "t_seconds_sum{shard=\"1\"} 0.0023");
    assert_eq!(lines[18], "t_seconds_count{shard=\"1\"} 2");
    assert_eq!(lines.len(), 19, "the series with other buckets is left out");
    let mut none = Exposition::default();
    none.histogram("u_seconds", "U.", [(Labels::new(), &foreign)]);
    assert_eq!(none.finish(), "");
}

#[test]
fn codes_are_labelled_by_their_snake_case_name() {
    assert_eq!(
        code_label(ErrorCode::TokenInvalid.as_u32()),
        "token_invalid"
    );
    assert_eq!(code_label(ErrorCode::NoError.as_u32()), "no_error");
    assert_eq!(code_label(0x99), "0x99");
    let twice = [
        CodeCount {
            code: 0x31,
            count: 2,
        },
        CodeCount {
            code: 0x31,
            count: 3,
        },
    ];
    assert_eq!(by_code(&twice).get("over_quota"), Some(&5));
}

fn register(id: u32) -> Register {
    Register {
        version: LINK_VERSION,
        shard: ShardId(id),
        group: GroupId(1),
        addr: "127.0.0.1:7000".parse().unwrap(),
        capacity: 10,
        mirror: None,
    }
}

/// The families with a sample labelled `shard="id"`.
fn families_of(text: &str, id: u32) -> BTreeSet<String> {
    let tag = format!("shard=\"{id}\"");
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(&tag))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(|n| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).filter(|b| b.ends_with("_seconds")));
            base.unwrap_or(n).to_string()
        })
        .collect()
}

/// A shard in another process reports over the networked link (MessagePack); an embedded
/// one hands its report over a channel as a value. The hub renders both the same.
#[test]
fn a_shard_in_another_process_has_the_families_of_an_embedded_one() {
    let t0 = crate::clock::now();
    let mut d = Directory::new(Duration::from_secs(2));
    let mut load = ShardLoad {
        sessions: 2,
        zero_rtt_attempted: 3,
        zero_rtt_accepted: 2,
        rejections: 1,
        rejected: vec![CodeCount {
            code: ErrorCode::TokenExpired.as_u32(),
            count: 1,
        }],
        ..ShardLoad::default()
    };
    load.attach_seconds.observe(Duration::from_millis(4));
    load.first_chunk_seconds.observe(Duration::from_millis(7));
    let wire = crate::link::encode(&ShardMsg::Load(load.clone()));
    let Ok(ShardMsg::Load(remote)) = crate::link::decode::<ShardMsg>(&wire) else {
        panic!("a load report decodes");
    };
    assert_eq!(remote, load, "the report survives the link");
    for (id, l) in [(1, load), (2, remote)] {
        d.handle_register(&register(id), t0).unwrap();
        d.handle_load(ShardId(id), l, t0).unwrap();
    }
    let records: Vec<_> = d.records().cloned().collect();
    let text = render_with(&[], None, &records, None);
    let (embedded, process) = (families_of(&text, 1), families_of(&text, 2));
    assert_eq!(embedded, process);
    for name in [
        "shoal_shard_attach_seconds",
        "shoal_shard_first_chunk_seconds",
        "shoal_shard_zero_rtt_attempted_total",
        "shoal_shard_zero_rtt_accepted_total",
        "shoal_shard_rejections_total",
        "shoal_shard_sessions",
        "shoal_shard_cpu_seconds_total",
    ] {
        assert!(process.contains(name), "{name} missing:\n{text}");
    }
    assert!(text.contains(
        "shoal_shard_rejections_total{shard=\"2\",group=\"1\",code=\"token_expired\"} 1"
    ));
    assert!(text.contains("shoal_shard_first_chunk_seconds_count{shard=\"2\",group=\"1\"} 1"));
    assert!(text.contains("shoal_shard_zero_rtt_accepted_total{shard=\"2\",group=\"1\"} 2"));
}

#[test]
fn build_info_always_and_process_families_when_read() {
    let none = render_with(&[], None, &[], None);
    let version = env!("CARGO_PKG_VERSION");
    let info = format!(
        "shoal_build_info{{version=\"{version}\",revision=\"{}\"}} 1",
        crate::GIT_REVISION
    );
    assert!(none.contains(&info), "{none}");
    assert!(!none.contains("process_"), "{none}");
    let p = ProcessStats {
        cpu_seconds: 1.5,
        resident_bytes: 4096.0,
        virtual_bytes: 8192.0,
        start_time_seconds: 1.7e9,
        open_fds: Some(12.0),
        max_fds: None,
    };
    let some = render_with(&[], None, &[], Some(&p));
    for line in [
        "# TYPE process_cpu_seconds_total counter",
        "process_cpu_seconds_total 1.5",
        "process_resident_memory_bytes 4096",
        "process_start_time_seconds 1700000000",
        "process_open_fds 12",
    ] {
        assert!(some.contains(line), "{line} missing:\n{some}");
    }
    assert!(!some.contains("process_max_fds"), "unlimited: left out");
}

#[test]
fn hub_histogram_and_rejections_by_code() {
    let h = HubCounters::default();
    h.grant_seconds.observe(Duration::from_millis(1));
    h.rejections.count(ErrorCode::NoCapacity);
    let text = render_with(&[], Some(&h), &[], None);
    assert!(text.contains("# TYPE shoal_hub_grant_seconds histogram"));
    assert!(text.contains("shoal_hub_grant_seconds_bucket{le=\"0.001\"} 1"));
    assert!(text.contains("shoal_hub_grant_seconds_count 1"));
    assert!(text.contains("shoal_hub_rejections_total{code=\"no_capacity\"} 1"));
}
