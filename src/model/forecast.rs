//! Fitting a next-step forecaster end to end: chronological split, normaliser, windows,
//! [`fit`](super::train::fit), held-out RMSE and the model card. Either on one series with
//! a fitted normaliser ([`train_forecaster`]), or on a corpus of series each normalised by
//! its own statistics ([`train_forecaster_on_corpus`], how the default model is made).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use tch::{Device, Kind, Tensor};

use super::checkpoint::{ModelCard, Normaliser, TrainingSummary};
use super::config::{HeadConfig, NetworkConfig};
use super::network::{Network, Output};
use super::series::{forecast_windows, Series};
use super::train::{fit, CancelToken, Dataset, EpochProgress, FitReport, Targets, TrainConfig};
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
    /// Random shifts and scalings of the normalised training windows (none by default).
    pub augmentation: Option<Augmentation>,
}

/// Moves and stretches a share of the (normalised) training windows, inputs and targets
/// alike, by a random affine map `z ↦ a·z + b` drawn once per window from the training
/// seed. A stream in the service is normalised by its *running* statistics, so after a
/// drift, a level shift or during its first readings the network sees values well outside
/// the ±2 a series normalised by its own statistics mostly spans; this teaches it to forecast
/// relative to the recent values there too. Validation windows are never augmented.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Share of the training windows that are augmented, in `[0, 1]`.
    pub fraction: f64,
    /// Standard deviation of the shift `b` (normalised units).
    pub shift: f64,
    /// Standard deviation of `ln a`.
    pub log_scale: f64,
}

impl Augmentation {
    fn validate(&self) -> Result<(), ModelError> {
        let ok = |x: f64| x.is_finite() && x >= 0.0;
        if !(ok(self.fraction) && self.fraction <= 1.0 && ok(self.shift) && ok(self.log_scale) && self.log_scale <= 3.0)
        {
            return Err(ModelError::InvalidConfig(
                "augmentation needs a fraction in [0, 1], a shift ≥ 0 and a log-scale in [0, 3]".into(),
            ));
        }
        Ok(())
    }
}

impl ForecastData {
    /// Defaults for a window of `window` steps: windows every quarter window, 20 % held out.
    pub fn new(window: usize) -> ForecastData {
        ForecastData { window, stride: (window / 4).max(1), validation_fraction: 0.2, augmentation: None }
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
        self.augmentation.as_ref().map_or(Ok(()), Augmentation::validate)
    }
}

/// A trained forecaster and its card (which holds the training summary).
#[derive(Debug)]
pub struct TrainedForecaster {
    pub network: Network,
    pub card: ModelCard,
}

/// Trains a forecaster of shape `config` on `series`. The validation part is the last
/// `validation_fraction` of the rows; the normaliser is fitted on the rest and stored in the
/// card, and the card's `val_rmse` is in the data's units.
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
    check_forecaster(&config, series.channels)?;
    let (train_part, val_part) = split(series, data)?;
    let normaliser = train_part.fit_normaliser();
    let parts = vec![(normalise(&train_part, &normaliser), normalise(&val_part, &normaliser))];
    let (network, report) = fit_parts(&config, &parts, data, train_config, device, cancel, on_epoch)?;
    let val_rmse = one_step_rmse(&network, &normaliser, &val_part)?;
    let card = card(config, normaliser, source, command, data, train_config, &parts, report, val_rmse);
    Ok(TrainedForecaster { network, card })
}

