//! The binary's size per feature group (issue 20 §5).
//!
//! Method: a second build of the same code with the same flags but its
//! symbol table kept (`EXECD_STRIP=0`, see build.rs: the same code, the same
//! symbol names, only the file keeps them) is read with `nm -S -C`, and every named function
//! and constant is put in a group by its (demangled) path: `execd::kernel::*`
//! is the code interpreter, `tonic::*` is gRPC, and so on. What no symbol
//! names (unwind tables, string literals and other anonymous constants, ELF
//! headers, padding) is the `unattributed` row: the shipped file's size minus
//! everything named. With fat LTO the optimiser inlines across crates, so a
//! function is counted where it ended up, and a generic of one crate
//! instantiated for another's types counts in the generic's crate
//! (`tokio::...::poll<execd::...>` is async runtime). The groups are
//! therefore "code and data named by that feature's modules and crates",
//! not the bytes a build without that feature would save.

use std::path::Path;
use std::process::Command;

use crate::report::{Budget, Figure, Measured};

/// The groups, in report order: figure id, label, and the path prefixes
/// (first match wins; longer prefixes are listed before shorter ones).
const GROUPS: &[(&str, &str, &[&str])] = &[
    (
        "size_commands_kb",
        "size: commands, sessions, PTY (core)",
        &[
            "execd::process",
            "execd::api::command",
            "execd::api::session",
            "execd::api::pty",
            "execd::api::wire",
            "execd::api::operation",
            "execd::api::init",
            "execd::lifecycle",
            "execd::operations",
            "execd::runtime",
            "execd::counters",
        ],
    ),
    (
        "size_files_kb",
        "size: files",
        &[
            "execd::fs",
            "execd::api::files",
            "execd::api::directories",
            "execd::api::form",
            "multer",
            "mime",
            "encoding_rs",
            "spin",
        ],
    ),
    (
        "size_runtime_apis_kb",
        "size: agent-sandbox and sandboxd HTTP APIs",
        &["execd::api::agent_sandbox", "execd::api::sandboxd"],
    ),
    (
        "size_code_kb",
        "size: code interpreter (src/kernel)",
        &["execd::kernel", "execd::api::code", "hmac", "digest"],
    ),
    (
        "size_isolate_kb",
        "size: isolated sessions (src/isolate)",
        &["execd::isolate", "execd::api::isolated"],
    ),
    (
        "size_grpc_kb",
        "size: gRPC (tonic, prost, h2)",
        &[
            "execd::grpc",
            "tonic",
            "tonic_prost",
            "prost",
            "h2",
            "tokio_stream",
            "tower",
            "tower_service",
            "tower_layer",
        ],
    ),
    (
        "size_websocket_kb",
        "size: WebSocket (tungstenite)",
        &[
            "tungstenite",
            "tokio_tungstenite",
            "sha1",
            "rand",
            "rand_chacha",
            "rand_core",
            "data_encoding",
            "utf8",
        ],
    ),
    (
        "size_http_kb",
        "size: HTTP server, routing, auth, daemon",
        &[
            "execd",
            "hyper",
            "hyper_util",
            "http",
            "http_body",
            "http_body_util",
            "httparse",
            "httpdate",
            "form_urlencoded",
            "percent_encoding",
            "lexopt",
            "sha2",
            "nix",
        ],
    ),
    (
        "size_async_kb",
        "size: async runtime (tokio, futures)",
        &[
            "tokio",
            "tokio_util",
            "mio",
            "futures_core",
            "futures_util",
            "futures_channel",
            "futures_task",
            "futures_sink",
            "socket2",
            "signal_hook_registry",
            "slab",
            "pin_project",
            "want",
            "try_lock",
            "atomic_waker",
            "bytes",
        ],
    ),
    (
        "size_json_kb",
        "size: JSON (serde)",
        &["serde", "serde_json", "serde_core", "zmij", "itoa", "ryu"],
    ),
    (
        "size_logging_kb",
        "size: logging (tracing)",
        &[
            "tracing",
            "tracing_core",
            "tracing_subscriber",
            "nu_ansi_term",
            "sharded_slab",
            "thread_local",
        ],
    ),
    (
        "size_std_kb",
        "size: Rust standard library",
        &[
            "std",
            "core",
            "alloc",
            "hashbrown",
            "memchr",
            "gimli",
            "addr2line",
            "rustc_demangle",
            "miniz_oxide",
            "object",
            "adler2",
        ],
    ),
];

/// Builds the symbol-table copy of the binary: the same command as
/// [`crate::server::build_execd`] with the symbol table kept.
pub fn build_with_symbols() -> Result<std::path::PathBuf, String> {
    crate::server::build_execd_with(&[("EXECD_STRIP", "0")])
}

