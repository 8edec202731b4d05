//! Building and spawning a process: its own process group, credentials,
//! environment, working directory and stdio. Exit statuses are not collected
//! here but by the reaper, which the spawn registers with.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::reaper::{ExitStatus, Reaper};
use super::tree::{Pending, Tree, Trees};
use super::{users, vfork};

/// What to run.
#[derive(Debug, Clone)]
pub enum Program {
    /// A shell command line, run as `<shell> -c <line>`.
    Shell(String),
    /// An argument vector, run directly without a shell.
    Argv(Vec<String>),
}

/// Everything needed to start a process.
#[derive(Debug)]
pub struct SpawnSpec {
    pub program: Program,
    /// The shell for [`Program::Shell`].
    pub shell: PathBuf,
    pub cwd: Option<PathBuf>,
    /// The complete environment of the child; `None` passes on execd's own.
    pub env: Option<Vec<(OsString, OsString)>>,
    /// Run as this uid, with this gid (default: the user's primary group).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Keep stdin open as a pipe instead of `/dev/null`.
    pub stdin_pipe: bool,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// Everything the process starts, to end it all at once.
    pub tree: std::sync::Arc<Tree>,
    pub stdin: Option<OwnedFd>,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub exit: oneshot::Receiver<ExitStatus>,
}

/// Why a process could not be started, classified so callers can act on it.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("{program}: command not found")]
    NotFound { program: String },
    #[error("{program}: permission denied")]
    PermissionDenied { program: String },
    #[error("switching to uid {uid} is not permitted: execd runs as uid {current}")]
    UidNotPermitted { uid: u32, current: u32 },
    #[error("cannot start {program}: {source}")]
    Io { program: String, source: io::Error },
}

impl SpawnError {
    /// The exit code a shell would report for this failure (127 not found, 126 otherwise).
    pub fn shell_code(&self) -> i32 {
        match self {
            SpawnError::NotFound { .. } => 127,
            _ => 126,
        }
    }
}

/// Finds an executable named `name` on `PATH` (or the usual places).
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The shell commands run under: `bash` if present, else `sh`.
pub fn default_shell() -> PathBuf {
    find_in_path("bash")
        .or_else(|| find_in_path("sh"))
        .unwrap_or_else(|| PathBuf::from("/bin/sh"))
}

/// Credentials resolved before forking (the child may only make syscalls).
struct Creds {
    uid: u32,
    gid: u32,
    groups: Vec<u32>,
}

/// The user's passwd entry, for HOME/USER of a command run as `uid`.
pub fn lookup_user(uid: u32) -> users::UserInfo {
    users::user_by_uid(&users::read_db("/etc/passwd"), uid)
}

fn resolve_creds(uid: u32, gid: Option<u32>) -> Creds {
    let user = lookup_user(uid);
    let gid = gid.unwrap_or(user.gid);
    let groups = if gid == user.gid {
        users::groups_of(&users::read_db("/etc/group"), user.name.as_deref(), gid)
    } else {
        vec![gid]
    };
    Creds { uid, gid, groups }
}

/// Spawns the process in its own process group and registers it with the reaper.
///
/// Started by [`vfork`](super::vfork) (see [`Launch::way_for`]): a command
/// that joins a cgroup or changes credentials needs steps between fork and
/// exec that `posix_spawn` cannot make, and one that does not costs less
/// CPU that way too.
pub fn spawn(
    reaper: &Reaper,
    trees: &std::sync::Arc<Trees>,
    spec: SpawnSpec,
) -> Result<Spawned, SpawnError> {
    let pending = prepare(trees, &spec)?;
    let mut launch = Launch::new(&spec)?;
    let program = launch.program_name();
    let io_err = |source: io::Error| SpawnError::Io {
        program: program.clone(),
        source,
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err(e.into()));
    let (stdin_child, stdin_parent) = if spec.stdin_pipe {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (null_stdin().map_err(io_err)?, None)
    };
    let (stdout, stdout_child) = pipe()?;
    let (stderr, stderr_child) = pipe()?;
    launch.stdio = [
        Some(stdin_child.as_fd()),
        Some(stdout_child.as_fd()),
        Some(stderr_child.as_fd()),
    ];
    let (pid, exit, tree) = launch.start(reaper, Some(pending))?;
    Ok(Spawned {
        pid,
        tree: tree.ok_or_else(|| io_err(io::Error::other("no tree")))?,
        stdin: stdin_parent,
        stdout,
        stderr,
        exit,
    })
}

