//! `ANY /proxy/{port}/{path…}`: a reverse proxy to `127.0.0.1:{port}`.
//!
//! This is how the lifecycle server reaches user ports in bridge mode, so it
//! must pass everything through untouched and promptly: the method, the raw
//! path and query, and both bodies frame by frame (an event stream is flushed
//! per event, nothing is collected). An `Upgrade` (WebSocket) request is sent
//! on with its upgrade headers; if the service answers 101 the two upgraded
//! connections are spliced until either side closes.
//!
//! Each request gets its own upstream connection (no pool): loopback connects
//! are cheap and a fresh connection can never be poisoned by a previous
//! request.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::api::Ctx;
use crate::server::auth::TOKEN_HEADER;
use crate::server::{ApiError, Body};

/// Set on every request execd proxies; a request that arrives with it is
/// refused, so a chain back into execd stops at its second hop.
pub const PROXIED_HEADER: &str = "x-execd-proxied";

/// How long a connect to the user's service may take before it is a 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("port is required: /proxy/{{port}}/{{path}}")]
    MissingPort,
    #[error("invalid port {0:?}: must be a number from 1 to 65535")]
    InvalidPort(String),
    #[error("invalid path or query for the upstream request: {0}")]
    InvalidTarget(String),
    #[error("port {0} is execd itself; proxying to it would loop")]
    SelfLoop(u16),
    #[error("request already proxied by execd (it carries {PROXIED_HEADER}); proxying it again would loop")]
    Looped,
    #[error("cannot connect to 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("cannot connect to 127.0.0.1:{port}: timed out after {}s", CONNECT_TIMEOUT.as_secs())]
    ConnectTimeout { port: u16 },
    #[error("upstream 127.0.0.1:{port} switched protocols without being asked to")]
    UnaskedUpgrade { port: u16 },
    #[error("upstream 127.0.0.1:{port} failed: {source}")]
    Upstream { port: u16, source: hyper::Error },
}

/// `/proxy` or `/proxy/` without a port: 400, as upstream.
pub async fn missing_port(_ctx: Ctx) -> Result<Response<Body>, ApiError> {
    Err(ProxyError::MissingPort.into())
}

/// Forwards the request to `127.0.0.1:{port}/{path}?{query}` and streams the
/// answer back.
pub async fn forward(mut ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let port = parse_port(ctx.param("port"))?;
    if ctx.app.listen_ports.contains(&port) {
        return Err(ProxyError::SelfLoop(port).into());
    }
    // A request execd already proxied once has come back: some service in
    // between (or a port execd cannot know) sends it round again.
    if ctx.req.headers().contains_key(PROXIED_HEADER) {
        return Err(ProxyError::Looped.into());
    }
    let target = target_uri(ctx.param("path"), ctx.req.uri().query())?;
    let peer = ctx.peer;
    let upgrade = wants_upgrade(ctx.req.headers());
    // Taken before the request is consumed; resolves once our 101 is written.
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut ctx.req));

    let (mut parts, body) = ctx.req.into_parts();
    parts.uri = target;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    prepare_request_headers(&mut parts.headers, port, Some(peer), upgrade);
    let req = Request::from_parts(parts, body);

    let stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        TcpStream::connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ProxyError::Connect { port, source }.into()),
        Err(_) => return Err(ProxyError::ConnectTimeout { port }.into()),
    };
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream { port, source })?;

    // The connection task ends with the exchange (the body is read to its end
    // or dropped), when this handler is dropped before the answer's head
    // arrives (the client went away; hyper would also notice the abandoned
    // request, the guard does not rely on it), or when the daemon shuts down.
    let app = ctx.app.clone();
    let stop = app.shutdown.child_token();
    let abandoned = stop.clone().drop_guard();
    app.tasks.spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                r = conn.with_upgrades() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, port, "proxy upstream connection ended with an error");
                    }
                }
                _ = stop.cancelled() => {}
            }
        }
    });

    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|source| ProxyError::Upstream { port, source })?;
    abandoned.disarm();

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let Some(client_upgrade) = client_upgrade else {
            stop.cancel();
            return Err(ProxyError::UnaskedUpgrade { port }.into());
        };
        let upstream_upgrade = hyper::upgrade::on(&mut resp);
        app.tasks
            .spawn(splice(client_upgrade, upstream_upgrade, stop, port));
        let (parts, _) = resp.into_parts();
        return Ok(Response::from_parts(parts, crate::server::empty()));
    }

    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    let body = body.map_err(std::io::Error::other).boxed_unsync();
    Ok(Response::from_parts(parts, body))
}

/// Copies bytes both ways between the client's and the service's upgraded
/// connections until both directions close or the daemon shuts down.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    stop: CancellationToken,
    port: u16,
) {
    let work = async {
        let (client, upstream) = tokio::try_join!(client, upstream)?;
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        tokio::io::copy_bidirectional(&mut client, &mut upstream)
            .await
            .map_err(std::io::Error::other)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        r = work => {
            if let Err(e) = r {
                tracing::debug!(error = %e, port, "proxied upgrade ended with an error");
            }
        }
        _ = stop.cancelled() => {}
    }
}

