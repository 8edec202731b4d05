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

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
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
}

/// An exchange in progress: from its request head until its response has
/// been sent (or given up).
pub struct Exchange(Arc<Activity>);

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
}

impl Watch {
    pub fn new(activity: Arc<Activity>) -> Watch {
        Watch {
            activity,
            last: 0,
            quiet: 0,
        }
    }

    /// One look: true when the connection has been idle at two looks in a
    /// row and should be closed.
    pub fn idle(&mut self) -> bool {
        let events = self.activity.events.load(Relaxed);
        if events != self.last || self.activity.busy.load(Relaxed) > 0 {
            self.last = events;
            self.quiet = 0;
            return false;
        }
        self.quiet = self.quiet.saturating_add(1);
        self.quiet >= 2
    }

    /// Starts the count of quiet looks again, as if the connection had just
    /// shown activity.
    pub fn restart(&mut self) {
        self.quiet = 0;
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
