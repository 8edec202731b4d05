//! `/command`: run, interrupt, status and logs.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderValue, Response, StatusCode};
use serde::Deserialize;
use tokio::time::Instant;

use super::wire::{json_str, put_base64, put_bool, put_i64, put_u64};
use crate::api::Ctx;
use crate::date::{ms_since_epoch, now_ms, rfc3339};
use crate::fs::path;
use crate::operations::Kind;
use crate::process::follow::{Follower, Step};
use crate::process::{Command, CommandSpec, Finished, Program, Stream};
use crate::server::{json_response, ok_empty, sse, ApiError, Body};

/// `POST /command` body. Unknown fields are ignored; known ones must have the right type.
#[derive(Debug, Default, Deserialize)]
pub struct RunCommandRequest {
    pub command: Option<String>,
    pub argv: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub background: Option<bool>,
    /// Milliseconds; absent or 0 means none.
    pub timeout: Option<i64>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub envs: Option<HashMap<String, String>>,
    /// Extension: keep stdin open as a pipe.
    pub stdin: Option<bool>,
    /// Extension: `"base64"` carries output as base64 in `text` (with
    /// `"encoding":"base64"`); absent or `"text"` is the default UTF-8 text.
    pub output_encoding: Option<String>,
}

/// Whether `output_encoding` asks for base64; 400 for an unknown value.
pub fn wants_base64(encoding: Option<&str>) -> Result<bool, ApiError> {
    match encoding {
        None | Some("" | "text" | "utf-8" | "utf8") => Ok(false),
        Some("base64") => Ok(true),
        Some(other) => Err(invalid(format!(
            "'output_encoding' must be \"text\" or \"base64\", got {other:?}"
        ))),
    }
}

pub(super) fn invalid(msg: impl std::fmt::Display) -> ApiError {
    ApiError::invalid_body(format!("invalid request, validation error: {msg}"))
}

/// A request's `timeout` in milliseconds: absent or 0 is none, negative a 400.
pub(super) fn timeout_ms(t: Option<i64>) -> Result<Option<Duration>, ApiError> {
    match t {
        None | Some(0) => Ok(None),
        Some(ms) => u64::try_from(ms)
            .map(|ms| Some(Duration::from_millis(ms)))
            .map_err(|_| invalid(format!("'timeout' must be >= 0 milliseconds, got {ms}"))),
    }
}

/// Checks a request and turns it into what the engine runs.
pub fn validate(req: RunCommandRequest) -> Result<CommandSpec, ApiError> {
    let program = match (req.command, req.argv) {
        (Some(_), Some(_)) => return Err(invalid("'command' and 'argv' are mutually exclusive")),
        (None, None) => return Err(invalid("one of 'command' or 'argv' is required")),
        (Some(c), None) => {
            if c.trim().is_empty() {
                return Err(invalid("'command' must not be empty"));
            }
            if c.contains('\0') {
                return Err(invalid("'command' must not contain NUL bytes"));
            }
            Program::Shell(c)
        }
        (None, Some(argv)) => {
            if argv.first().is_none_or(|a| a.is_empty()) {
                return Err(invalid("'argv' must have a non-empty first element"));
            }
            if argv.iter().any(|a| a.contains('\0')) {
                return Err(invalid("'argv' elements must not contain NUL bytes"));
            }
            Program::Argv(argv)
        }
    };
    let timeout = timeout_ms(req.timeout)?;
    if req.gid.is_some() && req.uid.is_none() {
        return Err(invalid("uid is required when gid is provided"));
    }
    let envs: Vec<(String, String)> = req.envs.unwrap_or_default().into_iter().collect();
    for (k, v) in &envs {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(invalid(format!(
                "invalid environment variable {k:?}: names must be non-empty without '=' or NUL, values without NUL"
            )));
        }
    }
    let cwd = match req.cwd.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(working_dir(&c, req.uid)?),
    };
    Ok(CommandSpec {
        program,
        cwd,
        envs,
        timeout,
        uid: req.uid,
        gid: req.gid,
        background: req.background.unwrap_or(false),
        stdin: req.stdin.unwrap_or(false),
    })
}

