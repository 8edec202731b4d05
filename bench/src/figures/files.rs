//! File figures: a 1 GiB multipart upload against writing the same bytes to
//! disk, a 1 GiB download into a null sink against a plain loopback TCP
//! copy, and the download written to disk by curl against the same download
//! from a trivial static server (with `cat file > copy` in the note).
//! All are "n/a (route missing)" while execd answers 404.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{blocking, mbps, Run};
use crate::client::{self, Result};
use crate::report::{Budget, Figure, Measured, ROUTE_MISSING};
use crate::stats;

const CHUNK: usize = 1 << 20;
const BOUNDARY: &str = "execd-bench-7d3f9a2c";

pub async fn figures(run: &Run) -> Vec<Figure> {
    let files = Files::new(run);
    // The label says what moved: 1 GiB, or the smoke run's 32 MiB.
    let gib = files.size >= 1 << 30;
    let up = Figure::new(
        "upload_mbps",
        if gib {
            "upload 1 GiB (multipart)"
        } else {
            "upload 32 MiB (multipart)"
        },
        "MB/s",
        Budget::MinRatio(0.8),
    )
    .with(files.upload().await);
    let down = Figure::new(
        "download_mbps",
        if gib {
            "download 1 GiB"
        } else {
            "download 32 MiB"
        },
        "MB/s",
        Budget::Min(1000.0),
    )
    .with(files.download().await);
    let to_disk = Figure::new(
        "download_disk_mbps",
        if gib {
            "1 GiB download, client writes to disk (`curl -o FILE`)"
        } else {
            "32 MiB download, client writes to disk (`curl -o FILE`)"
        },
        "MB/s",
        Budget::MinRatio(0.9),
    )
    .with(files.download_to_disk().await);
    files.clean();
    vec![up, down, to_disk]
}

pub(super) struct Files {
    addr: SocketAddr,
    dir: PathBuf,
    size: u64,
    trials: usize,
    chunk: Bytes,
}

impl Files {
    pub(super) fn new(run: &Run) -> Files {
        Files {
            addr: run.execd.addr,
            dir: run.scratch.clone(),
            size: run.plan.file_bytes(),
            trials: run.plan.heavy_trials(),
            chunk: pseudo_random(CHUNK),
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn clean(&self) {
        for name in ["disk.bin", "upload.bin", "probe.bin", "curl.out", "cat.out"] {
            let _ = std::fs::remove_file(self.path(name));
        }
    }

    /// Writes `size` bytes to `name` with plain `write` calls, then fsyncs
    /// it if `sync`: MB/s. With `writeback`, each chunk's write-back is
    /// started as soon as it is written (`sync_file_range`), as execd's
    /// upload does.
    async fn disk_write(&self, name: &str, sync: bool, writeback: bool) -> Result<f64> {
        let (path, chunk, size) = (self.path(name), self.chunk.clone(), self.size);
        blocking(move || {
            let t = Instant::now();
            let mut f = std::fs::File::create(&path).map_err(|e| format!("{path:?}: {e}"))?;
            for i in 0..size / CHUNK as u64 {
                f.write_all(&chunk).map_err(|e| e.to_string())?;
                if writeback {
                    start_writeback(&f, i * CHUNK as u64, CHUNK as u64);
                }
            }
            if sync {
                f.sync_all().map_err(|e| format!("fsync {path:?}: {e}"))?;
            }
            drop(f);
            Ok(mbps(size, t.elapsed().as_secs_f64()))
        })
        .await
    }

    /// Uploads `chunks` copies of `chunk` to `target`, returning seconds.
    pub(super) async fn upload_to(&self, target: &Path, chunk: Bytes, chunks: u64) -> Result<f64> {
        let want = chunks * chunk.len() as u64;
        let body = Multipart::new(target, chunk, chunks);
        let len = body.len();
        let req = Request::builder()
            .method(Method::POST)
            .uri("/files/upload")
            .header(http::header::HOST, "127.0.0.1")
            .header(
                http::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .header(http::header::CONTENT_LENGTH, len)
            .body(body)
            .map_err(|e| e.to_string())?;
        let mut conn = client::connect(self.addr).await?;
        let t = Instant::now();
        let resp = client::send(&mut conn, req).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ROUTE_MISSING.into());
        }
        client::drain(client::expect_ok(resp, "POST /files/upload").await?).await?;
        let secs = t.elapsed().as_secs_f64();
        let got = std::fs::metadata(target).map(|m| m.len()).unwrap_or(0);
        if got != want {
            return Err(format!("uploaded file has {got} bytes, sent {want}"));
        }
        Ok(secs)
    }

    async fn upload(&self) -> Result<Measured> {
        // A small probe first: a 404 arrives before a big body could be sent.
        let probe = Bytes::from_static(b"probe");
        self.upload_to(&self.path("probe.bin"), probe, 1).await?;
        let (mut execd, mut base, mut cached, mut early) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.trials {
            cached.push(self.disk_write("disk.bin", false, false).await?);
            early.push(self.disk_write("disk.bin", true, true).await?);
            base.push(self.disk_write("disk.bin", true, false).await?);
            let secs = self
                .upload_to(
                    &self.path("upload.bin"),
                    self.chunk.clone(),
                    self.size / CHUNK as u64,
                )
                .await?;
            execd.push(mbps(self.size, secs));
            let _ = std::fs::remove_file(self.path("upload.bin"));
        }
        let med = |v: &[f64]| stats::median(v).map_or("-".into(), stats::fmt_num);
        Ok(Measured::medians(&execd, &base).note(format!(
            "baseline: write(2) of the same bytes, then fsync (as dd conv=fsync), as \
             execd's upload fsyncs before its rename; the same with write-back \
             started per MiB as execd does {} MB/s; without fsync (page cache only) {} MB/s",
            med(&early),
            med(&cached)
        )))
    }

    /// Downloads `path` into a null sink: (bytes, seconds).
    pub(super) async fn download_from(&self, path: &Path) -> Result<(u64, f64)> {
        let mut conn = client::connect(self.addr).await?;
        let q: String = path
            .to_string_lossy()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let t = Instant::now();
        let resp =
            client::send(&mut conn, client::get(&format!("/files/download?path={q}"))).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(ROUTE_MISSING.into());
        }
        let n = client::drain(client::expect_ok(resp, "GET /files/download").await?).await?;
        Ok((n, t.elapsed().as_secs_f64()))
    }

