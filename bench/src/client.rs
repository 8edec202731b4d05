//! The load generator's HTTP side: hyper 1 client connections, an
//! event-stream reader, and a closed-loop driver for many connections.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type Error = String;
pub type Result<T> = std::result::Result<T, Error>;

/// A client connection whose requests carry bodies of type `B`.
pub type Conn<B = Full<Bytes>> = SendRequest<B>;

/// Opens one keep-alive HTTP/1.1 connection with TCP_NODELAY, its I/O
/// driven by a task of its own.
pub async fn connect<B>(addr: SocketAddr) -> Result<Conn<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, conn) = open(addr).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Opens one connection and runs `user` on it with the connection's I/O
/// driven in the same task. A streaming reader then gets each frame without
/// a hand-over between tasks (and threads), which would cost the reader more
/// CPU than execd spends producing the frame.
pub async fn with_conn<T, U, F>(addr: SocketAddr, user: U) -> Result<T>
where
    U: FnOnce(Conn) -> F,
    F: std::future::Future<Output = Result<T>>,
{
    let (sender, conn) = open(addr).await?;
    let user = user(sender);
    tokio::pin!(conn, user);
    tokio::select! {
        r = &mut user => r,
        r = &mut conn => match r {
            // The sender is still held by `user`, so the connection ended early.
            Ok(()) => Err("connection closed".into()),
            Err(e) => Err(format!("connection: {e}")),
        },
    }
}

async fn open<B>(
    addr: SocketAddr,
) -> Result<(
    Conn<B>,
    hyper::client::conn::http1::Connection<TokioIo<TcpStream>, B>,
)>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("handshake: {e}"))
}

/// Sends one request on `conn`, waiting for the connection to be ready first.
pub async fn send<B>(conn: &mut Conn<B>, req: Request<B>) -> Result<Response<Incoming>>
where
    B: Body + 'static,
{
    conn.ready().await.map_err(|e| format!("connection: {e}"))?;
    conn.send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))
}

pub fn get(path: &str) -> Request<Full<Bytes>> {
    request(Method::GET, path, Bytes::new())
}

pub fn request_delete(path: &str) -> Request<Full<Bytes>> {
    request(Method::DELETE, path, Bytes::new())
}

pub fn post_json(path: &str, json: &serde_json::Value) -> Request<Full<Bytes>> {
    let mut r = request(Method::POST, path, Bytes::from(json.to_string()));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn request(method: Method, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, "127.0.0.1")
        .body(Full::new(body))
        .expect("a static request is valid")
}

/// Reads a body to its end, counting bytes and keeping none.
pub async fn drain(mut body: Incoming) -> Result<u64> {
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("body: {e}"))?;
        if let Some(d) = frame.data_ref() {
            n += d.len() as u64;
        }
    }
    Ok(n)
}

/// Reads a body to its end into memory.
pub async fn collect(body: Incoming) -> Result<Bytes> {
    Ok(body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes())
}

/// Fails unless the status is 200 OK, naming `what` and the body.
pub async fn expect_ok(resp: Response<Incoming>, what: &str) -> Result<Incoming> {
    if resp.status() == StatusCode::OK {
        return Ok(resp.into_body());
    }
    let status = resp.status();
    let body = collect(resp.into_body()).await.unwrap_or_default();
    Err(format!(
        "{what}: HTTP {status}: {}",
        String::from_utf8_lossy(&body)
    ))
}

/// Splits a `text/event-stream` body into its events (blank-line separated).
pub struct EventReader {
    body: Incoming,
    buf: BytesMut,
    scanned: usize,
}

impl EventReader {
    pub fn new(body: Incoming) -> Self {
        EventReader {
            body,
            buf: BytesMut::with_capacity(256 * 1024),
            scanned: 0,
        }
    }

    /// The next event's raw bytes, or `None` at the end of the body.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        loop {
            if let Some(i) = self.separator() {
                let ev = self.buf.split_to(i).freeze();
                self.buf.advance(2);
                self.scanned = 0;
                return Ok(Some(ev));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(d) = frame.data_ref() {
                        self.buf.extend_from_slice(d);
                    }
                }
                Some(Err(e)) => return Err(format!("event stream: {e}")),
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                None => return Ok(Some(std::mem::take(&mut self.buf).freeze())),
            }
        }
    }

    /// Where the next "\n\n" starts, scanning each byte once.
    fn separator(&mut self) -> Option<usize> {
        let from = self.scanned.saturating_sub(1);
        let found = memchr::memmem::find(&self.buf[from..], b"\n\n").map(|i| from + i);
        self.scanned = self.buf.len();
        found
    }
}

