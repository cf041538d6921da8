"""Throwaway cgroups for kernel tests: a test-only parent in the cgroup v2 tree.

Each parent carries the run's unique prefix and is removed on every exit path
(deepest first, any process left inside killed); the session end checks that
none survived. Tenant patterns in the tests match below the parent, so the
host's own slices, services and scopes are never looked at or touched.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from bwenforcer.errors import ConfigError
from bwenforcer.inputs.cgroups import find_mount
from tests.netns import RUN_PREFIX

_counter = itertools.count()


def v2_mount() -> Path:
    """The cgroup v2 mount of this machine (unified or hybrid layout)."""
    return Path(find_mount())


def remove_cgroup_tree(path: Path) -> None:
    """Remove ``path`` and every cgroup below it, killing what is still inside."""
    if not path.is_dir():
        return
    for here, dirs, _files in os.walk(path, topdown=False):
        del dirs
        cg = Path(here)
        for _ in range(50):
            try:
                pids = [int(p) for p in (cg / "cgroup.procs").read_text().split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                cg.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.05)  # a killed process leaves its cgroup when reaped


@contextlib.contextmanager
def cgroup_parent(tag: str = "cg") -> Iterator[Path]:
    """A fresh cgroup directly below the v2 mount, removed with its subtree afterwards."""
    path = v2_mount() / f"{RUN_PREFIX}-{tag}{next(_counter)}"
    path.mkdir()
    try:
        yield path
    finally:
        remove_cgroup_tree(path)


def leftover_cgroups() -> list[str]:
    """Test parents of this run that still exist (should be none)."""
    try:
        return [p.name for p in v2_mount().iterdir() if p.name.startswith(RUN_PREFIX)]
    except (ConfigError, OSError):  # no cgroup v2 tree here: nothing can be left over
        return []
