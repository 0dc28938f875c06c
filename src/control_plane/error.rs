//! The control plane's errors and the one place that maps them to HTTP answers.
//!
//! Every handler of the management API and the gateway endpoint returns `Result<_, ApiError>`;
//! the body is always `{"error": "<code>", "message": "...", "problems": [...]}` so clients and
//! the CLI can show every problem at once.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use outpost_model::{Problem, Problems};
use serde::Serialize;

use super::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid request")]
    Invalid(Problems),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// A valid request that would make the stored configuration inconsistent, every problem
    /// listed (409, like deleting a resource that is still referred to).
    #[error("the change conflicts with the stored configuration")]
    Inconsistent(Problems),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("internal error: {0}")]
    Internal(String),
}

#[derive(Debug, Serialize, serde::Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
    #[serde(default)]
    pub problems: Vec<Problem>,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Invalid(_) | ApiError::BadRequest(_) => "bad-request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed(_) => "method-not-allowed",
            ApiError::Conflict(_) | ApiError::Inconsistent(_) => "conflict",
            ApiError::PreconditionFailed(_) => "precondition-failed",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (message, problems) = match self {
            ApiError::Invalid(p) => (
                format!("{} problem(s) in the request", p.len()),
                p.0.clone(),
            ),
            ApiError::Inconsistent(p) => (
                format!(
                    "{} problem(s) with the configuration the change would make",
                    p.len()
                ),
                p.0.clone(),
            ),
            other => (other.to_string(), Vec::new()),
        };
        ErrorBody {
            error: self.code().to_owned(),
            message,
            problems,
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) | ApiError::Inconsistent(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        if let ApiError::Internal(e) = self {
            tracing::error!(error = %e, "internal error");
        }
        let mut res = HttpResponse::build(self.status_code());
        if let ApiError::Unauthorized(_) = self {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        res.json(self.body())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(_) => ApiError::NotFound(e.to_string()),
            StoreError::AlreadyExists { .. } | StoreError::InUse { .. } => {
                ApiError::Conflict(e.to_string())
            }
            StoreError::PreconditionFailed { .. } => ApiError::PreconditionFailed(e.to_string()),
            StoreError::Invalid(p) => ApiError::Invalid(p),
            StoreError::Inconsistent(p) => ApiError::Inconsistent(p),
            // The database failing (or unreachable) is the server's problem, not the request's.
            StoreError::Sqlite(_)
            | StoreError::Postgres(_)
            | StoreError::Connect(_)
            | StoreError::Migration(_)
            | StoreError::SchemaTooNew { .. }
            | StoreError::TargetNotEmpty(_)
            | StoreError::Corrupt(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<Problems> for ApiError {
    fn from(p: Problems) -> Self {
        ApiError::Invalid(p)
    }
}
