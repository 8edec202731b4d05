//! `/code` figures, with real Jupyter kernels: a warm `1+1` round trip,
//! context creation, and a cell printing 64 MiB. Baselines: the same kernel
//! driven directly by `jupyter_client` (`bench/code/baseline.py`), in the
//! same run. Needs a kernel venv (`tests/kernel-venv.sh`) named by
//! `EXECD_KERNEL_VENV`; without one the figures are "n/a".

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{blocking, mbps, Run};
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::stats::{self, fmt_num};

/// The venv's `share/jupyter` and `python`, when `EXECD_KERNEL_VENV` names
/// a venv with the python3 kernel and jupyter_client.
pub fn kernel_venv() -> std::result::Result<(PathBuf, PathBuf), String> {
    let venv = std::env::var_os("EXECD_KERNEL_VENV")
        .map(PathBuf::from)
        .ok_or("no kernel venv: set EXECD_KERNEL_VENV (made by tests/kernel-venv.sh)")?;
    let share = venv.join("share/jupyter");
    let python = venv.join("bin/python");
    if !share.join("kernels/python3/kernel.json").is_file() || !python.is_file() {
        return Err(format!(
            "no python3 kernel in EXECD_KERNEL_VENV={}",
            venv.display()
        ));
    }
    Ok((share, python))
}

pub async fn figures(run: &Run) -> Vec<Figure> {
    let rtt = Figure::new(
        "code_roundtrip_ms",
        "/code warm `1+1` round trip",
        "ms",
        Budget::MaxOver(1.0),
    );
    let create = Figure::new(
        "code_context_ms",
        "/code context creation",
        "ms",
        Budget::None,
    );
    let stream = Figure::new(
        "code_stream_mbps",
        "/code cell printing 64 MiB",
        "MB/s",
        Budget::None,
    );
    let (share, python) = match kernel_venv() {
        Ok(v) => v,
        Err(why) => {
            return vec![
                rtt.not_applicable(why.clone()),
                create.not_applicable(why.clone()),
                stream.not_applicable(why),
            ]
        }
    };
    let base = Baseline { share, python };
    vec![
        rtt.with(round_trip(run, &base).await),
        create.with(creation(run, &base).await),
        stream.with(streaming(run, &base).await),
    ]
}

struct Baseline {
    share: PathBuf,
    python: PathBuf,
}

