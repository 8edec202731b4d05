//! Isolated sessions (`/v1/isolated`), against the real binary, as root.
//! Every path a session mounts or writes is a temp dir this file made.
//! Where the machine cannot isolate (not root, no overlayfs, no
//! namespaces), each test says so loudly and passes without checking.

mod common;

use std::time::{Duration, Instant};

use common::{descendants, eventually, terminal, text_of, Daemon, TempDir};
use serde_json::{json, Value};

/// The daemon, or `None` (after a loud message) when isolation is unavailable.
async fn daemon() -> Option<Daemon> {
    daemon_with(Daemon::start()).await
}

/// `d`, or `None` (after a loud message) when isolation is unavailable.
async fn daemon_with(d: Daemon) -> Option<Daemon> {
    let caps = d.get("/v1/isolated/capabilities").await;
    assert_eq!(caps.status, 200);
    let c = caps.json();
    assert_eq!(c["isolator"], "native");
    if c["available"] != true {
        eprintln!(
            "\n!!! SKIPPED: isolated sessions unavailable here: {} !!!\n",
            c["message"]
        );
        return None;
    }
    Some(d)
}

async fn create(d: &Daemon, body: Value) -> String {
    let r = d.post_json("/v1/isolated/session", &body).await;
    assert_eq!(r.status, 201, "create {body}: {}", r.text());
    let v = r.json();
    assert!(v["created_at"].is_string());
    v["session_id"].as_str().expect("session_id").to_string()
}

struct Out {
    stdout: String,
    stderr: String,
    code: i64,
    events: Vec<Value>,
}

async fn run(d: &Daemon, sid: &str, code: &str) -> Out {
    run_with(d, sid, json!({ "code": code })).await
}

async fn run_with(d: &Daemon, sid: &str, body: Value) -> Out {
    let mut s = d
        .stream(&format!("/v1/isolated/session/{sid}/run"), &body)
        .await;
    assert_eq!(s.status, 200, "run {body}");
    let events = s.collect().await;
    let t = terminal(&events);
    Out {
        stdout: text_of(&events, "stdout"),
        stderr: text_of(&events, "stderr"),
        code: t["exit_code"].as_i64().expect("exit_code"),
        events,
    }
}

/// A daemon and a session whose workspace is a new `ws(tag)`, or `None`
/// when isolation is unavailable.
async fn workspace_session(tag: &str) -> Option<(Daemon, TempDir, String)> {
    let d = daemon().await?;
    let w = ws(tag);
    let sid = create(&d, json!({"workspace": {"path": path(&w)}})).await;
    Some((d, w, sid))
}

/// A session over workspace `w` with `profile`.
async fn profile_session(d: &Daemon, w: &TempDir, profile: &str) -> String {
    create(
        d,
        json!({"workspace": {"path": path(w)}, "profile": profile}),
    )
    .await
}

fn ws(tag: &str) -> TempDir {
    let t = TempDir::new(tag);
    std::fs::write(t.0.join("keep.txt"), "lower\n").expect("write");
    t
}

/// Mount points of the host's mount namespace that mention `needle`.
fn host_mounts(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn overlay_hides_writes_from_the_lower_dir() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-ov");
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&w), "mode": "overlay"}}),
    )
    .await;
    let wp = w.0.to_string_lossy().into_owned();
    let o = run(
        &d,
        &sid,
        "pwd; echo changed > keep.txt; echo new > new.txt; rm -f gone.txt; cat keep.txt",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, format!("{wp}\nchanged\n"));
    // The lower directory is untouched...
    assert_eq!(
        std::fs::read_to_string(w.0.join("keep.txt")).unwrap(),
        "lower\n"
    );
    assert!(!w.0.join("new.txt").exists());
    // ...and the session keeps its view from one run to the next.
    let o = run(&d, &sid, "cat new.txt keep.txt").await;
    assert_eq!(o.stdout, "new\nchanged\n");
    // The overlay is in the session's mount namespace only.
    assert!(host_mounts(&wp).is_empty(), "{:?}", host_mounts(&wp));
    let st = d.get(&format!("/v1/isolated/session/{sid}")).await.json();
    assert_eq!(st["status"], "active");
    assert_eq!(st["profile"], "strict");
    assert_eq!(st["idle_timeout_seconds"], 0);
    assert_eq!(st["overlays"][0]["mode"], "overlay");
}

#[tokio::test]
async fn ro_refuses_writes_rw_writes_through_and_the_rest_is_read_only() {
    let Some(d) = daemon().await else { return };
    let (ro, rw, outside) = (ws("iso-ro"), ws("iso-rw"), ws("iso-out"));
    let sid = create(
        &d,
        json!({"overlays": [
            {"path": path(&rw), "mode": "rw"},
            {"path": path(&ro), "mode": "ro"},
        ]}),
    )
    .await;
    let o = run(&d, &sid, &format!("echo x > {}", ro.join("w.txt"))).await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("Read-only"), "{}", o.stderr);
    assert!(!ro.0.join("w.txt").exists());
    let o = run(&d, &sid, &format!("echo through > {}", rw.join("w.txt"))).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(rw.0.join("w.txt")).unwrap(),
        "through\n"
    );
    // Outside the writable set: another temp dir, /etc, /tmp.
    for target in [
        outside.join("w.txt"),
        "/etc/execd-isolated-test".into(),
        "/tmp/execd-isolated-test".into(),
    ] {
        let o = run(&d, &sid, &format!("echo x > {target}")).await;
        assert_ne!(o.code, 0, "write to {target} succeeded");
        assert!(!std::path::Path::new(&target).exists(), "{target} written");
    }
}

#[tokio::test]
async fn binds_map_source_to_dest_and_honour_readonly() {
    let Some(d) = daemon().await else { return };
    let (w, src, dst, rsrc) = (
        ws("iso-bw"),
        ws("iso-bsrc"),
        ws("iso-bdst"),
        ws("iso-brsrc"),
    );
    std::fs::write(src.0.join("from-src"), "s\n").unwrap();
    let sid = create(
        &d,
        json!({
            "workspace": {"path": path(&w)},
            "binds": [
                {"source": path(&src), "dest": path(&dst)},
                {"source": path(&rsrc), "readonly": true},
            ],
        }),
    )
    .await;
    let o = run(
        &d,
        &sid,
        &format!(
            "cat {} && echo via > {}",
            dst.join("from-src"),
            dst.join("via-dest")
        ),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout, "s\n");
    assert!(src.0.join("via-dest").exists());
    assert!(!dst.0.join("via-dest").exists());
    let o = run(&d, &sid, &format!("echo x > {}", rsrc.join("no"))).await;
    assert_ne!(o.code, 0);
    assert!(!rsrc.0.join("no").exists());
}

#[tokio::test]
async fn network_is_loopback_only_unless_shared() {
    let Some((d, w, sid)) = workspace_session("iso-net").await else {
        return;
    };
    let o = run(
        &d,
        &sid,
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    )
    .await;
    assert_eq!(o.stdout, "lo\n");
    let o = run(
        &d,
        &sid,
        "cat /sys/class/net/lo/operstate 2>/dev/null; grep -c . /proc/net/dev",
    )
    .await;
    assert_eq!(o.code, 0);
    let host_ifaces = std::fs::read_to_string("/proc/net/dev")
        .unwrap()
        .lines()
        .count()
        - 2;
    let shared = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "share_net": true}),
    )
    .await;
    let o = run(&d, &shared, "tail -n +3 /proc/net/dev | wc -l").await;
    assert_eq!(o.stdout.trim(), host_ifaces.to_string());
}

