//! The CPU, time-to-first-byte and fan-out scenarios. Each spawns its children, warms both
//! sides up, runs its rounds with the order of shoal and baseline alternating, and returns the
//! median figures.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::baseline::{self, BaselineSpec};
use super::child::{ChildServer, ServerSpec};
use super::load::{self, cpu_per_op, Target};
use super::relay::DelayRelay;
use super::{median, BenchError, BenchOptions, Figure, Round, Scenario};
use crate::client::Delivery;
use crate::cluster::config::Config;
use crate::ids::{ClientId, StreamName};
use crate::wire::{
    encode_control, Attach, Attached, Message, Role, StreamRequest, CHUNK_HEADER_LEN,
};

/// Concurrent operations in the CPU scenarios.
pub(super) const WORKERS: usize = 16;

pub(super) type Progress<'a> = &'a mut (dyn FnMut(&str) + Send);

fn shoal_spec(prefill_tickets: usize, rate_hz: u32, chunk_bytes: u32) -> ServerSpec {
    let d = Config::default().streams;
    ServerSpec::Shoal {
        prefill_tickets,
        store_entries: d.session_store_entries.max(prefill_tickets + 50_000),
        rate_hz,
        chunk_bytes,
        remote: None,
        production_limits: false,
        heartbeat_ms: None,
    }
}

/// The default cluster; with `--remote-shards`, its shards as processes whose control link
/// goes through a delay relay in this process (kept alive by the returned value).
pub(super) async fn default_shoal(
    opts: &BenchOptions,
) -> Result<(ServerSpec, Option<DelayRelay>), BenchError> {
    let d = Config::default().streams;
    let mut spec = shoal_spec(0, d.synthetic_rate_hz, d.synthetic_chunk_bytes);
    let Some(delay) = opts.remote_link_delay else {
        return Ok((spec, None));
    };
    let io = |e: std::io::Error| BenchError::Load(format!("link relay: {e}"));
    let control = super::child::reserve_udp_port().map_err(io)?;
    let relay = DelayRelay::start(control, delay).await.map_err(io)?;
    if let ServerSpec::Shoal { remote, .. } = &mut spec {
        *remote = Some(super::child::RemoteShards {
            control,
            hub_link: relay.addr(),
        });
    }
    Ok((spec, Some(relay)))
}

pub(super) fn quinn_spec(tickets: usize, response_bytes: usize) -> ServerSpec {
    let d = Config::default().streams;
    ServerSpec::Quinn(BaselineSpec {
        tickets,
        response_bytes,
        rate_hz: d.synthetic_rate_hz,
        chunk_bytes: d.synthetic_chunk_bytes,
    })
}

