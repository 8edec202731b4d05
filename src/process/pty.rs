//! PTY sessions: a shell on a pseudo-terminal (or on three pipes), kept
//! across client connections, with a replay ring of its output.
//!
//! A session is created empty; the first client that attaches with input
//! starts its shell, and so does the next one after that shell has exited.
//! One reader task per process appends output to the session's [`Ring`] and
//! publishes the new end offset on a `watch` channel. Clients keep their own
//! cursor and read from the ring at their own pace, so a slow client never
//! blocks the reader: it falls behind, and if the ring has moved past it, it
//! learns the offset it resumes at.
//!
//! Exit statuses come from the reaper like every other process. Signals go
//! to the terminal's foreground process group, so SIGINT stops the running
//! job and not the shell.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::reaper::{ExitStatus, Reaper};
use super::spawn::{self, SpawnError};
use super::tree::{Pending, Tree, Trees};

/// Bytes of output a session keeps for replay (at least; up to one chunk more).
pub const REPLAY_BYTES: usize = 1 << 20;
/// Largest chunk read from the terminal or a pipe at once.
pub const CHUNK: usize = 32 * 1024;
/// Most sessions that may exist at once.
pub const MAX_SESSIONS: usize = 256;
/// Longest a stdin write may wait for the terminal to take it.
const STDIN_DEADLINE: Duration = Duration::from_secs(10);

/// Which stream a chunk of output came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The terminal, or stdout in pipe mode.
    Stdout,
    /// stderr in pipe mode.
    Stderr,
}

/// How the process is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Pty,
    Pipe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Pty => "pty",
            Mode::Pipe => "pipe",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PtyError {
    #[error("pty session {0} not found")]
    NotFound(String),
    #[error("another client is already connected to pty session {0}")]
    AlreadyConnected(String),
    #[error("too many pty sessions (at most {MAX_SESSIONS})")]
    TooMany,
    #[error("cannot use working directory {path}: {source}")]
    Cwd { path: String, source: io::Error },
    #[error("cannot open a pseudo-terminal: {0}")]
    Open(io::Error),
    #[error(transparent)]
    Start(#[from] SpawnError),
    #[error("no process is running in pty session {0}")]
    NotRunning(String),
    #[error("writing to the terminal failed: {0}")]
    Stdin(io::Error),
    #[error("the terminal did not take input within {STDIN_DEADLINE:?}")]
    StdinTimeout,
    #[error("invalid size {cols}x{rows}: both must be between 1 and 65535")]
    BadSize { cols: u32, rows: u32 },
    #[error("unsupported signal {0:?}")]
    BadSignal(String),
}

/// A terminal size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cols: u16,
    pub rows: u16,
}

impl Size {
    pub const DEFAULT: Size = Size { cols: 80, rows: 24 };

    pub fn new(cols: u32, rows: u32) -> Result<Size, PtyError> {
        match (u16::try_from(cols), u16::try_from(rows)) {
            (Ok(c), Ok(r)) if c > 0 && r > 0 => Ok(Size { cols: c, rows: r }),
            _ => Err(PtyError::BadSize { cols, rows }),
        }
    }
}

/// What a new session runs.
#[derive(Clone, Debug, Default)]
pub struct PtySpec {
    pub cwd: Option<PathBuf>,
    /// A command line for `bash -c`; without it an interactive shell.
    pub command: Option<String>,
    pub size: Option<Size>,
}

/// One chunk of output at an absolute offset.
#[derive(Clone, Debug)]
pub struct Chunk {
    pub offset: u64,
    pub source: Source,
    pub data: Bytes,
}

/// The replay ring: the newest output, at least [`REPLAY_BYTES`] of it.
#[derive(Default)]
struct Ring {
    chunks: VecDeque<Chunk>,
    /// Bytes held.
    held: usize,
    /// Offset one past the newest byte: every byte ever produced.
    end: u64,
}

impl Ring {
    fn push(&mut self, source: Source, data: Bytes) {
        let len = data.len();
        self.chunks.push_back(Chunk {
            offset: self.end,
            source,
            data,
        });
        self.end += len as u64;
        self.held += len;
        // Drop whole chunks from the front while the rest still holds the cap.
        while let Some(front) = self.chunks.front() {
            if self.held - front.data.len() < REPLAY_BYTES {
                break;
            }
            self.held -= front.data.len();
            self.chunks.pop_front();
        }
    }

