"""/code figures beside a direct jupyter_client baseline, in the same run.

    JUPYTER_PATH=<venv>/share/jupyter <venv>/bin/python bench/code/rtt.py EXECD_BIN [N]

(<venv> from tests/kernel-venv.sh: it has ipykernel and jupyter_client.)

- warm round trip of `1+1`: POST /code on a kept-alive HTTP/1.1 connection,
  read to the terminal event; baseline: the same kind of kernel driven by
  jupyter_client (execute, then IOPub until that request's status idle and
  the shell reply);
- context creation: POST /code/context; baseline: jupyter_client's
  KernelManager.start_kernel + wait_for_ready.
Medians (and p90) of N (default 200) round trips, 5 creations.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import time

from jupyter_client import KernelManager

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200


def stats(xs):
    xs = sorted(xs)
    return statistics.median(xs) * 1e3, xs[int(len(xs) * 0.9)] * 1e3


def post(conn, path, body):
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    return r.status, data


proc = subprocess.Popen([binary, "--port", "0", "--bind", "127.0.0.1", "--log-level", "3"],
                        stdout=subprocess.PIPE, env=os.environ)
addr = proc.stdout.readline().decode().split()[-1]
host, port = addr.rsplit(":", 1)
try:
    conn = http.client.HTTPConnection(host, int(port))
    creates = []
    ids = []
    for _ in range(5):
        t = time.perf_counter()
        st, data = post(conn, "/code/context", {"language": "python"})
        creates.append(time.perf_counter() - t)
        assert st == 200, data
        ids.append(json.loads(data)["id"])
    for i in ids[1:]:
        conn.request("DELETE", f"/code/contexts/{i}")
        conn.getresponse().read()
    ctx = ids[0]
    for _ in range(20):
        post(conn, "/code", {"code": "1+1", "context": {"id": ctx}})
    rtt = []
    for _ in range(n):
        t = time.perf_counter()
        st, data = post(conn, "/code", {"code": "1+1", "context": {"id": ctx}})
        rtt.append(time.perf_counter() - t)
        assert st == 200 and b'"text":"2"' in data, data
finally:
    proc.terminate()
    proc.wait()

base_creates = []
for _ in range(5):
    km = KernelManager(kernel_name="python3")
    t = time.perf_counter()
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    base_creates.append(time.perf_counter() - t)
    if _ < 4:
        kc.stop_channels()
        km.shutdown_kernel(now=True)

for _ in range(20):
    kc.execute_interactive("1+1", output_hook=lambda m: None)
base = []
for _ in range(n):
    t = time.perf_counter()
    reply = kc.execute_interactive("1+1", output_hook=lambda m: None)
    base.append(time.perf_counter() - t)
    assert reply["content"]["status"] == "ok"
kc.stop_channels()
km.shutdown_kernel(now=True)

m, p = stats(rtt)
bm, bp = stats(base)
print(f"warm 1+1 round trip: execd /code {m:.2f} ms (p90 {p:.2f}); jupyter_client {bm:.2f} ms (p90 {bp:.2f}); diff {m - bm:+.2f} ms")
cm, _ = stats(creates)
bcm, _ = stats(base_creates)
print(f"context creation: execd {cm:.0f} ms; jupyter_client start+ready {bcm:.0f} ms")
