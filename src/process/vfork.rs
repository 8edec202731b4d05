//! Starting a program at `posix_spawn`'s cost with the steps a command
//! needs before `exec` that `posix_spawn` cannot do: joining its cgroup and
//! changing credentials.
//!
//! The child is made with `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` on a
//! stack of its own (as glibc's `posix_spawn` does): no page tables are
//! copied, and the calling thread is suspended until the child has called
//! `execve` or exited. The child shares the parent's memory (and the calling
//! thread's TLS) meanwhile, so it must not allocate, take a lock, or call
//! anything that is not async-signal-safe. Everything it needs is prepared
//! in the parent ([`Plan`]); the child only reads it and makes syscalls:
//!
//! 1. every signal that has a handler (the parent's code) or is ignored
//!    (SIGPIPE by Rust, SIGINT/SIGQUIT by a shell that started execd with
//!    `&`, SIGHUP by nohup) is reset to its default, so a command starts
//!    as from a fresh login whatever started execd. All signals, glibc's
//!    internal ones included, are blocked from before the clone (by the
//!    parent) until step 7; both go through raw `rt_sigprocmask` and
//!    `rt_sigaction`, which glibc's wrappers would not apply to those;
//! 2. the stdio descriptors are `dup2`ed onto 0, 1, 2;
//! 3. `chdir` to the working directory;
//! 4. its own process group (`setpgid(0, 0)`), or for a shell on a PTY
//!    its own session whose controlling terminal is its stdin (`setsid`,
//!    `TIOCSCTTY`);
//! 5. it joins its cgroup: where it was not born in it (`clone3` with
//!    `CLONE_INTO_CGROUP`, the usual way), `0` is written to the
//!    `cgroup.procs` the parent opened, still as root, before a single
//!    instruction of the program;
//! 6. credentials: `setgroups`, `setgid`, `setuid` as raw syscalls (glibc's
//!    wrappers make every thread of the process change credentials, which
//!    with a shared address space would reach the parent's threads);
//! 7. the signal mask is emptied, and `execve` is tried on each candidate
//!    path as `execvp` does (the first `ENOENT`-like failure moves on; an
//!    `EACCES` is remembered). Unlike glibc's `execvp` a file the kernel
//!    cannot execute (`ENOEXEC`) is *not* run with `/bin/sh`: it fails, as
//!    with `posix_spawn`.
//!
//! A failing step's errno is stored into the parent's memory and the child
//! exits with 127; the parent reads it once it resumes. The failed child is
//! still a child: the caller hands its pid to the reaper (the one wait path).
//!
//! With a cgroup, the child is made by `clone3(CLONE_VM | CLONE_VFORK |
//! CLONE_INTO_CGROUP)` instead: it starts life inside its cgroup. Moving a
//! live process between cgroups (the write to `cgroup.procs`) takes a
//! kernel lock whose write side waits for an RCU grace period: milliseconds
//! on an idle machine, with execd's spawning thread held meanwhile. A child
//! born in the cgroup takes no such lock. The C library has no `clone3`
//! wrapper that runs a function on a new stack, so [`sys::clone3_vm`] makes the
//! syscall itself (x86-64; elsewhere, and where a seccomp filter refuses
//! `clone3`, the write is used).
//!
//! The child's stack is a mapping per thread, made once and reused (the
//! child is done with it when the parent resumes). The child makes exactly
//! the calls listed, with nothing allocated: nix's wrappers of single
//! syscalls, and [`sys`] for what must be raw (the signal calls, per-task
//! credentials, an `execve` that builds no arrays).

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::sys;

/// Size of the child's stack (above one guard page). The child runs a few
/// small frames and libc's thin syscall wrappers.
const STACK_SIZE: usize = 64 * 1024;

/// Credentials the child takes before `exec`.
#[derive(Debug, Clone)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Call `setgroups` (only root may).
    pub set_groups: bool,
}

