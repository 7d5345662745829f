//! The memory scenario: shard memory per idle attached client against raw quinn, and the
//! slope of that cost between two sizes.

use std::time::Duration;

use super::baseline;
use super::child::{ChildServer, ServerSpec};
use super::load::{self, Target};
use super::scenarios::{alternate, default_shoal, quinn_spec, report, Progress, WORKERS};
use super::{median, BenchError, BenchOptions, Figure, Round, Scenario};

/// Shard memory per idle attached client against a raw-quinn idle connection, at `n` idle
/// clients and (unless quick, for `n` ≥ 1000) at `n / 10`: the slope between the two sizes
/// (KiB per added client) says whether a side's cost per client grows with the number of
/// clients. Fresh children every round: freed memory stays with the allocator, so a reused
/// child would under-count.
pub async fn memory(opts: &BenchOptions, p: Progress<'_>) -> Result<Figure, BenchError> {
    let s = Scenario::Memory;
    let n = if opts.quick {
        100
    } else {
        opts.idle_clients.max(1)
    };
    let small = (!opts.quick && n >= 1000).then_some(n / 10);
    // Per round: (shoal, quinn) each as (KiB in all, connections held).
    let sizes = |n: usize| async move {
        let mut per = Vec::new();
        for r in 0..opts.rounds {
            let mut sides = ((0.0, 0), (0.0, 0));
            let round = alternate(
                r,
                async {
                    sides.0 = shoal_idle(opts, n).await?;
                    Ok(sides.0 .0 / sides.0 .1.max(1) as f64)
                },
                async {
                    sides.1 = quinn_idle(opts, n).await?;
                    Ok(sides.1 .0 / sides.1 .1.max(1) as f64)
                },
            )
            .await?;
            per.push((round, sides));
        }
        Ok::<_, BenchError>(per)
    };
    let big = sizes(n).await?;
    for (r, (round, _)) in big.iter().enumerate() {
        report(p, s, r, opts.rounds, round, "KiB/conn");
    }
    let rounds: Vec<Round> = big.iter().map(|b| b.0).collect();
    let open: Vec<f64> = big.iter().map(|b| (b.1 .0 .1) as f64).collect();
    let mut f = Figure::new(s, "server_kib_per_idle_conn", &rounds);
    if let Some(m) = small {
        let low = sizes(m).await?;
        // KiB per added client between the two sizes, round by round.
        // Not a number when the larger run held no more sessions than the smaller one.
        let slope = |a: (f64, usize), b: (f64, usize)| match a.1.checked_sub(b.1) {
            Some(d) if d > 0 => (a.0 - b.0) / d as f64,
            _ => f64::NAN,
        };
        let (mut sh, mut qu) = (Vec::new(), Vec::new());
        for ((_, hi), (_, lo)) in big.iter().zip(&low) {
            sh.push(slope(hi.0, lo.0));
            qu.push(slope(hi.1, lo.1));
        }
        let (sh, qu) = (median(sh), median(qu));
        p(&format!(
            "memory: slope {m} → {n} idle clients: shoal {sh:.1} KiB/client, raw quinn {qu:.1} (ratio {:.3})",
            sh / qu.max(1e-9)
        ));
        f = f
            .with("small_idle_clients", m as f64)
            .with("small_kib_per_conn", median(low.iter().map(|l| l.0.shoal)))
            .with(
                "small_baseline_kib_per_conn",
                median(low.iter().map(|l| l.0.baseline)),
            )
            .with("slope_kib_per_client", sh)
            .with("baseline_slope_kib_per_client", qu)
            .with("slope_ratio", sh / qu.max(1e-9));
    }
    Ok(
        f.with("kib_per_conn", median(rounds.iter().map(|r| r.shoal)))
            .with(
                "baseline_kib_per_conn",
                median(rounds.iter().map(|r| r.baseline)),
            )
            .with("idle_clients", n as f64)
            .with("sessions_open_at_measure", median(open)),
    )
}

const PER_CLIENT: usize = 100;

/// The heartbeat interval of the memory scenario's shards and clients: 20,000 idle sessions at
/// the default 500 ms are 40,000 heartbeats a second each way, more than the 2-core load
/// generator keeps up with while it attaches (sessions it is late for are closed as dead and
/// would not be counted). The memory a session holds does not depend on it.
const IDLE_HEARTBEAT: Duration = Duration::from_secs(5);

async fn settle_rss(child: &ChildServer) -> Result<u64, BenchError> {
    tokio::time::sleep(Duration::from_millis(1000)).await;
    child.rss()
}

/// KiB of server RSS the idle attached sessions took in all, and how many were open when
/// measured.
async fn shoal_idle(opts: &BenchOptions, n: usize) -> Result<(f64, usize), BenchError> {
    let (mut spec, _link) = default_shoal(opts).await?;
    if let ServerSpec::Shoal { heartbeat_ms, .. } = &mut spec {
        *heartbeat_ms = Some(IDLE_HEARTBEAT.as_millis() as u64);
    }
    let child = ChildServer::spawn(&opts.exe, &spec).await?;
    let mut t = Target::of(&child, 0);
    t.heartbeat = Some(IDLE_HEARTBEAT);
    let clients = load::granted_clients(&t, n.div_ceil(PER_CLIENT), WORKERS).await?;
    // Warm the shards' lazily built state, then measure from there.
    for (c, reply) in clients.iter() {
        for rank in 0..reply.grant.shards.len() {
            let _ = c.attach(reply, rank).await;
        }
    }
    let rss0 = settle_rss(&child).await?;
    let c = clients.clone();
    let results = load::par(n, 32, move |i| {
        let c = c.clone();
        async move {
            let (client, reply) = &c[i % c.len()];
            let rank = (i / c.len()) % reply.grant.shards.len();
            client
                .attach(reply, rank)
                .await
                .map_err(|e| BenchError::Load(format!("attach: {e}")))
        }
    })
    .await;
    let sessions = load::mostly_ok(results, "idle attaches")?;
    let rss1 = settle_rss(&child).await?;
    let held = sessions.iter().filter(|s| s.is_open()).count();
    drop(sessions);
    load::close_all(&clients).await;
    child.stop().await;
    Ok((rss1.saturating_sub(rss0) as f64 / 1024.0, held))
}

async fn quinn_idle(opts: &BenchOptions, n: usize) -> Result<(f64, usize), BenchError> {
    // As many tickets per handshake as a shard sends: both sides store what they issue.
    let tickets = crate::cluster::config::Config::default()
        .shards
        .tickets_per_handshake;
    let child = ChildServer::spawn(&opts.exe, &quinn_spec(tickets, 64)).await?;
    let t = Target::of(&child, 0);
    let eps = load::ticketed_endpoints(&t, n.div_ceil(PER_CLIENT), WORKERS).await?;
    let rss0 = settle_rss(&child).await?;
    let (t2, e) = (t.clone(), eps.clone());
    let results = load::par(n, 32, move |i| {
        let (t, e) = (t2.clone(), e.clone());
        async move {
            let (conn, _) = t.quinn_connect(&e[i % e.len()]).await?;
            baseline::request(&conn, 16).await?;
            Ok(conn)
        }
    })
    .await;
    let conns = load::mostly_ok(results, "baseline idle connections")?;
    let rss1 = settle_rss(&child).await?;
    let held = conns.iter().filter(|c| c.close_reason().is_none()).count();
    drop(conns);
    load::close_endpoints(&eps).await;
    child.stop().await;
    Ok((rss1.saturating_sub(rss0) as f64 / 1024.0, held))
}
