//! The lecture's Simple RNN worked example (DESIGN.md §2), to the digits given there.
use tch::{Device, Kind, Tensor};
use tsad::model::{Activation, Architecture, ClassifierMode, HeadConfig, Network, NetworkConfig, Output};

use crate::support::{set_param, to_vec};

const U: [f64; 4] = [0.9, 0.2, 0.4, 0.6];
const W: [f64; 4] = [0.5, 0.8, 0.4, 0.2];
const V: [f64; 4] = [0.3, 0.8, 0.9, 0.4];
const X: [f64; 4] = [1.0, 2.0, 2.0, 1.0];

fn lecture_network(activation: Activation) -> Network {
    let config = NetworkConfig {
        architecture: Architecture::Rnn,
        activation,
        input_size: 2,
        hidden: 2,
        layers: 1,
        bidirectional: false,
        pre: vec![],
        post: vec![],
        head: HeadConfig::Classifier { classes: 2, mode: ClassifierMode::ManyToMany },
        residual: false,
    };
    let mut net = Network::new(config, Device::Cpu, 0).expect("valid config");
    net.to_double();
    set_param(&net, "rnn.weight_ih_l0", &U);
    set_param(&net, "rnn.weight_hh_l0", &W);
    set_param(&net, "rnn.bias_ih_l0", &[0.0, 0.0]);
    set_param(&net, "rnn.bias_hh_l0", &[0.0, 0.0]);
    set_param(&net, "head.weight", &V);
    set_param(&net, "head.bias", &[0.0, 0.0]);
    net
}

fn assert_digits(actual: &[f64], expected: &[f64], what: &str) {
    for (a, e) in actual.iter().zip(expected) {
        assert!((a - e).abs() < 5e-6, "{what}: {actual:?} != {expected:?}");
    }
}

fn inputs() -> Tensor {
    Tensor::from_slice(&X).reshape([1, 2, 2]).to_kind(Kind::Double)
}

#[test]
fn the_identity_rnn_reproduces_the_lectures_worked_example() {
    let net = lecture_network(Activation::Identity);
    // s1 from one step, s2 and z, a from the two-step sequence.
    let (_, s1) = net.seq(&inputs().narrow(1, 0, 1), None).expect("seq runs");
    let (out, s2) = net.seq(&inputs(), None).expect("seq runs");
    assert_digits(&to_vec(&s1.h), &[1.3, 1.6], "s1");
    assert_digits(&to_vec(&s2.h), &[3.93, 2.24], "s2");
    let Output::Logits(z) = out else { panic!("classifier gives logits") };
    let z2 = z.select(1, 1);
    assert_digits(&to_vec(&z2), &[2.971, 4.433], "z2");
    assert_digits(&to_vec(&z2.softmax(-1, Kind::Double)), &[0.18816, 0.81184], "a2");
    assert_digits(&to_vec(&z.select(1, 0)), &[1.67, 1.81], "z1 = V s1");
}

#[test]
fn streaming_steps_give_the_same_numbers_as_the_sequence() {
    let net = lecture_network(Activation::Identity);
    let mut state = net.zero_state(1);
    let mut last = None;
    for t in 0..2 {
        let (out, next) = net.step(&inputs().select(1, t), &state).expect("step runs");
        state = next;
        last = Some(out);
    }
    let Some(Output::Logits(z2)) = last else { panic!("classifier gives logits") };
    assert_digits(&to_vec(&state.h), &[3.93, 2.24], "s2 by steps");
    assert_digits(&to_vec(&z2), &[2.971, 4.433], "z2 by steps");
}

/// The same network with tanh, checked against the recurrence computed here by hand:
/// s_t = tanh(W s_{t-1} + U x_t), z_t = V s_t, a_t = softmax(z_t).
#[test]
fn the_tanh_rnn_matches_an_independent_computation() {
    let net = lecture_network(Activation::Tanh);
    let matvec = |m: &[f64; 4], v: [f64; 2]| [m[0] * v[0] + m[1] * v[1], m[2] * v[0] + m[3] * v[1]];
    let mut s = [0.0, 0.0];
    let mut zs = Vec::new();
    for t in 0..2 {
        let x = [X[2 * t], X[2 * t + 1]];
        let (ws, ux) = (matvec(&W, s), matvec(&U, x));
        s = [(ws[0] + ux[0]).tanh(), (ws[1] + ux[1]).tanh()];
        zs.extend(matvec(&V, s));
    }
    let e = [zs[2].exp(), zs[3].exp()];
    let a2 = [e[0] / (e[0] + e[1]), e[1] / (e[0] + e[1])];

    let (out, state) = net.seq(&inputs(), None).expect("seq runs");
    let Output::Logits(z) = out else { panic!("classifier gives logits") };
    assert_digits(&to_vec(&state.h), &s, "tanh s2");
    assert_digits(&to_vec(&z), &zs, "tanh z");
    assert_digits(&to_vec(&z.select(1, 1).softmax(-1, Kind::Double)), &a2, "tanh a2");
    // Not the identity numbers: the activation really is applied.
    assert!((s[0] - 3.93).abs() > 1.0);
}
