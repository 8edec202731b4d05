//! `/ping` throughput: 64 keep-alive connections against execd and against
//! the bare hyper server, alternating, with the same generator; cross-checked
//! with `wrk` when it is installed.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use super::blocking;
use super::Run;
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::server::Server;
use crate::stats::{self, fmt_num};

const CONNECTIONS: usize = 64;

pub async fn figures(run: &Run) -> Vec<Figure> {
    let ours = Figure::new(
        "ping_rps",
        "/ping requests/s",
        "req/s",
        Budget::MinRatio(0.9),
    );
    let wrk = Figure::new(
        "ping_rps_wrk",
        "/ping requests/s (wrk)",
        "req/s",
        Budget::MinRatio(0.9),
    );
    let bare = match Server::bare() {
        Ok(b) => b,
        Err(e) => return vec![ours.with(Err(e.clone())), wrk.with(Err(e))],
    };
    let ours = ours.with(generator(run, bare.addr).await);
    let wrk = match which("wrk") {
        None => wrk.not_applicable("wrk not installed"),
        Some(_) => wrk.with(with_wrk(run, bare.addr).await),
    };
    let wrk = match (ours.baseline, wrk.baseline) {
        (Some(a), Some(b)) => wrk.note(format!(
            "the harness's generator reaches {:.0} % of wrk's rate on the bare server",
            a / b * 100.0
        )),
        _ => wrk,
    };
    vec![ours, wrk]
}

/// The harness's own generator, [`client::raw_load`], on both servers.
async fn generator(run: &Run, bare: SocketAddr) -> Result<Measured> {
    let (mut execd, mut base) = (Vec::new(), Vec::new());
    let (mut lat_execd, mut lat_base) = (Vec::new(), Vec::new());
    for trial in 0..run.plan.trials() {
        let mut pair = [
            (bare, &mut base, &mut lat_base),
            (run.execd.addr, &mut execd, &mut lat_execd),
        ];
        // Alternate who goes first, so drift in the machine's load is shared.
        if trial % 2 == 1 {
            pair.reverse();
        }
        for (addr, rps, lat) in pair {
            let dur = run.plan.load_time();
            let s = blocking(move || client::raw_load(addr, "/ping", CONNECTIONS, 2, dur)).await?;
            rps.push(s.per_sec());
            lat.extend(stats::millis(&s.latencies));
        }
    }
    let p95 = |l: &[f64]| stats::p95(l).map_or("-".into(), fmt_num);
    Ok(Measured::medians(&execd, &base).note(format!(
        "{CONNECTIONS} connections; latency p95 {} ms, bare {} ms",
        p95(&lat_execd),
        p95(&lat_base)
    )))
}

async fn with_wrk(run: &Run, bare: SocketAddr) -> Result<Measured> {
    let secs = run.plan.load_time().max(Duration::from_secs(1)).as_secs();
    let (mut execd, mut base) = (Vec::new(), Vec::new());
    for _ in 0..run.plan.heavy_trials() {
        base.push(wrk_rps(bare, secs).await?);
        execd.push(wrk_rps(run.execd.addr, secs).await?);
    }
    Ok(Measured::medians(&execd, &base).note(format!("wrk -t2 -c{CONNECTIONS} -d{secs}s")))
}

async fn wrk_rps(addr: SocketAddr, secs: u64) -> Result<f64> {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("wrk")
            .args(["-t2", &format!("-c{CONNECTIONS}"), &format!("-d{secs}s")])
            .arg(format!("http://{addr}/ping"))
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("wrk: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("wrk printed no Requests/sec: {text}"))
}

/// The path of `prog` on `$PATH`, if any.
pub fn which(prog: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}
