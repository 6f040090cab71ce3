//! The API's wire formats: timestamps, stream names, verdicts and bodies, validated at the
//! edge into domain values.
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::openapi::schema::{ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;

use super::ApiError;
use crate::scoring::Verdict;
use crate::streams::ReadingVerdict;

/// Latest accepted timestamp: 9999-12-31T23:59:59.999Z.
pub const MAX_TS: i64 = 253_402_300_799_999;
/// Most channels a stream may have.
pub const MAX_CHANNELS: usize = 64;

/// Checks a stream name: 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn stream_name(name: &str) -> Result<&str, ApiError> {
    let ok = (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        Ok(name)
    } else {
        Err(ApiError::Unprocessable(format!(
            "stream names are 1-128 characters of A-Z a-z 0-9 . _ : -, got {:?}",
            name.chars().take(140).collect::<String>()
        )))
    }
}

/// Parses a timestamp: integer Unix milliseconds or an RFC 3339 string.
pub fn timestamp(value: &Value) -> Result<i64, String> {
    let ms = match value {
        Value::Number(n) => n.as_i64().ok_or_else(|| format!("timestamp {n} is not an integer of milliseconds"))?,
        Value::String(s) => parse_rfc3339(s)?,
        other => return Err(format!("timestamp must be an RFC 3339 string or Unix milliseconds, got {other}")),
    };
    if !(0..=MAX_TS).contains(&ms) {
        return Err(format!("timestamp {ms} is outside 1970-01-01..9999-12-31"));
    }
    Ok(ms)
}

/// Parses a timestamp from a query string: digits are milliseconds, anything else RFC 3339.
pub fn query_timestamp(text: &str) -> Result<i64, ApiError> {
    let value = match text.parse::<i64>() {
        Ok(ms) => Value::from(ms),
        Err(_) => Value::from(text),
    };
    timestamp(&value).map_err(ApiError::BadRequest)
}

fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| format!("timestamp {s:?} is not RFC 3339"))?;
    Ok((t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Formats Unix milliseconds as RFC 3339 (UTC), or as the number where that cannot be
/// (past year 9999).
pub fn format_ts(ms: i64) -> String {
    rfc3339(ms, &mut [0; RFC3339_BYTES]).map_or_else(|| ms.to_string(), str::to_owned)
}

/// Longest RFC 3339 timestamp [`rfc3339`] writes: "9999-12-31T23:59:59.999Z" and then some.
const RFC3339_BYTES: usize = 40;

/// Writes Unix milliseconds as RFC 3339 (UTC) into `buf`; `None` past year 9999.
fn rfc3339(ms: i64, buf: &mut [u8; RFC3339_BYTES]) -> Option<&str> {
    let mut out = &mut buf[..];
    let formatted = OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| t.format_into(&mut out, &Rfc3339).ok());
    // What was written is what the slice advanced past: the count `format_into` returns (time
    // 0.3.55) is 3 bytes short of it with milliseconds (21 for 24; a test below caught it).
    let left = out.len();
    formatted?;
    std::str::from_utf8(&buf[..RFC3339_BYTES - left]).ok()
}

/// One number or, for multichannel streams, an array.
pub fn channels_value(values: &[f64]) -> Value {
    if values.len() == 1 {
        json!(values[0])
    } else {
        json!(values)
    }
}

/// A verdict as the API shows it: `{"anomaly", "expected", "lower", "score", "ts", "upper",
/// "value" | "values"}`, keys in that order, each channel field one number or, on a
/// multichannel stream, an array ([`channels_value`]). Written straight from the values it
/// borrows: a page of 1,000 readings built a map of seven entries a reading before, a third
/// of the server's time a page (docs/PERFORMANCE.md, "Long runs on both databases, reads
/// from a database past memory, the stream list in pages").
#[derive(Debug, Clone, Copy)]
pub struct VerdictJson<'a> {
    pub ts: i64,
    pub values: &'a [f64],
    pub expected: &'a [f64],
    pub lower: &'a [f64],
    pub upper: &'a [f64],
    pub score: f64,
    pub anomaly: bool,
}

impl<'a> VerdictJson<'a> {
    pub fn new(ts: i64, values: &'a [f64], v: &'a Verdict) -> VerdictJson<'a> {
        VerdictJson {
            ts,
            values,
            expected: &v.expected,
            lower: &v.lower,
            upper: &v.upper,
            score: v.score,
            anomaly: v.anomaly,
        }
    }

    /// A judged reading's verdict.
    pub fn of(r: &'a ReadingVerdict) -> VerdictJson<'a> {
        VerdictJson::new(r.ts, &r.values, &r.verdict)
    }
}

