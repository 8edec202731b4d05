//! Ending a command ends everything it started (issue 15, item 5): the four
//! usual ways out of a process group (a `setsid` child, a `set -m` job, a
//! double-forked daemon, a `nohup`'d child) are all gone after every kind of
//! end: a timeout, a timeout that fires after the leader has exited, an
//! interrupt, `DELETE /session`, `DELETE /pty` and a cancelled gRPC `Start`
//! (with and without a terminal). Each test runs twice: with a cgroup per
//! command (`--cgroups auto`, where the machine allows it) and with the
//! /proc tracking every machine has (`--cgroups off`).
//!
//! The escaped processes are `sleep 1000.<tag><k>`: a unique number in argv
//! that identifies them in /proc. The tests only ever signal processes that
//! carry their own tag (the clean-up of a failed run).

mod common;

#[allow(clippy::all, clippy::pedantic, dead_code)]
mod pb {
    pub use execd::grpc::process_v1::*;
    include!("grpc/process_v1_client.rs");
}

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use serde_json::json;

/// How long a condition may take to come true (a bound on a poll, not a
/// figure under test: a survivor is a `sleep 1000`).
const LIMIT: Duration = Duration::from_secs(30);

/// A tag no other test or run uses: digits only, so `1000.<tag><k>` is a
/// valid `sleep` argument.
fn tag() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{}{}{}",
        std::process::id(),
        nanos % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Starts the four escapes, tagged `<tag>1`..`<tag>4`.
fn escapes(tag: &str) -> String {
    format!(
        "setsid sleep 1000.{tag}1 & \
         set -m; sleep 1000.{tag}2 & set +m; \
         ( (sleep 1000.{tag}3 &) & ); \
         nohup sleep 1000.{tag}4 >/dev/null 2>&1 & \
         echo ready; "
    )
}

/// The `sleep 1000.<tag>*` processes alive: (pid, suffix).
fn marked(tag: &str) -> Vec<(u32, String)> {
    let prefix = format!("1000.{tag}");
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_sleep = argv
            .first()
            .is_some_and(|a| a.rsplit(|&b| b == b'/').next() == Some(b"sleep"));
        let arg = argv.get(1).map(|a| String::from_utf8_lossy(a).into_owned());
        if let Some(arg) = arg.filter(|a| is_sleep && a.starts_with(&prefix)) {
            if alive(pid) {
                out.push((pid, arg[prefix.len()..].to_string()));
            }
        }
    }
    out
}

/// Kills this test's tagged processes when dropped (a failed run's survivors).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for tag in &self.0 {
            for (pid, _) in marked(tag) {
                // SAFETY: kill(2) on a process that carries this test's tag.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
}

/// Waits until all of `suffixes` run under `tag`.
async fn wait_started(tag: &str, suffixes: &[&str]) {
    eventually(LIMIT, &format!("escapes of {tag} running"), || {
        let m = marked(tag);
        suffixes.iter().all(|s| m.iter().any(|(_, x)| x == s))
    })
    .await;
}

/// Waits until nothing tagged `tag` is alive.
async fn wait_gone(tag: &str) {
    let end = std::time::Instant::now() + LIMIT;
    let left = loop {
        let left = marked(tag);
        if left.is_empty() || std::time::Instant::now() >= end {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(left.is_empty(), "survivors of {tag}: {left:?}");
}

const FOUR: &[&str] = &["1", "2", "3", "4"];
const FIVE: &[&str] = &["1", "2", "3", "4", "9"];

fn daemon(mode: &str) -> Daemon {
    Daemon::start_with(&["--cgroups", mode], &[])
}

/// Each scenario with a cgroup per command and with tracking.
macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn cgroups() {
                super::$name("auto").await
            }
            #[tokio::test]
            async fn tracked() {
                super::$name("off").await
            }
        }
    };
}

