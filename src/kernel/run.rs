//! One run of code, recorded like a command: a record in the process
//! engine's registry (id, state, status) whose output log holds the run's
//! `stdout`/`stderr` text, with `eid`s, memory window, spill, any number of
//! readers and `resume`. The run's other events (`execution_count`,
//! `result`, the kernel's `error`) take an `eid` in the same log as an empty
//! event, and their JSON is kept beside it, looked up by that `eid`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::process::{Command, Finished, Resources, Stream};

/// What a run produces, in order; [`Event::Done`] is last.
#[derive(Debug)]
pub enum Event {
    Stream {
        stderr: bool,
        text: String,
    },
    ExecutionCount(i64),
    /// `execute_result`, `display_data` or `update_display_data`: the MIME bundle.
    Result {
        data: Map<String, Value>,
        execution_count: Option<i64>,
    },
    /// The kernel's own `error` message.
    Error {
        ename: String,
        evalue: String,
        traceback: Vec<String>,
    },
    Done {
        elapsed: Duration,
        outcome: Outcome,
    },
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    Ok,
    /// The kernel reported an error (already sent as [`Event::Error`]).
    KernelError,
    /// Ended by execd: timeout, kernel death, deletion, abort.
    Failed {
        ename: String,
        evalue: String,
        timed_out: bool,
    },
}

/// Text is stored in events of at most this size (as commands' long lines).
const PIECE: usize = 64 * 1024;
/// Pieces appended to the log together.
const BATCH: usize = 16;
/// JSON of non-text events kept per run, at most; past it, a result is
/// replaced by a notice on stderr.
const EXTRAS_CAP: usize = 32 << 20;

#[derive(Default)]
struct Extras {
    by_eid: HashMap<u64, Bytes>,
    bytes: usize,
}

/// A run: its engine record and the events that are not text.
pub struct CodeRun {
    pub cmd: Arc<Command>,
    pub context_id: String,
    extras: Mutex<Extras>,
    /// The terminal event's fields, set just before the record finishes.
    terminal: Mutex<Option<Bytes>>,
    error: Mutex<Option<(String, String)>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `{"type":...,...}` without its closing brace, for a reader to complete
/// with `eid` and `timestamp`.
fn open_object(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.pop();
    Bytes::from(s)
}

/// Jupyter's MIME bundle as upstream sends it: `text/plain` named `text`.
pub fn results(mut data: Map<String, Value>) -> Value {
    if let Some(t) = data.remove("text/plain") {
        data.insert("text".into(), t);
    }
    Value::Object(data)
}

impl CodeRun {
    pub fn new(cmd: Arc<Command>, context_id: String) -> CodeRun {
        CodeRun {
            cmd,
            context_id,
            extras: Mutex::new(Extras::default()),
            terminal: Mutex::new(None),
            error: Mutex::new(None),
        }
    }

    /// The JSON (without its closing brace) of the non-text event `eid`.
    pub fn extra(&self, eid: u64) -> Option<Bytes> {
        self.extras
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_eid
            .get(&eid)
            .cloned()
    }

