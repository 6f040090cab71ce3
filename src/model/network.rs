//! The recurrent network: optional dense layers, a stack of RNN/LSTM/GRU layers, optional
//! dense layers, and a head.
//!
//! One definition serves both paths: [`Network::seq`] runs whole windows (training, batch
//! scoring, offline bidirectional work) through libtorch's fused kernels, and
//! [`Network::step`] advances a batch of streams by one reading through the cell kernels.
//! Per-sequence state lives in [`State`], never in the network.
//!
//! Parameter names and layouts are PyTorch's: the recurrent core's tensors are
//! `rnn.weight_ih_l{k}[_reverse]`, `rnn.weight_hh_l{k}…`, `rnn.bias_ih_l{k}…`,
//! `rnn.bias_hh_l{k}…`, with gates stacked as PyTorch does (LSTM: input, forget, cell,
//! output; GRU: reset, update, new), so the `rnn.` subset loads into `torch.nn.LSTM`,
//! `GRU` or `RNN` unchanged. Dense layers are `pre.{i}`, `post.{i}` and `head`, each an
//! `nn.Linear` (`weight` `[out, in]`, `bias` `[out]`).
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, Device, Kind, Tensor};

use super::config::{Activation, Architecture, ClassifierMode, HeadConfig, NetworkConfig, Usage};
use super::state::State;
use super::ModelError;

/// What the head produces.
#[derive(Debug)]
pub enum Output {
    /// Next-step forecast per channel: `[batch, time, channels]` from `seq`, `[batch,
    /// channels]` from `step`.
    Gaussian {
        /// Expected next value (in the network's normalised units).
        mean: Tensor,
        /// Natural log of the forecast variance, clamped to [`LOG_VAR_RANGE`].
        log_var: Tensor,
    },
    /// Unnormalised class scores: `[batch, time, classes]` (many-to-many `seq`), `[batch,
    /// classes]` (many-to-one `seq`, or `step`). Softmax gives the probabilities.
    Logits(Tensor),
}

/// Bounds on the forecast log-variance: keeps the likelihood finite however wild the input.
pub const LOG_VAR_RANGE: (f64, f64) = (-12.0, 12.0);

/// The recurrent parameters of one layer and direction, PyTorch order.
#[derive(Debug)]
struct CellParams {
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor,
    b_hh: Tensor,
}

/// Smallest batch [`Network::step`] runs through the streaming kernels: below it, the fused
/// cell's single call costs less than their dozen (measured: one stream 27 µs a step with
/// `lstm_cell`, 41 µs with the streaming kernels; GRU-64 at 50 streams a call 1.8 M against
/// 1.2 M stream-steps/s).
const STREAMING_MIN_BATCH: i64 = 128;

/// One layer's weights rearranged for [`Network::step`] (see
/// [`Network::prepare_streaming`]). libtorch's `tanh` kernel runs at a sixth of the speed of
/// its `sigmoid` on this machine (186 µs against 28 µs for 65,536 floats, one thread), and
/// `lstm_cell` calls it twice, so the streaming cells use tanh(x) = 2σ(2x) − 1 with the
/// doubling folded into the weights.
#[derive(Debug)]
enum StreamingCell {
    /// `[hidden + in, 4·hidden]`, the gates in the order i, f, o, g and the g gate's weights
    /// and bias doubled: one matrix product and one sigmoid give every gate.
    Lstm { w: Tensor, b: Tensor },
    /// The input and hidden products transposed, kept apart (the reset gate scales only the
    /// hidden part of the candidate); the candidate's weights and biases doubled.
    Gru { w_ih: Tensor, b_ih: Tensor, w_hh: Tensor, b_hh: Tensor },
}

/// A recurrent network with its weights. Cheap to share read-only; all state is external.
#[derive(Debug)]
pub struct Network {
    /// The validated shape.
    config: NetworkConfig,
    /// Owns every parameter; the names are the checkpoint's names.
    vs: nn::VarStore,
    /// Dense layers before the core.
    pre: Vec<nn::Linear>,
    /// Per layer, per direction (forward then reverse).
    cells: Vec<CellParams>,
    /// Dense layers after the core.
    post: Vec<nn::Linear>,
    /// The output projection.
    head: nn::Linear,
    /// Per layer, the weights [`Network::step`] runs on, once prepared; empty otherwise.
    streaming: Vec<StreamingCell>,
}