/// Trains one forecaster of shape `config` on many series (a corpus), the way the shipped
/// default model is trained: each series is normalised by its own statistics (fitted on its
/// training part), as the service normalises each stream by its own running statistics, so
/// the card's normaliser is the identity (mean 0, std 1 per channel). Training windows are
/// cut from every series; the validation part is the tail of each series. The card's
/// `val_rmse` is in normalised units, pooled over every series' validation part (each run
/// as one continuous stream), and its row counts are totals over the corpus.
///
/// Every series needs [`ForecastData::min_rows`] rows and `config.input_size` channels.
/// With one series this trains the same network as [`train_forecaster`] (only the card
/// differs), and the same seed gives the same weights on the CPU.
#[allow(clippy::too_many_arguments)]
pub fn train_forecaster_on_corpus(
    config: NetworkConfig,
    corpus: &[Series],
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
    if corpus.is_empty() {
        return Err(ModelError::Data("the corpus has no series".into()));
    }
    let mut parts = Vec::with_capacity(corpus.len());
    for (i, series) in corpus.iter().enumerate() {
        let in_series = |e: ModelError| match e {
            ModelError::Data(m) => ModelError::Data(format!("series {i}: {m}")),
            ModelError::InvalidConfig(m) => ModelError::InvalidConfig(format!("series {i}: {m}")),
            other => other,
        };
        check_forecaster(&config, series.channels).map_err(in_series)?;
        let (train_part, val_part) = split(series, data).map_err(in_series)?;
        let own = train_part.fit_normaliser();
        parts.push((normalise(&train_part, &own), normalise(&val_part, &own)));
    }
    let (network, report) = fit_parts(&config, &parts, data, train_config, device, cancel, on_epoch)?;
    let identity = identity(config.input_size);
    let mut sq_sum = 0.0;
    let mut count = 0usize;
    for (_, val_part) in &parts {
        let means = forecast_means(&network, &identity, val_part)?;
        sq_sum += means.iter().zip(&val_part.values[val_part.channels..]).map(|(m, a)| (m - a) * (m - a)).sum::<f64>();
        count += means.len();
    }
    let val_rmse = (sq_sum / count as f64).sqrt();
    let card = card(config, identity, source, command, data, train_config, &parts, report, val_rmse);
    Ok(TrainedForecaster { network, card })
}

/// Fails unless `config` is a forecaster whose head, input and the data all have `channels`
/// channels.
fn check_forecaster(config: &NetworkConfig, channels: usize) -> Result<(), ModelError> {
    match config.head {
        HeadConfig::Gaussian { channels: c } if c == config.input_size && c == channels => Ok(()),
        _ => Err(ModelError::InvalidConfig(format!(
            "a forecaster needs a Gaussian head with as many channels as its input ({}) and the series ({})",
            config.input_size, channels
        ))),
    }
}

/// Splits `series` chronologically into its training part and its validation tail.
fn split(series: &Series, data: &ForecastData) -> Result<(Series, Series), ModelError> {
    series.check()?;
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
    Ok((series.slice(0, split), series.slice(split, series.len())))
}

/// The normaliser that changes nothing: mean 0, std 1 per channel.
fn identity(channels: usize) -> Normaliser {
    Normaliser { mean: vec![0.0; channels], std: vec![1.0; channels] }
}

/// `series` in `norm`'s normalised units.
fn normalise(series: &Series, norm: &Normaliser) -> Series {
    let channels = series.channels;
    let values = series.values.iter().enumerate().map(|(i, v)| norm.apply(i % channels, *v)).collect();
    Series { channels, values }
}

/// Builds a network from `train_config.seed` and fits it on the windows of every
/// (normalised) training part, early-stopping on the windows of the validation parts.
fn fit_parts(
    config: &NetworkConfig,
    parts: &[(Series, Series)],
    data: &ForecastData,
    train_config: &TrainConfig,
    device: Device,
    cancel: &CancelToken,
    on_epoch: impl FnMut(&EpochProgress),
) -> Result<(Network, FitReport), ModelError> {
    let mut network = Network::new(config.clone(), device, train_config.seed)?;
    let kind = network.kind();
    let mut train_set = windows(parts.iter().map(|p| &p.0), data.window, data.stride, kind, device)?;
    if let Some(augmentation) = &data.augmentation {
        augment(&mut train_set, augmentation, train_config.seed)?;
    }
    let val_set = windows(parts.iter().map(|p| &p.1), data.window, data.window, kind, device)?;
    let report = fit(&mut network, &train_set, &val_set, train_config, cancel, on_epoch)?;
    Ok((network, report))
}

