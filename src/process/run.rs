//! The run loop of one command: reads its pipes as they become ready, splits
//! lines into the output log, enforces the timeout and interrupt, and records
//! the exit once the leader is reaped and the pipes are drained.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
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

/// A read's room: the shared scratch buffer of a quiet pipe, or what a
/// busy pipe reserves in its own buffer when it runs low.
const READ_CHUNK: usize = 64 * 1024;

/// A busy pipe's own buffer is replaced when less than this is left.
const LOW_WATER: usize = 4 * 1024;

thread_local! {
    /// Where quiet pipes are read, one per worker thread: a read takes its
    /// bytes out into an allocation of their exact size at once, so a
    /// command that waits (a `sleep`, a prompt) pins none of it. Pinned per
    /// pipe, 64 KiB read buffers were most of execd's memory with 1,000
    /// commands streaming at once.
    static SCRATCH: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// One non-blocking read of `src` through this thread's scratch buffer:
/// the bytes read, in an allocation of their own (empty at end of file).
fn read_scratch(src: &Source) -> std::io::Result<BytesMut> {
    SCRATCH.with_borrow_mut(|scratch| {
        scratch.clear();
        scratch.reserve(READ_CHUNK);
        let n = src.read_into(scratch)?;
        Ok(BytesMut::from(&scratch[..n]))
    })
}

/// A busy pipe's reads are spaced by this much: a producer writing small
/// pieces back to back (stdio flushes 4 KiB at a time) would otherwise wake
/// the run loop, and every reader's stream, for each piece, and each wake-up
/// costs execd more CPU than the bytes it carries. The first read after a
/// quiet spell is never held, so the first output and interactive output
/// (a prompt, a progress line) leave at once; a stream that keeps the pipe
/// busy is read about once per tick of tokio's timer (1 ms).
const COALESCE: Duration = Duration::from_millis(1);

/// Reads closer together than this mean the pipe is busy (a held read is
/// up to two timer ticks after the one before it).
const BUSY_GAP: Duration = Duration::from_millis(3);

/// A busy pipe's buffer, so that the producer does not block while a read
/// is held: at 1 ms per read, 1 MiB carries 1 GB/s.
const BUSY_PIPE_SIZE: i32 = 1 << 20;

/// Pipes grown to [`BUSY_PIPE_SIZE`] at once, daemon-wide: the kernel
/// memory that commands can fill in their pipes stays within 64 MiB more
/// than with default pipes, whatever `--max-running` allows (execd is root:
/// the per-user pipe limits do not hold it back). Past it, busy pipes keep
/// their size and are read as they become readable.
const MAX_ENLARGED: usize = 64;
static ENLARGED: AtomicUsize = AtomicUsize::new(0);

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where a pipe's bytes come from.
enum Source {
    /// Registered with the reactor: a read waits for the pipe to be readable.
    Watched(pipe::Receiver),
    /// A busy pipe, taken out of the reactor and read once per tick (see
    /// [`COALESCE`]): while registered, every write of the producer woke
    /// a worker thread from `epoll_wait`, held read or not.
    Polled(OwnedFd),
    Closed,
}

impl Source {
    /// One non-blocking read into `buf`'s spare capacity, never zeroed
    /// first: how many bytes were appended (0 at end of file).
    fn read_into(&self, buf: &mut BytesMut) -> std::io::Result<usize> {
        match self {
            // Through tokio, so that a `WouldBlock` clears its readiness.
            Source::Watched(rx) => rx.try_read_buf(buf),
            Source::Polled(fd) => super::sys::read_buf(fd.as_fd(), buf),
            Source::Closed => Ok(0),
        }
    }
}

/// One pipe and its line splitter.
struct Pipe {
    src: Source,
    /// An enlarged pipe's own read buffer; empty and unallocated otherwise.
    /// There are at most [`MAX_ENLARGED`] such pipes: their reads fill one
    /// allocation after another and the lines are slices of them, with no
    /// copy. Every other pipe is read through the thread's [`SCRATCH`]
    /// buffer, and what it read is copied out.
    buf: BytesMut,
    lines: LineSplitter,
    /// The lines of one read, appended to the log together.
    batch: Vec<Bytes>,
    stream: Stream,
    /// When the last read returned.
    last_read: Option<Instant>,
    /// The room the last read offered.
    asked: usize,
    /// The next read waits for this (a busy pipe, see [`COALESCE`]).
    hold_until: Option<Instant>,
    /// The pipe's buffer size.
    pipe_size: usize,
    /// Whether reads may be held: not when the pipe could not be enlarged.
    may_hold: bool,
    /// Counted in [`ENLARGED`].
    enlarged: bool,
}

impl Pipe {
    fn new(fd: OwnedFd, stream: Stream, max_line: usize) -> Self {
        let src = match pipe::Receiver::from_owned_fd(fd) {
            Ok(rx) => Source::Watched(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch a child pipe");
                Source::Closed
            }
        };
        Pipe {
            src,
            buf: BytesMut::new(),
            lines: LineSplitter::new(max_line),
            batch: Vec::new(),
            stream,
            last_read: None,
            asked: 0,
            hold_until: None,
            pipe_size: 64 * 1024,
            may_hold: true,
            enlarged: false,
        }
    }

    fn open(&self) -> bool {
        !matches!(self.src, Source::Closed)
    }

    /// The next bytes from the pipe; empty at end of file.
    async fn read(&mut self) -> std::io::Result<BytesMut> {
        loop {
            match &self.src {
                Source::Watched(rx) => {
                    rx.readable().await?;
                }
                Source::Closed => return std::future::pending().await,
                Source::Polled(_) => match self.hold_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    // No wait on the reactor here: without this, a producer
                    // that keeps the pipe full would keep the task from ever
                    // yielding its worker.
                    None => tokio::task::consume_budget().await,
                },
            }
            match self.read_now() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if matches!(self.src, Source::Polled(_)) {
                        // Nothing came during the hold: the pipe is quiet
                        // again, so wait for it to be readable.
                        self.hold_until = None;
                        self.watch();
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                r => return r,
            }
        }
    }

    /// One non-blocking read: the bytes read (empty at end of file).
    fn read_now(&mut self) -> std::io::Result<BytesMut> {
        if !self.enlarged {
            self.asked = READ_CHUNK;
            return read_scratch(&self.src);
        }
        // Reads go into the buffer's spare capacity, never zeroed: zeroing
        // each new 64 KiB buffer was a quarter of execd's user-space
        // instructions per streamed event (callgrind, 1 KiB lines).
        if self.buf.capacity() < LOW_WATER {
            self.buf = BytesMut::with_capacity(READ_CHUNK);
        }
        self.asked = self.buf.capacity();
        self.src.read_into(&mut self.buf)?;
        Ok(self.buf.split())
    }

    /// Back into the reactor (a quiet pipe).
    fn watch(&mut self) {
        self.src = match std::mem::replace(&mut self.src, Source::Closed) {
            Source::Polled(fd) => match pipe::Receiver::from_owned_fd(fd) {
                Ok(rx) => Source::Watched(rx),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch a child pipe again");
                    Source::Closed
                }
            },
            other => other,
        };
    }

    /// Out of the reactor (a busy pipe, read on the timer).
    fn poll(&mut self) {
        self.src = match std::mem::replace(&mut self.src, Source::Closed) {
            Source::Watched(rx) => match rx.into_nonblocking_fd() {
                Ok(fd) => Source::Polled(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take a child pipe out of the reactor");
                    Source::Closed
                }
            },
            other => other,
        };
    }

    /// Handles a read result: new bytes go to the log, EOF or error closes the pipe.
    fn took(&mut self, r: std::io::Result<BytesMut>, cmd: &Command) {
        match r {
            Ok(chunk) if !chunk.is_empty() => {
                self.pace(chunk.len());
                // Lines are slices of the chunk, which the log keeps for the
                // retention window: a chunk is either an allocation of its
                // own (scratch reads) or one of a busy pipe's buffers, which
                // fill one after another, so at most one is partly used.
                let batch = &mut self.batch;
                self.lines.push(chunk, |line| batch.push(line));
                cmd.log.append(self.stream, now_ms(), self.batch.drain(..));
            }
            _ => self.close(cmd),
        }
    }

    /// Decides whether the next read waits (see [`COALESCE`]): it does when
    /// reads come close together and this one emptied the pipe, unless it
    /// took half the pipe or more (the reader is behind: no waiting until
    /// it has caught up). A held pipe leaves the reactor until it is quiet.
    fn pace(&mut self, n: usize) {
        let now = Instant::now();
        let busy = self
            .last_read
            .is_some_and(|t| now.saturating_duration_since(t) < BUSY_GAP);
        self.last_read = Some(now);
        if busy && self.may_hold && self.pipe_size < BUSY_PIPE_SIZE as usize {
            self.enlarge();
        }
        let drained = n < self.asked;
        self.hold_until =
            (busy && self.may_hold && drained && n < self.pipe_size / 2).then(|| now + COALESCE);
        if self.hold_until.is_some() {
            self.poll();
        }
    }

    /// Grows a busy pipe's buffer (best effort: the system's limit on pipe
    /// sizes may refuse it, and then reads are never held, since a 64 KiB
    /// pipe held for 1 ms would block a fast producer).
    fn enlarge(&mut self) {
        use std::os::fd::AsFd;
        let fd = match &self.src {
            Source::Watched(rx) => rx.as_fd(),
            Source::Polled(fd) => fd.as_fd(),
            Source::Closed => return,
        };
        if ENLARGED.fetch_add(1, Ordering::Relaxed) >= MAX_ENLARGED {
            ENLARGED.fetch_sub(1, Ordering::Relaxed);
            self.may_hold = false;
            return;
        }
        match nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(BUSY_PIPE_SIZE)) {
            Ok(size) if size >= BUSY_PIPE_SIZE => {
                self.pipe_size = size as usize;
                self.enlarged = true;
            }
            _ => {
                ENLARGED.fetch_sub(1, Ordering::Relaxed);
                self.may_hold = false;
            }
        }
    }

    /// Gives back this pipe's place among the enlarged ones.
    fn release(&mut self) {
        if std::mem::take(&mut self.enlarged) {
            ENLARGED.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Reads whatever is already in the pipe without waiting.
    fn drain_ready(&mut self, cmd: &Command) {
        // Straight from the fd: tokio's `try_read` trusts the readiness the
        // reactor has reported so far, and the exit comes from the reaper's
        // thread: a busy reactor may not have reported yet what was written
        // before the exit (an empty log in the 1,000-command test, once).
        self.poll();
        while self.open() {
            match self.read_now() {
                Ok(chunk) => self.took(Ok(chunk), cmd),
                Err(_) => break,
            }
        }
    }

    fn close(&mut self, cmd: &Command) {
        self.src = Source::Closed;
        self.buf = BytesMut::new();
        self.release();
        let batch = &mut self.batch;
        self.lines.finish(|line| batch.push(line));
        cmd.log.append(self.stream, now_ms(), self.batch.drain(..));
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        self.release();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::process::datadir::DataDir;
    use crate::process::output::{LogLimits, MemBudget, OutputLog};

    /// The drain deadline takes what was written before it even when the
    /// reactor has not reported the pipe readable yet (here: never polled
    /// between the write and the drain).
    #[tokio::test]
    async fn the_drain_reads_what_the_reactor_has_not_reported() {
        let dir = std::env::temp_dir().join(format!("execd-run-drain-{}", std::process::id()));
        let log = OutputLog::new(
            "t".into(),
            LogLimits {
                window: 1 << 20,
                spill_cap: 0,
            },
            MemBudget::new(1 << 20),
            Arc::new(DataDir::open(Some(&dir)).unwrap()),
        );
        let cmd = Command::new("t".into(), String::new(), true, None, log, None, None);
        let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut out = Pipe::new(rx, Stream::Stdout, 1024);
        assert!(matches!(out.src, Source::Watched(_)));
        assert_eq!(nix::unistd::write(&tx, b"out\n").unwrap(), 4);
        drop(tx);
        out.drain_ready(&cmd);
        out.close(&cmd);
        assert_eq!(cmd.log.head().total_bytes, 4);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
