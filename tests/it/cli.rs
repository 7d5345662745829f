//! The `shoal` binary as a newcomer runs it.

use std::process::Command;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

#[test]
fn demo_json_reports_a_clean_run_with_a_shard_kill() {
    let out = shoal()
        .args(["demo", "--clients", "8", "--seconds", "2", "--json"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().unwrap();
    let v: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(v["clients"], 8);
    assert_eq!(v["grants"], 8);
    assert!(v["killed_shard"].is_u64());
    assert_eq!(v["chunks_missing"], 0);
    assert_eq!(v["chunks_duplicated"], 0);
    assert_eq!(v["integrity_failures"], 0);
    assert_eq!(v["client_errors"], 0);
    assert!(v["chunks_received"].as_u64().unwrap() > 8 * 50);
    let (acc, att) = (
        v["zero_rtt_accepted"].as_u64().unwrap(),
        v["zero_rtt_attempted"].as_u64().unwrap(),
    );
    assert!(att >= 8 && acc == att, "0-RTT {acc}/{att}");
    assert!(v["resumes"].as_u64().unwrap() >= 1);
}

#[test]
fn bad_arguments_get_a_clear_message_and_a_failure_exit() {
    let out = shoal().args(["demo", "--clients", "0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--clients"));
    let out = shoal()
        .args(["subscribe", "--ca", "/nonexistent/ca.pem", "synth/x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading the CA"));
    let out = shoal().args(["subscribe", "bad name!"]).output().unwrap();
    assert!(!out.status.success());
}

#[test]
fn certs_and_config_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let out = shoal()
        .args(["certs", "--out"])
        .arg(dir.path())
        .args(["--cluster", "test.cluster"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(shoal::tls::read_certs(&dir.path().join("ca.pem")).is_ok());
    let out = shoal()
        .args(["up", "--print-config", "--shards", "6", "--groups", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg =
        shoal::config::Config::parse(&String::from_utf8(out.stdout).unwrap(), "stdout").unwrap();
    assert_eq!((cfg.shards.count, cfg.shards.groups), (6, 3));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[hub]\nnope = 1\n").unwrap();
    let out = shoal().args(["up", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
