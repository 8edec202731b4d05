//! Isolated sessions: a sandbox inside the sandbox. No HTTP in here.
//!
//! A session is a long-lived PID 1 in new mount, ipc, uts, pid and (unless
//! `share_net`) net namespaces, over a root built from the host's `/`
//! mounted read-only plus the session's writable set (overlays whose upper
//! layer lives in execd's data directory, `rw` binds, `ro` binds). See
//! [`helper`] for what runs on the other side of the namespaces.
//!
//! Runs are ordinary engine commands (output log, eids, resume, exit code,
//! timeout, process tree) whose program is execd's own `__isolate-enter`
//! helper: it joins PID 1's namespaces with `setns`, forks, and the child
//! drops the profile's capabilities and executes the shell. Entering from a
//! fresh process rather than asking PID 1 to fork keeps PID 1 trivial and
//! leaves every run in the engine's process machinery unchanged.
//!
//! Killing PID 1 ends every process of the pid namespace; the mount
//! namespace, and with it every mount the session made, goes when its last
//! process does. Nothing the session mounts ever propagates to the host.
//! The helpers die with the daemon (`PR_SET_PDEATHSIG`) and PID 1 with its
//! helper, so no session outlives execd, however execd ends. A commit or
//! discard first asks PID 1 (SIGUSR1) to kill and reap every other process
//! of the session, and waits for its `ENDED` line on PID 1's stdout.

pub mod diff;
pub mod helper;

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

use crate::process::{Command, CommandSpec, Engine, ProcessError, Program};
use helper::{EnterPlan, InitPlan, PlannedMount};

/// Errors of isolated sessions.
#[derive(Debug, thiserror::Error)]
pub enum IsolateError {
    #[error("isolated session not found: {0}")]
    NotFound(String),
    #[error("run {1} not found in isolated session {0}")]
    RunNotFound(String, String),
    #[error("{0}")]
    Invalid(String),
    #[error("isolation unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    NotSupported(String),
    #[error("isolated session {0} is not active")]
    Inactive(String),
    #[error("too many isolated sessions (at most {0})")]
    TooMany(usize),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("{0}")]
    Io(String),
    #[error("isolated session {0} is busy: {1}")]
    Busy(String, String),
    /// The session's processes did not end within the end timeout; what
    /// was done about it.
    #[error("isolated session {0}: its processes did not end within {1:?}; {2}")]
    NotEnded(String, Duration, &'static str),
}

/// `{path, mode}`: the legacy single workspace.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlaySpec {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persist: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BindSpec {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readonly: Option<bool>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvPassthrough {
    #[serde(default = "deny")]
    pub mode: String,
    #[serde(default)]
    pub keys: Vec<String>,
}

fn deny() -> String {
    "deny".into()
}

/// The create request, as the client sent it (and as `GET` echoes it).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<WorkspaceSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlays: Option<Vec<OverlaySpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra_writable: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binds: Option<Vec<BindSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share_net: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_passthrough: Option<EnvPassthrough>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid_mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout_seconds: Option<i64>,
}

/// One validated mount of a session.
#[derive(Clone, Debug)]
pub struct Mounted {
    pub path: PathBuf,
    pub mode: Mode,
    pub persist: bool,
    /// Overlay mode: the upper layer on the host.
    pub upper: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Overlay,
    Rw,
    Ro,
}

impl Mode {
    fn parse(s: Option<&str>) -> Result<Mode, IsolateError> {
        match s.unwrap_or("overlay") {
            "overlay" => Ok(Mode::Overlay),
            "rw" => Ok(Mode::Rw),
            "ro" => Ok(Mode::Ro),
            other => Err(IsolateError::Invalid(format!(
                "mode must be overlay, rw or ro, got {other:?}"
            ))),
        }
    }
}

/// A run request.
#[derive(Clone, Debug)]
pub struct RunSpec {
    pub code: String,
    pub envs: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub background: bool,
}

/// A live (or ended) session.
pub struct Session {
    pub id: String,
    pub created_at: SystemTime,
    pub request: SessionRequest,
    pub mounts: Vec<Mounted>,
    pub strict: bool,
    /// Runs enter a user namespace of their own (`uid_mode: userns`).
    pub userns: bool,
    init_pid: i32,
    init_fd: Arc<OwnedFd>,
    dir: PathBuf,
    idle: Option<Duration>,
    state: Mutex<SessionState>,
    /// Wall clock at creation, in ns: the conflict baseline of commits.
    since_ns: i128,
    /// PID 1's stdout, where it answers [`helper::END_SIGNAL`]; one
    /// request at a time.
    ctl: tokio::sync::Mutex<Option<InitOut>>,
}

/// The stdout of the session's first process and of its PID 1.
type InitOut = tokio::io::BufReader<tokio::net::unix::pipe::Receiver>;

struct SessionState {
    destroyed: bool,
    dead: bool,
    last_run_at: SystemTime,
    last_active: Instant,
    runs: Vec<Arc<Command>>,
    /// A commit or discard is changing the layers: runs wait for it.
    maintenance: bool,
    /// Lower paths execd wrote in a commit, per overlay: their ctime then.
    committed: HashMap<(usize, PathBuf), i128>,
    /// The first process of the session (it waits for PID 1): its exit.
    exit: Option<tokio::sync::oneshot::Receiver<crate::process::reaper::ExitStatus>>,
}

