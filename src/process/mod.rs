//! The process engine: spawning, reaping, output logs and command records.
//! Nothing in here knows about HTTP.

pub mod capture;
pub mod datadir;
pub mod envfile;
pub mod follow;
pub mod foreground;
pub mod lines;
pub mod output;
pub mod pidfd;
pub mod pty;
pub mod reaper;
pub mod registry;
pub mod run;
pub mod session;
pub mod spawn;
pub mod sys;
pub mod terminal;
pub mod tree;
pub mod users;
pub mod vfork;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use output::{Gap, Head, OutputEvent, Stream};
pub use reaper::Resources;
pub use registry::{Command, Finished, State};
pub use session::SessionError;
pub use spawn::Program;

use datadir::DataDir;
use output::{LogLimits, MemBudget, OutputLog};
use reaper::Reaper;
use run::RunLimits;
use spawn::SpawnSpec;

/// Engine settings, from the daemon's configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub shell: PathBuf,
    pub limits: LogLimits,
    /// Output held in memory across all commands before they spill early.
    pub mem_total: usize,
    /// The private data directory (spilled output, session state), made
    /// and checked at start-up; it also holds the daemon-wide spill budget.
    pub data_dir: Arc<DataDir>,
    /// Commands running at once (background and session runs included).
    pub max_running: usize,
    /// Bash sessions at once.
    pub max_sessions: usize,
    /// A session with nothing run for this long is deleted.
    pub session_idle: Duration,
    pub retention: Duration,
    /// Finished command records kept at most (the oldest are dropped first).
    pub max_records: usize,
    pub drain: Duration,
    pub kill_grace: Duration,
    /// Longest partial line held back before it is emitted in pieces.
    pub max_line: usize,
    /// `EXECD_ENVS`: a file of variables applied to every command.
    pub env_file: Option<PathBuf>,
    /// The environment commands inherit (the daemon's, minus its secrets).
    pub base_env: Vec<(OsString, OsString)>,
    /// `base_env` is exactly the daemon's own environment (the daemon removed
    /// its secrets from it at start-up), so a command that adds nothing to it
    /// may inherit it directly.
    pub inherit_env: bool,
    /// Whether each command gets a cgroup of its own where possible.
    pub cgroups: tree::CgroupMode,
}

/// A request to run a command, already validated by the caller.
#[derive(Clone, Debug)]
pub struct CommandSpec {
    pub program: Program,
    pub cwd: Option<PathBuf>,
    pub envs: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub background: bool,
    pub stdin: bool,
}

/// Errors of the command API that are not about a single spawn.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("command not found: {0}")]
    NotFound(String),
    #[error("command {0} is not running")]
    NotRunning(String),
    #[error("command {0} was not started with \"stdin\": true")]
    NoStdin(String),
    #[error("stdin of command {0} is closed")]
    StdinClosed(String),
    #[error("writing to stdin of command {id}: {source}")]
    StdinWrite { id: String, source: std::io::Error },
    #[error("too many commands running (at most {0}, --max-running); retry once some end")]
    TooManyRunning(usize),
}

/// One of the `--max-running` slots, held by a command's run task until the
/// command has ended.
struct RunSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for RunSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Default)]
struct EnvFileCache {
    key: Option<(PathBuf, SystemTime, u64)>,
    vars: Vec<(String, String)>,
}

/// The process engine. One per daemon.
pub struct Engine {
    cfg: EngineConfig,
    reaper: Arc<Reaper>,
    trees: Arc<tree::Trees>,
    registry: registry::Registry,
    budget: Arc<MemBudget>,
    data: Arc<DataDir>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    env_cache: Mutex<EnvFileCache>,
    /// A runtime binding's variables (`POST /internal/init`), applied after
    /// `EXECD_ENVS` and before a request's own; replaced whole by each binding.
    runtime_envs: std::sync::RwLock<Arc<Vec<(String, String)>>>,
    sessions: session::Sessions,
    pty: pty::PtyManager,
    /// Commands running now, against `cfg.max_running`.
    slots: Arc<std::sync::atomic::AtomicUsize>,
}

