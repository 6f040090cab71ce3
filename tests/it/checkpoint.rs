//! Checkpoints: save → load gives bit-identical outputs, and broken files are refused.
use tch::{Device, Kind, Tensor};
use tsad::model::{Architecture, ModelCard, Network, NetworkConfig, Normaliser, Output};

use crate::support::to_vec;

fn forecaster(architecture: Architecture) -> (Network, ModelCard) {
    let mut config = NetworkConfig::forecaster(architecture, 6, 2);
    config.pre = vec![3];
    let net = Network::new(config.clone(), Device::Cpu, 9).expect("valid");
    let card = ModelCard::new(config, Normaliser { mean: vec![10.0], std: vec![2.5] }, "test".into());
    (net, card)
}

fn means(net: &Network, x: &Tensor) -> Vec<f64> {
    match net.seq(x, None).expect("seq runs").0 {
        Output::Gaussian { mean, log_var } => [to_vec(&mean), to_vec(&log_var)].concat(),
        Output::Logits(_) => unreachable!("forecasters have a Gaussian head"),
    }
}

#[test]
fn save_then_load_gives_bit_identical_outputs_and_the_same_card() {
    for architecture in [Architecture::Rnn, Architecture::Lstm, Architecture::Gru] {
        let dir = tempfile::tempdir().expect("temp dir");
        let (net, card) = forecaster(architecture);
        net.save(dir.path(), &card).expect("saves");
        let (loaded, loaded_card) = Network::load(dir.path(), Device::Cpu).expect("loads");
        assert_eq!(loaded_card, card);
        let x = Tensor::randn([4, 20, 1], (Kind::Float, Device::Cpu));
        let (a, b) = (means(&net, &x), means(&loaded, &x));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{architecture:?} outputs differ");
        for (name, var) in net.var_store().variables() {
            assert!(var.equal(&loaded.var_store().variables()[&name]), "{name} differs");
        }
    }
}

#[test]
fn broken_model_directories_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (net, card) = forecaster(Architecture::Lstm);
    assert!(Network::load(dir.path(), Device::Cpu).is_err(), "empty directory");
    net.save(dir.path(), &card).expect("saves");

    let json_path = dir.path().join("model.json");
    let json = std::fs::read_to_string(&json_path).expect("card written");
    std::fs::write(&json_path, "{ not json").expect("write");
    let err = Network::load(dir.path(), Device::Cpu).expect_err("bad json").to_string();
    assert!(err.contains("model.json"), "{err}");

    // A card that describes a different network than the weights.
    std::fs::write(&json_path, json.replace("\"hidden\": 6", "\"hidden\": 7")).expect("write");
    let err = Network::load(dir.path(), Device::Cpu).expect_err("shape mismatch").to_string();
    assert!(err.contains("weights.safetensors"), "{err}");

    // An invalid network configuration in the card.
    std::fs::write(&json_path, json.replace("\"layers\": 2", "\"layers\": 0")).expect("write");
    assert!(Network::load(dir.path(), Device::Cpu).is_err());

    // A normaliser that would divide by zero.
    std::fs::write(&json_path, json.replace("2.5", "0.0")).expect("write");
    assert!(Network::load(dir.path(), Device::Cpu).is_err());

    std::fs::write(&json_path, &json).expect("write");
    std::fs::write(dir.path().join("weights.safetensors"), b"garbage").expect("write");
    assert!(Network::load(dir.path(), Device::Cpu).is_err());
}

#[test]
fn a_card_for_another_network_is_not_saved() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (net, mut card) = forecaster(Architecture::Gru);
    card.network.hidden += 1;
    assert!(net.save(dir.path(), &card).is_err());
}
