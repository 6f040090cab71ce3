//! Synthetic series, training on a corpus of them, and the shipped default model
//! (`models/default/1`): it loads, streams, and forecasts series it has never seen better
//! than the last value does.
//!
//! `cargo test --test it default_model -- --nocapture` prints the numbers docs/MODELS.md
//! quotes; the NAB part runs when the development data is there (`TSAD_DATA_DIR`, or
//! `../shared/data` next to the repository) and says so when it is not.
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tch::{Device, Kind, Tensor};
use tsad::model::forecast::{train_forecaster, train_forecaster_on_corpus, Augmentation, ForecastData};
use tsad::model::series::Series;
use tsad::model::{Architecture, CancelToken, HeadConfig, ModelError, Network, NetworkConfig, TrainConfig};
use tsad::synthetic::{generate_corpus, labelled_stream, labelled_stream_and_base, AnomalyKind, NOISE_BURST_ROWS};

/// The data seed of the fresh series the default model is measured on (it was trained on
/// seed 0).
const FRESH_SEED: u64 = 1001;

fn default_model_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/1")
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Lag-1 autocorrelation of the series' differences' complement: the share of the variance
/// a last-value forecast explains (1 − var(diff) / (2 var)).
fn smoothness(values: &[f64]) -> f64 {
    let (_, sd) = mean_std(values);
    let diffs: Vec<f64> = values.windows(2).map(|w| w[1] - w[0]).collect();
    let (_, dsd) = mean_std(&diffs);
    1.0 - dsd * dsd / (2.0 * sd * sd)
}

#[test]
fn the_generator_gives_the_same_series_for_the_same_seed() {
    let a = generate_corpus(7, 12, 500);
    let b = generate_corpus(7, 12, 500);
    let c = generate_corpus(8, 12, 500);
    assert_eq!(a, b);
    assert!(a.iter().zip(&c).all(|(x, y)| x != y), "another seed gives other series");
    // Series i does not depend on how many series or rows are drawn.
    let more = generate_corpus(7, 20, 800);
    for (short, long) in a.iter().zip(&more) {
        assert_eq!(short[..], long[..500]);
    }
}

#[test]
fn generated_series_are_finite_and_varied() {
    let corpus = generate_corpus(0, 200, 2000);
    assert_eq!(corpus.len(), 200);
    assert!(corpus.iter().all(|s| s.len() == 2000 && s.iter().all(|v| v.is_finite())));
    let stats: Vec<(f64, f64)> = corpus.iter().map(|s| mean_std(s)).collect();
    // Scales and levels span orders of magnitude.
    let sds: Vec<f64> = stats.iter().map(|s| s.1).collect();
    let (lo, hi) = (sds.iter().cloned().fold(f64::INFINITY, f64::min), sds.iter().cloned().fold(0.0, f64::max));
    assert!(hi / lo > 1e3, "standard deviations span {lo}..{hi}");
    // From nearly noiseless to mostly noise: how much a last-value forecast explains.
    let smooth: Vec<f64> = corpus.iter().map(|s| smoothness(s)).collect();
    assert!(smooth.iter().filter(|s| **s > 0.99).count() >= 20, "smooth series: {smooth:?}");
    assert!(smooth.iter().filter(|s| **s < 0.5).count() >= 20, "noisy series: {smooth:?}");
    // Step-like series hold their value for long stretches.
    let holding = corpus.iter().filter(|s| s.windows(2).filter(|w| w[0] == w[1]).count() > 1000).count();
    assert!(holding >= 5, "{holding} series hold their value for most rows");
    // Nothing is constant from start to end.
    assert!(sds.iter().all(|sd| *sd > 0.0));
}

