//! Anomaly events (newest first, cursor-paginated) and feedback on them.
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{channels_value, format_ts, json_body, query_timestamp, stream_name};
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    stream: Option<String>,
    from: Option<String>,
    to: Option<String>,
    min_score: Option<f64>,
    limit: Option<i64>,
    cursor: Option<String>,
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
            let record = state.streams.storage().stream(name).await?;
            Some(record.ok_or_else(|| ApiError::NotFound(format!("stream {name} does not exist")))?.id)
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

async fn list_anomalies(State(state): State<AppState>, Query(q): Query<ListQuery>) -> Result<Json<Value>, ApiError> {
    let stream = q.stream.clone();
    query(&state, stream.as_deref(), q).await
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Feedback {
    label: String,
    note: Option<String>,
}

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
