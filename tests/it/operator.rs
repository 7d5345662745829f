//! What an operator meets running the `shoal` binary: logs in files and pipes, errors said
//! once and naming their key, certificates checked at start, signals (SIGHUP reloads, a
//! second SIGINT forces the exit, probes answer during the drain), subscribers told the
//! cluster went away, and the inputs of `certs`, `loadgen --plot` and `mirror start`.
//! Every process is killed and reaped when its test ends, passed or failed.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

fn shoal() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_shoal"));
    c.env_remove("RUST_BACKTRACE").env_remove("NO_COLOR");
    c
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

/// A child whose stderr lines are collected; killed and reaped on drop.
struct Proc {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Proc {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `within`) for a line with `needle`; returns it.
    fn wait_line(&mut self, needle: &str, within: Duration) -> String {
        let deadline = shoal::clock::now() + within;
        if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(shoal::clock::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {within:?}: {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits (at most `within`) for the exit; the status code.
    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = shoal::clock::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // What it wrote before it ended.
                std::thread::sleep(Duration::from_millis(50));
                self.seen.extend(self.lines.try_iter());
                return s.code();
            }
            assert!(
                shoal::clock::now() < deadline,
                "still running after {within:?}: {:#?}",
                self.seen
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `shoal up` on free loopback ports with its data in `dir`, the config file `config` if any,
/// and an admin API on an ephemeral port. Returns it once ready, with the hub and admin
/// addresses.
fn up(dir: &Path, config: Option<&Path>, rust_log: Option<&str>) -> (Proc, String, String) {
    let hub = format!("127.0.0.1:{}", free_udp_port());
    let mut cmd = shoal();
    cmd.args([
        "up",
        "--listen",
        &hub,
        "--admin",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir);
    match rust_log {
        Some(f) => cmd.env("RUST_LOG", f),
        None => cmd.env_remove("RUST_LOG"),
    };
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut p = Proc::spawn(cmd);
    let ready = p.wait_line("ready: try", Duration::from_secs(30));
    let admin = ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("admin="))
        .expect("the ready line names the admin address")
        .to_string();
    (p, hub, admin)
}

/// A plain HTTP/1.1 GET; the status and the body.
fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Some((status, body))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the shoal binary runs")
}

#[test]
fn logs_in_a_pipe_have_no_colour_no_debug_fields_and_a_bad_filter_is_refused() {
    let out = run(shoal()
        .args(["up", "--print-config"])
        .env("RUST_LOG", "shoal=loud"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("RUST_LOG") && stderr.contains("not a valid log filter"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let (mut p, _, _) = up(dir.path(), None, Some("info"));
    signal(&p.child, "-INT");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let all = p.seen.join("\n");
    assert!(all.contains("shutdown complete"), "{all}");
    assert!(!all.contains('\u{1b}'), "colour codes in a pipe: {all}");
    // Options and enums are written as values, not as Rust's Debug.
    assert!(!all.contains("Some("), "{all}");
}

#[test]
fn with_log_json_every_line_is_json_and_a_failed_start_leaves_no_dev_material() {
    let dir = tempfile::tempdir().unwrap();
    // The hub's port is taken: the start-up fails after the dev material was made.
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = run(shoal()
        .args(["--log-json", "up", "--listen", &addr, "--admin", "off"])
        .arg("--data-dir")
        .arg(dir.path())
        // The fatal error is the command's report: no filter hides it.
        .env("RUST_LOG", "off"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let mut fatal = None;
    for line in stderr.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["level"] == "ERROR" && v["fields"]["exit_code"] == 1 {
            fatal = Some(v);
        }
    }
    let fatal = fatal.unwrap_or_else(|| panic!("no fatal error line: {stderr}"));
    let msg = fatal["fields"]["message"].as_str().unwrap();
    assert!(msg.contains("cannot bind hub"), "{msg}");
    // The cause (the OS's error) is said once.
    assert_eq!(msg.matches("os error").count(), 1, "{msg}");
    for f in ["cluster.secret", "ca.pem", "cluster.pem", "cluster.key"] {
        assert!(!dir.path().join(f).exists(), "{f} left behind");
    }
}

#[test]
fn a_missing_file_names_its_key_once_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shoal.toml");
    std::fs::write(&cfg, "[tls]\nca = \"/nonexistent/ca.pem\"\n").unwrap();
    let out = run(shoal()
        .args(["up", "--admin", "off", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "off"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("tls.ca"), "{stderr}");
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    assert!(!dir.path().join("data/cluster.secret").exists());
}

#[test]
fn a_certificate_that_does_not_cover_the_cluster_name_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("other");
    let out = run(shoal()
        .args(["certs", "--cluster", "other.local", "--out"])
        .arg(&certs));
    assert!(out.status.success());
    let cfg = dir.path().join("shoal.toml");
    let p = |f: &str| certs.join(f).display().to_string();
    std::fs::write(
        &cfg,
        format!(
            "cluster = \"shoal.local\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            p("cluster.pem"),
            p("cluster.key"),
            p("ca.pem")
        ),
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = run(shoal()
        .args(["up", "--admin", "off", "--config"])
        .arg(&cfg)
        .arg("--data-dir")
        .arg(&data)
        .env("RUST_LOG", "off"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not valid for the cluster name \"shoal.local\""),
        "{stderr}"
    );
    assert!(
        !data.join("cluster.secret").exists(),
        "dev secret left behind"
    );
}

#[test]
fn sighup_reloads_probes_answer_during_the_drain_and_a_second_sigint_forces_the_exit() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("shoal.toml");
    let base = "[shutdown]\ngrace = \"30s\"\n";
    std::fs::write(&cfg, format!("{base}[log]\nfilter = \"info\"\n")).unwrap();
    // Without RUST_LOG (which would win over log.filter).
    let (mut p, hub, admin) = up(&dir.path().join("data"), Some(&cfg), None);
    // The hint names the CA this client needs.
    let ready = p.wait_line("ready: try", Duration::from_secs(1));
    assert!(ready.contains("--ca "), "{ready}");

    // A reload: the filter changes, a key that needs a restart is named, the server stays.
    std::fs::write(
        &cfg,
        format!("{base}[log]\nfilter = \"debug\"\n[hub]\ntoken_ttl = \"20m\"\n"),
    )
    .unwrap();
    signal(&p.child, "-HUP");
    let reloaded = p.wait_line("reloaded", Duration::from_secs(10));
    assert!(reloaded.contains("log.filter"), "{reloaded}");
    let restart = p.wait_line("need a restart", Duration::from_secs(5));
    assert!(restart.contains("hub.token_ttl"), "{restart}");
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
    // A new certificate from the cluster CA is presented from the next handshake on; one the
    // CA did not issue is refused and the one in use stays.
    let data = dir.path().join("data");
    let issued = run(shoal()
        .args(["certs", "--issue", "renewed", "--ca-dir"])
        .arg(&data)
        .arg("--out")
        .arg(dir.path()));
    assert!(issued.status.success());
    let with_cert = |cert: &Path, key: &Path| {
        format!(
            "{base}[log]\nfilter = \"debug\"\n[hub]\ntoken_ttl = \"20m\"\n[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
            cert.display().to_string(),
            key.display().to_string(),
            data.join("ca.pem").display().to_string()
        )
    };
    let (cert, key) = (
        dir.path().join("renewed.pem"),
        dir.path().join("renewed.key"),
    );
    std::fs::write(&cfg, with_cert(&cert, &key)).unwrap();
    signal(&p.child, "-HUP");
    let line = p.wait_line("certificate from", Duration::from_secs(10));
    assert!(line.contains("renewed.pem"), "{line}");
    let foreign = dir.path().join("foreign");
    assert!(run(shoal().args(["certs", "--out"]).arg(&foreign))
        .status
        .success());
    std::fs::write(
        &cfg,
        with_cert(&foreign.join("cluster.pem"), &foreign.join("cluster.key")),
    )
    .unwrap();
    signal(&p.child, "-HUP");
    p.wait_line("certificate reload refused", Duration::from_secs(10));
    // A broken config changes nothing.
    std::fs::write(&cfg, "[hub]\nnope = 1\n").unwrap();
    signal(&p.child, "-HUP");
    p.wait_line("reload refused", Duration::from_secs(10));
    assert_eq!(get(&admin, "/ready").map(|r| r.0), Some(200));

    // A subscriber that stops answering keeps its shard in the drain for the grace period.
    let ca = dir.path().join("data/ca.pem");
    let sub = Proc::spawn({
        let mut c = shoal();
        c.args(["subscribe", "-q", "--hub", &hub, "--ca"])
            .arg(&ca)
            .arg("synth/operator")
            .env("RUST_LOG", "warn");
        c
    });
    std::thread::sleep(Duration::from_millis(1500));
    signal(&sub.child, "-STOP");
    signal(&p.child, "-INT");
    // During the drain: /ready says draining (503), /live and /metrics still answer.
    let deadline = shoal::clock::now() + Duration::from_secs(10);
    let ready = loop {
        if let Some((503, body)) = get(&admin, "/ready") {
            break body;
        }
        assert!(shoal::clock::now() < deadline, "/ready never said draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready.contains("\"draining\":true"), "{ready}");
    assert_eq!(get(&admin, "/live").map(|r| r.0), Some(200));
    let metrics = get(&admin, "/metrics").expect("/metrics answers during the drain");
    assert_eq!(metrics.0, 200);
    assert!(metrics.1.contains("shoal_build_info"));
    // The second Ctrl-C does not wait for the 30 s grace period.
    signal(&p.child, "-INT");
    assert_eq!(p.wait_exit(Duration::from_secs(5)), Some(130));
    assert!(
        p.seen.iter().any(|l| l.contains("second stop signal")),
        "{:#?}",
        p.seen
    );
    signal(&sub.child, "-CONT");
    drop(sub);
}

#[test]
fn subscribers_are_told_the_cluster_went_away_and_print_their_summary() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, hub, _) = up(dir.path(), None, Some("info"));
    let ca = dir.path().join("ca.pem");
    let subscribe = || {
        let mut c = shoal();
        c.args(["subscribe", "-q", "--hub", &hub, "--ca"])
            .arg(&ca)
            .arg("synth/operator")
            .env("RUST_LOG", "warn");
        Proc::spawn(c)
    };
    // SIGTERM: the summary, exit 0.
    let mut s = subscribe();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&s.child, "-TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        s.seen.iter().any(|l| l.contains(" chunks, 0 missing")),
        "{:#?}",
        s.seen
    );
    // With --log-json the summary is a JSON line with its figures as fields.
    let mut c = shoal();
    c.args(["--log-json", "subscribe", "-q", "--hub", &hub, "--ca"])
        .arg(&ca)
        .arg("synth/operator")
        .env("RUST_LOG", "warn");
    let mut s = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(1500));
    signal(&s.child, "-TERM");
    assert_eq!(s.wait_exit(Duration::from_secs(10)), Some(0));
    let summary = s
        .seen
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "subscription summary")
        .unwrap_or_else(|| panic!("no JSON summary: {:#?}", s.seen));
    assert!(summary["fields"]["chunks"].as_u64() > Some(0), "{summary}");
    assert_eq!(summary["fields"]["missing"], 0, "{summary}");
    // The cluster stops: the subscriber says so (not "gave up after N attempts") within a few
    // seconds, after its summary.
    let mut s = subscribe();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&p.child, "-INT");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    assert_eq!(s.wait_exit(Duration::from_secs(20)), Some(1));
    let text = s.seen.join("\n");
    assert!(text.contains(" chunks, 0 missing"), "{text}");
    assert!(text.contains("the cluster is shutting down"), "{text}");
}

#[test]
fn subscribers_of_a_live_stream_are_told_when_its_publisher_finished() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, hub, _) = up(dir.path(), None, Some("info"));
    let ca = dir.path().join("ca.pem");
    // Several subscribers: some on the publisher's shard, some on its standby copy.
    let subs: Vec<Proc> = (0..4)
        .map(|i| {
            let mut c = shoal();
            c.args(["subscribe", "-q", "--hub", &hub, "--ca"])
                .arg(&ca)
                .args(["--client-id", &format!("end-{i}"), "live/operator-end"])
                .env("RUST_LOG", "warn");
            Proc::spawn(c)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let out = run(shoal()
        .args(["publish", "--hub", &hub, "--ca"])
        .arg(&ca)
        .args(["--count", "20", "--rate", "50", "live/operator-end"])
        .env("RUST_LOG", "warn"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for mut s in subs {
        assert_eq!(
            s.wait_exit(Duration::from_secs(15)),
            Some(0),
            "{:#?}",
            s.seen
        );
        let text = s.seen.join("\n");
        assert!(
            text.contains("20 chunks, 0 missing, 0 duplicated"),
            "{text}"
        );
        assert!(text.contains("the publisher finished the stream"), "{text}");
    }
}

#[test]
fn certs_refuse_to_overwrite_a_ca_or_to_name_an_ip_and_are_valid_for_a_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(shoal().args(["certs", "--out"]).arg(dir.path()));
    assert!(out.status.success());
    let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
    let again = run(shoal().args(["certs", "--out"]).arg(dir.path()));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    let forced = run(shoal().args(["certs", "--force", "--out"]).arg(dir.path()));
    assert!(forced.status.success());
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    let ip = run(shoal()
        .args(["certs", "--cluster", "10.0.0.1", "--out"])
        .arg(dir.path().join("ip")));
    assert_eq!(ip.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&ip.stderr).contains("DNS name"));
    // Validity: from about now, for about a year (the CA ten).
    let pem = std::fs::read_to_string(dir.path().join("cluster.pem")).unwrap();
    let leaf = rcgen::CertificateParams::from_ca_cert_pem(&pem).unwrap();
    let now = time::OffsetDateTime::now_utc();
    assert!(leaf.not_before <= now && leaf.not_before > now - time::Duration::days(1));
    let days = (leaf.not_after - now).whole_days();
    assert!((390..=400).contains(&days), "{days} days");
    let ca = rcgen::CertificateParams::from_ca_cert_pem(
        &std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
    )
    .unwrap();
    let days = (ca.not_after - now).whole_days();
    assert!((3640..=3651).contains(&days), "{days} days");
}

#[test]
fn version_names_the_git_revision() {
    let out = run(shoal().arg("--version"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(
        text.trim(),
        format!(
            "shoal {} (git {})",
            env!("CARGO_PKG_VERSION"),
            shoal::GIT_REVISION
        )
    );
    assert!(!shoal::GIT_REVISION.is_empty());
}

#[test]
fn loadgen_checks_its_plot_and_mirror_start_takes_the_configs_durations() {
    for (plot, says) in [
        ("/nonexistent/x.svg", "does not exist"),
        ("out.png", "name the file .svg"),
    ] {
        let out = run(shoal()
            .args(["loadgen", "--clients", "1", "--plot", plot])
            .env("RUST_LOG", "off"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{plot}: {stderr}");
        assert!(stderr.contains(says), "{plot}: {stderr}");
    }
    // `1m` is a duration the mirror settings take: the command goes on to the (absent) admin
    // API and fails there (exit 1), not on its input (exit 2).
    let start = |revert: &str| {
        run(shoal()
            .args([
                "mirror",
                "start",
                "--admin",
                "127.0.0.1:9",
                "--stream",
                "synth/x",
            ])
            .args(["--endpoint", "127.0.0.1:7001", "--revert-after", revert])
            .env("RUST_LOG", "off"))
    };
    for ok in ["1m", "1m30s", "500ms", "never"] {
        let out = start(ok);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{ok}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = start("5");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a unit"));
}
