//! Synthetic sensor-like series: the corpus the shipped default model learns from
//! ([`generate_corpus`]), and labelled test streams with injected anomalies
//! ([`labelled_stream`]) for the service's tests and for simulation.
//!
//! Plain numbers only: no tensors, no I/O. Everything is drawn from a seeded
//! [`ChaCha8Rng`], so a seed gives the same series on every run (and, since only `+ − × ÷`,
//! `sin`, `cos`, `exp`, `ln`, `powf` and `sqrt` of `f64` are used, on every machine with the same
//! maths library).
//!
//! # The mix
//!
//! Each series is drawn from a [`SyntheticSpec`] that [`SyntheticSpec::sample`] picks at
//! random. Components are in *shape units* (a seasonality's amplitude is about 1); the series
//! is `level + scale × (sum of components)`, with `level` and `scale` spanning many orders
//! of magnitude, as real sensors do (the model sees each series normalised by its own
//! statistics, so they only test the normalisation).
//!
//! | component | share (of the mixed family, unless said) | range |
//! |---|---|---|
//! | family | 85 % mixed, 15 % step-like | step-like: piecewise-constant levels (holds of 5–300 rows), low noise, half of them quantised, 30 % with a weak seasonality |
//! | seasonalities | 25 % none, 45 % one, 30 % two | periods log-uniform in 12–500 rows; a second one is half the time a multiple (×4…×8, "weekly over daily") of the first |
//! | seasonal shape | sine 30 %, harmonics 20 %, pulse 20 %, peak 15 %, sawtooth 15 % | pulse: on/off with rise and fall from sharp to gradual (business hours); peak: a narrow or broad daily peak; sawtooth: sharp resets |
//! | trend | 30 % | ±10⁻⁴…3·10⁻³ per row |
//! | random walk | 30 % | step σ 0.003–0.1 |
//! | AR(1) | 40 % | φ 0.5–0.99, stationary σ 0.03–1 |
//! | level shifts | 15 % | one per 500–3,000 rows on average, σ 1–3 (permanent) |
//! | noise | all | σ 0.001–1.6 (very low to high) |
//! | heteroscedastic noise | 20 % | variance following the seasonal signal, or slowly varying volatility |
//! | heavy-tailed noise | 10 % | Laplace instead of Gaussian |
//! | right skew | 15 % | the stationary part exponentiated (log-normal-like, σ_log 0.3–1): positive-skewed, like latencies and prices |
//! | floor | 10 % | clipped below at 0–1 typical spreads under the mean: saturation, idle stretches |
//! | quantisation | 15 % | resolution 1–20 % of the series' typical spread |
//!
//! There are no injected point anomalies in the corpus. [`labelled_stream`] adds spikes,
//! level shifts and noise bursts to a calm series of the same mix and says where.
//!
//! The default model (`models/default/`) depends on every number here: changing the mix
//! changes the model, which must then be retrained with the documented command
//! (docs/MODELS.md).
use std::f64::consts::PI;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// The shape of one period of a seasonality, as a function of the phase `u ∈ [0, 1)`, with
/// values in `[−1, 1]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Shape {
    /// `sin 2πu`.
    Sine,
    /// A sum of the first harmonics, `Σ a_k sin(2πku + φ_k)`, scaled by `1 / Σ |a_k|`.
    Harmonics {
        /// Amplitudes of harmonics 1, 2, 3, …
        amplitudes: Vec<f64>,
        /// Their phases, in radians.
        phases: Vec<f64>,
    },
    /// On for `duty` of the period, off otherwise, with linear edges lasting `rise` and
    /// `fall` (fractions of the period; 0 is a sharp edge): business hours, duty cycles.
    Pulse { duty: f64, rise: f64, fall: f64 },
    /// A daily-like peak, `exp((cos 2πu − 1) / width²)` mapped to `[−1, 1]`: narrow for
    /// small `width`.
    Peak { width: f64 },
    /// A linear ramp with a sharp reset, rising or falling.
    Sawtooth { rising: bool },
}

