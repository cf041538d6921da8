"""`bwenforcer demo` end to end: capped, mailed, released, and nothing left behind."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.kernel_helpers import VENV_BIN


def _namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("bwdemo")}


@pytest.mark.kernel
def test_demo_caps_mails_releases_and_cleans_up() -> None:
    before = _namespaces()
    start = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "bwenforcer"), "demo"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    elapsed = time.monotonic() - start
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert elapsed < 120
    assert "CAPPED" in out
    assert "✉ mail spooled" in out and "Subject: bwenforcer: slice demo_heavy capped" in out
    assert "cap lifted" in out
    assert "demo finished: heavy slice capped, mailed and released" in out
    assert _namespaces() == before
    leftovers = subprocess.run(
        ["pgrep", "-f", "import socket, sys"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
