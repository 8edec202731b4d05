//! The private data directory (spilled output, session state), black-box:
//! made exclusively with a random name, refused when someone else could have
//! made it, and every file in it created 0600 without following a planted
//! name. Tests that act as another uid need root and skip otherwise.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use http::Method;
use serde_json::json;

const NOBODY: u32 = 65534;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Runs `argv` as uid/gid 65534 and asserts it succeeded.
fn as_nobody(argv: &[&str]) {
    use std::os::unix::process::CommandExt;
    let st = Command::new(argv[0])
        .args(&argv[1..])
        .uid(NOBODY)
        .gid(NOBODY)
        .status()
        .expect("run as nobody");
    assert!(st.success(), "{argv:?} as nobody: {st}");
}

/// A 1777 directory (like /tmp) that execd takes as `$TMPDIR`.
fn shared_tmp(tag: &str) -> TempDir {
    let t = TempDir::new(tag);
    std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    t
}

fn execd() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_execd"));
    cmd.args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"]);
    cmd
}

/// Starts execd with `args`; it must exit (refusing to start) within a few
/// seconds. Returns its stderr.
fn refused(args: &[&str]) -> String {
    let mut child = execd()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("execd started with {args:?} instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{args:?}: {status}");
    err
}

/// Without `--data-dir`, execd makes `$TMPDIR/execd-XXXXXX` itself at
/// start-up: random, 0700, its own. A directory planted under the old
/// predictable name (`execd-<pid>`) by another user is never used, and
/// session state (which holds exported secrets) cannot be read by that user.
#[tokio::test]
async fn the_default_data_dir_is_random_private_and_made_at_start_up() {
    if euid() != 0 {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let t = shared_tmp("dd-default");
    let tmp = t.join("");
    let mut cmd = execd();
    cmd.args(["--output-window", "16KiB"]);
    let mut d = Daemon::launch(cmd, &[], &[("TMPDIR", tmp.as_str())]);

    // Another user squats the predictable name before anything spills.
    let guess = t.0.join(format!("execd-{}", d.pid()));
    as_nobody(&["mkdir", "-m", "0777", guess.to_str().unwrap()]);

    // Output that spills, and a session run that exports a secret.
    let evs = d.run(json!({"command": "seq 1 20000"})).await;
    assert_eq!(terminal(&evs)["type"], "execution_complete");
    let r = d.request(Method::POST, "/session", &[], "").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let sid = r.json()["session_id"].as_str().unwrap().to_string();
    // The state file exists before the run (made by execd, 0600, its own);
    // the run writes the secret into it, then tries to read it as nobody.
    let script = "export SECRET=hunter2; stat -c 'state %a %u' \"$__execd_state\"; \
                  printf 'SECRET=hunter2\\0' > \"$__execd_state\"; \
                  setpriv --reuid=65534 --regid=65534 --clear-groups cat \"$__execd_state\" && echo LEAKED; true";
    let mut s = d
        .stream(&format!("/session/{sid}/run"), &json!({"command": script}))
        .await;
    assert_eq!(s.status, 200);
    let evs = s.collect().await;
    let out = text_of(&evs, "stdout");
    assert!(
        !out.contains("LEAKED") && !out.contains("hunter2"),
        "another uid read the session state: {out:?}"
    );
    assert!(out.contains(&format!("state 600 {}", euid())), "{out:?}");
    // The state still carries over.
    let mut s = d
        .stream(
            &format!("/session/{sid}/run"),
            &json!({"command": "echo \"s=$SECRET\""}),
        )
        .await;
    assert_eq!(text_of(&s.collect().await, "stdout"), "s=hunter2\n");

    // The squatted directory was never used.
    assert_eq!(std::fs::read_dir(&guess).unwrap().count(), 0);
    // The real one: the only other entry, random-named, 0700, execd's; the
    // spill files in it 0600.
    let mine: Vec<_> = std::fs::read_dir(&t.0)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| *p != guess)
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    let dir = &mine[0];
    let name = dir.file_name().unwrap().to_str().unwrap();
    assert!(name.starts_with("execd-") && name.len() == "execd-XXXXXX".len());
    let m = std::fs::symlink_metadata(dir).unwrap();
    assert!(m.is_dir());
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, euid()));
    let files: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    assert!(!files.is_empty(), "the output spilled");
    for f in files {
        let m = f.metadata().unwrap();
        assert_eq!(m.mode() & 0o7777, 0o600, "{:?}", f.path());
    }

    // Removed at exit.
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    assert!(!dir.exists());
}

