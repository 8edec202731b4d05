//! At-most-once creation: client-chosen operation ids (`X-EXECD-OPERATION-ID`).
//!
//! A client whose creation request (a command, a PTY, a session run) lost
//! its response retries with the same id and the same body, and gets the
//! resource the first attempt made instead of a second one. The table maps
//! each id to the request's fingerprint (route, path parameters, body bytes)
//! and, once made, the resource's id. Bounded: at most `cap` live ids, each
//! kept for `ttl`; an id past its `ttl` is remembered as expired (up to
//! `cap` more, oldest forgotten first) so a very late retry is told so
//! rather than run again. A retry that arrives while the first attempt is
//! still creating waits for its outcome (a watch channel the attempt's guard
//! closes when it completes or fails) and is then answered as a later retry
//! would be: never a transient "in progress" error, which clients mistook
//! for a conflict. No HTTP here: `api::operation` shapes answers.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// What an operation creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Command,
    Pty,
    SessionRun,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Command => "command",
            Kind::Pty => "pty",
            Kind::SessionRun => "session_run",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// The first attempt is making the resource now.
    Pending,
    /// Made: the resource's id.
    Created(String),
}

/// One live operation, as the lookup route shows it.
#[derive(Clone, Debug)]
pub struct Operation {
    pub id: String,
    pub kind: Kind,
    pub state: State,
    pub created_at: SystemTime,
}

