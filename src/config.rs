//! Settings of `tsad serve`: defaults in code, overridden by a TOML file (`--config`), then
//! by `TSAD_*` environment variables and flags (clap reads both). Every setting is documented
//! once, on its flag; the TOML keys are the flag names with `_` for `-`.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;

/// A scope an API key grants. `Admin` may do everything, `Write` ingests, `Read` queries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    /// Whether a key with this scope may use a route that requires `required`.
    pub fn allows(self, required: Scope) -> bool {
        self == Scope::Admin || self == required
    }
}

/// One configured API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub scope: Scope,
    pub key: String,
}

impl std::fmt::Debug for ApiKey {
    // Keys never reach logs, not even through Debug.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({:?}, <redacted>)", self.scope)
    }
}

/// Why a configuration is unusable. Printed as one line; `tsad serve` exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// Flags of `tsad serve` (each also an environment variable and a TOML key).
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (keys as the flag names, `_` for `-`).
    #[arg(long, env = "TSAD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TSAD_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// sqlite://FILE (created if missing) or postgres://… [default: sqlite://tsad.db].
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Directory of models/<name>/<version>/ [default: the repository's models/].
    #[arg(long, env = "TSAD_MODELS_DIR", value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Comma-separated scope:key entries, scope one of read, write, admin. None: open
    /// access, loopback only.
    #[arg(long, env = "TSAD_API_KEYS", value_name = "KEYS")]
    pub api_keys: Option<String>,
    /// Inference threads, each owning a copy of the weights [default: CPU cores].
    #[arg(long, env = "TSAD_INFERENCE_THREADS", value_name = "N")]
    pub inference_threads: Option<usize>,
    /// Where inference runs: auto (CUDA when libtorch sees a GPU), cpu or cuda [default: auto].
    #[arg(long, env = "TSAD_INFERENCE_DEVICE", value_name = "DEVICE")]
    pub inference_device: Option<String>,
    /// Most sequences stepped in one batched libtorch call [default: 1024].
    #[arg(long, env = "TSAD_MAX_BATCH", value_name = "N")]
    pub max_batch: Option<usize>,
    /// Microseconds an inference thread waits to fill a batch; 0 takes what is queued [default: 0].
    #[arg(long, env = "TSAD_BATCH_WAIT_US", value_name = "US")]
    pub batch_wait_us: Option<u64>,
    /// Largest request body in bytes [default: 8388608].
    #[arg(long, env = "TSAD_MAX_BODY_BYTES", value_name = "BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Most readings in one request [default: 10000].
    #[arg(long, env = "TSAD_MAX_READINGS", value_name = "N")]
    pub max_readings: Option<usize>,
    /// Seconds before a request is answered 503 [default: 30].
    #[arg(long, env = "TSAD_REQUEST_TIMEOUT_S", value_name = "SECONDS")]
    pub request_timeout_s: Option<f64>,
    /// Seconds a commit may go unanswered by the database before its request is answered
    /// 503 and its streams reload their state from storage (the commit may or may not have
    /// landed; a retry is safe) [default: 120].
    #[arg(long, env = "TSAD_COMMIT_TIMEOUT_S", value_name = "SECONDS")]
    pub commit_timeout_s: Option<f64>,
    /// Requests that may wait for a stream's turn (its mailbox) before ingest answers 429
    /// [default: 64].
    #[arg(long, env = "TSAD_MAILBOX", value_name = "N")]
    pub mailbox: Option<usize>,
    /// Seconds without readings before a stream is evicted from memory [default: 600].
    #[arg(long, env = "TSAD_IDLE_EVICT_S", value_name = "SECONDS")]
    pub idle_evict_s: Option<f64>,
    /// Most streams held in memory at once; more answer 429 [default: 1000000].
    #[arg(long, env = "TSAD_MAX_ACTIVE_STREAMS", value_name = "N")]
    pub max_active_streams: Option<usize>,
    /// Readings a new stream learns from before it may flag [default: 200].
    #[arg(long, env = "TSAD_WARMUP", value_name = "N")]
    pub warmup: Option<u64>,
    /// Default sensitivity of new streams, 0–1 [default: 0.5].
    #[arg(long, env = "TSAD_SENSITIVITY", value_name = "S")]
    pub sensitivity: Option<f64>,
    /// Writer requests queued before ingest answers 429 [default: 4096].
    #[arg(long, env = "TSAD_WRITER_QUEUE", value_name = "N")]
    pub writer_queue: Option<usize>,
    /// Ingest requests handled at once; more are answered 429 at once, before their body is
    /// read, which bounds the memory a burst can take [default: 64].
    #[arg(long, env = "TSAD_MAX_INGEST_REQUESTS", value_name = "N")]
    pub max_ingest_requests: Option<usize>,
    /// Training jobs run at once; more wait queued [default: 1].
    #[arg(long, env = "TSAD_TRAINING_JOBS", value_name = "N")]
    pub training_jobs: Option<usize>,
    /// Threads an operator's training job splits each batch over, each running its share of
    /// the windows with one libtorch thread (data parallel); automatic fits take one
    /// [default: CPU cores].
    #[arg(long, env = "TSAD_TRAINING_THREADS", value_name = "N")]
    pub training_threads: Option<usize>,
    /// Streams fitted a model of their own at once after warm-up (auto_train); 0 turns
    /// automatic fitting off [default: 1].
    #[arg(long, env = "TSAD_AUTO_TRAIN_JOBS", value_name = "N")]
    pub auto_train_jobs: Option<usize>,
    /// Most epochs of an automatic fit (early stopping usually ends it sooner) [default: 30].
    #[arg(long, env = "TSAD_AUTO_TRAIN_EPOCHS", value_name = "N")]
    pub auto_train_epochs: Option<usize>,
    /// How long a stream's raw readings are kept, back from its newest reading ("30d",
    /// "12h", "90min"; at least a minute); older ones are deleted in the background, anomaly
    /// events kept. Unset keeps every reading [default: unset].
    #[arg(long, env = "TSAD_RETENTION", value_name = "DURATION")]
    pub retention: Option<String>,
}

