//! Directory watches: what changes below a directory, as a stream of
//! [`Event`]s, for `GET /files/watch`, sandboxd's `watcher.v1` gRPC service
//! and envd's `WatchDir`. No HTTP types in here.
//!
//! Built on inotify through nix (already execd's system interface, so the
//! watch adds no crate and next to nothing to the binary), driven by tokio's
//! `AsyncFd`. One inotify instance per watch, opened `IN_CLOEXEC |
//! IN_NONBLOCK`.
//!
//! - **Armed before it is returned.** [`start`] resolves the directory, adds
//!   the watch (and, recursively, one per directory below) and only then
//!   returns: a change made after `start` returned is never missed.
//! - **Recursion follows new directories.** A directory created (or moved in)
//!   later is watched at once, then listed, and what the listing finds is
//!   reported as `create`: files made in it before its watch was in place
//!   are not lost to the race. Symlinks to directories are never followed.
//! - **Debounced** ([`debounce`]): changes are gathered for a window (250 ms
//!   by default) and merged without losing a kind or reordering.
//! - **Renames** are paired by inotify's cookie: `rename` with `old_path`.
//!   A name moved out of the tree is a `rename` without `old_path`; one moved
//!   in is a `create`.
//! - **Uploads as plain writes.** An upload's temporary (an `O_TMPFILE`,
//!   which inotify names `#<inode>`, linked as `.execd-upload-…`) renamed
//!   over its target is reported as the target's `create` and `write` (a new
//!   file) or `write` (one replaced; the temporary's name says which),
//!   never as the temporary's events.
//! - **Never silent.** The kernel's queue overflowing (`IN_Q_OVERFLOW`), or
//!   our own bounded queue filling, is an `overflow` event (the watch goes
//!   on; a recursive watch looks for directories it may have missed). The
//!   watch limit (`ENOSPC` from `inotify_add_watch`: `max_user_watches`), or
//!   more than [`MAX_DIRS`] directories, and the watched directory going away
//!   are an `error` event, always the last one.
//! - **Bounded.** At most [`PENDING_CAP`] gathered changes and [`QUEUE`] sent
//!   ones per watch, [`MAX_DIRS`] directories; at most `max` watches at once
//!   ([`Watches`]).
//! - **Identity.** Every path lookup and every `inotify_add_watch` runs on a
//!   blocking thread as the caller's scope ([`identity::scoped`]), so a watch
//!   sees only what that uid/gid may read.
//! - **Owned.** The reading task belongs to the [`Watch`]: dropping the watch
//!   ends the task and closes the inotify descriptor.

mod debounce;
mod inotify;

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use super::confined::{ConfineError, RelPath};
use super::identity::{self, Scope};
use super::{FsError, Kind as FsKind};

/// Gathered changes per watch before they are sent at once; past twice
/// this, changes are dropped and an `overflow` event says so.
pub const PENDING_CAP: usize = 4096;
/// Events sent but not yet taken by the consumer.
pub const QUEUE: usize = 256;
/// Directories one recursive watch follows at most.
pub const MAX_DIRS: usize = 65_536;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Create,
    Write,
    Remove,
    Rename,
    Chmod,
    /// Changes were lost (a queue overflowed); the watch goes on.
    Overflow,
    /// The watch ended; always the last event.
    Error,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Create => "create",
            Kind::Write => "write",
            Kind::Remove => "remove",
            Kind::Rename => "rename",
            Kind::Chmod => "chmod",
            Kind::Overflow => "overflow",
            Kind::Error => "error",
        }
    }
}

/// One change below the watched directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    /// Relative to the watched directory; empty for the directory itself
    /// (and for `overflow` and `error`).
    pub path: PathBuf,
    /// For a paired `rename`: where it was before, relative likewise.
    pub old_path: Option<PathBuf>,
    pub is_dir: bool,
    /// Milliseconds since the Unix epoch when execd read the change.
    pub timestamp: u64,
    /// For `overflow` and `error`: what happened.
    pub message: Option<String>,
}

impl Event {
    pub(crate) fn change(kind: Kind, path: PathBuf, is_dir: bool, timestamp: u64) -> Event {
        Event {
            kind,
            path,
            old_path: None,
            is_dir,
            timestamp,
            message: None,
        }
    }

