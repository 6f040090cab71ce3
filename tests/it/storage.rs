//! The storage layer on both backends: readings committed through the writer read back in
//! order wherever they are kept (SQLite's append-only log or the clustered table), before and
//! after the log is moved; scoring states in their own table; the migration that moved them.
use std::borrow::Cow;

use tsad::metrics::Metrics;
use tsad::scoring::Baseline;
use tsad::storage::{
    AnomalyQuery, ChannelValues, EventRow, Expired, NewStream, ReadingRow, Storage, StreamConfig, StreamUpdate,
    WriteBatch, Writer,
};

use crate::app::{fresh_database, Backend};

fn config() -> StreamConfig {
    StreamConfig {
        channels: 1,
        model: "default".into(),
        sensitivity: 0.5,
        warmup: 10,
        auto_train: false,
        baseline: Baseline::Forecast,
        retention: None,
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
            // A stream's first batch; a test that writes a state after other batches says so.
            readings_count: readings.len() as i64,
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
    let mut run = batch(a, (21..=60).map(reading).collect(), Some("{\"state\":1}"));
    run.update.readings_count = 60;
    writer.commit(vec![run]).await.unwrap();
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

/// Every field of a reading and of an event reads back as written, in both of the writer's
/// ways to the tables (PostgreSQL's binary `COPY`, SQLite's multi-row `INSERT`s; a long run
/// and single readings): extreme floats (on PostgreSQL bit for bit, signed zero included),
/// infinite bounds, flags, multichannel values, an event opened and then closed.
async fn every_field_round_trips(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let id = storage.put_stream("m", &StreamConfig { channels: 2, ..config() }, 0).await.expect("stream").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    let odd = [0.1, -0.0, f64::MIN_POSITIVE, 1e300, -1e-300, 5e-324, f64::MAX, 123456.789];
    let readings: Vec<ReadingRow> = (0..40i64)
        .map(|i| {
            let x = odd[i as usize % odd.len()];
            ReadingRow {
                ts: 1_767_225_600_000 + i,
                value: x,
                expected: -x,
                lower: if i % 5 == 0 { f64::NEG_INFINITY } else { x / 3.0 },
                upper: if i % 5 == 0 { f64::INFINITY } else { x * 0.75 },
                score: (i as f64 / 40.0).min(1.0),
                anomaly: i % 3 == 0,
                channels: (i % 4 != 1).then(|| ChannelValues {
                    values: vec![x, i as f64],
                    expected: vec![-x, 0.5],
                    lower: vec![0.0, -1.25],
                    upper: vec![1e-10, 2.0],
                }),
            }
        })
        .collect();
    let event = |open: bool| EventRow {
        start_ts: readings[3].ts,
        end_ts: readings[if open { 4 } else { 9 }].ts,
        peak_ts: readings[4].ts,
        peak_score: 0.999,
        actual: vec![1e300, -0.0],
        expected: vec![0.1, 2.5],
        model: "default".into(),
        model_version: "v1 \"quoted\"".into(),
        open,
    };
    let mut long = batch(id, readings[..32].to_vec(), None);
    long.events = vec![event(true)];
    long.update.anomalies_added = 1;
    writer.commit(vec![long]).await.expect("a long run");
    for (i, r) in readings[32..].iter().enumerate() {
        let mut one = batch(id, vec![r.clone()], None);
        one.update.readings_count = 33 + i as i64;
        if i == 0 {
            one.events = vec![event(false)];
        }
        writer.commit(vec![one]).await.expect("a single reading");
    }
    let got = storage.readings(id, None, None, None, 100).await.unwrap();
    assert_eq!(got.len(), readings.len());
    for (got, want) in got.iter().zip(&readings) {
        assert_eq!(got, want, "reading at {}", want.ts);
        // SQLite stores an integral REAL as an integer, so -0.0 reads back as 0.0 there.
        if backend == Backend::Postgres {
            assert_eq!(got.value.to_bits(), want.value.to_bits(), "the value's bits (signed zero) at {}", want.ts);
        }
    }
    let query = tsad::storage::AnomalyQuery { stream_id: Some(id), limit: 10, ..Default::default() };
    let events = storage.anomalies(&query).await.unwrap();
    assert_eq!(events.len(), 1, "one event, updated in place");
    assert_eq!(events[0].event, event(false), "the event as last written");
    let record = storage.stream("m").await.unwrap().unwrap();
    assert_eq!((record.readings_count, record.anomalies_count), (40, 1), "bookkeeping");
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn every_field_round_trips_sqlite() {
    every_field_round_trips(Backend::Sqlite).await;
}

#[tokio::test]
async fn every_field_round_trips_postgres() {
    every_field_round_trips(Backend::Postgres).await;
}

/// Readings of a stream id that does not exist are refused and nothing of their commit is
/// stored (SQLite: the foreign key; PostgreSQL: the writer's check, migration 0006), while a
/// request committed beside them is stored; a deleted stream's id is refused the same way.
async fn readings_of_a_missing_stream_are_refused(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let a = storage.put_stream("a", &config(), 0).await.expect("stream a").id;
    let gone = storage.put_stream("gone", &config(), 0).await.expect("stream gone").id;
    assert!(storage.delete_stream(gone).await.unwrap());
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    for missing in [a + 1000, gone] {
        let (good, bad) = tokio::join!(
            writer.commit(vec![batch(a, (1..=40).map(|ts| reading(ts + missing * 100)).collect(), None)]),
            writer.commit(vec![batch(missing, (1..=40).map(reading).collect(), None)]),
        );
        good.expect("the other request commits");
        let err = bad.expect_err("readings of a missing stream");
        assert!(
            err.to_string().contains("FOREIGN KEY")
                || err.to_string().contains("1 of the 1 streams of a commit do not exist"),
            "{err}"
        );
        assert!(storage.readings(missing, None, None, None, 100).await.unwrap().is_empty(), "nothing stored");
    }
    assert_eq!(storage.readings(a, None, None, None, 1000).await.unwrap().len(), 80);
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn readings_of_a_missing_stream_are_refused_sqlite() {
    readings_of_a_missing_stream_are_refused(Backend::Sqlite).await;
}

#[tokio::test]
async fn readings_of_a_missing_stream_are_refused_postgres() {
    readings_of_a_missing_stream_are_refused(Backend::Postgres).await;
}

/// A stream deleted while its readings are being committed leaves none of them behind:
/// each commit lands before the deletion (and is deleted with the stream) or fails after it.
/// Each round starts the deletion after a different number of answered commits.
/// On PostgreSQL, whose readings have no foreign key (migration 0006), this is the writer's
/// check that the streams exist after their readings are inserted against the deletion's lock
/// on `readings` taken before it deletes (migration 0011).
async fn a_stream_deleted_while_its_readings_commit_leaves_none(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let (writer, task) = Writer::spawn(storage.clone(), 64, Metrics::new());
    let (mut landed, mut refused) = (0, 0);
    for round in 0..24u64 {
        let id = storage.put_stream(&format!("r{round}"), &config(), 0).await.expect("stream").id;
        // The deletion starts once `round % 12` commits are answered, while the next one is
        // in flight (the commits go on meanwhile: `join!` polls both).
        let (answered, mut answers) = tokio::sync::watch::channel(0usize);
        let commits = async {
            let mut results = Vec::new();
            for k in 0..12i64 {
                let readings = (k * 50 + 1..=k * 50 + 50).map(reading).collect();
                results.push(writer.commit(vec![batch(id, readings, None)]).await.is_ok());
                answered.send_replace(results.len());
            }
            results
        };
        let delete = async {
            answers.wait_for(|n| *n >= round as usize % 12).await.expect("the commits run");
            storage.delete_stream(id).await.expect("deletes")
        };
        let (results, deleted) = tokio::join!(commits, delete);
        assert!(deleted, "round {round}: the stream existed");
        landed += results.iter().filter(|ok| **ok).count();
        refused += results.iter().filter(|ok| !**ok).count();
        let left = storage.readings(id, None, None, None, 1000).await.unwrap();
        assert!(left.is_empty(), "round {round}: {} readings of the deleted stream left", left.len());
    }
    // Both outcomes happened, or the test did not race anything.
    assert!(landed > 0 && refused > 0, "landed {landed}, refused {refused}");
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn a_stream_deleted_while_its_readings_commit_leaves_none_sqlite() {
    a_stream_deleted_while_its_readings_commit_leaves_none(Backend::Sqlite).await;
}

#[tokio::test]
async fn a_stream_deleted_while_its_readings_commit_leaves_none_postgres() {
    a_stream_deleted_while_its_readings_commit_leaves_none(Backend::Postgres).await;
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

/// PostgreSQL: the writer stores scoring states compressed with LZ4 where the server has it
/// (PostgreSQL compresses a value past 2 KB; its own default, pglz, is slower to write), and
/// they read back as written.
#[tokio::test]
async fn scoring_states_are_compressed_with_lz4_on_postgres() {
    use sqlx::Connection;
    let Some((url, _dir)) = fresh_database(Backend::Postgres).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let id = storage.put_stream("a", &config(), 0).await.expect("stream").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    // A state shaped like a real one: ~5 KB of numbers, compressible.
    let tail: Vec<String> = (0..600).map(|i| format!("{:.4}", f64::from(i % 37) * 0.37)).collect();
    let state = format!("{{\"scorer\":{{\"tail\":[{}]}}}}", tail.join(","));
    writer.commit(vec![batch(id, vec![reading(1)], Some(&state))]).await.expect("commits");
    let record = storage.stream("a").await.expect("reads").expect("stored");
    assert_eq!(record.snapshot.as_deref(), Some(state.as_str()), "the state reads back as written");

    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connects");
    let has_lz4: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression'
            AND 'lz4' = ANY (enumvals))",
    )
    .fetch_one(&mut conn)
    .await
    .expect("reads the server's settings");
    if !has_lz4 {
        eprintln!("SKIPPED: this PostgreSQL server has no LZ4; states keep its default compression");
        return;
    }
    let method: Option<String> =
        sqlx::query_scalar("SELECT pg_column_compression(snapshot) FROM stream_snapshots WHERE stream_id = $1")
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .expect("reads the state's compression");
    assert_eq!(method.as_deref(), Some("lz4"), "the state is compressed with LZ4");
    drop(writer);
    task.await.unwrap();
}

/// The stream row's `(readings_count, last_ts)` as stored, not as reads report them.
async fn stored_counters(conn: &mut sqlx::PgConnection, id: i64) -> (i64, Option<i64>) {
    sqlx::query_as("SELECT readings_count, last_ts FROM streams WHERE id = $1")
        .bind(id)
        .fetch_one(conn)
        .await
        .expect("reads the stream row")
}

/// PostgreSQL updates a stream's row only in the commits that write its scoring state (or
/// add anomalies); between them the row's counters lag, and every read of the stream adds the
/// readings stored after the row's `last_ts`, so the counts reported are exact all along —
/// also after a stop between two state writes (a crash), with nothing to repair.
#[tokio::test]
async fn postgres_stream_rows_count_with_the_states_and_reads_add_the_rest() {
    use sqlx::Connection;
    let Some((url, _dir)) = fresh_database(Backend::Postgres).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let id = storage.put_stream("a", &config(), 0).await.expect("stream a").id;
    let other = storage.put_stream("b", &config(), 0).await.expect("stream b").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connects");
    let reported = |storage: Storage| async move {
        let one = storage.stream("a").await.unwrap().unwrap();
        let named = storage.streams_named(&["a", "b"]).await.unwrap();
        let page = storage.streams_page(None, 10).await.unwrap();
        let all = storage.streams().await.unwrap();
        for (how, record) in [("named", &named[0]), ("a page", &page[0]), ("all", &all[0])] {
            assert_eq!(
                (record.name.as_str(), record.readings_count, record.last_ts),
                ("a", one.readings_count, one.last_ts),
                "{how}"
            );
        }
        let b = storage.stream("b").await.unwrap().unwrap();
        assert_eq!((page[1].name.as_str(), page[1].readings_count), ("b", b.readings_count), "the other stream");
        assert_eq!(named[1].readings_count, b.readings_count, "the other stream, named");
        (one.readings_count, one.last_ts)
    };

    // Small commits (one statement each) and a large one (`COPY`), none writing a state.
    for ts in 1..=5 {
        writer.commit(vec![batch(id, vec![reading(ts)], None)]).await.unwrap();
    }
    let mut run = batch(id, (6..=100).map(reading).collect(), None);
    run.update.readings_count = 100;
    writer.commit(vec![run]).await.unwrap();
    assert_eq!(stored_counters(&mut conn, id).await, (0, None), "the row is not updated without a state");
    assert_eq!(reported(storage.clone()).await, (100, Some(100)), "reads add the readings after the row's");

    // A state written with readings: the row holds them all.
    let mut stated = batch(id, vec![reading(101)], Some("{\"state\":1}"));
    stated.update.readings_count = 101;
    writer.commit(vec![stated]).await.unwrap();
    assert_eq!(stored_counters(&mut conn, id).await, (101, Some(101)), "the row as of its state");
    for ts in 102..=110 {
        writer.commit(vec![batch(id, vec![reading(ts)], None), batch(other, vec![reading(ts)], None)]).await.unwrap();
    }
    assert_eq!(stored_counters(&mut conn, id).await, (101, Some(101)), "the row keeps its state's counts");
    assert_eq!(reported(storage.clone()).await, (110, Some(110)), "reads count the readings since");
    let b = storage.stream("b").await.unwrap().unwrap();
    assert_eq!((b.readings_count, b.last_ts), (9, Some(110)), "a stream whose row was never updated");

    // A new handle on the database, as after a crash: the counts read the same.
    drop(writer);
    task.await.unwrap();
    let reopened = Storage::connect(&url).await.expect("reconnects");
    assert_eq!(reported(reopened).await, (110, Some(110)), "after a restart");
}

/// PostgreSQL: a deletion waits for a commit in flight that has inserted readings (its
/// `ROW EXCLUSIVE` lock on `readings`) and then deletes those readings too; a deletion cut
/// short after its first transaction is finished at the next start (migration 0011).
#[tokio::test]
async fn postgres_deletion_waits_for_readings_in_flight_and_finishes_after_a_stop() {
    use sqlx::Connection;
    let Some((url, _dir)) = fresh_database(Backend::Postgres).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let id = storage.put_stream("a", &config(), 0).await.expect("stream a").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    writer.commit(vec![batch(id, (1..=10).map(reading).collect(), None)]).await.unwrap();

    // A commit in flight: readings inserted, not yet committed.
    let mut inflight = sqlx::PgConnection::connect(&url).await.expect("connects");
    sqlx::query("BEGIN").execute(&mut inflight).await.unwrap();
    sqlx::query("INSERT INTO readings (stream_id, ts, value, expected, lower, upper, score, anomaly) VALUES ($1, 11, 0, 0, 0, 0, 0, 0)")
        .bind(id)
        .execute(&mut inflight)
        .await
        .unwrap();
    let deletion = tokio::spawn({
        let storage = storage.clone();
        async move { storage.delete_stream(id).await }
    });
    // Until the server shows a session of this database waiting for a lock: the deletion's.
    let waiting = async {
        loop {
            assert!(!deletion.is_finished(), "the deletion waits for the commit in flight");
            let blocked: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut inflight)
            .await
            .expect("reads the server's sessions");
            if blocked > 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), waiting)
        .await
        .expect("the deletion is seen waiting for a lock");
    assert!(!deletion.is_finished(), "the deletion waits for the commit in flight");
    sqlx::query("COMMIT").execute(&mut inflight).await.unwrap();
    assert!(deletion.await.unwrap().expect("deletes"), "the stream existed");
    assert!(storage.stream("a").await.unwrap().is_none(), "the stream is gone");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM readings WHERE stream_id = $1")
        .bind(id)
        .fetch_one(&mut inflight)
        .await
        .unwrap();
    assert_eq!(left, 0, "no readings left, the one in flight included");
    let err = writer.commit(vec![batch(id, vec![reading(12)], None)]).await.expect_err("a commit after it");
    assert!(err.to_string().contains("1 of the 1 streams of a commit do not exist"), "{err}");

    // A deletion stopped after its first transaction: the row gone, the readings left.
    let b = storage.put_stream("b", &config(), 0).await.expect("stream b").id;
    writer.commit(vec![batch(b, (1..=70).map(reading).collect(), None)]).await.unwrap();
    for sql in ["DELETE FROM streams WHERE id = $1", "INSERT INTO streams_deleted (id) VALUES ($1)"] {
        sqlx::query(sql).bind(b).execute(&mut inflight).await.unwrap();
    }
    drop(writer);
    task.await.unwrap();
    let reopened = Storage::connect(&url).await.expect("reconnects");
    let left: (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM readings WHERE stream_id = $1), (SELECT count(*) FROM streams_deleted)",
    )
    .bind(b)
    .fetch_one(&mut inflight)
    .await
    .unwrap();
    assert_eq!(left, (0, 0), "the start finished the deletion");
    assert!(reopened.stream("b").await.unwrap().is_none());
}

/// A stream's readings as their times, oldest first.
async fn stored_times(storage: &Storage, id: i64) -> Vec<i64> {
    storage.readings(id, None, None, None, 100_000).await.unwrap().iter().map(|r| r.ts).collect()
}

/// The readings a stream reports stored.
async fn reported(storage: &Storage, name: &str) -> i64 {
    let record = storage.stream(name).await.unwrap().expect("the stream");
    record.readings_count - record.readings_expired
}

/// The retention deletes a stream's readings older than the retention before its newest
/// (on SQLite whole blocks of them), never one at or after its stored scoring state's, keeps
/// its anomaly events, and counts what it deleted, so the readings a stream reports are the
/// readings stored, a stream's readings over several transactions too. A second pass finds
/// nothing to delete.
async fn retention_deletes_old_readings_and_counts_them(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let a = storage.put_stream("a", &config(), 0).await.expect("stream a").id;
    let b = storage.put_stream("b", &config(), 0).await.expect("stream b").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    // a: a run with an anomaly event, lone readings (SQLite's log, moved into blocks), then a
    // run with its scoring state.
    let mut first = batch(a, (1..=40).map(reading).collect(), None);
    first.events = vec![EventRow {
        start_ts: 5,
        end_ts: 6,
        peak_ts: 5,
        peak_score: 0.999,
        actual: vec![1.0],
        expected: vec![0.0],
        model: "default".into(),
        model_version: "1".into(),
        open: false,
    }];
    first.update.anomalies_added = 1;
    writer.commit(vec![first]).await.unwrap();
    for ts in 41..=60 {
        let mut one = batch(a, vec![reading(ts)], None);
        one.update.readings_count = ts;
        writer.commit(vec![one]).await.unwrap();
    }
    let mut last = batch(a, (61..=100).map(reading).collect(), Some("{\"state\":1}"));
    last.update.readings_count = 100;
    writer.commit(vec![last]).await.unwrap();
    // b: its scoring state at 20, readings up to 80.
    writer.commit(vec![batch(b, (1..=20).map(reading).collect(), Some("{\"state\":2}"))]).await.unwrap();
    let mut later = batch(b, (21..=80).map(reading).collect(), None);
    later.update.readings_count = 80;
    writer.commit(vec![later]).await.unwrap();
    // c: 10,000 readings in runs of 8 (SQLite: a block each), its state at the last: more
    // than one transaction of the retention deletes them.
    let c = storage.put_stream("c", &config(), 0).await.expect("stream c").id;
    for k in 0..1_250i64 {
        let mut run = batch(c, (k * 8 + 1..=k * 8 + 8).map(reading).collect(), (k == 1_249).then_some("{}"));
        run.update.readings_count = k * 8 + 8;
        writer.commit(vec![run]).await.unwrap();
    }
    // The writer moves SQLite's log as it stops; a new one takes the retention's deletions.
    drop(writer);
    task.await.unwrap();
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    assert_eq!((reported(&storage, "a").await, reported(&storage, "b").await), (100, 80));
    assert_eq!(reported(&storage, "c").await, 10_000);

    let expired = storage.expire_readings(Some(30), &writer).await.expect("expires");
    let sqlite = backend == Backend::Sqlite;
    // a: before 70 goes; SQLite keeps the block that holds 61..=100.
    let kept_a = stored_times(&storage, a).await;
    assert_eq!(kept_a, (if sqlite { 61 } else { 70 }..=100).collect::<Vec<_>>());
    // b: 50 would go by the retention alone; its state is at 20.
    let kept_b = stored_times(&storage, b).await;
    assert_eq!(kept_b, (if sqlite { 1 } else { 20 }..=80).collect::<Vec<_>>());
    // c: before 9,970 goes; SQLite keeps the block of 9,969..=9,976.
    let kept_c = stored_times(&storage, c).await;
    assert_eq!(kept_c, (if sqlite { 9_969 } else { 9_970 }..=10_000).collect::<Vec<_>>());
    assert_eq!(reported(&storage, "c").await, kept_c.len() as i64, "c's count is its readings stored");
    let deleted = 10_180 - kept_a.len() - kept_b.len() - kept_c.len();
    assert_eq!(expired.readings, deleted as u64);
    assert_eq!(expired.streams, if sqlite { 2 } else { 3 });
    assert_eq!(reported(&storage, "a").await, kept_a.len() as i64, "a's count is its readings stored");
    assert_eq!(reported(&storage, "b").await, kept_b.len() as i64, "b's count is its readings stored");
    let query = AnomalyQuery { stream_id: Some(a), from: None, to: None, min_score: None, after: None, limit: 10 };
    assert_eq!(storage.anomalies(&query).await.unwrap().len(), 1, "the anomaly event is kept");
    assert_eq!(storage.expire_readings(Some(30), &writer).await.expect("expires"), Expired::default(), "nothing more");
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn retention_deletes_old_readings_and_counts_them_sqlite() {
    retention_deletes_old_readings_and_counts_them(Backend::Sqlite).await;
}

#[tokio::test]
async fn retention_deletes_old_readings_and_counts_them_postgres() {
    retention_deletes_old_readings_and_counts_them(Backend::Postgres).await;
}

/// A stream's own retention (`StreamConfig::retention`) goes before the service's, whether
/// the service has one or not; a stream without one keeps every reading while the service
/// has none; a stream's own may be longer than the service's.
async fn streams_keep_their_own_retention(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let own = |ms| StreamConfig { retention: Some(std::time::Duration::from_millis(ms)), ..config() };
    let a = storage.put_stream("a", &own(40), 0).await.expect("stream a").id;
    let b = storage.put_stream("b", &config(), 0).await.expect("stream b").id;
    let c = storage.put_stream("c", &own(1_000), 0).await.expect("stream c").id;
    assert_eq!(storage.shortest_stream_retention().await.unwrap(), Some(40));
    assert_eq!(storage.stream("a").await.unwrap().expect("a").config, own(40), "read back as put");
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    // Each stream: 1..=100 in runs of 10 (SQLite: a block each), its state with the last.
    for id in [a, b, c] {
        for k in 0..10i64 {
            let mut run = batch(id, (k * 10 + 1..=k * 10 + 10).map(reading).collect(), (k == 9).then_some("{}"));
            run.update.readings_count = k * 10 + 10;
            writer.commit(vec![run]).await.unwrap();
        }
    }
    let sqlite = backend == Backend::Sqlite;
    // The service without a retention: only a's own, 40 before its newest (100).
    let expired = storage.expire_readings(None, &writer).await.expect("a pass");
    let kept_a = stored_times(&storage, a).await;
    assert_eq!(kept_a, (if sqlite { 51 } else { 60 }..=100).collect::<Vec<_>>());
    assert_eq!((expired.streams, expired.readings), (1, 100 - kept_a.len() as u64));
    assert_eq!(stored_times(&storage, b).await.len(), 100, "b has no retention of its own");
    // The service's 20: b goes by it; a keeps its own 40, c its own 1,000.
    let expired = storage.expire_readings(Some(20), &writer).await.expect("a pass");
    let kept_b = stored_times(&storage, b).await;
    assert_eq!(kept_b, (if sqlite { 71 } else { 80 }..=100).collect::<Vec<_>>());
    assert_eq!((expired.streams, expired.readings), (1, 100 - kept_b.len() as u64));
    assert_eq!(stored_times(&storage, a).await, kept_a, "a keeps its own 40");
    assert_eq!(stored_times(&storage, c).await.len(), 100, "c keeps its own 1,000");
    for (name, kept) in [("a", kept_a.len()), ("b", kept_b.len()), ("c", 100)] {
        assert_eq!(reported(&storage, name).await, kept as i64, "{name}'s count is its readings stored");
    }
    // A stream's own retention put back to the service's.
    storage.put_stream("c", &config(), 0).await.expect("c again");
    assert_eq!(storage.shortest_stream_retention().await.unwrap(), Some(40));
    storage.expire_readings(Some(20), &writer).await.expect("a pass");
    assert_eq!(stored_times(&storage, c).await, kept_b, "c goes by the service's now");
    drop(writer);
    task.await.unwrap();
}

#[tokio::test]
async fn streams_keep_their_own_retention_sqlite() {
    streams_keep_their_own_retention(Backend::Sqlite).await;
}

#[tokio::test]
async fn streams_keep_their_own_retention_postgres() {
    streams_keep_their_own_retention(Backend::Postgres).await;
}

/// The retention's passes beside a writer committing a stream's readings, a scoring state
/// every tenth commit: every commit lands, the readings from the retention before the newest
/// on are all kept, and the stream's count is its readings stored.
async fn retention_runs_beside_the_writer(backend: Backend) {
    let Some((url, _dir)) = fresh_database(backend).await else { return };
    let storage = Storage::connect(&url).await.expect("connects");
    let id = storage.put_stream("s", &config(), 0).await.expect("stream").id;
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    let (done, mut finished) = tokio::sync::watch::channel(false);
    let commits = async {
        for k in 0..300i64 {
            // Runs of 1 to 10 readings: SQLite's log and its blocks both.
            let n = k % 10 + 1;
            let readings: Vec<ReadingRow> = (k * 10 + 1..=k * 10 + n).map(reading).collect();
            let mut next = batch(id, readings, (k % 10 == 9).then_some("{\"state\":3}"));
            next.update.readings_count = (0..=k).map(|j| j % 10 + 1).sum();
            writer.commit(vec![next]).await.expect("every commit lands");
        }
        done.send_replace(true);
    };
    let passes = async {
        let mut passes = 0;
        while !*finished.borrow_and_update() {
            storage.expire_readings(Some(500), &writer).await.expect("a pass");
            passes += 1;
        }
        passes
    };
    let ((), passes) = tokio::join!(commits, passes);
    drop(writer);
    task.await.unwrap();
    let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
    storage.expire_readings(Some(500), &writer).await.expect("a last pass");
    drop(writer);
    task.await.unwrap();
    let kept = stored_times(&storage, id).await;
    let expected: Vec<i64> = (0..300i64).flat_map(|k| k * 10 + 1..=k * 10 + k % 10 + 1).collect();
    // The state was last written with the commit of 2,991..=3,000.
    let newest = 2_991 + 9;
    assert!(kept.len() < expected.len(), "old readings went ({passes} passes)");
    let from = expected.iter().position(|&ts| ts >= newest - 500).unwrap();
    assert!(kept.ends_with(&expected[from..]), "every reading from {} on is kept", newest - 500);
    assert_eq!(kept, expected[expected.len() - kept.len()..], "the kept readings are the newest");
    assert_eq!(reported(&storage, "s").await, kept.len() as i64, "the count is the readings stored");
}

#[tokio::test]
async fn retention_runs_beside_the_writer_sqlite() {
    retention_runs_beside_the_writer(Backend::Sqlite).await;
}

#[tokio::test]
async fn retention_runs_beside_the_writer_postgres() {
    retention_runs_beside_the_writer(Backend::Postgres).await;
}
