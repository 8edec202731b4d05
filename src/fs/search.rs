//! `search`: files under a root whose base name matches a glob, in the
//! dialect upstream uses (`*`, `?`, `[...]`, `[!...]`, `[^...]`, `{a,b}`
//! (nested, empty branches allowed), `**`, `\` escapes), plus a
//! whole-pattern negation `!(...)`.
//!
//! Only base names are matched, so a `/` in a pattern never matches, and a
//! leading `**/` (in the pattern or in an alternative) matches nothing.
//! Matching is by character (a name that is not UTF-8 is matched as its
//! lossy decoding). The pattern compiles to a small automaton that is run
//! over the name a character at a time with a set of states (no
//! backtracking), so time is linear in the name for a given pattern.
//! Hand-written: this is the only glob execd has, and the `globset` crate
//! brought a regular-expression engine of several hundred KB with it.

use std::path::Path;

use super::{FsError, FsResult};

/// The longest pattern accepted: patterns come from a query string.
const MAX_PATTERN: usize = 4096;

/// One instruction of the compiled pattern.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// One given character.
    Char(char),
    /// Any one character.
    Any,
    /// Any run of characters (possibly empty).
    Star,
    /// One character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// Continue at every one of these instructions.
    Fork(Vec<usize>),
    /// Continue at this instruction.
    Jump(usize),
    /// The whole name matched.
    Match,
}

/// A compiled base-name pattern.
pub struct Pattern {
    prog: Vec<Op>,
    negated: bool,
}

fn bad(pattern: &str, why: &str) -> FsError {
    FsError::BadRequest(format!("invalid pattern {pattern:?}: {why}"))
}

/// A parsed piece of a pattern, before compilation.
#[derive(Debug)]
enum Token {
    Op(Op),
    /// `{a,b}`: the alternatives' tokens.
    Alt(Vec<Vec<Token>>),
}

/// Parses `body` into the tokens of the outermost level.
fn parse(pattern: &str, body: &str) -> FsResult<Vec<Token>> {
    // The branches being built: the last is the current one. `open` holds,
    // per open `{`, the index of its first branch.
    let mut branches: Vec<Vec<Token>> = vec![Vec::new()];
    let mut open: Vec<usize> = Vec::new();
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        let cur = branches.len() - 1;
        match c {
            '?' => branches[cur].push(Token::Op(Op::Any)),
            '*' => {
                if chars.peek() == Some(&'*') {
                    chars.next();
                    // `**/` opening a pattern or an alternative stands for
                    // "any directories", none of which a base name has.
                    if branches[cur].is_empty() && chars.peek() == Some(&'/') {
                        chars.next();
                        continue;
                    }
                }
                if !matches!(branches[cur].last(), Some(Token::Op(Op::Star))) {
                    branches[cur].push(Token::Op(Op::Star));
                }
            }
            '[' => {
                let op = parse_class(&mut chars)
                    .ok_or_else(|| bad(pattern, "unclosed or reversed character class"))?;
                branches[cur].push(Token::Op(op));
            }
            '{' => {
                open.push(branches.len());
                branches.push(Vec::new());
            }
            ',' if !open.is_empty() => branches.push(Vec::new()),
            '}' => {
                let start = open.pop().ok_or_else(|| bad(pattern, "'}' without '{'"))?;
                let alts: Vec<Vec<Token>> = branches.drain(start..).collect();
                let last = branches.len() - 1;
                branches[last].push(Token::Alt(alts));
            }
            '\\' => {
                let lit = chars.next().ok_or_else(|| bad(pattern, "dangling '\\'"))?;
                branches[cur].push(Token::Op(Op::Char(lit)));
            }
            c => branches[cur].push(Token::Op(Op::Char(c))),
        }
    }
    if !open.is_empty() {
        return Err(bad(pattern, "unclosed '{'"));
    }
    Ok(branches.pop().unwrap_or_default())
}