    pub(crate) fn notice(kind: Kind, message: String) -> Event {
        Event {
            kind,
            path: PathBuf::new(),
            old_path: None,
            is_dir: true,
            timestamp: now_ms(),
            message: Some(message),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which directory to watch.
#[derive(Clone, Debug)]
pub enum Target {
    /// An absolute path, as the file routes take it (symlinks on the way
    /// followed, as for any open).
    Path(PathBuf),
    /// `rel` beneath `root`, never leaving it (sandboxd's confinement: a
    /// symlink leading out is refused, as a `..` climbing out is).
    Beneath { root: PathBuf, rel: RelPath },
}

/// How to watch.
#[derive(Clone, Debug)]
pub struct Options {
    /// Also every directory below, present and future.
    pub recursive: bool,
    /// The debounce window; zero sends what each read finds at once.
    pub debounce: Duration,
    /// The identity (uid/gid) whose permissions the watch has.
    pub scope: Scope,
}

/// Why a watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("{0}")]
    Fs(#[from] FsError),
    #[error("{path}: {source}")]
    Confined {
        path: String,
        #[source]
        source: ConfineError,
    },
    #[error("{0}: not a directory")]
    NotADirectory(String),
    #[error("too many directory watches open (at most {0}); close one and retry")]
    TooMany(usize),
    /// A kernel limit: inotify instances (`max_user_instances`) or watches
    /// (`max_user_watches`).
    #[error("{0}")]
    Limit(String),
}

/// A [`WatchError`] as a caller acts on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    /// The identity may not read it.
    Denied,
    /// The path leads outside the confining root.
    Escapes,
    NotADirectory,
    /// The watch cap, or the kernel's instance limit.
    TooMany,
    BadRequest,
    Other,
}

impl WatchError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WatchError::Fs(e) => match e.kind() {
                FsKind::NotFound => ErrorKind::NotFound,
                FsKind::Denied => ErrorKind::Denied,
                FsKind::BadRequest => ErrorKind::BadRequest,
                _ => ErrorKind::Other,
            },
            WatchError::Confined { source, .. } => match source {
                ConfineError::Escapes => ErrorKind::Escapes,
                e if e.is_not_found() => ErrorKind::NotFound,
                e if matches!(e.errno(), Some(libc::EACCES | libc::EPERM)) => ErrorKind::Denied,
                e if e.errno() == Some(libc::ELOOP) => ErrorKind::NotADirectory,
                _ => ErrorKind::Other,
            },
            WatchError::NotADirectory(_) => ErrorKind::NotADirectory,
            WatchError::TooMany(_) => ErrorKind::TooMany,
            WatchError::Limit(_) => ErrorKind::TooMany,
        }
    }
}

/// The cap on watches open at once, shared by every interface.
#[derive(Debug)]
pub struct Watches {
    max: usize,
    live: AtomicUsize,
}

impl Watches {
    pub fn new(max: usize) -> Arc<Watches> {
        Arc::new(Watches {
            max,
            live: AtomicUsize::new(0),
        })
    }

    /// Watches open now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn max(&self) -> usize {
        self.max
    }

    fn acquire(self: &Arc<Self>) -> Result<Permit, WatchError> {
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .map_err(|_| WatchError::TooMany(self.max))?;
        Ok(Permit(self.clone()))
    }
}

/// One place under the cap, given back when dropped, together with the
/// inotify descriptor (both live in `inotify::Instance`).
struct Permit(Arc<Watches>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

/// An armed watch: a stream of events, ended after an `error` event.
/// Dropping it ends the watch.
pub struct Watch {
    rx: tokio::sync::mpsc::Receiver<Event>,
    dir: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// The watched directory, as resolved (absolute).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The next event; `None` after the last.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Watch {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Arms a watch on `target` and returns it; changes from now on are
/// reported. Fails before anything is watched: the cap reached, the path
/// missing, not a directory, not readable by `opts.scope`, or outside the
/// confining root.
pub async fn start(
    watches: &Arc<Watches>,
    target: Target,
    opts: Options,
) -> Result<Watch, WatchError> {
    let permit = watches.acquire()?;
    let recursive = opts.recursive;
    let armed = identity::scoped(opts.scope.clone(), move || {
        Ok(inotify::arm(target, recursive, permit))
    })
    .await??;
    let dir = armed.dir();
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let task = tokio::spawn(inotify::run(armed, opts, tx));
    Ok(Watch { rx, dir, task })
}
