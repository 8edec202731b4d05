//! envd's `process.Process` service on execd's engine.
//!
//! - A process without a terminal is an engine command (the records and
//!   the bounded output log `/command` uses); `Start` streams its log from
//!   the beginning, `Connect` from now on (envd's behaviour), or from the
//!   beginning with `X-Execd-Replay: true`.
//! - A process on a terminal reads its terminal in a task of its own and
//!   fans out to every open stream (a stream that falls behind loses
//!   chunks, as envd drops output nobody reads).
//! - A stream that ends does not end the process (envd's semantics);
//!   `Connect-Timeout-Ms` on `Start` bounds the process's life, and the
//!   timeout and `SIGKILL` take its whole tree.
//! - Processes are found by the leader's pid or by tag; ended ones are kept
//!   for `--retention`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use tokio::sync::{broadcast, mpsc, watch};

use super::proto::*;
use super::Envd;
use crate::connect::{self, Code, Error, Protocol};
use crate::process::follow::{Follower, Step};
use crate::process::registry::Finished;
use crate::process::{Command, CommandSpec, Program, Stream};
use crate::server::{Body, RequestBody};

/// Largest data event.
const CHUNK: usize = 32 * 1024;
/// Events queued for a slow stream reader.
const QUEUE: usize = 16;
/// Terminal chunks kept for a slow reader before it skips some.
const TTY_BACKLOG: usize = 64;
/// Keepalive events when the client asks for none (`Keepalive-Ping-Interval`).
const KEEPALIVE_DEFAULT: Duration = Duration::from_secs(90);
/// Processes kept (running and ended); starts past it are refused.
const MAX_PROCS: usize = 4096;

/// How a process ended.
#[derive(Clone, Debug, Default)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub error: Option<String>,
    pub timed_out: bool,
}

impl Exit {
    fn of(f: &Finished) -> Exit {
        Exit {
            code: f.signal.is_none().then_some(f.exit_code),
            signal: f.signal,
            error: f.error.clone(),
            timed_out: f.timed_out,
        }
    }

    /// envd's end event (Go's `ProcessState` wording).
    fn event(&self) -> EndEvent {
        let status = match (self.code, self.signal) {
            (_, Some(s)) => format!("signal: {}", signal_name(s)),
            (Some(c), None) => format!("exit status {c}"),
            (None, None) => "unknown".into(),
        };
        EndEvent {
            exit_code: self.code.unwrap_or(-1),
            exited: self.signal.is_none() && self.code.is_some(),
            status,
            error: self.error.clone(),
        }
    }
}

fn signal_name(s: i32) -> String {
    match s {
        libc::SIGKILL => "killed".into(),
        libc::SIGTERM => "terminated".into(),
        libc::SIGINT => "interrupt".into(),
        libc::SIGHUP => "hangup".into(),
        libc::SIGPIPE => "broken pipe".into(),
        libc::SIGSEGV => "segmentation fault".into(),
        libc::SIGABRT => "aborted".into(),
        n => format!("signal {n}"),
    }
}

type Terminal = crate::process::terminal::Terminal;

/// A process on a terminal.
pub struct Tty {
    pid: i32,
    /// The terminal until the process has ended (its descriptor is closed
    /// then, though the record stays).
    term: Mutex<Option<Arc<Terminal>>>,
    out: broadcast::Sender<Bytes>,
    exit: watch::Receiver<Option<Exit>>,
}

impl Tty {
    fn term(&self) -> Result<Arc<Terminal>, Error> {
        self.term
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| Error::not_found(format!("process {} has ended", self.pid)))
    }
}

enum Kind {
    /// The engine's record, as long as the engine keeps it (`--retention`,
    /// `--max-records`): its output log is not held here.
    Pipes(Weak<Command>),
    Tty(Arc<Tty>),
}

/// A process started through the service.
pub struct Proc {
    pid: u32,
    tag: Option<String>,
    config: ProcessConfig,
    kind: Kind,
    /// When it was seen ended (for retention).
    ended: Mutex<Option<Instant>>,
}

