//! No process execd starts inherits a descriptor it did not ask for (issue
//! 15, item 4): every fd execd opens is close-on-exec from birth, so a fork
//! on one thread never catches another thread's fd in the window between its
//! creation and a later `FD_CLOEXEC`.
//!
//! Commands (pipes) and gRPC `Start` processes on a terminal start at the same
//! time, many at once; each lists its own descriptors with `ls -l
//! /proc/self/fd`. The only fds allowed are 0, 1 and 2, and the directory
//! `ls` itself opened to list them (a link to `/proc/<pid>/fd`).

mod common;

#[allow(clippy::all, clippy::pedantic, dead_code)]
mod pb {
    pub use execd::grpc::process_v1::*;
    include!("grpc/process_v1_client.rs");
}

use std::collections::HashMap;
use std::sync::Arc;

use common::*;
use pb::process_service_client::ProcessServiceClient;
use pb::start_response::Event;
use serde_json::json;

const LIST: &str = "ls -l /proc/self/fd";

/// The descriptors an `ls -l /proc/self/fd` listing shows beyond 0, 1, 2 and
/// its own directory: `(fd, target)`.
fn extra_fds(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().split_once(" -> "))
        .filter_map(|(left, target)| {
            let fd = left.split_whitespace().last()?;
            let own_dir = target.starts_with("/proc/") && target.ends_with("/fd");
            (!matches!(fd, "0" | "1" | "2") && !own_dir).then(|| format!("{fd} -> {target}"))
        })
        .collect()
}

#[test]
fn the_listing_is_read_right() {
    let l = "total 0\n\
             lr-x------ 1 root root 64 Dec  6 10:30 0 -> /dev/null\n\
             l-wx------ 1 root root 64 Dec  6 10:30 1 -> pipe:[1]\n\
             l-wx------ 1 root root 64 Dec  6 10:30 2 -> pipe:[2]\n\
             lr-x------ 1 root root 64 Dec  6 10:30 3 -> /proc/77/fd\r\n";
    assert!(extra_fds(l).is_empty());
    let leak = format!("{l}lrwx------ 1 root root 64 Dec  6 10:30 4 -> /dev/ptmx\n");
    assert_eq!(extra_fds(&leak), vec!["4 -> /dev/ptmx"]);
}

/// Starts `argv` on a terminal with gRPC `Start`; its output.
async fn on_terminal(c: &mut ProcessServiceClient<tonic::transport::Channel>) -> String {
    let mut s = c
        .start(pb::StartRequest {
            config: Some(pb::ProcessConfig {
                command: vec!["sh".into(), "-c".into(), LIST.into()],
                env_vars: HashMap::new(),
                cwd: None,
            }),
            pty: Some(pb::Pty {
                cols: 200,
                rows: 50,
            }),
        })
        .await
        .expect("start")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.expect("stream") {
        if let Some(Event::Stdout(b)) = m.event {
            out.extend(b);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_process_inherits_a_descriptor() {
    const COMMANDS: usize = 1000;
    const AT_ONCE: usize = 12;
    const TERMINAL_LOOPS: usize = 8;
    let dir = TempDir::new("fds");
    let d = Arc::new(Daemon::start_with(
        &["--sandboxd-root", dir.0.to_str().unwrap()],
        &[],
    ));
    let leaks = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // Terminal churn: each Start opens a PTY pair while commands fork.
    let mut churn = Vec::new();
    for _ in 0..TERMINAL_LOOPS {
        let (d, leaks, done) = (d.clone(), leaks.clone(), done.clone());
        churn.push(tokio::spawn(async move {
            let mut c = ProcessServiceClient::connect(format!("http://{}", d.addr))
                .await
                .expect("connect");
            let mut n = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                let out = on_terminal(&mut c).await;
                leaks.lock().unwrap().extend(
                    extra_fds(&out)
                        .into_iter()
                        .map(|f| format!("terminal: {f}")),
                );
                n += 1;
            }
            n
        }));
    }

    // Commands, AT_ONCE at a time.
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..AT_ONCE {
        let (d, leaks, next) = (d.clone(), leaks.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < COMMANDS {
                let evs = d.run(json!({"command": LIST})).await;
                let out = text_of(&evs, "stdout");
                assert!(out.contains(" 0 -> "), "a listing: {evs:?}");
                leaks
                    .lock()
                    .unwrap()
                    .extend(extra_fds(&out).into_iter().map(|f| format!("command: {f}")));
            }
        }));
    }
    for w in workers {
        w.await.expect("command worker");
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut terminals = 0;
    for c in churn {
        terminals += c.await.expect("terminal loop");
    }
    assert!(terminals > 0);
    let leaks = leaks.lock().unwrap();
    assert!(
        leaks.is_empty(),
        "{} inherited fds among {COMMANDS} commands and {terminals} terminals: {leaks:?}",
        leaks.len()
    );
}
