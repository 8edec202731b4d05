//! `GET /files/watch` (and its `/v1/filesystem/{uid}/{gid}` twin): a
//! directory's changes as an event stream. Everything happens inside temp
//! directories the tests create.

mod common;

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Daemon, EventStream, TempDir};
use http::Method;
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(30);

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// Opens a watch; the response (head and first ping) only comes once armed.
async fn watch_at(d: &Daemon, prefix: &str, dir: &str, recursive: bool) -> EventStream {
    let path = format!(
        "{prefix}/files/watch?path={}&recursive={recursive}",
        enc(dir)
    );
    let mut es = EventStream::new(d.send(Method::GET, &path, &[], Bytes::new()).await);
    assert_eq!(es.status, 200, "watch {dir}");
    assert_eq!(
        es.headers.get("content-type").unwrap(),
        "text/event-stream",
        "event stream"
    );
    let first = es.next().await.expect("first event");
    assert_eq!(first["type"], "ping", "{first}");
    es
}

async fn watch(d: &Daemon, dir: &str, recursive: bool) -> EventStream {
    watch_at(d, "", dir, recursive).await
}

/// The next event that is not a ping, or None at the end of the stream.
async fn next(es: &mut EventStream) -> Option<Value> {
    loop {
        let ev = tokio::time::timeout(LIMIT, es.next())
            .await
            .expect("an event within the limit")?;
        if ev["type"] != "ping" {
            return Some(ev);
        }
    }
}

/// Events until one satisfies `stop` (included).
async fn until(es: &mut EventStream, stop: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let ev = next(es).await.expect("stream ended early");
        let done = stop(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn is(ev: &Value, kind: &str, path: &str) -> bool {
    ev["type"] == kind && ev["path"] == path
}

/// (type, path) pairs with consecutive repeats folded.
fn folded(evs: &[Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for e in evs {
        let k = (
            e["type"].as_str().unwrap_or("").to_string(),
            e["path"].as_str().unwrap_or("").to_string(),
        );
        if out.last() != Some(&k) {
            out.push(k);
        }
    }
    out
}

/// A watch that must be refused: its error response. An accepted watch (a
/// stream that would never end) fails the test at once.
async fn refused(d: &Daemon, path: &str) -> common::Resp {
    use http_body_util::BodyExt;
    let r = d.send(Method::GET, path, &[], Bytes::new()).await;
    assert_ne!(r.status(), 200, "{path} was accepted");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let body = r.into_body().collect().await.expect("body").to_bytes();
    common::Resp {
        status,
        headers,
        body,
    }
}

fn quick() -> Daemon {
    Daemon::start_with(&["--watch-debounce", "20ms"], &[])
}

#[tokio::test]
async fn create_write_chmod_rename_remove() {
    let d = quick();
    let t = TempDir::new("watch-kinds");
    let mut es = watch(&d, t.0.to_str().unwrap(), false).await;
    let (a, b, sub) = (t.join("a"), t.join("b"), t.join("sub"));
    std::fs::write(&a, b"one").unwrap();
    std::fs::write(&a, b"two").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&a, &b).unwrap();
    std::fs::remove_file(&b).unwrap();
    std::fs::create_dir(&sub).unwrap();
    let evs = until(&mut es, |e| is(e, "create", &sub)).await;
    let f = folded(&evs);
    let want = [
        ("create", &a),
        ("write", &a),
        ("chmod", &a),
        ("rename", &b),
        ("remove", &b),
        ("create", &sub),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    assert_eq!(f, want, "{evs:#?}");
    let rename = evs.iter().find(|e| e["type"] == "rename").unwrap();
    assert_eq!(rename["old_path"], a, "renames are paired: {rename}");
    assert_eq!(evs.last().unwrap()["is_dir"], true);
    for e in &evs {
        assert!(e["timestamp"].as_u64().unwrap() > 1_600_000_000_000, "{e}");
        if e["path"] != sub {
            assert_eq!(e["is_dir"], false, "{e}");
        }
    }
    // A name moved in from outside is a create; one moved out, a rename
    // without old_path.
    let outside = TempDir::new("watch-kinds-out");
    std::fs::write(outside.join("in"), b"x").unwrap();
    std::fs::rename(outside.join("in"), t.join("in")).unwrap();
    std::fs::rename(t.join("in"), outside.join("gone")).unwrap();
    let evs = until(&mut es, |e| e["type"] == "rename").await;
    assert!(is(&evs[0], "create", &t.join("in")), "{evs:#?}");
    let last = evs.last().unwrap();
    assert!(is(last, "rename", &t.join("in")), "{last}");
    assert!(last.get("old_path").is_none(), "{last}");
}

#[tokio::test]
async fn a_burst_merges_without_losing_kinds() {
    // A long window, so the whole burst falls in one.
    let d = Daemon::start_with(&["--watch-debounce", "2s"], &[]);
    let t = TempDir::new("watch-merge");
    let mut es = watch(&d, t.0.to_str().unwrap(), false).await;
    let a = t.join("a");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&a).unwrap();
        for _ in 0..100 {
            f.write_all(b"x").unwrap();
        }
    }
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::remove_file(&a).unwrap();
    let evs = until(&mut es, |e| e["type"] == "remove").await;
    let kinds: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["create", "write", "chmod", "remove"], "{evs:#?}");
}