#[tokio::test]
async fn host_processes_are_invisible_and_cannot_be_signalled() {
    let Some(d) = daemon().await else { return };
    let host = d.start_sleeper().await;
    let w = ws("iso-pid");
    for profile in ["strict", "balanced"] {
        let sid = profile_session(&d, &w, profile).await;
        let o = run(
            &d,
            &sid,
            &format!(
                "ls /proc | grep -x '[0-9]*' | sort -n | tr '\\n' ' '; kill -9 {host}; echo rc=$?"
            ),
        )
        .await;
        let pids: Vec<u32> = o
            .stdout
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        assert!(pids.contains(&1), "{}", o.stdout);
        assert!(
            !pids.contains(&host),
            "host pid {host} visible: {}",
            o.stdout
        );
        assert!(o.stdout.contains("rc=1"), "{} {}", o.stdout, o.stderr);
        assert!(common::alive(host), "host sleeper killed from {profile}");
    }
}

#[tokio::test]
async fn strict_drops_every_capability_and_refuses_mount_and_unshare() {
    let Some((d, w, sid)) = workspace_session("iso-strict").await else {
        return;
    };
    let o = run(
        &d,
        &sid,
        "grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs)' /proc/self/status",
    )
    .await;
    assert!(
        o.stdout.contains("CapEff:\t0000000000000000"),
        "{}",
        o.stdout
    );
    assert!(
        o.stdout.contains("CapBnd:\t0000000000000000"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("NoNewPrivs:\t1"), "{}", o.stdout);
    let target = path(&w);
    for attempt in [
        format!("mount -t tmpfs none {target}"),
        format!("mount --bind / {target}"),
        "unshare -m true".to_string(),
        "unshare -n true".to_string(),
        "umount -l /proc".to_string(),
    ] {
        let o = run(&d, &sid, &attempt).await;
        assert_ne!(o.code, 0, "{attempt} succeeded: {}", o.stdout);
    }
    // balanced keeps root's file capabilities but not the mount ones.
    let sid = profile_session(&d, &w, "balanced").await;
    let o = run(
        &d,
        &sid,
        &format!("mount -t tmpfs none {target}; echo rc=$?"),
    )
    .await;
    assert!(
        o.stdout.contains("rc=32") || !o.stdout.contains("rc=0"),
        "{}",
        o.stdout
    );
    let o = run(&d, &sid, "unshare -m true; echo rc=$?").await;
    assert!(!o.stdout.contains("rc=0"), "{}", o.stdout);
}

#[tokio::test]
async fn runs_as_another_uid() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-uid");
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "uid": 65534, "gid": 65534}),
    )
    .await;
    let o = run(&d, &sid, "id -u; id -g").await;
    assert_eq!(o.stdout, "65534\n65534\n");
    // keep.txt is root's 0644 file in the lower layer: not writable by nobody.
    let o = run(&d, &sid, "echo x > keep.txt").await;
    assert_ne!(o.code, 0);
    // A workspace the uid owns is writable at its top, as outside: the
    // overlay's root carries the lower directory's owner and mode.
    let own = ws("iso-uid-own");
    std::os::unix::fs::chown(&own.0, Some(65534), Some(65534)).expect("chown");
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&own)}, "uid": 65534, "gid": 65534}),
    )
    .await;
    let o = run(&d, &sid, "echo x > new.txt && stat -c '%u %a' . new.txt").await;
    assert_eq!(o.stdout, "65534 755\n65534 644\n", "{}", o.stderr);
    assert!(
        !own.0.join("new.txt").exists(),
        "the lower dir is untouched"
    );
}

/// The host's user namespace, as `readlink /proc/self/ns/user` prints it.
fn host_userns() -> String {
    std::fs::read_link("/proc/self/ns/user")
        .expect("ns/user")
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn userns_runs_map_their_uid_to_the_same_host_uid() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-userns-uid");
    std::os::unix::fs::chown(&w.0, Some(4242), Some(4243)).expect("chown");
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "uid": 4242, "gid": 4243,
               "uid_mode": "userns", "profile": "balanced"}),
    )
    .await;
    let o = run(
        &d,
        &sid,
        "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map | tr -s ' ' | sed 's/^ //'; \
         readlink /proc/self/ns/user; grep CapEff /proc/self/status",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let lines: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(&lines[..4], ["4242", "4243", "4242 4242 1", "4243 4243 1"]);
    assert_ne!(
        lines[4],
        host_userns(),
        "the run has a user namespace of its own"
    );
    assert_eq!(lines[5].split_whitespace().last(), Some("0000000000000000"));
    // keep.txt belongs to root outside: inside it is nobody's, read-only.
    let o = run(&d, &sid, "stat -c %u keep.txt; echo x > keep.txt").await;
    assert_ne!(o.code, 0);
    assert_eq!(o.stdout, "65534\n");
    // A file it writes belongs to the same uid on the host: visible in the
    // diff's upper layer as 4242's.
    let o = run(&d, &sid, "echo mine > mine.txt && stat -c %u:%g mine.txt").await;
    assert_eq!(o.stdout, "4242:4243\n", "{}", o.stderr);
}

#[tokio::test]
async fn userns_root_holds_nothing_over_the_host() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-userns-root");
    // A file root may read only through CAP_DAC_OVERRIDE (another owner, 0600).
    let secret = w.0.join("secret");
    std::fs::write(&secret, "s3cret\n").expect("write");
    std::os::unix::fs::chown(&secret, Some(4242), Some(4242)).expect("chown");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    // setpriv root under the balanced profile keeps DAC override: it reads it.
    let plain = profile_session(&d, &w, "balanced").await;
    let o = run(&d, &plain, "cat secret").await;
    assert_eq!(o.stdout, "s3cret\n", "{}", o.stderr);
    // The same run in a user namespace: root there, nobody special here.
    let ns = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "profile": "balanced", "uid_mode": "userns"}),
    )
    .await;
    let o = run(&d, &ns, "id -u; cat secret").await;
    assert_eq!(o.stdout, "0\n");
    assert!(o.stderr.contains("Permission denied"), "{}", o.stderr);
    assert_ne!(o.code, 0);
    let o = run(&d, &ns, "readlink /proc/self/ns/user").await;
    assert_ne!(o.stdout.trim(), host_userns());
    // Nor may it mount, though it holds CAP_SYS_ADMIN in its namespace.
    let o = run(&d, &ns, "mount -t tmpfs none /tmp && echo mounted").await;
    assert!(!o.stdout.contains("mounted"), "{}", o.stdout);
}

#[tokio::test]
async fn stdout_and_stderr_stay_apart_and_exit_codes_come_back() {
    let Some((d, _w, sid)) = workspace_session("iso-io").await else {
        return;
    };
    let o = run_with(
        &d,
        &sid,
        json!({"code": "echo out; echo err >&2; echo $FOO; exit 7", "envs": {"FOO": "bar"}}),
    )
    .await;
    assert_eq!(o.stdout, "out\nbar\n");
    assert_eq!(o.stderr, "err\n");
    assert_eq!(o.code, 7);
    let t = terminal(&o.events);
    assert_eq!(t["type"], "error");
    assert_eq!(t["error"]["evalue"], "7");
}

#[tokio::test]
async fn timeout_kills_the_whole_session_side_tree() {
    let Some((d, _w, sid)) = workspace_session("iso-timeout").await else {
        return;
    };
    let o = run_with(
        &d,
        &sid,
        json!({"code": "sleep 300 & sleep 300 & echo started; wait", "timeout_seconds": 1}),
    )
    .await;
    assert_eq!(o.stdout, "started\n");
    assert_eq!(terminal(&o.events)["timed_out"], true);
    // Only PID 1 and the checking shell are left in the session.
    let o = run(&d, &sid, "ls /proc | grep -x '[0-9]*' | wc -l").await;
    // PID 1, this shell, ls, grep and wc at most.
    let n: u32 = o.stdout.trim().parse().unwrap();
    assert!(n <= 5, "{n} processes left");
    let o = run(&d, &sid, "pgrep -x sleep; echo rc=$?").await;
    assert!(o.stdout.contains("rc=1"), "{}", o.stdout);
}

