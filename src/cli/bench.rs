//! `tsad bench`: the service's speed, measured (docs/PERFORMANCE.md; `scripts/bench.sh`
//! runs the whole suite).
//!
//! - `tsad bench inference`: the inference core alone — batched `step` calls, no HTTP, no
//!   database, for LSTM and GRU of several widths (random weights: the speed does not
//!   depend on them) or one given model; stream-steps per second with the streams split
//!   over `--threads` workers, and the fraction of the machine's fp32 peak that is.
//! - `tsad bench http`: a `tsad serve` on a scratch SQLite database (or `--database-url`),
//!   driven over loopback HTTP by concurrent clients posting multi-stream batches; readings
//!   per second committed and the p50/p99/p99.9 time from request to verdicts; then the
//!   same load paced at half that rate, single readings one at a time on the idle server,
//!   and requests of the measured shape one at a time (every 10 ms).
//! - `tsad bench training`: sequences per second of tsad's training loop, and of the same
//!   work in PyTorch (`scripts/bench-training.py`) when `--python` is given, as a ratio.
//! - `tsad bench reads`: pages of stored readings read back over HTTP from a database a
//!   long `bench http --keep-database` run filled, cold (page cache dropped) and again.
//! - `tsad bench stalls`: the host itself: a thread a core reads the clock in a loop and
//!   counts the gaps, the time a core was taken away (a hypervisor's steal, other
//!   processes). A latency tail no shorter than these is the host's, not the service's.
//!
//! Results print as a table and, with `--json FILE`, are written as JSON.
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use serde_json::json;

use super::CliError;
use crate::app::Application;
use crate::config::{default_models_dir, Settings};
use crate::model::train::fit;
use crate::model::{Architecture, CancelToken, Dataset, Network, NetworkConfig, Targets, TrainConfig};

