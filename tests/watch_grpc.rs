//! sandboxd's gRPC `watcher.v1.FileWatcherService/WatchDir`, with a tonic
//! client generated from proto/watcher/v1/watcher.proto, on execd's main
//! port and on `--grpc-port`. Everything happens inside temp directories the
//! tests create.

mod common;

#[allow(clippy::all, clippy::pedantic, dead_code)]
mod pb {
    pub use execd::grpc::watcher_v1::*;
    include!("grpc/watcher_v1_client.rs");
}

use std::time::Duration;

use common::{Daemon, TempDir};
use pb::file_watcher_service_client::FileWatcherServiceClient;
use pb::{FileEvent, FileEventType, WatchDirRequest};
use tonic::transport::Channel;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

fn daemon(root: &TempDir, extra: &[&str]) -> Daemon {
    let mut args = vec![
        "--sandboxd-root",
        root.0.to_str().unwrap(),
        "--watch-debounce",
        "20ms",
    ];
    args.extend_from_slice(extra);
    Daemon::start_with(&args, &[])
}

async fn client(addr: std::net::SocketAddr) -> FileWatcherServiceClient<Channel> {
    FileWatcherServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect")
}

async fn watch(
    c: &mut FileWatcherServiceClient<Channel>,
    path: &str,
    recursive: bool,
) -> Result<tonic::Streaming<FileEvent>, tonic::Status> {
    c.watch_dir(WatchDirRequest {
        path: path.into(),
        recursive,
    })
    .await
    .map(|r| r.into_inner())
}

async fn next(s: &mut tonic::Streaming<FileEvent>) -> Option<FileEvent> {
    tokio::time::timeout(LIMIT, s.message())
        .await
        .expect("an event within the limit")
        .expect("stream")
}

/// Events until one satisfies `stop` (included).
async fn until(
    s: &mut tonic::Streaming<FileEvent>,
    stop: impl Fn(&FileEvent) -> bool,
) -> Vec<FileEvent> {
    let mut out = Vec::new();
    loop {
        let ev = match tokio::time::timeout(LIMIT, s.message()).await {
            Ok(r) => r.expect("stream").expect("stream ended early"),
            Err(_) => panic!("no matching event within the limit; got {out:#?}"),
        };
        let done = stop(&ev);
        out.push(ev);
        if done {
            return out;
        }
    }
}

fn is(ev: &FileEvent, t: FileEventType, path: &str) -> bool {
    ev.r#type == t as i32 && ev.path == path
}