#[test]
fn labelled_streams_mark_every_injected_anomaly_and_nothing_else() {
    let (base, values, labels) = labelled_stream_and_base(3, 3000);
    assert_eq!(labelled_stream(3, 3000), (values.clone(), labels.clone()), "the same seed gives the same stream");
    assert_ne!(labelled_stream(4, 3000).0, values);
    assert!(values.iter().all(|v| v.is_finite()));
    for kind in [AnomalyKind::Spike, AnomalyKind::LevelShift, AnomalyKind::NoiseBurst] {
        assert!(labels.iter().any(|(_, k)| *k == kind), "no {kind:?} in {labels:?}");
    }
    assert!(labels.windows(2).all(|w| w[0].0 + NOISE_BURST_ROWS < w[1].0), "{labels:?}");
    // What was injected, reading by reading: each label accounts for its own change, and
    // nothing changed anywhere else.
    let mut left: Vec<f64> = values.iter().zip(&base).map(|(v, b)| v - b).collect();
    let (_, sd) = mean_std(&base);
    for (at, kind) in &labels {
        match kind {
            AnomalyKind::Spike => {
                assert!(left[*at].abs() >= 4.0 * sd, "spike at {at}: {} (sd {sd})", left[*at]);
                left[*at] = 0.0;
            }
            AnomalyKind::LevelShift => {
                let by = left[*at];
                assert!(by.abs() >= 2.0 * sd, "shift at {at}: {by} (sd {sd})");
                left[*at..].iter_mut().for_each(|v| *v -= by);
            }
            AnomalyKind::NoiseBurst => {
                let burst = &mut left[*at..at + NOISE_BURST_ROWS];
                let (_, burst_sd) = mean_std(burst);
                assert!(burst_sd >= 0.5 * sd, "burst at {at}: sd {burst_sd} (sd {sd})");
                burst.iter_mut().for_each(|v| *v = 0.0);
            }
        }
    }
    let worst = left.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let magnitude = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(worst <= 1e-9 * magnitude, "changes nobody labelled: {worst}");
}

fn small_lstm() -> NetworkConfig {
    NetworkConfig::forecaster(Architecture::Lstm, 8, 1)
}

fn train_small(corpus: &[Series], seed: u64) -> tsad::model::forecast::TrainedForecaster {
    let mut data = ForecastData::new(20);
    data.augmentation = Some(Augmentation { fraction: 0.5, shift: 2.0, log_scale: 0.5 });
    let config = TrainConfig { epochs: 2, seed, ..TrainConfig::default() };
    train_forecaster_on_corpus(
        small_lstm(),
        corpus,
        &data,
        &config,
        Device::Cpu,
        "test corpus",
        "test",
        &CancelToken::new(),
        |_| {},
    )
    .expect("training succeeds")
}

fn weights_equal(a: &Network, b: &Network) -> bool {
    let (va, vb) = (a.var_store().variables(), b.var_store().variables());
    va.iter().all(|(name, t)| t.equal(&vb[name]))
}

#[test]
fn training_on_a_corpus_is_deterministic_and_normalises_each_series_by_itself() {
    let corpus: Vec<Series> = generate_corpus(5, 6, 400).into_iter().map(Series::univariate).collect();
    let a = train_small(&corpus, 1);
    let b = train_small(&corpus, 1);
    let c = train_small(&corpus, 2);
    assert!(weights_equal(&a.network, &b.network), "one seed, one set of weights");
    assert!(!weights_equal(&a.network, &c.network), "another seed, other weights");
    assert_eq!(a.card.normaliser.mean, vec![0.0]);
    assert_eq!(a.card.normaliser.std, vec![1.0]);
    let summary = a.card.training.as_ref().expect("summary");
    assert_eq!((summary.train_rows, summary.val_rows), (6 * 320, 6 * 80));
    assert!(summary.val_rmse.is_some_and(|r| r.is_finite() && r > 0.0 && r < 2.0), "{summary:?}");
    // A series in other units is the same series to the network.
    let mut rescaled = corpus.clone();
    rescaled[2].values.iter_mut().for_each(|v| *v = 5e6 + 1e3 * *v);
    let d = train_small(&rescaled, 1);
    let (va, vd) = (a.network.var_store().variables(), d.network.var_store().variables());
    for (name, t) in &va {
        let diff = (t - &vd[name]).abs().max().double_value(&[]);
        assert!(diff < 1e-3, "{name} moved by {diff}");
    }
}

