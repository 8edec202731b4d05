//! Black-box tests of `ANY /proxy/{port}/{path…}`: the real binary in front of
//! a small service started inside each test.

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

type UpBody = UnsyncBoxBody<Bytes, Infallible>;

/// A body fed frame by frame from a channel.
fn channel_body(rx: mpsc::Receiver<Bytes>) -> UpBody {
    let s = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    StreamBody::new(s).boxed_unsync()
}

fn full_body(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed_unsync()
}

/// FNV-1a, 64-bit: enough to compare bodies byte for byte.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Deterministic test bytes: piece `i` of a stream.
fn piece(i: usize, len: usize) -> Bytes {
    (0..len)
        .map(|j| ((i * 31 + j * 7) % 251) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// The service behind the proxy.
struct Upstream {
    port: u16,
    /// Requests it has seen.
    hits: Arc<AtomicUsize>,
    /// Lets `/sse` write its second event.
    next_event: Arc<Notify>,
    /// One message per request body whose first bytes arrived at `/upload`.
    first_bytes: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    /// One message per `/sse` stream whose reader went away.
    sse_gone: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

#[derive(Clone)]
struct UpState {
    hits: Arc<AtomicUsize>,
    next_event: Arc<Notify>,
    first_bytes: mpsc::UnboundedSender<()>,
    sse_gone: mpsc::UnboundedSender<()>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (tx, rx) = mpsc::unbounded_channel();
        let (gone_tx, gone_rx) = mpsc::unbounded_channel();
        let state = UpState {
            hits: Arc::new(AtomicUsize::new(0)),
            next_event: Arc::new(Notify::new()),
            first_bytes: tx,
            sse_gone: gone_tx,
        };
        let up = Upstream {
            port,
            hits: state.hits.clone(),
            next_event: state.next_event.clone(),
            first_bytes: tokio::sync::Mutex::new(rx),
            sse_gone: tokio::sync::Mutex::new(gone_rx),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(serve(state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        up
    }
}

async fn serve(state: UpState, req: Request<Incoming>) -> Response<UpBody> {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_string();
    if path == "/sse" {
        let (tx, rx) = mpsc::channel(1);
        let next = state.next_event.clone();
        let gone = state.sse_gone.clone();
        tokio::spawn(async move {
            if tx.send(Bytes::from_static(b"data: one\n\n")).await.is_err() {
                let _ = gone.send(());
                return;
            }
            tokio::select! {
                _ = next.notified() => {
                    let _ = tx.send(Bytes::from_static(b"data: two\n\n")).await;
                }
                _ = tx.closed() => {
                    let _ = gone.send(());
                }
            }
        });
        return Response::builder()
            .header("content-type", "text/event-stream")
            .body(channel_body(rx))
            .expect("response");
    }
    if path == "/big" {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..BIG_PIECES {
                if tx.send(piece(i, PIECE)).await.is_err() {
                    return;
                }
            }
        });
        return Response::builder()
            .header("x-upstream", "big")
            .body(channel_body(rx))
            .expect("response");
    }
    let header = |name: &str| -> Value {
        let all: Vec<&str> = req
            .headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if all.is_empty() {
            Value::Null
        } else {
            Value::String(all.join(" | "))
        }
    };
    let mut echo = json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "host": header("host"),
        "xff": header("x-forwarded-for"),
        "xfp": header("x-forwarded-proto"),
        "xfh": header("x-forwarded-host"),
        "token": header("x-execd-access-token"),
        "connection": header("connection"),
        "custom": header("x-custom"),
        "proxied": header("x-execd-proxied"),
    });
    let status = req
        .headers()
        .get("x-want-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .unwrap_or(200);
    let mut body = req.into_body();
    let (mut len, mut sum, mut told) = (0usize, Fnv::new(), false);
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(d) = frame.into_data() {
            len += d.len();
            sum.update(&d);
            if path == "/upload" && !told && !d.is_empty() {
                told = true;
                let _ = state.first_bytes.send(());
            }
        }
    }
    echo["len"] = json!(len);
    echo["sum"] = json!(format!("{:016x}", sum.0));
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-upstream", "echo")
        .body(full_body(echo.to_string()))
        .expect("response")
}

const PIECE: usize = 64 * 1024;
const BIG_PIECES: usize = 64; // 4 MiB

/// A WebSocket echo service on its own port.
async fn ws_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// Sends a request whose body the caller feeds through the returned sender.
async fn send_streaming(
    d: &Daemon,
    method: Method,
    path: &str,
) -> (
    mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<http::Response<Incoming>>,
) {
    let stream = TcpStream::connect(d.addr).await.expect("connect");
    stream.set_nodelay(true).ok();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let (tx, rx) = mpsc::channel(4);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", d.addr.to_string());
    if let Some(t) = &d.token {
        req = req.header("x-execd-access-token", t.as_str());
    }
    let req = req.body(channel_body(rx)).expect("request");
    let resp = tokio::spawn(async move { sender.send_request(req).await.expect("send") });
    (tx, resp)
}

#[tokio::test]
async fn get_with_query_and_every_method() {
    let up = Upstream::start().await;
    let d = Daemon::start();
    let r = d
        .get(&format!("/proxy/{}/echo/a%20b/?x=1&y=%2F&x=2", up.port))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-upstream"), Some("echo"));
    let v = r.json();
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/echo/a%20b/");
    assert_eq!(v["query"], "x=1&y=%2F&x=2");
    assert_eq!(v["len"], 0);

    // No path after the port is the service's root.
    for p in [
        format!("/proxy/{}", up.port),
        format!("/proxy/{}/", up.port),
    ] {
        let r = d.get(&p).await;
        assert_eq!(r.status, 200, "{p}: {}", r.text());
        assert_eq!(r.json()["path"], "/", "{p}");
    }

    for m in ["POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"] {
        let method = Method::from_bytes(m.as_bytes()).expect("method");
        let r = d
            .request(
                method,
                &format!("/proxy/{}/m", up.port),
                &[("x-want-status", "202")],
                "body",
            )
            .await;
        assert_eq!(r.status, 202, "{m}: {}", r.text());
        let v = r.json();
        assert_eq!(v["method"], m);
        assert_eq!(v["len"], 4, "{m}");
    }
}

#[tokio::test]
async fn bodies_stream_both_ways() {
    let up = Upstream::start().await;
    let d = Daemon::start();

    // Upload: the service sees the first bytes before the client has sent the rest.
    let (tx, resp) = send_streaming(&d, Method::POST, &format!("/proxy/{}/upload", up.port)).await;
    let mut sent = Fnv::new();
    let first = piece(0, PIECE);
    sent.update(&first);
    tx.send(first).await.expect("send first piece");
    within("first bytes at the service", async {
        up.first_bytes.lock().await.recv().await
    })
    .await
    .expect("first-bytes signal");
    let pieces = 80; // 5 MiB
    for i in 1..pieces {
        let p = piece(i, PIECE);
        sent.update(&p);
        tx.send(p).await.expect("send piece");
    }
    drop(tx);
    let r = within("upload response", resp).await.expect("join");
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.expect("body").to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(v["len"], pieces * PIECE);
    assert_eq!(v["sum"], format!("{:016x}", sent.0));

    // Download: 4 MiB generated piece by piece, compared on arrival.
    let r = within(
        "download",
        d.send(
            Method::GET,
            &format!("/proxy/{}/big", up.port),
            &[],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-upstream"], "big");
    let mut want = Fnv::new();
    for i in 0..BIG_PIECES {
        want.update(&piece(i, PIECE));
    }
    let mut got = Fnv::new();
    let mut len = 0;
    let mut body = r.into_body();
    while let Some(f) = within("download frame", body.frame()).await {
        if let Ok(d) = f.expect("frame").into_data() {
            len += d.len();
            got.update(&d);
        }
    }
    assert_eq!(len, BIG_PIECES * PIECE);
    assert_eq!(got.0, want.0);
}

#[tokio::test]
async fn forwarding_headers_set_and_ours_dropped() {
    let up = Upstream::start().await;
    let d = Daemon::start_with(&["--access-token", "s3cret"], &[]);
    let r = d
        .request(
            Method::GET,
            &format!("/proxy/{}/h", up.port),
            &[
                ("x-forwarded-host", "outside.example"),
                ("x-custom", "kept"),
                ("connection", "keep-alive, x-custom-hop"),
                ("x-custom-hop", "dropped"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["host"], format!("127.0.0.1:{}", up.port));
    assert_eq!(v["xff"], "127.0.0.1");
    assert_eq!(v["xfp"], "http");
    assert_eq!(v["xfh"], Value::Null);
    assert_eq!(
        v["token"],
        Value::Null,
        "the access token reached the service"
    );
    assert_eq!(v["custom"], "kept");

    // An incoming X-Forwarded-For is extended, not replaced.
    let r = d
        .request(
            Method::GET,
            &format!("/proxy/{}/h", up.port),
            &[("x-forwarded-for", "10.1.2.3")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.json()["xff"], "10.1.2.3, 127.0.0.1");
}

#[tokio::test]
async fn event_stream_is_passed_on_promptly() {
    let up = Upstream::start().await;
    let d = Daemon::start();
    // The second event cannot have been written yet: the service waits for us.
    let mut body = first_event(&d, up.port).await;
    up.next_event.notify_one();
    let mut rest = Vec::new();
    while let Some(f) = within("second event", body.frame()).await {
        if let Ok(d) = f.expect("frame").into_data() {
            rest.extend_from_slice(&d);
        }
    }
    assert_eq!(rest, b"data: two\n\n");
}

/// Opens a WebSocket to `port` through the daemon's proxy, with `token` if given.
async fn ws_connect(
    d: &Daemon,
    port: u16,
    token: Option<&str>,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<TcpStream>,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("ws://{}/proxy/{port}/ws", d.addr)
        .into_client_request()
        .expect("ws request");
    if let Some(t) = token {
        req.headers_mut()
            .insert("x-execd-access-token", t.parse().expect("header"));
    }
    let stream = TcpStream::connect(d.addr).await.expect("connect");
    within(
        "websocket handshake",
        tokio_tungstenite::client_async(req, stream),
    )
    .await
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    let port = ws_echo().await;
    let d = Daemon::start_with(&["--access-token", "wstoken"], &[]);
    let (mut ws, resp) = ws_connect(&d, port, Some("wstoken"))
        .await
        .expect("handshake");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for msg in [
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 255]),
        Message::text("x".repeat(200_000)),
    ] {
        ws.send(msg.clone()).await.expect("ws send");
        let back = within("echo", ws.next())
            .await
            .expect("stream ended")
            .expect("ws recv");
        assert_eq!(back, msg);
    }
    ws.close(None).await.expect("close");

    // Without the token the upgrade is refused before reaching the service.
    match ws_connect(&d, port, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|(_, r)| r.status())),
    }
}

#[tokio::test]
async fn unreachable_service_is_502() {
    let d = Daemon::start();
    let port = closed_port().await;
    let r = within("502", d.get(&format!("/proxy/{port}/x"))).await;
    r.assert_error(502, "BAD_GATEWAY");
    let msg = r.json()["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains(&port.to_string()), "{msg}");

    // A service that accepts and hangs up without answering.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    let r = within("502 on hang-up", d.get(&format!("/proxy/{port}/x"))).await;
    r.assert_error(502, "BAD_GATEWAY");
}

#[tokio::test]
async fn bad_or_missing_port_is_400() {
    let d = Daemon::start();
    for p in [
        "/proxy/0/x",
        "/proxy/65536/x",
        "/proxy/-1/x",
        "/proxy/abc",
        "/proxy/+80/",
        "/proxy/",
        "/proxy",
        "/proxy//x",
    ] {
        let r = d.request(Method::POST, p, &[], "x").await;
        r.assert_error(400, "INVALID_PORT");
    }
}

#[tokio::test]
async fn token_required_on_proxy_routes() {
    let up = Upstream::start().await;
    let d = Daemon::start_with(&["--access-token", "tok"], &[]);
    let path = format!("/proxy/{}/echo", up.port);
    let (status, _) = d.send_raw(Method::GET, &path, None).await;
    assert_eq!(status, 401);
    let (status, _) = d.send_raw(Method::POST, &path, Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = d.send_raw(Method::GET, "/proxy/", None).await;
    assert_eq!(status, 401);
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        0,
        "service reached without a token"
    );
    let (status, _) = d.send_raw(Method::GET, &path, Some("tok")).await;
    assert_eq!(status, 200);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}

/// Reads an event stream through the proxy up to the end of its first event.
async fn first_event(d: &Daemon, port: u16) -> Incoming {
    let r = within(
        "SSE response head",
        d.send(
            Method::GET,
            &format!("/proxy/{port}/sse"),
            &[],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    let mut got = Vec::new();
    while !got.ends_with(b"\n\n") {
        let f = within("first event", body.frame())
            .await
            .expect("stream ended before the first event")
            .expect("frame");
        if let Ok(d) = f.into_data() {
            got.extend_from_slice(&d);
        }
    }
    assert_eq!(got, b"data: one\n\n");
    body
}

#[tokio::test]
async fn client_going_away_ends_the_upstream_exchange() {
    let up = Upstream::start().await;
    let d = Daemon::start();
    let body = first_event(&d, up.port).await;
    drop(body);
    within("the service sees its reader go", async {
        up.sse_gone.lock().await.recv().await
    })
    .await
    .expect("gone signal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_proxied_streams_and_websockets() {
    let up = Upstream::start().await;
    let ws_port = ws_echo().await;
    let mut d = Daemon::start_with(&["--graceful-shutdown-timeout", "60s"], &[]);
    let _sse = first_event(&d, up.port).await;
    let (mut ws, _) = ws_connect(&d, ws_port, None).await.expect("handshake");
    ws.send(Message::text("ping")).await.expect("send");
    assert_eq!(
        within("echo", ws.next())
            .await
            .expect("open")
            .expect("recv"),
        Message::text("ping")
    );
    d.signal(libc::SIGTERM);
    // Far less than the 60 s grace: nothing proxied holds shutdown up.
    let status = tokio::task::spawn_blocking(move || d.wait_exit(Duration::from_secs(15)))
        .await
        .expect("join")
        .expect("execd exits while a proxied stream and a WebSocket are open");
    assert!(status.success(), "{status:?}");
    within("the service sees its reader go", async {
        up.sse_gone.lock().await.recv().await
    })
    .await
    .expect("gone signal");
}

#[tokio::test]
async fn client_going_away_before_an_answer_closes_the_upstream_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A service that reads the request head, never answers, and reports when
    // its connection is closed by the other side.
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = l.local_addr().expect("addr").port();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<()>();
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel::<()>();
    tokio::spawn(async move {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    if head.windows(4).any(|w| w == b"\r\n\r\n") && !got_tx.is_closed() {
                        let _ = got_tx.send(());
                    }
                }
            }
        }
        let _ = closed_tx.send(());
    });
    let d = Daemon::start();
    let mut c = TcpStream::connect(d.addr).await.expect("connect");
    c.write_all(format!("GET /proxy/{port}/hang HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    within("request at the service", got_rx.recv())
        .await
        .expect("request signal");
    drop(c);
    within("the service's connection closed", closed_rx.recv())
        .await
        .expect("closed signal");
}

#[tokio::test]
async fn proxying_to_execd_itself_is_refused() {
    let d = Daemon::start();
    let r = d.get(&format!("/proxy/{}/ping", d.addr.port())).await;
    r.assert_error(400, "INVALID_PORT");
    assert!(r.text().contains("loop"), "{}", r.text());
}

/// Issue 15, item 9: a chain through `--grpc-port` (any port execd listens
/// on, ephemeral ones included) is refused like one through `--port`.
#[tokio::test]
async fn proxying_to_any_port_of_execd_is_refused() {
    let d = Daemon::start_with(&["--grpc-port", "0"], &[]);
    // The gRPC port is announced in the log only; find it from /proc: the
    // daemon's listening sockets other than the main one.
    let ports = listening_ports(d.pid());
    let grpc = ports
        .into_iter()
        .find(|p| *p != d.addr.port())
        .expect("the --grpc-port listener");
    let r = within("grpc port", d.get(&format!("/proxy/{grpc}/ping"))).await;
    r.assert_error(400, "INVALID_PORT");
    assert!(r.text().contains("loop"), "{}", r.text());
}

/// The TCP ports `pid` listens on, from /proc/net/tcp by socket inode.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // local_address, state 0A = LISTEN, inode.
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                if let Some(port) = f[1].rsplit(':').next() {
                    out.push(u16::from_str_radix(port, 16).expect("hex port"));
                }
            }
        }
    }
    out
}

/// Every proxied request carries `X-EXECD-Proxied: 1`, and a request that
/// already has it is refused before any connect: a loop through a service
/// (or a port execd cannot know of) ends at its second hop.
#[tokio::test]
async fn a_request_execd_already_proxied_is_refused() {
    let up = Upstream::start().await;
    let d = Daemon::start();
    let path = format!("/proxy/{}/echo", up.port);
    let r = within(
        "marked",
        d.request(Method::GET, &path, &[("x-execd-proxied", "1")], ""),
    )
    .await;
    r.assert_error(508, "LOOP_DETECTED");
    assert_eq!(up.hits.load(Ordering::SeqCst), 0, "service reached");

    // Normal proxying still works, and the service sees the mark.
    let r = within("plain", d.request(Method::GET, &path, &[], "")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["proxied"], "1");
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);
}
