//! Black-box tests: the access token cannot be read back from the running
//! daemon (issue 15, item 1). Commands look at `/proc/<execd>/environ` and
//! `cmdline`, in every form the token can be given in, and in init mode.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// What a command sees of the daemon's initial strings and of its own
/// environment: `/proc/PID/environ`, `/proc/PID/cmdline`, then `env`.
async fn seen_by_a_command(d: &Daemon) -> String {
    let cmd = format!(
        "tr '\\0' '\\n' < /proc/{p}/environ; echo ---; tr '\\0' '\\n' < /proc/{p}/cmdline; echo ---; env; echo ppid=$PPID",
        p = d.pid()
    );
    let evs = d.run(json!({ "command": cmd })).await;
    let out = text_of(&evs, "stdout");
    assert!(
        out.contains(&format!("ppid={}", d.pid())),
        "the command is the daemon's child: {out}"
    );
    out
}

/// The token works, a wrong one does not.
async fn token_works(d: &Daemon, token: &str) {
    assert_eq!(
        d.send_raw(http::Method::GET, "/ping", Some(token)).await.0,
        200
    );
    assert_eq!(
        d.send_raw(http::Method::GET, "/ping", Some("nope")).await.0,
        401
    );
}

const TOKEN: &str = "tok-4f1c9e27-never-visible";

