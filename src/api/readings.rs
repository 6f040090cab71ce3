//! Ingest: `POST /v1/streams/{stream}/readings` (JSON or NDJSON) and `POST /v1/readings`
//! (many streams). Everything is validated before any stream sees it; a 2xx means the
//! readings are committed.
use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{
    BadRequest, Conflict, Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::wire::{
    self, content_type, read_body, reading_verdict_json, stream_name, Path, Query, StreamName, Timestamp,
    VerdictSchema, MAX_CHANNELS,
};
use super::{ApiError, AppState};
use crate::streams::{IngestOutcome, Reading};

/// Longest NDJSON line accepted.
const MAX_LINE_BYTES: usize = 64 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/streams/{stream}/readings", post(post_stream_readings))
        .route("/v1/readings", post(post_readings))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct IngestQuery {
    /// `all` returns every verdict (in `verdicts`), `anomalies` (the default) only the
    /// anomalous ones.
    #[param(value_type = Option<VerdictsParam>, inline, nullable = false)]
    verdicts: Option<String>,
}

/// Values of `?verdicts=`.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // described for the OpenAPI document; the handler reads a string
enum VerdictsParam {
    All,
    Anomalies,
}

/// One reading of a single-stream request (a JSON array item, or one NDJSON line).
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"ts": "2026-01-01T10:00:00Z", "value": 41.5}))]
#[allow(dead_code)] // described for the OpenAPI document; `parse_reading` reads readings
struct ReadingIn {
    /// When it was measured. Required when the request carries several readings; a lone
    /// reading without it is stamped with the server's clock.
    #[schema(nullable = false)]
    ts: Option<Timestamp>,
    /// The reading of a single-channel stream (`value` or `values`, not both).
    #[schema(nullable = false)]
    value: Option<f64>,
    /// One number per channel of a multichannel stream.
    #[schema(nullable = false, min_items = 1, max_items = 64)]
    values: Option<Vec<f64>>,
}

/// A single-stream request body; at most `--max-readings` (10,000) readings, timestamps
/// increasing, all with the same channel count.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"readings": [{"ts": "2026-01-01T10:00:00Z", "value": 41.5}]}))]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ReadingsIn {
    #[schema(min_items = 1)]
    readings: Vec<ReadingIn>,
}

/// One reading of a many-stream request.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"stream": "boiler-7", "ts": "2026-01-01T10:00:00Z", "value": 41.5}))]
#[allow(dead_code)] // described for the OpenAPI document; `parse_reading` reads readings
struct StreamReadingIn {
    /// The stream (created with defaults on its first reading).
    stream: StreamName,
    ts: Timestamp,
    /// The reading of a single-channel stream (`value` or `values`, not both).
    #[schema(nullable = false)]
    value: Option<f64>,
    /// One number per channel of a multichannel stream.
    #[schema(nullable = false, min_items = 1, max_items = 64)]
    values: Option<Vec<f64>>,
}

/// A many-stream request body: readings of several streams, increasing in time per stream.
#[derive(utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"readings": [{"stream": "a", "ts": 1767261600000i64, "value": 1.5},
    {"stream": "b", "ts": 1767261600000i64, "values": [1.0, 2.0]}]}))]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct StreamReadingsIn {
    #[schema(min_items = 1)]
    readings: Vec<StreamReadingIn>,
}

// The JSON `outcome_json` writes, described for the OpenAPI document: keep the two in step.
/// The readings of one stream that were committed, and their verdicts.
#[derive(utoipa::ToSchema)]
#[schema(as = IngestReply)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct IngestReplySchema {
    stream: String,
    /// Readings committed.
    accepted: u64,
    /// Verdicts of the anomalous readings.
    anomalies: Vec<VerdictSchema>,
    /// Every verdict, in order; only with `?verdicts=all`.
    #[schema(nullable = false)]
    verdicts: Option<Vec<VerdictSchema>>,
}

// The JSON `post_readings` answers, described for the OpenAPI document: keep the two in step.
/// The readings committed, per stream.
#[derive(utoipa::ToSchema)]
#[schema(as = BatchIngestReply)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct BatchIngestReplySchema {
    /// Readings committed, over all streams.
    accepted: u64,
    /// One entry per stream, in order of first appearance in the request.
    streams: Vec<IngestReplySchema>,
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

/// Admits an ingest request if fewer than `max_ingest_requests` are in flight, else answers
/// 429 at once, before the body is read: a burst costs a refusal, not memory.
pub(crate) async fn admit(
    axum::extract::State(state): axum::extract::State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match state.ingest_permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::TooManyRequests("too many ingest requests in flight".into()).into_response(),
    }
}

