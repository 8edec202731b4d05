"""`commands.run("echo hi")` through the OpenSandbox Python SDK against the
same request sent by curl, alternating, in one run (execd-bench's `sdk` group).

    <sdk venv>/bin/python bench/code/sdk_rtt.py HOST:PORT N

Each of the N rounds times, one after the other:
- the SDK: `await CommandsAdapter.run("echo hi")` (async adapter, one client
  kept for the run, as an application holds it), until it returns;
- curl: `curl -sN -X POST /command -d '{"command":"echo hi"}'` as a process,
  wall time from spawn to exit, and curl's own `%{time_total}` (the request
  alone, without curl's start-up).
5 untimed rounds first warm both up. Prints one JSON object of seconds:
{"sdk": [...], "curl_wall": [...], "curl_request": [...]}.
"""

import asyncio
from datetime import timedelta
import json
import subprocess
import sys
import time

from opensandbox.adapters.command_adapter import CommandsAdapter
from opensandbox.config import ConnectionConfig
from opensandbox.transport import RetryPolicy
from opensandbox.models.sandboxes import SandboxEndpoint


def curl(addr):
    t = time.perf_counter()
    out = subprocess.run(
        ["curl", "-sS", "-N", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
         "-X", "POST", "-H", "content-type: application/json",
         "--data-binary", '{"command":"echo hi"}', f"http://{addr}/command"],
        check=True, capture_output=True, text=True,
    )
    wall = time.perf_counter() - t
    code, total = out.stdout.split()
    if code != "200":
        raise SystemExit(f"curl: HTTP {code}")
    return wall, float(total)


async def main(addr, n):
    config = ConnectionConfig(
        protocol="http", request_timeout=timedelta(seconds=60), retry_policy=RetryPolicy.disabled()
    ).with_transport_if_missing()
    commands = CommandsAdapter(config, SandboxEndpoint(endpoint=addr, headers={}))
    sdk, wall, request = [], [], []
    for i in range(n + 5):
        t = time.perf_counter()
        ex = await commands.run("echo hi")
        s = time.perf_counter() - t
        got = "".join(m.text for m in ex.logs.stdout)
        if got.strip() != "hi" or ex.error is not None:
            raise SystemExit(f"SDK run gave {got!r}, error {ex.error}")
        w, r = await asyncio.to_thread(curl, addr)
        if i >= 5:
            sdk.append(s)
            wall.append(w)
            request.append(r)
    for attr in ("_httpx_client", "_sse_client"):
        client = getattr(commands, attr, None)
        if client is not None:
            await client.aclose()
    await config.close_transport_if_owned()
    print(json.dumps({"sdk": sdk, "curl_wall": wall, "curl_request": request}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
