//! Black-box test harness: starts the real `execd` binary on an ephemeral
//! port and talks HTTP/1.1 to it with a hyper client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::net::TcpStream;

/// A running daemon, killed when dropped.
pub struct Daemon {
    child: Child,
    pub addr: SocketAddr,
    pub token: Option<String>,
    /// A data directory chosen for the daemon, removed when dropped: a
    /// killed daemon cannot remove its own.
    data_dir: Option<std::path::PathBuf>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_with(&[], &[])
    }

    /// Starts with extra flags and environment variables.
    /// A daemon with E2B envd's port on as well (`--e2b-port`, a free one),
    /// and that port's address.
    pub fn start_with_e2b(args: &[&str]) -> (Daemon, SocketAddr) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = port.to_string();
        let mut all = vec!["--e2b-port", &p];
        all.extend_from_slice(args);
        let d = Daemon::start_with(&all, &[]);
        (d, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    pub fn start_with(args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_execd"));
        cmd.args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"])
            .args(args);
        let data_dir = (!args.contains(&"--data-dir")).then(|| {
            std::env::temp_dir().join(format!(
                "execd-test-data-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ))
        });
        if let Some(dir) = &data_dir {
            cmd.arg("--data-dir").arg(dir);
        }
        let mut d = Self::launch(cmd, args, envs);
        d.data_dir = data_dir;
        d
    }

    /// Starts with its data directory at `data` (made 0700 if missing) and
    /// `args`.
    pub fn start_with_data(data: &std::path::Path, args: &[&str]) -> Daemon {
        let dir = data.to_str().expect("a UTF-8 data directory");
        let mut all = vec!["--data-dir", dir];
        all.extend_from_slice(args);
        Daemon::start_with(&all, &[])
    }

    /// Starts `cmd`, which must run execd (possibly through a wrapper such as
    /// `unshare`), and reads its listen line.
    pub fn launch(mut cmd: Command, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        cmd.env_remove("EXECD_ACCESS_TOKEN")
            .env_remove("EXECD_ENVS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn execd");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from execd: {line:?}"));
        let token = args
            .iter()
            .position(|a| *a == "--access-token")
            .map(|i| args[i + 1].to_string())
            .or_else(|| {
                envs.iter()
                    .find(|(k, _)| *k == "EXECD_ACCESS_TOKEN")
                    .map(|(_, v)| v.to_string())
            });
        Daemon {
            child,
            addr,
            token,
            data_dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal to the daemon.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the daemon to exit, at most `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A `/proc/PID/status` field in KiB (VmRSS, VmHWM).
    pub fn proc_kib(&self, field: &str) -> u64 {
        proc_status_kib(self.child.id(), field)
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        self.request_as(self.token.as_deref(), method, path, headers, body)
            .await
    }

    /// `request` with exactly the given token (or none).
    pub async fn request_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Resp {
        let r = self.send_as(token, method, path, headers, body).await;
        let status = r.status().as_u16();
        let hdrs = r.headers().clone();
        let body = r.into_body().collect().await.expect("read body").to_bytes();
        Resp {
            status,
            headers: hdrs,
            body,
        }
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        self.send_as(self.token.as_deref(), method, path, headers, body)
            .await
    }

    /// A bodiless request with exactly the given token (or none): status and body.
    pub async fn send_raw(&self, method: Method, path: &str, token: Option<&str>) -> (u16, Bytes) {
        let r = self.send_as(token, method, path, &[], Bytes::new()).await;
        let status = r.status().as_u16();
        (
            status,
            r.into_body().collect().await.expect("body").to_bytes(),
        )
    }

    /// A new HTTP/1.1 connection to the daemon, driven in the background.
    async fn connect<B>(&self) -> hyper::client::conn::http1::SendRequest<B>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.set_nodelay(true).ok();
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender
    }

    /// A request head with the token (if any) and the given headers.
    fn builder(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> http::request::Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string());
        if let Some(t) = token {
            req = req.header("x-execd-access-token", t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req
    }

    async fn send_as(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> http::Response<Incoming> {
        let mut sender = self.connect().await;
        let req = self
            .builder(token, method, path, headers)
            .body(Full::new(body.into()))
            .expect("request");
        sender.send_request(req).await.expect("send request")
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.request(Method::DELETE, path, &[], Bytes::new()).await
    }

    pub async fn post_json(&self, path: &str, v: &Value) -> Resp {
        self.request(
            Method::POST,
            path,
            &[("content-type", "application/json")],
            v.to_string(),
        )
        .await
    }

    /// Starts an event stream (e.g. `POST /command`).
    pub async fn stream(&self, path: &str, v: &Value) -> EventStream {
        let r = self
            .send(
                Method::POST,
                path,
                &[("content-type", "application/json")],
                v.to_string(),
            )
            .await;
        EventStream::new(r)
    }

    /// Runs a foreground command and collects every event.
    pub async fn run(&self, v: Value) -> Vec<Value> {
        let mut s = self.stream("/command", &v).await;
        assert_eq!(s.status, 200, "POST /command {v}");
        s.collect().await
    }

    /// Starts a background command (`POST /command`, `background` set); its id.
    pub async fn start_background(&self, mut v: Value) -> String {
        v["background"] = true.into();
        let evs = self.run(v).await;
        evs[0]["text"].as_str().expect("id").to_string()
    }

    /// Polls `/command/{id}/logs` until `ready` accepts the output; returns it.
    /// For commands that announce something (a pid, "ready") and then wait.
    pub async fn wait_logs(
        &self,
        id: &str,
        limit: Duration,
        ready: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + limit;
        loop {
            let text = self.get(&format!("/command/{id}/logs")).await.text();
            if ready(&text) {
                return text;
            }
            assert!(
                Instant::now() < end,
                "command {id} output never became ready: {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `sleep 300` in the background under a shell that prints its pid; returns the pid.
    pub async fn start_sleeper(&self) -> u32 {
        let evs = self
            .run(serde_json::json!({"command": "sleep 300 & echo $!; wait", "background": true}))
            .await;
        let id = evs[0]["text"].as_str().expect("id").to_string();
        let out = self
            .wait_logs(&id, Duration::from_secs(5), |t| {
                t.trim().parse::<u32>().is_ok()
            })
            .await;
        out.trim().parse().expect("pid")
    }

    /// Polls `/command/status/{id}` until it is no longer running.
    pub async fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        let end = Instant::now() + limit;
        loop {
            let r = self.get(&format!("/command/status/{id}")).await;
            assert_eq!(r.status, 200, "status {id}: {}", r.text());
            let v = r.json();
            if v["running"] == false {
                return v;
            }
            assert!(
                Instant::now() < end,
                "command {id} still running after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A buffered response.
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error envelope with this status and code.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        let v = self.json();
        assert_eq!(v["code"], code, "body: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "message missing: {v}"
        );
    }
}

/// An event stream read incrementally: bare JSON objects separated by blank lines.
pub struct EventStream {
    pub status: u16,
    pub headers: HeaderMap,
    body: Incoming,
    buf: BytesMut,
    done: bool,
    /// Every raw event line received, for checks on the encoding itself.
    pub raw: Vec<String>,
}

impl EventStream {
    pub fn new(r: http::Response<Incoming>) -> Self {
        EventStream {
            status: r.status().as_u16(),
            headers: r.headers().clone(),
            body: r.into_body(),
            buf: BytesMut::new(),
            done: false,
            raw: Vec::new(),
        }
    }

    /// The next event, or None at the end of the stream.
    pub async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let chunk = self.buf.split_to(i + 2);
                let line = std::str::from_utf8(&chunk[..i])
                    .expect("event is UTF-8")
                    .to_string();
                if line.trim().is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("bad event {line:?}: {e}"));
                self.raw.push(line);
                return Some(v);
            }
            if self.done {
                assert!(
                    self.buf.iter().all(u8::is_ascii_whitespace),
                    "trailing bytes: {:?}",
                    self.buf
                );
                return None;
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
                Some(Err(e)) => panic!("stream error: {e}"),
                None => self.done = true,
            }
        }
    }

    /// Reads to the end of the stream.
    pub async fn collect(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some(v) = self.next().await {
            out.push(v);
        }
        out
    }
}

/// Concatenated text of the events of one type.
pub fn text_of(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["text"].as_str().unwrap_or(""))
        .collect()
}

/// The texts of the events of one type, in order.
pub fn texts(events: &[Value], kind: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["text"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The terminal event (last one), checked to be terminal.
pub fn terminal(events: &[Value]) -> &Value {
    let last = events.last().expect("no events");
    assert!(
        last["type"] == "execution_complete" || last["type"] == "error",
        "last event is not terminal: {last}"
    );
    last
}

/// Polls `cond` until true, at most `limit`. For conditions with no event to wait on
/// (a process disappearing from /proc).
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Whether a pid is alive (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

/// Zombie children of `parent`.
pub fn zombies_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let rest: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            if rest.first() == Some(&"Z")
                && rest.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent)
            {
                out.push(pid);
            }
        }
    }
    out
}

/// State and parent of `pid` from `/proc/PID/stat` (the fields after the name).
fn stat_of(pid: u32) -> Option<(String, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.rsplit(')').next()?.split_whitespace();
    let state = rest.next()?.to_string();
    let ppid = rest.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Parent pid of `pid`, while it exists.
pub fn ppid(pid: u32) -> Option<u32> {
    stat_of(pid).map(|(_, p)| p)
}

/// Every process in /proc.
fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every descendant of `pid` (children, their children...), zombies included.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = all_pids()
        .into_iter()
        .filter_map(|p| ppid(p).map(|pp| (p, pp)))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == parent && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

/// Processes whose real uid is `uid`.
pub fn procs_of_uid(uid: u32) -> Vec<u32> {
    all_pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|u| u.parse::<u32>().ok())
                })
                == Some(uid)
        })
        .collect()
}

/// Number of open file descriptors of `pid`.
pub fn fd_count(pid: u32) -> usize {
    fd_targets(pid).len()
}

/// Whether `target` is a control file of one of execd's command cgroups
/// (`.../execd-<pid>/cmd-<n>/...`): the pooled cgroups keep theirs open, a
/// bounded set that is no leak.
fn pooled_cgroup_file(target: &std::path::Path) -> bool {
    let t = target.to_string_lossy();
    t.contains("/execd-") && t.contains("/cmd-")
}

/// What each open file descriptor of `pid` refers to, for failure messages
/// (the pooled cgroups' control files aside).
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let t = std::fs::read_link(e.path()).unwrap_or_default();
                    (!pooled_cgroup_file(&t))
                        .then(|| format!("{} -> {}", e.file_name().to_string_lossy(), t.display()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Daemon {
    /// The daemon's open file descriptors, as `fd -> target` lines.
    pub fn fds(&self) -> Vec<String> {
        fd_targets(self.pid())
    }

    /// Waits until the daemon holds as many file descriptors as in `base`
    /// (clients' sockets are closed by the daemon when it notices, not at once).
    pub async fn fds_back_to(&self, base: &[String], limit: Duration) {
        let end = Instant::now() + limit;
        while fd_count(self.pid()) != base.len() {
            assert!(
                Instant::now() < end,
                "execd holds {} file descriptors, {} before.\nbefore: {base:#?}\nnow: {:#?}",
                fd_count(self.pid()),
                base.len(),
                self.fds()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A `multipart/form-data` body built part by part.
pub struct Form {
    pub boundary: String,
    body: BytesMut,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    pub fn new() -> Form {
        Form {
            boundary: "test_boundary_7d1f0c".to_string(),
            body: BytesMut::new(),
        }
    }

    /// The head of a part (everything before its content).
    pub fn part_head(&self, name: &str, filename: &str, ctype: &str) -> String {
        format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {ctype}\r\n\r\n",
            self.boundary
        )
    }

    pub fn part(mut self, name: &str, filename: &str, ctype: &str, data: &[u8]) -> Form {
        let head = self.part_head(name, filename, ctype);
        self.body.extend_from_slice(head.as_bytes());
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// A `metadata` part as the SDK sends it.
    pub fn meta(self, v: &Value) -> Form {
        self.part(
            "metadata",
            "metadata",
            "application/json",
            v.to_string().as_bytes(),
        )
    }

    /// A `file` part as the SDK sends it.
    pub fn file(self, data: &[u8]) -> Form {
        self.part("file", "file", "application/octet-stream", data)
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }

    /// The closing delimiter.
    pub fn tail(&self) -> String {
        format!("--{}--\r\n", self.boundary)
    }

    /// This form followed by the head of a `file` part: what a client has
    /// sent when the file's content is about to start.
    pub fn open_file(mut self) -> Vec<u8> {
        let head = self.part_head("file", "file", "application/octet-stream");
        self.body.extend_from_slice(head.as_bytes());
        self.body.to_vec()
    }

    /// The complete body.
    pub fn finish(mut self) -> Bytes {
        let tail = self.tail();
        self.body.extend_from_slice(tail.as_bytes());
        self.body.freeze()
    }
}

/// A request body fed chunk by chunk from a channel (sent chunked).
pub struct ChanBody(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(http_body::Frame::data(b))))
    }
}

impl Daemon {
    /// Uploads a complete form in one request.
    pub async fn upload(&self, form: Form) -> Resp {
        self.upload_to("/files/upload", form).await
    }

    pub async fn upload_to(&self, path: &str, form: Form) -> Resp {
        let ct = form.content_type();
        self.request(Method::POST, path, &[("content-type", &ct)], form.finish())
            .await
    }

    /// Starts a streamed `POST /files/upload` of `form`'s boundary; the
    /// caller sends the body.
    pub async fn stream_upload(
        &self,
        form: &Form,
    ) -> (
        tokio::sync::mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<Resp>,
    ) {
        let ct = form.content_type();
        self.stream_request(Method::POST, "/files/upload", &[("content-type", &ct)])
            .await
    }

    /// Starts a request whose body is streamed (chunked) from the returned
    /// sender; the task yields the buffered response once the body ends.
    pub async fn stream_request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (
        tokio::sync::mpsc::Sender<Bytes>,
        tokio::task::JoinHandle<Resp>,
    ) {
        let mut sender = self.connect().await;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let req = self
            .builder(self.token.as_deref(), method, path, headers)
            .body(ChanBody(rx))
            .expect("request");
        let task = tokio::spawn(async move {
            let r = sender.send_request(req).await.expect("send request");
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.into_body().collect().await.expect("body").to_bytes();
            Resp {
                status,
                headers,
                body,
            }
        });
        (tx, task)
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "execd-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    /// A path inside, as a string.
    pub fn join(&self, rel: &str) -> String {
        self.0.join(rel).to_string_lossy().into_owned()
    }

    /// Names in the directory, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.0)
            .expect("read temp dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Percent-encodes a query value.
pub fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
