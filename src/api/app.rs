//! The application behind the server: the state every handler sees, and
//! the front door each request passes before its route (origin, the runtime
//! binding's gate, the access token, then gRPC or the route table).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use super::routes;
use crate::config::Config;
use crate::process::Engine;
use crate::server::error::NOT_INITIALIZED_MESSAGE;
use crate::server::{auth, origin, router, Answer, ApiError, Body, Conn, Service};

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
    /// E2B envd's state (`--e2b-port`).
    pub e2b: Arc<crate::e2b::E2b>,
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
        let e2b = crate::e2b::E2b::new(config.retention);
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
        let isolated = crate::isolate::Isolated::new(engine.clone(), engine.config().max_sessions);
        Arc::new(App {
            watches,
            e2b,
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

impl Service for App {
    fn answer(self: &Arc<Self>, req: Request<Incoming>, peer: SocketAddr, conn: &Conn) -> Answer {
        answer(self, req, peer, conn)
    }

    fn class(req: &Request<Incoming>) -> usize {
        if req.version() == http::Version::HTTP_2 && crate::grpc::is_grpc(req.headers()) {
            crate::counters::GRPC
        } else {
            crate::counters::class_of(req.uri().path())
        }
    }

    fn answered(class: usize, status: StatusCode) {
        crate::counters::request(class, status.as_u16());
    }

    fn max_body(&self) -> usize {
        self.config.max_body
    }
}

/// A tonic response with our body type (trailers kept).
fn grpc_body(resp: Response<tonic::body::Body>) -> Response<Body> {
    resp.map(|b| {
        b.map_err(|s| std::io::Error::other(s.to_string()))
            .boxed_unsync()
    })
}

fn answer(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr, conn: &Conn) -> Answer {
    // gRPC needs HTTP/2; an HTTP/1.1 request is never looked at for it.
    let grpc = req.version() == http::Version::HTTP_2 && crate::grpc::is_grpc(req.headers());
    match origin::check(&app.config.allowed_origins, &app.config.allowed_hosts, &req) {
        origin::Verdict::Serve => authorized_answer(app, req, peer, grpc, conn),
        origin::Verdict::Refuse(e) if grpc => Answer::ready(Ok(grpc_body(
            tonic::Status::permission_denied(e.message).into_http(),
        ))),
        origin::Verdict::Refuse(e) => Answer::ready(Err(e)),
        origin::Verdict::Preflight(resp) => Answer::ready(Ok(resp)),
        origin::Verdict::ServeCors(origin) => match authorized_answer(app, req, peer, grpc, conn) {
            Answer::Ready(Some(mut resp)) => {
                origin::add_cors(&mut resp, origin);
                Answer::Ready(Some(resp))
            }
            later => Answer::Later(Box::pin(async move {
                let Ok(mut resp) = later.await;
                origin::add_cors(&mut resp, origin);
                Ok(resp)
            })),
        },
    }
}

/// The answer to a request that passed the origin check: the access check,
/// then gRPC or REST.
fn authorized_answer(
    app: &Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    grpc: bool,
    conn: &Conn,
) -> Answer {
    let path = req.uri().path();
    // Runtime init: before a binding only these are served (before the
    // access check, as upstream); `/internal/init` authorises itself.
    let unguarded = routes::is_unguarded(path);
    if app.runtime.gated() && !unguarded {
        return if grpc {
            Answer::ready(Ok(grpc_body(
                tonic::Status::unavailable(NOT_INITIALIZED_MESSAGE).into_http(),
            )))
        } else {
            Answer::ready(Err(ApiError::not_initialized()))
        };
    }
    let token = app.runtime.token(app.config.access_token.as_ref());
    let token = token.as_ref();
    // The query token is for browsers' WebSockets, which cannot set
    // headers: never for gRPC, whatever the path.
    let allowed = (routes::is_tokenless(path) && !grpc)
        || auth::authorized(token, req.headers())
        || (!grpc
            && routes::allows_query_token(req.uri().path())
            && auth::query_authorized(token, req.uri().query()));
    match (allowed, grpc) {
        (false, true) => Answer::ready(Ok(grpc_body(
            tonic::Status::unauthenticated("invalid or missing X-EXECD-ACCESS-TOKEN").into_http(),
        ))),
        (false, false) => Answer::ready(Err(ApiError::unauthorized())),
        (true, true) => {
            let mut svc = app.grpc.clone();
            Answer::Later(Box::pin(async move {
                use tonic::codegen::Service;
                match svc.call(req).await {
                    Ok(resp) => Ok(grpc_body(resp)),
                    Err(never) => match never {},
                }
            }))
        }
        (true, false) => router::dispatch(routes::table(), app, req.map(|b| conn.body(b)), peer),
    }
}
