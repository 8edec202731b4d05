"""Bash sessions through the OpenSandbox Python SDK 1.1.1."""

from __future__ import annotations

from datetime import timedelta

import pytest
from opensandbox.exceptions import SandboxException

from sdkutil import AsyncSdk, async_test


@async_test
async def test_session_keeps_exports_and_directory(execd_addr, tmp_path):
    async with AsyncSdk(execd_addr) as sdk:
        work = tmp_path / "work"
        sid = await sdk.commands.create_session(working_directory=str(work))
        assert work.is_dir(), "the session directory is created"
        first = await sdk.commands.run_in_session(sid, "export GREETING=hello; mkdir -p sub; cd sub")
        assert first.exit_code == 0
        second = await sdk.commands.run_in_session(sid, 'echo "$GREETING from $(pwd)"')
        assert second.exit_code == 0
        assert second.text == f"hello from {work / 'sub'}"
        await sdk.commands.delete_session(sid)


@async_test
async def test_session_heredoc_exit_code_and_timeout(execd_addr):
    async with AsyncSdk(execd_addr) as sdk:
        sid = await sdk.commands.create_session()
        ex = await sdk.commands.run_in_session(sid, "cat <<EOF\nline one\nline two\nEOF")
        assert ex.text == "line one\nline two"
        ex = await sdk.commands.run_in_session(sid, "export KEEP=1; exit 7")
        assert ex.exit_code == 7
        ex = await sdk.commands.run_in_session(sid, "sleep 30", timeout=timedelta(milliseconds=300))
        assert ex.exit_code != 0
        ex = await sdk.commands.run_in_session(sid, "echo keep=$KEEP")
        assert ex.text == "keep=1"
        await sdk.commands.delete_session(sid)


@async_test
async def test_deleted_session_is_gone(execd_addr):
    async with AsyncSdk(execd_addr) as sdk:
        sid = await sdk.commands.create_session()
        await sdk.commands.delete_session(sid)
        with pytest.raises(SandboxException):
            await sdk.commands.delete_session(sid)
        with pytest.raises(SandboxException):
            await sdk.commands.run_in_session(sid, "true")
