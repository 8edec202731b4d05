//! THE root a file route acts in, and a path in it.
//!
//! Every file route, whatever its wire, acts in a [`Root`]:
//! - [`Root::Scoped`]: any path of the machine, resolved as a [`Scope`]
//!   says: execd's own view and identity (`/files/*`), a uid/gid's
//!   permissions (`/v1/filesystem/{uid}/{gid}/*`), an isolated session's
//!   merged view (`/v1/isolated/session/{id}/*`);
//! - [`Root::Confined`]: only what lies beneath a directory, every path
//!   opened beneath its descriptor (the agent-sandbox python-runtime routes,
//!   sandboxd's `/v1/files/*`; see [`super::confined`]).
//!
//! A route's wire decides how a request's path is read (a [`Place`]:
//! upstream's `~` expansion, the python-runtime's or sandboxd's rules);
//! the root decides where it leads and as whom. The operations several
//! wires share (open a file to send it, describe, list, remove, write a file
//! atomically) are written once here, for both kinds of root, each on a
//! blocking thread: a new scope is a new `Root`, never copied handlers.

use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::attrs::AttrRequest;
use super::confined::{self, ConfineError, Entry, RelPath};
use super::identity::{scoped, Scope};
use super::upload::Writer;
use super::{ops, FsError, FsResult};

/// Where a file route acts.
#[derive(Clone, Debug)]
pub enum Root {
    /// Any path, as the scope's identity, in the scope's mount namespace.
    Scoped(Scope),
    /// Only beneath a directory, as execd.
    Confined(Arc<confined::Root>),
}

impl Default for Root {
    /// execd's own view and identity.
    fn default() -> Root {
        Root::Scoped(Scope::default())
    }
}

/// A path in a root, as a route's rules read it from the request.
#[derive(Clone, Debug)]
pub struct Place {
    /// The path as the request gave it (for messages and file names).
    pub shown: PathBuf,
    at: At,
}

#[derive(Clone, Debug)]
enum At {
    /// An absolute path (for a scoped root).
    Path(PathBuf),
    /// Below a confined root (empty: the root itself).
    Beneath(RelPath),
}

impl Place {
    /// Upstream's rules: `~` expanded, relative to execd's directory (for a
    /// scoped root).
    pub fn expanded(raw: &str) -> FsResult<Place> {
        let p = super::expand(raw)?;
        Ok(Place {
            shown: p.clone(),
            at: At::Path(p),
        })
    }

    /// The python-runtime's rules (see [`confined::runtime_path`]).
    pub fn runtime(raw: &str) -> Result<Place, ConfineError> {
        Ok(Place::beneath(raw, confined::runtime_path(raw)?))
    }

    /// sandboxd's rules for a root configured as `root` (see
    /// [`confined::sandboxd_path`]).
    pub fn sandboxd(raw: &str, root: &Path) -> Result<Place, ConfineError> {
        Ok(Place::beneath(raw, confined::sandboxd_path(raw, root)?))
    }

    fn beneath(raw: &str, rel: RelPath) -> Place {
        Place {
            shown: PathBuf::from(raw),
            at: At::Beneath(rel),
        }
    }

    /// Whether the place is a confined root's own directory.
    pub fn is_root(&self) -> bool {
        matches!(&self.at, At::Beneath(r) if r.is_root())
    }
}

impl From<ConfineError> for FsError {
    fn from(e: ConfineError) -> FsError {
        FsError::Confined(e)
    }
}

/// An `Entry` of a path a scoped root reached.
fn entry(name: OsString, m: &std::fs::Metadata) -> Entry {
    Entry {
        name,
        is_dir: m.is_dir(),
        size: m.len(),
        modified: m.modified().unwrap_or(std::time::UNIX_EPOCH),
        mode: m.mode() & 0o7777,
    }
}

fn name_of(p: &Path) -> OsString {
    p.file_name()
        .map_or_else(|| OsString::from("."), |n| n.to_os_string())
}

