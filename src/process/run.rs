//! The run loop of one command: reads its pipes as they become ready, splits
//! lines into the output log, enforces the timeout and interrupt, and records
//! the exit once the leader is reaped and the pipes are drained.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::lines::LineSplitter;
use super::output::Stream;
use super::reaper::{ExitStatus, Reaper};
use super::registry::{Command, Finished};
use super::spawn::Spawned;

/// Timing knobs of the run loop.
#[derive(Clone, Copy, Debug)]
pub struct RunLimits {
    pub timeout: Option<Duration>,
    /// How long pipes may stay open after the leader exits (escaped grandchildren).
    pub drain: Duration,
    /// SIGTERM-to-SIGKILL grace for interrupts and shutdown.
    pub kill_grace: Duration,
    pub max_line: usize,
}

const READ_CHUNK: usize = 64 * 1024;

/// A pipe's first buffer. Most commands write little or nothing, and two
/// 64 KiB buffers per command made the heap grow and shrink (`brk`) around
/// every spawn; a pipe that fills this gets [`READ_CHUNK`]s from then on.
const FIRST_CHUNK: usize = 4 * 1024;

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One pipe and its line splitter.
struct Pipe {
    rx: Option<pipe::Receiver>,
    buf: BytesMut,
    /// How much to reserve when the buffer runs low.
    chunk: usize,
    lines: LineSplitter,
    /// The lines of one read, appended to the log together.
    batch: Vec<Bytes>,
    stream: Stream,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: Stream, max_line: usize) -> Self {
        let rx = match pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch a child pipe");
                None
            }
        };
        Pipe {
            rx,
            buf: BytesMut::new(),
            chunk: FIRST_CHUNK,
            lines: LineSplitter::new(max_line),
            batch: Vec::new(),
            stream,
        }
    }

    fn open(&self) -> bool {
        self.rx.is_some()
    }

    async fn read(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < FIRST_CHUNK {
            self.buf.reserve(self.chunk);
        }
        match &mut self.rx {
            Some(rx) => rx.read_buf(&mut self.buf).await,
            None => std::future::pending().await,
        }
    }

    /// Handles a read result: new bytes go to the log, EOF or error closes the pipe.
    fn took(&mut self, r: std::io::Result<usize>, cmd: &Command) {
        match r {
            Ok(n) if n > 0 => {
                if self.buf.len() == self.buf.capacity() {
                    // The read filled the buffer: this pipe is busy.
                    self.chunk = READ_CHUNK;
                }
                // Lines are slices of the chunk and the log keeps them for the
                // retention window. A small read split off the buffer would pin
                // all READ_CHUNK bytes of it for that long (a finished `echo`
                // held 64 KiB), so a quiet pipe's reads are copied out. A busy
                // pipe's reads are split off without a copy: they fill one
                // allocation after another, so at most one is partly used.
                let chunk = if self.chunk == FIRST_CHUNK && n < READ_CHUNK / 4 {
                    let small = BytesMut::from(&self.buf[..]);
                    self.buf.clear();
                    small
                } else {
                    self.buf.split()
                };
                let batch = &mut self.batch;
                self.lines.push(chunk, |line| batch.push(line));
                cmd.log.append(self.stream, now_ms(), self.batch.drain(..));
            }
            _ => self.close(cmd),
        }
    }

    /// Reads whatever is already in the pipe without waiting.
    fn drain_ready(&mut self, cmd: &Command) {
        while let Some(rx) = &self.rx {
            self.buf.reserve(READ_CHUNK);
            match rx.try_read_buf(&mut self.buf) {
                Ok(n) => self.took(Ok(n), cmd),
                Err(_) => break,
            }
        }
    }

    fn close(&mut self, cmd: &Command) {
        self.rx = None;
        let batch = &mut self.batch;
        self.lines.finish(|line| batch.push(line));
        cmd.log.append(self.stream, now_ms(), self.batch.drain(..));
    }
}

