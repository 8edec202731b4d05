//! The two helper modes of the execd binary that build and enter an isolated
//! session. They run in a freshly executed, single-threaded execd (the
//! daemon starts them through the process engine as
//! `/proc/self/exe __isolate-init JSON` and `… __isolate-enter JSON`), so
//! forking, unsharing and mounting here never races a tokio thread.
//!
//! - `init`: unshares mount, ipc, uts, pid and (unless the network is
//!   shared) net namespaces, forks the session's PID 1, which builds the
//!   new root (read-only bind of `/`, the writable set, a fresh `/proc`),
//!   pivots into it, and then only reaps orphans. The first process waits
//!   for it and reports `READY <pid>` (the host pid of PID 1) on stdout.
//! - `enter`: joins PID 1's namespaces with `setns`, forks (a pid
//!   namespace applies to children only), drops what the profile says in
//!   the child and executes the shell there; the first process relays the
//!   exit status.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, pipe2, pivot_root, ForkResult, Gid, Pid, Uid};
use serde::{Deserialize, Serialize};

/// What the session's PID 1 mounts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InitPlan {
    /// An empty directory (in execd's data dir) that becomes the new root.
    pub root: PathBuf,
    pub mounts: Vec<PlannedMount>,
    /// Host directories hidden behind an empty read-only tmpfs (execd's
    /// data directory: other commands' output, other sessions' uppers).
    pub hide: Vec<PathBuf>,
    pub share_net: bool,
    pub hostname: String,
    /// The session's directory (upper and work layers), bound beneath the
    /// first hidden directory as `s`, with each overlay's lower directory
    /// as `l/<n>` (n: the name of its upper directory), so that execd can
    /// mount an overlay again from inside the session's mount namespace
    /// (overlayfs takes layers only from the mounter's namespace). The
    /// hiding tmpfs is mode 000: only a process with CAP_DAC_OVERRIDE or
    /// CAP_DAC_READ_SEARCH passes it.
    #[serde(default)]
    pub layers: Option<PathBuf>,
    /// The daemon's pid: the helper dies with it (see [`die_with_parent`]).
    #[serde(default)]
    pub parent: u32,
}

/// Where, inside a session, the layers of its `n`th overlay are.
pub fn hidden_layers(hidden: &Path, n: &str) -> (PathBuf, PathBuf, PathBuf) {
    (
        hidden.join("l").join(n),
        hidden.join("s/upper").join(n),
        hidden.join("s/work").join(n),
    )
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PlannedMount {
    Overlay {
        dest: PathBuf,
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
    },
    Bind {
        source: PathBuf,
        dest: PathBuf,
        readonly: bool,
    },
}

/// How a run enters a session.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnterPlan {
    pub init_pid: i32,
    pub cwd: PathBuf,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub strict: bool,
    /// The run gets a user namespace of its own, in which its uid and gid
    /// (default 0) map to the same ids outside, one each: whatever it
    /// holds, it holds over that namespace, never over the host's files,
    /// devices or processes.
    #[serde(default)]
    pub userns: bool,
    pub argv: Vec<String>,
    /// Instead of running `argv`: detach (`None`) or mount again (`Some`)
    /// the overlay at `cwd`, from PID 1's mount namespace, so that its
    /// layers can be changed while nothing looks through it.
    #[serde(default)]
    pub remount: Option<Remount>,
    /// The daemon's pid: the helper dies with it (see [`die_with_parent`]).
    #[serde(default)]
    pub parent: u32,
}

/// The layers of an overlay to mount again (paths inside the session).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Remount {
    pub attach: bool,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

/// The line PID 1 writes on its stdout once it has ended every other
/// process of the session (asked by [`END_SIGNAL`] from outside).
pub const ENDED: &str = "ENDED";

/// The signal that asks PID 1 to end every other process of the session
/// and to say so ([`ENDED`]) once they are all reaped. Honoured only when
/// it comes from outside the session's pid namespace.
pub const END_SIGNAL: Signal = Signal::SIGUSR1;

