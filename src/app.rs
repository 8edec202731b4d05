//! The daemon's shared state: what every front (the REST/gRPC port in
//! `api`, E2B's envd port in `e2b`) serves from. No HTTP routing here, so
//! both fronts depend on it and neither on the other.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::process::Engine;

/// State shared by all handlers.
pub struct App {
    pub config: Config,
    pub engine: Arc<Engine>,
    pub metrics: crate::metrics::Sampler,
    pub started: std::time::Instant,
    /// HTTP-side tasks (log streamers, proxied exchanges), apart from the
    /// engine's, so a slow client never holds up the shutdown of commands.
    pub tasks: tokio_util::task::TaskTracker,
    /// Cancelled when the daemon starts shutting down.
    pub shutdown: CancellationToken,
    /// sandboxd's gRPC ProcessService, for requests with a gRPC content type.
    pub grpc: crate::grpc::Server,
    /// Every port execd listens on, as bound (an ephemeral `0` resolved):
    /// the proxy refuses them all. A new listener must add its port here.
    pub listen_ports: Vec<u16>,
    /// `/code` contexts (Jupyter kernels).
    pub kernels: Arc<crate::kernel::Kernels>,
    /// The control plane's binding (`POST /internal/init`).
    pub runtime: Arc<crate::runtime::Runtime>,
    /// Operation ids of creations (`X-EXECD-OPERATION-ID`).
    pub operations: Arc<crate::operations::Operations>,
    /// Isolated sessions (`/v1/isolated`).
    pub isolated: Arc<crate::isolate::Isolated>,
    /// The cap on directory watches, REST and gRPC together.
    pub watches: Arc<crate::fs::watch::Watches>,
}

impl App {
    pub fn new(config: Config, engine: Arc<Engine>) -> Arc<App> {
        let root = config
            .sandboxd_root
            .clone()
            .or_else(|| config.agent_base_dir.clone())
            .or_else(|| std::env::current_dir().ok())
            .unwrap_or_else(|| "/".into());
        let watches = crate::fs::watch::Watches::new(config.max_watches);
        let grpc = crate::grpc::server(engine.clone(), root, &config, watches.clone());
        let listen_ports = std::iter::once(config.port)
            .chain(config.grpc_port)
            .chain(config.e2b_port)
            .collect();
        let kernels = crate::kernel::Kernels::new(
            engine.clone(),
            crate::kernel::KernelConfig {
                max_contexts: config.max_code_contexts,
                idle_timeout: config.code_idle_timeout,
                dir: engine.data_dir().join("kernels"),
            },
        );
        let runtime = Arc::new(crate::runtime::Runtime::new(config.runtime_init));
        let operations =
            crate::operations::Operations::new(config.max_operations, config.operation_ttl);
        let isolated = crate::isolate::Isolated::new(
            engine.clone(),
            engine.config().max_sessions,
            config.isolated_end_timeout,
        );
        Arc::new(App {
            watches,
            operations,
            runtime,
            isolated,
            grpc,
            listen_ports,
            kernels,
            config,
            engine,
            metrics: crate::metrics::Sampler::new("/"),
            started: std::time::Instant::now(),
            tasks: tokio_util::task::TaskTracker::new(),
            shutdown: CancellationToken::new(),
        })
    }
}
