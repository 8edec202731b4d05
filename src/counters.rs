//! Process-wide counters for the Prometheus exposition of `/metrics`:
//! lock-free atomics in fixed tables, so counting costs a relaxed add on
//! the paths it sits on (requests, command ends, streamed frames).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static STARTED: AtomicU64 = AtomicU64::new(0);

/// How a command ended, as the `outcome` label.
pub const OUTCOMES: [&str; 6] = [
    "success",
    "failure",
    "signaled",
    "timed_out",
    "interrupted",
    "spawn_failed",
];
static FINISHED: [AtomicU64; OUTCOMES.len()] = [const { AtomicU64::new(0) }; OUTCOMES.len()];

/// Upper bounds (seconds) of the command-duration histogram's buckets.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
];
static DURATION: [AtomicU64; DURATION_BUCKETS.len()] =
    [const { AtomicU64::new(0) }; DURATION_BUCKETS.len()];
static DURATION_SUM_US: AtomicU64 = AtomicU64::new(0);
static DURATION_COUNT: AtomicU64 = AtomicU64::new(0);

static STREAMED: AtomicU64 = AtomicU64::new(0);

static SENDFILE: AtomicU64 = AtomicU64::new(0);

/// How processes were started, the `via` label: nix's `posix_spawn`, the
/// vfork spawn made with `clone`, or with `clone3` into a cgroup.
pub const SPAWN_WAYS: [&str; 3] = ["posix_spawn", "vfork", "clone3"];
pub const SPAWN_POSIX: usize = 0;
pub const SPAWN_VFORK: usize = 1;
pub const SPAWN_CLONE3: usize = 2;
static SPAWNS: [AtomicU64; SPAWN_WAYS.len()] = [const { AtomicU64::new(0) }; SPAWN_WAYS.len()];

/// Route classes, the `route` label: the first path segment, grouped.
pub const CLASSES: [&str; 17] = [
    "health",
    "init",
    "metrics",
    "command",
    "operations",
    "code",
    "session",
    "files",
    "directories",
    "filesystem",
    "pty",
    "proxy",
    "agent_sandbox",
    "sandboxd",
    "grpc",
    "e2b",
    "other",
];
/// Statuses counted by code; any other is counted as `other`.
const STATUSES: [u16; 23] = [
    101, 200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 408, 409, 410, 413, 416, 422, 429, 500,
    502, 503, 504, 0,
];
static REQUESTS: [[AtomicU64; STATUSES.len()]; CLASSES.len()] =
    [const { [const { AtomicU64::new(0) }; STATUSES.len()] }; CLASSES.len()];

pub fn command_started() {
    STARTED.fetch_add(1, Relaxed);
}

/// A command's end: its outcome and duration.
pub fn command_finished(outcome: usize, duration: std::time::Duration) {
    if let Some(c) = FINISHED.get(outcome) {
        c.fetch_add(1, Relaxed);
    }
    let secs = duration.as_secs_f64();
    if let Some(i) = DURATION_BUCKETS.iter().position(|b| secs <= *b) {
        DURATION[i].fetch_add(1, Relaxed);
    }
    DURATION_SUM_US.fetch_add(duration.as_micros().min(u64::MAX as u128) as u64, Relaxed);
    DURATION_COUNT.fetch_add(1, Relaxed);
}

/// A process started (exec'd or failed in the child) the given way.
pub fn spawned(way: usize) {
    if let Some(c) = SPAWNS.get(way) {
        c.fetch_add(1, Relaxed);
    }
}

pub fn streamed(n: usize) {
    STREAMED.fetch_add(n as u64, Relaxed);
}

/// File bytes sent with `sendfile` (zero-copy downloads).
pub fn sent_from_file(n: usize) {
    SENDFILE.fetch_add(n as u64, Relaxed);
}

/// The route class of a request path.
pub fn class_of(path: &str) -> usize {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let name = match first {
        "" | "ping" | "ready" | "openapi.yaml" => "health",
        "internal" | "init" => "init",
        "metrics" => "metrics",
        "command" => "command",
        "operations" => "operations",
        "code" => "code",
        "session" => "session",
        "files" => "files",
        "directories" => "directories",
        "pty" => "pty",
        "proxy" => "proxy",
        "execute" | "upload" | "download" | "list" | "exists" => "agent_sandbox",
        "v1" if path.starts_with("/v1/filesystem/") => "filesystem",
        "v1" => "sandboxd",
        _ => "other",
    };
    CLASSES
        .iter()
        .position(|c| *c == name)
        .unwrap_or(CLASSES.len() - 1)
}

