//! What a session changed under an overlay, read from its upper layer, and
//! applying (commit) or dropping (discard) those changes.
//!
//! The upper layer holds every entry the session created or copied up; a
//! deletion is a whiteout (a character device 0/0); a directory whose lower
//! contents were replaced as a whole is opaque (`trusted.overlay.opaque=y`).
//! Renames show as an added path and a deleted one (execd mounts overlays
//! without `redirect_dir`).

use std::collections::{BTreeSet, HashMap};
use std::ffi::{CString, OsString};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fs::attrs::Attrs;
use crate::fs::confined::{runtime_path, Root};
use crate::fs::upload::AtomicFile;

/// At most this many changes are listed or applied in one request.
pub const MAX_CHANGES: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Added,
    Modified,
    Deleted,
    TypeChanged,
}

/// One changed path.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// The path inside the session (= on the host under the lower dir).
    pub path: PathBuf,
    pub kind: Kind,
    /// `file`, `directory`, `symlink` or `other`; `None` for a deletion.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub file_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old_mode: Option<u32>,
    /// A modified file: whether its bytes differ (false: attributes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_changed: Option<bool>,
    /// A directory that hides everything the lower one had.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub opaque: bool,
    /// The lower path changed since the session began (or since execd last
    /// committed it): committing would overwrite someone else's change.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub conflict: bool,
    /// Relative to the overlay.
    #[serde(skip)]
    pub rel: PathBuf,
    /// Whether the upper layer has an entry for it (not so for the lower
    /// children an opaque directory hides).
    #[serde(skip)]
    pub in_upper: bool,
}

fn type_of(m: &std::fs::Metadata) -> &'static str {
    let t = m.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "file"
    } else if t.is_symlink() {
        "symlink"
    } else {
        "other"
    }
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(p: &Path) -> bool {
    let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut v = [0u8; 4];
    let n = crate::process::sys::lgetxattr(&c, c"trusted.overlay.opaque", &mut v);
    n == Ok(1) && v[0] == b'y'
}

/// Whether two regular files differ in content.
fn differs(a: &Path, b: &Path) -> bool {
    let open = |p: &Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
    };
    let (Ok(mut x), Ok(mut y)) = (open(a), open(b)) else {
        return true;
    };
    let (mut bx, mut by) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let nx = read_full(&mut x, &mut bx);
        let ny = read_full(&mut y, &mut by);
        match (nx, ny) {
            (Ok(nx), Ok(ny)) if nx == ny && bx[..nx] == by[..ny] => {
                if nx == 0 {
                    return false;
                }
            }
            _ => return true,
        }
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn ctime_ns(m: &std::fs::Metadata) -> i128 {
    i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec())
}

/// The baseline a lower path is compared with: when the session began, or
/// when execd last wrote it in a commit.
pub struct Baseline<'a> {
    pub since_ns: i128,
    pub committed: &'a HashMap<PathBuf, i128>,
}

impl Baseline<'_> {
    fn changed(&self, rel: &Path, lower: &std::fs::Metadata) -> bool {
        let base = self.committed.get(rel).copied().unwrap_or(self.since_ns);
        ctime_ns(lower) > base
    }
}

/// Every change under one overlay (mounted at `view`), parents before children.
pub fn scan(
    view: &Path,
    lower: &Path,
    upper: &Path,
    base: &Baseline,
) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    walk(view, lower, upper, Path::new(""), base, &mut out)?;
    Ok(out)
}