    fn start(&self) -> u64 {
        self.chunks.front().map_or(self.end, |c| c.offset)
    }

    /// Chunks from `from` (clamped to what is held), at most about `max` bytes.
    fn read(&self, from: u64, max: usize) -> (u64, Vec<Chunk>) {
        let from = from.clamp(self.start(), self.end);
        let mut out = Vec::new();
        let mut got = 0usize;
        // Chunks are sorted by offset: find the first that ends after `from`.
        let first = self
            .chunks
            .partition_point(|c| c.offset + c.data.len() as u64 <= from);
        for c in self.chunks.iter().skip(first) {
            if got >= max {
                break;
            }
            let skip = from.saturating_sub(c.offset) as usize;
            let data = c.data.slice(skip..);
            got += data.len();
            out.push(Chunk {
                offset: c.offset + skip as u64,
                source: c.source,
                data,
            });
        }
        (from, out)
    }
}

/// How the last process of a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub generation: u64,
    /// Exit code, or -1 when killed by a signal.
    pub code: i32,
    /// Output offset at which its output ends.
    pub end: u64,
}

/// What clients watch: changes whenever output arrives or a process starts or ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// Output offset one past the newest byte.
    pub end: u64,
    /// Incremented for every process started.
    pub generation: u64,
    pub running: bool,
    pub mode: Option<Mode>,
    pub last_exit: Option<Exit>,
    /// The session was deleted.
    pub closed: bool,
}

/// A running process of a session.
struct Running {
    generation: u64,
    pid: i32,
    mode: Mode,
    /// The terminal master (PTY mode).
    master: Option<Arc<AsyncFd<OwnedFd>>>,
    /// The stdin pipe (pipe mode).
    stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>,
    /// Serialises writes to the master.
    write_lock: tokio::sync::Mutex<()>,
}

struct Holder {
    id: u64,
    evicted: CancellationToken,
}

/// One PTY session.
pub struct PtySession {
    pub id: String,
    spec: PtySpec,
    size: Mutex<Size>,
    ring: Mutex<Ring>,
    status: watch::Sender<Status>,
    running: Mutex<Option<Arc<Running>>>,
    /// The trees of every process the session started whose members may
    /// still live (background jobs outlive their shell): deleting the
    /// session ends them all.
    trees: Mutex<Vec<Arc<Tree>>>,
    holder: Mutex<Option<Holder>>,
    closed: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The right to send input to a session, held by one client at a time.
/// Dropping it frees the slot (unless another client took it over).
pub struct InputClaim {
    session: Arc<PtySession>,
    id: u64,
    evicted: CancellationToken,
}

impl InputClaim {
    /// Cancelled when another client takes the session over.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }
}

impl Drop for InputClaim {
    fn drop(&mut self) {
        let mut h = lock(&self.session.holder);
        if h.as_ref().is_some_and(|h| h.id == self.id) {
            *h = None;
        }
    }
}

static CLAIMS: AtomicU64 = AtomicU64::new(1);

impl PtySession {
    /// Current status.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// A receiver that wakes on every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Cancelled when the session is deleted.
    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }

    /// Output from `from` (clamped to the oldest byte still held), at most
    /// about `max` bytes. Returns the offset the chunks actually start at.
    pub fn read(&self, from: u64, max: usize) -> (u64, Vec<Chunk>) {
        lock(&self.ring).read(from, max)
    }

    /// Takes the input slot. With `takeover`, evicts the current holder;
    /// without, fails if there is one.
    pub fn claim_input(self: &Arc<Self>, takeover: bool) -> Result<InputClaim, PtyError> {
        let mut h = lock(&self.holder);
        if let Some(old) = h.as_ref() {
            if !takeover {
                return Err(PtyError::AlreadyConnected(self.id.clone()));
            }
            old.evicted.cancel();
        }
        let id = CLAIMS.fetch_add(1, Ordering::Relaxed);
        let evicted = CancellationToken::new();
        *h = Some(Holder {
            id,
            evicted: evicted.clone(),
        });
        Ok(InputClaim {
            session: self.clone(),
            id,
            evicted,
        })
    }

    fn current(&self) -> Option<Arc<Running>> {
        lock(&self.running).clone()
    }

