//! SQLite's readings log (`readings_log`, migration 0005) and its move into reading blocks.
//! Short runs of a stream's readings (fewer than the writer's `DIRECT_ROWS`) are appended to
//! the log in arrival order, a few pages a commit whatever the streams; the writer moves the
//! log between its commits, a stream's rows of a move packed into one block of
//! `reading_blocks` ([`blocks`](super::blocks)).
//!
//! The log was first moved into `readings`, clustered by (stream, time): every move then wrote
//! one leaf page of it per stream, 4.0 µs a row on a fresh database and past 10 µs once each
//! stream's rows filled a few leaves (docs/PERFORMANCE.md, "The log moved into blocks"). A
//! block is one record appended to the table and one entry in its index.
use std::collections::HashMap;

use sqlx::Row;

use super::{blocks, reading_from_row, writer, writer::values_sql, Backend, ReadingRow, StorageError, READING_COLUMNS};

/// Moves SQLite's readings log on `conn` to the end, step by step ([`LogMove`]); returns the
/// readings moved.
pub(crate) async fn move_log(conn: &mut sqlx::AnyConnection) -> Result<u64, StorageError> {
    let Some(mut m) = LogMove::begin(conn).await? else { return Ok(0) };
    while !m.step(conn).await? {}
    Ok(m.rows)
}

/// SQLite's readings log on its way into `reading_blocks` a few milliseconds at a time, on
/// the writer's own connection between its commits. Moved in one transaction, 65,000 rows of
/// 10,000 streams paused every commit ~185 ms (docs/PERFORMANCE.md). In steps, each its own
/// transaction:
///
/// 1. **sort**: the log's rows up to the last one when the move began, a range of row ids a
///    step, into a temporary table of the connection keyed by (stream, time) (in memory);
/// 2. **copy**: the next [`MOVE_COPY_ROWS`] sorted rows, leaving out streams deleted since,
///    a block for each stream's run of them;
/// 3. **trim**: the sorted rows out of the log, a range of row ids a step.
///
/// A stream's blocks never overlap in time (reads rely on it: [`Storage::readings`]). A
/// stream's logged rows may lie on both sides of a block its longer runs made, so a copy
/// splits a stream's rows at every stored block between them; and a row already in a block
/// is left out: between a copy and its trim a reading is in the log and in a block, identical
/// (reads drop the second), and a move cut short (an error, a crash) leaves such copies for
/// the next move to find. A reading is in one block only. Rows logged after the move began
/// wait for the next one.
///
/// [`Storage::readings`]: super::Storage::readings
#[derive(Debug)]
pub(crate) struct LogMove {
    /// The ids of the log's rows when the move began: after `from`, up to `upto`.
    from: i64,
    upto: i64,
    /// Readings written into blocks (or rows), for the caller's count.
    pub(crate) rows: u64,
    step: MoveStep,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MoveStep {
    /// Sorting the log's rows after this id.
    Sort(i64),
    /// Copying the sorted rows after this (stream id, time).
    Copy(i64, i64),
    /// Trimming the log's rows after this id.
    Trim(i64),
}

/// Log rows (by id) a sort or trim step takes.
const MOVE_LOG_ROWS: i64 = 8_192;
/// Sorted rows a copy step packs into blocks.
const MOVE_COPY_ROWS: i64 = 4_096;
/// Blocks an `INSERT` statement of a copy step.
const BLOCKS_PER_STATEMENT: usize = 200;

impl LogMove {
    /// Begins a move of the log's rows so far on `conn`; `None` if the log is empty.
    pub(crate) async fn begin(conn: &mut sqlx::AnyConnection) -> Result<Option<LogMove>, StorageError> {
        let (from, upto): (Option<i64>, Option<i64>) =
            sqlx::query_as("SELECT min(id), max(id) FROM readings_log").fetch_one(&mut *conn).await?;
        let (Some(from), Some(upto)) = (from, upto) else { return Ok(None) };
        // In memory: the table is the connection's own and rebuilt by every move. Setting
        // `temp_store` to another value than it has drops the connection's temporary tables
        // and triggers: the writer's connection starts with this value (`STREAMS_CHECK` in
        // the writer), so that its own check survives the move.
        sqlx::query("PRAGMA temp_store = MEMORY").execute(&mut *conn).await?;
        sqlx::query(
            "CREATE TEMP TABLE IF NOT EXISTS log_move (
                 stream_id BIGINT NOT NULL, ts BIGINT NOT NULL, value DOUBLE PRECISION NOT NULL,
                 expected DOUBLE PRECISION NOT NULL, lower DOUBLE PRECISION NOT NULL,
                 upper DOUBLE PRECISION NOT NULL, score DOUBLE PRECISION NOT NULL,
                 anomaly BIGINT NOT NULL, channels_json TEXT,
                 PRIMARY KEY (stream_id, ts)
             ) WITHOUT ROWID",
        )
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM temp.log_move").execute(&mut *conn).await?;
        Ok(Some(LogMove { from: from - 1, upto, rows: 0, step: MoveStep::Sort(from - 1) }))
    }

