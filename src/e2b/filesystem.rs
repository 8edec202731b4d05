//! envd's `filesystem.Filesystem` service: `Stat`, `MakeDir`, `Move`,
//! `ListDir`, `Remove`, each run as the request's user on a blocking
//! thread (the same identity switch as execd's file routes); `WatchDir`
//! and the polling watcher trio are in `super::watch`; `super::fs_call`
//! dispatches both.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::proto::*;
use super::User;
use crate::connect::{Code, Error};
use crate::fs::identity::scoped;
use crate::fs::{FsError, Kind};

/// Entries one `ListDir` returns at most.
const MAX_ENTRIES: usize = 100_000;
/// `ListDir` depth at most.
const MAX_DEPTH: u32 = 64;

/// The Connect error of a file-system error.
pub fn fs_error(e: FsError) -> Error {
    let code = match e.kind() {
        Kind::NotFound => Code::NotFound,
        Kind::Denied => Code::PermissionDenied,
        Kind::Exists => Code::AlreadyExists,
        Kind::NoSpace => Code::ResourceExhausted,
        Kind::InvalidFile | Kind::BadRequest | Kind::BadContent => Code::InvalidArgument,
        _ => Code::Internal,
    };
    Error::new(code, e.to_string())
}

fn io<'a>(op: &'static str, p: &'a Path) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |e| FsError::io(op, p, e)
}

