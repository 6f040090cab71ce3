//! `tsad simulate`: the demo. Posts realistic synthetic streams to a running server —
//! sensor-like (a daily peak, an hourly ripple, AR(1) and white noise, a slow drift) and
//! ECG-like (a quasi-periodic PQRST waveform at 360 Hz) — with anomalies injected at known
//! times, then tells which of them the server flagged.
//!
//! The generators are plain numbers drawn from a seeded [`ChaCha8Rng`] (one stream of it per
//! simulated stream), so a seed and a `--start` give the same readings on every run, and a
//! repeated run is answered from storage. Without `--start` the data ends now; a stream that
//! already holds later readings (an earlier run) continues after them.
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::f64::consts::PI;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use clap::{Args, ValueEnum};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::{json, Value};

use super::admin::{print_table, ServerArgs};
use super::import::{runtime, Ingest, Progress, MAX_BATCH};
use super::CliError;
use crate::api::wire::{format_ts, stream_name};
use crate::synthetic::Shape;

/// Readings per sensor stream without `--readings` or `--duration`.
const DEFAULT_SENSOR_READINGS: u64 = 1000;
/// Simulated seconds per ECG stream without `--readings` or `--duration`.
const DEFAULT_ECG_SECONDS: f64 = 30.0;
/// Sensor readings between anomalies without `--anomaly-every`.
const DEFAULT_SENSOR_SPACING: f64 = 150.0;
/// Simulated seconds between ECG anomalies without `--anomaly-every`.
const DEFAULT_ECG_SPACING_S: f64 = 5.0;
/// Readings at the start of a stream kept free of anomalies: the server's default warm-up
/// (200) and some history. A quarter of the stream when that is more.
const CLEAN_READINGS: u64 = 250;
/// Readings a sensor dropout lasts.
const SENSOR_DROPOUT: u64 = 20;
/// Least time between two posts of a paced stream (`--speedup`): readings due meanwhile
/// travel together.
const PACED_POST_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Streams to simulate; with both kinds, one in five is ECG (at least one).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    streams: u32,
    /// Kinds of stream (comma-separated).
    #[arg(long, value_name = "KINDS", value_delimiter = ',', default_value = "sensor,ecg")]
    kinds: Vec<Kind>,
    /// Readings per second of a sensor stream: a number or a fraction (1/60 is one a minute).
    #[arg(long, value_name = "R", default_value = "1/60", value_parser = parse_rate)]
    rate: f64,
    /// Samples per second of an ECG stream.
    #[arg(long, value_name = "HZ", default_value_t = 360, value_parser = clap::value_parser!(u32).range(1..=1000))]
    ecg_hz: u32,
    /// Run the simulated clock X times faster than real time [default: as fast as the server
    /// takes the readings]; 1 is a live feed.
    #[arg(long, value_name = "X", value_parser = parse_positive)]
    speedup: Option<f64>,
    /// Simulated seconds per stream [default: 1,000 sensor readings, 30 s of ECG].
    #[arg(long, value_name = "S", value_parser = parse_positive, conflicts_with = "readings")]
    duration: Option<f64>,
    /// Readings per stream (samples, for ECG).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
    readings: Option<u64>,
    /// Simulated seconds between injected anomalies [default: 150 readings' worth for a
    /// sensor, 5 s for ECG]. The first quarter of a stream (at least 250 readings) is clean.
    #[arg(long, value_name = "S", value_parser = parse_positive)]
    anomaly_every: Option<f64>,
    /// Seed of the series and their anomalies.
    #[arg(long, value_name = "N", default_value_t = 1)]
    seed: u64,
    /// Prefix of the stream names (`<prefix>sensor-1`, `<prefix>ecg-1`, …).
    #[arg(long, value_name = "TEXT", default_value = "demo-")]
    prefix: String,
    /// Time of every stream's first reading (RFC 3339 or Unix milliseconds) [default: the
    /// last reading lands now]. The same start and seed repeat a run exactly.
    #[arg(long, value_name = "TIME")]
    start: Option<String>,
    /// Readings per request.
    #[arg(long, value_name = "N", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..=MAX_BATCH as i64))]
    batch: u32,
}

/// What a simulated stream looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// A slow sensor: daily peak, hourly ripple, noise, drift.
    Sensor,
    /// An electrocardiogram lead at `--ecg-hz`, in millivolts.
    Ecg,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sensor => "sensor",
            Kind::Ecg => "ecg",
        }
    }
}

