//! `ApiError`: the `{"code","message"}` envelope every error response
//! carries. Each domain error's status and code are `api/error.rs`'s.
//!
//! Every error body is the `{"code","message"}` envelope, both keys always
//! present (SDK 1.1.1's error model requires both). The 401 body also carries
//! upstream's `error` key.

use http::{header, Response, StatusCode};

use super::{full, Body};

pub const NOT_INITIALIZED_MESSAGE: &str =
    "execd is not initialized yet: POST /internal/init must be called first";

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

    /// 503 before the runtime binding (`--runtime-init`).
    pub fn not_initialized() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_INITIALIZED",
            NOT_INITIALIZED_MESSAGE,
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
        if self.status == StatusCode::UNAUTHORIZED || self.code == "NOT_INITIALIZED" {
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
