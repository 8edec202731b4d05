//! Configuration from flags and environment variables. OpenSandbox's names
//! come first; flags win over environment variables. Go-style single-dash
//! long flags (`-port=44772`) are accepted too, as upstream's parser does.

use std::ffi::OsString;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::server::auth::Token;

pub const DEFAULT_PORT: u16 = 44772;
/// The python-runtime's default `/execute` limit.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(300);

/// `SANDBOX_EXEC_TIMEOUT_SECONDS` as the reference reads it: a positive,
/// finite number of seconds, anything else the default.
pub fn exec_timeout(v: &str) -> Duration {
    match v.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(1e9)),
        _ => DEFAULT_EXEC_TIMEOUT,
    }
}

/// Everything execd can be told at start-up.
#[derive(Clone, Debug)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// From `--access-token`, `--access-token-file` or their variables; kept
    /// as its digest only.
    pub access_token: Option<Token>,
    /// `Origin`s whose requests are served (`*`: any); every other request
    /// carrying an `Origin` header is refused.
    pub allowed_origins: Vec<String>,
    /// When not empty, the `Host` names (port ignored) requests must carry.
    pub allowed_hosts: Vec<String>,
    /// 0–7 as upstream: ≤3 error, 4 warn, 5–6 info, 7 debug.
    pub log_level: u8,
    pub log_file: Option<PathBuf>,
    pub graceful_shutdown_timeout: Duration,
    pub env_file: Option<PathBuf>,
    pub retention: Duration,
    /// Finished command records kept at most; the oldest go first.
    pub max_records: usize,
    pub output_window: usize,
    pub output_memory: usize,
    pub spill_cap: u64,
    /// Spilled output on disk, all commands together; past it spills are
    /// refused and the output they would have kept is dropped (and counted).
    pub spill_budget: u64,
    /// Commands running at once (background and session runs included).
    pub max_running: usize,
    /// Bash sessions kept at once.
    pub max_sessions: usize,
    /// A session with no run for this long is deleted.
    pub session_idle_timeout: Duration,
    /// How long an isolated session's commit, discard or delete waits for
    /// the session's processes to end before it answers that they did not.
    pub isolated_end_timeout: Duration,
    /// The private data directory; None: a new one with a random name
    /// under `$TMPDIR`, made at start-up.
    pub data_dir: Option<PathBuf>,
    pub drain_timeout: Duration,
    /// A connection's first bytes, and each request head, must arrive
    /// within this (up to half as long again); idle connections are closed.
    pub header_timeout: Duration,
    pub max_body: usize,
    pub ping_interval: Duration,
    pub max_line: usize,
    /// Whether each command gets a cgroup of its own where cgroup v2 is
    /// writable (`auto`), or its processes are always tracked by walking
    /// /proc (`off`).
    pub cgroups: crate::process::tree::CgroupMode,
    /// `execd init [flags] -- CMD ARGS…`: run CMD as the sandbox's main process
    /// (empty: serve until signalled). None outside init mode.
    pub init: Option<Vec<String>>,
    /// agent-sandbox python-runtime API: the base directory of commands and
    /// file operations (`SANDBOX_BASE_DIR`); None: the daemon's cwd.
    pub agent_base_dir: Option<PathBuf>,
    /// Default `/execute` time limit (`SANDBOX_EXEC_TIMEOUT_SECONDS`).
    pub agent_exec_timeout: Duration,
    /// sandboxd API: the root of file paths and process cwds; None: the
    /// agent base directory.
    pub sandboxd_root: Option<PathBuf>,
    /// sandboxd `/v1/metadata`: environment variables with this prefix.
    pub metadata_env_prefix: String,
    /// sandboxd `/v1/metadata`: the variable names served (`NAME*` matches a
    /// prefix); None: the prefix followed by one of
    /// [`crate::api::sandboxd::METADATA_ENV_DEFAULT`].
    pub metadata_env: Option<Vec<String>>,
    /// sandboxd gRPC on a port of its own, besides the main port.
    pub grpc_port: Option<u16>,
    /// E2B envd's API (HTTP and Connect RPC) on a port of its own; None: off.
    pub e2b_port: Option<u16>,
    /// WebSocket pings (PTY); a peer silent for twice this is dropped.
    pub ws_ping_interval: Duration,
    /// Live code contexts (Jupyter kernels) at most; 429 past it.
    pub max_code_contexts: usize,
    /// Code contexts idle this long are deleted; None: never.
    pub code_idle_timeout: Option<Duration>,
    /// `--runtime-init`: every route but `/ping`, `/ready` and
    /// `/internal/init` answers 503 until a control plane binds the sandbox;
    /// an init-mode main process waits for the binding too.
    pub runtime_init: bool,
    /// File downloads on plain HTTP/1.1 go from the file to the socket with
    /// `sendfile` (`--no-sendfile`: copied through user space, as on HTTP/2).
    pub sendfile: bool,
    /// Open HTTP/1 connections above which an idle keep-alive connection is
    /// parked (its hyper buffers freed) as soon as it is idle; below, at the
    /// header timeout's first quiet look (`server::Http1`).
    pub park_idle_above: usize,
    /// Live operation ids (`X-EXECD-OPERATION-ID`) at most; 429 past it.
    pub max_operations: usize,
    /// `--log-format json`: one JSON object per log line.
    pub log_json: bool,
    /// How long an operation id is remembered (then 410).
    pub operation_ttl: Duration,
    /// Directory watches open at once (REST and gRPC together); 429 /
    /// RESOURCE_EXHAUSTED past it.
    pub max_watches: usize,
    /// A watch's debounce window: changes are gathered this long, merged,
    /// then sent (0: sent as soon as read).
    pub watch_debounce: Duration,
    /// An E2B polling watcher (`CreateWatcher`) not polled this long is
    /// removed, its watch closed.
    pub e2b_watcher_idle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: IpAddr::from([0, 0, 0, 0]),
            port: DEFAULT_PORT,
            access_token: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            log_level: 6,
            log_file: None,
            graceful_shutdown_timeout: Duration::from_secs(5),
            env_file: None,
            retention: Duration::from_secs(24 * 3600),
            max_records: 4096,
            output_window: 1 << 20,
            output_memory: 16 << 20,
            spill_cap: 1 << 30,
            spill_budget: 4 << 30,
            max_running: 4096,
            max_sessions: 1024,
            session_idle_timeout: Duration::from_secs(24 * 3600),
            isolated_end_timeout: Duration::from_secs(30),
            data_dir: None,
            drain_timeout: Duration::from_millis(250),
            header_timeout: Duration::from_secs(30),
            max_body: 1 << 20,
            ping_interval: Duration::from_secs(3),
            max_line: 64 * 1024,
            cgroups: crate::process::tree::CgroupMode::Auto,
            init: None,
            agent_base_dir: None,
            agent_exec_timeout: DEFAULT_EXEC_TIMEOUT,
            sandboxd_root: None,
            metadata_env_prefix: "SANDBOX_".into(),
            metadata_env: None,
            grpc_port: None,
            e2b_port: None,
            ws_ping_interval: Duration::from_secs(30),
            max_code_contexts: 32,
            code_idle_timeout: None,
            runtime_init: false,
            sendfile: true,
            park_idle_above: 128,
            max_operations: 4096,
            log_json: false,
            operation_ttl: Duration::from_secs(3600),
            max_watches: 64,
            watch_debounce: Duration::from_millis(250),
            e2b_watcher_idle: Duration::from_secs(600),
        }
    }
}

