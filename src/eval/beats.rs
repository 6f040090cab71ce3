//! Beats of one ECG lead, as the beat-level detector and the beat classifier see them.
//!
//! A beat is the stretch of signal around an R peak, from [`PRE_S`] before it to [`POST_S`]
//! after, baseline-removed (the window's median), scaled by the record's own amplitude (the
//! median absolute deviation of the lead over the learning stretch) and averaged down by
//! [`DECIMATE`]. Beside its shape come four rhythm features: the RR interval before it
//! against the running RR (a premature beat is short), the one after it against the running
//! RR and against the one before (a compensatory pause is long), and the RR before against
//! the record's typical RR.
//!
//! Everything is learnt from the signal itself, without labels: the record's amplitude, its
//! typical RR and its typical beat (the element-wise median of the beats in the learning
//! stretch, the first minutes of the record). A beat's features need the next R peak, so a
//! live detector judges a beat one beat late (about a second).
use super::wfdb::{self, AamiClass, Annotation};

/// Start of a beat's window before its R peak, seconds.
pub const PRE_S: f64 = 0.25;
/// End of a beat's window after its R peak, seconds.
pub const POST_S: f64 = 0.4;
/// Samples averaged into one step of a beat's shape.
pub const DECIMATE: usize = 3;
/// Steps of the shape averaged into one channel of the beat stream.
pub const BIN: usize = 4;
/// RR intervals in the running RR.
const RUNNING_RR: usize = 10;
/// Rhythm features per beat.
pub const RHYTHM: usize = 4;

/// One beat with its features.
#[derive(Debug, Clone)]
pub struct BeatFeatures {
    /// Sample of the R peak.
    pub sample: u64,
    pub symbol: &'static str,
    pub class: AamiClass,
    /// The shape: baseline-removed, in units of the record's amplitude, decimated.
    pub shape: Vec<f32>,
    /// The shape minus the record's typical beat.
    pub deviation: Vec<f32>,
    /// RR before / running RR, RR after / running RR, RR after / RR before, RR before /
    /// the record's typical RR.
    pub rhythm: [f32; RHYTHM],
    /// The beat's shape against the record's typical beat, at full resolution
    /// ([`shape_numbers`]).
    pub numbers: [f32; SHAPE_NUMBERS],
    /// Each of [`Self::numbers`] as a robust z-score against its median and MAD over the
    /// beats of the learning stretch (clipped to ±[`Z_CLIP`]): how unusual the number is for
    /// this patient.
    pub numbers_z: [f32; SHAPE_NUMBERS],
    /// The same numbers against the patient's recent typical beat (the element-wise median
    /// of the [`RECENT_BEATS`] beats before this one): a beat like its neighbours is
    /// ordinary for the patient now, even where the beat has changed since the first minutes.
    pub numbers_recent: [f32; SHAPE_NUMBERS],
}

impl BeatFeatures {
    /// The beat as one multi-channel reading for the beat stream: the first two rhythm
    /// features, then the shape averaged in bins of [`BIN`] steps.
    pub fn reading(&self) -> Vec<f64> {
        let mut values = vec![f64::from(self.rhythm[0]), f64::from(self.rhythm[2])];
        values.extend(self.shape.chunks_exact(BIN).map(|b| f64::from(b.iter().sum::<f32>() / BIN as f32)));
        values
    }

    /// The beat as a sequence for the classifier, `[steps][inputs]` flattened: at each step
    /// the shape, its deviation from the typical beat, the rhythm features and `constant`
    /// (numbers describing the whole beat, the same at every step).
    pub fn sequence(&self, constant: &[f32]) -> Vec<f32> {
        let inputs = 2 + RHYTHM + constant.len();
        let mut out = Vec::with_capacity(self.shape.len() * inputs);
        for (s, d) in self.shape.iter().zip(&self.deviation) {
            out.push(*s);
            out.push(*d);
            out.extend_from_slice(&self.rhythm);
            out.extend_from_slice(constant);
        }
        out
    }

