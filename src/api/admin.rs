//! The admin API (admin scope): the model registry — list models and versions, activate a
//! version (hot swap; activating an older version is the rollback) — and training jobs.
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::wire::{format_ts, json_body, stream_name};
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

async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let models: Vec<Value> =
        state.streams.catalog().names().iter().filter_map(|name| model_json(&state, name).ok()).collect();
    Ok(Json(json!({ "models": models })))
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainBody {
    architecture: Option<String>,
    hidden: Option<usize>,
    layers: Option<usize>,
    window: Option<usize>,
    epochs: Option<usize>,
    learning_rate: Option<f64>,
    streams: Option<Vec<String>>,
    from: Option<Value>,
    to: Option<Value>,
    activate: Option<bool>,
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

async fn list_jobs(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let jobs = state.streams.storage().jobs(100).await?;
    Ok(Json(json!({ "jobs": jobs.iter().map(|j| job_json(&state, j)).collect::<Vec<_>>() })))
}

fn job_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| ApiError::NotFound(format!("no job {id:?}")))
}

async fn get_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let id = job_id(&id)?;
    let job = state.streams.storage().job(id).await?.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    Ok(Json(job_json(&state, &job)))
}

async fn cancel_job(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let job = state.jobs.cancel(job_id(&id)?).await.map_err(job_error)?;
    Ok(Json(job_json(&state, &job)))
}
