//! `OutputLog`: the bounded, replayable record of one command's output.
//!
//! Output arrives as events (one line each, see `lines.rs`) numbered by a
//! monotonic event id (`eid`) and placed at an absolute byte offset in the
//! combined stdout+stderr stream. The newest events stay in memory, within a
//! per-command window and a daemon-wide budget; older ones move to a capped
//! spill file in the private data directory (see `datadir.rs`), kept as two
//! segments so the newest half of the cap always survives. No one holds the log's lock across I/O: readers
//! plan under it and read the spill without it, so a slow reader only falls
//! behind and never blocks the process or other readers; the writer picks
//! what to spill under it, writes without it (the events stay readable in
//! memory meanwhile), and takes it again to hand them over to the spill. A
//! disk slowed by write-back therefore holds back the command's own pipe,
//! never a reader of its log.
//! Whatever is no longer retained is reported to the reader as a gap, never
//! skipped silently.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::ops::Range;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::datadir::DataDir;
use super::sys;

/// Which pipe an event came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout = 1,
    Stderr = 2,
}

/// One stored output event.
#[derive(Clone, Debug)]
pub struct OutputEvent {
    pub eid: u64,
    pub stream: Stream,
    /// Offset of the first byte in the combined stdout+stderr stream.
    pub offset: u64,
    pub ts_ms: u64,
    pub data: Bytes,
}

/// What a reader needs to know to wait for more.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The eid the next event will get. Output eids start at 1 (0 is `init`).
    pub next_eid: u64,
    pub total_bytes: u64,
    pub finished: bool,
}

/// The requested position is no longer retained; the oldest retained one is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub oldest_eid: u64,
    pub oldest_offset: u64,
}

/// Bytes of the combined stream, read from an offset.
#[derive(Debug, Default)]
pub struct ByteRange {
    pub chunks: Vec<Bytes>,
    /// Where the returned bytes start: the requested offset, or the oldest
    /// retained one when the request fell into a gap.
    pub start: u64,
    pub next: u64,
}

/// Per-event bookkeeping cost counted against memory budgets.
const EVENT_OVERHEAD: usize = 64;
/// Spill record header: eid, offset, ts (u64 each), stream (u8), len (u32).
const RECORD_HEADER: usize = 29;
/// One sparse index entry per this many spilled bytes (24 bytes each: 384
/// KiB for a command that spills 1 GiB). A reader behind the memory window
/// scans from the entry before its event on every batch, up to this much:
/// at 256 KiB, with 1,000 commands over the memory budget, the scans were
/// most of execd's CPU.
const INDEX_EVERY: u64 = 64 * 1024;
/// Smallest read when scanning a spill segment. A scan holds its block
/// while it runs, and the events it returns share it until the reader has
/// sent them; scans that the page cache cannot serve at once run on
/// blocking threads, up to one per reader behind the memory window (with
/// 1,000 commands over the memory budget, every reader: 64 KiB blocks on up
/// to 64 blocking threads were 4 MiB at that peak). Such readers get 4 KiB
/// batches, so their blocks stay at this size.
const SCAN_BLOCK: usize = 16 * 1024;
/// Largest read when scanning a spill segment: a single stream's 64 KiB
/// batch of 1 KiB lines takes one `pread` (see [`scan_block`]); larger
/// batches (a capture's, a `logs?cursor` piece of 256 KiB) take several.
/// With 256 KiB blocks the bench's fan-out (7 `logs?cursor` pollers beside
/// one stream) peaked at 23.0-23.1 MiB against 20.0-20.1 before; with
/// these, 20.9-21.5.
const SCAN_BLOCK_MAX: usize = 96 * 1024;

/// Daemon-wide accounting of output held in memory.
#[derive(Debug)]
pub struct MemBudget {
    used: AtomicUsize,
    total: usize,
}

