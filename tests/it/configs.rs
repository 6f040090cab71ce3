//! Shapes and errors over the configuration space: every valid combination builds and
//! runs with the right shapes, `seq` and `step` agree, states batch and split, and every
//! invalid configuration is refused with an error naming what is wrong.
use tch::{Device, Kind, Tensor};
use tsad::model::{
    Activation, Architecture, ClassifierMode, HeadConfig, ModelError, Network, NetworkConfig, Output, State, Usage,
};

use crate::support::{max_abs_diff, to_vec};

fn config(
    architecture: Architecture,
    layers: usize,
    hidden: usize,
    bidirectional: bool,
    head: HeadConfig,
) -> NetworkConfig {
    NetworkConfig {
        architecture,
        activation: Activation::Tanh,
        input_size: 2,
        hidden,
        layers,
        bidirectional,
        pre: vec![],
        post: vec![],
        head,
        residual: false,
    }
}

fn output_tensors(out: &Output) -> Vec<&Tensor> {
    match out {
        Output::Gaussian { mean, log_var } => vec![mean, log_var],
        Output::Logits(z) => vec![z],
    }
}

fn all_valid_configs() -> Vec<NetworkConfig> {
    let heads = [
        HeadConfig::Gaussian { channels: 1 },
        HeadConfig::Gaussian { channels: 3 },
        HeadConfig::Classifier { classes: 2, mode: ClassifierMode::ManyToMany },
        HeadConfig::Classifier { classes: 5, mode: ClassifierMode::ManyToOne },
    ];
    let mut configs = Vec::new();
    for architecture in [Architecture::Rnn, Architecture::Lstm, Architecture::Gru] {
        for layers in [1, 3] {
            for hidden in [1, 6] {
                for bidirectional in [false, true] {
                    for head in heads {
                        for (pre, post) in [(vec![], vec![]), (vec![4], vec![3, 2])] {
                            let mut c = config(architecture, layers, hidden, bidirectional, head);
                            (c.pre, c.post) = (pre, post);
                            if c.validate(Usage::Offline).is_ok() {
                                configs.push(c);
                            }
                        }
                    }
                }
            }
        }
    }
    let mut identity = config(Architecture::Rnn, 2, 3, false, HeadConfig::Gaussian { channels: 1 });
    identity.activation = Activation::Identity;
    configs.push(identity);
    configs
}

#[test]
fn every_valid_configuration_runs_with_the_expected_shapes() {
    let configs = all_valid_configs();
    assert!(configs.len() > 100, "the grid covers the space ({} configs)", configs.len());
    let (batch, time) = (3i64, 5i64);
    for (i, c) in configs.iter().enumerate() {
        let net = Network::new(c.clone(), Device::Cpu, i as u64).expect("valid config builds");
        let x = Tensor::randn([batch, time, 2], (Kind::Float, Device::Cpu));
        let (out, state) = net.seq(&x, None).expect("seq runs");
        let dirs = if c.bidirectional { 2 } else { 1 };
        assert_eq!(state.h.size(), [(c.layers * dirs) as i64, batch, c.hidden as i64], "{c:?}");
        assert_eq!(state.c.is_some(), c.architecture == Architecture::Lstm);
        let expected: Vec<i64> = match c.head {
            HeadConfig::Gaussian { channels } => vec![batch, time, channels as i64],
            HeadConfig::Classifier { classes, mode: ClassifierMode::ManyToMany } => vec![batch, time, classes as i64],
            HeadConfig::Classifier { classes, mode: ClassifierMode::ManyToOne } => vec![batch, classes as i64],
        };
        for t in output_tensors(&out) {
            assert_eq!(t.size(), expected, "{c:?}");
            assert!(to_vec(t).iter().all(|v| v.is_finite()));
        }

        // The explicit step loop is the reference for the fused kernels.
        let (by_steps, steps_state) = net.seq_by_steps(&x, None).expect("seq_by_steps runs");
        for (a, b) in output_tensors(&out).into_iter().zip(output_tensors(&by_steps)) {
            assert!(max_abs_diff(&to_vec(a), &to_vec(b)) < 1e-5, "fused and stepped seq differ: {c:?}");
        }
        assert!(max_abs_diff(&to_vec(&state.h), &to_vec(&steps_state.h)) < 1e-5);

        let streamable = c.validate(Usage::Streaming).is_ok();
        let step = net.step(&x.select(1, 0), &net.zero_state(batch));
        assert_eq!(step.is_ok(), streamable, "step works exactly for streamable configs: {c:?}");
        if streamable {
            check_streaming_matches_seq(&net, &x, &out);
            // The same weights in the streaming kernels' layout (batches of 128 and more)
            // give the same outputs.
            let mut fast = Network::new(c.clone(), Device::Cpu, i as u64).expect("valid config builds");
            fast.prepare_streaming();
            let wide = Tensor::randn([130, time, 2], (Kind::Float, Device::Cpu));
            let (wide_out, _) = net.seq(&wide, None).expect("seq runs");
            check_streaming_matches_seq(&fast, &wide, &wide_out);
            check_streaming_matches_seq(&fast, &x, &out);
        } else {
            assert!(matches!(step, Err(ModelError::InvalidConfig(_))));
        }
    }
}