#[tokio::test]
async fn background_run_status_and_logs_cursor() {
    let Some((d, _w, sid)) = workspace_session("iso-bg").await else {
        return;
    };
    let r = d
        .post_json(
            &format!("/v1/isolated/session/{sid}/run"),
            &json!({"code": "echo one; echo two >&2; exit 3", "background": true}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let v = r.json();
    assert_eq!(v["session_id"], sid.as_str());
    let rid = v["run_id"].as_str().unwrap().to_string();
    assert!(v["started_at"].is_string());
    let status_path = format!("/v1/isolated/session/{sid}/runs/{rid}");
    let end = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = d.get(&status_path).await;
        assert_eq!(st.status, 200);
        let st = st.json();
        if st["running"] == false {
            break st;
        }
        assert!(Instant::now() < end, "run never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st["exit_code"], 3);
    assert!(st["finished_at"].is_string());
    let logs = d.get(&format!("{status_path}/logs")).await;
    assert_eq!(logs.status, 200);
    let text = logs.text();
    assert!(text.contains("one\n") && text.contains("two\n"), "{text}");
    let cursor = logs
        .header("execd-isolated-tail-cursor")
        .unwrap()
        .to_string();
    assert_eq!(cursor, text.len().to_string());
    let more = d.get(&format!("{status_path}/logs?cursor={cursor}")).await;
    assert_eq!(more.text(), "");
    let part = d.get(&format!("{status_path}/logs?cursor=4")).await;
    assert_eq!(part.text(), text[4..]);
    // A run of another session, or none, is 404.
    d.get(&format!("/v1/isolated/session/{sid}/runs/nope"))
        .await
        .assert_error(404, "RUN_NOT_FOUND");
}

/// Processes under the daemon that belong to isolated sessions.
fn session_procs(d: &Daemon) -> Vec<u32> {
    descendants(d.pid())
        .into_iter()
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains("__isolate"))
                .unwrap_or(false)
        })
        .collect()
}

#[tokio::test]
async fn delete_leaves_no_process_mount_or_directory() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-del");
    let sid = create(
        &d,
        json!({"overlays": [{"path": path(&w), "mode": "overlay", "persist": false}]}),
    )
    .await;
    let r = d
        .post_json(
            &format!("/v1/isolated/session/{sid}/run"),
            &json!({"code": "sleep 300 & sleep 300; echo never", "background": true}),
        )
        .await;
    assert_eq!(r.status, 202);
    assert!(!session_procs(&d).is_empty());
    let mounts_of =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    assert!(!mounts_of(d.pid()).contains(&sid));
    let r = d.delete(&format!("/v1/isolated/session/{sid}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(session_procs(&d).is_empty(), "{:?}", session_procs(&d));
    let sleepers: Vec<u32> = descendants(d.pid())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect();
    assert!(sleepers.is_empty(), "{sleepers:?}");
    assert!(!mounts_of(d.pid()).contains(&sid));
    assert!(host_mounts(&sid).is_empty());
    // No directory of the session is left in the data directory.
    let data = mounts_of(d.pid()); // keep the daemon's view handy in failures
    let dirs: Vec<String> = walk_names(std::path::Path::new("/tmp"), &sid);
    assert!(dirs.is_empty(), "{dirs:?} {}", data.len());
    d.get(&format!("/v1/isolated/session/{sid}"))
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    d.delete(&format!("/v1/isolated/session/{sid}"))
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
}

/// Paths two levels under the daemons' data directories named `name`.
fn walk_names(tmp: &std::path::Path, name: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(tmp).into_iter().flatten().flatten() {
        let iso = e.path().join("isolated").join(name);
        if iso.exists() {
            out.push(iso.to_string_lossy().into_owned());
        }
    }
    out
}

#[tokio::test]
async fn idle_sessions_expire() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-idle");
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "idle_timeout_seconds": 1}),
    )
    .await;
    let st = d.get(&format!("/v1/isolated/session/{sid}")).await.json();
    assert_eq!(st["idle_timeout_seconds"], 1);
    let list = d.get("/v1/isolated/sessions").await.json();
    assert_eq!(list["sessions"][0]["session_id"], sid.as_str());
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let r = d.get(&format!("/v1/isolated/session/{sid}")).await;
        if r.status == 404 {
            break;
        }
        assert!(Instant::now() < end, "session never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eventually(Duration::from_secs(10), "session processes gone", || {
        session_procs(&d).is_empty()
    })
    .await;
    assert_eq!(
        d.get("/v1/isolated/sessions").await.json()["sessions"],
        json!([])
    );
}

#[tokio::test]
async fn shutdown_ends_every_session() {
    let Some(mut d) = daemon().await else { return };
    let w = ws("iso-shut");
    create(&d, json!({"workspace": {"path": path(&w)}})).await;
    let procs = session_procs(&d);
    assert!(!procs.is_empty());
    d.signal(libc::SIGTERM);
    assert!(d.wait_exit(Duration::from_secs(30)).is_some());
    for p in procs {
        assert!(!common::alive(p), "session process {p} outlived the daemon");
    }
}

#[tokio::test]
async fn bad_requests_are_4xx_and_unknown_sessions_404() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-bad");
    let link = w.0.join("link");
    std::os::unix::fs::symlink(&w.0, &link).unwrap();
    for (body, status, code) in [
        (json!({}), 400, "RUNTIME_ERROR"),
        (
            json!({"workspace": {"path": "relative"}}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": format!("{}/../x", path(&w))}}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": link.to_string_lossy()}}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": "/proc/1"}}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": path(&w)}, "profile": "loose"}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": path(&w), "mode": "weird"}}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": path(&w)}, "uid_mode": "nobody"}),
            400,
            "RUNTIME_ERROR",
        ),
        (
            json!({"workspace": {"path": path(&w)}, "bogus": 1}),
            400,
            "INVALID_REQUEST_BODY",
        ),
    ] {
        let r = d.post_json("/v1/isolated/session", &body).await;
        r.assert_error(status, code);
    }
    d.post_json("/v1/isolated/session/nope/run", &json!({"code": "true"}))
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    d.get("/v1/isolated/session/nope/runs/x")
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    let sid = create(&d, json!({"workspace": {"path": path(&w)}})).await;
    d.post_json(&format!("/v1/isolated/session/{sid}/run"), &json!({}))
        .await
        .assert_error(400, "INVALID_REQUEST_BODY");
    let caps = d.get("/v1/isolated/capabilities").await.json();
    assert_eq!(caps["available"], true);
    // This machine allows user namespaces (the userns tests rely on it).
    assert_eq!(caps["userns_available"], true);
    assert_eq!(caps["hardening"]["init_mode"], "pid1");
}

fn path(t: &TempDir) -> String {
    t.0.to_string_lossy().into_owned()
}

fn by_path<'a>(diff: &'a Value, p: &str) -> Option<&'a Value> {
    diff["overlays"][0]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["path"] == p)
}

