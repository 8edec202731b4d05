//! Uploads against an attacker on the same machine, black-box: a confined
//! upload whose target or parent is swapped for a symlink while it runs
//! never writes outside the root, and upload temporaries cannot be blocked
//! by files planted under predictable names. Everything happens in temp dirs.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

const NOBODY: u32 = 65534;

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Swaps `a` and `b` atomically, whatever they are.
fn exchange(a: &Path, b: &Path) {
    let _ = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        a,
        nix::fcntl::AT_FDCWD,
        b,
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    );
}

/// Everything in `dir` with its content, sorted.
fn contents(dir: &Path) -> Vec<(String, String)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The agent-sandbox `/upload` and sandboxd `PUT /v1/files` (raw and
/// multipart) check their target beneath the root; a thread meanwhile keeps
/// swapping the target's name, and its parent directory, with symlinks to a
/// directory outside. However the race falls, nothing is written outside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confined_uploads_never_land_outside_while_symlinks_are_swapped_in() {
    let t = TempDir::new("race-confined");
    let root = t.0.join("root");
    let outside = t.0.join("outside");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    // Bait outside, so that a write through a link has somewhere to land.
    std::fs::write(outside.join("f.txt"), "bait").unwrap();
    std::fs::write(outside.join("g.txt"), "bait").unwrap();
    // What the racer swaps in: `f.txt` <-> a link to outside/f.txt, and
    // the directory `d` <-> a link to outside.
    std::fs::write(root.join("f.txt"), "inside").unwrap();
    std::os::unix::fs::symlink(outside.join("f.txt"), root.join(".flink")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join(".dlink")).unwrap();
    let d = Daemon::start_with(&["--agent-sandbox-base-dir", &t.join("root")], &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, root) = (stop.clone(), root.clone());
        std::thread::spawn(move || {
            let (f, fl) = (root.join("f.txt"), root.join(".flink"));
            let (dd, dl) = (root.join("d"), root.join(".dlink"));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                exchange(&f, &fl);
                exchange(&dd, &dl);
                n += 1;
                // Each state lasts from nothing to about a millisecond, so
                // that some last as long as a check-to-write window
                // (pacing for the race, not synchronisation).
                std::thread::yield_now();
            }
            n
        })
    };

    const TRIES: usize = 200;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..TRIES {
        let target = if i % 2 == 0 { "f.txt" } else { "d/g.txt" };
        let body = format!("upload {i}");
        let status = match i % 6 {
            0 | 1 => {
                let form = Form::new().part("file", target, "text/plain", body.as_bytes());
                d.upload_to("/upload", form).await.status
            }
            2 | 3 => {
                d.request(
                    Method::PUT,
                    &format!("/v1/files/{}", q(target)),
                    &[("content-type", "application/octet-stream")],
                    body,
                )
                .await
                .status
            }
            _ => {
                let form = Form::new().part("file", "x", "text/plain", body.as_bytes());
                d.request(
                    Method::PUT,
                    &format!("/v1/files/{}", q(target)),
                    &[("content-type", &form.content_type())],
                    form.finish(),
                )
                .await
                .status
            }
        };
        *statuses.entry(status).or_insert(0) += 1;
        if contents(&outside)
            != [
                ("f.txt".to_string(), "bait".to_string()),
                ("g.txt".to_string(), "bait".to_string()),
            ]
        {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    racer.join().unwrap();
    assert_eq!(
        contents(&outside),
        [
            ("f.txt".to_string(), "bait".to_string()),
            ("g.txt".to_string(), "bait".to_string()),
        ],
        "an upload landed outside the root (statuses so far: {statuses:?})"
    );
    // Some uploads did go through, inside.
    assert!(
        statuses.contains_key(&200) || statuses.contains_key(&204),
        "{statuses:?}"
    );
}

/// The same swap made deterministic: a multipart `PUT` checks its target
/// (and creates its parent) when the request head arrives, and writes once
/// the part arrives. In between, the test puts a symlink to a file outside
/// at the target's name, then swaps the parent directory of a second target
/// for a symlink to outside. Both files outside stay as they were; the
/// uploads land inside, the symlink replaced rather than followed.
#[tokio::test]
async fn a_symlink_put_at_the_name_after_the_check_is_replaced_not_followed() {
    let t = TempDir::new("swap-confined");
    let root = t.0.join("root");
    let outside = t.0.join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("f.txt"), "bait").unwrap();
    std::fs::write(outside.join("g.txt"), "bait").unwrap();
    let d = Daemon::start_with(&["--agent-sandbox-base-dir", &t.join("root")], &[]);

    for (dir, name) in [("nd", "f.txt"), ("nd2", "g.txt")] {
        let form = Form::new();
        let ct = form.content_type();
        let (tx, resp) = d
            .stream_request(
                Method::PUT,
                &format!("/v1/files/{dir}%2F{name}"),
                &[("content-type", &ct)],
            )
            .await;
        // The check has run once it has made the parent directory.
        let parent = root.join(dir);
        eventually(Duration::from_secs(10), "the parent directory", || {
            parent.is_dir()
        })
        .await;
        if dir == "nd" {
            std::os::unix::fs::symlink(outside.join(name), parent.join(name)).unwrap();
        } else {
            let link = root.join(".link");
            std::os::unix::fs::symlink(&outside, &link).unwrap();
            exchange(&parent, &link);
            assert!(parent.is_symlink());
        }
        let body = form
            .part(
                "file",
                "x",
                "text/plain",
                format!("{dir} upload").as_bytes(),
            )
            .finish();
        tx.send(body).await.unwrap();
        drop(tx);
        let r = resp.await.unwrap();
        assert_eq!(r.status, 204, "{}", r.text());
        assert_eq!(
            contents(&outside),
            [
                ("f.txt".to_string(), "bait".to_string()),
                ("g.txt".to_string(), "bait".to_string()),
            ],
            "the upload to {dir}/{name} landed outside the root"
        );
    }
    // Inside: the symlink was replaced by the file; the second upload went
    // to the directory checked, wherever it has been moved to.
    let f = root.join("nd/f.txt");
    assert!(!f.is_symlink());
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "nd upload");
    assert_eq!(
        std::fs::read_to_string(root.join(".link/g.txt")).unwrap(),
        "nd2 upload"
    );
}

