"""The daemon in a namespace: scraped over HTTP (and by a real Prometheus), reloaded, stopped."""

from __future__ import annotations

import gc
import json
import logging
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import pytest

from bwenforcer.inputs.config import load_config
from bwenforcer.modes.daemon import Daemon
from bwenforcer.modes.traffic import system_python
from bwenforcer.store.state import StateStore
from tests.kernel_helpers import VENV_BIN, bwenforcer_in
from tests.loopback import free_port
from tests.modes.test_nodemanager import _GcRecordingAgent
from tests.netns import Netns

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


def _config(tmp: Path, port: int) -> Path:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        "  - {name: pl_capped, xid: 31, rspec: {net_thresh_kbyte: 0}}\n"
        "  - {name: pl_fine, xid: 32, rspec: {}}\n"
    )
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\ninterval: 1s\nlock_timeout: 1s\nstate_file: {tmp}/state.json\n"
        f"slices_file: {tmp}/slices.yaml\nmetrics: {{listen: '127.0.0.1:{port}'}}\n"
    )
    return cfg


def _fetch(ns: Netns, url: str) -> str:
    return ns.run(system_python(), "-c", FETCH, url, timeout=10).stdout


def _wait_for(ns: Netns, url: str, needle: str, seconds: float = 15) -> str:
    """Poll ``url`` until its body matches the regular expression ``needle``."""
    deadline = time.monotonic() + seconds
    while True:
        proc = ns.run(system_python(), "-c", FETCH, url, check=False, timeout=10)
        if proc.returncode == 0 and re.search(needle, proc.stdout):
            return proc.stdout
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{needle!r} not at {url}: {proc.stdout[-500:]}{proc.stderr[-500:]}"
            )
        time.sleep(0.3)


def _ok_cycles(text: str) -> float:
    found = re.search(r'^bwenforcer_cycles_total\{result="ok"\} (\S+)$', text, re.MULTILINE)
    assert found, text[-500:]
    return float(found.group(1))


