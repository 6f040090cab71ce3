//! Anomaly scoring (DESIGN.md §4): turns a forecast and the reading that followed it into a
//! verdict — the band the model expected, an anomaly score in [0, 1] comparable across
//! streams, and a flag — and groups flagged readings into anomaly events.
//!
//! Plain maths on `f64`: no tensors, no tokio, no I/O, no clocks. Everything a stream keeps
//! here ([`RunningNormaliser`], [`Scorer`], [`EventTracker`]) is small, bounded and
//! serialisable, so the stream actor can persist it with every commit and restore it after a
//! restart. Callers validate readings at the edge; the functions here never panic on bad
//! input, they return neutral answers (and the `try_` variants say why).
//!
//! The pipeline for reading t, judged against the forecast made after reading t−1:
//! 1. [`RunningNormaliser`] puts the reading in the forecast's units;
//! 2. [`Scorer`] standardises the residual per channel and combines the channels into a raw
//!    *surprise*;
//! 3. the scorer's *anomaly likelihood* compares a short moving average of surprise with the
//!    stream's own long-run history of that average and maps its upper-tail probability to
//!    the score;
//! 4. [`ScorerConfig::threshold`] (from the stream's sensitivity) flags it, and
//!    [`EventTracker`] joins flags into events.
mod events;
mod gaussian;
mod history;
mod likelihood;
mod normaliser;
#[cfg(test)]
mod properties;
mod reference;
mod scorer;
#[cfg(test)]
mod testkit;

pub use events::{EventConfig, EventTracker, EventUpdate, OpenEvent};
pub use normaliser::RunningNormaliser;
pub use scorer::{Forecast, PerChannel, Scorer, Verdict};

/// What a stream's readings are judged against besides the model's forecast (a stream
/// setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// The forecast only, against the stream's recent history of surprise: a surprise that
    /// recurs becomes normal (a daily jump the model cannot time stops being flagged).
    #[default]
    Forecast,
    /// Also the stream's warm-up: each channel's median and spread over the warm-up readings,
    /// fixed when the warm-up ends. A reading unlike the warm-up stays anomalous however often
    /// it recurs (a heart's ectopic beats): outlying surprise is never learnt, and each
    /// reading is judged on its own. For signals with one normal form, such as heart beats.
    Warmup,
    /// Not the forecast but the stream's own history: each channel's distance from one
    /// season ago, whether its recent values ever came in that order, and whether it leaves
    /// the range seen so far, through an anomaly likelihood after Numenta's HTM
    /// (`history.rs`); the forecast still gives the expected band. For operational metrics
    /// (the NAB family): the best of the three there.
    History,
}

impl Baseline {
    /// The name used in the API and the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Baseline::Forecast => "forecast",
            Baseline::Warmup => "warmup",
            Baseline::History => "history",
        }
    }

    /// The setting named `name`, if there is one.
    pub fn parse(name: &str) -> Option<Baseline> {
        match name {
            "forecast" => Some(Baseline::Forecast),
            "warmup" => Some(Baseline::Warmup),
            "history" => Some(Baseline::History),
            _ => None,
        }
    }
}