#[test]
fn a_corpus_of_one_series_trains_the_network_train_forecaster_trains() {
    let series = Series::univariate(generate_corpus(2, 1, 500).remove(0));
    let config = TrainConfig { epochs: 2, seed: 3, ..TrainConfig::default() };
    let run_one = train_forecaster(
        small_lstm(),
        &series,
        &ForecastData::new(20),
        &config,
        Device::Cpu,
        "one",
        "test",
        &CancelToken::new(),
        |_| {},
    )
    .expect("trains");
    let run_corpus = train_forecaster_on_corpus(
        small_lstm(),
        std::slice::from_ref(&series),
        &ForecastData::new(20),
        &config,
        Device::Cpu,
        "one",
        "test",
        &CancelToken::new(),
        |_| {},
    )
    .expect("trains");
    assert!(weights_equal(&run_one.network, &run_corpus.network));
    assert_ne!(run_one.card.normaliser, run_corpus.card.normaliser, "only the card's normaliser differs");
}

#[test]
fn a_corpus_with_an_unusable_series_is_refused_naming_it() {
    let mut corpus: Vec<Series> = generate_corpus(1, 3, 400).into_iter().map(Series::univariate).collect();
    corpus[1].values.truncate(30);
    let run = |corpus: &[Series]| {
        train_forecaster_on_corpus(
            small_lstm(),
            corpus,
            &ForecastData::new(20),
            &TrainConfig::default(),
            Device::Cpu,
            "test",
            "test",
            &CancelToken::new(),
            |_| {},
        )
        .map(|_| ())
    };
    match run(&corpus) {
        Err(ModelError::Data(m)) => assert!(m.starts_with("series 1:") && m.contains("too few"), "{m}"),
        other => panic!("{other:?}"),
    }
    corpus[1] = Series::univariate(vec![f64::NAN; 400]);
    assert!(matches!(run(&corpus), Err(ModelError::Data(m)) if m.starts_with("series 1:")));
    assert!(matches!(run(&[]), Err(ModelError::Data(_))));
    let mut bad_augment = ForecastData::new(20);
    bad_augment.augmentation = Some(Augmentation { fraction: 1.5, shift: 1.0, log_scale: 0.1 });
    let result = train_forecaster_on_corpus(
        small_lstm(),
        &corpus[..1],
        &bad_augment,
        &TrainConfig::default(),
        Device::Cpu,
        "test",
        "test",
        &CancelToken::new(),
        |_| {},
    );
    assert!(matches!(result, Err(ModelError::InvalidConfig(_))));
}

/// One-step forecasts of `network` for `z` (already normalised), run as one stream: the
/// means and standard deviations of readings `1..len`.
fn forecasts(network: &Network, z: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let xs = Tensor::from_slice(&z[..z.len() - 1]).reshape([1, -1, 1]).to_kind(network.kind());
    let out = tch::no_grad(|| network.seq(&xs, None).expect("forecast").0);
    let values = |t: Tensor| Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).expect("values");
    match out {
        tsad::model::Output::Gaussian { mean, log_var } => (values(mean), values((log_var * 0.5).exp())),
        other => panic!("a forecaster gave {other:?}"),
    }
}

/// One-step errors on one series, in its own normalised units (its mean and standard
/// deviation: the units the model works in).
#[derive(Debug, Default)]
struct Errors {
    /// Squared errors of the model's forecast mean.
    model: f64,
    /// Squared errors of the last value.
    last_value: f64,
    /// Squared errors of the model when its inputs are normalised the way a stream is in the
    /// service: by the running mean and standard deviation of the readings so far.
    running: f64,
    /// Readings within the model's forecast mean ± 2 standard deviations.
    inside_band: usize,
    count: usize,
}

impl Errors {
    fn add(&mut self, other: &Errors) {
        self.model += other.model;
        self.last_value += other.last_value;
        self.running += other.running;
        self.inside_band += other.inside_band;
        self.count += other.count;
    }

    fn rmse(&self, sum: f64) -> f64 {
        (sum / self.count as f64).sqrt()
    }
}

