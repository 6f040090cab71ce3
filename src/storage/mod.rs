//! All SQL: streams, readings with their verdicts, anomaly events and feedback, on SQLite
//! (embedded default, WAL) or PostgreSQL through sqlx's `Any` driver. The same statements
//! serve both backends (`$n` placeholders work in SQLite too); migrations differ per backend
//! (`migrations/sqlite`, `migrations/postgres`). Timestamps are Unix milliseconds.
//!
//! Writes of readings go through [`writer`], which commits many requests in one
//! transaction; this module knows nothing about HTTP or models. On SQLite a stream's
//! readings live in three places, each reading in one (but for a log move's overlap): the
//! blocks that runs of 4 or more readings committed together, and the log's moves, pack them
//! into (`reading_blocks`, [`blocks`]), the log of short runs awaiting their move
//! (`readings_log`, [`log`]), and `readings` (a row each, clustered by stream and time, where
//! the log was moved before blocks); reads take all three in one snapshot.
mod blocks;
mod log;
mod retention;
pub mod writer;

pub(crate) use log::{move_log, LogMove, Mirror, MirroredMove};

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::scoring::Baseline;

pub use retention::Expired;
pub use writer::{NewStream, StreamUpdate, WriteBatch, Writer};

/// Storage failures. The API maps them to 503 (unavailable) or 500.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the storage writer has stopped")]
    WriterGone,
    /// A commit failed because the database could not be reached (it may come back).
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("the storage writer queue is full")]
    WriterFull,
}

impl StorageError {
    /// Whether the failure is the database being unreachable rather than a bad request or bug.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StorageError::Database(
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
            ) | StorageError::WriterGone
                | StorageError::Unavailable(_)
        )
    }
}

/// The current time in Unix milliseconds, the unit of every stored timestamp.
pub fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Which database we talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A stream's configuration as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    pub channels: usize,
    pub model: String,
    pub sensitivity: f64,
    pub warmup: u64,
    pub auto_train: bool,
    /// What readings are judged against besides the forecast.
    pub baseline: Baseline,
    /// How long the stream's raw readings are kept before its newest; `None`: the service's
    /// retention (`--retention`), which may be none ([`Storage::expire_readings`]).
    #[serde(default)]
    pub retention: Option<Duration>,
}

/// A stream row.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord {
    pub id: i64,
    pub name: String,
    pub config: StreamConfig,
    pub created_at: i64,
    pub last_ts: Option<i64>,
    /// Readings the stream has taken: the count its commits go on from.
    pub readings_count: i64,
    /// Of those, the readings the retention has deleted ([`Storage::expire_readings`]).
    pub readings_expired: i64,
    pub anomalies_count: i64,
    /// The scoring state after the last committed reading (JSON), if any.
    pub snapshot: Option<String>,
}

/// A stored reading with its verdict. Multichannel streams keep all channels in `channels`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingRow {
    pub ts: i64,
    pub value: f64,
    pub expected: f64,
    pub lower: f64,
    pub upper: f64,
    pub score: f64,
    pub anomaly: bool,
    pub channels: Option<ChannelValues>,
}

/// Per-channel values of a multichannel reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChannelValues {
    pub values: Vec<f64>,
    pub expected: Vec<f64>,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

/// An anomaly event as written by a stream (identified by stream and start).
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub start_ts: i64,
    pub end_ts: i64,
    pub peak_ts: i64,
    pub peak_score: f64,
    pub actual: Vec<f64>,
    pub expected: Vec<f64>,
    pub model: String,
    pub model_version: String,
    pub open: bool,
}

/// An anomaly event as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalyRecord {
    pub id: i64,
    pub stream: String,
    pub event: EventRow,
    pub feedback: Option<String>,
}

/// Filter and page of an anomaly query (newest first).
#[derive(Debug, Clone, Default)]
pub struct AnomalyQuery {
    pub stream_id: Option<i64>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub min_score: Option<f64>,
    /// Continue after this (start_ts, id).
    pub after: Option<(i64, i64)>,
    pub limit: i64,
}

/// Stream names looked up by one query of [`Storage::streams_named`] (SQLite allows 32,766
/// parameters a statement, PostgreSQL 65,535).
pub const NAMES_PER_QUERY: usize = 500;

