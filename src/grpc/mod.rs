//! sandboxd's gRPC `process.v1.ProcessService`, on the main port (HTTP/2,
//! `content-type: application/grpc…`) and optionally on `--grpc-port`.
//!
//! Every process goes through the same engine as `/command`: its own process
//! group, the one reaper, the bounded output log. `Start` streams the log as
//! `stdout`/`stderr` events and ends with `exit`; a stream the client drops
//! ends the process group. `Execute` gathers at most [`OUTPUT_CAP`] bytes
//! per stream (so the reply stays below gRPC's default 4 MiB limit) within a
//! server-side time limit.
//!
//! `watcher.v1.FileWatcherService` (directory watches) is served beside it,
//! from [`watcher`]: [`Server`] routes a request to one or the other by path.

#[allow(clippy::all, clippy::pedantic)]
pub mod process_v1;
pub mod watcher;
#[allow(clippy::all, clippy::pedantic)]
pub mod watcher_v1;

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::fs::confined::{sandboxd_path, ConfineError, Root};
use crate::process::capture::{capture, with_marker};
use crate::process::follow::{Follower, Step};
use crate::process::{Command, CommandSpec, Engine, Program, Stream};
use process_v1::process_service_server::{ProcessService, ProcessServiceServer};
use process_v1::{
    start_response, write_stdin_request, ExecuteRequest, ExecuteResponse, ExitEvent, InitEvent,
    ProcessConfig, ResizeTtyRequest, ResizeTtyResponse, SendSignalRequest, SendSignalResponse,
    StartRequest, StartResponse, WriteStdinRequest, WriteStdinResponse,
};
use watcher_v1::file_watcher_service_server::FileWatcherServiceServer;

/// Output kept per stream of one `Execute`.
pub const OUTPUT_CAP: usize = 1 << 20;
/// Largest `stdout`/`stderr` event of a `Start` stream.
const CHUNK: usize = 64 * 1024;
/// Events queued for a slow `Start` reader before the log is read again.
const QUEUE: usize = 16;

/// The tower service to mount: `process.v1` and `watcher.v1`, told apart by
/// the request path.
#[derive(Clone)]
pub struct Server {
    process: ProcessServiceServer<Processes>,
    watcher: FileWatcherServiceServer<watcher::Watcher>,
}

/// Builds the services; `watches` is the cap shared with `GET /files/watch`.
pub fn server(
    engine: Arc<Engine>,
    root: PathBuf,
    config: &crate::config::Config,
    watches: Arc<crate::fs::watch::Watches>,
) -> Server {
    let watcher = FileWatcherServiceServer::new(watcher::Watcher {
        root: root.clone(),
        watches,
        debounce: config.watch_debounce,
    });
    let process = ProcessServiceServer::new(Processes {
        engine,
        root,
        exec_timeout: config.agent_exec_timeout,
        next_id: AtomicI32::new(1),
        live: Arc::new(Mutex::new(HashMap::new())),
    });
    Server { process, watcher }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Server
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req
            .uri()
            .path()
            .starts_with("/watcher.v1.FileWatcherService/")
        {
            self.watcher.call(req)
        } else {
            self.process.call(req)
        }
    }
}

/// True for a gRPC request (by its content type).
pub fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
}

/// A process of an open `Start` stream.
#[derive(Clone)]
enum Proc {
    /// Pipes, through the engine's output log.
    Pipes(Arc<Command>),
    /// A pseudo-terminal.
    Tty(Arc<Tty>),
}

/// A `Start` process on a terminal.
pub struct Tty {
    term: crate::process::terminal::Terminal,
    done: std::sync::atomic::AtomicBool,
}

impl Tty {
    fn running(&self) -> bool {
        !self.done.load(Ordering::SeqCst)
    }

    /// Kills every process the terminal's process started, also after it
    /// has exited itself (what it left behind goes with the stream).
    fn kill(&self) {
        self.term.tree.kill();
    }
}

type Live = Arc<Mutex<HashMap<i32, Proc>>>;

/// The service state: the engine, the root that confines `cwd`, and the
/// processes of open `Start` streams by their virtual id.
pub struct Processes {
    engine: Arc<Engine>,
    root: PathBuf,
    exec_timeout: Duration,
    next_id: AtomicI32,
    live: Live,
}

fn lock(live: &Live) -> std::sync::MutexGuard<'_, HashMap<i32, Proc>> {
    live.lock().unwrap_or_else(|p| p.into_inner())
}

