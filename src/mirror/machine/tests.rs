//! The failover machine on virtual time: no sockets, `now` is a plain `Instant` we advance.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::mirror::{MirrorConfig, MirrorError, Mode, Overflow};
use crate::wire::Chunk;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000 + i))
}

// The helpers speak plain integers; `Seq` is checked at the machine's boundary.
fn chunk(seq: u64) -> Chunk {
    Chunk {
        seq: Seq::new(seq),
        timestamp_us: seq,
        payload: Bytes::from(vec![seq as u8; 100]),
    }
}

struct Sim {
    m: Mirror,
    now: Instant,
    ids: Vec<EndpointId>,
}

impl Sim {
    fn new(cfg: MirrorConfig, n: u16) -> Sim {
        let now = crate::clock::now();
        let addrs: Vec<_> = (0..n).map(addr).collect();
        let m = Mirror::new(cfg, &addrs, now).unwrap();
        let ids = m.endpoints().into_iter().map(|(id, _)| id).collect();
        Sim { m, now, ids }
    }

    fn connect_all(&mut self) {
        for &id in &self.ids.clone() {
            self.m.handle_connected(id, None, self.now);
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    /// Everything `id` would write now (probes excluded): chunk seqs and gaps.
    fn drain(&mut self, id: EndpointId) -> (Vec<u64>, Vec<(u64, u64)>) {
        let (mut seqs, mut gaps) = (Vec::new(), Vec::new());
        for _ in 0..100_000 {
            match self.m.poll_transmit(id, self.now) {
                Transmit::Chunk(c) => seqs.push(c.seq.get()),
                Transmit::Gap { from, to } => gaps.push((from.get(), to.get())),
                Transmit::Wait(_) => return (seqs, gaps),
            }
        }
        panic!("poll_transmit never waited");
    }

    /// Feedback from `id`: acknowledges `acked` and answers every outstanding probe.
    fn feedback(&mut self, id: EndpointId, acked: Option<u64>) {
        self.m
            .handle_feedback(id, None, acked.map(Seq::new), self.now);
    }

    fn events(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.m.poll_event()).collect()
    }

    fn push(&mut self, range: std::ops::RangeInclusive<u64>) {
        for s in range {
            self.m.push(chunk(s), None, self.now).unwrap();
        }
    }
}

fn switched(ev: &[Event]) -> Vec<(Option<EndpointId>, EndpointId, SwitchCause, Option<u64>)> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Switched {
                from,
                to,
                cause,
                from_seq,
                ..
            } => Some((*from, *to, *cause, from_seq.map(Seq::get))),
            _ => None,
        })
        .collect()
}

#[test]
fn first_connected_best_rank_becomes_active_and_gets_everything() {
    let mut s = Sim::new(MirrorConfig::default(), 3);
    s.push(1..=5);
    // Rank 1 connects first: it takes the stream until rank 0 is there (revert later).
    s.m.handle_connected(s.ids[1], None, s.now);
    assert_eq!(s.m.state(s.ids[1]), Some(EndpointState::Active));
    let (seqs, gaps) = s.drain(s.ids[1]);
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert!(gaps.is_empty());
    s.m.handle_connected(s.ids[0], None, s.now);
    assert_eq!(s.m.state(s.ids[0]), Some(EndpointState::Standby));
    // Standbys are probed but sent no data.
    assert!(s.m.poll_probe(s.ids[0], s.now).is_ok());
    assert!(s.m.poll_probe(s.ids[0], s.now).is_err(), "one per interval");
    assert_eq!(s.drain(s.ids[0]).0, Vec::<u64>::new());
}