/// An anomaly injected into a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anomaly {
    /// One reading far off: 3–5 standard deviations of the series (sensor), a 2.5–3.5 mV
    /// electrode pop (ECG).
    Spike,
    /// From here on the level moves by 1.5–2.5 standard deviations (back towards the
    /// original level when it had moved before).
    LevelShift,
    /// The signal reads a flat 0: 20 readings of a sensor, one second of ECG (lead off).
    Dropout,
    /// A premature, wide, tall beat with an inverted T wave and a compensatory pause
    /// (ventricular-ectopic-like).
    Ectopic,
}

impl Anomaly {
    fn name(self) -> &'static str {
        match self {
            Anomaly::Spike => "spike",
            Anomaly::LevelShift => "level_shift",
            Anomaly::Dropout => "dropout",
            Anomaly::Ectopic => "ectopic",
        }
    }
}

/// Where an anomaly was injected: readings `at..at + len` of its stream.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Injected {
    pub kind: Anomaly,
    pub at: u64,
    pub len: u64,
}

fn normal(rng: &mut impl Rng) -> f64 {
    StandardNormal.sample(rng)
}

fn sign(rng: &mut impl Rng) -> f64 {
    if rng.random_bool(0.5) {
        1.0
    } else {
        -1.0
    }
}

/// The random generator of simulated stream `index` for `seed`.
fn stream_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Where the anomalies of a stream of `readings` go: after a clean first quarter (at least
/// [`CLEAN_READINGS`]), one every `spacing` readings (at least twice the longest anomaly
/// plus 50), a little jittered, cycling through `kinds`, each ending `margin` readings before
/// the stream does.
pub fn schedule(
    rng: &mut impl Rng,
    readings: u64,
    spacing: f64,
    kinds: &[(Anomaly, u64)],
    margin: u64,
) -> Vec<Injected> {
    let longest = kinds.iter().map(|(_, len)| *len).max().unwrap_or(1);
    let spacing = (spacing.round() as u64).max(2 * longest + 50);
    let mut at = CLEAN_READINGS.max(readings / 4);
    let mut out = Vec::new();
    for k in 0.. {
        let (kind, len) = kinds[k % kinds.len()];
        let jittered = at + rng.random_range(0..=spacing / 4);
        if jittered + len + margin > readings {
            break;
        }
        out.push(Injected { kind, at: jittered, len });
        at += spacing;
    }
    out
}

/// A sensor-like series: `level + scale × daily peak + hourly ripple + drift + AR(1) + noise`,
/// the seasonal parts and the drift following the timestamps (so a continued stream stays
/// continuous), plus the injected anomalies.
pub struct SensorSim {
    rng: ChaCha8Rng,
    level: f64,
    scale: f64,
    daily: Shape,
    /// Hour of the day (UTC) of the daily peak.
    peak_hour: f64,
    hourly_amplitude: f64,
    hourly_phase: f64,
    drift_amplitude: f64,
    drift_period_ms: f64,
    drift_phase: f64,
    ar_coefficient: f64,
    ar_sigma: f64,
    ar: f64,
    noise: f64,
    /// Sum of the level shifts so far.
    shift: f64,
    /// Typical standard deviation of the series, what spikes and shifts are measured in.
    sd: f64,
    pub anomalies: Vec<Injected>,
}

impl SensorSim {
    /// Stream `index` of `seed`, `readings` long, anomalies every `spacing` readings.
    pub fn new(seed: u64, index: u64, readings: u64, spacing: f64) -> SensorSim {
        let mut rng = stream_rng(seed, index);
        let level = 10f64.powf(rng.random_range(1.0..3.0));
        let scale = level * rng.random_range(0.05..0.25);
        let hourly_amplitude = scale * rng.random_range(0.05..0.2);
        let noise = scale * rng.random_range(0.02..0.06);
        let ar_coefficient = rng.random_range(0.8..0.95);
        let ar_sd = scale * rng.random_range(0.02..0.08);
        let kinds = [(Anomaly::Spike, 1), (Anomaly::LevelShift, 1), (Anomaly::Dropout, SENSOR_DROPOUT)];
        let anomalies = schedule(&mut rng, readings, spacing, &kinds, 5);
        SensorSim {
            level,
            scale,
            daily: Shape::Peak { width: rng.random_range(0.4..0.8) },
            peak_hour: rng.random_range(11.0..17.0),
            hourly_amplitude,
            hourly_phase: rng.random(),
            drift_amplitude: scale * rng.random_range(0.1..0.4),
            drift_period_ms: rng.random_range(5.0..20.0) * 86_400_000.0,
            drift_phase: rng.random(),
            ar_coefficient,
            ar_sigma: ar_sd * (1.0 - ar_coefficient * ar_coefficient).sqrt(),
            ar: 0.0,
            noise,
            shift: 0.0,
            // The peak shape spends most of the day low: about 0.5 of its amplitude.
            sd: (0.25 * scale * scale + 0.5 * hourly_amplitude * hourly_amplitude + ar_sd * ar_sd + noise * noise)
                .sqrt(),
            anomalies,
            rng,
        }
    }

    /// Reading `j`, at `ts` (Unix ms); readings are drawn in order.
    pub fn value(&mut self, j: u64, ts: i64) -> f64 {
        let ts = ts as f64;
        let day = ts / 86_400_000.0;
        let daily = self.daily.value(day - self.peak_hour / 24.0);
        let hourly = (2.0 * PI * (ts / 3_600_000.0 + self.hourly_phase)).sin();
        let drift = (2.0 * PI * (ts / self.drift_period_ms + self.drift_phase)).sin();
        self.ar = self.ar_coefficient * self.ar + self.ar_sigma * normal(&mut self.rng);
        let eps = normal(&mut self.rng);
        let mut v = self.level
            + self.scale * daily
            + self.hourly_amplitude * hourly
            + self.drift_amplitude * drift
            + self.ar
            + self.noise * eps;
        let mut dropout = false;
        for a in self.anomalies.iter().filter(|a| (a.at..a.at + a.len).contains(&j)) {
            match a.kind {
                Anomaly::Spike => v += sign(&mut self.rng) * self.rng.random_range(3.0..5.0) * self.sd,
                Anomaly::LevelShift => {
                    let direction = if self.shift != 0.0 { -self.shift.signum() } else { sign(&mut self.rng) };
                    self.shift += direction * self.rng.random_range(1.5..2.5) * self.sd;
                }
                Anomaly::Dropout => dropout = true,
                Anomaly::Ectopic => {}
            }
        }
        if dropout {
            0.0
        } else {
            v + self.shift
        }
    }
}

/// One heartbeat of an [`EcgSim`].
#[derive(Debug, Clone, Copy)]
struct Beat {
    /// Time of the R peak (s from the stream's start).
    r: f64,
    /// The RR interval before it (s), which stretches the QT interval.
    rr: f64,
    ectopic: bool,
}

/// A Gaussian bump of height `a` at `mu` with width `sigma`, at `x`.
fn bump(x: f64, a: f64, mu: f64, sigma: f64) -> f64 {
    let d = (x - mu) / sigma;
    a * (-0.5 * d * d).exp()
}

impl Beat {
    /// The beat's contribution (mV) at `dt` seconds from its R peak: P, Q, R, S and T waves
    /// as Gaussian bumps (as in McSharry et al.'s ECGSYN); an ectopic beat has no P wave, a
    /// wide biphasic QRS and a large T wave of the opposite sign.
    fn wave(&self, dt: f64) -> f64 {
        if dt.abs() > 0.7 {
            return 0.0;
        }
        if self.ectopic {
            bump(dt, -1.8, 0.0, 0.035) + bump(dt, 0.6, 0.08, 0.035) + bump(dt, 0.5, 0.36, 0.07)
        } else {
            let qt = 0.26 * self.rr.sqrt();
            bump(dt, 0.12, -0.16, 0.022)
                + bump(dt, -0.10, -0.028, 0.009)
                + bump(dt, 1.0, 0.0, 0.010)
                + bump(dt, -0.22, 0.028, 0.010)
                + bump(dt, 0.28, qt, 0.045)
        }
    }
}

/// An ECG-like series in millivolts at `hz` samples a second: beats at 60–85 per minute with
/// respiratory sinus arrhythmia and jitter, baseline wander and noise, plus the injected
/// anomalies. An ectopic beat is placed at the first beat due after its scheduled time (its
/// entry in `anomalies` is moved there).
pub struct EcgSim {
    rng: ChaCha8Rng,
    hz: f64,
    mean_rr: f64,
    gain: f64,
    phases: [f64; 3],
    noise: f64,
    beats: VecDeque<Beat>,
    /// R time of the last beat generated.
    last_r: f64,
    /// Indices into `anomalies` of the ectopic beats not yet placed, in order.
    pending_ectopic: VecDeque<usize>,
    pub anomalies: Vec<Injected>,
}

impl EcgSim {
    /// Stream `index` of `seed`, `readings` samples at `hz`, anomalies every `spacing` samples.
    pub fn new(seed: u64, index: u64, hz: f64, readings: u64, spacing: f64) -> EcgSim {
        let mut rng = stream_rng(seed, index);
        let second = hz.round() as u64;
        let kinds = [
            (Anomaly::Ectopic, (0.5 * hz).round() as u64),
            (Anomaly::Spike, 1),
            (Anomaly::Ectopic, (0.5 * hz).round() as u64),
            (Anomaly::Dropout, second),
        ];
        // The margin leaves room for the compensatory pause after an ectopic beat.
        let anomalies = schedule(&mut rng, readings, spacing, &kinds, 2 * second);
        let pending_ectopic = (0..anomalies.len()).filter(|&i| anomalies[i].kind == Anomaly::Ectopic).collect();
        let mean_rr = 60.0 / rng.random_range(60.0..85.0);
        EcgSim {
            hz,
            mean_rr,
            gain: rng.random_range(0.8..1.4),
            phases: [rng.random_range(0.0..2.0 * PI), rng.random_range(0.0..2.0 * PI), rng.random_range(0.0..2.0 * PI)],
            noise: rng.random_range(0.005..0.015),
            beats: VecDeque::new(),
            last_r: -rng.random_range(0.0..mean_rr),
            pending_ectopic,
            anomalies,
            rng,
        }
    }

    fn rr(&mut self, t: f64) -> f64 {
        // Breathing (0.25 Hz) modulates the heart rate by a few per cent.
        let breathing = 0.04 * (2.0 * PI * 0.25 * t + self.phases[0]).sin();
        self.mean_rr * (1.0 + breathing + 0.015 * normal(&mut self.rng))
    }

    fn push_beat(&mut self) {
        let rr = self.rr(self.last_r);
        let next = self.last_r + rr;
        if let Some(&k) = self.pending_ectopic.front() {
            if next * self.hz >= self.anomalies[k].at as f64 {
                // Premature by 40 %, then a full compensatory pause: the next normal beat
                // comes two RR intervals after the last one.
                let r = self.last_r + 0.6 * rr;
                self.beats.push_back(Beat { r, rr: 0.6 * rr, ectopic: true });
                let a = &mut self.anomalies[k];
                a.at = ((r - 0.12) * self.hz).max(0.0).round() as u64;
                self.pending_ectopic.pop_front();
                self.last_r += 2.0 * rr;
                self.beats.push_back(Beat { r: self.last_r, rr: 1.4 * rr, ectopic: false });
                return;
            }
        }
        self.beats.push_back(Beat { r: next, rr, ectopic: false });
        self.last_r = next;
    }

    /// Sample `j`; samples are drawn in order.
    pub fn value(&mut self, j: u64) -> f64 {
        let t = j as f64 / self.hz;
        // Beats are made 1.5 s ahead, so an ectopic beat is placed before any of its samples.
        while self.last_r < t + 1.5 {
            self.push_beat();
        }
        while self.beats.front().is_some_and(|b| b.r < t - 1.0) {
            self.beats.pop_front();
        }
        let wander =
            0.06 * (2.0 * PI * 0.2 * t + self.phases[1]).sin() + 0.03 * (2.0 * PI * 0.07 * t + self.phases[2]).sin();
        let heart: f64 = self.beats.iter().map(|b| b.wave(t - b.r)).sum();
        let mut v = self.gain * heart + wander + self.noise * normal(&mut self.rng);
        let mut dropout = false;
        for a in self.anomalies.iter().filter(|a| (a.at..a.at + a.len).contains(&j)) {
            match a.kind {
                Anomaly::Spike => v += sign(&mut self.rng) * self.rng.random_range(2.5..3.5),
                Anomaly::Dropout => dropout = true,
                Anomaly::LevelShift | Anomaly::Ectopic => {}
            }
        }
        if dropout {
            0.0
        } else {
            v
        }
    }
}

/// The generator of one stream.
enum Generator {
    Sensor(SensorSim),
    Ecg(EcgSim),
}

impl Generator {
    fn value(&mut self, j: u64, ts: i64) -> f64 {
        match self {
            Generator::Sensor(s) => s.value(j, ts),
            Generator::Ecg(e) => e.value(j),
        }
    }

    fn anomalies(&self) -> &[Injected] {
        match self {
            Generator::Sensor(s) => &s.anomalies,
            Generator::Ecg(e) => &e.anomalies,
        }
    }
}

/// One simulated stream and how far its posting has got.
struct SimStream {
    name: String,
    kind: Kind,
    /// Milliseconds between readings (not always whole).
    interval_ms: f64,
    readings: u64,
    /// Time of reading 0 (Unix ms).
    start_ms: i64,
    /// How far around an injected anomaly a server's event counts as catching it.
    tolerance_ms: i64,
    /// The stream held readings of an earlier run, and this one continues after them.
    continued: bool,
    generator: RefCell<Generator>,
    sent: Cell<u64>,
    flagged: Cell<u64>,
}

impl SimStream {
    fn ts(&self, j: u64) -> i64 {
        self.start_ms + (j as f64 * self.interval_ms).round() as i64
    }

    /// Posts readings `sent..readings`, as fast as the server takes them or paced by
    /// `speedup` from `began`.
    async fn run(&self, client: &Ingest, batch: u64, speedup: Option<f64>, began: Instant) -> Result<(), CliError> {
        while self.sent.get() < self.readings {
            let next = self.sent.get();
            let end = match speedup {
                None => self.readings.min(next + batch),
                Some(x) => {
                    // Readings whose simulated time has come: j × interval ≤ elapsed × x.
                    let simulated_ms = began.elapsed().as_secs_f64() * 1000.0 * x;
                    let due = (simulated_ms / self.interval_ms).floor() as u64 + 1;
                    if due <= next {
                        let wait_ms = next as f64 * self.interval_ms / x - began.elapsed().as_secs_f64() * 1000.0;
                        let wait = Duration::from_secs_f64(wait_ms.max(0.0) / 1000.0).max(PACED_POST_EVERY);
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                    due.min(self.readings).min(next + batch)
                }
            };
            let readings: Vec<(i64, f64)> = {
                let mut generator = self.generator.borrow_mut();
                (next..end).map(|j| (self.ts(j), generator.value(j, self.ts(j)))).collect()
            };
            let answer = client.post_readings(&self.name, &readings).await?;
            self.sent.set(end);
            self.flagged.set(self.flagged.get() + answer["anomalies"].as_array().map_or(0, |a| a.len() as u64));
            if speedup.is_some() {
                tokio::time::sleep(PACED_POST_EVERY).await;
            }
        }
        Ok(())
    }
}

fn parse_positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("{text:?} is not a positive number")),
    }
}

