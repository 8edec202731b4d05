//! Black-box tests of file bodies sent with `sendfile` (plain HTTP/1.1):
//! byte-exact through curl for whole files, ranges across the 16 MiB
//! frame boundary, `multipart/byteranges`, HEAD, several downloads on one
//! kept-alive connection, the agent-sandbox and sandboxd routes, HTTP/2
//! (copied, not zero-copy), and a client that leaves mid-download. That
//! each took the zero-copy path (or not) is read from the daemon's
//! `execd_sendfile_bytes_total` counter: it grows by the file bytes sent.

mod common;

use std::process::Command;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 40 MiB + 7 bytes: several 16 MiB frames and a ragged end. Content from
/// a fixed xorshift, so every offset has its own bytes.
fn content() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..40 * 1024 * 1024 + 7)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// curl with `args`; its stdout.
fn curl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("curl")
        .args(["-sS", "--fail"])
        .args(args)
        .output()
        .expect("curl is needed by this test");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Follows `execd_sendfile_bytes_total`: each download must grow it by
/// exactly the file bytes it sent with sendfile.
struct SendfileMeter<'a> {
    base: &'a str,
    sent: u64,
}

impl<'a> SendfileMeter<'a> {
    fn new(base: &'a str) -> Self {
        SendfileMeter {
            base,
            sent: sendfile_bytes(base),
        }
    }

    /// Asserts that `what` sent `n` bytes with sendfile since the last look.
    fn took(&mut self, what: &str, n: usize) {
        let now = sendfile_bytes(self.base);
        assert_eq!(
            now - self.sent,
            n as u64,
            "{what}: bytes sent with sendfile"
        );
        self.sent = now;
    }
}

/// The daemon's `execd_sendfile_bytes_total`: file bytes sent with sendfile.
fn sendfile_bytes(base: &str) -> u64 {
    let text = String::from_utf8(curl(&[&format!("{base}/metrics?format=prometheus")])).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("execd_sendfile_bytes_total "))
        .expect("execd_sendfile_bytes_total in /metrics")
        .parse()
        .unwrap()
}