/// How a [`Launch`] was started (for tests and logs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Way {
    /// nix's `posix_spawn`.
    PosixSpawn,
    /// [`vfork`](super::vfork): cgroup, credentials or a terminal session.
    Vfork,
}

/// A process to start, resolved: program and arguments, its whole
/// environment, where to search the program, working directory, stdio
/// and what it must be between fork and exec.
pub(crate) struct Launch<'fd> {
    /// `argv[0]` is the program (searched on `path` unless it has a `/`).
    pub argv: Vec<OsString>,
    /// The complete environment (sorted, later keys won).
    pub env: BTreeMap<OsString, OsString>,
    pub cwd: Option<PathBuf>,
    /// Sources of fds 0, 1, 2 (`None`: execd's own).
    pub stdio: [Option<BorrowedFd<'fd>>; 3],
    /// The uid asked for (errors name it).
    pub uid: Option<u32>,
    pub creds: Option<vfork::Creds>,
    /// A session leader on the terminal that is its stdin, not a group leader.
    pub terminal: bool,
}

impl<'fd> Launch<'fd> {
    /// The launch of `spec` (credentials resolved, stdio still execd's).
    pub fn new(spec: &SpawnSpec) -> Result<Launch<'fd>, SpawnError> {
        let argv: Vec<OsString> = match &spec.program {
            Program::Shell(line) => {
                vec![spec.shell.clone().into(), "-c".into(), line.into()]
            }
            Program::Argv(argv) => argv.iter().map(OsString::from).collect(),
        };
        let creds = match spec.uid {
            Some(uid) => {
                let current = nix::unistd::getuid().as_raw();
                if uid != current && current != 0 {
                    return Err(SpawnError::UidNotPermitted { uid, current });
                }
                let c = resolve_creds(uid, spec.gid);
                Some(vfork::Creds {
                    uid: c.uid,
                    gid: c.gid,
                    groups: c.groups,
                    set_groups: current == 0,
                })
            }
            None => None,
        };
        // The environment as `Command` would build it: later keys win, sorted.
        let env = match &spec.env {
            Some(env) => env.iter().cloned().collect(),
            None => std::env::vars_os().collect(),
        };
        Ok(Launch {
            argv,
            env,
            cwd: spec.cwd.clone(),
            stdio: [None, None, None],
            uid: spec.uid,
            creds,
            terminal: false,
        })
    }

    pub fn program_name(&self) -> String {
        self.argv
            .first()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// The way [`Launch::start`] takes with `pending`.
    ///
    /// `posix_spawn` cannot join a cgroup, switch credentials or start a
    /// terminal session: those take the vfork spawn. So does every process
    /// with a tree (commands, PTY shells, terminals: the per-request path)
    /// even without them, as it costs the spawning thread less CPU: glibc's
    /// `posix_spawn` maps and unmaps a child stack per call, the vfork spawn
    /// reuses one per thread (about 60 against 78 µs per `/bin/true`,
    /// `vfork::tests::spawn_cost`, alternating batches of 2,000). What is
    /// left to `posix_spawn` is a process with no tree and no credentials:
    /// init mode's main process.
    pub fn way_for(&self, pending: Option<&Pending>) -> Way {
        if self.creds.is_some() || self.terminal || pending.is_some() {
            Way::Vfork
        } else {
            Way::PosixSpawn
        }
    }

    /// Starts the process under the reaper's spawn lock and registers it
    /// (with its tree, if `pending`) before anyone can reap it.
    pub fn start(
        mut self,
        reaper: &Reaper,
        pending: Option<Pending>,
    ) -> Result<Launched, SpawnError> {
        let program_name = self.program_name();
        let io_err = |source: io::Error| SpawnError::Io {
            program: program_name.clone(),
            source,
        };
        if let Some((k, v)) = pending.as_ref().and_then(|p| p.marker()) {
            self.env.insert(k.into(), v.into());
        }
        // The program is searched on the child's PATH, else execd's, else
        // the C library's default.
        let path = self
            .env
            .get(OsStr::new("PATH"))
            .cloned()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| "/bin:/usr/bin".into());
        let way = self.way_for(pending.as_ref());
        let mut plan = vfork::Plan::new(&self.argv, &self.env, &path).map_err(io_err)?;
        for (target, fd) in self.stdio.iter().enumerate() {
            if let Some(fd) = fd {
                plan.stdio(target, *fd);
            }
        }
        if let Some(cwd) = &self.cwd {
            plan.cwd(cwd).map_err(io_err)?;
        }
        if let Some((dir, procs)) = pending.as_ref().and_then(|p| p.cgroup()) {
            plan.cgroup(dir, procs);
        }
        if let Some(creds) = self.creds.take() {
            plan.creds(creds);
        }
        if self.terminal {
            plan.terminal_session();
        }
        let guard = reaper.spawning();
        let spawned = match way {
            Way::Vfork => vfork::spawn(&plan),
            Way::PosixSpawn => vfork::posix_spawn(&plan),
        };
        let pid = match spawned {
            Ok(pid) => pid,
            Err(failed) => {
                if let Some(pid) = failed.pid {
                    // It exited before exec, maybe inside its cgroup, which it
                    // may not have left yet: the tree's release removes the
                    // cgroup now or after the reap.
                    let tree = pending.map(|p| p.started(pid));
                    drop(guard.register(pid));
                    // The reaper collects it; the caller answers only after
                    // that, so a failed start leaves no child behind, not even
                    // a zombie, by the time anyone hears of the failure (the
                    // vfork parent resumes as the child exits, before it is a
                    // zombie; on a loaded machine the reaper's turn came after
                    // the answer). Bounded: a child stuck in its exit is left
                    // to the reaper.
                    if !reaper.wait_gone(pid, FAILED_CHILD_WAIT) {
                        tracing::warn!(pid, program = %program_name, "a child that failed to exec is not reaped yet; answering anyway");
                    }
                    if let Some(tree) = tree {
                        tree.release();
                    }
                }
                return Err(classify(failed.error, &program_name, self.uid));
            }
        };
        drop(plan);
        let tree = pending.map(|p| p.started(pid));
        let exit = guard.register(pid);
        Ok((pid, exit, tree))
    }
}

