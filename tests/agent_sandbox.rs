//! kubernetes-sigs/agent-sandbox APIs, black-box: the python-runtime routes
//! and the sandboxd REST routes, including every confinement case.

mod common;

use std::time::{Duration, Instant};

use common::{Daemon, Form, TempDir};
use http::Method;
use serde_json::json;

fn daemon(dir: &TempDir) -> Daemon {
    Daemon::start_with(
        &["--agent-sandbox-base-dir", &dir.join("")],
        &[
            ("SANDBOX_ID", "sb-1"),
            ("SANDBOX_TEST_VISIBLE", "yes"),
            ("SANDBOX_API_TOKEN", "hidden"),
        ],
    )
}

/// A base dir with `sub/f.txt`, a symlink out (`etclink -> /etc`), one in,
/// a relative one climbing out, and a broken one.
fn tree(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    std::fs::create_dir_all(d.0.join("sub")).unwrap();
    std::fs::write(d.0.join("sub/f.txt"), b"hello").unwrap();
    std::os::unix::fs::symlink("/etc", d.0.join("etclink")).unwrap();
    std::os::unix::fs::symlink("sub/f.txt", d.0.join("inlink")).unwrap();
    std::os::unix::fs::symlink("../..", d.0.join("sub/up")).unwrap();
    std::os::unix::fs::symlink("nowhere", d.0.join("broken")).unwrap();
    d
}

fn assert_denied(r: &common::Resp) {
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["message"], "Access denied");
}

#[tokio::test]
async fn runtime_root_and_execute() {
    let dir = tree("as-exec");
    let d = daemon(&dir);
    let r = d.get("/").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"status": "ok", "message": "Sandbox Runtime is active."})
    );

    // A shell line, in the base directory, with SDK router headers ignored.
    let r = d
        .request(
            Method::POST,
            "/execute",
            &[
                ("content-type", "application/json"),
                ("x-sandbox-id", "local"),
                ("x-sandbox-timeout", "60"),
            ],
            json!({"command": "echo a | wc -l; pwd; echo err >&2; exit 3"}).to_string(),
        )
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let base = std::fs::canonicalize(&dir.0).unwrap();
    assert_eq!(v["stdout"], format!("1\n{}\n", base.display()), "{v}");
    assert_eq!(v["stderr"], "err\n");
    assert_eq!(v["exit_code"], 3);
    assert_eq!(v["timed_out"], false);

    // Killed by a signal: minus the signal number.
    let v = d
        .post_json("/execute", &json!({"command": "kill -9 $$"}))
        .await
        .json();
    assert_eq!(v["exit_code"], -9);

    // Non-UTF-8 output does not fail the call.
    let v = d
        .post_json("/execute", &json!({"command": "printf 'a\\377b'"}))
        .await
        .json();
    assert_eq!(v["stdout"], "a\u{fffd}b");

    // Missing command: 422.
    let r = d.post_json("/execute", &json!({"cmd": "x"})).await;
    assert_eq!(r.status, 422);
}

#[tokio::test]
async fn execute_timeout_kills_the_group_and_keeps_output() {
    let dir = TempDir::new("as-timeout");
    let d = daemon(&dir);
    let pidfile = dir.join("child.pid");
    let started = Instant::now();
    let v = d
        .post_json(
            "/execute",
            &json!({
                "command": format!("echo before; sleep 30 & echo $! > {pidfile}; wait"),
                "timeout_seconds": 0.5
            }),
        )
        .await
        .json();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(v["timed_out"], true, "{v}");
    assert_eq!(v["exit_code"], 124);
    assert_eq!(v["stdout"], "before\n");
    assert!(v["stderr"].as_str().unwrap().contains("timed out"));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    common::eventually(Duration::from_secs(5), "grandchild killed", || {
        !common::alive(pid)
    })
    .await;

    // The default limit comes from SANDBOX_EXEC_TIMEOUT_SECONDS.
    let d2 = Daemon::start_with(
        &["--agent-sandbox-base-dir", &dir.join("")],
        &[("SANDBOX_EXEC_TIMEOUT_SECONDS", "0.3")],
    );
    let v = d2
        .post_json("/execute", &json!({"command": "sleep 20"}))
        .await
        .json();
    assert_eq!(v["timed_out"], true);
}

