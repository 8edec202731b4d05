//! The small operations: remove, chmod/chown, move, mkdir, rmdir, list, and
//! opening a file for download.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::attrs::Attrs;
use super::dirs::{make_parents, sync_dir};
use super::info::lstat_error;
use super::{FsError, FsResult};

/// Removes a file or symlink; a missing one is not an error, a directory is.
pub fn remove_file(path: &Path) -> FsResult<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::io("lstat", path, e)),
        Ok(m) if m.is_dir() => Err(FsError::InvalidFile(format!(
            "path is a directory (delete it with DELETE /directories): {}",
            path.display()
        ))),
        Ok(_) => match std::fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| FsError::io("remove", path, e)),
        },
    }
}

/// Applies mode and owner to an existing path (following symlinks).
pub fn set_attrs(path: &Path, attrs: Attrs) -> FsResult<()> {
    std::fs::metadata(path).map_err(|e| lstat_error(path, e))?;
    if attrs.uid.is_some() || attrs.gid.is_some() {
        std::os::unix::fs::chown(path, attrs.uid, attrs.gid)
            .map_err(|e| FsError::io("chown", path, e))?;
    }
    if let Some(mode) = attrs.mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| FsError::io("chmod", path, e))?;
    }
    Ok(())
}

fn rename_noreplace(src: &Path, dest: &Path) -> io::Result<()> {
    use nix::fcntl::{renameat2, RenameFlags, AT_FDCWD};
    renameat2(AT_FDCWD, src, AT_FDCWD, dest, RenameFlags::RENAME_NOREPLACE)?;
    Ok(())
}

/// Moves `src` to `dest`, creating `dest`'s parents; never replaces an
/// existing `dest`.
pub fn move_path(src: &Path, dest: &Path) -> FsResult<()> {
    if let Err(e) = std::fs::symlink_metadata(src) {
        return Err(if e.kind() == io::ErrorKind::NotFound {
            FsError::NotFound(format!("source path not found: {}", src.display()))
        } else {
            FsError::io("lstat", src, e)
        });
    }
    let exists = || {
        FsError::Exists(format!(
            "destination path already exists: {}",
            dest.display()
        ))
    };
    if std::fs::symlink_metadata(dest).is_ok() {
        return Err(exists());
    }
    let parent = dest.parent().unwrap_or(Path::new("/"));
    make_parents(parent)?;
    match rename_noreplace(src, dest) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Err(exists()),
        // A file system without RENAME_NOREPLACE: the check above stands.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            std::fs::rename(src, dest).map_err(|e| FsError::io("move", src, e))?
        }
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            return Err(FsError::InvalidFile(format!(
                "cannot move {} to {}: they are on different file systems",
                src.display(),
                dest.display()
            )))
        }
        Err(e) => return Err(FsError::io("move", src, e)),
    }
    sync_dir(parent)
}

/// Creates a directory and its parents. Mode and owner apply only to a
/// directory this call creates; an existing directory is left as it is.
pub fn make_dir(path: &Path, attrs: Attrs) -> FsResult<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(m) if m.file_type().is_symlink() && path.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(FsError::InvalidFile(format!(
                "path exists and is not a directory: {}",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(FsError::io("lstat", path, e)),
    }
    if let Some(parent) = path.parent() {
        make_parents(parent)?;
    }
    match DirBuilder::new().mode(0o755).create(path) {
        Ok(()) => {}
        // Created meanwhile by someone else: theirs stands.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => return Ok(()),
        Err(e) => return Err(FsError::io("create directory", path, e)),
    }
    set_attrs(path, attrs)
}

/// Removes a directory tree (or a symlink to one: the link only). A missing
/// path is not an error; a file is, and so is `/`.
pub fn remove_dir(path: &Path) -> FsResult<()> {
    if path == Path::new("/") {
        return Err(FsError::BadRequest("refusing to remove '/'".into()));
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(FsError::io("lstat", path, e)),
        Ok(m) if m.file_type().is_symlink() => {
            std::fs::remove_file(path).map_err(|e| FsError::io("remove", path, e))
        }
        Ok(m) if !m.is_dir() => Err(FsError::InvalidFile(format!(
            "path is not a directory (delete it with DELETE /files): {}",
            path.display()
        ))),
        Ok(_) => match std::fs::remove_dir_all(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r.map_err(|e| FsError::io("remove directory", path, e)),
        },
    }
}

/// Names in `dir` sorted (by bytes), or the error reading it.
fn sorted_names(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Checks that `root` is a directory to walk, not a symlink or a file.
pub fn walk_root(root: &Path) -> FsResult<()> {
    let m = std::fs::symlink_metadata(root).map_err(|e| lstat_error(root, e))?;
    if m.file_type().is_symlink() {
        return Err(FsError::InvalidFile(format!(
            "path is a symbolic link, refusing to traverse: {}",
            root.display()
        )));
    }
    if !m.is_dir() {
        return Err(FsError::InvalidFile(format!(
            "path is not a directory: {}",
            root.display()
        )));
    }
    Ok(())
}

/// A walk of the tree under a root in pre-order, each directory's entries
/// by name, without following symlinks, at most `depth` levels deep (1: the
/// root's entries only). It yields every entry with its `lstat`. An
/// unreadable subdirectory is skipped. Iterative, so that a deep tree cannot
/// exhaust a thread's stack; it holds the names of one directory per level.
pub struct Walk {
    stack: Vec<(PathBuf, std::vec::IntoIter<std::ffi::OsString>)>,
    depth: u32,
}

/// Starts a [`Walk`]; an unreadable root, or one that is not a directory, is
/// an error here, never later.
pub fn walk(root: &Path, depth: u32) -> FsResult<Walk> {
    walk_root(root)?;
    let mut stack = Vec::new();
    if depth > 0 {
        let top = sorted_names(root).map_err(|e| FsError::io("read directory", root, e))?;
        stack.push((root.to_path_buf(), top.into_iter()));
    }
    Ok(Walk { stack, depth })
}

impl Iterator for Walk {
    type Item = (PathBuf, std::fs::Metadata);

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let (dir, names) = self.stack.last_mut()?;
            let Some(name) = names.next() else {
                self.stack.pop();
                continue;
            };
            let p = dir.join(name);
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() && (self.stack.len() as u32) < self.depth {
                match sorted_names(&p) {
                    Ok(children) => self.stack.push((p.clone(), children.into_iter())),
                    Err(e) => {
                        tracing::debug!(path = %p.display(), error = %e, "skipping unreadable directory")
                    }
                }
            }
            return Some((p, meta));
        }
    }
}

/// Opens a regular file for reading. A directory, a FIFO or a device is
/// refused (opening never blocks: O_NONBLOCK has no effect on regular files).
pub fn open_regular(path: &Path) -> FsResult<(File, std::fs::Metadata)> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => {
                FsError::NotFound(format!("file not found: {}", path.display()))
            }
            _ => FsError::io("open", path, e),
        })?;
    let meta = file.metadata().map_err(|e| FsError::io("stat", path, e))?;
    if meta.is_dir() {
        return Err(FsError::InvalidFile(format!(
            "path is a directory, not a file: {}",
            path.display()
        )));
    }
    if !meta.is_file() {
        return Err(FsError::InvalidFile(format!(
            "path is not a regular file: {}",
            path.display()
        )));
    }
    Ok((file, meta))
}