/// Runs `a` (shoal) and `b` (the baseline) one after the other, in the order the round asks
/// for (even rounds: shoal first), and returns their outputs in that order.
pub(super) async fn in_round_order<A, B>(round: usize, a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future,
    B: std::future::Future,
{
    if round % 2 == 0 {
        let s = a.await;
        (s, b.await)
    } else {
        let q = b.await;
        (a.await, q)
    }
}

/// [`in_round_order`] for two figures, except that the first side's error ends the round
/// before the second side runs.
pub(super) async fn alternate<A, B>(round: usize, a: A, b: B) -> Result<Round, BenchError>
where
    A: std::future::Future<Output = Result<f64, BenchError>>,
    B: std::future::Future<Output = Result<f64, BenchError>>,
{
    let (shoal, baseline) = if round % 2 == 0 {
        let s = a.await?;
        (s, b.await?)
    } else {
        let q = b.await?;
        (a.await?, q)
    };
    Ok(Round { shoal, baseline })
}

/// A count of operations, with nothing else to return.
async fn ops(
    work: impl std::future::Future<Output = Result<usize, BenchError>>,
) -> Result<(usize, ()), BenchError> {
    Ok((work.await?, ()))
}

pub(super) fn report(p: Progress<'_>, s: Scenario, r: usize, of: usize, round: &Round, unit: &str) {
    p(&format!(
        "{} round {}/{}: shoal {:.2} {unit}, baseline {:.2} {unit}, ratio {:.3}",
        s.name(),
        r + 1,
        of,
        round.shoal,
        round.baseline,
        round.ratio()
    ));
}

/// The sizes of a real grant to a fresh client: its request, its answer (the grant and the
/// first chunks it carries), and the token it holds.
pub(super) async fn grant_sizes(t: &Target) -> Result<(usize, usize, usize), BenchError> {
    let probe = t.shoal_client(0)?;
    let stream = load::stream(0);
    let reply = probe.request(&stream, Role::Subscribe).await;
    probe.close().await;
    let reply = reply.map_err(|e| BenchError::Load(format!("probe grant: {e}")))?;
    let request_bytes = encode_control(&Message::StreamRequest(StreamRequest {
        client_id: ClientId::new("bench-0").expect("valid"),
        stream,
        role: Role::Subscribe,
        hints: Default::default(),
    }))
    .len();
    let response_bytes = encode_control(&Message::Grant(reply.grant.clone())).len()
        + reply
            .first_chunks
            .iter()
            .map(|c| CHUNK_HEADER_LEN + c.payload.len())
            .sum::<usize>();
    Ok((request_bytes, response_bytes, reply.grant.token.len()))
}

/// Hub CPU per grant to a fresh client, against a full handshake plus one request/response of
/// the same sizes.
pub async fn grant(opts: &BenchOptions, p: Progress<'_>) -> Result<Figure, BenchError> {
    let s = Scenario::Grant;
    let (spec, _link) = default_shoal(opts).await?;
    let shoal = ChildServer::spawn(&opts.exe, &spec).await?;
    let ts = Target::of(&shoal, 0);
    // The baseline moves as many bytes as a real grant does.
    let (request_bytes, response_bytes, _) = grant_sizes(&ts).await?;
    let tickets = Config::default().hub.tickets_per_handshake;
    let quinn = ChildServer::spawn(&opts.exe, &quinn_spec(tickets, response_bytes)).await?;
    let tq = Target::of(&quinn, 0);
    let n = opts.ops();
    // Every grant is to a fresh client (a returning one's hub handshake also copies its new
    // tickets to its shards): ids past the probe's and the warm-up's, new in every round.
    // (Id 0 was the probe of `grant_sizes`.)
    let mut first_id = 1;
    load::shoal_grants(&ts, first_id, 4, 4).await?;
    first_id += 4;
    load::quinn_requests(&tq, 4, 4, request_bytes).await?;
    let mut rounds = Vec::new();
    // The hub's own share of each shoal round (all of it unless shards are processes).
    let mut hub_share = Vec::new();
    for r in 0..opts.rounds {
        let round = alternate(
            r,
            async {
                let work = ops(load::shoal_grants(&ts, first_id, n, WORKERS));
                first_id += n;
                let cpu = load::cpu_split_per_op(&shoal, work).await?.0;
                hub_share.push((cpu.own, cpu.tree - cpu.own));
                Ok(cpu.tree)
            },
            async {
                let work = ops(load::quinn_requests(&tq, n, WORKERS, request_bytes));
                Ok(cpu_per_op(&quinn, work).await?.0)
            },
        )
        .await?;
        report(p, s, r, opts.rounds, &round, "cpu-µs/grant");
        rounds.push(round);
    }
    shoal.stop().await;
    quinn.stop().await;
    let mut f = Figure::new(s, "server_cpu_us_per_op", &rounds);
    if opts.remote_link_delay.is_some() {
        // Where the CPU goes: the hub, and the shard processes that hold the entries.
        let hub = median(hub_share.iter().map(|s| s.0));
        let shards = median(hub_share.iter().map(|s| s.1));
        f = f
            .with("hub_cpu_us_per_op", hub)
            .with("shard_processes_cpu_us_per_op", shards);
    }
    let per_s = 1e6 / f.shoal;
    Ok(f.with("grants_per_cpu_s", per_s)
        .with("request_bytes", request_bytes as f64)
        .with("response_bytes", response_bytes as f64)
        .with("ops_per_round", n as f64))
}

/// Sizes of an attach flight and its answer, from a real grant.
fn attach_sizes(token_len: usize) -> (usize, usize) {
    let attach = encode_control(&Message::Attach(Attach {
        token: vec![0; token_len],
        nonce: vec![0; crate::security::proof::NONCE_LEN],
        proof: vec![0; 32],
    }))
    .len();
    let attached = encode_control(&Message::Attached(Attached {
        shard: crate::ids::ShardId(0),
        zero_rtt: true,
        load_permille: Some(0),
    }))
    .len();
    (attach, attached)
}

/// One round of shoal attaches on `child`: grants first (not measured), then the measured
/// attaches. Returns (CPU-µs per attach, 0-RTT accepted, attempted).
async fn shoal_attach_round(
    child: &ChildServer,
    n: usize,
) -> Result<(f64, usize, usize), BenchError> {
    let t = Target::of(child, 0);
    let clients = load::granted_clients(&t, n, WORKERS).await?;
    let (us, zero) = cpu_per_op(child, load::shoal_attaches(&clients, WORKERS)).await?;
    load::close_all(&clients).await;
    Ok((us, zero, clients.len()))
}

async fn quinn_attach_round(
    child: &ChildServer,
    n: usize,
    request_bytes: usize,
) -> Result<(f64, usize, usize), BenchError> {
    let t = Target::of(child, 0);
    let eps = load::ticketed_endpoints(&t, n, WORKERS).await?;
    let work = load::quinn_attaches(&t, &eps, WORKERS, request_bytes);
    let (us, zero) = cpu_per_op(child, work).await?;
    load::close_endpoints(&eps).await;
    Ok((us, zero, eps.len()))
}

/// Shard CPU per 0-RTT attach (token check included), against a 0-RTT handshake plus one
/// request of the same size.
pub async fn attach(opts: &BenchOptions, p: Progress<'_>) -> Result<Figure, BenchError> {
    let s = Scenario::Attach;
    let (spec, _link) = default_shoal(opts).await?;
    let shoal = ChildServer::spawn(&opts.exe, &spec).await?;
    let probe = load::granted_clients(&Target::of(&shoal, 0), 1, 1).await?;
    let (request_bytes, response_bytes) = attach_sizes(probe[0].1.grant.token.len());
    load::close_all(&probe).await;
    let tickets = Config::default().shards.tickets_per_handshake;
    let quinn = ChildServer::spawn(&opts.exe, &quinn_spec(tickets, response_bytes)).await?;
    let n = opts.ops();
    shoal_attach_round(&shoal, 4).await?;
    quinn_attach_round(&quinn, 4, request_bytes).await?;
    let (mut rounds, mut zs, mut zq) = (Vec::new(), (0, 0), (0, 0));
    for r in 0..opts.rounds {
        let round = alternate(
            r,
            async {
                let (us, z, of) = shoal_attach_round(&shoal, n).await?;
                zs = (zs.0 + z, zs.1 + of);
                Ok(us)
            },
            async {
                let (us, z, of) = quinn_attach_round(&quinn, n, request_bytes).await?;
                zq = (zq.0 + z, zq.1 + of);
                Ok(us)
            },
        )
        .await?;
        report(p, s, r, opts.rounds, &round, "cpu-µs/attach");
        rounds.push(round);
    }
    shoal.stop().await;
    quinn.stop().await;
    let rate = |(a, b): (usize, usize)| a as f64 / b.max(1) as f64;
    Ok(Figure::new(s, "server_cpu_us_per_op", &rounds)
        .with("zero_rtt_acceptance", rate(zs))
        .with("baseline_zero_rtt_acceptance", rate(zq))
        .with("request_bytes", request_bytes as f64)
        .with("ops_per_round", n as f64))
}

/// Attach CPU with 100k tickets in the session store against 1k.
pub async fn tickets(opts: &BenchOptions, p: Progress<'_>) -> Result<Figure, BenchError> {
    let s = Scenario::Tickets;
    let d = Config::default().streams;
    let spec = |n| shoal_spec(n, d.synthetic_rate_hz, d.synthetic_chunk_bytes);
    let small = ChildServer::spawn(&opts.exe, &spec(1_000)).await?;
    let big = ChildServer::spawn(&opts.exe, &spec(100_000)).await?;
    let n = opts.ops();
    shoal_attach_round(&small, 4).await?;
    shoal_attach_round(&big, 4).await?;
    // The two stores differ by well under a microsecond per attach (see the micro-benchmarks),
    // far below this machine's drift between batches: each round interleaves four short
    // batches per side and averages them.
    const SLICES: usize = 4;
    let mut rounds = Vec::new();
    for r in 0..opts.rounds {
        let mut sum = Round {
            shoal: 0.0,
            baseline: 0.0,
        };
        for k in 0..SLICES {
            let part = alternate(
                r + k,
                async { Ok(shoal_attach_round(&big, n / SLICES).await?.0) },
                async { Ok(shoal_attach_round(&small, n / SLICES).await?.0) },
            )
            .await?;
            sum.shoal += part.shoal / SLICES as f64;
            sum.baseline += part.baseline / SLICES as f64;
        }
        let round = sum;
        report(p, s, r, opts.rounds, &round, "cpu-µs/attach");
        rounds.push(round);
    }
    small.stop().await;
    big.stop().await;
    let f = Figure::new(s, "server_cpu_us_per_op", &rounds);
    let (at_100k, at_1k) = (f.shoal, f.baseline);
    Ok(f.with("at_1k_us", at_1k)
        .with("at_100k_us", at_100k)
        .with("ops_per_round", n as f64))
}

/// Time to the first chunk through a delay relay, for a cold and a returning client, in units
/// of the relay's round trip as raw quinn measures it.
pub async fn ttfb(opts: &BenchOptions, p: Progress<'_>) -> Result<Figure, BenchError> {
    let s = Scenario::Ttfb;
    let (spec, _link) = default_shoal(opts).await?;
    let shoal = ChildServer::spawn(&opts.exe, &spec).await?;
    let quinn = ChildServer::spawn(&opts.exe, &quinn_spec(2, 64)).await?;
    let one_way = opts.rtt / 2;
    let io = |e: std::io::Error| BenchError::Load(format!("relay: {e}"));
    let hub_relay = DelayRelay::start(shoal.addr(0), one_way)
        .await
        .map_err(io)?;
    let quinn_relay = DelayRelay::start(quinn.addr(0), one_way)
        .await
        .map_err(io)?;
    let mut ts = Target::of(&shoal, 0);
    ts.addr = hub_relay.addr();
    let mut tq = Target::of(&quinn, 0);
    tq.addr = quinn_relay.addr();
    let samples = if opts.quick { 2 } else { 8 };
    let (mut cold_rtts, mut ret_rtts, mut colds, mut rets, mut rtts) =
        (vec![], vec![], vec![], vec![], vec![]);
    for r in 0..opts.rounds {
        let (mut cold, mut ret) = (Vec::new(), Vec::new());
        let round = alternate(
            r,
            async {
                for j in 0..samples {
                    let (c, rt) = cold_and_returning(&ts, r * samples + j).await?;
                    cold.push(c);
                    ret.push(rt);
                }
                Ok(median(cold.iter().copied()))
            },
            relay_rtt(&tq, samples),
        )
        .await?;
        let ret_ms = median(ret.iter().copied());
        cold_rtts.push(round.ratio());
        ret_rtts.push(ret_ms / round.baseline);
        colds.push(round.shoal);
        rets.push(ret_ms);
        rtts.push(round.baseline);
        p(&format!(
            "ttfb round {}/{}: rtt {:.2} ms, cold {:.2} ms ({:.2} RTT), returning {:.2} ms ({:.2} RTT)",
            r + 1,
            opts.rounds,
            round.baseline,
            round.shoal,
            round.ratio(),
            ret_ms,
            ret_ms / round.baseline
        ));
    }
    let dropped = hub_relay.dropped() + quinn_relay.dropped();
    drop((hub_relay, quinn_relay));
    shoal.stop().await;
    quinn.stop().await;
    let returning = median(ret_rtts.iter().copied());
    let cold = median(cold_rtts.iter().copied());
    let mut f = Figure {
        scenario: s.name(),
        shoal: median(colds),
        baseline: median(rtts.iter().copied()),
        ratio: cold,
        unit: "ms",
        goal: "cold <= 2.2 RTT, returning <= 1.2 RTT".into(),
        goal_met: cold <= 2.2 && returning <= 1.2,
        rounds: opts.rounds,
        extra: Default::default(),
    };
    f = f
        .with("cold_rtts", cold)
        .with("returning_rtts", returning)
        .with("returning_ms", median(rets))
        .with("rtt_ms", median(rtts))
        .with("configured_rtt_ms", opts.rtt.as_secs_f64() * 1e3)
        .with("relay_dropped", dropped as f64)
        .with("samples_per_round", samples as f64);
    Ok(f)
}

/// A fresh client's time to first chunk, then the same client's after it disconnected from
/// the hub (it returns with tickets: 0-RTT). In milliseconds.
async fn cold_and_returning(t: &Target, i: usize) -> Result<(f64, f64), BenchError> {
    let client = t.shoal_client(i)?;
    let stream = StreamName::new(format!("synth/ttfb-{}", i % 4)).expect("valid");
    let mut ms = [0.0; 2];
    for m in &mut ms {
        let mut sub = client
            .subscribe(&stream)
            .await
            .map_err(|e| BenchError::Load(format!("subscribe: {e}")))?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Some(Ok(Delivery::Chunk(_)))) => break,
                Ok(Some(Ok(Delivery::Gap { .. }))) => {}
                Ok(Some(Err(e))) => return Err(BenchError::Load(format!("subscription: {e}"))),
                Ok(None) | Err(_) => return Err(BenchError::Load("no first chunk".into())),
            }
        }
        *m = sub.stats().ttfb_us as f64 / 1e3;
        drop(sub);
        client.disconnect().await;
        // Tickets and the close have long arrived after a few round trips.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.close().await;
    Ok((ms[0], ms[1]))
}