#[tokio::test]
async fn recursive_watches_follow_new_directories() {
    let d = quick();
    let t = TempDir::new("watch-rec");
    std::fs::create_dir_all(t.join("old/deep")).unwrap();
    let outside = TempDir::new("watch-rec-out");
    std::os::unix::fs::symlink(&outside.0, t.join("link")).unwrap();
    let mut es = watch(&d, t.0.to_str().unwrap(), true).await;
    // A directory that existed before the watch.
    std::fs::write(t.join("old/deep/f"), b"x").unwrap();
    // New directories, filled at once (the race with their watches).
    std::fs::create_dir_all(t.join("new/x/y")).unwrap();
    std::fs::write(t.join("new/f"), b"x").unwrap();
    std::fs::write(t.join("new/x/y/g"), b"x").unwrap();
    // Through the symlink: not followed, never reported.
    std::fs::write(outside.join("through-link"), b"x").unwrap();
    std::fs::write(t.join("marker"), b"x").unwrap();
    let evs = until(&mut es, |e| is(e, "create", &t.join("marker"))).await;
    let seen: HashSet<(String, String)> = evs
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().into(),
                e["path"].as_str().unwrap().into(),
            )
        })
        .collect();
    for p in [
        "old/deep/f",
        "new",
        "new/x",
        "new/x/y",
        "new/f",
        "new/x/y/g",
    ] {
        assert!(
            seen.contains(&("create".into(), t.join(p))),
            "create {p} missing: {evs:#?}"
        );
    }
    assert!(
        !evs.iter()
            .any(|e| e["path"].as_str().unwrap().contains("through-link")),
        "a symlinked directory was followed: {evs:#?}"
    );
    // The deepest new directory is watched itself.
    std::fs::write(t.join("new/x/y/g"), b"more").unwrap();
    until(&mut es, |e| is(e, "write", &t.join("new/x/y/g"))).await;
    // A directory moved within the tree keeps its watch, under its new name.
    std::fs::rename(t.join("new"), t.join("renamed")).unwrap();
    let evs = until(&mut es, |e| e["type"] == "rename").await;
    assert_eq!(evs.last().unwrap()["old_path"], t.join("new"), "{evs:#?}");
    std::fs::write(t.join("renamed/x/y/h"), b"x").unwrap();
    until(&mut es, |e| is(e, "create", &t.join("renamed/x/y/h"))).await;

    // Without `recursive`, what happens below is not reported.
    let t2 = TempDir::new("watch-flat");
    std::fs::create_dir(t2.join("sub")).unwrap();
    let mut flat = watch(&d, t2.0.to_str().unwrap(), false).await;
    std::fs::write(t2.join("sub/f"), b"x").unwrap();
    std::fs::write(t2.join("marker"), b"x").unwrap();
    let evs = until(&mut flat, |e| is(e, "create", &t2.join("marker"))).await;
    assert!(
        !evs.iter().any(|e| e["path"] == t2.join("sub/f")),
        "{evs:#?}"
    );
}

#[tokio::test]
async fn ten_thousand_files_each_reported_or_an_overflow() {
    let d = Daemon::start();
    let t = TempDir::new("watch-burst");
    let mut es = watch(&d, t.0.to_str().unwrap(), false).await;
    const N: usize = 10_000;
    for i in 0..N {
        std::fs::File::create(t.0.join(format!("f{i}"))).unwrap();
    }
    let mut created = HashSet::new();
    let mut overflow = None;
    while created.len() < N {
        let ev = next(&mut es).await.expect("stream ended");
        match ev["type"].as_str().unwrap() {
            "create" => {
                let p = ev["path"].as_str().unwrap().to_string();
                created.insert(p);
            }
            "overflow" => {
                assert!(ev["message"].as_str().is_some_and(|m| !m.is_empty()));
                overflow = Some(ev);
                break;
            }
            other => panic!("unexpected {other}: {ev}"),
        }
    }
    if overflow.is_none() {
        for i in 0..N {
            assert!(created.contains(&t.join(&format!("f{i}"))), "f{i} missing");
        }
    }
    // Either way the watch goes on.
    std::fs::write(t.join("after"), b"x").unwrap();
    until(&mut es, |e| is(e, "create", &t.join("after"))).await;
}

