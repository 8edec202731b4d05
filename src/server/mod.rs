//! HTTP plumbing: the accept loop, the shared state handlers see, and the
//! request context. Knows nothing of processes or files beyond handing the
//! engine to handlers.

pub mod auth;
pub mod error;
pub mod origin;
pub mod router;
pub mod sse;
mod watch;
pub mod zerocopy;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use router::{Answer, Reply};
pub use watch::RequestBody;

/// Every response body.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A 200 with no body, as upstream's success-without-payload.
pub fn ok_empty() -> Response<Body> {
    Response::new(empty())
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// What the server serves: the application behind the plumbing. The
/// server knows nothing of it but this.
pub trait Service: Send + Sync + Sized + 'static {
    /// The answer to a request, decided synchronously: a ready response, or
    /// a future. `conn` wraps a request body so that the connection's watch
    /// sees it (see `watch.rs`).
    fn answer(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr, conn: &Conn) -> Answer;
    /// The request's class, for [`Service::answered`].
    fn class(req: &Request<Incoming>) -> usize;
    /// Each response's status as it goes back, with its request's class.
    fn answered(class: usize, status: StatusCode);
    /// The largest request body [`Ctx::json`] and its kind read.
    fn max_body(&self) -> usize;
}

/// A connection, as a [`Service`] sees it.
pub struct Conn {
    activity: Arc<watch::Activity>,
    /// Plain HTTP/1.1: where zero-copy bodies queue their file pieces.
    sink: Option<zerocopy::Sink>,
}

impl Conn {
    /// A request body that the connection's watch follows: one that stalls
    /// for the header timeout gets 408.
    pub fn body(&self, body: Incoming) -> RequestBody {
        RequestBody::new(body, &self.activity)
    }
}

/// One request on its way through a handler.
pub struct Ctx<S> {
    pub app: Arc<S>,
    pub req: Request<RequestBody>,
    pub params: Vec<(&'static str, String)>,
    /// The client's address, as the accept loop saw it. A field rather than
    /// a request extension: an extension costs a map allocation per request.
    pub peer: SocketAddr,
}

impl<S> Ctx<S> {
    /// A path parameter by its name in the route table.
    pub fn param(&self, name: &str) -> &str {
        self.params
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Query parameters, percent-decoded; repeated names keep every value.
    pub fn query(&self) -> Query {
        Query(
            form_urlencoded::parse(self.req.uri().query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }
}

impl<S: Service> Ctx<S> {
    /// The request body as JSON of type `T`, at most `max_body` bytes.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, ApiError> {
        let max = self.app.max_body();
        let bytes = self.body_bytes(max).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_body(
                "request body is empty; a JSON object is required",
            ));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_body(format!("error parsing request, invalid JSON body: {e}"))
        })
    }

    /// [`Ctx::json`] (or, `or_default`, [`Ctx::json_or_default`]) with the
    /// body's bytes, for fingerprinting.
    pub async fn json_raw<T: DeserializeOwned + Default>(
        self,
        or_default: bool,
    ) -> Result<(T, Bytes), ApiError> {
        let max = self.app.max_body();
        let bytes = self.body_bytes(max).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            if or_default {
                return Ok((T::default(), bytes));
            }
            return Err(ApiError::invalid_body(
                "request body is empty; a JSON object is required",
            ));
        }
        let v = serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_body(format!("error parsing request, invalid JSON body: {e}"))
        })?;
        Ok((v, bytes))
    }

    /// The request body as JSON when there is one, `T::default()` when it is empty.
    pub async fn json_or_default<T: DeserializeOwned + Default>(self) -> Result<T, ApiError> {
        let max = self.app.max_body();
        let bytes = self.body_bytes(max).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::invalid_body(format!("error parsing request, invalid JSON body: {e}"))
        })
    }

    async fn body_bytes(self, max: usize) -> Result<Bytes, ApiError> {
        match Limited::new(self.req.into_body(), max).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_TOO_LARGE",
                format!("request body exceeds {max} bytes"),
            )),
            Err(e) => Err(ApiError::invalid_body(format!(
                "error reading request body: {e}"
            ))),
        }
    }
}

/// Decoded query parameters.
pub struct Query(pub Vec<(String, String)>);

