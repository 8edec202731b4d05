//! `/metrics` and `/metrics/watch`: the sandbox's CPU and memory (cgroup-aware),
//! plus execd's own figures as extra fields.

use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::Value;

use crate::api::{App, Ctx};
use crate::date::now_ms;
use crate::server::{json_response, sse, ApiError, Body};

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

/// Whether the client asked for the Prometheus text format: `?format=prometheus`,
/// or an `Accept` naming `text/plain` or OpenMetrics (what scrapers send).
/// JSON stays the default (the SDK's shape).
fn wants_prometheus(ctx: &Ctx) -> Result<bool, ApiError> {
    match ctx.query().get("format") {
        Some("prometheus") => return Ok(true),
        Some("json") => return Ok(false),
        None | Some("") => {}
        Some(f) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_QUERY",
                format!("format must be json or prometheus, got {f:?}"),
            ))
        }
    }
    Ok(ctx
        .req
        .headers()
        .get_all(http::header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/plain") || v.contains("application/openmetrics-text")))
}

/// A label value, escaped as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus text exposition (format 0.0.4).
fn prometheus(app: &App) -> String {
    use std::fmt::Write;
    let s = app.metrics.snapshot();
    let mut out = String::with_capacity(4096);
    let mut gauge = |name: &str, help: &str, v: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    gauge(
        "execd_sandbox_cpu_count",
        "CPUs the sandbox may use (cgroup quota or online CPUs).",
        s.cpu_count,
    );
    gauge(
        "execd_sandbox_cpu_used_percent",
        "CPU use of the sandbox since the previous reading, percent of one CPU times cpu_count.",
        s.cpu_used_pct,
    );
    gauge(
        "execd_sandbox_memory_total_bytes",
        "Memory the sandbox may use.",
        s.mem_total_mib * 1048576.0,
    );
    gauge(
        "execd_sandbox_memory_used_bytes",
        "Memory the sandbox uses.",
        s.mem_used_mib * 1048576.0,
    );
    gauge(
        "execd_resident_memory_bytes",
        "execd's own resident set size.",
        (crate::metrics::self_rss_kib() * 1024) as f64,
    );
    gauge(
        "execd_running_commands",
        "Commands running now.",
        app.engine.running() as f64,
    );
    gauge(
        "execd_open_streams",
        "Streaming response bodies open now.",
        sse::open_streams() as f64,
    );
    gauge(
        "execd_output_memory_bytes",
        "Command output held in memory.",
        app.engine.output_memory() as f64,
    );
    gauge(
        "execd_spill_bytes",
        "Command output spilled to the data directory.",
        app.engine.spilled_bytes() as f64,
    );
    gauge(
        "execd_operations",
        "Live X-EXECD-OPERATION-ID ids.",
        app.operations.live() as f64,
    );
    gauge(
        "execd_uptime_seconds",
        "Time since execd started.",
        app.started.elapsed().as_secs_f64(),
    );
    if let Some(b) = app.runtime.current() {
        let _ = writeln!(
            out,
            "# HELP execd_runtime_info The runtime binding (POST /internal/init).\n# TYPE execd_runtime_info gauge\nexecd_runtime_info{{sandbox_id=\"{}\",generation=\"{}\"}} 1",
            label(&b.sandbox_id),
            b.generation
        );
        if !b.attributes.is_empty() {
            let _ = writeln!(out, "# HELP execd_runtime_attribute The binding's telemetry attributes.\n# TYPE execd_runtime_attribute gauge");
            for (k, v) in &b.attributes {
                let _ = writeln!(
                    out,
                    "execd_runtime_attribute{{key=\"{}\",value=\"{}\"}} 1",
                    label(k),
                    label(v)
                );
            }
        }
    }
    crate::counters::render(&mut out);
    out
}

/// `GET /metrics`: answers at once; CPU usage is averaged since the previous
/// call. JSON, or the Prometheus text format on request.
pub async fn get(ctx: Ctx) -> Result<Response<Body>, ApiError> {
    if wants_prometheus(&ctx)? {
        let mut resp = Response::new(crate::server::full(prometheus(&ctx.app)));
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        resp.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        return Ok(resp);
    }
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
