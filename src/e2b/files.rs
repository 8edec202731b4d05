//! envd's `GET /files` (download) and `POST /files` (upload), on execd's
//! file code: files are opened and written as the request's user, uploads
//! through the atomic [`Writer`] (parents created, replaced whole on
//! commit), downloads with a single `Range`.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::Envd;
use super::{http_error, HttpError, User};
use crate::fs::attrs::AttrRequest;
use crate::fs::upload::Writer;
use crate::fs::{FsError, Kind};
use crate::server::{Body, RequestBody};

/// The query of a `/files` request.
#[derive(Default)]
struct Query {
    path: Option<String>,
    username: Option<String>,
    signature: Option<String>,
    expiration: Option<String>,
}

fn query<B>(req: &Request<B>) -> Query {
    let mut q = Query::default();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        let v = Some(v.into_owned());
        match &*k {
            "path" => q.path = v,
            "username" => q.username = v,
            "signature" => q.signature = v,
            "signature_expiration" => q.expiration = v,
            _ => {}
        }
    }
    q
}

/// envd's v1 signature: `v1_` and the unpadded base64 of
/// SHA-256(`path:operation:username:token[:expiration]`).
pub fn signature(path: &str, op: &str, user: &str, token: &str, exp: Option<&str>) -> String {
    let raw = match exp {
        Some(e) => format!("{path}:{op}:{user}:{token}:{e}"),
        None => format!("{path}:{op}:{user}:{token}"),
    };
    let b64 = crate::connect::json::b64(&Sha256::digest(raw.as_bytes()));
    format!("v1_{}", b64.trim_end_matches('='))
}