#[tokio::test]
async fn a_removed_root_is_an_error_and_the_end() {
    let d = quick();
    let t = TempDir::new("watch-gone");
    let dir = t.join("dir");
    std::fs::create_dir_all(t.0.join("dir/sub")).unwrap();
    std::fs::write(t.0.join("dir/sub/f"), b"x").unwrap();
    let mut es = watch(&d, &dir, true).await;
    std::fs::remove_dir_all(&dir).unwrap();
    let evs = until(&mut es, |e| e["type"] == "error").await;
    let err = evs.last().unwrap();
    assert!(
        err["message"].as_str().unwrap().contains("removed"),
        "{err}"
    );
    assert_eq!(err["path"], dir);
    assert!(
        evs.iter().any(|e| is(e, "remove", &t.join("dir/sub/f"))),
        "{evs:#?}"
    );
    assert!(next(&mut es).await.is_none(), "the stream ends after error");

    // Moved away: the same.
    std::fs::create_dir(&dir).unwrap();
    let mut es = watch(&d, &dir, false).await;
    std::fs::rename(&dir, t.join("elsewhere")).unwrap();
    let evs = until(&mut es, |e| e["type"] == "error").await;
    assert!(evs.last().unwrap()["message"]
        .as_str()
        .unwrap()
        .contains("moved"));
    assert!(next(&mut es).await.is_none());
}

#[tokio::test]
async fn bad_requests() {
    let d = quick();
    let t = TempDir::new("watch-bad");
    std::fs::write(t.join("file"), b"x").unwrap();
    refused(&d, "/files/watch")
        .await
        .assert_error(400, "MISSING_QUERY");
    refused(
        &d,
        &format!("/files/watch?path={}", enc(&t.join("missing"))),
    )
    .await
    .assert_error(404, "FILE_NOT_FOUND");
    refused(&d, &format!("/files/watch?path={}", enc(&t.join("file"))))
        .await
        .assert_error(400, "NOT_A_DIRECTORY");
    refused(
        &d,
        &format!(
            "/files/watch?path={}&recursive=perhaps",
            enc(t.0.to_str().unwrap())
        ),
    )
    .await
    .assert_error(400, "INVALID_REQUEST_BODY");
    refused(&d, "/v1/filesystem/x/0/files/watch?path=/tmp")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
}

fn inotify_fds(pid: u32) -> usize {
    common::fd_targets(pid)
        .iter()
        .filter(|t| t.ends_with("anon_inode:inotify"))
        .count()
}

#[tokio::test]
async fn the_cap_and_leaving_clients_free_everything() {
    let d = Daemon::start_with(&["--max-watches", "3", "--watch-debounce", "20ms"], &[]);
    let t = TempDir::new("watch-cap");
    std::fs::create_dir_all(t.0.join("a/b/c")).unwrap();
    let base = d.fds();
    assert_eq!(inotify_fds(d.pid()), 0);
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&d, t.0.to_str().unwrap(), true).await);
    }
    assert_eq!(inotify_fds(d.pid()), 3);
    let r = refused(
        &d,
        &format!("/files/watch?path={}", enc(t.0.to_str().unwrap())),
    )
    .await;
    r.assert_error(429, "TOO_MANY_WATCHES");
    // The identity route counts against the same cap.
    refused(
        &d,
        &format!(
            "/v1/filesystem/0/0/files/watch?path={}",
            enc(t.0.to_str().unwrap())
        ),
    )
    .await
    .assert_error(429, "TOO_MANY_WATCHES");
    // Clients leave: every watch, its descriptor and its place go.
    open.clear();
    common::eventually(LIMIT, "inotify descriptors closed", || {
        inotify_fds(d.pid()) == 0
    })
    .await;
    d.fds_back_to(&base, LIMIT).await;
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(watch(&d, t.0.to_str().unwrap(), false).await);
    }
    // A watch still works after all that.
    std::fs::write(t.join("x"), b"x").unwrap();
    until(&mut again[2], |e| is(e, "create", &t.join("x"))).await;
}

