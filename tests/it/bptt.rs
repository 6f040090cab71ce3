//! The lecture's back-propagation-through-time formulas for the Simple RNN with softmax
//! and cross-entropy, written out by hand, against libtorch's autograd (DESIGN.md §2):
//!
//! ∇z(t) = a_t − y_t;  ∇s(τ) = Vᵀ∇z(τ);  ∇s(t) = Wᵀ diag(1 − s²_{t+1}) ∇s(t+1) + Vᵀ∇z(t);
//! ∇d = Σ∇z;  ∇b = Σ diag(1 − s²_t)∇s(t);  ∇V = Σ ∇z(t) s_tᵀ;
//! ∇W = Σ diag(1 − s²_t)∇s(t) s_{t−1}ᵀ;  ∇U = Σ diag(1 − s²_t)∇s(t) x_tᵀ.
use rand::{Rng, SeedableRng};
use tch::{Device, Kind, Tensor};
use tsad::model::{Activation, Architecture, ClassifierMode, HeadConfig, Network, NetworkConfig, Output};

use crate::support::{max_abs_diff, param, set_param, to_vec};

const IN: usize = 3;
const HIDDEN: usize = 4;
const CLASSES: usize = 3;
const TAU: usize = 7;

type Matrix = Vec<Vec<f64>>;

fn mat(values: &[f64], rows: usize, cols: usize) -> Matrix {
    (0..rows).map(|r| values[r * cols..(r + 1) * cols].to_vec()).collect()
}

fn mul(m: &Matrix, v: &[f64]) -> Vec<f64> {
    m.iter().map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum()).collect()
}

fn mul_t(m: &Matrix, v: &[f64]) -> Vec<f64> {
    (0..m[0].len()).map(|c| m.iter().zip(v).map(|(row, x)| row[c] * x).sum()).collect()
}

fn add_outer(acc: &mut Matrix, a: &[f64], b: &[f64]) {
    for (row, x) in acc.iter_mut().zip(a) {
        for (cell, y) in row.iter_mut().zip(b) {
            *cell += x * y;
        }
    }
}

fn flatten(m: &Matrix) -> Vec<f64> {
    m.iter().flatten().copied().collect()
}

