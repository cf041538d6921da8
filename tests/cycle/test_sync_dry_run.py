"""`sync --dry-run` as cron would run it: it changes nothing and reports sync's status."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.kernel_helpers import bwenforcer_in
from tests.netns import Netns

pytestmark = pytest.mark.kernel

GOOD = "  - {name: pl_one, xid: 41, rspec: {net_thresh_kbyte: 0}}\n"
BAD = "  - {name: pl_bad, xid: 42, rspec: {net_max_rate: lots}}\n"


def _setup(tmp: Path) -> Path:
    (tmp / "slices.yaml").write_text("slices:\n" + GOOD)
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp}/state.json\n"
        f"slices_file: {tmp}/slices.yaml\nlock_timeout: 5s\n"
        f"metrics: {{listen: null, textfile: {tmp}/bwenforcer.prom}}\n"
    )
    return cfg


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and directory under ``root``: its mtime and its bytes."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, b"" if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def _sync(ns: Netns, cfg: Path, *args: str) -> tuple[int, str]:
    proc = bwenforcer_in(ns, "--config", str(cfg), "sync", *args)
    return proc.returncode, proc.stderr


def test_dry_run_writes_nothing_and_exits_like_sync(ns: Netns, tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    before = _snapshot(tmp_path)
    code, err = _sync(ns, cfg, "--dry-run")  # first run: no state, no slices cache
    assert code == 0, err
    assert _snapshot(tmp_path) == before

    assert _sync(ns, cfg) == (0, "")
    # a changed slices file with a bad slice: sync would parse it afresh and exit 1
    (tmp_path / "slices.yaml").write_text("slices:\n" + GOOD + BAD)
    before = _snapshot(tmp_path)
    code, err = _sync(ns, cfg, "--dry-run")
    assert code == 1, err
    assert "pl_bad" in err and "Traceback" not in err
    assert _snapshot(tmp_path) == before
    code, err = _sync(ns, cfg)
    assert code == 1 and "pl_bad" in err


def test_dry_run_leaves_a_corrupt_state_file_where_it_is(ns: Netns, tmp_path: Path) -> None:
    cfg = _setup(tmp_path)
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    assert _sync(ns, cfg)[0] == 0
    assert _sync(ns, cfg)[0] == 0  # a backup generation now exists
    (tmp_path / "state.json").write_text("{not json")
    before = _snapshot(tmp_path)
    code, err = _sync(ns, cfg, "--dry-run")
    assert code == 0, err
    assert _snapshot(tmp_path) == before  # a sync would move it aside; a dry run does not
