//! Black-box tests of `/code` with real Jupyter kernels (ipykernel and
//! bash_kernel from a venv made by `tests/kernel-venv.sh`, by default
//! `target/kernel-venv`; `EXECD_KERNEL_VENV` overrides). Without the venv
//! the kernel tests are skipped with a loud message, except under CI
//! (`CI` set), where they fail.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// A 1x1 PNG, base64 as Jupyter carries it.
const PNG_B64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

fn venv() -> Option<PathBuf> {
    let v = std::env::var_os("EXECD_KERNEL_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/kernel-venv"));
    let share = v.join("share/jupyter");
    if share.join("kernels/python3/kernel.json").is_file()
        && share.join("kernels/bash/kernel.json").is_file()
    {
        return Some(share);
    }
    let msg = format!(
        "kernel venv not found at {} (run tests/kernel-venv.sh)",
        v.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg} !!!!!!!!\n");
    None
}

/// A daemon whose kernels come from the venv only; its data dir is `data`.
fn daemon(share: &Path, data: &TempDir, extra: &[&str]) -> Daemon {
    let dd = data.join("data");
    let mut args = vec!["--data-dir", dd.as_str()];
    args.extend_from_slice(extra);
    Daemon::start_with(
        &args,
        &[
            ("JUPYTER_PATH", share.to_str().expect("utf-8 path")),
            ("JUPYTER_DATA_DIR", data.join("nojupyter").as_str()),
        ],
    )
}

async fn create(d: &Daemon, language: &str) -> Value {
    let r = d
        .post_json("/code/context", &json!({"language": language}))
        .await;
    assert_eq!(r.status, 200, "create {language}: {}", r.text());
    let v = r.json();
    assert_eq!(v["language"], language);
    assert_eq!(v["id"].as_str().map(str::len), Some(32), "{v}");
    v
}

async fn run(d: &Daemon, id: &str, code: &str) -> Vec<Value> {
    let mut s = d
        .stream("/code", &json!({"code": code, "context": {"id": id}}))
        .await;
    assert_eq!(s.status, 200, "run {code:?}");
    let evs = s.collect().await;
    assert_eq!(evs[0]["type"], "init", "{evs:?}");
    assert_eq!(evs[0]["text"], id);
    for e in &evs {
        assert!(e["timestamp"].as_u64().is_some(), "no timestamp: {e}");
    }
    evs
}

fn results(evs: &[Value]) -> Vec<&Value> {
    evs.iter()
        .filter(|e| e["type"] == "result")
        .map(|e| &e["results"])
        .collect()
}

