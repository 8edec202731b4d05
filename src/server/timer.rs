//! The timer behind hyper's header-read deadline (slowloris protection).
//!
//! hyper asks for a new sleep at the start of every request's head and drops
//! it once the head is parsed. With `TokioTimer` that is an allocation, an
//! insertion into tokio's timer wheel and a removal from it per request
//! (about 200 of execd's 8,300 user-space instructions per `/ping`, by
//! callgrind).
//! Here each connection keeps one tokio `Sleep`; the sleeps hyper gets share
//! it and only move its deadline, which for a later deadline is an atomic
//! store, not a trip to the wheel. The deadlines hyper sets are unchanged.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// One per connection: hand it to the connection's HTTP/1 builder.
#[derive(Clone, Default)]
pub struct ConnTimer {
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    /// tokio's clock, which the deadlines are kept on.
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(Deadline {
            at: deadline.into(),
            shared: self.shared.clone(),
        })
    }
}

/// A deadline on the connection's shared sleep.
struct Deadline {
    at: tokio::time::Instant,
    shared: Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>,
}

impl Future for Deadline {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Only this connection's task polls it, so the lock is never contended;
        // a poisoned one still holds a usable sleep.
        let mut slot = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(self.at)));
        if sleep.deadline() != self.at {
            sleep.as_mut().reset(self.at);
        }
        sleep.as_mut().poll(cx)
    }
}

impl Sleep for Deadline {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    /// Waits for `d` on `timer`; returns how long that took on tokio's clock.
    async fn wait(timer: &ConnTimer, d: Duration) -> Duration {
        let start = Instant::now();
        timer.sleep(d).await;
        start.elapsed()
    }

    #[tokio::test(start_paused = true)]
    async fn each_deadline_fires_when_due_on_the_one_shared_sleep() {
        let timer = ConnTimer::default();
        assert_eq!(
            wait(&timer, Duration::from_secs(30)).await,
            Duration::from_secs(30)
        );
        // A later deadline than the last moves the shared sleep forward...
        assert_eq!(
            wait(&timer, Duration::from_secs(5)).await,
            Duration::from_secs(5)
        );
        // ...and an earlier one than a pending (dropped) deadline moves it back.
        let mut pending = timer.sleep(Duration::from_secs(100));
        assert!(futures_poll_once(pending.as_mut()).await.is_pending());
        drop(pending);
        assert_eq!(
            wait(&timer, Duration::from_secs(1)).await,
            Duration::from_secs(1)
        );
        // A deadline already past is ready at once.
        let past = timer.sleep_until(timer.now() - Duration::from_millis(1));
        assert!(futures_poll_once(past).await.is_ready());
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut f).poll(cx))).await
    }
}