#[tokio::test]
async fn diff_commit_and_discard_with_deletions_renames_and_a_conflict() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-commit");
    let lingering = "nohup sleep 300 >/dev/null 2>&1 & echo started";
    let wp = path(&w);
    std::fs::create_dir_all(w.0.join("dir")).unwrap();
    std::fs::create_dir_all(w.0.join("gone/x")).unwrap();
    for (f, c) in [
        ("del.txt", "d\n"),
        ("mv_src.txt", "m\n"),
        ("dir/sub.txt", "s\n"),
        ("conflict.txt", "c\n"),
        ("gone/x/f", "g\n"),
    ] {
        std::fs::write(w.0.join(f), c).unwrap();
    }
    let sid = create(&d, json!({"workspace": {"path": wp}})).await;
    let o = run(
        &d,
        &sid,
        "echo more >> keep.txt; echo n > new.txt; rm del.txt; mv mv_src.txt mv_dst.txt; \
         chmod 600 dir/sub.txt; echo mine > conflict.txt; rm -rf gone; mkdir gone; echo z > gone/new; \
         ln -s keep.txt link",
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Someone else changes the lower file meanwhile.
    std::fs::write(w.0.join("conflict.txt"), "host\n").unwrap();

    let diff = d
        .get(&format!("/v1/isolated/session/{sid}/diff?text=true"))
        .await;
    assert_eq!(diff.status, 200, "{}", diff.text());
    let diff = diff.json();
    let at = |rel: &str| {
        by_path(&diff, &format!("{wp}/{rel}"))
            .unwrap_or_else(|| panic!("{rel} missing: {diff}"))
            .clone()
    };
    assert_eq!(at("keep.txt")["kind"], "modified");
    assert_eq!(at("keep.txt")["content_changed"], true);
    assert_eq!(
        at("keep.txt")["diff"].as_str().unwrap().lines().last(),
        Some("+more")
    );
    assert_eq!(at("new.txt")["kind"], "added");
    assert_eq!(at("new.txt")["size"], 2);
    assert_eq!(at("del.txt")["kind"], "deleted");
    // A rename: the new name added, the old one deleted.
    assert_eq!(at("mv_dst.txt")["kind"], "added");
    assert_eq!(at("mv_src.txt")["kind"], "deleted");
    assert_eq!(at("dir/sub.txt")["content_changed"], false);
    assert_eq!(at("dir/sub.txt")["mode"], 0o600);
    assert_eq!(at("dir/sub.txt")["old_mode"], 0o644);
    assert_eq!(at("gone")["opaque"], true);
    assert_eq!(at("gone/x")["kind"], "deleted");
    assert_eq!(at("link")["type"], "symlink");
    assert_eq!(at("conflict.txt")["conflict"], true);
    // Nothing reached the lower directory yet.
    assert!(!w.0.join("new.txt").exists() && w.0.join("del.txt").exists());

    // A process left behind by a run, that could write during the commit.
    let o = run(&d, &sid, lingering).await;
    assert_eq!(o.stdout, "started\n");
    let o = run(&d, &sid, "pgrep -x sleep | wc -l").await;
    assert_eq!(o.stdout, "1\n");
    // A subset first.
    let r = d
        .post_json(
            &format!("/v1/isolated/session/{sid}/commit"),
            &json!({"paths": [format!("{wp}/keep.txt")]}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["committed"], json!([format!("{wp}/keep.txt")]));
    assert_eq!(
        std::fs::read_to_string(w.0.join("keep.txt")).unwrap(),
        "lower\nmore\n"
    );
    assert!(!w.0.join("new.txt").exists());
    // Commit ended it.
    let o = run(&d, &sid, "pgrep -x sleep | wc -l").await;
    assert_eq!(o.stdout, "0\n");
    // Then the rest: the conflict is reported and left alone.
    let r = d
        .post_json(&format!("/v1/isolated/session/{sid}/commit"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["conflicts"], json!([format!("{wp}/conflict.txt")]), "{v}");
    assert_eq!(v["errors"], json!([]), "{v}");
    assert_eq!(
        std::fs::read_to_string(w.0.join("conflict.txt")).unwrap(),
        "host\n"
    );
    assert_eq!(std::fs::read_to_string(w.0.join("new.txt")).unwrap(), "n\n");
    assert_eq!(
        std::fs::read_to_string(w.0.join("mv_dst.txt")).unwrap(),
        "m\n"
    );
    assert!(!w.0.join("del.txt").exists() && !w.0.join("mv_src.txt").exists());
    assert!(!w.0.join("gone/x").exists());
    assert_eq!(
        std::fs::read_to_string(w.0.join("gone/new")).unwrap(),
        "z\n"
    );
    assert_eq!(
        std::fs::read_link(w.0.join("link")).unwrap(),
        std::path::Path::new("keep.txt")
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(w.0.join("dir/sub.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    // No temporary file is left behind.
    let names = w.names();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    // The session still sees its own view, committed or not.
    let o = run(&d, &sid, "cat conflict.txt keep.txt gone/new; ls gone").await;
    assert_eq!(o.stdout, "mine\nlower\nmore\nz\nnew\n", "{}", o.stderr);
    // Only the conflict is left to diff.
    let diff = d
        .get(&format!("/v1/isolated/session/{sid}/diff"))
        .await
        .json();
    let left: Vec<&str> = diff["overlays"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert_eq!(left, vec![format!("{wp}/conflict.txt")], "{diff}");
    // Discard it: the session sees the lower file again.
    let r = d
        .post_json(&format!("/v1/isolated/session/{sid}/discard"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = run(&d, &sid, "cat conflict.txt").await;
    assert_eq!(o.stdout, "host\n");
    // Writes keep working on the remounted overlay, still hidden from the lower dir.
    let o = run(&d, &sid, "echo after > after.txt && cat after.txt").await;
    assert_eq!(o.stdout, "after\n");
    assert!(!w.0.join("after.txt").exists());
    // Commit refuses while a run is active.
    let r = d
        .post_json(
            &format!("/v1/isolated/session/{sid}/run"),
            &json!({"code": "sleep 300", "background": true}),
        )
        .await;
    assert_eq!(r.status, 202);
    d.post_json(&format!("/v1/isolated/session/{sid}/commit"), &json!({}))
        .await
        .assert_error(409, "SESSION_BUSY");
    d.post_json(
        &format!("/v1/isolated/session/{sid}/commit"),
        &json!({"paths": ["relative"]}),
    )
    .await
    .assert_error(400, "INVALID_REQUEST_BODY");
}

fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn upload(d: &Daemon, sid: &str, target: &str, data: &[u8]) -> common::Resp {
    let form = common::Form::new()
        .meta(&json!({"path": target}))
        .file(data);
    d.upload_to(&format!("/v1/isolated/session/{sid}/files/upload"), form)
        .await
}

#[tokio::test]
async fn file_routes_act_as_the_sessions_uid() {
    let Some(d) = daemon().await else { return };
    let (root_ws, own_ws) = (ws("iso-files-uid-root"), ws("iso-files-uid-own"));
    std::os::unix::fs::chown(&own_ws.0, Some(65534), Some(65534)).expect("chown");
    // A root-owned workspace: the uid may not write in it, through runs or routes.
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&root_ws)}, "uid": 65534, "gid": 65534}),
    )
    .await;
    let r = upload(&d, &sid, &format!("{}/no.txt", path(&root_ws)), b"x").await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(r.text().contains("uid 65534"), "{}", r.text());
    let r = d
        .delete(&format!(
            "/v1/isolated/session/{sid}/files?path={}",
            q(&format!("{}/keep.txt", path(&root_ws)))
        ))
        .await;
    assert_eq!(r.status, 403, "{}", r.text());
    let o = run(&d, &sid, "cat keep.txt").await;
    assert_eq!(o.stdout, "lower\n");
    // Its own workspace: the upload lands, owned by the uid, in the view only.
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&own_ws)}, "uid": 65534, "gid": 65534}),
    )
    .await;
    let r = upload(&d, &sid, &format!("{}/yes.txt", path(&own_ws)), b"y").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let o = run(&d, &sid, "stat -c %u:%g yes.txt").await;
    assert_eq!(o.stdout, "65534:65534\n", "{}", o.stderr);
    assert!(!own_ws.0.join("yes.txt").exists());
}

