//! envd's directory watches on execd's watch engine ([`crate::fs::watch`]):
//! `WatchDir` (a server stream) and the polling trio `CreateWatcher`,
//! `GetWatcherEvents`, `RemoveWatcher` (what the synchronous SDK uses).
//!
//! - **As envd**: the path is resolved as the request's user (Basic auth's
//!   name) and watched with that user's permissions; a missing path is
//!   `not_found`, a file `invalid_argument`; a network file system (NFS,
//!   CIFS/SMB, FUSE) is refused unless `allow_network_mounts`. Event names
//!   are relative to the watched directory (`.` for itself). A stream starts
//!   with a `start` event once the watch is armed and sends `keepalive`s
//!   after `Keepalive-Ping-Interval` seconds of silence. A rename is
//!   envd's (fsnotify's) pair: `RENAME` of the old name, `CREATE` of the
//!   new one; a name moved out is a lone `RENAME`, one moved in a `CREATE`.
//!   execd's atomic uploads read as envd's plain write does (`CREATE` and
//!   `WRITE` of a new target, `WRITE` of a replaced one): the engine reports
//!   them so, never the temporary.
//! - **Beyond envd**: the watch is the engine's (recursive watches follow
//!   new directories, debounced by `--watch-debounce`, bounded, counted
//!   under `--max-watches` with the other interfaces'). Lost changes (a
//!   queue overflow) or the watch ending (the directory removed, a kernel
//!   limit) are never silent: the stream ends with `data_loss` or `aborted`,
//!   and a polling watcher answers its buffered events, then that error.
//! - **Polling watchers are bounded and owned**: at most [`MAX_POLLERS`];
//!   one only answers the user that created it (another gets `not_found`,
//!   as an unknown id); events wait in the engine's bounded queue (past it,
//!   an overflow) until polled, at most [`MAX_DRAIN`] a poll; a watcher not
//!   polled for `--e2b-watcher-idle` is removed by one reaper task, which
//!   sleeps until the next deadline, ends when no watcher is left and is
//!   aborted with the table.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use tokio::time::Instant;

use super::filesystem::entry;
use super::proto::*;
use super::Envd;
use super::User;
use crate::connect::{self, Code, Error, Protocol};
use crate::fs::identity::{scoped, Scope};
use crate::fs::watch::{self, ErrorKind, Event, Kind, Options, Target, Watch, WatchError};
use crate::server::{Body, RequestBody};

/// Polling watchers at most, live or failed (their watches also count
/// under `--max-watches`).
pub const MAX_POLLERS: usize = 1024;
/// Events one `GetWatcherEvents` takes at most; the rest wait for the next.
pub const MAX_DRAIN: usize = 4096;
/// Events a stream takes from the engine at once.
const BATCH: usize = 256;

/// The Connect error of a watch that could not start.
fn start_error(e: WatchError) -> Error {
    let m = e.to_string();
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Denied | ErrorKind::Escapes => Code::PermissionDenied,
        ErrorKind::NotADirectory | ErrorKind::BadRequest => Code::InvalidArgument,
        ErrorKind::TooMany => Code::ResourceExhausted,
        ErrorKind::Other => Code::Internal,
    };
    Error::new(code, m)
}

/// The error that ends a watch on an `overflow` or `error` event.
fn end_error(ev: &Event) -> Error {
    let why = ev.message.clone().unwrap_or_default();
    if ev.kind == Kind::Overflow {
        Error::new(
            Code::DataLoss,
            format!("changes were lost ({why}); watch again"),
        )
    } else {
        Error::new(Code::Aborted, format!("the watch ended: {why}"))
    }
}

/// Filesystem magic numbers envd refuses to watch unless asked
/// (include/uapi/linux/magic.h): NFS, CIFS, SMB, SMB2, FUSE.
const NETWORK_FS: [i64; 5] = [0x6969, 0xFF53_4D42, 0x517B, 0xFE53_4D42, 0x6573_5546];

/// Arms a watch on `r.path` as `user` (the network-mount check first, as
/// the user).
async fn arm(app: &Envd, user: &User, r: &WatchRequest) -> Result<Watch, Error> {
    let dir = user.path(&r.path).map_err(Error::invalid)?;
    if !r.allow_network_mounts {
        let d = dir.clone();
        let network = scoped(user.scope(), move || {
            // `fs_type_t` is `i64` here, narrower on some targets.
            #[allow(clippy::unnecessary_cast)]
            let network = nix::sys::statfs::statfs(&d)
                .ok()
                .is_some_and(|s| NETWORK_FS.contains(&(s.filesystem_type().0 as i64)));
            Ok(network)
        })
        .await
        .map_err(super::filesystem::fs_error)?;
        if network {
            return Err(Error::invalid(format!(
                "cannot watch {} on a network file system (set allow_network_mounts)",
                dir.display()
            )));
        }
    }
    let opts = Options {
        recursive: r.recursive,
        debounce: app.shared.config.watch_debounce,
        scope: user.scope(),
    };
    watch::start(&app.shared.watches, Target::Path(dir), opts)
        .await
        .map_err(start_error)
}

