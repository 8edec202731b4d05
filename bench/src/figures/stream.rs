//! Output figures: stdout streaming throughput through one event-stream
//! client against the same producer into a plain pipe, and fan-out to eight
//! readers against one.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::{bash, blocking, mbps, Run};
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::server::own_cpu_secs;
use crate::stats;

/// Extra readers beside the event stream in the fan-out figure.
const POLLERS: usize = 7;

pub async fn figures(run: &Run) -> Vec<Figure> {
    vec![
        Figure::new(
            "stream_mbps",
            "stdout streaming",
            "MB/s",
            Budget::MinRatio(0.7),
        )
        .with(streaming(run).await),
        Figure::new(
            "stream_curl_mbps",
            "stdout streaming, curl -N client",
            "MB/s",
            Budget::MinRatio(0.7),
        )
        .with(streaming_curl(run).await),
        Figure::new(
            "fanout_mbps",
            "fan-out, 8 readers (sum)",
            "MB/s",
            Budget::None,
        )
        .with(fan_out(run).await),
    ]
}

/// `bytes` of 'x' in 1 KiB lines (1023 characters and a newline). The same
/// command line is the baseline's and execd's.
pub fn producer(bytes: u64) -> String {
    format!("head -c {bytes} /dev/zero | tr '\\0' x | fold -w 1023")
}

/// Runs `script` directly and reads its stdout from a pipe: (bytes, seconds).
fn pipe_read(script: String) -> Result<(u64, f64)> {
    let t = Instant::now();
    let mut child = bash(&script)
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("bash: {e}"))?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        match out.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => n += k as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("pipe: {e}")),
        }
    }
    child.wait().map_err(|e| e.to_string())?;
    Ok((n, t.elapsed().as_secs_f64()))
}

/// One event-stream reader of `script`: (stdout bytes, seconds, gap events).
async fn sse_read(addr: SocketAddr, script: &str) -> Result<(u64, f64, u64)> {
    let r = client::with_conn(addr, |mut conn| async move {
        client::run_command(&mut conn, script, |_| {}).await
    })
    .await?;
    Ok((r.stdout_bytes, r.total.as_secs_f64(), r.gaps))
}

async fn streaming(run: &Run) -> Result<Measured> {
    let script = producer(run.plan.stream_bytes());
    let (mut execd, mut base, mut notes) = (Vec::new(), Vec::new(), Vec::new());
    let (mut wall, mut ours, mut theirs, mut bytes) = (0.0, 0.0, 0.0, 0u64);
    for _ in 0..run.plan.heavy_trials() {
        let s = script.clone();
        let (want, secs) = blocking(move || pipe_read(s)).await?;
        base.push(mbps(want, secs));
        let (cpu0, execd0) = (own_cpu_secs(), run.execd.cpu_secs()?);
        let (got, secs, gaps) = sse_read(run.execd.addr, &script).await?;
        ours += own_cpu_secs() - cpu0;
        theirs += run.execd.cpu_secs()? - execd0;
        wall += secs;
        bytes += got;
        execd.push(mbps(got, secs));
        if got != want || gaps > 0 {
            notes.push(format!(
                "execd delivered {got} of {want} bytes with {gaps} gap events"
            ));
        }
    }
    notes.dedup();
    notes.push(cpu_per_event(theirs, bytes));
    // CPU per byte does not depend on how fast the producer ran, so it is the
    // figure to compare across runs on a shared machine.
    let per_mb = |cpu: f64| cpu * 1e3 / (bytes.max(1) as f64 / 1e6);
    notes.push(format!(
        "CPU while streaming: execd {:.0} % of a core ({:.2} ms per MB), \
         the harness's reader {:.0} % ({:.2} ms per MB)",
        theirs / wall * 100.0,
        per_mb(theirs),
        ours / wall * 100.0,
        per_mb(ours)
    ));
    Ok(Measured::medians(&execd, &base).note(notes.join("; ")))
}

/// Output events of `bytes` of the producer (1 KiB lines).
fn events(bytes: u64) -> f64 {
    (bytes / 1024).max(1) as f64
}

/// The note on execd's CPU per output event (budget: 1 µs per 1 KiB line).
fn cpu_per_event(execd_cpu: f64, bytes: u64) -> String {
    format!(
        "execd CPU per 1 KiB event {:.2} µs ({:.2} s over {} events)",
        execd_cpu * 1e6 / events(bytes),
        execd_cpu,
        bytes / 1024
    )
}

