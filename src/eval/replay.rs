//! Replays recorded series through the service's own streaming core ([`Core`]: stream
//! actors, batched inference, the scorer, storage, cold start and automatic fitting) with
//! no HTTP in between. What an evaluation measures is what `tsad serve` does.
//!
//! Time is the data's, not the wall clock's: when a stream is due an automatic fit, the
//! replay waits for the fit to end before feeding the next readings, as a live sensor
//! (seconds to minutes between readings) would barely move during a fit of seconds.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::app::Core;
use crate::config::{ServeArgs, Settings};
use crate::scoring::Baseline;
use crate::storage::StreamConfig;
use crate::streams::{Reading, ReadingVerdict};

/// How long a replay waits for one automatic fit before giving up.
const FIT_TIMEOUT: Duration = Duration::from_secs(600);

/// The settings a replayed stream is created with: what a user would choose for the series.
#[derive(Debug, Clone, Copy)]
pub struct StreamSetup {
    /// Readings of warm-up.
    pub warmup: u64,
    pub baseline: Baseline,
    /// The stream's sensitivity; the service's default when `None`.
    pub sensitivity: Option<f64>,
}

/// A running core on a scratch SQLite database.
pub struct Replay {
    core: Core,
    _dir: tempfile::TempDir,
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Replay")
    }
}

impl Replay {
    /// Starts a core with the service's default settings on a new SQLite database in a
    /// temporary folder; `auto_train_jobs` fits at once (0 turns automatic fitting off).
    pub async fn start(models_dir: PathBuf, auto_train_jobs: usize) -> anyhow::Result<Replay> {
        let dir = tempfile::tempdir().context("creating a scratch folder")?;
        let mut settings: Settings = ServeArgs::default().resolve().map_err(|e| anyhow::anyhow!(e))?;
        settings.database_url = format!("sqlite://{}?mode=rwc", dir.path().join("eval.db").display());
        // Automatic fits write models: they go to a scratch registry holding a copy of
        // the default model, never into the one given.
        let scratch = dir.path().join("models");
        copy_dir(&models_dir.join("default"), &scratch.join("default"))
            .with_context(|| format!("copying the default model from {}", models_dir.display()))?;
        settings.models_dir = scratch;
        settings.auto_train_jobs = auto_train_jobs;
        // Replays are bursts of many readings per stream; no stream goes idle.
        settings.idle_evict = Duration::from_secs(3600);
        let core = Core::start(&settings).await?;
        Ok(Replay { core, _dir: dir })
    }

    /// Feeds one series (`values[i]` holds every channel at `timestamps[i]`, Unix ms,
    /// strictly increasing) to a new stream `name` set up as `setup` says, in requests of
    /// `chunk` readings, handing each verdict to `sink` in order (nothing is kept: an ECG
    /// record is 650,000 readings).
    pub async fn run(
        &self,
        name: &str,
        timestamps: &[i64],
        values: &[Vec<f64>],
        setup: StreamSetup,
        chunk: usize,
        mut sink: impl FnMut(ReadingVerdict),
    ) -> anyhow::Result<()> {
        let streams = &self.core.streams;
        let channels = values.first().map_or(1, Vec::len);
        let mut config: StreamConfig = streams.default_config(channels);
        config.warmup = setup.warmup;
        config.baseline = setup.baseline;
        if let Some(sensitivity) = setup.sensitivity {
            config.sensitivity = sensitivity;
        }
        streams.put(name, &config).await.with_context(|| format!("creating stream {name}"))?;
        let mut start = 0;
        while start < values.len() {
            let end = (start + chunk.max(1)).min(values.len());
            let readings: Vec<Reading> =
                (start..end).map(|i| Reading { ts: timestamps[i], values: values[i].clone() }).collect();
            let outcome = streams
                .ingest(vec![(name.to_string(), readings)])
                .await
                .with_context(|| format!("stream {name}, readings {start}..{end}"))?;
            for v in outcome.into_iter().flat_map(|o| o.verdicts) {
                sink(v);
            }
            start = end;
            // A round trip through the stream's actor: it has finished handling the commit
            // (and announced a fit, if one is due) before this returns. Without it the next
            // readings could race the announcement and runs would differ.
            streams.describe(name).await.with_context(|| format!("stream {name}"))?;
            let waited = Instant::now();
            while streams.fit_pending(name) {
                if waited.elapsed() > FIT_TIMEOUT {
                    bail!("the automatic fit of {name} took longer than {FIT_TIMEOUT:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// The model and version scoring `name` now.
    pub async fn model_of(&self, name: &str) -> Option<(String, String)> {
        let status = self.core.streams.describe(name).await.ok().flatten()?;
        Some((status.record.config.model, status.model_version))
    }

    /// Stops the core (waiting for its writer) and removes the scratch database.
    pub async fn finish(self) {
        self.core.shutdown().await;
    }
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
    }
    Ok(())
}