    /// Writes input to the running process.
    pub async fn write_stdin(&self, data: &[u8]) -> Result<(), PtyError> {
        let Some(run) = self.current() else {
            return Err(PtyError::NotRunning(self.id.clone()));
        };
        let write = async {
            if let Some(master) = &run.master {
                let _order = run.write_lock.lock().await;
                write_all_fd(master, data).await
            } else {
                let mut stdin = run.stdin.lock().await;
                match stdin.as_mut() {
                    Some(tx) => tx.write_all(data).await,
                    None => Err(io::Error::from(io::ErrorKind::BrokenPipe)),
                }
            }
        };
        match tokio::time::timeout(STDIN_DEADLINE, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PtyError::Stdin(e)),
            Err(_) => Err(PtyError::StdinTimeout),
        }
    }

    /// Sets the terminal size; remembered for the next shell too. A no-op
    /// for the process in pipe mode.
    pub fn resize(&self, size: Size) {
        *lock(&self.size) = size;
        if let Some(master) = self.current().and_then(|r| r.master.clone()) {
            set_size(master.get_ref().as_fd(), size);
        }
    }

    /// Sends `signal` to the terminal's foreground process group (PTY mode)
    /// or the process group of the shell (pipe mode).
    pub fn signal(&self, signal: i32) -> Result<(), PtyError> {
        let Some(run) = self.current() else {
            return Err(PtyError::NotRunning(self.id.clone()));
        };
        let target = run
            .master
            .as_ref()
            .and_then(|m| nix::unistd::tcgetpgrp(m.get_ref()).ok())
            .map(nix::unistd::Pid::as_raw)
            .filter(|&pg| pg > 0)
            .unwrap_or(run.pid);
        spawn::signal_group(target, signal);
        Ok(())
    }

    /// Kills every process the session started, by their trees: the shell,
    /// its jobs, and whatever left its process group or session.
    fn kill_all(&self) {
        for tree in lock(&self.trees).drain(..) {
            tree.kill();
            tree.release();
        }
    }
}

/// Signal number for a name as clients send it (`SIGINT` or `INT`).
pub fn signal_by_name(name: &str) -> Result<i32, PtyError> {
    let n = name.trim().to_ascii_uppercase();
    let n = n.strip_prefix("SIG").unwrap_or(&n);
    use nix::sys::signal::Signal::*;
    let sig = match n {
        "INT" => SIGINT,
        "TERM" => SIGTERM,
        "KILL" => SIGKILL,
        "QUIT" => SIGQUIT,
        "HUP" => SIGHUP,
        "USR1" => SIGUSR1,
        "USR2" => SIGUSR2,
        "TSTP" => SIGTSTP,
        "CONT" => SIGCONT,
        "WINCH" => SIGWINCH,
        _ => return Err(PtyError::BadSignal(name.to_string())),
    };
    Ok(sig as i32)
}

