//! The client's failover decisions, shared by subscriptions and publishers.
//!
//! Sans-IO: the driver reports each ended or failed shard session with
//! [`Failover::on_failure`] and does what the returned [`Next`] says. Rules, in order:
//! 1. a refusal that every shard of the cluster would repeat (an admission failure: forged,
//!    wrong group, bad proof, replay…) ends the work at once — except `TOKEN_EXPIRED`, which
//!    asks the hub for a new grant — and so does `UNKNOWN_STREAM` (the stream cannot be served:
//!    a live stream whose every copy is gone, a publish to a synthetic stream);
//! 2. the next shard of the grant is tried; once every shard of the grant failed since the
//!    last progress, the hub is asked for a new grant;
//! 3. more than `max_failures` failures without progress end the work (`Exhausted`);
//! 4. from the second failure on, each retry waits an exponential backoff (20 ms doubling,
//!    at most 1 s);
//! 5. a re-grant that fails after a shard sent go-away since the last progress ends the work:
//!    the cluster is shutting down ([`Failover::on_regrant_failed`]).

use std::time::Duration;

use super::ClientError;
use crate::wire::ErrorCode;

/// What to do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Stop: the error is final.
    GiveUp,
    /// Stop: too many failures without progress.
    Exhausted { attempts: u32 },
    /// Wait `backoff`, ask the hub for a new grant first if `regrant`, then attach to shard
    /// `rank` of the (new) grant.
    Retry {
        rank: usize,
        backoff: Duration,
        regrant: bool,
    },
}

/// The failover state of one subscription or publisher.
#[derive(Debug)]
pub struct Failover {
    rank: usize,
    tried_in_grant: usize,
    failures: u32,
    max_failures: u32,
    /// A shard sent go-away since the last progress.
    sent_away: bool,
}

impl Failover {
    pub fn new(max_failures: u32) -> Self {
        Self {
            rank: 0,
            tried_in_grant: 0,
            failures: 0,
            max_failures,
            sent_away: false,
        }
    }

    /// The shard of the grant to use now.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Failures since the last progress.
    #[cfg(test)]
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A shard session ended with `err`; `progressed` when it delivered something first.
    pub fn on_failure(&mut self, err: &ClientError, shards: usize, progressed: bool) -> Next {
        let code = err.code();
        let expired = code == Some(ErrorCode::TokenExpired);
        if code.is_some_and(ErrorCode::is_admission_failure) && !expired
            || code == Some(ErrorCode::UnknownStream)
        {
            return Next::GiveUp;
        }
        if progressed {
            self.failures = 0;
            self.tried_in_grant = 0;
            self.sent_away = false;
        }
        self.sent_away |= code == Some(ErrorCode::GoingAway);
        self.failures += 1;
        self.tried_in_grant += 1;
        self.rank = (self.rank + 1) % shards.max(1);
        if self.failures > self.max_failures {
            return Next::Exhausted {
                attempts: self.failures,
            };
        }
        let regrant = expired || self.tried_in_grant >= shards;
        let backoff = if self.failures > 1 {
            Duration::from_millis((20u64 << self.failures.min(6)).min(1000))
        } else {
            Duration::ZERO
        };
        Next::Retry {
            rank: self.rank,
            backoff,
            regrant,
        }
    }

    /// The hub gave no new grant: true when that ends the work (the shards sent go-away since
    /// the last progress, so the cluster is shutting down), false to retry.
    pub fn on_regrant_failed(&self) -> bool {
        self.sent_away
    }

    /// A new grant arrived: start again from its first shard.
    pub fn regranted(&mut self) {
        self.rank = 0;
        self.tried_in_grant = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: ErrorCode) -> ClientError {
        ClientError::Refused {
            code,
            reason: code.reason().into(),
        }
    }

    #[test]
    fn a_failed_regrant_ends_the_work_only_after_a_go_away_since_progress() {
        let mut f = Failover::new(8);
        f.on_failure(&refused(ErrorCode::ShardStopped), 2, false);
        assert!(!f.on_regrant_failed());
        f.on_failure(&refused(ErrorCode::GoingAway), 2, false);
        // Later failures of another kind keep it: the drain goes on.
        f.on_failure(&refused(ErrorCode::HeartbeatTimeout), 2, false);
        assert!(f.on_regrant_failed());
        // Progress forgets it.
        f.on_failure(&refused(ErrorCode::ShardStopped), 2, true);
        assert!(!f.on_regrant_failed());
    }

    #[test]
    fn walks_the_grant_then_asks_again() {
        let mut f = Failover::new(8);
        let lost = refused(ErrorCode::ShardStopped);
        let r = f.on_failure(&lost, 3, false);
        assert_eq!(
            r,
            Next::Retry {
                rank: 1,
                backoff: Duration::ZERO,
                regrant: false
            }
        );
        assert!(matches!(
            f.on_failure(&lost, 3, false),
            Next::Retry {
                rank: 2,
                regrant: false,
                ..
            }
        ));
        assert!(matches!(
            f.on_failure(&lost, 3, false),
            Next::Retry { regrant: true, .. }
        ));
        f.regranted();
        assert_eq!(f.rank(), 0);
        // Progress resets the count.
        assert!(matches!(
            f.on_failure(&lost, 2, true),
            Next::Retry {
                backoff: Duration::ZERO,
                ..
            }
        ));
        assert_eq!(f.failures(), 1);
    }

    #[test]
    fn admission_failures_are_final_except_expiry() {
        let mut f = Failover::new(8);
        assert_eq!(
            f.on_failure(&refused(ErrorCode::TokenInvalid), 3, false),
            Next::GiveUp
        );
        assert_eq!(
            f.on_failure(&refused(ErrorCode::AttachReplayed), 3, false),
            Next::GiveUp
        );
        assert!(matches!(
            f.on_failure(&refused(ErrorCode::TokenExpired), 3, false),
            Next::Retry { regrant: true, .. }
        ));
    }

    #[test]
    fn too_many_failures_without_progress_end_it_with_growing_backoff() {
        let mut f = Failover::new(3);
        let lost = refused(ErrorCode::HeartbeatTimeout);
        let mut waits = Vec::new();
        for _ in 0..3 {
            match f.on_failure(&lost, 2, false) {
                Next::Retry { backoff, .. } => waits.push(backoff),
                other => panic!("{other:?}"),
            }
        }
        assert!(waits.windows(2).all(|w| w[0] <= w[1]) && waits[2] <= Duration::from_secs(1));
        assert_eq!(
            f.on_failure(&lost, 2, false),
            Next::Exhausted { attempts: 4 }
        );
    }
}
