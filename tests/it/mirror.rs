//! Stream mirroring over real QUIC on loopback: failover on a blackholed path, live endpoint
//! changes, migration (sender rebind, NAT rebinding), broadcast, refusing and unreachable
//! endpoints. Every test counts what the receivers delivered to their applications: nothing
//! lost, nothing delivered twice.

use std::net::SocketAddr;
use std::time::Duration;

use shoal::mirror::machine::{EndpointState, Event};
use shoal::mirror::Receiver;
use shoal::mirror::{MirrorConfig, MirrorError, SenderError, SwitchCause};
use shoal::tools::bench::failover::{broadcast_options, Rig, RigCerts, RigOptions};

fn certs() -> RigCerts {
    RigCerts::generate().expect("certificates")
}

async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<Event>,
    limit: Duration,
    mut f: impl FnMut(&Event) -> bool,
) -> Event {
    tokio::time::timeout(limit, async {
        loop {
            match events.recv().await {
                Ok(ev) if f(&ev) => return ev,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event channel closed: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}

async fn up(rig: &Rig) {
    assert!(
        rig.wait_for(Duration::from_secs(5), |s| s.active.len() == 1
            && s.committed_seq.is_some()
            && s.endpoints
                .iter()
                .all(|e| e.state != EndpointState::Connecting))
            .await,
        "mirror up: {:?}",
        rig.sender.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_active_fails_over_without_loss_or_duplicates() {
    let rig = Rig::start(&RigOptions::default(), certs()).await.unwrap();
    up(&rig).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut events = rig.sender.events();
    let (old, i) = rig.active().unwrap();
    rig.relays[i].set_blackhole(true);
    let ev = wait_event(&mut events, Duration::from_secs(3), |e| {
        matches!(
            e,
            Event::Switched {
                cause: SwitchCause::Failure,
                ..
            }
        )
    })
    .await;
    let Event::Switched { from, to, .. } = ev else {
        unreachable!()
    };
    assert_eq!(from, Some(old));
    assert_ne!(to, old);
    wait_event(
        &mut events,
        Duration::from_secs(3),
        |e| matches!(e, Event::SwitchConfirmed { ep, .. } if *ep == to),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = rig.sender.snapshot();
    assert!(
        snap.counters.replayed > 0,
        "the unacknowledged tail was replayed"
    );
    let ledger = rig.finish(Duration::from_secs(3)).await;
    let t = ledger.tally_union();
    assert!(t.pushed > 300, "{t:?}");
    assert_eq!((t.lost, t.duplicated, t.out_of_order), (0, 0, 0), "{t:?}");
    assert_eq!(t.gap_chunks, 0, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_added_and_removed_live() {
    let o = RigOptions {
        receivers: 2,
        one_way: Duration::from_millis(2),
        config: MirrorConfig {
            revert_after: Some(Duration::from_millis(300)),
            ..MirrorConfig::default()
        },
        ..RigOptions::default()
    };
    let rig = Rig::start(&o, certs()).await.unwrap();
    up(&rig).await;
    let mut events = rig.sender.events();
    // Bad changes are refused with clear errors and change nothing.
    let dup = rig.sender.add_endpoint(rig.receiver_addrs[1], None);
    assert!(matches!(
        dup,
        Err(SenderError::Mirror(MirrorError::DuplicateEndpoint(_)))
    ));
    let unknown = rig.sender.remove_endpoint(shoal::mirror::EndpointId(77));
    assert!(matches!(
        unknown,
        Err(SenderError::Mirror(MirrorError::UnknownEndpoint(_)))
    ));
    // A new receiver at rank 0: the mirror reverts to it once it has been healthy a while,
    // handing over exactly where the old active stopped (nothing replayed).
    let extra = Receiver::bind(
        rig.certs
            .receiver_options(SocketAddr::from(([127, 0, 0, 1], 0))),
    )
    .unwrap();
    let extra_addr = extra.addr();
    let extra = tokio::spawn(drain_until_idle(extra));
    let new = rig.sender.add_endpoint(extra_addr, Some(0)).unwrap();
    let ev = wait_event(
        &mut events,
        Duration::from_secs(5),
        |e| matches!(e, Event::Switched { to, .. } if *to == new),
    )
    .await;
    assert!(matches!(
        ev,
        Event::Switched {
            cause: SwitchCause::Revert,
            ..
        }
    ));
    let replayed_before = rig.sender.snapshot().counters.replayed;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Removing the active endpoint hands over to the best standby first.
    rig.sender.remove_endpoint(new).unwrap();
    wait_event(&mut events, Duration::from_secs(3), |e| {
        matches!(
            e,
            Event::Switched {
                cause: SwitchCause::Removed,
                ..
            }
        )
    })
    .await;
    assert!(
        rig.wait_for(Duration::from_secs(3), |s| s.endpoints.len() == 2)
            .await
    );
    assert_eq!(rig.sender.snapshot().counters.replayed, replayed_before);
    // Down to one endpoint: the last one cannot go.
    let other = rig.sender.snapshot().endpoints[1].id;
    rig.sender.remove_endpoint(other).unwrap();
    assert!(
        rig.wait_for(Duration::from_secs(3), |s| s.endpoints.len() == 1)
            .await
    );
    let last = rig.sender.snapshot().endpoints[0].id;
    assert!(matches!(
        rig.sender.remove_endpoint(last),
        Err(SenderError::Mirror(MirrorError::LastEndpoint))
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The extra receiver's deliveries belong to the same application.
    let mut ledger = rig.finish(Duration::from_secs(3)).await;
    let extra_seqs = extra.await.unwrap();
    ledger
        .receivers
        .push(shoal::tools::bench::failover::ReceiverLog {
            seqs: extra_seqs,
            gaps: vec![],
        });
    let t = ledger.tally_union();
    assert_eq!((t.lost, t.duplicated, t.out_of_order), (0, 0, 0), "{t:?}");
    assert_eq!(t.overlap, 0, "planned switches send nothing twice: {t:?}");
}

/// What a receiver delivers until it has been idle for a second (bounded: 60 s).
async fn drain_until_idle(mut r: Receiver) -> Vec<shoal::ids::Seq> {
    let mut seqs = Vec::new();
    let until = shoal::clock::now() + Duration::from_secs(60);
    while shoal::clock::now() < until {
        let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(1), r.next()).await else {
            break;
        };
        if let shoal::mirror::ReceiverEvent::Chunk { chunk, .. } = ev {
            seqs.push(chunk.seq);
        }
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_rebind_and_nat_rebinding_keep_the_stream() {
    let o = RigOptions {
        one_way: Duration::from_millis(2),
        ..RigOptions::default()
    };
    let rig = Rig::start(&o, certs()).await.unwrap();
    up(&rig).await;
    let (active, i) = rig.active().unwrap();
    let before = rig.sender.local_addr(active).unwrap();
    // The sender moves its socket (a new local port) mid-stream.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    rig.sender.rebind(active, socket).unwrap();
    let after = rig.sender.local_addr(active).unwrap();
    assert_ne!(before, after);
    tokio::time::sleep(Duration::from_millis(400)).await;
    // The path in front of the receiver rebinds (the relay plays a NAT giving a new port).
    rig.relays[i].rebind();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let snap = rig.sender.snapshot();
    assert_eq!(
        snap.counters.switches, 0,
        "migration is not a failover: {snap:?}"
    );
    assert_eq!(rig.active().unwrap().0, active);
    let seen = rig.receiver_stats[i].get();
    let migrations: u64 = seen.values().map(|s| s.migrations).sum();
    assert!(migrations >= 2, "the receiver saw both moves: {seen:?}");
    let ledger = rig.finish(Duration::from_secs(3)).await;
    let t = ledger.tally_union();
    assert_eq!((t.lost, t.duplicated, t.out_of_order), (0, 0, 0), "{t:?}");
    assert!(
        ledger.receivers[i].seqs.len() as u64 == t.pushed,
        "all on one receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_delivers_everything_everywhere_and_resumes_a_recovered_path() {
    let rig = Rig::start(&broadcast_options(), certs()).await.unwrap();
    assert!(
        rig.wait_for(Duration::from_secs(5), |s| s.active.len() == 3
            && s.committed_seq.is_some())
            .await
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut events = rig.sender.events();
    rig.relays[2].set_blackhole(true);
    wait_event(&mut events, Duration::from_secs(3), |e| {
        matches!(e, Event::Degraded { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.relays[2].set_blackhole(false);
    wait_event(&mut events, Duration::from_secs(5), |e| {
        matches!(e, Event::Recovered { .. })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ledger = rig.finish(Duration::from_secs(3)).await;
    for (i, t) in ledger.tally_each().iter().enumerate() {
        assert!(t.pushed > 200, "receiver {i}: {t:?}");
        assert_eq!(
            (t.lost, t.duplicated, t.out_of_order, t.gap_chunks),
            (0, 0, 0, 0),
            "receiver {i}: {t:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_and_unreachable_endpoints_are_reported_and_the_stream_goes_on() {
    let o = RigOptions {
        receivers: 1,
        one_way: Duration::from_millis(1),
        ..RigOptions::default()
    };
    let rig = Rig::start(&o, certs()).await.unwrap();
    up(&rig).await;
    // A receiver trusting another CA refuses our client certificate.
    let other = RigCerts::generate().unwrap();
    let mut opts = rig
        .certs
        .receiver_options(SocketAddr::from(([127, 0, 0, 1], 0)));
    opts.client_ca = other.ca.clone();
    let refusing = Receiver::bind(opts).unwrap();
    let refusing_id = rig.sender.add_endpoint(refusing.addr(), None).unwrap();
    // Nothing listens here.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dead_id = rig.sender.add_endpoint(dead_addr, None).unwrap();
    assert!(
        rig.wait_for(Duration::from_secs(8), |s| {
            let err = |id| {
                s.endpoints
                    .iter()
                    .find(|e| e.id == id)
                    .and_then(|e| e.last_error.clone())
            };
            err(refusing_id).is_some_and(|e| e.contains("refused"))
                && err(dead_id).is_some_and(|e| e.contains("unreachable"))
        })
        .await,
        "{:#?}",
        rig.sender.snapshot()
    );
    let snap = rig.sender.snapshot();
    for id in [refusing_id, dead_id] {
        let e = snap.endpoints.iter().find(|e| e.id == id).unwrap();
        assert_eq!(e.state, EndpointState::Connecting);
    }
    assert_eq!(snap.active.len(), 1);
    let ledger = rig.finish(Duration::from_secs(3)).await;
    let t = ledger.tally_union();
    assert_eq!((t.lost, t.duplicated), (0, 0), "{t:?}");
}

/// A raw QUIC client to a receiver: with or without a client certificate.
async fn raw_mirror_conn(
    certs: &RigCerts,
    to: SocketAddr,
    with_cert: bool,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let crypto = if with_cert {
        shoal::security::tls::mirror_client_crypto(
            &certs.ca,
            certs.chain.clone(),
            certs.key.clone_key(),
        )
        .unwrap()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in &certs.ca {
            roots.add(c.clone()).unwrap();
        }
        let mut c = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        c.alpn_protocols = vec![shoal::mirror::MIRROR_ALPN.to_vec()];
        std::sync::Arc::new(c)
    };
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut ep = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(std::sync::Arc::new(quic)));
    ep.connect(to, &certs.cluster).unwrap().await
}

/// Sends `bytes` as the first stream data and returns how the receiver closed.
async fn first_flight_close(conn: &quinn::Connection, bytes: &[u8]) -> quinn::ConnectionError {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return e,
    };
    let _ = send.write_all(bytes).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 16)).await;
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("the receiver closes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_refuse_bad_senders_with_clear_codes() {
    use shoal::wire::{encode_control, ErrorCode, Heartbeat, Message};
    let certs = certs();
    let r = Receiver::bind(certs.receiver_options(SocketAddr::from(([127, 0, 0, 1], 0)))).unwrap();
    // No client certificate: the TLS handshake is refused.
    let refused = match raw_mirror_conn(&certs, r.addr(), false).await {
        Err(e) => e,
        Ok(conn) => first_flight_close(&conn, b"").await,
    };
    assert!(
        matches!(refused, quinn::ConnectionError::ConnectionClosed(_)),
        "refused by TLS: {refused:?}"
    );
    // Garbage, then a valid frame that is not a hello.
    let conn = raw_mirror_conn(&certs, r.addr(), true).await.unwrap();
    let e = first_flight_close(&conn, &[0, 0, 0, 3, 1, 99, 0]).await;
    assert_eq!(ErrorCode::of_close(&e), Some(ErrorCode::MalformedFrame));
    let conn = raw_mirror_conn(&certs, r.addr(), true).await.unwrap();
    let hb = encode_control(&Message::Heartbeat(Heartbeat { at_us: 1 }));
    let e = first_flight_close(&conn, &hb).await;
    assert_eq!(ErrorCode::of_close(&e), Some(ErrorCode::ProtocolViolation));
    // The receiver is still fine: a proper sender streams through it.
    let stats = r.stats_handle();
    assert!(stats.get().is_empty(), "nothing delivered by bad senders");
}