impl Network {
    /// Builds a network with weights drawn from `seed` (PyTorch's default scheme:
    /// uniform in ±1/√fan, with fan the hidden size for recurrent weights and the input
    /// width for dense layers). The same seed gives the same weights on every platform.
    pub fn new(config: NetworkConfig, device: Device, seed: u64) -> Result<Network, ModelError> {
        config.validate(Usage::Offline)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let linear = |rng: &mut ChaCha8Rng, path: &nn::Path, input: usize, output: usize| -> nn::Linear {
            let bound = 1.0 / (input as f64).sqrt();
            let ws = path.var_copy("weight", &uniform(rng, &[output, input], bound));
            let bs = path.var_copy("bias", &uniform(rng, &[output], bound));
            nn::Linear { ws, bs: Some(bs) }
        };
        let mut width = config.input_size;
        let mut pre = Vec::with_capacity(config.pre.len());
        for (i, &w) in config.pre.iter().enumerate() {
            pre.push(linear(&mut rng, &(&root / "pre" / i), width, w));
            width = w;
        }
        let rnn = &root / "rnn";
        let gates = config.architecture.gates() * config.hidden;
        let bound = 1.0 / (config.hidden as f64).sqrt();
        let mut cells = Vec::with_capacity(config.layers * config.directions());
        for layer in 0..config.layers {
            let layer_input = if layer == 0 { width } else { config.core_output() };
            for direction in 0..config.directions() {
                let suffix = if direction == 0 { format!("l{layer}") } else { format!("l{layer}_reverse") };
                let mut var = |name: &str, shape: &[usize]| {
                    let t = uniform(&mut rng, shape, bound);
                    rnn.var_copy(&format!("{name}_{suffix}"), &t)
                };
                let w_ih = var("weight_ih", &[gates, layer_input]);
                let w_hh = var("weight_hh", &[gates, config.hidden]);
                let b_ih = var("bias_ih", &[gates]);
                let b_hh = var("bias_hh", &[gates]);
                cells.push(CellParams { w_ih, w_hh, b_ih, b_hh });
            }
        }
        let mut width = config.core_output();
        let mut post = Vec::with_capacity(config.post.len());
        for (i, &w) in config.post.iter().enumerate() {
            post.push(linear(&mut rng, &(&root / "post" / i), width, w));
            width = w;
        }
        let head = linear(&mut rng, &(&root / "head"), width, config.head_output());
        Ok(Network { config, vs, pre, cells, post, head, streaming: Vec::new() })
    }

    /// The network's shape.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The floating-point kind of the weights (`Float` unless converted).
    pub fn kind(&self) -> Kind {
        self.head.ws.kind()
    }

    /// The variable store: named parameters for checkpoints and optimisers.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// Mutable access to the variable store (loading weights, changing precision).
    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Converts every parameter to f64 (used by the gradient and golden tests).
    pub fn to_double(&mut self) {
        self.vs.double();
    }

    /// Total number of scalar parameters.
    pub fn parameter_count(&self) -> i64 {
        self.vs.trainable_variables().iter().map(Tensor::numel).map(|n| n as i64).sum()
    }

    /// Fails unless this network may run causally, one step at a time.
    pub fn check_streamable(&self) -> Result<(), ModelError> {
        self.config.validate(Usage::Streaming)
    }

    /// A zero state for `batch` independent sequences.
    pub fn zero_state(&self, batch: i64) -> State {
        let shape = [(self.config.layers * self.config.directions()) as i64, batch, self.config.hidden as i64];
        let options = (self.kind(), self.device());
        let c = (self.config.architecture == Architecture::Lstm).then(|| Tensor::zeros(shape, options));
        State { h: Tensor::zeros(shape, options), c }
    }

