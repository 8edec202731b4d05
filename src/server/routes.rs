//! THE route table: every endpoint execd serves, readable as the API itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};

use super::{ApiError, App, Body, Ctx, RequestBody};
use crate::api;

/// A handler's answer to come.
pub type Reply = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send>>;

/// How a route answers.
#[derive(Clone, Copy)]
pub enum Handler {
    /// At once, from the daemon's state alone. The request is dropped before
    /// the answer goes back to hyper, and nothing is boxed or reference
    /// counted: hyper reads the next request into the same buffer instead of
    /// allocating a new one, since no header of the last request still
    /// points into it.
    Now(fn(&App) -> Result<Response<Body>, ApiError>),
    /// Through a future, which owns the request.
    Later(fn(Ctx) -> Reply),
}

/// A request's answer, as hyper gets it: ready, or a handler's future.
/// Errors become their `{"code","message"}` response here.
pub enum Answer {
    /// Taken when polled.
    Ready(Option<Response<Body>>),
    Later(Reply),
}

impl Answer {
    pub fn ready(r: Result<Response<Body>, ApiError>) -> Answer {
        Answer::Ready(Some(r.unwrap_or_else(ApiError::into_response)))
    }
}

impl Future for Answer {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = match self.get_mut() {
            Answer::Ready(r) => r.take().unwrap_or_else(|| {
                // Polled again after completion: a caller's bug, answered
                // as an error rather than a panic on a request path.
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "RUNTIME_ERROR",
                    "answer polled after completion",
                )
                .into_response()
            }),
            Answer::Later(f) => match f.as_mut().poll(cx) {
                Poll::Ready(r) => r.unwrap_or_else(ApiError::into_response),
                Poll::Pending => return Poll::Pending,
            },
        };
        Poll::Ready(Ok(resp))
    }
}

/// One endpoint. `{name}` segments capture a path parameter; a final
/// `{*name}` captures the rest of the path (zero or more segments) verbatim.
pub struct Route {
    /// `None` for `ANY`: the route takes every method.
    pub method: Option<Method>,
    pub path: &'static str,
    pub handler: Handler,
    /// A path without parameters, matched by one comparison.
    literal: bool,
}

impl Route {
    fn matches(&self, path: &str) -> Option<Vec<(&'static str, String)>> {
        if self.literal {
            (self.path == path).then(Vec::new)
        } else {
            matches(self.path, path)
        }
    }
}

/// `ANY` -> `None`, `GET` -> `Some(Method::GET)`, ...
macro_rules! route_method {
    (ANY) => {
        None
    };
    ($method:ident) => {
        Some(Method::$method)
    };
}

/// `f [now]` -> `Handler::Now(f)`; `f` -> `Handler::Later` of `f`'s future, boxed.
macro_rules! route_handler {
    ($handler:path [now]) => {
        Handler::Now($handler)
    };
    ($handler:path) => {
        Handler::Later(|c| Box::pin($handler(c)))
    };
}

macro_rules! routes {
    ($($method:ident $path:literal => $handler:path $([$now:ident])?),* $(,)?) => {
        /// Every route, in the order they are matched.
        pub fn table() -> &'static [Route] {
            static TABLE: std::sync::OnceLock<Vec<Route>> = std::sync::OnceLock::new();
            TABLE.get_or_init(|| vec![
                $(Route {
                    method: route_method!($method),
                    path: $path,
                    handler: route_handler!($handler $([$now])?),
                    literal: !$path.contains('{'),
                },)*
            ])
        }
    };
}

