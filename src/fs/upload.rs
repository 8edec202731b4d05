//! The atomic writer behind uploads and `replace`.
//!
//! The writer works in one directory, held as a descriptor, on one name in
//! it: everything after the caller's checks is an `*at` call relative to that
//! descriptor, so nothing is resolved again by path. Content goes to an
//! anonymous file in that directory (`O_TMPFILE`) or, where the file system
//! has none, to a new file with a random name (`O_EXCL|O_NOFOLLOW`). On
//! commit the file gets its final mode and owner, is fsynced, has its size
//! checked against the bytes handed in, is linked under a random name and
//! renamed over the target (`renameat`, which replaces a symlink found there
//! rather than following it); then the directory is fsynced. Until then the
//! old file is untouched, and a writer dropped without commit (client gone,
//! disk full, bad part) leaves nothing behind.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;

use super::attrs::{AttrRequest, Attrs};
use super::identity::{scoped, Scope};
use super::{FsError, FsResult};

/// Mode of a new file when the caller gives none.
const DEFAULT_MODE: u32 = 0o644;

/// Mode, owner and group of the file being replaced.
#[derive(Debug, Clone, Copy)]
struct Existing {
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Where the content is until commit.
#[derive(Debug)]
enum Temp {
    /// An `O_TMPFILE`: no name until it is linked at commit.
    Anonymous,
    /// A file with a random name in the directory, removed unless committed.
    Named(CString),
}

/// A file being written; becomes the target on [`AtomicFile::commit`].
pub struct AtomicFile {
    file: File,
    temp: Temp,
    /// The directory the target is in, pinned.
    dir: OwnedFd,
    /// The target's name in `dir`.
    name: CString,
    /// The target's path, for messages (and `replace`'s reading).
    target: PathBuf,
    existing: Option<Existing>,
    /// Something (a file or a symlink) was at the target's name.
    replaces: bool,
    written: u64,
    done: bool,
}

/// Where writing to `path` really lands: a symlink to an existing file is
/// written through (as `open` would), anything else is replaced in place.
/// Only for the unconfined routes, where the caller may name any path.
fn resolve(path: &Path) -> FsResult<PathBuf> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(path) {
            Ok(real) => Ok(real),
            // Dangling: the link itself is replaced.
            Err(_) => Ok(path.to_path_buf()),
        },
        Ok(_) => Ok(path.to_path_buf()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(path.to_path_buf()),
        Err(e) => Err(FsError::io("lstat", path, e)),
    }
}

fn cstring(name: &OsStr, shown: &Path) -> FsResult<CString> {
    CString::new(name.as_bytes())
        .map_err(|_| FsError::InvalidFile(format!("cannot write to {}", shown.display())))
}

/// `.execd-upload-`, `r` (the target existed: the upload replaces it) or `n`
/// (a new file), and 15 random hex digits: not guessable, so nobody can take
/// the name first. The letter lets a directory watch report the upload as
/// the target's own change ([`temp_replaces`]).
fn random_name(replaces: bool) -> CString {
    let id = crate::process::new_id();
    let kind = if replaces { 'r' } else { 'n' };
    CString::new(format!("{TEMP_PREFIX}{kind}{}", &id[..15])).unwrap_or_default()
}

const TEMP_PREFIX: &str = ".execd-upload-";

/// For an upload's temporary name ([`random_name`]): whether the upload
/// replaces an existing target. `None` for any other name.
pub(crate) fn temp_replaces(name: &OsStr) -> Option<bool> {
    let rest = name.as_bytes().strip_prefix(TEMP_PREFIX.as_bytes())?;
    let (&kind, hex) = rest.split_first()?;
    if hex.len() != 15 || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    match kind {
        b'r' => Some(true),
        b'n' => Some(false),
        _ => None,
    }
}

