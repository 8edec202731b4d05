#!/usr/bin/env python3
"""A trivial HTTP/1.1 file server, the baseline of bench/download-disk.sh:
one connection at a time, one request per connection, the file named by
the `path` query parameter sent whole with a blocking sendfile(2) loop (what
a plain static server, or Go's net/http, does), nothing else. With
--lowat N the socket also keeps at most N bytes queued unsent
(TCP_NOTSENT_LOWAT), as execd does while it sends a file. Prints its port,
then serves until killed. Only for benchmarks: no checks of any kind.

usage: static-server.py [--lowat N]"""
import os
import socket
import sys
import urllib.parse

lowat = int(sys.argv[2]) if sys.argv[1:2] == ["--lowat"] else 0
ls = socket.socket()
ls.bind(("127.0.0.1", 0))
ls.listen(16)
print(ls.getsockname()[1], flush=True)
while True:
    c, _ = ls.accept()
    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if lowat:
        c.setsockopt(socket.IPPROTO_TCP, 25, lowat)  # TCP_NOTSENT_LOWAT
    head = b""
    while b"\r\n\r\n" not in head:
        d = c.recv(65536)
        if not d:
            break
        head += d
    try:
        target = head.split(b" ")[1].decode()
        path = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)["path"][0]
        fd = os.open(path, os.O_RDONLY)
    except (IndexError, KeyError, OSError):
        c.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        c.close()
        continue
    size = os.fstat(fd).st_size
    c.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % size
    )
    off = 0
    try:
        while off < size:
            n = os.sendfile(c.fileno(), fd, off, size - off)
            if n == 0:
                break
            off += n
    except OSError:
        pass
    os.close(fd)
    c.close()
