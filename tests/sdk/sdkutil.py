"""Shared helpers for the SDK conformance suite.

Two jobs live here:

* ``ExecdDaemon`` starts the real ``execd`` binary on an ephemeral loopback
  port and stops it again.  ``conftest.py`` wraps it in fixtures.
* ``AsyncSdk`` / ``SyncSdk`` build the OpenSandbox Python SDK's execd
  adapters pointed straight at a daemon address, the way the SDK itself does
  once the lifecycle server has told it where execd lives: a
  ``ConnectionConfig`` plus a ``SandboxEndpoint`` whose headers travel with
  every request.

Retries are switched off in the SDK's transport, so a flaky or failing
daemon response shows up as a failure instead of being papered over.
"""

from __future__ import annotations

import asyncio
import functools
import os
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, Awaitable, Callable

from opensandbox.adapters.command_adapter import CommandsAdapter
from opensandbox.adapters.filesystem_adapter import FilesystemAdapter
from opensandbox.adapters.health_adapter import HealthAdapter
from opensandbox.config import ConnectionConfig, ConnectionConfigSync
from opensandbox.models.sandboxes import SandboxEndpoint
from opensandbox.sync.adapters.command_adapter import CommandsAdapterSync
from opensandbox.sync.adapters.filesystem_adapter import FilesystemAdapterSync
from opensandbox.sync.adapters.health_adapter import HealthAdapterSync
from opensandbox.transport import RetryPolicy

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN_HEADER = "X-EXECD-ACCESS-TOKEN"

# How long to wait for the daemon to announce its address, and to exit after SIGTERM.
STARTUP_DEADLINE_S = 20.0
SHUTDOWN_DEADLINE_S = 15.0
# Per-request timeout given to the SDK (SSE reads have no timeout in the SDK).
REQUEST_TIMEOUT = timedelta(seconds=30)


def execd_bin() -> Path:
    """The binary under test: ``$EXECD_BIN`` or ``<repo>/target/debug/execd``."""
    return Path(os.environ.get("EXECD_BIN") or REPO_ROOT / "target" / "debug" / "execd")


