//! The streams of a running service: a registry of per-stream actors ([`actor`]), created on
//! demand, evicted when idle, restored from storage when they come back.
//!
//! [`Streams::ingest`] is the ingest path: it takes every stream of a request in turn (the
//! stream's lock: its actor's `actor::Cell`), judges each stream's readings, commits all
//! their rows in one transaction through the writer while it takes the network steps the
//! streams' lone readings left for after their verdicts in one call, answers, then applies
//! each stream's new state (the steps' results only if the commit succeeded) and gives
//! their turns back. Nothing here knows about HTTP.
pub mod actor;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::inference::{InferenceError, InferencePool, InferenceResult, ModelCatalog, ModelInfo};
use crate::metrics::Metrics;
use crate::scoring::{Baseline, Verdict};
use crate::storage::{now_ms, Storage, StorageError, StreamConfig, StreamRecord, Writer};
use actor::{Actor, Cell, Command, Committed, Flow, Handed, PendingStep, Prepared, StateBudget};

/// Models fitted to one stream by automatic training are named this plus the stream's id.
pub const AUTO_MODEL_PREFIX: &str = "auto-";

/// Actors stopped at once by a shutdown or a model swap. Each writes its scoring state as it
/// stops, and the writer commits the states queued together in one transaction: stopped one
/// after another, each state was a commit of its own, and a million streams took minutes to
/// stop (docs/PERFORMANCE.md). Well below the writer's default queue (4,096), which refuses
/// what overflows (a state refused is caught up from the stored readings at the next start).
const STOPPING_AT_ONCE: usize = 256;

/// Fewest readings a stream needs before it is fitted a model of its own (whatever its
/// warm-up): enough for training and validation windows of the automatic fit.
pub const AUTO_FIT_MIN_READINGS: u64 = 512;

/// One validated reading: a timestamp (Unix ms) and a value per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub ts: i64,
    pub values: Vec<f64>,
}

/// A reading with its verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingVerdict {
    pub ts: i64,
    pub values: crate::scoring::PerChannel,
    pub verdict: Verdict,
}

/// The result of ingesting one stream's readings.
#[derive(Debug, Clone)]
pub struct IngestOutcome {
    pub stream: String,
    pub accepted: usize,
    pub verdicts: Vec<ReadingVerdict>,
}

/// What a stream reports about itself.
#[derive(Debug, Clone)]
pub struct StreamStatus {
    pub record: StreamRecord,
    pub model_version: String,
    /// Readings judged since the stream was created (including warm-up).
    pub judged: u64,
    pub last_ts: Option<i64>,
}

/// Why readings were not accepted. Nothing was stored in any case.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Invalid(String),
    #[error("timestamp {ts} is not after the stream's last reading ({last}) and no reading is stored at it")]
    OutOfOrder { ts: i64, last: i64 },
    /// A retried reading whose timestamp is stored with other values.
    #[error("a reading at timestamp {ts} is already stored with a different value")]
    Conflicting { ts: i64 },
    #[error("stream {0} does not exist")]
    UnknownStream(String),
    #[error("{0}")]
    Config(String),
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Clone)]
struct Handle {
    /// flume's channel, not tokio's: tokio allocates a block of 32 slots per channel up
    /// front, ~700 bytes more per idle actor (docs/PERFORMANCE.md, memory).
    tx: flume::Sender<Command>,
    generation: u64,
    /// The model the stream is bound to, to find the streams a model swap concerns (shared:
    /// a handle is cloned for every request).
    model: Arc<str>,
    /// The actor, taken in turn by the requests that judge with it.
    cell: Cell,
    /// Requests holding or awaiting the stream's turn: at most one holds it, and at most
    /// `--mailbox` wait; more are refused (429).
    queued: Arc<AtomicU32>,
}

impl Handle {
    /// A place in the stream's queue, or `Overloaded` when `mailbox` requests already wait.
    fn ticket(&self, mailbox: usize, metrics: &Metrics) -> Result<Ticket, IngestError> {
        let ahead = self.queued.fetch_add(1, Ordering::Relaxed);
        let ticket = Ticket(self.queued.clone());
        metrics.mailbox_depth.observe(f64::from(ahead));
        if ahead as usize > mailbox {
            return Err(IngestError::Overloaded("stream mailbox full"));
        }
        Ok(ticket)
    }
}

