//! Black-box tests of init mode: `execd init -- CMD`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// `execd init` on an ephemeral loopback port; the main command follows.
const INIT_ARGS: [&str; 8] = [
    "init",
    "--port",
    "0",
    "--bind",
    "127.0.0.1",
    "--log-level",
    "3",
    "--",
];

fn init_cmd(main: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_execd"));
    c.args(INIT_ARGS).args(main);
    c
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("execd-init-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[tokio::test]
async fn exits_with_the_main_status() {
    let mut d = Daemon::launch(init_cmd(&["sh", "-c", "exit 7"]), &[], &[]);
    let st = d
        .wait_exit(Duration::from_secs(10))
        .expect("execd exits when main does");
    assert_eq!(st.code(), Some(7));
    let mut d = Daemon::launch(init_cmd(&["sh", "-c", "kill -USR1 $$"]), &[], &[]);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(128 + libc::SIGUSR1)
    );
}

#[tokio::test]
async fn signals_are_forwarded_and_commands_end_with_the_daemon() {
    let dir = tmpdir("sig");
    let script = format!(
        "trap 'echo got-term > {d}/term; exit 3' TERM; touch {d}/ready; while :; do sleep 0.05; done",
        d = dir.display()
    );
    let mut d = Daemon::launch(init_cmd(&["sh", "-c", &script]), &[], &[]);
    eventually(Duration::from_secs(10), "main ready", || {
        dir.join("ready").exists()
    })
    .await;
    // A command started through the API must not outlive the daemon either.
    let pid = d.start_sleeper().await;
    d.signal(libc::SIGTERM);
    let st = d.wait_exit(Duration::from_secs(15)).expect("execd exits");
    assert_eq!(st.code(), Some(3), "the main command's status");
    assert_eq!(
        std::fs::read_to_string(dir.join("term")).unwrap(),
        "got-term\n"
    );
    eventually(Duration::from_secs(5), "API command gone", || !alive(pid)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn without_a_command_it_serves_until_signalled() {
    let mut d = Daemon::launch(init_cmd(&[]), &[], &[]);
    assert_eq!(d.get("/ping").await.status, 200);
    d.signal(libc::SIGHUP); // not a stop signal without a main process
    assert_eq!(d.get("/ping").await.status, 200);
    d.signal(libc::SIGTERM);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(0)
    );
}

#[tokio::test]
async fn a_missing_main_command_is_exit_127() {
    let mut d = Daemon::launch(init_cmd(&["/no/such/program"]), &[], &[]);
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)).unwrap().code(),
        Some(127)
    );
}

/// Children of `pid` (from /proc; needs a kernel with CONFIG_PROC_CHILDREN).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[tokio::test]
async fn as_pid_1_in_a_new_pid_namespace() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!(
            "skipped: cannot create a PID namespace here (unshare --pid needs CAP_SYS_ADMIN)"
        );
        return;
    }
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--pid",
        "--fork",
        "--mount-proc",
        env!("CARGO_BIN_EXE_execd"),
    ])
    .args(INIT_ARGS)
    .args(["sleep", "300"]);
    let mut d = Daemon::launch(cmd, &[], &[]);
    let evs = d.run(json!({"command": "cat /proc/1/comm; echo $$"})).await;
    let out = text_of(&evs, "stdout");
    assert!(out.starts_with("execd\n"), "execd is PID 1: {out:?}");

    // An orphan re-parents to PID 1 (execd) and is reaped when it ends. It
    // lives 2 s, so that it is still there when the next command looks,
    // however loaded the machine.
    let evs = d
        .run(json!({"command": "(sleep 2 >/dev/null & echo $!)"}))
        .await;
    let orphan = text_of(&evs, "stdout").trim().to_string();
    let evs = d
        .run(json!({"command": format!("awk '{{print $4}}' /proc/{orphan}/stat")}))
        .await;
    assert_eq!(text_of(&evs, "stdout"), "1\n", "orphan's parent is PID 1");
    let check = format!("test -e /proc/{orphan} && echo present || echo gone");
    let end = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let evs = d.run(json!({ "command": check })).await;
        if text_of(&evs, "stdout") == "gone\n" {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "orphan {orphan} never reaped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let evs = d
        .run(json!({"command": "cat /proc/[0-9]*/stat 2>/dev/null | awk '$3 == \"Z\"' | wc -l"}))
        .await;
    assert_eq!(
        text_of(&evs, "stdout").trim(),
        "0",
        "no zombie in the namespace"
    );

    // SIGTERM to execd (the host pid of namespace PID 1) reaches `sleep` and ends everything.
    let execd_pid = children(d.pid())
        .into_iter()
        .next()
        .expect("execd under unshare");
    // SAFETY: kill(2) on a pid we just read.
    unsafe { libc::kill(execd_pid as i32, libc::SIGTERM) };
    let st = d
        .wait_exit(Duration::from_secs(15))
        .expect("namespace ends");
    assert_eq!(
        st.code(),
        Some(128 + libc::SIGTERM),
        "sleep died of the forwarded SIGTERM"
    );
    assert!(!alive(execd_pid));
}

#[test]
fn install_copies_the_binary_atomically() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tmpdir("install");
    let dest = dir.join("bin/execd");
    let st = Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["install", dest.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let out = Command::new(&dest).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("execd "));
    assert_eq!(
        std::fs::read_dir(dest.parent().unwrap()).unwrap().count(),
        1,
        "no temporary left"
    );
    let st = Command::new(env!("CARGO_BIN_EXE_execd"))
        .args(["install", "/proc/nope/x"])
        .status()
        .unwrap();
    assert!(!st.success());
    let _ = std::fs::remove_dir_all(&dir);
}
