//! Process file descriptors: a handle on one process that stays valid after
//! the process is reaped and its pid reused, so signals sent through it can
//! never reach a stranger. nix 0.30 has no wrapper; the raw syscalls are in
//! [`super::sys`].

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::sys;

/// Opens a pidfd for `pid` (always close-on-exec: the kernel sets it).
pub fn open(pid: i32) -> io::Result<OwnedFd> {
    sys::pidfd_open(pid)
}

/// Sends `signal` to the process behind `fd`. Fails with ESRCH once it has exited.
pub fn send_signal(fd: &OwnedFd, signal: i32) -> io::Result<()> {
    sys::pidfd_send_signal(fd.as_fd(), signal)
}

/// Whether the process behind `fd` has exited (a pidfd polls readable then).
pub fn exited(fd: &OwnedFd) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut p = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
    poll(&mut p, PollTimeout::ZERO).is_ok_and(|n| n > 0)
        && p[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
}

#[cfg(test)]
mod tests {
    #[test]
    fn own_process() {
        let fd = super::open(std::process::id() as i32).unwrap();
        assert!(!super::exited(&fd));
        super::send_signal(&fd, 0).unwrap();
    }
}
