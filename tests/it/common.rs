//! Test harness: an embedded cluster on loopback with the committed test certificates and a
//! fixed cluster secret, so tests can mint tokens of their own.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use shoal::client::{Client, ClientOptions};
use shoal::cluster::config::Config;
use shoal::cluster::{Cluster, Material};
use shoal::ids::{ClientId, GroupId, ShardId, TokenId};
use shoal::security::keys::{ClusterSecret, KeySchedule};
use shoal::security::token::{Claims, Priority, TokenKeys};
use shoal::shard::Shard;
use shoal::wire::{encode_control, Attach, ErrorCode, Frame, FrameReader, Message};

pub const SECRET: [u8; 32] = [0x5a; 32];

fn certs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs")
}

pub fn ca() -> Vec<rustls::pki_types::CertificateDer<'static>> {
    shoal::security::tls::read_certs(&certs_dir().join("ca.pem")).expect("committed test CA")
}

pub fn material() -> Material {
    Material {
        secret: ClusterSecret::from_bytes(SECRET),
        chain: shoal::security::tls::read_certs(&certs_dir().join("cluster.pem"))
            .expect("test chain"),
        key: shoal::security::tls::read_key(&certs_dir().join("cluster.key")).expect("test key"),
        ca: ca(),
    }
}

pub fn config() -> Config {
    let mut cfg = Config::default();
    cfg.hub.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.transport.heartbeat_interval = Duration::from_millis(200);
    cfg.shutdown.grace = Duration::from_millis(300);
    cfg
}

pub struct TestCluster {
    pub cluster: Cluster,
    pub cfg: Config,
}

impl TestCluster {
    pub fn start() -> Self {
        Self::with(config())
    }

    pub fn with(cfg: Config) -> Self {
        cfg.validate().expect("test config is valid");
        let cluster = Cluster::start(&cfg, material()).expect("cluster starts on loopback");
        Self { cluster, cfg }
    }

    pub fn hub(&self) -> SocketAddr {
        self.cluster.hub.addr()
    }

    pub fn client(&self, id: &str) -> Client {
        let mut o = ClientOptions::new(self.cfg.cluster.clone(), ca(), ClientId::new(id).unwrap());
        o.heartbeat_interval = self.cfg.transport.heartbeat_interval;
        o.request_timeout = Duration::from_secs(3);
        Client::new(self.hub(), o).expect("client binds")
    }

    pub fn shards_of(&self, group: GroupId) -> Vec<Shard> {
        self.cluster
            .shards()
            .into_iter()
            .filter(|s| s.group() == group)
            .collect()
    }

    /// Kills `shard` as a crash would, and waits (bounded) until the hub noticed: its link
    /// closed and the directory dropped it.
    pub async fn kill(&self, shard: &Shard) {
        shard.kill();
        for _ in 0..200 {
            let gone = self
                .cluster
                .directory()
                .lock()
                .unwrap()
                .record(shard.id())
                .is_none();
            if gone {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the hub never noticed that {:?} died", shard.id());
    }

    pub fn shard(&self, id: ShardId) -> Shard {
        self.cluster.shard(id).expect("shard exists")
    }

    /// Sessions ever admitted, over all shards.
    pub fn allocations(&self) -> u64 {
        self.cluster
            .shards()
            .iter()
            .map(|s| s.counters().allocations.load(Ordering::Relaxed))
            .sum()
    }

    pub fn tokens(&self) -> TokenKeys {
        TokenKeys::new(
            KeySchedule::new(&ClusterSecret::from_bytes(SECRET)),
            self.cfg.keys.epoch_interval.as_secs(),
        )
    }

    /// Seals a token of our own (the tests know the cluster secret).
    pub fn mint(
        &self,
        group: GroupId,
        secret: [u8; 32],
        sealed_at_ms: u64,
        expires_at_ms: u64,
    ) -> Vec<u8> {
        self.mint_with(group, secret, sealed_at_ms, expires_at_ms, Priority::Normal)
    }

    /// [`Self::mint`] with a priority.
    pub fn mint_with(
        &self,
        group: GroupId,
        secret: [u8; 32],
        sealed_at_ms: u64,
        expires_at_ms: u64,
        priority: Priority,
    ) -> Vec<u8> {
        let claims = Claims {
            id: TokenId(rand16()),
            group,
            client: ClientId::new("minted").unwrap(),
            secret,
            issued_at_ms: sealed_at_ms,
            expires_at_ms,
            priority,
            expect_kbps: 0,
        };
        self.tokens().seal(&claims, sealed_at_ms).unwrap()
    }

    pub async fn shutdown(self) {
        self.cluster.shutdown().await;
    }
}

pub fn rand16() -> [u8; 16] {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut b).unwrap();
    b
}

pub fn now_ms() -> u64 {
    shoal::unix_us() / 1000
}

/// A bare QUIC client for sending hand-made first flights.
pub struct RawClient {
    pub endpoint: quinn::Endpoint,
    pub config: quinn::ClientConfig,
}

impl RawClient {
    pub fn new() -> Self {
        let crypto = shoal::security::tls::client_crypto(&ca()).unwrap();
        let config = shoal::security::tls::client_config(crypto, Duration::from_secs(10)).unwrap();
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        Self { endpoint, config }
    }

