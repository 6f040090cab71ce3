//! The history baseline: each channel judged against its own past, not a forecast — how far a
//! reading is from the same moment one season ago, whether its short context of quantised
//! values has ever been seen, and whether it leaves the range of everything before it. The
//! raw score goes through an anomaly likelihood (the upper-tail probability of its short
//! average under the long-run history of that average, after Numenta's HTM detector), and
//! only a local maximum of the score survives a window of a quarter of the warm-up.
//!
//! Per channel and reading, in order:
//! 1. *range*: outside [min − 5 % of the range, max + 5 %] of every earlier reading → 1.0;
//! 2. during the warm-up the reading is only buffered; when it ends the quantisation range
//!    (the warm-up's min and max) and the season (the strongest autocorrelation peak above
//!    0.3 between lags 4 and half the warm-up, else 1) are fixed, and the warm-up replayed;
//! 3. *raw score* = ½·novelty + ½·seasonal error, where the seasonal error `e = |x_t − x_{t−p}|`
//!    enters as `e / (e + 3·mean of the last warm-up's worth of e)` (0 for the first season,
//!    which has no reading a season back and adds nothing to the mean), and novelty is the share
//!    of unseen contexts (the last 1..=4 values quantised into 4, 8 and 16 bins of the
//!    warm-up range; values outside it get bins of their own);
//! 4. the likelihood: after a learning period of one warm-up, `1 − tail(mean of the last 10
//!    raw scores)` under a Gaussian fitted every 100 readings to the 10-reading averages of
//!    the last 8,640 raw scores; a second consecutive tail below 1e-5 counts as 1e-3 (one
//!    spike, one alarm); score `= ln(1 − likelihood) / ln(1e-10)`, so `s` means a tail of
//!    about `10^(−10 s)` like every score of the service;
//! 5. the score is kept only where it exceeds every score of the previous quarter warm-up
//!    (else 0): the first reading of an anomaly carries it, the ones after it do not.
//!
//! On the NAB development subset this scores 70.3 / 65.1 / 74.2 (standard / low FP / low FN)
//! against HTM's 64.9 / 59.1 / 69.9 (docs/EVALUATION.md). Bounded per channel: the score
//! history (8,640), one warm-up of errors and of buffered readings, one season of values,
//! and at most [`MAX_CONTEXTS`] contexts per resolution.
use std::collections::{HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::gaussian::erfc;
use super::reference::splitmix64;

/// Quantisation resolutions of the context novelty: bins across the warm-up's range.
const RESOLUTIONS: [f64; 3] = [4.0, 8.0, 16.0];
/// Longest context: the last 1..=CONTEXT quantised values.
const CONTEXT: usize = 4;
/// The seasonal error is scaled by this many times its recent mean.
const ERROR_SCALE: f64 = 3.0;
/// Weakest autocorrelation taken as a season.
const MIN_SEASON_ACF: f64 = 0.3;
/// Shortest season looked for, in readings.
const MIN_SEASON: usize = 4;
/// The range rule's tolerance, as a share of the range seen.
const RANGE_TOLERANCE: f64 = 0.05;
/// Raw scores the likelihood's distribution is fitted to.
const HISTORY: usize = 8640;
/// Raw scores averaged before the tail is taken.
const AVERAGE: usize = 10;
/// Readings between two fits of the distribution.
const REFIT_EVERY: u64 = 100;
/// A tail below this is an alarm; a second in a row counts as [`REPEAT_TAIL`].
const ALARM_TAIL: f64 = 1e-5;
const REPEAT_TAIL: f64 = 1e-3;
/// Floors of the fitted distribution's mean and variance.
const MIN_MEAN: f64 = 0.03;
const MIN_VARIANCE: f64 = 0.0003;
/// Contexts remembered per resolution; beyond this an unseen context stays unseen (novel).
pub const MAX_CONTEXTS: usize = 1 << 16;
/// Largest seasonal error counted (readings near ±f64::MAX would overflow the sums).
const MAX_ERROR: f64 = 1e200;
/// Warm-up lengths the detector works with (a shorter warm-up is lengthened to this; a
/// longer one is cut: the season and range are fixed after at most this many readings).
const WARMUP_RANGE: (u64, u64) = (20, HISTORY as u64);

/// The score of an upper-tail probability `tail`: `ln(tail + 1e-10) / ln(1e-10)`, in [0, 1].
fn log_score(tail: f64) -> f64 {
    let likelihood = 1.0 - tail;
    ((1.0000000001 - likelihood).ln() / (1.0f64 - 0.9999999999).ln()).clamp(0.0, 1.0)
}

/// The history baseline of every channel of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryDetector {
    channels: Vec<ChannelHistory>,
}

