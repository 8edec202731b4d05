//! Streaming response bodies and the headers of an event stream. A body is
//! either polled straight from a stream of frames (hyper asks for the next
//! frame only when it has room to write it), or fed through a bounded
//! channel by a task; either way a slow client holds back its producer, and
//! a client gone drops the body at once.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response};
use http_body::Frame;
use tokio::sync::mpsc;

use super::Body;

/// Streaming bodies currently open (for `/metrics`).
static OPEN: AtomicUsize = AtomicUsize::new(0);

pub fn open_streams() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// A response body that polls `frames` itself, in the connection's task.
pub fn stream_body<S>(frames: S) -> Body
where
    S: futures_core::Stream<Item = Bytes> + Send + 'static,
{
    OPEN.fetch_add(1, Ordering::Relaxed);
    Body::new(StreamBody {
        frames: Box::pin(frames),
    })
}

/// A response body fed by a stream of frames.
struct StreamBody<S> {
    frames: Pin<Box<S>>,
}

impl<S> Drop for StreamBody<S> {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: futures_core::Stream<Item = Bytes>> http_body::Body for StreamBody<S> {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.frames.as_mut().poll_next(cx).map(|o| {
            o.map(|b| {
                crate::counters::streamed(b.len());
                Ok(Frame::data(b))
            })
        })
    }
}

/// A sender and the body it feeds; `depth` frames may be in flight.
pub fn channel(depth: usize) -> (mpsc::Sender<Bytes>, Body) {
    let (tx, mut rx) = mpsc::channel(depth);
    let frames = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, stream_body(frames))
}

/// A 200 event-stream response around `body`.
pub fn response(body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    resp
}