/// A NUL-terminated array of C strings, kept with the strings it points into.
struct CStrings {
    owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStrings {
    fn new(owned: Vec<CString>) -> CStrings {
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // Moving `owned` into the struct moves the Vec, not the strings'
        // heap buffers, so the pointers stay valid.
        CStrings { owned, ptrs }
    }

    /// Number of strings (the terminating null aside).
    fn len(&self) -> usize {
        self.ptrs.len() - 1
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

/// Everything the child needs, prepared in the parent. The descriptors are
/// borrowed: they stay open until [`spawn`] has returned.
pub struct Plan<'fd> {
    /// Where `execve` is tried, in order.
    paths: CStrings,
    argv: CStrings,
    envp: CStrings,
    cwd: Option<CString>,
    /// Sources for fds 0, 1, 2 (`None`: inherited as is).
    stdio: [Option<BorrowedFd<'fd>>; 3],
    /// The cgroup's `cgroup.procs`, opened for writing.
    procs: Option<BorrowedFd<'fd>>,
    /// The cgroup's directory, for `CLONE_INTO_CGROUP`.
    cgroup: Option<BorrowedFd<'fd>>,
    creds: Option<Creds>,
    /// A new session whose controlling terminal is fd 0, instead of a new
    /// process group.
    session: bool,
}

/// The paths `execvp` tries for `program` with `path` as `PATH`: the program
/// itself if it names a file (has a `/`), else each directory's entry (an
/// empty directory is the working directory).
fn candidates(program: &[u8], path: &[u8]) -> Vec<Vec<u8>> {
    if program.is_empty() {
        return Vec::new();
    }
    if program.contains(&b'/') {
        return vec![program.to_vec()];
    }
    path.split(|&b| b == b':')
        .map(|dir| {
            if dir.is_empty() {
                program.to_vec()
            } else {
                let mut p = dir.to_vec();
                if !dir.ends_with(b"/") {
                    p.push(b'/');
                }
                p.extend_from_slice(program);
                p
            }
        })
        .collect()
}

impl<'fd> Plan<'fd> {
    /// Runs `argv[0]` (searched on `path` unless it has a `/`) with `argv`
    /// and exactly `env`.
    pub fn new<A, E, K, V>(argv: A, env: E, path: &OsStr) -> io::Result<Plan<'fd>>
    where
        A: IntoIterator,
        A::Item: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let argv = argv
            .into_iter()
            .map(|a| cstring(a.as_ref().as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let Some(program) = argv.first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "empty argument vector",
            ));
        };
        let paths = candidates(program.as_bytes(), path.as_bytes())
            .into_iter()
            .map(|p| cstring(&p))
            .collect::<io::Result<Vec<_>>>()?;
        let envp = env
            .into_iter()
            .map(|(k, v)| {
                let (k, v) = (k.as_ref().as_bytes(), v.as_ref().as_bytes());
                let mut kv = Vec::with_capacity(k.len() + 1 + v.len());
                kv.extend_from_slice(k);
                kv.push(b'=');
                kv.extend_from_slice(v);
                cstring(&kv)
            })
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Plan {
            paths: CStrings::new(paths),
            argv: CStrings::new(argv),
            envp: CStrings::new(envp),
            cwd: None,
            stdio: [None, None, None],
            procs: None,
            cgroup: None,
            creds: None,
            session: false,
        })
    }

    /// The working directory to change to.
    pub fn cwd(&mut self, dir: &Path) -> io::Result<&mut Self> {
        self.cwd = Some(cstring(dir.as_os_str().as_bytes())?);
        Ok(self)
    }

    /// `fd` becomes the child's descriptor `target` (0, 1 or 2).
    pub fn stdio(&mut self, target: usize, fd: BorrowedFd<'fd>) -> &mut Self {
        if let Some(slot) = self.stdio.get_mut(target) {
            *slot = Some(fd);
        }
        self
    }

    /// The child is made inside the cgroup whose directory is `dir` (or,
    /// where `clone3` cannot do that, writes `0` into its `cgroup.procs`,
    /// `procs`, before anything else that the program could notice).
    pub fn cgroup(&mut self, dir: BorrowedFd<'fd>, procs: BorrowedFd<'fd>) -> &mut Self {
        self.cgroup = Some(dir);
        self.procs = Some(procs);
        self
    }

    /// The child takes these credentials before `exec`.
    pub fn creds(&mut self, creds: Creds) -> &mut Self {
        self.creds = Some(creds);
        self
    }

    /// The child leads a new session (`setsid`) whose controlling terminal
    /// is its stdin (`TIOCSCTTY`), as a shell on a PTY, rather than leading
    /// a new process group in execd's session.
    pub fn terminal_session(&mut self) -> &mut Self {
        self.session = true;
        self
    }
}

