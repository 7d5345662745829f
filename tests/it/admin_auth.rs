//! What an operator expects of the admin API: liveness and readiness probes that follow the
//! shards and the drain, a bearer token on everything that changes state (reads stay open),
//! a metrics listener that serves nothing else, and a config that refuses an open API on a
//! public address. Real HTTP over loopback.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use shoal::admin::auth::BearerToken;
use shoal::admin::client::{request_with_token, HttpResponse};
use shoal::admin::{Admin, AdminAuth, AdminState};
use shoal::cluster::config::{Config, ConfigError};
use shoal::ids::GroupId;

use super::admin::call;
use crate::common::{self, TestCluster};

const TOKEN: &str = "it-admin-token-0123456789abcdef";
const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 0);

fn token_file(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("admin.token");
    std::fs::write(&path, format!("{token}\n")).unwrap();
    path
}

/// One request with `token` (when given) as a bearer token.
async fn call_with(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> HttpResponse {
    let token = token.map(|t| BearerToken::parse(t).unwrap());
    request_with_token(
        admin,
        method,
        path,
        body.map(str::as_bytes),
        token.as_ref(),
        Duration::from_secs(5),
    )
    .await
    .expect("the admin API answers")
}

/// The whole response (status line and headers included) to a request written as it is.
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tcp.read_to_string(&mut out).await.unwrap();
    out
}

