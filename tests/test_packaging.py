"""Packaging: units pass systemd-analyze, the .deb builds, installs, runs and lists its files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kernel_helpers import VENV_BIN

TOP = Path(__file__).resolve().parent.parent
PACKAGING = TOP / "packaging"


def _run(*cmd: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize(
    "unit", ["bwenforcer.service", "bwenforcer-sync.service", "bwenforcer-sync.timer"]
)
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    assert shutil.which("systemd-analyze"), "systemd-analyze missing (Debian package systemd)"
    for name in ("bwenforcer.service", "bwenforcer-sync.service", "bwenforcer-sync.timer"):
        text = (PACKAGING / name).read_text()
        # verify needs the ExecStart binary to exist: point it at this checkout's
        (tmp_path / name).write_text(
            text.replace("/usr/bin/bwenforcer", str(VENV_BIN / "bwenforcer"))
        )
    proc = _run("systemd-analyze", "verify", str(tmp_path / unit))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (PACKAGING / unit).read_text()
    if unit == "bwenforcer.service":
        for hardening in (
            "ProtectSystem=strict",
            "CapabilityBoundingSet=CAP_NET_ADMIN",
            "StateDirectory=bwenforcer",
            "NoNewPrivileges=yes",
        ):
            assert hardening in text


def test_grafana_dashboard_queries_our_metrics() -> None:
    dash = json.loads((PACKAGING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for name in (
        "bwenforcer_slice_capped",
        "bwenforcer_slice_used_bytes",
        "bwenforcer_slice_ceil_bytes_per_second",
        "bwenforcer_cycle_duration_seconds_bucket",
        "bwenforcer_cycles_total",
        "bwenforcer_notifications_total",
    ):
        assert name in exprs


@pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("BWENFORCER_REQUIRE_KERNEL") != "1",
    reason="installing a .deb needs root",
)
def test_deb_builds_installs_runs_and_lists_its_files() -> None:
    built = _run(str(PACKAGING / "build-deb"))
    assert built.returncode == 0, built.stderr
    deb = built.stdout.strip()
    info = _run("dpkg-deb", "--info", deb)
    assert "Package: bwenforcer" in info.stdout and "python3-pyroute2" in info.stdout
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    if install.returncode != 0:  # package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, check=False)
        install = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            check=False,
        )
    assert install.returncode == 0, install.stderr[-2000:]
    try:
        files = _run("dpkg", "-L", "bwenforcer").stdout.splitlines()
        for path in (
            "/usr/bin/bwenforcer",
            "/lib/systemd/system/bwenforcer.service",
            "/etc/bwenforcer/bwenforcer.yaml",
            "/usr/lib/python3/dist-packages/bwenforcer/htb.py",
        ):
            assert path in files
        version = _run("/usr/bin/bwenforcer", "--version")
        assert version.returncode == 0 and "bwenforcer 0.1.0" in version.stdout, version.stderr
        dry = _run(
            "/usr/bin/bwenforcer",
            "--config",
            "/etc/bwenforcer/bwenforcer.yaml",
            "tc",
            "get",
            "--dev",
            "nosuch0",
        )
        assert dry.returncode == 4 and "device 'nosuch0' not found" in dry.stderr
    finally:
        purge = _run("dpkg", "--purge", "bwenforcer")
        assert purge.returncode == 0, purge.stderr