/// What the child reads: borrows of a [`Plan`] that outlives the clone,
/// and the slot for its errno.
struct Args<'a> {
    paths: *const *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: Option<&'a CStr>,
    stdio: [Option<BorrowedFd<'a>>; 3],
    procs: Option<BorrowedFd<'a>>,
    creds: Option<&'a Creds>,
    session: bool,
    /// Set by the child to the errno of the step that failed.
    err: AtomicI32,
}

/// A spawn that failed. If the child was made (it failed before or in
/// `exec`), `pid` is set: it exited and must be reaped.
#[derive(Debug)]
pub struct Failed {
    pub pid: Option<i32>,
    pub error: io::Error,
}

impl Failed {
    fn before(error: io::Error) -> Failed {
        Failed { pid: None, error }
    }
}

thread_local! {
    /// This thread's child stack, made at its first spawn and kept: a
    /// mapping made and removed per spawn costs more than the clone (the
    /// unmap and the guard's mprotect flush the TLBs of execd's threads).
    /// One per thread: a spawn holds its thread until the child is gone.
    static STACK: std::cell::RefCell<Option<Stack>> = const { std::cell::RefCell::new(None) };
}

/// The child's stack: an anonymous mapping whose lowest page is a guard.
struct Stack {
    base: NonNull<c_void>,
    len: usize,
    guard: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let guard = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|p| usize::try_from(p).ok())
            .unwrap_or(4096);
        let len = STACK_SIZE + guard;
        let nz = std::num::NonZeroUsize::new(len).ok_or_else(|| io::Error::other("stack size"))?;
        // SAFETY: a fresh private anonymous mapping; it aliases nothing.
        let base = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_ANONYMOUS | MapFlags::MAP_STACK,
            )
        }?;
        let stack = Stack { base, len, guard };
        // SAFETY: the first page of the mapping just made, which nothing uses.
        unsafe { nix::sys::mman::mprotect(base, guard, ProtFlags::PROT_NONE) }?;
        Ok(stack)
    }

    /// The part above the guard page as `clone3` takes it: lowest address
    /// and size (the kernel starts the child at their sum, [`Stack::top`]).
    fn usable(&self) -> (u64, u64) {
        let low = self.base.as_ptr() as usize + self.guard;
        (low as u64, (self.top() as usize - low) as u64)
    }

    /// The initial stack pointer: the top of the mapping (stacks grow down),
    /// 16-byte aligned as both x86-64 and AArch64 want.
    fn top(&self) -> *mut c_void {
        let top = self.base.as_ptr() as usize + self.len;
        debug_assert!(self.guard < self.len);
        (top & !15) as *mut c_void
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no child uses it (its thread,
        // which is exiting, resumed only once its last child had exec'd or
        // exited).
        let _ = unsafe { nix::sys::mman::munmap(self.base, self.len) };
    }
}

/// Starts the child of `plan` and returns its pid once it has exec'd.
pub fn spawn(plan: &Plan<'_>) -> Result<i32, Failed> {
    if plan.argv.len() == 0 {
        return Err(Failed::before(io::Error::from(Errno::ENOENT)));
    }
    let mut args = Args {
        paths: plan.paths.ptrs.as_ptr(),
        argv: plan.argv.ptrs.as_ptr(),
        envp: plan.envp.ptrs.as_ptr(),
        cwd: plan.cwd.as_deref(),
        stdio: plan.stdio,
        procs: plan.procs,
        creds: plan.creds.as_ref(),
        session: plan.session,
        err: AtomicI32::new(0),
    };
    // `try_with`/`try_borrow_mut`: never a panic (a thread being torn down,
    // a re-entry that cannot happen) on a request path.
    let pid = STACK
        .try_with(|cell| {
            let mut stack = cell
                .try_borrow_mut()
                .map_err(|_| io::Error::other("child stack in use"))?;
            if stack.is_none() {
                *stack = Some(Stack::new()?);
            }
            let stack = stack
                .as_ref()
                .ok_or_else(|| io::Error::other("no child stack"))?;
            if let Some(dir) = plan.cgroup.filter(|_| CLONE3.load(Ordering::Relaxed)) {
                // Born in the cgroup: the child has nothing to write.
                args.procs = None;
                match clone_vfork(stack, &args, Some(dir)) {
                    Ok(pid) => {
                        crate::counters::spawned(crate::counters::SPAWN_CLONE3);
                        return Ok(pid);
                    }
                    Err(e) if clone3_refused(&e) => {
                        CLONE3.store(false, Ordering::Relaxed);
                        tracing::info!(error = %e, "clone3 is refused here: command children join their cgroup by a write to cgroup.procs");
                        args.procs = plan.procs;
                    }
                    r => return r,
                }
            }
            let r = clone_vfork(stack, &args, None);
            if r.is_ok() {
                crate::counters::spawned(crate::counters::SPAWN_VFORK);
            }
            r
        })
        .map_err(|_| io::Error::other("thread is exiting"))
        .and_then(|r| r)
        .map_err(Failed::before)?;
    match args.err.load(Ordering::SeqCst) {
        0 => Ok(pid),
        e => Err(Failed {
            pid: Some(pid),
            error: io::Error::from_raw_os_error(e),
        }),
    }
}

