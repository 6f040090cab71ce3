//! The anomaly likelihood of a stream (Numenta's idea, DESIGN.md §4 step 3): how improbable
//! the recent surprise is against the stream's own long-run history of surprise, as a score
//! in [0, 1] that means the same on every stream.
//!
//! It owns the short ring buffer of recent surprise and the long-run statistics; it knows
//! nothing of channels, forecasts or thresholds. Its state is a few numbers whatever the
//! length of the stream.
//!
//! Method (constants below; the numbers come from simulated streams, reproduced by the
//! scorer's `measure_…` test):
//! 1. `a`, the mean of the last [`SHORT_WINDOW`] surprises. Surprise is the mean squared
//!    standardised residual, so for a calibrated Gaussian forecast `a` is χ²ₖ/k;
//! 2. `t = ∛a`, the Wilson–Hilferty transform, which makes χ²ₖ/k nearly Gaussian far into
//!    its upper tail, and keeps working for a miscalibrated forecast (a scale factor on `a`
//!    is a scale factor on `t`). Measured alternatives, clean data, flags per 50 000 at the
//!    default threshold: a Gaussian on `a` itself ~116 (its tail is far heavier than a
//!    Gaussian's); on the mean of `ln(1 + surprise/2)` 10–27, and 8σ spikes score only
//!    0.4–0.7; on `ln a` none, but 8σ spikes score 0.46; on `∛a` none, spikes score 1;
//! 3. the long-run mean and variance of `t`, exponentially weighted with horizon
//!    [`LONG_HORIZON`] (weights `max(2/(n+1), 1/H)`, so the unsettled first readings are
//!    forgotten quickly). Values above `mean + 3σ` are winsorised before they are learnt: one
//!    anomaly moves the statistics by little, but a lasting shift still moves them, and stops
//!    being flagged within a few hundred readings (the "new normal");
//! 4. `p`, the upper-tail probability of `t` under that Gaussian (an `erfc`), and the score
//!    `clamp(−log10(p) / 10, 0, 1)`;
//! 5. capped by the stream's empirical tail: if a `t` at least this large occurred in a share
//!    `q` of recent readings (decayed histogram, horizon [`TAIL_HORIZON`]), the score is at
//!    most that of probability `q²`. Surprises that recur (a daily jump the forecast cannot
//!    time) stop being flagged; a surprise larger than any seen lately keeps the Gaussian
//!    score. Without it NAB's daily-pattern files flagged every day's transitions and the
//!    detector scored 0 on NAB (docs/EVALUATION.md); with it a sustained shift is flagged at
//!    its start and then intermittently rather than throughout. A surprise seen fewer than
//!    [`TAIL_MIN_OCCURRENCES`] times lately is not capped: a second spike is still news;
//! 6. a slower path, the same statistics of `∛` of an exponentially weighted average of
//!    surprise over [`SUSTAINED_WINDOW`] readings, for changes too mild to stand out in one
//!    readings but lasting; its score, weighted by [`SUSTAINED_WEIGHT`], competes with the
//!    fast one (the larger counts).
//!
//! Known limit: residuals with heavier tails than the forecast's Gaussian (Student-t with 5
//! degrees of freedom) raise ~110–130 flagged readings per 50 000 at the default sensitivity
//! (~50 at sensitivity 0). Learning the tail's shape from the stream was tried and dropped:
//! it cannot tell a heavy tail from repeated genuine anomalies, and it stopped flagging the
//! third and later of a series of 8σ spikes.

use std::collections::VecDeque;

use super::gaussian::score_of_sigmas;