/// A port from 1 to 65535, digits only.
fn parse_port(s: &str) -> Result<u16, ProxyError> {
    if s.is_empty() {
        return Err(ProxyError::MissingPort);
    }
    match s.parse::<u16>() {
        Ok(p) if p != 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(ProxyError::InvalidPort(s.chars().take(32).collect())),
    }
}

/// The origin-form target: `/{path}` plus the query exactly as received.
fn target_uri(path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
    let s = match query {
        Some(q) => format!("/{path}?{q}"),
        None => format!("/{path}"),
    };
    s.parse::<Uri>()
        .map_err(|e| ProxyError::InvalidTarget(e.to_string()))
}

/// True for `Connection: upgrade` together with an `Upgrade` header.
fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Removes the headers that describe one hop (RFC 9110 §7.6.1), including
/// any named in `Connection`. With `keep_upgrade`, `Upgrade` survives and
/// `Connection` is reduced to `upgrade`.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("proxy-connection"),
    ] {
        h.remove(n);
    }
    let proxy_other: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for n in proxy_other {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// The headers the user's service sees: ours removed, forwarding ones set.
fn prepare_request_headers(h: &mut HeaderMap, port: u16, peer: Option<SocketAddr>, upgrade: bool) {
    strip_hop_by_hop(h, upgrade);
    // hyper answers `Expect: 100-continue` on our side when the body is read.
    h.remove(header::EXPECT);
    h.remove(TOKEN_HEADER);
    h.remove("x-forwarded-host");
    if let Ok(v) = HeaderValue::from_str(&format!("127.0.0.1:{port}")) {
        h.insert(header::HOST, v);
    }
    if let Some(peer) = peer {
        let prior: Vec<&str> = h
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        let ip = peer.ip().to_canonical().to_string();
        let xff = if prior.is_empty() {
            ip
        } else {
            format!("{}, {ip}", prior.join(", "))
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    h.insert(PROXIED_HEADER, HeaderValue::from_static("1"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(parse_port("8080").ok(), Some(8080));
        assert_eq!(parse_port("1").ok(), Some(1));
        assert_eq!(parse_port("65535").ok(), Some(65535));
        assert!(matches!(parse_port(""), Err(ProxyError::MissingPort)));
        for bad in ["0", "65536", "-1", "+80", "http", "80a", "99999999999"] {
            assert!(
                matches!(parse_port(bad), Err(ProxyError::InvalidPort(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn targets_keep_path_and_query_verbatim() {
        assert_eq!(target_uri("", None).expect("test input"), "/");
        assert_eq!(
            target_uri("a/b%20c/", Some("x=1&y=%2F")).expect("test input"),
            "/a/b%20c/?x=1&y=%2F"
        );
    }

    #[test]
    fn request_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, x-private".parse().expect("test input"),
        );
        h.insert("x-private", "1".parse().expect("test input"));
        h.insert("keep-alive", "timeout=5".parse().expect("test input"));
        h.insert(header::TE, "trailers".parse().expect("test input"));
        h.insert("proxy-foo", "1".parse().expect("test input"));
        h.insert(header::UPGRADE, "h2c".parse().expect("test input"));
        h.insert(TOKEN_HEADER, "secret".parse().expect("test input"));
        h.insert("x-forwarded-host", "elsewhere".parse().expect("test input"));
        h.insert("x-forwarded-for", "10.0.0.1".parse().expect("test input"));
        h.insert(header::HOST, "execd:44772".parse().expect("test input"));
        h.insert("x-kept", "yes".parse().expect("test input"));
        let peer: SocketAddr = "192.168.1.2:5555".parse().expect("test input");
        prepare_request_headers(&mut h, 3000, Some(peer), false);
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "te",
            "proxy-foo",
            "upgrade",
            TOKEN_HEADER,
            "x-forwarded-host",
        ] {
            assert!(!h.contains_key(gone), "{gone} kept");
        }
        assert_eq!(h["host"], "127.0.0.1:3000");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 192.168.1.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-kept"], "yes");
        assert_eq!(h[PROXIED_HEADER], "1");
    }

    #[test]
    fn upgrade_headers_survive_for_upgrades() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, Upgrade".parse().expect("test input"),
        );
        h.insert(header::UPGRADE, "websocket".parse().expect("test input"));
        h.insert("sec-websocket-key", "k".parse().expect("test input"));
        assert!(wants_upgrade(&h));
        prepare_request_headers(&mut h, 1, None, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["sec-websocket-key"], "k");
        assert!(!h.contains_key("x-forwarded-for"));

        let mut plain = HeaderMap::new();
        plain.insert(header::UPGRADE, "websocket".parse().expect("test input"));
        assert!(!wants_upgrade(&plain));
    }
}
