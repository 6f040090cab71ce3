//! Helpers shared by the integration tests.
use tch::{Kind, Tensor};
use tsad::model::Network;

/// Overwrites the parameter `name` of `network` with `values` (row-major, its shape).
pub fn set_param(network: &Network, name: &str, values: &[f64]) {
    let vars = network.var_store().variables();
    let mut var = vars.get(name).unwrap_or_else(|| panic!("no parameter {name}")).shallow_clone();
    let source = Tensor::from_slice(values).to_kind(var.kind()).reshape(var.size());
    tch::no_grad(|| var.copy_(&source));
}

/// Parameter `name` of `network` as f64 values, row-major.
pub fn param(network: &Network, name: &str) -> Vec<f64> {
    let vars = network.var_store().variables();
    let var = vars.get(name).unwrap_or_else(|| panic!("no parameter {name}"));
    to_vec(var)
}

/// Any tensor as f64 values, row-major.
pub fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).reshape([-1])).expect("tensor converts")
}

/// Largest absolute elementwise difference.
pub fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
}

/// The noisy sine of the learning tests: period 50 steps, Gaussian noise σ = 0.1.
pub fn noisy_sine(len: usize, seed: u64) -> Vec<f64> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, Normal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.1).expect("valid normal");
    (0..len).map(|t| (2.0 * std::f64::consts::PI * t as f64 / 50.0).sin() + noise.sample(&mut rng)).collect()
}