/// Surprises in the short moving average that confirms a flag. The score itself is each
/// reading's own surprise against the stream's history (the instant path); a flag also
/// needs this average to stand out. Measured (the scorer's `measure_…` test; NAB and
/// MIT-BIH in docs/EVALUATION.md), scoring on the average of 1 / 5 readings:
/// - lowest 8σ-spike score 0.91 / 0.70 for a calibrated forecast; with Student-t(5)
///   residuals no spike / 3 of 20 missed; NAB standard 36.2 / 29.9, all three profiles
///   higher with 1; MIT-BIH beat streams mean AUC 0.90 / 0.83 (an average smears one
///   abnormal beat's surprise over the normal beats after it);
/// - but flagging on 1 alone raised 21 flags in 50 000 clean seasonal readings through
///   the shipped model (the service test allows 5): single heavy-tailed residuals. The
///   average of 5 confirms, as before;
/// - 10 (Numenta's choice) dilutes spikes (lowest score 0.62, 0.37 with a lagging forecast).
pub(super) const SHORT_WINDOW: usize = 5;
/// Horizon (readings) of the long-run mean and variance: the stream's "normal" is roughly
/// its last few thousand readings.
const LONG_HORIZON: f64 = 2000.0;
/// Long-run values learnt before any score is given: fewer make a meaningless variance.
const MIN_HISTORY: u64 = 30;
/// Values above `mean + WINSOR_SIGMAS × σ` are learnt as that bound.
const WINSOR_SIGMAS: f64 = 3.0;
/// Floor of the long-run σ of `t` (a calibrated forecast gives √(2/45) ≈ 0.21): stops a
/// stream whose surprise never varies from dividing by zero.
const STD_FLOOR: f64 = 0.02;

/// Width of a bin of the empirical tail histogram of `t` (which lies in [0, ∛900 ≈ 9.65]).
const TAIL_BIN: f64 = 0.1;
/// Bins of the empirical tail histogram; the last one also holds everything above.
const TAIL_BINS: usize = 100;
/// Horizon (readings) of the empirical tail: recurring surprises stop counting as rare
/// once they have recurred within roughly this many readings.
const TAIL_HORIZON: f64 = 2000.0;
/// The empirical tail caps the score at that of probability `share^EMPIRICAL_POWER`: a
/// surprise seen in 1 of 1000 recent readings can still score 0.6, one seen in 1 of 30 (a
/// daily pattern) at most 0.3. A second occurrence is exempt ([`TAIL_MIN_OCCURRENCES`]),
/// so a young stream's second spike is still flagged (with q² and no exemption it scored
/// 0.42 and was missed). Measured on NAB with the exemption: q² 32.2, q³ lower.
const EMPIRICAL_POWER: f64 = 2.0;
/// Readings in the sustained average (its exponential weight is 1/this). Measured on NAB
/// (docs/EVALUATION.md): 10 scores best; 20, 50, 150 and none score less.
const SUSTAINED_WINDOW: f64 = 10.0;
/// The sustained path's score counts this much (its tail is heavier than its Gaussian
/// fit: at full weight a forecast with twice the variance it claims raised two false flags
/// in 30 000 clean readings).
const SUSTAINED_WEIGHT: f64 = 0.75;
/// Surprise is clipped to this before the sustained average: one wild reading must not
/// look like a lasting change.
const SUSTAINED_CLIP: f64 = 25.0;
/// Decayed occurrences of a surprise at least as large needed before the empirical tail caps
/// its score. Measured on NAB: 1.0 and 1.5 score alike (32.7, 32.2), 0.6 and 2.5 lower.
const TAIL_MIN_OCCURRENCES: f64 = 1.5;
/// Weight the empirical tail needs before it is trusted.
const TAIL_MIN_WEIGHT: f64 = 100.0;

/// Whether surprises that recur become the stream's normal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Habituation {
    /// They do: the empirical tail caps the score of what recurs, and outliers are learnt
    /// (winsorised), so a lasting shift stops being flagged (the default baseline).
    Habituate,
    /// They never do (the warm-up baseline): outliers are not learnt, the long-run level is
    /// the median and MAD of what was, and there is no empirical cap. Each reading is judged
    /// on its own: neither the sustained path (a lasting change would keep it high for good)
    /// nor the short average (in a bigeminy every window holds ectopic beats) counts.
    Never,
}