/// The fields of an execd event the harness looks at.
#[derive(Deserialize)]
pub struct Event<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(default, borrow)]
    pub text: Option<Cow<'a, str>>,
}

/// The decoded length of a `stdout` event's text, found without building
/// the event, when it is laid out as execd writes it (`type` first, `text`
/// last). Streaming 256 MiB would otherwise make the reader the bottleneck.
pub fn stdout_len(raw: &[u8]) -> Option<u64> {
    let rest = raw.strip_prefix(br#"{"type":"stdout","#)?;
    let at = memchr::memmem::find(rest, br#""text":""#)?;
    json_str_len(&rest[at + 8..])
}

/// The decoded (UTF-8) length of a JSON string's body up to its closing quote.
fn json_str_len(mut s: &[u8]) -> Option<u64> {
    let mut n = 0u64;
    loop {
        let i = memchr::memchr2(b'\\', b'"', s)?;
        n += i as u64;
        if s[i] == b'"' {
            return Some(n);
        }
        let esc = *s.get(i + 1)?;
        s = &s[i + 2..];
        if esc != b'u' {
            n += 1;
            continue;
        }
        let cp = u32::from_str_radix(std::str::from_utf8(s.get(..4)?).ok()?, 16).ok()?;
        s = &s[4..];
        n += match cp {
            0..=0x7f => 1,
            0x80..=0x7ff => 2,
            0xd800..=0xdbff => {
                // A surrogate pair: `\uD8xx\uDCxx` is one 4-byte character.
                s = s.get(6..)?;
                4
            }
            _ => 3,
        };
    }
}

pub fn parse_event(raw: &[u8]) -> Result<Event<'_>> {
    let raw = raw.strip_prefix(b"data:").unwrap_or(raw);
    serde_json::from_slice(raw)
        .map_err(|e| format!("bad event {:?}: {e}", String::from_utf8_lossy(raw)))
}

/// What one `POST /command` stream showed.
#[derive(Debug, Default)]
pub struct CommandRun {
    pub id: String,
    /// From sending the request to the first `stdout` event.
    pub first_stdout: Option<Duration>,
    /// From sending the request to the terminal event.
    pub total: Duration,
    pub stdout_bytes: u64,
    pub gaps: u64,
}

/// Runs `command` through `POST /command` and reads its stream to the terminal
/// event. `on_init` sees the command id as soon as `init` arrives.
pub async fn run_command(
    conn: &mut Conn,
    command: &str,
    on_init: impl FnMut(&str),
) -> Result<CommandRun> {
    let body = serde_json::json!({ "command": command });
    run_stream(conn, "/command", &body, command, on_init).await
}

/// Runs `code` in the code context `context` through `POST /code` and reads
/// its stream to the terminal event.
pub async fn run_code(conn: &mut Conn, context: &str, code: &str) -> Result<CommandRun> {
    let body = serde_json::json!({ "code": code, "context": { "id": context } });
    run_stream(conn, "/code", &body, code, |_| {}).await
}

pub async fn run_stream(
    conn: &mut Conn,
    path: &str,
    body: &serde_json::Value,
    command: &str,
    mut on_init: impl FnMut(&str),
) -> Result<CommandRun> {
    let t0 = Instant::now();
    let resp = send(conn, post_json(path, body)).await?;
    let mut events = EventReader::new(expect_ok(resp, &format!("POST {path}")).await?);
    let mut run = CommandRun::default();
    while let Some(raw) = events.next().await? {
        if let Some(n) = stdout_len(&raw) {
            run.first_stdout.get_or_insert_with(|| t0.elapsed());
            run.stdout_bytes += n;
            continue;
        }
        let ev = parse_event(&raw)?;
        match ev.kind.as_ref() {
            "init" => {
                run.id = ev.text.unwrap_or_default().into_owned();
                on_init(&run.id);
            }
            "stdout" => {
                run.first_stdout.get_or_insert_with(|| t0.elapsed());
                run.stdout_bytes += ev.text.map_or(0, |t| t.len() as u64);
            }
            "gap" => run.gaps += 1,
            "execution_complete" => {
                run.total = t0.elapsed();
                // Read the body to its end, or the connection cannot be reused.
                while events.next().await?.is_some() {}
                return Ok(run);
            }
            "error" => {
                return Err(format!(
                    "command {command:?} failed: {}",
                    String::from_utf8_lossy(&raw)
                ))
            }
            _ => {}
        }
    }
    Err(format!(
        "stream of {command:?} ended without a terminal event"
    ))
}

/// What a closed loop achieved.
pub struct LoopStats {
    pub ops: u64,
    pub elapsed: Duration,
    pub latencies: Vec<Duration>,
}

impl LoopStats {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }
}