#[tokio::test]
async fn execute_output_is_capped_with_a_marker() {
    let dir = TempDir::new("as-cap");
    let d = daemon(&dir);
    let v = d
        .post_json(
            "/execute",
            &json!({"command": "head -c 3000000 /dev/zero | tr '\\0' x"}),
        )
        .await
        .json();
    let out = v["stdout"].as_str().unwrap();
    assert!(out.len() < 1_100_000);
    assert!(
        out.ends_with("…[output truncated: 1951424 bytes omitted]\n"),
        "{}",
        &out[out.len() - 60..]
    );
    assert_eq!(v["exit_code"], 0);
}

#[tokio::test]
async fn runtime_files() {
    let dir = tree("as-files");
    let d = daemon(&dir);

    // Upload: the filename is the destination, parents are created.
    let form = Form::new().part(
        "file",
        "new/dir/a b.txt",
        "application/octet-stream",
        b"data!",
    );
    let r = d.upload_to("/upload", form).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("uploaded successfully"));
    assert_eq!(
        std::fs::read(dir.0.join("new/dir/a b.txt")).unwrap(),
        b"data!"
    );
    // Overwrite.
    let form = Form::new().part("file", "new/dir/a b.txt", "text/plain", b"v2");
    assert_eq!(d.upload_to("/upload", form).await.status, 200);

    // Download, with %2F and a space, decoded once.
    let r = d.get("/download/new%2Fdir%2Fa%20b.txt").await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"v2");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(d.get("/download/new/dir/a%20b.txt").await.body, "v2");
    // A literal % in a name: %25 decodes to % once, not twice.
    std::fs::write(dir.0.join("p%41.txt"), b"pct").unwrap();
    assert_eq!(d.get("/download/p%2541.txt").await.body, "pct");
    let r = d.get("/download/missing.txt").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "File not found");
    assert_eq!(d.get("/download/sub").await.status, 404);
    assert_eq!(d.get("/download/inlink").await.body, "hello");

    // List: a bare array, strict types, broken and escaping links left out.
    let r = d.get("/list/").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    let mut names: Vec<(String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert!(e["mod_time"].as_f64().unwrap() > 0.0);
            assert!(e["size"].is_u64());
            (
                e["name"].as_str().unwrap().to_string(),
                e["type"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            ("inlink".into(), "file".into()),
            ("new".into(), "directory".into()),
            ("p%41.txt".into(), "file".into()),
            ("sub".into(), "directory".into()),
        ]
    );
    let v = d.get("/list/sub").await.json();
    assert_eq!(v.as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v[0]["size"], 5);
    let r = d.get("/list/sub%2Ff.txt").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["message"], "Path is not a directory");
    assert_eq!(d.get("/list/nope").await.status, 404);

    // Exists echoes the decoded path; "" and "." are the base.
    assert_eq!(
        d.get("/exists/").await.json(),
        json!({"path": "", "exists": true})
    );
    assert_eq!(
        d.get("/exists/.").await.json(),
        json!({"path": ".", "exists": true})
    );
    assert_eq!(
        d.get("/exists/does_not_exist").await.json(),
        json!({"path": "does_not_exist", "exists": false})
    );
    assert_eq!(
        d.get("/exists/new%2Fdir%2Fa%20b.txt").await.json(),
        json!({"path": "new/dir/a b.txt", "exists": true})
    );
    assert_eq!(d.get("/exists/broken").await.json()["exists"], false);

    // HEAD is not a route here (as the reference); nor a trailing slash redirect.
    assert_eq!(d.get("/execute/").await.status, 404);
}

#[tokio::test]
async fn runtime_confinement() {
    let dir = tree("as-confine");
    let d = daemon(&dir);
    for p in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2F..%2Fetc%2Fpasswd",
        "%2E%2E%2Fx",
        "..",
        "foo%2F..%2F..%2Fbar",
        "etclink%2Fpasswd",
        "etclink",
        "sub%2Fup%2Fx",
    ] {
        for route in ["/exists/", "/download/", "/list/"] {
            let r = d.get(&format!("{route}{p}")).await;
            assert_denied(&r);
        }
    }
    // An absolute path is re-rooted under the base, as the reference.
    assert_eq!(d.get("/download/%2Fsub%2Ff.txt").await.body, "hello");
    // Uploads: `..`, absolute escape, through an escaping symlink.
    for name in [
        "../../unsafe_upload.txt",
        "/../x.txt",
        "etclink/x.txt",
        "sub/up/x.txt",
    ] {
        let form = Form::new().part("file", name, "text/plain", b"x");
        let r = d.upload_to("/upload", form).await;
        assert_denied(&r);
    }
    assert!(!dir.0.parent().unwrap().join("unsafe_upload.txt").exists());
    // A directory as target: 500 with the reference's prefix.
    let form = Form::new().part("file", "sub", "text/plain", b"x");
    let r = d.upload_to("/upload", form).await;
    assert_eq!(r.status, 500);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .starts_with("File upload failed"));
    // No `file` part: 422.
    let form = Form::new().part("other", "x", "text/plain", b"x");
    assert_eq!(d.upload_to("/upload", form).await.status, 422);
}

