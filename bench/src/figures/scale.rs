//! Scale figures, reported (the design's budgets are in the notes): 1,000
//! commands each printing 1 MiB over 2 s and each read live; 10,000 idle
//! keep-alive connections; 100 concurrent 64 MiB uploads, then downloads.
//! Each measures execd's peak RSS itself (VmHWM reset before), so the run's
//! "RSS peak" figure leaves this group out.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::files::Files;
use super::{mbps, Run};
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::server::Server;
use crate::stats::{self, fmt_num};

const KIB: f64 = 1024.0;

/// The budget for what 100 transfers at once add to execd's RSS: at most
/// 1 MiB of buffers per transfer, over its RSS before them.
const TRANSFERS_RSS_MIB: f64 = 100.0;

/// execd hands freed heap memory back to the system every 5 s
/// (`daemon::spawn_memory_trim`). Each row waits this long first, so that
/// its peak is its own load's, not the previous row's freed-but-unreturned
/// memory (10,000 closed connections leave about 60 MiB until then).
const SETTLE: Duration = Duration::from_secs(6);

pub async fn figures(run: &Run) -> Vec<Figure> {
    if let Some(n) = commands_only() {
        return commands(run, n).await;
    }
    // Idle connections first: after the commands, freed memory going back
    // to the system would hide what the connections take.
    let mut figs = vec![Figure::new(
        "idle_conn_kib",
        "RSS per idle keep-alive connection",
        "KiB",
        Budget::Max(8.0),
    )
    .with(idle_connections(run).await)];
    figs.extend(commands(run, sizes(run).0).await);
    figs.extend(transfers(run).await);
    figs
}

/// `EXECD_BENCH_SCALE_COMMANDS=N`: only the live-commands figures, with N
/// commands (a smaller variant for profiling execd's memory per command).
fn commands_only() -> Option<usize> {
    std::env::var("EXECD_BENCH_SCALE_COMMANDS")
        .ok()?
        .parse()
        .ok()
        .filter(|&n| n > 0)
}

/// How many of each the plan asks for.
fn sizes(run: &Run) -> (usize, usize, usize, u64) {
    if run.plan.smoke {
        (20, 200, 4, 4 << 20)
    } else {
        (1000, 10_000, 100, 64 << 20)
    }
}

/// Samples execd's resident memory and open descriptors until dropped:
/// the largest of each.
struct Sampler {
    peak_fds: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let peak_fds = Arc::new(AtomicU64::new(0));
        let peak = peak_fds.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(d) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    peak.fetch_max(d.count() as u64, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
        Sampler { peak_fds, task }
    }

