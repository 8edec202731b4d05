//! Building and spawning a process: its own process group, credentials,
//! environment, working directory and stdio. Exit statuses are not collected
//! here but by the reaper, which the spawn registers with.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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
/// A command that joins a cgroup or changes credentials needs steps between
/// fork and exec; it is started by [`vfork`](super::vfork) (posix_spawn's
/// cost). Any other goes through `std::process::Command` (`posix_spawn`).
pub fn spawn(
    reaper: &Reaper,
    trees: &std::sync::Arc<Trees>,
    spec: SpawnSpec,
) -> Result<Spawned, SpawnError> {
    let pending = prepare(trees, &spec)?;
    if pending.forks() || spec.uid.is_some() {
        return spawn_vfork(reaper, &spec, pending);
    }
    let (mut cmd, program_name) = build(&spec, Some(&pending))?;
    cmd.stdin(if spec.stdin_pipe {
        Stdio::piped()
    } else {
        null_stdin().map_or_else(|_| Stdio::null(), Stdio::from)
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let (mut child, pid, exit, tree) = start(reaper, &mut cmd, &program_name, spec.uid, pending)?;

    // Never `wait` on `child`: the reaper owns exit statuses. Dropping it is fine.
    let stdin = child.stdin.take().map(OwnedFd::from);
    let stdout = child.stdout.take().map(OwnedFd::from);
    let stderr = child.stderr.take().map(OwnedFd::from);
    match (stdout, stderr) {
        (Some(stdout), Some(stderr)) => Ok(Spawned {
            pid,
            tree,
            stdin,
            stdout,
            stderr,
            exit,
        }),
        _ => Err(SpawnError::Io {
            program: program_name,
            source: io::Error::other("child pipes missing"),
        }),
    }
}

/// [`spawn`] through [`vfork`]: everything prepared here, the child only
/// makes syscalls, and the pid is registered under the reaper's spawn lock
/// (a child that failed before exec too: the reaper collects it).
fn spawn_vfork(reaper: &Reaper, spec: &SpawnSpec, pending: Pending) -> Result<Spawned, SpawnError> {
    let (program, argv): (OsString, Vec<OsString>) = match &spec.program {
        Program::Shell(line) => (
            spec.shell.clone().into(),
            vec![spec.shell.clone().into(), "-c".into(), line.into()],
        ),
        Program::Argv(argv) => (
            argv.first().cloned().unwrap_or_default().into(),
            argv.iter().map(OsString::from).collect(),
        ),
    };
    let program_name = program.to_string_lossy().into_owned();
    let io_err = |source: io::Error| SpawnError::Io {
        program: program_name.clone(),
        source,
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
    let mut env: BTreeMap<OsString, OsString> = match &spec.env {
        Some(env) => env.iter().cloned().collect(),
        None => std::env::vars_os().collect(),
    };
    if let Some((k, v)) = pending.marker() {
        env.insert(k.into(), v.into());
    }
    // execvp searches the child's PATH (the standard library hands it the
    // child's environment), else execd's, else the C library's default.
    let path = env
        .get(OsStr::new("PATH"))
        .cloned()
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_else(|| "/bin:/usr/bin".into());

    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err(e.into()));
    let (stdin_child, stdin_parent) = if spec.stdin_pipe {
        let (r, w) = pipe()?;
        (r, Some(w))
    } else {
        (null_stdin().map_err(io_err)?, None)
    };
    let (stdout, stdout_child) = pipe()?;
    let (stderr, stderr_child) = pipe()?;

    let mut plan = vfork::Plan::new(&argv, &env, &path).map_err(io_err)?;
    plan.stdio(0, stdin_child.as_fd())
        .stdio(1, stdout_child.as_fd())
        .stdio(2, stderr_child.as_fd());
    if let Some(cwd) = &spec.cwd {
        plan.cwd(cwd).map_err(io_err)?;
    }
    if let Some((dir, procs)) = pending.cgroup() {
        plan.cgroup(dir, procs);
    }
    if let Some(creds) = creds {
        plan.creds(creds);
    }
    let guard = reaper.spawning();
    let pid = match vfork::spawn(&plan) {
        Ok(pid) => pid,
        Err(failed) => {
            if let Some(pid) = failed.pid {
                // It exited before exec, maybe inside its cgroup, which it
                // may not have left yet: the tree's release removes the
                // cgroup now or after the reap (which the reaper does; nobody
                // waits for this exit).
                pending.started(pid).release();
                drop(guard.register(pid));
            }
            return Err(classify(failed.error, &program_name, spec.uid));
        }
    };
    drop(plan);
    let tree = pending.started(pid);
    let exit = guard.register(pid);
    Ok(Spawned {
        pid,
        tree,
        stdin: stdin_parent,
        stdout,
        stderr,
        exit,
    })
}

/// Spawns a process that shares execd's stdin, stdout and stderr (the
/// sandbox's main process in init mode), in its own process group.
pub fn spawn_inherit(
    reaper: &Reaper,
    spec: SpawnSpec,
) -> Result<(i32, oneshot::Receiver<ExitStatus>), SpawnError> {
    let (mut cmd, program_name) = build(&spec, None)?;
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let guard = reaper.spawning();
    let child = cmd
        .spawn()
        .map_err(|e| classify(e, &program_name, spec.uid))?;
    let pid = child.id() as i32;
    let exit = guard.register(pid);
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

/// A started child, its pid, its exit and its tree.
pub(crate) type Started = (
    std::process::Child,
    i32,
    oneshot::Receiver<ExitStatus>,
    std::sync::Arc<Tree>,
);

/// Forks under the reaper's spawn lock and registers the pid (and opens the
/// tree's pidfd of it) before anyone can reap it. `cmd` must have had
/// `pending` applied.
pub(crate) fn start(
    reaper: &Reaper,
    cmd: &mut std::process::Command,
    program_name: &str,
    uid: Option<u32>,
    pending: Pending,
) -> Result<Started, SpawnError> {
    let guard = reaper.spawning();
    let child = cmd.spawn().map_err(|e| classify(e, program_name, uid))?;
    let pid = child.id() as i32;
    let tree = pending.started(pid);
    let exit = guard.register(pid);
    Ok((child, pid, exit, tree))
}

/// A `Command` for `spec` with everything but stdio: program, args, env,
/// cwd, its own process group, and credentials.
fn build(
    spec: &SpawnSpec,
    tree: Option<&Pending>,
) -> Result<(std::process::Command, String), SpawnError> {
    let (program, args): (OsString, Vec<String>) = match &spec.program {
        Program::Shell(line) => (spec.shell.clone().into(), vec!["-c".into(), line.clone()]),
        Program::Argv(argv) => (argv[0].clone().into(), argv[1..].to_vec()),
    };
    let program_name = program.to_string_lossy().into_owned();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args).process_group(0);
    if let Some(env) = &spec.env {
        cmd.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    // First: the child joins its cgroup while still root.
    if let Some(tree) = tree {
        tree.apply(&mut cmd);
    }
    if let Some(uid) = spec.uid {
        let current = nix::unistd::getuid().as_raw();
        if uid != current && current != 0 {
            return Err(SpawnError::UidNotPermitted { uid, current });
        }
        let creds = resolve_creds(uid, spec.gid);
        let groups: Vec<nix::unistd::Gid> = creds
            .groups
            .iter()
            .map(|&g| nix::unistd::Gid::from_raw(g))
            .collect();
        // SAFETY: the closure runs between fork and exec (the forked child
        // has this one thread) and only makes async-signal-safe syscalls on
        // data prepared before the fork; nix's wrappers allocate nothing.
        unsafe {
            cmd.pre_exec(move || {
                use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
                if nix::unistd::getuid().is_root() {
                    setgroups(&groups)?;
                }
                setgid(Gid::from_raw(creds.gid))?;
                setuid(Uid::from_raw(creds.uid))?;
                Ok(())
            });
        }
    }
    Ok((cmd, program_name))
}

fn classify(e: io::Error, program: &str, uid: Option<u32>) -> SpawnError {
    let program = program.to_string();
    match e.raw_os_error() {
        Some(libc::ENOENT) => SpawnError::NotFound { program },
        Some(libc::EACCES) => SpawnError::PermissionDenied { program },
        Some(libc::EPERM) if uid.is_some() => SpawnError::UidNotPermitted {
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