/// The subset of settings a TOML file may hold (all optional; flags and env win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen: Option<String>,
    database_url: Option<String>,
    models_dir: Option<PathBuf>,
    api_keys: Option<String>,
    inference_threads: Option<usize>,
    inference_device: Option<String>,
    max_batch: Option<usize>,
    batch_wait_us: Option<u64>,
    max_body_bytes: Option<usize>,
    max_readings: Option<usize>,
    request_timeout_s: Option<f64>,
    commit_timeout_s: Option<f64>,
    mailbox: Option<usize>,
    idle_evict_s: Option<f64>,
    max_active_streams: Option<usize>,
    warmup: Option<u64>,
    sensitivity: Option<f64>,
    writer_queue: Option<usize>,
    max_ingest_requests: Option<usize>,
    training_jobs: Option<usize>,
    training_threads: Option<usize>,
    auto_train_jobs: Option<usize>,
    auto_train_epochs: Option<usize>,
    retention: Option<String>,
}

/// Validated settings of a running service.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    pub models_dir: PathBuf,
    pub api_keys: Vec<ApiKey>,
    pub inference_threads: usize,
    pub inference_device: tch::Device,
    pub max_batch: usize,
    pub batch_wait: Duration,
    pub max_body_bytes: usize,
    pub max_readings: usize,
    pub request_timeout: Duration,
    pub commit_timeout: Duration,
    pub mailbox: usize,
    pub idle_evict: Duration,
    pub max_active_streams: usize,
    pub warmup: u64,
    pub sensitivity: f64,
    pub writer_queue: usize,
    pub max_ingest_requests: usize,
    pub training_jobs: usize,
    pub training_threads: usize,
    pub auto_train_jobs: usize,
    pub auto_train_epochs: usize,
    /// How long readings are kept back from each stream's newest; `None` keeps them all.
    pub retention: Option<Duration>,
}

impl Settings {
    /// Defaults for tests and embedding: loopback port 0, the given database and models.
    pub fn for_tests(database_url: &str, models_dir: PathBuf) -> Settings {
        let mut s = ServeArgs::default().resolve().expect("defaults are valid");
        s.listen = "127.0.0.1:0".parse().expect("valid address");
        s.database_url = database_url.to_string();
        s.models_dir = models_dir;
        // Tests and benchmarks turn automatic fitting on only where they test it.
        s.auto_train_jobs = 0;
        s
    }
}

