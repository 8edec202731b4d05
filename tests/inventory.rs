//! Black-box tests of the inventory: `GET /command`, `GET /session`, `GET /pty`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn start(d: &Daemon, command: &str, background: bool) -> String {
    let evs = d
        .run(json!({"command": command, "background": background}))
        .await;
    evs[0]["text"].as_str().expect("id").to_string()
}

/// Every page of `GET /command?{query}`, following `next_cursor`.
async fn all_pages(d: &Daemon, query: &str) -> (Vec<Value>, usize) {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/command?{query}&cursor={c}"),
            None => format!("/command?{query}"),
        };
        let r = d.get(&path).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("cache-control"), Some("no-store"));
        let v = r.json();
        pages += 1;
        items.extend(v["commands"].as_array().unwrap().iter().cloned());
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return (items, pages),
        }
    }
}

#[tokio::test]
async fn commands_newest_first_in_pages_filtered_by_running() {
    let d = Daemon::start();
    let mut ids = Vec::new();
    ids.push(start(&d, "echo one", false).await);
    ids.push(start(&d, "sleep 300", true).await);
    ids.push(start(&d, "exit 3", false).await);
    ids.push(start(&d, "sleep 301", true).await);
    ids.push(start(&d, "echo five", false).await);

    let (items, pages) = all_pages(&d, "limit=2").await;
    assert_eq!(pages, 3);
    let got: Vec<&str> = items.iter().map(|c| c["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = ids.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want, "newest first, each once");
    let third = &items[2];
    assert_eq!(third["content"], "exit 3");
    assert_eq!(third["running"], false);
    assert_eq!(third["exit_code"], 3);
    assert_eq!(third["background"], false);
    assert!(third["finished_at"].is_string());
    assert!(third["started_at"].is_string());
    assert!(third["uid"].is_null());

    let (running, _) = all_pages(&d, "running=true&limit=1").await;
    let got: Vec<&str> = running.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[3].as_str(), ids[1].as_str()]);
    assert!(running
        .iter()
        .all(|c| c["running"] == true && c["background"] == true));
    let (done, _) = all_pages(&d, "running=false").await;
    assert_eq!(done.len(), 3);

    d.get("/command?running=maybe")
        .await
        .assert_error(400, "INVALID_QUERY");
    d.get("/command?cursor=x")
        .await
        .assert_error(400, "INVALID_QUERY");
    d.get("/command?limit=0")
        .await
        .assert_error(400, "INVALID_QUERY");

    // A command that ends leaves the running list.
    d.delete(&format!("/command?id={}", ids[3])).await;
    d.wait_finished(&ids[3], Duration::from_secs(10)).await;
    let (running, _) = all_pages(&d, "running=true").await;
    assert_eq!(running.len(), 1);
    d.delete(&format!("/command?id={}", ids[1])).await;
}

#[tokio::test]
async fn sessions_and_ptys_are_listed() {
    let d = Daemon::start();
    let s = d.post_json("/session", &json!({})).await.json()["session_id"].clone();
    let p = d.post_json("/pty", &json!({})).await.json()["session_id"].clone();
    let r = d.get("/session").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.json()["sessions"],
        json!([{"session_id": s, "running_command": null}])
    );
    let r = d.get("/pty").await;
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let list = r.json()["sessions"].clone();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["session_id"], p);
}
