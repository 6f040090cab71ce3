//! Liveness, readiness and the Prometheus scrape endpoint (open, like most scrape targets;
//! they reveal no stream names or data).
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::openapi::Unavailable;
use super::{ApiError, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz)).route("/metrics", get(metrics))
}

// The JSON `healthz` answers, described for the OpenAPI document: keep the two in step.
/// The process is alive.
#[derive(utoipa::ToSchema)]
#[schema(as = Health)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct HealthSchema {
    /// Always `ok`.
    #[schema(pattern = "^ok$")]
    status: String,
}

// The JSON `readyz` answers, described for the OpenAPI document: keep the two in step.
/// The service is ready: its database answers.
#[derive(utoipa::ToSchema)]
#[schema(as = Ready)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ReadySchema {
    /// Always `ready`.
    #[schema(pattern = "^ready$")]
    status: String,
    /// Streams with an actor in memory.
    active_streams: u64,
}

/// Liveness
///
/// Answers while the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    responses((status = 200, description = "Alive", body = HealthSchema)),
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness
///
/// Ready when the database answers within a second.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready", body = ReadySchema),
        (status = 503, response = Unavailable),
    ),
)]
async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    match tokio::time::timeout(Duration::from_secs(1), state.streams.storage().ping()).await {
        Ok(Ok(())) => Ok(Json(json!({ "status": "ready", "active_streams": state.streams.active() }))),
        Ok(Err(e)) => Err(ApiError::Unavailable(e.to_string())),
        Err(_) => Err(ApiError::Unavailable("database did not answer within 1 s".into())),
    }
}

/// Prometheus metrics
///
/// The Prometheus text format: requests by route and status, readings, verdicts, jobs,
/// models, queues.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain")),
)]
// Gauges that describe stored state are refreshed here, at scrape time, so they are never
// stale and cost nothing between scrapes.
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let metrics = &state.metrics;
    let counts = tokio::time::timeout(Duration::from_secs(1), state.streams.storage().job_counts()).await;
    if let Ok(Ok(counts)) = counts {
        for job_state in ["queued", "running", "succeeded", "failed", "cancelled"] {
            let n = counts.iter().find(|(s, _)| s == job_state).map_or(0, |(_, n)| *n);
            metrics.jobs.with_label_values(&[job_state]).set(n);
        }
    }
    let catalog = state.streams.catalog();
    let serving = catalog.names().iter().filter(|name| catalog.versions(name).is_ok_and(|v| !v.is_empty())).count();
    metrics.models_active.set(serving as i64);
    metrics.auto_fits_pending.set(state.streams.fits_pending() as i64);
    metrics.ingest_permits_available.set(state.ingest_permits.available_permits() as i64);
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
