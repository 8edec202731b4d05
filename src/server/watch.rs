//! Slowloris and idle-connection protection for HTTP/1 and HTTP/2
//! connections, with no timer per request.
//!
//! hyper's own header-read timeout reads the clock, boxes a sleep and turns
//! the connection's loop once more for every request: about 900 of the
//! 6,800 user-space instructions execd spent per `/ping` (callgrind). Instead
//! each connection counts its activity (request heads answered, responses
//! ended, exchanges in progress), and one sleep per connection looks at the
//! counts every half `--header-timeout`. A connection that serves nothing and
//! shows no activity at two looks in a row is closed. So a request head must
//! arrive within 1 to 1.5 times the timeout of the connection's start or of
//! the end of the previous response, and an idle keep-alive connection lasts
//! as long; a request being served, or a response being sent, however slowly,
//! is never cut.
//!
//! Except a request body that stalls. Each REST request body is a
//! [`RequestBody`], which counts its frames and whether a handler is waiting
//! on it. A body that a handler waits on and that shows no progress at two
//! looks in a row (so no byte for 1 to 1.5 times the timeout) has stalled:
//! on HTTP/1 the exchange is answered 408 and the connection closed after it
//! (closed at the next look if that did not take); on HTTP/2 the connection
//! is closed. A slow body is fine: each frame that arrives counts. A body
//! nobody is reading (the handler, or a proxied service, is busy) is not
//! waited on, so it never stalls.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

use super::Body;

/// One connection's activity. Updated only from the connection's own task,
/// read by its watch.
#[derive(Default)]
pub struct Activity {
    /// Request heads answered at once plus exchanges ended.
    events: AtomicU64,
    /// Exchanges in progress.
    busy: AtomicU32,
    /// Request body frames received.
    body_frames: AtomicU64,
    /// Request bodies a handler is waiting on (their last poll was pending).
    body_waits: AtomicU32,
    /// Set by the watch when a body stalled; taken by the exchange that
    /// answers it (HTTP/1, one exchange at a time).
    stalled: AtomicBool,
    /// A request or response of the connection's current hyper carried a
    /// `Connection` header (a `close`, an upgrade) or the request was not
    /// HTTP/1.1: hyper decides what follows, so the connection is not parked.
    unparkable: AtomicBool,
}

impl Activity {
    /// A request head arrived and was answered at once, with no body to send.
    pub fn answered(&self) {
        self.events.fetch_add(1, Relaxed);
    }

    /// A request head arrived; its exchange lasts until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Exchange {
        self.busy.fetch_add(1, Relaxed);
        Exchange(self.clone())
    }

    /// Marks a stalled body for its exchange to answer.
    pub fn stall(&self) {
        self.stalled.store(true, Relaxed);
    }

    /// Heads answered at once plus exchanges ended, so far.
    pub fn events(&self) -> u64 {
        self.events.load(Relaxed)
    }

    /// Whether the connection, idle since `events_then` was read, with at
    /// least one exchange ended since, may be parked: nothing in progress,
    /// and nothing asked hyper to close or upgrade the connection.
    pub fn parkable_since(&self, events_then: u64) -> bool {
        self.busy.load(Relaxed) == 0
            && self.events.load(Relaxed) != events_then
            && !self.unparkable.load(Relaxed)
    }

    /// The current hyper of the connection must end it itself.
    pub fn not_parkable(&self) {
        self.unparkable.store(true, Relaxed);
    }

    /// A new hyper takes the connection.
    pub fn rehosted(&self) {
        self.unparkable.store(false, Relaxed);
    }
}

/// An exchange in progress: from its request head until its response has
/// been sent (or given up).
pub struct Exchange(Arc<Activity>);

impl Exchange {
    /// True (once) when the watch found this connection's request body
    /// stalled.
    pub fn take_stalled(&self) -> bool {
        self.0.stalled.load(Relaxed) && self.0.stalled.swap(false, Relaxed)
    }

    /// See [`Activity::not_parkable`].
    pub fn not_parkable(&self) {
        self.0.not_parkable();
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.events.fetch_add(1, Relaxed);
        self.0.busy.fetch_sub(1, Relaxed);
    }
}

/// The looks a connection's watch takes, one per half timeout.
pub struct Watch {
    activity: Arc<Activity>,
    last: u64,
    quiet: u8,
    /// Body frames at the previous look, and whether a body was waited on.
    last_frames: u64,
    waited: bool,
    body_quiet: u8,
}

/// What a look found.
#[derive(Debug, PartialEq, Eq)]
pub enum Look {
    /// Serving, or idle for less than the timeout.
    Fine,
    /// Idle at two looks in a row: close.
    Idle,
    /// A request body waited on made no progress at two looks in a row.
    Stalled,
}

impl Watch {
    /// A watch from now on: what the connection did before is not news.
    pub fn new(activity: Arc<Activity>) -> Watch {
        Watch {
            last: activity.events.load(Relaxed),
            last_frames: activity.body_frames.load(Relaxed),
            activity,
            quiet: 0,
            waited: false,
            body_quiet: 0,
        }
    }

    /// One look: true when the connection has been idle at two looks in a
    /// row and should be closed.
    #[cfg(test)]
    pub fn idle(&mut self) -> bool {
        self.look() == Look::Idle
    }

