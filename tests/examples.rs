//! The README's examples are files in `examples/`, and they work:
//! - every code block of the README in a language one could paste (`sh`,
//!   `python`, `json`...) is marked either `<!-- example: PATH -->` (and is
//!   then exactly that file) or `<!-- build -->` (building execd itself);
//! - every shell example runs as it is, with curl, against a real daemon
//!   (`EXECD_ADDR`). The Python ones run in `tests/sdk/test_examples.py`.

mod common;

use common::*;
use serde_json::Value;

const README: &str = include_str!("../README.md");

/// (marker, language, content) of every fenced block with a language.
fn blocks() -> Vec<(Option<String>, String, String)> {
    let lines: Vec<&str> = README.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let Some(lang) = lines[i].strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i + 1;
        let end = (start..lines.len())
            .find(|&j| lines[j] == "```")
            .expect("an unclosed code block in README.md");
        if !lang.is_empty() {
            let marker = i
                .checked_sub(1)
                .map(|m| lines[m].trim())
                .filter(|l| l.starts_with("<!--"))
                .map(str::to_string);
            let mut content = lines[start..end].join("\n");
            content.push('\n');
            out.push((marker, lang.to_string(), content));
        }
        i = end + 1;
    }
    out
}

#[test]
fn readme_code_blocks_are_the_example_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut shown = Vec::new();
    for (marker, lang, content) in blocks() {
        let marker = marker.unwrap_or_else(|| {
            panic!("README.md: a ```{lang} block without <!-- example: PATH --> or <!-- build -->:\n{content}")
        });
        if marker == "<!-- build -->" {
            continue;
        }
        let path = marker
            .strip_prefix("<!-- example: ")
            .and_then(|m| m.strip_suffix(" -->"))
            .unwrap_or_else(|| panic!("README.md: unknown marker {marker}"));
        let file = std::fs::read_to_string(root.join(path))
            .unwrap_or_else(|e| panic!("README.md shows {path}: {e}"));
        assert_eq!(content, file, "README.md's block differs from {path}");
        shown.push(path.to_string());
    }
    // And every example is in the README.
    for e in std::fs::read_dir(root.join("examples")).unwrap() {
        let name = format!("examples/{}", e.unwrap().file_name().to_string_lossy());
        assert!(shown.contains(&name), "{name} is not shown in README.md");
    }
}

/// Runs `examples/NAME` with `sh` against `d`; its stdout.
fn run_example(d: &Daemon, name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name);
    let out = std::process::Command::new("sh")
        .arg(&path)
        .env("EXECD_ADDR", d.addr.to_string())
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{name}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The event stream in an example's output (lines that are JSON objects).
fn events(out: &str) -> Vec<Value> {
    out.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("an event"))
        .collect()
}

fn has_curl() -> bool {
    std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test]
async fn shell_examples_run_as_written() {
    if !has_curl() {
        eprintln!("skipped: no curl");
        return;
    }
    let d = Daemon::start();

    let out = run_example(&d, "quickstart.sh");
    assert!(out.starts_with("200\n"), "{out}");
    let evs = events(&out);
    assert_eq!(text_of(&evs, "stdout"), "hi\n");
    assert_eq!(text_of(&evs, "stderr"), "oops\n");
    assert_eq!(terminal(&evs)["exit_code"], 3);

    let evs = events(&run_example(&d, "base64.sh"));
    let out: Vec<&Value> = evs.iter().filter(|e| e["type"] == "stdout").collect();
    assert_eq!(out.len(), 1, "{evs:?}");
    assert_eq!(out[0]["text"], "//4K");
    assert_eq!(out[0]["encoding"], "base64");

    // As uid 1000: needs root.
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        let evs = events(&run_example(&d, "command.sh"));
        assert_eq!(terminal(&evs)["exit_code"], 0, "{evs:?}");
        let text = text_of(&evs, "stdout");
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("1000"));
        // The user's home: its passwd entry's, or `/`.
        let home = std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .find(|l| l.split(':').nth(2) == Some("1000"))
            .and_then(|l| l.split(':').nth(5).map(str::to_string))
            .filter(|h| std::path::Path::new(h).is_dir())
            .unwrap_or_else(|| "/".into());
        let real = std::fs::canonicalize(&home).unwrap();
        assert_eq!(lines.next(), Some(real.to_str().unwrap()), "{text}");
        assert_eq!(lines.next(), Some("CI=1"));
    } else {
        eprintln!("examples/command.sh skipped: switching uid needs root");
    }
}
