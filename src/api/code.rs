//! `/code`: code contexts backed by Jupyter kernels (see `crate::kernel`),
//! with upstream's routes, bodies and event stream.
//!
//! - `POST /code {code, context: {id?, language?}, timeout?}`: `init` (its
//!   text is the context id, which `DELETE /code?id=` takes), then
//!   `execution_count`, `stdout`/`stderr`, `result` (MIME bundles, from
//!   `execute_result`, `display_data` and `update_display_data`; Jupyter's
//!   `text/plain` is named `text`), and last `error` or
//!   `execution_complete`. No `context.id`: the language's default context,
//!   started on first use. `language` absent, `command` or
//!   `background-command` (with no id): the same as `POST /command`.
//! - A run on a busy context is refused with 409 `CONTEXT_BUSY` before any
//!   event; on a context whose kernel died, 409 `CONTEXT_DEAD`.
//! - `timeout` (milliseconds, extension): the run is interrupted, and ends
//!   with an `error` event carrying `"timed_out": true`.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use super::command::{event_stream, validate, RunCommandRequest, StreamMode};
use super::wire::now_ms;
use crate::kernel::{Context, Event, KernelError, Out, Outcome, State};
use crate::server::{json_response, ok_empty, sse, ApiError, Body, Ctx};

#[derive(Debug, Default, Deserialize)]
struct ContextRef {
    id: Option<String>,
    language: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RunCodeRequest {
    code: Option<String>,
    context: Option<ContextRef>,
    /// Milliseconds; absent or 0 means none (extension).
    timeout: Option<i64>,
    // Passed on when the language is `command` / `background-command`.
    cwd: Option<String>,
    envs: Option<std::collections::HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
struct CreateContextRequest {
    language: Option<String>,
    cwd: Option<String>,
}

fn invalid(msg: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_body(format!("invalid request, validation error: {msg}"))
}

/// Languages that are not kernels.
fn not_a_kernel(language: &str) -> Option<ApiError> {
    match language {
        "sql" => Some(ApiError::new(
            StatusCode::BAD_REQUEST,
            "NOT_SUPPORTED",
            "language 'sql' is not supported: it needs a MySQL server on 127.0.0.1:3306 \
             (upstream's runtime), which execd does not provide",
        )),
        "command" | "background-command" => Some(invalid(format!(
            "language '{language}' has no code contexts: it runs as POST /command"
        ))),
        _ => None,
    }
}

fn check_language(language: &str) -> Result<(), ApiError> {
    if language.is_empty()
        || language.len() > 64
        || !language
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'+' | b'.'))
    {
        return Err(invalid(format!("invalid language {language:?}")));
    }
    Ok(())
}

/// `POST /code`.
pub async fn run(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let req: RunCodeRequest = ctx.json().await?;
    let code = req.code.ok_or_else(|| invalid("'code' is required"))?;
    if code.trim().is_empty() {
        return Err(invalid("'code' must not be empty"));
    }
    let cref = req.context.unwrap_or_default();
    let id = cref.id.filter(|s| !s.is_empty());
    let language = cref.language.unwrap_or_default().to_ascii_lowercase();
    let timeout = match req.timeout {
        None | Some(0) => None,
        Some(t) if t < 0 => {
            return Err(invalid(format!(
                "'timeout' must be >= 0 milliseconds, got {t}"
            )))
        }
        Some(t) => Some(Duration::from_millis(t as u64)),
    };

    let context = match id {
        Some(id) => app.kernels.get(&id)?,
        None => match language.as_str() {
            "" | "command" | "background-command" => {
                let spec = validate(RunCommandRequest {
                    command: Some(code),
                    cwd: req.cwd,
                    envs: req.envs,
                    timeout: req.timeout,
                    background: Some(language == "background-command"),
                    ..Default::default()
                })?;
                let background = spec.background;
                let cmd = app.engine.start_command(spec);
                let mode = if background {
                    StreamMode::Background
                } else {
                    StreamMode::Follow { from_eid: 0 }
                };
                return Ok(sse::response(event_stream(
                    cmd,
                    app.config.ping_interval,
                    mode,
                    None,
                )));
            }
            other => {
                if let Some(e) = not_a_kernel(other) {
                    return Err(e);
                }
                check_language(other)?;
                app.kernels.default_for(other).await?
            }
        },
    };
    let rx = context.execute(code, timeout)?;
    Ok(sse::response(stream(
        context.id.clone(),
        rx,
        app.config.ping_interval,
    )))
}