/// The connection pool and what it points at.
#[derive(Debug, Clone)]
pub struct Storage {
    pool: AnyPool,
    /// On PostgreSQL (and only there), a pool of the driver's own for pages of readings,
    /// opened on first use: through `Any` every row is first copied into an `AnyRow`, which
    /// took a fifth of the process's time reading pages of 1,000 (docs/PERFORMANCE.md,
    /// "Pages of readings on PostgreSQL without `Any`").
    pg_reads: Option<sqlx::PgPool>,
    backend: Backend,
    /// Where it points, for [`Storage::own_connection`].
    url: String,
}

/// The columns of a stream row [`Storage::stream_from_row`] reads (but its state), of
/// `streams s`: a macro, so that queries can `concat!` it.
macro_rules! stream_row {
    () => {
        "s.id, s.name, s.channels, s.model, s.sensitivity, s.warmup, s.auto_train, s.baseline, s.retention_ms, \
         s.created_at, s.last_ts, s.readings_count, s.readings_expired, s.anomalies_count"
    };
    // PostgreSQL: the row's counters hold the readings up to its `last_ts`, written with the
    // stream's scoring state (`writer::StreamUpdate`); the stored readings after it are added
    // here (an index range of `readings`: the stream's readings since its state, ~10 s of
    // them while it runs, at least 100 and at most 10,000). Needs `stream_tail!()` in the query's `FROM`.
    (counted) => {
        "s.id, s.name, s.channels, s.model, s.sensitivity, s.warmup, s.auto_train, s.baseline, s.retention_ms, \
         s.created_at, COALESCE(t.last_ts, s.last_ts) AS last_ts, s.readings_count + t.n AS readings_count, \
         s.readings_expired, s.anomalies_count"
    };
}

/// PostgreSQL: a stream's readings after its row's `last_ts` (`t.n`, `t.last_ts`), for
/// `stream_row!(counted)`.
macro_rules! stream_tail {
    () => {
        " CROSS JOIN LATERAL (SELECT count(*) AS n, max(r.ts) AS last_ts FROM readings r \
         WHERE r.stream_id = s.id AND r.ts > COALESCE(s.last_ts, CAST(-9223372036854775808 AS BIGINT))) t"
    };
}

/// The columns a stream row is written with, in the order of [`stream_params`].
pub(crate) const STREAM_COLUMNS: &str =
    "(name, channels, model, sensitivity, warmup, auto_train, baseline, retention_ms, created_at)";
/// How many [`STREAM_COLUMNS`] there are.
pub(crate) const STREAM_PARAMS: usize = 9;

/// A stream row's [`STREAM_COLUMNS`].
pub(crate) fn stream_params(name: &str, config: &StreamConfig, created_at: i64) -> [Param; STREAM_PARAMS] {
    [
        Param::Text(name.to_string()),
        Param::Int(config.channels as i64),
        Param::Text(config.model.clone()),
        Param::Float(config.sensitivity),
        Param::Int(config.warmup as i64),
        Param::Int(i64::from(config.auto_train)),
        Param::Text(config.baseline.as_str().to_string()),
        Param::Int(config.retention.map_or(0, |keep| i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))),
        Param::Int(created_at),
    ]
}

/// A statement parameter, bound by whichever driver runs the statement: sqlx's `Any`, or
/// PostgreSQL's own in the writer ([`writer`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Param {
    Int(i64),
    Float(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Param {
    /// Binds the parameter to `q`.
    pub(crate) fn bind<'q, DB: sqlx::Database>(
        self,
        q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    ) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
    where
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        match self {
            Param::Int(v) => q.bind(v),
            Param::Float(v) => q.bind(v),
            Param::Text(v) => q.bind(v),
            Param::Blob(v) => q.bind(v),
        }
    }
}

impl Storage {
    /// Connects (creating a SQLite file if missing) and applies the migrations.
    pub async fn connect(url: &str) -> Result<Storage, StorageError> {
        let storage = Self::open(url, None).await?;
        match storage.backend {
            Backend::Sqlite => {
                sqlx::migrate!("./migrations/sqlite").run(&storage.pool).await?;
                // Reads are cheapest with the log empty; it is moved at every start.
                storage.compact_log().await?;
            }
            Backend::Postgres => {
                sqlx::migrate!("./migrations/postgres").run(&storage.pool).await?;
                // Deletions cut short after their first transaction.
                let pending = sqlx::query("SELECT id FROM streams_deleted").fetch_all(&storage.pool).await?;
                for row in pending {
                    storage.delete_readings_of_deleted(row.try_get("id")?).await?;
                }
            }
        }
        Ok(storage)
    }