impl MemBudget {
    pub fn new(total: usize) -> Arc<Self> {
        Arc::new(MemBudget {
            used: AtomicUsize::new(0),
            total,
        })
    }
    fn add(&self, n: usize) {
        self.used.fetch_add(n, Ordering::Relaxed);
    }
    fn sub(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
    fn over(&self) -> bool {
        self.over_by(0)
    }
    /// Whether the budget is over once `more` bytes not yet added are.
    fn over_by(&self, more: usize) -> bool {
        self.used.load(Ordering::Relaxed) + more > self.total
    }
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Limits for one log.
#[derive(Clone, Debug)]
pub struct LogLimits {
    /// Bytes of output kept in memory per command.
    pub window: usize,
    /// Bytes kept on disk per command (0 disables spilling).
    pub spill_cap: u64,
}

#[derive(Debug)]
struct IndexEntry {
    eid: u64,
    offset: u64,
    pos: u64,
}

#[derive(Debug)]
struct Segment {
    /// Its file's name in the data directory.
    name: String,
    file: Arc<File>,
    first_eid: u64,
    first_offset: u64,
    end_eid: u64,
    end_offset: u64,
    len: u64,
    index: Vec<IndexEntry>,
    /// A write to it failed, perhaps halfway: nothing more is appended.
    sealed: bool,
}

#[derive(Debug, Default)]
struct Inner {
    mem: VecDeque<OutputEvent>,
    mem_bytes: usize,
    next_eid: u64,
    total: u64,
    segments: VecDeque<Segment>,
    seg_no: u32,
    dropped_bytes: u64,
}

/// The output log of one command. See the module docs.
#[derive(Debug)]
pub struct OutputLog {
    name: String,
    inner: Mutex<Inner>,
    head: watch::Sender<Head>,
    limits: LogLimits,
    budget: Arc<MemBudget>,
    dir: Arc<DataDir>,
    /// Held by whoever is spilling, across the write, so spills go one at a
    /// time and in order. Readers never take it.
    spilling: Mutex<()>,
}

/// A spill decided under the log's lock, to be written without it.
struct SpillJob {
    /// Copies of the oldest events in memory (they stay there until written).
    events: Vec<OutputEvent>,
    /// Their cost against the memory window and budget.
    freed: usize,
    /// The segment to append to, or `None` to start segment `new_no`.
    tail: Option<Arc<File>>,
    new_no: u32,
}

/// Where a spill's records went.
struct Spilled {
    /// The segment it started, if it started one.
    new: Option<(String, Arc<File>)>,
    len: u64,
}

/// Where a read has to go, decided under the lock and carried out without it.
enum Plan {
    Scan {
        file: Arc<File>,
        pos: u64,
        end_pos: u64,
    },
}

/// Where a reader's last read from the spill stopped, so that its next
/// read (from the event after it) starts at that record rather than at the
/// sparse index entry before it: a reader behind the memory window re-read
/// and threw away 32 KiB on average per batch without it. Only a hint, used
/// when it names the event asked for in a segment still retained.
#[derive(Debug, Default)]
pub struct ReadCursor(Option<SpillPos>);

#[derive(Debug)]
struct SpillPos {
    /// The segment's file, by identity: a `Weak`, so that a reader never
    /// keeps a discarded segment's file open.
    file: Weak<File>,
    /// Where the record of `eid` starts in it.
    pos: u64,
    eid: u64,
}

impl ReadCursor {
    /// A scan from the cursor when it is at `eid` in a retained segment.
    fn plan(&self, inner: &Inner, eid: u64) -> Option<Plan> {
        let at = self.0.as_ref().filter(|c| c.eid == eid)?;
        let seg = inner.segments.iter().find(|s| {
            std::ptr::eq(at.file.as_ptr(), Arc::as_ptr(&s.file))
                && (s.first_eid..s.end_eid).contains(&eid)
                && at.pos < s.len
        })?;
        Some(Plan::Scan {
            file: seg.file.clone(),
            pos: at.pos,
            end_pos: seg.len,
        })
    }
}

impl OutputLog {
    pub fn new(name: String, limits: LogLimits, budget: Arc<MemBudget>, dir: Arc<DataDir>) -> Self {
        let head = Head {
            next_eid: 1,
            ..Head::default()
        };
        OutputLog {
            name,
            inner: Mutex::new(Inner {
                next_eid: 1,
                ..Inner::default()
            }),
            head: watch::Sender::new(head),
            limits,
            budget,
            dir,
            spilling: Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere; the data is still consistent
        // enough to serve (every mutation below completes before it can panic).
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever an event is appended or the log finishes.
    pub fn watch(&self) -> watch::Receiver<Head> {
        self.head.subscribe()
    }

    pub fn head(&self) -> Head {
        *self.head.borrow()
    }

    /// Appends events (lines of one read, in order) under one lock and with
    /// one wake-up of the readers, however many there are.
    pub fn append(&self, stream: Stream, ts_ms: u64, lines: impl IntoIterator<Item = Bytes>) {
        let mut inner = self.lock();
        let before = inner.next_eid;
        // Counted against the daemon's budget once per batch (or before a
        // spill), not with an atomic add per event.
        let mut uncounted = 0;
        // This read's bytes, and whether a spill took part of them.
        let (mut read, mut spilled) = (0usize, false);
        for data in lines {
            let len = data.len();
            read += len;
            let ev = OutputEvent {
                eid: inner.next_eid,
                stream,
                offset: inner.total,
                ts_ms,
                data,
            };
            inner.next_eid += 1;
            inner.total += len as u64;
            inner.mem.push_back(ev);
            let cost = len + EVENT_OVERHEAD;
            inner.mem_bytes += cost;
            uncounted += cost;
            if inner.mem_bytes > self.limits.window
                || (self.budget.over_by(uncounted) && inner.mem.len() > 1)
            {
                self.budget.add(std::mem::take(&mut uncounted));
                drop(inner);
                self.spill();
                spilled = true;
                inner = self.lock();
            }
        }
        if spilled {
            compact_tail(&mut inner.mem, before, read);
        }
        self.budget.add(uncounted);
        let (next_eid, total) = (inner.next_eid, inner.total);
        drop(inner);
        if next_eid != before {
            self.head.send_modify(|h| {
                h.next_eid = next_eid;
                h.total_bytes = total;
            });
        }
    }

    /// Marks the log complete: no more events will come.
    pub fn finish(&self) {
        self.head.send_modify(|h| h.finished = true);
    }

    /// The oldest event id still retained (the next one when nothing is).
    pub fn oldest_eid(&self) -> u64 {
        let inner = self.lock();
        inner
            .segments
            .front()
            .map(|s| s.first_eid)
            .or_else(|| inner.mem.front().map(|e| e.eid))
            .unwrap_or(inner.next_eid)
    }

    /// Bytes no longer retained: spilling failed or was disabled, the
    /// daemon's spill budget was used up, or the spill cap discarded the
    /// oldest segment.
    pub fn dropped_bytes(&self) -> u64 {
        self.lock().dropped_bytes
    }

    /// Moves the oldest in-memory events to the spill file: chosen under the
    /// lock, written without it, handed over under it again.
    ///
    /// The write runs on the command's tokio worker, so a stalled disk stalls
    /// that worker (readers are not held up; other tasks are stolen by the
    /// other workers). Handing the worker's tasks on with `block_in_place`
    /// around the write was tried and measured: a 256 MiB stream spills
    /// about 600 times, and execd's CPU for it rose from 815 to 890 ms (mean
    /// of 24 alternating runs each), so it was not kept.
    fn spill(&self) {
        let _one = self.spilling.lock().unwrap_or_else(|p| p.into_inner());
        let Some(job) = self.plan_spill() else {
            return;
        };
        let bytes = job
            .events
            .iter()
            .map(|e| (RECORD_HEADER + e.data.len()) as u64)
            .sum();
        let written = if self.limits.spill_cap == 0 {
            Err(io::Error::other("spilling disabled (spill cap 0)"))
        } else if !self.dir.reserve(bytes) {
            Err(io::Error::other(format!(
                "the daemon's spill budget ({} bytes, --spill-budget) is used up",
                self.dir.budget
            )))
        } else {
            let w = self.write_spill(&job);
            if w.is_err() {
                self.dir.release(bytes);
            }
            w
        };
        let removed = self.commit_spill(job, written);
        for (name, len) in removed {
            self.dir.remove(&name);
            self.dir.release(len);
        }
    }

    /// The oldest events down to half the window (or all but the newest
    /// one when the daemon's budget is over), and where they go.
    fn plan_spill(&self) -> Option<SpillJob> {
        let mut inner = self.lock();
        let target = if self.budget.over() {
            0
        } else {
            self.limits.window / 2
        };
        let (mut freed, mut count, mut bytes) = (0usize, 0usize, 0u64);
        for ev in &inner.mem {
            if inner.mem_bytes - freed <= target || inner.mem.len() - count <= 1 {
                break;
            }
            freed += ev.data.len() + EVENT_OVERHEAD;
            bytes += (RECORD_HEADER + ev.data.len()) as u64;
            count += 1;
        }
        if count == 0 {
            return None;
        }
        let events: Vec<OutputEvent> = inner.mem.iter().take(count).cloned().collect();
        if target == 0 {
            // Over the daemon's budget, the newest event is all that stays:
            // its own copy, so that it no longer keeps the whole read it was
            // cut from alive (up to 64 KiB for a 1 KiB line, per command).
            if let Some(last) = inner.mem.back_mut() {
                last.data = Bytes::copy_from_slice(&last.data);
            }
        }
        let seg_cap = (self.limits.spill_cap / 2).max(1);
        let tail = inner
            .segments
            .back()
            .filter(|s| !s.sealed && (s.len == 0 || s.len + bytes <= seg_cap))
            .map(|s| s.file.clone());
        let new_no = inner.seg_no;
        if tail.is_none() {
            inner.seg_no += 1;
        }
        Some(SpillJob {
            events,
            freed,
            tail,
            new_no,
        })
    }

    /// Writes the job's records, to a new segment file if it needs one.
    fn write_spill(&self, job: &SpillJob) -> io::Result<Spilled> {
        let (file, new) = match &job.tail {
            Some(f) => (f.clone(), None),
            None => {
                // A new name, created exclusively: never a file or a
                // symlink someone put there.
                let name = format!("{}.{}", self.name, job.new_no);
                let file = Arc::new(self.dir.create(&name, true)?);
                (file.clone(), Some((name, file)))
            }
        };
        // Record headers in one small buffer; the records' data is written
        // from the events themselves, not copied into a batch first.
        let mut heads = Vec::with_capacity(job.events.len() * RECORD_HEADER);
        for ev in &job.events {
            heads.extend_from_slice(&ev.eid.to_le_bytes());
            heads.extend_from_slice(&ev.offset.to_le_bytes());
            heads.extend_from_slice(&ev.ts_ms.to_le_bytes());
            heads.push(ev.stream as u8);
            heads.extend_from_slice(&(ev.data.len() as u32).to_le_bytes());
        }
        let mut slices: Vec<IoSlice<'_>> = heads
            .chunks(RECORD_HEADER)
            .zip(&job.events)
            .flat_map(|(h, ev)| [IoSlice::new(h), IoSlice::new(&ev.data)])
            .collect();
        let len = heads.len() as u64 + job.events.iter().map(|e| e.data.len() as u64).sum::<u64>();
        match write_all_vectored(&file, &mut slices) {
            Ok(()) => Ok(Spilled { new, len }),
            Err(e) => {
                if let Some((name, _)) = new {
                    self.dir.remove(&name);
                }
                Err(e)
            }
        }
    }

    /// Takes the job's events out of memory and records where they went (or
    /// that they were lost). Returns the segment files to remove, with the
    /// bytes of the spill budget each held.
    fn commit_spill(&self, job: SpillJob, written: io::Result<Spilled>) -> Vec<(String, u64)> {
        let mut inner = self.lock();
        // Only a spill removes events from memory, and spills go one at a
        // time, so the job's events are still the oldest ones there.
        inner.mem.drain(..job.events.len());
        shrink_events(&mut inner.mem);
        inner.mem_bytes -= job.freed;
        self.budget.sub(job.freed);
        let (Some(first), Some(last)) = (job.events.first(), job.events.last()) else {
            return Vec::new();
        };
        let (end_eid, end_offset) = (last.eid + 1, last.offset + last.data.len() as u64);
        let spilled = match written {
            Ok(w) => w,
            Err(e) => {
                // Warned once per log: a spent budget fails every spill.
                let first_drop = inner.dropped_bytes == 0;
                inner.dropped_bytes += end_offset - first.offset;
                // A failed write may have left part of a record behind.
                if job.tail.is_some() {
                    if let Some(seg) = inner.segments.back_mut() {
                        seg.sealed = true;
                    }
                }
                if first_drop {
                    tracing::warn!(log = %self.name, error = %e, "output spill failed; oldest output dropped (counted in dropped_bytes)");
                } else {
                    tracing::debug!(log = %self.name, error = %e, "output spill failed; oldest output dropped");
                }
                return Vec::new();
            }
        };
        let mut removed = Vec::new();
        if let Some((name, file)) = spilled.new {
            inner.segments.push_back(Segment {
                name,
                file,
                first_eid: first.eid,
                first_offset: first.offset,
                end_eid: first.eid,
                end_offset: first.offset,
                len: 0,
                index: Vec::new(),
                sealed: false,
            });
            while inner.segments.len() > 2 {
                if let Some(old) = inner.segments.pop_front() {
                    // The spill cap discards the oldest segment's output:
                    // lost like a failed spill, and counted alike.
                    inner.dropped_bytes += old.end_offset - old.first_offset;
                    removed.push((old.name, old.len));
                }
            }
        }
        let Some(seg) = inner.segments.back_mut() else {
            return removed;
        };
        let mut pos = seg.len;
        for ev in &job.events {
            let due = seg.index.last().is_none_or(|l| pos - l.pos >= INDEX_EVERY);
            if due {
                seg.index.push(IndexEntry {
                    eid: ev.eid,
                    offset: ev.offset,
                    pos,
                });
            }
            pos += (RECORD_HEADER + ev.data.len()) as u64;
        }
        seg.len += spilled.len;
        seg.end_eid = end_eid;
        seg.end_offset = end_offset;
        removed
    }

    /// Up to `max_bytes` of events starting at `from_eid` (at least one event if any).
    pub async fn read_events(
        &self,
        from_eid: u64,
        max_bytes: usize,
    ) -> Result<Vec<OutputEvent>, Gap> {
        self.read_events_at(from_eid, max_bytes, &mut ReadCursor::default())
            .await
    }

    /// [`read_events`](Self::read_events) for a reader that reads on from
    /// where it stopped: a read from the spill starts at `cursor` when it
    /// names `from_eid`, and leaves it at the record after the last event
    /// returned. Cancel-safe: `cursor` changes only when the read returns.
    pub async fn read_events_at(
        &self,
        from_eid: u64,
        max_bytes: usize,
        cursor: &mut ReadCursor,
    ) -> Result<Vec<OutputEvent>, Gap> {
        let plan = {
            let inner = self.lock();
            if from_eid >= inner.next_eid {
                return Ok(Vec::new());
            }
            if let Some(front) = inner.mem.front() {
                if from_eid >= front.eid {
                    let start = (from_eid - front.eid) as usize;
                    let mut out = Vec::new();
                    let mut size = 0;
                    for ev in inner.mem.range(start..) {
                        if size >= max_bytes && !out.is_empty() {
                            break;
                        }
                        size += ev.data.len();
                        out.push(ev.clone());
                    }
                    return Ok(out);
                }
            }
            match cursor.plan(&inner, from_eid) {
                Some(p) => p,
                None => match locate(&inner, |s| (s.first_eid, s.end_eid), from_eid, |e| e.eid) {
                    Ok(p) => p,
                    Err(()) => return Err(gap_at(&inner, from_eid, true)),
                },
            }
        };
        let Plan::Scan { file, pos, end_pos } = plan;
        let block = scan_block(max_bytes);
        let collect = move |file: &File, io: ScanIo| {
            let mut out = Vec::new();
            let mut size = 0usize;
            let (next, r) = scan(file, pos, end_pos, block, io, |rec| {
                if rec.eid < from_eid {
                    return Take::More;
                }
                size += rec.data().len();
                out.push(rec.to_event());
                if size >= max_bytes {
                    Take::Last
                } else {
                    Take::More
                }
            });
            ((out, next), r)
        };
        let (evs, next) = read_spill(&file, collect, |(evs, _)| !evs.is_empty())
            .await
            .unwrap_or((Vec::new(), pos));
        match evs.last() {
            Some(last) => {
                cursor.0 = Some(SpillPos {
                    file: Arc::downgrade(&file),
                    pos: next,
                    eid: last.eid + 1,
                });
                Ok(evs)
            }
            // The segment vanished or failed to read: report what is retained now.
            None => {
                cursor.0 = None;
                Err(gap_at(&self.lock(), from_eid, true))
            }
        }
    }

    /// Raw bytes of the combined stream from `from` up to `until` (exclusive),
    /// at most `max_bytes` per call. A `from` in a gap starts at the oldest retained byte.
    pub async fn read_bytes(&self, from: u64, until: u64, max_bytes: usize) -> ByteRange {
        let mut start = from;
        let (plan, until) = {
            let inner = self.lock();
            let until = until.min(inner.total);
            let offsets = |s: &Segment| (s.first_offset, s.end_offset);
            let in_mem = |at: u64| inner.mem.front().is_some_and(|f| at >= f.offset);
            // A start that is no longer retained moves to the oldest retained byte.
            if !in_mem(start) && locate(&inner, offsets, start, |e| e.offset).is_err() {
                start = gap_at(&inner, start, false).oldest_offset;
            }
            if start >= until {
                return ByteRange {
                    chunks: Vec::new(),
                    start,
                    next: start.max(from),
                };
            }
            if in_mem(start) {
                let (chunks, next) = slice_mem(&inner.mem, start, until, max_bytes);
                return ByteRange {
                    chunks,
                    start,
                    next,
                };
            }
            match locate(&inner, offsets, start, |e| e.offset) {
                Ok(p) => (p, until),
                Err(()) => {
                    return ByteRange {
                        chunks: Vec::new(),
                        start,
                        next: start,
                    }
                }
            }
        };
        let Plan::Scan { file, pos, end_pos } = plan;
        let from_off = start;
        let block = scan_block(max_bytes);
        let collect = move |file: &File, io: ScanIo| {
            let mut chunks = Vec::new();
            let mut next = from_off;
            let mut size = 0usize;
            let (_, r) = scan(file, pos, end_pos, block, io, |rec| {
                let end = rec.offset + rec.data().len() as u64;
                if end <= next {
                    return Take::More;
                }
                if size >= max_bytes || rec.offset >= until {
                    return Take::Stop;
                }
                let lo = (next - rec.offset) as usize;
                let hi = (until.min(end) - rec.offset) as usize;
                let piece = rec.share(lo..hi);
                size += piece.len();
                next += piece.len() as u64;
                chunks.push(piece);
                if size >= max_bytes || end >= until {
                    Take::Last
                } else {
                    Take::More
                }
            });
            ((chunks, next), r)
        };
        let (chunks, next) = read_spill(&file, collect, |(chunks, _)| !chunks.is_empty())
            .await
            .unwrap_or((Vec::new(), start));
        ByteRange {
            chunks,
            start,
            next,
        }
    }
}

impl Drop for OutputLog {
    fn drop(&mut self) {
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        self.budget.sub(inner.mem_bytes);
        for seg in inner.segments.drain(..) {
            self.dir.remove(&seg.name);
            self.dir.release(seg.len);
        }
    }
}

/// The events a read left in memory after a spill took the rest of it, in
/// an allocation of their own: as slices they would keep the whole read
/// alive (up to 64 KiB for a line or two, per command), and the memory
/// budget counts only the lines. With 1,000 commands over the budget, the
/// pinned reads were about 40 MiB of execd's peak. A read mostly kept is
/// left as it is (copying it would cost more than it frees).
fn compact_tail(mem: &mut VecDeque<OutputEvent>, first_eid: u64, read: usize) {
    let from = mem.partition_point(|e| e.eid < first_eid);
    let kept: usize = mem.range(from..).map(|e| e.data.len()).sum();
    if kept == 0 || kept * 2 >= read {
        return;
    }
    let mut buf = BytesMut::with_capacity(kept);
    for e in mem.range(from..) {
        buf.extend_from_slice(&e.data);
    }
    let mut all = buf.freeze();
    for e in mem.range_mut(from..) {
        e.data = all.split_to(e.data.len());
    }
}

/// Smallest event deque [`shrink_events`] leaves.
const MIN_EVENT_SLOTS: usize = 8;

/// Gives back most of an event deque's room once a spill has emptied it:
/// a deque keeps its largest size (64 bytes an event, up to a window's
/// worth: 64 KiB), and with 1,000 commands each holding a line or two
/// over the budget the empty room was 16 MiB of execd's peak.
fn shrink_events(mem: &mut VecDeque<OutputEvent>) {
    let cap = mem.capacity();
    if cap > MIN_EVENT_SLOTS && mem.len() < cap / 4 {
        mem.shrink_to((mem.len() * 2).max(MIN_EVENT_SLOTS));
    }
}

/// Finds the spill segment holding `key` (an eid or an offset) and the sparse
/// index entry to start scanning from.
fn locate(
    inner: &Inner,
    range: impl Fn(&Segment) -> (u64, u64),
    key: u64,
    entry_key: impl Fn(&IndexEntry) -> u64,
) -> Result<Plan, ()> {
    for seg in &inner.segments {
        let (lo, hi) = range(seg);
        if key >= lo && key < hi {
            let at = seg.index.partition_point(|e| entry_key(e) <= key);
            let pos = if at == 0 { 0 } else { seg.index[at - 1].pos };
            return Ok(Plan::Scan {
                file: seg.file.clone(),
                pos,
                end_pos: seg.len,
            });
        }
    }
    Err(())
}

/// The oldest retained position at or after `key` (an eid when `by_eid`, else an offset).
fn gap_at(inner: &Inner, key: u64, by_eid: bool) -> Gap {
    let candidates = inner
        .segments
        .iter()
        .map(|s| (s.first_eid, s.first_offset))
        .chain(inner.mem.front().map(|e| (e.eid, e.offset)))
        .chain(std::iter::once((inner.next_eid, inner.total)));
    for (eid, offset) in candidates {
        let k = if by_eid { eid } else { offset };
        if k >= key {
            return Gap {
                oldest_eid: eid,
                oldest_offset: offset,
            };
        }
    }
    Gap {
        oldest_eid: inner.next_eid,
        oldest_offset: inner.total,
    }
}

fn slice_mem(mem: &VecDeque<OutputEvent>, from: u64, until: u64, max: usize) -> (Vec<Bytes>, u64) {
    let first = mem.partition_point(|e| e.offset + e.data.len() as u64 <= from);
    let mut next = from;
    let mut size = 0;
    let mut chunks = Vec::new();
    for ev in mem.range(first..) {
        if size >= max || ev.offset >= until {
            break;
        }
        let end = ev.offset + ev.data.len() as u64;
        let lo = (next - ev.offset) as usize;
        let hi = (until.min(end) - ev.offset) as usize;
        if hi > lo {
            let piece = ev.data.slice(lo..hi);
            size += piece.len();
            next += piece.len() as u64;
            chunks.push(piece);
        }
    }
    (chunks, next)
}

/// Writes every byte of `bufs`, at most `IOV_MAX` (1024) slices per call.
fn write_all_vectored(mut file: &File, bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut bufs = bufs;
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        let n = bufs.len().min(IOV_MAX);
        match file.write_vectored(&bufs[..n]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => IoSlice::advance_slices(&mut bufs, k),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A spill record as `scan` sees it, its data still in the block read.
struct Record<'a> {
    eid: u64,
    offset: u64,
    ts_ms: u64,
    stream: Stream,
    block: &'a Bytes,
    data: Range<usize>,
}

impl Record<'_> {
    fn data(&self) -> &[u8] {
        &self.block[self.data.clone()]
    }

    /// Part of the record's data, sharing the block read (no copy).
    fn share(&self, part: Range<usize>) -> Bytes {
        let at = self.data.start;
        self.block.slice(at + part.start..at + part.end)
    }

    fn to_event(&self) -> OutputEvent {
        OutputEvent {
            eid: self.eid,
            offset: self.offset,
            ts_ms: self.ts_ms,
            stream: self.stream,
            data: self.block.slice(self.data.clone()),
        }
    }
}

/// What `scan` does after showing a record: go on (`More`), stop after it
/// (`Last`), or stop before it, leaving it unread (`Stop`).
enum Take {
    More,
    Last,
    Stop,
}

/// How `scan` reads: on the calling thread from the page cache alone
/// (`preadv2` with `RWF_NOWAIT`), or blocking (on a blocking thread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ScanIo {
    Cached,
    Blocking,
}

/// Most a scan on the async thread reads (whole blocks) before it returns
/// what it has: a batch of very short lines is many records per byte of
/// data (a 256 KiB batch of 1-byte lines, 7.5 MiB of records), and the
/// worker's other tasks wait meanwhile. The reader reads on at its cursor.
const CACHED_SCAN_MAX: usize = 256 * 1024;

/// Off once the kernel or file system refused `RWF_NOWAIT`: every read then
/// goes to a blocking thread.
static CACHED_READS: AtomicBool = AtomicBool::new(true);

/// Followers alive daemon-wide (each holds a [`Following`]).
static FOLLOWERS: AtomicUsize = AtomicUsize::new(0);

/// From this many followers on, spill reads try the page cache on the async
/// thread first. With one stream, reading there cost throughput: the
/// 256 MiB `curl -N` stream's ratio to the pipe fell to 0.59-0.68 (0.75-0.82
/// with blocking-thread reads, same run), since the worker that reads also
/// encodes and sends while the blocking thread's read ran beside it. With
/// 1,000 streams behind their windows, the blocking hand-offs were most of
/// execd's CPU and memory (909 ticks and 78.4 MiB against 376 and 57.3 MiB
/// reading inline, `bench/scale-curl.sh`).
const INLINE_READS_FROM: usize = 16;

/// A follower's place in [`FOLLOWERS`], for as long as it lives.
#[derive(Debug)]
pub struct Following(());

impl Default for Following {
    fn default() -> Self {
        FOLLOWERS.fetch_add(1, Ordering::Relaxed);
        Following(())
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        FOLLOWERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether to try a read from the page cache on the async thread first.
fn cached_reads() -> bool {
    CACHED_READS.load(Ordering::Relaxed) && inline_with(FOLLOWERS.load(Ordering::Relaxed))
}

/// Whether spill reads go inline with `followers` live followers.
fn inline_with(followers: usize) -> bool {
    followers >= INLINE_READS_FROM
}

/// Runs a spill read, `collect` (what it got and how the scan ended): from
/// the page cache on this thread when [`cached_reads`] and that settles it
/// (`got` says whether it got anything), else on a blocking thread. `None`
/// when the blocking thread failed.
async fn read_spill<T, F>(file: &Arc<File>, collect: F, got: fn(&T) -> bool) -> Option<T>
where
    T: Send + 'static,
    F: Fn(&File, ScanIo) -> (T, io::Result<()>) + Send + 'static,
{
    if cached_reads() {
        let (t, r) = collect(file, ScanIo::Cached);
        if settled(got(&t), &r) {
            return Some(t);
        }
    }
    let f = file.clone();
    tokio::task::spawn_blocking(move || collect(&f, ScanIo::Blocking).0)
        .await
        .ok()
}

/// Whether a scan from the page cache alone settles a read: it ended, or
/// got something before it needed the disk (the rest is read next time).
/// Otherwise the read is done again on a blocking thread.
fn settled(got: bool, r: &io::Result<()>) -> bool {
    match r {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::Unsupported => {
            CACHED_READS.store(false, Ordering::Relaxed);
            false
        }
        Err(_) => got,
    }
}

/// The read size for a scan that returns about `max_bytes`: one read for a
/// whole batch of lines of 0.5 KiB or longer, starting at the reader's
/// cursor, within [`SCAN_BLOCK`, `SCAN_BLOCK_MAX`].
fn scan_block(max_bytes: usize) -> usize {
    max_bytes
        .saturating_add(max_bytes / 16 + 2 * RECORD_HEADER)
        .clamp(SCAN_BLOCK, SCAN_BLOCK_MAX)
}

/// Reads `want` bytes of `file` at `pos` into a new block, without zeroing
/// it first. A `Cached` read returns fewer when the rest is not in the page
/// cache (`WouldBlock` when none is).
fn read_block(file: &File, pos: u64, want: usize, io: ScanIo) -> io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(want);
    while buf.len() < want {
        let at = i64::try_from(pos + buf.len() as u64)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let room = want - buf.len();
        let spare = &mut buf.spare_capacity_mut()[..room];
        let n = match io {
            ScanIo::Cached => match sys::pread_cached_uninit(file.as_fd(), spare, at) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !buf.is_empty() => break,
                r => r?,
            },
            ScanIo::Blocking => sys::pread_uninit(file.as_fd(), spare, at)?,
        };
        if n == 0 {
            if io == ScanIo::Cached && !buf.is_empty() {
                break;
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        // SAFETY: the read initialised the first `n` bytes of the spare
        // capacity (at most `want - len`).
        unsafe { buf.set_len(buf.len() + n) };
    }
    Ok(buf.freeze())
}

/// Reads spill records from `pos` to `end_pos` in blocks of about `block`
/// bytes, showing each to `f` until it says stop. A record's data is shared
/// with (sliced from) its block, not copied, by a caller that keeps it.
/// Returns where the first record not consumed starts, and why the scan
/// ended early if it did (a `Cached` scan: `WouldBlock` when the rest is
/// not in the page cache, or once it has read [`CACHED_SCAN_MAX`]).
fn scan(
    file: &File,
    mut pos: u64,
    end_pos: u64,
    block: usize,
    io: ScanIo,
    mut f: impl FnMut(Record<'_>) -> Take,
) -> (u64, io::Result<()>) {
    let mut block = block.max(RECORD_HEADER);
    let mut read = 0usize;
    while pos < end_pos {
        if io == ScanIo::Cached && read >= CACHED_SCAN_MAX {
            return (pos, Err(io::ErrorKind::WouldBlock.into()));
        }
        let want = ((end_pos - pos) as usize).min(block);
        let buf = match read_block(file, pos, want, io) {
            Ok(b) => b,
            Err(e) => return (pos, Err(e)),
        };
        let got = buf.len();
        read += got;
        let mut at = 0usize;
        let mut need = 0usize;
        while got - at >= RECORD_HEADER {
            let h = &buf[at..at + RECORD_HEADER];
            let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
            let len = u32::from_le_bytes(h[25..29].try_into().unwrap_or([0; 4])) as usize;
            if got - at < RECORD_HEADER + len {
                need = RECORD_HEADER + len;
                break;
            }
            let stream = if h[24] == Stream::Stderr as u8 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let rec = Record {
                eid: u64_at(0),
                offset: u64_at(8),
                ts_ms: u64_at(16),
                stream,
                block: &buf,
                data: at + RECORD_HEADER..at + RECORD_HEADER + len,
            };
            match f(rec) {
                Take::More => at += RECORD_HEADER + len,
                Take::Last => return (pos + (at + RECORD_HEADER + len) as u64, Ok(())),
                Take::Stop => return (pos + at as u64, Ok(())),
            }
        }
        pos += at as u64;
        if got < want {
            // Only a `Cached` read comes back short: the rest is not cached.
            return (pos, Err(io::ErrorKind::WouldBlock.into()));
        }
        if at == 0 {
            if need > block && want == block {
                // A record larger than the block: read it whole.
                block = need;
                continue;
            }
            return (
                pos,
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "truncated spill record",
                )),
            );
        }
    }
    (pos, Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};

    fn log(window: usize, cap: u64, dir: &Path) -> OutputLog {
        OutputLog::new(
            "t".into(),
            LogLimits {
                window,
                spill_cap: cap,
            },
            MemBudget::new(usize::MAX / 2),
            Arc::new(DataDir::open(Some(dir)).unwrap()),
        )
    }

    fn tmp(name: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("execd-output-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    /// One read of `n` 1 KiB lines: the lines are slices of one allocation,
    /// as the run loop makes them.
    fn read_of(n: usize, tag: u8) -> (Bytes, Vec<Bytes>) {
        let mut line = vec![tag; 1023];
        line.push(b'\n');
        let chunk = Bytes::from(line.repeat(n));
        let lines = (0..n)
            .map(|i| chunk.slice(i * 1024..(i + 1) * 1024))
            .collect();
        (chunk, lines)
    }

    fn within(b: &Bytes, chunk: &Bytes) -> bool {
        let (lo, hi) = (
            chunk.as_ptr() as usize,
            chunk.as_ptr() as usize + chunk.len(),
        );
        (lo..hi).contains(&(b.as_ptr() as usize))
    }

    #[tokio::test]
    async fn over_the_budget_a_read_is_not_kept_alive_by_its_last_lines() {
        let dir = tmp("pin");
        let l = OutputLog::new(
            "t".into(),
            LogLimits {
                window: 1 << 20,
                spill_cap: 1 << 30,
            },
            MemBudget::new(150 * 1024),
            Arc::new(DataDir::open(Some(&dir)).unwrap()),
        );
        // Under the budget, a read stays as it is (slices, no copy).
        let (first, lines) = read_of(100, b'a');
        l.append(Stream::Stdout, 0, lines);
        let evs = l.read_events(1, usize::MAX).await.unwrap();
        assert_eq!(evs.len(), 100);
        assert!(evs.iter().all(|e| within(&e.data, &first)));
        let slots = l.lock().mem.capacity();
        assert!(slots >= 100, "{slots}");
        // The next read goes over it: most of it spills, and what stays in
        // memory is a copy, not a slice of the read.
        let (second, lines) = read_of(64, b'b');
        l.append(Stream::Stdout, 0, lines);
        let kept = {
            let inner = l.lock();
            assert!(inner.mem.len() < 64, "{}", inner.mem.len());
            // The deque gave back the room the spill emptied.
            assert!(inner.mem.capacity() < slots, "{}", inner.mem.capacity());
            inner.mem.iter().cloned().collect::<Vec<_>>()
        };
        assert!(!kept.is_empty());
        assert!(kept.iter().all(|e| !within(&e.data, &second)));
        // Replay is exact: every byte, from the spill and from memory.
        let mut all = Vec::new();
        let mut at = 0;
        while at < l.head().total_bytes {
            let r = l.read_bytes(at, u64::MAX, usize::MAX).await;
            assert_eq!(r.start, at);
            all.extend(r.chunks.concat());
            at = r.next;
        }
        assert_eq!(all, [first, second].concat());
        assert_eq!(l.dropped_bytes(), 0);
        drop(l);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn memory_only_roundtrip() {
        let l = log(1 << 20, 0, &tmp("mem"));
        for i in 0..10 {
            l.append(Stream::Stdout, 0, [Bytes::from(format!("line {i}\n"))]);
        }
        let evs = l.read_events(3, usize::MAX).await.unwrap();
        assert_eq!(evs.len(), 8);
        assert_eq!(evs[0].eid, 3);
        assert_eq!(&evs[0].data[..], b"line 2\n");
        let r = l.read_bytes(2, u64::MAX, usize::MAX).await;
        let all: Vec<u8> = r.chunks.concat();
        assert!(all.starts_with(b"ne 0\nline 1\n"));
        assert_eq!(r.next, l.head().total_bytes);
        drop(l);
        let _ = std::fs::remove_dir_all(tmp("mem"));
    }

    #[tokio::test]
    async fn spill_keeps_everything_readable() {
        let dir = tmp("spill");
        let l = log(4096, 1 << 30, &dir);
        let mut expect = Vec::new();
        for i in 0..5000u32 {
            let s = if i % 3 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            let line = format!("{i:06} {}\n", "x".repeat((i % 50) as usize));
            expect.extend_from_slice(line.as_bytes());
            l.append(s, i as u64, [Bytes::from(line)]);
        }
        // Every event, by eid, in order, from spill and memory.
        let mut next = 1;
        let mut got = Vec::new();
        while next < l.head().next_eid {
            let evs = l.read_events(next, 10_000).await.unwrap();
            assert_eq!(evs[0].eid, next);
            for e in &evs {
                assert_eq!(e.stream == Stream::Stderr, (e.eid - 1) % 3 == 0);
                got.extend_from_slice(&e.data);
            }
            next = evs.last().unwrap().eid + 1;
        }
        assert_eq!(got, expect);
        // And by byte offset from an arbitrary point.
        let mut off = 12345;
        let mut bytes = Vec::new();
        loop {
            let r = l.read_bytes(off, u64::MAX, 7000).await;
            if r.chunks.is_empty() {
                break;
            }
            for c in r.chunks {
                bytes.extend_from_slice(&c);
            }
            off = r.next;
        }
        assert_eq!(bytes, &expect[12345..]);
        drop(l);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "spill files removed on drop"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_spill_of_more_events_than_one_writev_takes_reads_back_whole() {
        // Short lines in a large window: one spill moves thousands of events,
        // more than the 1024 slices a single writev accepts.
        let dir = tmp("iov");
        let l = log(512 * 1024, 1 << 30, &dir);
        let mut expect = Vec::new();
        for batch in 0..40u32 {
            let lines: Vec<Bytes> = (0..1000u32)
                .map(|i| Bytes::from(format!("{}\n", batch * 1000 + i)))
                .collect();
            for line in &lines {
                expect.extend_from_slice(line);
            }
            l.append(Stream::Stdout, u64::from(batch), lines);
        }
        assert!(l.lock().segments.front().is_some(), "something was spilled");
        let mut next = 1;
        let mut got = Vec::new();
        while next < l.head().next_eid {
            let evs = l.read_events(next, 64 * 1024).await.unwrap();
            assert_eq!(evs[0].eid, next);
            for e in &evs {
                got.extend_from_slice(&e.data);
            }
            next = evs.last().unwrap().eid + 1;
        }
        assert_eq!(got, expect);
        let r = l.read_bytes(100_000, 100_010, usize::MAX).await;
        assert_eq!(r.chunks.concat(), &expect[100_000..100_010]);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_following_a_spilling_writer_sees_every_event_once() {
        let dir = tmp("follow");
        // A small window, so that the writer spills every few lines while
        // the reader reads, from memory or from the spill.
        let l = Arc::new(log(8 * 1024, 1 << 30, &dir));
        let line = |i: u64| Bytes::from(format!("{i:08} {}\n", "y".repeat((i % 300) as usize)));
        const N: u64 = 20_000;
        let writer = {
            let l = l.clone();
            std::thread::spawn(move || {
                for i in 1..=N {
                    l.append(Stream::Stdout, 0, [line(i)]);
                }
                l.finish();
            })
        };
        let mut head_rx = l.watch();
        let mut next = 1u64;
        loop {
            let head = *head_rx.borrow_and_update();
            let evs = l.read_events(next, 4096).await.expect("nothing is lost");
            for ev in &evs {
                assert_eq!(ev.eid, next);
                assert_eq!(ev.data, line(next));
                next += 1;
            }
            if evs.is_empty() {
                if head.finished && next > N {
                    break;
                }
                head_rx.changed().await.unwrap();
            }
        }
        writer.join().unwrap();
        assert!(l.lock().segments.front().is_some(), "something was spilled");
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stuck_spill_write_blocks_no_reader() {
        use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
        use nix::sys::stat::Mode;
        use std::io::Read;
        use std::sync::mpsc;
        use std::time::Duration;

        let dir = tmp("stuck");
        // A 256 KiB window: its first spill writes about 128 KiB.
        let l = Arc::new(log(256 * 1024, 1 << 30, &dir));
        // The first spill segment is a FIFO that nobody drains yet: the
        // spill's write fills its 64 KiB and blocks, like a disk stalled by
        // write-back. (The data directory never opens an existing name, so
        // the FIFO is handed to it through its test hook.)
        let fifo = dir.join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::S_IRWXU).unwrap();
        let fd = open(
            &fifo,
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        let mut drain = File::from(fd);
        // A write end of our own until the log has opened its own, so that
        // reading does not see end-of-file before the log writes.
        let early = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        let segment = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        l.dir.plant("t.0", segment);

        let writer = {
            let l = l.clone();
            std::thread::spawn(move || {
                for i in 0..300u32 {
                    let line = vec![b'a' + (i % 26) as u8; 1024];
                    l.append(Stream::Stdout, 0, [Bytes::from(line)]);
                }
            })
        };
        // One byte out means the writer is in its spill write, which cannot
        // finish until the FIFO is drained further.
        let mut one = [0u8; 1];
        drain.read_exact(&mut one).unwrap();
        drop(early);

        // Readers still get through, and the events being spilled are still
        // served from memory.
        let (tx, rx) = mpsc::channel();
        let read = {
            let l = l.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                let evs = rt.block_on(l.read_events(1, usize::MAX));
                let _ = tx.send((l.oldest_eid(), evs));
            })
        };
        let (oldest, evs) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a reader waited for the spill write");
        assert_eq!(oldest, 1);
        let evs = evs.unwrap();
        assert_eq!(evs[0].eid, 1);
        assert_eq!(&evs[0].data[..], &[b'a'; 1024][..]);

        // Drain the FIFO to its end (the log closes it when dropped).
        let reader = std::thread::spawn(move || {
            let mut n = 1u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match drain.read(&mut buf) {
                    Ok(0) => return n,
                    Ok(k) => n += k as u64,
                    Err(e) => panic!("fifo: {e}"),
                }
            }
        });
        writer.join().unwrap();
        // The reading thread drops its handle on the log only after it has
        // sent its answer (and shut its runtime down): without this join,
        // `into_inner` below raced with that drop and failed now and then.
        read.join().unwrap();
        assert_eq!(l.head().next_eid, 301);
        let kept = l.lock().mem.len() as u64;
        assert!(kept < 300, "something was spilled");
        drop(Arc::into_inner(l).expect("the writer is done"));
        let spilled = reader.join().unwrap();
        assert_eq!(spilled, (300 - kept) * (RECORD_HEADER as u64 + 1024));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Lines of 9 bytes to 40 KiB (more than a scan block), by eid.
    fn varied(i: u64) -> Bytes {
        let n = (i * 7919 % 3000) as usize + if i.is_multiple_of(61) { 40_000 } else { 0 };
        Bytes::from(format!("{i:08} {}\n", "z".repeat(n)))
    }

    #[tokio::test]
    async fn a_cursor_reader_behind_rotating_segments_gets_each_event_once_or_a_gap() {
        let dir = tmp("cursor");
        // Segments of 128 KiB, two kept; the writer outruns the reader.
        let l = log(4096, 256 * 1024, &dir);
        let mut cur = ReadCursor::default();
        let (mut written, mut next, mut skipped, mut from_spill) = (1u64, 1u64, 0u64, 0);
        while written <= 6000 {
            for _ in 0..20 {
                l.append(Stream::Stdout, 0, [varied(written)]);
                written += 1;
            }
            for _ in 0..3 {
                let in_mem = l.lock().mem.front().is_some_and(|f| next >= f.eid);
                match l.read_events_at(next, 8 * 1024, &mut cur).await {
                    Ok(evs) => {
                        for e in &evs {
                            assert_eq!(e.eid, next);
                            assert_eq!(e.data, varied(next));
                            next += 1;
                        }
                        if !in_mem && !evs.is_empty() {
                            from_spill += 1;
                            let at = cur.0.as_ref().expect("a spill read leaves a cursor");
                            assert_eq!(at.eid, next);
                        }
                    }
                    Err(gap) => {
                        assert!(gap.oldest_eid > next, "{gap:?} at {next}");
                        skipped += gap.oldest_eid - next;
                        next = gap.oldest_eid;
                    }
                }
            }
        }
        // Then it catches up, from the spill into memory.
        while next < written {
            match l.read_events_at(next, 64 * 1024, &mut cur).await {
                Ok(evs) => {
                    for e in &evs {
                        assert_eq!(e.eid, next);
                        assert_eq!(e.data, varied(next));
                        next += 1;
                    }
                }
                Err(gap) => panic!("{gap:?} at {next} once the writer stopped"),
            }
        }
        assert!(l.lock().seg_no > 4, "segments rotated");
        assert!(
            skipped > 0,
            "the cap discarded what the reader had not read"
        );
        assert!(from_spill > 100, "{from_spill}");
        // A cursor is used only in its own segment, while it is retained.
        let inner = l.lock();
        let (a, b) = (&inner.segments[0], &inner.segments[1]);
        let at = |file: &Arc<File>, pos: u64, eid: u64| {
            let c = ReadCursor(Some(SpillPos {
                file: Arc::downgrade(file),
                pos,
                eid,
            }));
            c.plan(&inner, eid)
                .map(|Plan::Scan { file, pos, end_pos }| (Arc::as_ptr(&file), pos, end_pos))
        };
        let b_file = Arc::as_ptr(&b.file);
        assert_eq!(at(&b.file, 0, b.first_eid), Some((b_file, 0, b.len)));
        assert_eq!(at(&a.file, 0, b.first_eid), None, "another segment's");
        assert_eq!(at(&a.file, a.len, a.end_eid), None, "past its end");
        let gone = Arc::new(File::open(&dir).unwrap());
        assert_eq!(at(&gone, 0, a.first_eid), None, "a discarded segment's");
        drop(inner);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn many_followers_read_the_page_cache_inline() {
        // One stream reads on a blocking thread (its throughput), many inline.
        assert!(!inline_with(1));
        assert!(inline_with(INLINE_READS_FROM));
        // Followers are counted while they live (other tests may hold some
        // too: they only add to the count).
        let held: Vec<Following> = (0..INLINE_READS_FROM)
            .map(|_| Following::default())
            .collect();
        assert!(inline_with(FOLLOWERS.load(Ordering::Relaxed)));
        drop(held);
    }

    #[test]
    fn a_scan_from_the_page_cache_reads_what_a_blocking_one_does() {
        let dir = tmp("scan");
        let l = log(4096, 1 << 30, &dir);
        for i in 1..=500 {
            l.append(Stream::Stdout, i, [varied(i)]);
        }
        let (file, len) = {
            let inner = l.lock();
            let seg = inner.segments.front().expect("spilled");
            (seg.file.clone(), seg.len)
        };
        let read = |io: ScanIo, block: usize, stop_at: u64| {
            let mut got = Vec::new();
            let (pos, r) = scan(&file, 0, len, block, io, |rec| {
                if rec.eid == stop_at {
                    return Take::Stop;
                }
                got.push((rec.eid, rec.share(0..rec.data().len())));
                Take::More
            });
            (got, pos, r.map_err(|e| e.kind()))
        };
        let blocking = read(ScanIo::Blocking, SCAN_BLOCK, u64::MAX);
        assert_eq!(blocking.1, len);
        assert!(blocking.0.len() > 400);
        for (eid, data) in &blocking.0 {
            assert_eq!(data, &varied(*eid));
        }
        // Just written, it is in the page cache (or the kernel refuses the
        // flag, and a blocking read follows).
        // A scan on the async thread stops after CACHED_SCAN_MAX; from
        // where it stopped, the next one goes on.
        let (mut cached, mut pos, mut scans) = (Vec::new(), 0, 0);
        let unsupported = loop {
            let (p, r) = scan(&file, pos, len, SCAN_BLOCK, ScanIo::Cached, |rec| {
                cached.push((rec.eid, rec.share(0..rec.data().len())));
                Take::More
            });
            assert!(p > pos || r.is_err());
            (pos, scans) = (p, scans + 1);
            match r.map_err(|e| e.kind()) {
                Ok(()) => break false,
                Err(io::ErrorKind::Unsupported) => break true,
                Err(io::ErrorKind::WouldBlock) => assert!(p < len),
                Err(e) => panic!("{e:?}"),
            }
        };
        if !unsupported {
            assert_eq!(cached, blocking.0);
            assert_eq!(pos, len);
            assert!(len > 2 * CACHED_SCAN_MAX as u64 && scans > 2, "{scans}");
        }
        // Stopped before a record, the scan says where that record starts;
        // a scan from there goes on with it.
        let (first, pos, r) = read(ScanIo::Blocking, 4096, 300);
        assert_eq!(r, Ok(()));
        let mut rest = Vec::new();
        let (end, r) = scan(&file, pos, len, SCAN_BLOCK_MAX, ScanIo::Blocking, |rec| {
            rest.push((rec.eid, rec.to_event().data));
            Take::More
        });
        assert!(r.is_ok() && end == len);
        assert_eq!(rest[0].0, 300);
        assert_eq!([first, rest].concat(), blocking.0);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn capped_spill_reports_gap() {
        let dir = tmp("cap");
        let l = log(1024, 8192, &dir);
        for i in 0..2000u32 {
            l.append(Stream::Stdout, 0, [Bytes::from(format!("{i:09}\n"))]);
        }
        let gap = l.read_events(1, 100).await.unwrap_err();
        assert!(gap.oldest_eid > 1);
        let evs = l.read_events(gap.oldest_eid, 100).await.unwrap();
        assert_eq!(evs[0].eid, gap.oldest_eid);
        let r = l.read_bytes(0, u64::MAX, 100).await;
        assert_eq!(r.start, gap.oldest_offset);
        drop(l);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