impl Root {
    /// Opens the directory `dir` as a confined root (on a blocking thread;
    /// symlinks in `dir` itself resolved normally: it is trusted config).
    pub async fn confined(dir: PathBuf) -> FsResult<Root> {
        blocking(move || {
            confined::Root::open(&dir)
                .map(|r| Root::Confined(Arc::new(r)))
                .map_err(|source| {
                    ConfineError::Io {
                        op: "open the base directory",
                        source,
                    }
                    .into()
                })
        })
        .await
    }

    /// A request's path as this root reads it when the wire has no rules of
    /// its own: upstream's `~` expansion in a scoped root; the
    /// python-runtime's rules beneath a confined one (absolute paths
    /// re-rooted, a `..` above the root refused).
    pub fn place(&self, raw: &str) -> FsResult<Place> {
        match self {
            Root::Scoped(_) => Place::expanded(raw),
            Root::Confined(_) => Ok(Place::runtime(raw)?),
        }
    }

    /// Runs `scoped` (a scoped root, with the absolute path) or `confined`
    /// (a confined root, with the path below it) on a blocking thread.
    async fn run<T: Send + 'static>(
        &self,
        place: &Place,
        scoped_op: impl FnOnce(PathBuf) -> FsResult<T> + Send + 'static,
        confined_op: impl FnOnce(&confined::Root, RelPath) -> Result<T, ConfineError> + Send + 'static,
    ) -> FsResult<T> {
        match (self, &place.at) {
            (Root::Scoped(s), At::Path(p)) => {
                let p = p.clone();
                scoped(s.clone(), move || scoped_op(p)).await
            }
            (Root::Confined(r), At::Beneath(rel)) => {
                let (r, rel) = (r.clone(), rel.clone());
                blocking(move || Ok(confined_op(&r, rel)?)).await
            }
            _ => Err(mismatch()),
        }
    }

    /// Opens a regular file for reading: the file and its description. A
    /// directory (or, in a scoped root, anything but a regular file) is
    /// refused.
    pub async fn open_file(&self, place: &Place) -> FsResult<(File, Entry)> {
        self.run(
            place,
            |p| {
                let (f, m) = ops::open_regular(&p)?;
                Ok((f, entry(name_of(&p), &m)))
            },
            |r, rel| r.open_file(&rel),
        )
        .await
    }

    /// Describes what the path leads to (symlinks followed; in a confined
    /// root, only while they stay beneath it).
    pub async fn stat(&self, place: &Place) -> FsResult<Entry> {
        self.run(
            place,
            |p| {
                let m = std::fs::metadata(&p).map_err(|e| FsError::io("stat", &p, e))?;
                Ok(entry(name_of(&p), &m))
            },
            |r, rel| r.stat(&rel),
        )
        .await
    }

    /// The entries of a directory, sorted by name; symlinks described by
    /// their targets, and left out when broken (or, confined, leading out).
    pub async fn list(&self, place: &Place) -> FsResult<Vec<Entry>> {
        self.run(
            place,
            |p| {
                let rd = std::fs::read_dir(&p).map_err(|e| FsError::io("list", &p, e))?;
                let mut out = Vec::new();
                for d in rd {
                    let d = d.map_err(|e| FsError::io("list", &p, e))?;
                    if let Ok(m) = std::fs::metadata(d.path()) {
                        out.push(entry(d.file_name(), &m));
                    }
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            },
            |r, rel| r.list(&rel),
        )
        .await
    }

    /// Removes a file or symlink (never its target), or a directory: empty
    /// unless `recursive`. A confined root's own directory is emptied, never
    /// removed.
    pub async fn remove(&self, place: &Place, recursive: bool) -> FsResult<()> {
        self.run(
            place,
            move |p| {
                let m = std::fs::symlink_metadata(&p).map_err(|e| FsError::io("stat", &p, e))?;
                let r = match (m.is_dir(), recursive) {
                    (false, _) => std::fs::remove_file(&p),
                    (true, false) => std::fs::remove_dir(&p),
                    (true, true) => std::fs::remove_dir_all(&p),
                };
                r.map_err(|e| FsError::io("remove", &p, e))
            },
            move |r, rel| r.remove(&rel, recursive),
        )
        .await
    }

    /// Starts writing a file atomically (parents created; in a confined
    /// root, beneath it and through the directory checked then, never by
    /// path again), with `attrs` applied on commit.
    pub async fn create(&self, place: &Place, attrs: AttrRequest) -> FsResult<Writer> {
        match (self, &place.at) {
            (Root::Scoped(s), At::Path(p)) => Writer::create(s.clone(), p.clone(), attrs).await,
            (Root::Confined(r), At::Beneath(rel)) => {
                let (r, rel) = (r.clone(), rel.clone());
                let (dir, name) = blocking(move || Ok(r.prepare_write(&rel)?)).await?;
                Writer::create_in(dir, name, place.shown.clone(), attrs).await
            }
            _ => Err(mismatch()),
        }
    }
}