    /// Runs whole sequences `xs` (`[batch, time, input]`) from `state` (zero if `None`),
    /// returning the head's output and the state after the last step. Autograd tracks the
    /// computation unless the caller is inside `tch::no_grad`.
    pub fn seq(&self, xs: &Tensor, state: Option<&State>) -> Result<(Output, State), ModelError> {
        self.forward(xs, state, false)
    }

    /// Like [`Network::seq`], with libtorch told it is training (some backends, cuDNN in
    /// particular, keep extra buffers for the backward pass only then).
    pub fn seq_train(&self, xs: &Tensor, state: Option<&State>) -> Result<(Output, State), ModelError> {
        self.forward(xs, state, true)
    }

    /// Copies the recurrent weights into the layout of the streaming kernels, which
    /// [`Network::step`] then uses (LSTM and GRU layers; the result matches `lstm_cell` and
    /// `gru_cell` to a few ulps). A network that serves streams and is never trained calls it
    /// once after loading; the copies do not follow later changes to the weights.
    pub fn prepare_streaming(&mut self) {
        let _guard = tch::no_grad_guard();
        let h = self.config.hidden as i64;
        let device = self.device();
        // Per-row factors for `gates` blocks of `hidden` rows: 1, the last block (the one
        // under a tanh) 2.
        let last_block_doubled = |gates: i64| {
            let factors: Vec<f32> = (0..gates * h).map(|i| if i >= (gates - 1) * h { 2.0 } else { 1.0 }).collect();
            Tensor::from_slice(&factors).to_device(device).to_kind(self.kind())
        };
        let prepared: Option<Vec<StreamingCell>> = self
            .cells
            .iter()
            .map(|p| match self.config.architecture {
                Architecture::Lstm => {
                    // PyTorch's gate order is i, f, g, o.
                    let order: Vec<i64> = (0..2 * h).chain(3 * h..4 * h).chain(2 * h..3 * h).collect();
                    let order = Tensor::from_slice(&order).to_device(device);
                    let double = last_block_doubled(4);
                    let w = Tensor::cat(&[&p.w_hh, &p.w_ih], 1).index_select(0, &order) * double.unsqueeze(1);
                    let b = (&p.b_ih + &p.b_hh).index_select(0, &order) * &double;
                    Some(StreamingCell::Lstm { w: w.transpose(0, 1).contiguous(), b })
                }
                Architecture::Gru => {
                    let double = last_block_doubled(3);
                    let t = |w: &Tensor| (w * double.unsqueeze(1)).transpose(0, 1).contiguous();
                    Some(StreamingCell::Gru {
                        w_ih: t(&p.w_ih),
                        b_ih: &p.b_ih * &double,
                        w_hh: t(&p.w_hh),
                        b_hh: &p.b_hh * &double,
                    })
                }
                Architecture::Rnn => None,
            })
            .collect();
        self.streaming = prepared.unwrap_or_default();
    }

    /// Advances `batch` streams by one reading each: `xs` is `[batch, input]`, `state` holds
    /// those streams' states in the same order. Returns the head's output for this step
    /// (the forecast of the next reading) and the new state.
    pub fn step(&self, xs: &Tensor, state: &State) -> Result<(Output, State), ModelError> {
        self.check_streamable()?;
        let size = xs.size();
        if size.len() != 2 || size[1] != self.config.input_size as i64 {
            return Err(ModelError::Shape(format!(
                "step input must be [batch, {}], got {size:?}",
                self.config.input_size
            )));
        }
        self.check_state(state, size[0])?;
        self.check_kind(xs)?;
        let mut x = self.dense(&self.pre, xs);
        let mut hs = Vec::with_capacity(self.config.layers);
        let mut cs = Vec::with_capacity(self.config.layers);
        for (layer, cell) in self.cells.iter().enumerate() {
            let h = state.h.get(layer as i64);
            let c = state.c.as_ref().map(|c| c.get(layer as i64));
            let (h, c) = match self.streaming.get(layer) {
                Some(fast) if size[0] >= STREAMING_MIN_BATCH => streaming_cell(fast, &x, &h, c.as_ref()),
                _ => self.cell(cell, &x, &h, c.as_ref()),
            };
            x = h.shallow_clone();
            hs.push(h);
            cs.extend(c);
        }
        let features = self.dense(&self.post, &x);
        // The head's product transposed, `[outputs, batch]`: a handful of output rows is a
        // shape the matrix kernels handle far better as the left operand (one reading's
        // `linear` of 1,024 streams took 23–38 µs, this 13–23 µs).
        let z = self
            .head
            .bs
            .as_ref()
            .map_or_else(|| self.head.ws.mm(&features.tr()), |b| b.unsqueeze(1).addmm(&self.head.ws, &features.tr()));
        let out = self.head_from(z.tr(), xs);
        Ok((out, State { h: stack_layers(&hs), c: (!cs.is_empty()).then(|| stack_layers(&cs)) }))
    }