#[test]
fn silence_over_the_bound_fails_over_to_the_next_rank_from_the_last_ack() {
    let mut s = Sim::new(
        MirrorConfig {
            revert_after: None,
            ..MirrorConfig::default()
        },
        3,
    );
    s.connect_all();
    let (a, b) = (s.ids[0], s.ids[1]);
    s.push(1..=10);
    assert_eq!(s.drain(a).0, (1..=10).collect::<Vec<_>>());
    s.feedback(a, Some(6));
    let heard = s.now;
    // Standbys keep answering; the active goes silent.
    let deadline = s.m.poll_timeout();
    for _ in 0..10 {
        s.advance(Duration::from_millis(10));
        s.feedback(b, None);
        s.feedback(s.ids[2], None);
        s.m.handle_timeout(s.now);
        if s.m.state(a) != Some(EndpointState::Active) {
            break;
        }
    }
    let ev = s.events();
    let degraded = ev
        .iter()
        .find_map(|e| match e {
            Event::Degraded {
                ep, silence, bound, ..
            } if *ep == a => Some((*silence, *bound)),
            _ => None,
        })
        .expect("the active endpoint degraded");
    assert!(degraded.0 > degraded.1, "declared only past the bound");
    assert_eq!(
        degraded.1,
        Duration::from_millis(60),
        "floor without RTT samples"
    );
    assert!(deadline <= heard + degraded.1 + Duration::from_micros(1));
    assert_eq!(
        switched(&ev).last(),
        Some(&(Some(a), b, SwitchCause::Failure, Some(7)))
    );
    // B gets 7..=10 again (replayed), then new chunks.
    s.push(11..=12);
    assert_eq!(s.drain(b).0, vec![7, 8, 9, 10, 11, 12]);
    assert_eq!(s.m.counters().replayed, 4);
    assert_eq!(s.m.counters().switches, 1);
    s.advance(Duration::from_millis(20));
    s.feedback(b, Some(7));
    assert!(s.events().iter().any(
        |e| matches!(e, Event::SwitchConfirmed { ep, seq, .. } if *ep == b && *seq == Seq::new(7))
    ));
    // Timed: detection is the silence when declared, the switch runs to B's acknowledgement.
    let t = s.m.snapshot(s.now).failover;
    assert_eq!(t.detection.count(), 1);
    assert_eq!(u128::from(t.detection.sum_ns), degraded.0.as_nanos());
    assert_eq!((t.switch.count(), t.switch.sum_ns), (1, 20_000_000));
}

#[test]
fn revert_waits_for_the_old_active_to_acknowledge_then_sends_nothing_twice() {
    let mut s = Sim::new(
        MirrorConfig {
            revert_after: Some(Duration::from_millis(200)),
            ..MirrorConfig::default()
        },
        2,
    );
    let (a, b) = (s.ids[0], s.ids[1]);
    s.m.handle_connected(b, None, s.now);
    s.push(1..=4);
    assert_eq!(s.drain(b).0, vec![1, 2, 3, 4]);
    s.m.handle_connected(a, None, s.now);
    s.push(5..=6);
    assert_eq!(s.drain(b).0, vec![5, 6]);
    s.feedback(b, Some(3));
    // A healthy long enough: B drains, nothing new goes anywhere until B acknowledges 6.
    for _ in 0..25 {
        s.advance(Duration::from_millis(10));
        s.feedback(a, None);
        s.feedback(b, None);
        s.m.handle_timeout(s.now);
    }
    assert_eq!(s.m.state(b), Some(EndpointState::Draining));
    s.push(7..=8);
    assert_eq!(s.drain(b).0, Vec::<u64>::new());
    assert_eq!(s.drain(a).0, Vec::<u64>::new());
    s.feedback(b, Some(6));
    assert_eq!(s.m.state(a), Some(EndpointState::Active));
    assert_eq!(s.m.state(b), Some(EndpointState::Standby));
    assert_eq!(s.drain(a).0, vec![7, 8]);
    assert_eq!(s.m.counters().replayed, 0);
    let sw = switched(&s.events());
    assert_eq!(sw.last(), Some(&(Some(b), a, SwitchCause::Revert, Some(7))));
}