impl HistoryDetector {
    /// A detector for `channels` channels whose warm-up lasts `warmup` readings.
    pub fn new(channels: usize, warmup: u64) -> HistoryDetector {
        let warmup = warmup.clamp(WARMUP_RANGE.0, WARMUP_RANGE.1) as usize;
        HistoryDetector { channels: (0..channels).map(|_| ChannelHistory::new(warmup)).collect() }
    }

    /// Whether the detector is still in its own warm-up (its scores are not to be flagged:
    /// a stream switched to this baseline late starts one then).
    pub fn warming_up(&self) -> bool {
        self.channels.iter().any(|c| (c.seen as usize) < c.warmup)
    }

    /// Scores one reading (finite values, one per channel) and learns it: the largest score
    /// over channels, in [0, 1].
    pub fn score(&mut self, values: &[f64]) -> f64 {
        self.channels.iter_mut().zip(values).map(|(c, &x)| c.score(x)).fold(0.0, f64::max)
    }
}

/// One channel's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ChannelHistory {
    warmup: usize,
    seen: u64,
    /// Range of every reading so far (the range rule).
    min: Option<f64>,
    max: Option<f64>,
    /// The warm-up's readings, until it ends.
    buffer: Vec<f64>,
    /// Fixed when the warm-up ends.
    fitted: Option<Box<Fitted>>,
    /// Scores of the last quarter warm-up before suppression.
    recent: VecDeque<f64>,
}

/// What a channel learns once its warm-up is over.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Fitted {
    low: f64,
    high: f64,
    season: usize,
    /// The last `max(season, CONTEXT) + 1` readings.
    values: VecDeque<f64>,
    /// The last warm-up's worth of seasonal errors, and their sum.
    errors: VecDeque<f64>,
    error_sum: f64,
    /// The last `CONTEXT` bins (fewer at first) and the contexts seen, per resolution.
    bins: Vec<VecDeque<i64>>,
    contexts: Vec<HashSet<u64>>,
    likelihood: Likelihood,
}

impl ChannelHistory {
    fn new(warmup: usize) -> ChannelHistory {
        ChannelHistory {
            warmup,
            seen: 0,
            min: None,
            max: None,
            buffer: Vec::new(),
            fitted: None,
            recent: VecDeque::new(),
        }
    }

    fn score(&mut self, x: f64) -> f64 {
        let outside = self.outside_range(x);
        let score = if (self.seen as usize) < self.warmup {
            self.buffer.push(x);
            log_score(0.5) // the likelihood's neutral answer while it learns
        } else {
            let (buffer, warmup) = (&mut self.buffer, self.warmup);
            let fitted =
                self.fitted.get_or_insert_with(|| Box::new(Fitted::from_warmup(&std::mem::take(buffer), warmup)));
            let raw = fitted.raw(x);
            fitted.likelihood.score(raw)
        };
        self.seen += 1;
        let score = if outside { 1.0 } else { score };
        // Only a maximum of the last quarter warm-up keeps its score.
        let kept = if self.recent.iter().all(|&r| score > r) { score } else { 0.0 };
        if self.recent.len() == self.warmup / 4 {
            self.recent.pop_front();
        }
        if self.warmup / 4 > 0 {
            self.recent.push_back(score);
        }
        kept
    }

    /// Whether `x` is outside the range seen so far by more than the tolerance; learns it.
    fn outside_range(&mut self, x: f64) -> bool {
        let outside = match (self.min, self.max) {
            (Some(min), Some(max)) if min != max => {
                let tolerance = (max - min) * RANGE_TOLERANCE;
                x > max + tolerance || x < min - tolerance
            }
            _ => false,
        };
        self.max = Some(self.max.map_or(x, |m| m.max(x)));
        self.min = Some(self.min.map_or(x, |m| m.min(x)));
        outside
    }
}

