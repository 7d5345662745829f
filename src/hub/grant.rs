//! The grant decision, sans-IO: what the hub decides for one stream request, in this order.
//!
//! 1. [`check`]: the request is valid — hints in range, no publishing to a synthetic stream —
//!    else `BAD_REQUEST` with its reason.
//! 2. [`assess`]: the client's priority and the bitrate it is expected to pull, from what the
//!    profiles say of it (or only its hints when the profiler was busy) and the learned request
//!    model's answer:
//!    - priority: publishers and returning clients (a profile with past requests) high, a
//!      client over its request rate low, everyone else normal;
//!    - expected bitrate of a subscription: the learned model's, once it learned from enough
//!      ended sessions; before that (and for publishers) the client's delivered mean, else its
//!      bitrate hint, else unknown (0).
//! 3. placement (see [`super::placement`]) picks the group and ranked shards;
//! 4. [`claims`]: what the token seals — a fresh id and session secret (randomness comes in
//!    from the driver), the group, the client, the expiry, priority and expected bitrate;
//! 5. [`reply`]: the grant the client gets.
//!
//! The driver (`super`) reads the clock, the profiles and the models, draws the randomness,
//! seals the token and writes the answer.

use crate::hub::placement::Decision;
use crate::hub::predictor;
use crate::hub::profiler;
use crate::ids::TokenId;
use crate::security::token::{Claims, Priority};
use crate::wire::{ErrorCode, Grant, Role, ShardAddr, StreamRequest};

/// A refused request: its code and the reason the client reads.
pub type Refusal = (ErrorCode, String);

/// The hub's prediction for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Assessed {
    pub priority: Priority,
    pub expect_kbps: u32,
    /// What the request models were asked (subscriptions): remembered with the grant so the
    /// models later learn from the session against exactly this.
    pub features: Option<predictor::RequestFeatures>,
}

/// What the profiles said of the client, when the profiler could be read.
#[derive(Debug, Clone, Copy)]
pub struct Profile<'a> {
    pub features: &'a profiler::RequestFeatures,
    /// The profiler's request-rate cap (requests per minute).
    pub max_requests_per_minute: f64,
}

/// Step 1.
pub fn check(req: &StreamRequest) -> Result<(), Refusal> {
    req.hints
        .validate()
        .map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    if req.role == Role::Publish && req.stream.is_synthetic() {
        let reason = "synthetic streams (synth/…) cannot be published to".to_string();
        return Err((ErrorCode::BadRequest, reason));
    }
    Ok(())
}

/// The profile's view of a request, as the request models take it.
pub fn model_features(f: &profiler::RequestFeatures) -> predictor::RequestFeatures {
    predictor::RequestFeatures {
        declared_bitrate_kbps: f.declared_bitrate_kbps,
        history_bitrate_kbps: f.mean_bitrate_kbps,
        history_duration_s: f.mean_duration_s,
        sessions_seen: f.sessions,
        device_bucket: f.device_bucket,
        region_bucket: f.region_bucket,
    }
}

/// Step 2. `profile` is `None` when the profiler was busy; `learned` answers the request
/// models (`None`: not learned enough yet).
pub fn assess(
    req: &StreamRequest,
    profile: Option<Profile<'_>>,
    hint_features: impl FnOnce() -> profiler::RequestFeatures,
    learned: impl FnOnce(&predictor::RequestFeatures) -> Option<f64>,
) -> (Assessed, bool) {
    let priority = match &profile {
        _ if req.role == Role::Publish => Priority::High,
        None => Priority::Normal,
        Some(p) if p.features.requests_per_minute >= p.max_requests_per_minute => Priority::Low,
        Some(p) if p.features.known_client => Priority::High,
        Some(_) => Priority::Normal,
    };
    let f = profile.map_or_else(hint_features, |p| *p.features);
    let features = (req.role == Role::Subscribe).then(|| model_features(&f));
    // A nonsense figure (NaN, negative) from any source falls back to the next one.
    let valid = |v: &f64| v.is_finite() && *v >= 0.0;
    let learned = features.as_ref().and_then(learned).filter(valid);
    let expect = learned
        .or(f.mean_bitrate_kbps.filter(valid))
        .or(f.declared_bitrate_kbps.filter(valid))
        .map_or(0, |v| v.min(f64::from(u32::MAX)) as u32);
    let a = Assessed {
        priority,
        expect_kbps: expect,
        features,
    };
    (a, learned.is_some())
}

/// Step 4: the claims a token for `decision` seals.
pub fn claims(
    req: &StreamRequest,
    decision: &Decision,
    assessed: &Assessed,
    random: ([u8; 16], [u8; 32]),
    now_ms: u64,
    ttl_ms: u64,
) -> Claims {
    Claims {
        id: TokenId(random.0),
        group: decision.group,
        client: req.client_id.clone(),
        secret: random.1,
        issued_at_ms: now_ms,
        expires_at_ms: now_ms.saturating_add(ttl_ms),
        priority: assessed.priority,
        expect_kbps: assessed.expect_kbps,
    }
}

