//! Black-box tests: web pages cannot drive execd (issue 15, item 7), while
//! curl-like clients, port-forwards, gateways that rewrite `Host` and the
//! `/proxy/{port}` route work as before.

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Writes `raw` on a new connection and returns everything read until the
/// daemon closes it (the requests here say `Connection: close`).
async fn raw_exchange(d: &Daemon, raw: &str) -> String {
    let mut s = TcpStream::connect(d.addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("answer within the time limit")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// A page's "simple" cross-origin POST: `text/plain`, so no preflight.
fn page_post(addr: &str, origin: &str, command: &str) -> String {
    let body = json!({ "command": command }).to_string();
    format!(
        "POST /command HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_page_cannot_run_commands() {
    let dir = TempDir::new("origin-page");
    let marker = dir.0.join("ran");
    let d = Daemon::start();
    let addr = d.addr.to_string();
    for origin in ["http://evil.example", "null", &format!("http://{addr}")] {
        let out = raw_exchange(
            &d,
            &page_post(&addr, origin, &format!("touch {}", marker.display())),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 403"), "{origin}: {out}");
        assert!(out.contains("\"code\":\"ORIGIN_NOT_ALLOWED\""), "{out}");
    }
    // What a page's WebSocket handshake looks like, to any route.
    let r = d
        .request(
            Method::GET,
            "/pty/abc/ws",
            &[
                ("origin", "http://evil.example"),
                ("connection", "Upgrade"),
                ("upgrade", "websocket"),
                ("sec-websocket-version", "13"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            Bytes::new(),
        )
        .await;
    r.assert_error(403, "ORIGIN_NOT_ALLOWED");
    // A page reading a GET answer.
    let r = d
        .request(
            Method::GET,
            "/files/info?path=/",
            &[("origin", "http://evil.example")],
            Bytes::new(),
        )
        .await;
    r.assert_error(403, "ORIGIN_NOT_ALLOWED");
    // The same POST without Origin (curl) runs; the page's never did.
    let out = raw_exchange(
        &d,
        &page_post(&addr, "x", "true").replace("Origin: x\r\n", ""),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(!marker.exists(), "a page ran a command");
}

#[tokio::test]
async fn preflights_are_refused_unless_the_origin_is_allowed() {
    let preflight = [
        ("origin", "http://app.example"),
        ("access-control-request-method", "POST"),
        (
            "access-control-request-headers",
            "content-type, x-execd-access-token",
        ),
    ];
    let d = Daemon::start_with(&["--access-token", "tok-cors"], &[]);
    let r = d
        .request(Method::OPTIONS, "/command", &preflight, Bytes::new())
        .await;
    r.assert_error(403, "ORIGIN_NOT_ALLOWED");

    let d = Daemon::start_with(
        &[
            "--access-token",
            "tok-cors",
            "--allowed-origins",
            "http://other.example, http://app.example",
        ],
        &[],
    );
    // The preflight is answered without the token: a browser never sends it there.
    let r = d.send_raw(Method::OPTIONS, "/command", None).await;
    assert_eq!(r.0, 401, "an OPTIONS without Origin is no preflight");
    let r = d
        .request(Method::OPTIONS, "/command", &preflight, Bytes::new())
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("content-type, x-execd-access-token")
    );
    assert!(r
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    // The request itself: served with the token, and readable by the page.
    let r = d
        .request(
            Method::POST,
            "/command",
            &[
                ("origin", "http://app.example"),
                ("content-type", "application/json"),
            ],
            json!({"command": "echo hi"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example")
    );
    assert!(r.text().contains("hi"));
    // Still no way in without the token.
    let r = d
        .send_as_raw(&[("origin", "http://app.example")], None)
        .await;
    assert_eq!(r, 401);
    // Another origin is still refused.
    let r = d
        .request(
            Method::GET,
            "/ping",
            &[("origin", "http://evil.example")],
            Bytes::new(),
        )
        .await;
    r.assert_error(403, "ORIGIN_NOT_ALLOWED");

    // `*`: any origin, `null` included.
    let d = Daemon::start_with(&["--allowed-origins", "*"], &[]);
    for o in ["http://evil.example", "null"] {
        let r = d
            .request(Method::GET, "/ping", &[("origin", o)], Bytes::new())
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("access-control-allow-origin"), Some(o));
    }
}

trait RawSend {
    async fn send_as_raw(&self, headers: &[(&str, &str)], token: Option<&str>) -> u16;
}

impl RawSend for Daemon {
    async fn send_as_raw(&self, headers: &[(&str, &str)], token: Option<&str>) -> u16 {
        let mut raw = format!(
            "GET /ping HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(t) = token {
            raw.push_str(&format!("X-EXECD-ACCESS-TOKEN: {t}\r\n"));
        }
        raw.push_str("\r\n");
        let out = raw_exchange(self, &raw).await;
        out[9..12].parse().unwrap()
    }
}

#[tokio::test]
async fn allowed_hosts_stop_dns_rebinding() {
    let d = Daemon::start_with(
        &["--allowed-hosts", "localhost,127.0.0.1,sbx.internal:8080"],
        &[],
    );
    // A rebound name: the page's own host, no Origin on a GET.
    assert_eq!(d.send_as_raw(&[], None).await, 200, "127.0.0.1:<port>");
    let status = |host: &'static str| {
        let d = &d;
        async move {
            let raw = format!("GET /ping HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
            let out = raw_exchange(d, &raw).await;
            if out.starts_with("HTTP/1.1 403") {
                assert!(out.contains("HOST_NOT_ALLOWED"), "{out}");
            }
            out[9..12].to_string()
        }
    };
    assert_eq!(status("evil.example:44772").await, "403");
    assert_eq!(status("localhost.evil.example").await, "403");
    // The port of an entry without one is not looked at (a port-forward
    // listens on its own port); an entry with a port needs that port.
    assert_eq!(status("localhost:54321").await, "200");
    assert_eq!(status("sbx.internal:8080").await, "200");
    assert_eq!(status("sbx.internal:9999").await, "403");
    // HTTP/1.0 without Host: refused when hosts are checked.
    let out = raw_exchange(&d, "GET /ping HTTP/1.0\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.0 403") || out.starts_with("HTTP/1.1 403"),
        "{out}"
    );
}

/// What curl, the SDKs, `kubectl port-forward` and a gateway send: no
/// Origin, and a Host that may name anything. All served, unchanged.
#[tokio::test]
async fn clients_without_origin_work_unchanged() {
    let d = Daemon::start_with(&["--access-token", "tok-clients"], &[]);
    // curl 8: its exact request head.
    let out = raw_exchange(
        &d,
        &format!(
            "POST /command HTTP/1.1\r\nHost: {}\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\nX-EXECD-ACCESS-TOKEN: tok-clients\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"command\":\"echo curl\"}}",
            d.addr,
            r#"{"command":"echo curl"}"#.len()
        ),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("curl"), "{out}");
    // A port-forward (Host names the local end) and a gateway that rewrites
    // Host and adds the router's headers.
    for (host, extra) in [
        ("127.0.0.1:54321", ""),
        ("localhost:8080", ""),
        (
            "sandbox-router-svc.agent-sandbox-system.svc.cluster.local:8080",
            "X-Sandbox-ID: sb-1\r\nX-Sandbox-Namespace: default\r\nX-Sandbox-Port: 44772\r\nX-Forwarded-For: 10.0.0.7\r\n",
        ),
    ] {
        let out = raw_exchange(
            &d,
            &format!(
                "POST /command HTTP/1.1\r\nHost: {host}\r\n{extra}X-EXECD-ACCESS-TOKEN: tok-clients\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{{\"command\":\"echo ok\"}}",
                r#"{"command":"echo ok"}"#.len()
            ),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 200"), "{host}: {out}");
        assert!(out.contains("ok"), "{out}");
    }
}

/// A tiny upstream service: answers `ok <Host>` to every request.
async fn upstream() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&got).to_lowercase();
                let host = head
                    .lines()
                    .find_map(|l| l.strip_prefix("host: "))
                    .unwrap_or("")
                    .to_string();
                let body = format!("ok {host}");
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    });
    port
}

#[tokio::test]
async fn proxied_requests_work_and_pages_are_refused_there_too() {
    let port = upstream().await;
    let d = Daemon::start_with(&["--access-token", "tok-proxy"], &[]);
    let path = format!("/proxy/{port}/app?q=1");
    let r = d
        .request(
            Method::GET,
            &path,
            &[("host", "gateway.example")],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), format!("ok 127.0.0.1:{port}"));
    let r = d
        .request(
            Method::POST,
            &path,
            &[("origin", "http://evil.example")],
            "x",
        )
        .await;
    r.assert_error(403, "ORIGIN_NOT_ALLOWED");
}

/// Listening beyond loopback without a token is warned about at start-up.
/// In a network namespace of its own, so nothing outside can reach it.
#[tokio::test]
async fn a_start_up_warning_without_token_beyond_loopback() {
    let dir = TempDir::new("origin-warn");
    let start = |bind: &str, token: Option<&str>, log: &str| {
        let log = dir.0.join(log);
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", env!("CARGO_BIN_EXE_execd")])
            .args(["--port", "0", "--bind", bind, "--log-level", "4"])
            .args([
                "--data-dir",
                dir.0
                    .join(format!("data-{bind}-{}", token.is_some()))
                    .to_str()
                    .unwrap(),
            ])
            .arg("--log-file")
            .arg(&log);
        if let Some(t) = token {
            cmd.args(["--access-token", t]);
        }
        let mut d = Daemon::launch(cmd, &[], &[]);
        d.signal(libc::SIGTERM);
        d.wait_exit(Duration::from_secs(10));
        std::fs::read_to_string(log).unwrap_or_default()
    };
    let warned = |log: &str| log.contains("without an access token");
    assert!(
        warned(&start("0.0.0.0", None, "a")),
        "0.0.0.0 without token"
    );
    assert!(warned(&start("::", None, "b")), ":: without token");
    assert!(!warned(&start("0.0.0.0", Some("t"), "c")), "with a token");
    assert!(!warned(&start("127.0.0.1", None, "d")), "loopback");
}
