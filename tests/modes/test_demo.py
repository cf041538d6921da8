"""`bwenforcer demo` end to end: capped, mailed, released, and nothing left behind.

Other demos may run on the machine meanwhile (other checkouts' test runs): what
is checked to be gone is what this demo made, as its output names it.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading

import pytest

from bwenforcer.inputs.cgroups import find_mount
from tests.kernel_helpers import VENV_BIN

_NAMESPACES = re.compile(r"^namespaces (\S+) \(node, HTB on va\) and (\S+) \(far end\)$", re.M)


def _namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.startswith("bwdemo")}


def _net_inodes(names: tuple[str, ...]) -> set[int]:
    return {os.stat(f"/run/netns/{name}").st_ino for name in names}


def _generators_in(inodes: set[int]) -> list[int]:
    """Traffic generators whose network namespace is one of ``inodes``."""
    pids = subprocess.run(
        ["pgrep", "-f", "import socket, sys"], capture_output=True, text=True, check=False
    ).stdout.split()
    found = []
    for pid in pids:
        try:
            if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                found.append(int(pid))
        except OSError:
            continue  # ended meanwhile
    return found


@pytest.mark.kernel
@pytest.mark.parametrize("mode", ["uid", "cgroup"])
def test_demo_caps_mails_releases_and_cleans_up(mode: str) -> None:
    proc = subprocess.Popen(
        [str(VENV_BIN / "bwenforcer"), "demo", "--mode", mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = threading.Timer(170, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        named = _NAMESPACES.match(first.strip())
        assert named is not None, first
        ours = named.groups()
        inodes = _net_inodes(ours)  # while they exist: to find what runs in them later
        out = first + proc.stdout.read()
        proc.wait(timeout=10)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, out[-4000:]
    assert "CAPPED" in out
    unit = " (heavy.service)" if mode == "cgroup" else ""  # a cgroup tenant: by its unit
    assert "✉ mail spooled" in out and f"Subject: bwenforcer: slice demo_heavy{unit} capped" in out
    assert "cap lifted" in out
    assert "demo finished: heavy slice capped, mailed and released" in out
    if mode == "uid":  # a slice capped on its downloads, by its inbound limit
        assert "demo_down past its threshold on downloads: limited to" in out
        assert "the download slice limited" in out
        assert re.search(r"demo_down +default +received .* CAPPED", out)
    assert not set(ours) & _namespaces()
    if mode == "cgroup":  # the demo's own cgroup, named in its output, is gone
        made = re.search(r"^cgroup (/\S+): tenants system.slice/\*.service$", out, re.MULTILINE)
        assert made is not None, out[:400]
        assert made.group(1).startswith(find_mount() + "/bwdemo")
        assert not os.path.exists(made.group(1))
    assert _generators_in(inodes) == []