/// Long-run statistics of one transformed average of surprise: an exponentially weighted
/// Gaussian (winsorised learning) and a decayed histogram (the empirical tail).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Level {
    /// Values of `t` learnt into the long-run statistics so far.
    learned: u64,
    /// Long-run mean of `t`.
    mean: f64,
    /// Long-run variance of `t`.
    var: f64,
    /// Exponentially decayed histogram of every `t` seen (not winsorised): how often a
    /// surprise at least this large happened lately. Empty until the first value. `f32`:
    /// weights near 1 over a 2,000-reading horizon need no more, and it halves the largest
    /// part of a stream's resident state.
    #[serde(default)]
    tail: Vec<f32>,
}

impl Level {
    /// The score of `t` against what was learnt so far; `None` before [`MIN_HISTORY`]. One
    /// occurrence of a surprise fills about `width` values of `t` (1 for single readings,
    /// more for an average over several).
    fn score(&self, t: f64, width: f64, habituation: Habituation) -> Option<f64> {
        self.score_at(t, width, habituation, self.moments(habituation))
    }

    /// [`Level::score`] with the level's [`Level::moments`] already at hand.
    fn score_at(&self, t: f64, width: f64, habituation: Habituation, (centre, spread): (f64, f64)) -> Option<f64> {
        let capped = |score: f64| match habituation {
            Habituation::Habituate => score.min(self.empirical_score(t, width)),
            Habituation::Never => score,
        };
        (self.learned >= MIN_HISTORY).then(|| capped(score_of_sigmas((t - centre) / spread)))
    }

    /// The long-run centre and spread of `t`. Without habituation, once the histogram holds
    /// [`TAIL_MIN_WEIGHT`], its median and 1.4826 × its median absolute deviation: a stream
    /// whose warm-up held many anomalies (a heart in bigeminy) still has its normal readings'
    /// level, where the mean and variance would sit between the two kinds.
    fn moments(&self, habituation: Habituation) -> (f64, f64) {
        match habituation {
            Habituation::Never => self.robust_moments().unwrap_or((self.mean, self.spread())),
            Habituation::Habituate => (self.mean, self.spread()),
        }
    }

    /// Median and robust σ of the histogram (linear within a bin); `None` while it is young.
    fn robust_moments(&self) -> Option<(f64, f64)> {
        let total = weight(&self.tail);
        if total < TAIL_MIN_WEIGHT {
            return None;
        }
        let mut below = 0.0;
        let mut median = 0.0;
        for (i, &w) in self.tail.iter().enumerate() {
            let w = f64::from(w);
            if below + w >= total / 2.0 && w > 0.0 {
                median = (i as f64 + (total / 2.0 - below) / w) * TAIL_BIN;
                break;
            }
            below += w;
        }
        // The median of |t − median| over the bins' centres, weighted: the bins taken in
        // order of their distance from the median, outward from it on both sides at once
        // (the order a stable sort by distance gives, ties to the lower bin, without
        // sorting a hundred bins a reading).
        let centre = |i: usize| (i as f64 + 0.5) * TAIL_BIN;
        let mut right = (0..self.tail.len()).find(|&i| centre(i) >= median).unwrap_or(self.tail.len());
        let mut left = right; // bins below `left` are yet to be taken
        let mut seen = 0.0;
        let mut mad = 0.0;
        loop {
            let below = (left > 0).then(|| median - centre(left - 1));
            let above = (right < self.tail.len()).then(|| centre(right) - median);
            let (distance, w) = match (below, above) {
                (Some(b), a) if a.is_none_or(|a| b <= a) => {
                    left -= 1;
                    (b, self.tail[left])
                }
                (_, Some(a)) => {
                    right += 1;
                    (a, self.tail[right - 1])
                }
                _ => break, // every bin taken
            };
            seen += f64::from(w);
            if seen >= total / 2.0 {
                mad = distance;
                break;
            }
        }
        Some((median, (1.4826 * mad).max(STD_FLOOR)))
    }

