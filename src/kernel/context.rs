//! One code context: a Jupyter kernel process and the task that drives it.
//!
//! The driver owns the kernel's sockets. A reader task per socket turns the
//! byte stream into messages (reads are not cancel-safe, so they are not
//! raced in `select!` themselves); the driver selects over those, requests
//! from the API, the kernel's exit, the heartbeat and the run's timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::msg::{Msg, Signer};
use super::run::{CodeRun, Event, Outcome};
use super::spec::{InterruptMode, KernelSpec};
use super::zmtp::{self, Kind};
use super::KernelError;
use crate::process::reaper::ExitStatus;
use crate::process::spawn::{signal_group, Spawned};

/// How long a kernel may take from spawn to answering on every channel.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Heartbeat period; a kernel silent for [`HB_MISSES`] periods is dead.
const HB_EVERY: Duration = Duration::from_secs(5);
const HB_MISSES: u32 = 4;
/// After a timeout's interrupt, how long the kernel has to wind the run
/// down before it is killed.
const INTERRUPT_GRACE: Duration = Duration::from_secs(5);
/// How long after the request's `status: idle` its `execute_reply` may
/// still come (they travel on different sockets) before the run ends
/// without it.
const IDLE_WITHOUT_REPLY: Duration = Duration::from_secs(2);
/// How often, from this long after an interrupt on, a run that is still
/// busy has the foreground jobs of the terminals in its kernel's tree
/// checked for a lost ^C (see [`crate::process::foreground`]), until it
/// ends. A check reads `/proc` for the tree's processes only.
const REDELIVER_EVERY: Duration = Duration::from_millis(500);
/// The reply status of a run that got none.
const NO_REPLY: &str = "(none)";
/// Messages buffered per socket between its reader task and the driver.
const SOCKET_DEPTH: usize = 64;
/// Bytes of IOPub messages a context holds between its socket and the
/// run's log (a message over it counts as this much): the reader takes all
/// of it before reading a message and keeps the message's share until the
/// driver has recorded it.
const OUTPUT_BUDGET: usize = 8 << 20;

/// `stream` messages whose content is bigger than this are not read whole
/// but streamed (see [`stream_message`]).
const STREAM_OVER: u64 = 1 << 20;
/// Text of a streamed message is passed on in pieces of about this size.
const STREAM_PIECE: usize = 256 * 1024;

/// What a socket's reader task passes on.
enum FromKernel {
    Message(Vec<Vec<u8>>, Option<OwnedSemaphorePermit>),
    /// A piece of the text of a big `stream` message, passed on before the
    /// message has been read to its end (so before its signature is checked).
    Text {
        parent_id: String,
        stderr: bool,
        text: String,
        _held: OwnedSemaphorePermit,
    },
    /// The end of a streamed message: whether its signature (and content)
    /// checked out, and how many bytes of text it had.
    TextEnd {
        parent_id: String,
        ok: Result<(), String>,
        bytes: u64,
    },
    /// A message over the size limit, read and dropped.
    Dropped(u64),
    /// The connection failed; nothing more comes.
    Failed(String),
}

enum Request {
    Execute {
        code: String,
        run: Arc<CodeRun>,
        timeout: Option<Duration>,
    },
    Interrupt,
}

/// A live (or dead) code context.
pub struct Context {
    pub id: String,
    pub language: String,
    pub kernel_name: String,
    pub cwd: Option<PathBuf>,
    pub created: SystemTime,
    /// The kernel's pid, which is also its process group.
    pub pid: i32,
    /// The kernel and everything it started (bash_kernel's shell runs in a
    /// session of its own): killed as one.
    pub tree: Arc<crate::process::tree::Tree>,
    interrupt_mode: InterruptMode,
    busy: AtomicBool,
    /// When the last run ended (or the context was created).
    last_used: Mutex<Instant>,
    dead: Mutex<Option<String>>,
    tx: mpsc::Sender<Request>,
    /// Cancelled to stop the kernel.
    kill: CancellationToken,
    /// Cancelled once the driver has ended: the kernel is reaped and its
    /// connection file removed.
    ended: CancellationToken,
}

/// The state a context reports.
pub enum State {
    Idle,
    Busy,
    Dead(String),
}

impl Context {
    pub fn state(&self) -> State {
        if let Some(why) = self.dead.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            return State::Dead(why);
        }
        if self.busy.load(Ordering::Acquire) {
            State::Busy
        } else {
            State::Idle
        }
    }

    /// How long the context has been idle; `None` while a run is going.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.busy.load(Ordering::Acquire) {
            return None;
        }
        Some(
            self.last_used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }

    fn touch(&self) {
        *self.last_used.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    pub fn is_dead(&self) -> bool {
        matches!(self.state(), State::Dead(_))
    }

    /// Claims the context for a run: one at a time, decided synchronously,
    /// so a second run on a busy context fails before any event.
    pub fn claim(&self) -> Result<(), KernelError> {
        if let State::Dead(why) = self.state() {
            return Err(KernelError::Dead(self.id.clone(), why));
        }
        if self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(KernelError::Busy(self.id.clone()));
        }
        Ok(())
    }

    /// Hands a claimed run to the driver. If the kernel is gone, the run is
    /// finished with the reason and the claim released.
    pub fn submit(
        &self,
        code: String,
        run: Arc<CodeRun>,
        timeout: Option<Duration>,
    ) -> Result<(), KernelError> {
        let req = Request::Execute {
            code,
            run: run.clone(),
            timeout,
        };
        if self.tx.try_send(req).is_err() {
            let why = self
                .dead
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "the kernel is shutting down".into());
            run.finish(
                Duration::ZERO,
                Outcome::Failed {
                    ename: "KernelDied".into(),
                    evalue: why.clone(),
                    timed_out: false,
                },
            );
            self.busy.store(false, Ordering::Release);
            return Err(KernelError::Dead(self.id.clone(), why));
        }
        Ok(())
    }

    /// Interrupts the running code as the kernelspec asks: SIGINT to the
    /// kernel's process group, or an `interrupt_request` on control.
    pub fn interrupt(&self) -> Result<(), KernelError> {
        if let State::Dead(why) = self.state() {
            return Err(KernelError::Dead(self.id.clone(), why));
        }
        if self.interrupt_mode == InterruptMode::Signal {
            signal_group(self.pid, libc::SIGINT);
        }
        // The driver sends the message (control channel, in `Message`
        // mode) and watches for a ^C that went astray.
        let _ = self.tx.try_send(Request::Interrupt);
        Ok(())
    }

    /// Kills the kernel (and everything it started) and waits until it is
    /// reaped and its connection file is gone.
    pub async fn shutdown(&self) {
        self.kill.cancel();
        self.ended.cancelled().await;
    }
}

