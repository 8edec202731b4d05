//! The kubernetes-sigs/agent-sandbox sandboxd REST API (`/v1/files/…`,
//! `/v1/health`, `/v1/metadata`), on the main port. Errors are sandboxd's
//! `{code, message}` with its codes; paths follow sandboxd's rules (absolute
//! paths re-rooted) and are opened beneath the root (see `fs::confined`).

use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyExt;
use serde::Serialize;

use super::agent_sandbox::{base_dir, content_type, tail};
use super::files::{receive_part, PartError};
use crate::api::transfer::{self, ByteRange, Span};
use crate::api::{App, Ctx};
use crate::fs::attrs::AttrRequest;
use crate::fs::confined::{ConfineError, Entry};
use crate::fs::root::{Place, Root};
use crate::fs::FsError;
use crate::server::{json_response, ApiError, Body};

/// Names of variables never served by `/v1/metadata` (substrings, any case),
/// even when the allow-list names them: a second net, not the defence.
const SECRET_MARKERS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "CRED",
    "KEY",
    "AUTH",
    "BEARER",
    "PRIVATE",
    "CERT",
    "SESSION",
    "COOKIE",
    "SIGNATURE",
];

/// The same, as whole `_`-separated words only (`PAT` but not `PATH`).
const SECRET_WORDS: &[&str] = &["PASS", "PWD", "PAT", "DSN", "SALT", "PIN", "OTP"];

/// Whether a variable's name suggests a secret.
fn secret_name(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    SECRET_MARKERS.iter().any(|m| up.contains(m))
        || up.split('_').any(|w| SECRET_WORDS.contains(&w))
}

/// `/v1/metadata`'s variables by default, after the prefix: names that
/// describe the sandbox and carry nothing secret. `--metadata-env` replaces
/// the list.
pub const METADATA_ENV_DEFAULT: &[&str] = &[
    "ID",
    "NAME",
    "NAMESPACE",
    "TEMPLATE",
    "IMAGE",
    "PORT",
    "POD_NAME",
    "POD_IP",
    "NODE_NAME",
    "REGION",
    "ZONE",
    "BASE_DIR",
    "EXEC_TIMEOUT_SECONDS",
];

/// The sandboxd root directory.
pub fn root_dir(app: &App) -> PathBuf {
    app.config
        .sandboxd_root
        .clone()
        .unwrap_or_else(|| base_dir(app))
}

fn err(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, code, msg)
}

fn invalid(msg: impl Into<String>) -> ApiError {
    err(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", msg)
}

/// sandboxd's mapping of a failed path operation.
fn confine_error(e: ConfineError, path: &str) -> ApiError {
    match e {
        ConfineError::Escapes => err(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            format!("path {path:?} escapes the sandbox root"),
        ),
        e => match e.errno() {
            Some(libc::ENOENT | libc::ENOTDIR) => err(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                format!("{path:?} not found"),
            ),
            Some(libc::EACCES | libc::EPERM | libc::EROFS) => err(
                StatusCode::FORBIDDEN,
                "PERMISSION_DENIED",
                format!("{path:?}: {e}"),
            ),
            Some(libc::ENOTEMPTY | libc::EEXIST) => err(
                StatusCode::CONFLICT,
                "CONFLICT",
                format!("directory {path:?} is not empty; use recursive=true"),
            ),
            Some(libc::EISDIR) => invalid(format!("{path:?} is a directory")),
            Some(libc::EINVAL | libc::ENAMETOOLONG | libc::ELOOP) => {
                invalid(format!("{path:?}: {e}"))
            }
            _ => err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                format!("{path:?}: {e}"),
            ),
        },
    }
}

