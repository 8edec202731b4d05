//! E2B envd's API on `--e2b-port`: the HTTP routes and the Connect RPC
//! framing (unary and server-streaming, JSON and proto, errors), over
//! HTTP/1.1 and HTTP/2, against the real binary. File operations act only
//! inside temporary directories the tests create.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, Bytes};
use common::Daemon;
use execd::e2b::proto;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use prost::Message;
use serde_json::{json, Value};
use tokio::net::TcpStream;

/// A temporary directory, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("execd-e2b-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn join(&self, s: &str) -> String {
        self.0.join(s).to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A daemon with the E2B port on, and that port's address.
fn daemon(args: &[&str]) -> (Daemon, SocketAddr) {
    Daemon::start_with_e2b(args)
}

struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    fn ct(&self) -> &str {
        self.headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// One request over a new HTTP/1.1 (or, with `h2`, h2c) connection.
async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    h2: bool,
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(stream);
    let mut b = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b.body(Full::new(Bytes::from(body))).unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.into_body().collect())
        .await
        .expect("response within 60 s")
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path, &[], Vec::new(), false).await
}

/// A unary JSON call.
async fn unary(addr: SocketAddr, method: &str, body: Value) -> Reply {
    send(
        addr,
        Method::POST,
        method,
        &[("content-type", "application/json")],
        body.to_string().into_bytes(),
        false,
    )
    .await
}

fn envelope(flags: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![flags];
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// The envelopes of a streaming body: (flags, message).
fn envelopes(mut b: Bytes) -> Vec<(u8, Bytes)> {
    let mut out = Vec::new();
    while b.len() >= 5 {
        let flags = b[0];
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        b.advance(5);
        out.push((flags, b.split_to(len)));
    }
    assert!(b.is_empty(), "trailing bytes after the last envelope");
    out
}

/// A server-streaming JSON call: its messages and its end message.
async fn stream_json(addr: SocketAddr, method: &str, req: Value, h2: bool) -> (Vec<Value>, Value) {
    let r = send(
        addr,
        Method::POST,
        method,
        &[("content-type", "application/connect+json")],
        envelope(0, req.to_string().as_bytes()),
        h2,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.ct(), "application/connect+json");
    let mut env = envelopes(r.body);
    let (flags, end) = env.pop().expect("an end message");
    assert_eq!(flags, 2, "the last envelope is the end-stream message");
    assert!(env.iter().all(|(f, _)| *f == 0));
    let msgs = env
        .into_iter()
        .map(|(_, m)| serde_json::from_slice(&m).unwrap())
        .collect();
    (msgs, serde_json::from_slice(&end).unwrap())
}

fn b64(s: &str) -> Vec<u8> {
    execd::connect::json::b64_decode(s).unwrap()
}

/// stdout of JSON process events.
fn stdout_of(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| e["event"]["data"]["stdout"].as_str())
        .map(|s| String::from_utf8(b64(s)).unwrap())
        .collect()
}

fn sh(cmd: &str) -> Value {
    json!({"process": {"cmd": "/bin/sh", "args": ["-c", cmd]}})
}

#[tokio::test]
async fn health_metrics_envs_and_unknown_routes() {
    let (_d, a) = daemon(&[]);
    assert_eq!(get(a, "/health").await.status, 204);
    let m = get(a, "/metrics").await;
    assert_eq!(m.status, 200);
    let v = m.json();
    for k in [
        "ts",
        "cpu_count",
        "cpu_used_pct",
        "mem_total",
        "mem_used",
        "disk_total",
        "disk_used",
    ] {
        assert!(v.get(k).is_some(), "/metrics lacks {k}: {v}");
    }
    assert_eq!(get(a, "/envs").await.json(), json!({}));
    let r = get(a, "/command").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], 404);
}

#[tokio::test]
async fn init_sets_env_vars_workdir_and_token() {
    let (_d, a) = daemon(&[]);
    let dir = TempDir::new("init");
    let r = send(
        a,
        Method::POST,
        "/init",
        &[("content-type", "application/json")],
        json!({"envVars": {"E2B_T": "v1"}, "defaultWorkdir": dir.0, "accessToken": "tok",
               "hyperloopIP": "10.0.0.1", "timestamp": "2020-01-01T00:00:00Z"})
        .to_string()
        .into_bytes(),
        false,
    )
    .await;
    assert_eq!(r.status, 204);
    // The token is now required.
    assert_eq!(get(a, "/envs").await.status, 401);
    let envs = send(
        a,
        Method::GET,
        "/envs",
        &[("x-access-token", "tok")],
        vec![],
        false,
    )
    .await;
    assert_eq!(envs.json(), json!({"E2B_T": "v1"}));
    let (ev, end) = stream_json(a, "/process.Process/Start", sh("echo $E2B_T; pwd"), false).await;
    assert_eq!(end["error"]["code"], "unauthenticated");
    assert!(ev.is_empty());
    let r = send(
        a,
        Method::POST,
        "/process.Process/Start",
        &[
            ("content-type", "application/connect+json"),
            ("x-access-token", "tok"),
        ],
        envelope(0, sh("echo $E2B_T; pwd").to_string().as_bytes()),
        false,
    )
    .await;
    let msgs: Vec<Value> = envelopes(r.body)
        .into_iter()
        .filter(|(f, _)| *f == 0)
        .map(|(_, m)| serde_json::from_slice(&m).unwrap())
        .collect();
    assert_eq!(stdout_of(&msgs), format!("v1\n{}\n", dir.0.display()));
}

