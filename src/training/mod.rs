//! Training jobs of the running service (the admin API's `train`): validated requests,
//! persisted jobs (queued → running → succeeded | failed | cancelled), a bounded number
//! running at once on blocking threads, live progress, cooperative cancellation, and the
//! new version written to the model registry (and activated when asked).
//!
//! The network and its training loop live in `model`; this module only manages jobs.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use crate::model::forecast::{train_forecaster_on_corpus, ForecastData};
use crate::model::series::Series;
use crate::model::{Architecture, CancelToken, ModelError, NetworkConfig, TrainConfig};
use crate::storage::{now_ms, JobRecord, StorageError};
use crate::streams::Streams;

/// Rows read from the database per query while loading training data.
const PAGE: i64 = 10_000;
/// Most readings one job loads per stream (the newest are kept).
const MAX_ROWS_PER_STREAM: usize = 200_000;

/// A validated training request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainRequest {
    pub architecture: Architecture,
    pub hidden: usize,
    pub layers: usize,
    pub window: usize,
    pub epochs: usize,
    pub learning_rate: f64,
    /// Stream names or glob patterns (`*`, `?`).
    pub streams: Vec<String>,
    /// Unix ms, inclusive.
    pub from: Option<i64>,
    /// Unix ms, exclusive.
    pub to: Option<i64>,
    pub activate: bool,
    /// Forecast the change from the last reading (see `NetworkConfig::residual`).
    #[serde(default)]
    pub residual: bool,
}

impl TrainRequest {
    /// What an automatic fit of one stream trains (the stream is filled in per fit).
    pub fn auto_fit(epochs: usize) -> TrainRequest {
        TrainRequest {
            architecture: Architecture::Lstm,
            hidden: 32,
            layers: 1,
            window: 64,
            epochs,
            learning_rate: 5e-3,
            streams: Vec::new(),
            from: None,
            to: None,
            activate: true,
            residual: false,
        }
    }
}

/// Live progress of a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub epoch: usize,
    pub epochs: usize,
    pub train_loss: f64,
    pub val_loss: f64,
    pub grad_norm: f64,
    pub elapsed_s: f64,
    /// Seconds left if every remaining epoch takes as long as the ones so far.
    pub eta_s: f64,
}

/// Why a job could not be queued or changed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("job {0} does not exist")]
    Unknown(i64),
    #[error("job {0} has already {1}")]
    Finished(i64, String),
}

struct Live {
    cancel: CancelToken,
    progress: Arc<Mutex<Option<Progress>>>,
}

struct Inner {
    streams: Streams,
    /// Set by [`Jobs::shutdown`]: a job cancelled from now on was interrupted, not cancelled.
    stopping: std::sync::atomic::AtomicBool,
    permits: Semaphore,
    /// Threads each operator's job splits its batches over ([`TrainConfig::threads`]);
    /// automatic fits take one.
    threads: usize,
    live: Mutex<HashMap<i64, Live>>,
    /// Every job's task, so shutdown can wait for them.
    tasks: tokio_util::task::TaskTracker,
}

/// The job manager. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<Inner>,
}