mod reads;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Debug, Subcommand)]
enum BenchKind {
    /// Batched inference steps, no HTTP, no database.
    Inference {
        /// Stream counts to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,100,10000,100000")]
        streams: Vec<usize>,
        /// Recurrent cells to measure (comma-separated: lstm, gru).
        #[arg(long, value_delimiter = ',', default_value = "lstm,gru")]
        architectures: Vec<Architecture>,
        /// Hidden widths to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "64,128")]
        hidden: Vec<usize>,
        /// One saved model instead of the matrix above (a version folder).
        #[arg(long)]
        model: Option<PathBuf>,
        /// Worker threads, each stepping its share of the streams with one libtorch thread.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Most streams per step call: a worker steps its share in batches of this many, as
        /// the service's batcher does (`--max-batch`, whose default this is).
        #[arg(long, default_value_t = 1024)]
        batch: usize,
        /// Peak fp32 GFLOP/s of one core, for the fraction of peak; measured on this machine
        /// when not given (independent chains of fused multiply-adds on every worker thread).
        #[arg(long)]
        peak_gflops_per_core: Option<f64>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Training throughput: tsad's loop, and PyTorch's on the same work.
    Training {
        #[arg(long, default_value = "lstm")]
        architecture: Architecture,
        #[arg(long, default_value_t = 64)]
        hidden: usize,
        /// Steps per training window.
        #[arg(long, default_value_t = 64)]
        steps: usize,
        /// Windows per optimiser step.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Training windows per epoch.
        #[arg(long, default_value_t = 4096)]
        sequences: usize,
        /// Timed epochs (after one untimed warm-up epoch).
        #[arg(long, default_value_t = 4)]
        epochs: usize,
        /// Threads on both sides: tsad's training splits each batch over them (one libtorch
        /// thread each, `TrainConfig::threads`); PyTorch runs `torch.set_num_threads`.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// A Python with torch installed: also run scripts/bench-training.py with it.
        #[arg(long)]
        python: Option<PathBuf>,
        /// Rounds of tsad then PyTorch, alternated; the medians are reported. This machine's
        /// speed drifts by tens of percent from one minute to the next, so one run of each,
        /// one after the other, measures the drift as much as the two programs.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=100))]
        rounds: u64,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Judging alone: readings scored against forecasts, no model, no I/O.
    Scoring {
        /// Readings judged for each baseline.
        #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000_000))]
        readings: u64,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// HTTP ingest into a running service on a scratch database.
    Http {
        /// Stream counts to measure (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        streams: Vec<usize>,
        /// Readings per request.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Consecutive readings of each stream in a request: 1 (the default) spreads a
        /// request over `batch` streams; `batch` makes each request one stream's readings.
        #[arg(long, default_value_t = 1)]
        per_stream: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Skip the latency phases: half rate, single readings, one request at a time.
        #[arg(long)]
        throughput_only: bool,
        /// During the maximum-rate phase, print every this many seconds the window's
        /// readings/s and commit latency, the readings stored so far, the process's resident
        /// memory and the database's size on disk (a long run: `--seconds 3600
        /// --report-every 60`; with `--server`, the service's memory and database are not
        /// this process's to see, and show as NaN).
        #[arg(long)]
        report_every: Option<f64>,
        /// The server's inference threads (`--inference-threads` of `tsad serve`) [default:
        /// the CPU cores].
        #[arg(long)]
        inference_threads: Option<usize>,
        /// A PostgreSQL server (`postgres://…`) to measure on, in a scratch database created
        /// on it for each stream count and dropped afterwards, or a SQLite file (used as it
        /// is) [default: a scratch SQLite file].
        #[arg(long)]
        database_url: Option<String>,
        /// Keep the scratch database (SQLite file or PostgreSQL database) and print its URL,
        /// for `tsad bench reads`.
        #[arg(long)]
        keep_database: bool,
        /// Drive a `tsad serve` already running at this URL (`http://HOST:PORT`), a process
        /// of its own with its own settings and database, instead of one started in this
        /// process on a scratch database. The streams the run creates (`bench-…`) stay on it.
        /// Its automatic fits run while it is measured once a stream passes 512 readings
        /// (the benchmark's own service has them off): `tsad serve --auto-train-jobs 0`
        /// measures the same service.
        #[arg(long, value_name = "URL", conflicts_with_all = ["inference_threads", "database_url", "keep_database"])]
        server: Option<String>,
        /// API key for `--server` (one with the `write` scope), sent as a bearer token.
        #[arg(long, requires = "server")]
        key: Option<String>,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The host's stalls: a thread a core reading the clock in a loop, nothing else; the
    /// gaps between two reads are time that core was taken away. Run it on an otherwise
    /// idle machine, before the latency figures it explains.
    Stalls {
        /// Threads, each spinning on a core [default: the CPU cores].
        #[arg(long)]
        threads: Option<usize>,
        /// Seconds to spin.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Pages of stored readings read back over HTTP, one at a time, from a random point of
    /// a random stream's history: from a database `bench http --keep-database` filled.
    Reads {
        /// The database to read: `sqlite://FILE` or `postgres://…/DATABASE`. A server runs
        /// on it as `tsad serve` would (its start migrates an older schema); the benchmark
        /// itself only reads.
        #[arg(long)]
        database_url: String,
        /// Pages read in each pass.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        queries: u64,
        /// Readings a page (the API's `limit`).
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Empty the kernel's page cache before the first pass (Linux, root), so that it
        /// reads from the disk.
        #[arg(long)]
        drop_caches: bool,
        /// Seed of the pages' choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
}

pub fn run(args: BenchArgs) -> Result<(), CliError> {
    let result = match args.what {
        BenchKind::Inference {
            streams,
            architectures,
            hidden,
            model,
            threads,
            batch,
            peak_gflops_per_core,
            seconds,
            json,
        } => {
            if threads == 0
                || batch == 0
                || streams.contains(&0)
                || hidden.contains(&0)
                || seconds.is_nan()
                || seconds <= 0.0
                || peak_gflops_per_core.is_some_and(|p| p.is_nan() || p <= 0.0)
            {
                return Err(CliError::Usage(anyhow!(
                    "--threads, --batch, --streams, --hidden, --seconds and --peak-gflops-per-core must be positive"
                )));
            }
            let shapes = Shapes { architectures, hidden, model };
            let peak_gflops_per_core = peak_gflops_per_core.unwrap_or_else(|| {
                let measured = fma_peak_gflops(threads, 1.0);
                println!("fp32 fused multiply-add peak, measured on {threads} thread(s): {measured:.1} GFLOP/s a core");
                measured
            });
            let work = StepWork { threads, batch, peak_per_core: peak_gflops_per_core, seconds };
            inference(&streams, &shapes, &work, json)
        }
        BenchKind::Training {
            architecture,
            hidden,
            steps,
            batch,
            sequences,
            epochs,
            threads,
            python,
            rounds,
            json,
        } => {
            if [hidden, steps, batch, sequences, epochs, threads].contains(&0) {
                return Err(CliError::Usage(anyhow!("every size and count must be positive")));
            }
            let work = TrainingWork { architecture, hidden, steps, batch, sequences, epochs, threads };
            training(&work, python, rounds as usize, json)
        }
        BenchKind::Scoring { readings, json } => scoring(readings, json),
        BenchKind::Stalls { threads, seconds, json } => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            if threads == 0 || !(seconds.is_finite() && seconds > 0.0 && seconds <= 3600.0) {
                return Err(CliError::Usage(anyhow!("--threads must be positive and --seconds from above 0 to 3600")));
            }
            stalls(threads, Duration::from_secs_f64(seconds), json)
        }
        BenchKind::Http {
            streams,
            batch,
            per_stream,
            clients,
            seconds,
            throughput_only,
            report_every,
            inference_threads,
            database_url,
            keep_database,
            server,
            key,
            json,
        } => {
            if batch == 0 || clients == 0 || streams.contains(&0) || inference_threads == Some(0) {
                return Err(CliError::Usage(anyhow!(
                    "--batch, --clients, --streams and --inference-threads must be positive"
                )));
            }
            if !(seconds.is_finite() && seconds > 0.0) || report_every.is_some_and(|r| !(r.is_finite() && r >= 0.1)) {
                return Err(CliError::Usage(anyhow!(
                    "--seconds must be positive and --report-every at least 0.1 (seconds)"
                )));
            }
            if per_stream == 0 || batch % per_stream != 0 {
                return Err(CliError::Usage(anyhow!("--per-stream must be positive and divide --batch")));
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::Runtime(e.into()))?;
            let load = Load { batch, per_stream, clients, seconds, latency: !throughput_only, report_every };
            let target = match server {
                Some(url) => {
                    let running = Running::parse(&url, key)?;
                    Serve::Running(runtime.block_on(running.endpoint()).map_err(CliError::Runtime)?)
                }
                None => Serve::Own { inference_threads, database_url, keep_database },
            };
            runtime.block_on(http(&streams, &load, target, json))
        }
        BenchKind::Reads { database_url, queries, limit, drop_caches, seed, json } => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| CliError::Runtime(e.into()))?;
            let work =
                reads::ReadsWork { database_url, queries: queries as usize, limit: limit as usize, drop_caches, seed };
            runtime.block_on(reads::reads(work, json))
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

/// `bench scoring`: nanoseconds a reading takes to judge, for each baseline, on one stream
/// of one channel: a daily sine with noise, a spike every 997 readings and a level shift
/// halfway, against a forecast that knows the sine and the noise (no model runs), the
/// normaliser updated after each reading as a stream's is.
fn scoring(readings: u64, json_path: Option<PathBuf>) -> anyhow::Result<()> {
    use crate::scoring::{Baseline, Forecast, RunningNormaliser, Scorer, ScorerConfig};
    use rand::{Rng, SeedableRng};
    println!("judging alone: one stream of one channel, {readings} readings a baseline");
    println!("baseline      ns a reading   flagged");
    let mut rows = Vec::new();
    for baseline in [Baseline::Forecast, Baseline::Warmup, Baseline::History] {
        let config = ScorerConfig { baseline, ..ScorerConfig::default() };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut scorer = Scorer::new(1);
        let mut norm = RunningNormaliser::new(1);
        let mut flagged = 0u64;
        let mut elapsed = Duration::ZERO;
        for t in 0..readings {
            let phase = (t % 1440) as f64 / 1440.0 * std::f64::consts::TAU;
            let clean = 10.0 + 3.0 * phase.sin() + if t >= readings / 2 { 2.0 } else { 0.0 };
            let noise: f64 = rng.random::<f64>() - 0.5;
            let value = clean + noise + if t % 997 == 996 { 8.0 } else { 0.0 };
            // The forecast of this reading, in the normaliser's units as they were before it
            // (its mean is what it maps to 0).
            let mean = (clean - norm.denormalise(0, 0.0)) / norm.scale(0);
            let log_var = (0.29 / norm.scale(0)).powi(2).ln();
            let forecast = Forecast { mean: vec![mean], log_var: vec![log_var] };
            let started = Instant::now();
            let verdict = scorer.judge(&config, &[value], (t > 0).then_some(&forecast), &norm);
            elapsed += started.elapsed();
            flagged += u64::from(verdict.anomaly);
            norm.update(&[value]);
        }
        let ns = elapsed.as_secs_f64() * 1e9 / readings as f64;
        println!("{:<12} {ns:>12.0} {flagged:>9}", baseline.as_str());
        rows.push(
            json!({ "baseline": baseline.as_str(), "ns_per_reading": ns, "flagged": flagged, "readings": readings }),
        );
    }
    write_json(json_path, json!({ "scoring": rows }))
}

/// Gaps between consecutive reads of the clock by a thread that does nothing else: those of
/// a millisecond or more are time its core was taken away.
#[derive(Debug, Default, Clone, PartialEq)]
struct Gaps {
    /// Clock reads.
    reads: u64,
    longest: Duration,
    over_1ms: u64,
    over_10ms: u64,
    over_50ms: u64,
    /// The gaps of a millisecond or more, summed.
    lost: Duration,
}

impl Gaps {
    fn observe(&mut self, gap: Duration) {
        self.reads += 1;
        self.longest = self.longest.max(gap);
        if gap >= Duration::from_millis(1) {
            self.over_1ms += 1;
            self.lost += gap;
        }
        self.over_10ms += u64::from(gap >= Duration::from_millis(10));
        self.over_50ms += u64::from(gap >= Duration::from_millis(50));
    }

    /// Reads the clock until `length` has passed.
    fn spin(length: Duration) -> Gaps {
        let mut gaps = Gaps::default();
        let start = Instant::now();
        let mut last = start;
        loop {
            let now = Instant::now();
            gaps.observe(now - last);
            last = now;
            if now - start >= length {
                return gaps;
            }
        }
    }

    fn json(&self, length: Duration) -> serde_json::Value {
        json!({
            "clock_reads": self.reads,
            "longest_ms": self.longest.as_secs_f64() * 1e3,
            "over_1ms": self.over_1ms,
            "over_10ms": self.over_10ms,
            "over_50ms": self.over_50ms,
            "lost_percent": self.lost.as_secs_f64() / length.as_secs_f64() * 100.0,
        })
    }
}

/// `bench stalls`: `threads` threads read the clock for `length`, each on its own (the
/// kernel spreads them over the cores), and report the gaps.
fn stalls(threads: usize, length: Duration, json_path: Option<PathBuf>) -> anyhow::Result<()> {
    println!(
        "the host's stalls: {threads} thread(s) reading the clock for {:.0} s (gaps of 1 ms or more: the core taken away)",
        length.as_secs_f64()
    );
    let spinning: Vec<_> = (0..threads).map(|_| std::thread::spawn(move || Gaps::spin(length))).collect();
    let gaps = spinning
        .into_iter()
        .map(|t| t.join().map_err(|_| anyhow!("a spinning thread panicked")))
        .collect::<anyhow::Result<Vec<Gaps>>>()?;
    println!("thread  longest ms  ≥ 1 ms  ≥ 10 ms  ≥ 50 ms  time lost %");
    for (i, g) in gaps.iter().enumerate() {
        println!(
            "{i:>6} {:>11.1} {:>7} {:>8} {:>8} {:>12.2}",
            g.longest.as_secs_f64() * 1e3,
            g.over_1ms,
            g.over_10ms,
            g.over_50ms,
            g.lost.as_secs_f64() / length.as_secs_f64() * 100.0
        );
    }
    let rows: Vec<_> = gaps.iter().map(|g| g.json(length)).collect();
    write_json(
        json_path,
        json!({ "stalls": { "threads": threads, "seconds": length.as_secs_f64(), "per_thread": rows } }),
    )
}

/// What `bench inference` measures: one saved model, or every architecture × width.
struct Shapes {
    architectures: Vec<Architecture>,
    hidden: Vec<usize>,
    model: Option<PathBuf>,
}

/// Multiply-add FLOPs of one step of `config` for one stream: the recurrent matrix products
/// (2 · gates · hidden · (input + hidden) per layer) and the head. Element-wise work (gate
/// activations, the cell update) is left out, so the fraction of peak is a lower bound.
pub fn flops_per_step(config: &NetworkConfig) -> f64 {
    let gates = config.architecture.gates() as f64;
    let h = config.hidden as f64;
    let mut input = config.core_input() as f64;
    let mut flops = 0.0;
    for _ in 0..config.layers {
        flops += 2.0 * gates * h * (input + h);
        input = h;
    }
    flops + 2.0 * config.head_input() as f64 * config.head_output() as f64
}

/// The fp32 GFLOP/s one core reaches with fused multiply-adds, measured on `threads` threads
/// at once for `seconds` (so that cores sharing a clock budget are measured as loaded): twelve
/// independent accumulator chains as wide as the CPU allows (AVX-512, else AVX2 with FMA,
/// else scalar `mul_add`, which understates the peak). The mean over the threads.
pub fn fma_peak_gflops(threads: usize, seconds: f64) -> f64 {
    let per_thread: Vec<f64> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.max(1))
            .map(|_| {
                scope.spawn(move || {
                    let started = Instant::now();
                    let mut flops = 0.0;
                    while started.elapsed().as_secs_f64() < seconds {
                        flops += fma_chains(1 << 20);
                    }
                    flops / started.elapsed().as_secs_f64() / 1e9
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0.0)).collect()
    });
    per_thread.iter().sum::<f64>() / per_thread.len() as f64
}

/// Runs `rounds` rounds of twelve independent vector FMAs; returns the FLOPs done.
fn fma_chains(rounds: usize) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked on the line above).
            return unsafe { fma_chains_avx512(rounds) };
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked on the line above).
            return unsafe { fma_chains_avx2(rounds) };
        }
    }
    let mut acc = [0f32; 12];
    for (i, a) in acc.iter_mut().enumerate() {
        *a = i as f32;
    }
    let (b, c) = (std::hint::black_box(1.000_000_1f32), std::hint::black_box(1e-7f32));
    for _ in 0..rounds {
        for a in &mut acc {
            *a = a.mul_add(b, c);
        }
    }
    std::hint::black_box(acc);
    (rounds * 12 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn fma_chains_avx512(rounds: usize) -> f64 {
    use std::arch::x86_64::*;
    let b = _mm512_set1_ps(std::hint::black_box(1.000_000_1));
    let c = _mm512_set1_ps(std::hint::black_box(1e-7));
    let mut acc = [_mm512_setzero_ps(); 12];
    for _ in 0..rounds {
        for a in &mut acc {
            *a = _mm512_fmadd_ps(*a, b, c);
        }
    }
    std::hint::black_box(acc);
    (rounds * 12 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn fma_chains_avx2(rounds: usize) -> f64 {
    use std::arch::x86_64::*;
    let b = _mm256_set1_ps(std::hint::black_box(1.000_000_1));
    let c = _mm256_set1_ps(std::hint::black_box(1e-7));
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..rounds {
        for a in &mut acc {
            *a = _mm256_fmadd_ps(*a, b, c);
        }
    }
    std::hint::black_box(acc);
    (rounds * 12 * 8 * 2) as f64
}

/// How `bench inference` steps the streams.
struct StepWork {
    threads: usize,
    batch: usize,
    peak_per_core: f64,
    seconds: f64,
}

fn inference(streams: &[usize], shapes: &Shapes, work: &StepWork, json_out: Option<PathBuf>) -> anyhow::Result<()> {
    let StepWork { threads, batch: max_batch, peak_per_core, seconds } = *work;
    tch::set_num_threads(1);
    // Tensors are not `Sync`: every worker builds its own copy of the network.
    let mut networks: Vec<(String, NetworkConfig, Option<PathBuf>)> = Vec::new();
    if let Some(dir) = &shapes.model {
        let (net, _) = Network::load(dir, tch::Device::Cpu)?;
        networks.push((dir.display().to_string(), net.config().clone(), Some(dir.clone())));
    } else {
        for &architecture in &shapes.architectures {
            for &hidden in &shapes.hidden {
                let config = NetworkConfig::forecaster(architecture, hidden, 1);
                networks.push((format!("{}-{hidden}", architecture.as_str()), config, None));
            }
        }
    }
    let peak = peak_per_core * threads as f64 * 1e9;
    println!(
        "inference core: step calls of at most {max_batch} streams, {threads} worker thread(s) with one libtorch thread each"
    );
    println!("{:<10} {:>9} {:>14} {:>12} {:>10}", "model", "streams", "steps/s", "µs per call", "% of peak");
    let mut rows = Vec::new();
    let mut bounds = Vec::new();
    for (name, config, dir) in &networks {
        let flops = flops_per_step(config);
        let bound = products_only(config, threads, max_batch, seconds.min(1.0))?;
        println!(
            "{name:<10} its matrix products alone (batch {max_batch}, {threads} thread(s)): {bound:.0} stream-steps/s, {:.1} % of peak",
            100.0 * bound * flops / peak
        );
        bounds.push(json!({ "model": name, "max_batch": max_batch, "products_only_steps_per_s": bound }));
        for &n in streams {
            let workers = threads.min(n);
            let (steps, calls, elapsed) = std::thread::scope(|scope| -> anyhow::Result<(u64, u64, f64)> {
                let handles: Vec<_> = (0..workers)
                    .map(|w| {
                        let batch = (n / workers + usize::from(w < n % workers)) as i64;
                        scope.spawn(move || -> anyhow::Result<(u64, u64, f64)> {
                            tch::set_num_threads(1);
                            let _guard = tch::no_grad_guard();
                            let mut net = match dir {
                                Some(dir) => Network::load(dir, tch::Device::Cpu)?.0,
                                None => Network::new(config.clone(), tch::Device::Cpu, 0)?,
                            };
                            // As the service's inference threads do.
                            net.prepare_streaming();
                            let input = config.input_size as i64;
                            // The worker's streams in batches, each with its inputs and state.
                            let mut batches: Vec<(tch::Tensor, crate::model::State)> = (0..batch)
                                .step_by(max_batch)
                                .map(|start| {
                                    let size = (batch - start).min(max_batch as i64);
                                    let x = tch::Tensor::randn([size, input], (tch::Kind::Float, tch::Device::Cpu));
                                    (x, net.zero_state(size))
                                })
                                .collect();
                            let started = Instant::now();
                            let (mut calls, mut rounds) = (0u64, 0u64);
                            while started.elapsed().as_secs_f64() < seconds {
                                for (x, state) in &mut batches {
                                    let (_, next) = net.step(x, state)?;
                                    *state = next;
                                    calls += 1;
                                }
                                rounds += 1;
                            }
                            Ok((rounds * batch as u64, calls, started.elapsed().as_secs_f64()))
                        })
                    })
                    .collect();
                let mut total = (0u64, 0u64, 0f64);
                for h in handles {
                    let (steps, calls, elapsed) = h.join().map_err(|_| anyhow!("a worker panicked"))??;
                    total = (total.0 + steps, total.1 + calls, total.2.max(elapsed));
                }
                Ok(total)
            })?;
            let steps_per_s = steps as f64 / elapsed;
            let us_per_call = elapsed * workers as f64 / calls as f64 * 1e6;
            let fraction = steps_per_s * flops / peak;
            println!("{name:<10} {n:>9} {steps_per_s:>14.0} {us_per_call:>12.1} {:>10.2}", 100.0 * fraction);
            rows.push(json!({
                "model": name, "streams": n, "threads": workers, "max_batch": max_batch, "steps_per_s": steps_per_s,
                "us_per_call": us_per_call, "flops_per_step": flops, "fraction_of_peak": fraction,
            }));
        }
    }
    write_json(
        json_out,
        json!({ "benchmark": "inference", "peak_gflops_per_core": peak_per_core, "products_only": bounds, "results": rows }),
    )
}

/// Stream-steps per second `config`'s matrix products alone would allow — the recurrent
/// layers' gate products and the head's, as `addmm` calls of `batch` rows, on `threads`
/// threads at once with one libtorch thread each — which bounds what the whole step can
/// reach with libtorch's matrix kernels on this machine.
fn products_only(config: &NetworkConfig, threads: usize, batch: usize, seconds: f64) -> anyhow::Result<f64> {
    let options = (tch::Kind::Float, tch::Device::Cpu);
    let gates = (config.architecture.gates() * config.hidden) as i64;
    let (rows, h) = (batch as i64, config.hidden as i64);
    let mut shapes = Vec::new();
    let mut input = config.core_input() as i64;
    for _ in 0..config.layers {
        shapes.push((input + h, gates));
        input = h;
    }
    shapes.push((config.head_input() as i64, config.head_output() as i64));
    let rates = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let shapes = &shapes;
                scope.spawn(move || {
                    tch::set_num_threads(1);
                    let _guard = tch::no_grad_guard();
                    let operands: Vec<_> = shapes
                        .iter()
                        .map(|&(k, n)| {
                            (
                                tch::Tensor::randn([n], options),
                                tch::Tensor::randn([rows, k], options),
                                tch::Tensor::randn([k, n], options),
                            )
                        })
                        .collect();
                    let started = Instant::now();
                    let mut calls = 0u64;
                    while started.elapsed().as_secs_f64() < seconds {
                        for (bias, a, b) in &operands {
                            let _ = bias.addmm(a, b);
                        }
                        calls += 1;
                    }
                    calls as f64 * rows as f64 / started.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect::<Result<Vec<f64>, _>>()
    });
    Ok(rates.map_err(|_| anyhow!("a worker panicked"))?.iter().sum())
}

/// What `bench training` runs.
struct TrainingWork {
    architecture: Architecture,
    hidden: usize,
    steps: usize,
    batch: usize,
    sequences: usize,
    epochs: usize,
    threads: usize,
}

/// `n` windows of a noisy sine, inputs `[n, steps, 1]` and next-step targets.
fn sine_windows(n: usize, steps: usize, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut values = Vec::with_capacity(n * (steps + 1));
    for _ in 0..n {
        let phase = rng.random_range(0.0..std::f32::consts::TAU);
        for t in 0..=steps {
            let noise: f32 = rng.random_range(-0.17..0.17);
            values.push((phase + t as f32 / 8.0).sin() + noise);
        }
    }
    let all = tch::Tensor::from_slice(&values).reshape([n as i64, steps as i64 + 1, 1]);
    Dataset {
        inputs: all.narrow(1, 0, steps as i64).contiguous(),
        targets: Targets::Forecast(all.narrow(1, 1, steps as i64).contiguous()),
    }
}

fn training(
    work: &TrainingWork,
    python: Option<PathBuf>,
    rounds: usize,
    json_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let train = sine_windows(work.sequences, work.steps, 1);
    let val = sine_windows((work.sequences / 10).max(1), work.steps, 2);
    println!(
        "training {}-{}: windows of {} steps, batches of {}, {} thread(s), {} round(s)",
        work.architecture.as_str(),
        work.hidden,
        work.steps,
        work.batch,
        work.threads,
        rounds
    );
    println!("{:<8} {:>22} {:>22} {:>8}", "round", "tsad sequences/s", "PyTorch sequences/s", "ratio");
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut implementation = None;
    for round in 1..=rounds {
        let rate = tsad_training(work, &train, &val)?;
        ours.push(rate);
        let Some(python) = &python else {
            println!("{round:<8} {rate:>22.0}");
            continue;
        };
        let their = pytorch_training(work, python)?;
        let their_rate = their["sequences_per_s"].as_f64().context("sequences_per_s")?;
        implementation = their["implementation"].as_str().map(str::to_string);
        println!("{round:<8} {rate:>22.0} {their_rate:>22.0} {:>8.2}", rate / their_rate);
        theirs.push(their_rate);
        ratios.push(rate / their_rate);
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    };
    let range =
        |v: &[f64]| v.iter().copied().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
    let mut result = json!({
        "benchmark": "training", "architecture": work.architecture.as_str(), "hidden": work.hidden,
        "steps": work.steps, "batch": work.batch, "threads": work.threads, "rounds": rounds,
        "tsad_sequences_per_s": median(&ours), "tsad_rounds": ours,
    });
    if !ratios.is_empty() {
        let (low, high) = range(&ratios);
        println!(
            "median: tsad {:.0}, {} {:.0} sequences/s; tsad / PyTorch {:.2} (rounds {low:.2}–{high:.2})",
            median(&ours),
            implementation.as_deref().unwrap_or("pytorch"),
            median(&theirs),
            median(&ratios)
        );
        result["pytorch"] = json!({
            "implementation": implementation, "sequences_per_s": median(&theirs), "rounds": theirs,
        });
        result["ratio"] = json!(median(&ratios));
        result["ratio_rounds"] = json!(ratios);
    }
    write_json(json_out, result)
}

/// One run of tsad's training loop (`model::train::fit`) on `work`: sequences a second over
/// the epochs after the first.
fn tsad_training(work: &TrainingWork, train: &Dataset, val: &Dataset) -> anyhow::Result<f64> {
    let config = NetworkConfig::forecaster(work.architecture, work.hidden, 1);
    let mut network = Network::new(config, tch::Device::Cpu, 0)?;
    let train_config = TrainConfig {
        epochs: work.epochs + 1,
        batch_size: work.batch,
        learning_rate: 5e-3,
        patience: work.epochs + 1,
        lr_decay: 1.0,
        threads: work.threads,
        ..TrainConfig::default()
    };
    let mut first_epoch = Duration::ZERO;
    let report = fit(&mut network, train, val, &train_config, &CancelToken::new(), |e| {
        if e.epoch == 1 {
            first_epoch = e.elapsed;
        }
    })?;
    let timed = (report.duration - first_epoch).as_secs_f64();
    Ok((work.epochs * work.sequences) as f64 / timed)
}

/// One run of `scripts/bench-training.py` on `work` with `python`: its JSON line.
fn pytorch_training(work: &TrainingWork, python: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/bench-training.py");
    let output = std::process::Command::new(python)
        .arg(&script)
        .args(["--architecture", work.architecture.as_str()])
        .args(["--hidden", &work.hidden.to_string(), "--steps", &work.steps.to_string()])
        .args(["--batch", &work.batch.to_string(), "--sequences", &work.sequences.to_string()])
        .args(["--epochs", &work.epochs.to_string(), "--threads", &work.threads.to_string()])
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    anyhow::ensure!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).context("the script's JSON line")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// How often `bench http`'s last phase sends one request of the measured shape (or as soon as
/// the answer to the one before came, if later).
const ALONE_EVERY: Duration = Duration::from_millis(10);

/// How a phase's clients pace their requests.
#[derive(Debug, Clone, Copy)]
enum Pacing {
    /// One request every interval whatever the server does; a request sent late because
    /// the answer before it came late counts from when it was due.
    OpenLoop(Duration),
    /// One request at a time, at most one every interval: each counts from when it went, so
    /// a request slower than the interval delays the next rather than adding to its latency.
    OneAtATime(Duration),
}

impl Pacing {
    /// The interval between a client's requests.
    fn every(self) -> Duration {
        match self {
            Pacing::OpenLoop(every) | Pacing::OneAtATime(every) => every,
        }
    }
}

/// The load `bench http` offers.
struct Load {
    batch: usize,
    /// Consecutive readings of one stream in a request.
    per_stream: usize,
    clients: usize,
    seconds: f64,
    /// Also measure latency at half the rate reached, of single readings, and of requests of
    /// this shape one at a time.
    latency: bool,
    /// Seconds between the maximum phase's progress lines, if wanted.
    report_every: Option<f64>,
}

/// How one client drives its streams.
#[derive(Debug, Clone, Copy)]
struct Plan {
    batch: usize,
    per_stream: usize,
    base: i64,
    deadline: Instant,
    /// Pacing, the first request at `.1` after the start.
    pace: Option<(Pacing, Duration)>,
    once: bool,
}

/// One client posting batches of one reading per stream of `names` (each with its index in
/// `steps`, the stream's next step: its readings' Unix ms timestamps from `base`, a second
/// apart, and a sine of its own) until `deadline` (or after one round over its streams with
/// `once`), one request every `pace` if given; returns the readings accepted and each
/// request's latency, ms.
///
/// Paced open loop, a client keeps to its schedule whatever the server does, and a request sent late
/// because the answer to the one before came late counts from the moment the schedule meant
/// to send it: a server that falls behind shows as latency rather than as requests never
/// sent (the load generator's "coordinated omission"). A request whose client was idle
/// when it fell due counts from when it went: tokio's timer wakes a sleeper up to a
/// millisecond after its deadline (its resolution), the client's lateness, not the
/// server's.
/// Paced one at a time, a request sent late counts from when it went: the
/// phase measures a request's own time, not a queue of the client's.
async fn drive(
    client: reqwest::Client,
    addr: std::net::SocketAddr,
    names: Vec<(usize, String)>,
    steps: Steps,
    plan: Plan,
) -> anyhow::Result<(u64, Vec<f64>)> {
    let Plan { batch, per_stream, base, deadline, pace, once } = plan;
    let streams_per_request = batch / per_stream;
    let mut latencies = Vec::new();
    let mut accepted = 0u64;
    let start = Instant::now();
    let mut sent = 0u32;
    'outer: loop {
        for chunk in names.chunks(streams_per_request) {
            if Instant::now() >= deadline {
                break 'outer;
            }
            // The body is written straight out, as a client that owns its data would: the
            // load generator shares the machine with the server, so its work is kept small.
            // A request of one stream's readings goes to that stream's own endpoint.
            let one_stream = chunk.len() == 1;
            let mut body = String::with_capacity(chunk.len() * per_stream * 64 + 16);
            body.push_str("{\"readings\":[");
            for (i, (index, s)) in chunk.iter().enumerate() {
                let first = steps[*index].load(Ordering::Relaxed);
                for j in 0..per_stream as i64 {
                    let step = first + j;
                    let phase = (step as f64 + *index as f64) / 30.0;
                    if i + j as usize > 0 {
                        body.push(',');
                    }
                    if !one_stream {
                        let _ = write!(body, "{{\"stream\":\"{s}\",");
                    } else {
                        body.push('{');
                    }
                    let _ = write!(body, "\"ts\":{},\"value\":{}}}", base + step * 1000, phase.sin());
                }
            }
            body.push_str("]}");
            let url = if one_stream {
                format!("http://{addr}/v1/streams/{}/readings", chunk[0].1)
            } else {
                format!("http://{addr}/v1/readings")
            };
            let started = match pace {
                Some((pacing, offset)) => {
                    let due = start + offset + pacing.every() * sent;
                    sent += 1;
                    if due >= deadline {
                        break 'outer;
                    }
                    if Instant::now() < due {
                        tokio::time::sleep_until(due.into()).await;
                        Instant::now()
                    } else if matches!(pacing, Pacing::OpenLoop(_)) {
                        due
                    } else {
                        Instant::now()
                    }
                }
                None => Instant::now(),
            };
            let response =
                client.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body).send().await;
            match response {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    latencies.push(started.elapsed().as_secs_f64() * 1e3);
                    accepted += (chunk.len() * per_stream) as u64;
                    for (index, _) in chunk {
                        steps[*index].fetch_add(per_stream as i64, Ordering::Relaxed);
                    }
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    return Err(anyhow!("request failed: {status} {text}"));
                }
                Err(e) => return Err(anyhow!("request failed: {e}")),
            }
        }
        if once {
            break;
        }
    }
    Ok((accepted, latencies))
}

/// Each stream's next step (reading) of its series, by its index: a phase goes on with its
/// streams' series where the phase before left them, as a sensor's readings go on, whichever
/// client sends them and however many readings of a stream a request carries. (Each phase
/// once began its series again 1e9 ms later, a jump in time and in value that no steady load
/// makes.)
type Steps = Arc<[AtomicI64]>;

/// Steps for `n` streams, each at its first.
fn steps(n: usize) -> Steps {
    (0..n).map(|_| AtomicI64::new(0)).collect()
}

/// Runs `load.clients` clients over `n` streams for `load.seconds` (or one round over the
/// streams with `once`), each stream's readings from its step in `steps` on; each client
/// sends one request every `pace` when given, the clients' turns evenly spread over it.
/// Returns readings per second and the sorted latencies.
async fn phase(
    endpoint: &Endpoint,
    tag: u32,
    n: usize,
    load: &Load,
    (base, steps): (i64, &Steps),
    pace: Option<Pacing>,
    once: bool,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let seconds = if once { 3600.0 } else { load.seconds };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..load.clients.min(n))
        .map(|w| {
            // Each client owns its streams, so timestamps per stream only ever increase.
            let names = (w..n).step_by(load.clients).map(|s| (s, format!("bench-{tag}-{s}"))).collect();
            // Paced clients take turns evenly (client w a w-th of the period after client
            // 0), so requests arrive spread over time, not in bursts of one per client.
            let pace = pace.map(|p| (p, p.every().mul_f64(w as f64 / load.clients.min(n) as f64)));
            let plan = Plan { batch: load.batch, per_stream: load.per_stream, base, deadline, pace, once };
            tokio::spawn(drive(endpoint.client.clone(), endpoint.addr, names, steps.clone(), plan))
        })
        .collect();
    let (mut accepted, mut latencies) = (0, Vec::new());
    for t in tasks {
        let (a, l) = t.await??;
        accepted += a;
        latencies.extend(l);
    }
    latencies.sort_by(f64::total_cmp);
    Ok((accepted as f64 / started.elapsed().as_secs_f64(), latencies))
}