/// Drives one command to completion. Owned by the engine's task tracker.
pub(crate) async fn run(
    cmd: Arc<Command>,
    sp: Spawned,
    limits: RunLimits,
    reaper: Arc<Reaper>,
    shutdown: CancellationToken,
) {
    let tree = sp.tree;
    let mut out = Pipe::new(sp.stdout, Stream::Stdout, limits.max_line);
    let mut err = Pipe::new(sp.stderr, Stream::Stderr, limits.max_line);
    let mut exit_rx = sp.exit;
    let mut exit: Option<ExitStatus> = None;
    let (mut timed_out, mut interrupted, mut killing, mut draining) = (false, false, false, false);
    // The waits live across iterations: made afresh for every read, they
    // were registered and removed again each time (a lock apiece).
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let timeout = sleep_until(limits.timeout.map_or(far, |t| Instant::now() + t));
    let kill = sleep_until(far);
    let drain = sleep_until(far);
    let stop = async {
        tokio::select! {
            _ = cmd.interrupt.notified() => {}
            _ = shutdown.cancelled() => {}
        }
    };
    tokio::pin!(timeout, kill, drain, stop);

    loop {
        if exit.is_some() && !out.open() && !err.open() {
            break;
        }
        tokio::select! {
            r = out.read(), if out.open() => out.took(r, &cmd),
            r = err.read(), if err.open() => err.took(r, &cmd),
            r = &mut exit_rx, if exit.is_none() => {
                exit = Some(r.unwrap_or_default());
                drain.as_mut().reset(Instant::now() + limits.drain);
                draining = true;
            }
            _ = &mut timeout, if exit.is_none() && limits.timeout.is_some() && !timed_out => {
                timed_out = true;
                tree.kill();
            }
            _ = &mut stop, if exit.is_none() && !interrupted => {
                interrupted = true;
                tree.signal(libc::SIGTERM);
                kill.as_mut().reset(Instant::now() + limits.kill_grace);
                killing = true;
            }
            _ = &mut kill, if killing => {
                tree.kill();
                killing = false;
            }
            _ = &mut drain, if draining => {
                // Something that escaped the leader still holds a pipe: take what
                // is already written and stop waiting for the rest.
                out.drain_ready(&cmd);
                err.drain_ready(&cmd);
                if out.open() || err.open() {
                    tracing::debug!(id = %cmd.id, "pipes still open after the drain deadline");
                }
                out.close(&cmd);
                err.close(&cmd);
                break;
            }
        }
    }
    let kill_at = killing.then(|| kill.deadline());

    // An interrupted command's stragglers get the rest of the grace period,
    // then SIGKILL.
    if let Some(at) = kill_at {
        tree_gone_by(&reaper, &tree, at, &shutdown).await;
        tree.kill();
    } else if timed_out {
        tree.kill();
    }

    let status = exit.unwrap_or_default();
    let (exit_code, error) = describe(&status);
    cmd.finish(Finished {
        exit_code,
        signal: status.signal,
        timed_out,
        // Also a run ended by its session's DELETE (killed at once).
        interrupted: interrupted || cmd.interrupt_requested(),
        error,
        spawn_failed: false,
        finished_at: SystemTime::now(),
        duration: cmd.start.elapsed(),
        resources: status.resources,
        dropped_bytes: cmd.log.dropped_bytes(),
    });

    // The leader is gone, but a timeout still holds for what it left
    // running (background jobs live on by design, up to the timeout).
    if let (Some(t), false, false) = (limits.timeout, timed_out, interrupted) {
        let deadline = Instant::from_std(cmd.start) + t;
        if !tree_gone_by(&reaper, &tree, deadline, &shutdown).await {
            tracing::debug!(id = %cmd.id, "timeout or shutdown: killing what the command left running");
            tree.kill();
        }
    }
    tree.release();
}

/// Waits until every process of `tree` is gone (true), or `deadline` or
/// shutdown comes first (false). The tree is re-checked whenever the reaper
/// collects something: its last member to go is execd's child (the leader,
/// or an orphan re-parented to execd, the subreaper).
async fn tree_gone_by(
    reaper: &Reaper,
    tree: &super::tree::Tree,
    deadline: Instant,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let reaped = reaper.reaped();
        tokio::pin!(reaped);
        reaped.as_mut().enable();
        if !tree.alive() {
            return true;
        }
        tokio::select! {
            _ = reaped => {}
            _ = sleep_until(deadline) => return false,
            _ = shutdown.cancelled() => return false,
        }
    }
}

/// Exit code and upstream-style error text (Go's `ProcessState` wording).
fn describe(s: &ExitStatus) -> (i32, Option<String>) {
    match (s.code, s.signal) {
        (Some(0), _) => (0, None),
        (Some(c), _) => (c, Some(format!("exit status {c}"))),
        (None, Some(sig)) => (-1, Some(format!("signal: {}", signal_text(sig)))),
        (None, None) => (-1, Some("exit status unknown".into())),
    }
}

/// Go's wording for common signals, the number otherwise.
pub fn signal_text(sig: i32) -> String {
    match sig {
        libc::SIGKILL => "killed".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGHUP => "hangup".into(),
        libc::SIGQUIT => "quit".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGABRT => "aborted".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGBUS => "bus error".into(),
        libc::SIGFPE => "floating point exception".into(),
        libc::SIGUSR1 => "user defined signal 1".into(),
        libc::SIGUSR2 => "user defined signal 2".into(),
        n => format!("signal {n}"),
    }
}
