"""The Python examples in examples/ (shown in README.md) run as scripts,
unchanged, against a real daemon (EXECD_ADDR)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_python_example_runs_as_a_script(execd_addr, script):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        env={**os.environ, "EXECD_ADDR": execd_addr},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    if script == "quickstart.py":
        assert proc.stdout == "exit code: 0\nstdout: hi\n", proc.stdout
