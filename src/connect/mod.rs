//! A small server side of the Connect RPC protocol (connectrpc.com), over
//! hyper and prost: what E2B's envd speaks and its SDKs send.
//!
//! - Unary calls: `POST /<package>.<Service>/<Method>` with
//!   `application/proto` or `application/json`; the body is one bare message.
//!   A success is 200 with one bare message; an error is a non-200 status
//!   with `{"code","message"}` as JSON.
//! - Streaming calls (server, client or both): `application/connect+proto`
//!   or `application/connect+json`; both bodies are envelopes (1 flag byte,
//!   a 4-byte big-endian length, the message). The response's last envelope
//!   has flag 0x02 and holds `{}` or `{"error":{"code","message"}}`; the
//!   status stays 200.
//! - Compression is refused (no `Content-Encoding`/`Connect-Content-Encoding`
//!   but `identity`); the SDKs send none.
//!
//! The JSON codec is proto3's JSON mapping for the messages that implement
//! [`ToJson`]/[`FromJson`] (see [`json`]). Works the same over HTTP/1.1 and
//! HTTP/2: nothing here depends on trailers.

pub mod json;

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;

pub use json::{FromJson, ToJson};

/// The body of every response.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>;

/// The largest request message (and envelope) accepted.
pub const MAX_MESSAGE: usize = 8 << 20;

/// Envelope flag: the message is compressed (refused).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// Envelope flag: the end-of-stream message.
pub const FLAG_END: u8 = 0x02;

/// Connect's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (Connect's table).
    pub fn http_status(self) -> StatusCode {
        let n = match self {
            Code::Canceled => 499,
            Code::Unknown | Code::Internal | Code::DataLoss => 500,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
            Code::DeadlineExceeded => 504,
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::PermissionDenied => 403,
            Code::ResourceExhausted => 429,
            Code::Unimplemented => 501,
            Code::Unavailable => 503,
            Code::Unauthenticated => 401,
        };
        StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// A Connect error: a code and a message for people.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct Error {
    pub code: Code,
    pub message: String,
}

impl Error {
    pub fn new(code: Code, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Code::InvalidArgument, message)
    }
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Code::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Error {
        Error::new(Code::Internal, message)
    }
    pub fn unimplemented(message: impl Into<String>) -> Error {
        Error::new(Code::Unimplemented, message)
    }

    /// `{"code","message"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

/// The message encoding of a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

/// How a call is framed and encoded, from its content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Protocol {
    pub codec: Codec,
    /// Envelopes (`application/connect+…`) rather than a bare message.
    pub streaming: bool,
}

impl Protocol {
    /// The protocol of a `content-type`, or `None` for one Connect does not
    /// define (answered 415 by [`unsupported_media_type`]).
    pub fn from_content_type(ct: &str) -> Option<Protocol> {
        let base = ct.split(';').next().unwrap_or("").trim();
        let (codec, streaming) = match base.to_ascii_lowercase().as_str() {
            "application/proto" => (Codec::Proto, false),
            "application/json" => (Codec::Json, false),
            "application/connect+proto" => (Codec::Proto, true),
            "application/connect+json" => (Codec::Json, true),
            _ => return None,
        };
        Some(Protocol { codec, streaming })
    }

    /// The protocol of a request, from its headers.
    pub fn of(headers: &HeaderMap) -> Option<Protocol> {
        Protocol::from_content_type(headers.get(header::CONTENT_TYPE)?.to_str().ok()?)
    }

    /// The response's content type.
    pub fn content_type(self) -> &'static str {
        match (self.codec, self.streaming) {
            (Codec::Proto, false) => "application/proto",
            (Codec::Json, false) => "application/json",
            (Codec::Proto, true) => "application/connect+proto",
            (Codec::Json, true) => "application/connect+json",
        }
    }
}

