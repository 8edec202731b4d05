//! Path expansion as upstream does it: `~`, `$VAR`, `${VAR}`, and relative
//! paths against the daemon's working directory, then lexically cleaned.

use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path contains a NUL byte")]
    Nul,
    #[error("path references undefined environment variables: {0}")]
    Undefined(String),
}

/// Expands `input`. `lookup` resolves variables (and `HOME` for `~`); `cwd`
/// anchors relative paths.
pub fn expand(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
    cwd: &Path,
) -> Result<PathBuf, PathError> {
    if input.is_empty() {
        return Err(PathError::Empty);
    }
    if input.contains('\0') {
        return Err(PathError::Nul);
    }
    let mut s = String::with_capacity(input.len());
    let mut missing: Vec<String> = Vec::new();
    let rest = if input == "~" || input.starts_with("~/") || input.starts_with("~\\") {
        s.push_str(&lookup("HOME").unwrap_or_else(|| "/".into()));
        &input[1..]
    } else {
        input
    };
    let b = rest.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'$' {
            let next = rest[i..].find('$').map_or(b.len(), |n| i + n);
            s.push_str(&rest[i..next]);
            i = next;
            continue;
        }
        let (name, used) = if b.get(i + 1) == Some(&b'{') {
            match rest[i + 2..].find('}') {
                Some(end) => (&rest[i + 2..i + 2 + end], end + 3),
                None => ("", 1),
            }
        } else {
            let n = rest[i + 1..]
                .bytes()
                .take_while(|c| *c == b'_' || c.is_ascii_alphanumeric())
                .count();
            (&rest[i + 1..i + 1 + n], n + 1)
        };
        if name.is_empty() {
            s.push('$');
            i += 1;
            continue;
        }
        match lookup(name) {
            Some(v) => s.push_str(&v),
            None => {
                if !missing.iter().any(|m| m == name) {
                    missing.push(name.to_string());
                }
            }
        }
        i += used;
    }
    if !missing.is_empty() {
        return Err(PathError::Undefined(missing.join(",")));
    }
    let p = Path::new(&s);
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    };
    Ok(clean(&abs))
}

/// Lexical cleaning: drops `.`, resolves `..` against the previous component
/// (never above the root), removes duplicate and trailing separators.
pub fn clean(p: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// Daemon variables a path never expands (they count as undefined): an
/// expanded path is echoed in error messages and becomes file names, so
/// `$EXECD_ACCESS_TOKEN` would hand the token to whoever reads them. The
/// same secrets are kept from commands' environment (`daemon::SECRET_VARS`).
const NEVER_EXPANDED: &[&str] = &["EXECD_ACCESS_TOKEN"];

/// Expands against the daemon's own environment (less [`NEVER_EXPANDED`])
/// and working directory.
pub fn expand_daemon(input: &str) -> Result<PathBuf, PathError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let lookup = |k: &str| {
        if NEVER_EXPANDED.contains(&k) {
            return None;
        }
        std::env::var(k).ok()
    };
    expand(input, lookup, &cwd)
}

/// [`expand_daemon`] for a process that runs as another user: `~` and
/// `$HOME` name `home` (that user's home) instead of execd's.
pub fn expand_with_home(input: &str, home: &str) -> Result<PathBuf, PathError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let lookup = |k: &str| {
        if k == "HOME" {
            return Some(home.to_string());
        }
        if NEVER_EXPANDED.contains(&k) {
            return None;
        }
        std::env::var(k).ok()
    };
    expand(input, lookup, &cwd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "HOME" => Some("/home/u".into()),
            "A" => Some("x/y".into()),
            _ => None,
        }
    }

    fn ex(s: &str) -> Result<PathBuf, PathError> {
        expand(s, env, Path::new("/work"))
    }

    #[test]
    fn expansions() {
        assert_eq!(ex("~").unwrap(), PathBuf::from("/home/u"));
        assert_eq!(ex("~/f.txt").unwrap(), PathBuf::from("/home/u/f.txt"));
        assert_eq!(ex("$HOME/a").unwrap(), PathBuf::from("/home/u/a"));
        assert_eq!(ex("/r/${A}/z").unwrap(), PathBuf::from("/r/x/y/z"));
        assert_eq!(ex("rel/./p/../q").unwrap(), PathBuf::from("/work/rel/q"));
        assert_eq!(ex("/../../etc").unwrap(), PathBuf::from("/etc"));
        assert_eq!(ex("/a/b/").unwrap(), PathBuf::from("/a/b"));
        assert_eq!(ex("~user").unwrap(), PathBuf::from("/work/~user"));
        assert_eq!(ex("/cost$").unwrap(), PathBuf::from("/cost$"));
    }

    #[test]
    fn errors() {
        assert_eq!(ex(""), Err(PathError::Empty));
        assert_eq!(ex("/a\0b"), Err(PathError::Nul));
        assert_eq!(ex("/$X/${Y}/$X"), Err(PathError::Undefined("X,Y".into())));
    }
}