/// The CPU cores this process may use (1 when unknown): the default of every thread count.
pub fn cpu_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The repository's `models/` when run from a checkout (`cargo run`, target/…/tsad), else
/// `models` in the working directory.
pub fn default_models_dir() -> PathBuf {
    let built_in = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    if built_in.is_dir() {
        built_in
    } else {
        PathBuf::from("models")
    }
}

fn bad(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Parses `scope:key,scope:key`.
pub fn parse_api_keys(text: &str) -> Result<Vec<ApiKey>, ConfigError> {
    let mut keys = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (scope, key) = entry.split_once(':').ok_or_else(|| bad("api key entries are scope:key"))?;
        let scope = match scope {
            "read" => Scope::Read,
            "write" => Scope::Write,
            "admin" => Scope::Admin,
            other => return Err(bad(format!("api key scope must be read, write or admin, not {other:?}"))),
        };
        if key.len() < 16 || !key.chars().all(|c| c.is_ascii_graphic()) {
            return Err(bad("api keys must be at least 16 printable ASCII characters"));
        }
        keys.push(ApiKey { scope, key: key.to_string() });
    }
    Ok(keys)
}

impl ServeArgs {
    /// Merges flags/env over the file over the defaults, and validates the result.
    pub fn resolve(&self) -> Result<Settings, ConfigError> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
                toml::from_str::<FileSettings>(&text)
                    .map_err(|e| bad(format!("{}: {}", path.display(), e.message())))?
            }
            None => FileSettings::default(),
        };
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                self.$field.clone().or(file.$field.clone()).unwrap_or_else(|| $default)
            };
        }
        let listen_text = pick!(listen, "127.0.0.1:8080".to_string());
        let listen: SocketAddr =
            listen_text.parse().map_err(|_| bad(format!("listen must be host:port, got {listen_text:?}")))?;
        let database_url = pick!(database_url, "sqlite://tsad.db".to_string());
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(bad("database_url must start with sqlite: or postgres://"));
        }
        let models_dir = pick!(models_dir, default_models_dir());
        let api_keys = parse_api_keys(&pick!(api_keys, String::new()))?;
        let cores = cpu_cores();
        let inference_threads = pick!(inference_threads, cores);
        let inference_device = match pick!(inference_device, "auto".to_string()).as_str() {
            "auto" => crate::model::default_device(),
            "cpu" => tch::Device::Cpu,
            "cuda" if tch::Cuda::is_available() => tch::Device::Cuda(0),
            "cuda" => return Err(bad("inference_device is cuda but libtorch sees no CUDA device")),
            other => return Err(bad(format!("inference_device must be auto, cpu or cuda, not {other:?}"))),
        };
        let max_batch = pick!(max_batch, 1024);
        let batch_wait_us = pick!(batch_wait_us, 0);
        let max_body_bytes = pick!(max_body_bytes, 8 << 20);
        let max_readings = pick!(max_readings, 10_000);
        let request_timeout_s = pick!(request_timeout_s, 30.0);
        let commit_timeout_s = pick!(commit_timeout_s, 120.0);
        let mailbox = pick!(mailbox, 64);
        let idle_evict_s = pick!(idle_evict_s, 600.0);
        let max_active_streams = pick!(max_active_streams, 1_000_000);
        let warmup = pick!(warmup, 200);
        let sensitivity = pick!(sensitivity, 0.5);
        let writer_queue = pick!(writer_queue, 4096);
        let max_ingest_requests = pick!(max_ingest_requests, 64);
        let training_jobs = pick!(training_jobs, 1);
        let training_threads = pick!(training_threads, cores);
        let auto_train_jobs = pick!(auto_train_jobs, 1);
        let auto_train_epochs = pick!(auto_train_epochs, 30);
        let in_range = |name: &str, v: usize, lo: usize, hi: usize| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(bad(format!("{name} must be in {lo}..={hi}, got {v}")))
            }
        };
        in_range("inference_threads", inference_threads, 1, 256)?;
        in_range("max_batch", max_batch, 1, 1 << 20)?;
        in_range("max_body_bytes", max_body_bytes, 1024, 1 << 30)?;
        in_range("max_readings", max_readings, 1, 10_000_000)?;
        in_range("mailbox", mailbox, 1, 1 << 20)?;
        in_range("max_active_streams", max_active_streams, 1, 100_000_000)?;
        in_range("writer_queue", writer_queue, 1, 1 << 24)?;
        in_range("max_ingest_requests", max_ingest_requests, 1, 1 << 20)?;
        in_range("training_jobs", training_jobs, 1, 64)?;
        in_range("training_threads", training_threads, 1, 256)?;
        in_range("auto_train_jobs", auto_train_jobs, 0, 64)?;
        in_range("auto_train_epochs", auto_train_epochs, 1, 10_000)?;
        if batch_wait_us > 1_000_000 {
            return Err(bad("batch_wait_us must be at most 1000000"));
        }
        let seconds = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 && v <= 86_400.0 {
                Ok(Duration::from_secs_f64(v))
            } else {
                Err(bad(format!("{name} must be in (0, 86400] seconds, got {v}")))
            }
        };
        if warmup > 10_000_000 {
            return Err(bad("warmup must be at most 10000000"));
        }
        if !(sensitivity.is_finite() && (0.0..=1.0).contains(&sensitivity)) {
            return Err(bad(format!("sensitivity must be in [0, 1], got {sensitivity}")));
        }
        let retention = self.retention.clone().or(file.retention.clone()).map(|t| parse_retention(&t)).transpose()?;
        if api_keys.is_empty() && !listen.ip().is_loopback() {
            return Err(bad(format!(
                "refusing to listen on {listen} without API keys: set TSAD_API_KEYS or bind a loopback address"
            )));
        }
        Ok(Settings {
            listen,
            database_url,
            models_dir,
            api_keys,
            inference_threads,
            inference_device,
            max_batch,
            batch_wait: Duration::from_micros(batch_wait_us),
            max_body_bytes,
            max_readings,
            request_timeout: seconds("request_timeout_s", request_timeout_s)?,
            commit_timeout: seconds("commit_timeout_s", commit_timeout_s)?,
            mailbox,
            idle_evict: seconds("idle_evict_s", idle_evict_s)?,
            max_active_streams,
            warmup,
            sensitivity,
            writer_queue,
            max_ingest_requests,
            training_jobs,
            training_threads,
            auto_train_jobs,
            auto_train_epochs,
            retention,
        })
    }
}