#[tokio::test]
async fn sandboxd_files() {
    let dir = tree("sd-files");
    let d = daemon(&dir);
    let put = |path: &'static str, body: &'static [u8]| {
        let d = &d;
        async move {
            d.request(
                Method::PUT,
                path,
                &[("content-type", "application/octet-stream")],
                body,
            )
            .await
        }
    };
    let r = put("/v1/files/notes%2Fhello.txt", b"hi there").await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        std::fs::read(dir.0.join("notes/hello.txt")).unwrap(),
        b"hi there"
    );
    let r = d.get("/v1/files/notes%2Fhello.txt").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hi there");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    // A range.
    let r = d
        .request(
            Method::GET,
            "/v1/files/notes/hello.txt",
            &[("range", "bytes=3-")],
            "",
        )
        .await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, "there");

    // Mode.
    let r = put("/v1/files/run.sh?mode=0755", b"#!/bin/sh\n").await;
    assert_eq!(r.status, 204);
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::metadata(dir.0.join("run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(m & 0o7777, 0o755);
    for bad in ["0999", "777", "abcd", "01777"] {
        let path: &'static str = Box::leak(format!("/v1/files/x.txt?mode={bad}").into_boxed_str());
        put(path, b"x").await.assert_error(400, "INVALID_ARGUMENT");
    }
    // Multipart, missing part, directory target.
    let form = Form::new().part("file", "ignored", "application/octet-stream", b"mp");
    let r = d
        .request(
            Method::PUT,
            "/v1/files/mp.txt",
            &[("content-type", &form.content_type())],
            form.finish(),
        )
        .await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(std::fs::read(dir.0.join("mp.txt")).unwrap(), b"mp");
    let form = Form::new().part("other", "x", "text/plain", b"x");
    d.request(
        Method::PUT,
        "/v1/files/mp2.txt",
        &[("content-type", &form.content_type())],
        form.finish(),
    )
    .await
    .assert_error(400, "INVALID_ARGUMENT");
    put("/v1/files/sub", b"x")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    // No temporary files left behind.
    assert!(dir.names().iter().all(|n| !n.starts_with(".execd-upload")));

    // Listing.
    let r = d.get("/v1/files/notes").await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["path"], "/notes");
    assert_eq!(v["entries"].as_array().unwrap().len(), 1);
    let e = &v["entries"][0];
    assert_eq!(e["name"], "hello.txt");
    assert_eq!(e["type"], "file");
    assert_eq!(e["size"], 8);
    assert_eq!(e["mode"], "0644");
    assert!(e["modified_at"].as_str().unwrap().ends_with('Z'));
    std::fs::create_dir(dir.0.join("empty")).unwrap();
    assert_eq!(d.get("/v1/files/empty").await.json()["entries"], json!([]));
    let root = d.get("/v1/files/").await.json();
    let names: Vec<&str> = root["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec!["empty", "inlink", "mp.txt", "notes", "run.sh", "sub"],
        "sorted, escaping and broken links left out"
    );
    d.get("/v1/files/missing")
        .await
        .assert_error(404, "NOT_FOUND");

    // HEAD.
    let r = d
        .request(Method::HEAD, "/v1/files/notes%2Fhello.txt", &[], "")
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let r = d
        .request(Method::HEAD, "/v1/files/missing.txt", &[], "")
        .await;
    assert_eq!(r.status, 404);

    // Delete.
    d.delete("/v1/files/notes")
        .await
        .assert_error(409, "CONFLICT");
    assert_eq!(d.delete("/v1/files/notes?recursive=true").await.status, 204);
    d.get("/v1/files/notes%2Fhello.txt")
        .await
        .assert_error(404, "NOT_FOUND");
    d.delete("/v1/files/notes")
        .await
        .assert_error(404, "NOT_FOUND");
    d.delete("/v1/files/x?recursive=banana")
        .await
        .assert_error(400, "INVALID_ARGUMENT");
    assert_eq!(d.delete("/v1/files/mp.txt").await.status, 204);
    // Deleting an escaping symlink removes the link, never its target.
    assert_eq!(d.delete("/v1/files/etclink").await.status, 204);
    assert!(std::path::Path::new("/etc/passwd").exists());
    // The root: 409, then emptied (kept) with recursive.
    d.delete("/v1/files/").await.assert_error(409, "CONFLICT");
    assert_eq!(d.delete("/v1/files/%2E?recursive=true").await.status, 204);
    assert!(dir.0.is_dir());
    assert!(dir.names().is_empty());
}

