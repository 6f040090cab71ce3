//! Streams: create/configure (`PUT`), list, get, delete, and their stored readings.
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::wire::{
    format_ts, json_body, query_timestamp, stream_name, Path, Query, StreamName, VerdictJson, VerdictSchema,
    MAX_CHANNELS,
};
use super::{ApiError, AppState};
use crate::scoring::Baseline;
use crate::storage::{ReadingRow, StreamConfig};
use crate::streams::StreamStatus;

pub fn write_routes() -> Router<AppState> {
    Router::new().route("/v1/streams/{stream}", put(put_stream))
}

pub fn read_routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams", get(list_streams))
        .route("/v1/streams/{stream}", get(get_stream))
        .route("/v1/streams/{stream}/readings", get(get_readings))
}

pub fn admin_routes() -> Router<AppState> {
    Router::new().route("/v1/streams/{stream}", axum::routing::delete(delete_stream))
}

/// A stream's settings; those left out keep their current values (defaults for a new stream).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"sensitivity": 0.6, "warmup": 50}))]
struct StreamSettings {
    /// Channels per reading (fixed once the stream has readings).
    #[schema(minimum = 1, maximum = 64)]
    channels: Option<usize>,
    /// The model that scores the stream (new streams: `default`).
    #[schema(value_type = Option<StreamName>, nullable = false)]
    model: Option<String>,
    /// 0 flags only the most extreme readings, 1 flags the most (new streams: the server's
    /// `--sensitivity`).
    #[schema(minimum = 0.0, maximum = 1.0)]
    sensitivity: Option<f64>,
    /// Readings judged before any is flagged (new streams: the server's `--warmup`).
    #[schema(minimum = 0, maximum = 10_000_000)]
    warmup: Option<u64>,
    /// Fit a model of the stream's own once it has enough readings (default true).
    auto_train: Option<bool>,
    /// What readings are judged against besides the model's forecast (new streams:
    /// `forecast`, nothing else).
    baseline: Option<BaselineSetting>,
    /// How long the stream's raw readings are kept back from its newest, a duration such as
    /// `30d` or `12h 30m` (1 minute to 1000 years); older ones are deleted, its anomaly
    /// events kept. `null`: the service's (`--retention`, which may be none); left out: as
    /// it is.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, nullable = true, example = "30d")]
    retention: Option<Option<String>>,
}

/// A setting that may be `null`: `Some(None)` for `null`, `None` (by `default`) when left out.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What readings are judged against besides the model's forecast. `forecast`: nothing else,
/// and a surprise that recurs becomes normal (a daily jump the model cannot time).
/// `warmup`: also each channel's median and spread over the stream's warm-up, fixed when it
/// ends; a reading unlike the warm-up stays anomalous however often it recurs (heart beats).
/// `history`: not the forecast but each channel's own history — its distance from one season
/// ago, whether its recent values ever came in that order, whether it leaves the range seen —
/// through an anomaly likelihood (operational metrics; the forecast still gives the band).
/// Choose `warmup` or `history` when creating the stream: both learn during the warm-up.
// The API's own copy of [`Baseline`]: the schema derive stays out of the scoring library.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Baseline)]
enum BaselineSetting {
    Forecast,
    Warmup,
    History,
}

impl From<BaselineSetting> for Baseline {
    fn from(b: BaselineSetting) -> Baseline {
        match b {
            BaselineSetting::Forecast => Baseline::Forecast,
            BaselineSetting::Warmup => Baseline::Warmup,
            BaselineSetting::History => Baseline::History,
        }
    }
}

// The JSON `status_json` writes, described for the OpenAPI document: keep the two in step.
/// A stream's configuration and state.
#[derive(utoipa::ToSchema)]
#[schema(as = Stream)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct StreamSchema {
    name: String,
    channels: u64,
    /// The model that scores it.
    model: String,
    /// The model's active version.
    model_version: String,
    sensitivity: f64,
    warmup: u64,
    auto_train: bool,
    baseline: BaselineSetting,
    /// The stream's own retention of raw readings (e.g. `30d 12h`); null: the service's.
    #[schema(required = true)]
    retention: Option<String>,
    /// `warming` until `warmup` readings have been judged.
    #[schema(inline)]
    state: StreamState,
    /// Readings stored.
    readings: u64,
    /// Readings the retention has deleted (`retention`); `readings` does not count them.
    readings_expired: u64,
    /// Anomaly events recorded.
    anomalies: u64,
    /// Time of the last reading (RFC 3339), null before the first.
    #[schema(format = DateTime, required = true)]
    last_ts: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    /// An automatic fit of a model of its own is due, queued or running.
    fit_pending: bool,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // described for the OpenAPI document, never built
enum StreamState {
    Warming,
    Scoring,
}

