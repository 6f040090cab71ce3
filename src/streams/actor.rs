//! One task per active stream, and the stream's scoring state — running normaliser,
//! recurrent state, the forecast for the next reading, scorer statistics and the open
//! anomaly event — in a `Cell` the task shares with the requests that judge with it: one
//! at a time, in turn, under its lock. The task keeps the stream's idle timer and answers
//! `Describe` and `Stop`; a request judges its readings itself, in its own task, once it
//! holds the stream's turn (no message, no wake-up a stream: `super::Streams::ingest`).
//!
//! Ingest is two-phase so a request touching many streams is all-or-nothing: a request
//! judges the readings on a copy of the state (`Actor::judge_ingest`) and keeps the
//! stream's turn until its commit is decided; the copy is applied only when the rows were
//! committed (`Actor::decided`), and dropped otherwise. Verdict first, step second:
//! reading t is judged against the forecast made after reading t−1, then the network steps.
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tracing::{debug, instrument, warn};

use super::{IngestError, Reading, ReadingVerdict, Shared, StreamStatus};
use crate::inference::{InferenceError, InferenceResult, ModelInfo};
use crate::scoring::{
    EventConfig, EventTracker, EventUpdate, Forecast, PerChannel, RunningNormaliser, Scorer, ScorerConfig,
};
use crate::storage::{ChannelValues, EventRow, NewStream, ReadingRow, StreamRecord, StreamUpdate, WriteBatch};

/// Normalised inputs are clamped to this magnitude: a wild value still reads as extreme
/// to the network without pushing its state somewhere it never learnt.
const INPUT_CLAMP: f64 = 50.0;
/// Readings replayed through the network to rebuild recurrent state for a new model.
pub const REWARM_READINGS: i64 = 512;
/// The id of a stream that exists only in memory until its first readings are committed.
pub const UNSTORED: i64 = 0;
/// A stream's scoring state (a few KB of JSON) is written beside its readings about this
/// often (see [`next_snapshot`]) once `SNAPSHOT_MIN_READINGS` were committed since it was
/// last written, or after `SNAPSHOT_EVERY_READINGS`, or when an event opens, moves or closes —
/// not on every commit ([`state_due`]). After a crash the stream starts from its last
/// snapshot and replays the readings stored after it ([`Actor::catch_up`]); a graceful stop,
/// or the stream's actor leaving memory when idle, writes it at once.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);
const SNAPSHOT_EVERY_READINGS: u64 = 10_000;
/// A slow stream's state waits for this many readings, however long they take: at one
/// reading a minute, a state of a few KB written with every reading was ~50 times the
/// reading's own bytes, and at 100,000 streams of a reading a second ~6,400 states a second
/// cost ~13 % of the storage writer's time a reading on PostgreSQL (docs/PERFORMANCE.md, "A
/// slow stream's state every 100 readings"). A restart replays about these (one inference
/// call) for such a stream: a few more where its requests' budgets of states were spent on
/// others ([`StateBudget`]).
const SNAPSHOT_MIN_READINGS: u64 = 100;
/// Stored readings replayed at most to bring a stale snapshot up to date; beyond that the
/// stream re-warms from its recent history instead.
const CATCH_UP_MAX: i64 = 200_000;
/// Readings per inference call while catching up.
const CATCH_UP_CHUNK: usize = 10_000;

/// A stream's actor: `None` once it stopped (deleted, reconfigured, evicted, or reloading
/// after a commit whose outcome is unknown); a request that finds it so starts the stream
/// again from storage.
pub(super) type Cell = Arc<tokio::sync::Mutex<Option<Actor>>>;

/// Messages a stream's task understands (ingest does not go through it).
pub enum Command {
    /// Report the stream's configuration and state.
    Describe { reply: oneshot::Sender<StreamStatus> },
    /// Write the state and stop (the stream is being deleted or reconfigured).
    Stop { reply: oneshot::Sender<()> },
}

/// An ingest judged but not yet applied: what the request's commit needs.
pub struct Prepared {
    pub batch: WriteBatch,
    pub verdicts: Vec<ReadingVerdict>,
    /// A lone reading's network step, left to the request (see [`Actor::prepare`]): it takes
    /// the steps of all its streams in one inference call while their commit runs.
    pub step: Option<PendingStep>,
}

/// A network step a stream left to its request's commit task: one step of `rows` sequences,
/// applied once the commit is.
pub struct PendingStep {
    pub model: Arc<ModelInfo>,
    pub rows: usize,
    /// `[rows][input_size]`.
    pub inputs: Vec<f32>,
    /// `[rows][state_len]`: the recurrent state before the step.
    pub state: Vec<f32>,
}

/// What an actor is told of a committed ingest.
pub struct Committed {
    /// The stream's id (new streams get theirs with their first commit).
    pub id: i64,
    /// The step the ingest left to the request, taken with those of the request's
    /// other streams: its result and the first of its rows there. `None` if it left none.
    pub step: Option<Result<(Arc<InferenceResult>, usize), InferenceError>>,
}

