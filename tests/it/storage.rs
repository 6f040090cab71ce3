//! The storage layer on both backends: readings committed through the writer read back in
//! order wherever they are kept (SQLite's append-only log or the clustered table), before and
//! after the log is moved; scoring states in their own table; the migration that moved them.
use std::borrow::Cow;

use tsad::metrics::Metrics;
use tsad::scoring::Baseline;
use tsad::storage::{NewStream, ReadingRow, Storage, StreamConfig, StreamUpdate, WriteBatch, Writer};

use crate::app::{fresh_database, Backend};

fn config() -> StreamConfig {
    StreamConfig {
        channels: 1,
        model: "default".into(),
        sensitivity: 0.5,
        warmup: 10,
        auto_train: false,
        baseline: Baseline::Forecast,
    }
}

fn reading(ts: i64) -> ReadingRow {
    ReadingRow {
        ts,
        value: ts as f64 * 0.5,
        expected: 1.0,
        lower: 0.0,
        upper: 2.0,
        score: 0.25,
        anomaly: ts % 7 == 0,
        channels: None,
    }
}

fn batch(stream_id: i64, readings: Vec<ReadingRow>, snapshot: Option<&str>) -> WriteBatch {
    let last_ts = readings.last().map_or(0, |r| r.ts);
    WriteBatch {
        stream_id,
        create: None,
        update: StreamUpdate {
            last_ts,
            readings_added: readings.len() as i64,
            anomalies_added: 0,
            snapshot: snapshot.map(str::to_string),
        },
        readings,
        events: Vec::new(),
    }
}

async fn readings_round_trip(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let a = storage.put_stream("a", &config(), 0).await.expect("stream a").id;
    let b = storage.put_stream("b", &config(), 0).await.expect("stream b").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    // One reading of each stream a commit (SQLite logs them), a long run of `a` (written in
    // place), then single readings again.
    for ts in 1..=20 {
        writer.commit(vec![batch(a, vec![reading(ts)], None), batch(b, vec![reading(ts)], None)]).await.unwrap();
    }
    writer.commit(vec![batch(a, (21..=60).map(reading).collect(), Some("{\"state\":1}"))]).await.unwrap();
    for ts in 61..=70 {
        writer.commit(vec![batch(a, vec![reading(ts)], None)]).await.unwrap();
    }
    let all: Vec<i64> = (1..=70).collect();
    let check = |label: &'static str| {
        let storage = storage.clone();
        let all = all.clone();
        async move {
            let got = storage.readings(a, None, None, None, 1000).await.unwrap();
            assert_eq!(got.iter().map(|r| r.ts).collect::<Vec<_>>(), all, "{label}: every reading, in order");
            assert_eq!(got[6], reading(7), "{label}: values as written");
            let page = storage.readings(a, Some(5), Some(65), Some(15), 10).await.unwrap();
            assert_eq!(page.iter().map(|r| r.ts).collect::<Vec<_>>(), (16..=25).collect::<Vec<_>>(), "{label}: a page");
            let recent = storage.recent_readings(a, 15).await.unwrap();
            assert_eq!(
                recent.iter().map(|r| r.ts).collect::<Vec<_>>(),
                (56..=70).collect::<Vec<_>>(),
                "{label}: recent"
            );
            let other = storage.readings(b, None, None, None, 1000).await.unwrap();
            assert_eq!(other.len(), 20, "{label}: the other stream's readings");
            let record = storage.stream("a").await.unwrap().unwrap();
            assert_eq!((record.readings_count, record.last_ts), (70, Some(70)), "{label}: bookkeeping");
            assert_eq!(record.snapshot.as_deref(), Some("{\"state\":1}"), "{label}: the state kept");
        }
    };
    check("as committed").await;
    let moved = storage.compact_log().await.unwrap();
    assert_eq!(moved, if backend == Backend::Sqlite { 50 } else { 0 }, "rows moved out of the log");
    assert_eq!(storage.compact_log().await.unwrap(), 0, "the log is empty after a move");
    check("after the log moved").await;

    // A state older than the stored one does not replace it.
    writer.commit(vec![batch(a, Vec::new(), Some("{\"state\":0}"))]).await.unwrap();
    let record = storage.stream("a").await.unwrap().unwrap();
    assert_eq!(record.snapshot.as_deref(), Some("{\"state\":1}"), "an older state is ignored");

    // Readings left in the log are deleted with their stream.
    writer.commit(vec![batch(b, vec![reading(21)], None)]).await.unwrap();
    assert!(storage.delete_stream(b).await.unwrap());
    assert!(storage.readings(b, None, None, None, 1000).await.unwrap().is_empty(), "no readings left");
    assert_eq!(storage.compact_log().await.unwrap(), 0, "nothing of the deleted stream left to move");
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn readings_round_trip_sqlite() {
    readings_round_trip(Backend::Sqlite).await;
}

