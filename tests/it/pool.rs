//! The shard pool driving real embedded shards: clients arrive along a ramp, the predictive
//! pool starts shards as the load grows (the hub places clients on them), and every client's
//! stream stays complete.

use std::time::Duration;

use shoal::pool::policy::Policy;
use shoal::traffic::{self, Shape, TrafficOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_real_shards_with_a_ramp_and_loses_nothing() {
    let o = TrafficOptions {
        shape: Shape::Ramp,
        duration: Duration::from_secs(12),
        peak_rate: 6.0,
        hold: Duration::from_secs(4),
        shard_sessions: 4,
        policy: Policy::Predictive,
    };
    let r = traffic::run(o, |_| {}).await.expect("runs");
    assert!(r.clients >= 30, "{r:?}");
    assert!(r.peak_shards >= 3, "the pool grew: {r:?}");
    assert!(
        r.seconds.iter().any(|s| s.desired > 1 && s.forecast > 0.0),
        "the predictor drove the size: {:?}",
        r.seconds
    );
    assert!(r.chunks > 1000, "{r:?}");
    assert_eq!(
        (
            r.missing,
            r.duplicates,
            r.integrity_failures,
            r.client_errors
        ),
        (0, 0, 0, 0),
        "{r:?}"
    );
}