    /// Runs `seq` through the cell kernels one step at a time (forward direction only). The
    /// reference the fused kernels are tested against, and the path for the identity RNN,
    /// which libtorch has no fused kernel for.
    pub fn seq_by_steps(&self, xs: &Tensor, state: Option<&State>) -> Result<(Output, State), ModelError> {
        self.check_seq_input(xs)?;
        let batch = xs.size()[0];
        let owned;
        let state = match state {
            Some(s) => s,
            None => {
                owned = self.zero_state(batch);
                &owned
            }
        };
        self.check_state(state, batch)?;
        let core_in = self.dense(&self.pre, xs);
        let (core_out, state) = self.core_by_steps(&core_in, state);
        Ok((self.seq_head(&core_out, xs), state))
    }

    fn forward(&self, xs: &Tensor, state: Option<&State>, train: bool) -> Result<(Output, State), ModelError> {
        self.check_seq_input(xs)?;
        let batch = xs.size()[0];
        let owned;
        let state = match state {
            Some(s) => s,
            None => {
                owned = self.zero_state(batch);
                &owned
            }
        };
        self.check_state(state, batch)?;
        let core_in = self.dense(&self.pre, xs);
        let (core_out, state) = self.core_fused(&core_in, state, train);
        Ok((self.seq_head(&core_out, xs), state))
    }

    fn check_seq_input(&self, xs: &Tensor) -> Result<(), ModelError> {
        let size = xs.size();
        if size.len() != 3 || size[0] < 1 || size[1] < 1 || size[2] != self.config.input_size as i64 {
            return Err(ModelError::Shape(format!(
                "sequence input must be [batch ≥ 1, time ≥ 1, {}], got {size:?}",
                self.config.input_size
            )));
        }
        self.check_kind(xs)
    }

    fn check_kind(&self, xs: &Tensor) -> Result<(), ModelError> {
        if xs.kind() != self.kind() || xs.device() != self.device() {
            return Err(ModelError::Shape(format!(
                "input is {:?} on {:?}, the network is {:?} on {:?}",
                xs.kind(),
                xs.device(),
                self.kind(),
                self.device()
            )));
        }
        Ok(())
    }

    fn check_state(&self, state: &State, batch: i64) -> Result<(), ModelError> {
        let expected = [(self.config.layers * self.config.directions()) as i64, batch, self.config.hidden as i64];
        let lstm = self.config.architecture == Architecture::Lstm;
        let c_ok = match &state.c {
            Some(c) => lstm && c.size() == expected,
            None => !lstm,
        };
        if state.h.size() != expected || !c_ok {
            return Err(ModelError::Shape(format!(
                "state does not fit this network and batch: expected h {expected:?}{}, got {:?}{}",
                if lstm { " with a cell state" } else { "" },
                state.h.size(),
                if state.c.is_some() { " with a cell state" } else { "" },
            )));
        }
        Ok(())
    }

    /// Dense tanh layers over the last dimension.
    fn dense(&self, layers: &[nn::Linear], xs: &Tensor) -> Tensor {
        let mut x = xs.shallow_clone();
        for layer in layers {
            x = x.linear(&layer.ws, layer.bs.as_ref()).tanh();
        }
        x
    }

    fn flat_params(&self) -> Vec<&Tensor> {
        self.cells.iter().flat_map(|c| [&c.w_ih, &c.w_hh, &c.b_ih, &c.b_hh]).collect()
    }

