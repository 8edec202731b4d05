//! Building and spawning a process: its own process group, credentials,
//! environment, working directory and stdio. Exit statuses are not collected
//! here but by the reaper, which the spawn registers with.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::sync::oneshot;

use super::reaper::{ExitStatus, Reaper};
use super::tree::{Pending, Tree, Trees};
use super::users;

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
pub fn spawn(
    reaper: &Reaper,
    trees: &std::sync::Arc<Trees>,
    spec: SpawnSpec,
) -> Result<Spawned, SpawnError> {
    let pending = prepare(trees, &spec)?;
    if pending.forks() {
        check_format(&spec)?;
    }
    let (mut cmd, program_name) = build(&spec, Some(&pending))?;
    cmd.stdin(if spec.stdin_pipe {
        Stdio::piped()
    } else {
        null_stdin()
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
fn null_stdin() -> Stdio {
    if let Ok(f) = std::fs::File::open("/dev/null") {
        return f.into();
    }
    match nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC) {
        Ok((read, write)) => {
            drop(write);
            read.into()
        }
        Err(_) => Stdio::null(),
    }
}

/// A `pre_exec` hook makes the standard library fork and `execvp`, and
/// glibc's `execvp` runs a file it cannot execute (ENOEXEC) with `/bin/sh`,
/// where `posix_spawn` fails. An argv program must fail the same way both
/// ways: a file that is neither ELF nor `#!` is refused here with ENOEXEC.
fn check_format(spec: &SpawnSpec) -> Result<(), SpawnError> {
    use std::io::Read;
    let Program::Argv(argv) = &spec.program else {
        return Ok(());
    };
    let Some(name) = argv.first() else {
        return Ok(());
    };
    let path = if name.contains('/') {
        let p = PathBuf::from(name);
        match &spec.cwd {
            Some(cwd) if p.is_relative() => cwd.join(p),
            _ => p,
        }
    } else {
        let path = spec
            .env
            .as_ref()
            .and_then(|e| e.iter().find(|(k, _)| k == "PATH").map(|(_, v)| v.clone()))
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        match std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| is_executable(p))
        {
            Some(p) => p,
            None => return Ok(()),
        }
    };
    let mut head = [0u8; 4];
    let n = match std::fs::File::open(&path).and_then(|mut f| f.read(&mut head)) {
        Ok(n) => n,
        // Not readable (or not there): the exec reports it.
        Err(_) => return Ok(()),
    };
    if !is_executable(&path) || head[..n].starts_with(b"\x7fELF") || head[..n].starts_with(b"#!") {
        return Ok(());
    }
    Err(SpawnError::Io {
        program: name.clone(),
        source: io::Error::from_raw_os_error(libc::ENOEXEC),
    })
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
        // SAFETY: getuid has no preconditions.
        let current = unsafe { libc::getuid() };
        if uid != current && current != 0 {
            return Err(SpawnError::UidNotPermitted { uid, current });
        }
        let creds = resolve_creds(uid, spec.gid);
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe syscalls on data prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::getuid() == 0
                    && libc::setgroups(creds.groups.len(), creds.groups.as_ptr()) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if libc::setgid(creds.gid) != 0 || libc::setuid(creds.uid) != 0 {
                    return Err(io::Error::last_os_error());
                }
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
            // SAFETY: getuid has no preconditions.
            current: unsafe { libc::getuid() },
        },
        _ => SpawnError::Io { program, source: e },
    }
}

/// Sends `signal` to every process in group `pgid`. Errors (the group is gone) are ignored.
pub fn signal_group(pgid: i32, signal: i32) -> bool {
    // SAFETY: kill(2) with a negative pid addresses the process group.
    unsafe { libc::kill(-pgid, signal) == 0 }
}
