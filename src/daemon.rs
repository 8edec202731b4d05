//! Wiring: build the engine and the server from a `Config`, run until
//! SIGTERM/SIGINT, then shut down gracefully within the configured timeout.

use nix::sys::signal::Signal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::config::Config;
use crate::process::datadir::DataDir;
use crate::process::output::LogLimits;
use crate::process::{spawn, Engine, EngineConfig};
use crate::runtime::EntrypointPolicy;
use crate::server;

/// The main process's exit, as the reaper reports it.
type MainExit = tokio::sync::oneshot::Receiver<crate::process::reaper::ExitStatus>;

/// A main process being (re)started after a binding.
type Starting = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<(i32, MainExit), spawn::SpawnError>> + Send>,
>;

/// Variables never passed on to commands.
const SECRET_VARS: &[&str] = &["EXECD_ACCESS_TOKEN", "EXECD_ACCESS_TOKEN_FILE"];

/// Variables whose values are overwritten in the process's initial
/// environment block (what `/proc/<pid>/environ` shows).
const SCRUBBED_VARS: &[&str] = &["EXECD_ACCESS_TOKEN"];

/// Flags whose values are overwritten in the initial argument block (what
/// `/proc/<pid>/cmdline` and `ps` show), as `--F V`, `--F=V`, `-F V`, `-F=V`.
const SCRUBBED_FLAGS: &[&str] = &["access-token"];

/// The most of either block looked at (the kernel bounds both far below).
const MAX_BLOCK: u64 = 32 << 20;

/// Overwrites the access token with NUL bytes where the kernel shows it to
/// other processes: the initial argument and environment strings, which
/// `/proc/<pid>/cmdline` and `/proc/<pid>/environ` read from the process's
/// memory. `std::env::remove_var` cannot do this: it only drops libc's
/// pointer to the string. The memory is reached through `/proc/self/mem`,
/// at the addresses `/proc/self/stat` gives, so no pointer is dereferenced.
///
/// Call it first thing in `main`, before any thread reads the environment.
pub fn scrub_secrets() -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let bad = || std::io::Error::other("unexpected /proc/self/stat format");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .ok_or_else(bad)?
        .1
        .split_whitespace()
        .collect();
    // Fields 48-51 (arg_start, arg_end, env_start, env_end); the list
    // starts at field 3.
    let field = |n: usize| -> std::io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    for (start, end, find) in [
        (field(48)?, field(49)?, secret_args as fn(&[u8]) -> Vec<_>),
        (field(50)?, field(51)?, secret_env),
    ] {
        let len = end.saturating_sub(start).min(MAX_BLOCK);
        let mut block = vec![0u8; len as usize];
        mem.read_exact_at(&mut block, start)?;
        for r in find(&block).into_iter().filter(|r| !r.is_empty()) {
            let zeros = vec![0u8; r.len()];
            mem.write_all_at(&zeros, start + r.start as u64)?;
        }
    }
    Ok(())
}

/// The NUL-terminated strings of a block, with their offsets.
fn strings(block: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let mut off = 0;
    block.split(|b| *b == 0).map(move |s| {
        let at = off;
        off += s.len() + 1;
        (at, s)
    })
}

/// Where the values of [`SCRUBBED_FLAGS`] are in an argument block. Stops
/// at `--`: what follows is the init-mode command's own.
fn secret_args(block: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut found = Vec::new();
    let mut value_next = false;
    for (at, arg) in strings(block).skip(1) {
        if std::mem::take(&mut value_next) {
            found.push(at..at + arg.len());
            continue;
        }
        if arg == b"--" {
            break;
        }
        let Some(name) = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-")) else {
            continue;
        };
        let name_at = at + (arg.len() - name.len());
        for flag in SCRUBBED_FLAGS {
            let flag = flag.as_bytes();
            if name == flag {
                value_next = true;
            } else if name.starts_with(flag) && name.get(flag.len()) == Some(&b'=') {
                found.push(name_at + flag.len() + 1..at + arg.len());
            }
        }
    }
    found
}