/// Sums, counts and cumulative bucket counts of the server's latency and size histograms,
/// from `/metrics`, when they were read, and the scoring states the server had written
/// (`tsad_snapshots_total`: each costs the writer a few KB, so phases compare only beside
/// the count). After [`ServerMeans::since`], what happened between two reads.
struct ServerMeans {
    series: Vec<Series>,
    read: Instant,
    /// Seconds between the two reads, after [`ServerMeans::since`].
    seconds: Option<f64>,
    snapshots: f64,
    /// Readings committed (`tsad_readings_total`).
    readings: f64,
}

/// One histogram as scraped: its sum, its count, and `(upper bound, cumulative count)` per
/// bucket.
struct Series {
    name: &'static str,
    sum: f64,
    count: f64,
    buckets: Vec<(f64, f64)>,
}

/// The histograms `bench http` reports the means of, with their units.
const SERVER_HISTOGRAMS: [(&str, &str); 6] = [
    ("verdict_latency_seconds", "ms"),
    ("inference_latency_seconds", "ms"),
    ("inference_batch_size", ""),
    ("commit_latency_seconds", "ms"),
    ("commit_rows", ""),
    ("compaction_latency_seconds", "ms"),
];

impl Series {
    /// The upper bound of the bucket holding the 99th percentile of what was observed (the
    /// buckets double, so this bounds p99 within a factor of two), in the series' unit.
    fn p99_bound(&self) -> f64 {
        let target = 0.99 * self.count;
        self.buckets.iter().find(|&&(_, cumulative)| cumulative >= target).map_or(f64::NAN, |&(le, _)| le)
    }
}