fn conn_files(data: &TempDir) -> Vec<String> {
    std::fs::read_dir(data.0.join("data/kernels"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn python_state_streams_results_and_errors() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-py");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");

    // The connection file is private.
    let files: Vec<String> = conn_files(&data)
        .into_iter()
        .filter(|f| f.ends_with(".json"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let meta = std::fs::metadata(data.0.join("data/kernels").join(&files[0])).expect("stat");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let evs = run(&d, id, "x = 41").await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");

    let evs = run(
        &d,
        id,
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\nx + 1",
    )
    .await;
    assert_eq!(text_of(&evs, "stdout"), "out\n");
    assert_eq!(text_of(&evs, "stderr"), "err\n");
    let r = results(&evs);
    assert_eq!(r.len(), 1, "{evs:?}");
    assert_eq!(r[0]["text"], "42", "state kept across runs: {evs:?}");
    assert!(evs
        .iter()
        .any(|e| e["type"] == "execution_count" && e["execution_count"] == 2));
    let last = terminal(&evs);
    assert_eq!(last["type"], "execution_complete");
    assert!(last["execution_time"].as_u64().is_some(), "{last}");

    let evs = run(&d, id, "def f():\n    return 1/0\nf()").await;
    let last = terminal(&evs);
    assert_eq!(last["type"], "error", "{evs:?}");
    assert_eq!(last["error"]["ename"], "ZeroDivisionError");
    assert_eq!(last["error"]["evalue"], "division by zero");
    let tb = last["error"]["traceback"].as_array().expect("traceback");
    assert!(tb.len() >= 2, "{last}");
    assert!(!evs.iter().any(|e| e["type"] == "execution_complete"));

    // Contexts: get, list, list by language.
    let g = d.get(&format!("/code/contexts/{id}")).await;
    assert_eq!(g.status, 200);
    assert_eq!(g.json()["state"], "idle");
    let l = d.get("/code/contexts").await.json();
    assert_eq!(l.as_array().map(Vec::len), Some(1), "{l}");
    let l = d.get("/code/contexts?language=bash").await.json();
    assert_eq!(l, json!([]));
}

#[tokio::test]
async fn display_data_and_updates_are_results_with_every_mime_type() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-png");
    let d = daemon(&share, &data, &[]);
    // The default context, made on first use.
    let code = format!(
        "import base64\nfrom IPython.display import display, Image\n\
         display(Image(data=base64.b64decode('{PNG_B64}'), format='png'))\n\
         h = display('first', display_id=True)\nh.update('second')"
    );
    let mut s = d
        .stream(
            "/code",
            &json!({"code": code, "context": {"language": "python"}}),
        )
        .await;
    assert_eq!(s.status, 200);
    let evs = s.collect().await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    let r = results(&evs);
    assert_eq!(r.len(), 3, "{evs:?}");
    assert_eq!(r[0]["image/png"], PNG_B64, "PNG stays base64: {}", r[0]);
    assert!(
        r[0]["text"].as_str().is_some_and(|t| t.contains("Image")),
        "{}",
        r[0]
    );
    assert_eq!(r[1]["text"], "'first'");
    assert_eq!(r[2]["text"], "'second'", "update_display_data forwarded");

    // The default context is reused.
    let ctxs = d.get("/code/contexts?language=python").await.json();
    assert_eq!(ctxs.as_array().map(Vec::len), Some(1), "{ctxs}");
    let evs = d
        .stream(
            "/code",
            &json!({"code": "h", "context": {"language": "python"}}),
        )
        .await
        .collect()
        .await;
    assert_eq!(evs[0]["text"], ctxs[0]["id"]);
}

/// Starts `code` (which prints `started` first) and returns the stream once
/// that line arrived.
async fn started(d: &Daemon, body: Value) -> (EventStream, Vec<Value>) {
    let mut s = d.stream("/code", &body).await;
    assert_eq!(s.status, 200);
    let mut seen = Vec::new();
    while let Some(e) = s.next().await {
        let go = e["type"] == "stdout" && e["text"].as_str().is_some_and(|t| t.contains("started"));
        seen.push(e);
        if go {
            return (s, seen);
        }
    }
    panic!("the run ended before printing 'started': {seen:?}");
}

#[tokio::test]
async fn interrupt_busy_and_timeout() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-int");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    run(&d, id, "import time\nkept = 'yes'").await;

    let sleep = "print('started', flush=True)\ntime.sleep(60)";
    let (mut s, _) = started(&d, json!({"code": sleep, "context": {"id": id}})).await;

    // A second run on the busy context: 409 with an envelope, no stream.
    let r = d
        .post_json("/code", &json!({"code": "1", "context": {"id": id}}))
        .await;
    r.assert_error(409, "CONTEXT_BUSY");
    assert_eq!(
        d.get(&format!("/code/contexts/{id}")).await.json()["state"],
        "busy"
    );

    let r = d.delete(&format!("/code?id={id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = s.collect().await;
    let last = terminal(&evs);
    assert_eq!(last["type"], "error", "{evs:?}");
    assert_eq!(last["error"]["ename"], "KeyboardInterrupt");

    // The kernel survived the interrupt, with its state.
    let evs = run(&d, id, "kept").await;
    assert_eq!(results(&evs)[0]["text"], "'yes'");

    // timeout (extension): interrupted, ended with timed_out.
    let mut s = d
        .stream(
            "/code",
            &json!({"code": "time.sleep(60)", "timeout": 300, "context": {"id": id}}),
        )
        .await;
    assert_eq!(s.status, 200);
    let evs = s.collect().await;
    let last = terminal(&evs);
    assert_eq!(last["type"], "error", "{evs:?}");
    assert_eq!(last["timed_out"], true, "{last}");
    let evs = run(&d, id, "kept").await;
    assert_eq!(results(&evs)[0]["text"], "'yes'", "usable after a timeout");
}

#[tokio::test]
async fn kernel_death_mid_run_ends_the_run_and_the_context_reports_it() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-die");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    let pid = ctx["pid"].as_u64().expect("pid") as u32;

    let evs = run(
        &d,
        id,
        "import os\nprint('started', flush=True)\nos._exit(3)",
    )
    .await;
    let last = terminal(&evs);
    assert_eq!(last["type"], "error", "{evs:?}");
    assert_eq!(last["error"]["ename"], "KernelDied");
    assert!(
        last["error"]["evalue"]
            .as_str()
            .is_some_and(|v| v.contains("exit status 3")),
        "{last}"
    );
    assert!(!alive(pid), "the kernel is reaped");
    let g = d.get(&format!("/code/contexts/{id}")).await.json();
    assert_eq!(g["state"], "dead", "{g}");
    assert!(conn_files(&data).is_empty(), "{:?}", conn_files(&data));
    let r = d
        .post_json("/code", &json!({"code": "1", "context": {"id": id}}))
        .await;
    r.assert_error(409, "CONTEXT_DEAD");

    // A kernel killed from outside, mid-run (SIGKILL: no goodbye at all).
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    let pid = ctx["pid"].as_u64().expect("pid") as i32;
    let (mut s, _) = started(
        &d,
        json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(60)", "context": {"id": id}}),
    )
    .await;
    // SAFETY: kill(2) on the kernel's pid, which this test's daemon started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let evs = s.collect().await;
    let last = terminal(&evs);
    assert_eq!(last["error"]["ename"], "KernelDied", "{evs:?}");
}

#[tokio::test]
async fn bash_context_keeps_state() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-bash");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "bash").await;
    let id = ctx["id"].as_str().expect("id");
    let evs = run(&d, id, "export GREETING=hello\ncd /").await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    let evs = run(&d, id, "echo $GREETING from $(pwd)").await;
    assert_eq!(text_of(&evs, "stdout").trim(), "hello from /", "{evs:?}");
}

#[tokio::test]
async fn delete_and_shutdown_leave_no_process_and_no_file() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-del");
    let mut d = daemon(&share, &data, &["--max-code-contexts", "2"]);
    let py = create(&d, "python").await;
    let bash = create(&d, "bash").await;
    // The cap: a third context is refused.
    d.post_json("/code/context", &json!({"language": "python"}))
        .await
        .assert_error(429, "TOO_MANY_CONTEXTS");

    let py_pid = py["pid"].as_u64().expect("pid") as u32;
    let bash_pid = bash["pid"].as_u64().expect("pid") as u32;
    // bash_kernel runs bash on a terminal of its own: a descendant outside
    // the kernel's process group.
    run(&d, bash["id"].as_str().expect("id"), "echo warm").await;
    let mut tree = vec![bash_pid];
    tree.extend(descendants(bash_pid));
    assert!(tree.len() >= 2, "bash_kernel has a child: {tree:?}");
    // A connection file each, and each kernel's five Unix sockets.
    let files = conn_files(&data);
    assert_eq!(
        files.iter().filter(|f| f.ends_with(".json")).count(),
        2,
        "{files:?}"
    );
    assert_eq!(files.len(), 12, "{files:?}");

    let r = d
        .delete(&format!(
            "/code/contexts/{}",
            py["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        !alive(py_pid),
        "deleted context's kernel is gone when DELETE answers"
    );
    let bash_id = bash["id"].as_str().expect("id");
    let files = conn_files(&data);
    assert_eq!(files.len(), 6, "{files:?}");
    assert!(files.iter().all(|f| f.contains(bash_id)), "{files:?}");
    d.get(&format!(
        "/code/contexts/{}",
        py["id"].as_str().expect("id")
    ))
    .await
    .assert_error(404, "CONTEXT_NOT_FOUND");

    d.signal(libc::SIGTERM);
    assert!(
        d.wait_exit(Duration::from_secs(20)).is_some(),
        "execd exits"
    );
    for p in &tree {
        assert!(
            !alive(*p),
            "process {p} of the bash kernel survived shutdown"
        );
    }
    assert!(
        !data.0.join("data/kernels").exists(),
        "connection files removed at shutdown"
    );
}

/// Routes and errors that need no kernel at all.
#[tokio::test]
async fn errors_without_kernels() {
    let empty = TempDir::new("code-nokernel");
    let d = Daemon::start_with(
        &[],
        &[
            ("JUPYTER_PATH", empty.0.to_str().expect("utf-8")),
            ("JUPYTER_DATA_DIR", empty.0.to_str().expect("utf-8")),
        ],
    );
    d.post_json("/code", &json!({"context": {"language": "python"}}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.post_json(
        "/code",
        &json!({"code": "  ", "context": {"language": "python"}}),
    )
    .await
    .assert_error(400, "INVALID_REQUEST_BODY");
    let r = d
        .post_json(
            "/code",
            &json!({"code": "select 1", "context": {"language": "sql"}}),
        )
        .await;
    r.assert_error(400, "NOT_SUPPORTED");
    assert!(r.text().contains("MySQL"), "{}", r.text());
    let r = d
        .post_json("/code/context", &json!({"language": "cobol"}))
        .await;
    r.assert_error(400, "NOT_SUPPORTED");
    assert!(
        r.text().contains("JUPYTER_PATH"),
        "names what is missing: {}",
        r.text()
    );
    d.post_json("/code/context", &json!({}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    d.post_json("/code", &json!({"code": "1", "context": {"id": "nope"}}))
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
    d.get("/code/contexts/nope")
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
    d.delete("/code/contexts/nope")
        .await
        .assert_error(404, "CONTEXT_NOT_FOUND");
    d.delete("/code/contexts")
        .await
        .assert_error(400, "MISSING_QUERY");
    d.delete("/code").await.assert_error(400, "MISSING_QUERY");
    d.delete("/code?id=nope")
        .await
        .assert_error(404, "COMMAND_NOT_FOUND");
    assert_eq!(d.get("/code/contexts").await.json(), json!([]));
    let r = d.delete("/code/contexts?language=python").await;
    assert_eq!(r.status, 200);

    // language command / absent: the same as POST /command.
    for lang in [json!("command"), Value::Null] {
        let mut s = d
            .stream(
                "/code",
                &json!({"code": "echo via-code", "context": {"language": lang}}),
            )
            .await;
        assert_eq!(s.status, 200);
        let evs = s.collect().await;
        assert_eq!(text_of(&evs, "stdout"), "via-code\n");
        assert_eq!(terminal(&evs)["type"], "execution_complete");
    }
}

/// The code-interpreter SDK's readiness probe, as it sends it.
#[tokio::test]
async fn sdk_readiness_probe_reaches_execd() {
    let d = Daemon::start();
    let evs = d
        .run(json!({"command": "bash -c 'exec 3<>/dev/tcp/127.0.0.1/${JUPYTER_PORT:-44771}' && echo $JUPYTER_PORT"}))
        .await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    assert_eq!(text_of(&evs, "stdout").trim(), d.addr.port().to_string());
}

/// execd killed outright (no shutdown): its kernels notice and exit.
#[tokio::test]
async fn kernels_exit_when_execd_is_killed() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-kill9");
    let mut d = daemon(&share, &data, &[]);
    let pid = create(&d, "python").await["pid"].as_u64().expect("pid") as u32;
    d.signal(libc::SIGKILL);
    assert!(d.wait_exit(Duration::from_secs(10)).is_some());
    eventually(Duration::from_secs(30), "the orphaned kernel exits", || {
        !alive(pid)
    })
    .await;
}

/// A big stream message (one write of 20 MiB) arrives whole, in pieces of
/// at most 1 MiB; so does one over the 64 MiB message limit (stream
/// messages are streamed, not held); any other message over the limit is
/// dropped with a notice on stderr, and the kernel and its state survive.
#[tokio::test]
async fn big_output_is_split_and_streamed_and_oversized_results_dropped() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-big");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    run(&d, id, "import sys\nkept = 1").await;
    for (what, n) in [("y", 20 << 20), ("z", 65 << 20)] {
        let evs = run(
            &d,
            id,
            &format!("sys.stdout.write('{what}' * {n})\nsys.stdout.flush()"),
        )
        .await;
        assert_eq!(
            terminal(&evs)["type"],
            "execution_complete",
            "{:?}",
            evs.last()
        );
        let pieces = texts(&evs, "stdout");
        assert_eq!(pieces.iter().map(String::len).sum::<usize>(), n);
        assert!(pieces
            .iter()
            .all(|p| p.len() <= 1 << 20 && p.bytes().all(|b| b == what.as_bytes()[0])));
    }

    let evs = run(
        &d,
        id,
        "from IPython.display import display\ndisplay({'text/plain': 'z' * (65 << 20)}, raw=True)",
    )
    .await;
    assert_eq!(
        terminal(&evs)["type"],
        "execution_complete",
        "{:?}",
        evs.last()
    );
    assert!(results(&evs).is_empty(), "{evs:?}");
    let err = text_of(&evs, "stderr");
    assert!(err.contains("over the 64 MiB limit"), "{err}");
    let evs = run(&d, id, "print('y' * 1000)\nkept").await;
    assert_eq!(text_of(&evs, "stdout").len(), 1001);
    assert_eq!(results(&evs)[0]["text"], "1");
}

/// 100 MB printed by a cell, in one write (ipykernel sends it as one IOPub
/// message of 100 MB) and then in many: execd's peak RSS grows by far less
/// than the output, and every byte and line arrives, with non-ASCII text
/// intact across the pieces.
#[tokio::test]
async fn hundred_mb_printed_keeps_rss_bounded_and_arrives_whole() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-rss");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    // A line of 1000 bytes: 994 ASCII, 'é' (2 bytes), '日' (3), '\n'.
    run(
        &d,
        id,
        "import sys\nline = 'x' * 994 + 'é日' + '\\n'\nassert len(line.encode()) == 1000",
    )
    .await;
    let before = d.proc_kib("VmHWM");
    for code in [
        "sys.stdout.write(line * 100_000)\nsys.stdout.flush()",
        "for _ in range(100):\n    sys.stdout.write(line * 1000)\nsys.stdout.flush()",
    ] {
        let mut s = d
            .stream("/code", &json!({"code": code, "context": {"id": id}}))
            .await;
        assert_eq!(s.status, 200);
        let (mut bytes, mut lines, mut last) = (0usize, 0usize, Value::Null);
        let mut partial = String::new();
        while let Some(e) = s.next().await {
            if e["type"] == "stdout" {
                let t = e["text"].as_str().expect("text");
                bytes += t.len();
                // Whole lines, wherever the pieces were cut.
                partial.push_str(t);
                let mut rest = partial.as_str();
                while let Some(at) = rest.find('\n') {
                    assert_eq!(rest[..at].len(), 999, "a line arrived damaged");
                    assert!(rest[..at].ends_with("é日"));
                    lines += 1;
                    rest = &rest[at + 1..];
                }
                partial = rest.to_string();
            }
            last = e;
        }
        assert_eq!(last["type"], "execution_complete", "{last}");
        assert_eq!((bytes, lines), (100_000_000, 100_000), "{code}");
    }
    let grew = d.proc_kib("VmHWM").saturating_sub(before);
    eprintln!("execd VmHWM grew by {grew} KiB while 2 x 100 MB were printed");
    assert!(grew < 32 * 1024, "execd's peak RSS grew by {grew} KiB");
}

/// `--code-idle-timeout`: an idle context is deleted and its kernel killed;
/// a busy one is not.
#[tokio::test]
async fn idle_contexts_expire() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-idle");
    let d = daemon(&share, &data, &["--code-idle-timeout", "3s"]);
    let idle = create(&d, "python").await;
    let busy = create(&d, "python").await;
    let busy_id = busy["id"].as_str().expect("id").to_string();
    let (mut s, _) = started(
        &d,
        json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(8)", "context": {"id": busy_id}}),
    )
    .await;
    let pid = idle["pid"].as_u64().expect("pid") as u32;
    eventually(Duration::from_secs(30), "the idle kernel is gone", || {
        !alive(pid)
    })
    .await;
    d.get(&format!(
        "/code/contexts/{}",
        idle["id"].as_str().expect("id")
    ))
    .await
    .assert_error(404, "CONTEXT_NOT_FOUND");
    let evs = s.collect().await;
    assert_eq!(
        terminal(&evs)["type"],
        "execution_complete",
        "a busy context is not expired: {evs:?}"
    );
}

/// A kernel that cannot start: a clear 500 at once, no process and no
/// connection file left behind.
#[tokio::test]
async fn kernel_start_failures_are_reported_and_cleaned_up() {
    let dir = TempDir::new("code-badspec");
    for (name, argv) in [
        (
            "exits",
            json!([
                "/bin/sh",
                "-c",
                "echo kernel-says-no >&2; exit 7",
                "{connection_file}"
            ]),
        ),
        (
            "missing",
            json!(["/nonexistent/kernel", "-f", "{connection_file}"]),
        ),
    ] {
        let k = dir.0.join("share/kernels").join(name);
        std::fs::create_dir_all(&k).expect("mkdir");
        let spec = json!({"argv": argv, "language": name, "display_name": name});
        std::fs::write(k.join("kernel.json"), spec.to_string()).expect("write");
    }
    let dd = dir.join("data");
    let d = Daemon::start_with(
        &["--data-dir", dd.as_str()],
        &[
            ("JUPYTER_PATH", dir.join("share").as_str()),
            ("JUPYTER_DATA_DIR", dir.join("none").as_str()),
        ],
    );
    let r = d
        .post_json("/code/context", &json!({"language": "exits"}))
        .await;
    r.assert_error(500, "RUNTIME_ERROR");
    assert!(
        r.text().contains("exit status 7") && r.text().contains("kernel-says-no"),
        "{}",
        r.text()
    );
    let r = d
        .post_json("/code/context", &json!({"language": "missing"}))
        .await;
    r.assert_error(500, "RUNTIME_ERROR");
    assert!(r.text().contains("/nonexistent/kernel"), "{}", r.text());
    assert!(conn_files(&dir).is_empty(), "{:?}", conn_files(&dir));
    assert_eq!(d.get("/code/contexts").await.json(), json!([]));
    assert!(
        descendants(d.pid()).is_empty(),
        "{:?}",
        descendants(d.pid())
    );
}

/// Connection files hold the kernels' keys: a `kernels` directory that
/// someone else could enter or write (made in advance, here mode 0777) is
/// refused before any key is written or any kernel started.
#[tokio::test]
async fn connection_files_only_in_a_private_directory() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("code-squat");
    let k = dir.0.join("share/kernels/fake");
    std::fs::create_dir_all(&k).expect("mkdir");
    let spec =
        json!({"argv": ["/bin/sh", "-c", "exit 7", "{connection_file}"], "language": "fake"});
    std::fs::write(k.join("kernel.json"), spec.to_string()).expect("write");
    let data = dir.0.join("data");
    std::fs::create_dir_all(data.join("kernels")).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::set_permissions(data.join("kernels"), std::fs::Permissions::from_mode(0o777))
        .expect("chmod");
    let d = Daemon::start_with(
        &["--data-dir", data.to_str().expect("utf-8")],
        &[
            ("JUPYTER_PATH", dir.join("share").as_str()),
            ("JUPYTER_DATA_DIR", dir.join("none").as_str()),
        ],
    );
    let r = d
        .post_json("/code/context", &json!({"language": "fake"}))
        .await;
    r.assert_error(500, "RUNTIME_ERROR");
    assert!(r.text().contains("not a private directory"), "{}", r.text());
    assert!(conn_files(&dir).is_empty(), "{:?}", conn_files(&dir));
}

/// A code run is recorded like a command: `init` carries its `command_id`,
/// every event an `eid`; status, logs and resume work with that id, and
/// several readers follow one run, each from where it wants.
#[tokio::test]
async fn code_runs_have_eids_status_logs_and_resume() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-resume");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    let evs = run(
        &d,
        id,
        "import sys\nprint('a')\nprint('b', file=sys.stderr)\n6 * 7",
    )
    .await;
    let cid = evs[0]["command_id"]
        .as_str()
        .expect("command_id")
        .to_string();
    let eids: Vec<u64> = evs
        .iter()
        .map(|e| e["eid"].as_u64().expect("eid"))
        .collect();
    assert!(eids.windows(2).all(|w| w[0] < w[1]), "{eids:?}");

    let st = d.get(&format!("/command/status/{cid}")).await.json();
    assert_eq!(st["running"], false, "{st}");
    assert_eq!(st["exit_code"], 0, "{st}");
    let logs = d.get(&format!("/command/{cid}/logs")).await.text();
    assert_eq!(logs, "a\nb\n");

    // resume from the start: the same events, init included.
    let mut r = get_stream(&d, &format!("/command/{cid}/resume")).await;
    assert_eq!(r.status, 200);
    let again = r.collect().await;
    let strip = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .filter(|e| e["type"] != "ping")
            .map(|e| {
                let mut e = e.clone();
                e.as_object_mut().map(|o| o.remove("timestamp"));
                e
            })
            .collect()
    };
    assert_eq!(strip(&again), strip(&evs));
    // ... and from after the execution_count event.
    let ec = evs
        .iter()
        .find(|e| e["type"] == "execution_count")
        .expect("count");
    let n = ec["eid"].as_u64().expect("eid");
    let later = get_stream(&d, &format!("/command/{cid}/resume?after_eid={n}"))
        .await
        .collect()
        .await;
    assert!(
        later.iter().all(|e| e["eid"].as_u64() > Some(n)),
        "{later:?}"
    );
    assert_eq!(results(&later)[0]["text"], "42");

    // Two readers of one live run.
    let (mut a, seen) = started(
        &d,
        json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(1)\nprint('done')", "context": {"id": id}}),
    )
    .await;
    let cid = seen[0]["command_id"]
        .as_str()
        .expect("command_id")
        .to_string();
    assert_eq!(
        d.get(&format!("/command/status/{cid}")).await.json()["running"],
        true
    );
    let mut b = get_stream(&d, &format!("/command/{cid}/resume")).await;
    let from_b = b.collect().await;
    let from_a = a.collect().await;
    for evs in [&from_a, &from_b] {
        assert!(text_of(evs, "stdout").contains("done"), "{evs:?}");
        assert_eq!(terminal(evs)["type"], "execution_complete");
    }
}