    pub async fn connect(&self, addr: SocketAddr) -> quinn::Connection {
        self.endpoint
            .connect_with(self.config.clone(), addr, shoal::DEFAULT_CLUSTER)
            .unwrap()
            .await
            .expect("handshake with a shoal endpoint")
    }

    /// Connects, sends `bytes` on a new bidirectional stream and returns the first frame back
    /// (if any) and the code the connection was closed with (if it was, within 3 s).
    pub async fn exchange(
        &self,
        addr: SocketAddr,
        bytes: &[u8],
    ) -> (Option<Frame>, Option<ErrorCode>, quinn::Connection) {
        let conn = self.connect(addr).await;
        let (mut send, recv) = conn.open_bi().await.unwrap();
        let _ = send.write_all(bytes).await;
        let mut reader = FrameReader::new(recv);
        let frame = first_frame(&mut reader).await;
        let code = close_code_unless(&frame, &conn).await;
        (frame, code, conn)
    }

    /// Attach with `token`, a fresh nonce and a proof for `proof_shard`, sent to `addr`; returns
    /// the close code, or `None` if the shard admitted it.
    pub async fn attach(
        &self,
        addr: SocketAddr,
        token: &[u8],
        secret: &[u8],
        proof_shard: ShardId,
    ) -> Option<ErrorCode> {
        let nonce = rand16();
        let msg = attach_msg(token, secret, proof_shard, nonce);
        let (frame, code, conn) = self.exchange(addr, &encode_control(&msg)).await;
        match frame {
            Some(Frame::Control(Message::Attached(_))) => {
                conn.close(0u32.into(), b"");
                None
            }
            _ => Some(code.expect("a refused attach closes with a shoal code")),
        }
    }
}

/// When no `frame` came: the shoal code `conn` closed with (within 3 s), if any.
pub async fn close_code_unless(
    frame: &Option<Frame>,
    conn: &quinn::Connection,
) -> Option<ErrorCode> {
    if frame.is_some() {
        return None;
    }
    tokio::time::timeout(Duration::from_secs(3), conn.closed())
        .await
        .ok()
        .and_then(|e| ErrorCode::of_close(&e))
}

/// The next frame on `reader` within 3 s, if any.
pub async fn first_frame(reader: &mut FrameReader<quinn::RecvStream>) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(3), reader.next())
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten()
}

pub fn attach_msg(token: &[u8], secret: &[u8], shard: ShardId, nonce: [u8; 16]) -> Message {
    Message::Attach(Attach {
        token: token.to_vec(),
        nonce: nonce.to_vec(),
        proof: shoal::security::proof::attach_proof(secret, shard, &nonce).to_vec(),
    })
}

pub fn payload(n: usize) -> Bytes {
    Bytes::from(vec![7u8; n])
}

