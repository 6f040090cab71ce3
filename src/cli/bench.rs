//! `tsad bench`: first measurements of the service's speed.
//!
//! - `tsad bench inference`: the inference core alone — batched `step` calls of the default
//!   model on one thread, stream-steps per second for several stream counts.
//! - `tsad bench http`: a `tsad serve` on a scratch SQLite database (or `--database-url`),
//!   driven over loopback HTTP by concurrent clients posting multi-stream batches; readings
//!   per second committed and the p50/p99 time from request to verdicts.
//!
//! Results print as a table and, with `--json FILE`, are written as JSON.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use super::CliError;
use crate::app::Application;
use crate::config::{default_models_dir, Settings};
use crate::model::Network;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// Batched inference steps of the default model, no HTTP, no database.
    Inference {
        /// Stream counts to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,100,1000,10000")]
        streams: Vec<usize>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Model directory [default: models/default/<active>].
        #[arg(long)]
        model: Option<PathBuf>,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// HTTP ingest into a running service on a scratch database.
    Http {
        /// Stream counts to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        streams: Vec<usize>,
        /// Readings per request (one per stream, many streams per request).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Database [default: a scratch SQLite file].
        #[arg(long)]
        database_url: Option<String>,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let result = match args.what {
        BenchKind::Inference { streams, seconds, model, json } => inference(&streams, seconds, model, json),
        BenchKind::Http { streams, batch, clients, seconds, database_url, json } => {
            if batch == 0 || clients == 0 || streams.contains(&0) {
                return Err(CliError::Usage(anyhow!("--batch, --clients and --streams must be positive")));
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::Runtime(e.into()))?;
            runtime.block_on(http(&streams, batch, clients, seconds, database_url, json))
        }
    };
    result.map_err(CliError::Runtime)
}

fn write_json(path: Option<PathBuf>, value: serde_json::Value) -> anyhow::Result<()> {
    if let Some(path) = path {
        std::fs::write(&path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| path.display().to_string())?;
    }
    Ok(())
}

fn inference(streams: &[usize], seconds: f64, model: Option<PathBuf>, json_out: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = match model {
        Some(dir) => dir,
        None => crate::inference::ModelCatalog::new(default_models_dir()).active("default")?.dir.clone(),
    };
    tch::set_num_threads(1);
    let _guard = tch::no_grad_guard();
    let (net, card) = Network::load(&dir, tch::Device::Cpu)?;
    println!(
        "inference core: {} hidden {} × {} layer(s), one thread, batched step calls",
        card.network.architecture.as_str(),
        card.network.hidden,
        card.network.layers
    );
    println!("{:>10} {:>16} {:>14}", "streams", "steps/s", "µs per call");
    let mut rows = Vec::new();
    for &n in streams {
        let x = tch::Tensor::randn([n as i64, 1], (tch::Kind::Float, tch::Device::Cpu));
        let mut state = net.zero_state(n as i64);
        let started = Instant::now();
        let mut calls = 0u64;
        while started.elapsed().as_secs_f64() < seconds {
            let (_, next) = net.step(&x, &state)?;
            state = next;
            calls += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let steps_per_s = (calls * n as u64) as f64 / elapsed;
        let us_per_call = elapsed / calls as f64 * 1e6;
        println!("{n:>10} {steps_per_s:>16.0} {us_per_call:>14.1}");
        rows.push(json!({ "streams": n, "steps_per_s": steps_per_s, "us_per_call": us_per_call }));
    }
    write_json(json_out, json!({ "benchmark": "inference", "model": dir, "results": rows }))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn http(
    streams: &[usize],
    batch: usize,
    clients: usize,
    seconds: f64,
    database_url: Option<String>,
    json_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    println!("HTTP ingest over loopback: {clients} clients, {batch} readings a request (one per stream)");
    println!("{:>10} {:>14} {:>12} {:>12} {:>10}", "streams", "readings/s", "p50 ms", "p99 ms", "requests");
    let mut rows = Vec::new();
    for &n in streams {
        let scratch = tempfile::tempdir()?;
        let url =
            database_url.clone().unwrap_or_else(|| format!("sqlite://{}", scratch.path().join("bench.db").display()));
        let settings = Settings::for_tests(&url, default_models_dir());
        let app = Application::build(settings).await?;
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut tasks = Vec::new();
        for w in 0..clients {
            // Each client owns its streams, so timestamps per stream only ever increase.
            let mine: Vec<usize> = (w..n).step_by(clients).collect();
            let client = client.clone();
            let run_tag = rand::random::<u32>();
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut accepted = 0u64;
                let mut round = 0i64;
                let base = 1_767_225_600_000i64;
                'outer: loop {
                    for chunk in mine.chunks(batch) {
                        if Instant::now() >= deadline {
                            break 'outer;
                        }
                        let readings: Vec<serde_json::Value> = chunk
                            .iter()
                            .map(|s| {
                                let phase = (round as f64 + *s as f64) / 30.0;
                                json!({"stream": format!("bench-{run_tag}-{s}"), "ts": base + round * 1000, "value": phase.sin()})
                            })
                            .collect();
                        let started = Instant::now();
                        let response = client
                            .post(format!("http://{addr}/v1/readings"))
                            .json(&json!({ "readings": readings }))
                            .send()
                            .await;
                        match response {
                            Ok(r) if r.status().is_success() => {
                                let _ = r.bytes().await;
                                latencies.push(started.elapsed().as_secs_f64() * 1e3);
                                accepted += chunk.len() as u64;
                            }
                            Ok(r) => {
                                let status = r.status();
                                let text = r.text().await.unwrap_or_default();
                                return Err(anyhow!("request failed: {status} {text}"));
                            }
                            Err(e) => return Err(anyhow!("request failed: {e}")),
                        }
                    }
                    round += 1;
                }
                Ok((accepted, latencies))
            }));
        }
        let started = Instant::now();
        let mut accepted = 0;
        let mut latencies = Vec::new();
        for t in tasks {
            let (a, l) = t.await??;
            accepted += a;
            latencies.extend(l);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let _ = stop.send(());
        server.await??;
        latencies.sort_by(f64::total_cmp);
        let rate = accepted as f64 / elapsed;
        let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
        println!("{n:>10} {rate:>14.0} {p50:>12.2} {p99:>12.2} {:>10}", latencies.len());
        rows.push(json!({
            "streams": n, "readings_per_s": rate, "p50_ms": p50, "p99_ms": p99,
            "requests": latencies.len(), "batch": batch, "clients": clients,
            "database": if url.starts_with("sqlite") { "sqlite" } else { "postgres" },
        }));
    }
    write_json(json_out, json!({ "benchmark": "http", "results": rows }))
}
