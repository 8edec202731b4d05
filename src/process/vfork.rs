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
//! 4. its own process group (`setpgid(0, 0)`);
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
//! wrapper that runs a function on a new stack, so [`clone3_vm`] makes the
//! syscall itself (x86-64; elsewhere, and where a seccomp filter refuses
//! `clone3`, the write is used).
//!
//! The child's stack is a mapping per thread, made once and reused (the
//! child is done with it when the parent resumes). Raw `libc` is used
//! throughout the child: it must make exactly the calls listed, with nothing
//! allocated.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::raw::{c_char, c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::mman::{MapFlags, ProtFlags};

/// Size of the child's stack (above one guard page). The child runs a few
/// small frames and libc's thin syscall wrappers.
const STACK_SIZE: usize = 64 * 1024;

/// One more than the highest signal number on Linux (`_NSIG`).
const NSIG: c_int = 65;

/// The kernel's signal set: one bit per signal, 64 signals (`_NSIG_WORDS`
/// words of 64 bits on the 64-bit targets execd is built for).
type KernelSigset = u64;
const KERNEL_SIGSET_SIZE: usize = std::mem::size_of::<KernelSigset>();

/// The kernel's `struct sigaction` on x86-64 and AArch64: handler, flags,
/// restorer, mask; all zero is `SIG_DFL` with no flags.
type KernelSigaction = [u64; 4];
const _: () = assert!(std::mem::size_of::<usize>() == 8, "64-bit Linux only");

/// `rt_sigprocmask` on the calling thread, as a raw syscall: glibc's
/// wrappers leave its internal signals (32, 33) out of a blocked set, and
/// the child must not take those on the parent's handlers either.
///
/// # Safety
/// Async-signal-safe; no preconditions beyond valid pointers (ensured here).
unsafe fn sigprocmask_raw(how: c_int, set: &KernelSigset, old: Option<&mut KernelSigset>) -> c_int {
    let old = old.map_or(std::ptr::null_mut(), std::ptr::from_mut);
    libc::syscall(
        libc::SYS_rt_sigprocmask,
        how,
        std::ptr::from_ref(set),
        old,
        KERNEL_SIGSET_SIZE,
    ) as c_int
}

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
    _owned: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStrings {
    fn new(owned: Vec<CString>) -> CStrings {
        let mut ptrs: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        // Moving `owned` into the struct moves the Vec, not the strings'
        // heap buffers, so the pointers stay valid.
        CStrings {
            _owned: owned,
            ptrs,
        }
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
}

/// What the child reads: plain pointers into a [`Plan`] that outlives the
/// clone, and the slot for its errno.
#[repr(C)]
struct Args {
    paths: *const *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdio: [c_int; 3],
    procs: c_int,
    has_creds: bool,
    set_groups: bool,
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: *const libc::gid_t,
    ngroups: usize,
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
        return Err(Failed::before(io::Error::from_raw_os_error(libc::ENOENT)));
    }
    let (has_creds, set_groups, uid, gid, groups, ngroups) = match &plan.creds {
        Some(c) => (
            true,
            c.set_groups,
            c.uid,
            c.gid,
            c.groups.as_ptr(),
            c.groups.len(),
        ),
        None => (false, false, 0, 0, std::ptr::null(), 0),
    };
    let fd = |f: &Option<BorrowedFd<'_>>| f.as_ref().map_or(-1, |f| f.as_raw_fd());
    let mut args = Args {
        paths: plan.paths.ptrs.as_ptr(),
        argv: plan.argv.ptrs.as_ptr(),
        envp: plan.envp.ptrs.as_ptr(),
        cwd: plan.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        stdio: [fd(&plan.stdio[0]), fd(&plan.stdio[1]), fd(&plan.stdio[2])],
        procs: fd(&plan.procs),
        has_creds,
        set_groups,
        uid,
        gid,
        groups,
        ngroups,
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
            if let Some(dir) = plan.cgroup.as_ref().filter(|_| CLONE3.load(Ordering::Relaxed)) {
                // Born in the cgroup: the child has nothing to write.
                args.procs = -1;
                match clone_vfork(stack, &args, Some(dir.as_raw_fd())) {
                    Err(e) if clone3_refused(&e) => {
                        CLONE3.store(false, Ordering::Relaxed);
                        tracing::info!(error = %e, "clone3 is refused here: command children join their cgroup by a write to cgroup.procs");
                        args.procs = fd(&plan.procs);
                    }
                    r => return r,
                }
            }
            clone_vfork(stack, &args, None)
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
        Some(libc::ENOSYS | libc::EPERM | libc::E2BIG | libc::EINVAL)
    )
}