pub const GRPC: usize = 14;
/// Every request on the `--e2b-port` listener.
pub const E2B: usize = 15;

pub fn request(class: usize, status: u16) {
    let s = STATUSES
        .iter()
        .position(|x| *x == status)
        .unwrap_or(STATUSES.len() - 1);
    if let Some(row) = REQUESTS.get(class) {
        row[s].fetch_add(1, Relaxed);
    }
}

/// Appends the counters in the Prometheus text format (0.0.4).
pub fn render(out: &mut String) {
    let _ = writeln!(
        out,
        "# HELP execd_commands_started_total Commands started (hooks and code runs included)."
    );
    let _ = writeln!(out, "# TYPE execd_commands_started_total counter");
    let _ = writeln!(
        out,
        "execd_commands_started_total {}",
        STARTED.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP execd_commands_finished_total Commands finished, by outcome."
    );
    let _ = writeln!(out, "# TYPE execd_commands_finished_total counter");
    for (i, o) in OUTCOMES.iter().enumerate() {
        let _ = writeln!(
            out,
            "execd_commands_finished_total{{outcome=\"{o}\"}} {}",
            FINISHED[i].load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP execd_command_duration_seconds How long commands ran."
    );
    let _ = writeln!(out, "# TYPE execd_command_duration_seconds histogram");
    let mut cumulative = 0;
    for (i, b) in DURATION_BUCKETS.iter().enumerate() {
        cumulative += DURATION[i].load(Relaxed);
        let _ = writeln!(
            out,
            "execd_command_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
        );
    }
    let count = DURATION_COUNT.load(Relaxed);
    // A reading between two updates could show fewer in +Inf than in the
    // last bucket: +Inf is never below it.
    let _ = writeln!(
        out,
        "execd_command_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        count.max(cumulative)
    );
    let _ = writeln!(
        out,
        "execd_command_duration_seconds_sum {}",
        DURATION_SUM_US.load(Relaxed) as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "execd_command_duration_seconds_count {}",
        count.max(cumulative)
    );
    let _ = writeln!(
        out,
        "# HELP execd_spawns_total Processes started, by the way they were made."
    );
    let _ = writeln!(out, "# TYPE execd_spawns_total counter");
    for (i, w) in SPAWN_WAYS.iter().enumerate() {
        let _ = writeln!(
            out,
            "execd_spawns_total{{via=\"{w}\"}} {}",
            SPAWNS[i].load(Relaxed)
        );
    }
    let _ = writeln!(out, "# HELP execd_streamed_bytes_total Bytes sent in streaming response bodies (event streams, watches).");
    let _ = writeln!(out, "# TYPE execd_streamed_bytes_total counter");
    let _ = writeln!(out, "execd_streamed_bytes_total {}", STREAMED.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP execd_sendfile_bytes_total File bytes sent with sendfile (zero-copy downloads)."
    );
    let _ = writeln!(out, "# TYPE execd_sendfile_bytes_total counter");
    let _ = writeln!(out, "execd_sendfile_bytes_total {}", SENDFILE.load(Relaxed));
    let _ = writeln!(
        out,
        "# HELP execd_http_requests_total Requests answered, by route class and status."
    );
    let _ = writeln!(out, "# TYPE execd_http_requests_total counter");
    for (c, class) in CLASSES.iter().enumerate() {
        for (s, status) in STATUSES.iter().enumerate() {
            let n = REQUESTS[c][s].load(Relaxed);
            if n == 0 {
                continue;
            }
            let status = if *status == 0 {
                "other".to_string()
            } else {
                status.to_string()
            };
            let _ = writeln!(
                out,
                "execd_http_requests_total{{route=\"{class}\",status=\"{status}\"}} {n}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_classes() {
        assert_eq!(CLASSES[class_of("/command/x/logs")], "command");
        assert_eq!(CLASSES[class_of("/v1/filesystem/1/2/files")], "filesystem");
        assert_eq!(CLASSES[class_of("/v1/files/a")], "sandboxd");
        assert_eq!(CLASSES[class_of("/ping")], "health");
        assert_eq!(CLASSES[class_of("/internal/init")], "init");
        assert_eq!(CLASSES[class_of("/nope")], "other");
        assert_eq!(CLASSES[GRPC], "grpc");
    }
}
