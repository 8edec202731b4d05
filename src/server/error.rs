//! `ApiError`: the one place where errors become HTTP responses.
//!
//! Every error body is the `{"code","message"}` envelope, both keys always
//! present (SDK 1.1.1's error model requires both). The 401 body also carries
//! upstream's `error` key.

use http::{header, Response, StatusCode};

use super::{full, Body};
use crate::fs::path::PathError;
use crate::process::pty::PtyError;
use crate::process::ProcessError;

/// An error on its way to becoming a response.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with upstream's code for malformed or invalid request bodies.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY", message)
    }

    /// 400 for a required query parameter that is missing.
    pub fn missing_query(name: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "MISSING_QUERY",
            format!("missing query parameter '{name}'"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Unauthorized: invalid or missing header X-EXECD-ACCESS-TOKEN",
        )
    }

    pub fn into_response(self) -> Response<Body> {
        let mut body = serde_json::json!({ "code": self.code, "message": self.message });
        if self.status == StatusCode::UNAUTHORIZED {
            body["error"] = serde_json::Value::String(self.message.clone());
        }
        let mut resp = Response::new(full(body.to_string()));
        *resp.status_mut() = self.status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        resp
    }
}

impl From<ProcessError> for ApiError {
    fn from(e: ProcessError) -> Self {
        match e {
            ProcessError::NotFound(_) => {
                Self::new(StatusCode::NOT_FOUND, "COMMAND_NOT_FOUND", e.to_string())
            }
            ProcessError::NotRunning(_) => {
                Self::new(StatusCode::CONFLICT, "COMMAND_NOT_RUNNING", e.to_string())
            }
        }
    }
}

impl From<PathError> for ApiError {
    fn from(e: PathError) -> Self {
        Self::invalid_body(e.to_string())
    }
}

impl From<PtyError> for ApiError {
    fn from(e: PtyError) -> Self {
        let (status, code) = match &e {
            PtyError::NotFound(_) => (StatusCode::NOT_FOUND, "CONTEXT_NOT_FOUND"),
            PtyError::AlreadyConnected(_) => (StatusCode::CONFLICT, "ALREADY_CONNECTED"),
            PtyError::TooMany => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_SESSIONS"),
            PtyError::BadSize { .. } => (StatusCode::BAD_REQUEST, "INVALID_REQUEST_BODY"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "RUNTIME_ERROR"),
        };
        Self::new(status, code, e.to_string())
    }
}
