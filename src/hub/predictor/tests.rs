use super::*;

const N: usize = 1_200;
const H: u32 = 10;

type Trace = fn(usize, u64) -> traces::Series;

const TRACES: [(&str, Trace); 3] = [
    ("ramp", traces::ramp_series),
    ("diurnal", traces::diurnal_series),
    ("flash", traces::flash_series),
];

/// `(learned, last value, population mean)` MAE on the second half, after warm-up on the first.
fn maes(series: &[f64], h: u32) -> (f64, f64, f64) {
    let warmup = series.len() / 2;
    let learned = demand_mae(&mut OnlineRegression::new(h), series, h, warmup);
    let last = demand_mae(&mut LastValue::new(), series, h, warmup);
    let mean = demand_mae(&mut PopulationMean::new(), series, h, warmup);
    (learned, last, mean)
}

/// The MAE of an oracle that knows the expected arrivals: the counting noise no model removes.
fn floor(s: &traces::Series) -> f64 {
    let w = s.counts.len() / 2;
    let n = (s.counts.len() - w) as f64;
    s.rate[w..]
        .iter()
        .zip(&s.counts[w..])
        .map(|(r, y)| (r - y).abs())
        .sum::<f64>()
        / n
}

fn report(name: &str, seed: u64, h: u32, (learned, last, mean): (f64, f64, f64), floor: f64) {
    println!(
        "{name:8} seed {seed} h={h:2}: online {learned:8.2}  last-value {last:8.2} \
         ({:5.1} % lower)  population-mean {mean:8.2} ({:5.1} % lower)  noise floor {floor:8.2}",
        100.0 * (1.0 - learned / last),
        100.0 * (1.0 - learned / mean),
    );
}

/// Held out: the second half of each trace, each value forecast before it is observed.
#[test]
fn learned_demand_beats_both_baselines_on_held_out_traffic() {
    for (name, trace) in TRACES {
        for seed in [1, 2, 3] {
            let s = trace(N, seed);
            let m = maes(&s.counts, H);
            let f = floor(&s);
            report(name, seed, H, m, f);
            let (learned, last, mean) = m;
            let naive = last.min(mean);
            // Flash crowds ten steps ahead are the hard case (the second crowd's onset cannot
            // be foreseen); the learned model must still beat both baselines there.
            let goal = if name == "flash" { 0.95 } else { 0.8 };
            assert!(learned <= goal * naive, "{name}/{seed}: {m:?}");
            // One step ahead, close to what any model can do: the counting noise.
            let one = maes(&s.counts, 1);
            report(name, seed, 1, one, f);
            assert!(one.0 <= 1.5 * f, "{name}/{seed}: {one:?} floor {f}");
        }
    }
}

#[test]
fn traces_are_deterministic_and_non_negative() {
    for f in [traces::ramp, traces::diurnal, traces::flash] {
        let (a, b) = (f(500, 7), f(500, 7));
        assert_eq!(a, b);
        assert_ne!(a, f(500, 8));
        assert!(a.iter().all(|v| v.is_finite() && *v >= 0.0));
    }
}

/// A predictor that is broken on purpose.
struct Broken(f64);

impl DemandPredictor for Broken {
    fn observe(&mut self, _value: f64) {}
    fn forecast(&self, _steps_ahead: u32) -> f64 {
        self.0
    }
    fn name(&self) -> &'static str {
        "broken"
    }
}

#[test]
fn guarded_turns_nan_and_negative_into_the_fallback_and_counts() {
    for bad in [f64::NAN, f64::INFINITY, -5.0] {
        let mut g = Guarded::new(Broken(bad));
        g.observe(42.0);
        assert_eq!(g.forecast(3), 42.0);
        g.observe(f64::NAN);
        assert_eq!(
            g.forecast(1),
            42.0,
            "a bad observation keeps the last good one"
        );
        assert_eq!(g.fallbacks(), 2);
        assert_eq!(g.bad_inputs(), 1);
    }
    let mut g = Guarded::new(Broken(7.0));
    g.observe(1.0);
    assert_eq!(g.forecast(1), 7.0);
    assert_eq!(g.fallbacks(), 0);
}

#[test]
fn demand_models_survive_garbage() {
    let mut m = OnlineRegression::default();
    assert_eq!(m.forecast(5), 0.0);
    let series = traces::diurnal(400, 1);
    for (i, &v) in series.iter().enumerate() {
        let v = match i % 17 {
            3 => f64::NAN,
            5 => -1e9,
            7 => f64::INFINITY,
            _ => v,
        };
        m.observe(v);
        for h in [1, 7, 10, 45, 60, 500] {
            let f = m.forecast(h);
            assert!(f.is_finite() && f >= 0.0, "step {i} h {h}: {f}");
        }
    }
    assert!(m.bad_inputs() > 0);
    for p in [
        &mut LastValue::new() as &mut dyn DemandPredictor,
        &mut PopulationMean::new(),
    ] {
        p.observe(f64::NAN);
        p.observe(-3.0);
        assert_eq!(p.forecast(1), 0.0);
    }
}

#[test]
fn demand_mae_scores_only_after_warmup() {
    let series = [1.0, 2.0, 3.0, 4.0];
    // Last value, one step ahead: forecasts 0 (nothing seen), 1, 2, 3.
    assert_eq!(demand_mae(&mut LastValue::new(), &series, 1, 0), 1.0);
    assert_eq!(demand_mae(&mut LastValue::new(), &series, 2, 2), 2.0);
    assert_eq!(demand_mae(&mut LastValue::new(), &series, 1, 9), 0.0);
}