    async fn download(&self) -> Result<Measured> {
        let probe = self.path("probe.bin");
        std::fs::write(&probe, b"probe").map_err(|e| format!("{probe:?}: {e}"))?;
        self.download_from(&probe).await?;
        self.disk_write("disk.bin", false, false).await?;
        let (mut execd, mut base) = (Vec::new(), Vec::new());
        for _ in 0..self.trials {
            base.push(self.tcp_copy().await?);
            let (n, secs) = self.download_from(&self.path("disk.bin")).await?;
            if n != self.size {
                return Err(format!("downloaded {n} of {} bytes", self.size));
            }
            execd.push(mbps(n, secs));
        }
        Ok(Measured::medians(&execd, &base)
            .note("baseline: plain loopback TCP copy of the same bytes"))
    }

    /// `curl -o FILE` of the download against `curl -o FILE` of the same
    /// file from a trivial static server ([`trivial_server`]), alternating
    /// with `cat file > copy` too, each copy removed before the next run.
    /// curl cannot come near cat: it copies socket -> user -> page cache
    /// where cat makes one in-kernel copy, so cat is the note's, and the
    /// trivial server the budget's, baseline.
    async fn download_to_disk(&self) -> Result<Measured> {
        let src = self.path("disk.bin");
        if std::fs::metadata(&src).map_or(0, |m| m.len()) != self.size {
            self.disk_write("disk.bin", false, false).await?;
        }
        let url = format!(
            "http://{}/files/download?path={}",
            self.addr,
            src.to_string_lossy()
        );
        let (out, copy) = (self.path("curl.out"), self.path("cat.out"));
        let size = self.size;
        let port = trivial_server(src.clone(), self.trials)?;
        let trivial_url = format!("http://127.0.0.1:{port}/file");
        let timed = |mut cmd: std::process::Command, what: &'static str| {
            let t = Instant::now();
            let st = cmd
                .stdin(std::process::Stdio::null())
                .status()
                .map_err(|e| format!("{what}: {e}"))?;
            let secs = t.elapsed().as_secs_f64();
            if !st.success() {
                return Err(format!("{what}: {st}"));
            }
            Ok(secs)
        };
        let curl_to = |url: String, out: PathBuf, what: &'static str| {
            let out2 = out.clone();
            async move {
                let secs = blocking(move || {
                    let mut curl = std::process::Command::new("curl");
                    curl.args(["-sS", "--fail", "-o"]).arg(&out2).arg(&url);
                    timed(curl, what)
                })
                .await?;
                let got = std::fs::metadata(&out).map_or(0, |m| m.len());
                let _ = std::fs::remove_file(&out);
                if got != size {
                    return Err(format!("{what}: curl wrote {got} of {size} bytes"));
                }
                Ok(mbps(size, secs))
            }
        };
        let (mut execd, mut base, mut cat) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..self.trials {
            let (src, copy2) = (src.clone(), copy.clone());
            let secs = blocking(move || {
                let mut cat = std::process::Command::new("sh");
                cat.arg("-c")
                    .arg("cat \"$1\" > \"$2\"")
                    .arg("sh")
                    .arg(&src)
                    .arg(&copy2);
                timed(cat, "cat")
            })
            .await?;
            cat.push(mbps(size, secs));
            let _ = std::fs::remove_file(&copy);
            base.push(curl_to(trivial_url.clone(), out.clone(), "trivial server").await?);
            execd.push(curl_to(url.clone(), out.clone(), "execd").await?);
        }
        let (e, c) = (
            stats::median(&execd).unwrap_or(f64::NAN),
            stats::median(&cat).unwrap_or(f64::NAN),
        );
        Ok(Measured::medians(&execd, &base).note(format!(
            "baseline: `curl -o FILE` of the same file from a trivial static server (one \
             blocking sendfile loop), alternating; `cat file > copy` in the same rounds \
             {c:.0} MB/s, execd {:.2} of it (out of any user-space client's reach: cat makes \
             one in-kernel copy, curl two copies and the TCP receive; bench/README.md); \
             nothing fsyncs",
            e / c
        )))
    }

    /// Sends `size` bytes over a loopback TCP connection into a null sink.
    async fn tcp_copy(&self) -> Result<f64> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let (chunk, chunks) = (self.chunk.clone(), self.size / CHUNK as u64);
        let sender = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await?;
            for _ in 0..chunks {
                tcp.write_all(&chunk).await?;
            }
            tcp.shutdown().await
        });
        let t = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match tcp.read(&mut buf).await.map_err(|e| e.to_string())? {
                0 => break,
                k => n += k as u64,
            }
        }
        let secs = t.elapsed().as_secs_f64();
        sender
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(mbps(n, secs))
    }
}

