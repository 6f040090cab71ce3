//! The admin API (admin scope): the model registry — list models and versions, activate a
//! version (hot swap; activating an older version is the rollback) — and training jobs.
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use super::wire::{format_ts, json_body, stream_name, Path, StreamName, Timestamp};
use super::{ApiError, AppState};
use crate::inference::ModelInfo;
use crate::model::Architecture;
use crate::storage::JobRecord;
use crate::training::{JobError, TrainRequest};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/models", get(list_models))
        .route("/admin/v1/models/{model}/versions/{version}/activate", post(activate))
}

// The JSON `version_json` writes, described for the OpenAPI document: keep the two in step.
/// A version of a model.
#[derive(utoipa::ToSchema)]
#[schema(as = ModelVersion)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ModelVersionSchema {
    version: String,
    #[schema(inline)]
    architecture: ArchitectureName,
    hidden: u64,
    layers: u64,
    /// Channels the network reads per step.
    input_size: u64,
    /// Truncated-BPTT window of its training; null for models without a training record.
    #[schema(required = true)]
    window: Option<u64>,
    /// What it was trained on.
    #[schema(required = true)]
    data: Option<TrainingDataSchema>,
    /// Best validation loss of its training.
    #[schema(required = true)]
    val_loss: Option<f64>,
    /// One-step RMSE of the forecast on the validation rows, in the data's units.
    #[schema(required = true)]
    val_rmse: Option<f64>,
    /// When it was written (RFC 3339).
    created_at: String,
    /// Whether this version serves the model's streams.
    active: bool,
}

/// The training data of a model version.
#[derive(utoipa::ToSchema)]
#[schema(as = TrainingData)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct TrainingDataSchema {
    /// A file path or the stream names or patterns.
    source: String,
    train_rows: u64,
    val_rows: u64,
}

/// A stream name or a glob pattern of names (`*`, `?`), as `validate` accepts it.
struct StreamPattern;

impl utoipa::PartialSchema for StreamPattern {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[A-Za-z0-9._:*?-]{1,128}$"))
            .description(Some("A stream name or a glob pattern of names (`*`, `?`)"))
            .examples(["plant-*"])
            .into()
    }
}

impl utoipa::ToSchema for StreamPattern {}

/// The recurrent cell of a network.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // described for the OpenAPI document, never built
enum ArchitectureName {
    Rnn,
    Lstm,
    Gru,
}

// The JSON `model_json` writes, described for the OpenAPI document: keep the two in step.
/// A model and its versions.
#[derive(utoipa::ToSchema)]
#[schema(as = Model)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ModelSchema {
    name: String,
    /// The version serving the model's streams, null when none is.
    #[schema(required = true)]
    active_version: Option<String>,
    versions: Vec<ModelVersionSchema>,
}

/// Every model.
#[derive(utoipa::ToSchema)]
#[schema(as = ModelList)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ModelListSchema {
    models: Vec<ModelSchema>,
}

fn version_json(info: &ModelInfo, active: bool) -> Value {
    let n = &info.card.network;
    let training = info.card.training.as_ref();
    json!({
        "version": info.version,
        "architecture": n.architecture.as_str(),
        "hidden": n.hidden,
        "layers": n.layers,
        "input_size": n.input_size,
        "window": training.map(|t| t.window),
        "data": training.map(|t| json!({"source": t.source, "train_rows": t.train_rows, "val_rows": t.val_rows})),
        "val_loss": training.map(|t| t.best_val_loss),
        "val_rmse": training.and_then(|t| t.val_rmse),
        "created_at": info.card.created_at,
        "active": active,
    })
}

