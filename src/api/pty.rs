//! `/pty`: create, status and delete a PTY session, and attach to it over a
//! WebSocket with OpenSandbox's frame protocol.
//!
//! Frames, server to client: binary `0x01|bytes` (terminal or stdout),
//! `0x02|bytes` (stderr in pipe mode), `0x03|offset(u64 BE)|bytes` (replay,
//! and output resumed after a gap); text JSON `connected`, `pong`, `error`,
//! `exit`. Client to server: binary `0x00|stdin`; text JSON `stdin`,
//! `resize`, `signal`, `ping`.
//!
//! One client holds input; with `takeover=1` a new one evicts it (close
//! 4001). With `mode=viewer` (upstream's spelling) or `mode=watch` any
//! number of read-only viewers attach as well; their input, resize and
//! signal frames get `READ_ONLY` error frames.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::json;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use crate::api::Ctx;
use crate::fs::path;
use crate::operations::Kind;
use crate::process::pty::{self, InputClaim, Mode, PtyError, PtySession, PtySpec, Size, Source};
use crate::process::Engine;
use crate::server::{empty, json_response, ok_empty, ApiError, Body};

/// A send that takes longer than this ends the connection.
const WRITE_DEADLINE: Duration = Duration::from_secs(10);
/// Output sent per turn of the client loop, so input and pings interleave.
const BATCH: usize = 256 * 1024;
/// Largest message a client may send (stdin is chunked by clients anyway).
const MAX_MESSAGE: usize = 1 << 20;

/// `POST /pty` body; every field optional.
#[derive(Debug, Default, Deserialize)]
struct CreateRequest {
    cwd: Option<String>,
    command: Option<String>,
    /// Extension: the initial terminal size (default 80x24).
    cols: Option<u32>,
    rows: Option<u32>,
}

/// `POST /pty`: creates a session; its shell starts on the first attach.
pub async fn create(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    use super::operation::{self, Step};
    let app = ctx.app.clone();
    let engine = ctx.app.engine.clone();
    let op = operation::id(ctx.req.headers())?;
    let (req, raw) = ctx.json_raw::<CreateRequest>(true).await?;
    let cwd = match req.cwd.filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(path::expand_daemon(&c)?),
    };
    let command = req.command.filter(|c| !c.trim().is_empty());
    if command.as_ref().is_some_and(|c| c.contains('\0')) {
        return Err(ApiError::invalid_body(
            "'command' must not contain NUL bytes",
        ));
    }
    let size = match (req.cols, req.rows) {
        (None, None) => None,
        (Some(c), Some(r)) => Some(Size::new(c, r)?),
        _ => {
            return Err(ApiError::invalid_body(
                "'cols' and 'rows' must be given together",
            ))
        }
    };
    let spec = PtySpec { cwd, command, size };
    let pending = match operation::begin(&app, op.as_deref(), Kind::Pty, "", &raw).await? {
        Step::Create(p) => p,
        Step::Replay(id) => {
            return Ok(operation::replayed(json_response(
                StatusCode::CREATED,
                &json!({ "session_id": id }),
            )))
        }
    };
    // Creating the working directory is file-system work: off the reactor.
    // The operation is completed there too, so a client that hangs up
    // meanwhile still finds the session on its retry.
    let session = blocking(move || {
        let session = engine.pty().create(spec)?;
        if let Some(p) = pending {
            p.complete(session.id.clone());
        }
        Ok(session)
    })
    .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({ "session_id": session.id }),
    ))
}

/// Runs a domain call that blocks (file system, /proc) on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PtyError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "RUNTIME_ERROR",
            e.to_string(),
        )),
    }
}

/// `GET /pty/{id}`.
pub async fn status(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let session = ctx.app.engine.pty().get(ctx.param("id"))?;
    let st = session.status();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "session_id": session.id,
            "running": st.running,
            "output_offset": st.end,
        }),
    ))
}