fn name(p: &std::path::Path) -> String {
    if p.as_os_str().is_empty() {
        ".".into()
    } else {
        p.to_string_lossy().into_owned()
    }
}

/// envd's events for one change (two for a paired rename), with the path
/// (relative) to describe when entries are asked for. False for `overflow`
/// and `error`.
fn translate(ev: &Event, out: &mut Vec<(FilesystemEvent, Option<PathBuf>)>) -> bool {
    let t = match ev.kind {
        Kind::Create => EVENT_TYPE_CREATE,
        Kind::Write => EVENT_TYPE_WRITE,
        Kind::Remove => EVENT_TYPE_REMOVE,
        Kind::Rename => EVENT_TYPE_RENAME,
        Kind::Chmod => EVENT_TYPE_CHMOD,
        Kind::Overflow | Kind::Error => return false,
    };
    let one = |t, p: &std::path::Path, stat: bool| {
        (
            FilesystemEvent {
                name: name(p),
                r#type: t,
                entry: None,
            },
            stat.then(|| p.to_path_buf()),
        )
    };
    match (&ev.old_path, ev.kind) {
        (Some(old), Kind::Rename) => {
            out.push(one(EVENT_TYPE_RENAME, old, false));
            out.push(one(EVENT_TYPE_CREATE, &ev.path, true));
        }
        // Gone from this name: nothing to describe.
        (_, Kind::Remove | Kind::Rename) => out.push(one(t, &ev.path, false)),
        _ => out.push(one(t, &ev.path, true)),
    }
    true
}

/// Fills in the entries of `evs` (those still there), as the user.
async fn describe(
    scope: Scope,
    dir: PathBuf,
    evs: Vec<(FilesystemEvent, Option<PathBuf>)>,
) -> Vec<FilesystemEvent> {
    let plain = |evs: Vec<(FilesystemEvent, Option<PathBuf>)>| {
        evs.into_iter().map(|(e, _)| e).collect::<Vec<_>>()
    };
    if evs.iter().all(|(_, p)| p.is_none()) {
        return plain(evs);
    }
    // Should the blocking thread fail, the events go without entries.
    let backup = plain(evs.clone());
    let r = scoped(scope, move || {
        Ok(evs
            .into_iter()
            .map(|(mut e, p)| {
                if let Some(p) = p {
                    e.entry = entry(&dir.join(p)).ok();
                }
                e
            })
            .collect::<Vec<_>>())
    })
    .await;
    r.unwrap_or(backup)
}

fn response(e: WatchEvent) -> WatchDirResponse {
    WatchDirResponse { event: Some(e) }
}

/// `WatchDir`.
pub async fn watch_dir(
    app: Arc<Envd>,
    user: User,
    p: Protocol,
    req: Request<RequestBody>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let r: WatchRequest = match connect::read_request(p, body).await {
        Ok(r) => r,
        Err(e) => return connect::error_response(p, &e),
    };
    let w = match arm(&app, &user, &r).await {
        Ok(w) => w,
        Err(e) => return connect::error_response(p, &e),
    };
    let state = Streaming {
        dir: w.dir().to_path_buf(),
        w,
        scope: user.scope(),
        include_entry: r.include_entry,
        ka: super::process::keepalive(&parts.headers),
        stop: app.shared.shutdown.clone(),
        queue: std::collections::VecDeque::new(),
        ending: None,
        started: false,
        done: false,
    };
    let s = futures_util::stream::unfold(state, |mut s| async move {
        let m = s.next().await?;
        Some((m, s))
    });
    connect::stream_from(p, s)
}

/// A `WatchDir` stream's state: read as the client takes it, so a client
/// that leaves drops the watch (and its inotify descriptor) with the body.
struct Streaming {
    w: Watch,
    dir: PathBuf,
    scope: Scope,
    include_entry: bool,
    ka: Duration,
    stop: tokio_util::sync::CancellationToken,
    queue: std::collections::VecDeque<FilesystemEvent>,
    /// The error to end with once `queue` is sent.
    ending: Option<Error>,
    started: bool,
    done: bool,
}

