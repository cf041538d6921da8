"""Killing `sync` at any point never leaves a state that fails `state check`,
nor a usage history that disagrees with the state.
"""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from bwenforcer.history.reader import read_history
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import VENV_BIN, bwenforcer_in, mark_all_to
from tests.netns import Netns

pytestmark = pytest.mark.kernel


def test_sync_killed_at_random_points_leaves_a_sound_state(ns: Netns, tmp_path: Path) -> None:
    slices = "\n".join(
        f"  - {{name: s{x}, xid: {x}, rspec: {{net_thresh_kbyte: 0}}}}" for x in range(2, 601)
    )  # s1 (below) is not capped: its traffic goes out at once
    (tmp_path / "slices.yaml").write_text("slices:\n  - {name: s1, xid: 1}\n" + slices + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 100mbit\nstate_file: {tmp_path}/state.json\nslices_file: {tmp_path}/slices.yaml\nvanish_grace: 0s\nmetrics: {{listen: null}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    # Traffic of slice s1 out of v0 (to a neighbour that never answers), so that the
    # history has bytes to lose.
    ns.ip("addr", "add", "10.9.0.1/24", "dev", "v0")
    ns.ip("neigh", "add", "10.9.0.2", "lladdr", "02:00:00:00:00:02", "dev", "v0")
    mark_all_to(ns, "10.9.0.2", 0x1001)
    burst = [
        str(VENV_BIN / "python"),
        "-c",
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for _ in range(40): s.sendto(bytes(1000), ('10.9.0.2', 9))",
    ]
    sync = [
        "ip",
        "netns",
        "exec",
        ns.name,
        str(VENV_BIN / "bwenforcer"),
        "--config",
        str(cfg),
        "sync",
    ]
    start = time.monotonic()
    assert subprocess.run([*sync, "--dry-run"], capture_output=True, check=False).returncode == 0
    whole_s = time.monotonic() - start  # about a run's length: the kills land all along it
    rng = random.Random(7)
    killed = 0

    def killed_runs(n: int) -> None:
        nonlocal killed
        for _ in range(n):
            # runs follow each other closely, often in the second of the last save: the
            # journal tells an unsaved cycle's record by its cycle's number, not the clock
            proc = subprocess.Popen(sync, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, 1.0) * whole_s)
            if proc.poll() is None:
                proc.kill()
                killed += 1
            proc.wait(timeout=30)
            check = bwenforcer_in(ns, "--config", str(cfg), "state", "check")
            assert check.returncode == 0, check.stdout + check.stderr
            ns.run(*burst, timeout=30)  # counted by the next run that gets through

    killed_runs(15)  # the first runs, creating 600 slices
    assert killed >= 5  # most runs were really cut short
    final = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert final.returncode == 0, final.stderr
    state = StateStore(f"{tmp_path}/state.json")
    counted = state.load().state.slices[1].default.used_bytes
    killed_runs(15)  # steady runs, with a state to count from
    final = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert final.returncode == 0, final.stderr
    used = state.load().state.slices[1].default.used_bytes
    assert used >= counted + 14 * 40 * 1000  # every burst counted once in the state...
    rows = read_history(f"{tmp_path}/state.json.history").report("day", None, "s1")
    assert sum(r.default_bytes for r in rows) == used  # ...and once in the history
