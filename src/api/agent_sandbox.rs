//! The kubernetes-sigs/agent-sandbox python-runtime API (`GET /`,
//! `/execute`, `/upload`, `/download/…`, `/list/…`, `/exists/…`), served
//! beside everything else on the main port.
//!
//! Better than the reference where it is merely buggy: commands run through
//! `/bin/sh -c`; `timeout_seconds` is honoured and a timeout keeps the
//! partial output and sets `timed_out`; output is capped with a marker;
//! paths are percent-decoded once; a broken or escaping symlink is left out
//! of a listing instead of failing it; uploads are atomic.

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

use crate::api::files::{receive_part, PartError};
use crate::api::transfer::{self, Span};
use crate::api::{App, Ctx};
use crate::fs::attrs::AttrRequest;
use crate::fs::confined::ConfineError;
use crate::fs::root::{Place, Root};
use crate::fs::FsError;
use crate::process::capture::{capture, with_marker};
use crate::process::{CommandSpec, Engine, Program};
use crate::server::{json_response, ApiError, Body};

/// Output kept per stream of one `/execute`.
pub const OUTPUT_CAP: usize = 1 << 20;
/// Exit code reported for a command killed by its time limit (as
/// coreutils `timeout`, and as the SDK reports a sandboxd deadline).
pub const TIMEOUT_EXIT: i32 = 124;
/// The longest `timeout_seconds` taken as asked.
const MAX_TIMEOUT: f64 = 7.0 * 24.0 * 3600.0;

/// The python-runtime base directory.
pub fn base_dir(app: &App) -> PathBuf {
    app.config
        .agent_base_dir
        .clone()
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The python-runtime's root: the base directory, confined.
pub async fn base_root(app: &App) -> Result<Root, FsError> {
    Root::confined(base_dir(app)).await
}

/// The `{*path}` tail, percent-decoded exactly once.
pub fn tail(ctx: &Ctx) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(ctx.param("path"))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_PATH", "path is not UTF-8"))
}

/// The request's `Content-Type`, or "".
pub fn content_type(ctx: &Ctx) -> String {
    ctx.req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

fn message(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, code, msg)
}

fn denied() -> ApiError {
    message(StatusCode::FORBIDDEN, "ACCESS_DENIED", "Access denied")
}

/// A request path under the base directory; 403 for an escape.
fn place(path: &str) -> Result<Place, ApiError> {
    Place::runtime(path).map_err(|e| match e {
        ConfineError::Escapes => denied(),
        other => message(StatusCode::BAD_REQUEST, "INVALID_PATH", other.to_string()),
    })
}

/// `GET /`
pub fn root(_app: &App) -> Result<Response<Body>, ApiError> {
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "message": "Sandbox Runtime is active."}),
    ))
}

#[derive(Deserialize)]
struct ExecuteRequest {
    command: String,
    #[serde(default)]
    timeout_seconds: Option<f64>,
}

#[derive(Serialize)]
struct ExecuteResponse {
    stdout: String,
    stderr: String,
    exit_code: i32,
    timed_out: bool,
}

/// Interrupts the command if the request is dropped (client gone) before it ends.
struct KillOnDrop<'a>(&'a Engine, &'a str);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.interrupt(self.1);
    }
}

/// `POST /execute` `{command, timeout_seconds?}`: always 200 once the
/// request is valid, as the reference.
pub async fn execute(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let req: ExecuteRequest = ctx.json().await.map_err(|e| {
        message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_REQUEST_BODY",
            e.message,
        )
    })?;
    let limit = match req.timeout_seconds {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(MAX_TIMEOUT)),
        _ => app.config.agent_exec_timeout,
    };
    let cmd = app
        .engine
        .start_command(CommandSpec {
            program: Program::Argv(vec!["/bin/sh".into(), "-c".into(), req.command]),
            cwd: Some(base_dir(&app)),
            envs: Vec::new(),
            timeout: Some(limit),
            uid: None,
            gid: None,
            background: false,
            stdin: false,
        })
        .map_err(|e| {
            message(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_RUNNING",
                e.to_string(),
            )
        })?;
    let _guard = KillOnDrop(&app.engine, &cmd.id);
    let (out, finished) = capture(&cmd, OUTPUT_CAP).await;
    let mut stderr = with_marker(out.stderr, out.stderr_omitted);
    let (exit_code, timed_out) = match &finished {
        Some(f) if f.spawn_failed => {
            let why = f.error.clone().unwrap_or_default();
            stderr.extend_from_slice(format!("Failed to execute command: {why}").as_bytes());
            (f.exit_code, false)
        }
        Some(f) if f.timed_out => {
            stderr.extend_from_slice(
                format!(
                    "[execd: command timed out after {}s; its process tree was killed]\n",
                    limit.as_secs_f64()
                )
                .as_bytes(),
            );
            (TIMEOUT_EXIT, true)
        }
        // Killed by a signal: minus the signal number, as the reference.
        Some(f) => (f.signal.map_or(f.exit_code, |s| -s), false),
        None => (-1, false),
    };
    let resp = ExecuteResponse {
        stdout: String::from_utf8_lossy(&with_marker(out.stdout, out.stdout_omitted)).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        exit_code,
        timed_out,
    };
    Ok(json_response(StatusCode::OK, &resp))
}