/// Starts writing a range of `f` back to disk without waiting for it.
fn start_writeback(f: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; it reads no memory.
    unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            offset as i64,
            len as i64,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Incompressible-looking bytes (xorshift), so nothing can shortcut zeros.
pub(super) fn pseudo_random(len: usize) -> Bytes {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v.into()
}

/// A multipart/form-data body: the `metadata` part, then the `file` part
/// holding `chunks` copies of `chunk`, without copying the chunk.
struct Multipart {
    head: Option<Bytes>,
    chunk: Bytes,
    left: u64,
    tail: Option<Bytes>,
    len: u64,
}

impl Multipart {
    fn new(target: &Path, chunk: Bytes, chunks: u64) -> Multipart {
        let meta = serde_json::json!({ "path": target });
        let head = format!(
            "--{BOUNDARY}\r\n\
             Content-Disposition: form-data; name=\"metadata\"; filename=\"metadata\"\r\n\
             Content-Type: application/json\r\n\r\n{meta}\r\n\
             --{BOUNDARY}\r\n\
             Content-Disposition: form-data; name=\"file\"; filename=\"x\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        );
        let tail = format!("\r\n--{BOUNDARY}--\r\n");
        let len = (head.len() + tail.len()) as u64 + chunks * chunk.len() as u64;
        Multipart {
            head: Some(head.into()),
            chunk,
            left: chunks,
            tail: Some(tail.into()),
            len,
        }
    }

    fn len(&self) -> u64 {
        self.len
    }
}

impl Body for Multipart {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Self::Error>>> {
        let next = if let Some(h) = self.head.take() {
            Some(h)
        } else if self.left > 0 {
            self.left -= 1;
            Some(self.chunk.clone())
        } else {
            self.tail.take()
        };
        if let Some(b) = &next {
            self.len -= b.len() as u64;
        }
        Poll::Ready(next.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.len == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len)
    }
}

/// A trivial static file server on loopback, the baseline of the
/// disk-writing download: serves `n` requests, one per connection, each
/// answered with `file` whole, copied by `std::io::copy` (a blocking
/// `sendfile` loop on Linux, what a plain static server or Go's net/http
/// does). Its port.
fn trivial_server(file: PathBuf, n: usize) -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = serve_whole(&mut s, &file);
        }
    });
    Ok(port)
}

/// Reads a request head from `s` and answers it with `file`, whole.
fn serve_whole(s: &mut std::net::TcpStream, file: &Path) -> std::io::Result<()> {
    use std::io::Read;
    let (mut head, mut buf) = (Vec::new(), [0u8; 4096]);
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let mut f = std::fs::File::open(file)?;
    let len = f.metadata()?.len();
    s.set_nodelay(true)?;
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {len}\r\nConnection: close\r\n\r\n"
    )?;
    std::io::copy(&mut f, s)?;
    Ok(())
}