/// A new file for the content in `dir`: anonymous where the file system
/// supports it, else under a fresh random name.
fn create_temp(dir: BorrowedFd<'_>, shown: &Path, replaces: bool) -> FsResult<(File, Temp)> {
    let mode = Mode::from_bits_truncate(0o600);
    #[cfg(test)]
    let anonymous = !tests::NO_TMPFILE.with(|c| c.get());
    #[cfg(not(test))]
    let anonymous = true;
    // Linking it at commit needs /proc when the thread lacks
    // CAP_DAC_READ_SEARCH (see `link_temp`): without /proc, a named file.
    let anonymous = anonymous && proc_fd_available();
    match nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_TMPFILE | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        mode,
    ) {
        Ok(fd) if anonymous => return Ok((File::from(fd), Temp::Anonymous)),
        // No O_TMPFILE here (file system or kernel): a named file instead.
        Err(
            nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR | nix::errno::Errno::EINVAL,
        ) => {}
        Ok(fd) => drop(fd),
        Err(e) => return Err(FsError::io("create a file in", shown, e.into())),
    }
    let mut last = nix::errno::Errno::EEXIST;
    for _ in 0..8 {
        let name = random_name(replaces);
        match nix::fcntl::openat(
            dir,
            name.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            mode,
        ) {
            Ok(fd) => return Ok((File::from(fd), Temp::Named(name))),
            Err(nix::errno::Errno::EEXIST) => last = nix::errno::Errno::EEXIST,
            Err(e) => return Err(FsError::io("create a file in", shown, e.into())),
        }
    }
    Err(FsError::io(
        "create a temporary file in",
        shown,
        last.into(),
    ))
}

/// Whether `/proc/self/fd` is there (checked once).
fn proc_fd_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| Path::new("/proc/self/fd").is_dir())
}