routes! {
    // `[now]`: answered at once, from the daemon's state (see `Handler::Now`).
    GET    "/ping"                      => api::health::ping [now],
    GET    "/openapi.yaml"              => api::health::openapi [now],
    GET    "/ready"                     => api::init::ready [now],
    POST   "/internal/init"             => api::init::init,
    // The same, as upstream's PR #1871 spells it.
    POST   "/init"                      => api::init::init,
    GET    "/metrics"                   => api::metrics::get,
    GET    "/metrics/watch"             => api::metrics::watch,

    POST   "/command"                   => api::command::run,
    GET    "/command"                   => api::command::list,
    GET    "/operations/{id}"           => api::operation::get,
    DELETE "/command"                   => api::command::interrupt,
    GET    "/command/status/{id}"       => api::command::status,
    GET    "/command/{id}/logs"         => api::command::logs,
    GET    "/command/{id}/resume"       => api::command::resume,
    POST   "/command/{id}/stdin"        => api::command::stdin,

    POST   "/code"                      => api::code::run,
    DELETE "/code"                      => api::code::interrupt,
    POST   "/code/context"              => api::code::create_context,
    GET    "/code/contexts"             => api::code::list_contexts,
    DELETE "/code/contexts"             => api::code::delete_contexts,
    GET    "/code/contexts/{id}"        => api::code::get_context,
    DELETE "/code/contexts/{id}"        => api::code::delete_context,
    POST   "/session"                   => api::session::create,
    GET    "/session"                   => api::session::list,
    POST   "/session/{id}/run"          => api::session::run,
    DELETE "/session/{id}"              => api::session::delete,

    GET    "/files/info"                => api::files::info,
    DELETE "/files"                     => api::files::remove,
    POST   "/files/permissions"         => api::files::permissions,
    POST   "/files/mv"                  => api::files::mv,
    GET    "/files/search"              => api::files::search,
    POST   "/files/replace"             => api::files::replace,
    POST   "/files/upload"              => api::files::upload,
    GET    "/files/download"            => api::files::download,
    HEAD   "/files/download"            => api::files::download,
    GET    "/files/watch"               => api::watch::watch,
    GET    "/directories/list"          => api::directories::list,
    POST   "/directories"               => api::directories::make,
    DELETE "/directories"               => api::directories::remove,

    // The same, acting with the file permissions of uid/gid (SDK `with_identity`).
    GET    "/v1/filesystem/{uid}/{gid}/files/info"        => api::files::info,
    DELETE "/v1/filesystem/{uid}/{gid}/files"             => api::files::remove,
    POST   "/v1/filesystem/{uid}/{gid}/files/permissions" => api::files::permissions,
    POST   "/v1/filesystem/{uid}/{gid}/files/mv"          => api::files::mv,
    GET    "/v1/filesystem/{uid}/{gid}/files/search"      => api::files::search,
    POST   "/v1/filesystem/{uid}/{gid}/files/replace"     => api::files::replace,
    POST   "/v1/filesystem/{uid}/{gid}/files/upload"      => api::files::upload,
    GET    "/v1/filesystem/{uid}/{gid}/files/download"    => api::files::download,
    HEAD   "/v1/filesystem/{uid}/{gid}/files/download"    => api::files::download,
    GET    "/v1/filesystem/{uid}/{gid}/files/watch"       => api::watch::watch,
    GET    "/v1/filesystem/{uid}/{gid}/directories/list"  => api::directories::list,
    POST   "/v1/filesystem/{uid}/{gid}/directories"       => api::directories::make,
    DELETE "/v1/filesystem/{uid}/{gid}/directories"       => api::directories::remove,

    // kubernetes-sigs/agent-sandbox python-runtime API.
    POST   "/v1/isolated/session"                   => api::isolated::create,
    GET    "/v1/isolated/sessions"                  => api::isolated::list,
    GET    "/v1/isolated/capabilities"              => api::isolated::capabilities,
    GET    "/v1/isolated/session/{id}"              => api::isolated::get,
    DELETE "/v1/isolated/session/{id}"              => api::isolated::delete,
    POST   "/v1/isolated/session/{id}/run"          => api::isolated::run,
    GET    "/v1/isolated/session/{id}/runs/{run_id}"      => api::isolated::run_status,
    GET    "/v1/isolated/session/{id}/runs/{run_id}/logs" => api::isolated::run_logs,
    GET    "/v1/isolated/session/{id}/diff"         => api::isolated::diff,
    POST   "/v1/isolated/session/{id}/commit"       => api::isolated::commit,
    POST   "/v1/isolated/session/{id}/discard"      => api::isolated::discard,
    GET    "/v1/isolated/session/{id}/files/info"        => api::files::info,
    DELETE "/v1/isolated/session/{id}/files"             => api::files::remove,
    POST   "/v1/isolated/session/{id}/files/permissions" => api::files::permissions,
    POST   "/v1/isolated/session/{id}/files/mv"          => api::files::mv,
    GET    "/v1/isolated/session/{id}/files/search"      => api::files::search,
    POST   "/v1/isolated/session/{id}/files/replace"     => api::files::replace,
    POST   "/v1/isolated/session/{id}/files/upload"      => api::files::upload,
    GET    "/v1/isolated/session/{id}/files/download"    => api::files::download,
    HEAD   "/v1/isolated/session/{id}/files/download"    => api::files::download,
    GET    "/v1/isolated/session/{id}/directories/list"  => api::directories::list,
    POST   "/v1/isolated/session/{id}/directories"       => api::directories::make,
    DELETE "/v1/isolated/session/{id}/directories"       => api::directories::remove,

    GET    "/"                          => api::agent_sandbox::root [now],
    POST   "/execute"                   => api::agent_sandbox::execute,
    POST   "/upload"                    => api::agent_sandbox::upload,
    GET    "/download/{*path}"          => api::agent_sandbox::download,
    HEAD   "/download/{*path}"          => api::agent_sandbox::download,
    GET    "/list/{*path}"              => api::agent_sandbox::list,
    GET    "/exists/{*path}"            => api::agent_sandbox::exists,

    // kubernetes-sigs/agent-sandbox sandboxd REST API.
    GET    "/v1/files/{*path}"          => api::sandboxd::get,
    HEAD   "/v1/files/{*path}"          => api::sandboxd::head,
    PUT    "/v1/files/{*path}"          => api::sandboxd::put,
    DELETE "/v1/files/{*path}"          => api::sandboxd::delete,
    GET    "/v1/health"                 => api::sandboxd::health [now],
    GET    "/v1/metadata"               => api::sandboxd::metadata [now],

    ANY    "/proxy/{port}/{*path}"      => api::proxy::forward,
    ANY    "/proxy/{*path}"             => api::proxy::missing_port,

    POST   "/pty"                       => api::pty::create,
    GET    "/pty"                       => api::pty::list,
    GET    "/pty/{id}"                  => api::pty::status,
    DELETE "/pty/{id}"                  => api::pty::delete,
    GET    "/pty/{id}/ws"               => api::pty::attach,
}