impl ServerMeans {
    /// What was observed after `before`.
    fn since(&self, before: &ServerMeans) -> ServerMeans {
        let pairs = self.series.iter().zip(&before.series);
        ServerMeans {
            series: pairs
                .map(|(now, then)| Series {
                    name: now.name,
                    sum: now.sum - then.sum,
                    count: now.count - then.count,
                    buckets: now.buckets.iter().zip(&then.buckets).map(|(&(le, c), &(_, c0))| (le, c - c0)).collect(),
                })
                .collect(),
            read: self.read,
            seconds: Some(self.read.duration_since(before.read).as_secs_f64()),
            snapshots: self.snapshots - before.snapshots,
            readings: self.readings - before.readings,
        }
    }

    /// The shares of the interval the storage writer spent committing and moving SQLite's
    /// readings log (the sums of their latencies over its length): near 1 together, the
    /// writer, one thread, is what bounds the rate.
    fn writer_busy(&self) -> Option<(f64, f64)> {
        let seconds = self.seconds?;
        let sum = |name: &str| self.series.iter().find(|s| s.name == name).map_or(0.0, |s| s.sum);
        (seconds > 0.0).then(|| (sum("commit_latency_seconds") / seconds, sum("compaction_latency_seconds") / seconds))
    }

    /// Each histogram's name, mean and p99 bound (milliseconds for latencies), NaN when
    /// nothing was observed.
    fn stats(&self) -> impl Iterator<Item = (&'static str, f64, f64, &'static str)> + '_ {
        self.series.iter().zip(SERVER_HISTOGRAMS).map(|(series, (_, unit))| {
            let scale = if unit == "ms" { 1e3 } else { 1.0 };
            let mean = if series.count > 0.0 { scale * series.sum / series.count } else { f64::NAN };
            (series.name, mean, scale * series.p99_bound(), unit)
        })
    }

    fn describe(&self) -> String {
        let short = |name: &str| name.trim_end_matches("_seconds").trim_end_matches("_size").to_string();
        let parts: Vec<String> = self
            .stats()
            .filter(|&(_, mean, ..)| !mean.is_nan())
            .map(|(name, mean, p99, unit)| match unit {
                "ms" => format!("{} {mean:.1}{unit} (p99 ≤ {p99:.2})", short(name)),
                _ => format!("{} {mean:.1}", short(name)),
            })
            .collect();
        let busy = self.writer_busy().map(|(commits, moves)| {
            format!(
                ", writer busy {:.0} % (commits {:.0} %, log moves {:.0} %)",
                100.0 * (commits + moves),
                100.0 * commits,
                100.0 * moves
            )
        });
        parts.join(", ") + &busy.unwrap_or_default() + &format!(", states written {:.0}", self.snapshots)
    }

    fn json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for (name, mean, p99, unit) in self.stats() {
            out.insert(name.to_string(), json!(mean));
            if unit == "ms" {
                out.insert(format!("{name}_p99_bound"), json!(p99));
            }
        }
        out.insert("snapshots_written".into(), json!(self.snapshots));
        if let Some((commits, moves)) = self.writer_busy() {
            out.insert("writer_commit_busy".into(), json!(commits));
            out.insert("writer_log_move_busy".into(), json!(moves));
        }
        serde_json::Value::Object(out)
    }
}