struct Entry {
    op: Operation,
    fingerprint: [u8; 32],
    born: Instant,
    /// Closed when the first attempt completes or fails (its `Pending`
    /// holds the sender).
    settled: watch::Receiver<()>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpError {
    #[error("operation id must be 1-128 characters of A-Z a-z 0-9 . _ : -")]
    InvalidId,
    #[error("operation {0} was used with a different request")]
    Conflict(String),
    #[error("operation {0} has expired; its outcome is no longer known")]
    Expired(String),
    #[error("operation {0} is not known")]
    NotFound(String),
    #[error("too many operations in flight (at most {0}, --max-operations); retry later or without an operation id")]
    Full(usize),
}

/// What `begin` found.
pub enum Begin {
    /// A new operation: make the resource, then `complete` the guard.
    New(Pending),
    /// The same request before: the resource it made.
    Existing(Kind, String),
    /// The same request is being made now: wait for `Settled::wait`, then
    /// begin again (the resource, or the id free again if it failed).
    InFlight(Settled),
}

/// The first attempt of an operation, still creating.
pub struct Settled(watch::Receiver<()>);

impl Settled {
    /// Returns once the first attempt has completed or failed.
    pub async fn wait(mut self) {
        // The sender is never used to send: `changed` ends when it is dropped.
        while self.0.changed().await.is_ok() {}
    }
}

#[derive(Default)]
struct Inner {
    live: HashMap<String, Entry>,
    /// Live ids in the order they were begun.
    order: VecDeque<String>,
    expired: HashSet<String>,
    expired_order: VecDeque<String>,
}

pub struct Operations {
    inner: Mutex<Inner>,
    cap: usize,
    ttl: Duration,
}

/// The fingerprint of a creation request: its kind, scope (path
/// parameters) and body bytes.
pub fn fingerprint(kind: Kind, scope: &str, body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(kind.as_str().as_bytes());
    h.update([0]);
    h.update(scope.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

pub fn valid_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl Operations {
    pub fn new(cap: usize, ttl: Duration) -> Arc<Operations> {
        Arc::new(Operations {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
            ttl,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves ids past their ttl to the expired set.
    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(id) = inner.order.front() {
            let Some(e) = inner.live.get(id) else {
                inner.order.pop_front();
                continue;
            };
            // A pending operation is never expired under its maker.
            if now.duration_since(e.born) < self.ttl || e.op.state == State::Pending {
                break;
            }
            let Some(id) = inner.order.pop_front() else {
                break;
            };
            inner.live.remove(&id);
            if inner.expired.insert(id.clone()) {
                inner.expired_order.push_back(id);
            }
            while inner.expired_order.len() > self.cap {
                if let Some(old) = inner.expired_order.pop_front() {
                    inner.expired.remove(&old);
                }
            }
        }
    }

    pub fn begin(
        self: &Arc<Self>,
        id: &str,
        kind: Kind,
        fingerprint: [u8; 32],
    ) -> Result<Begin, OpError> {
        if !valid_id(id) {
            return Err(OpError::InvalidId);
        }
        let now = Instant::now();
        let mut inner = self.lock();
        self.expire(&mut inner, now);
        if let Some(e) = inner.live.get(id) {
            if e.fingerprint != fingerprint {
                return Err(OpError::Conflict(id.to_string()));
            }
            return match &e.op.state {
                State::Pending => Ok(Begin::InFlight(Settled(e.settled.clone()))),
                State::Created(r) => Ok(Begin::Existing(e.op.kind, r.clone())),
            };
        }
        if inner.expired.contains(id) {
            return Err(OpError::Expired(id.to_string()));
        }
        if inner.live.len() >= self.cap {
            return Err(OpError::Full(self.cap));
        }
        let (settle, settled) = watch::channel(());
        inner.live.insert(
            id.to_string(),
            Entry {
                op: Operation {
                    id: id.to_string(),
                    kind,
                    state: State::Pending,
                    created_at: SystemTime::now(),
                },
                fingerprint,
                born: now,
                settled,
            },
        );
        inner.order.push_back(id.to_string());
        Ok(Begin::New(Pending {
            table: self.clone(),
            id: Some(id.to_string()),
            _settle: settle,
        }))
    }

    pub fn get(&self, id: &str) -> Result<Operation, OpError> {
        let mut inner = self.lock();
        self.expire(&mut inner, Instant::now());
        if let Some(e) = inner.live.get(id) {
            return Ok(e.op.clone());
        }
        if inner.expired.contains(id) {
            return Err(OpError::Expired(id.to_string()));
        }
        Err(OpError::NotFound(id.to_string()))
    }

    pub fn live(&self) -> usize {
        self.lock().live.len()
    }
}

/// A begun operation. `complete` records the resource; dropped without it
/// (the creation failed, nothing was made), the id is free again. Either
/// way, retries waiting on it are woken once the table says so (the sender
/// is dropped after `complete`'s or `drop`'s update).
pub struct Pending {
    table: Arc<Operations>,
    id: Option<String>,
    _settle: watch::Sender<()>,
}

impl Pending {
    pub fn complete(mut self, resource: String) {
        if let Some(id) = self.id.take() {
            let mut inner = self.table.lock();
            if let Some(e) = inner.live.get_mut(&id) {
                e.op.state = State::Created(resource);
                // The ttl counts from creation.
                e.born = Instant::now();
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            let mut inner = self.table.lock();
            inner.live.remove(&id);
            inner.order.retain(|x| *x != id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_request_gets_the_resource_different_is_a_conflict() {
        let t = Operations::new(2, Duration::from_secs(60));
        let f = fingerprint(Kind::Command, "", b"{}");
        let Ok(Begin::New(p)) = t.begin("a", Kind::Command, f) else {
            panic!("new")
        };
        let Ok(Begin::InFlight(w)) = t.begin("a", Kind::Command, f) else {
            panic!("in flight")
        };
        p.complete("cmd1".into());
        // Settled by the completion (returns at once now).
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(w.wait());
        assert!(
            matches!(t.begin("a", Kind::Command, f), Ok(Begin::Existing(Kind::Command, r)) if r == "cmd1")
        );
        let g = fingerprint(Kind::Command, "", b"{ }");
        assert_eq!(
            t.begin("a", Kind::Command, g).err(),
            Some(OpError::Conflict("a".into()))
        );
        assert_eq!(
            t.begin("bad id", Kind::Command, f).err(),
            Some(OpError::InvalidId)
        );
        // A failed creation frees its id.
        let Ok(Begin::New(p)) = t.begin("b", Kind::Pty, f) else {
            panic!("new")
        };
        let Ok(Begin::InFlight(w)) = t.begin("b", Kind::Pty, f) else {
            panic!("in flight")
        };
        drop(p);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(w.wait());
        assert!(matches!(t.get("b"), Err(OpError::NotFound(_))));
        let Ok(Begin::New(_p)) = t.begin("b", Kind::Pty, f) else {
            panic!("new")
        };
        assert_eq!(t.begin("c", Kind::Pty, f).err(), Some(OpError::Full(2)));
    }

    #[test]
    fn past_the_ttl_an_id_is_expired_not_new() {
        let t = Operations::new(4, Duration::ZERO);
        let f = fingerprint(Kind::Command, "", b"x");
        let Ok(Begin::New(p)) = t.begin("a", Kind::Command, f) else {
            panic!("new")
        };
        p.complete("c".into());
        assert_eq!(t.get("a").err(), Some(OpError::Expired("a".into())));
        assert_eq!(
            t.begin("a", Kind::Command, f).err(),
            Some(OpError::Expired("a".into()))
        );
        assert_eq!(t.live(), 0);
    }
}
