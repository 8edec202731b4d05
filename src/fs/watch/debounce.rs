//! The debounce window: changes gathered between two sends, merged without
//! losing a kind or reordering anything. Pure logic, no system calls.
//!
//! A change to a path merges into the latest change already gathered for
//! that path when it is the same kind (a hundred writes are one `write`);
//! any other kind is a new entry after it, so `create, write, remove` of one
//! file stays three events in that order. The window opens with the first
//! change gathered and closes a fixed time later (it is not pushed back by
//! later changes, so a steady stream of changes still goes out at least once
//! per window). At most `cap` entries are held: a change past that is
//! dropped and counted, and the next send says so with an `overflow` event.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Event, Kind};

/// The changes gathered for the next send.
pub struct Pending {
    events: Vec<Event>,
    /// The index in `events` of the latest entry for each path.
    latest: HashMap<PathBuf, usize>,
    /// When the window opened (the first change gathered).
    opened: Option<Instant>,
    /// Changes dropped for want of room since the last send.
    dropped: u64,
    cap: usize,
    /// Bumped by every send, so an index handed out before it is not
    /// mistaken for one of the new window.
    generation: u64,
}

/// Where a gathered change sits, for [`Pending::pair`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    generation: u64,
    index: usize,
}

impl Pending {
    pub fn new(cap: usize) -> Pending {
        Pending {
            events: Vec::new(),
            latest: HashMap::new(),
            opened: None,
            dropped: 0,
            cap: cap.max(1),
            generation: 0,
        }
    }

    /// Entries gathered.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// When the window closes, if it is open.
    pub fn deadline(&self, window: Duration) -> Option<Instant> {
        self.opened.map(|t| t + window)
    }

    /// Gathers `ev`; where it sits, or `None` if it was dropped (no room).
    pub fn push(&mut self, ev: Event, now: Instant) -> Option<Slot> {
        if let Some(&i) = self.latest.get(&ev.path) {
            let last = &self.events[i];
            if last.kind == ev.kind && last.old_path == ev.old_path {
                return Some(self.slot(i));
            }
        }
        if self.events.len() >= self.cap {
            self.dropped += 1;
            self.opened.get_or_insert(now);
            return None;
        }
        self.opened.get_or_insert(now);
        let i = self.events.len();
        self.latest.insert(ev.path.clone(), i);
        self.events.push(ev);
        Some(self.slot(i))
    }

    fn slot(&self, index: usize) -> Slot {
        Slot {
            generation: self.generation,
            index,
        }
    }

    /// The second half of a rename: `from` became `to`. If the first half
    /// (a `rename` of `from` with no `old_path`) is still gathered at `slot`,
    /// it becomes the paired event; otherwise a paired `rename` is added.
    pub fn pair(
        &mut self,
        slot: Option<Slot>,
        from: &Path,
        to: PathBuf,
        is_dir: bool,
        timestamp: u64,
        now: Instant,
    ) {
        if let Some(s) = slot.filter(|s| s.generation == self.generation) {
            if let Some(ev) = self.events.get_mut(s.index) {
                if ev.kind == Kind::Rename && ev.old_path.is_none() && ev.path == from {
                    let old = std::mem::replace(&mut ev.path, to.clone());
                    ev.old_path = Some(old);
                    if self.latest.get(from) == Some(&s.index) {
                        self.latest.remove(from);
                    }
                    self.latest.insert(to, s.index);
                    return;
                }
            }
        }
        let mut ev = Event::change(Kind::Rename, to, is_dir, timestamp);
        ev.old_path = Some(from.to_path_buf());
        self.push(ev, now);
    }

    /// Everything gathered, in order, and how many changes were dropped;
    /// the window closes.
    pub fn take(&mut self) -> (Vec<Event>, u64) {
        self.latest.clear();
        self.opened = None;
        self.generation += 1;
        let dropped = std::mem::take(&mut self.dropped);
        (std::mem::take(&mut self.events), dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: Kind, p: &str) -> Event {
        Event::change(kind, PathBuf::from(p), false, 1)
    }

    fn kinds(evs: &[Event]) -> Vec<(Kind, String)> {
        evs.iter()
            .map(|e| (e.kind, e.path.display().to_string()))
            .collect()
    }

    #[test]
    fn bursts_merge_without_losing_kinds_or_order() {
        let now = Instant::now();
        let mut p = Pending::new(100);
        p.push(ev(Kind::Create, "a"), now);
        for _ in 0..100 {
            p.push(ev(Kind::Write, "a"), now);
        }
        p.push(ev(Kind::Write, "b"), now);
        p.push(ev(Kind::Chmod, "a"), now);
        p.push(ev(Kind::Write, "a"), now);
        p.push(ev(Kind::Remove, "a"), now);
        let (evs, dropped) = p.take();
        assert_eq!(dropped, 0);
        assert_eq!(
            kinds(&evs),
            [
                (Kind::Create, "a".into()),
                (Kind::Write, "a".into()),
                (Kind::Write, "b".into()),
                (Kind::Chmod, "a".into()),
                (Kind::Write, "a".into()),
                (Kind::Remove, "a".into()),
            ]
        );
        assert_eq!(p.len(), 0);
        assert_eq!(p.deadline(Duration::from_secs(1)), None);
    }

    #[test]
    fn the_window_opens_with_the_first_change_and_is_not_pushed_back() {
        let t0 = Instant::now();
        let w = Duration::from_millis(250);
        let mut p = Pending::new(10);
        assert_eq!(p.deadline(w), None);
        p.push(ev(Kind::Create, "a"), t0);
        p.push(ev(Kind::Create, "b"), t0 + Duration::from_millis(200));
        assert_eq!(p.deadline(w), Some(t0 + w));
    }

    #[test]
    fn past_the_cap_changes_are_counted_not_kept() {
        let now = Instant::now();
        let mut p = Pending::new(2);
        assert!(p.push(ev(Kind::Create, "a"), now).is_some());
        assert!(p.push(ev(Kind::Create, "b"), now).is_some());
        // A merge needs no room.
        assert!(p.push(ev(Kind::Create, "a"), now).is_some());
        assert!(p.push(ev(Kind::Create, "c"), now).is_none());
        assert!(p.push(ev(Kind::Create, "d"), now).is_none());
        let (evs, dropped) = p.take();
        assert_eq!(evs.len(), 2);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn renames_pair_in_place_or_as_a_new_event() {
        let now = Instant::now();
        let mut p = Pending::new(10);
        p.push(ev(Kind::Write, "x"), now);
        let s = p.push(ev(Kind::Rename, "a"), now);
        p.pair(s, Path::new("a"), "b".into(), false, 1, now);
        // A later write to the new name merges with nothing before it.
        p.push(ev(Kind::Write, "b"), now);
        let (evs, _) = p.take();
        assert_eq!(evs.len(), 3);
        assert_eq!(evs[1].kind, Kind::Rename);
        assert_eq!(evs[1].path, PathBuf::from("b"));
        assert_eq!(evs[1].old_path, Some(PathBuf::from("a")));
        assert_eq!(evs[2].kind, Kind::Write);

        // The first half already sent: the pair is a new event.
        let s = p.push(ev(Kind::Rename, "c"), now);
        let _ = p.take();
        p.pair(s, Path::new("c"), "d".into(), true, 1, now);
        let (evs, _) = p.take();
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].path, PathBuf::from("d"));
        assert_eq!(evs[0].old_path, Some(PathBuf::from("c")));
        assert!(evs[0].is_dir);
    }
}