impl Shape {
    /// The shape's value at phase `u` (any real number; only its fractional part counts).
    pub fn value(&self, u: f64) -> f64 {
        let u = u - u.floor();
        match self {
            Shape::Sine => (2.0 * PI * u).sin(),
            Shape::Harmonics { amplitudes, phases } => {
                let total: f64 = amplitudes.iter().map(|a| a.abs()).sum();
                let sum: f64 = amplitudes
                    .iter()
                    .zip(phases)
                    .enumerate()
                    .map(|(k, (a, phi))| a * (2.0 * PI * (k + 1) as f64 * u + phi).sin())
                    .sum();
                if total > 0.0 {
                    sum / total
                } else {
                    0.0
                }
            }
            Shape::Pulse { duty, rise, fall } => {
                let on = if u < *rise {
                    u / rise
                } else if u < *duty {
                    1.0
                } else if u < duty + fall {
                    1.0 - (u - duty) / fall
                } else {
                    0.0
                };
                2.0 * on - 1.0
            }
            Shape::Peak { width } => 2.0 * (((2.0 * PI * u).cos() - 1.0) / (width * width)).exp() - 1.0,
            Shape::Sawtooth { rising } => {
                if *rising {
                    2.0 * u - 1.0
                } else {
                    1.0 - 2.0 * u
                }
            }
        }
    }
}

/// One periodic component.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seasonality {
    /// Rows per period (need not be an integer).
    pub period: f64,
    /// Multiplies the shape's `[−1, 1]` values.
    pub amplitude: f64,
    /// Phase at row 0, as a fraction of the period.
    pub phase: f64,
    pub shape: Shape,
}

impl Seasonality {
    /// The component's value at row `t`.
    pub fn value(&self, t: usize) -> f64 {
        self.amplitude * self.shape.value(t as f64 / self.period + self.phase)
    }
}

/// How the noise's standard deviation changes over time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NoiseVariance {
    /// Constant: homoscedastic noise.
    Constant,
    /// σ multiplied by `exp(gain · s)`, with `s ∈ [−1, 1]` the seasonal signal over its total
    /// amplitude: noisier at the peaks, like traffic.
    FollowsSignal { gain: f64 },
    /// σ multiplied by `exp(v_t)`, with `v_t` an AR(1) of coefficient `persistence` and
    /// stationary standard deviation `spread`: calm and volatile spells.
    Bursty { persistence: f64, spread: f64 },
}

/// Everything that defines one synthetic series except its random draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SyntheticSpec {
    /// Offset added to every value, in the data's units.
    pub level: f64,
    /// Data units per shape unit.
    pub scale: f64,
    /// Zero, one or two periodic components.
    pub seasonalities: Vec<Seasonality>,
    /// Slope per row.
    pub trend: f64,
    /// Standard deviation of a random walk's steps (0: none).
    pub walk: f64,
    /// AR(1) coefficient φ (0: none).
    pub ar_coefficient: f64,
    /// Standard deviation of the AR(1) innovations.
    pub ar_sigma: f64,
    /// Mean rows a piecewise-constant level holds before it jumps (0: no such component).
    pub step_hold: f64,
    /// Standard deviation of the piecewise-constant levels.
    pub step_spread: f64,
    /// Probability per row of a permanent level shift.
    pub shift_rate: f64,
    /// Standard deviation of a level shift.
    pub shift_size: f64,
    /// Standard deviation of the observation noise.
    pub noise: f64,
    pub noise_variance: NoiseVariance,
    /// Laplace instead of Gaussian noise (same variance).
    pub heavy_tails: bool,
    /// Right skew of the stationary part `x` (seasonalities, AR(1), steps, noise), with
    /// `σ` = [`SyntheticSpec::spread`]: `x ↦ σ (exp(e) − 1) / skew`, `e = skew · x / σ`
    /// softly capped at 4 (0: none). Positive-skewed behaviour such as latencies and
    /// prices. Trend, random walk and level shifts are added after it.
    pub skew: f64,
    /// The stationary part (after the skew) is clipped below at this, in shape units
    /// (`None`: no floor): saturating sensors, idle machines, intermittent demand.
    pub floor: Option<f64>,
    /// Resolution the values are rounded to, as a fraction of [`SyntheticSpec::spread`]
    /// (0: not quantised).
    pub quantum: f64,
}