class ExecdDaemon:
    """One ``execd`` process listening on ``127.0.0.1:<ephemeral port>``."""

    def __init__(
        self,
        *extra_args: str,
        binary: Path | None = None,
        env: dict[str, str] | None = None,
        stdin_pipe: bool = False,
    ) -> None:
        """``stdin_pipe=True`` gives the daemon a stdin pipe that stays open and silent
        (instead of /dev/null), to tell whether commands inherit it."""
        self.binary = Path(binary or execd_bin())
        self.extra_args = list(extra_args)
        self.extra_env = dict(env or {})
        self.stdin_pipe = stdin_pipe
        self.proc: subprocess.Popen[bytes] | None = None
        self.addr: str | None = None
        self._stderr = tempfile.TemporaryFile()
        self._stderr_final = ""
        self._stdout_rest: list[bytes] = []
        self._drain: threading.Thread | None = None

    def start(self) -> str:
        if not self.binary.is_file():
            raise RuntimeError(
                f"execd binary not found at {self.binary}; run `cargo build` or set EXECD_BIN"
            )
        # The daemon reads EXECD_* variables (token, envs file, data dir...).
        # Start it from a clean slate so the caller's environment cannot change
        # what a test sees; tests pass what they need as flags or ``env=``.
        env = {k: v for k, v in os.environ.items() if not k.startswith("EXECD_")}
        env.update(self.extra_env)
        self.proc = subprocess.Popen(
            [str(self.binary), "--port", "0", "--bind", "127.0.0.1", *self.extra_args],
            stdin=subprocess.PIPE if self.stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self._read_first_line(self.proc.stdout, STARTUP_DEADLINE_S)
        prefix = "execd listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"unexpected first stdout line from execd: {line!r}\n{self.stderr_text()}")
        self.addr = line[len(prefix):].strip()
        # Keep draining stdout so the daemon can never block on a full pipe.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()
        return self.addr

    def _read_first_line(self, pipe, deadline_s: float) -> str:
        fd = pipe.fileno()
        buf = b""
        end = time.monotonic() + deadline_s
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in buf:
                remaining = end - time.monotonic()
                if remaining <= 0:
                    self.stop()
                    raise RuntimeError(
                        f"execd did not print its address within {deadline_s}s\n{self.stderr_text()}"
                    )
                if not sel.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait() if self.proc else None
                    raise RuntimeError(
                        f"execd exited (code {code}) before printing its address\n{self.stderr_text()}"
                    )
                buf += chunk
        first, _, rest = buf.partition(b"\n")
        if rest:
            self._stdout_rest.append(rest)
        return first.decode("utf-8", "replace")

    def _drain_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for chunk in iter(lambda: self.proc.stdout.read1(65536), b""):
            self._stdout_rest.append(chunk)

    def stderr_text(self) -> str:
        """What the daemon wrote to stderr so far (its log)."""
        if self._stderr.closed:
            return self._stderr_final
        self._stderr.seek(0)
        text = self._stderr.read().decode("utf-8", "replace")
        self._stderr.seek(0, os.SEEK_END)
        return text

    def stop(self) -> int | None:
        """SIGTERM, then wait. Returns the exit code; raises if it would not stop."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=SHUTDOWN_DEADLINE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(
                    f"execd did not exit within {SHUTDOWN_DEADLINE_S}s of SIGTERM\n{self.stderr_text()}"
                )
        if self._drain is not None:
            self._drain.join(timeout=5)
        for pipe in (proc.stdout, proc.stdin):
            if pipe is not None:
                pipe.close()
        if not self._stderr.closed:
            self._stderr_final = self.stderr_text()
            self._stderr.close()
        return proc.returncode


# --------------------------------------------------------------------------
# SDK construction


def endpoint(addr: str, token: str | None = None) -> SandboxEndpoint:
    """A ``SandboxEndpoint`` for ``host:port``; the token goes in its headers."""
    return SandboxEndpoint(endpoint=addr, headers={TOKEN_HEADER: token} if token else {})


def async_config() -> ConnectionConfig:
    return ConnectionConfig(
        protocol="http",
        request_timeout=REQUEST_TIMEOUT,
        retry_policy=RetryPolicy.disabled(),
    ).with_transport_if_missing()


def sync_config() -> ConnectionConfigSync:
    return ConnectionConfigSync(
        protocol="http",
        request_timeout=REQUEST_TIMEOUT,
        retry_policy=RetryPolicy.disabled(),
    ).with_transport_if_missing()


class AsyncSdk:
    """The async execd adapters for one daemon.  Use as ``async with``."""

    def __init__(self, addr: str, token: str | None = None) -> None:
        self.config = async_config()
        self.endpoint = endpoint(addr, token)
        self.commands = CommandsAdapter(self.config, self.endpoint)
        self.health = HealthAdapter(self.config, self.endpoint)
        self.files = FilesystemAdapter(self.config, self.endpoint)

    async def aclose(self) -> None:
        for adapter in (self.commands, self.health, self.files):
            for attr in ("_httpx_client", "_sse_client"):
                client = getattr(adapter, attr, None)
                if client is not None:
                    await client.aclose()
        await self.config.close_transport_if_owned()

    async def __aenter__(self) -> "AsyncSdk":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


class SyncSdk:
    """The sync execd adapters for one daemon.  Use as ``with``."""

    def __init__(self, addr: str, token: str | None = None) -> None:
        self.config = sync_config()
        self.endpoint = endpoint(addr, token)
        self.commands = CommandsAdapterSync(self.config, self.endpoint)
        self.health = HealthAdapterSync(self.config, self.endpoint)
        self.files = FilesystemAdapterSync(self.config, self.endpoint)

    def close(self) -> None:
        for adapter in (self.commands, self.health, self.files):
            for attr in ("_httpx_client", "_sse_client"):
                client = getattr(adapter, attr, None)
                if client is not None:
                    client.close()
        self.config.close_transport_if_owned()

    def __enter__(self) -> "SyncSdk":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------
# Small test helpers


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an ``async def`` test with ``asyncio.run`` (no pytest plugin needed).

    ``functools.wraps`` keeps the signature, so pytest still injects fixtures.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper


async def wait_until(
    probe: Callable[[], Awaitable[Any]],
    *,
    deadline_s: float = 15.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``probe`` until it returns something truthy, within a bounded deadline."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while True:
        last = await probe()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}; last value {last!r}")
        await asyncio.sleep(interval_s)


def wait_until_sync(
    probe: Callable[[], Any],
    *,
    deadline_s: float = 15.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> Any:
    end = time.monotonic() + deadline_s
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}; last value {last!r}")
        time.sleep(interval_s)


def pid_gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (or is only a zombie awaiting reaping)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return True
    # Field 3, after the parenthesised command name, is the state letter.
    state = stat.rsplit(b")", 1)[1].split()[0]
    return state in (b"Z", b"X")