def _start(ns: Netns, cfg: Path) -> subprocess.Popen[bytes]:
    """The daemon, logging at info level to ``daemon.log`` beside its config."""
    with (cfg.parent / "daemon.log").open("wb") as log:
        return subprocess.Popen(
            ["ip", "netns", "exec", ns.name, str(VENV_BIN / "bwenforcer"), "--config", str(cfg), "--log-level", "info", "daemon"],
            stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip


@pytest.mark.kernel
def test_daemon_scraped_reloaded_and_stopped(ns: Netns, tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    url = f"http://127.0.0.1:{port}/metrics"
    cron = ExitStack()  # the state lock, held as a cron sync would hold it
    cron.enter_context(StateStore(str(tmp_path / "state.json")).lock(timeout_s=5))
    daemon = _start(ns, cfg)
    try:
        _wait_for(ns, url, r'bwenforcer_cycles_total\{result="skipped"\} [1-9]')
        cron.close()
        text = _wait_for(
            ns,
            url,
            re.escape('bwenforcer_slice_capped{class="default",slice="pl_capped",xid="31"} 1.0'),
        )
        assert 'bwenforcer_slice_capped{class="default",slice="pl_fine",xid="32"} 0.0' in text
        good = cfg.read_text()
        cfg.write_text(good + "bogus_key: 1\n")
        daemon.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while "config reload refused" not in (tmp_path / "daemon.log").read_text():
            assert time.monotonic() < deadline, "SIGHUP never handled"
            time.sleep(0.1)
        ok_before = _ok_cycles(_fetch(ns, url))
        deadline = time.monotonic() + 15
        while _ok_cycles(_fetch(ns, url)) <= ok_before:  # still cycling on the old config
            assert time.monotonic() < deadline, "no cycle after the refused reload"
            time.sleep(0.2)
        assert daemon.poll() is None
        cfg.write_text(good)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        cron.close()
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(timeout=10)
    err = (tmp_path / "daemon.log").read_text()
    assert "config reload refused" in err and "bogus_key: unknown key" in err
    assert "cycle skipped" in err and "SIGHUP: reloading" in err
    assert "daemon stopped by SIGTERM" in err
    check = bwenforcer_in(ns, "--config", str(cfg), "state", "check")
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.kernel
def test_real_prometheus_scrapes_the_daemon(ns: Netns, tmp_path: Path) -> None:
    if subprocess.run(["which", "prometheus"], capture_output=True, check=False).returncode != 0:
        pytest.fail("prometheus missing: install Debian's prometheus package (./dev does)")
    port, prom_port = free_port(), free_port()
    cfg = _config(tmp_path, port)
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: bwenforcer\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n"
    )
    daemon = _start(ns, cfg)
    prom = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "prometheus", f"--config.file={tmp_path}/prometheus.yml",
         f"--storage.tsdb.path={tmp_path}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        query = f"http://127.0.0.1:{prom_port}/api/v1/query?query=bwenforcer_slice_capped%7Bslice%3D%22pl_capped%22%2Cclass%3D%22default%22%7D"
        deadline = time.monotonic() + 40
        result: list[dict] = []
        while time.monotonic() < deadline and not result:
            proc = ns.run(system_python(), "-c", FETCH, query, check=False, timeout=10)
            if proc.returncode == 0:
                result = json.loads(proc.stdout)["data"]["result"]
            if not result:
                time.sleep(1)
        assert result, "Prometheus never returned the per-slice series"
        assert result[0]["metric"]["slice"] == "pl_capped"
        assert result[0]["value"][1] == "1"
    finally:
        for proc in (prom, daemon):
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def test_reload_moves_the_endpoint_and_refuses_a_bad_config(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port_a, port_b = free_port(), free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"interval: 5s\nmetrics: {{listen: '127.0.0.1:{port_a}'}}\n")
    daemon = Daemon(str(cfg), load_config(str(cfg)))
    daemon.start_metrics()
    try:
        assert "bwenforcer_cycles_total" in _scrape(port_a)
        cfg.write_text("interval: 0s\n")
        with caplog.at_level(logging.ERROR):
            daemon.reload()
        assert "config reload refused, keeping the old config" in caplog.text
        assert daemon.config.interval_s == 5
        assert "bwenforcer_cycles_total" in _scrape(port_a)
        cfg.write_text(f"interval: 7s\nmetrics: {{listen: '127.0.0.1:{port_b}'}}\n")
        daemon.reload()
        assert daemon.config.interval_s == 7
        assert "bwenforcer_cycles_total" in _scrape(port_b)
        with pytest.raises(urllib.error.URLError):
            _scrape(port_a)
    finally:
        daemon.stop_metrics()


def test_a_daemon_whose_port_is_taken_exits_with_one_line_before_any_cycle(
    tmp_path: Path,
) -> None:
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nstate_file: {tmp_path}/state.json\nslices_file: null\n"
        f"metrics: {{listen: '127.0.0.1:{port}'}}\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = subprocess.run(
            [str(VENV_BIN / "bwenforcer"), "--config", str(cfg), "daemon"],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
    assert (proc.returncode, proc.stderr) == (
        6,
        f"bwenforcer: metrics: cannot listen on 127.0.0.1:{port}: Address already in use\n",
    )
    assert not (tmp_path / "state.json").exists()  # no cycle ran


@pytest.mark.kernel
def test_the_daemon_pauses_its_own_garbage_collector_for_a_cycle(ns: Netns, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/state.json\n"
        "slices_file: null\nmetrics: {listen: null}\n"
    )
    config = load_config(str(cfg))
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    agent = _GcRecordingAgent(config, netns=ns.name)
    daemon = Daemon(None, config, agent=agent)
    assert gc.isenabled()
    try:
        daemon.run_once()
    finally:
        daemon.close_agent()
    assert daemon.metrics.snapshot().cycles["ok"] == 1
    assert agent.gc_enabled and not any(agent.gc_enabled)  # paused during the cycle
    assert gc.isenabled()  # and on again after it