#[test]
fn hand_written_bptt_gradients_equal_libtorch_autograd() {
    let config = NetworkConfig {
        architecture: Architecture::Rnn,
        activation: Activation::Tanh,
        input_size: IN,
        hidden: HIDDEN,
        layers: 1,
        bidirectional: false,
        pre: vec![],
        post: vec![],
        head: HeadConfig::Classifier { classes: CLASSES, mode: ClassifierMode::ManyToMany },
        residual: false,
    };
    let mut net = Network::new(config, Device::Cpu, 11).expect("valid config");
    net.to_double();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut random = |n: usize, scale: f64| -> Vec<f64> { (0..n).map(|_| rng.random_range(-scale..scale)).collect() };
    // The lecture has one bias b; libtorch splits it into b_ih + b_hh.
    let (u, w, v) = (random(HIDDEN * IN, 0.8), random(HIDDEN * HIDDEN, 0.8), random(CLASSES * HIDDEN, 0.8));
    let (b_ih, b_hh, d) = (random(HIDDEN, 0.3), random(HIDDEN, 0.3), random(CLASSES, 0.3));
    let xs = random(TAU * IN, 1.5);
    let labels: Vec<i64> = (0..TAU).map(|t| ((t * 7 + 3) % CLASSES) as i64).collect();
    set_param(&net, "rnn.weight_ih_l0", &u);
    set_param(&net, "rnn.weight_hh_l0", &w);
    set_param(&net, "rnn.bias_ih_l0", &b_ih);
    set_param(&net, "rnn.bias_hh_l0", &b_hh);
    set_param(&net, "head.weight", &v);
    set_param(&net, "head.bias", &d);

    // libtorch: total loss = Σ_t cross-entropy(z_t, y_t) over the window.
    let x = Tensor::from_slice(&xs).reshape([1, TAU as i64, IN as i64]).to_kind(Kind::Double);
    let (out, _) = net.seq(&x, None).expect("seq runs");
    let Output::Logits(z) = out else { panic!("classifier gives logits") };
    let y = Tensor::from_slice(&labels).reshape([TAU as i64, 1]);
    let loss =
        -z.reshape([TAU as i64, CLASSES as i64]).log_softmax(-1, Kind::Double).gather(1, &y, false).sum(Kind::Double);
    loss.backward();
    let grad =
        |name: &str| -> Vec<f64> { to_vec(&net.var_store().variables().get(name).expect("parameter exists").grad()) };

    // By hand, following the lecture.
    let (um, wm, vm) = (mat(&u, HIDDEN, IN), mat(&w, HIDDEN, HIDDEN), mat(&v, CLASSES, HIDDEN));
    let b: Vec<f64> = b_ih.iter().zip(&b_hh).map(|(a, c)| a + c).collect();
    let mut s = vec![vec![0.0; HIDDEN]]; // s[0] = s_0 = 0, s[t] for t = 1..=τ
    let mut dz = Vec::new(); // ∇z(t) for t = 1..=τ at index t − 1
    let mut hand_loss = 0.0;
    for t in 1..=TAU {
        let x_t = &xs[(t - 1) * IN..t * IN];
        let pre: Vec<f64> =
            mul(&wm, &s[t - 1]).iter().zip(mul(&um, x_t)).zip(&b).map(|((a, c), e)| a + c + e).collect();
        s.push(pre.iter().map(|p| p.tanh()).collect());
        let zt: Vec<f64> = mul(&vm, &s[t]).iter().zip(&d).map(|(a, c)| a + c).collect();
        let max = zt.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = zt.iter().map(|z| (z - max).exp()).collect();
        let a: Vec<f64> = e.iter().map(|v| v / e.iter().sum::<f64>()).collect();
        let label = labels[t - 1] as usize;
        hand_loss -= a[label].ln();
        dz.push(a.iter().enumerate().map(|(k, ak)| ak - if k == label { 1.0 } else { 0.0 }).collect::<Vec<f64>>());
    }
    let one_minus_sq = |st: &[f64]| -> Vec<f64> { st.iter().map(|v| 1.0 - v * v).collect() };
    let mut ds = vec![vec![0.0; HIDDEN]; TAU + 1];
    ds[TAU] = mul_t(&vm, &dz[TAU - 1]);
    for t in (1..TAU).rev() {
        let through: Vec<f64> = one_minus_sq(&s[t + 1]).iter().zip(&ds[t + 1]).map(|(a, c)| a * c).collect();
        ds[t] = mul_t(&wm, &through).iter().zip(mul_t(&vm, &dz[t - 1])).map(|(a, c)| a + c).collect();
    }
    let (mut gu, mut gw, mut gv) =
        (vec![vec![0.0; IN]; HIDDEN], vec![vec![0.0; HIDDEN]; HIDDEN], vec![vec![0.0; HIDDEN]; CLASSES]);
    let (mut gb, mut gd) = (vec![0.0; HIDDEN], vec![0.0; CLASSES]);
    for t in 1..=TAU {
        let delta: Vec<f64> = one_minus_sq(&s[t]).iter().zip(&ds[t]).map(|(a, c)| a * c).collect();
        gd.iter_mut().zip(&dz[t - 1]).for_each(|(g, v)| *g += v);
        gb.iter_mut().zip(&delta).for_each(|(g, v)| *g += v);
        add_outer(&mut gv, &dz[t - 1], &s[t]);
        add_outer(&mut gw, &delta, &s[t - 1]);
        add_outer(&mut gu, &delta, &xs[(t - 1) * IN..t * IN]);
    }

    let tol = 1e-6;
    assert!((loss.double_value(&[]) - hand_loss).abs() < tol, "loss");
    for (name, hand) in [
        ("rnn.weight_ih_l0", flatten(&gu)),
        ("rnn.weight_hh_l0", flatten(&gw)),
        ("rnn.bias_ih_l0", gb.clone()),
        ("rnn.bias_hh_l0", gb.clone()),
        ("head.weight", flatten(&gv)),
        ("head.bias", gd.clone()),
    ] {
        let diff = max_abs_diff(&grad(name), &hand);
        assert!(diff < tol, "∇{name}: autograd and the lecture's formulas differ by {diff}");
        assert!(hand.iter().any(|g| g.abs() > 1e-3), "∇{name} is trivially small");
    }
    // The weights themselves are untouched by the check.
    assert_eq!(param(&net, "rnn.weight_hh_l0"), w);
}
