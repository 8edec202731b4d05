//! Paths confined to a root directory, for the agent-sandbox APIs.
//!
//! A request path is first normalised lexically (the pure part: `.`, `..`,
//! duplicate slashes, absolute paths), which already refuses a `..` that
//! climbs above the root. The result is then opened relative to a descriptor
//! of the root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so the
//! kernel refuses any symlink that leads out, at the moment of use: there is
//! no check-then-open window. Where `openat2` is missing (Linux < 5.6, or a
//! seccomp filter), a component-by-component `openat(O_NOFOLLOW)` walk does the
//! same in user space, following relative symlinks itself and refusing
//! absolute ones and any `..` at the root.
//!
//! Absolute symlinks are refused even when they point back inside the root:
//! the kernel's `RESOLVE_BENEATH` does so, and the walk matches it.

use std::collections::VecDeque;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::SystemTime;

/// Why a confined path could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// The path, or a symlink on it, leads outside the root.
    #[error("path escapes the sandbox root")]
    Escapes,
    /// A system call failed (ENOENT, ENOTDIR, EACCES, ...).
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

impl ConfineError {
    fn io(op: &'static str, source: io::Error) -> Self {
        ConfineError::Io { op, source }
    }

    /// The errno of a failed system call.
    pub fn errno(&self) -> Option<i32> {
        match self {
            ConfineError::Io { source, .. } => source.raw_os_error(),
            ConfineError::Escapes => None,
        }
    }

    /// True for a missing path (or a missing directory on the way).
    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENOENT | libc::ENOTDIR))
    }
}

pub type ConfineResult<T> = Result<T, ConfineError>;

/// A path below the root, as normalised components (empty: the root itself).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RelPath(Vec<OsString>);

impl RelPath {
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn components(&self) -> &[OsString] {
        &self.0
    }

    /// The parent and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        let (last, rest) = self.0.split_last()?;
        Some((RelPath(rest.to_vec()), last.as_os_str()))
    }

    pub fn join(&self, name: &OsStr) -> RelPath {
        let mut v = self.0.clone();
        v.push(name.to_os_string());
        RelPath(v)
    }

    /// `a/b/c`, or `.` for the root.
    pub fn to_path(&self) -> PathBuf {
        if self.0.is_empty() {
            return PathBuf::from(".");
        }
        self.0.iter().collect()
    }
}

/// Lexical normalisation shared by both rule sets: `.` and empty segments
/// drop, `..` removes the previous segment; climbing above the start is an
/// escape unless `clamp` (then it stays at the start, as for absolute paths).
fn clean<'a>(
    segments: impl Iterator<Item = &'a [u8]>,
    clamp: bool,
) -> ConfineResult<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for s in segments {
        match s {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() && !clamp {
                    return Err(ConfineError::Escapes);
                }
            }
            s => out.push(OsStr::from_bytes(s).to_os_string()),
        }
    }
    Ok(out)
}