/// Median round trip of a tiny request over an established raw-quinn connection through the
/// relay, in milliseconds.
async fn relay_rtt(t: &Target, samples: usize) -> Result<f64, BenchError> {
    let ep = t.quinn_endpoint()?;
    let (conn, _) = t.quinn_connect(&ep).await?;
    baseline::request(&conn, 16).await?;
    let mut v = Vec::new();
    for _ in 0..samples.max(3) {
        let t0 = crate::clock::now();
        baseline::request(&conn, 16).await?;
        v.push(crate::clock::since(t0).as_secs_f64() * 1e3);
    }
    conn.close(0u32.into(), b"");
    load::close_endpoints(&[ep]).await;
    Ok(median(v))
}

/// Chunk rate and size for the fan-out scenario: 500 chunks/s per subscriber, at most
/// [`FANOUT_AGGREGATE`] chunks/s over all of them.
const FANOUT_HZ: u32 = 500;
const FANOUT_BYTES: u32 = 4096;
/// Chunks per second over all subscribers (524 Mbit/s of payload): both sides, and the load
/// generator that decrypts all of it in one process, stay below
/// what this 2-core machine can push, so the figure compares costs, not saturation (at
/// 512 subscribers × 500 Hz the raw-quinn side could no longer accept connections).
const FANOUT_AGGREGATE: u32 = 16_000;