impl Processes {
    /// Validates a `ProcessConfig` into a spec: argv required, `cwd`
    /// confined to the root (and must be a directory).
    async fn spec(&self, cfg: Option<ProcessConfig>, stdin: bool) -> Result<CommandSpec, Status> {
        let cfg = cfg.unwrap_or_default();
        if cfg.command.is_empty() || cfg.command[0].is_empty() {
            return Err(Status::invalid_argument("command is required"));
        }
        if cfg.command.iter().any(|a| a.contains('\0'))
            || cfg.env_vars.values().any(|v| v.contains('\0'))
        {
            return Err(Status::invalid_argument(
                "command and environment values must not contain NUL bytes",
            ));
        }
        for k in cfg.env_vars.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(Status::invalid_argument(format!(
                    "invalid environment variable name {k:?}"
                )));
            }
        }
        let root = self.root.clone();
        let cwd_arg = cfg.cwd.clone().unwrap_or_default();
        let cwd = tokio::task::spawn_blocking(move || -> Result<PathBuf, Status> {
            let r = Root::open(&root)
                .map_err(|e| Status::internal(format!("sandbox root {}: {e}", root.display())))?;
            let rel = sandboxd_path(&cwd_arg, r.path()).map_err(|e| cwd_status(e, &cwd_arg))?;
            let st = r.stat(&rel).map_err(|e| cwd_status(e, &cwd_arg))?;
            if !st.is_dir {
                return Err(Status::not_found(format!(
                    "cwd: {cwd_arg:?} is not a directory"
                )));
            }
            Ok(r.path().join(rel.to_path()))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(CommandSpec {
            program: Program::Argv(cfg.command),
            cwd: Some(cwd),
            envs: cfg.env_vars.into_iter().collect(),
            timeout: None,
            uid: None,
            gid: None,
            background: false,
            stdin,
        })
    }

    /// Starts `spec`; the guard ends its tree if the caller goes away first.
    /// A spawn that failed is its status (not found, permission denied).
    fn launch(&self, spec: CommandSpec) -> Result<KillGuard, Status> {
        let cmd = self
            .engine
            .start_command(spec)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        if let Some(s) = spawn_status(&cmd) {
            return Err(s);
        }
        Ok(KillGuard {
            engine: self.engine.clone(),
            cmd,
        })
    }

    fn find(&self, id: i32) -> Result<Proc, Status> {
        lock(&self.live)
            .get(&id)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("process {id} not found")))
    }
}

fn cwd_status(e: ConfineError, cwd: &str) -> Status {
    match e {
        ConfineError::Escapes => {
            Status::permission_denied(format!("cwd: {cwd:?} escapes the sandbox root"))
        }
        e if e.is_not_found() => Status::not_found(format!("cwd: {cwd:?}: {e}")),
        e if matches!(e.errno(), Some(libc::EACCES | libc::EPERM)) => {
            Status::permission_denied(format!("cwd: {cwd:?}: {e}"))
        }
        e => Status::internal(format!("cwd: {cwd:?}: {e}")),
    }
}

/// The status for a command that could not be started (recorded by the
/// engine as exit 127 / 126).
fn spawn_status(cmd: &Command) -> Option<Status> {
    let f = cmd.finished().filter(|f| f.spawn_failed)?;
    let why = f.error.unwrap_or_else(|| "cannot start the command".into());
    Some(match f.exit_code {
        127 => Status::not_found(why),
        126 => Status::permission_denied(why),
        _ => Status::internal(why),
    })
}

/// Ends the command's whole tree unless it has finished: a dropped request or
/// stream must not leave processes behind.
struct KillGuard {
    engine: Arc<Engine>,
    cmd: Arc<Command>,
}

impl Drop for KillGuard {
    fn drop(&mut self) {
        if self.cmd.is_running() {
            self.cmd.kill_tree();
            let _ = self.engine.interrupt(&self.cmd.id);
        }
    }
}

/// A `Start` stream: events from the task that follows the log.
pub struct StartStream {
    rx: tokio::sync::mpsc::Receiver<Result<StartResponse, Status>>,
}

impl futures_core::Stream for StartStream {
    type Item = Result<StartResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

fn event(e: start_response::Event) -> Result<StartResponse, Status> {
    Ok(StartResponse { event: Some(e) })
}

/// Follows `cmd`'s log into `tx` until the command ends (then `exit`) or
/// the receiver is gone (then the process group is killed).
async fn follow(
    guard: KillGuard,
    id: i32,
    live: Live,
    tx: tokio::sync::mpsc::Sender<Result<StartResponse, Status>>,
) {
    let cmd = guard.cmd.clone();
    let mut log = Follower::new(&*cmd, 1);
    let ok = 'outer: loop {
        match log.step(256 * 1024).await {
            Step::Events(evs) => {
                for ev in &evs {
                    for piece in ev.data.chunks(CHUNK) {
                        let e = match ev.stream {
                            Stream::Stdout => start_response::Event::Stdout(piece.to_vec()),
                            Stream::Stderr => start_response::Event::Stderr(piece.to_vec()),
                        };
                        if tx.send(event(e)).await.is_err() {
                            break 'outer false;
                        }
                    }
                }
            }
            Step::Gap { .. } => {}
            Step::End { .. } => break true,
            Step::Idle => tokio::select! {
                () = log.changed() => {}
                () = tx.closed() => break false,
            },
        }
    };
    lock(&live).remove(&id);
    if ok {
        let exit_code = cmd.finished().map_or(-1, |f| f.exit_code);
        let _ = tx
            .send(event(start_response::Event::Exit(ExitEvent { exit_code })))
            .await;
    }
    drop(guard);
}

