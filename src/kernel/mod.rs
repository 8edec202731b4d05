//! Code contexts: Jupyter kernels driven directly, with no Jupyter server.
//! Nothing in here knows about HTTP.
//!
//! - `spec`: kernelspec discovery (`JUPYTER_PATH` and Jupyter's usual places);
//! - `zmtp`: a minimal ZeroMQ client (ZMTP 3.0, NULL security) over Unix
//!   sockets (ZeroMQ `ipc`, the default) or TCP;
//! - `msg`: Jupyter messages, HMAC-SHA256 signed;
//! - `context`: one kernel process and the task that drives it.
//!
//! Kernels are started through the process engine (own process group,
//! reaped by the one reaper), their connection files live in execd's
//! private data directory (0700 directory, 0600 files) and are removed when
//! the kernel ends; every kernel is killed when its context is deleted and
//! when execd shuts down.

pub mod context;
pub mod msg;
pub mod run;
pub mod spec;
pub mod zmtp;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::process::Engine;
pub use context::{Context, State};
pub use run::{CodeRun, Event, Outcome};

/// Errors of code contexts.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("context {0} not found")]
    NotFound(String),
    #[error("context {0} is busy: one run at a time per context")]
    Busy(String),
    #[error("the kernel of context {0} is dead ({1}); delete the context and create a new one")]
    Dead(String, String),
    #[error("too many code contexts: at most {0} (--max-code-contexts)")]
    TooMany(usize),
    #[error("no Jupyter kernel for language '{language}': no kernelspec with \"language\": \"{language}\" under {searched} (set JUPYTER_PATH to the share/jupyter directory of the environment that has the kernel)")]
    NoKernel { language: String, searched: String },
    #[error("error creating code context for '{0}': {1}")]
    Launch(String, String),
    #[error("execd is shutting down")]
    ShuttingDown,
}

/// Settings of the code contexts.
#[derive(Clone, Debug)]
pub struct KernelConfig {
    pub max_contexts: usize,
    /// Contexts idle this long are deleted; `None`: never.
    pub idle_timeout: Option<std::time::Duration>,
    /// Where connection files are written (created 0700).
    pub dir: PathBuf,
}

/// Every code context of the daemon.
pub struct Kernels {
    engine: Arc<Engine>,
    cfg: KernelConfig,
    contexts: Mutex<HashMap<String, Arc<Context>>>,
    /// Contexts being started, counted against the cap.
    starting: Mutex<usize>,
    /// language -> id of the default context.
    defaults: Mutex<HashMap<String, String>>,
    /// Serialises the creation of default contexts.
    default_lock: tokio::sync::Mutex<()>,
    /// Recent runs, newest last, for lookups by run id.
    runs: Mutex<std::collections::VecDeque<Arc<CodeRun>>>,
}

/// Runs remembered for lookups by their id (resume, interrupt); their
/// records live in the engine's registry, with its retention.
const RECENT_RUNS: usize = 256;