    fn core_fused(&self, xs: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        let c = &self.config;
        let params = self.flat_params();
        let (layers, bi) = (c.layers as i64, c.bidirectional);
        match (c.architecture, c.activation) {
            (Architecture::Lstm, _) => {
                let cell = state.c.as_ref().expect("check_state guarantees an LSTM state has c");
                let (out, h, c) = xs.lstm(&[&state.h, cell], &params, true, layers, 0.0, train, bi, true);
                (out, State { h, c: Some(c) })
            }
            (Architecture::Gru, _) => {
                let (out, h) = xs.gru(&state.h, &params, true, layers, 0.0, train, bi, true);
                (out, State { h, c: None })
            }
            (Architecture::Rnn, Activation::Tanh) => {
                let (out, h) = xs.rnn_tanh(&state.h, &params, true, layers, 0.0, train, bi, true);
                (out, State { h, c: None })
            }
            (Architecture::Rnn, Activation::Identity) => self.core_by_steps(xs, state),
        }
    }

    /// The recurrent core as an explicit loop over time, layers and directions.
    fn core_by_steps(&self, xs: &Tensor, state: &State) -> (Tensor, State) {
        let dirs = self.config.directions();
        let time = xs.size()[1];
        let mut input = xs.shallow_clone();
        let mut hs = Vec::with_capacity(self.cells.len());
        let mut cs = Vec::with_capacity(self.cells.len());
        for layer in 0..self.config.layers {
            let mut outputs = Vec::with_capacity(dirs);
            for direction in 0..dirs {
                let index = layer * dirs + direction;
                let cell = &self.cells[index];
                let mut h = state.h.get(index as i64);
                let mut c = state.c.as_ref().map(|c| c.get(index as i64));
                let mut steps = Vec::with_capacity(time as usize);
                let order: Box<dyn Iterator<Item = i64>> =
                    if direction == 0 { Box::new(0..time) } else { Box::new((0..time).rev()) };
                for t in order {
                    let x = input.select(1, t);
                    let (h2, c2) = self.cell(cell, &x, &h, c.as_ref());
                    h = h2;
                    c = c2;
                    steps.push(h.shallow_clone());
                }
                if direction == 1 {
                    steps.reverse();
                }
                outputs.push(Tensor::stack(&steps, 1));
                hs.push(h);
                cs.extend(c);
            }
            input = if dirs == 1 { outputs.remove(0) } else { Tensor::cat(&outputs, 2) };
        }
        let c = (!cs.is_empty()).then(|| Tensor::stack(&cs, 0));
        (input, State { h: Tensor::stack(&hs, 0), c })
    }

    /// One cell update for a batch: `x` `[batch, in]`, `h`/`c` `[batch, hidden]`.
    fn cell(&self, p: &CellParams, x: &Tensor, h: &Tensor, c: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
        match (self.config.architecture, self.config.activation) {
            (Architecture::Lstm, _) => {
                let c = c.expect("LSTM layers always carry a cell state");
                let (h, c) = x.lstm_cell(&[h, c], &p.w_ih, &p.w_hh, Some(&p.b_ih), Some(&p.b_hh));
                (h, Some(c))
            }
            (Architecture::Gru, _) => (x.gru_cell(h, &p.w_ih, &p.w_hh, Some(&p.b_ih), Some(&p.b_hh)), None),
            (Architecture::Rnn, Activation::Tanh) => {
                (x.rnn_tanh_cell(h, &p.w_ih, &p.w_hh, Some(&p.b_ih), Some(&p.b_hh)), None)
            }
            (Architecture::Rnn, Activation::Identity) => {
                (x.linear(&p.w_ih, Some(&p.b_ih)) + h.linear(&p.w_hh, Some(&p.b_hh)), None)
            }
        }
    }

    /// The head over `features`; `inputs` are the steps' inputs (same leading shape), which
    /// a residual forecaster adds to its mean.
    fn head_output(&self, features: &Tensor, inputs: &Tensor) -> Output {
        self.head_from(features.linear(&self.head.ws, self.head.bs.as_ref()), inputs)
    }