    /// The last id of the sort or trim step that takes the log's rows after `after`.
    fn log_range_end(&self, after: i64) -> i64 {
        after.saturating_add(MOVE_LOG_ROWS).min(self.upto)
    }

    /// Takes the next step; true when the move is complete.
    pub(crate) async fn step(&mut self, conn: &mut sqlx::AnyConnection) -> Result<bool, StorageError> {
        self.step = match self.step {
            MoveStep::Sort(after) => {
                let to = self.log_range_end(after);
                sqlx::query(&format!(
                    "INSERT OR REPLACE INTO temp.log_move (stream_id, {READING_COLUMNS})
                     SELECT stream_id, {READING_COLUMNS} FROM readings_log WHERE id > $1 AND id <= $2"
                ))
                .bind(after)
                .bind(to)
                .execute(&mut *conn)
                .await?;
                if to < self.upto {
                    MoveStep::Sort(to)
                } else {
                    MoveStep::Copy(i64::MIN, i64::MIN)
                }
            }
            MoveStep::Copy(stream, ts) => {
                let (rows, last) = copy(conn, (stream, ts)).await?;
                self.rows += rows;
                match last {
                    Some((s, t)) => MoveStep::Copy(s, t),
                    None => MoveStep::Trim(self.from),
                }
            }
            MoveStep::Trim(after) => {
                let to = self.log_range_end(after);
                // Only rows that were moved (before migration 0009 a log emptied by deletions
                // handed out its row ids again, to rows logged since the move began).
                sqlx::query(
                    "DELETE FROM readings_log WHERE id > $1 AND id <= $2 AND EXISTS (
                         SELECT 1 FROM temp.log_move m
                         WHERE m.stream_id = readings_log.stream_id AND m.ts = readings_log.ts)",
                )
                .bind(after)
                .bind(to)
                .execute(&mut *conn)
                .await?;
                if to < self.upto {
                    MoveStep::Trim(to)
                } else {
                    sqlx::query("DELETE FROM temp.log_move").execute(&mut *conn).await?;
                    return Ok(true);
                }
            }
        };
        Ok(false)
    }
}

