//! Process trees: everything a command (session run, PTY shell, gRPC
//! process) started, so that ending it ends all of it, whatever its
//! processes did to leave their process group (`setsid`, `set -m` jobs,
//! double forks, `nohup`).
//!
//! Two ways, chosen once at start-up:
//!
//! - **cgroup v2** (`--cgroups auto` where a writable cgroup2 hierarchy with
//!   `cgroup.kill` exists): every process tree gets its own cgroup
//!   `<base>/cmd-<n>`. The child is made inside it (`clone3` with
//!   `CLONE_INTO_CGROUP`, see `vfork.rs`), or where that is refused moves
//!   itself into it between fork and exec (it writes `0` to the cgroup's
//!   `cgroup.procs`, through a descriptor the parent opened), so it is
//!   inside before it runs a single instruction of the program and nothing
//!   it forks can be outside. Ending the tree is one
//!   write of `1` to `cgroup.kill`: the kernel kills every member, also those
//!   forked concurrently. Once it is empty, the cgroup goes back to a small
//!   pool of empty cgroups for the next command (a `mkdir` and `rmdir` of a
//!   cgroup cost more CPU than the rest of a spawn); past the pool's size it
//!   is removed. A pooled cgroup keeps its `cgroup.procs`, `cgroup.kill` and
//!   `cgroup.events` open, so the hot path opens no file. Each use of a
//!   cgroup has a generation: a tree acts on its cgroup (kill, signal,
//!   liveness) only while the cgroup is still its own, so a finished
//!   command's late `kill` never reaches the next user of the cgroup.
//! - **tracking** (no usable cgroup, or `--cgroups off`): execd is a child
//!   subreaper, so every process that leaves the tree by the death of its
//!   parent is re-parented to execd. Each tree's processes carry
//!   `EXECD_TREE=<id>` in their environment. The members are the leader
//!   (while alive), execd's un-registered children carrying the marker, and
//!   all their descendants (`/proc/<pid>/task/*/children`). Ending the tree
//!   stops every member (SIGSTOP, so nothing forks meanwhile), re-walks until
//!   no new member appears, then kills them all. Limit: a process that both
//!   drops the marker (`env -i`, a fresh `execve` environment) *and* is
//!   orphaned is not found; the cgroup way has no such gap.
//!
//! Every signal goes through a pidfd whose process is verified (same start
//! time, or same cgroup) after it was opened, so a reused pid is never hit.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::pidfd;
use super::reaper::Reaper;

/// The environment variable that marks a tracked tree's processes.
pub const MARKER: &str = "EXECD_TREE";

/// `--cgroups`: whether to use cgroups where they work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgroupMode {
    Auto,
    Off,
}

/// The daemon's cgroup set-up: where command cgroups are made.
#[derive(Debug)]
struct Base {
    /// Directory of the command cgroups.
    dir: PathBuf,
    /// `dir` as `/proc/<pid>/cgroup` spells it (relative to the cgroup root).
    rel: String,
}

/// Empty command cgroups kept for reuse.
const POOL_MAX: usize = 32;

/// All trees of the daemon.
pub struct Trees {
    base: Option<Base>,
    reaper: Arc<Reaper>,
    self_pid: i32,
    /// Empty cgroups, free for the next command.
    pool: Mutex<Vec<Arc<Slot>>>,
    /// cgroups of trees that ended with members left (background jobs of a
    /// command that exited normally): pooled or removed once empty.
    lingering: Mutex<Vec<(Arc<Slot>, u64)>>,
    /// Numbers the cgroups made (their names) and their uses (generations).
    made: AtomicU64,
    generation: AtomicU64,
    warned: AtomicBool,
}

/// A command cgroup, with its control files open.
#[derive(Debug)]
struct Slot {
    dir: PathBuf,
    /// `dir` as `/proc/<pid>/cgroup` spells it.
    rel: String,
    /// The directory, for `clone3(CLONE_INTO_CGROUP)`.
    dirfd: File,
    /// `cgroup.procs`, into which the child writes `0` before exec where
    /// it cannot be made inside the cgroup.
    procs: File,
    /// `cgroup.kill`.
    kill: File,
    /// `cgroup.events`, read for `populated`.
    events: File,
    /// `cgroup.kill` was written: the cgroup is removed, never pooled. (A
    /// child cloned into a cgroup whose kill count differs from that of its
    /// parent's cgroup is killed at birth by the kernel, as if it had raced
    /// the kill: a killed cgroup would kill every later command.)
    killed: AtomicBool,
    /// The generation of the tree that owns the cgroup; 0 while free. Held
    /// while acting on the cgroup, so it cannot change hands meanwhile.
    owner: Mutex<u64>,
}

