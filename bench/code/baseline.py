"""Baselines of the /code figures: the same kernel driven directly by
jupyter_client, run by execd-bench in the same run as execd's figures.

    JUPYTER_PATH=<venv>/share/jupyter <venv>/bin/python bench/code/baseline.py MODE ARGS

- `rtt N`: start a python3 kernel (KernelManager + wait_for_ready), 20 warm-up
  executions of `1+1`, then N timed ones (execute, then IOPub until that
  request's status idle, and the shell reply: `execute_interactive`);
- `create N`: N times KernelManager.start_kernel + wait_for_ready, timed
  (the kernel's own process started directly, until it answers);
- `stream BYTES TRIALS`: a cell writing BYTES in 1 KiB lines, timed from
  sending it until idle, counting the bytes of its `stream` messages.

Prints one JSON object: {"seconds": [...], "bytes": [...]} (bytes for stream).
"""

import json
import sys
import time

from jupyter_client import KernelManager


def start():
    km = KernelManager(kernel_name="python3")
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return km, kc


def stop(km, kc):
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def stream_code(n):
    return f"import sys\nline = 'x' * 1023 + '\\n'\nfor _ in range({n // 1024}):\n    sys.stdout.write(line)\nsys.stdout.flush()"


mode = sys.argv[1]
out = {"seconds": [], "bytes": []}
if mode == "rtt":
    km, kc = start()
    for _ in range(20):
        kc.execute_interactive("1+1", output_hook=lambda m: None)
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        reply = kc.execute_interactive("1+1", output_hook=lambda m: None)
        out["seconds"].append(time.perf_counter() - t)
        assert reply["content"]["status"] == "ok", reply
    stop(km, kc)
elif mode == "create":
    for _ in range(int(sys.argv[2])):
        t = time.perf_counter()
        km, kc = start()
        out["seconds"].append(time.perf_counter() - t)
        stop(km, kc)
elif mode == "stream":
    n, trials = int(sys.argv[2]), int(sys.argv[3])
    km, kc = start()
    for _ in range(trials):
        got = 0

        def hook(m):
            global got
            if m["header"]["msg_type"] == "stream":
                got += len(m["content"]["text"].encode())

        t = time.perf_counter()
        reply = kc.execute_interactive(stream_code(n), output_hook=hook, timeout=600)
        out["seconds"].append(time.perf_counter() - t)
        out["bytes"].append(got)
        assert reply["content"]["status"] == "ok", reply
    stop(km, kc)
else:
    sys.exit(f"unknown mode {mode}")
print(json.dumps(out))