/// Runs `f` as `user`.
async fn as_user<T, F>(user: &User, f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, FsError> + Send + 'static,
{
    scoped(user.scope(), f).await.map_err(fs_error)
}

fn path_of(user: &User, raw: &str) -> Result<PathBuf, Error> {
    user.path(raw).map_err(Error::invalid)
}

/// `ls -l`'s type and permission letters for a mode.
fn permissions(mode: u32, kind: i32) -> String {
    let t = match kind {
        FILE_TYPE_DIRECTORY => 'd',
        FILE_TYPE_SYMLINK => 'l',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for shift in [6, 3, 0] {
        let b = mode >> shift & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// Describes `path` (not following a final symlink, whose target's type is
/// reported when it resolves).
pub fn entry(path: &Path) -> Result<EntryInfo, FsError> {
    let meta =
        std::fs::symlink_metadata(path).map_err(|e| crate::fs::info::lstat_error(path, e))?;
    let is_symlink = meta.file_type().is_symlink();
    let type_of = |m: &std::fs::Metadata| {
        if m.is_dir() {
            FILE_TYPE_DIRECTORY
        } else if m.file_type().is_symlink() {
            FILE_TYPE_SYMLINK
        } else {
            FILE_TYPE_FILE
        }
    };
    let (kind, symlink_target) = if is_symlink {
        let target = std::fs::read_link(path)
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        let kind = std::fs::metadata(path).map_or(FILE_TYPE_SYMLINK, |m| type_of(&m));
        (kind, target)
    } else {
        (type_of(&meta), None)
    };
    let mode = meta.permissions().mode() & 0o7777;
    let (owner, group) = names(meta.uid(), meta.gid());
    Ok(EntryInfo {
        name: path
            .file_name()
            .map_or_else(|| "/".into(), |n| n.to_string_lossy().into_owned()),
        r#type: kind,
        path: path.to_string_lossy().into_owned(),
        size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
        mode,
        permissions: permissions(mode, if is_symlink { FILE_TYPE_SYMLINK } else { kind }),
        owner,
        group,
        modified_time: Some(Timestamp {
            seconds: meta.mtime(),
            nanos: i32::try_from(meta.mtime_nsec()).unwrap_or(0),
        }),
        symlink_target,
        metadata: super::xattr::get(path),
        is_symlink,
    })
}

/// Owner and group names (the numbers when unnamed).
fn names(uid: u32, gid: u32) -> (String, String) {
    use crate::process::users;
    let owner =
        users::name_by_id(&users::read_db("/etc/passwd"), uid).unwrap_or_else(|| uid.to_string());
    let group =
        users::name_by_id(&users::read_db("/etc/group"), gid).unwrap_or_else(|| gid.to_string());
    (owner, group)
}

pub(super) async fn stat(user: User, r: PathRequest) -> Result<EntryResponse, Error> {
    let p = path_of(&user, &r.path)?;
    let e = as_user(&user, move || entry(&p)).await?;
    Ok(EntryResponse { entry: Some(e) })
}

pub(super) async fn make_dir(user: User, r: PathRequest) -> Result<EntryResponse, Error> {
    let p = path_of(&user, &r.path)?;
    let e = as_user(&user, move || {
        if std::fs::symlink_metadata(&p).is_ok() {
            return Err(FsError::Exists(format!("{} already exists", p.display())));
        }
        std::fs::create_dir_all(&p).map_err(io("mkdir", &p))?;
        entry(&p)
    })
    .await?;
    Ok(EntryResponse { entry: Some(e) })
}

pub(super) async fn mv(user: User, r: MoveRequest) -> Result<EntryResponse, Error> {
    let src = path_of(&user, &r.source)?;
    let dst = path_of(&user, &r.destination)?;
    let e = as_user(&user, move || {
        std::fs::symlink_metadata(&src).map_err(|e| crate::fs::info::lstat_error(&src, e))?;
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent).map_err(io("mkdir", parent))?;
        }
        std::fs::rename(&src, &dst).map_err(io("rename", &src))?;
        entry(&dst)
    })
    .await?;
    Ok(EntryResponse { entry: Some(e) })
}

pub(super) async fn remove(user: User, r: PathRequest) -> Result<Empty, Error> {
    let p = path_of(&user, &r.path)?;
    as_user(&user, move || {
        let m = std::fs::symlink_metadata(&p).map_err(|e| crate::fs::info::lstat_error(&p, e))?;
        if m.is_dir() {
            std::fs::remove_dir_all(&p).map_err(io("remove", &p))
        } else {
            std::fs::remove_file(&p).map_err(io("remove", &p))
        }
    })
    .await?;
    Ok(Empty {})
}

pub(super) async fn list_dir(user: User, r: ListDirRequest) -> Result<ListDirResponse, Error> {
    let root = path_of(&user, &r.path)?;
    let depth = r.depth.clamp(1, MAX_DEPTH);
    let entries = as_user(&user, move || {
        let m = std::fs::metadata(&root).map_err(|e| crate::fs::info::lstat_error(&root, e))?;
        if !m.is_dir() {
            return Err(FsError::InvalidFile(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let mut out = Vec::new();
        walk(&root, depth, &mut out)?;
        Ok(out)
    })
    .await?;
    Ok(ListDirResponse { entries })
}

/// The entries under `dir` down to `depth` levels (symlinks not followed),
/// sorted by name within a directory.
fn walk(dir: &Path, depth: u32, out: &mut Vec<EntryInfo>) -> Result<(), FsError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("readdir", dir))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for n in names {
        if out.len() >= MAX_ENTRIES {
            return Err(FsError::BadRequest(format!(
                "more than {MAX_ENTRIES} entries: list a smaller depth"
            )));
        }
        let p = dir.join(n);
        // Gone between readdir and lstat: skipped.
        let Ok(e) = entry(&p) else { continue };
        let descend = e.r#type == FILE_TYPE_DIRECTORY && !e.is_symlink && depth > 1;
        out.push(e);
        if descend {
            // A subdirectory that cannot be read is listed, not descended.
            let _ = walk(&p, depth - 1, out);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_letters() {
        assert_eq!(permissions(0o755, FILE_TYPE_DIRECTORY), "drwxr-xr-x");
        assert_eq!(permissions(0o640, FILE_TYPE_FILE), "-rw-r-----");
        assert_eq!(permissions(0o777, FILE_TYPE_SYMLINK), "lrwxrwxrwx");
    }
}