impl Query {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn map(&self) -> HashMap<&str, &str> {
        self.0
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

/// Serves `app` on the connections of `listener` until `stop` is cancelled,
/// then lets in-flight requests finish for at most `drain`. A client gets
/// `header_timeout` for each request head (and to stall a request body).
/// With `zero_copy`, file bodies on plain HTTP/1.1 go out with `sendfile`.
pub async fn serve<S: Service>(
    listener: TcpListener,
    app: Arc<S>,
    header_timeout: Duration,
    zero_copy: bool,
    stop: CancellationToken,
    drain: Duration,
) {
    let conns = tokio_util::task::TaskTracker::new();
    let mut failures = AcceptFailures::default();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    failures.failed(&e);
                    // EMFILE and friends: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(watch::Activity::default());
        let app = app.clone();
        let stop = stop.clone();
        let timeout = header_timeout;
        conns.spawn(async move {
            // Slowloris protection starts at the first byte: a client gets
            // the header timeout to show what it speaks, then the watch
            // gives it as long again for each request head.
            let first = tokio::select! {
                r = tokio::time::timeout(timeout, sniff(&stream)) => r,
                _ = stop.cancelled() => return,
            };
            match first {
                Ok(Ok(Some(Protocol::Http1))) => {
                    let zero_copy = zero_copy && zerocopy::available();
                    let http1 = Http1 {
                        app,
                        activity,
                        peer,
                        zero_copy,
                        timeout,
                    };
                    http1.serve(stream, &stop).await
                }
                Ok(Ok(Some(Protocol::Http2))) => {
                    let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    http.timer(TokioTimer::new());
                    let conn = Conn {
                        activity: activity.clone(),
                        sink: None,
                    };
                    let svc = hyper::service::service_fn(move |req| handle(&app, req, peer, &conn));
                    let conn = Box::pin(http.serve_connection(TokioIo::new(stream), svc));
                    // hyper has no header timeout for HTTP/2: the same watch
                    // sees a connection with no stream served, whether the
                    // client trickles a HEADERS frame or just keeps it open.
                    let watch = Watched {
                        watch: watch::Watch::new(activity),
                        timeout,
                        first_look: tokio::time::Instant::now() + timeout / 2,
                        on_idle: OnIdle::GoAwayThenClose,
                        http1: false,
                    };
                    drive(conn, &stop, |c| c.graceful_shutdown(), watch, None, peer).await;
                }
                Ok(Ok(None)) => tracing::debug!(%peer, "connection closed before its first byte"),
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "connection failed before its first byte")
                }
                Err(_) => tracing::debug!(%peer, "no request within the header read timeout"),
            }
        });
    }
    drop(listener);
    conns.close();
    if tokio::time::timeout(drain, conns.wait()).await.is_err() {
        tracing::debug!("connections still open at the end of shutdown");
    }
}

/// A plain HTTP/1 connection, served by hyper while it is in use and
/// parked while it is idle.
///
/// hyper keeps an 8 KiB read buffer and an 8 KiB write buffer per HTTP/1
/// connection for as long as the connection lives, and its state with
/// them: 12.8 KiB of RSS per idle keep-alive connection. So once hyper has
/// answered and waits for the next request, with nothing in progress, the
/// connection leaves it: hyper is told to end (a graceful shutdown, which
/// an idle hyper connection obeys at once), its shutdown of the socket is
/// skipped ([`zerocopy::IoState::park`]), and the socket, with any bytes
/// hyper had read and not parsed, waits for the next request's first byte
/// with no buffer of its own. A new hyper then serves it. A connection
/// whose request or response asked hyper to close or upgrade it (a
/// `Connection` header, HTTP/1.0) is left to hyper.
///
/// Re-hosting costs about 5,000 instructions per request (callgrind: 8.7k
/// to 13.9k per keep-alive `/ping`), so it is done at once only while more
/// than [`PARK_AT_ONCE_ABOVE`] (`--park-idle-above`, 128) HTTP/1
/// connections are open; below that, an
/// idle connection is parked at the watch's first quiet look (idle for half
/// the header timeout to all of it), and the unparked idle ones hold at
/// most that many times 16 KiB.
struct Http1<S> {
    app: Arc<S>,
    activity: Arc<watch::Activity>,
    peer: SocketAddr,
    zero_copy: bool,
    timeout: Duration,
}

/// Open HTTP/1 connections above which an idle one is parked at once
/// (`--park-idle-above`).
static PARK_AT_ONCE_ABOVE: AtomicUsize = AtomicUsize::new(128);

/// Sets `--park-idle-above`: with more than `n` HTTP/1 connections open, an
/// idle one is parked at once (see [`Http1`]).
pub fn park_idle_above(n: usize) {
    PARK_AT_ONCE_ABOVE.store(n, Ordering::Relaxed);
}