#[test]
fn learned_request_load_beats_the_mean_on_held_out_requests() {
    let population = traces::requests(6_000, 11);
    let (train, test) = population.split_at(4_000);
    let mut learned = OnlineLoadRegression::default();
    let mut mean = MeanLoad::default();
    for (f, actual) in train {
        learned.learn(f, *actual);
        mean.learn(f, *actual);
    }
    let mae = |p: &dyn RequestLoadPredictor| {
        test.iter()
            .map(|(f, a)| (p.predict(f) - a).abs())
            .sum::<f64>()
            / test.len() as f64
    };
    let (l, m) = (mae(&learned), mae(&mean));
    println!(
        "requests: online-load-rls {l:.0} kbit  mean-load {m:.0} kbit ({:.1} % lower)",
        100.0 * (1.0 - l / m)
    );
    assert!(l <= 0.7 * m, "{l} vs {m}");
}

#[test]
fn request_load_never_goes_nan_or_negative() {
    let mut p = OnlineLoadRegression::default();
    let f = RequestFeatures {
        declared_bitrate_kbps: Some(f64::NAN),
        history_bitrate_kbps: Some(-1.0),
        history_duration_s: Some(f64::INFINITY),
        sessions_seen: f64::NAN,
        device_bucket: 250,
        region_bucket: 9,
    };
    assert_eq!(p.predict(&f), 0.0);
    for (i, (g, actual)) in traces::requests(300, 3).into_iter().enumerate() {
        let actual = match i % 5 {
            0 => f64::NAN,
            1 => -actual,
            2 => f64::INFINITY,
            _ => actual,
        };
        p.learn(&g, actual);
        p.learn(&f, actual);
        for x in [&f, &g] {
            let v = p.predict(x);
            assert!(v.is_finite() && v >= 0.0, "request {i}: {v}");
        }
    }
    assert_eq!(p.rejected(), 2 * 180);
    let mut m = MeanLoad::default();
    m.learn(&f, f64::NAN);
    assert_eq!((m.predict(&f), m.rejected()), (0.0, 1));
}

#[test]
fn request_models_answer_once_trained_and_learn_bitrate_from_long_sessions_only() {
    let mut m = RequestModels::default();
    let declared = |kbps| RequestFeatures {
        declared_bitrate_kbps: Some(kbps),
        ..RequestFeatures::default()
    };
    // Clients declaring 4000 kbit/s pull 1000 over 10 s; those declaring 500 pull 500.
    for i in 0..40 {
        // The bitrate model answers from its 24th (feature dimension) long session on.
        let answer = m.bitrate_kbps(&declared(4000.0));
        assert_eq!(answer.is_some(), i >= 24, "session {i}: {answer:?}");
        let (kbps, s) = if i % 2 == 0 { (1000, 10) } else { (500, 10) };
        let f = declared(if i % 2 == 0 { 4000.0 } else { 500.0 });
        m.learn(&f, s * 1000, kbps * 1000 / 8 * s);
        // Sub-second sessions teach the load model, never the bitrate model.
        m.learn(&f, 10, 10_000_000);
    }
    assert_eq!(m.learned(), 80);
    let heavy = m
        .bitrate_kbps(&declared(4000.0))
        .expect("trained on 40 sessions");
    let light = m.bitrate_kbps(&declared(500.0)).expect("trained");
    assert!((heavy - 1000.0).abs() < 50.0, "{heavy}");
    assert!((light - 500.0).abs() < 25.0, "{light}");
    let load = m
        .load_kilobits(&declared(4000.0))
        .expect("trained on 80 sessions");
    assert!(load.is_finite() && load > 0.0, "{load}");
}

#[test]
fn sessions_are_learned_against_their_grants_features_and_the_memory_is_bounded() {
    let declared = |kbps: f64| RequestFeatures {
        declared_bitrate_kbps: Some(kbps),
        ..RequestFeatures::default()
    };
    let id = |i: usize| {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(i as u64).to_le_bytes());
        id
    };
    // Granted as "declares 5000", the profile says "declares 400" by the time the sessions
    // end: the model must learn that 5000-declarers pull 800.
    let mut m = RequestModels::default();
    for i in 0..40 {
        m.remember(id(i), declared(5_000.0));
    }
    for i in 0..40 {
        // 800 kbit/s for 10 s.
        assert!(m.learn_grant(id(i), &declared(400.0), 10_000, 1_000_000));
    }
    let kbps = m
        .bitrate_kbps(&declared(5_000.0))
        .expect("trained on 40 sessions");
    assert!((600.0..1_000.0).contains(&kbps), "{kbps}");
    // A grant may lead to several sessions (a resume): it stays remembered.
    assert!(m.learn_grant(id(0), &declared(400.0), 10_000, 1_000_000));
    // An unknown grant falls back to the caller's features.
    assert!(!m.learn_grant(id(1 << 40), &declared(400.0), 10_000, 1_000_000));
    // Bounded: the oldest grants are forgotten first.
    for i in 40..GRANT_MEMORY + 50 {
        m.remember(id(i), declared(1_000.0));
    }
    assert_eq!(m.remembered_grants(), GRANT_MEMORY);
    assert!(!m.learn_grant(id(0), &declared(1.0), 10_000, 1_000));
    assert!(m.learn_grant(id(GRANT_MEMORY + 49), &declared(1.0), 10_000, 1_000));
    // Remembering an id twice keeps one entry.
    m.remember(id(GRANT_MEMORY + 49), declared(2_000.0));
    assert_eq!(m.remembered_grants(), GRANT_MEMORY);
}