/// The scoring state of a stream, written with some of its commits (see [`SNAPSHOT_INTERVAL`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub model: String,
    pub model_version: String,
    pub normaliser: RunningNormaliser,
    pub scorer: Scorer,
    pub events: EventTracker,
    /// `[rows][state_len]` recurrent state after the last reading.
    pub recurrent: Vec<f32>,
    /// Forecast of the next reading per channel (normalised units), if any.
    pub forecast_mean: Option<Vec<f64>>,
    pub forecast_log_var: Option<Vec<f64>>,
    pub last_ts: Option<i64>,
}

impl Snapshot {
    fn fresh(record: &StreamRecord, model: &ModelInfo) -> Snapshot {
        let channels = record.config.channels;
        Snapshot {
            model: model.name.clone(),
            model_version: model.version.clone(),
            normaliser: RunningNormaliser::new(channels),
            scorer: Scorer::new(channels),
            events: EventTracker::default(),
            recurrent: vec![0.0; rows(channels, model) * model.state_len],
            forecast_mean: None,
            forecast_log_var: None,
            last_ts: record.last_ts,
        }
    }

    /// A copy with another normaliser (the judged state's).
    fn with_normaliser(&self, normaliser: RunningNormaliser) -> Snapshot {
        Snapshot {
            model: self.model.clone(),
            model_version: self.model_version.clone(),
            normaliser,
            scorer: self.scorer.clone(),
            events: self.events.clone(),
            recurrent: self.recurrent.clone(),
            forecast_mean: self.forecast_mean.clone(),
            forecast_log_var: self.forecast_log_var.clone(),
            last_ts: self.last_ts,
        }
    }

    fn forecast(&self) -> Option<Forecast> {
        match (&self.forecast_mean, &self.forecast_log_var) {
            (Some(mean), Some(log_var)) => Some(Forecast { mean: mean.clone(), log_var: log_var.clone() }),
            _ => None,
        }
    }
}

/// When a stream's scoring state is next due to be written: after [`SNAPSHOT_INTERVAL`] give
/// or take half of it, at random. Streams that share requests would otherwise fall due
/// together, and the one commit that wrote all their states at once held its requests: at
/// one reading of each of 1,000 streams a request, 17 commits of 1,000–7,000 states (2–14
/// MB) took 53 ms on average where the others took under 1 (docs/PERFORMANCE.md).
fn next_snapshot() -> Instant {
    Instant::now() + SNAPSHOT_INTERVAL.mul_f64(rand::random_range(0.5..1.5))
}

/// Whether a stream's state is due with a commit (besides its first and those with events),
/// `unsaved` readings committed since it was written, the commit's own included, and
/// `timely` when [`next_snapshot`]'s time has passed; one due by time alone only if the
/// request's `budget` has room for it.
fn state_due(timely: bool, unsaved: u64, budget: &StateBudget) -> bool {
    unsaved >= SNAPSHOT_EVERY_READINGS || (timely && unsaved >= SNAPSHOT_MIN_READINGS && budget.take())
}

/// The scoring states due by time alone ([`state_due`]) that one request may write; the
/// others stay due and go with the streams' next requests. The timers spread the states of
/// a steady load ([`next_snapshot`]), but a pause longer than the interval (a fleet of
/// sensors back after an outage) leaves every stream's state due on its next reading. At
/// one reading of each of 1,000 of 10,000 streams a request, once every stream's state was
/// due together (in `bench http`, by events: its series used to jump between its phases,
/// and an event's state is always written), the first requests each carried 1,000 states
/// (2–3 MB of JSON), judged in 150–240 ms and committed in 60–190 more (docs/PERFORMANCE.md,
/// "The half-rate tail at many streams a request was the benchmark's"). Readings a state
/// waits for by time are at least
/// [`SNAPSHOT_MIN_READINGS`], so a steady load has at most one due in that many readings;
/// the budget is three times that, 16 at least.
#[derive(Debug)]
pub(super) struct StateBudget(AtomicUsize);

impl StateBudget {
    /// The budget of a request of `readings` readings.
    pub(super) fn for_readings(readings: usize) -> StateBudget {
        StateBudget(AtomicUsize::new((readings * 3 / SNAPSHOT_MIN_READINGS as usize).max(16)))
    }

    /// Takes a state's place; false when none is left.
    fn take(&self) -> bool {
        self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    }
}

/// Independent sequences a stream needs: one per channel for a univariate model, one for a
/// model that reads all channels at once.
fn rows(channels: usize, model: &ModelInfo) -> usize {
    channels / model.input_size
}

/// Index of channel `c` at step `t` in `[rows][steps][input_size]`.
fn index(model: &ModelInfo, steps: usize, t: usize, c: usize) -> usize {
    let width = model.input_size;
    ((c / width) * steps + t) * width + c % width
}

/// Whether an actor goes on after an ingest.
pub(super) enum Flow {
    Continue,
    /// The stream's state is in doubt: stop; the next request restarts it from storage.
    Reload,
}

pub(super) struct Actor {
    name: String,
    record: StreamRecord,
    model: Arc<ModelInfo>,
    state: Snapshot,
    shared: Arc<Shared>,
    /// Whether this actor already announced the stream for automatic fitting.
    fit_requested: bool,
    /// When the scoring state is next written even without another reason.
    snapshot_due: Instant,
    /// Readings committed since the scoring state was last written.
    unsaved: u64,
    /// When a request or a message last had the stream: it is idle `idle_evict` after.
    last_used: Instant,
}