/// A copy step: the sorted rows after the key `after`, [`MOVE_COPY_ROWS`] at most, as
/// blocks, in one transaction. Returns the readings written and the key of the last row
/// taken, `None` when the rows ran out.
async fn copy(conn: &mut sqlx::AnyConnection, after: (i64, i64)) -> Result<(u64, Option<(i64, i64)>), StorageError> {
    use sqlx::Connection;
    let mut tx = conn.begin().await?;
    // A stream deleted since the sort has no row to hold its readings. (`EXISTS`, a lookup
    // by row id: `IN (SELECT id FROM streams)` read all of `streams` each step, 7–9 ms of a
    // step at 10,000 streams.)
    let sorted = sqlx::query(&format!(
        "SELECT stream_id, {READING_COLUMNS} FROM temp.log_move m
         WHERE (stream_id, ts) > ($1, $2) AND EXISTS (SELECT 1 FROM streams s WHERE s.id = m.stream_id)
         ORDER BY stream_id, ts LIMIT $3"
    ))
    .bind(after.0)
    .bind(after.1)
    .bind(MOVE_COPY_ROWS)
    .fetch_all(&mut *tx)
    .await?;
    let taken = sorted.len();
    let mut streams = Vec::with_capacity(taken);
    let mut readings = Vec::with_capacity(taken);
    for row in &sorted {
        streams.push(row.try_get::<i64, _>("stream_id")?);
        readings.push(reading_from_row(row)?);
    }
    let (Some(&last_stream), Some(last_row)) = (streams.last(), readings.last()) else {
        tx.commit().await?;
        return Ok((0, None));
    };
    let last = (last_stream, last_row.ts);
    // The stored blocks within the time span of each stream's rows here: the rows' own
    // copies (a move cut short) and blocks of runs committed between them.
    let stored = sqlx::query(
        "SELECT b.stream_id, b.first_ts, b.last_ts FROM (
             SELECT stream_id, min(ts) AS lo, max(ts) AS hi FROM temp.log_move
             WHERE (stream_id, ts) > ($1, $2) AND (stream_id, ts) <= ($3, $4) GROUP BY stream_id
         ) c JOIN reading_blocks b ON b.stream_id = c.stream_id AND b.last_ts >= c.lo AND b.first_ts <= c.hi
         ORDER BY b.stream_id, b.last_ts",
    )
    .bind(after.0)
    .bind(after.1)
    .bind(last.0)
    .bind(last.1)
    .fetch_all(&mut *tx)
    .await?;
    let mut spans: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
    for row in &stored {
        spans.entry(row.try_get("stream_id")?).or_default().push((row.try_get("first_ts")?, row.try_get("last_ts")?));
    }
    let mut written = 0;
    let mut packed = Vec::new();
    for (stream, range) in runs(&streams, &readings, &spans) {
        let run = &readings[range];
        written += run.len() as u64;
        match blocks::encode(run) {
            Some(data) => packed.push((stream, run[0].ts, run[run.len() - 1].ts, run.len() as i64, data)),
            // Per-channel values of differing shapes (no stream writes such): rows.
            None => {
                for r in run {
                    insert_row(&mut tx, stream, r).await?;
                }
            }
        }
    }
    for statement in packed.chunks_mut(BLOCKS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO reading_blocks (stream_id, first_ts, last_ts, readings, data) VALUES {}",
            values_sql(Backend::Sqlite, statement.len(), 5)
        );
        let mut query = sqlx::query(&sql);
        for (stream, first, last, count, data) in statement {
            query = query.bind(*stream).bind(*first).bind(*last).bind(*count).bind(std::mem::take(data));
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    let more = i64::try_from(taken).map_or(true, |n| n >= MOVE_COPY_ROWS);
    Ok((written, more.then_some(last)))
}

/// The log's rows as the writer logged them, by stream, in time order: what a move writes
/// as blocks without reading the log back ([`MirroredMove`]). The writer keeps one while it
/// knows every row of the log is in it (it logged them all since the log was last empty)
/// and drops it after any failure of a move, moving by [`LogMove`] until the log is empty
/// again.
#[derive(Debug, Default)]
pub(crate) struct Mirror {
    streams: HashMap<i64, Logged>,
}

/// A stream's logged rows, and where a block of its own was committed between them.
#[derive(Debug, Default)]
struct Logged {
    readings: Vec<ReadingRow>,
    /// Counts of `readings` at which a block of the stream was committed: a block of logged
    /// rows may not span it.
    splits: Vec<usize>,
}

impl Mirror {
    /// `readings` of `stream` committed to the log.
    pub(crate) fn logged(&mut self, stream: i64, readings: Vec<ReadingRow>) {
        self.streams.entry(stream).or_default().readings.extend(readings);
    }

    /// A block of `stream` committed after the rows it has logged so far (its readings
    /// follow them in time, and rows logged later follow it).
    pub(crate) fn blocked(&mut self, stream: i64) {
        if let Some(logged) = self.streams.get_mut(&stream) {
            let n = logged.readings.len();
            if logged.splits.last() != Some(&n) {
                logged.splits.push(n);
            }
        }
    }
}