impl Engine {
    /// Starts the reaper and the retention sweeper. Call within a tokio runtime.
    pub fn start(cfg: EngineConfig) -> Arc<Engine> {
        let reaper = Reaper::start();
        let trees = tree::Trees::new(cfg.cgroups, reaper.clone());
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let pty = pty::PtyManager::new(
            reaper.clone(),
            trees.clone(),
            cfg.shell.clone(),
            cfg.drain,
            tasks.clone(),
            shutdown.clone(),
        );
        let engine = Arc::new(Engine {
            reaper,
            trees,
            registry: registry::Registry::new(cfg.max_records),
            budget: MemBudget::new(cfg.mem_total),
            data: cfg.data_dir.clone(),
            tasks,
            shutdown,
            env_cache: Mutex::new(EnvFileCache::default()),
            runtime_envs: Default::default(),
            sessions: session::Sessions::default(),
            pty,
            slots: Arc::default(),
            cfg,
        });
        if engine.trees.cgroups() {
            // The cgroups of ended commands whose background jobs lived on
            // are removed once empty; the last member to exit is execd's
            // child (it is their subreaper), so a reap is the moment to look.
            let (reaper, trees) = (engine.reaper.clone(), engine.trees.clone());
            let stop = engine.shutdown.clone();
            engine.tasks.spawn(async move {
                loop {
                    let reaped = reaper.reaped();
                    tokio::pin!(reaped);
                    reaped.as_mut().enable();
                    trees.sweep();
                    tokio::select! {
                        _ = reaped => {}
                        _ = stop.cancelled() => return,
                    }
                }
            });
        }
        let weak = Arc::downgrade(&engine);
        let stop = engine.shutdown.clone();
        let every = (engine.cfg.retention.min(engine.cfg.session_idle) / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60));
        engine.tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                let Some(engine) = weak.upgrade() else { return };
                let n = engine.registry.expire(engine.cfg.retention);
                if n > 0 {
                    tracing::debug!(expired = n, "expired finished commands");
                }
                let n = engine.expire_sessions();
                if n > 0 {
                    tracing::debug!(expired = n, "expired idle sessions");
                }
            }
        });
        engine
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// PTY sessions.
    pub fn pty(&self) -> &pty::PtyManager {
        &self.pty
    }

    /// The environment of a process started with no request `envs` and as
    /// execd's own user (PTY shells, new sessions, the init-mode main process):
    /// the daemon's environment, then `EXECD_ENVS`.
    pub fn default_env(&self) -> Vec<(OsString, OsString)> {
        self.command_env_vec(&plain_spec())
    }

    /// Starts a command. Returns a record even for a command that could not
    /// be started: it is recorded as finished with the cause (exit 127 or
    /// 126). Refused, with no record, past `--max-running`.
    pub fn start_command(&self, spec: CommandSpec) -> Result<Arc<Command>, ProcessError> {
        let content = match &spec.program {
            Program::Shell(line) => line.clone(),
            Program::Argv(argv) => argv.join(" "),
        };
        let env = self.command_env(&spec);
        self.launch(spec, content, env)
    }

    /// Starts `spec` with exactly `env` (no `EXECD_ENVS` or identity added),
    /// recording `content` as what was asked: for callers that wrap the
    /// user's code in a helper program (isolated sessions).
    pub fn start_with_env(
        &self,
        spec: CommandSpec,
        content: String,
        env: Vec<(OsString, OsString)>,
    ) -> Result<Arc<Command>, ProcessError> {
        self.launch(spec, content, Some(env))
    }

    /// A `--max-running` slot, if one is free.
    fn run_slot(&self) -> Result<RunSlot, ProcessError> {
        use std::sync::atomic::Ordering;
        let max = self.cfg.max_running;
        self.slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| ProcessError::TooManyRunning(max))?;
        Ok(RunSlot(self.slots.clone()))
    }

    /// A new command id and its output log, with the engine's limits,
    /// memory budget and spill directory.
    fn new_log(&self) -> (String, OutputLog) {
        let id = new_id();
        let log = OutputLog::new(
            id.clone(),
            self.cfg.limits.clone(),
            self.budget.clone(),
            self.data.clone(),
        );
        (id, log)
    }

    /// Starts `spec` with exactly `env`, recording `content` as what was asked.
    fn launch(
        &self,
        spec: CommandSpec,
        content: String,
        env: Option<Vec<(OsString, OsString)>>,
    ) -> Result<Arc<Command>, ProcessError> {
        let slot = self.run_slot()?;
        let (id, log) = self.new_log();
        let spawned = spawn::spawn(
            &self.reaper,
            &self.trees,
            SpawnSpec {
                program: spec.program.clone(),
                shell: self.cfg.shell.clone(),
                cwd: spec.cwd.clone(),
                env,
                uid: spec.uid,
                gid: spec.gid,
                stdin_pipe: spec.stdin,
            },
        );
        match spawned {
            Ok(mut sp) => {
                let stdin = sp.stdin.take().and_then(|fd| {
                    tokio::net::unix::pipe::Sender::from_owned_fd(fd)
                        .map_err(|e| tracing::warn!(error = %e, "cannot watch stdin pipe"))
                        .ok()
                });
                let cmd = Arc::new(
                    Command::new(
                        id,
                        content,
                        spec.background,
                        Some(sp.pid),
                        log,
                        stdin,
                        Some(sp.tree.clone()),
                    )
                    .with_uid(spec.uid),
                );
                self.registry.insert(cmd.clone());
                let limits = RunLimits {
                    timeout: spec.timeout,
                    drain: self.cfg.drain,
                    kill_grace: self.cfg.kill_grace,
                    max_line: self.cfg.max_line,
                };
                let run = run::run(
                    cmd.clone(),
                    sp,
                    limits,
                    self.reaper.clone(),
                    self.shutdown.child_token(),
                );
                self.tasks.spawn(async move {
                    let _slot = slot;
                    run.await
                });
                tracing::debug!(id = %cmd.id, pid = cmd.pid, background = spec.background, "command started");
                Ok(cmd)
            }
            Err(e) => {
                tracing::info!(id = %id, error = %e, "command failed to start");
                let cmd = Arc::new(
                    Command::new(id, content, spec.background, None, log, None, None)
                        .with_uid(spec.uid),
                );
                cmd.finish(Finished {
                    exit_code: e.shell_code(),
                    signal: None,
                    timed_out: false,
                    interrupted: false,
                    error: Some(e.to_string()),
                    spawn_failed: true,
                    finished_at: SystemTime::now(),
                    duration: Duration::ZERO,
                    resources: Resources::default(),
                    dropped_bytes: 0,
                });
                self.registry.insert(cmd.clone());
                Ok(cmd)
            }
        }
    }

    /// Starts the sandbox's main process (init mode): execd's stdio, its own
    /// process group, the command environment. Returns its pid (= pgid) and exit.
    pub fn spawn_main(
        &self,
        argv: Vec<String>,
    ) -> Result<(i32, tokio::sync::oneshot::Receiver<reaper::ExitStatus>), spawn::SpawnError> {
        let env = self.command_env(&plain_spec());
        spawn::spawn_inherit(
            &self.reaper,
            SpawnSpec {
                program: Program::Argv(argv),
                shell: self.cfg.shell.clone(),
                cwd: None,
                env,
                uid: None,
                gid: None,
                stdin_pipe: false,
            },
        )
    }

    /// A record for output made outside the engine's own processes (a code
    /// run): a new id, an output log with the usual limits, registered so
    /// that status, logs and resume find it. Its owner appends to the log
    /// and finishes the record.
    pub fn register_record(&self, content: String) -> Arc<Command> {
        let (id, log) = self.new_log();
        let cmd = Arc::new(Command::new(id, content, false, None, log, None, None));
        self.registry.insert(cmd.clone());
        cmd
    }

    /// Starts a long-lived helper process (a Jupyter kernel) with exactly
    /// `env`: its own process group, stdin `/dev/null`, stdout and stderr
    /// piped, its exit collected by the reaper.
    pub fn spawn_helper(
        &self,
        argv: Vec<String>,
        env: Vec<(OsString, OsString)>,
        cwd: Option<PathBuf>,
    ) -> Result<spawn::Spawned, spawn::SpawnError> {
        spawn::spawn(
            &self.reaper,
            &self.trees,
            SpawnSpec {
                program: Program::Argv(argv),
                shell: self.cfg.shell.clone(),
                cwd,
                env: Some(env),
                uid: None,
                gid: None,
                stdin_pipe: false,
            },
        )
    }

    /// Starts `spec`'s argv on a new pseudo-terminal of `cols`×`rows`, in
    /// the command environment. Returns the terminal and the exit status.
    pub fn start_terminal(
        &self,
        spec: &CommandSpec,
        cols: u16,
        rows: u16,
    ) -> Result<
        (
            terminal::Terminal,
            tokio::sync::oneshot::Receiver<reaper::ExitStatus>,
        ),
        spawn::SpawnError,
    > {
        let argv = match &spec.program {
            Program::Argv(a) if !a.is_empty() => a.clone(),
            Program::Argv(_) => vec![self.cfg.shell.to_string_lossy().into_owned()],
            Program::Shell(line) => vec![
                self.cfg.shell.to_string_lossy().into_owned(),
                "-c".into(),
                line.clone(),
            ],
        };
        let env = self.command_env_vec(spec);
        let creds = spec.uid.map(|uid| users::credentials(uid, spec.gid));
        terminal::spawn(
            &self.reaper,
            &self.trees,
            &argv,
            spec.cwd.clone(),
            env,
            (cols, rows),
            creds,
        )
    }

    pub fn get(&self, id: &str) -> Result<Arc<Command>, ProcessError> {
        self.registry
            .get(id)
            .ok_or_else(|| ProcessError::NotFound(id.to_string()))
    }

    /// SIGTERM to every process of the command's tree, SIGKILL to all of
    /// them after the grace period.
    /// A page of the command inventory (see [`registry::Registry::page`]).
    pub fn commands(
        &self,
        running: Option<bool>,
        before: Option<u64>,
        limit: usize,
    ) -> registry::Page {
        self.registry.page(running, before, limit)
    }

    pub fn interrupt(&self, id: &str) -> Result<(), ProcessError> {
        let cmd = self.get(id)?;
        if !cmd.is_running() {
            return Err(ProcessError::NotRunning(id.to_string()));
        }
        cmd.request_interrupt();
        Ok(())
    }

    /// Number of commands currently running.
    pub fn running(&self) -> usize {
        self.registry.running().len()
    }

    /// Bytes of output currently held in memory, all commands together.
    pub fn output_memory(&self) -> usize {
        self.budget.used()
    }

    /// The tracker that owns the engine's tasks; other layers may add theirs
    /// so shutdown waits for them too.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// A token cancelled when the engine shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Ends every running command (SIGTERM, grace, SIGKILL) and waits for the
    /// engine's tasks, at most `deadline`. Removes the data directory.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            for cmd in self.registry.running() {
                cmd.kill_tree();
            }
            self.pty.kill_all();
            tracing::warn!("shutdown deadline passed; remaining process trees killed");
        }
        self.trees.close();
        self.data.remove_all();
    }

    /// The private data directory's path (kernels' connection files go in a
    /// directory of their own inside it).
    /// Output spilled to the data directory, all commands together.
    pub fn spilled_bytes(&self) -> u64 {
        self.data.spilled()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// Replaces the runtime binding's variables (see `runtime_envs`).
    pub fn set_runtime_envs(&self, envs: Vec<(String, String)>) {
        *self.runtime_envs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(envs);
    }

    fn runtime_envs(&self) -> Arc<Vec<(String, String)>> {
        self.runtime_envs
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// [`Engine::command_env`] as a complete list.
    fn command_env_vec(&self, spec: &CommandSpec) -> Vec<(OsString, OsString)> {
        self.command_env(spec)
            .unwrap_or_else(|| self.cfg.base_env.clone())
    }

    /// The environment of a command: the daemon's, then `EXECD_ENVS`, then the
    /// runtime binding's variables, then the user's identity when switching uid, then the request's `envs`. `None`
    /// when that is the daemon's own environment unchanged (see
    /// [`EngineConfig::inherit_env`]): the spawn then passes it as it is,
    /// which spares building and copying every variable per command.
    fn command_env(&self, spec: &CommandSpec) -> Option<Vec<(OsString, OsString)>> {
        let file_vars = self.env_file_vars();
        let bound = self.runtime_envs();
        if self.cfg.inherit_env
            && file_vars.is_empty()
            && bound.is_empty()
            && spec.uid.is_none()
            && spec.envs.is_empty()
        {
            return None;
        }
        let mut env: std::collections::BTreeMap<OsString, OsString> =
            self.cfg.base_env.iter().cloned().collect();
        for (k, v) in file_vars {
            env.insert(k.into(), v.into());
        }
        for (k, v) in bound.iter() {
            env.insert(k.into(), v.into());
        }
        if let Some(uid) = spec.uid {
            let (name, home) = user_identity(uid);
            env.insert("HOME".into(), home.into());
            env.insert("USER".into(), name.clone().into());
            env.insert("LOGNAME".into(), name.into());
        }
        for (k, v) in &spec.envs {
            env.insert(k.into(), v.into());
        }
        Some(env.into_iter().collect())
    }

    /// `EXECD_ENVS` variables, re-read when the file changes.
    fn env_file_vars(&self) -> Vec<(String, String)> {
        let Some(path) = &self.cfg.env_file else {
            return Vec::new();
        };
        let Ok(meta) = std::fs::metadata(path) else {
            return Vec::new();
        };
        let key = (
            path.clone(),
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        let mut cache = self.env_cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.key.as_ref() != Some(&key) {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let base = &self.cfg.base_env;
            let (vars, warnings) = envfile::parse(&text, |name| {
                base.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.to_string_lossy().into_owned())
            });
            for w in warnings {
                tracing::warn!(file = %path.display(), "EXECD_ENVS {w}");
            }
            *cache = EnvFileCache {
                key: Some(key),
                vars,
            };
        }
        cache.vars.clone()
    }
}

/// The name and home a process running as `uid` gets in `USER`/`LOGNAME`
/// and `HOME`: its passwd entry's, else the uid as a number and `/` (never
/// execd's own home, nor an empty name).
pub fn user_identity(uid: u32) -> (String, String) {
    let user = users::user_by_uid(&users::read_db("/etc/passwd"), uid);
    let name = user
        .name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| uid.to_string());
    let home = user
        .home
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".into());
    (name, home)
}

/// A process started with no request `envs`, as execd's own user.
fn plain_spec() -> CommandSpec {
    CommandSpec {
        program: Program::Argv(Vec::new()),
        cwd: None,
        envs: Vec::new(),
        timeout: None,
        uid: None,
        gid: None,
        background: false,
        stdin: false,
    }
}

/// A new 32-hex-digit id from the kernel's random source.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    if sys::getrandom(&mut b).is_err() {
        // Fall back to time and a counter: ids must be unique, not secret.
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        b[..8].copy_from_slice(&(t as u64).to_le_bytes());
        b[8..].copy_from_slice(&c.to_le_bytes());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(32);
    for x in b {
        id.push(HEX[usize::from(x >> 4)] as char);
        id.push(HEX[usize::from(x & 15)] as char);
    }
    id
}
