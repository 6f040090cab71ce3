//! Turning a numeric series into training windows for a next-step forecaster.
//!
//! Plain numbers in, tensors out: the normaliser is fitted on the training part only, and
//! the split is chronological (the validation part is the series' tail), so validation
//! measures forecasting of data the network has never seen.
use tch::{Device, Kind, Tensor};

use super::checkpoint::Normaliser;
use super::train::{Dataset, Targets};
use super::ModelError;

/// A multichannel series, row-major: `values[t * channels + c]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Number of values per time step.
    pub channels: usize,
    /// The values, one row per time step.
    pub values: Vec<f64>,
}

impl Series {
    /// A one-channel series.
    pub fn univariate(values: Vec<f64>) -> Series {
        Series { channels: 1, values }
    }

    /// Number of time steps.
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.channels).unwrap_or(0)
    }

    /// True when the series has no time steps.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows `start..end` as a new series.
    pub fn slice(&self, start: usize, end: usize) -> Series {
        Series { channels: self.channels, values: self.values[start * self.channels..end * self.channels].to_vec() }
    }

    /// Fails on an empty series, a ragged one, or any value that is NaN or infinite.
    pub fn check(&self) -> Result<(), ModelError> {
        if self.channels == 0 || !self.values.len().is_multiple_of(self.channels) {
            return Err(ModelError::Data(format!(
                "{} values do not form rows of {} channels",
                self.values.len(),
                self.channels
            )));
        }
        if let Some(i) = self.values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Data(format!(
                "value at row {} channel {} is not finite ({})",
                i / self.channels,
                i % self.channels,
                self.values[i]
            )));
        }
        Ok(())
    }

    /// Per-channel mean and standard deviation (a constant channel gets std 1).
    pub fn fit_normaliser(&self) -> Normaliser {
        let n = self.len().max(1) as f64;
        let mut mean = vec![0.0; self.channels];
        let mut var = vec![0.0; self.channels];
        for row in self.values.chunks(self.channels) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += v / n;
            }
        }
        for row in self.values.chunks(self.channels) {
            for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
                *s += (v - m) * (v - m) / n;
            }
        }
        let std = var.into_iter().map(|v| if v.sqrt() > 1e-12 { v.sqrt() } else { 1.0 }).collect();
        Normaliser { mean, std }
    }

    /// The series normalised by `norm`, as a `[time, channels]` tensor.
    pub fn to_tensor(&self, norm: &Normaliser, kind: Kind, device: Device) -> Tensor {
        let values: Vec<f64> = self
            .values
            .chunks(self.channels)
            .flat_map(|row| row.iter().enumerate().map(|(c, v)| norm.apply(c, *v)))
            .collect();
        Tensor::from_slice(&values).reshape([self.len() as i64, self.channels as i64]).to_kind(kind).to_device(device)
    }
}

/// Cuts a normalised `[time, channels]` tensor into next-step windows: inputs are rows
/// `s..s+window`, targets rows `s+1..s+window+1`, for `s` every `stride` rows.
pub fn forecast_windows(series: &Tensor, window: usize, stride: usize) -> Result<Dataset, ModelError> {
    let time = series.size()[0] as usize;
    if window == 0 || stride == 0 {
        return Err(ModelError::InvalidConfig("window and stride must be at least 1".into()));
    }
    if time < window + 1 {
        return Err(ModelError::Data(format!(
            "{time} rows are too few for one window of {window} (need at least {})",
            window + 1
        )));
    }
    let starts: Vec<i64> = (0..=time - window - 1).step_by(stride).map(|s| s as i64).collect();
    let inputs: Vec<Tensor> = starts.iter().map(|&s| series.narrow(0, s, window as i64)).collect();
    let targets: Vec<Tensor> = starts.iter().map(|&s| series.narrow(0, s + 1, window as i64)).collect();
    Ok(Dataset { inputs: Tensor::stack(&inputs, 0), targets: Targets::Forecast(Tensor::stack(&targets, 0)) })
}
