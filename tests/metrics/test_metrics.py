"""Metrics: names, values, and `promtool check metrics` on exporter and textfile output."""

from __future__ import annotations

import logging
import shutil
import socket
import stat
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from bwenforcer.core.model import State
from bwenforcer.core.planner import plan
from bwenforcer.cycle.executor import Outcome
from bwenforcer.cycle.run import CycleResult
from bwenforcer.errors import MetricsError, MetricsListenError
from bwenforcer.metrics.collector import AgentMetrics, Snapshot
from bwenforcer.metrics.exposition import (
    exposition,
    from_textfile,
    restore,
    write_textfile,
)
from bwenforcer.metrics.server import serve
from tests.kernel_helpers import bwenforcer_in
from tests.loopback import free_port
from tests.netns import Netns
from tests.planner_data import PARAMS, PERIOD_S, T0, desired, kslice, snapshot, want


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


@pytest.mark.kernel
def test_a_textfile_that_cannot_be_written_is_a_partial_cycle_not_an_unusable_state(
    ns: Netns, tmp_path: Path
) -> None:
    (tmp_path / "slices.yaml").write_text("slices:\n  - {name: pl_t, xid: 51}\n")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    textfile.chmod(0o777)  # others could plant files, no sticky bit: refused
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\n"
        f"slices_file: {tmp_path}/slices.yaml\n"
        f"metrics: {{listen: null, textfile: {textfile}/bwenforcer.prom}}\n"
    )
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    done = bwenforcer_in(ns, "--config", str(cfg), "sync")
    assert done.returncode == 1, done.stderr  # the cycle completed: not 5, state unusable
    errors = [line for line in done.stderr.splitlines() if "metrics" in line]
    assert len(errors) == 1 and "refused: writable by others" in errors[0], done.stderr
    assert done.stdout.startswith("sync partial") and "1 failure(s)" in done.stdout
    assert (tmp_path / "s.json").exists() and list(textfile.iterdir()) == []


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
    restore(restored, text)
    by_line = AgentMetrics()
    restore(by_line, text.splitlines(keepends=True))  # as read from a file
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
    assert len(per_slice) == 4000 * 2 * 10
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
        assert exposition(case) == generate_latest(case.registry()).decode()


def test_textfile_is_readable_by_node_exporter_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "bwenforcer.prom"
    (tmp_path / "bwenforcer.prom.tmp-999999").write_text("left by a killed run")
    write_textfile(str(path), AgentMetrics())
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bwenforcer.prom"]


# --- the HTTP endpoint under load: bounded threads, timeouts, methods -------------------