/// The forecast windows of every (normalised) series, in order, as one dataset.
fn windows<'a>(
    parts: impl Iterator<Item = &'a Series>,
    window: usize,
    stride: usize,
    kind: Kind,
    device: Device,
) -> Result<Dataset, ModelError> {
    let mut sets = Vec::new();
    for series in parts {
        let identity = identity(series.channels);
        sets.push(forecast_windows(&series.to_tensor(&identity, kind, device), window, stride)?);
    }
    if sets.len() == 1 {
        return Ok(sets.remove(0));
    }
    let mut inputs = Vec::with_capacity(sets.len());
    let mut targets = Vec::with_capacity(sets.len());
    for set in sets {
        inputs.push(set.inputs);
        match set.targets {
            Targets::Forecast(t) => targets.push(t),
            Targets::Classes(_) => return Err(ModelError::Shape("forecast windows came with class targets".into())),
        }
    }
    Ok(Dataset { inputs: Tensor::cat(&inputs, 0), targets: Targets::Forecast(Tensor::cat(&targets, 0)) })
}

/// Applies `augmentation` to the forecast windows of `set`, drawing from `seed`.
fn augment(set: &mut Dataset, augmentation: &Augmentation, seed: u64) -> Result<(), ModelError> {
    let Targets::Forecast(targets) = &set.targets else {
        return Err(ModelError::Shape("only forecast windows can be augmented".into()));
    };
    let size = set.inputs.size();
    let (n, channels) = (size[0] as usize, size[2] as usize);
    // A generator of its own (seeded apart from initialisation and shuffling), so turning
    // augmentation on or off changes nothing else.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x6175_676d);
    let mut scales = Vec::with_capacity(n * channels);
    let mut shifts = Vec::with_capacity(n * channels);
    for _ in 0..n * channels {
        let (a, b) = if rng.random_bool(augmentation.fraction) {
            let z: (f64, f64) = (StandardNormal.sample(&mut rng), StandardNormal.sample(&mut rng));
            ((augmentation.log_scale * z.0).exp(), augmentation.shift * z.1)
        } else {
            (1.0, 0.0)
        };
        scales.push(a);
        shifts.push(b);
    }
    let shape = [n as i64, 1, channels as i64];
    let (kind, device) = (set.inputs.kind(), set.inputs.device());
    let scales = Tensor::from_slice(&scales).reshape(shape).to_kind(kind).to_device(device);
    let shifts = Tensor::from_slice(&shifts).reshape(shape).to_kind(kind).to_device(device);
    let targets = targets * &scales + &shifts;
    set.inputs = &set.inputs * &scales + &shifts;
    set.targets = Targets::Forecast(targets);
    Ok(())
}

/// The model card of a trained forecaster.
#[allow(clippy::too_many_arguments)]
fn card(
    config: NetworkConfig,
    normaliser: Normaliser,
    source: &str,
    command: &str,
    data: &ForecastData,
    train_config: &TrainConfig,
    parts: &[(Series, Series)],
    report: FitReport,
    val_rmse: f64,
) -> ModelCard {
    let mut card = ModelCard::new(config, normaliser, command.to_string());
    card.training = Some(TrainingSummary {
        source: source.to_string(),
        train_rows: parts.iter().map(|p| p.0.len()).sum(),
        val_rows: parts.iter().map(|p| p.1.len()).sum(),
        window: data.window,
        seed: train_config.seed,
        epochs_run: report.epochs_run,
        best_epoch: report.best_epoch,
        best_val_loss: report.best_val_loss,
        val_rmse: Some(val_rmse),
        duration_s: report.duration.as_secs_f64(),
        losses: report.losses,
    });
    card
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
