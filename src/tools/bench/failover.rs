//! `shoal bench failover` and the rig the mirror tests share: a mirror sender streaming a
//! synthetic stream to N in-process receivers, each behind its own userspace delay relay, with
//! a ledger of what every receiver delivered to its application.
//!
//! A round: start the rig → stream for a warm-up plus a random delay → blackhole the active
//! endpoint's relay (both directions) → wait for the machine to declare it degraded, switch,
//! and for the new active receiver to acknowledge the first chunk it was sent → stream a little
//! longer → stop the producer and let every pushed chunk be acknowledged → count. The figures:
//! `detection_ms` (blackhole → degraded), `detection_bound_ms` (`max(floor, 2·SRTT + 4·RTTVar)`
//! as measured then), `switch_ms` (degraded → the new receiver's acknowledgement of its first
//! chunk, i.e. one round trip on the new path), `lost` (pushed, delivered by no receiver),
//! `duplicated` (delivered twice to one application), `replayed` (chunks the sender sent again
//! after the switch) and `overlap` (chunks both the old and the new receiver delivered: those
//! whose acknowledgement the blackhole swallowed; a consumer merging the receivers drops them
//! by sequence).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tokio::task::JoinHandle;

use super::{BenchError, DelayRelay};
use crate::ids::{Seq, StreamName};
use crate::mirror::machine::Event;
use crate::mirror::{EndpointId, MirrorConfig, MirrorSender, Mode, SenderOptions};
use crate::mirror::{Receiver, ReceiverEvent, ReceiverOptions, StatsHandle};
use crate::synthetic::SyntheticSpec;

/// Certificates for a rig: one CA; receivers and sender use the cluster certificate.
#[derive(Clone)]
pub struct RigCerts {
    pub cluster: String,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: Arc<PrivateKeyDer<'static>>,
    pub ca: Vec<CertificateDer<'static>>,
}

impl RigCerts {
    pub fn generate() -> Result<Self, BenchError> {
        let m = crate::cluster::Material::generate(crate::DEFAULT_CLUSTER)
            .map_err(|e| BenchError::Load(e.to_string()))?;
        Ok(Self {
            cluster: crate::DEFAULT_CLUSTER.into(),
            chain: m.chain,
            key: Arc::new(m.key),
            ca: m.ca,
        })
    }

    pub fn receiver_options(&self, listen: SocketAddr) -> ReceiverOptions {
        let mut o = ReceiverOptions::new(
            listen,
            self.chain.clone(),
            self.key.clone_key(),
            self.ca.clone(),
        );
        o.verify = true;
        o
    }

    pub fn sender_options(&self, stream: StreamName, config: MirrorConfig) -> SenderOptions {
        let mut o = SenderOptions::new(
            stream,
            self.cluster.clone(),
            self.ca.clone(),
            self.chain.clone(),
            self.key.clone_key(),
        );
        o.config = config;
        o.bind_ip = [127, 0, 0, 1].into();
        o
    }
}

/// What one receiver handed to its application.
#[derive(Debug, Default, Clone)]
pub struct ReceiverLog {
    pub seqs: Vec<Seq>,
    pub gaps: Vec<(Seq, Seq)>,
}

/// What every receiver delivered, and what was pushed.
#[derive(Debug, Default)]
pub struct Ledger {
    pub receivers: Vec<ReceiverLog>,
    pub pushed: Vec<Seq>,
}

/// The counts that matter for lossless failover.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub pushed: u64,
    /// Pushed chunks no receiver delivered (and none reported as a gap either).
    pub lost: u64,
    /// Chunks one receiver delivered twice to its application.
    pub duplicated: u64,
    /// Chunks delivered by more than one receiver.
    pub overlap: u64,
    /// Chunks receivers were told are missing.
    pub gap_chunks: u64,
    /// Chunks whose payload did not match the sequence (always 0 when nothing is corrupted).
    pub out_of_order: u64,
}

