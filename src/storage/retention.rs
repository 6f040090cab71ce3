//! Retention of raw readings (`--retention`): a stream's readings older than the retention
//! before its newest are deleted, a few thousand a transaction; its anomaly events, their
//! feedback and its scoring state are kept. Each stream's deleted readings are counted in
//! `streams.readings_expired` (migration 0012) in the transaction that deletes them, so the
//! readings a stream reports stored stay exact.
//!
//! The retention is measured back from each stream's newest reading, not from the clock: a
//! stream replayed from an archive (timestamps years old) keeps its last days as a live one
//! does, and a stream that stops reporting keeps its last readings. Nothing at or after the
//! stream's stored scoring state's `last_ts` is deleted: a restart after a crash judges the
//! readings after that state again (the stream actor's catch-up), and on PostgreSQL a stream's row
//! counts the readings after its `last_ts`, which is never before the state's.
//!
//! On SQLite the deletions are messages of the storage writer's queue, each one transaction
//! between its commits on its connection: on a connection of their own they took SQLite's
//! write lock from the writer, whose commits then waited in SQLite's busy handler (p99.9 of
//! ingest 2.2 s against 0.16–0.25 s: docs/PERFORMANCE.md, "The retention's deletions beside
//! ingest"). The readings in blocks go a block at a time, once the block's newest reading is
//! past the retention; readings still in the log wait until the writer has moved it (within
//! seconds of their commit). The writer holds a deletion back while a reading may be both in
//! the log and in a block (a move under way, or one cut short by a crash or an error, until
//! the next has ended): the block deleted, the next move would write it again from the log.
//! On PostgreSQL they run on the pool beside the commits.
use sqlx::{AnyConnection, Connection, Row};

use super::{Backend, Storage, StorageError, Writer};

/// Readings one transaction deletes at most from `readings`, and blocks from
/// `reading_blocks` (tens of readings each), over as many streams as that takes: on SQLite
/// each is a pause of a few milliseconds between two of the writer's commits.
const EXPIRE_ROWS: i64 = 2_048;
const EXPIRE_BLOCKS: i64 = 256;
/// Streams read a page.
const STREAMS_PAGE: i64 = 1_000;

/// What one pass of the retention deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    /// Streams that had readings deleted.
    pub streams: u64,
    /// Readings deleted.
    pub readings: u64,
}

impl Storage {
    /// The shortest retention of a stream's own (`StreamConfig::retention`), in
    /// milliseconds; `None` if no stream has one.
    pub async fn shortest_stream_retention(&self) -> Result<Option<i64>, StorageError> {
        let sql = "SELECT min(retention_ms) FROM streams WHERE retention_ms > 0";
        Ok(sqlx::query_scalar::<_, Option<i64>>(sql).fetch_one(&self.pool).await?)
    }

    /// Deletes every stream's readings more than its retention older than its newest (and
    /// before its stored scoring state): the stream's own (`StreamConfig::retention`), else
    /// `keep_ms`, the service's (`None`: streams without one of their own keep every
    /// reading). One pass over the streams, in pages by id. On SQLite the deletions go
    /// through `writer`, between its commits; on PostgreSQL, whose transactions do not hold
    /// each other back, on a connection of the pool.
    pub async fn expire_readings(&self, keep_ms: Option<i64>, writer: &Writer) -> Result<Expired, StorageError> {
        let keep_ms = keep_ms.unwrap_or(0).max(0);
        let mut expired = Expired::default();
        // The stream the last deletion counted, so that one spanning transactions counts once.
        let mut counted = None;
        let mut after = i64::MIN;
        loop {
            // A PostgreSQL stream row's `last_ts` is written with its scoring state; its
            // newest reading may be later (`stream_row!(counted)`).
            let (newest, least, blocks) = match self.backend {
                Backend::Sqlite => (
                    "s.last_ts",
                    "min",
                    " OR EXISTS (SELECT 1 FROM reading_blocks b WHERE b.stream_id = p.id AND b.last_ts < p.cutoff)",
                ),
                Backend::Postgres => (
                    "COALESCE((SELECT max(r.ts) FROM readings r WHERE r.stream_id = s.id AND r.ts > s.last_ts), s.last_ts)",
                    "LEAST",
                    "",
                ),
            };
            // Without the service's retention only streams with one of their own.
            let own = if keep_ms > 0 { "" } else { " AND s.retention_ms > 0" };
            // A page of streams with their cutoffs, and whether each has readings before it:
            // most streams have none on most passes, found without a statement of their own.
            let sql = format!(
                "SELECT p.id, p.cutoff, CAST(CASE WHEN
                     EXISTS (SELECT 1 FROM readings r WHERE r.stream_id = p.id AND r.ts < p.cutoff){blocks}
                     THEN 1 ELSE 0 END AS BIGINT) AS due
                 FROM (SELECT s.id, {least}({newest} - CASE WHEN s.retention_ms > 0 THEN s.retention_ms ELSE $1 END,
                                            snap.last_ts) AS cutoff
                       FROM streams s JOIN stream_snapshots snap ON snap.stream_id = s.id
                       WHERE s.id > $2 AND s.last_ts IS NOT NULL{own} ORDER BY s.id LIMIT $3) p
                 ORDER BY p.id"
            );
            let rows = sqlx::query(&sql).bind(keep_ms).bind(after).bind(STREAMS_PAGE).fetch_all(&self.pool).await?;
            let mut due = Vec::new();
            for row in &rows {
                let (id, cutoff, has_old): (i64, i64, i64) =
                    (row.try_get("id")?, row.try_get("cutoff")?, row.try_get("due")?);
                after = id;
                if has_old != 0 {
                    due.push((id, cutoff));
                }
            }
            let mut rest = &due[..];
            while !rest.is_empty() {
                let step = match self.backend {
                    Backend::Sqlite => writer.expire(rest.to_vec()).await?,
                    Backend::Postgres => expire_on(&mut *self.pool.acquire().await?, self.backend, rest).await?,
                };
                for (id, n) in step.deleted {
                    expired.readings += n as u64;
                    if counted != Some(id) {
                        expired.streams += 1;
                        counted = Some(id);
                    }
                }
                rest = &rest[step.finished..];
            }
            if (rows.len() as i64) < STREAMS_PAGE {
                return Ok(expired);
            }
        }
    }
}