/// A `--data-dir` that someone else could have made or can write is
/// refused at start-up, with the reason; a missing one is made 0700.
#[tokio::test]
async fn a_data_dir_not_private_to_execd_is_refused_at_start_up() {
    if euid() != 0 {
        eprintln!("skipped: needs root to make a directory of another uid");
        return;
    }
    let t = TempDir::new("dd-refuse");
    let loose = t.0.join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = refused(&["--data-dir", loose.to_str().unwrap()]);
    assert!(err.contains("mode 0755"), "{err}");

    let theirs = t.0.join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let err = refused(&["--data-dir", theirs.to_str().unwrap()]);
    assert!(err.contains("owned by uid 65534"), "{err}");

    // A symlink to a directory that would pass is refused too.
    let good = t.0.join("good");
    std::fs::create_dir(&good).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = t.0.join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let err = refused(&["--data-dir", link.to_str().unwrap()]);
    assert!(err.contains("data directory"), "{err}");
    // Also through the environment variable.
    let mut child = execd()
        .env("EXECD_DATA_DIR", &loose)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("EXECD_DATA_DIR with mode 0755 was accepted");
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    // Missing: made, 0700.
    let new = t.0.join("new/data");
    let d = Daemon::start_with_data(&new, &[]);
    assert_eq!(d.get("/ping").await.status, 200);
    let m = std::fs::metadata(&new).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, euid()));
}

/// A spill segment is created exclusively: a symlink planted at its name
/// (here by the test, which owns the data directory) is not followed, and
/// the file it points to is left alone.
#[tokio::test]
async fn a_spill_never_writes_through_a_planted_name() {
    let t = TempDir::new("dd-plant");
    let data = t.0.join("data");
    let victim = t.0.join("victim");
    std::fs::write(&victim, "precious").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let d = Daemon::start_with_data(&data, &["--output-window", "16KiB"]);
    let id = d
        .start_background(json!({"command": "read x; seq 1 50000", "stdin": true}))
        .await;
    std::os::unix::fs::symlink(&victim, data.join(format!("{id}.0"))).unwrap();
    let r = d
        .request(
            Method::POST,
            &format!("/command/{id}/stdin?eof=true"),
            &[],
            "go\n",
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    d.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    // The command itself is unaffected; its newest output is still there.
    let logs = d.get(&format!("/command/{id}/logs")).await.text();
    assert!(
        logs.ends_with("49999\n50000\n"),
        "{}",
        &logs[logs.len() - 20..]
    );
}

/// A FROM-scratch image has no /tmp: execd makes its temporary directory
/// (1777, as /tmp is) and its data directory in it, instead of refusing to
/// start.
#[tokio::test]
async fn a_missing_temporary_directory_is_made() {
    let t = TempDir::new("dd-no-tmp");
    let tmp = t.0.join("missing").join("tmp");
    let d = Daemon::launch(execd(), &[], &[("TMPDIR", tmp.to_str().unwrap())]);
    let evs = d.run(json!({"command": "echo up"})).await;
    assert_eq!(text_of(&evs, "stdout"), "up\n", "{evs:?}");
    let mode = std::fs::metadata(&tmp).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o1777);
    let made: Vec<_> = std::fs::read_dir(&tmp).unwrap().flatten().collect();
    assert_eq!(made.len(), 1, "one data directory in {tmp:?}");
    let dd = std::fs::metadata(made[0].path()).unwrap();
    assert_eq!(dd.permissions().mode() & 0o7777, 0o700);
}
