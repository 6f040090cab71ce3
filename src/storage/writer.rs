//! The single writer: stream actors hand it their readings, events and state, and it
//! commits whatever is queued in one transaction (group commit), then answers every
//! waiting request. A 2xx for readings is sent only after this commit.
//!
//! If a group fails, each request in it is retried alone, so one bad request cannot fail
//! the others. The queue is bounded: a full queue is refused at once (the API answers 429).
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{query, Any, AnyConnection, Connection, PgConnection, PgPool, Postgres, Row};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, error, info, warn};

use super::retention::{self, Expiry};
use super::{
    stream_params, Backend, EventRow, LogMove, Mirror, MirroredMove, Param, ReadingRow, Storage, StorageError,
    StreamConfig, STREAM_COLUMNS, STREAM_PARAMS,
};
use crate::metrics::Metrics;
use crate::priority::{Raised, ShortSlices, SHORT_SLICE};

/// Readings per INSERT statement (9 parameters each; SQLite allows 32,766).
const ROWS_PER_STATEMENT: usize = 1000;
/// Stream rows per UPDATE statement (4 parameters each).
const UPDATES_PER_STATEMENT: usize = 500;
/// New stream rows a statement (8 parameters each).
const STREAMS_PER_STATEMENT: usize = 500;
/// Scoring states a statement (3 parameters each).
const SNAPSHOTS_PER_STATEMENT: usize = 500;
/// Readings gathered into one transaction before it is committed.
const ROWS_PER_TRANSACTION: usize = 50_000;

/// A stream that first exists when its first readings are committed.
#[derive(Debug, Clone)]
pub struct NewStream {
    pub name: String,
    pub config: StreamConfig,
    pub created_at: i64,
}

/// What one stream asks to be committed.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    /// The stream's id; ignored when `create` is set.
    pub stream_id: i64,
    /// Create the stream (if still missing) in the same transaction as its readings, so a
    /// request that fails leaves no empty stream behind.
    pub create: Option<NewStream>,
    pub readings: Vec<ReadingRow>,
    /// Events opened, extended or closed by these readings (upserted by start).
    pub events: Vec<EventRow>,
    pub update: StreamUpdate,
}

/// The stream row's new bookkeeping after a batch.
///
/// SQLite updates the row in every commit, by the counts added. PostgreSQL updates it only
/// in a commit that writes the stream's scoring state (every ~10 s and 100 readings a
/// stream, and whenever an event opens) or adds anomalies, with the stream's count of
/// readings after the batch; its other commits only check that the stream still exists. A stream's stored readings after
/// the row's `last_ts` are the ones its counters do not hold yet, which reads of the row add
/// (`Storage::stream`; docs/PERFORMANCE.md, "PostgreSQL's stream rows written with the
/// states").
#[derive(Debug, Clone)]
pub struct StreamUpdate {
    pub last_ts: i64,
    pub readings_added: i64,
    pub anomalies_added: i64,
    /// The stream's readings stored once this batch is (those before it and its own).
    pub readings_count: i64,
    /// The scoring state after the batch (JSON), when it is due to be written; `None`
    /// keeps the stored one.
    pub snapshot: Option<String>,
}

struct Job {
    batches: Vec<WriteBatch>,
    reply: oneshot::Sender<Result<Vec<i64>, (bool, String)>>,
}

/// What the writer's queue carries: commits, and on SQLite the retention's deletions, one
/// transaction each between commits on the writer's connection (another connection's write
/// transaction would hold the writer's commits back, each then waiting out SQLite's busy
/// handler: `retention`).
enum Message {
    Commit(Job),
    Expire(ExpireJob),
}

/// Readings of `due` (stream, cutoff) to delete in one transaction ([`retention::expire_on`]).
struct ExpireJob {
    due: Vec<(i64, i64)>,
    reply: oneshot::Sender<Result<Expiry, StorageError>>,
}

/// How much the writer's thread lowers its nice value below the service's, so that it is
/// first in the run queue when every core is busy ([`crate::priority`]). At one reading of
/// each of 1,000 of 10,000 streams a request on SQLite: 5 took the maximum from 177 k to 186 k
/// readings/s (means of three alternated runs) and halved the commit's latency; 10 did no
/// better (docs/PERFORMANCE.md).
const WRITER_PRIORITY: i32 = 5;

/// A handle on the writer task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Message>,
}

impl Writer {
    /// Starts the writer; it ends when every handle is dropped and the queue is empty.
    ///
    /// It runs on a thread of its own with its own connection: on the service's runtime its
    /// every statement would wait its turn behind request work (parsing, judging), and every
    /// commit's wait holds up every request in it (`bench http` at 1,000 readings of a
    /// stream a request: docs/PERFORMANCE.md).
    pub fn spawn(storage: Storage, queue: usize, metrics: Metrics) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue);
        let task = tokio::task::spawn_blocking(move || {
            // Kept until the writer ends, so that its thread goes back to the blocking pool
            // at the service's priority.
            let _raised = match Raised::raise(WRITER_PRIORITY) {
                Ok(raised) => {
                    debug!(by = WRITER_PRIORITY, "the storage writer's priority raised");
                    Some(raised)
                }
                Err(e) => {
                    info!(
                        error = %e,
                        "the storage writer runs at the service's priority (raising it needs CAP_SYS_NICE or a RLIMIT_NICE of 25: docs/DEPLOY.md)"
                    );
                    None
                }
            };
            // Before SQLite's connection starts its worker thread, which inherits it.
            let _slices = match ShortSlices::ask(SHORT_SLICE) {
                Ok(slices) => Some(slices),
                Err(e) => {
                    info!(error = %e, "the storage writer runs in the scheduler's default slices");
                    None
                }
            };
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return error!(error = %e, "the storage writer's runtime did not start"),
            };
            runtime.block_on(async move {
                // Its own connection, opened on this thread; the shared pool if that fails
                // (the database's failures are then the first commit's to report). On
                // PostgreSQL, a connection of that driver's own, for `COPY`.
                if storage.backend() == Backend::Postgres {
                    match postgres_connection(&storage).await {
                        Ok(pg) => {
                            run(storage, Some(pg.clone()), rx, metrics, None).await;
                            pg.close().await;
                        }
                        Err(e) => {
                            warn!(error = %e, "the storage writer shares the service's pool");
                            run(storage, None, rx, metrics, None).await;
                        }
                    }
                    return;
                }
                // The WAL is copied into the database by a task of its own, beside the
                // commits, rather than by the commit that fills it (`checkpoints`).
                let due = Arc::new(Notify::new());
                let checkpointer = tokio::spawn(checkpoints(storage.clone(), due.clone()));
                match storage.own_connection().await {
                    Ok(own) => {
                        run(own.clone(), None, rx, metrics, Some(due)).await;
                        own.pool().close().await;
                    }
                    Err(e) => {
                        warn!(error = %e, "the storage writer shares the service's pool");
                        run(storage, None, rx, metrics, Some(due)).await;
                    }
                }
                checkpointer.abort();
            })
        });
        (Writer { tx }, task)
    }

    /// Commits `batches` (all or nothing) and waits for the commit; returns each batch's
    /// stream id.
    pub async fn commit(&self, batches: Vec<WriteBatch>) -> Result<Vec<i64>, StorageError> {
        let (reply, done) = oneshot::channel();
        self.tx.try_send(Message::Commit(Job { batches, reply })).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StorageError::WriterFull,
            mpsc::error::TrySendError::Closed(_) => StorageError::WriterGone,
        })?;
        match done.await {
            Ok(Ok(ids)) => Ok(ids),
            Ok(Err((true, message))) => Err(StorageError::Unavailable(message)),
            Ok(Err((false, message))) => Err(StorageError::Corrupt(message)),
            Err(_) => Err(StorageError::WriterGone),
        }
    }

    /// SQLite: deletes readings of `due` (stream, cutoff) in one transaction between
    /// commits, waiting for room in the queue; returns how far it got ([`Expiry`]).
    pub(crate) async fn expire(&self, due: Vec<(i64, i64)>) -> Result<Expiry, StorageError> {
        let (reply, done) = oneshot::channel();
        self.tx.send(Message::Expire(ExpireJob { due, reply })).await.map_err(|_| StorageError::WriterGone)?;
        done.await.map_err(|_| StorageError::WriterGone)?
    }

    /// Requests waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// Rows in SQLite's readings log that make the writer begin to move it into blocks
/// ([`MirroredMove`] or [`LogMove`], a step between commits): `COMPACT_PER_STREAM` rows for
/// each stream in it, within these bounds. A move writes a block per stream in the log, so
/// the more rows a stream has there the fewer blocks a reading; a read of a stream scans at
/// most about this many rows of the log (1.7 ms at 65,536 rows, 3.4 at 131,072). At one
/// reading of each of 1,000 of 10,000 streams a request, 16 and 131,072 rather than 8 and
/// 65,536 took the maximum from 100–103 k to 110–112 k readings/s (docs/PERFORMANCE.md).
const COMPACT_ROWS: std::ops::RangeInclusive<usize> = 8_192..=131_072;
const COMPACT_PER_STREAM: usize = 16;
/// A stream's readings in one commit from which they skip SQLite's log and are one block
/// (migrations 0007, 0008). 32 while blocks were a WITHOUT ROWID table; since they append, 8
/// (at 10 readings a request half-rate p99 5.8–9.1 ms where the log's moves gave 18.7–28.3),
/// then 4: at 4 readings a request the log's moves put the half-rate p99 at 86–107 ms, blocks
/// at 6.0–7.2, and the maximum 19.1–19.8 k → 21.2–22.6 k readings/s. Runs of 2 and 3 stay in
/// the log: at 2 readings a request blocks gave no better (half-rate p99 9.4–10.0 ms against
/// 4.4–6.6 in phases no move fell in). docs/PERFORMANCE.md, "Runs of 4+ readings as blocks".
const DIRECT_ROWS: usize = 4;
/// Columns of a row of SQLite's `reading_blocks`, and its rows a statement.
const BLOCK_COLUMNS: usize = 5;
const BLOCKS_PER_STATEMENT: usize = 200;
/// Idle time after which the writer moves all of a non-empty log.
const COMPACT_IDLE: Duration = Duration::from_secs(1);

/// The WAL is checkpointed beside the commits every `CHECKPOINT_ROWS` readings committed,
/// and at least every `CHECKPOINT_EVERY`; past `WRITER_AUTOCHECKPOINT_PAGES` pages of WAL the
/// writer's own connection checkpoints in a commit (SQLite's `wal_autocheckpoint`): a
/// backstop only, for when the checkpoints beside it fall behind. SQLite starts the WAL over
/// only after a checkpoint that no commit overlapped has copied all of it; once a second,
/// under steady commits none did, the WAL grew to the backstop, and the commit that reached
/// it waited ~100 ms (p99 at half the maximum rate 88–109 ms). Small, frequent checkpoints
/// finish between two commits (p99 15–22 ms); by rows rather than by time, so that single
/// readings, which write little, are not met by a checkpoint's `fsync` every few commits.
const CHECKPOINT_ROWS: usize = 10_000;
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 50_000;
/// The writer's page cache on SQLite, in KiB (the pool's connections keep 64 MiB). A commit
/// that splits a b-tree page whose siblings are out of order renumbers them through a
/// temporary page number past the end of the file (SQLite's `balance_nonroot`), so at its
/// end SQLite drops cached pages past the file's end by scanning the cache's whole hash
/// table, a bucket per cached page: with 64 MiB cached, ~25 % of the writer thread's time
/// at 100 readings a request (`perf`; docs/PERFORMANCE.md, "The writer's page cache").
/// 16 MiB: that scan a quarter as long, and the pages a commit of 1,000 readings of one
/// stream or of 1,000 streams touches still cached. (Measured before migration 0008 made
/// `reading_blocks`, where most such splits were, a rowid table.)
const WRITER_CACHE_KIB: u32 = 16 * 1024;

/// Copies SQLite's WAL into the database file when the writer asks (`due`) or every
/// [`CHECKPOINT_EVERY`], on a connection of the service's pool (so on another thread than
/// the writer's connection), without waiting for or blocking anyone (`PASSIVE`). A
/// checkpoint run by the commit that filled the WAL (SQLite's default) held that commit,
/// and every request in it, for the copy of up to 40 MB of pages and an `fsync` of the
/// database: most of SQLite's p99 at 1,000 readings a request (docs/PERFORMANCE.md). The
/// writer's connection still checkpoints itself past [`WRITER_AUTOCHECKPOINT_PAGES`], by
/// then mostly copied here. A failure is logged and tried again.
async fn checkpoints(storage: Storage, due: Arc<Notify>) {
    loop {
        let _ = tokio::time::timeout(CHECKPOINT_EVERY, due.notified()).await;
        if let Err(e) = query("PRAGMA wal_checkpoint(PASSIVE)").execute(storage.pool()).await {
            debug!(error = %e, "WAL checkpoint beside the writer failed; tried again later");
        }
    }
}

/// A pool of one connection to the PostgreSQL database `storage` points at, on that
/// driver's own (sqlx's `Any` has no `COPY`).
///
/// The scoring states it writes (~3 KB of JSON each, past the 2 KB from which PostgreSQL
/// compresses a value) are compressed with LZ4 where the server has it (PostgreSQL 14 and
/// later, built with it, as Debian's packages and the official images are) instead of its
/// default pglz: an upsert of 1,000 states took 28–29 ms against 67–72, and one reading of
/// each of 1,000 streams a request, whose commits write a few states each, gained ~3 %
/// (docs/PERFORMANCE.md). Values already stored keep their method; reads take either.
async fn postgres_connection(storage: &Storage) -> Result<PgPool, StorageError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor;
                // A server without LZ4 refuses the setting (or, before 14, knows none) and
                // keeps its own default: nothing else changes.
                if let Err(e) = conn.execute("SET default_toast_compression = 'lz4'").await {
                    debug!(error = %e, "scoring states are compressed with the server's default method");
                }
                Ok(())
            })
        })
        .connect(&storage.url)
        .await?;
    Ok(pool)
}