fn errors(network: &Network, values: &[f64]) -> Errors {
    let (mean, sd) = mean_std(values);
    let sd = if sd > 1e-12 { sd } else { 1.0 };
    let z: Vec<f64> = values.iter().map(|v| (v - mean) / sd).collect();
    let (means, sds) = forecasts(network, &z);
    let mut e = Errors { count: means.len(), ..Errors::default() };
    for (t, (m, s)) in means.iter().zip(&sds).enumerate() {
        let (now, next) = (z[t], z[t + 1]);
        e.model += (m - next) * (m - next);
        e.last_value += (now - next) * (now - next);
        e.inside_band += usize::from((m - next).abs() <= 2.0 * s);
    }
    // Running statistics (Welford), including the reading being normalised.
    let (mut run_mean, mut m2) = (0.0, 0.0);
    let mut running = Vec::with_capacity(values.len());
    let mut inputs = Vec::with_capacity(values.len());
    for (i, v) in values.iter().enumerate() {
        let delta = v - run_mean;
        run_mean += delta / (i + 1) as f64;
        m2 += delta * (v - run_mean);
        let run_sd = (m2 / (i + 1) as f64).sqrt();
        let run_sd = if run_sd > 1e-12 * sd { run_sd } else { 1.0 };
        running.push((run_mean, run_sd));
        inputs.push((v - run_mean) / run_sd);
    }
    let (run_means, _) = forecasts(network, &inputs);
    for (t, m) in run_means.iter().enumerate() {
        let expected = running[t].0 + running[t].1 * m;
        e.running += ((expected - values[t + 1]) / sd).powi(2);
    }
    e
}

#[test]
fn the_default_model_loads_streams_and_forecasts_one_gaussian_channel() {
    let (network, card) = Network::load(&default_model_dir(), Device::Cpu).expect("models/default/1 loads");
    network.check_streamable().expect("the default model streams");
    let config = network.config();
    assert_eq!(config.head, HeadConfig::Gaussian { channels: 1 });
    assert_eq!((config.architecture, config.hidden, config.layers, config.input_size), (Architecture::Lstm, 64, 1, 1));
    assert_eq!((card.normaliser.mean.as_slice(), card.normaliser.std.as_slice()), (&[0.0][..], &[1.0][..]));
    let summary = card.training.expect("a training summary");
    assert_eq!(summary.window, 64);
    assert!(card.command.starts_with("tsad train --synthetic"), "{}", card.command);
    assert!(card.command.contains("--threads 1") && card.command.contains("--device cpu"), "{}", card.command);
}

#[test]
fn the_default_model_forecasts_fresh_synthetic_series_better_than_the_last_value() {
    let (network, _) = Network::load(&default_model_dir(), Device::Cpu).expect("models/default/1 loads");
    let corpus = generate_corpus(FRESH_SEED, 64, 2000);
    let (mut total, mut wins) = (Errors::default(), 0);
    for values in &corpus {
        let e = errors(&network, values);
        wins += usize::from(e.model < e.last_value);
        total.add(&e);
    }
    let (model, last_value) = (total.rmse(total.model), total.rmse(total.last_value));
    eprintln!(
        "default model on 64 fresh synthetic series × 2000 rows (data seed {FRESH_SEED}), normalised units:\n  \
         one-step RMSE {model:.4}, last value {last_value:.4}; better on {wins} of 64 series\n  \
         with a running normaliser: RMSE {:.4}\n  readings inside the forecast ± 2σ: {:.1} %",
        total.rmse(total.running),
        100.0 * total.inside_band as f64 / total.count as f64
    );
    assert!(model < 0.9 * last_value, "model {model} vs last value {last_value}");
    assert!(total.rmse(total.running) < 0.9 * last_value, "with a running normaliser");
    assert!(wins >= 40, "better on only {wins} of 64 series");
}

/// The development data directory, if it is there.
fn data_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("TSAD_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    dir.join("nab/data").is_dir().then_some(dir)
}