/// The variable that carries an init plan.
pub const PLAN_ENV: &str = "EXECD_ISOLATE_PLAN";

/// Dispatches a helper mode; `None` when `args` name none.
pub fn main_if_helper(args: &[String]) -> Option<i32> {
    let mode = args.get(1)?;
    let plan = args.get(2).map(String::as_str).unwrap_or("");
    match mode.as_str() {
        // The plan comes in the environment, not argv: the session can read
        // PID 1's command line, not its environment.
        "__isolate-init" => Some(
            match serde_json::from_str(&std::env::var(PLAN_ENV).unwrap_or_default()) {
                Ok(p) => init_main(&p),
                Err(e) => fail(&format!("bad plan: {e}")),
            },
        ),
        "__isolate-enter" => Some(match serde_json::from_str(plan) {
            Ok(p) => enter_main(&p),
            Err(e) => fail(&format!("bad plan: {e}")),
        }),
        _ => None,
    }
}

/// Makes the kernel kill this helper when the daemon (`parent`, its parent
/// process) dies, however it dies; fails when the daemon is already gone.
/// (The kernel sends it when the parent *thread* that forked ends: execd
/// starts helpers from its runtime's worker threads, which live as long as
/// the daemon.)
/// PID 1 in turn dies with the init helper, and with PID 1 every process
/// of the session: nothing of a session outlives the daemon.
fn die_with_parent(parent: u32) -> Result<(), String> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("pdeathsig: {e}"))?;
    // The daemon may have died before the line above: then this process
    // was already re-parented and no signal will come.
    if parent != 0 && nix::unistd::getppid().as_raw() as u32 != parent {
        return Err("the daemon is gone".into());
    }
    Ok(())
}

fn fail(msg: &str) -> i32 {
    let _ = writeln!(std::io::stdout(), "ERROR {msg}");
    let _ = writeln!(std::io::stderr(), "execd isolate: {msg}");
    125
}

fn init_main(plan: &InitPlan) -> i32 {
    if let Err(e) = die_with_parent(plan.parent) {
        return fail(&e);
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWPID;
    if !plan.share_net {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        return fail(&format!("unshare: {e}"));
    }
    let (r, w) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(&format!("pipe: {e}")),
    };
    // SAFETY: this process is single-threaded (a freshly executed helper).
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Child) => {
            drop(r);
            // PID 1 of the new namespace: dies with the process that waits
            // for it, and is no process a session's code may inspect.
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
            let _ = nix::sys::prctl::set_dumpable(false);
            // Blocked before the daemon learns that the session is ready,
            // so that no request to end the session's processes is lost.
            let mut set = SigSet::empty();
            set.add(Signal::SIGCHLD);
            set.add(END_SIGNAL);
            let _ = set.thread_block();
            // The daemon's end of stdout may be gone: a write then fails
            // instead of killing PID 1.
            let _ = ignore_sigpipe();
            let mut w = std::fs::File::from(w);
            match build_root(plan) {
                Ok(()) => {
                    let _ = w.write_all(b"K");
                    drop(w);
                    reap_forever(set)
                }
                Err(e) => {
                    let _ = w.write_all(format!("E{e}").as_bytes());
                    std::process::exit(1)
                }
            }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(w);
            let mut msg = String::new();
            let _ = std::fs::File::from(r).read_to_string(&mut msg);
            if msg == "K" {
                let mut out = std::io::stdout();
                let _ = writeln!(out, "READY {}", child.as_raw());
                let _ = out.flush();
            } else {
                let _ = fail(msg.strip_prefix('E').unwrap_or("the session's init died"));
            }
            relay(child)
        }
    }
}

/// Waits for `child` and exits as it did (128+N for signal N).
fn relay(child: Pid) -> i32 {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, c)) => return c,
            Ok(WaitStatus::Signaled(_, s, _)) => return 128 + s as i32,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(_) => return 125,
        }
    }
}