impl serde::Serialize for VerdictJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(7))?;
        map.serialize_entry("anomaly", &self.anomaly)?;
        map.serialize_entry("expected", &ChannelsJson(self.expected))?;
        map.serialize_entry("lower", &ChannelsJson(self.lower))?;
        map.serialize_entry("score", &self.score)?;
        map.serialize_entry("ts", &TsJson(self.ts))?;
        map.serialize_entry("upper", &ChannelsJson(self.upper))?;
        map.serialize_entry(if self.values.len() == 1 { "value" } else { "values" }, &ChannelsJson(self.values))?;
        map.end()
    }
}

/// [`channels_value`] without the `Value`.
struct ChannelsJson<'a>(&'a [f64]);

impl serde::Serialize for ChannelsJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            [one] => s.serialize_f64(*one),
            many => s.collect_seq(many),
        }
    }
}

/// [`format_ts`] without the `String`.
struct TsJson(i64);

impl serde::Serialize for TsJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match rfc3339(self.0, &mut [0; RFC3339_BYTES]) {
            Some(text) => s.serialize_str(text),
            None => s.serialize_str(&self.0.to_string()),
        }
    }
}

/// A stream (or model) name: what [`stream_name`] accepts.
pub struct StreamName;

impl utoipa::PartialSchema for StreamName {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[A-Za-z0-9._:-]{1,128}$"))
            .description(Some("1-128 characters of A-Z a-z 0-9 . _ : -"))
            .examples(["boiler-7"])
            .into()
    }
}

impl utoipa::ToSchema for StreamName {}

/// A timestamp in a request: an RFC 3339 string or integer Unix milliseconds, from
/// 1970-01-01 to 9999-12-31 (the schema of what [`timestamp`] accepts).
pub struct Timestamp;

impl utoipa::PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
                    .examples(["2026-01-01T10:00:00Z"]),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                    .minimum(Some(0))
                    .maximum(Some(MAX_TS))
                    .examples([1_767_261_600_000i64]),
            )
            .description(Some("RFC 3339 string or integer Unix milliseconds (1970-01-01 to 9999-12-31)"))
            .into()
    }
}

impl utoipa::ToSchema for Timestamp {}

/// One number, or for a multichannel stream an array of one number per channel (the schema
/// of what [`channels_value`] writes).
pub struct Channels;

impl utoipa::PartialSchema for Channels {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
            )
            .item(
                ArrayBuilder::new()
                    .items(
                        ObjectBuilder::new()
                            .schema_type(Type::Number)
                            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double))),
                    )
                    .min_items(Some(2))
                    .max_items(Some(MAX_CHANNELS)),
            )
            .description(Some("one number, or one number per channel for a multichannel stream"))
            .into()
    }
}

impl utoipa::ToSchema for Channels {}

// The JSON `VerdictJson` writes, described for the OpenAPI document: keep the two in step.
/// A reading's verdict. Exactly one of `value` and `values` is present.
#[derive(utoipa::ToSchema)]
#[schema(as = Verdict)]
pub struct VerdictSchema {
    /// When the reading was taken (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub ts: String,
    /// The reading, on a single-channel stream.
    #[schema(nullable = false)]
    pub value: Option<f64>,
    /// The reading, one number per channel, on a multichannel stream.
    #[schema(nullable = false, min_items = 2, max_items = 64)]
    pub values: Option<Vec<f64>>,
    /// The forecast (the reading itself before the model has a forecast).
    pub expected: Channels,
    /// Lower edge of the expected band.
    pub lower: Channels,
    /// Upper edge of the expected band.
    pub upper: Channels,
    /// Anomaly score, comparable across streams.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub score: f64,
    /// Whether the reading is anomalous (never during warm-up).
    pub anomaly: bool,
}

/// `axum::extract::Query` whose rejection (an unparsable query string, an unknown or
/// ill-typed parameter) is a problem+json 400 like every other error, not axum's plain text.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);

/// `axum::extract::Path` whose rejection (a segment that does not decode to UTF-8) is a
/// problem+json 400 like every other error.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Reads a whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let mut stream = body.into_data_stream();
    let drain_bound = limit.saturating_mul(2).min(DRAIN_MAX_BYTES);
    if let Some(declared) = declared.filter(|&n| n > limit) {
        if declared <= drain_bound {
            drain(&mut stream, 0, drain_bound).await;
        }
        return Err(ApiError::PayloadTooLarge(limit));
    }
    let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("the body could not be read: {e}")))?;
        if bytes.len() + chunk.len() > limit {
            drain(&mut stream, bytes.len() + chunk.len(), drain_bound).await;
            return Err(ApiError::PayloadTooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(bytes))
}

