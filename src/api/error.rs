//! The API's one error type: every failure becomes an `application/problem+json` response
//! (RFC 9457). Internal causes are logged, never shown to the client.
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::inference::InferenceError;
use crate::storage::StorageError;
use crate::streams::IngestError;

/// An error answered to the client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed syntax: unparsable JSON or query, wrong types.
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but unacceptable: out-of-range values, wrong channel count.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// Conflicts with stored state (timestamps not after the stream's last reading).
    #[error("{0}")]
    Conflict(String),
    #[error("request body exceeds {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("missing or unknown API key")]
    Unauthorized,
    #[error("this key's scope does not allow this request")]
    Forbidden,
    #[error("{0}")]
    TooManyRequests(String),
    /// A dependency (the database) is unavailable; nothing was acknowledged.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure; details only in the log.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

// The JSON `problem` builds, described for the OpenAPI document: keep the two in step.
/// An error (RFC 9457 problem details).
#[derive(Debug, utoipa::ToSchema)]
#[schema(example = json!({"type": "about:blank", "title": "Unprocessable Entity", "status": 422,
    "detail": "sensitivity must be in [0, 1]"}))]
pub struct Problem {
    /// Always `about:blank`: the status says what kind of problem it is.
    #[schema(rename = "type")]
    pub kind: String,
    /// The status's reason phrase.
    pub title: String,
    /// The HTTP status code again.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What was wrong, for a person (never an internal cause).
    pub detail: String,
}

/// A problem+json response with `status` and `detail`.
pub fn problem(status: StatusCode, detail: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let body = json!({
        "type": "about:blank",
        "title": title,
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = match &self {
            ApiError::Internal(cause) => {
                error!(cause = %cause, "internal error");
                "internal error".to_string()
            }
            ApiError::Unavailable(cause) => {
                error!(cause = %cause, "dependency unavailable");
                "the service cannot store readings right now; nothing was acknowledged, retry later".to_string()
            }
            other => other.to_string(),
        };
        let mut response = problem(status, &detail);
        match self {
            ApiError::TooManyRequests(_) | ApiError::Unavailable(_) => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Unauthorized => {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        extractor_error(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        extractor_error(rejection.status(), rejection.body_text())
    }
}

/// A rejection by one of axum's extractors: the client's fault (400) or a routing bug.
fn extractor_error(status: StatusCode, text: String) -> ApiError {
    if status.is_client_error() {
        ApiError::BadRequest(text)
    } else {
        ApiError::Internal(text)
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::WriterFull => ApiError::TooManyRequests("storage writer queue is full".into()),
            e if e.is_transient() => ApiError::Unavailable(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(m) | IngestError::Config(m) => ApiError::Unprocessable(m),
            IngestError::OutOfOrder { .. } | IngestError::Conflicting { .. } => ApiError::Conflict(e.to_string()),
            IngestError::UnknownStream(name) => ApiError::NotFound(format!("stream {name} does not exist")),
            IngestError::Overloaded(what) => ApiError::TooManyRequests(format!("overloaded: {what}")),
            IngestError::Inference(InferenceError::Overloaded) => {
                ApiError::TooManyRequests("inference queue is full".into())
            }
            IngestError::Inference(other) => ApiError::Internal(other.to_string()),
            IngestError::Storage(s) => s.into(),
            IngestError::Internal(m) => ApiError::Internal(m),
        }
    }
}
