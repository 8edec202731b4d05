//! Directory-watch figures (`GET /files/watch`): the latency from a file's
//! creation to its event, against the debounce window (250 ms by default; a
//! second daemon with `--watch-debounce 0` shows the engine's own latency),
//! and the event rate one watch sustains while files are created as fast as
//! one thread can, against that creation rate without a watch.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use serde::Deserialize;

use super::{blocking, Run};
use crate::client::{self, EventReader, Result};
use crate::report::{Budget, Figure, Measured, ROUTE_MISSING};
use crate::server::Server;
use crate::stats::{self, fmt_num};

/// The default `--watch-debounce`.
const WINDOW_MS: f64 = 250.0;

pub async fn figures(run: &Run) -> Vec<Figure> {
    let dir = run.scratch.join("watch");
    let _ = std::fs::remove_dir_all(&dir);
    let mut figs = vec![Figure::new(
        "watch_latency_ms",
        "file created -> its watch event (window 250 ms)",
        "ms",
        Budget::MaxOver(5.0),
    )
    .with(
        latency(
            run.execd.addr,
            &dir.join("lat"),
            run.plan.round_trips() / 10,
            WINDOW_MS,
        )
        .await,
    )];
    let undebounced = Server::start({
        let mut cmd = std::process::Command::new(&run.bin);
        cmd.args([
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--watch-debounce",
            "0",
        ]);
        cmd
    });
    figs.push(
        Figure::new(
            "watch_latency_nodebounce_ms",
            "file created -> its watch event (window 0)",
            "ms",
            Budget::None,
        )
        .with(match &undebounced {
            Ok(s) => latency(s.addr, &dir.join("lat0"), run.plan.round_trips(), 0.0).await,
            Err(e) => Err(e.clone()),
        }),
    );
    drop(undebounced);
    figs.push(
        Figure::new(
            "watch_events_per_sec",
            "watch events/s while one thread creates files",
            "ev/s",
            Budget::None,
        )
        .with(rate(run, &dir.join("rate")).await),
    );
    let _ = std::fs::remove_dir_all(&dir);
    figs
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: String,
}

/// An open watch: its events, and the connection that carries them.
struct Watching {
    r: EventReader,
    _conn: client::Conn,
}

/// Opens a watch on `dir`; the reader past the first `ping` (the watch is
/// armed by then).
async fn open(addr: std::net::SocketAddr, dir: &Path) -> Result<Watching> {
    let mut conn = client::connect(addr).await?;
    let path = format!(
        "/files/watch?path={}",
        dir.to_str().ok_or("scratch path is not UTF-8")?
    );
    let resp = client::send(&mut conn, client::get(&path)).await?;
    if resp.status() == http::StatusCode::NOT_FOUND {
        return Err(ROUTE_MISSING.into());
    }
    let body: Incoming = client::expect_ok(resp, "GET /files/watch").await?;
    let mut r = EventReader::new(body);
    let first = r.next().await?.ok_or("watch ended at once")?;
    let ev: WatchEvent = serde_json::from_slice(&first).map_err(|e| e.to_string())?;
    if ev.kind != "ping" {
        return Err(format!("first event is {:?}, not ping", ev.kind));
    }
    Ok(Watching { r, _conn: conn })
}

/// Reads until a `create` of `path`; other events are skipped.
async fn wait_create(r: &mut EventReader, path: &str) -> Result<()> {
    loop {
        let raw = r.next().await?.ok_or("watch ended")?;
        let ev: WatchEvent = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
        match ev.kind.as_str() {
            "create" if ev.path == path => return Ok(()),
            "error" | "overflow" => return Err(String::from_utf8_lossy(&raw).into_owned()),
            _ => {}
        }
    }
}

/// Creates `n` files one at a time, each after the previous one's event:
/// the median time from `open(O_CREAT)` to its event.
async fn latency(
    addr: std::net::SocketAddr,
    dir: &Path,
    n: usize,
    window: f64,
) -> Result<Measured> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let mut w = open(addr, dir).await?;
    let mut samples = Vec::new();
    for i in 0..n.max(3) {
        let p: PathBuf = dir.join(format!("f{i}"));
        let t = Instant::now();
        std::fs::File::create(&p).map_err(|e| format!("{p:?}: {e}"))?;
        wait_create(&mut w.r, p.to_str().unwrap_or_default()).await?;
        samples.push(t.elapsed());
    }
    let ms = stats::millis(&samples);
    Ok(Measured {
        value: stats::median(&ms).unwrap_or(f64::NAN),
        baseline: (window > 0.0).then_some(window),
        p95: stats::p95(&ms),
        note: format!(
            "{} files, one at a time; baseline: the debounce window; {}",
            ms.len(),
            stats::spread(&ms)
        ),
    })
}

/// Creates files as fast as one thread can; returns files/s.
fn create_files(dir: &Path, n: usize) -> Result<f64> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{dir:?}: {e}"))?;
    let t = Instant::now();
    for i in 0..n {
        let p = dir.join(format!("f{i}"));
        std::fs::File::create(&p).map_err(|e| format!("{p:?}: {e}"))?;
    }
    Ok(n as f64 / t.elapsed().as_secs_f64())
}

/// The watch's sustained rate: files created by a thread while the watch
/// reports them, events/s from the first create to the last event; the
/// baseline is the same thread creating files with no watch.
async fn rate(run: &Run, dir: &Path) -> Result<Measured> {
    let n = if run.plan.smoke { 2_000 } else { 10_000 };
    let trials = run.plan.heavy_trials();
    let (mut values, mut bases, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for t in 0..trials {
        let plain = dir.join(format!("plain{t}"));
        let p2 = plain.clone();
        bases.push(blocking(move || create_files(&p2, n)).await?);
        let _ = std::fs::remove_dir_all(&plain);

        let watched = dir.join(format!("watched{t}"));
        std::fs::create_dir_all(&watched).map_err(|e| format!("{watched:?}: {e}"))?;
        let mut w = open(run.execd.addr, &watched).await?;
        let cpu0 = run.execd.cpu_secs()?;
        let start = Instant::now();
        let w2 = watched.clone();
        let producer = tokio::task::spawn_blocking(move || create_files(&w2, n));
        let mut seen = 0usize;
        let mut lost = false;
        while seen < n {
            let raw = w.r.next().await?.ok_or("watch ended")?;
            let ev: WatchEvent = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
            match ev.kind.as_str() {
                "create" => seen += 1,
                "overflow" => {
                    lost = true;
                    break;
                }
                "error" => return Err(String::from_utf8_lossy(&raw).into_owned()),
                _ => {}
            }
        }
        let secs = start.elapsed().as_secs_f64();
        producer.await.map_err(|e| e.to_string())??;
        if lost {
            return Err(format!("overflow after {seen} of {n} events"));
        }
        values.push(n as f64 / secs);
        cpu.push((run.execd.cpu_secs()? - cpu0) / n as f64 * 1e6);
        drop(w);
        let _ = std::fs::remove_dir_all(&watched);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Measured::medians(&values, &bases).note(format!(
        "{n} files per trial; execd CPU per event {} us",
        fmt_num(stats::median(&cpu).unwrap_or(f64::NAN))
    )))
}