#[test]
fn removal_rules_and_lossless_removal_of_the_active() {
    let mut s = Sim::new(MirrorConfig::default(), 2);
    let (a, b) = (s.ids[0], s.ids[1]);
    assert_eq!(
        s.m.remove_endpoint(EndpointId(99), s.now),
        Err(MirrorError::UnknownEndpoint(EndpointId(99)))
    );
    s.m.handle_connected(a, None, s.now);
    // B is not connected: removing the active A would leave the stream nowhere.
    assert_eq!(
        s.m.remove_endpoint(a, s.now),
        Err(MirrorError::NoStandby(a))
    );
    s.m.handle_connected(b, None, s.now);
    s.push(1..=3);
    assert_eq!(s.drain(a).0, vec![1, 2, 3]);
    s.m.remove_endpoint(a, s.now).unwrap();
    assert_eq!(s.m.state(a), Some(EndpointState::Draining));
    s.feedback(a, Some(3));
    assert_eq!(s.m.state(a), None, "forgotten once drained");
    assert!(s
        .events()
        .iter()
        .any(|e| matches!(e, Event::DropConnection { ep, removed: true } if *ep == a)));
    s.push(4..=4);
    assert_eq!(s.drain(b).0, vec![4]);
    assert_eq!(
        s.m.remove_endpoint(b, s.now),
        Err(MirrorError::LastEndpoint)
    );
    assert_eq!(
        s.m.add_endpoint(addr(1), None, s.now),
        Err(MirrorError::DuplicateEndpoint(addr(1)))
    );
    let c = s.m.add_endpoint(addr(7), Some(0), s.now).unwrap();
    assert_eq!(s.m.endpoints()[0].0, c, "inserted at rank 0");
}

#[test]
fn overflow_policies() {
    // drop-oldest: the endpoint gets a gap for what was dropped, then the newest chunks.
    let mut s = Sim::new(
        MirrorConfig {
            overflow: Overflow::DropOldest,
            max_pending: 4,
            ..MirrorConfig::default()
        },
        1,
    );
    s.connect_all();
    s.push(1..=10);
    let (seqs, gaps) = s.drain(s.ids[0]);
    assert_eq!(gaps, vec![(1, 7)]);
    assert_eq!(seqs, vec![7, 8, 9, 10]);
    assert_eq!(s.m.counters().dropped, 6);

    // block: the provider is refused while the endpoint is max_pending behind.
    let mut s = Sim::new(
        MirrorConfig {
            overflow: Overflow::Block,
            max_pending: 4,
            ..MirrorConfig::default()
        },
        1,
    );
    s.connect_all();
    s.push(1..=4);
    assert_eq!(s.m.push(chunk(5), None, s.now), Err(PushError::Full));
    assert_eq!(s.drain(s.ids[0]).0, vec![1, 2, 3, 4]);
    s.m.push(chunk(5), None, s.now).unwrap();
    assert_eq!(
        s.m.push(chunk(5), None, s.now),
        Err(PushError::NotIncreasing {
            seq: Seq::new(5),
            head: Seq::new(5)
        })
    );

    // conflate: a queued value superseded by a newer one with the same key is skipped.
    let mut s = Sim::new(
        MirrorConfig {
            overflow: Overflow::Conflate,
            ..MirrorConfig::default()
        },
        1,
    );
    s.connect_all();
    for (seq, key) in [(1, 1), (2, 2), (3, 1), (4, 3), (5, 1)] {
        s.m.push(chunk(seq), Some(key), s.now).unwrap();
    }
    let (seqs, gaps) = s.drain(s.ids[0]);
    assert_eq!(gaps, vec![(1, 2), (3, 4)]);
    assert_eq!(seqs, vec![2, 4, 5]);
    assert_eq!(s.m.counters().conflated, 2);
}