/// python-runtime rules: leading slashes are dropped (absolute paths are
/// re-rooted), then any `..` that climbs above the root is an escape
/// (`/../etc/passwd` is refused, as the reference does).
pub fn runtime_path(input: &str) -> ConfineResult<RelPath> {
    if input.contains('\0') {
        return Err(ConfineError::io(
            "path",
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    let rel = input.trim_start_matches('/');
    Ok(RelPath(clean(rel.as_bytes().split(|b| *b == b'/'), false)?))
}

/// sandboxd rules: an absolute path is cleaned as such (`..` stops at `/`);
/// if it names the root or lies under it the root prefix is removed,
/// otherwise it is re-rooted. A relative path climbing above the root is an
/// escape.
pub fn sandboxd_path(input: &str, root: &Path) -> ConfineResult<RelPath> {
    if input.contains('\0') {
        return Err(ConfineError::io(
            "path",
            io::Error::from_raw_os_error(libc::EINVAL),
        ));
    }
    if !input.starts_with('/') {
        return Ok(RelPath(clean(
            input.as_bytes().split(|b| *b == b'/'),
            false,
        )?));
    }
    let abs = clean(input.as_bytes().split(|b| *b == b'/'), true)?;
    let root = clean(root.as_os_str().as_bytes().split(|b| *b == b'/'), true)?;
    if abs.len() >= root.len() && abs[..root.len()] == root[..] {
        return Ok(RelPath(abs[root.len()..].to_vec()));
    }
    Ok(RelPath(abs))
}

/// A directory that confined paths are opened beneath.
#[derive(Debug)]
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

const OPENAT2_UNKNOWN: u8 = 0;
const OPENAT2_YES: u8 = 1;
const OPENAT2_NO: u8 = 2;
static OPENAT2: AtomicU8 = AtomicU8::new(OPENAT2_UNKNOWN);

/// Symlinks followed in one resolution before ELOOP, as the kernel.
const MAX_LINKS: usize = 40;

fn cstr(b: &[u8]) -> io::Result<CString> {
    CString::new(b).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn oflags(flags: i32) -> OFlag {
    OFlag::from_bits_retain(flags) | OFlag::O_CLOEXEC
}

fn openat(dir: impl AsFd, name: &[u8], flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    Ok(nix::fcntl::openat(
        dir,
        c.as_c_str(),
        oflags(flags),
        Mode::empty(),
    )?)
}

fn openat2_beneath(dir: impl AsFd, path: &[u8], flags: i32) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    let how = || {
        OpenHow::new()
            .flags(oflags(flags))
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
    };
    for _ in 0..8 {
        match nix::fcntl::openat2(dir.as_fd(), c.as_c_str(), how()) {
            Ok(fd) => return Ok(fd),
            // A concurrent rename raced a `..`; the kernel asks to retry.
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::from_raw_os_error(libc::EAGAIN))
}

fn fstat(fd: impl AsFd) -> io::Result<libc::stat> {
    Ok(nix::sys::stat::fstat(fd)?)
}

fn readlinkat(dir: impl AsFd, name: &[u8]) -> io::Result<Vec<u8>> {
    let c = cstr(name)?;
    Ok(nix::fcntl::readlinkat(dir, c.as_c_str())?.into_vec())
}

fn is_type(st: &libc::stat, t: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == t
}

/// What an entry of a confined listing is.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: OsString,
    pub is_dir: bool,
    pub size: u64,
    pub modified: SystemTime,
    /// Permission bits (with setuid/setgid/sticky).
    pub mode: u32,
}

fn entry_from(name: OsString, st: &libc::stat) -> Entry {
    let modified = SystemTime::UNIX_EPOCH
        + std::time::Duration::new(st.st_mtime.max(0) as u64, st.st_mtime_nsec as u32);
    Entry {
        name,
        is_dir: is_type(st, libc::S_IFDIR),
        size: st.st_size.max(0) as u64,
        modified,
        mode: st.st_mode & 0o7777,
    }
}

impl Root {
    /// Opens `path` (symlinks in it resolved normally: it is trusted config).
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            path.as_os_str().as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        let path = std::fs::canonicalize(path)?;
        Ok(Root { dir: fd, path })
    }

    /// The root's canonical path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `rel` beneath the root with `flags` (`O_CLOEXEC` is added).
    /// Symlinks are followed only while they stay beneath the root.
    pub fn open_beneath(&self, rel: &RelPath, flags: i32) -> ConfineResult<OwnedFd> {
        let p = rel.to_path();
        if OPENAT2.load(Ordering::Relaxed) != OPENAT2_NO {
            match openat2_beneath(&self.dir, p.as_os_str().as_bytes(), flags) {
                Ok(fd) => {
                    OPENAT2.store(OPENAT2_YES, Ordering::Relaxed);
                    return Ok(fd);
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EXDEV) => return Err(ConfineError::Escapes),
                    // Not implemented, or filtered by seccomp: walk instead.
                    Some(libc::ENOSYS | libc::EPERM | libc::E2BIG)
                        if OPENAT2.load(Ordering::Relaxed) == OPENAT2_UNKNOWN =>
                    {
                        OPENAT2.store(OPENAT2_NO, Ordering::Relaxed);
                    }
                    _ => return Err(ConfineError::io("open", e)),
                },
            }
        }
        self.walk(rel, flags)
    }

    /// The user-space resolution used without `openat2`; see the module doc.
    pub fn walk(&self, rel: &RelPath, flags: i32) -> ConfineResult<OwnedFd> {
        let mut queue: VecDeque<Vec<u8>> = rel
            .components()
            .iter()
            .map(|c| c.as_bytes().to_vec())
            .collect();
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut links = 0;
        while let Some(c) = queue.pop_front() {
            let cur = stack.last().unwrap_or(&self.dir).as_fd();
            match &c[..] {
                b"" | b"." => continue,
                b".." => {
                    if stack.pop().is_none() {
                        return Err(ConfineError::Escapes);
                    }
                    continue;
                }
                _ => {}
            }
            let fd = openat(cur, &c, libc::O_PATH | libc::O_NOFOLLOW)
                .map_err(|e| ConfineError::io("open", e))?;
            let st = fstat(&fd).map_err(|e| ConfineError::io("stat", e))?;
            if is_type(&st, libc::S_IFLNK) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(ConfineError::io(
                        "open",
                        io::Error::from_raw_os_error(libc::ELOOP),
                    ));
                }
                let target = readlinkat(cur, &c).map_err(|e| ConfineError::io("readlink", e))?;
                if target.starts_with(b"/") {
                    return Err(ConfineError::Escapes);
                }
                for part in target.split(|b| *b == b'/').rev() {
                    queue.push_front(part.to_vec());
                }
                continue;
            }
            if is_type(&st, libc::S_IFDIR) {
                stack.push(fd);
                continue;
            }
            if !queue.iter().all(|c| c.is_empty() || c == b".") {
                return Err(ConfineError::io(
                    "open",
                    io::Error::from_raw_os_error(libc::ENOTDIR),
                ));
            }
            return openat(cur, &c, flags | libc::O_NOFOLLOW)
                .map_err(|e| ConfineError::io("open", e));
        }
        let cur = stack.last().unwrap_or(&self.dir);
        openat(cur, b".", flags).map_err(|e| ConfineError::io("open", e))
    }

    /// `lstat` of the last component, its parent resolved beneath the root.
    /// Returns the parent directory too.
    pub fn lstat(&self, rel: &RelPath) -> ConfineResult<(Option<OwnedFd>, libc::stat)> {
        let Some((parent, name)) = rel.split_last() else {
            let st = fstat(&self.dir).map_err(|e| ConfineError::io("stat", e))?;
            return Ok((None, st));
        };
        let dir = self.open_beneath(&parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let fd = openat(&dir, name.as_bytes(), libc::O_PATH | libc::O_NOFOLLOW)
            .map_err(|e| ConfineError::io("open", e))?;
        let st = fstat(&fd).map_err(|e| ConfineError::io("stat", e))?;
        Ok((Some(dir), st))
    }

    /// Creates the missing directories of `rel` (0755) and opens it.
    pub fn make_dirs(&self, rel: &RelPath) -> ConfineResult<OwnedFd> {
        let flags = libc::O_PATH | libc::O_DIRECTORY;
        match self.open_beneath(rel, flags) {
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            other => return other,
        }
        let Some((parent, name)) = rel.split_last() else {
            return self.open_beneath(rel, flags);
        };
        let dir = self.make_dirs(&parent)?;
        let c = cstr(name.as_bytes()).map_err(|e| ConfineError::io("mkdir", e))?;
        match nix::sys::stat::mkdirat(&dir, c.as_c_str(), Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(ConfineError::io("mkdir", e.into())),
        }
        self.open_beneath(rel, flags)
    }

    /// The entries of directory `rel`, sorted by name. Symlinks are described
    /// by their targets; links that are broken or lead outside the root are
    /// left out, so one bad entry never fails the listing.
    pub fn list(&self, rel: &RelPath) -> ConfineResult<Vec<Entry>> {
        let dir = self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let names = read_names(dir).map_err(|e| ConfineError::io("read directory", e))?;
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let child = rel.join(&name);
            let Ok((_, st)) = self.lstat(&child) else {
                continue;
            };
            if is_type(&st, libc::S_IFLNK) {
                let Ok(fd) = self.open_beneath(&child, libc::O_PATH) else {
                    continue;
                };
                let Ok(st) = fstat(&fd) else {
                    continue;
                };
                out.push(entry_from(name, &st));
            } else {
                out.push(entry_from(name, &st));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Describes `rel` (symlinks followed beneath the root).
    pub fn stat(&self, rel: &RelPath) -> ConfineResult<Entry> {
        let fd = self.open_beneath(rel, libc::O_PATH)?;
        let st = fstat(&fd).map_err(|e| ConfineError::io("stat", e))?;
        let name = rel
            .components()
            .last()
            .cloned()
            .unwrap_or_else(|| OsString::from("."));
        Ok(entry_from(name, &st))
    }

    /// Opens the file `rel` for reading. A directory is `EISDIR`.
    pub fn open_file(&self, rel: &RelPath) -> ConfineResult<(std::fs::File, Entry)> {
        let fd = self.open_beneath(rel, libc::O_RDONLY)?;
        let st = fstat(&fd).map_err(|e| ConfineError::io("stat", e))?;
        let e = entry_from(OsString::new(), &st);
        if e.is_dir {
            return Err(ConfineError::io(
                "open",
                io::Error::from_raw_os_error(libc::EISDIR),
            ));
        }
        Ok((std::fs::File::from(fd), e))
    }

    /// Removes `rel`: a file or symlink is unlinked (a symlink itself, never
    /// its target); a directory must be empty unless `recursive`. The root is
    /// never removed; with `recursive` it is emptied.
    pub fn remove(&self, rel: &RelPath, recursive: bool) -> ConfineResult<()> {
        let Some((parent, name)) = rel.split_last() else {
            if !recursive {
                return Err(ConfineError::io(
                    "remove",
                    io::Error::from_raw_os_error(libc::ENOTEMPTY),
                ));
            }
            let names = read_names(self.open_beneath(rel, libc::O_RDONLY | libc::O_DIRECTORY)?)
                .map_err(|e| ConfineError::io("read directory", e))?;
            for n in names {
                self.remove(&rel.join(&n), true)?;
            }
            return Ok(());
        };
        let (dir, st) = self.lstat(rel)?;
        let Some(dir) = dir else {
            return Err(ConfineError::Escapes);
        };
        let c = cstr(name.as_bytes()).map_err(|e| ConfineError::io("remove", e))?;
        if !is_type(&st, libc::S_IFDIR) {
            return nix::unistd::unlinkat(&dir, c.as_c_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| ConfineError::io("remove", e.into()));
        }
        if recursive {
            // std's remove_dir_all works with openat/unlinkat and never follows
            // symlinks; the parent is pinned through its descriptor.
            let p = fd_path(&dir, &self.path.join(parent.to_path())).join(name);
            return std::fs::remove_dir_all(&p).map_err(|e| ConfineError::io("remove", e));
        }
        nix::unistd::unlinkat(&dir, c.as_c_str(), UnlinkatFlags::RemoveDir)
            .map_err(|e| ConfineError::io("remove", e.into()))
    }

    /// Prepares writing the file `rel`: its parent directories are created
    /// beneath the root, and a symlink at its name is followed while it
    /// stays beneath the root (relative links only, as `open_beneath`).
    /// Returns the directory the file is in, pinned by a descriptor, and the
    /// file's name in it: the writer creates and renames relative to that
    /// descriptor and resolves nothing again by path, so swapping a parent
    /// or the name for a symlink afterwards cannot lead it outside. A
    /// dangling link is replaced itself; a directory is `EISDIR`.
    pub fn prepare_write(&self, rel: &RelPath) -> ConfineResult<(OwnedFd, OsString)> {
        let eisdir = || ConfineError::io("write", io::Error::from_raw_os_error(libc::EISDIR));
        let mut rel = rel.clone();
        let mut first = true;
        for _ in 0..=MAX_LINKS {
            let Some((parent, name)) = rel.split_last() else {
                return Err(eisdir());
            };
            if name == ".." {
                return Err(eisdir());
            }
            let name = name.to_os_string();
            let dir = if first {
                self.make_dirs(&parent)?
            } else {
                self.open_beneath(&parent, libc::O_PATH | libc::O_DIRECTORY)?
            };
            first = false;
            let st = match openat(&dir, name.as_bytes(), libc::O_PATH | libc::O_NOFOLLOW) {
                Ok(fd) => fstat(&fd).map_err(|e| ConfineError::io("stat", e))?,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok((dir, name)),
                Err(e) => return Err(ConfineError::io("open", e)),
            };
            if is_type(&st, libc::S_IFDIR) {
                return Err(eisdir());
            }
            if !is_type(&st, libc::S_IFLNK) {
                return Ok((dir, name));
            }
            let target =
                readlinkat(&dir, name.as_bytes()).map_err(|e| ConfineError::io("readlink", e))?;
            if target.starts_with(b"/") {
                return Err(ConfineError::Escapes);
            }
            // The link's target, relative to the link's directory; `..`
            // stays a component, resolved beneath the root when opened.
            let mut next = parent.0;
            next.extend(
                target
                    .split(|b| *b == b'/')
                    .filter(|c| !c.is_empty() && *c != b".")
                    .map(|c| OsStr::from_bytes(c).to_os_string()),
            );
            let next = RelPath(next);
            match self.open_beneath(&next, libc::O_PATH) {
                // Dangling: the link itself is replaced.
                Err(e) if e.errno() == Some(libc::ENOENT) => return Ok((dir, name)),
                Err(e) => return Err(e),
                Ok(_) => rel = next,
            }
        }
        Err(ConfineError::io(
            "open",
            io::Error::from_raw_os_error(libc::ELOOP),
        ))
    }
}

/// A path naming what `fd` refers to, through `/proc/self/fd` (the
/// descriptor pins the directory, so a later rename or symlink swap of a
/// parent cannot redirect it), or `fallback` where `/proc` is not mounted.
pub fn fd_path(fd: &OwnedFd, fallback: &Path) -> PathBuf {
    let p = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    if std::fs::symlink_metadata(&p).is_ok() {
        p
    } else {
        fallback.to_path_buf()
    }
}

/// The names in an open directory, without `.` and `..`.
fn read_names(dir: OwnedFd) -> io::Result<Vec<OsString>> {
    let mut dir = nix::dir::Dir::from_fd(dir)?;
    let mut names = Vec::new();
    for ent in dir.iter() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsString::from_vec(name.to_vec()));
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(v: &[&str]) -> RelPath {
        RelPath(v.iter().map(OsString::from).collect())
    }

    #[test]
    fn runtime_rules() {
        assert_eq!(runtime_path("").unwrap(), rel(&[]));
        assert_eq!(runtime_path(".").unwrap(), rel(&[]));
        assert_eq!(runtime_path("///foo.txt").unwrap(), rel(&["foo.txt"]));
        assert_eq!(runtime_path("a/./b//c/").unwrap(), rel(&["a", "b", "c"]));
        assert_eq!(runtime_path("a/../b").unwrap(), rel(&["b"]));
        for bad in ["..", "../../etc/passwd", "/../etc/passwd", "foo/../../bar"] {
            assert!(
                matches!(runtime_path(bad), Err(ConfineError::Escapes)),
                "{bad}"
            );
        }
        assert!(runtime_path("a\0b").is_err());
    }

    #[test]
    fn sandboxd_rules() {
        let root = Path::new("/workspace");
        let p = |s| sandboxd_path(s, root);
        assert_eq!(p("f.txt").unwrap(), rel(&["f.txt"]));
        assert_eq!(p("/f.txt").unwrap(), rel(&["f.txt"]));
        assert_eq!(p("/workspace").unwrap(), rel(&[]));
        assert_eq!(p("/workspace/a/b").unwrap(), rel(&["a", "b"]));
        assert_eq!(
            p("/workspace-evil/f.txt").unwrap(),
            rel(&["workspace-evil", "f.txt"])
        );
        assert_eq!(p("/../etc/passwd").unwrap(), rel(&["etc", "passwd"]));
        assert_eq!(p(".").unwrap(), rel(&[]));
        assert!(matches!(p("../../etc/passwd"), Err(ConfineError::Escapes)));
        assert!(matches!(p("a/../../b"), Err(ConfineError::Escapes)));
    }

    fn tree() -> (PathBuf, Root) {
        let base = std::env::temp_dir().join(format!(
            "execd-confined-{}-{}",
            std::process::id(),
            crate::process::new_id()
        ));
        std::fs::create_dir_all(base.join("sub/deep")).unwrap();
        std::fs::write(base.join("sub/f.txt"), b"hi").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("abs")).unwrap();
        std::os::unix::fs::symlink("../..", base.join("sub/up")).unwrap();
        std::os::unix::fs::symlink("sub/f.txt", base.join("ok")).unwrap();
        std::os::unix::fs::symlink("deep/..", base.join("sub/loop")).unwrap();
        std::os::unix::fs::symlink("missing", base.join("broken")).unwrap();
        let root = Root::open(&base).unwrap();
        (base, root)
    }

    fn check(root: &Root, open: impl Fn(&RelPath) -> ConfineResult<OwnedFd>) {
        assert!(open(&rel(&["sub", "f.txt"])).is_ok());
        assert!(open(&rel(&["ok"])).is_ok());
        assert!(open(&rel(&["sub", "loop", "f.txt"])).is_ok());
        assert!(open(&rel(&[])).is_ok());
        assert!(matches!(open(&rel(&["abs"])), Err(ConfineError::Escapes)));
        assert!(matches!(
            open(&rel(&["abs", "passwd"])),
            Err(ConfineError::Escapes)
        ));
        assert!(matches!(
            open(&rel(&["sub", "up", "x"])),
            Err(ConfineError::Escapes)
        ));
        assert!(open(&rel(&["nope"])).unwrap_err().is_not_found());
        assert!(open(&rel(&["broken"])).unwrap_err().is_not_found());
        let _ = root;
    }

    #[test]
    fn kernel_and_walk_agree() {
        let (base, root) = tree();
        check(&root, |r| root.open_beneath(r, libc::O_PATH));
        check(&root, |r| root.walk(r, libc::O_PATH));
        std::fs::remove_dir_all(base).unwrap();
    }

    #[test]
    fn listing_skips_bad_links_and_writes_stay_inside() {
        let (base, root) = tree();
        let names: Vec<_> = root
            .list(&rel(&[]))
            .unwrap()
            .into_iter()
            .map(|e| (e.name.into_string().unwrap(), e.is_dir))
            .collect();
        assert_eq!(
            names,
            vec![("ok".to_string(), false), ("sub".to_string(), true)]
        );
        assert!(matches!(
            root.prepare_write(&rel(&["abs", "x"])),
            Err(ConfineError::Escapes)
        ));
        let (dir, name) = root.prepare_write(&rel(&["new", "dir", "f"])).unwrap();
        assert_eq!(name, "f");
        std::fs::write(fd_path(&dir, Path::new("/nonexistent")).join(name), b"x").unwrap();
        // A link beneath the root leads to its target's directory and name.
        let (dir, name) = root.prepare_write(&rel(&["ok"])).unwrap();
        assert_eq!(name, "f.txt");
        assert_eq!(fstat(&dir).unwrap().st_ino, {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata(base.join("sub")).unwrap().ino()
        });
        assert_eq!(std::fs::read(base.join("new/dir/f")).unwrap(), b"x");
        assert_eq!(
            root.remove(&rel(&["new"]), false).unwrap_err().errno(),
            Some(libc::ENOTEMPTY)
        );
        root.remove(&rel(&["new"]), true).unwrap();
        root.remove(&rel(&["abs"]), false).unwrap();
        assert!(std::fs::metadata("/etc/passwd").is_ok());
        std::fs::remove_dir_all(base).unwrap();
    }
}