/// Where the values of [`SCRUBBED_VARS`] are in an environment block.
fn secret_env(block: &[u8]) -> Vec<std::ops::Range<usize>> {
    strings(block)
        .filter_map(|(at, entry)| {
            SCRUBBED_VARS.iter().find_map(|v| {
                let v = v.as_bytes();
                (entry.starts_with(v) && entry.get(v.len()) == Some(&b'='))
                    .then(|| at + v.len() + 1..at + entry.len())
            })
        })
        .collect()
}

/// Makes the process non-dumpable: its `/proc/<pid>/` files then belong to
/// root, so processes of its own uid (when that is not root) can neither
/// read its memory nor trace it, and it leaves no core dump. Commands are
/// not affected: `execve` resets the flag.
pub fn set_undumpable() -> nix::Result<()> {
    nix::sys::prctl::set_dumpable(false)
}

fn engine_config(c: &Config, data_dir: Arc<DataDir>) -> EngineConfig {
    let mut base_env = base_env(c);
    let mut inherit_env = ENV_PREPARED.load(std::sync::atomic::Ordering::Relaxed);
    let port = c.port.to_string();
    if std::env::var(JUPYTER_PORT).ok().as_deref() != Some(port.as_str()) {
        base_env.retain(|(k, _)| k != JUPYTER_PORT);
        base_env.push((JUPYTER_PORT.into(), port.into()));
        inherit_env = false;
    }
    EngineConfig {
        shell: spawn::default_shell(),
        limits: LogLimits {
            window: c.output_window,
            spill_cap: c.spill_cap,
        },
        mem_total: c.output_memory,
        data_dir,
        max_running: c.max_running,
        max_sessions: c.max_sessions,
        session_idle: c.session_idle_timeout,
        retention: c.retention,
        max_records: c.max_records,
        drain: c.drain_timeout,
        kill_grace: Duration::from_secs(3),
        max_line: c.max_line,
        env_file: c.env_file.clone(),
        base_env,
        inherit_env,
        cgroups: c.cgroups,
    }
}

/// The code-interpreter SDK's readiness probe opens
/// `/dev/tcp/127.0.0.1/${JUPYTER_PORT:-44771}` through `POST /command`: with
/// no Jupyter server, `JUPYTER_PORT` names execd's own port, which does
/// serve `/code`. Set in the daemon's environment at start-up when the port
/// is fixed (so commands still inherit that environment as it is);
/// with `--port 0` the port is bound first, before any thread exists, so the
/// same holds; should that bind fail, the variable is added to what
/// commands get once the port is known.
const JUPYTER_PORT: &str = "JUPYTER_PORT";

