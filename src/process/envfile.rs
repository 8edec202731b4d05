//! The `EXECD_ENVS` file: variables applied to every command.
//!
//! One `KEY=VALUE` per line; blank lines and `#` comments are skipped, an
//! `export ` prefix is allowed. Values:
//! - `'single quoted'` are literal;
//! - `"double quoted"` understand `\"`, `\\`, `\$`, `\n`, `\r`, `\t` and expand `$VAR`/`${VAR}`;
//! - unquoted values are trimmed and expand `$VAR`/`${VAR}`.
//!
//! Expansion looks variables up in the daemon's environment and in the lines
//! above. Undefined variables expand to nothing. This accepts what upstream's
//! loader accepts, plus the quoting that SDK `Commands.set_env` writes.

/// Parses an env file. Lines that are not assignments are skipped (and named
/// in the returned warnings), never fatal.
pub fn parse(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut warnings = Vec::new();
    for (n, raw) in logical_lines(text) {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            warnings.push(format!("line {}: not KEY=VALUE", n + 1));
            continue;
        };
        let key = key.trim();
        if !valid_name(key) {
            warnings.push(format!("line {}: invalid variable name", n + 1));
            continue;
        }
        let look = |name: &str| {
            vars.iter()
                .rev()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .or_else(|| lookup(name))
        };
        let value = value.trim();
        let parsed = if let Some(inner) = value.strip_prefix('\'') {
            inner.strip_suffix('\'').unwrap_or(inner).to_string()
        } else if let Some(inner) = value.strip_prefix('"') {
            let inner = inner.strip_suffix('"').unwrap_or(inner);
            expand(&unescape(inner), &look)
        } else {
            expand(value, &look)
        };
        vars.retain(|(k, _)| k != key);
        vars.push((key.to_string(), parsed));
    }
    (vars, warnings)
}

/// Lines joined where a quoted value continues past a newline (`K='a` / `b'`),
/// each with the number of the line it starts on.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let mut joined = line.to_string();
        // An unterminated quote at the end of the file is taken as written.
        while open_quote(&joined).is_some() {
            let Some((_, more)) = lines.next() else { break };
            joined.push('\n');
            joined.push_str(more);
        }
        out.push((n, joined));
    }
    out
}

/// The quote a `KEY=VALUE` line leaves open at its end, if any.
fn open_quote(line: &str) -> Option<char> {
    let t = line.trim_start();
    let t = t.strip_prefix("export ").unwrap_or(t);
    let (_, value) = t.split_once('=')?;
    let v = value.trim_start();
    let q = v.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &v[1..];
    let closed = if q == '\'' {
        body.contains('\'')
    } else {
        let mut escaped = false;
        body.chars().any(|c| {
            let end = c == '"' && !escaped;
            escaped = c == '\\' && !escaped;
            end
        })
    };
    (!closed).then_some(q)
}

fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            // Keep `\$` escaped from expansion by a marker expand() understands.
            Some('$') => out.push('\u{0}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// An expanded value is cut at this many bytes (the kernel's own limit on
/// one environment string): `A=$A$A` repeated would otherwise double per
/// line (the fuzz smoke found it).
const MAX_VALUE: usize = 128 * 1024;

/// Expands `$VAR` and `${VAR}`. A NUL marks an escaped `$`.
fn expand(s: &str, look: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = expand_uncapped(s, look);
    if out.len() > MAX_VALUE {
        let mut end = MAX_VALUE;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

fn expand_uncapped(s: &str, look: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && out.len() <= MAX_VALUE {
        match b[i] {
            0 => {
                out.push('$');
                i += 1;
            }
            b'$' if b.get(i + 1) == Some(&b'{') => match s[i + 2..].find('}') {
                Some(end) => {
                    out.push_str(&look(&s[i + 2..i + 2 + end]).unwrap_or_default());
                    i += end + 3;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            },
            b'$' => {
                let name_len = s[i + 1..]
                    .bytes()
                    .take_while(|c| *c == b'_' || c.is_ascii_alphanumeric())
                    .count();
                if name_len == 0 {
                    out.push('$');
                } else {
                    out.push_str(&look(&s[i + 1..i + 1 + name_len]).unwrap_or_default());
                }
                i += 1 + name_len;
            }
            _ => {
                let next = s[i..].find(['$', '\u{0}']).map_or(b.len(), |n| i + n);
                out.push_str(&s[i..next]);
                i = next;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_doubling_values_stay_bounded() {
        let text = "A=x\n".to_string() + &"A=$A$A\n".repeat(40);
        let (vars, _) = parse(&text, |_| None);
        assert!(vars[0].1.len() <= MAX_VALUE);
        assert!(vars[0].1.len() >= MAX_VALUE / 2);
    }

    /// The input CI's fuzz smoke crashed on (`env_file` target, out of
    /// memory): `R=$R$R…` lines multiplying `R` up to six times per line,
    /// reset by `R=` near the end (so only the values along the way show
    /// the growth). Through the fuzz target's entry point and lookup, the
    /// input cut after each of its lines parses with every value within the
    /// cap, and the whole input returns. The fuzz smoke reruns it too: it is
    /// a seed in `fuzz/regressions/env_file/`.
    #[test]
    fn fuzz_self_doubling_input_stays_bounded_line_by_line() {
        let data = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/regressions/env_file/self-doubling-oom.bin"
        ));
        let text = std::str::from_utf8(data).expect("the crashing input is UTF-8");
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        for n in 1..=lines.len() {
            let prefix = lines[..n].concat();
            let (vars, _) = parse(&prefix, |k| (k == "HOME").then(|| "/root".to_string()));
            for (k, v) in &vars {
                assert!(v.len() <= MAX_VALUE, "line {n}: {k} is {} bytes", v.len());
            }
        }
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/root".into()),
            _ => None,
        }
    }

    #[test]
    fn plain_quoted_and_expanded() {
        let text = "# comment\n\nA=1\nexport B = two words \nC='$HOME lit'\nD=\"x\\\"y $HOME\"\nE=${HOME}/bin:$A\nF=\"\\$HOME\"\n";
        let (vars, warn) = parse(text, env);
        assert!(warn.is_empty(), "{warn:?}");
        let get = |k: &str| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("A"), Some("1"));
        assert_eq!(get("B"), Some("two words"));
        assert_eq!(get("C"), Some("$HOME lit"));
        assert_eq!(get("D"), Some("x\"y /root"));
        assert_eq!(get("E"), Some("/root/bin:1"));
        assert_eq!(get("F"), Some("$HOME"));
    }

    #[test]
    fn quoted_values_span_lines() {
        let (vars, warn) = parse("A='first\nsecond'\nB=\"x\ny \\\" z\"\nC=after\n", env);
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(vars[0], ("A".to_string(), "first\nsecond".to_string()));
        assert_eq!(vars[1], ("B".to_string(), "x\ny \" z".to_string()));
        assert_eq!(vars[2], ("C".to_string(), "after".to_string()));
    }

    #[test]
    fn double_quoted_escapes_include_carriage_return() {
        // The SDK's set_env writes a carriage return as `\r`.
        let (vars, warn) = parse("A=\"one\\r\\ntwo\\tthree\"\n", env);
        assert!(warn.is_empty(), "{warn:?}");
        assert_eq!(vars[0].1, "one\r\ntwo\tthree");
    }

    #[test]
    fn bad_lines_are_warnings_and_last_wins() {
        let (vars, warn) = parse("nonsense\n1X=2\nK=a\nK=b\n", env);
        assert_eq!(warn.len(), 2);
        assert_eq!(vars, vec![("K".to_string(), "b".to_string())]);
    }

    #[test]
    fn undefined_and_odd_dollars() {
        let (vars, _) = parse("A=$NOPE-x\nB=cost $ 5\nC=${open\n", env);
        assert_eq!(vars[0].1, "-x");
        assert_eq!(vars[1].1, "cost $ 5");
        assert_eq!(vars[2].1, "${open");
    }
}