    /// The shape numbers, their robust z-scores and the numbers against the recent typical
    /// beat: [`Self::numbers`], [`Self::numbers_z`], [`Self::numbers_recent`].
    pub fn all_numbers(&self) -> [f32; BEAT_NUMBERS] {
        let mut out = [0.0; BEAT_NUMBERS];
        out[..SHAPE_NUMBERS].copy_from_slice(&self.numbers);
        out[SHAPE_NUMBERS..2 * SHAPE_NUMBERS].copy_from_slice(&self.numbers_z);
        out[2 * SHAPE_NUMBERS..].copy_from_slice(&self.numbers_recent);
        out
    }

    /// The beat as one row of tabular features: the rhythm, the shape numbers and their
    /// robust z-scores, and the deviation from the typical beat averaged in bins of
    /// [`TABLE_BIN`] steps.
    pub fn table_row(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(RHYTHM + BEAT_NUMBERS + self.deviation.len() / TABLE_BIN);
        out.extend_from_slice(&self.rhythm);
        out.extend_from_slice(&self.all_numbers());
        out.extend(self.deviation.chunks_exact(TABLE_BIN).map(|b| b.iter().sum::<f32>() / TABLE_BIN as f32));
        out
    }
}

/// Inputs per step of the classifier's sequences without constant numbers.
pub const SEQUENCE_INPUTS: usize = 2 + RHYTHM;
/// Steps of the deviation averaged into one column of [`BeatFeatures::table_row`].
pub const TABLE_BIN: usize = 3;
/// How many [`shape_numbers`] a beat has.
pub const SHAPE_NUMBERS: usize = 10;
/// How many numbers describe a whole beat ([`BeatFeatures::all_numbers`]).
pub const BEAT_NUMBERS: usize = 3 * SHAPE_NUMBERS;
/// Beats whose element-wise median is the recent typical beat (about a minute).
pub const RECENT_BEATS: usize = 64;
/// Bound of the shape numbers' robust z-scores.
pub const Z_CLIP: f32 = 50.0;