/// All PTY sessions of the daemon.
pub struct PtyManager {
    reaper: Arc<Reaper>,
    trees: Arc<Trees>,
    shell: PathBuf,
    drain: Duration,
    sessions: Mutex<HashMap<String, Arc<PtySession>>>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

impl PtyManager {
    pub fn new(
        reaper: Arc<Reaper>,
        trees: Arc<Trees>,
        shell: PathBuf,
        drain: Duration,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> PtyManager {
        PtyManager {
            reaper,
            trees,
            shell,
            drain,
            sessions: Mutex::new(HashMap::new()),
            tasks,
            shutdown,
        }
    }

    /// Creates a session (its working directory too); the shell starts on
    /// the first attach.
    pub fn create(&self, spec: PtySpec) -> Result<Arc<PtySession>, PtyError> {
        if let Some(cwd) = &spec.cwd {
            std::fs::create_dir_all(cwd).map_err(|source| PtyError::Cwd {
                path: cwd.display().to_string(),
                source,
            })?;
        }
        let mut sessions = lock(&self.sessions);
        if sessions.len() >= MAX_SESSIONS {
            return Err(PtyError::TooMany);
        }
        let id = super::new_id();
        let session = Arc::new(PtySession {
            id: id.clone(),
            size: Mutex::new(spec.size.unwrap_or(Size::DEFAULT)),
            spec,
            ring: Mutex::new(Ring::default()),
            status: watch::Sender::new(Status::default()),
            running: Mutex::new(None),
            trees: Mutex::new(Vec::new()),
            holder: Mutex::new(None),
            closed: self.shutdown.child_token(),
        });
        sessions.insert(id, session.clone());
        Ok(session)
    }

    /// Every session, by id.
    pub fn list(&self) -> Vec<Arc<PtySession>> {
        let mut v: Vec<_> = lock(&self.sessions).values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    pub fn get(&self, id: &str) -> Result<Arc<PtySession>, PtyError> {
        lock(&self.sessions)
            .get(id)
            .cloned()
            .ok_or_else(|| PtyError::NotFound(id.to_string()))
    }

    /// Removes a session and kills every process it started.
    pub fn delete(&self, id: &str) -> Result<(), PtyError> {
        let session = lock(&self.sessions)
            .remove(id)
            .ok_or_else(|| PtyError::NotFound(id.to_string()))?;
        session.closed.cancel();
        // Marked closed before the kill, so that whoever sees the process's
        // exit also sees that the delete caused it (`interrupted`).
        session.status.send_modify(|s| s.closed = true);
        session.kill_all();
        Ok(())
    }

    /// Number of sessions.
    pub fn count(&self) -> usize {
        lock(&self.sessions).len()
    }

    /// Starts the session's process unless one is running. Returns the
    /// generation and mode of the running process.
    pub fn ensure_running(
        &self,
        session: &Arc<PtySession>,
        mode: Mode,
        env: Vec<(OsString, OsString)>,
    ) -> Result<(u64, Mode), PtyError> {
        let mut slot = lock(&session.running);
        if let Some(run) = slot.as_ref() {
            return Ok((run.generation, run.mode));
        }
        if session.closed.is_cancelled() {
            return Err(PtyError::NotFound(session.id.clone()));
        }
        let generation = session.status.borrow().generation + 1;
        let size = *lock(&session.size);
        let pending = self.trees.prepare().map_err(PtyError::Open)?;
        let started = match mode {
            Mode::Pty => start_pty(&self.reaper, pending, &self.shell, &session.spec, size, env)?,
            Mode::Pipe => start_pipes(&self.reaper, pending, &self.shell, &session.spec, env)?,
        };
        {
            let mut trees = lock(&session.trees);
            trees.retain(|t| t.alive());
            trees.push(started.tree.clone());
        }
        let run = Arc::new(Running {
            generation,
            pid: started.pid,
            mode,
            master: started.master.clone(),
            stdin: tokio::sync::Mutex::new(started.stdin),
            write_lock: tokio::sync::Mutex::new(()),
        });
        *slot = Some(run);
        session.status.send_modify(|s| {
            s.generation = generation;
            s.running = true;
            s.mode = Some(mode);
        });
        drop(slot);
        tracing::debug!(session = %session.id, pid = started.pid, mode = mode.as_str(), "pty process started");
        self.tasks.spawn(supervise(
            session.clone(),
            generation,
            started.tree,
            started.readers,
            started.exit,
            self.drain,
            session.closed.clone(),
        ));
        Ok((generation, mode))
    }

    /// Kills every session's processes (daemon shutdown).
    pub fn kill_all(&self) {
        for s in lock(&self.sessions).values() {
            s.kill_all();
        }
    }
}

/// What a start hands to the supervisor.
struct Started {
    pid: i32,
    tree: Arc<Tree>,
    master: Option<Arc<AsyncFd<OwnedFd>>>,
    stdin: Option<tokio::net::unix::pipe::Sender>,
    readers: Vec<Reader>,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
}

enum Reader {
    Master(Arc<AsyncFd<OwnedFd>>),
    Pipe(tokio::net::unix::pipe::Receiver, Source),
}

/// Watches one process: reads its output into the ring, waits for its exit,
/// drains what is left (within `drain`), then publishes the exit.
async fn supervise(
    session: Arc<PtySession>,
    generation: u64,
    tree: Arc<Tree>,
    readers: Vec<Reader>,
    exit: tokio::sync::oneshot::Receiver<ExitStatus>,
    drain: Duration,
    closed: CancellationToken,
) {
    let pid = tree.leader;
    let mut reading = tokio::task::JoinSet::new();
    for r in readers {
        reading.spawn(read_into(session.clone(), r));
    }
    let mut exit = std::pin::pin!(exit);
    let status = tokio::select! {
        s = &mut exit => s.ok(),
        _ = closed.cancelled() => {
            tree.kill();
            exit.await.ok()
        }
    };
    let code = match status {
        Some(ExitStatus { code: Some(c), .. }) => c,
        _ => -1,
    };
    // Output still in flight after the exit: read it, but not forever (a
    // background job may hold the terminal open).
    let drained = tokio::time::timeout(drain, async {
        while reading.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!(session = %session.id, "pty output still open after the drain deadline");
    }
    reading.shutdown().await;
    // Background jobs may outlive the shell (until the session is deleted);
    // the cgroup goes once they are gone.
    tree.release();
    // Under the slot's lock, so a new process cannot start in between and
    // then be reported as not running.
    let mut slot = lock(&session.running);
    if slot.as_ref().is_some_and(|r| r.generation == generation) {
        *slot = None;
    }
    let end = lock(&session.ring).end;
    session.status.send_modify(|s| {
        s.end = s.end.max(end);
        s.running = false;
        s.last_exit = Some(Exit {
            generation,
            code,
            end,
        });
    });
    drop(slot);
    tracing::debug!(session = %session.id, pid, code, "pty process exited");
}

/// Copies one output source into the session's ring until EOF.
async fn read_into(session: Arc<PtySession>, reader: Reader) {
    let mut buf = vec![0u8; CHUNK];
    match reader {
        Reader::Master(fd) => loop {
            let n = match read_fd(&fd, &mut buf).await {
                Ok(0) => return,
                Ok(n) => n,
                // EIO: every slave fd is closed (the terminal hung up).
                Err(_) => return,
            };
            publish(&session, Source::Stdout, &buf[..n]);
        },
        Reader::Pipe(mut rx, source) => loop {
            match rx.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => publish(&session, source, &buf[..n]),
            }
        },
    }
}

fn publish(session: &PtySession, source: Source, data: &[u8]) {
    let end = {
        let mut ring = lock(&session.ring);
        ring.push(source, Bytes::copy_from_slice(data));
        ring.end
    };
    // Two readers (stdout, stderr) may publish out of order: never go back.
    session.status.send_modify(|s| s.end = s.end.max(end));
}

async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        let r =
            guard.try_io(|inner| nix::unistd::read(inner.get_ref(), buf).map_err(io::Error::from));
        if let Ok(r) = r {
            return r;
        }
    }
}

async fn write_all_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        if let Ok(r) =
            guard.try_io(|inner| nix::unistd::write(inner.get_ref(), data).map_err(io::Error::from))
        {
            data = &data[r?..];
        }
    }
    Ok(())
}

