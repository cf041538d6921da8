"""Issue 3's must-show: killing `sync` at any point never leaves a state that fails `state check`."""

from __future__ import annotations

import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel_helpers import VENV_BIN, bwenforcer_in
from tests.netns import Netns

pytestmark = pytest.mark.kernel


def test_sync_killed_at_random_points_leaves_a_sound_state(ns: Netns, tmp_path: Path) -> None:
    slices = "\n".join(
        f"  - {{name: s{x}, xid: {x}, rspec: {{net_thresh_kbyte: 0}}}}" for x in range(1, 601)
    )
    (tmp_path / "slices.yaml").write_text("slices:\n" + slices + "\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 100mbit\nstate_file: {tmp_path}/state.json\nslices_file: {tmp_path}/slices.yaml\nmetrics: {{listen: null}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
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
    for _ in range(15):
        proc = subprocess.Popen(sync, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.2, 1.0) * whole_s)
        if proc.poll() is None:
            proc.kill()
            killed += 1
        proc.wait(timeout=30)
        check = bwenforcer_in(ns, "--config", str(cfg), "state", "check")
        assert check.returncode == 0, check.stdout + check.stderr
    assert killed >= 5  # most runs were really cut short
    final = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert final.returncode == 0, final.stderr