impl Proc {
    fn exit(&self) -> Option<Exit> {
        match &self.kind {
            Kind::Pipes(c) => match c.upgrade() {
                Some(c) => c.finished().map(|f| Exit::of(&f)),
                None => Some(Exit {
                    error: Some("the record has expired".into()),
                    ..Exit::default()
                }),
            },
            Kind::Tty(t) => t.exit.borrow().clone(),
        }
    }

    /// The engine's record of a process without a terminal.
    fn cmd(&self) -> Option<Arc<Command>> {
        match &self.kind {
            Kind::Pipes(c) => c.upgrade(),
            Kind::Tty(_) => None,
        }
    }

    fn running(&self) -> bool {
        self.exit().is_none()
    }
}

/// The processes by pid.
pub struct Table {
    procs: Mutex<HashMap<u32, Arc<Proc>>>,
    retention: Duration,
}

impl Table {
    pub fn new(retention: Duration) -> Table {
        Table {
            procs: Mutex::new(HashMap::new()),
            retention,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Proc>>> {
        self.procs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drops processes ended longer than the retention ago.
    fn expire(&self) {
        let now = Instant::now();
        self.lock().retain(|_, p| {
            if matches!(&p.kind, Kind::Pipes(c) if c.strong_count() == 0) {
                return false;
            }
            if p.running() {
                return true;
            }
            let mut ended = p.ended.lock().unwrap_or_else(|e| e.into_inner());
            let at = *ended.get_or_insert(now);
            now.duration_since(at) < self.retention
        });
    }

    fn insert(&self, p: Arc<Proc>) -> Result<(), Error> {
        self.expire();
        let mut m = self.lock();
        if m.len() >= MAX_PROCS {
            return Err(Error::new(
                Code::ResourceExhausted,
                format!("{MAX_PROCS} processes kept; retry once some end"),
            ));
        }
        m.insert(p.pid, p);
        Ok(())
    }

    /// The process a selector names: by pid, or the newest with the tag.
    fn find(&self, sel: Option<&ProcessSelector>) -> Result<Arc<Proc>, Error> {
        let m = self.lock();
        match sel.and_then(|s| s.selector.as_ref()) {
            Some(Selector::Pid(pid)) => m
                .get(pid)
                .cloned()
                .ok_or_else(|| Error::not_found(format!("process with pid {pid} not found"))),
            Some(Selector::Tag(tag)) => m
                .values()
                .filter(|p| p.tag.as_deref() == Some(tag.as_str()))
                .max_by_key(|p| p.running())
                .cloned()
                .ok_or_else(|| Error::not_found(format!("process with tag {tag:?} not found"))),
            None => Err(Error::invalid("process selector (pid or tag) is required")),
        }
    }
}

fn event(e: Event) -> EventResponse {
    EventResponse {
        event: Some(ProcessEvent { event: Some(e) }),
    }
}

/// `Keepalive-Ping-Interval` (seconds).
pub(super) fn keepalive(headers: &http::HeaderMap) -> Duration {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|n| *n > 0)
        .map_or(KEEPALIVE_DEFAULT, |n| Duration::from_secs(n.min(3600)))
}

/// Dispatches one call.
pub async fn call(
    app: Arc<Envd>,
    p: Protocol,
    method: &str,
    req: Request<RequestBody>,
) -> Response<Body> {
    let svc = Service { app };
    match method {
        "Start" => svc.start(p, req).await,
        "Connect" => svc.connect(p, req).await,
        "List" => connect::unary(p, req, |_: ListRequest| async { Ok(svc.list()) }).await,
        "Update" => connect::unary(p, req, |r: UpdateRequest| svc.update(r)).await,
        "SendInput" => connect::unary(p, req, |r: SendInputRequest| svc.send_input(r)).await,
        "SendSignal" => connect::unary(p, req, |r: SendSignalRequest| svc.send_signal(r)).await,
        "CloseStdin" => connect::unary(p, req, |r: SelectRequest| svc.close_stdin(r)).await,
        "StreamInput" => svc.stream_input(p, req).await,
        _ => connect::error_response(
            p,
            &Error::new(
                Code::Unimplemented,
                format!("process.Process/{method} does not exist"),
            ),
        ),
    }
}

struct Service {
    app: Arc<Envd>,
}

impl Service {
    fn table(&self) -> &Table {
        &self.app.e2b.procs
    }

    async fn start(&self, p: Protocol, req: Request<RequestBody>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let r: StartRequest = match connect::read_request(p, body).await {
            Ok(r) => r,
            Err(e) => return connect::error_response(p, &e),
        };
        let ka = keepalive(&parts.headers);
        let timeout = connect::timeout(&parts.headers);
        match self.spawn(r, &parts.headers, timeout).await {
            Ok((proc_, tty_rx)) => self.stream(p, proc_, tty_rx, 1, ka).await,
            Err(e) => connect::error_response(p, &e),
        }
    }

    /// Starts the process of `r` and records it.
    async fn spawn(
        &self,
        r: StartRequest,
        headers: &http::HeaderMap,
        timeout: Option<Duration>,
    ) -> Result<(Arc<Proc>, Option<broadcast::Receiver<Bytes>>), Error> {
        let e2b = &self.app.e2b;
        let user = e2b
            .user(headers, None)
            .map_err(|m| Error::new(Code::Unauthenticated, m))?;
        let cfg = r.process.unwrap_or_default();
        if cfg.cmd.is_empty() {
            return Err(Error::invalid("process.cmd is required"));
        }
        if cfg.cmd.contains('\0')
            || cfg.args.iter().any(|a| a.contains('\0'))
            || cfg
                .envs
                .iter()
                .any(|(k, v)| v.contains('\0') || k.contains('\0'))
        {
            return Err(Error::invalid(
                "command, arguments and variables must not contain NUL bytes",
            ));
        }
        if let Some(k) = cfg.envs.keys().find(|k| k.is_empty() || k.contains('=')) {
            return Err(Error::invalid(format!(
                "invalid environment variable name {k:?}"
            )));
        }
        let asked = cfg
            .cwd
            .clone()
            .filter(|c| !c.is_empty())
            .or_else(|| e2b.default_workdir());
        let cwd = match asked {
            Some(c) => {
                let cwd = user.path(&c).map_err(Error::invalid)?;
                check_dir(&cwd).await?;
                cwd
            }
            // The home directory, or `/` for a user without one (`nobody`).
            None => {
                let home = PathBuf::from(&user.home);
                match check_dir(&home).await {
                    Ok(()) => home,
                    Err(_) => PathBuf::from("/"),
                }
            }
        };
        let mut envs: Vec<(String, String)> = e2b.default_envs().into_iter().collect();
        envs.extend(cfg.envs.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut argv = vec![cfg.cmd.clone()];
        argv.extend(cfg.args.iter().cloned());
        let spec = CommandSpec {
            program: Program::Argv(argv),
            cwd: Some(cwd),
            envs,
            timeout,
            uid: user.switch.then_some(user.uid),
            gid: user.switch.then_some(user.gid),
            background: true,
            stdin: r.stdin.unwrap_or(false),
        };
        let engine = &self.app.shared.engine;
        if let Some(pty) = r.pty {
            let size = pty.size.unwrap_or_default();
            let clamp = |n: u32| n.min(u32::from(u16::MAX)) as u16;
            let (term, exit) = engine
                .start_terminal(&spec, clamp(size.cols), clamp(size.rows))
                .map_err(|e| Error::new(spawn_code(&e), e.to_string()))?;
            let (out, rx) = broadcast::channel(TTY_BACKLOG);
            let (exit_tx, exit_rx) = watch::channel(None);
            let term = Arc::new(term);
            let tty = Arc::new(Tty {
                pid: term.pid,
                term: Mutex::new(Some(term.clone())),
                out,
                exit: exit_rx,
            });
            let proc_ = Arc::new(Proc {
                pid: term.pid as u32,
                tag: r.tag,
                config: cfg,
                kind: Kind::Tty(tty.clone()),
                ended: Mutex::new(None),
            });
            if let Err(e) = self.table().insert(proc_.clone()) {
                term.tree.kill();
                return Err(e);
            }
            let drain = engine.config().drain;
            engine
                .tasks()
                .spawn(read_tty(tty, term, exit, exit_tx, drain, timeout));
            return Ok((proc_, Some(rx)));
        }
        let cmd = engine
            .start_command(spec)
            .map_err(|e| Error::new(Code::ResourceExhausted, e.to_string()))?;
        if let Some(f) = cmd.finished().filter(|f| f.spawn_failed) {
            let why = f.error.unwrap_or_else(|| "cannot start the command".into());
            let code = match f.exit_code {
                127 => Code::NotFound,
                126 => Code::PermissionDenied,
                _ => Code::Internal,
            };
            return Err(Error::new(code, why));
        }
        let pid = cmd.pid.unwrap_or_default() as u32;
        let proc_ = Arc::new(Proc {
            pid,
            tag: r.tag,
            config: cfg,
            kind: Kind::Pipes(Arc::downgrade(&cmd)),
            ended: Mutex::new(None),
        });
        if let Err(e) = self.table().insert(proc_.clone()) {
            cmd.kill_tree();
            return Err(e);
        }
        Ok((proc_, None))
    }

    async fn connect(&self, p: Protocol, req: Request<RequestBody>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let r: SelectRequest = match connect::read_request(p, body).await {
            Ok(r) => r,
            Err(e) => return connect::error_response(p, &e),
        };
        let proc_ = match self.table().find(r.process.as_ref()) {
            Ok(x) => x,
            Err(e) => return connect::error_response(p, &e),
        };
        let replay = parts
            .headers
            .get("x-execd-replay")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| matches!(v.trim(), "1" | "true"));
        let (from, tty_rx) = match &proc_.kind {
            Kind::Pipes(_) if replay => (1, None),
            Kind::Pipes(c) => (
                c.upgrade().map_or(1, |c| c.log.watch().borrow().next_eid),
                None,
            ),
            Kind::Tty(t) => (1, Some(t.out.subscribe())),
        };
        self.stream(p, proc_, tty_rx, from, keepalive(&parts.headers))
            .await
    }

    /// The event stream of `proc_` from event `from`: its `start` event,
    /// then what an owned task following it sends.
    async fn stream(
        &self,
        p: Protocol,
        proc_: Arc<Proc>,
        tty_rx: Option<broadcast::Receiver<Bytes>>,
        from: u64,
        ka: Duration,
    ) -> Response<Body> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let _ = tx
            .send(Ok(event(Event::Start(StartEvent { pid: proc_.pid }))))
            .await;
        self.app.shared.tasks.spawn(follow(
            proc_,
            tty_rx,
            from,
            tx,
            ka,
            self.app.shared.shutdown.clone(),
        ));
        connect::stream_response(p, rx)
    }

    fn list(&self) -> ListResponse {
        self.table().expire();
        let mut processes: Vec<ProcessInfo> = self
            .table()
            .lock()
            .values()
            .filter(|p| p.running())
            .map(|p| ProcessInfo {
                config: Some(p.config.clone()),
                pid: p.pid,
                tag: p.tag.clone(),
            })
            .collect();
        processes.sort_by_key(|p| p.pid);
        ListResponse { processes }
    }

    async fn update(&self, r: UpdateRequest) -> Result<Empty, Error> {
        let proc_ = self.table().find(r.process.as_ref())?;
        let Some(size) = r.pty.and_then(|p| p.size) else {
            return Ok(Empty {});
        };
        match &proc_.kind {
            Kind::Tty(t) if proc_.running() => {
                let clamp = |n: u32| n.min(u32::from(u16::MAX)) as u16;
                t.term()?
                    .resize(clamp(size.cols), clamp(size.rows))
                    .map_err(|e| Error::internal(format!("resize: {e}")))?;
                Ok(Empty {})
            }
            Kind::Tty(_) => Err(Error::not_found(format!("process {} has ended", proc_.pid))),
            Kind::Pipes(_) => Err(Error::new(
                Code::FailedPrecondition,
                format!("process {} has no terminal", proc_.pid),
            )),
        }
    }

    async fn send_input(&self, r: SendInputRequest) -> Result<Empty, Error> {
        let proc_ = self.table().find(r.process.as_ref())?;
        input(&proc_, r.input.and_then(|i| i.input)).await?;
        Ok(Empty {})
    }

    async fn send_signal(&self, r: SendSignalRequest) -> Result<Empty, Error> {
        let proc_ = self.table().find(r.process.as_ref())?;
        let sig = match r.signal {
            SIGNAL_SIGKILL => libc::SIGKILL,
            SIGNAL_SIGTERM => libc::SIGTERM,
            n => {
                return Err(Error::invalid(format!(
                    "unsupported signal {n}: SIGTERM or SIGKILL"
                )))
            }
        };
        if !proc_.running() {
            return Err(Error::not_found(format!("process {} has ended", proc_.pid)));
        }
        match (&proc_.kind, sig) {
            // The whole tree, also what the leader left behind.
            (Kind::Pipes(_), libc::SIGKILL) => {
                if let Some(c) = proc_.cmd() {
                    c.kill_tree();
                }
            }
            (Kind::Tty(t), libc::SIGKILL) => t.term()?.tree.kill(),
            (Kind::Pipes(_), _) => {
                if let Some(pid) = proc_.cmd().and_then(|c| c.pid) {
                    crate::process::spawn::signal_group(pid, sig);
                }
            }
            (Kind::Tty(t), _) => {
                crate::process::spawn::signal_group(t.term()?.pid, sig);
            }
        }
        Ok(Empty {})
    }

    async fn close_stdin(&self, r: SelectRequest) -> Result<Empty, Error> {
        let proc_ = self.table().find(r.process.as_ref())?;
        match &proc_.kind {
            Kind::Pipes(_) => {
                let c = proc_
                    .cmd()
                    .ok_or_else(|| Error::not_found(format!("process {} has ended", proc_.pid)))?;
                let stdin = c
                    .stdin()
                    .await
                    .map_err(|e| Error::new(Code::FailedPrecondition, e.to_string()))?;
                stdin.close();
                Ok(Empty {})
            }
            Kind::Tty(_) => Err(Error::new(
                Code::FailedPrecondition,
                "a terminal has no stdin to close: send Ctrl-D (0x04) instead",
            )),
        }
    }

    /// `StreamInput`: a start event naming the process, then data events,
    /// in order.
    async fn stream_input(&self, p: Protocol, req: Request<RequestBody>) -> Response<Body> {
        if !p.streaming {
            return connect::error_response(
                p,
                &Error::invalid("StreamInput is a client stream: use application/connect+…"),
            );
        }
        let mut env = connect::Envelopes::new(req.into_body());
        let mut target: Option<Arc<Proc>> = None;
        let r: Result<Empty, Error> = async {
            while let Some(m) = env.next().await {
                let m: StreamInputRequest = connect::decode(p.codec, &m?)?;
                match m.event {
                    Some(StreamEvent::Start(s)) => {
                        target = Some(self.table().find(s.process.as_ref())?);
                    }
                    Some(StreamEvent::Data(d)) => {
                        let proc_ = target
                            .as_ref()
                            .ok_or_else(|| Error::invalid("a data event before the start event"))?;
                        input(proc_, d.input.and_then(|i| i.input)).await?;
                    }
                    Some(StreamEvent::Keepalive(_)) | None => {}
                }
            }
            Ok(Empty {})
        }
        .await;
        connect::unary_response(p, r)
    }
}

/// Writes input to a process: `stdin` to its pipe, `pty` to its terminal.
async fn input(proc_: &Proc, data: Option<Input>) -> Result<(), Error> {
    match (&proc_.kind, data) {
        (_, None) => Ok(()),
        (Kind::Pipes(_), Some(Input::Stdin(d))) => {
            let c = proc_
                .cmd()
                .ok_or_else(|| Error::not_found(format!("process {} has ended", proc_.pid)))?;
            let mut stdin = c.stdin().await.map_err(|e| {
                Error::new(
                    Code::FailedPrecondition,
                    format!("{e} (start it with stdin: true)"),
                )
            })?;
            stdin
                .write(&d)
                .await
                .map_err(|e| Error::new(Code::FailedPrecondition, e.to_string()))
        }
        (Kind::Tty(t), Some(Input::Pty(d) | Input::Stdin(d))) => t
            .term()?
            .write(&d)
            .await
            .map_err(|e| Error::new(Code::FailedPrecondition, format!("terminal input: {e}"))),
        (Kind::Pipes(_), Some(Input::Pty(_))) => Err(Error::new(
            Code::FailedPrecondition,
            format!("process {} has no terminal", proc_.pid),
        )),
    }
}

fn spawn_code(e: &crate::process::spawn::SpawnError) -> Code {
    use crate::process::spawn::SpawnError;
    match e {
        SpawnError::NotFound { .. } => Code::NotFound,
        SpawnError::PermissionDenied { .. } => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

async fn check_dir(p: &std::path::Path) -> Result<(), Error> {
    let shown = p.display().to_string();
    let path: PathBuf = p.to_path_buf();
    match tokio::task::spawn_blocking(move || std::fs::metadata(path)).await {
        Ok(Ok(m)) if m.is_dir() => Ok(()),
        Ok(Ok(_)) => Err(Error::invalid(format!("cwd {shown} is not a directory"))),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::invalid(format!("cwd {shown} does not exist")))
        }
        Ok(Err(e)) => Err(Error::invalid(format!("cwd {shown}: {e}"))),
        Err(e) => Err(Error::internal(e.to_string())),
    }
}

/// Reads a terminal into its fan-out until the process has exited and the
/// terminal is drained; kills its tree at the timeout.
async fn read_tty(
    tty: Arc<Tty>,
    term: Arc<Terminal>,
    exit: tokio::sync::oneshot::Receiver<crate::process::reaper::ExitStatus>,
    done: watch::Sender<Option<Exit>>,
    drain: Duration,
    timeout: Option<Duration>,
) {
    let mut exit = std::pin::pin!(exit);
    let mut status: Option<crate::process::reaper::ExitStatus> = None;
    let mut timed_out = false;
    let mut buf = vec![0u8; CHUNK];
    let far = Duration::from_secs(86400 * 365);
    let deadline = tokio::time::sleep(timeout.unwrap_or(far));
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            r = term.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    if status.is_none() {
                        status = exit.as_mut().await.ok();
                    }
                    break;
                }
                Ok(n) => {
                    // No receiver is fine: output nobody reads is dropped.
                    let _ = tty.out.send(Bytes::copy_from_slice(&buf[..n]));
                }
            },
            s = exit.as_mut(), if status.is_none() => {
                status = Some(s.unwrap_or_default());
                deadline.as_mut().reset(tokio::time::Instant::now() + drain);
            },
            _ = deadline.as_mut() => {
                if status.is_some() {
                    break;
                }
                // The timeout: the whole tree goes.
                timed_out = true;
                term.tree.kill();
                deadline.as_mut().reset(tokio::time::Instant::now() + far);
            }
        }
    }
    // The terminal closes once no call uses it any more.
    *tty.term.lock().unwrap_or_else(|p| p.into_inner()) = None;
    drop(term);
    let s = status.unwrap_or_default();
    let _ = done.send(Some(Exit {
        code: s.code,
        signal: s.signal,
        error: None,
        timed_out,
    }));
}