#[tokio::test]
async fn armed_before_the_response_starts() {
    let d = Daemon::start_with(&["--watch-debounce", "0"], &[]);
    let t = TempDir::new("watch-armed");
    for i in 0..20 {
        let mut es = watch(&d, t.0.to_str().unwrap(), false).await;
        // Made as soon as the head arrived: never missed.
        let p = t.join(&format!("f{i}"));
        std::fs::write(&p, b"x").unwrap();
        until(&mut es, |e| is(e, "create", &p)).await;
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn identity_routes_watch_with_that_identity() {
    if !is_root() {
        eprintln!("skipped: needs root to own files as another uid");
        return;
    }
    let d = quick();
    let t = TempDir::new("watch-id");
    std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let user = 65534u32;
    let mine = t.0.join("mine");
    let secret = t.0.join("secret");
    std::fs::create_dir_all(mine.join("closed")).unwrap();
    std::fs::create_dir(&secret).unwrap();
    std::os::unix::fs::chown(&mine, Some(user), Some(user)).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o700)).unwrap();
    // Root's, inside the user's directory: the user cannot read it.
    std::fs::set_permissions(mine.join("closed"), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o700)).unwrap();
    let id = format!("/v1/filesystem/{user}/{user}");

    // Root's private directory: refused to the user, and to another one on
    // the user's own.
    refused(
        &d,
        &format!("{id}/files/watch?path={}", enc(secret.to_str().unwrap())),
    )
    .await
    .assert_error(403, "PERMISSION_DENIED");
    refused(
        &d,
        &format!(
            "/v1/filesystem/4242/4242/files/watch?path={}",
            enc(mine.to_str().unwrap())
        ),
    )
    .await
    .assert_error(403, "PERMISSION_DENIED");

    // The user's own directory: watched, recursively, but not into what the
    // user cannot read.
    let mut es = watch_at(&d, &id, mine.to_str().unwrap(), true).await;
    std::fs::write(mine.join("closed/hidden"), b"x").unwrap();
    std::fs::write(mine.join("f"), b"x").unwrap();
    let evs = until(&mut es, |e| {
        is(e, "create", &mine.join("f").to_string_lossy())
    })
    .await;
    assert!(
        !evs.iter()
            .any(|e| e["path"].as_str().unwrap().ends_with("hidden")),
        "a directory the identity cannot read was watched: {evs:#?}"
    );
    // A new directory the user makes is followed (as the user).
    std::fs::create_dir(mine.join("new")).unwrap();
    std::os::unix::fs::chown(mine.join("new"), Some(user), Some(user)).unwrap();
    std::fs::write(mine.join("new/g"), b"x").unwrap();
    until(&mut es, |e| {
        is(e, "create", &mine.join("new/g").to_string_lossy())
    })
    .await;

    // The plain route (execd's own identity, root) reads everything.
    let mut es = watch(&d, secret.to_str().unwrap(), false).await;
    std::fs::write(secret.join("s"), b"x").unwrap();
    until(&mut es, |e| {
        is(e, "create", &secret.join("s").to_string_lossy())
    })
    .await;
}

#[tokio::test]
async fn shutdown_ends_open_watches() {
    let mut d = quick();
    let t = TempDir::new("watch-stop");
    let mut es = watch(&d, t.0.to_str().unwrap(), true).await;
    d.signal(libc::SIGTERM);
    let end = Instant::now() + LIMIT;
    loop {
        match tokio::time::timeout(LIMIT, es.next()).await {
            Ok(None) => break,
            Ok(Some(ev)) => assert_eq!(ev["type"], "ping", "{ev}"),
            Err(_) => panic!("the stream did not end"),
        }
        assert!(Instant::now() < end);
    }
    assert!(d.wait_exit(LIMIT).is_some());
}

/// The inotify watch limit (`ENOSPC` from `inotify_add_watch`), made small
/// for execd alone: it runs in a user namespace of its own whose
/// `max_inotify_watches` is 6.
fn limited_daemon(data: &TempDir) -> Option<Daemon> {
    let probe = std::process::Command::new("unshare")
        .args([
            "-Ur",
            "sh",
            "-c",
            "echo 6 > /proc/sys/user/max_inotify_watches",
        ])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: no user namespaces with a settable inotify limit");
        return None;
    }
    let mut cmd = std::process::Command::new("unshare");
    cmd.args([
        "-Ur",
        "sh",
        "-c",
        "echo 6 > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_execd"),
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log-level",
        "4",
        "--watch-debounce",
        "20ms",
        "--data-dir",
        data.0.join("d").to_str().unwrap(),
    ]);
    Some(Daemon::launch(cmd, &[], &[]))
}