/// sandboxd's codes for a failed operation in its root: a path's failure
/// as [`confine_error`], the atomic writer's by its kind.
fn fs_err(e: FsError, path: &str) -> ApiError {
    use crate::fs::Kind;
    let e = match e {
        FsError::Confined(e) => return confine_error(e, path),
        e => e,
    };
    let (status, code) = match e.kind() {
        Kind::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        Kind::Denied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        Kind::InvalidFile | Kind::BadRequest | Kind::BadContent => {
            (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
        }
        Kind::Exists => (StatusCode::CONFLICT, "CONFLICT"),
        Kind::NoSpace | Kind::Other => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
    };
    err(status, code, e.to_string())
}

/// The decoded path and its place under the root.
fn resolve(ctx: &Ctx) -> Result<(String, Place), ApiError> {
    let path = tail(ctx)?;
    let place = Place::sandboxd(&path, &root_dir(&ctx.app)).map_err(|e| confine_error(e, &path))?;
    Ok((path, place))
}

/// sandboxd's root: the root directory, confined.
async fn root(app: &App, path: &str) -> Result<Root, ApiError> {
    Root::confined(root_dir(app))
        .await
        .map_err(|e| fs_err(e, path))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC, whole seconds).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let (y, m, d) = crate::date::civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Serialize)]
struct FileEntry {
    name: String,
    size: u64,
    #[serde(rename = "type")]
    kind: &'static str,
    modified_at: String,
    mode: String,
}

impl From<Entry> for FileEntry {
    fn from(e: Entry) -> Self {
        FileEntry {
            name: String::from_utf8_lossy(e.name.as_bytes()).into_owned(),
            size: e.size,
            kind: if e.is_dir { "directory" } else { "file" },
            modified_at: rfc3339(e.modified),
            mode: format!("{:04o}", e.mode & 0o7777),
        }
    }
}

/// `GET /v1/files/{path}`: a file's bytes (one `Range` honoured), or a
/// directory listing.
pub async fn get(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    read(ctx, false).await
}

/// `HEAD /v1/files/{path}`: 200 when it exists, 404 when not.
pub async fn head(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    read(ctx, true).await
}