impl Actor {
    /// Restores the stream from its stored snapshot, re-warming the recurrent state from
    /// stored readings when the snapshot belongs to another model version.
    #[instrument(skip_all, fields(stream = %record.name))]
    pub(super) async fn start(mut record: StreamRecord, shared: Arc<Shared>) -> Result<Actor, IngestError> {
        let model = shared.model(&record.config.model)?;
        if !record.config.channels.is_multiple_of(model.input_size) {
            return Err(IngestError::Config(format!(
                "model {} reads {} channels per step; the stream has {}",
                model.name, model.input_size, record.config.channels
            )));
        }
        // Taken out of the record: the actor keeps the parsed state, not its JSON (4 KB).
        let text = record.snapshot.take();
        let stored: Option<Snapshot> = text.as_deref().and_then(|text| match serde_json::from_str(text) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "stored snapshot unreadable; rebuilding from history");
                None
            }
        });
        let expected_state = rows(record.config.channels, &model) * model.state_len;
        let state = match stored {
            Some(s)
                if s.model == model.name
                    && s.model_version == model.version
                    && s.recurrent.len() == expected_state
                    && s.normaliser.channels() == record.config.channels =>
            {
                s
            }
            other => Self::rewarm(&record, &model, other, &shared).await?,
        };
        let mut actor = Actor {
            name: record.name.clone(),
            record,
            model,
            state,
            shared,
            fit_requested: false,
            snapshot_due: next_snapshot(),
            unsaved: 0,
            last_used: Instant::now(),
        };
        actor.catch_up().await?;
        Ok(actor)
    }

    /// Brings a snapshot older than the stream's stored readings (the process stopped
    /// between two snapshot writes) up to date by judging the readings stored after it
    /// again, exactly as they were judged live; nothing is written.
    async fn catch_up(&mut self) -> Result<(), IngestError> {
        // A state from before any reading (`last_ts` none: written with a stream's first
        // lone reading, whose step came after the commit) replays them all.
        let Some(stored) = self.record.last_ts else { return Ok(()) };
        let from = self.state.last_ts;
        if from.is_some_and(|from| stored <= from) || self.record.id == UNSTORED {
            return Ok(());
        }
        let rows = self.shared.storage.readings(self.record.id, None, None, from, CATCH_UP_MAX + 1).await?;
        if rows.len() as i64 > CATCH_UP_MAX {
            warn!(stream = %self.name, "snapshot too far behind its readings; re-warming from recent history");
            self.state = Self::rewarm(&self.record, &self.model, Some(self.state.clone()), &self.shared).await?;
            return Ok(());
        }
        let readings: Vec<Reading> = rows
            .iter()
            .map(|row| Reading {
                ts: row.ts,
                values: row.channels.as_ref().map_or_else(|| vec![row.value], |c| c.values.clone()),
            })
            .collect();
        for chunk in readings.chunks(CATCH_UP_CHUNK) {
            let (state, ..) = self.prepare(chunk, true, &StateBudget(AtomicUsize::new(0))).await?;
            self.state = state;
        }
        self.unsaved = readings.len() as u64;
        debug!(readings = readings.len(), "caught a stale snapshot up with stored readings");
        Ok(())
    }

    /// Writes the scoring state if readings were committed since it was last written.
    async fn flush(&mut self) {
        let Some(last_ts) = self.state.last_ts.filter(|_| self.unsaved > 0 && self.record.id != UNSTORED) else {
            return;
        };
        let snapshot = match serde_json::to_string(&self.state) {
            Ok(s) => s,
            Err(e) => return warn!(error = %e, "snapshot not serialisable"),
        };
        let batch = WriteBatch {
            stream_id: self.record.id,
            create: None,
            readings: Vec::new(),
            events: Vec::new(),
            update: StreamUpdate {
                last_ts,
                readings_added: 0,
                anomalies_added: 0,
                readings_count: self.record.readings_count,
                snapshot: Some(snapshot),
            },
        };
        match self.shared.writer.commit(vec![batch]).await {
            Ok(_) => self.unsaved = 0,
            Err(e) => warn!(stream = %self.name, error = %e, "snapshot not written; a restart will catch up"),
        }
    }

    /// Rebuilds recurrent state and forecast by replaying the stream's recent stored
    /// readings through `model`; keeps the normaliser and scorer of `previous` if usable.
    async fn rewarm(
        record: &StreamRecord,
        model: &Arc<ModelInfo>,
        previous: Option<Snapshot>,
        shared: &Shared,
    ) -> Result<Snapshot, IngestError> {
        let mut state = Snapshot::fresh(record, model);
        if let Some(prev) = previous.filter(|p| p.normaliser.channels() == record.config.channels) {
            state.normaliser = prev.normaliser;
            state.scorer = prev.scorer;
            state.events = prev.events;
        }
        if record.id == UNSTORED {
            return Ok(state);
        }
        let history = shared.storage.recent_readings(record.id, REWARM_READINGS).await?;
        if history.is_empty() {
            return Ok(state);
        }
        let channels = record.config.channels;
        let steps = history.len();
        let mut inputs = vec![0f32; rows(channels, model) * steps * model.input_size];
        let fresh_normaliser = state.normaliser.count() == 0;
        for (t, row) in history.iter().enumerate() {
            let values = row.channels.as_ref().map_or_else(|| vec![row.value], |c| c.values.clone());
            if values.len() != channels {
                return Err(IngestError::Config("stored readings have another channel count".into()));
            }
            if fresh_normaliser {
                state.normaliser.update(&values);
            }
            for (c, v) in values.iter().enumerate() {
                inputs[index(model, steps, t, c)] =
                    state.normaliser.normalise(c, *v).clamp(-INPUT_CLAMP, INPUT_CLAMP) as f32;
            }
        }
        let result =
            shared.inference.run(model.clone(), rows(channels, model), steps, inputs, state.recurrent.clone()).await?;
        apply_step(&mut state, model, steps, result);
        state.last_ts = history.last().map(|r| r.ts);
        debug!(readings = steps, "re-warmed recurrent state from stored history");
        Ok(state)
    }

    /// The stream's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The name of the model scoring this stream.
    pub(super) fn model_name(&self) -> &str {
        &self.model.name
    }

    /// The stream's task: its idle timer, `Describe` and `Stop`, each under the cell's lock
    /// (so each waits for the commit of a request holding the turn). Ends once the actor is
    /// gone.
    pub(super) async fn run(cell: Cell, rx: flume::Receiver<Command>, generation: u64, shared: Arc<Shared>) {
        // One timer for the actor's life, re-armed only when it fires: a timer set afresh
        // for every message cost an insertion into tokio's timer wheel and a removal from it
        // each (5 % of the runtime's time at one reading of each of 1,000 streams a request;
        // docs/PERFORMANCE.md). It fires `idle_evict` after it was armed; the stream is idle
        // only if nothing used it since then, else it is re-armed for `idle_evict` after the
        // last use.
        let idle = shared.idle_evict;
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        loop {
            let command = tokio::select! {
                command = rx.recv_async() => command.ok(),
                () = &mut idle_timer => {
                    let mut cell = cell.lock().await;
                    let Some(actor) = cell.as_mut() else { break };
                    let quiet_until = actor.last_used + idle;
                    if Instant::now() < quiet_until {
                        idle_timer.as_mut().reset(quiet_until.into());
                        continue;
                    }
                    // Requests waiting for the turn find the actor gone and start it again
                    // from what this writes.
                    Box::pin(actor.flush()).await;
                    shared.retire(&actor.name, generation);
                    *cell = None;
                    break;
                }
            };
            // `None`: every sender is gone (the stream was retired).
            let Some(command) = command else { break };
            let mut cell = cell.lock().await;
            // Stopped meanwhile: the reply is dropped and the asker starts it again.
            let Some(actor) = cell.as_mut() else { break };
            actor.last_used = Instant::now();
            match command {
                Command::Describe { reply } => {
                    let _ = reply.send(actor.status());
                }
                Command::Stop { reply } => {
                    Box::pin(actor.flush()).await;
                    *cell = None;
                    let _ = reply.send(());
                    break;
                }
            }
        }
        shared.metrics.active_streams.dec();
    }

    /// Announces the stream for a model of its own once it has passed its warm-up, if it
    /// asked for one and is still scored by a model it did not get that way.
    fn maybe_request_fit(&mut self) {
        let config = &self.record.config;
        let own_model = config.model.starts_with(super::AUTO_MODEL_PREFIX);
        let enough = config.warmup.max(super::AUTO_FIT_MIN_READINGS);
        if self.fit_requested || !config.auto_train || own_model || self.state.scorer.readings() < enough {
            return;
        }
        if let Some(tx) = self.shared.auto_fit.lock().expect("auto-fit lock").as_ref() {
            // Announced once however often the actor restarts while a fit is pending.
            if self.shared.fitting.lock().expect("fitting lock").insert(self.name.clone()) {
                let _ = tx.send(self.name.clone());
            }
            self.fit_requested = true;
        }
    }

    fn status(&self) -> StreamStatus {
        StreamStatus {
            record: self.record.clone(),
            model_version: self.model.version.clone(),
            judged: self.state.scorer.readings(),
            last_ts: self.state.last_ts,
        }
    }

    /// Judges an ingest's readings on a copy of the state: what the request's commit
    /// needs, and what to apply once it is decided ([`Actor::decided`]; dropped, nothing
    /// changes).
    // At debug level: a span an ingest at info level cost ~4 % of the CPU time of requests
    // of one reading of each of 1,000 streams (its warnings name the stream themselves).
    #[instrument(level = "debug", skip_all, fields(stream = %self.name, readings = readings.len()))]
    pub(super) async fn judge_ingest(
        &self,
        readings: &[Reading],
        arrived: Instant,
        budget: &StateBudget,
    ) -> Result<(Prepared, Handed), IngestError> {
        let judged = self.judged(readings, budget).await?;
        Ok(self.hand_over(judged, arrived))
    }

    /// Whether judging `readings` waits for nothing (a lone reading after the stream's last,
    /// of a stream already stored: its step is left to the request's commit, see
    /// [`Actor::prepare`]), as against inference or a lookup of stored readings.
    pub(super) fn judges_at_once(&self, readings: &[Reading]) -> bool {
        let [reading] = readings else { return false };
        self.record.id != UNSTORED && self.state.last_ts.is_none_or(|last| reading.ts > last)
    }

    /// Judges the readings of an ingest: the verdicts of those already stored (a client
    /// retrying after a timeout) and the readings that are new.
    async fn judged(
        &self,
        readings: &[Reading],
        budget: &StateBudget,
    ) -> Result<(Vec<ReadingVerdict>, Judged), IngestError> {
        // Readings that may already be stored are looked up only then, in a future boxed
        // apart: its query's state, inline, would make every ingest's future 1.5 KB larger.
        let retried = self.state.last_ts.is_some_and(|last| readings.first().is_some_and(|r| r.ts <= last));
        let (verdicts, fresh) = if retried { Box::pin(self.replayed(readings)).await? } else { (Vec::new(), readings) };
        let judged = if fresh.is_empty() { self.unchanged()? } else { self.prepare(fresh, false, budget).await? };
        Ok((verdicts, judged))
    }

    /// Splits a judged ingest into the request's part (rows, verdicts, pending step) and
    /// the part kept until its commit is decided.
    fn hand_over(&self, (mut verdicts, judged): (Vec<ReadingVerdict>, Judged), arrived: Instant) -> (Prepared, Handed) {
        let (mut state, batch, fresh_verdicts, deferred) = judged;
        let latency = arrived.elapsed().as_secs_f64();
        for _ in 0..fresh_verdicts.len() {
            self.shared.metrics.verdict_latency.observe(latency);
        }
        // Most ingests retry nothing: their verdicts are the fresh ones, not a copy.
        let verdicts = if verdicts.is_empty() {
            fresh_verdicts
        } else {
            verdicts.extend(fresh_verdicts);
            verdicts
        };
        let added = batch.readings.len() as i64;
        let effect = Effect { added, persisted: batch.update.snapshot.is_some(), stepped: deferred.is_some() };
        // The step's state is the judged state's own (unchanged by judging): moved out, and
        // put back from the step's result.
        let step = deferred.map(|inputs| PendingStep {
            model: self.model.clone(),
            rows: rows(self.record.config.channels, &self.model),
            inputs,
            state: std::mem::take(&mut state.recurrent),
        });
        (Prepared { batch, verdicts, step }, Handed { state, effect })
    }

    /// Applies a judged ingest's state once its commit went through (`Some`); `None`: the
    /// commit failed or never answered, and the database may hold it or not (a connection
    /// lost during COMMIT), so the state in memory can no longer be trusted. An ingest not
    /// sent to the database is not decided: its [`Handed`] is dropped.
    /// `now`: when the decision came, the stream's last use.
    pub(super) fn decided(
        &mut self,
        Handed { state, effect }: Handed,
        decision: Option<Committed>,
        now: Instant,
    ) -> Flow {
        self.last_used = now;
        let Some(Committed { id, step }) = decision else {
            warn!(stream = %self.name, "commit outcome unknown; the stream reloads from storage");
            return Flow::Reload;
        };
        self.record.id = id;
        self.record.readings_count += effect.added;
        self.record.last_ts = state.last_ts;
        let old = std::mem::replace(&mut self.state, state);
        if effect.stepped && self.state.recurrent.is_empty() {
            // The step's rows are copied into the old state's buffer, not a new one.
            self.state.recurrent = old.recurrent;
        }
        if effect.persisted {
            self.snapshot_due = next_snapshot();
            // The state written lacks the readings whose step waited for the commit.
            self.unsaved = if effect.stepped { effect.added as u64 } else { 0 };
        } else {
            self.unsaved += effect.added as u64;
        }
        match step {
            Some(Ok((result, row))) => apply_row(&mut self.state, &self.model, &result, row),
            Some(Err(e)) => {
                warn!(stream = %self.name, error = %e, "step after commit failed; the stream reloads from storage");
                return Flow::Reload;
            }
            None if effect.stepped => return Flow::Reload, // not taken: the state lacks it
            None => {}
        }
        self.maybe_request_fit();
        Flow::Continue
    }

    /// Splits off the readings at or before the stream's last stored one: each must be
    /// stored already with exactly the same values (a retry; its stored verdict is
    /// returned and nothing is written again), else the request conflicts. Returns those
    /// verdicts and the readings that are new.
    async fn replayed<'a>(&self, readings: &'a [Reading]) -> Result<(Vec<ReadingVerdict>, &'a [Reading]), IngestError> {
        let Some(last) = self.state.last_ts else { return Ok((Vec::new(), readings)) };
        let split = readings.partition_point(|r| r.ts <= last);
        let (old, fresh) = readings.split_at(split);
        let (Some(first), Some(newest)) = (old.first(), old.last()) else { return Ok((Vec::new(), readings)) };
        let stored = self
            .shared
            .storage
            .readings(self.record.id, Some(first.ts), Some(newest.ts.saturating_add(1)), None, old.len() as i64 + 1)
            .await?;
        let mut verdicts = Vec::with_capacity(old.len());
        for r in old {
            let Some(row) = stored.iter().find(|row| row.ts == r.ts) else {
                return Err(IngestError::OutOfOrder { ts: r.ts, last });
            };
            let verdict = stored_verdict(row);
            if verdict.values.as_slice() != r.values.as_slice() {
                return Err(IngestError::Conflicting { ts: r.ts });
            }
            verdicts.push(verdict);
        }
        Ok((verdicts, fresh))
    }

    /// What an ingest of only already-stored readings writes: the stream as it is.
    fn unchanged(&self) -> Result<Judged, IngestError> {
        let last_ts = self.state.last_ts.ok_or_else(|| IngestError::Internal("no last reading".into()))?;
        let batch = WriteBatch {
            stream_id: self.record.id,
            create: None,
            readings: Vec::new(),
            events: Vec::new(),
            update: StreamUpdate {
                last_ts,
                readings_added: 0,
                anomalies_added: 0,
                readings_count: self.record.readings_count,
                snapshot: None,
            },
        };
        Ok((self.state.clone(), batch, Vec::new(), None))
    }

    /// Judges `readings` on a copy of the state. Returns the new state, the rows to store
    /// and the verdicts, and the network's inputs of a step left for after the commit, if
    /// any. `replay` (catching up at start) skips the snapshot.
    ///
    /// A reading is judged against the forecast made at the step before it, so a lone
    /// reading's verdict needs no inference: unless it is a new stream's first, its step
    /// (which only forecasts the next reading) is left to the request's commit task, which
    /// takes the steps of all the request's streams in one inference call while the commit
    /// runs ([`PendingStep`]); the reply does not wait for it, and its result is applied only
    /// once the commit is.
    async fn prepare(&self, readings: &[Reading], replay: bool, budget: &StateBudget) -> Result<Judged, IngestError> {
        self.check(readings)?;
        let (normaliser, inputs) = self.normalised(readings);
        // A new stream's first state is written with its first step taken.
        let deferrable = readings.len() == 1 && !replay && self.record.id != UNSTORED;
        let (result, deferred) =
            if deferrable { (None, Some(inputs)) } else { (Some(self.infer(readings.len(), inputs).await?), None) };
        // Judging is not async: the future of an ingest (allocated for every message an actor
        // handles) holds nothing of it across an await.
        self.judge(readings, replay, normaliser, result, deferred, budget)
    }

    /// Checks `readings` fit the stream: some, of its channel count, after its last one.
    fn check(&self, readings: &[Reading]) -> Result<(), IngestError> {
        let channels = self.record.config.channels;
        let Some(first) = readings.first() else { return Err(IngestError::Invalid("no readings".into())) };
        if let Some(bad) = readings.iter().find(|r| r.values.len() != channels) {
            return Err(IngestError::Invalid(format!(
                "stream has {channels} channel(s); a reading has {}",
                bad.values.len()
            )));
        }
        if let Some(prev) = self.state.last_ts.filter(|prev| first.ts <= *prev) {
            return Err(IngestError::OutOfOrder { ts: first.ts, last: prev });
        }
        Ok(())
    }

    /// The stream's normaliser after `readings`, and the network's inputs for them
    /// (`[rows][steps][input_size]`, each normalised as it arrives).
    fn normalised(&self, readings: &[Reading]) -> (RunningNormaliser, Vec<f32>) {
        let (channels, model, steps) = (self.record.config.channels, &self.model, readings.len());
        let mut normaliser = self.state.normaliser.clone();
        let mut inputs = vec![0f32; rows(channels, model) * steps * model.input_size];
        for (t, r) in readings.iter().enumerate() {
            normaliser.update(&r.values);
            for (c, v) in r.values.iter().enumerate() {
                inputs[index(model, steps, t, c)] = normaliser.normalise(c, *v).clamp(-INPUT_CLAMP, INPUT_CLAMP) as f32;
            }
        }
        (normaliser, inputs)
    }

    /// Judges checked `readings` against the forecasts the stream made (`result`: the
    /// network's steps over them, or `None` with the inputs of a lone reading's step
    /// `deferred`); see [`Actor::prepare`].
    fn judge(
        &self,
        readings: &[Reading],
        replay: bool,
        normaliser: RunningNormaliser,
        result: Option<InferenceResult>,
        deferred: Option<Vec<f32>>,
        budget: &StateBudget,
    ) -> Result<Judged, IngestError> {
        let channels = self.record.config.channels;
        let last = readings.last().ok_or_else(|| IngestError::Invalid("no readings".into()))?;
        let model = &self.model;
        let steps = readings.len();
        let mut next = self.state.with_normaliser(normaliser);
        let scorer_config = ScorerConfig {
            warmup: self.record.config.warmup,
            sensitivity: self.record.config.sensitivity,
            baseline: self.record.config.baseline,
            ..ScorerConfig::default()
        };
        let event_config = EventConfig::default();
        let mut verdicts = Vec::with_capacity(steps);
        let mut rows_out = Vec::with_capacity(steps);
        let mut events: BTreeMap<i64, EventRow> = BTreeMap::new();
        let mut opened = 0;
        let mut forecast = self.state.forecast();
        // The normaliser each forecast was made under: the stream's own for a lone reading.
        let mut forecast_norm = std::borrow::Cow::Borrowed(&self.state.normaliser);
        for (t, r) in readings.iter().enumerate() {
            let verdict = next.scorer.judge(&scorer_config, &r.values, forecast.as_ref(), &forecast_norm);
            if let Some(update) = next.events.observe(&event_config, r.ts, &r.values, &verdict) {
                let (event, open) = match update {
                    EventUpdate::Opened(e) => {
                        opened += 1;
                        (e, true)
                    }
                    EventUpdate::Updated(e) => (e, true),
                    EventUpdate::Closed(e) => (e, false),
                };
                events.insert(
                    event.start_ts,
                    EventRow {
                        start_ts: event.start_ts,
                        end_ts: event.end_ts,
                        peak_ts: event.peak_ts,
                        peak_score: event.peak_score,
                        actual: event.actual,
                        expected: event.expected,
                        model: model.name.clone(),
                        model_version: model.version.clone(),
                        open,
                    },
                );
            }
            rows_out.push(ReadingRow {
                ts: r.ts,
                value: r.values[0],
                expected: verdict.expected[0],
                lower: verdict.lower[0],
                upper: verdict.upper[0],
                score: verdict.score,
                anomaly: verdict.anomaly,
                channels: (channels > 1).then(|| ChannelValues {
                    values: r.values.clone(),
                    expected: verdict.expected.to_vec(),
                    lower: verdict.lower.to_vec(),
                    upper: verdict.upper.to_vec(),
                }),
            });
            verdicts.push(ReadingVerdict { ts: r.ts, values: r.values.as_slice().into(), verdict });
            if let Some(result) = &result {
                // The next reading's forecast, in place of this one's.
                let f = forecast
                    .get_or_insert_with(|| Forecast { mean: vec![0.0; channels], log_var: vec![0.0; channels] });
                f.mean.resize(channels, 0.0);
                f.log_var.resize(channels, 0.0);
                for c in 0..channels {
                    f.mean[c] = result.mean[index(model, steps, t, c)] as f64;
                    f.log_var[c] = result.log_var[index(model, steps, t, c)] as f64;
                }
                forecast_norm.to_mut().update(&r.values);
            }
        }
        next.last_ts = Some(last.ts);
        let persist = !replay
            && (self.record.id == UNSTORED
                || !events.is_empty()
                || state_due(Instant::now() >= self.snapshot_due, self.unsaved + steps as u64, budget));
        if let Some(result) = result {
            apply_step(&mut next, model, steps, result);
        }
        // With a lone reading's step left for after the commit, the state this commit writes
        // is the one before the reading, which a restart brings up to date by judging the
        // reading again ([`Actor::catch_up`]). Taking the step here instead, for the few
        // streams of a request whose state is due, put an inference call of its own on the
        // request's path (one reading of each of 1,000 streams a request: docs/PERFORMANCE.md).
        let snapshot = if persist {
            let written = if deferred.is_some() { &self.state } else { &next };
            Some(serde_json::to_string(written).map_err(|e| IngestError::Internal(e.to_string()))?)
        } else {
            None
        };
        let batch = WriteBatch {
            stream_id: self.record.id,
            create: (self.record.id == UNSTORED).then(|| NewStream {
                name: self.record.name.clone(),
                config: self.record.config.clone(),
                created_at: self.record.created_at,
            }),
            readings: rows_out,
            events: events.into_values().collect(),
            update: StreamUpdate {
                last_ts: last.ts,
                readings_added: steps as i64,
                anomalies_added: opened,
                readings_count: self.record.readings_count + steps as i64,
                snapshot,
            },
        };
        Ok((next, batch, verdicts, deferred))
    }

    /// Runs `steps` steps of this stream's `inputs` from its current recurrent state.
    async fn infer(&self, steps: usize, inputs: Vec<f32>) -> Result<InferenceResult, InferenceError> {
        let rows = rows(self.record.config.channels, &self.model);
        self.shared.inference.run(self.model.clone(), rows, steps, inputs, self.state.recurrent.clone()).await
    }
}