/// The per-subscriber chunk rate for `subs` subscribers.
fn fanout_rate(subs: usize) -> u32 {
    let subs = u32::try_from(subs).unwrap_or(u32::MAX).max(1);
    (FANOUT_AGGREGATE / subs).clamp(1, FANOUT_HZ)
}

/// Shard goodput per CPU-second to N subscribers of one stream, against raw quinn pushing the
/// same chunks on N unidirectional streams.
pub async fn fanout(opts: &BenchOptions, p: Progress<'_>) -> Result<Figure, BenchError> {
    let s = Scenario::Fanout;
    let subs = if opts.quick {
        4
    } else {
        opts.subscribers.max(1)
    };
    let rate = fanout_rate(subs);
    let shoal = ChildServer::spawn(&opts.exe, &shoal_spec(0, rate, FANOUT_BYTES)).await?;
    let quinn = ChildServer::spawn(
        &opts.exe,
        &ServerSpec::Quinn(BaselineSpec {
            tickets: 2,
            response_bytes: 64,
            rate_hz: rate,
            chunk_bytes: FANOUT_BYTES,
        }),
    )
    .await?;
    let window = Duration::from_millis(if opts.quick { 500 } else { 3000 });
    let (ts, tq) = (Target::of(&shoal, 0), Target::of(&quinn, 0));
    let mut rounds = Vec::new();
    let mut gbps = Vec::new();
    for r in 0..opts.rounds {
        let mut g = (0.0, 0.0);
        let round = alternate(
            r,
            async {
                let (per_cpu, gb) = fan_window(&shoal, window, shoal_fan(&ts, subs)).await?;
                g.0 = gb;
                Ok(per_cpu)
            },
            async {
                let (per_cpu, gb) = fan_window(&quinn, window, quinn_fan(&tq, subs)).await?;
                g.1 = gb;
                Ok(per_cpu)
            },
        )
        .await?;
        report(p, s, r, opts.rounds, &round, "MB/cpu-s");
        gbps.push(g);
        rounds.push(round);
    }
    shoal.stop().await;
    quinn.stop().await;
    Ok(Figure::new(s, "payload_mb_per_server_cpu_s", &rounds)
        .with("goodput_gbps", median(gbps.iter().map(|g| g.0)))
        .with("baseline_goodput_gbps", median(gbps.iter().map(|g| g.1)))
        .with("subscribers", subs as f64)
        .with("chunk_bytes", f64::from(FANOUT_BYTES))
        .with("rate_hz", f64::from(rate)))
}

