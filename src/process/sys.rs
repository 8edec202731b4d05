//! The system interface nix 0.30 does not wrap, in one place: `wait4` with
//! rusage, `pidfd_open` and `pidfd_send_signal`, the chdir file action of
//! `posix_spawn`, `TIOCSCTTY`/`TIOCSWINSZ`, and what the vfork spawn's
//! child needs raw (`clone`/`clone3` onto a stack of its own, the kernel's
//! signal calls that reach glibc's internal signals too, per-thread
//! credential syscalls, an allocation-free `execve`), and the few calls
//! other modules need that nix lacks too: a thread's capabilities
//! (`capget`/`capset`), extended attributes, `sync_file_range`,
//! `malloc_trim`, an interface's flags, `TCP_NOTSENT_LOWAT`, `pread` into
//! uninitialised memory (and `read`) and `preadv2` with `RWF_NOWAIT`. Every
//! other module uses nix; every `unsafe` here says why it is sound.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int, c_void};

use nix::errno::Errno;

// ---------------------------------------------------------------- wait4

/// One reaped child: its pid, raw wait status and rusage.
pub struct Reaped {
    pub pid: i32,
    pub status: c_int,
    pub user: std::time::Duration,
    pub system: std::time::Duration,
    /// `ru_maxrss`, KiB.
    pub max_rss_kib: i64,
}

impl Reaped {
    /// Exit code when it exited normally.
    pub fn code(&self) -> Option<i32> {
        libc::WIFEXITED(self.status).then(|| libc::WEXITSTATUS(self.status))
    }

    /// Signal number when a signal ended it.
    pub fn signal(&self) -> Option<i32> {
        libc::WIFSIGNALED(self.status).then(|| libc::WTERMSIG(self.status))
    }
}

/// `wait4(-1, WNOHANG)`: reaps one zombie child if there is one.
pub fn wait4_any_nohang() -> Option<Reaped> {
    let mut status = 0;
    // SAFETY: rusage is plain data (integers and timevals): all zero is valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to locals; WNOHANG never blocks.
    let pid = unsafe { libc::wait4(-1, &mut status, libc::WNOHANG, &mut ru) };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec.max(0) as u64)
            + std::time::Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (pid > 0).then(|| Reaped {
        pid,
        status,
        user: tv(ru.ru_utime),
        system: tv(ru.ru_stime),
        max_rss_kib: ru.ru_maxrss,
    })
}

// ------------------------------------------------------------ descriptors

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)` (Linux 5.11+): marks every
/// descriptor from `first` up close-on-exec, closing none.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: integer arguments only; with CLOSE_RANGE_CLOEXEC nothing is
    // closed, so no descriptor owned elsewhere in the process is invalidated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    Errno::result(r).map(drop).map_err(io::Error::from)
}

// ----------------------------------------------------------------- random

/// Fills `buf` from the kernel's random source (`getrandom(2)`, blocking
/// only until the pool is first initialised), retrying on EINTR.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match Errno::result(n) {
            Ok(n) => got += n as usize,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- pidfd

/// `pidfd_open(pid, 0)` (always close-on-exec: the kernel sets it).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and a flags word; no pointers.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the syscall returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as c_int) })
}

/// `pidfd_send_signal(fd, signal, NULL, 0)`.
pub fn pidfd_send_signal(fd: BorrowedFd<'_>, signal: c_int) -> io::Result<()> {
    // SAFETY: a valid pidfd, a signal number, a null siginfo (meaning: as
    // kill(2) would fill it) and no flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// ------------------------------------------------------------ posix_spawn

/// `posix_spawn_file_actions_addchdir_np` (glibc 2.29+): the child changes
/// to `dir` when the actions run. nix has no wrapper.
pub fn spawn_add_chdir(
    actions: &mut nix::spawn::PosixSpawnFileActions,
    dir: &CStr,
) -> nix::Result<()> {
    // SAFETY: `PosixSpawnFileActions` is `#[repr(transparent)]` over
    // `posix_spawn_file_actions_t` (initialised by its constructor), so the
    // pointer is to a live, initialised actions object, borrowed mutably
    // here; glibc copies `dir` before returning.
    let r = unsafe {
        libc::posix_spawn_file_actions_addchdir_np(
            std::ptr::from_mut(actions).cast::<libc::posix_spawn_file_actions_t>(),
            dir.as_ptr(),
        )
    };
    match r {
        0 => Ok(()),
        e => Err(Errno::from_raw(e)),
    }
}

