//! `/v1/isolated/*`: isolated sessions (see `crate::isolate`).

use std::collections::HashMap;
use std::time::Duration;

use http::{Response, StatusCode};
use serde::Deserialize;

use super::command::{event_stream, log_response, StreamMode};
use crate::api::Ctx;
use crate::date::rfc3339;
use crate::isolate::{IsolateError, RunSpec, Session, SessionRequest};
use crate::server::{json_response, ok_empty, sse, ApiError, Body};

/// The tail cursor of `…/runs/{run_id}/logs`, as the SDK reads it.
pub const TAIL_CURSOR_HEADER: &str = "execd-isolated-tail-cursor";

/// `POST /v1/isolated/session` → 201 `{session_id, created_at}`.
pub async fn create(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let req: SessionRequest = ctx.json().await?;
    let s = app.isolated.create(req).await?;
    Ok(json_response(
        StatusCode::CREATED,
        &serde_json::json!({
            "session_id": s.id,
            "created_at": rfc3339(s.created_at),
        }),
    ))
}

fn summary(s: &Session) -> serde_json::Value {
    let mut v = serde_json::json!({
        "session_id": s.id,
        "status": s.status(),
        "created_at": rfc3339(s.created_at),
        "last_run_at": rfc3339(s.last_run_at()),
    });
    if let Some(r) = s.idle_remaining() {
        v["idle_remaining_seconds"] = r.into();
    }
    v
}

/// `GET /v1/isolated/sessions`.
pub async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let sessions: Vec<serde_json::Value> =
        ctx.app.isolated.list().iter().map(|s| summary(s)).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "sessions": sessions }),
    ))
}

/// `GET /v1/isolated/session/{id}`: the state plus an echo of the create
/// request (`idle_timeout_seconds` always, 0 = no idle expiry).
pub async fn get(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let s = ctx.app.isolated.get(ctx.param("id"))?;
    let mut v = summary(&s);
    if let Ok(serde_json::Value::Object(echo)) = serde_json::to_value(&s.request) {
        for (k, x) in echo {
            v[k] = x;
        }
    }
    v["profile"] = if s.strict { "strict" } else { "balanced" }.into();
    v["overlays"] = s
        .mounts
        .iter()
        .map(|m| {
            let mut o = serde_json::json!({
                "path": m.path.to_string_lossy(),
                "mode": match m.mode {
                    crate::isolate::Mode::Overlay => "overlay",
                    crate::isolate::Mode::Rw => "rw",
                    crate::isolate::Mode::Ro => "ro",
                },
            });
            if m.mode == crate::isolate::Mode::Overlay {
                o["persist"] = m.persist.into();
            }
            o
        })
        .collect();
    v["idle_timeout_seconds"] = s.request.idle_timeout_seconds.unwrap_or(0).into();
    Ok(json_response(StatusCode::OK, &v))
}

/// `DELETE /v1/isolated/session/{id}`: 200, empty.
pub async fn delete(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.app.isolated.delete(ctx.param("id")).await?;
    Ok(ok_empty())
}

/// `GET /v1/isolated/capabilities`: always 200.
pub async fn capabilities(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let p = ctx.app.isolated.probe();
    let active = |on: bool, why: &str| {
        if on {
            serde_json::json!({"state": "active", "message": null})
        } else {
            serde_json::json!({"state": "unsupported", "message": why})
        }
    };
    let v = serde_json::json!({
        "available": p.available,
        "isolator": "native",
        "version": env!("CARGO_PKG_VERSION"),
        "message": p.message,
        "setpriv_available": p.available,
        "userns_available": p.available && p.userns,
        "diff_supported": p.available,
        "commit_supported": p.available,
        "hardening": {
            "init_mode": "pid1",
            "signal_shield": true,
            "cap_drop": active(p.available, "isolation unavailable"),
            "seccomp": active(false, "no seccomp filter is installed"),
            "landlock": active(false, "landlock is not used"),
            "ebpf": active(false, "no eBPF observation"),
        },
        "runtime_init": {"version": 1},
        "enforced": {
            "namespaces": ["mnt", "pid", "ipc", "uts", "net (unless share_net)"],
            "read_only_root": true,
            "no_new_privs": true,
            "strict": "every capability dropped (bounding, effective, permitted, inheritable)",
            "balanced": "CAP_SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE, SYS_BOOT, SYS_TIME, MKNOD, NET_ADMIN, SYS_CHROOT, MAC_*, BPF, PERFMON, SYSLOG dropped",
            "uid_mode": if p.userns { serde_json::json!(["setpriv", "userns"]) } else { serde_json::json!(["setpriv"]) },
            "file_routes": "in the session's view, as the session's uid/gid when it names them",
        },
    });
    Ok(json_response(StatusCode::OK, &v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    code: String,
    #[serde(default)]
    envs: Option<HashMap<String, String>>,
    #[serde(default)]
    timeout_seconds: Option<i64>,
    #[serde(default)]
    background: Option<bool>,
}

/// `POST /v1/isolated/session/{id}/run`: the event stream (stdout and
/// stderr apart), or 202 `{session_id, run_id, started_at}` in the background.
pub async fn run(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let id = ctx.param("id").to_string();
    // An unknown session is 404 before the body is looked at.
    app.isolated.get(&id)?;
    let req: RunRequest = ctx.json().await?;
    if req.code.trim().is_empty() {
        return Err(ApiError::invalid_body("code must not be empty"));
    }
    let background = req.background.unwrap_or(false);
    let timeout = match req.timeout_seconds {
        None | Some(0) => None,
        Some(n) if n < 0 => return Err(ApiError::invalid_body("timeout_seconds must be >= 0")),
        Some(n) => Some(Duration::from_secs(n as u64)),
    };
    let mut envs: Vec<(String, String)> = req.envs.unwrap_or_default().into_iter().collect();
    envs.sort();
    let cmd = app.isolated.run(
        &id,
        RunSpec {
            code: req.code,
            envs,
            timeout,
            background,
        },
    )?;
    if background {
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({
                "session_id": id,
                "run_id": cmd.id,
                "started_at": rfc3339(cmd.started_at),
            }),
        ));
    }
    let ping = app.config.ping_interval;
    Ok(sse::response(event_stream(
        cmd,
        ping,
        StreamMode::Follow { from_eid: 0 },
        None,
    )))
}