/// Serves commits until every handle is dropped. `pg`, on PostgreSQL, is the pool of the
/// connection commits run on; otherwise they run on a connection of `storage`'s pool. That
/// connection is held throughout ([`Held`]). On SQLite, between commits, it moves the
/// readings log into blocks a step at a time ([`Log`]), and asks for a checkpoint
/// (`checkpoint`) every [`CHECKPOINT_ROWS`] readings.
async fn run(
    storage: Storage,
    pg: Option<PgPool>,
    mut rx: mpsc::Receiver<Message>,
    metrics: Metrics,
    checkpoint: Option<Arc<Notify>>,
) {
    let mut conn = Held::new(storage.clone(), pg);
    let mut log = if conn.log_is_empty().await { Log::empty() } else { Log::default() };
    let mut unchecked: usize = 0;
    // The retention's deletions waiting for the log to hold no reading a block holds too.
    let mut expiries: VecDeque<ExpireJob> = VecDeque::new();
    loop {
        expire_settled(&mut conn, &log, &mut expiries).await;
        let first = if log.moving.is_some() || !expiries.is_empty() {
            // A move under way takes a step whenever no commit is waiting.
            match rx.try_recv() {
                Ok(job) => job,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if !log.advance(&mut conn, &metrics).await {
                        refuse(&mut expiries);
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        } else if log.rows > 0 {
            match tokio::time::timeout(COMPACT_IDLE, rx.recv()).await {
                Ok(Some(job)) => job,
                Ok(None) => break,
                Err(_) => {
                    log.advance(&mut conn, &metrics).await;
                    continue;
                }
            }
        } else {
            match rx.recv().await {
                Some(job) => job,
                None => break,
            }
        };
        let first = match first {
            Message::Commit(job) => job,
            Message::Expire(job) => {
                expiries.push_back(job);
                continue;
            }
        };
        let mut jobs = vec![first];
        let mut rows: usize = jobs[0].batches.iter().map(|b| b.readings.len()).sum();
        while rows < ROWS_PER_TRANSACTION {
            match rx.try_recv() {
                Ok(Message::Commit(job)) => {
                    rows += job.batches.iter().map(|b| b.readings.len()).sum::<usize>();
                    jobs.push(job);
                }
                Ok(Message::Expire(job)) => {
                    // Taken after these commits.
                    expiries.push_back(job);
                    break;
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let all: Vec<&WriteBatch> = jobs.iter().flat_map(|j| &j.batches).collect();
        match write(&mut conn, &all).await {
            Ok((ids, _)) => {
                metrics.commit_latency.observe(started.elapsed().as_secs_f64());
                metrics.commit_rows.observe(rows as f64);
                metrics.snapshots.inc_by(all.iter().filter(|b| b.update.snapshot.is_some()).count() as u64);
                unchecked += rows;
                if let Some(due) = checkpoint.as_ref().filter(|_| unchecked >= CHECKPOINT_ROWS) {
                    due.notify_one();
                    unchecked = 0;
                }
                let mut ids = ids.into_iter();
                for Job { batches, reply } in jobs {
                    let mine: Vec<i64> = ids.by_ref().take(batches.len()).collect();
                    let _ = reply.send(Ok(mine.clone()));
                    log.logged(storage.backend(), batches, &mine, &metrics);
                }
            }
            Err(group_error) if jobs.len() > 1 => {
                warn!(error = %group_error, jobs = jobs.len(), "group commit failed; retrying requests one by one");
                for Job { batches, reply } in jobs {
                    let refs: Vec<&WriteBatch> = batches.iter().collect();
                    match write(&mut conn, &refs).await {
                        Ok((ids, _)) => {
                            let _ = reply.send(Ok(ids.clone()));
                            log.logged(storage.backend(), batches, &ids, &metrics);
                        }
                        Err(e) => {
                            let _ = reply.send(Err((e.is_transient(), e.to_string())));
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "commit failed");
                for job in jobs {
                    let _ = job.reply.send(Err((e.is_transient(), e.to_string())));
                }
            }
        }
        // The retention's deletions go before a move begins; a move under way takes a step
        // after every commit, so that it ends under any load; one begins once the log holds
        // enough rows, or to settle it for deletions waiting.
        expire_settled(&mut conn, &log, &mut expiries).await;
        if (log.moving.is_some() || log.rows >= log.threshold() || !expiries.is_empty())
            && !log.advance(&mut conn, &metrics).await
        {
            refuse(&mut expiries);
        }
    }
    if log.rows > 0 {
        log.move_all(&mut conn, &metrics).await;
    }
    conn.close().await;
}

/// Runs the retention's deletions waiting, once the log is settled ([`Log::settled`]).
async fn expire_settled(held: &mut Held, log: &Log, expiries: &mut VecDeque<ExpireJob>) {
    if expiries.is_empty() || !log.settled(held.backend()) {
        return;
    }
    while let Some(job) = expiries.pop_front() {
        expire(held, job).await;
    }
}

/// Answers the retention's deletions waiting when the move that was to settle the log failed:
/// the pass fails and the next one asks again. Kept, they would have the writer begin a move
/// again at once, and again, for as long as the database fails.
fn refuse(expiries: &mut VecDeque<ExpireJob>) {
    for job in expiries.drain(..) {
        let failed =
            StorageError::Unavailable("moving the readings log failed; the deletion waits for the next pass".into());
        let _ = job.reply.send(Err(failed));
    }
}

/// Runs a deletion of the retention on the writer's connection (SQLite) and answers it. A
/// failure lets the connection go, as a failed commit does.
async fn expire(held: &mut Held, job: ExpireJob) {
    let backend = held.backend();
    let result = match held.conn().await {
        Ok(Conn::Any(conn)) if backend == Backend::Sqlite => retention::expire_on(conn, backend, &job.due).await,
        Ok(_) => Err(StorageError::Unavailable("the retention deletes through the writer on SQLite only".into())),
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        warn!(error = %e, "the retention's deletion failed; the next pass tries again");
        held.close().await;
    }
    let _ = job.reply.send(result);
}

/// Whether `write` puts a batch of `readings` readings in the log (SQLite; a short run).
fn to_log(backend: Backend, readings: usize) -> bool {
    backend == Backend::Sqlite && (1..DIRECT_ROWS).contains(&readings)
}

/// The row of `reading_blocks` for `readings` of stream `id` (a run too long for the log),
/// as parameters, if that is where they go: on SQLite, readings of one channel shape.
fn to_block(backend: Backend, id: i64, readings: &[ReadingRow]) -> Option<[Param; BLOCK_COLUMNS]> {
    if backend != Backend::Sqlite {
        return None;
    }
    let (first, last) = (readings.first()?.ts, readings.last()?.ts);
    let data = super::blocks::encode(readings)?;
    Some([Param::Int(id), Param::Int(last), Param::Int(first), Param::Int(readings.len() as i64), Param::Blob(data)])
}

/// The writer's account of SQLite's readings log.
#[derive(Default)]
struct Log {
    /// Rows in the log, as the writer counts them (a stream's deletion takes its rows out
    /// unseen: the count is corrected when a move finds the log empty).
    rows: usize,
    /// The streams logged since the last move began (for its threshold).
    streams: std::collections::HashSet<i64>,
    /// The rows logged since the last move began, while the writer knows the log holds no
    /// others ([`Mirror`]); none after a move failed, until a [`LogMove`] leaves it empty.
    mirror: Option<Mirror>,
    /// A move under way, the connection it runs on ([`Held::opened`]; a [`LogMove`]'s
    /// temporary table dies with it) and the rows it takes.
    moving: Option<(Moving, u64, usize)>,
    /// Whether the log was empty when the writer began, or a move has ended since it began
    /// and since the last one that failed ([`Log::settled`]).
    clean: bool,
}

/// A move of the log from the writer's [`Mirror`], or from the log itself.
enum Moving {
    Mirrored(MirroredMove),
    Sorted(LogMove),
}

impl Log {
    /// A log that is empty (on SQLite), so that the writer knows every row it will hold.
    fn empty() -> Log {
        Log { mirror: Some(Mirror::default()), clean: true, ..Log::default() }
    }

    /// Counts the readings `batches` (committed, their streams `ids`) put in the log, and
    /// mirrors them.
    fn logged(&mut self, backend: Backend, batches: Vec<WriteBatch>, ids: &[i64], metrics: &Metrics) {
        if backend != Backend::Sqlite {
            return;
        }
        for (batch, &id) in batches.into_iter().zip(ids) {
            if to_log(backend, batch.readings.len()) {
                self.rows += batch.readings.len();
                self.streams.insert(id);
                if let Some(mirror) = self.mirror.as_mut() {
                    mirror.logged(id, batch.readings);
                }
            } else if let Some(mirror) = self.mirror.as_mut().filter(|_| !batch.readings.is_empty()) {
                mirror.blocked(id);
            }
        }
        metrics.readings_log_rows.set(self.rows as i64);
    }

    /// Whether no reading in the log is in a block too, so that the retention may delete
    /// blocks: no move under way (between its copy and its trim a reading is in both), and
    /// one ended since the writer began or a move failed (a move cut short by a crash or an
    /// error leaves such copies until the next move ends). A block deleted while a copy of its readings
    /// waits in the log would be written again by the next move, its readings counted
    /// deleted but stored. Always on PostgreSQL, which has no log.
    fn settled(&self, backend: Backend) -> bool {
        backend != Backend::Sqlite || (self.moving.is_none() && self.clean)
    }

    fn threshold(&self) -> usize {
        (COMPACT_PER_STREAM * self.streams.len()).clamp(*COMPACT_ROWS.start(), *COMPACT_ROWS.end())
    }

    /// Begins a move, or takes the next step of the one under way; false if it failed. A
    /// failure abandons the move (the log stays readable as it is; a move cut short leaves
    /// only duplicates, which reads ignore, and the next move finds), drops the mirror and
    /// lets the connection go; the next move begins after as many rows more.
    async fn advance(&mut self, held: &mut Held, metrics: &Metrics) -> bool {
        let started = Instant::now();
        let result = self.advance_on(held).await;
        metrics.compaction_latency.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Some(moved)) => {
                debug!(rows = moved, "moved the readings log");
                metrics.readings_log_rows.set(self.rows as i64);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "moving the readings log failed; it stays readable and is tried again later");
                held.close().await;
                self.moving = None;
                self.mirror = None;
                self.clean = false;
                self.rows = 0;
                self.streams.clear();
                return false;
            }
        }
        true
    }

    /// One step; the rows moved when the move is complete.
    async fn advance_on(&mut self, held: &mut Held) -> Result<Option<u64>, StorageError> {
        // On the writer's own connection, whose checkpoints wait for `WRITER_AUTOCHECKPOINT_PAGES`:
        // a move writes a page or more per stream in the log, which on a connection
        // checkpointing at SQLite's default would copy the WAL in the move itself.
        if held.backend() != Backend::Sqlite {
            return Ok(None); // PostgreSQL has no log (its `Any` fallback is a `Conn::Any` too)
        }
        held.conn().await?;
        let opened = held.opened;
        let Some(Conn::Any(conn)) = held.conn.as_mut() else { return Ok(None) };
        match self.moving.take() {
            Some((Moving::Mirrored(mut m), on, rows)) => {
                if m.step(conn).await? {
                    self.rows = self.rows.saturating_sub(rows);
                    self.clean = true;
                    return Ok(Some(m.rows));
                }
                self.moving = Some((Moving::Mirrored(m), on, rows));
            }
            Some((Moving::Sorted(mut m), on, rows)) if on == opened => {
                if m.step(conn).await? {
                    self.rows = self.rows.saturating_sub(rows);
                    self.clean = true;
                    if self.rows == 0 {
                        // Nothing logged since the move began: the log is empty.
                        self.mirror = Some(Mirror::default());
                    }
                    return Ok(Some(m.rows));
                }
                self.moving = Some((Moving::Sorted(m), on, rows));
            }
            // Not begun, or its connection was let go (with the move's sorted rows).
            _ => {
                let moving = match self.mirror.take() {
                    Some(mirror) => {
                        self.mirror = Some(Mirror::default());
                        MirroredMove::begin(conn, mirror).await?.map(Moving::Mirrored)
                    }
                    None => LogMove::begin(conn).await?.map(Moving::Sorted),
                };
                match moving {
                    Some(m) => {
                        self.moving = Some((m, opened, self.rows));
                        self.streams.clear();
                    }
                    None => {
                        // The log is empty: from here on the writer knows every row of it.
                        self.rows = 0;
                        self.clean = true;
                        self.mirror.get_or_insert_with(Mirror::default);
                    }
                }
            }
        }
        Ok(None)
    }

    /// Moves the whole log (when the writer stops).
    async fn move_all(&mut self, held: &mut Held, metrics: &Metrics) {
        let backend = held.backend();
        let moved = match held.conn().await {
            Ok(Conn::Any(conn)) if backend == Backend::Sqlite => super::move_log(conn).await,
            Ok(_) => Ok(0), // PostgreSQL has no log
            Err(e) => Err(e),
        };
        match moved {
            Ok(_) => {
                self.rows = 0;
                self.moving = None;
                self.clean = true;
                self.mirror = Some(Mirror::default());
                metrics.readings_log_rows.set(0);
            }
            Err(e) => warn!(error = %e, "moving the readings log failed; it is moved at the next start"),
        }
    }
}

/// The writer's transaction: on SQLite, on PostgreSQL's own driver, whose binary `COPY`
/// loads readings ~3.5 times as fast as multi-row `INSERT`s do (4.3 µs a row against 15 on
/// this machine's server: docs/PERFORMANCE.md), or on sqlx's `Any` driver (PostgreSQL when
/// that driver's own connection could not be had).
enum Tx<'c> {
    /// SQLite: the held connection and whether `BEGIN` has been sent on it. A commit that
    /// creates no stream sends its `BEGIN`, its statements and its `COMMIT` in one call to
    /// the connection's thread ([`Tx::run_and_commit`]) rather than three, each a thread
    /// woken both ways: a lone reading answered ~0.15 ms sooner at the median
    /// (docs/PERFORMANCE.md, "A commit in one call"). After a failure the transaction may be
    /// left open: the writer closes the connection ([`write`]), which rolls it back.
    Sqlite {
        conn: &'c mut AnyConnection,
        begun: bool,
    },
    Any(sqlx::Transaction<'c, Any>),
    Postgres(sqlx::Transaction<'c, Postgres>),
}

/// The connection the writer commits on, held from one commit to the next. Taken out of its
/// pool: a pooled connection is pinged when it goes back (a round trip to SQLite's worker
/// thread or to the PostgreSQL server after every commit, which the next commit waited
/// for), and on PostgreSQL again when it is taken. Dropped after a failed commit (it may be
/// broken) and taken afresh from the pool for the next.
struct Held {
    storage: Storage,
    /// PostgreSQL: the pool of that driver's own connection (for `COPY`).
    pg: Option<PgPool>,
    conn: Option<Conn>,
    /// Connections taken so far: which one `conn` is.
    opened: u64,
}

enum Conn {
    Any(AnyConnection),
    Postgres(PgConnection),
}

impl Held {
    fn new(storage: Storage, pg: Option<PgPool>) -> Held {
        Held { storage, pg, conn: None, opened: 0 }
    }

    /// Whether the database is SQLite and its readings log empty (false if that cannot be
    /// read).
    async fn log_is_empty(&mut self) -> bool {
        if self.backend() != Backend::Sqlite {
            return false;
        }
        match self.conn().await {
            Ok(Conn::Any(conn)) => {
                let rows = sqlx::query_scalar::<_, i64>("SELECT EXISTS (SELECT 1 FROM readings_log)");
                rows.fetch_one(conn).await.is_ok_and(|any| any == 0)
            }
            _ => false,
        }
    }

    fn backend(&self) -> Backend {
        self.storage.backend()
    }

    async fn conn(&mut self) -> Result<&mut Conn, StorageError> {
        let conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                self.opened += 1;
                match &self.pg {
                    Some(pg) => Conn::Postgres(pg.acquire().await?.detach()),
                    None => {
                        let mut conn = self.storage.pool().acquire().await?.detach();
                        if self.backend() == Backend::Sqlite {
                            // One call to sqlx's SQLite thread: the pragmas, the check, the log's view.
                            let setup = format!(
                                "PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT_PAGES};
                                 PRAGMA cache_size = -{WRITER_CACHE_KIB};
                                 {STREAMS_CHECK};
                                 {LOG_COMMIT}"
                            );
                            sqlx::raw_sql(&setup).execute(&mut conn).await?;
                        }
                        Conn::Any(conn)
                    }
                }
            }
        };
        Ok(self.conn.insert(conn))
    }

    /// Closes the connection (after a failure: the next commit takes a new one).
    async fn close(&mut self) {
        if let Some(conn) = self.conn.take() {
            let closed = match conn {
                Conn::Any(c) => c.close().await,
                Conn::Postgres(c) => c.close().await,
            };
            if let Err(e) = closed {
                debug!(error = %e, "closing the writer's connection");
            }
        }
    }
}

impl Tx<'_> {
    async fn begin(conn: &mut Conn, backend: Backend) -> Result<Tx<'_>, StorageError> {
        Ok(match conn {
            Conn::Postgres(c) => Tx::Postgres(c.begin().await?),
            Conn::Any(c) => match backend {
                Backend::Sqlite => Tx::Sqlite { conn: c, begun: false },
                Backend::Postgres => Tx::Any(c.begin().await?),
            },
        })
    }

    /// SQLite: sends `BEGIN` unless it has been sent, for a statement run on its own.
    async fn begun(&mut self) -> Result<(), StorageError> {
        if let Tx::Sqlite { conn, begun: begun @ false } = self {
            query::<Any>("BEGIN").execute(&mut **conn).await?;
            *begun = true;
        }
        Ok(())
    }

    /// The connection of a transaction on sqlx's `Any` driver; `None` on PostgreSQL's own.
    fn any(&mut self) -> Option<&mut AnyConnection> {
        match self {
            Tx::Sqlite { conn, .. } => Some(conn),
            Tx::Any(tx) => Some(tx),
            Tx::Postgres(_) => None,
        }
    }

    /// Runs `sql`; returns the rows it affected.
    async fn execute(&mut self, sql: &str, params: impl IntoIterator<Item = Param>) -> Result<u64, StorageError> {
        self.begun().await?;
        Ok(match self {
            Tx::Postgres(tx) => {
                let q = params.into_iter().fold(query::<Postgres>(sql), |q, p| p.bind(q));
                q.execute(&mut **tx).await?.rows_affected()
            }
            tx => {
                let q = params.into_iter().fold(query::<Any>(sql), |q, p| p.bind(q));
                q.execute(tx.any().expect("not PostgreSQL's own")).await?.rows_affected()
            }
        })
    }

    /// The (id, name) rows `sql` selects.
    async fn ids_and_names(
        &mut self,
        sql: &str,
        params: impl IntoIterator<Item = Param>,
    ) -> Result<Vec<(i64, String)>, StorageError> {
        self.begun().await?;
        Ok(match self {
            Tx::Postgres(tx) => {
                let q = params.into_iter().fold(query::<Postgres>(sql), |q, p| p.bind(q));
                q.fetch_all(&mut **tx)
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect::<Result<_, sqlx::Error>>()?
            }
            tx => {
                let q = params.into_iter().fold(query::<Any>(sql), |q, p| p.bind(q));
                let rows = q.fetch_all(tx.any().expect("not PostgreSQL's own")).await?;
                rows.iter().map(|row| Ok((row.try_get(0)?, row.try_get(1)?))).collect::<Result<_, sqlx::Error>>()?
            }
        })
    }

    /// Runs `script`'s statements in order and commits; returns each statement's count of
    /// rows affected. Nothing is committed when a statement fails or when fewer stream rows
    /// were updated than `rest` says the commit has streams: each stream must still exist.
    ///
    /// On SQLite `BEGIN` (unless sent), the statements and `COMMIT` go in one call, but for
    /// statements of [`ALONE_BINDS`] parameters or more, which go in calls of their own: sqlx runs a
    /// SQLite connection on a thread of its own, and every call is a round trip to it (a
    /// thread woken each way, as long as a lone reading's statements take on an idle
    /// machine). SQLite's driver runs the statements of one query string in order, binding
    /// its anonymous `?` parameters across them in turn, and reports each statement's count;
    /// sqlx 0.8 marks several statements in one query as deprecated for a later version, so
    /// the test `a_script_reports_each_statement_and_fails_whole` pins the behaviour relied on
    /// here. The streams are checked inside the script there, before its `COMMIT`, by the
    /// statement [`push_rest`] puts after each update of stream rows ([`STREAMS_CHECK`]).
    /// On PostgreSQL (one statement a query there) they run one by one, then the check, then
    /// the commit.
    async fn run_and_commit(self, script: Script<'_>, rest: &Rest) -> Result<Vec<u64>, StorageError> {
        let statements = script.statements.len();
        let mut affected = Vec::with_capacity(statements + 2);
        match self {
            Tx::Sqlite { conn, begun } => {
                // Large statements each go in a call of their own (with the statements
                // pushed to follow them: the streams check after an update). sqlx keeps a
                // query's prepared statements by its text, so such a call's text, which
                // depends only on its row count, is parsed once, where a script, whose text
                // changes with whatever else the commit carries, is parsed anew each time
                // (docs/PERFORMANCE.md, "One reading of each of 1,000 streams"). The rest,
                // and the `COMMIT`, go last.
                let mut calls: Vec<Vec<(usize, String, Binds<'_>)>> = Vec::new();
                let mut rest_call = Vec::new();
                let mut previous_alone = false;
                for (i, (statement, binds)) in script.statements.into_iter().enumerate() {
                    // A statement that follows the one before goes where it went.
                    if script.following.binary_search(&i).is_ok() && previous_alone {
                        calls.last_mut().expect("the statement before").push((i, statement, binds));
                    } else if binds.len() >= ALONE_BINDS {
                        calls.push(vec![(i, statement, binds)]);
                        previous_alone = true;
                    } else {
                        rest_call.push((i, statement, binds));
                        previous_alone = false;
                    }
                }
                calls.push(rest_call);
                affected.resize(statements, 0);
                let last = calls.len() - 1;
                for (n, call) in calls.into_iter().enumerate() {
                    sqlite_call(conn, n == 0 && !begun, call, n == last, rest, &mut affected).await?;
                }
            }
            Tx::Any(mut tx) => {
                for (sql, binds) in script.statements {
                    affected.push(bind_all(query::<Any>(&sql), binds).execute(&mut *tx).await?.rows_affected());
                }
                rest.check(&affected)?;
                tx.commit().await?;
            }
            Tx::Postgres(mut tx) => {
                for (sql, binds) in script.statements {
                    affected
                        .push(bind_postgres(query::<Postgres>(&sql), binds).execute(&mut *tx).await?.rows_affected());
                }
                rest.check(&affected)?;
                tx.commit().await?;
            }
        }
        Ok(affected)
    }
}

/// Statements with at least this many parameters run in a call of their own on SQLite
/// ([`Tx::run_and_commit`]): 500 stream rows' update, a 223-reading insert.
const ALONE_BINDS: usize = 2_000;

/// One call to SQLite's connection thread: `BEGIN` first if `begin`, `statements` (each
/// with its index among the commit's), `COMMIT` last if `commit`; each statement's count of
/// rows affected goes to its index in `affected`.
async fn sqlite_call(
    conn: &mut AnyConnection,
    begin: bool,
    statements: Vec<(usize, String, Binds<'_>)>,
    commit: bool,
    rest: &Rest,
    affected: &mut [u64],
) -> Result<(), StorageError> {
    let mut sql = String::from(if begin { "BEGIN;\n" } else { "" });
    for (_, statement, _) in &statements {
        sql.push_str(statement);
        sql.push_str(";\n");
    }
    if commit {
        sql.push_str("COMMIT");
    }
    let mut indices = Vec::with_capacity(statements.len());
    let mut q = query::<Any>(&sql);
    for (i, _, binds) in statements {
        indices.push(i);
        q = bind_all(q, binds);
    }
    let mut counts = Vec::with_capacity(indices.len() + 2);
    #[allow(deprecated)]
    let mut results = q.fetch_many(&mut *conn);
    loop {
        match results.try_next().await {
            Ok(Some(sqlx::Either::Left(done))) => counts.push(done.rows_affected()),
            Ok(Some(sqlx::Either::Right(_))) => {}
            Ok(None) => break,
            Err(sqlx::Error::Database(e)) if e.message().contains(STREAMS_MISSING) => {
                return Err(missing_streams(if rest.streams == 1 { "1" } else { "some" }, rest.streams));
            }
            Err(e) => return Err(e.into()),
        }
    }
    // One count a statement, `BEGIN`'s and `COMMIT`'s among them.
    let sent = indices.len() + usize::from(begin) + usize::from(commit);
    if counts.len() != sent {
        return Err(StorageError::Corrupt(format!("a script of {sent} statements reported {} results", counts.len())));
    }
    for (i, count) in indices.into_iter().zip(counts.into_iter().skip(usize::from(begin))) {
        affected[i] = count;
    }
    Ok(())
}

/// Commits `batches`; returns each one's stream id and the rows that went to the log.
async fn write(held: &mut Held, batches: &[&WriteBatch]) -> Result<(Vec<i64>, usize), StorageError> {
    let backend = held.backend();
    let result = match held.conn().await {
        Ok(conn) => write_on(conn, backend, batches).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        held.close().await;
    }
    result
}

async fn write_on(
    conn: &mut Conn,
    backend: Backend,
    batches: &[&WriteBatch],
) -> Result<(Vec<i64>, usize), StorageError> {
    match conn {
        Conn::Postgres(pg) => {
            if let Some(ids) = write_in_one_statement(pg, batches).await? {
                return Ok((ids, 0));
            }
        }
        Conn::Any(any) if backend == Backend::Sqlite => {
            if let Some((ids, logged)) = log_in_one_statement(any, batches).await? {
                return Ok((ids, logged));
            }
        }
        Conn::Any(_) => {}
    }
    let mut tx = Tx::begin(conn, backend).await?;
    // New streams, many a statement (a request that creates 1,000 streams made 2,000
    // statement round trips here, 0.28 ms a stream on SQLite).
    let new: Vec<&NewStream> = batches.iter().filter_map(|b| b.create.as_ref()).collect();
    let created = create_streams(&mut tx, backend, &new).await?;
    let mut ids = Vec::with_capacity(batches.len());
    for batch in batches {
        ids.push(match &batch.create {
            Some(new) => *created
                .get(new.name.as_str())
                .ok_or_else(|| StorageError::Corrupt(format!("stream {} was not created", new.name)))?,
            None => batch.stream_id,
        });
    }
    // Every reading of every stream in multi-row statements: a request carrying one reading
    // for each of 1,000 streams is one statement, not 1,000. On SQLite a stream's few
    // readings go to the log (migration 0005), its long runs into a block each (0007).
    let (mut direct, mut logged, mut packed) = (Vec::new(), Vec::new(), Vec::new());
    for (batch, &id) in batches.iter().zip(&ids) {
        if to_log(backend, batch.readings.len()) {
            logged.extend(batch.readings.iter().map(|r| (id, r)));
        } else if let Some(block) = to_block(backend, id, &batch.readings) {
            packed.push(block);
        } else {
            direct.extend(batch.readings.iter().map(|r| (id, r)));
        }
    }
    // The rest of the commit's statements go in one script: on SQLite a single call to its
    // connection's thread, not one a statement.
    let mut script = Script::default();
    insert_readings(&mut tx, &mut script, backend, "readings", &direct).await?;
    insert_readings(&mut tx, &mut script, backend, "readings_log", &logged).await?;
    let mut packed = packed.into_iter().peekable();
    while packed.peek().is_some() {
        let params: Vec<Param> = packed.by_ref().take(BLOCKS_PER_STATEMENT).flatten().collect();
        let sql = format!(
            "INSERT INTO reading_blocks (stream_id, last_ts, first_ts, readings, data) VALUES {}",
            values_sql(backend, params.len() / BLOCK_COLUMNS, BLOCK_COLUMNS)
        );
        script.push(sql, Binds::Params(params));
    }
    let arrays = matches!(tx, Tx::Postgres(_));
    let rest = push_rest(&mut script, backend, arrays, batches, &ids);
    tx.run_and_commit(script, &rest).await?;
    Ok((ids, logged.len()))
}

/// `missing` (a count, or "some" where it is not known) of a commit's `streams` are gone.
fn missing_streams(missing: &str, streams: usize) -> StorageError {
    StorageError::Corrupt(format!(
        "{missing} of the {streams} streams of a commit do not exist (deleted while their readings were in flight?)"
    ))
}

/// What [`push_rest`] added to a script.
#[derive(Default)]
struct Rest {
    /// The statements that update stream rows, or on PostgreSQL check them
    /// ([`check_streams`]): their counts of rows affected or returned.
    updates: Vec<usize>,
    /// Distinct streams of the commit: the rows those statements must update or return.
    streams: usize,
    /// Whether a stream or an event is written twice (by separate statements).
    repeats: bool,
}

impl Rest {
    /// Refuses a commit unless its stream rows were all updated or found (`affected`: each
    /// statement's count of rows). Every stream of a commit must still exist. PostgreSQL's
    /// readings have no foreign key (migration 0006: its check per row was 64 % of a `COPY`);
    /// this is the same check once per stream, made safe against a deletion racing the
    /// commit by the row locks of the updates and the table lock [`check_streams`] relies on.
    /// SQLite makes it inside the commit's script ([`STREAMS_CHECK`]).
    fn check(&self, affected: &[u64]) -> Result<(), StorageError> {
        let updated: u64 = self.updates.iter().map(|&i| affected[i]).sum();
        if updated < self.streams as u64 {
            return Err(missing_streams(&(self.streams - updated as usize).to_string(), self.streams));
        }
        Ok(())
    }
}

/// SQLite: the writer's connection's own table and trigger (temporary: on that connection
/// only, nothing in the database file) that let a commit's script refuse itself before its
/// `COMMIT` when a stream of it is gone. After each update of stream rows the script inserts
/// the rows that update should have changed less those it did (`changes()`); the trigger
/// aborts the statement, and with it the script, on anything but 0, and otherwise drops the
/// row (`RAISE(IGNORE)`), so the table stays empty. `temp_store` is set first to the value a
/// log move sets ([`LogMove::begin`]): a change of it drops every temporary table and trigger.
const STREAMS_CHECK: &str = "PRAGMA temp_store = MEMORY;
    CREATE TEMP TABLE IF NOT EXISTS commit_checks (missing INTEGER NOT NULL);
    CREATE TEMP TRIGGER IF NOT EXISTS commit_checks_refuse BEFORE INSERT ON commit_checks BEGIN
        SELECT RAISE(ABORT, 'tsad: a stream of the commit does not exist') WHERE NEW.missing <> 0;
        SELECT RAISE(IGNORE);
    END";

/// The words of [`STREAMS_CHECK`]'s refusal, as its error reports them.
const STREAMS_MISSING: &str = "a stream of the commit does not exist";

/// SQLite: the writer's connection's own view and trigger (temporary, as [`STREAMS_CHECK`]'s
/// table is) through which a small commit that only logs readings is one statement in
/// autocommit ([`log_in_one_statement`]). A row inserted into the view is a reading of a
/// stream and, on the stream's last reading of the commit, the stream row's update (`last_ts`
/// and the counts; `NULL` on its other readings). The trigger refuses a stream that does not
/// exist with [`STREAMS_MISSING`]'s words, which fails the statement and leaves nothing of it
/// (the statement is its own transaction), logs the reading and updates the stream row with
/// [`update_streams_sql`]'s guard: a stopping actor's final write does not overwrite a newer
/// state. It follows [`STREAMS_CHECK`] in the connection's setup, after its `temp_store`.
const LOG_COMMIT: &str = "CREATE TEMP VIEW IF NOT EXISTS log_commit
        (stream_id, ts, value, expected, lower, upper, score, anomaly, channels_json,
         last_ts, readings_added, anomalies_added)
        AS SELECT 0, 0, 0.0, 0.0, 0.0, 0.0, 0.0, 0, NULL, 0, 0, 0 WHERE 0;
    CREATE TEMP TRIGGER IF NOT EXISTS log_commit_row INSTEAD OF INSERT ON log_commit BEGIN
        SELECT RAISE(ABORT, 'tsad: a stream of the commit does not exist')
            WHERE NOT EXISTS (SELECT 1 FROM streams WHERE id = NEW.stream_id);
        INSERT INTO readings_log (stream_id, ts, value, expected, lower, upper, score, anomaly, channels_json)
            VALUES (NEW.stream_id, NEW.ts, NEW.value, NEW.expected, NEW.lower, NEW.upper, NEW.score,
                    NEW.anomaly, NEW.channels_json);
        UPDATE streams SET
            last_ts = CASE WHEN last_ts IS NULL OR last_ts <= NEW.last_ts THEN NEW.last_ts ELSE last_ts END,
            readings_count = readings_count
                + CASE WHEN last_ts IS NULL OR last_ts <= NEW.last_ts THEN NEW.readings_added ELSE 0 END,
            anomalies_count = anomalies_count
                + CASE WHEN last_ts IS NULL OR last_ts <= NEW.last_ts THEN NEW.anomalies_added ELSE 0 END
            WHERE NEW.last_ts IS NOT NULL AND id = NEW.stream_id;
    END";

/// Readings at most in a commit through [`LOG_COMMIT`]'s view (12 parameters each). Commits of
/// one reading of each of 1,000 streams gained nothing that way (nearly all carry a scoring
/// state due, which leaves them to the script; docs/PERFORMANCE.md).
const LOG_COMMIT_ROWS: usize = 64;

/// SQLite: a small commit that only logs readings of streams that exist (a lone reading, a
/// few streams' short runs) as one `INSERT` into [`LOG_COMMIT`]'s view in autocommit, which
/// sqlx's SQLite thread answers once. The script it replaces (`BEGIN`, the log's rows, the
/// stream rows, the streams check, `COMMIT`) was one call, but the thread answers each of its
/// statements' results apart, a wake-up of the writer each (docs/PERFORMANCE.md, "A lone
/// reading's commit in one statement"). `None` when the commit does not qualify: a new
/// stream, events, a scoring state due, a run too long for the log, a stream twice, or more
/// than [`LOG_COMMIT_ROWS`] readings. Returns the streams' ids and the readings logged.
async fn log_in_one_statement(
    conn: &mut AnyConnection,
    batches: &[&WriteBatch],
) -> Result<Option<(Vec<i64>, usize)>, StorageError> {
    let readings: usize = batches.iter().map(|b| b.readings.len()).sum();
    let qualifies = |b: &&WriteBatch| {
        b.create.is_none()
            && b.events.is_empty()
            && b.update.snapshot.is_none()
            && to_log(Backend::Sqlite, b.readings.len())
    };
    if readings > LOG_COMMIT_ROWS || !batches.iter().all(qualifies) {
        return Ok(None);
    }
    let ids: Vec<i64> = batches.iter().map(|b| b.stream_id).collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != ids.len() {
        return Ok(None);
    }
    let sql = format!(
        "INSERT INTO log_commit (stream_id, ts, value, expected, lower, upper, score, anomaly, channels_json, \
         last_ts, readings_added, anomalies_added) VALUES {}",
        values_sql(Backend::Sqlite, readings, 12)
    );
    let mut q = query::<Any>(&sql);
    for batch in batches {
        let last = batch.readings.len() - 1;
        for (i, r) in batch.readings.iter().enumerate() {
            let update = &batch.update;
            q = bind_readings(q, &[(batch.stream_id, r)])
                .bind((i == last).then_some(update.last_ts))
                .bind((i == last).then_some(update.readings_added))
                .bind((i == last).then_some(update.anomalies_added));
        }
    }
    match q.execute(&mut *conn).await {
        Ok(_) => Ok(Some((ids, readings))),
        Err(sqlx::Error::Database(e)) if e.message().contains(STREAMS_MISSING) => {
            Err(missing_streams(if ids.len() == 1 { "1" } else { "some" }, ids.len()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Adds a commit's events, stream rows and scoring states to `script`.
/// The statements of a commit after its readings: events, the stream rows, the states due.
/// `arrays`: on PostgreSQL's own driver, which binds arrays (the stream rows in one
/// statement of four array parameters).
fn push_rest(script: &mut Script<'_>, backend: Backend, arrays: bool, batches: &[&WriteBatch], ids: &[i64]) -> Rest {
    let mut events = std::collections::HashSet::new();
    let mut repeats = false;
    for (batch, &stream_id) in batches.iter().zip(ids) {
        for event in &batch.events {
            repeats |= !events.insert((stream_id, event.start_ts));
            upsert_event(script, backend, stream_id, event);
        }
    }
    // The stream rows, many per statement. A stream has one batch in flight at a time (its
    // actor waits for the commit), so ids do not repeat; if they ever did, an UPDATE … FROM
    // would apply only one of the rows, so repeats are written one by one instead.
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let (unique, repeated): (Vec<_>, Vec<_>) =
        batches.iter().zip(ids).map(|(b, &id)| (id, &b.update)).partition(|(id, _)| seen.insert(*id));
    repeats |= !repeated.is_empty();
    if arrays {
        // PostgreSQL: only the rows of the streams whose state this commit writes (or whose
        // anomalies it adds to: an actor writes its state then too).
        let mut updates = Vec::new();
        let mut streams = 0;
        for rows in std::iter::once(unique).chain(repeated.into_iter().map(|row| vec![row])) {
            let (written, checked): (Vec<_>, Vec<_>) =
                rows.into_iter().partition(|(_, u)| u.snapshot.is_some() || u.anomalies_added != 0);
            if !written.is_empty() {
                updates.push(update_streams_by_arrays(script, &written));
            }
            if !checked.is_empty() {
                updates.push(check_streams(script, &checked));
            }
            streams += written.len() + checked.len();
        }
        push_snapshots(script, backend, batches, ids);
        return Rest { updates, streams, repeats };
    }
    let mut update = |rows: &[(i64, &StreamUpdate)]| {
        let statement = update_streams(script, backend, rows);
        if backend == Backend::Sqlite {
            script.push_following(
                "INSERT INTO commit_checks (missing) VALUES (? - changes())".into(),
                Binds::Params(vec![Param::Int(rows.len() as i64)]),
            );
        }
        statement
    };
    let updates: Vec<usize> = unique.chunks(UPDATES_PER_STATEMENT).map(&mut update).collect();
    for row in repeated {
        update(&[row]);
    }
    push_snapshots(script, backend, batches, ids);
    Rest { updates, streams: unique.len(), repeats }
}

/// The scoring states due, in their own table: most commits write none.
fn push_snapshots(script: &mut Script<'_>, backend: Backend, batches: &[&WriteBatch], ids: &[i64]) {
    let snapshots: Vec<(i64, i64, &str)> = batches
        .iter()
        .zip(ids)
        .filter_map(|(b, &id)| b.update.snapshot.as_deref().map(|s| (id, b.update.last_ts, s)))
        .collect();
    // Many a statement; as with the stream rows, a stream id twice in one statement would be
    // refused by PostgreSQL's upsert, so repeats go one by one.
    let mut seen = std::collections::HashSet::with_capacity(snapshots.len());
    let (unique_snapshots, repeated): (Vec<_>, Vec<_>) = snapshots.into_iter().partition(|s| seen.insert(s.0));
    for chunk in unique_snapshots.chunks(SNAPSHOTS_PER_STATEMENT) {
        upsert_snapshots(script, backend, chunk);
    }
    for snapshot in repeated {
        upsert_snapshots(script, backend, &[snapshot]);
    }
}

/// PostgreSQL: a small commit of streams that already exist (a lone reading, say) as one
/// statement in autocommit — its statements chained as data-modifying `WITH` queries — so one
/// round trip to the server instead of four (`BEGIN`, `INSERT`, `UPDATE`, `COMMIT`).
/// `None` when the commit does not qualify: new streams, readings enough for `COPY`, or a
/// row written twice (one statement may change a row only once).
///
/// A stream deleted meanwhile must fail the whole statement: its readings have no foreign
/// key to refuse them. The statement's result divides 1 by (stream rows updated or found /
/// streams), which is 0 — an error, and nothing written — when any is missing.
async fn write_in_one_statement(
    conn: &mut PgConnection,
    batches: &[&WriteBatch],
) -> Result<Option<Vec<i64>>, StorageError> {
    let readings: usize = batches.iter().map(|b| b.readings.len()).sum();
    if readings >= COPY_FROM_ROWS || batches.iter().any(|b| b.create.is_some()) {
        return Ok(None);
    }
    let ids: Vec<i64> = batches.iter().map(|b| b.stream_id).collect();
    let rows: Vec<(i64, &ReadingRow)> =
        batches.iter().flat_map(|b| b.readings.iter().map(move |r| (b.stream_id, r))).collect();
    let mut script = Script::default();
    push_readings(&mut script, Backend::Postgres, "readings", &rows);
    let rest = push_rest(&mut script, Backend::Postgres, true, batches, &ids);
    if rest.repeats {
        return Ok(None);
    }
    let sql = chained(&script, &rest);
    let q = script.statements.into_iter().fold(query::<Postgres>(&sql), |q, (_, binds)| bind_postgres(q, binds));
    match q.execute(&mut *conn).await {
        Ok(_) => Ok(Some(ids)),
        // division_by_zero: the check above, the only division in the statement.
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("22012") => {
            Err(missing_streams(if rest.streams == 1 { "1" } else { "some" }, rest.streams))
        }
        Err(e) => Err(e.into()),
    }
}

/// `script`'s statements as one: `WITH s0 AS (… RETURNING 1), s1 AS (…) SELECT 1 / …`, each
/// statement's `$n` parameters numbered on from the last one's.
fn chained(script: &Script<'_>, rest: &Rest) -> String {
    let mut sql = String::from("WITH ");
    let mut offset = 0;
    for (i, (statement, binds)) in script.statements.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let returning = if statement.as_str() == CHECK_STREAMS { "" } else { " RETURNING 1" };
        sql.push_str(&format!("s{i} AS ({}{returning})", renumber(statement, offset)));
        offset += binds.len();
    }
    let updated: Vec<String> = rest.updates.iter().map(|i| format!("(SELECT count(*) FROM s{i})")).collect();
    sql.push_str(&format!(" SELECT 1 / (({}) / {})", updated.join(" + "), rest.streams));
    sql
}

/// `sql` with each `$n` made `$(n + offset)`. Only for the statements this module writes,
/// whose only `$` are parameters.
fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + sql.len() / 8);
    let mut chars = sql.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        out.push(c);
        if c != '$' {
            continue;
        }
        let start = i + 1;
        let mut end = start;
        while let Some(&(j, d)) = chars.peek() {
            if !d.is_ascii_digit() {
                break;
            }
            end = j + 1;
            chars.next();
        }
        match sql[start..end].parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&sql[start..end]),
        }
    }
    out
}

/// From this many readings a commit sends them to PostgreSQL with `COPY`; fewer go in an
/// `INSERT`, which is one round trip to the server where `COPY` takes two (a single
/// reading's commit is mostly round trips).
const COPY_FROM_ROWS: usize = 64;

/// Inserts `rows` (stream id, reading) into `table`: with one `COPY` on PostgreSQL's own
/// driver when there are enough of them, else `ROWS_PER_STATEMENT` an `INSERT`.
async fn insert_readings<'a>(
    tx: &mut Tx<'_>,
    script: &mut Script<'a>,
    backend: Backend,
    table: &str,
    rows: &'a [(i64, &'a ReadingRow)],
) -> Result<(), StorageError> {
    if let Tx::Postgres(tx) = tx {
        if rows.len() >= COPY_FROM_ROWS {
            let data = copy_binary(rows)?;
            let mut copy =
                tx.copy_in_raw(&format!("COPY {table} {READING_COLUMNS} FROM STDIN (FORMAT binary)")).await?;
            copy.send(data).await?;
            copy.finish().await?;
            return Ok(());
        }
    }
    push_readings(script, backend, table, rows);
    Ok(())
}

