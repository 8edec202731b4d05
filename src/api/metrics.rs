//! `/metrics` and `/metrics/watch`: the sandbox's CPU and memory (cgroup-aware),
//! plus execd's own figures as extra fields.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::Value;

use super::wire::now_ms;
use crate::server::{json_response, sse, ApiError, App, Body, Ctx};

fn reading(app: &App) -> Value {
    let s = app.metrics.snapshot();
    serde_json::json!({
        "cpu_count": s.cpu_count,
        "cpu_used_pct": s.cpu_used_pct,
        "mem_total_mib": s.mem_total_mib,
        "mem_used_mib": s.mem_used_mib,
        "timestamp": now_ms(),
        "source": s.source,
        "execd_rss_kib": crate::metrics::self_rss_kib(),
        "running_commands": app.engine.running(),
        "open_streams": sse::open_streams(),
        "output_memory_bytes": app.engine.output_memory(),
        "uptime_ms": app.started.elapsed().as_millis() as u64,
    })
}

/// `GET /metrics`: answers at once; CPU usage is averaged since the previous call.
pub async fn get(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    Ok(json_response(StatusCode::OK, &reading(&ctx.app)))
}

/// `GET /metrics/watch`: the same reading every second, one JSON object per
/// line (upstream's framing), until the client goes away.
pub async fn watch(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    let app = ctx.app.clone();
    let (tx, body) = sse::channel(2);
    let stop = app.shutdown.clone();
    let tasks = app.tasks.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tx.closed() => return,
                _ = stop.cancelled() => return,
            }
            let mut line = reading(&app).to_string();
            line.push('\n');
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    Ok(sse::response(body))
}