pub const HELP: &str = "\
execd: in-sandbox execution daemon (OpenSandbox execd compatible)

Usage: execd [OPTIONS]
       execd init [OPTIONS] [-- CMD [ARGS...]]
       execd install DEST

install: copy this binary to DEST (mode 0755, atomically), e.g. from an init
container into a shared volume; the execd image has no shell or cp.

init: run as the sandbox's init. Serves the API, runs CMD (or $BOOTSTRAP_CMD with
the shell) in its own process group, reaps every zombie, forwards
SIGTERM/SIGINT/SIGHUP/SIGQUIT/SIGUSR1/SIGUSR2 to CMD, and exits with CMD's status
(128+N after signal N) once the API and running commands are shut down.

Options (environment variable in brackets; a flag wins over its variable):
  --port N                        listen port (44772)
  --bind ADDR                     listen address (0.0.0.0)
  --access-token T                require header X-EXECD-ACCESS-TOKEN: T [EXECD_ACCESS_TOKEN];
                                  T may be sha256:<64 hex> (the token's digest)
  --access-token-file PATH        the same, read once from PATH (recommended; trailing
                                  whitespace ignored) [EXECD_ACCESS_TOKEN_FILE]
  --allowed-origins LIST          comma list of Origins (scheme://host[:port], null, or *)
                                  allowed; any other request with an Origin header is
                                  refused with 403 (none) [EXECD_ALLOWED_ORIGINS]
  --allowed-hosts LIST            comma list of host names the Host header must name, port
                                  ignored (any) [EXECD_ALLOWED_HOSTS]
  --log-level N                   0-7: <=3 error, 4 warn, 5-6 info, 7 debug (6)
  --log-file PATH                 log here instead of stderr [EXECD_LOG_FILE]
  --log-format text|json          json: one JSON object per line (time, level, message,
                                  fields) for log pipelines (text) [EXECD_LOG_FORMAT]
  --graceful-shutdown-timeout D   on SIGTERM/SIGINT, time allowed to end commands (5s)
                                  [EXECD_API_GRACE_SHUTDOWN]
  --envs-file PATH                KEY=VALUE file applied to every command [EXECD_ENVS]
                                  (default: an empty <data-dir>/envs)
  --retention D                   keep finished commands' status and output (24h) [EXECD_RETENTION]
  --max-records N                 keep at most N finished commands, oldest dropped first (4096) [EXECD_MAX_RECORDS]
  --output-window SIZE            output kept in memory per command (1MiB)
  --output-memory SIZE            output kept in memory by all commands (16MiB)
  --spill-cap SIZE                output kept on disk per command (1GiB); 0 keeps none
  --spill-budget SIZE             output kept on disk by all commands (4GiB); past it, output
                                  beyond memory is dropped and counted [EXECD_SPILL_BUDGET]
  --max-running N                 commands running at once, background and session runs
                                  included; more get 429 (4096) [EXECD_MAX_RUNNING]
  --max-sessions N                bash sessions at once; more get 429 (1024) [EXECD_MAX_SESSIONS]
  --session-idle-timeout D        a session with no run for this long is deleted (24h)
                                  [EXECD_SESSION_IDLE_TIMEOUT]
  --isolated-end-timeout D        how long an isolated session's commit, discard or delete waits
                                  for the session's processes to end (30s)
                                  [EXECD_ISOLATED_END_TIMEOUT]
  --data-dir PATH                 private directory for spilled output and session state;
                                  created 0700 if missing, refused unless owned by execd's
                                  uid with mode 0700 (a new $TMPDIR/execd-XXXXXX) [EXECD_DATA_DIR]
  --drain-timeout D               how long pipes may stay open after a command exits (250ms)
  --header-timeout D              time for a connection's first bytes, for each request head
                                  and for each pause within a request body; idle connections,
                                  and stalled bodies, are closed after 1-1.5 times it (30s)
  --max-body SIZE                 largest JSON request body (1MiB)
  --ping-interval D               keep-alive event during silent streams (3s)
  --max-line SIZE                 longest partial line held before it is sent in pieces (64KiB)
  --cgroups auto|off              a cgroup per command where cgroup v2 is writable (auto), or
                                  track process trees through /proc (off) [EXECD_CGROUPS]
  --agent-sandbox-base-dir PATH   agent-sandbox python-runtime API base directory (cwd)
                                  [SANDBOX_BASE_DIR]; /execute limit [SANDBOX_EXEC_TIMEOUT_SECONDS] (300)
  --sandboxd-root PATH            agent-sandbox sandboxd API root (the base directory)
  --metadata-env-prefix P         sandboxd /v1/metadata variables (SANDBOX_)
  --metadata-env LIST             comma list of variable names /v1/metadata may serve
                                  (NAME* for a prefix) (P + ID, NAME, NAMESPACE, ...)
                                  [EXECD_METADATA_ENV]
  --grpc-port N                   also serve sandboxd gRPC on this port (it is always on --port)
  --e2b-port N                    serve E2B envd's API (HTTP + Connect RPC) on this port; envd's
                                  is 49983 (off) [EXECD_E2B_PORT]
  --e2b-watcher-idle D            remove an E2B polling watcher not polled this long (10m)
                                  [EXECD_E2B_WATCHER_IDLE]
  --ws-ping-interval D            WebSocket ping; a peer silent for twice this is dropped (30s)
  --max-code-contexts N           live /code contexts (Jupyter kernels) at most (32)
                                  [EXECD_MAX_CODE_CONTEXTS]
  --code-idle-timeout D           delete /code contexts idle this long (0: never; 0)
                                  [EXECD_CODE_IDLE_TIMEOUT]
  --runtime-init                  wait for POST /internal/init: until a control plane binds the
                                  sandbox (id, token digest, envs, hooks) every route but /ping,
                                  /ready and /internal/init answers 503, and an init-mode CMD
                                  is not started [EXECD_RUNTIME_INIT=true]
  --no-sendfile                   copy file downloads through user space instead of sending them
                                  with sendfile on plain HTTP/1.1 [EXECD_SENDFILE=false]
  --park-idle-above N             with more than N HTTP/1 connections open, an idle keep-alive
                                  connection leaves hyper (its buffers freed) as soon as it is
                                  idle; below, after half the header timeout (128; 0: always)
                                  [EXECD_PARK_IDLE_ABOVE]
  --max-operations N              live X-EXECD-OPERATION-ID ids at most; more get 429 (4096)
                                  [EXECD_MAX_OPERATIONS]
  --operation-ttl D               how long an operation id is remembered; later it is 410 (1h)
                                  [EXECD_OPERATION_TTL]
  --max-watches N                 directory watches open at once (GET /files/watch and gRPC
                                  WatchDir together); more get 429 / RESOURCE_EXHAUSTED (64)
                                  [EXECD_MAX_WATCHES]
  --watch-debounce D              a watch gathers and merges changes this long before sending
                                  them (0: at once) (250ms) [EXECD_WATCH_DEBOUNCE]
  --jupyter-host URL, --jupyter-token T
                                  accepted and ignored: /code drives kernels itself
  -h, --help                      print this help
  -V, --version                   print the version

Durations: 500ms, 3s, 2m, 1h, 1h30m, or bare seconds. Sizes: 4096, 64KiB, 1MiB, 1GiB (or K, M, G).
";

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Config>),
    /// `execd install DEST`: copy this binary to DEST (for init containers
    /// whose image has no `cp`).
    Install(PathBuf),
    Help,
    Version,
}

