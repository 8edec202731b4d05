"""execd's /code routes, driven through opensandbox-code-interpreter 1.1.1, unchanged.

``CodeInterpreter.create`` wants a ``Sandbox``; the lifecycle server that
normally provides one is replaced by a small stand-in that answers the three
things ``create`` and the interpreter use: ``connection_config``,
``get_endpoint(port)`` (the daemon's address) and ``commands`` (the SDK's
own ``CommandsAdapter``, which runs the readiness probe).

The daemon finds its kernels through ``JUPYTER_PATH`` pointing at the kernel
venv (``tests/kernel-venv.sh``; ``EXECD_KERNEL_VENV`` or
``<repo>/target/kernel-venv``). Without it the tests skip, except under CI.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from code_interpreter import CodeInterpreter
from code_interpreter.models.code import SupportedLanguage
from opensandbox.adapters.command_adapter import CommandsAdapter
from opensandbox.exceptions import SandboxException
from opensandbox.models.execd import ExecutionHandlers

from sdkutil import REPO_ROOT, ExecdDaemon, async_config, async_test, endpoint

KERNEL_VENV = Path(os.environ.get("EXECD_KERNEL_VENV") or REPO_ROOT / "target" / "kernel-venv")
JUPYTER_SHARE = KERNEL_VENV / "share" / "jupyter"


def _kernels_present() -> bool:
    return (JUPYTER_SHARE / "kernels" / "python3" / "kernel.json").is_file() and (
        JUPYTER_SHARE / "kernels" / "bash" / "kernel.json"
    ).is_file()


if not _kernels_present():
    msg = f"kernel venv not found at {KERNEL_VENV} (run tests/kernel-venv.sh)"
    if os.environ.get("CI"):
        raise RuntimeError(msg)
    pytest.skip(msg, allow_module_level=True)


class LocalSandbox:
    """What ``CodeInterpreter`` needs of a ``Sandbox``, for a daemon at ``addr``."""

    def __init__(self, addr: str) -> None:
        self.id = "local-execd"
        self.connection_config = async_config()
        self._endpoint = endpoint(addr)
        self.commands = CommandsAdapter(self.connection_config, self._endpoint)
        self.files = None
        self.metrics = None

    async def get_endpoint(self, port: int):
        return self._endpoint

    async def aclose(self) -> None:
        for attr in ("_httpx_client", "_sse_client"):
            client = getattr(self.commands, attr, None)
            if client is not None:
                await client.aclose()
        await self.connection_config.close_transport_if_owned()


@pytest.fixture
def code_daemon():
    daemon = ExecdDaemon(env={"JUPYTER_PATH": str(JUPYTER_SHARE)})
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        sys.stderr.write(f"--- execd exited with {code}; its stderr:\n{daemon.stderr_text()}")


async def _interpreter(addr: str) -> tuple[CodeInterpreter, LocalSandbox]:
    sandbox = LocalSandbox(addr)
    # The strict health check runs the probe through POST /command.
    interp = await CodeInterpreter.create(
        sandbox,
        ready_timeout=timedelta(seconds=20),
        health_check_polling_interval=timedelta(milliseconds=200),
    )
    return interp, sandbox


@async_test
async def test_create_passes_the_readiness_probe(code_daemon):
    interp, sandbox = await _interpreter(code_daemon.addr)
    try:
        assert await interp.is_healthy()
    finally:
        await interp.aclose()
        await sandbox.aclose()


@async_test
async def test_python_state_results_and_errors(code_daemon):
    interp, sandbox = await _interpreter(code_daemon.addr)
    try:
        ctx = await interp.codes.create_context(SupportedLanguage.PYTHON)
        assert ctx.id and ctx.language == "python"

        ex = await interp.codes.run("x = 41\nprint('hello')", context=ctx)
        assert ex.error is None
        assert "".join(m.text for m in ex.logs.stdout) == "hello\n"
        assert ex.id == ctx.id

        ex = await interp.codes.run("x + 1", context=ctx)
        assert ex.error is None
        assert [r.text for r in ex.result] == ["42"]
        assert ex.execution_count == 2

        ex = await interp.codes.run("def f():\n    raise ValueError('bad')\nf()", context=ctx)
        assert ex.error is not None
        assert ex.error.name == "ValueError"
        assert ex.error.value == "bad"
        assert any("ValueError" in line for line in ex.error.traceback)

        # No context: the default Python context.
        ex = await interp.codes.run("import sys; print(sys.version_info[0])")
        assert "".join(m.text for m in ex.logs.stdout).strip() == "3"
    finally:
        await interp.aclose()
        await sandbox.aclose()


@async_test
async def test_contexts_create_list_get_delete(code_daemon):
    interp, sandbox = await _interpreter(code_daemon.addr)
    try:
        a = await interp.codes.create_context(SupportedLanguage.PYTHON)
        b = await interp.codes.create_context(SupportedLanguage.BASH)
        ids = {c.id for c in await interp.codes.list_contexts(SupportedLanguage.PYTHON)}
        assert ids == {a.id}
        got = await interp.codes.get_context(b.id)
        assert got.id == b.id and got.language == "bash"

        await interp.codes.delete_context(a.id)
        assert await interp.codes.list_contexts(SupportedLanguage.PYTHON) == []
        with pytest.raises(SandboxException):
            await interp.codes.get_context(a.id)

        await interp.codes.delete_contexts(SupportedLanguage.BASH)
        assert await interp.codes.list_contexts(SupportedLanguage.BASH) == []
    finally:
        await interp.aclose()
        await sandbox.aclose()


@async_test
async def test_interrupt(code_daemon):
    interp, sandbox = await _interpreter(code_daemon.addr)
    try:
        ctx = await interp.codes.create_context(SupportedLanguage.PYTHON)
        started = asyncio.Event()

        async def on_stdout(msg):
            if "started" in msg.text:
                started.set()

        handlers = ExecutionHandlers(on_stdout=on_stdout)
        run = asyncio.create_task(
            interp.codes.run(
                "import time\nprint('started', flush=True)\ntime.sleep(60)",
                context=ctx,
                handlers=handlers,
            )
        )
        await asyncio.wait_for(started.wait(), 30)
        await interp.codes.interrupt(ctx.id)
        ex = await asyncio.wait_for(run, 30)
        assert ex.error is not None and ex.error.name == "KeyboardInterrupt"

        ex = await interp.codes.run("1 + 1", context=ctx)
        assert [r.text for r in ex.result] == ["2"]
    finally:
        await interp.aclose()
        await sandbox.aclose()


@async_test
async def test_bash_context(code_daemon):
    interp, sandbox = await _interpreter(code_daemon.addr)
    try:
        ctx = await interp.codes.create_context(SupportedLanguage.BASH)
        ex = await interp.codes.run("export N=6", context=ctx)
        assert ex.error is None
        ex = await interp.codes.run("echo $((N * 7))", context=ctx)
        assert "".join(m.text for m in ex.logs.stdout).strip() == "42"
        # bash by language alone: the default bash context.
        ex = await interp.codes.run("echo hi", language=SupportedLanguage.BASH)
        assert "".join(m.text for m in ex.logs.stdout).strip() == "hi"
    finally:
        await interp.aclose()
        await sandbox.aclose()
