//! Zero-copy file bodies on plain HTTP/1.1 connections: the file's bytes go
//! from the page cache to the socket with `sendfile(2)`, never through a
//! buffer of ours.
//!
//! hyper owns the socket and writes whatever a body yields, so the body and
//! the socket meet halfway:
//!
//! - a body that may be sent this way puts an [`Offer`] in its response's
//!   extensions; the server accepts it (gives it the connection's [`Sink`])
//!   only on a plain HTTP/1.1 connection whose socket is a [`ZeroCopyIo`];
//! - the body then queues each piece of the file as a job (descriptor,
//!   offset, length) and yields, in its place, a frame of the same length
//!   that points into [`placeholder`], a read-only mapping never read;
//! - hyper counts the frame against `Content-Length` and hands it, in order
//!   and uncopied (the connection writes through `writev`, its queue
//!   strategy), to [`ZeroCopyIo`], which recognises the placeholder by its
//!   address and `sendfile`s the job's bytes instead.
//!
//! Anything that does not line up (a placeholder with no job, or lengths
//! that differ) is an I/O error: hyper breaks the connection rather than
//! send a wrong byte. So does a file that ends early. HTTP/2 connections
//! never accept an offer: their bodies are copied as before.
//!
//! While file bytes are being sent, the socket keeps at most
//! [`NOTSENT_LOWAT`] bytes queued and not yet sent (`TCP_NOTSENT_LOWAT`).
//! Without that bound, `sendfile` fills the whole send buffer (4 MiB), and
//! from then on the bytes leave whenever the client's acknowledgements
//! open its window: the kernel transmits them, and on loopback delivers
//! them, in the softirq of the *client's* acknowledgement, that is on the
//! client's CPU. A client that writes the file to disk is CPU-bound, so
//! every cycle of the server's TCP work it is made to run slows it down:
//! `curl -o FILE` used 1.5-1.9 s of CPU per GiB against 1.1-1.3 s with the
//! bound (the server's 0.15 s became 0.5 s, on its own CPU). The option is
//! set when the first file piece goes out and cleared when plain bytes
//! follow with no piece queued, so streamed responses on a kept-alive
//! connection keep the system's default.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// The longest frame that stands for file bytes.
pub const FRAME_MAX: usize = 16 * 1024 * 1024;

/// `TCP_NOTSENT_LOWAT` while file bytes are sent (see the module's doc).
/// Of 16, 32, 64 and 128 KiB, 32 KiB left curl and Python clients the
/// least CPU; 16 KiB cost the server more wake-ups (0.67 against 0.5 s of
/// CPU per GiB).
pub const NOTSENT_LOWAT: u32 = 32 * 1024;

/// What placeholder frames point into: [`FRAME_MAX`] bytes of anonymous,
/// read-only, unreserved memory, mapped once and never read (only its
/// address is used), so it costs no memory and no binary size (a static
/// of zeros would sit in `.rodata`). Empty if it could not be mapped: then
/// no connection offers zero-copy.
fn placeholder() -> &'static [u8] {
    static MAP: OnceLock<&'static [u8]> = OnceLock::new();
    MAP.get_or_init(|| {
        use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
        let Some(len) = std::num::NonZeroUsize::new(FRAME_MAX) else {
            return &[];
        };
        // SAFETY: a fresh private anonymous mapping at an address the kernel
        // chooses; it aliases nothing.
        let map = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_NORESERVE,
            )
        };
        match map {
            // SAFETY: the mapping is FRAME_MAX readable bytes, never unmapped
            // or written, so a shared 'static slice of it stays valid.
            Ok(p) => unsafe { std::slice::from_raw_parts(p.as_ptr().cast::<u8>(), FRAME_MAX) },
            Err(e) => {
                tracing::warn!(error = %e, "zero-copy downloads off: no placeholder mapping");
                &[]
            }
        }
    })
}