    /// The terminal event (without its closing brace), once finished.
    pub fn terminal(&self) -> Option<Bytes> {
        self.terminal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn text(&self, stderr: bool, text: &str) {
        let stream = if stderr {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let ts = now_ms();
        let mut pieces = Vec::with_capacity(BATCH);
        let mut at = 0;
        while at < text.len() {
            let mut cut = (at + PIECE).min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            pieces.push(Bytes::copy_from_slice(&text.as_bytes()[at..cut]));
            at = cut;
            // A few pieces at a time: a big message is not copied whole.
            if pieces.len() == BATCH {
                self.cmd.log.append(stream, ts, pieces.drain(..));
            }
        }
        if !pieces.is_empty() {
            self.cmd.log.append(stream, ts, pieces);
        }
    }

    fn other(&self, v: Value) {
        let b = open_object(&v);
        let mut x = self.extras.lock().unwrap_or_else(|p| p.into_inner());
        if x.bytes + b.len() > EXTRAS_CAP {
            drop(x);
            self.text(
                true,
                &format!(
                    "[execd: a {} event of {} bytes was dropped: this run's events hold {} MiB already]\n",
                    v["type"].as_str().unwrap_or("?"),
                    b.len(),
                    EXTRAS_CAP >> 20
                ),
            );
            return;
        }
        // Only the driver appends to this log, so the next eid is known.
        let eid = self.cmd.log.head().next_eid;
        x.bytes += b.len();
        x.by_eid.insert(eid, b);
        drop(x);
        self.cmd
            .log
            .append(Stream::Stdout, now_ms(), [Bytes::new()]);
    }

    /// Records one event of the run.
    pub fn emit(&self, ev: Event) {
        match ev {
            Event::Stream { stderr, text } => self.text(stderr, &text),
            Event::ExecutionCount(n) => {
                self.other(json!({"type": "execution_count", "execution_count": n}))
            }
            Event::Result {
                data,
                execution_count,
            } => {
                let mut v = json!({"type": "result", "results": results(data)});
                if let Some(n) = execution_count {
                    v["execution_count"] = n.into();
                }
                self.other(v)
            }
            Event::Error {
                ename,
                evalue,
                traceback,
            } => {
                *self.error.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((ename.clone(), evalue.clone()));
                self.other(json!({"type": "error", "error": {"ename": ename, "evalue": evalue, "traceback": traceback}}))
            }
            Event::Done { elapsed, outcome } => self.finish(elapsed, outcome),
        }
    }

    /// Ends the run: the terminal event, then the record's end (which wakes
    /// every reader). A second call does nothing.
    pub fn finish(&self, elapsed: Duration, outcome: Outcome) {
        if self.cmd.finished().is_some() {
            return;
        }
        let ms = elapsed.as_millis() as u64;
        let (terminal, error, timed_out) = match outcome {
            Outcome::Ok => (
                json!({"type": "execution_complete", "execution_time": ms, "timestamp": now_ms()}),
                None,
                false,
            ),
            Outcome::KernelError => {
                // The kernel's own error event was the last word; the
                // terminal event repeats it, so a reader that stops at the
                // terminal event sees it there.
                let (ename, evalue) = self
                    .error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
                    .unwrap_or_default();
                (Value::Null, Some(format!("{ename}: {evalue}")), false)
            }
            Outcome::Failed {
                ename,
                evalue,
                timed_out,
            } => {
                let error = Some(format!("{ename}: {evalue}"));
                (
                    json!({
                        "type": "error",
                        "error": {"ename": ename, "evalue": evalue, "traceback": []},
                        "execution_time": ms,
                        "timed_out": timed_out,
                        "timestamp": now_ms(),
                    }),
                    error,
                    timed_out,
                )
            }
        };
        if !terminal.is_null() {
            *self.terminal.lock().unwrap_or_else(|p| p.into_inner()) = Some(open_object(&terminal));
        }
        let failed = error.is_some();
        self.cmd.finish(Finished {
            exit_code: i32::from(failed),
            signal: None,
            timed_out,
            interrupted: false,
            error,
            spawn_failed: false,
            finished_at: SystemTime::now(),
            duration: elapsed,
            resources: Resources::default(),
            dropped_bytes: self.cmd.log.dropped_bytes(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_plain_is_renamed_and_png_kept() {
        let mut m = Map::new();
        m.insert("text/plain".into(), "<Figure>".into());
        m.insert("image/png".into(), "iVBORw0KGgo=".into());
        let v = results(m);
        assert_eq!(v["text"], "<Figure>");
        assert_eq!(v["image/png"], "iVBORw0KGgo=");
        assert!(v.get("text/plain").is_none());
    }

    #[test]
    fn open_object_drops_only_the_closing_brace() {
        let b = open_object(&json!({"type": "x"}));
        assert_eq!(&b[..], br#"{"type":"x""#);
    }
}
