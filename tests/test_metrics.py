"""Metrics: names, values, and `promtool check metrics` on exporter and textfile output."""

from __future__ import annotations

import logging
import shutil
import socket
import stat
import subprocess
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from bwenforcer.cycle import CycleResult
from bwenforcer.errors import MetricsError
from bwenforcer.executor import Outcome
from bwenforcer.metrics import AgentMetrics, from_textfile, serve, write_textfile
from bwenforcer.model import State
from bwenforcer.planner import plan
from tests.kernel_helpers import bwenforcer_in
from tests.loopback import free_port
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


def _counter_lines(text: str) -> list[str]:
    """Every sample line except the per-slice ones (which only the latest cycle has)."""
    return sorted(
        line
        for line in text.splitlines()
        if line.startswith("bwenforcer_") and 'slice="' not in line and "_slices{" not in line
    )


def test_cron_runs_carry_counters_forward_through_the_textfile(tmp_path: Path) -> None:
    path = str(tmp_path / "bwenforcer.prom")
    for _ in range(3):  # three `sync` processes, each starting from the file
        metrics = from_textfile(path)
        metrics.observe(_result())
        write_textfile(path, metrics)
    text = Path(path).read_text()
    assert 'bwenforcer_cycles_total{result="ok"} 3.0' in text
    assert "bwenforcer_classes_changed_total 3.0" in text
    assert 'bwenforcer_notifications_total{result="sent"} 3.0' in text
    assert "bwenforcer_cycle_duration_seconds_count 3.0" in text
    assert 'bwenforcer_cycle_duration_seconds_bucket{le="0.025"} 0.0' in text
    assert 'bwenforcer_cycle_duration_seconds_bucket{le="0.05"} 3.0' in text
    assert _promtool(text).returncode == 0


def test_a_garbled_textfile_restarts_the_counters_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "bwenforcer.prom"
    path.write_text("bwenforcer_cycles_total{result=ok 3\n")
    with caplog.at_level(logging.WARNING):
        metrics = from_textfile(str(path))
    assert "garbled, counters restart" in caplog.text
    text = generate_latest(metrics.registry()).decode()
    assert 'bwenforcer_cycles_total{result="ok"} 0.0' in text


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ok", "error", "skipped"]),
            st.floats(min_value=0, max_value=100, allow_nan=False),
            st.integers(min_value=0, max_value=5000),
        ),
        max_size=8,
    )
)
def test_restoring_an_exposition_reproduces_every_counter(
    events: list[tuple[str, float, int]],
) -> None:
    metrics = AgentMetrics()
    base = _result()
    for kind, duration_s, changed in events:
        if kind == "error":
            metrics.observe_error()
        elif kind == "skipped":
            metrics.observe_skipped()
        else:
            assert base.outcome is not None
            outcome = replace(base.outcome, counts={**base.outcome.counts, "changed": changed})
            metrics.observe(replace(base, duration_s=duration_s, outcome=outcome))
    text = generate_latest(metrics.registry()).decode()
    restored = AgentMetrics()
    restored.restore(text)
    by_line = AgentMetrics()
    by_line.restore(text.splitlines(keepends=True))  # as read from a file
    assert _counter_lines(generate_latest(by_line.registry()).decode()) == _counter_lines(text)
    assert _counter_lines(generate_latest(restored.registry()).decode()) == _counter_lines(text)


def test_textfile_in_a_missing_directory_is_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(MetricsError) as caught:
        write_textfile(str(tmp_path / "nope" / "bwenforcer.prom"), AgentMetrics())
    assert str(caught.value).startswith(f"metrics textfile {tmp_path}/nope/bwenforcer.prom: ")
    assert "\n" not in str(caught.value)


def test_served_over_http_then_stopped_and_a_busy_port_is_refused() -> None:
    metrics = AgentMetrics()
    metrics.observe(_result())
    port = free_port()
    stop = serve(f"127.0.0.1:{port}", metrics)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200
            body = reply.read().decode()
        assert 'bwenforcer_slice_capped{class="default",slice="pl_a",xid="10"} 1.0' in body
        with pytest.raises(MetricsError, match=f"cannot listen on 127.0.0.1:{port}"):
            serve(f"127.0.0.1:{port}", metrics)
    finally:
        stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


def test_served_on_ipv6_loopback() -> None:
    if not socket.has_ipv6 or not Path("/proc/net/if_inet6").exists():
        pytest.skip("no IPv6 in this kernel")
    port = free_port()
    stop = serve(f"[::1]:{port}", AgentMetrics())
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/metrics", timeout=5) as reply:
            assert "bwenforcer_cycles_total" in reply.read().decode()
    finally:
        stop()


def test_four_thousand_slices_render_every_series_once() -> None:
    wanted = desired(*(want(f"pl_{xid}", xid) for xid in range(1, 4001)))
    result = CycleResult(T0, 1.5, plan(wanted, snapshot(), State(), PARAMS, T0), None)
    metrics = AgentMetrics()
    metrics.observe(result)
    lines = generate_latest(metrics.registry()).decode().splitlines()
    per_slice = [line for line in lines if line.startswith("bwenforcer_slice_") and "{" in line]
    assert len(per_slice) == 4000 * 2 * 7
    assert len(set(per_slice)) == len(per_slice)
    assert 'bwenforcer_slices{state="live"} 4000.0' in lines


def test_resets_made_by_the_cli_show_as_a_counter() -> None:
    import dataclasses

    result = _result()
    result = dataclasses.replace(
        result,
        plan=dataclasses.replace(
            result.plan, state=dataclasses.replace(result.plan.state, resets=3)
        ),
    )
    metrics = AgentMetrics()
    metrics.observe(result)
    assert "bwenforcer_resets_total 3.0" in generate_latest(metrics.registry()).decode()


def test_exposition_is_exactly_what_prometheus_client_writes_for_the_same_families() -> None:
    """The endpoint and the textfile are written directly; the registry is the reference."""
    cases = [AgentMetrics()]
    metrics = AgentMetrics()
    metrics.observe(_result())
    metrics.observe_error()
    metrics.observe_skipped()
    cases.append(metrics)
    odd = desired(want('pl_"odd\\name', 12), *(want(f"pl_{xid}", xid) for xid in range(1, 4001)))
    big = AgentMetrics()
    big.observe(CycleResult(T0, 1.5, plan(odd, snapshot(), State(), PARAMS, T0), None))
    cases.append(big)
    for case in cases:
        assert case.exposition() == generate_latest(case.registry()).decode()


def test_textfile_is_readable_by_node_exporter_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "bwenforcer.prom"
    (tmp_path / "bwenforcer.prom.tmp-999999").write_text("left by a killed run")
    write_textfile(str(path), AgentMetrics())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bwenforcer.prom"]
