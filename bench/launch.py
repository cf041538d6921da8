"""Wall time and peak RSS of a whole command, measured from a small process of its own.

Linux carries a process's peak RSS across exec, so a child forked straight from
the (large) benchmark would report the benchmark's size, not its own: the
command runs under a launcher started with ``-I -S``, which reports its child's.
"""

from __future__ import annotations

import subprocess
import sys

_LAUNCHER = """
import resource, subprocess, sys, time
start = time.perf_counter()
proc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
wall = time.perf_counter() - start
sys.stderr.write(proc.stderr.decode(errors="replace")[-500:])
print(proc.returncode, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def launched(cmd: list[str]) -> tuple[int, float, int, str]:
    """``cmd``'s exit code, wall time (s), peak RSS (KiB) and the end of its stderr."""
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", _LAUNCHER, *cmd],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    rc, wall, rss_kib = proc.stdout.split()
    return int(rc), float(wall), int(rss_kib), proc.stderr