async fn get_stream(d: &Daemon, path: &str) -> EventStream {
    EventStream::new(
        d.send(http::Method::GET, path, &[], bytes::Bytes::new())
            .await,
    )
}

/// `DELETE /command?id=` with a code run's id interrupts its kernel.
#[tokio::test]
async fn interrupt_by_run_id() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-intrun");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    let (mut s, seen) = started(
        &d,
        json!({"code": "import time\nprint('started', flush=True)\ntime.sleep(60)", "context": {"id": id}}),
    )
    .await;
    let cid = seen[0]["command_id"]
        .as_str()
        .expect("command_id")
        .to_string();
    let r = d.delete(&format!("/command?id={cid}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = s.collect().await;
    assert_eq!(
        terminal(&evs)["error"]["ename"],
        "KeyboardInterrupt",
        "{evs:?}"
    );
    let st = d.get(&format!("/command/status/{cid}")).await.json();
    assert_eq!(st["running"], false);
    assert_eq!(st["exit_code"], 1, "{st}");
}

/// Kernels get the command environment: execd's secrets are not in it.
#[tokio::test]
async fn kernels_do_not_see_the_access_token() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-secret");
    let dd = data.join("data");
    let d = Daemon::start_with(
        &["--data-dir", dd.as_str()],
        &[
            ("EXECD_ACCESS_TOKEN", "s3cret-token"),
            ("JUPYTER_PATH", share.to_str().expect("utf-8")),
            ("JUPYTER_DATA_DIR", data.join("nojupyter").as_str()),
        ],
    );
    let ctx = create(&d, "python").await;
    let id = ctx["id"].as_str().expect("id");
    let evs = run(
        &d,
        id,
        "import os\nprint(os.environ.get('EXECD_ACCESS_TOKEN'), 's3cret' in str(os.environ))",
    )
    .await;
    assert_eq!(text_of(&evs, "stdout"), "None False\n", "{evs:?}");
}