#[test]
fn a_receiver_behind_the_buffer_gets_an_explicit_gap() {
    let mut s = Sim::new(
        MirrorConfig {
            overflow: Overflow::DropOldest,
            buffer_chunks: 8,
            max_pending: 8,
            revert_after: None,
            ..MirrorConfig::default()
        },
        2,
    );
    let (a, b) = (s.ids[0], s.ids[1]);
    s.connect_all();
    s.push(1..=4);
    assert_eq!(s.drain(a).0, vec![1, 2, 3, 4]);
    s.feedback(a, Some(2));
    s.push(5..=20);
    assert_eq!(s.drain(a).0, (13..=20).collect::<Vec<_>>());
    // A dies; B must start at 3, which the buffer (13..=20) no longer holds.
    s.m.handle_closed(a, "test".into(), s.now);
    let (seqs, gaps) = s.drain(b);
    assert_eq!(gaps, vec![(3, 13)]);
    assert_eq!(seqs, (13..=20).collect::<Vec<_>>());
    assert!(s.m.counters().gap_chunks >= 10);
}

#[test]
fn broadcast_sends_to_all_and_resumes_a_recovered_endpoint_from_its_ack() {
    let mut s = Sim::new(
        MirrorConfig {
            mode: Mode::Broadcast,
            ..MirrorConfig::default()
        },
        3,
    );
    s.connect_all();
    s.push(1..=5);
    for &id in &s.ids.clone() {
        assert_eq!(s.drain(id).0, vec![1, 2, 3, 4, 5]);
    }
    s.feedback(s.ids[2], Some(3));
    // Endpoint 2 drops its connection; it reconnects and says it has up to 4.
    s.m.handle_closed(s.ids[2], "gone".into(), s.now);
    s.push(6..=7);
    s.m.handle_connected(s.ids[2], Some(Seq::new(4)), s.now);
    assert_eq!(s.drain(s.ids[2]).0, vec![5, 6, 7]);
    assert_eq!(s.drain(s.ids[0]).0, vec![6, 7]);
    // A late joiner starts at the live edge.
    let d = s.m.add_endpoint(addr(9), None, s.now).unwrap();
    s.m.handle_connected(d, None, s.now);
    s.push(8..=8);
    assert_eq!(s.drain(d).0, vec![8]);
}

#[test]
fn probes_measure_rtt_and_raise_the_bound() {
    let mut s = Sim::new(MirrorConfig::default(), 1);
    s.connect_all();
    let id = s.ids[0];
    for _ in 0..20 {
        let p = s.m.poll_probe(id, s.now).expect("a probe is due");
        s.advance(Duration::from_millis(50));
        s.m.handle_feedback(id, Some(p), None, s.now);
        s.advance(Duration::from_millis(20));
    }
    let snap = s.m.snapshot(s.now);
    let h = snap.endpoints[0].health;
    assert!((h.srtt_ms - 50.0).abs() < 1.0, "srtt {}", h.srtt_ms);
    assert!(h.silence_bound_ms >= 100.0);
}

#[test]
fn invalid_configs_and_lists_are_refused() {
    let now = crate::clock::now();
    assert_eq!(
        Mirror::new(MirrorConfig::default(), &[], now).err(),
        Some(MirrorError::NoEndpoints)
    );
    assert_eq!(
        Mirror::new(MirrorConfig::default(), &[addr(1), addr(1)], now).err(),
        Some(MirrorError::DuplicateEndpoint(addr(1)))
    );
    let bad = MirrorConfig {
        max_pending: 0,
        ..MirrorConfig::default()
    };
    assert!(matches!(
        Mirror::new(bad, &[addr(1)], now).err(),
        Some(MirrorError::InvalidConfig(_))
    ));
}