fn walk(
    view: &Path,
    lower: &Path,
    upper: &Path,
    rel: &Path,
    base: &Baseline,
    out: &mut Vec<Change>,
) -> Result<(), String> {
    let dir = upper.join(rel);
    let mut names: Vec<OsString> = std::fs::read_dir(&dir)
        .map_err(|e| format!("read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        if out.len() >= MAX_CHANGES {
            return Err(format!("more than {MAX_CHANGES} changes"));
        }
        let r = rel.join(&name);
        let Ok(um) = std::fs::symlink_metadata(upper.join(&r)) else {
            continue;
        };
        let lm = std::fs::symlink_metadata(lower.join(&r)).ok();
        let mut c = Change {
            path: view.join(&r),
            kind: Kind::Added,
            file_type: Some(type_of(&um)),
            old_type: lm.as_ref().map(type_of),
            size: (!um.is_dir()).then_some(um.len()),
            old_size: lm.as_ref().filter(|m| !m.is_dir()).map(|m| m.len()),
            mode: Some(um.mode() & 0o7777),
            old_mode: lm.as_ref().map(|m| m.mode() & 0o7777),
            content_changed: None,
            opaque: false,
            conflict: lm.as_ref().is_some_and(|m| base.changed(&r, m)),
            rel: r.clone(),
            in_upper: true,
        };
        if is_whiteout(&um) {
            if lm.is_none() {
                continue;
            }
            c.kind = Kind::Deleted;
            c.file_type = None;
            c.size = None;
            c.mode = None;
            out.push(c);
            continue;
        }
        match &lm {
            None => {}
            Some(l) if type_of(l) != type_of(&um) => c.kind = Kind::TypeChanged,
            Some(l) => {
                c.kind = Kind::Modified;
                if um.is_file() {
                    c.content_changed =
                        Some(l.len() != um.len() || differs(&lower.join(&r), &upper.join(&r)));
                }
            }
        }
        if um.is_dir() {
            c.opaque = lm.is_some() && is_opaque(&upper.join(&r));
            let listed = c.kind != Kind::Modified || c.old_mode != c.mode || c.opaque;
            let opaque = c.opaque && c.kind == Kind::Modified;
            if listed {
                out.push(c);
            }
            if opaque {
                // The lower children the opaque directory hides are deleted.
                let shown: BTreeSet<OsString> = std::fs::read_dir(upper.join(&r))
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .collect();
                let mut hidden: Vec<OsString> = std::fs::read_dir(lower.join(&r))
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok().map(|e| e.file_name()))
                    .filter(|n| !shown.contains(n))
                    .collect();
                hidden.sort();
                for n in hidden {
                    let hr = r.join(&n);
                    let Ok(hm) = std::fs::symlink_metadata(lower.join(&hr)) else {
                        continue;
                    };
                    out.push(Change {
                        path: view.join(&hr),
                        kind: Kind::Deleted,
                        file_type: None,
                        old_type: Some(type_of(&hm)),
                        size: None,
                        old_size: (!hm.is_dir()).then_some(hm.len()),
                        mode: None,
                        old_mode: Some(hm.mode() & 0o7777),
                        content_changed: None,
                        opaque: false,
                        conflict: base.changed(&hr, &hm),
                        rel: hr,
                        in_upper: false,
                    });
                }
            }
            walk(view, lower, upper, &r, base, out)?;
        } else {
            out.push(c);
        }
    }
    Ok(())
}

/// Whether `c` is among `paths` (itself or beneath one); every change when `paths` is empty.
pub fn selected(c: &Change, paths: &[PathBuf]) -> bool {
    paths.is_empty() || paths.iter().any(|p| c.path.starts_with(p))
}

/// A unified diff of a small text file's change; `None` when either side
/// is not a small UTF-8 text file.
pub fn text_diff(lower: &Path, upper: &Path, c: &Change) -> Option<String> {
    const MAX: u64 = 64 * 1024;
    if c.file_type != Some("file") || c.content_changed == Some(false) {
        return None;
    }
    let read = |p: &Path| -> Option<String> {
        let m = std::fs::symlink_metadata(p).ok()?;
        if !m.is_file() || m.len() > MAX {
            return None;
        }
        String::from_utf8(std::fs::read(p).ok()?).ok()
    };
    let new = read(&upper.join(&c.rel))?;
    let old = match c.kind {
        Kind::Added => String::new(),
        _ => read(&lower.join(&c.rel))?,
    };
    Some(unified(&old, &new, &c.path.to_string_lossy()))
}

