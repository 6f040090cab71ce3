//! Model files (DESIGN.md §7): `weights.safetensors` (PyTorch parameter names) and
//! `model.json` (everything needed to rebuild and use the network) in one directory,
//! conventionally `models/<name>/<version>/`.
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Device;

use super::config::{NetworkConfig, Usage};
use super::network::Network;
use super::ModelError;

/// File name of the weights inside a model directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// File name of the description inside a model directory.
pub const CARD_FILE: &str = "model.json";
/// Version of the `model.json` layout this code writes and reads.
pub const CARD_FORMAT: u32 = 1;

/// Per-channel affine normalisation: `(x − mean) / std` in, `mean + std · y` out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normaliser {
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
}

impl Normaliser {
    /// Normalises value `v` of channel `c`.
    pub fn apply(&self, c: usize, v: f64) -> f64 {
        (v - self.mean[c]) / self.std[c]
    }

    /// Maps a normalised value of channel `c` back to the data's units.
    pub fn invert(&self, c: usize, y: f64) -> f64 {
        self.mean[c] + self.std[c] * y
    }
}

/// One epoch's numbers, as reported to the progress callback and kept in `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochLoss {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// Gradient norm before clipping, averaged over the epoch's batches.
    pub grad_norm: f64,
}

/// What a model was trained on and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSummary {
    /// Where the data came from (a file path, stream names, …).
    pub source: String,
    /// Rows used for training and for validation.
    pub train_rows: usize,
    pub val_rows: usize,
    /// Truncated-BPTT window τ.
    pub window: usize,
    pub seed: u64,
    pub epochs_run: usize,
    /// The epoch whose weights were kept (lowest validation loss).
    pub best_epoch: usize,
    pub best_val_loss: f64,
    /// One-step RMSE of the forecast mean on the validation rows, in the data's units.
    pub val_rmse: Option<f64>,
    pub duration_s: f64,
    pub losses: Vec<EpochLoss>,
}

/// The contents of `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelCard {
    /// Layout version of this file.
    pub format: u32,
    pub network: NetworkConfig,
    /// Normalisation applied to inputs (and inverted on forecasts).
    pub normaliser: Normaliser,
    pub training: Option<TrainingSummary>,
    /// RFC 3339 UTC time the model was written.
    pub created_at: String,
    /// The command line or request that produced the model.
    pub command: String,
}

impl ModelCard {
    /// A card for `network` created now.
    pub fn new(network: NetworkConfig, normaliser: Normaliser, command: String) -> ModelCard {
        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| "unknown".into());
        ModelCard { format: CARD_FORMAT, network, normaliser, training: None, created_at, command }
    }
}

fn checkpoint_error(path: &Path, reason: impl ToString) -> ModelError {
    ModelError::Checkpoint { path: path.display().to_string(), reason: reason.to_string() }
}

impl Network {
    /// Writes `weights.safetensors` and `model.json` into `dir` (created if missing).
    pub fn save(&self, dir: &Path, card: &ModelCard) -> Result<(), ModelError> {
        if &card.network != self.config() {
            return Err(checkpoint_error(dir, "the card describes a different network"));
        }
        std::fs::create_dir_all(dir).map_err(|e| checkpoint_error(dir, e))?;
        let weights = dir.join(WEIGHTS_FILE);
        self.var_store().save(&weights).map_err(|e| checkpoint_error(&weights, e))?;
        let json = serde_json::to_string_pretty(card).map_err(|e| checkpoint_error(dir, e))?;
        let card_path = dir.join(CARD_FILE);
        std::fs::write(&card_path, json + "\n").map_err(|e| checkpoint_error(&card_path, e))
    }

    /// Reads a model directory written by [`Network::save`] (or by PyTorch with the same
    /// names) onto `device`.
    pub fn load(dir: &Path, device: Device) -> Result<(Network, ModelCard), ModelError> {
        let card_path = dir.join(CARD_FILE);
        let text = std::fs::read_to_string(&card_path).map_err(|e| checkpoint_error(&card_path, e))?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| checkpoint_error(&card_path, e))?;
        if card.format != CARD_FORMAT {
            return Err(checkpoint_error(&card_path, format!("format {} is not {CARD_FORMAT}", card.format)));
        }
        card.network.validate(Usage::Offline).map_err(|e| checkpoint_error(&card_path, e))?;
        let channels = card.network.input_size;
        if card.normaliser.mean.len() != channels
            || card.normaliser.std.len() != channels
            || card.normaliser.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || card.normaliser.mean.iter().any(|m| !m.is_finite())
        {
            return Err(checkpoint_error(&card_path, "normaliser does not fit the input size or is not finite"));
        }
        let mut network = Network::new(card.network.clone(), device, 0)?;
        let weights = dir.join(WEIGHTS_FILE);
        let stored = tch::Tensor::read_safetensors(&weights).map_err(|e| checkpoint_error(&weights, e))?;
        if stored.first().is_some_and(|(_, t)| t.kind() == tch::Kind::Double) {
            network.to_double();
        }
        let expected = network.var_store().variables();
        for (name, tensor) in &stored {
            match expected.get(name) {
                Some(var) if var.size() == tensor.size() => {}
                Some(var) => {
                    return Err(checkpoint_error(
                        &weights,
                        format!("{name} is {:?}, the network needs {:?}", tensor.size(), var.size()),
                    ))
                }
                None => return Err(checkpoint_error(&weights, format!("unexpected tensor {name}"))),
            }
        }
        network.var_store_mut().load(&weights).map_err(|e| checkpoint_error(&weights, e))?;
        Ok((network, card))
    }
}
