//! Command figures: one `true` round trip, `echo` commands/s with 8 clients,
//! and time to the first output byte. Baselines spawn `bash -c` directly.

use std::time::{Duration, Instant};

use super::{bash, blocking, Run};
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::stats::{self, fmt_num};

const CLIENTS: usize = 8;

pub async fn figures(run: &Run) -> Vec<Figure> {
    vec![
        Figure::new(
            "roundtrip_ms",
            "`true` round trip",
            "ms",
            Budget::MaxOver(0.5),
        )
        .with(round_trip(run).await),
        Figure::new(
            "commands_per_sec",
            "`echo` commands/s, 8 clients",
            "cmd/s",
            Budget::MinRatio(0.6),
        )
        .with(throughput(run).await),
        Figure::new("ttfb_ms", "time to first output byte", "ms", Budget::None)
            .with(first_byte(run).await),
    ]
}

/// One direct `bash -c SCRIPT`, waited for, its output read.
fn spawn_direct(script: &str) -> Result<()> {
    let out = bash(script).output().map_err(|e| format!("bash: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("bash -c {script:?}: {}", out.status))
    }
}

/// Sequential `true` through execd and directly, interleaved one by one so
/// that drift in the machine's load hits both alike.
async fn round_trip(run: &Run) -> Result<Measured> {
    let mut conn = client::connect(run.execd.addr).await?;
    let (mut execd, mut base) = (Vec::new(), Vec::new());
    for _ in 0..run.plan.round_trips() {
        let t = Instant::now();
        blocking(|| spawn_direct("true")).await?;
        base.push(t.elapsed());
        execd.push(client::run_command(&mut conn, "true", |_| {}).await?.total);
    }
    let (execd, base) = (stats::millis(&execd), stats::millis(&base));
    Ok(Measured {
        value: stats::median(&execd).unwrap_or(f64::NAN),
        baseline: stats::median(&base),
        p95: stats::p95(&execd),
        note: format!(
            "{} sequential; direct spawn p95 {} ms",
            execd.len(),
            stats::p95(&base).map_or("-".into(), fmt_num)
        ),
    })
}

/// `CLIENTS` closed loops of `echo hello` through execd, against the spawn
/// ceiling: `CLIENTS` threads spawning `bash -c 'echo hello'` directly.
async fn throughput(run: &Run) -> Result<Measured> {
    let dur = run.plan.load_time();
    let (mut execd, mut base, mut lat) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..run.plan.trials() {
        base.push(blocking(move || spawn_ceiling(dur)).await?);
        let addr = run.execd.addr;
        let open = || client::connect(addr);
        let s = client::closed_loop(CLIENTS, dur, open, |mut c: client::Conn| async move {
            let r = client::run_command(&mut c, "echo hello", |_| {}).await?;
            if r.stdout_bytes != 6 {
                return Err(format!("echo hello gave {} bytes", r.stdout_bytes));
            }
            Ok(c)
        })
        .await?;
        execd.push(s.per_sec());
        lat.extend(stats::millis(&s.latencies));
    }
    Ok(Measured::medians(&execd, &base).note(format!(
        "latency p95 {} ms",
        stats::p95(&lat).map_or("-".into(), fmt_num)
    )))
}

/// Direct spawns per second with `CLIENTS` threads spawning back to back.
fn spawn_ceiling(dur: Duration) -> Result<f64> {
    let start = Instant::now();
    let deadline = start + dur;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    spawn_direct("echo hello")?;
                    n += 1;
                }
                Ok::<_, String>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in threads {
        total += t
            .join()
            .map_err(|_| "spawn thread panicked".to_string())??;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// Request to the first `stdout` event of `echo x; sleep 1`.
async fn first_byte(run: &Run) -> Result<Measured> {
    let mut conn = client::connect(run.execd.addr).await?;
    let mut firsts = Vec::new();
    for _ in 0..run.plan.ttfb_runs() {
        let r = client::run_command(&mut conn, "echo x; sleep 1", |_| {}).await?;
        firsts.push(r.first_stdout.ok_or("no stdout event")?);
    }
    let ms = stats::millis(&firsts);
    Ok(Measured {
        p95: stats::p95(&ms),
        ..Measured::medians(&ms, &[])
    })
}
