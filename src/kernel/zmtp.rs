//! A minimal ZeroMQ (ZMTP 3.0, NULL security) client over Unix sockets
//! (ZeroMQ's `ipc` transport) or TCP: just what
//! talking to one Jupyter kernel needs. Each socket is one connection to
//! one peer, so there is no routing, queueing or reconnection to do.
//!
//! - greeting: 64 bytes each way; we announce 3.0, so subscriptions are
//!   sent as ZMTP 3.0 messages (`0x01` + topic), which libzmq accepts;
//! - handshake: a `READY` command with our `Socket-Type`; the peer's is read
//!   and checked to be one we can talk to;
//! - frames: flags (`MORE`, `LONG`, `COMMAND`) and a 1- or 8-byte length.
//!
//! Every message is bounded ([`MAX_MESSAGE`]): a bigger one is read to its
//! end and dropped, and the caller is told how big it was. Except that a
//! caller may take over a frame's body before it is read
//! ([`Reader::recv_until`]) and read it in pieces, as the IOPub reader does
//! for big `stream` messages.

use std::io;

use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

/// The reading half of a connection, whichever the transport.
pub type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Where a kernel's socket is.
#[derive(Clone, Debug)]
pub enum Endpoint {
    /// ZeroMQ `tcp://`.
    Tcp(std::net::SocketAddr),
    /// ZeroMQ `ipc://`: a Unix socket's path.
    Ipc(PathBuf),
}

/// Largest message (all parts together) accepted from a kernel.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Most parts in one message.
const MAX_PARTS: usize = 256;

const MORE: u8 = 0x01;
const LONG: u8 = 0x02;
const COMMAND: u8 = 0x04;

/// The socket types a kernel client uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// shell and control (the kernel's side is a ROUTER).
    Dealer,
    /// IOPub (the kernel's side is a PUB).
    Sub,
    /// heartbeat (the kernel's side echoes: REP or ROUTER).
    Req,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Dealer => "DEALER",
            Kind::Sub => "SUB",
            Kind::Req => "REQ",
        }
    }

    fn accepts(self, peer: &[u8]) -> bool {
        match self {
            Kind::Dealer => matches!(peer, b"ROUTER" | b"DEALER" | b"REP"),
            Kind::Sub => matches!(peer, b"PUB" | b"XPUB"),
            Kind::Req => matches!(peer, b"REP" | b"ROUTER"),
        }
    }
}

/// The reading half of a connected socket (after the handshake).
pub struct Reader<R = ReadHalf> {
    r: BufReader<R>,
    kind: Kind,
}

/// The writing half of a connected socket.
pub struct Writer {
    w: WriteHalf,
    kind: Kind,
}