/// The same stream read by a plain `curl -N -o /dev/null`, the way users and
/// scripts read it: (payload bytes the command printed, seconds to curl's
/// exit). curl's own byte count (framing included) must cover the payload.
fn curl_read(addr: SocketAddr, script: &str, payload: u64) -> Result<f64> {
    let body = serde_json::json!({ "command": script }).to_string();
    let t = Instant::now();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-N",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ])
        .args([
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data-binary",
        ])
        .arg(&body)
        .arg(format!("http://{addr}/command"))
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    let (code, size) = (it.next(), it.next().and_then(|s| s.parse::<u64>().ok()));
    match (out.status.success(), code, size) {
        (true, Some("200"), Some(n)) if n >= payload => Ok(secs),
        _ => Err(format!(
            "curl: {} {text:?} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The streaming figure with `curl -N -o /dev/null` as the client, against
/// the same pipe baseline, alternating; the note gives execd's CPU per event.
async fn streaming_curl(run: &Run) -> Result<Measured> {
    if super::ping::which("curl").is_none() {
        return Err("curl not installed".into());
    }
    let bytes = run.plan.stream_bytes();
    let script = producer(bytes);
    let (mut execd, mut base, mut cpu) = (Vec::new(), Vec::new(), 0.0);
    for _ in 0..run.plan.heavy_trials() {
        let s = script.clone();
        let (want, secs) = blocking(move || pipe_read(s)).await?;
        base.push(mbps(want, secs));
        let (addr, s) = (run.execd.addr, script.clone());
        let execd0 = run.execd.cpu_secs()?;
        let secs = blocking(move || curl_read(addr, &s, bytes)).await?;
        cpu += run.execd.cpu_secs()? - execd0;
        execd.push(mbps(bytes, secs));
    }
    let trials = run.plan.heavy_trials() as u64;
    Ok(Measured::medians(&execd, &base).note(format!(
        "curl -sN -o /dev/null, time to curl's exit; {}",
        cpu_per_event(cpu, bytes * trials)
    )))
}

/// One command read by its event stream and `POLLERS` `logs?cursor` pollers
/// at once (sum of bytes read / time until the last reader is done), against
/// the same command read by the event stream alone.
async fn fan_out(run: &Run) -> Result<Measured> {
    let script = producer(run.plan.fanout_bytes());
    let (mut many, mut single, mut slowest) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..run.plan.heavy_trials() {
        let (bytes, secs, _) = sse_read(run.execd.addr, &script).await?;
        single.push(mbps(bytes, secs));
        let (total, secs) = eight_readers(run.execd.addr, &script).await?;
        many.push(mbps(total, secs));
        slowest.push(secs);
    }
    Ok(Measured::medians(&many, &single).note(format!(
        "1 event stream + {POLLERS} logs?cursor pollers; slowest reader done after {} s",
        stats::spread(&slowest)
    )))
}

/// (bytes read by all readers, seconds until the last one is done).
async fn eight_readers(addr: SocketAddr, script: &str) -> Result<(u64, f64)> {
    let t = Instant::now();
    let (id_tx, id_rx) = oneshot::channel();
    let (done_tx, done_rx) = watch::channel(None::<u64>);
    let script = script.to_string();
    let stream = tokio::spawn(client::with_conn(addr, |mut conn| async move {
        let mut id_tx = Some(id_tx);
        let r = client::run_command(&mut conn, &script, |id| {
            if let Some(tx) = id_tx.take() {
                let _ = tx.send(id.to_string());
            }
        })
        .await?;
        let _ = done_tx.send(Some(r.stdout_bytes));
        Ok(r.stdout_bytes)
    }));
    let id: Arc<str> = id_rx.await.map_err(|_| "no init event")?.into();
    let pollers: Vec<_> = (0..POLLERS)
        .map(|_| {
            let (id, done) = (id.clone(), done_rx.clone());
            tokio::spawn(client::with_conn(addr, |conn| poll_logs(conn, id, done)))
        })
        .collect();
    let mut total = stream.await.map_err(|e| e.to_string())??;
    for p in pollers {
        total += p.await.map_err(|e| e.to_string())??;
    }
    Ok((total, t.elapsed().as_secs_f64()))
}

/// Reads `GET /command/{id}/logs?cursor=N` until it has every byte the event
/// stream saw; returns the bytes read.
async fn poll_logs(
    mut conn: client::Conn,
    id: Arc<str>,
    done: watch::Receiver<Option<u64>>,
) -> Result<u64> {
    let (mut cursor, mut read) = (0u64, 0u64);
    loop {
        let path = format!("/command/{id}/logs?cursor={cursor}");
        let resp = client::send(&mut conn, client::get(&path)).await?;
        let tail = resp
            .headers()
            .get("execd-commands-tail-cursor")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let n = client::drain(client::expect_ok(resp, "GET logs").await?).await?;
        read += n;
        cursor = tail.unwrap_or(cursor + n);
        if n == 0 {
            let end = *done.borrow();
            match end {
                Some(end) if cursor >= end => return Ok(read),
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    }
}
