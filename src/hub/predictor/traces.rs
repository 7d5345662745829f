//! Deterministic, seeded synthetic traffic for training and evaluating the predictors.
//!
//! Demand traces are arrivals per step: a smooth shape plus Poisson noise, drawn from a
//! [`SplitMix64`] stream so a seed always gives the same series. [`requests`] draws a request
//! population whose load depends on the declared bitrate and the device class.

use super::RequestFeatures;

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny, fast, well-mixed 64-bit generator.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Poisson with mean `mean` (Knuth below 30, a rounded normal above).
    pub fn poisson(&mut self, mean: f64) -> f64 {
        if mean.is_nan() || mean <= 0.0 {
            return 0.0;
        }
        if mean < 30.0 {
            let limit = (-mean).exp();
            let (mut k, mut p) = (0.0, self.uniform());
            while p > limit {
                k += 1.0;
                p *= self.uniform();
            }
            k
        } else {
            (mean + mean.sqrt() * self.normal()).round().max(0.0)
        }
    }
}

/// A trace's expected arrivals per step (its shape) and the Poisson counts drawn from it.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub rate: Vec<f64>,
    pub counts: Vec<f64>,
}

fn noisy(shape: impl Fn(f64) -> f64, n: usize, rng: &mut SplitMix64) -> Series {
    let rate: Vec<f64> = (0..n).map(|t| shape(t as f64)).collect();
    let counts = rate.iter().map(|&r| rng.poisson(r)).collect();
    Series { rate, counts }
}

/// An event start: about 150–250 arrivals per step until 55 % of the series, then an
/// exponential climb to 15–25× that over 100–160 steps (+2–3 % per step, the pace of an audience
/// arriving for a live event), then a plateau.
pub fn ramp(n: usize, seed: u64) -> Vec<f64> {
    ramp_series(n, seed).counts
}

/// [`ramp`] with its expected arrivals per step.
pub fn ramp_series(n: usize, seed: u64) -> Series {
    let mut rng = SplitMix64::new(seed);
    let lo = 150.0 + 100.0 * rng.uniform();
    let growth = 15.0 + 10.0 * rng.uniform();
    let span = 100.0 + 60.0 * rng.uniform();
    let start = 0.55 * n as f64;
    let shape = |t: f64| {
        let f = ((t - start) / span).clamp(0.0, 1.0);
        lo * growth.powf(f)
    };
    noisy(shape, n, &mut rng)
}

/// A daily cycle: a sinusoid with period `n / 2` (mean about 1 500, swing ±1 200) with a weaker
/// second harmonic, plus noise.
pub fn diurnal(n: usize, seed: u64) -> Vec<f64> {
    diurnal_series(n, seed).counts
}

/// [`diurnal`] with its expected arrivals per step.
pub fn diurnal_series(n: usize, seed: u64) -> Series {
    let mut rng = SplitMix64::new(seed);
    let period = (n as f64 / 2.0).max(2.0);
    let phase = std::f64::consts::TAU * rng.uniform();
    let (mean, amp) = (
        1_400.0 + 200.0 * rng.uniform(),
        1_100.0 + 200.0 * rng.uniform(),
    );
    let shape = |t: f64| {
        let w = std::f64::consts::TAU * t / period + phase;
        (mean + amp * w.sin() + 0.15 * amp * (2.0 * w).sin()).max(0.0)
    };
    noisy(shape, n, &mut rng)
}

/// A baseline of about 300 arrivals per step with two flash crowds (at 20 % and 60 % of the
/// series). Each is a gamma-shaped pulse: it grows over 20–60 steps to 8–10× the baseline, then
/// decays over a few times its rise time.
pub fn flash(n: usize, seed: u64) -> Vec<f64> {
    flash_series(n, seed).counts
}

/// [`flash`] with its expected arrivals per step.
pub fn flash_series(n: usize, seed: u64) -> Series {
    let mut rng = SplitMix64::new(seed);
    let base = 250.0 + 100.0 * rng.uniform();
    let events: Vec<(f64, f64, f64)> = [0.2, 0.6]
        .iter()
        .map(|at| {
            let rise = 20.0 + 40.0 * rng.uniform();
            let peak = 8.0 + 2.0 * rng.uniform();
            (at * n as f64, rise, peak)
        })
        .collect();
    let shape = |t: f64| {
        let extra: f64 = events
            .iter()
            .map(|&(at, rise, peak)| {
                let u = (t - at) / rise;
                if u <= 0.0 {
                    0.0
                } else {
                    // u² e^{2(1-u)}: 0 at the start, 1 at u = 1, smooth, then decays.
                    (peak - 1.0) * u * u * (2.0 * (1.0 - u)).exp()
                }
            })
            .sum();
        base * (1.0 + extra)
    };
    noisy(shape, n, &mut rng)
}

/// `n` requests and their actual load (kilobits): bitrate ≈ declared × a device factor, duration
/// set by the device class and region, each client with its own habits and each session
/// deviating from them (log-normal); about half the clients are returning and bring history.
pub fn requests(n: usize, seed: u64) -> Vec<(RequestFeatures, f64)> {
    const BITRATES: [f64; 5] = [400.0, 1_200.0, 2_500.0, 5_000.0, 8_000.0];
    // (bitrate factor, median duration in seconds) per device class.
    const DEVICES: [(f64, f64); 4] = [(0.6, 40.0), (0.9, 180.0), (1.0, 900.0), (0.8, 300.0)];
    let mut rng = SplitMix64::new(seed);
    (0..n)
        .map(|_| {
            let declared = BITRATES[(rng.next_u64() % BITRATES.len() as u64) as usize];
            let device = (rng.next_u64() % DEVICES.len() as u64) as u8;
            let region = (rng.next_u64() % 4) as u8;
            let (factor, median_s) = DEVICES[device as usize];
            // The client's habits, then this session's deviation from them.
            let usual_kbps = declared * factor * (0.15 * rng.normal()).exp();
            let usual_s = median_s * (1.0 + 0.2 * region as f64) * (0.4 * rng.normal()).exp();
            let bitrate = usual_kbps * (0.05 * rng.normal()).exp();
            let duration = usual_s * (0.3 * rng.normal()).exp();
            let returning = rng.uniform() < 0.5;
            let hist =
                |rng: &mut SplitMix64, v: f64| returning.then(|| v * (0.1 * rng.normal()).exp());
            let f = RequestFeatures {
                declared_bitrate_kbps: (rng.uniform() < 0.9).then_some(declared),
                history_bitrate_kbps: hist(&mut rng, usual_kbps),
                history_duration_s: hist(&mut rng, usual_s),
                sessions_seen: if returning {
                    1.0 + (rng.next_u64() % 20) as f64
                } else {
                    0.0
                },
                device_bucket: device,
                region_bucket: region,
            };
            (f, bitrate * duration)
        })
        .collect()
}
