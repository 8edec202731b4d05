//! Output spilled past the memory window, black-box, on both spill paths:
//! staged into whole blocks and written with `O_DIRECT` (the default), and
//! through the page cache (`--no-spill-direct`, also what execd falls back
//! to when the file system refuses `O_DIRECT`). Either way every byte comes
//! back exactly, through `logs?cursor` and through a resumed stream.

mod common;

use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use http::Method;
use serde_json::json;

/// What `seq 1 N` prints.
fn seq(n: u32) -> String {
    (1..=n).map(|i| format!("{i}\n")).collect()
}

/// The sizes of the spill segments in the data directory (not `envs`).
fn segments(data: &std::path::Path) -> Vec<u64> {
    std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "envs")
        .map(|e| e.metadata().unwrap().size())
        .collect()
}

/// Runs `seq` in the background with a 16 KiB window (so nearly all of its
/// 3.4 MB is spilled), then checks the replay; returns the segment sizes.
async fn spill_and_replay(extra: &[&str]) -> Vec<u64> {
    const N: u32 = 500_000;
    let t = TempDir::new("spill");
    let data = t.0.join("data");
    let mut args = vec![
        "--output-window",
        "16KiB",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(&args, &[]);
    let evs = d
        .run(json!({"command": format!("seq 1 {N}"), "background": true}))
        .await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    let st = d.wait_finished(&id, Duration::from_secs(60)).await;
    let expect = seq(N);
    assert_eq!(st["output_bytes"], expect.len(), "{st}");
    assert_eq!(st["dropped_bytes"], 0, "{st}");

    // Every byte, from the start and from offsets inside the spill (not
    // on a line or a block boundary) and in memory.
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
    segments(&data)
}

use serde_json::Value;

#[tokio::test]
async fn a_spill_written_with_o_direct_replays_exactly() {
    let sizes = spill_and_replay(&[]).await;
    assert!(!sizes.is_empty(), "something was spilled");
    // Direct writes are whole blocks: the part of a block not yet full
    // stays in memory, and is served from there.
    assert!(sizes.iter().all(|s| s % 4096 == 0), "{sizes:?}");
}

#[tokio::test]
async fn a_spill_through_the_page_cache_replays_exactly() {
    let sizes = spill_and_replay(&["--no-spill-direct"]).await;
    assert!(!sizes.is_empty(), "something was spilled");
    // Records written as they are: no block rounding (29-byte headers and
    // lines of every length make a multiple of 4096 unlikely for both).
    assert!(sizes.iter().any(|s| s % 4096 != 0), "{sizes:?}");
}

/// A small spill cap (two segments of 64 KiB): what the cap discarded is a
/// gap, reported, and everything after it is exact, on the direct path.
#[tokio::test]
async fn a_capped_direct_spill_reports_its_gap() {
    let t = TempDir::new("spill-cap");
    let data = t.0.join("data");
    let d = Daemon::start_with(
        &[
            "--output-window",
            "16KiB",
            "--spill-cap",
            "128KiB",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let evs = d
        .run(json!({"command": "seq 1 200000", "background": true}))
        .await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
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
    assert!(start > 0);
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