async fn server_means(addr: std::net::SocketAddr) -> anyhow::Result<ServerMeans> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
    let value = |series: String| {
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()).and_then(|rest| rest.trim().parse::<f64>().ok()))
            .unwrap_or(0.0)
    };
    let buckets = |name: &str| -> Vec<(f64, f64)> {
        let prefix = format!("tsad_{name}_bucket{{le=\"");
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix.as_str()))
            .filter_map(|rest| {
                let (le, count) = rest.split_once("\"}")?;
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
                Some((le, count.trim().parse().ok()?))
            })
            .collect()
    };
    Ok(ServerMeans {
        series: SERVER_HISTOGRAMS
            .iter()
            .map(|&(name, _)| Series {
                name,
                sum: value(format!("tsad_{name}_sum ")),
                count: value(format!("tsad_{name}_count ")),
                buckets: buckets(name),
            })
            .collect(),
        read: Instant::now(),
        seconds: None,
        snapshots: value("tsad_snapshots_total ".to_string()),
        readings: value("tsad_readings_total ".to_string()),
    })
}

/// `bench http --report-every`: a line every `every` while the maximum phase runs (until
/// `finished`): the window's committed readings/s and mean commit latency, the readings
/// committed since the phase began (`start` is the counter then), the process's resident
/// memory and the database's size on disk. Returns the windows as JSON.
async fn progress(
    addr: std::net::SocketAddr,
    every: Duration,
    database_url: Option<String>,
    start: f64,
    mut finished: tokio::sync::oneshot::Receiver<()>,
) -> Vec<serde_json::Value> {
    let began = Instant::now();
    let mut ticks = tokio::time::interval_at((began + every).into(), every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A service of this process: its database, and its resident memory (this process's);
    // of a running one, neither.
    let mut size = match &database_url {
        Some(url) => DatabaseSize::open(url).await,
        None => DatabaseSize::Unknown,
    };
    let mut last = match server_means(addr).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("--report-every: the server's metrics are unreadable ({e}); no progress lines");
            return Vec::new();
        }
    };
    println!(
        "{:>10} {:>12} {:>14} {:>16} {:>10} {:>12}",
        "elapsed s", "readings/s", "stored", "commit mean ms", "RSS MiB", "database MiB"
    );
    let mut windows = Vec::new();
    loop {
        tokio::select! {
            _ = &mut finished => break,
            _ = ticks.tick() => {}
        }
        let Ok(now) = server_means(addr).await else { break };
        let window = now.since(&last);
        let seconds = window.seconds.unwrap_or(f64::NAN);
        let rate = window.readings / seconds;
        let commit = window.stats().find(|s| s.0 == "commit_latency_seconds").map_or(f64::NAN, |s| s.1);
        let rss = resident_bytes().filter(|_| database_url.is_some()).map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64);
        let database = size.bytes().await.map_or(f64::NAN, |b| b as f64 / (1 << 20) as f64);
        let elapsed = began.elapsed().as_secs_f64();
        let stored = now.readings - start;
        println!("{elapsed:>10.0} {rate:>12.0} {stored:>14.0} {commit:>16.2} {rss:>10.0} {database:>12.0}");
        windows.push(json!({
            "elapsed_s": elapsed, "readings_per_s": rate, "readings_stored": stored,
            "commit_mean_ms": commit, "rss_mib": rss, "database_mib": database,
        }));
        last = now;
    }
    windows
}