/// Whether the request may touch files: a token is not set, or it is
/// given, or the URL is signed for `op` with it and not expired.
fn allowed(app: &Envd, req: &Request<RequestBody>, q: &Query, op: &str) -> Result<(), HttpError> {
    let e2b = &app.e2b;
    if e2b.token_ok(app, req.headers()) {
        return Ok(());
    }
    let denied = |m: &str| Err(HttpError::new(StatusCode::UNAUTHORIZED, m));
    let Some(sig) = q.signature.as_deref() else {
        return denied("invalid or missing X-Access-Token, and no signature");
    };
    let Some(token) = e2b.signing_token() else {
        return denied("signed URLs need the access token set through /init");
    };
    if let Some(e) = q.expiration.as_deref() {
        let Ok(exp) = e.parse::<u64>() else {
            return denied("invalid signature_expiration");
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if exp < now {
            return denied("the signature has expired");
        }
    }
    let want = signature(
        q.path.as_deref().unwrap_or(""),
        op,
        q.username.as_deref().unwrap_or(""),
        &token,
        q.expiration.as_deref(),
    );
    if super::digest_eq(want.as_bytes(), sig.as_bytes()) {
        Ok(())
    } else {
        denied("invalid signature")
    }
}

/// The status of a file-system error, as envd answers.
pub fn fs_status(e: &FsError) -> StatusCode {
    match e.kind() {
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::Denied => StatusCode::FORBIDDEN,
        Kind::NoSpace => StatusCode::INSUFFICIENT_STORAGE,
        Kind::Exists => StatusCode::CONFLICT,
        Kind::InvalidFile | Kind::BadRequest | Kind::BadContent => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn fs_error(e: FsError) -> HttpError {
    HttpError::new(fs_status(&e), e.to_string())
}

/// The user and the target path of a request.
fn target(
    app: &Envd,
    req: &Request<RequestBody>,
    q: &Query,
    raw: Option<&str>,
) -> Result<(User, Option<PathBuf>), HttpError> {
    let user = app
        .e2b
        .user(req.headers(), q.username.as_deref())
        .map_err(|m| HttpError::new(StatusCode::UNAUTHORIZED, m))?;
    let path = match raw {
        None => None,
        Some(r) => Some(
            user.path(r)
                .map_err(|m| HttpError::new(StatusCode::BAD_REQUEST, m))?,
        ),
    };
    Ok((user, path))
}

/// `GET /files?path=…`: the file, whole or one `Range`.
pub async fn download(app: Arc<Envd>, req: Request<RequestBody>) -> Response<Body> {
    let q = query(&req);
    if let Err(r) = allowed(&app, &req, &q, "read") {
        return r.into_response();
    }
    let (user, path) = match target(&app, &req, &q, Some(q.path.as_deref().unwrap_or(""))) {
        Ok((u, Some(p))) => (u, p),
        Ok((_, None)) => return http_error(StatusCode::BAD_REQUEST, "path is required"),
        Err(r) => return r.into_response(),
    };
    let shown = path.clone();
    let opened =
        crate::fs::identity::scoped(user.scope(), move || crate::fs::ops::open_regular(&shown))
            .await;
    let (file, meta) = match opened {
        Ok(x) => x,
        Err(e) => return fs_error(e).into_response(),
    };
    let size = meta.len();
    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|h| crate::api::transfer::parse_range(h, size));
    let name = path
        .file_name()
        .map(|n| n.as_encoded_bytes().to_vec())
        .unwrap_or_default();
    // Sent with sendfile if the connection can (plain HTTP/1.1), as the
    // other download routes are; the file was opened as the user above.
    let offer = crate::server::zerocopy::Offer::default();
    let mut resp = match range {
        Some(crate::api::transfer::ByteRange::Part(a, b)) => {
            let len = b - a + 1;
            let mut r = crate::api::transfer::file_response(
                crate::api::transfer::file_bytes(file, a, len, &offer),
                len,
                modified,
            );
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {a}-{b}/{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        Some(crate::api::transfer::ByteRange::Unsatisfiable) => {
            let mut r = http_error(StatusCode::RANGE_NOT_SATISFIABLE, "range not satisfiable");
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
        // The whole file, gzipped when the client takes it (not with a
        // Range: a range is of the file's own bytes).
        _ if range.is_none() && accepts_gzip(req.headers()) => {
            let mut r = crate::api::transfer::file_response(
                gzip_body(file, &app.shared.tasks),
                0,
                modified,
            );
            let h = r.headers_mut();
            h.remove(header::CONTENT_LENGTH);
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
            r
        }
        // No range, or one this server does not understand: the whole file.
        _ => crate::api::transfer::file_response(
            crate::api::transfer::file_bytes(file, 0, size, &offer),
            size,
            modified,
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&crate::api::transfer::content_disposition(&name)) {
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    if req.method() == http::Method::HEAD {
        *resp.body_mut() = crate::server::empty();
    } else {
        resp.extensions_mut().insert(offer);
    }
    resp
}

/// One uploaded file, as envd describes it.
fn written(path: &std::path::Path, meta: &Metadata) -> serde_json::Value {
    let mut v = serde_json::json!({
        "name": path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        "type": "file",
        "path": path.to_string_lossy(),
    });
    if !meta.is_empty() {
        v["metadata"] = serde_json::json!(meta);
    }
    v
}

type Metadata = std::collections::HashMap<String, String>;

/// Sets an upload's metadata on the file written, as the user.
async fn tag(user: &User, path: &std::path::Path, meta: &Metadata) -> Result<(), HttpError> {
    if meta.is_empty() {
        return Ok(());
    }
    let (p, m) = (path.to_path_buf(), meta.clone());
    crate::fs::identity::scoped(user.scope(), move || {
        super::xattr::set(&p, &m).map_err(|e| FsError::io("setxattr", &p, e))
    })
    .await
    .map_err(fs_error)
}

/// Starts writing `path` as `user` (parents created).
async fn open_writer(user: &User, path: PathBuf) -> Result<Writer, HttpError> {
    Writer::create(user.scope(), path, AttrRequest::default())
        .await
        .map_err(fs_error)
}

/// One more piece of an upload, or its end; the file is discarded on error.
async fn put(
    out: &mut Option<Writer>,
    next: Result<Option<Bytes>, String>,
) -> Result<bool, HttpError> {
    let Some(w) = out.as_mut() else {
        return Ok(false);
    };
    let err = match next {
        Ok(Some(data)) => match w.write(&data).await {
            Ok(()) => return Ok(true),
            Err(e) => fs_error(e),
        },
        Ok(None) => {
            let w = out.take().map(Writer::commit);
            return match w {
                Some(c) => c.await.map(|_| false).map_err(fs_error),
                None => Ok(false),
            };
        }
        Err(m) => HttpError::new(StatusCode::BAD_REQUEST, m),
    };
    if let Some(w) = out.take() {
        w.discard().await;
    }
    Err(err)
}

/// `POST /files`: `multipart/form-data` (every part with a file name is a
/// file; its name is its path) or `application/octet-stream` (to `path`).
pub async fn upload(app: Arc<Envd>, req: Request<RequestBody>) -> Response<Body> {
    let q = query(&req);
    if let Err(r) = allowed(&app, &req, &q, "write") {
        return r.into_response();
    }
    let gzip = match req
        .headers()
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(enc) => {
            return http_error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {enc:?} is not supported: send gzip or nothing"),
            )
        }
    };
    let meta = match super::xattr::from_headers(req.headers()) {
        Ok(m) => m,
        Err(m) => return http_error(StatusCode::BAD_REQUEST, m),
    };
    let (user, qpath) = match target(&app, &req, &q, q.path.as_deref()) {
        Ok(x) => x,
        Err(r) => return r.into_response(),
    };
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if ct.to_ascii_lowercase().starts_with("multipart/form-data") {
        let Ok(boundary) = multer::parse_boundary(&ct) else {
            return http_error(StatusCode::BAD_REQUEST, "multipart body without a boundary");
        };
        // Bounded: a form whose preamble or part headers never end fails at
        // 16 KiB instead of growing multer's buffer.
        use futures_util::StreamExt;
        let src = Source::new(req.into_body(), gzip, &app.shared.tasks);
        let data = Box::pin(src.chunks().map(|r| r.map_err(std::io::Error::other)));
        let stream = crate::api::transfer::form::Bounded::new(data, &boundary);
        let mut form = multer::Multipart::new(stream, boundary);
        let mut done = Vec::new();
        loop {
            let mut field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let status = if crate::api::transfer::form::over_limit(&e) {
                        StatusCode::PAYLOAD_TOO_LARGE
                    } else {
                        StatusCode::BAD_REQUEST
                    };
                    return http_error(
                        status,
                        format!("multipart: {}", crate::api::transfer::form::describe(&e)),
                    );
                }
            };
            let name = field.file_name().map(str::to_string);
            let path = match (name.filter(|n| !n.is_empty()), &qpath) {
                (Some(n), _) => match user.path(&n) {
                    Ok(p) => p,
                    Err(m) => return http_error(StatusCode::BAD_REQUEST, m),
                },
                (None, Some(p)) => p.clone(),
                (None, None) => continue,
            };
            use futures_util::StreamExt;
            let chunks = (&mut field).map(|r| r.map_err(|e| format!("multipart: {e}")));
            match store(&user, path, &meta, chunks).await {
                Ok(v) => done.push(v),
                Err(e) => return e.into_response(),
            }
        }
        if done.is_empty() {
            return http_error(StatusCode::BAD_REQUEST, "the form holds no file");
        }
        return super::json_ok(&serde_json::Value::Array(done));
    }
    let Some(path) = qpath else {
        return http_error(
            StatusCode::BAD_REQUEST,
            "path is required for an application/octet-stream upload",
        );
    };
    let body = Source::new(req.into_body(), gzip, &app.shared.tasks);
    match store(&user, path, &meta, body.chunks()).await {
        Ok(v) => super::json_ok(&serde_json::json!([v])),
        Err(e) => e.into_response(),
    }
}

/// Writes one file from `next`'s pieces (atomically, as the user), tags it
/// with the metadata, and answers envd's entry for it.
async fn store(
    user: &User,
    path: PathBuf,
    meta: &Metadata,
    chunks: impl futures_util::Stream<Item = Result<Bytes, String>>,
) -> Result<serde_json::Value, HttpError> {
    use futures_util::StreamExt;
    let mut chunks = std::pin::pin!(chunks);
    let mut out = Some(open_writer(user, path.clone()).await?);
    while put(&mut out, chunks.next().await.transpose()).await? {}
    tag(user, &path, meta).await?;
    Ok(written(&path, meta))
}

/// Whether `Accept-Encoding` takes gzip (and does not refuse it with `q=0`).
fn accepts_gzip(h: &http::HeaderMap) -> bool {
    h.get_all(header::ACCEPT_ENCODING).iter().any(|v| {
        v.to_str().unwrap_or("").split(',').any(|e| {
            let mut parts = e.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .is_some_and(|q| q.trim().parse::<f32>().is_ok_and(|q| q == 0.0))
            });
            (name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip")) && !refused
        })
    })
}

/// Input read and compressed per piece.
const GZIP_PIECE: usize = 64 * 1024;

/// A file as a gzip stream, compressed on a blocking thread piece by piece
/// into a bounded channel (it stops when the client goes away).
fn gzip_body(file: std::fs::File, tasks: &tokio_util::task::TaskTracker) -> Body {
    use http_body_util::BodyExt;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(GUNZIP_QUEUE);
    let work = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut file = file;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut piece = vec![0u8; GZIP_PIECE];
        loop {
            let n = match file.read(&mut piece) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return drop(tx.blocking_send(Err(e))),
            };
            let out = if n == 0 {
                match std::mem::replace(
                    &mut gz,
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()),
                )
                .finish()
                {
                    Ok(v) => v,
                    Err(e) => return drop(tx.blocking_send(Err(e))),
                }
            } else {
                if let Err(e) = gz.write_all(&piece[..n]) {
                    return drop(tx.blocking_send(Err(e)));
                }
                std::mem::take(gz.get_mut())
            };
            if (!out.is_empty() && tx.blocking_send(Ok(Bytes::from(out))).is_err()) || n == 0 {
                return;
            }
        }
    });
    tasks.spawn(async move {
        let _ = work.await;
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|r| (r.map(http_body::Frame::data), rx))
    });
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