#[test]
fn send_rate_follows_the_measured_delivery() {
    // 1 kB chunks, 1 MB/s offered; the receiver takes 20 chunks per 100 ms (200 kB/s).
    let big = |seq: u64| Chunk {
        seq: Seq::new(seq),
        timestamp_us: seq,
        payload: Bytes::from(vec![0u8; 1000]),
    };
    let mut s = Sim::new(
        MirrorConfig {
            overflow: Overflow::DropOldest,
            ..MirrorConfig::default()
        },
        1,
    );
    s.connect_all();
    let id = s.ids[0];
    let rate = |s: &Sim| s.m.snapshot(s.now).endpoints[0].rate_bps;
    let start_rate = rate(&s);
    let (mut seq, mut sent) = (0, std::collections::VecDeque::new());
    let mut step = |s: &mut Sim, take: usize| {
        for _ in 0..100 {
            seq += 1;
            s.m.push(big(seq), None, s.now).unwrap();
        }
        sent.extend(s.drain(id).0);
        s.advance(Duration::from_millis(100));
        let took: Vec<_> = sent.drain(..take.min(sent.len())).collect();
        if let Some(&last) = took.last() {
            s.m.handle_feedback(id, None, Some(Seq::new(last)), s.now);
        }
        s.m.handle_timeout(s.now);
    };
    for _ in 0..50 {
        step(&mut s, 20);
    }
    let r = rate(&s);
    assert!(
        r < start_rate / 1000.0,
        "rate {r} came down from {start_rate}"
    );
    assert!(
        (100_000.0..=400_000.0).contains(&r),
        "rate {r} B/s follows the 200 kB/s delivered"
    );
    // The receiver speeds up: the rate climbs again.
    for _ in 0..30 {
        step(&mut s, 10_000);
    }
    assert!(rate(&s) > r * 4.0, "rate {} rose from {r}", rate(&s));
}

#[test]
fn an_endpoint_removed_while_active_that_then_goes_silent_is_forgotten_cleanly() {
    let mut s = Sim::new(
        MirrorConfig {
            revert_after: None,
            ..MirrorConfig::default()
        },
        3,
    );
    s.connect_all();
    let (a, b, c) = (s.ids[0], s.ids[1], s.ids[2]);
    s.push(1..=10);
    assert_eq!(s.drain(a).0.len(), 10);
    s.feedback(a, Some(4));
    s.m.remove_endpoint(a, s.now).unwrap();
    assert_eq!(s.m.state(a), Some(EndpointState::Draining));
    // A never acknowledges again and goes silent; B and C keep answering.
    for _ in 0..20 {
        s.advance(Duration::from_millis(10));
        s.feedback(b, None);
        s.feedback(c, None);
        s.m.handle_timeout(s.now);
    }
    assert_eq!(s.m.state(a), None, "removed once the hand-over happened");
    assert_eq!(s.m.state(b), Some(EndpointState::Active));
    assert_eq!(s.m.state(c), Some(EndpointState::Standby));
    // Nothing lost: B continues after the last acknowledged chunk.
    assert_eq!(s.drain(b).0, (5..=10).collect::<Vec<_>>());
}

#[test]
fn provider_gaps_leave_no_hole_and_broadcast_gets_what_was_pushed_before_connecting() {
    let mut s = Sim::new(
        MirrorConfig {
            mode: Mode::Broadcast,
            ..MirrorConfig::default()
        },
        2,
    );
    s.push(1..=3);
    s.m.push_gap(Seq::new(7), Seq::new(9));
    s.connect_all();
    for &id in &s.ids.clone() {
        let (seqs, gaps) = s.drain(id);
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(gaps, vec![(4, 9)]);
    }
    s.push(9..=9);
    assert_eq!(s.drain(s.ids[0]).0, vec![9]);
}

/// The end of the sequence space: the machine refuses a chunk at `u64::MAX`, serves one at
/// `u64::MAX - 1`, and takes bogus acknowledgements up there without wrapping or panicking.
const LAST: u64 = u64::MAX - 1;