/// How execd and a kernel talk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Unix sockets in execd's private directory (ZeroMQ `ipc`): no other
    /// local user can connect to them, or bind them first.
    Ipc,
    /// Loopback TCP ports: any local process can connect to them. Only for
    /// a kernel that cannot do `ipc` (see `Kernels::create`).
    Tcp,
}

/// What launching needs from the caller.
#[derive(Clone)]
pub struct Launch {
    pub id: String,
    pub language: String,
    pub spec: KernelSpec,
    pub cwd: Option<PathBuf>,
    pub env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    /// The private directory connection files are written to.
    pub dir: PathBuf,
    /// Cancelled at daemon shutdown.
    pub shutdown: CancellationToken,
    pub transport: Transport,
}

/// A connection file, and the kernel's Unix sockets if any, removed when
/// dropped (a kernel that is killed leaves its sockets behind).
struct ConnFile(PathBuf, Vec<PathBuf>);

impl Drop for ConnFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        for p in &self.1 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Longest path a Unix socket address holds (`sun_path`, less its NUL).
const SUN_PATH_MAX: usize = 107;

/// The kernel's five endpoints (shell, iopub, stdin, control, hb) and the
/// connection file's transport fields. `ipc`: ZeroMQ binds
/// `<ip>-<port>`, so the ports are just 1 to 5 and `ip` a path prefix in the
/// private directory. `None` when `ipc` paths would be too long for a Unix
/// socket address.
fn endpoints(
    transport: Transport,
    dir: &std::path::Path,
    id: &str,
) -> std::io::Result<Option<([zmtp::Endpoint; 5], Value)>> {
    match transport {
        Transport::Ipc => {
            let prefix = dir.join(format!("k-{id}"));
            let ip = prefix.to_string_lossy().into_owned();
            if ip.len() + 2 > SUN_PATH_MAX || ip.contains('\0') {
                return Ok(None);
            }
            let ends = [1, 2, 3, 4, 5].map(|p| zmtp::Endpoint::Ipc(format!("{ip}-{p}").into()));
            let fields = json!({
                "shell_port": 1, "iopub_port": 2, "stdin_port": 3, "control_port": 4,
                "hb_port": 5, "ip": ip, "transport": "ipc",
            });
            Ok(Some((ends, fields)))
        }
        Transport::Tcp => {
            let ports = free_ports()?;
            let ends =
                ports.map(|p| zmtp::Endpoint::Tcp(SocketAddr::from((Ipv4Addr::LOCALHOST, p))));
            let fields = json!({
                "shell_port": ports[0], "iopub_port": ports[1], "stdin_port": ports[2],
                "control_port": ports[3], "hb_port": ports[4], "ip": "127.0.0.1",
                "transport": "tcp",
            });
            Ok(Some((ends, fields)))
        }
    }
}

/// Aborts the task when dropped, so reader tasks never outlive their driver.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Five free loopback ports for the kernel to bind. (Picking them and the
/// kernel binding them is racy by nature, as in every Jupyter client; a
/// port taken meanwhile makes the kernel fail to start, and the create fails.)
fn free_ports() -> std::io::Result<[u16; 5]> {
    let mut held = Vec::with_capacity(5);
    let mut ports = [0u16; 5];
    for p in &mut ports {
        let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        *p = l.local_addr()?.port();
        held.push(l);
    }
    Ok(ports)
}

fn write_conn_file(dir: &std::path::Path, id: &str, content: &Value) -> std::io::Result<ConnFile> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    // The files hold the kernels' keys: the directory must be execd's own
    // real directory that no one else may enter, even if someone made it
    // first, in a data directory that no one else may write to.
    checked_dir(dir, 0o077)?;
    if let Some(parent) = dir.parent() {
        checked_dir(parent, 0o022)?;
    }
    let path = dir.join(format!("kernel-{id}.json"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&path)?;
    let file = ConnFile(path, Vec::new());
    f.write_all(content.to_string().as_bytes())?;
    Ok(file)
}

/// Checks that `dir` is a directory (not a symlink) owned by execd's user
/// (or root), with none of the `forbidden` mode bits.
fn checked_dir(dir: &std::path::Path, forbidden: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(dir)?;
    let me = nix::unistd::geteuid().as_raw();
    if !m.file_type().is_dir() || (m.uid() != me && m.uid() != 0) || m.mode() & forbidden != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a private directory of uid {me} (a real directory, mode without {forbidden:03o})",
                dir.display()
            ),
        ));
    }
    Ok(())
}

/// A connection key: 32 bytes from the kernel's random source, as hex. No
/// fallback: without randomness there is no key and no kernel.
fn random_key() -> std::io::Result<String> {
    let mut b = [0u8; 32];
    crate::process::sys::getrandom(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The last bytes a kernel wrote to stdout/stderr, for error messages.
#[derive(Default)]
struct Tail(Mutex<Vec<u8>>);

const TAIL: usize = 2048;

impl Tail {
    fn push(&self, b: &[u8]) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.extend_from_slice(b);
        if t.len() > TAIL {
            let cut = t.len() - TAIL;
            t.drain(..cut);
        }
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&t).trim().to_string()
    }
}

