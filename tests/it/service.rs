//! The streaming service end to end over HTTP, on SQLite and on PostgreSQL.
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

use crate::app::{restart, restart_with, spawn_app, spawn_app_with, spawn_app_with_keys, Backend, TestApp};
use crate::support::{Need, Route, ROUTES};

/// A noisy seasonal sensor: level 10, amplitude 3, period 60 readings, noise σ = 0.3.
fn seasonal(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let noise = Normal::new(0.0, 0.3).expect("valid normal");
    (0..len)
        .map(|t| 10.0 + 3.0 * (2.0 * std::f64::consts::PI * t as f64 / 60.0).sin() + noise.sample(&mut rng))
        .collect()
}

/// Timestamps one second apart from 2026-01-01.
fn ts(i: usize) -> i64 {
    1_767_225_600_000 + i as i64 * 1000
}

fn body(values: &[f64], start: usize) -> Value {
    let readings: Vec<Value> =
        values.iter().enumerate().map(|(i, v)| json!({"ts": ts(start + i), "value": v})).collect();
    json!({ "readings": readings })
}

/// Posts `values` from index `start` in requests of `chunk`; returns the flagged indices.
async fn feed(app: &TestApp, stream: &str, values: &[f64], start: usize, chunk: usize) -> Vec<usize> {
    let mut flagged = Vec::new();
    for (c, part) in values.chunks(chunk).enumerate() {
        let offset = start + c * chunk;
        let (status, reply) = app.post(&format!("/v1/streams/{stream}/readings"), &body(part, offset)).await;
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["accepted"], part.len());
        for a in reply["anomalies"].as_array().expect("anomalies array") {
            let at = a["ts"].as_str().expect("ts string");
            let index = (0..part.len()).find(|i| tsad::api::wire::format_ts(ts(offset + i)) == at).expect("known ts");
            flagged.push(offset + index);
        }
    }
    flagged
}

