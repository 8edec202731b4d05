//! Fault injection, black-box: clients killed in the middle of a transfer, a
//! fork bomb, a command that closes its output but keeps running, and ten
//! thousand idle connections. Each test checks the end state: the daemon
//! answers, nothing was lost or left behind, and its file descriptors are
//! back where they started.
//!
//! Related faults are covered beside the features they exercise:
//! `tests/command.rs` (`a_grandchild_holding_the_pipe_does_not_hang_the_stream`,
//! `sigterm_ends_commands_and_exits_zero`) and
//! `tests/files.rs` (`full_disk_is_507_and_keeps_the_old_file`,
//! `aborted_upload_leaves_old_file_and_no_temporary`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// An HTTP client in a process of its own (bash with its `/dev/tcp`), so that
/// it can be killed with SIGKILL like a real client: the kernel closes its
/// socket, with a reset when response bytes are still unread.
struct Client {
    child: Child,
    out: BufReader<ChildStdout>,
}

/// What the client does after sending its request, before it says `ready`
/// and waits to be killed.
const CLIENT: &str = r#"
exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
cat "$2" >&3
case $3 in
  download) head -c 200000 <&3 >/dev/null ;;
  stream)
    while IFS= read -r line <&3; do
      case $line in *'"type":"init"'*) printf '%s\n' "$line"; break ;; esac
    done
    head -c 65536 <&3 >/dev/null ;;
esac
echo ready
exec sleep 300
"#;

