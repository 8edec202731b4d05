//! Figures, their budgets, and how a run is written out: a table on stdout,
//! `report.json`, and one line appended to `history.jsonl`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::stats::{self, fmt_num};

/// What a figure must meet. Ratios are value / baseline.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(tag = "kind", content = "limit", rename_all = "snake_case")]
pub enum Budget {
    /// Reported only.
    None,
    /// value / baseline >= limit.
    MinRatio(f64),
    /// value - baseline <= limit (same unit as the value).
    MaxOver(f64),
    /// value <= limit.
    Max(f64),
    /// value >= limit.
    Min(f64),
}

impl Budget {
    fn describe(self, unit: &str) -> String {
        match self {
            Budget::None => "report".into(),
            Budget::MinRatio(r) => format!(">= {:.0} %", r * 100.0),
            Budget::MaxOver(d) => format!("<= base + {} {unit}", fmt_num(d)),
            Budget::Max(m) => format!("<= {} {unit}", fmt_num(m)),
            Budget::Min(m) => format!(">= {} {unit}", fmt_num(m)),
        }
    }
}

/// The outcome of one figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", content = "why", rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    Report,
    /// Not applicable: the route is missing or an optional tool is absent.
    /// Never fails the run.
    NotApplicable(String),
    /// The figure could not be produced. Fails the run.
    Error(String),
}

/// The error a measurement returns when execd answers 404 for its route.
pub const ROUTE_MISSING: &str = "route missing";

/// What a measurement found, before it is judged.
#[derive(Debug, Default)]
pub struct Measured {
    pub value: f64,
    pub baseline: Option<f64>,
    pub p95: Option<f64>,
    pub note: String,
}

impl Measured {
    /// The medians of `value` and `baseline` samples, with their spread as the note.
    pub fn medians(value: &[f64], baseline: &[f64]) -> Measured {
        Measured {
            value: stats::median(value).unwrap_or(f64::NAN),
            baseline: stats::median(baseline),
            p95: None,
            note: if baseline.is_empty() {
                stats::spread(value)
            } else if value.len() == baseline.len() && value.len() > 1 {
                // Trials are measured in pairs, back to back: the ratio of
                // each pair shows how much of a verdict is the machine's noise.
                let pairs: Vec<f64> = value.iter().zip(baseline).map(|(v, b)| v / b).collect();
                format!(
                    "execd {}, baseline {}; ratio per trial pair {} (median {:.3})",
                    stats::spread(value),
                    stats::spread(baseline),
                    stats::range(&pairs, 3),
                    stats::median(&pairs).unwrap_or(f64::NAN)
                )
            } else {
                format!(
                    "execd {}, baseline {}",
                    stats::spread(value),
                    stats::spread(baseline)
                )
            },
        }
    }

    pub fn note(mut self, note: impl AsRef<str>) -> Self {
        if !note.as_ref().is_empty() {
            self.note = format!("{}; {}", self.note, note.as_ref());
        }
        self
    }
}

/// One row of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub id: &'static str,
    pub label: &'static str,
    pub unit: &'static str,
    /// Median over repeated runs.
    pub value: Option<f64>,
    /// 95th percentile, where a distribution is meaningful.
    pub p95: Option<f64>,
    pub baseline: Option<f64>,
    pub ratio: Option<f64>,
    pub budget: Budget,
    #[serde(flatten)]
    pub status: Status,
    pub note: String,
}

impl Figure {
    pub fn new(id: &'static str, label: &'static str, unit: &'static str, budget: Budget) -> Self {
        Figure {
            id,
            label,
            unit,
            value: None,
            p95: None,
            baseline: None,
            ratio: None,
            budget,
            status: Status::Error("not measured".into()),
            note: String::new(),
        }
    }

    /// Sets the measured value and baseline and judges them against the budget.
    pub fn measured(mut self, value: f64, baseline: Option<f64>) -> Self {
        self.value = Some(value);
        self.baseline = baseline;
        self.ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
        let ok = match (self.budget, baseline) {
            (Budget::None, _) => None,
            (Budget::MinRatio(r), Some(_)) => self.ratio.map(|x| x >= r),
            (Budget::MaxOver(d), Some(b)) => Some(value - b <= d),
            (Budget::Max(m), _) => Some(value <= m),
            (Budget::Min(m), _) => Some(value >= m),
            (_, None) => None,
        };
        self.status = match ok {
            Some(true) => Status::Pass,
            Some(false) => Status::Fail,
            None => Status::Report,
        };
        self
    }

    pub fn p95(mut self, p95: Option<f64>) -> Self {
        self.p95 = p95;
        self
    }

    pub fn note(mut self, note: impl Into<String>) -> Self {
        let note = note.into();
        if !self.note.is_empty() && !note.is_empty() {
            self.note.push_str("; ");
        }
        self.note.push_str(&note);
        self
    }

    pub fn not_applicable(mut self, why: impl Into<String>) -> Self {
        self.status = Status::NotApplicable(why.into());
        self
    }

    pub fn error(mut self, why: impl std::fmt::Display) -> Self {
        self.status = Status::Error(why.to_string());
        self
    }

    /// This figure from a measurement that may have failed.
    pub fn with(self, r: Result<Measured, String>) -> Figure {
        match r {
            Ok(m) => self.measured(m.value, m.baseline).p95(m.p95).note(m.note),
            Err(e) if e == ROUTE_MISSING => self.not_applicable(e),
            Err(e) => self.error(e),
        }
    }

    fn status_text(&self) -> String {
        match &self.status {
            Status::Pass => "pass".into(),
            Status::Fail => "FAIL".into(),
            Status::Report => "-".into(),
            Status::NotApplicable(why) => format!("n/a ({why})"),
            Status::Error(why) => format!("ERROR ({why})"),
        }
    }
}

