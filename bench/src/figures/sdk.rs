//! Through clients: `commands.run("echo hi")` with the OpenSandbox Python
//! SDK against the same request sent by curl, and with the `e2b` Python SDK
//! (on `--e2b-port`) against the OpenSandbox SDK, alternating in one run on
//! one execd (`bench/code/sdk_rtt.py`); and isolated sessions: creation
//! time, and the first run's round trip in a fresh session against a plain
//! `/command` `true`, alternating.

use std::path::PathBuf;
use std::time::Instant;

use serde_json::{json, Value};

use super::{blocking, Run};
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::stats::{self, fmt_num};

pub async fn figures(run: &Run) -> Vec<Figure> {
    let sdk = Figure::new(
        "sdk_echo_ms",
        "SDK `commands.run(\"echo hi\")`",
        "ms",
        Budget::None,
    );
    let e2b = Figure::new(
        "sdk_e2b_echo_ms",
        "e2b SDK `commands.run(\"echo hi\")`",
        "ms",
        Budget::None,
    );
    let figs_sdk = match sdk_venv() {
        Err(why) => vec![sdk.not_applicable(&why), e2b.not_applicable(why)],
        Ok(python) => match through_sdk(run, python).await {
            Ok((a, Some(b))) => vec![sdk.with(Ok(a)), e2b.with(Ok(b))],
            Ok((a, None)) => vec![
                sdk.with(Ok(a)),
                e2b.not_applicable("the e2b package is not in the SDK venv"),
            ],
            Err(e) => vec![sdk.error(&e), e2b.error(e)],
        },
    };
    let mut figs = figs_sdk;
    figs.extend(isolated(run).await);
    figs
}

/// The SDK venv's python: `EXECD_SDK_VENV`, else `target/sdk-venv` (made by
/// `tests/sdk/run.sh`).
fn sdk_venv() -> std::result::Result<PathBuf, String> {
    let venv = std::env::var_os("EXECD_SDK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::server::target_dir().join("sdk-venv"));
    let python = venv.join("bin/python");
    if !python.is_file() {
        return Err(format!(
            "no SDK venv at {} (set EXECD_SDK_VENV; tests/sdk/run.sh makes one)",
            venv.display()
        ));
    }
    if super::ping::which("curl").is_none() {
        return Err("curl not installed".into());
    }
    Ok(python)
}

/// A port free now (for `--e2b-port`, which prints its address on a second
/// line the harness does not read).
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

/// The OpenSandbox SDK against curl; the e2b SDK against the OpenSandbox
/// SDK (`None` without the e2b package). Both SDKs talk to one execd of
/// their own, with `--e2b-port`.
async fn through_sdk(run: &Run, python: PathBuf) -> Result<(Measured, Option<Measured>)> {
    let n = if run.plan.smoke { 5 } else { 100 };
    let e2b_port = free_port()?;
    let mut daemon = std::process::Command::new(&run.bin);
    daemon.args(["--port", "0", "--bind", "127.0.0.1", "--e2b-port"]);
    daemon.arg(e2b_port.to_string());
    let execd = crate::server::Server::start(daemon)?;
    let script = crate::server::workspace_root().join("bench/code/sdk_rtt.py");
    let mut cmd = std::process::Command::new(python);
    cmd.arg(script)
        .arg(execd.addr.to_string())
        .arg(n.to_string())
        .arg(format!("127.0.0.1:{e2b_port}"))
        .stdin(std::process::Stdio::null());
    let out = blocking(move || cmd.output().map_err(|e| format!("sdk_rtt.py: {e}"))).await?;
    drop(execd);
    if !out.status.success() {
        return Err(format!(
            "sdk_rtt.py: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("sdk_rtt.py printed no JSON: {e}"))?;
    let ms = |k: &str| -> Vec<f64> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_f64())
                    .map(|s| s * 1e3)
                    .collect()
            })
            .unwrap_or_default()
    };
    let (sdk, wall, req) = (ms("sdk"), ms("curl_wall"), ms("curl_request"));
    let (e2b, e2b_req, login) = (ms("e2b"), ms("curl_e2b_request"), ms("login_shell"));
    let med = |x: &[f64]| stats::median(x).unwrap_or(f64::NAN);
    let opensandbox = Measured {
        value: med(&sdk),
        baseline: stats::median(&req),
        p95: stats::p95(&sdk),
        note: format!(
            "{n} alternating rounds after 5 warm-up; baseline: curl's own time_total for the \
             same POST /command (p95 {} ms); curl as a process, start-up included, {} ms; \
             SDK overhead over curl's request {} ms",
            fmt_num(stats::p95(&req).unwrap_or(f64::NAN)),
            fmt_num(med(&wall)),
            fmt_num(med(&sdk) - med(&req))
        ),
    };
    let e2b = (!e2b.is_empty()).then(|| Measured {
        value: med(&e2b),
        baseline: stats::median(&sdk),
        p95: stats::p95(&e2b),
        note: format!(
            "AsyncSandbox.commands.run on --e2b-port (debug mode), alternating with the \
             OpenSandbox SDK (baseline) in the same {n} rounds on the same execd; the SDK \
             runs `bash -l -c`, HOME an empty directory (a login shell spawned directly: {} ms); \
             curl's time_total for envd's POST /process.Process/Start (one Connect JSON \
             envelope, read to the end of the stream) {} ms (p95 {}) against {} ms for POST \
             /command; e2b SDK overhead over its curl request {} ms",
            fmt_num(med(&login)),
            fmt_num(med(&e2b_req)),
            fmt_num(stats::p95(&e2b_req).unwrap_or(f64::NAN)),
            fmt_num(med(&req)),
            fmt_num(med(&e2b) - med(&e2b_req))
        ),
    });
    Ok((opensandbox, e2b))
}