fn session_run(
    ctx: &Ctx,
) -> Result<
    (
        std::sync::Arc<Session>,
        std::sync::Arc<crate::process::Command>,
    ),
    ApiError,
> {
    let s = ctx.app.isolated.get(ctx.param("id"))?;
    let run_id = ctx.param("run_id");
    let r = s
        .run(run_id)
        .ok_or_else(|| IsolateError::RunNotFound(s.id.clone(), run_id.to_string()))?;
    Ok((s, r))
}

/// `GET /v1/isolated/session/{id}/runs/{run_id}`.
pub async fn run_status(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let (s, r) = session_run(&ctx)?;
    let mut v = serde_json::json!({
        "session_id": s.id,
        "run_id": r.id,
        "running": r.is_running(),
        "started_at": rfc3339(r.started_at),
    });
    if let Some(f) = r.finished() {
        v["running"] = false.into();
        v["exit_code"] = f.exit_code.into();
        v["finished_at"] = rfc3339(f.finished_at).into();
        if let Some(e) = f.error {
            v["error"] = e.into();
        }
    }
    Ok(json_response(StatusCode::OK, &v))
}

/// `GET /v1/isolated/session/{id}/runs/{run_id}/logs?cursor=N`: the run's
/// output from byte N (stdout and stderr as they came), the next cursor in
/// `EXECD-ISOLATED-TAIL-CURSOR`.
pub async fn run_logs(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let (_, r) = session_run(&ctx)?;
    log_response(&ctx, r, TAIL_CURSOR_HEADER).await
}

/// `GET /v1/isolated/session/{id}/diff[?text=true]` (execd's extension):
/// what the session changed under each overlay, from its upper layer.
pub async fn diff(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let text = matches!(ctx.query().get("text"), Some("true" | "1"));
    let v = ctx.app.isolated.diff(ctx.param("id"), text).await?;
    Ok(json_response(StatusCode::OK, &v))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApplyRequest {
    #[serde(default)]
    paths: Option<Vec<String>>,
    #[serde(default)]
    force: Option<bool>,
}

fn apply_paths(req: &ApplyRequest) -> Result<Vec<std::path::PathBuf>, ApiError> {
    let mut out = Vec::new();
    for p in req.paths.iter().flatten() {
        let path = std::path::Path::new(p);
        if !path.is_absolute()
            || path
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(ApiError::invalid_body(format!(
                "paths must be absolute and without '..': {p:?}"
            )));
        }
        out.push(path.to_path_buf());
    }
    Ok(out)
}

/// `POST /v1/isolated/session/{id}/commit` `{paths?, force?}` (execd's
/// extension): applies the changes to the lower directories.
pub async fn commit(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let id = ctx.param("id").to_string();
    app.isolated.get(&id)?;
    let req: ApplyRequest = ctx.json_or_default().await?;
    let paths = apply_paths(&req)?;
    let v = app
        .isolated
        .apply(&id, paths, req.force.unwrap_or(false), false)
        .await?;
    Ok(json_response(StatusCode::OK, &v))
}

/// `POST /v1/isolated/session/{id}/discard` `{paths?}` (execd's extension):
/// drops changes from the upper layers.
pub async fn discard(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let id = ctx.param("id").to_string();
    app.isolated.get(&id)?;
    let req: ApplyRequest = ctx.json_or_default().await?;
    let paths = apply_paths(&req)?;
    let v = app.isolated.apply(&id, paths, false, true).await?;
    Ok(json_response(StatusCode::OK, &v))
}
