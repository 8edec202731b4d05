//! File transfer over HTTP, shared by every route that sends or receives
//! files (`/files`, agent-sandbox, sandboxd): `Range` parsing, the download
//! response (one path for whole files, single ranges, `multipart/byteranges`
//! and `HEAD`), the streaming file bodies, and the bounds on multipart forms.
//! Knows nothing of where a file comes from: routes open it (as their
//! caller, in their root) and hand it here.

pub mod body;
pub mod form;
pub mod range;

use std::fs::File;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{header, HeaderValue, Response, StatusCode};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

pub use body::{file_bytes, stream_bytes, stream_lines};
pub use range::{parse_range, parse_ranges, ByteRange, Ranges, MAX_RANGES};

use crate::server::zerocopy::Offer;
use crate::server::Body;

/// What part of a file a download sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Span {
    /// All of it: 200.
    Whole,
    /// `first..=last`: 206 with `Content-Range`.
    One(u64, u64),
    /// Several ranges (sorted, disjoint): 206, `multipart/byteranges`.
    Many(Vec<(u64, u64)>),
}

/// The response to a download of `span` of `file` (`size` bytes, last
/// modified `modified`): status, type, length, `Content-Range`,
/// `Accept-Ranges`, `Last-Modified`. With `head`, the same headers and no
/// body (the file is not read).
pub fn download(
    file: File,
    size: u64,
    modified: SystemTime,
    span: Span,
    head: bool,
) -> Response<Body> {
    // Sent with sendfile if the connection can (plain HTTP/1.1).
    let offer = Offer::default();
    let mut resp = match span {
        Span::Whole => file_response(file_bytes(file, 0, size, &offer), size, modified),
        Span::One(a, b) => {
            let body = file_bytes(file, a, b - a + 1, &offer);
            let mut resp = file_response(body, b - a + 1, modified);
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_RANGE,
                header_value(&format!("bytes {a}-{b}/{size}")),
            );
            resp
        }
        Span::Many(parts) => {
            let boundary = crate::process::new_id();
            let (body, len) = body::multipart_ranges(file, size, parts, &boundary, &offer);
            let mut resp = file_response(body, len, modified);
            *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header_value(&format!("multipart/byteranges; boundary={boundary}")),
            );
            resp
        }
    };
    if head {
        *resp.body_mut() = crate::server::empty();
    } else {
        resp.extensions_mut().insert(offer);
    }
    resp
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

/// A header value, or `attachment` if `s` cannot be one (never on the
/// values built here).
pub fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// Whole seconds since the epoch, as HTTP dates carry.
pub fn http_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

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
