//! E2B envd's API on `--e2b-port`: its small HTTP API (`/health`,
//! `/metrics`, `/envs`, `/init`, `/files`) and its Connect RPC services
//! (`process.Process`, `filesystem.Filesystem`), on execd's engine, so the
//! `e2b` SDKs work against execd unchanged.
//!
//! - Auth: when a token is set (`/init`'s `accessToken`, else execd's
//!   `--access-token`), every route but `/health` needs `X-Access-Token`;
//!   `/files` also takes a signed URL instead.
//! - Users: HTTP Basic auth's user name picks the user of a request, else
//!   `/init`'s `defaultUser`, else execd's own. Commands switch to it with
//!   the same credential code as `/command`; file operations run as it.
//! - Paths: relative paths and `~` are the user's home directory's.

pub mod files;
pub mod filesystem;
pub mod process;
pub mod proto;
pub mod watch;
pub mod xattr;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use crate::connect::{self, Protocol};
use crate::fs::identity::{Identity, Scope};
use crate::process::users;
use crate::server::Answer;
use crate::server::{origin, Body, RequestBody};

/// The header of envd's access token.
pub const TOKEN_HEADER: &str = "x-access-token";

/// What `/init` set.
#[derive(Default)]
struct Defaults {
    envs: HashMap<String, String>,
    user: Option<String>,
    workdir: Option<String>,
    /// The raw token (signed URLs are keyed with it).
    token: Option<String>,
}

/// What envd's handlers serve from: the daemon's state, shared with the
/// REST/gRPC front, and envd's own.
pub struct Envd {
    pub shared: Arc<crate::app::App>,
    pub e2b: Arc<E2b>,
}

/// The state of E2B's API: `/init`'s defaults and the processes started
/// through `process.Process`.
pub struct E2b {
    defaults: RwLock<Defaults>,
    pub(crate) procs: process::Table,
    /// `CreateWatcher`'s polling watchers.
    pub(crate) watchers: watch::Watchers,
}

impl E2b {
    pub fn new(retention: Duration) -> Arc<E2b> {
        Arc::new(E2b {
            defaults: RwLock::new(Defaults::default()),
            procs: process::Table::new(retention),
            watchers: watch::Watchers::default(),
        })
    }

    fn defaults(&self) -> std::sync::RwLockReadGuard<'_, Defaults> {
        self.defaults.read().unwrap_or_else(|p| p.into_inner())
    }

    /// `/init`'s environment variables.
    pub fn default_envs(&self) -> HashMap<String, String> {
        self.defaults().envs.clone()
    }

    /// `/init`'s working directory.
    pub fn default_workdir(&self) -> Option<String> {
        self.defaults().workdir.clone()
    }
}

/// A request's user, resolved.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Not execd's own user: commands switch to it, file operations run as it.
    pub switch: bool,
}

impl User {
    /// The file-operation scope of the user.
    pub fn scope(&self) -> Scope {
        Scope::from(self.switch.then_some(Identity {
            uid: self.uid,
            gid: self.gid,
        }))
    }

    /// `raw` as envd resolves it: `~` and relative paths against the home
    /// directory, then cleaned lexically.
    pub fn path(&self, raw: &str) -> Result<PathBuf, String> {
        if raw.is_empty() {
            return Err("path is empty".into());
        }
        if raw.contains('\0') {
            return Err("path contains a NUL byte".into());
        }
        let home = Path::new(&self.home);
        let p = if raw == "~" {
            home.to_path_buf()
        } else if let Some(rest) = raw.strip_prefix("~/") {
            home.join(rest)
        } else {
            home.join(raw)
        };
        Ok(crate::fs::path::clean(&p))
    }
}

/// The user named `name`, from `/etc/passwd` (a number is a uid).
fn lookup_user(name: &str) -> Option<User> {
    let passwd = users::read_db("/etc/passwd");
    let uid = users::id_by_name(&passwd, name).or_else(|| name.parse().ok())?;
    let info = users::user_by_uid(&passwd, uid);
    let own = nix::unistd::geteuid().as_raw();
    Some(User {
        name: info.name.clone().unwrap_or_else(|| name.to_string()),
        uid,
        gid: info.gid,
        home: info
            .home
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".into()),
        switch: uid != own,
    })
}

/// execd's own user.
fn own_user() -> User {
    let uid = nix::unistd::geteuid().as_raw();
    let (name, home) = crate::process::user_identity(uid);
    User {
        name,
        uid,
        gid: nix::unistd::getegid().as_raw(),
        home,
        switch: false,
    }
}