/// A request's place in a stream's queue, given up when dropped.
struct Ticket(Arc<AtomicU32>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

type Guard = tokio::sync::OwnedMutexGuard<Option<Actor>>;

/// A request's turn at a stream: its actor, held until the request's commit is decided.
struct Turn {
    guard: Guard,
    generation: u64,
    _ticket: Ticket,
}

impl Turn {
    /// The actor (a turn is only made of a guard that holds one).
    fn actor(&self) -> &Actor {
        self.guard.as_ref().expect("a turn holds a running actor")
    }

    fn actor_mut(&mut self) -> &mut Actor {
        self.guard.as_mut().expect("a turn holds a running actor")
    }
}

/// Where a request stands at one of its streams once it has queued for all of them.
enum Place {
    Held(Turn),
    /// Queued behind other requests (the lock's future was polled once, which queues it).
    Waiting {
        lock: Pin<Box<dyn Future<Output = Guard> + Send>>,
        generation: u64,
        ticket: Ticket,
    },
}

/// State shared by the registry and every actor.
pub(crate) struct Shared {
    /// Where actors announce streams that reached their warm-up with `auto_train` on;
    /// `None` when automatic fitting is off.
    pub(crate) auto_fit: Mutex<Option<mpsc::UnboundedSender<String>>>,
    /// Streams announced for automatic fitting whose fit has not ended yet. Entered by the
    /// actor when it announces (so there is no moment a fit is due but not visible), left
    /// by the fitter.
    pub(crate) fitting: Mutex<std::collections::HashSet<String>>,
    /// Actors in memory, by stream name.
    actors: Mutex<HashMap<String, Handle>>,
    /// Active model of each name, read once from disk.
    models: Mutex<HashMap<String, Arc<ModelInfo>>>,
    catalog: ModelCatalog,
    pub(crate) storage: Storage,
    writer: Writer,
    pub(crate) inference: InferencePool,
    pub(crate) metrics: Metrics,
    mailbox: usize,
    max_active: usize,
    pub(crate) idle_evict: Duration,
    commit_timeout: Duration,
    generation: AtomicU64,
    /// Orders multi-stream requests: each queues for all its streams' turns under this
    /// lock, so two of them never wait on each other's streams (a single-stream request, and
    /// a stream's task, never wait on another stream while they hold one).
    multi: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    /// Told whenever a stream's settings are put: the retention's task finds its shortest
    /// retention again (a stream's own may be shorter than the service's).
    retention_changed: Arc<tokio::sync::Notify>,
}

impl Shared {
    pub(crate) fn model(&self, name: &str) -> Result<Arc<ModelInfo>, IngestError> {
        if let Some(m) = self.models.lock().expect("model cache lock").get(name) {
            return Ok(m.clone());
        }
        let model = self.catalog.active(name).map_err(|e| IngestError::Config(e.to_string()))?;
        self.models.lock().expect("model cache lock").insert(name.to_string(), model.clone());
        Ok(model)
    }

    /// Removes an actor from the registry (if it is still the registered one).
    pub(crate) fn retire(&self, name: &str, generation: u64) {
        let mut actors = self.actors.lock().expect("actor registry lock");
        if actors.get(name).is_some_and(|h| h.generation == generation) {
            actors.remove(name);
        }
    }
}

/// Takes the single steps the streams of a request left for after their verdicts
/// (`(index in the request, step)`), while the request's commit runs: one inference call a
/// model and at most `--max-batch` rows, the calls at once. A request of one reading of each
/// of 1,000 streams makes one call of 1,000 rows instead of 1,000 calls, each with its
/// channel, reply and wake-up (docs/PERFORMANCE.md). Returns, for each of the request's
/// `streams`, its step's result and its first row there (`None` for a stream that left no
/// step).
async fn take_steps(
    inference: &InferencePool,
    streams: usize,
    steps: Vec<(usize, PendingStep)>,
) -> Vec<Option<Result<(Arc<InferenceResult>, usize), InferenceError>>> {
    // Calls of one model each, cut between streams once they reach the batch size.
    let mut calls: Vec<Vec<(usize, PendingStep)>> = Vec::new();
    let mut rest = steps;
    while let Some((_, first)) = rest.first() {
        let model = first.model.clone();
        let (same, other): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|(_, s)| s.model.name == model.name && s.model.version == model.version);
        rest = other;
        let mut rows = 0;
        for step in same {
            if rows == 0 || rows + step.1.rows > inference.max_batch() {
                calls.push(Vec::new());
                rows = 0;
            }
            rows += step.1.rows;
            calls.last_mut().expect("pushed above").push(step);
        }
    }
    let results = futures::future::join_all(calls.iter().map(|call| {
        let rows: usize = call.iter().map(|(_, s)| s.rows).sum();
        let model = call[0].1.model.clone();
        let mut inputs = Vec::with_capacity(rows * model.input_size);
        let mut state = Vec::with_capacity(rows * model.state_len);
        for (_, s) in call {
            inputs.extend_from_slice(&s.inputs);
            state.extend_from_slice(&s.state);
        }
        inference.run(model, rows, 1, inputs, state)
    }))
    .await;
    let mut taken: Vec<_> = (0..streams).map(|_| None).collect();
    for (call, result) in calls.into_iter().zip(results) {
        let result = result.map(Arc::new);
        let mut row = 0;
        for (i, s) in call {
            taken[i] = Some(result.clone().map(|r| (r, row)));
            row += s.rows;
        }
    }
    taken
}