#[tokio::test]
async fn file_routes_act_in_the_merged_view_and_cannot_escape_it() {
    let Some(d) = daemon().await else { return };
    let (w, outside) = (ws("iso-files"), ws("iso-files-out"));
    let (wp, op) = (path(&w), path(&outside));
    let sid = create(&d, json!({"workspace": {"path": wp}})).await;
    let base = format!("/v1/isolated/session/{sid}");
    let o = run(
        &d,
        &sid,
        &format!("echo inview > made.txt; ln -s {op} esc; ln -s / rootlink"),
    )
    .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    // Reads see the view: a file that exists only in the upper layer.
    let r = d
        .get(&format!(
            "{base}/files/download?path={}",
            q(&format!("{wp}/made.txt"))
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text(), "inview\n");
    let r = d
        .get(&format!(
            "{base}/files/info?path={}",
            q(&format!("{wp}/made.txt"))
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d
        .get(&format!("{base}/directories/list?path={}", q(&wp)))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("made.txt"));
    // Writes land in the view only: the session sees them, the lower dir does not.
    let r = upload(&d, &sid, &format!("{wp}/up/loaded.txt"), b"uploaded\n").await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!w.0.join("up").exists());
    let o = run(&d, &sid, "cat up/loaded.txt").await;
    assert_eq!(o.stdout, "uploaded\n");
    let r = d
        .post_json(
            &format!("{base}/files/mv"),
            &json!([{"src": format!("{wp}/made.txt"), "dest": format!("{wp}/moved.txt")}]),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = d
        .delete(&format!(
            "{base}/files?path={}",
            q(&format!("{wp}/keep.txt"))
        ))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(w.0.join("keep.txt").exists(), "the lower file was deleted");
    let o = run(&d, &sid, "ls").await;
    assert_eq!(o.stdout, "esc\nmoved.txt\nrootlink\nup\n");

    // Escapes: outside the writable set, directly, through `..`, and
    // through symlinks the session made. Every one is refused with a 4xx
    // and changes nothing on the host.
    for target in [
        format!("{op}/x"),
        format!(
            "{wp}/../{}/x",
            outside.0.file_name().unwrap().to_string_lossy()
        ),
        format!("{wp}/esc/x"),
        format!("{wp}/rootlink{op}/x"),
        "/etc/execd-isolated-escape".to_string(),
    ] {
        let r = upload(&d, &sid, &target, b"escape").await;
        assert!(
            (400..500).contains(&r.status),
            "{target}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(outside.names(), vec!["keep.txt".to_string()]);
    assert!(!std::path::Path::new("/etc/execd-isolated-escape").exists());
    for p in [format!("{op}/keep.txt"), format!("{wp}/esc/keep.txt")] {
        let r = d.delete(&format!("{base}/files?path={}", q(&p))).await;
        assert!(
            (400..500).contains(&r.status),
            "{p}: {} {}",
            r.status,
            r.text()
        );
        let r = d
            .post_json(
                &format!("{base}/files/mv"),
                &json!([{"src": p, "dest": format!("{wp}/stolen")}]),
            )
            .await;
        assert!((400..500).contains(&r.status), "{}", r.text());
    }
    assert!(outside.0.join("keep.txt").exists());
    // Unknown sessions and missing paths are the usual errors.
    d.get(&format!(
        "/v1/isolated/session/nope/files/info?path={}",
        q(&wp)
    ))
    .await
    .assert_error(404, "SESSION_NOT_FOUND");
    d.get(&format!("{base}/files/info"))
        .await
        .assert_error(400, "MISSING_QUERY");
}

#[tokio::test]
async fn pid_1_cannot_be_killed_traced_or_read_from_inside() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-pid1");
    for profile in ["strict", "balanced"] {
        let sid = profile_session(&d, &w, profile).await;
        let o = run(
            &d,
            &sid,
            "kill -9 1; tr '\\0' ' ' < /proc/1/cmdline; echo; cat /proc/1/environ; ls /proc/1/root/ >/dev/null; echo root=$?",
        )
        .await;
        // The plan (paths of execd's data directory) is not on PID 1's command line.
        assert!(!o.stdout.contains("upper"), "{}", o.stdout);
        assert!(
            o.stdout.contains("root=2") || o.stdout.contains("root=1"),
            "{profile}: {} {}",
            o.stdout,
            o.stderr
        );
        assert!(o.stderr.contains("Permission denied"), "{}", o.stderr);
        // SIGKILL from inside does not reach PID 1: the session lives on.
        let o = run(&d, &sid, "echo alive").await;
        assert_eq!(o.stdout, "alive\n");
        let st = d.get(&format!("/v1/isolated/session/{sid}")).await.json();
        assert_eq!(st["status"], "active");
    }
}

#[tokio::test]
async fn strict_user_namespaces_gain_nothing() {
    let Some((d, w, sid)) = workspace_session("iso-userns").await else {
        return;
    };
    let o = run(
        &d,
        &sid,
        &format!(
            "unshare -Urm sh -c 'mount -t tmpfs none {}' && echo mounted",
            path(&w)
        ),
    )
    .await;
    assert!(!o.stdout.contains("mounted"), "{}", o.stdout);
}

#[tokio::test]
async fn env_passthrough_filters_the_daemon_environment() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-env");
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "env_passthrough": {"mode": "allow", "keys": ["PATH"]}}),
    )
    .await;
    let o = run_with(
        &d,
        &sid,
        json!({"code": "env | cut -d= -f1 | sort | tr '\\n' ' '", "envs": {"MINE": "1"}}),
    )
    .await;
    let names: Vec<&str> = o.stdout.split_whitespace().collect();
    for n in &names {
        assert!(
            ["PATH", "MINE", "PWD", "SHLVL", "_", "OLDPWD"].contains(n),
            "{n} passed: {names:?}"
        );
    }
    assert!(names.contains(&"MINE") && names.contains(&"PATH"));
    let sid = create(
        &d,
        json!({"workspace": {"path": path(&w)}, "env_passthrough": {"mode": "deny", "keys": ["PATH"]}}),
    )
    .await;
    // (bash gives itself a default PATH, but does not export it.)
    let o = run(&d, &sid, "env | grep -c '^PATH='").await;
    assert_eq!(o.stdout, "0\n");
}

#[tokio::test]
async fn commit_refuses_an_overlay_with_nested_mounts_and_keeps_them() {
    let Some(d) = daemon().await else { return };
    let w = ws("iso-nested");
    std::fs::create_dir(w.0.join("sub")).unwrap();
    let (wp, sub) = (path(&w), w.join("sub"));
    let sid = create(
        &d,
        json!({"overlays": [{"path": wp, "mode": "overlay"}, {"path": sub, "mode": "rw"}]}),
    )
    .await;
    let o = run(&d, &sid, "echo o > top.txt").await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = d
        .post_json(&format!("/v1/isolated/session/{sid}/commit"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["committed"], json!([]));
    assert!(v["errors"][0].as_str().unwrap().contains("nested"), "{v}");
    assert!(!w.0.join("top.txt").exists());
    // The nested rw mount is still there and still writes through.
    let o = run(&d, &sid, "echo through > sub/x && cat top.txt").await;
    assert_eq!(o.stdout, "o\n", "{}", o.stderr);
    assert_eq!(
        std::fs::read_to_string(w.0.join("sub/x")).unwrap(),
        "through\n"
    );
}

/// Whether `/proc/PID` exists at all (a zombie counts: `pgrep` lists it).
fn present(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The `sleep` processes among the daemon's descendants (host pids).
fn sleeps_of(d: &Daemon) -> Vec<u32> {
    descendants(d.pid())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "sleep")
        })
        .collect()
}

/// Every process under the sessions' PID 1s (host pids): what runs left
/// behind, whatever it runs by now (a background job may not have executed
/// its program yet).
fn left_behind(d: &Daemon) -> Vec<u32> {
    let is_init = |p: u32| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("__isolate-init"))
    };
    let daemon = d.pid();
    descendants(daemon)
        .into_iter()
        .filter(|&p| is_init(p) && common::ppid(p).is_some_and(|pp| pp != daemon && is_init(pp)))
        .flat_map(descendants)
        .collect()
}

