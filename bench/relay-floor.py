#!/usr/bin/env python3
"""The floor under execd's streaming CPU per event: a bare relay that reads the
same producer's pipe as execd does (enlarged to 1 MiB, read at most once per
millisecond while busy, into one reused buffer) and writes each read to a TCP
socket read by `curl -sN -o /dev/null` (an HTTP/1.0 response, body until
close), with no framing, no events and no log; optionally (--spill DIR) also
appending each read to a file, as execd's durable log does. Prints the
relay's CPU (utime+stime) per 1 KiB line. usage: relay-floor.py [--spill DIR]"""
import fcntl, os, socket, subprocess, sys, tempfile, time

F_SETPIPE_SZ = 1031
BUF = 1 << 20

PRODUCER = "head -c 268435456 /dev/zero | tr '\\0' x | fold -w 1023"
spill_dir = sys.argv[2] if len(sys.argv) > 2 and sys.argv[1] == "--spill" else None
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(1)
port = srv.getsockname()[1]
curl = subprocess.Popen(["curl", "-sN", "-o", "/dev/null", f"http://127.0.0.1:{port}/"])
conn, _ = srv.accept()
conn.recv(65536)
t0 = os.times()
prod = subprocess.Popen(["bash", "-c", PRODUCER], stdout=subprocess.PIPE)
spill = None
if spill_dir:
    fd, path = tempfile.mkstemp(dir=spill_dir)
    spill = os.fdopen(fd, "wb", buffering=0)
    os.unlink(path)
conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n")
pipe = prod.stdout.fileno()
try:
    fcntl.fcntl(pipe, F_SETPIPE_SZ, BUF)
except OSError:
    pass
buf = bytearray(BUF)
view = memoryview(buf)
n = 0
while True:
    got = prod.stdout.raw.readinto(view)
    if not got:
        break
    n += got
    conn.sendall(view[:got])
    if spill:
        spill.write(view[:got])
    if got < BUF:
        time.sleep(0.001)
prod.wait()
t1 = os.times()
conn.close()
curl.wait()
cpu = (t1.user - t0.user) + (t1.system - t0.system)
lines = n // 1024
sys_ms = (t1.system - t0.system) * 1000
print(f"relay{' + spill' if spill else ''}: {n} bytes, CPU {cpu*1000:.0f} ms (system {sys_ms:.0f} ms), {cpu*1e6/lines:.2f} us per 1 KiB line")
