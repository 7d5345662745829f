//! The pool lifecycle on virtual time.

use std::time::{Duration, Instant};

use super::*;

fn cfg() -> PoolConfig {
    // The defaults' timings (the tests below rely on them), a small pool of small shards.
    PoolConfig {
        max_shards: 4,
        quota: Quota {
            sessions: 2,
            ..Quota::default()
        },
        ..PoolConfig::default()
    }
}

/// Starts everything the pool asked for, as a driver would.
fn run_actions(p: &mut Pool, now: Instant) -> Vec<PoolAction> {
    let actions: Vec<_> = std::iter::from_fn(|| p.poll_action()).collect();
    for a in &actions {
        if let PoolAction::Start { shard } = a {
            p.handle_started(*shard, now).unwrap();
        }
    }
    actions
}

#[test]
fn starts_min_shards_and_admits_warm_then_cold_with_a_new_shard() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 10, t0);
    assert_eq!(
        run_actions(&mut p, t0),
        vec![PoolAction::Start { shard: ShardId(10) }]
    );
    assert_eq!(p.admit(t0), Admission::Warm(ShardId(10)));
    assert_eq!(p.admit(t0), Admission::Warm(ShardId(10)));
    // Over the session quota: the next client is cold and a shard is started for it.
    let a = p.admit(t0);
    assert_eq!(
        a,
        Admission::Cold {
            shard: ShardId(11),
            ready_at: t0 + Duration::from_millis(500)
        }
    );
    assert_eq!(p.counters().cold_admissions, 1);
    assert_eq!(p.life(ShardId(11)), Some(Life::Starting));
}

#[test]
fn quota_full_shards_make_the_pool_grow_up_to_its_maximum() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    run_actions(&mut p, t0);
    let load = LoadReport {
        send_bps: u64::MAX,
        ..LoadReport::default()
    };
    p.handle_load(ShardId(0), load, t0).unwrap();
    // Over its bandwidth quota: takes nobody, and the pool adds a shard to keep the desired
    // number usable.
    p.handle_timeout(t0);
    let started = run_actions(&mut p, t0);
    assert_eq!(started, vec![PoolAction::Start { shard: ShardId(1) }]);
    assert_eq!(p.admit(t0), Admission::Warm(ShardId(1)));
    p.set_desired(100);
    p.handle_timeout(t0);
    assert_eq!(p.live_shards(), 4, "clamped to max_shards");
    run_actions(&mut p, t0);
    for _ in 0..5 {
        p.admit(t0);
    }
    assert_eq!(p.admit(t0), Admission::Full);
}

#[test]
fn idle_shards_stop_only_after_the_minimum_lifespan_and_the_idle_period() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    p.set_desired(3);
    p.handle_timeout(t0);
    run_actions(&mut p, t0);
    assert_eq!(p.live_shards(), 3);
    p.set_desired(1);
    // Idle from the start, but younger than the minimum lifespan: kept.
    let mut t = t0;
    for _ in 0..59 {
        t += Duration::from_secs(1);
        p.handle_timeout(t);
    }
    assert_eq!(p.live_shards(), 3, "no churn before min_lifespan");
    // Then one per scale-in step, never below the desired size.
    t += Duration::from_secs(1);
    p.handle_timeout(t);
    assert_eq!(p.live_shards(), 2);
    t += Duration::from_secs(5);
    p.handle_timeout(t);
    assert_eq!(p.live_shards(), 2, "one per scale_in_step");
    for _ in 0..30 {
        t += Duration::from_secs(1);
        p.handle_timeout(t);
    }
    assert_eq!(p.live_shards(), 1);
    let stops = std::iter::from_fn(|| p.poll_action())
        .filter(|a| matches!(a, PoolAction::Stop { .. }))
        .count();
    assert_eq!(stops, 2);
}

