//! Lifecycle hooks of a runtime binding (`crate::runtime`), run through the
//! process engine: each run is an ordinary command with its own record
//! (status, logs, inventory), started with the binding's variables.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::process::reaper::ExitStatus;
use crate::process::{CommandSpec, Engine, Program};
use crate::runtime::{Hook, PeriodicHook};

fn spec(h: &Hook) -> CommandSpec {
    CommandSpec {
        program: Program::Shell(h.command.clone()),
        cwd: None,
        envs: Vec::new(),
        timeout: h.timeout,
        uid: None,
        gid: None,
        background: false,
        stdin: false,
    }
}

/// Runs `h` to its end; its exit code, or `None` when it could not start.
pub async fn run_hook(engine: &Engine, phase: &'static str, h: &Hook) -> Option<i32> {
    let cmd = match engine.start_command(spec(h)) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(phase, error = %e, "lifecycle hook not started");
            return None;
        }
    };
    let mut head = cmd.log.watch();
    let _ = head.wait_for(|h| h.finished).await;
    let code = cmd.finished().map(|f| f.exit_code);
    tracing::info!(phase, command_id = %cmd.id, exit_code = ?code, "lifecycle hook finished");
    code
}

/// Runs the `preStart` hooks one after the other, each to its end. A failing
/// hook is logged (its record keeps the output) and the next one still runs.
pub async fn pre_start(engine: &Engine, hooks: &[Hook]) {
    for h in hooks {
        run_hook(engine, "preStart", h).await;
    }
}

/// Periodic hooks' tasks; dropping this stops them (a run in progress
/// finishes as the command it is).
pub struct Periodic {
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Periodic {
    fn drop(&mut self) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a task per periodic hook: every `interval`, a run, unless the
/// previous one is still going (that tick is skipped).
pub fn periodic(engine: &Arc<Engine>, hooks: &[PeriodicHook], stop: CancellationToken) -> Periodic {
    let tasks = hooks
        .iter()
        .map(|p| {
            let (engine, p, stop) = (engine.clone(), p.clone(), stop.clone());
            tokio::spawn(async move {
                let mut last: Option<Arc<crate::process::registry::Command>> = None;
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(p.interval) => {}
                        _ = stop.cancelled() => return,
                    }
                    if last.as_ref().is_some_and(|c| c.is_running()) {
                        tracing::debug!("periodic hook still running; tick skipped");
                        continue;
                    }
                    match engine.start_command(spec(&p.hook)) {
                        Ok(c) => last = Some(c),
                        Err(e) => tracing::warn!(error = %e, "periodic hook not started"),
                    }
                }
            })
        })
        .collect();
    Periodic { stop, tasks }
}

/// Stops the main process: SIGTERM to its group, SIGKILL after `grace`.
pub async fn stop_main(pgid: i32, mut exit: oneshot::Receiver<ExitStatus>, grace: Duration) {
    crate::process::spawn::signal_group(pgid, nix::sys::signal::Signal::SIGTERM as i32);
    if tokio::time::timeout(grace, &mut exit).await.is_err() {
        crate::process::spawn::signal_group(pgid, nix::sys::signal::Signal::SIGKILL as i32);
        let _ = exit.await;
    }
}
