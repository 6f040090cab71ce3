//! Cross-check against PyTorch itself: the same safetensors file run by tsad and by
//! `torch.nn.LSTM/GRU/RNN` (tests/pytorch_reference.py, run by the venv's Python) gives
//! the same outputs, in both directions.
//!
//! Needs `TSAD_PYTHON` (set by .cargo/config.toml to the venv scripts/libtorch.sh makes).
//! Without it the test says so and skips, unless `TSAD_REQUIRE_PYTHON=1` (set by
//! scripts/test.sh and CI), where a missing interpreter is a failure.
use std::path::{Path, PathBuf};
use std::process::Command;

use tch::{Device, Kind, Tensor};
use tsad::model::{
    Architecture, ClassifierMode, HeadConfig, ModelCard, Network, NetworkConfig, Normaliser, Output, State,
};

use crate::support::{max_abs_diff, to_vec};

fn python() -> Option<PathBuf> {
    let required = std::env::var("TSAD_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let found = std::env::var_os("TSAD_PYTHON").map(PathBuf::from).filter(|p| p.exists());
    if found.is_none() {
        assert!(!required, "TSAD_REQUIRE_PYTHON=1 but TSAD_PYTHON does not name an interpreter");
        eprintln!("SKIPPED: PyTorch cross-check: TSAD_PYTHON is not set or missing (run scripts/libtorch.sh)");
    }
    found
}

fn run_reference(python: &Path, command: &str, dirs: &[PathBuf]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pytorch_reference.py");
    let status = Command::new(python).arg(script).arg(command).args(dirs).status().expect("python starts");
    assert!(status.success(), "pytorch_reference.py {command} failed");
}

fn cases() -> Vec<NetworkConfig> {
    let gaussian = HeadConfig::Gaussian { channels: 3 };
    let tagger = HeadConfig::Classifier { classes: 4, mode: ClassifierMode::ManyToMany };
    let base = |architecture, layers, bidirectional, head| NetworkConfig {
        architecture,
        activation: Default::default(),
        input_size: 3,
        hidden: 5,
        layers,
        bidirectional,
        pre: vec![],
        post: vec![],
        head,
        residual: false,
    };
    let mut cases = vec![
        base(Architecture::Lstm, 2, false, gaussian),
        base(Architecture::Gru, 2, false, gaussian),
        base(Architecture::Rnn, 1, false, gaussian),
        base(Architecture::Rnn, 3, false, tagger),
        base(Architecture::Lstm, 2, true, tagger),
        base(Architecture::Gru, 1, true, HeadConfig::Classifier { classes: 3, mode: ClassifierMode::ManyToOne }),
    ];
    let mut dense = base(Architecture::Lstm, 1, false, gaussian);
    dense.pre = vec![6, 4];
    dense.post = vec![7];
    cases.push(dense);
    cases
}

fn tsad_outputs(net: &Network, x: &Tensor) -> (Vec<f64>, State) {
    let (out, state) = tch::no_grad(|| net.seq(x, None)).expect("seq runs");
    let z = match out {
        Output::Gaussian { mean, log_var } => Tensor::cat(&[mean, log_var], -1),
        Output::Logits(z) => z,
    };
    (to_vec(&z), state)
}

fn compare(dir: &Path, net: &Network, x: &Tensor, what: &str) {
    let reference: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("outputs.safetensors")).expect("outputs written").into_iter().collect();
    let (z, state) = tsad_outputs(net, x);
    let cfg = net.config();
    let label = format!("{what} {} layers={} bi={}", cfg.architecture.as_str(), cfg.layers, cfg.bidirectional);
    let dz = max_abs_diff(&z, &to_vec(&reference["z"]));
    let dh = max_abs_diff(&to_vec(&state.h), &to_vec(&reference["h"]));
    assert!(dz <= 1e-5 && dh <= 1e-5, "{label}: outputs differ by {dz}, states by {dh}");
    if let Some(c) = &state.c {
        let dc = max_abs_diff(&to_vec(c), &to_vec(&reference["c"]));
        assert!(dc <= 1e-5, "{label}: cell states differ by {dc}");
    }
}

#[test]
fn tsad_and_pytorch_compute_the_same_networks_from_the_same_file() {
    let Some(python) = python() else { return };
    let root = tempfile::tempdir().expect("temp dir");
    let norm = Normaliser { mean: vec![0.0; 3], std: vec![1.0; 3] };
    let mut dirs = Vec::new();
    let mut nets = Vec::new();
    for (i, config) in cases().into_iter().enumerate() {
        let dir = root.path().join(format!("case{i}"));
        let net = Network::new(config.clone(), Device::Cpu, 100 + i as u64).expect("valid config");
        net.save(&dir, &ModelCard::new(config, norm.clone(), "cross-check".into())).expect("saves");
        let x = Tensor::randn([2, 9, 3], (Kind::Float, Device::Cpu));
        Tensor::write_safetensors(&[("x", &x)], dir.join("inputs.safetensors")).expect("inputs written");
        dirs.push(dir);
        nets.push((net, x));
    }
    run_reference(&python, "run", &dirs);
    for (dir, (net, x)) in dirs.iter().zip(&nets) {
        compare(dir, net, x, "tsad weights:");
    }

    // The reverse: PyTorch initialises and writes the weights, tsad loads them.
    run_reference(&python, "init", &dirs);
    run_reference(&python, "run", &dirs);
    for (dir, (old, x)) in dirs.iter().zip(&nets) {
        let (net, _) = Network::load(dir, Device::Cpu).expect("tsad loads PyTorch's file");
        assert_ne!(
            to_vec(&net.var_store().variables()["head.weight"]),
            to_vec(&old.var_store().variables()["head.weight"]),
            "PyTorch wrote new weights"
        );
        compare(dir, &net, x, "PyTorch weights:");
    }
}

/// `bench training` alternates tsad's loop and PyTorch's (`scripts/bench-training.py`) round
/// by round and reports the medians: each round's rates are in the JSON, and the ratio
/// reported is the median of the rounds' ratios.
#[test]
fn bench_training_alternates_tsad_and_pytorch_and_reports_the_median_ratio() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("training.json");
    let args = ["bench", "training", "--hidden", "8", "--steps", "8", "--batch", "16", "--sequences", "64"];
    let extra = ["--epochs", "1", "--rounds", "3", "--python", python.to_str().expect("utf-8")];
    let run = Command::new(env!("CARGO_BIN_EXE_tsad"))
        .args(args)
        .args(extra)
        .args(["--json", json.to_str().expect("utf-8")])
        .output()
        .expect("tsad runs");
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{stdout}{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
    let rounds = |key: &str| -> Vec<f64> {
        report[key].as_array().unwrap_or(&Vec::new()).iter().filter_map(|v| v.as_f64()).collect()
    };
    let (ours, ratios) = (rounds("tsad_rounds"), rounds("ratio_rounds"));
    let theirs: Vec<f64> =
        report["pytorch"]["rounds"].as_array().expect("PyTorch's rounds").iter().filter_map(|v| v.as_f64()).collect();
    assert_eq!((ours.len(), theirs.len(), ratios.len()), (3, 3, 3), "{report}");
    for ((a, b), r) in ours.iter().zip(&theirs).zip(&ratios) {
        assert!(*a > 0.0 && *b > 0.0 && (a / b - r).abs() < 1e-9, "{report}");
    }
    let mut sorted = ratios.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(report["ratio"].as_f64(), Some(sorted[1]), "{report}");
    assert!(stdout.contains("median:"), "{stdout}");
}