/// Every signal, glibc's internal 32 and 33 included, which `sigfillset`
/// (and so nix's `SigSet::all`) leaves out. As `POSIX_SPAWN_SETSIGDEF`'s
/// set it makes glibc's `posix_spawn` put those back to `SIG_DFL` too;
/// without them it leaves them ignored in the child, and an ignored signal
/// stays ignored across `execve` (a program whose C library gives 32 or 33
/// a use, as musl's or Go's do, would inherit them ignored).
pub fn every_signal() -> nix::sys::signal::SigSet {
    let mut set: libc::sigset_t = *nix::sys::signal::SigSet::all().as_ref();
    const _: () = assert!(std::mem::size_of::<libc::sigset_t>() >= 8);
    // SAFETY: glibc's sigset_t is an array of unsigned longs with signal n
    // at bit n-1 of the first (64-bit) word; a valid set (from sigfillset)
    // with two more signal bits set is a valid set.
    unsafe {
        *std::ptr::from_mut(&mut set).cast::<u64>() |= 0b11 << 31;
        nix::sys::signal::SigSet::from_sigset_t_unchecked(set)
    }
}

// ------------------------------------------------------------- terminals

nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_write_int_bad!(tiocsctty, libc::TIOCSCTTY);

/// Sets the window size of the terminal `fd` (`TIOCSWINSZ`).
pub fn set_window_size(fd: BorrowedFd<'_>, cols: u16, rows: u16) -> nix::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer to a local.
    unsafe { tiocswinsz(fd.as_raw_fd(), &ws) }.map(drop)
}

/// Makes the terminal on fd 0 the calling process's controlling terminal
/// (`ioctl(0, TIOCSCTTY, 0)`), for a session leader. Async-signal-safe.
pub fn set_controlling_terminal() -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal); no
    // pointer is passed.
    unsafe { tiocsctty(0, 0) }.map(drop)
}

// ------------------------------------------------- the vfork child, raw

/// The kernel's signal set: one bit per signal, 64 signals (`_NSIG_WORDS`
/// words of 64 bits on the 64-bit targets execd is built for).
pub type KernelSigset = u64;
const KERNEL_SIGSET_SIZE: usize = std::mem::size_of::<KernelSigset>();

/// The kernel's `struct sigaction` on x86-64 and AArch64: handler, flags,
/// restorer, mask; all zero is `SIG_DFL` with no flags.
type KernelSigaction = [u64; 4];
const _: () = assert!(std::mem::size_of::<usize>() == 8, "64-bit Linux only");

/// One more than the highest signal number on Linux (`_NSIG`).
pub const NSIG: c_int = 65;

/// `rt_sigprocmask(SIG_SETMASK)` on the calling thread, returning the old
/// mask, as a raw syscall: glibc's
/// wrappers (and nix's, through them) leave its internal signals (32, 33)
/// out of a blocked set, and a vfork child must not take those on the
/// parent's handlers either. Async-signal-safe.
pub fn sigprocmask_all(set: KernelSigset) -> Result<KernelSigset, Errno> {
    let mut old: KernelSigset = 0;
    // SAFETY: valid pointers to locals of the kernel's sigset size.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            std::ptr::from_ref(&set),
            std::ptr::from_mut(&mut old),
            KERNEL_SIGSET_SIZE,
        )
    };
    Errno::result(r).map(|_| old)
}

/// Puts `sig` back to `SIG_DFL` if it has a handler or is ignored, through
/// the raw `rt_sigaction` (which reaches glibc's internal signals too).
/// Async-signal-safe.
pub fn reset_signal(sig: c_int) -> Result<(), Errno> {
    let dfl: KernelSigaction = [0; 4];
    let mut cur: KernelSigaction = [0; 4];
    // SAFETY: a null new action (query only) and a valid out pointer of the
    // kernel's struct size.
    let got = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::null::<KernelSigaction>(),
            std::ptr::from_mut(&mut cur),
            KERNEL_SIGSET_SIZE,
        )
    };
    if got != 0 || cur[0] as usize == libc::SIG_DFL {
        return Ok(());
    }
    // SAFETY: a valid pointer to an all-zero (SIG_DFL) kernel sigaction.
    let r = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            sig,
            std::ptr::from_ref(&dfl),
            std::ptr::null_mut::<KernelSigaction>(),
            KERNEL_SIGSET_SIZE,
        )
    };
    Errno::result(r).map(drop)
}

