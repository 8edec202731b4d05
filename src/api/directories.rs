//! `/directories`: list, create, delete, plus the identity-scoped variants
//! under `/v1/filesystem/{uid}/{gid}/directories*`.

use std::collections::BTreeMap;

use http::Response;

use super::files::{
    apply_each, attr_map, identity, remove_each, required_path, walk_response, Permission,
};
use crate::api::Ctx;
use crate::fs::identity::scoped;
use crate::fs::ops;
use crate::server::{ok_empty, ApiError, Body};

/// `GET /directories/list?path=&depth=`: entries to `depth` levels (default
/// 1), pre-order, by name; symlinks listed, never followed.
pub async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let root = required_path(&ctx, "path")?;
    let depth = match ctx.query().get("depth") {
        None | Some("") => 1,
        Some(d) => d
            .parse::<u32>()
            .map_err(|_| ApiError::invalid_body(format!("invalid query parameter 'depth': {d}")))?,
    };
    walk_response(id, root, depth, |_, _| true).await
}

/// `POST /directories` `{path: {mode, owner, group}}`: creates each with its
/// parents; mode and owner apply to directories this call creates.
pub async fn make(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let items = attr_map(ctx.json::<BTreeMap<String, Permission>>().await?)?;
    scoped(id, move || apply_each(&items, ops::make_dir)).await?;
    Ok(ok_empty())
}

/// `DELETE /directories?path=…` (repeatable): removes each tree. A missing
/// path is not an error.
pub async fn remove(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    remove_each(ctx, ops::remove_dir).await
}