#[tokio::test]
async fn start_streams_start_data_end_and_the_end_message() {
    let (_d, a) = daemon(&[]);
    for h2 in [false, true] {
        let (ev, end) = stream_json(
            a,
            "/process.Process/Start",
            sh("echo hi; echo oops >&2; exit 3"),
            h2,
        )
        .await;
        assert_eq!(end, json!({}));
        let pid = ev[0]["event"]["start"]["pid"]
            .as_u64()
            .expect("a start event first");
        assert!(pid > 0);
        assert_eq!(stdout_of(&ev), "hi\n");
        let err: String = ev
            .iter()
            .filter_map(|e| e["event"]["data"]["stderr"].as_str())
            .map(|s| String::from_utf8(b64(s)).unwrap())
            .collect();
        assert_eq!(err, "oops\n");
        let last = &ev.last().unwrap()["event"]["end"];
        assert_eq!(last["exitCode"], 3);
        assert_eq!(last["exited"], true);
        assert_eq!(last["status"], "exit status 3");
    }
}

#[tokio::test]
async fn start_in_the_proto_codec() {
    let (_d, a) = daemon(&[]);
    let req = proto::StartRequest {
        process: Some(proto::ProcessConfig {
            cmd: "/bin/echo".into(),
            args: vec!["proto".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    let r = send(
        a,
        Method::POST,
        "/process.Process/Start",
        &[("content-type", "application/connect+proto")],
        envelope(0, &req.encode_to_vec()),
        true,
    )
    .await;
    assert_eq!(r.ct(), "application/connect+proto");
    let env = envelopes(r.body);
    let (flags, end) = env.last().unwrap();
    assert_eq!((*flags, &end[..]), (2, &b"{}"[..]));
    let events: Vec<proto::Event> = env[..env.len() - 1]
        .iter()
        .map(|(_, m)| {
            proto::EventResponse::decode(&m[..])
                .unwrap()
                .event
                .unwrap()
                .event
                .unwrap()
        })
        .collect();
    assert!(matches!(events[0], proto::Event::Start(_)));
    let out: Vec<u8> = events
        .iter()
        .filter_map(|e| match e {
            proto::Event::Data(proto::DataEvent {
                output: Some(proto::Output::Stdout(b)),
            }) => Some(b.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(out, b"proto\n");
    assert!(matches!(events.last(), Some(proto::Event::End(e)) if e.exit_code == 0 && e.exited));
}

#[tokio::test]
async fn unary_calls_in_both_codecs_and_connect_errors() {
    let (_d, a) = daemon(&[]);
    let dir = TempDir::new("unary");
    let sub = dir.join("sub");
    // MakeDir (JSON), then again: already_exists as a 409 Connect error.
    let r = unary(a, "/filesystem.Filesystem/MakeDir", json!({"path": sub})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["entry"]["type"], "FILE_TYPE_DIRECTORY");
    let r = unary(a, "/filesystem.Filesystem/MakeDir", json!({"path": sub})).await;
    assert_eq!(r.status, 409);
    assert_eq!(r.ct(), "application/json");
    assert_eq!(r.json()["code"], "already_exists");
    // Stat in the proto codec.
    std::fs::write(dir.0.join("f"), b"12345").unwrap();
    let req = proto::PathRequest {
        path: dir.join("f"),
    };
    let r = send(
        a,
        Method::POST,
        "/filesystem.Filesystem/Stat",
        &[("content-type", "application/proto")],
        req.encode_to_vec(),
        false,
    )
    .await;
    assert_eq!((r.status, r.ct()), (200, "application/proto"));
    let e = proto::EntryResponse::decode(&r.body[..])
        .unwrap()
        .entry
        .unwrap();
    assert_eq!(
        (e.name.as_str(), e.size, e.r#type),
        ("f", 5, proto::FILE_TYPE_FILE)
    );
    // ListDir with depth: the file, the directory, a file inside it.
    std::fs::write(dir.0.join("sub/g"), b"").unwrap();
    let r = unary(
        a,
        "/filesystem.Filesystem/ListDir",
        json!({"path": dir.0, "depth": 2}),
    )
    .await;
    let names: Vec<String> = r.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["f", "sub", "g"]);
    let r = unary(
        a,
        "/filesystem.Filesystem/ListDir",
        json!({"path": dir.0, "depth": 1}),
    )
    .await;
    assert_eq!(r.json()["entries"].as_array().unwrap().len(), 2);
    // Move, Remove, then Stat: not_found.
    let r = unary(
        a,
        "/filesystem.Filesystem/Move",
        json!({"source": dir.join("f"), "destination": dir.join("sub/h")}),
    )
    .await;
    assert_eq!(r.json()["entry"]["path"], dir.join("sub/h"));
    let r = unary(a, "/filesystem.Filesystem/Remove", json!({"path": sub})).await;
    assert_eq!(r.status, 200);
    let r = unary(a, "/filesystem.Filesystem/Stat", json!({"path": sub})).await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    // Malformed JSON, a wrong field type: invalid_argument.
    let r = send(
        a,
        Method::POST,
        "/filesystem.Filesystem/Stat",
        &[("content-type", "application/json")],
        b"{not json".to_vec(),
        false,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let r = unary(a, "/filesystem.Filesystem/ListDir", json!({"path": 5})).await;
    assert_eq!(r.json()["code"], "invalid_argument");
    // An unknown method: unimplemented (501). A streaming call's error is
    // in its end message (WatchDir on a file).
    let r = unary(a, "/process.Process/Nope", json!({})).await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (501, Some("unimplemented"))
    );
    std::fs::write(dir.0.join("notdir"), b"x").unwrap();
    let (ev, end) = stream_json(
        a,
        "/filesystem.Filesystem/WatchDir",
        json!({"path": dir.join("notdir")}),
        false,
    )
    .await;
    assert!(ev.is_empty());
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    // A content type Connect does not define: 415.
    let r = send(
        a,
        Method::POST,
        "/process.Process/List",
        &[("content-type", "text/plain")],
        vec![],
        false,
    )
    .await;
    assert_eq!(r.status, 415);
    // Compressed requests are refused.
    let r = send(
        a,
        Method::POST,
        "/process.Process/List",
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        vec![],
        false,
    )
    .await;
    assert_eq!(r.json()["code"], "unimplemented");
}

#[tokio::test]
async fn stdin_list_signal_and_connect() {
    let (_d, a) = daemon(&[]);
    // A process reading stdin, driven by SendInput and CloseStdin.
    let start = {
        let mut r = sh("cat; echo done");
        r["stdin"] = json!(true);
        r
    };
    let run = tokio::spawn(stream_json(a, "/process.Process/Start", start, false));
    let pid = wait_listed(a, "cat; echo done").await;
    let r = unary(
        a,
        "/process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": "aGVsbG8K"}}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = unary(
        a,
        "/process.Process/CloseStdin",
        json!({"process": {"pid": pid}}),
    )
    .await;
    assert_eq!(r.status, 200);
    let (ev, end) = run.await.unwrap();
    assert_eq!(end, json!({}));
    assert_eq!(stdout_of(&ev), "hello\ndone\n");

    // stdin is closed unless asked for: cat ends at once.
    let (ev, _) = stream_json(a, "/process.Process/Start", sh("cat; echo eof"), false).await;
    assert_eq!(stdout_of(&ev), "eof\n");

    // A sleeper with a tag: found by tag, Connect'ed, killed by SIGKILL.
    let mut req = sh("sleep 300");
    req["tag"] = json!("sleeper");
    let run = tokio::spawn(stream_json(a, "/process.Process/Start", req, false));
    let pid = wait_listed(a, "sleep 300").await;
    let list = unary(a, "/process.Process/List", json!({})).await.json();
    let me = list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["pid"] == pid)
        .unwrap()
        .clone();
    assert_eq!(me["tag"], "sleeper");
    assert_eq!(me["config"]["cmd"], "/bin/sh");
    let conn = tokio::spawn(stream_json(
        a,
        "/process.Process/Connect",
        json!({"process": {"tag": "sleeper"}}),
        true,
    ));
    let r = unary(
        a,
        "/process.Process/SendSignal",
        json!({"process": {"pid": pid}, "signal": "SIGNAL_SIGKILL"}),
    )
    .await;
    assert_eq!(r.status, 200);
    for task in [run, conn] {
        let (ev, end) = task.await.unwrap();
        assert_eq!(end, json!({}));
        assert_eq!(ev[0]["event"]["start"]["pid"], pid);
        let last = &ev.last().unwrap()["event"]["end"];
        assert_eq!(last["exited"], false);
        assert_eq!(last["status"], "signal: killed");
    }
    // Ended: no longer listed; Connect to an unknown pid is not_found.
    let list = unary(a, "/process.Process/List", json!({})).await.json();
    assert!(!list["processes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["pid"] == pid));
    let (_, end) = stream_json(
        a,
        "/process.Process/Connect",
        json!({"process": {"pid": 1u32 << 30}}),
        false,
    )
    .await;
    assert_eq!(end["error"]["code"], "not_found");
    let r = unary(
        a,
        "/process.Process/SendSignal",
        json!({"process": {"pid": pid}, "signal": 1}),
    )
    .await;
    assert_eq!(r.json()["code"], "invalid_argument");
}

/// Waits until a process whose last argument is `cmd` is listed; its pid.
async fn wait_listed(a: SocketAddr, cmd: &str) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = unary(a, "/process.Process/List", json!({})).await.json();
        if let Some(p) =
            list["processes"].as_array().unwrap().iter().find(|p| {
                p["config"]["args"].as_array().and_then(|a| a.last()) == Some(&json!(cmd))
            })
        {
            return p["pid"].as_u64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "{cmd} never listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn files_upload_download_range_and_signatures() {
    let (_d, a) = daemon(&[]);
    let dir = TempDir::new("files");
    // Multipart with two files; the part's file name is the path.
    let boundary = "XyZ";
    let mut form = Vec::new();
    for (name, data) in [("one.txt", "1111"), ("deep/two.txt", "22")] {
        form.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\n\r\n{data}\r\n",
                dir.join(name)
            )
            .as_bytes(),
        );
    }
    form.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let ct = format!("multipart/form-data; boundary={boundary}");
    let r = send(
        a,
        Method::POST,
        "/files",
        &[("content-type", &ct)],
        form,
        false,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(
        v[1],
        json!({"name": "two.txt", "type": "file", "path": dir.join("deep/two.txt")})
    );
    assert_eq!(std::fs::read(dir.0.join("deep/two.txt")).unwrap(), b"22");
    // octet-stream to ?path=.
    let q = format!("/files?path={}", dir.join("raw.bin"));
    let r = send(
        a,
        Method::POST,
        &q,
        &[("content-type", "application/octet-stream")],
        b"0123456789".to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    // Download, whole and one range.
    let r = get(a, &q).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"0123456789"[..]));
    let r = send(a, Method::GET, &q, &[("range", "bytes=2-4")], vec![], false).await;
    assert_eq!((r.status, &r.body[..]), (206, &b"234"[..]));
    let r = send(a, Method::GET, &q, &[("range", "bytes=50-")], vec![], false).await;
    assert_eq!(r.status, 416);
    let r = get(a, &format!("/files?path={}", dir.join("none"))).await;
    assert_eq!((r.status, r.json()["code"].as_u64()), (404, Some(404)));
    // Relative paths are the user's home's; a directory is not a file.
    let r = get(a, &format!("/files?path={}", dir.0.display())).await;
    assert_eq!(r.status, 400);
    // An unknown user.
    let r = get(a, &format!("{q}&username=no-such-user-e2b")).await;
    assert_eq!(r.status, 401);
}

#[tokio::test]
async fn signed_urls_and_tokens() {
    let (_d, a) = daemon(&[]);
    let dir = TempDir::new("sig");
    std::fs::write(dir.0.join("s"), b"secret").unwrap();
    let r = send(
        a,
        Method::POST,
        "/init",
        &[("content-type", "application/json")],
        json!({"accessToken": "T0k"}).to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(r.status, 204);
    let path = dir.join("s");
    let q = format!("/files?path={path}");
    assert_eq!(get(a, &q).await.status, 401);
    let r = send(
        a,
        Method::GET,
        &q,
        &[("x-access-token", "T0k")],
        vec![],
        false,
    )
    .await;
    assert_eq!(&r.body[..], b"secret");
    // A signature made as the SDK makes it.
    // Query values are percent-encoded, as the SDK's HTTP client does.
    let enc = |s: String| s.replace('+', "%2B").replace('/', "%2F");
    let sig = enc(execd::e2b::files::signature(&path, "read", "", "T0k", None));
    let r = get(a, &format!("{q}&signature={sig}")).await;
    assert_eq!((r.status, &r.body[..]), (200, &b"secret"[..]));
    // Signed for writing, another path, expired, tampered: refused.
    let w = enc(execd::e2b::files::signature(
        &path, "write", "", "T0k", None,
    ));
    assert_eq!(get(a, &format!("{q}&signature={w}")).await.status, 401);
    let exp = "1000";
    let old = enc(execd::e2b::files::signature(
        &path,
        "read",
        "",
        "T0k",
        Some(exp),
    ));
    assert_eq!(
        get(
            a,
            &format!("{q}&signature={old}&signature_expiration={exp}")
        )
        .await
        .status,
        401
    );
    let mut bad = sig.clone();
    let last = bad.pop();
    bad.push(if last == Some('A') { 'B' } else { 'A' });
    assert_eq!(get(a, &format!("{q}&signature={bad}")).await.status, 401);
    // /init again needs the token now.
    let r = send(
        a,
        Method::POST,
        "/init",
        &[("content-type", "application/json")],
        json!({"accessToken": "other"}).to_string().into_bytes(),
        false,
    )
    .await;
    assert_eq!(r.status, 401);
}

/// execd's own `--access-token` guards the E2B port too.
#[tokio::test]
async fn execd_access_token_guards_the_port() {
    let (_d, a) = daemon(&["--access-token", "s3cret"]);
    assert_eq!(get(a, "/health").await.status, 204);
    let r = unary(a, "/process.Process/List", json!({})).await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let r = send(
        a,
        Method::POST,
        "/process.Process/List",
        &[
            ("content-type", "application/json"),
            ("x-access-token", "s3cret"),
        ],
        b"{}".to_vec(),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(get(a, "/files?path=/etc/hostname").await.status, 401);
}

/// A streaming response read envelope by envelope, as it arrives.
struct Envelopes {
    body: hyper::body::Incoming,
    buf: bytes::BytesMut,
}

impl Envelopes {
    async fn open(addr: SocketAddr, path: &str, req: Value, headers: &[(&str, &str)]) -> Envelopes {
        let stream = TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/connect+json");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let body = Full::new(Bytes::from(envelope(0, req.to_string().as_bytes())));
        let resp = s.send_request(b.body(body).unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        Envelopes {
            body: resp.into_body(),
            buf: bytes::BytesMut::new(),
        }
    }

    /// The next message (None after the end-stream message).
    async fn next(&mut self) -> Option<Value> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    let m = self.buf.split_to(len);
                    if flags & 2 != 0 {
                        return None;
                    }
                    return Some(serde_json::from_slice(&m).unwrap());
                }
            }
            let f = tokio::time::timeout(Duration::from_secs(60), self.body.frame())
                .await
                .expect("a frame within 60 s")?
                .unwrap();
            if let Ok(d) = f.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }

    /// stdout of every message up to the end.
    async fn rest_stdout(&mut self) -> String {
        let mut all = Vec::new();
        while let Some(m) = self.next().await {
            all.push(m);
        }
        stdout_of(&all)
    }
}

/// `Connect` streams from now on (envd's behaviour); with
/// `X-Execd-Replay: true` it first replays what the command printed before.
#[tokio::test]
async fn connect_replays_missed_output_only_when_asked() {
    let (_d, a) = daemon(&[]);
    let mut req = sh("echo early; read x; echo late");
    req["stdin"] = json!(true);
    let run = tokio::spawn(stream_json(a, "/process.Process/Start", req, false));
    let pid = wait_listed(a, "echo early; read x; echo late").await;
    let sel = json!({"process": {"pid": pid}});
    let mut replay = Envelopes::open(
        a,
        "/process.Process/Connect",
        sel.clone(),
        &[("x-execd-replay", "true")],
    )
    .await;
    assert_eq!(replay.next().await.unwrap()["event"]["start"]["pid"], pid);
    // "early" has been printed once the replaying stream shows it.
    let first = replay.next().await.unwrap();
    assert_eq!(stdout_of(&[first]), "early\n");
    let mut plain = Envelopes::open(a, "/process.Process/Connect", sel, &[]).await;
    assert_eq!(plain.next().await.unwrap()["event"]["start"]["pid"], pid);
    let r = unary(
        a,
        "/process.Process/SendInput",
        json!({"process": {"pid": pid}, "input": {"stdin": "eAo="}}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(replay.rest_stdout().await, "late\n");
    assert_eq!(plain.rest_stdout().await, "late\n");
    let (ev, _) = run.await.unwrap();
    assert_eq!(stdout_of(&ev), "early\nlate\n");
}

/// A form whose part headers never end fails at the 16 KiB bound (413),
/// however long the client goes on.
#[tokio::test]
async fn endless_part_headers_are_refused() {
    let (_d, a) = daemon(&[]);
    let dir = TempDir::new("endless");
    let mut form = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{}\"\r\nX-Pad: ",
        dir.join("x")
    )
    .into_bytes();
    // Past the bound, and small enough to be sent whole before the answer.
    form.extend(std::iter::repeat_n(b'a', 64 << 10));
    let r = send(
        a,
        Method::POST,
        "/files",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        form,
        false,
    )
    .await;
    assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(!dir.0.join("x").exists());
    assert_eq!(get(a, "/health").await.status, 204);
}

/// A web page cannot drive the E2B port: a request with an `Origin` that
/// `--allowed-origins` does not list is refused, as on the main port.
#[tokio::test]
async fn pages_from_other_origins_are_refused() {
    let (_d, a) = daemon(&[]);
    let r = send(
        a,
        Method::POST,
        "/process.Process/Start",
        &[
            ("content-type", "application/connect+json"),
            ("origin", "http://evil.example"),
        ],
        envelope(0, sh("echo pwned").to_string().as_bytes()),
        false,
    )
    .await;
    assert_eq!(r.status, 403);
    let r = send(
        a,
        Method::GET,
        "/files?path=/etc/hostname",
        &[("origin", "http://evil.example")],
        vec![],
        false,
    )
    .await;
    assert_eq!(r.status, 403);
}

/// `Keepalive-Ping-Interval` (seconds) sends keepalive events while a
/// process is silent.
#[tokio::test]
async fn keepalive_events_while_silent() {
    let (_d, a) = daemon(&[]);
    let mut s = Envelopes::open(
        a,
        "/process.Process/Start",
        sh("sleep 3; echo end"),
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    let mut all = Vec::new();
    while let Some(m) = s.next().await {
        all.push(m);
    }
    assert!(
        all.iter().any(|m| m["event"].get("keepalive").is_some()),
        "{all:?}"
    );
    assert_eq!(stdout_of(&all), "end\n");
    assert_eq!(all.last().unwrap()["event"]["end"]["exitCode"], 0);
}

// ---- directory watches: WatchDir and the polling watcher trio ----

/// An open server stream in either codec, read envelope by envelope.
struct Watching {
    body: hyper::body::Incoming,
    buf: bytes::BytesMut,
    /// The end-stream message, once read.
    end: Option<Value>,
}

impl Watching {
    /// Opens `WatchDir` (`proto`: the binary codec; `h2`: over h2c).
    async fn open(
        addr: SocketAddr,
        req: Value,
        proto: bool,
        h2: bool,
        headers: &[(&str, &str)],
    ) -> Watching {
        let stream = TcpStream::connect(addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        let (ct, msg) = if proto {
            let m = proto::WatchRequest {
                path: req["path"].as_str().unwrap().to_string(),
                recursive: req["recursive"].as_bool().unwrap_or(false),
                include_entry: req["includeEntry"].as_bool().unwrap_or(false),
                allow_network_mounts: false,
            };
            ("application/connect+proto", m.encode_to_vec())
        } else {
            ("application/connect+json", req.to_string().into_bytes())
        };
        let mut b = Request::builder()
            .method(Method::POST)
            .uri(format!("http://{addr}/filesystem.Filesystem/WatchDir"))
            .header("content-type", ct);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::from(envelope(0, &msg)))).unwrap();
        let resp = if h2 {
            let (mut s, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .unwrap();
            tokio::spawn(conn);
            s.send_request(req).await.unwrap()
        } else {
            let (mut s, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            s.send_request(req).await.unwrap()
        };
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], ct);
        Watching {
            body: resp.into_body(),
            buf: bytes::BytesMut::new(),
            end: None,
        }
    }

    /// The next message as JSON (a binary one decoded, then written in
    /// envd's JSON so both codecs are checked alike); None after the end.
    async fn next(&mut self, proto: bool) -> Option<Value> {
        loop {
            if self.buf.len() >= 5 {
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if self.buf.len() >= 5 + len {
                    let flags = self.buf[0];
                    self.buf.advance(5);
                    let m = self.buf.split_to(len);
                    if flags & 2 != 0 {
                        self.end = Some(serde_json::from_slice(&m).unwrap());
                        return None;
                    }
                    if proto {
                        let r = proto::WatchDirResponse::decode(&m[..]).unwrap();
                        return Some(execd::connect::ToJson::to_json(&r));
                    }
                    return Some(serde_json::from_slice(&m).unwrap());
                }
            }
            let f = tokio::time::timeout(Duration::from_secs(60), self.body.frame())
                .await
                .expect("a frame within 60 s")?
                .unwrap();
            if let Ok(d) = f.into_data() {
                self.buf.extend_from_slice(&d);
            }
        }
    }

    /// Filesystem events until `want` (name, type) has been seen; all of
    /// them as (name, type).
    async fn until(&mut self, proto: bool, want: (&str, &str)) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        while let Some(m) = self.next(proto).await {
            let Some(f) = m.get("filesystem") else {
                continue;
            };
            let ev = (
                f["name"].as_str().unwrap().to_string(),
                f["type"].as_str().unwrap().to_string(),
            );
            let done = ev.0 == want.0 && ev.1 == want.1;
            seen.push(ev);
            if done {
                return seen;
            }
        }
        panic!("the stream ended before {want:?}: {seen:?}, {:?}", self.end);
    }
}

fn has(seen: &[(String, String)], name: &str, t: &str) -> Option<usize> {
    seen.iter().position(|(n, k)| n == name && k == t)
}

#[tokio::test]
async fn watch_dir_streams_envds_events_in_json() {
    let (_d, a) = daemon(&["--watch-debounce", "0"]);
    let dir = TempDir::new("watch-json");
    let mut w = Watching::open(a, json!({"path": dir.0}), false, false, &[]).await;
    // The start event comes once the watch is armed.
    assert_eq!(w.next(false).await.unwrap(), json!({"start": {}}));
    std::fs::write(dir.0.join("a"), b"1").unwrap();
    let seen = w.until(false, ("a", "EVENT_TYPE_WRITE")).await;
    assert!(has(&seen, "a", "EVENT_TYPE_CREATE").is_some(), "{seen:?}");
    // A rename is envd's pair: RENAME of the old name, CREATE of the new.
    std::fs::rename(dir.0.join("a"), dir.0.join("b")).unwrap();
    let seen = w.until(false, ("b", "EVENT_TYPE_CREATE")).await;
    assert!(has(&seen, "a", "EVENT_TYPE_RENAME").is_some(), "{seen:?}");
    std::fs::set_permissions(
        dir.0.join("b"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    w.until(false, ("b", "EVENT_TYPE_CHMOD")).await;
    std::fs::remove_file(dir.0.join("b")).unwrap();
    w.until(false, ("b", "EVENT_TYPE_REMOVE")).await;
    // Not recursive: a change in a new subdirectory is not reported, the
    // subdirectory itself is.
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    std::fs::write(dir.0.join("sub/inner"), b"x").unwrap();
    std::fs::write(dir.0.join("last"), b"x").unwrap();
    let seen = w.until(false, ("last", "EVENT_TYPE_CREATE")).await;
    assert!(has(&seen, "sub", "EVENT_TYPE_CREATE").is_some(), "{seen:?}");
    assert!(seen.iter().all(|(n, _)| !n.starts_with("sub/")), "{seen:?}");
    // The watched directory removed: the stream ends with an error, never
    // silently.
    drop(dir);
    while w.next(false).await.is_some() {}
    let end = w.end.unwrap();
    assert_eq!(end["error"]["code"], "aborted", "{end}");
}

/// An upload (a temporary renamed over its target) reads as envd's plain
/// write: `CREATE` and `WRITE` of a new file, `WRITE` of a replaced one, and
/// never a temporary's name.
#[tokio::test]
async fn watch_dir_shows_an_upload_as_a_plain_write() {
    let (d, a) = daemon(&["--watch-debounce", "0"]);
    let dir = TempDir::new("watch-upload");
    let mut w = Watching::open(a, json!({"path": dir.0}), false, false, &[]).await;
    assert_eq!(w.next(false).await.unwrap(), json!({"start": {}}));
    let up = dir.join("up");
    for (data, marker) in [(&b"one"[..], "mid"), (&b"two"[..], "end")] {
        let form = common::Form::new().meta(&json!({ "path": up })).file(data);
        let r = d.upload(form).await;
        assert_eq!(r.status, 200, "{}", r.text());
        std::fs::create_dir(dir.0.join(marker)).unwrap();
        let mut seen = w.until(false, (marker, "EVENT_TYPE_CREATE")).await;
        seen.pop();
        assert!(
            seen.iter()
                .all(|(n, _)| !n.starts_with(".execd-upload") && !n.starts_with('#')),
            "{seen:?}"
        );
        seen.dedup();
        let want: &[(&str, &str)] = if marker == "mid" {
            &[("up", "EVENT_TYPE_CREATE"), ("up", "EVENT_TYPE_WRITE")]
        } else {
            &[("up", "EVENT_TYPE_WRITE")]
        };
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        assert_eq!(seen, want);
    }
}

#[tokio::test]
async fn watch_dir_recursive_in_the_binary_codec_over_h2() {
    let (_d, a) = daemon(&[]);
    let dir = TempDir::new("watch-proto");
    let req = json!({"path": dir.0, "recursive": true, "includeEntry": true});
    let mut w = Watching::open(a, req, true, true, &[]).await;
    assert_eq!(w.next(true).await.unwrap(), json!({"start": {}}));
    std::fs::create_dir_all(dir.0.join("x/y")).unwrap();
    std::fs::write(dir.0.join("x/y/f"), b"hello").unwrap();
    let mut entry = None;
    let mut seen = Vec::new();
    while let Some(m) = w.next(true).await {
        let Some(f) = m.get("filesystem") else {
            continue;
        };
        let ev = (f["name"].as_str().unwrap().to_string(), f["type"].clone());
        if ev.0 == "x/y/f" && f.get("entry").is_some() {
            entry = Some(f["entry"].clone());
        }
        seen.push(ev);
        if entry.is_some() {
            break;
        }
    }
    // Entries describe what is there (include_entry).
    let e = entry.unwrap();
    assert_eq!(e["type"], "FILE_TYPE_FILE", "{e}");
    assert_eq!(e["path"], dir.join("x/y/f"));
    assert!(
        seen.iter().any(|(n, _)| n == "x"),
        "the new directory itself: {seen:?}"
    );
    // A rename within the tree, in a subdirectory.
    std::fs::rename(dir.0.join("x/y/f"), dir.0.join("x/g")).unwrap();
    let seen = w.until(true, ("x/g", "EVENT_TYPE_CREATE")).await;
    assert!(
        has(&seen, "x/y/f", "EVENT_TYPE_RENAME").is_some(),
        "{seen:?}"
    );
}

#[tokio::test]
async fn watch_dir_errors_and_keepalives() {
    let (_d, a) = daemon(&["--max-watches", "1"]);
    let dir = TempDir::new("watch-errors");
    std::fs::write(dir.0.join("file"), b"x").unwrap();
    let call = |path: String| async move {
        stream_json(
            a,
            "/filesystem.Filesystem/WatchDir",
            json!({ "path": path }),
            false,
        )
        .await
    };
    let (ev, end) = call(dir.join("missing")).await;
    assert!(ev.is_empty());
    assert_eq!(end["error"]["code"], "not_found", "{end}");
    let (_, end) = call(dir.join("file")).await;
    assert_eq!(end["error"]["code"], "invalid_argument", "{end}");
    // A directory the user may not read: refused as that user (Basic auth).
    let locked = dir.0.join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let basic = format!("Basic {}", data_encoding::BASE64.encode(b"nobody:"));
    let r = send(
        a,
        Method::POST,
        "/filesystem.Filesystem/WatchDir",
        &[
            ("content-type", "application/connect+json"),
            ("authorization", &basic),
        ],
        envelope(0, json!({"path": locked}).to_string().as_bytes()),
        false,
    )
    .await;
    let (_, end) = envelopes(r.body).pop().unwrap();
    let end: Value = serde_json::from_slice(&end).unwrap();
    assert_eq!(end["error"]["code"], "permission_denied", "{end}");
    // One watch at most (--max-watches 1, shared): the second is refused
    // while the first is open, and the first keeps sending keepalives.
    let mut w = Watching::open(
        a,
        json!({"path": dir.0}),
        false,
        false,
        &[("keepalive-ping-interval", "1")],
    )
    .await;
    assert_eq!(w.next(false).await.unwrap(), json!({"start": {}}));
    let (_, end) = call(dir.0.to_string_lossy().into_owned()).await;
    assert_eq!(end["error"]["code"], "resource_exhausted", "{end}");
    assert_eq!(w.next(false).await.unwrap(), json!({"keepalive": {}}));
    // The client gone, its watch goes with it: a new one is accepted.
    drop(w);
    let mut ok = false;
    for _ in 0..200 {
        let mut w2 = Watching::open(a, json!({"path": dir.0}), false, false, &[]).await;
        if w2.next(false).await.is_some() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "the watch of a client that left was not closed");
}

/// A unary JSON call as `user` (Basic auth), or the default user.
async fn unary_as(addr: SocketAddr, method: &str, body: Value, user: Option<&str>) -> Reply {
    let basic = user.map(|u| {
        format!(
            "Basic {}",
            data_encoding::BASE64.encode(format!("{u}:").as_bytes())
        )
    });
    let mut h = vec![("content-type", "application/json")];
    if let Some(b) = &basic {
        h.push(("authorization", b.as_str()));
    }
    send(
        addr,
        Method::POST,
        method,
        &h,
        body.to_string().into_bytes(),
        false,
    )
    .await
}

/// Polls `GetWatcherEvents` until `want` is among the events (bounded).
async fn poll_until(a: SocketAddr, id: &str, want: (&str, &str)) -> Vec<(String, String)> {
    let mut seen = Vec::new();
    for _ in 0..600 {
        let r = unary(
            a,
            "/filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
        )
        .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for e in r.json()["events"].as_array().unwrap() {
            seen.push((
                e["name"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            ));
        }
        if has(&seen, want.0, want.1).is_some() {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {want:?} in {seen:?}");
}

#[tokio::test]
async fn polling_watchers_create_drain_remove() {
    let (_d, a) = daemon(&["--watch-debounce", "0"]);
    let dir = TempDir::new("watch-poll");
    let r = unary(
        a,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": dir.0, "recursive": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = r.json()["watcherId"].as_str().unwrap().to_string();
    std::fs::create_dir(dir.0.join("d")).unwrap();
    std::fs::write(dir.0.join("d/f"), b"1").unwrap();
    let seen = poll_until(a, &id, ("d/f", "EVENT_TYPE_CREATE")).await;
    assert!(has(&seen, "d", "EVENT_TYPE_CREATE").is_some(), "{seen:?}");
    // Drained: what was taken is not answered again.
    std::fs::rename(dir.0.join("d/f"), dir.0.join("g")).unwrap();
    let seen = poll_until(a, &id, ("g", "EVENT_TYPE_CREATE")).await;
    assert!(has(&seen, "d/f", "EVENT_TYPE_RENAME").is_some(), "{seen:?}");
    assert!(has(&seen, "d", "EVENT_TYPE_CREATE").is_none(), "{seen:?}");
    // Another user does not see it (as an unknown id).
    let r = unary_as(
        a,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcherId": id}),
        Some("nobody"),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    let r = unary_as(
        a,
        "/filesystem.Filesystem/RemoveWatcher",
        json!({"watcherId": id}),
        Some("nobody"),
    )
    .await;
    assert_eq!(r.json()["code"], "not_found");
    // Removed: then unknown.
    let r = unary(
        a,
        "/filesystem.Filesystem/RemoveWatcher",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    for m in ["GetWatcherEvents", "RemoveWatcher"] {
        let r = unary(
            a,
            &format!("/filesystem.Filesystem/{m}"),
            json!({"watcherId": id}),
        )
        .await;
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (404, Some("not_found")),
            "{m}"
        );
    }
    let r = unary(
        a,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcherId": "wnope"}),
    )
    .await;
    assert_eq!(r.json()["code"], "not_found");
    // Not a directory, missing: envd's codes.
    std::fs::write(dir.0.join("file"), b"x").unwrap();
    let r = unary(
        a,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": dir.join("file")}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let r = unary(
        a,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": dir.join("no")}),
    )
    .await;
    assert_eq!(
        (r.status, r.json()["code"].as_str()),
        (404, Some("not_found"))
    );
    // The binary codec.
    let req = proto::WatchRequest {
        path: dir.join(""),
        ..Default::default()
    };
    let r = send(
        a,
        Method::POST,
        "/filesystem.Filesystem/CreateWatcher",
        &[("content-type", "application/proto")],
        req.encode_to_vec(),
        false,
    )
    .await;
    assert_eq!((r.status, r.ct()), (200, "application/proto"));
    let id = proto::CreateWatcherResponse::decode(&r.body[..])
        .unwrap()
        .watcher_id;
    std::fs::write(dir.0.join("p"), b"1").unwrap();
    let mut got = Vec::new();
    for _ in 0..600 {
        let q = proto::WatcherRequest {
            watcher_id: id.clone(),
        };
        let r = send(
            a,
            Method::POST,
            "/filesystem.Filesystem/GetWatcherEvents",
            &[("content-type", "application/proto")],
            q.encode_to_vec(),
            false,
        )
        .await;
        got.extend(
            proto::GetWatcherEventsResponse::decode(&r.body[..])
                .unwrap()
                .events,
        );
        if got
            .iter()
            .any(|e| e.name == "p" && e.r#type == proto::EVENT_TYPE_CREATE)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(got.iter().any(|e| e.name == "p"), "{got:?}");
    // The watched directory removed: the buffered events, then an error.
    drop(dir);
    let mut code = None;
    for _ in 0..600 {
        let r = unary(
            a,
            "/filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
        )
        .await;
        if r.status != 200 {
            code = r.json()["code"].as_str().map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code.as_deref(), Some("aborted"));
}

#[tokio::test]
async fn idle_polling_watchers_are_reaped() {
    let (_d, a) = daemon(&["--e2b-watcher-idle", "1s", "--max-watches", "1"]);
    let dir = TempDir::new("watch-reap");
    let create = || {
        unary(
            a,
            "/filesystem.Filesystem/CreateWatcher",
            json!({"path": dir.0}),
        )
    };
    let r = create().await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let id = r.json()["watcherId"].as_str().unwrap().to_string();
    // The only place (--max-watches 1) is given back once the watcher,
    // never polled, is reaped.
    let mut second = None;
    for _ in 0..600 {
        let r = create().await;
        if r.status == 200 {
            second = r.json()["watcherId"].as_str().map(str::to_string);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(second.is_some(), "the idle watcher was never reaped");
    let r = unary(
        a,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!(r.json()["code"], "not_found");
}

#[tokio::test]
async fn lost_changes_are_never_silent() {
    // A directory moved in with more entries than a watch holds (the
    // engine's bound): the events it could keep, then data_loss.
    let (_d, a) = daemon(&[]);
    let full_dir = |name: &str| {
        let out = TempDir::new(name);
        let full = out.0.join("full");
        std::fs::create_dir(&full).unwrap();
        for i in 0..9_000 {
            std::fs::File::create(full.join(format!("f{i}"))).unwrap();
        }
        out
    };
    // The stream.
    let t = TempDir::new("lost-stream");
    let out = full_dir("lost-stream-out");
    let mut w = Watching::open(
        a,
        json!({"path": t.0, "recursive": true}),
        false,
        false,
        &[],
    )
    .await;
    assert_eq!(w.next(false).await.unwrap(), json!({"start": {}}));
    std::fs::rename(out.0.join("full"), t.0.join("full")).unwrap();
    let mut creates = 0;
    while let Some(m) = w.next(false).await {
        if m["filesystem"]["type"] == "EVENT_TYPE_CREATE" {
            creates += 1;
        }
    }
    let end = w.end.unwrap();
    assert_eq!(end["error"]["code"], "data_loss", "{end}");
    assert!(creates > 1, "{creates}");
    // The polling watcher: its buffered events, then the error, for good.
    let t = TempDir::new("lost-poll");
    let out = full_dir("lost-poll-out");
    let r = unary(
        a,
        "/filesystem.Filesystem/CreateWatcher",
        json!({"path": t.0, "recursive": true}),
    )
    .await;
    let id = r.json()["watcherId"].as_str().unwrap().to_string();
    std::fs::rename(out.0.join("full"), t.0.join("full")).unwrap();
    let mut events = 0;
    let mut code = None;
    for _ in 0..600 {
        let r = unary(
            a,
            "/filesystem.Filesystem/GetWatcherEvents",
            json!({"watcherId": id}),
        )
        .await;
        if r.status != 200 {
            code = r.json()["code"].as_str().map(str::to_string);
            break;
        }
        events += r.json()["events"].as_array().unwrap().len();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(code.as_deref(), Some("data_loss"), "after {events} events");
    assert!(events > 1, "{events}");
    let r = unary(
        a,
        "/filesystem.Filesystem/GetWatcherEvents",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!(r.json()["code"], "data_loss");
    let r = unary(
        a,
        "/filesystem.Filesystem/RemoveWatcher",
        json!({"watcherId": id}),
    )
    .await;
    assert_eq!(r.status, 200);
}
