//! Ingest: `POST /v1/streams/{stream}/readings` (JSON or NDJSON) and `POST /v1/readings`
//! (many streams). Everything is validated before any stream sees it; a 2xx means the
//! readings are committed.
use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{self, content_type, read_body, reading_verdict_json, stream_name, MAX_CHANNELS};
use super::{ApiError, AppState};
use crate::streams::{IngestOutcome, Reading};

/// Longest NDJSON line accepted.
const MAX_LINE_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{stream}/readings", post(post_stream_readings))
        .route("/v1/readings", post(post_readings))
}

#[derive(Debug, Deserialize)]
struct IngestQuery {
    /// `all` returns every verdict, not only the anomalous ones.
    verdicts: Option<String>,
}

impl IngestQuery {
    fn all(&self) -> Result<bool, ApiError> {
        match self.verdicts.as_deref() {
            None | Some("anomalies") => Ok(false),
            Some("all") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!("verdicts must be all or anomalies, not {other:?}"))),
        }
    }
}

/// Parses one reading object; `stream` is required when `multi`.
fn parse_reading(
    value: &Value,
    index: usize,
    multi: bool,
    single: bool,
) -> Result<(Option<String>, Reading), ApiError> {
    let at = |msg: String| ApiError::Unprocessable(format!("reading {index}: {msg}"));
    let Value::Object(fields) = value else {
        return Err(ApiError::BadRequest(format!("reading {index}: must be an object")));
    };
    for key in fields.keys() {
        if !matches!(key.as_str(), "ts" | "value" | "values" | "stream") || (key == "stream" && !multi) {
            return Err(at(format!("unknown field {key:?}")));
        }
    }
    let stream = if multi {
        match fields.get("stream") {
            Some(Value::String(s)) => Some(stream_name(s).map_err(|e| at(e.to_string()))?.to_string()),
            _ => return Err(at("\"stream\" (a string) is required".into())),
        }
    } else {
        None
    };
    let ts = match fields.get("ts") {
        Some(v) => wire::timestamp(v).map_err(at)?,
        // A lone reading may leave the time to the server; in a batch order must be explicit.
        None if single => crate::storage::now_ms(),
        None => return Err(at("\"ts\" is required when a request carries several readings".into())),
    };
    let number = |v: &Value| -> Result<f64, ApiError> {
        match v.as_f64() {
            Some(x) if x.is_finite() && v.is_number() => Ok(x),
            _ => Err(at(format!("{v} is not a finite number"))),
        }
    };
    let values = match (fields.get("value"), fields.get("values")) {
        (Some(v), None) => vec![number(v)?],
        (None, Some(Value::Array(items))) if !items.is_empty() && items.len() <= MAX_CHANNELS => {
            items.iter().map(number).collect::<Result<_, _>>()?
        }
        (None, Some(_)) => return Err(at(format!("\"values\" must be an array of 1 to {MAX_CHANNELS} numbers"))),
        (Some(_), Some(_)) => return Err(at("give \"value\" or \"values\", not both".into())),
        (None, None) => return Err(at("\"value\" or \"values\" is required".into())),
    };
    Ok((stream, Reading { ts, values }))
}

/// Splits a body into reading objects: `{"readings":[…]}` as JSON, one object a line as NDJSON.
fn reading_values(headers: &HeaderMap, bytes: &[u8], max: usize) -> Result<Vec<Value>, ApiError> {
    let too_many = || ApiError::Unprocessable(format!("a request may carry at most {max} readings"));
    match content_type(headers).as_deref() {
        Some("application/x-ndjson") | Some("application/ndjson") => {
            let text = std::str::from_utf8(bytes).map_err(|_| ApiError::BadRequest("body is not UTF-8".into()))?;
            let mut out = Vec::new();
            for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                if line.len() > MAX_LINE_BYTES {
                    return Err(ApiError::PayloadTooLarge(MAX_LINE_BYTES));
                }
                if out.len() == max {
                    return Err(too_many());
                }
                out.push(
                    serde_json::from_str(line)
                        .map_err(|e| ApiError::BadRequest(format!("NDJSON line {}: {e}", n + 1)))?,
                );
            }
            Ok(out)
        }
        None | Some("application/json") => {
            let body: Value =
                serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            match body {
                Value::Object(mut map) if map.len() == 1 => match map.remove("readings") {
                    Some(Value::Array(items)) if items.len() > max => Err(too_many()),
                    Some(Value::Array(items)) => Ok(items),
                    _ => Err(ApiError::BadRequest("body must be {\"readings\": [ … ]}".into())),
                },
                _ => Err(ApiError::BadRequest("body must be {\"readings\": [ … ]}".into())),
            }
        }
        Some(other) => Err(ApiError::UnsupportedMediaType(format!(
            "readings are application/json or application/x-ndjson, not {other}"
        ))),
    }
}

