//! tsad: streaming time-series anomaly detection with recurrent neural networks.
//!
//! Data flows one way (DESIGN.md §3): `api` (HTTP) → `streams` (one actor per stream) →
//! `inference` (threads owning the weights) and `scoring` (plain maths) → `storage` (sqlx).
//! `model` holds the networks and their training (the only module with tensors besides the
//! inference threads that run them); `synthetic` generates the series the default model
//! learns from; `import` reads series from files; `config`, `metrics`, `app` and `cli`
//! wire it together.
pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod eval;
pub mod import;
pub mod inference;
pub mod metrics;
pub mod model;
mod priority;
pub mod scoring;
pub mod storage;
pub mod streams;
pub mod synthetic;
pub mod training;
