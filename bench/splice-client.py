#!/usr/bin/env python3
"""The cheapest HTTP/1.1 client that writes a download to disk, for
bench/download-disk.sh: GET URL, then the body goes socket -> pipe -> FILE
with splice(2), never through user space, so the only copy left is the
kernel's into FILE's page cache (cat's one copy). Plain http://, a
Content-Length body, no redirects; exits non-zero on a short body.

usage: splice-client.py URL FILE"""
import fcntl
import os
import socket
import sys
import urllib.parse

url, out = sys.argv[1], sys.argv[2]
u = urllib.parse.urlsplit(url)
s = socket.create_connection((u.hostname, u.port or 80))
target = u.path + ("?" + u.query if u.query else "")
s.sendall(b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (target.encode(), u.netloc.encode()))
head = b""
while b"\r\n\r\n" not in head:
    b = s.recv(1)  # one byte at a time: no body byte is read into user space
    if not b:
        sys.exit("no response head")
    head += b
lines = head.split(b"\r\n")
if b" 200 " not in lines[0] + b" ":
    sys.exit(lines[0].decode(errors="replace"))
size = int(next(l.split(b":", 1)[1] for l in lines if l.lower().startswith(b"content-length:")))
fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
r, w = os.pipe()
fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ: 1 MiB
left = size
while left:
    n = os.splice(s.fileno(), w, min(left, 1 << 20))
    if n == 0:
        sys.exit(f"short body: {size - left} of {size} bytes")
    left -= n
    while n:
        n -= os.splice(r, fd, n)
os.close(fd)