impl Baseline {
    /// Runs `baseline.py` with `args`; its seconds and bytes.
    async fn run(&self, args: &[String]) -> Result<(Vec<f64>, Vec<u64>)> {
        let script = crate::server::workspace_root().join("bench/code/baseline.py");
        let mut cmd = std::process::Command::new(&self.python);
        cmd.arg(script)
            .args(args)
            .env("JUPYTER_PATH", &self.share)
            .stdin(std::process::Stdio::null());
        let what = format!("baseline.py {}", args.join(" "));
        let out = blocking(move || cmd.output().map_err(|e| format!("{what}: {e}"))).await?;
        if !out.status.success() {
            return Err(format!(
                "baseline.py {}: {}: {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("baseline.py printed no JSON: {e}"))?;
        let secs = v["seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let bytes = v["bytes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        Ok((secs, bytes))
    }
}

/// A new python context; its id.
async fn new_context(run: &Run) -> Result<(String, Duration)> {
    let mut conn = client::connect(run.execd.addr).await?;
    let t = Instant::now();
    let resp = client::send(
        &mut conn,
        client::post_json("/code/context", &json!({"language": "python"})),
    )
    .await?;
    let status = resp.status();
    let body = client::collect(resp.into_body()).await?;
    let took = t.elapsed();
    if status.as_u16() == 404 {
        return Err(crate::report::ROUTE_MISSING.into());
    }
    let v: Value = serde_json::from_slice(&body).unwrap_or_default();
    match v["id"].as_str() {
        Some(id) if status.is_success() => Ok((id.to_string(), took)),
        _ => Err(format!(
            "POST /code/context: {status}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

async fn delete_context(run: &Run, id: &str) -> Result<()> {
    let mut conn = client::connect(run.execd.addr).await?;
    let req = hyper::Request::builder()
        .method(hyper::Method::DELETE)
        .uri(format!("/code/contexts/{id}"))
        .header(hyper::header::HOST, "127.0.0.1")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = client::send(&mut conn, req).await?;
    client::drain(resp.into_body()).await?;
    Ok(())
}

/// `1+1` through `/code` on one kept-alive connection, after 20 warm-up
/// runs, and the baseline's, in alternating blocks (so that drift in the
/// machine's load hits both alike). Medians of each.
async fn round_trip(run: &Run, base: &Baseline) -> Result<Measured> {
    let n = run.plan.round_trips();
    let blocks = run.plan.pick_blocks();
    let per = n.div_ceil(blocks);
    let (id, _) = new_context(run).await?;
    let mut conn = client::connect(run.execd.addr).await?;
    for _ in 0..20 {
        client::run_code(&mut conn, &id, "1+1").await?;
    }
    let mut times = Vec::with_capacity(n);
    let mut base_ms = Vec::with_capacity(n);
    for _ in 0..blocks {
        for _ in 0..per {
            times.push(client::run_code(&mut conn, &id, "1+1").await?.total);
        }
        let (s, _) = base.run(&["rtt".into(), per.to_string()]).await?;
        base_ms.extend(s.iter().map(|s| s * 1e3));
    }
    delete_context(run, &id).await?;
    let execd = stats::millis(&times);
    Ok(Measured {
        value: stats::median(&execd).unwrap_or(f64::NAN),
        baseline: stats::median(&base_ms),
        p95: stats::p95(&execd),
        note: format!(
            "{} sequential after 20 warm-up, in {blocks} blocks alternating with jupyter_client's (execute_interactive on its own kernel, 20 warm-up per block), whose p95 is {} ms",
            execd.len(),
            stats::p95(&base_ms).map_or("-".into(), fmt_num)
        ),
    })
}

/// `POST /code/context` until it answers (the kernel answers on every
/// channel), against KernelManager.start_kernel + wait_for_ready, one for
/// one.
async fn creation(run: &Run, base: &Baseline) -> Result<Measured> {
    let n = run.plan.pick_creations();
    let mut times = Vec::with_capacity(n);
    let mut base_ms = Vec::with_capacity(n);
    for _ in 0..n {
        let (id, took) = new_context(run).await?;
        times.push(took);
        delete_context(run, &id).await?;
        let (s, _) = base.run(&["create".into(), "1".into()]).await?;
        base_ms.extend(s.iter().map(|s| s * 1e3));
    }
    Ok(Measured::medians(&stats::millis(&times), &base_ms))
}

/// The code of a cell writing `n` bytes in 1 KiB lines.
fn stream_code(n: u64) -> String {
    format!(
        "import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range({}):\n    sys.stdout.write(line)\nsys.stdout.flush()",
        n / 1024
    )
}

/// A cell printing 64 MiB read through one event stream, against the same
/// cell's `stream` messages read by jupyter_client. MB/s of text.
async fn streaming(run: &Run, base: &Baseline) -> Result<Measured> {
    let n = run.plan.code_stream_bytes();
    let trials = run.plan.heavy_trials();
    let (id, _) = new_context(run).await?;
    let mut conn = client::connect(run.execd.addr).await?;
    let code = stream_code(n);
    let (mut execd, mut base_mbps) = (Vec::new(), Vec::new());
    for _ in 0..trials {
        let r = client::run_code(&mut conn, &id, &code).await?;
        if r.stdout_bytes != n {
            return Err(format!("execd gave {} bytes of {n}", r.stdout_bytes));
        }
        execd.push(mbps(n, r.total.as_secs_f64()));
        let (s, b) = base
            .run(&["stream".into(), n.to_string(), "1".into()])
            .await?;
        if b.iter().any(|b| *b != n) {
            return Err(format!("jupyter_client got {b:?} bytes of {n}"));
        }
        base_mbps.extend(s.iter().map(|s| mbps(n, *s)));
    }
    delete_context(run, &id).await?;
    Ok(Measured::medians(&execd, &base_mbps).note(format!(
        "{} MiB in 1 KiB lines per trial; peak RSS of this group: see the RSS peak figure",
        n >> 20
    )))
}
