//! Black-box tests of the stream extensions: stdin for commands, and
//! resumable event streams.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Method;
use serde_json::{json, Value};

async fn start_bg(d: &Daemon, body: Value) -> String {
    let evs = d.run(body).await;
    evs[0]["text"].as_str().unwrap().to_string()
}

async fn write_stdin(d: &Daemon, id: &str, eof: bool, data: impl Into<Bytes>) -> Resp {
    let q = if eof { "?eof=true" } else { "" };
    d.request(Method::POST, &format!("/command/{id}/stdin{q}"), &[], data)
        .await
}

#[tokio::test]
async fn stdin_reaches_the_process_and_eof_closes_it() {
    let d = Daemon::start();
    let id = start_bg(
        &d,
        json!({"command": "cat; echo '<eof>'", "stdin": true, "background": true}),
    )
    .await;
    let r = write_stdin(&d, &id, false, "hello\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["written"], 6);
    assert_eq!(write_stdin(&d, &id, true, "world").await.status, 200);
    let st = d.wait_finished(&id, Duration::from_secs(10)).await;
    assert_eq!(st["exit_code"], 0);
    assert_eq!(
        d.get(&format!("/command/{id}/logs")).await.text(),
        "hello\nworld<eof>\n"
    );
    // Closed and finished: a clear 409.
    write_stdin(&d, &id, false, "late")
        .await
        .assert_error(409, "STDIN_CLOSED");
}

#[tokio::test]
async fn stdin_for_a_foreground_command_while_streaming() {
    let d = Daemon::start();
    let mut s = d
        .stream(
            "/command",
            &json!({"command": "read line; echo \"got $line\"", "stdin": true}),
        )
        .await;
    let id = s.next().await.unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(write_stdin(&d, &id, true, "ping\n").await.status, 200);
    let evs = s.collect().await;
    assert_eq!(text_of(&evs, "stdout"), "got ping\n");
}

#[tokio::test]
async fn stdin_is_dev_null_unless_asked_for() {
    let d = Daemon::start();
    let evs = d.run(json!({"command": "cat; echo done"})).await;
    assert_eq!(
        text_of(&evs, "stdout"),
        "done\n",
        "cat reads EOF at once from /dev/null"
    );
    let id = start_bg(&d, json!({"command": "sleep 5", "background": true})).await;
    write_stdin(&d, &id, false, "x")
        .await
        .assert_error(409, "STDIN_NOT_OPEN");
    d.delete(&format!("/command?id={id}")).await;
    write_stdin(&d, "nope", false, "x")
        .await
        .assert_error(404, "COMMAND_NOT_FOUND");
}

#[tokio::test]
async fn stdin_back_pressure_keeps_memory_flat() {
    let d = std::sync::Arc::new(Daemon::start());
    let idle = d.proc_kib("VmRSS");
    // The command reads nothing for a while: the 32 MiB body must wait in the
    // client and the socket, not in execd.
    let id = start_bg(
        &d,
        json!({"command": "sleep 1; wc -c", "stdin": true, "background": true}),
    )
    .await;
    let body = Bytes::from(vec![b'z'; 32 << 20]);
    let writer = {
        let (d, id) = (d.clone(), id.clone());
        tokio::spawn(async move { write_stdin(&d, &id, true, body).await })
    };
    let mut peak = 0;
    while !writer.is_finished() {
        peak = peak.max(d.proc_kib("VmRSS"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = writer.await.unwrap();
    assert_eq!(r.json()["written"], 32 << 20);
    d.wait_finished(&id, Duration::from_secs(10)).await;
    assert_eq!(
        d.get(&format!("/command/{id}/logs")).await.text().trim(),
        (32u64 << 20).to_string()
    );
    assert!(
        peak < idle + 8 * 1024,
        "execd RSS went from {idle} KiB to {peak} KiB while stdin was blocked"
    );
}

fn eids(evs: &[Value]) -> Vec<u64> {
    evs.iter()
        .filter(|e| e["type"] != "ping")
        .map(|e| e["eid"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn resume_after_a_disconnect_has_no_gaps_and_no_duplicates() {
    let d = Daemon::start();
    let cmd = "for i in $(seq 1 300); do echo line-$i; done; sleep 0.3; for i in $(seq 301 400); do echo line-$i >&2; done";
    let mut s = d.stream("/command", &json!({ "command": cmd })).await;
    let mut first = vec![s.next().await.unwrap()];
    let id = first[0]["text"].as_str().unwrap().to_string();
    while first.len() < 120 {
        first.push(s.next().await.unwrap());
    }
    drop(s);
    let last = first.last().unwrap()["eid"].as_u64().unwrap();
    let mut r = EventStream::new(
        d.send(
            Method::GET,
            &format!("/command/{id}/resume?after_eid={last}"),
            &[],
            Bytes::new(),
        )
        .await,
    );
    assert_eq!(r.status, 200);
    let rest = r.collect().await;
    assert_eq!(
        rest[0]["eid"].as_u64().unwrap(),
        last + 1,
        "resumes right after"
    );
    let all: Vec<Value> = first.into_iter().chain(rest).collect();
    let ids = eids(&all);
    assert_eq!(
        ids,
        (0..ids.len() as u64).collect::<Vec<_>>(),
        "contiguous eids, no duplicates"
    );
    let out: String = all
        .iter()
        .filter(|e| e["type"] == "stdout" || e["type"] == "stderr")
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    let expect: String = (1..=400).map(|i| format!("line-{i}\n")).collect();
    assert_eq!(out, expect);
    assert_eq!(terminal(&all)["type"], "execution_complete");
}

#[tokio::test]
async fn many_readers_follow_one_command() {
    let d = std::sync::Arc::new(Daemon::start());
    let id = start_bg(
        &d,
        json!({"command": "for i in $(seq 1 2000); do echo $i; done; sleep 0.2; echo end", "background": true}),
    )
    .await;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (d, id) = (d.clone(), id.clone());
        set.spawn(async move {
            let mut r = EventStream::new(
                d.send(
                    Method::GET,
                    &format!("/command/{id}/resume"),
                    &[],
                    Bytes::new(),
                )
                .await,
            );
            let evs = r.collect().await;
            assert_eq!(evs[0]["type"], "init");
            (text_of(&evs, "stdout"), terminal(&evs)["exit_code"].clone())
        });
    }
    let expect: String = (1..=2000).map(|i| format!("{i}\n")).collect::<String>() + "end\n";
    while let Some(r) = set.join_next().await {
        let (out, code) = r.unwrap();
        assert!(
            out == expect,
            "a reader got different output ({} bytes)",
            out.len()
        );
        assert_eq!(code, 0);
    }
    // After the end, a resume replays everything and closes.
    let mut r = EventStream::new(
        d.send(
            Method::GET,
            &format!("/command/{id}/resume?after_eid=1999"),
            &[],
            Bytes::new(),
        )
        .await,
    );
    let evs = r.collect().await;
    assert_eq!(texts(&evs, "stdout"), ["2000\n", "end\n"]);
}

#[tokio::test]
async fn resume_of_expired_events_is_410_with_the_oldest_eid() {
    let d = Daemon::start_with(&["--output-window", "4KiB", "--spill-cap", "16KiB"], &[]);
    let evs = d.run(json!({"command": "seq 1 100000"})).await;
    let id = evs[0]["text"].as_str().unwrap();
    let r = d.get(&format!("/command/{id}/resume?after_eid=1")).await;
    r.assert_error(410, "EVENTS_EXPIRED");
    let oldest: u64 = r.header("execd-oldest-eid").unwrap().parse().unwrap();
    assert!(oldest > 2);
    // From the oldest retained event on, it works, and the tail is intact.
    let mut s = EventStream::new(
        d.send(
            Method::GET,
            &format!("/command/{id}/resume?after_eid={}", oldest - 1),
            &[],
            Bytes::new(),
        )
        .await,
    );
    let evs = s.collect().await;
    assert_eq!(evs[0]["eid"].as_u64().unwrap(), oldest);
    assert!(text_of(&evs, "stdout").ends_with("99999\n100000\n"));
    d.get(&format!("/command/{id}/resume?after_eid=x"))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.get("/command/nope/resume")
        .await
        .assert_error(404, "COMMAND_NOT_FOUND");
}

/// A finished command's stdin pipe is closed when it ends, not kept open
/// (one file descriptor each) for the retention period.
#[tokio::test]
async fn a_finished_commands_stdin_pipe_is_closed() {
    let d = Daemon::start();
    let base = d.fds();
    let id = start_bg(
        &d,
        json!({"command": "exit 0", "stdin": true, "background": true}),
    )
    .await;
    d.wait_finished(&id, Duration::from_secs(10)).await;
    d.fds_back_to(&base, Duration::from_secs(10)).await;
    write_stdin(&d, &id, false, "late")
        .await
        .assert_error(409, "STDIN_CLOSED");
}

/// Standard base64 (with padding) decoded, for the checks below.
fn unbase64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {s:?}"),
        }
    };
    assert_eq!(s.len() % 4, 0, "padded: {s:?}");
    let mut out = Vec::new();
    for q in s.as_bytes().chunks(4) {
        let pad = q.iter().filter(|&&c| c == b'=').count();
        let n = q
            .iter()
            .map(|&c| if c == b'=' { 0 } else { val(c) })
            .fold(0u32, |n, v| n << 6 | v);
        out.extend_from_slice(&n.to_be_bytes()[1..4 - pad]);
    }
    out
}

/// The bytes of every output event of a base64 stream, in order; each one
/// says it is base64.
fn base64_bytes(evs: &[Value], kind: &str) -> Vec<u8> {
    evs.iter()
        .filter(|e| e["type"] == kind)
        .flat_map(|e| {
            assert_eq!(e["encoding"], "base64", "{e}");
            assert!(e.get("invalid_utf8").is_none(), "{e}");
            unbase64(e["text"].as_str().unwrap())
        })
        .collect()
}

async fn resume_all(d: &Daemon, id: &str) -> Vec<Value> {
    let mut r = EventStream::new(
        d.send(
            Method::GET,
            &format!("/command/{id}/resume"),
            &[],
            Bytes::new(),
        )
        .await,
    );
    assert_eq!(r.status, 200);
    r.collect().await
}

/// Default text events: a line whose bytes were not valid UTF-8 still
/// becomes text (U+FFFD), and says so with `"invalid_utf8": true`; valid
/// lines carry no flag. A resume says the same.
#[tokio::test]
async fn invalid_utf8_in_text_events_is_flagged() {
    let d = Daemon::start();
    let evs = d
        .run(json!({ "command": r"printf 'ok é\n\377\376\n'; printf 'x\300\n' >&2" }))
        .await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    let check = |evs: &[Value]| {
        let out: Vec<&Value> = evs.iter().filter(|e| e["type"] == "stdout").collect();
        assert_eq!(out.len(), 2, "{evs:?}");
        assert_eq!(out[0]["text"], "ok é\n");
        assert!(out[0].get("invalid_utf8").is_none(), "{}", out[0]);
        assert!(out[0].get("encoding").is_none(), "{}", out[0]);
        assert_eq!(out[1]["text"], "\u{FFFD}\u{FFFD}\n");
        assert_eq!(out[1]["invalid_utf8"], true, "{}", out[1]);
        let err: Vec<&Value> = evs.iter().filter(|e| e["type"] == "stderr").collect();
        assert_eq!(err.len(), 1, "{evs:?}");
        assert_eq!(err[0]["text"], "x\u{FFFD}\n");
        assert_eq!(err[0]["invalid_utf8"], true);
    };
    check(&evs);
    check(&resume_all(&d, &id).await);
    // The logs route serves the bytes themselves.
    let logs = d.get(&format!("/command/{id}/logs")).await;
    assert!(logs.body.windows(3).any(|w| w == b"\xff\xfe\n"));
}

/// `"output_encoding": "base64"`: every stdout/stderr event carries its
/// bytes as base64 in `text`, with `"encoding": "base64"`; together they
/// are the command's bytes exactly. Resume keeps the encoding; an unknown
/// encoding is a 400; a session run may ask for it too.
#[tokio::test]
async fn base64_output_carries_every_byte() {
    let d = Daemon::start();
    let evs = d
        .run(json!({
            "command": r"printf 'ok\n\377\376\000\r\n'; printf '\300err' >&2",
            "output_encoding": "base64",
        }))
        .await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    assert_eq!(terminal(&evs)["exit_code"], 0);
    assert_eq!(base64_bytes(&evs, "stdout"), b"ok\n\xff\xfe\x00\r\n");
    assert_eq!(base64_bytes(&evs, "stderr"), b"\xc0err");
    let again = resume_all(&d, &id).await;
    assert_eq!(base64_bytes(&again, "stdout"), b"ok\n\xff\xfe\x00\r\n");
    assert_eq!(base64_bytes(&again, "stderr"), b"\xc0err");
    // init and the terminal event are as always.
    assert_eq!(again[0]["type"], "init");
    assert_eq!(again[0]["text"], id);

    d.post_json(
        "/command",
        &json!({ "command": "true", "output_encoding": "hex" }),
    )
    .await
    .assert_error(400, "INVALID_REQUEST_BODY");

    let r = d.post_json("/session", &json!({})).await;
    let sid = r.json()["session_id"].as_str().unwrap().to_string();
    let evs = d
        .stream(
            &format!("/session/{sid}/run"),
            &json!({ "command": r"printf '\377x\n'", "output_encoding": "base64" }),
        )
        .await
        .collect()
        .await;
    assert_eq!(base64_bytes(&evs, "stdout"), b"\xffx\n");
}

/// A resume replays `init` and the terminal event with the times they
/// first had, not the time of the replay.
#[tokio::test]
async fn resume_keeps_the_original_timestamps() {
    let d = Daemon::start();
    let evs = d.run(json!({ "command": "echo a; exit 3" })).await;
    let id = evs[0]["text"].as_str().unwrap().to_string();
    // Let the clock move on (by more than the millisecond the timestamps
    // count in) before replaying.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let again = resume_all(&d, &id).await;
    assert_eq!(evs.len(), again.len(), "{evs:?} {again:?}");
    for (a, b) in evs.iter().zip(&again) {
        assert_eq!(a["type"], b["type"]);
        assert_eq!(a["timestamp"], b["timestamp"], "{a} vs {b}");
    }
    assert!(terminal(&again)["timestamp"].as_u64() >= evs[0]["timestamp"].as_u64());
}

/// Output the spill cap discarded is reported, never lost silently: the
/// terminal event and the status count it in `dropped_bytes`, and it is
/// exactly what the logs route no longer has (its oldest retained offset).
#[tokio::test]
async fn spill_cap_discards_are_counted_in_dropped_bytes() {
    let d = Daemon::start_with(&["--output-window", "4KiB", "--spill-cap", "16KiB"], &[]);
    let evs = d.run(json!({"command": "seq 1 100000"})).await;
    let id = evs[0]["text"].as_str().unwrap();
    let total = 588_895u64; // the bytes `seq 1 100000` prints
    let dropped = terminal(&evs)["dropped_bytes"].as_u64().unwrap();
    assert!(dropped > 0, "{}", terminal(&evs));
    // At most the window and the cap (with record headers) are retained.
    assert!(dropped >= total - 4096 - 16384, "{dropped}");
    let st = d.get(&format!("/command/status/{id}")).await.json();
    assert_eq!(st["dropped_bytes"], dropped, "{st}");
    assert_eq!(st["output_bytes"], total, "{st}");
    let logs = d.get(&format!("/command/{id}/logs")).await;
    let start: u64 = logs
        .header("execd-commands-log-start")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(start, dropped, "what is gone is what was counted");
    assert_eq!(logs.body.len() as u64, total - dropped);
}

/// A stream that arrives faster than one frame carries (the large frames of
/// a stream reuse one buffer, handed back by the connection): every line
/// arrives once, whole, in order, with contiguous eids, as text and as
/// base64.
#[tokio::test]
async fn a_fast_stream_arrives_whole_in_order() {
    let d = Daemon::start();
    for (lines, base64) in [(100_000u32, false), (20_000, true)] {
        let mut req = json!({"command": format!("seq -f '%0100g' 1 {lines}")});
        if base64 {
            req["output_encoding"] = json!("base64");
        }
        let evs = d.run(req).await;
        let out: Vec<&Value> = evs.iter().filter(|e| e["type"] == "stdout").collect();
        assert_eq!(out.len(), lines as usize, "base64 {base64}");
        for (i, ev) in out.iter().enumerate() {
            assert_eq!(ev["eid"].as_u64(), Some(i as u64 + 1), "base64 {base64}");
            let text = ev["text"].as_str().unwrap();
            let got = if base64 {
                assert_eq!(ev["encoding"], "base64");
                String::from_utf8(data_encoding::BASE64.decode(text.as_bytes()).unwrap()).unwrap()
            } else {
                text.to_string()
            };
            assert_eq!(got, format!("{:0100}\n", i + 1), "base64 {base64}");
        }
        assert_eq!(terminal(&evs)["exit_code"], 0);
    }
}
