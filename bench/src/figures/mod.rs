//! The figure groups. Each module measures its figures against baselines taken
//! in the same run and returns them as report rows.

pub mod code;
pub mod command;
pub mod files;
pub mod ping;
pub mod process;
pub mod scale;
pub mod sdk;
pub mod size;
pub mod stream;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use crate::report::Figure;
use crate::server::Server;

type Group = for<'a> fn(&'a Run) -> Pin<Box<dyn Future<Output = Vec<Figure>> + 'a>>;

/// The figure groups that load the one long-lived execd, in the order they
/// run. Peak RSS is read after each; start-up runs its own daemons.
pub const GROUPS: [(&str, Group); 8] = [
    ("ping", |r| Box::pin(ping::figures(r))),
    ("command", |r| Box::pin(command::figures(r))),
    ("stream", |r| Box::pin(stream::figures(r))),
    ("files", |r| Box::pin(files::figures(r))),
    ("code", |r| Box::pin(code::figures(r))),
    ("watch", |r| Box::pin(watch::figures(r))),
    ("sdk", |r| Box::pin(sdk::figures(r))),
    // Last: it loads execd far past the other groups, and reports its own
    // peak RSS instead of counting in the run's.
    ("scale", |r| Box::pin(scale::figures(r))),
];

/// How much work each figure does: the full run, or a quick `--smoke` check.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub smoke: bool,
}

const MIB: u64 = 1 << 20;

impl Plan {
    fn pick<T>(self, smoke: T, full: T) -> T {
        if self.smoke {
            smoke
        } else {
            full
        }
    }
    /// Repeats of a cheap figure (each repeat measures baseline and execd).
    pub fn trials(self) -> usize {
        self.pick(1, 7)
    }
    /// Repeats of a figure that moves hundreds of MiB.
    pub fn heavy_trials(self) -> usize {
        self.pick(1, 3)
    }
    /// How long one closed-loop load lasts.
    pub fn load_time(self) -> Duration {
        self.pick(Duration::from_millis(400), Duration::from_millis(1500))
    }
    pub fn round_trips(self) -> usize {
        self.pick(20, 300)
    }
    pub fn ttfb_runs(self) -> usize {
        self.pick(2, 8)
    }
    pub fn stream_bytes(self) -> u64 {
        self.pick(8 * MIB, 256 * MIB)
    }
    pub fn fanout_bytes(self) -> u64 {
        self.pick(4 * MIB, 64 * MIB)
    }
    pub fn file_bytes(self) -> u64 {
        self.pick(32 * MIB, 1024 * MIB)
    }
    /// Blocks the `/code` round trips are split into, alternating with the
    /// baseline's.
    pub fn pick_blocks(self) -> usize {
        self.pick(1, 6)
    }
    /// Code contexts created (each against one started by jupyter_client).
    pub fn pick_creations(self) -> usize {
        self.pick(2, 5)
    }
    /// What the `/code` streaming cell prints.
    pub fn code_stream_bytes(self) -> u64 {
        self.pick(4 * MIB, 64 * MIB)
    }
    pub fn startups(self) -> usize {
        self.pick(3, 10)
    }
}

/// What every figure group gets.
pub struct Run {
    pub plan: Plan,
    pub bin: PathBuf,
    /// The daemon under test, one process for the whole run.
    pub execd: Server,
    /// A directory for the files figures, on the same file system as target/.
    pub scratch: PathBuf,
}

/// Bytes per second as MB/s (10^6), the unit of every throughput figure.
pub fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// `bash -c SCRIPT` with stdin from /dev/null and stdout/stderr piped, the way
/// execd runs a command; the direct baseline for every command figure.
pub fn bash(script: &str) -> std::process::Command {
    use std::process::Stdio;
    let mut cmd = std::process::Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs blocking work off the runtime's workers.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> crate::client::Result<T> + Send + 'static,
) -> crate::client::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
}
