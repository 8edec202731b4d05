//! Directory primitives shared by the operations and the uploads.

use std::fs::{DirBuilder, File};
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::{FsError, FsResult};

/// Creates `dir` and its missing parents with mode 0755.
pub fn make_parents(dir: &Path) -> FsResult<()> {
    match DirBuilder::new().recursive(true).mode(0o755).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST | libc::ENOTDIR)) => {
            Err(FsError::InvalidFile(format!(
                "cannot create directory {}: it or one of its parents is not a directory",
                dir.display()
            )))
        }
        Err(e) => Err(FsError::io("create directory", dir, e)),
    }
}

/// fsyncs a directory, so that a rename or creation in it is durable.
pub fn sync_dir(dir: &Path) -> FsResult<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::io("fsync directory", dir, e))
}
