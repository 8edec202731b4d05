//! `GET /ping`.

use http::Response;

use crate::server::{ok_empty, ApiError, Body, Ctx};

/// 200 with an empty body, as upstream.
pub async fn ping(_ctx: Ctx) -> Result<Response<Body>, ApiError> {
    Ok(ok_empty())
}
