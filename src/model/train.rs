//! Training by truncated back-propagation through time (DESIGN.md §2).
//!
//! Every sample is a window of τ steps run from a zero state; the loss is averaged over the
//! window's steps (the lecture's sum, scaled by 1/τ so the learning rate does not depend
//! on τ). Adam updates the weights after the global gradient norm is clipped; the norm
//! before clipping is reported, since vanishing and exploding gradients show up there
//! first. The weights of the epoch with the lowest validation loss are kept, and training
//! stops early once that loss has not improved for `patience` epochs.
//!
//! On the CPU a fixed seed and thread count give bit-identical weights: initialisation and
//! shuffling use our own seeded generator, never libtorch's global one, and the threads
//! split each batch the same way every time (`TrainConfig::threads`).
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Kind, Reduction, Tensor};

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
    /// Threads a run takes on the CPU. Each batch is split over them (data parallel): each
    /// runs its share of the windows forward and backward on its own copy of the network
    /// with one libtorch thread, and the gradients are summed before the step, the whole
    /// batch's gradient up to rounding. The same seed and thread count give bit-identical
    /// weights. Ignored on a GPU.
    #[serde(default = "one")]
    pub threads: usize,
}

fn one() -> usize {
    1
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
            threads: 1,
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
        if self.threads == 0 || self.threads > 1024 {
            return bad("threads must be in 1..=1024");
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
    mean_over_chunks(network, data, chunk, |xs, ys| weighted_loss(network, xs, ys, 1.0, false))
}

/// The loss of `network` on `xs`/`ys` times `weight`; when `train`, its gradient is added to
/// the network's, else no graph is recorded.
fn weighted_loss(network: &Network, xs: &Tensor, ys: &Tensor, weight: f64, train: bool) -> Result<f64, ModelError> {
    if !train {
        return tch::no_grad(|| {
            let (out, _) = network.seq(xs, None)?;
            Ok(loss(&out, ys)?.double_value(&[]) * weight)
        });
    }
    let (out, _) = network.seq_train(xs, None)?;
    let l = loss(&out, ys)? * weight;
    l.backward();
    Ok(l.double_value(&[]))
}

/// The mean over `data` of `mean_loss`, called on chunks of `chunk` windows.
fn mean_over_chunks(
    network: &Network,
    data: &Dataset,
    chunk: usize,
    mut mean_loss: impl FnMut(&Tensor, &Tensor) -> Result<f64, ModelError>,
) -> Result<f64, ModelError> {
    data.check_for(network)?;
    let n = data.len();
    let mut total = 0.0;
    for start in (0..n).step_by(chunk.max(1)) {
        let len = chunk.min(n - start);
        let idx = Tensor::arange_start(start as i64, (start + len) as i64, (Kind::Int64, network.device()));
        let (xs, ys) = data.select(&idx);
        total += mean_loss(&xs, &ys)? * len as f64;
    }
    Ok(total / n as f64)
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
    let threads = config.threads.min(config.batch_size);
    // Declared first, dropped last: after the helpers have stopped.
    let _one_thread = (device == Device::Cpu).then(OneLibtorchThread::new);
    let shards = if threads > 1 && device == Device::Cpu { Some(Shards::start(network, threads)?) } else { None };
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let (mut loss_sum, mut norm_sum, mut batches) = (0.0, 0.0, 0usize);
        for chunk in order.chunks(config.batch_size) {
            if cancel.is_cancelled() {
                return Err(ModelError::Cancelled);
            }
            let idx = Tensor::from_slice(chunk).to_device(device);
            let (xs, ys) = train.select(&idx);
            optimizer.zero_grad();
            let value = match &shards {
                Some(shards) => shards.backward(network, &xs, &ys)?,
                None => weighted_loss(network, &xs, &ys, 1.0, true)?,
            };
            let norm = clip_grad_norm(&params, config.clip_norm);
            if !value.is_finite() || !norm.is_finite() {
                return Err(ModelError::Diverged { epoch });
            }
            optimizer.step();
            loss_sum += value;
            norm_sum += norm;
            batches += 1;
        }
        let val_loss = match &shards {
            Some(shards) => shards.evaluate(network, val, 1024)?,
            None => evaluate(network, val, 1024)?,
        };
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

/// The helper threads of data-parallel training ([`TrainConfig::threads`]). The calling
/// thread runs the first share of each batch on the network itself; every helper runs one
/// other share on its own copy, whose weights it copies from the network before each share.
/// Each share's loss is weighted by its share of the windows, so the summed gradients are
/// those of the whole batch's mean loss. Every helper runs libtorch on one thread.
struct Shards {
    helpers: Vec<Helper>,
    /// The network's variables by name, paired with each helper's (see [`Helper::params`]).
    params: Vec<Tensor>,
}

/// libtorch on one thread on the calling thread while it lives (a training run's thread
/// count is [`TrainConfig::threads`], split by [`Shards`]); the setting before is restored on
/// drop.
struct OneLibtorchThread(i32);

impl OneLibtorchThread {
    fn new() -> OneLibtorchThread {
        let before = tch::get_num_threads();
        tch::set_num_threads(1);
        OneLibtorchThread(before)
    }
}

impl Drop for OneLibtorchThread {
    fn drop(&mut self) {
        tch::set_num_threads(self.0);
    }
}

struct Helper {
    jobs: Option<std::sync::mpsc::Sender<ShardJob>>,
    done: std::sync::mpsc::Receiver<Result<f64, ModelError>>,
    /// The copy's variables (shallow clones), in the order of [`Shards::params`]: their
    /// gradients are read after the helper answers, before its next share.
    params: Vec<Tensor>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One share of a batch: windows, targets, the share's weight in the batch's loss, and
/// whether it is trained (forward and backward) or only evaluated.
struct ShardJob {
    xs: Tensor,
    ys: Tensor,
    weight: f64,
    train: bool,
}

impl ShardJob {
    /// The share's weighted loss on `network` ([`weighted_loss`]).
    fn run(&self, network: &Network) -> Result<f64, ModelError> {
        weighted_loss(network, &self.xs, &self.ys, self.weight, self.train)
    }
}

/// `network`'s variables, sorted by name (two networks of one configuration pair up).
fn named_params(network: &Network) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = network.var_store().variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}

impl Shards {
    fn start(network: &Network, threads: usize) -> Result<Shards, ModelError> {
        let params = named_params(network);
        let mut helpers = Vec::with_capacity(threads - 1);
        for i in 1..threads {
            let copy = Network::new(network.config().clone(), network.device(), 0)?;
            let copy_params = named_params(&copy);
            let theirs: Vec<Tensor> = copy_params.iter().map(Tensor::shallow_clone).collect();
            let source: Vec<Tensor> = params.iter().map(Tensor::shallow_clone).collect();
            let (jobs, job_rx) = std::sync::mpsc::channel::<ShardJob>();
            let (done_tx, done) = std::sync::mpsc::channel();
            let thread = std::thread::Builder::new()
                .name(format!("tsad-train-{i}"))
                .spawn(move || {
                    tch::set_num_threads(1);
                    for job in job_rx {
                        let result = share(&copy, &copy_params, &source, &job);
                        if done_tx.send(result).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| ModelError::Data(format!("cannot start a training thread: {e}")))?;
            helpers.push(Helper { jobs: Some(jobs), done, params: theirs, thread: Some(thread) });
        }
        Ok(Shards { helpers, params })
    }

    /// Runs `xs`/`ys` forward and backward, split over the threads, leaving the batch's
    /// gradient in `network`'s (zeroed) gradients. Returns the batch's mean loss.
    fn backward(&self, network: &Network, xs: &Tensor, ys: &Tensor) -> Result<f64, ModelError> {
        let (mean, sent) = self.split(network, xs, ys, true)?;
        tch::no_grad(|| {
            for helper in &self.helpers[..sent] {
                for (mine, theirs) in self.params.iter().zip(&helper.params) {
                    let (mut g, other) = (mine.grad(), theirs.grad());
                    if g.defined() && other.defined() {
                        let _ = g.g_add_(&other);
                    }
                }
            }
        });
        Ok(mean)
    }

    /// [`evaluate`] split over the threads: each chunk's windows shared out as a batch's are.
    fn evaluate(&self, network: &Network, data: &Dataset, chunk: usize) -> Result<f64, ModelError> {
        mean_over_chunks(network, data, chunk, |xs, ys| Ok(self.split(network, xs, ys, false)?.0))
    }

    /// The mean loss of `xs`/`ys`, its windows shared out over the threads, with the backward
    /// pass when `train`; also how many helpers took a share (the first ones).
    fn split(&self, network: &Network, xs: &Tensor, ys: &Tensor, train: bool) -> Result<(f64, usize), ModelError> {
        let n = xs.size()[0];
        let parts = (self.helpers.len() as i64 + 1).min(n);
        let share_of = |k: i64| (k * n / parts, (k + 1) * n / parts - k * n / parts);
        let mut sent = 0;
        for (k, helper) in (1..parts).zip(&self.helpers) {
            let (start, len) = share_of(k);
            let (xs, ys) = (xs.narrow(0, start, len), ys.narrow(0, start, len));
            let job = ShardJob { xs, ys, weight: len as f64 / n as f64, train };
            helper.jobs.as_ref().expect("helper running").send(job).map_err(|_| helper_failed())?;
            sent += 1;
        }
        let (start, len) = share_of(0);
        let own = ShardJob {
            xs: xs.narrow(0, start, len),
            ys: ys.narrow(0, start, len),
            weight: len as f64 / n as f64,
            train,
        };
        let own = own.run(network);
        // Every helper answers before anything returns: none may still be running a share.
        let answers: Vec<Result<f64, ModelError>> =
            self.helpers[..sent].iter().map(|h| h.done.recv().unwrap_or_else(|_| Err(helper_failed()))).collect();
        let mut mean = own?;
        for answer in answers {
            mean += answer?;
        }
        Ok((mean, sent))
    }
}

impl Drop for Shards {
    fn drop(&mut self) {
        for helper in &mut self.helpers {
            helper.jobs = None; // the helper's loop ends
            if let Some(thread) = helper.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

fn helper_failed() -> ModelError {
    ModelError::Data("a training thread stopped".into())
}

/// A helper's share: the network's current weights into the copy (and its gradients
/// zeroed, when training), then the share.
fn share(copy: &Network, copy_params: &[Tensor], source: &[Tensor], job: &ShardJob) -> Result<f64, ModelError> {
    tch::no_grad(|| {
        for (mine, theirs) in copy_params.iter().zip(source) {
            mine.shallow_clone().copy_(theirs);
            let mut g = mine.grad();
            if job.train && g.defined() {
                let _ = g.zero_();
            }
        }
    });
    job.run(copy)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Architecture, ClassifierMode, NetworkConfig};

    fn zero_grads(network: &Network) {
        for p in named_params(network) {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    fn grads(network: &Network) -> Vec<Tensor> {
        named_params(network).iter().map(|p| p.grad().copy()).collect()
    }

    /// Deterministic windows: `[n, time, 1]` of shifted sines, and their next steps.
    fn windows(n: i64, time: i64) -> (Tensor, Tensor) {
        let t = Tensor::arange(time + 1, (Kind::Float, Device::Cpu)).unsqueeze(0);
        let phase = Tensor::arange(n, (Kind::Float, Device::Cpu)).unsqueeze(1) * 0.7;
        let all = ((&t * 0.3 + phase).sin() + (&t * 1.3).cos() * 0.1).unsqueeze(2);
        (all.narrow(1, 0, time).contiguous(), all.narrow(1, 1, time).contiguous())
    }

    #[test]
    fn a_batch_split_over_threads_gives_the_gradient_and_loss_of_the_whole_batch_and_evaluates_alike() {
        let classifier = NetworkConfig {
            head: HeadConfig::Classifier { classes: 3, mode: ClassifierMode::ManyToOne },
            ..NetworkConfig::forecaster(Architecture::Gru, 12, 1)
        };
        let cases = [
            (NetworkConfig::forecaster(Architecture::Lstm, 16, 1), 2, 64),
            (NetworkConfig::forecaster(Architecture::Gru, 16, 2), 3, 10),
            (NetworkConfig::forecaster(Architecture::Lstm, 8, 1), 4, 3), // fewer windows than threads
            (classifier, 2, 9),
        ];
        for (config, threads, n) in cases {
            let network = Network::new(config.clone(), Device::Cpu, 7).expect("network");
            let (xs, forecast_targets) = windows(n, 20);
            let ys = match config.head {
                HeadConfig::Gaussian { .. } => forecast_targets,
                HeadConfig::Classifier { .. } => Tensor::arange(n, (Kind::Int64, Device::Cpu)).remainder(3),
            };
            let (out, _) = network.seq_train(&xs, None).expect("forward");
            let whole = loss(&out, &ys).expect("loss");
            whole.backward();
            let (whole, expected) = (whole.double_value(&[]), grads(&network));
            zero_grads(&network);
            let shards = Shards::start(&network, threads).expect("threads");
            let split = shards.backward(&network, &xs, &ys).expect("split");
            let got = grads(&network);
            let what = format!("{:?}, {threads} threads, {n} windows", config.architecture);
            let targets = match config.head {
                HeadConfig::Gaussian { .. } => Targets::Forecast(ys.shallow_clone()),
                HeadConfig::Classifier { .. } => Targets::Classes(ys.shallow_clone()),
            };
            let data = Dataset { inputs: xs.shallow_clone(), targets };
            for chunk in [4, 1024] {
                let (alone, shared) = (evaluate(&network, &data, chunk), shards.evaluate(&network, &data, chunk));
                let (alone, shared) = (alone.expect("evaluated"), shared.expect("evaluated"));
                assert!(
                    (alone - whole).abs() <= 1e-5 * whole.abs().max(1.0),
                    "{what}: evaluated {alone} against {whole}"
                );
                assert!(
                    (shared - alone).abs() <= 1e-5 * alone.abs().max(1.0),
                    "{what}, chunks of {chunk}: {shared} against {alone}"
                );
            }
            drop(shards);
            assert!((split - whole).abs() <= 1e-5 * whole.abs().max(1.0), "{what}: loss {split} against {whole}");
            assert!(expected.iter().any(|g| g.abs().max().double_value(&[]) > 1e-4), "{what}: a gradient at all");
            for (e, g) in expected.iter().zip(&got) {
                let gap = (e - g).abs().max().double_value(&[]);
                let scale = e.abs().max().double_value(&[]).max(1e-3);
                assert!(gap <= 1e-4 * scale, "{what}: gradient off by {gap} (scale {scale})");
            }
        }
    }
}
