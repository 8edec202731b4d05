//! `/files/*`: info, delete, permissions, move, search, replace, upload and
//! download, plus the identity-scoped variants under
//! `/v1/filesystem/{uid}/{gid}/files/*`.
//!
//! Handlers validate and expand paths here, then run the domain operation
//! (`crate::fs`) on a blocking thread, as the caller's identity when the
//! route names one.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use serde::{Deserialize, Serialize};

use crate::api::transfer::form::Paced;
use crate::api::transfer::{
    self, content_disposition, header_value, http_secs, parse_ranges, stream_lines, Ranges, Span,
};
use crate::api::Ctx;
use crate::date::rfc3339;
use crate::fs::attrs::AttrRequest;
use crate::fs::identity::{scoped, Identity, Scope};
use crate::fs::info::{self, mode_from_wire, mode_to_wire, FileInfo, Names};
use crate::fs::ops;
use crate::fs::root::{Place, Root};
use crate::fs::upload::Writer;
use crate::fs::{self, replace, search, FsError};
use crate::server::{json_response, ok_empty, sse, ApiError, Body};

/// `FileInfo` as the wire shows it (upstream's field names).
#[derive(Debug, Serialize)]
pub struct WireInfo {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub size: u64,
    pub modified_at: String,
    pub created_at: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

impl WireInfo {
    pub fn new(i: &FileInfo, names: &Names) -> WireInfo {
        WireInfo {
            path: i.path.to_string_lossy().into_owned(),
            kind: i.kind.as_str(),
            size: i.size,
            modified_at: rfc3339(i.modified),
            created_at: rfc3339(i.changed),
            owner: names.user(i.uid),
            group: names.group(i.gid),
            // Permission bits only, as upstream (`Mode().Perm()`).
            mode: mode_to_wire(i.mode & 0o777),
        }
    }
}

/// THE notion of where a file route acts (the route table mounts the file
/// routes under one prefix per scope, `file_routes!`): the identity an identity-scoped
/// route names (`/v1/filesystem/{uid}/{gid}/…`), the merged view of an
/// isolated session (`/v1/isolated/session/{id}/…`: paths resolve inside
/// the session's mount namespace, its root as `/`), or the daemon's own
/// view and identity on the plain routes.
pub fn identity(ctx: &Ctx) -> Result<Scope, ApiError> {
    if ctx.req.uri().path().starts_with("/v1/isolated/session/") {
        let s = ctx.app.isolated.get(ctx.param("id"))?;
        if s.status() != "active" {
            return Err(crate::isolate::IsolateError::Inactive(s.id.clone()).into());
        }
        s.touch();
        // As the session's runs: its uid/gid when it names them.
        let id = match (s.request.uid, s.request.gid) {
            (None, None) => None,
            (uid, gid) => Some(Identity {
                uid: uid.unwrap_or(0),
                gid: gid.or(uid).unwrap_or(0),
            }),
        };
        return Ok(Scope {
            id,
            ns: Some(s.ns_handle()),
        });
    }
    let (uid, gid) = (ctx.param("uid"), ctx.param("gid"));
    if uid.is_empty() && gid.is_empty() {
        return Ok(Scope::default());
    }
    let parse = |name: &str, v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|n| *n != u32::MAX)
            .ok_or_else(|| {
                ApiError::invalid_body(format!(
                    "invalid {name} {v:?} in the path: an integer between 0 and 4294967294 is required"
                ))
            })
    };
    Ok(Some(Identity {
        uid: parse("uid", uid)?,
        gid: parse("gid", gid)?,
    })
    .into())
}

/// The root a file route acts in: the scope its path names (see
/// [`identity`]). The agent-sandbox and sandboxd routes act in confined
/// roots (`agent_sandbox::base_root`, `sandboxd`'s root directory) through
/// the same [`Root`] operations.
pub fn root(ctx: &Ctx) -> Result<Root, ApiError> {
    Ok(Root::Scoped(identity(ctx)?))
}

/// Why one multipart part could not be received.
pub enum PartError {
    /// The body: malformed, over a limit, or cut short.
    Body(multer::Error),
    /// Writing the file.
    Fs(FsError),
}

