//! Running file operations as another user, one thread at a time.
//!
//! Linux keeps the file-system uid/gid (`setfsuid`/`setfsgid`) and, at the
//! system-call level, the supplementary groups per thread. So an
//! identity-scoped operation runs on one blocking thread that takes on the
//! identity, does the work and gives the identity back before the thread
//! returns to the pool; the rest of the daemon keeps its own. The raw
//! `setgroups` system call is used because glibc's and musl's wrappers apply
//! the change to every thread of the process.
//!
//! Switching the file-system uid away from root clears only the file
//! capabilities (`CAP_DAC_*`, `CAP_FOWNER`, ...) from the thread's effective
//! set. The others would still apply on the user's behalf: `CAP_SYS_PTRACE`
//! alone lets `/proc/<pid>/cwd/...` of a root process reach past a 0700
//! directory. So while acting as a non-root uid the thread's effective
//! capabilities are emptied (`capset` on this thread only; the permitted set
//! is kept, so they can be restored), and restored with the identity.

use super::{FsError, FsResult, Kind};
use crate::process::users::{groups_of, read_db, user_by_uid};

/// The uid and gid an operation runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Where and as whom a file operation runs: the identity of an
/// identity-scoped route, and the mount namespace of an isolated session
/// (paths then resolve in the session's merged view, `/` being its root,
/// exactly as for a process of the session). The default is the daemon's
/// own identity and view.
#[derive(Clone, Debug, Default)]
pub struct Scope {
    pub id: Option<Identity>,
    /// A pidfd of the process whose mount namespace the operation joins.
    pub ns: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl From<Option<Identity>> for Scope {
    fn from(id: Option<Identity>) -> Scope {
        Scope { id, ns: None }
    }
}

/// Runs `f` on a blocking thread, as `scope`'s identity when given, and
/// restores the thread's identity before the thread is reused, whatever `f`
/// returns. With a session's namespace, `f` runs on a thread of its own that
/// joins that mount namespace and ends with the operation (a thread that
/// changed namespaces never serves anything else).
/// The work starts at once, before the returned future is first polled.
pub fn scoped<T, F>(scope: impl Into<Scope>, f: F) -> impl std::future::Future<Output = FsResult<T>>
where
    T: Send + 'static,
    F: FnOnce() -> FsResult<T> + Send + 'static,
{
    let Scope { id, ns } = scope.into();
    let work = move || {
        let _guard = match id {
            Some(id) => Some(Guard::enter(id)?),
            None => None,
        };
        f()
    };
    enum Task<T> {
        Pool(tokio::task::JoinHandle<FsResult<T>>),
        Thread(std::io::Result<tokio::sync::oneshot::Receiver<FsResult<T>>>),
    }
    let task = match ns {
        None => Task::Pool(tokio::task::spawn_blocking(work)),
        Some(ns) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("execd-session-fs".into())
                .stack_size(256 * 1024)
                .spawn(move || {
                    let r = enter_mount_ns(&ns).and_then(|()| work());
                    let _ = tx.send(r);
                });
            Task::Thread(spawned.map(|_| rx))
        }
    };
    async move {
        let r = match task {
            Task::Pool(h) => h
                .await
                .unwrap_or_else(|e| Err(FsError::Internal(format!("file operation failed: {e}")))),
            Task::Thread(Ok(rx)) => rx
                .await
                .unwrap_or_else(|_| Err(FsError::Internal("file operation failed".into()))),
            Task::Thread(Err(e)) => Err(FsError::Internal(format!("cannot start a thread: {e}"))),
        };
        match r {
            // A system call refused: say whose permissions were lacking.
            Err(e @ FsError::Io { .. }) if e.kind() == Kind::Denied => Err(match id {
                Some(id) => {
                    FsError::Denied(format!("{e} (acting as uid {} gid {})", id.uid, id.gid))
                }
                None => e,
            }),
            r => r,
        }
    }
}

/// Gives this thread a file-system context of its own and joins the mount
/// namespace of the process `pidfd` names.
fn enter_mount_ns(pidfd: &std::os::fd::OwnedFd) -> FsResult<()> {
    use nix::sched::{setns, unshare, CloneFlags};
    unshare(CloneFlags::CLONE_FS)
        .and_then(|()| setns(pidfd, CloneFlags::CLONE_NEWNS))
        .map_err(|e| FsError::Internal(format!("cannot enter the isolated session: {e}")))
}

/// While alive, the current thread acts on files as another user.
struct Guard {
    uid: u32,
    gid: u32,
    groups: Option<Vec<u32>>,
    /// The thread's capabilities before, when its effective set was emptied.
    caps: Option<Caps>,
}

use crate::process::sys::Caps;

/// This thread's capabilities.
fn capget_thread() -> std::io::Result<Caps> {
    crate::process::sys::capget_thread().map_err(std::io::Error::from)
}

/// Sets this thread's capabilities (this thread only).
fn capset_thread(data: &Caps) -> std::io::Result<()> {
    crate::process::sys::capset_thread(data).map_err(std::io::Error::from)
}

