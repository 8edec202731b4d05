//! Black-box tests of `/pty`: the real binary, real WebSocket clients.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::Method;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LIMIT: Duration = Duration::from_secs(20);

/// One frame from the server, decoded.
#[derive(Debug)]
enum Frame {
    Out,
    Err,
    Replay(u64, Vec<u8>),
    Json(Value),
    Close(u16, String),
    Ping,
}

/// A WebSocket client with everything it received so far.
struct Ws {
    ws: WebSocketStream<TcpStream>,
    /// Terminal/stdout bytes, replay included.
    out: Vec<u8>,
    err: Vec<u8>,
    frames: Vec<Frame>,
    /// Where the next search in `out` starts.
    mark: usize,
    /// Protocol pings received.
    pings: usize,
}

async fn create(d: &Daemon, body: Value) -> String {
    let r = d.post_json("/pty", &body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["session_id"]
        .as_str()
        .expect("session_id")
        .to_string()
}

/// Opens the WebSocket at `path`, or returns the HTTP status and body.
async fn try_ws(d: &Daemon, path: &str, token: Option<&str>) -> Result<Ws, (u16, String)> {
    let stream = TcpStream::connect(d.addr).await.expect("connect");
    let mut req = format!("ws://{}{}", d.addr, path)
        .into_client_request()
        .expect("request");
    if let Some(t) = token {
        req.headers_mut()
            .insert("x-execd-access-token", t.parse().expect("token"));
    }
    match tokio_tungstenite::client_async(req, stream).await {
        Ok((ws, _)) => Ok(Ws {
            ws,
            out: Vec::new(),
            err: Vec::new(),
            frames: Vec::new(),
            mark: 0,
            pings: 0,
        }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err((
            resp.status().as_u16(),
            String::from_utf8_lossy(resp.body().as_deref().unwrap_or(b"")).into_owned(),
        )),
        Err(e) => panic!("websocket {path}: {e}"),
    }
}

async fn ws(d: &Daemon, path: &str) -> Ws {
    match try_ws(d, path, d.token.as_deref()).await {
        Ok(w) => w,
        Err((s, b)) => panic!("websocket {path}: {s} {b}"),
    }
}

/// Attaches as the input holder and waits for `connected`.
async fn attach(d: &Daemon, id: &str) -> Ws {
    let mut w = ws(d, &format!("/pty/{id}/ws")).await;
    w.json_of("connected").await;
    w
}

impl Ws {
    /// The next frame, at most `LIMIT` away. None when the stream ended.
    async fn next(&mut self) -> Option<&Frame> {
        loop {
            let m = tokio::time::timeout(LIMIT, self.ws.next())
                .await
                .expect("no frame within the limit");
            let f = match m {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Binary(b))) => match b.split_first() {
                    Some((0x01, d)) => {
                        self.out.extend_from_slice(d);
                        Frame::Out
                    }
                    Some((0x02, d)) => {
                        self.err.extend_from_slice(d);
                        Frame::Err
                    }
                    Some((0x03, d)) => {
                        let off = u64::from_be_bytes(d[..8].try_into().expect("offset"));
                        self.out.extend_from_slice(&d[8..]);
                        Frame::Replay(off, d[8..].to_vec())
                    }
                    _ => panic!("unknown binary frame {b:?}"),
                },
                Some(Ok(Message::Text(t))) => Frame::Json(serde_json::from_str(&t).expect("JSON")),
                Some(Ok(Message::Close(c))) => {
                    let (code, reason) = c.map_or((1005, String::new()), |c| {
                        (u16::from(c.code), c.reason.into_owned())
                    });
                    Frame::Close(code, reason)
                }
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    Frame::Ping
                }
                Some(Ok(_)) => continue,
            };
            self.frames.push(f);
            return self.frames.last();
        }
    }

    /// Reads until the output after the mark contains `text`; moves the mark past it.
    async fn expect_out(&mut self, text: &str) {
        let end = Instant::now() + LIMIT;
        // Where the search resumes: bytes before it were already searched.
        let mut from = self.mark;
        loop {
            let hay = &self.out[from..];
            if let Some(i) = hay.windows(text.len()).position(|w| w == text.as_bytes()) {
                self.mark = from + i + text.len();
                return;
            }
            from = self.out.len().saturating_sub(text.len()).max(from);
            assert!(
                Instant::now() < end,
                "no {text:?} in output: {:?}",
                String::from_utf8_lossy(&self.out)
            );
            if self.next().await.is_none() {
                panic!(
                    "stream ended without {text:?}: {:?}",
                    String::from_utf8_lossy(&self.out)
                );
            }
        }
    }

    /// Reads until a JSON frame of type `kind` arrives.
    async fn json_of(&mut self, kind: &str) -> Value {
        loop {
            match self.next().await {
                Some(Frame::Json(v)) if v["type"] == kind => return v.clone(),
                Some(Frame::Close(c, r)) => panic!("closed {c} {r} while waiting for {kind}"),
                Some(_) => {}
                None => panic!("stream ended while waiting for {kind}"),
            }
        }
    }

    /// Reads until the close frame; returns its code and reason.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next().await {
                Some(Frame::Close(c, r)) => return (*c, r.clone()),
                Some(_) => {}
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    async fn send(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    async fn stdin(&mut self, s: &str) {
        let mut b = vec![0u8];
        b.extend_from_slice(s.as_bytes());
        self.send(Message::Binary(b)).await;
    }

    async fn json(&mut self, v: Value) {
        self.send(Message::Text(v.to_string())).await;
    }

    /// Runs `line` in the shell and waits for the text after `marker`.
    async fn run(&mut self, line: &str, expect: &str) {
        self.stdin(&format!("{line}\n")).await;
        self.expect_out(expect).await;
    }
}