/// Streams one multipart part into `w` as it arrives (memory holds a write
/// buffer or two at most) and commits it: the file's size. On failure the
/// temporary file is gone before this returns. Every upload route's part
/// goes through here, whatever its root.
pub async fn receive_part(field: &mut multer::Field<'_>, mut w: Writer) -> Result<u64, PartError> {
    loop {
        let step = match field.chunk().await {
            Ok(Some(data)) => w.write(&data).await.map_err(PartError::Fs),
            Ok(None) => return w.commit().await.map_err(PartError::Fs),
            Err(e) => Err(PartError::Body(e)),
        };
        if let Err(e) = step {
            w.discard().await;
            return Err(e);
        }
    }
}

/// Every value of a required, repeatable query parameter.
pub fn required_all(ctx: &Ctx, name: &str) -> Result<Vec<String>, ApiError> {
    let q = ctx.query();
    let v: Vec<String> = q.all(name).into_iter().map(str::to_string).collect();
    if v.is_empty() {
        return Err(ApiError::missing_query(name));
    }
    Ok(v)
}

/// A required query parameter, expanded as a path.
pub fn required_path(ctx: &Ctx, name: &str) -> Result<PathBuf, ApiError> {
    let q = ctx.query();
    let raw = q.get(name).ok_or_else(|| ApiError::missing_query(name))?;
    Ok(fs::expand(raw)?)
}

/// Upstream's `Permission` / `FileMetadata` object; `null` owner/group and a
/// zero or absent mode mean "leave as is".
#[derive(Debug, Default, Deserialize)]
pub struct Permission {
    pub path: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    pub mode: Option<u32>,
}

impl Permission {
    pub fn attrs(&self) -> Result<AttrRequest, ApiError> {
        let mode = match self.mode {
            None | Some(0) => None,
            Some(m) => Some(mode_from_wire(m).map_err(ApiError::invalid_body)?),
        };
        Ok(AttrRequest {
            mode,
            owner: self.owner.clone(),
            group: self.group.clone(),
        })
    }
}

/// One upload `metadata` part: the JSON object, its target path in `root`,
/// and the attributes to give the file.
pub fn upload_metadata(root: &Root, raw: &[u8]) -> Result<(Place, AttrRequest), ApiError> {
    let meta: Permission = serde_json::from_slice(raw).map_err(|e| {
        bad_form(
            "INVALID_FILE_METADATA",
            format!("invalid metadata format. {e}"),
        )
    })?;
    let path = match meta.path.as_deref() {
        None | Some("") => return Err(bad_form("INVALID_FILE_METADATA", "metadata path is empty")),
        Some(p) => root.place(p).map_err(ApiError::from)?,
    };
    Ok((path, meta.attrs()?))
}

/// `GET /files/info?path=…` (repeatable): `{requested path: FileInfo}`.
pub async fn info(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let raw = required_all(&ctx, "path")?;
    let paths = raw
        .iter()
        .map(|p| fs::expand(p))
        .collect::<Result<Vec<_>, _>>()?;
    let out = scoped(id, move || {
        let names = Names::load();
        let mut out = BTreeMap::new();
        for (raw, p) in raw.into_iter().zip(paths) {
            out.insert(raw, WireInfo::new(&info::stat(&p)?, &names));
        }
        Ok(out)
    })
    .await?;
    Ok(json_response(StatusCode::OK, &out))
}

/// `DELETE /files?path=…` (repeatable). A missing file is not an error.
pub async fn remove(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    remove_each(ctx, ops::remove_file).await
}

/// Applies `op` to every `path` query value, in order; 200 when all succeed.
pub async fn remove_each(
    ctx: Ctx,
    op: fn(&std::path::Path) -> crate::fs::FsResult<()>,
) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let paths = required_all(&ctx, "path")?
        .iter()
        .map(|p| fs::expand(p))
        .collect::<Result<Vec<_>, _>>()?;
    scoped(id, move || paths.iter().try_for_each(|p| op(p))).await?;
    Ok(ok_empty())
}

/// Validates and expands a `{path: Permission}` body.
pub fn attr_map(
    body: BTreeMap<String, Permission>,
) -> Result<Vec<(PathBuf, AttrRequest)>, ApiError> {
    body.iter()
        .map(|(p, perm)| Ok((fs::expand(p)?, perm.attrs()?)))
        .collect()
}