fn cell(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), fmt_num)
}

/// The human-readable table.
pub fn table(figures: &[Figure]) -> String {
    let head = [
        "figure", "unit", "value", "p95", "baseline", "ratio", "budget", "result",
    ];
    let rows: Vec<[String; 8]> = figures
        .iter()
        .map(|f| {
            let missing = matches!(f.status, Status::NotApplicable(_) | Status::Error(_));
            let v = |x: Option<f64>| if missing { "-".into() } else { cell(x) };
            [
                f.label.to_string(),
                f.unit.to_string(),
                v(f.value),
                v(f.p95),
                v(f.baseline),
                f.ratio
                    .filter(|_| !missing)
                    .map_or_else(|| "-".into(), |r| format!("{r:.3}")),
                f.budget.describe(f.unit),
                f.status_text(),
            ]
        })
        .collect();
    let mut widths = head.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[String]| {
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            let sep = if i == 0 { "" } else { "  " };
            if (2..=5).contains(&i) {
                let _ = write!(out, "{sep}{c:>w$}");
            } else {
                let _ = write!(out, "{sep}{c:<w$}");
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&head.map(String::from));
    line(&widths.map(|w| "-".repeat(w)));
    for r in &rows {
        line(r);
    }
    let notes: Vec<String> = figures
        .iter()
        .filter(|f| !f.note.is_empty())
        .map(|f| format!("  {}: {}", f.label, f.note))
        .collect();
    if !notes.is_empty() {
        out.push_str("\nnotes:\n");
        out.push_str(&notes.join("\n"));
        out.push('\n');
    }
    out
}

/// Facts about the machine a run was taken on.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, v)| v.trim());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu": cpu,
        "kernel": kernel.trim(),
    })
}

/// CPU time the hypervisor gave to other guests (`steal` in `/proc/stat`)
/// while each figure group ran, as a share of all CPU time. On a shared VM
/// this says which groups' figures are noisy: a few percent of steal can move
/// a throughput ratio by more than that.
pub struct Steal {
    last: Option<CpuTimes>,
    groups: Vec<(&'static str, f64)>,
}

/// Aggregate CPU time from `/proc/stat`, in ticks.
#[derive(Clone, Copy, Debug, PartialEq)]
struct CpuTimes {
    total: u64,
    steal: u64,
}

impl Steal {
    /// Starts the first interval.
    pub fn start() -> Steal {
        Steal {
            last: read_cpu_times(),
            groups: Vec::new(),
        }
    }

    /// Ends the interval of `group` and starts the next.
    pub fn after(&mut self, group: &'static str) {
        let now = read_cpu_times();
        if let (Some(a), Some(b)) = (self.last, now) {
            let total = b.total.saturating_sub(a.total);
            if total > 0 {
                let steal = b.steal.saturating_sub(a.steal);
                self.groups
                    .push((group, 100.0 * steal as f64 / total as f64));
            }
        }
        self.last = now;
    }

    /// `ping 0.4 %, command 2.1 %, ...`, or `None` when nothing was read.
    pub fn summary(&self) -> Option<String> {
        (!self.groups.is_empty()).then(|| {
            self.groups
                .iter()
                .map(|(g, p)| format!("{g} {p:.1} %"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }

    pub fn json(&self) -> Value {
        self.groups
            .iter()
            .map(|(g, p)| (g.to_string(), json!((p * 10.0).round() / 10.0)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_times(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `cpu` line: user nice system idle iowait irq softirq steal [guest...];
/// guest time is already counted in user time, so the total stops at steal.
fn parse_cpu_times(stat: &str) -> Option<CpuTimes> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    (fields.len() == 8).then(|| CpuTimes {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

/// Writes `report.json` and appends to `history.jsonl` in `dir`.
pub fn save(dir: &Path, run: &Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(run).map_err(std::io::Error::other)?,
    )?;
    let mut history = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("history.jsonl"))?;
    let mut line = serde_json::to_vec(run).map_err(std::io::Error::other)?;
    line.push(b'\n');
    history.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_times_from_proc_stat() {
        let stat = "cpu  2473548 265982 550473 952156 32908 0 37734 156640 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n";
        let t = parse_cpu_times(stat).expect("parsed");
        assert_eq!(t.steal, 156640);
        assert_eq!(
            t.total,
            2473548 + 265982 + 550473 + 952156 + 32908 + 37734 + 156640
        );
        assert_eq!(parse_cpu_times("cpu  1 2 3\n"), None);
        assert_eq!(parse_cpu_times("intr 5\n"), None);
    }

    #[test]
    fn budgets_judge_values() {
        let f = Figure::new("a", "a", "x", Budget::MinRatio(0.9)).measured(95.0, Some(100.0));
        assert_eq!(f.status, Status::Pass);
        let f = Figure::new("a", "a", "x", Budget::MinRatio(0.9)).measured(80.0, Some(100.0));
        assert_eq!(f.status, Status::Fail);
        let f = Figure::new("a", "a", "ms", Budget::MaxOver(0.5)).measured(2.6, Some(2.0));
        assert_eq!(f.status, Status::Fail);
        let f = Figure::new("a", "a", "MiB", Budget::Max(4.0)).measured(3.0, None);
        assert_eq!(f.status, Status::Pass);
        let f = Figure::new("a", "a", "s", Budget::None).measured(3.0, Some(1.0));
        assert_eq!(f.status, Status::Report);
        assert_eq!(f.ratio, Some(3.0));
    }

    #[test]
    fn table_shows_missing_routes() {
        let f = Figure::new("up", "upload", "MB/s", Budget::MinRatio(0.8))
            .not_applicable("route missing");
        let t = table(&[f]);
        assert!(t.contains("n/a (route missing)"), "{t}");
    }
}
