//! Ingest: `POST /v1/streams/{stream}/readings` (JSON or NDJSON) and `POST /v1/readings`
//! (many streams). Everything is validated before any stream sees it; a 2xx means the
//! readings are committed.
use std::collections::HashMap;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::openapi::{
    BadRequest, Conflict, Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable, Unprocessable,
    UnsupportedMediaType,
};
use super::wire::{
    self, content_type, read_body, stream_name, Path, Query, StreamName, Timestamp, VerdictJson, VerdictSchema,
    MAX_CHANNELS,
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

/// One reading object as written, its fields kept as JSON but not yet checked
/// ([`parse_reading`] judges them). Deserialised straight from the body: no map of the
/// object's fields is built, only the values of the four known ones (a number costs no
/// allocation).
#[derive(Debug, Default)]
struct RawReading {
    stream: Option<Value>,
    ts: Option<Value>,
    value: Option<Value>,
    values: Option<Value>,
    /// The first field that is none of the four, in the order written.
    unknown: Option<String>,
}

/// A field name of a reading object.
enum Field {
    Stream,
    Ts,
    Value,
    Values,
    Other(String),
}

impl<'de> serde::Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<Field, E> {
                Ok(match key {
                    "stream" => Field::Stream,
                    "ts" => Field::Ts,
                    "value" => Field::Value,
                    "values" => Field::Values,
                    other => Field::Other(other.to_string()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::Deserialize<'de> for RawReading {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{IgnoredAny, MapAccess};
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawReading;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a reading object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawReading, A::Error> {
                let mut raw = RawReading::default();
                // A field written twice keeps its last value, as a JSON object parsed whole does.
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::Stream => raw.stream = Some(map.next_value()?),
                        Field::Ts => raw.ts = Some(map.next_value()?),
                        Field::Value => raw.value = Some(map.next_value()?),
                        Field::Values => raw.values = Some(map.next_value()?),
                        Field::Other(name) => {
                            map.next_value::<IgnoredAny>()?;
                            raw.unknown.get_or_insert(name);
                        }
                    }
                }
                Ok(raw)
            }
        }
        d.deserialize_any(V)
    }
}

/// A JSON body, `{"readings": […]}`, read item by item: at most `max` readings are kept,
/// the count of the rest is noted. Anything else (another field, a reading that is not an
/// object) is a deserialisation error: a 400.
#[derive(Debug)]
struct RawBody {
    readings: Vec<RawReading>,
    /// Items in `readings` (kept or not).
    items: usize,
}

/// [`RawBody`]'s deserialiser, with the most readings to keep.
struct RawBodySeed(usize);

impl<'de> serde::de::DeserializeSeed<'de> for RawBodySeed {
    type Value = RawBody;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RawBody, D::Error> {
        use serde::de::{IgnoredAny, MapAccess, SeqAccess};
        const BODY_SHAPE: &str = "{\"readings\": [ … ]}";
        /// The `readings` array.
        struct Items(usize);
        impl<'de> serde::de::DeserializeSeed<'de> for Items {
            type Value = RawBody;
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
        impl<'de> serde::de::Visitor<'de> for Items {
            type Value = RawBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of readings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut kept = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.0));
                let mut items = 0;
                loop {
                    if items < self.0 {
                        match seq.next_element::<RawReading>()? {
                            Some(raw) => kept.push(raw),
                            None => break,
                        }
                    } else if seq.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                    items += 1;
                }
                Ok(RawBody { readings: kept, items })
            }
        }
        struct V(usize);
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(BODY_SHAPE)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawBody, A::Error> {
                let shape = || serde::de::Error::custom(format!("the body must be {BODY_SHAPE}"));
                match map.next_key::<std::borrow::Cow<'de, str>>()? {
                    Some(key) if key == "readings" => {
                        let body = map.next_value_seed(Items(self.0))?;
                        match map.next_key::<IgnoredAny>()? {
                            None => Ok(body),
                            Some(_) => Err(shape()),
                        }
                    }
                    _ => Err(shape()),
                }
            }
        }
        d.deserialize_any(V(self.0))
    }
}

