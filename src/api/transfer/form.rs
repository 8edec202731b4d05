//! Bounds on what a `multipart/form-data` parser holds in memory.
//!
//! multer streams part contents, but it buffers everything it reads while it
//! looks for the first delimiter (the preamble) or for the blank line that
//! ends a part's headers: a body with no delimiter, or a part header that
//! never ends, was held whole (+200 MiB of RSS per 200 MiB sent). Its own
//! `SizeLimit` bounds whole streams and part contents, not these. So the body
//! goes through [`Bounded`] on its way to multer: it follows the delimiters
//! itself and fails the stream once the preamble, or the delimiter, padding
//! and headers of a part, exceed [`MAX_FORM_HEAD`] bytes. Part contents and
//! the epilogue pass unbounded and uncopied.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;

/// The longest preamble, and the longest delimiter line plus headers of one
/// part, that a form may have.
pub const MAX_FORM_HEAD: usize = 16 * 1024;

/// Why [`Bounded`] failed a form.
#[derive(Debug, thiserror::Error)]
pub enum FormLimit {
    #[error("no multipart delimiter within the first {MAX_FORM_HEAD} bytes")]
    Preamble,
    #[error("a multipart part's headers exceed {MAX_FORM_HEAD} bytes")]
    Headers,
}

/// Where the scan is in the form, as multer will be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first `--boundary`.
    Preamble,
    /// Just after a delimiter, `seen` bytes of a possible closing `--`.
    Delimited { seen: u8 },
    /// Transport padding up to the delimiter line's CRLF.
    Padding,
    /// A part's headers, up to their blank line.
    Headers,
    /// A part's contents, up to `CRLF--boundary`.
    Contents,
    /// After the closing delimiter: multer reads no further.
    Epilogue,
}

/// A form's delimiters followed through a stream of chunks.
struct Scan {
    stage: Stage,
    /// `--boundary`: the first delimiter.
    first: Vec<u8>,
    /// `CRLF--boundary`: every later one.
    next: Vec<u8>,
    /// The end of the last chunk, for a pattern split across chunks.
    tail: Vec<u8>,
    /// Bytes of the preamble, or of the current delimiter line and headers.
    count: usize,
}

impl Scan {
    fn new(boundary: &str) -> Scan {
        Scan {
            stage: Stage::Preamble,
            first: format!("--{boundary}").into_bytes(),
            next: format!("\r\n--{boundary}").into_bytes(),
            tail: Vec::new(),
            count: 0,
        }
    }