/// PID 1's only job once the root is built: reap what is orphaned to it,
/// and on [`END_SIGNAL`] from outside the namespace, end every other
/// process of the session and answer [`ENDED`] once all are reaped.
/// `set` (SIGCHLD and [`END_SIGNAL`]) is blocked.
fn reap_forever(set: SigSet) -> ! {
    loop {
        loop {
            match waitpid(
                Pid::from_raw(-1),
                Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL),
            ) {
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        let Ok(w) = crate::process::sys::sigwaitinfo(&set) else {
            continue;
        };
        // SI_USER cannot be forged with sigqueue, and a sender's pid reads 0
        // here only when it is outside this pid namespace: the session's
        // own processes cannot ask.
        if w.signal != END_SIGNAL as i32 || w.sender != Some(0) {
            continue;
        }
        end_all();
        let _ = writeln!(std::io::stdout(), "{ENDED}");
    }
}

/// Kills every other process of the pid namespace and reaps until none is
/// left (orphans re-parent to PID 1 before their parent can be reaped, so
/// no child left means no descendant left).
fn end_all() {
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
    while let Ok(_) | Err(Errno::EINTR) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {}
}

/// Ignores SIGPIPE in this process.
fn ignore_sigpipe() -> nix::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let ign = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_IGN runs no code in this process.
    unsafe { sigaction(Signal::SIGPIPE, &ign) }.map(|_| ())
}

fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

fn ctx<T>(r: nix::Result<T>, what: &str, p: &Path) -> Result<T, String> {
    r.map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// Builds the session's root and pivots into it. Runs as PID 1 of the new
/// pid namespace, in the new mount namespace.
fn build_root(plan: &InitPlan) -> Result<(), String> {
    let none: Option<&str> = None;
    let root = &plan.root;
    // Nothing done here may propagate back to the host.
    ctx(
        mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none),
        "make private",
        Path::new("/"),
    )?;
    ctx(
        mount(
            Some("/"),
            root,
            none,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            none,
        ),
        "bind",
        root,
    )?;
    // Everything the host shows becomes read-only, submounts included.
    for (mp, opts) in mounts_under(root)? {
        let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY;
        for o in opts.split(',') {
            match o {
                "nosuid" => flags |= MsFlags::MS_NOSUID,
                "nodev" => flags |= MsFlags::MS_NODEV,
                "noexec" => flags |= MsFlags::MS_NOEXEC,
                _ => {}
            }
        }
        ctx(
            mount(none, &mp, none, flags, none),
            "read-only remount",
            &mp,
        )?;
    }
    // A /proc of the new pid namespace instead of the host's.
    let proc_dir = root.join("proc");
    ctx(
        umount2(&proc_dir, MntFlags::MNT_DETACH),
        "detach",
        &proc_dir,
    )?;
    ctx(
        mount(
            Some("proc"),
            &proc_dir,
            Some("proc"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            none,
        ),
        "mount proc",
        &proc_dir,
    )?;
    let shm = root.join("dev/shm");
    if shm.is_dir() {
        ctx(
            mount(
                Some("tmpfs"),
                &shm,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=1777,size=64m"),
            ),
            "mount tmpfs",
            &shm,
        )?;
    }
    for (k, h) in plan.hide.iter().enumerate() {
        let d = under(root, h);
        if !d.is_dir() {
            continue;
        }
        let hide_flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        ctx(
            mount(
                Some("tmpfs"),
                &d,
                Some("tmpfs"),
                hide_flags,
                Some("size=64k,mode=000"),
            ),
            "hide",
            &d,
        )?;
        if let (0, Some(session)) = (k, &plan.layers) {
            let s_dir = d.join("s");
            std::fs::create_dir(&s_dir).map_err(|e| format!("mkdir {}: {e}", s_dir.display()))?;
            ctx(
                mount(Some(session), &s_dir, none, MsFlags::MS_BIND, none),
                "bind",
                &s_dir,
            )?;
            for m in &plan.mounts {
                let PlannedMount::Overlay { lower, upper, .. } = m else {
                    continue;
                };
                let n = upper
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let (l, _, _) = hidden_layers(&d, &n);
                std::fs::create_dir_all(&l).map_err(|e| format!("mkdir {}: {e}", l.display()))?;
                ctx(
                    mount(Some(lower), &l, none, MsFlags::MS_BIND, none),
                    "bind",
                    &l,
                )?;
                ctx(
                    mount(
                        none,
                        &l,
                        none,
                        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                        none,
                    ),
                    "read-only remount",
                    &l,
                )?;
            }
        }
        ctx(
            mount(
                none,
                &d,
                none,
                MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | hide_flags,
                none,
            ),
            "read-only remount",
            &d,
        )?;
    }
    for m in &plan.mounts {
        match m {
            PlannedMount::Overlay {
                dest,
                lower,
                upper,
                work,
            } => {
                let d = under(root, dest);
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    lower.display(),
                    upper.display(),
                    work.display()
                );
                ctx(
                    mount(
                        Some("overlay"),
                        &d,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(opts.as_str()),
                    ),
                    "mount overlay",
                    &d,
                )?;
            }
            PlannedMount::Bind {
                source,
                dest,
                readonly,
            } => {
                let d = under(root, dest);
                let mut flags = MsFlags::MS_BIND;
                if !readonly {
                    flags |= MsFlags::MS_REC;
                }
                ctx(mount(Some(source), &d, none, flags, none), "bind", &d)?;
                if *readonly {
                    ctx(
                        mount(
                            none,
                            &d,
                            none,
                            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                            none,
                        ),
                        "read-only remount",
                        &d,
                    )?;
                }
            }
        }
    }
    let _ = nix::unistd::sethostname(&plan.hostname);
    if !plan.share_net {
        loopback_up().map_err(|e| format!("bring up lo: {e}"))?;
    }
    ctx(chdir(root), "chdir", root)?;
    ctx(pivot_root(".", "."), "pivot_root", root)?;
    ctx(umount2(".", MntFlags::MNT_DETACH), "detach old root", root)?;
    ctx(chdir("/"), "chdir", Path::new("/"))?;
    Ok(())
}