/// Streams a process's output into `tx` from event `from` (pipes) or from
/// the fan-out (terminal), with keepalives, then its end event. Ends early,
/// leaving the process running, when the client goes away.
async fn follow(
    proc_: Arc<Proc>,
    tty_rx: Option<broadcast::Receiver<Bytes>>,
    from: u64,
    tx: connect::Sender<EventResponse>,
    ka: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(ka);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let ended = match (&proc_.kind, tty_rx) {
        (Kind::Pipes(_), _) => match proc_.cmd() {
            Some(cmd) => follow_log(&cmd, from, &tx, &mut tick, &stop).await,
            None => true,
        },
        (Kind::Tty(t), Some(rx)) => follow_tty(t, rx, &tx, &mut tick, &stop).await,
        (Kind::Tty(t), None) => follow_tty(t, t.out.subscribe(), &tx, &mut tick, &stop).await,
    };
    if !ended {
        return;
    }
    let Some(exit) = proc_.exit() else {
        return;
    };
    let _ = tx.send(Ok(event(Event::End(exit.event())))).await;
    if exit.timed_out {
        let _ = tx
            .send(Err(Error::new(
                Code::DeadlineExceeded,
                "the process ran past Connect-Timeout-Ms; its process tree was killed",
            )))
            .await;
    }
}