impl Fitted {
    /// Fixes range and season from the warm-up's readings and replays them.
    fn from_warmup(buffer: &[f64], warmup: usize) -> Fitted {
        let low = buffer.iter().copied().fold(f64::INFINITY, f64::min);
        let mut high = buffer.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if high <= low {
            high = low + 1.0;
        }
        let season = season(buffer).unwrap_or(1);
        let mut fitted = Fitted {
            low,
            high,
            season,
            values: VecDeque::new(),
            errors: VecDeque::new(),
            error_sum: 0.0,
            bins: vec![VecDeque::new(); RESOLUTIONS.len()],
            contexts: vec![HashSet::new(); RESOLUTIONS.len()],
            likelihood: Likelihood::new(warmup),
        };
        for &x in buffer {
            let raw = fitted.raw(x);
            fitted.likelihood.score(raw);
        }
        fitted
    }

    /// The raw score of `x` (½·novelty + ½·seasonal error); learns it.
    fn raw(&mut self, x: f64) -> f64 {
        let warmup = self.likelihood.learning;
        // The first season has no reading one season back: its seasonal error is unknown
        // (counted 0) and not learnt, so it does not inflate the errors' mean.
        let seasonal = if self.values.len() >= self.season {
            let lagged = self.values[self.values.len() - self.season];
            // Bounded so that sums of a warm-up's worth stay finite for any finite readings.
            let error = (x - lagged).abs().min(MAX_ERROR);
            // Not below 0: the running sum may drift under 0 by rounding after huge errors.
            let mean = if self.errors.is_empty() { 0.0 } else { (self.error_sum / self.errors.len() as f64).max(0.0) };
            if self.errors.len() == warmup {
                self.error_sum -= self.errors.pop_front().unwrap_or(0.0);
            }
            self.errors.push_back(error);
            self.error_sum += error;
            error / (error + ERROR_SCALE * mean + 1e-12)
        } else {
            0.0
        };
        if self.values.len() == self.season.max(CONTEXT) + 1 {
            self.values.pop_front();
        }
        self.values.push_back(x);

        let mut novelty = 0.0;
        for (r, &bins) in RESOLUTIONS.iter().enumerate() {
            let bin = ((x - self.low) / (self.high - self.low) * bins).floor() as i64;
            let context = &mut self.bins[r];
            if context.len() == CONTEXT {
                context.pop_front();
            }
            context.push_back(bin);
            // A context longer than the readings so far counts as unseen.
            let mut unseen = CONTEXT - context.len();
            let contexts = &mut self.contexts[r];
            for k in 1..=context.len() {
                let key = context_key(k, context.iter().skip(context.len() - k));
                let new = if contexts.len() < MAX_CONTEXTS { contexts.insert(key) } else { !contexts.contains(&key) };
                unseen += usize::from(new);
            }
            novelty += unseen as f64 / CONTEXT as f64;
        }
        let raw = 0.5 * (novelty / RESOLUTIONS.len() as f64) + 0.5 * seasonal;
        if raw.is_finite() {
            raw.clamp(0.0, 1.0)
        } else {
            1.0
        }
    }
}

/// A context's key: its length and bins, mixed into 64 bits (stable across runs and builds,
/// since keys are persisted).
fn context_key<'a>(length: usize, bins: impl Iterator<Item = &'a i64>) -> u64 {
    bins.fold(splitmix64(length as u64), |h, &b| splitmix64(h ^ b as u64))
}

/// The season of `x`: the lag (from [`MIN_SEASON`], below half the length) of the highest
/// local maximum of the autocorrelation above [`MIN_SEASON_ACF`]; `None` if there is none.
fn season(x: &[f64]) -> Option<usize> {
    let n = x.len();
    if n == 0 {
        return None;
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    let y: Vec<f64> = x.iter().map(|v| v - mean).collect();
    let energy: f64 = y.iter().map(|v| v * v).sum();
    if energy <= 0.0 {
        return None;
    }
    let max_lag = n / 2;
    let acf: Vec<f64> = (0..=max_lag).map(|k| (0..n - k).map(|i| y[i] * y[i + k]).sum::<f64>() / energy).collect();
    let mut best = None;
    let mut best_acf = MIN_SEASON_ACF;
    for k in MIN_SEASON..max_lag {
        if acf[k] > acf[k - 1] && acf[k] >= acf[k + 1] && acf[k] > best_acf {
            best = Some(k);
            best_acf = acf[k];
        }
    }
    best
}

/// The anomaly likelihood of raw scores: a Gaussian fitted to their 10-reading averages over
/// a long history, and the tail of the latest average under it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Likelihood {
    /// Readings that only fill the history: half of it before the averages fitted skip the
    /// first ones, all of it before any score.
    learning: usize,
    seen: u64,
    /// The last [`HISTORY`] raw scores, in single precision (half the state; the fit and
    /// the scores are the same to the digits NAB reports).
    history: VecDeque<f32>,
    /// Mean and standard deviation of the fitted Gaussian.
    fit: Option<(f64, f64)>,
    averaged: VecDeque<f64>,
    last_tail: Option<f64>,
}