#[tokio::test]
async fn the_watch_limit_is_an_error_event() {
    let data = TempDir::new("watch-limit-data");
    let Some(d) = limited_daemon(&data) else {
        return;
    };
    // Live: 3 watches armed, then more new directories than the limit.
    let t = TempDir::new("watch-limit");
    std::fs::create_dir_all(t.0.join("a/b")).unwrap();
    let mut es = watch(&d, t.0.to_str().unwrap(), true).await;
    for i in 0..6 {
        std::fs::create_dir(t.0.join(format!("n{i}"))).unwrap();
    }
    let evs = until(&mut es, |e| e["type"] == "error").await;
    let err = evs.last().unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("max_user_watches"),
        "{err}"
    );
    assert!(next(&mut es).await.is_none(), "the stream ends after error");

    // At arming: the first event says so.
    let big = TempDir::new("watch-limit-big");
    for i in 0..10 {
        std::fs::create_dir(big.0.join(format!("d{i}"))).unwrap();
    }
    let mut es = watch(&d, big.0.to_str().unwrap(), true).await;
    let ev = next(&mut es).await.expect("an event");
    assert_eq!(ev["type"], "error", "{ev}");
    assert!(ev["message"].as_str().unwrap().contains("max_user_watches"));
    assert!(next(&mut es).await.is_none());
}

#[tokio::test]
async fn a_directory_moved_in_with_more_than_a_watch_holds_is_an_overflow() {
    let d = quick();
    let t = TempDir::new("watch-movein");
    let outside = TempDir::new("watch-movein-out");
    let full = outside.0.join("full");
    std::fs::create_dir(&full).unwrap();
    for i in 0..9_000 {
        std::fs::File::create(full.join(format!("f{i}"))).unwrap();
    }
    let mut es = watch(&d, t.0.to_str().unwrap(), true).await;
    std::fs::rename(&full, t.0.join("full")).unwrap();
    let evs = until(&mut es, |e| e["type"] == "overflow").await;
    assert!(is(&evs[0], "create", &t.join("full")), "{}", evs[0]);
    let listed = evs.iter().filter(|e| e["type"] == "create").count();
    assert!(
        listed > 1 && listed <= 8_192,
        "{listed} creates before the overflow"
    );
    // The watch goes on, on the moved-in directory too.
    std::fs::write(t.0.join("full/new"), b"x").unwrap();
    until(&mut es, |e| is(e, "create", &t.join("full/new"))).await;
}

/// An upload is written to a temporary (an `O_TMPFILE`, or a
/// `.execd-upload-…` file) renamed over the target; a watcher sees only the
/// target's own events, as a plain write makes them: `create` then `write`
/// for a new file, `write` for one replaced.
#[tokio::test]
async fn an_upload_shows_as_its_target_never_its_temporary() {
    let d = quick();
    let t = TempDir::new("watch-upload");
    let mut es = watch(&d, t.0.to_str().unwrap(), false).await;
    let up = t.join("up");
    let end = t.join("end");
    let r = d
        .upload(
            common::Form::new()
                .meta(&serde_json::json!({"path": up}))
                .file(b"one"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let mid = t.join("mid");
    std::fs::create_dir(&mid).unwrap();
    let mut evs = until(&mut es, |e| is(e, "create", &mid)).await;
    evs.pop();
    let r = d
        .upload(
            common::Form::new()
                .meta(&serde_json::json!({"path": up}))
                .file(b"two"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::create_dir(&end).unwrap();
    let more = until(&mut es, |e| is(e, "create", &end)).await;
    let all: Vec<Value> = evs.iter().chain(&more).cloned().collect();
    for e in &all {
        let p = e["path"].as_str().unwrap_or("");
        let name = p.rsplit('/').next().unwrap_or("");
        assert!(
            !name.starts_with(".execd-upload") && !name.starts_with('#'),
            "a temporary shown: {all:#?}"
        );
        assert!(e.get("old_path").is_none(), "{all:#?}");
    }
    let f = folded(&evs);
    assert_eq!(
        f,
        [
            ("create".to_string(), up.clone()),
            ("write".to_string(), up.clone())
        ],
        "{all:#?}"
    );
    let f = folded(&more);
    assert_eq!(
        f,
        [
            ("write".to_string(), up.clone()),
            ("create".to_string(), end.clone())
        ],
        "{all:#?}"
    );
}