fn model_json(state: &AppState, name: &str) -> Result<Value, ApiError> {
    let catalog = state.streams.catalog();
    let versions = catalog.versions(name).map_err(|_| ApiError::NotFound(format!("no model {name}")))?;
    let active = catalog.active(name).ok().map(|m| m.version.clone());
    let versions: Vec<Value> = versions
        .iter()
        .filter_map(|v| ModelInfo::load(name, v, &catalog.root().join(name).join(v)).ok())
        .map(|info| {
            let is_active = active.as_deref() == Some(info.version.as_str());
            version_json(&info, is_active)
        })
        .collect();
    Ok(json!({ "name": name, "active_version": active, "versions": versions }))
}

/// List models
///
/// The registry: every model with its versions, sizes, training data and losses, and which
/// version is active.
#[utoipa::path(
    get,
    path = "/admin/v1/models",
    tag = "models",
    responses(
        (status = 200, description = "Every model", body = ModelListSchema),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
    ),
    security(("api_key" = ["admin"])),
)]
async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models: Vec<Value> =
        state.streams.catalog().names().iter().filter_map(|name| model_json(&state, name).ok()).collect();
    Ok(Json(json!({ "models": models })))
}

/// Activate a model version
///
/// Hot-swaps every stream bound to the model onto this version (activating an older
/// version is the rollback); each stream finishes what is queued first.
#[utoipa::path(
    post,
    path = "/admin/v1/models/{model}/versions/{version}/activate",
    tag = "models",
    params(
        ("model" = StreamName, Path, description = "The model"),
        ("version" = StreamName, Path, description = "The version"),
    ),
    responses(
        (status = 200, description = "The model, now with this version active", body = ModelSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["admin"])),
)]
async fn activate(
    State(state): State<AppState>,
    Path((model, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    // Model names and versions are path components on disk: the stream-name alphabet
    // keeps them from escaping the models directory.
    stream_name(&model).map_err(|_| ApiError::NotFound(format!("no model {model:?}")))?;
    stream_name(&version).map_err(|_| ApiError::NotFound(format!("no version {version:?}")))?;
    if version.starts_with('.') || model.starts_with('.') {
        return Err(ApiError::NotFound("no such model version".into()));
    }
    let versions =
        state.streams.catalog().versions(&model).map_err(|_| ApiError::NotFound(format!("no model {model}")))?;
    if !versions.contains(&version) {
        return Err(ApiError::NotFound(format!("model {model} has no version {version}")));
    }
    state.streams.activate(&model, &version).await?;
    Ok(Json(model_json(&state, &model)?))
}

pub fn job_routes() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/models/{model}/train", post(train))
        .route("/admin/v1/jobs", get(list_jobs))
        .route("/admin/v1/jobs/{id}", get(get_job).delete(cancel_job))
}

/// A training request: a new version of the model, trained on stored readings.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"architecture": "gru", "hidden": 32, "window": 64, "epochs": 20,
    "streams": ["plant-*"], "activate": true}))]
struct TrainBody {
    /// The recurrent cell (default `lstm`).
    #[schema(value_type = Option<ArchitectureName>)]
    architecture: Option<String>,
    /// Hidden units per layer (default 64).
    #[schema(minimum = 1, maximum = 1024)]
    hidden: Option<usize>,
    /// Recurrent layers (default 1).
    #[schema(minimum = 1, maximum = 8)]
    layers: Option<usize>,
    /// Truncated-BPTT window (default 64).
    #[schema(minimum = 2, maximum = 4096)]
    window: Option<usize>,
    /// Most epochs (default 20).
    #[schema(minimum = 1, maximum = 10_000)]
    epochs: Option<usize>,
    /// Adam's learning rate, in (0, 1] (default 0.005).
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    learning_rate: Option<f64>,
    /// Stream names or glob patterns (`*`, `?`) whose stored readings are the data.
    #[schema(value_type = Vec<StreamPattern>, required = true, nullable = false, min_items = 1, max_items = 1000)]
    streams: Option<Vec<String>>,
    /// Readings at or after this time only.
    #[schema(value_type = Option<Timestamp>)]
    from: Option<Value>,
    /// Readings before this time only.
    #[schema(value_type = Option<Timestamp>)]
    to: Option<Value>,
    /// Activate the new version when it is trained (default false).
    activate: Option<bool>,
    /// Forecast the change from the last reading instead of the reading (default false).
    residual: Option<bool>,
}

