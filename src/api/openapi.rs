//! The OpenAPI 3.1 document of the API, generated from the handlers' `#[utoipa::path]`
//! annotations and the schemas beside them, served at `GET /openapi.json`, and `/docs`, a
//! page that renders it with a form to try each operation (one embedded file: it loads
//! nothing from elsewhere). Both are open, like `/healthz`: they describe the API, not data.
//!
//! Also here: the reusable problem+json responses every handler lists, and the security
//! scheme. A route that is added without an annotation here fails `tests/it/openapi.rs`.
use std::sync::OnceLock;

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::Problem;
use super::{admin, anomalies, health, readings, streams, AppState};

pub fn routes() -> Router<AppState> {
    Router::new().route("/openapi.json", get(openapi_json)).route("/docs", get(docs))
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "tsad",
        version = env!("CARGO_PKG_VERSION"),
        description = "Streaming time-series anomaly detection: every reading is judged against a \
            recurrent network's forecast the moment it arrives.\n\n\
            Timestamps are RFC 3339 strings or integer Unix milliseconds in requests, RFC 3339 in \
            responses. Errors are `application/problem+json` (RFC 9457). With API keys configured, \
            requests carry `Authorization: Bearer <key>`; a key's scope is `read` (queries), \
            `write` (ingest, stream settings, feedback) or `admin` (everything). Without keys the \
            service is open (and listens on loopback only).",
    ),
    paths(
        readings::post_stream_readings,
        readings::post_readings,
        streams::put_stream,
        streams::list_streams,
        streams::get_stream,
        streams::delete_stream,
        streams::get_readings,
        anomalies::list_anomalies,
        anomalies::stream_anomalies,
        anomalies::post_feedback,
        admin::list_models,
        admin::activate,
        admin::train,
        admin::list_jobs,
        admin::get_job,
        admin::cancel_job,
        health::healthz,
        health::readyz,
        health::metrics,
        openapi_json,
    ),
    components(
        schemas(Problem),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            TooManyRequests,
            Unavailable,
        ),
    ),
    modifiers(&ApiKeys),
    tags(
        (name = "readings", description = "Ingest readings and read them back with their verdicts"),
        (name = "streams", description = "Create, configure, list and delete streams"),
        (name = "anomalies", description = "Anomaly events and feedback on them"),
        (name = "models", description = "The model registry: versions, activation, rollback"),
        (name = "jobs", description = "Training jobs"),
        (name = "health", description = "Liveness, readiness, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// Adds the bearer-key security scheme the operations' `security` names.
struct ApiKeys;

impl Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "An API key (`--api-keys scope:key,…`). The scopes an operation lists are the key \
                 scopes it needs; an `admin` key may do everything.",
            ))
            .build();
        components.add_security_scheme("api_key", SecurityScheme::Http(scheme));
    }
}

/// The problem+json responses, one per status, each a reusable response of the document.
macro_rules! problem_responses {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        #[derive(utoipa::ToResponse)]
        $(#[$meta])*
        #[allow(dead_code)] // a response schema only
        pub struct $name(Problem);
    )*};
}

problem_responses! {
    /// Malformed request: unparsable JSON, query string or cursor, or wrong types.
    #[response(content_type = "application/problem+json")]
    BadRequest;
    /// A key is required and none (or an unknown one) was given.
    #[response(
        content_type = "application/problem+json",
        headers(("WWW-Authenticate" = String, description = "`Bearer`")),
    )]
    Unauthorized;
    /// The key's scope does not allow this operation.
    #[response(content_type = "application/problem+json")]
    Forbidden;
    /// No such stream, anomaly event, model, version or job.
    #[response(content_type = "application/problem+json")]
    NotFound;
    /// Conflicts with stored state: a reading not after the stream's last one that is not a
    /// retry of a stored reading (or differs from it), or a job that has already ended.
    #[response(content_type = "application/problem+json")]
    Conflict;
    /// The body (or an NDJSON line) is larger than the server accepts.
    #[response(content_type = "application/problem+json")]
    PayloadTooLarge;
    /// The body is neither JSON nor (where accepted) NDJSON.
    #[response(content_type = "application/problem+json")]
    UnsupportedMediaType;
    /// Well-formed but unacceptable: a value out of range, a bad stream name, a wrong channel
    /// count, timestamps that do not increase, too many readings.
    #[response(content_type = "application/problem+json")]
    Unprocessable;
    /// Overloaded (a queue is full); nothing was stored. Retry after a moment.
    #[response(
        content_type = "application/problem+json",
        headers(("Retry-After" = u32, description = "Seconds to wait")),
    )]
    TooManyRequests;
    /// The database is unavailable or the request timed out; nothing was acknowledged.
    #[response(
        content_type = "application/problem+json",
        headers(("Retry-After" = u32, description = "Seconds to wait")),
    )]
    Unavailable;
}

/// The OpenAPI document
///
/// This document (OpenAPI 3.1, JSON).
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")),
)]
async fn openapi_json() -> impl IntoResponse {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| ApiDoc::openapi().to_json().expect("the OpenAPI document serialises"));
    ([(header::CONTENT_TYPE, "application/json")], document.as_str())
}

/// What the docs page may load and connect to: its own inline script and style, and this
/// server (for `openapi.json` and the operations it tries).
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The interactive documentation page (it renders `/openapi.json` in the browser).
async fn docs() -> impl IntoResponse {
    ([(header::CONTENT_SECURITY_POLICY, DOCS_CONTENT_SECURITY_POLICY)], Html(include_str!("docs.html")))
}