/// Whether the request declares a compression other than `identity`
/// (refused: [`check_encoding`]).
pub fn check_encoding(headers: &HeaderMap) -> Result<(), Error> {
    for name in ["content-encoding", "connect-content-encoding"] {
        if let Some(v) = headers.get(name) {
            let v = v.to_str().unwrap_or("?").trim();
            if !v.is_empty() && !v.eq_ignore_ascii_case("identity") {
                return Err(Error::unimplemented(format!(
                    "{name} {v:?} is not supported; send messages uncompressed"
                )));
            }
        }
    }
    Ok(())
}

/// `Connect-Timeout-Ms`, if given and valid.
pub fn timeout(headers: &HeaderMap) -> Option<std::time::Duration> {
    let v = headers.get("connect-timeout-ms")?.to_str().ok()?;
    if v.is_empty() || v.len() > 10 {
        return None;
    }
    v.parse::<u64>().ok().map(std::time::Duration::from_millis)
}

/// Decodes one message.
pub fn decode<M: prost::Message + Default + FromJson>(
    codec: Codec,
    data: &[u8],
) -> Result<M, Error> {
    match codec {
        Codec::Proto => {
            M::decode(data).map_err(|e| Error::invalid(format!("invalid protobuf message: {e}")))
        }
        Codec::Json => {
            // An empty body is the empty message, as connect-go accepts.
            if data.iter().all(u8::is_ascii_whitespace) {
                return M::from_json(&serde_json::Value::Object(Default::default()))
                    .map_err(Error::invalid);
            }
            let v: serde_json::Value = serde_json::from_slice(data)
                .map_err(|e| Error::invalid(format!("invalid JSON message: {e}")))?;
            M::from_json(&v).map_err(Error::invalid)
        }
    }
}

/// Encodes one message.
pub fn encode<M: prost::Message + ToJson>(codec: Codec, m: &M) -> Bytes {
    match codec {
        Codec::Proto => Bytes::from(m.encode_to_vec()),
        Codec::Json => Bytes::from(m.to_json().to_string()),
    }
}

/// One envelope around `data`.
pub fn envelope(flags: u8, data: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + data.len());
    b.put_u8(flags);
    b.put_u32(u32::try_from(data.len()).unwrap_or(u32::MAX));
    b.put_slice(data);
    b.freeze()
}

/// The end-of-stream envelope: `{}` or `{"error":{…}}`.
pub fn end_envelope(err: Option<&Error>) -> Bytes {
    let v = match err {
        Some(e) => serde_json::json!({ "error": e.to_json() }),
        None => serde_json::json!({}),
    };
    envelope(FLAG_END, v.to_string().as_bytes())
}

fn full(b: Bytes) -> Body {
    http_body_util::Full::new(b)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn with_type(status: StatusCode, ct: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r
}

/// A unary error: its status, and `{"code","message"}`.
pub fn unary_error(e: &Error) -> Response<Body> {
    with_type(
        e.code.http_status(),
        "application/json",
        full(Bytes::from(e.to_json().to_string())),
    )
}

/// An error before any message, in the call's own framing: a unary error,
/// or a stream holding only the end envelope.
pub fn error_response(p: Protocol, e: &Error) -> Response<Body> {
    if p.streaming {
        with_type(
            StatusCode::OK,
            p.content_type(),
            full(end_envelope(Some(e))),
        )
    } else {
        unary_error(e)
    }
}

/// 415 for a content type Connect does not define.
pub fn unsupported_media_type() -> Response<Body> {
    let mut r = with_type(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "text/plain",
        full(Bytes::from_static(
            b"Connect RPC: use application/proto, application/json, application/connect+proto or application/connect+json\n",
        )),
    );
    r.headers_mut().insert(
        header::ACCEPT,
        HeaderValue::from_static(
            "application/proto, application/json, application/connect+proto, application/connect+json",
        ),
    );
    r
}

/// The answer to a unary call (or the single reply of a client stream).
pub fn unary_response<M: prost::Message + ToJson>(
    p: Protocol,
    r: Result<M, Error>,
) -> Response<Body> {
    match (r, p.streaming) {
        (Ok(m), false) => with_type(StatusCode::OK, p.content_type(), full(encode(p.codec, &m))),
        (Err(e), false) => unary_error(&e),
        (Ok(m), true) => {
            let mut b = BytesMut::new();
            b.extend_from_slice(&envelope(0, &encode(p.codec, &m)));
            b.extend_from_slice(&end_envelope(None));
            with_type(StatusCode::OK, p.content_type(), full(b.freeze()))
        }
        (Err(e), true) => error_response(p, &e),
    }
}

/// A unary call: reads the request message, runs `f`, answers.
pub async fn unary<M, R, F, Fut, B>(p: Protocol, req: http::Request<B>, f: F) -> Response<Body>
where
    M: prost::Message + Default + FromJson,
    R: prost::Message + ToJson,
    F: FnOnce(M) -> Fut,
    Fut: std::future::Future<Output = Result<R, Error>>,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let r = match read_request::<M, _>(p, req.into_body()).await {
        Ok(m) => f(m).await,
        Err(e) => Err(e),
    };
    unary_response(p, r)
}