/// Parses a retention ("30d", "12h 30m"): from a minute to 1,000 years. The service's
/// (`--retention`) and a stream's own (`PUT /v1/streams/{stream}`) alike; the error names
/// what was wrong.
pub fn parse_retention(text: &str) -> Result<Duration, ConfigError> {
    let retention = humantime::parse_duration(text.trim())
        .map_err(|e| bad(format!("retention must be a duration such as \"30d\" or \"12h\", got {text:?}: {e}")))?;
    let most = Duration::from_secs(1000 * 365 * 86_400);
    if retention < Duration::from_secs(60) || retention > most {
        return Err(bad(format!("retention must be from 1 minute to 1000 years, got {text:?}")));
    }
    Ok(retention)
}

/// A retention as text that [`parse_retention`] reads back to the same duration, in days,
/// hours, minutes and seconds ("30d 12h"; humantime's own writes months of 30.44 days).
pub fn retention_text(keep: Duration) -> String {
    let secs = keep.as_secs();
    let parts = [(secs / 86_400, "d"), (secs / 3_600 % 24, "h"), (secs / 60 % 60, "m"), (secs % 60, "s")];
    let mut text: Vec<String> = parts.iter().filter(|(n, _)| *n > 0).map(|(n, unit)| format!("{n}{unit}")).collect();
    if keep.subsec_millis() > 0 || text.is_empty() {
        text.push(format!("{}ms", keep.subsec_millis()));
    }
    text.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let s = ServeArgs::default().resolve().expect("defaults resolve");
        assert!(s.listen.ip().is_loopback());
        assert_eq!(s.database_url, "sqlite://tsad.db");
        assert!(s.api_keys.is_empty());
        assert_eq!((s.inference_threads, s.training_threads), (cpu_cores(), cpu_cores()));
    }

    #[test]
    fn a_public_bind_without_keys_is_refused_and_with_keys_allowed() {
        let mut args = ServeArgs { listen: Some("0.0.0.0:8080".into()), ..Default::default() };
        assert!(args.resolve().expect_err("refused").to_string().contains("without API keys"));
        args.api_keys = Some("admin:0123456789abcdef0123".into());
        assert_eq!(args.resolve().expect("allowed").api_keys[0].scope, Scope::Admin);
    }

    #[test]
    fn bad_settings_are_named() {
        let cases = [
            (ServeArgs { listen: Some("nowhere".into()), ..Default::default() }, "listen"),
            (ServeArgs { database_url: Some("mysql://x".into()), ..Default::default() }, "database_url"),
            (ServeArgs { api_keys: Some("root:0123456789abcdef".into()), ..Default::default() }, "scope"),
            (ServeArgs { api_keys: Some("read:short".into()), ..Default::default() }, "16"),
            (ServeArgs { api_keys: Some("readonly".into()), ..Default::default() }, "scope:key"),
            (ServeArgs { max_batch: Some(0), ..Default::default() }, "max_batch"),
            (ServeArgs { training_threads: Some(0), ..Default::default() }, "training_threads"),
            (ServeArgs { sensitivity: Some(1.5), ..Default::default() }, "sensitivity"),
            (ServeArgs { request_timeout_s: Some(f64::NAN), ..Default::default() }, "request_timeout_s"),
            (ServeArgs { commit_timeout_s: Some(0.0), ..Default::default() }, "commit_timeout_s"),
            (ServeArgs { commit_timeout_s: Some(f64::INFINITY), ..Default::default() }, "commit_timeout_s"),
            (ServeArgs { config: Some("/nonexistent.toml".into()), ..Default::default() }, "nonexistent"),
            (ServeArgs { retention: Some("30 days please".into()), ..Default::default() }, "retention"),
            (ServeArgs { retention: Some("-5d".into()), ..Default::default() }, "retention"),
            (ServeArgs { retention: Some("0s".into()), ..Default::default() }, "retention"),
            (ServeArgs { retention: Some("59s".into()), ..Default::default() }, "1 minute"),
            (ServeArgs { retention: Some("100000y".into()), ..Default::default() }, "1000 years"),
        ];
        for (args, needle) in cases {
            let err = args.resolve().expect_err("invalid").to_string();
            assert!(err.contains(needle), "{err} should mention {needle}");
        }
    }

    #[test]
    fn the_file_is_overridden_by_flags_and_unknown_keys_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tsad.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:9000\"\nmax_batch = 7\n").expect("write");
        let args = ServeArgs { config: Some(path.clone()), max_batch: Some(9), ..Default::default() };
        let s = args.resolve().expect("resolves");
        assert_eq!((s.listen.port(), s.max_batch), (9000, 9));
        std::fs::write(&path, "listen_on = \"x\"\n").expect("write");
        let err = args.resolve().expect_err("unknown key").to_string();
        assert!(err.contains("listen_on"), "{err}");
    }

    #[test]
    fn a_retention_is_written_as_it_reads_back() {
        for text in ["1m", "30d 12h", "1d 1s", "90m", "1000d", "12h 30m 5s"] {
            let keep = parse_retention(text).expect("valid");
            assert_eq!(parse_retention(&retention_text(keep)).expect("reads back"), keep, "{text}");
        }
        assert_eq!(retention_text(Duration::from_secs(30 * 86_400 + 12 * 3_600)), "30d 12h");
        assert_eq!(retention_text(Duration::from_secs(5_400)), "1h 30m");
    }

    #[test]
    fn retention_is_read_as_a_duration_and_unset_by_default() {
        assert_eq!(ServeArgs::default().resolve().expect("defaults").retention, None);
        let args = ServeArgs { retention: Some("30d".into()), ..Default::default() };
        assert_eq!(args.resolve().expect("valid").retention, Some(Duration::from_secs(30 * 86_400)));
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("tsad.toml");
        std::fs::write(&path, "retention = \"12h 30m\"\n").expect("write");
        let args = ServeArgs { config: Some(path), ..Default::default() };
        assert_eq!(args.resolve().expect("valid").retention, Some(Duration::from_secs(45_000)));
    }

    #[test]
    fn keys_are_redacted_in_debug_output() {
        let keys = parse_api_keys("read:supersecretkey12345").expect("valid");
        assert!(!format!("{keys:?}").contains("supersecret"));
    }
}