/// Expands and checks a working directory. With a `uid`, `~` and `$HOME`
/// are that user's home (the `HOME` the command gets), not execd's.
fn working_dir(raw: &str, uid: Option<u32>) -> Result<PathBuf, ApiError> {
    let p = match uid {
        Some(uid) => path::expand_with_home(raw, &crate::process::user_identity(uid).1),
        None => path::expand_daemon(raw),
    }
    .map_err(|e| invalid(format!("cwd: {e}")))?;
    match std::fs::metadata(&p) {
        Ok(m) if m.is_dir() => Ok(p),
        Ok(_) => Err(invalid(format!(
            "working directory path is not a directory: {}",
            p.display()
        ))),
        Err(e) => Err(invalid(format!(
            "working directory does not exist: {}: {e}",
            p.display()
        ))),
    }
}

/// `POST /command`: starts the command and streams its events.
pub async fn run(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    use super::operation::{self, Step};
    let app = ctx.app.clone();
    let op = operation::id(ctx.req.headers())?;
    let (req, raw) = ctx.json_raw::<RunCommandRequest>(false).await?;
    let base64 = wants_base64(req.output_encoding.as_deref())?;
    let spec = validate(req)?;
    let background = spec.background;
    let ping = app.config.ping_interval;
    let mode = if background {
        StreamMode::Background
    } else {
        StreamMode::Follow { from_eid: 0 }
    };
    let pending = match operation::begin(&app, op.as_deref(), Kind::Command, "", &raw).await? {
        Step::Create(p) => p,
        // A retry: the command the first attempt started, its stream from
        // the start (what is still retained), as a resume would give it.
        Step::Replay(id) => {
            let cmd = app.engine.get(&id).map_err(|_| {
                ApiError::from(crate::operations::OpError::Expired(op.unwrap_or_default()))
            })?;
            return Ok(operation::replayed(sse::response(event_stream(
                cmd, ping, mode, None,
            ))));
        }
    };
    let cmd = app.engine.start_command(spec)?;
    if base64 {
        cmd.set_output_base64();
    }
    if let Some(p) = pending {
        p.complete(cmd.id.clone());
    }
    Ok(sse::response(event_stream(cmd, ping, mode, None)))
}

/// What a stream shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamMode {
    /// Every event from `from_eid` on (`init` is eid 0), then the terminal event.
    Follow { from_eid: u64 },
    /// `init`, then `execution_complete` as soon as the process has started.
    Background,
}

const BATCH: usize = 64 * 1024;

/// Event bytes per frame: [`BATCH`], less when many streams are open. A
/// frame stays in memory until the socket has taken all of it, so with
/// 1,000 clients reading 64 KiB frames slowly the frames alone were tens of
/// MiB; this keeps them within about 4 MiB in all (4 KiB each at least). A
/// reader behind the memory window holds its batch twice meanwhile (the
/// events read from the spill, then the frame): 8 MiB in all with 1,000
/// streams open, 16 before (then the frames' total was 8 MiB).
fn batch() -> usize {
    const FRAMES: usize = 4 << 20;
    (FRAMES / sse::open_streams().max(1)).clamp(4 * 1024, BATCH)
}

/// A command's event stream as a response body, until the terminal event.
/// When the client goes away hyper drops the body, which leaves the command
/// running.
///
/// The body reads the command's log itself, in the connection's task, when
/// hyper asks for more: no writer task and no channel between the log and
/// the socket, so a pipe read wakes one task, not two. The first frame
/// (`init`, and for a background command the whole stream) is ready at once:
/// it leaves with the response head, in one write.
pub fn event_stream(
    cmd: Arc<Command>,
    ping: Duration,
    mode: StreamMode,
    label: Option<String>,
) -> Body {
    let mut buf = BytesMut::with_capacity(4096);
    let from_eid = match mode {
        StreamMode::Follow { from_eid } => from_eid,
        StreamMode::Background => 0,
    };
    if from_eid == 0 {
        // The time the command started, also when replayed by a resume.
        event_head(&mut buf, "init", 0, ms_since_epoch(cmd.started_at));
        buf.put_slice(b",\"text\":");
        json_str(&mut buf, label.as_deref().unwrap_or(&cmd.id).as_bytes());
        if label.is_some() {
            buf.put_slice(b",\"command_id\":");
            json_str(&mut buf, cmd.id.as_bytes());
        }
        buf.put_slice(b"}\n\n");
    }
    if mode == StreamMode::Background {
        match cmd.finished().filter(|f| f.spawn_failed) {
            Some(f) => terminal(&mut buf, &f, 1),
            None => {
                event_head(&mut buf, "execution_complete", 0, now_ms());
                buf.put_slice(b"}\n\n");
            }
        }
    }
    let first = (!buf.is_empty()).then(|| buf.split().freeze());
    let follow = (mode != StreamMode::Background).then(|| Follow {
        base64: cmd.output_base64(),
        log: Follower::new(cmd, from_eid),
        ping,
        // One timer for the whole stream, pushed back whenever something is
        // sent: a new timer per wait would be registered and removed again
        // for every batch of output.
        silence: Box::pin(tokio::time::sleep(ping)),
        buf,
        done: false,
    });
    let rest = futures_util::stream::unfold(follow, |mut follow| async move {
        let b = follow.as_mut()?.next().await?;
        Some((b, follow))
    });
    sse::stream_body(futures_util::stream::iter(first).chain(rest))
}