#[test]
fn a_busy_shard_is_never_stopped_and_recent_activity_keeps_it() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    p.set_desired(2);
    p.handle_timeout(t0);
    run_actions(&mut p, t0);
    p.set_desired(1);
    let busy = LoadReport {
        sessions: 1,
        ..LoadReport::default()
    };
    let mut t = t0;
    for _ in 0..120 {
        t += Duration::from_secs(1);
        p.handle_load(ShardId(0), busy, t).unwrap();
        p.handle_load(ShardId(1), busy, t).unwrap();
        p.handle_timeout(t);
    }
    assert_eq!(p.live_shards(), 2);
    assert_eq!(p.life(ShardId(0)), Some(Life::Active));
    // Shard 1 empties: stopped only `idle_stop_after` later.
    p.handle_load(ShardId(1), LoadReport::default(), t).unwrap();
    assert_eq!(p.life(ShardId(1)), Some(Life::Warm));
    let emptied = t;
    while p.live_shards() == 2 && t < emptied + Duration::from_secs(120) {
        t += Duration::from_secs(1);
        p.handle_load(ShardId(0), busy, t).unwrap();
        p.handle_timeout(t);
    }
    assert!(
        t >= emptied + Duration::from_secs(30),
        "stopped after {:?}",
        t - emptied
    );
    assert_eq!(p.life(ShardId(0)), Some(Life::Active));
}

#[test]
fn drain_moves_clients_away_then_stops_and_illegal_transitions_are_errors() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    p.set_desired(2);
    p.handle_timeout(t0);
    run_actions(&mut p, t0);
    assert!(matches!(p.admit(t0), Admission::Warm(_)));
    let busy = LoadReport {
        sessions: 1,
        ..LoadReport::default()
    };
    p.handle_load(ShardId(0), busy, t0).unwrap();
    p.drain(ShardId(0), t0).unwrap();
    assert_eq!(
        std::iter::from_fn(|| p.poll_action()).collect::<Vec<_>>(),
        vec![PoolAction::Drain { shard: ShardId(0) }]
    );
    // Nobody is placed on a draining shard.
    for _ in 0..2 {
        assert_eq!(p.admit(t0), Admission::Warm(ShardId(1)));
    }
    // Its client left (resumed elsewhere): stopped at the next tick.
    p.handle_load(ShardId(0), LoadReport::default(), t0)
        .unwrap();
    p.handle_timeout(t0 + Duration::from_millis(10));
    assert_eq!(p.life(ShardId(0)), None);
    assert!(
        std::iter::from_fn(|| p.poll_action()).any(|a| a == PoolAction::Stop { shard: ShardId(0) })
    );
    // Illegal: starting a shard twice, unknown shards.
    assert_eq!(
        p.handle_started(ShardId(1), t0),
        Err(PoolError::IllegalTransition {
            shard: ShardId(1),
            from: Life::Warm,
            to: Life::Warm
        })
    );
    assert_eq!(
        p.drain(ShardId(42), t0),
        Err(PoolError::UnknownShard(ShardId(42)))
    );
}

#[test]
fn a_drain_that_never_empties_stops_after_the_grace_period() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    run_actions(&mut p, t0);
    let busy = LoadReport {
        sessions: 2,
        ..LoadReport::default()
    };
    p.handle_load(ShardId(0), busy, t0).unwrap();
    p.drain(ShardId(0), t0).unwrap();
    p.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(p.life(ShardId(0)), Some(Life::Draining));
    p.handle_timeout(t0 + Duration::from_secs(2));
    assert_eq!(p.life(ShardId(0)), None);
    // The pool keeps its minimum: a replacement was started.
    assert_eq!(p.live_shards(), 1);
}

#[test]
fn a_shard_that_died_is_replaced() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    p.set_desired(2);
    p.handle_timeout(t0);
    let started: Vec<ShardId> = std::iter::from_fn(|| p.poll_action())
        .filter_map(|a| match a {
            PoolAction::Start { shard } => Some(shard),
            _ => None,
        })
        .collect();
    for &id in &started {
        p.handle_started(id, t0).unwrap();
    }
    assert_eq!(p.live_shards(), 2);
    p.handle_lost(started[0]).unwrap();
    assert_eq!(p.live_shards(), 1);
    assert_eq!(p.counters().lost, 1);
    assert!(p.handle_lost(started[0]).is_err(), "already gone");
    p.handle_timeout(t0 + Duration::from_millis(1));
    assert!(
        std::iter::from_fn(|| p.poll_action()).any(|a| matches!(a, PoolAction::Start { .. })),
        "the pool starts a replacement"
    );
}