/// Stepping the streams one reading at a time — with their states batched together, split
/// apart and re-joined in another order in the middle — gives `seq`'s outputs.
fn check_streaming_matches_seq(net: &Network, x: &Tensor, seq_out: &Output) {
    let batch = x.size()[0];
    let mut state = net.zero_state(batch);
    for t in 0..x.size()[1] {
        if t == 2 {
            let parts = state.split();
            assert_eq!(parts.len() as i64, batch);
            let reversed: Vec<State> = parts.iter().rev().map(State::shallow_clone).collect();
            let joined = State::cat(&reversed).expect("same network");
            let order: Vec<i64> = (0..batch).rev().collect();
            state = joined.select(&order).expect("indices in range");
        }
        let (out, next) = net.step(&x.select(1, t), &state).expect("step runs");
        state = next;
        for (stepped, whole) in output_tensors(&out).into_iter().zip(output_tensors(seq_out)) {
            let diff = max_abs_diff(&to_vec(stepped), &to_vec(&whole.select(1, t)));
            assert!(diff < 1e-5, "step {t} differs from seq by {diff}: {:?}", net.config());
        }
    }
}

fn invalid(mut edit: impl FnMut(&mut NetworkConfig)) -> (NetworkConfig, String) {
    let mut c = NetworkConfig::forecaster(Architecture::Lstm, 8, 1);
    edit(&mut c);
    let err = c.validate(Usage::Offline).and_then(|_| c.validate(Usage::Streaming)).expect_err("invalid config");
    assert!(matches!(err, ModelError::InvalidConfig(_)), "{err}");
    (c, err.to_string())
}

#[test]
fn every_invalid_configuration_is_refused_naming_the_problem() {
    type Edit = Box<dyn Fn(&mut NetworkConfig)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("input_size", Box::new(|c| c.input_size = 0)),
        ("hidden", Box::new(|c| c.hidden = 0)),
        ("hidden", Box::new(|c| c.hidden = 1_000_000)),
        ("layers", Box::new(|c| c.layers = 0)),
        ("layers", Box::new(|c| c.layers = 17)),
        ("pre", Box::new(|c| c.pre = vec![4, 0])),
        ("post", Box::new(|c| c.post = vec![100_000])),
        ("post", Box::new(|c| c.post = vec![1; 17])),
        ("activation", Box::new(|c| c.activation = Activation::Identity)),
        ("channels", Box::new(|c| c.head = HeadConfig::Gaussian { channels: 0 })),
        ("classes", Box::new(|c| c.head = HeadConfig::Classifier { classes: 1, mode: ClassifierMode::ManyToMany })),
        ("bidirectional", Box::new(|c| c.bidirectional = true)),
        (
            "bidirectional",
            Box::new(|c| {
                c.bidirectional = true;
                c.head = HeadConfig::Classifier { classes: 2, mode: ClassifierMode::ManyToMany };
            }),
        ),
        ("many-to-one", Box::new(|c| c.head = HeadConfig::Classifier { classes: 2, mode: ClassifierMode::ManyToOne })),
    ];
    for (needle, edit) in cases {
        let (c, message) = invalid(edit);
        assert!(message.contains(needle), "error for {c:?} should name {needle}: {message}");
        if c.validate(Usage::Offline).is_err() {
            assert!(Network::new(c.clone(), Device::Cpu, 0).is_err(), "an invalid network is not built: {c:?}");
        }
    }
}