/// A number log-uniformly distributed between `10^lo` and `10^hi`.
fn log_uniform(rng: &mut impl Rng, lo: f64, hi: f64) -> f64 {
    10f64.powf(rng.random_range(lo..hi))
}

fn normal(rng: &mut impl Rng) -> f64 {
    StandardNormal.sample(rng)
}

/// A unit-variance Laplace draw (by inverting its distribution function).
fn laplace(rng: &mut impl Rng) -> f64 {
    let u: f64 = rng.random_range(-0.5..0.5);
    -u.signum() * (1.0 - 2.0 * u.abs()).max(f64::MIN_POSITIVE).ln() / std::f64::consts::SQRT_2
}

impl Shape {
    /// A shape from the documented mix.
    fn sample(rng: &mut impl Rng) -> Shape {
        let pick: f64 = rng.random();
        if pick < 0.30 {
            Shape::Sine
        } else if pick < 0.50 {
            let n = rng.random_range(2..=4);
            let amplitudes = (1..=n).map(|k| rng.random_range(0.1..1.0) / k as f64).collect();
            let phases = (0..n).map(|_| rng.random_range(0.0..2.0 * PI)).collect();
            Shape::Harmonics { amplitudes, phases }
        } else if pick < 0.70 {
            let duty = rng.random_range(0.2..0.7);
            let rise = if rng.random_bool(0.5) { 0.0 } else { rng.random_range(0.0..0.15) };
            let fall = if rng.random_bool(0.5) { 0.0 } else { rng.random_range(0.0..0.15) };
            Shape::Pulse { duty, rise, fall }
        } else if pick < 0.85 {
            Shape::Peak { width: rng.random_range(0.05..0.4) }
        } else {
            Shape::Sawtooth { rising: rng.random_bool(0.5) }
        }
    }
}

impl Seasonality {
    fn sample(rng: &mut impl Rng, period: f64, amplitude: f64) -> Seasonality {
        Seasonality { period, amplitude, phase: rng.random(), shape: Shape::sample(rng) }
    }
}

/// Shortest and longest seasonal period, in rows.
pub const PERIOD_RANGE: (f64, f64) = (12.0, 500.0);