impl Kernels {
    /// The contexts; with an idle timeout, also the task that expires them.
    pub fn new(engine: Arc<Engine>, cfg: KernelConfig) -> Arc<Kernels> {
        let k = Arc::new(Kernels {
            engine,
            cfg,
            contexts: Mutex::new(HashMap::new()),
            starting: Mutex::new(0),
            defaults: Mutex::new(HashMap::new()),
            default_lock: tokio::sync::Mutex::new(()),
            runs: Mutex::new(std::collections::VecDeque::new()),
        });
        if let Some(idle) = k.cfg.idle_timeout {
            let weak = Arc::downgrade(&k);
            let stop = k.engine.shutdown_token();
            let every = (idle / 4).clamp(
                std::time::Duration::from_millis(100),
                std::time::Duration::from_secs(60),
            );
            k.engine.tasks().spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = stop.cancelled() => return,
                    }
                    let Some(k) = weak.upgrade() else { return };
                    k.expire(idle).await;
                }
            });
        }
        k
    }

    /// Deletes contexts idle for `idle` or more (dead ones too).
    async fn expire(&self, idle: std::time::Duration) {
        for c in self.list(None) {
            if c.is_dead() || c.idle_for().is_some_and(|d| d >= idle) {
                tracing::info!(context = %c.id, "code context expired (idle)");
                self.remove(&c.id).await;
            }
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Context>>> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a kernel for `language` and registers it as a new context.
    pub async fn create(
        &self,
        language: &str,
        cwd: Option<PathBuf>,
    ) -> Result<Arc<Context>, KernelError> {
        let shutdown = self.engine.shutdown_token();
        if shutdown.is_cancelled() {
            return Err(KernelError::ShuttingDown);
        }
        let dirs = spec::search_path(|k| std::env::var(k).ok());
        let spec = spec::find(&dirs, language).ok_or_else(|| KernelError::NoKernel {
            language: language.to_string(),
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        })?;
        {
            let live = self.map().len();
            let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            if live + *starting >= self.cfg.max_contexts {
                return Err(KernelError::TooMany(self.cfg.max_contexts));
            }
            *starting += 1;
        }
        let _slot = Slot(&self.starting);
        let launch = context::Launch {
            id: crate::process::new_id(),
            language: language.to_string(),
            spec,
            cwd,
            env: kernel_env(self.engine.default_env()),
            dir: self.cfg.dir.clone(),
            shutdown,
            transport: context::Transport::Ipc,
        };
        let engine = self.engine.clone();
        let spawn = move |argv, env, cwd| engine.spawn_helper(argv, env, cwd);
        let ctx = match context::launch(launch.clone(), &spawn, self.engine.tasks()).await {
            Ok(ctx) => ctx,
            // A kernel that exits at once when asked for Unix sockets may
            // not know ZeroMQ's `ipc` transport: once more, on loopback TCP.
            Err(f) if f.exited => {
                tracing::warn!(language, kernel = %launch.spec.name, error = %f.error, "kernel exited during start-up with the ipc transport; trying tcp");
                let launch = context::Launch {
                    transport: context::Transport::Tcp,
                    ..launch
                };
                context::launch(launch, &spawn, self.engine.tasks())
                    .await
                    .map_err(|f| f.error)?
            }
            Err(f) => return Err(f.error),
        };
        self.map().insert(ctx.id.clone(), ctx.clone());
        tracing::info!(context = %ctx.id, language, kernel = %ctx.kernel_name, pid = ctx.pid, "code context created");
        Ok(ctx)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Context>, KernelError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| KernelError::NotFound(id.to_string()))
    }

    /// Contexts, all or of one language, oldest first.
    pub fn list(&self, language: Option<&str>) -> Vec<Arc<Context>> {
        let mut v: Vec<Arc<Context>> = self
            .map()
            .values()
            .filter(|c| language.is_none_or(|l| c.language.eq_ignore_ascii_case(l)))
            .cloned()
            .collect();
        v.sort_by_key(|c| c.created);
        v
    }

    /// The default context of `language`, started on first use and started
    /// again if its kernel died.
    pub async fn default_for(&self, language: &str) -> Result<Arc<Context>, KernelError> {
        let language = language.to_ascii_lowercase();
        let _one = self.default_lock.lock().await;
        let current = self
            .defaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&language)
            .cloned();
        if let Some(ctx) = current.and_then(|id| self.get(&id).ok()) {
            if !ctx.is_dead() {
                return Ok(ctx);
            }
            self.remove(&ctx.id).await;
        }
        let ctx = self.create(&language, None).await?;
        self.defaults
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(language, ctx.id.clone());
        Ok(ctx)
    }

    async fn remove(&self, id: &str) -> bool {
        let ctx = self.map().remove(id);
        match ctx {
            Some(ctx) => {
                ctx.shutdown().await;
                true
            }
            None => false,
        }
    }

    /// Kills the context's kernel and forgets it.
    pub async fn delete(&self, id: &str) -> Result<(), KernelError> {
        if self.remove(id).await {
            Ok(())
        } else {
            Err(KernelError::NotFound(id.to_string()))
        }
    }

    /// Deletes every context of `language`.
    pub async fn delete_language(&self, language: &str) {
        for c in self.list(Some(language)) {
            self.remove(&c.id).await;
        }
    }

    /// After shutdown: kills any kernel left (the engine's deadline passed
    /// before its driver ended) and removes the connection-file directory.
    pub fn cleanup(&self) {
        for c in self.map().values() {
            if !c.is_dead() {
                c.tree.kill();
            }
        }
        // The data directory itself belongs to the engine, which removes it.
        let _ = std::fs::remove_dir_all(&self.cfg.dir);
    }

    /// Starts a run of `code` in `ctx`: claimed at once (409 before any
    /// event if busy), recorded in the engine, handed to the kernel's driver.
    pub fn execute(
        &self,
        ctx: &Context,
        code: String,
        timeout: Option<std::time::Duration>,
    ) -> Result<Arc<CodeRun>, KernelError> {
        ctx.claim()?;
        let cmd = self.engine.register_record(code.clone());
        let run = Arc::new(CodeRun::new(cmd, ctx.id.clone()));
        {
            let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            if runs.len() >= RECENT_RUNS {
                runs.pop_front();
            }
            runs.push_back(run.clone());
        }
        ctx.submit(code, run.clone(), timeout)?;
        Ok(run)
    }

    /// A recent run by its id.
    pub fn run(&self, id: &str) -> Option<Arc<CodeRun>> {
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|r| r.cmd.id == id)
            .cloned()
    }

    /// Interrupts a running code run by its id (its context's kernel);
    /// `None` if `id` is not a running code run.
    pub fn interrupt_run(&self, id: &str) -> Option<Result<(), KernelError>> {
        let run = self.run(id).filter(|r| r.cmd.is_running())?;
        Some(self.interrupt(&run.context_id))
    }

    /// Interrupts the code running in context `id`.
    pub fn interrupt(&self, id: &str) -> Result<(), KernelError> {
        self.get(id)?.interrupt()
    }
}

/// The command environment, plus `JPY_PARENT_PID` as `jupyter_client` sets
/// it: ipykernel-based kernels watch that parent and exit when it is gone,
/// so a kernel does not outlive an execd that was killed outright.
fn kernel_env(
    mut env: Vec<(std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    env.retain(|(k, _)| k != "JPY_PARENT_PID");
    env.push((
        "JPY_PARENT_PID".into(),
        std::process::id().to_string().into(),
    ));
    env
}

/// A start-up slot, released whatever the outcome.
struct Slot<'a>(&'a Mutex<usize>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut n = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *n = n.saturating_sub(1);
    }
}