/// `GET /ready`, polled until its status is `status` (bounded: 5 s).
async fn ready_until(addr: SocketAddr, status: u16) -> Value {
    let mut last = None;
    for _ in 0..100 {
        let r = call(addr, "GET", "/ready", None).await;
        if r.status == status {
            return r.json().expect("JSON readiness");
        }
        last = Some((r.status, r.error_message()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("/ready never answered {status}: last {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_follow_the_shards_and_the_drain() {
    let tc = TestCluster::start();
    let m = common::material();
    let state = AdminState::for_cluster(&tc.cluster, m.chain, m.key)
        .with_metrics_listen(Some(SocketAddr::from(LOOPBACK)));
    let (admin, addr) = Admin::start(SocketAddr::from(LOOPBACK), state).unwrap();
    let metrics = admin.metrics_addr().expect("a metrics listener");
    assert_ne!(metrics, addr);

    let live = call(addr, "GET", "/live", None).await;
    assert_eq!(
        (live.status, live.json()),
        (200, Some(json!({"status": "ok"})))
    );
    let r = ready_until(addr, 200).await;
    assert_eq!((&r["ready"], &r["draining"]), (&json!(true), &json!(false)));
    assert_eq!(r["reasons"], json!([]), "{r}");
    assert_eq!(r["groups"].as_array().map(Vec::len), Some(2), "{r}");
    assert!(admin.readiness().ready);
    let h = call(addr, "GET", "/health", None).await.json().unwrap();
    assert_eq!(h, json!({"status": "ok", "draining": false}));
    // The live streams list moved under /streams.
    let streams = call(addr, "GET", "/streams/live", None).await;
    assert_eq!(streams.status, 200);
    assert!(streams.json().is_some_and(|v| v.is_array()));

    // Group 1 loses every shard: not ready, and says why.
    for s in tc.shards_of(GroupId(1)) {
        tc.kill(&s).await;
    }
    let r = ready_until(addr, 503).await;
    assert_eq!(r["ready"], json!(false));
    assert_eq!(r["reasons"], json!(["no alive shard in group 1"]), "{r}");

    // Draining: not ready on either listener, health says so.
    admin.set_draining();
    assert!(admin.is_draining());
    for a in [addr, metrics] {
        let r = call(a, "GET", "/ready", None).await;
        assert_eq!(r.status, 503);
        let j = r.json().unwrap();
        assert_eq!(j["draining"], json!(true));
        let reasons = j["reasons"].as_array().unwrap();
        assert!(reasons.contains(&json!("draining")), "{j}");
        let h = call(a, "GET", "/health", None).await.json().unwrap();
        assert_eq!(h, json!({"status": "draining", "draining": true}));
        assert_eq!(call(a, "GET", "/live", None).await.status, 200);
    }

    // The metrics listener serves the metrics and the probes, nothing else.
    let text = call(metrics, "GET", "/metrics", None).await;
    assert_eq!(text.status, 200);
    assert!(String::from_utf8_lossy(&text.body).contains("shoal_hub_grants_total"));
    for (method, path) in [
        ("GET", "/mirrors"),
        ("POST", "/mirrors"),
        ("GET", "/streams/live"),
        ("POST", "/lb/rotate"),
    ] {
        let r = call(metrics, method, path, Some("{}")).await;
        assert_eq!(
            (r.status, r.code().as_deref()),
            (404, Some("not_found")),
            "{method} {path}"
        );
    }
    admin.stop(Duration::from_secs(1)).await;
    assert!(
        tokio::net::TcpStream::connect(metrics).await.is_err(),
        "the metrics listener stops with the API"
    );
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_the_bearer_token_and_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let path = token_file(dir.path(), TOKEN);
    let tc = TestCluster::start();
    let m = common::material();
    let state = AdminState::for_cluster(&tc.cluster, m.chain, m.key)
        .with_auth(Some(AdminAuth::load(&path).unwrap()));
    let (admin, addr) = Admin::start(SocketAddr::from(LOOPBACK), state).unwrap();

    // Reads are open.
    for path in [
        "/mirrors",
        "/lb",
        "/health",
        "/live",
        "/metrics",
        "/streams/live",
    ] {
        assert_eq!(call(addr, "GET", path, None).await.status, 200, "{path}");
    }
    // No token, a wrong one, another scheme: 401 `unauthorized`, before any routing.
    let refused = [
        ("POST", "/lb/rotate", None),
        (
            "POST",
            "/lb/rotate",
            Some("it-admin-token-0123456789abcdeF"),
        ),
        ("DELETE", "/mirrors/synth/x", None),
        ("POST", "/mirrors", Some("wrong-token-wrong-token")),
        ("POST", "/no/such/route", None),
        ("PUT", "/mirrors", None),
    ];
    for (method, path, token) in refused {
        let r = call_with(addr, method, path, Some("{}"), token).await;
        let j = r.json().expect("JSON error body");
        assert_eq!(
            (r.status, j["code"].as_str()),
            (401, Some("unauthorized")),
            "{method} {path}: {j}"
        );
        assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let basic = format!("Basic {TOKEN}");
    let answers = [
        (None, "Bearer\r\n"),
        (Some(basic.as_str()), "Bearer error=\"invalid_request\"\r\n"),
        (
            Some("Bearer nope-nope-nope-nope"),
            "Bearer error=\"invalid_token\"\r\n",
        ),
    ];
    for (authorization, challenge) in answers {
        let header = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let text = raw(
            addr,
            &format!(
                "POST /lb/rotate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{header}Content-Length: 0\r\n\r\n"
            ),
        )
        .await;
        assert!(text.starts_with("HTTP/1.1 401"), "{text}");
        assert!(
            text.to_ascii_lowercase().contains(&format!(
                "www-authenticate: {}",
                challenge.to_ascii_lowercase()
            )),
            "{text}"
        );
    }
    assert_eq!(admin.unauthorized_total(), refused.len() as u64 + 3);

    // The right token: the routes answer as they would without authentication.
    let ok = Some(TOKEN);
    let r = call_with(addr, "POST", "/lb/rotate", None, ok).await;
    assert_eq!((r.status, r.code().as_deref()), (409, Some("lb_disabled")));
    let r = call_with(addr, "POST", "/mirrors", Some("{not json"), ok).await;
    assert_eq!((r.status, r.code().as_deref()), (400, Some("invalid_json")));
    let r = call_with(addr, "DELETE", "/mirrors/synth/x", None, ok).await;
    assert_eq!(
        (r.status, r.code().as_deref()),
        (404, Some("unknown_stream"))
    );
    let receiver = super::admin::receiver();
    let body = format!(
        r#"{{"stream":"synth/auth","endpoints":["{}"]}}"#,
        receiver.addr()
    );
    let r = call_with(addr, "POST", "/mirrors", Some(&body), ok).await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = call_with(addr, "DELETE", "/mirrors/synth/auth", None, ok).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(admin.unauthorized_total(), refused.len() as u64 + 3);

    // A new token in the file: in force once reloaded; the old one is refused from then on.
    assert!(!admin.reload_token().unwrap(), "nothing changed yet");
    let rotated = "it-admin-token-rotated-000000000";
    token_file(dir.path(), rotated);
    assert!(admin.reload_token().unwrap());
    let r = call_with(addr, "POST", "/lb/rotate", None, ok).await;
    assert_eq!(r.status, 401);
    let r = call_with(addr, "POST", "/lb/rotate", None, Some(rotated)).await;
    assert_eq!(r.status, 409);
    // A broken file is refused and the token in force stays.
    token_file(dir.path(), "short");
    assert!(admin.reload_token().is_err());
    let r = call_with(addr, "POST", "/lb/rotate", None, Some(rotated)).await;
    assert_eq!(r.status, 409);
    token_file(dir.path(), TOKEN);
    assert!(admin.reload_token().unwrap());

    // The commands: no token → what to pass; the token from the environment → the route's
    // own answer.
    let admin_addr = addr.to_string();
    let shoal = |args: &[&str], token: Option<&Path>| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"));
        c.args(args)
            .env("RUST_LOG", "off")
            .env_remove("SHOAL_ADMIN_TOKEN_FILE");
        if let Some(t) = token {
            c.env("SHOAL_ADMIN_TOKEN_FILE", t);
        }
        c.output()
    };
    let rotate = ["lb", "rotate", "--admin", &admin_addr];
    let stop = [
        "mirror",
        "stop",
        "--admin",
        &admin_addr,
        "--stream",
        "synth/x",
    ];
    for args in [&rotate[..], &stop[..]] {
        let out = shoal(args, None).await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains("the admin API needs a token: pass --admin-token-file"),
            "{args:?}: {err}"
        );
    }
    let out = shoal(&rotate, Some(&path)).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lb_disabled"), "{err}");
    let out = shoal(&stop, Some(&path)).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown_stream"), "{err}");
    let mut with_flag = stop.to_vec();
    let other = tempfile::tempdir().unwrap();
    let short_path = token_file(other.path(), "short").display().to_string();
    with_flag.extend(["--admin-token-file", &short_path]);
    let out = shoal(&with_flag, None).await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--admin-token-file"), "{err}");
    // Status only reads: it needs no token.
    let status = ["mirror", "status", "--admin", &admin_addr];
    let out = shoal(&status, None).await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    admin.stop(Duration::from_secs(1)).await;
    tc.shutdown().await;
}

#[test]
fn an_open_admin_api_only_binds_loopback() {
    let parse = |admin: &str| Config::parse(&format!("[admin]\n{admin}"), "shoal.toml");
    for listen in [
        "0.0.0.0:4480",
        "10.0.0.1:4480",
        "[::]:4480",
        "[::ffff:10.0.0.1]:4480",
    ] {
        let e = parse(&format!("listen = \"{listen}\"\n")).unwrap_err();
        assert!(
            matches!(
                &e,
                ConfigError::Invalid {
                    key: "admin.listen",
                    ..
                }
            ),
            "{listen}: {e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.starts_with("config shoal.toml: admin.listen: ")
                && msg.contains("set admin.token_file or bind to loopback"),
            "{msg}"
        );
        let c = parse(&format!(
            "listen = \"{listen}\"\ntoken_file = \"/etc/shoal/admin.token\"\n"
        ))
        .unwrap();
        assert_eq!(c.admin.token_file, Some("/etc/shoal/admin.token".into()));
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::parse(&text, "t").unwrap(), c);
    }
    for listen in [
        "127.0.0.1:4480",
        "127.0.0.9:1",
        "[::1]:4480",
        "[::ffff:127.0.0.1]:4480",
        "off",
    ] {
        parse(&format!("listen = \"{listen}\"\n")).unwrap();
    }
    assert_eq!(Config::default().admin.token_file, None);
}

#[test]
fn the_metrics_listener_needs_the_api_and_an_address_of_its_own() {
    let c = Config::parse("[admin]\nmetrics_listen = \"0.0.0.0:9480\"\n", "t").unwrap();
    assert_eq!(
        c.admin.metrics_listen,
        Some("0.0.0.0:9480".parse().unwrap())
    );
    assert_eq!(Config::default().admin.metrics_listen, None);
    for text in [
        "[admin]\nlisten = \"off\"\nmetrics_listen = \"0.0.0.0:9480\"\n",
        "[admin]\nmetrics_listen = \"127.0.0.1:4480\"\n",
    ] {
        assert!(
            matches!(
                Config::parse(text, "t"),
                Err(ConfigError::Invalid {
                    key: "admin.metrics_listen",
                    ..
                })
            ),
            "{text}"
        );
    }
}
