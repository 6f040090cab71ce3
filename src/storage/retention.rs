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
//! readings after that state again ([`Actor::catch_up`]), and on PostgreSQL a stream's row
//! counts the readings after its `last_ts`, which is never before the state's.
//!
//! On SQLite the readings in blocks go a block at a time, once the block's newest reading is
//! past the retention; readings still in the log wait until the writer has moved it (within
//! seconds of their commit).
//!
//! [`Actor::catch_up`]: crate::streams
use sqlx::Row;

use super::{Backend, Storage, StorageError};

/// Readings one transaction deletes at most from `readings`, and blocks from
/// `reading_blocks`: each transaction holds the write lock (SQLite) a few milliseconds.
const EXPIRE_ROWS: i64 = 4_096;
const EXPIRE_BLOCKS: i64 = 64;
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
    /// Deletes every stream's readings more than `keep_ms` older than its newest (and before
    /// its stored scoring state): one pass over the streams, in pages by id.
    pub async fn expire_readings(&self, keep_ms: i64) -> Result<Expired, StorageError> {
        let mut expired = Expired::default();
        let mut after = i64::MIN;
        loop {
            // A PostgreSQL stream row's `last_ts` is written with its scoring state; its
            // newest reading may be later (`stream_row!(counted)`).
            let newest = match self.backend {
                Backend::Sqlite => "s.last_ts",
                Backend::Postgres => {
                    "COALESCE((SELECT max(r.ts) FROM readings r WHERE r.stream_id = s.id AND r.ts > s.last_ts), s.last_ts)"
                }
            };
            let sql = format!(
                "SELECT s.id, {newest} AS last_ts, snap.last_ts AS saved FROM streams s
                 JOIN stream_snapshots snap ON snap.stream_id = s.id
                 WHERE s.id > $1 AND s.last_ts IS NOT NULL ORDER BY s.id LIMIT $2"
            );
            let rows = sqlx::query(&sql).bind(after).bind(STREAMS_PAGE).fetch_all(&self.pool).await?;
            for row in &rows {
                let (id, last_ts, saved): (i64, i64, i64) =
                    (row.try_get("id")?, row.try_get("last_ts")?, row.try_get("saved")?);
                after = id;
                let cutoff = last_ts.saturating_sub(keep_ms).min(saved);
                let n = self.expire_stream(id, cutoff).await?;
                if n > 0 {
                    expired.streams += 1;
                    expired.readings += n;
                }
            }
            if (rows.len() as i64) < STREAMS_PAGE {
                return Ok(expired);
            }
        }
    }

    /// Deletes a stream's readings before `cutoff`, [`EXPIRE_ROWS`] (and [`EXPIRE_BLOCKS`])
    /// a transaction; returns how many.
    async fn expire_stream(&self, id: i64, cutoff: i64) -> Result<u64, StorageError> {
        let sqlite = self.backend == Backend::Sqlite;
        let mut total = 0;
        loop {
            // Most streams have nothing to delete on most passes: a read finds that without
            // a write transaction.
            let due = if sqlite {
                "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM readings WHERE stream_id = $1 AND ts < $2)
                     OR EXISTS (SELECT 1 FROM reading_blocks WHERE stream_id = $3 AND last_ts < $4)
                     THEN 1 ELSE 0 END AS BIGINT)"
            } else {
                "SELECT CAST(CASE WHEN EXISTS (SELECT 1 FROM readings WHERE stream_id = $1 AND ts < $2)
                     THEN 1 ELSE 0 END AS BIGINT)"
            };
            let mut query = sqlx::query_scalar::<_, i64>(due).bind(id).bind(cutoff);
            if sqlite {
                query = query.bind(id).bind(cutoff);
            }
            if query.fetch_one(&self.pool).await? == 0 {
                return Ok(total);
            }
            // The first statement writes, so a SQLite transaction takes the write lock before
            // it reads anything (waiting out the writer's commit, `busy_timeout`).
            let mut tx = self.pool.begin().await?;
            let rows = sqlx::query(
                "DELETE FROM readings WHERE stream_id = $1 AND ts < $2 AND ts <= COALESCE(
                     (SELECT ts FROM readings WHERE stream_id = $3 AND ts < $4 ORDER BY ts LIMIT 1 OFFSET $5), $6)",
            )
            .bind(id)
            .bind(cutoff)
            .bind(id)
            .bind(cutoff)
            .bind(EXPIRE_ROWS - 1)
            .bind(cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
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
                .bind(EXPIRE_BLOCKS - 1)
                .bind(cutoff)
                .fetch_all(&mut *tx)
                .await?;
                let packed = deleted.iter().map(|r| r.try_get::<i64, _>("readings")).sum::<Result<i64, _>>()?;
                (deleted.len() as i64, packed as u64)
            } else {
                (0, 0)
            };
            let n = rows + packed;
            if n > 0 {
                sqlx::query("UPDATE streams SET readings_expired = readings_expired + $1 WHERE id = $2")
                    .bind(n as i64)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            total += n;
            if (rows as i64) < EXPIRE_ROWS && blocks < EXPIRE_BLOCKS {
                return Ok(total);
            }
        }
    }
}