/// An oversized body is read on (and discarded) up to twice the limit, at most this many
/// bytes and [`DRAIN_TIME`], before the 413 is sent: a client still writing its body to a
/// server that stopped reading fails with a broken pipe and never sees the answer. Beyond
/// that the connection is closed instead.
const DRAIN_MAX_BYTES: usize = 16 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

async fn drain(
    stream: &mut (impl futures::Stream<Item = Result<Bytes, axum::Error>> + Unpin),
    seen: usize,
    bound: usize,
) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = seen;
        while seen <= bound {
            match stream.next().await {
                Some(Ok(chunk)) => seen += chunk.len(),
                _ => break,
            }
        }
    })
    .await;
}

/// Largest body of a configuration or feedback request.
pub const SMALL_BODY: usize = 64 * 1024;

/// Parses a small JSON body into `T`, with a problem for every failure.
pub async fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: Body) -> Result<T, ApiError> {
    require_json(headers)?;
    let bytes = read_body(headers, body, SMALL_BODY).await?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Refuses bodies declared as something other than JSON.
pub fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    match content_type(headers) {
        None => Ok(()),
        Some(ct) if ct == "application/json" || ct.ends_with("+json") => Ok(()),
        Some(ct) => Err(ApiError::UnsupportedMediaType(format!("expected application/json, got {ct}"))),
    }
}

/// The media type of the body, lower-cased, without parameters.
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    /// How verdicts were written before [`VerdictJson`]: a map a reading.
    fn verdict_value(ts: i64, values: &[f64], v: &Verdict) -> Value {
        let mut out = Map::new();
        out.insert("ts".into(), json!(format_ts(ts)));
        out.insert(if values.len() == 1 { "value" } else { "values" }.into(), channels_value(values));
        out.insert("expected".into(), channels_value(&v.expected));
        out.insert("lower".into(), channels_value(&v.lower));
        out.insert("upper".into(), channels_value(&v.upper));
        out.insert("score".into(), json!(v.score));
        out.insert("anomaly".into(), json!(v.anomaly));
        Value::Object(out)
    }

    #[test]
    fn verdicts_are_written_byte_for_byte_as_the_maps_were() {
        let verdict = |channels: &[f64], score: f64, anomaly: bool| Verdict {
            expected: channels.iter().map(|c| c * 0.5).collect(),
            lower: channels.iter().map(|c| c - 1.25e-7).collect(),
            upper: channels.iter().map(|c| c + 3.0e12).collect(),
            score,
            anomaly,
            surprise: 0.0,
        };
        let cases: [(i64, Vec<f64>, Verdict); 5] = [
            (1_700_000_000_123, vec![41.5], verdict(&[41.5], 1.0, true)),
            (0, vec![-0.0], verdict(&[-0.0], 0.0, false)),
            (MAX_TS, vec![1.0, 2.0, 3.5], verdict(&[1.0, 2.0, 3.5], 0.123456789, false)),
            (1_767_225_600_000, vec![f64::MIN_POSITIVE], verdict(&[f64::NAN], f64::NAN, false)),
            (MAX_TS + 1, vec![f64::MAX, -1e-300], verdict(&[f64::INFINITY, 7.0], 0.5, true)),
        ];
        for (ts, values, v) in &cases {
            let typed = serde_json::to_string(&VerdictJson::new(*ts, values, v)).expect("serialises");
            let mapped = serde_json::to_string(&verdict_value(*ts, values, v)).expect("serialises");
            assert_eq!(typed, mapped);
        }
    }

    #[test]
    fn timestamps_parse_from_both_forms_and_round_trip() {
        assert_eq!(timestamp(&json!(1_700_000_000_123i64)), Ok(1_700_000_000_123));
        let ms = timestamp(&json!("2023-11-14T22:13:20.123Z")).expect("valid");
        assert_eq!(ms, 1_700_000_000_123);
        assert_eq!(format_ts(ms), "2023-11-14T22:13:20.123Z");
        assert_eq!(timestamp(&json!("2023-11-14T23:13:20.123+01:00")), Ok(ms));
    }

    #[test]
    fn bad_timestamps_are_refused() {
        for bad in [
            json!(-1),
            json!(1.5),
            json!("yesterday"),
            json!(true),
            json!(null),
            json!(MAX_TS + 1),
            json!("2023-13-01T00:00:00Z"),
        ] {
            assert!(timestamp(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stream_names_follow_the_allowed_set() {
        for good in ["a", "plant-1.pump_3:temp", &"x".repeat(128)] {
            assert!(stream_name(good).is_ok(), "{good}");
        }
        for bad in ["", "a b", "a/b", "ü", &"x".repeat(129)] {
            assert!(stream_name(bad).is_err(), "{bad}");
        }
    }
}
