//! `FileInfo`: what every listing, search and info route reports about a path,
//! taken from `lstat` so that a symlink is described, never followed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{FsError, FsResult};
use crate::process::users::{name_by_id, read_db};

/// The type of a directory entry, from `lstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    File,
    Directory,
    Symlink,
    Other,
}

impl Type {
    /// Upstream's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Type::File => "file",
            Type::Directory => "directory",
            Type::Symlink => "symlink",
            Type::Other => "other",
        }
    }
}

/// One path, described from `lstat`.
#[derive(Debug, Clone)]
pub struct FileInfo {
    pub path: PathBuf,
    pub kind: Type,
    /// For a symlink, the length of its target.
    pub size: u64,
    pub modified: SystemTime,
    /// The status-change time, as upstream reports for "created" on Linux.
    pub changed: SystemTime,
    pub uid: u32,
    pub gid: u32,
    /// Permission bits only (no file type).
    pub mode: u32,
}

/// Permission bits (with setuid/setgid/sticky) as the decimal number whose
/// digits are their octal digits: `0o755` -> `755`.
pub fn mode_to_wire(bits: u32) -> u32 {
    let mut bits = bits & 0o7777;
    let (mut out, mut place) = (0, 1);
    while bits > 0 {
        out += (bits & 7) * place;
        bits >>= 3;
        place *= 10;
    }
    out
}

/// The reverse of [`mode_to_wire`]: `644` -> `0o644`. Digits 8 and 9, and
/// values above 7777, are refused.
pub fn mode_from_wire(n: u32) -> Result<u32, String> {
    if n > 7777 {
        return Err(format!(
            "invalid mode {n}: at most four octal digits (e.g. 755) are allowed"
        ));
    }
    let (mut m, mut rest, mut shift) = (0, n, 0);
    while rest > 0 {
        let d = rest % 10;
        if d > 7 {
            return Err(format!(
                "invalid mode {n}: digit {d} is not octal (write the mode as octal digits, e.g. 644)"
            ));
        }
        m |= d << shift;
        rest /= 10;
        shift += 3;
    }
    Ok(m)
}

/// Resolves uids and gids to names for one request: the databases are read
/// once, and an id without a name is shown as the number.
pub struct Names {
    passwd: String,
    group: String,
}

impl Names {
    pub fn load() -> Names {
        Names {
            passwd: read_db("/etc/passwd"),
            group: read_db("/etc/group"),
        }
    }

    pub fn user(&self, uid: u32) -> String {
        name_by_id(&self.passwd, uid).unwrap_or_else(|| uid.to_string())
    }

    pub fn group(&self, gid: u32) -> String {
        name_by_id(&self.group, gid).unwrap_or_else(|| gid.to_string())
    }
}

fn time_of(secs: i64, nanos: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nanos.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH
    }
}

/// Describes `meta` (from `lstat`) of `path`.
pub fn describe(path: &Path, meta: &std::fs::Metadata) -> FileInfo {
    let ft = meta.file_type();
    let kind = if ft.is_symlink() {
        Type::Symlink
    } else if ft.is_dir() {
        Type::Directory
    } else if ft.is_file() {
        Type::File
    } else {
        Type::Other
    };
    FileInfo {
        path: path.to_path_buf(),
        kind,
        size: meta.len(),
        modified: time_of(meta.mtime(), meta.mtime_nsec()),
        changed: time_of(meta.ctime(), meta.ctime_nsec()),
        uid: meta.uid(),
        gid: meta.gid(),
        mode: meta.mode() & 0o7777,
    }
}

/// `lstat`s `path` and describes it; a missing path is `NotFound`.
pub fn stat(path: &Path) -> FsResult<FileInfo> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| lstat_error(path, e))?;
    Ok(describe(path, &meta))
}

/// The error for a failed `lstat` of a path the caller named.
pub fn lstat_error(path: &Path, e: std::io::Error) -> FsError {
    if e.kind() == std::io::ErrorKind::NotFound {
        FsError::NotFound(format!("file not found: {}", path.display()))
    } else {
        FsError::io("lstat", path, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_round_trip() {
        assert_eq!(mode_to_wire(0o644), 644);
        assert_eq!(mode_to_wire(0o755), 755);
        assert_eq!(mode_to_wire(0o4755), 4755);
        assert_eq!(mode_to_wire(0), 0);
        assert_eq!(mode_to_wire(0o100644), 644);
        for m in [0, 0o7, 0o600, 0o644, 0o755, 0o777, 0o1777, 0o4711] {
            assert_eq!(mode_from_wire(mode_to_wire(m)), Ok(m));
        }
    }

    #[test]
    fn mode_rejects_non_octal() {
        assert!(mode_from_wire(648).unwrap_err().contains("digit 8"));
        assert!(mode_from_wire(9).is_err());
        assert!(mode_from_wire(17777).is_err());
        assert_eq!(mode_from_wire(7777), Ok(0o7777));
    }
}
