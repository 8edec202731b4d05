//! sandboxd's gRPC `watcher.v1.FileWatcherService/WatchDir`, on the same
//! ports as `process.v1`, on the directory-watch engine (`crate::fs::watch`).
//!
//! As sandboxd: the path is confined to the sandbox root (a `..` or a
//! symlink leading out is `PERMISSION_DENIED`), a missing one is
//! `NOT_FOUND`, a file `INVALID_ARGUMENT`; watches past the cap (64 by
//! default, shared with `GET /files/watch`) are `RESOURCE_EXHAUSTED`;
//! directories reached through symlinks are not followed; events are
//! debounced (250 ms); a terminal condition is a last `ERROR` event, not a
//! status. Beyond sandboxd: renames carry `old_path` when inotify pairs
//! them, and lost events (a queue overflow) end the stream with an `ERROR`
//! saying so, where sandboxd goes on silently.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::watcher_v1::file_watcher_service_server::FileWatcherService;
use super::watcher_v1::{FileEvent, FileEventType, WatchDirRequest};
use crate::fs::confined::{sandboxd_path, RelPath};
use crate::fs::watch::{self, ErrorKind, Event, Kind, Options, Target, Watch, Watches};

/// The service state.
pub struct Watcher {
    pub root: PathBuf,
    pub watches: Arc<Watches>,
    pub debounce: Duration,
}

fn status(e: watch::WatchError) -> Status {
    let m = e.to_string();
    match e.kind() {
        ErrorKind::Escapes | ErrorKind::Denied => Status::permission_denied(m),
        ErrorKind::NotFound => Status::not_found(m),
        ErrorKind::NotADirectory | ErrorKind::BadRequest => Status::invalid_argument(m),
        ErrorKind::TooMany => Status::resource_exhausted(m),
        ErrorKind::Other => Status::internal(m),
    }
}

#[tonic::async_trait]
impl FileWatcherService for Watcher {
    type WatchDirStream = WatchStream;

    async fn watch_dir(
        &self,
        request: Request<WatchDirRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        if req.path.contains('\0') {
            return Err(Status::invalid_argument("path must not contain NUL bytes"));
        }
        let root = self.root.clone();
        let canonical = tokio::task::spawn_blocking(move || std::fs::canonicalize(&root))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::internal(format!("sandbox root: {e}")))?;
        let rel: RelPath = sandboxd_path(&req.path, &canonical).map_err(|_| {
            Status::permission_denied(format!("{:?} escapes the sandbox root", req.path))
        })?;
        // Event paths are relative to the root: "" for the root itself.
        let base = if rel.is_root() {
            PathBuf::new()
        } else {
            rel.to_path()
        };
        let opts = Options {
            recursive: req.recursive,
            debounce: self.debounce,
            scope: Default::default(),
        };
        let w = watch::start(
            &self.watches,
            Target::Beneath {
                root: canonical,
                rel,
            },
            opts,
        )
        .await
        .map_err(status)?;
        Ok(Response::new(WatchStream {
            w,
            base,
            done: false,
        }))
    }
}

/// A watch as `FileEvent`s; ends after an `ERROR`.
pub struct WatchStream {
    w: Watch,
    /// The watched directory, relative to the sandbox root.
    base: PathBuf,
    done: bool,
}

fn rel(base: &Path, p: &Path) -> String {
    let joined = if p.as_os_str().is_empty() {
        base.to_path_buf()
    } else {
        base.join(p)
    };
    joined.to_string_lossy().into_owned()
}

fn file_event(base: &Path, ev: Event) -> FileEvent {
    let t = match ev.kind {
        Kind::Create => FileEventType::Create,
        Kind::Write => FileEventType::Write,
        Kind::Remove => FileEventType::Remove,
        Kind::Rename => FileEventType::Rename,
        Kind::Chmod => FileEventType::Chmod,
        // The protocol has no "lost events, going on": the stream ends
        // with an ERROR that says so, never silently.
        Kind::Overflow | Kind::Error => FileEventType::Error,
    };
    FileEvent {
        r#type: t as i32,
        path: rel(base, &ev.path),
        old_path: ev
            .old_path
            .as_deref()
            .map_or(String::new(), |o| rel(base, o)),
        error: match ev.kind {
            Kind::Overflow => format!(
                "events were lost, the watch ended: {}",
                ev.message.unwrap_or_default()
            ),
            _ => ev.message.unwrap_or_default(),
        },
    }
}

impl futures_core::Stream for WatchStream {
    type Item = Result<FileEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match futures_core::Stream::poll_next(Pin::new(&mut this.w), cx) {
            Poll::Ready(Some(ev)) => {
                this.done = matches!(ev.kind, Kind::Overflow | Kind::Error);
                Poll::Ready(Some(Ok(file_event(&this.base, ev))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
