//! Test support for the scoring module: simulated streams with forecasts of chosen quality
//! (no network involved), and a JSON round-trip comparison. Compiled for tests only.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal, StudentT};

use super::{Forecast, RunningNormaliser, Scorer, ScorerConfig, Verdict};

/// A noisy seasonal stream and the quality of the forecasts it is judged against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sim {
    /// Noise standard deviation, data units.
    pub noise: f64,
    /// The forecast variance is the true noise variance times this.
    pub var_factor: f64,
    /// The forecast mean is the true signal this many readings ago.
    pub lag: usize,
    /// Noise is Student-t with these degrees of freedom (scaled to `noise` std) instead of Gaussian.
    pub student_t: Option<f64>,
    /// Random seed of the noise.
    pub seed: u64,
}

impl Default for Sim {
    fn default() -> Self {
        Self { noise: 0.5, var_factor: 1.0, lag: 0, student_t: None, seed: 1 }
    }
}

/// The true signal: a level, a short and a long season, in data units.
pub(crate) fn signal(i: usize) -> f64 {
    let t = i as f64;
    20.0 + 3.0 * (t * std::f64::consts::TAU / 97.0).sin() + 1.5 * (t * std::f64::consts::TAU / 1440.0).sin()
}

/// One judged reading of a simulation.
#[derive(Debug, Clone)]
pub(crate) struct Judged {
    pub ts: i64,
    pub value: f64,
    pub verdict: Verdict,
}

impl Sim {
    /// Runs `n` readings through a fresh normaliser and scorer. `anomaly(i)` is added to the
    /// reading in noise standard deviations; the forecast knows nothing of it (it predicts the
    /// clean signal), as a forecaster that does not follow the anomaly would. The first
    /// reading has no forecast, as in the service.
    pub fn run(&self, n: usize, config: &ScorerConfig, anomaly: impl Fn(usize) -> f64) -> Vec<Judged> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        let student = self.student_t.and_then(|nu| StudentT::new(nu).ok().map(|d| (d, ((nu - 2.0) / nu).sqrt())));
        let mut norm = RunningNormaliser::new(1);
        let mut scorer = Scorer::new(1);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let e: f64 = match &student {
                Some((d, unit)) => d.sample(&mut rng) * unit,
                None => StandardNormal.sample(&mut rng),
            };
            let value = signal(i) + self.noise * (e + anomaly(i));
            let forecast = (i > 0).then(|| {
                let scale = norm.scale(0);
                let var = self.var_factor * (self.noise / scale).powi(2);
                Forecast { mean: vec![norm.normalise(0, signal(i.saturating_sub(self.lag)))], log_var: vec![var.ln()] }
            });
            let verdict = scorer.judge(config, &[value], forecast.as_ref(), &norm);
            norm.update(&[value]);
            out.push(Judged { ts: i as i64 * 1000, value, verdict });
        }
        out
    }
}

/// Indices of flagged readings at or after `from`.
pub(crate) fn flagged(judged: &[Judged], from: usize) -> Vec<usize> {
    judged.iter().enumerate().skip(from).filter(|(_, j)| j.verdict.anomaly).map(|(i, _)| i).collect()
}

/// Whether serde_json parses every float it prints back to the same bits. Its default parser
/// is off by an ulp for some numbers (17 % of random ones); the `float_roundtrip` feature
/// makes it exact. This number is one of those it gets wrong by default.
fn json_floats_round_trip_exactly() -> bool {
    let x = 4.172_253_589_191_279e-21_f64;
    serde_json::to_string(&x).ok().and_then(|s| serde_json::from_str::<f64>(&s).ok()).map(f64::to_bits)
        == Some(x.to_bits())
}

/// Asserts that `back` (deserialised from the JSON of `original`) equals it: exactly where
/// serde_json round-trips floats exactly, else up to the last bit of every float.
pub(crate) fn assert_same_after_json<T: serde::Serialize + PartialEq + std::fmt::Debug>(original: &T, back: &T) {
    if json_floats_round_trip_exactly() {
        assert_eq!(original, back);
        return;
    }
    let a = serde_json::to_value(original).expect("serialisable");
    let b = serde_json::to_value(back).expect("serialisable");
    assert_values_close(&a, &b, "$");
}

fn assert_values_close(a: &serde_json::Value, b: &serde_json::Value, path: &str) {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            assert!(x == y || (x - y).abs() <= 4.0 * f64::EPSILON * x.abs().max(y.abs()), "{path}: {x:e} vs {y:e}");
        }
        (Value::Array(xs), Value::Array(ys)) => {
            assert_eq!(xs.len(), ys.len(), "{path}: lengths");
            for (i, (x, y)) in xs.iter().zip(ys).enumerate() {
                assert_values_close(x, y, &format!("{path}[{i}]"));
            }
        }
        (Value::Object(xs), Value::Object(ys)) => {
            assert_eq!(xs.len(), ys.len(), "{path}: fields");
            for (k, x) in xs {
                let y = ys.get(k).unwrap_or(&Value::Null);
                assert_values_close(x, y, &format!("{path}.{k}"));
            }
        }
        _ => assert_eq!(a, b, "{path}"),
    }
}
