//! Black-box tests of `/metrics` and `/metrics/watch`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn check_reading(v: &Value) {
    for k in ["cpu_count", "cpu_used_pct", "mem_total_mib", "mem_used_mib"] {
        assert!(v[k].is_number(), "{k} missing in {v}");
    }
    assert!(v["timestamp"].is_u64(), "{v}");
    assert!(v["cpu_count"].as_f64().unwrap() > 0.0);
    let (total, used) = (
        v["mem_total_mib"].as_f64().unwrap(),
        v["mem_used_mib"].as_f64().unwrap(),
    );
    assert!(total > 0.0 && used >= 0.0 && used <= total, "{v}");
    let pct = v["cpu_used_pct"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&pct), "{v}");
    assert!(v["execd_rss_kib"].as_u64().unwrap() > 0);
    assert!(["cgroup2", "cgroup1", "proc"].contains(&v["source"].as_str().unwrap()));
}

#[tokio::test]
async fn metrics_fields_and_live_figures() {
    let d = Daemon::start();
    let first = d.get("/metrics").await;
    assert_eq!(first.status, 200);
    check_reading(&first.json());
    // CPU spent between two calls shows up in the second.
    let evs = d
        .run(json!({"command": "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"}))
        .await;
    assert_eq!(terminal(&evs)["type"], "execution_complete");
    let v = d.get("/metrics").await.json();
    check_reading(&v);
    assert!(
        v["cpu_used_pct"].as_f64().unwrap() > 0.0,
        "a busy second is visible: {v}"
    );
    // execd's own figures.
    let bg = d
        .run(json!({"command": "sleep 30", "background": true}))
        .await;
    let v = d.get("/metrics").await.json();
    assert_eq!(v["running_commands"], 1, "{v}");
    let id = bg[0]["text"].as_str().unwrap();
    d.delete(&format!("/command?id={id}")).await;
}

#[tokio::test]
async fn metrics_watch_streams_every_second() {
    let d = Daemon::start();
    let r = d
        .send(
            http::Method::GET,
            "/metrics/watch",
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut body = r.into_body();
    let mut buf = Vec::new();
    let mut lines = Vec::new();
    use http_body_util::BodyExt;
    while lines.len() < 2 {
        let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
            .await
            .expect("a reading within 10 s")
            .expect("stream open")
            .expect("frame");
        buf.extend_from_slice(&frame.into_data().unwrap_or_default());
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            lines.push(serde_json::from_slice::<Value>(&line).unwrap());
        }
    }
    for l in &lines {
        check_reading(l);
    }
    assert!(lines[1]["timestamp"].as_u64() > lines[0]["timestamp"].as_u64());
}
