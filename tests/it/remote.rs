//! Shards in other processes, over the networked control link (`shoal-ctl/1`, mutual TLS):
//! a shard process joining a hub and serving with 0-RTT, bad input on the link (each refusal
//! with its close code, counted, the cluster serving on), a SIGKILLed shard process, and a
//! hub restarted under a shard process that keeps what it could not deliver.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal::client::{Client, ClientOptions, Delivery, StatsSnapshot};
use shoal::cluster::config::{Config, LauncherKind};
use shoal::cluster::remote::{ShardOptions, ShardProcess};
use shoal::cluster::{Cluster, ClusterError, Material};
use shoal::hub::directory::ShardRecord;
use shoal::ids::{ClientId, GroupId, ShardId, StreamName};
use shoal::link::net::{frame, BridgeError, BridgeOptions, CloseCode, CTL_ALPN, MAX_FRAME};
use shoal::link::{HubCmd, Register, ShardLoad, ShardMsg, LINK_VERSION};
use shoal::pool::launcher::Launcher;
use shoal::security::keys::ClusterSecret;
use shoal::wire::ErrorCode;

use crate::common::*;

/// A group no client is placed in: raw links register there, with no capacity.
const NOWHERE: GroupId = GroupId(7);

fn certs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs")
}

/// The test cluster's configuration with a control listener on `control`.
pub(super) fn config_with_control(control: SocketAddr, shards: u32) -> Config {
    let mut cfg = config();
    cfg.shards.count = shards;
    cfg.shards.groups = 1;
    cfg.hub.control_listen = Some(control);
    cfg
}

/// A test cluster with one embedded shard and a control listener; the listener's address.
fn control_cluster() -> (TestCluster, SocketAddr) {
    let tc = TestCluster::with(config_with_control(any_port(), 1));
    let control = tc.cluster.control().expect("a control listener").addr();
    (tc, control)
}

pub(super) fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// What a shard process of the test cluster runs with (the committed certificates).
pub(super) fn shard_config() -> Config {
    let mut cfg = config();
    cfg.tls.cert = Some(certs_dir().join("cluster.pem"));
    cfg.tls.key = Some(certs_dir().join("cluster.key"));
    cfg.tls.ca = Some(certs_dir().join("ca.pem"));
    cfg
}

pub(super) async fn start_remote(
    hub: SocketAddr,
    id: u32,
    cfg: Config,
    bridge: BridgeOptions,
) -> Result<ShardProcess, ClusterError> {
    ShardProcess::start(ShardOptions {
        hub,
        listen: any_port(),
        advertise: None,
        group: GroupId(0),
        id: Some(ShardId(id)),
        config: cfg,
        bridge,
    })
    .await
}

/// Polls (bounded by `within`) until `id` is in the directory of `cluster`.
async fn registered(cluster: &Cluster, id: ShardId, within: Duration) -> ShardRecord {
    let record = || cluster.directory().lock().unwrap().record(id).cloned();
    let there = eventually(within, || record().is_some()).await;
    assert!(there, "{id:?} did not register within {within:?}");
    record().unwrap()
}

/// A fresh client still gets a grant and chunks in order.
async fn still_serves(tc: &TestCluster, who: &str) {
    let client = tc.client(who);
    let stream = StreamName::new(format!("synth/{who}")).unwrap();
    let mut sub = tokio::time::timeout(Duration::from_secs(10), client.subscribe(&stream))
        .await
        .unwrap_or_else(|_| panic!("{who}: no answer from the hub"))
        .unwrap_or_else(|e| panic!("{who}: no grant: {e}"));
    let seqs = read_chunks(&mut sub, &stream, 3).await;
    assert_contiguous(&seqs);
    drop(sub);
    client.close().await;
}