impl AtomicFile {
    /// Starts writing `path`. With `make_parents`, missing parent directories
    /// are created (0755); otherwise a missing parent is `NotFound`. A
    /// symlink at `path` is written through (these routes are not confined).
    pub fn create(path: &Path, make_parents: bool) -> FsResult<AtomicFile> {
        let target = resolve(path)?;
        let name = target
            .file_name()
            .ok_or_else(|| FsError::InvalidFile(format!("cannot write to {}", path.display())))?;
        let dir = target
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if make_parents {
            super::dirs::make_parents(dir)?;
        }
        let fd = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| FsError::io("open", dir, e.into()))?;
        let name = name.to_os_string();
        AtomicFile::create_in(fd, &name, target)
    }

    /// Starts writing the file `name` in the directory `dir` (a descriptor
    /// the caller has checked, e.g. beneath a confined root). Nothing is
    /// looked up by path from here on; `shown` is for messages only. A
    /// symlink at `name` is replaced, never followed.
    pub fn create_in(dir: OwnedFd, name: &OsString, shown: PathBuf) -> FsResult<AtomicFile> {
        let cname = cstring(name, &shown)?;
        if name.is_empty() || name == "." || name == ".." || name.as_bytes().contains(&b'/') {
            return Err(FsError::InvalidFile(format!(
                "cannot write to {}",
                shown.display()
            )));
        }
        let mut replaces = false;
        let existing =
            match nix::sys::stat::fstatat(&dir, cname.as_c_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => {
                    replaces = true;
                    let kind = st.st_mode & libc::S_IFMT;
                    if kind == libc::S_IFDIR {
                        return Err(FsError::InvalidFile(format!(
                            "path is a directory, cannot write a file over it: {}",
                            shown.display()
                        )));
                    }
                    if kind == libc::S_IFLNK {
                        // Replaced by the rename, never followed.
                        None
                    } else if kind != libc::S_IFREG {
                        return Err(FsError::InvalidFile(format!(
                            "path is not a regular file: {}",
                            shown.display()
                        )));
                    } else {
                        Some(Existing {
                            mode: st.st_mode & 0o7777,
                            uid: st.st_uid,
                            gid: st.st_gid,
                        })
                    }
                }
                Err(nix::errno::Errno::ENOENT) => None,
                Err(e) => return Err(FsError::io("lstat", &shown, e.into())),
            };
        let (file, temp) = create_temp(dir.as_fd(), &shown, replaces)?;
        Ok(AtomicFile {
            file,
            temp,
            dir,
            name: cname,
            target: shown,
            existing,
            replaces,
            written: 0,
            done: false,
        })
    }

    /// Appends `data`.
    pub fn write_all(&mut self, data: &[u8]) -> FsResult<()> {
        self.file
            .write_all(data)
            .map_err(|e| FsError::io("write", &self.target, e))?;
        self.written += data.len() as u64;
        Ok(())
    }

    /// Asks the kernel to start writing `len` bytes at `offset` to disk now,
    /// without waiting for it (`sync_file_range(SYNC_FILE_RANGE_WRITE)`).
    ///
    /// A long upload otherwise leaves all its pages dirty until the fsync at
    /// commit, which then writes the whole file while the client waits.
    /// Started as each piece lands, the disk works while the network does and
    /// the fsync finds little left to do; dirty memory (which counts against
    /// a container's memory limit) stays small too. Advisory: an error here
    /// changes nothing, and the fsync reports real ones.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsFd;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                return;
            };
            let _ = crate::process::sys::start_writeback(self.file.as_fd(), offset, len);
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The final path (a symlinked target resolved), for messages.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Gives the file its mode and owner, makes it durable, and puts it in
    /// place of the target. Returns the byte count, verified on disk.
    pub fn commit(mut self, attrs: Attrs) -> FsResult<u64> {
        let old = self.existing;
        let mode = attrs.mode.or(old.map(|m| m.mode)).unwrap_or(DEFAULT_MODE);
        let meta = self
            .file
            .metadata()
            .map_err(|e| FsError::io("stat", &self.target, e))?;
        let uid = attrs.uid.or(old.map(|m| m.uid));
        let gid = attrs.gid.or(old.map(|m| m.gid));
        if uid.is_some_and(|u| u != meta.uid()) || gid.is_some_and(|g| g != meta.gid()) {
            let r = std::os::unix::fs::fchown(&self.file, uid, gid);
            match r {
                Ok(()) => {}
                // Keeping an old owner is best effort for a caller who may not chown.
                Err(e)
                    if attrs.uid.is_none()
                        && attrs.gid.is_none()
                        && e.raw_os_error() == Some(libc::EPERM) => {}
                Err(e) => return Err(FsError::io("chown", &self.target, e)),
            }
        }
        // After chown, which may clear setuid bits.
        self.file
            .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
            .map_err(|e| FsError::io("chmod", &self.target, e))?;
        self.file
            .sync_all()
            .map_err(|e| FsError::io("fsync", &self.target, e))?;
        let size = self
            .file
            .metadata()
            .map_err(|e| FsError::io("stat", &self.target, e))?
            .len();
        if size != self.written {
            return Err(FsError::Internal(format!(
                "short write to {}: {} bytes on disk, {} received",
                self.target.display(),
                size,
                self.written
            )));
        }
        if matches!(self.temp, Temp::Anonymous) {
            self.temp = Temp::Named(self.link_temp()?);
        }
        let Temp::Named(tmp) = &self.temp else {
            return Err(FsError::Internal("upload temporary has no name".into()));
        };
        let dir = &self.dir;
        nix::fcntl::renameat(dir, tmp.as_c_str(), dir, self.name.as_c_str())
            .map_err(|e| FsError::io("rename into place", &self.target, e.into()))?;
        self.done = true;
        sync_dir_fd(&self.dir, &self.target)?;
        Ok(size)
    }

    /// Gives the anonymous file a random name in the directory, so that it
    /// can be renamed over the target (a link never replaces a name).
    fn link_temp(&self) -> FsResult<CString> {
        let dir = &self.dir;
        let fd = self.file.as_raw_fd();
        let proc_path = CString::new(format!("/proc/self/fd/{fd}")).unwrap_or_default();
        let mut last = nix::errno::Errno::EEXIST;
        for _ in 0..8 {
            let name = random_name(self.replaces);
            // The descriptor itself; this needs CAP_DAC_READ_SEARCH, which a
            // root daemon has but an operation acting as another user has
            // not. Then its /proc magic link, which a process may always
            // follow for its own descriptors.
            let r = nix::unistd::linkat(
                &self.file,
                c"",
                dir,
                name.as_c_str(),
                AtFlags::AT_EMPTY_PATH,
            )
            .or_else(|e| match e {
                nix::errno::Errno::ENOENT | nix::errno::Errno::EPERM => nix::unistd::linkat(
                    nix::fcntl::AT_FDCWD,
                    proc_path.as_c_str(),
                    dir,
                    name.as_c_str(),
                    AtFlags::AT_SYMLINK_FOLLOW,
                ),
                e => Err(e),
            });
            match r {
                Ok(()) => return Ok(name),
                Err(nix::errno::Errno::EEXIST) => last = nix::errno::Errno::EEXIST,
                Err(e) => return Err(FsError::io("link a file in", &self.target, e.into())),
            }
        }
        Err(FsError::io("link a file in", &self.target, last.into()))
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if let (false, Temp::Named(tmp)) = (self.done, &self.temp) {
            let _ = nix::unistd::unlinkat(
                &self.dir,
                tmp.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
        }
    }
}

/// fsyncs the directory `dir` (which may be an `O_PATH` descriptor), so
/// that a rename or creation in it is durable.
fn sync_dir_fd(dir: &OwnedFd, shown: &Path) -> FsResult<()> {
    nix::fcntl::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .and_then(|d| {
        d.sync_all()
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
    })
    .map_err(|e| FsError::io("fsync directory", shown, e.into()))
}