/// Resolves every owner and group first, so that a bad name changes
/// nothing, then applies `op` to each path in turn.
pub fn apply_each(
    items: &[(PathBuf, AttrRequest)],
    op: fn(&std::path::Path, crate::fs::attrs::Attrs) -> crate::fs::FsResult<()>,
) -> crate::fs::FsResult<()> {
    let resolved = items
        .iter()
        .map(|(p, a)| Ok((p, a.resolve()?)))
        .collect::<Result<Vec<_>, FsError>>()?;
    resolved.into_iter().try_for_each(|(p, a)| op(p, a))
}

/// `POST /files/permissions` `{path: {mode, owner, group}}`. Everything is
/// validated (modes, names) before anything changes.
pub async fn permissions(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let items = attr_map(ctx.json::<BTreeMap<String, Permission>>().await?)?;
    scoped(id, move || apply_each(&items, ops::set_attrs)).await?;
    Ok(ok_empty())
}

#[derive(Debug, Deserialize)]
struct MoveItem {
    src: String,
    dest: String,
}

/// `POST /files/mv` `[{src, dest}]`: creates `dest`'s parents, never
/// replaces an existing `dest`.
pub async fn mv(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let items = ctx
        .json::<Vec<MoveItem>>()
        .await?
        .into_iter()
        .map(|m| Ok((fs::expand(&m.src)?, fs::expand(&m.dest)?)))
        .collect::<Result<Vec<_>, ApiError>>()?;
    scoped(id, move || {
        items
            .iter()
            .try_for_each(|(src, dest)| ops::move_path(src, dest))
    })
    .await?;
    Ok(ok_empty())
}

/// `GET /files/search?path=&pattern=`: files whose base name matches.
pub async fn search(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let root = required_path(&ctx, "path")?;
    let pattern = search::Pattern::new(ctx.query().get("pattern").unwrap_or("**"))?;
    walk_response(id, root, u32::MAX, move |p, m| search::hit(&pattern, p, m)).await
}

/// Bytes of JSON a walk writes before handing them to the client.
const WALK_BATCH: usize = 64 * 1024;
/// Batches in flight between a walk and its client.
const WALK_IN_FLIGHT: usize = 4;

/// A 200 JSON array of the entries under `root` (to `depth` levels) that
/// `keep` accepts, streamed as the walk finds them: however large the tree,
/// memory holds a few batches and the names of one directory per level.
/// The walk waits while the client is slow and stops when it goes away. A
/// root that cannot be walked is an error response, before the first byte.
pub async fn walk_response(
    id: Scope,
    root: PathBuf,
    depth: u32,
    keep: impl Fn(&std::path::Path, &std::fs::Metadata) -> bool + Send + 'static,
) -> Result<Response<Body>, ApiError> {
    let (tx, body) = sse::channel(WALK_IN_FLIGHT);
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    // Runs until the walk ends or the client leaves (the body, and with it
    // the channel's receiver, is dropped).
    let walk = scoped(id, move || {
        let entries = ops::walk(&root, depth)?;
        if started_tx.send(()).is_err() {
            return Ok(());
        }
        let names = Names::load();
        let mut batch = Vec::with_capacity(WALK_BATCH);
        batch.push(b'[');
        let mut first = true;
        for (p, m) in entries.filter(|(p, m)| keep(p, m)) {
            if !std::mem::take(&mut first) {
                batch.push(b',');
            }
            let item = WireInfo::new(&info::describe(&p, &m), &names);
            serde_json::to_writer(&mut batch, &item)
                .map_err(|e| FsError::Internal(format!("encoding a file entry: {e}")))?;
            if batch.len() >= WALK_BATCH {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(WALK_BATCH));
                if tx.blocking_send(Bytes::from(full)).is_err() {
                    return Ok(());
                }
            }
        }
        batch.push(b']');
        let _ = tx.blocking_send(Bytes::from(batch));
        Ok(())
    });
    if started.await.is_err() {
        // The walk ended before it started: it says why.
        walk.await?;
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "RUNTIME_ERROR",
            "the directory walk ended without a result",
        ));
    }
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
struct ReplaceItem {
    old: String,
    new: String,
}