/// A bare control-link client with a certificate of the cluster CA: speaks the framing by
/// hand.
struct Ctl {
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

/// One raw control connection and its link stream.
struct RawLink {
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl Ctl {
    fn new() -> Self {
        let m = material();
        let crypto =
            shoal::security::tls::mtls_client_crypto(&m.ca, m.chain, m.key, CTL_ALPN).unwrap();
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(shoal::link::net::transport());
        let endpoint = quinn::Endpoint::client(any_port()).unwrap();
        Self { endpoint, config }
    }

    async fn link(&self, hub: SocketAddr) -> RawLink {
        let conn = self
            .endpoint
            .connect_with(self.config.clone(), hub, shoal::DEFAULT_CLUSTER)
            .unwrap()
            .await
            .expect("mutual TLS with the cluster's certificate");
        let (send, recv) = conn.open_bi().await.unwrap();
        RawLink { conn, send, recv }
    }

    /// A link registered as shard `id` (in a group nobody is placed in): the hub's first
    /// command, the group's keys, was read.
    async fn registered(&self, hub: SocketAddr, id: u32) -> RawLink {
        let mut link = self.link(hub).await;
        link.write(&frame(&register(id, NOWHERE, LINK_VERSION)))
            .await;
        match link.command().await {
            Some(HubCmd::Keys(k)) => assert_eq!(k.group, NOWHERE),
            other => panic!("the group's keys first, got {other:?}"),
        }
        link
    }

    /// Opens a link, writes `bytes` on it, and returns the code the hub closed it with.
    async fn refused(&self, hub: SocketAddr, bytes: &[u8]) -> Option<CloseCode> {
        let mut link = self.link(hub).await;
        link.write(bytes).await;
        link.closed_with().await
    }
}

impl RawLink {
    async fn write(&mut self, bytes: &[u8]) {
        // The hub may close before all of it is read: that is the point of most cases.
        let _ = self.send.write_all(bytes).await;
    }

