//! Black-box tests of issue 15's small items: `/v1/metadata` serves only
//! allowed names (13); accept failures at EMFILE are logged by count, a PTY
//! cwd that cannot be made is a 4xx, the query token is never taken for
//! gRPC (14).

mod common;

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::{BodyExt, Full};
use serde_json::json;

#[tokio::test]
async fn metadata_serves_no_secret_by_default() {
    let secrets = [
        ("SANDBOX_DB_PASS", "hunter2"),
        ("SANDBOX_GITHUB_PAT", "ghp_abcdef123456"),
        (
            "SANDBOX_DATABASE_URL",
            "postgres://app:s3cr3t-pw@db:5432/app",
        ),
        ("SANDBOX_STRIPE", "sk_live_51abc"),
        ("SANDBOX_API_TOKEN", "tok"),
    ];
    let mut envs = secrets.to_vec();
    envs.push(("SANDBOX_ID", "sb-7"));
    envs.push(("SANDBOX_NAMESPACE", "team-a"));
    let d = Daemon::start_with(&[], &envs);
    let r = d.get("/v1/metadata").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for (name, value) in secrets {
        assert!(
            !text.contains(name) && !text.contains(value),
            "{name}: {text}"
        );
    }
    let v = r.json();
    assert_eq!(v["env"]["SANDBOX_ID"], "sb-7");
    assert_eq!(v["env"]["SANDBOX_NAMESPACE"], "team-a");

    // An operator's own list; a pattern still never lets a secret through.
    let d = Daemon::start_with(&["--metadata-env", "SANDBOX_*"], &envs);
    let text = d.get("/v1/metadata").await.text();
    for (name, value) in secrets {
        if name == "SANDBOX_STRIPE" {
            // Chosen by the operator's pattern: served, as asked.
            assert!(text.contains(value), "{text}");
            continue;
        }
        assert!(!text.contains(value), "{name}: {text}");
    }
}

/// A daemon limited to 40 open files, flooded with connections: the
/// warnings grow with the logarithm of the failed accepts, not with them.
#[tokio::test]
async fn accept_failures_at_emfile_are_logged_by_count() {
    let dir = TempDir::new("emfile");
    let log = dir.0.join("log");
    let mut cmd = Command::new("prlimit");
    cmd.args(["--nofile=40:40", env!("CARGO_BIN_EXE_execd")])
        .args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"])
        .args(["--data-dir", dir.0.join("data").to_str().unwrap()])
        .arg("--log-file")
        .arg(&log);
    let d = Daemon::launch(cmd, &[], &[]);
    // More connections than the daemon can hold: the rest wait in the
    // backlog, and every accept of them fails.
    let held: Vec<std::net::TcpStream> = (0..80)
        .map(|_| std::net::TcpStream::connect(d.addr).expect("connect"))
        .collect();
    let lines = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("accept failed"))
            .map(String::from)
            .collect()
    };
    // The count of failures a line reports (absent before the fix).
    let reported = |l: &String| -> u64 {
        l.split("failures=")
            .nth(1)
            .and_then(|n| n.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    // Until 256 failures are reported, or 256 lines are written.
    eventually(Duration::from_secs(60), "256 failed accepts", || {
        let l = lines();
        l.len() >= 256 || l.iter().map(reported).max().unwrap_or(0) >= 256
    })
    .await;
    let l = lines();
    let failures = l.iter().map(reported).max().unwrap_or(0);
    assert!(failures >= 256, "failures reported: {l:?}");
    // 1, 2, 4, ... 256: nine lines (ten if the 512th came meanwhile).
    assert!(
        l.len() as u64 <= 2 + failures.ilog2() as u64,
        "{} lines for {failures} failures",
        l.len()
    );
    drop(held);
    // Still serving once the connections are gone.
    eventually(Duration::from_secs(30), "served again", || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(d.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    })
    .await;
}

#[tokio::test]
async fn a_pty_cwd_that_cannot_be_made_is_a_client_error() {
    let dir = TempDir::new("pty-cwd");
    let file = dir.0.join("file");
    std::fs::write(&file, "x").unwrap();
    let d = Daemon::start();
    for cwd in [file.join("sub"), file.clone()] {
        let r = d
            .post_json("/pty", &json!({ "cwd": cwd.to_str().unwrap() }))
            .await;
        r.assert_error(400, "INVALID_REQUEST_BODY");
    }
    // A directory it can make is made.
    let r = d
        .post_json(
            "/pty",
            &json!({ "cwd": dir.0.join("new/sub").to_str().unwrap() }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(dir.0.join("new/sub").is_dir());
}

/// One HTTP/2 request with a gRPC content type and no token header.
async fn grpc_status(d: &Daemon, path: &str) -> String {
    let stream = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(format!("http://{}{path}", d.addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    if let Some(s) = parts.headers.get("grpc-status") {
        return s.to_str().unwrap().to_string();
    }
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    trailers
        .get("grpc-status")
        .map(|s| s.to_str().unwrap().to_string())
        .unwrap_or_default()
}

/// `?access_token=` is for browsers' WebSockets (`/pty/{id}/ws`): a gRPC
/// request on that path with it is still unauthenticated.
#[tokio::test]
async fn the_query_token_is_never_taken_for_grpc() {
    let d = Daemon::start_with(&["--access-token", "tok-query"], &[]);
    // UNAUTHENTICATED (16), not UNIMPLEMENTED (12) after passing the check.
    assert_eq!(
        grpc_status(&d, "/pty/abc/ws?access_token=tok-query").await,
        "16"
    );
    assert_eq!(
        grpc_status(
            &d,
            "/process.v1.ProcessService/Execute?access_token=tok-query"
        )
        .await,
        "16"
    );
    // The REST route still takes it.
    let (status, _) = d
        .send_raw(Method::GET, "/pty/abc/ws?access_token=tok-query", None)
        .await;
    assert_ne!(status, 401);
}

/// Sends a request head with the given header lines at once; the status,
/// or `None` when the daemon closed or reset the connection instead.
fn head_status(d: &Daemon, headers: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!("GET /ping HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    // The daemon may answer and close before reading everything.
    let _ = s.write_all(head.as_bytes());
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    std::str::from_utf8(out.get(9..12)?).ok()?.parse().ok()
}

/// What SECURITY.md says of request heads: at most 100 header fields; a
/// head is refused once the 64 KiB read buffer is full without its end,
/// and one read may take it past that (heads up to 112 KiB sent at once
/// were measured to pass), never to 256 KiB.
#[tokio::test]
async fn request_head_limits() {
    let d = Daemon::start();
    let fields = |n: usize| (0..n).map(|i| format!("X-H{i}: a\r\n")).collect::<String>();
    // Host and Connection are two of the 100.
    assert_eq!(head_status(&d, &fields(98)), Some(200));
    assert_eq!(head_status(&d, &fields(99)), Some(431));
    let big = |n: usize| format!("X-Big: {}\r\n", "a".repeat(n));
    assert_eq!(head_status(&d, &big(60_000)), Some(200));
    let r = head_status(&d, &big(256 << 10));
    assert!(r.is_none() || r == Some(431), "{r:?}");
}
