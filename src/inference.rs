//! Inference threads: the owners of the weights during serving.
//!
//! Stream actors send [`InferenceRequest`]s (plain `f32` inputs and recurrent states, no
//! tensors) through a bounded queue. Each thread owns its own copy of every model it has
//! served (tensors are `Send` but not `Sync`), runs libtorch with one intra-op thread, and
//! gathers every single-step request queued at that moment into one batched cell call per
//! model; requests of many steps queued together (up to [`SEQUENCE_ROWS`] sequences) run as
//! one batched sequence call per model and length. Results go back through a oneshot
//! channel.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tch::{Device, Kind, Tensor};
use tokio::sync::oneshot;
use tracing::{debug, error, info};

use crate::metrics::Metrics;
use crate::model::{Architecture, HeadConfig, ModelCard, Network, Output, State, Usage};

/// Requests the queue holds before submitters are refused.
const QUEUE: usize = 1 << 16;
/// Rows of many-step requests a thread gathers into one round: batched, oneDNN's LSTM runs
/// 1,000 steps of 4 sequences in 1.8 times the time of one (1 thread, hidden 64), and what
/// is queued beyond them is left to the other threads.
const SEQUENCE_ROWS: usize = 4;

/// Failures of inference.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InferenceError {
    #[error("inference queue is full")]
    Overloaded,
    #[error("inference threads have stopped")]
    Stopped,
    #[error("model {0} is not available: {1}")]
    Model(String, String),
    #[error("inference failed: {0}")]
    Failed(String),
}

/// What a stream needs to know about the model that scores it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub dir: PathBuf,
    /// Values per step the network reads (1 for the generic, channel-independent model).
    pub input_size: usize,
    /// Floats of recurrent state per sequence: h (and c for LSTM) of every layer.
    pub state_len: usize,
    layers: usize,
    hidden: usize,
    lstm: bool,
    /// The card the model was saved with.
    pub card: ModelCard,
}

impl ModelInfo {
    /// Reads `dir/model.json` and checks the model can serve streams.
    pub fn load(name: &str, version: &str, dir: &Path) -> Result<ModelInfo, InferenceError> {
        let fail = |e: String| InferenceError::Model(format!("{name}/{version}"), e);
        let text = std::fs::read_to_string(dir.join("model.json")).map_err(|e| fail(e.to_string()))?;
        let card: ModelCard = serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        card.network.validate(Usage::Streaming).map_err(|e| fail(e.to_string()))?;
        match card.network.head {
            HeadConfig::Gaussian { channels } if channels == card.network.input_size => {}
            _ => return Err(fail("a scoring model needs a Gaussian head with one channel per input".into())),
        }
        let c = &card.network;
        let lstm = c.architecture == Architecture::Lstm;
        Ok(ModelInfo {
            name: name.to_string(),
            version: version.to_string(),
            dir: dir.to_path_buf(),
            input_size: c.input_size,
            state_len: c.layers * c.hidden * if lstm { 2 } else { 1 },
            layers: c.layers,
            hidden: c.hidden,
            lstm,
            card,
        })
    }
}

/// Resolves model names to their active version on disk.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    root: PathBuf,
}

impl ModelCatalog {
    pub fn new(root: PathBuf) -> ModelCatalog {
        ModelCatalog { root }
    }

