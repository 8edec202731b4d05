//! Streaming file bodies: each read on a blocking thread, one chunk ahead.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};

use crate::fs::lines::LineWindow;
use crate::server::zerocopy::{Offer, Sink, FRAME_MAX};
use crate::server::Body;

/// Size of each read while streaming a download (copied, not zero-copy).
/// Each read goes into a buffer whose bytes are sent as they are; see
/// [`Reader::bufs`] for how many a download holds.
const READ_CHUNK: usize = 256 * 1024;

/// What a download does with each chunk it reads (`None`: the end of the
/// range): the bytes to send, if any, and whether to stop.
type Shape = Box<dyn FnMut(Option<Bytes>) -> (Option<Bytes>, bool) + Send>;

/// The reading side of a download: a file, a position, and a shape.
struct Reader {
    file: File,
    pos: u64,
    end: u64,
    shape: Shape,
    /// Two read buffers used in turn. The chunk read into one is sent
    /// without a copy; by the time that buffer's turn comes again hyper has
    /// usually written and dropped the chunk, and the buffer is reused
    /// (else a new one is made and the old one freed when hyper drops it).
    /// Reuse keeps the allocator from returning the memory to the kernel
    /// and faulting it in again on every read. Held per download: these
    /// two, and at most the chunk hyper is writing besides, so 768 KiB.
    bufs: [BytesMut; 2],
    turn: usize,
    done: bool,
}

/// Reads up to `want` bytes of `file` at `pos` into `buf`'s spare capacity
/// (at least `want`), without zeroing it first: the kernel's copy from the
/// page cache is the only one. Returns the bytes read, split off `buf`.
fn read_chunk(file: &File, pos: u64, want: usize, buf: &mut BytesMut) -> std::io::Result<Bytes> {
    let off =
        i64::try_from(pos).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    debug_assert!(buf.is_empty() && buf.capacity() >= want);
    let want = want.min(buf.capacity() - buf.len());
    let n = crate::process::sys::pread_uninit(
        file.as_fd(),
        &mut buf.spare_capacity_mut()[..want],
        off,
    )?;
    // SAFETY: `pread` initialised the first `n` (at most `want`) bytes of the
    // spare capacity.
    unsafe { buf.set_len(n) };
    Ok(buf.split().freeze())
}

impl Reader {
    /// Reads until there is something to send, the end, or a bound on the
    /// reads per step (so that skipping lines does not hold a thread long).
    /// `Ok(None)`: finished.
    fn step(&mut self) -> std::io::Result<Option<Bytes>> {
        for _ in 0..64 {
            if self.done {
                return Ok(None);
            }
            let want = READ_CHUNK.min(self.end.saturating_sub(self.pos) as usize);
            let chunk = if want == 0 {
                Bytes::new()
            } else {
                let buf = &mut self.bufs[self.turn];
                self.turn ^= 1;
                if !buf.try_reclaim(want) {
                    *buf = BytesMut::with_capacity(READ_CHUNK);
                }
                read_chunk(&self.file, self.pos, want, buf)?
            };
            let n = chunk.len();
            self.pos += n as u64;
            let (out, stop) = (self.shape)((n > 0).then_some(chunk));
            self.done = n == 0 || stop;
            if let Some(b) = out.filter(|b| !b.is_empty()) {
                return Ok(Some(b));
            }
        }
        Ok(Some(Bytes::new()))
    }
}

type Step = tokio::task::JoinHandle<(Reader, std::io::Result<Option<Bytes>>)>;

/// A download body. Each read runs on a blocking thread only while it
/// reads, and the next read starts as soon as a chunk is handed to hyper, so
/// at most two chunks are held and no thread waits on a slow client. A read
/// error ends the body with an error, so hyper breaks the connection instead
/// of finishing a response that looks complete but is not.
struct FileBody {
    step: Option<Step>,
}

