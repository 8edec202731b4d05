//! Soak: thousands of mixed requests from concurrent clients (commands,
//! uploads, downloads, stdin, timeouts, and streams, downloads and uploads
//! abandoned halfway), every answer checked byte for byte. Then the end
//! state: execd's file descriptors are back to where they started, no
//! process of its is left (zombie or orphan), every spill and temporary
//! file is gone once the retention has passed, nothing is running or held in
//! memory by its own account, and its RSS is back near idle.
//!
//! `EXECD_SOAK_ROUNDS` (default 60) sets the rounds per client; the summary
//! line is printed with `--nocapture`.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: u64 = 16;
const WAIT: Duration = Duration::from_secs(60);
/// Records (and their spill files) are kept this long after a command ends:
/// long enough for a client of a loaded debug build to read them, short
/// enough to see them go.
const RETENTION: &str = "10s";
/// Size of the file every client downloads parts of.
const SHARED: usize = 4 << 20;

/// What the soak did, counted as it went.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    bytes: AtomicU64,
    abandoned: AtomicU64,
    commands: AtomicU64,
}

impl Tally {
    fn req(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }
    fn verified(&self, n: usize) {
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Deterministic bytes, different for every seed.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ seed.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `seq 1 n` output.
/// Where `got` first differs from `want` (the shorter length if one is a
/// prefix of the other), for failure messages.
fn first_difference(got: &[u8], want: &[u8]) -> usize {
    got.iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()))
}

fn seq(n: u64) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

fn meta(path: &str) -> Value {
    json!({"path": path, "mode": 644})
}

/// One client's view: the daemon, where its files go, and the tally.
struct Client {
    d: Arc<Daemon>,
    dir: String,
    tally: Arc<Tally>,
    shared: Arc<Vec<u8>>,
    id: u64,
}

impl Client {
    /// Runs a foreground command; returns its events.
    async fn run(&self, v: Value) -> Vec<Value> {
        self.tally.req(1);
        self.tally.commands.fetch_add(1, Ordering::Relaxed);
        self.d.run(v).await
    }

