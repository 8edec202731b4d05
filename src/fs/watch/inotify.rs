//! The inotify side of a watch: arming, the reading task, recursion, rename
//! pairing and the terminal conditions (see the module doc of `super`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::mpsc::Sender;

use super::debounce::{Pending, Slot};
use super::{now_ms, Event, Kind, Options, Permit, Target, WatchError, MAX_DIRS, PENDING_CAP};
use crate::fs::confined::{fd_path, ConfineError, RelPath, Root};
use crate::fs::identity::{self, Scope};
use crate::fs::upload::temp_replaces;
use crate::fs::FsError;

/// Reads of the inotify descriptor per turn of the loop, so that a flood
/// cannot keep the gathered changes from being sent.
const READS_PER_TURN: usize = 64;
/// Renames whose second half is awaited at most.
const MOVES_CAP: usize = 1024;

/// What each watched directory reports.
fn mask() -> F {
    F::IN_CREATE
        | F::IN_DELETE
        | F::IN_MODIFY
        | F::IN_ATTRIB
        | F::IN_MOVED_FROM
        | F::IN_MOVED_TO
        | F::IN_DELETE_SELF
        | F::IN_MOVE_SELF
        | F::IN_ONLYDIR
        // No events for a name already unlinked but still open.
        | F::from_bits_retain(libc::IN_EXCL_UNLINK)
}

/// How directories below the watched one are reached.
enum Place {
    /// The watched directory's absolute path.
    Path(PathBuf),
    /// `rel` beneath a confining root.
    Beneath { root: Root, rel: RelPath },
}

impl Place {
    /// The absolute path of `sub` (relative to the watched directory).
    fn abs(&self, sub: &Path) -> PathBuf {
        let base = match self {
            Place::Path(p) => p.clone(),
            Place::Beneath { root, rel } if rel.is_root() => root.path().to_path_buf(),
            Place::Beneath { root, rel } => root.path().join(rel.to_path()),
        };
        if sub.as_os_str().is_empty() {
            base
        } else {
            base.join(sub)
        }
    }

    fn beneath(rel: &RelPath, sub: &Path) -> RelPath {
        sub.components().fold(rel.clone(), |r, c| match c {
            Component::Normal(n) => r.join(n),
            _ => r,
        })
    }

    /// Opens directory `sub` (a symlink at its end is not followed).
    fn open(&self, sub: &Path, flags: i32) -> Result<OwnedFd, Errno> {
        match self {
            Place::Path(_) => std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(flags | libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(self.abs(sub))
                .map(OwnedFd::from)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))),
            Place::Beneath { root, rel } => root
                .open_beneath(
                    &Self::beneath(rel, sub),
                    flags | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                )
                .map_err(|e| match e {
                    ConfineError::Escapes => Errno::EXDEV,
                    e => Errno::from_raw(e.errno().unwrap_or(libc::EIO)),
                }),
        }
    }

    /// Watches directory `sub`, never through a symlink at its end, and
    /// beneath the root when confined.
    fn add(&self, ino: &Inotify, sub: &Path) -> Result<WatchDescriptor, Errno> {
        match self {
            Place::Path(_) => ino.add_watch(&self.abs(sub), mask() | F::IN_DONT_FOLLOW),
            Place::Beneath { .. } => {
                let fd = self.open(sub, libc::O_PATH)?;
                ino.add_watch(&fd_path(&fd, &self.abs(sub)), mask())
            }
        }
    }

    /// Whether `sub` names an entry (a symlink at its end not followed).
    fn exists(&self, sub: &Path) -> bool {
        let (Some(parent), Some(name)) = (sub.parent(), sub.file_name()) else {
            return true;
        };
        self.open(parent, libc::O_PATH).is_ok_and(|fd| {
            nix::sys::stat::fstatat(&fd, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
        })
    }

    /// Calls `f(name, is_dir)` for each entry of directory `sub` until it
    /// returns false. Symlinks are not directories here.
    fn each(&self, sub: &Path, mut f: impl FnMut(OsString, bool) -> bool) {
        let abs = self.abs(sub);
        let fd;
        let dir = match self {
            Place::Path(_) => abs,
            Place::Beneath { .. } => {
                let Ok(d) = self.open(sub, libc::O_RDONLY) else {
                    return;
                };
                fd = d;
                fd_path(&fd, &abs)
            }
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
            if !f(e.file_name(), is_dir) {
                return;
            }
        }
    }
}