/// Reads the one request message of a unary or server-streaming call.
pub async fn read_request<M, B>(p: Protocol, body: B) -> Result<M, Error>
where
    M: prost::Message + Default + FromJson,
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let data = read_all(body, MAX_MESSAGE + 5).await?;
    if !p.streaming {
        return decode(p.codec, &data);
    }
    let mut env = Envelopes::new(http_body_util::Full::new(data));
    let first = match env.next().await {
        Some(r) => r?,
        None => return Err(Error::invalid("the request holds no message")),
    };
    if env.next().await.is_some() {
        return Err(Error::invalid("a unary request holds exactly one message"));
    }
    decode(p.codec, &first)
}

/// A whole body, at most `limit` bytes.
async fn read_all<B>(mut body: B, limit: usize) -> Result<Bytes, Error>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Error::new(Code::Canceled, format!("request body: {e}")))?;
        if let Ok(d) = frame.into_data() {
            if buf.len() + d.len() > limit {
                return Err(Error::new(
                    Code::ResourceExhausted,
                    format!("message larger than {limit} bytes"),
                ));
            }
            buf.extend_from_slice(&d);
        }
    }
    Ok(buf.freeze())
}

/// The envelopes of a request body, read as they arrive (client streams).
pub struct Envelopes<B> {
    body: B,
    buf: BytesMut,
    eof: bool,
}

impl<B> Envelopes<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B) -> Envelopes<B> {
        Envelopes {
            body,
            buf: BytesMut::new(),
            eof: false,
        }
    }

    /// The next message's bytes; `None` at the end of the body (or at a
    /// client's end-stream envelope).
    pub async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_MESSAGE {
                    return Some(Err(Error::new(
                        Code::ResourceExhausted,
                        format!("message of {len} bytes: at most {MAX_MESSAGE}"),
                    )));
                }
                if self.buf.len() >= 5 + len {
                    self.buf.advance(5);
                    let data = self.buf.split_to(len).freeze();
                    if flags & FLAG_COMPRESSED != 0 {
                        return Some(Err(Error::unimplemented(
                            "compressed messages are not supported",
                        )));
                    }
                    if flags & FLAG_END != 0 {
                        return None;
                    }
                    return Some(Ok(data));
                }
            }
            if self.eof {
                return (!self.buf.is_empty())
                    .then(|| Err(Error::invalid("the request ends inside an envelope")));
            }
            match self.body.frame().await {
                None => self.eof = true,
                Some(Err(e)) => {
                    self.eof = true;
                    self.buf.clear();
                    return Some(Err(Error::new(
                        Code::Canceled,
                        format!("request body: {e}"),
                    )));
                }
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}