/// Open HTTP/1 connections.
static OPEN_HTTP1: AtomicUsize = AtomicUsize::new(0);

/// Counts an open HTTP/1 connection in [`OPEN_HTTP1`] while it lives.
struct OpenHttp1;

impl OpenHttp1 {
    fn new() -> OpenHttp1 {
        OPEN_HTTP1.fetch_add(1, Ordering::Relaxed);
        OpenHttp1
    }
}

impl Drop for OpenHttp1 {
    fn drop(&mut self) {
        OPEN_HTTP1.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S: Service> Http1<S> {
    async fn serve(self, stream: tokio::net::TcpStream, stop: &CancellationToken) {
        let _open = OpenHttp1::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        // No hyper timer: the watch does its header timeout.
        // `writev`: body frames reach the socket uncopied, which
        // zero-copy bodies rely on (see `zerocopy.rs`).
        http.max_buf_size(64 * 1024).keep_alive(true).writev(true);
        let mut io = zerocopy::ZeroCopyIo::new(stream);
        let half = self.timeout / 2;
        // The watch's looks go on from where they were when the connection
        // was parked, as if it had watched the parked connection, which
        // showed no activity: the next look, and the quiet looks so far.
        let (mut first_look, mut quiet) = (tokio::time::Instant::now() + half, 0u8);
        loop {
            let state = io.state();
            let conn = Conn {
                activity: self.activity.clone(),
                sink: self.zero_copy.then(|| io.sink()),
            };
            let (app, peer) = (self.app.clone(), self.peer);
            let svc = hyper::service::service_fn(move |req| handle(&app, req, peer, &conn));
            self.activity.rehosted();
            let park = Park {
                io: state,
                activity: self.activity.clone(),
                events: self.activity.events(),
            };
            let conn = Box::pin(http.serve_connection(TokioIo::new(io), svc).with_upgrades());
            let watch = Watched {
                watch: watch::Watch::new(self.activity.clone()).after_quiet_looks(quiet),
                timeout: self.timeout,
                first_look,
                on_idle: OnIdle::Close,
                http1: true,
            };
            let shutdown = |c: Pin<&mut _>| {
                hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
            };
            let Some((conn, next, looks)) =
                drive(conn, stop, shutdown, watch, Some(park), self.peer).await
            else {
                return;
            };
            let Some(parts) = Pin::into_inner(conn).into_parts() else {
                return;
            };
            io = parts.io.into_inner().unparked(parts.read_buf);
            (first_look, quiet) = (next, looks);
            if io.has_unread() {
                continue;
            }
            // Parked: the next request's first byte, or the watch's close
            // (the second quiet look), or shutdown.
            let close_at = next + half * u32::from(looks == 0);
            tokio::select! {
                r = tokio::time::timeout_at(close_at, io.tcp().readable()) => match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, peer = %self.peer, "parked connection failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "connection idle past the header timeout; closed");
                        return;
                    }
                },
                _ = stop.cancelled() => return,
            }
            // The looks the watch took meanwhile, all quiet.
            let now = tokio::time::Instant::now();
            while first_look <= now {
                first_look += half;
                quiet += 1;
            }
        }
    }
}

/// When an HTTP/1 connection's hyper may let it go (see [`Http1`]): the
/// client's next request not begun, no exchange in progress, one ended
/// since this hyper took the connection.
struct Park {
    io: zerocopy::IoState,
    activity: Arc<watch::Activity>,
    /// The activity's events when this hyper took the connection.
    events: u64,
}

impl Park {
    fn ready(&self) -> bool {
        self.io.wants_input() && self.activity.parkable_since(self.events)
    }

    /// Many connections open: park as soon as idle.
    fn at_once(&self) -> bool {
        OPEN_HTTP1.load(Ordering::Relaxed) > PARK_AT_ONCE_ABOVE.load(Ordering::Relaxed)
    }

    /// Lets hyper go: an idle hyper ends the connection at once, skipping
    /// the socket's shutdown. Not idle after all (still flushing), it ends
    /// once its exchange is done, as keep-alive is now off; that response's
    /// head has gone out without `Connection: close`.
    fn begin<C>(&self, conn: Pin<&mut C>, shutdown: fn(Pin<&mut C>)) {
        self.io.park();
        shutdown(conn);
    }
}