    /// The next command from the hub (within 5 s), if one decodes.
    async fn command(&mut self) -> Option<HubCmd> {
        let read = async {
            let mut len = [0u8; 4];
            self.recv.read_exact(&mut len).await.ok()?;
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            self.recv.read_exact(&mut body).await.ok()?;
            shoal::link::decode::<HubCmd>(&body).ok()
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()
            .flatten()
    }

    /// The link close code the connection ended with (within 7 s, past the setup timeout).
    async fn closed_with(&self) -> Option<CloseCode> {
        let e = tokio::time::timeout(Duration::from_secs(7), self.conn.closed())
            .await
            .ok()?;
        match e {
            quinn::ConnectionError::ApplicationClosed(c) => {
                CloseCode::from_u64(c.error_code.into_inner())
            }
            _ => None,
        }
    }
}

fn register(id: u32, group: GroupId, version: u16) -> ShardMsg {
    ShardMsg::Register(Register {
        version,
        shard: ShardId(id),
        group,
        addr: "127.0.0.1:9".parse().unwrap(),
        capacity: 0,
        mirror: None,
    })
}

/// A frame whose body is not MessagePack (0xc1 is a byte MessagePack never uses).
fn garbage_frame() -> Vec<u8> {
    let mut f = 3u32.to_be_bytes().to_vec();
    f.extend_from_slice(&[0xc1; 3]);
    f
}

/// The length prefix of a frame one byte over the limit (no body needed to refuse it).
fn oversized_frame() -> Vec<u8> {
    (MAX_FRAME as u32 + 1).to_be_bytes().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_process_joins_over_the_control_link_and_serves_with_zero_rtt() {
    let (tc, control) = control_cluster();
    let remote = start_remote(control, 100, shard_config(), BridgeOptions::default())
        .await
        .expect("the shard process starts");
    let id = remote.shard().id();
    let rec = registered(&tc.cluster, id, Duration::from_secs(10)).await;
    assert_eq!(rec.addr, remote.shard().advertised());
    assert_eq!(rec.group, GroupId(0));
    assert!(rec.view().alive, "{rec:?}");
    // The embedded shard goes: the shard process is the only one of its group.
    tc.kill(&tc.shard(ShardId(0))).await;

    let client = tc.client("remote-0rtt");
    let stream = StreamName::new("synth/remote").unwrap();
    let mut sub = client.subscribe(&stream).await.expect("a grant");
    let seqs = read_chunks(&mut sub, &stream, 20).await;
    assert_contiguous(&seqs);
    let s = sub.stats();
    assert!(
        s.zero_rtt_accepted > 0,
        "the attach to the shard process rode in accepted 0-RTT: {s:?}"
    );
    let c = remote.shard().counters();
    assert!(c.allocations.load(Ordering::Relaxed) >= 1);
    assert!(c.zero_rtt_attaches.load(Ordering::Relaxed) >= 1);

    // Its group's keys came over the link: a token of its group is admitted, one of another
    // group refused before anything is allocated.
    let raw = RawClient::new();
    let addr = remote.shard().advertised();
    let (now, secret) = (now_ms(), [3u8; 32]);
    let ours = tc.mint(GroupId(0), secret, now, now + 60_000);
    assert_eq!(raw.attach(addr, &ours, &secret, id).await, None);
    let theirs = tc.mint(GroupId(1), secret, now, now + 60_000);
    assert_eq!(
        raw.attach(addr, &theirs, &secret, id).await,
        Some(ErrorCode::TokenWrongGroup)
    );
    assert!(c.rejections(ErrorCode::TokenWrongGroup) >= 1);

    drop(sub);
    client.close().await;
    tc.cluster.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), remote.wait()).await;
    assert!(matches!(ended, Ok(Ok(()))), "the hub drained it: {ended:?}");
    let links = tc.cluster.hub.links().counters();
    assert_eq!(links.drained.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_a_certificate_from_another_ca_fails_the_handshake_and_gives_up() {
    let (tc, control) = control_cluster();
    let dir = tempfile::tempdir().unwrap();
    let other = shoal::security::certs::generate(shoal::DEFAULT_CLUSTER).unwrap();
    shoal::security::certs::write(dir.path(), &other).unwrap();
    // All of it from another CA; then only its own certificate (it trusts the hub, the hub
    // does not trust it).
    let mut foreign = shard_config();
    foreign.tls.cert = Some(dir.path().join("cluster.pem"));
    foreign.tls.key = Some(dir.path().join("cluster.key"));
    let mut all_foreign = foreign.clone();
    all_foreign.tls.ca = Some(dir.path().join("ca.pem"));
    let counters = tc.cluster.control().unwrap().counters().clone();
    for (n, cfg) in [(1, all_foreign), (2, foreign)] {
        let remote = start_remote(control, 200 + n, cfg, BridgeOptions::default())
            .await
            .expect("the shard starts; its link fails");
        let ended = tokio::time::timeout(Duration::from_secs(20), remote.wait())
            .await
            .expect("the shard gives up at once");
        match ended {
            Err(e @ BridgeError::Tls { .. }) => {
                assert!(e.to_string().contains("cluster CA"), "{e}")
            }
            other => panic!("case {n}: a TLS failure, got {other:?}"),
        }
        assert!(
            eventually(Duration::from_secs(10), || {
                counters.handshakes_failed.load(Ordering::Relaxed) >= n as u64
            })
            .await,
            "case {n}: the hub counted the failed handshake"
        );
        assert!(tc
            .cluster
            .directory()
            .lock()
            .unwrap()
            .record(ShardId(200 + n))
            .is_none());
        still_serves(&tc, &format!("after-foreign-{n}")).await;
    }
    assert_eq!(
        tc.cluster
            .hub
            .links()
            .counters()
            .registered
            .load(Ordering::Relaxed),
        1
    );
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registrations_and_garbage_close_the_link_with_their_code() {
    let (tc, control) = control_cluster();
    let ctl = Ctl::new();
    let taken = register(0, GroupId(0), LINK_VERSION);
    let newer = register(300, NOWHERE, LINK_VERSION + 1);
    let load_first = ShardMsg::Load(ShardLoad::default());
    let cases: Vec<(&str, Vec<u8>, CloseCode)> = vec![
        (
            "an id already registered",
            frame(&taken),
            CloseCode::IdTaken,
        ),
        ("another link version", frame(&newer), CloseCode::Version),
        (
            "load before register",
            frame(&load_first),
            CloseCode::NotRegistered,
        ),
        (
            "a body that is not MessagePack",
            garbage_frame(),
            CloseCode::Malformed,
        ),
        (
            "a length over MAX_FRAME",
            oversized_frame(),
            CloseCode::TooLarge,
        ),
    ];
    for (i, (what, bytes, want)) in cases.into_iter().enumerate() {
        assert_eq!(ctl.refused(control, &bytes).await, Some(want), "{what}");
        still_serves(&tc, &format!("after-refusal-{i}")).await;
    }
    let links = tc.cluster.hub.links().counters();
    assert_eq!(links.refused.load(Ordering::Relaxed), 3);
    assert_eq!(
        links.registered.load(Ordering::Relaxed),
        1,
        "only the embedded shard"
    );
    let control_counters = tc.cluster.control().unwrap().counters().clone();
    let first_frames = control_counters.handshakes_failed.load(Ordering::Relaxed)
        + control_counters.malformed.load(Ordering::Relaxed);
    assert_eq!(
        first_frames, 2,
        "the two undecodable first frames are counted"
    );

    // The same garbage from a registered link: closed, counted as malformed, and the shard
    // leaves the directory.
    let before = control_counters.malformed.load(Ordering::Relaxed);
    let cases: Vec<(u32, Vec<u8>, CloseCode)> = vec![
        (301, garbage_frame(), CloseCode::Malformed),
        (302, oversized_frame(), CloseCode::TooLarge),
    ];
    for (i, (id, bytes, want)) in cases.into_iter().enumerate() {
        let mut link = ctl.registered(control, id).await;
        assert!(tc
            .cluster
            .directory()
            .lock()
            .unwrap()
            .record(ShardId(id))
            .is_some());
        link.write(&bytes).await;
        let code = link.closed_with().await;
        assert_eq!(code, Some(want), "{id}");
        assert!(
            eventually(Duration::from_secs(5), || {
                tc.cluster
                    .directory()
                    .lock()
                    .unwrap()
                    .record(ShardId(id))
                    .is_none()
            })
            .await,
            "shard {id} left the directory"
        );
        assert_eq!(
            control_counters.malformed.load(Ordering::Relaxed),
            before + i as u64 + 1
        );
        still_serves(&tc, &format!("after-garbage-{id}")).await;
    }
    assert_eq!(links.lost.load(Ordering::Relaxed), 2, "{links:?}");
    tc.shutdown().await;
}

/// The close code a second registration on a live link gets, as `CloseCode::NotRegistered`
/// documents it ("the first frame was not a registration (or a second one came)").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_second_registration_closes_with_not_registered() {
    let (tc, control) = control_cluster();
    let ctl = Ctl::new();
    let mut link = ctl.registered(control, 310).await;
    link.write(&frame(&register(310, NOWHERE, LINK_VERSION)))
        .await;
    assert_eq!(link.closed_with().await, Some(CloseCode::NotRegistered));
    tc.shutdown().await;
}

/// A registered link closed for a bad frame gets that frame's code, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn garbage_from_a_registered_link_gets_its_code() {
    let (tc, control) = control_cluster();
    let ctl = Ctl::new();
    for id in 320..340 {
        let mut link = ctl.registered(control, id).await;
        link.write(&garbage_frame()).await;
        assert_eq!(link.closed_with().await, Some(CloseCode::Malformed), "{id}");
    }
    tc.shutdown().await;
}

/// A malformed first frame is a malformed frame, not a failed handshake (the counters' docs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]

async fn a_malformed_first_frame_counts_as_malformed() {
    let (tc, control) = control_cluster();
    let ctl = Ctl::new();
    assert_eq!(
        ctl.refused(control, &garbage_frame()).await,
        Some(CloseCode::Malformed)
    );
    let c = tc.cluster.control().unwrap().counters().clone();
    assert_eq!(c.malformed.load(Ordering::Relaxed), 1);
    assert_eq!(c.handshakes_failed.load(Ordering::Relaxed), 0);
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_shard_loses_its_own_reports_and_the_hub_keeps_granting() {
    let (tc, control) = control_cluster();
    let ctl = Ctl::new();
    let mut link = ctl.registered(control, 400).await;
    let batch = frame(&ShardMsg::Load(ShardLoad::default())).repeat(1_000);
    let flood = async {
        for _ in 0..200 {
            link.send
                .write_all(&batch)
                .await
                .expect("the hub reads the whole flood");
        }
    };
    // Others are served while the flood runs.
    let (flooded, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(60), flood),
        still_serves(&tc, "during-flood")
    );
    flooded.expect("200,000 reports sent within 60 s");
    let c = tc.cluster.control().unwrap().counters().clone();
    assert!(
        eventually(Duration::from_secs(5), || c
            .flood_dropped
            .load(Ordering::Relaxed)
            > 0)
        .await,
        "reports over the budget were dropped and counted"
    );
    assert!(
        tc.cluster
            .directory()
            .lock()
            .unwrap()
            .record(ShardId(400))
            .is_some(),
        "the flood cost the shard its reports, not its link"
    );
    assert_eq!(c.malformed.load(Ordering::Relaxed), 0);
    still_serves(&tc, "after-flood").await;
    link.conn.close(0u32.into(), b"");
    tc.shutdown().await;
}

#[tokio::test]
async fn a_shard_whose_hub_is_unreachable_exits_naming_it() {
    let hub = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shard.toml");
    let text = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nca = {:?}\n",
        certs_dir().join("cluster.pem"),
        certs_dir().join("cluster.key"),
        certs_dir().join("ca.pem"),
    );
    std::fs::write(&path, text).unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "shard",
            "--hub",
            &hub.to_string(),
            "--hub-wait",
            "1",
            "--config",
        ])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("the shard gives up within 30 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&hub.to_string()), "{stderr}");
}

/// What one client of the SIGKILL test saw.
#[derive(Debug, Default)]
struct Followed {
    stats: Option<StatsSnapshot>,
    chunks_after_kill: u64,
    gaps: u64,
    corrupt: u64,
    error: Option<String>,
}

async fn follow(
    client: Client,
    stream: StreamName,
    killed: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Followed {
    let mut f = Followed::default();
    let mut sub = match client.subscribe(&stream).await {
        Ok(s) => s,
        Err(e) => {
            f.error = Some(e.to_string());
            return f;
        }
    };
    let seed = shoal::synthetic::stream_seed(&stream);
    // Bounded: 100 chunks a second for well under 1,000 s.
    for _ in 0..100_000 {
        tokio::select! {
            _ = stop.changed() => break,
            item = sub.next() => match item {
                Some(Ok(Delivery::Chunk(c))) => {
                    if !shoal::synthetic::verify(seed, c.seq, &c.payload) {
                        f.corrupt += 1;
                    }
                    if killed.load(Ordering::Relaxed) {
                        f.chunks_after_kill += 1;
                    }
                }
                Some(Ok(Delivery::Gap { .. })) => f.gaps += 1,
                Some(Err(e)) => {
                    f.error = Some(e.to_string());
                    break;
                }
                None => {
                    f.error = Some("the subscription ended".into());
                    break;
                }
            }
        }
    }
    f.stats = Some(sub.stats());
    drop(sub);
    client.close().await;
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_shard_process_loses_no_chunk_and_leaves_placement() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config();
    cfg.data_dir = dir.path().to_path_buf();
    cfg.shards.count = 2;
    cfg.shards.groups = 1;
    cfg.shards.launcher = LauncherKind::Processes;
    cfg.shards.program = Some(env!("CARGO_BIN_EXE_shoal").into());
    cfg.transport.heartbeat_interval = Duration::from_millis(150);
    cfg.validate().unwrap();
    // Shard processes read their certificates from files (as the demo writes them).
    let certs = shoal::security::certs::generate(&cfg.cluster).unwrap();
    shoal::security::certs::write(dir.path(), &certs).unwrap();
    let m = Material::from_certs(ClusterSecret::from_bytes(SECRET), &certs).unwrap();
    let cluster = Cluster::start(&cfg, m).expect("the cluster starts");
    cluster
        .wait_ready(Duration::from_secs(30))
        .await
        .expect("both shard processes register");
    let processes = cluster
        .processes()
        .expect("shards run as processes")
        .clone();
    assert_eq!(processes.running().len(), 2);

    let killed = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    let clients = 20;
    for i in 0..clients {
        let id = ClientId::new(format!("killed-{i}")).unwrap();
        let mut o = ClientOptions::new(cfg.cluster.clone(), cluster.ca.clone(), id);
        o.heartbeat_interval = Duration::from_millis(150);
        o.request_timeout = Duration::from_secs(3);
        let client = Client::new(cluster.hub.addr(), o).unwrap();
        let stream = StreamName::new(format!("synth/kill-{}", i % 4)).unwrap();
        tasks.push(tokio::spawn(follow(
            client,
            stream,
            killed.clone(),
            stop_rx.clone(),
        )));
    }
    let sessions = || -> u64 {
        let d = cluster.directory().lock().unwrap();
        d.records().map(|r| r.load.sessions).sum()
    };
    assert!(
        eventually(Duration::from_secs(15), || sessions() == clients).await,
        "every client attached (the shards report {} sessions)",
        sessions()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (victim, victim_sessions) = {
        let d = cluster.directory().lock().unwrap();
        let r = d.records().max_by_key(|r| r.load.sessions).unwrap();
        (r.id, r.load.sessions)
    };
    assert!(victim_sessions >= 1);
    killed.store(true, Ordering::Relaxed);
    Launcher::reap(&processes, victim);
    let out_of_placement = || {
        let d = cluster.directory().lock().unwrap();
        d.record(victim).is_none_or(|r| !r.view().alive)
    };
    assert!(
        eventually(Duration::from_secs(10), out_of_placement).await,
        "the hub took the killed shard out of placement"
    );
    // Time for every client to resume and stream on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send_replace(true);
    let mut resumed = 0;
    for t in tasks {
        let f = tokio::time::timeout(Duration::from_secs(15), t)
            .await
            .expect("every client stops")
            .unwrap();
        assert_eq!(f.error, None, "{f:?}");
        let s = f.stats.unwrap();
        assert_eq!(
            (s.missing, s.duplicates, f.gaps, f.corrupt),
            (0, 0, 0, 0),
            "{f:?}"
        );
        assert!(f.chunks_after_kill >= 10, "the client streams on: {f:?}");
        resumed += u64::from(s.resumes >= 1);
    }
    assert!(
        resumed >= victim_sessions,
        "{resumed} clients resumed, {victim_sessions} were on the killed shard"
    );
    cluster.shutdown().await;
    assert!(
        eventually(Duration::from_secs(10), || processes.running().is_empty()).await,
        "no shard process left: {:?}",
        processes.running()
    );
}

/// Starts a test cluster on `cfg`, retrying (bounded) while its fixed ports are still held
/// by a cluster that just closed.
async fn start_when_free(cfg: &Config) -> TestCluster {
    for _ in 0..100 {
        match Cluster::start(cfg, material()) {
            Ok(cluster) => {
                return TestCluster {
                    cluster,
                    cfg: cfg.clone(),
                }
            }
            Err(ClusterError::Bind { .. }) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("cluster start: {e}"),
        }
    }
    panic!("the control port never came free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_process_re_registers_with_a_restarted_hub_and_delivers_what_it_kept() {
    let control = SocketAddr::from(([127, 0, 0, 1], free_udp_port()));
    let cfg = config_with_control(control, 0);
    let first = start_when_free(&cfg).await;
    let bridge = BridgeOptions {
        backoff_max: Duration::from_millis(500),
        ..BridgeOptions::default()
    };
    let remote = start_remote(control, 50, shard_config(), bridge)
        .await
        .unwrap();
    let (shard, counters) = (remote.shard().clone(), remote.counters().clone());
    let waiting = tokio::spawn(remote.wait());
    registered(&first.cluster, shard.id(), Duration::from_secs(10)).await;
    let client = first.client("across-restart");
    let stream = StreamName::new("synth/restart").unwrap();
    let mut sub = client.subscribe(&stream).await.expect("a grant");
    assert_contiguous(&read_chunks(&mut sub, &stream, 5).await);

    // The hub goes without draining its shards: the control listener closes (HubStopping),
    // the hub closes, the cluster is dropped.
    first.cluster.control().unwrap().close();
    first.cluster.hub.close().await;
    drop(first);
    assert!(
        eventually(Duration::from_secs(10), || {
            counters.failed_attempts.load(Ordering::Relaxed) >= 1
        })
        .await,
        "the shard noticed its hub went"
    );
    // It serves its session meanwhile; the session's outcome waits for a hub.
    assert_contiguous(&read_chunks(&mut sub, &stream, 5).await);
    drop(sub);
    client.close().await;
    let c = shard.counters().clone();
    assert!(
        eventually(Duration::from_secs(5), || c
            .sessions
            .load(Ordering::Relaxed)
            == 0)
        .await,
        "the session ended"
    );

    // A new hub with the same secret on the same control port.
    let second = start_when_free(&cfg).await;
    registered(&second.cluster, shard.id(), Duration::from_secs(15)).await;
    let hub = &second.cluster.hub;
    assert!(
        eventually(Duration::from_secs(5), || {
            hub.counters().sessions_reported.load(Ordering::Relaxed) >= 1
        })
        .await,
        "the outcome kept while the hub was away reached the new hub"
    );
    assert!(counters.delivered_late.load(Ordering::Relaxed) >= 1);
    // The first connection's registration (a live one is counted when it ends).
    assert!(counters.registrations.load(Ordering::Relaxed) >= 1);
    assert_eq!(counters.outbox_dropped.load(Ordering::Relaxed), 0);
    still_serves(&second, "after-restart").await;
    second.shutdown().await;
    let ended = tokio::time::timeout(Duration::from_secs(10), waiting).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "drained by the new hub: {ended:?}"
    );
}