/// Messages (or a final error) for a server stream.
pub type Sender<M> = tokio::sync::mpsc::Sender<Result<M, Error>>;

/// The response of a server stream: a message envelope for every `Ok` the
/// channel yields, then the end envelope (`{}` when the senders are gone,
/// the error after an `Err`).
pub fn stream_response<M>(
    p: Protocol,
    mut rx: tokio::sync::mpsc::Receiver<Result<M, Error>>,
) -> Response<Body>
where
    M: prost::Message + ToJson + Send + 'static,
{
    stream_from(p, futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// The response of a server stream read from `messages` as the client
/// takes them, with no task in between: dropping the response (the client
/// gone) drops the stream. Ends as [`stream_response`] does.
pub fn stream_from<M, S>(p: Protocol, messages: S) -> Response<Body>
where
    M: prost::Message + ToJson + Send + 'static,
    S: futures_core::Stream<Item = Result<M, Error>> + Send + 'static,
{
    let body = StreamBody {
        messages: Box::pin(messages),
        codec: p.codec,
        done: false,
    };
    let ct = if p.codec == Codec::Json {
        "application/connect+json"
    } else {
        "application/connect+proto"
    };
    with_type(StatusCode::OK, ct, body.boxed_unsync())
}

struct StreamBody<S> {
    messages: Pin<Box<S>>,
    codec: Codec,
    done: bool,
}

impl<M, S> HttpBody for StreamBody<S>
where
    M: prost::Message + ToJson,
    S: futures_core::Stream<Item = Result<M, Error>>,
{
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let out = match std::task::ready!(this.messages.as_mut().poll_next(cx)) {
            Some(Ok(m)) => envelope(0, &encode(this.codec, &m)),
            Some(Err(e)) => {
                this.done = true;
                end_envelope(Some(&e))
            }
            None => {
                this.done = true;
                end_envelope(None)
            }
        };
        Poll::Ready(Some(Ok(Frame::data(out))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message for the tests: `string name = 1; uint32 n = 2;`.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Msg {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(uint32, tag = "2")]
        n: u32,
    }

    impl ToJson for Msg {
        fn to_json(&self) -> serde_json::Value {
            serde_json::json!({"name": self.name, "n": self.n})
        }
    }

    impl FromJson for Msg {
        fn from_json(v: &serde_json::Value) -> Result<Self, String> {
            let o = json::object(v)?;
            Ok(Msg {
                name: json::string(o, "name", "name")?.unwrap_or_default(),
                n: json::uint32(o, "n", "n")?.unwrap_or_default(),
            })
        }
    }

    #[test]
    fn content_types() {
        let p = Protocol::from_content_type("application/connect+json; charset=utf-8").unwrap();
        assert_eq!((p.codec, p.streaming), (Codec::Json, true));
        let p = Protocol::from_content_type("Application/Proto").unwrap();
        assert_eq!((p.codec, p.streaming), (Codec::Proto, false));
        assert!(Protocol::from_content_type("application/grpc").is_none());
        assert!(Protocol::from_content_type("text/plain").is_none());
    }

    #[test]
    fn codes_map_to_connect_statuses() {
        assert_eq!(Code::NotFound.http_status().as_u16(), 404);
        assert_eq!(Code::Canceled.http_status().as_u16(), 499);
        assert_eq!(Code::ResourceExhausted.http_status().as_u16(), 429);
        assert_eq!(Code::Unimplemented.http_status().as_u16(), 501);
        assert_eq!(Code::FailedPrecondition.as_str(), "failed_precondition");
    }

    #[test]
    fn both_codecs_round_trip() {
        let m = Msg {
            name: "x".into(),
            n: 7,
        };
        for c in [Codec::Proto, Codec::Json] {
            assert_eq!(decode::<Msg>(c, &encode(c, &m)).unwrap(), m);
        }
        // Empty JSON body: the empty message.
        assert_eq!(decode::<Msg>(Codec::Json, b"").unwrap(), Msg::default());
        let e = decode::<Msg>(Codec::Json, b"{\"n\":\"x\"}").unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
        let e = decode::<Msg>(Codec::Proto, b"\xff\xff").unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[test]
    fn envelopes_and_end_message() {
        let e = envelope(0, b"abc");
        assert_eq!(&e[..], b"\x00\x00\x00\x00\x03abc");
        let end = end_envelope(Some(&Error::not_found("gone")));
        assert_eq!(end[0], FLAG_END);
        let v: serde_json::Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
        assert_eq!(v["error"]["message"], "gone");
        assert_eq!(&end_envelope(None)[5..], b"{}");
    }

    fn body(
        chunks: Vec<&'static [u8]>,
    ) -> impl HttpBody<Data = Bytes, Error = std::io::Error> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, std::io::Error>> = chunks
            .into_iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        http_body_util::StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn envelopes_split_across_frames() {
        let mut env = Envelopes::new(body(vec![
            b"\x00\x00\x00",
            b"\x00\x02a",
            b"b\x00\x00\x00\x00\x00",
        ]));
        assert_eq!(&env.next().await.unwrap().unwrap()[..], b"ab");
        assert_eq!(&env.next().await.unwrap().unwrap()[..], b"");
        assert!(env.next().await.is_none());
        // Truncated inside an envelope.
        let mut env = Envelopes::new(body(vec![b"\x00\x00\x00\x00\x05ab"]));
        assert_eq!(
            env.next().await.unwrap().unwrap_err().code,
            Code::InvalidArgument
        );
        // Compressed.
        let mut env = Envelopes::new(body(vec![b"\x01\x00\x00\x00\x00"]));
        assert_eq!(
            env.next().await.unwrap().unwrap_err().code,
            Code::Unimplemented
        );
        // Too large: refused before it is buffered.
        let mut env = Envelopes::new(body(vec![b"\x00\xff\xff\xff\xff"]));
        assert_eq!(
            env.next().await.unwrap().unwrap_err().code,
            Code::ResourceExhausted
        );
    }

    #[tokio::test]
    async fn requests_in_both_framings() {
        let p = Protocol::from_content_type("application/json").unwrap();
        let m: Msg = read_request(p, body(vec![b"{\"name\":\"a\"}"]))
            .await
            .unwrap();
        assert_eq!(m.name, "a");
        let p = Protocol::from_content_type("application/connect+json").unwrap();
        let m: Msg = read_request(p, body(vec![b"\x00\x00\x00\x00\x07{\"n\":3}"]))
            .await
            .unwrap();
        assert_eq!(m.n, 3);
        let e = read_request::<Msg, _>(p, body(vec![])).await.unwrap_err();
        assert_eq!(e.code, Code::InvalidArgument);
    }

    #[tokio::test]
    async fn stream_ends_with_end_envelope() {
        let p = Protocol::from_content_type("application/connect+json").unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(Ok(Msg {
            name: "a".into(),
            n: 1,
        }))
        .await
        .unwrap();
        tx.send(Err(Error::internal("boom"))).await.unwrap();
        drop(tx);
        let resp = stream_response(p, rx);
        assert_eq!(resp.status(), 200);
        let all = resp.into_body().collect().await.unwrap().to_bytes();
        let mut env = Envelopes::new(http_body_util::Full::new(all.clone()));
        let first = env.next().await.unwrap().unwrap();
        assert_eq!(decode::<Msg>(Codec::Json, &first).unwrap().name, "a");
        // The end envelope: Envelopes stops there, so look at it directly.
        let rest = &all[5 + first.len()..];
        assert_eq!(rest[0], FLAG_END);
        let v: serde_json::Value = serde_json::from_slice(&rest[5..]).unwrap();
        assert_eq!(v["error"]["code"], "internal");
    }
}
