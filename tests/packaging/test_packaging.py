"""Packaging: units pass systemd-analyze, the .deb builds, installs, runs and lists its files."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.kernel_helpers import VENV_BIN
from tests.loopback import free_port
from tests.netns import Netns

TOP = Path(__file__).resolve().parents[2]
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


def test_the_cron_job_runs_with_a_path_holding_nft_ip_and_logger() -> None:
    lines = (PACKAGING / "cron.d" / "bwenforcer").read_text().splitlines()
    env = {"PATH": "/usr/bin:/bin"}  # what Debian's cron gives a job, unless the file says
    for line in lines:
        if "=" in line.split(" ", 1)[0] and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    jobs = [line for line in lines if line and not line.startswith("#") and "=" not in line[:20]]
    assert len(jobs) == 1 and jobs[0].split()[6] == "/usr/bin/bwenforcer", jobs
    for tool in ("nft", "ip", "logger"):
        assert shutil.which(tool, path=env["PATH"]), f"{tool} not on the cron job's PATH"


@pytest.mark.kernel
def test_the_shipped_config_enforces_nothing_until_device_is_set(ns: Netns, tmp_path: Path) -> None:
    # in a namespace, its paths moved under tmp_path: whatever the code does, the host's
    # interfaces and /var/lib stay untouched
    shipped = tmp_path / "bwenforcer.yaml"
    shipped.write_text(
        (TOP / "etc" / "bwenforcer.yaml")
        .read_text()
        .replace("/var/lib/bwenforcer/", f"{tmp_path}/lib/")
        .replace("/etc/bwenforcer/", f"{TOP}/etc/")
    )
    bin_ = str(VENV_BIN / "bwenforcer")
    for verb in ("sync", "daemon"):  # the daemon, too, exits at once: it holds no device
        done = ns.run(bin_, "--config", str(shipped), verb, check=False, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stderr == (
            "bwenforcer: no device set in the config: nothing is enforced until `device:`"
            " names the uplink\n"
        )
        assert done.stdout == ""
    assert not (tmp_path / "lib").exists()  # nothing was created
    tc = ns.run(bin_, "--config", str(shipped), "tc", "get", check=False)
    assert tc.returncode == 2 and tc.stderr.count("\n") == 1 and "--dev" in tc.stderr
    nodemanager = ns.run(
        str(VENV_BIN / "python"), "-c",
        "import sys; from bwenforcer import nodemanager; from bwenforcer.errors import Error\n"
        "try:\n    nodemanager.start(config=sys.argv[1], db={}, lock=None)\n"
        "except Error as exc:\n    print(exc)",
        str(shipped), check=False,
    )  # fmt: skip
    assert "no device set in the config" in nodemanager.stdout, nodemanager.stderr


def _readme_install_lines() -> list[str]:
    readme = (TOP / "README.md").read_text()
    block = readme[readme.index("## Install on a node") :].split("\n\n")[1]
    return [line.strip() for line in block.splitlines() if line.strip().startswith("install ")]


def test_the_readme_install_puts_every_file_the_config_names_in_place(tmp_path: Path) -> None:
    lines = _readme_install_lines()
    for line in lines:
        argv = [w.replace("/etc/bwenforcer/", f"{tmp_path}/etc/bwenforcer/") for w in line.split()]
        done = subprocess.run(argv, cwd=TOP, capture_output=True, text=True, check=False)
        assert done.returncode == 0, (line, done.stderr)
    etc = tmp_path / "etc" / "bwenforcer"
    installed = sorted(p.name for p in etc.iterdir())
    # the same files as the Debian package's conffiles
    assert installed == ["bwenforcer.yaml", "notice.txt", "slices.yaml"]
    build = (PACKAGING / "build-deb").read_text()
    assert all(f"/etc/bwenforcer/{name}" in build for name in installed)
    config = (etc / "bwenforcer.yaml").read_text()
    config = config.replace("/etc/bwenforcer/", f"{etc}/").replace(
        "/var/lib/bwenforcer/", f"{tmp_path}/lib/"
    )
    config = config.replace("device: null ", "device: bwtnodev0 ")
    config = config.replace("  template: null ", f"  template: {etc}/notice.txt ")
    (etc / "bwenforcer.yaml").write_text(config)
    # the first cron run: the config, the slices file and the template are all read
    # (the device exists nowhere: the kernel is the first thing that fails, exit 4)
    done = _run(str(VENV_BIN / "bwenforcer"), "--config", str(etc / "bwenforcer.yaml"), "sync")
    assert done.returncode == 4, done.stderr
    assert done.stderr == "bwenforcer: device 'bwtnodev0' missing\n"


def test_the_timer_and_the_daemon_may_both_be_enabled() -> None:
    sync_service = (PACKAGING / "bwenforcer-sync.service").read_text()
    assert "Conflicts=" not in sync_service  # enabling both stopped the daemon for good
    assert "SuccessExitStatus=1 3" in sync_service  # lock busy behind the daemon: no failure
    assert "Conflicts=" not in (PACKAGING / "bwenforcer.service").read_text()


@pytest.mark.kernel
def test_a_sync_beside_a_running_daemon_takes_its_turn(ns: Netns, tmp_path: Path) -> None:
    (tmp_path / "slices.yaml").write_text("slices:\n  - {name: pl_both, xid: 72, rspec: {}}\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(PACKAGED_CONFIG.format(tmp=tmp_path, port=free_port()))
    bin_ = str(VENV_BIN / "bwenforcer")
    assert ns.run(bin_, "--config", str(cfg), "tc", "init", check=False).returncode == 0
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, bin_, "--config", str(cfg), "daemon"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(3):  # a timer's cycles, while the daemon runs one every second
            sync = ns.run(bin_, "--config", str(cfg), "sync", check=False)
            assert sync.returncode == 0, sync.stderr
        assert daemon.poll() is None  # neither stopped the other
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=15)
        finally:
            if daemon.poll() is None:
                daemon.kill()
            _, err = daemon.communicate(timeout=10)
    assert daemon.returncode == 0 and "Traceback" not in err, err


def test_grafana_dashboard_queries_our_metrics_in_valid_promql(tmp_path: Path) -> None:
    dash = json.loads((PACKAGING / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    # promtool parses every query as a recording rule (Grafana's $instance filled in)
    rules = [
        {"record": f"bwenforcer:dashboard_query_{i}", "expr": q.replace("$instance", ".*")}
        for i, q in enumerate(queries)
    ]
    (tmp_path / "rules.yml").write_text(json.dumps({"groups": [{"name": "dash", "rules": rules}]}))
    check = _run("promtool", "check", "rules", str(tmp_path / "rules.yml"))
    assert check.returncode == 0 and f"SUCCESS: {len(rules)} rules found" in check.stdout, (
        check.stdout + check.stderr
    )
    exprs = " ".join(queries)
    for name in (
        "bwenforcer_slice_capped",
        "bwenforcer_slice_used_bytes",
        "bwenforcer_slice_ceil_bytes_per_second",
        "bwenforcer_cycle_duration_seconds_bucket",
        "bwenforcer_cycles_total",
        "bwenforcer_notifications_total",
        "bwenforcer_slice_transferred_bytes",  # both directions, with inbound on
        "bwenforcer_slice_rate_limit_bytes_per_second",
    ):
        assert name in exprs


PACKAGED_CONFIG = """device: v0
node_cap: 10mbit
interval: 1s
state_file: {tmp}/state.json
slices_file: {tmp}/slices.yaml
metrics: {{listen: '127.0.0.1:{port}'}}
"""

# nodemanager.py runs from /usr/share/NodeManager (its sys.path[0]) and imports bwmon
BWMON_IMPORT = """
import sys
sys.path.insert(0, "/usr/share/NodeManager")
import bwmon
from bwenforcer import nodemanager
print(bwmon.__file__, bwmon.priority, bwmon.lock is nodemanager.event)
"""

# the private pyroute2 the wrapper puts on the path opens a socket in a namespace
NETNS_SOCKET = """
import runpy, sys
runpy.run_path("/usr/bin/bwenforcer", run_name="not_main")
import pyroute2
from bwenforcer.kernel.htb import HtbBackend
with HtbBackend("v0", netns=sys.argv[1]) as kernel:
    print(pyroute2.__file__, sorted(kernel.dump().slices))
