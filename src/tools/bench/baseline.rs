//! The raw-quinn baseline: a minimal server and client doing the same work as shoal with the
//! same crypto (the TLS configuration of [`crate::security::tls`], the same stateful session store type,
//! the same number of tickets per handshake), the same transport settings and the same socket
//! buffers — and nothing else: no tokens, no placement, no framing beyond a length.
//!
//! Requests are `op u8 | len u32 | body`. `R`: answer `response_bytes` bytes and finish.
//! `F`: open a unidirectional stream and push the synthetic chunks (`len u32 | seq u64 |
//! ts u64 | payload`) at the configured rate until the connection closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;

use super::BenchError;
use crate::cluster::Material;
use crate::synthetic::SyntheticSpec;
use crate::tickets::SessionStore;
use crate::wire::Chunk;

/// How the baseline server behaves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BaselineSpec {
    /// TLS tickets per handshake (the shoal endpoint it stands for sends as many).
    pub tickets: usize,
    pub response_bytes: usize,
    pub rate_hz: u32,
    pub chunk_bytes: u32,
}

pub const OP_REQUEST: u8 = b'R';
pub const OP_FANOUT: u8 = b'F';
/// Bytes in front of each pushed payload.
pub const PUSH_HEADER: usize = 20;
const MAX_REQUEST: usize = 64 * 1024;

/// A running baseline server.
pub struct Server {
    endpoint: quinn::Endpoint,
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    pub fn start(spec: &BaselineSpec, m: Material) -> Result<Server, BenchError> {
        let err = |e: &dyn std::fmt::Display| BenchError::Child(format!("baseline server: {e}"));
        let cfg = crate::cluster::config::Config::default();
        let store = Arc::new(SessionStore::new(
            cfg.streams.session_store_entries,
            cfg.streams.session_ttl,
        ));
        let crypto = crate::security::tls::server_crypto(m.chain, m.key, store, spec.tickets)
            .map_err(|e| err(&e))?;
        let quic =
            quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| err(&e))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(quic));
        sc.transport_config(crate::security::tls::transport_config(
            cfg.transport.idle_timeout,
        ));
        let (endpoint, addr) = crate::net::server_endpoint(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            cfg.shards.socket_buffer_bytes,
            quinn::EndpointConfig::default(),
            sc,
        )
        .map_err(|e| err(&e))?;
        let (chunks, _) = broadcast::channel::<Chunk>(1024);
        let synthetic = SyntheticSpec {
            rate_hz: spec.rate_hz.max(1),
            chunk_bytes: spec.chunk_bytes,
        };
        let producer = tokio::spawn(produce(synthetic, chunks.clone()));
        let response = Bytes::from(vec![0x5a; spec.response_bytes]);
        let accept = tokio::spawn(accept_loop(endpoint.clone(), response, chunks));
        Ok(Server {
            endpoint,
            addr,
            tasks: vec![producer, accept],
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(0u32.into(), b"");
    }
}

/// One synthetic stream, produced only while someone listens (as a shard's stream is).
async fn produce(spec: SyntheticSpec, tx: broadcast::Sender<Chunk>) {
    let seed = 0x5eed;
    let mut tick = tokio::time::interval(Duration::from_micros(spec.period_us()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if tx.receiver_count() > 0 {
            let _ = tx.send(spec.chunk_seeded(seed, spec.live_seq(crate::unix_us())));
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, response: Bytes, chunks: broadcast::Sender<Chunk>) {
    while let Some(incoming) = endpoint.accept().await {
        let (response, chunks) = (response.clone(), chunks.clone());
        tokio::spawn(async move {
            // 0.5-RTT answers, as the shoal hub and shards give.
            let Ok(conn) = crate::net::accept_early(incoming).await else {
                return;
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let (conn, response, chunks) = (conn.clone(), response.clone(), chunks.clone());
                tokio::spawn(async move {
                    let _ = serve_stream(conn, send, recv, response, chunks).await;
                });
            }
        });
    }
}

async fn serve_stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    response: Bytes,
    chunks: broadcast::Sender<Chunk>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let op = recv.read_u8().await?;
    let len = recv.read_u32().await? as usize;
    if len > MAX_REQUEST {
        return Err("request too large".into());
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    match op {
        OP_REQUEST => {
            send.write_all(&response).await?;
            send.finish()?;
        }
        OP_FANOUT => {
            let _ = send.finish();
            let mut rx = chunks.subscribe();
            let mut uni = conn.open_uni().await?;
            loop {
                let c = match rx.recv().await {
                    Ok(c) => c,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let mut h = BytesMut::with_capacity(PUSH_HEADER);
                h.put_u32(c.payload.len() as u32);
                h.put_u64(c.seq.get());
                h.put_u64(c.timestamp_us);
                uni.write_all_chunks(&mut [h.freeze(), c.payload]).await?;
            }
        }
        _ => return Err("unknown op".into()),
    }
    Ok(())
}

/// Sends one request of `request_bytes` body bytes and reads the whole answer; returns its
/// length.
pub async fn request(conn: &quinn::Connection, request_bytes: usize) -> Result<usize, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Load(format!("baseline request: {e}"));
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| err(&e))?;
    let mut req = BytesMut::with_capacity(5 + request_bytes);
    req.put_u8(OP_REQUEST);
    req.put_u32(request_bytes as u32);
    req.put_bytes(0xa5, request_bytes);
    send.write_all(&req).await.map_err(|e| err(&e))?;
    let _ = send.finish();
    let answer = recv.read_to_end(1 << 20).await.map_err(|e| err(&e))?;
    Ok(answer.len())
}

/// Asks for the pushed stream; returns the unidirectional stream it arrives on.
pub async fn fan_in(conn: &quinn::Connection) -> Result<quinn::RecvStream, BenchError> {
    let err = |e: &dyn std::fmt::Display| BenchError::Load(format!("baseline fan-out: {e}"));
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| err(&e))?;
    send.write_all(&[OP_FANOUT, 0, 0, 0, 0])
        .await
        .map_err(|e| err(&e))?;
    let _ = send.finish();
    conn.accept_uni().await.map_err(|e| err(&e))
}

/// Reads one pushed chunk; returns its payload length, or `None` at the end of the stream.
pub async fn read_pushed(
    recv: &mut quinn::RecvStream,
    buf: &mut Vec<u8>,
) -> Result<Option<usize>, BenchError> {
    let mut h = [0u8; PUSH_HEADER];
    match recv.read_exact(&mut h).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(BenchError::Load(format!("baseline fan-out read: {e}"))),
    }
    let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len > crate::wire::MAX_CHUNK_PAYLOAD {
        return Err(BenchError::Load("baseline pushed an oversize chunk".into()));
    }
    buf.resize(len, 0);
    recv.read_exact(buf)
        .await
        .map_err(|e| BenchError::Load(format!("baseline fan-out read: {e}")))?;
    Ok(Some(len))
}
