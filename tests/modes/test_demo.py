"""`bwenforcer demo` end to end: capped, mailed, released, and nothing left behind."""

from __future__ import annotations

import re
import subprocess

import pytest

from bwenforcer.kernel.sandbox import namespaces_named
from tests.kernel_helpers import VENV_BIN


def _demo_namespaces(out: str) -> list[str]:
    """The two namespaces this demo run says it made (another demo's are not ours)."""
    match = re.search(r"^namespaces (\S+) \(node, HTB on \S+\) and (\S+) \(far end\)$", out, re.M)
    assert match, out[:2000]
    return [match.group(1), match.group(2)]


@pytest.mark.kernel
def test_demo_caps_mails_releases_and_cleans_up() -> None:
    proc = subprocess.run(
        [str(VENV_BIN / "bwenforcer"), "demo"],
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "CAPPED" in out
    assert "✉ mail spooled" in out and "Subject: bwenforcer: slice demo_heavy capped" in out
    assert "cap lifted" in out
    assert "demo finished: heavy slice capped, mailed and released" in out
    for name in _demo_namespaces(out):
        assert name not in namespaces_named(name), f"{name} left behind"
        # its sinks and senders ran as `ip netns exec NAME …`: none may outlive it
        leftovers = subprocess.run(
            ["pgrep", "-f", f"netns exec {name} "], capture_output=True, text=True, check=False
        )
        assert leftovers.stdout.strip() == "", leftovers.stdout
