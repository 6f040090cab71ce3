//! Recurrent networks on libtorch (DESIGN.md §2): cells, stacked and bidirectional
//! networks, forecast and classifier heads, truncated-BPTT training and checkpoints.
//!
//! This module is the only place tensors exist. It knows nothing about streams, HTTP or
//! storage: callers hand it numbers and get numbers back.
pub mod checkpoint;
pub mod config;
pub mod forecast;
pub mod network;
pub mod series;
pub mod state;
pub mod train;

pub use checkpoint::{ModelCard, Normaliser, TrainingSummary};
pub use config::{Activation, Architecture, ClassifierMode, HeadConfig, NetworkConfig, Usage};
pub use network::{Network, Output};
pub use state::State;
pub use train::{CancelToken, Dataset, EpochProgress, FitReport, Targets, TrainConfig};

/// Errors of the model library. None of them is about HTTP; callers map them.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A network, head or training configuration that cannot be built or run.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A tensor, state or dataset of the wrong shape, kind or device.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Training data that cannot be used (too short, not finite, …).
    #[error("unusable data: {0}")]
    Data(String),
    /// Training stopped because its cancellation token fired.
    #[error("training cancelled")]
    Cancelled,
    /// Training diverged: the loss or gradient became NaN or infinite.
    #[error("training diverged at epoch {epoch}: loss is not finite")]
    Diverged { epoch: usize },
    /// A checkpoint that cannot be read or written.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    /// An error raised inside libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The device training and batched inference should use: the first CUDA device when
/// libtorch sees one, the CPU otherwise.
pub fn default_device() -> tch::Device {
    tch::Device::cuda_if_available()
}