/// `GET /pty`: every PTY session, `{sessions: [{session_id, running,
/// output_offset}]}` (bounded by the session cap, so one page).
pub async fn list(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let items: Vec<_> = ctx
        .app
        .engine
        .pty()
        .list()
        .iter()
        .map(|s| {
            let st = s.status();
            json!({"session_id": s.id, "running": st.running, "output_offset": st.end})
        })
        .collect();
    let mut resp = json_response(StatusCode::OK, &json!({ "sessions": items }));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

/// `DELETE /pty/{id}`: kills the session's processes and forgets it.
pub async fn delete(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let engine = ctx.app.engine.clone();
    let id = ctx.param("id").to_string();
    // Killing walks /proc for the session's processes: off the reactor.
    blocking(move || engine.pty().delete(&id)).await?;
    Ok(ok_empty())
}

fn bad_query(msg: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", msg)
}

/// Checks the WebSocket handshake and returns `Sec-WebSocket-Accept`.
fn accept_key(h: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let bad = |m: &str| ApiError::new(StatusCode::BAD_REQUEST, "BAD_HANDSHAKE", m);
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(bad(
            "a WebSocket upgrade is required (Connection: Upgrade, Upgrade: websocket)",
        ));
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(bad("Sec-WebSocket-Version must be 13"));
    }
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .unwrap_or(b"");
    // A base64 encoding of 16 bytes is 24 characters ending in "==".
    if key.len() != 24 || !key.ends_with(b"==") {
        return Err(bad("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(derive_accept_key(key))
}

/// What a client asked for in the query.
struct Attach {
    /// RFC 6455 pings this often; a peer silent (no frame, no pong) for
    /// twice as long is dead.
    ping_every: Duration,
    mode: Mode,
    since: u64,
    watch: bool,
}

/// `GET /pty/{id}/ws`: the WebSocket.
pub async fn attach(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let engine = ctx.app.engine.clone();
    let session = engine.pty().get(ctx.param("id"))?;
    let q = ctx.query();
    let mode = match q.get("pty") {
        None | Some("1") | Some("true") => Mode::Pty,
        Some("0") | Some("false") => Mode::Pipe,
        Some(x) => return Err(bad_query(format!("'pty' must be 0 or 1, got {x:?}"))),
    };
    let since = match q.get("since") {
        None | Some("") => 0,
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| bad_query(format!("'since' must be a byte offset, got {s:?}")))?,
    };
    let takeover = matches!(q.get("takeover"), Some("1") | Some("true"));
    let watch = match q.get("mode") {
        None | Some("") | Some("input") => false,
        // `viewer`: upstream's spelling (OpenSandbox #1420) of the same.
        Some("watch") | Some("viewer") => true,
        Some(x) => {
            return Err(bad_query(format!(
                "'mode' must be 'viewer' (or 'watch') or 'input', got {x:?}"
            )))
        }
    };
    let accept = accept_key(ctx.req.headers())?;
    let claim = if watch {
        None
    } else {
        Some(session.claim_input(takeover)?)
    };
    let mut req = ctx.req;
    let on_upgrade = hyper::upgrade::on(&mut req);
    let stop = engine.shutdown_token();
    let tasks = engine.tasks().clone();
    let opts = Attach {
        ping_every: ctx.app.config.ws_ping_interval,
        mode,
        since,
        watch,
    };
    tasks.spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "pty upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig {
            max_message_size: Some(MAX_MESSAGE),
            max_frame_size: Some(MAX_MESSAGE),
            ..WebSocketConfig::default()
        };
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        Client {
            engine,
            session,
            claim,
            stop,
        }
        .run(ws, opts)
        .await;
    });
    let mut resp = Response::new(empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

/// A client frame sent as JSON text.
#[derive(Debug, Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    data: Option<String>,
    cols: Option<i64>,
    rows: Option<i64>,
    signal: Option<String>,
}

/// What one client message asks for, decoded without touching the session.
#[derive(Debug)]
pub enum Request<'a> {
    /// Bytes for the terminal's input (binary `0x00|bytes`, or a text `stdin` frame).
    Stdin(Cow<'a, [u8]>),
    /// A `resize` frame: the size, or why it is not one.
    Resize(Result<Size, PtyError>),
    /// A `signal` frame: the signal number, or why the name is not one.
    Signal(Result<i32, PtyError>),
    /// An application-level `ping`, answered with `pong`.
    Ping,
    /// Nothing to do: a binary frame with another prefix (ignored, as upstream does).
    Nothing,
    /// Not understood: the message of the `INVALID_FRAME` error sent back.
    Invalid(String),
}

/// Decodes a binary client message: `0x00` then stdin bytes.
pub fn decode_binary(b: &[u8]) -> Request<'_> {
    match b.split_first() {
        Some((0x00, data)) => Request::Stdin(Cow::Borrowed(data)),
        _ => Request::Nothing,
    }
}