    /// The score the stream's own recent history allows for `t`: a surprise that has been
    /// at least this large in a share `q` of recent readings scores no more than a tail
    /// probability of `q^EMPIRICAL_POWER` would (so a surprise that recurs, like a daily
    /// jump a forecast cannot time, stops being rare). 1 while the histogram is too young.
    fn empirical_score(&self, t: f64, width: f64) -> f64 {
        let total = weight(&self.tail);
        if total < TAIL_MIN_WEIGHT {
            return 1.0;
        }
        let bin = Self::bin(t);
        let above = weight(&self.tail[bin + 1..]) + 0.5 * f64::from(self.tail[bin]);
        // A surprise seen only once or twice before is still news: the cap is for what recurs.
        if above < TAIL_MIN_OCCURRENCES * width {
            return 1.0;
        }
        let share = above / total;
        (-EMPIRICAL_POWER * share.log10() / super::gaussian::SCORE_DECADES).clamp(0.0, 1.0)
    }

    fn bin(t: f64) -> usize {
        ((t / TAIL_BIN) as usize).min(TAIL_BINS - 1)
    }

    /// Long-run σ of `t`, with its floor.
    fn spread(&self) -> f64 {
        self.var.sqrt().max(STD_FLOOR)
    }

    /// Learns `t` into the long-run statistics and the empirical tail. Without habituation
    /// an outlier (see [`Level::learn_moments`]) is learnt into neither.
    fn learn(&mut self, t: f64, habituation: Habituation) {
        self.learn_at(t, habituation, self.moments(habituation));
    }

    /// [`Level::learn`] with the level's [`Level::moments`] already at hand.
    fn learn_at(&mut self, t: f64, habituation: Habituation, moments: (f64, f64)) {
        if !self.learn_moments(t, habituation, moments) {
            return;
        }
        if self.tail.len() != TAIL_BINS {
            self.tail = vec![0.0; TAIL_BINS];
        }
        let keep = (1.0 - 1.0 / TAIL_HORIZON) as f32;
        for w in &mut self.tail {
            *w *= keep;
        }
        self.tail[Self::bin(t)] += 1.0;
    }

    /// Learns `t` into the long-run mean and variance; whether it was learnt. Without
    /// habituation a value above `centre + WINSOR_SIGMAS × spread` is not learnt at all, so
    /// anomalies, however frequent, never become the stream's normal.
    fn learn_moments(&mut self, t: f64, habituation: Habituation, (centre, spread): (f64, f64)) -> bool {
        if habituation == Habituation::Never && self.learned >= MIN_HISTORY && t > centre + WINSOR_SIGMAS * spread {
            return false;
        }
        let bound = self.mean + WINSOR_SIGMAS * self.spread();
        let learnt = if self.learned >= MIN_HISTORY { t.min(bound) } else { t };
        self.learned = self.learned.saturating_add(1);
        // Weights 2/(n+1) at first: recent values count more than the first few (a stream's
        // first readings come from an unsettled normaliser and model), then 1/H.
        let alpha = (2.0 / (self.learned as f64 + 1.0)).max(1.0 / LONG_HORIZON);
        let delta = learnt - self.mean;
        let step = alpha * delta;
        self.mean += step;
        self.var = (1.0 - alpha) * (self.var + delta * step);
        true
    }
}