/// Whether zero-copy bodies can be offered at all.
pub fn available() -> bool {
    placeholder().len() == FRAME_MAX
}

fn is_placeholder(buf: &[u8]) -> bool {
    let map = placeholder();
    let start = map.as_ptr() as usize;
    let p = buf.as_ptr() as usize;
    !buf.is_empty() && !map.is_empty() && p >= start && p + buf.len() <= start + map.len()
}

/// A piece of a file to send.
struct Job {
    file: Arc<File>,
    offset: u64,
    left: usize,
}

/// A connection's queue of jobs, in the order their frames were yielded,
/// and what the connection's driver knows of its socket (see
/// [`ZeroCopyIo::wants_input`] and [`ZeroCopyIo::park`]).
#[derive(Default)]
struct Jobs {
    queue: Mutex<VecDeque<Job>>,
    /// The last read found no bytes: hyper waits for input.
    read_pending: AtomicBool,
    /// hyper's shutdown of the socket is to be skipped: the connection is
    /// being parked, not closed.
    parking: AtomicBool,
}

impl Jobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Job>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where a body queues file pieces: the connection's job queue.
#[derive(Clone)]
pub struct Sink(Arc<Jobs>);

impl Sink {
    /// Queues `len` bytes of `file` from `offset` (`len` at most
    /// [`FRAME_MAX`]) and returns the frame that stands for them.
    pub fn frame(&self, file: &Arc<File>, offset: u64, len: usize) -> Bytes {
        let len = len.min(FRAME_MAX);
        self.0.lock().push_back(Job {
            file: file.clone(),
            offset,
            left: len,
        });
        Bytes::from_static(&placeholder()[..len])
    }
}

/// A response extension: the body may be sent from a file, if the
/// connection can. Shared by the body and the response.
#[derive(Clone, Default)]
pub struct Offer(Arc<OnceLock<Sink>>);

impl Offer {
    /// The connection's sink, once the server accepted the offer; read by
    /// the body when it is first polled (after the server saw the response).
    pub fn sink(&self) -> Option<&Sink> {
        self.0.get()
    }

    pub(super) fn accept(&self, sink: Sink) {
        let _ = self.0.set(sink);
    }
}

/// A plain TCP connection that sends placeholder frames from their files.
/// It also lets an idle connection leave hyper (see `server::serve_http1`):
/// it tells whether hyper waits for input, can skip hyper's shutdown, and
/// gives back first the bytes hyper had read but not parsed.
pub struct ZeroCopyIo {
    tcp: TcpStream,
    jobs: Arc<Jobs>,
    /// Read before anything from the socket: what a parked connection's
    /// last hyper had read of a request head and not parsed.
    unread: Bytes,
    /// [`NOTSENT_LOWAT`] is set on the socket.
    lowat: bool,
}

impl ZeroCopyIo {
    pub fn new(tcp: TcpStream) -> ZeroCopyIo {
        ZeroCopyIo {
            tcp,
            jobs: Arc::default(),
            unread: Bytes::new(),
            lowat: false,
        }
    }

    /// A handle on the connection's socket state for its driver.
    pub fn state(&self) -> IoState {
        IoState(self.jobs.clone())
    }

    /// The socket back from a parked hyper, with the bytes it had read and
    /// not parsed, read again first.
    pub fn unparked(mut self, unread: Bytes) -> ZeroCopyIo {
        self.unread = unread;
        self.jobs.parking.store(false, Relaxed);
        self.jobs.read_pending.store(false, Relaxed);
        self
    }