async fn read(ctx: Ctx, head_only: bool) -> Result<Response<Body>, ApiError> {
    let (path, place) = resolve(&ctx)?;
    let root = root(&ctx.app, &path).await?;
    let entry = root.stat(&place).await.map_err(|e| fs_err(e, &path))?;
    if entry.is_dir {
        if head_only {
            let mut resp = Response::new(crate::server::empty());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            return Ok(resp);
        }
        let entries = root.list(&place).await.map_err(|e| fs_err(e, &path))?;
        let listing = serde_json::json!({
            "path": format!("/{}", path.trim_start_matches('/')),
            "entries": entries.into_iter().map(FileEntry::from).collect::<Vec<_>>(),
        });
        return Ok(json_response(StatusCode::OK, &listing));
    }
    let range = ctx
        .req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let (file, entry) = root.open_file(&place).await.map_err(|e| fs_err(e, &path))?;
    let size = entry.size;
    let span = match range.as_deref().map(|r| transfer::parse_range(r, size)) {
        None | Some(ByteRange::Invalid) => Span::Whole,
        Some(ByteRange::Part(a, b)) => Span::One(a, b),
        Some(ByteRange::Unsatisfiable) => {
            let mut resp = err(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "INVALID_ARGUMENT",
                format!("range not satisfiable (file size {size})"),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
    };
    let resp = transfer::download(file, size, entry.modified, span, head_only);
    Ok(resp)
}

/// `mode=0NNN` (`^0[0-7]{3}$`), default 0644.
pub fn parse_mode(v: Option<&str>) -> Result<u32, ApiError> {
    let Some(v) = v else { return Ok(0o644) };
    let ok =
        v.len() == 4 && v.starts_with('0') && v.bytes().skip(1).all(|b| (b'0'..=b'7').contains(&b));
    if !ok {
        return Err(invalid(format!(
            "invalid mode {v:?}: want four octal digits starting with 0, e.g. 0644"
        )));
    }
    u32::from_str_radix(&v[1..], 8).map_err(|_| invalid(format!("invalid mode {v:?}")))
}

/// Go's `strconv.ParseBool`; absent or empty is false.
pub fn parse_bool(v: Option<&str>) -> Result<bool, ApiError> {
    match v.unwrap_or("") {
        "" | "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        other => Err(invalid(format!("invalid recursive value {other:?}"))),
    }
}

/// `PUT /v1/files/{path}?mode=0NNN`: the body (raw, or the multipart part
/// `file`) written atomically; parents created; 204.
pub async fn put(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let mode = parse_mode(ctx.query().get("mode"))?;
    let (path, place) = resolve(&ctx)?;
    if place.is_root() {
        return Err(invalid("cannot write over the sandbox root directory"));
    }
    let root = root(&ctx.app, &path).await?;
    let ct = content_type(&ctx);
    let multipart = ct
        .split(';')
        .next()
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("multipart/form-data"));
    let attrs = AttrRequest {
        mode: Some(mode),
        ..Default::default()
    };
    // The writer works relative to the directory checked here, never by path.
    let mut w = root
        .create(&place, attrs)
        .await
        .map_err(|e| fs_err(e, &path))?;
    let body = ctx.req.into_body();
    if multipart {
        let part = async {
            let boundary = multer::parse_boundary(&ct)
                .map_err(|_| invalid("multipart/form-data body without a boundary"))?;
            let body = crate::api::transfer::form::Bounded::new(
                http_body_util::BodyDataStream::new(body),
                &boundary,
            );
            let mut form = multer::Multipart::new(body, boundary);
            loop {
                match form.next_field().await {
                    Ok(Some(f)) if f.name() == Some("file") => return Ok((form, f)),
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(invalid("multipart body has no part named \"file\"")),
                    Err(e) => {
                        return Err(invalid(format!(
                            "malformed multipart body: {}",
                            crate::api::transfer::form::describe(&e)
                        )))
                    }
                }
            }
        };
        let (_form, mut field) = match part.await {
            Ok(p) => p,
            Err(e) => {
                w.discard().await;
                return Err(e);
            }
        };
        receive_part(&mut field, w).await.map_err(|e| match e {
            PartError::Body(e) => invalid(format!(
                "reading the upload: {}",
                crate::api::transfer::form::describe(&e)
            )),
            PartError::Fs(e) => fs_err(e, &path),
        })?;
    } else {
        let mut body = body;
        while let Some(frame) = body.frame().await {
            let data = match frame {
                Ok(f) => f.into_data().ok(),
                Err(e) => {
                    w.discard().await;
                    return Err(invalid(format!("reading the body: {e}")));
                }
            };
            if let Some(data) = data {
                if let Err(e) = w.write(&data).await {
                    w.discard().await;
                    return Err(fs_err(e, &path));
                }
            }
        }
        w.commit().await.map_err(|e| fs_err(e, &path))?;
    }
    let mut resp = Response::new(crate::server::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// `DELETE /v1/files/{path}?recursive=bool`: 204; 409 for a non-empty
/// directory without `recursive`; the root is emptied, never removed.
pub async fn delete(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let recursive = parse_bool(ctx.query().get("recursive"))?;
    let (path, place) = resolve(&ctx)?;
    let root = root(&ctx.app, &path).await?;
    root.remove(&place, recursive)
        .await
        .map_err(|e| fs_err(e, &path))?;
    let mut resp = Response::new(crate::server::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}

/// `GET /v1/health`: 200 with uptime, 503 once shutting down.
pub fn health(app: &App) -> Result<Response<Body>, ApiError> {
    if app.shutdown.is_cancelled() || app.engine.shutdown_token().is_cancelled() {
        return Err(err(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "sandboxd is shutting down",
        ));
    }
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"status": "ok", "uptime_seconds": app.started.elapsed().as_secs()}),
    ))
}

/// Whether `name` is on `allowed`: equal to an entry, or starting with an
/// entry's text before its final `*`.
fn name_allowed(allowed: &[String], name: &str) -> bool {
    allowed.iter().any(|a| match a.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => a == name,
    })
}

/// Whether `value` is a URL carrying a password (`scheme://user:pass@host`).
fn has_url_password(value: &str) -> bool {
    value.match_indices("://").any(|(i, _)| {
        let rest = &value[i + 3..];
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        authority
            .rsplit_once('@')
            .is_some_and(|(userinfo, _)| userinfo.contains(':'))
    })
}

