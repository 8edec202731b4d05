//! Resource metrics of the sandbox: what its cgroup allows and uses (cgroup
//! v2, else v1), falling back to the host's `/proc` figures. No HTTP here.
//!
//! CPU usage is a rate, so it is computed from the difference between two
//! samples: the previous call's (or the one taken at start-up) and now. A
//! call never sleeps to measure.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// One reading, as served by `GET /metrics`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Snapshot {
    pub cpu_count: f64,
    pub cpu_used_pct: f64,
    pub mem_total_mib: f64,
    pub mem_used_mib: f64,
    /// Where the figures come from: `cgroup2`, `cgroup1` or `proc`.
    pub source: &'static str,
}

/// Cumulative CPU time and the moment it was read.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    /// Busy CPU time in microseconds (cgroup) or jiffies (proc).
    busy: u64,
    /// For `/proc/stat` only: total jiffies, busy or not.
    total: Option<u64>,
}

/// Reads the figures from a file-system root (`/` in production, a fixture
/// tree in tests).
#[derive(Debug)]
pub struct Sampler {
    root: PathBuf,
    last: Mutex<(Option<CpuSample>, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Cgroup {
    V2(PathBuf),
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
        memory: PathBuf,
    },
    None,
}

impl Sampler {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let s = Sampler {
            root: root.into(),
            last: Mutex::new((None, 0.0)),
        };
        // A first sample so the first call has something to compare with.
        let first = s.cpu_sample(&s.cgroup());
        *s.last.lock().unwrap_or_else(|p| p.into_inner()) = (first, 0.0);
        s
    }

