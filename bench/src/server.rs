//! The processes under test: execd itself and the bare hyper baseline server,
//! each started as a child that prints its listening address on stdout.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::Result;

/// A running server child. Dropping it sends SIGTERM and reaps it.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    /// Just before `exec`.
    pub started: Instant,
}

impl Server {
    /// Starts `cmd` and waits for a stdout line ending in `HOST:PORT`. Its
    /// stderr (execd's log) goes to `target/bench/server.log`.
    pub fn start(mut cmd: Command) -> Result<Server> {
        let log = std::fs::create_dir_all(target_dir().join("bench"))
            .and_then(|()| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target_dir().join("bench").join("server.log"))
            })
            .map_or_else(|_| Stdio::null(), Stdio::from);
        let what = format!("{:?}", cmd.get_program());
        let t0 = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {what}: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        let read = BufReader::new(stdout).read_line(&mut line);
        let addr = line
            .split_whitespace()
            .last()
            .and_then(|a| a.parse::<SocketAddr>().ok());
        match (read, addr) {
            (Ok(_), Some(addr)) => Ok(Server {
                child,
                addr,
                started: t0,
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{what} printed no address (got {line:?})"))
            }
        }
    }

    pub fn execd(bin: &Path) -> Result<Server> {
        let mut cmd = Command::new(bin);
        cmd.args(["--port", "0", "--bind", "127.0.0.1"]);
        // The code figures' kernels, when there is a kernel venv.
        if let Ok((share, _)) = crate::figures::code::kernel_venv() {
            cmd.env("JUPYTER_PATH", share);
        }
        Server::start(cmd)
    }

    /// The harness itself in `--bare-server` mode.
    pub fn bare() -> Result<Server> {
        let me = std::env::current_exe().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(me);
        cmd.arg("--bare-server");
        Server::start(cmd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of `/proc/PID/status` in KiB, e.g. `VmRSS` or `VmHWM`.
    pub fn status_kib(&self, field: &str) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        text.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .ok_or_else(|| format!("{path} has no {field}"))
    }
}

impl Server {
    /// CPU time (user + system) the process has used, in seconds.
    pub fn cpu_secs(&self) -> Result<f64> {
        let path = format!("/proc/{}/stat", self.pid());
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        // Fields after the parenthesised command name; utime and stime are 14 and 15.
        let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
        let ticks: Vec<u64> = rest
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|f| f.parse().ok())
            .collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        match ticks[..] {
            [u, s] => Ok((u + s) as f64 / hz),
            _ => Err(format!("{path}: no utime/stime")),
        }
    }

    /// Resets VmHWM to the current RSS (`clear_refs` 5), so that the next
    /// reading is the peak since now.
    pub fn reset_peak(&self) -> Result<()> {
        let path = format!("/proc/{}/clear_refs", self.pid());
        std::fs::write(&path, "5").map_err(|e| format!("{path}: {e}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which is not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace root, where `target/` lives.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ has a parent")
        .to_path_buf()
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The flags the image build uses (see the Dockerfile): a static, non-PIE
/// binary, which is what ships and what the budgets are for.
const STATIC_RUSTFLAGS: &str = "-C target-feature=+crt-static -C relocation-model=static";

/// Builds the daemon as it ships (static, see [`STATIC_RUSTFLAGS`]) for the
/// host's triple and returns its path. Where that build fails (no static C
/// library installed), falls back to the ordinary dynamic release build and
/// says so.
pub fn build_execd() -> Result<PathBuf> {
    build_execd_with(&[])
}

/// [`build_execd`] with extra environment for cargo (the size figures build
/// the same binary with its symbol table kept).
pub fn build_execd_with(env: &[(&str, &str)]) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if let Some(triple) = host_triple() {
        eprintln!(
            "building execd: RUSTFLAGS=\"{STATIC_RUSTFLAGS}\" cargo build --release --target {triple} --bin execd"
        );
        let status = Command::new(&cargo)
            .args(["build", "--release", "--target", &triple, "--bin", "execd"])
            .env("RUSTFLAGS", STATIC_RUSTFLAGS)
            .envs(env.iter().copied())
            .current_dir(workspace_root())
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if status.success() {
            return Ok(target_dir().join(&triple).join("release").join("execd"));
        }
        eprintln!("the static build failed ({status}); measuring the dynamic build instead");
    }
    eprintln!("building execd: cargo build --release -p execd");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "execd"])
        .envs(env.iter().copied())
        .current_dir(workspace_root())
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    let bin = target_dir().join("release").join("execd");
    if !status.success() {
        return Err(format!("cargo build --release -p execd failed: {status}"));
    }
    Ok(bin)
}

/// The host's target triple, from `rustc -vV`.
fn host_triple() -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_string)
}

/// CPU time (user + system) this harness process has used, in seconds.
pub fn own_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}
