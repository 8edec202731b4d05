//! Requests from web pages: refused unless their origin is allowed.
//!
//! A browser adds `Origin` to every cross-origin request, to every POST
//! (same-origin or not) and to every WebSocket handshake. `curl`, the SDKs
//! and gateways send none. So a request with an `Origin` header comes from a
//! page, and a page must not drive execd (a `text/plain` POST needs no CORS
//! preflight, so it would run a command) unless `--allowed-origins` lists
//! its origin. Allowed origins get CORS answers, preflights included.
//!
//! DNS rebinding makes a page's origin the daemon's own, and a rebound GET
//! carries no `Origin`; `--allowed-hosts` closes that by checking `Host`.

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use super::{ApiError, Body};

/// What to do with a request before the token check.
pub enum Verdict {
    /// Not from a page (no `Origin`): serve as usual.
    Serve,
    /// From an allowed origin: serve, and add CORS headers naming it.
    ServeCors(HeaderValue),
    /// An allowed origin's CORS preflight: answered here.
    Preflight(Response<Body>),
    /// Refused.
    Refuse(ApiError),
}

/// Checks `Host` against `allowed_hosts` (when not empty: `--allowed-hosts`)
/// and `Origin` against `allowed_origins` (`--allowed-origins`).
pub fn check<B>(allowed_origins: &[String], allowed_hosts: &[String], req: &Request<B>) -> Verdict {
    if !allowed_hosts.is_empty() && !host_allowed(allowed_hosts, req) {
        return Verdict::Refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "HOST_NOT_ALLOWED",
            "the Host header names no host in --allowed-hosts",
        ));
    }
    let Some(origin) = req.headers().get(header::ORIGIN) else {
        return Verdict::Serve;
    };
    if !origin_allowed(allowed_origins, origin.as_bytes()) {
        return Verdict::Refuse(ApiError::new(
            StatusCode::FORBIDDEN,
            "ORIGIN_NOT_ALLOWED",
            "requests from web pages are refused unless their Origin is in --allowed-origins",
        ));
    }
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        Verdict::Preflight(preflight_response(origin.clone(), req.headers()))
    } else {
        Verdict::ServeCors(origin.clone())
    }
}

/// `Origin` is one of `allowed` (ASCII case ignored; a trailing `/` on an
/// entry is ignored), or `allowed` has `*`.
fn origin_allowed(allowed: &[String], origin: &[u8]) -> bool {
    allowed.iter().any(|a| {
        a == "*"
            || a.trim_end_matches('/')
                .as_bytes()
                .eq_ignore_ascii_case(origin)
    })
}

/// The request's host: `Host`, else the URI's authority (HTTP/2).
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    match req.headers().get(header::HOST) {
        Some(h) => h.to_str().ok(),
        None => req.uri().authority().map(|a| a.as_str()),
    }
}

/// `host[:port]` split, `[v6]:port` included.
fn split_port(h: &str) -> (&str, Option<&str>) {
    if let Some(rest) = h.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((name, tail)) => (name, tail.strip_prefix(':')),
            None => (h, None),
        };
    }
    match h.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => (name, Some(port)),
        _ => (h, None),
    }
}

/// The request's host is one of `allowed`. An entry without a port matches
/// any port (a port-forward or a gateway listens on its own); an entry with
/// one matches that port only.
fn host_allowed<B>(allowed: &[String], req: &Request<B>) -> bool {
    let Some(host) = host_of(req) else {
        return false;
    };
    let (name, port) = split_port(host);
    let name = name.trim_end_matches('.');
    allowed.iter().any(|a| {
        let (a_name, a_port) = split_port(a);
        a_name.trim_end_matches('.').eq_ignore_ascii_case(name)
            && a_port.is_none_or(|p| Some(p) == port)
    })
}

/// How long a browser may cache a preflight answer.
const PREFLIGHT_MAX_AGE: &str = "600";

fn preflight_response(origin: HeaderValue, req: &HeaderMap) -> Response<Body> {
    let mut resp = Response::new(super::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    h.insert(header::VARY, HeaderValue::from_static("Origin"));
    resp
}

/// Adds the CORS headers of an allowed origin to a response.
pub fn add_cors(resp: &mut Response<Body>, origin: HeaderValue) {
    let h = resp.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri("/ping");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("test input")
    }

    fn list(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn origins() {
        assert!(!origin_allowed(&[], b"http://a"));
        assert!(origin_allowed(&list(&["*"]), b"null"));
        assert!(origin_allowed(
            &list(&["http://A.example:8080/"]),
            b"http://a.example:8080"
        ));
        assert!(!origin_allowed(
            &list(&["http://a.example"]),
            b"http://a.example:8080"
        ));
        assert!(!origin_allowed(
            &list(&["http://a.example"]),
            b"https://a.example"
        ));
    }

    #[test]
    fn hosts() {
        let allowed = list(&["localhost", "sbx.example:44772", "[::1]", "10.0.0.1"]);
        let ok = |h: &str| host_allowed(&allowed, &req(&[("host", h)]));
        assert!(ok("localhost") && ok("LOCALHOST:1234") && ok("localhost.:5"));
        assert!(ok("sbx.example:44772") && !ok("sbx.example:80") && !ok("sbx.example"));
        assert!(ok("[::1]:44772") && ok("10.0.0.1:1"));
        assert!(!ok("evil.example") && !ok("localhost.evil.example") && !ok(""));
        assert!(!host_allowed(&allowed, &req(&[])), "no Host at all");
        assert_eq!(split_port("[::1]:8"), ("::1", Some("8")));
        assert_eq!(split_port("::1"), ("::1", None));
    }
}