/// A rate: a positive number or a fraction `a/b`, at most 1000 a second.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate = match text.split_once('/') {
        Some((a, b)) => parse_positive(a.trim())? / parse_positive(b.trim())?,
        None => parse_positive(text)?,
    };
    if rate > 1000.0 {
        return Err(format!("{text:?}: at most 1000 readings a second (timestamps are milliseconds)"));
    }
    Ok(rate)
}

fn usage(message: String) -> CliError {
    CliError::Usage(anyhow!(message))
}

/// The streams of a run, before any look at the server.
fn plan(args: &SimulateArgs, now_ms: i64) -> Result<Vec<SimStream>, CliError> {
    let start = match &args.start {
        Some(text) => {
            let value = text.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(text.as_str()));
            Some(crate::api::wire::timestamp(&value).map_err(|e| usage(format!("--start: {e}")))?)
        }
        None => None,
    };
    let (sensor, ecg) = (args.kinds.contains(&Kind::Sensor), args.kinds.contains(&Kind::Ecg));
    let n = u64::from(args.streams);
    let ecg_count = match (sensor, ecg) {
        (true, true) if n >= 2 => (n / 5).max(1),
        (true, _) => 0,
        (false, _) => n,
    };
    let mut streams = Vec::new();
    for i in 0..n {
        let kind = if i < n - ecg_count { Kind::Sensor } else { Kind::Ecg };
        let number = if kind == Kind::Sensor { i + 1 } else { i - (n - ecg_count) + 1 };
        let name = format!("{}{}-{number}", args.prefix, kind.name());
        stream_name(&name).map_err(|e| usage(format!("--prefix: {e}")))?;
        let rate = match kind {
            Kind::Sensor => args.rate,
            Kind::Ecg => f64::from(args.ecg_hz),
        };
        let readings = match (args.readings, args.duration) {
            (Some(r), _) => r,
            (None, Some(s)) => (s * rate).ceil().max(1.0) as u64,
            (None, None) if kind == Kind::Sensor => DEFAULT_SENSOR_READINGS,
            (None, None) => (DEFAULT_ECG_SECONDS * rate).ceil() as u64,
        };
        if readings > 1_000_000_000 {
            return Err(usage(format!("{name}: {readings} readings is too many (at most 1,000,000,000)")));
        }
        let spacing = match (args.anomaly_every, kind) {
            (Some(s), _) => s * rate,
            (None, Kind::Sensor) => DEFAULT_SENSOR_SPACING,
            (None, Kind::Ecg) => DEFAULT_ECG_SPACING_S * rate,
        };
        let interval_ms = 1000.0 / rate;
        let span_ms = (readings - 1) as f64 * interval_ms;
        // The last reading lands now: at once when unpaced, at the end of the run when paced.
        let lag = args.speedup.map_or(1.0, |x| 1.0 - 1.0 / x.max(1.0));
        let start_ms = start.unwrap_or(now_ms - (span_ms * lag).round() as i64);
        let (generator, tolerance_ms) = match kind {
            Kind::Sensor => {
                let sim = SensorSim::new(args.seed, i, readings, spacing);
                (Generator::Sensor(sim), (10.0 * interval_ms).round() as i64)
            }
            Kind::Ecg => {
                let sim = EcgSim::new(args.seed, 1_000_000 + i, rate, readings, spacing);
                (Generator::Ecg(sim), 250.max(interval_ms.round() as i64))
            }
        };
        streams.push(SimStream {
            name,
            kind,
            interval_ms,
            readings,
            start_ms,
            tolerance_ms,
            continued: false,
            generator: RefCell::new(generator),
            sent: Cell::new(0),
            flagged: Cell::new(0),
        });
    }
    Ok(streams)
}