/// The process's resident set (Linux), in bytes.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
    kib.parse::<u64>().ok().map(|k| k * 1024)
}

/// How `--report-every` measures the database on disk: a SQLite file with its write-ahead
/// log, or a PostgreSQL database (`pg_database_size`).
enum DatabaseSize {
    Sqlite(PathBuf),
    Postgres(sqlx::PgConnection),
    Unknown,
}

impl DatabaseSize {
    async fn open(url: &str) -> DatabaseSize {
        use sqlx::Connection;
        if url.starts_with("sqlite:") {
            return match url.parse::<sqlx::sqlite::SqliteConnectOptions>() {
                Ok(options) => DatabaseSize::Sqlite(options.get_filename().to_path_buf()),
                Err(_) => DatabaseSize::Unknown,
            };
        }
        match sqlx::PgConnection::connect(url).await {
            Ok(conn) => DatabaseSize::Postgres(conn),
            Err(_) => DatabaseSize::Unknown,
        }
    }

    async fn bytes(&mut self) -> Option<u64> {
        match self {
            DatabaseSize::Sqlite(path) => {
                let file = |suffix: &str| {
                    let mut name = path.clone().into_os_string();
                    name.push(suffix);
                    std::fs::metadata(name).map_or(0, |m| m.len())
                };
                Some(file("") + file("-wal"))
            }
            DatabaseSize::Postgres(conn) => sqlx::query_scalar::<_, i64>("SELECT pg_database_size(current_database())")
                .fetch_one(conn)
                .await
                .ok()
                .map(|b| b as u64),
            DatabaseSize::Unknown => None,
        }
    }
}