impl SyntheticSpec {
    /// A spec drawn from the documented mix (see the module's table).
    pub fn sample(rng: &mut impl Rng) -> SyntheticSpec {
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        let level = sign * log_uniform(rng, -1.0, 3.0);
        let scale = log_uniform(rng, -2.0, 3.0);
        let (lo, hi) = (PERIOD_RANGE.0.log10(), PERIOD_RANGE.1.log10());
        let mut spec = SyntheticSpec {
            level,
            scale,
            seasonalities: Vec::new(),
            trend: 0.0,
            walk: 0.0,
            ar_coefficient: 0.0,
            ar_sigma: 0.0,
            step_hold: 0.0,
            step_spread: 0.0,
            shift_rate: 0.0,
            shift_size: 0.0,
            noise: 0.0,
            noise_variance: NoiseVariance::Constant,
            heavy_tails: false,
            skew: 0.0,
            floor: None,
            quantum: 0.0,
        };
        if rng.random_bool(0.15) {
            // Step-like: a setpoint or a state that holds, then jumps.
            spec.step_hold = log_uniform(rng, 0.7, 2.5);
            spec.step_spread = rng.random_range(0.5..2.0);
            spec.noise = log_uniform(rng, -3.0, -1.3);
            if rng.random_bool(0.5) {
                spec.quantum = log_uniform(rng, -2.0, -0.7);
            }
            if rng.random_bool(0.3) {
                let period = log_uniform(rng, lo, hi);
                let amplitude = rng.random_range(0.1..0.5);
                spec.seasonalities.push(Seasonality::sample(rng, period, amplitude));
            }
            return spec;
        }
        let count = match rng.random::<f64>() {
            p if p < 0.25 => 0,
            p if p < 0.70 => 1,
            _ => 2,
        };
        if count >= 1 {
            let period = log_uniform(rng, lo, hi);
            let amplitude = rng.random_range(0.5..1.5);
            spec.seasonalities.push(Seasonality::sample(rng, period, amplitude));
        }
        if count == 2 {
            let first = spec.seasonalities[0].period;
            let multiple = rng.random_range(4..=8) as f64;
            let independent = log_uniform(rng, lo, hi);
            let period =
                if rng.random_bool(0.5) && first * multiple <= PERIOD_RANGE.1 { first * multiple } else { independent };
            let amplitude = rng.random_range(0.2..1.0);
            spec.seasonalities.push(Seasonality::sample(rng, period, amplitude));
        }
        if rng.random_bool(0.3) {
            let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
            spec.trend = sign * log_uniform(rng, -4.0, -2.5);
        }
        if rng.random_bool(0.3) {
            spec.walk = log_uniform(rng, -2.5, -1.0);
        }
        if rng.random_bool(0.4) {
            let phi = rng.random_range(0.5..0.99);
            spec.ar_coefficient = phi;
            spec.ar_sigma = log_uniform(rng, -1.5, 0.0) * (1.0 - phi * phi).sqrt();
        }
        if rng.random_bool(0.15) {
            spec.shift_rate = 1.0 / log_uniform(rng, 2.7, 3.5);
            spec.shift_size = rng.random_range(1.0..3.0);
        }
        spec.noise = log_uniform(rng, -3.0, 0.2);
        if rng.random_bool(0.2) {
            spec.noise_variance = if !spec.seasonalities.is_empty() && rng.random_bool(0.5) {
                NoiseVariance::FollowsSignal { gain: rng.random_range(0.5..1.5) }
            } else {
                NoiseVariance::Bursty { persistence: rng.random_range(0.95..0.995), spread: rng.random_range(0.4..1.0) }
            };
        }
        spec.heavy_tails = rng.random_bool(0.1);
        if rng.random_bool(0.15) {
            spec.skew = rng.random_range(0.3..1.0);
        }
        if rng.random_bool(0.1) {
            spec.floor = Some(-rng.random_range(0.0..1.0) * spec.spread());
        }
        if rng.random_bool(0.15) {
            spec.quantum = log_uniform(rng, -2.0, -0.7);
        }
        spec
    }

    /// The typical standard deviation of the series' stationary components (seasonalities,
    /// AR(1), steps, noise), in shape units: what the skew, the floor and the quantisation
    /// are relative to.
    pub fn spread(&self) -> f64 {
        let seasonal: f64 = self.seasonalities.iter().map(|s| s.amplitude * s.amplitude / 2.0).sum();
        let ar = if self.ar_coefficient > 0.0 {
            self.ar_sigma * self.ar_sigma / (1.0 - self.ar_coefficient * self.ar_coefficient)
        } else {
            0.0
        };
        (seasonal + ar + self.step_spread * self.step_spread + self.noise * self.noise).sqrt()
    }