/// A page of streams, by name.
#[derive(utoipa::ToSchema)]
#[schema(as = StreamList)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct StreamListSchema {
    streams: Vec<StreamSchema>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListStreamsQuery {
    /// Page size (default 1000).
    #[param(nullable = false, minimum = 1, maximum = 10_000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
}

/// Default and largest page of streams.
const STREAMS_PAGE: (i64, i64) = (1000, 10_000);

// The JSON `get_readings` answers, described for the OpenAPI document: keep the two in step.
/// A page of stored readings with their verdicts, oldest first.
#[derive(utoipa::ToSchema)]
#[schema(as = ReadingsPage)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ReadingsPageSchema {
    readings: Vec<VerdictSchema>,
    /// Pass as `cursor` for the next page; null on the last page.
    #[schema(required = true)]
    next_cursor: Option<String>,
}

fn status_json(state: &AppState, s: &StreamStatus) -> Value {
    let r = &s.record;
    let warming = s.judged < r.config.warmup;
    json!({
        "name": r.name,
        "channels": r.config.channels,
        "model": r.config.model,
        "model_version": s.model_version,
        "sensitivity": r.config.sensitivity,
        "warmup": r.config.warmup,
        "auto_train": r.config.auto_train,
        "baseline": r.config.baseline.as_str(),
        "retention": r.config.retention.map(crate::config::retention_text),
        "state": if warming { "warming" } else { "scoring" },
        "readings": r.readings_count - r.readings_expired,
        "readings_expired": r.readings_expired,
        "anomalies": r.anomalies_count,
        "last_ts": r.last_ts.map(format_ts),
        "created_at": format_ts(r.created_at),
        "fit_pending": state.streams.fit_pending(&r.name),
    })
}

/// Create or configure a stream
///
/// Creates the stream (201) or changes its settings (200); settings left out keep their
/// values. A running stream restarts with the new settings.
#[utoipa::path(
    put,
    path = "/v1/streams/{stream}",
    tag = "streams",
    params(("stream" = StreamName, Path, description = "The stream")),
    request_body = StreamSettings,
    responses(
        (status = 200, description = "Stream reconfigured", body = StreamSchema),
        (status = 201, description = "Stream created", body = StreamSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["write"])),
)]
async fn put_stream(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    stream_name(&stream)?;
    let settings: StreamSettings = json_body(&headers, body).await?;
    let existing = state.streams.storage().stream(&stream).await?;
    let base = existing.as_ref().map_or_else(|| state.streams.default_config(1), |r| r.config.clone());
    let config = StreamConfig {
        channels: settings.channels.unwrap_or(base.channels),
        model: settings.model.unwrap_or(base.model),
        sensitivity: settings.sensitivity.unwrap_or(base.sensitivity),
        warmup: settings.warmup.unwrap_or(base.warmup),
        auto_train: settings.auto_train.unwrap_or(base.auto_train),
        baseline: settings.baseline.map_or(base.baseline, Baseline::from),
        retention: match settings.retention {
            None => base.retention,
            Some(None) => None,
            Some(Some(text)) => Some(crate::config::parse_retention(&text).map_err(|e| ApiError::Unprocessable(e.0))?),
        },
    };
    if !(1..=MAX_CHANNELS).contains(&config.channels) {
        return Err(ApiError::Unprocessable(format!("channels must be in 1..={MAX_CHANNELS}")));
    }
    if !(config.sensitivity.is_finite() && (0.0..=1.0).contains(&config.sensitivity)) {
        return Err(ApiError::Unprocessable("sensitivity must be in [0, 1]".into()));
    }
    if config.warmup > 10_000_000 {
        return Err(ApiError::Unprocessable("warmup must be at most 10000000".into()));
    }
    stream_name(&config.model).map_err(|_| ApiError::Unprocessable(format!("no model named {:?}", config.model)))?;
    state.streams.put(&stream, &config).await?;
    let status = state.streams.describe(&stream).await?.ok_or_else(|| ApiError::Internal("stream vanished".into()))?;
    let code = if existing.is_some() { StatusCode::OK } else { StatusCode::CREATED };
    Ok((code, Json(status_json(&state, &status))))
}

/// List streams
#[utoipa::path(
    get,
    path = "/v1/streams",
    tag = "streams",
    params(ListStreamsQuery),
    responses(
        (status = 200, description = "A page of streams, by name", body = StreamListSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["read"])),
)]
async fn list_streams(
    State(state): State<AppState>,
    Query(q): Query<ListStreamsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(STREAMS_PAGE.0);
    if !(1..=STREAMS_PAGE.1).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be in 1..={}", STREAMS_PAGE.1)));
    }
    // The cursor is the last name of the page before.
    if let Some(cursor) = &q.cursor {
        stream_name(cursor).map_err(|_| ApiError::BadRequest("invalid cursor".into()))?;
    }
    let records = state.streams.storage().streams_page(q.cursor.as_deref(), limit).await?;
    let next_cursor = (records.len() as i64 == limit).then(|| records.last().map(|r| r.name.clone())).flatten();
    let streams: Vec<Value> = records
        .into_iter()
        .map(|record| {
            let model_version =
                state.streams.model(&record.config.model).map(|m| m.version.clone()).unwrap_or_default();
            let judged = record.readings_count as u64;
            let last_ts = record.last_ts;
            status_json(&state, &StreamStatus { record, model_version, judged, last_ts })
        })
        .collect();
    Ok(Json(json!({ "streams": streams, "next_cursor": next_cursor })))
}