    /// The directory holding `models/<name>/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The versions of `name` that have a `model.json`, in order (numeric where they are
    /// numbers).
    pub fn versions(&self, name: &str) -> Result<Vec<String>, InferenceError> {
        let dir = self.root.join(name);
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| InferenceError::Model(name.to_string(), format!("{}: {e}", dir.display())))?;
        let mut versions: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter(|e| e.path().join("model.json").is_file())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        versions.sort_by_key(|v| (v.parse::<u64>().unwrap_or(0), v.clone()));
        Ok(versions)
    }

    /// Names of the models in the catalog, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.root)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// The active version of `name`: the one named in `<name>/ACTIVE` if present, else the
    /// highest version (numeric order where versions are numbers).
    pub fn active(&self, name: &str) -> Result<Arc<ModelInfo>, InferenceError> {
        let dir = self.root.join(name);
        let version = match std::fs::read_to_string(dir.join("ACTIVE")) {
            Ok(text) => text.trim().to_string(),
            Err(_) => self
                .versions(name)?
                .pop()
                .ok_or_else(|| InferenceError::Model(name.to_string(), format!("no versions in {}", dir.display())))?,
        };
        Ok(Arc::new(ModelInfo::load(name, &version, &dir.join(&version))?))
    }

    /// Writes `<name>/ACTIVE` naming the version active now, if there is none yet, so that
    /// adding a newer version does not change which one serves. A model with no versions
    /// yet is left alone.
    pub fn pin(&self, name: &str) -> Result<(), InferenceError> {
        let dir = self.root.join(name);
        if dir.join("ACTIVE").exists() || self.versions(name).map_or(true, |v| v.is_empty()) {
            return Ok(());
        }
        let version = self.active(name)?.version.clone();
        self.activate(name, &version).map(|_| ())
    }

    /// Makes `version` the active version of `name` (written atomically to `<name>/ACTIVE`)
    /// after checking it can serve streams.
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<ModelInfo>, InferenceError> {
        let dir = self.root.join(name);
        let info = Arc::new(ModelInfo::load(name, version, &dir.join(version))?);
        let fail = |e: std::io::Error| InferenceError::Model(name.to_string(), e.to_string());
        let staging = dir.join(".ACTIVE.tmp");
        std::fs::write(&staging, format!("{version}\n")).map_err(fail)?;
        std::fs::rename(&staging, dir.join("ACTIVE")).map_err(fail)?;
        Ok(info)
    }
}

/// One unit of inference work: `rows` independent sequences of `steps` steps.
pub struct InferenceRequest {
    pub model: Arc<ModelInfo>,
    pub rows: usize,
    pub steps: usize,
    /// `[rows][steps][input_size]`, normalised.
    pub inputs: Vec<f32>,
    /// `[rows][state_len]`: h of every layer, then c of every layer (LSTM).
    pub state: Vec<f32>,
    pub reply: oneshot::Sender<Result<InferenceResult, InferenceError>>,
}

/// The forecasts after every step, and the state after the last.
#[derive(Debug, Clone)]
pub struct InferenceResult {
    /// `[rows][steps][input_size]`: forecast mean of the next step.
    pub mean: Vec<f32>,
    /// Same layout: forecast log-variance.
    pub log_var: Vec<f32>,
    /// `[rows][state_len]`.
    pub state: Vec<f32>,
}

/// Handle on the inference threads. Cheap to clone.
#[derive(Clone)]
pub struct InferencePool {
    tx: Sender<InferenceRequest>,
    max_batch: usize,
}

impl std::fmt::Debug for InferencePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InferencePool(queued: {})", self.tx.len())
    }
}

impl InferencePool {
    /// Starts `threads` inference threads. They stop when every handle is dropped.
    pub fn start(
        threads: usize,
        max_batch: usize,
        batch_wait: Duration,
        device: Device,
        metrics: Metrics,
    ) -> InferencePool {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        for i in 0..threads {
            let rx = rx.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("tsad-inference-{i}"))
                .spawn(move || {
                    // A request's steps wait on this thread: it runs soon after it wakes
                    // (crate::priority).
                    let _slices = crate::priority::ShortSlices::ask(crate::priority::SHORT_SLICE)
                        .inspect_err(|e| debug!(error = %e, "an inference thread in the scheduler's default slices"));
                    worker(rx, max_batch, batch_wait, device, metrics)
                })
                .expect("the OS can start an inference thread");
        }
        info!(threads, max_batch, ?device, "inference threads started");
        InferencePool { tx, max_batch }
    }

    /// Most single-step rows the threads run in one call (`--max-batch`).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Runs `inputs` from `state` through the model and waits for the result.
    pub async fn run(
        &self,
        model: Arc<ModelInfo>,
        rows: usize,
        steps: usize,
        inputs: Vec<f32>,
        state: Vec<f32>,
    ) -> Result<InferenceResult, InferenceError> {
        debug_assert_eq!(inputs.len(), rows * steps * model.input_size);
        debug_assert_eq!(state.len(), rows * model.state_len);
        let (reply, result) = oneshot::channel();
        let request = InferenceRequest { model, rows, steps, inputs, state, reply };
        self.tx.try_send(request).map_err(|e| match e {
            TrySendError::Full(_) => InferenceError::Overloaded,
            TrySendError::Disconnected(_) => InferenceError::Stopped,
        })?;
        result.await.map_err(|_| InferenceError::Stopped)?
    }
}

type ModelKey = (String, String);

