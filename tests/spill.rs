//! Output spilled past the memory window, black-box: every byte comes
//! back exactly through `logs?cursor` and through a resumed stream, and
//! what the spill cap discarded is reported, never skipped silently.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{json, Value};

/// What `seq 1 N` prints.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// `seq` in the background with a 16 KiB window: nearly all of its 1.3 MB
/// is spilled, in records of every length, and replayed exactly.
#[tokio::test]
async fn a_spill_larger_than_memory_replays_exactly() {
    const N: u32 = 200_000;
    let t = TempDir::new("spill");
    let data = t.0.join("data");
    let d = Daemon::start_with_data(&data, &["--output-window", "16KiB"]);
    let id = d
        .start_background(json!({"command": format!("seq 1 {N}")}))
        .await;
    let st = d.wait_finished(&id, Duration::from_secs(60)).await;
    let expect = seq(N);
    assert_eq!(st["output_bytes"], expect.len(), "{st}");
    assert_eq!(st["dropped_bytes"], 0, "{st}");

    // Every byte, from the start and from offsets inside the spill (not
    // on a line boundary) and in memory.
    let all = d.get(&format!("/command/{id}/logs?cursor=0")).await;
    assert_eq!(all.status, 200);
    assert!(all.text() == expect, "the replay differs from seq's output");
    for at in [
        1usize,
        4095,
        4096,
        123_457,
        expect.len() - 10_000,
        expect.len() - 3,
    ] {
        let part = d.get(&format!("/command/{id}/logs?cursor={at}")).await;
        assert!(part.text() == expect[at..], "replay from {at} differs");
    }

    // A resumed stream: every event, one per line, eids contiguous.
    let mut s = EventStream::new(
        d.send(
            Method::GET,
            &format!("/command/{id}/resume"),
            &[],
            bytes::Bytes::new(),
        )
        .await,
    );
    let evs = s.collect().await;
    let out: Vec<&Value> = evs.iter().filter(|e| e["type"] == "stdout").collect();
    assert_eq!(out.len(), N as usize);
    for (i, e) in out.iter().enumerate() {
        assert_eq!(e["eid"], i as u64 + 1);
        assert_eq!(e["text"].as_str().unwrap(), format!("{}\n", i + 1));
    }
    assert!(
        std::fs::read_dir(&data)
            .unwrap()
            .flatten()
            .any(|e| e.file_name() != "envs"),
        "something was spilled"
    );
}

/// A small spill cap (two segments of 64 KiB): what the cap discarded is a
/// gap, reported (`dropped_bytes`, the log's start, 410 on resume), and
/// everything after it is exact.
#[tokio::test]
async fn a_capped_spill_reports_its_gap() {
    let t = TempDir::new("spill-cap");
    let data = t.0.join("data");
    let d = Daemon::start_with_data(
        &data,
        &["--output-window", "16KiB", "--spill-cap", "128KiB"],
    );
    let id = d.start_background(json!({"command": "seq 1 200000"})).await;
    let st = d.wait_finished(&id, Duration::from_secs(60)).await;
    let expect = seq(200_000);
    let dropped = st["dropped_bytes"].as_u64().unwrap();
    assert!(dropped > 0, "{st}");
    let all = d.get(&format!("/command/{id}/logs?cursor=0")).await;
    let start: usize = all
        .header("execd-commands-log-start")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        start as u64, dropped,
        "what was dropped is where the log starts"
    );
    assert!(all.text() == expect[start..], "the retained part differs");
    let r = d
        .send(
            Method::GET,
            &format!("/command/{id}/resume?after_eid=0"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(r.status(), 410);
}
