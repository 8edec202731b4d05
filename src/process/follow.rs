//! THE way to follow a command's output log: every reader that streams a
//! command's output as it grows (the `/command` and `/code` event streams,
//! `/execute` and gRPC `Execute` gathering it, gRPC `Start` and E2B's
//! `process.Process` streaming it) steps a [`Follower`] and only decides how
//! to send what it gets.
//!
//! The follower owns the subtle part: the log's head is read *before* the
//! events, so an append between the two is seen at the next step and a
//! finish is never taken for the end while events are still unread; a
//! reader that fell behind the retained window skips to the oldest retained
//! event, told so by a [`Step::Gap`]; and it waits on the head's `watch`,
//! never on a timer. What a reader waits on beside the log (a keep-alive
//! timer, its client going away) is its own: it selects over
//! [`Follower::changed`] and those when a step is [`Step::Idle`].

use std::borrow::Borrow;

use tokio::sync::watch;

use super::output::{Following, Gap, Head, OutputEvent, ReadCursor};
use super::registry::Command;

/// What a step of a [`Follower`] found.
#[derive(Debug)]
pub enum Step {
    /// The next events, in order (never empty).
    Events(Vec<OutputEvent>),
    /// Events from `from_eid` on are no longer retained: the follower goes
    /// on at `gap.oldest_eid` (whose combined-stream offset is
    /// `gap.oldest_offset`).
    Gap { from_eid: u64, gap: Gap },
    /// Every event is read and the log is finished (or gone). `next_eid`
    /// is the log's end, the eid a terminal event takes.
    End { next_eid: u64 },
    /// Nothing new yet: wait for [`Follower::changed`] (and whatever else
    /// the reader waits on), then step again.
    Idle,
}

/// A position in one command's output log, read forward.
pub struct Follower<C: Borrow<Command>> {
    cmd: C,
    head_rx: watch::Receiver<Head>,
    next: u64,
    /// Where its last read from the spill stopped: the next one starts there.
    cursor: ReadCursor,
    /// The log's head sender is gone: nothing more will come.
    closed: bool,
    /// Counted among the daemon's followers (how spill reads are done).
    _following: Following,
}

impl<C: Borrow<Command>> Follower<C> {
    /// Follows `cmd`'s log from event `from_eid` (output eids start at 1).
    pub fn new(cmd: C, from_eid: u64) -> Self {
        let head_rx = cmd.borrow().log.watch();
        Follower {
            cmd,
            head_rx,
            next: from_eid.max(1),
            cursor: ReadCursor::default(),
            closed: false,
            _following: Following::default(),
        }
    }

    /// The command followed.
    pub fn cmd(&self) -> &Command {
        self.cmd.borrow()
    }

    /// The eid of the next event to read.
    pub fn next_eid(&self) -> u64 {
        self.next
    }

    /// The next events (up to about `batch` bytes, at least one), a gap, the
    /// end, or [`Step::Idle`]. Cancel-safe: the position moves only when a
    /// step returns.
    pub async fn step(&mut self, batch: usize) -> Step {
        // Before the read: an append after it wakes `changed`.
        let head = *self.head_rx.borrow_and_update();
        let log = &self.cmd.borrow().log;
        match log.read_events_at(self.next, batch, &mut self.cursor).await {
            Ok(evs) if !evs.is_empty() => {
                self.next = evs.last().map_or(self.next, |e| e.eid + 1);
                return Step::Events(evs);
            }
            Ok(_) => {}
            Err(gap) => {
                let from_eid = std::mem::replace(&mut self.next, gap.oldest_eid);
                return Step::Gap { from_eid, gap };
            }
        }
        if (head.finished || self.closed) && self.next >= head.next_eid {
            return Step::End {
                next_eid: head.next_eid,
            };
        }
        Step::Idle
    }

    /// Waits until the log has grown or finished since the last step.
    /// Cancel-safe.
    pub async fn changed(&mut self) {
        if self.head_rx.changed().await.is_err() {
            self.closed = true;
        }
    }

    /// Steps until something other than [`Step::Idle`], waiting on the log
    /// alone in between. Cancel-safe.
    pub async fn next(&mut self, batch: usize) -> Step {
        loop {
            match self.step(batch).await {
                Step::Idle => self.changed().await,
                s => return s,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::process::datadir::DataDir;
    use crate::process::output::{LogLimits, MemBudget, OutputLog, Stream};

    fn command(window: usize, tag: &str) -> (Command, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("execd-follow-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = OutputLog::new(
            "t".into(),
            LogLimits {
                window,
                spill_cap: 0,
            },
            MemBudget::new(usize::MAX / 2),
            Arc::new(DataDir::open(Some(&dir)).expect("data dir")),
        );
        let cmd = Command::new("t".into(), String::new(), false, None, log, None, None);
        (cmd, dir)
    }

    fn line(i: u32) -> [Bytes; 1] {
        [Bytes::from(format!("line {i:04} {}\n", "x".repeat(40)))]
    }

    #[tokio::test]
    async fn events_then_idle_then_end() {
        let (cmd, dir) = command(1 << 20, "end");
        let mut f = Follower::new(&cmd, 0);
        assert!(matches!(f.step(1024).await, Step::Idle));
        cmd.log.append(Stream::Stdout, 0, line(1));
        cmd.log.append(Stream::Stderr, 0, line(2));
        // The append woke the head's watch.
        f.changed().await;
        match f.step(1 << 20).await {
            Step::Events(evs) => assert_eq!(evs.iter().map(|e| e.eid).collect::<Vec<_>>(), [1, 2]),
            s => panic!("{s:?}"),
        }
        assert!(matches!(f.step(1024).await, Step::Idle));
        cmd.log.finish();
        assert!(matches!(f.next(1024).await, Step::End { next_eid: 3 }));
        assert_eq!(f.next_eid(), 3);
        drop(cmd);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_reader_behind_the_window_is_told_and_skips() {
        let (cmd, dir) = command(1024, "gap");
        for i in 0..200 {
            cmd.log.append(Stream::Stdout, 0, line(i));
        }
        cmd.log.finish();
        let mut f = Follower::new(&cmd, 1);
        let oldest = match f.next(1 << 20).await {
            Step::Gap { from_eid, gap } => {
                assert_eq!(from_eid, 1);
                assert!(gap.oldest_eid > 1, "{gap:?}");
                gap.oldest_eid
            }
            s => panic!("{s:?}"),
        };
        let mut seen = Vec::new();
        loop {
            match f.next(1 << 20).await {
                Step::Events(evs) => seen.extend(evs.iter().map(|e| e.eid)),
                Step::End { next_eid } => {
                    assert_eq!(next_eid, 201);
                    break;
                }
                s => panic!("{s:?}"),
            }
        }
        assert_eq!(seen, (oldest..201).collect::<Vec<_>>());
        drop(cmd);
        let _ = std::fs::remove_dir_all(dir);
    }
}