/// Clones the child onto `stack` (into the cgroup whose directory is
/// `cgroup`, if given), with every signal blocked in this thread
/// meanwhile; returns once it has exec'd or exited.
fn clone_vfork(stack: &Stack, args: &Args, cgroup: Option<c_int>) -> io::Result<i32> {
    // Block every signal in this thread so none is handled on the child's
    // stack (by the parent's handlers) before the child has reset them.
    let mut old: KernelSigset = 0;
    // SAFETY: valid pointers to locals; changes this thread's mask only.
    if unsafe { sigprocmask_raw(libc::SIG_SETMASK, &KernelSigset::MAX, Some(&mut old)) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `child` only reads `args` (and what it points into, all owned
    // by the caller's `Plan`, alive until we return) and stores into
    // `args.err`; it makes async-signal-safe calls only and ends in execve or
    // _exit. `top` is the top of this thread's own child stack, which nothing
    // else uses. CLONE_VFORK suspends this thread until the child has exec'd
    // (it then runs in a new address space) or exited, so `args`, the stack
    // and the plan outlive its use of them, and the stack is free again.
    let arg = std::ptr::from_ref(args) as *mut c_void;
    let pid = match cgroup {
        // SAFETY: as below; `clone3_vm` runs `child` on the stack's usable
        // part, and `cgroup` is an open cgroup directory.
        Some(dir) => unsafe { clone3_vm(stack.usable(), dir, arg) },
        // SAFETY: as below.
        None => unsafe {
            libc::clone(
                child,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                arg,
            )
        },
    };
    // Read before anything else can touch errno (when the clone failed, no
    // child ran on this thread's TLS).
    let clone_error = (pid < 0).then(io::Error::last_os_error);
    // SAFETY: as above; `old` is the mask the kernel reported.
    let _ = unsafe { sigprocmask_raw(libc::SIG_SETMASK, &old, None) };
    match clone_error {
        Some(e) => Err(e),
        None => Ok(pid),
    }
}

/// `struct clone_args` of `<linux/sched.h>`, up to `cgroup` (version 2).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: the child starts
/// on `stack` (lowest address, size) inside the cgroup `cgroup` and runs
/// [`child`]`(arg)`, which never returns. Returns the pid, or -1 with errno
/// set, once the child has exec'd or exited.
///
/// # Safety
/// As for `libc::clone` with `CLONE_VM | CLONE_VFORK`: `stack` is memory
/// nothing else uses until this returns, and `arg` is what [`child`] expects.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vm(stack: (u64, u64), cgroup: c_int, arg: *mut c_void) -> c_int {
    let cl = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK) as u64 | CLONE_INTO_CGROUP,
        pidfd: 0,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.0,
        stack_size: stack.1,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: cgroup as u64,
    };
    let entry: extern "C" fn(*mut c_void) -> c_int = child;
    let ret: i64;
    // SAFETY: the syscall returns twice. In this thread (rax = pid or
    // -errno) only rax, rcx and r11 change. The child (rax = 0) starts with
    // the same registers but rsp at the top of `stack` (16-byte aligned), so
    // it never touches this thread's stack: it calls `child(arg)`, which
    // ends in execve or _exit, and exits should that ever return.
    // CLONE_VFORK keeps this thread suspended until then.
    std::arch::asm!(
        "syscall",
        "test rax, rax",
        "jnz 2f",
        "xor ebp, ebp",
        "mov rdi, r12",
        "call r13",
        "mov edi, eax",
        "mov eax, {exit}",
        "syscall",
        "ud2",
        "2:",
        exit = const libc::SYS_exit,
        inlateout("rax") libc::SYS_clone3 => ret,
        in("rdi") std::ptr::from_ref(&cl),
        in("rsi") std::mem::size_of::<CloneArgs>(),
        in("r12") arg,
        in("r13") entry,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    if ret < 0 {
        // SAFETY: this thread's errno.
        *libc::__errno_location() = (-ret) as c_int;
        return -1;
    }
    ret as c_int
}

/// Elsewhere: refused, so the plain clone and the write are used.
///
/// # Safety
/// None needed; it makes no call.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_vm(_stack: (u64, u64), _cgroup: c_int, _arg: *mut c_void) -> c_int {
    // SAFETY: this thread's errno.
    *libc::__errno_location() = libc::ENOSYS;
    -1
}

/// The child: runs the steps, and on failure reports the errno and exits.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `Args` that `spawn` passed, alive and unchanged
    // while the parent is suspended.
    let a = unsafe { &*(arg as *const Args) };
    // SAFETY: see `prepare_and_exec`: `a` is fully initialised by `spawn`.
    let err = unsafe { prepare_and_exec(a) };
    a.err
        .store(if err == 0 { libc::EIO } else { err }, Ordering::SeqCst);
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(127) }
}

/// errno of the calling thread.
///
/// # Safety
/// Call right after a failed libc call.
unsafe fn errno() -> c_int {
    *libc::__errno_location()
}