#[tokio::test]
async fn readings_round_trip_postgres() {
    readings_round_trip(Backend::Postgres).await;
}

/// One commit creating more streams than a statement holds, one of them already stored:
/// every new stream gets its own row, its readings and its state; the stored one keeps its id.
async fn many_streams_created_in_one_commit(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let existing = storage.put_stream("s7", &config(), 0).await.expect("stream s7").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    let names: Vec<String> = (0..1203).map(|i| format!("s{i}")).collect();
    let batches: Vec<WriteBatch> = names
        .iter()
        .enumerate()
        .map(|(i, name)| WriteBatch {
            create: Some(NewStream { name: name.clone(), config: config(), created_at: i as i64 }),
            ..batch(0, vec![reading(i as i64 + 1)], Some(&format!("{{\"state\":{i}}}")))
        })
        .collect();
    let ids = writer.commit(batches).await.expect("commits");
    assert_eq!(ids.len(), names.len());
    assert_eq!(ids[7], existing, "a stored name keeps its id");
    assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), names.len(), "one id a stream");
    let stored = storage.streams().await.unwrap();
    assert_eq!(stored.len(), names.len());
    for (i, name) in names.iter().enumerate().step_by(97) {
        let record = storage.stream(name).await.unwrap().expect("stored");
        assert_eq!(record.id, ids[i], "{name}: the id returned");
        assert_eq!(record.snapshot, Some(format!("{{\"state\":{i}}}")), "{name}: its own state");
        let readings = storage.readings(record.id, None, None, None, 10).await.unwrap();
        assert_eq!(readings.iter().map(|r| r.ts).collect::<Vec<_>>(), vec![i as i64 + 1], "{name}: its reading");
    }
    let named = storage.streams_named(&["s1", "s1202", "nope"]).await.unwrap();
    let mut found: Vec<&str> = named.iter().map(|r| r.name.as_str()).collect();
    found.sort_unstable();
    assert_eq!(found, vec!["s1", "s1202"], "looked up by name, the unknown one left out");
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn many_streams_created_in_one_commit_sqlite() {
    many_streams_created_in_one_commit(Backend::Sqlite).await;
}

#[tokio::test]
async fn many_streams_created_in_one_commit_postgres() {
    many_streams_created_in_one_commit(Backend::Postgres).await;
}

/// A database written before migration 0004 keeps its streams' scoring states.
#[tokio::test]
async fn snapshots_survive_their_migration() {
    let Some((url, _dir)) = fresh_database(Backend::Sqlite).await else { return };
    {
        let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc")).await.unwrap();
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations = Cow::Owned(before.migrations.iter().filter(|m| m.version < 4).cloned().collect());
        before.run(&pool).await.unwrap();
        sqlx::query(
            "INSERT INTO streams (name, channels, model, sensitivity, warmup, auto_train, created_at, last_ts,
                readings_count, snapshot) VALUES ('old', 1, 'default', 0.5, 10, 0, 0, 99, 3, '{\"kept\":true}'),
                ('bare', 1, 'default', 0.5, 10, 0, 0, NULL, 0, NULL)",
        )
        .execute(&pool)
        .await
        .unwrap();
        pool.close().await;
    }
    let storage = Storage::connect(&url).await.expect("migrates");
    let old = storage.stream("old").await.unwrap().unwrap();
    assert_eq!(old.snapshot.as_deref(), Some("{\"kept\":true}"));
    assert_eq!((old.last_ts, old.readings_count), (Some(99), 3));
    assert_eq!(storage.stream("bare").await.unwrap().unwrap().snapshot, None);
}