/// A character class after its `[`, up to and including its `]`; `None`
/// when it never closes or holds a reversed range.
fn parse_class(chars: &mut std::iter::Peekable<std::str::Chars>) -> Option<Op> {
    let negated = matches!(chars.peek(), Some('!' | '^'));
    if negated {
        chars.next();
    }
    let mut ranges: Vec<(char, char)> = Vec::new();
    let mut first = true;
    let mut in_range = false;
    loop {
        let c = chars.next()?;
        match c {
            // `]` first is a member; later it closes the class.
            ']' if !first => break,
            '-' if !first && !in_range && chars.peek() != Some(&']') => in_range = true,
            c if in_range => {
                let r = ranges.last_mut()?;
                if c < r.0 {
                    return None;
                }
                r.1 = c;
                in_range = false;
            }
            c => ranges.push((c, c)),
        }
        first = false;
    }
    Some(Op::Class { negated, ranges })
}

/// Appends `tokens` to `prog`.
fn compile(tokens: Vec<Token>, prog: &mut Vec<Op>) {
    for t in tokens {
        match t {
            Token::Op(op) => prog.push(op),
            Token::Alt(alts) => {
                let fork = prog.len();
                prog.push(Op::Fork(Vec::new()));
                let mut starts = Vec::with_capacity(alts.len());
                let mut jumps = Vec::with_capacity(alts.len());
                for alt in alts {
                    starts.push(prog.len());
                    compile(alt, prog);
                    jumps.push(prog.len());
                    prog.push(Op::Jump(0));
                }
                let end = prog.len();
                for j in jumps {
                    prog[j] = Op::Jump(end);
                }
                prog[fork] = Op::Fork(starts);
            }
        }
    }
}

impl Pattern {
    /// Compiles `pattern`; empty means "everything", as upstream's `**`.
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
        let mut prog = Vec::new();
        compile(parse(pattern, body)?, &mut prog);
        prog.push(Op::Match);
        Ok(Pattern { prog, negated })
    }

    /// Whether a base name matches.
    pub fn matches(&self, name: &std::ffi::OsStr) -> bool {
        self.matches_str(&name.to_string_lossy()) != self.negated
    }

    fn matches_str(&self, name: &str) -> bool {
        let n = self.prog.len();
        let mut cur = States::new(n);
        let mut next = States::new(n);
        cur.add(&self.prog, 0);
        for c in name.chars() {
            next.clear();
            for &pc in &cur.list {
                match &self.prog[pc] {
                    Op::Char(x) if *x == c => next.add(&self.prog, pc + 1),
                    Op::Any => next.add(&self.prog, pc + 1),
                    Op::Star => next.add(&self.prog, pc),
                    Op::Class { negated, ranges }
                        if ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated =>
                    {
                        next.add(&self.prog, pc + 1)
                    }
                    _ => {}
                }
            }
            if next.list.is_empty() {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur.list.iter().any(|&pc| self.prog[pc] == Op::Match)
    }
}

/// A set of instructions the automaton is at, each once.
struct States {
    list: Vec<usize>,
    member: Vec<bool>,
    stack: Vec<usize>,
}

impl States {
    fn new(n: usize) -> States {
        States {
            list: Vec::with_capacity(n),
            member: vec![false; n],
            stack: Vec::new(),
        }
    }

    fn clear(&mut self) {
        for &pc in &self.list {
            self.member[pc] = false;
        }
        self.list.clear();
    }

    /// Adds `pc` and every instruction reachable from it without reading
    /// a character.
    fn add(&mut self, prog: &[Op], pc: usize) {
        let stack = &mut self.stack;
        stack.push(pc);
        while let Some(pc) = stack.pop() {
            if self.member[pc] {
                continue;
            }
            self.member[pc] = true;
            match &prog[pc] {
                Op::Fork(targets) => stack.extend(targets.iter().rev()),
                Op::Jump(t) => stack.push(*t),
                op => {
                    if *op == Op::Star {
                        stack.push(pc + 1);
                    }
                    self.list.push(pc);
                }
            }
        }
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
        assert!(m("?", "é"));
        assert!(m("[é]", "é"));
        assert!(m("*", "new\nline"));
        assert!(m(r"a\{b", "a{b"));
        assert!(m("a,b", "a,b"));
        assert!(!m("a/**", "a"));
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
        for bad in ["[a-", "[z-a]", "{a,b", "a}", "a\\", &"x".repeat(5000)] {
            let e = Pattern::new(bad).err().unwrap();
            assert_eq!(e.kind(), super::super::Kind::BadRequest, "{bad:?}");
        }
    }
}
