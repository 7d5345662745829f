//! A userspace UDP relay that delays every datagram by a fixed one-way time (tc netem does not
//! exist on the machines this runs on). Constant delay keeps the order of datagrams.
//!
//! Each client address gets its own upstream socket, so the server sees one peer per client.
//! Queues are bounded; a datagram that finds its queue full is dropped and counted.
//!
//! Fault injection for tests and the failover bench: [`DelayRelay::set_blackhole`] drops every
//! datagram in both directions from that moment on (queued ones included), as a dead link
//! would; [`DelayRelay::rebind`] gives every client a new upstream socket, as a NAT that
//! rebinds would, so the server sees the client move to a new address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

const QUEUE: usize = 8192;
/// Distinct clients one relay serves; more are dropped (a bench never needs that many).
const MAX_PEERS: usize = 4096;

/// A running relay; dropping it stops it.
pub struct DelayRelay {
    addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Faults {
    blackhole: AtomicBool,
    /// Bumped by `rebind`: the relay drops its upstream sockets and makes new ones.
    generation: AtomicU64,
}

impl DelayRelay {
    /// Relays to `target`, delaying each direction by `one_way`.
    pub async fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<DelayRelay> {
        let front = Arc::new(UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?);
        let addr = front.local_addr()?;
        let dropped = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(Faults::default());
        let task = tokio::spawn(run(front, target, one_way, dropped.clone(), faults.clone()));
        Ok(DelayRelay {
            addr,
            dropped,
            faults,
            task,
        })
    }

    /// Drops every datagram, both ways, while `on`.
    pub fn set_blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
    }

    /// New upstream sockets for every client from the next datagram on (a NAT rebinding).
    pub fn rebind(&self) {
        self.faults.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Datagrams dropped because a queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Delayed = (Instant, Bytes, SocketAddr);

/// Sends each queued datagram when it is due (unless the link is blackholed by then).
async fn sender(socket: Arc<UdpSocket>, mut rx: mpsc::Receiver<Delayed>, faults: Arc<Faults>) {
    while let Some((due, data, to)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if !faults.blackhole.load(Ordering::SeqCst) {
            let _ = socket.send_to(&data, to).await;
        }
    }
}

async fn run(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    one_way: Duration,
    dropped: Arc<AtomicU64>,
    faults: Arc<Faults>,
) {
    let (back_tx, back_rx) = mpsc::channel::<Delayed>(QUEUE);
    // Aborted when this task ends or is aborted.
    let mut tasks = Tasks(vec![tokio::spawn(sender(
        front.clone(),
        back_rx,
        faults.clone(),
    ))]);
    let mut peers: HashMap<SocketAddr, mpsc::Sender<Delayed>> = HashMap::new();
    let mut generation = 0;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, from)) = front.recv_from(&mut buf).await else {
            break;
        };
        let g = faults.generation.load(Ordering::SeqCst);
        if g != generation {
            generation = g;
            // Old upstream sockets keep forwarding late answers; new datagrams use new ones.
            peers.clear();
        }
        let data = Bytes::copy_from_slice(&buf[..n]);
        let due = crate::clock::tokio_now() + one_way;
        if !peers.contains_key(&from) {
            if peers.len() >= MAX_PEERS {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(up) = upstream(target).await else {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let up = Arc::new(up);
            let (tx, rx) = mpsc::channel::<Delayed>(QUEUE);
            tasks
                .0
                .push(tokio::spawn(sender(up.clone(), rx, faults.clone())));
            // Answers from the server go back to this client, delayed the same way.
            let (back_tx, dropped) = (back_tx.clone(), dropped.clone());
            tasks.0.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65_536];
                while let Ok(n) = up.recv(&mut buf).await {
                    let item = (
                        crate::clock::tokio_now() + one_way,
                        Bytes::copy_from_slice(&buf[..n]),
                        from,
                    );
                    if back_tx.try_send(item).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
            peers.insert(from, tx);
        }
        if let Some(tx) = peers.get(&from) {
            if tx.try_send((due, data, target)).is_err() {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn upstream(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let up = UdpSocket::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    up.connect(target).await?;
    Ok(up)
}

struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
