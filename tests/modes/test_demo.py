"""`bwenforcer demo` end to end: capped, mailed, released, and nothing left behind."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest

from bwenforcer.inputs.cgroups import find_mount
from tests.kernel_helpers import VENV_BIN


def _namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("bwdemo")}


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["uid", "cgroup"])
def test_demo_caps_mails_releases_and_cleans_up(mode: str) -> None:
    before = _namespaces()
    start = time.monotonic()
    proc = subprocess.run(
        [str(VENV_BIN / "bwenforcer"), "demo", "--mode", mode],
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
    unit = " (heavy.service)" if mode == "cgroup" else ""  # a cgroup tenant: by its unit
    assert "✉ mail spooled" in out and f"Subject: bwenforcer: slice demo_heavy{unit} capped" in out
    assert "cap lifted" in out
    assert "demo finished: heavy slice capped, mailed and released" in out
    assert not _namespaces() - before  # none of ours left (others may run demos meanwhile)
    if mode == "cgroup":  # the demo's own cgroup, named in its output, is gone
        made = re.search(r"^cgroup (/\S+): tenants system.slice/\*.service$", out, re.MULTILINE)
        assert made is not None and made.group(1).startswith(find_mount() + "/bwdemo")
        assert not os.path.exists(made.group(1))
    leftovers = subprocess.run(
        ["pgrep", "-f", "import socket, sys"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout.strip() == ""