    /// The head's outputs from its product `z` (`[…, outputs]`).
    fn head_from(&self, z: Tensor, inputs: &Tensor) -> Output {
        match self.config.head {
            HeadConfig::Gaussian { channels } => {
                let parts = z.split(channels as i64, -1);
                let (lo, hi) = LOG_VAR_RANGE;
                let mean = if self.config.residual { &parts[0] + inputs } else { parts[0].shallow_clone() };
                Output::Gaussian { mean, log_var: parts[1].clamp(lo, hi) }
            }
            HeadConfig::Classifier { .. } => Output::Logits(z),
        }
    }

    /// Post layers and head over the core's output `[batch, time, hidden × directions]`.
    fn seq_head(&self, core_out: &Tensor, xs: &Tensor) -> Output {
        match self.config.head {
            HeadConfig::Classifier { mode: ClassifierMode::ManyToOne, .. } => {
                // The forward direction has seen the whole sequence at its last step, the
                // reverse direction at its first.
                let last = if self.config.bidirectional {
                    let h = self.config.hidden as i64;
                    Tensor::cat(&[core_out.select(1, -1).narrow(1, 0, h), core_out.select(1, 0).narrow(1, h, h)], 1)
                } else {
                    core_out.select(1, -1)
                };
                self.head_output(&self.dense(&self.post, &last), xs)
            }
            _ => self.head_output(&self.dense(&self.post, core_out), xs),
        }
    }
}

/// One step of a prepared layer ([`StreamingCell`]): the same arithmetic as `lstm_cell` /
/// `gru_cell`, with tanh(x) as 2σ(2x) − 1 (the doubling is in the weights).
fn streaming_cell(cell: &StreamingCell, x: &Tensor, h: &Tensor, c: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
    // 2σ(y) − 1 in place, in one pass: σ + (−1)·(1 − σ).
    let one = Tensor::ones([], (h.kind(), h.device()));
    let centre = |mut t: Tensor| {
        let _ = t.lerp_(&one, -1.0);
        t
    };
    match cell {
        StreamingCell::Lstm { w, b } => {
            let c = c.expect("LSTM layers always carry a cell state");
            let hidden = h.size()[1];
            // `addmm` copies the bias into the output and accumulates onto it; a column of
            // ones with the bias as a row of `w` and `mm` was slower (the product then zeroes
            // its output first: 7.4 % of the time against the copy's 4.3 %).
            let gates = b.addmm(&Tensor::cat(&[h, x], 1), w).sigmoid_();
            let gate = |k: i64| gates.narrow(1, k * hidden, hidden);
            let (i, f, o) = (gate(0), gate(1), gate(2));
            let g = centre(gate(3));
            let mut c = &f * c;
            let _ = c.addcmul_(&i, &g);
            let mut h = centre((&c * 2.0).sigmoid_());
            let _ = h.g_mul_(&o);
            (h, Some(c))
        }
        StreamingCell::Gru { w_ih, b_ih, w_hh, b_hh } => {
            let hidden = h.size()[1];
            let gi = b_ih.addmm(x, w_ih);
            let gh = b_hh.addmm(h, w_hh);
            let rz = (gi.narrow(1, 0, 2 * hidden) + gh.narrow(1, 0, 2 * hidden)).sigmoid_();
            let (r, z) = (rz.narrow(1, 0, hidden), rz.narrow(1, hidden, hidden));
            let n = centre(gi.narrow(1, 2 * hidden, hidden).addcmul(&r, &gh.narrow(1, 2 * hidden, hidden)).sigmoid_());
            // (1 − z)·n + z·h
            let h = n.addcmul(&z, &(h - &n));
            (h, None)
        }
    }
}

/// Per-layer `[batch, hidden]` tensors as one `[layers, batch, hidden]`: a view for one layer
/// (the usual streaming model), where `stack` would copy the whole state every step.
fn stack_layers(layers: &[Tensor]) -> Tensor {
    match layers {
        [one] => one.unsqueeze(0),
        _ => Tensor::stack(layers, 0),
    }
}

/// A `shape` tensor of f32 values uniform in ±`bound`, drawn from `rng`.
fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], bound: f64) -> Tensor {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect();
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    Tensor::from_slice(&values).reshape(dims.as_slice())
}
