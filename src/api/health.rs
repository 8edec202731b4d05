//! `GET /ping` and `GET /openapi.yaml`.

use std::io::Read;

use http::{Response, StatusCode};

use crate::api::App;
use crate::server::{ok_empty, ApiError, Body};

/// 200 with an empty body, as upstream.
pub fn ping(_app: &App) -> Result<Response<Body>, ApiError> {
    Ok(ok_empty())
}

/// The OpenAPI document, built into the binary deflated by build.rs: about
/// 19 KB instead of 101 KB of the static binary's budget (issue 20 §5). It
/// is inflated per request with flate2, already linked for E2B's gzip.
const OPENAPI_DEFLATED: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/openapi.yaml.deflate"));

/// `GET /openapi.yaml`: the API description this binary was built with.
pub fn openapi(_app: &App) -> Result<Response<Body>, ApiError> {
    let mut text = Vec::with_capacity(128 * 1024);
    flate2::read::DeflateDecoder::new(OPENAPI_DEFLATED)
        .read_to_end(&mut text)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "RUNTIME_ERROR",
                format!("the built-in openapi.yaml cannot be inflated: {e}"),
            )
        })?;
    let mut resp = Response::new(crate::server::full(text));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/yaml"),
    );
    Ok(resp)
}