/// Errors of the scoring library. None of them is about HTTP; callers map them.
#[derive(Debug, thiserror::Error)]
pub enum ScoringError {
    /// A scorer or event configuration outside its documented range.
    #[error("invalid scorer configuration: {0}")]
    InvalidConfig(String),
    /// A reading, forecast or normaliser with a different number of channels than the stream.
    #[error("channel mismatch: expected {expected} channel(s), got {got}")]
    ChannelMismatch { expected: usize, got: usize },
    /// A NaN or infinite number where a finite one is required.
    #[error("non-finite {what} in channel {channel}")]
    NonFinite { what: &'static str, channel: usize },
}

/// Default number of readings judged before any flag is raised.
const DEFAULT_WARMUP: u64 = 200;
/// Largest warm-up accepted: beyond this a stream would never be scored in practice.
const MAX_WARMUP: u64 = 10_000_000;
/// Default sensitivity: the middle of the range.
const DEFAULT_SENSITIVITY: f64 = 0.5;
/// Default width of the expected band, in forecast standard deviations.
const DEFAULT_BAND_SIGMAS: f64 = 3.0;
/// Widest band accepted, in forecast standard deviations.
const MAX_BAND_SIGMAS: f64 = 100.0;
/// Score threshold at sensitivity 0: an upper-tail probability of 1e-8 (see [`ScorerConfig::threshold`]).
const THRESHOLD_AT_SENSITIVITY_0: f64 = 0.8;
/// Score threshold at sensitivity 1: an upper-tail probability of 1e-3.
const THRESHOLD_AT_SENSITIVITY_1: f64 = 0.3;

/// Per-stream settings of the scorer.
///
/// Missing fields deserialise to their defaults, so a stream configuration may name only the
/// settings it changes. Call [`ScorerConfig::validate`] at the edge: the scorer itself copes
/// with out-of-range values (it falls back to defaults) but does not report them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScorerConfig {
    /// Readings judged before any flag is raised (default 200). The scorer's statistics learn
    /// during the warm-up; scores are computed but never flagged.
    pub warmup: u64,
    /// 0..=1, higher flags more (default 0.5). Sets the score threshold, see
    /// [`ScorerConfig::threshold`].
    pub sensitivity: f64,
    /// Half-width of the expected band (`lower`, `upper` of a verdict) in forecast standard
    /// deviations (default 3.0). Display only: it does not change scores or flags.
    pub band_sigmas: f64,
    /// What readings are judged against besides the forecast (default: nothing else).
    pub baseline: Baseline,
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            warmup: DEFAULT_WARMUP,
            sensitivity: DEFAULT_SENSITIVITY,
            band_sigmas: DEFAULT_BAND_SIGMAS,
            baseline: Baseline::Forecast,
        }
    }
}

impl ScorerConfig {
    /// Checks the documented ranges: `warmup` at most 10 000 000, `sensitivity` finite in
    /// [0, 1], `band_sigmas` finite in (0, 100].
    pub fn validate(&self) -> Result<(), ScoringError> {
        if self.warmup > MAX_WARMUP {
            return Err(ScoringError::InvalidConfig(format!(
                "warmup must be at most {MAX_WARMUP} readings, got {}",
                self.warmup
            )));
        }
        if !(self.sensitivity.is_finite() && (0.0..=1.0).contains(&self.sensitivity)) {
            return Err(ScoringError::InvalidConfig(format!(
                "sensitivity must be a number in [0, 1], got {}",
                self.sensitivity
            )));
        }
        if !(self.band_sigmas.is_finite() && self.band_sigmas > 0.0 && self.band_sigmas <= MAX_BAND_SIGMAS) {
            return Err(ScoringError::InvalidConfig(format!(
                "band_sigmas must be a number in (0, {MAX_BAND_SIGMAS}], got {}",
                self.band_sigmas
            )));
        }
        Ok(())
    }

    /// The score at or above which a reading is flagged: `0.8 − 0.5 × sensitivity`, so 0.8 at
    /// sensitivity 0, 0.55 at the default 0.5 and 0.3 at 1; strictly decreasing, always in (0, 1].
    ///
    /// A score `s` means an upper-tail probability of `10^(−10 s)` for the stream's recent
    /// surprise, so the default flags what the stream's own history puts at about 3 in a
    /// million (0.3 → 1e-3, 0.8 → 1e-8). An out-of-range sensitivity is clamped to [0, 1]; a
    /// non-finite one counts as the default.
    pub fn threshold(&self) -> f64 {
        let s = if self.sensitivity.is_finite() { self.sensitivity.clamp(0.0, 1.0) } else { DEFAULT_SENSITIVITY };
        THRESHOLD_AT_SENSITIVITY_0 - (THRESHOLD_AT_SENSITIVITY_0 - THRESHOLD_AT_SENSITIVITY_1) * s
    }