impl Likelihood {
    fn new(learning: usize) -> Likelihood {
        Likelihood {
            learning,
            seen: 0,
            history: VecDeque::new(),
            fit: None,
            averaged: VecDeque::new(),
            last_tail: None,
        }
    }

    fn tail(x: f64, (mean, sd): (f64, f64)) -> f64 {
        let x = if x < mean { 2.0 * mean - x } else { x };
        0.5 * erfc((x - mean) / sd / std::f64::consts::SQRT_2)
    }

    /// Fits the Gaussian to the history's 10-reading averages (skipping those of the first
    /// half learning period) and restarts the short average from the history's end.
    fn refit(&mut self) {
        let skip_before = (self.learning / 2).saturating_sub(self.seen.saturating_sub(HISTORY as u64) as usize);
        let skip = (self.seen as usize).min(skip_before);
        let mut averages = Vec::with_capacity(self.history.len());
        let mut window = VecDeque::with_capacity(AVERAGE + 1);
        let mut sum = 0.0;
        for v in self.history.iter().map(|&v| f64::from(v)) {
            window.push_back(v);
            sum += v;
            if window.len() > AVERAGE {
                sum -= window.pop_front().unwrap_or(0.0);
            }
            averages.push(sum / window.len() as f64);
        }
        let averages = averages.get(skip..).unwrap_or(&[]);
        let fit = if averages.is_empty() {
            (0.5, 1e3)
        } else {
            let n = averages.len() as f64;
            let mean = averages.iter().sum::<f64>() / n;
            let var = averages.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
            (mean.max(MIN_MEAN), var.max(MIN_VARIANCE).sqrt())
        };
        self.fit = Some(fit);
        self.averaged =
            self.history.iter().skip(self.history.len().saturating_sub(AVERAGE)).map(|&v| f64::from(v)).collect();
        self.last_tail = averages.last().map(|&a| Self::tail(a, fit));
    }

