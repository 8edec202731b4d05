//! `GET /ping` and `GET /openapi.yaml`.

use http::Response;

use crate::api::App;
use crate::server::{ok_empty, ApiError, Body};

/// 200 with an empty body, as upstream.
pub fn ping(_app: &App) -> Result<Response<Body>, ApiError> {
    Ok(ok_empty())
}

/// The OpenAPI document, built into the binary.
const OPENAPI: &str = include_str!("../../openapi.yaml");

/// `GET /openapi.yaml`: the API description this binary was built with.
pub fn openapi(_app: &App) -> Result<Response<Body>, ApiError> {
    let mut resp = Response::new(crate::server::full(OPENAPI));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/yaml"),
    );
    Ok(resp)
}
