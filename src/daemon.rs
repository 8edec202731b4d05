//! Wiring: build the engine and the server from a `Config`, run until
//! SIGTERM/SIGINT, then shut down gracefully within the configured timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::process::output::LogLimits;
use crate::process::{spawn, Engine, EngineConfig};
use crate::server::{self, App};

/// Variables never passed on to commands.
const SECRET_VARS: &[&str] = &["EXECD_ACCESS_TOKEN"];

fn engine_config(c: &Config) -> EngineConfig {
    EngineConfig {
        shell: spawn::default_shell(),
        limits: LogLimits {
            window: c.output_window,
            spill_cap: c.spill_cap,
        },
        mem_total: c.output_memory,
        spill_dir: c.data_dir.clone(),
        retention: c.retention,
        drain: c.drain_timeout,
        kill_grace: Duration::from_secs(3),
        max_line: c.max_line,
        env_file: c.env_file.clone(),
        base_env: base_env(c),
    }
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

/// Runs the daemon to completion on the current tokio runtime.
pub async fn run(config: Config) -> std::io::Result<()> {
    raise_nofile_limit();
    let addr = SocketAddr::new(config.bind, config.port);
    let listener = listen(addr)?;
    let local = listener.local_addr()?;
    let engine = Engine::start(engine_config(&config));
    let grace = config.graceful_shutdown_timeout;
    let app = App::new(config, engine.clone());
    let stop = CancellationToken::new();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = tokio::spawn(server::serve(listener, app, stop.clone(), grace));
    // Tests and launchers read this line to learn the port.
    println!("execd listening on {local}");
    tracing::info!(%local, "execd listening");

    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let began = Instant::now();
    tracing::info!(signal = which, ?grace, "shutting down");
    stop.cancel();
    engine.shutdown(grace).await;
    let left = grace.saturating_sub(began.elapsed());
    let _ = tokio::time::timeout(left, server).await;
    tracing::info!(took_ms = began.elapsed().as_millis() as u64, "stopped");
    Ok(())
}
