//! What a network is made of, and which combinations are valid.
//!
//! A [`NetworkConfig`] is plain data (it is stored in `model.json`); [`NetworkConfig::validate`]
//! is the single place that decides whether a configuration can be built, and for which use.
use serde::{Deserialize, Serialize};

use super::ModelError;

/// Largest hidden size, dense width, channel or class count we accept. Far above anything
/// useful for a streaming detector; it keeps a typo from allocating gigabytes.
pub const MAX_WIDTH: usize = 4096;
/// Deepest recurrent stack we accept.
pub const MAX_LAYERS: usize = 16;

/// The recurrent cell (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    /// Simple (Elman) RNN: `s_t = act(W s_{t-1} + U x_t + b)`.
    Rnn,
    /// Long short-term memory, PyTorch's formulation (tanh candidate).
    Lstm,
    /// Gated recurrent unit, PyTorch's formulation.
    Gru,
}

impl Architecture {
    /// Number of gate blocks stacked in `weight_ih`/`weight_hh` (PyTorch layout).
    pub fn gates(self) -> usize {
        match self {
            Architecture::Rnn => 1,
            Architecture::Lstm => 4,
            Architecture::Gru => 3,
        }
    }

    /// The name used in flags, JSON and PyTorch (`rnn`, `lstm`, `gru`).
    pub fn as_str(self) -> &'static str {
        match self {
            Architecture::Rnn => "rnn",
            Architecture::Lstm => "lstm",
            Architecture::Gru => "gru",
        }
    }
}

impl std::str::FromStr for Architecture {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rnn" => Ok(Architecture::Rnn),
            "lstm" => Ok(Architecture::Lstm),
            "gru" => Ok(Architecture::Gru),
            other => {
                Err(ModelError::InvalidConfig(format!("architecture must be one of rnn, lstm, gru, not {other:?}")))
            }
        }
    }
}

/// Activation of the Simple RNN's state update. LSTM and GRU have their gates fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The standard choice, and PyTorch's `nn.RNN` default.
    #[default]
    Tanh,
    /// No non-linearity: the lecture's worked example. Unstable for long sequences.
    Identity,
}

/// Whether a classifier emits one verdict per step or one per sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassifierMode {
    /// One class distribution per step (the synchronised case, lecture's shape e).
    ManyToMany,
    /// One class distribution per sequence, from its last step (lecture's shape c).
    ManyToOne,
}

/// What the network predicts from the recurrent features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HeadConfig {
    /// Next-step forecast: a mean and a log-variance per channel.
    Gaussian { channels: usize },
    /// Softmax over `classes` (the head returns logits; probabilities via softmax).
    Classifier { classes: usize, mode: ClassifierMode },
}

/// Where a network will run. Streaming is causal, one step at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// Per-reading inference with carried state (`step`).
    Streaming,
    /// Whole sequences at once (`seq`): batch analysis, training, sequence classification.
    Offline,
}

/// The shape of a network. Stored verbatim in `model.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub architecture: Architecture,
    /// Only meaningful for [`Architecture::Rnn`]; LSTM and GRU require the default.
    #[serde(default)]
    pub activation: Activation,
    /// Features per step fed to the network.
    pub input_size: usize,
    /// Width of every recurrent layer (per direction).
    pub hidden: usize,
    /// Number of stacked recurrent layers.
    pub layers: usize,
    /// Run a second recurrent stack backwards in time (offline only).
    #[serde(default)]
    pub bidirectional: bool,
    /// Widths of dense tanh layers applied to each step before the recurrent core.
    #[serde(default)]
    pub pre: Vec<usize>,
    /// Widths of dense tanh layers applied to each step after the recurrent core.
    #[serde(default)]
    pub post: Vec<usize>,
    pub head: HeadConfig,
    /// Gaussian heads only: the forecast mean is the step's input plus the head's output,
    /// so the network learns the change from the last reading rather than the level (it
    /// cannot drift back to the mean of its training data when a series leaves it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub residual: bool,
}

