"""kubernetes-sigs/agent-sandbox SDK (k8s-agent-sandbox 1.0.8) against execd,
in both of its modes, with no Kubernetes:

* python-runtime: ``SandboxDirectConnectionConfig(api_url=...)`` with the
  internal ``SandboxConnector`` / ``CommandExecutor`` / ``Filesystem``;
* sandboxd: ``SandboxdInClusterConnectionConfig(mode="in-cluster-pod-ip")``
  with ``get_pod_ip`` answering ``127.0.0.1`` and both the REST and the
  gRPC port set to execd's one port.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest import _run_daemon  # noqa: E402

from k8s_agent_sandbox.commands.command_executor import CommandExecutor  # noqa: E402
from k8s_agent_sandbox.connector import SandboxConnector  # noqa: E402
from k8s_agent_sandbox.files.filesystem import Filesystem  # noqa: E402
from k8s_agent_sandbox.models import (  # noqa: E402
    SandboxdInClusterConnectionConfig,
    SandboxDirectConnectionConfig,
)


@pytest.fixture
def base_dir():
    with tempfile.TemporaryDirectory(prefix="execd-agent-sdk-") as d:
        yield Path(d).resolve()


@pytest.fixture
def daemon(base_dir):
    yield from _run_daemon("--agent-sandbox-base-dir", str(base_dir))


def _clients(conn):
    return (
        CommandExecutor(conn, tracer=None, trace_service_name="local"),
        Filesystem(conn, tracer=None, trace_service_name="local"),
    )


def _port(daemon) -> int:
    return int(daemon.addr.rsplit(":", 1)[1])


@pytest.fixture
def legacy(daemon):
    conn = SandboxConnector(
        sandbox_id="local",
        namespace="default",
        connection_config=SandboxDirectConnectionConfig(
            api_url=f"http://{daemon.addr}", server_port=_port(daemon)
        ),
        k8s_helper=None,
        get_pod_ip=None,
    )
    try:
        yield _clients(conn)
    finally:
        conn.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["one-port", "grpc-port"])
def sandboxd(request, base_dir):
    """``one-port``: REST and gRPC both on execd's main port (the SDK's
    validator insists they differ, so the config is built unvalidated);
    ``grpc-port``: sandboxd's layout, gRPC also on ``--grpc-port``."""
    args = ["--agent-sandbox-base-dir", str(base_dir)]
    if request.param == "grpc-port":
        grpc = _free_port()
        args += ["--grpc-port", str(grpc)]
    daemons = _run_daemon(*args)
    d = next(daemons)
    port = _port(d)
    if request.param == "grpc-port":
        cfg = SandboxdInClusterConnectionConfig(
            mode="in-cluster-pod-ip", rest_port=port, grpc_port=grpc
        )
    else:
        cfg = SandboxdInClusterConnectionConfig.model_construct(
            mode="in-cluster-pod-ip", rest_port=port, grpc_port=port
        )
    conn = SandboxConnector(
        sandbox_id="local",
        namespace="default",
        connection_config=cfg,
        k8s_helper=None,
        get_pod_ip=lambda: "127.0.0.1",
    )
    try:
        yield _clients(conn)
    finally:
        conn.close()
        next(daemons, None)


# --- python-runtime mode ---------------------------------------------------


def test_legacy_commands(legacy, base_dir):
    cmds, _ = legacy
    r = cmds.run("echo hello world")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("hello world\n", "", 0, False)
    # A shell line, run in the base directory.
    r = cmds.run("echo a | wc -l && pwd && echo oops >&2 && exit 4")
    assert r.stdout == f"1\n{base_dir}\n"
    assert r.stderr == "oops\n"
    assert r.exit_code == 4
    # Server-side time limit: partial output kept, timed_out set.
    r = cmds.run("echo started; sleep 30", timeout=30, command_timeout=1)
    assert r.timed_out is True
    assert r.stdout == "started\n"
    assert r.exit_code == 124


def test_legacy_files(legacy, base_dir):
    _, fs = legacy
    fs.write("dir/notes.txt", "hi from sdk")
    assert (base_dir / "dir" / "notes.txt").read_bytes() == b"hi from sdk"
    assert fs.read("dir/notes.txt") == b"hi from sdk"
    fs.write("sp ace/ü.bin", b"\x00\x01\xff")
    assert fs.read("sp ace/ü.bin") == b"\x00\x01\xff"
    # A streamed upload (file object).
    with tempfile.TemporaryFile() as f:
        f.write(b"x" * 200_000)
        f.seek(0)
        fs.write("big.bin", f)
    assert fs.read("big.bin") == b"x" * 200_000
    assert fs.exists("dir/notes.txt") is True
    assert fs.exists("nope.txt") is False
    entries = fs.list("dir")
    assert [(e.name, e.type, e.size) for e in entries] == [("notes.txt", "file", 11)]
    names = {e.name: e.type for e in fs.list(".")}
    assert names == {"dir": "directory", "sp ace": "directory", "big.bin": "file"}
    # A broken symlink does not break the listing.
    os.symlink("missing", base_dir / "broken")
    assert "broken" not in {e.name for e in fs.list("")}
    with pytest.raises(NotImplementedError):
        fs.delete("dir/notes.txt")


# --- sandboxd mode -----------------------------------------------------------


def test_sandboxd_commands(sandboxd, base_dir):
    cmds, _ = sandboxd
    r = cmds.run("echo hello world")
    assert (r.stdout, r.stderr, r.exit_code, r.timed_out) == ("hello world\n", "", 0, False)
    (base_dir / "work").mkdir()
    r = cmds.run("echo $GREETING; pwd; exit 5", env={"GREETING": "hey"}, cwd="work")
    assert r.stdout == f"hey\n{base_dir}/work\n"
    assert r.exit_code == 5
    r = cmds.run("sleep 30", timeout=30, command_timeout=1)
    assert r.timed_out is True
    assert r.exit_code == 124


def test_sandboxd_files(sandboxd, base_dir):
    _, fs = sandboxd
    fs.write("a/b c.txt", b"payload")
    assert (base_dir / "a" / "b c.txt").read_bytes() == b"payload"
    assert fs.read("a/b c.txt") == b"payload"
    assert fs.exists("a/b c.txt") is True
    assert fs.exists("a/missing") is False
    entries = fs.list("a")
    assert [(e.name, e.type, e.size, e.mode) for e in entries] == [
        ("b c.txt", "file", 7, "0644")
    ]
    assert entries[0].modified.tzinfo is not None
    fs.write("a/sub/x.txt", "x")
    with pytest.raises(Exception):
        fs.delete("a")  # not empty: 409
    fs.delete("a", recursive=True)
    assert fs.exists("a/b c.txt") is False
    assert not (base_dir / "a").exists()