    /// Whether bytes wait to be read again (a parked request head's start).
    pub fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }

    /// The socket, to wait on while parked.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The sink bodies on this connection queue their pieces in.
    pub fn sink(&self) -> Sink {
        Sink(self.jobs.clone())
    }

    /// Bounds the bytes queued unsent to [`NOTSENT_LOWAT`] (`on`), or puts
    /// back the default. A failure only costs speed: logged, not returned.
    fn set_lowat(&mut self, on: bool) {
        use std::os::fd::AsFd;
        let bytes = if on { NOTSENT_LOWAT } else { 0 };
        if let Err(e) = crate::process::sys::set_tcp_notsent_lowat(self.tcp.as_fd(), bytes) {
            tracing::debug!(error = %e, "TCP_NOTSENT_LOWAT not set");
        }
        self.lowat = on;
    }

    /// Before plain bytes: the default back if no file piece is queued.
    fn plain_write(&mut self) {
        if self.lowat && self.jobs.lock().is_empty() {
            self.set_lowat(false);
        }
    }

    /// Sends up to `want` bytes of the front job: `want` is what is left of
    /// its placeholder frame, which must be what is left of the job.
    fn poll_sendfile(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if !self.lowat {
            self.set_lowat(true);
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            let mut jobs = self.jobs.lock();
            let Some(job) = jobs.front_mut() else {
                return Poll::Ready(Err(io::Error::other(
                    "zero-copy: a placeholder frame with no file queued",
                )));
            };
            if job.left != want {
                return Poll::Ready(Err(io::Error::other(
                    "zero-copy: placeholder and file piece out of step",
                )));
            }
            let mut off = i64::try_from(job.offset).map_err(io::Error::other)?;
            let r = self.tcp.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(&self.tcp, &*job.file, Some(&mut off), want)
                    .map_err(io::Error::from)
            });
            match r {
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "file ended before its Content-Length",
                    )))
                }
                Ok(n) => {
                    crate::counters::sent_from_file(n);
                    job.offset += n as u64;
                    job.left -= n;
                    if job.left == 0 {
                        jobs.pop_front();
                    }
                    return Poll::Ready(Ok(n));
                }
                // Readiness cleared by `try_io`: wait for it again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// What a connection's driver sees of its [`ZeroCopyIo`] while hyper owns it.
pub struct IoState(Arc<Jobs>);

impl IoState {
    /// The last read found nothing: hyper is waiting for the client.
    pub fn wants_input(&self) -> bool {
        self.0.read_pending.load(Relaxed)
    }

    /// From now on hyper's shutdown of the socket is skipped: the connection
    /// is parked when hyper lets it go.
    pub fn park(&self) {
        self.0.parking.store(true, Relaxed);
    }

    pub fn parking(&self) -> bool {
        self.0.parking.load(Relaxed)
    }
}

impl AsyncRead for ZeroCopyIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.unread.is_empty() {
            let n = this.unread.len().min(buf.remaining());
            buf.put_slice(&this.unread.split_to(n));
            return Poll::Ready(Ok(()));
        }
        let r = Pin::new(&mut this.tcp).poll_read(cx, buf);
        this.jobs.read_pending.store(r.is_pending(), Relaxed);
        r
    }
}

impl AsyncWrite for ZeroCopyIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if is_placeholder(buf) {
            return this.poll_sendfile(cx, buf.len());
        }
        this.plain_write();
        Pin::new(&mut this.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Plain bytes up to the first placeholder go in one writev; a
        // placeholder in front goes by itself.
        match bufs.iter().position(|b| is_placeholder(b)) {
            Some(0) => this.poll_sendfile(cx, bufs[0].len()),
            plain => {
                this.plain_write();
                let end = plain.unwrap_or(bufs.len());
                Pin::new(&mut this.tcp).poll_write_vectored(cx, &bufs[..end])
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.jobs.parking.load(Relaxed) {
            // Parked, not closed: the socket stays open for the next request.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_known_by_address() {
        assert!(available());
        let map = placeholder();
        assert!(is_placeholder(&map[..1]));
        assert!(is_placeholder(&map[FRAME_MAX - 5..]));
        assert!(!is_placeholder(&map[..0]));
        let copy = vec![0u8; 16];
        assert!(!is_placeholder(&copy));
        assert!(!is_placeholder(b"HTTP/1.1 200 OK\r\n"));
    }
}
