//! Release builds of the `execd` binary for x86_64 Linux (glibc) link their
//! code in the order of `.ci/symbol-order.txt`: the functions run from exec
//! to the first `/ping` first, then those of a command and its output
//! stream. The kernel maps a binary's pages 64 KiB around each page it
//! faults in, so code run at start-up that is spread over the whole text
//! costs most of the text in resident memory; packed together it costs a
//! few hundred KiB. The order is only a layout: a name missing from the
//! binary (the file is stale) is skipped, never an error.
//!
//! It needs LLD, the linker Rust uses for this target since 1.90. Set
//! `EXECD_SYMBOL_ORDER=0` to link without it (another linker, a profiling
//! build that wants the compiler's own order).
//!
//! The same LLD builds fold identical functions (`--icf=all`, see below).
//!
//! Release builds on Linux are also stripped here, at link time, rather than
//! by the profile's `strip` (see Cargo.toml): `EXECD_STRIP=0` keeps the
//! symbol table and changes nothing else, names included.

use std::io::Write;
use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    deflate_openapi();
    println!("cargo:rerun-if-changed=.ci/symbol-order.txt");
    println!("cargo:rerun-if-env-changed=EXECD_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=EXECD_STRIP");
    let var = |k: &str| std::env::var(k).unwrap_or_default();
    if var("PROFILE") == "release"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("EXECD_STRIP") != "0"
    {
        println!("cargo:rustc-link-arg-bin=execd=-Wl,--strip-all");
    }
    if var("PROFILE") != "release"
        || var("TARGET") != "x86_64-unknown-linux-gnu"
        || !rustc_links_with_lld()
    {
        return;
    }
    // Identical code folding: functions whose machine code and relocations
    // are the same (generic instances over different types that compile to
    // the same code, cold stubs) are kept once: 54 KB. Rust gives function
    // addresses no uniqueness, and in this binary LLD folds only `.text`
    // sections (`-Wl,--print-icf-sections` lists 285, all code).
    println!("cargo:rustc-link-arg-bin=execd=-Wl,--icf=all");
    // No unwind tables: with `panic = "abort"` nothing in execd unwinds
    // (no `catch_unwind` takes effect, no C++, no `pthread_exit` or
    // `pthread_cancel`), so `.eh_frame` and its index only serve a panic's
    // `RUST_BACKTRACE` listing, which then stops at the first frame (the
    // panic message is printed as before). The standard library comes built
    // with its tables, so `-C force-unwind-tables=no` cannot drop them; the
    // linker discards them instead: about 410 KB.
    // `EXECD_UNWIND_TABLES=1` keeps them (a build for a debugger or `perf`).
    println!("cargo:rerun-if-env-changed=EXECD_UNWIND_TABLES");
    if var("EXECD_UNWIND_TABLES") != "1" {
        let script = Path::new(&var("OUT_DIR")).join("discard-unwind.ld");
        let text =
            "SECTIONS { /DISCARD/ : { *(.eh_frame) *(.eh_frame_hdr) } } INSERT AFTER .text;\n";
        if std::fs::write(&script, text).is_ok() {
            println!("cargo:rustc-link-arg-bin=execd=-Wl,-T,{}", script.display());
            println!("cargo:rustc-link-arg-bin=execd=-Wl,--no-eh-frame-hdr");
        }
    }
    if var("EXECD_SYMBOL_ORDER") == "0" {
        return;
    }
    let order = Path::new(&var("CARGO_MANIFEST_DIR")).join(".ci/symbol-order.txt");
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=execd=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=execd=-Wl,--no-warn-symbol-ordering");
    }
}

/// Whether rustc is 1.90 or later, which links x86_64-unknown-linux-gnu
/// with its own LLD.
fn rustc_links_with_lld() -> bool {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return false;
    };
    // "rustc 1.95.0 (...)"
    let text = String::from_utf8_lossy(&out.stdout);
    let mut v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .split('.')
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    (major, minor) >= (1, 90)
}

/// `openapi.yaml`, deflated into `OUT_DIR` for `api/health.rs` to embed: the
/// document is 101 KB of text, about 19 KB deflated.
fn deflate_openapi() {
    println!("cargo:rerun-if-changed=openapi.yaml");
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let out = std::env::var("OUT_DIR").expect("OUT_DIR");
    let spec = std::fs::read(Path::new(&dir).join("openapi.yaml")).expect("read openapi.yaml");
    let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&spec).expect("deflate openapi.yaml");
    let z = z.finish().expect("deflate openapi.yaml");
    std::fs::write(Path::new(&out).join("openapi.yaml.deflate"), z)
        .expect("write openapi.yaml.deflate");
}