/// Step 5: the grant for a sealed `token`. Behind a QUIC-LB balancer, every shard is reached
/// at the balancer's address `via`, and `route` gives each shard's routing CIDs.
pub fn reply(
    decision: &Decision,
    claims: &Claims,
    token: Vec<u8>,
    via: Option<std::net::SocketAddr>,
    route: impl Fn(crate::ids::ShardId) -> Vec<Vec<u8>>,
) -> Grant {
    Grant {
        group: decision.group,
        shards: decision
            .shards
            .iter()
            .map(|s| ShardAddr {
                id: s.id,
                addr: via.unwrap_or(s.addr).to_string(),
                route_cids: route(s.id)
                    .into_iter()
                    .map(serde_bytes::ByteBuf::from)
                    .collect(),
            })
            .collect(),
        token,
        session_secret: claims.secret.to_vec(),
        expires_at_ms: claims.expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, GroupId, ShardId, StreamName};
    use crate::wire::Hints;

    fn req(stream: &str, role: Role, bitrate: Option<u32>) -> StreamRequest {
        StreamRequest {
            client_id: ClientId::new("c").unwrap(),
            stream: StreamName::new(stream).unwrap(),
            role,
            hints: Hints {
                bitrate_kbps: bitrate,
                ..Hints::default()
            },
        }
    }

    fn features(known: bool, rpm: f64, mean: Option<f64>) -> profiler::RequestFeatures {
        profiler::RequestFeatures {
            known_client: known,
            requests_per_minute: rpm,
            mean_bitrate_kbps: mean,
            ..profiler::Profiler::hint_features(&Hints::default())
        }
    }

    #[test]
    fn invalid_requests_are_bad_requests() {
        assert!(check(&req("synth/a", Role::Subscribe, Some(500))).is_ok());
        let (code, _) = check(&req("synth/a", Role::Subscribe, Some(0))).unwrap_err();
        assert_eq!(code, ErrorCode::BadRequest);
        let (code, why) = check(&req("synth/a", Role::Publish, None)).unwrap_err();
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(why.contains("synthetic"));
    }

    #[test]
    fn priority_follows_role_history_and_rate() {
        let sub = req("live/x", Role::Subscribe, None);
        let hint = || profiler::Profiler::hint_features(&Hints::default());
        let none = |_: &predictor::RequestFeatures| None;
        let (a, _) = assess(&req("live/x", Role::Publish, None), None, hint, none);
        assert_eq!(a.priority, Priority::High);
        assert!(a.features.is_none(), "publishers are not modelled");
        let (a, _) = assess(&sub, None, hint, none);
        assert_eq!(a.priority, Priority::Normal);
        let known = features(true, 1.0, None);
        let p = Profile {
            features: &known,
            max_requests_per_minute: 60.0,
        };
        assert_eq!(assess(&sub, Some(p), hint, none).0.priority, Priority::High);
        let flooding = features(true, 60.0, None);
        let p = Profile {
            features: &flooding,
            max_requests_per_minute: 60.0,
        };
        assert_eq!(assess(&sub, Some(p), hint, none).0.priority, Priority::Low);
    }

    #[test]
    fn expected_bitrate_prefers_the_model_then_history_then_hint() {
        let sub = req("synth/a", Role::Subscribe, Some(800));
        let hinted = || profiler::Profiler::hint_features(&sub.hints);
        let (a, from_model) = assess(&sub, None, hinted, |_| None);
        assert_eq!((a.expect_kbps, from_model), (800, false));
        let history = features(true, 1.0, Some(1500.0));
        let p = Profile {
            features: &history,
            max_requests_per_minute: 60.0,
        };
        assert_eq!(assess(&sub, Some(p), hinted, |_| None).0.expect_kbps, 1500);
        let (a, from_model) = assess(&sub, Some(p), hinted, |_| Some(2500.0));
        assert_eq!((a.expect_kbps, from_model), (2500, true));
        let (a, _) = assess(&sub, Some(p), hinted, |_| Some(f64::NAN));
        assert_eq!(a.expect_kbps, 1500, "a nonsense model answer falls back");
    }

    #[test]
    fn claims_and_reply_carry_the_decision() {
        let r = req("synth/a", Role::Subscribe, None);
        let view = crate::hub::placement::ShardView {
            id: ShardId(3),
            group: GroupId(1),
            addr: "127.0.0.1:7003".parse().unwrap(),
            alive: true,
            sessions: 0,
            capacity: 10,
            committed_kbps: 0,
        };
        let d = Decision {
            group: GroupId(1),
            shards: vec![view],
        };
        let a = Assessed {
            priority: Priority::High,
            expect_kbps: 9,
            features: None,
        };
        let c = claims(&r, &d, &a, ([1; 16], [2; 32]), 1_000, u64::MAX);
        assert_eq!(c.expires_at_ms, u64::MAX, "no overflow");
        assert_eq!(
            (c.group, c.priority, c.expect_kbps),
            (GroupId(1), Priority::High, 9)
        );
        let g = reply(&d, &c, vec![7; 4], None, |_| Vec::new());
        assert_eq!(g.shards[0].addr, "127.0.0.1:7003");
        assert!(g.shards[0].route_cids.is_empty());
        let via = "10.0.0.1:443".parse().unwrap();
        let g = reply(&d, &c, vec![7; 4], Some(via), |id| {
            vec![vec![id.0 as u8; 13]]
        });
        assert_eq!(
            g.shards[0].addr, "10.0.0.1:443",
            "behind a balancer: its address"
        );
        assert_eq!(g.shards[0].route_cids[0].as_ref(), &[3u8; 13][..]);
        assert_eq!(g.session_secret, vec![2; 32]);
    }
}