    /// Follows one chunk; an error once a bound is exceeded.
    fn feed(&mut self, mut data: &[u8]) -> Result<(), FormLimit> {
        while !data.is_empty() {
            match self.stage {
                Stage::Epilogue => return Ok(()),
                Stage::Delimited { seen } => {
                    if data[0] == b'-' {
                        data = &data[1..];
                        self.count += 1;
                        self.stage = match seen {
                            0 => Stage::Delimited { seen: 1 },
                            _ => Stage::Epilogue,
                        };
                    } else {
                        self.stage = Stage::Padding;
                    }
                }
                Stage::Contents => match find(&mut self.tail, &self.next, data) {
                    Some(end) => {
                        data = &data[end..];
                        self.count = 0;
                        self.stage = Stage::Delimited { seen: 0 };
                    }
                    None => return Ok(()),
                },
                stage => {
                    let (pattern, over, then): (&[u8], _, _) = match stage {
                        Stage::Preamble => (
                            self.first.as_slice(),
                            FormLimit::Preamble,
                            Stage::Delimited { seen: 0 },
                        ),
                        Stage::Padding => (&b"\r\n"[..], FormLimit::Headers, Stage::Headers),
                        _ => (&b"\r\n\r\n"[..], FormLimit::Headers, Stage::Contents),
                    };
                    let found = find(&mut self.tail, pattern, data);
                    self.count += found.unwrap_or(data.len());
                    if self.count > MAX_FORM_HEAD {
                        return Err(over);
                    }
                    match found {
                        Some(end) => {
                            data = &data[end..];
                            if then == (Stage::Delimited { seen: 0 }) {
                                self.count = 0;
                            }
                            self.stage = then;
                        }
                        None => return Ok(()),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Finds `pattern` in the stream whose previous chunk ended with `tail` and
/// whose next chunk is `data`: the offset in `data` just past the match.
/// Without a match `tail` keeps the last `pattern.len() - 1` bytes seen.
fn find(tail: &mut Vec<u8>, pattern: &[u8], data: &[u8]) -> Option<usize> {
    let keep = pattern.len().saturating_sub(1);
    if !tail.is_empty() {
        // A match that starts in the tail ends within `keep` bytes of data.
        let mut joined = Vec::with_capacity(tail.len() + keep);
        joined.extend_from_slice(tail);
        joined.extend_from_slice(&data[..data.len().min(keep)]);
        if let Some(i) = memchr::memmem::find(&joined, pattern) {
            let end = i + pattern.len() - tail.len();
            tail.clear();
            return Some(end);
        }
    }
    if let Some(i) = memchr::memmem::find(data, pattern) {
        tail.clear();
        return Some(i + pattern.len());
    }
    if data.len() >= keep {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - keep..]);
    } else {
        tail.extend_from_slice(data);
        let extra = tail.len().saturating_sub(keep);
        tail.drain(..extra);
    }
    None
}

/// A form body on its way to multer, failed once a bound is exceeded.
pub struct Bounded<S> {
    inner: S,
    scan: Scan,
    failed: bool,
}

impl<S> Bounded<S> {
    pub fn new(inner: S, boundary: &str) -> Bounded<S> {
        Bounded {
            inner,
            scan: Scan::new(boundary),
            failed: false,
        }
    }
}

impl<S, E> Stream for Bounded<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Item = Result<Bytes, Box<dyn std::error::Error + Send + Sync>>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        match std::task::ready!(Pin::new(&mut this.inner).poll_next(cx)) {
            Some(Ok(b)) => match this.scan.feed(&b) {
                Ok(()) => Poll::Ready(Some(Ok(b))),
                Err(e) => {
                    this.failed = true;
                    Poll::Ready(Some(Err(Box::new(e))))
                }
            },
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            None => Poll::Ready(None),
        }
    }
}

/// multer's error, with the cause when [`Bounded`] (or the body) failed the
/// stream: multer's own text says only "failed to read stream".
pub fn describe(e: &multer::Error) -> String {
    match e {
        multer::Error::StreamReadFailed(inner) => format!("{e}: {inner}"),
        _ => e.to_string(),
    }
}

/// True when multer failed because [`Bounded`] cut the form.
pub fn over_limit(e: &multer::Error) -> bool {
    match e {
        multer::Error::StreamReadFailed(inner) => inner.downcast_ref::<FormLimit>().is_some(),
        _ => false,
    }
}

/// The request body as a stream that yields once after every chunk. Without
/// the pause, multer would pull everything the socket has ready into its own
/// buffer before handing out a byte; with it, at most a chunk or so waits.
pub struct Paced {
    inner: http_body_util::BodyDataStream<crate::server::RequestBody>,
    rest: bool,
}

impl Paced {
    pub fn new(body: crate::server::RequestBody) -> Paced {
        Paced {
            inner: http_body_util::BodyDataStream::new(body),
            rest: false,
        }
    }
}

impl futures_core::Stream for Paced {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.rest {
            self.rest = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            self.rest = true;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in chunks of `n` bytes.
    fn feed(body: &[u8], n: usize) -> Result<Stage, FormLimit> {
        let mut s = Scan::new("XB");
        for c in body.chunks(n) {
            s.feed(c)?;
        }
        Ok(s.stage)
    }

    const FORM: &[u8] = b"preamble\r\n--XB\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue with --X and \r\n--X in it\r\n--XB  \r\nContent-Disposition: form-data; name=\"b\"\r\n\r\n\r\n\r\nmore\r\n--XB--\r\nepilogue";

    #[test]
    fn a_form_is_followed_to_its_end_whatever_the_chunks() {
        for n in 1..=FORM.len() {
            assert_eq!(feed(FORM, n).ok(), Some(Stage::Epilogue), "chunks of {n}");
        }
    }

    #[test]
    fn contents_and_epilogue_are_unbounded() {
        let mut body = b"--XB\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 10 * MAX_FORM_HEAD));
        body.extend_from_slice(b"\r\n--XB--");
        body.extend(std::iter::repeat_n(b'y', 10 * MAX_FORM_HEAD));
        assert_eq!(feed(&body, 4096).ok(), Some(Stage::Epilogue));
    }

    #[test]
    fn a_long_preamble_or_header_fails() {
        let body = vec![b'-'; MAX_FORM_HEAD + 1];
        assert!(matches!(feed(&body, 1000), Err(FormLimit::Preamble)));
        let mut body = b"--XB\r\nX-Pad: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_FORM_HEAD));
        assert!(matches!(feed(&body, 1000), Err(FormLimit::Headers)));
        // The second part's headers are bounded as the first's.
        let mut body = b"--XB\r\nA: b\r\n\r\ndata\r\n--XB\r\nX-Pad: ".to_vec();
        body.extend(std::iter::repeat_n(b'a', MAX_FORM_HEAD));
        assert!(matches!(feed(&body, 7), Err(FormLimit::Headers)));
        // Padding that never ends its line.
        let mut body = b"--XB".to_vec();
        body.extend(std::iter::repeat_n(b' ', MAX_FORM_HEAD + 1));
        assert!(matches!(feed(&body, 100), Err(FormLimit::Headers)));
    }
}