/// A judged ingest whose commit is being decided: the state to apply and what the commit
/// changes.
pub(super) struct Handed {
    state: Snapshot,
    effect: Effect,
}

/// What a judged ingest's commit changes beside the state.
struct Effect {
    /// Readings stored.
    added: i64,
    /// Whether the commit writes the scoring state.
    persisted: bool,
    /// Whether a step was left for after the commit.
    stepped: bool,
}

/// Judged readings: the new state, the rows to store, the verdicts, and the inputs of a
/// step left for after the commit.
type Judged = (Snapshot, WriteBatch, Vec<ReadingVerdict>, Option<Vec<f32>>);

/// Puts the result of `steps` steps into `state`: the recurrent state after the last and
/// the forecast it made (of the reading after it).
fn apply_step(state: &mut Snapshot, model: &ModelInfo, steps: usize, result: InferenceResult) {
    let channels = state.normaliser.channels();
    let last = |v: &[f32]| (0..channels).map(|c| v[index(model, steps, steps - 1, c)] as f64).collect::<Vec<_>>();
    state.forecast_mean = Some(last(&result.mean));
    state.forecast_log_var = Some(last(&result.log_var));
    state.recurrent = result.state;
}

/// Puts the rows from `row` of a single step taken for several streams at once into
/// `state` (the recurrent state and the forecast of the next reading), in place.
fn apply_row(state: &mut Snapshot, model: &ModelInfo, result: &InferenceResult, row: usize) {
    let channels = state.normaliser.channels();
    // One step: a row's forecasts are its `input_size` channels, in order.
    let forecast = row * model.input_size..row * model.input_size + channels;
    let fill = |slot: &mut Option<Vec<f64>>, from: &[f32]| {
        let values = slot.get_or_insert_with(Vec::new);
        values.clear();
        values.extend(from.iter().map(|&v| f64::from(v)));
    };
    fill(&mut state.forecast_mean, &result.mean[forecast.clone()]);
    fill(&mut state.forecast_log_var, &result.log_var[forecast]);
    let recurrent = row * model.state_len..(row + rows(channels, model)) * model.state_len;
    state.recurrent.clear();
    state.recurrent.extend_from_slice(&result.state[recurrent]);
}

