"""The real ``e2b`` Python SDK (2.63.0) against execd's ``--e2b-port``.

The SDK's debug mode (``debug=True``) skips E2B's control plane and talks to
envd directly; ``sandbox_url`` points it at the daemon's E2B port. File
operations act only inside temporary directories these tests create.
"""

from __future__ import annotations

import os
import pwd
import socket
import tempfile
import time

import pytest

e2b = pytest.importorskip("e2b")

from e2b import CommandExitException, PtySize, Sandbox  # noqa: E402
from e2b.exceptions import TimeoutException  # noqa: E402

from sdkutil import ExecdDaemon  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def e2b_daemon():
    port = _free_port()
    daemon = ExecdDaemon("--e2b-port", str(port))
    daemon.start()
    try:
        yield daemon, f"http://127.0.0.1:{port}"
    finally:
        daemon.stop()


@pytest.fixture
def sbx(e2b_daemon):
    _, url = e2b_daemon
    return Sandbox.create(debug=True, sandbox_url=url)


@pytest.fixture
def tmp(tmp_path):
    return str(tmp_path)


def test_run_foreground_output_and_exit_codes(sbx):
    r = sbx.commands.run("echo hi; echo err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("hi\n", "err\n", 0)
    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo before; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "before\n"


def test_run_streams_to_callbacks_envs_and_cwd(sbx, tmp):
    out, err = [], []
    r = sbx.commands.run(
        "for i in 1 2 3; do echo $i; done; echo x >&2; echo $E2B_VAR; pwd",
        on_stdout=out.append,
        on_stderr=err.append,
        envs={"E2B_VAR": "v"},
        cwd=tmp,
    )
    assert "".join(out) == f"1\n2\n3\nv\n{tmp}\n"
    assert "".join(err) == "x\n"
    assert r.stdout == "".join(out)


def test_background_list_connect_kill(sbx):
    h = sbx.commands.run("sleep 300", background=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    info = next(p for p in sbx.commands.list() if p.pid == h.pid)
    assert info.cmd == "/bin/bash"
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        h.wait()
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False

    late = sbx.commands.run("sleep 1; echo late", background=True)
    again = sbx.commands.connect(late.pid)
    assert again.wait().stdout == "late\n"


def test_send_stdin_and_close_stdin(sbx):
    h = sbx.commands.run("cat; echo done", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "hello\n")
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "hello\ndone\n"
    # Without stdin=True it is closed: cat ends at once.
    assert sbx.commands.run("cat; echo eof").stdout == "eof\n"


def test_stream_input_keeps_order(sbx):
    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(h.pid, [b"a\n", b"b\n", "c\n"])
    sbx.commands.close_stdin(h.pid)
    assert h.wait().stdout == "a\nb\nc\n"


def test_async_sdk(e2b_daemon, tmp):
    import asyncio

    from e2b import AsyncSandbox

    _, url = e2b_daemon

    async def main():
        s = await AsyncSandbox.create(debug=True, sandbox_url=url)
        r = await s.commands.run("echo async")
        await s.files.write(f"{tmp}/async.txt", "x")
        return r.stdout, await s.files.read(f"{tmp}/async.txt")

    assert asyncio.run(main()) == ("async\n", "x")


def test_timeout_ends_the_whole_tree(sbx, tmp):
    marker = os.path.join(tmp, "child.pid")
    with pytest.raises(TimeoutException):
        sbx.commands.run(f"sleep 300 & echo $! > {marker}; wait", timeout=2)
    deadline = time.monotonic() + 30
    child = int(open(marker).read())
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the background child outlived the timeout")


def test_pty_create_input_resize_kill(sbx):
    h = sbx.pty.create(size=PtySize(rows=24, cols=80), timeout=60)
    sbx.pty.send_stdin(h.pid, b"stty size; echo MARK$((40+2))\n")
    sbx.pty.resize(h.pid, PtySize(rows=30, cols=100))
    sbx.pty.send_stdin(h.pid, b"stty size; exit 7\n")
    data = []
    with pytest.raises(CommandExitException) as e:
        h.wait(on_pty=data.append)
    assert e.value.exit_code == 7
    text = b"".join(data).decode(errors="replace")
    assert "MARK42" in text
    assert "30 100" in text

    h = sbx.pty.create(size=PtySize(rows=10, cols=40), timeout=60)
    assert sbx.pty.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        h.wait()


def test_files_write_read_list_info_rename_remove(sbx, tmp):
    a = f"{tmp}/a.txt"
    info = sbx.files.write(a, "content A")
    assert (info.name, info.path) == ("a.txt", a)
    assert sbx.files.read(a) == "content A"
    assert bytes(sbx.files.read(a, format="bytes")) == b"content A"
    sbx.files.write(f"{tmp}/bin", b"\x00\xff")
    assert bytes(sbx.files.read(f"{tmp}/bin", format="bytes")) == b"\x00\xff"
    many = sbx.files.write_files(
        [{"path": f"{tmp}/m/1", "data": "1"}, {"path": f"{tmp}/m/2", "data": b"2"}]
    )
    assert [w.path for w in many] == [f"{tmp}/m/1", f"{tmp}/m/2"]
    assert sorted(e.name for e in sbx.files.list(tmp)) == ["a.txt", "bin", "m"]
    assert sorted(e.name for e in sbx.files.list(tmp, depth=2)) == ["1", "2", "a.txt", "bin", "m"]
    assert sbx.files.exists(a) and not sbx.files.exists(f"{tmp}/nope")
    got = sbx.files.get_info(a)
    assert (got.size, got.permissions, got.type.value) == (9, "-rw-r--r--", "file")
    moved = sbx.files.rename(a, f"{tmp}/b.txt")
    assert moved.path == f"{tmp}/b.txt"
    assert sbx.files.make_dir(f"{tmp}/d/e") is True
    assert sbx.files.make_dir(f"{tmp}/d/e") is False
    sbx.files.remove(f"{tmp}/b.txt")
    sbx.files.remove(f"{tmp}/d")
    assert not sbx.files.exists(f"{tmp}/b.txt") and not sbx.files.exists(f"{tmp}/d")
    with pytest.raises(Exception):
        sbx.files.read(f"{tmp}/nope")


def test_gzip_uploads_and_downloads(sbx, e2b_daemon, tmp):
    import gzip
    import random

    import httpx

    rnd = random.Random(7)
    words = [bytes(rnd.choices(b"abcdefghij \n", k=rnd.randint(1, 12))) for _ in range(500)]
    data = b"".join(rnd.choice(words) for _ in range(60000)) + bytes(range(256)) * 50
    # Through the SDK (its own compression level), then every kind of block.
    sbx.files.write(f"{tmp}/sdk.bin", data, gzip=True)
    assert bytes(sbx.files.read(f"{tmp}/sdk.bin", format="bytes")) == data
    _, url = e2b_daemon
    for level in (0, 1, 9):
        r = httpx.post(
            f"{url}/files",
            params={"path": f"{tmp}/l{level}"},
            content=gzip.compress(data, compresslevel=level),
            headers={"content-type": "application/octet-stream", "content-encoding": "gzip"},
        )
        assert r.status_code == 200, r.text
        assert open(f"{tmp}/l{level}", "rb").read() == data
    # Downloads: gzip when asked (the SDK's read(gzip=True)), identity with a Range.
    assert bytes(sbx.files.read(f"{tmp}/l9", format="bytes", gzip=True)) == data
    with httpx.stream(
        "GET", f"{url}/files", params={"path": f"{tmp}/l9"}, headers={"accept-encoding": "gzip"}
    ) as r:
        assert r.headers["content-encoding"] == "gzip"
        raw = b"".join(r.iter_raw())
    assert gzip.decompress(raw) == data
    assert len(raw) < len(data)
    r = httpx.get(
        f"{url}/files",
        params={"path": f"{tmp}/l9"},
        headers={"accept-encoding": "gzip", "range": "bytes=0-9"},
    )
    assert (r.status_code, r.content, r.headers.get("content-encoding")) == (206, data[:10], None)
    # A corrupt stream is refused and leaves no file.
    bad = bytearray(gzip.compress(data))
    bad[len(bad) // 2] ^= 0xFF
    r = httpx.post(
        f"{url}/files",
        params={"path": f"{tmp}/bad"},
        content=bytes(bad),
        headers={"content-type": "application/octet-stream", "content-encoding": "gzip"},
    )
    assert r.status_code == 400
    assert not os.path.exists(f"{tmp}/bad")


def test_file_metadata_as_extended_attributes(sbx, tmp):
    w = sbx.files.write(f"{tmp}/m.txt", "x", metadata={"owner": "me", "k2": "v2"})
    assert w.metadata == {"owner": "me", "k2": "v2"}
    assert sbx.files.get_info(f"{tmp}/m.txt").metadata == {"owner": "me", "k2": "v2"}
    assert os.getxattr(f"{tmp}/m.txt", "user.e2b.owner") == b"me"
    assert [e.metadata for e in sbx.files.list(tmp)] == [{"owner": "me", "k2": "v2"}]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_a_user_other_than_root(sbx):
    nobody = pwd.getpwnam("nobody")
    r = sbx.commands.run("id -u; id -un", user="nobody")
    assert r.stdout == f"{nobody.pw_uid}\nnobody\n"
    # On a terminal too, with nobody's groups only.
    h = sbx.pty.create(size=PtySize(rows=24, cols=80), user="nobody", cwd="/", timeout=60)
    sbx.pty.send_stdin(h.pid, b"echo ID=$(id -u):$(id -G); exit\n")
    data = []
    h.wait(on_pty=data.append)
    assert f"ID={nobody.pw_uid}:{nobody.pw_gid}\r\n" in b"".join(data).decode(errors="replace")
    with tempfile.TemporaryDirectory() as d:
        os.chmod(d, 0o777)
        sbx.files.write(f"{d}/mine", "x", user="nobody")
        assert os.stat(f"{d}/mine").st_uid == nobody.pw_uid
        assert sbx.files.get_info(f"{d}/mine", user="nobody").owner == "nobody"
        # nobody may not write into root's 0755 directory.
        os.mkdir(f"{d}/root-only", 0o755)
        with pytest.raises(Exception):
            sbx.files.write(f"{d}/root-only/x", "x", user="nobody")
        assert not os.path.exists(f"{d}/root-only/x")


def _poll(w, want, seen):
    """Polls the watcher until (name, type) ``want`` is among the events."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        seen += [(e.name, e.type.value) for e in w.get_new_events()]
        if want in seen:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"no {want} in {seen}")


def test_watch_dir(sbx, tmp):
    # The synchronous SDK: CreateWatcher, GetWatcherEvents, RemoveWatcher.
    w = sbx.files.watch_dir(tmp)
    sbx.files.write(f"{tmp}/w", "x")
    seen = _poll(w, ("w", "write"), [])
    assert ("w", "create") in seen
    sbx.files.rename(f"{tmp}/w", f"{tmp}/v")
    seen = _poll(w, ("v", "create"), [])
    assert ("w", "rename") in seen
    sbx.files.remove(f"{tmp}/v")
    _poll(w, ("v", "remove"), [])
    w.stop()
    with pytest.raises(e2b.SandboxException):
        w.get_new_events()


def test_watch_dir_recursive_with_entries(sbx, tmp):
    w = sbx.files.watch_dir(tmp, recursive=True, include_entry=True)
    sbx.files.make_dir(f"{tmp}/a/b")
    sbx.files.write(f"{tmp}/a/b/f", "hello")
    deadline = time.monotonic() + 30
    entry = None
    while entry is None and time.monotonic() < deadline:
        for e in w.get_new_events():
            if e.name == "a/b/f" and e.entry is not None:
                entry = e.entry
        time.sleep(0.05)
    w.stop()
    assert entry is not None
    assert entry.path == f"{tmp}/a/b/f"
    assert entry.type == e2b.FileType.FILE


def test_watch_dir_errors(sbx, tmp):
    with pytest.raises(e2b.NotFoundException):
        sbx.files.watch_dir(f"{tmp}/missing")
    sbx.files.write(f"{tmp}/file", "x")
    with pytest.raises(e2b.InvalidArgumentException):
        sbx.files.watch_dir(f"{tmp}/file")


def test_watch_dir_streaming_async(e2b_daemon, tmp):
    # The asynchronous SDK streams WatchDir (start event first).
    import asyncio

    from e2b import AsyncSandbox

    _, url = e2b_daemon

    async def run():
        sbx = await AsyncSandbox.create(debug=True, sandbox_url=url)
        got = []
        done = asyncio.Event()

        def on_event(e):
            got.append((e.name, e.type.value))
            if ("b", "create") in got:
                done.set()

        h = await sbx.files.watch_dir(tmp, on_event, recursive=True)
        await sbx.files.write(f"{tmp}/a", "1")
        await sbx.files.rename(f"{tmp}/a", f"{tmp}/b")
        await asyncio.wait_for(done.wait(), 30)
        await h.stop()
        return got

    got = asyncio.run(run())
    assert ("a", "create") in got
    assert ("a", "rename") in got