/// What a walk found.
#[derive(Default)]
struct Walked {
    /// Directories now watched, by descriptor.
    added: Vec<(WatchDescriptor, PathBuf)>,
    /// Entries found (when asked to report them).
    found: Vec<(PathBuf, bool)>,
    /// More was found than could be reported.
    truncated: bool,
    /// A limit ended the walk: why.
    limit: Option<String>,
}

/// Watches each directory of `start` whose flag is set, lists it, and does
/// the same for every directory found below. At most `budget` directories
/// are added and `report` entries reported (`None`: none).
fn walk(
    ino: &Inotify,
    place: &Place,
    start: Vec<(PathBuf, bool)>,
    budget: usize,
    report: Option<usize>,
) -> Walked {
    let mut w = Walked::default();
    let mut queue = std::collections::VecDeque::from(start);
    while let Some((dir, add)) = queue.pop_front() {
        if add {
            if w.added.len() >= budget {
                w.limit = Some(format!(
                    "the watch would follow more than {MAX_DIRS} directories; watch a smaller tree"
                ));
                break;
            }
            match place.add(ino, &dir) {
                Ok(wd) => w.added.push((wd, dir.clone())),
                Err(Errno::ENOSPC) => {
                    w.limit = Some(watch_limit());
                    break;
                }
                // Gone again, not a directory (a symlink), not readable by
                // this identity, or leading out of the root: not followed.
                Err(_) => continue,
            }
        }
        place.each(&dir, |name, is_dir| {
            let p = dir.join(&name);
            if let Some(cap) = report {
                if w.found.len() < cap {
                    w.found.push((p.clone(), is_dir));
                } else {
                    w.truncated = true;
                }
            }
            if is_dir {
                queue.push_back((p, true));
            }
            queue.len() <= budget
        });
    }
    w
}

fn watch_limit() -> String {
    "the inotify watch limit is reached (fs.inotify.max_user_watches): \
     not every directory can be watched"
        .into()
}

/// An inotify instance and its place under the cap, given back in the same
/// drop that closes the descriptor: the cap counts open instances.
pub struct Instance {
    // Fields drop in order: the place under the cap is given back before the
    // descriptor closes, so whoever sees the descriptor gone (a client, a
    // test reading /proc) finds the place free too.
    _permit: Permit,
    ino: Inotify,
}

impl std::ops::Deref for Instance {
    type Target = Inotify;

    fn deref(&self) -> &Inotify {
        &self.ino
    }
}

/// A watch armed on a blocking thread, to be run by [`run`].
pub struct Armed {
    ino: Arc<Instance>,
    place: Arc<Place>,
    root_wd: WatchDescriptor,
    /// Every watched directory, relative to the watched one.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// A limit hit while arming recursively: the first event says so.
    failed: Option<String>,
}

impl Armed {
    pub fn dir(&self) -> PathBuf {
        self.place.abs(Path::new(""))
    }
}

/// Opens and watches the directory of `target` (and below, if `recursive`);
/// runs as the caller's identity.
pub fn arm(target: Target, recursive: bool, permit: Permit) -> Result<Armed, WatchError> {
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|e| {
        WatchError::Limit(format!(
            "cannot create an inotify instance (fs.inotify.max_user_instances): {e}"
        ))
    })?;
    let (place, fd) = match target {
        Target::Path(p) => {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
                .open(&p);
            match opened {
                Ok(f) => (Place::Path(p), OwnedFd::from(f)),
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                    return Err(match std::fs::metadata(&p) {
                        Ok(_) => WatchError::NotADirectory(p.display().to_string()),
                        Err(e) => FsError::io("open", &p, e).into(),
                    });
                }
                Err(e) => return Err(FsError::io("open", &p, e).into()),
            }
        }
        Target::Beneath { root, rel } => {
            let r = Root::open(&root).map_err(|e| FsError::io("open", &root, e))?;
            let shown = format!("/{}", rel.to_path().display());
            match r.open_beneath(&rel, libc::O_PATH | libc::O_DIRECTORY) {
                Ok(fd) => (Place::Beneath { root: r, rel }, fd),
                Err(e) if e.errno() == Some(libc::ENOTDIR) && r.stat(&rel).is_ok() => {
                    return Err(WatchError::NotADirectory(shown));
                }
                Err(source) => {
                    return Err(WatchError::Confined {
                        path: shown,
                        source,
                    })
                }
            }
        }
    };
    let dir = place.abs(Path::new(""));
    let root_wd = ino
        .add_watch(&fd_path(&fd, &dir), mask())
        .map_err(|e| match e {
            Errno::ENOSPC => WatchError::Limit(watch_limit()),
            e => FsError::io("watch", &dir, e.into()).into(),
        })?;
    drop(fd);
    let mut dirs = HashMap::from([(root_wd, PathBuf::new())]);
    let mut failed = None;
    if recursive {
        let w = walk(
            &ino,
            &place,
            vec![(PathBuf::new(), false)],
            MAX_DIRS - 1,
            None,
        );
        dirs.extend(w.added);
        failed = w.limit;
    }
    Ok(Armed {
        ino: Arc::new(Instance {
            ino,
            _permit: permit,
        }),
        place: Arc::new(place),
        root_wd,
        dirs,
        failed,
    })
}