/// `/v1/metadata`'s variables: named `prefix…`, on the allow-list (by
/// default the prefix followed by one of [`METADATA_ENV_DEFAULT`]), and
/// even then never a name that suggests a secret nor a URL with a
/// password. Safe by default: a variable is served only when its name was
/// chosen to be, not whenever it escapes a list of suspicious words.
pub fn metadata_env(
    prefix: &str,
    allowed: Option<&[String]>,
    vars: impl Iterator<Item = (String, String)>,
) -> serde_json::Map<String, serde_json::Value> {
    let default: Vec<String>;
    let allowed = match allowed {
        Some(a) => a,
        None => {
            default = METADATA_ENV_DEFAULT
                .iter()
                .map(|n| format!("{prefix}{n}"))
                .collect();
            &default
        }
    };
    vars.filter(|(k, _)| k.starts_with(prefix) && name_allowed(allowed, k))
        .filter(|(k, v)| !secret_name(k) && !has_url_password(v))
        .map(|(k, v)| (k, serde_json::Value::String(v)))
        .collect()
}

/// `GET /v1/metadata`: `{"env": {...}}`, computed once.
pub fn metadata(app: &App) -> Result<Response<Body>, ApiError> {
    static ENV: OnceLock<serde_json::Value> = OnceLock::new();
    let env = ENV.get_or_init(|| {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        let c = &app.config;
        serde_json::json!({ "env": metadata_env(&c.metadata_env_prefix, c.metadata_env.as_deref(), vars) })
    });
    Ok(json_response(StatusCode::OK, env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_bools() {
        assert_eq!(parse_mode(None).expect("test input"), 0o644);
        assert_eq!(parse_mode(Some("0755")).expect("test input"), 0o755);
        for bad in ["0999", "777", "abcd", "01777", "", "0x12"] {
            assert!(parse_mode(Some(bad)).is_err(), "{bad}");
        }
        assert!(parse_bool(Some("true")).expect("test input"));
        assert!(!parse_bool(None).expect("test input"));
        assert!(parse_bool(Some("banana")).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
    }

    #[test]
    fn metadata_serves_only_allowed_names() {
        let vars = [
            ("SANDBOX_ID", "a"),
            ("SANDBOX_NAMESPACE", "ns"),
            ("SANDBOX_API_TOKEN", "x"),
            ("SANDBOX_db_password", "x"),
            ("SANDBOX_SSH_KEY", "x"),
            ("SANDBOX_DB_PASS", "x"),
            ("SANDBOX_GITHUB_PAT", "x"),
            ("SANDBOX_DATABASE_URL", "postgres://app:hunter2@db:5432/app"),
            ("SANDBOX_MODE", "fast"),
            ("OTHER", "b"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let m = metadata_env("SANDBOX_", None, vars.clone().into_iter());
        assert_eq!(m.len(), 2, "{m:?}");
        assert_eq!(
            (&m["SANDBOX_ID"], &m["SANDBOX_NAMESPACE"]),
            (&"a".into(), &"ns".into())
        );
        // An explicit list, patterns included; the secret net still holds.
        let allowed = ["SANDBOX_*".to_string()];
        let m = metadata_env("SANDBOX_", Some(&allowed), vars.into_iter());
        let mut names: Vec<&str> = m.keys().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["SANDBOX_ID", "SANDBOX_MODE", "SANDBOX_NAMESPACE"]);
    }

    #[test]
    fn secret_names() {
        for n in [
            "GITHUB_PAT",
            "DB_PASS",
            "db_pwd",
            "API_TOKEN",
            "SSH_KEY",
            "SENTRY_DSN",
        ] {
            assert!(secret_name(n), "{n}");
        }
        for n in ["SANDBOX_PATH", "SANDBOX_PASSAGE", "SANDBOX_ID"] {
            assert!(!secret_name(n), "{n}");
        }
    }

    #[test]
    fn url_passwords() {
        assert!(has_url_password("postgres://u:p@h/db"));
        assert!(has_url_password("x https://u:p@h"));
        assert!(!has_url_password("https://h/a:b@c"));
        assert!(!has_url_password("https://user@h"));
        assert!(!has_url_password("plain"));
    }
}
