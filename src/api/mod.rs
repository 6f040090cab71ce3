//! All HTTP: the v1 API of DESIGN.md §5, health and metrics endpoints, authentication and
//! the middleware stack. Handlers validate at the edge and call into `streams` and
//! `storage`; every error leaves as problem+json through [`ApiError`].
mod admin;
mod anomalies;
mod auth;
mod dashboard;
pub mod error;
mod health;
mod openapi;
mod readings;
mod streams;
pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use tower::ServiceBuilder;
use tower_http::compression::CompressionLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::config::{ApiKey, Scope, Settings};
use crate::metrics::Metrics;
use crate::streams::Streams;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub streams: Streams,
    pub jobs: crate::training::Jobs,
    pub metrics: Metrics,
    pub keys: Arc<Vec<ApiKey>>,
    pub max_body_bytes: usize,
    pub max_readings: usize,
    /// Ingest requests admitted at once (`max_ingest_requests`).
    pub ingest_permits: Arc<tokio::sync::Semaphore>,
}

/// The whole HTTP application.
pub fn router(state: AppState, settings: &Settings) -> Router {
    let scoped = |scope: Scope, routes: Router<AppState>| {
        routes.route_layer(middleware::from_fn_with_state((state.clone(), scope), auth::require))
    };
    let ingest = readings::routes().route_layer(middleware::from_fn_with_state(state.clone(), readings::admit));
    let write = scoped(Scope::Write, ingest.merge(streams::write_routes()).merge(anomalies::write_routes()));
    let read = scoped(Scope::Read, streams::read_routes().merge(anomalies::read_routes()));
    let admin = scoped(Scope::Admin, streams::admin_routes().merge(admin::routes()).merge(admin::job_routes()));
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .merge(write)
        .merge(read)
        .merge(admin)
        .merge(health::routes())
        .merge(openapi::routes())
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .method_not_allowed_fallback(|| async { error::problem(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") })
        .layer(middleware::from_fn_with_state(state.clone(), record_metrics))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let route = req.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str());
                    let id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("");
                    tracing::info_span!("http", method = %req.method(), route, request_id = id)
                }))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, settings.request_timeout))
                .layer(CompressionLayer::new()),
        )
        .layer(middleware::map_response(retry_after))
        .with_state(state)
}

/// Every "try again later" says when, including the request-timeout layer's 503.
async fn retry_after(mut response: Response) -> Response {
    if matches!(response.status(), StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE)
        && !response.headers().contains_key(axum::http::header::RETRY_AFTER)
    {
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    }
    response
}

/// Counts requests by matched route (never the raw path), method and status.
async fn record_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route =
        req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    state.metrics.http_requests.with_label_values(&[route.as_str(), method.as_str(), status.as_str()]).inc();
    state.metrics.http_duration.with_label_values(&[route.as_str()]).observe(started.elapsed().as_secs_f64());
    if status == StatusCode::TOO_MANY_REQUESTS {
        state.metrics.overloaded.inc();
    }
    response
}