impl Slot {
    /// Makes a command cgroup and opens its control files.
    fn make(dir: PathBuf, rel: String) -> io::Result<Slot> {
        std::fs::create_dir(&dir)?;
        let open = |name: &str, write: bool| {
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(dir.join(name))
        };
        let dirfd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECTORY.bits())
            .open(&dir);
        match (
            dirfd,
            open("cgroup.procs", true),
            open("cgroup.kill", true),
            open("cgroup.events", false),
        ) {
            (Ok(dirfd), Ok(procs), Ok(kill), Ok(events)) => Ok(Slot {
                dir,
                rel,
                dirfd,
                procs,
                kill,
                events,
                killed: AtomicBool::new(false),
                owner: Mutex::new(0),
            }),
            (Err(e), _, _, _) | (_, Err(e), _, _) | (_, _, Err(e), _) | (_, _, _, Err(e)) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    fn owner(&self) -> MutexGuard<'_, u64> {
        self.owner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a process of the cgroup is alive (zombies aside).
    fn populated(&self) -> bool {
        let mut buf = [0u8; 128];
        match self.events.read_at(&mut buf, 0) {
            Ok(n) => buf[..n].split(|&b| b == b'\n').any(|l| l == b"populated 1"),
            Err(_) => false,
        }
    }
}

impl Trees {
    /// Sets up cgroups per `mode`, falling back to tracking.
    pub fn new(mode: CgroupMode, reaper: Arc<Reaper>) -> Arc<Trees> {
        let base = match mode {
            CgroupMode::Off => None,
            CgroupMode::Auto => match setup_cgroups() {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::info!(error = %e, "no usable cgroup v2: process trees are tracked by walking /proc");
                    None
                }
            },
        };
        if let Some(b) = &base {
            tracing::info!(dir = %b.dir.display(), "each command runs in a cgroup of its own");
        }
        Arc::new(Trees {
            base,
            reaper,
            self_pid: std::process::id() as i32,
            pool: Mutex::new(Vec::new()),
            lingering: Mutex::new(Vec::new()),
            made: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            warned: AtomicBool::new(false),
        })
    }

    /// A free cgroup, from the pool or made, owned by a new generation.
    fn acquire(&self, base: &Base) -> io::Result<(Arc<Slot>, u64)> {
        let pooled = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let slot = match pooled {
            Some(slot) => slot,
            None => {
                let name = format!("cmd-{}", self.made.fetch_add(1, Ordering::Relaxed));
                let rel = format!("{}/{name}", base.rel.trim_end_matches('/'));
                Arc::new(Slot::make(base.dir.join(name), rel)?)
            }
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        *slot.owner() = generation;
        Ok((slot, generation))
    }

    /// The tree of generation `generation` is done with `slot`: free and
    /// pooled (or removed) if it is empty, else kept until it is.
    fn put_back(&self, slot: Arc<Slot>, generation: u64) {
        let mut owner = slot.owner();
        if *owner != generation {
            return;
        }
        if slot.populated() {
            drop(owner);
            self.lingering
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((slot, generation));
            return;
        }
        *owner = 0;
        drop(owner);
        self.recycle(slot);
    }

    /// Pools a free, empty cgroup, or removes it when the pool is full or
    /// it was killed.
    fn recycle(&self, slot: Arc<Slot>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < POOL_MAX && !slot.killed.load(Ordering::SeqCst) {
            pool.push(slot);
        } else {
            drop(pool);
            let _ = remove_cgroup(&slot.dir);
        }
    }

    /// Whether trees are cgroups.
    pub fn cgroups(&self) -> bool {
        self.base.is_some()
    }

    /// Prepares a tree before the spawn: makes its cgroup (where one cannot
    /// be made, the tree is tracked instead). Apply the result
    /// to the `Command`, spawn, then call [`Pending::started`] while still
    /// holding the reaper's spawn guard.
    pub fn prepare(self: &Arc<Self>) -> io::Result<Pending> {
        let cgroup = self.base.as_ref().and_then(|b| match self.acquire(b) {
            Ok(slot) => Some(slot),
            Err(e) => {
                // A full hierarchy (cgroup.max.descendants) or a
                // vanished one: this tree is tracked instead.
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(dir = %b.dir.display(), error = %e, "cannot make a command cgroup; tracking its processes instead (warned once)");
                }
                None
            }
        });
        // The marker's id is needed only by a tracked tree.
        let id = if cgroup.is_none() {
            super::new_id()
        } else {
            String::new()
        };
        Ok(Pending {
            trees: self.clone(),
            id,
            cgroup,
        })
    }