/// How long a spawn that failed in its child waits for the child's reap.
const FAILED_CHILD_WAIT: Duration = Duration::from_secs(2);

/// A started process: its pid, its exit, and its tree if it was given one.
pub(crate) type Launched = (i32, oneshot::Receiver<ExitStatus>, Option<Arc<Tree>>);

/// Spawns a process that shares execd's stdin, stdout and stderr (the
/// sandbox's main process in init mode), in its own process group.
pub fn spawn_inherit(
    reaper: &Reaper,
    spec: SpawnSpec,
) -> Result<(i32, oneshot::Receiver<ExitStatus>), SpawnError> {
    let (pid, exit, _) = Launch::new(&spec)?.start(reaper, None)?;
    Ok((pid, exit))
}

/// `/dev/null` for reading; where there is no `/dev` (an empty root
/// filesystem), a pipe whose write end is already closed reads the same: EOF.
fn null_stdin() -> io::Result<OwnedFd> {
    if let Ok(f) = std::fs::File::open("/dev/null") {
        return Ok(f.into());
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    drop(write);
    Ok(read)
}

/// The tree of a spawn of `spec` (its cgroup made).
fn prepare(trees: &std::sync::Arc<Trees>, spec: &SpawnSpec) -> Result<Pending, SpawnError> {
    trees.prepare().map_err(|source| SpawnError::Io {
        program: match &spec.program {
            Program::Shell(_) => spec.shell.to_string_lossy().into_owned(),
            Program::Argv(a) => a.first().cloned().unwrap_or_default(),
        },
        source,
    })
}

pub(crate) fn classify(e: io::Error, program: &str, uid: Option<u32>) -> SpawnError {
    const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
    const EACCES: i32 = nix::errno::Errno::EACCES as i32;
    const EPERM: i32 = nix::errno::Errno::EPERM as i32;
    let program = program.to_string();
    match e.raw_os_error() {
        Some(ENOENT) => SpawnError::NotFound { program },
        Some(EACCES) => SpawnError::PermissionDenied { program },
        Some(EPERM) if uid.is_some() => SpawnError::UidNotPermitted {
            uid: uid.unwrap_or_default(),
            current: nix::unistd::getuid().as_raw(),
        },
        _ => SpawnError::Io { program, source: e },
    }
}

/// Sends `signal` to every process in group `pgid`. Errors (the group is gone) are ignored.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    nix::sys::signal::Signal::try_from(signal)
        .is_ok_and(|sig| nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), sig).is_ok())
}
