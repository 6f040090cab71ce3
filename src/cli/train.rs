//! `tsad train`: fit a forecaster to a CSV column (`--csv`), or a generic forecaster to a
//! corpus of synthetic series (`--synthetic`, how `models/default/` is made; see
//! docs/MODELS.md for the command that reproduces it bit-for-bit).
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::{ArgGroup, Args, ValueEnum};
use tch::Device;

use super::CliError;
use crate::import::read_csv_column;
use crate::model::forecast::{
    train_forecaster, train_forecaster_on_corpus, Augmentation, ForecastData, TrainedForecaster,
};
use crate::model::series::Series;
use crate::model::{Architecture, CancelToken, EpochProgress, ModelError, NetworkConfig, TrainConfig, Usage};
use crate::synthetic::generate_corpus;

/// The most values (series × rows) `--synthetic` generates.
const MAX_SYNTHETIC_VALUES: usize = 50_000_000;

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("data").required(true).args(["csv", "synthetic"])))]
pub struct TrainArgs {
    /// CSV file with a header row (or use --synthetic).
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Column to learn; default: the only column, or the one named `value`.
    #[arg(long, value_name = "NAME", conflicts_with = "synthetic")]
    column: Option<String>,
    /// Train a generic forecaster on a corpus of synthetic series (src/synthetic.rs), each
    /// normalised by its own statistics, instead of on a CSV file.
    #[arg(long)]
    synthetic: bool,
    /// Synthetic series to generate.
    #[arg(long, value_name = "N", default_value_t = 128, conflicts_with = "csv",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    series: u32,
    /// Rows per synthetic series (the tail of each is its validation part).
    #[arg(long, value_name = "N", default_value_t = 2000, conflicts_with = "csv")]
    rows: usize,
    /// Seed of the synthetic corpus (independent of --seed).
    #[arg(long, value_name = "N", default_value_t = 0, conflicts_with = "csv")]
    data_seed: u64,
    /// Recurrent cell.
    #[arg(long, value_name = "rnn|lstm|gru", default_value = "lstm")]
    architecture: Architecture,
    /// Units per recurrent layer.
    #[arg(long, value_name = "N", default_value_t = 64)]
    hidden: usize,
    /// Stacked recurrent layers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    layers: usize,
    /// Forecast the change from the last reading instead of the level.
    #[arg(long)]
    residual: bool,
    /// Truncated-BPTT window τ (steps per training sequence).
    #[arg(long, value_name = "N", default_value_t = 64)]
    window: usize,
    /// Rows between the starts of consecutive training windows (default: a quarter window).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    stride: Option<u32>,
    /// Maximum epochs (training stops earlier when validation stops improving).
    #[arg(long, value_name = "N", default_value_t = 30)]
    epochs: usize,
    /// Output model directory, e.g. models/<name>/<version>.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Windows per optimiser step.
    #[arg(long, value_name = "N", default_value_t = 32)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, value_name = "RATE", default_value_t = 5e-3)]
    learning_rate: f64,
    /// Epochs without validation improvement before stopping.
    #[arg(long, value_name = "N", default_value_t = 6)]
    patience: usize,
    /// Seed for initialisation and shuffling (same seed, same weights on CPU).
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,
    /// Fraction of the series' tail held out for validation.
    #[arg(long, value_name = "FRACTION", default_value_t = 0.2)]
    validation_fraction: f64,
    /// Share of the training windows to shift and scale at random (0: none), so the network
    /// also learns to forecast values far from the normalised series' mean (docs/MODELS.md).
    #[arg(long, value_name = "FRACTION", default_value_t = 0.0)]
    augment: f64,
    /// Standard deviation of an augmented window's shift, in normalised units.
    #[arg(long, value_name = "SIGMA", default_value_t = 2.0)]
    augment_shift: f64,
    /// Standard deviation of the natural log of an augmented window's scale factor.
    #[arg(long, value_name = "SIGMA", default_value_t = 0.5)]
    augment_log_scale: f64,
    /// Stop after the epoch that exceeds this many seconds.
    #[arg(long, value_name = "SECONDS")]
    max_seconds: Option<f64>,
    /// Where to train: the first CUDA device when there is one (auto), or the named one.
    /// Bit-for-bit reproducibility holds on the CPU.
    #[arg(long, value_name = "auto|cpu|cuda", default_value = "auto")]
    device: DeviceChoice,
    /// Threads each batch is split over, each running its share of the windows with one
    /// libtorch thread (data parallel) [default: CPU cores]. On the CPU the same seed and
    /// thread count give bit-for-bit the same weights.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
}

/// The `--device` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceChoice {
    Auto,
    Cpu,
    Cuda,
}

/// What the network learns from.
enum TrainingData {
    Csv(Series, PathBuf),
    Synthetic(Vec<Series>),
}