/// A move of the log from its [`Mirror`]: the mirror's rows as blocks, a stream's rows up to
/// each block committed between them one block, [`MOVE_COPY_ROWS`] readings a step; then the
/// log's rows up to the last id when the move began deleted, a range of ids a step (the
/// log's ids are never handed out again: migration 0009). Between the two a reading is in the
/// log and in a block, identical, and reads drop the second. Blocks of streams deleted since
/// are left out. A move cut short leaves such copies for a [`LogMove`] to find.
#[derive(Debug)]
pub(crate) struct MirroredMove {
    /// The ids of the log's rows when the move began: after `from`, up to `upto`.
    from: i64,
    upto: i64,
    /// The blocks to write, by stream, each a stream's run of readings, and the next to write.
    runs: Vec<(i64, Vec<ReadingRow>)>,
    next: usize,
    /// Trimming the log's ids after this one (the blocks all written).
    trimmed: Option<i64>,
    /// Readings written into blocks (or rows), for the caller's count.
    pub(crate) rows: u64,
}

impl MirroredMove {
    /// Begins a move of `mirror`, which holds every row of the log; `None` if the log is
    /// empty (its streams deleted).
    pub(crate) async fn begin(
        conn: &mut sqlx::AnyConnection,
        mirror: Mirror,
    ) -> Result<Option<MirroredMove>, StorageError> {
        let (from, upto, rows): (Option<i64>, Option<i64>, i64) =
            sqlx::query_as("SELECT min(id), max(id), count(*) FROM readings_log").fetch_one(&mut *conn).await?;
        let (Some(from), Some(upto)) = (from, upto) else { return Ok(None) };
        // Rows the writer did not log (a second process writing to the database) would be
        // deleted with the range of ids; deletions of streams only make the log smaller.
        let mirrored: usize = mirror.streams.values().map(|l| l.readings.len()).sum();
        if usize::try_from(rows).unwrap_or(usize::MAX) > mirrored {
            return Err(StorageError::Corrupt(format!(
                "the readings log holds {rows} rows, the writer logged {mirrored}: is another process writing to this database?"
            )));
        }
        let mut streams: Vec<(i64, Logged)> = mirror.streams.into_iter().collect();
        streams.sort_unstable_by_key(|(id, _)| *id);
        let mut runs = Vec::with_capacity(streams.len());
        for (id, mut logged) in streams {
            // From the last split back, so that each split's count still holds.
            for &at in logged.splits.iter().rev() {
                let tail = logged.readings.split_off(at.min(logged.readings.len()));
                if !tail.is_empty() {
                    runs.push((id, tail));
                }
            }
            if !logged.readings.is_empty() {
                runs.push((id, logged.readings));
            }
        }
        // A stream's runs in time order (each pushed last first above).
        runs.sort_by_key(|(id, run)| (*id, run[0].ts));
        Ok(Some(MirroredMove { from: from - 1, upto, runs, next: 0, trimmed: None, rows: 0 }))
    }

    /// Takes the next step; true when the move is complete.
    pub(crate) async fn step(&mut self, conn: &mut sqlx::AnyConnection) -> Result<bool, StorageError> {
        if let Some(after) = self.trimmed {
            let to = after.saturating_add(MOVE_LOG_ROWS).min(self.upto);
            sqlx::query("DELETE FROM readings_log WHERE id > $1 AND id <= $2")
                .bind(after)
                .bind(to)
                .execute(&mut *conn)
                .await?;
            self.trimmed = Some(to);
            return Ok(to >= self.upto);
        }
        let (mut end, mut readings) = (self.next, 0);
        while end < self.runs.len() && readings < MOVE_COPY_ROWS as usize {
            readings += self.runs[end].1.len();
            end += 1;
        }
        let mut packed = Vec::with_capacity(end - self.next);
        for (stream, run) in &self.runs[self.next..end] {
            match blocks::encode(run) {
                Some(data) => packed.push((*stream, run[0].ts, run[run.len() - 1].ts, run.len() as i64, data)),
                // Per-channel values of differing shapes (no stream writes such): rows.
                None => {
                    for r in run {
                        insert_row(&mut *conn, *stream, r).await?;
                    }
                    self.rows += run.len() as u64;
                }
            }
        }
        for statement in packed.chunks_mut(BLOCKS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO reading_blocks (stream_id, first_ts, last_ts, readings, data)
                 SELECT column1, column2, column3, column4, column5 FROM (VALUES {})
                 WHERE EXISTS (SELECT 1 FROM streams s WHERE s.id = column1)
                 RETURNING readings",
                values_sql(Backend::Sqlite, statement.len(), 5)
            );
            let mut query = sqlx::query_scalar::<_, i64>(&sql);
            for (stream, first, last, count, data) in statement {
                query = query.bind(*stream).bind(*first).bind(*last).bind(*count).bind(std::mem::take(data));
            }
            self.rows += query.fetch_all(&mut *conn).await?.into_iter().sum::<i64>() as u64;
        }
        self.next = end;
        if end == self.runs.len() {
            self.runs = Vec::new();
            self.trimmed = Some(self.from);
        }
        Ok(false)
    }
}