    /// `rows` values of this spec, drawing the randomness from `rng`. Values are drawn row
    /// by row, so a longer series starts with the shorter one.
    pub fn generate(&self, rows: usize, rng: &mut impl Rng) -> Vec<f64> {
        let total_amplitude: f64 = self.seasonalities.iter().map(|s| s.amplitude).sum();
        let spread = self.spread();
        let quantum = self.quantum * spread;
        let (mut walk, mut ar, mut shift, mut log_vol) = (0.0, 0.0, 0.0, 0.0);
        let mut step = if self.step_hold > 0.0 { self.step_spread * normal(rng) } else { 0.0 };
        let mut values = Vec::with_capacity(rows);
        for t in 0..rows {
            let seasonal: f64 = self.seasonalities.iter().map(|s| s.value(t)).sum();
            if self.walk > 0.0 {
                walk += self.walk * normal(rng);
            }
            if self.ar_coefficient > 0.0 {
                ar = self.ar_coefficient * ar + self.ar_sigma * normal(rng);
            }
            if self.step_hold > 0.0 && rng.random_bool((1.0 / self.step_hold).min(1.0)) {
                step = self.step_spread * normal(rng);
            }
            if self.shift_rate > 0.0 && rng.random_bool(self.shift_rate.min(1.0)) {
                shift += self.shift_size * normal(rng);
            }
            let factor = match self.noise_variance {
                NoiseVariance::Constant => 1.0,
                NoiseVariance::FollowsSignal { gain } if total_amplitude > 0.0 => {
                    (gain * seasonal / total_amplitude).exp()
                }
                NoiseVariance::FollowsSignal { .. } => 1.0,
                NoiseVariance::Bursty { persistence, spread: vol_spread } => {
                    log_vol =
                        persistence * log_vol + vol_spread * (1.0 - persistence * persistence).sqrt() * normal(rng);
                    log_vol.exp()
                }
            };
            let eps = if self.heavy_tails { laplace(rng) } else { normal(rng) };
            let mut x = seasonal + ar + step + self.noise * factor * eps;
            if self.skew > 0.0 {
                // Log-normal-like: the stationary part in typical spreads, exponentiated, with
                // the exponent softly capped at 4 so volatile spells do not explode.
                let e = self.skew * x / spread;
                let e = if e > 0.0 { 4.0 * (e / 4.0).tanh() } else { e };
                x = spread * (e.exp() - 1.0) / self.skew;
            }
            if let Some(floor) = self.floor {
                x = x.max(floor);
            }
            x += self.trend * t as f64 + walk + shift;
            if quantum > 0.0 {
                x = (x / quantum).round() * quantum;
            }
            values.push(self.level + self.scale * x);
        }
        values
    }
}

/// The random generator of series `index` of the corpus with seed `seed`: one ChaCha stream
/// per series, so a series does not depend on how many others are drawn.
fn series_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Series `index` of the corpus [`generate_corpus`]`(seed, …, rows)`, with its spec.
pub fn corpus_series(seed: u64, index: usize, rows: usize) -> (SyntheticSpec, Vec<f64>) {
    let mut rng = series_rng(seed, index as u64);
    let spec = SyntheticSpec::sample(&mut rng);
    let values = spec.generate(rows, &mut rng);
    (spec, values)
}

/// `series` series of `rows` values each from the documented mix, the same for the same
/// seed. Series `i` is the same whatever `series` is, and a longer `rows` extends it.
pub fn generate_corpus(seed: u64, series: usize, rows: usize) -> Vec<Vec<f64>> {
    (0..series).map(|i| corpus_series(seed, i, rows).1).collect()
}

/// What was injected into a [`labelled_stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// One reading 4–7 standard deviations (of the series) away from where it should be.
    Spike,
    /// From this reading on, every value moves by 2–4 standard deviations, for good.
    LevelShift,
    /// [`NOISE_BURST_ROWS`] readings with extra Gaussian noise of 1–2 standard deviations.
    NoiseBurst,
}

/// Length of a noise burst, in rows.
pub const NOISE_BURST_ROWS: usize = 40;
/// Fewest rows between the starts of two injected anomalies.
pub const ANOMALY_SPACING: usize = 300;
/// Fraction of a labelled stream, at its start, kept free of anomalies (the detector's
/// warm-up; NAB calls it the probationary period).
pub const CLEAN_START: f64 = 0.2;