async fn the_whole_api_works(app: TestApp) {
    let (status, created) = app.put("/v1/streams/pump-1", &json!({"sensitivity": 0.6, "warmup": 50})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["channels"].as_u64(), created["warmup"].as_u64()), (Some(1), Some(50)));
    assert_eq!(created["baseline"], "forecast", "{created}");
    let (status, changed) = app.put("/v1/streams/pump-1", &json!({"sensitivity": 0.5, "baseline": "warmup"})).await;
    assert_eq!(status, 200);
    assert_eq!((changed["baseline"].as_str(), changed["warmup"].as_u64()), (Some("warmup"), Some(50)), "{changed}");
    let (_, history) = app.put("/v1/streams/pump-1", &json!({"baseline": "history"})).await;
    assert_eq!(history["baseline"], "history", "{history}");
    let (_, again) = app.put("/v1/streams/pump-1", &json!({"baseline": "forecast"})).await;
    assert_eq!(again["baseline"], "forecast", "settings left out keep their values; this one changes back");
    assert_eq!(again["retention"], json!(null), "the service's retention: {again}");
    let (status, kept) = app.put("/v1/streams/pump-1", &json!({"retention": "30d 12h"})).await;
    assert_eq!((status, &kept["retention"]), (200, &json!("30d 12h")), "{kept}");
    let (_, kept) = app.put("/v1/streams/pump-1", &json!({"warmup": 50})).await;
    assert_eq!(kept["retention"], "30d 12h", "left out, it stays: {kept}");
    let (_, listed) = app.get("/v1/streams").await;
    assert_eq!(listed["streams"][0]["retention"], "30d 12h", "{listed}");
    let (_, cleared) = app.put("/v1/streams/pump-1", &json!({"retention": null})).await;
    assert_eq!(cleared["retention"], json!(null), "null: the service's again: {cleared}");

    let series = seasonal(710, 1);
    let values = &series[..300];
    let (status, reply) = app.post("/v1/streams/pump-1/readings?verdicts=all", &body(values, 0)).await;
    assert_eq!(status, 200, "{reply}");
    let verdicts = reply["verdicts"].as_array().expect("verdicts");
    assert_eq!(verdicts.len(), 300);
    for v in verdicts.iter().skip(60) {
        for field in ["expected", "lower", "upper", "score"] {
            assert!(v[field].is_number(), "{field} in {v}");
        }
        let (lo, hi, score) =
            (v["lower"].as_f64().unwrap(), v["upper"].as_f64().unwrap(), v["score"].as_f64().unwrap());
        assert!(lo <= v["expected"].as_f64().unwrap() && v["expected"].as_f64().unwrap() <= hi);
        assert!((0.0..=1.0).contains(&score));
    }

    // NDJSON, one reading a line.
    let ndjson: String = series[300..310]
        .iter()
        .enumerate()
        .map(|(i, v)| format!("{{\"ts\":{},\"value\":{v}}}\n", ts(300 + i)))
        .collect();
    let response = app
        .client
        .post(app.url("/v1/streams/pump-1/readings"))
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .expect("sent");
    let (status, reply) = crate::app::decode(response).await;
    assert_eq!((status, reply["accepted"].as_u64()), (200, Some(10)), "{reply}");

    let (status, stream) = app.get("/v1/streams/pump-1").await;
    assert_eq!(status, 200);
    assert_eq!((stream["readings"].as_u64(), stream["state"].as_str()), (Some(310), Some("scoring")), "{stream}");
    assert_eq!(stream["model"], "default");

    // Stored readings, paged by cursor, and a time range.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/streams/pump-1/readings?limit=100&cursor={c}"),
            None => "/v1/streams/pump-1/readings?limit=100".to_string(),
        };
        let (status, page) = app.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen += page["readings"].as_array().expect("readings").len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, 310);
    let (_, range) = app.get(&format!("/v1/streams/pump-1/readings?from={}&to={}", ts(10), ts(20))).await;
    assert_eq!(range["readings"].as_array().expect("readings").len(), 10);
    assert_eq!(range["readings"][0]["ts"], tsad::api::wire::format_ts(ts(10)));

    // Two spikes, far apart: two events, newest first, paged one at a time.
    let mut tail = series[310..].to_vec();
    tail[10] += 8.0;
    tail[300] -= 8.0;
    let flagged = feed(&app, "pump-1", &tail, 310, 100).await;
    assert!(flagged.contains(&320) && flagged.contains(&610), "flagged {flagged:?}");
    let (status, page) = app.get("/v1/anomalies?limit=1").await;
    assert_eq!(status, 200, "{page}");
    let first = page["anomalies"][0].clone();
    assert_eq!(
        (first["stream"].as_str(), first["start"].as_str()),
        (Some("pump-1"), Some(tsad::api::wire::format_ts(ts(610)).as_str()))
    );
    let cursor = page["next_cursor"].as_str().expect("a second page");
    let (_, page2) = app.get(&format!("/v1/anomalies?limit=1&cursor={cursor}")).await;
    assert_eq!(page2["anomalies"][0]["start"], tsad::api::wire::format_ts(ts(320)));
    let (_, by_stream) = app.get("/v1/streams/pump-1/anomalies").await;
    assert_eq!(by_stream["anomalies"].as_array().expect("anomalies").len(), 2);
    for field in ["id", "end", "peak_ts", "peak_score", "actual", "expected", "model", "model_version", "status"] {
        assert!(!first[field].is_null(), "{field} in {first}");
    }

    // Feedback.
    let id = first["id"].as_i64().expect("id");
    let (status, with_feedback) = app
        .post(&format!("/v1/anomalies/{id}/feedback"), &json!({"label": "true_positive", "note": "pump seized"}))
        .await;
    assert_eq!((status, with_feedback["feedback"].as_str()), (200, Some("true_positive")), "{with_feedback}");
    let (status, _) = app.post(&format!("/v1/anomalies/{id}/feedback"), &json!({"label": "maybe"})).await;
    assert_eq!(status, 422);
    let (status, _) = app.post("/v1/anomalies/999999/feedback", &json!({"label": "false_positive"})).await;
    assert_eq!(status, 404);

    // Many streams in one body; streams are created by their first reading.
    let (status, reply) = app
        .post(
            "/v1/readings",
            &json!({"readings": [
                {"stream": "a", "ts": ts(0), "value": 1.0},
                {"stream": "b", "ts": ts(0), "values": [1.0, 2.0]},
                {"stream": "a", "ts": ts(1), "value": 1.5},
            ]}),
        )
        .await;
    assert_eq!((status, reply["accepted"].as_u64()), (200, Some(3)), "{reply}");
    let (_, list) = app.get("/v1/streams").await;
    let names: Vec<&str> =
        list["streams"].as_array().expect("streams").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["a", "b", "pump-1"]);
    assert_eq!(list["streams"][1]["channels"], 2);
    assert_eq!(list["next_cursor"], Value::Null, "{list}");
    // The list in pages by name: the cursor is the last name of a full page.
    let (status, first) = app.get("/v1/streams?limit=2").await;
    let names = |page: &Value| -> Vec<String> {
        page["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .filter_map(|s| s["name"].as_str().map(String::from))
            .collect()
    };
    assert_eq!((status, names(&first), &first["next_cursor"]), (200, vec!["a".into(), "b".into()], &json!("b")));
    let (status, second) = app.get("/v1/streams?limit=2&cursor=b").await;
    assert_eq!((status, names(&second), &second["next_cursor"]), (200, vec!["pump-1".into()], &Value::Null));
    let (status, exact) = app.get("/v1/streams?limit=3").await;
    assert_eq!((status, names(&exact).len(), &exact["next_cursor"]), (200, 3, &json!("pump-1")));
    let (status, past) = app.get("/v1/streams?cursor=pump-1").await;
    assert_eq!((status, names(&past).len(), &past["next_cursor"]), (200, 0, &Value::Null));
    for bad in ["limit=0", "limit=10001", "limit=x", "cursor=a%20b", "page=2"] {
        let (status, body) = app.get(&format!("/v1/streams?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Health, readiness, metrics.
    assert_eq!(app.get("/healthz").await.0, 200);
    assert_eq!(app.get("/readyz").await.0, 200);
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("sent").text().await.expect("text");
    assert!(metrics.contains("tsad_readings_total 713"), "{metrics}");
    assert!(metrics.contains("route=\"/v1/streams/{stream}/readings\""));
    assert!(!metrics.contains("pump-1"), "no stream names in metrics");

    // Delete.
    assert_eq!(app.delete("/v1/streams/pump-1").await.0, 204);
    assert_eq!(app.get("/v1/streams/pump-1").await.0, 404);
    assert_eq!(app.delete("/v1/streams/pump-1").await.0, 404);
    let (_, after) = app.get("/v1/anomalies").await;
    assert_eq!(after["anomalies"].as_array().expect("anomalies").len(), 0, "its anomalies went with it");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_api_works_on_sqlite() {
    the_whole_api_works(spawn_app(Backend::Sqlite).await.expect("sqlite is always there")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_api_works_on_postgres() {
    let Some(app) = spawn_app(Backend::Postgres).await else { return };
    the_whole_api_works(app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spike_and_a_level_shift_are_flagged_as_events_with_the_right_start() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    let mut values = seasonal(6000, 7);
    values[3000] += 5.0; // ≈ 17 σ of the noise
    for v in &mut values[4500..] {
        *v += 3.0; // a lasting level shift of 10 σ
    }
    let flagged = feed(&app, "line-4", &values, 0, 100).await;
    assert!(flagged.iter().all(|&i| i >= 3000), "false alarms before the spike: {flagged:?}");
    let (_, events) = app.get("/v1/streams/line-4/anomalies?limit=1000").await;
    let starts: Vec<String> = events["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .map(|a| a["start"].as_str().expect("start").to_string())
        .collect();
    let at = |i: usize| tsad::api::wire::format_ts(ts(i));
    assert!(starts.contains(&at(3000)), "the spike's event starts at the spike: {starts:?}");
    assert!((4500..4503).any(|i| starts.contains(&at(i))), "the level shift's event starts at the shift: {starts:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_seasonal_stream_of_50000_readings_raises_at_most_5_flags() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    let values = seasonal(50_200, 11);
    let flagged = feed(&app, "clean", &values, 0, 1000).await;
    eprintln!("clean stream: {} flagged of 50,000 after warm-up: {flagged:?}", flagged.len());
    assert!(flagged.len() <= 5, "{} false flags: {flagged:?}", flagged.len());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multichannel_streams_get_a_verdict_per_channel() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    let (status, _) = app.put("/v1/streams/imu", &json!({"channels": 3, "warmup": 100})).await;
    assert_eq!(status, 201);
    let (a, b, c) = (seasonal(600, 1), seasonal(600, 2), seasonal(600, 3));
    let mut readings: Vec<Value> =
        (0..600).map(|i| json!({"ts": ts(i), "values": [a[i], b[i] * 2.0, c[i] - 5.0]})).collect();
    readings[500]["values"][1] = json!(b[500] * 2.0 + 12.0);
    let (status, reply) = app.post("/v1/streams/imu/readings?verdicts=all", &json!({ "readings": readings })).await;
    assert_eq!(status, 200, "{reply}");
    let v = &reply["verdicts"][300];
    for field in ["values", "expected", "lower", "upper"] {
        assert_eq!(v[field].as_array().map(Vec::len), Some(3), "{field} in {v}");
    }
    let flagged: Vec<&str> =
        reply["anomalies"].as_array().expect("anomalies").iter().filter_map(|a| a["ts"].as_str()).collect();
    assert!(flagged.contains(&tsad::api::wire::format_ts(ts(500)).as_str()), "{flagged:?}");
    let (_, stored) = app.get("/v1/streams/imu/readings?limit=1").await;
    assert_eq!(stored["readings"][0]["values"].as_array().map(Vec::len), Some(3));
    // Read back whole (on SQLite one block), each reading as it was answered.
    let (_, stored) = app.get("/v1/streams/imu/readings?limit=1000").await;
    let (stored, answered) =
        (stored["readings"].as_array().expect("readings"), reply["verdicts"].as_array().expect("verdicts"));
    assert_eq!(stored.len(), 600);
    for (s, v) in stored.iter().zip(answered) {
        for field in ["ts", "values", "expected", "lower", "upper", "score", "anomaly"] {
            assert_eq!(s[field], v[field], "{field}: stored {s}, answered {v}");
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_gets_a_problem_and_changes_nothing() {
    let app = spawn_app_with(Backend::Sqlite, None, |s| s.max_body_bytes = 1 << 20).await.expect("sqlite");
    let good = body(&seasonal(5, 1), 100);
    assert_eq!(app.post("/v1/streams/s/readings", &good).await.0, 200);
    let raw = |path: &str, content_type: &str, text: String| {
        let request = app.client.post(app.url(path)).header("content-type", content_type).body(text);
        async move { crate::app::decode(request.send().await.expect("sent")).await }
    };
    // An oversized body is answered 413 after the server has read (and dropped) it, so the
    // client, still writing, gets to read the answer: the very first send must see the 413.
    let oversized = || async {
        let request = app
            .client
            .post(app.url("/v1/streams/s/readings"))
            .header("content-type", "application/json")
            .body(" ".repeat(2_000_000)); // under twice the limit of 1 MiB: read to its end
        crate::app::decode(request.send().await.expect("an oversized body is answered, not cut off")).await
    };
    let many: Vec<Value> = (0..10_001).map(|i| json!({"ts": ts(1000 + i), "value": 1.0})).collect();
    let cases: Vec<(u16, (u16, Value))> = vec![
        (400, raw("/v1/streams/s/readings", "application/json", "{\"readings\": [".into()).await),
        (400, raw("/v1/streams/s/readings", "application/json", "{\"readings\": [{\"ts\": 1, \"value\": 1e999}]}".into()).await),
        (400, raw("/v1/streams/s/readings", "application/x-ndjson", format!("{{\"ts\":{},\"value\":1}}\nnot json\n", ts(200))).await),
        (415, raw("/v1/streams/s/readings", "text/csv", "ts,value\n1,2\n".into()).await),
        (400, app.post("/v1/streams/s/readings", &json!({"data": []})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": []})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(200), "value": "NaN"}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(200), "value": "abc"}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(200), "values": [1.0, 2.0]}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(200), "value": 1, "values": [1]}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(200), "value": 1, "extra": 1}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": "yesterday", "value": 1}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": -5, "value": 1}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"value": 1}, {"value": 2}]})).await),
        (422, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(300), "value": 1}, {"ts": ts(299), "value": 2}]})).await),
        (409, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(50), "value": 1}]})).await),
        (409, app.post("/v1/streams/s/readings", &json!({"readings": [{"ts": ts(104), "value": 1}]})).await),
        (422, app.post("/v1/streams/bad%20name/readings", &good).await),
        (422, app.post(&format!("/v1/streams/{}/readings", "x".repeat(129)), &good).await),
        (422, app.post("/v1/streams/s/readings", &json!({ "readings": many })).await),
        (413, oversized().await),
        (422, app.post("/v1/readings", &json!({"readings": [{"ts": ts(200), "value": 1}]})).await),
        (409, app.post("/v1/readings", &json!({"readings": [{"stream": "new-one", "ts": ts(200), "value": 1}, {"stream": "s", "ts": ts(1), "value": 1}]})).await),
        (404, app.get("/v1/streams/nope").await),
        (404, app.get("/v1/streams/nope/readings").await),
        (404, app.get("/v1/streams/nope/anomalies").await),
        (400, app.get("/v1/streams/s/readings?limit=0").await),
        (400, app.get("/v1/streams/s/readings?from=never").await),
        (400, app.get("/v1/anomalies?cursor=zzz").await),
        (422, app.put("/v1/streams/s", &json!({"sensitivity": 2.0})).await),
        (422, app.put("/v1/streams/s", &json!({"channels": 0})).await),
        (422, app.put("/v1/streams/s", &json!({"channels": 4})).await),
        (422, app.put("/v1/streams/t", &json!({"model": "no-such-model"})).await),
        (400, app.put("/v1/streams/t", &json!({"colour": "red"})).await),
        (400, app.put("/v1/streams/t", &json!({"baseline": "yesterday"})).await),
        (422, app.put("/v1/streams/s", &json!({"retention": "30 days please"})).await),
        (422, app.put("/v1/streams/s", &json!({"retention": "59s"})).await),
        (422, app.put("/v1/streams/s", &json!({"retention": "100000y"})).await),
        (422, app.put("/v1/streams/t", &json!({"retention": "0s"})).await),
        (400, app.put("/v1/streams/t", &json!({"retention": 3600})).await),
        (404, app.get("/v1/nothing-here").await),
    ];
    for (i, (expected, (status, problem))) in cases.iter().enumerate() {
        assert_eq!(status, expected, "case {i}: {problem}");
        assert_eq!(problem["status"].as_u64(), Some(*expected as u64), "case {i} is problem+json: {problem}");
        assert!(problem["detail"].is_string() && problem["title"].is_string(), "case {i}: {problem}");
    }
    // Nothing changed: the five good readings, one stream.
    let (_, stream) = app.get("/v1/streams/s").await;
    assert_eq!((stream["readings"].as_u64(), stream["channels"].as_u64()), (Some(5), Some(1)), "{stream}");
    assert_eq!(stream["retention"], json!(null), "{stream}");
    let (_, list) = app.get("/v1/streams").await;
    assert_eq!(list["streams"].as_array().map(Vec::len), Some(1), "{list}");
    // And the stream still takes good readings.
    assert_eq!(app.post("/v1/streams/s/readings", &body(&[1.0], 105)).await.0, 200);
    app.stop().await;
}

const READ: &str = "read-key-0123456789";
const WRITE: &str = "write-key-0123456789";
const ADMIN: &str = "admin-key-0123456789";

/// A body over the limit but under twice it is read to its end before the 413, so a client
/// still writing it (more than the socket buffers hold) reads the answer instead of failing
/// with a broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_answered_413_not_cut_off() {
    let app = spawn_app_with(Backend::Sqlite, None, |s| s.max_body_bytes = 6 << 20).await.expect("sqlite");
    for _ in 0..3 {
        let request = app
            .client
            .post(app.url("/v1/streams/s/readings"))
            .header("content-type", "application/json")
            .body(" ".repeat(11 << 20));
        let (status, problem) =
            crate::app::decode(request.send().await.expect("an oversized body is answered, not cut off")).await;
        assert_eq!(status, 413, "{problem}");
    }
    let (status, _) = app.get("/v1/streams/s").await;
    assert_eq!(status, 404, "nothing was created");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_its_scope() {
    let keys = format!("read:{READ},write:{WRITE},admin:{ADMIN}");
    let app = spawn_app_with_keys(Backend::Sqlite, Some(&keys)).await.expect("sqlite");
    // Some data to act on, written with the admin key.
    let admin_post = app
        .client
        .post(app.url("/v1/streams/s/readings"))
        .bearer_auth(ADMIN)
        .json(&body(&[1.0, 2.0], 0))
        .send()
        .await
        .expect("sent");
    assert_eq!(admin_post.status(), 200);
    let payload = |route: &Route| match (route.method, route.template) {
        ("POST", "/v1/streams/{stream}/readings") => Some(body(&[3.0], 10)),
        ("POST", "/v1/readings") => Some(json!({"readings": [{"stream": "s2", "ts": ts(0), "value": 1}]})),
        ("PUT", "/v1/streams/{stream}") => Some(json!({})),
        ("POST", "/v1/anomalies/{id}/feedback") => Some(json!({"label": "false_positive"})),
        ("POST", "/admin/v1/models/{model}/train") => Some(json!({"streams": []})),
        _ => None,
    };
    for route in ROUTES {
        let (method, path, need, payload) = (route.method, route.example, route.need, payload(route));
        for (key, scope) in [
            (None, None),
            (Some("wrong-key-0123456789"), None),
            (Some(READ), Some(Need::Read)),
            (Some(WRITE), Some(Need::Write)),
            (Some(ADMIN), Some(Need::Admin)),
        ] {
            let mut request = app.client.request(method.parse().expect("method"), app.url(path));
            if let Some(k) = key {
                request = request.bearer_auth(k);
            }
            if let Some(p) = &payload {
                request = request.json(p);
            }
            let (status, reply) = crate::app::decode(request.send().await.expect("sent")).await;
            // The route exists: neither the router's fallback nor a method it does not serve.
            assert!(status != 405 && reply["detail"] != "no such route", "{method} {path} is not served: {reply}");
            let expected_auth = match (need, scope) {
                (Need::Open, _) => None,
                (_, None) => Some(401),
                (_, Some(Need::Admin)) => None,
                (n, Some(s)) if n == s => None,
                _ => Some(403),
            };
            match expected_auth {
                Some(code) => assert_eq!(status, code, "{method} {path} with {key:?}"),
                None => assert!(status != 401 && status != 403, "{method} {path} with {key:?} got {status}"),
            }
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_streams_and_anomalies_and_resumes_scoring_without_a_new_warmup() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app(backend).await else { continue };
        let mut values = seasonal(700, 5);
        values[400] += 6.0;
        let flagged = feed(&app, "boiler", &values, 0, 50).await;
        assert!(flagged.contains(&400), "{backend:?}: {flagged:?}");
        let app = restart(app).await;
        let (_, stream) = app.get("/v1/streams/boiler").await;
        assert_eq!((stream["readings"].as_u64(), stream["state"].as_str()), (Some(700), Some("scoring")), "{stream}");
        let (_, events) = app.get("/v1/streams/boiler/anomalies").await;
        assert!(!events["anomalies"].as_array().expect("anomalies").is_empty(), "anomalies survive a restart");
        // The very next readings are scored: a spike right after the restart is flagged.
        let mut more = seasonal(720, 5)[700..].to_vec();
        more[3] += 6.0;
        let flagged = feed(&app, "boiler", &more, 700, 20).await;
        assert!(flagged.contains(&703), "{backend:?}: scoring resumed at once: {flagged:?}");
        app.stop().await;
    }
}

/// A graceful stop writes every stream's scoring state, a few hundred streams at a time so
/// the writer commits their states together: afterwards each stored state has judged its
/// stream's last reading (a restart has nothing to replay). More streams than are stopped
/// at once, on both databases.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_writes_every_streams_state() {
    use sqlx::{Connection, Row};
    const STREAMS: usize = 700;
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app(backend).await else { continue };
        let base = 1_767_225_600_000i64;
        // Three readings of each stream: the first commit writes a new stream's state, the
        // next two are due only seconds later, so only the stop writes them.
        for step in 0..3i64 {
            let readings: Vec<Value> = (0..STREAMS)
                .map(|s| json!({"stream": format!("s{s}"), "ts": base + step * 1000, "value": (s as f64 + step as f64).sin()}))
                .collect();
            let (status, reply) = app.post("/v1/readings", &json!({ "readings": readings })).await;
            assert_eq!(status, 200, "{backend:?}: {reply}");
        }
        let url = app.database_url.clone();
        let _dir = app.stop().await;
        let sql = "SELECT s.name, s.last_ts, p.last_ts AS state_ts FROM streams s \
                   LEFT JOIN stream_snapshots p ON p.stream_id = s.id";
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(&url).await.expect("the database opens");
        let rows: Vec<(String, Option<i64>, Option<i64>)> = sqlx::query(sql)
            .fetch_all(&mut conn)
            .await
            .expect("streams read")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        conn.close().await.expect("closed");
        assert_eq!(rows.len(), STREAMS, "{backend:?}");
        let behind: Vec<_> =
            rows.iter().filter(|(_, last, state)| *last != Some(base + 2000) || state != last).collect();
        assert!(
            behind.is_empty(),
            "{backend:?}: {} of {STREAMS} states not written at the stop, e.g. {:?}",
            behind.len(),
            behind.first()
        );
    }
}

/// A reading's numbers (one channel's or several) as a list.
fn numbers(v: &Value) -> Vec<f64> {
    match v.as_array() {
        Some(values) => values.iter().map(|x| x.as_f64().expect("number")).collect(),
        None => vec![v.as_f64().expect("number")],
    }
}

/// Asserts two stored readings have the same timestamp and verdict up to what kernels that
/// run the same network differently change: ulps in the forecast, and a score whose tail
/// histogram may put such values in neighbouring bins.
pub(crate) fn assert_judged_alike(a: &Value, b: &Value, what: &str) {
    assert_eq!(a["ts"], b["ts"], "{what}");
    for (field, tolerance) in [("expected", 1e-4), ("lower", 1e-4), ("upper", 1e-4), ("score", 1e-2)] {
        let (x, y) = (numbers(&a[field]), numbers(&b[field]));
        assert_eq!(x.len(), y.len(), "{what}: {field}");
        for (x, y) in x.iter().zip(&y) {
            assert!((x - y).abs() <= tolerance * (1.0 + y.abs()), "{what}: {field} {x}, {y}");
        }
    }
}

/// A lone reading is judged against the forecast made at the step before it, and its own
/// step (the forecast of the next reading) is applied after its commit: a stream fed one
/// reading a request stores the same verdicts as one fed 40 a request, across a restart
/// between two lone readings too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_readings_are_judged_as_readings_in_batches_are() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app(backend).await else { continue };
        let values = seasonal(240, 11);
        feed(&app, "alone", &values[..120], 0, 1).await;
        feed(&app, "batched", &values, 0, 40).await;
        let app = restart(app).await;
        feed(&app, "alone", &values[120..], 120, 1).await;
        let (_, alone) = app.get("/v1/streams/alone/readings?limit=1000").await;
        let (_, batched) = app.get("/v1/streams/batched/readings?limit=1000").await;
        let (alone, batched) =
            (alone["readings"].as_array().expect("readings"), batched["readings"].as_array().expect("readings"));
        assert_eq!((alone.len(), batched.len()), (240, 240), "{backend:?}");
        let mut forecasts_moved = false;
        for (i, (a, b)) in alone.iter().zip(batched).enumerate() {
            // One step at a time and a whole window run through different kernels.
            assert_judged_alike(a, b, &format!("{backend:?} reading {i} alone, batched"));
            forecasts_moved |= i > 0 && a["expected"] != alone[i - 1]["expected"];
        }
        assert!(forecasts_moved, "{backend:?}: the forecast follows the readings");
        app.stop().await;
    }
}

