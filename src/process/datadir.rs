//! execd's private data directory: spilled output and session state.
//!
//! It is made or checked once, at start-up, and then held as a descriptor:
//! - without `--data-dir`, a new directory with a random name is created
//!   under `$TMPDIR` (`mkdtemp`, mode 0700), so nobody can create it first;
//! - a `--data-dir` is created (0700) when missing; one that exists must be a
//!   directory (not a symlink) owned by execd's effective uid with mode
//!   exactly 0700, or execd refuses to start.
//!
//! Every file in it is created relative to the descriptor with
//! `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC`, mode 0600: a name that already
//! exists (a planted file or symlink) makes the creation fail instead of
//! being followed or reused.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

/// The data directory, held open.
#[derive(Debug)]
pub struct DataDir {
    fd: OwnedFd,
    path: PathBuf,
    /// `--spill-budget`: bytes of spill records in the directory, all logs
    /// together (unlimited until set).
    pub(crate) budget: u64,
    spilled: AtomicU64,
    /// Test hook: files handed out instead of creating these names.
    #[cfg(test)]
    planted: std::sync::Mutex<Vec<(String, File)>>,
}

/// Creates a missing temporary directory (and its parents) with the mode
/// `/tmp` has: 1777.
fn make_tmp(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o1777)
        .create(dir)?;
    // The umask may have taken bits away.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o1777))
}

fn err(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("data directory {}: {what}", path.display()))
}

impl DataDir {
    /// Makes (or, for a configured path, checks) the data directory and
    /// opens it. See the module docs for the rules.
    pub fn open(configured: Option<&Path>) -> io::Result<DataDir> {
        let (path, created) = match configured {
            Some(p) => {
                let created = match std::fs::symlink_metadata(p) {
                    Ok(_) => false,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        use std::os::unix::fs::DirBuilderExt;
                        std::fs::DirBuilder::new()
                            .recursive(true)
                            .mode(0o700)
                            .create(p)
                            .map_err(|e| err(p, format_args!("cannot create it: {e}")))?;
                        true
                    }
                    Err(e) => return Err(err(p, e)),
                };
                (p.to_path_buf(), created)
            }
            None => {
                let tmp = std::env::var_os("TMPDIR")
                    .filter(|t| !t.is_empty())
                    .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
                let template = tmp.join("execd-XXXXXX");
                let p = match nix::unistd::mkdtemp(&template) {
                    // A FROM-scratch image has no /tmp: make it as a
                    // temporary directory is made (sticky, world-writable),
                    // then take a random name in it as anywhere else.
                    Err(nix::errno::Errno::ENOENT) => {
                        make_tmp(&tmp)
                            .map_err(|e| err(&tmp, format_args!("cannot create it: {e}")))?;
                        nix::unistd::mkdtemp(&template)
                    }
                    r => r,
                }
                .map_err(|e| err(&template, format_args!("mkdtemp: {e}")))?;
                (p, true)
            }
        };
        let fd = nix::fcntl::open(
            &path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| err(&path, format_args!("cannot open it as a directory: {e}")))?;
        let file = File::from(fd);
        if created {
            // The umask may have taken bits away; never adds any.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o700))
                .map_err(|e| err(&path, e))?;
        }
        let meta = file.metadata().map_err(|e| err(&path, e))?;
        let euid = nix::unistd::geteuid().as_raw();
        if meta.uid() != euid {
            return Err(err(
                &path,
                format_args!(
                    "owned by uid {}, not by execd's uid {euid}; refusing to use it",
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o7777 != 0o700 {
            return Err(err(
                &path,
                format_args!(
                    "mode {:04o}, not 0700; refusing to use it",
                    meta.mode() & 0o7777
                ),
            ));
        }
        Ok(DataDir {
            fd: file.into(),
            path,
            budget: u64::MAX,
            spilled: AtomicU64::new(0),
            #[cfg(test)]
            planted: Default::default(),
        })
    }

    /// Sets the daemon-wide spill budget (`--spill-budget`).
    pub fn with_spill_budget(mut self, budget: u64) -> Self {
        self.budget = budget;
        self
    }

    /// Takes `n` bytes of the spill budget; false when they would exceed it.
    pub(crate) fn reserve(&self, n: u64) -> bool {
        self.spilled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.budget)
            })
            .is_ok()
    }

    /// Gives back `n` bytes: a failed spill, or a segment removed.
    pub(crate) fn release(&self, n: u64) {
        self.spilled.fetch_sub(n, Ordering::AcqRel);
    }

    /// Bytes of the spill budget in use.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Acquire)
    }

    /// Where it is (for messages, and for a shell that writes into a file
    /// execd created there).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file `name` in the directory: read-write (appending with
    /// `append`), mode 0600, `O_EXCL|O_NOFOLLOW`, close-on-exec.
    pub fn create(&self, name: &str, append: bool) -> io::Result<File> {
        #[cfg(test)]
        {
            let mut planted = self.planted.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = planted.iter().position(|(n, _)| n == name) {
                return Ok(planted.swap_remove(i).1);
            }
        }
        let c = plain_name(name)?;
        let mut flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW;
        if append {
            flags |= OFlag::O_APPEND;
        }
        let fd = nix::fcntl::openat(
            &self.fd,
            c.as_c_str(),
            flags | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?;
        Ok(File::from(fd))
    }

    /// Removes the file `name` from the directory (a missing one is fine).
    pub fn remove(&self, name: &str) {
        if let Ok(c) = plain_name(name) {
            let _ = nix::unistd::unlinkat(
                &self.fd,
                c.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }

    /// Removes the directory and everything in it (daemon shutdown), if the
    /// path still names the directory held open.
    pub fn remove_all(&self) {
        let (Ok(held), Ok(now)) = (
            nix::sys::stat::fstat(&self.fd),
            std::fs::symlink_metadata(&self.path),
        ) else {
            return;
        };
        if now.is_dir() && now.dev() == held.st_dev && now.ino() == held.st_ino {
            // std's remove_dir_all never follows symlinks.
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    /// Test hook: `create(name)` hands out `file` instead.
    #[cfg(test)]
    pub(crate) fn plant(&self, name: &str, file: File) {
        self.planted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name.to_string(), file));
    }
}

/// A single path component, as a C string.
fn plain_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(nix::errno::Errno::EINVAL.into());
    }
    CString::new(OsStr::new(name).as_bytes()).map_err(|_| nix::errno::Errno::EINVAL.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(tag: &str) -> PathBuf {
        let p =
            std::env::temp_dir().join(format!("execd-datadir-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        p
    }

    #[test]
    fn creates_missing_and_refuses_loose_modes() {
        let p = scratch("mode");
        let d = DataDir::open(Some(&p)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o7777, 0o700);
        let f = d.create("a", true).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o7777, 0o600);
        assert_eq!(
            d.create("a", false).unwrap_err().raw_os_error(),
            Some(nix::errno::Errno::EEXIST as i32)
        );
        std::os::unix::fs::symlink("/nonexistent-target", p.join("l")).unwrap();
        assert!(
            d.create("l", false).is_err(),
            "a planted symlink is not followed"
        );
        assert!(d.create("../x", false).is_err());
        d.remove("a");
        assert!(!p.join("a").exists());
        drop(d);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = DataDir::open(Some(&p)).unwrap_err().to_string();
        assert!(e.contains("mode 0755"), "{e}");
        std::fs::remove_dir_all(&p).unwrap();
    }
}