/// sha256 of [`TOKEN`] in hex.
fn token_digest() -> String {
    let out = Command::new("sh")
        .args(["-c", &format!("printf %s '{TOKEN}' | sha256sum")])
        .output()
        .expect("sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

#[tokio::test]
async fn a_token_from_the_environment_is_not_in_proc() {
    let d = Daemon::start_with(&[], &[("EXECD_ACCESS_TOKEN", TOKEN)]);
    token_works(&d, TOKEN).await;
    let seen = seen_by_a_command(&d).await;
    assert!(
        seen.contains("EXECD_ACCESS_TOKEN="),
        "environ was read: {seen}"
    );
    assert!(!seen.contains(TOKEN), "{seen}");
}

#[tokio::test]
async fn a_token_flag_is_not_in_proc() {
    for args in [
        vec!["--access-token", TOKEN],
        vec!["--access-token=tok-4f1c9e27-never-visible"],
        vec!["-access-token=tok-4f1c9e27-never-visible"],
    ] {
        let mut d = Daemon::start_with(&args, &[]);
        d.token = Some(TOKEN.into());
        token_works(&d, TOKEN).await;
        let seen = seen_by_a_command(&d).await;
        assert!(seen.contains("access-token"), "cmdline was read: {seen}");
        assert!(!seen.contains(TOKEN), "{args:?}: {seen}");
    }
}

#[tokio::test]
async fn a_token_file_is_read_once_and_not_in_proc() {
    let dir = TempDir::new("token-file");
    let file = dir.0.join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let f = file.to_str().unwrap();
    for (args, envs) in [
        (vec!["--access-token-file", f], vec![]),
        (vec![], vec![("EXECD_ACCESS_TOKEN_FILE", f)]),
    ] {
        let mut d = Daemon::start_with(&args, &envs);
        d.token = Some(TOKEN.into());
        token_works(&d, TOKEN).await;
        let seen = seen_by_a_command(&d).await;
        assert!(!seen.contains(TOKEN), "{seen}");
        let own_env = seen.rsplit("---\n").next().unwrap();
        assert!(
            !own_env.contains("EXECD_ACCESS_TOKEN_FILE="),
            "the file's name is not passed on to commands: {own_env}"
        );
    }
    // Read once: changing the file later changes nothing.
    let mut d = Daemon::start_with(&["--access-token-file", f], &[]);
    d.token = Some(TOKEN.into());
    std::fs::write(&file, "other\n").unwrap();
    token_works(&d, TOKEN).await;
    assert_eq!(
        d.send_raw(http::Method::GET, "/ping", Some("other"))
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn a_hashed_token_is_accepted_and_its_digest_is_not_in_proc() {
    let digest = token_digest();
    let hashed = format!("sha256:{digest}");
    let mut d = Daemon::start_with(&[], &[("EXECD_ACCESS_TOKEN", &hashed)]);
    d.token = Some(TOKEN.into());
    token_works(&d, TOKEN).await;
    // The digest itself is not a token.
    assert_eq!(
        d.send_raw(http::Method::GET, "/ping", Some(&hashed))
            .await
            .0,
        401
    );
    assert_eq!(
        d.send_raw(http::Method::GET, "/ping", Some(&digest))
            .await
            .0,
        401
    );
    let seen = seen_by_a_command(&d).await;
    assert!(!seen.contains(&digest), "{seen}");
    let mut d = Daemon::start_with(&["--access-token", &hashed], &[]);
    d.token = Some(TOKEN.into());
    token_works(&d, TOKEN).await;
    let seen = seen_by_a_command(&d).await;
    assert!(!seen.contains(&digest), "{seen}");
    // A malformed digest stops start-up rather than being taken as a token.
    let out = Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["--port", "0", "--access-token", "sha256:abc"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[tokio::test]
async fn init_mode_main_process_and_commands_cannot_read_the_token() {
    let dir = TempDir::new("token-init");
    let main = format!(
        "tr '\\0' '\\n' < /proc/$PPID/environ > {d}/environ; tr '\\0' '\\n' < /proc/$PPID/cmdline > {d}/cmdline; env > {d}/env; touch {d}/done; exec sleep 600",
        d = dir.0.display()
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_execd"));
    cmd.args([
        "init",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log-level",
        "3",
    ])
    .args(["--data-dir", dir.0.join("data").to_str().unwrap()])
    .args(["--access-token", TOKEN, "--", "sh", "-c", &main]);
    let mut d = Daemon::launch(cmd, &[], &[("EXECD_ACCESS_TOKEN_FILE", "/ignored")]);
    d.token = Some(TOKEN.into());
    eventually(Duration::from_secs(10), "main process done", || {
        dir.0.join("done").exists()
    })
    .await;
    for f in ["environ", "cmdline", "env"] {
        let text = std::fs::read_to_string(dir.0.join(f)).unwrap();
        assert!(!text.is_empty(), "{f} was read");
        assert!(
            !text.contains(TOKEN),
            "the main process read it in {f}: {text}"
        );
    }
    let seen = seen_by_a_command(&d).await;
    assert!(seen.contains("access-token"), "{seen}");
    assert!(!seen.contains(TOKEN), "{seen}");
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(10));

    // The same with the token in the environment.
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_execd"));
    cmd.args([
        "init",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log-level",
        "3",
    ])
    .args(["--data-dir", dir.0.join("data2").to_str().unwrap()])
    .args(["--", "sh", "-c", &main]);
    std::fs::remove_file(dir.0.join("done")).unwrap();
    let mut d = Daemon::launch(cmd, &[], &[("EXECD_ACCESS_TOKEN", TOKEN)]);
    eventually(Duration::from_secs(10), "main process done", || {
        dir.0.join("done").exists()
    })
    .await;
    for f in ["environ", "env"] {
        let text = std::fs::read_to_string(dir.0.join(f)).unwrap();
        assert!(
            !text.contains(TOKEN),
            "the main process read it in {f}: {text}"
        );
    }
    let seen = seen_by_a_command(&d).await;
    assert!(!seen.contains(TOKEN), "{seen}");
    d.signal(libc::SIGTERM);
    d.wait_exit(Duration::from_secs(10));
}

/// A daemon that is not root is not dumpable: a command of its own uid
/// cannot read its `/proc/<pid>/environ` or memory at all. A command of
/// another uid never could.
#[tokio::test]
async fn proc_files_of_the_daemon_are_closed_to_other_processes() {
    let dir = TempDir::new("token-dumpable");
    std::fs::set_permissions(&dir.0, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_execd"))
        .args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "3"])
        .args(["--data-dir", dir.0.join("data").to_str().unwrap()])
        .args(["--access-token", TOKEN]);
    let mut d = Daemon::launch(cmd, &[], &[]);
    d.token = Some(TOKEN.into());
    let probe = format!(
        "id -u; for f in environ mem; do if cat /proc/{p}/$f > /dev/null 2>&1; then echo $f readable; else echo $f closed; fi; done",
        p = d.pid()
    );
    let out = text_of(&d.run(json!({ "command": probe })).await, "stdout");
    assert_eq!(out, "65534\nenviron closed\nmem closed\n");

    // A root daemon: a command of another uid.
    let d = Daemon::start_with(&["--access-token", TOKEN], &[]);
    let probe = format!(
        "id -u; for f in environ mem; do if cat /proc/{p}/$f > /dev/null 2>&1; then echo $f readable; else echo $f closed; fi; done",
        p = d.pid()
    );
    let out = text_of(
        &d.run(json!({ "command": probe, "uid": 65534, "gid": 65534 }))
            .await,
        "stdout",
    );
    assert_eq!(out, "65534\nenviron closed\nmem closed\n");
}