/// Decodes a text client message, a JSON frame. Upstream ignores text that is
/// not JSON; here it gets an `INVALID_FRAME` error too (the connection stays).
pub fn decode_text(t: &str) -> Request<'static> {
    let f = match serde_json::from_str::<ClientFrame>(t) {
        Ok(f) => f,
        Err(e) => return Request::Invalid(format!("frame is not a JSON object with a type: {e}")),
    };
    match f.kind.as_str() {
        "ping" => Request::Ping,
        "stdin" => Request::Stdin(Cow::Owned(f.data.unwrap_or_default().into_bytes())),
        "resize" => Request::Resize(match (f.cols, f.rows) {
            (Some(c), Some(r)) if c > 0 && r > 0 => {
                Size::new(c.min(u32::MAX.into()) as u32, r.min(u32::MAX.into()) as u32)
            }
            (c, r) => Err(PtyError::BadSize {
                cols: c.unwrap_or(0).clamp(0, u32::MAX.into()) as u32,
                rows: r.unwrap_or(0).clamp(0, u32::MAX.into()) as u32,
            }),
        }),
        "signal" => Request::Signal(pty::signal_by_name(&f.signal.unwrap_or_default())),
        other => Request::Invalid(format!("unknown frame type {other:?}")),
    }
}

type Sink =
    futures_util::stream::SplitSink<WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, Message>;

/// Why the connection loop stopped.
enum End {
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// The peer is gone or too slow: just drop the connection.
    Drop,
    /// The peer sent a close frame: send the reply the protocol layer queued.
    PeerClosed,
}

struct Client {
    engine: Arc<Engine>,
    session: Arc<PtySession>,
    claim: Option<InputClaim>,
    stop: CancellationToken,
}

async fn send(tx: &mut Sink, m: Message) -> Result<(), End> {
    match timeout(WRITE_DEADLINE, tx.send(m)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Drop),
    }
}

fn text(v: serde_json::Value) -> Message {
    Message::Text(v.to_string())
}

fn error_frame(code: &str, msg: impl std::fmt::Display) -> Message {
    text(json!({"type": "error", "error": msg.to_string(), "code": code}))
}

fn replay_frame(offset: u64, chunks: &[pty::Chunk]) -> Message {
    let len: usize = chunks.iter().map(|c| c.data.len()).sum();
    let mut f = Vec::with_capacity(9 + len);
    f.push(0x03);
    f.extend_from_slice(&offset.to_be_bytes());
    for c in chunks {
        f.extend_from_slice(&c.data);
    }
    Message::Binary(f)
}