#[test]
fn a_chunk_at_max_is_refused_and_the_last_one_is_served() {
    let mut s = Sim::new(MirrorConfig::default(), 1);
    s.connect_all();
    let id = s.ids[0];
    assert_eq!(
        s.m.push(chunk(u64::MAX), None, s.now),
        Err(PushError::SeqExhausted)
    );
    assert_eq!(s.m.head(), None, "a refused push changes nothing");
    s.push(LAST - 2..=LAST);
    assert_eq!(
        s.m.push(chunk(u64::MAX), None, s.now),
        Err(PushError::SeqExhausted)
    );
    assert_eq!(s.m.head(), Some(Seq::LAST));
    assert_eq!(s.drain(id).0, vec![LAST - 2, LAST - 1, LAST]);
    assert_eq!(s.m.snapshot(s.now).endpoints[0].pending, 0);
    assert!(!s.m.settled());
    s.feedback(id, Some(LAST));
    assert!(s.m.settled());
    assert_eq!(s.m.committed(), Some(Seq::LAST));
    assert_eq!(s.m.snapshot(s.now).endpoints[0].next_seq, Some(Seq::MAX));
    assert_eq!(s.drain(id), (vec![], vec![]));
    // A provider gap to the end leaves nothing after it.
    let mut g = Sim::new(MirrorConfig::default(), 1);
    g.connect_all();
    g.push(1..=2);
    g.m.push_gap(Seq::new(3), Seq::MAX);
    assert_eq!(g.m.head(), Some(Seq::LAST));
    assert_eq!(g.drain(g.ids[0]), (vec![1, 2], vec![(3, u64::MAX)]));
    assert_eq!(
        g.m.push(chunk(LAST), None, g.now),
        Err(PushError::NotIncreasing {
            seq: Seq::LAST,
            head: Seq::LAST
        })
    );
}

#[test]
fn overflow_and_switches_near_the_end_do_not_wrap() {
    // drop-oldest with the last chunks of the space.
    let mut s = Sim::new(
        MirrorConfig {
            overflow: Overflow::DropOldest,
            max_pending: 4,
            ..MirrorConfig::default()
        },
        2,
    );
    s.connect_all();
    let (a, b) = (s.ids[0], s.ids[1]);
    s.push(LAST - 9..=LAST);
    let (seqs, gaps) = s.drain(a);
    assert_eq!(gaps, vec![(LAST - 9, LAST - 3)]);
    assert_eq!(seqs, (LAST - 3..=LAST).collect::<Vec<_>>());
    // Failure switch after an acknowledgement of the last chunk: B starts at the end.
    s.feedback(a, Some(LAST));
    s.m.handle_closed(a, "gone".into(), s.now);
    assert_eq!(s.m.state(b), Some(EndpointState::Active));
    let sw = switched(&s.events());
    assert_eq!(sw.last().map(|w| w.3), Some(Some(u64::MAX)));
    assert_eq!(s.drain(b), (vec![], vec![]));
}

#[test]
fn bogus_acknowledgements_at_the_end_are_absorbed() {
    // A welcome claiming `u64::MAX` (the driver refuses it; the machine survives it) and
    // feedback acknowledging far past the head.
    let mut s = Sim::new(
        MirrorConfig {
            mode: Mode::Broadcast,
            ..MirrorConfig::default()
        },
        2,
    );
    let (a, b) = (s.ids[0], s.ids[1]);
    s.push(1..=3);
    s.m.handle_connected(a, Some(Seq::MAX), s.now);
    s.m.handle_connected(b, None, s.now);
    assert_eq!(s.drain(a), (vec![], vec![]), "a claims to have everything");
    assert_eq!(s.drain(b).0, vec![1, 2, 3]);
    s.feedback(b, Some(LAST));
    s.push(4..=4);
    assert_eq!(s.drain(b), (vec![], vec![]));
    assert!(s.m.settled());
    let snap = s.m.snapshot(s.now);
    assert!(snap.endpoints.iter().all(|e| e.pending == 0), "{snap:?}");
}