/// A reading as a row of `readings` (which every reading went into before blocks); one
/// already there is replaced by it.
async fn insert_row(conn: &mut sqlx::AnyConnection, stream: i64, r: &ReadingRow) -> Result<(), StorageError> {
    let sql = writer::insert_readings_sql(Backend::Sqlite, "readings", 1).replacen("INSERT", "INSERT OR REPLACE", 1);
    writer::bind_readings(sqlx::query(&sql), &[(stream, r)]).execute(conn).await?;
    Ok(())
}

/// The runs of `readings` (sorted by stream, then time; `streams[i]` is the stream of
/// `readings[i]`) that become blocks: a stream's rows up to the next block in `stored` (each
/// stream's blocks, `(first_ts, last_ts)`, in time order) that lies between them, leaving out
/// rows a block already holds.
fn runs(
    streams: &[i64],
    readings: &[ReadingRow],
    stored: &HashMap<i64, Vec<(i64, i64)>>,
) -> Vec<(i64, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < readings.len() {
        let stream = streams[i];
        let end = i + streams[i..].iter().take_while(|&&s| s == stream).count();
        let spans = stored.get(&stream).map_or(&[][..], Vec::as_slice);
        let mut next = 0; // the first span not wholly before the rows seen
        let mut start = i;
        for (j, r) in readings.iter().enumerate().take(end).skip(i) {
            let ts = r.ts;
            // Spans that end before this row begin after the previous one: a run stops there.
            while next < spans.len() && spans[next].1 < ts {
                if start < j {
                    out.push((stream, start..j));
                }
                start = j;
                next += 1;
            }
            if next < spans.len() && spans[next].0 <= ts {
                // Already in a block.
                if start < j {
                    out.push((stream, start..j));
                }
                start = j + 1;
            }
        }
        if start < end {
            out.push((stream, start..end));
        }
        i = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts: i64) -> ReadingRow {
        ReadingRow { ts, value: 0.0, expected: 0.0, lower: 0.0, upper: 0.0, score: 0.0, anomaly: false, channels: None }
    }

    /// A stream's rows split at each stored block between them, rows a block holds left
    /// out, each stream's rows apart.
    #[test]
    fn runs_stop_at_stored_blocks_and_skip_what_they_hold() {
        let streams = [1, 1, 1, 1, 1, 1, 2, 2, 3];
        let readings: Vec<ReadingRow> = [1, 2, 5, 9, 10, 20, 3, 4, 7].into_iter().map(reading).collect();
        let stored = HashMap::from([(1, vec![(3, 4), (9, 9), (12, 15)]), (3, vec![(1, 2)])]);
        assert_eq!(
            runs(&streams, &readings, &stored),
            [(1, 0..2), (1, 2..3), (1, 4..5), (1, 5..6), (2, 6..8), (3, 8..9)]
        );
        let held = HashMap::from([(1, vec![(1, 2), (5, 20)])]);
        assert_eq!(runs(&streams[..6], &readings[..6], &held), []);
        assert_eq!(runs(&[], &[], &stored), []);
    }
}