fn set_size(fd: BorrowedFd<'_>, size: Size) {
    if let Err(e) = super::sys::set_window_size(fd, size.cols, size.rows) {
        tracing::debug!(error = %e, "TIOCSWINSZ failed");
    }
}

pub(crate) fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_retain(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The shell and its arguments (`bash --norc --noprofile [-c command]`),
/// environment and working directory; stdio and the session are the
/// caller's.
fn shell_launch<'fd>(
    shell: &Path,
    spec: &PtySpec,
    env: Vec<(OsString, OsString)>,
) -> spawn::Launch<'fd> {
    let mut argv: Vec<OsString> = vec![shell.into()];
    if shell.file_name().is_some_and(|n| n == "bash") {
        argv.extend(["--norc".into(), "--noprofile".into()]);
    }
    if let Some(line) = &spec.command {
        argv.extend(["-c".into(), line.into()]);
    }
    spawn::Launch {
        argv,
        // Later keys win, as with `Command::envs`.
        env: env.into_iter().collect(),
        cwd: spec.cwd.clone(),
        stdio: [None, None, None],
        uid: None,
        creds: None,
        terminal: false,
    }
}

/// Opens a terminal pair, both ends close-on-exec from birth (no window in
/// which a concurrent fork could inherit them), and sets its size.
pub(crate) fn open_pty(size: Option<Size>) -> io::Result<(OwnedFd, OwnedFd)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let master = OwnedFd::from(master);
    if let Some(size) = size {
        set_size(master.as_fd(), size);
    }
    Ok((master, slave))
}

