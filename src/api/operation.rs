//! `X-EXECD-OPERATION-ID` on creation routes, and `GET /operations/{id}`
//! (see `crate::operations`).

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::api::{App, Ctx};
use crate::date::rfc3339;
use crate::operations::{fingerprint, Begin, Kind, OpError, Pending, State};
use crate::server::{json_response, ApiError, Body};

pub const HEADER: &str = "x-execd-operation-id";
/// On an answer that is a retry's: the resource was made by an earlier attempt.
pub const REPLAYED: &str = "x-execd-operation-replayed";

/// The request's operation id, if it has one.
pub fn id(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get(HEADER) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(s) if crate::operations::valid_id(s) => Ok(Some(s.to_string())),
            _ => Err(OpError::InvalidId.into()),
        },
    }
}

/// What a creation handler does next.
pub enum Step {
    /// Create; complete the guard (if any) with the new resource's id.
    Create(Option<Pending>),
    /// Answer with the resource an earlier attempt made.
    Replay(String),
}

/// Looks the operation up (or begins it). Call after the request is known
/// valid, so an invalid one does not take the id. A retry that arrives
/// while the first attempt is still creating waits for it: then it replays
/// what was made, or (the first attempt failed, the id is free) creates.
pub async fn begin(
    app: &App,
    op: Option<&str>,
    kind: Kind,
    scope: &str,
    body: &Bytes,
) -> Result<Step, ApiError> {
    let Some(op) = op else {
        return Ok(Step::Create(None));
    };
    let fp = fingerprint(kind, scope, body);
    loop {
        match app.operations.begin(op, kind, fp)? {
            Begin::New(p) => return Ok(Step::Create(Some(p))),
            Begin::Existing(_, resource) => return Ok(Step::Replay(resource)),
            Begin::InFlight(settled) => settled.wait().await,
        }
    }
}

/// Marks a response as a retry's.
pub fn replayed(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    resp
}

/// `GET /operations/{id}`: `{operationId, kind, state, resourceId?, createdAt}`.
pub async fn get(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let op = ctx.app.operations.get(ctx.param("id"))?;
    let (state, resource) = match &op.state {
        State::Pending => ("pending", None),
        State::Created(r) => ("created", Some(r.clone())),
    };
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "operationId": op.id,
            "kind": op.kind.as_str(),
            "state": state,
            "resourceId": resource,
            "createdAt": rfc3339(op.created_at),
        }),
    ))
}