/// The inotify descriptor, for the reactor.
struct Fd(Arc<Instance>);

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

/// The first half of a rename, awaiting its second.
struct Move {
    from: PathBuf,
    is_dir: bool,
    slot: Option<Slot>,
    /// The watches of the moved directory and below, set aside: their
    /// paths are unknown until the second half names the new place.
    detached: Vec<(WatchDescriptor, PathBuf)>,
    /// Sends since it arrived; at the second send without its pair it was
    /// a move out of the tree.
    age: u8,
    /// An upload's temporary (not reported): whether the upload replaces
    /// its target.
    upload: Option<bool>,
}

/// A running watch's state, owned by its task.
struct Worker {
    ino: Arc<Instance>,
    place: Arc<Place>,
    scope: Scope,
    recursive: bool,
    root_wd: WatchDescriptor,
    dirs: HashMap<WatchDescriptor, PathBuf>,
    pending: Pending,
    moves: HashMap<u32, Move>,
    /// The terminal `error` event, sent after what is gathered.
    terminal: Option<Event>,
    done: bool,
}

/// Reads and reports the watch until the consumer is gone or an `error`
/// ends it. The inotify instance (and its place under the cap) goes with
/// the task, or with a walk still running for it.
pub async fn run(armed: Armed, opts: Options, tx: Sender<Event>) {
    let mut w = Worker {
        ino: armed.ino,
        place: armed.place,
        scope: opts.scope,
        recursive: opts.recursive,
        root_wd: armed.root_wd,
        dirs: armed.dirs,
        pending: Pending::new(PENDING_CAP * 2),
        moves: HashMap::new(),
        terminal: None,
        done: false,
    };
    if let Some(why) = armed.failed {
        w.terminate(why);
    }
    // SAFETY: `Fd` holds an `Arc` of the inotify instance, so its descriptor
    // stays open, and is the one `as_raw_fd` returns, for as long as the
    // `AsyncFd` owns the `Fd`.
    let registered =
        unsafe { AsyncFd::register_with_interest(Fd(w.ino.clone()), Interest::READABLE) };
    let fd = match registered.map_err(|e| e.to_string()) {
        Ok(fd) => fd,
        Err(e) => {
            w.terminate(format!("cannot poll the inotify descriptor: {e}"));
            let _ = w.flush(&tx).await;
            return;
        }
    };
    let window = opts.debounce;
    let sleep = tokio::time::sleep(window);
    tokio::pin!(sleep);
    loop {
        let deadline = w.pending.deadline(window);
        let due = w.done
            || w.pending.len() >= PENDING_CAP
            || deadline.is_some_and(|d| d <= tokio::time::Instant::now().into_std());
        if due {
            if !w.flush(&tx).await || w.done {
                return;
            }
            continue;
        }
        if let Some(d) = deadline {
            sleep.as_mut().reset(d.into());
        }
        tokio::select! {
            _ = tx.closed() => return,
            r = fd.readable() => match r {
                Ok(mut guard) => {
                    let evs = w.read(&mut guard);
                    drop(guard);
                    w.handle(evs).await;
                }
                Err(e) => w.terminate(format!("inotify: {e}")),
            },
            _ = &mut sleep, if deadline.is_some() => {}
        }
    }
}

