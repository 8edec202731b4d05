//! The front door of the REST/gRPC port: what each request passes before
//! its route (origin, the runtime binding's gate, the access token, then
//! gRPC or the route table). The state itself is `crate::app::App`.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::routes;
use crate::app::App;
use crate::server::error::NOT_INITIALIZED_MESSAGE;
use crate::server::{auth, origin, router, Answer, ApiError, Body, Conn, Service};

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
