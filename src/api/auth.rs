//! Bearer-key authentication with scopes. Keys are compared in constant time and never
//! logged. With no keys configured the service is open (and bound to loopback only, which
//! `config` enforces).
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};
use crate::config::Scope;

/// Lets the request through if it carries a key whose scope allows `required`.
pub async fn require(State((state, required)): State<(AppState, Scope)>, req: Request, next: Next) -> Response {
    if state.keys.is_empty() {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else { return ApiError::Unauthorized.into_response() };
    // Compare against every key, without stopping early, so timing does not tell which matched.
    let mut scope = None;
    for key in state.keys.iter() {
        if bool::from(key.key.as_bytes().ct_eq(presented.as_bytes())) {
            scope = Some(key.scope);
        }
    }
    match scope {
        None => ApiError::Unauthorized.into_response(),
        Some(scope) if !scope.allows(required) => ApiError::Forbidden.into_response(),
        Some(_) => next.run(req).await,
    }
}
