//! Kernelspec discovery, where Jupyter looks for them: each directory of
//! `JUPYTER_PATH`, then `JUPYTER_DATA_DIR` (or `~/.local/share/jupyter`),
//! then `/usr/local/share/jupyter` and `/usr/share/jupyter`; each holds
//! `kernels/<name>/kernel.json`. The first spec whose `language` matches
//! (case-insensitively) wins; earlier directories first, names in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How a kernel is interrupted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptMode {
    /// SIGINT to the kernel's process group.
    Signal,
    /// `interrupt_request` on the control channel.
    Message,
}

/// One `kernel.json`, resolved.
#[derive(Clone, Debug)]
pub struct KernelSpec {
    pub name: String,
    pub dir: PathBuf,
    pub language: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub interrupt_mode: InterruptMode,
}

#[derive(Deserialize)]
struct Raw {
    argv: Vec<String>,
    #[serde(default)]
    language: String,
    #[serde(default)]
    env: HashMap<String, String>,
    #[serde(default)]
    interrupt_mode: Option<String>,
}

/// The directories searched (each has a `kernels` subdirectory), in order.
pub fn search_path(env: impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(p) = env("JUPYTER_PATH") {
        dirs.extend(std::env::split_paths(&p).filter(|d| !d.as_os_str().is_empty()));
    }
    match env("JUPYTER_DATA_DIR").filter(|d| !d.is_empty()) {
        Some(d) => dirs.push(d.into()),
        None => {
            if let Some(home) = env("HOME").filter(|h| !h.is_empty()) {
                dirs.push(Path::new(&home).join(".local/share/jupyter"));
            }
        }
    }
    dirs.push("/usr/local/share/jupyter".into());
    dirs.push("/usr/share/jupyter".into());
    dirs
}

/// Every kernelspec found under `dirs`, earlier directories first.
pub fn all(dirs: &[PathBuf]) -> Vec<KernelSpec> {
    let mut out: Vec<KernelSpec> = Vec::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(d.join("kernels")) else {
            continue;
        };
        let mut names: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for dir in names {
            let name = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if out.iter().any(|s| s.name == name) {
                continue; // an earlier directory's spec of that name wins
            }
            if let Some(spec) = load(&dir, name) {
                out.push(spec);
            }
        }
    }
    out
}

fn load(dir: &Path, name: String) -> Option<KernelSpec> {
    let text = std::fs::read(dir.join("kernel.json")).ok()?;
    let raw: Raw = match serde_json::from_slice(&text) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(spec = %dir.display(), error = %e, "ignoring an unreadable kernel.json");
            return None;
        }
    };
    if raw.argv.is_empty() {
        return None;
    }
    let mut env: Vec<(String, String)> = raw.env.into_iter().collect();
    env.sort();
    Some(KernelSpec {
        name,
        dir: dir.to_path_buf(),
        language: raw.language.to_ascii_lowercase(),
        argv: raw.argv,
        env,
        interrupt_mode: match raw.interrupt_mode.as_deref() {
            Some("message") => InterruptMode::Message,
            _ => InterruptMode::Signal,
        },
    })
}

/// The spec for `language` (`python`, `bash`, ...).
pub fn find(dirs: &[PathBuf], language: &str) -> Option<KernelSpec> {
    let language = language.to_ascii_lowercase();
    all(dirs).into_iter().find(|s| s.language == language)
}

impl KernelSpec {
    /// The command line for `connection_file`. A bare `python`/`python3`
    /// (ipykernel's own spec says just `python`) is the interpreter of the
    /// prefix the spec is installed in, `<prefix>/share/jupyter/kernels/NAME`,
    /// when that prefix has one; otherwise it is looked up on `PATH`.
    pub fn command(&self, connection_file: &Path) -> Vec<String> {
        let cf = connection_file.to_string_lossy();
        let res = self.dir.to_string_lossy();
        let mut argv: Vec<String> = self
            .argv
            .iter()
            .map(|a| {
                a.replace("{connection_file}", &cf)
                    .replace("{resource_dir}", &res)
            })
            .collect();
        if matches!(argv[0].as_str(), "python" | "python3") {
            let prefix_python = self
                .dir
                .ancestors()
                .nth(4)
                .map(|p| p.join("bin").join(&argv[0]));
            if let Some(p) = prefix_python.filter(|p| p.is_file()) {
                argv[0] = p.to_string_lossy().into_owned();
            } else if let Some(p) = crate::process::spawn::find_in_path(&argv[0]) {
                argv[0] = p.to_string_lossy().into_owned();
            }
        }
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_order() {
        let dirs = search_path(|k| match k {
            "JUPYTER_PATH" => Some("/a:/b".into()),
            "HOME" => Some("/home/u".into()),
            _ => None,
        });
        let want: Vec<PathBuf> = [
            "/a",
            "/b",
            "/home/u/.local/share/jupyter",
            "/usr/local/share/jupyter",
            "/usr/share/jupyter",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(dirs, want);
    }

    #[test]
    fn finds_by_language_and_resolves_python() {
        let root = std::env::temp_dir().join(format!("execd-spec-test-{}", std::process::id()));
        let prefix = root.join("venv");
        let kdir = prefix.join("share/jupyter/kernels/python3");
        std::fs::create_dir_all(&kdir).expect("mkdir");
        std::fs::create_dir_all(prefix.join("bin")).expect("mkdir");
        std::fs::write(prefix.join("bin/python"), "").expect("write");
        std::fs::write(
            kdir.join("kernel.json"),
            r#"{"argv":["python","-m","ipykernel_launcher","-f","{connection_file}"],"language":"Python","interrupt_mode":"message"}"#,
        )
        .expect("write");
        let dirs = vec![prefix.join("share/jupyter")];
        let spec = find(&dirs, "python").expect("found");
        assert_eq!(spec.name, "python3");
        assert_eq!(spec.interrupt_mode, InterruptMode::Message);
        let argv = spec.command(Path::new("/d/c.json"));
        assert_eq!(argv[0], prefix.join("bin/python").to_string_lossy());
        assert_eq!(argv[4], "/d/c.json");
        assert!(find(&dirs, "bash").is_none());
        let _ = std::fs::remove_dir_all(&root);
    }
}
