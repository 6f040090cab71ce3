//! `tsad train`: fit a forecaster to a CSV column.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;

use super::CliError;
use crate::import::read_csv_column;
use crate::model::forecast::{train_forecaster, ForecastData};
use crate::model::series::Series;
use crate::model::{Architecture, CancelToken, ModelError, NetworkConfig, TrainConfig, Usage};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// CSV file with a header row.
    #[arg(long, value_name = "FILE")]
    csv: PathBuf,
    /// Column to learn; default: the only column, or the one named `value`.
    #[arg(long, value_name = "NAME")]
    column: Option<String>,
    /// Recurrent cell.
    #[arg(long, value_name = "rnn|lstm|gru", default_value = "lstm")]
    architecture: Architecture,
    /// Units per recurrent layer.
    #[arg(long, value_name = "N", default_value_t = 64)]
    hidden: usize,
    /// Stacked recurrent layers.
    #[arg(long, value_name = "N", default_value_t = 1)]
    layers: usize,
    /// Truncated-BPTT window τ (steps per training sequence).
    #[arg(long, value_name = "N", default_value_t = 64)]
    window: usize,
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
    /// Stop after the epoch that exceeds this many seconds.
    #[arg(long, value_name = "SECONDS")]
    max_seconds: Option<f64>,
}

pub fn run(args: TrainArgs) -> Result<(), CliError> {
    let usage = |e: ModelError| CliError::Usage(anyhow!(e));
    let mut network = NetworkConfig::forecaster(args.architecture, args.hidden, args.layers);
    network.input_size = 1;
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
        ..TrainConfig::default()
    };
    train_config.validate().map_err(usage)?;
    let mut data = ForecastData::new(args.window);
    data.validation_fraction = args.validation_fraction;
    let values = read_csv_column(&args.csv, args.column.as_deref()).map_err(|e| CliError::Usage(anyhow!(e)))?;
    let series = Series::univariate(values);
    let device = crate::model::default_device();
    let command: Vec<String> = std::env::args().collect();
    println!(
        "training {} hidden={} layers={} window={} on {} rows of {} ({device:?})",
        args.architecture.as_str(),
        args.hidden,
        args.layers,
        args.window,
        series.len(),
        args.csv.display()
    );
    let trained = train_forecaster(
        network,
        &series,
        &data,
        &train_config,
        device,
        &args.csv.display().to_string(),
        &command.join(" "),
        &CancelToken::new(),
        |p| {
            println!(
                "epoch {:>3}/{}  train {:>9.5}  val {:>9.5}  grad-norm {:>8.4}  {:>6.1}s",
                p.epoch,
                p.epochs,
                p.train_loss,
                p.val_loss,
                p.grad_norm,
                p.elapsed.as_secs_f64()
            )
        },
    )
    .map_err(|e| match e {
        ModelError::InvalidConfig(_) | ModelError::Data(_) => CliError::Usage(anyhow!(e)),
        other => CliError::Runtime(anyhow!(other)),
    })?;
    trained.network.save(&args.out, &trained.card).map_err(|e| CliError::Runtime(anyhow!(e)))?;
    let summary = trained.card.training.as_ref().expect("train_forecaster fills the summary");
    println!(
        "saved {}: best epoch {} of {}, validation one-step RMSE {:.5}, {:.1}s",
        args.out.display(),
        summary.best_epoch,
        summary.epochs_run,
        summary.val_rmse.unwrap_or(f64::NAN),
        summary.duration_s
    );
    Ok(())
}
