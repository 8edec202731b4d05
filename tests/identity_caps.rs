//! Identity-scoped file routes (`/v1/filesystem/{uid}/{gid}/...`) act with
//! that user's permissions only: none of the daemon's capabilities apply on
//! the user's behalf. Black-box, as root (skipped otherwise).

mod common;

use std::os::unix::fs::PermissionsExt;

use common::*;

const NOBODY: u32 = 65534;

/// A root process whose working directory is inside a 0700 root-owned
/// directory: its `/proc/<pid>/cwd` link leads past that directory, but
/// only for someone allowed to inspect the process (CAP_SYS_PTRACE, or the
/// same uid). As uid 65534 the scoped route refuses; the same route reads a
/// world-readable file, and the daemon's own routes still read through it.
#[tokio::test]
async fn scoped_reads_do_not_use_the_daemons_ptrace_capability() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let d = Daemon::start();
    let closed = TempDir::new("caps-closed");
    std::fs::set_permissions(&closed.0, std::fs::Permissions::from_mode(0o700)).unwrap();
    let inner = closed.0.join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(inner.join("secret"), "top secret").unwrap();
    std::fs::set_permissions(inner.join("secret"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = TempDir::new("caps-open");
    std::fs::set_permissions(&open.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(open.0.join("public"), "hello").unwrap();
    std::fs::set_permissions(
        open.0.join("public"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let holder = Kill(
        std::process::Command::new("sleep")
            .arg("300")
            .current_dir(&inner)
            .spawn()
            .unwrap(),
    );
    let via_proc = format!("/proc/{}/cwd/secret", holder.0.id());
    let pre = format!("/v1/filesystem/{NOBODY}/{NOBODY}");

    // The direct path is closed to uid 65534 by the 0700 directory...
    let r = d
        .get(&format!(
            "{pre}/files/download?path={}",
            q(&inner.join("secret").to_string_lossy())
        ))
        .await;
    r.assert_error(403, "PERMISSION_DENIED");
    // ...and so is the way round it through /proc.
    let r = d
        .get(&format!("{pre}/files/download?path={}", q(&via_proc)))
        .await;
    assert!(
        r.status == 403 || r.status == 404,
        "uid 65534 read {via_proc}: {} {}",
        r.status,
        r.text()
    );
    assert!(r.json()["code"].is_string() && r.json()["message"].is_string());
    assert!(!r.text().contains("top secret"));
    let r = d
        .get(&format!("{pre}/files/info?path={}", q(&via_proc)))
        .await;
    assert!(r.status == 403 || r.status == 404, "{}", r.text());

    // What the user may read, it reads.
    let r = d
        .get(&format!(
            "{pre}/files/download?path={}",
            q(&open.0.join("public").to_string_lossy())
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "hello");
    // The daemon itself (root) keeps its capabilities.
    let r = d
        .get(&format!("/files/download?path={}", q(&via_proc)))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "top secret");
    drop(holder);
}