impl Jobs {
    /// A manager running at most `concurrency` jobs at once, each on `threads` threads (an
    /// automatic fit on one). Jobs a previous process left queued or running are marked
    /// failed ("interrupted").
    pub async fn start(streams: Streams, concurrency: usize, threads: usize) -> Result<Jobs, StorageError> {
        let interrupted = streams.storage().fail_interrupted_jobs(now_ms()).await?;
        if interrupted > 0 {
            warn!(interrupted, "jobs of a previous run marked failed");
        }
        Ok(Jobs {
            inner: Arc::new(Inner {
                streams,
                stopping: std::sync::atomic::AtomicBool::new(false),
                permits: Semaphore::new(concurrency.max(1)),
                threads: threads.max(1),
                live: Mutex::new(HashMap::new()),
                tasks: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Queues a job training a new version of `model`; it starts when a slot is free.
    pub async fn submit(&self, model: &str, request: TrainRequest) -> Result<JobRecord, JobError> {
        Ok(self.submit_watched(model, request).await?.0)
    }

    /// Like [`Jobs::submit`], with a receiver that gets the new version (or `None`) when the
    /// job ends.
    async fn submit_watched(
        &self,
        model: &str,
        request: TrainRequest,
    ) -> Result<(JobRecord, tokio::sync::oneshot::Receiver<Option<String>>), JobError> {
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let params = serde_json::to_string(&request).map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let job = self.inner.streams.storage().insert_job(model, &params, now_ms()).await?;
        let live = Live { cancel: CancelToken::new(), progress: Arc::new(Mutex::new(None)) };
        let (cancel, progress) = (live.cancel.clone(), live.progress.clone());
        self.inner.live.lock().expect("jobs lock").insert(job.id, live);
        let jobs = self.clone();
        let (id, model) = (job.id, model.to_string());
        self.inner.tasks.spawn(async move {
            let outcome = jobs.run(id, &model, request, cancel, progress.clone()).await;
            let last = progress.lock().expect("progress lock").clone();
            let last = last.and_then(|p| serde_json::to_string(&p).ok());
            let storage = jobs.inner.streams.storage();
            let finished = Some(now_ms());
            let version = outcome.as_ref().ok().cloned();
            let result = match outcome {
                Ok(version) => {
                    info!(job = id, %model, %version, "training job succeeded");
                    storage.update_job(id, "succeeded", last.as_deref(), None, Some(&version), None, finished).await
                }
                Err(ModelError::Cancelled) if jobs.inner.stopping.load(std::sync::atomic::Ordering::Relaxed) => {
                    let why = "interrupted: the service shut down";
                    storage.update_job(id, "failed", last.as_deref(), Some(why), None, None, finished).await
                }
                Err(ModelError::Cancelled) => {
                    storage.update_job(id, "cancelled", last.as_deref(), None, None, None, finished).await
                }
                Err(e) => {
                    warn!(job = id, %model, error = %e, "training job failed");
                    storage.update_job(id, "failed", last.as_deref(), Some(&e.to_string()), None, None, finished).await
                }
            };
            if let Err(e) = result {
                warn!(job = id, error = %e, "could not record the job's outcome");
            }
            jobs.inner.live.lock().expect("jobs lock").remove(&id);
            let _ = done_tx.send(version);
        });
        Ok((job, done_rx))
    }

    /// Fits a model of its own to every stream the registry announces (warm-up passed,
    /// `auto_train` on), at most `concurrency` at once, then binds the stream to it.
    /// `concurrency` 0 turns automatic fitting off.
    pub fn start_auto_fit(&self, concurrency: usize, request: TrainRequest) {
        if concurrency == 0 {
            return;
        }
        let mut requests = self.inner.streams.auto_fit_requests();
        let jobs = self.clone();
        let slots = Arc::new(Semaphore::new(concurrency));
        self.inner.tasks.spawn(async move {
            while let Some(name) = requests.recv().await {
                if jobs.inner.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let (jobs, slots, request) = (jobs.clone(), slots.clone(), request.clone());
                jobs.inner.tasks.clone().spawn(async move {
                    if let Ok(_slot) = slots.acquire().await {
                        if jobs.inner.stopping.load(std::sync::atomic::Ordering::Relaxed) {
                            jobs.inner.streams.fit_ended(&name);
                            return;
                        }
                        match jobs.auto_fit(&name, request).await {
                            Ok(()) => {}
                            // The shutdown interrupts the fit's job (recorded as such): no failure.
                            Err(e) if jobs.inner.stopping.load(std::sync::atomic::Ordering::Relaxed) => {
                                info!(stream = %name, error = %e, "automatic fit interrupted by the shutdown");
                            }
                            Err(e) => warn!(stream = %name, error = %e, "automatic fit failed"),
                        }
                    }
                    jobs.inner.streams.fit_ended(&name);
                });
            }
        });
    }

    async fn auto_fit(&self, name: &str, mut request: TrainRequest) -> Result<(), String> {
        let streams = &self.inner.streams;
        let record = streams.storage().stream(name).await.map_err(|e| e.to_string())?;
        let Some(record) = record else { return Ok(()) };
        let model = format!("{}{}", crate::streams::AUTO_MODEL_PREFIX, record.id);
        let fitted = streams.catalog().versions(&model).is_ok_and(|v| !v.is_empty());
        if !fitted {
            request.streams = vec![name.to_string()];
            request.activate = true;
            let (job, done) = self.submit_watched(&model, request).await.map_err(|e| e.to_string())?;
            info!(stream = %name, job = job.id, %model, "fitting a model of the stream's own");
            if done.await.ok().flatten().is_none() {
                return Err(format!("job {} did not produce a model", job.id));
            }
        }
        streams.bind_model(name, &model).await.map_err(|e| e.to_string())
    }

    async fn run(
        &self,
        id: i64,
        model: &str,
        request: TrainRequest,
        cancel: CancelToken,
        progress: Arc<Mutex<Option<Progress>>>,
    ) -> Result<String, ModelError> {
        let _permit = self.inner.permits.acquire().await.map_err(|_| ModelError::Cancelled)?;
        if cancel.is_cancelled() {
            return Err(ModelError::Cancelled);
        }
        let storage = self.inner.streams.storage().clone();
        let db = |e: StorageError| ModelError::Data(format!("reading training data: {e}"));
        storage.update_job(id, "running", None, None, None, Some(now_ms()), None).await.map_err(db)?;
        let corpus = self.load(&request).await.map_err(db)?;
        if corpus.is_empty() {
            return Err(ModelError::Data("no stored readings match the streams and time range".into()));
        }
        let rows: usize = corpus.iter().map(Series::len).sum();
        let catalog = self.inner.streams.catalog().clone();
        let version = catalog
            .versions(model)
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.parse::<u64>().ok())
            .max()
            .map_or(1, |v| v + 1)
            .to_string();
        // A version trained without `activate` must not become active by being the newest:
        // pin the version serving now before the new one appears.
        if !request.activate {
            catalog.pin(model).map_err(|e| ModelError::Data(e.to_string()))?;
        }
        let out = catalog.root().join(model).join(&version);
        let epoch_seconds = self.inner.streams.metrics().training_epoch.clone();
        let staging = out.with_file_name(format!(".{version}.partial"));
        let command =
            format!("POST /admin/v1/models/{model}/train {}", serde_json::to_string(&request).unwrap_or_default());
        let source = format!("streams {:?} ({} series, {rows} rows)", request.streams, corpus.len());
        // An automatic fit is background work beside the streams it serves: one thread. An
        // operator's job takes the configured threads.
        let threads = if model.starts_with(crate::streams::AUTO_MODEL_PREFIX) { 1 } else { self.inner.threads };
        let trained = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut epoch_started = Instant::now();
            let mut config = NetworkConfig::forecaster(request.architecture, request.hidden, request.layers);
            config.residual = request.residual;
            let data = ForecastData::new(request.window);
            let train = TrainConfig {
                epochs: request.epochs,
                learning_rate: request.learning_rate,
                threads,
                ..TrainConfig::default()
            };
            let trained = train_forecaster_on_corpus(
                config,
                &corpus,
                &data,
                &train,
                crate::model::default_device(),
                &source,
                &command,
                &cancel,
                |p| {
                    epoch_seconds.observe(epoch_started.elapsed().as_secs_f64());
                    epoch_started = Instant::now();
                    let elapsed = started.elapsed().as_secs_f64();
                    let eta = elapsed / p.epoch as f64 * (p.epochs - p.epoch) as f64;
                    *progress.lock().expect("progress lock") = Some(Progress {
                        epoch: p.epoch,
                        epochs: p.epochs,
                        train_loss: p.train_loss,
                        val_loss: p.val_loss,
                        grad_norm: p.grad_norm,
                        elapsed_s: elapsed,
                        eta_s: eta,
                    });
                },
            )?;
            // Written beside the registry and renamed into place, so a failed write (disk
            // full, unwritable folder) never leaves a half version behind.
            let _ = std::fs::remove_dir_all(&staging);
            let saved = trained.network.save(&staging, &trained.card).and_then(|()| {
                std::fs::rename(&staging, &out)
                    .map_err(|e| ModelError::Data(format!("cannot move the new version to {}: {e}", out.display())))
            });
            if saved.is_err() {
                let _ = std::fs::remove_dir_all(&staging);
            }
            saved?;
            Ok::<_, ModelError>(())
        })
        .await
        .map_err(|e| ModelError::Data(format!("training thread failed: {e}")))?;
        trained?;
        if request.activate {
            self.inner.streams.activate(model, &version).await.map_err(|e| ModelError::Data(e.to_string()))?;
        }
        Ok(version)
    }

    /// Loads every matching stream's readings in the range, page by page; each channel of a
    /// stream becomes one univariate series.
    async fn load(&self, request: &TrainRequest) -> Result<Vec<Series>, StorageError> {
        let storage = self.inner.streams.storage();
        let mut corpus = Vec::new();
        for (id, _) in storage.stream_names_matching(&request.streams).await? {
            // The newest MAX_ROWS_PER_STREAM readings, kept in a ring while paging so a long
            // series never sits in memory whole.
            let mut channels: Vec<std::collections::VecDeque<f64>> = Vec::new();
            let mut after = None;
            loop {
                let page = storage.readings(id, request.from, request.to, after, PAGE).await?;
                for r in &page {
                    let values = r.channels.as_ref().map_or_else(|| vec![r.value], |c| c.values.clone());
                    channels.resize_with(values.len(), std::collections::VecDeque::new);
                    for (c, v) in values.into_iter().enumerate() {
                        if channels[c].len() == MAX_ROWS_PER_STREAM {
                            channels[c].pop_front();
                        }
                        channels[c].push_back(v);
                    }
                }
                after = page.last().map(|r| r.ts);
                if (page.len() as i64) < PAGE {
                    break;
                }
            }
            for values in channels {
                corpus.push(Series::univariate(values.into()));
            }
        }
        Ok(corpus)
    }

    /// Live progress of a running job, if it is running in this process.
    pub fn progress(&self, id: i64) -> Option<Progress> {
        let live = self.inner.live.lock().expect("jobs lock");
        live.get(&id).and_then(|l| l.progress.lock().expect("progress lock").clone())
    }

    /// Stops every job (recorded as failed, "interrupted") and waits until they have ended.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.permits.close();
        self.inner.streams.stop_auto_fit();
        for live in self.inner.live.lock().expect("jobs lock").values() {
            live.cancel.cancel();
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    /// Cancels a queued or running job (it stops at its next batch).
    pub async fn cancel(&self, id: i64) -> Result<JobRecord, JobError> {
        let storage = self.inner.streams.storage();
        let job = storage.job(id).await?.ok_or(JobError::Unknown(id))?;
        if !matches!(job.status.as_str(), "queued" | "running") {
            return Err(JobError::Finished(id, job.status));
        }
        if let Some(live) = self.inner.live.lock().expect("jobs lock").get(&id) {
            live.cancel.cancel();
        }
        if job.status == "queued" {
            storage.update_job(id, "cancelled", None, None, None, None, Some(now_ms())).await?;
        }
        storage.job(id).await?.ok_or(JobError::Unknown(id))
    }
}