impl Worker {
    /// Reads what the kernel has queued, within this turn's bounds.
    fn read(
        &mut self,
        guard: &mut tokio::io::unix::AsyncFdReadyGuard<'_, Fd>,
    ) -> Vec<InotifyEvent> {
        let mut out = Vec::new();
        for _ in 0..READS_PER_TURN {
            match self.ino.read_events() {
                Ok(evs) => {
                    out.extend(evs);
                    if self.pending.len() + out.len() >= PENDING_CAP {
                        break;
                    }
                }
                Err(Errno::EAGAIN) => {
                    guard.clear_ready();
                    break;
                }
                Err(Errno::EINTR) => {}
                Err(e) => {
                    self.terminate(format!("cannot read inotify events: {e}"));
                    break;
                }
            }
        }
        out
    }

    /// Ends the watch with `why` (once: the first reason stands).
    fn terminate(&mut self, why: String) {
        if !self.done {
            self.done = true;
            self.terminal = Some(Event::notice(Kind::Error, why));
        }
    }

    fn push(&mut self, kind: Kind, path: PathBuf, is_dir: bool, now: Instant) -> Option<Slot> {
        self.pending
            .push(Event::change(kind, path, is_dir, now_ms()), now)
    }

    fn overflow(&mut self, why: &str, now: Instant) {
        self.pending
            .push(Event::notice(Kind::Overflow, why.to_string()), now);
    }

    /// Turns raw inotify events into gathered changes. An upload
    /// ([`crate::fs::upload`]: a temporary renamed over its target) shows
    /// as the target's own change, as a plain write makes it: `create` and
    /// `write` for a new file, `write` for one replaced; its temporary (an
    /// `O_TMPFILE`, named `#<inode>` by inotify, then a `.execd-upload-…`
    /// link) is never reported.
    async fn handle(&mut self, evs: Vec<InotifyEvent>) {
        let anonymous = self.anonymous(&evs).await;
        let now = Instant::now();
        let mut new_dirs: Vec<PathBuf> = Vec::new();
        let mut rescan = false;
        for ev in evs {
            // New directories are followed before the next change is looked
            // at, so what they held is reported in order (before anything
            // made after them).
            if !new_dirs.is_empty() && !rescan {
                self.follow(std::mem::take(&mut new_dirs)).await;
            }
            if self.done {
                break;
            }
            let m = ev.mask;
            if m.contains(F::IN_Q_OVERFLOW) {
                self.overflow(
                    "the kernel's event queue overflowed (fs.inotify.max_queued_events): \
                     changes were lost",
                    now,
                );
                rescan |= self.recursive;
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                continue;
            };
            let is_root = ev.wd == self.root_wd;
            if m.contains(F::IN_IGNORED) {
                if is_root {
                    self.terminate("the watched directory is gone".into());
                } else {
                    self.dirs.remove(&ev.wd);
                }
                continue;
            }
            if m.intersects(F::IN_DELETE_SELF | F::IN_MOVE_SELF | F::IN_UNMOUNT) {
                // A directory below is reported by its parent's watch.
                if is_root {
                    self.terminate(
                        if m.contains(F::IN_DELETE_SELF) {
                            "the watched directory was removed"
                        } else if m.contains(F::IN_MOVE_SELF) {
                            "the watched directory was moved"
                        } else {
                            "the watched directory's file system was unmounted"
                        }
                        .into(),
                    );
                }
                continue;
            }
            let Some(name) = ev.name else {
                // The directory itself; below the root its parent reports it.
                if is_root && m.contains(F::IN_ATTRIB) {
                    self.push(Kind::Chmod, PathBuf::new(), true, now);
                }
                continue;
            };
            let rel = dir.join(&name);
            let is_dir = m.contains(F::IN_ISDIR);
            let temp = (!is_dir).then(|| temp_replaces(&name)).flatten();
            if m.contains(F::IN_CREATE) {
                if temp.is_some() {
                    continue;
                }
                self.push(Kind::Create, rel.clone(), is_dir, now);
                if self.recursive && is_dir {
                    new_dirs.push(rel);
                }
            } else if m.contains(F::IN_MOVED_FROM) {
                let slot = match temp {
                    Some(_) => None,
                    None => self.push(Kind::Rename, rel.clone(), is_dir, now),
                };
                let detached = if self.recursive && is_dir {
                    self.detach(&rel)
                } else {
                    Vec::new()
                };
                if self.moves.len() >= MOVES_CAP {
                    self.settle_moves(true);
                }
                self.moves.insert(
                    ev.cookie,
                    Move {
                        from: rel,
                        is_dir,
                        slot,
                        detached,
                        age: 0,
                        upload: temp,
                    },
                );
            } else if m.contains(F::IN_MOVED_TO) {
                match self.moves.remove(&ev.cookie) {
                    // An upload committed (unless renamed to a temporary).
                    Some(Move {
                        upload: Some(replaces),
                        ..
                    }) => {
                        if temp.is_none() {
                            if !replaces {
                                self.push(Kind::Create, rel.clone(), is_dir, now);
                            }
                            self.push(Kind::Write, rel, is_dir, now);
                        }
                    }
                    Some(mv) => {
                        self.pending
                            .pair(mv.slot, &mv.from, rel.clone(), is_dir, now_ms(), now);
                        if self.recursive && mv.is_dir {
                            let watched = !mv.detached.is_empty();
                            for (wd, p) in mv.detached {
                                self.dirs.insert(wd, rebase(&p, &mv.from, &rel));
                            }
                            for d in &mut new_dirs {
                                *d = rebase(d, &mv.from, &rel);
                            }
                            if !watched && !new_dirs.contains(&rel) {
                                new_dirs.push(rel);
                            }
                        }
                    }
                    None if temp.is_some() => {}
                    None => {
                        // Moved in from outside the tree.
                        self.push(Kind::Create, rel.clone(), is_dir, now);
                        if self.recursive && is_dir {
                            new_dirs.push(rel);
                        }
                    }
                }
            } else if temp.is_some() || anonymous.contains(&rel) {
                // A write, chmod or removal of an upload's temporary.
            } else if m.contains(F::IN_DELETE) {
                self.push(Kind::Remove, rel, is_dir, now);
            } else if m.contains(F::IN_MODIFY) {
                self.push(Kind::Write, rel, is_dir, now);
            } else if m.contains(F::IN_ATTRIB) {
                self.push(Kind::Chmod, rel, is_dir, now);
            }
        }
        if self.done {
            return;
        }
        if rescan {
            self.rescan().await;
        } else if !new_dirs.is_empty() {
            self.follow(new_dirs).await;
        }
    }