impl Ledger {
    /// Failover mode: the receivers together are the application.
    pub fn tally_union(&self) -> Tally {
        let mut t = Tally {
            pushed: self.pushed.len() as u64,
            ..Tally::default()
        };
        let mut seen: HashMap<Seq, u32> = HashMap::new();
        for r in &self.receivers {
            let mut mine = std::collections::HashSet::new();
            let mut last = None;
            for &s in &r.seqs {
                if !mine.insert(s) {
                    t.duplicated += 1;
                }
                if last.is_some_and(|l| s <= l) {
                    t.out_of_order += 1;
                }
                last = Some(s);
                *seen.entry(s).or_default() += 1;
            }
            t.gap_chunks += r
                .gaps
                .iter()
                .map(|(a, b)| a.distance(*b).unwrap_or(0))
                .sum::<u64>();
        }
        t.overlap = seen.values().filter(|&&n| n > 1).count() as u64;
        t.lost = self.pushed.iter().filter(|s| !seen.contains_key(s)).count() as u64;
        t
    }

    /// Broadcast mode: every receiver is an application and must get every chunk pushed after
    /// its first delivery.
    pub fn tally_each(&self) -> Vec<Tally> {
        self.receivers
            .iter()
            .map(|r| {
                let one = Ledger {
                    receivers: vec![r.clone()],
                    pushed: match r.seqs.first() {
                        Some(&f) => self.pushed.iter().copied().filter(|&s| s >= f).collect(),
                        None => self.pushed.clone(),
                    },
                };
                one.tally_union()
            })
            .collect()
    }
}

/// A sender, N receivers behind delay relays, a synthetic producer, and the ledger.
pub struct Rig {
    pub sender: Arc<MirrorSender>,
    pub relays: Vec<DelayRelay>,
    /// Counters of each receiver (migrations seen, duplicates dropped, verify failures).
    pub receiver_stats: Vec<StatsHandle>,
    pub receiver_addrs: Vec<SocketAddr>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub stream: StreamName,
    pub certs: RigCerts,
    producer: Option<JoinHandle<()>>,
    drains: Vec<JoinHandle<()>>,
}

/// How a rig is set up.
#[derive(Debug, Clone)]
pub struct RigOptions {
    pub receivers: usize,
    /// One-way delay of every relay; zero: no relay, the sender talks to the receivers
    /// directly (then `relays` is empty).
    pub one_way: Duration,
    pub config: MirrorConfig,
    pub rate_hz: u32,
    pub chunk_bytes: u32,
}

impl Default for RigOptions {
    fn default() -> Self {
        Self {
            receivers: 3,
            one_way: Duration::from_millis(10),
            config: MirrorConfig {
                revert_after: None,
                ..MirrorConfig::default()
            },
            rate_hz: 500,
            chunk_bytes: 1024,
        }
    }
}

impl Rig {
    pub async fn start(o: &RigOptions, certs: RigCerts) -> Result<Rig, BenchError> {
        let stream = StreamName::new("synth/mirror").expect("valid name");
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (mut relays, mut receivers, mut addrs, mut drains) = (vec![], vec![], vec![], vec![]);
        for i in 0..o.receivers {
            let r = Receiver::bind(certs.receiver_options(SocketAddr::from(([127, 0, 0, 1], 0))))
                .map_err(|e| BenchError::Load(format!("receiver: {e}")))?;
            if o.one_way.is_zero() {
                addrs.push(r.addr());
            } else {
                let relay = DelayRelay::start(r.addr(), o.one_way)
                    .await
                    .map_err(|e| BenchError::Load(format!("relay: {e}")))?;
                addrs.push(relay.addr());
                relays.push(relay);
            }
            ledger
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .receivers
                .push(ReceiverLog::default());
            receivers.push(r.stats_handle());
            drains.push(tokio::spawn(drain(r, ledger.clone(), i)));
        }
        let sender = MirrorSender::start(certs.sender_options(stream.clone(), o.config), &addrs)
            .map_err(|e| BenchError::Load(format!("sender: {e}")))?;
        let sender = Arc::new(sender);
        let spec = SyntheticSpec {
            rate_hz: o.rate_hz,
            chunk_bytes: o.chunk_bytes,
        };
        let producer = tokio::spawn(produce(
            sender.clone(),
            spec,
            stream.clone(),
            ledger.clone(),
        ));
        Ok(Rig {
            sender,
            relays,
            receiver_stats: receivers,
            receiver_addrs: addrs,
            ledger,
            stream,
            certs,
            producer: Some(producer),
            drains,
        })
    }