/// The ZeroMQ socket type served on a loopback TCP port (greeting and
/// READY exchanged as a PUSH peer would).
fn zmtp_socket_type(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut greeting = [0u8; 64];
    greeting[0] = 0xff;
    greeting[9] = 0x7f;
    greeting[10] = 3;
    greeting[12..16].copy_from_slice(b"NULL");
    s.write_all(&greeting).expect("greeting");
    let mut ready = vec![5u8];
    ready.extend_from_slice(b"READY");
    ready.push(11);
    ready.extend_from_slice(b"Socket-Type");
    ready.extend_from_slice(&4u32.to_be_bytes());
    ready.extend_from_slice(b"PUSH");
    s.write_all(&[0x04, ready.len() as u8]).expect("frame");
    s.write_all(&ready).expect("ready");
    let mut peer = [0u8; 64];
    s.read_exact(&mut peer).expect("peer greeting");
    let mut head = [0u8; 2];
    s.read_exact(&mut head).expect("frame head");
    assert_eq!(head[0] & 0x06, 0x04, "a short command frame");
    let mut body = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut body).expect("frame");
    let at = body
        .windows(11)
        .position(|w| w.eq_ignore_ascii_case(b"Socket-Type"))
        .expect("Socket-Type")
        + 11;
    let len = u32::from_be_bytes(body[at..at + 4].try_into().expect("len")) as usize;
    String::from_utf8_lossy(&body[at + 4..at + 4 + len]).into_owned()
}