#[tokio::test]
async fn commit_and_discard_answer_only_once_the_processes_they_end_are_gone() {
    let Some((d, w, sid)) = workspace_session("iso-ended").await else {
        return;
    };
    // Several rounds of several processes left behind, each round with a
    // change to apply (a commit with nothing to apply ends nothing).
    for round in 0..12 {
        let code = format!(
            "for i in 1 2 3 4 5 6 7 8; do nohup sleep 300 >/dev/null 2>&1 & done; \
             echo {round} > f{round}.txt; echo started"
        );
        let o = run(&d, &sid, &code).await;
        assert_eq!(o.stdout, "started\n", "{}", o.stderr);
        let left = left_behind(&d);
        assert_eq!(left.len(), 8, "{left:?}");
        let route = if round % 2 == 0 { "commit" } else { "discard" };
        let r = d
            .post_json(&format!("/v1/isolated/session/{sid}/{route}"), &json!({}))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        // The answer means they are gone: not running, not even zombies.
        let still: Vec<u32> = left.iter().copied().filter(|p| present(*p)).collect();
        assert!(
            still.is_empty(),
            "round {round}: {route} answered while {still:?} remained"
        );
        let o = run(&d, &sid, "pgrep -x sleep | wc -l").await;
        assert_eq!(o.stdout, "0\n", "round {round}");
    }
    assert_eq!(std::fs::read_to_string(w.0.join("f4.txt")).unwrap(), "4\n");
    assert!(!w.0.join("f5.txt").exists());
}