/// Checks one reading object; `stream` is required when `multi`.
fn parse_reading(
    raw: RawReading,
    index: usize,
    multi: bool,
    single: bool,
) -> Result<(Option<String>, Reading), ApiError> {
    let at = |msg: String| ApiError::Unprocessable(format!("reading {index}: {msg}"));
    if let Some(key) = raw.unknown {
        return Err(at(format!("unknown field {key:?}")));
    }
    let stream = match (multi, raw.stream) {
        (true, Some(Value::String(s))) => {
            stream_name(&s).map_err(|e| at(e.to_string()))?;
            Some(s)
        }
        (true, _) => return Err(at("\"stream\" (a string) is required".into())),
        (false, Some(_)) => return Err(at("unknown field \"stream\"".into())),
        (false, None) => None,
    };
    let ts = match &raw.ts {
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
    let values = match (&raw.value, &raw.values) {
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
fn reading_values(headers: &HeaderMap, bytes: &[u8], max: usize) -> Result<Vec<RawReading>, ApiError> {
    use serde::de::DeserializeSeed;
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
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let body: RawBody = RawBodySeed(max)
                .deserialize(&mut de)
                .and_then(|body| de.end().map(|()| body))
                .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
            if body.items > max {
                return Err(too_many());
            }
            Ok(body.readings)
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
    let readings = values
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_reading(v, i, multi, single))
        .collect::<Result<Vec<_>, _>>()?;
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
    // The groups in order of first appearance, and each stream's place among them: a
    // reading of a stream already seen costs a lookup, not a copy of its name.
    let mut groups: Vec<(String, Vec<Reading>)> = Vec::new();
    let mut places: HashMap<String, usize> = HashMap::new();
    for (stream, reading) in readings {
        let place = match (stream, default_stream) {
            (None, Some(name)) if groups.is_empty() => {
                groups.push((name.to_string(), Vec::new()));
                0
            }
            (None, Some(_)) => 0,
            (stream, _) => {
                let name = stream.unwrap_or_default();
                match places.get(&name) {
                    Some(&place) => place,
                    None => {
                        places.insert(name.clone(), groups.len());
                        groups.push((name, Vec::new()));
                        groups.len() - 1
                    }
                }
            }
        };
        let (name, group) = &mut groups[place];
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
    Ok(groups)
}

/// The answer for one stream's readings (`IngestReplySchema`), keys in alphabetical order.
#[derive(serde::Serialize)]
struct OutcomeJson<'a> {
    accepted: usize,
    anomalies: Vec<VerdictJson<'a>>,
    stream: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    verdicts: Option<Vec<VerdictJson<'a>>>,
}

/// The answer for many streams' readings.
#[derive(serde::Serialize)]
struct ManyOutcomesJson<'a> {
    accepted: usize,
    streams: Vec<OutcomeJson<'a>>,
}

fn outcome_json(o: &IngestOutcome, all: bool) -> OutcomeJson<'_> {
    OutcomeJson {
        accepted: o.accepted,
        anomalies: o.verdicts.iter().filter(|v| v.verdict.anomaly).map(VerdictJson::of).collect(),
        stream: &o.stream,
        verdicts: all.then(|| o.verdicts.iter().map(VerdictJson::of).collect()),
    }
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
) -> Result<Response, ApiError> {
    stream_name(&stream)?;
    let all = query.all()?;
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let groups = parse_body(&headers, &bytes, state.max_readings, Some(&stream))?;
    let outcomes = state.streams.ingest(groups).await?;
    let outcome = outcomes.first().ok_or_else(|| ApiError::Internal("ingest returned no outcome".into()))?;
    Ok(Json(outcome_json(outcome, all)).into_response())
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
) -> Result<Response, ApiError> {
    let all = query.all()?;
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let groups = parse_body(&headers, &bytes, state.max_readings, None)?;
    let outcomes = state.streams.ingest(groups).await?;
    let accepted: usize = outcomes.iter().map(|o| o.accepted).sum();
    let streams = outcomes.iter().map(|o| outcome_json(o, all)).collect();
    Ok(Json(ManyOutcomesJson { accepted, streams }).into_response())
}

#[cfg(test)]
mod tests {
    use axum::http::{header, HeaderMap, HeaderValue};

    use super::{parse_body, ApiError};