/// The ChaCha stream labelled streams draw from (the corpus uses streams `0..series`).
const LABELLED_STREAM: u64 = u64::MAX;

/// A test stream of `rows` readings with injected anomalies, and where each starts (sorted
/// by position). The base is a series of the corpus mix's mixed family without its own
/// level shifts, volatility spells or heavy tails, so the labels are its only anomalies. The first
/// [`CLEAN_START`] of the rows is clean; then one anomaly in each stretch of at least
/// [`ANOMALY_SPACING`] rows, cycling spike, level shift, noise burst. 1,200 rows or more
/// hold all three kinds; under 375 rows there are none.
pub fn labelled_stream(seed: u64, rows: usize) -> (Vec<f64>, Vec<(usize, AnomalyKind)>) {
    let (_, values, labels) = labelled_stream_and_base(seed, rows);
    (values, labels)
}

/// [`labelled_stream`] together with its base: the same stream before the anomalies were
/// injected (what a perfect detector's forecast would follow).
pub fn labelled_stream_and_base(seed: u64, rows: usize) -> (Vec<f64>, Vec<f64>, Vec<(usize, AnomalyKind)>) {
    let mut rng = series_rng(seed, LABELLED_STREAM);
    // A series of the mixed family (step-like ones jump by design).
    let mut spec = loop {
        let spec = SyntheticSpec::sample(&mut rng);
        if spec.step_hold == 0.0 {
            break spec;
        }
    };
    spec.shift_rate = 0.0;
    spec.heavy_tails = false;
    if matches!(spec.noise_variance, NoiseVariance::Bursty { .. }) {
        spec.noise_variance = NoiseVariance::Constant;
    }
    let base = spec.generate(rows, &mut rng);
    let mut values = base.clone();
    let sd = std_dev(&values).max(spec.scale * 1e-3);
    let start = (rows as f64 * CLEAN_START).ceil() as usize;
    let stretches = rows.saturating_sub(start) / ANOMALY_SPACING;
    let length = rows.saturating_sub(start).checked_div(stretches).unwrap_or(0);
    let kinds = [AnomalyKind::Spike, AnomalyKind::LevelShift, AnomalyKind::NoiseBurst];
    let mut labels = Vec::with_capacity(stretches);
    for i in 0..stretches {
        // Somewhere in the first half of the stretch, so a burst ends well before the next.
        let at = start + i * length + rng.random_range(length / 8..length / 2);
        let kind = kinds[i % kinds.len()];
        let sign = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
        match kind {
            AnomalyKind::Spike => values[at] += sign * rng.random_range(4.0..7.0) * sd,
            AnomalyKind::LevelShift => {
                let by = sign * rng.random_range(2.0..4.0) * sd;
                values[at..].iter_mut().for_each(|v| *v += by);
            }
            AnomalyKind::NoiseBurst => {
                let sigma = rng.random_range(1.0..2.0) * sd;
                for v in &mut values[at..(at + NOISE_BURST_ROWS).min(rows)] {
                    *v += sigma * normal(&mut rng);
                }
            }
        }
        labels.push((at, kind));
    }
    (base, values, labels)
}