/// Parses flags (after the program name) and environment variables.
pub fn parse(
    args: impl IntoIterator<Item = OsString>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Parsed, String> {
    let mut c = Config::default();
    let nonempty = |k: &str| env(k).filter(|v| !v.is_empty());
    let env_token = TokenSource::pick(
        nonempty("EXECD_ACCESS_TOKEN"),
        nonempty("EXECD_ACCESS_TOKEN_FILE").map(PathBuf::from),
        "EXECD_ACCESS_TOKEN and EXECD_ACCESS_TOKEN_FILE",
    )?;
    let (mut flag_token, mut flag_token_file) = (None, None);
    if let Some(v) = nonempty("EXECD_ALLOWED_ORIGINS") {
        c.allowed_origins = list(&v);
    }
    if let Some(v) = nonempty("EXECD_ALLOWED_HOSTS") {
        c.allowed_hosts = list(&v);
    }
    if let Some(v) = nonempty("EXECD_METADATA_ENV") {
        c.metadata_env = Some(list(&v));
    }
    if let Some(v) = env("EXECD_LOG_FILE").filter(|v| !v.is_empty()) {
        c.log_file = Some(v.into());
    }
    if let Some(v) = env("EXECD_API_GRACE_SHUTDOWN").filter(|v| !v.is_empty()) {
        c.graceful_shutdown_timeout =
            duration(&v).map_err(|e| format!("EXECD_API_GRACE_SHUTDOWN: {e}"))?;
    }
    if let Some(v) = nonempty("EXECD_E2B_PORT") {
        c.e2b_port = Some(
            v.parse()
                .map_err(|_| format!("invalid EXECD_E2B_PORT '{v}'"))?,
        );
    }
    if let Some(v) = env("EXECD_ENVS").filter(|v| !v.is_empty()) {
        c.env_file = Some(v.into());
    }
    if let Some(v) = env("EXECD_CGROUPS").filter(|v| !v.is_empty()) {
        c.cgroups = cgroup_mode(&v).map_err(|e| format!("EXECD_CGROUPS: {e}"))?;
    }
    if let Some(v) = env("EXECD_RETENTION").filter(|v| !v.is_empty()) {
        c.retention = duration(&v).map_err(|e| format!("EXECD_RETENTION: {e}"))?;
    }
    if let Some(v) = env("EXECD_MAX_RECORDS").filter(|v| !v.is_empty()) {
        c.max_records = records(&v).map_err(|e| format!("EXECD_MAX_RECORDS: {e}"))?;
    }
    if let Some(v) = env("EXECD_SPILL_BUDGET").filter(|v| !v.is_empty()) {
        c.spill_budget = size(&v).map_err(|e| format!("EXECD_SPILL_BUDGET: {e}"))?;
    }
    if let Some(v) = env("EXECD_MAX_RUNNING").filter(|v| !v.is_empty()) {
        c.max_running = records(&v).map_err(|e| format!("EXECD_MAX_RUNNING: {e}"))?;
    }
    if let Some(v) = env("EXECD_MAX_SESSIONS").filter(|v| !v.is_empty()) {
        c.max_sessions = records(&v).map_err(|e| format!("EXECD_MAX_SESSIONS: {e}"))?;
    }
    if let Some(v) = env("EXECD_SESSION_IDLE_TIMEOUT").filter(|v| !v.is_empty()) {
        c.session_idle_timeout =
            duration(&v).map_err(|e| format!("EXECD_SESSION_IDLE_TIMEOUT: {e}"))?;
    }
    if let Some(v) = env("EXECD_ISOLATED_END_TIMEOUT").filter(|v| !v.is_empty()) {
        c.isolated_end_timeout =
            positive(duration(&v)).map_err(|e| format!("EXECD_ISOLATED_END_TIMEOUT: {e}"))?;
    }
    if let Some(v) = env("EXECD_DATA_DIR").filter(|v| !v.is_empty()) {
        c.data_dir = Some(v.into());
    }
    if let Some(v) = env("EXECD_MAX_CODE_CONTEXTS").filter(|v| !v.is_empty()) {
        c.max_code_contexts = records(&v).map_err(|e| format!("EXECD_MAX_CODE_CONTEXTS: {e}"))?;
    }
    if let Some(v) = env("EXECD_LOG_FORMAT").filter(|v| !v.is_empty()) {
        c.log_json = log_format(&v).map_err(|e| format!("EXECD_LOG_FORMAT: {e}"))?;
    }
    if let Some(v) = env("EXECD_MAX_OPERATIONS").filter(|v| !v.is_empty()) {
        c.max_operations = records(&v).map_err(|e| format!("EXECD_MAX_OPERATIONS: {e}"))?;
    }
    if let Some(v) = env("EXECD_OPERATION_TTL").filter(|v| !v.is_empty()) {
        c.operation_ttl = duration(&v).map_err(|e| format!("EXECD_OPERATION_TTL: {e}"))?;
    }
    if let Some(v) = env("EXECD_SENDFILE").filter(|v| !v.is_empty()) {
        c.sendfile = boolean(&v).map_err(|e| format!("EXECD_SENDFILE: {e}"))?;
    }
    if let Some(v) = env("EXECD_PARK_IDLE_ABOVE").filter(|v| !v.is_empty()) {
        c.park_idle_above = whole(&v).map_err(|e| format!("EXECD_PARK_IDLE_ABOVE: {e}"))?;
    }
    if let Some(v) = env("EXECD_MAX_WATCHES").filter(|v| !v.is_empty()) {
        c.max_watches = records(&v).map_err(|e| format!("EXECD_MAX_WATCHES: {e}"))?;
    }
    if let Some(v) = env("EXECD_WATCH_DEBOUNCE").filter(|v| !v.is_empty()) {
        c.watch_debounce = duration(&v).map_err(|e| format!("EXECD_WATCH_DEBOUNCE: {e}"))?;
    }
    if let Some(v) = env("EXECD_E2B_WATCHER_IDLE").filter(|v| !v.is_empty()) {
        c.e2b_watcher_idle =
            positive(duration(&v)).map_err(|e| format!("EXECD_E2B_WATCHER_IDLE: {e}"))?;
    }
    if let Some(v) = env("EXECD_RUNTIME_INIT").filter(|v| !v.is_empty()) {
        c.runtime_init = boolean(&v).map_err(|e| format!("EXECD_RUNTIME_INIT: {e}"))?;
    }
    if let Some(v) = env("EXECD_CODE_IDLE_TIMEOUT").filter(|v| !v.is_empty()) {
        let d = duration(&v).map_err(|e| format!("EXECD_CODE_IDLE_TIMEOUT: {e}"))?;
        c.code_idle_timeout = (!d.is_zero()).then_some(d);
    }
    if let Some(v) = env("SANDBOX_BASE_DIR").filter(|v| !v.trim().is_empty()) {
        c.agent_base_dir = Some(v.into());
    }
    if let Some(v) = env("SANDBOX_EXEC_TIMEOUT_SECONDS") {
        c.agent_exec_timeout = exec_timeout(&v);
    }

    use lexopt::prelude::*;
    let args: Vec<OsString> = args.into_iter().map(go_style).collect();
    let mut p = lexopt::Parser::from_args(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Short('V') | Long("version") => return Ok(Parsed::Version),
            Long("port") => {
                c.port = value(&mut p, "port")?
                    .parse()
                    .map_err(|_| "--port: expected 0-65535".to_string())?
            }
            Long("bind") => {
                c.bind = value(&mut p, "bind")?
                    .parse()
                    .map_err(|_| "--bind: expected an IP address".to_string())?
            }
            Long("access-token") => {
                flag_token = Some(value(&mut p, "access-token")?).filter(|t| !t.is_empty())
            }
            Long("access-token-file") => {
                flag_token_file = Some(PathBuf::from(value(&mut p, "access-token-file")?))
            }
            Long("allowed-origins") => c.allowed_origins = list(&value(&mut p, "allowed-origins")?),
            Long("allowed-hosts") => c.allowed_hosts = list(&value(&mut p, "allowed-hosts")?),
            Long("metadata-env") => c.metadata_env = Some(list(&value(&mut p, "metadata-env")?)),
            Long("log-level") => {
                c.log_level = value(&mut p, "log-level")?
                    .parse()
                    .ok()
                    .filter(|l| *l <= 7)
                    .ok_or("--log-level: expected 0-7")?
            }
            Long("log-file") => c.log_file = Some(value(&mut p, "log-file")?.into()),
            Long("graceful-shutdown-timeout") => {
                c.graceful_shutdown_timeout =
                    duration(&value(&mut p, "graceful-shutdown-timeout")?)?
            }
            Long("envs-file") => c.env_file = Some(value(&mut p, "envs-file")?.into()),
            Long("retention") => c.retention = duration(&value(&mut p, "retention")?)?,
            Long("max-records") => c.max_records = records(&value(&mut p, "max-records")?)?,
            Long("output-window") => {
                c.output_window = size(&value(&mut p, "output-window")?)?.max(4096) as usize
            }
            Long("output-memory") => {
                c.output_memory = size(&value(&mut p, "output-memory")?)? as usize
            }
            Long("spill-cap") => c.spill_cap = size(&value(&mut p, "spill-cap")?)?,
            Long("spill-budget") => c.spill_budget = size(&value(&mut p, "spill-budget")?)?,
            Long("max-running") => c.max_running = records(&value(&mut p, "max-running")?)?,
            Long("max-sessions") => c.max_sessions = records(&value(&mut p, "max-sessions")?)?,
            Long("session-idle-timeout") => {
                c.session_idle_timeout = duration(&value(&mut p, "session-idle-timeout")?)?
                    .max(Duration::from_millis(10))
            }
            Long("isolated-end-timeout") => {
                c.isolated_end_timeout =
                    positive(duration(&value(&mut p, "isolated-end-timeout")?))?
            }
            Long("data-dir") => c.data_dir = Some(value(&mut p, "data-dir")?.into()),
            Long("drain-timeout") => c.drain_timeout = duration(&value(&mut p, "drain-timeout")?)?,
            Long("header-timeout") => {
                c.header_timeout =
                    duration(&value(&mut p, "header-timeout")?)?.max(Duration::from_millis(10))
            }
            Long("max-body") => c.max_body = size(&value(&mut p, "max-body")?)?.max(1024) as usize,
            Long("cgroups") => c.cgroups = cgroup_mode(&value(&mut p, "cgroups")?)?,
            Long("max-line") => {
                c.max_line = size(&value(&mut p, "max-line")?)?.clamp(1024, 64 << 20) as usize
            }
            Long("ping-interval") => {
                c.ping_interval =
                    duration(&value(&mut p, "ping-interval")?)?.max(Duration::from_millis(10))
            }
            Long("agent-sandbox-base-dir") => {
                c.agent_base_dir = Some(value(&mut p, "agent-sandbox-base-dir")?.into())
            }
            Long("sandboxd-root") | Long("root-dir") => {
                c.sandboxd_root = Some(value(&mut p, "sandboxd-root")?.into())
            }
            Long("metadata-env-prefix") => {
                c.metadata_env_prefix = value(&mut p, "metadata-env-prefix")?
            }
            Long("grpc-port") => {
                let v = value(&mut p, "grpc-port")?;
                c.grpc_port = Some(
                    v.parse()
                        .map_err(|_| format!("invalid --grpc-port '{v}'"))?,
                );
            }
            Long("e2b-port") => {
                let v = value(&mut p, "e2b-port")?;
                c.e2b_port = Some(v.parse().map_err(|_| format!("invalid --e2b-port '{v}'"))?);
            }
            Long("ws-ping-interval") => {
                c.ws_ping_interval =
                    duration(&value(&mut p, "ws-ping-interval")?)?.max(Duration::from_millis(10))
            }
            Long("code-idle-timeout") => {
                let d = duration(&value(&mut p, "code-idle-timeout")?)?;
                c.code_idle_timeout = (!d.is_zero()).then_some(d);
            }
            Long("runtime-init") => c.runtime_init = true,
            Long("no-sendfile") => c.sendfile = false,
            Long("park-idle-above") => {
                c.park_idle_above = whole(&value(&mut p, "park-idle-above")?)?
            }
            Long("log-format") => c.log_json = log_format(&value(&mut p, "log-format")?)?,
            Long("max-operations") => {
                c.max_operations = records(&value(&mut p, "max-operations")?)?
            }
            Long("operation-ttl") => c.operation_ttl = duration(&value(&mut p, "operation-ttl")?)?,
            Long("max-watches") => c.max_watches = records(&value(&mut p, "max-watches")?)?,
            Long("watch-debounce") => {
                c.watch_debounce = duration(&value(&mut p, "watch-debounce")?)?
            }
            Long("e2b-watcher-idle") => {
                c.e2b_watcher_idle = positive(duration(&value(&mut p, "e2b-watcher-idle")?))?
            }
            Long("max-code-contexts") => {
                c.max_code_contexts = records(&value(&mut p, "max-code-contexts")?)?
            }
            // Upstream flags that have no meaning here, accepted so existing launchers work.
            Long("jupyter-host") | Long("jupyter-token") | Long("jupyter-idle-poll-interval") => {
                let _ = value(&mut p, "ignored")?;
            }
            Value(v) if c.init.is_none() && v == "install" => {
                let dest = p
                    .value()
                    .map_err(|_| "install: DEST is required".to_string())?;
                return Ok(Parsed::Install(dest.into()));
            }
            Value(v) if c.init.is_none() && v == "init" => c.init = Some(Vec::new()),
            Value(v) if c.init.is_some() => {
                // The main command: this word and everything after it, uninterpreted.
                let mut argv = vec![v
                    .into_string()
                    .map_err(|_| "init: command is not valid UTF-8".to_string())?];
                for a in p.raw_args().map_err(|e| e.to_string())? {
                    argv.push(
                        a.into_string()
                            .map_err(|_| "init: argument is not valid UTF-8".to_string())?,
                    );
                }
                c.init = Some(argv);
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    // A flag wins over the variables; a token and a token file at the same
    // level are a mistake, not a precedence question.
    let source = TokenSource::pick(
        flag_token,
        flag_token_file,
        "--access-token and --access-token-file",
    )?
    .or(env_token);
    c.access_token = match source {
        None => None,
        Some(TokenSource::Value(t)) => Some(Token::parse(&t)?),
        Some(TokenSource::File(path)) => Some(Token::parse(&read_token_file(&path)?)?),
    };
    if let Some(argv) = &mut c.init {
        if argv.is_empty() {
            if let Some(cmd) = env("BOOTSTRAP_CMD").filter(|v| !v.trim().is_empty()) {
                let shell = env("BOOTSTRAP_SHELL")
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| "sh".into());
                *argv = vec![shell, "-c".into(), cmd];
            }
        }
    }
    Ok(Parsed::Run(Box::new(c)))
}

/// Where the access token comes from.
enum TokenSource {
    Value(String),
    File(PathBuf),
}

impl TokenSource {
    fn pick(
        value: Option<String>,
        file: Option<PathBuf>,
        both: &str,
    ) -> Result<Option<TokenSource>, String> {
        match (value, file) {
            (Some(_), Some(_)) => Err(format!("{both} are both given; give one")),
            (Some(v), None) => Ok(Some(TokenSource::Value(v))),
            (None, Some(f)) => Ok(Some(TokenSource::File(f))),
            (None, None) => Ok(None),
        }
    }
}

/// The longest access token file read.
const MAX_TOKEN_FILE: u64 = 4096;

/// The token in `path`, surrounding whitespace (a final newline) removed.
/// An empty file is an error: it must not silently turn the check off.
fn read_token_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let bad = |e: &dyn std::fmt::Display| format!("access token file {}: {e}", path.display());
    let f = std::fs::File::open(path).map_err(|e| bad(&e))?;
    let mut raw = Vec::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_end(&mut raw)
        .map_err(|e| bad(&e))?;
    if raw.len() as u64 > MAX_TOKEN_FILE {
        return Err(bad(&format!("larger than {MAX_TOKEN_FILE} bytes")));
    }
    let s = String::from_utf8(raw).map_err(|_| bad(&"not valid UTF-8"))?;
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(&"empty"));
    }
    Ok(t.to_string())
}