/// A followed stream past its first frame: events as the log grows,
/// keep-alive pings, then the terminal event.
struct Follow {
    log: Follower<Arc<Command>>,
    ping: Duration,
    silence: std::pin::Pin<Box<tokio::time::Sleep>>,
    buf: BytesMut,
    done: bool,
    /// Output as base64 (`"encoding":"base64"`) instead of text.
    base64: bool,
}

impl Follow {
    /// The next frame; `None` once the terminal event has been sent.
    async fn next(&mut self) -> Option<Bytes> {
        let buf = &mut self.buf;
        while !self.done {
            match self.log.step(batch()).await {
                Step::Events(evs) => {
                    // Room for the whole frame at once (escapes grow it if
                    // need be); the frame then takes the allocation with it
                    // (below), so that an idle stream pins none.
                    let per = if self.base64 { 4 } else { 3 };
                    buf.reserve(evs.iter().map(|e| e.data.len() / 3 * per + 96).sum());
                    let mut stamp = Stamp::default();
                    for ev in &evs {
                        let kind = if ev.stream == Stream::Stdout {
                            "stdout"
                        } else {
                            "stderr"
                        };
                        event_head_at(buf, kind, ev.eid, stamp.digits(ev.ts_ms));
                        buf.put_slice(b",\"text\":");
                        if self.base64 {
                            put_base64(buf, &ev.data);
                            buf.put_slice(b",\"encoding\":\"base64\"");
                        } else if !json_str(buf, &ev.data) {
                            // Some bytes became U+FFFD: say so.
                            buf.put_slice(b",\"invalid_utf8\":true");
                        }
                        buf.put_slice(b"}\n\n");
                    }
                    self.silence.as_mut().reset(Instant::now() + self.ping);
                    // Not `split`: the buffer's rest would keep the frame's
                    // allocation alive while the stream waits for output
                    // (with 1,000 streams, most of execd's memory).
                    return Some(std::mem::take(buf).freeze());
                }
                Step::Gap { from_eid, gap } => {
                    // This reader fell behind what is retained: say so, then go on.
                    event_head(buf, "gap", gap.oldest_eid.saturating_sub(1), now_ms());
                    buf.put_slice(b",\"from_eid\":");
                    put_u64(buf, from_eid);
                    buf.put_slice(b",\"to_eid\":");
                    put_u64(buf, gap.oldest_eid);
                    buf.put_slice(b"}\n\n");
                    return Some(buf.split().freeze());
                }
                Step::End { next_eid } => {
                    self.done = true;
                    let next = self.log.next_eid();
                    let f = self.log.cmd().finished().filter(|_| next <= next_eid)?;
                    terminal(buf, &f, next_eid);
                    return Some(buf.split().freeze());
                }
                Step::Idle => {}
            }
            tokio::select! {
                () = self.log.changed() => {}
                () = self.silence.as_mut() => {
                    event_head(buf, "ping", self.log.next_eid() - 1, now_ms());
                    buf.put_slice(b",\"text\":\"pong\"}\n\n");
                    self.silence.as_mut().reset(Instant::now() + self.ping);
                    return Some(buf.split().freeze());
                }
            }
        }
        None
    }
}

/// `{"type":T,"eid":N,"timestamp":MS` (the caller closes the object).
fn event_head(buf: &mut BytesMut, kind: &str, eid: u64, ts: u64) {
    event_head_at(buf, kind, eid, itoa::Buffer::new().format(ts).as_bytes());
}

