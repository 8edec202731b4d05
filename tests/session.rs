//! Black-box tests of bash sessions.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{json, Value};

async fn create(d: &Daemon, body: Option<Value>) -> String {
    let r = match body {
        Some(b) => d.post_json("/session", &b).await,
        None => d.request(Method::POST, "/session", &[], "").await,
    };
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["session_id"].as_str().unwrap().to_string()
}

async fn run(d: &Daemon, sid: &str, body: Value) -> Vec<Value> {
    let mut s = d.stream(&format!("/session/{sid}/run"), &body).await;
    assert_eq!(s.status, 200);
    s.collect().await
}

#[tokio::test]
async fn exported_variables_and_directory_persist() {
    let d = Daemon::start();
    let base = std::env::temp_dir().join(format!("execd-sess-{}", std::process::id()));
    let sid = create(
        &d,
        Some(json!({"cwd": base.join("made/here").to_str().unwrap()})),
    )
    .await;
    assert_eq!(sid.len(), 36, "uuid-shaped: {sid}");
    let evs = run(
        &d,
        &sid,
        json!({"command": "pwd; export FOO='a b'; LOCAL=1; cd ..; mkdir -p sub"}),
    )
    .await;
    assert_eq!(evs[0]["text"], sid.as_str(), "init carries the session id");
    assert!(evs[0]["command_id"].is_string());
    assert_eq!(
        text_of(&evs, "stdout"),
        format!("{}\n", base.join("made/here").display())
    );
    let evs = run(
        &d,
        &sid,
        json!({"command": "echo \"$FOO|${LOCAL:-unset}\"; pwd"}),
    )
    .await;
    assert_eq!(
        text_of(&evs, "stdout"),
        format!("a b|unset\n{}\n", base.join("made").display())
    );
    // A per-run cwd applies to that run and becomes the session's directory.
    let evs = run(&d, &sid, json!({"command": "pwd", "cwd": "/tmp"})).await;
    assert_eq!(text_of(&evs, "stdout"), "/tmp\n");
    let evs = run(&d, &sid, json!({"command": "pwd"})).await;
    assert_eq!(text_of(&evs, "stdout"), "/tmp\n");
    let _ = std::fs::remove_dir_all(&base);
}

#[tokio::test]
async fn heredocs_stderr_and_stdin_do_not_hang() {
    let d = Daemon::start();
    let sid = create(&d, None).await;
    let evs = run(&d, &sid, json!({"command": "X=world\ncat <<EOF\nhello $X\nEOF\ncat <<'RAW'\n$X stays\nRAW\necho oops >&2\ncat"})).await;
    assert_eq!(text_of(&evs, "stdout"), "hello world\n$X stays\n");
    assert_eq!(text_of(&evs, "stderr"), "oops\n");
    assert_eq!(terminal(&evs)["type"], "execution_complete");
}

#[tokio::test]
async fn exit_exec_and_timeout_leave_the_session_usable() {
    let d = Daemon::start();
    let sid = create(&d, None).await;
    let evs = run(&d, &sid, json!({"command": "export A=1; exit 3"})).await;
    assert_eq!(terminal(&evs)["error"]["evalue"], "3");
    let evs = run(&d, &sid, json!({"command": "echo A=$A"})).await;
    assert_eq!(
        text_of(&evs, "stdout"),
        "A=1\n",
        "state saved even on exit N"
    );

    let evs = run(
        &d,
        &sid,
        json!({"command": "export B=2; exec sh -c 'echo from-exec'"}),
    )
    .await;
    assert_eq!(text_of(&evs, "stdout"), "from-exec\n");
    let evs = run(&d, &sid, json!({"command": "echo B=${B:-unset} A=$A"})).await;
    assert_eq!(
        text_of(&evs, "stdout"),
        "B=unset A=1\n",
        "exec skips the save; earlier state stays"
    );

    let evs = run(
        &d,
        &sid,
        json!({"command": "export C=3; sleep 30", "timeout": 200}),
    )
    .await;
    assert_eq!(terminal(&evs)["timed_out"], true);
    let evs = run(&d, &sid, json!({"command": "echo ok ${C:-unset}"})).await;
    assert_eq!(text_of(&evs, "stdout"), "ok unset\n");
}

#[tokio::test]
async fn concurrent_runs_are_refused_and_delete_kills() {
    let d = Daemon::start();
    let sid = create(&d, None).await;
    let mut long = d
        .stream(
            &format!("/session/{sid}/run"),
            &json!({"command": "echo started; sleep 30"}),
        )
        .await;
    let init = long.next().await.unwrap();
    assert_eq!(long.next().await.unwrap()["text"], "started\n");
    let r = d
        .post_json(&format!("/session/{sid}/run"), &json!({"command": "true"}))
        .await;
    r.assert_error(409, "SESSION_BUSY");
    let r = d.delete(&format!("/session/{sid}")).await;
    assert_eq!(r.status, 200);
    let rest = long.collect().await;
    assert_eq!(
        terminal(&rest)["error"]["evalue"],
        "-1",
        "the running run was killed"
    );
    assert_eq!(
        terminal(&rest)["interrupted"],
        true,
        "ended by the delete: {rest:?}"
    );
    let cid = init["command_id"].as_str().unwrap();
    let st = d.get(&format!("/command/status/{cid}")).await.json();
    assert_eq!(st["running"], false);
    d.delete(&format!("/session/{sid}"))
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
    d.post_json(&format!("/session/{sid}/run"), &json!({"command": "true"}))
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
}

#[tokio::test]
async fn bad_session_requests() {
    let d = Daemon::start();
    let sid = create(&d, None).await;
    let path = format!("/session/{sid}/run");
    d.post_json(&path, &json!({}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.post_json(&path, &json!({"command": "true", "timeout": -5}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.post_json(&path, &json!({"command": "true", "cwd": "/no/such/dir"}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.request(Method::POST, "/session", &[], "{bad")
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    // Still usable afterwards.
    let evs = run(&d, &sid, json!({"command": "echo fine"})).await;
    assert_eq!(text_of(&evs, "stdout"), "fine\n");
    let _ = Duration::ZERO;
}

/// Issue 15, item 12: `--max-sessions` caps the sessions kept at once (429
/// `TOO_MANY_SESSIONS`); deleting one makes room.
#[tokio::test]
async fn sessions_are_capped() {
    let d = Daemon::start_with(&["--max-sessions", "2"], &[]);
    let a = create(&d, None).await;
    let _b = create(&d, None).await;
    d.request(Method::POST, "/session", &[], "")
        .await
        .assert_error(429, "TOO_MANY_SESSIONS");
    assert_eq!(d.delete(&format!("/session/{a}")).await.status, 200);
    create(&d, None).await;
}

/// Issue 15, item 12: a session idle for `--session-idle-timeout` is deleted
/// (sessions were kept for ever), and its room is free again.
#[tokio::test]
async fn idle_sessions_expire() {
    let d = Daemon::start_with(
        &["--max-sessions", "1", "--session-idle-timeout", "1s"],
        &[],
    );
    let a = create(&d, None).await;
    let evs = run(&d, &a, json!({"command": "export X=1"})).await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    // Room comes back once the idle session is gone.
    let mut b = None;
    for _ in 0..1500 {
        let r = d.request(Method::POST, "/session", &[], "").await;
        if r.status == 200 {
            b = Some(r.json()["session_id"].as_str().unwrap().to_string());
            break;
        }
        r.assert_error(429, "TOO_MANY_SESSIONS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.is_some(), "the idle session was never expired");
    d.post_json(&format!("/session/{a}/run"), &json!({"command": "true"}))
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
}
