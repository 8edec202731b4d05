"""Fixtures for the SDK conformance suite.

Contract (other test modules rely on it; keep names and shapes):

* ``execd_addr`` (function scope): a fresh daemon without a token; yields
  ``"127.0.0.1:PORT"`` (host:port, no scheme).
* ``execd_token_addr`` (function scope): a fresh daemon started with
  ``--access-token``; yields ``(addr, token)``.

The binary is ``$EXECD_BIN`` or ``<repo>/target/debug/execd``; it is not
built here.  Each daemon is stopped with SIGTERM and waited for afterwards;
a daemon that does not exit in time fails the test in teardown.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sdkutil import ExecdDaemon  # noqa: E402


def _run_daemon(*args: str):
    daemon = ExecdDaemon(*args)
    daemon.start()
    try:
        yield daemon
    finally:
        code = daemon.stop()
        # Shown by pytest only when the test fails: the daemon's own log.
        sys.stderr.write(f"--- execd exited with {code}; its stderr:\n{daemon.stderr_text()}")


@pytest.fixture
def execd_addr():
    for daemon in _run_daemon():
        yield daemon.addr


@pytest.fixture
def execd_token_addr():
    token = secrets.token_hex(16)
    for daemon in _run_daemon("--access-token", token):
        yield daemon.addr, token


@pytest.fixture
def execd_daemon():
    """The ``ExecdDaemon`` object itself (address, stderr, stop()) for tests that need it."""
    for daemon in _run_daemon():
        yield daemon
