"""Metrics: names, values, and `promtool check metrics` on exporter and textfile output."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from bwenforcer.cycle import CycleResult
from bwenforcer.executor import Outcome
from bwenforcer.metrics import AgentMetrics, write_textfile
from bwenforcer.model import State
from bwenforcer.planner import plan
from tests.kernel_helpers import bwenforcer_in
from tests.netns import Netns
from tests.planner_data import PARAMS, T0, desired, kslice, snapshot, want


def _result() -> CycleResult:
    p1 = plan(desired(want("pl_a", 10), want("pl_b", 11)), snapshot(), State(), PARAMS, T0)
    p2 = plan(
        desired(want("pl_a", 10), want("pl_b", 11)),
        snapshot(kslice(10, 900_000), kslice(11)),
        p1.state,
        PARAMS,
        T0 + 60,
    )
    counts = {"created": 0, "changed": 1, "removed": 0, "orphans_removed": 0, "adopted": 0}
    return CycleResult(T0 + 60, 0.042, p2, Outcome(p2.state, mails_sent=1, counts=counts))


def _promtool(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )


@pytest.fixture(autouse=True)
def _need_promtool() -> None:
    if shutil.which("promtool") is None:
        pytest.fail("promtool missing: install Debian's prometheus package (./dev does)")


def test_exposition_is_promtool_clean_and_has_per_slice_series() -> None:
    metrics = AgentMetrics()
    metrics.observe(_result())
    metrics.observe_error()
    text = generate_latest(metrics.registry()).decode()
    check = _promtool(text)
    assert check.returncode == 0 and check.stdout.strip() == "" and check.stderr.strip() == "", (
        check.stdout + check.stderr
    )
    assert 'bwenforcer_slice_capped{class="default",slice="pl_a",xid="10"} 1.0' in text
    assert 'bwenforcer_slice_capped{class="default",slice="pl_b",xid="11"} 0.0' in text
    assert 'bwenforcer_slice_used_bytes{class="default",slice="pl_a",xid="10"} 900000.0' in text
    assert 'bwenforcer_cycles_total{result="ok"} 1.0' in text
    assert 'bwenforcer_cycles_total{result="failed"} 1.0' in text
    assert 'bwenforcer_cycle_duration_seconds_bucket{le="0.05"} 1.0' in text
    assert 'bwenforcer_notifications_total{result="sent"} 1.0' in text
    assert "bwenforcer_classes_changed_total 1.0" in text
    assert 'bwenforcer_slices{state="live"} 2.0' in text
    assert "bwenforcer_last_success_timestamp_seconds 1.763800060042e+09" in text


def test_textfile_is_written_atomically_and_promtool_clean(tmp_path: Path) -> None:
    metrics = AgentMetrics()
    metrics.observe(_result())
    path = tmp_path / "bwenforcer.prom"
    write_textfile(str(path), metrics)
    assert [p.name for p in tmp_path.iterdir()] == ["bwenforcer.prom"]
    check = _promtool(path.read_text())
    assert check.returncode == 0 and check.stdout.strip() == "", check.stdout + check.stderr
    assert "bwenforcer_slice_ceil_bytes_per_second" in path.read_text()


def test_no_cycle_yet_still_exposes_valid_families() -> None:
    text = generate_latest(AgentMetrics().registry()).decode()
    assert _promtool(text).returncode == 0
    assert "# TYPE bwenforcer_slice_used_bytes gauge" in text


@pytest.mark.kernel
def test_cron_sync_writes_a_valid_textfile(ns: Netns, tmp_path: Path) -> None:
    (tmp_path / "slices.yaml").write_text(
        "slices:\n  - {name: pl_t, xid: 51, rspec: {net_thresh_kbyte: 0}}\n"
    )
    cfg = tmp_path / "c.yaml"
    prom = tmp_path / "textfile" / "bwenforcer.prom"
    prom.parent.mkdir()
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\nslices_file: {tmp_path}/slices.yaml\nmetrics: {{listen: null, textfile: {prom}}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    assert bwenforcer_in(ns, "--config", str(cfg), "sync").returncode == 0
    text = prom.read_text()
    assert 'bwenforcer_slice_capped{class="default",slice="pl_t",xid="51"} 1.0' in text
    assert _promtool(text).returncode == 0
    assert [p.name for p in prom.parent.iterdir()] == ["bwenforcer.prom"]  # written atomically