/// `setgroups`, `setgid` and `setuid` as raw syscalls, which change the
/// calling task only (glibc's wrappers, and so nix's, make every thread
/// of the process change, which from a child sharing execd's memory would
/// reach execd's threads). Async-signal-safe.
pub fn set_credentials_this_task(groups: Option<&[u32]>, gid: u32, uid: u32) -> Result<(), Errno> {
    if let Some(groups) = groups {
        setgroups_this_task(groups)?;
    }
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::syscall(libc::SYS_setgid, gid) })?;
    // SAFETY: integer arguments only.
    Errno::result(unsafe { libc::syscall(libc::SYS_setuid, uid) })?;
    Ok(())
}

/// `setgroups` as the raw syscall: the calling task's supplementary groups
/// only (glibc's wrapper, and so nix's, changes every thread's).
/// Async-signal-safe.
pub fn setgroups_this_task(groups: &[u32]) -> Result<(), Errno> {
    // SAFETY: a length and a pointer to that many gids, alive for the call.
    Errno::result(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
        .map(drop)
}

/// `execve` without allocating (nix's builds its pointer arrays on the
/// heap, which a vfork child must not touch). Returns the errno.
///
/// # Safety
/// `argv` and `envp` are null-terminated arrays of pointers to C strings,
/// alive for the call.
pub unsafe fn execve(path: &CStr, argv: *const *const c_char, envp: *const *const c_char) -> Errno {
    // SAFETY: per the caller's contract; execve returns only on failure.
    unsafe { libc::execve(path.as_ptr(), argv, envp) };
    Errno::last()
}

/// `_exit(code)`: ends the calling task without running anything of the
/// parent's (no atexit, no stdio flush). Async-signal-safe.
pub fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit never returns and touches no user memory.
    unsafe { libc::_exit(code) }
}

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` running `child(arg)` on the
/// stack whose top is `top`; returns the pid once the child has exec'd or
/// exited.
///
/// # Safety
/// `top` is the 16-byte aligned top of memory nothing else uses until
/// this returns; `child` only makes async-signal-safe calls, allocates
/// nothing and ends in `execve` or `_exit`; `arg` is what it expects.
pub unsafe fn clone_vm(
    child: extern "C" fn(*mut c_void) -> c_int,
    top: *mut c_void,
    arg: *mut c_void,
) -> io::Result<i32> {
    // SAFETY: per the caller's contract.
    let pid = unsafe {
        libc::clone(
            child,
            top,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            arg,
        )
    };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(pid)
}

/// `struct clone_args` of `<linux/sched.h>`, up to `cgroup` (version 2).
#[repr(C)]
#[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3(CLONE_VM | CLONE_VFORK | CLONE_INTO_CGROUP)`: the child starts
/// on `stack` (lowest address, size) inside the cgroup whose directory is
/// `cgroup` and runs `child(arg)`, which never returns. Returns the pid once
/// the child has exec'd or exited. The C library has no `clone3` wrapper
/// that runs a function on a new stack, so this makes the syscall itself.
///
/// # Safety
/// As for [`clone_vm`]: `stack` is memory nothing else uses until this
/// returns, and `child`/`arg` are as there.
#[cfg(target_arch = "x86_64")]
pub unsafe fn clone3_vm(
    child: extern "C" fn(*mut c_void) -> c_int,
    stack: (u64, u64),
    cgroup: BorrowedFd<'_>,
    arg: *mut c_void,
) -> io::Result<i32> {
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
        cgroup: cgroup.as_raw_fd() as u64,
    };
    let ret: i64;
    // SAFETY: the syscall returns twice. In this thread (rax = pid or
    // -errno) only rax, rcx and r11 change. The child (rax = 0) starts with
    // the same registers but rsp at the top of `stack` (16-byte aligned), so
    // it never touches this thread's stack: it calls `child(arg)`, which
    // ends in execve or _exit, and exits should that ever return.
    // CLONE_VFORK keeps this thread suspended until then.
    unsafe {
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
            in("r13") child,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    if ret < 0 {
        return Err(io::Error::from_raw_os_error((-ret) as c_int));
    }
    Ok(ret as i32)
}