pub fn run(args: SimulateArgs) -> Result<(), CliError> {
    let client = Ingest::new(&args.server)?;
    let mut streams = plan(&args, crate::storage::now_ms())?;
    let json_out = args.server.json;
    runtime()?.block_on(async move {
        if args.start.is_none() {
            continue_after_earlier_runs(&client, &mut streams).await?;
        }
        if !json_out {
            describe(&args, &client, &streams);
        }
        let total: u64 = streams.iter().map(|s| s.readings).sum();
        let began = Instant::now();
        let batch = u64::from(args.batch);
        let sending = futures::future::try_join_all(streams.iter().map(|s| s.run(&client, batch, args.speedup, began)));
        let mut progress = Progress::new(Some(total));
        let counts = || {
            (streams.iter().map(|s| s.sent.get()).sum::<u64>(), streams.iter().map(|s| s.flagged.get()).sum::<u64>())
        };
        let show = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let (sent, flagged) = counts();
                progress.show(sent, flagged);
            }
        };
        let interrupted = tokio::select! {
            result = sending => { result?; false }
            _ = show => unreachable!("the progress loop never ends"),
            _ = tokio::signal::ctrl_c() => true,
        };
        let (sent, flagged) = counts();
        progress.finish(sent, flagged);
        if interrupted && !json_out {
            println!("interrupted: a summary of what was sent");
        }
        summarise(&client, &streams, json_out, interrupted).await
    })
}

