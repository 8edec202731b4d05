//! `search`: files under a root whose base name matches a glob, in the
//! dialect upstream uses (`*`, `?`, `[...]`, `[!...]`, `[^...]`, `{a,b}`,
//! `**`, `\` escapes), plus a whole-pattern negation `!(...)`.

use std::path::Path;

use globset::{GlobBuilder, GlobMatcher};

use super::{FsError, FsResult};

/// A compiled base-name pattern.
pub struct Pattern {
    matcher: GlobMatcher,
    negated: bool,
}

impl Pattern {
    /// Compiles `pattern`; empty means "everything", as upstream's `**`.
    pub fn new(pattern: &str) -> FsResult<Pattern> {
        let (body, negated) = match pattern.strip_prefix("!(").and_then(|p| p.strip_suffix(')')) {
            Some(inner) => (inner, true),
            None => (pattern, false),
        };
        let body = if body.is_empty() { "**" } else { body };
        let glob = GlobBuilder::new(body)
            .literal_separator(false)
            .backslash_escape(true)
            .empty_alternates(true)
            .build()
            .map_err(|e| {
                FsError::BadRequest(format!("invalid pattern {pattern:?}: {}", e.kind()))
            })?;
        Ok(Pattern {
            matcher: glob.compile_matcher(),
            negated,
        })
    }

    /// Whether a base name matches.
    pub fn matches(&self, name: &std::ffi::OsStr) -> bool {
        self.matcher.is_match(name) != self.negated
    }
}

/// Whether a walked entry is a search hit: not a directory (symlinks
/// included, never followed), with a matching base name.
pub fn hit(pattern: &Pattern, p: &Path, m: &std::fs::Metadata) -> bool {
    !m.is_dir() && p.file_name().is_some_and(|n| pattern.matches(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn m(pat: &str, name: &str) -> bool {
        Pattern::new(pat).unwrap().matches(OsStr::new(name))
    }

    #[test]
    fn dialect() {
        assert!(m("*.py", "a.py"));
        assert!(!m("*.py", "a.pyc"));
        assert!(m("**", "anything"));
        assert!(m("", "anything"));
        assert!(m("**/*.py", "a.py"));
        assert!(!m("src/*.py", "a.py"));
        assert!(m("?.txt", "a.txt"));
        assert!(!m("?.txt", "ab.txt"));
        assert!(m("[ab].c", "b.c"));
        assert!(!m("[!ab].c", "b.c"));
        assert!(m("[^ab].c", "c.c"));
        assert!(m("*.{rs,toml}", "Cargo.toml"));
        assert!(m(r"\*.txt", "*.txt"));
        assert!(!m(r"\*.txt", "a.txt"));
        assert!(m("*", ".hidden"));
        assert!(m("!(*.log)", "a.txt"));
        assert!(!m("!(*.log)", "a.log"));
        assert!(m("a b*", "a b c"));
    }

    #[test]
    fn bad_pattern_is_a_client_error() {
        let e = Pattern::new("[a-").err().unwrap();
        assert_eq!(e.kind(), super::super::Kind::BadRequest);
    }
}