/// The streams of a request take their lone readings' steps in one inference call after the
/// commit, each stream's rows among the others': every stream gets its own back and stores
/// the verdicts it stores when fed alone (a two-channel stream between two of one channel).
/// With at most 3 rows a call, the first two streams share one and the third has its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_sharing_requests_are_judged_as_streams_fed_alone() {
    for max_batch in [None, Some(3)] {
        let app = spawn_app_with(Backend::Sqlite, None, |s| s.max_batch = max_batch.unwrap_or(s.max_batch))
            .await
            .expect("sqlite");
        judged_alike_together_and_alone(app, max_batch).await;
    }
}

async fn judged_alike_together_and_alone(app: TestApp, max_batch: Option<usize>) {
    for name in ["together-b", "alone-b"] {
        let (status, reply) = app.put(&format!("/v1/streams/{name}"), &json!({"channels": 2})).await;
        assert_eq!(status, 201, "{reply}");
    }
    const N: usize = 120;
    let (a, b, c, d) = (seasonal(N, 21), seasonal(N, 22), seasonal(N, 23), seasonal(N, 24));
    let reading = |stream: &str, i: usize| match stream {
        "a" => json!({"ts": ts(i), "value": a[i]}),
        "b" => json!({"ts": ts(i), "values": [b[i], c[i] * 2.0]}),
        _ => json!({"ts": ts(i), "value": d[i] - 5.0}),
    };
    for i in 0..N {
        let together: Vec<Value> = ["a", "b", "c"]
            .into_iter()
            .map(|stream| {
                let mut r = reading(stream, i);
                r["stream"] = json!(format!("together-{stream}"));
                r
            })
            .collect();
        let (status, reply) = app.post("/v1/readings", &json!({ "readings": together })).await;
        assert_eq!(status, 200, "{reply}");
        for stream in ["a", "b", "c"] {
            let path = format!("/v1/streams/alone-{stream}/readings");
            let (status, reply) = app.post(&path, &json!({ "readings": [reading(stream, i)] })).await;
            assert_eq!(status, 200, "{reply}");
        }
    }
    for stream in ["a", "b", "c"] {
        let (_, together) = app.get(&format!("/v1/streams/together-{stream}/readings?limit=1000")).await;
        let (_, alone) = app.get(&format!("/v1/streams/alone-{stream}/readings?limit=1000")).await;
        let (together, alone) =
            (together["readings"].as_array().expect("readings"), alone["readings"].as_array().expect("readings"));
        assert_eq!((together.len(), alone.len()), (N, N), "{stream}, at most {max_batch:?} rows a call");
        let mut forecasts_moved = false;
        for (i, (t, l)) in together.iter().zip(alone).enumerate() {
            // Steps batched with other streams' and alone run the cell on other batch sizes.
            assert_judged_alike(t, l, &format!("{stream} reading {i} together, alone; {max_batch:?} rows a call"));
            forecasts_moved |= i > 0 && t["expected"] != together[i - 1]["expected"];
        }
        assert!(forecasts_moved, "{stream}: the forecast follows the readings");
    }
    app.stop().await;
}