def _exchange(port: int, request: bytes) -> tuple[bytes, dict[str, str], bytes]:
    """Send a raw request; the status line, headers and body the server sent before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = dict(line.decode().split(": ", 1) for line in lines)
    return status, headers, body


def test_only_get_and_head_of_slash_metrics_are_served() -> None:
    metrics = AgentMetrics()
    metrics.observe(_result())
    port = free_port()
    stop = serve(f"127.0.0.1:{port}", metrics)
    try:
        status, headers, body = _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 200 OK"
        assert body.decode() == exposition(metrics)
        assert int(headers["Content-Length"]) == len(body)
        status, headers, body = _exchange(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body) == (b"HTTP/1.1 200 OK", b"")
        assert int(headers["Content-Length"]) == len(exposition(metrics).encode())
        status, headers, _ = _exchange(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 405 Method Not Allowed"
        assert headers["Allow"] == "GET, HEAD"
        status, _, _ = _exchange(port, b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 404 Not Found"
        status, _, _ = _exchange(port, b"GET /metrics?x=1 HTTP/1.0\n\n")
        assert status == b"HTTP/1.1 200 OK"
        status, _, _ = _exchange(port, b"garbage\r\n\r\n")
        assert status == b"HTTP/1.1 400 Bad Request"
        status, _, _ = _exchange(port, b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 10_000)
        assert status == b"HTTP/1.1 431 Request Header Fields Too Large"
    finally:
        stop()


def test_idle_connections_cost_no_thread_and_a_scrape_still_works() -> None:
    port = free_port()
    before = threading.active_count()
    stop = serve(f"127.0.0.1:{port}", AgentMetrics(), timeout_s=600)
    idle = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
    try:
        for sock in idle[:25]:
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a request, never finished
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert reply.status == 200 and b"bwenforcer_cycles_total" in reply.read()
        assert threading.active_count() == before + 1
    finally:
        for sock in idle:
            sock.close()
        stop()
    assert threading.active_count() == before


def test_a_silent_connection_is_closed_after_the_timeout() -> None:
    port = free_port()
    stop = serve(f"127.0.0.1:{port}", AgentMetrics(), timeout_s=0.2)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as silent:
            assert silent.recv(1) == b""  # closed by the server, nothing sent
        with socket.create_connection(("127.0.0.1", port), timeout=30) as slow:
            slow.sendall(b"GET /metr")
            assert slow.recv(1) == b""
    finally:
        stop()


def test_beyond_max_connections_the_longest_idle_one_is_closed() -> None:
    port = free_port()
    stop = serve(f"127.0.0.1:{port}", AgentMetrics(), timeout_s=600, max_connections=4)
    idle: list[socket.socket] = []
    try:
        for _ in range(4):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=30))
            # a scrape in between: each idle connection is accepted before the next
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                assert reply.status == 200
        assert idle[0].recv(1) == b""  # the 4th scrape made room by closing the oldest
        idle[1].settimeout(0.01)
        with pytest.raises(TimeoutError):  # the others are still open
            idle[1].recv(1)
    finally:
        for sock in idle:
            sock.close()
        stop()


def test_a_busy_port_is_one_line_naming_the_address() -> None:
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(MetricsListenError) as caught:
            serve(f"127.0.0.1:{port}", AgentMetrics())
    assert (
        str(caught.value) == f"metrics: cannot listen on 127.0.0.1:{port}: Address already in use"
    )
    with pytest.raises(MetricsListenError) as caught:
        serve("127.0.0.1:http", AgentMetrics())
    assert (
        str(caught.value) == "metrics: cannot listen on 127.0.0.1:http: port 'http' is not a number"
    )


class _FailingMetrics(AgentMetrics):
    """Metrics whose page fails while ``failing`` is set (a bug no real cycle can make)."""

    def __init__(self) -> None:
        super().__init__()
        self.failing = True

    def snapshot(self) -> Snapshot:
        if self.failing:
            raise RuntimeError("injected page failure")
        return super().snapshot()


def test_a_page_that_fails_is_a_500_logged_once_and_the_server_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = _FailingMetrics()
    port = free_port()
    stop = serve(f"127.0.0.1:{port}", metrics)
    try:
        with caplog.at_level(logging.ERROR):
            for _ in range(3):
                status, _, body = _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                assert status == b"HTTP/1.1 500 Internal Server Error"
                assert b"injected" not in body  # the cause is in the log, not on the wire
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "injected page failure" in errors[0].getMessage()
        assert errors[0].exc_info is not None  # a bug: its traceback is in the log
        metrics.failing = False
        status, _, body = _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == b"HTTP/1.1 200 OK" and b"bwenforcer_cycles_total" in body
    finally:
        stop()


def test_cgroup_tenants_are_named_by_their_unit_in_an_info_gauge(tmp_path: Path) -> None:
    metrics = AgentMetrics()
    metrics.observe(replace(_result(), units={"pl_a": "a.service", "gone": "gone.scope"}))
    text = generate_latest(metrics.registry()).decode()
    assert 'bwenforcer_slice_unit_info{slice="pl_a",unit="a.service"} 1.0' in text
    assert "gone.scope" not in text and 'slice="pl_b",unit' not in text  # live tenants only
    assert exposition(metrics) == text
    check = _promtool(text)
    assert check.returncode == 0 and check.stdout.strip() == "", check.stdout + check.stderr
    plain = AgentMetrics()
    plain.observe(_result())
    assert "unit_info" not in exposition(plain)  # no cgroup tenants, no family


def test_grants_in_force_are_a_gauge_per_class_and_counted() -> None:
    from bwenforcer.core.model import AuditEntry

    wanted = desired(want("pl_a", 1), want("pl_b", 2))
    first = plan(wanted, snapshot(kslice(1), kslice(2)), State(), PARAMS, T0)
    audit = (
        AuditEntry("grant", "pl_a", "exempt", 5_000, "alice", T0, T0 + 600, "why"),
        AuditEntry("grant", "pl_a", "exempt", 2_000, "bob", T0, T0 + 600),
        AuditEntry("grant", "pl_b", "default", 9_000, "alice", T0 - 900, T0 - 1),  # ended
        AuditEntry("reset", "pl_b", "default", 7, "alice", T0, T0),
    )
    state = replace(first.state, audit=audit, grants=3)
    second = plan(wanted, snapshot(kslice(1), kslice(2)), state, PARAMS, T0 + 60)
    metrics = AgentMetrics()
    metrics.observe(CycleResult(T0 + 60, 0.1, second, None))
    lines = generate_latest(metrics.registry()).decode().splitlines()
    granted = {line for line in lines if line.startswith("bwenforcer_slice_granted_bytes{")}
    assert granted == {
        'bwenforcer_slice_granted_bytes{class="default",slice="pl_a",xid="1"} 0.0',
        'bwenforcer_slice_granted_bytes{class="exempt",slice="pl_a",xid="1"} 7000.0',
        'bwenforcer_slice_granted_bytes{class="default",slice="pl_b",xid="2"} 0.0',
        'bwenforcer_slice_granted_bytes{class="exempt",slice="pl_b",xid="2"} 0.0',
    }
    assert "bwenforcer_grants_total 3.0" in lines


def test_carried_bytes_are_a_gauge_per_class() -> None:
    rolling = want("pl_a", 1)
    rolling = replace(rolling, default=replace(rolling.default, rollover_bytes=400_000))
    wanted = desired(rolling, want("pl_b", 2))
    first = plan(wanted, snapshot(kslice(1), kslice(2)), State(), PARAMS, T0)
    used = plan(wanted, snapshot(kslice(1, 700_000), kslice(2)), first.state, PARAMS, T0 + 60)
    later = T0 + PERIOD_S + 60  # the next period: 300 kB unused of pl_a's 1 MB roll over
    second = plan(wanted, snapshot(kslice(1, 700_000), kslice(2)), used.state, PARAMS, later)
    metrics = AgentMetrics()
    metrics.observe(CycleResult(later, 0.1, second, None))
    lines = generate_latest(metrics.registry()).decode().splitlines()
    carried = {line for line in lines if line.startswith("bwenforcer_slice_carried_bytes{")}
    assert carried == {
        'bwenforcer_slice_carried_bytes{class="default",slice="pl_a",xid="1"} 300000.0',
        'bwenforcer_slice_carried_bytes{class="exempt",slice="pl_a",xid="1"} 0.0',
        'bwenforcer_slice_carried_bytes{class="default",slice="pl_b",xid="2"} 0.0',
        'bwenforcer_slice_carried_bytes{class="exempt",slice="pl_b",xid="2"} 0.0',
    }