/// Session creation time, and a fresh session's first run of `true` against
/// a plain `/command` `true`.
async fn isolated(run: &Run) -> Vec<Figure> {
    let create = Figure::new(
        "isolated_create_ms",
        "isolated session creation",
        "ms",
        Budget::None,
    );
    let first = Figure::new(
        "isolated_first_run_ms",
        "isolated session: first `true` round trip",
        "ms",
        Budget::None,
    );
    match isolated_available(run).await {
        Ok(None) => {}
        Ok(Some(why)) => return vec![create.not_applicable(&why), first.not_applicable(why)],
        Err(e) => return vec![create.error(&e), first.error(e)],
    }
    match sessions(run).await {
        Ok((c, f)) => vec![create.with(Ok(c)), first.with(Ok(f))],
        Err(e) => vec![create.error(&e), first.error(e)],
    }
}

/// `None` when isolated sessions work here, else why not.
async fn isolated_available(run: &Run) -> Result<Option<String>> {
    let mut conn = client::connect(run.execd.addr).await?;
    let resp = client::send(&mut conn, client::get("/v1/isolated/capabilities")).await?;
    if resp.status() == http::StatusCode::NOT_FOUND {
        return Ok(Some(crate::report::ROUTE_MISSING.into()));
    }
    let body = client::collect(client::expect_ok(resp, "capabilities").await?).await?;
    let caps: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    Ok((caps["available"] != true).then(|| {
        format!(
            "isolation unavailable: {}",
            caps["message"].as_str().unwrap_or("no reason given")
        )
    }))
}

async fn sessions(run: &Run) -> Result<(Measured, Measured)> {
    let n = if run.plan.smoke { 3 } else { 20 };
    let ws = run.scratch.join("isolated-ws");
    std::fs::create_dir_all(&ws).map_err(|e| format!("{ws:?}: {e}"))?;
    std::fs::write(ws.join("keep.txt"), "lower\n").map_err(|e| e.to_string())?;
    let mut conn = client::connect(run.execd.addr).await?;
    let body = json!({ "workspace": { "path": ws, "mode": "overlay" } });
    let (mut created, mut firsts, mut plain) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let t = Instant::now();
        let resp =
            client::send(&mut conn, client::post_json("/v1/isolated/session", &body)).await?;
        let status = resp.status();
        let raw = client::collect(resp.into_body()).await?;
        created.push(t.elapsed().as_secs_f64() * 1e3);
        if status != http::StatusCode::CREATED {
            return Err(format!(
                "POST /v1/isolated/session: HTTP {status}: {}",
                String::from_utf8_lossy(&raw)
            ));
        }
        let v: Value = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
        let sid = v["session_id"].as_str().ok_or("no session_id")?.to_string();
        let path = format!("/v1/isolated/session/{sid}/run");
        let r =
            client::run_stream(&mut conn, &path, &json!({ "code": "true" }), "true", |_| {}).await;
        let del = client::request_delete(&format!("/v1/isolated/session/{sid}"));
        let gone = client::send(&mut conn, del).await?;
        client::drain(gone.into_body()).await?;
        firsts.push(r?.total.as_secs_f64() * 1e3);
        let r = client::run_command(&mut conn, "true", |_| {}).await?;
        plain.push(r.total.as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_dir_all(&ws);
    let create = Measured {
        value: stats::median(&created).unwrap_or(f64::NAN),
        baseline: None,
        p95: stats::p95(&created),
        note: format!(
            "{n} sessions, one overlay workspace each, each deleted after its run: {} ms",
            stats::range(&created, 1)
        ),
    };
    let first = Measured {
        value: stats::median(&firsts).unwrap_or(f64::NAN),
        baseline: stats::median(&plain),
        p95: stats::p95(&firsts),
        note: format!(
            "POST …/run {{\"code\":\"true\"}} to the terminal event, the session's first run, \
             alternating with POST /command true on the same connection (baseline, p95 {} ms)",
            fmt_num(stats::p95(&plain).unwrap_or(f64::NAN))
        ),
    };
    Ok((create, first))
}
