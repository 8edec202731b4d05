"""`commands.run("echo hi")` through the OpenSandbox Python SDK and, with an
E2B address, through the `e2b` Python SDK, against the same requests sent by
curl, alternating, in one run, one execd (execd-bench's `sdk` group).

    <sdk venv>/bin/python bench/code/sdk_rtt.py HOST:PORT N [E2B_HOST:PORT]

Each of the N rounds times, one after the other:
- the SDK: `await CommandsAdapter.run("echo hi")` (async adapter, one client
  kept for the run, as an application holds it), until it returns;
- curl: `curl -sN -X POST /command -d '{"command":"echo hi"}'` as a process,
  wall time from spawn to exit, and curl's own `%{time_total}` (the request
  alone, without curl's start-up);
- with E2B_HOST:PORT, the e2b SDK: `await AsyncSandbox.commands.run("echo hi")`
  (debug mode, `sandbox_url` the E2B port, one sandbox object for the run),
  and curl's `%{time_total}` for envd's `POST /process.Process/Start` with
  the same command in one Connect JSON envelope, read to the end of the
  stream; and `bash -l -c "echo hi"` spawned directly (subprocess), wall time.
  The SDK runs every command as a login shell (`/bin/bash -l -c CMD`), which
  reads the user's ~/.profile: all three get `HOME` set to an empty scratch
  directory, so the figure is execd and the protocol, not this machine's
  profile (here root's runs `pyenv init`, ~0.6 s).
5 untimed rounds first warm all up. Prints one JSON object of seconds:
{"sdk": [...], "curl_wall": [...], "curl_request": [...], "e2b": [...],
"curl_e2b_request": [...], "login_shell": [...]} (the last three empty
without an E2B address).
"""

import asyncio
from datetime import timedelta
import json
import os
import subprocess
import sys
import tempfile
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


def curl_e2b(addr, envelope_file):
    out = subprocess.run(
        ["curl", "-sS", "-N", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
         "-X", "POST", "-H", "content-type: application/connect+json",
         "--data-binary", f"@{envelope_file}", f"http://{addr}/process.Process/Start"],
        check=True, capture_output=True, text=True,
    )
    code, total = out.stdout.split()
    if code != "200":
        raise SystemExit(f"curl (E2B): HTTP {code}")
    return float(total)


def login_shell(home):
    t = time.perf_counter()
    out = subprocess.run(["/bin/bash", "-l", "-c", "echo hi"], env={**os.environ, "HOME": home},
                         check=True, capture_output=True, text=True)
    if out.stdout != "hi\n":
        raise SystemExit(f"bash -l gave {out.stdout!r}")
    return time.perf_counter() - t


def start_envelope(home):
    """`echo hi` as the e2b SDK starts it, in one Connect envelope."""
    msg = json.dumps({"process": {"cmd": "/bin/bash", "args": ["-l", "-c", "echo hi"],
                                  "envs": {"HOME": home}},
                      "stdin": False}).encode()
    f = tempfile.NamedTemporaryFile(prefix="sdk-rtt-", suffix=".env", delete=False)
    f.write(b"\x00" + len(msg).to_bytes(4, "big") + msg)
    f.close()
    return f.name


async def main(addr, n, e2b_addr=None):
    config = ConnectionConfig(
        protocol="http", request_timeout=timedelta(seconds=60), retry_policy=RetryPolicy.disabled()
    ).with_transport_if_missing()
    commands = CommandsAdapter(config, SandboxEndpoint(endpoint=addr, headers={}))
    sdk, wall, request, e2b, curl_e2b_req, login = [], [], [], [], [], []
    sbx, env_file = None, None
    home = tempfile.mkdtemp(prefix="sdk-rtt-home-")
    if e2b_addr:
        try:
            from e2b import AsyncSandbox
        except ImportError:
            AsyncSandbox = None
    if e2b_addr and AsyncSandbox is not None:
        sbx = await AsyncSandbox.create(debug=True, sandbox_url=f"http://{e2b_addr}")
        env_file = start_envelope(home)
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
        if sbx is not None:
            t = time.perf_counter()
            res = await sbx.commands.run("echo hi", envs={"HOME": home})
            s = time.perf_counter() - t
            if res.stdout != "hi\n" or res.exit_code != 0:
                raise SystemExit(f"e2b SDK run gave {res.stdout!r}, exit {res.exit_code}")
            r = await asyncio.to_thread(curl_e2b, e2b_addr, env_file)
            b = await asyncio.to_thread(login_shell, home)
            if i >= 5:
                e2b.append(s)
                curl_e2b_req.append(r)
                login.append(b)
    if env_file:
        os.unlink(env_file)
    os.rmdir(home)
    for attr in ("_httpx_client", "_sse_client"):
        client = getattr(commands, attr, None)
        if client is not None:
            await client.aclose()
    await config.close_transport_if_owned()
    print(json.dumps({"sdk": sdk, "curl_wall": wall, "curl_request": request,
                      "e2b": e2b, "curl_e2b_request": curl_e2b_req, "login_shell": login}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None))
