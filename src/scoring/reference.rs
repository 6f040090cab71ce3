//! The warm-up reference of a stream with [`super::Baseline::Warmup`]: each channel's median
//! and spread over the stream's warm-up readings, and how far a reading lies from them.
//!
//! During the warm-up it keeps a bounded sample of the readings (all of them up to
//! [`SAMPLE`], then a uniform reservoir) and re-estimates the reference after each one; when
//! the warm-up ends the reference is fixed and the sample dropped, so a scoring stream keeps
//! two numbers per channel. Median and median absolute deviation, not mean and variance: the
//! warm-up of a heart with frequent ectopic beats holds many of them, and the median beat is
//! still the normal one.

/// Largest number of warm-up readings kept to estimate the reference from.
const SAMPLE: usize = 512;
/// Warm-up readings needed before the reference judges anything: a median of a handful is
/// noise.
const MIN_SEEN: u64 = 20;
/// Squared distances are clipped to this, like the forecast's residuals.
const Z2_CLIP: f64 = 900.0;
/// A Gaussian's standard deviation in median absolute deviations.
const MAD_TO_SIGMA: f64 = 1.4826;

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct WarmupReference {
    /// Warm-up readings offered so far.
    seen: u64,
    /// The sample of warm-up readings, one `Vec` per channel; empty once fixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sample: Vec<Vec<f32>>,
    /// Median per channel, data units.
    centre: Vec<f64>,
    /// Robust standard deviation per channel (1.4826 · MAD, with a floor), data units.
    spread: Vec<f64>,
    /// The warm-up has ended: the reference no longer changes.
    fixed: bool,
}

impl WarmupReference {
    /// Learns one warm-up reading (`values` finite, the stream's channel count).
    pub(super) fn learn(&mut self, values: &[f64]) {
        if self.fixed {
            return;
        }
        if self.sample.len() != values.len() {
            self.sample = vec![Vec::new(); values.len()];
        }
        self.seen = self.seen.saturating_add(1);
        if self.sample[0].len() < SAMPLE {
            for (column, v) in self.sample.iter_mut().zip(values) {
                column.push(single(*v));
            }
        } else {
            // Reservoir sampling with a hash of the count for its randomness: deterministic, so
            // a replay or a restart from a snapshot gives the same reference.
            let slot = (splitmix64(self.seen) % self.seen) as usize;
            if slot < SAMPLE {
                for (column, v) in self.sample.iter_mut().zip(values) {
                    column[slot] = single(*v);
                }
            }
        }
        self.estimate();
    }

    /// Ends the warm-up: the reference stays as it is and the sample is dropped.
    pub(super) fn fix(&mut self) {
        if !self.fixed {
            self.fixed = true;
            self.sample = Vec::new();
        }
    }

    /// The squared robust distance of `values` from the reference, the largest over
    /// channels, clipped like a forecast's; `None` before [`MIN_SEEN`] warm-up readings.
    pub(super) fn surprise(&self, values: &[f64]) -> Option<f64> {
        if self.seen < MIN_SEEN || self.centre.len() != values.len() {
            return None;
        }
        let worst = values
            .iter()
            .zip(self.centre.iter().zip(&self.spread))
            .map(|(v, (c, s))| {
                let z = (v - c) / s;
                if z.is_finite() {
                    (z * z).min(Z2_CLIP)
                } else {
                    Z2_CLIP
                }
            })
            .fold(0.0, f64::max);
        Some(worst)
    }

    fn estimate(&mut self) {
        let (centre, spread) = self
            .sample
            .iter()
            .map(|column| {
                let mut xs: Vec<f64> = column.iter().map(|&v| f64::from(v)).collect();
                let centre = median(&mut xs);
                let mut dev: Vec<f64> = xs.iter().map(|v| (v - centre).abs()).collect();
                let mad = median(&mut dev);
                // A channel constant in most of the warm-up: its mean deviation, then a floor
                // relative to its size, so a change is large but finite.
                let mean_dev = dev.iter().sum::<f64>() / dev.len().max(1) as f64;
                let spread = if mad > 0.0 {
                    MAD_TO_SIGMA * mad
                } else if mean_dev > 0.0 {
                    1.2533 * mean_dev
                } else {
                    1e-6 * centre.abs().max(1.0)
                };
                (centre, spread)
            })
            .unzip();
        self.centre = centre;
        self.spread = spread;
    }
}

fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    let mid = xs.len() / 2;
    let (_, m, _) = xs.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// SplitMix64's output function: a well-mixed 64-bit hash of `x`.
pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A reading in single precision, saturated at ±f32::MAX: a larger finite reading must not
/// become an infinity (which JSON cannot carry, and the stored state would be unreadable).
fn single(v: f64) -> f32 {
    v.clamp(-f64::from(f32::MAX), f64::from(f32::MAX)) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_is_the_median_and_mad_and_ignores_a_minority_of_outliers() {
        let mut r = WarmupReference::default();
        assert_eq!(r.surprise(&[0.0, 0.0]), None);
        // Channel 0 cycles 0..5 (median 2, MAD 1); a third of channel 1 is wild.
        for i in 0..300 {
            let wild = if i % 3 == 0 { 1000.0 } else { 10.0 + f64::from(i % 2) };
            r.learn(&[f64::from(i % 5), wild]);
        }
        r.fix();
        assert_eq!((r.centre[0], r.spread[0]), (2.0, MAD_TO_SIGMA));
        assert!(r.centre[1] >= 10.0 && r.centre[1] <= 11.0, "{:?}", r.centre);
        assert!(r.sample.is_empty(), "the sample is dropped when the warm-up ends");
        // 3 robust σ on channel 0, and the wild value of channel 1 is far off: clipped.
        let z2 = r.surprise(&[2.0 + 3.0 * MAD_TO_SIGMA, 10.5]).unwrap();
        assert!((z2 - 9.0).abs() < 1e-9, "{z2}");
        assert_eq!(r.surprise(&[2.0, 1000.0]).unwrap(), Z2_CLIP);
        // Fixed: later readings change nothing.
        let before = r.clone();
        r.learn(&[1e9, 1e9]);
        assert_eq!(r, before);
    }

    #[test]
    fn the_sample_is_bounded_and_a_constant_channel_gets_a_finite_spread() {
        let mut r = WarmupReference::default();
        for i in 0..5000 {
            r.learn(&[7.0, f64::from(i)]);
        }
        assert_eq!(r.sample[0].len(), SAMPLE);
        assert!(r.spread[0] > 0.0 && r.spread[0] < 1e-3);
        // A uniform sample of 0..5000: its median near the middle.
        assert!((r.centre[1] - 2500.0).abs() < 400.0, "{}", r.centre[1]);
        let z2 = r.surprise(&[8.0, 2500.0]).unwrap();
        assert_eq!(z2, Z2_CLIP, "a constant channel that moves is as surprising as can be");
        assert!(r.surprise(&[7.0, f64::MAX]).unwrap().is_finite());
    }
}
