//! File-system operations. No HTTP types in here.
//!
//! Every operation is a plain blocking function; the API layer runs it on a
//! blocking thread through [`identity::scoped`], which also applies a caller's
//! uid/gid for the identity-scoped routes. Errors are one enum, [`FsError`],
//! whose [`FsError::kind`] classifies them (by errno where there is one) so
//! that the server can map them to HTTP in one place.

pub mod attrs;
pub mod confined;
pub mod dirs;
pub mod identity;
pub mod info;
pub mod lines;
pub mod ops;
pub mod path;
pub mod replace;
pub mod root;
pub mod search;
pub mod upload;
pub mod watch;

use std::io;
use std::path::Path;

pub use path::PathError;

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The path (or a parent) does not exist.
    NotFound,
    /// The caller may not do this (EACCES, EPERM, EROFS, identity refused).
    Denied,
    /// The disk or quota is full.
    NoSpace,
    /// Wrong kind of file for the operation: a directory where a file is
    /// needed or the reverse, a symlink loop, a name too long.
    InvalidFile,
    /// The destination exists and the operation refuses to replace it.
    Exists,
    /// The request itself is malformed (bad path, bad mode, unknown user).
    BadRequest,
    /// The upload body ended early or was malformed.
    BadContent,
    /// Anything else: a failure of the machine, not of the request.
    Other,
}

/// A file-system operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{0}")]
    Path(#[from] PathError),
    /// A system call failed; `op` says which and `path` where.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidFile(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    BadContent(String),
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Internal(String),
    /// A path beneath a confined root failed, or led out of it.
    #[error(transparent)]
    Confined(confined::ConfineError),
}

impl FsError {
    /// Wraps an `io::Error` from `op` on `path`.
    pub fn io(op: &'static str, path: &Path, source: io::Error) -> FsError {
        FsError::Io {
            op,
            path: path.display().to_string(),
            source,
        }
    }

    /// The classification the server maps to a status code.
    pub fn kind(&self) -> Kind {
        match self {
            FsError::Path(_) | FsError::BadRequest(_) => Kind::BadRequest,
            FsError::NotFound(_) => Kind::NotFound,
            FsError::InvalidFile(_) => Kind::InvalidFile,
            FsError::Exists(_) => Kind::Exists,
            FsError::BadContent(_) => Kind::BadContent,
            FsError::Denied(_) => Kind::Denied,
            FsError::Internal(_) => Kind::Other,
            FsError::Io { source, .. } => errno_kind(source),
            FsError::Confined(confined::ConfineError::Escapes) => Kind::Denied,
            FsError::Confined(confined::ConfineError::Io { source, .. }) => errno_kind(source),
        }
    }

    /// The errno of a failed system call, if that is what failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            FsError::Io { source, .. } => source.raw_os_error(),
            FsError::Confined(e) => e.errno(),
            _ => None,
        }
    }

    /// True when a path led out of its confined root.
    pub fn escapes(&self) -> bool {
        matches!(self, FsError::Confined(confined::ConfineError::Escapes))
    }
}

fn errno_kind(e: &io::Error) -> Kind {
    use nix::errno::Errno::*;
    match e.raw_os_error().map(nix::errno::Errno::from_raw) {
        Some(ENOENT) => Kind::NotFound,
        Some(EACCES | EPERM | EROFS) => Kind::Denied,
        Some(ENOSPC | EDQUOT | EFBIG) => Kind::NoSpace,
        Some(EISDIR | ENOTDIR | ELOOP | ENAMETOOLONG | EXDEV) => Kind::InvalidFile,
        Some(EEXIST | ENOTEMPTY) => Kind::Exists,
        Some(EINVAL) => Kind::BadRequest,
        _ => match e.kind() {
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => Kind::BadRequest,
            io::ErrorKind::UnexpectedEof => Kind::BadContent,
            _ => Kind::Other,
        },
    }
}

/// `Result` with an `FsError`.
pub type FsResult<T> = Result<T, FsError>;

/// Expands a request path as upstream does (see [`path::expand_daemon`]).
pub fn expand(p: &str) -> FsResult<std::path::PathBuf> {
    Ok(path::expand_daemon(p)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_errno() {
        use nix::errno::Errno;
        let k = |n: Errno| FsError::io("x", Path::new("/p"), io::Error::from(n)).kind();
        assert_eq!(k(Errno::ENOENT), Kind::NotFound);
        assert_eq!(k(Errno::EACCES), Kind::Denied);
        assert_eq!(k(Errno::EPERM), Kind::Denied);
        assert_eq!(k(Errno::ENOSPC), Kind::NoSpace);
        assert_eq!(k(Errno::EISDIR), Kind::InvalidFile);
        assert_eq!(k(Errno::ENOTDIR), Kind::InvalidFile);
        assert_eq!(k(Errno::EEXIST), Kind::Exists);
        assert_eq!(k(Errno::EIO), Kind::Other);
        assert_eq!(FsError::from(PathError::Nul).kind(), Kind::BadRequest);
    }
}