/// A unified diff (all changed lines in one hunk per run of changes, three
/// lines of context), by the longest common subsequence of the lines.
fn unified(old: &str, new: &str, name: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // The LCS table is (n+1)(m+1) cells: both sides are at most 64 KiB, and
    // beyond 4M cells the diff is one replacement hunk.
    let ops: Vec<(char, &str)> = if (a.len() + 1) * (b.len() + 1) > 4_000_000 {
        a.iter()
            .map(|l| ('-', *l))
            .chain(b.iter().map(|l| ('+', *l)))
            .collect()
    } else {
        let (n, m) = (a.len(), b.len());
        let mut t = vec![0u32; (n + 1) * (m + 1)];
        for i in (0..n).rev() {
            for j in (0..m).rev() {
                t[i * (m + 1) + j] = if a[i] == b[j] {
                    t[(i + 1) * (m + 1) + j + 1] + 1
                } else {
                    t[(i + 1) * (m + 1) + j].max(t[i * (m + 1) + j + 1])
                };
            }
        }
        let (mut i, mut j, mut v) = (0, 0, Vec::new());
        while i < n || j < m {
            if i < n && j < m && a[i] == b[j] {
                v.push((' ', a[i]));
                i += 1;
                j += 1;
            } else if i < n && (j == m || t[(i + 1) * (m + 1) + j] >= t[i * (m + 1) + j + 1]) {
                v.push(('-', a[i]));
                i += 1;
            } else {
                v.push(('+', b[j]));
                j += 1;
            }
        }
        v
    };
    let mut out = format!("--- a{name}\n+++ b{name}\n");
    let changed: Vec<usize> = (0..ops.len()).filter(|k| ops[*k].0 != ' ').collect();
    let mut k = 0;
    while k < changed.len() {
        let start = changed[k].saturating_sub(3);
        let mut end = changed[k];
        while k < changed.len() && changed[k] <= end + 6 {
            end = changed[k];
            k += 1;
        }
        let end = (end + 4).min(ops.len());
        let (mut ol, mut nl) = (1, 1);
        for (c, _) in &ops[..start] {
            if *c != '+' {
                ol += 1;
            }
            if *c != '-' {
                nl += 1;
            }
        }
        let oc = ops[start..end].iter().filter(|o| o.0 != '+').count();
        let nc = ops[start..end].iter().filter(|o| o.0 != '-').count();
        // An empty side starts at the line before (`-0,0` for a new file).
        let ol = if oc == 0 { ol - 1 } else { ol };
        let nl = if nc == 0 { nl - 1 } else { nl };
        out.push_str(&format!("@@ -{ol},{oc} +{nl},{nc} @@\n"));
        for (c, l) in &ops[start..end] {
            out.push(*c);
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Applies `c` to the lower directory, each file atomically (a temporary
/// file, fsync, rename), beneath `root` (symlinks never lead out of it).
pub fn apply(root: &Root, upper: &Path, c: &Change) -> Result<(), String> {
    let rel_s = c.rel.to_string_lossy().into_owned();
    let rel = runtime_path(&rel_s).map_err(|e| format!("{rel_s}: {e}"))?;
    let Some((parent, name)) = rel.split_last() else {
        return Err("the overlay's root itself cannot change".into());
    };
    let shown = c.path.clone();
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what} {}: {e}", shown.display());
    if c.kind == Kind::Deleted || c.kind == Kind::TypeChanged {
        match root.remove(&rel, true) {
            Ok(()) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(err("remove", &e)),
        }
        if c.kind == Kind::Deleted {
            return Ok(());
        }
    }
    let src = upper.join(&c.rel);
    let um = std::fs::symlink_metadata(&src).map_err(|e| err("stat upper", &e))?;
    let dir = root.make_dirs(&parent).map_err(|e| err("parent of", &e))?;
    let cname = CString::new(name.as_bytes()).map_err(|e| err("name", &e))?;
    if um.is_dir() {
        let _ = nix::sys::stat::mkdirat(
            &dir,
            cname.as_c_str(),
            nix::sys::stat::Mode::from_bits_truncate(0o700),
        );
        let d = root
            .open_beneath(&rel, libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .map_err(|e| err("open", &e))?;
        let f = std::fs::File::from(d);
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(
            um.mode() & 0o7777,
        ))
        .map_err(|e| err("chmod", &e))?;
        let _ = std::os::unix::fs::fchown(&f, Some(um.uid()), Some(um.gid()));
        return Ok(());
    }
    if um.file_type().is_symlink() {
        let target = std::fs::read_link(&src).map_err(|e| err("readlink", &e))?;
        let tmp = format!(".execd-commit-{}", crate::process::new_id());
        let fd = &dir;
        nix::unistd::symlinkat(target.as_os_str(), fd, tmp.as_str())
            .map_err(|e| err("symlink", &e))?;
        if let Err(e) = nix::fcntl::renameat(fd, tmp.as_str(), fd, cname.as_c_str()) {
            let _ =
                nix::unistd::unlinkat(fd, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
            return Err(err("rename", &e));
        }
        return Ok(());
    }
    if !um.is_file() {
        return Err(format!(
            "{}: only files, directories and symlinks are committed",
            shown.display()
        ));
    }
    let mut input = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&src)
        .map_err(|e| err("open upper", &e))?;
    let mut out = AtomicFile::create_in(dir, &name.to_os_string(), shown.clone())
        .map_err(|e| err("create", &e))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = input.read(&mut buf).map_err(|e| err("read upper", &e))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n]).map_err(|e| err("write", &e))?;
    }
    out.commit(Attrs {
        mode: Some(um.mode() & 0o7777),
        uid: Some(um.uid()),
        gid: Some(um.gid()),
    })
    .map_err(|e| err("commit", &e))?;
    Ok(())
}

/// Drops `c` from the upper layer (after a commit, or to discard it). On
/// commit a directory goes only once empty, and an opaque one only when
/// `keep_opaque` is false (no lower entry it hides is left uncommitted).
pub fn clear(upper: &Path, c: &Change, discard: bool, keep_opaque: bool) -> Result<(), String> {
    if !c.in_upper {
        return Ok(());
    }
    let p = upper.join(&c.rel);
    let Ok(m) = std::fs::symlink_metadata(&p) else {
        return Ok(());
    };
    let r = if m.is_dir() {
        if discard {
            std::fs::remove_dir_all(&p)
        } else if c.opaque && keep_opaque {
            return Ok(());
        } else {
            match std::fs::remove_dir(&p) {
                Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => Ok(()),
                r => r,
            }
        }
    } else {
        std::fs::remove_file(&p)
    };
    r.map_err(|e| format!("clear {}: {e}", c.path.display()))
}

#[cfg(test)]
mod tests {
    use super::unified;

    #[test]
    fn unified_diff_of_a_changed_line() {
        let d = unified("a\nb\nc\n", "a\nB\nc\nd\n", "/w/f");
        assert_eq!(
            d,
            "--- a/w/f\n+++ b/w/f\n@@ -1,3 +1,4 @@\n a\n-b\n+B\n c\n+d\n"
        );
        assert_eq!(unified("same\n", "same\n", "/x"), "--- a/x\n+++ b/x\n");
    }
}