/// The sum of histogram weights `ws`, in `f64`. Eight running sums side by side rather than
/// one: a sum taken in order is a chain of 100 dependent additions, and this one ran four
/// times a reading (the instant and sustained levels' totals and tails), the largest part of
/// judging a reading (docs/PERFORMANCE.md). The order changes the result only in its last
/// bits (each addend is an `f32`, exact in `f64`).
fn weight(ws: &[f32]) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = ws.chunks_exact(8);
    let rest: f64 = chunks.remainder().iter().map(|&w| f64::from(w)).sum();
    for chunk in chunks {
        for (lane, &w) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(w);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// The slow path: an exponentially weighted average of surprise over about
/// [`SUSTAINED_WINDOW`] readings, for changes too mild to stand out in one reading but
/// lasting (a drift, a level that is a little off for hours).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Sustained {
    average: f64,
    seen: u64,
    level: Level,
}

/// Short and long-run statistics of a stream's surprise.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub(super) struct Likelihood {
    /// The last [`SHORT_WINDOW`] surprises, oldest first.
    recent: VecDeque<f64>,
    /// Statistics of `t = ∛(short average)`, the confirmation of a flag: mean and variance
    /// only (the empirical tail is the instant path's, and a flag needs both to pass).
    #[serde(flatten)]
    short: Level,
    /// Statistics of `∛surprise` of single readings, with the empirical tail: the score.
    /// Absent from snapshots written before it existed; seeded from `short` then.
    #[serde(default)]
    instant: Level,
    #[serde(default)]
    sustained: Sustained,
}

impl Default for Likelihood {
    fn default() -> Self {
        Self {
            recent: VecDeque::with_capacity(SHORT_WINDOW),
            short: Level::default(),
            instant: Level::default(),
            sustained: Sustained::default(),
        }
    }
}

/// What one reading's surprise amounts to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Judged {
    /// The anomaly score in [0, 1]: the reading's own surprise (or a lasting change).
    pub score: f64,
    /// The same for the average of the last [`SHORT_WINDOW`] surprises: a flag needs both.
    pub confirmation: f64,
    /// How far the reading's own surprise stands above the short average's long-run level,
    /// in long-run spreads.
    pub own: f64,
}

impl Likelihood {
    /// Scores `surprise` (finite, ≥ 0) against the history so far, then learns from it.
    /// Returns a score in [0, 1]; 0 until [`MIN_HISTORY`] values have been learnt.
    #[cfg(test)]
    pub(super) fn observe(&mut self, surprise: f64) -> f64 {
        self.judge(surprise, Habituation::Habituate).score
    }

    /// Like [`Likelihood::observe`], with the short average's score and how far this
    /// reading's own surprise alone stands above the long-run level: a window made
    /// anomalous by an earlier reading would give ordinary readings a high average for a few
    /// steps; the scorer flags only readings that are surprising themselves.
    pub(super) fn judge(&mut self, surprise: f64, habituation: Habituation) -> Judged {
        if self.instant.learned == 0 && self.short.learned > 0 {
            // A snapshot from before the instant path: start it from the average's history.
            self.instant = self.short.clone();
        }
        if !self.short.tail.is_empty() {
            self.short.tail = Vec::new();
        }
        // `while`: a snapshot from a build with a longer window holds more values.
        while self.recent.len() >= SHORT_WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(surprise);
        let average = self.recent.iter().sum::<f64>() / self.recent.len() as f64;
        let t = average.cbrt();
        let instant = surprise.cbrt();
        // One look at the instant level's moments (a histogram scan without habituation)
        // serves its score, the reading's own standing and its learning.
        let moments = self.instant.moments(habituation);
        let scores = (
            self.instant.score_at(instant, 1.0, habituation, moments),
            self.short.score(t, SHORT_WINDOW as f64, habituation),
        );
        let judged = match (habituation, scores) {
            (Habituation::Habituate, (Some(fast), Some(average))) => {
                let slow_part = SUSTAINED_WEIGHT * self.sustained_score(surprise).unwrap_or(0.0);
                Judged {
                    score: fast.max(slow_part),
                    confirmation: average.max(slow_part),
                    own: (instant - self.short.mean) / self.short.spread(),
                }
            }
            // Without habituation each reading is judged on its own: neither the sustained
            // path (a lasting change would keep it high for good and lift every reading's
            // score with it) nor the short average (in a heart's bigeminy every window of five
            // holds ectopic beats) counts.
            (Habituation::Never, (Some(fast), Some(_))) => {
                Judged { score: fast, confirmation: fast, own: (instant - moments.0) / moments.1 }
            }
            (Habituation::Habituate, _) => {
                self.sustained_score(surprise);
                Judged { score: 0.0, confirmation: 0.0, own: 0.0 }
            }
            (Habituation::Never, _) => Judged { score: 0.0, confirmation: 0.0, own: 0.0 },
        };
        self.short.learn_moments(t, habituation, self.short.moments(habituation));
        self.instant.learn_at(instant, habituation, moments);
        judged
    }