/// A UDP relay between one client and one server that records what the client sent.
pub struct Relay {
    pub addr: SocketAddr,
    pub recorded: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    blackholed: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(server: SocketAddr) -> Self {
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(server).await.unwrap();
        let addr = front.local_addr().unwrap();
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let rec = recorded.clone();
        let blackholed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hole = blackholed.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 65536], vec![0u8; 65536]);
            // Bounded: the relay lives as long as the test holds it, at most 10k datagrams.
            for _ in 0..10_000 {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { return };
                        if hole.load(Ordering::Relaxed) {
                            continue;
                        }
                        client = Some(from);
                        rec.lock().unwrap().push(a[..n].to_vec());
                        let _ = back.send(&a[..n]).await;
                    }
                    r = back.recv(&mut b) => {
                        let Ok(n) = r else { return };
                        if hole.load(Ordering::Relaxed) {
                            continue;
                        }
                        if let Some(c) = client {
                            let _ = front.send_to(&b[..n], c).await;
                        }
                    }
                }
            }
        });
        Self {
            addr,
            recorded,
            blackholed,
            task,
        }
    }

    /// Drops everything from now on, both ways: the path goes silent.
    pub fn blackhole(&self) {
        self.blackholed.store(true, Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `n` chunks (bounded in time), checking order and synthetic integrity.
pub async fn read_chunks(
    sub: &mut shoal::client::Subscription,
    stream: &shoal::ids::StreamName,
    n: usize,
) -> Vec<u64> {
    let seed = shoal::synthetic::stream_seed(stream);
    let mut seqs = Vec::with_capacity(n);
    while seqs.len() < n {
        let item = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .expect("chunks keep coming")
            .expect("subscription is open");
        match item.expect("no subscription error") {
            shoal::client::Delivery::Chunk(c) => {
                if stream.is_synthetic() {
                    assert!(
                        shoal::synthetic::verify(seed, c.seq, &c.payload),
                        "payload of {}",
                        c.seq
                    );
                }
                seqs.push(c.seq.get());
            }
            shoal::client::Delivery::Gap { from, to } => panic!("unexpected gap {from}..{to}"),
        }
    }
    seqs
}

pub fn assert_contiguous(seqs: &[u64]) {
    for w in seqs.windows(2) {
        assert_eq!(w[1], w[0] + 1, "sequence jumps in {seqs:?}");
    }
}

/// A bare client that holds tickets for the shards of its grant (the hub copied its session
/// entries there before the grant left).
pub struct EarlyClient {
    pub raw: RawClient,
    pub grant: shoal::wire::Grant,
}

/// What one early attempt saw.
#[derive(Debug)]
pub struct Early {
    /// The shard accepted the early data.
    pub accepted: bool,
    pub frame: Option<Frame>,
    /// The code the connection closed with (within 3 s), if it closed.
    pub code: Option<ErrorCode>,
    pub conn: quinn::Connection,
}

impl EarlyClient {
    pub async fn new(tc: &TestCluster, id: &str) -> Self {
        let raw = RawClient::new();
        let conn = raw.connect(tc.hub()).await;
        let req = Message::StreamRequest(shoal::wire::StreamRequest {
            client_id: shoal::ids::ClientId::new(id).unwrap(),
            stream: shoal::ids::StreamName::new("synth/early").unwrap(),
            role: shoal::wire::Role::Subscribe,
            hints: Default::default(),
        });
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&encode_control(&req)).await.unwrap();
        let _ = send.finish();
        let mut reader = FrameReader::new(recv);
        let grant = match first_frame(&mut reader).await {
            Some(Frame::Control(Message::Grant(g))) => g,
            other => panic!("expected a grant, got {other:?}"),
        };
        conn.close(0u32.into(), b"");
        Self { raw, grant }
    }

    pub fn shard(&self, rank: usize) -> (ShardId, SocketAddr) {
        let s = &self.grant.shards[rank];
        (s.id, s.addr.parse().unwrap())
    }

    /// Connects to `addr` resuming a ticket, writes `bytes` as early data and reports what
    /// happened.
    pub async fn early(&self, addr: std::net::SocketAddr, bytes: &[u8]) -> Early {
        let connecting = self
            .raw
            .endpoint
            .connect_with(self.raw.config.clone(), addr, shoal::DEFAULT_CLUSTER)
            .unwrap();
        let (conn, accepted) = connecting
            .into_0rtt()
            .unwrap_or_else(|_| panic!("the client holds a ticket for {addr}"));
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(bytes).await.unwrap();
        let mut reader = FrameReader::new(recv);
        let frame = first_frame(&mut reader).await;
        let accepted = accepted.await;
        let code = close_code_unless(&frame, &conn).await;
        Early {
            accepted,
            frame,
            code,
            conn,
        }
    }
}

// ---- Helpers of the remote-shard tests (tests/it/remote.rs) ----

/// A UDP port on loopback that was free a moment ago.
pub fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// Polls `cond` every 10 ms until it holds or `within` passed; whether it held.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = shoal::clock::tokio_now() + within;
    loop {
        if cond() {
            return true;
        }
        if shoal::clock::tokio_now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