/// Elsewhere: refused (`ENOSYS`), so the plain clone and a write to
/// `cgroup.procs` are used.
///
/// # Safety
/// None needed; it makes no call.
#[cfg(not(target_arch = "x86_64"))]
pub unsafe fn clone3_vm(
    _child: extern "C" fn(*mut c_void) -> c_int,
    _stack: (u64, u64),
    _cgroup: BorrowedFd<'_>,
    _arg: *mut c_void,
) -> io::Result<i32> {
    Err(io::Error::from_raw_os_error(libc::ENOSYS))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process_pidfd() {
        use std::os::fd::AsFd;
        let fd = super::pidfd_open(std::process::id() as i32).unwrap();
        super::pidfd_send_signal(fd.as_fd(), 0).unwrap();
    }
}

// ---------------------------------------------------------------- capabilities

/// `struct __user_cap_header_struct` (linux/capability.h).
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

/// `struct __user_cap_data_struct`; version 3 takes two (64 capabilities).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct CapData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

/// A thread's capability sets: capabilities 0-31, then 32-63.
pub type Caps = [CapData; 2];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capabilities.
pub fn capget_thread() -> Result<Caps, Errno> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = Caps::default();
    // SAFETY: hdr and data are valid for the kernel to read and write; pid 0
    // is the calling thread; version 3 takes an array of two CapData.
    let r = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    Errno::result(r).map(|_| data)
}

/// Sets the calling thread's capabilities (the raw system call acts on
/// this thread only).
pub fn capset_thread(data: &Caps) -> Result<(), Errno> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: hdr and data are valid for the kernel to read; pid 0 is the
    // calling thread; version 3 takes an array of two CapData.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr, data.as_ptr()) };
    Errno::result(r).map(drop)
}

/// Drops capability `cap` from the calling thread's bounding set.
pub fn capbset_drop(cap: u32) -> Result<(), Errno> {
    // SAFETY: PR_CAPBSET_DROP takes a capability number and no pointers.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) };
    Errno::result(r).map(drop)
}

// ---------------------------------------------------------------- xattrs

/// `lgetxattr`: the value's length, written into `buf`.
pub fn lgetxattr(path: &CStr, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: both strings are NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    Errno::result(n).map(|n| n as usize)
}

/// `llistxattr`: the NUL-separated names' length, written into `buf`.
pub fn llistxattr(path: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: the path is NUL-terminated; buf is writable for its length.
    let n = unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(n).map(|n| n as usize)
}

/// `lsetxattr` with no flags.
pub fn lsetxattr(path: &CStr, name: &CStr, value: &[u8]) -> Result<(), Errno> {
    // SAFETY: both names are NUL-terminated C strings; the value is read for
    // exactly value.len() bytes.
    let r = unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

// ---------------------------------------------------------------- memory and write-back

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts write-back of a range.
pub fn start_writeback(fd: BorrowedFd<'_>, offset: i64, len: i64) -> Result<(), Errno> {
    // SAFETY: a plain syscall on an open descriptor; it reads no memory.
    let r =
        unsafe { libc::sync_file_range(fd.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE) };
    Errno::result(r).map(drop)
}

/// `mallopt(M_ARENA_MAX, n)` (glibc): at most `n` malloc arenas. Call it
/// before any other thread exists.
pub fn malloc_arenas(n: c_int) {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only adjusts allocator tuning and takes no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, n);
    }
    #[cfg(not(target_env = "gnu"))]
    let _ = n;
}