    /// Waits for a command to finish, counting the status polls.
    async fn wait_finished(&self, id: &str) -> Value {
        let end = Instant::now() + WAIT;
        loop {
            self.tally.req(1);
            let v = self.d.get(&format!("/command/status/{id}")).await.json();
            if v["running"] == false {
                return v;
            }
            assert!(Instant::now() < end, "command never finished: {v}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Checks the whole log of a command against `expect`.
    async fn check_logs(&self, id: &str, expect: &str) {
        self.tally.req(1);
        let logs = self.d.get(&format!("/command/{id}/logs")).await;
        if logs.body != expect.as_bytes() {
            let at = first_difference(&logs.body, expect.as_bytes());
            let st = self.d.get(&format!("/command/status/{id}")).await.text();
            panic!(
                "logs of {id} differ at byte {at}: {} bytes, {} expected; got {:?}, expected {:?}; status {st}",
                logs.body.len(),
                expect.len(),
                String::from_utf8_lossy(&logs.body[at.saturating_sub(20)..(at + 20).min(logs.body.len())]),
                &expect[at.saturating_sub(20)..(at + 20).min(expect.len())],
            );
        }
        self.tally.verified(expect.len());
    }

    /// A raw connection with `head` (and `body`) sent.
    async fn raw(&self, head: String, body: &[u8]) -> TcpStream {
        self.tally.req(1);
        let mut c = TcpStream::connect(self.d.addr).await.expect("connect");
        c.write_all(head.as_bytes()).await.expect("send head");
        c.write_all(body).await.expect("send body");
        c
    }

    async fn op(&self, n: u64) {
        match n % 13 {
            0 | 11 => self.command(n).await,
            1 | 12 => self.upload_download(n).await,
            2 => self.range(n).await,
            3 => self.abandoned_stream(n).await,
            4 => self.abandoned_download().await,
            5 => self.abandoned_upload(n).await,
            6 => self.background(n).await,
            7 => self.failing().await,
            8 => self.timeout().await,
            9 => self.stdin().await,
            _ if (n / 13).is_multiple_of(8) => self.over_cap().await,
            _ => self.look_around().await,
        }
    }

    /// A foreground command's stream carries its exact output.
    async fn command(&self, n: u64) {
        let k = 1 + n * 37 % 5_000;
        let evs = self.run(json!({"command": format!("seq 1 {k}")})).await;
        let out = text_of(&evs, "stdout");
        assert!(out == seq(k), "stdout of seq 1 {k}");
        assert_eq!(terminal(&evs)["exit_code"], 0);
        self.tally.verified(out.len());
    }

    /// An upload over the client's own file, read back whole.
    async fn upload_download(&self, n: u64) {
        let size = 1 + (n * 7919 % (256 * 1024)) as usize;
        let data = pattern(n, size);
        let path = format!("{}/c{}-{}.bin", self.dir, self.id, n % 3);
        self.tally.req(2);
        let r = self
            .d
            .upload(Form::new().meta(&meta(&path)).file(&data))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = self
            .d
            .get(&format!("/files/download?path={}", q(&path)))
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body == data, "download of {path}");
        self.tally.verified(2 * size);
    }

    /// A byte range of the shared file.
    async fn range(&self, n: u64) {
        let from = (n * 104_729 % SHARED as u64) as usize;
        let to = (from + (n * 31 % (256 * 1024)) as usize).min(SHARED - 1);
        self.tally.req(1);
        let path = format!(
            "/files/download?path={}",
            q(&format!("{}/shared.bin", self.dir))
        );
        let range = format!("bytes={from}-{to}");
        let r = self
            .d
            .request(Method::GET, &path, &[("range", &range)], Bytes::new())
            .await;
        assert_eq!(r.status, 206, "{range}");
        assert!(r.body[..] == self.shared[from..=to], "{range}");
        self.tally.verified(to - from + 1);
    }

    /// A stream read up to its first output, then dropped with unread events
    /// behind it; the command runs on, and its log is complete.
    async fn abandoned_stream(&self, n: u64) {
        let k = 5_000 + n % 5_000;
        let body = json!({"command": format!("seq 1 {k}")}).to_string();
        let head = format!(
            "POST /command HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut c = self.raw(head, body.as_bytes()).await;
        let mut got = Vec::new();
        while !got.windows(8).any(|w| w == b"\"stdout\"") {
            let mut b = [0u8; 4096];
            let n = c.read(&mut b).await.expect("read stream");
            assert!(n > 0, "stream ended early");
            got.extend_from_slice(&b[..n]);
        }
        drop(c);
        self.tally.abandoned.fetch_add(1, Ordering::Relaxed);
        self.tally.commands.fetch_add(1, Ordering::Relaxed);
        // The first event, on a line of its own inside the first chunk.
        let text = String::from_utf8_lossy(&got);
        let init: Value = text
            .lines()
            .find(|l| l.starts_with("{\"type\":\"init\""))
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| panic!("no init event in {text:?}"));
        let id = init["text"].as_str().unwrap().to_string();
        let st = self.wait_finished(&id).await;
        assert_eq!(st["exit_code"], 0, "{st}");
        self.check_logs(&id, &seq(k)).await;
    }

    /// A download read for 256 KiB, then dropped.
    async fn abandoned_download(&self) {
        let head = format!(
            "GET /files/download?path={} HTTP/1.1\r\nHost: x\r\n\r\n",
            q(&format!("{}/shared.bin", self.dir))
        );
        let mut c = self.raw(head, b"").await;
        let mut read = 0;
        let mut b = vec![0u8; 64 * 1024];
        while read < 256 * 1024 {
            let n = c.read(&mut b).await.expect("read download");
            assert!(n > 0, "download ended early");
            read += n;
        }
        drop(c);
        self.tally.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// An upload over the client's `keep` file that stops halfway: the file
    /// keeps its content (checked at the end) and no temporary is left.
    async fn abandoned_upload(&self, n: u64) {
        let path = format!("{}/c{}-keep.bin", self.dir, self.id);
        let form = Form::new();
        let mut body = Form::new().meta(&meta(&path)).open_file();
        body.extend_from_slice(&pattern(n, 128 * 1024));
        let head = format!(
            "POST /files/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
            form.content_type(),
            body.len() + (1 << 20)
        );
        let c = self.raw(head, &body).await;
        drop(c);
        self.tally.abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// A background command, followed through status and logs.
    async fn background(&self, n: u64) {
        let k = 1 + n * 53 % 10_000;
        let evs = self
            .run(json!({"command": format!("seq 1 {k}"), "background": true}))
            .await;
        let id = evs[0]["text"].as_str().unwrap().to_string();
        let st = self.wait_finished(&id).await;
        assert_eq!(st["exit_code"], 0, "{st}");
        self.check_logs(&id, &seq(k)).await;
    }

    /// A failing command: both streams and the exit code.
    async fn failing(&self) {
        let evs = self
            .run(json!({"command": "echo out; echo err >&2; exit 3"}))
            .await;
        assert_eq!(text_of(&evs, "stdout"), "out\n");
        assert_eq!(text_of(&evs, "stderr"), "err\n");
        assert_eq!(terminal(&evs)["exit_code"], 3);
        self.tally.verified(8);
    }

    /// A command killed by its timeout, with a child of its own.
    async fn timeout(&self) {
        let evs = self
            .run(json!({"command": "sleep 30 & sleep 30; wait", "timeout": 20}))
            .await;
        assert_eq!(terminal(&evs)["timed_out"], true);
    }

    /// stdin written to a background command, then closed.
    async fn stdin(&self) {
        let evs = self
            .run(json!({"command": "cat", "stdin": true, "background": true}))
            .await;
        let id = evs[0]["text"].as_str().unwrap().to_string();
        self.tally.req(1);
        let r = self
            .d
            .request(
                Method::POST,
                &format!("/command/{id}/stdin?eof=true"),
                &[],
                "through stdin\n",
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let st = self.wait_finished(&id).await;
        assert_eq!(st["exit_code"], 0, "{st}");
        self.check_logs(&id, "through stdin\n").await;
    }

    /// More output than the spill cap keeps: the newest part is intact.
    async fn over_cap(&self) {
        let k = 100_000;
        let evs = self
            .run(json!({"command": format!("seq 1 {k}"), "background": true}))
            .await;
        let id = evs[0]["text"].as_str().unwrap().to_string();
        let st = self.wait_finished(&id).await;
        let all = seq(k);
        assert_eq!(st["output_bytes"], all.len(), "{st}");
        let tail = &all[all.len() - 50_000..];
        self.tally.req(1);
        let r = self
            .d
            .get(&format!(
                "/command/{id}/logs?cursor={}",
                all.len() - tail.len()
            ))
            .await;
        if r.body != tail.as_bytes() {
            let at = first_difference(&r.body, tail.as_bytes());
            panic!(
                "the newest output of {id} differs at byte {at}: {} bytes, {} expected, headers {:?}, status {st}",
                r.body.len(),
                tail.len(),
                r.headers
            );
        }
        self.tally.verified(tail.len());
    }

    /// Cheap requests: ping, file info, a listing, an unknown command.
    async fn look_around(&self) {
        self.tally.req(4);
        assert_eq!(self.d.get("/ping").await.status, 200);
        let r = self
            .d
            .get(&format!(
                "/files/info?path={}",
                q(&format!("{}/shared.bin", self.dir))
            ))
            .await;
        assert_eq!(r.status, 200);
        let r = self
            .d
            .get(&format!("/directories/list?path={}", q(&self.dir)))
            .await;
        assert_eq!(r.status, 200);
        self.d
            .get("/command/status/0123456789abcdef0123456789abcdef")
            .await
            .assert_error(404, "COMMAND_NOT_FOUND");
    }
}

/// The daemon under soak and what its end state is compared with.
struct Soak {
    d: Arc<Daemon>,
    data: std::path::PathBuf,
    dir: String,
    shared: Arc<Vec<u8>>,
    tally: Arc<Tally>,
    /// File descriptors and anonymous RSS (KiB) before any request.
    base: Vec<String>,
    idle: u64,
}

/// Figures of one phase of load.
struct Phase {
    took: Duration,
    busy_fds: usize,
    /// File descriptors once settled.
    end_fds: usize,
    busy_anon: u64,
    /// Anonymous RSS once settled.
    anon: u64,
}

impl Soak {
    fn keep(&self, c: u64) -> String {
        format!("{}/c{c}-keep.bin", self.dir)
    }

    /// Rounds `rounds` of every client, all clients at once, then the end
    /// state, with anonymous RSS back within `rss_limit` KiB.
    async fn phase(&self, rounds: std::ops::Range<u64>, rss_limit: u64) -> Phase {
        let began = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for id in 0..CLIENTS {
            let client = Client {
                d: self.d.clone(),
                dir: self.dir.clone(),
                tally: self.tally.clone(),
                shared: self.shared.clone(),
                id,
            };
            let rounds = rounds.clone();
            set.spawn(async move {
                for r in rounds {
                    client.op(id * 1_000_003 + r * CLIENTS + id).await;
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.expect("a client failed");
        }
        let took = began.elapsed();
        let busy_fds = self.d.fds().len();
        let busy_anon = self.d.proc_kib("RssAnon");

        // Finished commands expire after the retention period, and their
        // spill files with them.
        eventually(WAIT, "every spill file deleted", || {
            // (`envs`, the default env file, stays.)
            std::fs::read_dir(&self.data).map_or(true, |mut r| {
                r.all(|e| e.is_ok_and(|e| e.file_name() == "envs"))
            })
        })
        .await;
        self.d.fds_back_to(&self.base, WAIT).await;
        let end_fds = self.d.fds().len();
        // By its own account, nothing is running, streaming or held in memory.
        let end = Instant::now() + WAIT;
        loop {
            let m = self.d.get("/metrics").await.json();
            if m["running_commands"] == 0 && m["open_streams"] == 0 && m["output_memory_bytes"] == 0
            {
                break;
            }
            assert!(Instant::now() < end, "still busy: {m}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let left = descendants(self.d.pid());
        assert!(left.is_empty(), "processes left: {left:?}");
        let temps: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(temps.is_empty(), "temporary files left: {temps:?}");
        for c in 0..CLIENTS {
            assert_eq!(
                std::fs::read_to_string(self.keep(c)).unwrap(),
                format!("client {c} keeps this")
            );
        }
        // Freed memory goes back to the system within seconds.
        let end = Instant::now() + WAIT;
        let mut anon = self.d.proc_kib("RssAnon");
        while anon > rss_limit {
            assert!(
                Instant::now() < end,
                "anonymous RSS {anon} KiB, limit {rss_limit} KiB ({} KiB idle, {busy_anon} KiB under load)",
                self.idle
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            anon = self.d.proc_kib("RssAnon");
        }
        assert_eq!(self.d.get("/ping").await.status, 200);
        Phase {
            took,
            busy_fds,
            end_fds,
            busy_anon,
            anon,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_mixed_requests_leave_nothing_behind() {
    let rounds: u64 = std::env::var("EXECD_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let t = TempDir::new("soak");
    let data = t.0.join("data");
    let dir = t.join("files");
    std::fs::create_dir(&dir).unwrap();
    let d = Arc::new(Daemon::start_with(
        &[
            "--retention",
            RETENTION,
            "--output-window",
            "16KiB",
            "--output-memory",
            "256KiB",
            "--spill-cap",
            "1MiB",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    ));
    let shared = Arc::new(pattern(u64::MAX, SHARED));
    std::fs::write(format!("{dir}/shared.bin"), &*shared).unwrap();
    let soak = Soak {
        base: d.fds(),
        // Anonymous memory: what execd allocated, without the pages of its
        // own code it has read in from the binary.
        idle: d.proc_kib("RssAnon"),
        d,
        data,
        dir,
        shared,
        tally: Arc::new(Tally::default()),
    };
    let idle_rss = soak.d.proc_kib("VmRSS");
    for c in 0..CLIENTS {
        std::fs::write(soak.keep(c), format!("client {c} keeps this")).unwrap();
    }

    // A first third brings execd to its working size (code paths taken,
    // pools and tables grown); its RSS must come back near idle. The rest
    // must leave it where the first third did: anything that grows with the
    // number of requests is a leak.
    let first = soak.phase(0..rounds / 3, soak.idle + 8 * 1024).await;
    let second = soak.phase(rounds / 3..rounds, first.anon + 1024).await;
    let peak = soak.d.proc_kib("VmHWM");
    let rss = soak.d.proc_kib("VmRSS");

    let tally = &soak.tally;
    println!(
        "soak: {} requests ({} commands) from {CLIENTS} clients in {:.1} s, {} abandoned halfway, \
         {} bytes verified, fds {} -> {} -> {}, rss {idle_rss} -> {peak} (peak) -> {rss} KiB, \
         anonymous rss {} -> {} (first third) -> {} -> {} KiB, processes left 0, \
         spill and temporary files left 0",
        tally.requests.load(Ordering::Relaxed),
        tally.commands.load(Ordering::Relaxed),
        (first.took + second.took).as_secs_f64(),
        tally.abandoned.load(Ordering::Relaxed),
        tally.bytes.load(Ordering::Relaxed),
        soak.base.len(),
        first.busy_fds.max(second.busy_fds),
        second.end_fds,
        soak.idle,
        first.anon,
        second.busy_anon,
        second.anon,
    );
}
