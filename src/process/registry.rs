//! Command records: id -> [`Command`], with their state machine and retention.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::output::OutputLog;
use super::reaper::Resources;
use super::ProcessError;

/// How a finished command ended.
#[derive(Clone, Debug)]
pub struct Finished {
    /// Exit code; -1 when killed by a signal or never started (as upstream).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub interrupted: bool,
    /// Upstream-style description: `exit status 3`, `signal: killed`, or the spawn failure.
    pub error: Option<String>,
    /// True when the process could not be started at all.
    pub spawn_failed: bool,
    pub finished_at: SystemTime,
    pub duration: Duration,
    pub resources: Resources,
    /// Output bytes that could not be retained (spill failure or cap 0).
    pub dropped_bytes: u64,
}

/// The life of one command.
#[derive(Clone, Debug)]
pub enum State {
    Running,
    Finished(Finished),
}

/// One command: what was asked, its output log and how it ended.
#[derive(Debug)]
pub struct Command {
    pub id: String,
    /// The command line (or the argv joined by spaces), for status.
    pub content: String,
    pub background: bool,
    pub started_at: SystemTime,
    pub(crate) start: Instant,
    /// Process id and process group id (the same: each command leads its group).
    pub pid: Option<i32>,
    pub log: OutputLog,
    state: Mutex<State>,
    pub(crate) interrupt: Notify,
    interrupt_requested: AtomicBool,
    /// The write end of stdin, when the command was started with a stdin pipe.
    stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>,
    has_stdin: bool,
    /// Every process the command started (None: it never started).
    pub(crate) tree: Option<Arc<super::tree::Tree>>,
    /// The uid it was asked to run as (None: execd's own).
    pub uid: Option<u32>,
    /// The request asked for its output as base64 (`"output_encoding"`):
    /// its event streams, resumed ones included, carry the bytes as they are.
    output_base64: AtomicBool,
}

impl Command {
    pub(crate) fn new(
        id: String,
        content: String,
        background: bool,
        pid: Option<i32>,
        log: OutputLog,
        stdin: Option<tokio::net::unix::pipe::Sender>,
        tree: Option<Arc<super::tree::Tree>>,
    ) -> Self {
        Command {
            id,
            content,
            background,
            started_at: SystemTime::now(),
            start: Instant::now(),
            pid,
            log,
            state: Mutex::new(State::Running),
            interrupt: Notify::new(),
            interrupt_requested: AtomicBool::new(false),
            has_stdin: stdin.is_some(),
            tree,
            output_base64: AtomicBool::new(false),
            stdin: tokio::sync::Mutex::new(stdin),
            uid: None,
        }
    }

    pub(crate) fn with_uid(mut self, uid: Option<u32>) -> Self {
        self.uid = uid;
        self
    }

    /// Whether its event streams carry output as base64.
    pub fn output_base64(&self) -> bool {
        self.output_base64.load(Ordering::Relaxed)
    }

    /// Makes its event streams carry output as base64; set before any
    /// stream of it is built.
    pub fn set_output_base64(&self) {
        self.output_base64.store(true, Ordering::Relaxed);
    }

    pub fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn finished(&self) -> Option<Finished> {
        match self.state() {
            State::Finished(f) => Some(f),
            State::Running => None,
        }
    }

    pub fn is_running(&self) -> bool {
        matches!(self.state(), State::Running)
    }

    /// Takes the stdin pipe for writing. Writers queue behind each other, so
    /// one request's bytes are never interleaved with another's.
    pub async fn stdin(&self) -> Result<StdinGuard<'_>, ProcessError> {
        if !self.has_stdin {
            return Err(ProcessError::NoStdin(self.id.clone()));
        }
        let mut slot = self.stdin.lock().await;
        if slot.is_none() {
            return Err(ProcessError::StdinClosed(self.id.clone()));
        }
        if !self.is_running() {
            *slot = None;
            return Err(ProcessError::NotRunning(self.id.clone()));
        }
        Ok(StdinGuard {
            cmd: self,
            slot: Some(slot),
        })
    }

    /// Closes the write end of stdin if the command has finished: nothing may
    /// write to it any more, and it must not stay open for the retention
    /// period. Called by `finish` and by every writer after it lets go of
    /// the pipe, so whoever releases it last closes it.
    fn close_stdin_if_finished(&self) {
        if self.has_stdin && !self.is_running() {
            if let Ok(mut slot) = self.stdin.try_lock() {
                *slot = None;
            }
        }
    }

    /// Records the end. The log is marked finished after, so a reader that
    /// sees the log end always finds the exit status.
    /// SIGKILL to every process of the command's tree, also after its
    /// leader has exited.
    pub fn kill_tree(&self) {
        if let Some(tree) = &self.tree {
            tree.kill();
        }
    }

    pub(crate) fn finish(&self, f: Finished) {
        let outcome = if f.spawn_failed {
            5
        } else if f.timed_out {
            3
        } else if f.interrupted {
            4
        } else if f.signal.is_some() {
            2
        } else if f.exit_code == 0 {
            0
        } else {
            1
        };
        crate::counters::command_finished(outcome, f.duration);
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = State::Finished(f);
        self.close_stdin_if_finished();
        self.log.finish();
    }

    /// Asks the run loop to interrupt (SIGTERM, then SIGKILL after the grace period).
    /// Returns false if an interrupt was already requested.
    /// Marks the command as ended on a client's request without the
    /// SIGTERM and grace of [`Command::request_interrupt`] (the caller kills
    /// its tree at once, as a session's DELETE does): its terminal event
    /// says `interrupted: true`.
    pub(crate) fn mark_interrupted(&self) {
        self.interrupt_requested.store(true, Ordering::SeqCst);
    }

    /// Whether an interrupt was requested or the command was marked so.
    pub(crate) fn interrupt_requested(&self) -> bool {
        self.interrupt_requested.load(Ordering::SeqCst)
    }

    pub(crate) fn request_interrupt(&self) -> bool {
        let first = !self.interrupt_requested.swap(true, Ordering::SeqCst);
        if first {
            self.interrupt.notify_one();
        }
        first
    }
}

