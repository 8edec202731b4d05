//! Black-box tests of at-most-once creation (`X-EXECD-OPERATION-ID`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// Processes whose command line holds `marker` and whose parent's does
/// not: the commands started, not the shell's children that are between
/// fork and exec (they still carry the shell's command line for a moment).
fn count_marked(marker: &str) -> usize {
    let mut marked = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let Ok(pid) = name.to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(c) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !c.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            continue;
        }
        // `pid (comm) state ppid ...`; comm may hold spaces: after the last ')'.
        let ppid = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| {
                let rest = &s[s.rfind(')')? + 1..];
                rest.split_whitespace().nth(1)?.parse::<u32>().ok()
            });
        if let Some(ppid) = ppid {
            marked.insert(pid, ppid);
        }
    }
    marked
        .values()
        .filter(|pp| !marked.contains_key(pp))
        .count()
}

fn marker(name: &str) -> String {
    format!("opmark-{}-{name}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn post_op(d: &Daemon, path: &str, op: &str, body: &str) -> Resp {
    d.request(
        Method::POST,
        path,
        &[
            ("content-type", "application/json"),
            ("x-execd-operation-id", op),
        ],
        body.to_string(),
    )
    .await
}

/// The first event (`init`) of an event-stream body: the command id.
fn init_id(r: &Resp) -> String {
    let text = r.text();
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let first = first.strip_prefix("data:").unwrap_or(first).trim();
    let v: Value = serde_json::from_str(first).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    assert_eq!(v["type"], "init", "{text}");
    v["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn a_retry_after_a_dropped_response_starts_exactly_one_process() {
    let d = Daemon::start();
    let mark = marker("dropped");
    let body =
        json!({"command": format!("sleep 300; true {mark}"), "background": true}).to_string();
    let op = "op-dropped-1";

    // The first attempt: the client sends and hangs up without reading.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let req = format!(
        "POST /command HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nX-EXECD-OPERATION-ID: {op}\r\nContent-Length: {}\r\n\r\n{body}",
        d.addr,
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    drop(s);

    // Retries with the same id and body: one command, whatever happened.
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = post_op(&d, "/command", op, &body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        ids.push(init_id(&r));
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    let end = Instant::now() + Duration::from_secs(10);
    while count_marked(&mark) == 0 {
        assert!(Instant::now() < end, "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Another round of retries, then count again.
    for _ in 0..3 {
        let r = post_op(&d, "/command", op, &body).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-execd-operation-replayed"), Some("true"));
        assert_eq!(init_id(&r), ids[0]);
    }
    assert_eq!(
        count_marked(&mark),
        1,
        "exactly one process carries the marker"
    );

    // The lookup route knows it.
    let r = d.get(&format!("/operations/{op}")).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["state"], "created");
    assert_eq!(v["kind"], "command");
    assert_eq!(v["resourceId"], ids[0].as_str());

    // Same id, another body: 409, and nothing started.
    let other =
        json!({"command": format!("sleep 300; false {mark}"), "background": true}).to_string();
    post_op(&d, "/command", op, &other)
        .await
        .assert_error(409, "OPERATION_CONFLICT");
    assert_eq!(count_marked(&mark), 1);
    d.get("/operations/never-used")
        .await
        .assert_error(404, "OPERATION_NOT_FOUND");
    post_op(&d, "/command", "bad id!", &body)
        .await
        .assert_error(400, "INVALID_OPERATION_ID");
    d.delete(&format!("/command?id={}", ids[0])).await;
}

/// Retries racing the first attempt (sent together, as a client whose
/// first response is late may do) wait for its outcome: every one gets the
/// same command, none a transient error, and one process runs.
#[tokio::test]
async fn retries_while_the_first_attempt_is_creating_get_its_command() {
    let d = std::sync::Arc::new(Daemon::start());
    let mark = marker("racing");
    let body =
        json!({"command": format!("sleep 300; true {mark}"), "background": true}).to_string();
    let op = "op-racing-1";
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (d, body) = (d.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            post_op(&d, "/command", op, &body).await
        }));
    }
    let mut ids = Vec::new();
    let mut replayed = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        if r.header("x-execd-operation-replayed") == Some("true") {
            replayed += 1;
        }
        ids.push(init_id(&r));
    }
    assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
    assert_eq!(replayed, 7, "one attempt created, the others replayed");
    let end = Instant::now() + Duration::from_secs(10);
    while count_marked(&mark) == 0 {
        assert!(Instant::now() < end, "the command never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count_marked(&mark),
        1,
        "exactly one process carries the marker"
    );
    d.delete(&format!("/command?id={}", ids[0])).await;
}

#[tokio::test]
async fn a_foreground_retry_reattaches_to_the_same_stream() {
    let d = Daemon::start();
    let body = json!({"command": "echo once-$$"}).to_string();
    let a = post_op(&d, "/command", "fg-1", &body).await;
    let b = post_op(&d, "/command", "fg-1", &body).await;
    assert_eq!(init_id(&a), init_id(&b));
    // The same output: one process ran (its pid is in the line).
    let line = |r: &Resp| {
        r.text()
            .lines()
            .find(|l| l.contains("once-"))
            .map(str::to_string)
    };
    assert!(line(&a).is_some());
    assert_eq!(line(&a), line(&b));
}

#[tokio::test]
async fn expiry_capacity_and_the_other_creation_routes() {
    let d = Daemon::start_with(&["--operation-ttl", "0s", "--max-operations", "1"], &[]);
    let body = json!({"command": "true"}).to_string();
    let r = post_op(&d, "/command", "exp-1", &body).await;
    assert_eq!(r.status, 200);
    // A ttl of 0: the id is expired at once, and a retry is told so.
    post_op(&d, "/command", "exp-1", &body)
        .await
        .assert_error(410, "OPERATION_EXPIRED");
    d.get("/operations/exp-1")
        .await
        .assert_error(410, "OPERATION_EXPIRED");

    let d = Daemon::start_with(&["--max-operations", "1"], &[]);
    let r = post_op(&d, "/pty", "pty-1", "{}").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let again = post_op(&d, "/pty", "pty-1", "{}").await;
    assert_eq!(again.status, 201);
    assert_eq!(r.json()["session_id"], again.json()["session_id"]);
    post_op(&d, "/pty", "pty-2", "{}")
        .await
        .assert_error(429, "TOO_MANY_OPERATIONS");
    // Without an id, creation is as before.
    let r = d.post_json("/pty", &json!({})).await;
    assert_eq!(r.status, 201);

    let d = Daemon::start();
    let sid = d.post_json("/session", &json!({})).await.json()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/session/{sid}/run");
    let body = json!({"command": "echo run-$$"}).to_string();
    let a = post_op(&d, &path, "srun-1", &body).await;
    let b = post_op(&d, &path, "srun-1", &body).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(init_id(&a), init_id(&b));
    assert_eq!(b.header("x-execd-operation-replayed"), Some("true"));
}