/// A place read by one kind of root's rules, used with the other: a bug.
fn mismatch() -> FsError {
    FsError::Internal("a path read by another root's rules".into())
}

/// Runs blocking file-system work off the reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> FsResult<T> + Send + 'static,
) -> FsResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(FsError::Internal(format!("file operation failed: {e}"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "execd-root-test-{}-{tag}",
            crate::process::new_id()
        ));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// The shared operations do the same in both kinds of root.
    #[tokio::test]
    async fn both_roots_write_read_list_and_remove_alike() {
        let dir = tempdir("same");
        let scoped = Root::default();
        let confined = Root::confined(dir.clone()).await.expect("confined root");
        for (root, raw) in [
            (&scoped, dir.join("s/a.txt").to_string_lossy().into_owned()),
            (&confined, "c/a.txt".to_string()),
        ] {
            let place = root.place(&raw).expect("place");
            let mut w = root
                .create(&place, AttrRequest::default())
                .await
                .expect("create");
            w.write(b"hello").await.expect("write");
            assert_eq!(w.commit().await.expect("commit"), 5);
            let (_, e) = root.open_file(&place).await.expect("open");
            assert_eq!((e.size, e.is_dir), (5, false));
            assert_eq!(root.stat(&place).await.expect("stat").size, 5);
            let parent = root.place(raw.trim_end_matches("/a.txt")).expect("parent");
            let names: Vec<_> = root
                .list(&parent)
                .await
                .expect("list")
                .into_iter()
                .map(|e| e.name)
                .collect();
            assert_eq!(names, [OsString::from("a.txt")]);
            assert!(
                root.open_file(&parent).await.is_err(),
                "a directory is no file"
            );
            root.remove(&place, false).await.expect("remove");
            assert_eq!(
                root.stat(&place).await.expect_err("gone").errno(),
                Some(libc::ENOENT)
            );
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    /// A confined root's paths never lead out of it, by `..` or symlink;
    /// a place read by one root's rules is refused by the other root.
    #[tokio::test]
    async fn confined_paths_stay_beneath() {
        let dir = tempdir("beneath");
        let outside = tempdir("outside");
        std::fs::write(outside.join("secret"), b"x").expect("write");
        std::os::unix::fs::symlink(&outside, dir.join("out")).expect("symlink");
        let root = Root::confined(dir.clone()).await.expect("confined root");
        assert!(root.place("../secret").expect_err("escape").escapes());
        let via_link = root.place("out/secret").expect("place");
        assert!(root
            .open_file(&via_link)
            .await
            .expect_err("escape")
            .escapes());
        assert!(root
            .create(&via_link, AttrRequest::default())
            .await
            .err()
            .expect("escape")
            .escapes());
        let scoped_place = Place::expanded(&outside.join("secret").to_string_lossy()).expect("p");
        assert!(root.open_file(&scoped_place).await.is_err());
        assert!(Root::default().open_file(&via_link).await.is_err());
        std::fs::remove_dir_all(&dir).expect("clean up");
        std::fs::remove_dir_all(&outside).expect("clean up");
    }
}