"""


def _apt_install(deb: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", deb]
    install = subprocess.run(
        argv, capture_output=True, text=True, timeout=600, env=env, check=False
    )
    if install.returncode != 0:  # package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=600, check=False)
        install = subprocess.run(
            argv, capture_output=True, text=True, timeout=600, env=env, check=False
        )
    return install


@pytest.mark.kernel
def test_deb_builds_installs_runs_and_lists_its_files(ns: Netns, tmp_path: Path) -> None:
    built = _run(str(PACKAGING / "build-deb"))
    assert built.returncode == 0, built.stderr
    deb = built.stdout.strip()
    assert deb.endswith("dist/bwenforcer_0.1.0_all.deb")
    info = _run("dpkg-deb", "--info", deb).stdout
    assert "Package: bwenforcer" in info and "python3-prometheus-client" in info
    assert "python3-pyroute2" not in info  # Debian 12's 0.7 lacks netns sockets: bundled
    install = _apt_install(deb)
    assert install.returncode == 0, install.stderr[-2000:]
    links = {  # what `systemctl enable bwenforcer.service bwenforcer-sync.timer` makes
        Path("/etc/systemd/system/multi-user.target.wants/bwenforcer.service"):
            "/lib/systemd/system/bwenforcer.service",
        Path("/etc/systemd/system/timers.target.wants/bwenforcer-sync.timer"):
            "/lib/systemd/system/bwenforcer-sync.timer",
    }  # fmt: skip
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target)
    try:
        files = _run("dpkg", "-L", "bwenforcer").stdout.splitlines()
        for path in (
            "/usr/bin/bwenforcer",
            "/lib/systemd/system/bwenforcer.service",
            "/lib/systemd/system/bwenforcer-sync.timer",
            "/etc/bwenforcer/bwenforcer.yaml",
            "/usr/lib/python3/dist-packages/bwenforcer/kernel/htb.py",
            "/usr/lib/python3/dist-packages/bwenforcer/templates/notice.txt",
            "/usr/lib/bwenforcer/python/pyroute2/netns/__init__.py",
            "/usr/share/doc/bwenforcer/copyright",
            "/usr/share/doc/bwenforcer/grafana-dashboard.json",
            "/usr/share/NodeManager/bwmon.py",
            "/usr/lib/python3/dist-packages/bwmon.py",
        ):
            assert path in files
        diversions = _run("dpkg-divert", "--list", "bwenforcer").stdout
        assert "/usr/share/NodeManager/bwmon.py.distrib" in diversions
        # the node manager's import of its core module bwmon, on Debian's libraries
        shim = _run("/usr/bin/python3", "-c", BWMON_IMPORT)
        assert shim.returncode == 0, shim.stderr
        assert shim.stdout.split() == ["/usr/share/NodeManager/bwmon.py", "20", "True"]
        assert (
            "/etc/bwenforcer/bwenforcer.yaml"
            in _run("dpkg-query", "-W", "-f", "${Conffiles}", "bwenforcer").stdout
        )
        version = _run("/usr/bin/bwenforcer", "--version")
        assert version.returncode == 0 and "bwenforcer 0.1.0" in version.stdout, version.stderr
        missing = _run("/usr/bin/bwenforcer", "--config", "/etc/bwenforcer/bwenforcer.yaml",
                       "tc", "get", "--dev", "nosuch0")  # fmt: skip
        assert missing.returncode == 4 and "device 'nosuch0' missing" in missing.stderr
        _installed_daemon_runs_on_debian_libraries(ns, tmp_path)
        sock = ns.run("/usr/bin/python3", "-c", NETNS_SOCKET, ns.name, check=False)
        assert sock.returncode == 0, sock.stderr
        assert sock.stdout.startswith("/usr/lib/bwenforcer/python/pyroute2/"), sock.stdout
    finally:
        purge = _run("dpkg", "--purge", "bwenforcer")
        assert purge.returncode == 0, purge.stderr
    for path in (
        "/usr/lib/bwenforcer",
        "/usr/lib/python3/dist-packages/bwenforcer",
        "/etc/bwenforcer",
        "/usr/share/NodeManager/bwmon.py",
        "/usr/lib/python3/dist-packages/bwmon.py",
    ):
        assert not Path(path).exists(), f"{path} left behind"
    for link in links:
        assert not link.is_symlink(), f"{link} left behind"
    assert "bwmon" not in _run("dpkg-divert", "--list", "bwenforcer").stdout


def _installed_daemon_runs_on_debian_libraries(ns: Netns, tmp: Path) -> None:
    """/usr/bin/bwenforcer daemon (Debian's python3-prometheus-client) serves and stops."""
    port = free_port()
    (tmp / "slices.yaml").write_text("slices:\n  - {name: pl_deb, xid: 71, rspec: {}}\n")
    cfg = tmp / "c.yaml"
    cfg.write_text(PACKAGED_CONFIG.format(tmp=tmp, port=port))
    init = ns.run("/usr/bin/bwenforcer", "--config", str(cfg), "tc", "init", check=False)
    assert init.returncode == 0, init.stderr
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", ns.name, "/usr/bin/bwenforcer", "--config", str(cfg), "daemon"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        fetch = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
        deadline, text = time.monotonic() + 20, ""
        while 'slice="pl_deb"' not in text:
            assert time.monotonic() < deadline, f"never scraped: {text[-500:]}"
            time.sleep(0.3)
            proc = ns.run(
                "/usr/bin/python3", "-c", fetch, f"http://127.0.0.1:{port}/metrics", check=False
            )
            text = proc.stdout
        assert 'bwenforcer_cycles_total{result="ok"}' in text
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=15) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
        _, err = daemon.communicate(timeout=10)
    assert "Traceback" not in err, err
