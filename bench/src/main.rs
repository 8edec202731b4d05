//! execd-bench: every execd figure beside a baseline measured in the same run.
//!
//! `cargo run --release -p execd-bench [-- --smoke] [--execd PATH] [--svg PATH]`
//!
//! The run never fails on a number: it exits non-zero only when a figure
//! could not be produced at all. A route execd does not have yet (404) is
//! reported as "n/a (route missing)".

mod bare;
mod client;
mod figures;
mod report;
mod server;
mod stats;
mod svg;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use figures::{Plan, Run};
use report::Status;
use serde_json::json;

const HELP: &str = "\
execd-bench: execd's figures beside baselines measured in the same run

usage: execd-bench [--smoke] [--execd PATH] [--svg PATH]

  --smoke        small sizes and short loads; only checks every figure is produced
  --execd PATH   the daemon binary (default: the static release build, as shipped)
  --svg PATH     also plot the history of key ratios into an SVG file
  --only GROUPS  only these figure groups, comma-separated (for profiling):
                 ping, command, stream, files, code, watch, sdk, scale, startup, size;
                 not saved to history (sdk needs the SDK venv: EXECD_SDK_VENV,
                 default target/sdk-venv; its isolated-session figures need root)
                 (code needs EXECD_KERNEL_VENV, a venv made by tests/kernel-venv.sh;
                 without it its figures are n/a)
  --bare-server  (internal) run the bare hyper baseline server
";

struct Args {
    smoke: bool,
    execd: Option<PathBuf>,
    svg: Option<PathBuf>,
    only: Option<String>,
}

impl Args {
    fn wants(&self, group: &str) -> bool {
        self.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|g| g == group))
    }
}

enum Mode {
    Bench(Args),
    BareServer,
    Help,
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Mode, String> {
    let mut args = Args {
        smoke: false,
        execd: None,
        svg: None,
        only: None,
    };
    while let Some(a) = it.next() {
        let mut path = |flag: &str| {
            it.next()
                .map(PathBuf::from)
                .ok_or(format!("{flag} needs a path"))
        };
        match a.as_str() {
            "--smoke" => args.smoke = true,
            "--execd" => args.execd = Some(path("--execd")?),
            "--svg" => args.svg = Some(path("--svg")?),
            "--only" => args.only = Some(it.next().ok_or("--only needs a list")?),
            "--bare-server" => return Ok(Mode::BareServer),
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Mode::Bench(args))
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Bench(a)) => a,
        Ok(Mode::BareServer) => {
            return match bare::run() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bare server: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Ok(Mode::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("execd-bench: {e}\n\n{HELP}");
            return ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(bench(&args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("execd-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft open-files limit to the hard one.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Runs every figure group, prints and saves the report; `Ok(false)` when
/// some figure could not be produced.
async fn bench(args: &Args) -> Result<bool, String> {
    let out = server::target_dir().join("bench");
    // The size groups read a copy of the same build with its symbol table,
    // built first (the shipped build then replaces it at the same path).
    let symbols = match &args.execd {
        Some(_) => Err("n/a (--execd given: the size groups need a build of this checkout)".into()),
        None if args.wants("size") => figures::size::build_with_symbols().and_then(|b| {
            std::fs::create_dir_all(&out).map_err(|e| format!("{out:?}: {e}"))?;
            let copy = out.join("execd-with-symbols");
            std::fs::copy(&b, &copy).map_err(|e| format!("{copy:?}: {e}"))?;
            Ok(copy)
        }),
        None => Err("not asked for".into()),
    };
    let bin = match &args.execd {
        Some(p) => p.clone(),
        None => server::build_execd()?,
    };
    let bin = std::fs::canonicalize(&bin).map_err(|e| format!("{bin:?}: {e}"))?;
    let scratch = out.join("tmp");
    std::fs::create_dir_all(&scratch).map_err(|e| format!("{scratch:?}: {e}"))?;
    let plan = Plan { smoke: args.smoke };
    let started = SystemTime::now();
    eprintln!(
        "execd-bench: {} run of {}",
        if plan.smoke { "smoke" } else { "full" },
        bin.display()
    );

    // Read cold, as a container start reads it (see `idle_rss`).
    let cold = figures::process::drop_from_page_cache(&bin);
    // The scale figures hold 10,000 connections, and execd inherits the limit.
    raise_fd_limit();
    let execd = server::Server::execd(&bin)?;
    let mut figs = vec![figures::process::binary_size(&bin)];
    if args.wants("size") {
        figs.extend(match &symbols {
            Ok(with_symbols) => figures::size::figures(with_symbols, &bin),
            Err(e) => figures::size::figures_unavailable(e),
        });
    }
    figs.push(figures::process::idle_rss(&execd, cold).await);
    let run = Run {
        plan,
        bin: bin.clone(),
        execd,
        scratch,
    };
    let mut peak = figures::process::PeakRss::default();
    peak.after("start", &run.execd);
    let mut steal = report::Steal::start();
    for (name, measure) in figures::GROUPS {
        if args.wants(name) {
            eprintln!("  measuring {name} ...");
            figs.extend(measure(&run).await);
            if name == "scale" {
                // Its figures report their own peak; the run's budget is
                // for ordinary use.
                let _ = run.execd.reset_peak();
            } else {
                peak.after(name, &run.execd);
            }
            steal.after(name);
        }
    }
    figs.push(peak.figure());
    if args.wants("startup") {
        figs.push(figures::process::startup(&run).await);
    }
    drop(run);

    print!("{}", report::table(&figs));
    if let Some(s) = steal.summary() {
        println!("CPU steal (time the hypervisor gave to other guests): {s}");
    }
    let secs = started
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let record = json!({
        "unix_time": secs,
        "smoke": plan.smoke,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "execd": bin,
        "commit": git_head(),
        "machine": report::machine(),
        "steal_percent": steal.json(),
        "figures": figs,
    });
    if args.only.is_none() {
        report::save(&out, &record).map_err(|e| format!("{out:?}: {e}"))?;
        println!("\nreport: {}", out.join("report.json").display());
    }
    if let Some(path) = &args.svg {
        svg::write(&out.join("history.jsonl"), path).map_err(|e| format!("{path:?}: {e}"))?;
        println!("history plot: {}", path.display());
    }
    Ok(!figs.iter().any(|f| matches!(f.status, Status::Error(_))))
}

fn git_head() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(server::workspace_root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<Mode, String> {
        parse_args(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments() {
        let Ok(Mode::Bench(a)) = parse(&["--smoke", "--execd", "/x", "--svg", "h.svg"]) else {
            panic!("not a bench run");
        };
        assert!(a.smoke);
        assert_eq!(a.execd, Some(PathBuf::from("/x")));
        assert_eq!(a.svg, Some(PathBuf::from("h.svg")));
        assert!(matches!(parse(&["--bare-server"]), Ok(Mode::BareServer)));
        assert!(parse(&["--execd"]).is_err());
        assert!(parse(&["--bogus"]).is_err());
    }
}