    /// The score of raw score `raw`; learns it.
    fn score(&mut self, raw: f64) -> f64 {
        let tail = if (self.seen as usize) < self.learning {
            0.5
        } else {
            if self.fit.is_none() || self.seen.is_multiple_of(REFIT_EVERY) {
                self.refit();
            }
            let fit = self.fit.unwrap_or((0.5, 1e3));
            if self.averaged.len() == AVERAGE {
                self.averaged.pop_front();
            }
            self.averaged.push_back(raw);
            let tail = Self::tail(self.averaged.iter().sum::<f64>() / self.averaged.len() as f64, fit);
            let repeated = tail <= ALARM_TAIL && self.last_tail.is_some_and(|t| t <= ALARM_TAIL);
            self.last_tail = Some(tail);
            if repeated {
                REPEAT_TAIL
            } else {
                tail
            }
        };
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(raw as f32);
        self.seen += 1;
        log_score(tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seasonal(t: usize) -> f64 {
        10.0 + (t as f64 * std::f64::consts::TAU / 48.0).sin() * 3.0 + ((t * 7919) % 13) as f64 * 0.01
    }

    #[test]
    fn finds_the_season_of_a_periodic_signal_and_none_in_a_constant() {
        let x: Vec<f64> = (0..400).map(seasonal).collect();
        assert_eq!(season(&x), Some(48));
        assert_eq!(season(&[3.0; 100]), None);
        assert_eq!(season(&[]), None);
    }

    #[test]
    fn scores_stay_in_range_and_the_warmup_is_neutral() {
        let mut d = HistoryDetector::new(1, 300);
        for t in 0..3000 {
            let s = d.score(&[seasonal(t)]);
            assert!((0.0..=1.0).contains(&s), "score {s} at {t}");
            if t < 300 {
                // The likelihood's neutral answer while it learns, or the range rule.
                assert!([0.0, log_score(0.5), 1.0].contains(&s), "warm-up score {s} at {t}");
            }
        }
    }

    #[test]
    fn an_off_season_reading_peaks_once_and_clean_readings_stay_low() {
        let mut d = HistoryDetector::new(1, 300);
        let scores: Vec<f64> = (0..4000).map(|t| d.score(&[seasonal(t)])).collect();
        let high: Vec<(usize, f64)> = scores.iter().copied().enumerate().skip(300).filter(|&(_, s)| s >= 0.5).collect();
        // A near-deterministic signal: a context or two is new soon after the warm-up.
        assert!(high.len() <= 2, "clean seasonal readings scored high: {high:?}");
        // A value inside the range but off the season: its seasonal error and the contexts it
        // starts are new, so the score peaks within the next few readings (the 10-reading
        // average fills), and only the peak keeps its score.
        let settled = scores[1000..].iter().copied().fold(0.0, f64::max);
        let around: Vec<f64> =
            (4000..4006).map(|t| d.score(&[seasonal(t) - if t == 4000 { 4.0 } else { 0.0 }])).collect();
        let peak = around.iter().copied().fold(0.0, f64::max);
        assert!(peak >= 0.5 && peak > 2.0 * settled, "off-season reading: {around:?}, clean up to {settled}");
        let after = (4006..4050).map(|t| d.score(&[seasonal(t)])).fold(0.0, f64::max);
        assert!(after < peak, "the readings after the peak kept a score of {after}");
        // Outside everything seen, a quarter warm-up later: the range rule.
        for t in 4050..4100 {
            d.score(&[seasonal(t)]);
        }
        assert_eq!(d.score(&[100.0]), 1.0);
    }

    /// NAB's `art_daily_small_noise`, in shape: 5-minute readings, ~20 at night and a ramp
    /// from ~65 to ~85 between 09:00 and 18:00, with noise of ±2.
    fn daily(t: usize) -> f64 {
        let minute = t % 288;
        let noise = (splitmix64(t as u64) % 1000) as f64 / 250.0 - 2.0;
        if (108..216).contains(&minute) {
            65.0 + (minute - 108) as f64 * 0.2 + noise
        } else {
            20.0 + noise
        }
    }

    #[test]
    fn a_clean_daily_pattern_stays_low_after_the_first_season_leaves_the_errors() {
        // The warm-up NAB gives a 4,032-row file: 604 readings, two days and a bit. The first
        // season has no reading a season back; had its errors (against anything) entered the
        // errors' mean, the mean would fall when they leave it, a warm-up later, and the next
        // day's jumps would score high.
        let mut d = HistoryDetector::new(1, 604);
        let high: Vec<(usize, f64)> =
            (0..4032).map(|t| (t, d.score(&[daily(t)]))).filter(|&(t, s)| t >= 604 && s >= 0.5).collect();
        assert!(high.is_empty(), "clean daily readings scored high: {high:?}");
    }

    #[test]
    fn contexts_are_bounded() {
        let mut d = HistoryDetector::new(1, 20);
        for t in 0..(3 * MAX_CONTEXTS) {
            d.score(&[t as f64]);
        }
        let fitted = d.channels[0].fitted.as_ref().expect("fitted after the warm-up");
        assert!(fitted.contexts.iter().all(|c| c.len() <= MAX_CONTEXTS));
        assert!(fitted.likelihood.history.len() <= HISTORY);
    }

    #[test]
    fn the_state_survives_json_and_scores_the_same_after() {
        let mut a = HistoryDetector::new(2, 100);
        for t in 0..700 {
            a.score(&[seasonal(t), seasonal(t + 5)]);
        }
        let mut b: HistoryDetector =
            serde_json::from_str(&serde_json::to_string(&a).expect("serialises")).expect("deserialises");
        for t in 700..900 {
            let x = [seasonal(t) + if t == 800 { 5.0 } else { 0.0 }, seasonal(t + 5)];
            assert_eq!(a.score(&x).to_bits(), b.score(&x).to_bits(), "at {t}");
        }
    }
}
