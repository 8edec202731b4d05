//! sandboxd's gRPC ProcessService, with a tonic client, on execd's main
//! port (h2c beside HTTP/1.1) and on `--grpc-port`.

mod common;

#[allow(clippy::all, clippy::pedantic, dead_code)]
mod pb {
    pub use execd::grpc::process_v1::*;
    include!("grpc/process_v1_client.rs");
}

use std::collections::HashMap;
use std::time::Duration;

use common::{Daemon, TempDir};
use pb::process_service_client::ProcessServiceClient;
use pb::{start_response::Event, write_stdin_request::Payload};
use tonic::transport::Channel;
use tonic::Code;

fn daemon(dir: &TempDir, extra: &[&str]) -> Daemon {
    let mut args = vec!["--sandboxd-root", dir.0.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start_with(&args, &[])
}

async fn client(addr: std::net::SocketAddr) -> ProcessServiceClient<Channel> {
    ProcessServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

fn config(argv: &[&str]) -> pb::ProcessConfig {
    pb::ProcessConfig {
        command: argv.iter().map(|s| s.to_string()).collect(),
        env_vars: HashMap::new(),
        cwd: None,
    }
}

fn exec(argv: &[&str]) -> pb::ExecuteRequest {
    pb::ExecuteRequest {
        config: Some(config(argv)),
    }
}

/// Runs `argv` to its end with Execute; its result.
async fn execute(c: &mut ProcessServiceClient<Channel>, argv: &[&str]) -> pb::ExecuteResponse {
    c.execute(exec(argv)).await.expect("execute").into_inner()
}

/// Starts `argv` with no terminal; its event stream.
async fn start(
    c: &mut ProcessServiceClient<Channel>,
    argv: &[&str],
) -> tonic::Streaming<pb::StartResponse> {
    c.start(pb::StartRequest {
        config: Some(config(argv)),
        pty: None,
    })
    .await
    .expect("start")
    .into_inner()
}

/// Reads a Start stream to its end: (pid, stdout, stderr, exit code).
async fn drain(
    stream: &mut tonic::Streaming<pb::StartResponse>,
) -> (i32, Vec<u8>, Vec<u8>, Option<i32>) {
    let (mut pid, mut out, mut err, mut exit) = (0, Vec::new(), Vec::new(), None);
    while let Some(msg) = stream.message().await.expect("stream") {
        match msg.event.expect("event") {
            Event::Init(i) => pid = i.process_id,
            Event::Stdout(b) => out.extend(b),
            Event::Stderr(b) => err.extend(b),
            Event::Exit(e) => exit = Some(e.exit_code),
        }
    }
    (pid, out, err, exit)
}

#[tokio::test]
async fn execute_on_the_main_port() {
    let dir = TempDir::new("grpc-exec");
    std::fs::create_dir(dir.0.join("sub")).unwrap();
    let d = daemon(&dir, &[]);
    let mut c = client(d.addr).await;

    let r = execute(&mut c, &["echo", "hello"]).await;
    assert_eq!(r.stdout, b"hello\n");
    assert!(r.stderr.is_empty());
    assert_eq!(r.exit_code, 0);

    let r = execute(&mut c, &["sh", "-c", "exit 3"]).await;
    assert_eq!(r.exit_code, 3);

    // env and cwd (confined to the root).
    let mut cfg = config(&["/bin/sh", "-c", "echo $FOO; pwd"]);
    cfg.env_vars.insert("FOO".into(), "bar".into());
    cfg.cwd = Some("sub".into());
    let r = c
        .execute(pb::ExecuteRequest { config: Some(cfg) })
        .await
        .unwrap()
        .into_inner();
    let root = std::fs::canonicalize(&dir.0).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout),
        format!("bar\n{}/sub\n", root.display())
    );

    // Errors.
    let with_cwd = |cwd: &str| {
        let mut cfg = config(&["pwd"]);
        cfg.cwd = Some(cwd.into());
        Some(cfg)
    };
    for (config, code) in [
        (None, Code::InvalidArgument),
        (with_cwd("../.."), Code::PermissionDenied),
        (with_cwd("missing"), Code::NotFound),
    ] {
        let e = c.execute(pb::ExecuteRequest { config }).await.unwrap_err();
        assert_eq!(e.code(), code);
    }
    let e = c.execute(exec(&["no-such-program-x"])).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let e = c.execute(exec(&["echo", "a\0b"])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    // Output is bounded, with a marker.
    let r = execute(&mut c, &["sh", "-c", "head -c 3000000 /dev/zero"]).await;
    assert!(r.stdout.len() < 1_100_000);
    assert!(String::from_utf8_lossy(&r.stdout).ends_with("bytes omitted]\n"));

    // HTTP/1.1 keeps working on the same port.
    assert_eq!(d.get("/ping").await.status, 200);
}

#[tokio::test]
async fn execute_deadline_kills_the_group() {
    let dir = TempDir::new("grpc-deadline");
    let d = daemon(&dir, &[]);
    let mut c = client(d.addr).await;
    let pidfile = dir.join("pid");
    let mut req = tonic::Request::new(exec(&[
        "sh",
        "-c",
        &format!("sleep 30 & echo $! > {pidfile}; wait"),
    ]));
    req.set_timeout(Duration::from_millis(700));
    let e = c.execute(req).await.unwrap_err();
    assert!(
        matches!(e.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{e:?}"
    );
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::eventually(Duration::from_secs(10), "grandchild killed", || {
        !common::alive(pid)
    })
    .await;
}

#[tokio::test]
async fn start_streams_stdin_signals() {
    let dir = TempDir::new("grpc-start");
    let d = daemon(&dir, &[]);
    let mut c = client(d.addr).await;

    let mut s = start(&mut c, &["sh", "-c", "echo out; echo err >&2; exit 7"]).await;
    let (pid, out, err, exit) = drain(&mut s).await;
    assert!(pid > 0);
    assert_eq!(out, b"out\n");
    assert_eq!(err, b"err\n");
    assert_eq!(exit, Some(7));

    // stdin to cat, then EOF.
    let mut s = start(&mut c, &["cat"]).await;
    let first = s.message().await.unwrap().unwrap();
    let Some(Event::Init(init)) = first.event else {
        panic!("first event is not init: {first:?}")
    };
    let id = init.process_id;
    c.write_stdin(pb::WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Input(b"typed\n".to_vec())),
    })
    .await
    .unwrap();
    c.write_stdin(pb::WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Eof(())),
    })
    .await
    .unwrap();
    let (_, out, _, exit) = drain(&mut s).await;
    assert_eq!(out, b"typed\n");
    assert_eq!(exit, Some(0));
    // Gone once its stream ended.
    let e = c
        .write_stdin(pb::WriteStdinRequest {
            process_id: id,
            payload: Some(Payload::Eof(())),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // Signals: unknown id, unspecified signal, SIGTERM to the group.
    let e = c
        .send_signal(pb::SendSignalRequest {
            process_id: 9999,
            signal: pb::Signal::Sigterm as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let mut s = start(&mut c, &["sleep", "30"]).await;
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!("no init")
    };
    let e = c
        .send_signal(pb::SendSignalRequest {
            process_id: init.process_id,
            signal: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = c
        .resize_tty(pb::ResizeTtyRequest {
            process_id: init.process_id,
            cols: 80,
            rows: 24,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    c.send_signal(pb::SendSignalRequest {
        process_id: init.process_id,
        signal: pb::Signal::Sigterm as i32,
    })
    .await
    .unwrap();
    let (_, _, _, exit) = drain(&mut s).await;
    assert_eq!(exit, Some(-1), "killed by a signal: -1, as sandboxd");
}

#[tokio::test]
async fn cancelled_stream_kills_the_group_and_grpc_port_works() {
    let dir = TempDir::new("grpc-cancel");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let d = daemon(&dir, &["--grpc-port", &port.to_string()]);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = client(addr).await;
    let pidfile = dir.join("pid");
    let mut s = start(
        &mut c,
        &[
            "sh",
            "-c",
            &format!("sleep 30 & echo $! > {pidfile}; echo ready; wait"),
        ],
    )
    .await;
    loop {
        let m = s.message().await.unwrap().unwrap();
        if matches!(m.event, Some(Event::Stdout(_))) {
            break;
        }
    }
    drop(s);
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::eventually(Duration::from_secs(10), "grandchild killed", || {
        !common::alive(pid)
    })
    .await;
    drop(d);
}

#[tokio::test]
async fn start_on_a_terminal_with_resize() {
    let dir = TempDir::new("grpc-pty");
    let d = daemon(&dir, &[]);
    let mut c = client(d.addr).await;
    let mut s = c
        .start(pb::StartRequest {
            config: Some(config(&["stty", "size"])),
            pty: Some(pb::Pty { cols: 80, rows: 24 }),
        })
        .await
        .unwrap()
        .into_inner();
    let (_, out, err, exit) = drain(&mut s).await;
    assert_eq!(String::from_utf8_lossy(&out).trim(), "24 80");
    assert!(err.is_empty(), "a terminal has one output stream");
    assert_eq!(exit, Some(0));

    // An interactive shell: resize, then ask it.
    let mut s = c
        .start(pb::StartRequest {
            config: Some(config(&["sh"])),
            pty: Some(pb::Pty { cols: 80, rows: 24 }),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(Event::Init(init)) = s.message().await.unwrap().unwrap().event else {
        panic!("no init")
    };
    let id = init.process_id;
    c.resize_tty(pb::ResizeTtyRequest {
        process_id: id,
        cols: 100,
        rows: 30,
    })
    .await
    .unwrap();
    c.write_stdin(pb::WriteStdinRequest {
        process_id: id,
        payload: Some(Payload::Input(b"stty size; exit 4\n".to_vec())),
    })
    .await
    .unwrap();
    let (_, out, _, exit) = drain(&mut s).await;
    assert!(String::from_utf8_lossy(&out).contains("30 100"), "{out:?}");
    assert_eq!(exit, Some(4));
    let e = c
        .resize_tty(pb::ResizeTtyRequest {
            process_id: id,
            cols: 1,
            rows: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

/// The daemon's open sockets (listeners and connections).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

/// `--header-timeout` on HTTP/2: calls silent for longer than the timeout
/// (a stream, a unary call) are never cut; a channel then left idle has its
/// connection closed (GOAWAY, then the client closes it), and its next call
/// works on a new connection.
#[tokio::test]
async fn the_header_timeout_spares_calls_and_closes_idle_connections() {
    let timeout = Duration::from_secs(1);
    let dir = TempDir::new("grpc-idle");
    let d = daemon(&dir, &["--header-timeout", "1s"]);
    let listening = sockets(d.pid());
    let mut c = client(d.addr).await;

    let mut s = start(&mut c, &["sh", "-c", "sleep 3; echo streamed"]).await;
    let (_, out, _, exit) = drain(&mut s).await;
    assert_eq!(out, b"streamed\n");
    assert_eq!(exit, Some(0));
    let r = execute(&mut c, &["sh", "-c", "sleep 3; echo unary"]).await;
    assert_eq!(r.stdout, b"unary\n");

    let idle = std::time::Instant::now();
    assert!(sockets(d.pid()) > listening, "the channel's connection");
    common::eventually(
        Duration::from_secs(10),
        "the idle connection closed",
        || sockets(d.pid()) == listening,
    )
    .await;
    // Counted from the response's end in the daemon, a little before `idle`.
    assert!(
        idle.elapsed() >= timeout * 9 / 10,
        "closed after {:?}",
        idle.elapsed()
    );

    let r = execute(&mut c, &["echo", "again"]).await;
    assert_eq!(r.stdout, b"again\n");
}

#[tokio::test]
async fn access_token_applies_to_grpc() {
    let dir = TempDir::new("grpc-auth");
    let d = daemon(&dir, &["--access-token", "s3cret"]);
    let mut c = client(d.addr).await;
    let e = c.execute(exec(&["true"])).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut req = tonic::Request::new(exec(&["echo", "ok"]));
    req.metadata_mut()
        .insert("x-execd-access-token", "s3cret".parse().unwrap());
    let r = c.execute(req).await.unwrap().into_inner();
    assert_eq!(r.stdout, b"ok\n");
}

/// `--grpc-port 0`: the chosen port is printed on stdout, on the line after
/// the main port's, and serves gRPC.
#[tokio::test]
async fn grpc_port_zero_is_printed_on_stdout() {
    use std::io::{BufRead, BufReader};
    let dir = TempDir::new("grpc-port-zero");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"])
        .args(["--grpc-port", "0", "--data-dir", &dir.join("data")])
        .args(["--sandboxd-root", dir.0.to_str().unwrap()])
        .env_remove("EXECD_ACCESS_TOKEN")
        .env_remove("EXECD_ENVS")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn execd");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    // Read on a thread: a daemon that never prints the second line must
    // fail the test, not hang it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut first, mut second) = (String::new(), String::new());
        let _ = out.read_line(&mut first);
        let _ = out.read_line(&mut second);
        let _ = tx.send((first, second, out));
    });
    let waited = rx.recv_timeout(Duration::from_secs(60));
    let Ok((first, second, _out)) = waited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("execd printed no second line (the gRPC address)");
    };
    assert!(first.starts_with("execd listening on "), "{first:?}");
    let grpc = second
        .trim()
        .strip_prefix("execd gRPC listening on ")
        .unwrap_or_else(|| panic!("no gRPC port line: {second:?}"));
    let addr: std::net::SocketAddr = grpc.parse().unwrap();
    assert_ne!(addr.port(), 0);
    let mut c = client(addr).await;
    let mut s = start(&mut c, &["echo", "hi"]).await;
    let (_, out_bytes, _, exit) = drain(&mut s).await;
    assert_eq!(out_bytes, b"hi\n");
    assert_eq!(exit, Some(0));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
}