/// `malloc_trim(0)`: gives freed heap memory back to the kernel.
pub fn malloc_trim() {
    // SAFETY: glibc's malloc_trim takes no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

// ---------------------------------------------------------------- network interfaces

/// Sets `IFF_UP` on the interface `name` through the socket `sock`.
pub fn interface_up(sock: BorrowedFd<'_>, name: &CStr) -> Result<(), Errno> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes_with_nul();
    if bytes.len() > req.ifr_name.len() {
        return Err(Errno::EINVAL);
    }
    for (d, c) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *c as c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads and writes one ifreq, which outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    Errno::result(r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads one ifreq, which outlives the call.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    Errno::result(r).map(drop)
}

// ---------------------------------------------------------------- sockets

/// `TCP_NOTSENT_LOWAT`: the socket takes (and polls writable) only while
/// fewer than `bytes` of it are queued and not yet sent; 0 puts back the
/// system's default (`net.ipv4.tcp_notsent_lowat`).
pub fn set_tcp_notsent_lowat(sock: BorrowedFd<'_>, bytes: u32) -> Result<(), Errno> {
    let value = c_int::try_from(bytes).unwrap_or(c_int::MAX);
    // SAFETY: the kernel reads size_of::<c_int>() bytes from a live local
    // and keeps no pointer to it.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    Errno::result(r).map(drop)
}

/// `read(2)` into a buffer's spare capacity, without zeroing it first (nix's
/// `read` takes an initialised slice): the bytes read are appended to `buf`.
/// Returns how many. Retries on EINTR.
pub fn read_buf(fd: BorrowedFd<'_>, buf: &mut bytes::BytesMut) -> io::Result<usize> {
    let spare = buf.spare_capacity_mut();
    loop {
        // SAFETY: the pointer and length describe `spare`, which `read`
        // only writes; no reference to uninitialised bytes is made here.
        let n = unsafe { libc::read(fd.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len()) };
        if n >= 0 {
            let n = n as usize;
            // SAFETY: `read` initialised the first `n` bytes after the
            // buffer's length.
            unsafe { buf.set_len(buf.len() + n) };
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `pread(2)` into a buffer's spare capacity, without zeroing it first (nix's
/// `pread` takes an initialised slice). Returns the bytes read, which are
/// initialised from the start of `spare`. Retries on EINTR.
pub fn pread_uninit(
    fd: BorrowedFd<'_>,
    spare: &mut [std::mem::MaybeUninit<u8>],
    offset: i64,
) -> io::Result<usize> {
    loop {
        // SAFETY: the pointer and length describe `spare`, which `pread`
        // only writes; no reference to uninitialised bytes is made here.
        let n = unsafe {
            libc::pread(
                fd.as_raw_fd(),
                spare.as_mut_ptr().cast(),
                spare.len(),
                offset,
            )
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `preadv2(2)` with `RWF_NOWAIT` into a buffer's spare capacity: reads
/// only what the page cache holds, never waiting for the disk or a locked
/// page. Returns the bytes read (initialised from the start of `spare`;
/// fewer than asked when the rest is not cached); `WouldBlock` when none
/// is, `Unsupported` when the kernel or file system lacks the flag.
/// Retries on EINTR.
pub fn pread_cached_uninit(
    fd: BorrowedFd<'_>,
    spare: &mut [std::mem::MaybeUninit<u8>],
    offset: i64,
) -> io::Result<usize> {
    let iov = libc::iovec {
        iov_base: spare.as_mut_ptr().cast(),
        iov_len: spare.len(),
    };
    loop {
        // SAFETY: one iovec describing `spare`, which `preadv2` only writes;
        // the iovec outlives the call and no reference to uninitialised
        // bytes is made here.
        let n = unsafe { libc::preadv2(fd.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
            Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => {
                return Err(io::ErrorKind::Unsupported.into())
            }
            _ => return Err(e),
        }
    }
}

/// A signal taken by `sigwaitinfo(2)`: its number, `si_code`, and the
/// sender's pid for `SI_USER` (0 when the sender is outside the caller's
/// pid namespace).
pub struct Waited {
    pub signal: c_int,
    pub code: c_int,
    pub sender: Option<i32>,
}

/// `sigwaitinfo(2)` on a set the caller has blocked (nix has `SigSet::wait`,
/// which gives no `siginfo`).
pub fn sigwaitinfo(set: &nix::sys::signal::SigSet) -> Result<Waited, Errno> {
    let mut info = std::mem::MaybeUninit::<libc::siginfo_t>::uninit();
    // SAFETY: `set` is a valid signal set and `info` a buffer of the size the
    // kernel writes.
    let n = unsafe { libc::sigwaitinfo(set.as_ref(), info.as_mut_ptr()) };
    if n < 0 {
        return Err(Errno::last());
    }
    // SAFETY: sigwaitinfo returned a signal, so it filled `info`.
    let info = unsafe { info.assume_init() };
    let sender = (info.si_code == libc::SI_USER)
        // SAFETY: for SI_USER the kernel filled the pid field.
        .then(|| unsafe { info.si_pid() });
    Ok(Waited {
        signal: n,
        code: info.si_code,
        sender,
    })
}