/// A comma-separated list, items trimmed, empty items dropped.
fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

fn value(p: &mut lexopt::Parser, name: &str) -> Result<String, String> {
    p.value()
        .map_err(|e| e.to_string())?
        .into_string()
        .map_err(|_| format!("--{name}: not valid UTF-8"))
}

/// `-port=1` (Go style) becomes `--port=1`; short flags and values are left alone.
fn go_style(a: OsString) -> OsString {
    match a.to_str() {
        Some(s)
            if s.len() > 2
                && s.starts_with('-')
                && !s.starts_with("--")
                && s.as_bytes()[1].is_ascii_alphabetic() =>
        {
            format!("-{s}").into()
        }
        _ => a,
    }
}

/// Parses `500ms`, `3s`, `2m`, `1h30m`, `1.5s` or bare seconds.
/// A duration that must not be zero.
fn positive(d: Result<Duration, String>) -> Result<Duration, String> {
    d.and_then(|d| {
        if d.is_zero() {
            Err("must be more than 0".into())
        } else {
            Ok(d)
        }
    })
}

pub fn duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let bad = || format!("invalid duration '{s}' (try 500ms, 3s, 2m, 1h)");
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += num * mult;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}
/// A whole number, 0 included.
fn whole(v: &str) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .map_err(|_| format!("invalid number {v:?}: a whole number is required"))
}