/// Paths served before the runtime binding and without the access token:
/// `/internal/init` checks its caller itself (see `api::init`).
const UNGUARDED: &[&str] = &["/ping", "/ready", "/internal/init", "/init"];

pub fn is_unguarded(path: &str) -> bool {
    UNGUARDED.contains(&path)
}

/// Of those, the ones served without the access token (`/ping` keeps it).
pub fn is_tokenless(path: &str) -> bool {
    matches!(path, "/ready" | "/internal/init" | "/init")
}

/// Routes that also accept the access token as `?access_token=`: browsers
/// cannot set headers on a WebSocket.
const QUERY_TOKEN_ROUTES: &[&str] = &["/pty/{id}/ws"];

/// Whether `path` may carry the access token in its query.
pub fn allows_query_token(path: &str) -> bool {
    QUERY_TOKEN_ROUTES
        .iter()
        .any(|p| matches(p, path).is_some())
}

/// Matches `path` against a route pattern, returning the captured parameters.
/// `{name}` values are percent-decoded; a `{*name}` tail is kept as sent, so
/// it can be passed on byte for byte.
fn matches(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        let p = pat.next();
        if let Some(name) = p.and_then(|p| p.strip_prefix("{*")?.strip_suffix('}')) {
            let rest: Vec<&str> = segs.collect();
            params.push((name, rest.join("/")));
            return Some(params);
        }
        match (p, segs.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) => {
                if let Some(name) = p.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                    if s.is_empty() {
                        return None;
                    }
                    let decoded = percent_decode(s)?;
                    params.push((name, decoded));
                } else if p != s {
                    return None;
                }
            }
            _ => return None,
        }
    }
}

fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes: Vec<u8> = form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned().into_bytes())?;
    String::from_utf8(bytes).ok()
}

