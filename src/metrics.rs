//! Prometheus metrics of the service, on one registry per running app (so tests that start
//! several apps in one process do not share counters). Label sets are bounded on purpose:
//! routes are matched route templates, never raw paths, and no stream name is a label.
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric the service exports. Cheap to clone (the metrics are shared handles).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Readings accepted and committed.
    pub readings: IntCounter,
    /// Readings flagged anomalous.
    pub anomalies: IntCounter,
    /// Anomaly events opened.
    pub events: IntCounter,
    /// Seconds from a reading's arrival at its stream to its verdict being ready.
    pub verdict_latency: Histogram,
    /// Sequences per batched inference call.
    pub inference_batch: Histogram,
    /// Seconds per inference call.
    pub inference_latency: Histogram,
    /// Streams held in memory.
    pub active_streams: IntGauge,
    /// Requests ahead in a stream's queue (its mailbox) when a request arrives.
    pub mailbox_depth: Histogram,
    /// Seconds per group commit.
    pub commit_latency: Histogram,
    /// Readings per group commit.
    pub commit_rows: Histogram,
    /// Stream scoring states written with their readings' commits.
    pub snapshots: IntCounter,
    /// Readings the retention deleted.
    pub readings_expired: IntCounter,
    /// Seconds per step of a move of SQLite's readings log into the readings table (the
    /// pause it puts between two commits).
    pub compaction_latency: Histogram,
    /// Rows in SQLite's readings log, as the writer counts them.
    pub readings_log_rows: IntGauge,
    /// HTTP requests by matched route, method and status.
    pub http_requests: IntCounterVec,
    /// HTTP request duration by matched route.
    pub http_duration: HistogramVec,
    /// Requests refused because a queue was full.
    pub overloaded: IntCounter,
    /// Training jobs by state (refreshed from the database at each scrape).
    pub jobs: IntGaugeVec,
    /// Seconds per training epoch, over every job.
    pub training_epoch: Histogram,
    /// Models in the registry with a version that serves (refreshed at each scrape).
    pub models_active: IntGauge,
    /// Streams with an automatic fit queued or running (refreshed at each scrape).
    pub auto_fits_pending: IntGauge,
    /// Ingest requests that could still be admitted now (refreshed at each scrape; 0 means
    /// the next one gets a 429).
    pub ingest_permits_available: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn exponential(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).expect("static bucket parameters are valid")
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new_custom(Some("tsad".into()), None).expect("static prefix is valid");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("static metric definition");
            registry.register(Box::new(c.clone())).expect("metric names are unique");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("static metric");
            registry.register(Box::new(h.clone())).expect("metric names are unique");
            h
        };
        let seconds = exponential(1e-5, 2.0, 22);
        let sizes = exponential(1.0, 2.0, 18);
        let active_streams = IntGauge::new("active_streams", "Streams held in memory").expect("static metric");
        registry.register(Box::new(active_streams.clone())).expect("unique");
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by matched route, method and status"),
            &["route", "method", "status"],
        )
        .expect("static metric");
        registry.register(Box::new(http_requests.clone())).expect("unique");
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request duration by matched route")
                .buckets(seconds.clone()),
            &["route"],
        )
        .expect("static metric");
        registry.register(Box::new(http_duration.clone())).expect("unique");
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("static metric definition");
            registry.register(Box::new(g.clone())).expect("metric names are unique");
            g
        };
        let jobs = IntGaugeVec::new(Opts::new("jobs", "Training jobs by state"), &["state"]).expect("static metric");
        registry.register(Box::new(jobs.clone())).expect("unique");
        Metrics {
            jobs,
            training_epoch: histogram(
                "training_epoch_seconds",
                "Seconds per training epoch",
                exponential(0.01, 2.0, 16),
            ),
            models_active: gauge("models_active", "Models in the registry with a version that serves"),
            auto_fits_pending: gauge("auto_fits_pending", "Streams with an automatic fit queued or running"),
            ingest_permits_available: gauge(
                "ingest_permits_available",
                "Ingest requests that could still be admitted (max_ingest_requests minus those in flight)",
            ),
            readings: counter("readings_total", "Readings accepted and committed"),
            anomalies: counter("anomalous_readings_total", "Readings flagged anomalous"),
            events: counter("anomaly_events_total", "Anomaly events opened"),
            verdict_latency: histogram(
                "verdict_latency_seconds",
                "Seconds from a reading reaching its stream to its verdict",
                seconds.clone(),
            ),
            inference_batch: histogram("inference_batch_size", "Sequences per batched inference call", sizes.clone()),
            inference_latency: histogram("inference_latency_seconds", "Seconds per inference call", seconds.clone()),
            active_streams,
            mailbox_depth: histogram(
                "mailbox_depth",
                "Requests holding or awaiting a stream's turn when another arrives",
                sizes.clone(),
            ),
            commit_latency: histogram("commit_latency_seconds", "Seconds per group commit", seconds.clone()),
            compaction_latency: histogram(
                "compaction_latency_seconds",
                "Seconds per step of a move of the readings log into the readings table (SQLite)",
                seconds,
            ),
            readings_log_rows: gauge("readings_log_rows", "Rows in the readings log awaiting their move (SQLite)"),
            commit_rows: histogram("commit_rows", "Readings per group commit", sizes),
            snapshots: counter("snapshots_total", "Stream scoring states written with their readings' commits"),
            readings_expired: counter("readings_expired_total", "Readings the retention deleted"),
            http_requests,
            http_duration,
            overloaded: counter("overloaded_total", "Requests refused with 429 because a queue was full"),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = prometheus::TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buffer).is_err() {
            return String::new();
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
