//! Builds and runs the service: storage, writer, inference threads, stream registry and
//! the HTTP router. Tests and `tsad serve` start it the same way: [`Application::build`]
//! binds the listener (port 0 in tests) and [`Application::run_until`] serves until the
//! shutdown future completes, then stops intake, drains the streams and flushes the writer.
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::inference::{InferencePool, ModelCatalog};
use crate::metrics::Metrics;
use crate::storage::{Storage, Writer};
use crate::streams::{StreamDefaults, StreamLimits, Streams};

/// The service without HTTP: storage, writer, inference threads, stream registry and
/// training jobs (with automatic fitting). `tsad serve` puts the API in front of it;
/// `tsad eval` replays data through it directly.
pub struct Core {
    pub streams: Streams,
    pub jobs: crate::training::Jobs,
    pub metrics: Metrics,
    writer_task: tokio::task::JoinHandle<()>,
    /// The retention's passes (`--retention`, and streams' own).
    retention_task: tokio::task::JoinHandle<()>,
}

impl Core {
    /// Connects to the database (applying migrations), checks the default model and starts
    /// the background parts.
    pub async fn start(settings: &Settings) -> anyhow::Result<Core> {
        let metrics = Metrics::new();
        let storage = Storage::connect(&settings.database_url)
            .await
            .with_context(|| format!("connecting to {}", redact(&settings.database_url)))?;
        let catalog = ModelCatalog::new(settings.models_dir.clone());
        let default = catalog.active("default").context("loading the default model")?;
        info!(model = "default", version = %default.version, dir = %default.dir.display(), "default model");
        let (writer, writer_task) = Writer::spawn(storage.clone(), settings.writer_queue, metrics.clone());
        let inference = InferencePool::start(
            settings.inference_threads,
            settings.max_batch,
            settings.batch_wait,
            settings.inference_device,
            metrics.clone(),
        );
        let streams = Streams::new(
            storage.clone(),
            writer.clone(),
            inference,
            catalog,
            metrics.clone(),
            StreamLimits {
                mailbox: settings.mailbox,
                max_active: settings.max_active_streams,
                idle_evict: settings.idle_evict,
                commit_timeout: settings.commit_timeout,
            },
            StreamDefaults { model: "default".into(), warmup: settings.warmup, sensitivity: settings.sensitivity },
        );
        let retention_task =
            tokio::spawn(retention(storage, writer, settings.retention, streams.retention_changed(), metrics.clone()));
        let jobs =
            crate::training::Jobs::start(streams.clone(), settings.training_jobs, settings.training_threads).await?;
        jobs.start_auto_fit(
            settings.auto_train_jobs,
            crate::training::TrainRequest::auto_fit(settings.auto_train_epochs),
        );
        Ok(Core { streams, jobs, metrics, writer_task, retention_task })
    }

    /// Stops training jobs, drains the streams and flushes the writer.
    pub async fn shutdown(self) {
        let Core { streams, jobs, metrics, writer_task, retention_task } = self;
        // A pass cut short rolls its transaction back: its readings go at the next start.
        // Its handle on the writer goes with it, before the writer is waited for.
        retention_task.abort();
        let _ = retention_task.await;
        drop(metrics);
        jobs.shutdown().await;
        drop(jobs);
        streams.shutdown().await;
        // The writer ends once the last handle on it (held through `streams`) is gone and
        // its queue is empty.
        drop(streams);
        if tokio::time::timeout(std::time::Duration::from_secs(30), writer_task).await.is_err() {
            warn!("storage writer did not finish within 30 s");
        }
    }
}

/// Deletes each stream's readings older than its retention back from its newest (its own,
/// else the service's `keep`): a pass every tenth of the shortest retention in effect (at most
/// every 10 minutes, at least every second), the first at start. With no retention anywhere
/// it waits for a stream's settings to change (`changed`), and a change finds the shortest
/// again.
async fn retention(storage: Storage, writer: Writer, keep: Option<Duration>, changed: Arc<Notify>, metrics: Metrics) {
    let keep_ms = keep.map(|keep| i64::try_from(keep.as_millis()).unwrap_or(i64::MAX));
    let mut period = None;
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let own = match storage.shortest_stream_retention().await {
            Ok(own) => own,
            Err(e) => {
                warn!(error = %e, "reading the streams' retentions failed; tried again in 10 s");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(10)) => {}
                    () = changed.notified() => {}
                }
                continue;
            }
        };
        let Some(shortest) = keep_ms.into_iter().chain(own).min() else {
            changed.notified().await;
            continue;
        };
        let every =
            (Duration::from_millis(shortest as u64) / 10).clamp(Duration::from_secs(1), Duration::from_secs(600));
        if period != Some(every) {
            info!(
                retention = %keep.map_or_else(|| "none".to_string(), crate::config::retention_text),
                shortest = %crate::config::retention_text(Duration::from_millis(shortest as u64)),
                every = %crate::config::retention_text(every),
                "readings retention"
            );
            period = Some(every);
        }
        if let Some(due) = last.map(|last| last + every).filter(|due| *due > tokio::time::Instant::now()) {
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = changed.notified() => continue,
            }
        }
        last = Some(tokio::time::Instant::now());
        let started = std::time::Instant::now();
        match storage.expire_readings(keep_ms, &writer).await {
            Ok(expired) => {
                metrics.readings_expired.inc_by(expired.readings);
                let seconds = started.elapsed().as_secs_f64();
                if expired.readings > 0 {
                    info!(
                        readings = expired.readings,
                        streams = expired.streams,
                        seconds,
                        "retention deleted old readings"
                    );
                } else {
                    debug!(seconds, "retention found no readings to delete");
                }
            }
            Err(e) => warn!(error = %e, "retention pass failed; the next one tries again"),
        }
    }
}

/// A bound, ready-to-serve tsad.
pub struct Application {
    listener: TcpListener,
    router: axum::Router,
    core: Core,
}

impl Application {
    /// Starts the [`Core`] and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let core = Core::start(&settings).await?;
        if settings.api_keys.is_empty() {
            warn!(listen = %settings.listen, "no API keys configured: every route is open (loopback only)");
        }
        let state = AppState {
            streams: core.streams.clone(),
            jobs: core.jobs.clone(),
            metrics: core.metrics.clone(),
            keys: Arc::new(settings.api_keys.clone()),
            max_body_bytes: settings.max_body_bytes,
            max_readings: settings.max_readings,
            ingest_permits: Arc::new(tokio::sync::Semaphore::new(settings.max_ingest_requests)),
        };
        let router = api::router(state, &settings);
        let listener =
            TcpListener::bind(settings.listen).await.with_context(|| format!("binding {}", settings.listen))?;
        Ok(Application { listener, router, core })
    }

    /// The address actually bound (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, then drains and flushes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        info!(addr = %self.local_addr(), "tsad serving");
        let Application { listener, router, core } = self;
        axum::serve(listener, router).with_graceful_shutdown(shutdown).await.context("serving HTTP")?;
        info!("shutting down: stopping training jobs, draining streams");
        core.shutdown().await;
        info!("shutdown complete");
        Ok(())
    }
}

/// A database URL without its password, for logs.
pub(crate) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Completes on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = terminate => {} }
}