/// Without `--start`, a stream that already holds readings at or after its planned start
/// (an earlier run) continues after its last reading, keeping its spacing.
async fn continue_after_earlier_runs(client: &Ingest, streams: &mut [SimStream]) -> Result<(), CliError> {
    for s in streams.iter_mut() {
        let last = match client.get(&format!("/v1/streams/{}", s.name)).await {
            Ok(status) => status.and_then(|v| v["last_ts"].as_str().and_then(parse_rfc3339)),
            // No read scope: post as planned (the server says if that conflicts).
            Err(CliError::Usage(_)) => None,
            Err(e) => return Err(e),
        };
        if let Some(last) = last.filter(|last| *last >= s.start_ms) {
            s.start_ms = last + s.interval_ms.ceil() as i64;
            s.continued = true;
        }
    }
    Ok(())
}

fn parse_rfc3339(text: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_millis())
}

/// One line per kind: what is about to be sent.
fn describe(args: &SimulateArgs, client: &Ingest, streams: &[SimStream]) {
    let pace = match args.speedup {
        Some(x) => format!("at {x}x real time"),
        None => "as fast as the server takes them".to_string(),
    };
    println!("simulating on {} ({pace}):", client.base);
    for kind in [Kind::Sensor, Kind::Ecg] {
        let of_kind: Vec<&SimStream> = streams.iter().filter(|s| s.kind == kind).collect();
        let Some(first) = of_kind.first() else { continue };
        let names = match &of_kind[..] {
            [only] => only.name.clone(),
            [first, .., last] => format!("{}..{}", first.name, last.name),
            [] => unreachable!("not empty"),
        };
        let every = match kind {
            Kind::Sensor => format!("one every {:.3} s", first.interval_ms / 1000.0),
            Kind::Ecg => format!("{:.0} Hz", 1000.0 / first.interval_ms),
        };
        let injected: usize = of_kind.iter().map(|s| s.generator.borrow().anomalies().len()).sum();
        println!(
            "  {names}: {} readings each ({every}) from {}, {injected} {} injected",
            first.readings,
            format_ts(first.start_ms),
            if injected == 1 { "anomaly" } else { "anomalies" },
        );
    }
    let now = crate::storage::now_ms();
    for s in streams.iter().filter(|s| s.continued) {
        let end = s.ts(s.readings - 1);
        let future = if end > now + 60_000 { ", into the future (--prefix starts fresh streams)" } else { "" };
        println!("  {} continues after its earlier readings, up to {}{future}", s.name, format_ts(end));
    }
}