/// Gunzipped pieces queued for the writer.
const GUNZIP_QUEUE: usize = 4;

/// The compressed frames of a gzip upload, as a reader for the decoder
/// (on a blocking thread).
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl std::io::Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.chunk = b,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// An upload's bytes: the request body, or what it gunzips to.
enum Source {
    Plain(RequestBody),
    Gzip(tokio::sync::mpsc::Receiver<Result<Bytes, String>>),
}

impl Source {
    /// With `gzip`, the body is decoded on a blocking thread between two
    /// bounded channels: compressed frames in, decoded pieces out. The
    /// decoder stops when the reader goes away. The task feeding it is
    /// `tasks`' and ends with the body or with the decoder.
    fn new(body: RequestBody, gzip: bool, tasks: &tokio_util::task::TaskTracker) -> Source {
        if !gzip {
            return Source::Plain(body);
        }
        use tokio::sync::mpsc;
        let (in_tx, in_rx) = mpsc::channel::<Bytes>(GUNZIP_QUEUE);
        let (out_tx, out_rx) = mpsc::channel(GUNZIP_QUEUE);
        let err_tx = out_tx.clone();
        let feed = async move {
            use http_body_util::BodyExt;
            let mut body = body;
            while let Some(f) = body.frame().await {
                match f {
                    Ok(f) => {
                        if let Ok(d) = f.into_data() {
                            if in_tx.send(d).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = err_tx.send(Err(format!("request body: {e}"))).await;
                        return;
                    }
                }
            }
        };
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut gz = flate2::read::MultiGzDecoder::new(Chunks {
                rx: in_rx,
                chunk: Bytes::new(),
            });
            let mut piece = vec![0u8; GZIP_PIECE];
            loop {
                match gz.read(&mut piece) {
                    Ok(0) => return,
                    Ok(n) => {
                        if out_tx
                            .blocking_send(Ok(Bytes::copy_from_slice(&piece[..n])))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = out_tx.blocking_send(Err(format!("gzip: {e}")));
                        return;
                    }
                }
            }
        });
        tasks.spawn(feed);
        Source::Gzip(out_rx)
    }

    /// The pieces as a stream (ends at the body's end or after an error).
    fn chunks(self) -> impl futures_util::Stream<Item = Result<Bytes, String>> + Send {
        futures_util::stream::unfold(Some(self), |src| async move {
            let mut src = src?;
            match src.next().await {
                Ok(Some(b)) => Some((Ok(b), Some(src))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        })
    }

    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Source::Plain(body) => {
                use http_body_util::BodyExt;
                loop {
                    match body.frame().await {
                        None => return Ok(None),
                        Some(Err(e)) => return Err(format!("request body: {e}")),
                        Some(Ok(f)) => {
                            if let Ok(d) = f.into_data() {
                                return Ok(Some(d));
                            }
                        }
                    }
                }
            }
            Source::Gzip(rx) => rx.recv().await.transpose(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_is_507() {
        let e = FsError::io(
            "write",
            std::path::Path::new("/x"),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        assert_eq!(fs_status(&e), StatusCode::INSUFFICIENT_STORAGE);
        let e = FsError::io(
            "open",
            std::path::Path::new("/x"),
            std::io::Error::from_raw_os_error(libc::EACCES),
        );
        assert_eq!(fs_status(&e), StatusCode::FORBIDDEN);
    }

    #[test]
    fn signatures_as_the_sdk_makes_them() {
        // base64(sha256("/a:read::tok")) without padding, from Python's
        // hashlib + base64 as e2b/sandbox/signature.py does.
        let s = signature("/a", "read", "", "tok", None);
        assert!(s.starts_with("v1_") && !s.ends_with('='));
        assert_eq!(s.len(), 3 + 43);
        assert_ne!(s, signature("/a", "write", "", "tok", None));
        assert_ne!(s, signature("/a", "read", "", "tok", Some("1")));
    }
}
