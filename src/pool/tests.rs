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

#[test]
fn shards_full_of_sessions_count_as_capacity_and_are_not_replaced() {
    let t0 = crate::clock::now();
    let mut p = Pool::new(GroupId(0), cfg(), 0, t0);
    p.set_desired(2);
    p.handle_timeout(t0);
    run_actions(&mut p, t0);
    for _ in 0..4 {
        assert!(matches!(p.admit(t0), Admission::Warm(_)));
    }
    // Both at their session quota: the desired size (from sessions) already counts them.
    p.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(run_actions(&mut p, t0), vec![]);
    assert_eq!(p.live_shards(), 2);
}

fn scaler(policy: policy::Policy, static_size: u32) -> policy::Scaler {
    policy::Scaler::new(policy::ScalerConfig {
        policy,
        static_size,
        target_utilization: 0.7,
        sync_period: Duration::from_secs(15),
        scale_out_threshold: 0.8,
        step: Duration::from_secs(1),
        startup: Duration::from_millis(500),
        plan_ahead: Duration::from_secs(10),
        initial_mean_session: Duration::from_secs(60),
    })
}

/// Warm room left, in sessions, over the shards taking clients.
fn warm_room(p: &Pool, now: Instant) -> u64 {
    p.snapshot(now)
        .iter()
        .filter(|s| matches!(s.life, Life::Warm | Life::Active))
        .map(|s| p.shard_sessions().saturating_sub(s.sessions))
        .sum()
}

#[test]
fn the_buffer_policy_keeps_its_spare_shards_warm_above_the_sessions() {
    let t0 = crate::clock::now();
    let cfg = PoolConfig {
        max_shards: 16,
        ..cfg()
    };
    let (spare, quota) = (3u32, cfg.quota.sessions);
    let mut p = Pool::new(GroupId(0), cfg, 0, t0);
    let mut s = scaler(policy::Policy::Buffer, spare);
    let mut t = t0;
    // No sessions: `spare` idle warm shards.
    s.step(&mut p, 0.0, 0.0, t);
    p.handle_timeout(t);
    run_actions(&mut p, t);
    assert_eq!(p.warm_shards(), spare);
    assert_eq!(warm_room(&p, t), u64::from(spare) * quota);
    // Clients arrive a few a step: after every step the pool has the spare's room again,
    // and never more than one shard of room beyond it (the packed need rounds up).
    for arrivals in [1u32, 4, 2, 5, 3] {
        t += Duration::from_secs(1);
        for _ in 0..arrivals {
            assert!(
                matches!(p.admit(t), Admission::Warm(_)),
                "the spare took it"
            );
        }
        let sessions = p.total_sessions() as f64;
        s.step(&mut p, f64::from(arrivals), sessions, t);
        p.handle_timeout(t);
        run_actions(&mut p, t);
        let room = warm_room(&p, t);
        assert!(
            room >= u64::from(spare) * quota,
            "room {room} at {sessions} sessions"
        );
        assert!(
            room < u64::from(spare + 1) * quota,
            "room {room} at {sessions} sessions"
        );
    }
    assert_eq!(p.counters().cold_admissions, 0);
}

#[test]
fn the_predictive_policy_sizes_for_the_forecast_with_less_headroom_than_the_target() {
    let t0 = crate::clock::now();
    let cfg = PoolConfig {
        max_shards: 64,
        quota: Quota {
            sessions: 50,
            ..Quota::default()
        },
        ..PoolConfig::default()
    };
    let mut p = Pool::new(GroupId(0), cfg, 0, t0);
    let mut s = scaler(policy::Policy::Predictive, 1);
    // A steady 10 arrivals a step of 60 s sessions: about 600 sessions.
    let sessions = 600.0;
    for k in 0..300u32 {
        s.step(
            &mut p,
            10.0,
            sessions,
            t0 + Duration::from_secs(u64::from(k)),
        );
    }
    let packed = p.shards_for(sessions, 1.0);
    let at_target = p.shards_for(sessions, 0.7);
    assert!(
        (packed..at_target).contains(&p.desired()),
        "{packed} <= {} < {at_target}",
        p.desired()
    );
    assert!((s.forecast() - sessions).abs() < 60.0, "{}", s.forecast());
}
