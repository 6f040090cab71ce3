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

/// The key scope a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Open,
    Read,
    Write,
    Admin,
}

impl Need {
    /// The scope as the API key configuration and the OpenAPI document name it.
    pub fn scope(self) -> Option<&'static str> {
        match self {
            Need::Open => None,
            Need::Read => Some("read"),
            Need::Write => Some("write"),
            Need::Admin => Some("admin"),
        }
    }
}

/// A route the service serves.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    /// The path as the router and the OpenAPI document write it.
    pub template: &'static str,
    /// A concrete path of it to request.
    pub example: &'static str,
    pub need: Need,
    /// Whether `/openapi.json` describes it: every route of the API does; pages for people
    /// (the dashboard, the docs page) do not.
    pub in_openapi: bool,
}

const fn route(method: &'static str, template: &'static str, example: &'static str, need: Need) -> Route {
    Route { method, template, example, need, in_openapi: true }
}

const fn page(template: &'static str, example: &'static str) -> Route {
    Route { method: "GET", template, example, need: Need::Open, in_openapi: false }
}

/// Every route the router serves: `service::every_route_checks_its_scope` requests each with
/// every kind of key, and `openapi::…` checks that the OpenAPI document lists exactly the
/// `in_openapi` ones. A new route goes here, or neither test covers it.
pub const ROUTES: &[Route] = &[
    route("POST", "/v1/streams/{stream}/readings", "/v1/streams/s/readings", Need::Write),
    route("POST", "/v1/readings", "/v1/readings", Need::Write),
    route("PUT", "/v1/streams/{stream}", "/v1/streams/s3", Need::Write),
    route("POST", "/v1/anomalies/{id}/feedback", "/v1/anomalies/1/feedback", Need::Write),
    route("GET", "/v1/streams", "/v1/streams", Need::Read),
    route("GET", "/v1/streams/{stream}", "/v1/streams/s", Need::Read),
    route("GET", "/v1/streams/{stream}/readings", "/v1/streams/s/readings", Need::Read),
    route("GET", "/v1/streams/{stream}/anomalies", "/v1/streams/s/anomalies", Need::Read),
    route("GET", "/v1/anomalies", "/v1/anomalies", Need::Read),
    route("DELETE", "/v1/streams/{stream}", "/v1/streams/s9", Need::Admin),
    route("GET", "/admin/v1/models", "/admin/v1/models", Need::Admin),
    route(
        "POST",
        "/admin/v1/models/{model}/versions/{version}/activate",
        "/admin/v1/models/default/versions/9/activate",
        Need::Admin,
    ),
    route("POST", "/admin/v1/models/{model}/train", "/admin/v1/models/m/train", Need::Admin),
    route("GET", "/admin/v1/jobs", "/admin/v1/jobs", Need::Admin),
    route("GET", "/admin/v1/jobs/{id}", "/admin/v1/jobs/1", Need::Admin),
    route("DELETE", "/admin/v1/jobs/{id}", "/admin/v1/jobs/1", Need::Admin),
    route("GET", "/healthz", "/healthz", Need::Open),
    route("GET", "/readyz", "/readyz", Need::Open),
    route("GET", "/metrics", "/metrics", Need::Open),
    route("GET", "/openapi.json", "/openapi.json", Need::Open),
    page("/docs", "/docs"),
    page("/", "/"),
    page("/assets/{file}", "/assets/app.js"),
];