/// Socket inodes of `pid`'s open fds.
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            l.to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The kernel's channels are Unix sockets in execd's private 0700
/// directory (ZeroMQ `ipc`), removed with the kernel; the kernel listens on
/// no TCP port, so no other local process can read its IOPub or drive it.
#[tokio::test]
async fn kernel_channels_are_private_unix_sockets_not_tcp() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-ipc");
    let d = daemon(&share, &data, &[]);
    let kernels = data.0.join("data/kernels");
    for language in ["python", "bash"] {
        let ctx = create(&d, language).await;
        let id = ctx["id"].as_str().expect("id");
        let pid = ctx["pid"].as_u64().expect("pid") as u32;
        let code = if language == "python" {
            "1+1"
        } else {
            "echo 2"
        };
        let evs = run(&d, id, code).await;
        assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");

        let mode = std::fs::metadata(&kernels)
            .expect("dir")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
        let socks: Vec<_> = std::fs::read_dir(&kernels)
            .expect("dir")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_socket()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("k-{id}-")))
            .collect();
        assert_eq!(socks.len(), 5, "{socks:?}");

        let mine = socket_inodes(pid);
        assert!(!mine.is_empty());
        // Listening TCP sockets (state 0A) of the kernel: none is a
        // Jupyter channel. (ipykernel always listens on one loopback port of
        // its own: a ZeroMQ PULL socket through which forked children send
        // their output, dropped unless it starts with a random 16-byte token;
        // it serves nothing to read. Its socket type is checked here.)
        for f in ["tcp", "tcp6"] {
            let table = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
            for line in table.lines().skip(1) {
                let c: Vec<&str> = line.split_whitespace().collect();
                let inode: u64 = c.get(9).and_then(|i| i.parse().ok()).unwrap_or(0);
                if c.get(3) != Some(&"0A") || !mine.contains(&inode) {
                    continue;
                }
                let port = c
                    .get(1)
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| u16::from_str_radix(p, 16).ok())
                    .expect("port");
                let kind = zmtp_socket_type(port);
                assert_eq!(
                    kind, "PULL",
                    "the {language} kernel serves a {kind} socket on TCP port {port}"
                );
            }
        }
        // Its listening Unix sockets are the ones in the private directory.
        let unix = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).expect("unix");
        let bound: Vec<&str> = unix
            .lines()
            .skip(1)
            .filter_map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                let inode: u64 = c.get(6)?.parse().ok()?;
                (mine.contains(&inode)).then_some(*c.get(7)?)
            })
            .collect();
        let prefix = kernels.join(format!("k-{id}-"));
        let prefix = prefix.to_str().expect("utf-8");
        // (Accepted connections show the path too: distinct paths.)
        let paths: std::collections::BTreeSet<&&str> =
            bound.iter().filter(|p| p.starts_with(prefix)).collect();
        assert_eq!(paths.len(), 5, "{bound:?}");

        let r = d.delete(&format!("/code/contexts/{id}")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(conn_files(&data).is_empty(), "{:?}", conn_files(&data));
    }
}