fn worker(rx: Receiver<InferenceRequest>, max_batch: usize, batch_wait: Duration, device: Device, metrics: Metrics) {
    // Parallelism comes from many threads each running small batches; libtorch's own
    // intra-op threads would only fight them.
    tch::set_num_threads(1);
    let _no_grad = tch::no_grad_guard();
    let mut networks: HashMap<ModelKey, Network> = HashMap::new();
    while let Ok(first) = rx.recv() {
        // Requests of one model and one step count gathered together run as one batch.
        let mut batches: HashMap<(ModelKey, usize), Vec<InferenceRequest>> = HashMap::new();
        let (mut rows, mut sequence_rows) = (0, 0);
        let deadline = Instant::now() + batch_wait;
        let mut next = Some(first);
        while let Some(request) = next.take() {
            match request.steps {
                1 => rows += request.rows,
                _ => sequence_rows += request.rows,
            }
            let key = ((request.model.name.clone(), request.model.version.clone()), request.steps);
            batches.entry(key).or_default().push(request);
            if rows >= max_batch || sequence_rows >= SEQUENCE_ROWS {
                break;
            }
            next = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(_) if !batch_wait.is_zero() => rx.recv_deadline(deadline).ok(),
                Err(_) => None,
            };
        }
        // Single steps first: a lone reading's step is the shortest wait.
        let mut batches: Vec<_> = batches.into_iter().collect();
        batches.sort_by_key(|((_, steps), _)| *steps);
        for ((key, steps), batch) in batches {
            let started = Instant::now();
            let total: usize = batch.iter().map(|r| r.rows).sum();
            let result =
                network_for(&mut networks, &batch[0].model, device).and_then(|net| run_batch(net, &batch, device));
            metrics.inference_latency.observe(started.elapsed().as_secs_f64());
            metrics.inference_batch.observe(total as f64);
            match result {
                Ok(results) => {
                    for (request, result) in batch.into_iter().zip(results) {
                        let _ = request.reply.send(Ok(result));
                    }
                }
                Err(e) => {
                    error!(model = %key.0, version = %key.1, steps, error = %e, "batched inference failed");
                    for request in batch {
                        let _ = request.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

fn network_for<'a>(
    networks: &'a mut HashMap<ModelKey, Network>,
    model: &ModelInfo,
    device: Device,
) -> Result<&'a Network, InferenceError> {
    let key = (model.name.clone(), model.version.clone());
    if !networks.contains_key(&key) {
        let (mut network, _) = Network::load(&model.dir, device)
            .map_err(|e| InferenceError::Model(format!("{}/{}", key.0, key.1), e.to_string()))?;
        network.prepare_streaming();
        networks.insert(key.clone(), network);
    }
    Ok(networks.get(&key).expect("inserted above"))
}

fn failed(e: impl std::fmt::Display) -> InferenceError {
    InferenceError::Failed(e.to_string())
}

/// Packs per-sequence states (`[seq][state_len]`) into `[layers, batch, hidden]` tensors.
fn gather_state(model: &ModelInfo, states: &[&[f32]], batch: usize, device: Device) -> State {
    let (layers, hidden) = (model.layers, model.hidden);
    let plane = |offset: usize| {
        let mut flat = vec![0f32; layers * batch * hidden];
        let mut b = 0;
        for state in states {
            for row in state.chunks_exact(model.state_len) {
                for l in 0..layers {
                    let src = &row[offset + l * hidden..offset + (l + 1) * hidden];
                    flat[(l * batch + b) * hidden..(l * batch + b + 1) * hidden].copy_from_slice(src);
                }
                b += 1;
            }
        }
        Tensor::from_slice(&flat).view([layers as i64, batch as i64, hidden as i64]).to_device(device)
    };
    State { h: plane(0), c: model.lstm.then(|| plane(layers * hidden)) }
}

/// Unpacks `[layers, batch, hidden]` states into per-sequence rows for sequences `start..start+rows`.
fn scatter_state(model: &ModelInfo, h: &[f32], c: Option<&[f32]>, batch: usize, start: usize, rows: usize) -> Vec<f32> {
    let (layers, hidden) = (model.layers, model.hidden);
    let mut out = vec![0f32; rows * model.state_len];
    for r in 0..rows {
        let b = start + r;
        let row = &mut out[r * model.state_len..(r + 1) * model.state_len];
        for l in 0..layers {
            let src = (l * batch + b) * hidden;
            row[l * hidden..(l + 1) * hidden].copy_from_slice(&h[src..src + hidden]);
            if let Some(c) = c {
                row[(layers + l) * hidden..(layers + l + 1) * hidden].copy_from_slice(&c[src..src + hidden]);
            }
        }
    }
    out
}

fn to_f32(t: &Tensor) -> Result<Vec<f32>, InferenceError> {
    Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).contiguous().view([-1])).map_err(failed)
}

fn gaussian(output: Output) -> Result<(Tensor, Tensor), InferenceError> {
    match output {
        Output::Gaussian { mean, log_var } => Ok((mean, log_var)),
        Output::Logits(_) => Err(failed("the model is a classifier, not a forecaster")),
    }
}

/// Runs `batch`, requests of one model and one step count, as one batched call: single
/// steps through the streaming cells ([`Network::step`]), many through the fused sequence
/// kernel, where oneDNN's LSTM takes a step of 4 sequences in about twice the time of one
/// (docs/PERFORMANCE.md, "Sequences batched").
fn run_batch(
    net: &Network,
    batch: &[InferenceRequest],
    device: Device,
) -> Result<Vec<InferenceResult>, InferenceError> {
    let model = &batch[0].model;
    let (steps, width) = (batch[0].steps, model.input_size);
    let total: usize = batch.iter().map(|r| r.rows).sum();
    let x = match batch {
        [one] => Tensor::from_slice(&one.inputs),
        _ => Tensor::from_slice(&batch.iter().flat_map(|r| r.inputs.iter().copied()).collect::<Vec<f32>>()),
    };
    let states: Vec<&[f32]> = batch.iter().map(|r| r.state.as_slice()).collect();
    let state = gather_state(model, &states, total, device);
    let (out, next) = match steps {
        1 => net.step(&x.view([total as i64, width as i64]).to_device(device), &state),
        _ => net.seq(&x.view([total as i64, steps as i64, width as i64]).to_device(device), Some(&state)),
    }
    .map_err(failed)?;
    let (mean, log_var) = gaussian(out)?;
    let (mean, log_var) = (to_f32(&mean)?, to_f32(&log_var)?);
    let h = to_f32(&next.h)?;
    let c = next.c.as_ref().map(to_f32).transpose()?;
    let mut results = Vec::with_capacity(batch.len());
    let mut start = 0;
    for r in batch {
        let span = start * steps * width..(start + r.rows) * steps * width;
        results.push(InferenceResult {
            mean: mean[span.clone()].to_vec(),
            log_var: log_var[span].to_vec(),
            state: scatter_state(model, &h, c.as_deref(), total, start, r.rows),
        });
        start += r.rows;
    }
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(model: &Arc<ModelInfo>, rows: usize, steps: usize, seed: usize) -> InferenceRequest {
        let wave = |i: usize| ((i * 7 + seed * 13) as f32 / 11.0).sin();
        InferenceRequest {
            model: model.clone(),
            rows,
            steps,
            inputs: (0..rows * steps * model.input_size).map(wave).collect(),
            state: (0..rows * model.state_len).map(|i| 0.3 * wave(i + 1000)).collect(),
            reply: oneshot::channel().0,
        }
    }

    /// Sequences batched give each the forecasts and final state it gets alone.
    #[test]
    fn sequences_batched_match_each_alone() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/1");
        let model = Arc::new(ModelInfo::load("default", "1", &dir).expect("the shipped model loads"));
        let (mut net, _) = Network::load(&dir, Device::Cpu).expect("loads");
        net.prepare_streaming();
        let _no_grad = tch::no_grad_guard();
        let batch: Vec<InferenceRequest> =
            [(1, 0), (2, 1), (1, 2)].map(|(rows, seed)| request(&model, rows, 200, seed)).into();
        let together = run_batch(&net, &batch, Device::Cpu).expect("batched");
        assert_eq!(together.len(), 3);
        for (r, got) in batch.iter().zip(&together) {
            let alone = run_batch(&net, std::slice::from_ref(r), Device::Cpu).expect("alone").remove(0);
            for (a, b) in [(&got.mean, &alone.mean), (&got.log_var, &alone.log_var), (&got.state, &alone.state)] {
                assert_eq!(a.len(), b.len());
                let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-4, "batched differs from alone by {worst}");
            }
            assert_eq!(got.mean.len(), r.rows * 200 * model.input_size);
        }
        assert_ne!(together[0].mean, together[2].mean, "each sequence its own forecasts");
    }
}