    /// Pools (or removes) the cgroups of ended trees that have emptied
    /// since; call after reaps.
    pub fn sweep(&self) {
        let mut l = self.lingering.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_empty() {
            return;
        }
        let mut freed = Vec::new();
        l.retain(|(slot, generation)| {
            let mut owner = slot.owner();
            if *owner != *generation {
                return false;
            }
            if slot.populated() {
                return true;
            }
            *owner = 0;
            freed.push(slot.clone());
            false
        });
        drop(l);
        for slot in freed {
            self.recycle(slot);
        }
    }

    /// Number of ended trees whose cgroup still has members.
    pub fn lingering(&self) -> usize {
        self.lingering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// At exit: removes what can be removed.
    pub fn close(&self) {
        self.sweep();
        let pooled = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|p| p.into_inner()));
        for slot in pooled {
            let _ = remove_cgroup(&slot.dir);
        }
        for (slot, _) in self
            .lingering
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = remove_cgroup(&slot.dir);
        }
        if let Some(b) = &self.base {
            let _ = std::fs::remove_dir(&b.dir);
        }
    }
}

/// A tree being started.
pub struct Pending {
    trees: Arc<Trees>,
    id: String,
    /// The cgroup (its `cgroup.procs` open for the child's write) and the
    /// generation that owns it.
    cgroup: Option<(Arc<Slot>, u64)>,
}

impl Pending {
    /// With a cgroup: its directory (to clone the child into it) and its
    /// `cgroup.procs`, open for writing (for the child's write where it
    /// cannot be cloned into it).
    pub fn cgroup(&self) -> Option<(std::os::fd::BorrowedFd<'_>, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        self.cgroup
            .as_ref()
            .map(|(slot, _)| (slot.dirfd.as_fd(), slot.procs.as_fd()))
    }

    /// Without a cgroup: the environment variable (name, value) that marks
    /// the tree's processes.
    pub fn marker(&self) -> Option<(&'static str, &str)> {
        self.cgroup.is_none().then_some((MARKER, self.id.as_str()))
    }

    /// The tree of the spawned `leader`. Call before the reaper can collect
    /// it (under the spawn guard), so its pidfd is certainly its own.
    pub fn started(mut self, leader: i32) -> Arc<Tree> {
        let (kind, leader_fd) = match self.cgroup.take() {
            // The cgroup knows its members: no pidfd of the leader needed.
            Some((slot, generation)) => (Kind::Cgroup { slot, generation }, None),
            None => (
                Kind::Tracked {
                    marker: format!("{MARKER}={}", self.id),
                },
                pidfd::open(leader)
                    .map_err(|e| tracing::warn!(pid = leader, error = %e, "pidfd_open failed"))
                    .ok(),
            ),
        };
        Arc::new(Tree {
            trees: self.trees.clone(),
            leader,
            leader_fd: Mutex::new(leader_fd),
            kind,
            released: AtomicBool::new(false),
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Not started (the spawn failed): the cgroup is empty.
        if let Some((slot, generation)) = self.cgroup.take() {
            self.trees.put_back(slot, generation);
        }
    }
}

enum Kind {
    Cgroup { slot: Arc<Slot>, generation: u64 },
    Tracked { marker: String },
}

/// One process tree.
pub struct Tree {
    trees: Arc<Trees>,
    pub leader: i32,
    /// Dropped on release: a finished command's record must not pin an fd.
    leader_fd: Mutex<Option<OwnedFd>>,
    kind: Kind,
    released: AtomicBool,
}

/// A process seen in a walk: its pid and start time (which tells a reused pid apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    pub pid: i32,
    pub start: u64,
}

impl Tree {
    /// SIGKILL to every process of the tree, the leader's exit notwithstanding.
    pub fn kill(&self) {
        match &self.kind {
            Kind::Cgroup { slot, generation } => {
                // Not ours any more: the tree emptied and its cgroup was
                // handed on; nothing of this tree is left to kill.
                let owner = slot.owner();
                if *owner != *generation {
                    return;
                }
                slot.killed.store(true, Ordering::SeqCst);
                if let Err(e) = slot.kill.write_at(b"1", 0) {
                    tracing::warn!(dir = %slot.dir.display(), error = %e, "cgroup.kill failed");
                }
                drop(owner);
            }
            Kind::Tracked { marker } => self.kill_tracked(marker),
        }
    }