/// An upload driven from async code without holding a thread for its
/// whole length: the file is created and committed on a blocking thread as
/// the caller's identity (permissions are checked there), and the content is
/// written through the open descriptor in pieces of [`WRITE_CHUNK`] bytes,
/// one write in flight while the next piece arrives. Each piece's
/// write-back to disk starts as soon as it is written
/// ([`AtomicFile::start_writeback`]), so the fsync at commit is short.
/// Dropped before [`Writer::commit`], it discards the temporary file.
///
/// Memory: two buffers of [`WRITE_CHUNK`] bytes at most, the one filling
/// and the one being written, taking turns for the whole upload (no buffer
/// grows, none is allocated per piece).
pub struct Writer {
    id: Scope,
    attrs: Attrs,
    /// The file, when no write is in flight.
    file: Option<AtomicFile>,
    /// The write in flight; it hands the file and its buffer back.
    pending: Option<tokio::task::JoinHandle<Written>>,
    /// The piece being gathered.
    buf: Vec<u8>,
    /// The buffer of the last write, for the next piece.
    spare: Vec<u8>,
}

/// A write's outcome, with the file and the buffer it wrote from.
type Written = (AtomicFile, Vec<u8>, FsResult<()>);

impl Drop for Writer {
    fn drop(&mut self) {
        // Not committed: remove the temporary file off the async threads.
        if let (Some(file), Ok(rt)) = (self.file.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || drop(file));
        }
    }
}

/// How much content is gathered before a write: 256 KiB writes run the
/// disk as fast as 1 MiB ones did, and 100 concurrent uploads hold 50 MiB
/// of buffers rather than 400.
pub const WRITE_CHUNK: usize = 256 * 1024;