/// Matches the injected anomalies with the server's events and prints the table (or JSON).
async fn summarise(client: &Ingest, streams: &[SimStream], json_out: bool, interrupted: bool) -> Result<(), CliError> {
    let mut report = Vec::new();
    let mut rows = Vec::new();
    let mut unreadable = None;
    for s in streams {
        let sent = s.sent.get();
        let injected: Vec<Injected> =
            s.generator.borrow().anomalies().iter().filter(|a| a.at < sent).copied().collect();
        let events = match client.anomalies(&s.name, s.start_ms).await {
            Ok(events) => events,
            // A key without the read scope posts but cannot look: say so, list what was sent.
            Err(CliError::Usage(e)) => {
                unreadable = Some(e.to_string());
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        let spans: Vec<(i64, i64, i64)> = events
            .iter()
            .filter_map(|e| {
                let start = e["start"].as_str().and_then(parse_rfc3339)?;
                let end = e["end"].as_str().and_then(parse_rfc3339)?;
                Some((start, end, e["id"].as_i64().unwrap_or(0)))
            })
            .collect();
        let mut used = vec![false; spans.len()];
        let mut items = Vec::new();
        let mut by_kind: Vec<(Anomaly, usize, usize)> = Vec::new();
        for a in &injected {
            let from = s.ts(a.at) - s.tolerance_ms;
            let to = s.ts(a.at + a.len - 1) + s.tolerance_ms;
            let hits: Vec<usize> = (0..spans.len()).filter(|&i| spans[i].0 <= to && spans[i].1 >= from).collect();
            for &i in &hits {
                used[i] = true;
            }
            match by_kind.iter_mut().find(|(k, _, _)| *k == a.kind) {
                Some(entry) => {
                    entry.1 += 1;
                    entry.2 += usize::from(!hits.is_empty());
                }
                None => by_kind.push((a.kind, 1, usize::from(!hits.is_empty()))),
            }
            items.push(json!({
                "kind": a.kind.name(),
                "start": format_ts(s.ts(a.at)),
                "end": format_ts(s.ts(a.at + a.len - 1)),
                "flagged": !hits.is_empty(),
                "events": hits.iter().map(|&i| spans[i].2).collect::<Vec<_>>(),
            }));
        }
        let caught = items.iter().filter(|i| i["flagged"] == true).count();
        let other = used.iter().filter(|u| !**u).count();
        let kinds = by_kind.iter().map(|(k, n, c)| format!("{} {c}/{n}", k.name())).collect::<Vec<_>>().join(", ");
        rows.push(vec![
            s.name.clone(),
            s.kind.name().to_string(),
            sent.to_string(),
            injected.len().to_string(),
            caught.to_string(),
            spans.len().to_string(),
            other.to_string(),
            kinds,
        ]);
        report.push(json!({
            "stream": s.name,
            "kind": s.kind.name(),
            "readings": sent,
            "start": format_ts(s.start_ms),
            "end": if sent > 0 { Value::from(format_ts(s.ts(sent - 1))) } else { Value::Null },
            "flagged_readings": s.flagged.get(),
            "injected": items,
            "events": spans.len(),
            "other_events": other,
        }));
    }
    if json_out {
        let out = json!({ "server": client.base, "interrupted": interrupted, "streams": report });
        println!("{out}");
        return Ok(());
    }
    print_table(&["STREAM", "KIND", "READINGS", "INJECTED", "FLAGGED", "EVENTS", "OTHER", "FLAGGED BY KIND"], &rows);
    if let Some(why) = unreadable {
        println!("(the server's events could not be read: {why})");
    }
    println!("INJECTED anomalies, FLAGGED: those with a server event near them, OTHER: events near none.");
    println!("See them at {}/ or {}/v1/anomalies", client.base, client.base);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_numbers_or_fractions_up_to_1000_a_second() {
        assert_eq!(parse_rate("1/60"), Ok(1.0 / 60.0));
        assert_eq!(parse_rate("2.5"), Ok(2.5));
        for bad in ["0", "-1", "1/0", "abc", "2000", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn anomalies_start_after_a_clean_quarter_and_keep_their_distance() {
        let mut rng = stream_rng(1, 0);
        let kinds = [(Anomaly::Spike, 1), (Anomaly::Dropout, 20)];
        let plan = schedule(&mut rng, 2000, 150.0, &kinds, 5);
        assert!(plan.len() >= 8, "{plan:?}");
        assert!(plan[0].at >= 500);
        assert!(plan.windows(2).all(|w| w[1].at >= w[0].at + w[0].len + 50));
        assert!(plan.iter().all(|a| a.at + a.len + 5 <= 2000));
        assert_eq!((plan[0].kind, plan[1].kind), (Anomaly::Spike, Anomaly::Dropout));
        assert!(schedule(&mut rng, 260, 150.0, &kinds, 5).is_empty());
    }

    #[test]
    fn a_sensor_spike_stands_out_and_a_dropout_reads_zero() {
        for seed in 0..10 {
            let mut sim = SensorSim::new(seed, 0, 1000, 150.0);
            let values: Vec<f64> = (0..1000).map(|j| sim.value(j, 1_767_225_600_000 + 60_000 * j as i64)).collect();
            let spike = sim.anomalies.iter().find(|a| a.kind == Anomaly::Spike).expect("a spike");
            let j = spike.at as usize;
            let jump = (values[j] - values[j - 1]).abs().min((values[j] - values[j + 1]).abs());
            let steps: Vec<f64> = values[1..200].iter().zip(&values[..199]).map(|(a, b)| (a - b).abs()).collect();
            let largest = steps.iter().cloned().fold(0.0, f64::max);
            assert!(jump > 3.0 * largest, "seed {seed}: spike {jump} vs steps up to {largest}");
            let dropout = sim.anomalies.iter().find(|a| a.kind == Anomaly::Dropout).expect("a dropout");
            assert!(values[dropout.at as usize..(dropout.at + dropout.len) as usize].iter().all(|v| *v == 0.0));
            assert_ne!(values[dropout.at as usize - 1], 0.0, "seed {seed}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_series() {
        let run = || {
            let mut sim = EcgSim::new(3, 7, 360.0, 5000, 1800.0);
            ((0..5000).map(|j| sim.value(j)).collect::<Vec<f64>>(), sim.anomalies)
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn ecg_beats_recur_and_an_ectopic_beat_is_wide_and_inverted() {
        let hz = 360.0;
        let mut sim = EcgSim::new(1, 0, hz, 30 * 360, 5.0 * hz);
        let values: Vec<f64> = (0..30 * 360).map(|j| sim.value(j)).collect();
        // R peaks: local maxima above 0.5 mV.
        let peaks = (1..values.len() - 1)
            .filter(|&i| values[i] > 0.5 && values[i] >= values[i - 1] && values[i] > values[i + 1])
            .count();
        assert!((25..=50).contains(&peaks), "{peaks} beats in 30 s");
        let ectopic = sim.anomalies.iter().filter(|a| a.kind == Anomaly::Ectopic).collect::<Vec<_>>();
        assert!(!ectopic.is_empty(), "{:?}", sim.anomalies);
        for a in ectopic {
            let window = &values[a.at as usize..(a.at + a.len) as usize];
            let lowest = window.iter().cloned().fold(f64::INFINITY, f64::min);
            assert!(lowest < -0.8, "an ectopic beat dips deep: {lowest}");
        }
    }
}