/// Starts the child of `plan` with nix's `posix_spawn` (the C library's
/// own vfork-style clone) and returns its pid once it has exec'd. Only for a
/// plan without cgroup, credentials or terminal session: `posix_spawn`
/// has no step for those. The child is as [`spawn`]'s: its own process
/// group, every signal at its default disposition (`POSIX_SPAWN_SETSIGDEF`
/// with every signal: the ignored ones and glibc's internal ones too) and
/// none blocked, stdio `dup2`ed, the working directory changed
/// (`posix_spawn_file_actions_addchdir_np`), and the program searched on
/// the plan's `PATH` as `execvp` does (`posix_spawnp` would search execd's
/// own `PATH`). A failed child has been reaped by the C library already:
/// [`Failed::pid`] is `None`.
pub fn posix_spawn(plan: &Plan<'_>) -> Result<i32, Failed> {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags};
    use nix::sys::signal::SigSet;

    if plan.cgroup.is_some() || plan.procs.is_some() || plan.creds.is_some() || plan.session {
        return Err(Failed::before(io::Error::new(
            io::ErrorKind::Unsupported,
            "posix_spawn cannot join a cgroup, change credentials or start a session",
        )));
    }
    let before = |e: Errno| Failed::before(e.into());
    let mut attr = PosixSpawnAttr::init().map_err(before)?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(before)?;
    attr.set_pgroup(Pid::from_raw(0)).map_err(before)?;
    attr.set_sigmask(&SigSet::empty()).map_err(before)?;
    attr.set_sigdefault(&sys::every_signal()).map_err(before)?;
    let mut actions = PosixSpawnFileActions::init().map_err(before)?;
    for (target, fd) in (0..).zip(plan.stdio) {
        if let Some(fd) = fd {
            // The sources are execd's descriptors above 2 (0 to 2 are always
            // open in a Rust process), so dup2 never meets its own target.
            actions.add_dup2(fd.as_raw_fd(), target).map_err(before)?;
        }
    }
    if let Some(cwd) = &plan.cwd {
        sys::spawn_add_chdir(&mut actions, cwd).map_err(before)?;
    }
    // As execvp: try each candidate; one that is not there moves on, an
    // EACCES is remembered. A candidate that does not exist is skipped
    // without a clone where there are several (a bare name on PATH).
    let several = plan.paths.len() > 1;
    let mut eacces = false;
    let mut last = Errno::ENOENT;
    for path in &plan.paths.owned {
        if several && nix::sys::stat::stat(path.as_c_str()).is_err() {
            continue;
        }
        match nix::spawn::posix_spawn(
            path.as_c_str(),
            &actions,
            &attr,
            &plan.argv.owned,
            &plan.envp.owned,
        ) {
            Ok(pid) => {
                crate::counters::spawned(crate::counters::SPAWN_POSIX);
                return Ok(pid.as_raw());
            }
            Err(Errno::EACCES) => eacces = true,
            Err(
                e @ (Errno::ENOENT
                | Errno::ESTALE
                | Errno::ENOTDIR
                | Errno::ENODEV
                | Errno::ETIMEDOUT),
            ) => last = e,
            Err(e) => return Err(before(e)),
        }
    }
    Err(before(if eacces { Errno::EACCES } else { last }))
}

