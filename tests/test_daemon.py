"""The daemon in a namespace: scraped over HTTP (and by a real Prometheus), reloaded, stopped."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bwenforcer.traffic import system_python
from tests.kernel_helpers import VENV_BIN, bwenforcer_in
from tests.netns import Netns
from tests.test_mail import free_port

pytestmark = pytest.mark.kernel

FETCH = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"


def _config(tmp: Path, port: int) -> Path:
    (tmp / "slices.yaml").write_text(
        "slices:\n"
        "  - {name: pl_capped, xid: 31, rspec: {net_thresh_kbyte: 0}}\n"
        "  - {name: pl_fine, xid: 32, rspec: {}}\n"
    )
    cfg = tmp / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\ninterval: 1s\nstate_file: {tmp}/state.json\n"
        f"slices_file: {tmp}/slices.yaml\nmetrics: {{listen: '127.0.0.1:{port}'}}\n"
    )
    return cfg


def _fetch(ns: Netns, url: str) -> str:
    return ns.run(system_python(), "-c", FETCH, url, timeout=10).stdout


def _wait_for(ns: Netns, url: str, needle: str, seconds: float = 15) -> str:
    deadline = time.monotonic() + seconds
    while True:
        proc = ns.run(system_python(), "-c", FETCH, url, check=False, timeout=10)
        if proc.returncode == 0 and needle in proc.stdout:
            return proc.stdout
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{needle!r} not at {url}: {proc.stdout[-500:]}{proc.stderr[-500:]}"
            )
        time.sleep(0.3)


def _start(ns: Netns, cfg: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns.name, str(VENV_BIN / "bwenforcer"), "--config", str(cfg), "daemon"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_daemon_scraped_reloaded_and_stopped(ns: Netns, tmp_path: Path) -> None:
    port = free_port()
    cfg = _config(tmp_path, port)
    assert bwenforcer_in(ns, "--config", str(cfg), "tc", "init").returncode == 0
    daemon = _start(ns, cfg)
    try:
        text = _wait_for(
            ns,
            f"http://127.0.0.1:{port}/metrics",
            'bwenforcer_slice_capped{class="default",slice="pl_capped",xid="31"} 1.0',
        )
        assert 'bwenforcer_slice_capped{class="default",slice="pl_fine",xid="32"} 0.0' in text
        good = cfg.read_text()
        cfg.write_text(good + "bogus_key: 1\n")
        daemon.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert daemon.poll() is None  # invalid config refused, still running
        cfg.write_text(good)
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _, err = daemon.communicate(timeout=10)
    assert "config reload refused" in err and "bogus_key: unknown key" in err
    check = bwenforcer_in(ns, "--config", str(cfg), "state", "check")
    assert check.returncode == 0, check.stdout + check.stderr


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
        if daemon.stdout:
            daemon.stdout.close()
        if daemon.stderr:
            daemon.stderr.close()