/// Adds `INSERT`s of `rows` into `table` to `script`, `ROWS_PER_STATEMENT` a statement.
fn push_readings<'a>(script: &mut Script<'a>, backend: Backend, table: &str, rows: &'a [(i64, &'a ReadingRow)]) {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        // Written out with `$n` placeholders: sqlx's QueryBuilder over `Any` emits `?`,
        // which PostgreSQL does not accept.
        script.push(insert_readings_sql(backend, table, chunk.len()), Binds::Readings(chunk));
    }
}

/// Statements of one commit, run in order by [`Tx::run`].
#[derive(Default)]
struct Script<'a> {
    statements: Vec<(String, Binds<'a>)>,
    /// Statements that must run in the same call to SQLite's thread as the one before them
    /// (a streams check, which reads that statement's `changes()`), ascending.
    following: Vec<usize>,
}

/// What a statement of a [`Script`] binds.
enum Binds<'a> {
    Params(Vec<Param>),
    /// The [`READING_COLUMNS`] of each row (typed: no [`Param`] a field).
    Readings(&'a [(i64, &'a ReadingRow)]),
    /// Arrays, one a parameter: only on PostgreSQL's own driver ([`bind_postgres`]).
    Columns(Vec<Vec<i64>>),
}

impl Binds<'_> {
    /// The parameters bound.
    fn len(&self) -> usize {
        match self {
            Binds::Params(params) => params.len(),
            Binds::Readings(rows) => rows.len() * 9,
            Binds::Columns(columns) => columns.len(),
        }
    }
}