    /// Feeds `surprise` to the sustained path and returns its score (before learning it);
    /// `None` until it has seen [`SUSTAINED_WINDOW`] readings or its level is young.
    fn sustained_score(&mut self, surprise: f64) -> Option<f64> {
        let s = &mut self.sustained;
        s.seen = s.seen.saturating_add(1);
        let window = SUSTAINED_WINDOW;
        let alpha = (1.0 / s.seen as f64).max(1.0 / window);
        s.average += alpha * (surprise.min(SUSTAINED_CLIP) - s.average);
        if (s.seen as f64) < window {
            return None;
        }
        let slow = s.average.cbrt();
        let score = s.level.score(slow, SHORT_WINDOW as f64, Habituation::Habituate);
        s.level.learn(slow, Habituation::Habituate);
        score
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use rand_distr::{Distribution, StandardNormal};

    fn chi2_1(rng: &mut ChaCha8Rng) -> f64 {
        let z: f64 = StandardNormal.sample(rng);
        z * z
    }

    #[test]
    fn no_score_until_the_history_has_a_minimum_length() {
        let mut l = Likelihood::default();
        for _ in 0..MIN_HISTORY {
            assert_eq!(l.observe(1000.0), 0.0);
        }
        assert!(l.observe(1000.0) > 0.0 || l.observe(5000.0) > 0.0);
    }

    #[test]
    fn long_run_statistics_learn_the_distribution_of_the_transformed_average() {
        // For a calibrated forecast a = χ²ₖ/k with k = SHORT_WINDOW, and ∛a has mean
        // 1 − 2/(9k) and variance 2/(9k) (Wilson–Hilferty); winsorising at 3σ trims a little.
        let k = SHORT_WINDOW as f64;
        let (mean, sd) = (1.0 - 2.0 / (9.0 * k), (2.0 / (9.0 * k)).sqrt());
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut l = Likelihood::default();
        for _ in 0..50_000 {
            l.observe(chi2_1(&mut rng));
        }
        assert!((l.short.mean - mean).abs() < 0.02, "mean {} vs {mean}", l.short.mean);
        assert!((0.85 * sd..1.1 * sd).contains(&l.short.var.sqrt()), "sd {} vs {sd}", l.short.var.sqrt());
    }

    #[test]
    fn one_wild_value_cannot_blow_up_the_long_run_statistics() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let mut l = Likelihood::default();
        for _ in 0..5000 {
            l.observe(chi2_1(&mut rng));
        }
        let (mean, var) = (l.short.mean, l.short.var);
        l.observe(1e300);
        for _ in 0..SHORT_WINDOW {
            l.observe(chi2_1(&mut rng));
        }
        assert!(l.short.mean < mean * 1.05, "mean {mean} -> {}", l.short.mean);
        assert!(l.short.var < var * 1.3, "var {var} -> {}", l.short.var);
    }