    /// The band half-width to use: `band_sigmas`, or the default where it is out of range.
    fn band(&self) -> f64 {
        if self.band_sigmas.is_finite() && self.band_sigmas > 0.0 && self.band_sigmas <= MAX_BAND_SIGMAS {
            self.band_sigmas
        } else {
            DEFAULT_BAND_SIGMAS
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_matches_the_documented_values() {
        let c = ScorerConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!((c.warmup, c.sensitivity, c.band_sigmas), (200, 0.5, 3.0));
        assert!((c.threshold() - 0.55).abs() < 1e-12);
    }

    #[test]
    fn validate_rejects_every_bad_config() {
        let bad = [
            ScorerConfig { warmup: MAX_WARMUP + 1, ..Default::default() },
            ScorerConfig { warmup: u64::MAX, ..Default::default() },
            ScorerConfig { sensitivity: -0.01, ..Default::default() },
            ScorerConfig { sensitivity: 1.01, ..Default::default() },
            ScorerConfig { sensitivity: f64::NAN, ..Default::default() },
            ScorerConfig { sensitivity: f64::INFINITY, ..Default::default() },
            ScorerConfig { sensitivity: f64::NEG_INFINITY, ..Default::default() },
            ScorerConfig { band_sigmas: 0.0, ..Default::default() },
            ScorerConfig { band_sigmas: -1.0, ..Default::default() },
            ScorerConfig { band_sigmas: 100.5, ..Default::default() },
            ScorerConfig { band_sigmas: f64::NAN, ..Default::default() },
            ScorerConfig { band_sigmas: f64::INFINITY, ..Default::default() },
        ];
        for c in bad {
            match c.validate() {
                Err(ScoringError::InvalidConfig(msg)) => assert!(!msg.is_empty()),
                other => panic!("{c:?} should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn validate_accepts_the_edges_of_every_range() {
        let good = [
            ScorerConfig { warmup: 0, ..Default::default() },
            ScorerConfig { warmup: MAX_WARMUP, ..Default::default() },
            ScorerConfig { sensitivity: 0.0, ..Default::default() },
            ScorerConfig { sensitivity: 1.0, ..Default::default() },
            ScorerConfig { band_sigmas: 1e-9, ..Default::default() },
            ScorerConfig { band_sigmas: 100.0, ..Default::default() },
        ];
        for c in good {
            assert!(c.validate().is_ok(), "{c:?} should be accepted");
        }
    }

    #[test]
    fn threshold_is_strictly_decreasing_in_sensitivity_and_stays_in_the_unit_interval() {
        let mut previous = f64::INFINITY;
        for i in 0..=1000 {
            let t = ScorerConfig { sensitivity: i as f64 / 1000.0, ..Default::default() }.threshold();
            assert!(t > 0.0 && t <= 1.0, "threshold {t} out of (0, 1]");
            assert!(t < previous, "threshold must fall as sensitivity rises");
            previous = t;
        }
    }

    #[test]
    fn threshold_of_an_out_of_range_sensitivity_is_still_in_the_unit_interval() {
        for s in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -5.0, 7.0] {
            let t = ScorerConfig { sensitivity: s, ..Default::default() }.threshold();
            assert!(t > 0.0 && t <= 1.0, "sensitivity {s} gave threshold {t}");
        }
    }

    #[test]
    fn config_fills_missing_fields_with_defaults_when_deserialised() {
        let c: ScorerConfig = serde_json::from_str(r#"{"sensitivity": 0.9}"#).expect("valid json");
        assert_eq!(c, ScorerConfig { sensitivity: 0.9, ..Default::default() });
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = ScoringError::InvalidConfig("sensitivity must be a number in [0, 1], got 2".into());
        assert_eq!(e.to_string(), "invalid scorer configuration: sensitivity must be a number in [0, 1], got 2");
        let e = ScoringError::ChannelMismatch { expected: 2, got: 3 };
        assert_eq!(e.to_string(), "channel mismatch: expected 2 channel(s), got 3");
    }
}