/// A count of finished records to keep: at least 1.
fn records(v: &str) -> Result<usize, String> {
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("invalid count {v:?}: a whole number of at least 1 is required"))
}

/// Parses `4096`, `64KiB`, `64K`, `1MiB`, `1M`, `1GiB`, `1G`.
pub fn size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..split]
        .parse()
        .map_err(|_| format!("invalid size '{s}'"))?;
    let mult: u64 = match s[split..].trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("invalid size '{s}' (try 64KiB, 1MiB, 1GiB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size '{s}' too large"))
}

fn log_format(v: &str) -> Result<bool, String> {
    match v {
        "text" => Ok(false),
        "json" => Ok(true),
        _ => Err(format!("--log-format: expected text or json, not {v:?}")),
    }
}

fn boolean(v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(format!("expected true or false, not {v:?}")),
    }
}

fn cgroup_mode(v: &str) -> Result<crate::process::tree::CgroupMode, String> {
    match v {
        "auto" => Ok(crate::process::tree::CgroupMode::Auto),
        "off" => Ok(crate::process::tree::CgroupMode::Off),
        _ => Err(format!("expected auto or off, got {v:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str], env: &[(&str, &str)]) -> Result<Config, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        match parse(args.iter().map(OsString::from), |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })? {
            Parsed::Run(c) => Ok(*c),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn resource_limits() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.spill_budget, 4 << 30);
        assert_eq!(c.max_running, 4096);
        assert_eq!(c.max_sessions, 1024);
        assert_eq!(c.session_idle_timeout, Duration::from_secs(24 * 3600));
        let c = run(
            &["--spill-budget", "1MiB", "--max-running", "3"],
            &[
                ("EXECD_MAX_SESSIONS", "5"),
                ("EXECD_SESSION_IDLE_TIMEOUT", "2m"),
                ("EXECD_MAX_RUNNING", "9"),
            ],
        )
        .unwrap();
        assert_eq!(c.spill_budget, 1 << 20);
        assert_eq!(c.max_running, 3, "the flag wins");
        assert_eq!(c.max_sessions, 5);
        assert_eq!(c.session_idle_timeout, Duration::from_secs(120));
        assert!(run(&["--max-running", "0"], &[]).is_err());
        assert_eq!(run(&[], &[]).unwrap().park_idle_above, 128);
        let c = run(&["--park-idle-above", "0"], &[]).unwrap();
        assert_eq!(c.park_idle_above, 0);
        let c = run(&[], &[("EXECD_PARK_IDLE_ABOVE", "7")]).unwrap();
        assert_eq!(c.park_idle_above, 7);
        assert!(run(&["--park-idle-above", "-1"], &[]).is_err());
    }

    #[test]
    fn agent_sandbox_settings() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.agent_exec_timeout, Duration::from_secs(300));
        assert_eq!(c.agent_base_dir, None);
        let c = run(
            &["--sandboxd-root", "/ws", "--grpc-port", "9090"],
            &[
                ("SANDBOX_BASE_DIR", "/app"),
                ("SANDBOX_EXEC_TIMEOUT_SECONDS", "2.5"),
            ],
        )
        .unwrap();
        assert_eq!(c.agent_base_dir, Some(PathBuf::from("/app")));
        assert_eq!(c.sandboxd_root, Some(PathBuf::from("/ws")));
        assert_eq!(c.grpc_port, Some(9090));
        assert_eq!(c.agent_exec_timeout, Duration::from_millis(2500));
        for bad in ["x", "nan", "inf", "0", "-1", ""] {
            assert_eq!(exec_timeout(bad), DEFAULT_EXEC_TIMEOUT, "{bad}");
        }
        let c = run(&[], &[("SANDBOX_BASE_DIR", "  ")]).unwrap();
        assert_eq!(c.agent_base_dir, None);
    }

    #[test]
    fn defaults_and_flags() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.port, 44772);
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        let c = run(
            &[
                "--port",
                "1",
                "--bind=127.0.0.1",
                "-log-level=7",
                "--access-token",
                "t",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            (c.port, c.log_level, c.access_token),
            (1, 7, Some(Token::parse("t").unwrap()))
        );
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(
            run(&[], &[]).unwrap().header_timeout,
            Duration::from_secs(30)
        );
        let c = run(&["--header-timeout", "2s"], &[]).unwrap();
        assert_eq!(c.header_timeout, Duration::from_secs(2));
        assert!(run(&["--header-timeout", "soon"], &[]).is_err());
    }

    #[test]
    fn env_and_precedence() {
        let env = [
            ("EXECD_ACCESS_TOKEN", "e"),
            ("EXECD_ENVS", "/x.env"),
            ("EXECD_API_GRACE_SHUTDOWN", "500ms"),
        ];
        let c = run(&[], &env).unwrap();
        assert_eq!(c.access_token, Some(Token::parse("e").unwrap()));
        assert_eq!(c.env_file, Some(PathBuf::from("/x.env")));
        assert_eq!(c.graceful_shutdown_timeout, Duration::from_millis(500));
        let c = run(&["--access-token", "f"], &env).unwrap();
        assert_eq!(c.access_token, Some(Token::parse("f").unwrap()));
    }

    #[test]
    fn token_sources() {
        let dir = std::env::temp_dir().join(format!("execd-cfg-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "from-file\n").unwrap();
        let f = file.to_str().unwrap();
        let t = |s: &str| Some(Token::parse(s).unwrap());
        assert_eq!(
            run(&["--access-token-file", f], &[]).unwrap().access_token,
            t("from-file")
        );
        let env_file = [("EXECD_ACCESS_TOKEN_FILE", f)];
        assert_eq!(run(&[], &env_file).unwrap().access_token, t("from-file"));
        // A flag wins over either variable; two sources at one level are an error.
        assert_eq!(
            run(&["--access-token", "x"], &env_file)
                .unwrap()
                .access_token,
            t("x")
        );
        assert!(run(&["--access-token", "x", "--access-token-file", f], &[]).is_err());
        assert!(run(
            &[],
            &[("EXECD_ACCESS_TOKEN", "x"), ("EXECD_ACCESS_TOKEN_FILE", f)]
        )
        .is_err());
        let hex = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b";
        std::fs::write(&file, format!("sha256:{hex}")).unwrap();
        assert_eq!(
            run(&["--access-token-file", f], &[]).unwrap().access_token,
            t("secret")
        );
        assert!(run(&["--access-token", "sha256:12"], &[]).is_err());
        std::fs::write(&file, " \n").unwrap();
        assert!(
            run(&["--access-token-file", f], &[]).is_err(),
            "an empty file"
        );
        assert!(run(&["--access-token-file", "/nonexistent/execd-token"], &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn origin_and_host_lists() {
        let c = run(
            &["--allowed-origins", "http://a:1, *,,"],
            &[("EXECD_ALLOWED_HOSTS", "x,y")],
        )
        .unwrap();
        assert_eq!(c.allowed_origins, ["http://a:1", "*"]);
        assert_eq!(c.allowed_hosts, ["x", "y"]);
        assert!(run(&[], &[]).unwrap().allowed_origins.is_empty());
    }

    #[test]
    fn errors_are_messages() {
        assert!(run(&["--port", "x"], &[]).is_err());
        assert!(run(&["--log-level", "9"], &[]).is_err());
        assert!(run(&["--nope"], &[]).is_err());
        assert!(matches!(
            parse(["--help".into()], |_| None),
            Ok(Parsed::Help)
        ));
    }

    #[test]
    fn init_mode() {
        let c = run(
            &["init", "--port", "9", "--", "sh", "-c", "echo --port"],
            &[],
        )
        .unwrap();
        assert_eq!(c.port, 9);
        assert_eq!(
            c.init,
            Some(vec!["sh".into(), "-c".into(), "echo --port".into()])
        );
        let c = run(&["init", "sleep", "-x"], &[]).unwrap();
        assert_eq!(c.init, Some(vec!["sleep".into(), "-x".into()]));
        let c = run(&["init"], &[("BOOTSTRAP_CMD", "run app")]).unwrap();
        assert_eq!(
            c.init,
            Some(vec!["sh".into(), "-c".into(), "run app".into()])
        );
        assert_eq!(run(&[], &[]).unwrap().init, None);
        assert!(run(&["stray"], &[]).is_err());
        assert!(
            matches!(parse(["install".into(), "/x".into()], |_| None), Ok(Parsed::Install(p)) if p == std::path::Path::new("/x"))
        );
        assert!(parse(["install".into()], |_| None).is_err());
    }

    #[test]
    fn watch_flags() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.max_watches, 64);
        assert_eq!(c.watch_debounce, Duration::from_millis(250));
        let env = [("EXECD_MAX_WATCHES", "5"), ("EXECD_WATCH_DEBOUNCE", "0")];
        let c = run(&[], &env).unwrap();
        assert_eq!((c.max_watches, c.watch_debounce), (5, Duration::ZERO));
        let c = run(&["--max-watches", "7", "--watch-debounce", "1s"], &env).unwrap();
        assert_eq!(
            (c.max_watches, c.watch_debounce),
            (7, Duration::from_secs(1))
        );
        assert!(run(&["--max-watches", "0"], &[]).is_err());
        assert!(run(&[], &[("EXECD_WATCH_DEBOUNCE", "soon")]).is_err());
        assert_eq!(c.e2b_watcher_idle, Duration::from_secs(600));
        let c = run(&["--e2b-watcher-idle", "2s"], &[]).unwrap();
        assert_eq!(c.e2b_watcher_idle, Duration::from_secs(2));
        let c = run(&[], &[("EXECD_E2B_WATCHER_IDLE", "1m")]).unwrap();
        assert_eq!(c.e2b_watcher_idle, Duration::from_secs(60));
        assert!(run(&["--e2b-watcher-idle", "0"], &[]).is_err());
    }

    #[test]
    fn isolated_end_timeout() {
        let c = run(&[], &[]).unwrap();
        assert_eq!(c.isolated_end_timeout, Duration::from_secs(30));
        let env = [("EXECD_ISOLATED_END_TIMEOUT", "2m")];
        assert_eq!(
            run(&[], &env).unwrap().isolated_end_timeout,
            Duration::from_secs(120)
        );
        let c = run(&["--isolated-end-timeout", "500ms"], &env).unwrap();
        assert_eq!(c.isolated_end_timeout, Duration::from_millis(500));
        assert!(run(&["--isolated-end-timeout", "0"], &[]).is_err());
        assert!(run(&[], &[("EXECD_ISOLATED_END_TIMEOUT", "soon")]).is_err());
    }

    #[test]
    fn record_counts() {
        assert_eq!(records("4096").unwrap(), 4096);
        assert_eq!(records(" 1 ").unwrap(), 1);
        for bad in ["0", "-3", "many", "", "1.5"] {
            assert!(records(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2").unwrap(), Duration::from_secs(2));
        assert!(duration("soon").is_err());
        assert!(duration("-1").is_err());
        assert!(
            duration("1e300").is_err(),
            "too long for a Duration: an error, not a panic"
        );
        assert!(duration("9999999999999999999h").is_err());
        assert!(duration("NaN").is_err() && duration("inf").is_err());
        assert_eq!(size("64KiB").unwrap(), 65536);
        assert_eq!(size("1G").unwrap(), 1 << 30);
        assert_eq!(size("10").unwrap(), 10);
        assert!(size("1T").is_err());
    }
}