    fn fds(&self) -> u64 {
        self.peak_fds.load(Ordering::Relaxed)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// Processes whose parent is `pid`: (all, zombies).
fn children(pid: u32) -> (usize, usize) {
    let (mut all, mut zombies) = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let (state, ppid) = (f.next(), f.next().and_then(|p| p.parse::<u32>().ok()));
        if ppid == Some(pid) {
            all += 1;
            zombies += usize::from(state == Some("Z"));
        }
    }
    (all, zombies)
}

/// Waits up to `limit` for execd to have no child left: (children, zombies).
async fn settle_children(pid: u32, limit: Duration) -> (usize, usize) {
    let until = Instant::now() + limit;
    loop {
        let c = children(pid);
        if c.0 == 0 || Instant::now() >= until {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn peak_mib(execd: &Server) -> Result<f64> {
    Ok(execd.status_kib("VmHWM")? as f64 / KIB)
}

/// 1 MiB in 1 KiB lines over about 2 s: four bursts of 256 lines, half a
/// second apart; bash builtins only, but for the `sleep`s. The line is in
/// the script itself: building it in bash (`${L// /x}`) cost each of the
/// 1,000 shells more CPU than its output.
fn script() -> String {
    format!(
        "L={}; for i in 1 2 3 4; do for j in {{1..256}}; do echo $L; done; sleep 0.5; done",
        "x".repeat(1023)
    )
}

async fn commands(run: &Run, n: usize) -> Vec<Figure> {
    let what = if n == 1000 {
        "1,000".to_string()
    } else {
        n.to_string()
    };
    // Labels are static in the report; these four are made once per run.
    let label = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let ttfb = Figure::new(
        "scale_ttfb_ms",
        label(format!("{what} commands live: time to first byte")),
        "ms",
        Budget::None,
    );
    let through = Figure::new(
        "scale_mbps",
        label(format!("{what} commands live: throughput (sum)")),
        "MB/s",
        Budget::None,
    );
    let rss = Figure::new(
        "scale_rss_mib",
        label(format!("{what} commands live: execd RSS peak")),
        "MiB",
        Budget::Max(64.0),
    );
    let errs = Figure::new(
        "scale_errors",
        label(format!("{what} commands live: errors + zombies")),
        "count",
        Budget::Max(0.0),
    );
    match live_commands(run, n).await {
        Ok(m) => vec![
            ttfb.measured(m.p50, None)
                .p95(Some(m.p95))
                .note(format!("p99 {} ms; {n} at once, each on its own connection", fmt_num(m.p99))),
            through.measured(m.mbps, None).note(format!(
                "{} MiB in {:.2} s, from the first request to the last terminal event; execd CPU {:.2} s",
                m.bytes >> 20,
                m.secs,
                m.cpu
            )),
            rss.measured(m.rss, None).note(format!(
                "VmHWM, reset after 6 s of quiet; open fds at peak {} (before {})",
                m.fds, m.fds_before
            )),
            errs.measured((m.errors + m.zombies) as f64, None).note(format!(
                "{} failed or short streams{}; {} zombies and {} children of execd left 2 s after the last stream",
                m.errors,
                m.first_error.map_or(String::new(), |e| format!(" (first: {e})")),
                m.zombies,
                m.children
            )),
        ],
        Err(e) => vec![ttfb.error(&e), through.error(&e), rss.error(&e), errs.error(e)],
    }
}

struct Live {
    p50: f64,
    p95: f64,
    p99: f64,
    mbps: f64,
    bytes: u64,
    secs: f64,
    cpu: f64,
    rss: f64,
    fds: u64,
    fds_before: u64,
    errors: usize,
    first_error: Option<String>,
    zombies: usize,
    children: usize,
}

async fn live_commands(run: &Run, n: usize) -> Result<Live> {
    let execd = &run.execd;
    let fds_before = fds(execd.pid());
    tokio::time::sleep(SETTLE).await;
    execd.reset_peak()?;
    let cpu0 = execd.cpu_secs()?;
    let sampler = Sampler::start(execd.pid());
    let script: Arc<str> = script().into();
    let t = Instant::now();
    let readers: Vec<_> = (0..n)
        .map(|_| {
            let (addr, script) = (execd.addr, script.clone());
            tokio::spawn(client::with_conn(addr, |mut conn| async move {
                client::run_command(&mut conn, &script, |_| {}).await
            }))
        })
        .collect();
    let (mut firsts, mut bytes, mut errors, mut first_error) = (Vec::new(), 0u64, 0, None);
    for r in readers {
        let r = r.await.map_err(|e| e.to_string()).and_then(|r| r);
        match r {
            Ok(c) if c.stdout_bytes == 1 << 20 && c.gaps == 0 => {
                bytes += c.stdout_bytes;
                if let Some(f) = c.first_stdout {
                    firsts.push(f.as_secs_f64() * 1e3);
                }
            }
            Ok(c) => {
                errors += 1;
                first_error.get_or_insert(format!("{} bytes, {} gaps", c.stdout_bytes, c.gaps));
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let cpu = execd.cpu_secs()? - cpu0;
    let rss = peak_mib(execd)?;
    let fds = sampler.fds();
    drop(sampler);
    let (children, zombies) = settle_children(execd.pid(), Duration::from_secs(2)).await;
    let q = |p| stats::quantile(&firsts, p).unwrap_or(f64::NAN);
    Ok(Live {
        p50: q(0.5),
        p95: q(0.95),
        p99: q(0.99),
        mbps: mbps(bytes, secs),
        bytes,
        secs,
        cpu,
        rss,
        fds,
        fds_before,
        errors,
        first_error,
        zombies,
        children,
    })
}

/// Opens one connection and completes a `GET /ping` on it, then leaves it
/// open and idle.
async fn idle_conn(addr: SocketAddr) -> Result<TcpStream> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 512];
    let mut got = 0;
    // The whole answer is small: read until its head and body are in.
    loop {
        let k = s
            .read(&mut buf[got..])
            .await
            .map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Err("closed before answering /ping".into());
        }
        got += k;
        let text = &buf[..got];
        if let Some(end) = text.windows(4).position(|w| w == b"\r\n\r\n") {
            if !text.starts_with(b"HTTP/1.1 200") {
                return Err(format!("/ping: {}", String::from_utf8_lossy(text)));
            }
            let len = String::from_utf8_lossy(&text[..end])
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got >= end + 4 + len {
                return Ok(s);
            }
        }
        if got == buf.len() {
            return Err("answer to /ping too long".into());
        }
    }
}

/// RSS growth per idle keep-alive connection (after one `/ping` each).
async fn idle_connections(run: &Run) -> Result<Measured> {
    let (_, n, ..) = sizes(run);
    let execd = &run.execd;
    let rss = || execd.status_kib("VmRSS");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (before, fds0) = (rss()?, fds(execd.pid()));
    let t = Instant::now();
    let mut conns = Vec::with_capacity(n);
    // 100 connects in flight at a time: the listen backlog is not the figure.
    let mut pending = tokio::task::JoinSet::new();
    let mut started = 0;
    while conns.len() < n {
        while started < n && pending.len() < 100 {
            pending.spawn(idle_conn(execd.addr));
            started += 1;
        }
        match pending.join_next().await {
            Some(r) => conns.push(r.map_err(|e| e.to_string())??),
            None => break,
        }
    }
    let open_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (after, fds1) = (rss()?, fds(execd.pid()));
    drop(conns);
    // The next figure starts once execd has closed them (up to 30 s).
    let until = Instant::now() + Duration::from_secs(30);
    while fds(execd.pid()) > fds0 + 16 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let per = after.saturating_sub(before) as f64 / n as f64;
    Ok(Measured {
        value: per,
        baseline: None,
        p95: None,
        note: format!(
            "{n} connections opened in {open_secs:.1} s, each after one GET /ping; VmRSS {} -> {} MiB; \
             execd fds {fds0} -> {fds1}",
            fmt_num(before as f64 / KIB),
            fmt_num(after as f64 / KIB)
        ),
    })
}

/// `n` concurrent uploads of `size` bytes each (to `n` files), then `n`
/// concurrent downloads of those files: aggregate MB/s and peak RSS.
async fn transfers(run: &Run) -> Vec<Figure> {
    let (.., n, size) = sizes(run);
    let up = Figure::new(
        "scale_upload_mbps",
        "100 concurrent 64 MiB uploads (sum)",
        "MB/s",
        Budget::None,
    );
    let down = Figure::new(
        "scale_download_mbps",
        "100 concurrent 64 MiB downloads (sum)",
        "MB/s",
        Budget::None,
    );
    let files = Arc::new(Files::new(run));
    let paths: Vec<_> = (0..n)
        .map(|i| files.path(&format!("many-{i}.bin")))
        .collect();
    let chunk = super::files::pseudo_random(1 << 20);
    let execd = &run.execd;

    let up_rss = Figure::new(
        "scale_upload_rss_added_mib",
        "100 concurrent 64 MiB uploads: execd RSS added",
        "MiB",
        Budget::Max(TRANSFERS_RSS_MIB),
    );
    let down_rss = Figure::new(
        "scale_download_rss_added_mib",
        "100 concurrent 64 MiB downloads: execd RSS added",
        "MiB",
        Budget::Max(TRANSFERS_RSS_MIB),
    );

    let r: Result<(f64, f64, f64)> = async {
        tokio::time::sleep(SETTLE).await;
        let before = execd.status_kib("VmRSS")? as f64 / KIB;
        execd.reset_peak()?;
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for p in &paths {
            let (files, p, chunk) = (files.clone(), p.clone(), chunk.clone());
            set.spawn(async move { files.upload_to(&p, chunk, size >> 20).await });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(|e| e.to_string())??;
        }
        Ok((
            mbps(size * n as u64, t.elapsed().as_secs_f64()),
            peak_mib(execd)?,
            before,
        ))
    }
    .await;
    let (up, up_rss) = match r {
        Ok((v, rss, before)) => (
            up.measured(v, None).note(format!(
                "{n} at once, each its own connection, multipart with Content-Length, fsynced; execd RSS peak {} MiB",
                fmt_num(rss)
            )),
            up_rss.measured(rss - before, None).note(format!(
                "VmHWM (reset before) {} MiB - VmRSS before {} MiB, after {} s of quiet",
                fmt_num(rss),
                fmt_num(before),
                SETTLE.as_secs()
            )),
        ),
        Err(e) => (up.error(&e), up_rss.error(e)),
    };

    let r: Result<(f64, f64, f64)> = async {
        tokio::time::sleep(SETTLE).await;
        let before = execd.status_kib("VmRSS")? as f64 / KIB;
        execd.reset_peak()?;
        let t = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for p in &paths {
            let (files, p) = (files.clone(), p.clone());
            set.spawn(async move { files.download_from(&p).await });
        }
        let mut total = 0;
        while let Some(r) = set.join_next().await {
            let (got, _) = r.map_err(|e| e.to_string())??;
            if got != size {
                return Err(format!("downloaded {got} bytes of {size}"));
            }
            total += got;
        }
        Ok((
            mbps(total, t.elapsed().as_secs_f64()),
            peak_mib(execd)?,
            before,
        ))
    }
    .await;
    let (down, down_rss) = match r {
        Ok((v, rss, before)) => (
            down.measured(v, None).note(format!(
                "{n} at once, each its own connection, into a null sink (the files uploaded just before, in the page cache); execd RSS peak {} MiB",
                fmt_num(rss)
            )),
            down_rss.measured(rss - before, None).note(format!(
                "VmHWM (reset before) {} MiB - VmRSS before {} MiB, after {} s of quiet",
                fmt_num(rss),
                fmt_num(before),
                SETTLE.as_secs()
            )),
        ),
        Err(e) => (down.error(&e), down_rss.error(e)),
    };
    for p in &paths {
        let _ = std::fs::remove_file(p);
    }
    vec![up, down, up_rss, down_rss]
}
