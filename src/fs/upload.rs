//! The atomic writer behind uploads and `replace`.
//!
//! Content goes to a fresh temporary file in the target's own directory. On
//! commit the file gets its final mode and owner, is fsynced, has its size
//! checked against the bytes handed in, and is renamed over the target; then
//! the directory is fsynced. Until then the old file is untouched, and a
//! writer dropped without commit (client gone, disk full, bad part) removes
//! its temporary file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::identity::{scoped, Identity};
use super::ops::AttrRequest;
use super::{FsError, FsResult};

/// Mode and owner asked for by the caller; `None` keeps the existing target's
/// (or the default for a new file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Mode of a new file when the caller gives none.
const DEFAULT_MODE: u32 = 0o644;

/// A file being written; becomes the target on [`AtomicFile::commit`].
pub struct AtomicFile {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    dir: PathBuf,
    existing: Option<std::fs::Metadata>,
    written: u64,
    done: bool,
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Where writing to `path` really lands: a symlink to an existing file is
/// written through (as `open` would), anything else is replaced in place.
fn resolve(path: &Path) -> FsResult<(PathBuf, Option<std::fs::Metadata>)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => match std::fs::canonicalize(path) {
            Ok(real) => {
                let meta = std::fs::metadata(&real).map_err(|e| FsError::io("stat", &real, e))?;
                Ok((real, Some(meta)))
            }
            // Dangling: the link itself is replaced.
            Err(_) => Ok((path.to_path_buf(), None)),
        },
        Ok(m) => Ok((path.to_path_buf(), Some(m))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok((path.to_path_buf(), None)),
        Err(e) => Err(FsError::io("lstat", path, e)),
    }
}

impl AtomicFile {
    /// Starts writing `path`. With `make_parents`, missing parent directories
    /// are created (0755); otherwise a missing parent is `NotFound`.
    pub fn create(path: &Path, make_parents: bool) -> FsResult<AtomicFile> {
        let (target, existing) = resolve(path)?;
        if let Some(m) = &existing {
            if m.is_dir() {
                return Err(FsError::InvalidFile(format!(
                    "path is a directory, cannot write a file over it: {}",
                    path.display()
                )));
            }
            if !m.is_file() {
                return Err(FsError::InvalidFile(format!(
                    "path is not a regular file: {}",
                    path.display()
                )));
            }
        }
        let dir = target
            .parent()
            .ok_or_else(|| FsError::InvalidFile(format!("cannot write to {}", path.display())))?
            .to_path_buf();
        if make_parents {
            super::ops::make_parents(&dir)?;
        }
        let mut last = None;
        for _ in 0..16 {
            let tmp = dir.join(format!(
                ".execd-upload-{}-{}",
                std::process::id(),
                SEQ.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_CLOEXEC)
                .open(&tmp)
            {
                Ok(file) => {
                    return Ok(AtomicFile {
                        file,
                        tmp,
                        target,
                        dir,
                        existing,
                        written: 0,
                        done: false,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(FsError::io("create a file in", &dir, e)),
            }
        }
        Err(FsError::io(
            "create a temporary file in",
            &dir,
            last.unwrap_or_else(|| std::io::Error::other("no free name")),
        ))
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
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                return;
            };
            // SAFETY: a plain syscall on an open descriptor; it reads no memory.
            unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    offset,
                    len,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The final path (a symlinked target resolved).
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Gives the file its mode and owner, makes it durable, and puts it in
    /// place of the target. Returns the byte count, verified on disk.
    pub fn commit(mut self, attrs: Attrs) -> FsResult<u64> {
        let old = self.existing.as_ref();
        let mode = attrs
            .mode
            .or(old.map(|m| m.mode() & 0o7777))
            .unwrap_or(DEFAULT_MODE);
        let meta = self
            .file
            .metadata()
            .map_err(|e| FsError::io("stat", &self.tmp, e))?;
        let uid = attrs.uid.or(old.map(|m| m.uid()));
        let gid = attrs.gid.or(old.map(|m| m.gid()));
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
            .map_err(|e| FsError::io("stat", &self.tmp, e))?
            .len();
        if size != self.written {
            return Err(FsError::Internal(format!(
                "short write to {}: {} bytes on disk, {} received",
                self.target.display(),
                size,
                self.written
            )));
        }
        std::fs::rename(&self.tmp, &self.target)
            .map_err(|e| FsError::io("rename into place", &self.target, e))?;
        self.done = true;
        sync_dir(&self.dir)?;
        Ok(size)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// fsyncs a directory, so that a rename or creation in it is durable.
pub fn sync_dir(dir: &Path) -> FsResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::io("fsync directory", dir, e))
}

/// An upload driven from async code without holding a thread for its
/// whole length: the file is created and committed on a blocking thread as
/// the caller's identity (permissions are checked there), and the content is
/// written through the open descriptor in pieces of about
/// [`WRITE_CHUNK`] bytes, one write in flight while the next piece arrives.
/// Each piece's write-back to disk starts as soon as it is written
/// ([`AtomicFile::start_writeback`]), so the fsync at commit is short.
/// Dropped before [`Writer::commit`], it discards the temporary file.
pub struct Writer {
    id: Option<Identity>,
    attrs: Attrs,
    /// The file, when no write is in flight.
    file: Option<AtomicFile>,
    /// The write in flight; it hands the file back.
    pending: Option<tokio::task::JoinHandle<(AtomicFile, FsResult<()>)>>,
    buf: bytes::BytesMut,
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Not committed: remove the temporary file off the async threads.
        if let (Some(file), Ok(rt)) = (self.file.take(), tokio::runtime::Handle::try_current()) {
            rt.spawn_blocking(move || drop(file));
        }
    }
}

/// How much content is gathered before a write.
pub const WRITE_CHUNK: usize = 1024 * 1024;

impl Writer {
    /// Starts writing `path` (parents created) as `id`, with the mode and
    /// owner of `req` applied on commit.
    pub async fn create(id: Option<Identity>, path: PathBuf, req: AttrRequest) -> FsResult<Writer> {
        let (file, attrs) = scoped(id, move || {
            let attrs = req.resolve()?;
            Ok((AtomicFile::create(&path, true)?, attrs))
        })
        .await?;
        Ok(Writer {
            id,
            attrs,
            file: Some(file),
            pending: None,
            buf: bytes::BytesMut::new(),
        })
    }

    /// Appends `data`.
    pub async fn write(&mut self, data: &[u8]) -> FsResult<()> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Waits for the write in flight and takes the file back.
    async fn settle(&mut self) -> FsResult<AtomicFile> {
        if let Some(task) = self.pending.take() {
            let (file, r) = task
                .await
                .map_err(|e| FsError::Internal(format!("write task failed: {e}")))?;
            r?;
            self.file = Some(file);
        }
        self.file
            .take()
            .ok_or_else(|| FsError::Internal("upload writer used after a failure".into()))
    }

    /// Starts writing what has been gathered.
    async fn flush(&mut self) -> FsResult<()> {
        let mut file = self.settle().await?;
        let data = self.buf.split().freeze();
        self.pending = Some(tokio::task::spawn_blocking(move || {
            let at = file.written();
            let r = file.write_all(&data);
            if r.is_ok() {
                file.start_writeback(at, data.len() as u64);
            }
            (file, r)
        }));
        Ok(())
    }

    /// Gives the upload up: waits for a write in flight, then removes the
    /// temporary file before returning, so an error answer never races it.
    pub async fn discard(mut self) {
        if let Some(task) = self.pending.take() {
            if let Ok((file, _)) = task.await {
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
        scoped(self.id, move || file.commit(attrs)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