    /// The active endpoint and its index in the original list.
    pub fn active(&self) -> Option<(EndpointId, usize)> {
        let snap = self.sender.snapshot();
        let id = *snap.active.first()?;
        let addr = snap.endpoints.iter().find(|e| e.id == id)?.addr;
        let i = self.receiver_addrs.iter().position(|a| *a == addr)?;
        Some((id, i))
    }

    /// Waits until `cond` holds on the sender, checking every 10 ms, at most `limit`.
    pub async fn wait_for(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&crate::mirror::MirrorSnapshot) -> bool,
    ) -> bool {
        let until = crate::clock::now() + limit;
        while crate::clock::now() < until {
            if cond(&self.sender.snapshot()) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Stops producing, waits (at most `grace`) for every pushed chunk to be acknowledged and
    /// for the receivers' applications to have it, and returns the ledger.
    pub async fn finish(mut self, grace: Duration) -> Ledger {
        if let Some(p) = self.producer.take() {
            p.abort();
            let _ = p.await;
        }
        let until = crate::clock::now() + grace;
        while !self.sender.settled() && crate::clock::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Deliveries are queued before they are acknowledged: give the drains a moment.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for d in &self.drains {
            d.abort();
        }
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap_or_else(|p| p.into_inner()));
        if let Ok(sender) = Arc::try_unwrap(self.sender) {
            sender.stop(Duration::ZERO).await;
        }
        ledger
    }
}

async fn drain(mut r: Receiver, ledger: Arc<Mutex<Ledger>>, i: usize) {
    while let Some(ev) = r.next().await {
        let mut l = ledger.lock().unwrap_or_else(|p| p.into_inner());
        match ev {
            ReceiverEvent::Chunk { chunk, .. } => l.receivers[i].seqs.push(chunk.seq),
            ReceiverEvent::Gap { from, to, .. } => l.receivers[i].gaps.push((from, to)),
            _ => {}
        }
    }
}