/// `POST /files/replace[?verbose=true]` `{path: {old, new}}`; each file is
/// rewritten atomically. Verbose answers `{path: {"replacedCount": n}}`.
pub async fn replace(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let verbose = ctx.query().get("verbose") == Some("true");
    let body = ctx.json::<BTreeMap<String, ReplaceItem>>().await?;
    let mut items = Vec::with_capacity(body.len());
    for (raw, r) in body {
        if r.old.is_empty() {
            return Err(ApiError::invalid_body(format!(
                "old content must not be empty (file {raw})"
            )));
        }
        let path = fs::expand(&raw)?;
        items.push((raw, path, r));
    }
    let counts = scoped(id, move || {
        let mut out = BTreeMap::new();
        for (raw, path, r) in items {
            let n = replace::replace_in_file(&path, &r.old, &r.new)?;
            out.insert(raw, serde_json::json!({ "replacedCount": n }));
        }
        Ok(out)
    })
    .await?;
    Ok(if verbose {
        json_response(StatusCode::OK, &counts)
    } else {
        ok_empty()
    })
}

fn bad_form(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

fn multipart_error(e: multer::Error) -> ApiError {
    bad_form(
        "INVALID_FILE",
        format!(
            "malformed multipart body: {}",
            crate::api::transfer::form::describe(&e)
        ),
    )
}

/// The largest `metadata` part accepted.
const MAX_METADATA: usize = 64 * 1024;

/// An upload failure, and whether the rest of the body can still be read
/// (so that the client sees the answer instead of a reset connection).
struct Failed {
    err: ApiError,
    body_ok: bool,
}

impl From<ApiError> for Failed {
    fn from(err: ApiError) -> Self {
        Failed { err, body_ok: true }
    }
}

/// `POST /files/upload`: multipart with `metadata` (JSON) parts, each
/// followed by its `file` part. Parts are parsed as they arrive; each file is
/// streamed into a temporary file beside its target and renamed into place
/// once complete, fsynced and its size verified.
pub async fn upload(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let root = root(&ctx)?;
    let ct = ctx
        .req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let boundary = multer::parse_boundary(ct).map_err(|_| {
        bad_form(
            "INVALID_FILE",
            format!("expected a multipart/form-data body with a boundary, got Content-Type {ct:?}"),
        )
    })?;
    let body = Paced::new(ctx.req.into_body());
    let body = crate::api::transfer::form::Bounded::new(body, &boundary);
    let mut form = multer::Multipart::new(body, boundary);
    match receive_form(&mut form, &root).await {
        Ok(()) => Ok(ok_empty()),
        Err(f) => {
            if f.body_ok {
                drain(&mut form).await;
            }
            Err(f.err)
        }
    }
}

/// Reads the rest of a form and throws it away, for a bounded time.
async fn drain(form: &mut multer::Multipart<'_>) {
    let all = async {
        while let Ok(Some(mut f)) = form.next_field().await {
            while let Ok(Some(_)) = f.chunk().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), all).await;
}

async fn receive_form(form: &mut multer::Multipart<'_>, root: &Root) -> Result<(), Failed> {
    let mut pending: Option<(Place, AttrRequest)> = None;
    let (mut metas, mut files) = (0usize, 0usize);
    loop {
        let mut field = match form.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return Err(Failed {
                    err: multipart_error(e),
                    body_ok: false,
                })
            }
        };
        match field.name() {
            Some("metadata") => {
                metas += 1;
                // Each metadata part is followed by its file: at most one
                // waits, however many a client sends.
                if pending.is_some() {
                    return Err(bad_form(
                        "INVALID_FILE_METADATA",
                        format!("metadata part {metas} follows another metadata part instead of its file part"),
                    )
                    .into());
                }
                let mut raw = Vec::new();
                loop {
                    match field.chunk().await {
                        Ok(Some(c)) => {
                            raw.extend_from_slice(&c);
                            if raw.len() > MAX_METADATA {
                                return Err(bad_form(
                                    "INVALID_FILE_METADATA",
                                    format!("metadata part exceeds {MAX_METADATA} bytes"),
                                )
                                .into());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            return Err(Failed {
                                err: multipart_error(e),
                                body_ok: false,
                            })
                        }
                    }
                }
                let (path, attrs) = upload_metadata(root, &raw)?;
                pending = Some((path, attrs));
            }
            Some("file") => {
                files += 1;
                let Some((path, attrs)) = pending.take() else {
                    return Err(bad_form(
                        "INVALID_FILE_METADATA",
                        format!("file part {files} has no metadata part before it"),
                    )
                    .into());
                };
                let w = root.create(&path, attrs).await.map_err(ApiError::from)?;
                receive_part(&mut field, w).await.map_err(|e| match e {
                    PartError::Body(e) => Failed {
                        err: multipart_error(e),
                        body_ok: false,
                    },
                    PartError::Fs(e) => Failed::from(ApiError::from(e)),
                })?;
            }
            // Anything else is not ours; multer skips its data.
            _ => {}
        }
    }
    if metas == 0 && files == 0 {
        return Err(bad_form("INVALID_FILE", "multipart form is empty").into());
    }
    if metas != files {
        return Err(bad_form(
            "INVALID_FILE",
            format!("metadata and file count mismatch: {metas} vs {files}"),
        )
        .into());
    }
    Ok(())
}