impl NetworkConfig {
    /// A univariate next-step forecaster: the service's default shape.
    pub fn forecaster(architecture: Architecture, hidden: usize, layers: usize) -> Self {
        NetworkConfig {
            architecture,
            activation: Activation::Tanh,
            input_size: 1,
            hidden,
            layers,
            bidirectional: false,
            pre: Vec::new(),
            post: Vec::new(),
            head: HeadConfig::Gaussian { channels: 1 },
            residual: false,
        }
    }

    /// Number of directions of the recurrent core (1 or 2).
    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Width of the features the recurrent core emits per step.
    pub fn core_output(&self) -> usize {
        self.hidden * self.directions()
    }

    /// Width of the features the head sees per step.
    pub fn head_input(&self) -> usize {
        self.post.last().copied().unwrap_or_else(|| self.core_output())
    }

    /// Width of the recurrent core's input.
    pub fn core_input(&self) -> usize {
        self.pre.last().copied().unwrap_or(self.input_size)
    }

    /// Width of the head's output per step (2 × channels, or the class count).
    pub fn head_output(&self) -> usize {
        match self.head {
            HeadConfig::Gaussian { channels } => 2 * channels,
            HeadConfig::Classifier { classes, .. } => classes,
        }
    }

    /// Checks every rule a buildable network must satisfy for `usage`, naming the first
    /// field that breaks one.
    pub fn validate(&self, usage: Usage) -> Result<(), ModelError> {
        let invalid = |msg: String| Err(ModelError::InvalidConfig(msg));
        let width_ok = |w: usize| (1..=MAX_WIDTH).contains(&w);
        if !width_ok(self.input_size) {
            return invalid(format!("input_size must be in 1..={MAX_WIDTH}, got {}", self.input_size));
        }
        if !width_ok(self.hidden) {
            return invalid(format!("hidden must be in 1..={MAX_WIDTH}, got {}", self.hidden));
        }
        if !(1..=MAX_LAYERS).contains(&self.layers) {
            return invalid(format!("layers must be in 1..={MAX_LAYERS}, got {}", self.layers));
        }
        for (name, widths) in [("pre", &self.pre), ("post", &self.post)] {
            if widths.len() > MAX_LAYERS {
                return invalid(format!("{name} may have at most {MAX_LAYERS} dense layers"));
            }
            if let Some(w) = widths.iter().find(|w| !width_ok(**w)) {
                return invalid(format!("{name} layer widths must be in 1..={MAX_WIDTH}, got {w}"));
            }
        }
        if self.activation != Activation::Tanh && self.architecture != Architecture::Rnn {
            return invalid(format!(
                "activation {:?} applies only to the rnn architecture; {} has fixed gates",
                self.activation,
                self.architecture.as_str()
            ));
        }
        match self.head {
            HeadConfig::Gaussian { channels } => {
                if !width_ok(channels) {
                    return invalid(format!("head channels must be in 1..={MAX_WIDTH}, got {channels}"));
                }
                if self.residual && channels != self.input_size {
                    return invalid(format!(
                        "residual needs one head channel per input: head channels {channels}, input_size {}",
                        self.input_size
                    ));
                }
                if self.bidirectional {
                    // The backward direction would see the value it is asked to forecast.
                    return invalid(
                        "a bidirectional network cannot forecast the next step (it sees the future)".into(),
                    );
                }
            }
            HeadConfig::Classifier { classes, .. } => {
                if self.residual {
                    return invalid("residual applies only to a Gaussian (forecasting) head".into());
                }
                if !(2..=MAX_WIDTH).contains(&classes) {
                    return invalid(format!("head classes must be in 2..={MAX_WIDTH}, got {classes}"));
                }
            }
        }
        if usage == Usage::Streaming {
            if self.bidirectional {
                return invalid("bidirectional networks need the whole sequence; they cannot run on a stream".into());
            }
            if let HeadConfig::Classifier { mode: ClassifierMode::ManyToOne, .. } = self.head {
                return invalid("a many-to-one classifier has no per-step output to stream".into());
            }
        }
        Ok(())
    }
}