    /// Another handle on the same database with a pool of its own of one connection (the
    /// writer's, opened on the writer's thread), the migrations already applied.
    pub async fn own_connection(&self) -> Result<Storage, StorageError> {
        Self::open(&self.url, Some(1)).await
    }

    async fn open(url: &str, connections: Option<u32>) -> Result<Storage, StorageError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                format!("{url}{}mode=rwc", if url.contains('?') { "&" } else { "?" })
            }
            _ => url.to_string(),
        };
        let options = AnyPoolOptions::new()
            .max_connections(connections.unwrap_or(if backend == Backend::Sqlite { 4 } else { 8 }))
            .acquire_timeout(std::time::Duration::from_secs(5))
            // A SQLite connection is a file handle that cannot drop: testing it with a query
            // at every checkout only adds a round trip to its worker thread to every commit.
            .test_before_acquire(backend != Backend::Sqlite)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; FULL makes a commit durable
                        // before the 2xx; busy_timeout waits out the other connections. A
                        // commit of readings for many streams dirties a leaf page per stream,
                        // so the page cache (64 MiB), memory-mapped reads (no copy through
                        // read(2)) and checkpoints every 40 MB of WAL rather than 4 MB cut
                        // the writer's page traffic.
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 5000",
                            "PRAGMA cache_size = -65536",
                            "PRAGMA mmap_size = 1073741824",
                            "PRAGMA wal_autocheckpoint = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            });
        let pool = options.connect(&url).await?;
        // Opened on first use: a handle that reads no pages (the writer's) opens none.
        let pg_reads = match backend {
            Backend::Postgres => Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(std::time::Duration::from_secs(5))
                    .connect_lazy(&url)?,
            ),
            Backend::Sqlite => None,
        };
        Ok(Storage { pool, pg_reads, backend, url })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A trivial query: is the database reachable?
    pub async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Creates the stream or replaces its configuration.
    pub async fn put_stream(
        &self,
        name: &str,
        config: &StreamConfig,
        now_ms: i64,
    ) -> Result<StreamRecord, StorageError> {
        let sql = format!(
            "INSERT INTO streams {STREAM_COLUMNS} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (name) DO UPDATE SET channels = excluded.channels, model = excluded.model,
                sensitivity = excluded.sensitivity, warmup = excluded.warmup, auto_train = excluded.auto_train,
                baseline = excluded.baseline, retention_ms = excluded.retention_ms"
        );
        let query = stream_params(name, config, now_ms).into_iter().fold(sqlx::query(&sql), |q, p| p.bind(q));
        query.execute(&self.pool).await?;
        self.stream(name).await?.ok_or_else(|| StorageError::Corrupt(format!("stream {name} vanished")))
    }

    /// The stream row with its scoring state (kept in a table of its own: migration 0004).
    fn stream_select(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => concat!(
                "SELECT ",
                stream_row!(),
                ", ss.snapshot FROM streams s LEFT JOIN stream_snapshots ss ON ss.stream_id = s.id"
            ),
            Backend::Postgres => concat!(
                "SELECT ",
                stream_row!(counted),
                ", ss.snapshot FROM streams s LEFT JOIN stream_snapshots ss ON ss.stream_id = s.id",
                stream_tail!()
            ),
        }
    }

    fn stream_from_row(row: &AnyRow) -> Result<StreamRecord, StorageError> {
        Ok(StreamRecord {
            id: row.try_get("id")?,
            name: row.try_get("name")?,
            config: StreamConfig {
                channels: row.try_get::<i64, _>("channels")? as usize,
                model: row.try_get("model")?,
                sensitivity: row.try_get("sensitivity")?,
                warmup: row.try_get::<i64, _>("warmup")? as u64,
                auto_train: row.try_get::<i64, _>("auto_train")? != 0,
                baseline: {
                    let name: String = row.try_get("baseline")?;
                    Baseline::parse(&name)
                        .ok_or_else(|| StorageError::Corrupt(format!("unknown baseline {name:?} in streams")))?
                },
                retention: match row.try_get::<i64, _>("retention_ms")? {
                    0 => None,
                    ms => Some(Duration::from_millis(
                        u64::try_from(ms)
                            .map_err(|_| StorageError::Corrupt(format!("negative retention_ms {ms} in streams")))?,
                    )),
                },
            },
            created_at: row.try_get("created_at")?,
            last_ts: row.try_get("last_ts")?,
            readings_count: row.try_get("readings_count")?,
            readings_expired: row.try_get("readings_expired")?,
            anomalies_count: row.try_get("anomalies_count")?,
            snapshot: row.try_get("snapshot")?,
        })
    }

    /// One stream by name.
    pub async fn stream(&self, name: &str) -> Result<Option<StreamRecord>, StorageError> {
        let sql = format!("{} WHERE s.name = $1", self.stream_select());
        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.pool).await?;
        row.as_ref().map(Self::stream_from_row).transpose()
    }

    /// A stream's id by name, without its row or scoring state: all a page of its readings
    /// or anomalies needs.
    pub async fn stream_id(&self, name: &str) -> Result<Option<i64>, StorageError> {
        let row = sqlx::query("SELECT id FROM streams WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get::<i64, _>("id")).transpose()?)
    }

    /// The streams of `names` that exist, in one query per [`NAMES_PER_QUERY`] names.
    pub async fn streams_named(&self, names: &[&str]) -> Result<Vec<StreamRecord>, StorageError> {
        let mut out = Vec::new();
        for chunk in names.chunks(NAMES_PER_QUERY) {
            let sql = format!(
                "{} WHERE s.name IN {}",
                self.stream_select(),
                writer::values_sql(self.backend, 1, chunk.len())
            );
            let mut query = sqlx::query(&sql);
            for name in chunk {
                query = query.bind(*name);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(Self::stream_from_row(&row)?);
            }
        }
        Ok(out)
    }

    /// Up to `limit` streams by name, those after `after` (exclusive), without their scoring
    /// states: a list of a million streams reads the rows alone, a page at a time.
    pub async fn streams_page(&self, after: Option<&str>, limit: i64) -> Result<Vec<StreamRecord>, StorageError> {
        let sql = match self.backend {
            Backend::Sqlite => concat!(
                "SELECT ",
                stream_row!(),
                ", CAST(NULL AS TEXT) AS snapshot FROM streams s WHERE s.name > $1 ORDER BY s.name LIMIT $2"
            ),
            // The page's rows first, then their readings' tails: not a tail for every row
            // the scan passes.
            Backend::Postgres => concat!(
                "SELECT ",
                stream_row!(counted),
                ", CAST(NULL AS TEXT) AS snapshot FROM (SELECT * FROM streams WHERE name > $1 ORDER BY name LIMIT $2) s",
                stream_tail!(),
                " ORDER BY s.name"
            ),
        };
        // Stream names are never empty (`api::wire::stream_name`): every one sorts after "".
        let rows = sqlx::query(sql).bind(after.unwrap_or("")).bind(limit).fetch_all(&self.pool).await?;
        rows.iter().map(Self::stream_from_row).collect()
    }

    /// All streams, by name, with their scoring states.
    pub async fn streams(&self) -> Result<Vec<StreamRecord>, StorageError> {
        let sql = format!("{} ORDER BY s.name", self.stream_select());
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(Self::stream_from_row).collect()
    }

    /// Deletes a stream with its readings, anomalies and feedback. False if it did not exist.
    pub async fn delete_stream(&self, id: i64) -> Result<bool, StorageError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            // PostgreSQL's readings have no foreign key (migration 0006), and the writer checks
            // that a commit's streams exist after it has inserted their readings (holding
            // `readings` in `ROW EXCLUSIVE` mode). This lock waits for the commits in flight,
            // whose readings the second transaction deletes, and makes those after it find the
            // stream gone (migration 0011); the row's lock waits for a commit that writes the
            // stream's state or anomalies. Only the first transaction holds them: a stream's
            // readings, which may be millions, are deleted after, not with every commit waiting.
            sqlx::query("LOCK TABLE readings IN SHARE ROW EXCLUSIVE MODE").execute(&mut *tx).await?;
            sqlx::query("SELECT id FROM streams WHERE id = $1 FOR UPDATE").bind(id).execute(&mut *tx).await?;
            for sql in [
                "DELETE FROM feedback WHERE anomaly_id IN (SELECT id FROM anomalies WHERE stream_id = $1)",
                "DELETE FROM anomalies WHERE stream_id = $1",
                "DELETE FROM stream_snapshots WHERE stream_id = $1",
            ] {
                sqlx::query(sql).bind(id).execute(&mut *tx).await?;
            }
            let deleted = sqlx::query("DELETE FROM streams WHERE id = $1").bind(id).execute(&mut *tx).await?;
            if deleted.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("INSERT INTO streams_deleted (id) VALUES ($1)").bind(id).execute(&mut *tx).await?;
            tx.commit().await?;
            if let Err(e) = self.delete_readings_of_deleted(id).await {
                // The stream is gone; its readings are finished at the next start.
                tracing::warn!(stream_id = id, error = %e, "a deleted stream's readings were not deleted yet");
            }
            return Ok(true);
        }
        sqlx::query("DELETE FROM feedback WHERE anomaly_id IN (SELECT id FROM anomalies WHERE stream_id = $1)")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM anomalies WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM readings WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
        if self.backend == Backend::Sqlite {
            sqlx::query("DELETE FROM readings_log WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
            sqlx::query("DELETE FROM reading_blocks WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM stream_snapshots WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
        let deleted = sqlx::query("DELETE FROM streams WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// PostgreSQL: the readings of a stream whose row [`Storage::delete_stream`] deleted, and
    /// the record of that deletion (migration 0011).
    async fn delete_readings_of_deleted(&self, id: i64) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM readings WHERE stream_id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM streams_deleted WHERE id = $1").bind(id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Readings of a stream with `from ≤ ts < to`, ascending, starting after `after`.
    pub async fn readings(
        &self,
        stream_id: i64,
        from: Option<i64>,
        to: Option<i64>,
        after: Option<i64>,
        limit: i64,
    ) -> Result<Vec<ReadingRow>, StorageError> {
        let lower = from.unwrap_or(i64::MIN).max(after.map_or(i64::MIN, |a| a.saturating_add(1)));
        let upper = to.unwrap_or(i64::MAX);
        let (sql, params) = match self.backend {
            // The first `limit` of each table hold the first `limit` of both. A reading in
            // the log and in a block (a log move between its copy and its trim: [`LogMove`])
            // is the same in each, and the merge below keeps one.
            Backend::Sqlite => (
                format!(
                    "SELECT {READING_COLUMNS} FROM (
                        SELECT * FROM (SELECT {READING_COLUMNS} FROM readings
                            WHERE stream_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4)
                        UNION
                        SELECT {READING_COLUMNS} FROM readings_log WHERE stream_id = $5 AND ts >= $6 AND ts < $7
                     ) ORDER BY ts LIMIT $8"
                ),
                vec![stream_id, lower, upper, limit, stream_id, lower, upper, limit],
            ),
            Backend::Postgres => (
                format!(
                    "SELECT {READING_COLUMNS} FROM readings
                     WHERE stream_id = $1 AND ts >= $2 AND ts < $3 ORDER BY ts LIMIT $4"
                ),
                vec![stream_id, lower, upper, limit],
            ),
        };
        if let Some(pg) = &self.pg_reads {
            return fetch_readings_postgres(pg, &sql, &params).await;
        }
        // Both reads in one snapshot: a commit between them could show a block but not the
        // rows logged before it, and a page of readings would skip those.
        let mut tx = self.pool.begin().await?;
        let rows = fetch_readings(&mut tx, &sql, &params).await?;
        // Blocks in time order from the one holding `lower` (by its last reading): every
        // block after it begins in the range, so they are read until `limit` readings are in.
        let blocks = sqlx::query(
            "SELECT data FROM reading_blocks WHERE stream_id = $1 AND last_ts >= $2 AND first_ts < $3 ORDER BY last_ts",
        )
        .bind(stream_id)
        .bind(lower)
        .bind(upper);
        let in_range = |r: &ReadingRow| (lower..upper).contains(&r.ts);
        let packed = fetch_blocks(&mut tx, blocks, limit, in_range).await?;
        tx.commit().await?;
        Ok(merge(rows, packed.into_iter().flatten().collect(), limit, End::First))
    }

    /// The most recent `limit` readings of a stream, oldest first (for re-warming state).
    pub async fn recent_readings(&self, stream_id: i64, limit: i64) -> Result<Vec<ReadingRow>, StorageError> {
        let (sql, params) = match self.backend {
            // `UNION`, as in [`Storage::readings`]: a reading in both tables counts once.
            Backend::Sqlite => (
                format!(
                    "SELECT {READING_COLUMNS} FROM (
                        SELECT {READING_COLUMNS} FROM readings_log WHERE stream_id = $1
                        UNION
                        SELECT * FROM (SELECT {READING_COLUMNS} FROM readings WHERE stream_id = $2
                            ORDER BY ts DESC LIMIT $3)
                     ) ORDER BY ts DESC LIMIT $4"
                ),
                vec![stream_id, stream_id, limit, limit],
            ),
            Backend::Postgres => (
                format!("SELECT {READING_COLUMNS} FROM readings WHERE stream_id = $1 ORDER BY ts DESC LIMIT $2"),
                vec![stream_id, limit],
            ),
        };
        if let Some(pg) = &self.pg_reads {
            let rows = fetch_readings_postgres(pg, &sql, &params).await?;
            return Ok(rows.into_iter().rev().collect());
        }
        // One snapshot, as in [`Storage::readings`].
        let mut tx = self.pool.begin().await?;
        let rows = fetch_readings(&mut tx, &sql, &params).await?;
        let blocks = sqlx::query("SELECT data FROM reading_blocks WHERE stream_id = $1 ORDER BY last_ts DESC");
        let newest = fetch_blocks(&mut tx, blocks.bind(stream_id), limit, |_| true).await?;
        tx.commit().await?;
        let packed = newest.into_iter().rev().flatten().collect();
        Ok(merge(rows.into_iter().rev().collect(), packed, limit, End::Last))
    }

    /// Moves the readings log (SQLite) into blocks, a stream's rows one block between the
    /// blocks it has ([`LogMove`]); returns the readings moved. A no-op on PostgreSQL, which
    /// has no log.
    pub async fn compact_log(&self) -> Result<u64, StorageError> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        move_log(&mut *self.pool.acquire().await?).await
    }

    /// Anomaly events, newest first.
    pub async fn anomalies(&self, q: &AnomalyQuery) -> Result<Vec<AnomalyRecord>, StorageError> {
        let (after_ts, after_id) = q.after.unwrap_or((i64::MAX, i64::MAX));
        let rows = sqlx::query(
            "SELECT a.id, s.name, a.start_ts, a.end_ts, a.peak_ts, a.peak_score, a.actual, a.expected,
                    a.model, a.model_version, a.status,
                    (SELECT f.label FROM feedback f WHERE f.anomaly_id = a.id ORDER BY f.id DESC LIMIT 1) AS feedback
             FROM anomalies a JOIN streams s ON s.id = a.stream_id
             WHERE ($1 < 0 OR a.stream_id = $2)
               AND a.start_ts >= $3 AND a.start_ts < $4 AND a.peak_score >= $5
               AND (a.start_ts < $6 OR (a.start_ts = $7 AND a.id < $8))
             ORDER BY a.start_ts DESC, a.id DESC LIMIT $9",
        )
        .bind(q.stream_id.unwrap_or(-1))
        .bind(q.stream_id.unwrap_or(-1))
        .bind(q.from.unwrap_or(i64::MIN))
        .bind(q.to.unwrap_or(i64::MAX))
        .bind(q.min_score.unwrap_or(f64::MIN))
        .bind(after_ts)
        .bind(after_ts)
        .bind(after_id)
        .bind(q.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(anomaly_from_row).collect()
    }

    /// One anomaly event by id.
    pub async fn anomaly(&self, id: i64) -> Result<Option<AnomalyRecord>, StorageError> {
        let row = sqlx::query(
            "SELECT a.id, s.name, a.start_ts, a.end_ts, a.peak_ts, a.peak_score, a.actual, a.expected,
                    a.model, a.model_version, a.status,
                    (SELECT f.label FROM feedback f WHERE f.anomaly_id = a.id ORDER BY f.id DESC LIMIT 1) AS feedback
             FROM anomalies a JOIN streams s ON s.id = a.stream_id WHERE a.id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(anomaly_from_row).transpose()
    }

    /// Records feedback on an anomaly. False if the anomaly does not exist.
    pub async fn add_feedback(
        &self,
        anomaly_id: i64,
        label: &str,
        note: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, StorageError> {
        let inserted = sqlx::query(
            "INSERT INTO feedback (anomaly_id, label, note, created_at)
             SELECT id, $1, $2, $3 FROM anomalies WHERE id = $4",
        )
        .bind(label)
        .bind(note.map(str::to_string))
        .bind(now_ms)
        .bind(anomaly_id)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() > 0)
    }
}

/// The columns a reading is read back with.
const READING_COLUMNS: &str = "ts, value, expected, lower, upper, score, anomaly, channels_json";

async fn fetch_readings(
    conn: &mut sqlx::AnyConnection,
    sql: &str,
    params: &[i64],
) -> Result<Vec<ReadingRow>, StorageError> {
    let mut query = sqlx::query(sql);
    for &p in params {
        query = query.bind(p);
    }
    let rows = query.fetch_all(&mut *conn).await?;
    rows.iter().map(reading_from_row).collect()
}

/// The readings of each block `query` selects (its `data` column), in its order, each
/// block's ascending, keeping those `keep` accepts, until `limit` are kept.
async fn fetch_blocks<'q>(
    conn: &mut sqlx::AnyConnection,
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    limit: i64,
    keep: impl Fn(&ReadingRow) -> bool,
) -> Result<Vec<Vec<ReadingRow>>, StorageError> {
    use futures::TryStreamExt;
    let limit = usize::try_from(limit).unwrap_or(0);
    let (mut out, mut kept) = (Vec::new(), 0);
    let mut blocks = query.fetch(&mut *conn);
    while kept < limit {
        let Some(row) = blocks.try_next().await? else { break };
        let data: Vec<u8> = row.try_get("data")?;
        let block: Vec<ReadingRow> = blocks::decode(&data)?.into_iter().filter(&keep).collect();
        kept += block.len();
        out.push(block);
    }
    Ok(out)
}

/// Which end of a merge [`merge`] keeps.
#[derive(Clone, Copy)]
enum End {
    First,
    Last,
}

/// The first or last `limit` of two ascending runs of one stream's readings, ascending (a
/// reading in both, by its time, once).
fn merge(a: Vec<ReadingRow>, b: Vec<ReadingRow>, limit: i64, end: End) -> Vec<ReadingRow> {
    let mut all = a;
    all.extend(b);
    all.sort_by_key(|r| r.ts);
    all.dedup_by_key(|r| r.ts);
    let limit = usize::try_from(limit).unwrap_or(0);
    match end {
        End::First => all.truncate(limit),
        End::Last => {
            all.drain(..all.len().saturating_sub(limit));
        }
    }
    all
}

/// The readings `sql` selects on PostgreSQL, through the driver's own pool.
async fn fetch_readings_postgres(
    pg: &sqlx::PgPool,
    sql: &str,
    params: &[i64],
) -> Result<Vec<ReadingRow>, StorageError> {
    let mut query = sqlx::query(sql);
    for &p in params {
        query = query.bind(p);
    }
    query.fetch_all(pg).await?.iter().map(reading_from_row).collect()
}

/// A reading of a row of `READING_COLUMNS`, of either driver's rows.
fn reading_from_row<'r, R>(row: &'r R) -> Result<ReadingRow, StorageError>
where
    R: Row,
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    f64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let channels: Option<String> = row.try_get("channels_json")?;
    Ok(ReadingRow {
        ts: row.try_get("ts")?,
        value: row.try_get("value")?,
        expected: row.try_get("expected")?,
        lower: row.try_get("lower")?,
        upper: row.try_get("upper")?,
        score: row.try_get("score")?,
        anomaly: row.try_get::<i64, _>("anomaly")? != 0,
        channels: channels
            .map(|text| serde_json::from_str(&text).map_err(|e| StorageError::Corrupt(e.to_string())))
            .transpose()?,
    })
}

