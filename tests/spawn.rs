//! Black-box tests of how processes are started: a command starts as from
//! a fresh login whatever started execd (its own process group, no signal
//! blocked or ignored, its working directory and exactly its environment,
//! the program searched on its own `PATH`), through the vfork spawn (also
//! without cgroups: it costs less than `posix_spawn`); init mode's main
//! process, which has no tree and no credentials, through nix's
//! `posix_spawn`, started the same way.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

/// execd started with signals ignored, as a shell's `&` or `nohup` or a
/// job-control-less supervisor may start it: those execd does not handle
/// itself (SIGTSTP, SIGTTIN, SIGTTOU, SIGALRM) stay ignored in a child
/// unless it resets them.
fn start_with_signals_ignored(extra: &[&str], data: &std::path::Path) -> Daemon {
    start_with_signals_ignored_as(&[], extra, data, &[])
}

/// As above, with `pre` before the flags (`init`) and `main` after `--`.
fn start_with_signals_ignored_as(
    pre: &[&str],
    extra: &[&str],
    data: &std::path::Path,
    main: &[&str],
) -> Daemon {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("trap '' INT QUIT HUP TSTP TTIN TTOU ALRM; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_execd"))
        .args(pre)
        .args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"])
        .arg("--data-dir")
        .arg(data)
        .args(extra);
    if !main.is_empty() {
        cmd.arg("--").args(main);
    }
    Daemon::launch(cmd, extra, &[])
}

fn tempdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "execd-spawn-test-{tag}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir(&d).unwrap();
    d
}