impl<'a> Script<'a> {
    /// Adds a statement; returns its index among the rows-affected counts `Tx::run` returns.
    fn push(&mut self, sql: String, binds: Binds<'a>) -> usize {
        self.statements.push((sql, binds));
        self.statements.len() - 1
    }

    /// Adds a statement that runs in the same call as the one before it
    /// ([`Tx::run_and_commit`]).
    fn push_following(&mut self, sql: String, binds: Binds<'a>) -> usize {
        self.following.push(self.statements.len());
        self.push(sql, binds)
    }
}

/// Binds `binds` to `q`, after what it already binds.
fn bind_all<'q, DB: sqlx::Database>(
    q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    binds: Binds<'q>,
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    match binds {
        Binds::Params(params) => params.into_iter().fold(q, |q, p| p.bind(q)),
        Binds::Readings(rows) => bind_readings(q, rows),
        Binds::Columns(_) => unreachable!("arrays are bound on PostgreSQL's own driver only (push_rest's `arrays`)"),
    }
}

/// [`bind_all`] on PostgreSQL's own driver, which also binds [`Binds::Columns`].
fn bind_postgres<'q>(
    q: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    binds: Binds<'q>,
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    match binds {
        Binds::Columns(columns) => columns.into_iter().fold(q, |q, column| q.bind(column)),
        binds => bind_all(q, binds),
    }
}