/// A kernel that cannot do ZeroMQ's `ipc` transport (here: one that exits
/// when its connection file asks for it) is started again on loopback TCP,
/// and works.
#[tokio::test]
async fn a_kernel_without_ipc_falls_back_to_tcp() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-tcp");
    let k = data.0.join("share/kernels/tcponly");
    std::fs::create_dir_all(&k).expect("mkdir");
    let python = share.join("../../bin/python");
    let script = format!(
        "grep -q '\"transport\":\"ipc\"' \"$1\" && {{ echo no-ipc-here >&2; exit 9; }}; exec {} -m ipykernel_launcher -f \"$1\"",
        python.display()
    );
    let spec = json!({"argv": ["/bin/sh", "-c", script, "sh", "{connection_file}"], "language": "tcponly"});
    std::fs::write(k.join("kernel.json"), spec.to_string()).expect("write");
    let d = daemon(&data.0.join("share"), &data, &[]);
    let ctx = create(&d, "tcponly").await;
    let id = ctx["id"].as_str().expect("id");
    let evs = run(&d, id, "6*7").await;
    assert_eq!(results(&evs)[0]["text"], "42", "{evs:?}");
    let r = d.delete(&format!("/code/contexts/{id}")).await;
    assert_eq!(r.status, 200);
    assert!(conn_files(&data).is_empty(), "{:?}", conn_files(&data));
}

