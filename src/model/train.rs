//! Training by truncated back-propagation through time (DESIGN.md §2).
//!
//! Every sample is a window of τ steps run from a zero state; the loss is averaged over the
//! window's steps (the lecture's sum, scaled by 1/τ so the learning rate does not depend
//! on τ). Adam updates the weights after the global gradient norm is clipped; the norm
//! before clipping is reported, since vanishing and exploding gradients show up there
//! first. The weights of the epoch with the lowest validation loss are kept, and training
//! stops early once that loss has not improved for `patience` epochs.
//!
//! On the CPU a fixed seed gives bit-identical weights: initialisation and shuffling use
//! our own seeded generator, never libtorch's global one.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Kind, Reduction, Tensor};

use super::checkpoint::EpochLoss;
use super::config::{ClassifierMode, HeadConfig};
use super::network::{Network, Output};
use super::ModelError;

/// Hyper-parameters of one training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Maximum number of passes over the training windows.
    pub epochs: usize,
    /// Windows per optimiser step.
    pub batch_size: usize,
    /// Adam's step size.
    pub learning_rate: f64,
    /// Global gradient-norm ceiling (clipping).
    pub clip_norm: f64,
    /// Stop after this many epochs without a better validation loss.
    pub patience: usize,
    /// Multiply the learning rate by this after ⌈patience/2⌉ epochs without improvement
    /// (1 disables the schedule).
    pub lr_decay: f64,
    /// Seed of initialisation and shuffling.
    pub seed: u64,
    /// Wall-clock budget; training stops after the epoch that exceeds it.
    pub max_duration: Option<Duration>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 30,
            batch_size: 32,
            learning_rate: 5e-3,
            clip_norm: 1.0,
            patience: 6,
            lr_decay: 0.5,
            seed: 0,
            max_duration: None,
        }
    }
}

impl TrainConfig {
    /// Fails on values that cannot train anything.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: &str| Err(ModelError::InvalidConfig(m.into()));
        if self.epochs == 0 || self.epochs > 100_000 {
            return bad("epochs must be in 1..=100000");
        }
        if self.batch_size == 0 || self.batch_size > 65_536 {
            return bad("batch_size must be in 1..=65536");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0 && self.learning_rate <= 1.0) {
            return bad("learning_rate must be in (0, 1]");
        }
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return bad("clip_norm must be a positive number");
        }
        if self.patience == 0 {
            return bad("patience must be at least 1");
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return bad("lr_decay must be in (0, 1]");
        }
        Ok(())
    }
}

/// What the network should learn to output for each input window.
#[derive(Debug)]
pub enum Targets {
    /// Next-step values `[n, time, channels]` for a Gaussian head.
    Forecast(Tensor),
    /// Class indices (`Int64`): `[n]` for many-to-one, `[n, time]` for many-to-many.
    Classes(Tensor),
}

/// Input windows `[n, time, input]` with their targets.
#[derive(Debug)]
pub struct Dataset {
    pub inputs: Tensor,
    pub targets: Targets,
}

impl Dataset {
    /// Number of windows.
    pub fn len(&self) -> usize {
        self.inputs.size()[0] as usize
    }

    /// True when there are no windows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn select(&self, idx: &Tensor) -> (Tensor, Tensor) {
        let targets = match &self.targets {
            Targets::Forecast(t) | Targets::Classes(t) => t.index_select(0, idx),
        };
        (self.inputs.index_select(0, idx), targets)
    }

    fn check_for(&self, network: &Network) -> Result<(), ModelError> {
        let cfg = network.config();
        let size = self.inputs.size();
        let n = size.first().copied().unwrap_or(0);
        if size.len() != 3 || n == 0 || size[2] != cfg.input_size as i64 {
            return Err(ModelError::Shape(format!("inputs must be [n ≥ 1, time, {}], got {size:?}", cfg.input_size)));
        }
        let (time, ok) = (
            size[1],
            match (&self.targets, cfg.head) {
                (Targets::Forecast(t), HeadConfig::Gaussian { channels }) => t.size() == [n, size[1], channels as i64],
                (Targets::Classes(t), HeadConfig::Classifier { mode: ClassifierMode::ManyToOne, .. }) => {
                    t.size() == [n] && t.kind() == Kind::Int64
                }
                (Targets::Classes(t), HeadConfig::Classifier { mode: ClassifierMode::ManyToMany, .. }) => {
                    t.size() == [n, size[1]] && t.kind() == Kind::Int64
                }
                _ => false,
            },
        );
        if !ok || time < 1 {
            return Err(ModelError::Shape("targets do not match the network's head and the inputs".into()));
        }
        if let Targets::Classes(t) = &self.targets {
            let classes = cfg.head_output() as i64;
            let (lo, hi) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
            if lo < 0 || hi >= classes {
                return Err(ModelError::Data(format!("class labels must be in 0..{classes}, got {lo}..={hi}")));
            }
        }
        Ok(())
    }
}

/// Reported after every epoch.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochProgress {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    /// Mean global gradient norm (before clipping) over the epoch's batches.
    pub grad_norm: f64,
    pub elapsed: Duration,
}

/// A cooperative stop signal, checked before every batch. Clones share the signal.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the training run to stop at its next batch.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The outcome of [`fit`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitReport {
    pub epochs_run: usize,
    pub best_epoch: usize,
    pub best_val_loss: f64,
    pub losses: Vec<EpochLoss>,
    pub duration: Duration,
}