/// The channels a stream gets when `readings` create it: those of its first reading.
fn created_with(readings: &[Reading]) -> Option<usize> {
    Some(readings.first().map_or(1, |r| r.values.len()))
}

/// Judges a stream's readings in the request's turn at it.
async fn judge_turn(
    turn: Turn,
    readings: &[Reading],
    arrived: Instant,
    budget: &StateBudget,
) -> Result<(Turn, Prepared, Handed), IngestError> {
    let (prepared, handed) = turn.actor().judge_ingest(readings, arrived, budget).await?;
    Ok((turn, prepared, handed))
}

/// Defaults for streams created by their first reading.
#[derive(Debug, Clone)]
pub struct StreamDefaults {
    pub model: String,
    pub warmup: u64,
    pub sensitivity: f64,
}

/// The registry of streams. Cheap to clone.
#[derive(Clone)]
pub struct Streams {
    shared: Arc<Shared>,
    defaults: StreamDefaults,
}

/// Tuning of the registry.
#[derive(Debug, Clone)]
pub struct StreamLimits {
    pub mailbox: usize,
    pub max_active: usize,
    pub idle_evict: Duration,
    /// How long a request's commit may go unanswered before its streams take its outcome as
    /// unknown (the database may hold it or not) and reload their state from storage; the
    /// request is answered 503. One timer a request: each actor's own, one a stream a
    /// request, cost a share of the runtime's time at many streams a request
    /// (docs/PERFORMANCE.md).
    pub commit_timeout: Duration,
}

impl Streams {
    pub fn new(
        storage: Storage,
        writer: Writer,
        inference: InferencePool,
        catalog: ModelCatalog,
        metrics: Metrics,
        limits: StreamLimits,
        defaults: StreamDefaults,
    ) -> Streams {
        let shared = Shared {
            auto_fit: Mutex::new(None),
            fitting: Mutex::new(std::collections::HashSet::new()),
            actors: Mutex::new(HashMap::new()),
            models: Mutex::new(HashMap::new()),
            catalog,
            storage,
            writer,
            inference,
            metrics,
            mailbox: limits.mailbox,
            max_active: limits.max_active,
            idle_evict: limits.idle_evict,
            commit_timeout: limits.commit_timeout,
            generation: AtomicU64::new(0),
            multi: tokio::sync::Mutex::new(()),
            tracker: TaskTracker::new(),
            retention_changed: Arc::new(tokio::sync::Notify::new()),
        };
        Streams { shared: Arc::new(shared), defaults }
    }