/// A daemon with one new session and its input holder attached.
async fn new_shell() -> (Daemon, String, Ws) {
    let d = Daemon::start();
    let id = create(&d, json!({})).await;
    let w = attach(&d, &id).await;
    (d, id, w)
}

/// pid of the process whose command line is exactly `argv`.
fn find_process(argv: &[&str]) -> Option<u32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (cmdline == want).then_some(pid)
    })
}

/// `/proc/PID/stat` fields after the command name.
fn stat_fields(pid: u32) -> Vec<i64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    s.rsplit_once(')')
        .map_or("", |(_, r)| r)
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(-1))
        .collect()
}

/// Whether `pid` is its terminal's foreground process group leader.
fn in_foreground(pid: u32) -> bool {
    // ppid pgrp session tty_nr tpgid
    let f = stat_fields(pid);
    f.len() > 4 && f[1] == pid as i64 && f[4] == f[1]
}

/// Runs `sleep SECS` in the shell and returns its pid once it is the
/// terminal's foreground job.
async fn foreground_sleep(w: &mut Ws, secs: &str) -> u32 {
    w.stdin(&format!("sleep {secs}\n")).await;
    let mut pid = None;
    eventually(LIMIT, "sleep in the foreground", || {
        pid = find_process(&["sleep", secs]);
        pid.is_some_and(in_foreground)
    })
    .await;
    pid.expect("sleep pid")
}