    fn json_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h
    }

    /// Each stream's readings as (timestamp, values).
    type Groups = Vec<(String, Vec<(i64, Vec<f64>)>)>;

    fn parse(body: &str, stream: Option<&str>) -> Result<Groups, ApiError> {
        let groups = parse_body(&json_headers(), body.as_bytes(), 3, stream)?;
        Ok(groups.into_iter().map(|(name, rs)| (name, rs.into_iter().map(|r| (r.ts, r.values)).collect())).collect())
    }

    fn problem(body: &str, stream: Option<&str>) -> (u16, String) {
        let e = parse(body, stream).expect_err(body);
        (e.status().as_u16(), e.to_string())
    }

    #[test]
    fn reading_objects_are_read_as_json_objects_parsed_whole_would_be() {
        // Escaped field names are the same fields; a field written twice keeps its last value.
        let body =
            r#"{"readings":[{"\u0074s":5,"value":1,"value":2.5},{"ts":"1970-01-01T00:00:00.006Z","values":[3]}]}"#;
        assert_eq!(parse(body, Some("s")).unwrap(), vec![("s".to_string(), vec![(5, vec![2.5]), (6, vec![3.0])])]);
        // Streams in order of first appearance, each with its readings in order.
        let body = r#"{"readings":[{"stream":"b","ts":1,"value":1},{"stream":"a","ts":1,"value":2},
            {"stream":"b","ts":2,"value":3}]}"#;
        let groups = parse(body, None).unwrap();
        assert_eq!(
            groups,
            vec![("b".into(), vec![(1, vec![1.0]), (2, vec![3.0])]), ("a".into(), vec![(1, vec![2.0])])]
        );
    }

    #[test]
    fn every_rule_is_checked_with_the_reading_it_concerns_named() {
        let cases = [
            // Anything but an object as a reading is a malformed body (400) ...
            (r#"{"readings":[{"ts":1,"value":1},[1,{"a":2}]]}"#, 400, "expected a reading object"),
            (r#"{"readings":[null]}"#, 400, "expected a reading object"),
            // ... and so is anything but {"readings": [...]}.
            (r#"{"readings":[],"more":1}"#, 400, "the body must be {\"readings\""),
            (r#"{"data":[]}"#, 400, "the body must be {\"readings\""),
            (r#"{"readings":{"ts":1}}"#, 400, "expected an array of readings"),
            (r#"[{"ts":1,"value":1}]"#, 400, "expected {\"readings\""),
            // Broken JSON anywhere is a 400, even after a reading that breaks a rule.
            (r#"{"readings":[{"ts":1,"value":"x"},{"ts":2,"value":1}"#, 400, "invalid JSON body"),
            (r#"{"readings":[{"ts":1,"value":1}]} trailing"#, 400, "invalid JSON body"),
            // Field rules are 422s naming the reading; unknown fields however deeply nested.
            (
                r#"{"readings":[{"ts":1,"value":1},{"ts":2,"value":1,"extra":{"deep":[1,2]}}]}"#,
                422,
                "reading 1: unknown field \"extra\"",
            ),
            (r#"{"readings":[{"ts":1,"value":true}]}"#, 422, "reading 0: true is not a finite number"),
            (r#"{"readings":[{"ts":1,"values":[1,"2"]}]}"#, 422, "reading 0: \"2\" is not a finite number"),
            (r#"{"readings":[{"ts":1,"values":[]}]}"#, 422, "must be an array of 1 to 64 numbers"),
            (r#"{"readings":[{"ts":1.5,"value":1}]}"#, 422, "not an integer of milliseconds"),
            (
                r#"{"readings":[{"ts":1,"value":1},{"ts":2,"value":1},{"ts":3,"value":1},{"ts":4,"value":1}]}"#,
                422,
                "at most 3 readings",
            ),
        ];
        for (body, status, message) in cases {
            let (got, text) = problem(body, Some("s"));
            assert_eq!(got, status, "{body}: {text}");
            assert!(text.contains(message), "{body}: {text}");
        }
        // `stream` belongs to the many-stream body only, where it is required.
        assert!(problem(r#"{"readings":[{"stream":"a","ts":1,"value":1}]}"#, Some("s"))
            .1
            .contains("unknown field \"stream\""));
        assert!(problem(r#"{"readings":[{"ts":1,"value":1}]}"#, None).1.contains("\"stream\" (a string) is required"));
        assert!(problem(r#"{"readings":[{"stream":7,"ts":1,"value":1}]}"#, None).1.contains("is required"));
        assert_eq!(problem(r#"{"readings":[{"stream":"a b","ts":1,"value":1}]}"#, None).0, 422);
    }
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
