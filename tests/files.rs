//! Black-box tests of the files and directories routes: the real binary over
//! real HTTP, each test in a fresh temporary directory.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{json, Value};

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mode_of(p: &str) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn meta(path: &str) -> Value {
    json!({"path": path, "owner": null, "group": null, "mode": 644})
}

/// Temporary files left behind by uploads in `dir`.
fn temps(dir: &TempDir) -> Vec<String> {
    dir.names()
        .into_iter()
        .filter(|n| n.starts_with(".execd-upload"))
        .collect()
}

#[tokio::test]
async fn sdk_shaped_chunked_upload_then_download() {
    let d = Daemon::start();
    let t = TempDir::new("updown");
    let target = t.join("sub/dir/hello.txt");
    let form = Form::new();
    let (tx, resp) = d.stream_upload(&form).await;
    // Parts arrive in small pieces, as the SDK's chunked generator sends them.
    let head = form.part_head("metadata", "metadata", "application/json");
    for piece in [
        head,
        meta(&target).to_string(),
        "\r\n".into(),
        form.part_head("file", "hello.txt", "text/plain; charset=utf-8"),
        "hello ".into(),
        "world\n".into(),
        "\r\n".into(),
        form.tail(),
    ] {
        tx.send(Bytes::from(piece)).await.unwrap();
    }
    drop(tx);
    let r = resp.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "hello world\n");
    assert_eq!(mode_of(&target), 0o644);
    assert!(temps(&t).is_empty());

    let r = d.get(&format!("/files/download?path={}", q(&target))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world\n");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("content-length"), Some("12"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(
        r.header("content-disposition"),
        Some("attachment; filename=\"hello.txt\"")
    );
    assert!(r
        .header("last-modified")
        .is_some_and(|v| v.ends_with("GMT")));
}

#[tokio::test]
async fn several_pairs_per_request_and_attributes() {
    let d = Daemon::start();
    let t = TempDir::new("pairs");
    let (a, b, c) = (t.join("a.bin"), t.join("b.txt"), t.join("c.txt"));
    std::fs::write(&c, "old").unwrap();
    std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o600)).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&c, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let form = Form::new()
        .meta(&json!({"path": a, "mode": 600}))
        .file(&[0, 1, 2, 255])
        .meta(&json!({"path": b, "mode": 755, "owner": null, "group": null}))
        .file(b"bee")
        // No mode or owner: those of the existing file stay.
        .meta(&json!({"path": c}))
        .file(b"new");
    let r = d.upload(form).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::read(&a).unwrap(), [0, 1, 2, 255]);
    assert_eq!(mode_of(&a), 0o600);
    assert_eq!(mode_of(&b), 0o755);
    assert_eq!(std::fs::read_to_string(&c).unwrap(), "new");
    assert_eq!(mode_of(&c), 0o600);
    if is_root() {
        assert_eq!(std::fs::metadata(&c).unwrap().uid(), NOBODY);
        // An owner by name is applied.
        let r = d
            .upload(
                Form::new()
                    .meta(&json!({"path": a, "owner": "nobody", "group": "0"}))
                    .file(b"x"),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let m = std::fs::metadata(&a).unwrap();
        assert_eq!((m.uid(), m.gid()), (NOBODY, 0));
    }
    assert!(temps(&t).is_empty());
}

#[tokio::test]
async fn upload_bad_inputs_are_clear_4xx_and_change_nothing() {
    let d = Daemon::start();
    let t = TempDir::new("badup");
    let keep = t.join("keep.txt");
    std::fs::write(&keep, "original").unwrap();
    std::fs::create_dir(t.join("adir")).unwrap();

    let r = d
        .request(
            Method::POST,
            "/files/upload",
            &[("content-type", "application/json")],
            "{}",
        )
        .await;
    r.assert_error(400, "INVALID_FILE");

    r_err(&d, Form::new(), 400, "INVALID_FILE").await;
    let cases: Vec<(Form, u16, &str)> = vec![
        (
            Form::new().meta(&json!({"mode": 644})).file(b"x"),
            400,
            "INVALID_FILE_METADATA",
        ),
        (
            Form::new()
                .part("metadata", "metadata", "application/json", b"{nope")
                .file(b"x"),
            400,
            "INVALID_FILE_METADATA",
        ),
        (
            Form::new().file(b"x").meta(&meta(&keep)),
            400,
            "INVALID_FILE_METADATA",
        ),
        (Form::new().meta(&meta(&keep)), 400, "INVALID_FILE"),
        (
            Form::new()
                .meta(&json!({"path": keep, "mode": 689}))
                .file(b"x"),
            400,
            "INVALID_REQUEST_BODY",
        ),
        (
            Form::new()
                .meta(&json!({"path": format!("{keep}\u{0}x")}))
                .file(b"x"),
            400,
            "INVALID_REQUEST_BODY",
        ),
        (
            Form::new()
                .meta(&json!({"path": "$EXECD_TEST_UNDEFINED_VAR/x"}))
                .file(b"x"),
            400,
            "INVALID_REQUEST_BODY",
        ),
        (
            Form::new()
                .meta(&json!({"path": keep, "owner": "no-such-user-xyz"}))
                .file(b"x"),
            400,
            "INVALID_REQUEST_BODY",
        ),
        // A file over a directory, and a file under a file.
        (
            Form::new().meta(&meta(&t.join("adir"))).file(b"x"),
            400,
            "INVALID_FILE",
        ),
        (
            Form::new()
                .meta(&meta(&t.join("keep.txt/below")))
                .file(b"x"),
            400,
            "INVALID_FILE",
        ),
    ];
    for (form, status, code) in cases {
        r_err(&d, form, status, code).await;
    }
    // A body that stops in the middle of a part.
    let form = Form::new();
    let mut full = Form::new().meta(&meta(&keep)).open_file();
    full.extend_from_slice(b"truncated");
    let r = d
        .request(
            Method::POST,
            "/files/upload",
            &[("content-type", &form.content_type())],
            full,
        )
        .await;
    r.assert_error(400, "INVALID_FILE");

    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "original");
    assert!(t.0.join("adir").is_dir());
    assert!(temps(&t).is_empty(), "{:?}", t.names());
}

async fn r_err(d: &Daemon, form: Form, status: u16, code: &str) {
    let r = d.upload(form).await;
    r.assert_error(status, code);
}