    /// `signal` to every process of the tree (SIGKILL: see [`Tree::kill`]).
    pub fn signal(&self, signal: i32) {
        if signal == nix::sys::signal::Signal::SIGKILL as i32 {
            return self.kill();
        }
        match &self.kind {
            Kind::Cgroup { slot, generation } => {
                // The cgroup cannot change hands while its owner is held.
                let owner = slot.owner();
                if *owner != *generation {
                    return;
                }
                for m in cgroup_members(&slot.dir) {
                    send(m, signal, |pid| in_cgroup(pid, &slot.rel));
                }
                drop(owner);
            }
            Kind::Tracked { marker } => {
                for m in self.walk(marker) {
                    send(m, signal, |pid| {
                        stat(pid).is_some_and(|(s, _)| s == m.start)
                    });
                }
            }
        }
    }

    /// The tree's processes now (zombies aside in a tracked tree).
    pub fn members(&self) -> Vec<Member> {
        match &self.kind {
            Kind::Cgroup { slot, generation } => {
                let owner = slot.owner();
                if *owner != *generation {
                    return Vec::new();
                }
                cgroup_members(&slot.dir)
            }
            Kind::Tracked { marker } => self.walk(marker),
        }
    }

    /// `signal` to one process [`Tree::members`] returned, if it is still
    /// that process (same start time; through a pidfd).
    pub fn signal_member(&self, m: Member, signal: i32) {
        send(m, signal, same_start(m));
    }

    /// Whether any process of the tree is still alive (zombies aside).
    pub fn alive(&self) -> bool {
        match &self.kind {
            Kind::Cgroup { slot, generation } => {
                let owner = slot.owner();
                *owner == *generation && slot.populated()
            }
            Kind::Tracked { marker } => !self.walk(marker).is_empty(),
        }
    }

    /// Whether the leader has exited (or cannot be watched).
    pub fn leader_exited(&self) -> bool {
        self.leader_fd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(pidfd::exited)
    }

    /// The tree ended (its owner is done with it): its cgroup is removed now
    /// or, while background jobs are left, as soon as it is empty.
    pub fn release(&self) {
        if self.released.swap(true, Ordering::SeqCst) {
            return;
        }
        self.leader_fd
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Kind::Cgroup { slot, generation } = &self.kind {
            self.trees.put_back(slot.clone(), *generation);
        }
    }

    /// Tracking: the leader (while alive), execd's orphans that carry the
    /// marker, and all their descendants.
    fn walk(&self, marker: &str) -> Vec<Member> {
        let mut seeds = Vec::new();
        if !self.leader_exited() {
            seeds.push(self.leader);
        }
        for pid in children(self.trees.self_pid) {
            if pid != self.leader
                && !self.trees.reaper.is_registered(pid)
                && has_marker(pid, marker)
            {
                seeds.push(pid);
            }
        }
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        while let Some(pid) = seeds.pop() {
            if pid == self.trees.self_pid || pid <= 1 || !seen.insert(pid) {
                continue;
            }
            if let Some((start, zombie)) = stat(pid) {
                if !zombie {
                    out.push(Member { pid, start });
                }
            }
            seeds.extend(children(pid));
        }
        out
    }

    /// Stops every member (so none forks), walks again until nothing new
    /// turns up, then kills them all.
    fn kill_tracked(&self, marker: &str) {
        let mut hit: HashSet<Member> = HashSet::new();
        for _ in 0..1000 {
            let fresh: Vec<Member> = self
                .walk(marker)
                .into_iter()
                .filter(|m| !hit.contains(m))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for m in fresh {
                send(m, nix::sys::signal::Signal::SIGSTOP as i32, same_start(m));
                hit.insert(m);
            }
        }
        for m in hit {
            send(m, nix::sys::signal::Signal::SIGKILL as i32, same_start(m));
        }
    }
}

/// Whether `pid` is still the process `m` (same start time).
fn same_start(m: Member) -> impl Fn(i32) -> bool {
    move |pid| stat(pid).is_some_and(|(start, _)| start == m.start)
}

/// Sends `signal` to `m` through a pidfd, if the pidfd's process passes
/// `same` (checked after the pidfd was opened, so a reused pid is never hit).
fn send(m: Member, signal: i32, same: impl Fn(i32) -> bool) {
    let Ok(fd) = pidfd::open(m.pid) else { return };
    if same(m.pid) {
        let _ = pidfd::send_signal(&fd, signal);
    }
}

/// The live processes listed in a cgroup's `cgroup.procs`.
fn cgroup_members(dir: &Path) -> Vec<Member> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter_map(|pid| stat(pid).map(|(start, _)| Member { pid, start }))
        .collect()
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Cgroup { slot, generation } => format!("cgroup {} #{generation}", slot.rel),
            Kind::Tracked { marker } => format!("tracked {marker}"),
        };
        f.debug_struct("Tree")
            .field("leader", &self.leader)
            .field("kind", &kind)
            .finish()
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.release();
    }
}