/// The user name of `Authorization: Basic …` (`name:` with no password).
fn basic_user(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = connect::json::b64_decode(b64.trim())?;
    let s = String::from_utf8(raw).ok()?;
    let name = s.split(':').next().unwrap_or("");
    (!name.is_empty()).then(|| name.to_string())
}

impl E2b {
    /// The user of a request: Basic auth's name, else `/init`'s default,
    /// else execd's own.
    pub fn user(&self, headers: &HeaderMap, query_user: Option<&str>) -> Result<User, String> {
        let name = query_user
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .or_else(|| basic_user(headers))
            .or_else(|| self.defaults().user.clone());
        match name {
            None => Ok(own_user()),
            Some(n) => lookup_user(&n).ok_or_else(|| format!("invalid user: {n:?} is not a user")),
        }
    }

    /// Whether the request may pass: no token set, or `X-Access-Token`
    /// is it (digests compared in constant time).
    fn token_ok(&self, app: &Envd, headers: &HeaderMap) -> bool {
        let given = headers.get(TOKEN_HEADER).map(|v| v.as_bytes());
        if let Some(t) = self.defaults().token.as_deref() {
            return given.is_some_and(|g| digest_eq(t.as_bytes(), g));
        }
        match app
            .shared
            .runtime
            .token(app.shared.config.access_token.as_ref())
        {
            None => true,
            Some(t) => t.matches(given.unwrap_or(b"")),
        }
    }

    /// The raw token signed URLs are keyed with (only `/init`'s: execd
    /// keeps no more than the digest of `--access-token`).
    fn signing_token(&self) -> Option<String> {
        self.defaults().token.clone()
    }
}

/// Constant-time equality of the SHA-256 digests of two byte strings.
fn digest_eq(a: &[u8], b: &[u8]) -> bool {
    let (x, y): ([u8; 32], [u8; 32]) = (Sha256::digest(a).into(), Sha256::digest(b).into());
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

fn full(b: impl Into<Bytes>) -> Body {
    crate::server::full(b)
}

/// An HTTP route's error, answered as envd's `{"code": <status>, "message"}`.
#[derive(Debug)]
pub struct HttpError {
    pub status: StatusCode,
    pub message: String,
}

impl HttpError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> HttpError {
        HttpError {
            status,
            message: message.into(),
        }
    }

    pub fn into_response(self) -> Response<Body> {
        http_error(self.status, self.message)
    }
}