fn parse_vec(text: &str) -> Result<Vec<f64>, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Corrupt(format!("{e}: {text}")))
}

fn anomaly_from_row(row: &AnyRow) -> Result<AnomalyRecord, StorageError> {
    let status: String = row.try_get("status")?;
    Ok(AnomalyRecord {
        id: row.try_get("id")?,
        stream: row.try_get("name")?,
        event: EventRow {
            start_ts: row.try_get("start_ts")?,
            end_ts: row.try_get("end_ts")?,
            peak_ts: row.try_get("peak_ts")?,
            peak_score: row.try_get("peak_score")?,
            actual: parse_vec(&row.try_get::<String, _>("actual")?)?,
            expected: parse_vec(&row.try_get::<String, _>("expected")?)?,
            model: row.try_get("model")?,
            model_version: row.try_get("model_version")?,
            open: status == "open",
        },
        feedback: row.try_get("feedback")?,
    })
}

/// A training job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    pub id: i64,
    pub model: String,
    pub status: String,
    /// The request's parameters (JSON).
    pub params: String,
    /// The last reported progress (JSON).
    pub progress: Option<String>,
    pub error: Option<String>,
    pub version: Option<String>,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const JOB_COLUMNS: &str = "id, model, status, params, progress, error, version, created_at, started_at, finished_at";

