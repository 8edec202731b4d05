//! `GET /files/watch?path=&recursive=` (and under `/v1/filesystem/{uid}/{gid}`):
//! changes below a directory as an event stream, in the framing of
//! `/command` (one JSON object per event, a blank line after each), with
//! keep-alive pings.
//!
//! The response (its head and a first `ping`) is sent only once the watch is
//! armed: a change made after the client has the head is reported. Events:
//! `{"type", "path", "old_path"?, "is_dir", "timestamp"}` with `type` one of
//! `create|write|remove|rename|chmod`; `overflow` (changes were lost, the
//! watch goes on) and `error` (the watch ended; always last) carry a
//! `message`. The stream ends after `error`, when the client leaves (the
//! watch and its inotify descriptor go with it) or at shutdown.

use std::path::Path;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::Response;
use tokio::time::Instant;

use super::files::{identity, required_path};
use super::wire::{json_str, put_u64};
use super::Ctx;
use crate::date::now_ms;
use crate::fs::watch::{self, Event, Kind, Options, Target, Watch};
use crate::server::{sse, ApiError, Body};

/// `GET /files/watch`.
pub async fn watch(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let scope = identity(&ctx)?;
    let dir = required_path(&ctx, "path")?;
    let recursive = match ctx.query().get("recursive") {
        None | Some("" | "false" | "0") => false,
        Some("true" | "1") => true,
        Some(v) => {
            return Err(ApiError::invalid_body(format!(
                "invalid recursive {v:?}: true or false"
            )))
        }
    };
    let app = ctx.app.clone();
    let opts = Options {
        recursive,
        debounce: app.config.watch_debounce,
        scope,
    };
    let w = watch::start(&app.watches, Target::Path(dir), opts).await?;
    let stream = Stream {
        silence: Box::pin(tokio::time::sleep(app.config.ping_interval)),
        ping: app.config.ping_interval,
        stop: app.shutdown.clone(),
        w,
        first: true,
        done: false,
    };
    let body = futures_util::stream::unfold(stream, |mut s| async move {
        let b = s.next().await?;
        Some((b, s))
    });
    Ok(sse::response(sse::stream_body(body)))
}

/// A watch as frames of the event stream.
struct Stream {
    w: Watch,
    ping: Duration,
    silence: std::pin::Pin<Box<tokio::time::Sleep>>,
    stop: tokio_util::sync::CancellationToken,
    first: bool,
    done: bool,
}

impl Stream {
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let mut buf = BytesMut::new();
        if std::mem::take(&mut self.first) {
            ping(&mut buf);
            return Some(buf.freeze());
        }
        tokio::select! {
            ev = self.w.next() => {
                let ev = ev?;
                self.done = ev.kind == Kind::Error;
                put_event(&mut buf, self.w.dir(), &ev);
                // Whatever else is ready goes in the same frame.
                while !self.done && buf.len() < 64 * 1024 {
                    let Some(ev) = futures_util::FutureExt::now_or_never(self.w.next()).flatten() else {
                        break;
                    };
                    self.done = ev.kind == Kind::Error;
                    put_event(&mut buf, self.w.dir(), &ev);
                }
            }
            _ = self.silence.as_mut() => ping(&mut buf),
            _ = self.stop.cancelled() => return None,
        }
        self.silence.as_mut().reset(Instant::now() + self.ping);
        Some(buf.freeze())
    }
}

fn ping(buf: &mut BytesMut) {
    buf.put_slice(b"{\"type\":\"ping\",\"timestamp\":");
    put_u64(buf, now_ms());
    buf.put_slice(b"}\n\n");
}

fn put_path(buf: &mut BytesMut, dir: &Path, rel: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let p = if rel.as_os_str().is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(rel)
    };
    let _ = json_str(buf, p.as_os_str().as_bytes());
}

/// One event, framed.
fn put_event(buf: &mut BytesMut, dir: &Path, ev: &Event) {
    buf.put_slice(b"{\"type\":\"");
    buf.put_slice(ev.kind.as_str().as_bytes());
    buf.put_slice(b"\",\"path\":");
    put_path(buf, dir, &ev.path);
    if let Some(old) = &ev.old_path {
        buf.put_slice(b",\"old_path\":");
        put_path(buf, dir, old);
    }
    buf.put_slice(if ev.is_dir {
        b",\"is_dir\":true"
    } else {
        b",\"is_dir\":false"
    });
    buf.put_slice(b",\"timestamp\":");
    put_u64(buf, ev.timestamp);
    if let Some(m) = &ev.message {
        buf.put_slice(b",\"message\":");
        let _ = json_str(buf, m.as_bytes());
    }
    buf.put_slice(b"}\n\n");
}