#[tokio::test]
async fn downloads_are_byte_exact_through_curl() {
    let t = TempDir::new("zerocopy");
    let data = content();
    std::fs::write(t.join("f.bin"), &data).unwrap();
    let d = Daemon::start_with(&["--agent-sandbox-base-dir", &t.join("")], &[]);
    let base = format!("http://{}", d.addr);
    let url = format!("{base}/files/download?path={}", t.join("f.bin"));
    let size = data.len();

    // Each download below must grow the sendfile counter by exactly the
    // file bytes it sent: it took the zero-copy path, whole.
    let mut meter = SendfileMeter::new(&base);

    // Whole, written to a file by curl as a user would.
    let out = t.join("whole");
    curl(&["-o", &out, &url]);
    assert!(std::fs::read(&out).unwrap() == data, "whole file differs");
    meter.took("whole file", size);

    // One range across the first frame boundary.
    let (a, b) = (16 * 1024 * 1024 - 10, 16 * 1024 * 1024 + 9);
    let part = curl(&["-H", &format!("Range: bytes={a}-{b}"), &url]);
    assert!(part == data[a..=b], "single range differs");
    meter.took("single range", b - a + 1);
    // The last bytes (a suffix range).
    let tail = curl(&["-H", "Range: bytes=-5", &url]);
    assert!(tail == data[size - 5..], "suffix range differs");
    meter.took("suffix range", 5);

    // Several ranges: multipart/byteranges, each part byte-exact.
    let ranges = [
        (0usize, 9usize),
        (20_000_000, 36_000_000),
        (size - 3, size - 1),
    ];
    let spec: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
    let multi = curl(&["-H", &format!("Range: bytes={}", spec.join(",")), &url]);
    let mut at = 0;
    for &(a, b) in &ranges {
        let want = &data[a..=b];
        let head_end = multi[at..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("part header")
            + at
            + 4;
        let head = String::from_utf8_lossy(&multi[at..head_end]).to_string();
        assert!(
            head.contains(&format!("Content-Range: bytes {a}-{b}/{size}")),
            "{head}"
        );
        assert!(
            multi[head_end..head_end + want.len()] == *want,
            "part {a}-{b} differs"
        );
        at = head_end + want.len();
    }
    assert!(multi[at..].ends_with(b"--\r\n"), "closing delimiter");
    meter.took(
        "multipart/byteranges",
        ranges.iter().map(|(a, b)| b - a + 1).sum(),
    );

    // HEAD: the length, no body.
    let head = String::from_utf8(curl(&["-I", &url])).unwrap();
    assert!(head.contains(&format!("content-length: {size}")), "{head}");
    meter.took("HEAD", 0);

    // Three downloads on one kept-alive connection (curl reuses it across
    // `--next`), a range between two whole files.
    let (o1, o2, o3) = (t.join("k1"), t.join("k2"), t.join("k3"));
    let w = ["-sS", "--fail", "-w", "%{num_connects}\n"];
    let out = Command::new("curl")
        .args(w)
        .args(["-o", &o1, &url, "--next"])
        .args(w)
        .args(["-H", "Range: bytes=100-199", "-o", &o2, &url, "--next"])
        .args(w)
        .args(["-o", &o3, &url])
        .output()
        .unwrap();
    assert!(out.status.success());
    let connects = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        connects.lines().collect::<Vec<_>>(),
        ["1", "0", "0"],
        "one connection"
    );
    assert!(std::fs::read(&o1).unwrap() == data);
    assert!(
        std::fs::read(&o2).unwrap() == data[100..=199],
        "kept-alive range differs"
    );
    assert!(std::fs::read(&o3).unwrap() == data);
    meter.took("kept-alive connection", 2 * size + 100);

    // The agent-sandbox and sandboxd routes take the same path.
    let agent = t.join("agent");
    curl(&["-o", &agent, &format!("{base}/download/f.bin")]);
    assert!(
        std::fs::read(&agent).unwrap() == data,
        "agent-sandbox download differs"
    );
    meter.took("agent-sandbox download", size);
    let sbx = curl(&[
        "-H",
        &format!("Range: bytes={a}-{b}"),
        &format!("{base}/v1/files/f.bin"),
    ]);
    assert!(sbx == data[a..=b], "sandboxd range differs");
    meter.took("sandboxd range", b - a + 1);
    let sbx = t.join("sbx");
    curl(&["-o", &sbx, &format!("{base}/v1/files/f.bin")]);
    assert!(
        std::fs::read(&sbx).unwrap() == data,
        "sandboxd download differs"
    );
    meter.took("sandboxd download", size);

    // HTTP/2 (h2c): copied through user space, still exact.
    let h2 = t.join("h2");
    curl(&["--http2-prior-knowledge", "-o", &h2, &url]);
    assert!(
        std::fs::read(&h2).unwrap() == data,
        "HTTP/2 download differs"
    );
    meter.took("HTTP/2 (copied)", 0);

    // A client that reads a little and leaves: the daemon serves on.
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let req = format!(
        "GET /files/download?path={} HTTP/1.1\r\nHost: x\r\n\r\n",
        t.join("f.bin")
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(n > 0);
    drop(s);
    let again = t.join("again");
    curl(&["-o", &again, &url]);
    assert!(
        std::fs::read(&again).unwrap() == data,
        "download after a client left"
    );
}

/// E2B envd's `GET /files` takes the same sendfile path, with its own
/// headers: whole and one range byte-exact, each growing the counter by
/// exactly its bytes; HEAD and a gzip download send nothing with sendfile.
#[tokio::test]
async fn e2b_downloads_take_the_sendfile_path() {
    let t = TempDir::new("zerocopy-e2b");
    let data = content();
    std::fs::write(t.join("f.bin"), &data).unwrap();
    let (d, e2b) = Daemon::start_with_e2b(&[]);
    let base = format!("http://{}", d.addr);
    let url = format!("http://{e2b}/files?path={}", t.join("f.bin"));
    let size = data.len();
    let mut meter = SendfileMeter::new(&base);

    let out = t.join("whole");
    let head = String::from_utf8(curl(&["-D", "-", "-o", &out, &url])).unwrap();
    assert!(std::fs::read(&out).unwrap() == data, "whole file differs");
    for h in [
        format!("content-length: {size}"),
        "content-type: application/octet-stream".to_string(),
        "content-disposition: attachment; filename=\"f.bin\"".to_string(),
    ] {
        assert!(
            head.to_lowercase().contains(&h.to_lowercase()),
            "{h}: {head}"
        );
    }
    meter.took("e2b whole file", size);

    let (a, b) = (16 * 1024 * 1024 - 10, 16 * 1024 * 1024 + 9);
    let part = curl(&["-H", &format!("Range: bytes={a}-{b}"), &url]);
    assert!(part == data[a..=b], "e2b range differs");
    meter.took("e2b range", b - a + 1);

    let head = String::from_utf8(curl(&["-I", &url])).unwrap();
    assert!(head.contains(&format!("content-length: {size}")), "{head}");
    meter.took("e2b HEAD", 0);

    // gzip is compressed in user space: the same bytes once inflated.
    let gz = t.join("gz");
    curl(&["--compressed", "-o", &gz, &url]);
    assert!(std::fs::read(&gz).unwrap() == data, "e2b gzip differs");
    meter.took("e2b gzip", 0);
}

/// A file cut short while it is sent: the connection ends before the
/// promised length, and every byte that did arrive is the file's own (no
/// padding, no zeros).
#[tokio::test]
async fn a_file_cut_short_mid_download_breaks_the_connection() {
    let t = TempDir::new("zerocopy-short");
    let data = content();
    let path = t.join("f.bin");
    std::fs::write(&path, &data).unwrap();
    let d = Daemon::start();
    let mut s = tokio::net::TcpStream::connect(d.addr).await.unwrap();
    let req = format!("GET /files/download?path={path} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    // The head and the first bytes, then the file is cut to 2 MiB.
    let mut got = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() < 512 * 1024 {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got.extend_from_slice(&buf[..n]);
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2 * 1024 * 1024)
        .unwrap();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(rest.is_ok(), "the connection neither ended nor broke");
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    assert!(
        head.contains(&format!("content-length: {}", data.len())),
        "{head}"
    );
    let body = &got[head_end..];
    assert!(body.len() < data.len(), "a cut file was sent whole");
    assert!(body == &data[..body.len()], "bytes that are not the file's");
}

/// `--no-sendfile`: the same bytes, copied through user space.
#[tokio::test]
async fn no_sendfile_copies_the_same_bytes() {
    let t = TempDir::new("no-sendfile");
    let data = content();
    std::fs::write(t.join("f.bin"), &data).unwrap();
    let d = Daemon::start_with(&["--no-sendfile"], &[]);
    let url = format!("http://{}/files/download?path={}", d.addr, t.join("f.bin"));
    let out = t.join("whole");
    curl(&["-o", &out, &url]);
    assert!(std::fs::read(&out).unwrap() == data, "whole file differs");
    let (a, b) = (16 * 1024 * 1024 - 10, 16 * 1024 * 1024 + 9);
    let part = curl(&["-H", &format!("Range: bytes={a}-{b}"), &url]);
    assert!(part == data[a..=b], "single range differs");
    let base = format!("http://{}", d.addr);
    assert_eq!(sendfile_bytes(&base), 0, "nothing sent with sendfile");
}