/// Mount points at or below `root`, with their per-mount options, from
/// `/proc/self/mountinfo`.
fn mounts_under(root: &Path) -> Result<Vec<(PathBuf, String)>, String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("read mountinfo: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(mp), Some(opts)) = (f.get(4), f.get(5)) else {
            continue;
        };
        let mp = PathBuf::from(unescape(mp));
        if mp.starts_with(root) {
            out.push((mp, (*opts).to_string()));
        }
    }
    Ok(out)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            out.push(u8::try_from(v).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sets IFF_UP on `lo` in the current network namespace.
fn loopback_up() -> nix::Result<()> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let s = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    crate::process::sys::interface_up(s.as_fd(), c"lo")
}

fn enter_main(plan: &EnterPlan) -> i32 {
    if let Err(e) = die_with_parent(plan.parent) {
        return fail(&e);
    }
    // The host's /proc, kept for writing the run's id maps (by its pid in
    // this process's pid namespace) once the session's /proc is in view.
    let host_proc = if plan.userns {
        match open(
            "/proc",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(e) => return fail(&format!("open /proc: {e}")),
        }
    } else {
        None
    };
    // Open every namespace first: /proc changes once the mount one is joined.
    let mut fds: Vec<(OwnedFd, CloneFlags)> = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let p = format!("/proc/{}/ns/{name}", plan.init_pid);
        match open(
            p.as_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fds.push((fd, flag)),
            Err(e) => return fail(&format!("open {p}: {e}")),
        }
    }
    for (fd, flag) in &fds {
        if let Err(e) = setns(fd.as_fd(), *flag) {
            return fail(&format!("setns {flag:?}: {e}"));
        }
    }
    drop(fds);
    if let Some(r) = &plan.remount {
        return remount(&plan.cwd, r);
    }
    if chdir(&plan.cwd).is_err() {
        let _ = chdir("/");
    }
    // With a user namespace: the child unshares it and says so on `up`;
    // this process writes its id maps and answers on `down`.
    let sync = match host_proc
        .as_ref()
        .map(|_| (pipe2(OFlag::O_CLOEXEC), pipe2(OFlag::O_CLOEXEC)))
    {
        None => None,
        Some((Ok(up), Ok(down))) => Some((up, down)),
        Some((Err(e), _)) | Some((_, Err(e))) => return fail(&format!("pipe: {e}")),
    };
    // SAFETY: this process is single-threaded (a freshly executed helper).
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => {
            if let (Some(proc_fd), Some(((up_r, up_w), (down_r, down_w)))) = (&host_proc, sync) {
                drop((up_w, down_r));
                let mut b = [0u8; 1];
                let unshared = std::fs::File::from(up_r).read(&mut b).is_ok_and(|n| n == 1);
                let mapped = unshared
                    && map_ids(proc_fd, child, plan.uid.unwrap_or(0), plan.gid_or_uid()).is_ok();
                if mapped {
                    let _ = std::fs::File::from(down_w).write_all(b"m");
                }
                // Otherwise `down` closes unanswered and the child gives up.
            }
            relay(child)
        }
        Ok(ForkResult::Child) => {
            if let Some(((up_r, up_w), (down_r, down_w))) = sync {
                drop((up_r, down_w));
                if let Err(e) = unshare(CloneFlags::CLONE_NEWUSER) {
                    let _ = writeln!(std::io::stderr(), "execd isolate: unshare user: {e}");
                    std::process::exit(126);
                }
                let _ = std::fs::File::from(up_w).write_all(b"u");
                let mut b = [0u8; 1];
                if !std::fs::File::from(down_r)
                    .read(&mut b)
                    .is_ok_and(|n| n == 1)
                {
                    let _ = writeln!(
                        std::io::stderr(),
                        "execd isolate: the user namespace was not mapped"
                    );
                    std::process::exit(126);
                }
            }
            if let Err(e) = confine(plan) {
                let _ = writeln!(std::io::stderr(), "execd isolate: {e}");
                std::process::exit(126);
            }
            let argv: Vec<CString> = plan
                .argv
                .iter()
                .filter_map(|a| CString::new(a.as_str()).ok())
                .collect();
            let Some(prog) = argv.first() else {
                std::process::exit(127)
            };
            let e = nix::unistd::execvp(prog, &argv).unwrap_err();
            let _ = writeln!(
                std::io::stderr(),
                "execd isolate: exec {}: {e}",
                plan.argv[0]
            );
            std::process::exit(if e == Errno::ENOENT { 127 } else { 126 })
        }
    }
}