    /// The `#<inode>` names among `evs`' writes and chmods that no entry
    /// has: an `O_TMPFILE` being written (looked up as the watch's identity,
    /// on a blocking thread, only when such a name is there).
    async fn anonymous(&self, evs: &[InotifyEvent]) -> HashSet<PathBuf> {
        let names: Vec<PathBuf> = evs
            .iter()
            .filter(|ev| ev.mask.intersects(F::IN_MODIFY | F::IN_ATTRIB))
            .filter(|ev| !ev.mask.contains(F::IN_ISDIR))
            .filter_map(|ev| {
                let name = ev.name.as_ref()?;
                let digits = name.as_bytes().strip_prefix(b"#")?;
                let anon = !digits.is_empty() && digits.iter().all(u8::is_ascii_digit);
                anon.then(|| self.dirs.get(&ev.wd).map(|d| d.join(name)))?
            })
            .collect();
        if names.is_empty() {
            return HashSet::new();
        }
        let place = self.place.clone();
        identity::scoped(self.scope.clone(), move || {
            Ok(names.into_iter().filter(|p| !place.exists(p)).collect())
        })
        .await
        .unwrap_or_default()
    }

    /// Takes the watches of `dir` and below out of the map.
    fn detach(&mut self, dir: &Path) -> Vec<(WatchDescriptor, PathBuf)> {
        let wds: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, p)| p.starts_with(dir))
            .map(|(wd, _)| *wd)
            .collect();
        wds.into_iter()
            .filter_map(|wd| self.dirs.remove(&wd).map(|p| (wd, p)))
            .collect()
    }

    /// Ages the renames still awaiting their second half; those that waited
    /// a whole window (or all, with `all`) were moves out of the tree: their
    /// watches are removed.
    fn settle_moves(&mut self, all: bool) {
        let ino = self.ino.clone();
        self.moves.retain(|_, mv| {
            if !all && mv.age == 0 {
                mv.age = 1;
                return true;
            }
            for (wd, _) in mv.detached.drain(..) {
                let _ = ino.rm_watch(wd);
            }
            false
        });
    }

    /// Watches new directories (and what is already below them), reporting
    /// what they already hold as `create`.
    async fn follow(&mut self, dirs: Vec<PathBuf>) {
        let budget = MAX_DIRS.saturating_sub(self.dirs.len());
        let room = (PENDING_CAP * 2).saturating_sub(self.pending.len());
        let (ino, place) = (self.ino.clone(), self.place.clone());
        let start = dirs.into_iter().map(|d| (d, true)).collect();
        let r = identity::scoped(self.scope.clone(), move || {
            Ok(walk(&ino, &place, start, budget, Some(room)))
        })
        .await;
        let w = match r {
            Ok(w) => w,
            Err(e) => return self.terminate(format!("cannot follow a new directory: {e}")),
        };
        let now = Instant::now();
        self.dirs.extend(w.added);
        for (p, is_dir) in w.found {
            // An upload's temporary: its rename will be reported.
            if !is_dir && p.file_name().and_then(temp_replaces).is_some() {
                continue;
            }
            self.push(Kind::Create, p, is_dir, now);
        }
        if w.truncated {
            self.overflow(
                "a new directory held more entries than a watch gathers at once: \
                 not all were reported",
                now,
            );
        }
        if let Some(why) = w.limit {
            self.terminate(why);
        }
    }

    /// After an overflow: walks the whole tree again, so that directories
    /// made while events were lost are watched, and paths are right again.
    async fn rescan(&mut self) {
        let (ino, place) = (self.ino.clone(), self.place.clone());
        let start = vec![(PathBuf::new(), false)];
        let r = identity::scoped(self.scope.clone(), move || {
            Ok(walk(&ino, &place, start, MAX_DIRS - 1, None))
        })
        .await;
        let w = match r {
            Ok(w) => w,
            Err(e) => return self.terminate(format!("cannot walk the watched tree: {e}")),
        };
        let mut dirs = HashMap::from([(self.root_wd, PathBuf::new())]);
        dirs.extend(w.added);
        let stale: Vec<WatchDescriptor> = self
            .dirs
            .keys()
            .copied()
            .chain(
                self.moves
                    .values()
                    .flat_map(|m| m.detached.iter().map(|(wd, _)| *wd)),
            )
            .filter(|wd| !dirs.contains_key(wd))
            .collect();
        for wd in stale {
            let _ = self.ino.rm_watch(wd);
        }
        for mv in self.moves.values_mut() {
            mv.detached.clear();
        }
        self.dirs = dirs;
        if let Some(why) = w.limit {
            self.terminate(why);
        }
    }

    /// Sends what is gathered (and the terminal event, if any). False when
    /// the consumer is gone.
    async fn flush(&mut self, tx: &Sender<Event>) -> bool {
        let (evs, dropped) = self.pending.take();
        self.settle_moves(false);
        for ev in evs {
            if tx.send(ev).await.is_err() {
                return false;
            }
        }
        if dropped > 0 {
            let ev = Event::notice(
                Kind::Overflow,
                format!(
                    "{dropped} changes were dropped: more arrived within one window \
                     than a watch holds ({})",
                    PENDING_CAP * 2
                ),
            );
            if tx.send(ev).await.is_err() {
                return false;
            }
        }
        if let Some(t) = self.terminal.take() {
            let _ = tx.send(t).await;
        }
        true
    }
}

/// `p` with its prefix `from` replaced by `to`.
fn rebase(p: &Path, from: &Path, to: &Path) -> PathBuf {
    match p.strip_prefix(from) {
        Ok(rest) if rest.as_os_str().is_empty() => to.to_path_buf(),
        Ok(rest) => to.join(rest),
        Err(_) => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebasing() {
        let r = |p: &str| rebase(Path::new(p), Path::new("a/b"), Path::new("c"));
        assert_eq!(r("a/b"), PathBuf::from("c"));
        assert_eq!(r("a/b/x/y"), PathBuf::from("c/x/y"));
        assert_eq!(r("a/bx"), PathBuf::from("a/bx"));
        assert_eq!(r("z"), PathBuf::from("z"));
    }
}
