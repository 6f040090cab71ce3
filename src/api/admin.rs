//! The model registry (admin scope): list models and versions, activate a version (hot
//! swap; activating an older version is the rollback).
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::wire::stream_name;
use super::{ApiError, AppState};
use crate::inference::ModelInfo;

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