/// Files planted by another user under the old predictable temporary names
/// (`.execd-upload-<pid>-<n>`) in a shared sticky directory do not block
/// uploads into it, and no temporary is left behind.
#[tokio::test]
async fn planted_temporary_names_do_not_block_uploads() {
    if euid() != 0 {
        eprintln!("skipped: needs root to plant files as another uid");
        return;
    }
    let t = TempDir::new("squat-tmp");
    std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let d = Daemon::start_with(&["--agent-sandbox-base-dir", &t.join("")], &[]);
    let planted: Vec<String> = (0..64)
        .map(|n| format!(".execd-upload-{}-{n}", d.pid()))
        .collect();
    {
        use std::os::unix::process::CommandExt;
        let st = std::process::Command::new("touch")
            .args(planted.iter().map(|n| t.0.join(n)))
            .uid(NOBODY)
            .gid(NOBODY)
            .status()
            .unwrap();
        assert!(st.success());
    }
    let temps = |t: &TempDir| -> Vec<String> {
        t.names()
            .into_iter()
            .filter(|n| n.starts_with(".execd-upload"))
            .collect()
    };
    let mut expect = planted.clone();
    expect.sort();
    for i in 0..4 {
        let path: PathBuf = t.0.join(format!("up{i}.txt"));
        let meta = json!({"path": path, "owner": null, "group": null, "mode": 644});
        let r = d
            .upload(Form::new().meta(&meta).file(format!("data {i}").as_bytes()))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("data {i}"));
        // The confined route too.
        let form = Form::new().part("file", &format!("c{i}.txt"), "text/plain", b"c");
        let r = d.upload_to("/upload", form).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(temps(&t), expect, "only the planted names remain");
    }
}