/// How far a transaction of [`expire_on`] got: the streams of its `due` it finished, and the
/// readings it deleted of each stream (the last perhaps unfinished).
#[derive(Debug)]
pub(crate) struct Expiry {
    pub(crate) finished: usize,
    pub(crate) deleted: Vec<(i64, i64)>,
}

/// Deletes on `conn`, in one transaction, the readings of `due` (stream, cutoff) before each
/// cutoff, stream after stream, until [`EXPIRE_ROWS`] rows of `readings` or [`EXPIRE_BLOCKS`]
/// blocks are deleted; counts each stream's in its row.
pub(crate) async fn expire_on(
    conn: &mut AnyConnection,
    backend: Backend,
    due: &[(i64, i64)],
) -> Result<Expiry, StorageError> {
    let sqlite = backend == Backend::Sqlite;
    let mut tx = conn.begin().await?;
    let (mut rows_left, mut blocks_left) = (EXPIRE_ROWS, EXPIRE_BLOCKS);
    let mut expiry = Expiry { finished: 0, deleted: Vec::new() };
    while expiry.finished < due.len() && rows_left > 0 && blocks_left > 0 {
        let (id, cutoff) = due[expiry.finished];
        // The first statement writes, so a SQLite transaction takes the write lock before it
        // reads anything.
        let rows = sqlx::query(
            "DELETE FROM readings WHERE stream_id = $1 AND ts < $2 AND ts <= COALESCE(
                 (SELECT ts FROM readings WHERE stream_id = $3 AND ts < $4 ORDER BY ts LIMIT 1 OFFSET $5), $6)",
        )
        .bind(id)
        .bind(cutoff)
        .bind(id)
        .bind(cutoff)
        .bind(rows_left - 1)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        let (blocks, packed) = if sqlite {
            let deleted = sqlx::query(
                "DELETE FROM reading_blocks WHERE stream_id = $1 AND last_ts < $2 AND last_ts <= COALESCE(
                     (SELECT last_ts FROM reading_blocks WHERE stream_id = $3 AND last_ts < $4
                      ORDER BY last_ts LIMIT 1 OFFSET $5), $6)
                 RETURNING readings",
            )
            .bind(id)
            .bind(cutoff)
            .bind(id)
            .bind(cutoff)
            .bind(blocks_left - 1)
            .bind(cutoff)
            .fetch_all(&mut *tx)
            .await?;
            let packed = deleted.iter().map(|r| r.try_get::<i64, _>("readings")).sum::<Result<i64, _>>()?;
            (deleted.len() as i64, packed)
        } else {
            (0, 0)
        };
        let n = rows + packed;
        if n > 0 {
            sqlx::query("UPDATE streams SET readings_expired = readings_expired + $1 WHERE id = $2")
                .bind(n)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            expiry.deleted.push((id, n));
        }
        // A stream that filled what was left of the transaction goes on in the next.
        if rows < rows_left && blocks < blocks_left {
            expiry.finished += 1;
        }
        rows_left -= rows;
        blocks_left -= blocks;
    }
    tx.commit().await?;
    Ok(expiry)
}