impl Client {
    async fn run(mut self, ws: WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>, opts: Attach) {
        let (mut tx, mut rx) = ws.split();
        let end = self.serve(&mut tx, &mut rx, opts).await;
        // Free the input slot before the close frame, so a client that
        // reconnects as soon as it sees the close is not refused.
        drop(self.claim.take());
        if let End::PeerClosed = end {
            let _ = timeout(WRITE_DEADLINE, tx.flush()).await;
        }
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = timeout(WRITE_DEADLINE, tx.send(Message::Close(Some(frame)))).await;
            // Give the peer a moment to answer the close, never long.
            let _ = timeout(Duration::from_secs(1), async {
                while let Some(Ok(m)) = rx.next().await {
                    if m.is_close() {
                        break;
                    }
                }
            })
            .await;
        }
    }

    async fn serve(
        &self,
        tx: &mut Sink,
        rx: &mut futures_util::stream::SplitStream<
            WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>,
        >,
        opts: Attach,
    ) -> End {
        let session = &self.session;
        // Subscribe before reading anything so no change is missed.
        let mut status = session.subscribe();
        let mut mine: Option<u64> = None;
        let mut mode = opts.mode;
        if self.claim.is_some() {
            match self
                .engine
                .pty()
                .ensure_running(session, opts.mode, self.engine.default_env())
            {
                Ok((generation, m)) => {
                    mine = Some(generation);
                    mode = m;
                }
                Err(e) => {
                    let code = match e {
                        PtyError::NotFound(_) => "CONTEXT_NOT_FOUND",
                        _ => "START_FAILED",
                    };
                    if let Err(end) = send(tx, error_frame(code, &e)).await {
                        return end;
                    }
                    return End::Close(1011, "start failed");
                }
            }
        } else {
            let st = session.status();
            if st.running {
                mine = Some(st.generation);
            }
            mode = st.mode.unwrap_or(mode);
        }

        let (from, chunks) = session.read(opts.since, usize::MAX);
        let mut pos = from + chunks.iter().map(|c| c.data.len() as u64).sum::<u64>();
        if !chunks.is_empty() {
            if let Err(end) = send(tx, replay_frame(from, &chunks)).await {
                return end;
            }
        }
        drop(chunks);
        let mut connected = json!({
            "type": "connected",
            "session_id": session.id,
            "mode": mode.as_str(),
            "offset": pos,
        });
        if opts.watch {
            connected["read_only"] = true.into();
        }
        if let Err(end) = send(tx, text(connected)).await {
            return end;
        }

        let never = CancellationToken::new();
        let evicted = self.claim.as_ref().map_or(&never, InputClaim::evicted);
        let every = opts.ping_every;
        let mut ping = tokio::time::interval_at(Instant::now() + every, every);
        let mut deadline = Instant::now() + every * 2;
        loop {
            let st = *status.borrow_and_update();
            if mine.is_none() && st.running {
                mine = Some(st.generation);
            }
            let backlog = pos < st.end;
            if let Some(g) = mine {
                let exit = st.last_exit.filter(|e| e.generation == g);
                let gone = exit.is_some() || st.generation > g;
                if gone && pos >= exit.map_or(pos, |e| e.end) {
                    let code = exit.map_or(-1, |e| e.code);
                    // Ended by a DELETE of its session while it ran.
                    let interrupted = st.closed;
                    let frame =
                        json!({"type": "exit", "exit_code": code, "interrupted": interrupted});
                    if let Err(end) = send(tx, text(frame)).await {
                        return end;
                    }
                    return End::Close(1000, "process exited");
                }
            }
            if st.closed && !st.running && !backlog {
                return End::Close(1000, "session deleted");
            }
            tokio::select! {
                _ = evicted.cancelled() => return End::Close(4001, "TAKEN_OVER"),
                _ = self.stop.cancelled() => return End::Close(1001, "server shutting down"),
                r = status.changed() => {
                    if r.is_err() {
                        return End::Close(1000, "session deleted");
                    }
                }
                _ = std::future::ready(()), if backlog => {
                    if let Err(end) = self.send_output(tx, &mut pos).await {
                        return end;
                    }
                }
                m = rx.next() => {
                    deadline = Instant::now() + every * 2;
                    match m {
                        Some(Ok(m)) => {
                            if let Err(end) = self.on_message(tx, m, evicted).await {
                                return end;
                            }
                        }
                        _ => return End::Drop,
                    }
                }
                _ = ping.tick() => {
                    if let Err(end) = send(tx, Message::Ping(Vec::new())).await {
                        return end;
                    }
                }
                _ = sleep_until(deadline) => {
                    tracing::debug!(session = %session.id, "pty client silent past the read deadline");
                    return End::Drop;
                }
            }
        }
    }

    /// Sends the next batch of output from `pos`. A client that fell behind
    /// the ring gets the rest as a replay frame whose offset shows the gap.
    async fn send_output(&self, tx: &mut Sink, pos: &mut u64) -> Result<(), End> {
        let (from, chunks) = self.session.read(*pos, BATCH);
        if chunks.is_empty() {
            *pos = from;
            return Ok(());
        }
        let sent: u64 = chunks.iter().map(|c| c.data.len() as u64).sum();
        let batch = async {
            if from > *pos {
                tx.feed(replay_frame(from, &chunks)).await?;
            } else {
                for c in &chunks {
                    let tag = match c.source {
                        Source::Stdout => 0x01,
                        Source::Stderr => 0x02,
                    };
                    let mut f = Vec::with_capacity(1 + c.data.len());
                    f.push(tag);
                    f.extend_from_slice(&c.data);
                    tx.feed(Message::Binary(f)).await?;
                }
            }
            tx.flush().await
        };
        match timeout(WRITE_DEADLINE, batch).await {
            Ok(Ok(())) => {
                *pos = from + sent;
                Ok(())
            }
            _ => Err(End::Drop),
        }
    }

    async fn on_message(
        &self,
        tx: &mut Sink,
        m: Message,
        evicted: &CancellationToken,
    ) -> Result<(), End> {
        let request = match &m {
            Message::Binary(b) => decode_binary(b),
            Message::Text(t) => decode_text(t),
            Message::Close(_) => return Err(End::PeerClosed),
            // Pings are answered by the protocol layer; any frame resets the deadline.
            _ => Request::Nothing,
        };
        match request {
            Request::Nothing => Ok(()),
            Request::Ping => send(tx, text(json!({"type": "pong"}))).await,
            Request::Stdin(data) => self.stdin(tx, &data, evicted).await,
            Request::Resize(size) => {
                if let Err(e) = self.writable(evicted) {
                    return send(tx, e).await;
                }
                match size {
                    Ok(s) => {
                        self.session.resize(s);
                        Ok(())
                    }
                    Err(e) => send(tx, error_frame("INVALID_FRAME", e)).await,
                }
            }
            Request::Signal(sig) => {
                if let Err(e) = self.writable(evicted) {
                    return send(tx, e).await;
                }
                match sig.and_then(|s| self.session.signal(s)) {
                    Ok(()) | Err(PtyError::NotRunning(_)) => Ok(()),
                    Err(e) => send(tx, error_frame("INVALID_FRAME", e)).await,
                }
            }
            Request::Invalid(why) => send(tx, error_frame("INVALID_FRAME", why)).await,
        }
    }

    /// Whether this client may change the terminal: an error frame if not.
    fn writable(&self, evicted: &CancellationToken) -> Result<(), Message> {
        if self.claim.is_none() {
            return Err(error_frame(
                "READ_ONLY",
                "this client is attached read-only (mode=viewer or watch): no input, resize or signal",
            ));
        }
        if evicted.is_cancelled() {
            return Err(error_frame(
                "TAKEN_OVER",
                "another client took this session over",
            ));
        }
        Ok(())
    }

    async fn stdin(
        &self,
        tx: &mut Sink,
        data: &[u8],
        evicted: &CancellationToken,
    ) -> Result<(), End> {
        if let Err(e) = self.writable(evicted) {
            return send(tx, e).await;
        }
        if data.is_empty() {
            return Ok(());
        }
        match self.session.write_stdin(data).await {
            Ok(()) | Err(PtyError::NotRunning(_)) => Ok(()),
            // The terminal hung up: the process is exiting and its exit frame follows.
            Err(PtyError::Stdin(e))
                if e.raw_os_error() == Some(libc::EIO)
                    || e.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                Ok(())
            }
            Err(e) => {
                send(tx, error_frame("STDIN_WRITE_FAILED", &e)).await?;
                Err(End::Close(1011, "stdin write failed"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames() {
        assert!(matches!(decode_binary(b"\x00ls\n"), Request::Stdin(d) if *d == *b"ls\n"));
        assert!(matches!(decode_binary(b"\x00"), Request::Stdin(d) if d.is_empty()));
        assert!(matches!(decode_binary(b""), Request::Nothing));
        assert!(matches!(decode_binary(b"\x01out"), Request::Nothing));
    }

    #[test]
    fn text_frames() {
        assert!(matches!(decode_text(r#"{"type":"ping"}"#), Request::Ping));
        assert!(
            matches!(decode_text(r#"{"type":"stdin","data":"é\n"}"#), Request::Stdin(d) if *d == *"é\n".as_bytes())
        );
        assert!(matches!(decode_text(r#"{"type":"stdin"}"#), Request::Stdin(d) if d.is_empty()));
        assert!(matches!(
            decode_text(r#"{"type":"resize","cols":120,"rows":40}"#),
            Request::Resize(Ok(Size {
                cols: 120,
                rows: 40
            }))
        ));
        assert!(matches!(
            decode_text(r#"{"type":"signal","signal":"sigint"}"#),
            Request::Signal(Ok(libc::SIGINT))
        ));
    }

    #[test]
    fn bad_text_frames_say_why() {
        for (t, cols, rows) in [
            (r#"{"type":"resize","cols":0,"rows":40}"#, 0, 40),
            (r#"{"type":"resize","cols":-5}"#, 0, 0),
            (r#"{"type":"resize","cols":70000,"rows":1}"#, 70000, 1),
            (
                r#"{"type":"resize","cols":1,"rows":9999999999999}"#,
                1,
                u32::MAX,
            ),
        ] {
            match decode_text(t) {
                Request::Resize(Err(PtyError::BadSize { cols: c, rows: r })) => {
                    assert_eq!((c, r), (cols, rows), "{t}")
                }
                other => panic!("{t}: {other:?}"),
            }
        }
        assert!(matches!(
            decode_text(r#"{"type":"signal","signal":"SIGFOO"}"#),
            Request::Signal(Err(PtyError::BadSignal(_)))
        ));
        for t in ["{not json", "[1]", "\"ping\"", "{}", r#"{"type":7}"#, ""] {
            assert!(matches!(decode_text(t), Request::Invalid(_)), "{t}");
        }
        assert!(
            matches!(decode_text(r#"{"type":"bogus"}"#), Request::Invalid(m) if m.contains("bogus"))
        );
    }
}
