//! Behind a QUIC-LB balancer (here without one: the CIDs themselves): grants carry routing CIDs
//! that decode to the granted shard's server id, and clients attach with them, 0-RTT included.

use std::time::Duration;

use shoal::client::Delivery;
use shoal::ids::StreamName;
use shoal::lb::server_id_bytes;
use shoal::security::keys::{ClusterSecret, KeySchedule};
use shoal::wire::Role;

use super::common::{TestCluster, SECRET};

/// Ten chunks in a row: past the ones that came with the grant, these came from the shard.
async fn ten_chunks(sub: &mut shoal::client::Subscription) {
    for _ in 0..10 {
        let next = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("a chunk within 5 s");
        assert!(matches!(next, Some(Ok(Delivery::Chunk(_)))), "{next:?}");
    }
}

#[tokio::test]
async fn grants_carry_routing_cids_of_their_shards_and_attaches_use_them() {
    for profile in ["encrypted", "plaintext", "nlb"] {
        let mut cfg = super::common::config();
        cfg.lb.enabled = true;
        cfg.lb.profile = serde_json::from_value(serde_json::json!(profile)).unwrap();
        let tc = TestCluster::with(cfg.clone());
        let lb = cfg
            .lb
            .config(Some(&KeySchedule::new(&ClusterSecret::from_bytes(SECRET))))
            .unwrap();
        let client = tc.client(&format!("lb-{profile}"));
        let stream = StreamName::new(format!("synth/lb-{profile}")).unwrap();
        let reply = client.request(&stream, Role::Subscribe).await.unwrap();
        for s in &reply.grant.shards {
            assert_eq!(s.route_cids.len(), 4, "{profile}: {s:?}");
            for cid in &s.route_cids {
                assert_eq!(cid.len(), lb.cid_len(), "{profile}");
                let sid = lb.decode_server_id(cid).unwrap();
                assert_eq!(
                    sid,
                    server_id_bytes(s.id.0, lb.server_id_len()),
                    "{profile}"
                );
            }
        }
        if profile == "nlb" {
            assert_eq!(lb.cid_len(), 16, "AWS NLB takes 16-octet CIDs only");
            assert!(!lb.is_encrypted());
        }
        // Attaching with the routing CIDs works, 0-RTT included (the second client of the
        // same id resumes with the tickets the first got).
        let mut sub = client.subscribe(&stream).await.unwrap();
        ten_chunks(&mut sub).await;
        let s = sub.stats();
        assert_eq!(
            s.zero_rtt_accepted, s.zero_rtt_attempted,
            "{profile}: {s:?}"
        );
        assert!(s.zero_rtt_attempted >= 1, "{profile}: {s:?}");
        drop(sub);
        tc.shutdown().await;
    }
}

#[tokio::test]
async fn a_shard_process_gets_its_quic_lb_configuration_over_the_link() {
    use super::remote::{any_port, config_with_control, shard_config, start_remote};
    let mut cfg = config_with_control(any_port(), 0);
    cfg.lb.enabled = true;
    let tc = TestCluster::with(cfg.clone());
    let control = tc.cluster.control().expect("a control listener").addr();
    let mut scfg = shard_config();
    scfg.lb.enabled = true;
    let remote = start_remote(control, 100, scfg, Default::default())
        .await
        .expect("the shard process starts");
    let lb = cfg
        .lb
        .config(Some(&KeySchedule::new(&ClusterSecret::from_bytes(SECRET))))
        .unwrap();
    // Unroutable (config id 7) until the hub's `lb` command, then its own server id.
    let mut routed = None;
    for _ in 0..500 {
        let cid = remote.shard().sample_cid().expect("QUIC-LB is on");
        assert_eq!(cid.len(), lb.cid_len());
        if let Ok(sid) = lb.decode_server_id(&cid) {
            routed = Some(sid);
            break;
        }
        assert_eq!(cid[0] >> 5, 7, "unroutable before it is configured");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(routed, Some(server_id_bytes(100, lb.server_id_len())));
    // A client gets a grant naming it, with routing CIDs, and attaches.
    let client = tc.client("lb-remote");
    let stream = StreamName::new("synth/lb-remote").unwrap();
    let mut sub = client.subscribe(&stream).await.unwrap();
    ten_chunks(&mut sub).await;
    assert!(sub.stats().zero_rtt_accepted >= 1, "{:?}", sub.stats());
    drop(sub);
    client.close().await;
    tc.cluster.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(10), remote.wait()).await;
}

