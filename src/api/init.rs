//! `GET /ready` and `POST /internal/init`: the control plane's handshake
//! (see `crate::runtime`).
//!
//! `/internal/init` is not behind the access token: before a binding there
//! is none to check (upstream: the call is control-plane trust). What guards
//! it: the origin check (browsers), the one-shot slot (a later call is 409),
//! a start-up token when one is configured (a pool template's secret: then
//! the first binding must carry it), and for a re-binding the current
//! binding's token. In `--runtime-init` mode an init-mode main process is
//! not started before the binding, so no sandbox code of execd's making can
//! race the control plane to the slot.

use http::{Response, StatusCode};
use serde_json::json;

use crate::api::{App, Ctx};
use crate::runtime::{EntrypointPolicy, InitRequest};
use crate::server::auth::TOKEN_HEADER;
use crate::server::{json_response, ApiError, Body};

/// `GET /ready`: 200 once bound; 503 while `--runtime-init` waits for a
/// binding; without `--runtime-init`, 200 with `initialized: false` until
/// (if ever) a binding arrives.
pub fn ready(app: &App) -> Result<Response<Body>, ApiError> {
    Ok(match app.runtime.current() {
        Some(b) => json_response(
            StatusCode::OK,
            &json!({"initialized": true, "sandboxId": b.sandbox_id, "generation": b.generation}),
        ),
        None if app.runtime.required => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({"initialized": false}),
        ),
        None => json_response(StatusCode::OK, &json!({"initialized": false})),
    })
}

/// `POST /internal/init`: applies a binding (see the module comment).
pub async fn init(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let given = ctx
        .req
        .headers()
        .get(TOKEN_HEADER)
        .map(|v| v.as_bytes().to_vec());
    // A configured start-up token guards the first binding; checked before
    // the body is read, so a caller without it learns nothing more.
    if app.runtime.current().is_none() {
        if let Some(t) = &app.config.access_token {
            if !given.as_deref().is_some_and(|g| t.matches(g)) {
                return Err(ApiError::unauthorized());
            }
        }
    }
    let binding = ctx.json::<InitRequest>().await?.validate()?;
    let mut warnings = Vec::new();
    let has_main = app.config.init.as_ref().is_some_and(|a| !a.is_empty());
    if !has_main && binding.entrypoint_policy == EntrypointPolicy::Restart {
        warnings.push("entrypointPolicy restart: execd runs no main process (execd init -- CMD)");
    }
    let engine = app.engine.clone();
    let (b, rebound) = app.runtime.apply(
        binding,
        |cur| given.as_deref().is_some_and(|g| cur.matches(g)),
        |b| engine.set_runtime_envs(b.envs.clone()),
    )?;
    tracing::info!(
        sandbox_id = %b.sandbox_id,
        generation = b.generation,
        rebound,
        envs = b.envs.len(),
        pre_start = b.pre_start.len(),
        periodic = b.periodic.len(),
        entrypoint_policy = b.entrypoint_policy.as_str(),
        "runtime binding applied"
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "status": "initialized",
            "sandboxId": b.sandbox_id,
            "generation": b.generation,
            "rebound": rebound,
            "warning": warnings,
        }),
    ))
}
