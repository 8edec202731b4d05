//! `/session`: bash sessions that keep exported variables and the working
//! directory across runs. Runs in one session are serialised (409 while busy).

use std::time::Duration;

use http::{Response, StatusCode};
use serde::Deserialize;

use super::command::{event_stream, wants_base64, StreamMode};
use crate::api::Ctx;
use crate::fs::path;
use crate::operations::Kind;
use crate::server::{json_response, ok_empty, sse, ApiError, Body};

#[derive(Debug, Default, Deserialize)]
struct CreateSessionRequest {
    cwd: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RunInSessionRequest {
    command: Option<String>,
    cwd: Option<String>,
    /// Milliseconds; absent or 0 means none.
    timeout: Option<i64>,
    /// `"base64"`: output events carry the bytes as base64 (see `/command`).
    output_encoding: Option<String>,
}

/// `POST /session {cwd?}` → `{session_id}`. The directory is created if missing.
pub async fn create(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let req: CreateSessionRequest = ctx.json_or_default().await?;
    let cwd = match req.cwd.filter(|c| !c.is_empty()) {
        Some(c) => Some(path::expand_daemon(&c)?),
        None => None,
    };
    let id = app.engine.create_session(cwd)?;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "session_id": id }),
    ))
}

/// `POST /session/{id}/run {command, cwd?, timeout?}` → the event stream of the run.
pub async fn run(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let id = ctx.param("id").to_string();
    let op = super::operation::id(ctx.req.headers())?;
    let (req, raw) = ctx.json_raw::<RunInSessionRequest>(false).await?;
    let base64 = wants_base64(req.output_encoding.as_deref())?;
    let command = req
        .command
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| ApiError::invalid_body("invalid request: 'command' is required"))?;
    if command.contains('\0') {
        return Err(ApiError::invalid_body(
            "invalid request: 'command' must not contain NUL bytes",
        ));
    }
    let timeout = match req.timeout {
        None | Some(0) => None,
        Some(t) if t < 0 => {
            return Err(ApiError::invalid_body(format!(
                "invalid request: 'timeout' must be >= 0, got {t}"
            )))
        }
        Some(t) => Some(Duration::from_millis(t as u64)),
    };
    let cwd = match req.cwd.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let p = path::expand_daemon(&c)?;
            if !p.is_dir() {
                return Err(ApiError::invalid_body(format!(
                    "invalid request: working directory does not exist or is not a directory: {}",
                    p.display()
                )));
            }
            Some(p)
        }
    };
    use super::operation::{self, Step};
    let ping = app.config.ping_interval;
    let pending = match operation::begin(&app, op.as_deref(), Kind::SessionRun, &id, &raw).await? {
        Step::Create(p) => p,
        Step::Replay(cmd_id) => {
            let cmd = app.engine.get(&cmd_id).map_err(|_| {
                ApiError::from(crate::operations::OpError::Expired(op.unwrap_or_default()))
            })?;
            return Ok(operation::replayed(sse::response(event_stream(
                cmd,
                ping,
                StreamMode::Follow { from_eid: 0 },
                Some(id),
            ))));
        }
    };
    let cmd = app
        .engine
        .run_in_session(&id, command, cwd, timeout)
        .await?;
    if base64 {
        cmd.set_output_base64();
    }
    if let Some(p) = pending {
        p.complete(cmd.id.clone());
    }
    Ok(sse::response(event_stream(
        cmd,
        ping,
        StreamMode::Follow { from_eid: 0 },
        Some(id),
    )))
}

/// `GET /session`: every session, `{sessions: [{session_id, running_command}]}`
/// (bounded by `--max-sessions`, so one page).
pub async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let items: Vec<_> = ctx
        .app
        .engine
        .list_sessions()
        .into_iter()
        .map(|(id, run)| serde_json::json!({"session_id": id, "running_command": run}))
        .collect();
    let mut resp = json_response(StatusCode::OK, &serde_json::json!({ "sessions": items }));
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

/// `DELETE /session/{id}`: kills a running run and forgets the session.
pub async fn delete(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.app.engine.delete_session(ctx.param("id"))?;
    Ok(ok_empty())
}
