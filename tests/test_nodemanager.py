"""The node-manager shim driven by a fake node manager against a namespace kernel."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from bwenforcer import nodemanager
from bwenforcer.agent import Agent
from bwenforcer.config import Config, load_config
from bwenforcer.htb import HtbBackend
from tests.netns import Netns

pytestmark = pytest.mark.kernel


def _wait(predicate, seconds: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_thread_follows_the_database_and_survives_errors(ns: Netns, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"device: v0\nnode_cap: 10mbit\nstate_file: {tmp_path}/s.json\nslices_file: null\nmetrics: {{listen: null}}\n"
    )
    config = load_config(str(cfg))
    with HtbBackend("v0", netns=ns.name) as kernel:
        kernel.init(config.node_cap_bps, config.bwmax_bps)
    db = {"pl_a": {"name": "pl_a", "xid": 41, "_rspec": {"net_max_rate": 2000}}}
    lock = threading.Lock()
    calls: list[int] = []

    def agent(conf: Config) -> Agent:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("injected failure")
        return Agent(conf, netns=ns.name)

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
            assert 41 not in kernel.dump().slices
    finally:
        shim.stop()
        nodemanager._shim = None
    assert shim.metrics._counts["cycle_errors"] == 1
    assert shim.metrics._cycles["ok"] == 3
    assert nodemanager.priority > 0