/// Waits until the server has settled after a loaded phase: its readings log empty (it
/// moves it after 1 s idle; at most 10 s), then `quiet` more for what runs beside the
/// commits (SQLite's checkpoints copying the WAL the phase wrote into the database file;
/// PostgreSQL's own checkpoints and vacuum).
async fn settle(addr: std::net::SocketAddr, quiet: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(format!("http://{addr}/metrics")).await?.text().await?;
        let rows = text.lines().find_map(|l| l.strip_prefix("tsad_readings_log_rows ")).map(str::trim);
        if rows.is_none_or(|r| r == "0") || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(quiet).await;
    Ok(())
}

async fn http(streams: &[usize], load: &Load, target: Serve, json_out: Option<PathBuf>) -> anyhow::Result<()> {
    let (batch, clients) = (load.batch, load.clients);
    println!(
        "HTTP ingest over loopback: {clients} clients, each posting its streams' readings, at most {batch} a request, \
         {} of each stream",
        load.per_stream
    );
    if let Serve::Running(endpoint) = &target {
        println!("the service running at {}", endpoint.addr);
    }
    println!(
        "{:>10} {:<14} {:>12} {:>9} {:>9} {:>9} {:>9}",
        "streams", "load", "readings/s", "p50 ms", "p99 ms", "p99.9 ms", "requests"
    );
    let mut rows = Vec::new();
    for &n in streams {
        let (endpoint, own) = match &target {
            Serve::Running(endpoint) => (endpoint.clone(), None),
            Serve::Own { inference_threads, database_url, .. } => {
                let own = Own::start(database_url.as_deref(), *inference_threads).await?;
                (Endpoint { addr: own.addr, client: reqwest::Client::new() }, Some(own))
            }
        };
        let addr = endpoint.addr;
        let tag = rand::random::<u32>();
        let database = match &own {
            Some(own) if own.scratch.url.starts_with("sqlite") => "sqlite",
            Some(_) => "postgres",
            None => "running service",
        };
        let mut report =
            |label: &str, rate: f64, latencies: &[f64], per_request: usize, server: Option<&ServerMeans>| {
                let (p50, p99, p999) =
                    (percentile(latencies, 0.5), percentile(latencies, 0.99), percentile(latencies, 0.999));
                println!("{n:>10} {label:<14} {rate:>12.0} {p50:>9.2} {p99:>9.2} {p999:>9.2} {:>9}", latencies.len());
                rows.push(json!({
                    "streams": n, "load": label, "readings_per_s": rate, "p50_ms": p50, "p99_ms": p99,
                    "p999_ms": p999, "requests": latencies.len(), "readings_per_request": per_request,
                    "readings_per_stream_per_request": if label == "single reading" { 1 } else { load.per_stream },
                    "clients": clients,
                    "database": database,
                    "server_means": server.map(ServerMeans::json),
                }));
            };
        let base = 1_767_225_600_000i64;
        // One untimed round creates the streams (and their actors): the timed phases
        // measure readings to existing streams.
        let create = Load {
            per_stream: 1,
            batch: load.batch,
            clients,
            seconds: load.seconds,
            latency: false,
            report_every: None,
        };
        let series = steps(n);
        phase(&endpoint, tag, n, &create, (base, &series), None, true).await?;
        let before = server_means(addr).await?;
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let windows = load.report_every.map(|every| {
            let every = Duration::from_secs_f64(every);
            let database_url = own.as_ref().map(|own| own.scratch.url.clone());
            tokio::spawn(progress(addr, every, database_url, before.readings, finished))
        });
        let (rate, latencies) = phase(&endpoint, tag, n, load, (base, &series), None, false).await?;
        let _ = done.send(());
        let windows = match windows {
            Some(task) => task.await?,
            None => Vec::new(),
        };
        let per_request = n.div_ceil(clients.min(n)).min(batch / load.per_stream) * load.per_stream;
        // Where a request's time went, from the server's own histograms over that phase.
        let stages = server_means(addr).await?.since(&before);
        report("max", rate, &latencies, per_request, Some(&stages));
        println!("{:>10} {:<14} {}", "", "server means", stages.describe());
        if load.latency && !latencies.is_empty() {
            // The same load paced to half the request rate reached, open loop (latency from
            // each request's due time where the answer before it came late; see `drive`),
            // requests evenly spread: each client sends one
            // request every clients / (requests per second / 2) seconds. First the server
            // finishes what the maximum left: the half rate's latency is that of a server
            // keeping up, not catching up.
            settle(addr, Duration::from_secs(3)).await?;
            let requests_per_s = latencies.len() as f64 / load.seconds / 2.0;
            let pace = Duration::from_secs_f64(clients.min(n) as f64 / requests_per_s);
            let before = server_means(addr).await?;
            let (half, latencies) =
                phase(&endpoint, tag, n, load, (base, &series), Some(Pacing::OpenLoop(pace)), false).await?;
            let stages = server_means(addr).await?.since(&before);
            report("half of max", half, &latencies, per_request, Some(&stages));
            println!("{:>10} {:<14} {}", "", "server means", stages.describe());
            // Single readings, one at a time, on an idle server: first let it finish what
            // the loaded phases left, and idle.
            settle(addr, Duration::from_secs(10)).await?;
            let single = Load {
                batch: 1,
                per_stream: 1,
                clients: 1,
                seconds: load.seconds.min(5.0),
                latency: false,
                report_every: None,
            };
            let (rate, latencies) = phase(&endpoint, tag ^ 1, 1, &single, (base, &steps(1)), None, false).await?;
            report("single reading", rate, &latencies, 1, None);
            if per_request > 1 {
                // Requests of the measured shape one at a time, every 10 ms, on the idle
                // server: a request's own serial time, without others queued beside it, and
                // where it went.
                settle(addr, Duration::from_secs(3)).await?;
                let alone =
                    Load { clients: 1, seconds: load.seconds.min(5.0), latency: false, report_every: None, ..*load };
                let before = server_means(addr).await?;
                let (rate, latencies) =
                    phase(&endpoint, tag, n, &alone, (base, &series), Some(Pacing::OneAtATime(ALONE_EVERY)), false)
                        .await?;
                let stages = server_means(addr).await?.since(&before);
                let alone_per_request = n.min(batch / load.per_stream) * load.per_stream;
                report("one at a time", rate, &latencies, alone_per_request, Some(&stages));
                println!("{:>10} {:<14} {}", "", "server means", stages.describe());
            }
        }
        if let Some(row) = rows.iter_mut().rev().find(|r| r["load"] == "max").filter(|_| !windows.is_empty()) {
            row["windows"] = json!(windows);
        }
        if let (Some(own), Serve::Own { keep_database, .. }) = (own, &target) {
            own.stop(*keep_database).await?;
        }
    }
    write_json(json_out, json!({ "benchmark": "http", "results": rows }))
}