/// Receivers started by a fan-out side: payload bytes so far, receivers that got a chunk, and
/// the tasks (aborted when dropped).
struct Fan {
    bytes: Arc<AtomicU64>,
    started: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    n: usize,
}

impl Drop for Fan {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Waits until every receiver got data, then measures server CPU and payload bytes over
/// `window`. Returns (payload MB per server CPU-second, goodput in Gbit/s).
async fn fan_window(
    child: &ChildServer,
    window: Duration,
    fan: impl std::future::Future<Output = Result<Fan, BenchError>>,
) -> Result<(f64, f64), BenchError> {
    let fan = fan.await?;
    let deadline = crate::clock::now() + Duration::from_secs(15);
    while fan.started.load(Ordering::Relaxed) < fan.n {
        if crate::clock::now() > deadline {
            return Err(BenchError::Load(format!(
                "only {} of {} subscribers received data within 15 s",
                fan.started.load(Ordering::Relaxed),
                fan.n
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (c0, b0, t0) = (
        child.cpu()?,
        fan.bytes.load(Ordering::Relaxed),
        crate::clock::now(),
    );
    tokio::time::sleep(window).await;
    let (c1, b1, el) = (
        child.cpu()?,
        fan.bytes.load(Ordering::Relaxed),
        crate::clock::since(t0),
    );
    drop(fan);
    let bytes = (b1 - b0) as f64;
    let cpu = (c1 - c0).as_secs_f64().max(1e-6);
    Ok((bytes / 1e6 / cpu, bytes * 8.0 / el.as_secs_f64() / 1e9))
}

async fn shoal_fan(t: &Target, n: usize) -> Result<Fan, BenchError> {
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let stream = StreamName::new("synth/fanout").expect("valid");
    let mut tasks = Vec::new();
    for i in 0..n {
        let client = t.shoal_client(i)?;
        let mut sub = client
            .subscribe(&stream)
            .await
            .map_err(|e| BenchError::Load(format!("subscribe: {e}")))?;
        let (bytes, started) = (bytes.clone(), started.clone());
        tasks.push(tokio::spawn(async move {
            let mut first = true;
            while let Some(Ok(d)) = sub.next().await {
                if let Delivery::Chunk(c) = d {
                    bytes.fetch_add(c.payload.len() as u64, Ordering::Relaxed);
                    if std::mem::take(&mut first) {
                        started.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            drop(sub);
            client.endpoint().close(0u32.into(), b"");
        }));
    }
    Ok(Fan {
        bytes,
        started,
        tasks,
        n,
    })
}

async fn quinn_fan(t: &Target, n: usize) -> Result<Fan, BenchError> {
    let bytes = Arc::new(AtomicU64::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..n {
        let ep = t.quinn_endpoint()?;
        let (conn, _) = t.quinn_connect(&ep).await?;
        let mut recv = baseline::fan_in(&conn).await?;
        let (bytes, started) = (bytes.clone(), started.clone());
        tasks.push(tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut first = true;
            while let Ok(Some(len)) = baseline::read_pushed(&mut recv, &mut buf).await {
                bytes.fetch_add(len as u64, Ordering::Relaxed);
                if std::mem::take(&mut first) {
                    started.fetch_add(1, Ordering::Relaxed);
                }
            }
            conn.close(0u32.into(), b"");
            ep.close(0u32.into(), b"");
        }));
    }
    Ok(Fan {
        bytes,
        started,
        tasks,
        n,
    })
}