fn proto(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Connects to `at`, exchanges greetings and `READY`, and subscribes to
/// everything when `kind` is [`Kind::Sub`].
pub async fn connect(at: &Endpoint, kind: Kind) -> io::Result<(Reader, Writer)> {
    let (r, w): (ReadHalf, WriteHalf) = match at {
        Endpoint::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
        Endpoint::Ipc(path) => {
            let (r, w) = UnixStream::connect(path).await?.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let mut r = BufReader::with_capacity(64 * 1024, r);
    let mut w = Writer { w, kind };

    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3; // version 3.0
    greeting[12..16].copy_from_slice(b"NULL");
    w.w.write_all(&greeting).await?;

    let mut peer = [0u8; 64];
    r.read_exact(&mut peer).await?;
    if peer[0] != 0xff || peer[9] & 1 != 1 {
        return Err(proto("not a ZMTP peer"));
    }
    if peer[10] < 3 {
        return Err(proto(format!(
            "ZMTP {}.x peer; 3.0 or later needed",
            peer[10]
        )));
    }
    if &peer[12..16] != b"NULL" || peer[16] != 0 {
        return Err(proto("the peer wants a security mechanism other than NULL"));
    }

    // READY with our socket type.
    let mut ready = Vec::with_capacity(64);
    ready.push(5);
    ready.extend_from_slice(b"READY");
    put_property(&mut ready, b"Socket-Type", kind.name().as_bytes());
    if kind != Kind::Sub {
        put_property(&mut ready, b"Identity", b"");
    }
    w.frame(COMMAND, &ready).await?;
    w.w.flush().await?;

    let mut reader = Reader { r, kind };
    let (flags, body) = reader.frame().await?;
    if flags & COMMAND == 0 || body.first() != Some(&5) || body.get(1..6) != Some(b"READY") {
        return Err(proto("expected READY from the peer"));
    }
    let peer_type = property(&body[6..], b"Socket-Type").unwrap_or_default();
    if !kind.accepts(&peer_type) {
        return Err(proto(format!(
            "a {} socket cannot talk to a {} socket",
            kind.name(),
            String::from_utf8_lossy(&peer_type)
        )));
    }
    if kind == Kind::Sub {
        w.send(&[&[1u8][..]]).await?;
    }
    Ok((reader, w))
}

fn put_property(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value);
}

fn property(mut props: &[u8], want: &[u8]) -> Option<Vec<u8>> {
    while let Some((&n, rest)) = props.split_first() {
        let n = usize::from(n);
        let name = rest.get(..n)?;
        let len = u32::from_be_bytes(rest.get(n..n + 4)?.try_into().ok()?) as usize;
        let value = rest.get(n + 4..n + 4 + len)?;
        if name.eq_ignore_ascii_case(want) {
            return Some(value.to_vec());
        }
        props = &rest[n + 4 + len..];
    }
    None
}

/// A message as received.
#[derive(Debug)]
pub enum Incoming {
    /// Its parts, in order.
    Message(Vec<Vec<u8>>),
    /// It was over [`MAX_MESSAGE`] (or had too many parts): read to its end
    /// and dropped, so memory stays bounded and the connection usable.
    Dropped { bytes: u64 },
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads messages of a `kind` socket from `r`, past the handshake (for
    /// tests and fuzzing).
    pub fn over(r: R, kind: Kind) -> Reader<R> {
        Reader {
            r: BufReader::new(r),
            kind,
        }
    }

    /// A frame's flags and length.
    async fn head(&mut self) -> io::Result<(u8, u64)> {
        let flags = self.r.read_u8().await?;
        let len = if flags & LONG != 0 {
            self.r.read_u64().await?
        } else {
            u64::from(self.r.read_u8().await?)
        };
        Ok((flags, len))
    }

    async fn body(&mut self, len: u64) -> io::Result<Vec<u8>> {
        // Callers only read frames within the message limit; a length past
        // it is refused, never allocated.
        if len > MAX_MESSAGE as u64 {
            return Err(proto("frame larger than a message may be"));
        }
        let mut body = vec![0u8; len as usize];
        self.r.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Reads and forgets `len` bytes.
    async fn skip(&mut self, len: u64) -> io::Result<()> {
        let n = tokio::io::copy(&mut (&mut self.r).take(len), &mut tokio::io::sink()).await?;
        if n < len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    async fn frame(&mut self) -> io::Result<(u8, Vec<u8>)> {
        let (flags, len) = self.head().await?;
        if len > MAX_MESSAGE as u64 {
            return Err(proto(format!("frame of {len} bytes is over the limit")));
        }
        Ok((flags, self.body(len).await?))
    }

    /// The next message. Commands (ZMTP 3.1 PING and the like) are skipped.
    /// Not cancel-safe: run it in a task of its own.
    pub async fn recv(&mut self) -> io::Result<Incoming> {
        match self.recv_until(|_, _| false).await? {
            Next::Whole(m) => Ok(m),
            // `open` never says yes.
            Next::Open { .. } => Err(proto("unexpected open frame")),
        }
    }

    /// The next message, like [`Reader::recv`], except that before reading
    /// each data frame's body `open(parts so far, its length)` is asked
    /// whether the caller wants to read that body itself: then the message
    /// is handed over at that point ([`Next::Open`]), the body unread. The
    /// caller reads it with [`Reader::read_some`] and ends the message with
    /// [`Reader::skip_rest`].
    pub async fn recv_until(&mut self, open: impl Fn(&[Vec<u8>], u64) -> bool) -> io::Result<Next> {
        let mut parts = Vec::new();
        let mut total = 0u64;
        let mut dropping = false;
        loop {
            let (flags, len) = self.head().await?;
            if flags & COMMAND != 0 {
                self.skip(len).await?;
                continue;
            }
            if !dropping && parts.len() < MAX_PARTS && open(&parts, len) {
                return Ok(Next::Open {
                    parts,
                    len,
                    more: flags & MORE != 0,
                });
            }
            // A frame length is any 64-bit number: never let the sum wrap
            // back under the limit.
            total = total.saturating_add(len);
            if !dropping && (total > MAX_MESSAGE as u64 || parts.len() >= MAX_PARTS) {
                dropping = true;
                parts = Vec::new();
            }
            if dropping {
                self.skip(len).await?;
            } else {
                parts.push(self.body(len).await?);
            }
            if flags & MORE == 0 {
                break;
            }
        }
        if dropping {
            return Ok(Next::Whole(Incoming::Dropped { bytes: total }));
        }
        if self.kind == Kind::Req {
            // A REQ socket drops the empty delimiter its reply comes with.
            if parts.first().is_some_and(|p| p.is_empty()) {
                parts.remove(0);
            }
        }
        Ok(Next::Whole(Incoming::Message(parts)))
    }

    /// Reads some of an open frame's body into `buf` (at most its length:
    /// the caller passes no more than what is left of the frame). End of
    /// stream is an error.
    pub async fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf).await?;
        if n == 0 && !buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(n)
    }

    /// After an open frame's body: reads and forgets the message's
    /// remaining frames (`more`: the open frame had the MORE flag).
    pub async fn skip_rest(&mut self, mut more: bool) -> io::Result<()> {
        while more {
            let (flags, len) = self.head().await?;
            self.skip(len).await?;
            if flags & COMMAND == 0 {
                more = flags & MORE != 0;
            }
        }
        Ok(())
    }
}

/// What [`Reader::recv_until`] returns.
#[derive(Debug)]
pub enum Next {
    /// A message read whole (or dropped).
    Whole(Incoming),
    /// A message handed over before the body of one of its frames.
    Open {
        /// The parts before that frame.
        parts: Vec<Vec<u8>>,
        /// The frame's length; its body is next on the wire.
        len: u64,
        /// More frames follow it.
        more: bool,
    },
}

impl Writer {
    async fn frame(&mut self, flags: u8, body: &[u8]) -> io::Result<()> {
        if body.len() > 255 {
            self.w.write_u8(flags | LONG).await?;
            self.w.write_u64(body.len() as u64).await?;
        } else {
            self.w.write_all(&[flags, body.len() as u8]).await?;
        }
        self.w.write_all(body).await
    }

    /// Sends one message of `parts` (a REQ socket adds the empty delimiter).
    pub async fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 9).sum::<usize>() + 2);
        if self.kind == Kind::Req {
            buf.extend_from_slice(&[MORE, 0]);
        }
        for (i, p) in parts.iter().enumerate() {
            let flags = if i + 1 < parts.len() { MORE } else { 0 };
            if p.len() > 255 {
                buf.push(flags | LONG);
                buf.extend_from_slice(&(p.len() as u64).to_be_bytes());
            } else {
                buf.push(flags);
                buf.push(p.len() as u8);
            }
            buf.extend_from_slice(p);
        }
        self.w.write_all(&buf).await?;
        self.w.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flags: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![flags | if body.len() > 255 { LONG } else { 0 }];
        if body.len() > 255 {
            v.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            v.push(body.len() as u8);
        }
        v.extend_from_slice(body);
        v
    }

    /// A length that would wrap the message's running total back under the
    /// limit (found by the `kernel_wire` fuzz target: it allocated the
    /// frame's length and aborted) is dropped or refused, never allocated.
    #[tokio::test]
    async fn a_wrapping_frame_length_is_never_allocated() {
        let mut wire = frame(MORE, b"ab");
        wire.push(LONG);
        wire.extend_from_slice(&(u64::MAX - 1).to_be_bytes());
        wire.extend_from_slice(b"rest");
        let mut r = Reader::over(&wire[..], Kind::Dealer);
        match r.recv().await {
            Ok(Incoming::Dropped { .. }) | Err(_) => {}
            Ok(other) => panic!("{other:?}"),
        }
        let crash: &[u8] = &[
            0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x01, 0x00, 0x01, 0x01, 0x00, 0x01, 0x00, 0x01,
            0x00, 0x01, 0x00, 0x01, 0x00, 0x01, 0x00, 0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0x3f, 0x00, 0x01, 0x31, 0x00, 0x01, 0x01, 0x00, 0x00,
        ];
        let mut r = Reader::over(&crash[1..], Kind::Dealer);
        while let Ok(m) = r.recv().await {
            if let Incoming::Message(parts) = m {
                assert!(parts.iter().map(Vec::len).sum::<usize>() <= MAX_MESSAGE);
            }
        }
    }

    #[tokio::test]
    async fn messages_commands_and_oversized_ones() {
        let mut wire = Vec::new();
        wire.extend(frame(COMMAND, b"\x04PING"));
        wire.extend(frame(MORE, b"a"));
        wire.extend(frame(0, &[b'b'; 300]));
        // Over the limit, announced in one long frame: skipped, not kept.
        wire.push(LONG);
        wire.extend_from_slice(&(MAX_MESSAGE as u64 + 1).to_be_bytes());
        wire.extend(std::iter::repeat_n(b'x', MAX_MESSAGE + 1));
        wire.extend(frame(MORE, b""));
        wire.extend(frame(0, b"pong"));
        let mut r = Reader::over(&wire[..], Kind::Dealer);
        match r.recv().await.expect("first") {
            Incoming::Message(p) => assert_eq!(p, vec![b"a".to_vec(), vec![b'b'; 300]]),
            other => panic!("{other:?}"),
        }
        match r.recv().await.expect("second") {
            Incoming::Dropped { bytes } => assert_eq!(bytes, MAX_MESSAGE as u64 + 1),
            other => panic!("{other:?}"),
        }
        // A REQ socket drops the empty delimiter.
        r.kind = Kind::Req;
        match r.recv().await.expect("third") {
            Incoming::Message(p) => assert_eq!(p, vec![b"pong".to_vec()]),
            other => panic!("{other:?}"),
        }
        assert!(r.recv().await.is_err(), "EOF");
    }

    #[test]
    fn properties_round_trip() {
        let mut b = Vec::new();
        put_property(&mut b, b"Socket-Type", b"ROUTER");
        put_property(&mut b, b"Identity", b"");
        assert_eq!(
            property(&b, b"socket-type").as_deref(),
            Some(&b"ROUTER"[..])
        );
        assert_eq!(property(&b, b"Identity").as_deref(), Some(&b""[..]));
        assert_eq!(property(&b, b"Other"), None);
        // Truncated input is not an error, just no match.
        assert_eq!(property(&b[..5], b"Socket-Type"), None);
    }
}
