//! tsad: streaming time-series anomaly detection with recurrent neural networks.
//!
//! `model` holds the networks and their training (the only module with tensors);
//! `import` reads series from files; `cli` is the command line.
pub mod cli;
pub mod import;
pub mod model;