/// A stored reading's verdict, as it was answered when the reading was first ingested.
fn stored_verdict(row: &ReadingRow) -> ReadingVerdict {
    let one = |x: f64| PerChannel::from_slice(&[x]);
    let (values, expected, lower, upper) = match &row.channels {
        Some(c) => (
            c.values.as_slice().into(),
            c.expected.as_slice().into(),
            c.lower.as_slice().into(),
            c.upper.as_slice().into(),
        ),
        None => (one(row.value), one(row.expected), one(row.lower), one(row.upper)),
    };
    ReadingVerdict {
        ts: row.ts,
        values,
        verdict: crate::scoring::Verdict {
            expected,
            lower,
            upper,
            score: row.score,
            anomaly: row.anomaly,
            surprise: 0.0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_due_by_time_after_enough_readings_or_after_many() {
        let budget = StateBudget::for_readings(1);
        assert!(!state_due(true, 1, &budget), "a slow stream's reading past the interval");
        assert!(!state_due(true, SNAPSHOT_MIN_READINGS - 1, &budget));
        assert!(state_due(true, SNAPSHOT_MIN_READINGS, &budget), "enough readings, the interval passed");
        assert!(!state_due(false, SNAPSHOT_MIN_READINGS, &budget), "enough readings, the interval not passed");
        assert!(!state_due(false, SNAPSHOT_EVERY_READINGS - 1, &budget));
        assert!(state_due(false, SNAPSHOT_EVERY_READINGS, &budget), "many readings, whenever");
    }

    /// A request writes the states due by time alone up to its budget, those due after many
    /// readings whatever it.
    #[test]
    fn a_request_writes_states_due_by_time_up_to_its_budget() {
        let budget = StateBudget::for_readings(1_000);
        let written = (0..1_000).filter(|_| state_due(true, SNAPSHOT_MIN_READINGS, &budget)).count();
        assert_eq!(written, 30, "three in every {SNAPSHOT_MIN_READINGS} readings");
        assert!(!state_due(true, SNAPSHOT_EVERY_READINGS - 1, &budget), "the budget spent");
        assert!(state_due(false, SNAPSHOT_EVERY_READINGS, &budget), "many readings, the budget spent");
        let small = StateBudget::for_readings(1);
        assert_eq!((0..100).filter(|_| state_due(true, SNAPSHOT_MIN_READINGS, &small)).count(), 16);
    }

    /// A snapshot's JSON, which restarts restore streams from: the model's name and version
    /// as strings, the per-channel values as arrays, and a state reads back as it was written.
    #[test]
    fn a_snapshot_is_written_and_read_as_plain_json() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/default/1");
        let model = ModelInfo::load("default", "1", &dir).expect("the shipped model loads");
        let record = StreamRecord {
            id: 7,
            name: "s".into(),
            config: crate::storage::StreamConfig {
                channels: 2,
                model: "default".into(),
                sensitivity: 0.5,
                warmup: 10,
                auto_train: false,
                baseline: crate::scoring::Baseline::default(),
                retention: None,
            },
            created_at: 0,
            last_ts: Some(5),
            readings_count: 0,
            readings_expired: 0,
            anomalies_count: 0,
            snapshot: None,
        };
        let mut state = Snapshot::fresh(&record, &model);
        state.normaliser.update(&[1.5, -2.0]);
        state.forecast_mean = Some(vec![0.25, 0.5]);
        state.forecast_log_var = Some(vec![-1.0, -2.0]);
        let json = serde_json::to_value(&state).expect("serialises");
        assert_eq!((json["model"].as_str(), json["model_version"].as_str()), (Some("default"), Some("1")));
        assert_eq!(json["forecast_mean"], serde_json::json!([0.25, 0.5]));
        assert_eq!(json["normaliser"]["mean"], serde_json::json!([1.5, -2.0]));
        let back: Snapshot = serde_json::from_value(json.clone()).expect("reads back");
        assert_eq!(serde_json::to_value(&back).expect("serialises"), json);
        assert_eq!(back.normaliser, state.normaliser);
        assert_eq!((&*back.model, back.last_ts), ("default", Some(5)));
    }
}