/// A positive integer query parameter, if present.
fn positive(ctx: &Ctx, name: &str) -> Result<Option<u64>, ApiError> {
    match ctx.query().get(name) {
        None => Ok(None),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(ApiError::invalid_body(format!(
                "invalid query parameter '{name}': {v}"
            ))),
        },
    }
}

/// `GET /files/download?path=` (and `HEAD`, the same headers without a
/// body): the file, streamed; a `Range` gives 206, one part or, for several
/// ranges, `multipart/byteranges`; `offset`/`limit` give a window of lines
/// as text.
pub async fn download(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let root = root(&ctx)?;
    let q = ctx.query();
    let raw = q
        .get("path")
        .ok_or_else(|| ApiError::missing_query("path"))?;
    let place = root.place(raw)?;
    let offset = positive(&ctx, "offset")?;
    let limit = positive(&ctx, "limit")?;
    let hdr = |name: header::HeaderName| {
        ctx.req
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let range = hdr(header::RANGE);
    let since = hdr(header::IF_MODIFIED_SINCE);
    let line_mode = offset.is_some() || limit.is_some();
    if line_mode && range.is_some() {
        return Err(ApiError::invalid_body(
            "line-based reading (offset/limit) and byte range (Range header) are mutually exclusive",
        ));
    }
    let name = place
        .shown
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let (file, meta) = root.open_file(&place).await?;

    if line_mode {
        let mut resp = Response::new(stream_lines(file, offset.unwrap_or(1), limit));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(resp);
    }

    let size = meta.size;
    let mtime = meta.modified;
    let last_modified = httpdate::fmt_http_date(mtime);
    if let Some(since) = since.and_then(|s| httpdate::parse_http_date(&s).ok()) {
        if range.is_none() && http_secs(mtime) <= http_secs(since) {
            let mut resp = Response::new(crate::server::empty());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut()
                .insert(header::LAST_MODIFIED, header_value(&last_modified));
            return Ok(resp);
        }
    }
    let head_only = ctx.req.method() == http::Method::HEAD;
    let parts = match range.as_deref().map(|r| parse_ranges(r, size)) {
        None | Some(Ranges::TooMany) => Vec::new(),
        Some(Ranges::Parts(p)) => p,
        Some(other) => {
            let why = if other == Ranges::Invalid {
                "invalid Range header"
            } else {
                "requested range not satisfiable"
            };
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "INVALID_RANGE",
                format!("{why}: {:?} (file size {size})", range.unwrap_or_default()),
            )
            .into_response();
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes */{size}")),
            );
            return Ok(resp);
        }
    };
    let span = match parts.len() {
        0 => Span::Whole,
        1 => Span::One(parts[0].0, parts[0].1),
        _ => Span::Many(parts),
    };
    // HEAD: the headers GET would have, no body (the file is not read).
    let mut resp = transfer::download(file, size, mtime, span, head_only);
    resp.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition(&name)),
    );
    Ok(resp)
}