/// Starts a session with a background run and a process left behind, and
/// returns every process of it (host pids: the helpers, PID 1, the runs).
async fn session_with_processes(d: &Daemon, w: &TempDir) -> Vec<u32> {
    let sid = create(d, json!({"workspace": {"path": path(w)}})).await;
    let o = run(d, &sid, "nohup sleep 300 >/dev/null 2>&1 & echo started").await;
    assert_eq!(o.stdout, "started\n", "{}", o.stderr);
    let r = d
        .post_json(
            &format!("/v1/isolated/session/{sid}/run"),
            &json!({"code": "sleep 300", "background": true}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    eventually(Duration::from_secs(30), "two sleeps", || {
        sleeps_of(d).len() == 2
    })
    .await;
    let procs = descendants(d.pid());
    // The init helper, PID 1, the run's enter helper and two sleeps at least.
    assert!(procs.len() >= 5, "{procs:?}");
    procs
}

#[tokio::test]
async fn a_killed_daemon_leaves_no_session_process_behind() {
    for sig in [libc::SIGKILL, libc::SIGTERM] {
        let Some(mut d) = daemon().await else { return };
        let w = ws("iso-daemon-dies");
        let procs = session_with_processes(&d, &w).await;
        d.signal(sig);
        assert!(
            d.wait_exit(Duration::from_secs(60)).is_some(),
            "signal {sig}: the daemon did not exit"
        );
        // A hang guard, not a speed check: the kernel ends them on its own.
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let left: Vec<u32> = procs
                .iter()
                .copied()
                .filter(|p| common::alive(*p))
                .collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < end,
                "signal {sig}: session processes outlived the daemon: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn session_code_cannot_make_pid_1_end_the_sessions_processes() {
    let Some((d, w, sid)) = workspace_session("iso-usr1").await else {
        return;
    };
    // PID 1 ends every process on SIGUSR1, but only from outside the session.
    let o = run(
        &d,
        &sid,
        "nohup sleep 300 >/dev/null 2>&1 & kill -USR1 1 && echo sent; echo x > f.txt",
    )
    .await;
    assert_eq!(o.stdout, "sent\n", "{}", o.stderr);
    let o = run(
        &d,
        &sid,
        "kill -USR1 1; kill -USR1 1; pgrep -x sleep | wc -l",
    )
    .await;
    assert_eq!(o.stdout, "1\n", "{}", o.stderr);
    // Nor does it confuse the daemon's own request: the commit still waits.
    let left = left_behind(&d);
    assert_eq!(left.len(), 1, "{left:?}");
    let r = d
        .post_json(&format!("/v1/isolated/session/{sid}/commit"), &json!({}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!present(left[0]), "commit answered while {left:?} remained");
    assert_eq!(std::fs::read_to_string(w.0.join("f.txt")).unwrap(), "x\n");
}

/// A FUSE file system served by this test, in which looking up a name
/// beginning with `stuck` gets no answer until [`StuckFs::release`]. Once the kernel has
/// handed such a request to the server, the process that made it waits
/// for the answer uninterruptibly, SIGKILL or not: a real process that
/// neither the session's PID 1 nor the kernel can end before then.
struct StuckFs {
    mnt: std::path::PathBuf,
    dev: std::sync::Arc<std::fs::File>,
    hung: std::sync::mpsc::Receiver<u64>,
    /// The requests held unanswered.
    held: Vec<u64>,
    _dir: TempDir,
}

impl StuckFs {
    /// Mounts it in a new temp dir, or `None` (after a loud message) where
    /// FUSE is unavailable.
    fn mount(tag: &str) -> Option<StuckFs> {
        use nix::mount::MsFlags;
        use std::os::fd::AsRawFd;
        let dir = TempDir::new(tag);
        let mnt = dir.0.join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir");
        let skip = |why: String| {
            eprintln!("\n!!! SKIPPED: no FUSE here to hold a process: {why} !!!\n");
        };
        let dev = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
        {
            Ok(f) => std::sync::Arc::new(f),
            Err(e) => {
                skip(format!("/dev/fuse: {e}"));
                return None;
            }
        };
        let opts = format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        );
        if let Err(e) = nix::mount::mount(
            Some("execd-test"),
            &mnt,
            Some("fuse.execd-test"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(opts.as_str()),
        ) {
            skip(format!("mount: {e}"));
            return None;
        }
        let (tx, hung) = std::sync::mpsc::channel();
        let served = dev.clone();
        std::thread::spawn(move || fuse_serve(&served, &tx));
        Some(StuckFs {
            mnt,
            dev,
            hung,
            held: Vec::new(),
            _dir: dir,
        })
    }

    /// The path whose lookup gets stuck.
    fn stuck(&self) -> String {
        self.mnt.join("stuck").to_string_lossy().into_owned()
    }

    /// Another path whose lookup gets stuck, one per `n` (the kernel has a
    /// second lookup of a name wait for the first, unsent).
    fn stuck_n(&self, n: usize) -> String {
        self.mnt
            .join(format!("stuck{n}"))
            .to_string_lossy()
            .into_owned()
    }

    /// Waits until a lookup of `stuck` has reached the server (a hang guard).
    fn wait_stuck(&mut self) {
        let unique = self
            .hung
            .recv_timeout(Duration::from_secs(60))
            .expect("no lookup of `stuck` reached the file system");
        self.held.push(unique);
    }

    /// Answers every held lookup (EIO): the processes waiting for them go
    /// on, and die of the SIGKILL they hold.
    fn release(&mut self) {
        use std::io::Write;
        for unique in self.held.drain(..) {
            let mut out = Vec::with_capacity(16);
            out.extend_from_slice(&16u32.to_ne_bytes());
            out.extend_from_slice(&(-libc::EIO).to_ne_bytes());
            out.extend_from_slice(&unique.to_ne_bytes());
            let _ = (&*self.dev).write(&out);
        }
    }
}

impl Drop for StuckFs {
    fn drop(&mut self) {
        self.release();
        let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The FUSE server: an empty root directory, whose lookups fail with
/// ENOENT, except those of names beginning with `stuck`, which are held (their ids sent on `hung`).
/// Ends when the file system goes.
fn fuse_serve(dev: &std::fs::File, hung: &std::sync::mpsc::Sender<u64>) {
    use std::io::{Read, Write};
    const LOOKUP: u32 = 1;
    const FORGET: u32 = 2;
    const GETATTR: u32 = 3;
    const INIT: u32 = 26;
    const INTERRUPT: u32 = 36;
    const BATCH_FORGET: u32 = 42;
    let mut buf = vec![0u8; (1 << 20) + 4096];
    loop {
        let n = match (&*dev).read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ENOENT)) => continue,
            Err(_) => return,
        };
        if n < 40 {
            continue;
        }
        let word = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().expect("4 bytes"));
        let opcode = word(4);
        let unique = u64::from_ne_bytes(buf[8..16].try_into().expect("8 bytes"));
        let reply = |error: i32, body: &[u8]| {
            let mut out = Vec::with_capacity(16 + body.len());
            out.extend_from_slice(&(16 + body.len() as u32).to_ne_bytes());
            out.extend_from_slice(&error.to_ne_bytes());
            out.extend_from_slice(&unique.to_ne_bytes());
            out.extend_from_slice(body);
            let _ = (&*dev).write(&out);
        };
        match opcode {
            INIT => {
                // fuse_init_out: protocol 7.31, max_write 4096, time_gran 1.
                let mut init = [0u8; 64];
                init[0..4].copy_from_slice(&7u32.to_ne_bytes());
                init[4..8].copy_from_slice(&31u32.to_ne_bytes());
                init[8..12].copy_from_slice(&buf[48..52]);
                // FUSE_PARALLEL_DIROPS where offered: without it, a held
                // lookup holds up every other lookup in the directory.
                let flags = word(52) & (1 << 18);
                init[12..16].copy_from_slice(&flags.to_ne_bytes());
                init[20..24].copy_from_slice(&4096u32.to_ne_bytes());
                init[24..28].copy_from_slice(&1u32.to_ne_bytes());
                reply(0, &init);
            }
            LOOKUP => {
                let name = buf[40..n].split(|b| *b == 0).next().unwrap_or_default();
                if name.starts_with(b"stuck") {
                    let _ = hung.send(unique);
                } else {
                    reply(-libc::ENOENT, &[]);
                }
            }
            GETATTR => {
                // fuse_attr_out: valid 1 s; the root, a directory 0755.
                let mut attr = [0u8; 104];
                attr[0..8].copy_from_slice(&1u64.to_ne_bytes());
                attr[16..24].copy_from_slice(&1u64.to_ne_bytes());
                attr[76..80].copy_from_slice(&0o40755u32.to_ne_bytes());
                attr[80..84].copy_from_slice(&2u32.to_ne_bytes());
                attr[96..100].copy_from_slice(&4096u32.to_ne_bytes());
                reply(0, &attr);
            }
            FORGET | BATCH_FORGET | INTERRUPT => {}
            _ => reply(-libc::ENOSYS, &[]),
        }
    }
}

/// The state letter of `/proc/PID/stat` (`D`: uninterruptible).
fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit(')')
        .next()?
        .split_whitespace()
        .next()?
        .chars()
        .next()
}

/// The daemon's descendants running `comm`.
fn named(d: &Daemon, comm: &str) -> Vec<u32> {
    descendants(d.pid())
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The stuck process is there, sent SIGKILL and waiting uninterruptibly
/// (it gets there as soon as it is scheduled after the signal).
async fn held_in_the_kernel(d: &Daemon) {
    let stuck = named(d, "stat");
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    eventually(
        Duration::from_secs(60),
        "the stuck process in D state",
        || proc_state(stuck[0]) == Some('D'),
    )
    .await;
    // SigPnd (the thread's) or ShdPnd (the process's) holds SIGKILL.
    let status = std::fs::read_to_string(format!("/proc/{}/status", stuck[0])).unwrap_or_default();
    let pending = status
        .lines()
        .filter_map(|l| {
            l.strip_prefix("SigPnd:")
                .or_else(|| l.strip_prefix("ShdPnd:"))
        })
        .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
        .fold(0, |a, b| a | b);
    assert_ne!(
        pending & (1 << (libc::SIGKILL - 1)),
        0,
        "no SIGKILL pending: {status}"
    );
}

/// A daemon whose isolated sessions' processes get 1 s to end, its data
/// directory (in `t`), and a session over a new workspace (overlay, not
/// persisted) in which a process left behind by a finished run is stuck in
/// `fs` and a change waits to be committed.
async fn session_with_a_stuck_process(
    t: &TempDir,
    fs: &mut StuckFs,
) -> Option<(Daemon, TempDir, String)> {
    let d = daemon_with(Daemon::start_with_data(
        &t.0.join("data"),
        &["--isolated-end-timeout", "1s"],
    ))
    .await?;
    let w = ws("iso-stuck");
    let sid = create(
        &d,
        json!({"overlays": [{"path": path(&w), "mode": "overlay", "persist": false}]}),
    )
    .await;
    let code = format!(
        "echo x > f.txt; nohup stat {} >/dev/null 2>&1 & echo started",
        fs.stuck()
    );
    let o = run(&d, &sid, &code).await;
    assert_eq!(o.stdout, "started\n", "{}", o.stderr);
    fs.wait_stuck();
    Some((d, w, sid))
}

/// Answers what `fs` holds and waits until every process of the daemon's
/// sessions is gone (not even a zombie).
async fn release_and_wait(d: &Daemon, fs: &mut StuckFs) {
    fs.release();
    // A hang guard, not a speed check.
    eventually(
        Duration::from_secs(60),
        "the session's processes gone",
        || descendants(d.pid()).is_empty(),
    )
    .await;
}

/// Neither a mount nor a directory of session `sid` is left.
fn no_trace_of(data: &std::path::Path, sid: &str) {
    assert!(host_mounts(sid).is_empty(), "{:?}", host_mounts(sid));
    let dir = data.join("isolated").join(sid);
    assert!(!dir.exists(), "{} left", dir.display());
}

/// A commit or discard whose processes cannot end in time: 500
/// `RUNTIME_ERROR` saying so, nothing applied, the session ended (`dead`);
/// once the process can end, everything of the session goes.
#[tokio::test]
async fn commit_and_discard_whose_processes_cannot_end_end_the_session() {
    for route in ["commit", "discard"] {
        let Some(mut fs) = StuckFs::mount("iso-fuse") else {
            return;
        };
        let t = TempDir::new("iso-end");
        let Some((d, w, sid)) = session_with_a_stuck_process(&t, &mut fs).await else {
            return;
        };
        let r = d
            .post_json(&format!("/v1/isolated/session/{sid}/{route}"), &json!({}))
            .await;
        r.assert_error(500, "RUNTIME_ERROR");
        let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains("did not end within 1s"), "{route}: {msg}");
        assert!(msg.contains("the session was ended"), "{route}: {msg}");
        // The process really is beyond SIGKILL for now.
        held_in_the_kernel(&d).await;
        assert!(!w.0.join("f.txt").exists(), "{route} applied a change");
        let st = d.get(&format!("/v1/isolated/session/{sid}")).await.json();
        assert_eq!(st["status"], "dead", "{route}: {st}");
        release_and_wait(&d, &mut fs).await;
        let r = d.delete(&format!("/v1/isolated/session/{sid}")).await;
        assert_eq!(r.status, 200, "{route}: {}", r.text());
        no_trace_of(&t.0.join("data"), &sid);
        assert_eq!(
            std::fs::read_to_string(w.0.join("keep.txt")).unwrap(),
            "lower\n"
        );
    }
}

/// A delete whose processes cannot end in time: 500 `RUNTIME_ERROR` saying
/// so; the session is gone all the same (404), and once the process can
/// end, nothing of it is left.
#[tokio::test]
async fn a_delete_whose_processes_cannot_end_says_so() {
    let Some(mut fs) = StuckFs::mount("iso-fuse-del") else {
        return;
    };
    let t = TempDir::new("iso-end-del");
    let Some((d, w, sid)) = session_with_a_stuck_process(&t, &mut fs).await else {
        return;
    };
    let r = d.delete(&format!("/v1/isolated/session/{sid}")).await;
    r.assert_error(500, "RUNTIME_ERROR");
    let msg = r.json()["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("did not end within 1s"), "{msg}");
    assert!(msg.contains("the session was removed"), "{msg}");
    held_in_the_kernel(&d).await;
    d.get(&format!("/v1/isolated/session/{sid}"))
        .await
        .assert_error(404, "SESSION_NOT_FOUND");
    assert_eq!(
        d.get("/v1/isolated/sessions").await.json()["sessions"],
        json!([])
    );
    release_and_wait(&d, &mut fs).await;
    no_trace_of(&t.0.join("data"), &sid);
    assert!(!w.0.join("f.txt").exists());
}

/// Polls until session `sid` is 404 (its deletion has begun: it leaves the
/// table first). A hang guard, not a speed check.
async fn until_gone(d: &Daemon, sid: &str, what: &str) {
    let end = Instant::now() + Duration::from_secs(120);
    while d.get(&format!("/v1/isolated/session/{sid}")).await.status != 404 {
        assert!(Instant::now() < end, "{what}: session {sid} never went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session over a new workspace expiring after `idle` seconds, whose
/// background run leaves a process stuck in `fs` and ends only once that
/// process is held (so the session goes idle only then). A FIFO in `t`
/// is the run's go-ahead.
async fn expiring_stuck_session(d: &Daemon, t: &TempDir, fs: &mut StuckFs, idle: u64) -> String {
    use std::os::unix::fs::PermissionsExt;
    let fifo = t.0.join(format!("go-{}", fs.held.len()));
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).expect("mkfifo");
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let w = ws("iso-stuck-idle");
    let sid = create(
        d,
        json!({"overlays": [{"path": path(&w), "mode": "overlay", "persist": false}],
               "idle_timeout_seconds": idle}),
    )
    .await;
    let code = format!(
        "nohup stat {} >/dev/null 2>&1 & read x < {}; echo done",
        fs.stuck_n(fs.held.len()),
        fifo.display()
    );
    let r = d
        .post_json(
            &format!("/v1/isolated/session/{sid}/run"),
            &json!({"code": code, "background": true}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.text());
    fs.wait_stuck();
    // Opening the FIFO waits for the run's end of it; closing it ends the run.
    tokio::task::spawn_blocking(move || {
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&fifo)
                .expect("open fifo"),
        )
    })
    .await
    .expect("fifo");
    sid
}

/// The host pids of the daemon's `stat` processes, each waiting
/// uninterruptibly with SIGKILL pending: a deletion still waits for them.
fn stuck_and_killed(d: &Daemon) -> Vec<u32> {
    named(d, "stat")
        .into_iter()
        .filter(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
            let pending = status
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("SigPnd:")
                        .or_else(|| l.strip_prefix("ShdPnd:"))
                })
                .filter_map(|v| u64::from_str_radix(v.trim(), 16).ok())
                .fold(0, |a, b| a | b);
            proc_state(*p) == Some('D') && pending & (1 << (libc::SIGKILL - 1)) != 0
        })
        .collect()
}

