"""The Python SDK's FilesystemAdapter (opensandbox==1.1.1) against the real execd.

Uses only the `execd_addr` fixture (host:port of a fresh daemon). Each test
runs its coroutine with asyncio.run, so no asyncio pytest plugin is needed,
and works in a fresh temporary directory.
"""

import asyncio
import io
import os
import shutil
import stat
import tempfile
from datetime import timedelta

import pytest

from opensandbox.adapters.filesystem_adapter import FilesystemAdapter
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.filesystem import (
    ContentReplaceEntry,
    DirectoryListEntry,
    MoveEntry,
    SearchEntry,
    SetPermissionEntry,
    WriteEntry,
)
from opensandbox.models.sandboxes import SandboxEndpoint

NOBODY = 65534


def run_with_fs(execd_addr, body):
    """Runs `body(fs)` with a FilesystemAdapter on a fresh transport."""

    async def main():
        cfg = ConnectionConfig(
            protocol="http", request_timeout=timedelta(seconds=60)
        ).with_transport_if_missing()
        fs = FilesystemAdapter(cfg, SandboxEndpoint(endpoint=execd_addr, headers={}))
        try:
            return await body(fs)
        finally:
            await cfg.close_transport_if_owned()

    return asyncio.run(main())


@pytest.fixture
def tmp():
    d = tempfile.mkdtemp(prefix="execd-sdk-files-")
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def perm(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_write_and_read_str_bytes_stream(execd_addr, tmp):
    a, b, c = (os.path.join(tmp, n) for n in ("sub/a.txt", "b.bin", "c.bin"))
    blob = os.urandom(300_000)

    async def body(fs):
        await fs.write_file(a, "héllo\nworld\n", mode=644)
        await fs.write_files(
            [
                WriteEntry(path=b, data=b"\x00\x01\xff", mode=600),
                WriteEntry(path=c, data=io.BytesIO(blob)),
            ]
        )
        text = await fs.read_file(a)
        raw = await fs.read_bytes(b)
        streamed = b"".join([chunk async for chunk in await fs.read_bytes_stream(c, chunk_size=4096)])
        part = await fs.read_bytes(c, range_header="bytes=10-19")
        lines = await fs.read_file(a, offset=2, limit=1)
        return text, raw, streamed, part, lines

    text, raw, streamed, part, lines = run_with_fs(execd_addr, body)
    assert text == "héllo\nworld\n"
    assert raw == b"\x00\x01\xff"
    assert streamed == blob
    assert part == blob[10:20]
    assert lines == "world"
    assert perm(a) == 0o644 and perm(b) == 0o600
    # The SDK's default mode.
    assert perm(c) == 0o755
    assert sorted(os.listdir(tmp)) == ["b.bin", "c.bin", "sub"]


def test_file_info_search_and_list(execd_addr, tmp):
    os.makedirs(os.path.join(tmp, "d/e"))
    for n in ("x.py", "d/y.py", "d/e/z.txt"):
        with open(os.path.join(tmp, n), "w") as f:
            f.write("data")
    os.symlink(os.path.join(tmp, "x.py"), os.path.join(tmp, "link.py"))
    x = os.path.join(tmp, "x.py")

    async def body(fs):
        info = await fs.get_file_info([x])
        found = await fs.search(SearchEntry(path=tmp, pattern="*.py"))
        listed = await fs.list_directory(DirectoryListEntry(path=tmp, depth=2))
        return info, found, listed

    info, found, listed = run_with_fs(execd_addr, body)
    e = info[x]
    assert e.path == x and e.size == 4 and e.entry_type == "file"
    assert e.mode == int(oct(perm(x))[2:])  # octal digits written in decimal
    assert e.owner and e.group and e.modified_at and e.created_at
    assert sorted(os.path.relpath(f.path, tmp) for f in found) == ["d/y.py", "link.py", "x.py"]
    assert [os.path.relpath(f.path, tmp) for f in listed] == ["d", "d/e", "d/y.py", "link.py", "x.py"]
    kinds = {os.path.relpath(f.path, tmp): f.entry_type for f in listed}
    assert kinds["d"] == "directory" and kinds["link.py"] == "symlink"


def test_replace_move_permissions_delete(execd_addr, tmp):
    a = os.path.join(tmp, "a.txt")
    with open(a, "w") as f:
        f.write("one two one")

    async def body(fs):
        await fs.replace_contents([ContentReplaceEntry(path=a, old_content="two", new_content="2")])
        detailed = await fs.replace_contents_detailed(
            [ContentReplaceEntry(path=a, old_content="one", new_content="1")]
        )
        moved = os.path.join(tmp, "new/dir/a.txt")
        await fs.move_files([MoveEntry(src=a, dest=moved)])
        await fs.set_permissions([SetPermissionEntry(path=moved, mode=600)])
        content = await fs.read_file(moved)
        mode = perm(moved)
        await fs.delete_files([moved])
        return detailed, content, mode, moved

    detailed, content, mode, moved = run_with_fs(execd_addr, body)
    assert [(r.path, r.replaced_count) for r in detailed] == [(a, 2)]
    assert content == "1 2 1"
    assert mode == 0o600
    assert not os.path.exists(moved) and not os.path.exists(a)


def test_directories(execd_addr, tmp):
    d = os.path.join(tmp, "p/q/r")

    async def body(fs):
        await fs.create_directories([WriteEntry(path=d, mode=700)])
        made = os.path.isdir(d) and perm(d) == 0o700
        await fs.delete_directories([os.path.join(tmp, "p")])
        return made

    assert run_with_fs(execd_addr, body)
    assert os.listdir(tmp) == []


def test_errors_surface_as_api_exceptions(execd_addr, tmp):
    missing = os.path.join(tmp, "missing")
    os.mkdir(os.path.join(tmp, "adir"))

    async def body(fs):
        errors = []
        for call in (
            lambda: fs.read_file(missing),
            lambda: fs.get_file_info([missing]),
            lambda: fs.read_file(os.path.join(tmp, "adir")),
            lambda: fs.write_file(os.path.join(tmp, "adir"), "x"),
            lambda: fs.move_files([MoveEntry(src=missing, dest=os.path.join(tmp, "z"))]),
        ):
            with pytest.raises(SandboxException) as ei:
                await call()
            errors.append(ei.value)
        return errors

    errors = run_with_fs(execd_addr, body)
    codes = [getattr(e, "status_code", None) for e in errors if isinstance(e, SandboxApiException)]
    assert 404 in codes and 400 in codes, errors


@pytest.mark.skipif(os.geteuid() != 0, reason="acting as another uid needs execd to run as root")
def test_with_identity(execd_addr, tmp):
    secret = os.path.join(tmp, "secret.txt")
    with open(secret, "w") as f:
        f.write("root only")
    os.chmod(secret, 0o600)
    home = os.path.join(tmp, "home")
    os.mkdir(home)
    os.chown(home, NOBODY, NOBODY)
    mine = os.path.join(home, "mine.txt")

    async def body(fs):
        user = fs.with_identity(NOBODY, NOBODY)
        with pytest.raises(SandboxException) as denied:
            await user.read_file(secret)
        await user.write_file(mine, "hello", mode=644)
        info = await user.get_file_info([mine])
        back = await user.read_file(mine)
        # The plain adapter still reads as root.
        root_read = await fs.read_file(secret)
        return denied.value, info[mine], back, root_read

    denied, info, back, root_read = run_with_fs(execd_addr, body)
    assert getattr(denied, "status_code", None) == 403, denied
    assert info.owner == "nobody" and back == "hello"
    assert os.stat(mine).st_uid == NOBODY
    assert root_read == "root only"