/// The training loss of `output` against `targets`: Gaussian negative log-likelihood per
/// value (including the ½·ln 2π constant) or softmax cross-entropy, averaged.
pub fn loss(output: &Output, targets: &Tensor) -> Result<Tensor, ModelError> {
    match output {
        Output::Gaussian { mean, log_var } => {
            if mean.size() != targets.size() {
                return Err(ModelError::Shape(format!(
                    "forecast {:?} and targets {:?} differ",
                    mean.size(),
                    targets.size()
                )));
            }
            let sq = (targets - mean).square();
            let nll = (log_var + sq * (-log_var).exp() + (2.0 * std::f64::consts::PI).ln()) * 0.5;
            Ok(nll.mean(Kind::Double).to_kind(mean.kind()))
        }
        Output::Logits(z) => {
            let classes = *z.size().last().expect("logits have a class dimension");
            let flat_targets = targets.reshape([-1]);
            let flat = z.reshape([-1, classes]);
            if flat.size()[0] != flat_targets.size()[0] {
                return Err(ModelError::Shape("logits and class targets differ in length".into()));
            }
            Ok(flat.cross_entropy_loss::<Tensor>(&flat_targets, None, Reduction::Mean, -100, 0.0))
        }
    }
}

/// Mean loss of `network` over `data`, without gradients, in chunks.
pub fn evaluate(network: &Network, data: &Dataset, chunk: usize) -> Result<f64, ModelError> {
    data.check_for(network)?;
    tch::no_grad(|| {
        let n = data.len();
        let mut total = 0.0;
        for start in (0..n).step_by(chunk.max(1)) {
            let len = chunk.min(n - start);
            let idx = Tensor::arange_start(start as i64, (start + len) as i64, (Kind::Int64, network.device()));
            let (xs, ys) = data.select(&idx);
            let (out, _) = network.seq(&xs, None)?;
            total += loss(&out, &ys)?.double_value(&[]) * len as f64;
        }
        Ok(total / n as f64)
    })
}

/// Trains `network` on `train`, early-stopping on `val`, calling `on_epoch` after every
/// epoch. On return the network holds the weights of its best validation epoch.
pub fn fit(
    network: &mut Network,
    train: &Dataset,
    val: &Dataset,
    config: &TrainConfig,
    cancel: &CancelToken,
    mut on_epoch: impl FnMut(&EpochProgress),
) -> Result<FitReport, ModelError> {
    config.validate()?;
    train.check_for(network)?;
    val.check_for(network)?;
    let device = network.device();
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x7473_6164);
    let mut optimizer = nn::Adam::default().build(network.var_store(), config.learning_rate)?;
    let params = network.var_store().trainable_variables();
    let mut order: Vec<i64> = (0..train.len() as i64).collect();
    let mut best = (f64::INFINITY, 0usize);
    let mut best_weights: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
    let mut losses = Vec::new();
    let mut learning_rate = config.learning_rate;
    let mut last_change = 0usize; // epoch of the last improvement or learning-rate decay
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut norm_sum, mut batches) = (0.0, 0.0, 0usize);
        for chunk in order.chunks(config.batch_size) {
            if cancel.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            let idx = Tensor::from_slice(chunk).to_device(device);
            let (xs, ys) = train.select(&idx);
            let (out, _) = network.seq_train(&xs, None)?;
            let batch_loss = loss(&out, &ys)?;
            optimizer.zero_grad();
            batch_loss.backward();
            let norm = clip_grad_norm(&params, config.clip_norm);
            let value = batch_loss.double_value(&[]);
            if !value.is_finite() || !norm.is_finite() {
                return Err(ModelError::Diverged { epoch });
            }
            optimizer.step();
            loss_sum += value;
            norm_sum += norm;
            batches += 1;
        }
        let val_loss = evaluate(network, val, 1024)?;
        if !val_loss.is_finite() {
            return Err(ModelError::Diverged { epoch });
        }
        let record =
            EpochLoss { epoch, train_loss: loss_sum / batches as f64, val_loss, grad_norm: norm_sum / batches as f64 };
        on_epoch(&EpochProgress {
            epoch,
            epochs: config.epochs,
            train_loss: record.train_loss,
            val_loss,
            grad_norm: record.grad_norm,
            elapsed: start.elapsed(),
        });
        losses.push(record);
        if val_loss < best.0 {
            best = (val_loss, epoch);
            last_change = epoch;
            tch::no_grad(|| {
                for (saved, p) in best_weights.iter_mut().zip(&params) {
                    saved.copy_(p);
                }
            });
        }
        let out_of_time = config.max_duration.is_some_and(|d| start.elapsed() >= d);
        if epoch - best.1 >= config.patience || out_of_time {
            break;
        }
        if epoch - last_change >= config.patience.div_ceil(2) && config.lr_decay < 1.0 {
            learning_rate *= config.lr_decay;
            optimizer.set_lr(learning_rate);
            last_change = epoch;
        }
    }
    tch::no_grad(|| {
        for (p, saved) in params.iter().zip(&best_weights) {
            let mut p = p.shallow_clone();
            p.copy_(saved);
        }
    });
    Ok(FitReport {
        epochs_run: losses.len(),
        best_epoch: best.1,
        best_val_loss: best.0,
        losses,
        duration: start.elapsed(),
    })
}

/// Scales the gradients of `params` so their global L2 norm is at most `max`; returns the
/// norm before scaling.
fn clip_grad_norm(params: &[Tensor], max: f64) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params.iter().map(Tensor::grad).filter(Tensor::defined).collect();
        if grads.is_empty() {
            return 0.0;
        }
        let squares: Vec<Tensor> = grads.iter().map(|g| g.square().sum(Kind::Double)).collect();
        let norm = Tensor::stack(&squares, 0).sum(Kind::Double).sqrt().double_value(&[]);
        if norm.is_finite() && norm > max {
            let scale = max / (norm + 1e-6);
            for g in &grads {
                let mut g = g.shallow_clone();
                let _ = g.g_mul_scalar_(scale);
            }
        }
        norm
    })
}