/// Logs failed accepts by count, not one line per failure: at EMFILE the
/// loop retries 50 times a second, and a client that keeps connecting keeps
/// it there. The 1st, 2nd, 4th, ... 1024th failure since start-up is logged,
/// then every 1024th, each line with the count so far. Never reset (an
/// accept between failures would make every failure a first again), so the
/// lines stay a logarithm of the failures, then one per 1024.
#[derive(Default)]
struct AcceptFailures {
    total: u64,
}

/// Past this many failures, every this-many-th is logged.
const ACCEPT_LOG_EVERY: u64 = 1024;

impl AcceptFailures {
    fn failed(&mut self, e: &std::io::Error) {
        self.total += 1;
        if accept_failure_logged(self.total) {
            tracing::warn!(error = %e, failures = self.total, "accept failed");
        }
    }
}

/// Whether the `n`th failure is logged.
fn accept_failure_logged(n: u64) -> bool {
    if n <= ACCEPT_LOG_EVERY {
        n.is_power_of_two()
    } else {
        n.is_multiple_of(ACCEPT_LOG_EVERY)
    }
}

/// The HTTP/2 client connection preface (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection speaks, by its first bytes.
#[derive(Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    /// h2c, for sandboxd's gRPC.
    Http2,
}

/// `None` while the bytes so far are a strict prefix of the HTTP/2 preface
/// (a lone `P` could still be `POST` or `PRI`).
fn protocol(first: &[u8]) -> Option<Protocol> {
    let n = first.len().min(H2_PREFACE.len());
    if first[..n] != H2_PREFACE[..n] {
        Some(Protocol::Http1)
    } else if n == H2_PREFACE.len() {
        Some(Protocol::Http2)
    } else {
        None
    }
}