/// Reads a kernel's stdout or stderr to the end, keeping only the tail.
fn drain(fd: std::os::fd::OwnedFd, tail: Arc<Tail>) -> Option<Owned> {
    use tokio::io::AsyncReadExt;
    let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok()?;
    Some(Owned(tokio::spawn(async move {
        let mut buf = vec![0u8; 8192];
        while let Ok(n) = rx.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.push(&buf[..n]);
        }
    })))
}

/// A socket's reader task and the channel it feeds. With a `budget`, each
/// message takes its share of it before it is passed on.
fn reader(
    mut r: zmtp::Reader,
    budget: Option<Arc<Semaphore>>,
) -> (mpsc::Receiver<FromKernel>, Owned) {
    let (tx, rx) = mpsc::channel(SOCKET_DEPTH);
    let task = tokio::spawn(async move {
        loop {
            // With a budget, the whole of it before reading: a message is
            // read only once every earlier one has been dealt with, so at
            // most one big message is held at a time.
            let mut all = match &budget {
                Some(b) => match b.clone().acquire_many_owned(OUTPUT_BUDGET as u32).await {
                    Ok(p) => Some(p),
                    Err(_) => return,
                },
                None => None,
            };
            let item = match r.recv().await {
                Ok(zmtp::Incoming::Message(m)) => {
                    let n: usize = m.iter().map(Vec::len).sum();
                    let held = all
                        .as_mut()
                        .and_then(|a| a.split(n.clamp(1, OUTPUT_BUDGET)));
                    FromKernel::Message(m, held)
                }
                Ok(zmtp::Incoming::Dropped { bytes }) => FromKernel::Dropped(bytes),
                Err(e) => {
                    let _ = tx.send(FromKernel::Failed(e.to_string())).await;
                    return;
                }
            };
            if tx.send(item).await.is_err() {
                return;
            }
        }
    });
    (rx, Owned(task))
}