impl Streaming {
    async fn next(&mut self) -> Option<Result<WatchDirResponse, Error>> {
        if self.done {
            return None;
        }
        if !std::mem::replace(&mut self.started, true) {
            return Some(Ok(response(WatchEvent::Start(Empty {}))));
        }
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(Ok(response(WatchEvent::Filesystem(e))));
            }
            if let Some(e) = self.ending.take() {
                self.done = true;
                return Some(Err(e));
            }
            let ev = tokio::select! {
                ev = self.w.next() => ev,
                _ = tokio::time::sleep(self.ka) => {
                    return Some(Ok(response(WatchEvent::Keepalive(Empty {}))));
                }
                _ = self.stop.cancelled() => {
                    self.done = true;
                    return None;
                }
            };
            let Some(ev) = ev else {
                self.done = true;
                return Some(Err(Error::new(Code::Aborted, "the watch ended")));
            };
            // This event and what else is ready (one debounce window comes
            // at once), described in one trip to a blocking thread.
            let mut out = Vec::new();
            let mut next = Some(ev);
            while let Some(ev) = next.take() {
                if !translate(&ev, &mut out) {
                    self.ending = Some(end_error(&ev));
                    break;
                }
                if out.len() < BATCH {
                    next = self.w.next().now_or_never().flatten();
                }
            }
            let evs = if self.include_entry {
                describe(self.scope.clone(), self.dir.clone(), out).await
            } else {
                out.into_iter().map(|(e, _)| e).collect()
            };
            self.queue.extend(evs);
        }
    }
}

/// The polling watchers of the E2B API.
#[derive(Default)]
pub struct Watchers {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<String, Entry>,
    /// Removes watchers not polled in time; running while `map` is not
    /// empty.
    reaper: Option<tokio::task::JoinHandle<()>>,
}

struct Entry {
    poller: Arc<Poller>,
    /// Removed when not polled by then.
    deadline: Instant,
    idle: Duration,
}

/// One polling watcher.
struct Poller {
    /// The uid that created it; the only one that may use it.
    owner: u32,
    dir: PathBuf,
    scope: Scope,
    include_entry: bool,
    state: tokio::sync::Mutex<PollState>,
}

struct PollState {
    /// `None` once it failed (the watch closed, its place under the cap
    /// given back).
    watch: Option<Watch>,
    /// What ended it, answered once the buffered events are taken.
    failed: Option<Error>,
}