/// One event as a line: JSON, with U+2028, U+2029 and U+0085 escaped (line
/// splitters in SDKs break on them; serde_json leaves them raw).
fn frame(v: &Value) -> Bytes {
    let s = v.to_string();
    let s = if s.contains(['\u{2028}', '\u{2029}', '\u{85}']) {
        s.replace('\u{2028}', "\\u2028")
            .replace('\u{2029}', "\\u2029")
            .replace('\u{85}', "\\u0085")
    } else {
        s
    };
    let mut b = s.into_bytes();
    b.extend_from_slice(b"\n\n");
    Bytes::from(b)
}

/// Jupyter's MIME bundle as upstream sends it: `text/plain` named `text`.
fn results(mut data: Map<String, Value>) -> Value {
    if let Some(t) = data.remove("text/plain") {
        data.insert("text".into(), t);
    }
    Value::Object(data)
}

fn encode(ev: Event) -> (Value, bool) {
    let ts = now_ms();
    match ev {
        Event::Stream { stderr, text } => (
            json!({"type": if stderr {"stderr"} else {"stdout"}, "text": text, "timestamp": ts}),
            false,
        ),
        Event::ExecutionCount(n) => (
            json!({"type": "execution_count", "execution_count": n, "timestamp": ts}),
            false,
        ),
        Event::Result {
            data,
            execution_count,
        } => {
            let mut v = json!({"type": "result", "results": results(data), "timestamp": ts});
            if let Some(n) = execution_count {
                v["execution_count"] = n.into();
            }
            (v, false)
        }
        Event::Error {
            ename,
            evalue,
            traceback,
        } => (
            json!({"type": "error", "error": {"ename": ename, "evalue": evalue, "traceback": traceback}, "timestamp": ts}),
            false,
        ),
        Event::Done { elapsed, outcome } => {
            let ms = elapsed.as_millis() as u64;
            let v = match outcome {
                Outcome::Ok => {
                    json!({"type": "execution_complete", "execution_time": ms, "timestamp": ts})
                }
                // The kernel's error event was the run's last word.
                Outcome::KernelError => Value::Null,
                Outcome::Failed {
                    ename,
                    evalue,
                    timed_out,
                } => json!({
                    "type": "error",
                    "error": {"ename": ename, "evalue": evalue, "traceback": []},
                    "execution_time": ms,
                    "timed_out": timed_out,
                    "timestamp": ts,
                }),
            };
            (v, true)
        }
    }
}

struct Follow {
    rx: mpsc::Receiver<Out>,
    ping: Duration,
    done: bool,
}

/// The run's event stream: `init`, the kernel's events as they come, a
/// `ping` after each `ping` of silence, and the terminal event.
fn stream(id: String, rx: mpsc::Receiver<Out>, ping: Duration) -> Body {
    let init = frame(&json!({"type": "init", "text": id, "timestamp": now_ms()}));
    let follow = Follow {
        rx,
        ping,
        done: false,
    };
    let rest = futures_util::stream::unfold(follow, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            match tokio::time::timeout(f.ping, f.rx.recv()).await {
                Err(_) => {
                    let p = frame(&json!({"type": "ping", "text": "pong", "timestamp": now_ms()}));
                    return Some((p, f));
                }
                Ok(None) => {
                    // The driver ended without a terminal event for this run.
                    f.done = true;
                    let v = json!({
                        "type": "error",
                        "error": {"ename": "KernelDied", "evalue": "the kernel ended before the run finished", "traceback": []},
                        "timestamp": now_ms(),
                    });
                    return Some((frame(&v), f));
                }
                Ok(Some(out)) => {
                    // The event's share of the output budget goes back here.
                    let (v, last) = encode(out.event);
                    f.done = last;
                    if v.is_null() {
                        continue;
                    }
                    return Some((frame(&v), f));
                }
            }
        }
    });
    use futures_util::StreamExt;
    sse::stream_body(futures_util::stream::iter([init]).chain(rest))
}