/// envd's error body: `{"code": <status>, "message"}`.
pub fn http_error(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let v = serde_json::json!({"code": status.as_u16(), "message": message.into()});
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn json_ok(v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn no_content() -> Response<Body> {
    let mut r = Response::new(crate::server::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn later(f: impl std::future::Future<Output = Response<Body>> + Send + 'static) -> Answer {
    Answer::Later(Box::pin(async move { Ok(f.await) }))
}

/// The E2B port's side of the server: the same daemon, envd's routes.
pub struct Front(pub Arc<Envd>);

impl Front {
    pub fn new(shared: Arc<crate::app::App>) -> Front {
        let e2b = E2b::new(shared.config.retention);
        Front(Arc::new(Envd { shared, e2b }))
    }
}

impl crate::server::Service for Front {
    fn answer(
        self: &Arc<Self>,
        req: Request<hyper::body::Incoming>,
        peer: SocketAddr,
        conn: &crate::server::Conn,
    ) -> Answer {
        answer(&self.0, req.map(|b| conn.body(b)), peer)
    }

    fn class(_: &Request<hyper::body::Incoming>) -> usize {
        crate::counters::E2B
    }

    fn answered(class: usize, status: StatusCode) {
        crate::counters::request(class, status.as_u16());
    }

    fn max_body(&self) -> usize {
        self.0.shared.config.max_body
    }
}

/// The answer to one request on the E2B port.
pub fn answer(app: &Arc<Envd>, req: Request<RequestBody>, peer: SocketAddr) -> Answer {
    let _ = peer;
    match origin::check(
        &app.shared.config.allowed_origins,
        &app.shared.config.allowed_hosts,
        &req,
    ) {
        origin::Verdict::Serve => route(app, req),
        origin::Verdict::Refuse(e) => Answer::ready(Err(e)),
        origin::Verdict::Preflight(resp) => Answer::ready(Ok(resp)),
        origin::Verdict::ServeCors(o) => match route(app, req) {
            Answer::Ready(Some(mut resp)) => {
                origin::add_cors(&mut resp, o);
                Answer::Ready(Some(resp))
            }
            later => Answer::Later(Box::pin(async move {
                let Ok(mut resp) = later.await;
                origin::add_cors(&mut resp, o);
                Ok(resp)
            })),
        },
    }
}

fn route(app: &Arc<Envd>, req: Request<RequestBody>) -> Answer {
    let e2b = app.e2b.clone();
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if path == "/health" {
        return match method {
            Method::GET | Method::HEAD => Answer::ready(Ok(no_content())),
            _ => Answer::ready(Ok(http_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET /health",
            ))),
        };
    }
    // /files checks the token itself: a signed URL also lets it pass.
    if path == "/files" {
        let app = app.clone();
        return match method {
            Method::GET | Method::HEAD => later(files::download(app, req)),
            Method::POST => later(files::upload(app, req)),
            _ => Answer::ready(Ok(http_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET or POST /files",
            ))),
        };
    }
    if let Some(rpc) = path.strip_prefix('/').and_then(|p| p.split_once('/')) {
        if matches!(rpc.0, "process.Process" | "filesystem.Filesystem") {
            return rpc_answer(app, req);
        }
    }
    if !e2b.token_ok(app, req.headers()) {
        return Answer::ready(Ok(http_error(
            StatusCode::UNAUTHORIZED,
            "invalid or missing X-Access-Token",
        )));
    }
    match (method, path.as_str()) {
        (Method::GET, "/metrics") => Answer::ready(Ok(metrics(app))),
        (Method::GET, "/envs") => {
            Answer::ready(Ok(json_ok(&serde_json::json!(e2b.default_envs()))))
        }
        (Method::POST, "/init") => later(init(app.clone(), req)),
        (_, "/metrics" | "/envs" | "/init") => Answer::ready(Ok(http_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
        ))),
        _ => Answer::ready(Ok(http_error(
            StatusCode::NOT_FOUND,
            format!("no route {path}"),
        ))),
    }
}

/// A Connect call to one of the two services.
fn rpc_answer(app: &Arc<Envd>, req: Request<RequestBody>) -> Answer {
    if req.method() != Method::POST {
        return Answer::ready(Ok(http_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Connect RPC: use POST",
        )));
    }
    let Some(p) = Protocol::of(req.headers()) else {
        return Answer::ready(Ok(connect::unsupported_media_type()));
    };
    if let Err(e) = connect::check_encoding(req.headers()) {
        return Answer::ready(Ok(connect::error_response(p, &e)));
    }
    if !app.e2b.token_ok(app, req.headers()) {
        let e = connect::Error::new(
            connect::Code::Unauthenticated,
            "invalid or missing X-Access-Token",
        );
        return Answer::ready(Ok(connect::error_response(p, &e)));
    }
    let app = app.clone();
    later(async move {
        let path = req.uri().path().to_string();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        let (service, method) = (service.to_string(), method.to_string());
        match service.as_str() {
            "process.Process" => process::call(app, p, &method, req).await,
            _ => fs_call(app, p, &method, req).await,
        }
    })
}

/// `GET /metrics`: envd's JSON shape.
fn metrics(app: &Envd) -> Response<Body> {
    let s = app.shared.metrics.snapshot();
    let mib = 1024.0 * 1024.0;
    let (disk_total, disk_used) = match nix::sys::statvfs::statvfs("/") {
        Ok(v) => {
            let f = v.fragment_size();
            let total = v.blocks() * f;
            (total, total.saturating_sub(v.blocks_free() * f))
        }
        Err(_) => (0, 0),
    };
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json_ok(&serde_json::json!({
        "ts": ts,
        "cpu_count": s.cpu_count as u64,
        "cpu_used_pct": s.cpu_used_pct,
        "mem_total": (s.mem_total_mib * mib) as u64,
        "mem_used": (s.mem_used_mib * mib) as u64,
        "mem_total_mib": s.mem_total_mib as u64,
        "mem_used_mib": s.mem_used_mib as u64,
        "disk_total": disk_total,
        "disk_used": disk_used,
    }))
}

/// The most of an `/init` body.
const INIT_MAX: usize = 1 << 20;