/// A request body as the readings of each stream, every rule checked: `stream` is the
/// stream of a single-stream request (readings then carry no `stream` field), `None` for
/// `POST /v1/readings`.
pub(crate) fn parse_body(
    headers: &HeaderMap,
    bytes: &[u8],
    max: usize,
    stream: Option<&str>,
) -> Result<Vec<(String, Vec<Reading>)>, ApiError> {
    let values = reading_values(headers, bytes, max)?;
    let multi = stream.is_none();
    let single = !multi && values.len() == 1;
    let readings =
        values.iter().enumerate().map(|(i, v)| parse_reading(v, i, multi, single)).collect::<Result<Vec<_>, _>>()?;
    group(readings, stream)
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

/// Ingest readings of one stream
///
/// Judges every reading the moment it arrives and answers with the anomalous ones (or all
/// with `?verdicts=all`). The body is JSON (`{"readings": […]}`) or NDJSON (one reading
/// object a line). The stream is created with defaults on its first reading. A 2xx means
/// the readings are committed; any error means nothing was stored. Retrying readings at
/// timestamps already stored is accepted when they are identical (409 when not).
#[utoipa::path(
    post,
    path = "/v1/streams/{stream}/readings",
    tag = "readings",
    params(("stream" = StreamName, Path, description = "The stream"), IngestQuery),
    request_body(content(
        (ReadingsIn = "application/json"),
        (ReadingIn = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "Readings committed; the verdicts", body = IngestReplySchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["write"])),
)]
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
    let groups = parse_body(&headers, &bytes, state.max_readings, Some(&stream))?;
    let outcomes = state.streams.ingest(groups).await?;
    let outcome = outcomes.first().ok_or_else(|| ApiError::Internal("ingest returned no outcome".into()))?;
    Ok(Json(outcome_json(outcome, all)))
}

/// Ingest readings of many streams
///
/// Readings of several streams in one body (JSON `{"readings": […]}` or NDJSON), each with
/// its `stream`; streams are created with defaults on their first reading. A 2xx means the
/// readings are committed.
#[utoipa::path(
    post,
    path = "/v1/readings",
    tag = "readings",
    params(IngestQuery),
    request_body(content(
        (StreamReadingsIn = "application/json"),
        (StreamReadingIn = "application/x-ndjson"),
    )),
    responses(
        (status = 200, description = "Readings committed; the verdicts per stream", body = BatchIngestReplySchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["write"])),
)]
async fn post_readings(
    State(state): State<AppState>,
    Query(query): Query<IngestQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let all = query.all()?;
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let groups = parse_body(&headers, &bytes, state.max_readings, None)?;
    let outcomes = state.streams.ingest(groups).await?;
    let accepted: usize = outcomes.iter().map(|o| o.accepted).sum();
    let streams: Vec<Value> = outcomes.iter().map(|o| outcome_json(o, all)).collect();
    Ok(Json(json!({ "accepted": accepted, "streams": streams })))
}

#[cfg(test)]
mod properties {
    //! The parser never panics, whatever the bytes: it returns readings that keep every
    //! promise (finite values, increasing timestamps, one channel count per stream) or a 4xx.
    use axum::http::{header, HeaderMap, HeaderValue};
    use proptest::prelude::*;

    use super::parse_body;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type).expect("valid header"));
        h
    }

    fn check(content_type: &str, bytes: &[u8], stream: Option<&str>) {
        match parse_body(&headers(content_type), bytes, 100, stream) {
            Ok(groups) => {
                assert!(!groups.is_empty());
                for (name, readings) in groups {
                    assert!(!name.is_empty() && !readings.is_empty());
                    let width = readings[0].values.len();
                    for pair in readings.windows(2) {
                        assert!(pair[0].ts < pair[1].ts, "timestamps must increase");
                    }
                    for r in &readings {
                        assert_eq!(r.values.len(), width);
                        assert!(r.values.iter().all(|v| v.is_finite()));
                    }
                }
            }
            Err(e) => assert!(e.status().is_client_error(), "{e} is not a 4xx"),
        }
    }

    /// JSON-ish text: fragments of valid bodies glued at random, so that the parser gets
    /// past `serde_json` and into the field rules often.
    fn jsonish() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("{\"readings\":[".to_string()),
            Just("{\"ts\":".to_string()),
            Just("\"value\":".to_string()),
            Just("\"values\":[".to_string()),
            Just("\"stream\":\"s1\"".to_string()),
            Just("\"2026-01-01T00:00:00Z\"".to_string()),
            Just("1e308".to_string()),
            Just("-1e309".to_string()),
            Just("NaN".to_string()),
            Just("null".to_string()),
            Just(",".to_string()),
            Just("]".to_string()),
            Just("}".to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|x| x.to_string()),
            "[a-z\\\"]{0,4}",
        ];
        prop::collection::vec(atom, 0..40).prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_are_readings_or_a_4xx(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            for ct in ["application/json", "application/x-ndjson", "text/plain"] {
                check(ct, &bytes, Some("s"));
                check(ct, &bytes, None);
            }
        }

        #[test]
        fn json_like_bodies_are_readings_or_a_4xx(text in jsonish()) {
            check("application/json", text.as_bytes(), Some("s"));
            check("application/json", text.as_bytes(), None);
            let ndjson = text.replace(',', "\n");
            check("application/x-ndjson", ndjson.as_bytes(), Some("s"));
        }

        #[test]
        fn well_formed_bodies_round_trip(
            values in prop::collection::vec(-1e12f64..1e12, 1..50),
            start in 0i64..4_000_000_000_000,
            step in 1i64..100_000,
        ) {
            let readings: Vec<serde_json::Value> = values
                .iter()
                .enumerate()
                .map(|(i, v)| serde_json::json!({"ts": start + i as i64 * step, "value": v}))
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "readings": readings })).expect("json");
            let groups = parse_body(&headers("application/json"), &body, 100, Some("s")).expect("valid body");
            prop_assert_eq!(groups.len(), 1);
            let parsed: Vec<f64> = groups[0].1.iter().map(|r| r.values[0]).collect();
            prop_assert_eq!(parsed, values);
            prop_assert_eq!(groups[0].1[0].ts, start);
        }
    }
}
