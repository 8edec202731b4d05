//! A file's mode and owner: as a request names them ([`AttrRequest`]) and
//! resolved to ids ([`Attrs`]).

use super::{FsError, FsResult};
use crate::process::users::{id_by_name, read_db};

/// Mode and owner asked for by the caller; `None` keeps the existing target's
/// (or the default for a new file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// Mode and owner as a request gives them: names not yet resolved, so that
/// the lookup happens on the thread doing the work.
#[derive(Debug, Clone, Default)]
pub struct AttrRequest {
    /// Permission bits.
    pub mode: Option<u32>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

impl AttrRequest {
    /// Resolves names to ids.
    pub fn resolve(&self) -> FsResult<Attrs> {
        let (uid, gid) = resolve_owner(self.owner.as_deref(), self.group.as_deref())?;
        Ok(Attrs {
            mode: self.mode,
            uid,
            gid,
        })
    }
}

/// Resolves owner and group names (or numeric ids) to ids. Empty or absent
/// means "leave as is"; an unknown name is an error.
pub fn resolve_owner(
    owner: Option<&str>,
    group: Option<&str>,
) -> FsResult<(Option<u32>, Option<u32>)> {
    fn one(name: Option<&str>, db: &str, what: &str) -> FsResult<Option<u32>> {
        match name.filter(|n| !n.is_empty()) {
            None => Ok(None),
            Some(n) => match n.parse::<u32>() {
                Ok(id) => Ok(Some(id)),
                Err(_) => id_by_name(&read_db(db), n)
                    .map(Some)
                    .ok_or_else(|| FsError::BadRequest(format!("unknown {what} '{n}'"))),
            },
        }
    }
    Ok((
        one(owner, "/etc/passwd", "user")?,
        one(group, "/etc/group", "group")?,
    ))
}