/// `POST /init`: environment variables, access token, default user and
/// working directory. `timestamp`, `hyperloopIP`, `volumeMounts` and the
/// rest are ignored: execd never sets the clock, rewrites `/etc/hosts` or
/// mounts anything.
async fn init(app: Arc<Envd>, req: Request<RequestBody>) -> Response<Body> {
    use http_body_util::BodyExt;
    let body = match http_body_util::Limited::new(req.into_body(), INIT_MAX)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let v: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::json!({})
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return http_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
        }
    };
    let Some(o) = v.as_object() else {
        return http_error(StatusCode::BAD_REQUEST, "the body must be a JSON object");
    };
    let text = |k: &str| -> Result<Option<String>, HttpError> {
        match o.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(HttpError::new(
                StatusCode::BAD_REQUEST,
                format!("{k} must be a string"),
            )),
        }
    };
    let (token, user, workdir) = match (
        text("accessToken"),
        text("defaultUser"),
        text("defaultWorkdir"),
    ) {
        (Ok(t), Ok(u), Ok(w)) => (t, u, w),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r.into_response(),
    };
    let mut envs = HashMap::new();
    match o.get("envVars") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Object(m)) => {
            for (k, v) in m {
                let Some(v) = v.as_str() else {
                    return http_error(
                        StatusCode::BAD_REQUEST,
                        format!("envVars.{k} must be a string"),
                    );
                };
                if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
                    return http_error(StatusCode::BAD_REQUEST, format!("invalid variable {k:?}"));
                }
                envs.insert(k.clone(), v.to_string());
            }
        }
        Some(_) => return http_error(StatusCode::BAD_REQUEST, "envVars must be an object"),
    }
    if let Some(u) = user.as_deref().filter(|u| !u.is_empty()) {
        if lookup_user(u).is_none() {
            return http_error(
                StatusCode::BAD_REQUEST,
                format!("defaultUser: no user {u:?}"),
            );
        }
    }
    let mut d = app.e2b.defaults.write().unwrap_or_else(|p| p.into_inner());
    d.envs.extend(envs);
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        d.token = Some(t);
    }
    if let Some(u) = user.filter(|u| !u.is_empty()) {
        d.user = Some(u);
    }
    if let Some(w) = workdir.filter(|w| !w.is_empty()) {
        d.workdir = Some(w);
    }
    no_content()
}

/// Dispatches one `filesystem.Filesystem` call: the file operations to
/// [`filesystem`], the watches to [`watch`].
async fn fs_call(
    app: Arc<Envd>,
    p: Protocol,
    method: &str,
    req: Request<RequestBody>,
) -> Response<Body> {
    let user = match app.e2b.user(req.headers(), None) {
        Ok(u) => u,
        Err(m) => {
            return connect::error_response(
                p,
                &connect::Error::new(connect::Code::Unauthenticated, m),
            )
        }
    };
    use proto::{ListDirRequest, MoveRequest, PathRequest};
    match method {
        "Stat" => connect::unary(p, req, |r: PathRequest| filesystem::stat(user, r)).await,
        "MakeDir" => connect::unary(p, req, |r: PathRequest| filesystem::make_dir(user, r)).await,
        "Move" => connect::unary(p, req, |r: MoveRequest| filesystem::mv(user, r)).await,
        "ListDir" => {
            connect::unary(p, req, |r: ListDirRequest| filesystem::list_dir(user, r)).await
        }
        "Remove" => connect::unary(p, req, |r: PathRequest| filesystem::remove(user, r)).await,
        "WatchDir" => watch::watch_dir(app, user, p, req).await,
        "CreateWatcher" | "GetWatcherEvents" | "RemoveWatcher" => {
            watch::poll_call(app, user, p, method, req).await
        }
        _ => connect::error_response(
            p,
            &connect::Error::unimplemented(format!(
                "filesystem.Filesystem/{method} does not exist"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_user_name() {
        let mut h = HeaderMap::new();
        assert_eq!(basic_user(&h), None);
        // base64("user:")
        h.insert(header::AUTHORIZATION, "Basic dXNlcjo=".parse().unwrap());
        assert_eq!(basic_user(&h).as_deref(), Some("user"));
        h.insert(header::AUTHORIZATION, "Bearer dXNlcjo=".parse().unwrap());
        assert_eq!(basic_user(&h), None);
    }

    #[test]
    fn paths_are_the_home_directorys() {
        let u = User {
            name: "u".into(),
            uid: 1,
            gid: 1,
            home: "/home/u".into(),
            switch: true,
        };
        assert_eq!(u.path("a/b").unwrap(), Path::new("/home/u/a/b"));
        assert_eq!(u.path("~").unwrap(), Path::new("/home/u"));
        assert_eq!(u.path("~/x").unwrap(), Path::new("/home/u/x"));
        assert_eq!(u.path("/etc/../tmp").unwrap(), Path::new("/tmp"));
        assert!(u.path("").is_err());
    }

    #[test]
    fn digests_compare() {
        assert!(digest_eq(b"abc", b"abc"));
        assert!(!digest_eq(b"abc", b"abd"));
    }
}