/// The IOPub reader task: like [`reader`], with a budget, except that big
/// `stream` messages are streamed ([`stream_message`]).
fn iopub_reader(
    mut r: zmtp::Reader,
    signer: Signer,
    budget: Arc<Semaphore>,
) -> (mpsc::Receiver<FromKernel>, Owned) {
    let (tx, rx) = mpsc::channel(SOCKET_DEPTH);
    let task = tokio::spawn(async move {
        loop {
            let Ok(mut all) = budget
                .clone()
                .acquire_many_owned(OUTPUT_BUDGET as u32)
                .await
            else {
                return;
            };
            let item = match r.recv_until(is_big_stream).await {
                Ok(zmtp::Next::Whole(zmtp::Incoming::Message(m))) => {
                    let n: usize = m.iter().map(Vec::len).sum();
                    let held = all.split(n.clamp(1, OUTPUT_BUDGET));
                    FromKernel::Message(m, held)
                }
                Ok(zmtp::Next::Whole(zmtp::Incoming::Dropped { bytes })) => {
                    FromKernel::Dropped(bytes)
                }
                Ok(zmtp::Next::Open { parts, len, more }) => {
                    // Its pieces take their own shares of the budget.
                    drop(all);
                    match stream_message(&mut r, &signer, &budget, &tx, parts, len, more).await {
                        Ok(Some(end)) => end,
                        Ok(None) => return,
                        Err(e) => FromKernel::Failed(e.to_string()),
                    }
                }
                Err(e) => FromKernel::Failed(e.to_string()),
            };
            let failed = matches!(item, FromKernel::Failed(_));
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    (rx, Owned(task))
}

/// Whether the frame about to be read is the content of a big `stream`
/// message: the parts so far are identities, `<IDS|MSG>`, the signature,
/// header, parent header and metadata, and the header says `stream`.
fn is_big_stream(parts: &[Vec<u8>], len: u64) -> bool {
    len > STREAM_OVER
        && super::msg::delimiter(parts).is_some_and(|d| parts.len() == d + 5)
        && serde_json::from_slice::<Value>(&parts[parts.len() - 3])
            .is_ok_and(|h| h["msg_type"] == "stream")
}

/// Streams the content frame of a big `stream` message: read in pieces of
/// 64 KiB, each fed to the HMAC and to an incremental JSON scan that
/// unescapes `"text"`; the text is passed on in pieces of
/// [`STREAM_PIECE`], each holding its share of the IOPub budget until the
/// driver has appended it to the run's log. So execd holds at most the
/// budget whatever the size of the message.
///
/// The signature can only be checked at the end, after the text has been
/// passed on. That is the price of bounded memory (the alternative, holding
/// or spilling a whole message before showing any of it, delays output by
/// tens of MiB). A message that fails the check is a broken or hijacked
/// channel, not a kernel's mistake: the [`FromKernel::TextEnd`] it ends
/// with makes the driver tell the run, on stderr, how many bytes came
/// unverified, and kill the kernel (see `Driver::text_end`). The sockets
/// are Unix sockets in execd's private directory, so no other local user
/// can be on the other end to begin with.
///
/// Returns the `TextEnd` to send, or `None` when the driver is gone.
async fn stream_message(
    r: &mut zmtp::Reader,
    signer: &Signer,
    budget: &Arc<Semaphore>,
    tx: &mpsc::Sender<FromKernel>,
    parts: Vec<Vec<u8>>,
    len: u64,
    more: bool,
) -> std::io::Result<Option<FromKernel>> {
    let d = super::msg::delimiter(&parts).unwrap_or_default();
    let sig = &parts[d + 1];
    let mut mac = signer.mac();
    for p in &parts[d + 2..] {
        hmac::Mac::update(&mut mac, p);
    }
    let parent_id = serde_json::from_slice::<Value>(&parts[d + 3])
        .ok()
        .and_then(|p| p["msg_id"].as_str().map(str::to_string))
        .unwrap_or_default();
    let mut scan = super::msg::StreamScan::default();
    let mut scan_err: Option<&'static str> = None;
    let mut out = Vec::with_capacity(STREAM_PIECE + 64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    let mut bytes = 0u64;
    while left > 0 || !out.is_empty() {
        if left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = r.read_some(&mut buf[..want]).await?;
            left -= n as u64;
            hmac::Mac::update(&mut mac, &buf[..n]);
            if scan_err.is_none() {
                if let Err(e) = scan.feed(&buf[..n], &mut out) {
                    scan_err = Some(e);
                    out.clear();
                }
            }
        }
        if out.len() >= STREAM_PIECE || (left == 0 && !out.is_empty()) {
            let text = super::msg::take_text(&mut out, left == 0);
            let Ok(held) = budget
                .clone()
                .acquire_many_owned(text.len().clamp(1, OUTPUT_BUDGET) as u32)
                .await
            else {
                return Ok(None);
            };
            bytes += text.len() as u64;
            let item = FromKernel::Text {
                parent_id: parent_id.clone(),
                stderr: scan.name() == b"stderr",
                text,
                _held: held,
            };
            if tx.send(item).await.is_err() {
                return Ok(None);
            }
        }
    }
    r.skip_rest(more).await?;
    let ok = if !super::msg::verify(mac, sig) {
        Err("bad signature".to_string())
    } else if let Some(e) = scan_err {
        Err(format!("bad content: {e}"))
    } else if !scan.done() {
        Err("bad content: truncated".to_string())
    } else {
        Ok(())
    };
    Ok(Some(FromKernel::TextEnd {
        parent_id,
        ok,
        bytes,
    }))
}

/// Connects, retrying while the kernel has not bound the socket yet. There
/// is no notification for that: the kernel's start is polled, with a short,
/// growing pause, until `deadline`.
async fn connect(
    at: &zmtp::Endpoint,
    kind: Kind,
    deadline: Instant,
) -> std::io::Result<(zmtp::Reader, zmtp::Writer)> {
    let mut pause = Duration::from_millis(10);
    loop {
        match zmtp::connect(at, kind).await {
            Ok(s) => return Ok(s),
            // Refused: nothing listens yet; not found: no Unix socket yet.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                if Instant::now() + pause > deadline {
                    return Err(e);
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

struct Sockets {
    shell: zmtp::Writer,
    /// Never written after the subscription, but kept: dropping a write
    /// half shuts the connection down for writing, and the kernel hangs up.
    _iopub: zmtp::Writer,
    control: zmtp::Writer,
    hb: zmtp::Writer,
    shell_rx: mpsc::Receiver<FromKernel>,
    control_rx: mpsc::Receiver<FromKernel>,
    iopub_rx: mpsc::Receiver<FromKernel>,
    hb_rx: mpsc::Receiver<FromKernel>,
    _tasks: Vec<Owned>,
}

/// Connects to every channel, then makes sure IOPub delivers: a
/// subscription takes effect at the kernel some time after it is sent, so
/// `kernel_info_request`s are sent until the kernel's status for one of
/// them arrives on IOPub (as `jupyter_client` does).
async fn attach(
    ends: &[zmtp::Endpoint; 5],
    signer: &Signer,
    deadline: Instant,
) -> std::io::Result<Sockets> {
    let [shell_p, iopub_p, _stdin_p, control_p, hb_p] = ends;
    let (shell_r, mut shell) = connect(shell_p, Kind::Dealer, deadline).await?;
    let (iopub_r, iopub_w) = connect(iopub_p, Kind::Sub, deadline).await?;
    let (control_r, control) = connect(control_p, Kind::Dealer, deadline).await?;
    let (hb_r, hb) = connect(hb_p, Kind::Req, deadline).await?;
    let (mut shell_rx, t1) = reader(shell_r, None);
    let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET));
    let (mut iopub_rx, t2) = iopub_reader(iopub_r, signer.clone(), budget);
    let (control_rx, t3) = reader(control_r, None);
    let (hb_rx, t4) = reader(hb_r, None);
    let mut sent: Vec<String> = Vec::new();
    let mut nudge = Duration::from_millis(100);
    'outer: loop {
        let (id, parts) = signer.encode("kernel_info_request", &json!({}));
        sent.push(id);
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        shell.send(&refs).await?;
        let until = (Instant::now() + nudge).min(deadline);
        loop {
            tokio::select! {
                m = iopub_rx.recv() => match m {
                    Some(FromKernel::Message(m, _)) => {
                        if signer.decode(&m).is_ok_and(|m| sent.contains(&m.parent_id)) {
                            break 'outer;
                        }
                    }
                    Some(FromKernel::Dropped(_) | FromKernel::Text { .. } | FromKernel::TextEnd { .. }) => {}
                    Some(FromKernel::Failed(e)) => return Err(std::io::Error::other(format!("IOPub: {e}"))),
                    None => return Err(std::io::Error::other("IOPub closed")),
                },
                m = shell_rx.recv() => match m {
                    Some(FromKernel::Failed(e)) => return Err(std::io::Error::other(format!("shell: {e}"))),
                    None => return Err(std::io::Error::other("shell closed")),
                    _ => {}
                },
                _ = sleep_until(until) => break,
            }
        }
        if Instant::now() >= deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "no status from the kernel on IOPub",
            ));
        }
        nudge = (nudge * 2).min(Duration::from_secs(1));
    }
    Ok(Sockets {
        shell,
        _iopub: iopub_w,
        control,
        hb,
        shell_rx,
        control_rx,
        iopub_rx,
        hb_rx,
        _tasks: vec![t1, t2, t3, t4],
    })
}

