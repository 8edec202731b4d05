//! Process figures: execd's resident memory (idle and peak over the whole
//! run), start-up time to the first 200 on `/ping`, and the binary's size.

use std::path::Path;
use std::time::Duration;

use super::Run;
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured};
use crate::server::Server;
use crate::stats;

const KIB_PER_MIB: f64 = 1024.0;

/// Drops the binary's pages from the page cache (`posix_fadvise
/// DONTNEED`, this file only) before execd starts, so that it is read as a
/// container start reads it: cold, by readahead. A binary the linker has
/// just written sits in the cache in the large folios its writes made, and
/// the kernel maps a whole folio on a fault: the same binary then shows
/// 0.2-0.7 MiB more idle RSS, depending on how it was written. Pages that
/// another running process maps stay cached (the advice cannot drop them).
/// Returns what happened, for the RSS note.
pub fn drop_from_page_cache(bin: &Path) -> String {
    use std::os::fd::AsRawFd;
    let file = match std::fs::File::open(bin) {
        Ok(f) => f,
        Err(e) => return format!("binary not dropped from the page cache: {e}"),
    };
    // SAFETY: an advisory call on a descriptor we own; it reads no memory.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r == 0 {
        "binary dropped from the page cache first (pages other processes map stay)".into()
    } else {
        format!("binary not dropped from the page cache: error {r}")
    }
}

/// execd's VmRSS once it has answered a `/ping` and settled.
pub async fn idle_rss(execd: &Server, cold: String) -> Figure {
    let fig = Figure::new("rss_idle_mib", "RSS idle", "MiB", Budget::Max(4.0));
    let measure = async {
        client::get_ok(client::connect(execd.addr).await?, "/ping").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let anon = execd.status_kib("RssAnon")?;
        Ok(Measured {
            value: execd.status_kib("VmRSS")? as f64 / KIB_PER_MIB,
            note: format!("{cold}; anonymous {anon} KiB, the rest is the binary's pages"),
            ..Measured::default()
        })
    };
    fig.with(measure.await)
}

/// execd's VmHWM, group by group: each reading is the peak since the last
/// reset, so the run's peak is their maximum and the note says which group
/// caused it.
#[derive(Default)]
pub struct PeakRss {
    peaks: Vec<(&'static str, u64)>,
    error: Option<String>,
}

impl PeakRss {
    /// Records the peak since the last call under `group`, then resets it.
    pub fn after(&mut self, group: &'static str, execd: &Server) {
        let r = execd
            .status_kib("VmHWM")
            .and_then(|kib| execd.reset_peak().map(|()| kib));
        match r {
            Ok(kib) => self.peaks.push((group, kib)),
            Err(e) => self.error = Some(e),
        }
    }

    pub fn figure(&self) -> Figure {
        let fig = Figure::new(
            "rss_peak_mib",
            "RSS peak (whole run)",
            "MiB",
            Budget::Max(32.0),
        );
        let peak = self.peaks.iter().map(|(_, k)| *k).max();
        let r = match (&self.error, peak) {
            (Some(e), _) => Err(e.clone()),
            (None, None) => Err("no VmHWM reading".to_string()),
            (None, Some(kib)) => Ok(Measured {
                value: kib as f64 / KIB_PER_MIB,
                note: self
                    .peaks
                    .iter()
                    .map(|(g, k)| format!("{g} {:.1}", *k as f64 / KIB_PER_MIB))
                    .collect::<Vec<_>>()
                    .join(", "),
                ..Measured::default()
            }),
        };
        fig.with(r).note("VmHWM per figure group, MiB")
    }
}

/// From `exec` to the first 200 on `/ping`, each time a fresh execd.
pub async fn startup(run: &Run) -> Figure {
    let fig = Figure::new(
        "startup_ms",
        "start-up to first /ping",
        "ms",
        Budget::Max(10.0),
    );
    let mut ms = Vec::new();
    for _ in 0..run.plan.startups() {
        match first_ping(&run.bin).await {
            Ok(d) => ms.push(d.as_secs_f64() * 1e3),
            Err(e) => return fig.with(Err(e)),
        }
    }
    fig.with(Ok(Measured {
        p95: stats::p95(&ms),
        ..Measured::medians(&ms, &[])
    }))
}

async fn first_ping(bin: &Path) -> Result<Duration> {
    let execd = Server::execd(bin)?;
    loop {
        if let Ok(c) = client::connect(execd.addr).await {
            if client::get_ok(c, "/ping").await.is_ok() {
                return Ok(execd.started.elapsed());
            }
        }
        if execd.started.elapsed() > Duration::from_secs(5) {
            return Err("no 200 on /ping within 5 s".into());
        }
        tokio::task::yield_now().await;
    }
}

/// The size of the release binary, and whether it is static.
pub fn binary_size(bin: &Path) -> Figure {
    let fig = Figure::new("binary_mb", "binary size", "MB", Budget::Max(5.5));
    let measure = || -> Result<Measured> {
        let bytes = std::fs::read(bin).map_err(|e| format!("{bin:?}: {e}"))?;
        let linkage = match has_interpreter(&bytes) {
            Some(true) => "dynamically linked",
            Some(false) => "static",
            None => "not a 64-bit ELF",
        };
        Ok(Measured {
            value: bytes.len() as f64 / 1e6,
            note: format!("{} bytes, {linkage}", bytes.len()),
            ..Measured::default()
        })
    };
    fig.with(measure())
}

/// Whether a 64-bit little-endian ELF asks for a program interpreter
/// (a `PT_INTERP` program header), i.e. is dynamically linked.
fn has_interpreter(elf: &[u8]) -> Option<bool> {
    if elf.get(..5)? != b"\x7fELF\x02" || *elf.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(elf.get(0x20..0x28)?.try_into().ok()?) as usize;
    let (size, count) = (u16_at(0x36)? as usize, u16_at(0x38)? as usize);
    let mut dynamic = false;
    for i in 0..count {
        let at = phoff + i * size;
        let kind = u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?);
        dynamic |= kind == 3;
    }
    Some(dynamic)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_elf_interpreter() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(super::has_interpreter(&me).is_some());
        assert_eq!(super::has_interpreter(b"not an elf"), None);
    }
}