fn describe(c: &Context) -> Value {
    let (state, why) = match c.state() {
        State::Idle => ("idle", None),
        State::Busy => ("busy", None),
        State::Dead(why) => ("dead", Some(why)),
    };
    let mut v = json!({
        "id": c.id,
        "language": c.language,
        "kernel": c.kernel_name,
        "state": state,
        "pid": c.pid,
    });
    if let Some(cwd) = &c.cwd {
        v["cwd"] = cwd.to_string_lossy().into_owned().into();
    }
    if let Some(why) = why {
        v["error"] = why.into();
    }
    v
}

/// `POST /code/context {language, cwd?}` → `{id, language[, cwd]}`.
pub async fn create_context(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let req: CreateContextRequest = ctx.json().await?;
    let language = req
        .language
        .filter(|l| !l.is_empty())
        .ok_or_else(|| invalid("'language' is required"))?
        .to_ascii_lowercase();
    if let Some(e) = not_a_kernel(&language) {
        return Err(e);
    }
    check_language(&language)?;
    let cwd = match req.cwd.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => {
            let p = crate::fs::path::expand_daemon(&c)?;
            std::fs::create_dir_all(&p)
                .map_err(|e| invalid(format!("cwd: cannot create {}: {e}", p.display())))?;
            Some(p)
        }
    };
    let c = app.kernels.create(&language, cwd).await?;
    Ok(json_response(StatusCode::OK, &describe(&c)))
}

fn language_query(ctx: &Ctx) -> Option<String> {
    ctx.query()
        .get("language")
        .filter(|l| !l.is_empty())
        .map(str::to_ascii_lowercase)
}

/// `GET /code/contexts[?language=]`.
pub async fn list_contexts(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let language = language_query(&ctx);
    if let Some(e) = language.as_deref().and_then(not_a_kernel) {
        return Err(e);
    }
    let v: Vec<Value> = ctx
        .app
        .kernels
        .list(language.as_deref())
        .iter()
        .map(|c| describe(c))
        .collect();
    Ok(json_response(StatusCode::OK, &v))
}

/// `DELETE /code/contexts?language=`: deletes every context of the language.
pub async fn delete_contexts(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let language = language_query(&ctx).ok_or_else(|| ApiError::missing_query("language"))?;
    if let Some(e) = not_a_kernel(&language) {
        return Err(e);
    }
    ctx.app.kernels.delete_language(&language).await;
    Ok(ok_empty())
}

/// `GET /code/contexts/{id}`.
pub async fn get_context(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let c = ctx.app.kernels.get(ctx.param("id"))?;
    Ok(json_response(StatusCode::OK, &describe(&c)))
}

/// `DELETE /code/contexts/{id}`: kills the kernel; answers once it is reaped.
pub async fn delete_context(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    ctx.app.kernels.delete(ctx.param("id")).await?;
    Ok(ok_empty())
}

/// `DELETE /code?id=`: interrupts a context's run (as its kernelspec says),
/// or, for a command id, the command (as `DELETE /command`).
pub async fn interrupt(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query();
    let id = q
        .get("id")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::missing_query("id"))?;
    match ctx.app.kernels.interrupt(id) {
        Err(KernelError::NotFound(_)) => ctx.app.engine.interrupt(id)?,
        r => r?,
    }
    Ok(ok_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_plain_is_renamed_and_png_kept() {
        let mut m = Map::new();
        m.insert("text/plain".into(), "<Figure>".into());
        m.insert("image/png".into(), "iVBORw0KGgo=".into());
        let v = results(m);
        assert_eq!(v["text"], "<Figure>");
        assert_eq!(v["image/png"], "iVBORw0KGgo=");
        assert!(v.get("text/plain").is_none());
    }

    #[test]
    fn frames_escape_line_separators() {
        let b = frame(&json!({"text": "a\u{2028}b\u{85}c"}));
        let s = std::str::from_utf8(&b).expect("utf-8");
        assert!(!s.contains('\u{2028}') && !s.contains('\u{85}'), "{s}");
        let v: Value = serde_json::from_str(s.trim_end()).expect("json");
        assert_eq!(v["text"], "a\u{2028}b\u{85}c");
    }
}
