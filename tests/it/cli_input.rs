//! Every numeric and duration input of the CLI and of the config file, given a value no run
//! could use: a clear message naming it, exit 2, never a panic (exit 101).

use std::process::{Command, Output};

fn shoal(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the shoal binary runs")
}

fn refused(args: &[&str], names: &str) {
    let out = shoal(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    assert!(
        stderr.contains(names),
        "{args:?} does not name {names}: {stderr}"
    );
}

#[test]
fn numeric_and_duration_flags_refuse_what_they_cannot_hold() {
    let not_numbers = ["inf", "-inf", "NaN", "1e20", "-1", "many"];
    // (the command before the flag, the flag, the command's positional arguments after it)
    let float_flags: &[(&[&str], &str, &[&str])] = &[
        (&["subscribe"], "--seconds", &["synth/x"]),
        (&["subscribe"], "--rebind-after", &["synth/x"]),
        (&["receive"], "--seconds", &[]),
        (&["loadgen"], "--rate", &[]),
        (&["loadgen"], "--hold", &[]),
        (&["loadgen"], "--timeout", &[]),
        (&["demo"], "--seconds", &[]),
        (&["bench", "grant"], "--link-delay-ms", &[]),
        (&["bench", "placement"], "--startup-ms", &[]),
    ];
    for (cmd, flag, rest) in float_flags {
        for v in not_numbers {
            // `--flag=-1`: how a negative value is given (`--flag -1` reads as another flag).
            let given = format!("{flag}={v}");
            let mut a: Vec<&str> = cmd.to_vec();
            a.push(&given);
            a.extend(rest.iter());
            refused(&a, flag);
        }
    }
    // Zero where it means nothing, and counts past their range.
    let count_flags: &[(&[&str], &str, &str, &[&str])] = &[
        (&["loadgen"], "--rate", "0", &[]),
        (&["loadgen"], "--timeout", "0", &[]),
        (&["loadgen"], "--clients", "0", &[]),
        (&["loadgen"], "--heartbeat-ms", "0", &[]),
        (&["loadgen"], "--bitrate-kbps", "-1", &[]),
        (&["publish"], "--rate", "0", &["synth/x"]),
        (&["publish"], "--size", "0", &["synth/x"]),
        (&["publish"], "--count", "-1", &["synth/x"]),
        (&["subscribe"], "--count", "1e3", &["synth/x"]),
        (&["demo"], "--seconds", "0", &[]),
        (&["demo"], "--clients", "0", &[]),
        (&["demo"], "--streams", "0", &[]),
        (&["bench", "grant"], "--rounds", "0", &[]),
        (&["bench", "fanout"], "--subscribers", "0", &[]),
        (&["bench", "failover"], "--rate-hz", "0", &[]),
        (&["bench", "placement"], "--steps", "0", &[]),
        (&["bench", "memory"], "--idle-clients", "99999999999", &[]),
        (&["up"], "--shards", "-1", &[]),
        (&["up"], "--groups", "0", &[]),
        (
            &["shard"],
            "--id",
            "4294967295",
            &["--hub", "127.0.0.1:1", "--listen", "127.0.0.1:0"],
        ),
        (
            &["shard"],
            "--hub-wait",
            "0",
            &["--hub", "127.0.0.1:1", "--listen", "127.0.0.1:0"],
        ),
    ];
    // Ranges a command checks after parsing: the same exit 2.
    for (args, names) in [
        (&["bench", "grant", "--rounds=500"][..], "--rounds"),
        (&["bench", "ttfb", "--rtt-ms=0"], "--rtt-ms"),
        (&["bench", "placement", "--steps=10"], "--steps"),
        (&["loadgen", "--hold=4000"], "--hold"),
        (&["demo", "--seconds=4000"], "--seconds"),
        (&["publish", "synth/x"], "synthetic"),
    ] {
        refused(args, names);
    }
    for (cmd, flag, v, rest) in count_flags {
        let given = format!("{flag}={v}");
        let mut a: Vec<&str> = cmd.to_vec();
        a.push(&given);
        a.extend(rest.iter());
        refused(&a, flag);
    }
}

#[test]
fn config_values_out_of_range_name_their_key_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "transport",
            "heartbeat_interval = \"5000000000000000000s\"",
            "transport.heartbeat_interval",
        ),
        (
            "transport.handshakes",
            "per_ip_rate = 1e-13",
            "transport.handshakes",
        ),
        (
            "transport.handshakes",
            "per_ip_burst = 0.5",
            "transport.handshakes",
        ),
        ("transport", "idle_timeout = \"1e20s\"", "idle_timeout"),
        (
            "transport",
            "idle_timeout = \"600000000000000000h\"",
            "idle_timeout",
        ),
        (
            "transport",
            "heartbeat_interval = \"0s\"",
            "transport.heartbeat_interval",
        ),
        ("hub", "token_ttl = \"0s\"", "hub.token_ttl"),
        ("hub", "grant_shards = 1000", "hub.grant_shards"),
        ("keys", "epoch_interval = \"500y\"", "keys.epoch_interval"),
        (
            "streams",
            "synthetic_rate_hz = 0",
            "streams.synthetic_rate_hz",
        ),
        ("streams", "session_ttl = \"99999d\"", "streams.session_ttl"),
        ("streams", "buffer_chunks = -1", "buffer_chunks"),
        ("shards", "max_sessions = 0", "shards.max_sessions"),
        ("shards", "attach_timeout = \"0s\"", "shards.attach_timeout"),
        ("shards", "count = 1e3", "count"),
        (
            "pool",
            "target_utilization = nan",
            "pool.target_utilization",
        ),
        (
            "pool",
            "target_utilization = inf",
            "pool.target_utilization",
        ),
        ("pool", "plan_ahead = \"2y\"", "pool.plan_ahead"),
        ("shutdown", "grace = \"400d\"", "shutdown.grace"),
        ("lb", "enabled = true\nconfig_id = 7", "lb.config_id"),
        (
            "profiles.limits",
            "flush_interval = \"0s\"",
            "flush_interval",
        ),
    ];
    for (i, (section, line, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad-{i}.toml"));
        std::fs::write(&path, format!("[{section}]\n{line}\n")).unwrap();
        let p = path.display().to_string();
        refused(&["up", "--config", &p, "--print-config"], key);
    }
    // A stream name that cannot be one, and a file that is not there: the user's input too.
    refused(&["subscribe", "bad name!"], "name");
    refused(
        &[
            "up",
            "--config",
            "/nonexistent/shoal.toml",
            "--print-config",
        ],
        "/nonexistent/shoal.toml",
    );
}