/// Groups readings by stream in order of first appearance and checks each group.
fn group(
    readings: Vec<(Option<String>, Reading)>,
    default_stream: Option<&str>,
) -> Result<Vec<(String, Vec<Reading>)>, ApiError> {
    if readings.is_empty() {
        return Err(ApiError::Unprocessable("no readings in the request".into()));
    }
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<Reading>> = HashMap::new();
    for (stream, reading) in readings {
        let name = stream.or_else(|| default_stream.map(str::to_string)).unwrap_or_default();
        let group = groups.entry(name.clone()).or_insert_with(|| {
            order.push(name.clone());
            Vec::new()
        });
        if let Some(prev) = group.last() {
            if reading.ts <= prev.ts {
                return Err(ApiError::Unprocessable(format!(
                    "stream {name}: timestamps must increase within a request ({} follows {})",
                    wire::format_ts(reading.ts),
                    wire::format_ts(prev.ts)
                )));
            }
            if reading.values.len() != prev.values.len() {
                return Err(ApiError::Unprocessable(format!("stream {name}: readings differ in channel count")));
            }
        }
        group.push(reading);
    }
    Ok(order
        .into_iter()
        .map(|name| {
            let readings = groups.remove(&name).unwrap_or_default();
            (name, readings)
        })
        .collect())
}

fn outcome_json(o: &IngestOutcome, all: bool) -> Value {
    let anomalies: Vec<Value> = o.verdicts.iter().filter(|v| v.verdict.anomaly).map(reading_verdict_json).collect();
    let mut out = json!({ "stream": o.stream, "accepted": o.accepted, "anomalies": anomalies });
    if all {
        out["verdicts"] = Value::Array(o.verdicts.iter().map(reading_verdict_json).collect());
    }
    out
}

async fn post_stream_readings(
    State(state): State<AppState>,
    Path(stream): Path<String>,
    Query(query): Query<IngestQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    stream_name(&stream)?;
    let all = query.all()?;
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let values = reading_values(&headers, &bytes, state.max_readings)?;
    let single = values.len() == 1;
    let readings =
        values.iter().enumerate().map(|(i, v)| parse_reading(v, i, false, single)).collect::<Result<Vec<_>, _>>()?;
    let groups = group(readings, Some(&stream))?;
    let outcomes = state.streams.ingest(groups).await?;
    let outcome = outcomes.first().ok_or_else(|| ApiError::Internal("ingest returned no outcome".into()))?;
    Ok(Json(outcome_json(outcome, all)))
}

async fn post_readings(
    State(state): State<AppState>,
    Query(query): Query<IngestQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let all = query.all()?;
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let values = reading_values(&headers, &bytes, state.max_readings)?;
    let readings =
        values.iter().enumerate().map(|(i, v)| parse_reading(v, i, true, false)).collect::<Result<Vec<_>, _>>()?;
    let groups = group(readings, None)?;
    let outcomes = state.streams.ingest(groups).await?;
    let accepted: usize = outcomes.iter().map(|o| o.accepted).sum();
    let streams: Vec<Value> = outcomes.iter().map(|o| outcome_json(o, all)).collect();
    Ok(Json(json!({ "accepted": accepted, "streams": streams })))
}