#[test]
fn the_default_model_forecasts_real_nab_series_better_than_the_last_value() {
    let Some(dir) = data_dir() else {
        eprintln!("skipped: no NAB data (set TSAD_DATA_DIR or put it in ../shared/data)");
        return;
    };
    let (network, _) = Network::load(&default_model_dir(), Device::Cpu).expect("models/default/1 loads");
    let files = [
        "realKnownCause/ambient_temperature_system_failure.csv",
        "realKnownCause/cpu_utilization_asg_misconfiguration.csv",
        "realKnownCause/ec2_request_latency_system_failure.csv",
        "realKnownCause/machine_temperature_system_failure.csv",
        "realKnownCause/nyc_taxi.csv",
        "realKnownCause/rogue_agent_key_hold.csv",
        "realKnownCause/rogue_agent_key_updown.csv",
        "realAdExchange/exchange-2_cpc_results.csv",
        "realAdExchange/exchange-3_cpm_results.csv",
        "realAdExchange/exchange-4_cpc_results.csv",
    ];
    let (mut wins, mut ratios) = (0, Vec::new());
    eprintln!("default model, one-step RMSE in each file's own normalised units (model / last value):");
    for file in files {
        let values = tsad::import::read_csv_column(&dir.join("nab/data").join(file), Some("value")).expect("csv");
        let e = errors(&network, &values);
        let (m, n) = (e.rmse(e.model), e.rmse(e.last_value));
        eprintln!("  {file:58} {m:.4} / {n:.4}  (running normaliser {:.4})", e.rmse(e.running));
        wins += usize::from(m < n);
        ratios.push(m / n);
    }
    let geo_mean = (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len() as f64).exp();
    eprintln!("  better on {wins} of {} files; geometric mean of model / last value {geo_mean:.3}", files.len());
    assert!(wins >= 8, "better than the last value on only {wins} files");
    assert!(geo_mean < 0.9, "{geo_mean}");
}

fn tsad(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tsad")).args(args).output().expect("tsad runs")
}

#[test]
fn train_needs_exactly_one_of_csv_and_synthetic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("a.csv");
    std::fs::write(&csv, "value\n1\n2\n").expect("csv written");
    let csv = csv.to_str().expect("utf-8 path");
    let out_dir = dir.path().join("out");
    let out = out_dir.to_str().expect("utf-8 path");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["train", "--out", out], "--csv"),
        (vec!["train", "--csv", csv, "--synthetic", "--out", out], "--synthetic"),
        (vec!["train", "--csv", csv, "--series", "4", "--out", out], "--series"),
        (vec!["train", "--series", "4", "--out", out], "--synthetic"),
        (vec!["train", "--synthetic", "--column", "value", "--out", out], "--column"),
        (vec!["train", "--synthetic", "--series", "0", "--out", out], "0"),
        (vec!["train", "--synthetic", "--rows", "50", "--out", out], "too few"),
        (vec!["train", "--synthetic", "--threads", "0", "--out", out], "--threads"),
        (vec!["train", "--synthetic", "--augment", "2", "--out", out], "augmentation"),
        (vec!["train", "--synthetic", "--device", "tpu", "--out", out], "tpu"),
    ];
    for (args, needle) in cases {
        let result = tsad(&args);
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?} should print one line: {stderr}");
        assert!(stderr.starts_with("error"), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?} should mention {needle}: {stderr}");
        assert!(!out_dir.exists(), "{args:?} wrote a model");
    }
}

#[test]
fn train_synthetic_twice_writes_byte_identical_weights() {
    let dir = tempfile::tempdir().expect("temp dir");
    let run = |name: &str| {
        let out_dir = dir.path().join(name);
        let out = tsad(&[
            "train",
            "--synthetic",
            "--series",
            "4",
            "--rows",
            "300",
            "--data-seed",
            "9",
            "--hidden",
            "6",
            "--window",
            "16",
            "--epochs",
            "2",
            "--augment",
            "0.5",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--out",
            out_dir.to_str().expect("utf-8 path"),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("4 synthetic series × 300 rows (data seed 9) (Cpu, threads: 1)"), "{stdout}");
        out_dir
    };
    let (a, b) = (run("a"), run("b"));
    let weights = |dir: &Path| std::fs::read(dir.join("weights.safetensors")).expect("weights written");
    assert_eq!(weights(&a), weights(&b));
    let (_, card) = Network::load(&a, Device::Cpu).expect("loads");
    assert_eq!(card.normaliser.std, vec![1.0]);
    assert!(card.command.starts_with("tsad train --synthetic --series 4"), "{}", card.command);
    let summary = card.training.expect("summary");
    assert!(
        summary.source.contains("4 series × 300 rows") && summary.source.contains("data seed 9"),
        "{}",
        summary.source
    );
    assert_eq!(summary.train_rows + summary.val_rows, 4 * 300);
}