impl Session {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `active`, `dead` (PID 1 is gone) or `destroyed`.
    pub fn status(&self) -> &'static str {
        let s = self.lock();
        if s.destroyed {
            "destroyed"
        } else if s.dead || crate::process::pidfd::exited(&self.init_fd) {
            "dead"
        } else {
            "active"
        }
    }

    pub fn last_run_at(&self) -> SystemTime {
        self.lock().last_run_at
    }

    /// Seconds until idle expiry; `None` without an idle timeout.
    pub fn idle_remaining(&self) -> Option<u64> {
        let idle = self.idle?;
        let s = self.lock();
        if s.runs.iter().any(|r| r.is_running()) {
            return Some(idle.as_secs());
        }
        Some(idle.saturating_sub(s.last_active.elapsed()).as_secs())
    }

    pub fn run(&self, run_id: &str) -> Option<Arc<Command>> {
        self.lock().runs.iter().find(|r| r.id == run_id).cloned()
    }

    /// Marks the session as used now (a run or a file operation).
    pub fn touch(&self) {
        self.lock().last_active = Instant::now();
    }

    /// Another mount of the session at or beneath `path`, if any.
    fn nested_under(&self, path: &Path) -> Option<PathBuf> {
        let binds = self
            .request
            .binds
            .iter()
            .flatten()
            .map(|b| PathBuf::from(b.dest.as_deref().unwrap_or(&b.source)));
        self.mounts
            .iter()
            .map(|m| m.path.clone())
            .filter(|p| p != path)
            .chain(binds)
            .find(|p| p.starts_with(path))
    }

    /// A pidfd of PID 1, to join the session's namespaces.
    pub fn ns_handle(&self) -> Arc<OwnedFd> {
        self.init_fd.clone()
    }

    /// The session's merged view, as the host reaches it.
    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.init_pid))
    }

    fn expired(&self) -> bool {
        let Some(idle) = self.idle else { return false };
        let s = self.lock();
        !s.runs.iter().any(|r| r.is_running()) && s.last_active.elapsed() >= idle
    }
}

/// What the isolator can do here, probed once.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub available: bool,
    pub message: Option<String>,
    /// Runs can have a user namespace of their own (`uid_mode: userns`).
    pub userns: bool,
}

/// Every isolated session of the daemon.
pub struct Isolated {
    engine: Arc<Engine>,
    base: PathBuf,
    hide: Vec<PathBuf>,
    exe: PathBuf,
    max: usize,
    /// How long the session's processes may take to end (commit, discard,
    /// delete) before the answer says they did not.
    end_timeout: Duration,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    probe: Probe,
}

const MAX_MOUNTS: usize = 16;

