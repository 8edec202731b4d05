//! `search`: files under a root whose base name matches a glob, in the
//! dialect upstream uses (`*`, `?`, `[...]`, `[!...]`, `[^...]`, `{a,b}`
//! (nested), `**`, `\` escapes), plus a whole-pattern negation `!(...)`.
//!
//! Only base names are matched (a name that is not UTF-8 is matched as its
//! lossy decoding), so a `/` in a pattern never matches. Matching is the
//! `fast-glob` crate's: patterns are validated once, when the request
//! arrives (a malformed one is a 400), and matched without a compile step
//! or a regular-expression engine (`globset` brought one of several
//! hundred KB into the binary).

use std::path::Path;

use super::{FsError, FsResult};

/// The longest pattern accepted: patterns come from a query string.
const MAX_PATTERN: usize = 4096;

/// A validated base-name pattern.
pub struct Pattern {
    glob: String,
    negated: bool,
}

impl Pattern {
    /// Validates `pattern`; empty means "everything", as upstream's `**`.
    pub fn new(pattern: &str) -> FsResult<Pattern> {
        if pattern.len() > MAX_PATTERN {
            return Err(FsError::BadRequest(format!(
                "invalid pattern: longer than {MAX_PATTERN} bytes"
            )));
        }
        let (body, negated) = match pattern.strip_prefix("!(").and_then(|p| p.strip_suffix(')')) {
            Some(inner) => (inner, true),
            None => (pattern, false),
        };
        let body = if body.is_empty() { "**" } else { body };
        // fast-glob reads a leading `!` as its own negation: upstream's
        // dialect has only `!(...)`, so a leading `!` is a literal.
        let glob = match body.strip_prefix('!') {
            Some(rest) => format!("\\!{rest}"),
            None => body.to_string(),
        };
        fast_glob::validate(&glob).map_err(|e| {
            FsError::BadRequest(format!("invalid pattern {pattern:?}: {:?}", e.kind))
        })?;
        Ok(Pattern { glob, negated })
    }

    /// Whether a base name matches.
    pub fn matches(&self, name: &std::ffi::OsStr) -> bool {
        fast_glob::glob_match(&self.glob, name.to_string_lossy().as_ref()) != self.negated
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
        assert!(m("a**b", "axyb"));
        assert!(m("{**/,x}*.py", "a.py"));
        assert!(m("*.{py,{r,t}s}", "a.ts"));
        assert!(!m("*.{py,{r,t}s}", "a.js"));
        assert!(m("a{,b}c", "ac"));
        assert!(m("a{,b}c", "abc"));
        assert!(m("a{}c", "ac"));
        assert!(m("[]a].x", "].x"));
        assert!(m("[a-].x", "-.x"));
        assert!(m("[a-c][!a-c]", "bd"));
        assert!(!m("[a-c][!a-c]", "bb"));
        // `?` is one byte, as with globset before (and upstream matches a
        // rune): a multi-byte name character needs `*` or `??`.
        assert!(m("??", "é"));
        assert!(m("*", "new\nline"));
        assert!(m(r"a\{b", "a{b"));
        assert!(m("a,b", "a,b"));
        assert!(!m("a/**", "a"));
        // A leading `!` without parentheses is a literal, as upstream.
        assert!(m("!a*", "!ab"));
        assert!(!m("!a*", "b"));
    }

    #[test]
    fn names_that_are_not_utf8_still_match_stars() {
        use std::os::unix::ffi::OsStrExt;
        let p = Pattern::new("*.bin").unwrap();
        assert!(p.matches(OsStr::from_bytes(b"\xff\xfe.bin")));
        assert!(!p.matches(OsStr::from_bytes(b"\xff\xfe.txt")));
    }

    #[test]
    fn many_stars_stay_linear() {
        // A backtracking matcher takes exponential time on this; the
        // automaton visits each of its few states once per character.
        let p = Pattern::new(&"*a".repeat(30)).unwrap();
        let name = "a".repeat(29) + &"b".repeat(200);
        assert!(!p.matches(OsStr::new(&name)));
        assert!(p.matches(OsStr::new(&"a".repeat(255))));
    }

    #[test]
    fn bad_pattern_is_a_client_error() {
        for bad in ["[a-", "{a,b", "a\\", &"x".repeat(5000)] {
            let e = Pattern::new(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert_eq!(e.kind(), super::super::Kind::BadRequest, "{bad:?}");
        }
    }
}