/// This thread's effective capabilities (for tests and diagnostics).
pub fn effective_caps() -> u64 {
    capget_thread().map_or(0, |d| {
        u64::from(d[0].effective) | u64::from(d[1].effective) << 32
    })
}

/// This thread's file-system uid (glibc's setfsuid is the plain syscall:
/// this thread only); returns the previous one.
fn setfsuid(uid: u32) -> u32 {
    nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid)).as_raw()
}

fn setfsgid(gid: u32) -> u32 {
    nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid)).as_raw()
}

/// This thread's supplementary groups only (the raw syscall: glibc's
/// wrapper, and nix's, would change every thread's).
fn setgroups_thread(groups: &[u32]) -> std::io::Result<()> {
    crate::process::sys::setgroups_this_task(groups)?;
    Ok(())
}

/// This thread's supplementary groups (getgroups(2) reads the caller's).
fn getgroups_thread() -> std::io::Result<Vec<u32>> {
    Ok(nix::unistd::getgroups()?
        .into_iter()
        .map(|g| g.as_raw())
        .collect())
}

impl Guard {
    fn enter(id: Identity) -> FsResult<Guard> {
        let (euid, egid) = (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getegid().as_raw(),
        );
        if euid != 0 {
            if id.uid == euid && id.gid == egid {
                // Already this user: nothing to switch.
                return Ok(Guard {
                    uid: euid,
                    gid: egid,
                    groups: None,
                    caps: None,
                });
            }
            return Err(FsError::Denied(format!(
                "execd runs as uid {euid}, not root, so it cannot act as uid {} gid {}",
                id.uid, id.gid
            )));
        }
        let saved = getgroups_thread()
            .map_err(|e| FsError::Internal(format!("cannot read the thread's groups: {e}")))?;
        let caps = capget_thread().map_err(|e| {
            FsError::Internal(format!("cannot read the thread's capabilities: {e}"))
        })?;
        let user = user_by_uid(&read_db("/etc/passwd"), id.uid);
        let groups = groups_of(&read_db("/etc/group"), user.name.as_deref(), id.gid);
        let old_uid = setfsuid(u32::MAX);
        let old_gid = setfsgid(u32::MAX);
        let mut guard = Guard {
            uid: old_uid,
            gid: old_gid,
            groups: Some(saved),
            caps: None,
        };
        // From here on, dropping `guard` restores whatever was changed.
        setgroups_thread(&groups)
            .map_err(|e| FsError::Internal(format!("cannot set groups for uid {}: {e}", id.uid)))?;
        setfsgid(id.gid);
        setfsuid(id.uid);
        // Each call returns the previous value; an invalid one changes nothing.
        if setfsuid(u32::MAX) != id.uid || setfsgid(u32::MAX) != id.gid {
            return Err(FsError::Internal(format!(
                "cannot switch file-system identity to uid {} gid {}",
                id.uid, id.gid
            )));
        }
        if id.uid != 0 {
            // Acting as an ordinary user: no capability applies on its behalf.
            guard.caps = Some(caps);
            let mut none = caps;
            for d in &mut none {
                d.effective = 0;
            }
            capset_thread(&none).map_err(|e| {
                FsError::Internal(format!("cannot drop capabilities for uid {}: {e}", id.uid))
            })?;
        }
        Ok(guard)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(groups) = &self.groups else {
            return;
        };
        // Capabilities first: restoring the groups needs CAP_SETGID.
        if let Some(caps) = &self.caps {
            if let Err(e) = capset_thread(caps) {
                tracing::error!(error = %e, "cannot restore a thread's capabilities; aborting");
                std::process::abort();
            }
        }
        // The uid first: root's fsuid is what permits the other two.
        setfsuid(self.uid);
        setfsgid(self.gid);
        if let Err(e) = setgroups_thread(groups) {
            tracing::error!(error = %e, "cannot restore a thread's groups; aborting");
            std::process::abort();
        }
        if setfsuid(u32::MAX) != self.uid || setfsgid(u32::MAX) != self.gid {
            tracing::error!("cannot restore a thread's file-system identity; aborting");
            std::process::abort();
        }
    }
}

/// This thread's file-system uid and gid (for tests and diagnostics).
pub fn current() -> Identity {
    Identity {
        uid: setfsuid(u32::MAX),
        gid: setfsgid(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn identity_is_restored_even_on_error() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let before = current();
        let id = Identity {
            uid: 65534,
            gid: 65534,
        };
        let caps = effective_caps();
        assert_ne!(caps, 0);
        let seen = scoped(Some(id), || Ok((current(), effective_caps())))
            .await
            .unwrap();
        assert_eq!(seen, (id, 0), "no capability while acting as uid 65534");
        let r: FsResult<()> = scoped(Some(id), || Err(FsError::Internal("boom".into()))).await;
        assert!(r.is_err());
        // Whatever pool thread runs next, it is ourselves again.
        for _ in 0..8 {
            assert_eq!(
                scoped(Scope::default(), || Ok((current(), effective_caps())))
                    .await
                    .unwrap(),
                (before, caps)
            );
        }
    }
}
