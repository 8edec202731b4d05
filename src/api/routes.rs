//! THE route table: every endpoint execd serves, readable as the API itself.
//! The machinery (matching, 404/405) is the server's (`server/router.rs`).

use http::Method;

use crate::api;
use crate::api::App;
use crate::server::router::{self, Handler, Route};

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

/// The file routes, under a scope's prefix. Each handler acts in the root
/// its path names (`api::files::identity`): a new scope is one more prefix
/// in the table below and a branch there, never copied handlers.
macro_rules! file_routes {
    ($prefix:literal) => {
        file_routes!(@ $prefix;
            GET    "/files/info"         => api::files::info,
            DELETE "/files"              => api::files::remove,
            POST   "/files/permissions"  => api::files::permissions,
            POST   "/files/mv"           => api::files::mv,
            GET    "/files/search"       => api::files::search,
            POST   "/files/replace"      => api::files::replace,
            POST   "/files/upload"       => api::files::upload,
            GET    "/files/download"     => api::files::download,
            HEAD   "/files/download"     => api::files::download,
            GET    "/directories/list"   => api::directories::list,
            POST   "/directories"        => api::directories::make,
            DELETE "/directories"        => api::directories::remove,
        )
    };
    (@ $prefix:literal; $($method:ident $path:literal => $handler:path),* $(,)?) => {
        [$(Route::new(
            route_method!($method),
            concat!($prefix, $path),
            route_handler!($handler),
        ),)*]
    };
}

macro_rules! routes {
    (
        $($method:ident $path:literal => $handler:path $([$now:ident])?),* $(,)?
        ; file routes under $($prefix:literal),* $(,)?
    ) => {
        /// Every route, in the order they are matched.
        pub fn table() -> &'static [Route<App>] {
            static TABLE: std::sync::OnceLock<Vec<Route<App>>> = std::sync::OnceLock::new();
            TABLE.get_or_init(|| {
                let mut table = vec![
                    $(Route::new(
                        route_method!($method),
                        $path,
                        route_handler!($handler $([$now])?),
                    ),)*
                ];
                $(table.extend(file_routes!($prefix));)*
                table
            })
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
    GET    "/command/{id}/resume"       => api::resume::resume,
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

    // Directory watches: execd's view, or a uid/gid's permissions (not in
    // isolated sessions: a watch arms in execd's mount namespace).
    GET    "/files/watch"               => api::watch::watch,
    GET    "/v1/filesystem/{uid}/{gid}/files/watch" => api::watch::watch,

    ; file routes under
    // execd's own view, as execd's user.
    "",
    // Acting with the file permissions of uid/gid (SDK `with_identity`).
    "/v1/filesystem/{uid}/{gid}",
    // In an isolated session's merged view (its mount namespace).
    "/v1/isolated/session/{id}",
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
        .any(|p| router::matches(p, path).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::router::matches;

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