#[tokio::test]
async fn events_with_sandbox_relative_paths() {
    let root = TempDir::new("wgrpc-root");
    std::fs::create_dir(root.0.join("src")).unwrap();
    let d = daemon(&root, &[]);
    let mut c = client(d.addr).await;
    let mut s = watch(&mut c, "src", false).await.expect("watch");
    std::fs::write(root.0.join("src/a"), b"1").unwrap();
    std::fs::write(root.0.join("src/a"), b"2").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.0.join("src/a"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(root.0.join("src/a"), root.0.join("src/b")).unwrap();
    std::fs::remove_file(root.0.join("src/b")).unwrap();
    let evs = until(&mut s, |e| is(e, FileEventType::Remove, "src/b")).await;
    let mut kinds: Vec<(i32, String)> = Vec::new();
    for e in &evs {
        let k = (e.r#type, e.path.clone());
        if kinds.last() != Some(&k) {
            kinds.push(k);
        }
    }
    let want: Vec<(i32, String)> = [
        (FileEventType::Create, "src/a"),
        (FileEventType::Write, "src/a"),
        (FileEventType::Chmod, "src/a"),
        (FileEventType::Rename, "src/b"),
        (FileEventType::Remove, "src/b"),
    ]
    .iter()
    .map(|(t, p)| (*t as i32, p.to_string()))
    .collect();
    assert_eq!(kinds, want, "{evs:#?}");
    let rename = evs
        .iter()
        .find(|e| e.r#type == FileEventType::Rename as i32)
        .unwrap();
    assert_eq!(rename.old_path, "src/a", "paired by cookie");
    assert!(evs.iter().all(|e| e.error.is_empty()));

    // The root itself, as "" or "/", on the --grpc-port too.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let _d2 = daemon(&root, &["--grpc-port", &port.to_string()]);
    let mut c2 = client(std::net::SocketAddr::from(([127, 0, 0, 1], port))).await;
    for p in ["", "/"] {
        let mut s = watch(&mut c2, p, false).await.expect("watch root");
        let name = format!("top{}", p.len());
        std::fs::write(root.0.join(&name), b"x").unwrap();
        until(&mut s, |e| is(e, FileEventType::Create, &name)).await;
    }
}

#[tokio::test]
async fn recursive_follows_new_directories_but_not_symlinks() {
    let root = TempDir::new("wgrpc-rec");
    let outside = TempDir::new("wgrpc-rec-out");
    std::os::unix::fs::symlink(&outside.0, root.0.join("link")).unwrap();
    std::fs::create_dir(root.0.join("inner")).unwrap();
    std::os::unix::fs::symlink("inner", root.0.join("inner-link")).unwrap();
    let d = daemon(&root, &[]);
    let mut c = client(d.addr).await;
    let mut s = watch(&mut c, "", true).await.expect("watch");
    std::fs::create_dir_all(root.0.join("new/deeper")).unwrap();
    std::fs::write(root.0.join("new/deeper/f"), b"x").unwrap();
    std::fs::write(outside.0.join("escaped"), b"x").unwrap();
    std::fs::write(root.0.join("marker"), b"x").unwrap();
    let evs = until(&mut s, |e| is(e, FileEventType::Create, "marker")).await;
    for p in ["new", "new/deeper", "new/deeper/f"] {
        assert!(
            evs.iter().any(|e| is(e, FileEventType::Create, p)),
            "{p}: {evs:#?}"
        );
    }
    assert!(
        !evs.iter().any(|e| e.path.contains("escaped")),
        "a symlinked directory was followed: {evs:#?}"
    );
}

#[tokio::test]
async fn refusals_as_sandboxd_gives_them() {
    let root = TempDir::new("wgrpc-refuse");
    let outside = TempDir::new("wgrpc-refuse-out");
    std::fs::write(root.0.join("file"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside.0, root.0.join("out-link")).unwrap();
    std::os::unix::fs::symlink("../../../..", root.0.join("up-link")).unwrap();
    let d = daemon(&root, &[]);
    let mut c = client(d.addr).await;
    let code = |r: Result<tonic::Streaming<FileEvent>, tonic::Status>| match r {
        Ok(_) => panic!("accepted"),
        Err(s) => s.code(),
    };
    assert_eq!(
        code(watch(&mut c, "..", false).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(watch(&mut c, "a/../../x", false).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(watch(&mut c, "out-link", false).await),
        Code::PermissionDenied
    );
    assert_eq!(
        code(watch(&mut c, "up-link", true).await),
        Code::PermissionDenied
    );
    assert_eq!(code(watch(&mut c, "missing", false).await), Code::NotFound);
    assert_eq!(
        code(watch(&mut c, "file", false).await),
        Code::InvalidArgument
    );
    // An absolute path outside the root is taken beneath it (sandboxd's rule).
    let p = outside.0.to_str().unwrap().to_string();
    assert_eq!(code(watch(&mut c, &p, false).await), Code::NotFound);
}

#[tokio::test]
async fn at_most_64_watches() {
    let root = TempDir::new("wgrpc-cap");
    let d = daemon(&root, &[]);
    let mut c = client(d.addr).await;
    let mut open = Vec::new();
    for i in 0..64 {
        open.push(
            watch(&mut c, "", false)
                .await
                .unwrap_or_else(|e| panic!("watch {i}: {e}")),
        );
    }
    let r = watch(&mut c, "", false).await;
    match r {
        Ok(_) => panic!("a 65th watch was accepted"),
        Err(e) => assert_eq!(e.code(), Code::ResourceExhausted, "{e}"),
    }
    // The REST route shares the cap.
    let rest = d
        .send(
            http::Method::GET,
            &format!("/files/watch?path={}", root.0.display()),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(rest.status(), 429);
    assert_eq!(inotify_fds(d.pid()), 64);
    // One stream closed, one place free again.
    open.pop();
    let end = std::time::Instant::now() + LIMIT;
    let mut s = loop {
        match watch(&mut c, "", false).await {
            Ok(s) => break s,
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted);
                assert!(std::time::Instant::now() < end, "the place was never freed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    std::fs::write(root.0.join("x"), b"x").unwrap();
    until(&mut s, |e| is(e, FileEventType::Create, "x")).await;
    // Every stream closed: every inotify descriptor with it.
    drop((s, open));
    common::eventually(LIMIT, "inotify descriptors closed", || {
        inotify_fds(d.pid()) == 0
    })
    .await;
}

fn inotify_fds(pid: u32) -> usize {
    common::fd_targets(pid)
        .iter()
        .filter(|t| t.ends_with("anon_inode:inotify"))
        .count()
}

#[tokio::test]
async fn a_removed_directory_is_a_last_error_event() {
    let root = TempDir::new("wgrpc-gone");
    std::fs::create_dir_all(root.0.join("dir/sub")).unwrap();
    let d = daemon(&root, &[]);
    let mut c = client(d.addr).await;
    let mut s = watch(&mut c, "dir", true).await.expect("watch");
    std::fs::remove_dir_all(root.0.join("dir")).unwrap();
    let evs = until(&mut s, |e| e.r#type == FileEventType::Error as i32).await;
    let last = evs.last().unwrap();
    assert!(last.error.contains("removed"), "{last:?}");
    assert_eq!(last.path, "dir");
    assert!(next(&mut s).await.is_none(), "the stream ends after ERROR");
}

/// An upload (a temporary renamed over the target) shows as the target's
/// own events: `CREATE` then `WRITE` for a new file, `WRITE` for one
/// replaced; never a temporary's name, never a rename.
#[tokio::test]
async fn an_upload_shows_as_its_target_never_its_temporary() {
    let root = TempDir::new("wgrpc-upload");
    std::fs::create_dir(root.0.join("src")).unwrap();
    let d = daemon(&root, &[]);
    let mut c = client(d.addr).await;
    let mut s = watch(&mut c, "src", false).await.expect("watch");
    let up = root.0.join("src/up");
    let upload = |data: &'static [u8]| {
        common::Form::new()
            .meta(&serde_json::json!({ "path": up.to_str().unwrap() }))
            .file(data)
    };
    let r = d.upload(upload(b"one")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::create_dir(root.0.join("src/mid")).unwrap();
    let mut evs = until(&mut s, |e| is(e, FileEventType::Create, "src/mid")).await;
    evs.pop();
    let first = evs.len();
    let r = d.upload(upload(b"two")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    std::fs::create_dir(root.0.join("src/end")).unwrap();
    evs.extend(until(&mut s, |e| is(e, FileEventType::Create, "src/end")).await);
    for e in &evs {
        let name = e.path.rsplit('/').next().unwrap_or("");
        assert!(
            !name.starts_with(".execd-upload") && !name.starts_with('#'),
            "a temporary shown: {evs:#?}"
        );
        assert!(e.old_path.is_empty(), "{evs:#?}");
    }
    let fold = |evs: &[FileEvent]| {
        let mut kinds: Vec<(i32, String)> = Vec::new();
        for e in evs {
            let k = (e.r#type, e.path.clone());
            if kinds.last() != Some(&k) {
                kinds.push(k);
            }
        }
        kinds
    };
    let want = |w: &[(FileEventType, &str)]| -> Vec<(i32, String)> {
        w.iter().map(|(t, p)| (*t as i32, p.to_string())).collect()
    };
    assert_eq!(
        fold(&evs[..first]),
        want(&[
            (FileEventType::Create, "src/up"),
            (FileEventType::Write, "src/up")
        ]),
        "{evs:#?}"
    );
    assert_eq!(
        fold(&evs[first..]),
        want(&[
            (FileEventType::Write, "src/up"),
            (FileEventType::Create, "src/end")
        ]),
        "{evs:#?}"
    );
}