/// Steps 1 to 7 of the module comment. Returns only on failure, with the
/// errno. Only async-signal-safe calls, no allocation, no panicking code.
///
/// # Safety
/// `a` must be the `Args` built by [`spawn`], on the child's side of a
/// `CLONE_VM | CLONE_VFORK` clone made with every signal blocked.
unsafe fn prepare_and_exec(a: &Args) -> c_int {
    // SAFETY (every call below): raw syscalls, or libc's thin wrappers of
    // single syscalls (async-signal-safe, no lock, no allocation), on
    // locals or on pointers into the `Plan` that `spawn` keeps alive.
    // 1. Handlers are the parent's code, and what execd's launcher ignored
    // (a shell's `&` ignores SIGINT and SIGQUIT, nohup SIGHUP, Rust SIGPIPE)
    // is not the command's business: every disposition back to the default
    // (through the raw syscall, which reaches glibc's internal signals too).
    let dfl: KernelSigaction = [0; 4];
    let mut sig: c_int = 1;
    while sig < NSIG {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            let mut cur: KernelSigaction = [0; 4];
            let got = libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                std::ptr::null::<KernelSigaction>(),
                &mut cur,
                KERNEL_SIGSET_SIZE,
            );
            let handler = cur[0] as usize;
            if got == 0
                && handler != libc::SIG_DFL
                && libc::syscall(
                    libc::SYS_rt_sigaction,
                    sig,
                    &dfl,
                    std::ptr::null_mut::<KernelSigaction>(),
                    KERNEL_SIGSET_SIZE,
                ) != 0
            {
                return errno();
            }
        }
        sig += 1;
    }
    // 2. stdio. The sources are execd's descriptors above 2 (0 to 2 are
    // always open in a Rust process); if one is its own target, dup2 would
    // leave it close-on-exec, so that flag is cleared instead.
    for (target, &fd) in (0..).zip(a.stdio.iter()) {
        if fd == target {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return errno();
            }
        } else if fd >= 0 && libc::dup2(fd, target) == -1 {
            return errno();
        }
    }
    // 3. Working directory (as root, as before the credentials change).
    if !a.cwd.is_null() && libc::chdir(a.cwd) == -1 {
        return errno();
    }
    // 4. Its own process group.
    if libc::setpgid(0, 0) == -1 {
        return errno();
    }
    // 5. Into the cgroup, while still root.
    if a.procs >= 0 {
        let n = libc::write(a.procs, b"0".as_ptr().cast(), 1);
        if n == -1 {
            return errno();
        }
        if n != 1 {
            return libc::EIO;
        }
    }
    // 6. Credentials, for this task only.
    if a.has_creds {
        if a.set_groups && libc::syscall(libc::SYS_setgroups, a.ngroups, a.groups) == -1 {
            return errno();
        }
        if libc::syscall(libc::SYS_setgid, a.gid) == -1 {
            return errno();
        }
        if libc::syscall(libc::SYS_setuid, a.uid) == -1 {
            return errno();
        }
    }
    // 7. The program's signal mask, then exec, as execvp searches.
    if sigprocmask_raw(libc::SIG_SETMASK, &0, None) != 0 {
        return errno();
    }
    let mut eacces = false;
    let mut last = libc::ENOENT;
    let mut p = a.paths;
    while !(*p).is_null() {
        libc::execve(*p, a.argv, a.envp);
        last = errno();
        match last {
            libc::EACCES => eacces = true,
            libc::ENOENT | libc::ESTALE | libc::ENOTDIR | libc::ENODEV | libc::ETIMEDOUT => {}
            _ => return last,
        }
        p = p.add(1);
    }
    if eacces {
        libc::EACCES
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

    /// Runs `argv` with stdout captured; its exit code and output.
    fn run(argv: &[&str], env: &[(&str, &str)], cwd: Option<&Path>) -> (i32, String) {
        let (r, w) = pipe();
        let mut plan = Plan::new(argv, env.iter().copied(), OsStr::new(PATH)).unwrap();
        plan.stdio(1, w.as_fd());
        if let Some(d) = cwd {
            plan.cwd(d).unwrap();
        }
        let pid = spawn(&plan).unwrap();
        drop(plan);
        drop(w);
        let mut out = String::new();
        std::fs::File::from(r).read_to_string(&mut out).unwrap();
        match waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap() {
            WaitStatus::Exited(_, code) => (code, out),
            s => panic!("{s:?}"),
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
        assert_eq!(failure(&["/no/such/program"]), libc::ENOENT);
        assert_eq!(failure(&["no-such-program-on-path"]), libc::ENOENT);
        let dir = tempdir();
        let plain = dir.join("plain");
        std::fs::write(&plain, "just text\n").unwrap();
        // Not executable: EACCES.
        assert_eq!(failure(&[plain.to_str().unwrap()]), libc::EACCES);
        // Executable but neither ELF nor #!: ENOEXEC (no /bin/sh fallback).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(failure(&[plain.to_str().unwrap()]), libc::ENOEXEC);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_cwd_fails_in_the_child() {
        let plan_dir = tempdir();
        let gone = plan_dir.join("gone");
        let mut plan = Plan::new(["/bin/true"], [("A", "b")], OsStr::new(PATH)).unwrap();
        plan.cwd(&gone).unwrap();
        let f = spawn(&plan).unwrap_err();
        assert_eq!(f.error.raw_os_error(), Some(libc::ENOENT));
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
