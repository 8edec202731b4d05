//! Black-box tests of runtime init: `GET /ready`, `POST /internal/init`
//! and `--runtime-init`'s gate.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn hash(token: &str) -> String {
    let d = Sha256::digest(token.as_bytes());
    format!(
        "sha256:{}",
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn binding(generation: u64, token: &str) -> Value {
    json!({
        "sandboxId": "sbx-1",
        "generation": generation,
        "accessTokenHash": hash(token),
    })
}

async fn init_as(d: &Daemon, token: Option<&str>, v: &Value) -> Resp {
    let headers = [("content-type", "application/json")];
    d.request_as(
        token,
        Method::POST,
        "/internal/init",
        &headers,
        v.to_string(),
    )
    .await
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("execd-rtinit-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Waits until `path` holds `lines` lines; returns its text.
async fn wait_lines(path: &std::path::Path, lines: usize) -> String {
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{path:?} never had {lines} lines: {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn gate_before_init_then_the_bound_token_and_envs() {
    let mut d = Daemon::start_with(&["--runtime-init"], &[]);
    assert_eq!(d.get("/ping").await.status, 200);
    let r = d.get("/ready").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["initialized"], false);
    d.post_json("/command", &json!({"command": "true"}))
        .await
        .assert_error(503, "NOT_INITIALIZED");
    d.get("/files/info?path=/")
        .await
        .assert_error(503, "NOT_INITIALIZED");
    d.get("/metrics").await.assert_error(503, "NOT_INITIALIZED");

    // Malformed calls are 400 and leave the slot free.
    for bad in [
        json!({}),
        json!({"sandboxId": "s", "accessTokenHash": "plain-token"}),
        json!({"sandboxId": "s", "accessTokenHash": hash("x"), "entrypointPolicy": "sometimes"}),
    ] {
        init_as(&d, None, &bad)
            .await
            .assert_error(400, "INVALID_REQUEST_BODY");
    }
    let r = d
        .request(
            Method::POST,
            "/internal/init",
            &[("content-type", "application/json")],
            "{not json",
        )
        .await;
    r.assert_error(400, "INVALID_REQUEST_BODY");
    assert_eq!(d.get("/ready").await.status, 503);

    let mut b = binding(1, "s3cret");
    b["envs"] = json!({"BOUND_VAR": "bound-value"});
    b["telemetry"] = json!({"attributes": {"team": "a"}});
    let r = init_as(&d, None, &b).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "initialized");
    assert_eq!(v["sandboxId"], "sbx-1");
    assert_eq!(v["generation"], 1);
    let r = d.get("/ready").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"initialized": true, "sandboxId": "sbx-1", "generation": 1})
    );

    // The token is now checked against the bound digest.
    let (status, _) = d.send_raw(Method::GET, "/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = d.send_raw(Method::GET, "/metrics", Some("wrong")).await;
    assert_eq!(status, 401);
    d.token = Some("s3cret".into());
    let evs = d.run(json!({"command": "echo \"$BOUND_VAR\""})).await;
    let out: String = evs
        .iter()
        .filter(|e| e["type"] == "stdout")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(out.trim(), "bound-value", "{evs:?}");
    // A request's own envs still win.
    let evs = d
        .run(json!({"command": "echo \"$BOUND_VAR\"", "envs": {"BOUND_VAR": "mine"}}))
        .await;
    assert!(evs.iter().any(|e| e["text"] == "mine\n"), "{evs:?}");

    // One-shot: the same or a lower generation is 409, whoever asks.
    init_as(&d, Some("s3cret"), &binding(1, "other"))
        .await
        .assert_error(409, "ALREADY_INITIALIZED");
    init_as(&d, None, &binding(0, "other"))
        .await
        .assert_error(409, "ALREADY_INITIALIZED");
    // A higher generation re-binds, with the current token only.
    init_as(&d, None, &binding(2, "t2"))
        .await
        .assert_error(401, "UNAUTHORIZED");
    init_as(&d, Some("wrong"), &binding(2, "t2"))
        .await
        .assert_error(401, "UNAUTHORIZED");
    let r = init_as(&d, Some("s3cret"), &binding(2, "t2")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["rebound"], true);
    assert_eq!(d.get("/ready").await.json()["generation"], 2);
    let (status, _) = d.send_raw(Method::GET, "/metrics", Some("s3cret")).await;
    assert_eq!(status, 401);
    let (status, _) = d.send_raw(Method::GET, "/metrics", Some("t2")).await;
    assert_eq!(status, 200);
    // Replace semantics: the re-binding had no envs, so none are left.
    d.token = Some("t2".into());
    let evs = d.run(json!({"command": "echo \"[$BOUND_VAR]\""})).await;
    assert!(evs.iter().any(|e| e["text"] == "[]\n"), "{evs:?}");
}

#[tokio::test]
async fn without_runtime_init_ready_is_200_and_the_start_up_token_guards_init() {
    let d = Daemon::start_with(&["--access-token", "boot"], &[]);
    let (status, body) = d.send_raw(Method::GET, "/ready", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["initialized"],
        false
    );
    init_as(&d, None, &binding(1, "s3cret"))
        .await
        .assert_error(401, "UNAUTHORIZED");
    init_as(&d, Some("nope"), &binding(1, "s3cret"))
        .await
        .assert_error(401, "UNAUTHORIZED");
    // Upstream PR #1871's path for the same call.
    let headers = [("content-type", "application/json")];
    let r = d
        .request_as(
            Some("boot"),
            Method::POST,
            "/init",
            &headers,
            binding(1, "s3cret").to_string(),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    init_as(&d, Some("s3cret"), &binding(1, "s3cret"))
        .await
        .assert_error(409, "ALREADY_INITIALIZED");
    // The binding's token replaces the start-up one.
    assert_eq!(
        d.send_raw(Method::GET, "/metrics", Some("boot")).await.0,
        401
    );
    assert_eq!(
        d.send_raw(Method::GET, "/metrics", Some("s3cret")).await.0,
        200
    );
}

fn init_mode(dir: &std::path::Path, main: &str) -> Daemon {
    let mut c = Command::new(env!("CARGO_BIN_EXE_execd"));
    c.args([
        "init",
        "--runtime-init",
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
        "--log-level",
        "3",
    ])
    .arg("--data-dir")
    .arg(dir.join("data"))
    .args(["--", "sh", "-c", main]);
    Daemon::launch(c, &[], &[])
}

#[tokio::test]
async fn pre_start_hooks_run_in_order_before_the_deferred_main_process() {
    let dir = tmpdir("prestart");
    let f = dir.join("order");
    let main = format!("echo \"main:$GEN\" >> {}; exec sleep 300", f.display());
    let mut d = init_mode(&dir, &main);
    assert_eq!(d.get("/ready").await.status, 503);
    assert!(!f.exists(), "the main process waits for the binding");

    let mut b = binding(1, "tok");
    b["envs"] = json!({"GEN": "1"});
    b["entrypointPolicy"] = json!("restart");
    b["lifecycle"] = json!({"preStart": [
        {"command": format!("echo \"pre-a:$GEN\" >> {}", f.display())},
        {"command": format!("sleep 0.2; echo \"pre-b:$GEN\" >> {}", f.display())},
    ]});
    let r = init_as(&d, None, &b).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(wait_lines(&f, 3).await, "pre-a:1\npre-b:1\nmain:1\n");

    // restart: a re-binding stops the main process, runs preStart again,
    // and starts it with the new variables.
    b["generation"] = json!(2);
    b["envs"] = json!({"GEN": "2"});
    let r = init_as(&d, Some("tok"), &b).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        wait_lines(&f, 6).await,
        "pre-a:1\npre-b:1\nmain:1\npre-a:2\npre-b:2\nmain:2\n"
    );
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(20)).is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn periodic_hooks_run_through_the_engine() {
    let dir = tmpdir("periodic");
    let f = dir.join("ticks");
    let d = Daemon::start_with(&["--runtime-init"], &[]);
    let mut b = binding(1, "tok");
    b["lifecycle"] = json!({"periodic": [
        {"command": format!("echo tick >> {}", f.display()), "intervalSeconds": 1}
    ]});
    let r = init_as(&d, None, &b).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let text = wait_lines(&f, 2).await;
    assert!(text.lines().all(|l| l == "tick"), "{text:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