/// How a launch failed: the error, and whether the kernel exited by
/// itself during start-up (as one that cannot do the transport does).
pub struct LaunchFailed {
    pub error: KernelError,
    pub exited: bool,
}

/// Starts the kernel and waits until it answers on every channel.
pub async fn launch(
    l: Launch,
    spawn: impl Fn(
        Vec<String>,
        Vec<(std::ffi::OsString, std::ffi::OsString)>,
        Option<PathBuf>,
    ) -> Result<Spawned, crate::process::spawn::SpawnError>,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<Arc<Context>, LaunchFailed> {
    let fail = |e: String| LaunchFailed {
        error: KernelError::Launch(l.language.clone(), e),
        exited: false,
    };
    let mut transport = l.transport;
    let (ends, mut conn) = match endpoints(transport, &l.dir, &l.id) {
        Ok(Some(e)) => e,
        Ok(None) => {
            tracing::warn!(dir = %l.dir.display(), "data directory path too long for Unix sockets; kernel on loopback TCP");
            transport = Transport::Tcp;
            endpoints(transport, &l.dir, &l.id)
                .ok()
                .flatten()
                .ok_or_else(|| fail("no free port".into()))?
        }
        Err(e) => return Err(fail(format!("no free port: {e}"))),
    };
    let key = random_key().map_err(|e| fail(format!("no random key: {e}")))?;
    conn["key"] = key.clone().into();
    conn["signature_scheme"] = "hmac-sha256".into();
    conn["kernel_name"] = l.spec.name.clone().into();
    let mut file = write_conn_file(&l.dir, &l.id, &conn)
        .map_err(|e| fail(format!("cannot write the connection file: {e}")))?;
    for e in &ends {
        if let zmtp::Endpoint::Ipc(p) = e {
            file.1.push(p.clone());
        }
    }
    let argv = l.spec.command(&file.0);
    let mut env = l.env;
    for (k, v) in &l.spec.env {
        env.retain(|(ek, _)| ek != k.as_str());
        env.push((k.into(), v.into()));
    }
    let sp = spawn(argv.clone(), env, l.cwd.clone())
        .map_err(|e| fail(format!("{}: {e}", argv.join(" "))))?;
    let pid = sp.pid;
    let tree = sp.tree.clone();
    let tail = Arc::new(Tail::default());
    let mut stdio: Vec<Owned> = Vec::new();
    stdio.extend(drain(sp.stdout, tail.clone()));
    stdio.extend(drain(sp.stderr, tail.clone()));
    let mut exit = sp.exit;
    let signer = Signer::new(&key, crate::process::new_id());
    let deadline = Instant::now() + START_TIMEOUT;

    let mut exited = false;
    let attached = tokio::select! {
        r = attach(&ends, &signer, deadline) => r.map_err(|e| e.to_string()),
        st = &mut exit => {
            exited = true;
            // Let the pipes deliver the kernel's last words (bounded).
            let _ = tokio::time::timeout(Duration::from_millis(500), async {
                for t in stdio.iter_mut() {
                    let _ = (&mut t.0).await;
                }
            })
            .await;
            Err(format!("the kernel exited during start-up ({})", describe(st.ok())))
        }
        _ = l.shutdown.cancelled() => Err("execd is shutting down".into()),
    };
    let sockets = match attached {
        Ok(s) => s,
        Err(e) => {
            tree.kill();
            if !exited {
                let _ = exit.await;
            }
            tree.release();
            let out = tail.text();
            let mut f = fail(if out.is_empty() {
                e
            } else {
                format!("{e}; kernel output: {out}")
            });
            f.exited = exited;
            return Err(f);
        }
    };

    let (tx, rx) = mpsc::channel(8);
    let ctx = Arc::new(Context {
        id: l.id,
        language: l.language,
        kernel_name: l.spec.name.clone(),
        cwd: l.cwd,
        created: SystemTime::now(),
        pid,
        tree,
        interrupt_mode: l.spec.interrupt_mode,
        busy: AtomicBool::new(false),
        last_used: Mutex::new(Instant::now()),
        dead: Mutex::new(None),
        tx,
        kill: CancellationToken::new(),
        ended: CancellationToken::new(),
    });
    let driver = Driver {
        ctx: ctx.clone(),
        signer,
        s: sockets,
        rx,
        exit,
        exited: false,
        run: None,
        shutdown: l.shutdown,
        _file: file,
        _stdio: stdio,
    };
    tasks.spawn(driver.run());
    Ok(ctx)
}

fn describe(st: Option<ExitStatus>) -> String {
    match st {
        Some(ExitStatus { code: Some(c), .. }) => format!("exit status {c}"),
        Some(ExitStatus {
            signal: Some(s), ..
        }) => format!("killed by signal {s}"),
        _ => "exit status unknown".into(),
    }
}

struct Run {
    msg_id: String,
    out: Arc<CodeRun>,
    started: Instant,
    replied: bool,
    reply_status: String,
    idle: bool,
    error_sent: bool,
    /// When to interrupt (timeout) and, after that, when to give up.
    timeout_at: Option<Instant>,
    /// When the request's `status: idle` arrived.
    idle_at: Option<Instant>,
    timed_out: bool,
    /// After an interrupt: when to look for a foreground job that missed
    /// its ^C.
    redeliver_at: Option<Instant>,
}

struct Driver {
    ctx: Arc<Context>,
    signer: Signer,
    s: Sockets,
    rx: mpsc::Receiver<Request>,
    exit: oneshot::Receiver<ExitStatus>,
    /// `exit` has completed (a receiver must not be polled again after that).
    exited: bool,
    run: Option<Run>,
    shutdown: CancellationToken,
    _file: ConnFile,
    _stdio: Vec<Owned>,
}

impl Driver {
    async fn send(w: &mut zmtp::Writer, parts: &[Vec<u8>]) -> std::io::Result<()> {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        w.send(&refs).await
    }

    async fn run(mut self) {
        let mut hb_tick = tokio::time::interval(HB_EVERY);
        hb_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut hb_missed = 0u32;
        let mut hb_waiting = false;
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let why: String = loop {
            let timer = self
                .run
                .as_ref()
                .and_then(|r| {
                    let unanswered = r
                        .idle_at
                        .filter(|_| !r.replied)
                        .map(|t| t + IDLE_WITHOUT_REPLY);
                    r.timeout_at
                        .into_iter()
                        .chain(unanswered)
                        .chain(r.redeliver_at)
                        .min()
                })
                .unwrap_or(far);
            tokio::select! {
                req = self.rx.recv() => match req {
                    Some(Request::Execute { code, run, timeout }) => {
                        if let Err(e) = self.start(code, run, timeout).await {
                            break format!("cannot send to the kernel: {e}");
                        }
                    }
                    Some(Request::Interrupt) => {
                        if self.ctx.interrupt_mode == InterruptMode::Message {
                            let (_, parts) = self.signer.encode("interrupt_request", &json!({}));
                            if let Err(e) = Self::send(&mut self.s.control, &parts).await {
                                break format!("cannot send to the kernel: {e}");
                            }
                        }
                        self.arm_redeliver();
                    }
                    None => break "context dropped".into(),
                },
                m = self.s.iopub_rx.recv() => match m {
                    Some(FromKernel::Message(m, held)) => self.iopub(m, held).await,
                    Some(FromKernel::Dropped(bytes)) => self.dropped(bytes),
                    Some(FromKernel::Text { parent_id, stderr, text, _held }) => {
                        if let Some(run) = self.run.as_ref().filter(|r| r.msg_id == parent_id) {
                            run.out.emit(Event::Stream { stderr, text });
                        }
                    }
                    Some(FromKernel::TextEnd { parent_id, ok, bytes }) => {
                        if let Err(why) = self.text_end(&parent_id, ok, bytes) {
                            break why;
                        }
                    }
                    Some(FromKernel::Failed(e)) => break format!("the kernel closed IOPub: {e}"),
                    None => break "the kernel closed IOPub".into(),
                },
                m = self.s.shell_rx.recv() => match m {
                    Some(FromKernel::Message(m, _)) => self.shell(m),
                    Some(FromKernel::Dropped(_) | FromKernel::Text { .. } | FromKernel::TextEnd { .. }) => {}
                    Some(FromKernel::Failed(e)) => break format!("the kernel closed its shell channel: {e}"),
                    None => break "the kernel closed its shell channel".into(),
                },
                m = self.s.control_rx.recv() => if let None | Some(FromKernel::Failed(_)) = m {
                    break "the kernel closed its control channel".into();
                },
                m = self.s.hb_rx.recv() => match m {
                    Some(FromKernel::Message(..) | FromKernel::Dropped(_) | FromKernel::Text { .. } | FromKernel::TextEnd { .. }) => { hb_waiting = false; hb_missed = 0; }
                    Some(FromKernel::Failed(_)) | None => break "the kernel closed its heartbeat channel".into(),
                },
                _ = hb_tick.tick() => {
                    if hb_waiting {
                        hb_missed += 1;
                        if hb_missed >= HB_MISSES {
                            break format!("no heartbeat from the kernel for {}s", (HB_EVERY * HB_MISSES).as_secs());
                        }
                    } else {
                        if let Err(e) = self.s.hb.send(&[b"ping"]).await {
                            break format!("heartbeat: {e}");
                        }
                        hb_waiting = true;
                    }
                },
                st = &mut self.exit, if !self.exited => {
                    self.exited = true;
                    break self.exit_reason(st.ok());
                },
                _ = sleep_until(timer) => {
                    let now = Instant::now();
                    let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
                    let (timeout_at, redeliver_at) = self
                        .run
                        .as_ref()
                        .map(|r| (r.timeout_at, r.redeliver_at))
                        .unwrap_or_default();
                    if self.unanswered() {
                        self.finish().await;
                    } else if due(timeout_at) {
                        if self.on_timeout().await {
                            break "the kernel did not stop after a timeout's interrupt; killed".into();
                        }
                    } else if due(redeliver_at) {
                        self.redeliver();
                    }
                },
                _ = self.ctx.kill.cancelled() => break "the context was deleted".into(),
                _ = self.shutdown.cancelled() => break "execd is shutting down".into(),
            }
            if self.run.as_ref().is_some_and(|r| r.replied && r.idle) {
                self.finish().await;
            }
        };
        self.end(why).await;
    }

    async fn start(
        &mut self,
        code: String,
        out: Arc<CodeRun>,
        timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        let content = json!({
            "code": code, "silent": false, "store_history": true,
            "user_expressions": {}, "allow_stdin": false, "stop_on_error": true,
        });
        let (msg_id, parts) = self.signer.encode("execute_request", &content);
        let now = Instant::now();
        self.run = Some(Run {
            msg_id,
            out,
            started: now,
            replied: false,
            reply_status: String::new(),
            idle: false,
            error_sent: false,
            timeout_at: timeout.map(|t| now + t),
            idle_at: None,
            timed_out: false,
            redeliver_at: None,
        });
        Self::send(&mut self.s.shell, &parts).await
    }

    /// Whether the kernel went idle after the request and did not answer it
    /// within [`IDLE_WITHOUT_REPLY`]: its handler failed (ipykernel logs the
    /// exception, sends no reply, and goes idle). The run ends then, rather
    /// than waiting for a reply that never comes.
    fn unanswered(&mut self) -> bool {
        let Some(run) = self.run.as_mut() else {
            return false;
        };
        if run.replied || run.idle_at.is_none_or(|t| t.elapsed() < IDLE_WITHOUT_REPLY) {
            return false;
        }
        run.replied = true;
        run.reply_status = NO_REPLY.into();
        true
    }

    /// The run's timeout: the first time, interrupt; the second (the grace
    /// after the interrupt), give up. Returns true when the kernel must die.
    async fn on_timeout(&mut self) -> bool {
        let Some(run) = self.run.as_mut() else {
            return false;
        };
        if run.timed_out {
            return true;
        }
        run.timed_out = true;
        run.timeout_at = Some(Instant::now() + INTERRUPT_GRACE);
        self.arm_redeliver();
        match self.ctx.interrupt_mode {
            InterruptMode::Signal => {
                signal_group(self.ctx.pid, libc::SIGINT);
            }
            InterruptMode::Message => {
                let (_, parts) = self.signer.encode("interrupt_request", &json!({}));
                if Self::send(&mut self.s.control, &parts).await.is_err() {
                    return true;
                }
            }
        }
        false
    }

    /// An interrupt was sent: every [`REDELIVER_EVERY`] while the run
    /// lasts, look for a terminal's foreground job in the kernel's tree
    /// that never got the ^C (the first interrupt of a run arms it).
    fn arm_redeliver(&mut self) {
        if let Some(run) = self.run.as_mut() {
            run.redeliver_at
                .get_or_insert(Instant::now() + REDELIVER_EVERY);
        }
    }

    /// The run is still busy after its interrupt: SIGINT to the foreground
    /// jobs of terminals inside the kernel that are sure not to have seen
    /// one (a ^C bash_kernel typed may land before the job has the
    /// terminal); then the next look.
    fn redeliver(&mut self) {
        let Some(run) = self.run.as_mut() else { return };
        run.redeliver_at = Some(Instant::now() + REDELIVER_EVERY);
        let sent = crate::process::foreground::interrupt_unreached(&self.ctx.tree);
        if sent > 0 {
            tracing::info!(context = %self.ctx.id, processes = sent, "the interrupted run is still busy: SIGINT to a terminal's foreground job that never got the ^C");
        }
    }

    fn decode(&self, m: &[Vec<u8>]) -> Option<Msg> {
        match self.signer.decode(m) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(context = %self.ctx.id, error = %e, "dropping a kernel message");
                None
            }
        }
    }

    /// A message too big to keep: the run's client is told on stderr.
    fn dropped(&mut self, bytes: u64) {
        let Some(run) = self.run.as_ref() else { return };
        let text = format!(
            "[execd: the kernel sent an output message of {bytes} bytes, over the {} MiB limit; it was dropped]\n",
            zmtp::MAX_MESSAGE >> 20
        );
        run.out.emit(Event::Stream { stderr: true, text });
    }

    /// The end of a streamed `stream` message. If it failed its check, its
    /// text already reached the log: the run is told so on stderr, and the
    /// kernel is killed (the `Err` is why), since its channel cannot be
    /// trusted any more.
    fn text_end(
        &mut self,
        parent_id: &str,
        ok: Result<(), String>,
        bytes: u64,
    ) -> Result<(), String> {
        let Err(why) = ok else { return Ok(()) };
        tracing::warn!(context = %self.ctx.id, error = %why, bytes, "a streamed kernel message failed its check");
        if let Some(run) = self.run.as_ref().filter(|r| r.msg_id == parent_id) {
            run.out.emit(Event::Stream {
                stderr: true,
                text: format!("\n[execd: the last {bytes} bytes of output came in a kernel message that failed its check ({why}); the kernel is stopped]\n"),
            });
        }
        Err(format!("a message on IOPub failed its check ({why})"))
    }

    async fn iopub(&mut self, m: Vec<Vec<u8>>, held: Option<OwnedSemaphorePermit>) {
        let decoded = self.decode(&m);
        drop(m); // the raw parts: not kept while the event is forwarded
        let Some(m) = decoded else { return };
        let Some(run) = self.run.as_mut() else { return };
        if m.parent_id != run.msg_id {
            return;
        }
        let mut c = m.content;
        let ev = match m.msg_type.as_str() {
            "status" => {
                if c["execution_state"] == "idle" {
                    run.idle = true;
                    run.idle_at = Some(Instant::now());
                }
                None
            }
            "stream" => Some(Event::Stream {
                stderr: c["name"] == "stderr",
                text: match c["text"].take() {
                    Value::String(t) => t,
                    _ => String::new(),
                },
            }),
            "execute_input" => c["execution_count"].as_i64().map(Event::ExecutionCount),
            "execute_result" | "display_data" | "update_display_data" => {
                let execution_count = c["execution_count"].as_i64();
                match c["data"].take() {
                    Value::Object(data) => Some(Event::Result {
                        data,
                        execution_count,
                    }),
                    _ => None,
                }
            }
            "error" => {
                run.error_sent = true;
                Some(Event::Error {
                    ename: c["ename"].as_str().unwrap_or_default().to_string(),
                    evalue: c["evalue"].as_str().unwrap_or_default().to_string(),
                    traceback: c["traceback"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|t| t.as_str().unwrap_or_default().to_string())
                                .collect()
                        })
                        .unwrap_or_default(),
                })
            }
            _ => None,
        };
        // Into the run's log, which never waits for a reader.
        if let Some(ev) = ev {
            run.out.emit(ev);
        }
        drop(held);
    }

    fn shell(&mut self, m: Vec<Vec<u8>>) {
        let Some(m) = self.decode(&m) else { return };
        let Some(run) = self.run.as_mut() else { return };
        if m.msg_type == "execute_reply" && m.parent_id == run.msg_id {
            run.replied = true;
            run.reply_status = m.content["status"].as_str().unwrap_or_default().to_string();
        }
    }

    async fn finish(&mut self) {
        let Some(run) = self.run.take() else { return };
        let outcome = if run.timed_out {
            Outcome::Failed {
                ename: "TimeoutError".into(),
                evalue: "the run timed out and was interrupted".into(),
                timed_out: true,
            }
        } else if run.error_sent {
            Outcome::KernelError
        } else if run.reply_status == "ok" {
            Outcome::Ok
        } else {
            Outcome::Failed {
                ename: "ExecutionAborted".into(),
                evalue: if run.reply_status == NO_REPLY {
                    "the kernel went idle without answering the request (its handler failed)".into()
                } else {
                    format!("the kernel answered \"{}\"", run.reply_status)
                },
                timed_out: false,
            }
        };
        self.ctx.touch();
        self.ctx.busy.store(false, Ordering::Release);
        run.out.finish(run.started.elapsed(), outcome);
    }

    fn exit_reason(&self, st: Option<ExitStatus>) -> String {
        format!("the kernel process ended ({})", describe(st))
    }

    /// The kernel is gone or must go: kill it and its descendants, reap it,
    /// end any run with an error, and remove the connection file (on drop).
    async fn end(mut self, mut why: String) {
        if !self.exited && why.starts_with("the kernel closed") {
            // A dying kernel's sockets close just before the reaper reports
            // its exit: give that a moment, for a reason that says how it died.
            if let Ok(st) = tokio::time::timeout(Duration::from_secs(1), &mut self.exit).await {
                self.exited = true;
                if let Ok(st) = st {
                    why = self.exit_reason(Some(st));
                }
            }
        }
        self.ctx.tree.kill();
        if !self.exited {
            let _ = (&mut self.exit).await;
        }
        self.ctx.tree.release();
        tracing::info!(context = %self.ctx.id, reason = %why, "kernel ended");
        *self.ctx.dead.lock().unwrap_or_else(|p| p.into_inner()) = Some(why.clone());
        self.rx.close();
        if let Some(run) = self.run.take() {
            let (ename, timed_out) = if run.timed_out {
                ("TimeoutError", true)
            } else {
                ("KernelDied", false)
            };
            run.out.finish(
                run.started.elapsed(),
                Outcome::Failed {
                    ename: ename.into(),
                    evalue: why.clone(),
                    timed_out,
                },
            );
        }
        // Requests that raced the end.
        while let Ok(req) = self.rx.try_recv() {
            if let Request::Execute { run, .. } = req {
                run.finish(
                    Duration::ZERO,
                    Outcome::Failed {
                        ename: "KernelDied".into(),
                        evalue: why.clone(),
                        timed_out: false,
                    },
                );
            }
        }
        self.ctx.busy.store(false, Ordering::Release);
        let ended = self.ctx.ended.clone();
        drop(self);
        ended.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ZMTP frames of one message.
    fn wire(parts: &[Vec<u8>]) -> Vec<u8> {
        let mut w = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let more = u8::from(i + 1 < parts.len());
            w.push(more | 0x02);
            w.extend_from_slice(&(p.len() as u64).to_be_bytes());
            w.extend_from_slice(p);
        }
        w
    }

    /// Streams one message through `stream_message`: the text pieces and
    /// the end's verdict.
    async fn stream(signer: &Signer, parts: &[Vec<u8>]) -> (Vec<String>, Result<(), String>, u64) {
        let bytes = wire(parts);
        let mut r = zmtp::Reader::over(
            Box::new(std::io::Cursor::new(bytes)) as zmtp::ReadHalf,
            Kind::Sub,
        );
        let Ok(zmtp::Next::Open { parts, len, more }) = r.recv_until(is_big_stream).await else {
            panic!("not streamed");
        };
        let budget = Arc::new(Semaphore::new(OUTPUT_BUDGET));
        let (tx, mut rx) = mpsc::channel(1024);
        let end = stream_message(&mut r, signer, &budget, &tx, parts, len, more)
            .await
            .expect("read")
            .expect("end");
        drop(tx);
        let mut pieces = Vec::new();
        while let Some(FromKernel::Text { text, stderr, .. }) = rx.recv().await {
            assert!(stderr);
            pieces.push(text);
        }
        match end {
            FromKernel::TextEnd { ok, bytes, .. } => (pieces, ok, bytes),
            _ => panic!("no TextEnd"),
        }
    }

    #[tokio::test]
    async fn big_stream_messages_are_streamed_and_their_signature_checked() {
        let signer = Signer::new("key", "s".into());
        // 3 MiB with escapes and multi-byte characters across piece edges.
        let text: String = "a\"b\\c\n\té日😀".repeat(3 << 17);
        let (_, parts) = signer.encode("stream", &json!({"name": "stderr", "text": text}));
        let (pieces, ok, bytes) = stream(&signer, &parts).await;
        assert_eq!(ok, Ok(()));
        assert!(pieces.len() > 4 && pieces.iter().all(|p| p.len() <= STREAM_PIECE + (64 << 10)));
        assert_eq!(pieces.concat(), text);
        assert_eq!(bytes, text.len() as u64);

        // One byte of the content changed: the text has been passed on, and
        // the end says the signature failed.
        let mut forged = parts.clone();
        let at = forged[5].len() / 2;
        forged[5][at] = if forged[5][at] == b'a' { b'b' } else { b'a' };
        let (_, ok, _) = stream(&signer, &forged).await;
        assert_eq!(ok, Err("bad signature".to_string()));
        // Another key: the same.
        let (_, ok, _) = stream(&Signer::new("other", "s".into()), &parts).await;
        assert_eq!(ok, Err("bad signature".to_string()));
    }
}