/// Exclusive access to a command's stdin for one writer; see [`Command::stdin`].
pub struct StdinGuard<'a> {
    cmd: &'a Command,
    /// Always `Some` until the guard is dropped.
    slot: Option<tokio::sync::MutexGuard<'a, Option<tokio::net::unix::pipe::Sender>>>,
}

impl StdinGuard<'_> {
    /// Drops the write end: the process reads end-of-file.
    fn shut(&mut self) {
        if let Some(slot) = self.slot.as_deref_mut() {
            *slot = None;
        }
    }

    /// Writes all of `data`, waiting while the pipe is full (the process is
    /// not reading): back-pressure instead of buffering.
    pub async fn write(&mut self, data: &[u8]) -> Result<(), ProcessError> {
        use tokio::io::AsyncWriteExt;
        let Some(Some(tx)) = self.slot.as_deref_mut() else {
            return Err(ProcessError::StdinClosed(self.cmd.id.clone()));
        };
        match tx.write_all(data).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.shut();
                Err(ProcessError::StdinClosed(self.cmd.id.clone()))
            }
            Err(source) => Err(ProcessError::StdinWrite {
                id: self.cmd.id.clone(),
                source,
            }),
        }
    }

    /// Closes stdin: the process reads end-of-file.
    pub fn close(mut self) {
        self.shut();
    }
}

impl Drop for StdinGuard<'_> {
    fn drop(&mut self) {
        // Let go first, then check: if the command finished meanwhile, its
        // own attempt to close the pipe found it held, and this one must.
        drop(self.slot.take());
        self.cmd.close_stdin_if_finished();
    }
}

/// All known commands: every running one, and the finished ones until they
/// expire or, past `max_records` records, the oldest of them make room.
#[derive(Debug)]
pub struct Registry {
    inner: Mutex<Records>,
    max_records: usize,
}

#[derive(Debug, Default)]
struct Records {
    by_id: HashMap<String, Arc<Command>>,
    /// Ids in the order their commands started, each with its sequence
    /// number (ids of dropped records are removed lazily).
    order: VecDeque<(u64, String)>,
    next_seq: u64,
}

/// One page of the inventory, newest first.
pub struct Page {
    pub items: Vec<Arc<Command>>,
    /// Where the next (older) page starts, if there is one.
    pub next: Option<u64>,
}

impl Registry {
    pub fn new(max_records: usize) -> Registry {
        Registry {
            inner: Mutex::new(Records::default()),
            max_records: max_records.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a record; past `max_records` records, the oldest finished ones
    /// are dropped (in start order) to make room.
    pub fn insert(&self, cmd: Arc<Command>) {
        crate::counters::command_started();
        let mut r = self.lock();
        let seq = r.next_seq;
        r.next_seq += 1;
        r.order.push_back((seq, cmd.id.clone()));
        r.by_id.insert(cmd.id.clone(), cmd);
        if r.by_id.len() > self.max_records {
            r.trim(self.max_records);
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Command>> {
        self.lock().by_id.get(id).cloned()
    }

    pub fn running(&self) -> Vec<Arc<Command>> {
        self.lock()
            .by_id
            .values()
            .filter(|c| c.is_running())
            .cloned()
            .collect()
    }

    /// Drops records of commands that finished more than `retention` ago.
    /// Their spill files go with the last reference to their log.
    pub fn expire(&self, retention: Duration) -> usize {
        let now = SystemTime::now();
        let mut r = self.lock();
        let before = r.by_id.len();
        r.by_id.retain(|_, c| match c.finished() {
            Some(f) => now
                .duration_since(f.finished_at)
                .map_or(true, |age| age < retention),
            None => true,
        });
        let Records { by_id, order, .. } = &mut *r;
        order.retain(|(_, id)| by_id.contains_key(id));
        before - by_id.len()
    }

    /// Up to `limit` records started before `before` (a previous page's
    /// `next`), newest first, running or finished as `running` asks.
    pub fn page(&self, running: Option<bool>, before: Option<u64>, limit: usize) -> Page {
        let r = self.lock();
        let mut items = Vec::new();
        let mut next = None;
        for (seq, id) in r.order.iter().rev() {
            if before.is_some_and(|b| *seq >= b) {
                continue;
            }
            let Some(c) = r.by_id.get(id) else { continue };
            if running.is_some_and(|want| c.is_running() != want) {
                continue;
            }
            if items.len() == limit {
                next = Some(*seq + 1);
                break;
            }
            items.push(c.clone());
            next = None;
        }
        // `next` is the first record not shown: the page after starts there.
        Page { items, next }
    }
}

impl Records {
    /// Drops the oldest finished records until there are at most `max`
    /// records besides the running commands met on the way: running commands
    /// are never dropped, they are stepped over.
    fn trim(&mut self, max: usize) {
        let mut i = 0;
        let mut running = 0;
        while self.by_id.len() > max + running && i < self.order.len() {
            match self.by_id.get(&self.order[i].1).map(|c| c.is_running()) {
                Some(true) => {
                    running += 1;
                    i += 1;
                }
                Some(false) => {
                    if let Some((_, id)) = self.order.remove(i) {
                        self.by_id.remove(&id);
                    }
                }
                // Expired already: only the id was left.
                None => {
                    self.order.remove(i);
                }
            }
        }
    }
}
