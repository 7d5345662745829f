//! The load side of the benchmarks: shoal clients and raw-quinn clients doing the same work,
//! a bounded worker pool, and CPU / memory measurement around a piece of work.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;

use super::baseline;
use super::child::ChildServer;
use super::BenchError;
use crate::client::{Client, ClientOptions, GrantReply};
use crate::ids::{ClientId, StreamName};
use crate::wire::Role;

/// How a load-side client reaches a child's cluster.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub ca: Vec<CertificateDer<'static>>,
    pub cluster: String,
    /// The clients' heartbeat interval (default: the client's).
    pub heartbeat: Option<Duration>,
}

impl Target {
    pub fn of(child: &ChildServer, i: usize) -> Target {
        Target {
            addr: child.addr(i),
            ca: child.ca(),
            cluster: child.ready.cluster.clone(),
            heartbeat: None,
        }
    }

    /// A fresh shoal client (its own socket and TLS configuration: no tickets yet).
    pub fn shoal_client(&self, id: usize) -> Result<Client, BenchError> {
        let id = ClientId::new(format!("bench-{id}")).expect("bench client ids are valid");
        let mut o = ClientOptions::new(self.cluster.clone(), self.ca.clone(), id);
        o.bind = SocketAddr::from(([127, 0, 0, 1], 0));
        if let Some(h) = self.heartbeat {
            o.heartbeat_interval = h;
        }
        Client::new(self.addr, o).map_err(|e| BenchError::Load(format!("client: {e}")))
    }

    /// A fresh raw-quinn client endpoint with the same TLS and transport settings.
    pub fn quinn_endpoint(&self) -> Result<quinn::Endpoint, BenchError> {
        let err = |e: &dyn std::fmt::Display| BenchError::Load(format!("baseline client: {e}"));
        let crypto = crate::security::tls::client_crypto(&self.ca).map_err(|e| err(&e))?;
        let cfg = crate::security::tls::client_config(crypto, Duration::from_secs(30))
            .map_err(|e| err(&e))?;
        let mut ep =
            quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).map_err(|e| err(&e))?;
        ep.set_default_client_config(cfg);
        Ok(ep)
    }

    /// A baseline connection: 0-RTT when the endpoint holds a ticket. Returns it with whether
    /// 0-RTT was accepted (resolved after the handshake).
    pub async fn quinn_connect(
        &self,
        ep: &quinn::Endpoint,
    ) -> Result<(quinn::Connection, Early), BenchError> {
        let err = |e: &dyn std::fmt::Display| BenchError::Load(format!("baseline connect: {e}"));
        let connecting = ep.connect(self.addr, &self.cluster).map_err(|e| err(&e))?;
        Ok(match connecting.into_0rtt() {
            Ok((conn, accepted)) => (conn, Early::Attempted(accepted)),
            Err(connecting) => (connecting.await.map_err(|e| err(&e))?, Early::No),
        })
    }
}

/// Whether a baseline connection tried 0-RTT.
pub enum Early {
    No,
    Attempted(quinn::ZeroRttAccepted),
}

impl Early {
    pub async fn accepted(self) -> bool {
        match self {
            Early::No => false,
            Early::Attempted(a) => a.await,
        }
    }
}