fn field(name: &str, rule: &str) -> ApiError {
    ApiError::Unprocessable(format!("{name}: {rule}"))
}

fn validate(body: TrainBody) -> Result<TrainRequest, ApiError> {
    let architecture = match body.architecture.as_deref().unwrap_or("lstm") {
        "rnn" => Architecture::Rnn,
        "lstm" => Architecture::Lstm,
        "gru" => Architecture::Gru,
        _ => return Err(field("architecture", "must be rnn, lstm or gru")),
    };
    let in_range = |name: &str, v: usize, lo: usize, hi: usize| {
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(field(name, &format!("must be in {lo}..={hi}")))
        }
    };
    let hidden = in_range("hidden", body.hidden.unwrap_or(64), 1, 1024)?;
    let layers = in_range("layers", body.layers.unwrap_or(1), 1, 8)?;
    let window = in_range("window", body.window.unwrap_or(64), 2, 4096)?;
    let epochs = in_range("epochs", body.epochs.unwrap_or(20), 1, 10_000)?;
    let learning_rate = body.learning_rate.unwrap_or(5e-3);
    if !(learning_rate.is_finite() && learning_rate > 0.0 && learning_rate <= 1.0) {
        return Err(field("learning_rate", "must be in (0, 1]"));
    }
    let streams = body.streams.unwrap_or_default();
    if streams.is_empty() || streams.len() > 1000 {
        return Err(field("streams", "must list 1 to 1000 stream names or patterns"));
    }
    for s in &streams {
        let allowed = s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._:-*?".contains(&b));
        if s.is_empty() || s.len() > 128 || !allowed || glob::Pattern::new(s).is_err() {
            return Err(field("streams", &format!("{s:?} is not a stream name or pattern")));
        }
    }
    let ts =
        |name: &str, v: Option<Value>| v.map(|v| super::wire::timestamp(&v).map_err(|e| field(name, &e))).transpose();
    let (from, to) = (ts("from", body.from)?, ts("to", body.to)?);
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(field("to", "must be after from"));
        }
    }
    Ok(TrainRequest {
        architecture,
        hidden,
        layers,
        window,
        epochs,
        learning_rate,
        streams,
        from,
        to,
        activate: body.activate.unwrap_or(false),
        residual: body.residual.unwrap_or(false),
    })
}

// The JSON `job_json` writes, described for the OpenAPI document: keep the two in step.
/// A training job.
#[derive(utoipa::ToSchema)]
#[schema(as = Job)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct JobSchema {
    id: i64,
    /// The model it trains a version of.
    model: String,
    #[schema(inline)]
    status: JobStatus,
    /// The validated request, defaults filled in.
    #[schema(value_type = Object)]
    params: Value,
    /// The latest epoch's numbers; null before the first epoch.
    #[schema(required = true)]
    progress: Option<ProgressSchema>,
    /// Why it failed; null unless it did.
    #[schema(required = true)]
    error: Option<String>,
    /// The version it wrote; null until it has.
    #[schema(required = true)]
    version: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime, required = true)]
    started_at: Option<String>,
    #[schema(format = DateTime, required = true)]
    finished_at: Option<String>,
}

#[derive(utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
#[allow(dead_code)] // described for the OpenAPI document, never built
enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

// `training::Progress` as JSON: keep the two in step.
/// A job's progress after its latest epoch.
#[derive(utoipa::ToSchema)]
#[schema(as = JobProgress)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct ProgressSchema {
    epoch: u64,
    epochs: u64,
    train_loss: f64,
    val_loss: f64,
    /// Gradient norm before clipping, averaged over the epoch's batches.
    grad_norm: f64,
    elapsed_s: f64,
    /// Seconds left if every remaining epoch takes as long as the ones so far.
    eta_s: f64,
}

