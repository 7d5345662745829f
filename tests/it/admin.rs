//! The hub's admin HTTP API driving a real mirror: start a mirror of a shard's stream to
//! receivers, read per-endpoint health and Prometheus metrics, add and remove endpoints live,
//! refuse bad requests with clear JSON errors, stop it.

use std::net::SocketAddr;
use std::time::Duration;

use shoal::admin::client::{request, HttpResponse};
use shoal::admin::{Admin, AdminState};
use shoal::mirror::{Receiver, ReceiverEvent, ReceiverOptions};

use crate::common::{self, TestCluster};

/// One admin API request (5 s timeout); panics when the API does not answer.
pub(crate) async fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> HttpResponse {
    request(
        admin,
        method,
        path,
        body.map(str::as_bytes),
        Duration::from_secs(5),
    )
    .await
    .expect("the admin API answers")
}

/// A mirror receiver on loopback with the committed test certificates.
pub(crate) fn receiver() -> Receiver {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let opts = ReceiverOptions::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        shoal::security::tls::read_certs(&dir.join("cluster.pem")).unwrap(),
        shoal::security::tls::read_key(&dir.join("cluster.key")).unwrap(),
        common::ca(),
    );
    Receiver::bind(opts).unwrap()
}

/// Chunks a receiver delivers until `stop` fires (bounded: 60 s), then what is still queued.
async fn collect(mut r: Receiver, mut stop: tokio::sync::oneshot::Receiver<()>) -> Vec<u64> {
    let mut seqs = Vec::new();
    let until = shoal::clock::now() + Duration::from_secs(60);
    let mut stopping = false;
    while shoal::clock::now() < until {
        let wait = if stopping { 200 } else { 60_000 };
        let ev = tokio::select! {
            _ = &mut stop, if !stopping => { stopping = true; continue; }
            ev = tokio::time::timeout(Duration::from_millis(wait), r.next()) => ev,
        };
        match ev {
            Ok(Some(ReceiverEvent::Chunk { chunk, .. })) => seqs.push(chunk.seq.get()),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_runs_a_mirror_end_to_end() {
    let tc = TestCluster::start();
    let m = common::material();
    let state = AdminState::for_cluster(&tc.cluster, m.chain, m.key);
    let (admin, addr) = Admin::start(SocketAddr::from(([127, 0, 0, 1], 0)), state).unwrap();
    let (r1, r2, r3) = (receiver(), receiver(), receiver());
    let (a1, a2, a3) = (r1.addr(), r2.addr(), r3.addr());
    let (s1, t1) = tokio::sync::oneshot::channel();
    let (s2, t2) = tokio::sync::oneshot::channel();
    let (s3, t3) = tokio::sync::oneshot::channel();
    let (c1, c2, c3) = (
        tokio::spawn(collect(r1, t1)),
        tokio::spawn(collect(r2, t2)),
        tokio::spawn(collect(r3, t3)),
    );

    assert_eq!(call(addr, "GET", "/health", None).await.status, 200);
    // Bad requests: clear errors, nothing started.
    for (body, status, code) in [
        ("{not json", 400, "invalid_json"),
        // Well-formed, but a duration without a unit: the value is named, not the JSON.
        (
            &format!(
                r#"{{"stream":"synth/m","endpoints":["{a1}"],"config":{{"revert_after":"5"}}}}"#
            ),
            400,
            "invalid_value",
        ),
        (
            r#"{"stream":"synth/m","endpoints":[]}"#,
            400,
            "no_endpoints",
        ),
        (
            &format!(r#"{{"stream":"synth/m","endpoints":["{a1}","{a1}"]}}"#),
            400,
            "duplicate_endpoint",
        ),
        (
            r#"{"stream":"bad name!","endpoints":["127.0.0.1:9"]}"#,
            400,
            "invalid_stream",
        ),
        (
            r#"{"stream":"synth/m","endpoints":["nowhere"]}"#,
            400,
            "invalid_address",
        ),
    ] {
        let r = call(addr, "POST", "/mirrors", Some(body)).await;
        let j = r.json().expect("JSON error body");
        assert_eq!(
            (r.status, j["code"].as_str()),
            (status, Some(code)),
            "{body}: {j}"
        );
        assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = call(addr, "GET", "/mirrors/synth/nothing", None).await;
    assert_eq!(r.status, 404);

    // Start, then watch it deliver.
    let body = format!(
        r#"{{"stream":"synth/m","endpoints":["{a1}","{a2}"],"config":{{"revert_after":"never"}}}}"#
    );
    let r = call(addr, "POST", "/mirrors", Some(&body)).await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = call(addr, "POST", "/mirrors", Some(&body)).await;
    assert_eq!(r.status, 409, "a second mirror of the same stream");
    let mut status = serde_json::Value::Null;
    let states = |s: &serde_json::Value| {
        let mut v: Vec<String> = (0..2)
            .map(|i| {
                s["endpoints"][i]["state"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    };
    for _ in 0..100 {
        status = call(addr, "GET", "/mirrors/synth/m", None)
            .await
            .json()
            .unwrap();
        if status["committed_seq"].is_u64() && states(&status) == ["active", "standby"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first receiver to connect is active (no revert configured), the other a standby.
    assert_eq!(states(&status), ["active", "standby"], "{status}");
    let active_addr = (0..2)
        .map(|i| &status["endpoints"][i])
        .find(|e| e["state"] == "active")
        .and_then(|e| e["addr"].as_str())
        .unwrap()
        .to_string();
    assert!(
        status["endpoints"][0]["health"]["srtt_ms"]
            .as_f64()
            .unwrap()
            > 0.0
    );

    // Live changes.
    let r = call(
        addr,
        "POST",
        "/mirrors/synth/m/endpoints",
        Some(&format!(r#"{{"addr":"{a3}"}}"#)),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.error_message());
    let r = call(
        addr,
        "POST",
        "/mirrors/synth/m/endpoints",
        Some(&format!(r#"{{"addr":"{a3}"}}"#)),
    )
    .await;
    assert_eq!(r.status, 409);
    let r = call(
        addr,
        "DELETE",
        &format!("/mirrors/synth/m/endpoints/{active_addr}"),
        None,
    )
    .await;
    assert_eq!(
        r.status,
        200,
        "removing the active hands over: {}",
        r.error_message()
    );
    let r = call(
        addr,
        "DELETE",
        "/mirrors/synth/m/endpoints/127.0.0.1:1",
        None,
    )
    .await;
    assert_eq!(r.status, 404);

    let metrics = call(addr, "GET", "/metrics", None).await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.body).unwrap();
    for name in [
        "shoal_mirror_switches_total{stream=\"synth/m\"}",
        "shoal_mirror_endpoint_srtt_seconds{",
        "shoal_mirror_replayed_chunks_total",
        "shoal_hub_grants_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}:\n{text}");
    }
    let list = call(addr, "GET", "/mirrors", None).await.json().unwrap();
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    // The list and the detail name the active endpoint alike: its id and its address.
    let detail = call(addr, "GET", "/mirrors/synth/m", None)
        .await
        .json()
        .unwrap();
    let active = &list[0]["active"];
    assert_eq!(active, &detail["active"], "{list} / {detail}");
    assert!(active[0]["addr"].is_string(), "{list}");
    let id = &active[0]["id"];
    assert!(
        detail["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| &e["id"] == id && e["state"] == "active"),
        "{detail}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = call(addr, "DELETE", "/mirrors/synth/m", None).await;
    assert_eq!(r.status, 200, "{}", r.error_message());
    assert_eq!(
        call(addr, "GET", "/mirrors/synth/m", None).await.status,
        404
    );
    admin.stop(Duration::from_secs(1)).await;
    for s in [s1, s2, s3] {
        let _ = s.send(());
    }

    // The three receivers together got a gap-free run, each chunk once.
    let mut all: Vec<u64> = Vec::new();
    for c in [c1, c2, c3] {
        let seqs = c.await.unwrap();
        let mut sorted = seqs.clone();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            seqs.len(),
            "a receiver delivered a chunk twice"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    all.dedup();
    assert!(all.len() > 20, "{} chunks", all.len());
    let span = all.last().unwrap() - all.first().unwrap() + 1;
    assert_eq!(
        span,
        all.len() as u64,
        "no chunk missing between first and last"
    );
    tc.shutdown().await;
}
