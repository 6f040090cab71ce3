//! The running per-channel normaliser of a stream: puts readings into the units the
//! forecaster works in and maps forecasts back, following slow drifts with bounded state.
//!
//! It owns only the statistics and the arithmetic; when to update it (after judging a
//! reading, before stepping the network) is the stream actor's business.

use super::ScoringError;

/// Readings after which the statistics stop being plain averages and become exponentially
/// weighted with `alpha = 1 / MEMORY` (an effective memory of about this many readings).
const MEMORY: u64 = 1000;
/// Relative floor of the scale: a channel is resolved to one part in 10⁴ of its level at best,
/// so a (near-)constant channel does not divide by (almost) zero.
const SCALE_FLOOR_RELATIVE: f64 = 1e-4;
/// Absolute floor of the scale, for a constant channel at (or near) zero.
const SCALE_FLOOR_ABSOLUTE: f64 = 1e-6;
/// Inputs are clamped to ±this before use, so squares and differences stay finite.
const VALUE_LIMIT: f64 = 1e150;

/// Running per-channel normaliser of a stream.
///
/// Mean and (population) variance are Welford's running averages for the first 1000
/// readings, then exponentially weighted with `alpha = 1/1000`: the same update with the
/// weight `1/min(n, 1000)`, so it follows slow drifts with bounded state and no history.
///
/// The scale used is `max(std, 1e-4 × |mean|, 1e-6)`: a constant channel never divides by
/// zero, and a channel is resolved to at most one part in 10⁴ of its level. A change of a
/// long-constant channel therefore normalises to a large number; callers feeding a network
/// should clamp normalised inputs. Values beyond ±1e150 are treated as ±1e150.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RunningNormaliser {
    /// Readings folded in so far; sets the weight of the next one.
    count: u64,
    /// Running mean per channel.
    mean: Vec<f64>,
    /// Running population variance per channel.
    var: Vec<f64>,
}