/// Set once [`prepare_environment`] has run: the daemon's own environment is
/// then exactly what commands inherit.
static ENV_PREPARED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes the daemon's own environment the one commands inherit: the secrets
/// are removed and `EXECD_ENVS` names the env file however it was
/// configured. A command that adds nothing to it can then be spawned with the
/// environment as it is, instead of a copy built for every spawn.
///
/// Call it first thing in `main`, while the process has a single thread:
/// changing the environment is only sound when no other thread reads it.
///
/// The data directory is made here too (see [`open_data_dir`]), so that
/// without `--envs-file` an empty env file in it can be `EXECD_ENVS`.
pub fn prepare_environment(c: &mut Config) {
    for k in SECRET_VARS {
        std::env::remove_var(k);
    }
    open_data_dir(c);
    match &c.env_file {
        Some(f) => std::env::set_var("EXECD_ENVS", f),
        None => std::env::remove_var("EXECD_ENVS"),
    }
    let port = match c.port {
        0 => pre_bind(c),
        p => p,
    };
    if port != 0 {
        std::env::set_var(JUPYTER_PORT, port.to_string());
    }
    ENV_PREPARED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The data directory, opened by [`prepare_environment`] ([`run`] takes it;
/// an error stops execd there, with the reason).
static PRE_OPENED: std::sync::Mutex<Option<std::io::Result<DataDir>>> = std::sync::Mutex::new(None);

/// The name of the default env file in the data directory.
pub const DEFAULT_ENV_FILE: &str = "envs";

/// Opens the data directory and, when no env file is configured, creates
/// an empty one in it (0600, `O_EXCL`) and makes it the env file: the SDK's
/// `set_env` appends to `$EXECD_ENVS` and fails when it is unset, so it
/// works out of the box. Commands running as execd's user can write it; it
/// is removed with the data directory at shutdown.
fn open_data_dir(c: &mut Config) {
    let opened = DataDir::open(c.data_dir.as_deref());
    if let (Ok(dir), None) = (&opened, &c.env_file) {
        // One left by an execd that was killed (a kept `--data-dir`) is
        // replaced: each daemon starts with an empty file of its own.
        dir.remove(DEFAULT_ENV_FILE);
        match dir.create(DEFAULT_ENV_FILE, true) {
            Ok(_) => c.env_file = Some(dir.path().join(DEFAULT_ENV_FILE)),
            // Logged once logging is set up, by `run`.
            Err(e) => {
                let _ = ENV_FILE_ERROR.set(e.to_string());
            }
        }
    }
    *PRE_OPENED.lock().unwrap_or_else(|p| p.into_inner()) = Some(opened);
}

/// Why the default env file could not be made, if it could not.
static ENV_FILE_ERROR: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// With `--port 0`, the listening socket, bound by [`prepare_environment`]
/// so that its port is known (and in `JUPYTER_PORT`) before any thread
/// exists; [`run`] serves on it.
static PRE_BOUND: std::sync::Mutex<Option<std::net::TcpListener>> = std::sync::Mutex::new(None);

/// Binds `--bind`:0 now; the port, or 0 if that failed (then [`run`] binds
/// again and reports the error).
fn pre_bind(c: &Config) -> u16 {
    match std::net::TcpListener::bind(SocketAddr::new(c.bind, 0)) {
        Ok(l) => {
            let port = l.local_addr().map_or(0, |a| a.port());
            *PRE_BOUND.lock().unwrap_or_else(|p| p.into_inner()) = Some(l);
            port
        }
        Err(_) => 0,
    }
}

/// The socket [`pre_bind`] made, ready for tokio, with the deep accept queue.
fn take_pre_bound() -> std::io::Result<Option<TcpListener>> {
    let Some(l) = PRE_BOUND.lock().unwrap_or_else(|p| p.into_inner()).take() else {
        return Ok(None);
    };
    l.set_nonblocking(true)?;
    let backlog =
        nix::sys::socket::Backlog::new(4096).unwrap_or(nix::sys::socket::Backlog::MAXCONN);
    nix::sys::socket::listen(&l, backlog)?;
    Ok(Some(TcpListener::from_std(l)?))
}

/// The environment commands inherit: the daemon's, minus secrets, with
/// `EXECD_ENVS` naming the env file however it was configured (SDK
/// `set_env` appends to `$EXECD_ENVS`).
fn base_env(c: &Config) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    let mut env: Vec<_> = std::env::vars_os()
        .filter(|(k, _)| !SECRET_VARS.iter().any(|s| k == s) && k != "EXECD_ENVS")
        .collect();
    if let Some(f) = &c.env_file {
        env.push(("EXECD_ENVS".into(), f.clone().into_os_string()));
    }
    env
}

/// Raises the soft open-file limit to the hard one: every running command
/// holds two pipes, every client a socket, and 1024 is a common default.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open-file limit");
            }
        }
    }
}

/// How often free memory is handed back to the system.
const TRIM_EVERY: Duration = Duration::from_secs(5);