    fn read(&self, rel: impl AsRef<Path>) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    fn cgroup(&self) -> Cgroup {
        let text = self.read("proc/self/cgroup").unwrap_or_default();
        let base = self.root.join("sys/fs/cgroup");
        let mut v1: [Option<PathBuf>; 3] = [None, None, None];
        for line in text.lines() {
            let mut f = line.splitn(3, ':');
            let (Some(_), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let rel = path.trim_start_matches('/');
            if ctrls.is_empty() {
                // Inside a cgroup namespace the path may not exist as seen from
                // here; fall back to the mount's root, which is then our cgroup.
                let p = base.join(rel);
                let dir = if p.join("cpu.stat").exists() {
                    p
                } else {
                    base.clone()
                };
                if dir.join("cpu.stat").exists() || dir.join("memory.current").exists() {
                    return Cgroup::V2(dir);
                }
                continue;
            }
            for c in ctrls.split(',') {
                let slot = match c {
                    "cpu" => 0,
                    "cpuacct" => 1,
                    "memory" => 2,
                    _ => continue,
                };
                let mount = base.join(ctrls);
                let p = mount.join(rel);
                v1[slot] = Some(if p.exists() { p } else { mount });
            }
        }
        match v1 {
            [Some(cpu), Some(cpuacct), Some(memory)] => Cgroup::V1 {
                cpu,
                cpuacct,
                memory,
            },
            _ => Cgroup::None,
        }
    }

    /// CPUs this process may use: the affinity/online count, capped by a CFS quota.
    fn cpu_count(&self, cg: &Cgroup) -> f64 {
        let online = self.online_cpus();
        let quota = match cg {
            Cgroup::V2(dir) => self.read(dir.join("cpu.max")).and_then(|t| {
                let mut f = t.split_whitespace();
                let q = f.next()?.parse::<f64>().ok()?;
                let p = f.next()?.parse::<f64>().ok()?;
                (p > 0.0).then(|| q / p)
            }),
            Cgroup::V1 { cpu, .. } => {
                let q = self
                    .read(cpu.join("cpu.cfs_quota_us"))
                    .and_then(|t| t.trim().parse::<f64>().ok());
                let p = self
                    .read(cpu.join("cpu.cfs_period_us"))
                    .and_then(|t| t.trim().parse::<f64>().ok());
                match (q, p) {
                    (Some(q), Some(p)) if q > 0.0 && p > 0.0 => Some(q / p),
                    _ => None,
                }
            }
            Cgroup::None => None,
        };
        match quota {
            Some(q) => q.min(online),
            None => online,
        }
    }

    fn online_cpus(&self) -> f64 {
        if self.root == Path::new("/") {
            return std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        }
        // Fixture trees describe the CPU count in /proc/stat.
        let stat = self.read("proc/stat").unwrap_or_default();
        let n = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        n.max(1) as f64
    }

    fn cpu_sample(&self, cg: &Cgroup) -> Option<CpuSample> {
        let at = Instant::now();
        match cg {
            Cgroup::V2(dir) => {
                let stat = self.read(dir.join("cpu.stat"))?;
                let busy = field(&stat, "usage_usec")?;
                Some(CpuSample {
                    at,
                    busy,
                    total: None,
                })
            }
            Cgroup::V1 { cpuacct, .. } => {
                let ns: u64 = self
                    .read(cpuacct.join("cpuacct.usage"))?
                    .trim()
                    .parse()
                    .ok()?;
                Some(CpuSample {
                    at,
                    busy: ns / 1000,
                    total: None,
                })
            }
            Cgroup::None => {
                let stat = self.read("proc/stat")?;
                let line = stat.lines().next()?;
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                let total: u64 = v.iter().sum();
                let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
                Some(CpuSample {
                    at,
                    busy: total - idle,
                    total: Some(total),
                })
            }
        }
    }

    /// (total, used) memory in bytes.
    fn memory(&self, cg: &Cgroup) -> (u64, u64) {
        let meminfo = self.read("proc/meminfo").unwrap_or_default();
        let host_total = field(&meminfo, "MemTotal:").unwrap_or(0) * 1024;
        let host_avail = field(&meminfo, "MemAvailable:").unwrap_or(0) * 1024;
        let host = (host_total, host_total.saturating_sub(host_avail));
        let (limit, usage, inactive) = match cg {
            Cgroup::V2(dir) => (
                self.read(dir.join("memory.max"))
                    .and_then(|t| t.trim().parse::<u64>().ok()),
                self.read(dir.join("memory.current"))
                    .and_then(|t| t.trim().parse::<u64>().ok()),
                self.read(dir.join("memory.stat"))
                    .and_then(|t| field(&t, "inactive_file")),
            ),
            Cgroup::V1 { memory, .. } => (
                self.read(memory.join("memory.limit_in_bytes"))
                    .and_then(|t| t.trim().parse::<u64>().ok())
                    // v1 reports "no limit" as a huge page-rounded number.
                    .filter(|l| *l < (1u64 << 62)),
                self.read(memory.join("memory.usage_in_bytes"))
                    .and_then(|t| t.trim().parse::<u64>().ok()),
                self.read(memory.join("memory.stat"))
                    .and_then(|t| field(&t, "total_inactive_file")),
            ),
            Cgroup::None => return host,
        };
        let Some(usage) = usage else { return host };
        let total = match (limit, host_total) {
            (Some(l), 0) => l,
            (Some(l), h) => l.min(h),
            (None, h) => h,
        };
        (total, usage.saturating_sub(inactive.unwrap_or(0)))
    }

    /// A reading now. CPU usage is the average since the previous call.
    pub fn snapshot(&self) -> Snapshot {
        let cg = self.cgroup();
        let cpu_count = self.cpu_count(&cg);
        let now = self.cpu_sample(&cg);
        let pct = {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            let (prev, prev_pct) = *last;
            match (prev, now) {
                (Some(a), Some(b)) if b.at.duration_since(a.at).as_millis() >= 100 => {
                    let pct = rate(a, b, cpu_count);
                    *last = (Some(b), pct);
                    pct
                }
                // Too close to the previous call to measure: repeat its figure.
                (Some(_), Some(_)) => prev_pct,
                (_, b) => {
                    *last = (b, prev_pct);
                    prev_pct
                }
            }
        };
        let (total, used) = self.memory(&cg);
        Snapshot {
            cpu_count,
            cpu_used_pct: (pct * 10.0).round() / 10.0,
            mem_total_mib: mib(total),
            mem_used_mib: mib(used),
            source: match cg {
                Cgroup::V2(_) => "cgroup2",
                Cgroup::V1 { .. } => "cgroup1",
                Cgroup::None => "proc",
            },
        }
    }
}

fn rate(a: CpuSample, b: CpuSample, cpus: f64) -> f64 {
    let busy = b.busy.saturating_sub(a.busy) as f64;
    let pct = match (a.total, b.total) {
        (Some(ta), Some(tb)) if tb > ta => busy / (tb - ta) as f64 * 100.0,
        (Some(_), Some(_)) => 0.0,
        _ => {
            let wall_us = b.at.duration_since(a.at).as_micros() as f64;
            if wall_us <= 0.0 || cpus <= 0.0 {
                0.0
            } else {
                busy / (wall_us * cpus) * 100.0
            }
        }
    };
    pct.clamp(0.0, 100.0)
}

fn mib(bytes: u64) -> f64 {
    (bytes as f64 / (1024.0 * 1024.0) * 10.0).round() / 10.0
}

/// The number after `name` on the line that starts with it.
fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name)
                .filter(|r| r.starts_with([' ', '\t']) || name.ends_with(':'))
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// execd's own resident set size in KiB.
pub fn self_rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    field(&s, "VmRSS:").unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("execd-metrics-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        root
    }

    const MEMINFO: &str =
        "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n";
    const STAT4: &str = "cpu  100 0 100 800 0 0 0 0\ncpu0 1\ncpu1 1\ncpu2 1\ncpu3 1\n";

    #[test]
    fn cgroup_v2_limits_and_usage() {
        let root = tree(
            "v2",
            &[
                ("proc/self/cgroup", "0::/sandbox\n"),
                ("proc/meminfo", MEMINFO),
                ("proc/stat", STAT4),
                ("sys/fs/cgroup/sandbox/cpu.max", "150000 100000\n"),
                (
                    "sys/fs/cgroup/sandbox/cpu.stat",
                    "usage_usec 5000000\nuser_usec 1\n",
                ),
                ("sys/fs/cgroup/sandbox/memory.max", "1073741824\n"),
                ("sys/fs/cgroup/sandbox/memory.current", "536870912\n"),
                (
                    "sys/fs/cgroup/sandbox/memory.stat",
                    "anon 1\ninactive_file 134217728\n",
                ),
            ],
        );
        let s = Sampler::new(&root).snapshot();
        assert_eq!(s.source, "cgroup2");
        assert_eq!(s.cpu_count, 1.5);
        assert_eq!(s.mem_total_mib, 1024.0);
        assert_eq!(s.mem_used_mib, 384.0);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn cgroup_v2_unlimited_and_namespaced() {
        let root = tree(
            "v2max",
            &[
                // A cgroup namespace shows "/" while the files sit at the mount root.
                ("proc/self/cgroup", "0::/\n"),
                ("proc/meminfo", MEMINFO),
                ("proc/stat", STAT4),
                ("sys/fs/cgroup/cpu.max", "max 100000\n"),
                ("sys/fs/cgroup/cpu.stat", "usage_usec 1\n"),
                ("sys/fs/cgroup/memory.max", "max\n"),
                ("sys/fs/cgroup/memory.current", "1048576\n"),
            ],
        );
        let s = Sampler::new(&root).snapshot();
        assert_eq!((s.source, s.cpu_count), ("cgroup2", 4.0));
        assert_eq!(s.mem_total_mib, 16000.0, "no limit: the host's memory");
        assert_eq!(s.mem_used_mib, 1.0);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn cgroup_v1() {
        let root = tree(
            "v1",
            &[
                (
                    "proc/self/cgroup",
                    "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/x\n",
                ),
                ("proc/meminfo", MEMINFO),
                ("proc/stat", STAT4),
                (
                    "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us",
                    "200000\n",
                ),
                (
                    "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us",
                    "100000\n",
                ),
                (
                    "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpuacct.usage",
                    "123456789\n",
                ),
                (
                    "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes",
                    "9223372036854771712\n",
                ),
                (
                    "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes",
                    "209715200\n",
                ),
                (
                    "sys/fs/cgroup/memory/docker/abc/memory.stat",
                    "total_inactive_file 104857600\n",
                ),
            ],
        );
        let s = Sampler::new(&root).snapshot();
        assert_eq!((s.source, s.cpu_count), ("cgroup1", 2.0));
        assert_eq!((s.mem_total_mib, s.mem_used_mib), (16000.0, 100.0));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn proc_fallback_and_cpu_rate() {
        let root = tree(
            "proc",
            &[
                ("proc/self/cgroup", ""),
                ("proc/meminfo", MEMINFO),
                ("proc/stat", STAT4),
            ],
        );
        let s = Sampler::new(&root);
        let snap = s.snapshot();
        assert_eq!((snap.source, snap.cpu_count), ("proc", 4.0));
        assert_eq!((snap.mem_total_mib, snap.mem_used_mib), (16000.0, 8000.0));
        // 100 more busy jiffies out of 400 more total: 25 %.
        std::fs::write(
            root.join("proc/stat"),
            "cpu  200 0 100 1100 0 0 0 0\ncpu0 1\ncpu1 1\ncpu2 1\ncpu3 1\n",
        )
        .unwrap();
        let a = CpuSample {
            at: Instant::now(),
            busy: 200,
            total: Some(1000),
        };
        let b = CpuSample {
            at: a.at + std::time::Duration::from_secs(1),
            busy: 300,
            total: Some(1400),
        };
        assert_eq!(rate(a, b, 4.0), 25.0);
        let c = CpuSample {
            at: a.at,
            busy: 1_000_000,
            total: None,
        };
        let d = CpuSample {
            at: a.at + std::time::Duration::from_secs(2),
            busy: 3_000_000,
            total: None,
        };
        assert_eq!(rate(c, d, 2.0), 50.0, "2 s of CPU in 2 s on 2 CPUs");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn live_system_answers() {
        let s = Sampler::new("/").snapshot();
        assert!(s.cpu_count >= 1.0 && s.mem_total_mib > 0.0, "{s:?}");
        assert!(self_rss_kib() > 0);
    }
}