/// The history baseline through the service: a reading outside everything seen is flagged
/// once (the readings after it are not), and the detector's state survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_stream_flags_a_reading_outside_its_history_once_and_keeps_it_across_a_restart() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app(backend).await else { continue };
        let (status, created) = app.put("/v1/streams/meter", &json!({"baseline": "history", "warmup": 300})).await;
        assert_eq!((status, created["baseline"].as_str()), (201, Some("history")), "{created}");
        let mut values = seasonal(2000, 13);
        values[1500] += 6.0; // above the range seen by twice its tolerance
        values[1850] -= 7.0; // below it, after the restart
        let flagged = feed(&app, "meter", &values[..1800], 0, 100).await;
        assert!(flagged.contains(&1500), "{backend:?}: {flagged:?}");
        assert!(!flagged.contains(&1501), "{backend:?}: only the first reading carries the score: {flagged:?}");
        assert!(flagged.len() <= 3, "{backend:?}: false flags on a clean seasonal stream: {flagged:?}");
        let app = restart(app).await;
        let flagged = feed(&app, "meter", &values[1800..], 1800, 50).await;
        assert_eq!(flagged, vec![1850], "{backend:?}: the history survived the restart");
        let (_, stream) = app.get("/v1/streams/meter").await;
        assert_eq!((stream["baseline"].as_str(), stream["readings"].as_u64()), (Some("history"), Some(2000)));
        app.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_leave_memory_and_come_back_from_storage() {
    let app = spawn_app_with(Backend::Sqlite, None, |s| s.idle_evict = std::time::Duration::from_millis(200))
        .await
        .expect("sqlite");
    let values = seasonal(400, 8);
    let active = |app: &TestApp| {
        let request = app.client.get(app.url("/readyz"));
        async move { crate::app::decode(request.send().await.expect("sent")).await.1["active_streams"].as_u64() }
    };
    feed(&app, "idle", &values[..290], 0, 100).await;
    // A client sending a reading every 60 ms for three times the idle limit: never idle that
    // long, never evicted (the actor's one timer fires while it is busy and is re-armed).
    // The pacing is the test's subject, so it sleeps; a check after a gap the runner
    // stretched towards the limit (a loaded machine) proves nothing and is not made.
    let mut fed = std::time::Instant::now();
    for i in 290..300 {
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let now_active = active(&app).await;
        if fed.elapsed() < std::time::Duration::from_millis(150) {
            assert_eq!(now_active, Some(1), "evicted while busy, before reading {i}");
        }
        feed(&app, "idle", &values[i..i + 1], i, 1).await;
        fed = std::time::Instant::now();
    }
    let mut evicted = false;
    for _ in 0..100 {
        if active(&app).await == Some(0) {
            evicted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(evicted, "the idle stream was evicted");
    // It comes back with its state: scoring (no new warm-up), and a spike is flagged.
    let mut rest = values[300..].to_vec();
    rest[5] += 5.0;
    let flagged = feed(&app, "idle", &rest, 300, 100).await;
    assert!(flagged.contains(&305), "{flagged:?}");
    let (_, stream) = app.get("/v1/streams/idle").await;
    assert_eq!(stream["readings"].as_u64(), Some(400));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_queues_gets_429_with_retry_after_and_loses_nothing_acknowledged() {
    let app = spawn_app_with(Backend::Sqlite, None, |s| s.mailbox = 1).await.expect("sqlite");
    let values = seasonal(64, 9);
    // Many requests for one stream at once: its mailbox holds one, the rest are refused.
    let requests = (0..64).map(|i| {
        let request = app.client.post(app.url("/v1/streams/burst/readings")).json(&body(&values[i..i + 1], i));
        async move { request.send().await.expect("sent") }
    });
    let responses = futures::future::join_all(requests).await;
    let mut accepted = 0;
    let mut refused = 0;
    for r in responses {
        match r.status().as_u16() {
            200 => accepted += 1,
            429 => {
                assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
                refused += 1;
            }
            409 => {} // a later timestamp committed first
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0, "the burst overflowed the mailbox");
    let (_, stream) = app.get("/v1/streams/burst").await;
    assert_eq!(stream["readings"].as_u64(), Some(accepted), "every acknowledged reading is stored");
    app.stop().await;
}

/// Requests of several streams each, many at once, sharing streams in other orders: each
/// queues for its streams' turns in one order, so none waits for ever on another; each is
/// stored whole or not at all (409 when a later reading of one of its streams committed
/// first), and every stream holds exactly the readings of the requests acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_streams_in_other_orders_all_finish_each_stored_whole_or_not_at_all() {
    const STREAMS: usize = 64;
    const PER_REQUEST: usize = 48;
    const REQUESTS: usize = 64;
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    // Request k: reading k of `PER_REQUEST` streams from stream k on, backwards for odd k.
    let streams_of = |k: usize| -> Vec<String> {
        let mut picked: Vec<String> = (0..PER_REQUEST).map(|j| format!("shared-{}", (k + j) % STREAMS)).collect();
        if k % 2 == 1 {
            picked.reverse();
        }
        picked
    };
    let requests = (0..REQUESTS).map(|k| {
        let readings: Vec<Value> =
            streams_of(k).iter().map(|s| json!({"stream": s, "ts": ts(k), "value": (k % 7) as f64})).collect();
        let request = app.client.post(app.url("/v1/readings")).json(&json!({ "readings": readings }));
        async move { (k, request.send().await.expect("sent").status().as_u16()) }
    });
    let statuses = tokio::time::timeout(std::time::Duration::from_secs(120), futures::future::join_all(requests))
        .await
        .expect("every request finishes");
    let mut stored: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    let mut accepted = 0;
    for (k, status) in statuses {
        match status {
            200 => {
                accepted += 1;
                for s in streams_of(k) {
                    stored.entry(s).or_default().push(tsad::api::wire::format_ts(ts(k)));
                }
            }
            409 => {} // a later reading of one of its streams was committed first
            other => panic!("request {k}: unexpected status {other}"),
        }
    }
    assert!(accepted > 1, "{accepted} of {REQUESTS} requests accepted");
    for s in 0..STREAMS {
        let name = format!("shared-{s}");
        let (_, reply) = app.get(&format!("/v1/streams/{name}/readings?limit=1000")).await;
        let got: Vec<String> = reply["readings"]
            .as_array()
            .map(|rs| rs.iter().filter_map(|r| r["ts"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut want = stored.remove(&name).unwrap_or_default();
        want.sort();
        assert_eq!(got, want, "{name}: the readings of the requests acknowledged, and only those");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activating_a_model_version_hot_swaps_its_streams_without_losing_a_reading() {
    // Two versions of the default model (same weights, so the test is about the swap).
    let models = tempfile::tempdir().expect("temp dir");
    for version in ["1", "2"] {
        let dir = models.path().join("default").join(version);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for file in ["model.json", "weights.safetensors"] {
            std::fs::copy(crate::app::models_dir().join("default/1").join(file), dir.join(file)).expect("copy");
        }
    }
    let root = models.path().to_path_buf();
    let app = spawn_app_with(Backend::Sqlite, None, move |s| s.models_dir = root).await.expect("sqlite");
    let values = seasonal(800, 12);
    feed(&app, "swap", &values[..400], 0, 100).await;
    let (_, stream) = app.get("/v1/streams/swap").await;
    assert_eq!(stream["model_version"], "2", "the highest version is active by default");

    let (status, listed) = app.get("/admin/v1/models").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["models"][0]["name"], "default");
    assert_eq!(listed["models"][0]["active_version"], "2");
    assert_eq!(listed["models"][0]["versions"].as_array().map(Vec::len), Some(2));

    // Roll back to version 1 while readings keep arriving.
    let (status, model) = app.post("/admin/v1/models/default/versions/1/activate", &json!({})).await;
    assert_eq!((status, model["active_version"].as_str()), (200, Some("1")), "{model}");
    let mut rest = values[400..].to_vec();
    rest[10] += 5.0;
    let flagged = feed(&app, "swap", &rest, 400, 100).await;
    assert!(flagged.contains(&410), "scoring continues at once on the new version: {flagged:?}");
    let (_, stream) = app.get("/v1/streams/swap").await;
    assert_eq!((stream["model_version"].as_str(), stream["readings"].as_u64()), (Some("1"), Some(800)), "{stream}");
    let (_, stored) = app.get("/v1/streams/swap/readings?limit=10000").await;
    assert_eq!(stored["readings"].as_array().map(Vec::len), Some(800), "no reading dropped or stored twice");

    assert_eq!(app.post("/admin/v1/models/default/versions/7/activate", &json!({})).await.0, 404);
    assert_eq!(app.post("/admin/v1/models/nope/versions/1/activate", &json!({})).await.0, 404);
    assert_eq!(app.post("/admin/v1/models/default/versions/../activate", &json!({})).await.0, 404);
    app.stop().await;
}

/// A models directory of its own holding a copy of the shipped default model.
fn scratch_models() -> tempfile::TempDir {
    let models = tempfile::tempdir().expect("temp dir");
    let dir = models.path().join("default").join("1");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for file in ["model.json", "weights.safetensors"] {
        std::fs::copy(crate::app::models_dir().join("default/1").join(file), dir.join(file)).expect("copy");
    }
    models
}

/// Polls a job until it leaves queued/running (bounded: 120 s).
async fn finished_job(app: &TestApp, id: i64) -> Value {
    for _ in 0..1200 {
        let (status, job) = app.get(&format!("/admin/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{job}");
        if !matches!(job["status"].as_str(), Some("queued" | "running")) {
            return job;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("job {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_jobs_on_sqlite() {
    training_jobs_train_register_activate_and_roll_back(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_jobs_on_postgres() {
    training_jobs_train_register_activate_and_roll_back(Backend::Postgres).await;
}

/// Runs the `tsad` binary against `app`; returns (exit code, stdout, stderr).
async fn tsad_cli(app: &TestApp, args: &[&str]) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_tsad"));
    command.args(args).arg("--server").arg(app.url("")).env_remove("TSAD_API_KEY");
    let out = tokio::task::spawn_blocking(move || command.output()).await.expect("joined").expect("tsad runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

async fn training_jobs_train_register_activate_and_roll_back(backend: Backend) {
    let models = scratch_models();
    let root = models.path().to_path_buf();
    let again = root.clone();
    let Some(app) = spawn_app_with(backend, None, move |s| s.models_dir = root).await else { return };
    for (name, seed) in [("plant-a", 21), ("plant-b", 22), ("other", 23)] {
        feed(&app, name, &seasonal(1200, seed), 0, 400).await;
    }
    let request = json!({"architecture": "gru", "hidden": 8, "layers": 1, "window": 16, "epochs": 2,
                         "learning_rate": 0.01, "streams": ["plant-*"], "activate": true});
    let (status, job) = app.post("/admin/v1/models/plant/train", &request).await;
    assert_eq!((status, job["status"].as_str()), (202, Some("queued")), "{job}");
    let job = finished_job(&app, job["id"].as_i64().expect("id")).await;
    assert_eq!((job["status"].as_str(), job["version"].as_str()), (Some("succeeded"), Some("1")), "{job}");
    assert_eq!(job["progress"]["epochs"], 2);
    assert!(job["progress"]["val_loss"].is_number(), "{job}");
    let (_, models_list) = app.get("/admin/v1/models").await;
    let plant = models_list["models"].as_array().expect("models").iter().find(|m| m["name"] == "plant").cloned();
    let plant = plant.expect("the new model is registered");
    assert_eq!(plant["active_version"], "1");
    assert_eq!(plant["versions"][0]["architecture"], "gru");
    assert!(plant["versions"][0]["data"]["source"].as_str().is_some_and(|s| s.contains("2 series")), "{plant}");
    // A stream configured with the new model is scored by it.
    assert_eq!(app.put("/v1/streams/plant-c", &json!({"model": "plant"})).await.0, 201);
    feed(&app, "plant-c", &seasonal(300, 24), 0, 100).await;
    let (_, stream) = app.get("/v1/streams/plant-c").await;
    assert_eq!((stream["model"].as_str(), stream["model_version"].as_str()), (Some("plant"), Some("1")));

    let before = feed(&app, "plant-c", &seasonal(20, 25), 300, 20).await;
    assert!(before.is_empty());

    // A second version trained without `activate` does not serve, even after a restart
    // (the serving version is pinned before the new one appears) ...
    let quiet = json!({"architecture": "lstm", "hidden": 8, "window": 16, "epochs": 1, "streams": ["plant-*"]});
    let (_, job) = app.post("/admin/v1/models/plant/train", &quiet).await;
    let job = finished_job(&app, job["id"].as_i64().expect("id")).await;
    assert_eq!((job["status"].as_str(), job["version"].as_str()), (Some("succeeded"), Some("2")), "{job}");
    let app = restart_with(app, move |s| s.models_dir = again).await;
    let (_, stream) = app.get("/v1/streams/plant-c").await;
    assert_eq!(stream["model_version"], "1", "{stream}");
    // ... until it is activated (hot swap), and activating version 1 again is the rollback.
    let (status, plant) = app.post("/admin/v1/models/plant/versions/2/activate", &json!({})).await;
    assert_eq!((status, plant["active_version"].as_str()), (200, Some("2")), "{plant}");
    let (_, stream) = app.get("/v1/streams/plant-c").await;
    assert_eq!((stream["model_version"].as_str(), stream["readings"].as_i64()), (Some("2"), Some(320)), "{stream}");
    feed(&app, "plant-c", &seasonal(20, 26), 320, 20).await;
    let (code, out, err) = tsad_cli(&app, &["models", "activate", "plant", "1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().any(|l| l.starts_with("plant") && l.contains(" 1 ") && l.contains('*')), "{out}");
    let (_, stream) = app.get("/v1/streams/plant-c").await;
    assert_eq!((stream["model_version"].as_str(), stream["readings"].as_i64()), (Some("1"), Some(340)), "{stream}");
    let (code, out, _) = tsad_cli(&app, &["models"]).await;
    assert_eq!((code, out.lines().filter(|l| l.starts_with("plant")).count()), (0, 2), "{out}");

    // Cancel a running job and one queued behind it (one job runs at a time); cancelling
    // again is a conflict.
    let long = json!({"hidden": 64, "window": 64, "epochs": 5000, "streams": ["*"]});
    let (_, running) = app.post("/admin/v1/models/long/train", &long).await;
    let (_, queued) = app.post("/admin/v1/models/long/train", &long).await;
    let (running, queued) = (running["id"].as_i64().expect("id"), queued["id"].as_i64().expect("id"));
    assert_eq!(app.delete(&format!("/admin/v1/jobs/{running}")).await.0, 200);
    let (code, out, err) = tsad_cli(&app, &["jobs", "cancel", &queued.to_string()]).await;
    assert_eq!(code, 0, "{out}{err}");
    for id in [running, queued] {
        let job = finished_job(&app, id).await;
        assert_eq!(job["status"], "cancelled", "{job}");
    }
    let (status, problem) = app.delete(&format!("/admin/v1/jobs/{queued}")).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("cancelled")), "{problem}");

    // A job with no matching data fails with its reason.
    let (_, job) = app.post("/admin/v1/models/empty/train", &json!({"streams": ["nothing-*"], "epochs": 1})).await;
    let job = finished_job(&app, job["id"].as_i64().expect("id")).await;
    assert_eq!(job["status"], "failed");
    assert!(job["error"].as_str().is_some_and(|e| e.contains("no stored readings")), "{job}");

    let (_, jobs) = app.get("/admin/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(5));
    let (code, out, _) = tsad_cli(&app, &["jobs"]).await;
    assert_eq!((code, out.lines().count()), (0, 6), "{out}");
    assert!(out.contains("cancelled") && out.contains("failed") && out.contains("succeeded"), "{out}");
    let (code, _, err) = tsad_cli(&app, &["jobs", "show", "999"]).await;
    assert!(code == 1 && err.contains("404"), "{code} {err}");
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    for line in
        ["tsad_jobs{state=\"succeeded\"} 2", "tsad_jobs{state=\"cancelled\"} 2", "tsad_jobs{state=\"failed\"} 1"]
    {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(metrics.contains("tsad_training_epoch_seconds_count"), "{metrics}");
    assert!(metrics.contains("tsad_models_active 2"), "default and plant serve: {metrics}");
    assert_eq!(app.get("/admin/v1/jobs/999").await.0, 404);
    assert_eq!(app.delete("/admin/v1/jobs/999").await.0, 404);

    // Bad parameters are refused before anything is queued, naming the field.
    for (body, needle) in [
        (json!({"streams": ["a"], "architecture": "transformer"}), "architecture"),
        (json!({"streams": ["a"], "hidden": 0}), "hidden"),
        (json!({"streams": ["a"], "layers": 99}), "layers"),
        (json!({"streams": ["a"], "window": 1}), "window"),
        (json!({"streams": ["a"], "epochs": 0}), "epochs"),
        (json!({"streams": ["a"], "learning_rate": 0.0}), "learning_rate"),
        (json!({"streams": []}), "streams"),
        (json!({}), "streams"),
        (json!({"streams": ["a b"]}), "streams"),
        (json!({"streams": ["a"], "from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}), "to"),
        (json!({"streams": ["a"], "from": "soon"}), "from"),
    ] {
        let (status, problem) = app.post("/admin/v1/models/x/train", &body).await;
        assert_eq!(status, 422, "{body}: {problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| d.contains(needle)), "{body}: {problem}");
    }
    let (_, jobs) = app.get("/admin/v1/jobs").await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(5), "nothing queued by bad requests");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_cannot_write_its_model_fails_and_the_active_model_stays() {
    let models = scratch_models();
    // A file where the model's folder must go: the version cannot be written.
    std::fs::write(models.path().join("blocked"), "not a folder").expect("write");
    let root = models.path().to_path_buf();
    let app = spawn_app_with(Backend::Sqlite, None, move |s| s.models_dir = root).await.expect("sqlite");
    feed(&app, "s", &seasonal(400, 41), 0, 200).await;
    let request = json!({"hidden": 4, "window": 8, "epochs": 1, "streams": ["s"], "activate": true});
    let (_, job) = app.post("/admin/v1/models/blocked/train", &request).await;
    let job = finished_job(&app, job["id"].as_i64().expect("id")).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().is_some_and(|e| e.contains("blocked")), "{job}");
    let (_, stream) = app.get("/v1/streams/s").await;
    assert_eq!((stream["model"].as_str(), stream["model_version"].as_str()), (Some("default"), Some("1")));
    feed(&app, "s", &seasonal(100, 42), 400, 100).await; // still scored and stored
    let leftovers: Vec<_> = std::fs::read_dir(models.path()).expect("read").filter_map(Result::ok).collect();
    assert_eq!(leftovers.len(), 2, "nothing half-written: {leftovers:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_marks_jobs_left_running_as_interrupted() {
    let app = spawn_app(Backend::Sqlite).await.expect("sqlite");
    // What a crash leaves behind: a job recorded as running.
    let url = app.database_url.clone();
    let app = {
        let dir = app.stop().await;
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("sqlite");
        sqlx::query("INSERT INTO jobs (model, status, params, created_at) VALUES ('m', 'running', '{}', 0)")
            .execute(&mut conn)
            .await
            .expect("insert");
        let mut app = TestApp::start(&url, None).await;
        app.keep(dir);
        app
    };
    let (_, jobs) = app.get("/admin/v1/jobs").await;
    let job = &jobs["jobs"][0];
    assert_eq!(job["status"], "failed", "{job}");
    assert!(job["error"].as_str().is_some_and(|e| e.contains("interrupted")), "{job}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_its_warmup_gets_a_model_of_its_own_while_every_reading_is_scored_once() {
    let models = scratch_models();
    let root = models.path().to_path_buf();
    let app = spawn_app_with(Backend::Sqlite, None, move |s| {
        s.models_dir = root;
        s.auto_train_jobs = 1;
        s.auto_train_epochs = 30;
    })
    .await
    .expect("sqlite");
    assert_eq!(app.put("/v1/streams/fit-me", &json!({"warmup": 300})).await.0, 201);
    assert_eq!(app.put("/v1/streams/keep-default", &json!({"warmup": 300, "auto_train": false})).await.0, 201);
    let values = seasonal(20_000, 31);
    feed(&app, "keep-default", &values[..600], 0, 100).await;
    // Ingest never pauses: 20 readings a request, each answered with one verdict per
    // reading, while the fit runs and the stream is swapped to its new model.
    let mut fed = 0;
    let mut versions = Vec::new();
    let mut swapped_at = None;
    while fed < values.len() {
        let part = &values[fed..fed + 20];
        let path = "/v1/streams/fit-me/readings?verdicts=all";
        let (status, reply) = app.post(path, &body(part, fed)).await;
        assert_eq!(status, 200, "{reply}");
        let verdicts = reply["verdicts"].as_array().expect("verdicts");
        assert_eq!(verdicts.len(), 20, "one verdict per reading: {reply}");
        for (i, v) in verdicts.iter().enumerate() {
            assert_eq!(v["ts"].as_str(), Some(tsad::api::wire::format_ts(ts(fed + i)).as_str()), "{reply}");
        }
        fed += 20;
        let (_, stream) = app.get("/v1/streams/fit-me").await;
        versions.push(stream["model"].as_str().unwrap_or("").to_string());
        if stream["model"].as_str().is_some_and(|m| m.starts_with("auto-")) && stream["fit_pending"] == false {
            swapped_at = Some(fed);
            break;
        }
    }
    let swapped_at = swapped_at.expect("the fit finished while ingest ran");
    assert!(versions.iter().filter(|m| *m == "default").count() > 15, "fitting took some requests: {versions:?}");
    let (_, stream) = app.get("/v1/streams/fit-me").await;
    assert_eq!((stream["model_version"].as_str(), stream["readings"].as_i64()), (Some("1"), Some(swapped_at as i64)));
    let (_, other) = app.get("/v1/streams/keep-default").await;
    assert_eq!(other["model"], "default", "auto_train false keeps the shared model");
    // Every stored reading once, in order, each with its score.
    let mut stored = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = cursor.as_ref().map_or(String::new(), |c| format!("&cursor={c}"));
        let (status, page) = app.get(&format!("/v1/streams/fit-me/readings?limit=1000{query}")).await;
        assert_eq!(status, 200, "{page}");
        for r in page["readings"].as_array().expect("readings") {
            assert!(r["score"].as_f64().is_some_and(|s| (0.0..=1.0).contains(&s)), "{r}");
            stored.push(r["ts"].as_str().expect("ts").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..swapped_at).map(|i| tsad::api::wire::format_ts(ts(i))).collect();
    assert_eq!(stored, expected);
    // Scoring goes on with the stream's own model, without a new warm-up.
    let mut rest = values[swapped_at..swapped_at + 200].to_vec();
    rest[50] += 5.0;
    let flagged = feed(&app, "fit-me", &rest, swapped_at, 100).await;
    assert!(flagged.contains(&(swapped_at + 50)), "{flagged:?}");
    let (_, jobs) = app.get("/admin/v1/jobs").await;
    assert_eq!(jobs["jobs"][0]["status"], "succeeded", "{jobs}");
    app.stop().await;
}

async fn retries_are_idempotent(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let mut values = seasonal(400, 51);
    values[350] += 8.0;
    let path = "/v1/streams/retry/readings?verdicts=all";
    let (status, first) = app.post(path, &body(&values[..360], 0)).await;
    assert_eq!(status, 200, "{first}");
    // The same request again (a client that timed out and retried): the same answer,
    // nothing stored twice.
    let (status, again) = app.post(path, &body(&values[..360], 0)).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["accepted"], 360);
    assert_eq!(again["verdicts"], first["verdicts"], "the stored verdicts are answered");
    assert!(again["anomalies"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v["ts"] == tsad::api::wire::format_ts(ts(350)))));
    let (_, stream) = app.get("/v1/streams/retry").await;
    assert_eq!(stream["readings"], 360, "{stream}");
    // A retry overlapping new readings: the old part is checked, the new part stored.
    let (status, overlap) = app.post(path, &body(&values[340..380], 340)).await;
    assert_eq!((status, overlap["accepted"].as_u64()), (200, Some(40)), "{overlap}");
    let (_, stream) = app.get("/v1/streams/retry").await;
    assert_eq!(stream["readings"], 380, "{stream}");
    // A different value at a stored timestamp is a conflict, and changes nothing.
    let mut changed = values[370..390].to_vec();
    changed[0] += 1.0;
    let (status, problem) = app.post(path, &body(&changed, 370)).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("different value")), "{problem}");
    let (_, stream) = app.get("/v1/streams/retry").await;
    assert_eq!(stream["readings"], 380, "{stream}");
    // The stored readings are each there once.
    let (_, page) = app.get("/v1/streams/retry/readings?limit=1000").await;
    let stored: Vec<&str> =
        page["readings"].as_array().expect("readings").iter().map(|r| r["ts"].as_str().expect("ts")).collect();
    let expected: Vec<String> = (0..380).map(|i| tsad::api::wire::format_ts(ts(i))).collect();
    assert_eq!(stored, expected);
    let metrics = app.client.get(app.url("/metrics")).send().await.expect("metrics").text().await.expect("text");
    assert!(metrics.contains("tsad_readings_total 380"), "retries are not counted again:\n{metrics}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_idempotent_on_sqlite() {
    retries_are_idempotent(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_idempotent_on_postgres() {
    retries_are_idempotent(Backend::Postgres).await;
}