/// Whether `clone3` with `CLONE_INTO_CGROUP` is used (cleared for good the
/// first time the kernel or a seccomp filter refuses it).
static CLONE3: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(cfg!(target_arch = "x86_64"));

/// A refusal of `clone3` itself (older kernel, seccomp filter as Docker's
/// default one, no `CLONE_INTO_CGROUP`), after which the plain clone and the
/// write to `cgroup.procs` are used.
fn clone3_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(e) if [Errno::ENOSYS, Errno::EPERM, Errno::E2BIG, Errno::EINVAL].contains(&Errno::from_raw(e))
    )
}

/// Clones the child onto `stack` (into the cgroup whose directory is
/// `cgroup`, if given), with every signal blocked in this thread
/// meanwhile; returns once it has exec'd or exited.
fn clone_vfork(stack: &Stack, args: &Args<'_>, cgroup: Option<BorrowedFd<'_>>) -> io::Result<i32> {
    // Block every signal in this thread so none is handled on the child's
    // stack (by the parent's handlers) before the child has reset them.
    let old = sys::sigprocmask_all(sys::KernelSigset::MAX)?;
    // `child` only reads `args` (and what it points into, all owned by the
    // caller's `Plan`, alive until we return) and stores into `args.err`;
    // it makes async-signal-safe calls only and ends in execve or _exit.
    // The stack is this thread's own child stack, which nothing else uses.
    // CLONE_VFORK suspends this thread until the child has exec'd (it then
    // runs in a new address space) or exited, so `args`, the stack and the
    // plan outlive its use of them, and the stack is free again.
    let arg = std::ptr::from_ref(args) as *mut c_void;
    let pid = match cgroup {
        // SAFETY: as above; `cgroup` is an open cgroup directory.
        Some(dir) => unsafe { sys::clone3_vm(child, stack.usable(), dir, arg) },
        // SAFETY: as above.
        None => unsafe { sys::clone_vm(child, stack.top(), arg) },
    };
    let _ = sys::sigprocmask_all(old);
    pid
}

