//! The retention of raw readings (the service's `retention`, or a stream's own) in a running
//! service: its background passes
//! delete a stream's readings older than the retention before its newest, the stream then
//! reports the readings stored, pages of readings start after the deleted ones, and the
//! metric counts them. The storage's own tests (`storage::retention_*`) cover the edges.
use std::time::Duration;

use serde_json::json;

use crate::app::{restart_with, spawn_app, Backend};

/// Whose retention deletes: the service's (`retention`) or the stream's own (`PUT`).
#[derive(Clone, Copy, PartialEq)]
enum Whose {
    Service,
    Stream,
}

async fn retention_deletes_readings_in_the_background(backend: Backend, whose: Whose) {
    let Some(app) = spawn_app(backend).await else { return };
    // 200 readings a second apart, in requests of 10 (SQLite: a block each).
    let start = 1_767_225_600_000i64;
    for k in 0..20 {
        let readings: Vec<_> =
            (k * 10..k * 10 + 10).map(|i| json!({ "ts": start + 1000 * i, "value": (i % 17) as f64 })).collect();
        let (status, body) = app.post("/v1/streams/old/readings", &json!({ "readings": readings })).await;
        assert_eq!(status, 200, "{body}");
    }
    // A graceful stop writes the stream's scoring state after its last reading (the
    // retention never deletes readings after the state), as does a change of its settings,
    // which the service's retention task hears of: it has none of its own to wait for.
    let app = match whose {
        Whose::Service => restart_with(app, |s| s.retention = Some(Duration::from_secs(60))).await,
        Whose::Stream => {
            let (status, stream) = app.put("/v1/streams/old", &json!({ "retention": "1m" })).await;
            assert_eq!((status, &stream["retention"]), (200, &json!("1m")), "{stream}");
            app
        }
    };
    // Kept: from 60 s before the newest (199 s) on; SQLite deletes whole blocks, and keeps
    // the one ending at 139 s.
    let kept = if backend == Backend::Sqlite { 70 } else { 61 };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let stream = loop {
        let (status, stream) = app.get("/v1/streams/old").await;
        assert_eq!(status, 200, "{stream}");
        if stream["readings"] != 200 || tokio::time::Instant::now() > deadline {
            break stream;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(stream["readings"], kept, "{stream}");
    assert_eq!(stream["readings_expired"], 200 - kept, "{stream}");
    let (status, page) = app.get("/v1/streams/old/readings?limit=1000").await;
    assert_eq!(status, 200, "{page}");
    let times = page["readings"].as_array().expect("readings");
    assert_eq!(times.len(), kept as usize, "the page holds the readings kept");
    let first = (200 - kept) as i64;
    let expected_first = json!(tsad::api::wire::format_ts(start + 1000 * first));
    assert_eq!(times[0]["ts"], expected_first, "the oldest kept");
    let metrics = reqwest::get(app.url("/metrics")).await.expect("scraped").text().await.expect("text");
    let line = metrics.lines().find(|l| l.starts_with("tsad_readings_expired_total")).expect("the metric");
    assert_eq!(line, format!("tsad_readings_expired_total {}", 200 - kept));
    // New readings are taken as before.
    let (status, body) =
        app.post("/v1/streams/old/readings", &json!({ "readings": [{ "ts": start + 200_000, "value": 1.0 }] })).await;
    assert_eq!(status, 200, "{body}");
    let (_, stream) = app.get("/v1/streams/old").await;
    assert_eq!(stream["readings"], kept + 1, "{stream}");
    app.stop().await;
}

#[tokio::test]
async fn retention_deletes_readings_in_the_background_sqlite() {
    retention_deletes_readings_in_the_background(Backend::Sqlite, Whose::Service).await;
}

#[tokio::test]
async fn retention_deletes_readings_in_the_background_postgres() {
    retention_deletes_readings_in_the_background(Backend::Postgres, Whose::Service).await;
}

#[tokio::test]
async fn a_streams_own_retention_deletes_in_the_background_sqlite() {
    retention_deletes_readings_in_the_background(Backend::Sqlite, Whose::Stream).await;
}

#[tokio::test]
async fn a_streams_own_retention_deletes_in_the_background_postgres() {
    retention_deletes_readings_in_the_background(Backend::Postgres, Whose::Stream).await;
}