/// Whether `pid` is a `sleep` in its terminal's foreground process group
/// (`/proc/<pid>/stat`: pgrp and tpgid, the 3rd and 6th fields after comm).
fn sleep_holds_its_terminal(pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "sleep" {
        return false;
    }
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
        return false;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    matches!((f.get(2), f.get(5)), (Some(pgrp), Some(tpgid)) if pgrp == tpgid)
}

/// Interrupting a bash context (SIGINT to bash_kernel, which passes it to
/// its shell): the `sleep 60` stops, the run ends with an error at once,
/// and the shell carries on with its state.
#[tokio::test]
async fn bash_interrupt_stops_the_command_and_keeps_the_shell() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-bashint");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "bash").await;
    let id = ctx["id"].as_str().expect("id");
    let pid = ctx["pid"].as_u64().expect("pid") as u32;
    run(&d, id, "KEPT=yes").await;
    let (mut s, _) = started(
        &d,
        json!({"code": "echo started; sleep 60; echo not-interrupted", "context": {"id": id}}),
    )
    .await;
    // bash_kernel interrupts by typing ^C into bash's terminal, which
    // signals the terminal's foreground process group. `started` is
    // printed before bash forks `sleep` and hands it the terminal: a ^C in
    // between reaches bash, and the `sleep` that then gets the terminal
    // never sees it; execd then sends it one itself (see
    // `bash_interrupt_reaches_a_command_started_after_the_ctrl_c`). This
    // test is about the ^C itself, so it interrupts once the sleep holds
    // the terminal, as a user at a prompt would.
    let end = std::time::Instant::now() + Duration::from_secs(60);
    while !descendants(pid)
        .iter()
        .any(|&p| sleep_holds_its_terminal(p))
    {
        assert!(
            std::time::Instant::now() < end,
            "the sleep never got the terminal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = d.delete(&format!("/code?id={id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = s.collect().await;
    let last = terminal(&evs);
    // Without the interrupt the run would end 60 s later, successfully.
    assert_eq!(last["type"], "error", "{evs:?}");
    assert!(
        !text_of(&evs, "stdout").contains("not-interrupted"),
        "{evs:?}"
    );
    // bash reaps the interrupted sleep before it prints the prompt that
    // bash_kernel waits for before answering: none is left when the run ends.
    assert!(
        !descendants(pid)
            .iter()
            .any(|p| std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "sleep")),
        "the sleep survived the interrupt: {evs:?}"
    );
    // The next run ends too. (bash_kernel 0.10 sometimes loses track of
    // its prompt when the interrupt lands while it is busy elsewhere, under
    // heavy load: its next runs then fail. That is bash_kernel's state, not
    // execd's; execd's part is that every run ends.)
    let evs = run(&d, id, "echo $KEPT").await;
    if terminal(&evs)["type"] == "execution_complete" {
        assert_eq!(text_of(&evs, "stdout").trim(), "yes", "{evs:?}");
    } else {
        eprintln!("bash_kernel lost its prompt after the interrupt: {evs:?}");
    }
}

/// The ^C a bash_kernel interrupt types can be spent before the command
/// that should get it holds the terminal, as in the window between bash
/// forking a command and handing it the terminal. Here that is made
/// certain: bash traps INT and waits for a background job (so between
/// `started` and `next` only bash itself runs, on the terminal's foreground),
/// the ^C lands on bash, whose trap ends the wait, and the `sleep 1000`
/// that runs next never saw a ^C. A user who interrupted expects the run
/// to stop: execd sends SIGINT to a terminal's foreground job inside the
/// kernel that is still running, with SIGINT at its default action (so it
/// never got one), while the interrupted run is busy. Without that,
/// bash_kernel's wait for its prompt fails 30 s later, the run ends
/// unanswered, and the sleep runs on.
#[tokio::test]
async fn bash_interrupt_reaches_a_command_started_after_the_ctrl_c() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-bashlost");
    let d = daemon(&share, &data, &[]);
    let ctx = create(&d, "bash").await;
    let id = ctx["id"].as_str().expect("id");
    let pid = ctx["pid"].as_u64().expect("pid") as u32;
    run(&d, id, "KEPT=yes").await;
    let code = "trap 'got=1' INT; got=; sleep 1000 & bg=$!; echo started; \
                until [ -n \"$got\" ]; do wait $bg; done; kill $bg; echo next; \
                sleep 1000; trap - INT";
    let (mut s, _) = started(&d, json!({"code": code, "context": {"id": id}})).await;
    let r = d.delete(&format!("/code?id={id}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let evs = s.collect().await;
    let last = terminal(&evs);
    assert_eq!(last["type"], "error", "{evs:?}");
    // bash_kernel answered the interrupted request ("abort"): its prompt
    // came back, rather than its wait for it failing (which also loses the
    // output it had not passed on yet).
    assert_eq!(
        last["error"]["evalue"], "the kernel answered \"abort\"",
        "{last}"
    );
    assert!(text_of(&evs, "stdout").contains("next"), "{evs:?}");
    let sleeps: Vec<String> = descendants(pid)
        .iter()
        .filter_map(|p| std::fs::read(format!("/proc/{p}/cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.starts_with("sleep"))
        .collect();
    assert!(sleeps.is_empty(), "left running: {sleeps:?}; {evs:?}");
    let evs = run(&d, id, "echo $KEPT").await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    assert_eq!(text_of(&evs, "stdout").trim(), "yes", "{evs:?}");
}

/// A kernel whose handler fails sends no `execute_reply` but goes idle
/// (ipykernel logs the exception; bash_kernel does this when an interrupt
/// lands while it waits for its prompt): the run ends with an error soon
/// after the idle status instead of waiting forever, and the context takes
/// the next run.
#[tokio::test]
async fn a_request_the_kernel_never_answers_ends_at_idle() {
    let Some(share) = venv() else { return };
    let data = TempDir::new("code-noreply");
    let k = data.0.join("share/kernels/noreply");
    std::fs::create_dir_all(&k).expect("mkdir");
    let kernel = r#"
from ipykernel.kernelbase import Kernel
from ipykernel.kernelapp import IPKernelApp

class K(Kernel):
    implementation = "noreply"
    implementation_version = "0"
    language_info = {"name": "noreply", "mimetype": "text/plain", "file_extension": ".txt"}
    banner = ""

    def do_execute(self, code, silent, store_history=True, user_expressions=None, allow_stdin=False, **kw):
        if code == "fail":
            raise RuntimeError("the handler fails")
        self.send_response(self.iopub_socket, "stream", {"name": "stdout", "text": code})
        return {"status": "ok", "execution_count": self.execution_count, "payload": [], "user_expressions": {}}

IPKernelApp.launch_instance(kernel_class=K)
"#;
    std::fs::write(k.join("noreply.py"), kernel).expect("write");
    let python = share.join("../../bin/python");
    let spec = json!({
        "argv": [python, k.join("noreply.py"), "-f", "{connection_file}"],
        "language": "noreply",
    });
    std::fs::write(k.join("kernel.json"), spec.to_string()).expect("write");
    let d = daemon(&data.0.join("share"), &data, &[]);
    let ctx = create(&d, "noreply").await;
    let id = ctx["id"].as_str().expect("id");
    let evs = run(&d, id, "fail").await;
    let last = terminal(&evs);
    assert_eq!(last["type"], "error", "{evs:?}");
    assert_eq!(last["error"]["ename"], "ExecutionAborted", "{last}");
    assert!(
        last["error"]["evalue"]
            .as_str()
            .is_some_and(|v| v.contains("without answering")),
        "{last}"
    );
    let evs = run(&d, id, "still here").await;
    assert_eq!(terminal(&evs)["type"], "execution_complete", "{evs:?}");
    assert_eq!(text_of(&evs, "stdout"), "still here");
}