/// The child: runs the steps, and on failure reports the errno and exits.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Args` that `spawn` passed, alive and unchanged
    // while the parent is suspended.
    let a = unsafe { &*(arg as *const Args<'_>) };
    let err = prepare_and_exec(a) as c_int;
    a.err.store(
        if err == 0 { Errno::EIO as c_int } else { err },
        Ordering::SeqCst,
    );
    sys::exit_now(127)
}

/// Steps 1 to 7 of the module comment. Returns only on failure, with the
/// errno. Only async-signal-safe calls, no allocation, no panicking code:
/// nix's wrappers used here are single syscalls on borrowed data.
/// `a` is the `Args` built by [`spawn`], read on the child's side of a
/// `CLONE_VM | CLONE_VFORK` clone made with every signal blocked.
fn prepare_and_exec(a: &Args<'_>) -> Errno {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    // 1. Handlers are the parent's code, and what execd's launcher ignored
    // (a shell's `&` ignores SIGINT and SIGQUIT, nohup SIGHUP, Rust SIGPIPE)
    // is not the command's business: every disposition back to the default
    // (through the raw syscall, which reaches glibc's internal signals too).
    let mut sig: c_int = 1;
    while sig < sys::NSIG {
        if sig != Signal::SIGKILL as c_int && sig != Signal::SIGSTOP as c_int {
            if let Err(e) = sys::reset_signal(sig) {
                return e;
            }
        }
        sig += 1;
    }
    // 2. stdio. The sources are execd's descriptors above 2 (0 to 2 are
    // always open in a Rust process); if one is its own target, dup2 would
    // leave it close-on-exec, so that flag is cleared instead.
    for (target, fd) in (0..).zip(a.stdio) {
        let Some(fd) = fd else { continue };
        let r = match target {
            _ if fd.as_raw_fd() == target => {
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map(drop)
            }
            0 => nix::unistd::dup2_stdin(fd),
            1 => nix::unistd::dup2_stdout(fd),
            _ => nix::unistd::dup2_stderr(fd),
        };
        if let Err(e) = r {
            return e;
        }
    }
    // 3. Working directory (as root, as before the credentials change).
    if let Some(Err(e)) = a.cwd.map(nix::unistd::chdir) {
        return e;
    }
    // 4. Its own process group, or its own session on its terminal.
    let r = if a.session {
        nix::unistd::setsid().and_then(|_| sys::set_controlling_terminal())
    } else {
        nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
    };
    if let Err(e) = r {
        return e;
    }
    // 5. Into the cgroup, while still root.
    if let Some(procs) = a.procs {
        match nix::unistd::write(procs, b"0") {
            Ok(1) => {}
            Ok(_) => return Errno::EIO,
            Err(e) => return e,
        }
    }
    // 6. Credentials, for this task only.
    if let Some(c) = a.creds {
        let groups = c.set_groups.then_some(c.groups.as_slice());
        if let Err(e) = sys::set_credentials_this_task(groups, c.gid, c.uid) {
            return e;
        }
    }
    // 7. The program's signal mask, then exec, as execvp searches.
    if let Err(e) = sys::sigprocmask_all(0) {
        return e;
    }
    let mut eacces = false;
    let mut last = Errno::ENOENT;
    let mut p = a.paths;
    // SAFETY: `paths` is the null-terminated array of a `CStrings`, alive
    // while the parent is suspended; each entry is a C string.
    while let Some(path) = unsafe { (*p).as_ref() } {
        // SAFETY: as above; `argv` and `envp` are `CStrings` arrays.
        last = unsafe { sys::execve(CStr::from_ptr(path), a.argv, a.envp) };
        match last {
            Errno::EACCES => eacces = true,
            Errno::ENOENT | Errno::ESTALE | Errno::ENOTDIR | Errno::ENODEV | Errno::ETIMEDOUT => {}
            _ => return last,
        }
        // SAFETY: not past the terminating null (checked above).
        p = unsafe { p.add(1) };
    }
    if eacces {
        Errno::EACCES
    } else {
        last
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::wait::{waitpid, WaitStatus};
    use std::io::Read;
    use std::os::fd::{AsFd, OwnedFd};

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap()
    }

    const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

    /// Runs `argv` through `start` with stdout captured; its exit code and output.
    fn run_with(
        start: fn(&Plan<'_>) -> Result<i32, Failed>,
        argv: &[&str],
        env: &[(&str, &str)],
        cwd: Option<&Path>,
    ) -> (i32, String) {
        let (r, w) = pipe();
        let mut plan = Plan::new(argv, env.iter().copied(), OsStr::new(PATH)).unwrap();
        plan.stdio(1, w.as_fd());
        if let Some(d) = cwd {
            plan.cwd(d).unwrap();
        }
        let pid = start(&plan).unwrap();
        drop(plan);
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => (code, out),
            s => panic!("{s:?}"),
        }
    }

    /// Runs `argv` through [`spawn`].
    fn run(argv: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (i32, String) {
        run_with(spawn, argv, env, cwd)
    }

    /// As [`run`], through [`posix_spawn`].
    fn run_posix(argv: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (i32, String) {
        run_with(posix_spawn, argv, env, cwd)
    }

    #[test]
    fn posix_spawn_runs_as_the_vfork_spawn_does() {
        let dir = std::env::temp_dir();
        let script = "printf '%s|%s|%s|' \"$1\" \"$X\" \"$PWD\"; \
                      grep -E '^Sig(Blk|Ign):' /proc/self/status | tr -d '\\t\\n'; \
                      read -r _ _ _ _ g _ < /proc/self/stat; [ \"$g\" = $$ ] && echo ' leader'; exit 3";
        let argv = ["sh", "-c", script, "sh", "a b"];
        let env = [("X", "y z"), ("PATH", PATH)];
        let (code, out) = run_posix(&argv, &env, Some(&dir));
        assert_eq!((code, &out), (3, &run(&argv, &env, Some(&dir)).1));
        let dir = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(
            out,
            format!(
                "a b|y z|{}|SigBlk:0000000000000000SigIgn:0000000000000000 leader\n",
                dir.display()
            )
        );
    }

    #[test]
    fn posix_spawn_failures_and_refusals() {
        let fails = |argv: &[&str], cwd: Option<&Path>| {
            let mut plan = Plan::new(argv, [("A", "b")], OsStr::new(PATH)).unwrap();
            if let Some(d) = cwd {
                plan.cwd(d).unwrap();
            }
            let f = posix_spawn(&plan).unwrap_err();
            assert!(f.pid.is_none(), "the C library reaped it");
            f.error.raw_os_error().unwrap()
        };
        assert_eq!(fails(&["/no/such/program"], None), (Errno::ENOENT as i32));
        assert_eq!(
            fails(&["no-such-program-on-path"], None),
            (Errno::ENOENT as i32)
        );
        let dir = tempdir();
        assert_eq!(
            fails(&["/bin/true"], Some(&dir.join("gone"))),
            (Errno::ENOENT as i32)
        );
        let plain = dir.join("plain");
        std::fs::write(&plain, "just text\n").unwrap();
        assert_eq!(
            fails(&[plain.to_str().unwrap()], None),
            (Errno::EACCES as i32)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // Credentials need the vfork spawn.
        let mut plan = Plan::new(["/bin/true"], [("A", "b")], OsStr::new(PATH)).unwrap();
        plan.creds(Creds {
            uid: 0,
            gid: 0,
            groups: vec![],
            set_groups: false,
        });
        let f = posix_spawn(&plan).unwrap_err();
        assert_eq!(f.error.kind(), io::ErrorKind::Unsupported);
    }

    /// The spawning thread's CPU per spawn of `/bin/true`, vfork against
    /// posix_spawn, alternating batches: `cargo test --release --lib
    /// spawn_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn spawn_cost() {
        use nix::sys::resource::{getrusage, UsageWho};
        let cpu = || {
            let u = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
            let us =
                |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
            us(u.user_time()) + us(u.system_time())
        };
        let n = 2000;
        let batch = |posix: bool| {
            let plan = Plan::new(["/bin/true"], [("PATH", PATH)], OsStr::new(PATH)).unwrap();
            let (c0, t0) = (cpu(), std::time::Instant::now());
            for _ in 0..n {
                let pid = if posix {
                    posix_spawn(&plan)
                } else {
                    spawn(&plan)
                }
                .unwrap();
                waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
            }
            (
                (cpu() - c0) as f64 / n as f64,
                t0.elapsed().as_micros() as f64 / n as f64,
            )
        };
        for round in 0..3 {
            for posix in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                let (c, w) = batch(posix);
                let way = if posix { "posix_spawn" } else { "vfork" };
                eprintln!("round {round} {way:12} cpu {c:6.1} us/spawn, wall {w:6.1} us/spawn");
            }
        }
    }

    fn failure(argv: &[&str]) -> i32 {
        let plan = Plan::new(argv, [("A", "b")], OsStr::new(PATH)).unwrap();
        let f = spawn(&plan).unwrap_err();
        let pid = f.pid.expect("the child was made");
        assert_eq!(
            waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap(),
            WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 127)
        );
        f.error.raw_os_error().unwrap()
    }

    #[test]
    fn runs_with_argv_env_cwd_and_path_search() {
        let dir = std::env::temp_dir();
        let (code, out) = run(
            &[
                "sh",
                "-c",
                "printf '%s|%s|%s' \"$1\" \"$X\" \"$PWD\"; exit 3",
                "sh",
                "a b",
            ],
            &[("X", "y z"), ("PATH", PATH)],
            Some(&dir),
        );
        assert_eq!(code, 3);
        let dir = std::fs::canonicalize(&dir).unwrap();
        assert_eq!(out, format!("a b|y z|{}", dir.display()));
    }

    #[test]
    fn starts_with_no_signal_blocked_or_ignored_and_its_own_group() {
        // The test harness ignores SIGPIPE (Rust does): the child must not.
        let (_, out) = run(&["/bin/cat", "/proc/self/status"], &[], None);
        let field = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .to_string()
        };
        assert_eq!(u64::from_str_radix(&field("SigBlk:"), 16).unwrap(), 0);
        // Nothing ignored, whatever the test process inherited (a shell's
        // `&` ignores SIGINT and SIGQUIT) or set (Rust ignores SIGPIPE).
        assert_eq!(u64::from_str_radix(&field("SigIgn:"), 16).unwrap(), 0);
        let (_, out) = run(&["/bin/cat", "/proc/self/stat"], &[], None);
        let after = out.rsplit_once(')').unwrap().1;
        let f: Vec<&str> = after.split_whitespace().collect();
        // pid is not in `after`; fields: state ppid pgrp ...
        let pgrp: i32 = f[2].parse().unwrap();
        assert_ne!(pgrp, nix::unistd::getpgrp().as_raw());
    }

    #[test]
    fn failures_report_the_errno_as_execvp_would() {
        assert_eq!(failure(&["/no/such/program"]), (Errno::ENOENT as i32));
        assert_eq!(
            failure(&["no-such-program-on-path"]),
            (Errno::ENOENT as i32)
        );
        let dir = tempdir();
        let plain = dir.join("plain");
        std::fs::write(&plain, "just text\n").unwrap();
        // Not executable: EACCES.
        assert_eq!(failure(&[plain.to_str().unwrap()]), (Errno::EACCES as i32));
        // Executable but neither ELF nor #!: ENOEXEC (no /bin/sh fallback).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(failure(&[plain.to_str().unwrap()]), (Errno::ENOEXEC as i32));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_cwd_fails_in_the_child() {
        let plan_dir = tempdir();
        let gone = plan_dir.join("gone");
        let mut plan = Plan::new(["/bin/true"], [("A", "b")], OsStr::new(PATH)).unwrap();
        plan.cwd(&gone).unwrap();
        let f = spawn(&plan).unwrap_err();
        assert_eq!(f.error.raw_os_error(), Some(Errno::ENOENT as i32));
        let pid = nix::unistd::Pid::from_raw(f.pid.unwrap());
        waitpid(pid, None).unwrap();
        std::fs::remove_dir_all(&plan_dir).unwrap();
    }

    #[test]
    fn nul_bytes_are_refused_before_the_clone() {
        assert!(Plan::new(["/bin/true", "a\0b"], [("A", "b")], OsStr::new(PATH)).is_err());
    }

    #[test]
    fn path_candidates_follow_execvp() {
        let c = |p: &str, path: &str| -> Vec<String> {
            candidates(p.as_bytes(), path.as_bytes())
                .into_iter()
                .map(|v| String::from_utf8(v).unwrap())
                .collect()
        };
        assert_eq!(c("ls", "/a:/b/:"), ["/a/ls", "/b/ls", "ls"]);
        assert_eq!(c("./x", "/a"), ["./x"]);
        assert_eq!(c("/bin/x", "/a"), ["/bin/x"]);
        assert!(c("", "/a").is_empty());
    }

    #[test]
    fn the_parent_signal_mask_is_restored() {
        let blk = || {
            let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            s.lines()
                .find(|l| l.starts_with("SigBlk:"))
                .unwrap()
                .to_string()
        };
        let before = blk();
        run(&["/bin/true"], &[], None);
        assert_eq!(before, blk());
    }

    #[test]
    fn concurrent_spawns_on_several_threads() {
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let word = format!("t{t}-{i}");
                        let (code, out) = run(&["/bin/echo", &word], &[], None);
                        assert_eq!((code, out), (0, format!("{word}\n")));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    /// A child given a cgroup is made inside it (by `clone3` on x86-64).
    #[test]
    fn a_child_is_born_in_its_cgroup() {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let Some(rel) = own.lines().find_map(|l| l.strip_prefix("0::")) else {
            return;
        };
        let Some(mount) = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.controllers").exists())
        else {
            return;
        };
        let name = format!("execd-vfork-test-{}", crate::process::new_id());
        let dir = mount.join(rel.trim_start_matches('/')).join(&name);
        if std::fs::create_dir(&dir).is_err() {
            eprintln!("skipped: no writable cgroup v2");
            return;
        }
        let dirfd = std::fs::File::open(&dir).unwrap();
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("cgroup.procs"))
            .unwrap();
        let (r, w) = pipe();
        let mut plan = Plan::new(
            ["/bin/cat", "/proc/self/cgroup"],
            [("A", "b")],
            OsStr::new(PATH),
        )
        .unwrap();
        plan.stdio(1, w.as_fd())
            .cgroup(dirfd.as_fd(), procs.as_fd());
        let pid = spawn(&plan).unwrap();
        drop(plan);
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        std::fs::remove_dir(&dir).unwrap();
        assert!(out.contains(&format!("/{name}\n")), "{out}");
        assert_eq!(CLONE3.load(Ordering::Relaxed), cfg!(target_arch = "x86_64"));
    }

    fn tempdir() -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("execd-vfork-{}", crate::process::new_id()));
        std::fs::create_dir(&d).unwrap();
        d
    }
}