/// Routes a request to its handler: 404 for an unknown path, 405 for a known
/// path with the wrong method. Synchronous, so the only thing a request's
/// future holds is the answer, or the handler's (boxed) future.
pub fn dispatch(app: &Arc<App>, req: Request<RequestBody>, peer: SocketAddr) -> Answer {
    let mut allowed: Vec<&Method> = Vec::new();
    for route in table() {
        let Some(params) = route.matches(req.uri().path()) else {
            continue;
        };
        if let Some(m) = route.method.as_ref().filter(|m| *m != req.method()) {
            allowed.push(m);
            continue;
        }
        return match route.handler {
            Handler::Now(f) => Answer::ready(f(app)),
            Handler::Later(f) => Answer::Later(f(Ctx {
                app: app.clone(),
                req,
                params,
                peer,
            })),
        };
    }
    let path = req.uri().path();
    let resp = if allowed.is_empty() {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            format!("no route for {path}"),
        )
        .into_response()
    } else {
        let list: Vec<&str> = allowed.iter().map(|m| m.as_str()).collect();
        let mut resp = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            format!(
                "{} is not allowed on {path}; allowed: {}",
                req.method(),
                list.join(", ")
            ),
        )
        .into_response();
        if let Ok(v) = list.join(", ").parse() {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
        resp
    };
    Answer::ready(Ok(resp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matching() {
        assert_eq!(matches("/ping", "/ping"), Some(vec![]));
        assert_eq!(matches("/ping", "/ping/"), None);
        assert_eq!(
            matches("/command/{id}/logs", "/command/abc/logs"),
            Some(vec![("id", "abc".to_string())])
        );
        assert_eq!(matches("/command/{id}/logs", "/command//logs"), None);
        assert_eq!(
            matches("/command/status/{id}", "/command/status/a%20b+c"),
            Some(vec![("id", "a b+c".to_string())])
        );
    }

    #[test]
    fn literal_routes_match_as_the_pattern_matcher_does() {
        let paths = [
            "/ping",
            "/ping/",
            "/files",
            "/files/info",
            "/command",
            "/v1/health",
            "/",
            "",
        ];
        for route in table() {
            assert_eq!(route.literal, !route.path.contains('{'), "{}", route.path);
            for path in paths.iter().copied().chain([route.path]) {
                assert_eq!(
                    route.matches(path),
                    matches(route.path, path),
                    "{} against {path:?}",
                    route.path
                );
            }
        }
    }

    #[test]
    fn catch_all_tail() {
        let p = "/proxy/{port}/{*path}";
        assert_eq!(
            matches(p, "/proxy/80/a/b%20c/"),
            Some(vec![
                ("port", "80".to_string()),
                ("path", "a/b%20c/".to_string())
            ])
        );
        assert_eq!(
            matches(p, "/proxy/80/"),
            Some(vec![("port", "80".to_string()), ("path", String::new())])
        );
        assert_eq!(
            matches(p, "/proxy/80"),
            Some(vec![("port", "80".to_string()), ("path", String::new())])
        );
        assert_eq!(matches(p, "/proxy//x"), None);
        assert_eq!(matches(p, "/proxy"), None);
        assert_eq!(matches(p, "/other/80/x"), None);
        assert_eq!(
            matches("/proxy/{*path}", "/proxy"),
            Some(vec![("path", String::new())])
        );
        assert_eq!(
            matches("/proxy/{*path}", "/proxy//x"),
            Some(vec![("path", "/x".to_string())])
        );
    }

    #[test]
    fn any_method_routes_take_every_method() {
        let proxy = table()
            .iter()
            .find(|r| r.path == "/proxy/{port}/{*path}")
            .expect("proxy route");
        assert_eq!(proxy.method, None);
        let ping = table().iter().find(|r| r.path == "/ping").expect("ping");
        assert_eq!(ping.method, Some(Method::GET));
    }

    #[test]
    fn no_two_routes_shadow_each_other() {
        let t = table();
        for (i, a) in t.iter().enumerate() {
            for b in &t[i + 1..] {
                assert!(
                    !((a.method == b.method || a.method.is_none() || b.method.is_none())
                        && a.path == b.path),
                    "duplicate {:?} {}",
                    a.method,
                    a.path
                );
            }
        }
    }
}