    pub fn storage(&self) -> &Storage {
        &self.shared.storage
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The configuration a stream gets when its first reading creates it.
    pub fn default_config(&self, channels: usize) -> StreamConfig {
        StreamConfig {
            channels,
            model: self.defaults.model.clone(),
            sensitivity: self.defaults.sensitivity,
            warmup: self.defaults.warmup,
            auto_train: true,
            baseline: Baseline::default(),
            retention: None,
        }
    }

    /// Checks that `config` can be served (the model exists and fits the channels).
    pub fn check_config(&self, config: &StreamConfig) -> Result<Arc<ModelInfo>, IngestError> {
        let model = self.shared.model(&config.model)?;
        if !config.channels.is_multiple_of(model.input_size) {
            return Err(IngestError::Config(format!(
                "model {} reads {} channel(s) per step; {} channel(s) do not divide into it",
                model.name, model.input_size, config.channels
            )));
        }
        Ok(model)
    }

    /// The active model of `name`.
    pub fn model(&self, name: &str) -> Result<Arc<ModelInfo>, IngestError> {
        self.shared.model(name)
    }

    /// Streams held in memory.
    pub fn active(&self) -> usize {
        self.shared.actors.lock().expect("actor registry lock").len()
    }

    async fn handle(&self, name: &str, create_channels: Option<usize>) -> Result<Handle, IngestError> {
        if let Some(h) = self.shared.actors.lock().expect("actor registry lock").get(name) {
            return Ok(h.clone());
        }
        let stored = self.shared.storage.stream(name).await?;
        self.start(name, stored, create_channels).await
    }

    /// Starts the actors of the streams of `names` that have none, looking their records up
    /// in one query per few hundred names instead of one each: a request that creates (or
    /// wakes) a thousand streams makes a few round trips to the database, not a thousand.
    async fn start_missing(&self, names: &[(&str, Option<usize>)]) -> Result<(), IngestError> {
        let missing: Vec<(&str, Option<usize>)> = {
            let actors = self.shared.actors.lock().expect("actor registry lock");
            names.iter().filter(|(name, _)| !actors.contains_key(*name)).copied().collect()
        };
        if missing.len() < 2 {
            return Ok(()); // one lookup either way
        }
        let lookup: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
        let mut stored: HashMap<String, StreamRecord> =
            self.shared.storage.streams_named(&lookup).await?.into_iter().map(|r| (r.name.clone(), r)).collect();
        for (name, create_channels) in missing {
            self.start(name, stored.remove(name), create_channels).await?;
        }
        Ok(())
    }

    /// The handle of `name`'s actor, starting it from its stored record (`stored`, or a new
    /// stream when `None` and `create_channels` is given).
    async fn start(
        &self,
        name: &str,
        stored: Option<StreamRecord>,
        create_channels: Option<usize>,
    ) -> Result<Handle, IngestError> {
        let record = match (stored, create_channels) {
            (Some(record), _) => record,
            // A new stream lives in memory until its first readings are committed with it.
            (None, Some(channels)) => {
                let config = self.default_config(channels);
                self.check_config(&config)?;
                StreamRecord {
                    id: actor::UNSTORED,
                    name: name.to_string(),
                    config,
                    created_at: now_ms(),
                    last_ts: None,
                    readings_count: 0,
                    readings_expired: 0,
                    anomalies_count: 0,
                    snapshot: None,
                }
            }
            (None, None) => return Err(IngestError::UnknownStream(name.into())),
        };
        // Start (and restore) the actor before registering it, outside the lock.
        let actor = Actor::start(record, self.shared.clone()).await?;
        let mut actors = self.shared.actors.lock().expect("actor registry lock");
        if let Some(h) = actors.get(name) {
            return Ok(h.clone()); // another request started it meanwhile
        }
        if actors.len() >= self.shared.max_active {
            return Err(IngestError::Overloaded("too many active streams"));
        }
        // Describe and Stop only: ingest takes the stream's turn instead.
        let (tx, rx) = flume::bounded(self.shared.mailbox);
        let generation = self.shared.generation.fetch_add(1, Ordering::Relaxed);
        let model = actor.model_name().into();
        let cell: Cell = Arc::new(tokio::sync::Mutex::new(Some(actor)));
        let handle = Handle { tx, generation, model, cell: cell.clone(), queued: Arc::new(AtomicU32::new(0)) };
        actors.insert(name.to_string(), handle.clone());
        self.shared.metrics.active_streams.inc();
        self.shared.tracker.spawn(Actor::run(cell, rx, generation, self.shared.clone()));
        Ok(handle)
    }

    /// Sends `make(reply)` to the stream's actor, starting it if needed, and awaits the reply.
    async fn ask<T>(
        &self,
        name: &str,
        create_channels: Option<usize>,
        make: impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<T, IngestError> {
        for _ in 0..3 {
            let (answer, generation) = self.enqueue(name, create_channels, &make).await?;
            match answer.await {
                Ok(value) => return Ok(value),
                Err(_) => self.forget(name, generation), // stopped before answering: start it again
            }
        }
        Err(IngestError::Internal(format!("stream {name} kept stopping")))
    }

    /// Puts `make(reply)` in the stream's mailbox, starting the actor if needed; returns
    /// where its reply will come and the actor's generation. Refused at once when the
    /// mailbox is full.
    async fn enqueue<T>(
        &self,
        name: &str,
        create_channels: Option<usize>,
        make: &impl Fn(oneshot::Sender<T>) -> Command,
    ) -> Result<(oneshot::Receiver<T>, u64), IngestError> {
        for _ in 0..3 {
            let handle = self.handle(name, create_channels).await?;
            let (reply, answer) = oneshot::channel();
            match handle.tx.try_send(make(reply)) {
                Ok(()) => return Ok((answer, handle.generation)),
                Err(flume::TrySendError::Full(_)) => return Err(IngestError::Overloaded("stream mailbox full")),
                // Evicted or stopped just now: start it again.
                Err(flume::TrySendError::Disconnected(_)) => self.forget(name, handle.generation),
            }
        }
        Err(IngestError::Internal(format!("stream {name} kept stopping")))
    }

    fn forget(&self, name: &str, generation: u64) {
        self.shared.retire(name, generation);
    }

    /// A place in the queue of `name`'s turns (the stream's actor started if needed):
    /// the turn itself if it is free, else a wait queued behind the requests already there.
    async fn place(&self, name: &str, create_channels: Option<usize>) -> Result<Place, IngestError> {
        for _ in 0..3 {
            let handle = self.handle(name, create_channels).await?;
            let ticket = handle.ticket(self.shared.mailbox, &self.shared.metrics)?;
            let generation = handle.generation;
            let guard = match handle.cell.clone().try_lock_owned() {
                Ok(guard) => guard,
                Err(_) => {
                    let mut lock: Pin<Box<dyn Future<Output = Guard> + Send>> = Box::pin(handle.cell.lock_owned());
                    // Polled once: it queues now, in this request's order.
                    match futures::poll!(&mut lock) {
                        std::task::Poll::Ready(guard) => guard,
                        std::task::Poll::Pending => return Ok(Place::Waiting { lock, generation, ticket }),
                    }
                }
            };
            if guard.is_some() {
                return Ok(Place::Held(Turn { guard, generation, _ticket: ticket }));
            }
            self.forget(name, generation); // stopped just now: start it again
        }
        Err(IngestError::Internal(format!("stream {name} kept stopping")))
    }

    /// Takes the turns of a request's streams and judges each stream's readings as its turn
    /// comes: first those free, then the others in the order they were queued for. `None`
    /// when a stream's actor stopped while the request waited for it (its turns are given
    /// back, nothing judged is kept; the caller tries again).
    async fn judge_all(
        &self,
        groups: &[(String, Vec<Reading>)],
        arrived: Instant,
        budget: &StateBudget,
    ) -> Result<Option<Vec<(Turn, Prepared, Handed)>>, IngestError> {
        let mut places = Vec::with_capacity(groups.len());
        {
            // Two requests must queue for the streams they share in the same order, or each
            // could hold a turn the other waits for: a multi-stream request queues for all
            // its streams under one lock, which covers only the queueing, not the waiting.
            let _multi = if groups.len() > 1 { Some(self.shared.multi.lock().await) } else { None };
            for (name, readings) in groups {
                places.push(self.place(name, created_with(readings)).await?);
            }
        }
        let mut judged: Vec<Option<(Turn, Prepared, Handed)>> = (0..groups.len()).map(|_| None).collect();
        // Streams whose judging waits for inference or storage (a new stream's first reading,
        // several readings, a retry) are judged together at the end, so that their waits
        // overlap (and their inference calls batch); the others at once, as their turns come.
        let mut slow = Vec::new();
        let mut waiting = Vec::new();
        for (i, place) in places.into_iter().enumerate() {
            match place {
                Place::Held(turn) if turn.actor().judges_at_once(&groups[i].1) => {
                    judged[i] = Some(judge_turn(turn, &groups[i].1, arrived, budget).await?);
                }
                Place::Held(turn) => slow.push((i, turn)),
                Place::Waiting { lock, generation, ticket } => waiting.push((i, lock, generation, ticket)),
            }
        }
        for (i, lock, generation, ticket) in waiting {
            let guard = lock.await;
            if guard.is_none() {
                self.forget(&groups[i].0, generation);
                return Ok(None);
            }
            let turn = Turn { guard, generation, _ticket: ticket };
            if turn.actor().judges_at_once(&groups[i].1) {
                judged[i] = Some(judge_turn(turn, &groups[i].1, arrived, budget).await?);
            } else {
                slow.push((i, turn));
            }
        }
        let slow = futures::future::join_all(
            slow.into_iter().map(|(i, turn)| async move { (i, judge_turn(turn, &groups[i].1, arrived, budget).await) }),
        )
        .await;
        for (i, result) in slow {
            judged[i] = Some(result?);
        }
        Ok(Some(judged.into_iter().flatten().collect()))
    }

    /// Ingests readings for one or more streams, all or nothing: every stream's readings are
    /// judged in its turn, all rows are committed in one transaction, then every stream
    /// applies its new state (with the step of its lone reading, taken while the commit ran,
    /// if any) and its turn is given back. Streams are created on first use with `channels`
    /// of their first reading. Each stream appears once in `groups`.
    pub async fn ingest(&self, groups: Vec<(String, Vec<Reading>)>) -> Result<Vec<IngestOutcome>, IngestError> {
        let arrived = Instant::now();
        if groups.len() > 1 {
            // A stream named twice would wait for its own turn.
            let mut seen = std::collections::HashSet::with_capacity(groups.len());
            if let Some((name, _)) = groups.iter().find(|(name, _)| !seen.insert(name.as_str())) {
                return Err(IngestError::Invalid(format!("stream {name} appears twice in the request")));
            }
            let names: Vec<(&str, Option<usize>)> =
                groups.iter().map(|(name, readings)| (name.as_str(), created_with(readings))).collect();
            self.start_missing(&names).await?;
        }
        // A stream stopped while the request waited its turn (a shutdown, a model swap, a
        // failed commit before): its successor starts from storage, and the request queues
        // again for all its streams, so that it never waits for a turn out of order.
        let mut judged = None;
        let budget = StateBudget::for_readings(groups.iter().map(|(_, readings)| readings.len()).sum());
        for _ in 0..3 {
            judged = self.judge_all(&groups, arrived, &budget).await?;
            if judged.is_some() {
                break;
            }
        }
        let Some(judged) = judged else {
            return Err(IngestError::Internal("a stream of the request kept stopping".into()));
        };
        // On an error above, the turns taken are given back and what was judged with them
        // is dropped: nothing changed.
        // Commit in a task of its own: a client that disconnects must not leave rows
        // committed but streams not told.
        let shared = self.shared.clone();
        let names: Vec<String> = groups.into_iter().map(|(name, _)| name).collect();
        let (answer, answered) = oneshot::channel();
        self.shared.tracker.spawn(async move {
            // The batches go to the writer (moved, not copied); what is needed after the
            // commit stays here, with the streams' turns.
            let mut batches = Vec::with_capacity(judged.len());
            let mut after = Vec::with_capacity(judged.len());
            let mut steps = Vec::new();
            let streams = judged.len();
            for (i, (turn, Prepared { batch, verdicts, step }, handed)) in judged.into_iter().enumerate() {
                after.push((turn, handed, verdicts, batch.readings.len(), batch.update.anomalies_added));
                batches.push(batch);
                steps.extend(step.map(|step| (i, step)));
            }
            // The steps run while the commit does: they read only the states the streams
            // judged with, and their results are applied only once the commit is (a lone
            // reading's stream waits for both before its next turn; after one another they
            // were ~0.2 + 0.3 ms of each reading's turn). A failed commit drops them.
            // The commit is polled first (`biased`): one refused by a full writer queue ends
            // there, before any step is sent, so overload adds no inference.
            let steps = take_steps(&shared.inference, streams, steps);
            tokio::pin!(steps);
            let commit = tokio::time::timeout(shared.commit_timeout, shared.writer.commit(batches));
            tokio::pin!(commit);
            let mut taken = None;
            let committed = loop {
                tokio::select! {
                    biased;
                    committed = &mut commit => break committed,
                    done = &mut steps, if taken.is_none() => taken = Some(done),
                }
            };
            let committed = committed.unwrap_or_else(|_| {
                Err(StorageError::Unavailable(format!(
                    "the database did not answer the commit within {} s; it may or may not hold these readings \
                     (a retry is safe)",
                    shared.commit_timeout.as_secs_f64()
                )))
            });
            let ids = committed.as_ref().ok().cloned().unwrap_or_default();
            // A batch refused by a full queue never reached the database; any other
            // failure may have happened after the COMMIT did (its outcome is unknown).
            let never_sent = matches!(committed, Err(StorageError::WriterFull));
            let metrics = &shared.metrics;
            let mut outcomes = Vec::with_capacity(after.len());
            let mut decisions = Vec::with_capacity(after.len());
            for (i, ((turn, handed, verdicts, rows, events), name)) in after.into_iter().zip(names).enumerate() {
                let id = ids.get(i).copied();
                decisions.push((turn, handed, id));
                if id.is_some() {
                    let flagged = verdicts.iter().filter(|v| v.verdict.anomaly).count();
                    metrics.readings.inc_by(rows as u64);
                    metrics.anomalies.inc_by(flagged as u64);
                    metrics.events.inc_by(events as u64);
                    outcomes.push(IngestOutcome { stream: name, accepted: verdicts.len(), verdicts });
                }
            }
            // The request is answered before the streams apply their steps.
            let _ = answer.send(committed.map(|_| outcomes));
            if never_sent {
                return; // the turns given back, the judged states dropped: nothing changed
            }
            let taken = match taken {
                _ if ids.is_empty() => Vec::new(),
                Some(taken) => taken,
                None => steps.await,
            };
            let mut taken = taken.into_iter();
            // One clock read for the request's streams: when each was last used.
            let now = Instant::now();
            for (mut turn, handed, id) in decisions {
                let step = taken.next().flatten();
                if let Flow::Reload = turn.actor_mut().decided(handed, id.map(|id| Committed { id, step }), now) {
                    // Requests waiting for its turn start it again from storage.
                    let name = turn.actor().name().to_string();
                    *turn.guard = None;
                    shared.retire(&name, turn.generation);
                }
            }
        });
        match answered.await {
            Ok(result) => result.map_err(|e| match e {
                StorageError::WriterFull => IngestError::Overloaded("storage writer queue full"),
                other => IngestError::Storage(other),
            }),
            Err(_) => Err(IngestError::Internal("the commit task ended without an answer".into())),
        }
    }

    /// A stream's configuration and live state; `None` if it does not exist.
    pub async fn describe(&self, name: &str) -> Result<Option<StreamStatus>, IngestError> {
        let Some(record) = self.shared.storage.stream(name).await? else { return Ok(None) };
        let active = self.shared.actors.lock().expect("actor registry lock").contains_key(name);
        if active {
            if let Ok(mut status) = self.ask(name, None, |reply| Command::Describe { reply }).await {
                status.record = record;
                return Ok(Some(status));
            }
        }
        let model_version = self.shared.model(&record.config.model).map(|m| m.version.clone()).unwrap_or_default();
        let judged = record.readings_count as u64;
        let last_ts = record.last_ts;
        Ok(Some(StreamStatus { record, model_version, judged, last_ts }))
    }

    /// Stops a stream's actor (if in memory), so the next request restores it from storage.
    ///
    /// The actor stays registered until it has written its state and answered, so a request
    /// arriving meanwhile queues behind the stop (and is retried on a fresh actor) instead of
    /// starting one from a snapshot that is about to be replaced.
    pub async fn stop(&self, name: &str) {
        let handle = self.shared.actors.lock().expect("actor registry lock").get(name).cloned();
        if let Some(handle) = handle {
            let (reply, done) = oneshot::channel();
            if handle.tx.send_async(Command::Stop { reply }).await.is_ok() {
                let _ = done.await;
            }
            self.forget(name, handle.generation);
        }
    }

    /// Creates or reconfigures a stream. A running actor is restarted with the new settings.
    pub async fn put(&self, name: &str, config: &StreamConfig) -> Result<StreamRecord, IngestError> {
        self.check_config(config)?;
        if let Some(existing) = self.shared.storage.stream(name).await? {
            if existing.config.channels != config.channels && existing.readings_count > 0 {
                return Err(IngestError::Config(format!(
                    "stream {name} has readings with {} channel(s); its channel count cannot change",
                    existing.config.channels
                )));
            }
        }
        self.stop(name).await;
        let record = self.shared.storage.put_stream(name, config, now_ms()).await?;
        self.shared.retention_changed.notify_one();
        Ok(record)
    }

    /// Told whenever a stream's settings are put ([`Streams::put`]), for the retention's
    /// task.
    pub fn retention_changed(&self) -> Arc<tokio::sync::Notify> {
        self.shared.retention_changed.clone()
    }

    /// Deletes a stream and everything stored for it. False if it did not exist.
    pub async fn delete(&self, name: &str) -> Result<bool, IngestError> {
        self.stop(name).await;
        let Some(record) = self.shared.storage.stream(name).await? else { return Ok(false) };
        Ok(self.shared.storage.delete_stream(record.id).await?)
    }

    /// Makes `version` the active version of `model` and hot-swaps every stream bound to it:
    /// each stream's actor finishes the messages already in its mailbox, stops, and the next
    /// request starts it on the new version, re-warming its recurrent state from its stored
    /// recent readings (normaliser and scorer carry over). No reading is dropped or scored
    /// twice: requests that find the old actor gone retry on the new one.
    pub async fn activate(&self, model: &str, version: &str) -> Result<Arc<ModelInfo>, IngestError> {
        use futures::StreamExt;
        let info = self.shared.catalog.activate(model, version).map_err(|e| IngestError::Config(e.to_string()))?;
        self.shared.models.lock().expect("model cache lock").insert(model.to_string(), info.clone());
        let bound: Vec<String> = self
            .shared
            .actors
            .lock()
            .expect("actor registry lock")
            .iter()
            .filter(|(_, h)| *h.model == *model)
            .map(|(name, _)| name.clone())
            .collect();
        futures::stream::iter(bound)
            .for_each_concurrent(STOPPING_AT_ONCE, |name| async move { self.stop(&name).await })
            .await;
        Ok(info)
    }

    /// Receives the names of streams that reached their warm-up with `auto_train` on and
    /// are still scored by the default model (each announced once per actor start).
    pub fn auto_fit_requests(&self) -> mpsc::UnboundedReceiver<String> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.shared.auto_fit.lock().expect("auto-fit lock") = Some(tx);
        rx
    }

    /// Whether an automatic fit of `name` is due, queued or running.
    pub fn fit_pending(&self, name: &str) -> bool {
        self.shared.fitting.lock().expect("fitting lock").contains(name)
    }

    /// How many automatic fits are due, queued or running.
    pub fn fits_pending(&self) -> usize {
        self.shared.fitting.lock().expect("fitting lock").len()
    }

    /// Records that the automatic fit of `name` has ended (whatever its outcome).
    pub(crate) fn fit_ended(&self, name: &str) {
        self.shared.fitting.lock().expect("fitting lock").remove(name);
    }

    /// Stops announcing streams for automatic fitting (shutdown).
    pub fn stop_auto_fit(&self) {
        self.shared.auto_fit.lock().expect("auto-fit lock").take();
    }

    /// The name of the model new streams start with.
    pub fn default_model(&self) -> &str {
        &self.defaults.model
    }

    /// Binds a stored stream to `model` (restarting its actor on it).
    pub async fn bind_model(&self, name: &str, model: &str) -> Result<(), IngestError> {
        let Some(record) = self.shared.storage.stream(name).await? else {
            return Err(IngestError::UnknownStream(name.to_string()));
        };
        let config = StreamConfig { model: model.to_string(), ..record.config };
        self.put(name, &config).await.map(|_| ())
    }

    /// The model catalog.
    pub fn catalog(&self) -> &ModelCatalog {
        &self.shared.catalog
    }

    /// Stops every actor and waits for in-flight commits (graceful shutdown).
    pub async fn shutdown(&self) {
        use futures::StreamExt;
        let handles: Vec<(String, Handle)> = self.shared.actors.lock().expect("actor registry lock").drain().collect();
        futures::stream::iter(handles)
            .for_each_concurrent(STOPPING_AT_ONCE, |(_, handle)| async move {
                let (reply, done) = oneshot::channel();
                if handle.tx.send_async(Command::Stop { reply }).await.is_ok() {
                    let _ = done.await;
                }
            })
            .await;
        self.shared.tracker.close();
        self.shared.tracker.wait().await;
    }
}