fn start_step(mut r: Reader) -> Step {
    tokio::task::spawn_blocking(move || {
        let out = r.step();
        (r, out)
    })
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        loop {
            let Some(step) = self.step.as_mut() else {
                return Poll::Ready(None);
            };
            let (reader, out) = match Pin::new(step).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(e)) => {
                    self.step = None;
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
            };
            self.step = None;
            match out {
                Ok(Some(b)) => {
                    self.step = Some(start_step(reader));
                    if !b.is_empty() {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
                    }
                }
                Ok(None) => return Poll::Ready(None),
                Err(e) => {
                    tracing::warn!(error = %e, "download read failed");
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Streams `file` from `start` to `end` through `shape`.
fn stream_file(file: File, start: u64, end: u64, shape: Shape) -> Body {
    let reader = Reader {
        file,
        pos: start,
        end,
        shape,
        bufs: [BytesMut::new(), BytesMut::new()],
        turn: 0,
        done: false,
    };
    Body::new(FileBody {
        step: Some(start_step(reader)),
    })
}

/// Streams `len` bytes of `file` from `start`. A file that shrinks meanwhile
/// ends the body short of its Content-Length, which breaks the response
/// rather than passing off a short file as whole.
pub fn stream_bytes(file: File, start: u64, len: u64) -> Body {
    stream_file(file, start, start + len, Box::new(|chunk| (chunk, false)))
}

/// Streams the line window of `file`, in pieces of about a read each.
pub fn stream_lines(file: File, offset: u64, limit: Option<u64>) -> Body {
    let mut window = LineWindow::new(offset, limit);
    let mut out = Vec::new();
    stream_file(
        file,
        0,
        u64::MAX,
        Box::new(move |chunk| {
            if let Some(c) = &chunk {
                window.feed(c, &mut out);
            }
            let flush = chunk.is_none() || window.done() || out.len() >= READ_CHUNK;
            let piece = flush.then(|| Bytes::from(std::mem::take(&mut out)));
            (piece, window.done())
        }),
    )
}

/// A `multipart/byteranges` body (RFC 9110 §14.6) of `ranges` of `file`,
/// and its length. Each part's reader is made only when the part before it
/// has been sent, so one read buffer is held at a time.
pub fn multipart_ranges(
    file: File,
    size: u64,
    ranges: Vec<(u64, u64)>,
    boundary: &str,
    offer: &Offer,
) -> (Body, u64) {
    let offer = offer.clone();
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let head = |i: usize, a: u64, b: u64| {
        format!(
            "{}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n",
            if i == 0 { "" } else { "\r\n" }
        )
    };
    let tail = format!("\r\n--{boundary}--\r\n");
    let len = ranges
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| head(i, a, b).len() as u64 + (b - a + 1))
        .sum::<u64>()
        + tail.len() as u64;
    let heads: Vec<(Bytes, u64, u64)> = ranges
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| (Bytes::from(head(i, a, b)), a, b))
        .collect();
    type Frames = std::pin::Pin<
        Box<
            dyn futures_core::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>> + Send,
        >,
    >;
    let parts = futures_util::stream::iter(heads).flat_map(move |(h, a, b)| {
        let head = futures_util::stream::once(async move { Ok(http_body::Frame::data(h)) });
        let data: Frames = match file.try_clone() {
            Ok(f) => Box::pin(
                file_bytes(f, a, b - a + 1, &offer)
                    .into_data_stream()
                    .map(|r| r.map(http_body::Frame::data)),
            ),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        head.chain(data)
    });
    let end =
        futures_util::stream::once(async move { Ok(http_body::Frame::data(Bytes::from(tail))) });
    let body = http_body_util::StreamBody::new(parts.chain(end)).boxed_unsync();
    (body, len)
}

/// `len` bytes of `file` from `start`: sent with `sendfile` if the
/// connection takes `offer` (plain HTTP/1.1, see `server::zerocopy`), else
/// read and copied as [`stream_bytes`] does. Decided when first polled,
/// once the server has seen the response.
pub fn file_bytes(file: File, start: u64, len: u64, offer: &Offer) -> Body {
    Body::new(SpanBody {
        state: SpanState::Undecided(Some(file)),
        offer: offer.clone(),
        pos: start,
        end: start + len,
    })
}

struct SpanBody {
    state: SpanState,
    offer: Offer,
    pos: u64,
    end: u64,
}

enum SpanState {
    Undecided(Option<File>),
    ZeroCopy(Arc<File>, Sink),
    Copy(Body),
}

impl http_body::Body for SpanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                SpanState::Undecided(file) => {
                    let Some(file) = file.take() else {
                        return Poll::Ready(None);
                    };
                    this.state = match this.offer.sink() {
                        Some(sink) => {
                            // Read-ahead for the whole span: sendfile then
                            // finds the pages cached more often.
                            let _ = nix::fcntl::posix_fadvise(
                                &file,
                                i64::try_from(this.pos).unwrap_or(i64::MAX),
                                i64::try_from(this.end - this.pos).unwrap_or(0),
                                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_SEQUENTIAL,
                            );
                            SpanState::ZeroCopy(Arc::new(file), sink.clone())
                        }
                        None => SpanState::Copy(stream_bytes(file, this.pos, this.end - this.pos)),
                    };
                }
                SpanState::ZeroCopy(file, sink) => {
                    if this.pos >= this.end {
                        return Poll::Ready(None);
                    }
                    let n = (this.end - this.pos).min(FRAME_MAX as u64) as usize;
                    let frame = sink.frame(file, this.pos, n);
                    this.pos += n as u64;
                    return Poll::Ready(Some(Ok(http_body::Frame::data(frame))));
                }
                SpanState::Copy(body) => return Pin::new(body).poll_frame(cx),
            }
        }
    }
}