/// Recent jobs.
#[derive(utoipa::ToSchema)]
#[schema(as = JobList)]
#[allow(dead_code)] // described for the OpenAPI document, never built
struct JobListSchema {
    /// The 100 most recent jobs, newest first.
    jobs: Vec<JobSchema>,
}

/// The job path parameter.
const JOB_PARAM: &str = "The job's id";

fn job_json(state: &AppState, job: &JobRecord) -> Value {
    let live = state.jobs.progress(job.id);
    let stored = job.progress.as_deref().and_then(|p| serde_json::from_str::<Value>(p).ok());
    json!({
        "id": job.id,
        "model": job.model,
        "status": job.status,
        "params": serde_json::from_str::<Value>(&job.params).unwrap_or(Value::Null),
        "progress": live.map(|p| json!(p)).or(stored),
        "error": job.error,
        "version": job.version,
        "created_at": format_ts(job.created_at),
        "started_at": job.started_at.map(format_ts),
        "finished_at": job.finished_at.map(format_ts),
    })
}

/// Start a training job
///
/// Queues a job that trains a new version of the model on the stored readings of the
/// given streams; answers the job (202). Jobs run `--training-jobs` at a time.
#[utoipa::path(
    post,
    path = "/admin/v1/models/{model}/train",
    tag = "jobs",
    params((
        "model" = String,
        Path,
        description = "Model name: 1-128 characters of A-Z a-z 0-9 . _ : -, not starting with a dot",
        pattern = "^[A-Za-z0-9_:-][A-Za-z0-9._:-]{0,127}$"
    )),
    request_body = TrainBody,
    responses(
        (status = 202, description = "Job queued", body = JobSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["admin"])),
)]
async fn train(
    State(state): State<AppState>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    stream_name(&model).map_err(|_| field("model", "names are 1-128 characters of A-Z a-z 0-9 . _ : -"))?;
    if model.starts_with('.') {
        return Err(field("model", "must not start with a dot"));
    }
    let body: TrainBody = json_body(&headers, body).await?;
    let request = validate(body)?;
    let job = state.jobs.submit(&model, request).await.map_err(job_error)?;
    Ok((StatusCode::ACCEPTED, Json(job_json(&state, &job))))
}

fn job_error(e: JobError) -> ApiError {
    match e {
        JobError::Storage(s) => s.into(),
        JobError::Unknown(id) => ApiError::NotFound(format!("no job {id}")),
        e @ JobError::Finished(..) => ApiError::Conflict(e.to_string()),
    }
}

/// List jobs
#[utoipa::path(
    get,
    path = "/admin/v1/jobs",
    tag = "jobs",
    responses(
        (status = 200, description = "Recent jobs, newest first", body = JobListSchema),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["admin"])),
)]
async fn list_jobs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let jobs = state.streams.storage().jobs(100).await?;
    Ok(Json(json!({ "jobs": jobs.iter().map(|j| job_json(&state, j)).collect::<Vec<_>>() })))
}

fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("no job {id:?}")))
}

/// Get a job
///
/// Its status, progress (epoch, losses, ETA) and resulting version.
#[utoipa::path(
    get,
    path = "/admin/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = i64, Path, description = JOB_PARAM)),
    responses(
        (status = 200, description = "The job", body = JobSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["admin"])),
)]
async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let job = state.streams.storage().job(id).await?.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(job_json(&state, &job)))
}

/// Cancel a job
///
/// A queued job is cancelled at once, a running one at its next batch; a job that has
/// already ended is a 409.
#[utoipa::path(
    delete,
    path = "/admin/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = i64, Path, description = JOB_PARAM)),
    responses(
        (status = 200, description = "The job, cancelled or being cancelled", body = JobSchema),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    ),
    security(("api_key" = ["admin"])),
)]
async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = state.jobs.cancel(job_id(&id)?).await.map_err(job_error)?;
    Ok(Json(job_json(&state, &job)))
}