#[tokio::test]
async fn create_status_delete() {
    let d = Daemon::start();
    let id = create(&d, json!({})).await;
    assert_eq!(id.len(), 32);
    let r = d.get(&format!("/pty/{id}")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"session_id": id, "running": false, "output_offset": 0})
    );
    // An empty body is fine too.
    let r = d
        .request(Method::POST, "/pty", &[], bytes::Bytes::new())
        .await;
    assert_eq!(r.status, 201, "{}", r.text());

    assert_eq!(d.delete(&format!("/pty/{id}")).await.status, 200);
    d.get(&format!("/pty/{id}"))
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
    d.delete(&format!("/pty/{id}"))
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
    let (status, body) = try_ws(&d, &format!("/pty/{id}/ws"), None)
        .await
        .err()
        .expect("404");
    assert_eq!(status, 404);
    assert!(body.contains("CONTEXT_NOT_FOUND"), "{body}");

    d.post_json("/pty", &json!({"cols": 10}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
}

#[tokio::test]
async fn cwd_is_created_and_used() {
    let d = Daemon::start();
    let dir = std::env::temp_dir().join(format!("execd-pty-{}", std::process::id()));
    let sub = dir.join("a/b");
    let id = create(&d, json!({"cwd": sub.to_str()})).await;
    assert!(sub.is_dir());
    let mut w = attach(&d, &id).await;
    w.run("echo \"cwd=$(pwd)\"", &format!("cwd={}", sub.display()))
        .await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn shell_runs_and_status_counts_output() {
    let d = Daemon::start();
    let id = create(&d, json!({})).await;
    let mut w = ws(&d, &format!("/pty/{id}/ws")).await;
    // No replay for a new session: `connected` comes first.
    match w.next().await {
        Some(Frame::Json(v)) => {
            assert_eq!(v["type"], "connected");
            assert_eq!(v["session_id"], id.as_str());
            assert_eq!(v["mode"], "pty");
        }
        other => panic!("expected connected, got {other:?}"),
    }
    w.run("echo hi-$((40+2))", "hi-42").await;
    // The text JSON stdin frame works as well as the binary one.
    w.json(json!({"type": "stdin", "data": "echo via-$((1+1))-json\n"}))
        .await;
    w.expect_out("via-2-json").await;
    let st = d.get(&format!("/pty/{id}")).await.json();
    assert_eq!(st["running"], true);
    // Every byte received so far was counted (more may be on its way).
    assert!(
        st["output_offset"].as_u64().unwrap() >= w.out.len() as u64,
        "{st}"
    );
}

#[tokio::test]
async fn initial_size_and_resize() {
    let (d, _id, mut w) = new_shell().await;
    w.run("stty size", "24 80").await;
    w.json(json!({"type": "resize", "cols": 120, "rows": 40}))
        .await;
    w.run("stty size", "40 120").await;
    // Invalid sizes are rejected with an error frame and change nothing.
    w.json(json!({"type": "resize", "cols": 0, "rows": 10}))
        .await;
    let e = w.json_of("error").await;
    assert_eq!(e["code"], "INVALID_FRAME");
    w.run("stty size", "40 120").await;

    let id = create(&d, json!({"cols": 100, "rows": 30})).await;
    let mut w = attach(&d, &id).await;
    w.run("stty size", "30 100").await;
}

#[tokio::test]
async fn sigint_stops_the_foreground_job_not_the_shell() {
    let (d, id, mut w) = new_shell().await;
    w.run("echo shell=$$", "shell=").await;
    let sleep = foreground_sleep(&mut w, "100.25").await;
    let began = Instant::now();
    w.json(json!({"type": "signal", "signal": "SIGINT"})).await;
    eventually(LIMIT, "sleep gone", || !alive(sleep)).await;
    assert!(began.elapsed() < Duration::from_secs(10));
    w.run("echo alive-$((6*7))", "alive-42").await;
    assert_eq!(d.get(&format!("/pty/{id}")).await.json()["running"], true);
}

#[tokio::test]
async fn exit_frame_then_a_new_shell_on_reattach() {
    let (d, id, mut w) = new_shell().await;
    w.run("echo first=$$", "first=").await;
    w.stdin("exit 3\n").await;
    let e = w.json_of("exit").await;
    assert_eq!(e["exit_code"], 3);
    assert_eq!(e["interrupted"], false);
    assert_eq!(w.closed().await, (1000, "process exited".to_string()));
    assert_eq!(d.get(&format!("/pty/{id}")).await.json()["running"], false);

    let mut w = attach(&d, &id).await;
    // The old output is replayed; the new shell answers.
    w.expect_out("first=").await;
    w.run("echo second-$((2+2))", "second-4").await;
    assert_eq!(d.get(&format!("/pty/{id}")).await.json()["running"], true);
}

#[tokio::test]
async fn command_sessions_exit_with_their_code() {
    let d = Daemon::start();
    let id = create(&d, json!({"command": "echo bye; exit 7"})).await;
    let mut w = ws(&d, &format!("/pty/{id}/ws")).await;
    w.expect_out("bye").await;
    let e = w.json_of("exit").await;
    assert_eq!(e["exit_code"], 7);
    let (code, _) = w.closed().await;
    assert_eq!(code, 1000);
    let off = d.get(&format!("/pty/{id}")).await.json()["output_offset"]
        .as_u64()
        .unwrap();
    assert_eq!(off, w.out.len() as u64);

    // Killed by a signal: -1.
    let id = create(&d, json!({"command": "kill -9 $$"})).await;
    let mut w = ws(&d, &format!("/pty/{id}/ws")).await;
    assert_eq!(w.json_of("exit").await["exit_code"], -1);
}

#[tokio::test]
async fn replay_after_reconnect() {
    let (d, id, mut w) = new_shell().await;
    w.run("echo one-$((0+1)); echo pid=$$:", "one-1").await;
    w.expect_out("pid=").await;
    let pid_text = {
        w.expect_out(":").await;
        let s = String::from_utf8_lossy(&w.out).into_owned();
        let i = s.rfind("pid=").unwrap();
        s[i..].split(':').next().unwrap().to_string()
    };
    // A clean close is answered, and the input slot is free by then.
    // (Output already on its way may come first.)
    w.ws.close(None).await.expect("close");
    assert_eq!(
        w.closed().await.0,
        1005,
        "the reply echoes a close without a code"
    );
    drop(w);

    // since=0 (the default): everything, in one replay frame before `connected`.
    let mut w = ws(&d, &format!("/pty/{id}/ws")).await;
    let total = match w.next().await {
        Some(Frame::Replay(off, data)) => {
            assert_eq!(*off, 0);
            let text = String::from_utf8_lossy(data);
            assert!(text.contains("one-1") && text.contains(&pid_text), "{text}");
            data.len() as u64
        }
        other => panic!("expected a replay frame, got {other:?}"),
    };
    let c = w.json_of("connected").await;
    assert_eq!(c["offset"], total);
    // The same shell is still there.
    w.run("echo again-$$:", &format!("again-{}:", &pid_text[4..]))
        .await;
    let _ = w.ws.close(None).await;
    drop(w);

    // since=N: only what came after N, with N as the frame's offset.
    let end = d.get(&format!("/pty/{id}")).await.json()["output_offset"]
        .as_u64()
        .unwrap();
    let mut w = ws(&d, &format!("/pty/{id}/ws?takeover=1&since={}", end - 3)).await;
    match w.next().await {
        Some(Frame::Replay(off, data)) => {
            // The shell may have written more since `end` was read: at least the 3 bytes.
            assert_eq!(*off, end - 3);
            assert!(data.len() >= 3, "{} bytes", data.len());
        }
        other => panic!("expected a replay frame, got {other:?}"),
    }
    let _ = w.ws.close(None).await;
    drop(w);
    // since at the end: nothing before it is replayed (only output written since, if any).
    let mut w = ws(&d, &format!("/pty/{id}/ws?takeover=1&since={end}")).await;
    match w.next().await {
        Some(Frame::Json(v)) => assert_eq!(v["type"], "connected"),
        Some(Frame::Replay(off, _)) => assert!(*off >= end, "replay from {off}, asked {end}"),
        other => panic!("expected connected, got {other:?}"),
    }
}

#[tokio::test]
async fn second_client_gets_409_and_takeover_evicts_with_4001() {
    let (d, id, mut a) = new_shell().await;
    a.run("echo a-$((1+1))", "a-2").await;

    let (status, body) = try_ws(&d, &format!("/pty/{id}/ws"), None)
        .await
        .err()
        .expect("409");
    assert_eq!(status, 409);
    let v: Value = serde_json::from_str(&body).expect("envelope");
    assert_eq!(v["code"], "ALREADY_CONNECTED");
    assert!(v["message"].as_str().unwrap().contains(&id));

    let mut b = ws(&d, &format!("/pty/{id}/ws?takeover=1")).await;
    b.json_of("connected").await;
    assert_eq!(a.closed().await, (4001, "TAKEN_OVER".to_string()));
    b.run("echo b-$((2+1))", "b-3").await;
}

#[tokio::test]
async fn watchers_see_output_but_cannot_type() {
    let (d, id, mut a) = new_shell().await;
    let mut w1 = ws(&d, &format!("/pty/{id}/ws?mode=watch")).await;
    let mut w2 = ws(&d, &format!("/pty/{id}/ws?mode=watch")).await;
    assert_eq!(w1.json_of("connected").await["read_only"], true);
    w2.json_of("connected").await;
    a.run("echo shared-$((3*3))", "shared-9").await;
    w1.expect_out("shared-9").await;
    w2.expect_out("shared-9").await;

    w1.stdin("echo nope\n").await;
    assert_eq!(w1.json_of("error").await["code"], "READ_ONLY");
    w1.json(json!({"type": "signal", "signal": "SIGKILL"}))
        .await;
    assert_eq!(w1.json_of("error").await["code"], "READ_ONLY");
    a.run("echo still-$((5+5))", "still-10").await;
    w2.expect_out("still-10").await;

    // The holder leaving frees the slot; watchers stay.
    let _ = a.ws.close(None).await;
    drop(a);
    let mut b = loop {
        match try_ws(&d, &format!("/pty/{id}/ws"), None).await {
            Ok(mut b) => {
                b.json_of("connected").await;
                break b;
            }
            Err((409, _)) => tokio::task::yield_now().await,
            Err(e) => panic!("{e:?}"),
        }
    };
    b.run("echo next-$((1+6))", "next-7").await;
    w2.expect_out("next-7").await;
    // When the shell exits, watchers get the exit too.
    b.stdin("exit 0\n").await;
    assert_eq!(w2.json_of("exit").await["exit_code"], 0);
    assert_eq!(w2.closed().await.0, 1000);
}

#[tokio::test]
async fn viewers_in_upstreams_spelling_are_read_only() {
    let (d, id, mut a) = new_shell().await;
    a.run("echo before-$((2*4))", "before-8").await;
    let mut v = ws(&d, &format!("/pty/{id}/ws?mode=viewer")).await;
    // The replay shows what came before; the holder keeps the input.
    v.expect_out("before-8").await;
    assert_eq!(v.json_of("connected").await["read_only"], true);
    let mut v2 = ws(&d, &format!("/pty/{id}/ws?mode=viewer")).await;
    v2.json_of("connected").await;
    a.run("echo live-$((6*7))", "live-42").await;
    v.expect_out("live-42").await;
    v2.expect_out("live-42").await;
    v.stdin("echo nope\n").await;
    assert_eq!(v.json_of("error").await["code"], "READ_ONLY");
    v.json(json!({"type": "resize", "cols": 100, "rows": 30}))
        .await;
    assert_eq!(v.json_of("error").await["code"], "READ_ONLY");
    v.json(json!({"type": "signal", "signal": "SIGINT"})).await;
    assert_eq!(v.json_of("error").await["code"], "READ_ONLY");
    // A ping is still answered.
    v.json(json!({"type": "ping"})).await;
    v.json_of("pong").await;
    a.run("echo after-$((1+1))", "after-2").await;
    let (status, _) = d
        .send_raw(
            http::Method::GET,
            &format!("/pty/{id}/ws?mode=spectator"),
            None,
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_slow_viewer_does_not_block_and_learns_what_it_missed() {
    let (d, id, mut a) = new_shell().await;
    let mut slow = ws(&d, &format!("/pty/{id}/ws?mode=watch")).await;
    slow.json_of("connected").await;
    // 32 MiB of output while the viewer reads nothing: more than the ring
    // and the socket buffers hold.
    a.run(
        "head -c 33554432 /dev/zero | tr '\\0' x; echo; echo done-$((4*4))",
        "done-16",
    )
    .await;
    // Now the viewer catches up: it ends up at the same place, and a replay
    // frame tells it where it resumed after the bytes it lost.
    slow.expect_out("done-16").await;
    let gap = slow
        .frames
        .iter()
        .any(|f| matches!(f, Frame::Replay(off, _) if *off > 0));
    assert!(gap, "expected a replay frame showing the gap");
    assert!(slow.out.len() < 32 * 1024 * 1024);

    // A new viewer replaying from 0 gets what the ring holds: at least the
    // newest MiB, at its absolute offset.
    let mut late = ws(&d, &format!("/pty/{id}/ws?mode=watch")).await;
    match late.next().await {
        Some(Frame::Replay(off, data)) => {
            assert!(*off > 0);
            assert!(data.len() >= 1 << 20, "{}", data.len());
            assert!(data.len() <= (1 << 20) + 64 * 1024, "{}", data.len());
            assert!(*off + data.len() as u64 >= 32 << 20);
        }
        other => panic!("expected a replay frame, got {other:?}"),
    }
    late.expect_out("done-16").await;
}

#[tokio::test]
async fn pipe_mode_separates_stderr() {
    let d = Daemon::start();
    let id = create(
        &d,
        json!({"command": "echo out; echo err >&2; read x; echo got-$x"}),
    )
    .await;
    let mut w = ws(&d, &format!("/pty/{id}/ws?pty=0")).await;
    let c = w.json_of("connected").await;
    assert_eq!(c["mode"], "pipe");
    w.expect_out("out\n").await;
    w.stdin("line\n").await;
    w.expect_out("got-line\n").await;
    assert_eq!(w.json_of("exit").await["exit_code"], 0);
    assert_eq!(String::from_utf8_lossy(&w.err), "err\n");
    // No terminal: nothing was echoed back and no CR was added.
    assert_eq!(String::from_utf8_lossy(&w.out), "out\ngot-line\n");
}

#[tokio::test]
async fn ping_pong_and_bad_frames() {
    let (_d, _id, mut w) = new_shell().await;
    w.json(json!({"type": "ping"})).await;
    w.json_of("pong").await;
    w.json(json!({"type": "bogus"})).await;
    let e = w.json_of("error").await;
    assert_eq!(e["code"], "INVALID_FRAME");
    assert!(e["error"].as_str().unwrap().contains("bogus"), "{e}");
    w.json(json!({"type": "signal", "signal": "SIGFOO"})).await;
    assert_eq!(w.json_of("error").await["code"], "INVALID_FRAME");
    // Text that is not a JSON frame gets an error too; the connection stays.
    w.send(Message::Text("{not json".into())).await;
    let e = w.json_of("error").await;
    assert_eq!(e["code"], "INVALID_FRAME");
    assert!(e["error"].as_str().unwrap().contains("JSON"), "{e}");
    w.send(Message::Text("[1,2]".into())).await;
    assert_eq!(w.json_of("error").await["code"], "INVALID_FRAME");
    // A protocol-level ping is answered too.
    w.send(Message::Ping(b"p".to_vec())).await;
    w.run("echo ok-$((9-1))", "ok-8").await;
}

#[tokio::test]
async fn delete_kills_every_process_and_closes_clients() {
    let (d, id, mut w) = new_shell().await;
    // A background job has a process group of its own.
    w.run("sleep 100.5 & echo started-$((1+1))", "started-2")
        .await;
    let mut bg = None;
    eventually(LIMIT, "background sleep", || {
        bg = find_process(&["sleep", "100.5"]);
        bg.is_some()
    })
    .await;
    let fg = foreground_sleep(&mut w, "100.75").await;
    assert_eq!(d.delete(&format!("/pty/{id}")).await.status, 200);
    let e = w.json_of("exit").await;
    assert_eq!(e["exit_code"], -1);
    assert_eq!(e["interrupted"], true, "ended by the delete: {e}");
    assert_eq!(w.closed().await.0, 1000);
    let bg = bg.unwrap();
    eventually(LIMIT, "all processes gone", || !alive(bg) && !alive(fg)).await;
}

#[tokio::test]
async fn plain_get_on_the_websocket_route_is_400() {
    let d = Daemon::start();
    let id = create(&d, json!({})).await;
    d.get(&format!("/pty/{id}/ws"))
        .await
        .assert_error(400, "BAD_HANDSHAKE");
    d.get(&format!("/pty/{id}/ws?since=x"))
        .await
        .assert_error(400, "INVALID_QUERY");
}

#[tokio::test]
async fn token_in_header_or_query_on_the_websocket_only() {
    let d = Daemon::start_with(&["--access-token", "s3cret"], &[]);
    let r = d.post_json("/pty", &json!({})).await;
    let id = r.json()["session_id"].as_str().unwrap().to_string();

    let (s, _) = try_ws(&d, &format!("/pty/{id}/ws"), None)
        .await
        .err()
        .expect("401");
    assert_eq!(s, 401);
    let (s, _) = try_ws(&d, &format!("/pty/{id}/ws?access_token=wrong"), None)
        .await
        .err()
        .expect("401");
    assert_eq!(s, 401);
    let mut w = try_ws(&d, &format!("/pty/{id}/ws?access_token=s3cret"), None)
        .await
        .expect("query token accepted");
    w.json_of("connected").await;
    w.run("echo tok-$((2*5))", "tok-10").await;

    // Only on the WebSocket route.
    let (s, _) = d
        .send_raw(Method::GET, &format!("/pty/{id}?access_token=s3cret"), None)
        .await;
    assert_eq!(s, 401);
    let (s, _) = d
        .send_raw(Method::GET, &format!("/pty/{id}"), Some("s3cret"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn pings_keep_live_peers_and_dead_peers_are_dropped() {
    let d = Daemon::start_with(&["--ws-ping-interval", "1s"], &[]);
    let id = create(&d, json!({})).await;
    // A holder that stops reading: it answers no ping.
    let mut dead = attach(&d, &id).await;
    dead.run("echo hello-$((1+2))", "hello-3").await;
    // A viewer that keeps reading (and so answering pings) in a task of its own.
    let mut live = ws(&d, &format!("/pty/{id}/ws?mode=watch")).await;
    live.json_of("connected").await;
    let live = tokio::spawn(async move {
        live.expect_out("again-5").await;

        while live.pings < 3 {
            assert!(live.next().await.is_some(), "live viewer dropped");
        }
        live
    });

    // The dead holder is dropped after two silent intervals, which frees the
    // input slot for a client that does not ask for a takeover.
    let end = Instant::now() + LIMIT;
    let mut next = loop {
        match try_ws(&d, &format!("/pty/{id}/ws"), None).await {
            Ok(mut w) => {
                w.json_of("connected").await;
                break w;
            }
            Err((409, _)) => {
                assert!(Instant::now() < end, "dead holder never dropped");
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    next.run("echo again-$((2+3))", "again-5").await;
    let live = live.await.expect("live viewer task");
    assert!(live.pings >= 3);
    drop(dead);
}

#[tokio::test]
async fn sigterm_closes_clients_and_ends_shells() {
    let (mut d, _id, mut w) = new_shell().await;
    w.run("echo x$((1+1))y $$ z$((2+2))", "z4").await;
    let text = String::from_utf8_lossy(&w.out).into_owned();
    let i = text.rfind("x2y ").unwrap() + 4;
    let shell: u32 = text[i..].split(' ').next().unwrap().parse().unwrap();
    assert!(alive(shell));
    d.signal(libc::SIGTERM);
    let (code, _) = loop {
        match w.next().await {
            Some(Frame::Close(c, r)) => break (*c, r.clone()),
            Some(_) => {}
            None => panic!("no close frame"),
        }
    };
    // Going away (1001), or the shell's end (1000) if its exit won the race.
    assert!(code == 1001 || code == 1000, "{code}");
    let status = d.wait_exit(LIMIT).expect("daemon exits");
    assert!(status.success(), "{status:?}");
    eventually(LIMIT, "shell gone", || !alive(shell)).await;
}

/// `execd_spawns_total{via="..."}` from the Prometheus exposition.
async fn spawns(d: &Daemon, via: &str) -> u64 {
    let text = d.get("/metrics?format=prometheus").await.text();
    let key = format!("execd_spawns_total{{via=\"{via}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// With cgroups, the shell is made inside its cgroup (`clone3` with
/// `CLONE_INTO_CGROUP`, as commands are), not moved there by a write to
/// `cgroup.procs` before exec; it still leads its own session on the PTY.
#[tokio::test]
async fn the_shell_is_born_in_its_cgroup() {
    let (d, _id, mut w) = new_shell().await;
    // Typed input is echoed: the output's brackets are not in the line.
    w.run(
        "printf 'X%sY\\n' \"$(cut -d: -f3 /proc/$$/cgroup)\" | tr XY '[]'",
        "[/",
    )
    .await;
    w.expect_out("]").await;
    let out = String::from_utf8_lossy(&w.out).into_owned();
    let cg = out.rsplit("[/").next().unwrap_or("");
    if !cg.contains("/cmd-") {
        eprintln!("skipped: no cgroups here ({cg:?})");
        return;
    }
    // Born there: the one spawn so far was a clone3 one (or, where clone3 is
    // refused, the vfork clone that writes cgroup.procs); never a fork.
    let (c3, vf) = (spawns(&d, "clone3").await, spawns(&d, "vfork").await);
    assert_eq!(c3 + vf, 1, "clone3 {c3}, vfork {vf}");
    assert_eq!(spawns(&d, "posix_spawn").await, 0);
    let shell = find_process(&["/bin/bash", "--norc", "--noprofile"])
        .or_else(|| find_process(&["/usr/bin/bash", "--norc", "--noprofile"]));
    if let Some(pid) = shell {
        // Its own session, and the terminal's foreground group.
        let f = stat_fields(pid);
        assert_eq!(f[2], pid as i64, "session leader");
    }
}