fn job_from_row(row: &AnyRow) -> Result<JobRecord, StorageError> {
    Ok(JobRecord {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        status: row.try_get("status")?,
        params: row.try_get("params")?,
        progress: row.try_get("progress")?,
        error: row.try_get("error")?,
        version: row.try_get("version")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

impl Storage {
    /// Records a new queued job; returns it.
    pub async fn insert_job(&self, model: &str, params: &str, now_ms: i64) -> Result<JobRecord, StorageError> {
        let row = sqlx::query(&format!(
            "INSERT INTO jobs (model, status, params, created_at) VALUES ($1, 'queued', $2, $3) RETURNING {JOB_COLUMNS}"
        ))
        .bind(model)
        .bind(params)
        .bind(now_ms)
        .fetch_one(&self.pool)
        .await?;
        job_from_row(&row)
    }

    /// One job by id.
    pub async fn job(&self, id: i64) -> Result<Option<JobRecord>, StorageError> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// The most recent jobs, newest first.
    pub async fn jobs(&self, limit: i64) -> Result<Vec<JobRecord>, StorageError> {
        let rows = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY id DESC LIMIT $1"))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Moves a job to `status`, recording progress, error, version and times as given.
    #[allow(clippy::too_many_arguments)]
    pub async fn update_job(
        &self,
        id: i64,
        status: &str,
        progress: Option<&str>,
        error: Option<&str>,
        version: Option<&str>,
        started_at: Option<i64>,
        finished_at: Option<i64>,
    ) -> Result<(), StorageError> {
        sqlx::query(
            "UPDATE jobs SET status = $1, progress = COALESCE($2, progress), error = COALESCE($3, error),
                version = COALESCE($4, version), started_at = COALESCE($5, started_at),
                finished_at = COALESCE($6, finished_at) WHERE id = $7",
        )
        .bind(status)
        .bind(progress.map(str::to_string))
        .bind(error.map(str::to_string))
        .bind(version.map(str::to_string))
        .bind(started_at)
        .bind(finished_at)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many jobs are in each state.
    pub async fn job_counts(&self) -> Result<Vec<(String, i64)>, StorageError> {
        let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetch_all(&self.pool).await?;
        rows.iter().map(|r| Ok((r.try_get("status")?, r.try_get("n")?))).collect()
    }

    /// Marks jobs left queued or running by a previous process as failed ("interrupted").
    pub async fn fail_interrupted_jobs(&self, now_ms: i64) -> Result<u64, StorageError> {
        let done = sqlx::query(
            "UPDATE jobs SET status = 'failed', error = 'interrupted: the service stopped before the job finished',
                finished_at = $1 WHERE status IN ('queued', 'running')",
        )
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Names of the streams matching any of `patterns` (`*` and `?` globs), sorted.
    pub async fn stream_names_matching(&self, patterns: &[String]) -> Result<Vec<(i64, String)>, StorageError> {
        let rows = sqlx::query("SELECT id, name FROM streams ORDER BY name").fetch_all(&self.pool).await?;
        let mut out = Vec::new();
        for row in &rows {
            let name: String = row.try_get("name")?;
            if patterns.iter().any(|p| glob::Pattern::new(p).is_ok_and(|p| p.matches(&name))) {
                out.push((row.try_get("id")?, name));
            }
        }
        Ok(out)
    }
}