async fn timeout(mode: &str) {
    let d = daemon(mode);
    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    let cmd = format!("{}sleep 1000.{t}9", escapes(&t));
    let evs = d
        .run(json!({"command": cmd, "background": true, "timeout": 8000}))
        .await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    wait_started(&t, FIVE).await;
    let st = d.wait_finished(&id, LIMIT).await;
    assert_eq!(st["timed_out"], true, "{st}");
    wait_gone(&t).await;
}
both!(timeout);

async fn timeout_after_the_leader_exited(mode: &str) {
    let d = daemon(mode);
    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    // The leader exits at once; what it left runs until the timeout.
    let evs = d
        .run(json!({"command": escapes(&t), "timeout": 6000}))
        .await;
    let end = terminal(&evs);
    assert_eq!(end["exit_code"], 0, "{end}");
    assert_eq!(end["timed_out"], false, "{end}");
    assert_eq!(text_of(&evs, "stdout"), "ready\n");
    wait_started(&t, FOUR).await;
    wait_gone(&t).await;
}
both!(timeout_after_the_leader_exited);

async fn interrupt(mode: &str) {
    let d = daemon(mode);
    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    let cmd = format!("{}sleep 1000.{t}9", escapes(&t));
    let evs = d.run(json!({"command": cmd, "background": true})).await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    wait_started(&t, FIVE).await;
    let r = d.delete(&format!("/command?id={id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_gone(&t).await;
    let st = d.wait_finished(&id, LIMIT).await;
    assert_eq!(st["running"], false, "{st}");
}
both!(interrupt);

async fn session_delete(mode: &str) {
    let d = daemon(mode);
    let (done, running) = (tag(), tag());
    let _c = Cleanup(vec![done.clone(), running.clone()]);
    let r = d.post_json("/session", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_string();
    // A run that ended and left its escapes behind...
    let mut s = d
        .stream(
            &format!("/session/{sid}/run"),
            &json!({"command": escapes(&done)}),
        )
        .await;
    assert_eq!(s.status, 200);
    let evs = s.collect().await;
    assert_eq!(text_of(&evs, "stdout"), "ready\n", "{evs:?}");
    wait_started(&done, FOUR).await;
    // ...and a run still running.
    let cmd = format!("{}sleep 1000.{running}9", escapes(&running));
    let mut s = d
        .stream(&format!("/session/{sid}/run"), &json!({"command": cmd}))
        .await;
    assert_eq!(s.status, 200);
    wait_started(&running, FIVE).await;
    let r = d.delete(&format!("/session/{sid}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_gone(&running).await;
    wait_gone(&done).await;
    let _ = s.collect().await;
}
both!(session_delete);

/// A session that expires for idleness ends as a deleted one does.
async fn session_idle_expiry(mode: &str) {
    let d = Daemon::start_with(&["--cgroups", mode, "--session-idle-timeout", "1s"], &[]);
    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    let r = d.post_json("/session", &json!({})).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_string();
    let mut s = d
        .stream(
            &format!("/session/{sid}/run"),
            &json!({"command": escapes(&t)}),
        )
        .await;
    assert_eq!(s.status, 200);
    let evs = s.collect().await;
    assert_eq!(text_of(&evs, "stdout"), "ready\n", "{evs:?}");
    wait_started(&t, FOUR).await;
    // No run for the idle timeout: the session and what it left go.
    wait_gone(&t).await;
    let r = d
        .post_json(&format!("/session/{sid}/run"), &json!({"command": "true"}))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
}
both!(session_idle_expiry);

async fn pty_delete(mode: &str) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let d = daemon(mode);
    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    let cmd = format!("{}sleep 1000.{t}9", escapes(&t));
    let r = d.post_json("/pty", &json!({"command": cmd})).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["session_id"].as_str().unwrap().to_string();
    // The command starts when a client attaches.
    let stream = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let req = format!("ws://{}/pty/{id}/ws", d.addr)
        .into_client_request()
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(req, stream).await.unwrap();
    wait_started(&t, FIVE).await;
    let r = d.delete(&format!("/pty/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_gone(&t).await;
    drop(ws);
}
both!(pty_delete);

async fn grpc_cancel(mode: &str) {
    use pb::process_service_client::ProcessServiceClient;
    let dir = TempDir::new("trees-grpc");
    let d = Daemon::start_with(
        &[
            "--cgroups",
            mode,
            "--sandboxd-root",
            dir.0.to_str().unwrap(),
        ],
        &[],
    );
    let mut c = ProcessServiceClient::connect(format!("http://{}", d.addr))
        .await
        .unwrap();
    for pty in [None, Some(pb::Pty { cols: 80, rows: 24 })] {
        let t = tag();
        let _c = Cleanup(vec![t.clone()]);
        let cmd = format!("{}sleep 1000.{t}9", escapes(&t));
        let s = c
            .start(pb::StartRequest {
                config: Some(pb::ProcessConfig {
                    command: vec!["bash".into(), "-c".into(), cmd],
                    env_vars: HashMap::new(),
                    cwd: None,
                }),
                pty,
            })
            .await
            .unwrap()
            .into_inner();
        wait_started(&t, FIVE).await;
        drop(s);
        wait_gone(&t).await;
    }
}
both!(grpc_cancel);

/// The cgroup2 mount point where it is mounted read-write, if any.
fn cgroup2_rw() -> Option<std::path::PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found = None;
    for line in mi.lines() {
        let (left, right) = line.split_once(" - ")?;
        let f: Vec<&str> = left.split_whitespace().collect();
        if right.starts_with("cgroup2 ")
            && f.get(5).is_some_and(|o| o.split(',').any(|o| o == "rw"))
        {
            let p = std::path::PathBuf::from(f[4]);
            if f[4] == "/sys/fs/cgroup" {
                return Some(p);
            }
            found.get_or_insert(p);
        }
    }
    found
}

/// Where the machine allows it, each command runs in a cgroup of its own
/// below execd's, which is emptied once the command and what it left are
/// gone (then pooled for a later command); with `--cgroups off` commands
/// stay in execd's cgroup.
#[tokio::test]
async fn a_cgroup_per_command_emptied_when_done() {
    let root = cgroup2_rw();
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    // SAFETY: geteuid has no preconditions.
    let root_user = unsafe { libc::geteuid() } == 0;
    let usable = root.is_some() && own.lines().any(|l| l.starts_with("0::")) && root_user;

    let d = daemon("off");
    let evs = d.run(json!({"command": "cat /proc/self/cgroup"})).await;
    assert!(!text_of(&evs, "stdout").contains("/execd-"), "{evs:?}");
    drop(d);

    let d = daemon("auto");
    let dir = TempDir::new("trees-cgroup");
    let gate = dir.join("gate");
    // A background job that outlives the command until the gate opens.
    let cmd = format!("cat /proc/self/cgroup; (while [ ! -e {gate} ]; do sleep 0.05; done) &");
    let evs = d.run(json!({"command": cmd})).await;
    let out = text_of(&evs, "stdout");
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("");
    if !usable {
        eprintln!("no writable cgroup v2 here: only tracking is tested");
        std::fs::write(&gate, "").unwrap();
        return;
    }
    let want = format!("/execd-{}/cmd-", d.pid());
    assert!(line.contains(&want), "not in a cgroup of its own: {out:?}");
    let cg = root.unwrap().join(line.trim_start_matches('/'));
    let populated = || {
        std::fs::read_to_string(cg.join("cgroup.events"))
            .is_ok_and(|s| s.lines().any(|l| l == "populated 1"))
    };
    assert!(populated(), "{} holds the job while it runs", cg.display());
    // While it does, a new command gets another cgroup.
    let evs = d.run(json!({"command": "cat /proc/self/cgroup"})).await;
    assert!(!text_of(&evs, "stdout").contains(line), "{evs:?}");
    std::fs::write(&gate, "").unwrap();
    eventually(LIMIT, "the command's cgroup emptied", || !populated()).await;
}

/// A finished run's cgroup is handed to later commands: ending the old
/// run's tree (here: deleting its session, which kills what its runs left)
/// must not reach the command that uses the cgroup now.
async fn a_reused_cgroup_is_not_killed_by_its_former_owner(mode: &str) {
    let d = daemon(mode);
    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    let cgroup_of = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("0::"))
            .map(str::to_string)
    };
    for attempt in 0.. {
        let r = d.post_json("/session", &json!({})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let sid = r.json()["session_id"].as_str().unwrap().to_string();
        let mut s = d
            .stream(
                &format!("/session/{sid}/run"),
                &json!({"command": "cat /proc/self/cgroup"}),
            )
            .await;
        let first = cgroup_of(&text_of(&s.collect().await, "stdout"));
        let cmd = format!("cat /proc/self/cgroup; sleep 1000.{t}{attempt}");
        let evs = d.run(json!({"command": cmd, "background": true})).await;
        let id = evs[0]["text"].as_str().unwrap().to_string();
        let suffix = attempt.to_string();
        wait_started(&t, &[suffix.as_str()]).await;
        let logs = d.get(&format!("/command/{id}/logs")).await.text();
        let reused = first.is_some() && cgroup_of(&logs) == first;
        let in_cgroups = first.as_deref().is_some_and(|l| l.contains("/cmd-"));
        if in_cgroups && !reused {
            // The old run's cgroup was not back in the pool yet: again.
            assert!(attempt < 20, "a finished run's cgroup is never reused");
            let _ = d.delete(&format!("/session/{sid}")).await;
            let _ = d.delete(&format!("/command?id={id}")).await;
            continue;
        }
        let r = d.delete(&format!("/session/{sid}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        // A SIGKILL, had one been sent, is already queued: the process
        // would be gone within a few polls.
        for _ in 0..20 {
            assert!(
                marked(&t).iter().any(|(_, x)| *x == suffix),
                "the command in the reused cgroup was killed"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let st = d.get(&format!("/command/status/{id}")).await.json();
        assert_eq!(st["running"], true, "{st}");
        break;
    }
}
both!(a_reused_cgroup_is_not_killed_by_its_former_owner);

/// A hierarchy that takes no more cgroups (`cgroup.max.descendants`) does
/// not stop commands: their trees are tracked instead, and still end whole.
#[tokio::test]
async fn a_full_hierarchy_falls_back_to_tracking() {
    let Some(root) = cgroup2_rw() else { return };
    let d = daemon("auto");
    let evs = d.run(json!({"command": "cat /proc/self/cgroup"})).await;
    let out = text_of(&evs, "stdout");
    let Some(line) = out.lines().find_map(|l| l.strip_prefix("0::")) else {
        return;
    };
    let Some((base, _)) = line.split_once("/cmd-") else {
        eprintln!("commands are not in cgroups here: nothing to fill");
        return;
    };
    // The daemon's own directory, made by it for this test's daemon.
    let base = root.join(base.trim_start_matches('/'));
    assert!(
        base.ends_with(format!("execd-{}", d.pid())),
        "{}",
        base.display()
    );
    std::fs::write(base.join("cgroup.max.descendants"), "0").unwrap();

    let t = tag();
    let _c = Cleanup(vec![t.clone()]);
    // The first command's cgroup went back to the pool: a filler takes it,
    // so the next command needs a new one.
    d.run(json!({"command": format!("sleep 1000.{t}8"), "background": true, "timeout": 8000}))
        .await;
    wait_started(&t, &["8"]).await;
    let cmd = format!("cat /proc/self/cgroup; {}sleep 1000.{t}9", escapes(&t));
    let evs = d
        .run(json!({"command": cmd, "background": true, "timeout": 8000}))
        .await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    wait_started(&t, FIVE).await;
    let logs = d.get(&format!("/command/{id}/logs")).await.text();
    assert!(!logs.contains("/cmd-"), "no cgroup could be made: {logs}");
    let st = d.wait_finished(&id, LIMIT).await;
    assert_eq!(st["timed_out"], true, "{st}");
    wait_gone(&t).await;
}

/// A command that changes uid still joins its own cgroup (it does so as
/// root, before the credentials change) and starts with no signal blocked;
/// tracked, it carries its tree's marker.
#[tokio::test]
async fn a_command_run_as_another_uid_stays_in_its_tree() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 || cgroup2_rw().is_none() {
        eprintln!("skipped: needs root and a writable cgroup v2");
        return;
    }
    let d = daemon("auto");
    let evs = d
        .run(json!({
            "command": "id -u; id -g; id -G; cat /proc/self/cgroup; grep '^SigBlk' /proc/self/status",
            "uid": 65534,
            "gid": 65534,
        }))
        .await;
    let out = text_of(&evs, "stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.get(..3),
        Some(&["65534", "65534", "65534"][..]),
        "{out}"
    );
    let want = format!("/execd-{}/cmd-", d.pid());
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("0::") && l.contains(&want)),
        "not in a cgroup of its own: {out}"
    );
    assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
    drop(d);

    // Tracked, a command that changes uid carries its tree's marker.
    let d = daemon("off");
    let evs = d
        .run(json!({"command": "id -u; printenv EXECD_TREE", "uid": 65534}))
        .await;
    let out = text_of(&evs, "stdout");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"65534"), "{out}");
    assert!(
        lines.get(1).is_some_and(|m| !m.is_empty()),
        "no marker: {out}"
    );
}

/// An argv program that cannot be started fails the same way with and
/// without cgroups: missing 127; not executable, or executable but neither
/// ELF nor `#!`, 126 (never handed to `/bin/sh`).
async fn argv_failures(mode: &str) {
    let d = daemon(mode);
    let dir = TempDir::new("trees-argv");
    let code = |evs: &[serde_json::Value]| terminal(evs)["error"]["evalue"].clone();
    let evs = d.run(json!({"argv": [dir.join("missing")]})).await;
    assert_eq!(code(&evs), "127", "{evs:?}");
    // Many: a child that failed before exec may still be leaving its
    // cgroup when the spawn returns (a race the cgroup check below covers).
    for _ in 0..100 {
        let evs = d.run(json!({"argv": ["no-such-program-anywhere"]})).await;
        assert_eq!(code(&evs), "127", "{evs:?}");
    }

    let script = dir.join("script");
    std::fs::write(&script, "echo RAN-BY-SH\n").unwrap();
    let evs = d.run(json!({"argv": [&script]})).await;
    assert_eq!(code(&evs), "126", "not executable: {evs:?}");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let evs = d.run(json!({"argv": [&script]})).await;
    assert_eq!(code(&evs), "126", "no format: {evs:?}");
    assert!(!text_of(&evs, "stdout").contains("RAN-BY-SH"), "{evs:?}");
    // With a `#!` line the kernel runs it.
    std::fs::write(&script, "#!/bin/sh\necho RAN-BY-SH\n").unwrap();
    let evs = d.run(json!({"argv": [&script]})).await;
    assert_eq!(text_of(&evs, "stdout"), "RAN-BY-SH\n", "{evs:?}");

    // The cgroups of the commands that failed to start are all emptied
    // (and a few kept for reuse: far fewer than the commands run).
    if let Some(dir) = command_cgroups(&d) {
        let cgroups = || -> Vec<std::path::PathBuf> {
            std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with("cmd-"))
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default()
        };
        eventually(LIMIT, "no command cgroup populated", || {
            cgroups().iter().all(|c| {
                std::fs::read_to_string(c.join("cgroup.events"))
                    .is_ok_and(|s| s.lines().any(|l| l == "populated 0"))
            })
        })
        .await;
        assert!(cgroups().len() <= 32, "{:?}", cgroups());
    }
}

/// The directory of the daemon's command cgroups, if it makes them.
fn command_cgroups(d: &Daemon) -> Option<std::path::PathBuf> {
    let own = std::fs::read_to_string(format!("/proc/{}/cgroup", d.pid())).ok()?;
    let rel = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    let dir = cgroup2_rw()?
        .join(rel.trim_start_matches('/'))
        .join(format!("execd-{}", d.pid()));
    dir.is_dir().then_some(dir)
}
both!(argv_failures);