/// Runs `f(0..n)` on `workers` concurrent tasks; returns the results in index order.
pub async fn par<T, F, Fut>(n: usize, workers: usize, f: F) -> Vec<Result<T, BenchError>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, BenchError>> + Send,
{
    let f = Arc::new(f);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers.clamp(1, n.max(1)) {
        let (f, next) = (f.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                out.push((i, f(i).await));
            }
            out
        }));
    }
    let mut all: Vec<(usize, Result<T, BenchError>)> = Vec::with_capacity(n);
    for t in tasks {
        match t.await {
            Ok(v) => all.extend(v),
            Err(e) => all.push((usize::MAX, Err(BenchError::Load(format!("worker: {e}"))))),
        }
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// The successes; fails when more than 1 % of the operations failed (with the first error).
pub fn mostly_ok<T>(results: Vec<Result<T, BenchError>>, what: &str) -> Result<Vec<T>, BenchError> {
    let n = results.len();
    let mut ok = Vec::with_capacity(n);
    let mut first = None;
    let mut failed = 0;
    for r in results {
        match r {
            Ok(v) => ok.push(v),
            Err(e) => {
                failed += 1;
                first.get_or_insert(e);
            }
        }
    }
    if failed * 100 > n || ok.is_empty() {
        let e = first.map_or_else(|| "nothing ran".to_string(), |e| e.to_string());
        return Err(BenchError::Load(format!(
            "{failed} of {n} {what} failed; first: {e}"
        )));
    }
    Ok(ok)
}

/// Server CPU microseconds per successful operation of `work`, which returns that count and
/// anything else the caller wants back.
pub async fn cpu_per_op<T, Fut>(child: &ChildServer, work: Fut) -> Result<(f64, T), BenchError>
where
    Fut: Future<Output = Result<(usize, T), BenchError>>,
{
    let (cpu, extra) = cpu_split_per_op(child, work).await?;
    Ok((cpu.tree, extra))
}

/// Server CPU per operation, of the whole process tree and of the child alone.
#[derive(Clone, Copy, Debug)]
pub struct CpuPerOp {
    /// The child and its shard processes, in µs per operation.
    pub tree: f64,
    /// The child alone (the hub, when shards are processes), in µs per operation.
    pub own: f64,
}

/// [`cpu_per_op`], with the child's own share beside the tree's.
pub async fn cpu_split_per_op<T, Fut>(
    child: &ChildServer,
    work: Fut,
) -> Result<(CpuPerOp, T), BenchError>
where
    Fut: Future<Output = Result<(usize, T), BenchError>>,
{
    let (t0, o0) = (child.cpu()?, child.own_cpu()?);
    let (ops, extra) = work.await?;
    // Let closes and acknowledgements in flight be processed inside the window.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (t1, o1) = (child.cpu()?, child.own_cpu()?);
    let per_op = |d: Duration| d.as_secs_f64() * 1e6 / ops.max(1) as f64;
    let cpu = CpuPerOp {
        tree: per_op(t1.saturating_sub(t0)),
        own: per_op(o1.saturating_sub(o0)),
    };
    Ok((cpu, extra))
}

/// Fresh shoal clients each asking for one grant, `workers` at a time; returns the count.
pub async fn shoal_grants(
    t: &Target,
    first_id: usize,
    n: usize,
    workers: usize,
) -> Result<usize, BenchError> {
    let t = t.clone();
    let results = par(n, workers, move |i| {
        let t = t.clone();
        async move {
            let c = t.shoal_client(first_id + i)?;
            let r = c.request(&stream(i), Role::Subscribe).await;
            c.close().await;
            r.map(|_| ())
                .map_err(|e| BenchError::Load(format!("grant: {e}")))
        }
    })
    .await;
    Ok(mostly_ok(results, "grants")?.len())
}

/// Fresh raw-quinn clients each doing a full handshake and one request.
pub async fn quinn_requests(
    t: &Target,
    n: usize,
    workers: usize,
    request_bytes: usize,
) -> Result<usize, BenchError> {
    let t = t.clone();
    let results = par(n, workers, move |_| {
        let t = t.clone();
        async move {
            let ep = t.quinn_endpoint()?;
            let (conn, _) = t.quinn_connect(&ep).await?;
            let r = baseline::request(&conn, request_bytes).await;
            conn.close(0u32.into(), b"");
            let _ = tokio::time::timeout(Duration::from_secs(1), ep.wait_idle()).await;
            r.map(|_| ())
        }
    })
    .await;
    Ok(mostly_ok(results, "baseline requests")?.len())
}

/// The stream the `i`th bench client asks for.
pub fn stream(i: usize) -> StreamName {
    StreamName::new(format!("synth/bench-{}", i % 8)).expect("bench stream names are valid")
}

/// `n` shoal clients, each holding a grant (and the hub's tickets).
pub async fn granted_clients(
    t: &Target,
    n: usize,
    workers: usize,
) -> Result<Arc<Vec<(Client, GrantReply)>>, BenchError> {
    let t = t.clone();
    let results = par(n, workers, move |i| {
        let t = t.clone();
        async move {
            let c = t.shoal_client(i)?;
            let r = c
                .request(&stream(i), Role::Subscribe)
                .await
                .map_err(|e| BenchError::Load(format!("grant: {e}")))?;
            Ok((c, r))
        }
    })
    .await;
    Ok(Arc::new(mostly_ok(results, "grants")?))
}

/// Closes every client.
pub async fn close_all(clients: &[(Client, GrantReply)]) {
    let eps: Vec<quinn::Endpoint> = clients.iter().map(|(c, _)| c.endpoint().clone()).collect();
    close_endpoints(&eps).await;
}

/// Each client attaches once to the first shard of its grant and detaches; returns the count
/// and how many attaches rode in accepted 0-RTT.
pub async fn shoal_attaches(
    clients: &Arc<Vec<(Client, GrantReply)>>,
    workers: usize,
) -> Result<(usize, usize), BenchError> {
    let c = clients.clone();
    let results = par(clients.len(), workers, move |i| {
        let c = c.clone();
        async move {
            let (client, reply) = &c[i];
            let s = client
                .attach(reply, 0)
                .await
                .map_err(|e| BenchError::Load(format!("attach: {e}")))?;
            Ok(s.zero_rtt)
        }
    })
    .await;
    let ok = mostly_ok(results, "attaches")?;
    Ok((ok.len(), ok.iter().filter(|z| **z).count()))
}

/// `n` raw-quinn endpoints, each having done one full handshake and request (so each holds
/// tickets, as a granted shoal client does).
pub async fn ticketed_endpoints(
    t: &Target,
    n: usize,
    workers: usize,
) -> Result<Arc<Vec<quinn::Endpoint>>, BenchError> {
    let t = t.clone();
    let results = par(n, workers, move |_| {
        let t = t.clone();
        async move {
            let ep = t.quinn_endpoint()?;
            let (conn, _) = t.quinn_connect(&ep).await?;
            baseline::request(&conn, 16).await?;
            conn.close(0u32.into(), b"");
            Ok(ep)
        }
    })
    .await;
    Ok(Arc::new(mostly_ok(results, "baseline handshakes")?))
}

/// Each endpoint connects again (0-RTT), sends one request of `request_bytes` and closes;
/// returns the count and how many rode in accepted 0-RTT.
pub async fn quinn_attaches(
    t: &Target,
    eps: &Arc<Vec<quinn::Endpoint>>,
    workers: usize,
    request_bytes: usize,
) -> Result<(usize, usize), BenchError> {
    let (t, e) = (t.clone(), eps.clone());
    let results = par(eps.len(), workers, move |i| {
        let (t, e) = (t.clone(), e.clone());
        async move {
            let (conn, early) = t.quinn_connect(&e[i]).await?;
            let r = baseline::request(&conn, request_bytes).await;
            let accepted = early.accepted().await;
            conn.close(0u32.into(), b"");
            r.map(|_| accepted)
        }
    })
    .await;
    let ok = mostly_ok(results, "baseline attaches")?;
    Ok((ok.len(), ok.iter().filter(|z| **z).count()))
}

/// Closes every endpoint and waits (bounded) for them to go idle.
pub async fn close_endpoints(eps: &[quinn::Endpoint]) {
    for e in eps {
        e.close(0u32.into(), b"");
    }
    for e in eps {
        let _ = tokio::time::timeout(Duration::from_secs(1), e.wait_idle()).await;
    }
}
