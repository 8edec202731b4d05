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

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use super::command::{
    event_stream, id_query, interrupt_command, invalid, timeout_ms, validate, RunCommandRequest,
    StreamMode,
};
use super::wire::{json_str, put_u64};
use crate::api::Ctx;
use crate::date::now_ms;
use crate::kernel::{CodeRun, Context, KernelError, State};
use crate::process::follow::{Follower, Step};
use crate::process::{Command, Stream};
use crate::server::{json_response, ok_empty, sse, ApiError, Body};

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
    let timeout = timeout_ms(req.timeout)?;

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
                let cmd = app.engine.start_command(spec)?;
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
    let run = app.kernels.execute(&context, code, timeout)?;
    Ok(sse::response(stream(run, app.config.ping_interval, 0)))
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

const BATCH: usize = 64 * 1024;

/// `..., "eid": N, "timestamp": T}` closing an event whose fields are in `open`.
fn close_event(buf: &mut BytesMut, open: &[u8], eid: u64, ts: u64) {
    buf.put_slice(open);
    if open.len() > 1 {
        buf.put_slice(b",");
    }
    buf.put_slice(b"\"eid\":");
    put_u64(buf, eid);
    buf.put_slice(b",\"timestamp\":");
    put_u64(buf, ts);
    buf.put_slice(b"}\n\n");
}

/// A code run's event stream from `from_eid` (0: `init` first): the run's
/// log as it grows (text as `stdout`/`stderr`, other events from the run),
/// `ping`s in silences, then the terminal event. Any number of readers, at
/// their own pace: the run never waits for one.
pub fn stream(run: Arc<CodeRun>, ping: Duration, from_eid: u64) -> Body {
    let mut buf = BytesMut::with_capacity(1024);
    if from_eid == 0 {
        let init = json!({"type": "init", "text": run.context_id, "command_id": run.cmd.id});
        close_event(&mut buf, &frame_open(&init), 0, now_ms());
    }
    let first = (!buf.is_empty()).then(|| buf.split().freeze());
    let follow = Follow {
        log: Follower::new(run.cmd.clone(), from_eid),
        run,
        ping,
        buf,
        done: false,
    };
    let rest = futures_util::stream::unfold(follow, |mut f| async move {
        let b = f.next().await?;
        Some((b, f))
    });
    sse::stream_body(futures_util::stream::iter(first).chain(rest))
}

/// JSON of `v` without its closing brace, line separators escaped.
fn frame_open(v: &Value) -> Vec<u8> {
    let mut b = frame(v).to_vec();
    b.truncate(b.len() - 3); // "}\n\n"
    b
}

struct Follow {
    run: Arc<CodeRun>,
    log: Follower<Arc<Command>>,
    ping: Duration,
    buf: BytesMut,
    done: bool,
}

impl Follow {
    async fn next(&mut self) -> Option<Bytes> {
        while !self.done {
            match self.log.step(BATCH).await {
                Step::Events(evs) => {
                    for ev in &evs {
                        if ev.data.is_empty() {
                            if let Some(open) = self.run.extra(ev.eid) {
                                close_event(&mut self.buf, &open, ev.eid, ev.ts_ms);
                            }
                            continue;
                        }
                        let kind = if ev.stream == Stream::Stdout {
                            "stdout"
                        } else {
                            "stderr"
                        };
                        self.buf.put_slice(b"{\"type\":\"");
                        self.buf.put_slice(kind.as_bytes());
                        self.buf.put_slice(b"\",\"text\":");
                        json_str(&mut self.buf, &ev.data);
                        self.buf.put_slice(b",");
                        close_event(&mut self.buf, b"", ev.eid, ev.ts_ms);
                    }
                    if !self.buf.is_empty() {
                        return Some(self.buf.split().freeze());
                    }
                    continue;
                }
                Step::Gap { from_eid, gap } => {
                    let v = json!({"type": "gap", "from_eid": from_eid, "to_eid": gap.oldest_eid});
                    close_event(
                        &mut self.buf,
                        &frame_open(&v),
                        gap.oldest_eid.saturating_sub(1),
                        now_ms(),
                    );
                    return Some(self.buf.split().freeze());
                }
                Step::End { next_eid } => {
                    self.done = true;
                    let open = self.run.terminal()?;
                    close_event(&mut self.buf, &open, next_eid, now_ms());
                    return Some(self.buf.split().freeze());
                }
                Step::Idle => {}
            }
            tokio::select! {
                () = self.log.changed() => {}
                () = tokio::time::sleep(self.ping) => {
                    let v = json!({"type": "ping", "text": "pong"});
                    close_event(&mut self.buf, &frame_open(&v), self.log.next_eid() - 1, now_ms());
                    return Some(self.buf.split().freeze());
                }
            }
        }
        None
    }
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
    let id = id_query(&ctx)?;
    match ctx.app.kernels.interrupt(&id) {
        Err(KernelError::NotFound(_)) => interrupt_command(&ctx.app, &id)?,
        r => r?,
    }
    Ok(ok_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_escape_line_separators() {
        let b = frame(&json!({"text": "a\u{2028}b\u{85}c"}));
        let s = std::str::from_utf8(&b).expect("utf-8");
        assert!(!s.contains('\u{2028}') && !s.contains('\u{85}'), "{s}");
        let v: Value = serde_json::from_str(s.trim_end()).expect("json");
        assert_eq!(v["text"], "a\u{2028}b\u{85}c");
    }
}