fn start_pty(
    reaper: &Reaper,
    pending: Pending,
    shell: &Path,
    spec: &PtySpec,
    size: Size,
    mut env: Vec<(OsString, OsString)>,
) -> Result<Started, PtyError> {
    let (master, slave) = open_pty(Some(size)).map_err(PtyError::Open)?;
    if !env.iter().any(|(k, _)| k == "TERM") {
        env.push(("TERM".into(), "xterm-256color".into()));
    }
    // A new session whose controlling terminal is the PTY, born in its
    // cgroup (see `vfork.rs`).
    let mut launch = shell_launch(shell, spec, env);
    launch.stdio = [
        Some(slave.as_fd()),
        Some(slave.as_fd()),
        Some(slave.as_fd()),
    ];
    launch.terminal = true;
    let (pid, exit, tree) = launch.start(reaper, Some(pending))?;
    drop(slave);
    let tree = tree.ok_or_else(|| PtyError::Open(io::Error::other("no tree")))?;
    let registered = set_nonblocking(master.as_fd()).and_then(|()| {
        // SAFETY: the OwnedFd is moved into the AsyncFd and stays open, as
        // the same fd, until the AsyncFd is dropped.
        unsafe { AsyncFd::register(master) }.map_err(|e| io::Error::other(e.to_string()))
    });
    let master = match registered {
        Ok(m) => Arc::new(m),
        Err(e) => {
            // Nobody could talk to this shell: end it (the reaper collects it).
            tree.kill();
            return Err(PtyError::Open(e));
        }
    };
    Ok(Started {
        pid,
        tree,
        master: Some(master.clone()),
        stdin: None,
        readers: vec![Reader::Master(master)],
        exit,
    })
}

fn start_pipes(
    reaper: &Reaper,
    pending: Pending,
    shell: &Path,
    spec: &PtySpec,
    env: Vec<(OsString, OsString)>,
) -> Result<Started, PtyError> {
    let io_err = |e: io::Error| {
        PtyError::Start(SpawnError::Io {
            program: shell.display().to_string(),
            source: e,
        })
    };
    let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| io_err(e.into()));
    let (stdin_child, stdin) = pipe()?;
    let (stdout, stdout_child) = pipe()?;
    let (stderr, stderr_child) = pipe()?;
    let mut launch = shell_launch(shell, spec, env);
    launch.stdio = [
        Some(stdin_child.as_fd()),
        Some(stdout_child.as_fd()),
        Some(stderr_child.as_fd()),
    ];
    let (pid, exit, tree) = launch.start(reaper, Some(pending))?;
    drop((stdin_child, stdout_child, stderr_child));
    let tree = tree.ok_or_else(|| io_err(io::Error::other("no tree")))?;
    let stdin = tokio::net::unix::pipe::Sender::from_owned_fd(stdin).map_err(io_err)?;
    let stdout = tokio::net::unix::pipe::Receiver::from_owned_fd(stdout).map_err(io_err)?;
    let stderr = tokio::net::unix::pipe::Receiver::from_owned_fd(stderr).map_err(io_err)?;
    Ok(Started {
        pid,
        tree,
        master: None,
        stdin: Some(stdin),
        readers: vec![
            Reader::Pipe(stdout, Source::Stdout),
            Reader::Pipe(stderr, Source::Stderr),
        ],
        exit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_at_least_the_cap_with_absolute_offsets() {
        let mut r = Ring::default();
        for i in 0..100u8 {
            r.push(Source::Stdout, Bytes::from(vec![i; 30_000]));
        }
        assert_eq!(r.end, 3_000_000);
        assert!(r.held >= REPLAY_BYTES && r.held < REPLAY_BYTES + 30_000);
        let (from, chunks) = r.read(0, usize::MAX);
        assert_eq!(from, r.start());
        assert_eq!(
            chunks.iter().map(|c| c.data.len()).sum::<usize>() as u64,
            r.end - from
        );
        let (from, chunks) = r.read(2_999_990, usize::MAX);
        assert_eq!(from, 2_999_990);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].offset, 2_999_990);
        assert_eq!(&chunks[0].data[..], &[99u8; 10]);
        let (from, chunks) = r.read(9_000_000, usize::MAX);
        assert_eq!(from, r.end);
        assert!(chunks.is_empty());
    }

    #[test]
    fn signal_names() {
        assert_eq!(
            signal_by_name("SIGINT").ok(),
            Some(nix::sys::signal::SIGINT as i32)
        );
        assert_eq!(
            signal_by_name("term").ok(),
            Some(nix::sys::signal::SIGTERM as i32)
        );
        assert!(signal_by_name("SIGFOO").is_err());
    }
}