#[tokio::test]
async fn sandboxd_confinement() {
    let dir = tree("sd-confine");
    let d = daemon(&dir);
    for p in [
        "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
        "%2E%2E/%2E%2E/etc/passwd",
        "..%2Fx",
        "etclink%2Fpasswd",
        "etclink",
        "sub%2Fup%2Fx",
    ] {
        let path = format!("/v1/files/{p}");
        d.get(&path).await.assert_error(403, "PERMISSION_DENIED");
        // (Deleting the link `etclink` itself is allowed: see sandboxd_files.)
        if p != "etclink" {
            d.delete(&path).await.assert_error(403, "PERMISSION_DENIED");
        }
        let r = d.request(Method::PUT, &path, &[], "x").await;
        r.assert_error(403, "PERMISSION_DENIED");
        let r = d.request(Method::HEAD, &path, &[], "").await;
        assert_eq!(r.status, 403);
    }
    // Absolute paths are re-rooted (sandboxd's rule), the root prefix stripped.
    assert_eq!(d.get("/v1/files/%2Fsub%2Ff.txt").await.body, "hello");
    assert_eq!(d.get("/v1/files/%2F..%2Fsub%2Ff.txt").await.body, "hello");
    let base = std::fs::canonicalize(&dir.0).unwrap();
    let abs = format!(
        "/v1/files/{}",
        common::q(&format!("{}/sub/f.txt", base.display()))
    );
    assert_eq!(d.get(&abs).await.body, "hello");
    // A write through an escaping parent symlink is refused; nothing lands outside.
    let r = d
        .request(Method::PUT, "/v1/files/etclink%2Fexecd-test-x", &[], "x")
        .await;
    r.assert_error(403, "PERMISSION_DENIED");
}

#[tokio::test]
async fn sandboxd_health_and_metadata() {
    let dir = TempDir::new("sd-meta");
    let d = daemon(&dir);
    let v = d.get("/v1/health").await.json();
    assert_eq!(v["status"], "ok");
    assert!(v["uptime_seconds"].as_u64().is_some());
    let v = d.get("/v1/metadata").await.json();
    assert_eq!(v["env"]["SANDBOX_ID"], "sb-1");
    // Only names on the allow-list are served (tests/hardening.rs has more).
    assert!(v["env"].get("SANDBOX_TEST_VISIBLE").is_none(), "{v}");
    assert!(v["env"].get("SANDBOX_API_TOKEN").is_none(), "{v}");
}

/// What `openapi.yaml` says of `/execute` is what it does: a `/bin/sh -c`
/// line, whose unknown program exits 127 with the shell's message.
#[tokio::test]
async fn execute_runs_a_shell_line_as_the_spec_says() {
    let spec = include_str!("../openapi.yaml");
    let at = spec.find("\n  /execute:").expect("/execute in the spec");
    let end = spec[at + 1..]
        .find("\n  /")
        .map_or(spec.len(), |e| at + 1 + e);
    let section = &spec[at..end];
    assert!(section.contains("/bin/sh -c"), "{section}");
    assert!(section.contains("127"), "{section}");
    assert!(!section.contains("without a"), "{section}");

    let dir = tree("as-exec-spec");
    let d = daemon(&dir);
    let v = d
        .post_json("/execute", &json!({"command": "no-such-program-execd-x"}))
        .await
        .json();
    assert_eq!(v["exit_code"], 127, "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("not found"), "{v}");
    let v = d
        .post_json("/execute", &json!({"command": "echo $((1+2)) | cat"}))
        .await
        .json();
    assert_eq!(v["stdout"], "3\n", "a shell line: {v}");
}
