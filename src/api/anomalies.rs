//! Anomaly events (newest first, cursor-paginated) and feedback on them.
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::wire::{
    channels_value, format_ts, json_body, query_timestamp, stream_name, Channels, Path, Query, StreamName,
};
use super::{ApiError, AppState};
use crate::storage::{AnomalyQuery, AnomalyRecord};

pub fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/anomalies", get(list_anomalies))
        .route("/v1/streams/{stream}/anomalies", get(stream_anomalies))
}

pub fn write_routes() -> Router<AppState> {
    Router::new().route("/v1/anomalies/{id}/feedback", post(post_feedback))
}

/// Default and largest page of anomalies.
const PAGE: (i64, i64) = (100, 1000);

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this stream's events (not with `/v1/streams/{stream}/anomalies`).
    #[param(nullable = false)]
    stream: Option<String>,
    /// Events that started at or after this time: Unix milliseconds or RFC 3339.
    #[param(nullable = false)]
    from: Option<String>,
    /// Events that started before this time: Unix milliseconds or RFC 3339.
    #[param(nullable = false)]
    to: Option<String>,
    /// Only events whose peak score is at least this.
    #[param(nullable = false)]
    min_score: Option<f64>,
    /// Page size (default 100).
    #[param(nullable = false, minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
}

// The JSON `anomaly_json` writes, described for the OpenAPI document: keep the two in step.
/// An anomaly event: a run of anomalous readings of one stream.
#[derive(utoipa::ToSchema)]
#[schema(as = Anomaly)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct AnomalySchema {
    id: i64,
    stream: String,
    /// First anomalous reading.
    #[schema(format = DateTime)]
    start: String,
    /// Last anomalous reading so far.
    #[schema(format = DateTime)]
    end: String,
    /// The reading with the highest score.
    #[schema(format = DateTime)]
    peak_ts: String,
    #[schema(minimum = 0.0, maximum = 1.0)]
    peak_score: f64,
    /// The reading at the peak.
    actual: Channels,
    /// The forecast at the peak.
    expected: Channels,
    /// The model (and version) that judged it.
    model: String,
    model_version: String,
    /// `open` while the stream is still anomalous.
    #[schema(inline)]
    status: EventStatus,
    /// The last feedback label, null without feedback.
    #[schema(required = true, value_type = Option<FeedbackLabel>)]
    feedback: Option<String>,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // described for the OpenAPI document, never built
enum EventStatus {
    Open,
    Closed,
}

// The JSON `query` answers, described for the OpenAPI document: keep the two in step.
/// A page of anomaly events, newest first.
#[derive(utoipa::ToSchema)]
#[schema(as = AnomalyPage)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct AnomalyPageSchema {
    anomalies: Vec<AnomalySchema>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

/// Whether an event was a real anomaly.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // described for the OpenAPI document; the handler reads a string
enum FeedbackLabel {
    TruePositive,
    FalsePositive,
}

pub fn anomaly_json(a: &AnomalyRecord) -> Value {
    let e = &a.event;
    json!({
        "id": a.id,
        "stream": a.stream,
        "start": format_ts(e.start_ts),
        "end": format_ts(e.end_ts),
        "peak_ts": format_ts(e.peak_ts),
        "peak_score": e.peak_score,
        "actual": channels_value(&e.actual),
        "expected": channels_value(&e.expected),
        "model": e.model,
        "model_version": e.model_version,
        "status": if e.open { "open" } else { "closed" },
        "feedback": a.feedback,
    })
}

async fn query(state: &AppState, stream: Option<&str>, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let stream_id = match stream {
        Some(name) => {
            stream_name(name)?;
            let id = state.streams.storage().stream_id(name).await?;
            Some(id.ok_or_else(|| ApiError::NotFound(format!("stream {name} does not exist")))?)
        }
        None => None,
    };
    let limit = q.limit.unwrap_or(PAGE.0);
    if !(1..=PAGE.1).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be in 1..={}", PAGE.1)));
    }
    if q.min_score.is_some_and(|s| !s.is_finite()) {
        return Err(ApiError::BadRequest("min_score must be a number".into()));
    }
    let after = match q.cursor.as_deref() {
        Some(c) => {
            let (ts, id) = c.split_once('.').ok_or_else(|| ApiError::BadRequest("invalid cursor".into()))?;
            let parse = |s: &str| s.parse::<i64>().map_err(|_| ApiError::BadRequest("invalid cursor".into()));
            Some((parse(ts)?, parse(id)?))
        }
        None => None,
    };
    let query = AnomalyQuery {
        stream_id,
        from: q.from.as_deref().map(query_timestamp).transpose()?,
        to: q.to.as_deref().map(query_timestamp).transpose()?,
        min_score: q.min_score,
        after,
        limit,
    };
    let rows = state.streams.storage().anomalies(&query).await?;
    let next_cursor =
        (rows.len() as i64 == limit).then(|| rows.last().map(|a| format!("{}.{}", a.event.start_ts, a.id))).flatten();
    Ok(Json(json!({ "anomalies": rows.iter().map(anomaly_json).collect::<Vec<_>>(), "next_cursor": next_cursor })))
}

/// List anomaly events
///
/// Events of every stream (or one, with `stream`), newest first, paged by cursor.
#[utoipa::path(
    get,
    path = "/v1/anomalies",
    tag = "anomalies",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of events", body = AnomalyPageSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["read"])),
)]
async fn list_anomalies(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let stream = q.stream.clone();
    query(&state, stream.as_deref(), q).await
}

/// Anomaly events of a stream
///
/// Like `GET /v1/anomalies?stream=…`, newest first, paged by cursor.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/anomalies",
    tag = "anomalies",
    params(("stream" = StreamName, Path, description = "The stream"), ListQuery),
    responses(
        (status = 200, description = "A page of events", body = AnomalyPageSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["read"])),
)]
async fn stream_anomalies(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    if q.stream.is_some() {
        return Err(ApiError::BadRequest("the stream is in the path".into()));
    }
    query(&state, Some(&stream), q).await
}

/// Feedback on an anomaly event.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"label": "false_positive", "note": "maintenance window"}))]
struct Feedback {
    #[schema(value_type = FeedbackLabel)]
    label: String,
    /// Free text, at most 2000 characters.
    #[schema(max_length = 2000)]
    note: Option<String>,
}

/// Give feedback on an anomaly event
///
/// Labels the event a true or a false positive; answers the event.
#[utoipa::path(
    post,
    path = "/v1/anomalies/{id}/feedback",
    tag = "anomalies",
    params(("id" = i64, Path, description = "The event's id")),
    request_body = Feedback,
    responses(
        (status = 200, description = "The event with its feedback", body = AnomalySchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["write"])),
)]
async fn post_feedback(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound(format!("no anomaly {id:?}")))?;
    let feedback: Feedback = json_body(&headers, body).await?;
    if !matches!(feedback.label.as_str(), "true_positive" | "false_positive") {
        return Err(ApiError::Unprocessable("label must be true_positive or false_positive".into()));
    }
    if feedback.note.as_ref().is_some_and(|n| n.chars().count() > 2000) {
        return Err(ApiError::Unprocessable("note may have at most 2000 characters".into()));
    }
    let now = crate::storage::now_ms();
    let storage = state.streams.storage();
    if !storage.add_feedback(id, &feedback.label, feedback.note.as_deref(), now).await? {
        return Err(ApiError::NotFound(format!("no anomaly {id}")));
    }
    let anomaly = storage.anomaly(id).await?.ok_or_else(|| ApiError::NotFound(format!("no anomaly {id}")))?;
    Ok(Json(anomaly_json(&anomaly)))
}