/// Sends the start of an upload by hand and hangs up in the middle of the file.
#[tokio::test]
async fn aborted_upload_leaves_old_file_and_no_temporary() {
    let d = Daemon::start();
    let t = TempDir::new("abort");
    let target = t.join("precious.txt");
    std::fs::write(&target, "old content").unwrap();
    let form = Form::new();
    let mut body = Form::new().meta(&meta(&target)).open_file();
    body.extend_from_slice(&vec![b'n'; 256 * 1024]);
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    write!(
        s,
        "POST /files/upload HTTP/1.1\r\nHost: x\r\nContent-Type: {}\r\nContent-Length: {}\r\n\r\n",
        form.content_type(),
        body.len() + 10 * 1024 * 1024
    )
    .unwrap();
    s.write_all(&body).unwrap();
    s.flush().unwrap();
    // The server has started writing a temporary file (an anonymous
    // O_TMPFILE one: it shows only among the daemon's descriptors)...
    let in_dir = format!("-> {}/", t.0.display());
    let writing = || d.fds().iter().any(|f| f.contains(&in_dir)) || !temps(&t).is_empty();
    eventually(Duration::from_secs(10), "temporary file appears", writing).await;
    // ...and the client goes away.
    drop(s);
    eventually(Duration::from_secs(10), "temporary file removed", || {
        !writing()
    })
    .await;
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "old content");
    assert_eq!(t.names(), ["precious.txt"]);
    // The daemon is fine.
    assert_eq!(d.get("/ping").await.status, 200);
}

