//! Fitting a next-step forecaster to a series, end to end: chronological split, normaliser,
//! windows, [`fit`](super::train::fit), held-out RMSE and the model card.
use tch::{Device, Kind, Tensor};

use super::checkpoint::{ModelCard, Normaliser, TrainingSummary};
use super::config::{HeadConfig, NetworkConfig};
use super::network::{Network, Output};
use super::series::{forecast_windows, Series};
use super::train::{fit, CancelToken, EpochProgress, TrainConfig};
use super::ModelError;

/// How a series becomes training data.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastData {
    /// Truncated-BPTT window τ.
    pub window: usize,
    /// Rows between the starts of consecutive training windows.
    pub stride: usize,
    /// Fraction of the series (its tail) held out for validation and early stopping.
    pub validation_fraction: f64,
}

impl ForecastData {
    /// Defaults for a window of `window` steps: windows every quarter window, 20 % held out.
    pub fn new(window: usize) -> ForecastData {
        ForecastData { window, stride: (window / 4).max(1), validation_fraction: 0.2 }
    }

    /// The fewest rows that give at least one training and one validation window.
    pub fn min_rows(&self) -> usize {
        let need = (self.window + 1) as f64;
        let by_val = (need / self.validation_fraction).ceil();
        let by_train = (need / (1.0 - self.validation_fraction)).ceil();
        by_val.max(by_train) as usize + 1
    }

    fn validate(&self) -> Result<(), ModelError> {
        if self.window < 2 || self.window > 100_000 {
            return Err(ModelError::InvalidConfig("window must be in 2..=100000".into()));
        }
        if self.stride == 0 {
            return Err(ModelError::InvalidConfig("stride must be at least 1".into()));
        }
        if !(self.validation_fraction > 0.0 && self.validation_fraction < 0.9) {
            return Err(ModelError::InvalidConfig("validation_fraction must be in (0, 0.9)".into()));
        }
        Ok(())
    }
}

/// A trained forecaster and its card (which holds the training summary).
#[derive(Debug)]
pub struct TrainedForecaster {
    pub network: Network,
    pub card: ModelCard,
}

/// Trains a forecaster of shape `config` on `series`. The validation part is the last
/// `validation_fraction` of the rows; the normaliser is fitted on the rest.
#[allow(clippy::too_many_arguments)]
pub fn train_forecaster(
    config: NetworkConfig,
    series: &Series,
    data: &ForecastData,
    train_config: &TrainConfig,
    device: Device,
    source: &str,
    command: &str,
    cancel: &CancelToken,
    on_epoch: impl FnMut(&EpochProgress),
) -> Result<TrainedForecaster, ModelError> {
    data.validate()?;
    train_config.validate()?;
    series.check()?;
    match config.head {
        HeadConfig::Gaussian { channels } if channels == config.input_size && channels == series.channels => {}
        _ => {
            return Err(ModelError::InvalidConfig(format!(
                "a forecaster needs a Gaussian head with as many channels as its input ({}) and the series ({})",
                config.input_size, series.channels
            )))
        }
    }
    if series.len() < data.min_rows() {
        return Err(ModelError::Data(format!(
            "{} rows are too few for window {} (need at least {})",
            series.len(),
            data.window,
            data.min_rows()
        )));
    }
    let val_rows = ((series.len() as f64) * data.validation_fraction).round() as usize;
    let split = series.len() - val_rows;
    let (train_part, val_part) = (series.slice(0, split), series.slice(split, series.len()));
    let normaliser = train_part.fit_normaliser();
    let mut network = Network::new(config.clone(), device, train_config.seed)?;
    let kind = network.kind();
    let train_set = forecast_windows(&train_part.to_tensor(&normaliser, kind, device), data.window, data.stride)?;
    let val_set = forecast_windows(&val_part.to_tensor(&normaliser, kind, device), data.window, data.window)?;
    let report = fit(&mut network, &train_set, &val_set, train_config, cancel, on_epoch)?;
    let val_rmse = one_step_rmse(&network, &normaliser, &val_part)?;
    let mut card = ModelCard::new(config, normaliser, command.to_string());
    card.training = Some(TrainingSummary {
        source: source.to_string(),
        train_rows: split,
        val_rows,
        window: data.window,
        seed: train_config.seed,
        epochs_run: report.epochs_run,
        best_epoch: report.best_epoch,
        best_val_loss: report.best_val_loss,
        val_rmse: Some(val_rmse),
        duration_s: report.duration.as_secs_f64(),
        losses: report.losses,
    });
    Ok(TrainedForecaster { network, card })
}

/// One-step forecast means for `series`, in the data's units: row `t` of the result is the
/// forecast of row `t + 1`, made after reading rows `0..=t` as one continuous stream (the
/// way the service runs). Returns `[len − 1, channels]` values, row-major.
pub fn forecast_means(network: &Network, norm: &Normaliser, series: &Series) -> Result<Vec<f64>, ModelError> {
    series.check()?;
    if series.len() < 2 {
        return Err(ModelError::Data("need at least two rows to forecast".into()));
    }
    let xs = series.slice(0, series.len() - 1).to_tensor(norm, network.kind(), network.device()).unsqueeze(0);
    let mean = tch::no_grad(|| -> Result<Tensor, ModelError> {
        match network.seq(&xs, None)?.0 {
            Output::Gaussian { mean, .. } => Ok(mean),
            Output::Logits(_) => Err(ModelError::InvalidConfig("a classifier does not forecast".into())),
        }
    })?;
    let values = Vec::<f64>::try_from(mean.to_kind(Kind::Double).reshape([-1]))?;
    let channels = series.channels;
    Ok(values.iter().enumerate().map(|(i, y)| norm.invert(i % channels, *y)).collect())
}

/// Root-mean-square error of one-step forecasts over `series` (all channels), in the data's
/// units.
pub fn one_step_rmse(network: &Network, norm: &Normaliser, series: &Series) -> Result<f64, ModelError> {
    let means = forecast_means(network, norm, series)?;
    let actual = &series.values[series.channels..];
    let sq: f64 = means.iter().zip(actual).map(|(m, a)| (m - a) * (m - a)).sum();
    Ok((sq / means.len() as f64).sqrt())
}
