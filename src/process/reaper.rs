//! The one wait path: every exit status in the daemon is collected here.
//!
//! A dedicated thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`, which the
//! kernel wakes on the same event that raises SIGCHLD, without signal-handler
//! plumbing or lost-signal coalescing. It then reaps every zombie with
//! `wait4(-1, WNOHANG)`, which also yields rusage, and hands each status to
//! whoever registered that pid. Orphaned grandchildren re-parented to execd
//! (it is a child subreaper, or PID 1 in init mode) are reaped and discarded.
//!
//! Spawning holds a read lock from fork until the pid is registered; reaping
//! holds the write lock. So an exit is never collected before its owner is
//! known, and the standard library's own wait on a failed `exec` never races
//! the reaper.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use tokio::sync::oneshot;

/// How a process ended, with what it cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code when it exited normally.
    pub code: Option<i32>,
    /// Signal number when it was killed by one.
    pub signal: Option<i32>,
    pub resources: Resources,
}

/// rusage of the process (and its waited-for descendants), from `wait4`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub user_ms: u64,
    pub system_ms: u64,
    /// The command's peak resident set, where it is known to be its own
    /// (see [`own_peak`]); `None` otherwise.
    pub max_rss_kib: Option<u64>,
}

/// The peak resident set `wait4` reported for a child, if it is the
/// child's own.
///
/// A child made with `CLONE_VM` (posix_spawn, the vfork spawn) or `fork`
/// starts in execd's memory; at `execve` the kernel records the peak of
/// the memory it leaves (execd's) in the child's own peak. So `ru_maxrss`
/// is `max(execd's peak at the exec, the command's own peak)`. When it
/// exceeds execd's peak now (`getrusage(RUSAGE_SELF)`, which is at least
/// execd's peak at any earlier exec), it is the command's own; otherwise the
/// true figure is unknown (the command stayed below execd's peak), and
/// `None` says so rather than a number that is execd's.
pub fn own_peak(child_kib: i64) -> Option<u64> {
    let child = u64::try_from(child_kib).ok()?;
    let own = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .ok()
        .and_then(|u| u64::try_from(u.max_rss()).ok())?;
    (child > own).then_some(child)
}

#[derive(Default)]
struct Waiters {
    by_pid: HashMap<i32, oneshot::Sender<ExitStatus>>,
    spawned: u64,
}

/// The process-wide reaper. Create one with [`Reaper::start`].
pub struct Reaper {
    reap_lock: RwLock<()>,
    waiters: Mutex<Waiters>,
    wake: Condvar,
    /// Notified (with `waiters`) after every batch of reaped processes, for
    /// the synchronous [`Reaper::wait_gone`].
    gone: Condvar,
    /// Notified after every batch of reaped processes, orphans included.
    reaped: tokio::sync::Notify,
}

/// Held while spawning; pass it to [`Reaper::register`].
pub struct SpawnGuard<'a> {
    reaper: &'a Reaper,
    _read: RwLockReadGuard<'a, ()>,
}

impl SpawnGuard<'_> {
    /// Registers `pid` so its exit is delivered to the returned receiver.
    pub fn register(self, pid: i32) -> oneshot::Receiver<ExitStatus> {
        let (tx, rx) = oneshot::channel();
        let mut w = self.reaper.lock_waiters();
        w.by_pid.insert(pid, tx);
        w.spawned += 1;
        drop(w);
        self.reaper.wake.notify_one();
        rx
    }
}

impl Reaper {
    /// Starts the reaper thread and makes execd a child subreaper.
    pub fn start() -> Arc<Reaper> {
        set_child_subreaper();
        let reaper = Arc::new(Reaper {
            reap_lock: RwLock::new(()),
            waiters: Mutex::new(Waiters::default()),
            wake: Condvar::new(),
            gone: Condvar::new(),
            reaped: tokio::sync::Notify::new(),
        });
        let r = reaper.clone();
        let spawned = std::thread::Builder::new()
            .name("execd-reaper".into())
            .stack_size(64 * 1024)
            .spawn(move || r.run());
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the reaper thread");
        }
        reaper
    }

    fn lock_waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the spawn lock. Fork while holding it, then register the pid.
    pub fn spawning(&self) -> SpawnGuard<'_> {
        SpawnGuard {
            reaper: self,
            _read: self.reap_lock.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Completes after the next batch of reaped processes. Create it before
    /// checking a condition, then await it, so no reap is missed.
    pub fn reaped(&self) -> tokio::sync::futures::Notified<'_> {
        self.reaped.notified()
    }

    /// Whether `pid` is a spawned process whose exit is still awaited.
    pub fn is_registered(&self, pid: i32) -> bool {
        self.lock_waiters().by_pid.contains_key(&pid)
    }

    /// Blocks the calling thread until the registered `pid` has been reaped,
    /// for at most `limit`; whether it was. For a child known to be exiting
    /// already (a spawn that failed before `exec`), so that the caller's
    /// answer comes after the reap, not before; the bound keeps a child that
    /// cannot finish its exit (closing an fd on a file system that does not
    /// answer) from holding the thread.
    pub fn wait_gone(&self, pid: i32, limit: Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        let mut w = self.lock_waiters();
        while w.by_pid.contains_key(&pid) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            w = match self.gone.wait_timeout(w, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Number of pids waiting for their exit.
    pub fn pending(&self) -> usize {
        self.lock_waiters().by_pid.len()
    }

    fn run(&self) {
        let mut seen_spawns = 0u64;
        loop {
            use nix::sys::wait::{waitid, Id, WaitPidFlag};
            if let Err(e) = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                match e {
                    nix::errno::Errno::EINTR => continue,
                    nix::errno::Errno::ECHILD => {
                        // No children at all: sleep until something is spawned.
                        let mut w = self.lock_waiters();
                        while w.spawned == seen_spawns {
                            w = match self.wake.wait_timeout(w, Duration::from_secs(60)) {
                                Ok((g, _)) => g,
                                Err(p) => p.into_inner().0,
                            };
                        }
                        seen_spawns = w.spawned;
                        continue;
                    }
                    _ => {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                }
            }
            let _excl = self.reap_lock.write().unwrap_or_else(|p| p.into_inner());
            while let Some(r) = super::sys::wait4_any_nohang() {
                let pid = r.pid;
                let exit = ExitStatus {
                    code: r.code(),
                    signal: r.signal(),
                    resources: Resources {
                        user_ms: r.user.as_millis() as u64,
                        system_ms: r.system.as_millis() as u64,
                        max_rss_kib: own_peak(r.max_rss_kib),
                    },
                };
                let tx = self.lock_waiters().by_pid.remove(&pid);
                match tx {
                    Some(tx) => {
                        let _ = tx.send(exit);
                    }
                    None => tracing::debug!(pid, "reaped an orphaned descendant"),
                }
            }
            self.reaped.notify_waiters();
            self.gone.notify_all();
        }
    }
}

fn set_child_subreaper() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans re-parent to PID 1");
    }
}