#[test]
fn a_bidirectional_tagger_is_valid_offline_but_not_for_streaming() {
    let c =
        config(Architecture::Gru, 2, 4, true, HeadConfig::Classifier { classes: 3, mode: ClassifierMode::ManyToMany });
    assert!(c.validate(Usage::Offline).is_ok());
    let err = c.validate(Usage::Streaming).expect_err("not streamable").to_string();
    assert!(err.contains("bidirectional"), "{err}");
    let net = Network::new(c, Device::Cpu, 1).expect("builds for offline use");
    assert!(net.check_streamable().is_err());
}

#[test]
fn wrong_inputs_and_states_are_errors_not_crashes() {
    let net =
        Network::new(config(Architecture::Lstm, 2, 4, false, HeadConfig::Gaussian { channels: 2 }), Device::Cpu, 3)
            .expect("valid");
    let f = (Kind::Float, Device::Cpu);
    let shape_err = |r: Result<(Output, State), ModelError>| matches!(r, Err(ModelError::Shape(_)));
    assert!(shape_err(net.seq(&Tensor::zeros([2, 5, 3], f), None)), "wrong input width");
    assert!(shape_err(net.seq(&Tensor::zeros([2, 5], f), None)), "missing time dimension");
    assert!(shape_err(net.seq(&Tensor::zeros([2, 0, 2], f), None)), "empty window");
    assert!(shape_err(net.seq(&Tensor::zeros([2, 5, 2], (Kind::Double, Device::Cpu)), None)), "wrong kind");
    assert!(shape_err(net.seq(&Tensor::zeros([3, 5, 2], f), Some(&net.zero_state(2)))), "state batch differs");
    assert!(shape_err(net.step(&Tensor::zeros([2, 2, 1], f), &net.zero_state(2))), "step needs [batch, input]");
    let gru =
        Network::new(config(Architecture::Gru, 2, 4, false, HeadConfig::Gaussian { channels: 2 }), Device::Cpu, 3)
            .expect("valid");
    assert!(shape_err(net.step(&Tensor::zeros([2, 2], f), &gru.zero_state(2))), "a GRU state has no cell");
    assert!(State::cat(&[net.zero_state(1), gru.zero_state(1)]).is_err(), "states of different networks");
    assert!(State::cat(&[]).is_err());
    assert!(net.zero_state(2).select(&[0, 2]).is_err(), "index out of range");
}

#[test]
fn the_default_device_is_cuda_exactly_when_libtorch_sees_one() {
    let device = tsad::model::default_device();
    assert_eq!(device.is_cuda(), tch::Cuda::is_available());
}

#[test]
fn a_residual_forecaster_adds_each_step_input_to_its_mean_in_seq_and_step() {
    let plain = config(Architecture::Gru, 1, 4, false, HeadConfig::Gaussian { channels: 2 });
    let residual = NetworkConfig { residual: true, ..plain.clone() };
    // Same seed, same weights: only the head's mean differs, by the input.
    let (a, b) =
        (Network::new(plain, Device::Cpu, 5).expect("valid"), Network::new(residual, Device::Cpu, 5).expect("valid"));
    let xs = Tensor::randn([3, 6, 2], (Kind::Float, Device::Cpu));
    let mean = |out: Output| match out {
        Output::Gaussian { mean, .. } => mean,
        Output::Logits(_) => panic!("a forecaster"),
    };
    let (pa, _) = a.seq(&xs, None).expect("runs");
    let (pb, _) = b.seq(&xs, None).expect("runs");
    let (ma, mb) = (mean(pa), mean(pb));
    assert!(max_abs_diff(&to_vec(&(&ma + &xs)), &to_vec(&mb)) < 1e-6);
    // Stepping gives the same numbers.
    let mut state = b.zero_state(3);
    for t in 0..6 {
        let x = xs.select(1, t);
        let (out, next) = b.step(&x, &state).expect("steps");
        assert!(max_abs_diff(&to_vec(&mean(out)), &to_vec(&mb.select(1, t))) < 1e-5);
        state = next;
    }
    // Only a forecaster with one head channel per input can be residual.
    let c = NetworkConfig {
        residual: true,
        ..config(Architecture::Lstm, 1, 4, false, HeadConfig::Gaussian { channels: 1 })
    };
    assert!(c.validate(Usage::Streaming).expect_err("refused").to_string().contains("residual"));
    let c = NetworkConfig {
        residual: true,
        ..config(
            Architecture::Lstm,
            1,
            4,
            false,
            HeadConfig::Classifier { classes: 2, mode: ClassifierMode::ManyToMany },
        )
    };
    assert!(c.validate(Usage::Offline).expect_err("refused").to_string().contains("residual"));
}