/// Ten numbers comparing a beat's window `w` (full resolution, baseline-removed, in units of
/// the record's amplitude, the R peak at `r`) with the record's typical beat `t`, the way a
/// cardiologist reads a QRS complex against the patient's usual one. With `q` the ±100 ms
/// around the R peak and the QRS segment ±150 ms:
///
/// 0. correlation of `w` and `t` over `q` (a ventricular beat has another morphology);
/// 1. `ln(Σ(w − t)² / Σt² + 1e-6)` over the QRS segment (relative energy of the difference);
/// 2. QRS width (span where |slope| exceeds 0.2 of its largest) minus the template's, ms;
/// 3. QRS width, ms (ventricular beats are wide);
/// 4. energy width (10–90 % of the cumulative squared slope) minus the template's, ms;
/// 5. energy width, ms;
/// 6. peak-to-peak over the template's, QRS segment;
/// 7. largest |w − t| over the template's peak-to-peak, whole window;
/// 8. largest value over the template's; 9. smallest value over the template's, QRS segment.
pub fn shape_numbers(w: &[f64], t: &[f64], r: usize, hz: f64) -> [f32; SHAPE_NUMBERS] {
    let n = w.len().min(t.len());
    let span = |s: f64| (s * hz).round() as usize;
    let q = r.saturating_sub(span(0.1))..(r + span(0.1) + 1).min(n);
    let seg = r.saturating_sub(span(0.15))..(r + span(0.15) + 1).min(n);
    let ms = 1000.0 / hz;
    let correlation = {
        let (a, b) = (&w[q.clone()], &t[q]);
        let len = a.len().max(1) as f64;
        let (ma, mb) = (a.iter().sum::<f64>() / len, b.iter().sum::<f64>() / len);
        let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
        let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
        let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
        if va > 0.0 && vb > 0.0 {
            cov / (va * vb).sqrt()
        } else {
            0.0
        }
    };
    let (ws, ts) = (&w[seg.clone()], &t[seg]);
    let difference: f64 = ws.iter().zip(ts).map(|(a, b)| (a - b).powi(2)).sum();
    let energy: f64 = ts.iter().map(|b| b * b).sum();
    let relative = (difference / energy.max(1e-12) + 1e-6).ln();
    let slope_width = |x: &[f64]| {
        let slope: Vec<f64> = x.windows(2).map(|p| (p[1] - p[0]).abs()).collect();
        let top = slope.iter().copied().fold(0.0, f64::max);
        if top <= 0.0 {
            return 0.0;
        }
        let above: Vec<usize> = (0..slope.len()).filter(|&i| slope[i] > 0.2 * top).collect();
        match (above.first(), above.last()) {
            (Some(a), Some(b)) => (b - a) as f64 * ms,
            _ => 0.0,
        }
    };
    let energy_width = |x: &[f64]| {
        let squared: Vec<f64> = x.windows(2).map(|p| (p[1] - p[0]).powi(2)).collect();
        let total: f64 = squared.iter().sum();
        if total <= 0.0 {
            return 0.0;
        }
        let mut cumulative = 0.0;
        let (mut from, mut to) = (None, None);
        for (i, v) in squared.iter().enumerate() {
            cumulative += v;
            if from.is_none() && cumulative >= 0.1 * total {
                from = Some(i);
            }
            if to.is_none() && cumulative >= 0.9 * total {
                to = Some(i);
            }
        }
        (to.unwrap_or(0).saturating_sub(from.unwrap_or(0))) as f64 * ms
    };
    let peak_to_peak = |x: &[f64]| {
        x.iter().copied().fold(f64::NEG_INFINITY, f64::max) - x.iter().copied().fold(f64::INFINITY, f64::min)
    };
    // A ratio whose denominator keeps its sign and stays away from zero.
    let ratio = |a: f64, b: f64| a / if b.abs() < 0.1 { 0.1f64.copysign(b) } else { b };
    let template_ptp = peak_to_peak(ts).max(0.1);
    let largest_deviation = w[..n].iter().zip(&t[..n]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    let (w_width, t_width) = (slope_width(ws), slope_width(ts));
    let (w_energy, t_energy) = (energy_width(ws), energy_width(ts));
    let max = |x: &[f64]| x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = |x: &[f64]| x.iter().copied().fold(f64::INFINITY, f64::min);
    let numbers = [
        correlation,
        relative,
        w_width - t_width,
        w_width,
        w_energy - t_energy,
        w_energy,
        peak_to_peak(ws) / template_ptp,
        largest_deviation / template_ptp,
        ratio(max(ws), max(ts)),
        ratio(min(ws), min(ts)),
    ];
    numbers.map(|v| if v.is_finite() { v.clamp(-1e4, 1e4) as f32 } else { 0.0 })
}

/// Steps of a beat's shape at `hz`.
pub fn steps(hz: f64) -> usize {
    let (pre, post) = window(hz);
    (pre + post) / DECIMATE
}

fn window(hz: f64) -> (usize, usize) {
    ((PRE_S * hz).round() as usize, (POST_S * hz).round() as usize)
}

fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mid = values.len() / 2;
    let (_, m, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    *m
}

/// The beats of `signal` (one lead at `hz`) at the annotated beats, with the record's
/// amplitude, typical RR and typical beat learnt from the first `learn_s` seconds. Beats
/// without a beat on each side, or whose window leaves the signal, are skipped.
pub fn extract(signal: &[f64], hz: f64, annotations: &[Annotation], learn_s: f64) -> Vec<BeatFeatures> {
    let (pre, post) = window(hz);
    let learn_end = ((learn_s * hz).round() as usize).min(signal.len());
    let marks: Vec<(usize, &'static str, AamiClass)> = annotations
        .iter()
        .filter_map(|a| wfdb::aami_class(a.symbol).map(|c| (a.sample as usize, a.symbol, c)))
        .collect();
    let scale = {
        let mut first: Vec<f64> = signal[..learn_end.max(1).min(signal.len())].to_vec();
        let m = median(&mut first);
        let mut dev: Vec<f64> = first.iter().map(|v| (v - m).abs()).collect();
        median(&mut dev) * 1.4826 + 1e-3
    };
    // A beat's window at full resolution, baseline-removed and scaled.
    let window_at = |s: usize| -> Option<Vec<f64>> {
        if s < pre || s + post > signal.len() {
            return None;
        }
        let mut w: Vec<f64> = signal[s - pre..s + post].to_vec();
        let base = median(&mut w.clone());
        for v in &mut w {
            *v = (*v - base) / scale;
        }
        Some(w)
    };
    let decimate = |w: &[f64]| -> Vec<f32> {
        w.chunks_exact(DECIMATE).map(|c| (c.iter().sum::<f64>() / DECIMATE as f64) as f32).collect()
    };
    // The typical beat and RR of the learning stretch (all beats: no labels are used).
    let learnt: Vec<Vec<f64>> = marks.iter().filter(|m| m.0 < learn_end).filter_map(|m| window_at(m.0)).collect();
    let learnt_shapes: Vec<Vec<f32>> = learnt.iter().map(|w| decimate(w)).collect();
    let template: Vec<f32> = (0..steps(hz))
        .map(|i| median(&mut learnt_shapes.iter().map(|w| f64::from(w[i])).collect::<Vec<_>>()) as f32)
        .collect();
    let full_template: Vec<f64> =
        (0..pre + post).map(|i| median(&mut learnt.iter().map(|w| w[i]).collect::<Vec<_>>())).collect();
    let mut learnt_rr: Vec<f64> =
        marks.windows(2).filter(|w| w[1].0 < learn_end).map(|w| (w[1].0 - w[0].0) as f64).collect();
    let typical_rr = match median(&mut learnt_rr) {
        rr if rr > 0.0 => rr,
        _ => hz, // no beats to learn from: 60 beats a minute
    };
    let mut out = Vec::with_capacity(marks.len());
    // The windows of the last RECENT_BEATS beats, and their element-wise median.
    let mut recent: std::collections::VecDeque<Vec<f64>> = std::collections::VecDeque::new();
    let mut column = Vec::with_capacity(RECENT_BEATS);
    for k in 1..marks.len().saturating_sub(1) {
        let (s, symbol, class) = marks[k];
        let Some(window) = window_at(s) else { continue };
        let recent_template: Vec<f64> = if recent.is_empty() {
            full_template.clone()
        } else {
            (0..pre + post)
                .map(|i| {
                    column.clear();
                    column.extend(recent.iter().map(|w| w[i]));
                    median(&mut column)
                })
                .collect()
        };
        let numbers_recent = shape_numbers(&window, &recent_template, pre, hz);
        let shape = decimate(&window);
        let rr = |i: usize| (marks[i].0 - marks[i - 1].0).max(1) as f64;
        let before = rr(k);
        let after = rr(k + 1);
        let from = k.saturating_sub(RUNNING_RR - 1).max(1);
        let running = (from..=k).map(rr).sum::<f64>() / (k + 1 - from) as f64;
        let deviation = shape.iter().zip(&template).map(|(v, t)| v - t).collect();
        out.push(BeatFeatures {
            sample: s as u64,
            symbol,
            class,
            shape,
            deviation,
            rhythm: [
                (before / running) as f32,
                (after / running) as f32,
                (after / before) as f32,
                (before / typical_rr) as f32,
            ],
            numbers: shape_numbers(&window, &full_template, pre, hz),
            numbers_z: [0.0; SHAPE_NUMBERS],
            numbers_recent,
        });
        if recent.len() == RECENT_BEATS {
            recent.pop_front();
        }
        recent.push_back(window);
    }
    // Each number against its spread over the learning stretch's beats.
    for i in 0..SHAPE_NUMBERS {
        let mut learnt: Vec<f64> =
            out.iter().filter(|b| (b.sample as usize) < learn_end).map(|b| f64::from(b.numbers[i])).collect();
        let centre = median(&mut learnt);
        let mut deviations: Vec<f64> = learnt.iter().map(|v| (v - centre).abs()).collect();
        let spread = 1.4826 * median(&mut deviations) + 1e-3;
        for b in &mut out {
            b.numbers_z[i] =
                ((f64::from(b.numbers[i]) - centre) / spread).clamp(-f64::from(Z_CLIP), f64::from(Z_CLIP)) as f32;
        }
    }
    out
}

/// `signal` with the beats at `samples` redrawn: each one's window ([`PRE_S`] before its R
/// peak to [`POST_S`] after) scaled about its median by `amplitude` and stretched in time
/// about the R peak by `width` (above 1 wider), blended into the signal with a raised-cosine
/// taper over the window's outer fifth on each side so that the signal stays continuous. A
/// way to show a classifier more ventricular beats than a few patients have: the same beat
/// taller, shorter, wider or narrower, its features then computed as for any other.
pub fn redraw_beats(signal: &[f64], hz: f64, samples: &[usize], amplitude: f64, width: f64) -> Vec<f64> {
    let (pre, post) = window(hz);
    let mut out = signal.to_vec();
    let at = |x: f64| -> f64 {
        let x = x.clamp(0.0, (signal.len().max(1) - 1) as f64);
        let i = x.floor() as usize;
        let frac = x - i as f64;
        let next = signal[(i + 1).min(signal.len() - 1)];
        signal[i] * (1.0 - frac) + next * frac
    };
    for &s in samples {
        if s < pre || s + post > signal.len() {
            continue;
        }
        let base = median(&mut signal[s - pre..s + post].to_vec());
        let taper = ((pre + post) / 5).max(1);
        for i in s - pre..s + post {
            let from_edge = (i - (s - pre)).min(s + post - 1 - i);
            let weight = if from_edge >= taper {
                1.0
            } else {
                0.5 - 0.5 * (std::f64::consts::PI * from_edge as f64 / taper as f64).cos()
            };
            let redrawn = base + amplitude * (at(s as f64 + (i as f64 - s as f64) / width) - base);
            out[i] = signal[i] + weight * (redrawn - signal[i]);
        }
    }
    out
}

/// The reference detector beside the beat stream: each reading's largest robust z-score
/// over its channels, `|value − median| / (1.4826 · MAD + 0.001)`, with the median and the
/// median absolute deviation of each channel taken over the first `learn` readings. It
/// asks "how unlike this patient's typical beat is this one", with no model and no memory
/// beyond the learning stretch.
pub fn robust_z(readings: &[Vec<f64>], learn: usize) -> Vec<f64> {
    let channels = readings.first().map_or(0, Vec::len);
    let learnt = &readings[..learn.min(readings.len())];
    let (centre, spread): (Vec<f64>, Vec<f64>) = (0..channels)
        .map(|c| {
            let mut column: Vec<f64> = learnt.iter().map(|r| r[c]).collect();
            let m = median(&mut column);
            let mut dev: Vec<f64> = column.iter().map(|v| (v - m).abs()).collect();
            (m, 1.4826 * median(&mut dev) + 1e-3)
        })
        .unzip();
    readings
        .iter()
        .map(|r| r.iter().zip(centre.iter().zip(&spread)).map(|(v, (m, s))| ((v - m) / s).abs()).fold(0.0, f64::max))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(sample: u64, symbol: &'static str) -> Annotation {
        let code = wfdb::code_for_symbol(symbol).unwrap();
        Annotation { sample, code, symbol, sub: 0, chan: 0, num: 0, aux: None }
    }

    /// A synthetic lead: a narrow spike every `rr` samples, a wide one at `wide`.
    fn lead(n: usize, rr: usize, wide: usize) -> (Vec<f64>, Vec<Annotation>) {
        let mut x = vec![0.0; n];
        let mut annotations = Vec::new();
        let mut s = rr;
        while s + rr < n {
            let (symbol, half) = if s == wide { ("V", 20) } else { ("N", 3) };
            for (i, v) in x.iter_mut().enumerate().take(s + half).skip(s - half) {
                *v = 1.0 - (i as f64 - s as f64).abs() / half as f64;
            }
            annotations.push(mark(s as u64, symbol));
            s += rr;
        }
        (x, annotations)
    }

    #[test]
    fn a_wide_beat_deviates_from_the_typical_beat_and_a_normal_one_does_not() {
        let hz = 360.0;
        let (x, ann) = lead(360 * 60, 300, 300 * 50);
        let beats = extract(&x, hz, &ann, 30.0);
        assert!(beats.len() > 60);
        let dev = |b: &BeatFeatures| b.deviation.iter().map(|d| d * d).sum::<f32>();
        let wide = beats.iter().find(|b| b.symbol == "V").expect("the wide beat is kept");
        let normal = beats.iter().filter(|b| b.symbol == "N").map(dev).fold(0.0, f32::max);
        assert!(dev(wide) > 10.0 * (normal + 1e-3), "wide {} normal {normal}", dev(wide));
        assert_eq!(wide.shape.len(), steps(hz));
        // A regular rhythm: every RR ratio is 1.
        assert!(beats.iter().all(|b| b.rhythm.iter().all(|r| (r - 1.0).abs() < 1e-6)));
        assert_eq!(wide.reading().len(), 2 + steps(hz) / BIN);
        assert_eq!(wide.sequence(&[0.5; 3]).len(), steps(hz) * (SEQUENCE_INPUTS + 3));
        assert_eq!(wide.table_row().len(), RHYTHM + BEAT_NUMBERS + steps(hz) / TABLE_BIN);
        // The wide beat's QRS is wider than the template's, its correlation lower, and both
        // stand out for this record.
        let normal = beats.iter().find(|b| b.symbol == "N").unwrap();
        assert!(wide.numbers[2] > 20.0 && normal.numbers[2].abs() < 1e-3, "{:?} {:?}", wide.numbers, normal.numbers);
        assert!(wide.numbers[0] < normal.numbers[0] && (normal.numbers[0] - 1.0).abs() < 1e-6);
        assert!(wide.numbers_z.iter().any(|z| z.abs() >= Z_CLIP) && normal.numbers_z.iter().all(|z| z.abs() < 1.0));
        assert!(beats.iter().all(|b| b.all_numbers().iter().all(|v| v.is_finite())));
    }

    #[test]
    fn a_redrawn_beat_is_taller_or_wider_about_its_r_peak_and_the_rest_of_the_signal_is_kept() {
        let hz = 360.0;
        let (x, ann) = lead(360 * 60, 300, 300 * 50);
        let v = 300 * 50;
        let (pre, post) = window(hz);
        // Taller: twice the height at the R peak, the same at the window's edges and outside.
        let tall = redraw_beats(&x, hz, &[v], 2.0, 1.0);
        assert!((tall[v] - 2.0 * x[v]).abs() < 1e-9, "{} against {}", tall[v], x[v]);
        assert_eq!(tall[v - pre], x[v - pre]);
        assert!(tall.iter().zip(&x).enumerate().all(|(i, (a, b))| (v - pre..v + post).contains(&i) || a == b));
        // Wider: the spike of half-width 20 samples reaches past 20 samples from its peak.
        let wide = redraw_beats(&x, hz, &[v], 1.0, 1.5);
        assert_eq!(x[v + 25], 0.0);
        assert!(wide[v + 25] > 0.1 && wide[v - 25] > 0.1 && (wide[v] - x[v]).abs() < 1e-9);
        // Narrower: gone at 17 samples.
        let narrow = redraw_beats(&x, hz, &[v], 1.0, 0.8);
        assert!(x[v + 17] > 0.1 && narrow[v + 17].abs() < 1e-9);
        // Its features follow: the wide beat's QRS measures wider.
        let width_of = |signal: &[f64]| {
            let beats = extract(signal, hz, &ann, 30.0);
            beats.iter().find(|b| b.sample as usize == v).expect("the redrawn beat").numbers[3]
        };
        assert!(width_of(&wide) > width_of(&x) + 10.0, "{} against {}", width_of(&wide), width_of(&x));
        // A beat too near an end of the signal is left as it is.
        assert_eq!(redraw_beats(&x, hz, &[3], 2.0, 1.5), x);
    }

    #[test]
    fn a_lasting_change_of_shape_becomes_the_recent_typical_beat() {
        // Narrow beats for the first minute, wider ones (a new normal) from then on.
        let (hz, rr) = (360.0, 300);
        let (mut x, ann) = lead(360 * 180, rr, usize::MAX);
        let change = 360 * 60;
        for a in ann.iter().filter(|a| a.sample as usize >= change) {
            let s = a.sample as usize;
            for (i, v) in x.iter_mut().enumerate().take(s + 12).skip(s - 12) {
                *v = 1.0 - (i as f64 - s as f64).abs() / 12.0;
            }
        }
        let beats = extract(&x, hz, &ann, 30.0);
        let first_wide = beats.iter().find(|b| b.sample as usize >= change).expect("beats after the change");
        let later = beats.iter().find(|b| b.sample as usize >= change + 2 * RECENT_BEATS * rr).expect("later beats");
        // Against the first minute's typical beat every wide beat is wider; against the recent
        // typical beat only the first wide ones are, until they are most of the recent beats.
        for b in [first_wide, later] {
            assert!(b.numbers[2] > 20.0, "{:?}", b.numbers);
        }
        assert!(first_wide.numbers_recent[2] > 20.0, "{:?}", first_wide.numbers_recent);
        assert!(
            later.numbers_recent[2].abs() < 1e-3 && (later.numbers_recent[0] - 1.0).abs() < 1e-6,
            "{:?}",
            later.numbers_recent
        );
    }

    #[test]
    fn robust_z_is_the_largest_standardised_distance_from_the_learnt_median() {
        let mut readings: Vec<Vec<f64>> = (0..100).map(|i| vec![f64::from(i % 5), 10.0]).collect();
        readings.push(vec![2.0, 10.0]);
        readings.push(vec![2.0, 13.0]);
        let z = robust_z(&readings, 100);
        // Channel 0: median 2, MAD 1; channel 1 is constant (MAD 0, floor 0.001).
        assert!(z[100].abs() < 1e-12);
        assert!((z[101] - 3.0 / 1e-3).abs() < 1e-6);
        assert!((z[0] - 2.0 / (1.4826 + 1e-3)).abs() < 1e-9);
    }

    #[test]
    fn a_premature_beat_has_a_short_rr_before_and_a_long_one_after() {
        let hz = 360.0;
        let (x, mut ann) = lead(360 * 60, 300, usize::MAX);
        ann[40].sample -= 100;
        let beats = extract(&x, hz, &ann, 30.0);
        let b = beats.iter().find(|b| b.sample == ann[40].sample).unwrap();
        assert!((b.rhythm[0] - 200.0 / 290.0).abs() < 1e-3, "{:?}", b.rhythm);
        assert!((b.rhythm[2] - 400.0 / 200.0).abs() < 1e-6);
        assert!((b.rhythm[3] - 200.0 / 300.0).abs() < 1e-6);
    }

    #[test]
    fn beats_at_the_edges_and_non_beat_annotations_are_skipped() {
        let hz = 360.0;
        let (x, mut ann) = lead(360 * 10, 300, usize::MAX);
        ann.insert(3, mark(ann[2].sample + 10, "+"));
        let beats = extract(&x, hz, &ann, 5.0);
        // First and last beats have no neighbour; "+" is a rhythm change, not a beat.
        assert_eq!(beats.len(), ann.len() - 3);
        assert!(beats.iter().all(|b| b.symbol == "N"));
    }
}
