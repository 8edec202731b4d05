//! Command records: id -> [`Command`], with their state machine and retention.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Notify;

use super::output::OutputLog;
use super::reaper::Resources;

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
    pub(crate) stdin: tokio::sync::Mutex<Option<tokio::net::unix::pipe::Sender>>,
}

impl Command {
    pub(crate) fn new(
        id: String,
        content: String,
        background: bool,
        pid: Option<i32>,
        log: OutputLog,
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
            stdin: tokio::sync::Mutex::new(None),
        }
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

    /// Records the end. The log is marked finished after, so a reader that
    /// sees the log end always finds the exit status.
    pub(crate) fn finish(&self, f: Finished) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = State::Finished(f);
        self.log.finish();
    }

    /// Asks the run loop to interrupt (SIGTERM, then SIGKILL after the grace period).
    /// Returns false if an interrupt was already requested.
    pub(crate) fn request_interrupt(&self) -> bool {
        let first = !self.interrupt_requested.swap(true, Ordering::SeqCst);
        if first {
            self.interrupt.notify_one();
        }
        first
    }
}

/// All known commands.
#[derive(Debug, Default)]
pub struct Registry {
    commands: Mutex<HashMap<String, Arc<Command>>>,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Command>>> {
        self.commands.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, cmd: Arc<Command>) {
        self.lock().insert(cmd.id.clone(), cmd);
    }

    pub fn get(&self, id: &str) -> Option<Arc<Command>> {
        self.lock().get(id).cloned()
    }

    pub fn running(&self) -> Vec<Arc<Command>> {
        self.lock()
            .values()
            .filter(|c| c.is_running())
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Drops records of commands that finished more than `retention` ago.
    /// Their spill files go with the last reference to their log.
    pub fn expire(&self, retention: Duration) -> usize {
        let now = SystemTime::now();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, c| match c.finished() {
            Some(f) => now
                .duration_since(f.finished_at)
                .map_or(true, |age| age < retention),
            None => true,
        });
        before - map.len()
    }
}