/// Follows a command's log; true when it ended, false when the client left.
async fn follow_log(
    cmd: &Command,
    next: u64,
    tx: &connect::Sender<EventResponse>,
    tick: &mut tokio::time::Interval,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut log = Follower::new(cmd, next);
    loop {
        match log.step(256 * 1024).await {
            Step::Events(evs) => {
                for ev in &evs {
                    for piece in ev.data.chunks(CHUNK) {
                        let out = match ev.stream {
                            Stream::Stdout => Output::Stdout(piece.to_vec()),
                            Stream::Stderr => Output::Stderr(piece.to_vec()),
                        };
                        let e = event(Event::Data(DataEvent { output: Some(out) }));
                        if tx.send(Ok(e)).await.is_err() {
                            return false;
                        }
                    }
                }
            }
            Step::Gap { .. } => {}
            Step::End { .. } => return true,
            Step::Idle => tokio::select! {
                () = log.changed() => {}
                _ = tx.closed() => return false,
                _ = stop.cancelled() => return false,
                _ = tick.tick() => {
                    if tx.send(Ok(event(Event::Keepalive(Empty {})))).await.is_err() {
                        return false;
                    }
                }
            },
        }
    }
}

/// Follows a terminal's fan-out; true when the process ended.
async fn follow_tty(
    tty: &Tty,
    mut rx: broadcast::Receiver<Bytes>,
    tx: &connect::Sender<EventResponse>,
    tick: &mut tokio::time::Interval,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let mut exit = tty.exit.clone();
    loop {
        if exit.borrow_and_update().is_some() {
            // Drain what the reader sent before it ended.
            while let Ok(d) = rx.try_recv() {
                let e = event(Event::Data(DataEvent {
                    output: Some(Output::Pty(d.to_vec())),
                }));
                if tx.send(Ok(e)).await.is_err() {
                    return false;
                }
            }
            return true;
        }
        tokio::select! {
            r = rx.recv() => match r {
                Ok(d) => {
                    let e = event(Event::Data(DataEvent { output: Some(Output::Pty(d.to_vec())) }));
                    if tx.send(Ok(e)).await.is_err() {
                        return false;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return true,
            },
            r = exit.changed() => if r.is_err() { return true },
            _ = tx.closed() => return false,
            _ = stop.cancelled() => return false,
            _ = tick.tick() => {
                if tx.send(Ok(event(Event::Keepalive(Empty {})))).await.is_err() {
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_events_read_as_envds() {
        let e = Exit {
            code: Some(3),
            ..Default::default()
        }
        .event();
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (3, true, "exit status 3")
        );
        let e = Exit {
            signal: Some(libc::SIGKILL),
            ..Default::default()
        }
        .event();
        assert_eq!(
            (e.exit_code, e.exited, e.status.as_str()),
            (-1, false, "signal: killed")
        );
    }

    #[test]
    fn keepalive_header() {
        let mut h = http::HeaderMap::new();
        assert_eq!(keepalive(&h), KEEPALIVE_DEFAULT);
        h.insert("keepalive-ping-interval", "50".parse().unwrap());
        assert_eq!(keepalive(&h), Duration::from_secs(50));
        h.insert("keepalive-ping-interval", "x".parse().unwrap());
        assert_eq!(keepalive(&h), KEEPALIVE_DEFAULT);
    }
}
