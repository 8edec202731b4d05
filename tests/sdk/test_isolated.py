"""Isolated sessions through the OpenSandbox Python SDK 1.1.1's isolation
service (``IsolatedSessionsAdapter``), unchanged.  Needs root, overlayfs
and namespaces; skips loudly otherwise."""

from __future__ import annotations

import asyncio

import pytest
from opensandbox.adapters.isolated_adapter import IsolatedSessionsAdapter
from opensandbox.exceptions import SandboxException
from opensandbox.models.filesystem import WriteEntry
from opensandbox.models.isolated import (
    CreateIsolatedSessionRequest,
    IsolatedRunOpts,
    IsolatedWorkspaceSpec,
)

from sdkutil import async_config, async_test, endpoint


async def _service(addr: str) -> IsolatedSessionsAdapter:
    svc = IsolatedSessionsAdapter(async_config(), endpoint(addr))
    caps = await svc.capabilities()
    if not caps.available:
        pytest.skip(f"!!! isolated sessions unavailable here: {caps.message} !!!")
    return svc


@async_test
async def test_capabilities_are_honest(execd_addr):
    svc = IsolatedSessionsAdapter(async_config(), endpoint(execd_addr))
    caps = await svc.capabilities()
    assert caps.isolator == "native"
    want = open("/proc/sys/user/max_user_namespaces").read().strip() != "0"
    assert caps.userns_available is (bool(caps.available) and want)
    if caps.available:
        assert caps.diff_supported and caps.commit_supported
        assert caps.hardening is not None and caps.hardening.init_mode == "pid1"


@async_test
async def test_userns_run_has_its_own_user_namespace(execd_addr, tmp_path):
    svc = await _service(execd_addr)
    caps = await svc.capabilities()
    if not caps.userns_available:
        pytest.skip("!!! no user namespaces here !!!")
    work = tmp_path / "ws"
    work.mkdir()
    session = await svc.create(
        CreateIsolatedSessionRequest(
            workspace=IsolatedWorkspaceSpec(path=str(work), mode="overlay"),
            profile="balanced",
            uid=4242,
            gid=4242,
            uid_mode="userns",
        )
    )
    ex = await session.run("id -u; cat /proc/self/uid_map; readlink /proc/self/ns/user")
    out = "".join(m.text for m in ex.logs.stdout).split("\n")
    assert out[0] == "4242"
    assert out[1].split() == ["4242", "4242", "1"]
    import os

    assert out[2] != os.readlink("/proc/self/ns/user")
    await session.delete()


@async_test
async def test_create_run_files_logs_and_delete(execd_addr, tmp_path):
    svc = await _service(execd_addr)
    work = tmp_path / "ws"
    work.mkdir()
    (work / "lower.txt").write_text("lower\n")
    session = await svc.create(
        CreateIsolatedSessionRequest(
            workspace=IsolatedWorkspaceSpec(path=str(work), mode="overlay"),
            profile="strict",
        )
    )
    assert session.session_id
    # Foreground: stdout and stderr apart, the exit code back.
    ex = await session.run(
        "echo out; echo err >&2; echo $GREETING > made.txt; exit 3",
        opts=IsolatedRunOpts(envs={"GREETING": "hi"}),
    )
    assert [m.text for m in ex.logs.stdout] == ["out\n"] or ex.logs.stdout[0].text.startswith("out")
    assert any("err" in m.text for m in ex.logs.stderr)
    assert ex.error is not None and ex.error.value == "3"
    assert not (work / "made.txt").exists(), "the overlay hides writes from the lower dir"

    # Background: status and logs with the tail cursor.
    bg = await session.run_background("echo one; echo two")
    assert bg.session_id == session.session_id

    async def finished():
        st = await session.run_status(bg.run_id)
        return st if not st.running else None

    for _ in range(300):
        st = await finished()
        if st:
            break
        await asyncio.sleep(0.05)
    assert st and st.exit_code == 0
    logs = await session.run_logs(bg.run_id)
    assert logs.text == "one\ntwo\n"
    assert logs.cursor == len(logs.text)
    more = await session.run_logs(bg.run_id, cursor=logs.cursor)
    assert more.text == ""

    # Files inside the merged view.
    fs = session.files
    assert await fs.read_file(str(work / "made.txt")) == "hi\n"
    await fs.write_files([WriteEntry(path=str(work / "sdk.txt"), data="from sdk\n")])
    assert not (work / "sdk.txt").exists()
    ex = await session.run("cat sdk.txt")
    assert ex.logs.stdout[0].text.startswith("from sdk")
    info = await fs.get_file_info([str(work / "lower.txt")])
    assert info[str(work / "lower.txt")].size == 6

    # State, list, attach, delete.
    state = await session.get()
    assert state.status == "active"
    assert state.profile == "strict"
    listed = await svc.list()
    assert [s.session_id for s in listed] == [session.session_id]
    again = await svc.attach(session.session_id)
    assert again.info.workspace is not None
    await session.delete()
    with pytest.raises(SandboxException):
        await session.get()
    assert await svc.list() == []


@async_test
async def test_errors_come_back_as_sdk_exceptions(execd_addr, tmp_path):
    svc = await _service(execd_addr)
    with pytest.raises(SandboxException):
        await svc.create(
            CreateIsolatedSessionRequest(workspace=IsolatedWorkspaceSpec(path="relative"))
        )
    with pytest.raises(SandboxException):
        await svc.attach("no-such-session")
