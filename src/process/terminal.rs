//! Processes on a pseudo-terminal, for sandboxd's `Start` with `pty`: a new
//! session whose controlling terminal is the PTY, stdin/stdout/stderr all on
//! it (so all output is one stream), reaped by the engine's one reaper.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;

use std::sync::Arc;

use super::pty::{open_pty, Size};
use super::reaper::{ExitStatus, Reaper};
use super::spawn::{Launch, SpawnError};
use super::tree::{Tree, Trees};
use super::vfork::Creds;

/// A process on a terminal. Dropping it closes the master side.
pub struct Terminal {
    pub pid: i32,
    /// Everything the process starts.
    pub tree: Arc<Tree>,
    master: AsyncFd<OwnedFd>,
}

/// Starts `argv` on a new PTY of `cols`×`rows` (0 keeps the default).
pub(crate) fn spawn(
    reaper: &Reaper,
    trees: &Arc<Trees>,
    argv: &[String],
    cwd: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
    (cols, rows): (u16, u16),
    creds: Option<(u32, u32, Vec<u32>)>,
) -> Result<(Terminal, oneshot::Receiver<ExitStatus>), SpawnError> {
    let io_err = |source: io::Error| SpawnError::Io {
        program: argv.first().cloned().unwrap_or_default(),
        source,
    };
    // Both ends are close-on-exec from birth: a concurrent spawn on another
    // thread must never inherit them (openpty + F_SETFD left a window).
    let size = (cols > 0 && rows > 0).then_some(Size { cols, rows });
    let (master, slave) = open_pty(size).map_err(io_err)?;
    // The master is used non-blocking through AsyncFd.
    super::pty::set_nonblocking(master.as_fd()).map_err(io_err)?;
    let pending = trees.prepare().map_err(io_err)?;
    let current = nix::unistd::getuid();
    let launch = Launch {
        argv: argv.iter().map(OsString::from).collect(),
        // Later keys win, as with `Command::envs`.
        env: env.into_iter().collect(),
        cwd,
        stdio: [
            Some(slave.as_fd()),
            Some(slave.as_fd()),
            Some(slave.as_fd()),
        ],
        uid: creds.as_ref().map(|c| c.0),
        // Another user: its groups (where execd may set them), gid, then uid.
        creds: creds.map(|(uid, gid, groups)| Creds {
            uid,
            gid,
            groups,
            set_groups: current.is_root(),
        }),
        terminal: true,
    };
    // SAFETY: the OwnedFd moves into the AsyncFd, which keeps it open and
    // unchanged until it is dropped.
    let master = unsafe { AsyncFd::register(master) }.map_err(|e| io_err(e.into()))?;
    let (pid, exit, tree) = launch.start(reaper, Some(pending))?;
    drop(slave);
    let tree = tree.ok_or_else(|| io_err(io::Error::other("no tree")))?;
    Ok((Terminal { pid, tree, master }, exit))
}

impl Terminal {
    /// Reads output; 0 bytes at the end (EIO once the last slave closes).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            let r = guard.try_io(|fd| nix::unistd::read(fd, buf).map_err(io::Error::from));
            match r {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(nix::errno::Errno::EIO as i32) => {
                    return Ok(0)
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as typed input.
    pub async fn write(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd, data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the window size; the foreground job gets SIGWINCH.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        super::sys::set_window_size(self.master.get_ref().as_fd(), cols, rows)?;
        Ok(())
    }
}