impl Writer {
    fn new(id: Scope, attrs: Attrs, file: AtomicFile) -> Writer {
        Writer {
            id,
            attrs,
            file: Some(file),
            pending: None,
            buf: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Starts writing `path` (parents created) as `id`, with the mode and
    /// owner of `req` applied on commit.
    pub async fn create(id: impl Into<Scope>, path: PathBuf, req: AttrRequest) -> FsResult<Writer> {
        let id: Scope = id.into();
        let (file, attrs) = scoped(id.clone(), move || {
            let attrs = req.resolve()?;
            Ok((AtomicFile::create(&path, true)?, attrs))
        })
        .await?;
        Ok(Writer::new(id, attrs, file))
    }

    /// Starts writing the file `name` in the directory `dir`, pinned by the
    /// caller after its checks (a confined route); as execd itself.
    pub async fn create_in(
        dir: OwnedFd,
        name: OsString,
        shown: PathBuf,
        req: AttrRequest,
    ) -> FsResult<Writer> {
        let (file, attrs) = scoped(Scope::default(), move || {
            let attrs = req.resolve()?;
            Ok((AtomicFile::create_in(dir, &name, shown)?, attrs))
        })
        .await?;
        Ok(Writer::new(Scope::default(), attrs, file))
    }

    /// Appends `data`.
    pub async fn write(&mut self, mut data: &[u8]) -> FsResult<()> {
        while !data.is_empty() {
            if self.buf.capacity() < WRITE_CHUNK {
                self.buf.reserve_exact(WRITE_CHUNK - self.buf.len());
            }
            let n = (WRITE_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() >= WRITE_CHUNK {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Waits for the write in flight and takes the file back (its buffer
    /// becomes the spare).
    async fn settle(&mut self) -> FsResult<AtomicFile> {
        if let Some(task) = self.pending.take() {
            let (file, mut buf, r) = task
                .await
                .map_err(|e| FsError::Internal(format!("write task failed: {e}")))?;
            r?;
            buf.clear();
            self.spare = buf;
            self.file = Some(file);
        }
        self.file
            .take()
            .ok_or_else(|| FsError::Internal("upload writer used after a failure".into()))
    }

    /// Starts writing what has been gathered.
    async fn flush(&mut self) -> FsResult<()> {
        let mut file = self.settle().await?;
        let data = std::mem::replace(&mut self.buf, std::mem::take(&mut self.spare));
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let at = file.written();
            let r = file.write_all(&data);
            if r.is_ok() {
                file.start_writeback(at, data.len() as u64);
            }
            (file, data, r)
        }));
        Ok(())
    }

    /// Gives the upload up: waits for a write in flight, then removes the
    /// temporary file before returning, so an error answer never races it.
    pub async fn discard(mut self) {
        if let Some(task) = self.pending.take() {
            if let Ok((file, ..)) = task.await {
                self.file = Some(file);
            }
        }
        if let Some(file) = self.file.take() {
            let _ = tokio::task::spawn_blocking(move || drop(file)).await;
        }
    }

    /// Writes the rest, then commits (see [`AtomicFile::commit`]) as the
    /// caller's identity. Returns the verified byte count.
    pub async fn commit(mut self) -> FsResult<u64> {
        if !self.buf.is_empty() {
            self.flush().await?;
        }
        let file = self.settle().await?;
        let attrs = self.attrs;
        scoped(self.id.clone(), move || file.commit(attrs)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    thread_local! {
        /// Makes this thread's writers use a named temporary, as on a file
        /// system without `O_TMPFILE`.
        pub(super) static NO_TMPFILE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn a_named_temporary_is_random_and_removed() {
        let d = tmpdir("named");
        let p = d.join("f");
        NO_TMPFILE.with(|c| c.set(true));
        let mut w = AtomicFile::create(&p, false).unwrap();
        NO_TMPFILE.with(|c| c.set(false));
        assert!(matches!(w.temp, Temp::Named(_)));
        let names = entries(&d);
        assert_eq!(names.len(), 1);
        assert!(
            names[0].starts_with(".execd-upload-") && names[0].len() == 30,
            "{names:?}"
        );
        // Named as the temporary of a new file.
        assert_eq!(temp_replaces(OsStr::new(&names[0])), Some(false));
        w.write_all(b"x").unwrap();
        drop(w);
        assert!(entries(&d).is_empty());
        NO_TMPFILE.with(|c| c.set(true));
        let mut w = AtomicFile::create(&p, false).unwrap();
        NO_TMPFILE.with(|c| c.set(false));
        w.write_all(b"named").unwrap();
        w.commit(Attrs::default()).unwrap();
        assert_eq!(entries(&d), ["f"]);
        assert_eq!(std::fs::read(&p).unwrap(), b"named");
        // Over an existing file, named as a replacement.
        NO_TMPFILE.with(|c| c.set(true));
        let w = AtomicFile::create(&p, false).unwrap();
        NO_TMPFILE.with(|c| c.set(false));
        let Temp::Named(n) = &w.temp else {
            panic!("named")
        };
        assert_eq!(temp_replaces(OsStr::from_bytes(n.as_bytes())), Some(true));
        drop(w);
        assert_eq!(
            temp_replaces(OsStr::new(".execd-upload-0a6281921d0d7a52")),
            None
        );
        assert_eq!(temp_replaces(OsStr::new(".execd-upload-nxyz")), None);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlink_at_the_name_is_replaced_in_a_pinned_directory() {
        let d = tmpdir("pinned");
        let outside = tmpdir("pinned-outside");
        std::fs::write(outside.join("t"), "bait").unwrap();
        std::os::unix::fs::symlink(outside.join("t"), d.join("t")).unwrap();
        let fd = nix::fcntl::open(&d, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        let mut w = AtomicFile::create_in(fd, &OsString::from("t"), d.join("t")).unwrap();
        w.write_all(b"new").unwrap();
        w.commit(Attrs::default()).unwrap();
        assert!(!d.join("t").is_symlink());
        assert_eq!(std::fs::read(d.join("t")).unwrap(), b"new");
        assert_eq!(std::fs::read(outside.join("t")).unwrap(), b"bait");
        std::fs::remove_dir_all(&d).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("execd-upload-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn entries(d: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn commit_replaces_and_keeps_mode() {
        let d = tmpdir("commit");
        let p = d.join("f");
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let mut w = AtomicFile::create(&p, false).unwrap();
        w.write_all(b"new content").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(w.commit(Attrs::default()).unwrap(), 11);
        assert_eq!(std::fs::read(&p).unwrap(), b"new content");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        assert_eq!(entries(&d), ["f"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dropped_writer_leaves_old_file_and_no_temp() {
        let d = tmpdir("drop");
        let p = d.join("f");
        std::fs::write(&p, "old").unwrap();
        let mut w = AtomicFile::create(&p, false).unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert_eq!(entries(&d), ["f"]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_a_directory() {
        let d = tmpdir("dir");
        let e = AtomicFile::create(&d, false).err().unwrap();
        assert_eq!(e.kind(), super::super::Kind::InvalidFile);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