impl Isolated {
    /// The manager; its expiry and shutdown tasks belong to the engine.
    pub fn new(engine: Arc<Engine>, max: usize, end_timeout: Duration) -> Arc<Isolated> {
        let data = engine.data_dir().to_path_buf();
        let me = Arc::new(Isolated {
            base: data.join("isolated"),
            hide: vec![data],
            exe: PathBuf::from("/proc/self/exe"),
            max,
            end_timeout,
            sessions: Mutex::default(),
            probe: probe(),
            engine: engine.clone(),
        });
        // The task owns the manager until shutdown: the sessions must be
        // ended even when every other holder is already gone.
        let strong = me.clone();
        let stop = engine.shutdown_token();
        engine.tasks().spawn(async move {
            use futures_util::StreamExt;
            let me = &strong;
            // The expired sessions being deleted, each a future of this
            // task (at most `max`): one whose processes take the whole end
            // timeout holds up neither the others nor the next expiries.
            let mut ending = futures_util::stream::FuturesUnordered::new();
            let end = |id: String| async move {
                tracing::info!(session = %id, "isolated session idle; destroying");
                let _ = me.delete(&id).await;
            };
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(()) = ending.next(), if !ending.is_empty() => continue,
                    _ = stop.cancelled() => break,
                }
                // A session being deleted is out of the table already.
                for s in me.list().into_iter().filter(|s| s.expired()) {
                    ending.push(end(s.id.clone()));
                }
            }
            // Shutdown: every session goes before the data directory does,
            // the expired ones still going included.
            tokio::join!(me.delete_all(), ending.collect::<Vec<()>>());
        });
        me
    }

    pub fn probe(&self) -> &Probe {
        &self.probe
    }

    pub fn list(&self) -> Vec<Arc<Session>> {
        let mut v: Vec<Arc<Session>> = self.lock().values().cloned().collect();
        v.sort_by_key(|s| s.created_at);
        v
    }

    pub fn get(&self, id: &str) -> Result<Arc<Session>, IsolateError> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| IsolateError::NotFound(id.to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a session: validates, builds the plan, starts PID 1 and waits
    /// until it reports its root ready.
    pub async fn create(&self, req: SessionRequest) -> Result<Arc<Session>, IsolateError> {
        if !self.probe.available {
            return Err(IsolateError::Unavailable(
                self.probe.message.clone().unwrap_or_default(),
            ));
        }
        let v = validate(&req, &self.hide)?;
        if v.userns && !self.probe.userns {
            return Err(IsolateError::NotSupported(
                "uid_mode userns: the kernel allows no user namespaces here \
                 (/proc/sys/user/max_user_namespaces is 0); use setpriv"
                    .into(),
            ));
        }
        if self.lock().len() >= self.max {
            return Err(IsolateError::TooMany(self.max));
        }
        let id = uuid_v4(&crate::process::new_id());
        let dir = self.base.join(&id);
        let io = |e: std::io::Error| IsolateError::Io(format!("session directory: {e}"));
        std::fs::create_dir_all(dir.join("root")).map_err(io)?;
        let mut plan_mounts = Vec::new();
        let mut mounts = Vec::new();
        for (i, m) in v.mounts.iter().enumerate() {
            match m.mode {
                Mode::Overlay => {
                    let upper = dir.join("upper").join(i.to_string());
                    let work = dir.join("work").join(i.to_string());
                    std::fs::create_dir_all(&upper).map_err(io)?;
                    std::fs::create_dir_all(&work).map_err(io)?;
                    // The overlay's root takes its owner and mode from the
                    // upper layer: make them the lower directory's, or a
                    // run as the directory's owner could not write in it.
                    like(&m.path, &upper).map_err(io)?;
                    plan_mounts.push(PlannedMount::Overlay {
                        dest: m.path.clone(),
                        lower: m.path.clone(),
                        upper: upper.clone(),
                        work,
                    });
                    mounts.push(Mounted {
                        upper: Some(upper),
                        ..m.clone()
                    });
                }
                Mode::Rw | Mode::Ro => {
                    plan_mounts.push(PlannedMount::Bind {
                        source: m.path.clone(),
                        dest: m.path.clone(),
                        readonly: m.mode == Mode::Ro,
                    });
                    mounts.push(m.clone());
                }
            }
        }
        for (source, dest, readonly) in &v.binds {
            plan_mounts.push(PlannedMount::Bind {
                source: source.clone(),
                dest: dest.clone(),
                readonly: *readonly,
            });
        }
        let plan = InitPlan {
            root: dir.join("root"),
            mounts: plan_mounts,
            hide: self.hide.clone(),
            share_net: v.share_net,
            hostname: "isolated".into(),
            layers: Some(dir.clone()),
            parent: std::process::id(),
        };
        match self.start_init(&plan).await {
            Ok((pid, fd, exit, out)) => {
                let now = SystemTime::now();
                let s = Arc::new(Session {
                    id: id.clone(),
                    created_at: now,
                    request: req,
                    mounts,
                    strict: v.strict,
                    userns: v.userns,
                    init_pid: pid,
                    init_fd: Arc::new(fd),
                    dir,
                    idle: v.idle,
                    state: Mutex::new(SessionState {
                        destroyed: false,
                        dead: false,
                        last_run_at: now,
                        last_active: Instant::now(),
                        runs: Vec::new(),
                        maintenance: false,
                        committed: HashMap::new(),
                        exit: Some(exit),
                    }),
                    since_ns: now
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as i128),
                    ctl: tokio::sync::Mutex::new(Some(out)),
                });
                self.lock().insert(id, s.clone());
                tracing::info!(session = %s.id, pid, "isolated session created");
                Ok(s)
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn start_init(
        &self,
        plan: &InitPlan,
    ) -> Result<
        (
            i32,
            OwnedFd,
            tokio::sync::oneshot::Receiver<crate::process::reaper::ExitStatus>,
            InitOut,
        ),
        IsolateError,
    > {
        let json = serde_json::to_string(plan).map_err(|e| IsolateError::Io(e.to_string()))?;
        let argv = vec![
            self.exe.to_string_lossy().into_owned(),
            "__isolate-init".into(),
        ];
        let env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            (helper::PLAN_ENV.into(), json.into()),
        ];
        let sp = self
            .engine
            .spawn_helper(argv, env, Some(PathBuf::from("/")))
            .map_err(|e| IsolateError::Unavailable(format!("cannot start the session: {e}")))?;
        let tree = sp.tree.clone();
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(sp.stdout)
            .map_err(|e| IsolateError::Io(e.to_string()))?;
        drop(sp.stderr);
        let mut line = String::new();
        let mut reader = tokio::io::BufReader::new(pipe);
        let read = tokio::time::timeout(
            Duration::from_secs(60),
            (&mut reader).take(64 * 1024).read_line(&mut line),
        )
        .await;
        let fail = |msg: String| {
            tree.kill();
            Err(IsolateError::Unavailable(msg))
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return fail(format!("reading the session's start: {e}")),
            Err(_) => return fail("the session did not start within 60 s".into()),
        }
        let line = line.trim_end();
        if let Some(pid) = line
            .strip_prefix("READY ")
            .and_then(|p| p.parse::<i32>().ok())
        {
            // PID 1 is alive and unreaped (its parent waits for it): the pidfd
            // names that process and no later one with the same number.
            return match crate::process::pidfd::open(pid) {
                Ok(fd) => Ok((pid, fd, sp.exit, reader)),
                Err(e) => fail(format!("pidfd of the session's init: {e}")),
            };
        }
        let msg = line.strip_prefix("ERROR ").unwrap_or(line).to_string();
        let _ = sp.exit.await;
        Err(IsolateError::Unavailable(if msg.is_empty() {
            "the session's init exited before it was ready".into()
        } else {
            msg
        }))
    }

    /// Starts a run inside the session.
    pub fn run(&self, id: &str, run: RunSpec) -> Result<Arc<Command>, IsolateError> {
        let s = self.get(id)?;
        if s.status() != "active" {
            return Err(IsolateError::Inactive(id.to_string()));
        }
        if s.lock().maintenance {
            return Err(IsolateError::Busy(
                id.to_string(),
                "a commit or discard is in progress".into(),
            ));
        }
        let cwd = s
            .mounts
            .first()
            .map_or_else(|| PathBuf::from("/"), |m| m.path.clone());
        let shell = self.engine.config().shell.to_string_lossy().into_owned();
        let plan = EnterPlan {
            init_pid: s.init_pid,
            cwd,
            uid: s.request.uid,
            gid: s.request.gid,
            strict: s.strict,
            userns: s.userns,
            argv: vec![shell, "-c".into(), run.code.clone()],
            remount: None,
            parent: std::process::id(),
        };
        let json = serde_json::to_string(&plan).map_err(|e| IsolateError::Io(e.to_string()))?;
        let env = self.run_env(&s, &run.envs);
        let spec = CommandSpec {
            program: Program::Argv(vec![
                self.exe.to_string_lossy().into_owned(),
                "__isolate-enter".into(),
                json,
            ]),
            cwd: Some(PathBuf::from("/")),
            envs: Vec::new(),
            timeout: run.timeout,
            uid: None,
            gid: None,
            background: run.background,
            stdin: false,
        };
        let cmd = self.engine.start_with_env(spec, run.code, env)?;
        let mut st = s.lock();
        st.last_run_at = SystemTime::now();
        st.last_active = Instant::now();
        // Keep the records of runs bounded: drop the oldest finished ones.
        if st.runs.len() >= 256 {
            if let Some(i) = st.runs.iter().position(|r| !r.is_running()) {
                st.runs.remove(i);
            }
        }
        st.runs.push(cmd.clone());
        Ok(cmd)
    }

    /// The daemon's command environment, filtered by `env_passthrough`, then the run's `envs`.
    fn run_env(&self, s: &Session, envs: &[(String, String)]) -> Vec<(OsString, OsString)> {
        let mut env = self.engine.default_env();
        if let Some(p) = &s.request.env_passthrough {
            let listed = |k: &OsString| p.keys.iter().any(|x| k.to_str() == Some(x.as_str()));
            if p.mode == "allow" {
                env.retain(|(k, _)| listed(k) || k == "PATH");
            } else {
                env.retain(|(k, _)| !listed(k));
            }
        }
        for (k, v) in envs {
            env.retain(|(x, _)| x.to_str() != Some(k.as_str()));
            env.push((k.into(), v.into()));
        }
        env
    }

    /// What the session changed, per overlay.
    pub async fn diff(&self, id: &str, text: bool) -> Result<serde_json::Value, IsolateError> {
        let s = self.get(id)?;
        let committed = self.committed_of(&s);
        let s2 = s.clone();
        tokio::task::spawn_blocking(move || {
            let mut overlays = Vec::new();
            for (i, m) in s2.mounts.iter().enumerate() {
                let Some(upper) = &m.upper else { continue };
                let map: HashMap<PathBuf, i128> = committed
                    .iter()
                    .filter(|((k, _), _)| *k == i)
                    .map(|((_, p), t)| (p.clone(), *t))
                    .collect();
                let base = diff::Baseline {
                    since_ns: s2.since_ns,
                    committed: &map,
                };
                let changes =
                    diff::scan(&m.path, &m.path, upper, &base).map_err(IsolateError::Io)?;
                let list: Vec<serde_json::Value> = changes
                    .iter()
                    .map(|c| {
                        let mut v = serde_json::to_value(c).unwrap_or_default();
                        if text {
                            if let Some(d) = diff::text_diff(&m.path, upper, c) {
                                v["diff"] = d.into();
                            }
                        }
                        v
                    })
                    .collect();
                overlays.push(serde_json::json!({"path": m.path, "changes": list}));
            }
            Ok(serde_json::json!({"session_id": s2.id, "overlays": overlays}))
        })
        .await
        .map_err(|e| IsolateError::Io(e.to_string()))?
    }

    fn committed_of(&self, s: &Session) -> HashMap<(usize, PathBuf), i128> {
        s.lock().committed.clone()
    }

    /// Applies the session's changes (all, or those at or under `paths`) to
    /// the lower directories, or drops them (`discard`). Refused while a run
    /// is active; runs wait for it. Each overlay is detached from the
    /// session while its layers change, then mounted again.
    pub async fn apply(
        &self,
        id: &str,
        paths: Vec<PathBuf>,
        force: bool,
        discard: bool,
    ) -> Result<serde_json::Value, IsolateError> {
        let s = self.get(id)?;
        if s.status() != "active" {
            return Err(IsolateError::Inactive(id.to_string()));
        }
        {
            let mut st = s.lock();
            if st.runs.iter().any(|r| r.is_running()) {
                return Err(IsolateError::Busy(id.to_string(), "a run is active".into()));
            }
            if st.maintenance {
                return Err(IsolateError::Busy(
                    id.to_string(),
                    "a commit or discard is in progress".into(),
                ));
            }
            st.maintenance = true;
        }
        let r = self.apply_locked(&s, paths, force, discard).await;
        s.lock().maintenance = false;
        s.touch();
        r
    }

    async fn apply_locked(
        &self,
        s: &Arc<Session>,
        paths: Vec<PathBuf>,
        force: bool,
        discard: bool,
    ) -> Result<serde_json::Value, IsolateError> {
        let mut done = Vec::new();
        let mut conflicts = Vec::new();
        let mut errors = Vec::new();
        for (i, m) in s.mounts.iter().enumerate() {
            let Some(upper) = m.upper.clone() else {
                continue;
            };
            let committed = self.committed_of(s);
            let map: HashMap<PathBuf, i128> = committed
                .iter()
                .filter(|((k, _), _)| *k == i)
                .map(|((_, p), t)| (p.clone(), *t))
                .collect();
            let lower = m.path.clone();
            let (view, up) = (m.path.clone(), upper.clone());
            let since = s.since_ns;
            let map_again = map.clone();
            let changes = tokio::task::spawn_blocking(move || {
                diff::scan(
                    &view,
                    &view,
                    &up,
                    &diff::Baseline {
                        since_ns: since,
                        committed: &map,
                    },
                )
            })
            .await
            .map_err(|e| IsolateError::Io(e.to_string()))?
            .map_err(IsolateError::Io)?;
            let chosen: Vec<diff::Change> = changes
                .into_iter()
                .filter(|c| diff::selected(c, &paths))
                .collect();
            if chosen.is_empty() {
                continue;
            }
            // Detaching the overlay would take the mounts beneath it along.
            if let Some(n) = s.nested_under(&m.path) {
                errors.push(format!(
                    "{}: not applied: {} is mounted beneath it (commit and discard of an overlay with nested mounts are not supported yet)",
                    m.path.display(),
                    n.display()
                ));
                continue;
            }
            self.remount(s, i, false).await?;
            let work = s.dir.join("work").join(i.to_string());
            let up = upper.clone();
            let low = lower.clone();
            let paths = paths.clone();
            let res = tokio::task::spawn_blocking(move || {
                let mut done = Vec::new();
                let mut conflicts = Vec::new();
                let mut errors = Vec::new();
                let mut stamps = Vec::new();
                // Scanned again now that nothing can write to the layers
                // (the overlay is detached, the session's other processes
                // are gone): what is applied is what is there.
                let base = diff::Baseline {
                    since_ns: since,
                    committed: &map_again,
                };
                let changes = match diff::scan(&low, &low, &up, &base) {
                    Ok(c) => c,
                    Err(e) => {
                        errors.push(e);
                        return (done, conflicts, errors, stamps);
                    }
                };
                // Parents of hidden lower entries left out of this request.
                let all_hidden_parents: std::collections::HashSet<PathBuf> = changes
                    .iter()
                    .filter(|c| !c.in_upper && !diff::selected(c, &paths))
                    .filter_map(|c| c.rel.parent().map(Path::to_path_buf))
                    .collect();
                let chosen: Vec<diff::Change> = changes
                    .into_iter()
                    .filter(|c| diff::selected(c, &paths))
                    .collect();
                let root = match crate::fs::confined::Root::open(&low) {
                    Ok(r) => r,
                    Err(e) => {
                        errors.push(format!("{}: {e}", low.display()));
                        return (done, conflicts, errors, stamps);
                    }
                };
                // Children before parents when clearing, so that emptied
                // directories can go.
                let mut cleared: Vec<&diff::Change> = Vec::new();
                for c in &chosen {
                    if !discard && c.conflict && !force {
                        conflicts.push(c.path.clone());
                        continue;
                    }
                    if !discard {
                        if let Err(e) = diff::apply(&root, &up, c) {
                            errors.push(e);
                            continue;
                        }
                        if let Ok(m) = std::fs::symlink_metadata(low.join(&c.rel)) {
                            use std::os::unix::fs::MetadataExt;
                            stamps.push((
                                c.rel.clone(),
                                i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
                            ));
                        }
                    }
                    done.push(c.path.clone());
                    cleared.push(c);
                }
                // Opaque directories still hiding lower entries that were not
                // deleted from the lower directory must stay.
                let pending: std::collections::HashSet<PathBuf> = chosen
                    .iter()
                    .filter(|c| !c.in_upper && !done.contains(&c.path))
                    .filter_map(|c| c.rel.parent().map(Path::to_path_buf))
                    .collect();
                let unselected_hidden = all_hidden_parents.clone();
                for c in cleared.iter().rev() {
                    let keep = pending.contains(&c.rel) || unselected_hidden.contains(&c.rel);
                    if let Err(e) = diff::clear(&up, c, discard, keep) {
                        errors.push(e);
                    }
                }
                (done, conflicts, errors, stamps)
            })
            .await
            .map_err(|e| IsolateError::Io(e.to_string()));
            // Mounted again whatever happened above.
            let _ = std::fs::create_dir_all(&work);
            let back = self.remount(s, i, true).await;
            let (d, c, e, stamps) = res?;
            back?;
            {
                let mut st = s.lock();
                for (rel, t) in stamps {
                    st.committed.insert((i, rel), t);
                }
            }
            done.extend(d);
            conflicts.extend(c);
            errors.extend(e);
        }
        let key = if discard { "discarded" } else { "committed" };
        Ok(serde_json::json!({
            "session_id": s.id,
            key: done,
            "conflicts": conflicts,
            "errors": errors,
        }))
    }

    /// Ends every process of the session but PID 1 and returns once all are
    /// reaped (PID 1 kills and reaps them, then says so). A session whose
    /// processes do not end within the end timeout is ended whole.
    async fn end_processes(&self, s: &Session) -> Result<(), IsolateError> {
        let mut ctl = s.ctl.lock().await;
        let Some(out) = ctl.as_mut() else {
            return Err(IsolateError::Inactive(s.id.clone()));
        };
        crate::process::pidfd::send_signal(&s.init_fd, helper::END_SIGNAL as i32)
            .map_err(|_| IsolateError::Inactive(s.id.clone()))?;
        let mut line = String::new();
        let read = tokio::time::timeout(self.end_timeout, out.take(256).read_line(&mut line)).await;
        if matches!(read, Ok(Ok(n)) if n > 0) && line.trim_end() == helper::ENDED {
            return Ok(());
        }
        // PID 1 did not answer (a process that cannot die, or PID 1 gone):
        // killing it ends the whole pid namespace; the session is dead.
        *ctl = None;
        s.lock().dead = true;
        let _ = crate::process::pidfd::send_signal(&s.init_fd, libc::SIGKILL);
        tracing::warn!(session = %s.id, "the session's processes did not end; session ended");
        Err(if read.is_err() {
            IsolateError::NotEnded(s.id.clone(), self.end_timeout, "the session was ended")
        } else {
            IsolateError::Inactive(s.id.clone())
        })
    }

    /// Detaches the `i`th overlay in the session, or mounts it again.
    async fn remount(&self, s: &Session, i: usize, attach: bool) -> Result<(), IsolateError> {
        let m = &s.mounts[i];
        let Some(upper) = m.upper.clone() else {
            return Ok(());
        };
        if !attach {
            // Processes left behind by earlier runs must not write through
            // the overlay while its layers change: all are gone first.
            self.end_processes(s).await?;
        }
        let plan = EnterPlan {
            init_pid: s.init_pid,
            cwd: m.path.clone(),
            uid: None,
            gid: None,
            strict: false,
            userns: false,
            argv: Vec::new(),
            remount: Some({
                let _ = upper;
                let (lower, upper, work) = helper::hidden_layers(&self.hide[0], &i.to_string());
                helper::Remount {
                    attach,
                    lower,
                    upper,
                    work,
                }
            }),
            parent: std::process::id(),
        };
        let json = serde_json::to_string(&plan).map_err(|e| IsolateError::Io(e.to_string()))?;
        let argv = vec![
            self.exe.to_string_lossy().into_owned(),
            "__isolate-enter".into(),
            json,
        ];
        let env: Vec<(OsString, OsString)> =
            vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())];
        let sp = self
            .engine
            .spawn_helper(argv, env, Some(PathBuf::from("/")))
            .map_err(|e| IsolateError::Io(format!("remount: {e}")))?;
        let pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(sp.stdout)
            .map_err(|e| IsolateError::Io(e.to_string()))?;
        drop(sp.stderr);
        let mut msg = String::new();
        let _ = pipe.take(64 * 1024).read_to_string(&mut msg).await;
        let st = sp.exit.await.unwrap_or_default();
        if st.code == Some(0) {
            Ok(())
        } else {
            Err(IsolateError::Io(format!(
                "{} the overlay at {}: {}",
                if attach { "mounting" } else { "detaching" },
                m.path.display(),
                msg.trim().trim_start_matches("ERROR ")
            )))
        }
    }

    /// Kills every process of the session, waits until they are gone (the
    /// mount namespace goes with the last of them) and removes the session's
    /// directory (a `persist: true` upper layer is kept). The session is
    /// gone from the table either way; if its processes are not gone within
    /// the end timeout (one the kernel cannot end yet, such as one in an
    /// uninterruptible wait), the answer says so: they were sent SIGKILL
    /// and go when the kernel lets them.
    pub async fn delete(&self, id: &str) -> Result<(), IsolateError> {
        let s = self
            .lock()
            .remove(id)
            .ok_or_else(|| IsolateError::NotFound(id.to_string()))?;
        let exit = {
            let mut st = s.lock();
            st.destroyed = true;
            st.exit.take()
        };
        // SIGKILL to PID 1 ends every process of its pid namespace.
        let _ = crate::process::pidfd::send_signal(&s.init_fd, libc::SIGKILL);
        // The waiting parent exits once PID 1 and the whole namespace are
        // reaped (at once when it already has).
        let ended = match exit {
            Some(exit) => tokio::time::timeout(self.end_timeout, exit).await.is_ok(),
            None => true,
        };
        let runs: Vec<Arc<Command>> = s.lock().runs.clone();
        for r in runs.iter().filter(|r| r.is_running()) {
            r.kill_tree();
        }
        let keep = s.mounts.iter().any(|m| m.persist && m.upper.is_some());
        let dir = s.dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_session_dir(&dir, !keep)).await;
        if keep {
            tracing::info!(session = %id, dir = %s.dir.display(), "persistent upper layers kept");
        }
        if !ended {
            tracing::warn!(session = %id, "isolated session removed; its processes did not end");
            return Err(IsolateError::NotEnded(
                s.id.clone(),
                self.end_timeout,
                "the session was removed and its processes go when the kernel lets them",
            ));
        }
        tracing::info!(session = %id, "isolated session destroyed");
        Ok(())
    }

    /// Deletes every session (daemon shutdown), all at once: a session whose
    /// processes take the whole end timeout holds up no other.
    pub async fn delete_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        futures_util::future::join_all(ids.iter().map(|id| self.delete(id))).await;
    }
}