impl Processes {
    /// `Start` with `pty`: the process on a new terminal; all its output
    /// arrives as `stdout` events.
    async fn start_tty(
        &self,
        cfg: Option<ProcessConfig>,
        pty: process_v1::Pty,
    ) -> Result<Response<StartStream>, Status> {
        use crate::process::spawn::SpawnError;
        let spec = self.spec(cfg, false).await?;
        let clamp = |n: u32| n.min(u32::from(u16::MAX)) as u16;
        let (term, exit) = self
            .engine
            .start_terminal(&spec, clamp(pty.cols), clamp(pty.rows))
            .map_err(|e| match e {
                SpawnError::NotFound { .. } => Status::not_found(e.to_string()),
                SpawnError::PermissionDenied { .. } => Status::permission_denied(e.to_string()),
                _ => Status::internal(e.to_string()),
            })?;
        let tty = Arc::new(Tty {
            term,
            done: std::sync::atomic::AtomicBool::new(false),
        });
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(id, Proc::Tty(tty.clone()));
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let _ = tx
            .send(event(start_response::Event::Init(InitEvent {
                process_id: id,
            })))
            .await;
        let drain = self.engine.config().drain;
        self.engine
            .tasks()
            .spawn(follow_tty(tty, exit, drain, id, self.live.clone(), tx));
        Ok(Response::new(StartStream { rx }))
    }
}

/// Kills a terminal's process tree unless the stream completed (a process
/// that ended normally may leave background jobs, as a command may).
struct TtyGuard(Arc<Tty>, bool);

impl Drop for TtyGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.kill();
        }
    }
}

/// Streams a terminal's output until the process has exited and the
/// terminal is drained (EOF, or `drain` after the exit), then `exit`.
async fn follow_tty(
    tty: Arc<Tty>,
    exit: tokio::sync::oneshot::Receiver<crate::process::reaper::ExitStatus>,
    drain: Duration,
    id: i32,
    live: Live,
    tx: tokio::sync::mpsc::Sender<Result<StartResponse, Status>>,
) {
    let mut guard = TtyGuard(tty.clone(), false);
    let mut exit = std::pin::pin!(exit);
    let mut status = None;
    let mut buf = vec![0u8; CHUNK];
    let deadline = tokio::time::sleep(Duration::MAX.min(Duration::from_secs(86400 * 365)));
    let mut deadline = std::pin::pin!(deadline);
    let ok = loop {
        tokio::select! {
            r = tty.term.read(&mut buf) => match r {
                Ok(0) | Err(_) => {
                    if status.is_none() {
                        status = exit.as_mut().await.ok();
                    }
                    break true;
                }
                Ok(n) => {
                    let e = start_response::Event::Stdout(buf[..n].to_vec());
                    if tx.send(event(e)).await.is_err() {
                        break false;
                    }
                }
            },
            s = exit.as_mut(), if status.is_none() => {
                status = Some(s.unwrap_or_default());
                tty.done.store(true, Ordering::SeqCst);
                deadline.as_mut().reset(tokio::time::Instant::now() + drain);
            },
            _ = deadline.as_mut(), if status.is_some() => break true,
            _ = tx.closed() => break false,
        }
    };
    if ok {
        tty.done.store(true, Ordering::SeqCst);
    }
    guard.1 = ok;
    drop(guard);
    lock(&live).remove(&id);
    if ok {
        let exit_code = status.and_then(|s| s.code).unwrap_or(-1);
        let _ = tx
            .send(event(start_response::Event::Exit(ExitEvent { exit_code })))
            .await;
    }
}

/// The `grpc-timeout` header (`<digits><unit>`), if any.
fn grpc_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[tonic::async_trait]
impl ProcessService for Processes {
    type StartStream = StartStream;