/// The service `bench http` measures.
enum Serve {
    /// One of its own in this process, started afresh on a scratch database for each stream
    /// count.
    Own { inference_threads: Option<usize>, database_url: Option<String>, keep_database: bool },
    /// One already running (`--server`), resolved.
    Running(Endpoint),
}

/// A `tsad serve` already running, at `url`, and the API key to post with.
struct Running {
    url: reqwest::Url,
    key: Option<String>,
}

impl Running {
    /// Checks `--server`: an `http://` URL with a host (HTTPS is left to a real client).
    fn parse(url: &str, key: Option<String>) -> Result<Running, CliError> {
        let usage = |why: &str| CliError::Usage(anyhow!("--server {url:?}: {why}"));
        let url = reqwest::Url::parse(url).map_err(|e| usage(&e.to_string()))?;
        if url.scheme() != "http" || url.host_str().is_none() {
            return Err(usage("expected http://HOST:PORT"));
        }
        Ok(Running { url, key })
    }

    /// Where the load generator connects (the first address the host name resolves to),
    /// with a client that sends the API key with every request, if one was given.
    async fn endpoint(self) -> anyhow::Result<Endpoint> {
        let host = self.url.host_str().expect("checked by `parse`");
        let port = self.url.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &self.key {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
                .map_err(|_| anyhow!("--key holds characters a header cannot"))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Endpoint { addr, client: reqwest::Client::builder().default_headers(headers).build()? })
    }
}

/// Where a phase's clients send their requests.
#[derive(Clone)]
struct Endpoint {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
}

/// A service `bench http` started in this process, on a scratch database.
struct Own {
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    scratch: Scratch,
}

impl Own {
    async fn start(database_url: Option<&str>, inference_threads: Option<usize>) -> anyhow::Result<Own> {
        let scratch = Scratch::create(database_url).await?;
        let mut settings = Settings::for_tests(&scratch.url, default_models_dir());
        if let Some(threads) = inference_threads {
            settings.inference_threads = threads;
        }
        let app = Application::build(settings).await?;
        let addr = app.local_addr();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run_until(async move {
            let _ = stopped.await;
        }));
        Ok(Own { addr, stop, server, scratch })
    }

    /// Stops the service, then keeps its database (printing where) or removes it.
    async fn stop(self, keep_database: bool) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.server.await??;
        if keep_database {
            println!("{:>10} {:<14} {}", "", "kept", self.scratch.keep());
        } else {
            self.scratch.remove().await;
        }
        Ok(())
    }
}

/// Where one measurement of `bench http` writes: a SQLite file in a temporary directory, or
/// a database created for it on the PostgreSQL server given (dropped by
/// [`Scratch::remove`]), so that every measurement starts from empty tables, whatever ran
/// on that server before (a `readings` table grown by earlier runs slows every commit).
struct Scratch {
    url: String,
    /// The server's URL and the database created on it.
    postgres: Option<(String, String)>,
    dir: tempfile::TempDir,
}

impl Scratch {
    async fn create(database_url: Option<&str>) -> anyhow::Result<Scratch> {
        use sqlx::Connection;
        let dir = tempfile::tempdir()?;
        let server = match database_url {
            None => {
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                return Ok(Scratch { url, postgres: None, dir });
            }
            Some(url) if url.starts_with("sqlite:") => {
                return Ok(Scratch { url: url.to_string(), postgres: None, dir })
            }
            Some(server) => server,
        };
        let name = format!("tsad_bench_{}_{}", std::process::id(), rand::random::<u32>());
        let mut url = reqwest::Url::parse(server).context("--database-url is not a URL")?;
        let mut conn = sqlx::PgConnection::connect(server)
            .await
            .with_context(|| format!("connecting to {}", crate::app::redact(server)))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating the scratch database {name}"))?;
        conn.close().await?;
        url.set_path(&format!("/{name}"));
        Ok(Scratch { url: url.to_string(), postgres: Some((server.to_string(), name)), dir })
    }

    /// Leaves the database where it is and returns its URL. The temporary directory is kept
    /// only when it holds the database (a scratch SQLite file).
    fn keep(self) -> String {
        let file = std::path::Path::new(self.url.trim_start_matches("sqlite://"));
        if file.starts_with(self.dir.path()) {
            let _ = self.dir.keep();
        }
        self.url
    }

    /// Drops the PostgreSQL scratch database; says so when it cannot.
    async fn remove(self) {
        use sqlx::Connection;
        let Some((server, name)) = self.postgres else { return };
        let dropped = async {
            let mut conn = sqlx::PgConnection::connect(&server).await?;
            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
            conn.close().await
        };
        if let Err(e) = dropped.await {
            eprintln!("the scratch database {name} was left on the server ({e}); drop it by hand");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_count_what_a_core_lost_by_size() {
        let mut gaps = Gaps::default();
        for us in [500, 1_000, 12_000, 60_000, 0] {
            gaps.observe(Duration::from_micros(us));
        }
        let expected = Gaps {
            reads: 5,
            longest: Duration::from_millis(60),
            over_1ms: 3,
            over_10ms: 2,
            over_50ms: 1,
            lost: Duration::from_millis(73),
        };
        assert_eq!(gaps, expected);
        let json = gaps.json(Duration::from_secs(1));
        assert_eq!(json["lost_percent"].as_f64(), Some(7.3));
        assert_eq!(json["longest_ms"].as_f64(), Some(60.0));
    }

    #[test]
    fn a_spin_reads_the_clock_for_as_long_as_asked() {
        let started = Instant::now();
        let gaps = Gaps::spin(Duration::from_millis(20));
        assert!(started.elapsed() >= Duration::from_millis(20));
        assert!(gaps.reads > 1, "{gaps:?}");
        assert!(gaps.longest <= started.elapsed());
    }
}
