//! A route table's machinery, for any state `S`: routes with `{name}` and
//! `{*tail}` parameters, matched in order; 404 for an unknown path, 405 (with
//! `Allow`) for a known path with the wrong method. The table itself is the
//! application's (`api/routes.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, StatusCode};

use super::{ApiError, Body, Ctx, RequestBody};

/// A handler's answer to come.
pub type Reply = Pin<Box<dyn Future<Output = Result<Response<Body>, ApiError>> + Send>>;

/// How a route answers.
pub enum Handler<S> {
    /// At once, from the daemon's state alone. The request is dropped before
    /// the answer goes back to hyper, and nothing is boxed or reference
    /// counted: hyper reads the next request into the same buffer instead of
    /// allocating a new one, since no header of the last request still
    /// points into it.
    Now(fn(&S) -> Result<Response<Body>, ApiError>),
    /// Through a future, which owns the request.
    Later(fn(Ctx<S>) -> Reply),
}

impl<S> Clone for Handler<S> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<S> Copy for Handler<S> {}

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
pub struct Route<S> {
    /// `None` for `ANY`: the route takes every method.
    pub method: Option<Method>,
    pub path: &'static str,
    pub handler: Handler<S>,
    /// A path without parameters, matched by one comparison.
    literal: bool,
}

impl<S> Route<S> {
    pub fn new(method: Option<Method>, path: &'static str, handler: Handler<S>) -> Route<S> {
        Route {
            method,
            path,
            handler,
            literal: !path.contains('{'),
        }
    }

    /// The parameters `path` gives this route, if it matches.
    pub fn matches(&self, path: &str) -> Option<Vec<(&'static str, String)>> {
        if self.literal {
            (self.path == path).then(Vec::new)
        } else {
            matches(self.path, path)
        }
    }
}

/// Matches `path` against a route pattern, returning the captured parameters.
/// `{name}` values are percent-decoded; a `{*name}` tail is kept as sent, so
/// it can be passed on byte for byte.
pub fn matches(pattern: &'static str, path: &str) -> Option<Vec<(&'static str, String)>> {
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

/// Routes a request to its handler in `table`: 404 for an unknown path, 405
/// for a known path with the wrong method. Synchronous, so the only thing a
/// request's future holds is the answer, or the handler's (boxed) future.
pub fn dispatch<S>(
    table: &[Route<S>],
    app: &Arc<S>,
    req: Request<RequestBody>,
    peer: SocketAddr,
) -> Answer {
    let mut allowed: Vec<&Method> = Vec::new();
    for route in table {
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
}