/// [`event_head`] with the timestamp's digits already written out.
fn event_head_at(buf: &mut BytesMut, kind: &str, eid: u64, ts: &[u8]) {
    buf.put_slice(b"{\"type\":\"");
    buf.put_slice(kind.as_bytes());
    buf.put_slice(b"\",\"eid\":");
    put_u64(buf, eid);
    buf.put_slice(b",\"timestamp\":");
    buf.put_slice(ts);
}

/// The decimal digits of the last timestamp asked for: most of a batch's
/// events share their millisecond, so they are written out once for them.
#[derive(Default)]
struct Stamp {
    ms: Option<u64>,
    digits: [u8; 20],
    len: usize,
}

impl Stamp {
    fn digits(&mut self, ms: u64) -> &[u8] {
        if self.ms != Some(ms) {
            let mut text = itoa::Buffer::new();
            let text = text.format(ms).as_bytes();
            // A u64 has at most 20 digits.
            if let Some(digits) = self.digits.get_mut(..text.len()) {
                digits.copy_from_slice(text);
                self.len = text.len();
                self.ms = Some(ms);
            }
        }
        &self.digits[..self.len]
    }
}

/// The terminal event: `execution_complete` for exit 0, else `error` with the
/// exit code as `evalue` (`-1` for a signal), plus execd's extension fields.
/// Its timestamp is the time the command finished, also when replayed.
fn terminal(buf: &mut BytesMut, f: &Finished, eid: u64) {
    let ms = f.duration.as_millis() as u64;
    let at = ms_since_epoch(f.finished_at);
    if f.exit_code == 0 && f.signal.is_none() && !f.spawn_failed {
        event_head(buf, "execution_complete", eid, at);
    } else {
        event_head(buf, "error", eid, at);
        let evalue = f.exit_code.to_string();
        let trace = f
            .error
            .clone()
            .unwrap_or_else(|| format!("exit status {}", f.exit_code));
        let err = serde_json::json!({
            "ename": "CommandExecError",
            "evalue": evalue,
            "traceback": [trace],
        });
        buf.put_slice(b",\"error\":");
        buf.put_slice(err.to_string().as_bytes());
    }
    // execd's extension fields, in the order serde_json gave them (sorted).
    buf.put_slice(b",\"dropped_bytes\":");
    put_u64(buf, f.dropped_bytes);
    buf.put_slice(b",\"execution_time\":");
    put_u64(buf, ms);
    buf.put_slice(b",\"exit_code\":");
    put_i64(buf, i64::from(f.exit_code));
    buf.put_slice(b",\"interrupted\":");
    put_bool(buf, f.interrupted);
    buf.put_slice(b",\"resources\":{\"max_rss_kib\":");
    match f.resources.max_rss_kib {
        Some(kib) => put_u64(buf, kib),
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(b",\"system_cpu_ms\":");
    put_u64(buf, f.resources.system_ms);
    buf.put_slice(b",\"user_cpu_ms\":");
    put_u64(buf, f.resources.user_ms);
    buf.put_slice(b"},\"signal\":");
    match f.signal {
        Some(sig) => put_i64(buf, i64::from(sig)),
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(b",\"timed_out\":");
    put_bool(buf, f.timed_out);
    buf.put_slice(b"}\n\n");
}

/// `DELETE /command?id=`: SIGTERM to the group, SIGKILL after the grace period.
pub async fn interrupt(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    interrupt_command(&ctx.app, &id_query(&ctx)?)?;
    Ok(ok_empty())
}

/// The non-empty `id` query parameter.
pub(super) fn id_query(ctx: &Ctx) -> Result<String, ApiError> {
    ctx.query()
        .get("id")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::missing_query("id"))
}

/// Interrupts the command `id`, or the code run of that id (its kernel).
pub(super) fn interrupt_command(app: &crate::api::App, id: &str) -> Result<(), ApiError> {
    match app.kernels.interrupt_run(id) {
        Some(r) => Ok(r?),
        None => Ok(app.engine.interrupt(id)?),
    }
}

/// `GET /command/status/{id}`.
pub async fn status(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let cmd = ctx.app.engine.get(ctx.param("id"))?;
    let mut v = serde_json::json!({
        "id": cmd.id,
        "running": cmd.is_running(),
        "started_at": rfc3339(cmd.started_at),
    });
    if !cmd.content.is_empty() {
        v["content"] = cmd.content.clone().into();
    }
    if let Some(f) = cmd.finished() {
        v["running"] = false.into();
        v["exit_code"] = f.exit_code.into();
        v["finished_at"] = rfc3339(f.finished_at).into();
        if let Some(e) = f.error {
            v["error"] = e.into();
        }
        v["timed_out"] = f.timed_out.into();
    }
    v["output_bytes"] = cmd.log.head().total_bytes.into();
    // Output that could not be kept (spill cap 0, a failed spill, the
    // daemon's spill budget used up): never lost silently.
    v["dropped_bytes"] = cmd.log.dropped_bytes().into();
    Ok(json_response(StatusCode::OK, &v))
}

/// Inventory pages hold at most this many records.
const MAX_PAGE: usize = 500;

/// `GET /command?running=true|false&cursor=C&limit=N`: the known commands,
/// newest first, a page at a time (`next_cursor` until the last page).
pub async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let q = ctx.query();
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", m);
    let running = match q.get("running") {
        None | Some("") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(v) => return Err(bad(format!("running must be true or false, got {v:?}"))),
    };
    let before = match q.get("cursor") {
        None | Some("") => None,
        Some(c) => Some(
            c.parse::<u64>()
                .map_err(|_| bad(format!("cursor must be a next_cursor, got {c:?}")))?,
        ),
    };
    let limit = match q.get("limit") {
        None | Some("") => 100,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => return Err(bad(format!("limit must be 1-{MAX_PAGE}, got {l:?}"))),
        },
    };
    let page = ctx.app.engine.commands(running, before, limit);
    let items: Vec<serde_json::Value> = page
        .items
        .iter()
        .map(|cmd| {
            let f = cmd.finished();
            serde_json::json!({
                "id": cmd.id,
                "content": cmd.content,
                "running": f.is_none(),
                "exit_code": f.as_ref().map(|f| f.exit_code),
                "started_at": rfc3339(cmd.started_at),
                "finished_at": f.as_ref().map(|f| rfc3339(f.finished_at)),
                "background": cmd.background,
                "uid": cmd.uid,
            })
        })
        .collect();
    let mut resp = json_response(
        StatusCode::OK,
        &serde_json::json!({
            "commands": items,
            "next_cursor": page.next.map(|n| n.to_string()),
        }),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

const LOG_PIECE: usize = 256 * 1024;

/// `GET /command/{id}/logs?cursor=N`: raw combined output from byte offset N.
pub async fn logs(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let cmd = ctx.app.engine.get(ctx.param("id"))?;
    log_response(&ctx, cmd, "execd-commands-tail-cursor").await
}

/// A command's raw combined output from `?cursor=N`, with the next cursor in
/// the header `tail_header` (and the oldest retained offset in
/// `execd-commands-log-start`).
pub async fn log_response(
    ctx: &Ctx,
    cmd: Arc<Command>,
    tail_header: &'static str,
) -> Result<Response<Body>, ApiError> {
    let cursor = match ctx.query().get("cursor") {
        None | Some("") => 0,
        Some(c) => match c.parse::<i64>() {
            Ok(n) if n < 0 => {
                return Err(ApiError::invalid_body(format!(
                    "cursor must be >= 0, got {n}"
                )))
            }
            Ok(n) => n as u64,
            // Upstream treats a non-integer cursor as 0.
            Err(_) => 0,
        },
    };
    let end = cmd.log.head().total_bytes;
    let first = cmd.log.read_bytes(cursor, end, LOG_PIECE).await;
    let start = first.start;
    let tail = if cursor > end { cursor } else { end };
    let body = if first.next >= end {
        let mut all = BytesMut::new();
        for c in &first.chunks {
            all.put_slice(c);
        }
        crate::server::full(all.freeze())
    } else {
        let (tx, body) = sse::channel(2);
        let cmd = cmd.clone();
        ctx.app.tasks.spawn(async move {
            let mut r = first;
            loop {
                for c in r.chunks.drain(..) {
                    if tx.send(c).await.is_err() {
                        return;
                    }
                }
                if r.next >= end {
                    return;
                }
                let from = r.next;
                r = cmd.log.read_bytes(from, end, LOG_PIECE).await;
                if r.chunks.is_empty() {
                    return;
                }
            }
        });
        body
    };
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(tail_header, HeaderValue::from(tail));
    h.insert(
        "execd-commands-log-start",
        HeaderValue::from(start.min(tail)),
    );
    Ok(resp)
}

/// `POST /command/{id}/stdin[?eof=true]`: writes the raw body to the command's
/// stdin as it arrives (the pipe's back-pressure paces the upload), then
/// closes stdin when `eof=true`.
pub async fn stdin(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    use http_body_util::BodyExt;
    let cmd = ctx.app.engine.get(ctx.param("id"))?;
    let eof = matches!(ctx.query().get("eof"), Some("true" | "1"));
    let mut guard = cmd.stdin().await?;
    let mut body = ctx.req.into_body();
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::invalid_body(format!("error reading request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            guard.write(&data).await?;
            written += data.len() as u64;
        }
    }
    if eof {
        guard.close();
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "written": written, "closed": eof }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::Resources;
    use std::time::SystemTime;

    fn finished(exit_code: i32, signal: Option<i32>, error: Option<&str>) -> Finished {
        Finished {
            exit_code,
            signal,
            timed_out: signal.is_some(),
            interrupted: false,
            error: error.map(str::to_string),
            spawn_failed: false,
            finished_at: SystemTime::now(),
            duration: Duration::from_millis(1234),
            resources: Resources {
                user_ms: 5,
                system_ms: 0,
                max_rss_kib: Some(4096),
            },
            dropped_bytes: 7,
        }
    }

    /// A kept timestamp is written as the number it is, when it changes and
    /// when it does not.
    #[test]
    fn stamps_are_the_timestamps() {
        let mut stamp = Stamp::default();
        for ms in [
            1_765_000_000_123,
            1_765_000_000_123,
            1_765_000_000_124,
            0,
            0,
            9,
            u64::MAX,
        ] {
            assert_eq!(stamp.digits(ms), ms.to_string().as_bytes());
            let (mut a, mut b) = (BytesMut::new(), BytesMut::new());
            event_head(&mut a, "stdout", 7, ms);
            event_head_at(&mut b, "stdout", 7, stamp.digits(ms));
            assert_eq!(a, b);
            assert_eq!(
                a,
                format!("{{\"type\":\"stdout\",\"eid\":7,\"timestamp\":{ms}")
            );
        }
    }

    /// A peak that is not the command's own is null.
    #[test]
    fn an_unknown_peak_is_null() {
        let mut f = finished(0, None, None);
        f.resources.max_rss_kib = None;
        let mut buf = BytesMut::new();
        terminal(&mut buf, &f, 1);
        let v: serde_json::Value =
            serde_json::from_str(std::str::from_utf8(&buf).expect("utf-8").trim_end())
                .expect("json");
        assert!(v["resources"]["max_rss_kib"].is_null(), "{v}");
    }

    /// The terminal event is one JSON object with every field, whatever the outcome.
    #[test]
    fn terminal_event_is_valid_json_with_every_field() {
        for f in [
            finished(0, None, None),
            finished(2, None, Some("exit status 2")),
            finished(-1, Some(9), Some("signal: killed")),
        ] {
            let mut buf = BytesMut::new();
            terminal(&mut buf, &f, 3);
            let text = std::str::from_utf8(&buf).expect("utf-8");
            assert!(text.ends_with("}\n\n"), "{text}");
            let v: serde_json::Value = serde_json::from_str(text.trim_end()).expect(text);
            assert_eq!(v["eid"], 3);
            assert_eq!(v["exit_code"], f.exit_code);
            assert_eq!(v["execution_time"], 1234);
            assert_eq!(v["dropped_bytes"], 7);
            assert_eq!(v["timed_out"], f.timed_out);
            assert_eq!(v["interrupted"], false);
            assert_eq!(v["signal"], serde_json::json!(f.signal));
            assert_eq!(
                v["resources"],
                serde_json::json!({"user_cpu_ms": 5, "system_cpu_ms": 0, "max_rss_kib": 4096})
            );
            let kind = if f.exit_code == 0 {
                "execution_complete"
            } else {
                "error"
            };
            assert_eq!(v["type"], kind);
            if f.exit_code != 0 {
                assert_eq!(v["error"]["evalue"], f.exit_code.to_string());
            }
        }
    }
}