#[tokio::test]
async fn foreign_cids_and_truncated_headers_at_a_shard_are_dropped_and_counted_and_stale_own_cids_reset(
) {
    let mut cfg = super::common::config();
    cfg.lb.enabled = true;
    let tc = TestCluster::with(cfg.clone());
    let lb = cfg
        .lb
        .config(Some(&KeySchedule::new(&ClusterSecret::from_bytes(SECRET))))
        .unwrap();
    let shard = tc.cluster.shards()[0].clone();
    // A tokio socket: the shard runs on this test's (one-thread) runtime.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let answer = |within: Duration| {
        let udp = &udp;
        async move {
            let mut reply = vec![0u8; 1500];
            let (n, _) = tokio::time::timeout(within, udp.recv_from(&mut reply))
                .await
                .ok()?
                .ok()?;
            reply.truncate(n);
            Some(reply)
        }
    };
    // A short header with another server's CID (misrouted or forged): dropped, counted.
    let foreign = lb
        .encode(&server_id_bytes(999, lb.server_id_len()), &[7; 8])
        .unwrap();
    let mut short = vec![0x40];
    short.extend_from_slice(&foreign);
    short.extend_from_slice(&[0x5a; 40]);
    // A long header cut after its CID length, a CID of an unknown config id, and noise.
    let truncated = [0xc0, 0, 0, 0, 1, 20];
    // Config id 3 (this cluster's is 0).
    let mut unknown_config = vec![0x40, 0x60 | (lb.cid_len() as u8 - 1)];
    unknown_config.extend_from_slice(&[0x11; 50]);
    for datagram in [&short[..], &truncated, &unknown_config, &[0u8; 3]] {
        udp.send_to(datagram, shard.addr()).await.unwrap();
        // Dropped: nothing comes back (a stateless reset is for this shard's own CIDs only).
        let got = answer(Duration::from_millis(300)).await;
        assert!(got.is_none(), "{datagram:?} got an answer: {got:?}");
    }
    let mut counted = false;
    for _ in 0..200 {
        // The foreign CID and the unknown config id; the cut header and the 3 octets.
        let load = shard.load();
        if load.misrouted >= 2 && load.malformed >= 2 {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(counted, "all four were counted: {:?}", shard.load());
    // A short header with a CID this shard issues but no connection of its has: RFC 9000
    // §10.3 calls for a stateless reset, smaller than the packet, ending in the CID's token.
    let own = shard.sample_cid().unwrap();
    let mut stale = vec![0x40];
    stale.extend_from_slice(&own);
    stale.extend_from_slice(&[0x5a; 60]);
    udp.send_to(&stale, shard.addr()).await.unwrap();
    let reply = answer(Duration::from_secs(2))
        .await
        .expect("a stateless reset");
    let n = reply.len();
    let key = KeySchedule::new(&ClusterSecret::from_bytes(SECRET)).stateless_reset_key();
    let token = ring::hmac::sign(&key, &own);
    assert!(n < stale.len() && n >= 21, "{n} octets");
    assert_eq!(reply[0] & 0xc0, 0x40, "it looks like a short header");
    assert_eq!(
        &reply[n - 16..n],
        &token.as_ref()[..16],
        "the CID's reset token"
    );
    // The shard goes on serving.
    let client = tc.client("lb-after-garbage");
    let stream = StreamName::new("synth/lb-after-garbage").unwrap();
    let mut sub = client.subscribe(&stream).await.unwrap();
    ten_chunks(&mut sub).await;
    drop(sub);
    tc.shutdown().await;
}

#[tokio::test]
async fn a_rotation_moves_new_cids_and_grants_to_the_next_config_id_and_keeps_every_connection() {
    use shoal::admin::{Admin, AdminState};
    let mut cfg = super::common::config();
    cfg.lb.enabled = true;
    cfg.lb.config_id = 6;
    let tc = TestCluster::with(cfg.clone());
    let schedule = KeySchedule::new(&ClusterSecret::from_bytes(SECRET));
    let config_of = |id: u8| {
        let mut s = cfg.lb.clone();
        s.config_id = id;
        s.config(Some(&schedule)).unwrap()
    };
    let m = super::common::material();
    let state = AdminState::for_cluster(&tc.cluster, m.chain, m.key);
    let (admin, addr) =
        Admin::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), state).unwrap();
    let call =
        |method: &'static str, path: &'static str| super::admin::call(addr, method, path, None);
    assert_eq!(
        call("GET", "/lb").await.json().unwrap(),
        serde_json::json!({ "enabled": true, "config_id": 6, "rotations": 0 })
    );

    // A subscriber attached under config 6.
    let client = tc.client("lb-rotation");
    let stream = StreamName::new("synth/lb-rotation").unwrap();
    let mut before = client.subscribe(&stream).await.unwrap();
    ten_chunks(&mut before).await;

    let r = call("POST", "/lb/rotate").await;
    assert!(r.is_success(), "{}", r.error_message());
    let body = r.json().unwrap();
    assert_eq!(
        (&body["from"], &body["to"]),
        (&6.into(), &0.into()),
        "6 wraps to 0: {body}"
    );
    assert_eq!(body["shards"], tc.cluster.shards().len(), "{body}");
    // Every shard issues CIDs of config 0 once its link delivered the command.
    let new = config_of(0);
    for shard in tc.cluster.shards() {
        let mut moved = false;
        for _ in 0..200 {
            let cid = shard.sample_cid().unwrap();
            if cid[0] >> 5 == 0 {
                let sid = new.decode_server_id(&cid).unwrap();
                assert_eq!(sid, server_id_bytes(shard.id().0, new.server_id_len()));
                moved = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(moved, "shard {:?} still issues config 6 CIDs", shard.id());
    }
    // Grants carry routing CIDs of config 0, under its own key.
    let reply = client.request(&stream, Role::Subscribe).await.unwrap();
    for s in &reply.grant.shards {
        for cid in &s.route_cids {
            assert_eq!(
                new.decode_server_id(cid).unwrap(),
                server_id_bytes(s.id.0, new.server_id_len())
            );
            assert!(config_of(6).decode_server_id(cid).is_err(), "not config 6");
        }
    }
    // The connection from before goes on; a new one attaches with the new CIDs, 0-RTT too.
    ten_chunks(&mut before).await;
    let mut after = client.subscribe(&stream).await.unwrap();
    ten_chunks(&mut after).await;
    assert!(after.stats().zero_rtt_accepted >= 1, "{:?}", after.stats());
    assert_eq!(before.stats().resumes, 0, "{:?}", before.stats());
    for shard in tc.cluster.shards() {
        assert_eq!(shard.load().misrouted, 0, "shard {:?}", shard.id());
    }
    assert_eq!(call("GET", "/lb").await.json().unwrap()["rotations"], 1);

    // Without QUIC-LB there is nothing to rotate: a clear 409.
    drop((before, after));
    admin.stop(Duration::from_secs(1)).await;
    tc.shutdown().await;
    let tc = TestCluster::with(super::common::config());
    let m = super::common::material();
    let (admin, addr) = Admin::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        AdminState::for_cluster(&tc.cluster, m.chain, m.key),
    )
    .unwrap();
    let r = super::admin::call(addr, "POST", "/lb/rotate", None).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.json().unwrap()["code"], "lb_disabled");
    assert_eq!(
        super::admin::call(addr, "GET", "/lb", None)
            .await
            .json()
            .unwrap(),
        serde_json::json!({ "enabled": false })
    );
    admin.stop(Duration::from_secs(1)).await;
    tc.shutdown().await;
}