impl Drop for Watchers {
    fn drop(&mut self) {
        if let Some(t) = lock(&self.inner).reaper.take() {
            t.abort();
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Sleeps until the earliest deadline, removes what is past it, and ends
/// when no watcher is left (a new one starts another).
async fn reap(inner: Weak<Mutex<Inner>>) {
    loop {
        let next = {
            let Some(inner) = inner.upgrade() else { return };
            let mut g = lock(&inner);
            let now = Instant::now();
            g.map.retain(|_, e| e.deadline > now);
            match g.map.values().map(|e| e.deadline).min() {
                Some(d) => d,
                None => {
                    g.reaper = None;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

impl Watchers {
    /// Watchers open now.
    pub fn len(&self) -> usize {
        lock(&self.inner).map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `CreateWatcher`.
    async fn create(&self, app: &Envd, user: &User, r: WatchRequest) -> Result<String, Error> {
        if self.len() >= MAX_POLLERS {
            return Err(too_many());
        }
        let w = arm(app, user, &r).await?;
        let poller = Arc::new(Poller {
            owner: user.uid,
            dir: w.dir().to_path_buf(),
            scope: user.scope(),
            include_entry: r.include_entry,
            state: tokio::sync::Mutex::new(PollState {
                watch: Some(w),
                failed: None,
            }),
        });
        let id = format!("w{}", crate::process::new_id());
        let idle = app.shared.config.e2b_watcher_idle;
        let mut g = lock(&self.inner);
        if g.map.len() >= MAX_POLLERS {
            return Err(too_many());
        }
        g.map.insert(
            id.clone(),
            Entry {
                poller,
                deadline: Instant::now() + idle,
                idle,
            },
        );
        if g.reaper.is_none() {
            g.reaper = Some(tokio::spawn(reap(Arc::downgrade(&self.inner))));
        }
        Ok(id)
    }

    /// The watcher `id` of `user`, its idle deadline pushed back.
    fn get(&self, user: &User, id: &str) -> Result<Arc<Poller>, Error> {
        let mut g = lock(&self.inner);
        match g.map.get_mut(id) {
            Some(e) if e.poller.owner == user.uid => {
                e.deadline = Instant::now() + e.idle;
                Ok(e.poller.clone())
            }
            _ => Err(unknown(id)),
        }
    }

    /// `GetWatcherEvents`: what happened since the last poll.
    async fn events(&self, user: &User, id: &str) -> Result<Vec<FilesystemEvent>, Error> {
        let poller = self.get(user, id)?;
        let mut st = poller.state.lock().await;
        let mut out = Vec::new();
        if let Some(w) = st.watch.as_mut() {
            let mut end = None;
            while out.len() < MAX_DRAIN {
                match w.next().now_or_never() {
                    // Nothing more yet.
                    None => break,
                    Some(None) => {
                        end = Some(Error::new(Code::Aborted, "the watch ended"));
                        break;
                    }
                    Some(Some(ev)) => {
                        if !translate(&ev, &mut out) {
                            end = Some(end_error(&ev));
                            break;
                        }
                    }
                }
            }
            if end.is_some() {
                st.watch = None;
                st.failed = end;
            }
        }
        if out.is_empty() {
            if let Some(e) = &st.failed {
                return Err(e.clone());
            }
            return Ok(Vec::new());
        }
        drop(st);
        Ok(if poller.include_entry {
            describe(poller.scope.clone(), poller.dir.clone(), out).await
        } else {
            out.into_iter().map(|(e, _)| e).collect()
        })
    }

    /// `RemoveWatcher`.
    fn remove(&self, user: &User, id: &str) -> Result<(), Error> {
        let mut g = lock(&self.inner);
        match g.map.get(id) {
            Some(e) if e.poller.owner == user.uid => {
                g.map.remove(id);
                Ok(())
            }
            _ => Err(unknown(id)),
        }
    }
}

fn too_many() -> Error {
    Error::new(
        Code::ResourceExhausted,
        format!("too many watchers (at most {MAX_POLLERS}); remove one and retry"),
    )
}

fn unknown(id: &str) -> Error {
    Error::not_found(format!("watcher with id {id:?} not found"))
}

/// `CreateWatcher`, `GetWatcherEvents`, `RemoveWatcher`.
pub async fn poll_call(
    app: Arc<Envd>,
    user: User,
    p: Protocol,
    method: &str,
    req: Request<RequestBody>,
) -> Response<Body> {
    let a: &Envd = &app;
    let ws = &a.e2b.watchers;
    match method {
        "CreateWatcher" => {
            connect::unary(p, req, |r: WatchRequest| async move {
                let watcher_id = ws.create(a, &user, r).await?;
                Ok(CreateWatcherResponse { watcher_id })
            })
            .await
        }
        "GetWatcherEvents" => {
            connect::unary(p, req, |r: WatcherRequest| async move {
                let events = ws.events(&user, &r.watcher_id).await?;
                Ok(GetWatcherEventsResponse { events })
            })
            .await
        }
        _ => {
            connect::unary(p, req, |r: WatcherRequest| async move {
                ws.remove(&user, &r.watcher_id)?;
                Ok(Empty {})
            })
            .await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(kind: Kind, path: &str, old: Option<&str>) -> Event {
        Event {
            kind,
            path: path.into(),
            old_path: old.map(Into::into),
            is_dir: false,
            timestamp: 0,
            message: None,
        }
    }

    fn names(evs: &[(FilesystemEvent, Option<PathBuf>)]) -> Vec<(String, i32, bool)> {
        evs.iter()
            .map(|(e, p)| (e.name.clone(), e.r#type, p.is_some()))
            .collect()
    }

    #[test]
    fn renames_read_as_envds_pair() {
        let mut out = Vec::new();
        for ev in [
            change(Kind::Rename, "d/new", Some("old")),
            change(Kind::Rename, "gone", None),
            change(Kind::Write, "f", None),
            change(Kind::Remove, "", None),
        ] {
            assert!(translate(&ev, &mut out));
        }
        assert_eq!(
            names(&out),
            [
                ("old".into(), EVENT_TYPE_RENAME, false),
                ("d/new".into(), EVENT_TYPE_CREATE, true),
                ("gone".into(), EVENT_TYPE_RENAME, false),
                ("f".into(), EVENT_TYPE_WRITE, true),
                (".".into(), EVENT_TYPE_REMOVE, false),
            ]
        );
    }

    #[test]
    fn lost_changes_and_ends_are_errors() {
        let mut out = Vec::new();
        let mut ov = change(Kind::Overflow, "", None);
        ov.message = Some("queue".into());
        assert!(!translate(&ov, &mut out));
        assert_eq!(end_error(&ov).code, Code::DataLoss);
        let mut er = change(Kind::Error, "", None);
        er.message = Some("the watched directory was removed".into());
        assert_eq!(end_error(&er).code, Code::Aborted);
        assert!(end_error(&er).message.contains("removed"));
        assert!(out.is_empty());
    }
}