#[tokio::test]
async fn full_disk_is_507_and_keeps_the_old_file() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let t = TempDir::new("full");
    let mnt = t.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    // execd runs in a mount namespace of its own, where a 512 KiB tmpfs is
    // mounted on `mnt`; nothing is mounted anywhere else.
    let mount = "mount -t tmpfs -o size=512k tmpfs \"$0\" && exec \"$@\"";
    let unshare = |cmd: &mut std::process::Command| {
        cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .args([mount, &mnt]);
    };
    let mut probe = std::process::Command::new("unshare");
    unshare(&mut probe);
    if !probe.arg("true").status().is_ok_and(|s| s.success()) {
        eprintln!("skipped: cannot mount a tmpfs in a private mount namespace here");
        return;
    }
    let mut cmd = std::process::Command::new("unshare");
    unshare(&mut cmd);
    cmd.arg(env!("CARGO_BIN_EXE_execd")).args([
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log-level",
        "4",
    ]);
    let d = Daemon::launch(cmd, &[], &[]);
    // The test sees that tmpfs through the daemon's root.
    let seen = format!("/proc/{}/root{mnt}", d.pid());
    let left = || {
        let mut v: Vec<String> = std::fs::read_dir(&seen)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let target = format!("{mnt}/f.bin");
    std::fs::write(format!("{seen}/f.bin"), "old").unwrap();
    let base = d.fds();

    // A file larger than the disk.
    let r = d
        .upload(Form::new().meta(&meta(&target)).file(&vec![7u8; 2 << 20]))
        .await;
    r.assert_error(507, "INSUFFICIENT_STORAGE");
    assert!(
        r.json()["message"].as_str().unwrap().contains("space"),
        "{}",
        r.text()
    );
    assert_eq!(
        std::fs::read_to_string(format!("{seen}/f.bin")).unwrap(),
        "old"
    );
    assert_eq!(left(), ["f.bin"]);

    // A disk that is already full: a small file does not fit either.
    let mut filler = std::fs::File::create(format!("{seen}/filler")).unwrap();
    let full = loop {
        if let Err(e) = filler.write_all(&[1u8; 4096]) {
            break e;
        }
    };
    assert_eq!(full.raw_os_error(), Some(libc::ENOSPC), "{full}");
    drop(filler);
    let small = format!("{mnt}/small.bin");
    let r = d
        .upload(Form::new().meta(&meta(&small)).file(&[5u8; 64 * 1024]))
        .await;
    r.assert_error(507, "INSUFFICIENT_STORAGE");
    assert_eq!(left(), ["f.bin", "filler"]);

    // Once space is freed, uploads work again, and nothing was left behind.
    let r = d
        .delete(&format!("/files?path={}", q(&format!("{mnt}/filler"))))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let data: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let r = d.upload(Form::new().meta(&meta(&target)).file(&data)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d.get(&format!("/files/download?path={}", q(&target))).await;
    assert!(r.body == data, "the new content");
    assert_eq!(left(), ["f.bin"]);
    d.fds_back_to(&base, Duration::from_secs(10)).await;
    assert_eq!(d.get("/ping").await.status, 200);
}

#[tokio::test]
async fn download_ranges_conditionals_and_lines() {
    let d = Daemon::start();
    let t = TempDir::new("range");
    let p = t.join("data.txt");
    std::fs::write(&p, "0123456789").unwrap();
    let url = format!("/files/download?path={}", q(&p));
    let get = |range: &'static str| {
        let url = url.clone();
        let d = &d;
        async move {
            d.request(Method::GET, &url, &[("range", range)], Bytes::new())
                .await
        }
    };
    let r = get("bytes=2-5").await;
    assert_eq!((r.status, r.text()), (206, "2345".into()));
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(r.header("content-length"), Some("4"));
    let r = get("bytes=7-").await;
    assert_eq!((r.status, r.text()), (206, "789".into()));
    let r = get("bytes=-3").await;
    assert_eq!((r.status, r.text()), (206, "789".into()));
    assert_eq!(r.header("content-range"), Some("bytes 7-9/10"));
    let r = get("bytes=0-0,5-6").await;
    assert_eq!(r.status, 206);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("multipart/byteranges; boundary="));
    let r = get("bytes=10-").await;
    r.assert_error(416, "INVALID_RANGE");
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    get("bytes=5-2").await.assert_error(416, "INVALID_RANGE");

    // Conditionals.
    let lm = d
        .get(&url)
        .await
        .header("last-modified")
        .unwrap()
        .to_string();
    let r = d
        .request(
            Method::GET,
            &url,
            &[("if-modified-since", &lm)],
            Bytes::new(),
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = d
        .request(
            Method::GET,
            &url,
            &[("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT")],
            Bytes::new(),
        )
        .await;
    assert_eq!((r.status, r.text()), (200, "0123456789".into()));

    // Line mode.
    let lp = t.join("lines.txt");
    std::fs::write(&lp, "one\r\ntwo\n\nfour\nfive").unwrap();
    let lines = |qs: &str| {
        let u = format!("/files/download?path={}&{qs}", q(&lp));
        let d = &d;
        async move { d.get(&u).await }
    };
    let r = lines("offset=2&limit=3").await;
    assert_eq!((r.status, r.text()), (200, "two\n\nfour".into()));
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(lines("offset=1&limit=1").await.text(), "one");
    assert_eq!(lines("offset=4").await.text(), "four\nfive");
    assert_eq!(lines("limit=2").await.text(), "one\ntwo");
    assert_eq!(lines("offset=99").await.text(), "");
    lines("offset=0")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    lines("limit=x")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    let r = d
        .request(
            Method::GET,
            &format!("/files/download?path={}&offset=1", q(&lp)),
            &[("range", "bytes=0-1")],
            Bytes::new(),
        )
        .await;
    r.assert_error(400, "INVALID_REQUEST_BODY");

    // Bad requests.
    d.get("/files/download")
        .await
        .assert_error(400, "MISSING_QUERY");
    d.get(&format!("/files/download?path={}", q(&t.join("nope"))))
        .await
        .assert_error(404, "FILE_NOT_FOUND");
    d.get(&format!("/files/download?path={}", q(&t.join(""))))
        .await
        .assert_error(400, "INVALID_FILE");
    d.get("/files/download?path=%2Ftmp%2Fa%00b")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    // An empty file downloads as empty.
    let e = t.join("empty");
    std::fs::write(&e, "").unwrap();
    let r = d.get(&format!("/files/download?path={}", q(&e))).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[tokio::test]
async fn info_types_modes_and_expansion() {
    let home = TempDir::new("home");
    let d = Daemon::start_with(
        &[],
        &[("HOME", &home.join("")), ("EXECD_T_DIR", &home.join(""))],
    );
    std::fs::write(home.join("f.txt"), "12345").unwrap();
    std::fs::set_permissions(home.join("f.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::create_dir(home.join("d")).unwrap();
    std::os::unix::fs::symlink("f.txt", home.join("link")).unwrap();
    let url = format!(
        "/files/info?path={}&path={}&path={}&path={}",
        q("~/f.txt"),
        q("$EXECD_T_DIR/d"),
        q("${HOME}/link"),
        q("Cargo.toml")
    );
    let r = d.get(&url).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let f = &v["~/f.txt"];
    assert_eq!(f["path"], home.join("f.txt"));
    assert_eq!(f["type"], "file");
    assert_eq!(f["size"], 5);
    assert_eq!(f["mode"], 640);
    for k in ["modified_at", "created_at"] {
        let s = f[k].as_str().unwrap();
        assert!(
            s.len() >= 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T',
            "{s}"
        );
    }
    assert!(f["owner"].is_string() && f["group"].is_string());
    assert_eq!(v["$EXECD_T_DIR/d"]["type"], "directory");
    assert_eq!(v["${HOME}/link"]["type"], "symlink");
    assert_eq!(v["${HOME}/link"]["size"], 5);
    let cwd = std::env::current_dir().unwrap().join("Cargo.toml");
    assert_eq!(v["Cargo.toml"]["path"], cwd.to_string_lossy().as_ref());
    if is_root() {
        assert_eq!(f["owner"], "root");
    }

    d.get("/files/info")
        .await
        .assert_error(400, "MISSING_QUERY");
    d.get(&format!("/files/info?path={}", q(&home.join("missing"))))
        .await
        .assert_error(404, "FILE_NOT_FOUND");
    d.get(&format!("/files/info?path={}", q("$NOPE_NOT_SET/x")))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
}

#[tokio::test]
async fn delete_files() {
    let d = Daemon::start();
    let t = TempDir::new("del");
    std::fs::write(t.join("a"), "").unwrap();
    std::fs::write(t.join("target"), "").unwrap();
    std::os::unix::fs::symlink(t.join("target"), t.join("link")).unwrap();
    std::os::unix::fs::symlink(t.join("gone"), t.join("dangling")).unwrap();
    std::fs::create_dir(t.join("dir")).unwrap();
    let r = d
        .delete(&format!(
            "/files?path={}&path={}&path={}&path={}",
            q(&t.join("a")),
            q(&t.join("missing")),
            q(&t.join("link")),
            q(&t.join("dangling"))
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(t.names(), ["dir", "target"]);
    d.delete(&format!("/files?path={}", q(&t.join("dir"))))
        .await
        .assert_error(400, "INVALID_FILE");
    assert!(t.0.join("dir").is_dir());
    d.delete("/files").await.assert_error(400, "MISSING_QUERY");
}

#[tokio::test]
async fn permissions() {
    let d = Daemon::start();
    let t = TempDir::new("perm");
    let (a, b) = (t.join("a"), t.join("b"));
    std::fs::write(&a, "").unwrap();
    std::fs::write(&b, "").unwrap();
    let r = d
        .post_json(
            "/files/permissions",
            &json!({&a: {"mode": 600, "owner": null, "group": null}, &b: {"mode": 751}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!((mode_of(&a), mode_of(&b)), (0o600, 0o751));
    if is_root() {
        let r = d
            .post_json("/files/permissions", &json!({&a: {"owner": "nobody"}}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let m = std::fs::metadata(&a).unwrap();
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o777), (NOBODY, 0, 0o600));
    }
    // Nothing changes when any entry is bad.
    for (body, status, code) in [
        (
            json!({&a: {"mode": 700}, &b: {"mode": 798}}),
            400,
            "INVALID_REQUEST_BODY",
        ),
        (
            json!({&a: {"mode": 700}, &b: {"owner": "no-such-user-xyz"}}),
            400,
            "INVALID_REQUEST_BODY",
        ),
        (json!({&a: {"mode": "rw"}}), 400, "INVALID_REQUEST_BODY"),
        (
            json!({t.join("missing"): {"mode": 700}}),
            404,
            "FILE_NOT_FOUND",
        ),
    ] {
        d.post_json("/files/permissions", &body)
            .await
            .assert_error(status, code);
    }
    assert_eq!((mode_of(&a), mode_of(&b)), (0o600, 0o751));
    let r = d
        .request(Method::POST, "/files/permissions", &[], Bytes::new())
        .await;
    r.assert_error(400, "INVALID_REQUEST_BODY");
}

#[tokio::test]
async fn move_files() {
    let d = Daemon::start();
    let t = TempDir::new("mv");
    std::fs::write(t.join("a"), "A").unwrap();
    std::fs::write(t.join("b"), "B").unwrap();
    std::fs::create_dir(t.join("dir")).unwrap();
    std::fs::write(t.join("dir/in"), "I").unwrap();
    let r = d
        .post_json(
            "/files/mv",
            &json!([{"src": t.join("a"), "dest": t.join("new/deep/a2")},
                    {"src": t.join("dir"), "dest": t.join("dir2")}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        std::fs::read_to_string(t.0.join("new/deep/a2")).unwrap(),
        "A"
    );
    assert_eq!(std::fs::read_to_string(t.0.join("dir2/in")).unwrap(), "I");
    d.post_json(
        "/files/mv",
        &json!([{"src": t.join("b"), "dest": t.join("dir2/in")}]),
    )
    .await
    .assert_error(409, "FILE_EXISTS");
    assert_eq!(std::fs::read_to_string(t.0.join("dir2/in")).unwrap(), "I");
    d.post_json(
        "/files/mv",
        &json!([{"src": t.join("zz"), "dest": t.join("yy")}]),
    )
    .await
    .assert_error(404, "FILE_NOT_FOUND");
    d.post_json("/files/mv", &json!([{"src": t.join("b")}]))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.post_json(
        "/files/mv",
        &json!([{"src": t.join("dir2"), "dest": t.join("dir2/sub")}]),
    )
    .await
    .assert_error(400, "INVALID_REQUEST_BODY");
    assert!(t.0.join("b").exists());
}

#[tokio::test]
async fn search_files() {
    let d = Daemon::start();
    let t = TempDir::new("search");
    let outside = TempDir::new("outside");
    std::fs::write(outside.0.join("secret.py"), "").unwrap();
    for f in ["a.py", "b.txt", "sub/c.py", "sub/deeper/d.py", "sub/e.PY"] {
        let p = t.0.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }
    std::os::unix::fs::symlink(&outside.0, t.0.join("escape")).unwrap();
    std::os::unix::fs::symlink(t.0.join("a.py"), t.0.join("link.py")).unwrap();
    let search = |pat: &str| {
        let u = format!("/files/search?path={}&pattern={}", q(&t.join("")), q(pat));
        let d = &d;
        async move { d.get(&u).await }
    };
    let r = search("*.py").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let found: Vec<(String, String)> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let rel: Vec<(&str, &str)> = found
        .iter()
        .map(|(p, k)| (p.strip_prefix(&t.join("")).unwrap(), k.as_str()))
        .collect();
    assert_eq!(
        rel,
        [
            ("a.py", "file"),
            ("link.py", "symlink"),
            ("sub/c.py", "file"),
            ("sub/deeper/d.py", "file")
        ]
    );
    assert_eq!(search("**/*.py").await.json().as_array().unwrap().len(), 4);
    assert_eq!(search("sub/*.py").await.json(), json!([]));
    assert_eq!(search("{b,c}.*").await.json().as_array().unwrap().len(), 2);
    // Default pattern: every non-directory (not the symlinked directory's contents).
    let all = d
        .get(&format!("/files/search?path={}", q(&t.join(""))))
        .await
        .json();
    assert_eq!(all.as_array().unwrap().len(), 7, "{all}");
    search("[a-")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.get("/files/search?pattern=*")
        .await
        .assert_error(400, "MISSING_QUERY");
    d.get(&format!("/files/search?path={}", q(&t.join("none"))))
        .await
        .assert_error(404, "FILE_NOT_FOUND");
}

/// A search or listing of a tree far larger than the daemon's memory bound
/// streams: every entry arrives, in order, and execd's peak RSS grows by a
/// fraction of the JSON it sent.
#[tokio::test]
async fn huge_searches_and_listings_stream_in_bounded_memory() {
    const DIRS: usize = 60;
    const PER_DIR: usize = 1000;
    let d = Daemon::start();
    let t = TempDir::new("huge-walk");
    let long = "n".repeat(180);
    for i in 0..DIRS {
        let dir = t.0.join(format!("d{i:03}"));
        std::fs::create_dir(&dir).unwrap();
        for j in 0..PER_DIR {
            std::fs::File::create(dir.join(format!("{long}-{j:04}.txt"))).unwrap();
        }
    }
    // Warm up (names database, thread pool) on a small search first.
    let small = format!("/files/search?path={}&pattern=*-0000.txt", q(&t.join("")));
    assert_eq!(d.get(&small).await.json().as_array().unwrap().len(), DIRS);
    let before = d.proc_kib("VmHWM:");

    let r = d
        .get(&format!(
            "/files/search?path={}&pattern=*.txt",
            q(&t.join(""))
        ))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
    let hits = r.json();
    let hits = hits.as_array().unwrap();
    assert_eq!(hits.len(), DIRS * PER_DIR);
    let expect = |n: usize| {
        t.join(&format!(
            "d{:03}/{long}-{:04}.txt",
            n / PER_DIR,
            n % PER_DIR
        ))
    };
    for n in [0, 1, PER_DIR - 1, PER_DIR, DIRS * PER_DIR - 1] {
        assert_eq!(hits[n]["path"], expect(n).as_str());
        assert_eq!(hits[n]["type"], "file");
    }

    let r = d
        .get(&format!(
            "/directories/list?path={}&depth=2",
            q(&t.join(""))
        ))
        .await;
    assert_eq!(r.status, 200);
    let listed = r.json().as_array().unwrap().len();
    assert_eq!(listed, DIRS * (PER_DIR + 1));
    let sent_kib = r.body.len() as u64 / 1024;

    let grew = d.proc_kib("VmHWM:").saturating_sub(before);
    assert!(sent_kib > 20 * 1024, "the listing is only {sent_kib} KiB");
    assert!(
        grew < 8 * 1024,
        "peak RSS grew by {grew} KiB for listings of {sent_kib} KiB"
    );
}

#[tokio::test]
async fn replace_contents() {
    let d = Daemon::start();
    let t = TempDir::new("replace");
    let (a, b) = (t.join("a.txt"), t.join("b.txt"));
    std::fs::write(&a, "foo bar foo").unwrap();
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o604)).unwrap();
    std::fs::write(&b, "nothing here").unwrap();
    let ino_b = std::fs::metadata(&b).unwrap().ino();
    let r = d
        .post_json(
            "/files/replace?verbose=true",
            &json!({&a: {"old": "foo", "new": "baz"}, &b: {"old": "zzz", "new": "y"}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({&a: {"replacedCount": 2}, &b: {"replacedCount": 0}})
    );
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "baz bar baz");
    assert_eq!(mode_of(&a), 0o604);
    assert_eq!(std::fs::metadata(&b).unwrap().ino(), ino_b, "untouched");
    let r = d
        .post_json("/files/replace", &json!({&a: {"old": "bar", "new": ""}}))
        .await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(std::fs::read_to_string(&a).unwrap(), "baz  baz");
    for (body, status, code) in [
        (
            json!({&a: {"old": "", "new": "x"}}),
            400,
            "INVALID_REQUEST_BODY",
        ),
        (
            json!({t.join("nope"): {"old": "a", "new": "b"}}),
            404,
            "FILE_NOT_FOUND",
        ),
        (
            json!({t.join(""): {"old": "a", "new": "b"}}),
            400,
            "INVALID_FILE",
        ),
        (json!({&a: {"old": "a"}}), 400, "INVALID_REQUEST_BODY"),
    ] {
        d.post_json("/files/replace", &body)
            .await
            .assert_error(status, code);
    }
    assert_eq!(t.names(), ["a.txt", "b.txt"]);
}

#[tokio::test]
async fn list_directories() {
    let d = Daemon::start();
    let t = TempDir::new("list");
    for f in ["b/x.txt", "b/c/y.txt", "a.txt"] {
        let p = t.0.join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "").unwrap();
    }
    std::os::unix::fs::symlink(t.0.join("b"), t.0.join("l")).unwrap();
    let list = |qs: String| {
        let d = &d;
        async move { d.get(&format!("/directories/list?{qs}")).await }
    };
    let rel = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                e["path"]
                    .as_str()
                    .unwrap()
                    .strip_prefix(&t.join(""))
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let root = q(&t.join(""));
    assert_eq!(
        rel(list(format!("path={root}")).await.json()),
        ["a.txt", "b", "l"]
    );
    assert_eq!(
        rel(list(format!("path={root}&depth=3")).await.json()),
        ["a.txt", "b", "b/c", "b/c/y.txt", "b/x.txt", "l"]
    );
    assert_eq!(list(format!("path={root}&depth=0")).await.json(), json!([]));
    list(format!("path={root}&depth=-1"))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    list(format!("path={root}&depth=x"))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    list(format!("path={}", q(&t.join("l"))))
        .await
        .assert_error(400, "INVALID_FILE");
    list(format!("path={}", q(&t.join("a.txt"))))
        .await
        .assert_error(400, "INVALID_FILE");
    list(format!("path={}", q(&t.join("zz"))))
        .await
        .assert_error(404, "FILE_NOT_FOUND");
    list(String::new()).await.assert_error(400, "MISSING_QUERY");
}

#[tokio::test]
async fn make_and_remove_directories() {
    let d = Daemon::start();
    let t = TempDir::new("mkdir");
    let (a, b) = (t.join("x/y/a"), t.join("b"));
    std::fs::create_dir(&b).unwrap();
    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o711)).unwrap();
    let r = d
        .post_json(
            "/directories",
            &json!({&a: {"mode": 700, "owner": null, "group": null}, &b: {"mode": 755}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mode_of(&a), 0o700);
    assert_eq!(mode_of(&t.join("x/y")), 0o755);
    // An existing directory is left as it is.
    assert_eq!(mode_of(&b), 0o711);
    std::fs::write(t.join("file"), "").unwrap();
    d.post_json("/directories", &json!({t.join("file"): {"mode": 755}}))
        .await
        .assert_error(400, "INVALID_FILE");
    d.post_json("/directories", &json!({t.join("file/sub"): {"mode": 755}}))
        .await
        .assert_error(400, "INVALID_FILE");
    d.post_json("/directories", &json!({t.join("m"): {"mode": 778}}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");

    let r = d
        .delete(&format!(
            "/directories?path={}&path={}",
            q(&t.join("x")),
            q(&t.join("missing"))
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(t.names(), ["b", "file"]);
    d.delete(&format!("/directories?path={}", q(&t.join("file"))))
        .await
        .assert_error(400, "INVALID_FILE");
    d.delete("/directories")
        .await
        .assert_error(400, "MISSING_QUERY");
    d.delete("/directories?path=/")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
}

/// Names with spaces, quotes, `#`, `%`, non-ASCII and newlines survive every route.
#[tokio::test]
async fn odd_names_round_trip() {
    let d = Daemon::start();
    let t = TempDir::new("odd");
    for name in [
        "a b.txt",
        "q\"uote's.txt",
        "h#sh%20.txt",
        "日本語 ü.txt",
        "new\nline.txt",
    ] {
        let p = t.join(name);
        let r = d
            .upload(Form::new().meta(&meta(&p)).file(name.as_bytes()))
            .await;
        assert_eq!(r.status, 200, "{name:?}: {}", r.text());
        assert_eq!(std::fs::read(&p).unwrap(), name.as_bytes());

        let r = d.get(&format!("/files/download?path={}", q(&p))).await;
        assert_eq!(r.body, name.as_bytes(), "{name:?}");
        let cd = r.header("content-disposition").unwrap();
        let decoded = match cd.split_once("filename*=UTF-8''") {
            Some((_, enc)) => percent_decode(enc),
            None => cd
                .strip_prefix("attachment; filename=\"")
                .and_then(|s| s.strip_suffix('"'))
                .unwrap()
                .to_string(),
        };
        assert_eq!(decoded, name);

        let v = d.get(&format!("/files/info?path={}", q(&p))).await.json();
        assert_eq!(v[&p]["path"], p);
        let r = d
            .post_json("/files/permissions", &json!({&p: {"mode": 600}}))
            .await;
        assert_eq!((r.status, mode_of(&p)), (200, 0o600), "{name:?}");
        let r = d
            .post_json(
                "/files/replace?verbose=true",
                &json!({&p: {"old": ".txt", "new": "!"}}),
            )
            .await;
        assert_eq!(r.json()[&p]["replacedCount"], 1, "{name:?}");
        let moved = format!("{p}.moved");
        let r = d
            .post_json("/files/mv", &json!([{"src": p, "dest": moved}]))
            .await;
        assert_eq!(r.status, 200, "{name:?}");
        let found = d
            .get(&format!(
                "/files/search?path={}&pattern={}",
                q(&t.join("")),
                q(&format!("{name}.moved"))
            ))
            .await
            .json();
        assert_eq!(found[0]["path"], moved, "{name:?}");
        let listed = d
            .get(&format!("/directories/list?path={}", q(&t.join(""))))
            .await
            .json();
        assert!(listed
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == moved.as_str()));
        let r = d.delete(&format!("/files?path={}", q(&moved))).await;
        assert_eq!(r.status, 200);
        let dir = t.join(&format!("dir {name}"));
        let r = d
            .post_json("/directories", &json!({&dir: {"mode": 755}}))
            .await;
        assert_eq!(r.status, 200);
        let r = d.delete(&format!("/directories?path={}", q(&dir))).await;
        assert_eq!(r.status, 200);
    }
    assert!(t.names().is_empty(), "{:?}", t.names());
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

/// Identity-scoped routes act with another user's permissions; the daemon
/// itself keeps its own.
#[tokio::test]
async fn identity_scoped_access() {
    if !is_root() {
        eprintln!("skipped: needs root to act as another uid");
        return;
    }
    let d = Daemon::start();
    let t = TempDir::new("ident");
    std::fs::set_permissions(&t.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = t.join("secret.txt");
    std::fs::write(&secret, "root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mine = t.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::os::unix::fs::chown(&mine, Some(NOBODY), Some(NOBODY)).unwrap();
    let closed = t.join("mine/closed");
    std::fs::create_dir(&closed).unwrap();
    std::fs::write(t.0.join("mine/closed/hidden.txt"), "").unwrap();
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(t.0.join("mine/open.txt"), "").unwrap();
    let pre = format!("/v1/filesystem/{NOBODY}/{NOBODY}");

    // Reading someone else's file: 403 that says why.
    let r = d
        .get(&format!("{pre}/files/download?path={}", q(&secret)))
        .await;
    r.assert_error(403, "PERMISSION_DENIED");
    let msg = r.json()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("Permission denied") && msg.contains("uid 65534"),
        "{msg}"
    );
    // Writing into a directory the user may not write.
    let r = d
        .upload_to(
            &format!("{pre}/files/upload"),
            Form::new().meta(&meta(&t.join("new.txt"))).file(b"x"),
        )
        .await;
    r.assert_error(403, "PERMISSION_DENIED");
    assert!(!t.0.join("new.txt").exists());
    d.delete(&format!("{pre}/files?path={}", q(&secret)))
        .await
        .assert_error(403, "PERMISSION_DENIED");
    d.post_json(
        &format!("{pre}/files/permissions"),
        &json!({&secret: {"mode": 644}}),
    )
    .await
    .assert_error(403, "PERMISSION_DENIED");
    d.post_json(
        &format!("{pre}/files/replace"),
        &json!({&secret: {"old": "root", "new": "x"}}),
    )
    .await
    .assert_error(403, "PERMISSION_DENIED");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "root only");
    assert_eq!(mode_of(&secret), 0o600);

    // In its own directory the user can write, and owns what it creates.
    let own = t.join("mine/own.txt");
    let r = d
        .upload_to(
            &format!("{pre}/files/upload"),
            Form::new().meta(&meta(&own)).file(b"mine"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = std::fs::metadata(&own).unwrap();
    assert_eq!((m.uid(), m.gid()), (NOBODY, NOBODY));
    let r = d
        .post_json(
            &format!("{pre}/directories"),
            &json!({t.join("mine/sub"): {"mode": 700}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::metadata(t.join("mine/sub")).unwrap().uid(), NOBODY);
    let r = d
        .get(&format!("{pre}/files/download?path={}", q(&own)))
        .await;
    assert_eq!(r.text(), "mine");
    // Chown to someone else is refused.
    d.post_json(
        &format!("{pre}/files/permissions"),
        &json!({&own: {"owner": "root"}}),
    )
    .await
    .assert_error(403, "PERMISSION_DENIED");

    // Search and list skip what the user cannot read, and go on.
    let found = d
        .get(&format!(
            "{pre}/files/search?path={}&pattern=*.txt",
            q(&mine)
        ))
        .await;
    assert_eq!(found.status, 200, "{}", found.text());
    let names: Vec<String> = found
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap().rsplit('/').next().unwrap())
        .map(str::to_string)
        .collect();
    assert_eq!(names, ["open.txt", "own.txt"]);
    let listed = d
        .get(&format!("{pre}/directories/list?path={}&depth=5", q(&mine)))
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(
        listed.json().as_array().unwrap().len(),
        4,
        "{}",
        listed.text()
    );
    d.get(&format!("{pre}/directories/list?path={}", q(&closed)))
        .await
        .assert_error(403, "PERMISSION_DENIED");
    let r = d.get(&format!("{pre}/files/info?path={}", q(&own))).await;
    assert_eq!(r.json()[&own]["owner"], "nobody");
    let r = d
        .post_json(
            &format!("{pre}/files/mv"),
            &json!([{"src": own, "dest": t.join("stolen")}]),
        )
        .await;
    r.assert_error(403, "PERMISSION_DENIED");
    let r = d
        .delete(&format!(
            "{pre}/directories?path={}",
            q(&t.join("mine/sub"))
        ))
        .await;
    assert_eq!(r.status, 200);

    // The daemon itself still has its own identity.
    let r = d.get(&format!("/files/download?path={}", q(&secret))).await;
    assert_eq!(r.text(), "root only");
    d.get("/v1/filesystem/x/0/files/info?path=/")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.get("/v1/filesystem/4294967295/0/files/info?path=/")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
}

/// A cheap 64-bit checksum over whole words (the length is a multiple of 8).
#[derive(Default)]
struct Sum {
    h: u64,
    tail: Vec<u8>,
}

impl Sum {
    fn update(&mut self, mut data: &[u8]) {
        if !self.tail.is_empty() {
            let need = 8 - self.tail.len();
            let take = need.min(data.len());
            self.tail.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.tail.len() == 8 {
                let w = u64::from_le_bytes(self.tail[..].try_into().unwrap());
                self.word(w);
                self.tail.clear();
            }
        }
        let mut chunks = data.chunks_exact(8);
        for c in &mut chunks {
            self.word(u64::from_le_bytes(c.try_into().unwrap()));
        }
        self.tail.extend_from_slice(chunks.remainder());
    }

    fn word(&mut self, w: u64) {
        self.h = (self.h ^ w).wrapping_mul(0x100_0000_01b3).rotate_left(29);
    }
}

/// 1 MiB of pseudo-random bytes, different for every `i`.
fn block(i: u64) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ i.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let mut out = Vec::with_capacity(1 << 20);
    for _ in 0..(1 << 17) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

/// 1 GiB up and down, streamed; checksums match and execd's memory stays flat.
#[tokio::test]
async fn one_gib_upload_and_download_in_bounded_memory() {
    const MIB: u64 = 1 << 20;
    let total: u64 = std::env::var("EXECD_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let d = Daemon::start();
    let t = TempDir::new("big");
    let target = t.join("big.bin");
    let base = d.proc_kib("VmRSS:");
    let form = Form::new();
    let (tx, resp) = d.stream_upload(&form).await;
    let head = Form::new().meta(&meta(&target)).open_file();
    tx.send(Bytes::from(head)).await.unwrap();
    let mut sent = Sum::default();
    let mut peak_up = 0;
    // A few distinct blocks, cycled with the index mixed in, keep generation cheap.
    let blocks: Vec<Vec<u8>> = (0..4).map(block).collect();
    for i in 0..total {
        let mut b = blocks[(i % 4) as usize].clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        sent.update(&b);
        tx.send(Bytes::from(b)).await.unwrap();
        if i % 16 == 0 {
            peak_up = peak_up.max(d.proc_kib("VmRSS:"));
        }
    }
    tx.send(Bytes::from(format!("\r\n{}", form.tail())))
        .await
        .unwrap();
    drop(tx);
    let r = resp.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::metadata(&target).unwrap().len(), total * MIB);

    let resp = d
        .send(
            Method::GET,
            &format!("/files/download?path={}", q(&target)),
            &[],
            Bytes::new(),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-length"].to_str().unwrap(),
        (total * MIB).to_string()
    );
    let mut body = resp.into_body();
    let mut got = Sum::default();
    let (mut n, mut len, mut peak_down) = (0u64, 0u64, 0);
    while let Some(f) = body.frame().await {
        if let Ok(data) = f.unwrap().into_data() {
            len += data.len() as u64;
            got.update(&data);
            n += 1;
            if n % 64 == 0 {
                peak_down = peak_down.max(d.proc_kib("VmRSS:"));
            }
        }
    }
    assert_eq!(len, total * MIB);
    assert_eq!(got.h, sent.h, "checksum of the downloaded file");
    let hwm = d.proc_kib("VmHWM:");
    eprintln!(
        "execd RSS (KiB): before {base}, peak during upload {peak_up}, during download {peak_down}, high-water mark {hwm}"
    );
    assert!(
        hwm < base + 16 * 1024,
        "execd's peak RSS grew from {base} KiB to {hwm} KiB moving {total} MiB"
    );
    // Nothing else was written beside the target.
    assert_eq!(t.names(), ["big.bin"]);
    let mut f = std::fs::File::open(&target).unwrap();
    let mut first = [0u8; 16];
    f.read_exact(&mut first).unwrap();
    assert_eq!(&first[..8], &0u64.to_le_bytes());
}

/// Clients that stop reading downloads (more of them than the blocking
/// pool has threads) hold no thread, so other file operations go on.
#[tokio::test]
async fn stalled_downloads_do_not_starve_other_file_work() {
    let d = Daemon::start();
    let t = TempDir::new("stall");
    let big = t.join("big.bin");
    std::fs::write(&big, vec![1u8; 16 << 20]).unwrap();
    let url = format!("/files/download?path={}", q(&big));
    let mut stalled = Vec::new();
    for _ in 0..80 {
        let r = d.send(Method::GET, &url, &[], Bytes::new()).await;
        assert_eq!(r.status(), 200);
        // The body is never read.
        stalled.push(r);
    }
    let info = format!("/files/info?path={}", q(&big));
    let r = tokio::time::timeout(Duration::from_secs(30), d.get(&info))
        .await
        .expect("info answered while 80 downloads are stalled");
    assert_eq!(r.status, 200);
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        d.upload(Form::new().meta(&meta(&t.join("small"))).file(b"ok")),
    )
    .await
    .expect("upload answered while 80 downloads are stalled");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(stalled);
}

/// A daemon that is not root can act only as itself, and says so.
#[tokio::test]
async fn identity_routes_without_root_refuse_other_users() {
    if !is_root() {
        eprintln!("skipped: needs root to start the daemon as another user");
        return;
    }
    use std::os::unix::process::CommandExt;
    let t = TempDir::new("unpriv");
    std::os::unix::fs::chown(&t.0, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_execd"));
    cmd.args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "4"])
        .args(["--data-dir", &t.join("data")])
        .uid(NOBODY)
        .gid(NOBODY);
    let d = Daemon::launch(cmd, &[], &[("HOME", &t.join(""))]);
    let r = d
        .get(&format!(
            "/v1/filesystem/0/0/files/info?path={}",
            q(&t.join(""))
        ))
        .await;
    r.assert_error(403, "PERMISSION_DENIED");
    assert!(r.text().contains("not root"), "{}", r.text());
    // As itself, it works.
    let f = t.join("mine.txt");
    let r = d
        .upload_to(
            &format!("/v1/filesystem/{NOBODY}/{NOBODY}/files/upload"),
            Form::new().meta(&meta(&f)).file(b"hi"),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(std::fs::metadata(&f).unwrap().uid(), NOBODY);
}

/// Sends `head` and then `filler` bytes up to `total` bytes of body, as a
/// client would stream them (64 KiB at a time, never held whole), while
/// reading the answer. Returns the answer's status (0 if the connection
/// ended without one) and its text.
async fn stream_body(
    d: &Daemon,
    path: &str,
    method: &str,
    ctype: &str,
    head: &[u8],
    filler: u8,
    total: usize,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(d.addr)
        .await
        .expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {total}\r\n\r\n",
        d.addr
    );
    let head = head.to_vec();
    let writer = tokio::spawn(async move {
        wr.write_all(request.as_bytes()).await?;
        wr.write_all(&head).await?;
        let chunk = vec![filler; 64 * 1024];
        let mut left = total - head.len();
        while left > 0 {
            let n = left.min(chunk.len());
            wr.write_all(&chunk[..n]).await?;
            left -= n;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // One answer is all we want; its body is a small envelope.
                let text = String::from_utf8_lossy(&answer);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
        }
    }
    writer.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// Issue 15, item 6: a 200 MiB form with no delimiter, or whose part header
/// never ends, is refused with a 400 envelope once past the bound, and the
/// daemon's peak memory hardly moves (it grew by the whole body before).
#[tokio::test]
async fn multipart_preamble_and_part_headers_are_bounded() {
    const TOTAL: usize = 200 << 20;
    let d = Daemon::start();
    let t = TempDir::new("formbound");
    // Warm up: one ordinary upload, so what follows measures only the forms.
    let r = d
        .upload(Form::new().meta(&meta(&t.join("warm"))).file(b"x"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let form = Form::new();
    let ct = form.content_type();
    let before = d.proc_kib("VmHWM");

    // No delimiter at all.
    let (status, text) = stream_body(&d, "/files/upload", "POST", &ct, b"", b'a', TOTAL).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("INVALID_FILE"), "{text}");
    assert!(text.contains("delimiter"), "{text}");

    // A part header that never ends.
    let head = format!(
        "--{}\r\nContent-Disposition: form-data; name=\"file\"\r\nX-Pad: ",
        form.boundary
    );
    let (status, text) = stream_body(
        &d,
        "/files/upload",
        "POST",
        &ct,
        head.as_bytes(),
        b'a',
        TOTAL,
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("headers exceed"), "{text}");

    let grown = d.proc_kib("VmHWM").saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "execd's peak RSS grew by {grown} KiB for two refused forms"
    );
    assert!(temps(&t).is_empty());
    // The daemon still serves.
    let r = d.get("/ping").await;
    assert_eq!(r.status, 200);
}

/// The same bound on the other multipart routes: agent-sandbox `/upload`
/// and sandboxd `PUT /v1/files` (the `file` part is never reached).
#[tokio::test]
async fn multipart_bound_holds_on_every_upload_route() {
    let t = TempDir::new("formbound2");
    let base = t.0.to_string_lossy().into_owned();
    let d = Daemon::start_with(&["--agent-sandbox-base-dir", &base], &[]);
    let form = Form::new();
    let ct = form.content_type();
    for (method, path) in [("POST", "/upload"), ("PUT", "/v1/files/f.txt")] {
        let (status, text) = stream_body(&d, path, method, &ct, b"", b'a', 8 << 20).await;
        assert_eq!(status, 400, "{method} {path}: {text}");
        assert!(text.contains("delimiter"), "{method} {path}: {text}");
    }
    assert!(t.names().is_empty(), "{:?}", t.names());
}

/// At most one `metadata` part waits for its file: a second one in a row is
/// refused (a client could queue any number before).
#[tokio::test]
async fn a_metadata_part_must_be_followed_by_its_file() {
    let d = Daemon::start();
    let t = TempDir::new("metaq");
    let (a, b) = (t.join("a"), t.join("b"));
    let r = d
        .upload(
            Form::new()
                .meta(&meta(&a))
                .meta(&meta(&b))
                .file(b"1")
                .file(b"2"),
        )
        .await;
    r.assert_error(400, "INVALID_FILE_METADATA");
    assert!(t.names().is_empty(), "{:?}", t.names());
}

/// Several ranges: `multipart/byteranges` (RFC 9110 §14.6), one part per
/// range with its own `Content-Range`, sorted, overlapping and adjacent
/// ranges merged, unsatisfiable ones left out; all unsatisfiable is 416;
/// more than 16 ranges get the whole file.
#[tokio::test]
async fn download_multiple_ranges_as_multipart_byteranges() {
    let d = Daemon::start();
    let t = TempDir::new("multirange");
    let p = t.join("data.txt");
    std::fs::write(&p, "0123456789").unwrap();
    let url = format!("/files/download?path={}", q(&p));
    let get = |range: String| {
        let url = url.clone();
        let d = &d;
        async move {
            d.request(Method::GET, &url, &[("range", &range)], Bytes::new())
                .await
        }
    };
    let multipart = |r: &Resp, parts: &[(&str, &str)]| {
        assert_eq!(r.status, 206, "{}", r.text());
        let ct = r.header("content-type").unwrap();
        let boundary = ct
            .strip_prefix("multipart/byteranges; boundary=")
            .unwrap_or_else(|| panic!("{ct}"));
        let mut want = String::new();
        for (i, (range, data)) in parts.iter().enumerate() {
            if i > 0 {
                want.push_str("\r\n");
            }
            want.push_str(&format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes {range}/10\r\n\r\n{data}"
            ));
        }
        want.push_str(&format!("\r\n--{boundary}--\r\n"));
        assert_eq!(r.text(), want);
        assert_eq!(r.header("content-length"), Some(&*want.len().to_string()));
        assert_eq!(r.header("content-range"), None);
    };

    multipart(
        &get("bytes=0-0,5-6".into()).await,
        &[("0-0", "0"), ("5-6", "56")],
    );
    // Out of order, overlapping, suffix: sorted and merged.
    multipart(
        &get("bytes=8-, 1-3,0-1, 2-2,-1".into()).await,
        &[("0-3", "0123"), ("8-9", "89")],
    );
    // Adjacent ranges merge into one part: a plain 206.
    let r = get("bytes=0-1,2-3".into()).await;
    assert_eq!((r.status, r.text()), (206, "0123".into()));
    assert_eq!(r.header("content-range"), Some("bytes 0-3/10"));
    // Unsatisfiable ones are left out...
    let r = get("bytes=2-3,50-60".into()).await;
    assert_eq!((r.status, r.text()), (206, "23".into()));
    assert_eq!(r.header("content-range"), Some("bytes 2-3/10"));
    multipart(
        &get("bytes=1-1,50-,3-3".into()).await,
        &[("1-1", "1"), ("3-3", "3")],
    );
    // ...and when none is left, 416.
    let r = get("bytes=50-,60-70".into()).await;
    r.assert_error(416, "INVALID_RANGE");
    assert_eq!(r.header("content-range"), Some("bytes */10"));
    // A bad one spoils the set.
    get("bytes=0-1,x-y".into())
        .await
        .assert_error(416, "INVALID_RANGE");
    // More than 16 ranges: the whole file.
    let many: Vec<String> = (0..17).map(|i| format!("{}-{}", i % 10, i % 10)).collect();
    let r = get(format!("bytes={}", many.join(","))).await;
    assert_eq!((r.status, r.text()), (200, "0123456789".into()));
    let sixteen = (0..16)
        .map(|i| format!("{}-{}", i % 10, i % 10))
        .collect::<Vec<_>>();
    let r = get(format!("bytes={}", sixteen.join(","))).await;
    assert_eq!(
        (r.status, r.text()),
        (206, "0123456789".into()),
        "merged into one"
    );
}

/// `HEAD` on a download: GET's status and headers, `Content-Length`
/// included, and no body; also for ranges and the agent-sandbox route.
#[tokio::test]
async fn head_on_download_gives_the_headers_without_a_body() {
    let d = Daemon::start();
    let t = TempDir::new("head");
    let p = t.join("data.txt");
    std::fs::write(&p, "0123456789").unwrap();
    let url = format!("/files/download?path={}", q(&p));
    let r = d.request(Method::HEAD, &url, &[], Bytes::new()).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("10"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert!(r.header("last-modified").is_some());
    assert!(r.header("content-disposition").is_some());
    let r = d
        .request(Method::HEAD, &url, &[("range", "bytes=2-5")], Bytes::new())
        .await;
    assert_eq!(r.status, 206);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-range"), Some("bytes 2-5/10"));
    assert_eq!(r.header("content-length"), Some("4"));
    let missing = format!("/files/download?path={}", q(&t.join("missing")));
    let r = d.request(Method::HEAD, &missing, &[], Bytes::new()).await;
    assert_eq!(r.status, 404);

    // The identity-scoped route too.
    let url = format!("/v1/filesystem/0/0/files/download?path={}", q(&p));
    let r = d.request(Method::HEAD, &url, &[], Bytes::new()).await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("10"));

    // The agent-sandbox python-runtime route.
    let d = Daemon::start_with(&["--agent-sandbox-base-dir", &t.join("")], &[]);
    let r = d
        .request(Method::HEAD, "/download/data.txt", &[], Bytes::new())
        .await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.header("content-length"), Some("10"));
}