/// `POST /upload`: multipart part `file`, whose filename is the destination
/// relative to the base directory; parents are created; atomic.
pub async fn upload(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let ct = content_type(&ctx);
    let boundary = multer::parse_boundary(&ct).map_err(|_| {
        message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "INVALID_REQUEST_BODY",
            "expected a multipart/form-data body with a part named 'file'",
        )
    })?;
    let body = crate::api::transfer::form::Bounded::new(
        http_body_util::BodyDataStream::new(ctx.req.into_body()),
        &boundary,
    );
    let mut form = multer::Multipart::new(body, boundary);
    let failed = |e: &dyn std::fmt::Display| {
        message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UPLOAD_FAILED",
            format!("File upload failed: {e}"),
        )
    };
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => {
                return Err(message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "INVALID_REQUEST_BODY",
                    "the multipart body has no part named 'file'",
                ))
            }
            Err(e) => return Err(malformed(&e)),
        };
        if field.name() != Some("file") {
            continue;
        }
        let filename = field.file_name().unwrap_or("").to_string();
        let place = place(&filename)?;
        let root = base_root(&app).await.map_err(|e| failed(&e))?;
        // Written relative to the directory checked there, never by path.
        let w = root
            .create(&place, AttrRequest::default())
            .await
            .map_err(|e| if e.escapes() { denied() } else { failed(&e) })?;
        match receive_part(&mut field, w).await {
            Ok(_) => {}
            Err(PartError::Body(e)) if crate::api::transfer::form::over_limit(&e) => {
                return Err(malformed(&e))
            }
            Err(PartError::Body(e)) => return Err(failed(&e)),
            Err(PartError::Fs(e)) => return Err(failed(&e)),
        }
        return Ok(json_response(
            StatusCode::OK,
            &serde_json::json!({
                "message": format!("File '{filename}' uploaded successfully.")
            }),
        ));
    }
}

/// `GET /download/{path}` (and `HEAD`: the headers only): the file's bytes.
pub async fn download(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let path = tail(&ctx)?;
    let place = place(&path)?;
    let not_found = || message(StatusCode::NOT_FOUND, "FILE_NOT_FOUND", "File not found");
    let root = base_root(&ctx.app).await.map_err(|_| not_found())?;
    let (file, entry) =
        root.open_file(&place)
            .await
            .map_err(|e| if e.escapes() { denied() } else { not_found() })?;
    // HEAD: GET's headers, no body (the file is not read).
    let head = ctx.req.method() == http::Method::HEAD;
    let mut resp = transfer::download(file, entry.size, entry.modified, Span::Whole, head);
    if let Ok(v) = HeaderValue::from_str(&transfer::content_disposition(path.as_bytes())) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

#[derive(Serialize)]
struct ListEntry {
    name: String,
    size: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    mod_time: f64,
}

/// `GET /list/{path}`: a bare array of the directory's entries.
pub async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let path = tail(&ctx)?;
    let place = place(&path)?;
    let not_dir = || {
        message(
            StatusCode::NOT_FOUND,
            "NOT_A_DIRECTORY",
            "Path is not a directory",
        )
    };
    let root = base_root(&ctx.app).await.map_err(|_| not_dir())?;
    let entries = root.list(&place).await.map_err(|e| match e {
        e if e.escapes() => denied(),
        e if matches!(e.errno(), Some(libc::ENOENT | libc::ENOTDIR)) => not_dir(),
        e => message(
            StatusCode::INTERNAL_SERVER_ERROR,
            "LIST_FAILED",
            format!("List files failed: {e}"),
        ),
    })?;
    let out: Vec<ListEntry> = entries
        .into_iter()
        .map(|e| ListEntry {
            name: String::from_utf8_lossy(e.name.as_bytes()).into_owned(),
            size: e.size,
            kind: if e.is_dir { "directory" } else { "file" },
            mod_time: e
                .modified
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        })
        .collect();
    Ok(json_response(StatusCode::OK, &out))
}

/// `GET /exists/{path}`: `{path, exists}`, the path echoed as decoded.
pub async fn exists(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let path = tail(&ctx)?;
    let place = place(&path)?;
    let exists = match base_root(&ctx.app).await {
        Ok(root) => match root.stat(&place).await {
            Ok(_) => true,
            Err(e) if e.escapes() => return Err(denied()),
            Err(_) => false,
        },
        Err(_) => false,
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"path": path, "exists": exists}),
    ))
}

/// 400 for a multipart body that could not be read.
fn malformed(e: &multer::Error) -> ApiError {
    message(
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST_BODY",
        format!(
            "malformed multipart body: {}",
            crate::api::transfer::form::describe(e)
        ),
    )
}