/// `clients` connections, each doing `op` back to back until `dur` is up.
/// `op` takes the connection and hands it back, so no borrow crosses an await.
pub async fn closed_loop<C, Open, Opened, Op, Done>(
    clients: usize,
    dur: Duration,
    open: Open,
    op: Op,
) -> Result<LoopStats>
where
    C: Send + 'static,
    Open: Fn() -> Opened,
    Opened: std::future::Future<Output = Result<C>>,
    Op: Fn(C) -> Done + Clone + Send + 'static,
    Done: std::future::Future<Output = Result<C>> + Send,
{
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(open().await?);
    }
    let start = Instant::now();
    let deadline = start + dur;
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    conn = op(conn).await?;
                    lat.push(t.elapsed());
                }
                Ok::<_, Error>(lat)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    Ok(LoopStats {
        ops: latencies.len() as u64,
        elapsed: start.elapsed(),
        latencies,
    })
}

/// `clients` [`RawGet`] loops of `GET path`, spread over `threads` threads
/// that each run their own single-threaded runtime, as wrk spreads its
/// connections over its threads: no work stealing, no cross-thread wake-ups.
pub fn raw_load(
    addr: SocketAddr,
    path: &'static str,
    clients: usize,
    threads: usize,
    dur: Duration,
) -> Result<LoopStats> {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let n = clients / threads + usize::from(i < clients % threads);
            std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(closed_loop(
                        n,
                        dur,
                        || RawGet::open(addr, path),
                        RawGet::get,
                    ))
            })
        })
        .collect();
    let mut all = LoopStats {
        ops: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for w in workers {
        let s = w.join().map_err(|_| "load thread panicked".to_string())??;
        all.ops += s.ops;
        all.latencies.extend(s.latencies);
    }
    all.elapsed = start.elapsed();
    Ok(all)
}

/// A purpose-built keep-alive HTTP/1.1 GET client for the request-rate
/// figure: one write and (usually) one read per request, no tasks or
/// channels between the caller and the socket, so that the generator costs
/// less than the servers it measures.
pub struct RawGet {
    tcp: TcpStream,
    request: Bytes,
    buf: BytesMut,
}

impl RawGet {
    pub async fn open(addr: SocketAddr, path: &str) -> Result<RawGet> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into();
        Ok(RawGet {
            tcp,
            request,
            buf: BytesMut::with_capacity(4096),
        })
    }

    /// One request; fails unless the answer is a 200 with a Content-Length.
    pub async fn get(mut self) -> Result<RawGet> {
        self.tcp
            .write_all(&self.request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        loop {
            if let Some(len) = self.response_len()? {
                if self.buf.len() >= len {
                    self.buf.advance(len);
                    return Ok(self);
                }
            }
            if self
                .tcp
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| e.to_string())?
                == 0
            {
                return Err("server closed the connection".into());
            }
        }
    }

    /// The length of the whole response at the front of `buf`, once its
    /// head is complete.
    fn response_len(&self) -> Result<Option<usize>> {
        let Some(end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            return Ok(None);
        };
        let head = std::str::from_utf8(&self.buf[..end]).map_err(|e| e.to_string())?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("unexpected response: {head}"));
        }
        let body = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or("response without Content-Length")?;
        Ok(Some(end + 4 + body))
    }
}

/// One `GET path` that must answer 200; the body is drained.
pub async fn get_ok(mut conn: Conn, path: &'static str) -> Result<Conn> {
    let resp = send(&mut conn, get(path)).await?;
    drain(expect_ok(resp, path).await?).await?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_length_without_parsing() {
        let ev = br#"{"type":"stdout","eid":1,"timestamp":2,"text":"ab\n\u00e9\ud83d\ude00\"c"}"#;
        let text: String = serde_json::from_slice::<Event>(ev)
            .unwrap()
            .text
            .unwrap()
            .into();
        assert_eq!(stdout_len(ev), Some(text.len() as u64));
        assert_eq!(stdout_len(br#"{"type":"init","text":"x"}"#), None);
    }
}