/// glibc returns freed memory to the system only from the top of its heap;
/// what is freed below a live allocation stays resident. Ten thousand
/// connections, once closed, left 160 MiB of RSS behind for good. Handing
/// free pages back every few seconds brings RSS back near idle after any
/// burst; with nothing to give back it costs microseconds.
fn spawn_memory_trim(stop: &CancellationToken) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TRIM_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                // A large heap takes a while to walk: not on a worker thread.
                let _ = tokio::task::spawn_blocking(crate::process::sys::malloc_trim).await;
            }
        });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = stop;
}

/// Binds with a deep accept queue: a burst of clients (a thousand commands
/// started at once) must queue, not be reset.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(4096)
}

/// Signals execd listens for. In init mode they are forwarded to the main
/// process's group; otherwise SIGTERM, SIGINT and SIGQUIT shut execd down.
const SIGNALS: &[(i32, &str)] = &[
    (Signal::SIGTERM as i32, "SIGTERM"),
    (Signal::SIGINT as i32, "SIGINT"),
    (Signal::SIGHUP as i32, "SIGHUP"),
    (Signal::SIGQUIT as i32, "SIGQUIT"),
    (Signal::SIGUSR1 as i32, "SIGUSR1"),
    (Signal::SIGUSR2 as i32, "SIGUSR2"),
];

/// Merges the signals above into one channel, fed by a task per signal.
fn signal_channel(stop: &CancellationToken) -> std::io::Result<tokio::sync::mpsc::Receiver<i32>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for &(num, _) in SIGNALS {
        let mut s = signal(SignalKind::from_raw(num))?;
        let (tx, stop) = (tx.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = s.recv() => match r {
                        Some(()) => if tx.send(num).await.is_err() { return },
                        None => return,
                    },
                    _ = stop.cancelled() => return,
                }
            }
        });
    }
    Ok(rx)
}

fn signal_name(num: i32) -> &'static str {
    SIGNALS
        .iter()
        .find(|(n, _)| *n == num)
        .map_or("signal", |(_, s)| s)
}