impl Client {
    /// Starts a client that sends the raw bytes of `request` and acts as `mode` says.
    fn start(d: &Daemon, dir: &TempDir, request: &[u8], mode: &str) -> Client {
        let req = dir.join(&format!("request-{mode}"));
        std::fs::write(&req, request).unwrap();
        let mut child = Command::new("bash")
            .args([
                "-c",
                CLIENT,
                "client",
                &d.addr.port().to_string(),
                &req,
                mode,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("bash");
        let out = BufReader::new(child.stdout.take().unwrap());
        Client { child, out }
    }

    /// The next line the client prints.
    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).expect("client output");
        s.trim().to_string()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Upload temporaries in `dir`: named ones, and the daemon's descriptors
/// of anonymous (`O_TMPFILE`) ones there.
fn upload_temps(d: &Daemon, dir: &TempDir) -> Vec<String> {
    let in_dir = format!("-> {}/", dir.0.display());
    dir.names()
        .into_iter()
        .filter(|n| n.starts_with(".execd-upload"))
        .chain(d.fds().into_iter().filter(|f| f.contains(&in_dir)))
        .collect()
}

/// `seq 1 n` output.
fn seq(from: u32, to: u32) -> String {
    (from..=to).map(|i| format!("{i}\n")).collect()
}

#[tokio::test]
async fn clients_killed_mid_upload_download_and_stream_leave_nothing_behind() {
    // A window that holds all the output: no spill file stays open for the
    // retention period.
    let d = Daemon::start_with(&["--output-window", "16MiB"], &[]);
    let base = d.fds();
    let t = TempDir::new("killed");

    // Mid-upload: the temporary file exists when the client dies.
    let target = t.join("precious.bin");
    std::fs::write(&target, "old content").unwrap();
    let form = Form::new();
    let mut body = Form::new()
        .meta(&json!({"path": target, "mode": 644}))
        .open_file();
    body.extend_from_slice(&vec![b'n'; 256 * 1024]);
    let mut req = format!(
        "POST /files/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len() + 10 * 1024 * 1024
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let mut c = Client::start(&d, &t, &req, "upload");
    assert_eq!(c.line(), "ready");
    eventually(WAIT, "the upload's temporary file appears", || {
        !upload_temps(&d, &t).is_empty()
    })
    .await;
    c.kill();
    eventually(WAIT, "temporary file removed", || {
        upload_temps(&d, &t).is_empty()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old content");

    // Mid-download: 200 kB of an 8 MiB file read, the rest unread.
    let big = t.join("big.bin");
    let content: Vec<u8> = (0..8u32 << 20).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&big, &content).unwrap();
    let req = format!(
        "GET /files/download?path={} HTTP/1.1\r\nHost: x\r\n\r\n",
        q(&big)
    );
    let mut c = Client::start(&d, &t, req.as_bytes(), "download");
    assert_eq!(c.line(), "ready");
    c.kill();
    assert_eq!(std::fs::read(&big).unwrap(), content, "file unchanged");

    // Mid-stream: the command is still running (it waits on a FIFO) when
    // the client dies, and must run to completion with all of its output.
    let fifo = t.join("gate");
    nix::unistd::mkfifo(
        fifo.as_str(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    let cmd = json!({"command": format!("seq 1 50000; read x < {fifo}; seq 50001 100000")});
    let body = cmd.to_string();
    let req = format!(
        "POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = Client::start(&d, &t, req.as_bytes(), "stream");
    let init: Value = serde_json::from_str(&c.line()).expect("init event");
    let id = init["text"].as_str().unwrap().to_string();
    assert_eq!(c.line(), "ready");
    c.kill();
    assert_eq!(
        d.get(&format!("/command/status/{id}")).await.json()["running"],
        true,
        "the client died while the command was running"
    );
    // Opening the FIFO for writing waits for the command's `read`.
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .and_then(|mut f| f.write_all(b"go\n"))
    })
    .await
    .unwrap()
    .unwrap();
    let st = d.wait_finished(&id, WAIT).await;
    assert_eq!(st["exit_code"], 0, "{st}");
    assert!(
        d.get(&format!("/command/{id}/logs")).await.text() == seq(1, 100000),
        "logs intact"
    );

    // The daemon is healthy and has let go of every connection, pipe and file.
    assert_eq!(d.get("/ping").await.status, 200);
    let again = d.get(&format!("/files/download?path={}", q(&big))).await;
    assert!(again.body == content, "a full download still matches");
    d.fds_back_to(&base, WAIT).await;
    assert_eq!(
        t.names(),
        [
            "big.bin",
            "gate",
            "precious.bin",
            "request-download",
            "request-stream",
            "request-upload"
        ]
    );
    assert!(zombies_of(d.pid()).is_empty());
}

/// A uid no process runs as, with no passwd entry, for the fork bomb.
fn unused_uid() -> Option<u32> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    (61_000..61_100).find(|uid| {
        procs_of_uid(*uid).is_empty()
            && !passwd
                .lines()
                .any(|l| l.split(':').nth(2) == Some(&uid.to_string()))
    })
}

/// Kills every process of `uid` from a process of that uid (`kill -1`
/// signals exactly the processes its caller may signal, itself excepted),
/// until none is left. Only for cleaning up after a failed assertion: the
/// test itself checks that the daemon left none.
struct KillAllOf(u32);

impl Drop for KillAllOf {
    fn drop(&mut self) {
        use std::os::unix::process::CommandExt;
        for _ in 0..100 {
            if procs_of_uid(self.0).is_empty() {
                return;
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", "-1"])
                .uid(self.0)
                .gid(self.0)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Processes the fork bomb's uid may have: RLIMIT_NPROC of the daemon, which
/// its commands inherit. Root (the daemon) is exempt; the bomb's uid is not.
const NPROC: u64 = 128;

#[tokio::test]
async fn a_fork_bomb_under_a_timeout_dies_and_the_daemon_survives() {
    if !is_root() {
        eprintln!(
            "skipped: the fork bomb must run as an unprivileged uid, which needs a root daemon"
        );
        return;
    }
    let Some(uid) = unused_uid() else {
        eprintln!("skipped: no unused uid in 61000..61100 to run the fork bomb as");
        return;
    };
    let _cleanup = KillAllOf(uid);
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_execd"));
    cmd.args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"]);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: NPROC,
                rlim_max: NPROC,
            };
            if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let d = Daemon::launch(cmd, &[], &[]);
    let base = d.fds();

    // Every call forks two more and waits for them; failed forks are retried.
    // The leader waits too, so the timeout finds it running.
    let bomb = "f() { f & f & wait; }; f";
    let mut s = d
        .stream(
            "/command",
            &json!({"command": bomb, "uid": uid, "cwd": "/", "timeout": 3000}),
        )
        .await;
    assert_eq!(s.next().await.unwrap()["type"], "init");
    // It is a bomb: it reaches the limit, and goes no further.
    let mut most = 0;
    eventually(WAIT, "the bomb has spread", || {
        let n = procs_of_uid(uid).len();
        most = most.max(n);
        n as u64 >= NPROC / 2
    })
    .await;
    let evs = s.collect().await;
    let t = terminal(&evs);
    assert_eq!(t["timed_out"], true, "{t}");
    assert_eq!(t["signal"], libc::SIGKILL, "{t}");
    // The whole tree is gone, and nothing was left as a zombie.
    eventually(WAIT, "every process of the bomb gone", || {
        let n = procs_of_uid(uid).len();
        most = most.max(n);
        n == 0
    })
    .await;
    eprintln!("fork bomb: at most {most} processes of uid {uid} seen (RLIMIT_NPROC {NPROC})");
    assert!(most as u64 <= NPROC, "{most} processes, limit {NPROC}");
    assert!(zombies_of(d.pid()).is_empty());
    assert!(
        descendants(d.pid()).is_empty(),
        "{:?}",
        descendants(d.pid())
    );

    // The daemon is unharmed: it answers, runs commands (as that uid too), and
    // holds no more than it did before.
    assert_eq!(d.get("/ping").await.status, 200);
    let evs = d
        .run(json!({"command": "id -u", "uid": uid, "cwd": "/"}))
        .await;
    assert_eq!(text_of(&evs, "stdout"), format!("{uid}\n"));
    let evs = d.run(json!({"command": "echo fine"})).await;
    assert_eq!(text_of(&evs, "stdout"), "fine\n");
    d.fds_back_to(&base, WAIT).await;
}

/// Reads events up to the first stdout event; returns its text.
async fn first_stdout(s: &mut EventStream) -> String {
    loop {
        let e = s.next().await.expect("stream ended before any output");
        if e["type"] == "stdout" {
            return e["text"].as_str().unwrap().to_string();
        }
    }
}

/// Whether process `pid` has file descriptor `fd` open.
fn has_fd(pid: u32, fd: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/fd/{fd}")).exists()
}

/// Reads pings until `n` have come, checking nothing else arrives.
async fn pings(s: &mut EventStream, n: usize) {
    for _ in 0..n {
        let e = s.next().await.expect("the stream stays open");
        assert_eq!(e["type"], "ping", "{e}");
    }
}

/// Streams a command that prints its pid and then closes stdout and stderr;
/// returns once both pipes are at end-of-file and the stream has still sent
/// pings (it stays open while the command runs), with the command's id and pid.
async fn closed_output(d: &Daemon, body: Value) -> (EventStream, String, u32) {
    let mut s = d.stream("/command", &body).await;
    let id = s.next().await.unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    let pid: u32 = first_stdout(&mut s).await.trim().parse().unwrap();
    eventually(WAIT, "stdout and stderr closed", || {
        !has_fd(pid, 1) && !has_fd(pid, 2)
    })
    .await;
    pings(&mut s, 3).await;
    (s, id, pid)
}

#[tokio::test]
async fn a_command_that_closes_its_output_keeps_its_stream_until_it_exits() {
    let d = Daemon::start_with(&["--ping-interval", "50ms"], &[]);
    let base = d.fds();

    // It exits by itself once told to (on stdin): the exit code arrives.
    let cmd = "echo $$; exec >&- 2>&-; read x; exit 7";
    let (mut s, id, _) = closed_output(&d, json!({"command": cmd, "stdin": true})).await;
    assert_eq!(
        d.get(&format!("/command/status/{id}")).await.json()["running"],
        true
    );
    let r = d
        .request(
            http::Method::POST,
            &format!("/command/{id}/stdin"),
            &[],
            "go\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let rest = s.collect().await;
    let t = terminal(&rest);
    assert_eq!(t["exit_code"], 7, "{t}");
    assert_eq!(t["error"]["evalue"], "7");
    assert!(
        rest[..rest.len() - 1].iter().all(|e| e["type"] == "ping"),
        "{rest:?}"
    );

    // It would run for ever: an interrupt ends it, and the stream with it.
    let cmd = "echo $$; exec >&- 2>&-; exec sleep 300";
    let (mut s, id, pid) = closed_output(&d, json!({ "command": cmd })).await;
    assert_eq!(d.delete(&format!("/command?id={id}")).await.status, 200);
    let rest = s.collect().await;
    let t = terminal(&rest);
    assert_eq!(t["interrupted"], true, "{t}");
    assert_eq!(t["signal"], libc::SIGTERM, "{t}");
    assert!(!alive(pid));
    assert!(zombies_of(d.pid()).is_empty());
    d.fds_back_to(&base, WAIT).await;
}

/// Sends `GET /ping` on `conn` and reads the answer's head (it has no body).
async fn ping_on(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send ping");
    let mut buf = Vec::new();
    while !buf.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 512];
        let n = conn.read(&mut b).await.expect("read ping answer");
        assert!(
            n > 0,
            "connection closed: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_keepalive_connections() {
    const N: usize = 10_000;
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    // This process holds the client ends; execd raises its own limit.
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if hard < (N + 1024) as u64 {
        eprintln!("skipped: the open-file limit ({hard}) is too low for {N} connections");
        return;
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let d = std::sync::Arc::new(Daemon::start());
    let base = d.fds();
    let idle_rss = d.proc_kib("VmRSS");

    // Each connection is used for one request, then left idle, kept alive.
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..N {
        let (addr, limit) = (d.addr, limit.clone());
        set.spawn(async move {
            let _permit = limit.acquire().await.unwrap();
            let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let head = ping_on(&mut c).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            c
        });
    }
    let mut conns = Vec::with_capacity(N);
    while let Some(c) = set.join_next().await {
        conns.push(c.unwrap());
    }
    assert_eq!(
        d.fds().len(),
        base.len() + N,
        "one descriptor per connection"
    );
    let open_rss = d.proc_kib("VmRSS");

    // With all of them open, execd still answers and runs commands...
    assert_eq!(d.get("/ping").await.status, 200);
    let evs = d.run(json!({"command": "echo still here"})).await;
    assert_eq!(text_of(&evs, "stdout"), "still here\n");
    // ...and the idle connections are still usable.
    for i in [0, N / 2, N - 1] {
        assert!(ping_on(&mut conns[i]).await.starts_with("HTTP/1.1 200"));
    }
    assert_eq!(d.fds().len(), base.len() + N, "no connection was dropped");
    // Idle connections are parked outside hyper (more than
    // `--park-idle-above` are open), without its 8 KiB read and write
    // buffers: 12.8 KiB each before, about 6 now (the budget is 8).
    let per_conn = (open_rss.saturating_sub(idle_rss) * 1024) / N as u64;
    assert!(
        per_conn <= 8 * 1024,
        "{per_conn} bytes of RSS per idle connection"
    );

    drop(conns);
    d.fds_back_to(&base, Duration::from_secs(60)).await;
    // Freed memory is handed back to the system (every few seconds): at
    // least 90 % of what the connections took. (A fixed 4 MiB margin over
    // idle failed once in CI with tests running beside it; alone, 2.8 MiB of
    // the 60 stay, the rest of the heap's pages being in use.)
    let took = open_rss.saturating_sub(idle_rss);
    let limit = idle_rss + took / 10;
    let end = Instant::now() + Duration::from_secs(30);
    let after_rss = loop {
        let after_rss = d.proc_kib("VmRSS");
        if after_rss <= limit {
            break after_rss;
        }
        assert!(
            Instant::now() < end,
            "RSS not back near idle: {after_rss} KiB 30 s after the connections closed; \
             idle {idle_rss} KiB, {open_rss} KiB with them open, limit {limit} KiB"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "{N} idle connections: execd RSS {idle_rss} KiB idle, {open_rss} KiB with them open \
         ({per_conn} bytes each), {after_rss} KiB after they closed; fds {} -> {} -> {}",
        base.len(),
        base.len() + N,
        d.fds().len()
    );
}

/// Reads from `conn` until `done` says the bytes so far are enough.
async fn read_until(conn: &mut tokio::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    while !done(&buf) {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, conn.read(&mut b))
            .await
            .expect("answer within the wait")
            .expect("read");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&b[..n]);
    }
    buf
}

/// execd tells HTTP/1.1 from h2c by the first bytes a client sends. A client
/// whose first write is a single byte (or a piece of the HTTP/2 preface) is
/// served all the same, whichever way the bytes arrive.
#[tokio::test]
async fn requests_whose_first_bytes_arrive_alone_are_served() {
    use tokio::io::AsyncWriteExt;
    let d = Daemon::start();

    // HTTP/1.1: "P" alone is also the start of the HTTP/2 preface.
    let mut c = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.write_all(b"P").await.expect("send");
    // A round trip on another connection, accepted after this one, gives the
    // daemon time to look at the lone first byte before the rest arrives.
    assert_eq!(d.get("/ping").await.status, 200);
    let body = br#"{"command":"echo split"}"#;
    let rest = format!(
        "OST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(rest.as_bytes()).await.expect("send");
    c.write_all(body).await.expect("send");
    let answer = read_until(&mut c, |b| {
        b.windows(5).any(|w| w == b"split") && b.ends_with(b"0\r\n\r\n")
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("execution_complete"), "{answer}");

    // h2c: the preface in two pieces, then an empty SETTINGS frame; the
    // server's first frame is its SETTINGS (type 4, stream 0).
    let mut c = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    c.set_nodelay(true).expect("nodelay");
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    c.write_all(&preface[..9]).await.expect("send");
    assert_eq!(d.get("/ping").await.status, 200);
    c.write_all(&preface[9..]).await.expect("send");
    c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("send");
    let frames = read_until(&mut c, |b| b.len() >= 9).await;
    assert_eq!(frames[3], 4, "first frame is SETTINGS: {frames:?}");
    assert_eq!(&frames[5..9], &[0, 0, 0, 0], "on stream 0: {frames:?}");

    assert_eq!(d.get("/ping").await.status, 200);
}

/// On SIGTERM an idle keep-alive connection is closed at once and a response
/// in flight is finished first: execd waits out neither its grace period nor
/// the client.
#[tokio::test]
async fn shutdown_closes_idle_connections_and_finishes_responses_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut d = Daemon::start_with(&["--graceful-shutdown-timeout", "60s"], &[]);
    let connect = || async {
        let c = tokio::net::TcpStream::connect(d.addr)
            .await
            .expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c
    };
    // One request, then left open (keep-alive is HTTP/1.1's default).
    let mut idle = connect().await;
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let head = read_until(&mut idle, |b| b.ends_with(b"\r\n\r\n")).await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    // A streamed command whose response has begun.
    let mut busy = connect().await;
    let body = br#"{"command":"echo started; sleep 30"}"#;
    let req = format!(
        "POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(req.as_bytes()).await.expect("send");
    busy.write_all(body).await.expect("send");
    read_until(&mut busy, |b| b.windows(7).any(|w| w == b"started")).await;

    d.signal(libc::SIGTERM);
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(WAIT, idle.read(&mut b))
        .await
        .expect("the idle connection is closed within the wait")
        .expect("read");
    assert_eq!(n, 0, "EOF, not {:?}", String::from_utf8_lossy(&b[..n]));
    // The command is interrupted and its stream still ends properly: a
    // terminal event, then the chunked body's last chunk.
    let rest = read_until(&mut busy, |b| b.ends_with(b"0\r\n\r\n")).await;
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("\"interrupted\":true"), "{rest}");
    let status = d
        .wait_exit(WAIT)
        .expect("execd exits without waiting out its grace period");
    assert!(status.success(), "{status:?}");
}

/// `--header-timeout`: a request head trickled in too slowly and an idle
/// keep-alive connection are closed, but an exchange in progress is never
/// cut for being slow: a handler silent for long, a request body sent slowly
/// in pieces, a client slow to read its response. (A request body that
/// stalls is: see `a_stalled_request_body_is_cut_and_a_slow_one_is_not`.)
#[tokio::test]
async fn the_header_timeout_closes_slow_heads_and_idle_connections_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = Duration::from_secs(1);
    let d = Daemon::start_with(&["--header-timeout", "1s"], &[]);
    let connect = || async {
        let c = tokio::net::TcpStream::connect(d.addr)
            .await
            .expect("connect");
        c.set_nodelay(true).expect("nodelay");
        c
    };
    // Reads until the daemon closes the connection (EOF, or a reset when
    // bytes it never read were pending); the bytes read.
    async fn until_closed(c: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
        let mut all = Vec::new();
        match tokio::time::timeout(WAIT, c.read_to_end(&mut all))
            .await
            .expect("closed within the wait")
        {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        all
    }

    // A connection that never sends a byte.
    let began = std::time::Instant::now();
    let mut silent = connect().await;
    assert!(until_closed(&mut silent).await.is_empty());
    assert!(
        began.elapsed() >= timeout,
        "closed after {:?}",
        began.elapsed()
    );

    // A head trickled in a byte at a time, never finished.
    let began = std::time::Instant::now();
    let mut slow = connect().await;
    slow.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send");
    let (mut rd, mut wr) = slow.split();
    let trickle = async {
        for b in b"X-Slow: 0123456789".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        // Writes fail only once the daemon has closed the connection.
        _ = trickle => {}
        all = until_closed(&mut rd) => assert!(all.is_empty(), "{all:?}"),
    }
    assert!(
        began.elapsed() >= timeout,
        "closed after {:?}",
        began.elapsed()
    );

    // A connection left idle after a request.
    let mut idle = connect().await;
    idle.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let all = until_closed(&mut idle).await;
    assert!(all.starts_with(b"HTTP/1.1 200"), "{all:?}");

    // A head trickled in after a request, once the connection has been
    // idle (parked) for a while: closed all the same.
    let began = std::time::Instant::now();
    let mut late = connect().await;
    late.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let (mut rd, mut wr) = late.split();
    let trickle = async {
        tokio::time::sleep(timeout / 2).await;
        for b in b"GET /ping HTTP/1.1\r\nX-Slow: 0123456789".iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        _ = trickle => {}
        all = until_closed(&mut rd) => {
            assert_eq!(all.windows(8).filter(|w| w == b"HTTP/1.1").count(), 1, "{all:?}");
        }
    }
    assert!(
        began.elapsed() >= timeout,
        "closed after {:?}",
        began.elapsed()
    );

    // A handler silent for three timeouts: agent-sandbox's /execute answers
    // only when its command ends.
    let r = d
        .post_json(
            "/execute",
            &serde_json::json!({"command": "sleep 3; echo done"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["stdout"], "done\n");

    // A request body sent a byte at a time over three timeouts.
    let answer = slow_body(&d, Duration::from_millis(3000 / 26)).await;
    assert!(answer.contains("body-ok"), "{answer}");

    // A response read only after three timeouts: 8 MiB, more than the
    // socket buffers hold, so the daemon is stuck mid-body meanwhile.
    let dir = std::env::temp_dir().join(format!("execd-hdr-timeout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let file = dir.join("big");
    let size = 8 << 20;
    std::fs::write(&file, vec![b'z'; size]).expect("write");
    let mut reader = connect().await;
    let req = format!(
        "GET /files/download?path={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        file.display()
    );
    reader.write_all(req.as_bytes()).await.expect("send");
    tokio::time::sleep(3 * timeout).await;
    let all = until_closed(&mut reader).await;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    assert_eq!(all.len() - split - 4, size, "the whole body");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends `{"command":"echo body-ok"}` to `/command` a byte at a time,
/// `pause` apart, and returns the answer.
async fn slow_body(d: &Daemon, pause: Duration) -> String {
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let body = br#"{"command":"echo body-ok"}"#;
    let head = format!(
        "POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("send");
    for b in body {
        tokio::time::sleep(pause).await;
        conn.write_all(&[*b]).await.expect("send");
    }
    let answer = read_until(&mut conn, |b| b.ends_with(b"0\r\n\r\n")).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Issue 15, item 10: a request body that stops arriving is not waited for
/// for ever. With `--header-timeout 1s`, a body that stalls gets a 408
/// envelope and its connection is closed (the daemon no longer holds it),
/// while one sent slowly, in pieces with shorter pauses, completes.
#[tokio::test]
async fn a_stalled_request_body_is_cut_and_a_slow_one_is_not() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start_with(&["--header-timeout", "1s"], &[]);
    let base = d.fds();
    let t = TempDir::new("stall");

    // A JSON body, an upload and a proxied body: each stops half-way.
    let form = Form::new().meta(&serde_json::json!({"path": t.join("never")}));
    let mut upload = form.open_file();
    upload.extend_from_slice(b"some bytes");
    let ct = Form::new().content_type();
    let cases: Vec<(String, Vec<u8>)> = vec![
        (
            "POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n".into(),
            br#"{"command":"#.to_vec(),
        ),
        (
            format!("POST /files/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {ct}\r\nTransfer-Encoding: chunked\r\n\r\n"),
            format!("{:x}\r\n", upload.len())
                .into_bytes()
                .into_iter()
                .chain(upload)
                .chain(b"\r\n".iter().copied())
                .collect(),
        ),
    ];
    for (head, part) in cases {
        let mut conn = tokio::net::TcpStream::connect(d.addr)
            .await
            .expect("connect");
        conn.write_all(head.as_bytes()).await.expect("send");
        conn.write_all(&part).await.expect("send");
        // Then silence: the daemon answers 408 and closes.
        let mut all = Vec::new();
        match tokio::time::timeout(WAIT, conn.read_to_end(&mut all))
            .await
            .expect("closed within the wait")
        {
            Ok(_) => {}
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
        let text = String::from_utf8_lossy(&all);
        assert!(text.starts_with("HTTP/1.1 408"), "{head}: {text}");
        assert!(text.contains("REQUEST_TIMEOUT"), "{head}: {text}");
    }
    assert!(t.names().is_empty(), "{:?}", t.names());
    // Nothing of those connections is held any more.
    d.fds_back_to(&base, WAIT).await;

    // Slow but steady: pauses of a tenth of the timeout.
    let answer = slow_body(&d, Duration::from_millis(100)).await;
    assert!(answer.contains("body-ok"), "{answer}");
}

/// HTTP/2 has the header timeout too (hyper has none of its own there). A
/// connection that serves no stream, here one whose client sent its preface,
/// its settings and the start of a HEADERS frame it never ends, gets a GOAWAY
/// once the timeout has passed; a client that then never answers the
/// GOAWAY's PING is closed a timeout later.
#[tokio::test]
async fn an_idle_http2_connection_gets_a_goaway_then_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SETTINGS: u8 = 0x4;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    let timeout = Duration::from_secs(1);
    let d = Daemon::start_with(&["--header-timeout", "1s"], &[]);
    let began = std::time::Instant::now();
    let mut c = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame.
    hello.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
    // HEADERS on stream 1 with one byte of header block (`:method: GET`)
    // and neither END_HEADERS nor a CONTINUATION to follow.
    hello.extend_from_slice(&[0, 0, 1, 0x1, 0, 0, 0, 0, 1, 0x82]);
    c.write_all(&hello).await.expect("send");

    // The daemon's frames, each with the time it arrived, until it closes.
    let mut frames = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            match c.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                    break;
                }
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            c.read_exact(&mut payload).await.expect("a whole frame");
            frames.push((head[3], payload, began.elapsed()));
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after {WAIT:?}: {frames:?}");
    let closed_after = began.elapsed();

    let (_, goaway, sent_after) = frames
        .iter()
        .find(|(kind, ..)| *kind == GOAWAY)
        .unwrap_or_else(|| panic!("no GOAWAY in {frames:?}"));
    assert!(*sent_after >= timeout, "GOAWAY after {sent_after:?}");
    // A graceful one: no stream refused yet (last stream id 2^31-1), and
    // NO_ERROR.
    assert_eq!(goaway[..4], [0x7f, 0xff, 0xff, 0xff], "{goaway:?}");
    assert_eq!(goaway[4..8], [0, 0, 0, 0], "{goaway:?}");
    assert!(
        frames.iter().any(|(kind, ..)| *kind == PING),
        "the GOAWAY's PING: {frames:?}"
    );
    // A timeout apart in the daemon; here, less whatever late reading of the
    // GOAWAY shortened it.
    assert!(
        closed_after >= *sent_after + timeout * 9 / 10,
        "GOAWAY after {sent_after:?}, closed after {closed_after:?}"
    );
}

/// Reads `conn` until the daemon closes it (EOF or a reset), at most `WAIT`.
async fn read_to_close(conn: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    match tokio::time::timeout(WAIT, conn.read_to_end(&mut all))
        .await
        .expect("closed within the wait")
    {
        Ok(_) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    all
}

/// The statuses of the responses in `bytes`, in order (a response's head
/// follows the body before it on the same line).
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.")
        .filter_map(|(i, _)| {
            let rest = text.get(i + 9..i + 12)?;
            (text.as_bytes().get(i + 8) == Some(&b' ')).then(|| rest.parse().ok())?
        })
        .collect()
}

/// An idle keep-alive connection leaves hyper between requests (it is
/// parked, its buffers freed) and comes back for the next one: a request
/// head already begun when it went idle (pipelined in the same packet as
/// the request before), and many requests in a row after it.
#[tokio::test]
async fn an_idle_connection_keeps_its_next_request() {
    use tokio::io::AsyncWriteExt;
    // Parked as soon as idle, whatever the connections open.
    let d = Daemon::start_with(&["--park-idle-above", "0"], &[]);
    let mut c = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    c.set_nodelay(true).expect("nodelay");
    c.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\nGET /pi")
        .await
        .expect("send");
    let first = read_until(&mut c, |b| b.ends_with(b"\r\n\r\n")).await;
    assert_eq!(statuses(&first), [200]);
    // The rest of the second head, once the first answer is in: /ping, not
    // a 404 for `/pi` or a 400 for `ng HTTP/1.1`.
    c.write_all(b"ng HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let second = read_until(&mut c, |b| b.ends_with(b"\r\n\r\n")).await;
    assert_eq!(statuses(&second), [200]);
    for _ in 0..50 {
        assert!(ping_on(&mut c).await.starts_with("HTTP/1.1 200"));
    }
    // A body on the same connection, then a request after it.
    let body = br#"{"command":"echo parked"}"#;
    let head = format!(
        "POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.expect("send");
    c.write_all(body).await.expect("send");
    let answer = read_until(&mut c, |b| b.ends_with(b"0\r\n\r\n")).await;
    assert!(String::from_utf8_lossy(&answer).contains("parked"));
    assert!(ping_on(&mut c).await.starts_with("HTTP/1.1 200"));
}

/// A connection whose request asks to close it (`Connection: close`, or
/// HTTP/1.0 without keep-alive) is closed after its answer, parked or not.
#[tokio::test]
async fn connections_asked_to_close_are_closed() {
    use tokio::io::AsyncWriteExt;
    // Parked as soon as idle, whatever the connections open.
    let d = Daemon::start_with(&["--park-idle-above", "0"], &[]);
    for req in [
        &b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        b"GET /ping HTTP/1.0\r\n\r\n",
    ] {
        let mut c = tokio::net::TcpStream::connect(d.addr)
            .await
            .expect("connect");
        // A request first, so that the connection has been idle once.
        assert!(ping_on(&mut c).await.starts_with("HTTP/1.1 200"));
        c.write_all(req).await.expect("send");
        let all = read_to_close(&mut c).await;
        assert_eq!(statuses(&all), [200], "{all:?}");
    }
}

/// A request body the handler never reads (a 405 answered at once) is
/// drained or the connection closed: its bytes, here request heads for
/// `/ping`, are never taken for requests, even when the connection goes
/// idle (parked) right after the answer.
#[tokio::test]
async fn a_body_left_unread_never_becomes_requests() {
    use tokio::io::AsyncWriteExt;
    // Parked as soon as idle, whatever the connections open.
    let d = Daemon::start_with(&["--park-idle-above", "0"], &[]);
    for size in [1usize << 10, 256 << 10] {
        let mut c = tokio::net::TcpStream::connect(d.addr)
            .await
            .expect("connect");
        let ping = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n";
        let body: Vec<u8> = ping.iter().copied().cycle().take(size).collect();
        let head = format!("POST /ping HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n");
        c.write_all(head.as_bytes()).await.expect("send");
        let (mut rd, mut wr) = c.into_split();
        let send = tokio::spawn(async move {
            // The daemon may close before reading it all: not an error here.
            let _ = wr.write_all(&body).await;
            let _ = wr
                .write_all(b"GET /no-such-route HTTP/1.1\r\nHost: x\r\n\r\n")
                .await;
            wr
        });
        // Until the connection closes or the marker request's 404 is in.
        let mut all = Vec::new();
        let read = async {
            use tokio::io::AsyncReadExt;
            loop {
                let mut b = [0u8; 4096];
                match rd.read(&mut b).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => all.extend_from_slice(&b[..n]),
                }
                if statuses(&all).contains(&404) && all.ends_with(b"}") {
                    break;
                }
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("an answer within the wait");
        let _ = send.await;
        // The 405, then the marker's 404 or the connection closed.
        let got = statuses(&all);
        assert!(
            got == [405] || got == [405, 404],
            "{size}: body bytes taken for requests: {got:?}"
        );
    }
}