/// Start time (field 22) and whether `pid` is a zombie, from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(u64, bool)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses).
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?;
    let start = f.get(19)?.parse().ok()?;
    Some((start, *state == "Z" || *state == "X"))
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    let mut buf = String::new();
    for t in tasks.flatten() {
        buf.clear();
        if let Ok(mut f) = std::fs::File::open(t.path().join("children")) {
            if f.read_to_string(&mut buf).is_ok() {
                out.extend(buf.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

fn has_marker(pid: i32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == marker.as_bytes()))
}

fn in_cgroup(pid: i32, rel: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .is_ok_and(|s| s.lines().any(|l| l.strip_prefix("0::") == Some(rel)))
}

/// Removes an empty cgroup (EBUSY while it has members). Gone already is fine.
fn remove_cgroup(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// Finds the cgroup2 hierarchy and execd's place in it, and makes the
/// directory command cgroups go into.
fn setup_cgroups() -> io::Result<Base> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let (root, mount) = cgroup2_mount(&mountinfo)
        .ok_or_else(|| io::Error::other("no cgroup2 file system mounted"))?;
    let own = std::fs::read_to_string("/proc/self/cgroup")?
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .ok_or_else(|| io::Error::other("execd is in no cgroup2 cgroup"))?;
    let own = own.trim().to_string();
    let inside = own
        .strip_prefix(root.trim_end_matches('/'))
        .ok_or_else(|| io::Error::other("execd's cgroup is outside the mounted hierarchy"))?;
    let own_dir = mount.join(inside.trim_start_matches('/'));
    // A directory of our own below execd's cgroup. execd stays where it is:
    // the "no internal processes" rule only binds a cgroup that hands
    // controllers to its children, and none are enabled (a memory
    // controller per command would cost every spawn; killing needs none).
    let pid = std::process::id();
    sweep_stale(&own_dir);
    let dir = own_dir.join(format!("execd-{pid}"));
    std::fs::create_dir(&dir)?;
    if !dir.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&dir);
        return Err(io::Error::other(
            "the kernel has no cgroup.kill (Linux < 5.14)",
        ));
    }
    Ok(Base {
        rel: format!("{}/execd-{pid}", own.trim_end_matches('/')),
        dir,
    })
}

/// The root and mount point of the cgroup2 file system, `/sys/fs/cgroup` first.
fn cgroup2_mount(mountinfo: &str) -> Option<(String, PathBuf)> {
    let mut found: Option<(String, PathBuf)> = None;
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split_whitespace().collect();
        let (Some(root), Some(point)) = (f.get(3), f.get(4)) else {
            continue;
        };
        if !f.get(5).is_some_and(|o| o.split(',').any(|o| o == "rw")) {
            continue;
        }
        let m = (root.to_string(), PathBuf::from(point));
        if *point == "/sys/fs/cgroup" {
            return Some(m);
        }
        found.get_or_insert(m);
    }
    found
}

/// Removes `execd-<pid>` directories of execd processes that are gone (a
/// killed daemon cannot remove its own), when they are empty.
fn sweep_stale(root: &Path) {
    let Ok(dir) = std::fs::read_dir(root) else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("execd-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(cmds) = std::fs::read_dir(e.path()) {
            for c in cmds.flatten() {
                if c.file_name().to_string_lossy().starts_with("cmd-") {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_mounts() {
        let hybrid = "31 1 0:27 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(hybrid),
            Some(("/".into(), PathBuf::from("/sys/fs/cgroup/unified")))
        );
        let unified = "41 31 0:38 /ns /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            cgroup2_mount(unified),
            Some(("/ns".into(), PathBuf::from("/sys/fs/cgroup")))
        );
        let readonly = "41 31 0:38 / /sys/fs/cgroup ro - cgroup2 cgroup2 ro\n";
        assert_eq!(cgroup2_mount(readonly), None);
    }

    #[test]
    fn stat_of_self() {
        let (start, zombie) = stat(std::process::id() as i32).unwrap();
        assert!(start > 0);
        assert!(!zombie);
    }
}