/// Runs the daemon to completion on the current tokio runtime. Returns the
/// process exit code: 0, or in init mode the main command's status.
pub async fn run(mut config: Config) -> std::io::Result<i32> {
    raise_nofile_limit();
    // Made (or checked) before anything else: a squatted directory stops
    // execd here, with the reason.
    let opened = PRE_OPENED.lock().unwrap_or_else(|p| p.into_inner()).take();
    let data_dir = match opened {
        Some(d) => d?,
        None => DataDir::open(config.data_dir.as_deref())?,
    };
    if let Some(e) = ENV_FILE_ERROR.get() {
        tracing::warn!(error = %e, "cannot create the default env file; EXECD_ENVS is unset");
    }
    let data_dir = Arc::new(data_dir.with_spill_budget(config.spill_budget));
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = match take_pre_bound()? {
        Some(l) if config.port == 0 => l,
        _ => listen(addr)?,
    };
    let local = listener.local_addr()?;
    config.port = local.port();
    if config.access_token.is_none() && !local.ip().is_loopback() {
        tracing::warn!(
            %local,
            "listening beyond loopback without an access token: anyone who reaches this \
             address can run commands as execd's user; set --access-token-file"
        );
    }
    let engine = Engine::start(engine_config(&config, data_dir));
    let grace = config.graceful_shutdown_timeout;
    let init = config.init.clone();
    // sandboxd's default layout: gRPC on a port of its own (the main port
    // serves it too). Same app, so any route works there.
    let grpc_listener = match config.grpc_port {
        Some(port) => Some(listen(SocketAddr::new(config.bind, port))?),
        None => None,
    };
    // The port actually bound (`--grpc-port 0` picks one): the proxy refuses
    // every port execd listens on.
    if let Some(l) = &grpc_listener {
        config.grpc_port = Some(l.local_addr()?.port());
    }
    let header_timeout = config.header_timeout;
    // E2B envd's API: a listener of its own (its /files, /health and
    // /metrics would collide with the main port's routes).
    let e2b_listener = match config.e2b_port {
        Some(port) => Some(listen(SocketAddr::new(config.bind, port))?),
        None => None,
    };
    if let Some(l) = &e2b_listener {
        config.e2b_port = Some(l.local_addr()?.port());
    }
    let zero_copy = config.sendfile;
    server::park_idle_above(config.park_idle_above);
    let app = App::new(config, engine.clone());
    let kernels = app.kernels.clone();
    let runtime = app.runtime.clone();
    // Subscribed before the API is served, so no binding goes unseen.
    let mut bindings = runtime.subscribe();
    let tasks = app.tasks.clone();
    let stop = app.shutdown.clone();
    let grpc_local = grpc_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let grpc_server = grpc_listener.map(|l| {
        tokio::spawn(server::serve(
            l,
            app.clone(),
            header_timeout,
            zero_copy,
            stop.clone(),
            grace,
        ))
    });

    let e2b_local = e2b_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let e2b_server = e2b_listener.map(|l| {
        tokio::spawn(server::serve(
            l,
            Arc::new(crate::e2b::Front::new(app.clone())),
            header_timeout,
            zero_copy,
            stop.clone(),
            grace,
        ))
    });

    let mut signals = signal_channel(&stop)?;
    spawn_memory_trim(&stop);
    let server = tokio::spawn(server::serve(
        listener,
        app,
        header_timeout,
        zero_copy,
        stop.clone(),
        grace,
    ));
    // Tests and launchers read this line to learn the port.
    // The gRPC port (`--grpc-port 0` picks one) on the next line, written
    // together with the first: a reader that closes stdout after the first
    // line then costs nothing.
    let mut lines = format!("execd listening on {local}\n");
    if let Some(a) = grpc_local {
        lines.push_str(&format!("execd gRPC listening on {a}\n"));
        tracing::info!(local = %a, "sandboxd gRPC port listening");
    }
    if let Some(a) = e2b_local {
        lines.push_str(&format!("execd E2B listening on {a}\n"));
        tracing::info!(local = %a, "E2B envd port listening");
    }
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(lines.as_bytes()).and_then(|()| out.flush());
    }
    tracing::info!(%local, "execd listening");

    // Init mode: the sandbox's main process. With `--runtime-init` it waits
    // for the binding (its variables, its preStart hooks).
    let argv = init.filter(|argv| !argv.is_empty());
    let mut main: Option<(i32, MainExit)> = None;
    if let Some(argv) = argv.as_ref().filter(|_| !runtime.required) {
        match engine.spawn_main(argv.clone()) {
            Ok(m) => {
                tracing::info!(pid = m.0, command = ?argv, "main process started");
                main = Some(m);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the main process");
                eprintln!("execd: cannot start the main process: {e}");
                stop.cancel();
                engine.shutdown(grace).await;
                return Ok(e.shell_code());
            }
        }
    }
    // The main process's (re)start after a binding: preStart hooks, then the
    // spawn. Driven here, beside signals, so the API never waits for it.
    let mut starting: Option<Starting> = None;
    let mut _periodic: Option<crate::lifecycle::Periodic> = None;

    let code = loop {
        tokio::select! {
            Some(sig) = signals.recv() => match main.as_ref().map(|m| m.0) {
                Some(pgid) => {
                    tracing::info!(signal = signal_name(sig), "forwarding to the main process");
                    crate::process::spawn::signal_group(pgid, sig);
                }
                None if [Signal::SIGTERM, Signal::SIGINT, Signal::SIGQUIT]
                    .iter()
                    .any(|s| *s as i32 == sig) =>
                {
                    tracing::info!(signal = signal_name(sig), "shutting down");
                    break 0;
                }
                None => tracing::debug!(signal = signal_name(sig), "ignored"),
            },
            status = async {
                match main.as_mut() {
                    Some((_, exit)) => exit.await.unwrap_or_default(),
                    None => std::future::pending().await,
                }
            } => {
                let code = status.code.unwrap_or_else(|| 128 + status.signal.unwrap_or(0));
                tracing::info!(code, "main process exited");
                break code;
            }
            // A binding arriving during a (re)start is taken once it is done.
            Ok(()) = bindings.changed(), if starting.is_none() => {
                let Some(b) = bindings.borrow_and_update().clone() else { continue };
                _periodic = None;
                if !b.periodic.is_empty() {
                    _periodic = Some(crate::lifecycle::periodic(&engine, &b.periodic, stop.child_token()));
                }
                let Some(argv) = argv.clone() else {
                    // No main process: the preStart hooks run on their own.
                    let (engine, hooks) = (engine.clone(), b.pre_start.clone());
                    tasks.spawn(async move { crate::lifecycle::pre_start(&engine, &hooks).await });
                    continue;
                };
                let engine = engine.clone();
                match main.take() {
                    None => {
                        starting = Some(Box::pin(async move {
                            crate::lifecycle::pre_start(&engine, &b.pre_start).await;
                            engine.spawn_main(argv)
                        }))
                    }
                    Some((pgid, exit)) if b.entrypoint_policy == EntrypointPolicy::Restart => {
                        tracing::info!(pid = pgid, "restarting the main process for the new binding");
                        starting = Some(Box::pin(async move {
                            crate::lifecycle::stop_main(pgid, exit, grace).await;
                            crate::lifecycle::pre_start(&engine, &b.pre_start).await;
                            engine.spawn_main(argv)
                        }))
                    }
                    Some(m) => main = Some(m),
                }
            }
            started = async {
                match starting.as_mut() {
                    Some(s) => s.await,
                    None => std::future::pending().await,
                }
            } => {
                starting = None;
                match started {
                    Ok(m) => {
                        tracing::info!(pid = m.0, "main process started");
                        main = Some(m);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot start the main process");
                        break e.shell_code();
                    }
                }
            }
        }
    };
    drop(_periodic);
    drop(starting);

    let began = Instant::now();
    tracing::info!(?grace, "graceful shutdown");
    stop.cancel();
    engine.shutdown(grace).await;
    kernels.cleanup();
    let left = grace.saturating_sub(began.elapsed());
    let _ = tokio::time::timeout(left, server).await;
    for g in [grpc_server, e2b_server].into_iter().flatten() {
        let _ = tokio::time::timeout(grace.saturating_sub(began.elapsed()), g).await;
    }
    tracing::info!(
        took_ms = began.elapsed().as_millis() as u64,
        code,
        "stopped"
    );
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picked(block: &[u8], find: fn(&[u8]) -> Vec<std::ops::Range<usize>>) -> Vec<&[u8]> {
        find(block).into_iter().map(|r| &block[r]).collect()
    }

    #[test]
    fn finds_the_token_in_arguments() {
        let args = b"execd\0--port\09\0--access-token\0T1\0-access-token=T2\0--access-token=T3\0--access-token-file\0/f\0-access-token\0T4\0--\0--access-token\0keep\0";
        assert_eq!(picked(args, secret_args), [&b"T1"[..], b"T2", b"T3", b"T4"]);
        // The program name is never a flag; a flag at the end has no value.
        assert!(secret_args(b"--access-token\0").is_empty());
        assert!(picked(b"execd\0--access-token\0", secret_args)
            .concat()
            .is_empty());
    }

    #[test]
    fn finds_the_token_in_the_environment() {
        let env = b"A=1\0EXECD_ACCESS_TOKEN=tok\0EXECD_ACCESS_TOKEN_FILE=/f\0XEXECD_ACCESS_TOKEN=y\0EXECD_ACCESS_TOKEN=\0";
        assert_eq!(picked(env, secret_env), [&b"tok"[..], b""]);
    }
}