/// The group of a demangled symbol name; `None` for a C symbol.
fn group_of(name: &str) -> Option<usize> {
    // `<tokio::x::Y<T> as core::future::Future>::poll` belongs to tokio.
    let path = name.trim_start_matches(['<', '&', '*']);
    let path = path
        .strip_prefix("mut ")
        .or_else(|| path.strip_prefix("dyn "))
        .unwrap_or(path);
    if !path.contains("::") {
        return None;
    }
    let other = GROUPS.len();
    Some(
        GROUPS
            .iter()
            .position(|(_, _, prefixes)| {
                prefixes.iter().any(|p| {
                    path.strip_prefix(p)
                        .is_some_and(|rest| rest.starts_with("::"))
                })
            })
            .unwrap_or(other),
    )
}

/// The size rows, each saying why it could not be measured.
pub fn figures_unavailable(why: &str) -> Vec<Figure> {
    let fake = Path::new("/nonexistent/execd");
    figures(fake, fake)
        .into_iter()
        .map(|f| f.with(Err(why.to_string())))
        .collect()
}

/// The size figures: one per group, plus the C library, other crates and
/// what no symbol names.
pub fn figures(with_symbols: &Path, shipped: &Path) -> Vec<Figure> {
    let mut rows: Vec<Figure> = GROUPS
        .iter()
        .map(|(id, label, _)| Figure::new(id, label, "KB", Budget::None))
        .collect();
    rows.push(Figure::new(
        "size_other_kb",
        "size: other crates",
        "KB",
        Budget::None,
    ));
    rows.push(Figure::new(
        "size_libc_kb",
        "size: C library (static glibc)",
        "KB",
        Budget::None,
    ));
    rows.push(Figure::new(
        "size_unattributed_kb",
        "size: unattributed (unwind tables, literals, headers)",
        "KB",
        Budget::None,
    ));
    let measured = (|| -> Result<Vec<u64>, String> {
        let file = std::fs::metadata(shipped)
            .map_err(|e| format!("{shipped:?}: {e}"))?
            .len();
        let out = Command::new("nm")
            .args(["-S", "-C"])
            .arg(with_symbols)
            .output()
            .map_err(|e| format!("n/a (nm not installed: {e})"))?;
        if !out.status.success() {
            return Err(format!(
                "nm failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut bytes = vec![0u64; GROUPS.len() + 3];
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            // "address size type name"
            let mut f = line.splitn(4, ' ');
            let (Some(_), Some(size), Some(kind), Some(name)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                continue;
            };
            // What the file holds: code, read-only and initialised data
            // (not .bss, which takes no room in the file).
            if !matches!(kind, "t" | "T" | "w" | "W" | "r" | "R" | "d" | "D") {
                continue;
            }
            let Ok(size) = u64::from_str_radix(size, 16) else {
                continue;
            };
            let g = group_of(name).unwrap_or(GROUPS.len() + 1);
            bytes[g] += size;
        }
        let named: u64 = bytes.iter().sum();
        bytes[GROUPS.len() + 2] = file.saturating_sub(named);
        Ok(bytes)
    })();
    match measured {
        Ok(bytes) => {
            let total: u64 = bytes.iter().sum::<u64>().max(1);
            rows.into_iter()
                .zip(bytes)
                .map(|(fig, b)| {
                    fig.with(Ok(Measured {
                        value: b as f64 / 1e3,
                        note: format!("{:.1} % of the file", b as f64 * 100.0 / total as f64),
                        ..Measured::default()
                    }))
                })
                .collect()
        }
        Err(e) => rows.into_iter().map(|f| f.with(Err(e.clone()))).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_path() {
        let g = |n| group_of(n).map(|i| GROUPS.get(i).map_or("other", |g| g.0));
        assert_eq!(g("execd::kernel::zmtp::read"), Some("size_code_kb"));
        assert_eq!(
            g("execd::api::files::upload::{{closure}}"),
            Some("size_files_kb")
        );
        assert_eq!(g("execd::server::serve"), Some("size_http_kb"));
        assert_eq!(
            g("<tokio::runtime::task::Harness<T> as core::future::Future>::poll"),
            Some("size_async_kb")
        );
        assert_eq!(
            g("h2::proto::connection::Connection<T,P,B>::poll"),
            Some("size_grpc_kb")
        );
        assert_eq!(
            g("tokio_util::task::TaskTracker::new"),
            Some("size_async_kb")
        );
        assert_eq!(g("some_crate::f"), Some("other"));
        assert_eq!(g("__memcpy_avx_unaligned_erms"), None);
    }
}