    /// One look at the connection and at the request bodies it is reading.
    pub fn look(&mut self) -> Look {
        let frames = self.activity.body_frames.load(Relaxed);
        let waiting = self.activity.body_waits.load(Relaxed) > 0;
        if waiting && self.waited && frames == self.last_frames {
            self.body_quiet = self.body_quiet.saturating_add(1);
        } else {
            self.body_quiet = 0;
        }
        self.last_frames = frames;
        self.waited = waiting;
        if self.body_quiet >= 2 {
            return Look::Stalled;
        }
        let events = self.activity.events.load(Relaxed);
        if events != self.last || self.activity.busy.load(Relaxed) > 0 {
            self.last = events;
            self.quiet = 0;
            return Look::Fine;
        }
        self.quiet = self.quiet.saturating_add(1);
        if self.quiet >= 2 {
            Look::Idle
        } else {
            Look::Fine
        }
    }

    /// Tells the connection's exchange that its request body stalled.
    pub fn stall(&self) {
        self.activity.stall();
    }

    /// Quiet looks in a row so far.
    pub fn quiet_looks(&self) -> u8 {
        self.quiet
    }

    /// A watch that has already seen `n` quiet looks (a connection parked
    /// for that many half timeouts, see `server::Http1`).
    pub fn after_quiet_looks(mut self, n: u8) -> Watch {
        self.quiet = n;
        self
    }

    /// Starts the count of quiet looks again, as if the connection had just
    /// shown activity.
    pub fn restart(&mut self) {
        self.quiet = 0;
    }
}

/// A REST request's body: hyper's, counted for the watch (frames received,
/// and whether a handler waits on it).
pub struct RequestBody {
    inner: hyper::body::Incoming,
    /// None for a body that was empty from the start: nothing to watch.
    activity: Option<Arc<Activity>>,
    /// The last poll was pending: counted in `body_waits`.
    waiting: bool,
}

impl RequestBody {
    pub fn new(inner: hyper::body::Incoming, activity: &Arc<Activity>) -> RequestBody {
        let activity = (!http_body::Body::is_end_stream(&inner)).then(|| activity.clone());
        RequestBody {
            inner,
            activity,
            waiting: false,
        }
    }

    fn set_waiting(&mut self, waiting: bool) {
        if self.waiting == waiting {
            return;
        }
        self.waiting = waiting;
        if let Some(a) = &self.activity {
            if waiting {
                a.body_waits.fetch_add(1, Relaxed);
            } else {
                a.body_waits.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        self.set_waiting(false);
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if this.activity.is_some() {
            match &r {
                Poll::Pending => this.set_waiting(true),
                Poll::Ready(_) => {
                    this.set_waiting(false);
                    if let Some(a) = &this.activity {
                        a.body_frames.fetch_add(1, Relaxed);
                    }
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that ends its exchange when hyper drops it: once sent,
/// or when the connection ends.
pub struct Tracked {
    body: Body,
    _exchange: Exchange,
}

impl Tracked {
    pub fn body(body: Body, exchange: Exchange) -> Body {
        use http_body_util::BodyExt;
        Tracked {
            body,
            _exchange: exchange,
        }
        .boxed_unsync()
    }
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Looks `w` takes until it finds the connection idle (at most 10).
    fn looks_to_idle(w: &mut Watch) -> Option<usize> {
        (1..=10).find(|_| w.idle())
    }

    #[test]
    fn a_connection_is_idle_after_two_quiet_looks() {
        let a = Arc::new(Activity::default());
        let mut w = Watch::new(a.clone());
        assert_eq!(looks_to_idle(&mut w), Some(2));
        // Any head answered starts the count again.
        let mut w = Watch::new(a.clone());
        assert!(!w.idle());
        a.answered();
        assert_eq!(
            looks_to_idle(&mut w),
            Some(3),
            "the look that sees it, then two quiet ones"
        );
    }

    #[test]
    fn an_exchange_in_progress_keeps_the_connection() {
        let a = Arc::new(Activity::default());
        let mut w = Watch::new(a.clone());
        let ex = a.begin();
        assert_eq!(looks_to_idle(&mut w), None, "never idle while serving");
        // Its end counts as activity: two more quiet looks are needed.
        drop(ex);
        assert_eq!(looks_to_idle(&mut w), Some(3));
    }

    #[test]
    fn a_restarted_watch_needs_two_more_quiet_looks() {
        let a = Arc::new(Activity::default());
        let mut w = Watch::new(a);
        assert_eq!(looks_to_idle(&mut w), Some(2));
        assert!(w.idle(), "stays idle");
        w.restart();
        assert_eq!(looks_to_idle(&mut w), Some(2));
    }

    #[test]
    fn a_body_waited_on_without_progress_stalls_after_two_looks() {
        let a = Arc::new(Activity::default());
        let mut w = Watch::new(a.clone());
        let _ex = a.begin();
        a.body_waits.fetch_add(1, Relaxed);
        // The look that first sees the wait, then two without progress.
        assert_eq!(w.look(), Look::Fine);
        assert_eq!(w.look(), Look::Fine);
        assert_eq!(w.look(), Look::Stalled);
        // Progress between looks keeps it going, however slow.
        let mut w = Watch::new(a.clone());
        for _ in 0..10 {
            a.body_frames.fetch_add(1, Relaxed);
            assert_eq!(w.look(), Look::Fine);
        }
        // A body nobody waits on never stalls.
        a.body_waits.fetch_sub(1, Relaxed);
        for _ in 0..10 {
            assert_eq!(w.look(), Look::Fine);
        }
    }

    #[test]
    fn a_tracked_body_ends_its_exchange_when_dropped() {
        let a = Arc::new(Activity::default());
        let body = Tracked::body(super::super::full("x"), a.begin());
        assert_eq!(a.busy.load(Relaxed), 1);
        assert!(!http_body::Body::is_end_stream(&body));
        drop(body);
        assert_eq!(a.busy.load(Relaxed), 0);
        assert_eq!(a.events.load(Relaxed), 1);
    }
}
