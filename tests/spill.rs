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

/// The line `awk_lines` prints for event `i`: 0-3 KiB, and every 97th one
/// 40 KiB longer (more than a spill read block; the splitter cuts it at 64
/// KiB, it stays one event).
fn varied_line(i: u64) -> String {
    let mut n = (i * 7919 % 3000) as usize;
    if i.is_multiple_of(97) {
        n += 40_000;
    }
    format!("{i:08} {}\n", "z".repeat(n))
}

/// A shell command printing `varied_line(1..=n)`.
fn awk_lines(n: u64) -> String {
    format!(
        "awk 'BEGIN {{ p = \"z\"; while (length(p) < 43000) p = p p; \
         for (i = 1; i <= {n}; i++) {{ k = (i * 7919) % 3000; if (i % 97 == 0) k += 40000; \
         printf \"%08d %s\\n\", i, substr(p, 1, k) }} }}'"
    )
}

/// Checks events against `expect` (the whole output): each output event is
/// the bytes at its offset in order, eids contiguous except where a `gap`
/// event says so. Returns the events' bytes and how many eids gaps skipped.
fn check_events(evs: &[Value], mut next: u64, expect: &str) -> (usize, u64) {
    let (mut bytes, mut skipped) = (0usize, 0u64);
    let mut at: Option<usize> = None;
    for e in evs {
        match e["type"].as_str().unwrap() {
            "stdout" => {
                assert_eq!(e["eid"], next, "eids contiguous, no duplicates");
                let text = e["text"].as_str().unwrap();
                // The first event after a gap (or the first at all) finds
                // its place by its text; later ones must follow on.
                let from = at.unwrap_or_else(|| {
                    let lineno: usize = text[..8].parse().unwrap();
                    let line = varied_line(lineno as u64);
                    expect.find(&line).unwrap() + line.find(text).expect("a piece of its line")
                });
                assert!(
                    expect[from..].starts_with(text),
                    "event {next} is not the output at {from}"
                );
                at = Some(from + text.len());
                bytes += text.len();
                next += 1;
            }
            "gap" => {
                assert_eq!(e["from_eid"], next, "{e}");
                let to = e["to_eid"].as_u64().unwrap();
                assert!(to > next, "{e}");
                skipped += to - next;
                next = to;
                at = None;
            }
            _ => {}
        }
    }
    (bytes, skipped)
}

/// Readers far behind a command that spills faster than they read, while
/// the spill cap rotates its segments (1 MiB each, two kept): the live
/// reader gets every event exactly once or a gap event that says which it
/// missed, and a reader that resumes after the end gets everything still
/// retained exactly, across both segments and into memory.
#[tokio::test]
async fn readers_behind_rotating_spill_segments_get_each_event_once_or_a_gap() {
    const N: u64 = 4000;
    let t = TempDir::new("spill-rotate");
    let data = t.0.join("data");
    let d = Daemon::start_with(
        &[
            "--output-window",
            "16KiB",
            "--spill-cap",
            "2MiB",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[],
    );
    let expect: String = (1..=N).map(varied_line).collect();
    assert!(expect.len() > 6 << 20);
    let live = d.run(json!({"command": awk_lines(N)})).await;
    assert_eq!(terminal(&live)["type"], "execution_complete", "{live:?}");
    let id = live[0]["text"].as_str().unwrap().to_string();
    let (bytes, skipped) = check_events(&live, 1, &expect);
    let st = d.wait_finished(&id, Duration::from_secs(60)).await;
    let (total, dropped) = (
        st["output_bytes"].as_u64().unwrap(),
        st["dropped_bytes"].as_u64().unwrap(),
    );
    assert_eq!(total, expect.len() as u64, "{st}");
    assert!(dropped > 0, "the cap discarded segments: {st}");
    assert!(bytes as u64 + dropped >= total, "only gaps are missing");
    assert!(bytes > 0 && (skipped == 0) == (bytes as u64 == total));

    // After the end: the oldest retained event, then everything from it.
    let r = d.get(&format!("/command/{id}/resume?after_eid=0")).await;
    r.assert_error(410, "EVENTS_EXPIRED");
    let oldest: u64 = r.header("execd-oldest-eid").unwrap().parse().unwrap();
    let mut s = EventStream::new(
        d.send(
            Method::GET,
            &format!("/command/{id}/resume?after_eid={}", oldest - 1),
            &[],
            bytes::Bytes::new(),
        )
        .await,
    );
    let evs = s.collect().await;
    let (bytes, skipped) = check_events(&evs, oldest, &expect);
    assert_eq!(skipped, 0, "nothing retained is skipped");
    assert_eq!(bytes as u64, total - dropped, "every retained byte, once");
    assert!(
        bytes > 1 << 20,
        "more than a segment was retained and replayed"
    );
    assert_eq!(terminal(&evs)["type"], "execution_complete");
}