async fn produce(
    sender: Arc<MirrorSender>,
    spec: SyntheticSpec,
    stream: StreamName,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut tick = tokio::time::interval(Duration::from_micros(spec.period_us()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut seq = spec.live_seq(crate::unix_us());
    loop {
        tick.tick().await;
        let chunk = spec.chunk(&stream, seq);
        if sender.push(chunk).await.is_err() {
            return;
        }
        ledger
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pushed
            .push(seq);
        let Some(next) = seq.next() else { return };
        seq = next;
    }
}

/// One measured failover.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Round {
    pub detection_ms: f64,
    pub detection_bound_ms: f64,
    pub switch_ms: f64,
    pub srtt_ms: f64,
    pub rttvar_ms: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub replayed: u64,
    pub overlap: u64,
    pub pushed: u64,
}

/// The failover figure: medians of the rounds, sums of losses and duplicates.
#[derive(Debug, Clone, Serialize)]
pub struct FailoverFigure {
    pub scenario: &'static str,
    pub rounds: usize,
    pub rtt_ms: f64,
    pub rate_hz: u32,
    pub detection_ms: f64,
    pub detection_bound_ms: f64,
    pub switch_ms: f64,
    pub srtt_ms: f64,
    /// Summed over all rounds.
    pub lost: u64,
    pub duplicated: u64,
    pub replayed: f64,
    pub overlap: f64,
    pub goal_met: bool,
    pub per_round: Vec<Round>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// A random duration in `0..max` (ring's generator; the bench needs no seeded stream).
fn jitter(max: Duration) -> Duration {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    max.mul_f64(f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX))
}

/// Runs one round.
pub async fn round(o: &RigOptions, certs: RigCerts) -> Result<Round, BenchError> {
    let rig = Rig::start(o, certs).await?;
    let mut events = rig.sender.events();
    // Warm-up: every endpoint connected, RTT estimates settled, then a random moment.
    let ready = rig
        .wait_for(Duration::from_secs(5), |s| {
            s.active.len() == 1
                && s.endpoints.iter().all(|e| e.health.srtt_ms > 0.0)
                && s.committed_seq.is_some()
        })
        .await;
    if !ready {
        return Err(BenchError::Load("the mirror did not come up in 5 s".into()));
    }
    tokio::time::sleep(Duration::from_millis(1000) + jitter(Duration::from_millis(1000))).await;
    let (old, i) = rig
        .active()
        .ok_or_else(|| BenchError::Load("no active endpoint".into()))?;
    while events.try_recv().is_ok() {}
    let blackholed = crate::clock::now();
    rig.relays[i].set_blackhole(true);
    let mut degraded = None;
    let mut confirmed = None;
    let deadline = crate::clock::tokio_now() + Duration::from_secs(5);
    while confirmed.is_none() {
        let ev = tokio::time::timeout_at(deadline, events.recv())
            .await
            .map_err(|_| BenchError::Timeout {
                scenario: "failover",
                after: Duration::from_secs(5),
            })?;
        match ev {
            Ok(Event::Degraded {
                ep,
                bound,
                srtt,
                rttvar,
                at,
                ..
            }) if ep == old => degraded = Some((at, bound, srtt.unwrap_or_default(), rttvar)),
            Ok(Event::SwitchConfirmed { at, .. }) if degraded.is_some() => confirmed = Some(at),
            _ => {}
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replayed = rig.sender.snapshot().counters.replayed;
    let ledger = rig.finish(Duration::from_secs(3)).await;
    let t = ledger.tally_union();
    let (at, bound, srtt, rttvar) = degraded.expect("set before confirmed");
    let confirmed = confirmed.expect("loop ends when set");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    Ok(Round {
        detection_ms: ms(at.saturating_duration_since(blackholed)),
        detection_bound_ms: ms(bound),
        switch_ms: ms(confirmed.saturating_duration_since(at)),
        srtt_ms: ms(srtt),
        rttvar_ms: ms(rttvar),
        lost: t.lost,
        duplicated: t.duplicated,
        replayed,
        overlap: t.overlap,
        pushed: t.pushed,
    })
}

/// `shoal bench failover`: `rounds` rounds, each a fresh rig.
pub async fn run(
    rounds: usize,
    rtt: Duration,
    rate_hz: u32,
    progress: &mut dyn FnMut(&str),
) -> Result<FailoverFigure, BenchError> {
    let o = RigOptions {
        one_way: rtt / 2,
        rate_hz,
        ..RigOptions::default()
    };
    let certs = RigCerts::generate()?;
    let mut per_round = Vec::with_capacity(rounds);
    for r in 0..rounds {
        let round = round(&o, certs.clone()).await?;
        progress(&format!(
            "round {}/{rounds}: detection {:.1} ms (bound {:.1}), switch {:.1} ms, srtt {:.1} ms, lost {}, duplicated {}, replayed {}",
            r + 1,
            round.detection_ms,
            round.detection_bound_ms,
            round.switch_ms,
            round.srtt_ms,
            round.lost,
            round.duplicated,
            round.replayed
        ));
        per_round.push(round);
    }
    let med = |f: fn(&Round) -> f64| median(per_round.iter().map(f).collect());
    let detection_ms = med(|r| r.detection_ms);
    let detection_bound_ms = med(|r| r.detection_bound_ms);
    let switch_ms = med(|r| r.switch_ms);
    let srtt_ms = med(|r| r.srtt_ms);
    let lost = per_round.iter().map(|r| r.lost).sum();
    let duplicated = per_round.iter().map(|r| r.duplicated).sum();
    Ok(FailoverFigure {
        scenario: "failover",
        rounds,
        rtt_ms: rtt.as_secs_f64() * 1e3,
        rate_hz,
        detection_ms,
        detection_bound_ms,
        switch_ms,
        srtt_ms,
        lost,
        duplicated,
        replayed: med(|r| r.replayed as f64),
        overlap: med(|r| r.overlap as f64),
        goal_met: lost == 0
            && duplicated == 0
            && detection_ms <= detection_bound_ms
            && switch_ms <= srtt_ms + 10.0,
        per_round,
    })
}

/// For tests and tools: the broadcast variant of the default rig.
pub fn broadcast_options() -> RigOptions {
    RigOptions {
        config: MirrorConfig {
            mode: Mode::Broadcast,
            ..RigOptions::default().config
        },
        ..RigOptions::default()
    }
}