    async fn start(
        &self,
        request: Request<StartRequest>,
    ) -> Result<Response<Self::StartStream>, Status> {
        let req = request.into_inner();
        if let Some(pty) = req.pty {
            return self.start_tty(req.config, pty).await;
        }
        let spec = self.spec(req.config, true).await?;
        let guard = self.launch(spec)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        lock(&self.live).insert(id, Proc::Pipes(guard.cmd.clone()));
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        // Registered before the client learns the id, as sandboxd does.
        let _ = tx
            .send(event(start_response::Event::Init(InitEvent {
                process_id: id,
            })))
            .await;
        self.engine
            .tasks()
            .spawn(follow(guard, id, self.live.clone(), tx));
        Ok(Response::new(StartStream { rx }))
    }

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let limit = grpc_timeout(request.metadata())
            .map_or(self.exec_timeout, |t| t.min(self.exec_timeout));
        let mut spec = self.spec(request.into_inner().config, false).await?;
        spec.timeout = Some(limit);
        let guard = self.launch(spec)?;
        let cmd = guard.cmd.clone();
        let (out, finished) = capture(&cmd, OUTPUT_CAP).await;
        drop(guard);
        let f = finished.ok_or_else(|| Status::internal("command record lost"))?;
        if f.timed_out {
            return Err(Status::deadline_exceeded(format!(
                "command timed out after {}s; its process tree was killed",
                limit.as_secs_f64()
            )));
        }
        Ok(Response::new(ExecuteResponse {
            exit_code: f.exit_code,
            stdout: with_marker(out.stdout, out.stdout_omitted),
            stderr: with_marker(out.stderr, out.stderr_omitted),
        }))
    }

    async fn write_stdin(
        &self,
        request: Request<WriteStdinRequest>,
    ) -> Result<Response<WriteStdinResponse>, Status> {
        let req = request.into_inner();
        let cmd = match self.find(req.process_id)? {
            Proc::Pipes(cmd) => cmd,
            Proc::Tty(tty) => {
                let r = match req.payload {
                    Some(write_stdin_request::Payload::Input(data)) => tty.term.write(&data).await,
                    // End of input on a terminal is the EOF character (^D),
                    // which keeps the terminal open for the exit and output.
                    Some(write_stdin_request::Payload::Eof(())) => tty.term.write(b"\x04").await,
                    None => Ok(()),
                };
                r.map_err(|e| Status::failed_precondition(format!("terminal input: {e}")))?;
                return Ok(Response::new(WriteStdinResponse {}));
            }
        };
        let mut stdin = cmd
            .stdin()
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        match req.payload {
            Some(write_stdin_request::Payload::Input(data)) => stdin
                .write(&data)
                .await
                .map_err(|e| Status::failed_precondition(e.to_string()))?,
            Some(write_stdin_request::Payload::Eof(())) => stdin.close(),
            None => {}
        }
        Ok(Response::new(WriteStdinResponse {}))
    }

    async fn send_signal(
        &self,
        request: Request<SendSignalRequest>,
    ) -> Result<Response<SendSignalResponse>, Status> {
        let req = request.into_inner();
        let sig = match req.signal {
            2 => nix::sys::signal::Signal::SIGINT as i32,
            9 => nix::sys::signal::Signal::SIGKILL as i32,
            15 => nix::sys::signal::Signal::SIGTERM as i32,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unsupported signal {other}: use SIGINT, SIGTERM or SIGKILL"
                )))
            }
        };
        match self.find(req.process_id)? {
            Proc::Pipes(cmd) => {
                if let (true, Some(pid)) = (cmd.is_running(), cmd.pid) {
                    crate::process::spawn::signal_group(pid, sig);
                }
            }
            Proc::Tty(tty) => {
                if tty.running() {
                    crate::process::spawn::signal_group(tty.term.pid, sig);
                }
            }
        }
        Ok(Response::new(SendSignalResponse {}))
    }

    async fn resize_tty(
        &self,
        request: Request<ResizeTtyRequest>,
    ) -> Result<Response<ResizeTtyResponse>, Status> {
        let req = request.into_inner();
        match self.find(req.process_id)? {
            Proc::Tty(tty) if tty.running() => {
                let clamp = |n: u32| n.min(u32::from(u16::MAX)) as u16;
                tty.term
                    .resize(clamp(req.cols), clamp(req.rows))
                    .map_err(|e| Status::failed_precondition(format!("resize: {e}")))?;
                Ok(Response::new(ResizeTtyResponse {}))
            }
            Proc::Tty(_) => Err(Status::failed_precondition(format!(
                "process {} has exited",
                req.process_id
            ))),
            Proc::Pipes(_) => Err(Status::failed_precondition(format!(
                "process {} has no terminal",
                req.process_id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let mut m = tonic::metadata::MetadataMap::new();
        assert_eq!(grpc_timeout(&m), None);
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(1500)));
        m.insert("grpc-timeout", "2S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(2)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