/// `execd_spawns_total{via="..."}` from the Prometheus exposition.
async fn spawns(d: &Daemon, via: &str) -> u64 {
    let text = d.get("/metrics?format=prometheus").await.text();
    let key = format!("execd_spawns_total{{via=\"{via}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(key.as_str()))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn status_field(status: &str, name: &str) -> u64 {
    let v = status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim();
    u64::from_str_radix(v, 16).unwrap()
}

#[tokio::test]
async fn a_tracked_command_gets_a_fresh_group_signals_cwd_env_and_path() {
    let data = tempdir("data").join("d");
    let work = tempdir("cwd");
    let d = start_with_signals_ignored(&["--cgroups", "off"], &data);
    // execd itself has them ignored (the test's premise).
    let own = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    let alrm = 1 << (libc::SIGALRM - 1);
    assert_eq!(status_field(&own, "SigIgn:") & alrm, alrm, "{own}");
    let before = spawns(&d, "vfork").await;

    // A program found on the command's own PATH (not execd's), run by
    // bare name, in the asked directory, with exactly the asked variables.
    let bin = work.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let tool = bin.join("spawn-probe");
    std::fs::write(
        &tool,
        "#!/bin/sh\n\
         read -r _ _ _ _ pgrp _ < /proc/self/stat\n\
         echo \"pid=$$ pgrp=$pgrp pwd=$PWD probe=$PROBE\"\n\
         grep -E '^(SigIgn|SigBlk):' /proc/self/status\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let evs = d
        .run(json!({
            "argv": ["spawn-probe"],
            "cwd": work.to_str().unwrap(),
            "envs": {"PROBE": "a b", "PATH": path},
        }))
        .await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    let out = text_of(&evs, "stdout");
    let first = out.lines().next().unwrap();
    let field = |k: &str| {
        first
            .split(' ')
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {first}"))
            .to_string()
    };
    // Its own process group: it leads it (the shell's pid is the program's).
    assert_eq!(field("pid="), field("pgrp="), "{out}");
    let daemon_pgrp = std::fs::read_to_string(format!("/proc/{}/stat", d.pid())).unwrap();
    let daemon_pgrp = daemon_pgrp.rsplit_once(')').unwrap().1;
    let daemon_pgrp = daemon_pgrp.split_whitespace().nth(2).unwrap();
    assert_ne!(field("pgrp="), daemon_pgrp);
    assert_eq!(
        field("pwd="),
        std::fs::canonicalize(&work).unwrap().to_str().unwrap()
    );
    assert!(first.ends_with("probe=a b"), "{first}");
    // Nothing blocked, nothing ignored: what execd's launcher ignored is
    // back at its default.
    assert_eq!(status_field(&out, "SigBlk:"), 0, "{out}");
    assert_eq!(status_field(&out, "SigIgn:"), 0, "{out}");

    // The same through the shell (`<shell> -c`, an absolute program).
    let evs = d
        .run(json!({"command": "grep -E '^(SigIgn|SigBlk):' /proc/self/status"}))
        .await;
    let out = text_of(&evs, "stdout");
    assert_eq!(status_field(&out, "SigBlk:"), 0, "{out}");
    assert_eq!(status_field(&out, "SigIgn:"), 0, "{out}");

    // No cgroup, no uid: the vfork spawn all the same (cheaper than
    // posix_spawn), one each.
    assert_eq!(spawns(&d, "vfork").await, before + 2);
    assert_eq!(
        spawns(&d, "posix_spawn").await + spawns(&d, "clone3").await,
        0
    );

    // A failure is classified as before: not found, and a bad cwd.
    let evs = d
        .run(json!({"argv": ["no-such-program-anywhere"], "envs": {"PATH": path}}))
        .await;
    assert_eq!(terminal(&evs)["error"]["evalue"], "127", "{evs:?}");
    let r = d
        .post_json(
            "/command",
            &json!({"command": "pwd", "cwd": work.join("gone").to_str().unwrap()}),
        )
        .await;
    assert!(r.status >= 400 && r.status < 500, "{}", r.text());

    drop(d);
    std::fs::remove_dir_all(&work).unwrap();
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}

/// A command run as another uid is not a posix_spawn one: it takes the
/// vfork spawn (credentials between fork and exec), and starts the same way.
#[tokio::test]
async fn a_uid_switch_takes_the_vfork_spawn() {
    if !nix::unistd::getuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let data = tempdir("data-uid").join("d");
    let d = start_with_signals_ignored(&["--cgroups", "off"], &data);
    let evs = d
        .run(json!({
            "command": "id -u; grep -E '^SigIgn:' /proc/self/status",
            "uid": 65534,
            "cwd": "/",
        }))
        .await;
    let out = text_of(&evs, "stdout");
    assert!(out.starts_with("65534\n"), "{evs:?}");
    assert_eq!(status_field(&out, "SigIgn:"), 0, "{out}");
    assert_eq!(spawns(&d, "vfork").await, 1);
    assert_eq!(spawns(&d, "posix_spawn").await, 0);
    drop(d);
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}

/// Init mode's main process has no tree and no credentials: nix's
/// `posix_spawn` starts it, with the same fresh start (own group, nothing
/// blocked or ignored, glibc's internal signals 32 and 33 included).
#[tokio::test]
async fn the_init_main_process_is_posix_spawned_fresh() {
    let data = tempdir("data-init").join("d");
    let dir = tempdir("init");
    let script = format!(
        "grep -E '^Sig(Blk|Ign):' /proc/self/status > {d}/sig; \
         read -r _ _ _ _ g _ < /proc/self/stat; echo \"$$ $g\" > {d}/pgrp; \
         touch {d}/ready; exec sleep 60",
        d = dir.display()
    );
    let d = start_with_signals_ignored_as(&["init"], &[], &data, &["sh", "-c", &script]);
    eventually(std::time::Duration::from_secs(10), "main ready", || {
        dir.join("ready").exists()
    })
    .await;
    let sig = std::fs::read_to_string(dir.join("sig")).unwrap();
    assert_eq!(status_field(&sig, "SigBlk:"), 0, "{sig}");
    assert_eq!(status_field(&sig, "SigIgn:"), 0, "{sig}");
    let pgrp = std::fs::read_to_string(dir.join("pgrp")).unwrap();
    let (pid, group) = pgrp.trim().split_once(' ').unwrap();
    let counts = (
        spawns(&d, "posix_spawn").await,
        spawns(&d, "vfork").await + spawns(&d, "clone3").await,
    );
    // The main process outlives a killed execd: end its group first.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(group.parse().unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
    drop(d);
    assert_eq!(pid, group, "its own process group");
    assert_eq!(counts, (1, 0), "(posix_spawn, vfork + clone3)");
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = std::fs::remove_dir_all(data.parent().unwrap());
}
