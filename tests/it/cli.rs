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
    assert!(shoal::security::tls::read_certs(&dir.path().join("ca.pem")).is_ok());
    let out = shoal()
        .args(["up", "--print-config", "--shards", "6", "--groups", "3"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cfg =
        shoal::cluster::config::Config::parse(&String::from_utf8(out.stdout).unwrap(), "stdout")
            .unwrap();
    assert_eq!((cfg.shards.count, cfg.shards.groups), (6, 3));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[hub]\nnope = 1\n").unwrap();
    let out = shoal().args(["up", "--config"]).arg(&bad).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    // A value out of range: the file, the key and the rule.
    let range = dir.path().join("range.toml");
    std::fs::write(&range, "[pool]\nstep = \"10ms\"\n").unwrap();
    let out = shoal()
        .args(["up", "--config"])
        .arg(&range)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "config {}: pool.step: must be at least 100ms",
        range.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    // Overrides that break a rule say so.
    let out = shoal()
        .args(["up", "--print-config", "--shards", "1", "--groups", "2"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("command-line overrides")
            && stderr.contains("shards.groups: must not exceed shards.count"),
        "{stderr}"
    );
}

/// A child process killed when the test ends, passed or failed (a failed test must not leave
/// a server holding the default ports).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn up_creates_dev_material_serves_subscribe_and_drains_on_sigint() {
    use std::io::{BufRead, BufReader};
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    // A free UDP port on loopback for the hub.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hub = format!("127.0.0.1:{port}");
    let mut up = KillOnDrop(
        shoal()
            .args(["up", "--listen", &hub, "--data-dir"])
            .arg(dir.path())
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Wait (bounded) for the ready line; it comes after the dev material note.
    let stderr = up.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = shoal::clock::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("ready")) {
        let left = deadline.saturating_duration_since(shoal::clock::now());
        match rx.recv_timeout(left) {
            Ok(l) => seen.push(l),
            Err(_) => {
                panic!("shoal up never became ready: {seen:#?}");
            }
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("created a dev cluster secret")),
        "{seen:#?}"
    );
    let ca = dir.path().join("ca.pem");
    let out = shoal()
        .args(["subscribe", "--hub", &hub, "--ca"])
        .arg(&ca)
        .args(["--count", "20", "--seconds", "15", "synth/cli"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("seq=")).count(),
        20,
        "{stdout}"
    );
    assert!(
        stderr.contains("0 missing, 0 duplicated, 0 integrity failures"),
        "{stderr}"
    );
    // Ctrl-C: graceful drain, exit 0, bounded in time.
    let pid = up.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = shoal::clock::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = up.0.try_wait().unwrap() {
            break s;
        }
        if shoal::clock::now() > deadline {
            panic!("shoal up did not stop within 15 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("shutdown complete")),
        "{rest:#?}"
    );
}

#[test]
fn certs_issues_a_shard_certificate_from_the_cluster_ca_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let made = shoal().args(["certs", "--out", out]).output().unwrap();
    assert!(made.status.success());
    let issue = || {
        shoal()
            .args(["certs", "--out", out, "--issue", "shard-a", "--ca-dir", out])
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };
    let first = issue();
    assert!(first.status.success(), "{first:?}");
    let chain = std::fs::read_to_string(dir.path().join("shard-a.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf then CA"
    );
    assert!(dir.path().join("shard-a.key").exists());
    let again = issue();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));
    let no_ca = shoal()
        .args([
            "certs",
            "--out",
            out,
            "--issue",
            "x",
            "--ca-dir",
            "/nonexistent",
        ])
        .output()
        .unwrap();
    assert!(!no_ca.status.success());
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("ca.pem"));
}