/// Binds the nine [`READING_COLUMNS`] of each of `rows` to `q`, in order.
pub(super) fn bind_readings<'q, DB: sqlx::Database>(
    mut q: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    rows: &[(i64, &ReadingRow)],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    f64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for &(stream_id, r) in rows {
        let channels = r.channels.as_ref().map(|c| serde_json::to_string(c).unwrap_or_default());
        q = q
            .bind(stream_id)
            .bind(r.ts)
            .bind(r.value)
            .bind(r.expected)
            .bind(r.lower)
            .bind(r.upper)
            .bind(r.score)
            .bind(i64::from(r.anomaly))
            .bind(channels);
    }
    q
}

/// The columns of a reading row, in the order `insert_readings` writes them.
const READING_COLUMNS: &str = "(stream_id, ts, value, expected, lower, upper, score, anomaly, channels_json)";

/// `rows` in PostgreSQL's binary `COPY` format: the header, one tuple of the nine
/// [`READING_COLUMNS`] a row (each field its length and its bytes in network order; `-1`
/// for NULL), the trailer.
fn copy_binary(rows: &[(i64, &ReadingRow)]) -> Result<Vec<u8>, StorageError> {
    let mut data = Vec::with_capacity(19 + rows.len() * 112 + 2);
    data.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    data.extend_from_slice(&0i32.to_be_bytes()); // flags
    data.extend_from_slice(&0i32.to_be_bytes()); // header extension length
    for &(stream_id, r) in rows {
        data.extend_from_slice(&9i16.to_be_bytes());
        for v in [stream_id, r.ts] {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&v.to_be_bytes());
        }
        for v in [r.value, r.expected, r.lower, r.upper, r.score] {
            data.extend_from_slice(&8i32.to_be_bytes());
            data.extend_from_slice(&v.to_bits().to_be_bytes());
        }
        data.extend_from_slice(&8i32.to_be_bytes());
        data.extend_from_slice(&i64::from(r.anomaly).to_be_bytes());
        match &r.channels {
            None => data.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(channels) => {
                let json = serde_json::to_string(channels).map_err(|e| StorageError::Corrupt(e.to_string()))?;
                let len = i32::try_from(json.len())
                    .map_err(|_| StorageError::Corrupt(format!("channels of {} bytes", json.len())))?;
                data.extend_from_slice(&len.to_be_bytes());
                data.extend_from_slice(json.as_bytes());
            }
        }
    }
    data.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(data)
}

/// PostgreSQL: the rows of `rows` streams, whose scoring states the commit writes (or whose
/// anomalies it adds), set to their `last_ts` and count of readings (the readings of their
/// commits since the last state write included) and their anomalies added, unless a newer
/// state is stored ([`update_streams_sql`]'s guard), in one statement whose count of rows
/// affected (those of the streams that exist) is at the index returned. Their row locks make
/// a deletion of one of them wait for this commit, or this commit fail.
///
/// One statement, whatever the number of rows, of four `BIGINT[]` parameters. With a row a
/// `VALUES` tuple of four parameters (500 a statement) the update took 14.5 µs a row of a
/// commit's time at one reading of each of 1,000 streams a request, 72 % of the commit; the
/// server itself spends ~3.6 µs a row on it (`EXPLAIN ANALYZE`): the rest was binding and
/// planning 2,000 parameters (docs/PERFORMANCE.md, "PostgreSQL's stream rows by arrays").
fn update_streams_by_arrays(script: &mut Script<'_>, rows: &[(i64, &StreamUpdate)]) -> usize {
    let column = |f: fn(i64, &StreamUpdate) -> i64| rows.iter().map(|&(id, u)| f(id, u)).collect::<Vec<i64>>();
    let columns = vec![
        column(|id, _| id),
        column(|_, u| u.last_ts),
        column(|_, u| u.readings_count),
        column(|_, u| u.anomalies_added),
    ];
    let sql = "UPDATE streams SET last_ts = CASE WHEN newer THEN v.ts ELSE streams.last_ts END,
            readings_count = CASE WHEN newer THEN v.readings ELSE streams.readings_count END,
            anomalies_count = streams.anomalies_count + CASE WHEN newer THEN v.anomalies ELSE 0 END
         FROM unnest($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::BIGINT[]) AS v (id, ts, readings, anomalies)
         WHERE streams.id = v.id";
    script.push(sql.replace("newer", "(streams.last_ts IS NULL OR streams.last_ts <= v.ts)"), Binds::Columns(columns))
}

/// PostgreSQL: a statement that returns a row for each of `rows` streams that exists, for the
/// commit's streams whose rows it does not update. It follows the commit's readings, whose
/// insertion holds `readings` in `ROW EXCLUSIVE` mode to the commit's end: a deletion takes
/// that table in `SHARE ROW EXCLUSIVE` mode before it deletes the stream's row
/// ([`super::Storage::delete_stream`]), so either this commit is done first (and the deletion
/// deletes its readings) or the deletion is, and this check, whose snapshot is taken after
/// the lock, finds the stream gone and fails the commit.
fn check_streams(script: &mut Script<'_>, rows: &[(i64, &StreamUpdate)]) -> usize {
    let ids = rows.iter().map(|&(id, _)| id).collect();
    script.push(CHECK_STREAMS.into(), Binds::Columns(vec![ids]))
}

/// [`check_streams`]'s statement: a query, which [`chained`] writes without `RETURNING`.
const CHECK_STREAMS: &str = "SELECT 1 FROM streams WHERE id = ANY($1)";

fn update_streams(script: &mut Script<'_>, backend: Backend, rows: &[(i64, &StreamUpdate)]) -> usize {
    let params = rows
        .iter()
        .flat_map(|&(stream_id, u)| {
            [Param::Int(stream_id), Param::Int(u.last_ts), Param::Int(u.readings_added), Param::Int(u.anomalies_added)]
        })
        .collect();
    script.push(update_streams_sql(backend, rows.len()), Binds::Params(params))
}

