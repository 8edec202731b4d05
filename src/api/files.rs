//! `/files/*`: info, delete, permissions, move, search, replace, upload and
//! download, plus the identity-scoped variants under
//! `/v1/filesystem/{uid}/{gid}/files/*`.
//!
//! Handlers validate and expand paths here, then run the domain operation
//! (`crate::fs`) on a blocking thread, as the caller's identity when the
//! route names one.

use std::collections::BTreeMap;
use std::fs::File;
use std::future::Future;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::BodyDataStream;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use serde::{Deserialize, Serialize};

use super::wire::rfc3339;
use crate::api::Ctx;
use crate::fs::attrs::AttrRequest;
use crate::fs::identity::{scoped, Identity, Scope};
use crate::fs::info::{self, mode_from_wire, mode_to_wire, FileInfo, Names};
use crate::fs::lines::LineWindow;
use crate::fs::ops;
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

/// THE notion of where a file route acts: the identity an identity-scoped
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
        return Ok(Scope {
            id: None,
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

/// One upload `metadata` part: the JSON object, its (expanded) target path,
/// and the attributes to give the file.
pub fn upload_metadata(raw: &[u8]) -> Result<(PathBuf, AttrRequest), ApiError> {
    let meta: Permission = serde_json::from_slice(raw).map_err(|e| {
        bad_form(
            "INVALID_FILE_METADATA",
            format!("invalid metadata format. {e}"),
        )
    })?;
    let path = match meta.path.as_deref() {
        None | Some("") => return Err(bad_form("INVALID_FILE_METADATA", "metadata path is empty")),
        Some(p) => fs::expand(p).map_err(ApiError::from)?,
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

/// The request body as a stream that yields once after every chunk. Without
/// the pause, multer would pull everything the socket has ready into its own
/// buffer before handing out a byte; with it, at most a chunk or so waits.
struct Paced {
    inner: BodyDataStream<crate::server::RequestBody>,
    rest: bool,
}

impl futures_core::Stream for Paced {
    type Item = Result<Bytes, hyper::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.rest {
            self.rest = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let r = Pin::new(&mut self.inner).poll_next(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            self.rest = true;
        }
        r
    }
}

fn bad_form(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

fn multipart_error(e: multer::Error) -> ApiError {
    bad_form(
        "INVALID_FILE",
        format!("malformed multipart body: {}", super::form::describe(&e)),
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
    let id = identity(&ctx)?;
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
    let body = Paced {
        inner: BodyDataStream::new(ctx.req.into_body()),
        rest: false,
    };
    let body = super::form::Bounded::new(body, &boundary);
    let mut form = multer::Multipart::new(body, boundary);
    match receive_form(&mut form, id).await {
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

async fn receive_form(form: &mut multer::Multipart<'_>, id: Scope) -> Result<(), Failed> {
    let mut pending: Option<(PathBuf, AttrRequest)> = None;
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
                let (path, attrs) = upload_metadata(&raw)?;
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
                receive_file(&mut field, path, attrs, id.clone()).await?;
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

/// Streams one `file` part into its target as it arrives; memory holds a
/// write buffer or two at most.
async fn receive_file(
    field: &mut multer::Field<'_>,
    path: PathBuf,
    attrs: AttrRequest,
    id: Scope,
) -> Result<u64, Failed> {
    let mut out = Writer::create(id, path, attrs)
        .await
        .map_err(ApiError::from)?;
    loop {
        let step = match field.chunk().await {
            Ok(Some(data)) => out
                .write(&data)
                .await
                .map_err(|e| Failed::from(ApiError::from(e))),
            Ok(None) => return Ok(out.commit().await.map_err(ApiError::from)?),
            Err(e) => Err(Failed {
                err: multipart_error(e),
                body_ok: false,
            }),
        };
        if let Err(failed) = step {
            // Cut short or failed: the temporary file is gone before we answer.
            out.discard().await;
            return Err(failed);
        }
    }
}

/// A `Range` header, resolved against a file size.
#[derive(Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// `first..=last`.
    Part(u64, u64),
    /// Well-formed, but starts beyond the end.
    Unsatisfiable,
    /// Not a byte range this server understands.
    Invalid,
}

/// Parses a `Range` header's first range (the sandboxd routes serve only
/// that one, as sandboxd does; `/files/download` uses [`parse_ranges`]).
pub fn parse_range(h: &str, size: u64) -> ByteRange {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return ByteRange::Invalid;
    };
    parse_spec(spec.split(',').next().unwrap_or(""), size)
}

/// One `first-last`, `first-` or `-suffix` of a byte range set.
fn parse_spec(spec: &str, size: u64) -> ByteRange {
    let first = spec.trim();
    let Some((a, b)) = first.split_once('-') else {
        return ByteRange::Invalid;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    if a.trim().is_empty() {
        // Suffix: the last n bytes.
        return match num(b) {
            None => ByteRange::Invalid,
            Some(0) => ByteRange::Unsatisfiable,
            Some(_) if size == 0 => ByteRange::Unsatisfiable,
            Some(n) => ByteRange::Part(size.saturating_sub(n), size - 1),
        };
    }
    let Some(start) = num(a) else {
        return ByteRange::Invalid;
    };
    let end = if b.trim().is_empty() {
        u64::MAX
    } else {
        match num(b) {
            Some(e) if e >= start => e,
            _ => return ByteRange::Invalid,
        }
    };
    if start >= size {
        return ByteRange::Unsatisfiable;
    }
    ByteRange::Part(start, end.min(size - 1))
}

/// Ranges served in one `multipart/byteranges` response at most; a request
/// with more gets the whole file (200), as RFC 9110 lets a server ignore
/// `Range`.
pub const MAX_RANGES: usize = 16;

/// A `Range` header with any number of ranges, resolved against a size.
#[derive(Debug, PartialEq, Eq)]
pub enum Ranges {
    /// The satisfiable ranges (`first..=last`), sorted, with overlapping
    /// and adjacent ones merged (RFC 9110 §14.2 allows it); never empty.
    Parts(Vec<(u64, u64)>),
    /// Well-formed, but no range starts within the file.
    Unsatisfiable,
    /// Not a byte range set this server understands.
    Invalid,
    /// More than [`MAX_RANGES`] ranges.
    TooMany,
}

/// Parses a `Range` header (RFC 9110 §14.1.2): unsatisfiable ranges of a
/// set are left out; the set is unsatisfiable only if all of them are.
pub fn parse_ranges(h: &str, size: u64) -> Ranges {
    let Some(set) = h.trim().strip_prefix("bytes=") else {
        return Ranges::Invalid;
    };
    let specs: Vec<&str> = set.split(',').filter(|s| !s.trim().is_empty()).collect();
    if specs.is_empty() {
        return Ranges::Invalid;
    }
    if specs.len() > MAX_RANGES {
        return Ranges::TooMany;
    }
    let mut parts = Vec::with_capacity(specs.len());
    for spec in specs {
        match parse_spec(spec, size) {
            ByteRange::Part(a, b) => parts.push((a, b)),
            ByteRange::Unsatisfiable => {}
            ByteRange::Invalid => return Ranges::Invalid,
        }
    }
    if parts.is_empty() {
        return Ranges::Unsatisfiable;
    }
    parts.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(parts.len());
    for (a, b) in parts {
        match merged.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    Ranges::Parts(merged)
}

/// A `multipart/byteranges` body (RFC 9110 §14.6) of `ranges` of `file`,
/// and its length. Each part's reader is made only when the part before it
/// has been sent, so one read buffer is held at a time.
fn multipart_ranges(file: File, size: u64, ranges: Vec<(u64, u64)>, boundary: &str) -> (Body, u64) {
    use futures_util::StreamExt;
    use http_body_util::BodyExt;
    let head = |i: usize, a: u64, b: u64| {
        format!(
            "{}--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {a}-{b}/{size}\r\n\r\n",
            if i == 0 { "" } else { "\r\n" }
        )
    };
    let tail = format!("\r\n--{boundary}--\r\n");
    let len = ranges
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| head(i, a, b).len() as u64 + (b - a + 1))
        .sum::<u64>()
        + tail.len() as u64;
    let heads: Vec<(Bytes, u64, u64)> = ranges
        .iter()
        .enumerate()
        .map(|(i, &(a, b))| (Bytes::from(head(i, a, b)), a, b))
        .collect();
    type Frames = std::pin::Pin<
        Box<
            dyn futures_core::Stream<Item = Result<http_body::Frame<Bytes>, std::io::Error>> + Send,
        >,
    >;
    let parts = futures_util::stream::iter(heads).flat_map(move |(h, a, b)| {
        let head = futures_util::stream::once(async move { Ok(http_body::Frame::data(h)) });
        let data: Frames = match file.try_clone() {
            Ok(f) => Box::pin(
                stream_bytes(f, a, b - a + 1)
                    .into_data_stream()
                    .map(|r| r.map(http_body::Frame::data)),
            ),
            Err(e) => Box::pin(futures_util::stream::once(async move { Err(e) })),
        };
        head.chain(data)
    });
    let end =
        futures_util::stream::once(async move { Ok(http_body::Frame::data(Bytes::from(tail))) });
    let body = http_body_util::StreamBody::new(parts.chain(end)).boxed_unsync();
    (body, len)
}

/// Characters left as they are in an RFC 5987 `filename*` value.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// A file body of `len` bytes with its type, length and date headers.
pub fn file_response(body: Body, len: u64, modified: std::time::SystemTime) -> Response<Body> {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(modified)) {
        h.insert(header::LAST_MODIFIED, v);
    }
    resp
}

/// `Content-Disposition` for a download of a file named `name` (raw bytes).
/// Printable ASCII names are quoted as they are; any other name is sent
/// percent-encoded, also as RFC 5987 `filename*` so clients recover it.
pub fn content_disposition(name: &[u8]) -> String {
    let plain = !name.is_empty()
        && name
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && !matches!(b, b'"' | b'\\' | b'%'));
    if plain {
        // Checked above: printable ASCII.
        format!("attachment; filename=\"{}\"", String::from_utf8_lossy(name))
    } else {
        let enc = percent_encoding::percent_encode(name, ATTR_CHAR).to_string();
        format!("attachment; filename=\"{enc}\"; filename*=UTF-8''{enc}")
    }
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

/// Size of each read while streaming a download.
const READ_CHUNK: usize = 1024 * 1024;

/// What a download does with each chunk it reads (`None`: the end of the
/// range): the bytes to send, if any, and whether to stop.
type Shape = Box<dyn FnMut(Option<&[u8]>) -> (Option<Bytes>, bool) + Send>;

/// The reading side of a download: a file, a position, and a shape.
struct Reader {
    file: File,
    pos: u64,
    end: u64,
    shape: Shape,
    buf: Vec<u8>,
    done: bool,
}

impl Reader {
    /// Reads until there is something to send, the end, or a bound on the
    /// reads per step (so that skipping lines does not hold a thread long).
    /// `Ok(None)`: finished.
    fn step(&mut self) -> std::io::Result<Option<Bytes>> {
        for _ in 0..64 {
            if self.done {
                return Ok(None);
            }
            let want = READ_CHUNK.min(self.end.saturating_sub(self.pos) as usize);
            let n = match self.file.read_at(&mut self.buf[..want], self.pos) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.pos += n as u64;
            let (out, stop) = (self.shape)((n > 0).then_some(&self.buf[..n]));
            self.done = n == 0 || stop;
            if let Some(b) = out.filter(|b| !b.is_empty()) {
                return Ok(Some(b));
            }
        }
        Ok(Some(Bytes::new()))
    }
}

type Step = tokio::task::JoinHandle<(Reader, std::io::Result<Option<Bytes>>)>;

/// A download body. Each read runs on a blocking thread only while it
/// reads, and the next read starts as soon as a chunk is handed to hyper, so
/// at most two chunks are held and no thread waits on a slow client. A read
/// error ends the body with an error, so hyper breaks the connection instead
/// of finishing a response that looks complete but is not.
struct FileBody {
    step: Option<Step>,
}

fn start_step(mut r: Reader) -> Step {
    tokio::task::spawn_blocking(move || {
        let out = r.step();
        (r, out)
    })
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        loop {
            let Some(step) = self.step.as_mut() else {
                return Poll::Ready(None);
            };
            let (reader, out) = match Pin::new(step).poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(e)) => {
                    self.step = None;
                    return Poll::Ready(Some(Err(std::io::Error::other(e))));
                }
            };
            self.step = None;
            match out {
                Ok(Some(b)) => {
                    self.step = Some(start_step(reader));
                    if !b.is_empty() {
                        return Poll::Ready(Some(Ok(http_body::Frame::data(b))));
                    }
                }
                Ok(None) => return Poll::Ready(None),
                Err(e) => {
                    tracing::warn!(error = %e, "download read failed");
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}

/// Streams `file` from `start` to `end` through `shape`.
fn stream_file(file: File, start: u64, end: u64, shape: Shape) -> Body {
    let reader = Reader {
        file,
        pos: start,
        end,
        shape,
        buf: vec![0u8; READ_CHUNK],
        done: false,
    };
    Body::new(FileBody {
        step: Some(start_step(reader)),
    })
}

/// Streams `len` bytes of `file` from `start`. A file that shrinks meanwhile
/// ends the body short of its Content-Length, which breaks the response
/// rather than passing off a short file as whole.
pub(crate) fn stream_bytes(file: File, start: u64, len: u64) -> Body {
    stream_file(
        file,
        start,
        start + len,
        Box::new(|chunk| (chunk.map(Bytes::copy_from_slice), false)),
    )
}

/// Streams the line window of `file`, in pieces of about a read each.
fn stream_lines(file: File, offset: u64, limit: Option<u64>) -> Body {
    let mut window = LineWindow::new(offset, limit);
    let mut out = Vec::new();
    stream_file(
        file,
        0,
        u64::MAX,
        Box::new(move |chunk| {
            if let Some(c) = chunk {
                window.feed(c, &mut out);
            }
            let flush = chunk.is_none() || window.done() || out.len() >= READ_CHUNK;
            let piece = flush.then(|| Bytes::from(std::mem::take(&mut out)));
            (piece, window.done())
        }),
    )
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Whole seconds since the epoch, as HTTP dates carry.
fn http_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `GET /files/download?path=` (and `HEAD`, the same headers without a
/// body): the file, streamed; a `Range` gives 206, one part or, for several
/// ranges, `multipart/byteranges`; `offset`/`limit` give a window of lines
/// as text.
pub async fn download(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let id = identity(&ctx)?;
    let path = required_path(&ctx, "path")?;
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
    let name = path
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_default();
    let (file, meta) = scoped(id, move || ops::open_regular(&path)).await?;

    if line_mode {
        let mut resp = Response::new(stream_lines(file, offset.unwrap_or(1), limit));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return Ok(resp);
    }

    let size = meta.len();
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
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
    let mut resp = match parts[..] {
        [] => file_response(stream_bytes(file, 0, size), size, mtime),
        [(a, b)] => {
            let mut resp = file_response(stream_bytes(file, a, b - a + 1), b - a + 1, mtime);
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {a}-{b}/{size}")),
            );
            resp
        }
        _ => {
            let boundary = crate::process::new_id();
            let (body, len) = multipart_ranges(file, size, parts, &boundary);
            let mut resp = file_response(body, len, mtime);
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header_value(&format!("multipart/byteranges; boundary={boundary}")),
            );
            resp
        }
    };
    resp.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        header_value(&content_disposition(&name)),
    );
    if head_only {
        // HEAD: the headers GET would have, no body (the file is not read).
        *resp.body_mut() = crate::server::empty();
    }
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use ByteRange::*;
        assert_eq!(parse_range("bytes=0-9", 100), Part(0, 9));
        assert_eq!(parse_range("bytes=90-", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=90-200", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-10", 100), Part(90, 99));
        assert_eq!(parse_range("bytes=-200", 100), Part(0, 99));
        assert_eq!(parse_range("bytes=5-5, 10-20", 100), Part(5, 5));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=9-1", 100), Invalid);
        assert_eq!(parse_range("bytes=a-b", 100), Invalid);
        assert_eq!(parse_range("bytes=+1-2", 100), Invalid);
        assert_eq!(parse_range("items=0-1", 100), Invalid);
        assert_eq!(parse_range("bytes=1", 100), Invalid);
    }

    #[test]
    fn range_sets() {
        use Ranges::*;
        assert_eq!(
            parse_ranges("bytes=0-0,5-6", 10),
            Parts(vec![(0, 0), (5, 6)])
        );
        assert_eq!(
            parse_ranges("bytes=5-6,0-0", 10),
            Parts(vec![(0, 0), (5, 6)])
        );
        assert_eq!(parse_ranges("bytes=0-4,2-7,8-8", 10), Parts(vec![(0, 8)]));
        assert_eq!(
            parse_ranges("bytes=-2, 0-1", 10),
            Parts(vec![(0, 1), (8, 9)])
        );
        assert_eq!(parse_ranges("bytes=0-1,,20-", 10), Parts(vec![(0, 1)]));
        assert_eq!(parse_ranges("bytes=20-,30-40", 10), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=0-1,x", 10), Invalid);
        assert_eq!(parse_ranges("bytes=,", 10), Invalid);
        assert_eq!(parse_ranges("lines=0-1", 10), Invalid);
        let many = vec!["0-0"; MAX_RANGES + 1].join(",");
        assert_eq!(parse_ranges(&format!("bytes={many}"), 10), TooMany);
        let most = vec!["0-0"; MAX_RANGES].join(",");
        assert_eq!(
            parse_ranges(&format!("bytes={most}"), 10),
            Parts(vec![(0, 0)])
        );
        assert_eq!(
            parse_ranges("bytes=0-18446744073709551615", u64::MAX),
            Parts(vec![(0, u64::MAX - 1)])
        );
    }

    #[test]
    fn dispositions() {
        assert_eq!(
            content_disposition(b"a b.txt"),
            "attachment; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition("é.txt".as_bytes()),
            "attachment; filename=\"%C3%A9.txt\"; filename*=UTF-8''%C3%A9.txt"
        );
        assert_eq!(
            content_disposition(b"q\"%\n#.txt"),
            "attachment; filename=\"q%22%25%0A#.txt\"; filename*=UTF-8''q%22%25%0A#.txt"
        );
        for n in [&b"x\xff\r\n"[..], "日本".as_bytes(), b"\\"] {
            assert!(HeaderValue::from_str(&content_disposition(n)).is_ok());
        }
    }
}