    #[test]
    fn a_surprise_that_recurs_daily_stops_being_rare_and_a_new_one_still_is() {
        // A forecast that cannot time a daily jump: an 8σ surprise every 144 readings.
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let mut l = Likelihood::default();
        let mut jump_scores = Vec::new();
        for i in 0..144 * 30 {
            let jump = i % 144 == 100;
            let score = l.observe(if jump { 64.0 } else { chi2_1(&mut rng) });
            if jump {
                jump_scores.push(score);
            }
        }
        assert!(jump_scores[0] > 0.9, "the first jump is news: {jump_scores:?}");
        // A few later jumps still reach 1.0, when noise makes one the largest lately.
        let mut later = jump_scores[10..].to_vec();
        later.sort_by(f64::total_cmp);
        assert!(later[later.len() / 2] < 0.6, "a daily jump is mostly not news: {jump_scores:?}");
        // A far larger surprise than the daily one is still news.
        assert!(l.observe(900.0) > 0.9);
    }

    #[test]
    fn a_snapshot_from_before_the_instant_path_seeds_it_from_the_average() {
        let mut rng = ChaCha8Rng::seed_from_u64(14);
        let mut l = Likelihood::default();
        for _ in 0..1000 {
            l.observe(chi2_1(&mut rng));
        }
        // The old layout: the tail flattened beside the short average's moments, no instant.
        let mut old = serde_json::to_value(&l).unwrap();
        let instant = old.as_object_mut().unwrap().remove("instant").unwrap();
        old["tail"] = instant["tail"].clone();
        let mut restored: Likelihood = serde_json::from_value(old).unwrap();
        assert_eq!(restored.instant.learned, 0);
        let score = restored.observe(900.0);
        assert_eq!(restored.instant.learned, restored.short.learned, "seeded, then learnt one more");
        assert!(restored.short.tail.is_empty() && restored.instant.tail.len() == TAIL_BINS);
        assert!(score > 0.9, "a huge surprise scores at once after the restore: {score}");
    }

    #[test]
    fn without_habituation_frequent_outliers_stay_outliers_and_the_level_is_the_normal_readings() {
        // A third of the readings are wild (a heart in trigeminy), from the start.
        let run = |habituation| {
            let mut rng = ChaCha8Rng::seed_from_u64(15);
            let mut l = Likelihood::default();
            let (mut wild, mut ordinary) = (Vec::new(), Vec::new());
            for i in 0..6000 {
                let is_wild = i % 3 == 0;
                let j = l.judge(if is_wild { 900.0 } else { chi2_1(&mut rng) }, habituation);
                if i >= 3000 {
                    if is_wild {
                        wild.push(j)
                    } else {
                        ordinary.push(j)
                    }
                }
            }
            (l, wild, ordinary)
        };
        let (l, wild, ordinary) = run(Habituation::Never);
        assert!(wild.iter().all(|j| j.score > 0.9 && j.own > 2.0), "every wild reading stands out");
        let flagged_ordinary = ordinary.iter().filter(|j| j.score > 0.55).count();
        assert!(flagged_ordinary < 20, "ordinary readings mostly do not: {flagged_ordinary} of 2000");
        // ∛χ²₁ has median ∛0.455 = 0.77: the level is the ordinary readings'.
        let (centre, _) = l.instant.moments(Habituation::Never);
        assert!((centre - 0.77).abs() < 0.1, "centre {centre}");
        // With habituation they become the normal.
        let (_, wild, _) = run(Habituation::Habituate);
        let median = {
            let mut s: Vec<f64> = wild.iter().map(|j| j.score).collect();
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        };
        assert!(median < 0.3, "habituated: {median}");
    }

    #[test]
    fn state_stays_bounded() {
        let mut l = Likelihood::default();
        for i in 0..10_000 {
            l.observe(f64::from(i % 7));
        }
        assert_eq!(l.recent.len(), SHORT_WINDOW);
        assert_eq!(l.instant.tail.len(), TAIL_BINS);
        // A snapshot written when the window was 5 shrinks to the window at its next reading.
        l.recent.extend([1.0, 2.0, 3.0, 4.0, 5.0]);
        l.observe(0.0);
        assert_eq!(l.recent.len(), SHORT_WINDOW);
    }
}