impl EnterPlan {
    /// The run's gid: the one asked for, else its uid's number (as setpriv).
    fn gid_or_uid(&self) -> u32 {
        self.gid.or(self.uid).unwrap_or(0)
    }
}

/// Maps `uid` and `gid` of `child`'s new user namespace to the same ids
/// outside, one each, through the host's /proc (`proc_fd`).
fn map_ids(proc_fd: &OwnedFd, child: Pid, uid: u32, gid: u32) -> Result<(), String> {
    for (file, id) in [("uid_map", uid), ("gid_map", gid)] {
        let p = format!("{child}/{file}");
        let fd = nix::fcntl::openat(
            proc_fd,
            p.as_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open {p}: {e}"))?;
        let mut f = std::fs::File::from(fd);
        f.write_all(format!("{id} {id} 1\n").as_bytes())
            .map_err(|e| format!("write {p}: {e}"))?;
    }
    Ok(())
}

/// Detaches the overlay at `dest`, or mounts it again from the layers
/// [`InitPlan::layers`] keeps inside the session. Keeps every capability:
/// this is execd's own act.
fn remount(dest: &Path, r: &Remount) -> i32 {
    // SAFETY: this process is single-threaded (a freshly executed helper).
    match unsafe { fork() } {
        Err(e) => fail(&format!("fork: {e}")),
        Ok(ForkResult::Parent { child }) => relay(child),
        Ok(ForkResult::Child) => {
            let res = if r.attach {
                let opts = format!(
                    "lowerdir={},upperdir={},workdir={}",
                    r.lower.display(),
                    r.upper.display(),
                    r.work.display()
                );
                ctx(
                    mount(
                        Some("overlay"),
                        dest,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(opts.as_str()),
                    ),
                    "mount overlay",
                    dest,
                )
            } else {
                // No run is active (execd checked); processes left behind by
                // earlier runs must not write through the overlay while its
                // layers change: every process of the session but PID 1 goes.
                let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
                ctx(umount2(dest, MntFlags::MNT_DETACH), "detach", dest)
            };
            match res {
                Ok(()) => std::process::exit(0),
                Err(e) => std::process::exit(fail(&e)),
            }
        }
    }
}

/// Capabilities a `balanced` run keeps away from root: those that undo the
/// isolation (mounts, namespaces, modules, raw devices, tracing, the clock,
/// the network configuration).
// From <linux/capability.h>: SYS_ADMIN, SYS_MODULE, SYS_RAWIO, SYS_PTRACE,
// SYS_BOOT, SYS_TIME, MKNOD, NET_ADMIN, SYS_CHROOT, MAC_ADMIN, MAC_OVERRIDE,
// BPF, PERFMON, SYSLOG.
const BALANCED_DROP: &[u32] = &[21, 16, 17, 19, 22, 25, 27, 12, 18, 33, 32, 39, 38, 34];

/// The child's side of a run: the identity, then the profile's limits.
fn confine(plan: &EnterPlan) -> Result<(), String> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40);
    let dropped: Vec<u32> = (0..=last)
        .filter(|c| plan.strict || BALANCED_DROP.contains(c))
        .collect();
    for c in &dropped {
        match crate::process::sys::capbset_drop(*c) {
            Ok(()) | Err(Errno::EINVAL) => {}
            Err(e) => return Err(format!("drop capability {c}: {e}")),
        }
    }
    if plan.userns {
        // Inside the run's own user namespace: only the mapped ids exist,
        // and nothing is dropped by the kernel on the way (the ids execd had
        // are not mapped), so every capability goes with a non-zero uid.
        let (uid, gid) = (plan.uid.unwrap_or(0), plan.gid_or_uid());
        nix::unistd::setgroups(&[Gid::from_raw(gid)]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid: {e}"))?;
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
        let all: Vec<u32> = (0..=last).collect();
        clear_caps(if uid == 0 { &dropped } else { &all }).map_err(|e| format!("capset: {e}"))?;
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
        return Ok(());
    }
    if let Some(uid) = plan.uid {
        let gid = plan.gid_or_uid();
        nix::unistd::setgroups(&[Gid::from_raw(gid)]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid: {e}"))?;
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))?;
    } else if let Some(gid) = plan.gid {
        nix::unistd::setgroups(&[Gid::from_raw(gid)]).map_err(|e| format!("setgroups: {e}"))?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid: {e}"))?;
    }
    clear_caps(&dropped).map_err(|e| format!("capset: {e}"))?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    Ok(())
}

/// Removes `caps` from this thread's effective, permitted and inheritable sets.
fn clear_caps(caps: &[u32]) -> nix::Result<()> {
    let mut data = crate::process::sys::capget_thread()?;
    for c in caps {
        let (i, bit) = ((*c / 32) as usize, 1u32 << (c % 32));
        if let Some(d) = data.get_mut(i) {
            d.effective &= !bit;
            d.permitted &= !bit;
            d.inheritable &= !bit;
        }
    }
    crate::process::sys::capset_thread(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\134"), "/x\\");
    }
}