/// Get a stream
///
/// Its configuration and state: warming or scoring, counts, model and version.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}",
    tag = "streams",
    params(("stream" = StreamName, Path, description = "The stream")),
    responses(
        (status = 200, description = "The stream", body = StreamSchema),
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
async fn get_stream(State(state): State<AppState>, Path(stream): Path<String>) -> Result<Json<Value>, ApiError> {
    stream_name(&stream)?;
    let status = state.streams.describe(&stream).await?;
    status
        .map(|s| Json(status_json(&state, &s)))
        .ok_or_else(|| ApiError::NotFound(format!("stream {stream} does not exist")))
}

/// Delete a stream
///
/// Deletes the stream and everything stored for it: readings, verdicts, anomaly events.
#[utoipa::path(
    delete,
    path = "/v1/streams/{stream}",
    tag = "streams",
    params(("stream" = StreamName, Path, description = "The stream")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["admin"])),
)]
async fn delete_stream(State(state): State<AppState>, Path(stream): Path<String>) -> Result<StatusCode, ApiError> {
    stream_name(&stream)?;
    if state.streams.delete(&stream).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("stream {stream} does not exist")))
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ReadingsQuery {
    /// Readings at or after this time: Unix milliseconds or RFC 3339.
    #[param(nullable = false)]
    from: Option<String>,
    /// Readings before this time: Unix milliseconds or RFC 3339.
    #[param(nullable = false)]
    to: Option<String>,
    /// Page size (default 1000).
    #[param(nullable = false, minimum = 1, maximum = 10_000)]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    #[param(nullable = false)]
    cursor: Option<String>,
}

/// Default and largest page of readings.
const READINGS_PAGE: (i64, i64) = (1000, 10_000);

/// A stored reading's verdict as the API shows it.
fn row_json(r: &ReadingRow) -> VerdictJson<'_> {
    match &r.channels {
        Some(c) => VerdictJson {
            ts: r.ts,
            values: &c.values,
            expected: &c.expected,
            lower: &c.lower,
            upper: &c.upper,
            score: r.score,
            anomaly: r.anomaly,
        },
        None => VerdictJson {
            ts: r.ts,
            values: std::slice::from_ref(&r.value),
            expected: std::slice::from_ref(&r.expected),
            lower: std::slice::from_ref(&r.lower),
            upper: std::slice::from_ref(&r.upper),
            score: r.score,
            anomaly: r.anomaly,
        },
    }
}

/// A page of stored readings (`ReadingsPageSchema`), keys in alphabetical order.
#[derive(serde::Serialize)]
struct ReadingsPageJson<'a> {
    next_cursor: Option<String>,
    readings: Vec<VerdictJson<'a>>,
}

/// Stored readings of a stream
///
/// Readings with their verdicts, oldest first, paged by cursor.
#[utoipa::path(
    get,
    path = "/v1/streams/{stream}/readings",
    tag = "readings",
    params(("stream" = StreamName, Path, description = "The stream"), ReadingsQuery),
    responses(
        (status = 200, description = "A page of readings", body = ReadingsPageSchema),
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
async fn get_readings(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(q): Query<ReadingsQuery>,
) -> Result<Response, ApiError> {
    stream_name(&stream)?;
    let id = state
        .streams
        .storage()
        .stream_id(&stream)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("stream {stream} does not exist")))?;
    let from = q.from.as_deref().map(query_timestamp).transpose()?;
    let to = q.to.as_deref().map(query_timestamp).transpose()?;
    let limit = q.limit.unwrap_or(READINGS_PAGE.0);
    if !(1..=READINGS_PAGE.1).contains(&limit) {
        return Err(ApiError::BadRequest(format!("limit must be in 1..={}", READINGS_PAGE.1)));
    }
    let after = q
        .cursor
        .as_deref()
        .map(|c| c.parse::<i64>().map_err(|_| ApiError::BadRequest("invalid cursor".into())))
        .transpose()?;
    let rows = state.streams.storage().readings(id, from, to, after, limit).await?;
    let next_cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r.ts.to_string())).flatten();
    Ok(Json(ReadingsPageJson { next_cursor, readings: rows.iter().map(row_json).collect() }).into_response())
}
