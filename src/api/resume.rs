//! `GET /command/{id}/resume`: a record's events again, from an `eid` on,
//! whether the record is a command's (`api::command`'s event stream) or a
//! code run's (`api::code`'s). Beside both, so that neither imports the
//! other's resume: `code` builds on `command`, never the reverse.

use http::{HeaderValue, Response, StatusCode};

use super::code;
use super::command::{event_stream, StreamMode};
use crate::api::Ctx;
use crate::server::{sse, ApiError, Body};

/// `GET /command/{id}/resume?after_eid=N`: every event after N (all of them,
/// `init` included, without N), then live events until the terminal one.
/// 410 when events after N are no longer retained.
pub async fn resume(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let cmd = ctx.app.engine.get(ctx.param("id"))?;
    let from_eid = match ctx.query().get("after_eid") {
        None | Some("") => 0,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n < 0 => 0,
            Ok(n) => n as u64 + 1,
            Err(_) => {
                return Err(ApiError::invalid_body(format!(
                    "after_eid must be an integer, got {v:?}"
                )))
            }
        },
    };
    let oldest = cmd.log.oldest_eid();
    if from_eid > 0 && from_eid < oldest {
        let mut resp = ApiError::new(
            StatusCode::GONE,
            "EVENTS_EXPIRED",
            format!(
                "events after {} are no longer retained; the oldest is {oldest}",
                from_eid - 1
            ),
        )
        .into_response();
        resp.headers_mut()
            .insert("execd-oldest-eid", HeaderValue::from(oldest));
        return Ok(resp);
    }
    let ping = ctx.app.config.ping_interval;
    // A code run's record: its own events (results, errors) and terminal.
    if let Some(run) = ctx.app.kernels.run(&cmd.id) {
        return Ok(sse::response(code::stream(run, ping, from_eid)));
    }
    Ok(sse::response(event_stream(
        cmd,
        ping,
        StreamMode::Follow { from_eid },
        None,
    )))
}
