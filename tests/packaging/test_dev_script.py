"""``./dev``: each verb installs what it needs (Debian packages, the venv), and no more.

``dev`` runs apt-get, dpkg-query and python3: here it runs, copied into a scratch
directory, against stand-ins for those that record how they were called (a test
must not install Debian packages).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
"""
# python3 -m venv DIR: a venv whose pip and bwenforcer and python only record their calls
FAKE_PYTHON = """#!/bin/sh
echo "python3 $*" >> "{log}"
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin"
    for tool in pip bwenforcer python ruff lint-imports; do
        printf '#!/bin/sh\\necho "venv-%s $*" >> "{log}"\\n' "$tool" > "$3/bin/$tool"
        chmod +x "$3/bin/$tool"
    done
fi
"""


def _dev(tmp: Path, verb: str) -> list[str]:
    """Run a copy of ./dev VERB with every Debian package missing; the calls it made."""
    work, stubs, log = tmp / "checkout", tmp / "bin", tmp / "calls.log"
    work.mkdir()
    stubs.mkdir()
    for name in ("dev", "pyproject.toml"):
        shutil.copy2(TOP / name, work / name)
    for name, text in (
        ("apt-get", RECORDER),
        ("dpkg-query", RECORDER),  # prints no status: every package is missing
        ("python3", FAKE_PYTHON),
    ):
        (stubs / name).write_text(text.format(log=log))
        (stubs / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:/usr/bin:/bin"}
    done = subprocess.run(
        ["sh", str(work / "dev"), verb], env=env, capture_output=True, text=True, timeout=60,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return log.read_text().splitlines()


def _installed(calls: list[str]) -> tuple[set[str], list[str]]:
    apt = next(c for c in calls if c.startswith("apt-get install"))
    pip = [c for c in calls if c.startswith("venv-pip install") and "--upgrade" not in c]
    return {w for w in apt.split() if not w.startswith("-")} - {"apt-get", "install"}, pip


@pytest.mark.skipif(os.geteuid() != 0, reason="dev installs Debian packages only as root")
def test_dev_demo_installs_what_the_demo_needs_and_no_more(tmp_path: Path) -> None:
    calls = _dev(tmp_path, "demo")
    apt, pip = _installed(calls)
    assert {"iproute2", "nftables", "python3-venv"} <= apt
    assert not apt & {"prometheus", "systemd", "dpkg-dev"}, apt
    assert pip == ["venv-pip install -q -e ."]  # no test extras
    assert calls[-1] == "venv-bwenforcer demo"


@pytest.mark.skipif(os.geteuid() != 0, reason="dev installs Debian packages only as root")
def test_dev_test_installs_everything_the_tests_need(tmp_path: Path) -> None:
    calls = _dev(tmp_path, "test")
    apt, pip = _installed(calls)
    assert {"iproute2", "nftables", "python3-venv", "prometheus", "systemd", "dpkg-dev"} <= apt
    assert pip == ["venv-pip install -q -e .[test]"]
    assert calls[-1] == "venv-python -m pytest"