/// An expired session whose processes cannot end (its deletion waits out
/// an end timeout of an hour) holds up no other session's expiry: another
/// session expires and is gone, processes, mounts and directory, while the
/// first one's deletion still waits.
#[tokio::test]
async fn a_stuck_expiry_holds_up_no_other_expiry() {
    let Some(mut fs) = StuckFs::mount("iso-fuse-exp") else {
        return;
    };
    let t = TempDir::new("iso-end-exp");
    let data = t.0.join("data");
    let Some(d) = daemon_with(Daemon::start_with_data(
        &data,
        &["--isolated-end-timeout", "3600s"],
    ))
    .await
    else {
        return;
    };
    let stuck = expiring_stuck_session(&d, &t, &mut fs, 3).await;
    until_gone(&d, &stuck, "the stuck session's expiry").await;
    held_in_the_kernel(&d).await;
    // Only now the other session: its expiry comes after the stuck one's.
    let w = ws("iso-exp-other");
    let other = create(
        &d,
        json!({"overlays": [{"path": path(&w), "mode": "overlay", "persist": false}],
               "idle_timeout_seconds": 3}),
    )
    .await;
    let o = run(&d, &other, "nohup sleep 300 >/dev/null 2>&1 & echo started").await;
    assert_eq!(o.stdout, "started\n", "{}", o.stderr);
    // A hang guard: the job may not have executed `sleep` yet.
    eventually(Duration::from_secs(60), "the other session's sleep", || {
        sleeps_of(&d).len() == 1
    })
    .await;
    until_gone(&d, &other, "the other session's expiry").await;
    eventually(
        Duration::from_secs(120),
        "the other session's processes, mounts and directory gone",
        || {
            sleeps_of(&d).is_empty()
                && host_mounts(&other).is_empty()
                && !data.join("isolated").join(&other).exists()
        },
    )
    .await;
    // The stuck session's deletion still waits: its process is held, its
    // directory is still there.
    assert_eq!(stuck_and_killed(&d).len(), 1);
    assert!(data.join("isolated").join(&stuck).exists());
    release_and_wait(&d, &mut fs).await;
    eventually(
        Duration::from_secs(60),
        "the stuck session's directory removed",
        || !data.join("isolated").join(&stuck).exists(),
    )
    .await;
    no_trace_of(&data, &stuck);
}

/// On SIGTERM, sessions whose processes cannot end (one in the table, one
/// whose expiry is under way; end timeout and shutdown budget an hour)
/// hold up no other session's end: its processes, mounts and directory go
/// while execd still waits for the stuck ones; execd exits once they end.
#[tokio::test]
async fn a_stuck_session_holds_up_no_other_at_shutdown() {
    let Some(mut fs) = StuckFs::mount("iso-fuse-shut") else {
        return;
    };
    let t = TempDir::new("iso-end-shut");
    let data = t.0.join("data");
    let Some(mut d) = daemon_with(Daemon::start_with_data(
        &data,
        &[
            "--isolated-end-timeout",
            "3600s",
            "--graceful-shutdown-timeout",
            "3600s",
        ],
    ))
    .await
    else {
        return;
    };
    // Stuck, in the table.
    let w = ws("iso-shut-stuck");
    let stuck = create(
        &d,
        json!({"overlays": [{"path": path(&w), "mode": "overlay", "persist": false}]}),
    )
    .await;
    let code = format!("nohup stat {} >/dev/null 2>&1 & echo started", fs.stuck());
    let o = run(&d, &stuck, &code).await;
    assert_eq!(o.stdout, "started\n", "{}", o.stderr);
    fs.wait_stuck();
    // Stuck, its expiry under way.
    let expiring = expiring_stuck_session(&d, &t, &mut fs, 3).await;
    until_gone(&d, &expiring, "the stuck session's expiry").await;
    // And one that can end.
    let w2 = ws("iso-shut-other");
    let other = create(
        &d,
        json!({"overlays": [{"path": path(&w2), "mode": "overlay", "persist": false}]}),
    )
    .await;
    let o = run(&d, &other, "nohup sleep 300 >/dev/null 2>&1 & echo started").await;
    assert_eq!(o.stdout, "started\n", "{}", o.stderr);
    // A hang guard: the job may not have executed `sleep` yet.
    eventually(Duration::from_secs(60), "the other session's sleep", || {
        sleeps_of(&d).len() == 1
    })
    .await;
    d.signal(libc::SIGTERM);
    eventually(
        Duration::from_secs(120),
        "the other session's processes, mounts and directory gone",
        || {
            sleeps_of(&d).is_empty()
                && host_mounts(&other).is_empty()
                && !data.join("isolated").join(&other).exists()
        },
    )
    .await;
    // execd still waits for the stuck ones.
    assert!(
        common::alive(d.pid()),
        "execd exited before its sessions ended"
    );
    assert_eq!(stuck_and_killed(&d).len(), 2);
    assert!(data.join("isolated").join(&stuck).exists());
    fs.release();
    assert!(
        d.wait_exit(Duration::from_secs(120)).is_some(),
        "execd did not exit once the stuck processes could end"
    );
    assert!(!data.exists(), "the data directory is left");
}