/// Population standard deviation (0 for fewer than two values).
fn std_dev(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return 0.0;
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_stays_within_minus_one_and_one() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..200 {
            let shape = Shape::sample(&mut rng);
            for i in 0..1000 {
                let v = shape.value(i as f64 / 997.0 - 0.3);
                assert!((-1.0 - 1e-12..=1.0 + 1e-12).contains(&v), "{shape:?} gives {v}");
            }
        }
    }

    #[test]
    fn a_sharp_pulse_jumps_in_one_row() {
        let s = Seasonality {
            period: 100.0,
            amplitude: 1.0,
            phase: 0.0,
            shape: Shape::Pulse { duty: 0.5, rise: 0.0, fall: 0.0 },
        };
        assert_eq!((s.value(49), s.value(50), s.value(99), s.value(100)), (1.0, -1.0, -1.0, 1.0));
    }

    #[test]
    fn a_seasonality_repeats_after_its_period() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let s = Seasonality::sample(&mut rng, 24.0, 1.0);
        for t in 0..100 {
            assert!((s.value(t) - s.value(t + 24)).abs() < 1e-9);
        }
    }

    #[test]
    fn laplace_noise_has_unit_variance() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let draws: Vec<f64> = (0..200_000).map(|_| laplace(&mut rng)).collect();
        let sd = std_dev(&draws);
        assert!((sd - 1.0).abs() < 0.02, "{sd}");
    }

    #[test]
    fn sampled_specs_cover_the_documented_mix() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let specs: Vec<SyntheticSpec> = (0..2000).map(|_| SyntheticSpec::sample(&mut rng)).collect();
        let share = |f: &dyn Fn(&SyntheticSpec) -> bool| specs.iter().filter(|s| f(s)).count() as f64 / 2000.0;
        let near = |x: f64, p: f64| (x - p).abs() < 0.04;
        assert!(near(share(&|s| s.step_hold > 0.0), 0.15));
        assert!(near(share(&|s| s.seasonalities.len() == 2), 0.85 * 0.30));
        assert!(near(share(&|s| s.ar_coefficient > 0.0), 0.85 * 0.4));
        assert!(near(share(&|s| s.shift_rate > 0.0), 0.85 * 0.15));
        assert!(near(share(&|s| s.noise_variance != NoiseVariance::Constant), 0.85 * 0.2));
        assert!(near(share(&|s| s.skew > 0.0), 0.85 * 0.15));
        assert!(near(share(&|s| s.floor.is_some()), 0.85 * 0.1));
        let periods: Vec<f64> = specs.iter().flat_map(|s| s.seasonalities.iter().map(|x| x.period)).collect();
        assert!(periods.iter().all(|p| (PERIOD_RANGE.0..=PERIOD_RANGE.1).contains(p)));
        assert!(periods.iter().any(|p| *p < 20.0) && periods.iter().any(|p| *p > 300.0));
        let noise: Vec<f64> = specs.iter().map(|s| s.noise).collect();
        assert!(noise.iter().any(|n| *n < 0.002) && noise.iter().any(|n| *n > 1.0));
    }

    #[test]
    fn a_longer_series_starts_with_the_shorter_one() {
        let (_, short) = corpus_series(9, 4, 300);
        let (_, long) = corpus_series(9, 4, 900);
        assert_eq!(short[..], long[..300]);
    }

    #[test]
    fn labelled_streams_start_clean_and_space_their_anomalies() {
        for seed in 0..50 {
            let (values, labels) = labelled_stream(seed, 3000);
            assert_eq!(values.len(), 3000);
            assert!(values.iter().all(|v| v.is_finite()));
            assert!(labels.len() >= 3, "seed {seed}: {labels:?}");
            assert!(labels[0].0 >= 600);
            assert!(labels.windows(2).all(|w| w[1].0 > w[0].0 + NOISE_BURST_ROWS));
            assert!(labels.iter().all(|(at, _)| at + NOISE_BURST_ROWS <= 3000));
        }
        assert_eq!(labelled_stream(1, 0), (vec![], vec![]));
        assert!(labelled_stream(1, 374).1.is_empty());
        assert!(!labelled_stream(1, 375).1.is_empty());
    }

    #[test]
    fn a_spike_stands_out_from_its_neighbours() {
        for seed in 0..20 {
            let (values, labels) = labelled_stream(seed, 2000);
            let sd = std_dev(&values[..400]);
            let (at, _) = labels.iter().find(|(_, k)| *k == AnomalyKind::Spike).expect("a spike");
            let jump = (values[*at] - values[at - 1]).abs().min((values[*at] - values[at + 1]).abs());
            assert!(jump > 2.0 * sd, "seed {seed}: jump {jump} vs sd {sd}");
        }
    }
}