/// `UPDATE streams … FROM (VALUES …)` for `rows` streams: (id, last_ts, readings added,
/// anomalies added) each. VALUES columns are `column1…` in SQLite and PostgreSQL alike; the
/// casts give PostgreSQL the parameter types. SQLite, which binds them as integers already,
/// goes without: a commit's statements are parsed anew whenever its text is new (most
/// commits under load), and four casts a row made parsing this statement ~1.7× as long.
fn update_streams_sql(backend: Backend, rows: usize) -> String {
    let mut sql = String::from(
        "UPDATE streams SET last_ts = CASE WHEN newer THEN v.column2 ELSE streams.last_ts END,
            readings_count = streams.readings_count + CASE WHEN newer THEN v.column3 ELSE 0 END,
            anomalies_count = streams.anomalies_count + CASE WHEN newer THEN v.column4 ELSE 0 END
         FROM (VALUES ",
    );
    match backend {
        Backend::Sqlite => sql.push_str(&values_sql(backend, rows, 4)),
        Backend::Postgres => {
            for r in 0..rows {
                let p = r * 4;
                if r > 0 {
                    sql.push_str(", ");
                }
                let n = |i: usize| placeholder(backend, p + i);
                sql.push_str(&format!(
                    "(CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS BIGINT), CAST({} AS BIGINT))",
                    n(1),
                    n(2),
                    n(3),
                    n(4)
                ));
            }
        }
    }
    // The last_ts guard (`newer`) keeps a stopping actor's final write from overwriting a
    // newer stream state written by its successor. It is in the SET, not the WHERE, so that
    // every stream row of the commit is updated: the count of rows updated tells whether
    // each stream still exists (`write`).
    sql.push_str(") AS v WHERE streams.id = v.column1");
    sql.replace("newer", "(streams.last_ts IS NULL OR streams.last_ts <= v.column2)")
}

/// `(…), (…)` for `rows` rows of `columns` parameters each (one row: the list of an `IN`).
pub(super) fn values_sql(backend: Backend, rows: usize, columns: usize) -> String {
    let mut sql = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..columns {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    let _ = write!(sql, "${}", r * columns + c + 1);
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Inserts the new streams (a name already stored keeps its row) and returns the id of each
/// name.
async fn create_streams(
    tx: &mut Tx<'_>,
    backend: Backend,
    new: &[&NewStream],
) -> Result<std::collections::HashMap<String, i64>, StorageError> {
    let mut ids = std::collections::HashMap::with_capacity(new.len());
    for chunk in new.chunks(STREAMS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO streams {STREAM_COLUMNS} VALUES {} ON CONFLICT (name) DO NOTHING",
            values_sql(backend, chunk.len(), STREAM_PARAMS)
        );
        tx.execute(&sql, chunk.iter().flat_map(|s| stream_params(&s.name, &s.config, s.created_at))).await?;
        let sql = format!("SELECT id, name FROM streams WHERE name IN {}", values_sql(backend, 1, chunk.len()));
        let rows = tx.ids_and_names(&sql, chunk.iter().map(|s| Param::Text(s.name.clone()))).await?;
        ids.extend(rows.into_iter().map(|(id, name)| (name, id)));
    }
    Ok(ids)
}

/// Writes scoring states (stream id, last timestamp, JSON), each unless a newer one is stored.
fn upsert_snapshots(script: &mut Script<'_>, backend: Backend, rows: &[(i64, i64, &str)]) {
    let sql = format!(
        "INSERT INTO stream_snapshots (stream_id, last_ts, snapshot) VALUES {}
         ON CONFLICT (stream_id) DO UPDATE SET last_ts = excluded.last_ts, snapshot = excluded.snapshot
         WHERE stream_snapshots.last_ts <= excluded.last_ts",
        values_sql(backend, rows.len(), 3)
    );
    let params = rows
        .iter()
        .flat_map(|&(id, last_ts, snapshot)| [Param::Int(id), Param::Int(last_ts), Param::Text(snapshot.to_string())])
        .collect();
    script.push(sql, Binds::Params(params));
}

/// Parameter `n` (from 1) of a statement: `$n` for PostgreSQL; an anonymous `?` for SQLite,
/// where binding many numbered parameters costs quadratic time (every bind looks its name
/// up in a list: 55 % of the writer's time at 9,000 parameters a statement).
fn placeholder(backend: Backend, n: usize) -> String {
    match backend {
        Backend::Sqlite => "?".to_string(),
        Backend::Postgres => format!("${n}"),
    }
}

/// `INSERT INTO table … VALUES ($1, …, $9), ($10, …)` for `rows` readings.
pub(super) fn insert_readings_sql(backend: Backend, table: &str, rows: usize) -> String {
    format!("INSERT INTO {table} {READING_COLUMNS} VALUES {}", values_sql(backend, rows, 9))
}

fn upsert_event(script: &mut Script<'_>, backend: Backend, stream_id: i64, e: &EventRow) {
    let json = |v: &[f64]| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
    // Anonymous `?` on SQLite (see `placeholder`): in a script, numbered ones would count
    // from the script's first parameter, not this statement's.
    let sql = format!(
        "INSERT INTO anomalies (stream_id, start_ts, end_ts, peak_ts, peak_score, actual, expected,
            model, model_version, status)
         VALUES {}
         ON CONFLICT (stream_id, start_ts) DO UPDATE SET end_ts = excluded.end_ts,
            peak_ts = excluded.peak_ts, peak_score = excluded.peak_score, actual = excluded.actual,
            expected = excluded.expected, status = excluded.status",
        values_sql(backend, 1, 10)
    );
    let params = vec![
        Param::Int(stream_id),
        Param::Int(e.start_ts),
        Param::Int(e.end_ts),
        Param::Int(e.peak_ts),
        Param::Float(e.peak_score),
        Param::Text(json(&e.actual)),
        Param::Text(json(&e.expected)),
        Param::Text(e.model.clone()),
        Param::Text(e.model_version.clone()),
        Param::Text(if e.open { "open" } else { "closed" }.to_string()),
    ];
    script.push(sql, Binds::Params(params));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scoring::Baseline;
    use crate::storage::AnomalyQuery;

    #[test]
    fn chained_statements_number_their_parameters_on() {
        assert_eq!(renumber("VALUES ($1, $2), ($10)", 7), "VALUES ($8, $9), ($17)");
        assert_eq!(renumber("a $ b", 3), "a $ b");
        let mut script = Script::default();
        script.push("INSERT INTO t VALUES ($1, $2)".into(), Binds::Params(vec![Param::Int(1), Param::Int(2)]));
        let update = script.push("UPDATE u SET x = $1".into(), Binds::Params(vec![Param::Int(3)]));
        let rest = Rest { updates: vec![update], streams: 1, repeats: false };
        assert_eq!(
            chained(&script, &rest),
            "WITH s0 AS (INSERT INTO t VALUES ($1, $2) RETURNING 1), s1 AS (UPDATE u SET x = $3 RETURNING 1) \
             SELECT 1 / (((SELECT count(*) FROM s1)) / 1)"
        );
    }

    fn readings(n: i64) -> Vec<ReadingRow> {
        (1..=n)
            .map(|ts| ReadingRow {
                ts,
                value: 1.0,
                expected: 1.0,
                lower: 0.0,
                upper: 2.0,
                score: 0.0,
                anomaly: false,
                channels: None,
            })
            .collect()
    }

    /// An open event from `start_ts` to `end_ts`, its peak at the end.
    fn open_event(start_ts: i64, end_ts: i64) -> EventRow {
        EventRow {
            start_ts,
            end_ts,
            peak_ts: end_ts,
            peak_score: 0.9,
            actual: vec![1.0],
            expected: vec![0.0],
            model: "default".into(),
            model_version: "1".into(),
            open: true,
        }
    }

    fn config() -> StreamConfig {
        let model = "default".into();
        StreamConfig {
            channels: 1,
            model,
            sensitivity: 0.5,
            warmup: 10,
            auto_train: false,
            baseline: Baseline::Forecast,
            retention: None,
        }
    }

    fn batch(stream_id: i64, n: i64) -> WriteBatch {
        WriteBatch {
            stream_id,
            create: None,
            readings: readings(n),
            events: Vec::new(),
            update: StreamUpdate {
                last_ts: n,
                readings_added: n,
                anomalies_added: 0,
                readings_count: n,
                snapshot: None,
            },
        }
    }

    /// The writer's fallback on PostgreSQL (sqlx's `Any`, when its own connection does not
    /// open) checks its streams as its own connection does: readings of a missing stream
    /// are refused and nothing of them is stored; the readings table has no foreign key
    /// there to refuse them (migration 0006). Both ways are tried on one database.
    #[tokio::test]
    async fn both_ways_to_postgres_refuse_readings_of_a_missing_stream() {
        let Ok(server) = std::env::var("TSAD_TEST_DATABASE_URL") else {
            let required = std::env::var("TSAD_REQUIRE_POSTGRES").is_ok_and(|v| v == "1");
            assert!(!required, "TSAD_REQUIRE_POSTGRES=1 but TSAD_TEST_DATABASE_URL is not set");
            eprintln!("SKIPPED: PostgreSQL test: TSAD_TEST_DATABASE_URL is not set");
            return;
        };
        let name = format!("tsad_unit_{}_{}", std::process::id(), rand::random::<u32>());
        let admin = Storage::open(&server, Some(1)).await.expect("PostgreSQL reachable");
        query(&format!("CREATE DATABASE {name}")).execute(admin.pool()).await.expect("create database");
        let base = server.rsplit_once('/').map_or(server.as_str(), |(base, _)| base);
        let storage = Storage::connect(&format!("{base}/{name}")).await.expect("connects");
        let id = storage.put_stream("s", &config(), 0).await.expect("stream").id;
        let own = postgres_connection(&storage).await.expect("own connection");
        for (way, pg) in [("Any", None), ("own", Some(own.clone()))] {
            let missing = id + 1000;
            let mut held = Held::new(storage.clone(), pg);
            let err = write(&mut held, &[&batch(missing, 5)]).await.expect_err(way);
            assert!(err.to_string().contains("1 of the 1 streams of a commit do not exist"), "{way}: {err}");
            assert!(storage.readings(missing, None, None, None, 10).await.unwrap().is_empty(), "{way}: nothing stored");
        }
        let mut held = Held::new(storage.clone(), None);
        write(&mut held, &[&batch(id, 5)]).await.expect("Any: a stored stream's readings");
        held.close().await;
        let stored = storage.readings(id, None, None, None, 10).await.unwrap();
        assert_eq!(stored.len(), 5);
        // The own connection's small commits are one statement (`write_in_one_statement`):
        // readings, an event, a scoring state and the stream row together, or nothing.
        let other = storage.put_stream("o", &config(), 0).await.expect("stream").id;
        let mut held = Held::new(storage.clone(), Some(own.clone()));
        let mut lone = batch(other, 5);
        lone.events.push(open_event(3, 4));
        lone.update.anomalies_added = 1;
        lone.update.snapshot = Some(r#"{"s":1}"#.into());
        write(&mut held, &[&lone]).await.expect("own: one statement");
        let stream = storage.stream("o").await.unwrap().expect("stream o");
        assert_eq!((stream.last_ts, stream.readings_count, stream.anomalies_count), (Some(5), 5, 1));
        assert_eq!(stream.snapshot.as_deref(), Some(r#"{"s":1}"#));
        let events =
            AnomalyQuery { stream_id: Some(other), from: None, to: None, min_score: None, after: None, limit: 9 };
        assert_eq!(storage.anomalies(&events).await.unwrap().len(), 1);
        let mut later = batch(other, 3);
        later.readings.iter_mut().for_each(|r| r.ts += 5);
        later.update.last_ts = 8;
        let err = write(&mut held, &[&later, &batch(other + 1000, 2)]).await.expect_err("a missing stream");
        assert!(err.to_string().contains("of the 2 streams of a commit do not exist"), "{err}");
        assert_eq!(storage.readings(other, None, None, None, 10).await.unwrap().len(), 5, "nothing of either");
        assert_eq!(storage.stream("o").await.unwrap().expect("stream o").readings_count, 5);
        write(&mut held, &[&later]).await.expect("own: the stream alone");
        assert_eq!(storage.readings(other, None, None, None, 10).await.unwrap().len(), 8);
        held.close().await;
        own.close().await;
        storage.pool().close().await;
        let _ = query(&format!("DROP DATABASE {name}")).execute(admin.pool()).await;
    }

    async fn sqlite() -> (tempfile::TempDir, Storage, i64) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let storage = Storage::connect(&url).await.expect("opens");
        let id = storage.put_stream("s", &config(), 0).await.expect("stream").id;
        (dir, storage, id)
    }

    /// The bundled SQLite is built with the repository's flags (`.cargo/config.toml`,
    /// `LIBSQLITE3_FLAGS`): no global memory statistics, and `fdatasync` for its syncs. The
    /// second leaves no trace in `compile_options`; both come in the one variable, so a
    /// build that missed it (another `LIBSQLITE3_FLAGS` in the environment, a build outside
    /// the repository's cargo configuration) fails here.
    #[tokio::test]
    async fn the_bundled_sqlite_carries_the_repository_flags() {
        let (_dir, storage, _) = sqlite().await;
        let options: Vec<String> = sqlx::query_scalar::<Any, String>("PRAGMA compile_options")
            .fetch_all(storage.pool())
            .await
            .expect("compile options");
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "built without the repository's flags: {options:?}"
        );
    }

    /// What `Tx::run` relies on in sqlx's SQLite driver (several statements in one query
    /// string being deprecated there): each statement's count of rows affected, reported
    /// in order, its anonymous parameters bound in turn across statements; and a failing
    /// statement failing the call, its transaction then rolled back whole.
    #[tokio::test]
    async fn a_script_reports_each_statement_and_fails_whole() {
        let (_dir, storage, id) = sqlite().await;
        let rows = readings(3);
        let mut conn = Conn::Any(storage.pool().acquire().await.expect("connection").detach());
        fn script<'a>(stream: i64, rows: &'a [(i64, &'a ReadingRow)]) -> Script<'a> {
            let mut script = Script::default();
            script.push(insert_readings_sql(Backend::Sqlite, "readings", rows.len()), Binds::Readings(rows));
            script.push(
                "UPDATE streams SET readings_count = readings_count + ? WHERE id = ?".into(),
                Binds::Params(vec![Param::Int(rows.len() as i64), Param::Int(stream)]),
            );
            script.push(
                "UPDATE streams SET anomalies_count = ? WHERE id = ?".into(),
                Binds::Params(vec![Param::Int(7), Param::Int(stream + 1)]),
            );
            script
        }
        let pairs: Vec<(i64, &ReadingRow)> = rows.iter().map(|r| (id, r)).collect();
        let tx = Tx::begin(&mut conn, Backend::Sqlite).await.expect("begins");
        let affected = tx.run_and_commit(script(id, &pairs), &Rest::default()).await.expect("runs");
        assert_eq!(affected, vec![3, 1, 0], "each statement's own count, in order");
        let Conn::Any(any) = &mut conn else { unreachable!() };
        query("BEGIN").execute(&mut *any).await.expect("committed: no transaction left open");
        query("ROLLBACK").execute(&mut *any).await.expect("rolls back");
        let stream = storage.stream("s").await.expect("reads").expect("exists");
        assert_eq!(stream.readings_count, 3, "the second statement's parameters were its own");
        assert_eq!(stream.anomalies_count, 0);
        // The same readings again: the first statement breaks the primary key; nothing of
        // the script stays after the rollback, not even what ran before the failure.
        let tx = Tx::begin(&mut conn, Backend::Sqlite).await.expect("begins");
        let mut failing = Script::default();
        failing
            .push("UPDATE streams SET readings_count = 100 WHERE id = ?".into(), Binds::Params(vec![Param::Int(id)]));
        failing.statements.extend(script(id, &pairs).statements);
        assert!(tx.run_and_commit(failing, &Rest::default()).await.is_err(), "a duplicate reading fails the script");
        // The script stopped at its failure, short of its `COMMIT`; the writer closes such a
        // connection, which rolls the transaction back.
        let Conn::Any(any) = conn else { unreachable!() };
        any.close().await.expect("closes");
        let stream = storage.stream("s").await.expect("reads").expect("exists");
        assert_eq!(stream.readings_count, 3, "the statement before the failure was rolled back");
        assert_eq!(storage.readings(id, None, None, None, 10).await.expect("reads").len(), 3);
    }

    /// The writer on SQLite: readings of a missing stream are refused, nothing of them is
    /// stored, and the next commit (on a connection taken afresh) goes through.
    #[tokio::test]
    async fn sqlite_refuses_readings_of_a_missing_stream_and_goes_on() {
        let (_dir, storage, id) = sqlite().await;
        let mut held = Held::new(storage.clone(), None);
        let err = write(&mut held, &[&batch(id, 2), &batch(id + 1000, 5)]).await.expect_err("a missing stream");
        assert!(err.to_string().contains("of the 2 streams of a commit do not exist"), "{err}");
        assert!(held.conn.is_none(), "the connection of a failed commit is let go");
        let stored = storage.readings(id, None, None, None, 10).await.expect("reads");
        assert!(stored.is_empty(), "nothing stored");
        let (ids, _) = write(&mut held, &[&batch(id, 40)]).await.expect("a stored stream's readings");
        assert_eq!(ids, vec![id]);
        assert_eq!(storage.readings(id, None, None, None, 100).await.expect("reads").len(), 40);
        let stream = storage.stream("s").await.expect("reads").expect("exists");
        assert_eq!((stream.readings_count, stream.last_ts), (40, Some(40)));
    }

    /// A small commit that only logs readings is one statement through the connection's view
    /// (`log_in_one_statement`): its readings are logged in order, each stream row takes its
    /// batch's update once, and a stream whose row is newer keeps it (the `last_ts` guard).
    /// It still works after a log move has run on the connection, and what does not
    /// qualify (an event, a run for a block, a stream twice) is left to the script.
    #[tokio::test]
    async fn sqlite_logs_a_small_commit_in_one_statement() {
        let (_dir, storage, ids) = sqlite_streams(3).await;
        let mut held = Held::new(storage.clone(), None);
        let (ids_written, logged) = write(&mut held, &[&batch(ids[0], 1), &batch(ids[1], 3)]).await.expect("stored");
        assert_eq!((ids_written, logged), (vec![ids[0], ids[1]], 4));
        let Some(Conn::Any(conn)) = held.conn.as_mut() else { panic!("the writer holds its SQLite connection") };
        let mut step = LogMove::begin(conn).await.expect("begins").expect("a log to move");
        while !step.step(conn).await.expect("moves") {}
        // Stream s2 has moved on (a successor's newer state): its row keeps it.
        sqlx::query("UPDATE streams SET last_ts = 100, readings_count = 7 WHERE id = ?")
            .bind(ids[2])
            .execute(storage.pool())
            .await
            .expect("updates");
        let mut later = batch(ids[1], 2);
        later.readings.iter_mut().for_each(|r| r.ts += 3);
        later.update =
            StreamUpdate { last_ts: 5, readings_added: 2, anomalies_added: 1, readings_count: 5, snapshot: None };
        later.readings[1].anomaly = true;
        let channels = super::super::ChannelValues {
            values: vec![0.5, 1.5],
            expected: vec![0.4, 1.4],
            lower: vec![0.0, 1.0],
            upper: vec![1.0, 2.0],
        };
        later.readings[1].channels = Some(channels.clone());
        let stale = batch(ids[2], 1);
        let Some(Conn::Any(conn)) = held.conn.as_mut() else { unreachable!() };
        let done = log_in_one_statement(conn, &[&later, &stale]).await.expect("runs");
        assert_eq!(done, Some((vec![ids[1], ids[2]], 3)), "the commit qualifies");
        let s1 = storage.stream("s1").await.expect("reads").expect("exists");
        assert_eq!((s1.readings_count, s1.anomalies_count, s1.last_ts), (5, 1, Some(5)));
        let s2 = storage.stream("s2").await.expect("reads").expect("exists");
        assert_eq!((s2.readings_count, s2.last_ts), (7, Some(100)), "the newer row is kept");
        let stored = storage.readings(ids[1], None, None, None, 10).await.expect("reads");
        assert_eq!(stored.iter().map(|r| r.ts).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
        assert!(stored[4].anomaly && !stored[3].anomaly);
        assert_eq!(stored[4].channels, Some(channels));
        assert_eq!(storage.readings(ids[0], None, None, None, 10).await.expect("reads").len(), 1);
        let mut with_event = batch(ids[0], 1);
        with_event.events.push(open_event(1, 1));
        for refused in [vec![&with_event], vec![&stale, &stale], vec![&batch(ids[0], DIRECT_ROWS as i64)]] {
            assert_eq!(log_in_one_statement(conn, &refused).await.expect("runs"), None);
        }
    }

    /// The one-statement commit of a stream that is gone is refused whole: nothing of the other
    /// stream's readings stays, and the next commit on the same connection goes through.
    #[tokio::test]
    async fn sqlite_refuses_a_missing_stream_in_one_statement() {
        let (_dir, storage, ids) = sqlite_streams(2).await;
        sqlx::query("DELETE FROM streams WHERE id = ?").bind(ids[1]).execute(storage.pool()).await.expect("deletes");
        let mut held = Held::new(storage.clone(), None);
        held.conn().await.expect("connects");
        let Some(Conn::Any(conn)) = held.conn.as_mut() else { panic!("the writer holds its SQLite connection") };
        let err = log_in_one_statement(conn, &[&batch(ids[0], 2), &batch(ids[1], 1)]).await.expect_err("refused");
        assert!(err.to_string().contains("some of the 2 streams of a commit do not exist"), "{err}");
        assert_eq!(log_rows(&storage).await, 0, "nothing stored");
        let s = storage.stream("s").await.expect("reads").expect("exists");
        assert_eq!((s.readings_count, s.last_ts), (0, None));
        let done = log_in_one_statement(conn, &[&batch(ids[0], 2)]).await.expect("the next commit goes through");
        assert_eq!(done, Some((vec![ids[0]], 2)));
        assert_eq!(log_rows(&storage).await, 2);
    }

    /// A scratch SQLite database with `n` streams (`sqlite`'s first, then s1, s2, …).
    async fn sqlite_streams(n: usize) -> (tempfile::TempDir, Storage, Vec<i64>) {
        let (dir, storage, first) = sqlite().await;
        let mut ids = vec![first];
        for i in 1..n {
            ids.push(storage.put_stream(&format!("s{i}"), &config(), 0).await.expect("stream").id);
        }
        (dir, storage, ids)
    }

    /// SQLite's check inside the commit's one call: a stream gone in the second statement of
    /// stream updates, in a commit that also creates a stream (its `BEGIN` sent before the
    /// script) and carries blocks and log rows, refuses all of it; without it, all is stored.
    #[tokio::test]
    async fn sqlite_checks_every_update_statement_in_the_commits_one_call() {
        let (_dir, storage, ids) = sqlite_streams(UPDATES_PER_STATEMENT + 100).await;
        let first = ids[0];
        let gone = ids[UPDATES_PER_STATEMENT + 50];
        sqlx::query("DELETE FROM streams WHERE id = ?").bind(gone).execute(storage.pool()).await.expect("deletes");
        let mut batches: Vec<WriteBatch> =
            ids.iter().enumerate().map(|(i, &id)| batch(id, if i % 2 == 0 { 3 } else { 40 })).collect();
        let mut created = batch(0, 35);
        created.create = Some(NewStream { name: "new".into(), config: config(), created_at: 0 });
        batches.push(created);
        // The connection has moved a log before: the check is still there.
        let mut held = Held::new(storage.clone(), None);
        let moved = storage.put_stream("moved", &config(), 0).await.expect("stream").id;
        write(&mut held, &[&batch(moved, 2)]).await.expect("logged");
        let Some(Conn::Any(conn)) = held.conn.as_mut() else { panic!("the writer holds its SQLite connection") };
        let mut step = LogMove::begin(conn).await.expect("begins").expect("a log to move");
        while !step.step(conn).await.expect("moves") {}
        let all: Vec<&WriteBatch> = batches.iter().collect();
        let err = write(&mut held, &all).await.expect_err("a stream is gone");
        assert!(
            err.to_string().contains(&format!("of the {} streams of a commit do not exist", ids.len() + 1)),
            "{err}"
        );
        assert!(storage.stream("new").await.expect("reads").is_none(), "the new stream was not created");
        for &id in [first, ids[1], ids[UPDATES_PER_STATEMENT + 51]].iter() {
            assert!(storage.readings(id, None, None, None, 100).await.expect("reads").is_empty(), "nothing stored");
        }
        let kept: Vec<&WriteBatch> = all.into_iter().filter(|b| b.stream_id != gone).collect();
        let (written, _) = write(&mut held, &kept).await.expect("every stream exists");
        assert_eq!(written.len(), kept.len());
        assert_eq!(storage.readings(ids[1], None, None, None, 100).await.expect("reads").len(), 40);
        assert_eq!(storage.readings(first, None, None, None, 100).await.expect("reads").len(), 3);
        let new = storage.stream("new").await.expect("reads").expect("created");
        assert_eq!((new.readings_count, new.last_ts), (35, Some(35)));
    }

    /// Large statements run in calls of their own (`ALONE_BINDS`), the transaction open
    /// across them: a stream missing from the first such update still fails the whole commit,
    /// and the next commit on the same connection goes through.
    #[tokio::test]
    async fn sqlite_refuses_a_missing_stream_in_a_statement_run_alone() {
        let (_dir, storage, ids) = sqlite_streams(UPDATES_PER_STATEMENT + 20).await;
        // 520 streams: the first 500 rows' update (2,000 parameters) and 1,040 readings
        // (9,360) go alone, the other 20 rows' update with the rest.
        const { assert!(4 * UPDATES_PER_STATEMENT >= ALONE_BINDS && 9 * ROWS_PER_STATEMENT >= ALONE_BINDS) };
        let gone = ids[7];
        sqlx::query("DELETE FROM streams WHERE id = ?").bind(gone).execute(storage.pool()).await.expect("deletes");
        let batches: Vec<WriteBatch> = ids.iter().map(|&id| batch(id, 2)).collect();
        let mut held = Held::new(storage.clone(), None);
        let all: Vec<&WriteBatch> = batches.iter().collect();
        let err = write(&mut held, &all).await.expect_err("a stream is gone");
        assert!(err.to_string().contains(&format!("of the {} streams of a commit do not exist", ids.len())), "{err}");
        assert_eq!(log_rows(&storage).await, 0, "nothing stored");
        let kept: Vec<&WriteBatch> = all.into_iter().filter(|b| b.stream_id != gone).collect();
        let (written, logged) = write(&mut held, &kept).await.expect("every stream exists");
        assert_eq!((written.len(), logged), (kept.len(), 2 * kept.len()));
        assert_eq!(log_rows(&storage).await, 2 * kept.len() as i64);
        let last = storage.stream("s519").await.expect("reads").expect("exists");
        assert_eq!((last.readings_count, last.last_ts), (2, Some(2)));
    }

    async fn log_rows(storage: &Storage) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM readings_log").fetch_one(storage.pool()).await.expect("counts")
    }

    /// A move of the log in steps, commits between them: while a reading is in the log and a
    /// block reads return it once; rows logged after the move began stay in the log; at the
    /// end the moved rows are in blocks only, a block for each stream.
    #[tokio::test]
    async fn a_log_move_in_steps_shows_each_reading_once_and_keeps_later_rows() {
        let (_dir, storage, id) = sqlite().await;
        let other = storage.put_stream("t", &config(), 0).await.expect("stream").id;
        let mut held = Held::new(storage.clone(), None);
        write(&mut held, &[&batch(id, 3), &batch(other, 3)]).await.expect("logged");
        assert_eq!(log_rows(&storage).await, 6, "short runs go to the log");
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        let mut m = LogMove::begin(&mut conn).await.expect("begins").expect("a log to move");
        let mut later = batch(id, 6);
        later.readings.drain(..3);
        write(&mut held, &[&later]).await.expect("logged during the move");
        let mut steps = 0;
        while !m.step(&mut conn).await.expect("steps") {
            steps += 1;
            let got = storage.readings(id, None, None, None, 100).await.expect("reads");
            assert_eq!(got.iter().map(|r| r.ts).collect::<Vec<_>>(), (1..=6).collect::<Vec<_>>(), "step {steps}");
            assert_eq!(storage.recent_readings(other, 100).await.expect("reads").len(), 3, "step {steps}");
        }
        assert!(steps >= 2, "sorted, copied, then trimmed: {steps} steps before the last");
        assert_eq!(m.rows, 6);
        assert_eq!(log_rows(&storage).await, 3, "the rows logged during the move wait for the next");
        assert_eq!(block_spans(&storage, id).await, [(1, 3)]);
        assert_eq!(block_spans(&storage, other).await, [(1, 3)]);
        assert_eq!(count(&storage, "readings").await, 0);
        assert_eq!(storage.readings(id, None, None, None, 100).await.expect("reads").len(), 6);
    }

    /// A stream's blocks as (first, last) in time order, checked not to overlap.
    async fn block_spans(storage: &Storage, stream: i64) -> Vec<(i64, i64)> {
        let spans: Vec<(i64, i64)> =
            sqlx::query_as("SELECT first_ts, last_ts FROM reading_blocks WHERE stream_id = $1 ORDER BY last_ts")
                .bind(stream)
                .fetch_all(storage.pool())
                .await
                .expect("reads blocks");
        for pair in spans.windows(2) {
            assert!(pair[0].1 < pair[1].0, "blocks overlap: {spans:?}");
        }
        spans
    }

    /// A move cut short after its copy (a crash, an error) leaves its blocks and the log as
    /// they were; reads show each reading once, and the next move stores only what no block
    /// holds, split around the blocks between a stream's logged rows.
    #[tokio::test]
    async fn a_move_cut_short_after_its_copy_is_finished_by_the_next() {
        let (_dir, storage, id) = sqlite().await;
        let mut held = Held::new(storage.clone(), None);
        for (first, last) in [(1, 3), (4, 10), (11, 12)] {
            write(&mut held, &[&run_of(id, first, last)]).await.expect("commits");
        }
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        let mut m = LogMove::begin(&mut conn).await.expect("begins").expect("a log to move");
        assert!(!m.step(&mut conn).await.expect("sorts"));
        assert!(!m.step(&mut conn).await.expect("copies"));
        assert_eq!(m.rows, 5, "copied, not trimmed: the move is left there");
        assert_eq!(block_spans(&storage, id).await, [(1, 3), (4, 10), (11, 12)]);
        assert_eq!(log_rows(&storage).await, 5, "not trimmed");
        let ts = |got: Vec<ReadingRow>| got.iter().map(|r| r.ts).collect::<Vec<_>>();
        assert_eq!(ts(storage.readings(id, None, None, None, 100).await.expect("reads")), (1..=12).collect::<Vec<_>>());
        assert_eq!(ts(storage.recent_readings(id, 4).await.expect("reads")), (9..=12).collect::<Vec<_>>());
        write(&mut held, &[&run_of(id, 13, 13)]).await.expect("commits");
        assert_eq!(crate::storage::move_log(&mut conn).await.expect("moves"), 1, "only the new reading");
        assert_eq!(log_rows(&storage).await, 0);
        assert_eq!(block_spans(&storage, id).await, [(1, 3), (4, 10), (11, 12), (13, 13)]);
        let got = storage.readings(id, None, None, None, 100).await.expect("reads");
        assert_eq!(
            got.iter().map(|r| (r.ts, r.value)).collect::<Vec<_>>(),
            (1..=13).map(|t| (t, t as f64 / 4.0)).collect::<Vec<_>>()
        );
    }

    /// The retention after a move cut short between its copy and its trim (a crash): the
    /// block the copy wrote is past the retention, its readings still in the log. The
    /// writer deletes nothing before a move has ended; deleted first, the block would be
    /// written again from the log by the next move, its readings counted deleted and
    /// stored.
    #[tokio::test]
    async fn the_retention_waits_for_a_move_cut_short_to_end() {
        let (_dir, storage, id) = sqlite().await;
        let mut held = Held::new(storage.clone(), None);
        for (first, last) in [(1, 3), (4, 6), (7, 9)] {
            write(&mut held, &[&run_of(id, first, last)]).await.expect("logged");
        }
        let mut state = run_of(id, 10, 100);
        state.update.snapshot = Some("{}".into());
        write(&mut held, &[&state]).await.expect("a block and the state");
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        let mut m = LogMove::begin(&mut conn).await.expect("begins").expect("a log to move");
        assert!(!m.step(&mut conn).await.expect("sorts"));
        assert!(!m.step(&mut conn).await.expect("copies"));
        assert_eq!(block_spans(&storage, id).await, [(1, 9), (10, 100)]);
        assert_eq!(log_rows(&storage).await, 9, "copied, not trimmed: the move is left there");
        drop((m, conn, held));

        let (writer, task) = Writer::spawn(storage.clone(), 16, Metrics::new());
        let expired = storage.expire_readings(Some(50), &writer).await.expect("a pass");
        assert_eq!((expired.streams, expired.readings), (1, 9));
        drop(writer);
        task.await.expect("the writer stops");
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        assert_eq!(crate::storage::move_log(&mut conn).await.expect("moves"), 0, "the next move finds nothing");
        assert_eq!(log_rows(&storage).await, 0);
        assert_eq!(block_spans(&storage, id).await, [(10, 100)], "the block is not written again");
        let record = storage.stream("s").await.expect("reads").expect("the stream");
        assert_eq!(record.readings_count - record.readings_expired, 91, "the count is the readings stored");
        assert_eq!(storage.readings(id, None, None, None, 1_000).await.expect("reads").len(), 91);
    }

    /// A stream deleted during a move does not get its readings back from the move's copy,
    /// and rows logged after the log was emptied (SQLite then reuses row ids) survive its
    /// trim.
    #[tokio::test]
    async fn a_log_move_skips_deleted_streams_and_keeps_rows_with_reused_ids() {
        let (_dir, storage, id) = sqlite().await;
        let other = storage.put_stream("t", &config(), 0).await.expect("stream").id;
        let mut held = Held::new(storage.clone(), None);
        write(&mut held, &[&batch(other, 3)]).await.expect("logged");
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        let mut m = LogMove::begin(&mut conn).await.expect("begins").expect("a log to move");
        assert!(!m.step(&mut conn).await.expect("sorts"));
        assert!(storage.delete_stream(other).await.expect("deletes"));
        assert_eq!(log_rows(&storage).await, 0, "the deletion emptied the log");
        write(&mut held, &[&batch(id, 3)]).await.expect("logged after");
        while !m.step(&mut conn).await.expect("steps") {}
        assert_eq!(m.rows, 0, "nothing of the deleted stream copied");
        assert!(block_spans(&storage, other).await.is_empty());
        assert_eq!(log_rows(&storage).await, 3, "the later rows, on reused row ids, are still logged");
        assert_eq!(storage.readings(id, None, None, None, 100).await.expect("reads").len(), 3);
    }

    /// The writer moves its log from what it logged (its mirror): a stream's rows become a
    /// block up to each block of its own committed between them; a deleted stream's rows
    /// are not moved; every reading reads back once, values and all, and the log is empty.
    #[tokio::test]
    async fn the_writer_moves_the_log_it_mirrored_into_blocks() {
        let (_dir, storage, id) = sqlite().await;
        let other = storage.put_stream("t", &config(), 0).await.expect("stream").id;
        let gone = storage.put_stream("u", &config(), 0).await.expect("stream").id;
        // The writer's own account of its commits and its moves' steps (`run` without the
        // queue, so that each step is taken here rather than after an idle second).
        let (mut held, mut log, metrics) = (Held::new(storage.clone(), None), Log::empty(), Metrics::new());
        // id: 1–3 logged, 4–10 a block, 11–12 logged, 13 logged, 14–20 a block; other: 1–2
        // logged twice, in one commit and in the next.
        for commit in [
            vec![run_of(id, 1, 3), run_of(other, 1, 1)],
            vec![run_of(id, 4, 10), run_of(id, 11, 12), run_of(other, 2, 2)],
            vec![run_of(id, 13, 13), run_of(id, 14, 20), run_of(gone, 1, 2)],
        ] {
            let (ids, _) = write(&mut held, &commit.iter().collect::<Vec<_>>()).await.expect("commits");
            log.logged(Backend::Sqlite, commit, &ids, &metrics);
        }
        assert!(storage.delete_stream(gone).await.expect("deletes"));
        log.advance(&mut held, &metrics).await;
        assert!(matches!(log.moving, Some((Moving::Mirrored(_), ..))), "a move from the mirror");
        while log.moving.is_some() {
            log.advance(&mut held, &metrics).await;
        }
        assert_eq!(log_rows(&storage).await, 0);
        assert_eq!(block_spans(&storage, id).await, [(1, 3), (4, 10), (11, 13), (14, 20)]);
        assert_eq!(block_spans(&storage, other).await, [(1, 2)]);
        assert!(block_spans(&storage, gone).await.is_empty());
        assert_eq!(count(&storage, "readings").await, 0);
        let got = storage.readings(id, None, None, None, 100).await.expect("reads");
        assert_eq!(
            got.iter().map(|r| (r.ts, r.value)).collect::<Vec<_>>(),
            (1..=20).map(|t| (t, t as f64 / 4.0)).collect::<Vec<_>>()
        );
    }

    /// A move from the writer's mirror cut short after writing its blocks leaves the log as
    /// it was; the move from the log that follows it stores nothing twice.
    #[tokio::test]
    async fn a_mirrored_move_cut_short_is_finished_from_the_log() {
        let (_dir, storage, id) = sqlite().await;
        let mut held = Held::new(storage.clone(), None);
        let (mut log, metrics) = (Log::empty(), Metrics::new());
        for (first, last) in [(1, 3), (4, 10), (11, 12)] {
            let run = run_of(id, first, last);
            write(&mut held, &[&run]).await.expect("commits");
            log.logged(Backend::Sqlite, vec![run], &[id], &metrics);
        }
        let mirror = log.mirror.take().expect("the writer's mirror");
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        let mut m = MirroredMove::begin(&mut conn, mirror).await.expect("begins").expect("a log to move");
        assert!(!m.step(&mut conn).await.expect("writes the blocks"));
        assert_eq!(m.rows, 5, "written, not trimmed: the move is left there");
        assert_eq!(block_spans(&storage, id).await, [(1, 3), (4, 10), (11, 12)]);
        assert_eq!(log_rows(&storage).await, 5, "not trimmed");
        assert_eq!(storage.readings(id, None, None, None, 100).await.expect("reads").len(), 12);
        assert_eq!(crate::storage::move_log(&mut conn).await.expect("moves"), 0, "nothing more to store");
        assert_eq!(log_rows(&storage).await, 0);
        assert_eq!(block_spans(&storage, id).await, [(1, 3), (4, 10), (11, 12)]);
        assert_eq!(storage.readings(id, None, None, None, 100).await.expect("reads").len(), 12);
    }

    /// Rows in the log that the writer's mirror lacks (another process logging to the same
    /// database) stop a move from the mirror before it deletes anything; the move from the
    /// log itself then takes them all.
    #[tokio::test]
    async fn a_mirrored_move_refuses_a_log_it_did_not_write() {
        let (_dir, storage, id) = sqlite().await;
        let other = storage.put_stream("t", &config(), 0).await.expect("stream").id;
        let mut held = Held::new(storage.clone(), None);
        let mut mirror = Mirror::default();
        let mine = run_of(id, 1, 2);
        write(&mut held, &[&mine]).await.expect("commits");
        mirror.logged(id, mine.readings);
        write(&mut held, &[&run_of(other, 1, 3)]).await.expect("commits, unseen by the mirror");
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        let err = MirroredMove::begin(&mut conn, mirror).await.expect_err("rows it did not log");
        assert!(err.to_string().contains("another process"), "{err}");
        assert_eq!(log_rows(&storage).await, 5, "nothing deleted");
        assert_eq!(crate::storage::move_log(&mut conn).await.expect("moves"), 5);
        assert_eq!(block_spans(&storage, other).await, [(1, 3)]);
    }

    /// Readings `first..=last` of a stream, each value its own (`ts / 4`).
    fn run_of(stream_id: i64, first: i64, last: i64) -> WriteBatch {
        let mut b = batch(stream_id, last);
        b.readings.retain(|r| r.ts >= first);
        for r in &mut b.readings {
            r.value = r.ts as f64 / 4.0;
        }
        b.update.readings_added = last - first + 1;
        b
    }

    async fn count(storage: &Storage, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(storage.pool()).await.expect("counts")
    }

    /// On SQLite, runs of 4 readings or more are one block each, shorter ones logged, and a
    /// stream's readings interleave in time across the blocks (the log's moved too, split
    /// around the others), the log and `readings` (where moves put the log before blocks):
    /// every window `readings` reads, and every `recent_readings`, is the one a
    /// single table would give, values and all; a stream's deletion takes its blocks; a block
    /// of a missing stream is refused with nothing stored.
    #[tokio::test]
    async fn reads_take_blocks_the_log_and_rows_in_time_order() {
        let (_dir, storage, id) = sqlite().await;
        let mut held = Held::new(storage.clone(), None);
        // 1–3 logged, 4–43 a block, 44–45 logged, the log moved (two blocks); 46–145 a block, 146
        // logged, 147–178 a block; 179–180 rows of `readings`.
        for (first, last) in [(1, 3), (4, 43), (44, 45)] {
            write(&mut held, &[&run_of(id, first, last)]).await.expect("commits");
        }
        let mut conn = storage.pool().acquire().await.expect("connection").detach();
        assert_eq!(crate::storage::move_log(&mut conn).await.expect("moves"), 5);
        assert_eq!(block_spans(&storage, id).await, [(1, 3), (4, 43), (44, 45)], "split around the block");
        for (first, last) in [(46, 145), (146, 146), (147, 178)] {
            write(&mut held, &[&run_of(id, first, last)]).await.expect("commits");
        }
        // Rows of `readings`, where moves put the log before blocks.
        for r in run_of(id, 179, 180).readings {
            sqlx::query(
                "INSERT INTO readings (stream_id, ts, value, expected, lower, upper, score, anomaly) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(r.ts)
            .bind(r.value)
            .bind(r.expected)
            .bind(r.lower)
            .bind(r.upper)
            .bind(r.score)
            .bind(i64::from(r.anomaly))
            .execute(storage.pool())
            .await
            .expect("a row");
        }
        let (rows, logged, blocks) = (
            count(&storage, "readings").await,
            count(&storage, "readings_log").await,
            count(&storage, "reading_blocks").await,
        );
        assert_eq!((rows, logged, blocks), (2, 1, 5), "rows, logged, blocks");
        let all: Vec<(i64, f64)> = (1..=180).map(|ts| (ts, ts as f64 / 4.0)).collect();
        let pairs = |got: Vec<ReadingRow>| got.iter().map(|r| (r.ts, r.value)).collect::<Vec<_>>();
        for (from, to, after, limit) in [
            (None, None, None, 1000),
            (None, None, None, 10),
            (Some(2), Some(50), None, 1000),
            (Some(40), None, None, 7),
            (Some(44), Some(47), None, 100),
            (None, Some(147), Some(100), 1000),
            (Some(146), Some(147), None, 5),
            (Some(179), None, None, 5),
            (None, None, Some(177), 5),
            (Some(60), Some(60), None, 5),
            (None, None, None, 0),
        ] {
            let want: Vec<(i64, f64)> = all
                .iter()
                .filter(|(ts, _)| {
                    from.is_none_or(|f| *ts >= f) && to.is_none_or(|t| *ts < t) && after.is_none_or(|a| *ts > a)
                })
                .take(limit)
                .copied()
                .collect();
            let got = storage.readings(id, from, to, after, limit as i64).await.expect("reads");
            assert_eq!(pairs(got), want, "from {from:?} to {to:?} after {after:?} limit {limit}");
        }
        for limit in [0, 1, 2, 3, 35, 42, 135, 136, 177, 180, 500] {
            let got = storage.recent_readings(id, limit as i64).await.expect("reads");
            assert_eq!(pairs(got), all[all.len().saturating_sub(limit)..], "recent {limit}");
        }
        let err = write(&mut held, &[&run_of(id + 1000, 1, 40)]).await.expect_err("a missing stream");
        assert!(err.to_string().contains("1 of the 1 streams of a commit do not exist"), "{err}");
        assert_eq!(count(&storage, "reading_blocks").await, 5, "nothing of it stored");
        assert!(storage.delete_stream(id).await.expect("deletes"));
        assert_eq!(count(&storage, "reading_blocks").await, 0, "a deletion takes the blocks");
        assert_eq!(count(&storage, "readings").await, 0, "and the rows");
    }

    /// A scratch SQLite database migrated up to `version`, with one stream (id 1) whose last
    /// reading is at `last_ts`: its directory (keep it), its URL and a pool on it.
    async fn database_at(version: i64, last_ts: i64) -> (tempfile::TempDir, String, sqlx::SqlitePool) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
        let pool = sqlx::SqlitePool::connect(&url).await.expect("opens");
        let mut before = sqlx::migrate!("./migrations/sqlite");
        before.migrations =
            before.migrations.iter().filter(|m| m.version <= version).cloned().collect::<Vec<_>>().into();
        before.run(&pool).await.expect("migrates");
        sqlx::query(
            "INSERT INTO streams (name, channels, model, sensitivity, warmup, auto_train, created_at, last_ts) \
             VALUES ('s', 1, 'default', 3.0, 10, 0, 0, ?)",
        )
        .bind(last_ts)
        .execute(&pool)
        .await
        .expect("a stream");
        (dir, url, pool)
    }

    /// A log written before migration 0009 (plain row ids) keeps its rows through it, and
    /// the move at the start takes them into a block.
    #[tokio::test]
    async fn a_log_written_before_0009_is_moved_at_the_start() {
        let (_dir, url, pool) = database_at(8, 3).await;
        {
            for ts in 1..=3 {
                sqlx::query(
                    "INSERT INTO readings_log (stream_id, ts, value, expected, lower, upper, score, anomaly) \
                     VALUES (1, ?, ?, 0, -1, 1, 0.5, 0)",
                )
                .bind(ts)
                .bind(ts as f64 / 4.0)
                .execute(&pool)
                .await
                .expect("a logged reading");
            }
            pool.close().await;
        }
        let storage = Storage::connect(&url).await.expect("migrates through 0009");
        assert_eq!(log_rows(&storage).await, 0, "moved at the start");
        assert_eq!(block_spans(&storage, 1).await, [(1, 3)]);
        let got = storage.readings(1, None, None, None, 10).await.expect("reads");
        assert_eq!(got.iter().map(|r| (r.ts, r.value)).collect::<Vec<_>>(), [(1, 0.25), (2, 0.5), (3, 0.75)]);
    }

    /// A database whose blocks were written before migration 0008 (the WITHOUT ROWID table
    /// of 0007) keeps every one through it: reads give back each reading exactly, a block
    /// of a time already stored is still refused, and new blocks go in beside the old.
    #[tokio::test]
    async fn blocks_written_before_0008_survive_it() {
        let old: Vec<ReadingRow> =
            [run_of(1, 1, 40), run_of(1, 41, 140)].into_iter().flat_map(|b| b.readings).collect();
        let (_dir, url, pool) = database_at(7, 140).await;
        {
            for run in [&old[..40], &old[40..]] {
                let (first, last) = (run[0].ts, run[run.len() - 1].ts);
                sqlx::query("INSERT INTO reading_blocks VALUES (1, ?, ?, ?, ?)")
                    .bind(last)
                    .bind(first)
                    .bind(run.len() as i64)
                    .bind(super::super::blocks::encode(run).expect("encodes"))
                    .execute(&pool)
                    .await
                    .expect("a block");
            }
            pool.close().await;
        }
        let storage = Storage::connect(&url).await.expect("migrates through 0008");
        assert_eq!(storage.readings(1, None, None, None, 1000).await.expect("reads"), old);
        assert_eq!(storage.recent_readings(1, 30).await.expect("reads"), old[110..]);
        let mut held = Held::new(storage.clone(), None);
        let err = write(&mut held, &[&run_of(1, 101, 140)]).await.expect_err("a block already stored");
        assert!(err.to_string().contains("UNIQUE"), "{err}");
        write(&mut held, &[&run_of(1, 141, 180)]).await.expect("a new block");
        assert_eq!(count(&storage, "reading_blocks").await, 3);
        assert_eq!(storage.readings(1, Some(131), Some(151), None, 1000).await.expect("reads").len(), 20);
    }
}
