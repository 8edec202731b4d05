use std::process::ExitCode;

use execd::config::{self, Parsed, HELP};

fn main() -> ExitCode {
    // The isolated-session helper modes (a fresh, single-threaded execd).
    let args: Vec<String> = std::env::args().take(3).collect();
    if let Some(code) = execd::isolate::helper::main_if_helper(&args) {
        return ExitCode::from(u8::try_from(code).unwrap_or(125));
    }
    let mut cfg = match config::parse(std::env::args_os().skip(1), |k| std::env::var(k).ok()) {
        Ok(Parsed::Run(c)) => *c,
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Ok(Parsed::Install(dest)) => {
            return match install(&dest) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("execd: install to {}: {e}", dest.display());
                    ExitCode::FAILURE
                }
            };
        }
        Ok(Parsed::Version) => {
            println!("execd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("execd: {e}\nTry 'execd --help'.");
            return ExitCode::from(2);
        }
    };
    cloexec_inherited();
    // Still the only thread: the environment may change safely.
    let scrubbed = execd::daemon::scrub_secrets();
    execd::daemon::prepare_environment(&mut cfg);
    let undumpable = execd::daemon::set_undumpable();
    limit_malloc_arenas();
    if let Err(e) = init_logging(&cfg) {
        eprintln!("execd: cannot open log file: {e}");
        return ExitCode::from(2);
    }
    if let Err(e) = scrubbed {
        tracing::warn!(error = %e, "cannot overwrite the access token in /proc/self/cmdline and environ");
    }
    if let Err(e) = undumpable {
        tracing::warn!(error = %e, "cannot make the process non-dumpable");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(1, 4),
        )
        .max_blocking_threads(64)
        .thread_stack_size(512 * 1024)
        .enable_all()
        .build();
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("execd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execd::daemon::run(cfg)) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("execd: {e}");
            tracing::error!(error = %e, "execd failed");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(cfg: &config::Config) -> std::io::Result<()> {
    use tracing::Level;
    let level = match cfg.log_level {
        0..=3 => Level::ERROR,
        4 => Level::WARN,
        5 | 6 => Level::INFO,
        _ => Level::DEBUG,
    };
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    let (writer, ansi) = match &cfg.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            (BoxMakeWriter::new(std::sync::Mutex::new(file)), false)
        }
        None => (BoxMakeWriter::new(std::io::stderr), true),
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(writer);
    if cfg.log_json {
        builder
            .with_ansi(false)
            .event_format(execd::logfmt::JsonLines)
            .init();
    } else {
        builder.with_ansi(ansi).init();
    }
    Ok(())
}

/// Copies this executable to `dest` through a temporary file and a rename, so a
/// reader never sees a half-written binary.
fn install(dest: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let me = std::env::current_exe()?;
    let dir = dest
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".execd-install-{}", std::process::id()));
    let result = std::fs::copy(&me, &tmp).and_then(|_| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, dest)
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Marks every descriptor execd inherited beyond stdin, stdout and stderr
/// close-on-exec, so that no command inherits what execd's own parent left
/// open (execd's own descriptors are all close-on-exec from birth).
fn cloexec_inherited() {
    if execd::process::sys::cloexec_from(3).is_ok() {
        return;
    }
    // Linux < 5.11: one by one.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        use nix::fcntl::{fcntl, FcntlArg, FdFlag};
        // SAFETY: an inherited descriptor listed in /proc/self/fd at start-up,
        // before any thread could close it; borrowed only for this call.
        let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// glibc gives every thread that allocates its own malloc arena, and memory
/// freed into one arena is not reused by another. Output read from spill
/// files on blocking threads and freed on the workers grew peak RSS from
/// 16 to 40 MiB in the fan-out benchmark; one arena keeps it bounded. The
/// daemon's allocations are small and few threads contend, so one is enough.
fn limit_malloc_arenas() {
    execd::process::sys::malloc_arenas(1);
}