/// Removes the session's directory; with `all` false only `root` and `work`
/// (the upper layers stay).
/// Gives `dir` the owner, group and permission bits of `model`.
fn like(model: &Path, dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let m = std::fs::metadata(model)?;
    std::os::unix::fs::chown(dir, Some(m.uid()), Some(m.gid()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(m.mode() & 0o7777))
}

fn remove_session_dir(dir: &Path, all: bool) {
    if all {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        let _ = std::fs::remove_dir_all(dir.join("work"));
        let _ = std::fs::remove_dir(dir.join("root"));
    }
}

/// A random UUID (version 4) in its usual text form, from 32 random hex
/// digits: upstream's session ids are UUIDs, and the SDK's generated client
/// parses them as such (and sends them back in that form).
fn uuid_v4(hex: &str) -> String {
    let mut h: Vec<char> = hex.chars().collect();
    h.resize(32, '0');
    h[12] = '4';
    h[16] = match h[16].to_digit(16).unwrap_or(0) & 0x3 {
        0 => '8',
        1 => '9',
        2 => 'a',
        _ => 'b',
    };
    let s: String = h.into_iter().collect();
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// A validated request.
struct Valid {
    userns: bool,
    mounts: Vec<Mounted>,
    binds: Vec<(PathBuf, PathBuf, bool)>,
    share_net: bool,
    strict: bool,
    idle: Option<Duration>,
}

fn invalid(m: impl Into<String>) -> IsolateError {
    IsolateError::Invalid(m.into())
}

/// An absolute, clean path that exists as a directory and is not reached
/// through a symlink (the path mounted is the path the client named).
fn clean_dir(raw: &str, what: &str) -> Result<PathBuf, IsolateError> {
    let p = Path::new(raw);
    if !p.is_absolute() {
        return Err(invalid(format!("{what}: path must be absolute: {raw:?}")));
    }
    if raw.len() > 1 && raw.ends_with('/') || raw.contains("//") {
        return Err(invalid(format!("{what}: path must be clean: {raw:?}")));
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(invalid(format!("{what}: path must be clean: {raw:?}")));
    }
    if raw.contains([',', ':', '\n', '\\']) {
        return Err(invalid(format!(
            "{what}: ',', ':', '\\' and newlines are not allowed in paths: {raw:?}"
        )));
    }
    let real = std::fs::canonicalize(p).map_err(|e| invalid(format!("{what}: {raw}: {e}")))?;
    if real != p {
        return Err(invalid(format!(
            "{what}: {raw} resolves to {} (symlinks are not followed)",
            real.display()
        )));
    }
    if !real.is_dir() {
        return Err(invalid(format!("{what}: {raw} is not a directory")));
    }
    if real == Path::new("/") {
        return Err(invalid(format!("{what}: / cannot be mounted")));
    }
    for sys in ["/proc", "/sys", "/dev"] {
        if real.starts_with(sys) {
            return Err(invalid(format!("{what}: {raw} is under {sys}")));
        }
    }
    Ok(real)
}

fn validate(req: &SessionRequest, hide: &[PathBuf]) -> Result<Valid, IsolateError> {
    let strict = match req.profile.as_deref().unwrap_or("strict") {
        "strict" => true,
        "balanced" => false,
        other => {
            return Err(invalid(format!(
                "profile must be strict or balanced, got {other:?}"
            )))
        }
    };
    let userns = match req.uid_mode.as_deref().unwrap_or("setpriv") {
        "setpriv" => false,
        "userns" => true,
        other => {
            return Err(invalid(format!(
                "uid_mode must be setpriv or userns, got {other:?}"
            )))
        }
    };
    let mut specs: Vec<OverlaySpec> = Vec::new();
    if let Some(w) = &req.workspace {
        specs.push(OverlaySpec {
            path: w.path.clone(),
            mode: w.mode.clone(),
            persist: None,
        });
    }
    specs.extend(req.overlays.iter().flatten().cloned());
    if specs.is_empty() {
        return Err(invalid("one of workspace or overlays is required"));
    }
    let mut mounts: Vec<Mounted> = Vec::new();
    for o in &specs {
        let mode = Mode::parse(o.mode.as_deref())?;
        if mode != Mode::Overlay && o.persist.is_some() {
            return Err(invalid(format!(
                "overlays: persist applies to overlay mode only ({})",
                o.path
            )));
        }
        let path = clean_dir(&o.path, "overlays")?;
        mounts.push(Mounted {
            path,
            mode,
            persist: o.persist.unwrap_or(true),
            upper: None,
        });
    }
    for w in req.extra_writable.iter().flatten() {
        mounts.push(Mounted {
            path: clean_dir(w, "extra_writable")?,
            mode: Mode::Rw,
            persist: false,
            upper: None,
        });
    }
    if mounts.len() > MAX_MOUNTS {
        return Err(invalid(format!("at most {MAX_MOUNTS} mounts")));
    }
    for (i, m) in mounts.iter().enumerate() {
        if mounts[..i].iter().any(|x| x.path == m.path) {
            return Err(invalid(format!("{} is mounted twice", m.path.display())));
        }
        if hide
            .iter()
            .any(|h| m.path.starts_with(h) || h.starts_with(&m.path))
        {
            return Err(invalid(format!(
                "{} overlaps execd's data directory",
                m.path.display()
            )));
        }
    }
    let mut binds = Vec::new();
    for b in req.binds.iter().flatten() {
        let source = clean_dir(&b.source, "binds.source")?;
        let dest = clean_dir(b.dest.as_deref().unwrap_or(&b.source), "binds.dest")?;
        if hide
            .iter()
            .any(|h| source.starts_with(h) || h.starts_with(&source))
        {
            return Err(invalid(format!(
                "{} overlaps execd's data directory",
                source.display()
            )));
        }
        binds.push((source, dest, b.readonly.unwrap_or(false)));
    }
    // Shallow first: a nested mount shadows its ancestor within its subtree.
    mounts.sort_by_key(|m| m.path.components().count());
    let idle = match req.idle_timeout_seconds {
        None | Some(0) => None,
        Some(n) if n < 0 => return Err(invalid("idle_timeout_seconds must be >= 0")),
        Some(n) => Some(Duration::from_secs(n as u64)),
    };
    Ok(Valid {
        userns,
        mounts,
        binds,
        share_net: req.share_net.unwrap_or(false),
        strict,
        idle,
    })
}

/// Whether this process can build sessions: root, overlayfs, namespaces.
fn probe() -> Probe {
    let no = |m: &str| Probe {
        available: false,
        message: Some(m.into()),
        userns: false,
    };
    if !nix::unistd::geteuid().is_root() {
        return no(
            "execd does not run as root (CAP_SYS_ADMIN is needed for namespaces and mounts)",
        );
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs
        .lines()
        .any(|l| l.trim_end().ends_with("\toverlay") || l.trim() == "nodev\toverlay")
    {
        return no("the kernel has no overlay file system");
    }
    for ns in ["mnt", "pid", "ipc", "uts", "net"] {
        if !Path::new(&format!("/proc/self/ns/{ns}")).exists() {
            return no(&format!("the kernel has no {ns} namespaces"));
        }
    }
    let userns = Path::new("/proc/self/ns/user").exists()
        && std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0);
    Probe {
        available: true,
        message: None,
        userns,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_uuids() {
        let u = uuid_v4("0123456789abcdef0123456789abcdef");
        assert_eq!(u, "01234567-89ab-4def-8123-456789abcdef");
    }

    #[test]
    fn paths_must_be_clean_and_absolute() {
        for bad in [
            "rel",
            "/tmp/../etc",
            "/tmp/./x",
            "/tmp//x",
            "/tmp/",
            "/a,b",
            "/",
        ] {
            assert!(clean_dir(bad, "t").is_err(), "{bad}");
        }
        assert!(clean_dir("/proc/self", "t").is_err());
        assert!(clean_dir("/tmp", "t").is_ok());
    }

    #[test]
    fn profiles_and_modes() {
        let mut r = SessionRequest {
            workspace: Some(WorkspaceSpec {
                path: "/tmp".into(),
                mode: Some("overlay".into()),
            }),
            ..Default::default()
        };
        assert!(validate(&r, &[]).is_ok_and(|v| v.strict));
        r.profile = Some("loose".into());
        assert!(matches!(validate(&r, &[]), Err(IsolateError::Invalid(_))));
        r.profile = Some("balanced".into());
        r.uid_mode = Some("userns".into());
        assert!(validate(&r, &[]).is_ok_and(|v| v.userns));
        r.uid_mode = Some("nobody".into());
        assert!(matches!(validate(&r, &[]), Err(IsolateError::Invalid(_))));
        r.uid_mode = None;
        assert!(matches!(
            validate(&r, &[PathBuf::from("/tmp/data")]),
            Err(IsolateError::Invalid(_))
        ));
        r.overlays = Some(vec![OverlaySpec {
            path: "/tmp".into(),
            mode: Some("rw".into()),
            persist: Some(true),
        }]);
        assert!(validate(&r, &[]).is_err());
    }
}