impl RunningNormaliser {
    /// A normaliser for `channels` channels that has seen nothing (mean 0, scale at its floor).
    pub fn new(channels: usize) -> Self {
        Self { count: 0, mean: vec![0.0; channels], var: vec![0.0; channels] }
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Readings folded in so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Folds in one reading. The caller guarantees finite values and the right number of
    /// channels; a reading that breaks this is ignored (see [`RunningNormaliser::try_update`]
    /// for why). Never panics.
    pub fn update(&mut self, values: &[f64]) {
        // Ignoring is the documented behaviour for a broken caller contract; `try_update`
        // reports the reason to callers that want it.
        let _ = self.try_update(values);
    }

    /// Folds in one reading, or says why not and leaves the statistics unchanged.
    pub fn try_update(&mut self, values: &[f64]) -> Result<(), ScoringError> {
        if values.len() != self.channels() {
            return Err(ScoringError::ChannelMismatch { expected: self.channels(), got: values.len() });
        }
        if let Some(channel) = values.iter().position(|v| !v.is_finite()) {
            return Err(ScoringError::NonFinite { what: "value", channel });
        }
        self.count = self.count.saturating_add(1);
        let alpha = 1.0 / self.count.min(MEMORY) as f64;
        for ((mean, var), &v) in self.mean.iter_mut().zip(self.var.iter_mut()).zip(values) {
            let delta = clamp_value(v) - *mean;
            let step = alpha * delta;
            *mean += step;
            // Welford's update in variance form; with alpha = 1/n it is exactly the running
            // population variance, with a fixed alpha the exponentially weighted one.
            *var = (1.0 - alpha) * (*var + delta * step);
        }
        Ok(())
    }

    /// Reading `v` of `channel` in normalised units: `(v − mean) / scale`. A channel out of
    /// range is returned unchanged.
    pub fn normalise(&self, channel: usize, v: f64) -> f64 {
        match self.mean.get(channel) {
            Some(mean) => (clamp_value(v) - mean) / self.scale(channel),
            None => v,
        }
    }

    /// Normalised value `y` of `channel` back in data units: `y × scale + mean`, clamped to
    /// the finite range. A channel out of range is returned unchanged.
    pub fn denormalise(&self, channel: usize, y: f64) -> f64 {
        match self.mean.get(channel) {
            Some(mean) => (y * self.scale(channel) + mean).clamp(f64::MIN, f64::MAX),
            None => y,
        }
    }

    /// The scale (standard deviation with its floor) used for `channel`; 1 for a channel out
    /// of range. Always finite and positive.
    pub fn scale(&self, channel: usize) -> f64 {
        match (self.mean.get(channel), self.var.get(channel)) {
            (Some(mean), Some(var)) => var.sqrt().max(SCALE_FLOOR_RELATIVE * mean.abs()).max(SCALE_FLOOR_ABSOLUTE),
            _ => 1.0,
        }
    }
}

/// Clamps a value to ±[`VALUE_LIMIT`] (NaN stays NaN, but callers never pass one).
fn clamp_value(v: f64) -> f64 {
    v.clamp(-VALUE_LIMIT, VALUE_LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Mean and population variance of `xs` under `weights` (which sum to 1), computed directly.
    fn weighted(xs: &[f64], weights: &[f64]) -> (f64, f64) {
        let mean: f64 = xs.iter().zip(weights).map(|(x, w)| w * x).sum();
        let var: f64 = xs.iter().zip(weights).map(|(x, w)| w * (x - mean) * (x - mean)).sum();
        (mean, var)
    }

    /// The weights the normaliser documents for reading i (0-based) of n: equal 1/min(n, 1000)
    /// for the first 1000, then decaying by (1 − 1/1000) per later reading.
    fn documented_weights(n: usize) -> Vec<f64> {
        let m = MEMORY as usize;
        let alpha = 1.0 / m as f64;
        (0..n)
            .map(|i| {
                if n <= m {
                    1.0 / n as f64
                } else if i < m {
                    (1.0 - alpha).powi((n - m) as i32) / m as f64
                } else {
                    alpha * (1.0 - alpha).powi((n - 1 - i) as i32)
                }
            })
            .collect()
    }

    #[test]
    fn normaliser_matches_a_direct_computation_before_and_after_its_memory_fills() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let xs: Vec<f64> = (0..3000).map(|i| 50.0 + 0.01 * i as f64 + rng.random_range(-5.0..5.0)).collect();
        let mut norm = RunningNormaliser::new(1);
        for (i, &x) in xs.iter().enumerate() {
            norm.update(&[x]);
            let n = i + 1;
            if [1, 2, 10, 999, 1000, 1001, 1500, 3000].contains(&n) {
                let (mean, var) = weighted(&xs[..n], &documented_weights(n));
                let scale = var.sqrt().max(SCALE_FLOOR_RELATIVE * mean.abs()).max(SCALE_FLOOR_ABSOLUTE);
                assert_eq!(norm.count(), n as u64);
                assert!((norm.scale(0) - scale).abs() <= 1e-9 * scale, "scale after {n}: {} vs {scale}", norm.scale(0));
                let probe = 57.0;
                let expected = (probe - mean) / scale;
                assert!((norm.normalise(0, probe) - expected).abs() < 1e-9, "normalise after {n}");
            }
        }
    }

    #[test]
    fn normaliser_follows_a_level_shift_within_a_few_memories() {
        let mut norm = RunningNormaliser::new(1);
        for i in 0..20_000 {
            let level = if i < 5000 { 0.0 } else { 100.0 };
            norm.update(&[level + if i % 2 == 0 { 1.0 } else { -1.0 }]);
        }
        // 15 000 readings after the shift the old level weighs e^-15: gone.
        assert!(norm.normalise(0, 100.0).abs() < 1e-3, "{}", norm.normalise(0, 100.0));
        assert!((norm.scale(0) - 1.0).abs() < 1e-2, "{}", norm.scale(0));
    }

    #[test]
    fn channels_are_independent() {
        let mut norm = RunningNormaliser::new(2);
        for i in 0..100 {
            norm.update(&[i as f64, 1000.0 - 2.0 * i as f64]);
        }
        assert_eq!(norm.channels(), 2);
        assert!((norm.normalise(0, 49.5)).abs() < 1e-12);
        assert!((norm.normalise(1, 901.0)).abs() < 1e-12);
        assert!((norm.scale(1) - 2.0 * norm.scale(0)).abs() < 1e-9);
    }

    #[test]
    fn constant_channel_has_a_positive_scale_and_finite_normalised_values() {
        for level in [0.0, 1e-300, 3.0, -7e5, 1e12] {
            let mut norm = RunningNormaliser::new(1);
            for _ in 0..5000 {
                norm.update(&[level]);
            }
            let scale = norm.scale(0);
            assert!(scale > 0.0 && scale.is_finite(), "level {level}: scale {scale}");
            assert!(scale >= SCALE_FLOOR_RELATIVE * level.abs() && scale >= SCALE_FLOOR_ABSOLUTE);
            assert!(norm.normalise(0, level).abs() < 1e-9);
            assert!(norm.normalise(0, level + 1.0).is_finite());
        }
    }

    #[test]
    fn normalise_and_denormalise_are_inverse() {
        let mut norm = RunningNormaliser::new(1);
        for x in [3.0, 5.0, 4.0, 8.0] {
            norm.update(&[x]);
        }
        for v in [-100.0, 0.0, 5.0, 1234.5] {
            let back = norm.denormalise(0, norm.normalise(0, v));
            assert!((back - v).abs() < 1e-9 * v.abs().max(1.0), "{v} came back as {back}");
        }
    }

    #[test]
    fn huge_values_keep_every_statistic_finite() {
        let mut norm = RunningNormaliser::new(1);
        for v in [f64::MAX, -f64::MAX, 1e200, 0.0, f64::MAX, 1.0] {
            norm.update(&[v]);
            assert!(norm.scale(0).is_finite() && norm.scale(0) > 0.0);
            for probe in [f64::MAX, -f64::MAX, 0.0] {
                assert!(norm.normalise(0, probe).is_finite(), "normalise({probe:e})");
                assert!(norm.denormalise(0, probe).is_finite(), "denormalise({probe:e})");
            }
        }
    }

    #[test]
    fn bad_updates_are_ignored_and_reported() {
        let mut norm = RunningNormaliser::new(2);
        norm.update(&[1.0, 2.0]);
        let before = norm.clone();
        norm.update(&[1.0]);
        norm.update(&[f64::NAN, 1.0]);
        assert_eq!(norm, before);
        assert!(matches!(
            norm.try_update(&[1.0, 2.0, 3.0]),
            Err(ScoringError::ChannelMismatch { expected: 2, got: 3 })
        ));
        assert!(matches!(
            norm.try_update(&[1.0, f64::INFINITY]),
            Err(ScoringError::NonFinite { what: "value", channel: 1 })
        ));
        assert_eq!(norm, before);
    }

    #[test]
    fn channel_out_of_range_is_passed_through() {
        let norm = RunningNormaliser::new(1);
        assert_eq!(norm.normalise(3, 4.5), 4.5);
        assert_eq!(norm.denormalise(3, 4.5), 4.5);
        assert_eq!(norm.scale(3), 1.0);
    }

    #[test]
    fn normaliser_round_trips_through_json() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut norm = RunningNormaliser::new(3);
        for _ in 0..2500 {
            norm.update(&[rng.random_range(-1.0..1.0), rng.random_range(0.0..1e6), 42.0]);
        }
        let json = serde_json::to_string(&norm).expect("serialisable");
        let back: RunningNormaliser = serde_json::from_str(&json).expect("deserialisable");
        crate::scoring::testkit::assert_same_after_json(&norm, &back);
        for c in 0..3 {
            assert!(((back.scale(c) - norm.scale(c)) / norm.scale(c)).abs() < 1e-14);
        }
    }
}
