"""The node-manager shim driven by a fake node manager against a namespace kernel."""

from __future__ import annotations

import gc
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bwenforcer import nodemanager
from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID
from bwenforcer.core.model import DesiredSet
from bwenforcer.core.settings import Config
from bwenforcer.cycle.agent import Agent
from bwenforcer.cycle.run import CycleResult
from bwenforcer.inputs.config import load_config
from bwenforcer.kernel.htb import HtbBackend
from tests.kernel_helpers import REPO, VENV_BIN
from tests.loopback import free_port
from tests.netns import Netns

pytestmark = pytest.mark.kernel

RESERVED = {ROOT_XID, DEFAULT_XID}  # the root and default classes are always there
T0 = 1_800_000_000  # the clock of the tests that compare paced ceils across cycles


def _wait(predicate, seconds: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _config_with_tree(ns: Netns, tmp_path: Path) -> Config:
    """A config for dev v0 in ``ns`` (no slices file), its tree built."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\nslices_file: null\nvanish_grace: 0s\nmetrics: {{listen: null}}\n"
    )
    config = load_config(str(cfg))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    return config


def test_thread_follows_the_database_and_survives_errors(ns: Netns, tmp_path: Path) -> None:
    config = _config_with_tree(ns, tmp_path)
    db = {"pl_a": {"name": "pl_a", "xid": 41, "_rspec": {"net_max_rate": 2000}}}
    lock = threading.Lock()
    calls: list[int] = []

    class FlakyAgent(Agent):
        def cycle(self, desired: DesiredSet, *args: Any, **kwargs: Any) -> CycleResult:
            calls.append(1)
            if len(calls) == 2:
                raise RuntimeError("injected failure")
            return super().cycle(desired, *args, **kwargs)

    def agent(conf: Config) -> Agent:
        return FlakyAgent(conf, netns=ns.name)

    shim = nodemanager.NodeManagerShim(config, db=db, lock=lock, agent_factory=agent)
    shim.start()
    try:
        shim.wake.set()  # the node manager's event: database changed
        _wait(lambda: shim.cycles == 1)
        with HtbBackend("v0", netns=ns.name) as kernel:
            assert kernel.dump().slices[41].default.rates.max_rate_bps == 2_000_000
        shim.wake.set()
        _wait(lambda: shim.cycles == 2)  # the injected failure, survived
        assert shim.thread is not None and shim.thread.is_alive()
        with lock:
            db["pl_b"] = {"name": "pl_b", "xid": 42, "_rspec": {}}
        nodemanager._shim = shim
        nodemanager.GetSlivers({"timestamp": 1})  # a nudge, not a database
        _wait(lambda: shim.cycles == 3)
        with HtbBackend("v0", netns=ns.name) as kernel:
            assert {41, 42} <= set(kernel.dump().slices)
        nodemanager.GetSlivers({"pl_b": {"name": "pl_b", "xid": 42, "_rspec": {}}})
        _wait(lambda: shim.cycles == 4)
        with HtbBackend("v0", netns=ns.name) as kernel:
            assert set(kernel.dump().slices) - RESERVED == {42}
        nodemanager.GetSlivers({})  # empty: a nudge, never "no slices"
        _wait(lambda: shim.cycles == 5)
        with HtbBackend("v0", netns=ns.name) as kernel:
            assert set(kernel.dump().slices) - RESERVED == {42}
    finally:
        shim.stop(timeout_s=30)
        nodemanager._shim = None
    assert shim.thread is not None and not shim.thread.is_alive()
    assert shim.metrics._counts["cycle_errors"] == 1
    assert shim.metrics._cycles["ok"] == 4
    assert nodemanager.priority > 0


FAKE_NODE_MANAGER = """
import json, sys, threading, time, types, urllib.request

database = types.ModuleType("database")  # what PlanetLab's node manager provides
database.db_lock = threading.Lock()
database.db = None
sys.modules["database"] = database

from bwenforcer import nodemanager
from bwenforcer.kernel.htb import HtbBackend
from bwenforcer.core.layout import DEFAULT_XID, ROOT_XID
from bwenforcer.core.model import DesiredSet

shim = nodemanager.start("options", "conf", config=sys.argv[1])


def settle(n):
    deadline = time.monotonic() + 20
    while shim.cycles < n:
        assert time.monotonic() < deadline, "no cycle"
        time.sleep(0.05)


def xids():
    with HtbBackend("v0") as kernel:
        return sorted(set(kernel.dump().slices) - {ROOT_XID, DEFAULT_XID})


report = {}
nodemanager.event.set()  # no database yet: skipped, nothing removed
settle(1)
report["no_db"] = xids()
with database.db_lock:  # the node manager rebinds its database
    database.db = {"pl_x": {"name": "pl_x", "xid": 61, "_rspec": {"net_max_rate": 3000}}}
nodemanager.event.set()
settle(2)
report["db"] = xids()
with HtbBackend("v0") as kernel:
    report["rate"] = kernel.dump().slices[61].default.rates.max_rate_bps
with database.db_lock:
    database.db["pl_y"] = {"name": "pl_y", "xid": 62, "_rspec": {}}
# PLC's reply: with a database module only its sync() wakes the thread, not GetSlivers
nodemanager.GetSlivers({"timestamp": 1, "slivers": []}, None, None)
time.sleep(1)
report["cycles_after_getslivers"] = shim.cycles
nodemanager.event.set()  # the database's sync()
settle(3)
report["nudged"] = xids()
url = "http://" + sys.argv[2] + "/metrics"
report["metrics"] = urllib.request.urlopen(url, timeout=5).read().decode()
shim.stop(timeout_s=30)
report["alive"] = shim.thread.is_alive()
print(json.dumps(report))
"""


def test_a_node_manager_process_drives_the_plugin_protocol(ns: Netns, tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\nslices_file: null\nvanish_grace: 0s\nmetrics: {{listen: '{listen}'}}\n"
    )
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(10_000_000, 1_000_000_000)
    script = tmp_path / "fake_nm.py"
    script.write_text(FAKE_NODE_MANAGER)
    proc = ns.run(str(VENV_BIN / "python"), str(script), str(cfg), listen, check=False, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["no_db"] == []
    assert report["db"] == [61] and report["rate"] == 3_000_000
    assert report["cycles_after_getslivers"] == 2
    assert report["nudged"] == [61, 62]
    assert 'bwenforcer_cycles_total{result="skipped"} 1.0' in report["metrics"]
    assert 'bwenforcer_cycles_total{result="ok"} 2.0' in report["metrics"]
    assert (
        'bwenforcer_slice_limit_bytes{class="default",slice="pl_y",xid="62"}' in report["metrics"]
    )
    assert report["alive"] is False


def test_thread_rebuilds_a_vanished_tree_and_says_a_missing_device_once(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = _config_with_tree(ns, tmp_path)
    db = {"pl_a": {"name": "pl_a", "xid": 43, "_rspec": {"net_max_rate": 2000}}}
    shim = nodemanager.NodeManagerShim(
        config, db=db, lock=threading.Lock(), agent_factory=lambda c: Agent(c, netns=ns.name)
    )
    shim.run_once()  # the thread's cycle, run here
    ns.tc("qdisc", "del", "dev", "v0", "root")
    shim.run_once()
    with HtbBackend("v0", netns=ns.name) as kernel:
        assert kernel.dump().slices[43].default.rates.max_rate_bps == 2_000_000
    ns.ip("link", "del", "v0")
    for _ in range(3):
        shim.run_once()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == ["node-manager cycle failed: device 'v0' missing"]


def test_a_bad_record_is_logged_once_and_its_capped_slice_stays(
    ns: Netns, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\nslices_file: null\nvanish_grace: 0s\nmetrics: {{listen: null}}\n"
    )
    config = load_config(str(cfg))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    rspec: dict[str, object] = {"net_thresh_kbyte": 0}
    db = {"pl_a": {"name": "pl_a", "xid": 41, "_rspec": rspec}}
    # The paced ceil follows the time left in the period: every cycle runs at one
    # instant, passed in, or the kept cap would differ by the second the cycle ran.
    shim = nodemanager.NodeManagerShim(
        config,
        db=db,
        lock=threading.Lock(),
        agent_factory=lambda c: Agent(c, clock=lambda: T0, netns=ns.name),
    )
    try:
        shim.run_once()
        with HtbBackend("v0", netns=ns.name) as kernel:
            capped_bps = kernel.dump().slices[41].default.rates.max_rate_bps
        assert capped_bps < 10_000_000
        rspec["net_max_rate"] = "banana"
        caplog.clear()
        for _ in range(3):
            shim.run_once()
        bad = [r for r in caplog.records if r.levelname == "ERROR"]
        assert len(bad) == 1 and "banana" in bad[0].getMessage()
        with HtbBackend("v0", netns=ns.name) as kernel:
            assert kernel.dump().slices[41].default.rates.max_rate_bps == capped_bps
    finally:
        if shim.agent is not None:
            shim.agent.close()


RESILIENT_NODE_MANAGER = """
import json, os, socket, sys, threading, time, urllib.request

cfg, bad_cfg, listen = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.append(sys.argv[4])  # the repository, for tests.kernel_helpers

from bwenforcer import nodemanager
from bwenforcer.errors import ConfigError, TreeNotInitialised
from bwenforcer.kernel.htb import HtbBackend
from tests.kernel_helpers import LogLines

lines = LogLines.install()
host, port = listen.rsplit(":", 1)


def xids():
    with HtbBackend("v0") as kernel:
        return sorted(x for x in kernel.dump().slices if 70 <= x < 80)


def until(predicate):
    deadline = time.monotonic() + 20
    while not predicate():
        assert time.monotonic() < deadline, lines.lines[-20:]
        time.sleep(0.05)


def cycle(shim):
    before = shim.cycles
    nodemanager.lock.set()
    until(lambda: shim.cycles > before)


report = {}
busy = socket.socket()  # something else holds the metrics port
busy.bind((host, int(port)))
busy.listen()
db = {"pl_a": {"name": "pl_a", "xid": 71, "_rspec": {"net_max_rate": 2000}}}
shim = nodemanager.start("options", "conf", config=cfg, db=db, lock=threading.Lock())
report["alive"] = shim.thread.is_alive()
nodemanager.GetSlivers({"timestamp": 1}, None, None)
until(lambda: xids() == [71])  # enforcing without metrics
busy.close()
cycle(shim)  # retried at the next cycle
report["metrics"] = urllib.request.urlopen("http://" + listen + "/metrics", timeout=5).status

try:  # a broken config: start() raises, the running thread stays
    nodemanager.start(config=bad_cfg, db=db)
    report["raised"] = False
except ConfigError:
    report["raised"] = True
report["kept"] = nodemanager._shim is shim and shim.thread.is_alive()

def tree_xids():
    try:
        return xids()
    except TreeNotInitialised:
        return None


# the node manager turns limits off: its default record says -1 (the slice classes
# go), then it removes the tree as the historic bwmon did; nothing is rebuilt
db["pl_default"] = {"name": "pl_default", "_rspec": {"net_max_rate": -1}}
cycle(shim)
report["off"] = tree_xids()
with HtbBackend("v0") as kernel:
    kernel.stop()
for _ in range(3):
    cycle(shim)
report["off_no_tree"] = tree_xids()
del db["pl_default"]  # limits on again: the tree is built again, the slice is back
cycle(shim)
until(lambda: tree_xids() == [71])

# PLC's reply, no database module: read as slivermanager reads it
shim.uid_of = {"pl_b": 72, "pl_c": 73}.get
plc = {"timestamp": 2, "slivers": [
    {"name": "pl_b", "attributes": [{"tagname": "net_max_rate", "value": "3000"}]},
    {"name": "pl_c", "attributes": []},
    {"name": "pl_default", "attributes": [{"tagname": "net_max_rate", "value": "2000"}]},
]}
nodemanager.GetSlivers(plc, None, None)
until(lambda: xids() == [72, 73])
with HtbBackend("v0") as kernel:
    report["plc_rate"] = kernel.dump().slices[72].default.rates.max_rate_bps
shim.stop(timeout_s=30)

# a node manager whose bwmon.start() failed goes on calling GetSlivers: each
# call tries to start, and enforcement begins once the config is fixed
nodemanager._shim = None
os.environ["BWENFORCER_CONFIG"] = bad_cfg
nodemanager.GetSlivers(plc, None, None)
report["started_on_bad"] = nodemanager._shim is not None
os.environ["BWENFORCER_CONFIG"] = cfg
with HtbBackend("v0") as kernel:
    kernel.off(72)
nodemanager.GetSlivers({"pl_b": {"name": "pl_b", "xid": 72, "_rspec": {}}}, None, None)
until(lambda: xids() == [72])
nodemanager._shim.stop(timeout_s=30)
report["lines"] = lines.lines
print(json.dumps(report))
"""


def test_start_survives_a_busy_metrics_port_and_a_missing_tree(ns: Netns, tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\nslices_file: null\n"
        f"vanish_grace: 0s\nmetrics: {{listen: '{listen}'}}\n"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("device: v0\nnode_cap: fast\n")
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(10_000_000, 1_000_000_000)
    script = tmp_path / "nm.py"
    script.write_text(RESILIENT_NODE_MANAGER)
    proc = ns.run(
        str(VENV_BIN / "python"),
        str(script),
        str(cfg),
        str(bad),
        listen,
        str(REPO),
        check=False,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["alive"] and report["metrics"] == 200
    assert report["raised"] and report["kept"]
    assert report["plc_rate"] == 3_000_000
    assert report["off"] == [] and report["off_no_tree"] is None
    assert not report["started_on_bad"]
    messages = [m for _, m in report["lines"]]
    assert sum("cannot listen" in m for m in messages) == 1  # logged once, then served
    assert sum("limits disabled" in m for m in messages) == 1  # four cycles with limits off
    assert sum("limits enabled again" in m for m in messages) == 1
    assert sum("not enforcing" in m and "node_cap" in m for m in messages) == 1
    errors = [m for level, m in report["lines"] if level == "ERROR"]
    assert len(errors) == 2  # the busy metrics port and the broken config, once each


@dataclass
class _GcRecordingAgent(Agent):
    """An agent noting, each time a cycle opens its kernel backend, whether the
    garbage collector is on.
    """

    gc_enabled: list[bool] = field(default_factory=list)

    def backend(self) -> HtbBackend:
        self.gc_enabled.append(gc.isenabled())
        return super().backend()


def test_the_thread_leaves_the_node_managers_garbage_collector_alone(
    ns: Netns, tmp_path: Path
) -> None:
    config = _config_with_tree(ns, tmp_path)
    db = {"pl_a": {"name": "pl_a", "xid": 44, "_rspec": {}}}
    agents: list[_GcRecordingAgent] = []

    def recording(conf: Config) -> Agent:
        agents.append(_GcRecordingAgent(conf, netns=ns.name))
        return agents[-1]

    shim = nodemanager.NodeManagerShim(
        config, db=db, lock=threading.Lock(), agent_factory=recording
    )
    assert gc.isenabled()
    try:
        shim.run_once()
    finally:
        shim.close_agent()
    assert shim.metrics.snapshot().cycles["ok"] == 1
    assert agents[0].gc_enabled and all(agents[0].gc_enabled)  # never paused in the host