pub fn run(args: TrainArgs) -> Result<(), CliError> {
    let usage = |e: ModelError| CliError::Usage(anyhow!(e));
    let mut network = NetworkConfig::forecaster(args.architecture, args.hidden, args.layers);
    network.input_size = 1;
    network.residual = args.residual;
    network.validate(Usage::Streaming).map_err(usage)?;
    let max_duration = match args.max_seconds {
        Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
        Some(s) => return Err(CliError::Usage(anyhow!("--max-seconds must be a positive number, got {s}"))),
        None => None,
    };
    let train_config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        patience: args.patience,
        seed: args.seed,
        max_duration,
        threads: args.threads.map_or_else(crate::config::cpu_cores, usize::from),
        ..TrainConfig::default()
    };
    train_config.validate().map_err(usage)?;
    let mut data = ForecastData::new(args.window);
    data.validation_fraction = args.validation_fraction;
    if let Some(stride) = args.stride {
        data.stride = stride as usize;
    }
    if args.augment != 0.0 {
        data.augmentation =
            Some(Augmentation { fraction: args.augment, shift: args.augment_shift, log_scale: args.augment_log_scale });
    }
    let device = match args.device {
        DeviceChoice::Auto => crate::model::default_device(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda if tch::Cuda::is_available() => Device::Cuda(0),
        DeviceChoice::Cuda => return Err(CliError::Usage(anyhow!("--device cuda: libtorch sees no CUDA device"))),
    };
    let training_data = match &args.csv {
        Some(csv) => {
            let values = read_csv_column(csv, args.column.as_deref()).map_err(|e| CliError::Usage(anyhow!(e)))?;
            TrainingData::Csv(Series::univariate(values), csv.clone())
        }
        None => {
            let series = args.series as usize;
            if series.saturating_mul(args.rows) > MAX_SYNTHETIC_VALUES {
                return Err(CliError::Usage(anyhow!(
                    "--series × --rows must be at most {MAX_SYNTHETIC_VALUES}, got {series} × {}",
                    args.rows
                )));
            }
            let corpus = generate_corpus(args.data_seed, series, args.rows);
            TrainingData::Synthetic(corpus.into_iter().map(Series::univariate).collect())
        }
    };
    // The command as a user types it, whatever path the binary was run from.
    let command: String =
        std::iter::once("tsad".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
    let what = match &training_data {
        TrainingData::Csv(series, csv) => format!("{} rows of {}", series.len(), csv.display()),
        TrainingData::Synthetic(corpus) => {
            format!("{} synthetic series × {} rows (data seed {})", corpus.len(), args.rows, args.data_seed)
        }
    };
    println!(
        "training {} hidden={} layers={} window={} on {what} ({device:?}, threads: {})",
        args.architecture.as_str(),
        args.hidden,
        args.layers,
        args.window,
        train_config.threads
    );
    let progress = |p: &EpochProgress| {
        println!(
            "{} epoch {:>3}/{}  train {:>9.5}  val {:>9.5}  grad-norm {:>8.4}  {:>6.1}s",
            crate::eval::progress_bar(p.epoch, p.epochs),
            p.epoch,
            p.epochs,
            p.train_loss,
            p.val_loss,
            p.grad_norm,
            p.elapsed.as_secs_f64()
        )
    };
    let cancel = CancelToken::new();
    let trained: Result<TrainedForecaster, ModelError> = match &training_data {
        TrainingData::Csv(series, csv) => train_forecaster(
            network,
            series,
            &data,
            &train_config,
            device,
            &csv.display().to_string(),
            &command,
            &cancel,
            progress,
        ),
        TrainingData::Synthetic(corpus) => train_forecaster_on_corpus(
            network,
            corpus,
            &data,
            &train_config,
            device,
            &format!(
                "synthetic: {} series × {} rows from tsad::synthetic::generate_corpus, data seed {}, \
                 each normalised by its own statistics",
                corpus.len(),
                args.rows,
                args.data_seed
            ),
            &command,
            &cancel,
            progress,
        ),
    };
    let trained = trained.map_err(|e| match e {
        ModelError::InvalidConfig(_) | ModelError::Data(_) => CliError::Usage(anyhow!(e)),
        other => CliError::Runtime(anyhow!(other)),
    })?;
    trained.network.save(&args.out, &trained.card).map_err(|e| CliError::Runtime(anyhow!(e)))?;
    let summary = trained.card.training.as_ref().expect("train_forecaster fills the summary");
    let units = match training_data {
        TrainingData::Csv(..) => "",
        TrainingData::Synthetic(_) => " (normalised units)",
    };
    println!(
        "saved {}: best epoch {} of {}, validation one-step RMSE {:.5}{units}, {:.1}s",
        args.out.display(),
        summary.best_epoch,
        summary.epochs_run,
        summary.val_rmse.unwrap_or(f64::NAN),
        summary.duration_s
    );
    Ok(())
}