/// Waits until the connection's first bytes tell its protocol, without
/// consuming them (`MSG_PEEK`); `None` when the client closes first. The
/// connection then goes to hyper's HTTP/1 or HTTP/2 connection directly,
/// with no wrapper around its reads.
async fn sniff(stream: &tokio::net::TcpStream) -> std::io::Result<Option<Protocol>> {
    use std::os::fd::AsRawFd;
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        stream.readable().await?;
        // Undecided counts as "would block": tokio then clears the
        // readiness, and the next `readable` waits for more bytes.
        let r = stream.try_io(tokio::io::Interest::READABLE, || {
            // MSG_PEEK leaves the bytes for hyper.
            use nix::sys::socket::{recv, MsgFlags};
            let n = recv(
                stream.as_raw_fd(),
                &mut first,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            );
            match n {
                Err(e) => Err(e.into()),
                Ok(0) => Ok(None),
                Ok(n) => match protocol(&first[..n]) {
                    Some(p) => Ok(Some(p)),
                    None => Err(std::io::ErrorKind::WouldBlock.into()),
                },
            }
        });
        match r {
            Ok(p) => return Ok(p),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A connection's watch, and what to do when it finds the connection idle.
struct Watched {
    watch: watch::Watch,
    /// `--header-timeout`; the watch looks every half of it.
    timeout: Duration,
    /// The first look.
    first_look: tokio::time::Instant,
    on_idle: OnIdle,
    /// HTTP/1: a stalled request body is answered 408 by its exchange
    /// before the connection is closed.
    http1: bool,
}

enum OnIdle {
    /// Close at once: HTTP/1, where an idle connection has no request in
    /// flight.
    Close,
    /// HTTP/2: a GOAWAY first, so a client about to open a stream learns
    /// not to and opens a new connection (as after gRPC's idle timeout);
    /// then, if the connection is still open and idle a timeout later (a
    /// client that never answers the GOAWAY's PING), close it.
    GoAwayThenClose,
}

/// Serves `conn` to its end; on shutdown, lets the request in flight finish
/// (`shutdown` is the connection's graceful shutdown), then closes. Closes
/// the connection once its watch finds it idle, looking every half timeout
/// (see `watch.rs`). With `park`, ends hyper's connection once `park` finds
/// it idle and returns it, its socket still open (see [`Http1`]), with the
/// watch's next look and its quiet looks so far.
///
/// A connection's task is polled several times per request, and polling a
/// token's wait or a sleep each time costs mutexes and atomics. So both are
/// polled with a waker of their own, once to register and then only when
/// that waker fires; on every other poll they cost one atomic swap.
async fn drive<C, E>(
    mut conn: Pin<Box<C>>,
    stop: &CancellationToken,
    shutdown: fn(Pin<&mut C>),
    mut watch: Watched,
    park: Option<Park>,
    peer: SocketAddr,
) -> Option<(Pin<Box<C>>, tokio::time::Instant, u8)>
where
    C: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let look = |timeout: Duration| tokio::time::Instant::now() + timeout / 2;
    let mut wait = std::pin::pin!(stop.cancelled());
    let mut next_look = std::pin::pin!(tokio::time::sleep_until(watch.first_look));
    let signal = Arc::new(Signal {
        // Set, so that the first poll registers the wait and the sleep.
        woke: AtomicBool::new(true),
        task: std::sync::Mutex::new(None),
    });
    let signal_waker = Waker::from(signal.clone());
    // The task's waker last given to `signal`.
    let mut task: Option<Waker> = None;
    let mut stopping = false;
    // A stalled body was handed to its exchange to answer (HTTP/1).
    let mut stall_answered = false;
    let mut stalled = false;
    let mut parking = false;
    let end = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if stopping {
            return Poll::Pending;
        }
        if let Some(p) = park.as_ref().filter(|p| !parking && p.at_once() && p.ready()) {
            parking = true;
            p.begin(conn.as_mut(), shutdown);
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
        }
        if !task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
            let w = cx.waker().clone();
            *signal.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(w.clone());
            task = Some(w);
        }
        if !signal.woke.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let mut own = Context::from_waker(&signal_waker);
        if wait.as_mut().poll(&mut own).is_ready() {
            stopping = true;
            shutdown(conn.as_mut());
            return conn.as_mut().poll(cx).map(Some);
        }
        while next_look.as_mut().poll(&mut own).is_ready() {
            next_look.as_mut().reset(look(watch.timeout));
            match watch.watch.look() {
                watch::Look::Fine => {
                    // Quiet since the last look: parked now if it can be.
                    if let Some(p) = park.as_ref().filter(|p| {
                        !parking && watch.watch.quiet_looks() > 0 && p.ready()
                    }) {
                        parking = true;
                        p.begin(conn.as_mut(), shutdown);
                        if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                            return Poll::Ready(Some(r));
                        }
                    }
                    continue;
                }
                watch::Look::Idle => {}
                watch::Look::Stalled if watch.http1 && !stall_answered => {
                    // The exchange answers 408 when hyper polls it next,
                    // which this poll of the connection does.
                    stall_answered = true;
                    watch.watch.stall();
                    if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                    continue;
                }
                watch::Look::Stalled => {
                    stalled = true;
                    return Poll::Ready(None);
                }
            }
            match watch.on_idle {
                OnIdle::Close => return Poll::Ready(None),
                OnIdle::GoAwayThenClose => {
                    tracing::debug!(%peer, "HTTP/2 connection idle past the header timeout; GOAWAY");
                    shutdown(conn.as_mut());
                    watch.watch.restart();
                    watch.on_idle = OnIdle::Close;
                    // The GOAWAY is written when the connection is polled.
                    if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                        return Poll::Ready(Some(r));
                    }
                }
            }
        }
        Poll::Pending
    })
    .await;
    match end {
        Some(Ok(())) if parking && !stopping && park.as_ref().is_some_and(|p| p.io.parking()) => {
            return Some((conn, next_look.deadline(), watch.watch.quiet_looks()))
        }
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(error = %e, %peer, "connection ended with an error"),
        None if stalled => {
            tracing::debug!(%peer, "request body stalled past the header timeout; closed")
        }
        None => tracing::debug!(%peer, "connection idle past the header timeout; closed"),
    }
    None
}

/// The waker a connection's shutdown wait and watch sleep are polled with:
/// it notes that one of them woke and wakes the connection's task.
struct Signal {
    woke: AtomicBool,
    task: std::sync::Mutex<Option<std::task::Waker>>,
}

impl std::task::Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woke.store(true, Ordering::Release);
        if let Some(w) = self.task.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

/// A request's future, decided synchronously: the access check, gRPC or
/// REST, the route. What hyper keeps per request is small: the response, or
/// the chosen handler's boxed future. `activity` learns of the request, and
/// of the end of its response when that is not at once.
fn handle<S: Service>(
    app: &Arc<S>,
    req: Request<Incoming>,
    peer: SocketAddr,
    conn: &Conn,
) -> Served<S> {
    let class = S::class(&req);
    // hyper decides whether such a connection lives on: it is not parked.
    if req.version() != http::Version::HTTP_11 || req.headers().contains_key(header::CONNECTION) {
        conn.activity.not_parkable();
    }
    // Only a GET answer can be a zero-copy body (HEAD has none).
    let sink = conn
        .sink
        .as_ref()
        .filter(|_| req.method() == http::Method::GET);
    let answer = if tracing::enabled!(tracing::Level::DEBUG) {
        // Debug logging: the request line is kept for the log.
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let inner = app.answer(req, peer, conn);
        Answer::Later(Box::pin(async move {
            let resp = match inner.await {
                Ok(resp) => resp,
                Err(never) => match never {},
            };
            tracing::debug!(%method, %path, status = resp.status().as_u16(), %peer, "request");
            Ok(resp)
        }))
    } else {
        app.answer(req, peer, conn)
    };
    let mut answer = answer;
    let sink = match &mut answer {
        Answer::Ready(Some(resp)) => {
            if resp.headers().contains_key(header::CONNECTION) {
                conn.activity.not_parkable();
            }
            accept_offer(resp, sink);
            None
        }
        _ => sink.cloned(),
    };
    let exchange = match &answer {
        Answer::Ready(Some(resp)) if http_body::Body::is_end_stream(resp.body()) => {
            conn.activity.answered();
            None
        }
        _ => Some(conn.activity.begin()),
    };
    Served {
        answer,
        exchange,
        class,
        sink,
        service: std::marker::PhantomData,
    }
}

/// Gives a zero-copy body the connection's sink, if it offers to be one
/// and the connection is plain HTTP/1.1.
fn accept_offer(resp: &mut Response<Body>, sink: Option<&zerocopy::Sink>) {
    if let Some(offer) = resp.extensions_mut().remove::<zerocopy::Offer>() {
        if let Some(sink) = sink {
            offer.accept(sink.clone());
        }
    }
}

/// What hyper gets per request: the answer, and the exchange it ends.
struct Served<S> {
    answer: Answer,
    exchange: Option<watch::Exchange>,
    /// The request's class, for [`Service::answered`].
    class: usize,
    /// A GET's connection sink, for a zero-copy body.
    sink: Option<zerocopy::Sink>,
    service: std::marker::PhantomData<fn() -> S>,
}

impl<S: Service> std::future::Future for Served<S> {
    type Output = Result<Response<Body>, std::convert::Infallible>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.get_mut();
        if this.exchange.as_ref().is_some_and(|ex| ex.take_stalled()) {
            // The watch found the request body stalled: answer now; the
            // handler (and the body) are dropped with this future.
            let mut resp = ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "the request body stalled: nothing arrived within the header timeout",
            )
            .into_response();
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            if let Some(ex) = &this.exchange {
                ex.not_parkable();
            }
            S::answered(this.class, resp.status());
            return std::task::Poll::Ready(Ok(resp));
        }
        let Ok(mut resp) = std::task::ready!(Pin::new(&mut this.answer).poll(cx));
        if resp.headers().contains_key(header::CONNECTION) {
            if let Some(ex) = &this.exchange {
                ex.not_parkable();
            }
        }
        accept_offer(&mut resp, this.sink.as_ref());
        S::answered(this.class, resp.status());
        // A body still to send ends the exchange when it is dropped; without
        // one the exchange ends here.
        let resp = match this.exchange.take() {
            Some(ex) if !http_body::Body::is_end_stream(resp.body()) => {
                resp.map(|body| watch::Tracked::body(body, ex))
            }
            _ => resp,
        };
        std::task::Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_by_count() {
        let logged: Vec<u64> = (1..=5000).filter(|n| accept_failure_logged(*n)).collect();
        assert_eq!(
            logged,
            [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 3072, 4096]
        );
    }

    #[test]
    fn first_bytes_tell_http1_from_the_http2_preface() {
        assert_eq!(protocol(b"GET /ping HTTP/1.1\r\n"), Some(Protocol::Http1));
        // POST and PUT share the preface's first letter only.
        assert_eq!(protocol(b"PO"), Some(Protocol::Http1));
        assert_eq!(
            protocol(b"PUT /v1/files/x HTTP/1.1\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(protocol(H2_PREFACE), Some(Protocol::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(protocol(&more), Some(Protocol::Http2));
        // Not enough to know yet: wait for more.
        assert_eq!(protocol(b""), None);
        assert_eq!(protocol(b"P"), None);
        assert_eq!(protocol(&H2_PREFACE[..23]), None);
        assert_eq!(protocol(b"PRI * HTTP/1.1"), Some(Protocol::Http1));
    }
}
